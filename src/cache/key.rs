//! Cache keys: xxh3-128 over (schema version, credential scope, provider,
//! upstream path, canonical body), or over a caller-chosen key in place of the
//! path and body (`aigw-cache-key`, still scoped).
//!
//! Canonical means JSON key order, whitespace and string escaping do not
//! change the key; every value does. Why not from the simd-json tape, as
//! DESIGN.md suggests: the tape keeps numbers as i64/u64/f64, so two integers
//! beyond 2^64 (a `seed`, say) that differ would parse to the same f64 and
//! share an entry: a wrong answer. The canonical form is written from the
//! request-body scanner (`json`) instead, which keeps each number's literal
//! text; so `1.0` and `1` are different keys (a lost hit, never a wrong one).
//! A body that is not one JSON value, or in which any object names a key twice,
//! has no key: such a request is not cached (it bypasses the cache).
//!
//! Cost (criterion `cache_key`): about 3.5 µs per KiB of chat body. Nested
//! values are scanned once per level (the member scan, then the recursion);
//! a single-pass walk is the known next step before this joins the request path.

use crate::json::{MAX_DEPTH, for_each_member, is_number, skip_value, skip_ws, string_value};
use std::borrow::Cow;
use xxhash_rust::xxh3::Xxh3;

/// Bumped whenever the canonical form or the key's inputs change, so entries
/// written under another form are never found.
pub const SCHEMA_VERSION: u32 = 1;

/// A cache key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(pub u128);

/// What a key is computed from.
#[derive(Clone, Copy, Debug)]
pub struct KeyInput<'a> {
    /// Who may share entries: a hash of the credential (the client's own
    /// provider key, or later the gateway key), or one value for everyone
    /// when `cache.shared` says so.
    pub scope: u64,
    pub provider: &'a str,
    /// Upstream path and query.
    pub path: &'a str,
    pub body: &'a [u8],
    /// `aigw-cache-key`: replaces path and body when given.
    pub custom: Option<&'a str>,
}

/// Why a request has no key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoKey {
    /// The body is not one JSON value (or nests deeper than we read).
    NotJson,
    /// An object names the same key twice: parsers disagree on its meaning.
    DuplicateKey,
}

/// Computes keys, reusing its buffer across requests (one per shard).
#[derive(Default)]
pub struct KeyMaker {
    canonical: Vec<u8>,
}

impl KeyMaker {
    pub fn key(&mut self, input: &KeyInput<'_>) -> Result<CacheKey, NoKey> {
        let mut h = Xxh3::new();
        h.update(&SCHEMA_VERSION.to_le_bytes());
        h.update(&input.scope.to_le_bytes());
        field(&mut h, input.provider.as_bytes());
        match input.custom {
            Some(custom) => {
                h.update(b"custom");
                field(&mut h, custom.as_bytes());
            }
            None => {
                h.update(b"body");
                field(&mut h, input.path.as_bytes());
                self.canonical.clear();
                canonical(input.body, &mut self.canonical)?;
                field(&mut h, &self.canonical);
            }
        }
        Ok(CacheKey(h.digest128()))
    }

    /// The canonical form of the last body keyed (for tests and diagnostics).
    pub fn last_canonical(&self) -> &[u8] {
        &self.canonical
    }
}

/// Hashes a length-prefixed field, so (a, bc) and (ab, c) differ.
fn field(h: &mut Xxh3, bytes: &[u8]) {
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// Writes the canonical form of the JSON text `body` into `out`.
pub fn canonical(body: &[u8], out: &mut Vec<u8>) -> Result<(), NoKey> {
    let start = crate::json::json_start(body);
    let end = value(body, start, out, 0)?;
    if skip_ws(body, end) != body.len() {
        return Err(NoKey::NotJson);
    }
    Ok(())
}

/// Writes the value at `i` canonically; returns the offset after it.
fn value(body: &[u8], i: usize, out: &mut Vec<u8>, depth: usize) -> Result<usize, NoKey> {
    if depth > MAX_DEPTH {
        return Err(NoKey::NotJson);
    }
    match body.get(i) {
        Some(b'{') => object(body, i, out, depth),
        Some(b'[') => array(body, i, out, depth),
        Some(b'"') => {
            let end = skip_value(body, i).map_err(|_| NoKey::NotJson)?;
            let raw = &body[i..end];
            if memchr::memchr(b'\\', raw).is_none() {
                // Without escapes the text is already canonical (a raw `"` or
                // control byte cannot occur in a valid string).
                out.extend_from_slice(raw);
            } else {
                let s = string_value(raw).ok_or(NoKey::NotJson)?;
                push_string(out, &s);
            }
            Ok(end)
        }
        Some(_) => {
            let end = skip_value(body, i).map_err(|_| NoKey::NotJson)?;
            let lit = &body[i..end];
            if !(lit == b"true" || lit == b"false" || lit == b"null" || is_number(lit)) {
                return Err(NoKey::NotJson);
            }
            out.extend_from_slice(lit);
            Ok(end)
        }
        None => Err(NoKey::NotJson),
    }
}

fn object(body: &[u8], open: usize, out: &mut Vec<u8>, depth: usize) -> Result<usize, NoKey> {
    // Members as (decoded key, value range), sorted by key. A key borrows
    // from the body unless it had escapes.
    let mut members: Vec<(Cow<'_, str>, std::ops::Range<usize>)> = Vec::new();
    let mut bad_key = false;
    let base = body.as_ptr() as usize;
    let end = for_each_member(body, open, |raw_key, range| {
        // `raw_key` lies between its quotes inside `body`.
        let at = raw_key.as_ptr() as usize - base;
        match string_value(&body[at - 1..at + raw_key.len() + 1]) {
            Some(k) => members.push((k, range)),
            None => bad_key = true,
        }
    })
    .map_err(|_| NoKey::NotJson)?;
    if bad_key {
        return Err(NoKey::NotJson);
    }
    members.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    if members.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(NoKey::DuplicateKey);
    }
    out.push(b'{');
    for (n, (k, range)) in members.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        push_string(out, k);
        out.push(b':');
        value(body, range.start, out, depth + 1)?;
    }
    out.push(b'}');
    Ok(end)
}

fn array(body: &[u8], open: usize, out: &mut Vec<u8>, depth: usize) -> Result<usize, NoKey> {
    out.push(b'[');
    let mut i = skip_ws(body, open + 1);
    if body.get(i) == Some(&b']') {
        out.push(b']');
        return Ok(i + 1);
    }
    let mut first = true;
    loop {
        if !first {
            out.push(b',');
        }
        first = false;
        let end = value(body, i, out, depth + 1)?;
        i = skip_ws(body, end);
        match body.get(i) {
            Some(b',') => i = skip_ws(body, i + 1),
            Some(b']') => {
                out.push(b']');
                return Ok(i + 1);
            }
            _ => return Err(NoKey::NotJson),
        }
    }
}

/// A string in one canonical spelling: only `"`, `\` and control characters
/// escaped, the latter as `\u00XX`.
fn push_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    // Nearly every string needs no escape: copy it whole.
    if !bytes.iter().any(|b| *b < 0x20 || *b == b'"' || *b == b'\\') {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let v = c as usize;
                out.extend_from_slice(b"\\u00");
                out.push(HEX[v >> 4]);
                out.push(HEX[v & 0xf]);
            }
            c => {
                let mut b = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(body: &str) -> Result<CacheKey, NoKey> {
        KeyMaker::default().key(&KeyInput {
            scope: 7,
            provider: "openai",
            path: "/v1/chat/completions",
            body: body.as_bytes(),
            custom: None,
        })
    }

    fn canon(body: &str) -> String {
        let mut out = Vec::new();
        canonical(body.as_bytes(), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn key_order_whitespace_and_escapes_do_not_change_the_key() {
        let a =
            r#"{"model":"gpt","messages":[{"role":"user","content":"hi\n"}],"temperature":0.2}"#;
        let b = "{ \"temperature\" : 0.2 ,\n \"messages\":[ {\"content\":\"h\\u0069\\n\", \"role\":\"user\"} ],\"m\\u006fdel\":\"gpt\" }";
        assert_eq!(key(a).unwrap(), key(b).unwrap());
        assert_eq!(
            canon(a),
            r#"{"messages":[{"content":"hi\u000a","role":"user"}],"model":"gpt","temperature":0.2}"#
        );
    }

    #[test]
    fn every_value_changes_the_key() {
        let base = key(r#"{"model":"gpt","temperature":0.2,"stream":false}"#).unwrap();
        for other in [
            r#"{"model":"gpt","temperature":0.3,"stream":false}"#,
            r#"{"model":"gpt","temperature":0.2,"stream":true}"#,
            r#"{"model":"gpt-4","temperature":0.2,"stream":false}"#,
            r#"{"model":"gpt","temperature":0.2,"stream":false,"max_tokens":5}"#,
            r#"{"model":"gpt","temperature":0.20,"stream":false}"#,
        ] {
            assert_ne!(key(other).unwrap(), base, "{other}");
        }
        // Integers past 64 bits stay apart (a parsed f64 would merge them).
        assert_ne!(
            key(r#"{"seed":123456789012345678901234567890}"#),
            key(r#"{"seed":123456789012345678901234567891}"#)
        );
    }

    #[test]
    fn scope_provider_path_and_custom_keys_are_part_of_the_key() {
        let mut k = KeyMaker::default();
        let input = KeyInput {
            scope: 1,
            provider: "openai",
            path: "/v1/chat/completions",
            body: b"{}",
            custom: None,
        };
        let base = k.key(&input).unwrap();
        for changed in [
            KeyInput { scope: 2, ..input },
            KeyInput {
                provider: "groq",
                ..input
            },
            KeyInput {
                path: "/v1/completions",
                ..input
            },
            KeyInput {
                custom: Some("mine"),
                ..input
            },
        ] {
            assert_ne!(k.key(&changed).unwrap(), base);
        }
        // A custom key ignores the body but not the scope.
        let custom = KeyInput {
            custom: Some("mine"),
            body: b"not even json",
            ..input
        };
        assert_eq!(
            k.key(&custom),
            k.key(&KeyInput {
                custom: Some("mine"),
                ..input
            })
        );
        assert_ne!(k.key(&custom), k.key(&KeyInput { scope: 9, ..custom }));
    }

    #[test]
    fn ambiguous_or_broken_bodies_have_no_key() {
        assert_eq!(key(r#"{"a":1,"a":2}"#), Err(NoKey::DuplicateKey));
        assert_eq!(key(r#"{"x":{"a":1,"\u0061":2}}"#), Err(NoKey::DuplicateKey));
        for bad in [
            "",
            "{",
            r#"{"a":1} {}"#,
            r#"{"a":1-2}"#,
            "[1,]",
            r#"{"a":tru}"#,
        ] {
            assert_eq!(key(bad), Err(NoKey::NotJson), "{bad}");
        }
        let deep = format!(
            "{}1{}",
            "[".repeat(MAX_DEPTH + 2),
            "]".repeat(MAX_DEPTH + 2)
        );
        assert_eq!(key(&deep), Err(NoKey::NotJson));
    }
}
