//! Gateway keys: who is calling. Stage 1a of the pipeline, right after the route.
//!
//! Owns the key table every shard reads ([`Registry`]: the file's keys and the
//! ones created over the admin socket, with a generation number a shard checks
//! per request, so a change is in force on every shard at its next request),
//! hashing and comparing secrets (SHA-256, compared in constant time), which
//! header carries the gateway key ([`presented`]), and the model patterns a
//! key allows. A shard reads its own copy of the table: no lock and no shared
//! write on the request path. Admin-created keys persist in `logstore::keys`.
//!
//! Only hashes are held: a secret is hashed as it arrives and dropped.

use crate::config::KeyConfig;
use crate::fasthash::FastMap;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The prefix of every secret `aigw key new` makes: a credential with it is
/// meant for the gateway (so an unknown one is refused, never passed on).
pub const SECRET_PREFIX: &str = "sk-aigw-";

/// Where a key was defined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// `[keys.<id>]` in the config file (changed by editing it and reloading).
    Config,
    /// `POST /keys` (stored in the data directory's database).
    Admin,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Config => "config",
            Origin::Admin => "admin",
        }
    }
}

/// One gateway key, as every shard sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyEntry {
    pub id: Arc<str>,
    pub hash: [u8; 32],
    /// `provider/model` patterns; empty allows every model.
    pub models: Vec<String>,
    pub metadata: Vec<(String, String)>,
    pub origin: Origin,
    /// Unix ms when created over the admin socket (0 for config keys).
    pub created_ms: u64,
}

impl KeyEntry {
    pub fn from_config(k: &KeyConfig) -> KeyEntry {
        KeyEntry {
            id: Arc::from(k.id.as_str()),
            hash: k.secret_sha256,
            models: k.models.clone(),
            metadata: k.metadata.clone(),
            origin: Origin::Config,
            created_ms: 0,
        }
    }

    /// Whether the key may use `model` of `provider`. A request without a
    /// model (a passthrough `GET /openai/models`) needs a pattern that allows
    /// every model of its provider.
    pub fn allows(&self, provider: &str, model: Option<&str>) -> bool {
        models_allow(&self.models, provider, model)
    }
}

/// Whether `provider/model` matches any of `patterns` (empty: everything).
/// Without a model, only a pattern allowing every model of the provider matches.
pub fn models_allow(patterns: &[String], provider: &str, model: Option<&str>) -> bool {
    patterns.is_empty()
        || patterns.iter().any(|p| {
            if p == "*" {
                return true;
            }
            let Some((pp, mp)) = p.split_once('/') else {
                return false;
            };
            glob(pp.as_bytes(), provider.as_bytes())
                && match model {
                    Some(m) => glob(mp.as_bytes(), m.as_bytes()),
                    None => mp == "*",
                }
        })
}

/// `*` matches any run of bytes (none included); everything else matches itself.
pub fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was, and the text position it matched up to.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|b| *b == b'*')
}

/// SHA-256 of a secret.
pub fn hash_secret(secret: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, secret);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Compares two hashes in time independent of where they differ.
pub fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Lower-case hex of a hash.
pub fn hex(hash: &[u8; 32]) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh secret: the prefix and 32 random bytes in hex.
pub fn new_secret() -> Result<String, String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the system's random source failed".to_string())?;
    Ok(format!("{SECRET_PREFIX}{}", hex(&bytes)))
}

/// The key table at one moment: keys by the first 8 bytes of their hash.
#[derive(Debug, Default)]
pub struct Keys {
    by_prefix: FastMap<u64, Vec<Arc<KeyEntry>>>,
    len: usize,
}

impl Keys {
    fn build<'a>(entries: impl Iterator<Item = &'a Arc<KeyEntry>>) -> Keys {
        let mut k = Keys::default();
        for e in entries {
            k.by_prefix
                .entry(prefix(&e.hash))
                .or_default()
                .push(e.clone());
            k.len += 1;
        }
        k
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether any key's attribution sets metadata field `field`.
    pub fn names_field(&self, field: &str) -> bool {
        self.by_prefix
            .values()
            .flatten()
            .any(|e| e.metadata.iter().any(|(f, _)| f == field))
    }

    /// A copy that shares no reference count with this one: a shard's own,
    /// so counting references to a hot key never crosses cores.
    fn local_copy(&self) -> Keys {
        let mut k = Keys::default();
        for entries in self.by_prefix.values() {
            for e in entries {
                let mut own = KeyEntry::clone(e);
                own.id = Arc::from(&*e.id);
                k.by_prefix
                    .entry(prefix(&own.hash))
                    .or_default()
                    .push(Arc::new(own));
                k.len += 1;
            }
        }
        k
    }

    /// The key whose secret this is, if any.
    pub fn find(&self, secret: &[u8]) -> Option<&Arc<KeyEntry>> {
        let hash = hash_secret(secret);
        self.by_prefix
            .get(&prefix(&hash))?
            .iter()
            .find(|e| ct_eq(&e.hash, &hash))
    }
}

fn prefix(hash: &[u8; 32]) -> u64 {
    u64::from_le_bytes(hash[..8].try_into().expect("8 bytes"))
}

/// Why a key could not be added or revoked.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyError {
    /// The id is taken (by a file key or a live admin key).
    Exists(String),
    /// No such key.
    NotFound(String),
    /// A file key: edit the file and reload instead.
    InConfig(String),
    /// The id is a file key's: a new key needs another.
    ConfigId(String),
    /// The secret is already another key's.
    SameSecret(String),
}

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyError::Exists(id) => write!(
                f,
                "a key with id `{id}` exists; revoke it first or choose another id"
            ),
            KeyError::NotFound(id) => write!(f, "no key with id `{id}`"),
            KeyError::InConfig(id) => write!(
                f,
                "key `{id}` is defined in the config file; remove [keys.{id}] there and reload"
            ),
            KeyError::ConfigId(id) => write!(
                f,
                "`{id}` is the id of a key in the config file ([keys.{id}]); choose another id"
            ),
            KeyError::SameSecret(id) => write!(f, "that secret is already key `{id}`'s"),
        }
    }
}

#[derive(Default)]
struct Sets {
    config: BTreeMap<Arc<str>, Arc<KeyEntry>>,
    admin: BTreeMap<Arc<str>, Arc<KeyEntry>>,
    /// Stored admin keys whose id the config file gives a key of its own (a
    /// file edited so while aigw was down): not in force while it does;
    /// they may be revoked, and come back when the file's key goes.
    shadowed: BTreeMap<Arc<str>, Arc<KeyEntry>>,
}

impl Sets {
    /// Admin keys go out of force while the file has a key of their id, and
    /// come back when it no longer does.
    fn settle_shadows(&mut self) {
        let config = &self.config;
        let was_hidden = std::mem::take(&mut self.shadowed);
        for id in was_hidden.keys().filter(|id| !config.contains_key(*id)) {
            log::warn!(
                "keys.{id}: the config file no longer defines this id: the key created over the admin socket with it is in force again"
            );
        }
        // A file key of the same id, or with the same secret, shadows it.
        let by_secret = |e: &KeyEntry| {
            config
                .values()
                .find(|f| ct_eq(&f.hash, &e.hash))
                .map(|f| f.id.clone())
        };
        let (hidden, shown): (Vec<_>, Vec<_>) = std::mem::take(&mut self.admin)
            .into_iter()
            .chain(was_hidden)
            .partition(|(id, e)| config.contains_key(id) || by_secret(e).is_some());
        for (id, e) in &hidden {
            match by_secret(e).filter(|f| f != id) {
                Some(file) => log::warn!(
                    "keys.{file}: the config file gives this key the secret of `{id}`, a key created over the admin socket; the file's is in force and `{id}` is not (revoke it with `aigw key revoke {id}`, or give keys.{file} a secret of its own to put it back in force)"
                ),
                None => log::warn!(
                    "keys.{id}: the config file defines a key with the id of a key created over the admin socket; the file's is in force and the admin key is not (revoke it with `aigw key revoke {id}`, or remove [keys.{id}] from the file to put it back in force)"
                ),
            }
        }
        self.shadowed = hidden.into_iter().collect();
        self.admin = shown.into_iter().collect();
    }
}

/// The key table shared by every shard: changed by a reload or the admin
/// socket (under a lock, off the request path), read by shards through
/// [`ShardKeys`].
pub struct Registry {
    sets: Mutex<Sets>,
    current: Mutex<Arc<Keys>>,
    generation: AtomicU64,
}

impl Registry {
    pub fn new(config: &BTreeMap<String, KeyConfig>, admin: Vec<KeyEntry>) -> Arc<Registry> {
        let r = Registry {
            sets: Mutex::new(Sets::default()),
            current: Mutex::new(Arc::default()),
            generation: AtomicU64::new(0),
        };
        {
            let mut sets = r.sets.lock().unwrap_or_else(|e| e.into_inner());
            sets.config = config_set(config);
            // A file key wins over an admin key of the same id (a reload
            // refuses such a file; one edited while aigw was down is said).
            sets.admin = admin
                .into_iter()
                .map(|e| (e.id.clone(), Arc::new(e)))
                .collect();
            sets.settle_shadows();
            r.publish(&sets);
        }
        Arc::new(r)
    }

    /// The keys of a config file that clash with admin keys (the same id, or
    /// the same secret), each as a config error: a reload refuses them, as
    /// `POST /keys` refuses an id or secret already taken.
    pub fn clashes(&self, config: &BTreeMap<String, KeyConfig>) -> Vec<String> {
        let sets = self.lock();
        let mut out = Vec::new();
        for (id, k) in config_set(config) {
            if sets.admin.contains_key(&id) {
                out.push(format!(
                    "keys.{id}: a key created over the admin socket has this id; revoke it first (`aigw key revoke {id}`) or choose another id"
                ));
            } else if let Some(other) = sets.admin.values().find(|e| ct_eq(&e.hash, &k.hash)) {
                out.push(format!(
                    "keys.{id}: its secret is key `{}`'s (created over the admin socket); make a new one with `aigw key new`",
                    other.id
                ));
            }
        }
        out
    }

    /// A reload's keys replace the file's keys (an admin key a file key
    /// shadowed comes back when the file's goes).
    pub fn set_config(&self, config: &BTreeMap<String, KeyConfig>) {
        let mut sets = self.lock();
        sets.config = config_set(config);
        sets.settle_shadows();
        self.publish(&sets);
    }

    /// Adds an admin key (its secret must be new and its id free).
    pub fn add(&self, entry: KeyEntry) -> Result<(), KeyError> {
        let mut sets = self.lock();
        self.check_new(&sets, &entry)?;
        sets.admin.insert(entry.id.clone(), Arc::new(entry));
        self.publish(&sets);
        Ok(())
    }

    /// Whether `entry` could be added now (checked before it is stored).
    pub fn can_add(&self, entry: &KeyEntry) -> Result<(), KeyError> {
        self.check_new(&self.lock(), entry)
    }

    fn check_new(&self, sets: &Sets, entry: &KeyEntry) -> Result<(), KeyError> {
        if sets.admin.contains_key(&entry.id) || sets.shadowed.contains_key(&entry.id) {
            return Err(KeyError::Exists(entry.id.to_string()));
        }
        if sets.config.contains_key(&entry.id) {
            return Err(KeyError::ConfigId(entry.id.to_string()));
        }
        if let Some(other) = sets
            .config
            .values()
            .chain(sets.admin.values())
            .chain(sets.shadowed.values())
            .find(|e| ct_eq(&e.hash, &entry.hash))
        {
            return Err(KeyError::SameSecret(other.id.to_string()));
        }
        Ok(())
    }

    /// Whether an admin key `id` may be revoked (one a file key shadows too).
    pub fn can_revoke(&self, id: &str) -> Result<(), KeyError> {
        let sets = self.lock();
        if sets.admin.contains_key(id) || sets.shadowed.contains_key(id) {
            Ok(())
        } else if sets.config.contains_key(id) {
            Err(KeyError::InConfig(id.to_string()))
        } else {
            Err(KeyError::NotFound(id.to_string()))
        }
    }

    /// Removes an admin key: from the next request on, no shard accepts it.
    pub fn revoke(&self, id: &str) -> Result<(), KeyError> {
        self.can_revoke(id)?;
        let mut sets = self.lock();
        sets.admin.remove(id);
        sets.shadowed.remove(id);
        self.publish(&sets);
        Ok(())
    }

    /// Every key, file keys first, by id, and whether it is in force (an
    /// admin key a file key of its id shadows is not).
    pub fn list(&self) -> Vec<(Arc<KeyEntry>, bool)> {
        let sets = self.lock();
        let live = sets.config.values().chain(sets.admin.values());
        live.map(|k| (k.clone(), true))
            .chain(sets.shadowed.values().map(|k| (k.clone(), false)))
            .collect()
    }

    /// Bumped by every change.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current table.
    pub fn snapshot(&self) -> Arc<Keys> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sets> {
        self.sets.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, sets: &Sets) {
        let keys = Arc::new(Keys::build(sets.config.values().chain(sets.admin.values())));
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = keys;
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

fn config_set(config: &BTreeMap<String, KeyConfig>) -> BTreeMap<Arc<str>, Arc<KeyEntry>> {
    config
        .values()
        .map(|k| {
            let e = KeyEntry::from_config(k);
            (e.id.clone(), Arc::new(e))
        })
        .collect()
}

/// Secrets a shard has verified, remembered (by a keyed hash, never the
/// secret) so a key's next request skips SHA-256. Cleared with the table.
const VERIFIED_CAP: usize = 4096;

/// A secret's full keyed hash and the key it is (`None`: no key).
type Verified = (u128, Option<Arc<KeyEntry>>);

/// A shard's copy of the key table, refreshed when the registry's generation moves.
pub struct ShardKeys {
    registry: Arc<Registry>,
    seen: std::cell::Cell<u64>,
    keys: std::cell::RefCell<Keys>,
    /// xxh3-128 of a verified secret under `seed` -> its key. The seed is
    /// random per process, so no one can make a secret that collides with
    /// another's without knowing it.
    /// Unknown secrets are remembered too (as `None`), so a client that
    /// sends its own provider key to a gateway with keys pays no SHA-256.
    verified: std::cell::RefCell<FastMap<u64, Verified>>,
    seed: u64,
}

impl ShardKeys {
    pub fn new(registry: Arc<Registry>) -> ShardKeys {
        let seen = registry.generation();
        let keys = registry.snapshot().local_copy();
        let mut seed = [0u8; 8];
        // Without randomness the seed is fixed: lookups stay correct, only
        // the collision argument weakens (to an unseeded 128-bit hash).
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed);
        ShardKeys {
            registry,
            seen: std::cell::Cell::new(seen),
            keys: std::cell::RefCell::new(keys),
            verified: std::cell::RefCell::new(FastMap::default()),
            seed: u64::from_le_bytes(seed),
        }
    }

    fn refresh(&self) {
        let now = self.registry.generation();
        if now != self.seen.get() {
            *self.keys.borrow_mut() = self.registry.snapshot().local_copy();
            self.verified.borrow_mut().clear();
            self.seen.set(now);
        }
    }

    /// Runs `f` on the current table (one atomic load when nothing changed).
    pub fn with<R>(&self, f: impl FnOnce(&Keys) -> R) -> R {
        self.refresh();
        f(&self.keys.borrow())
    }

    /// Whether the table holds no key (nothing to authenticate against).
    pub fn is_empty(&self) -> bool {
        self.with(Keys::is_empty)
    }

    /// The key whose secret this is: from the secrets this shard verified
    /// already, else by SHA-256 against the table (and then remembered).
    pub fn find(&self, secret: &[u8]) -> Option<Arc<KeyEntry>> {
        self.refresh();
        let h = xxhash_rust::xxh3::xxh3_128_with_seed(secret, self.seed);
        if let Some((full, k)) = self.verified.borrow().get(&(h as u64))
            && *full == h
        {
            return k.clone();
        }
        self.verify(secret, h)
    }

    /// A secret this shard has not seen (lately): SHA-256 against the
    /// table, remembered under its keyed hash `h`. Out of line: it runs once
    /// per secret, and its code beside the lookup cost every request
    /// instruction-cache misses.
    #[cold]
    #[inline(never)]
    fn verify(&self, secret: &[u8], h: u128) -> Option<Arc<KeyEntry>> {
        let found = self.keys.borrow().find(secret).cloned();
        let mut v = self.verified.borrow_mut();
        if v.len() >= VERIFIED_CAP {
            v.clear();
        }
        v.insert(h as u64, (h, found.clone()));
        found
    }
}

/// Where the gateway key came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carrier {
    /// `aigw-authorization` or `cf-aig-authorization`: meant for the gateway.
    Gateway,
    /// `Authorization` or `x-api-key` when aigw holds the provider's key.
    Provider,
    /// A gateway secret (`sk-aigw-...`) in a header that goes to the
    /// provider (`Authorization`, `x-api-key`, `api-key`, `x-goog-api-key`:
    /// aigw holds no key for it, so the client's own are passed on), whatever
    /// else the request carries: it is refused rather than hand the secret
    /// to the provider.
    Misplaced,
    /// Two different credentials for the gateway (say, two `Authorization`
    /// headers): which one counts would depend on their order.
    Conflicting,
}

/// The credential a request presents to the gateway, if any: the value of
/// `aigw-authorization` / `cf-aig-authorization` (`Bearer ` optional), else,
/// when aigw injects the provider's key (so the client's own credential
/// headers are not forwarded), `Authorization: Bearer` or `x-api-key`.
/// Every header is read: a misplaced secret or a second, different
/// credential anywhere is what counts ([`Carrier`]).
pub fn presented<'a>(
    headers: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    injected: bool,
) -> Option<(Carrier, &'a [u8])> {
    let (mut gateway, mut provider) = (None, None);
    let mut conflict = false;
    let mut take = |slot: &mut Option<&'a [u8]>, token: &'a [u8]| match slot {
        Some(t) => conflict |= *t != token,
        None => *slot = Some(token),
    };
    for (name, value) in headers {
        // By length first: most headers are none of these.
        let (wanted, for_gateway, carries): (&[u8], bool, bool) = match name.len() {
            18 => (b"aigw-authorization", true, false),
            20 => (b"cf-aig-authorization", true, false),
            13 => (b"authorization", false, true),
            9 => (b"x-api-key", false, true),
            7 => (b"api-key", false, false),
            14 => (b"x-goog-api-key", false, false),
            _ => continue,
        };
        if !name.eq_ignore_ascii_case(wanted) {
            continue;
        }
        let token = bearer(value);
        if for_gateway {
            take(&mut gateway, token);
        } else if !injected && token.starts_with(SECRET_PREFIX.as_bytes()) {
            return Some((Carrier::Misplaced, token));
        } else if injected && carries {
            take(&mut provider, token);
        }
    }
    if conflict {
        return Some((Carrier::Conflicting, b""));
    }
    gateway
        .map(|t| (Carrier::Gateway, t))
        .or(provider.map(|t| (Carrier::Provider, t)))
}

/// Whether `name` is a header a credential is presented in (the ones
/// [`presented`] reads): the only place a gateway secret may be.
pub fn credential_header(name: &[u8]) -> bool {
    [
        &b"aigw-authorization"[..],
        b"cf-aig-authorization",
        b"authorization",
        b"x-api-key",
        b"api-key",
        b"x-goog-api-key",
    ]
    .iter()
    .any(|c| name.eq_ignore_ascii_case(c))
}

/// Finds the prefix every gateway secret starts with (built once).
fn finder() -> &'static memchr::memmem::Finder<'static> {
    static FINDER: std::sync::OnceLock<memchr::memmem::Finder<'static>> =
        std::sync::OnceLock::new();
    FINDER.get_or_init(|| memchr::memmem::Finder::new(SECRET_PREFIX.as_bytes()))
}

/// Where a gateway secret's prefix occurs in `bytes` (a request head: one
/// pass finds every place, whichever header or part of the URL it is in).
pub fn secret_offsets(bytes: &[u8]) -> impl Iterator<Item = usize> + '_ {
    finder().find_iter(bytes)
}

/// Whether `bytes` (a URL, a name) hold a gateway secret as a provider reads
/// them: as written, or percent-decoded (Google's API takes its key in the
/// query, `?key=`; a URL goes upstream as written).
pub fn carries_secret(bytes: &[u8]) -> bool {
    holds_prefix(bytes) || decoded_carries_secret(bytes)
}

/// `text` with every gateway secret in it replaced by its prefix and an
/// ellipsis (what follows the prefix up to the first byte a secret cannot
/// hold); a text that still holds one percent-encoded becomes `instead`.
/// For messages that quote what a client sent (an unknown model, a path).
pub fn redact_secrets(text: &str, instead: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut from = 0;
    for at in secret_offsets(b) {
        if at < from {
            continue;
        }
        let end = at
            + SECRET_PREFIX.len()
            + b[at + SECRET_PREFIX.len()..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_'))
                .count();
        out.push_str(&text[from..at]);
        out.push_str(SECRET_PREFIX);
        out.push('…');
        from = end;
    }
    out.push_str(&text[from..]);
    if decoded_carries_secret(out.as_bytes()) {
        return instead.to_string();
    }
    out
}

/// Whether `bytes` percent-decoded (when they have an escape at all) hold a
/// gateway secret.
pub fn decoded_carries_secret(bytes: &[u8]) -> bool {
    bytes.len() >= SECRET_PREFIX.len()
        && bytes.contains(&b'%')
        && holds_prefix(&crate::http::percent_decode(bytes))
}

/// Inputs shorter than this (a model name, most paths) are searched byte by
/// byte: setting up the vectored search costs more than that.
const SHORT_SEARCH: usize = 64;

/// Whether `bytes` hold the secrets' prefix as written.
fn holds_prefix(bytes: &[u8]) -> bool {
    let prefix = SECRET_PREFIX.as_bytes();
    if bytes.len() < prefix.len() {
        return false;
    }
    if bytes.len() < SHORT_SEARCH {
        // A plain loop: memchr's set-up costs more than these few bytes.
        return (0..=bytes.len() - prefix.len())
            .any(|i| bytes[i] == prefix[0] && bytes[i..].starts_with(prefix));
    }
    finder().find(bytes).is_some()
}

/// Whether an `Authorization: Basic <base64>` value decodes to credentials
/// holding a gateway secret (a provider decodes them).
pub fn basic_carries_secret(value: &[u8]) -> bool {
    let v = value.trim_ascii();
    if v.len() < 6 || !v[..6].eq_ignore_ascii_case(b"basic ") {
        return false;
    }
    let sextet = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' | b'-' => Some(62),
        b'/' | b'_' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(v.len());
    let (mut acc, mut bits) = (0u32, 0);
    for &c in v[6..].trim_ascii_start() {
        let Some(s) = sextet(c) else { continue };
        acc = acc << 6 | u32::from(s);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    finder().find(&out).is_some()
}

/// The token of `Bearer <token>` (scheme case-insensitive), or the value.
fn bearer(value: &[u8]) -> &[u8] {
    let v = value.trim_ascii();
    if v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ") {
        v[7..].trim_ascii_start()
    } else {
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, secret: &str, models: &[&str]) -> KeyEntry {
        KeyEntry {
            id: Arc::from(id),
            hash: hash_secret(secret.as_bytes()),
            models: models.iter().map(|m| m.to_string()).collect(),
            metadata: vec![],
            origin: Origin::Admin,
            created_ms: 1,
        }
    }

    #[test]
    fn secrets_quoted_in_a_message_are_redacted() {
        assert_eq!(
            redact_secrets(
                "model `sk-aigw-abc_D-9` is not \"p/m\"; nor sk-aigw-x.",
                "no"
            ),
            "model `sk-aigw-…` is not \"p/m\"; nor sk-aigw-….",
        );
        assert_eq!(
            redact_secrets("path /v1/sk%2Daigw%2Dabc", "withheld"),
            "withheld"
        );
        assert_eq!(redact_secrets("nothing here", "no"), "nothing here");
    }

    #[test]
    fn a_secret_in_a_url_is_found_however_spelled() {
        assert!(carries_secret(b"/v1/x?key=sk-aigw-abc"));
        assert!(carries_secret(b"/v1/x?alt=sse&key=sk-aigw-abc"));
        assert!(carries_secret(b"/v1/x?key=%73k-aigw-abc"));
        assert!(carries_secret(
            b"/v1/models/sk%2Daigw%2dabc:generateContent"
        ));
        assert!(!carries_secret(b"/v1/x?key=AIza-provider&alt=sse"));
        assert!(!carries_secret(b""));
    }

    #[test]
    fn basic_credentials_are_read_as_a_provider_decodes_them() {
        // base64("sk-aigw-abc:"), and with a user name before it.
        assert!(basic_carries_secret(b"Basic c2stYWlndy1hYmM6"));
        assert!(basic_carries_secret(b"basic  dTpzay1haWd3LWFiYw=="));
        assert!(!basic_carries_secret(b"Basic dTpw"));
        assert!(!basic_carries_secret(b"Bearer sk-aigw-abc"));
    }

    #[test]
    fn glob_matches_runs() {
        assert!(glob(b"claude-*", b"claude-3-5-haiku"));
        assert!(glob(b"*", b""));
        assert!(glob(b"gpt-*-mini", b"gpt-4o-mini"));
        assert!(!glob(b"gpt-*-mini", b"gpt-4o"));
        assert!(glob(b"a*b*c", b"aXbYbc"));
        assert!(!glob(b"abc", b"abcd"));
        assert!(!glob(b"", b"a"));
    }

    #[test]
    fn models_allow_by_pattern() {
        let k = entry("a", "s", &["openai/*", "anthropic/claude-*"]);
        assert!(k.allows("openai", Some("gpt-4o")));
        assert!(k.allows("openai", None));
        assert!(k.allows("anthropic", Some("claude-sonnet-4")));
        assert!(!k.allows("anthropic", Some("other")));
        assert!(!k.allows("anthropic", None));
        assert!(!k.allows("mock", Some("mock")));
        assert!(entry("b", "t", &[]).allows("mock", None));
        assert!(entry("c", "u", &["*"]).allows("x", Some("y")));
    }

    #[test]
    fn the_registry_finds_keys_by_secret_and_forgets_revoked_ones() {
        let r = Registry::new(&BTreeMap::new(), vec![entry("a", "sk-aigw-1", &[])]);
        let keys = ShardKeys::new(r.clone());
        for _ in 0..2 {
            // The second time from the verified secrets.
            assert_eq!(
                keys.find(b"sk-aigw-1").map(|e| e.id.clone()),
                Some(Arc::from("a"))
            );
        }
        assert!(keys.find(b"sk-aigw-2").is_none());
        r.add(entry("b", "sk-aigw-2", &[])).unwrap();
        assert!(keys.find(b"sk-aigw-2").is_some());
        assert_eq!(
            r.add(entry("b", "x", &[])),
            Err(KeyError::Exists("b".into()))
        );
        assert_eq!(
            r.add(entry("c", "sk-aigw-2", &[])),
            Err(KeyError::SameSecret("b".into()))
        );
        r.revoke("a").unwrap();
        assert!(keys.find(b"sk-aigw-1").is_none(), "forgotten once revoked");
        assert_eq!(r.revoke("a"), Err(KeyError::NotFound("a".into())));
    }

    #[test]
    fn file_keys_cannot_be_revoked_over_the_socket() {
        let c = crate::config::Config::from_toml(&format!(
            "[keys.f]\nsecret_sha256 = \"{}\"\n",
            hex(&hash_secret(b"s"))
        ))
        .unwrap();
        let r = Registry::new(&c.keys, vec![]);
        assert_eq!(r.revoke("f"), Err(KeyError::InConfig("f".into())));
        // A new key may not take a file key's id: the answer says to choose another.
        assert_eq!(
            r.add(entry("f", "other", &[])),
            Err(KeyError::ConfigId("f".into()))
        );
        r.set_config(&BTreeMap::new());
        assert_eq!(r.revoke("f"), Err(KeyError::NotFound("f".into())));
    }

    /// An admin key whose id the file took while aigw was down is out of
    /// force, listed as such, revocable, and back in force once the file's
    /// key goes (as a restart would have it).
    #[test]
    fn an_admin_key_a_file_key_shadows_can_be_revoked_or_comes_back() {
        let c = crate::config::Config::from_toml(&format!(
            "[keys.d]\nsecret_sha256 = \"{}\"\n",
            hex(&hash_secret(b"sk-aigw-file"))
        ))
        .unwrap();
        let r = Registry::new(&c.keys, vec![entry("d", "sk-aigw-admin", &[])]);
        let keys = ShardKeys::new(r.clone());
        assert!(keys.find(b"sk-aigw-admin").is_none());
        assert!(keys.find(b"sk-aigw-file").is_some());
        let listed: Vec<bool> = r.list().iter().map(|(_, live)| *live).collect();
        assert_eq!(listed, [true, false]);
        // Its id and secret stay taken.
        assert_eq!(
            r.add(entry("d", "sk-aigw-new", &[])),
            Err(KeyError::Exists("d".into()))
        );
        assert_eq!(
            r.add(entry("e", "sk-aigw-admin", &[])),
            Err(KeyError::SameSecret("d".into()))
        );
        // The file's key goes: the admin key is in force again.
        r.set_config(&BTreeMap::new());
        assert!(keys.find(b"sk-aigw-admin").is_some());
        assert!(keys.find(b"sk-aigw-file").is_none());
        // A file key with another id but the admin key's secret shadows it
        // too: the secret is the file key's, and the admin key is listed as
        // out of force (not in force under its own models).
        let c2 = crate::config::Config::from_toml(&format!(
            "[keys.bo]\nsecret_sha256 = \"{}\"\n",
            hex(&hash_secret(b"sk-aigw-admin"))
        ))
        .unwrap();
        let r2 = Registry::new(&c2.keys, vec![entry("amy", "sk-aigw-admin", &["up/b"])]);
        let live: Vec<(String, bool)> = r2
            .list()
            .iter()
            .map(|(k, live)| (k.id.to_string(), *live))
            .collect();
        assert_eq!(live, [("bo".into(), true), ("amy".into(), false)]);
        assert!(r2.clashes(&c2.keys).is_empty(), "the running file reloads");
        let keys2 = ShardKeys::new(r2.clone());
        assert_eq!(
            keys2.find(b"sk-aigw-admin").map(|k| k.id.clone()),
            Some(Arc::from("bo"))
        );
        r2.set_config(&BTreeMap::new());
        assert_eq!(
            keys2.find(b"sk-aigw-admin").map(|k| k.id.clone()),
            Some(Arc::from("amy"))
        );
        // Or, while shadowed, it may be revoked for good.
        let r = Registry::new(&c.keys, vec![entry("d", "sk-aigw-admin", &[])]);
        r.revoke("d").unwrap();
        r.set_config(&BTreeMap::new());
        let keys = ShardKeys::new(r.clone());
        assert!(keys.find(b"sk-aigw-admin").is_none());
        assert!(r.list().is_empty());
    }

    #[test]
    fn the_gateway_header_wins_and_provider_headers_count_only_when_injected() {
        let h: Vec<(&[u8], &[u8])> = vec![
            (b"Authorization", b"Bearer sk-provider"),
            (b"cf-aig-authorization", b"Bearer  sk-aigw-x "),
        ];
        assert_eq!(
            presented(h.iter().copied(), false),
            Some((Carrier::Gateway, &b"sk-aigw-x"[..]))
        );
        let h: Vec<(&[u8], &[u8])> = vec![(b"x-api-key", b"sk-aigw-y")];
        assert_eq!(
            presented(h.iter().copied(), true),
            Some((Carrier::Provider, &b"sk-aigw-y"[..]))
        );
        // Where it would go upstream, a gateway secret is refused, not passed on.
        assert_eq!(
            presented(h.iter().copied(), false),
            Some((Carrier::Misplaced, &b"sk-aigw-y"[..]))
        );
        let h: Vec<(&[u8], &[u8])> = vec![(b"Authorization", b"Bearer sk-provider")];
        assert_eq!(presented(h.iter().copied(), false), None);
        // A secret on its way upstream is refused whatever else is there.
        for (name, value) in [
            (&b"authorization"[..], &b"bearer sk-aigw-z"[..]),
            (b"Authorization", b"sk-aigw-z"),
            (b"api-key", b"sk-aigw-z"),
            (b"X-Goog-Api-Key", b"sk-aigw-z"),
        ] {
            let h: Vec<(&[u8], &[u8])> =
                vec![(b"aigw-authorization", b"Bearer sk-aigw-x"), (name, value)];
            assert_eq!(
                presented(h.iter().copied(), false),
                Some((Carrier::Misplaced, &b"sk-aigw-z"[..])),
                "{}",
                String::from_utf8_lossy(name)
            );
        }
        // Two different credentials for the gateway: neither counts.
        for (a, b, injected) in [
            (
                &b"aigw-authorization"[..],
                &b"cf-aig-authorization"[..],
                false,
            ),
            (b"authorization", b"Authorization", true),
            (b"authorization", b"x-api-key", true),
        ] {
            let h: Vec<(&[u8], &[u8])> = vec![(a, b"Bearer sk-aigw-1"), (b, b"Bearer sk-aigw-2")];
            assert_eq!(
                presented(h.iter().copied(), injected),
                Some((Carrier::Conflicting, &b""[..]))
            );
            // The same one twice is one credential.
            let h: Vec<(&[u8], &[u8])> = vec![(a, b"Bearer sk-aigw-1"), (b, b"sk-aigw-1")];
            assert_eq!(
                presented(h.iter().copied(), injected).map(|(_, t)| t),
                Some(&b"sk-aigw-1"[..])
            );
        }
    }

    #[test]
    fn secrets_are_fresh_and_hash_to_known_values() {
        let (a, b) = (new_secret().unwrap(), new_secret().unwrap());
        assert!(a.starts_with(SECRET_PREFIX) && a.len() == SECRET_PREFIX.len() + 64);
        assert_ne!(a, b);
        assert_eq!(
            hex(&hash_secret(b"hello")),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
    }
}
