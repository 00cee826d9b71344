//! Cache keys: xxh3-128 over (schema version, credential scope, provider,
//! upstream path, what the provider is asked (`form`), xxh3-128 of the
//! canonical body), or with a caller-chosen key in place of the body
//! (`aigw-cache-key`, still scoped).
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
//! One pass over the body: runs of it that read canonically as they stand
//! are copied whole (at whitespace, an escaped string, or an object whose
//! keys arrive out of order, which is reordered in a scratch buffer); escaped
//! strings are re-spelled straight from their text. Measured (criterion
//! `cache_key`, chat bodies): 1.5 µs for 1 KiB, 23 µs for 16 KiB (0.7
//! GiB/s) on a day the host ran about half as fast as when the eager walk
//! measured 0.94 and 11.9 µs: compare within one run (the all-miss
//! pipeline's instructions fell from 29.6k to 28.1k). A body the shard saw lately is not read again: the
//! shard keeps its canonical digest with the body's scanned fields (one memo
//! probe finds both, `json::scan_remembered`) and passes it back in
//! [`KeyInput::canonical`]. A body read for the first time is read once for
//! both: the walk that writes its canonical form also hands the routing scan
//! its top-level members ([`KeyMaker::digest_and_members`]).

use crate::json::{MAX_DEPTH, is_number, skip_ws};
use std::ops::Range;

/// Bumped whenever the canonical form or the key's inputs change, so entries
/// written under another form are never found.
pub const SCHEMA_VERSION: u32 = 9;

/// A cache key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(pub u128);

/// Hex digits in a key's text form.
pub const KEY_TEXT_LEN: usize = 32;

impl CacheKey {
    /// Lower-case hex, all 32 digits: the log's `cache_key`, what
    /// `aigw cache purge --key` takes. Without `fmt`: it runs for every
    /// logged request the cache saw.
    pub fn to_text(self) -> [u8; KEY_TEXT_LEN] {
        crate::num::hex_u128(self.0)
    }

    /// The key whose [`CacheKey::to_text`] is `text` (either case).
    pub fn parse(text: &str) -> Option<CacheKey> {
        (text.len() == KEY_TEXT_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| u128::from_str_radix(text, 16).ok().map(CacheKey))
            .flatten()
    }
}

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
    /// The canonical digest of `body` ([`KeyMaker::key_and_canonical`]
    /// gave it for the same bytes), when the caller remembers it: the body
    /// is not read.
    pub canonical: Option<u128>,
    /// `aigw-cache-key`: replaces the body, and the path's query, when
    /// given (the path itself stays: an answer of another endpoint or
    /// format is never the answer).
    pub custom: Option<&'a str>,
    /// What else decides the answer ([`crate::cache::form`]): whether the
    /// body goes upstream as written, and which targets a route may choose.
    pub form: u64,
    /// The request asks for a stream: a stream is never the answer to a
    /// request that did not ask for one (and vice versa), custom key or not.
    pub stream: bool,
    /// The stream's client asked for its usage event (`stream_options.
    /// include_usage`): it is in what that client receives and not in what
    /// one that did not ask receives, so entries under a custom key (which
    /// replaces the body that says so) differ by it.
    pub asked_usage: bool,
}

/// Why a request has no key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoKey {
    /// The body is not one JSON value (or nests deeper than we read).
    NotJson,
    /// An object names the same key twice: parsers disagree on its meaning.
    DuplicateKey,
}

/// Computes keys, reusing its buffers across requests (one per shard).
#[derive(Default)]
pub struct KeyMaker {
    /// The canonical form written so far. The form itself is `canonical`
    /// followed by `body[from..at]`, where `at` is where the walk is: a run
    /// of the body that reads canonically as it stands (no whitespace, no
    /// escape, no object to reorder) is copied once, when something else
    /// must follow it, not token by token.
    canonical: Vec<u8>,
    /// Where the run of the body not yet copied starts.
    from: usize,
    /// Members of the objects being written, as a stack shared by nesting levels.
    members: Vec<Member>,
    /// Where an object's members are reordered.
    scratch: Vec<u8>,
    /// The key's inputs, laid out to be hashed.
    head: Vec<u8>,
    /// The body's top-level members.
    tops: Vec<TopMember>,
    /// Where each member's folded key is in `scratch` (see `sort_members`).
    spans: Vec<Range<usize>>,
}

/// A top-level member of a body: its raw key (between the quotes) and its
/// value, as ranges in the body.
pub type TopMember = (Range<usize>, Range<usize>);

/// One member written to the canonical buffer: `"key":value` spans
/// `start..end`, its key `start..key_end`.
#[derive(Clone, Copy)]
struct Member {
    start: usize,
    key_end: usize,
    end: usize,
}

impl KeyMaker {
    pub fn key(&mut self, input: &KeyInput<'_>) -> Result<CacheKey, NoKey> {
        self.key_and_canonical(input).map(|(key, _)| key)
    }

    /// The key, and the body's canonical digest when the key includes the
    /// body (not with a custom key): a caller that remembers the body can
    /// keep it and pass it back as [`KeyInput::canonical`].
    pub fn key_and_canonical(
        &mut self,
        input: &KeyInput<'_>,
    ) -> Result<(CacheKey, Option<u128>), NoKey> {
        // The body counts only without a custom key. The inputs are laid
        // out in one buffer and hashed at once: a streaming hasher's set-up
        // and per-update copies cost more than hashing these few dozen bytes.
        let digest = match (input.custom, input.canonical) {
            (Some(_), _) => 0,
            (None, Some(canonical)) => canonical,
            (None, None) => self.body_digest(input.body)?,
        };
        let h = &mut self.head;
        h.clear();
        h.extend_from_slice(&SCHEMA_VERSION.to_le_bytes());
        h.extend_from_slice(&input.scope.to_le_bytes());
        field(h, input.provider.as_bytes());
        h.push(u8::from(input.stream));
        h.extend_from_slice(&input.form.to_le_bytes());
        match input.custom {
            Some(custom) => {
                h.extend_from_slice(b"custom");
                h.push(u8::from(input.asked_usage));
                // The query stays: it may choose the answer's format (Gemini's
                // `alt=sse`, Azure's `api-version`). Its credentials are in
                // the scope already; here they would keep a custom key from
                // being shared under `cache.shared`.
                let (path, query) =
                    crate::http::split_byte(input.path, b'?').unwrap_or((input.path, ""));
                field(h, path.as_bytes());
                // One field: the kept pairs, each followed by `&`.
                let len_at = h.len();
                h.extend_from_slice(&[0; 8]);
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let name = crate::http::split_byte(pair, b'=').map_or(pair, |(k, _)| k);
                    if super::credential_param(name).is_none() {
                        h.extend_from_slice(pair.as_bytes());
                        h.push(b'&');
                    }
                }
                let kept = (h.len() - len_at - 8) as u64;
                h[len_at..len_at + 8].copy_from_slice(&kept.to_le_bytes());
                field(h, custom.as_bytes());
            }
            None => {
                h.extend_from_slice(b"body");
                field(h, input.path.as_bytes());
                h.extend_from_slice(&digest.to_le_bytes());
            }
        }
        let canonical = input.custom.is_none().then_some(digest);
        Ok((CacheKey(xxhash_rust::xxh3::xxh3_128(h)), canonical))
    }

    /// xxh3-128 of the canonical form of `body`.
    fn body_digest(&mut self, body: &[u8]) -> Result<u128, NoKey> {
        self.write_canonical(body)?;
        Ok(xxhash_rust::xxh3::xxh3_128(&self.canonical))
    }

    /// The canonical digest of `body` (what [`KeyInput::canonical`] takes),
    /// with its top-level members as (raw key, value) ranges in `body`, in
    /// order (none when it is not an object), so whoever needs the members
    /// as well (`json::scan_members`) need not read the body again. The walk
    /// accepts a subset of what `json::scan_request` accepts (it also checks
    /// literals, escapes, depth and repeated keys anywhere; neither checks
    /// UTF-8 or raw control bytes in strings), and its ranges are the ones
    /// `json::for_each_member` gives.
    pub fn digest_and_members(&mut self, body: &[u8]) -> Result<(u128, &[TopMember]), NoKey> {
        let digest = self.body_digest(body)?;
        Ok((digest, &self.tops))
    }

    /// Writes the canonical form of the JSON text `body`, in one pass.
    fn write_canonical(&mut self, body: &[u8]) -> Result<(), NoKey> {
        self.canonical.clear();
        self.members.clear();
        self.tops.clear();
        let start = crate::json::json_start(body);
        self.from = start;
        let end = self.value(body, start, 0)?;
        if skip_ws(body, end) != body.len() {
            return Err(NoKey::NotJson);
        }
        self.flush(body, end);
        Ok(())
    }

    /// Copies the run of the body up to `at` into the canonical form.
    fn flush(&mut self, body: &[u8], at: usize) {
        self.canonical.extend_from_slice(&body[self.from..at]);
        self.from = at;
    }

    /// Where body offset `at` (in the run not yet copied) falls in the
    /// canonical form.
    fn place(&self, at: usize) -> usize {
        self.canonical.len() + (at - self.from)
    }

    /// Skips whitespace at `i`: whitespace is not canonical, so the run
    /// before it is copied and a new run starts after it.
    fn gap(&mut self, body: &[u8], i: usize) -> usize {
        let j = skip_ws(body, i);
        if j != i {
            self.flush(body, i);
            self.from = j;
        }
        j
    }

    /// The string at `i..end` has escapes: it is written re-spelled.
    fn respell(&mut self, body: &[u8], i: usize, end: usize) -> Result<(), NoKey> {
        self.flush(body, i);
        self.canonical.push(b'"');
        reencode(&body[i + 1..end - 1], &mut self.canonical)?;
        self.canonical.push(b'"');
        self.from = end;
        Ok(())
    }

    /// Writes the value at `i`; returns the offset after it.
    fn value(&mut self, body: &[u8], i: usize, depth: usize) -> Result<usize, NoKey> {
        if depth > MAX_DEPTH {
            return Err(NoKey::NotJson);
        }
        match body.get(i) {
            Some(b'{') => self.object(body, i, depth),
            Some(b'[') => self.array(body, i, depth),
            Some(b'"') => {
                let (end, _, escaped) = string_end::<false>(body, i)?;
                if escaped {
                    self.respell(body, i, end)?;
                }
                Ok(end)
            }
            Some(_) => {
                // Literals are canonical as written.
                let end = literal_end(body, i);
                let lit = &body[i..end];
                if !(lit == b"true" || lit == b"false" || lit == b"null" || is_number(lit)) {
                    return Err(NoKey::NotJson);
                }
                Ok(end)
            }
            None => Err(NoKey::NotJson),
        }
    }

    fn object(&mut self, body: &[u8], open: usize, depth: usize) -> Result<usize, NoKey> {
        let base = self.members.len();
        let first = self.place(open + 1);
        // Whether a key may fold (see `sort_members`).
        let mut may_fold = false;
        let mut i = self.gap(body, open + 1);
        let close = if body.get(i) == Some(&b'}') {
            i
        } else {
            loop {
                if body.get(i) != Some(&b'"') {
                    return Err(NoKey::NotJson);
                }
                let key_at = i;
                let (end, folds, escaped) = string_end::<true>(body, i)?;
                may_fold |= folds || escaped;
                let start = self.place(key_at);
                if escaped {
                    self.respell(body, key_at, end)?;
                }
                let key_end = self.place(end);
                i = self.gap(body, end);
                if body.get(i) != Some(&b':') {
                    return Err(NoKey::NotJson);
                }
                let value_at = self.gap(body, i + 1);
                i = self.value(body, value_at, depth + 1)?;
                if depth == 0 {
                    self.tops.push((key_at + 1..end - 1, value_at..i));
                }
                self.members.push(Member {
                    start,
                    key_end,
                    end: self.place(i),
                });
                i = self.gap(body, i);
                match body.get(i) {
                    Some(b',') => i = self.gap(body, i + 1),
                    Some(b'}') => break i,
                    _ => return Err(NoKey::NotJson),
                }
            }
        };
        self.sort_members(body, close, base, first, may_fold)?;
        self.members.truncate(base);
        Ok(close + 1)
    }

    /// `close`: the object's closing brace in the body, which the run not
    /// yet copied reaches.
    fn sort_members(
        &mut self,
        body: &[u8],
        close: usize,
        base: usize,
        first: usize,
        may_fold: bool,
    ) -> Result<(), NoKey> {
        let members = &self.members[base..];
        // Keys that parsers matching keys ignoring case take for one
        // (`"Temperature"`, `"temperature"`) are a repeat to them: which one
        // wins depends on the order, which the canonical form drops.
        if may_fold && members.len() > 1 {
            let (folded, spans) = (&mut self.scratch, &mut self.spans);
            folded.clear();
            spans.clear();
            for m in members {
                // Go reads bytes that are not UTF-8 as U+FFFD: two such
                // keys may be one to it.
                let k = key_bytes(&self.canonical, self.from, body, m);
                let k = std::str::from_utf8(k).map_err(|_| NoKey::NotJson)?;
                let at = folded.len();
                crate::json::fold_key(k, folded);
                spans.push(at..folded.len());
            }
            spans.sort_unstable_by(|a, b| folded[a.clone()].cmp(&folded[b.clone()]));
            if spans
                .windows(2)
                .any(|w| folded[w[0].clone()] == folded[w[1].clone()])
            {
                return Err(NoKey::DuplicateKey);
            }
        }
        let key = |m| key_bytes(&self.canonical, self.from, body, m);
        if members
            .windows(2)
            .all(|w| key_order(key(&w[0]), key(&w[1])).is_lt())
        {
            return Ok(()); // already in order, no repeats: the common case
        }
        // Reordered in the canonical form itself: the run up to the brace
        // is copied first.
        self.flush(body, close);
        let buf = &self.canonical;
        let key = |m: &Member| &buf[m.start..m.key_end];
        let members = &mut self.members[base..];
        members.sort_unstable_by(|a, b| key_order(key(a), key(b)));
        if members.windows(2).any(|w| key(&w[0]) == key(&w[1])) {
            return Err(NoKey::DuplicateKey);
        }
        self.scratch.clear();
        for (n, m) in members.iter().enumerate() {
            if n > 0 {
                self.scratch.push(b',');
            }
            self.scratch.extend_from_slice(&buf[m.start..m.end]);
        }
        self.canonical.truncate(first);
        self.canonical.extend_from_slice(&self.scratch);
        Ok(())
    }

    fn array(&mut self, body: &[u8], open: usize, depth: usize) -> Result<usize, NoKey> {
        let mut i = self.gap(body, open + 1);
        if body.get(i) == Some(&b']') {
            return Ok(i + 1);
        }
        loop {
            i = self.value(body, i, depth + 1)?;
            i = self.gap(body, i);
            match body.get(i) {
                Some(b',') => i = self.gap(body, i + 1),
                Some(b']') => return Ok(i + 1),
                _ => return Err(NoKey::NotJson),
            }
        }
    }
}

/// The bytes of member `m`'s key, wherever they are: in `canonical`, or
/// still in the run of `body` not yet copied from `from` (a key is never
/// split: runs are copied at whitespace and escapes, which are outside a key
/// as written).
fn key_bytes<'b>(canonical: &'b [u8], from: usize, body: &'b [u8], m: &Member) -> &'b [u8] {
    let len = canonical.len();
    if m.start >= len {
        &body[from + (m.start - len)..from + (m.key_end - len)]
    } else {
        &canonical[m.start..m.key_end]
    }
}

/// The order of keys in the canonical form: shorter first, then bytewise
/// (a total order, so any arrangement of an object sorts to one form).
/// Shorter first because clients write the common objects that way round
/// already: `{"role":..,"content":..}` (every message), `{"type":..,
/// "function":..}`, `{"name":..,"arguments":..}` need no sorting, where
/// byte order reordered every message. Compared in line: keys are short and
/// differ early, and the call to `memcmp` that the slice comparison makes
/// cost more than the comparing (a profile of all-miss traffic put it at
/// 0.035 µs a request).
fn key_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    if a.len() != b.len() {
        return a.len().cmp(&b.len());
    }
    for (x, y) in a.iter().zip(b) {
        if x != y {
            return x.cmp(y);
        }
    }
    std::cmp::Ordering::Equal
}

/// Hashes a length-prefixed field, so (a, bc) and (ab, c) differ.
fn field(h: &mut Vec<u8>, bytes: &[u8]) {
    h.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    h.extend_from_slice(bytes);
}

/// The canonical form of the JSON text `body` (see [`KeyMaker`]).
pub fn canonical(body: &[u8], out: &mut Vec<u8>) -> Result<(), NoKey> {
    let mut k = KeyMaker::default();
    k.write_canonical(body)?;
    out.extend_from_slice(&k.canonical);
    Ok(())
}

/// The string starting at `i` (its opening quote): the offset after its
/// closing quote, whether (`KEY`: as a key) it may fold
/// ([`crate::json::may_fold`]), and whether it has escapes. Without escapes
/// the text is canonical as written (a raw `"` or control byte cannot occur
/// in a valid string).
fn string_end<const KEY: bool>(body: &[u8], i: usize) -> Result<(usize, bool, bool), NoKey> {
    let mut j = i + 1;
    let mut escaped = false;
    let mut folds = false;
    loop {
        let hay = &body[j.min(body.len())..];
        let found = if KEY && !escaped {
            let (found, f) = crate::json::quote_or_backslash_folding(hay);
            folds = f;
            found
        } else {
            crate::json::quote_or_backslash(hay)
        };
        match found {
            Some(k) if body[j + k] == b'\\' => {
                escaped = true;
                j += k + 2;
            }
            Some(k) => return Ok((j + k + 1, folds, escaped)),
            None => return Err(NoKey::NotJson),
        }
    }
}

/// Re-spells the inside of an escaped string canonically, straight from its
/// text: runs without escapes are copied, each escape becomes the one
/// canonical spelling of its character.
fn reencode(inner: &[u8], out: &mut Vec<u8>) -> Result<(), NoKey> {
    let hex4 = |at: usize| -> Result<u32, NoKey> {
        inner
            .get(at..at + 4)
            .and_then(crate::json::hex4)
            .ok_or(NoKey::NotJson)
    };
    let mut i = 0;
    while i < inner.len() {
        match memchr::memchr(b'\\', &inner[i..]) {
            None => {
                out.extend_from_slice(&inner[i..]);
                return Ok(());
            }
            Some(k) => {
                out.extend_from_slice(&inner[i..i + k]);
                i += k;
            }
        }
        let ch = match inner.get(i + 1).ok_or(NoKey::NotJson)? {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let mut cp = hex4(i + 2)?;
                if (0xD800..0xDC00).contains(&cp) {
                    // A high surrogate must be followed by an escaped low one.
                    if inner.get(i + 6..i + 8) != Some(b"\\u") {
                        return Err(NoKey::NotJson);
                    }
                    let low = hex4(i + 8)?;
                    if !(0xDC00..0xE000).contains(&low) {
                        return Err(NoKey::NotJson);
                    }
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
                    i += 6;
                }
                i += 4;
                char::from_u32(cp).ok_or(NoKey::NotJson)?
            }
            _ => return Err(NoKey::NotJson),
        };
        i += 2;
        push_char(out, ch);
    }
    Ok(())
}

/// One character in its canonical spelling inside a string.
fn push_char(out: &mut Vec<u8>, c: char) {
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

/// The end of a bare literal (number, true, false, null) starting at `i`.
fn literal_end(body: &[u8], i: usize) -> usize {
    let mut j = i;
    while j < body.len() && !matches!(body[j], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
        j += 1;
    }
    j
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chat request of `body` as the tests' client sends it.
    fn chat(body: &[u8]) -> KeyInput<'_> {
        KeyInput {
            scope: 7,
            provider: "openai",
            path: "/v1/chat/completions",
            body,
            canonical: None,
            custom: None,
            form: 0,
            stream: false,
            asked_usage: false,
        }
    }

    fn key(body: &str) -> Result<CacheKey, NoKey> {
        KeyMaker::default().key(&chat(body.as_bytes()))
    }

    fn canon(body: &str) -> String {
        let mut out = Vec::new();
        canonical(body.as_bytes(), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn key_order_is_shorter_first_then_bytewise() {
        let keys: [&[u8]; 8] = [
            b"",
            b"\"",
            b"\"a\"",
            b"\"ab\"",
            b"\"a",
            b"\"b\"",
            b"\"\xc3\xa9\"",
            b"\"\\u0000\"",
        ];
        for a in keys {
            for b in keys {
                let want = a.len().cmp(&b.len()).then(a.cmp(b));
                assert_eq!(key_order(a, b), want, "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn key_order_whitespace_and_escapes_do_not_change_the_key() {
        let a =
            r#"{"model":"gpt","messages":[{"role":"user","content":"hi\n"}],"temperature":0.2}"#;
        let b = "{ \"temperature\" : 0.2 ,\n \"messages\":[ {\"content\":\"h\\u0069\\n\", \"role\":\"user\"} ],\"m\\u006fdel\":\"gpt\" }";
        assert_eq!(key(a).unwrap(), key(b).unwrap());
        assert_eq!(
            canon(a),
            r#"{"model":"gpt","messages":[{"role":"user","content":"hi\u000a"}],"temperature":0.2}"#
        );
    }

    /// Writes `{"k0":{"k0":0,...},...}` with its keys in a shuffled order and
    /// random whitespace, `depth` levels deep.
    fn shuffled(rng: &mut crate::reqid::IdGen, depth: usize, out: &mut String) {
        let mut keys: Vec<usize> = (0..6).collect();
        for i in (1..keys.len()).rev() {
            keys.swap(i, rng.next_u64() as usize % (i + 1));
        }
        let ws =
            |rng: &mut crate::reqid::IdGen| [" ", "", "\n ", "\t"][rng.next_u64() as usize % 4];
        out.push('{');
        for (n, k) in keys.iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            out.push_str(ws(rng));
            out.push_str(&format!("\"k{k}\"{}:", ws(rng)));
            if depth > 0 {
                shuffled(rng, depth - 1, out);
            } else {
                out.push_str(&format!("[{k}, \"v{k}\", true]"));
            }
        }
        out.push('}');
    }

    /// A JSON value for [`the_canonical_form_is_the_value_written_sorted`]:
    /// objects, arrays, and strings or literals as written.
    enum Tree {
        Object(Vec<(&'static str, Tree)>),
        Array(Vec<Tree>),
        Text(&'static str),
    }

    fn tree(rng: &mut crate::reqid::IdGen, depth: usize) -> Tree {
        // Keys that differ once read (`b\u0061` is `ba`), plain and escaped.
        const KEYS: [&str; 10] = [
            r#""a""#,
            r#""role""#,
            r#""content""#,
            r#""b\u0061""#,
            r#""\u0063d""#,
            r#""model""#,
            r#""x y""#,
            "\"\u{e9}t\u{e9}\"",
            r#""messages""#,
            r#""t\"q""#,
        ];
        const TEXTS: [&str; 11] = [
            r#""hi""#,
            r#""h\u0069 there""#,
            r#""line\nbreak""#,
            r#""""#,
            r#""tab\tx\\""#,
            "0",
            "-1.5e3",
            "true",
            "false",
            "null",
            "12345678901234567890123",
        ];
        let pick = |rng: &mut crate::reqid::IdGen, n: usize| rng.next_u64() as usize % n;
        if depth == 0 || pick(rng, 2) == 0 {
            return Tree::Text(TEXTS[pick(rng, TEXTS.len())]);
        }
        let n = pick(rng, 5);
        if pick(rng, 3) == 0 {
            return Tree::Array((0..n).map(|_| tree(rng, depth - 1)).collect());
        }
        let mut keys = KEYS.to_vec();
        Tree::Object(
            (0..n)
                .map(|_| {
                    let k = keys.swap_remove(pick(rng, keys.len()));
                    (k, tree(rng, depth - 1))
                })
                .collect(),
        )
    }

    /// `t` as a client might send it: whitespace anywhere between tokens,
    /// members in the order given.
    fn written(t: &Tree, rng: &mut crate::reqid::IdGen, out: &mut String) {
        let ws = |rng: &mut crate::reqid::IdGen, out: &mut String| {
            out.push_str(["", "", " ", "\n\t", "  "][rng.next_u64() as usize % 5])
        };
        match t {
            Tree::Text(text) => out.push_str(text),
            Tree::Array(items) => {
                out.push('[');
                for (n, item) in items.iter().enumerate() {
                    ws(rng, out);
                    if n > 0 {
                        out.push(',');
                        ws(rng, out);
                    }
                    written(item, rng, out);
                }
                ws(rng, out);
                out.push(']');
            }
            Tree::Object(members) => {
                out.push('{');
                for (n, (k, v)) in members.iter().enumerate() {
                    ws(rng, out);
                    if n > 0 {
                        out.push(',');
                        ws(rng, out);
                    }
                    out.push_str(k);
                    ws(rng, out);
                    out.push(':');
                    ws(rng, out);
                    written(v, rng, out);
                }
                ws(rng, out);
                out.push('}');
            }
        }
    }

    /// The canonical form of `t` written the simple way: each string in its
    /// one spelling, no whitespace, each object's members in key order.
    fn reference(t: &Tree, out: &mut Vec<u8>) {
        let text = |s: &str, out: &mut Vec<u8>| {
            if s.starts_with('"') && s.contains('\\') {
                out.push(b'"');
                reencode(&s.as_bytes()[1..s.len() - 1], out).unwrap();
                out.push(b'"');
            } else {
                out.extend_from_slice(s.as_bytes());
            }
        };
        match t {
            Tree::Text(s) => text(s, out),
            Tree::Array(items) => {
                out.push(b'[');
                for (n, item) in items.iter().enumerate() {
                    if n > 0 {
                        out.push(b',');
                    }
                    reference(item, out);
                }
                out.push(b']');
            }
            Tree::Object(members) => {
                let mut written: Vec<(Vec<u8>, Vec<u8>)> = members
                    .iter()
                    .map(|(k, v)| {
                        let (mut key, mut value) = (Vec::new(), Vec::new());
                        text(k, &mut key);
                        reference(v, &mut value);
                        (key, value)
                    })
                    .collect();
                written.sort_by(|a, b| key_order(&a.0, &b.0));
                out.push(b'{');
                for (n, (k, v)) in written.iter().enumerate() {
                    if n > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(k);
                    out.push(b':');
                    out.extend_from_slice(v);
                }
                out.push(b'}');
            }
        }
    }

    #[test]
    fn the_canonical_form_is_the_value_written_sorted() {
        // The walk copies runs of the body at whitespace, escapes and
        // reordering: any spacing, escaping and order gives the form
        // written the simple way, and one maker reused gives what a fresh
        // one does.
        let mut rng = crate::reqid::IdGen::new(5);
        let mut maker = KeyMaker::default();
        let mut sorted = 0;
        for _ in 0..3000 {
            let t = tree(&mut rng, 4);
            let mut body = String::new();
            written(&t, &mut rng, &mut body);
            let mut want = Vec::new();
            reference(&t, &mut want);
            let mut got = Vec::new();
            canonical(body.as_bytes(), &mut got).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&want),
                "{body}"
            );
            maker.write_canonical(body.as_bytes()).unwrap();
            assert_eq!(maker.canonical, want, "{body}");
            sorted += usize::from(!want.starts_with(body.as_bytes()) && body.contains('{'));
        }
        assert!(
            sorted > 1000,
            "the bodies exercise the reordering: {sorted}"
        );
    }

    #[test]
    fn a_key_reads_back_from_its_text() {
        let mut rng = crate::reqid::IdGen::new(9);
        for v in [
            0u128,
            1,
            u128::MAX,
            0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
        ]
        .into_iter()
        .chain((0..200).map(|_| u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64())))
        {
            let text = CacheKey(v).to_text();
            let text = std::str::from_utf8(&text).unwrap();
            assert_eq!(text, format!("{v:032x}"));
            assert_eq!(CacheKey::parse(text), Some(CacheKey(v)));
            assert_eq!(CacheKey::parse(&text.to_uppercase()), Some(CacheKey(v)));
        }
        for bad in [
            "",
            "abc",
            &"g".repeat(32),
            &"0".repeat(33),
            &format!("+{}", "0".repeat(31)),
        ] {
            assert_eq!(CacheKey::parse(bad), None, "{bad}");
        }
    }

    /// A caller that remembers a body's canonical digest gets the same key
    /// from it without the body being read; a custom key has no canonical
    /// digest to remember.
    #[test]
    fn a_canonical_digest_passed_back_gives_the_same_key() {
        let mut maker = KeyMaker::default();
        let body = br#"{"model":"a/b","messages":[{"role":"user","content":"hi"}]}"#;
        let input = chat(body);
        let (key, canonical) = maker.key_and_canonical(&input).unwrap();
        let canonical = canonical.unwrap();
        assert_eq!(KeyMaker::default().key(&input).unwrap(), key);
        let passed = KeyInput {
            body: b"not read",
            canonical: Some(canonical),
            ..input
        };
        assert_eq!(
            maker.key_and_canonical(&passed).unwrap(),
            (key, Some(canonical))
        );
        let custom = KeyInput {
            custom: Some("mine"),
            ..input
        };
        assert_eq!(maker.key_and_canonical(&custom).unwrap().1, None);
    }

    #[test]
    fn a_reused_maker_gives_the_key_a_fresh_one_gives() {
        let bodies = [
            r#"{"model":"gpt","messages":[{"role":"user","content":"hi"}]}"#,
            r#"{ "messages":[{"content":"hi","role":"user"}], "model":"gpt"}"#,
            r#"{"model":"gpt","messages":[{"role":"user","content":"ho"}]}"#,
        ];
        let inputs = |body: &'static str| {
            let mut all = Vec::new();
            for scope in [1, 2] {
                for provider in ["openai", "other"] {
                    for path in ["/v1/chat/completions", "/v1/embeddings"] {
                        for stream in [false, true] {
                            all.push(KeyInput {
                                scope,
                                provider,
                                path,
                                body: body.as_bytes(),
                                canonical: None,
                                custom: None,
                                form: 0,
                                stream,
                                asked_usage: false,
                            });
                        }
                    }
                }
            }
            all
        };
        let mut shared = KeyMaker::default();
        let mut seen = std::collections::HashMap::new();
        // Twice over: the maker's buffers hold the last body's form.
        for _ in 0..2 {
            for body in bodies {
                for input in inputs(body) {
                    let fresh = KeyMaker::default().key(&input).unwrap();
                    assert_eq!(shared.key(&input).unwrap(), fresh);
                    let what = (input.scope, input.provider, input.path, input.stream);
                    // Only bodies that mean the same share a key.
                    let same_meaning = if body.contains("ho") { "ho" } else { "hi" };
                    assert_eq!(*seen.entry((what, same_meaning)).or_insert(fresh), fresh);
                }
            }
        }
        assert_eq!(seen.len(), 2 * 16);
        let distinct: std::collections::HashSet<_> = seen.values().collect();
        assert_eq!(distinct.len(), seen.len());
        // A body with no key has none the next time either.
        let broken = KeyInput {
            body: br#"{"a":1,"a":2}"#,
            canonical: None,
            ..inputs(bodies[0])[0]
        };
        for _ in 0..2 {
            assert_eq!(shared.key(&broken), Err(NoKey::DuplicateKey));
        }
    }

    #[test]
    fn any_member_order_gives_the_same_key() {
        let mut rng = crate::reqid::IdGen::new(3);
        let mut first = None;
        for _ in 0..50 {
            let mut body = String::new();
            shuffled(&mut rng, 3, &mut body);
            let k = key(&body).unwrap();
            assert_eq!(*first.get_or_insert(k), k, "{body}");
        }
    }

    #[test]
    fn the_canonical_walk_gives_the_scan_its_members() {
        // Whatever the one-pass scan (the canonical walk's members) reads,
        // the scan on its own reads the same; its digest is the key's.
        let mut rng = crate::reqid::IdGen::new(5);
        let mut bodies: Vec<String> = [
            r#"{"model":"a/b","stream":true,"stream_options":{"include_usage":true},"max_tokens":5,"n":2}"#,
            "\u{feff} {\"m\\u006fdel\" : \"a/b\" ,\n\"messages\":[{\"role\":\"user\",\"content\":\"hi\\n\"}] } ",
            r#"{"model":"a/b","model":"c/d"}"#,
            r#"{"stream":"yes"}"#,
            r#"{"stream_options":{"include_usage":1}}"#,
            r#"{"stream_options":{"include_usage":true,"include_usage":false}}"#,
            r#"{"x":{"a":1,"a":2},"model":"a/b"}"#,
            r#"{"max_completion_tokens":9,"max_output_tokens":3,"extra":[1,2,{"n":3}]}"#,
            "{ \"n\" : 2 ,\"max_tokens\":5\n,\"stream\":false\t,\"model\":\"a/b\"\r}",
            r#"{"model":"a/b","n":01}"#,
            r#"{}"#,
            r#"[{"model":"a/b"}]"#,
            r#""text""#,
            r#"{"model":"a/b"} trailing"#,
            r#"{"model":"a/b","#,
        ]
        .map(str::to_string)
        .to_vec();
        for _ in 0..20 {
            let mut body = String::new();
            shuffled(&mut rng, 2, &mut body);
            bodies.push(body);
        }
        let mut maker = KeyMaker::default();
        let mut no_key = 0;
        for body in &bodies {
            let b = body.as_bytes();
            let alone = crate::json::scan_request(b);
            match maker.digest_and_members(b) {
                Ok((digest, tops)) => {
                    let tops = tops.to_vec();
                    let members = tops.iter().map(|(k, v)| (&b[k.clone()], v.clone()));
                    assert_eq!(crate::json::scan_members(b, members), alone, "{body}");
                    assert_eq!(Ok(digest), KeyMaker::default().body_digest(b), "{body}");
                }
                // No key (a repeated key, a number JSON does not allow,
                // not JSON): `ShardCache::scan` reads such a body with
                // the scan on its own, as with the cache off.
                Err(_) => no_key += 1,
            }
        }
        assert!(no_key >= 4 && no_key < bodies.len() / 2, "{no_key}");
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
            ..chat(b"{}")
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
            KeyInput {
                stream: true,
                ..input
            },
            KeyInput { form: 1, ..input },
        ] {
            assert_ne!(k.key(&changed).unwrap(), base);
        }
        // A custom key ignores the body but not the scope.
        let custom = KeyInput {
            custom: Some("mine"),
            body: b"not even json",
            canonical: None,
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
        // It replaces the body, not the path, its query (Gemini's `alt=sse`
        // chooses the format) nor the form: an answer of another endpoint,
        // format or route is never the answer. The query's credentials are
        // the scope's (under `cache.shared`, one custom key is one entry).
        let with_query = |path| KeyInput { path, ..custom };
        let gemini = "/v1beta/models/g:streamGenerateContent";
        let (sse, sse_key_a, key_b_sse, sse_encoded) = (
            format!("{gemini}?alt=sse"),
            format!("{gemini}?alt=sse&key=A"),
            format!("{gemini}?key=B&alt=sse"),
            format!("{gemini}?alt=sse&%6Bey=A"),
        );
        assert_ne!(k.key(&with_query(gemini)), k.key(&with_query(&sse)));
        assert_ne!(
            k.key(&with_query("/v1/chat/completions?a=1")),
            k.key(&with_query("/v1/chat/completions?a=2"))
        );
        assert_eq!(
            k.key(&with_query(&sse_key_a)),
            k.key(&with_query(&key_b_sse))
        );
        assert_eq!(k.key(&with_query(&sse_encoded)), k.key(&with_query(&sse)));
        assert_ne!(k.key(&custom), k.key(&with_query("/v1/embeddings")));
        assert_ne!(k.key(&custom), k.key(&KeyInput { form: 3, ..custom }));
        // A stream never answers a request that did not ask for one.
        assert_ne!(
            k.key(&custom),
            k.key(&KeyInput {
                stream: true,
                ..custom
            })
        );
        // Nor one with its usage event a client that did not ask for it
        // (the body that says so is not in a custom key).
        let stream = KeyInput {
            stream: true,
            ..custom
        };
        assert_ne!(
            k.key(&stream),
            k.key(&KeyInput {
                asked_usage: true,
                ..stream
            })
        );
    }

    #[test]
    fn escapes_are_respelled_to_one_form() {
        // Each pair spells the same string two ways.
        for (a, b) in [
            (r#""a\"b""#, r#""a\u0022b""#),
            (r#""a\/b""#, r#""a/b""#),
            (r#""\u00e9""#, "\"\u{e9}\""),
            (r#""\ud83d\ude00""#, "\"\u{1f600}\""),
            (r#""x\ny""#, r#""x\u000Ay""#),
            (r#""\\""#, r#""\u005c""#),
        ] {
            assert_eq!(canon(a), canon(b), "{a} vs {b}");
        }
        for bad in [
            r#""\ud83d""#,
            r#""\ud83dx""#,
            r#""\q""#,
            r#""\u12""#,
            r#""\u+06f""#,
            r#""\ud83d\uffff""#,
        ] {
            assert_eq!(key(bad), Err(NoKey::NotJson), "{bad}");
        }
    }

    #[test]
    fn ambiguous_or_broken_bodies_have_no_key() {
        assert_eq!(key(r#"{"a":1,"a":2}"#), Err(NoKey::DuplicateKey));
        assert_eq!(key(r#"{"x":{"a":1,"\u0061":2}}"#), Err(NoKey::DuplicateKey));
        // Keys that parsers matching keys ignoring case take for one: which
        // wins depends on their order, which the key does not keep.
        for repeat in [
            r#"{"Temperature":0,"model":"m","temperature":1}"#,
            r#"{"x":[{"ID":1,"id":2}]}"#,
            "{\"\u{17f}\":1,\"S\":2}",
            r#"{"\u212a":1,"k":2}"#,
        ] {
            assert_eq!(key(repeat), Err(NoKey::DuplicateKey), "{repeat}");
        }
        assert_eq!(key(r#"{"\u00e9":2,"\u00c9":3}"#), Err(NoKey::DuplicateKey));
        // Go reads bytes that are not UTF-8 as U+FFFD: two such keys may be one.
        assert_eq!(
            KeyMaker::default().key(&chat(b"{\"k\xff\":1,\"k\xfe\":2}")),
            Err(NoKey::NotJson)
        );
        assert!(key("{\"\u{df}\":1,\"ss\":2,\"\u{fb06}\":3,\"ST\":4}").is_ok());
        // Case alone is no repeat.
        assert!(key(r#"{"Temperature":0,"ID":1,"\u00e9":2,"e":3}"#).is_ok());
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
