//! `[auth]` and `[keys.<id>]`: gateway keys defined in the file.
//!
//! Owns reading the sections into [`AuthConfig`] and [`KeyConfig`]s: the id's
//! shape, the secret's SHA-256 (64 hex digits; the secret itself never appears
//! in the file), model patterns and metadata. Keys created over the admin
//! socket live in the data directory's database, not here. Both are reloadable.

use super::read::Walker;
use std::collections::BTreeMap;

/// Longest key id (it is a log column and a metric label).
pub const MAX_KEY_ID: usize = 64;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct AuthConfig {
    /// Requests without a valid gateway key get 401.
    pub required: bool,
}

/// One `[keys.<id>]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyConfig {
    pub id: String,
    /// SHA-256 of the secret the client presents.
    pub secret_sha256: [u8; 32],
    /// `provider/model` patterns (`*` matches any run of characters); empty:
    /// every model.
    pub models: Vec<String>,
    /// Attribution fields every request with this key carries (they win over
    /// the request's own `aigw-metadata` of the same name).
    pub metadata: Vec<(String, String)>,
}

/// Whether `id` may name a key: 1 to 64 of `A-Z a-z 0-9 _ - .`.
pub fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_KEY_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Why a model pattern is not one, if it is not: `*`, or `provider/model`
/// where either part may hold `*`.
pub fn pattern_problem(p: &str) -> Option<String> {
    if p == "*" {
        return None;
    }
    match p.split_once('/') {
        Some((provider, model)) if !provider.is_empty() && !model.is_empty() => None,
        _ => Some(format!(
            "`{p}` is not a model pattern; write \"provider/model\", e.g. \"openai/*\" or \"anthropic/claude-*\""
        )),
    }
}

/// Parses 64 hex digits.
pub fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks(2).enumerate() {
        let d = |c: u8| (c as char).to_digit(16);
        out[i] = (d(pair[0])? * 16 + d(pair[1])?) as u8;
    }
    Some(out)
}

pub(super) fn read_auth(w: &mut Walker, root: &toml::Table) -> AuthConfig {
    let t = w.table(root, "auth");
    AuthConfig {
        required: w.flag(t, "auth.required").unwrap_or(false),
    }
}

pub(super) fn read_keys(w: &mut Walker, root: &toml::Table) -> BTreeMap<String, KeyConfig> {
    let mut keys = BTreeMap::new();
    let Some(all) = w.table(root, "keys") else {
        return keys;
    };
    for (id, v) in all {
        let path = format!("keys.{id}");
        let Some(t) = v.as_table() else {
            continue; // reported by the key check
        };
        if !valid_key_id(id) {
            w.err(
                &path,
                format!("`{id}` is not a key id; use 1 to {MAX_KEY_ID} of A-Z a-z 0-9 _ - ."),
            );
            continue;
        }
        let hash_path = format!("{path}.secret_sha256");
        let secret_sha256 = match w.string(Some(t), &hash_path) {
            Some(h) => match parse_sha256(&h) {
                Some(h) => h,
                None => {
                    w.err(
                        &hash_path,
                        "expected 64 hex digits (the SHA-256 of the secret); `aigw key new` prints one".into(),
                    );
                    continue;
                }
            },
            None => {
                if t.get("secret_sha256").is_none() {
                    w.err(
                        &hash_path,
                        "missing: every key needs the SHA-256 of its secret; `aigw key new` prints one".into(),
                    );
                }
                continue;
            }
        };
        let models_path = format!("{path}.models");
        let models = w.strings(Some(t), &models_path).unwrap_or_default();
        for (i, m) in models.iter().enumerate() {
            if let Some(why) = pattern_problem(m) {
                w.err(&format!("{models_path}[{i}]"), why);
            }
        }
        let metadata = read_metadata(w, t.get("metadata"), &format!("{path}.metadata"));
        keys.insert(
            id.clone(),
            KeyConfig {
                id: id.clone(),
                secret_sha256,
                models,
                metadata,
            },
        );
    }
    // The same secret under two ids would attribute requests to either.
    let mut seen: BTreeMap<[u8; 32], &str> = BTreeMap::new();
    for k in keys.values() {
        if let Some(first) = seen.insert(k.secret_sha256, &k.id) {
            w.err(
                &format!("keys.{}.secret_sha256", k.id),
                format!("the same secret as keys.{first}; every key needs its own"),
            );
        }
    }
    keys
}

/// A flat table of strings, numbers or booleans, kept as text.
fn read_metadata(w: &mut Walker, v: Option<&toml::Value>, path: &str) -> Vec<(String, String)> {
    let Some(v) = v else { return Vec::new() };
    let Some(t) = v.as_table() else {
        w.err(
            path,
            format!(
                "expected a table like {{ team = \"search\" }}, found {}",
                v.type_str()
            ),
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (k, v) in t {
        let text = match v {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                w.err(
                    &format!("{path}.{k}"),
                    format!(
                        "expected a string, an integer or a boolean, found {}{}",
                        other.type_str(),
                        if other.is_float() {
                            " (write a fraction as text, e.g. \"1.5\": it is matched as written)"
                        } else {
                            ""
                        }
                    ),
                );
                continue;
            }
        };
        out.push((k.clone(), text));
    }
    if let Some(why) = crate::record::key_metadata_problem(&out) {
        w.err(path, why);
        return Vec::new();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::super::tests::errors;

    const HASH: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[test]
    fn keys_read_with_their_patterns_and_metadata() {
        let c = Config::from_toml(&format!(
            "[auth]\nrequired = true\n[keys.alice]\nsecret_sha256 = \"{HASH}\"\nmodels = [\"openai/*\", \"anthropic/claude-*\"]\nmetadata = {{ team = \"search\", tier = 2 }}\n"
        ))
        .unwrap();
        assert!(c.auth.required);
        let k = &c.keys["alice"];
        assert_eq!(k.secret_sha256[0], 0x2c);
        assert_eq!(k.models, ["openai/*", "anthropic/claude-*"]);
        assert_eq!(
            k.metadata,
            [
                ("team".into(), "search".into()),
                ("tier".into(), "2".into())
            ]
        );
        assert!(!Config::from_toml("").unwrap().auth.required);
    }

    #[test]
    fn bad_keys_name_their_path() {
        let e = errors("[keys.a]\nsecret_sha256 = \"abc\"\n").join("\n");
        assert!(
            e.contains("keys.a.secret_sha256") && e.contains("64 hex"),
            "{e}"
        );
        let e = errors("[keys.a]\nmodels = []\n").join("\n");
        assert!(e.contains("keys.a.secret_sha256: missing"), "{e}");
        let e = errors(&format!(
            "[keys.a]\nsecret_sha256 = \"{HASH}\"\nmodels = [\"gpt-4o\"]\n"
        ))
        .join("\n");
        assert!(e.contains("keys.a.models[0]"), "{e}");
        let e = errors(&format!("[keys.\"a b\"]\nsecret_sha256 = \"{HASH}\"\n")).join("\n");
        assert!(e.contains("is not a key id"), "{e}");
        let e = errors(&format!(
            "[keys.a]\nsecret_sha256 = \"{HASH}\"\n[keys.b]\nsecret_sha256 = \"{HASH}\"\n"
        ))
        .join("\n");
        assert!(
            e.contains("keys.b.secret_sha256: the same secret as keys.a"),
            "{e}"
        );
        let e = errors(&format!(
            "[keys.a]\nsecret_sha256 = \"{HASH}\"\nsecret = \"x\"\n"
        ))
        .join("\n");
        assert!(e.contains("keys.a.secret: unknown key"), "{e}");
        // A fraction would be matched by the text TOML gives it back as.
        let e = errors(&format!(
            "[keys.a]\nsecret_sha256 = \"{HASH}\"\nmetadata = {{ tier = 1.5 }}\n"
        ))
        .join("\n");
        assert!(
            e.contains("keys.a.metadata.tier: expected a string, an integer or a boolean, found float (write a fraction as text"),
            "{e}"
        );
    }
}
