//! `[cache]`: the response cache (mmap files under `server.data_dir/cache`).
//!
//! Owns reading the section into [`CacheConfig`] and the one cross-key rule
//! (an entry of `max_entry` must fit the partition twice over, checked where
//! the shard count is known: `cache::Geometry`). Does not decide per request.

use super::read::Walker;
use std::time::Duration;

/// Largest `cache.size`: 1 TiB (the files are allocated at start).
pub const MAX_CACHE_SIZE: u64 = 1 << 40;
/// Smallest `cache.size`.
pub const MIN_CACHE_SIZE: u64 = 1 << 20;
/// Largest `cache.max_entry`.
pub const MAX_ENTRY_CAP: u64 = 256 << 20;
/// Longest TTL (`cache.default_ttl` or `aigw-cache-ttl`): 31 days.
pub const MAX_TTL: Duration = Duration::from_secs(31 * 86_400);

#[derive(Clone, Debug, PartialEq)]
pub struct CacheConfig {
    pub enabled: bool,
    /// Bytes of all partitions together, split evenly across shards.
    pub size: u64,
    pub default_ttl: Duration,
    /// Largest response stored (status, headers and body).
    pub max_entry: usize,
    /// Every credential shares one scope (entries are shared between tenants).
    pub shared: bool,
    /// More request headers that carry a credential (lower-cased), beside
    /// the ones aigw knows: a provider behind a custom base URL that
    /// authenticates by its own header scopes entries by it too.
    pub credential_headers: Vec<String>,
}

pub(super) fn read_cache(w: &mut Walker, root: &toml::Table) -> CacheConfig {
    let t = w.table(root, "cache");
    let default_ttl = w.duration(t, "cache.default_ttl", "1h");
    if default_ttl > MAX_TTL {
        w.err(
            "cache.default_ttl",
            format!("{default_ttl:?} is longer than 31 days; use at most \"31d\""),
        );
    }
    if default_ttl < Duration::from_secs(1) {
        w.err(
            "cache.default_ttl",
            "must be at least 1s (entries expire in whole seconds)".into(),
        );
    }
    CacheConfig {
        enabled: w.flag(t, "cache.enabled").unwrap_or(false),
        size: w.bytes(t, "cache.size", 1 << 30, MIN_CACHE_SIZE, MAX_CACHE_SIZE),
        default_ttl,
        max_entry: w.bytes(t, "cache.max_entry", 4 << 20, 1024, MAX_ENTRY_CAP) as usize,
        shared: w.flag(t, "cache.shared").unwrap_or(false),
        credential_headers: credential_headers(w, t),
    }
}

/// `cache.credential_headers`: header names (token characters), lower-cased.
fn credential_headers(w: &mut Walker, t: Option<&toml::Table>) -> Vec<String> {
    let path = "cache.credential_headers";
    let names = w.strings(t, path).unwrap_or_default();
    let token = |n: &str| {
        !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    names
        .iter()
        .enumerate()
        .filter_map(|(i, n)| {
            if token(n) {
                Some(n.to_ascii_lowercase())
            } else {
                w.err(
                    &format!("{path}[{i}]"),
                    "must be a header name (letters, digits and -, e.g. \"x-auth-token\")".into(),
                );
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::super::tests::errors;

    #[test]
    fn off_by_default_with_a_gibibyte_when_on() {
        let c = Config::from_toml("").unwrap().cache;
        assert!(!c.enabled);
        assert_eq!(c.size, 1 << 30);
        assert_eq!(c.default_ttl.as_secs(), 3600);
        assert_eq!(c.max_entry, 4 << 20);
        assert!(!c.shared);
        let c = Config::from_toml("[cache]\nenabled = true\nsize = \"64MiB\"\ndefault_ttl = \"5m\"\nmax_entry = \"1MiB\"\nshared = true\n")
            .unwrap()
            .cache;
        assert!(c.enabled && c.shared);
        assert_eq!((c.size, c.max_entry), (64 << 20, 1 << 20));
        assert_eq!(c.default_ttl.as_secs(), 300);
    }

    #[test]
    fn bad_values_name_their_key() {
        let e = errors("[cache]\nsize = \"1KiB\"\n").join("\n");
        assert!(e.contains("cache.size"), "{e}");
        let e = errors("[cache]\ndefault_ttl = \"90d\"\n").join("\n");
        assert!(
            e.contains("cache.default_ttl") && e.contains("31 days"),
            "{e}"
        );
        let e = errors("[cache]\ndefault_ttl = \"10ms\"\n").join("\n");
        assert!(e.contains("cache.default_ttl") && e.contains("1s"), "{e}");
        let e = errors("[cache]\nenabled = \"yes\"\n").join("\n");
        assert!(e.contains("cache.enabled"), "{e}");
        let e = errors("[cache]\nsizes = 3\n").join("\n");
        assert!(e.contains("cache.sizes"), "{e}");
        let e = errors("[cache]\ncredential_headers = [\"X-Ok\", \"x auth\"]\n").join("\n");
        assert!(e.contains("cache.credential_headers[1]"), "{e}");
        let c = Config::from_toml("[cache]\ncredential_headers = [\"X-Tenant-Auth\"]\n").unwrap();
        assert_eq!(c.cache.credential_headers, ["x-tenant-auth"]);
    }
}
