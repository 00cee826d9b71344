//! Request-body JSON: find the few top-level fields the gateway needs (`model`,
//! `stream`, `stream_options`) with their byte offsets, and splice a rewritten body.
//!
//! What we forward must mean to any other parser what it meant to us (STYLE 17):
//! keys are compared after unescaping (`"mod\u0065l"` is `model`), and a field
//! we read that appears twice is an error, not a guess about which one wins.
//! Nor is a key that differs from one we read only in letter case (Go's
//! `encoding/json` and ASP.NET Core match keys to fields ignoring case, so
//! `"MODEL"` is their `model`), or a value other parsers read otherwise than
//! we would (pydantic's lax mode reads `1e2` and `"100"` as the integer 100):
//! those are refused, each with what to send instead.
//!
//! Why not a JSON library here: rewriting `model` and injecting
//! `stream_options.include_usage` needs byte offsets so everything else is
//! forwarded untouched, and no DOM is needed. Strings are skipped with memchr,
//! so the cost is a pass over the structural bytes. Token usage in replies is
//! read with simd-json (see `usage`).

use std::borrow::Cow;
use std::ops::Range;

/// Deepest nesting we walk through before calling the body abusive.
pub const MAX_DEPTH: usize = 256;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RequestFields {
    /// Raw value ranges (strings include their quotes). Each field occurs at
    /// most once (duplicates are a [`BodyError::Duplicate`]).
    pub model: Option<Range<usize>>,
    pub stream: Option<Range<usize>>,
    pub stream_options: Option<Range<usize>>,
    /// `stream_options.include_usage`, when `stream_options` is an object holding it.
    pub include_usage: Option<Range<usize>>,
    /// `max_tokens`, `max_completion_tokens`, `max_output_tokens` (the names
    /// providers use for the output cap), each when present.
    pub max_tokens: [Option<Range<usize>>; 3],
    /// `n`, when present.
    pub choices: Option<Range<usize>>,
    /// Caps set elsewhere than these, read by the scan.
    pub more: MoreCaps,
    /// Offset just after the top-level `{`.
    pub body_open: usize,
}

/// Output caps and answer counts a body sets other than at its top level's
/// `max_tokens`-like names and `n`: a Gemini-native body's
/// `generationConfig.maxOutputTokens` and `candidateCount` (either spelling),
/// and `best_of` (legacy completions: every candidate is generated and
/// billed). 0: not set (a cap of 0 is then read as none, which only ever
/// reserves more).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MoreCaps {
    pub max_tokens: u64,
    pub choices: u64,
}

/// Scans of request bodies a shard read lately, by the xxh3-128 of their
/// bytes (a scan depends on nothing else): a request repeated byte for byte,
/// as cache hits are, is not read again to route it.
pub type ScanMemo = crate::fasthash::DigestMemo<Remembered, SCAN_MEMO_ENTRIES>;

/// What a shard remembers of a body it read lately.
#[derive(Debug)]
pub struct Remembered {
    pub fields: RequestFields,
    /// A digest a later stage derives from the same bytes alone (the cache's
    /// canonical digest), once it did: kept here, one table probe finds both.
    pub derived: Option<u128>,
}

/// Bodies a [`ScanMemo`] keeps (about 0.8 MiB).
pub const SCAN_MEMO_ENTRIES: usize = 1 << 12;

/// What is known of a digest derived from a body (the memo's, or the scan's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Derived {
    /// Not derived, and the body is not remembered (seen once so far, or
    /// pushed out): nothing derived later can be kept with it.
    NotKept,
    /// Remembered, but nothing derived from it noted yet.
    Unknown,
    Known(u128),
}

/// `scan(body)` (a [`scan_request`], and a digest derived from the same
/// bytes when it could take one) of `body`, whose xxh3-128 is `digest`, from
/// `memo` when it read the same bytes lately, with what was derived from
/// them since ([`remember_derived`]). Only bodies that scan cleanly are kept.
pub fn scan_remembered(
    memo: &mut ScanMemo,
    body: &[u8],
    digest: u128,
    scan: impl FnOnce(&[u8]) -> Result<(RequestFields, Option<u128>), BodyError>,
) -> Result<(RequestFields, Derived), BodyError> {
    if let Some(r) = memo.get(digest) {
        let derived = r.derived.map_or(Derived::Unknown, Derived::Known);
        return Ok((r.fields.clone(), derived));
    }
    // Whether it was seen lately is asked after the scan: the memory that
    // says so loads meanwhile.
    memo.prefetch(digest);
    let (fields, derived) = scan(body)?;
    let kept = || Remembered {
        fields: fields.clone(),
        derived,
    };
    let derived = match (memo.insert(digest, kept), derived) {
        (_, Some(d)) => Derived::Known(d),
        (true, None) => Derived::Unknown,
        (false, None) => Derived::NotKept,
    };
    Ok((fields, derived))
}

/// Keeps `derived` with the body whose xxh3-128 is `digest`, when the memo
/// remembers that body.
pub fn remember_derived(memo: &mut ScanMemo, digest: u128, derived: u128) {
    if let Some(r) = memo.get_mut(digest) {
        r.derived = Some(derived);
    }
}

/// The value of a `\u` escape's four hex digits: exactly four, nothing
/// else (`u32::from_str_radix` alone also takes fewer, and a leading `+`,
/// which strict parsers refuse).
pub fn hex4(digits: &[u8]) -> Option<u32> {
    if digits.len() != 4 {
        return None;
    }
    digits
        .iter()
        .try_fold(0u32, |v, &d| Some(v << 4 | char::from(d).to_digit(16)?))
}

/// Why a request body cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// Not a JSON object we can scan.
    Invalid(&'static str),
    /// A field the gateway reads appears more than once (its path).
    Duplicate(&'static str),
    /// A field the gateway reads as a boolean holds something else (its path):
    /// lenient servers read `"true"` or `1` as true, so aigw must not guess.
    NotBoolean(&'static str),
    /// A key differs from a field the gateway reads (its path) only in
    /// letter case: parsers that match keys ignoring case read it as that field.
    CaseVariant(&'static str),
    /// An output cap or answer count (its path) is not written as a plain
    /// whole number: lax parsers read `1e2`, `100.0` or `"100"` as 100.
    NotInteger(&'static str),
    /// `model` holds something other than a string (or null).
    NotString(&'static str),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Invalid(why) => write!(f, "request body is not valid JSON: {why}"),
            BodyError::Duplicate(field) => write!(
                f,
                "`{field}` appears more than once in the request body; send it once (JSON parsers disagree on which copy wins)"
            ),
            BodyError::NotBoolean(field) => {
                write!(f, "`{field}` must be true or false (or null)")
            }
            BodyError::CaseVariant(field) => write!(
                f,
                "the request body has a key that differs from `{field}` only in letter case; parsers that match keys ignoring case (Go's encoding/json, ASP.NET Core) read it as `{field}`: spell it `{field}`, once"
            ),
            BodyError::NotInteger(field) => write!(
                f,
                "`{field}` must be a whole number written in digits, without sign, fraction or exponent (or null)"
            ),
            BodyError::NotString(field) => write!(f, "`{field}` must be a string (or null)"),
        }
    }
}

/// The top-level fields the gateway reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    Model,
    Stream,
    StreamOptions,
    /// Index into [`RequestFields::max_tokens`].
    MaxTokens(usize),
    /// `n`: how many answers the request asks for.
    Choices,
    BestOf,
    /// Index into [`GENERATION_CONFIG_NAMES`].
    GenerationConfig(usize),
}

/// `generationConfig`'s spellings (camel case, and the proto field name).
const GENERATION_CONFIG_NAMES: [&str; 2] = ["generationConfig", "generation_config"];

/// The output-cap names, in [`RequestFields::max_tokens`] order.
const MAX_TOKENS_NAMES: [&str; 3] = ["max_tokens", "max_completion_tokens", "max_output_tokens"];

/// Which field a raw key names, compared after unescaping. Keys without a
/// backslash (nearly all) are compared as they are.
fn field_of(raw_key: &[u8]) -> Option<Field> {
    let decoded;
    let key: &[u8] = if raw_key.contains(&b'\\') {
        decoded = decode_key(raw_key)?;
        decoded.as_bytes()
    } else {
        raw_key
    };
    match key {
        b"model" => Some(Field::Model),
        b"stream" => Some(Field::Stream),
        b"stream_options" => Some(Field::StreamOptions),
        b"max_tokens" => Some(Field::MaxTokens(0)),
        b"max_completion_tokens" => Some(Field::MaxTokens(1)),
        b"max_output_tokens" => Some(Field::MaxTokens(2)),
        b"n" => Some(Field::Choices),
        b"best_of" => Some(Field::BestOf),
        b"generationConfig" => Some(Field::GenerationConfig(0)),
        b"generation_config" => Some(Field::GenerationConfig(1)),
        _ => None,
    }
}

/// Whether a raw key (between its quotes) is `name` once unescaped.
pub fn key_is(raw_key: &[u8], name: &str) -> bool {
    if raw_key.contains(&b'\\') {
        decode_key(raw_key).is_some_and(|k| k == name)
    } else {
        raw_key == name.as_bytes()
    }
}

/// Field names (each with its path) that [`case_variant_of`] compares keys
/// with, and which first letters and lengths they have.
struct Names {
    list: &'static [(&'static str, &'static str)],
    /// Bit `c - b'a'` for each first letter `c`.
    firsts: u32,
    /// Bit `n` for each length `n`.
    lens: u64,
}

const fn names(list: &'static [(&'static str, &'static str)]) -> Names {
    let (mut firsts, mut lens, mut i) = (0, 0, 0);
    while i < list.len() {
        let name = list[i].0.as_bytes();
        firsts |= 1 << (name[0] - b'a');
        lens |= 1 << name.len();
        i += 1;
    }
    Names { list, firsts, lens }
}

/// The top-level keys the gateway reads.
const READ_KEYS: Names = names(&[
    ("model", "model"),
    ("stream", "stream"),
    ("stream_options", "stream_options"),
    ("max_tokens", "max_tokens"),
    ("max_completion_tokens", "max_completion_tokens"),
    ("max_output_tokens", "max_output_tokens"),
    ("n", "n"),
    ("best_of", "best_of"),
    ("generationConfig", "generationConfig"),
    ("generation_config", "generation_config"),
]);

/// The read field (its path) that a raw key which is not exactly any of
/// `names` is read as by a parser that matches keys ignoring case. A key of
/// plain ASCII (nearly all) is compared in place, and only when a name has
/// its first letter and its length. A key that could be a name's and does
/// not decode (a bad escape, bytes that are not UTF-8) is an error: lenient
/// parsers drop what they cannot read (`"mod\xffel"`, `"\model"`).
fn case_variant_of(raw_key: &[u8], names: &Names) -> Result<Option<&'static str>, BodyError> {
    let Some(&first) = raw_key.first() else {
        return Ok(None);
    };
    // Only an escape or a multi-byte character (`ſ`, `ı`) folds to a
    // letter other than itself.
    let plain = first < 0x80 && first != b'\\';
    let letter = (first | 0x20).wrapping_sub(b'a');
    if plain && (letter >= 26 || names.firsts & 1 << letter == 0) {
        return Ok(None);
    }
    if plain
        && !any_byte(
            raw_key,
            |w| (w & HIGH) | zero_bytes(w ^ (ONES * u64::from(b'\\'))),
            |b| b == b'\\' || b >= 0x80,
        )
    {
        if raw_key.len() >= 64 || names.lens & 1 << raw_key.len() == 0 {
            return Ok(None);
        }
        return Ok(names
            .list
            .iter()
            .find(|(n, _)| n.len() == raw_key.len() && n.as_bytes().eq_ignore_ascii_case(raw_key))
            .map(|&(_, path)| path));
    }
    let decoded = decode_key(raw_key).ok_or(BodyError::Invalid(
        "a key is not a valid JSON string (a bad escape, or bytes that are not UTF-8)",
    ))?;
    let mut folded = Vec::with_capacity(decoded.len());
    fold_key(&decoded, &mut folded);
    Ok(names
        .list
        .iter()
        .find(|(n, _)| n.as_bytes().eq_ignore_ascii_case(&folded))
        .map(|&(_, path)| path))
}

/// Appends `key` as parsers that match keys ignoring case compare it: each
/// character as Go's `encoding/json` folds it (the upper case of its lower
/// case, each a single character: `ſ` is `S`, the Kelvin sign `K`, `ı` and
/// `İ` `I`, while `ß` and `ﬆ` stay themselves), which ASP.NET Core's
/// comparison (upper case) never tells apart where Go does not. Two keys
/// such a parser may take for one fold alike.
pub fn fold_key(key: &str, out: &mut Vec<u8>) {
    if key.is_ascii() {
        out.extend(key.bytes().map(|b| b.to_ascii_uppercase()));
        return;
    }
    // A mapping to several characters (`ß` to `SS`) is none to Go.
    fn single(c: char, mut mapped: impl ExactSizeIterator<Item = char>) -> char {
        if mapped.len() == 1 {
            mapped.next().unwrap_or(c)
        } else {
            c
        }
    }
    for c in key.chars() {
        // Go lowers `İ` to `i`; Rust to `i` and a combining dot.
        let lower = if c == '\u{130}' {
            'i'
        } else {
            single(c, c.to_lowercase())
        };
        let upper = single(lower, lower.to_uppercase());
        let mut b = [0u8; 4];
        out.extend_from_slice(upper.encode_utf8(&mut b).as_bytes());
    }
}

/// Whether [`fold_key`] may change `key`: it holds an ASCII capital or a
/// byte of a multi-byte character. Eight bytes at a time: the cache key asks
/// this of every key of every object it reads.
pub fn may_fold(key: &[u8]) -> bool {
    any_byte(key, fold_flags, |b| b.is_ascii_uppercase() || b >= 0x80)
}

/// The high bit of each byte of `w` that may fold: a byte of 0x80 or more
/// sets its own; one of 0x41..=0x5A (`A` to `Z`) sets it in `w + 0x3F` and
/// not in `w + 0x25`. Only a byte of 0xC1 or more carries into the next
/// (so only after a byte that is flagged itself can a flag be wrong).
fn fold_flags(w: u64) -> u64 {
    (w | (w.wrapping_add(ONES * 0x3F) & !w.wrapping_add(ONES * 0x25))) & HIGH
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The high bit of each zero byte of `x` (and maybe of bytes after the
/// first zero, never before it).
fn zero_bytes(x: u64) -> u64 {
    x.wrapping_sub(ONES) & !x & HIGH
}

/// Whether some byte of `key` passes `byte`, with `word` flagging, eight at
/// a time, the bytes that pass (a flag may only be wrong where another byte
/// of the word is flagged rightly).
fn any_byte(key: &[u8], word: impl Fn(u64) -> u64, byte: impl Fn(u8) -> bool) -> bool {
    let w8 = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
    let w4 = |b: &[u8]| u64::from(u32::from_le_bytes(b.try_into().unwrap_or([0; 4])));
    let n = key.len();
    if n >= 8 {
        // Whole words, then the last eight bytes (overlapping is harmless).
        key.chunks_exact(8).any(|c| word(w8(c)) != 0) || word(w8(&key[n - 8..])) != 0
    } else if n >= 4 {
        word(w4(&key[..4]) | w4(&key[n - 4..]) << 32) != 0
    } else {
        key.iter().any(|&b| byte(b))
    }
}

/// A raw key (the text between its quotes, as `for_each_member` gives it),
/// decoded. `None` for an invalid escape, which no strict parser accepts either.
pub fn decode_key(raw_key: &[u8]) -> Option<String> {
    let mut quoted = Vec::with_capacity(raw_key.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(raw_key);
    quoted.push(b'"');
    string_value(&quoted).map(Cow::into_owned)
}

impl RequestFields {
    /// `"stream": true` at the top level.
    pub fn is_stream(&self, body: &[u8]) -> bool {
        self.stream
            .as_ref()
            .is_some_and(|r| &body[r.clone()] == b"true")
    }

    pub fn model<'a>(&self, body: &'a [u8]) -> Option<Cow<'a, str>> {
        string_value(&body[self.model.clone()?])
    }

    /// `model`, absent when null; a string that does not decode (a bad
    /// escape, bytes that are not UTF-8, which Go's parser reads as U+FFFD)
    /// is an error, as the scan makes any other type one.
    pub fn model_str<'a>(&self, body: &'a [u8]) -> Result<Option<Cow<'a, str>>, BodyError> {
        match self.model.clone() {
            Some(r) if &body[r.clone()] != b"null" => string_value(&body[r])
                .map(Some)
                .ok_or(BodyError::NotString("model")),
            _ => Ok(None),
        }
    }

    /// The largest output cap the body sets, when it sets one as a plain
    /// non-negative integer (anything else is left to the provider to refuse).
    pub fn max_tokens(&self, body: &[u8]) -> Option<u64> {
        self.max_tokens
            .iter()
            .flatten()
            .filter_map(|r| plain_integer(&body[r.clone()]))
            .max()
            .max((self.more.max_tokens > 0).then_some(self.more.max_tokens))
    }

    /// How many answers the body asks for or is billed for (`n`,
    /// `best_of`, Gemini's `candidateCount`; 1 when absent).
    pub fn choices(&self, body: &[u8]) -> u64 {
        self.choices
            .as_ref()
            .and_then(|r| plain_integer(&body[r.clone()]))
            .unwrap_or(1)
            .max(self.more.choices)
            .max(1)
    }
}

/// A number field as we read it: `null` (absent), or plain whole digits
/// that fit a u64. `Err` for anything else, which a lax parser may read as a
/// number we did not (`1e2`, `100.0`, `"100"`).
fn whole_or_null(raw: &[u8]) -> Result<Option<u64>, ()> {
    if raw == b"null" {
        return Ok(None);
    }
    match plain_integer(raw) {
        Some(n) if is_number(raw) => Ok(Some(n)),
        _ => Err(()),
    }
}

/// A JSON number written as plain decimal digits that fits a u64.
fn plain_integer(raw: &[u8]) -> Option<u64> {
    if raw.is_empty() || raw.len() > 19 {
        return None;
    }
    // At most 19 digits: no overflow.
    raw.iter().try_fold(0u64, |n, d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

/// The UTF-8 byte order mark, which Python's `json.loads(bytes)` accepts.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Where a body's JSON text starts: after a byte order mark and whitespace.
pub fn json_start(body: &[u8]) -> usize {
    skip_ws(body, if body.starts_with(BOM) { BOM.len() } else { 0 })
}

/// Scans the top-level object of a request body.
pub fn scan_request(body: &[u8]) -> Result<RequestFields, BodyError> {
    let start = top_object(body)?;
    let mut found = Found::new(start);
    let end = for_each_member(body, start, |key, value| found.member(key, value))
        .map_err(BodyError::Invalid)?;
    if skip_ws(body, end) != body.len() {
        return Err(BodyError::Invalid("unexpected data after the JSON object"));
    }
    found.finish(body)
}

/// [`scan_request`] of a body another reader already walked whole and
/// accepted (the cache key's canonical pass, stricter than this scan and
/// splitting members where it does): the same fields and the same checks,
/// from the top-level members it gives, each as (raw key, value range) in
/// order.
pub fn scan_members<'a>(
    body: &'a [u8],
    members: impl IntoIterator<Item = (&'a [u8], Range<usize>)>,
) -> Result<RequestFields, BodyError> {
    let mut found = Found::new(top_object(body)?);
    for (key, value) in members {
        found.member(key, value);
    }
    found.finish(body)
}

/// Where the body's top-level object opens (after a BOM and whitespace).
pub fn top_object(body: &[u8]) -> Result<usize, BodyError> {
    let start = json_start(body);
    if body.get(start) != Some(&b'{') {
        return Err(BodyError::Invalid("request body must be a JSON object"));
    }
    Ok(start)
}

/// The fields found so far among a body's top-level members.
struct Found {
    fields: RequestFields,
    best_of: Option<Range<usize>>,
    /// `generationConfig`, `generation_config`.
    generation_config: [Option<Range<usize>>; 2],
    duplicate: Option<&'static str>,
    /// A key some parsers read as a field we read (that field's path).
    variant: Option<&'static str>,
    /// A key that could be one we read and does not decode.
    bad_key: Option<BodyError>,
}

impl Found {
    fn new(start: usize) -> Found {
        Found {
            fields: RequestFields {
                body_open: start + 1,
                ..Default::default()
            },
            best_of: None,
            generation_config: [None, None],
            duplicate: None,
            variant: None,
            bad_key: None,
        }
    }

    fn member(&mut self, key: &[u8], value: Range<usize>) {
        let fields = &mut self.fields;
        let (slot, name) = match field_of(key) {
            Some(Field::Model) => (&mut fields.model, "model"),
            Some(Field::Stream) => (&mut fields.stream, "stream"),
            Some(Field::StreamOptions) => (&mut fields.stream_options, "stream_options"),
            Some(Field::MaxTokens(i)) => (&mut fields.max_tokens[i], MAX_TOKENS_NAMES[i]),
            Some(Field::Choices) => (&mut fields.choices, "n"),
            Some(Field::BestOf) => (&mut self.best_of, "best_of"),
            Some(Field::GenerationConfig(i)) => {
                (&mut self.generation_config[i], GENERATION_CONFIG_NAMES[i])
            }
            None => {
                if self.variant.is_none() {
                    match case_variant_of(key, &READ_KEYS) {
                        Ok(v) => self.variant = v,
                        Err(e) => self.bad_key = Some(e),
                    }
                }
                return;
            }
        };
        if slot.replace(value).is_some() {
            self.duplicate.get_or_insert(name);
        }
    }

    fn finish(self, body: &[u8]) -> Result<RequestFields, BodyError> {
        let mut fields = self.fields;
        if let Some(e) = self.bad_key {
            return Err(e);
        }
        if let Some(name) = self.duplicate {
            return Err(BodyError::Duplicate(name));
        }
        if let Some(name) = self.variant {
            return Err(BodyError::CaseVariant(name));
        }
        let boolean = |r: &Option<Range<usize>>| {
            r.as_ref()
                .is_none_or(|r| matches!(&body[r.clone()], b"true" | b"false" | b"null"))
        };
        if !boolean(&fields.stream) {
            return Err(BodyError::NotBoolean("stream"));
        }
        if let Some(opts) = fields.stream_options.clone()
            && body.get(opts.start) == Some(&b'{')
        {
            const INCLUDE_USAGE: Names =
                names(&[("include_usage", "stream_options.include_usage")]);
            let (mut twice, mut variant) = (false, Ok(None));
            let _ = for_each_member(body, opts.start, |k, v| {
                if key_is(k, "include_usage") {
                    twice |= fields.include_usage.replace(v).is_some();
                } else if let Ok(None) = variant {
                    variant = case_variant_of(k, &INCLUDE_USAGE);
                }
            });
            if twice {
                return Err(BodyError::Duplicate("stream_options.include_usage"));
            }
            if let Some(name) = variant? {
                return Err(BodyError::CaseVariant(name));
            }
            if !boolean(&fields.include_usage) {
                return Err(BodyError::NotBoolean("stream_options.include_usage"));
            }
        }
        // Numbers we read are plain whole numbers or null: anything else a
        // lax parser may read as a number we did not.
        let integer = |r: &Option<Range<usize>>| {
            r.as_ref()
                .is_none_or(|r| whole_or_null(&body[r.clone()]).is_ok())
        };
        for (r, name) in fields.max_tokens.iter().zip(MAX_TOKENS_NAMES) {
            if !integer(r) {
                return Err(BodyError::NotInteger(name));
            }
        }
        if !integer(&fields.choices) {
            return Err(BodyError::NotInteger("n"));
        }
        if !integer(&self.best_of) {
            return Err(BodyError::NotInteger("best_of"));
        }
        if let Some(r) = &self.best_of {
            fields.more.choices = plain_integer(&body[r.clone()]).unwrap_or(0);
        }
        for r in self.generation_config.iter().flatten() {
            if body.get(r.start) == Some(&b'{') {
                let caps = gemini_caps(body, r.start)?;
                fields.more.max_tokens = fields.more.max_tokens.max(caps.max_tokens);
                fields.more.choices = fields.more.choices.max(caps.choices);
            }
        }
        // Its text is checked where it is read ([`RequestFields::model_str`]).
        if let Some(r) = &fields.model
            && body[r.start] != b'"'
            && &body[r.clone()] != b"null"
        {
            return Err(BodyError::NotString("model"));
        }
        Ok(fields)
    }
}

/// The caps a `generationConfig` object at `open` sets, either spelling (a
/// proto JSON parser takes both; the larger counts). Read as the top-level
/// numbers are: plain whole numbers or null, each name once.
fn gemini_caps(body: &[u8], open: usize) -> Result<MoreCaps, BodyError> {
    const NAMES: [(&str, &str); 4] = [
        ("maxOutputTokens", "generationConfig.maxOutputTokens"),
        ("max_output_tokens", "generationConfig.max_output_tokens"),
        ("candidateCount", "generationConfig.candidateCount"),
        ("candidate_count", "generationConfig.candidate_count"),
    ];
    let mut seen: [Option<Range<usize>>; 4] = Default::default();
    let mut twice = None;
    let _ = for_each_member(body, open, |k, v| {
        if let Some(i) = NAMES.iter().position(|(n, _)| key_is(k, n))
            && seen[i].replace(v).is_some()
        {
            twice = Some(NAMES[i].1);
        }
    });
    if let Some(name) = twice {
        return Err(BodyError::Duplicate(name));
    }
    let mut values = [0; 4];
    for (i, r) in seen.iter().enumerate() {
        let Some(r) = r else { continue };
        values[i] = whole_or_null(&body[r.clone()])
            .map_err(|()| BodyError::NotInteger(NAMES[i].1))?
            .unwrap_or(0);
    }
    Ok(MoreCaps {
        max_tokens: values[0].max(values[1]),
        choices: values[2].max(values[3]),
    })
}

/// Calls `f(raw_key, value_range)` for each member of the object starting at
/// `open` (which must be `{`); returns the offset after its `}`.
pub fn for_each_member<'a>(
    body: &'a [u8],
    open: usize,
    mut f: impl FnMut(&'a [u8], Range<usize>),
) -> Result<usize, &'static str> {
    let mut i = skip_ws(body, open + 1);
    if body.get(i) == Some(&b'}') {
        return Ok(i + 1);
    }
    loop {
        if body.get(i) != Some(&b'"') {
            return Err("expected a string key");
        }
        let key_end = skip_string(body, i)?;
        let key = &body[i + 1..key_end - 1];
        i = skip_ws(body, key_end);
        if body.get(i) != Some(&b':') {
            return Err("expected ':' after a key");
        }
        let v_start = skip_ws(body, i + 1);
        let v_end = skip_value(body, v_start)?;
        f(key, v_start..v_end);
        i = skip_ws(body, v_end);
        match body.get(i) {
            Some(b',') => i = skip_ws(body, i + 1),
            Some(b'}') => return Ok(i + 1),
            _ => return Err("expected ',' or '}' in an object"),
        }
    }
}

pub fn skip_ws(body: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = body.get(i) {
        i += 1;
    }
    i
}

/// How many leading bytes [`quote_or_backslash`] checks a word at a time
/// before handing the rest to memchr: most JSON strings (keys, roles, short
/// prompts) end within it, and memchr's set-up costs more than they do.
const WORD_SCAN: usize = 64;

/// The offset in `hay` of its first `"` or `\\`.
#[inline]
pub fn quote_or_backslash(hay: &[u8]) -> Option<usize> {
    quote_scan::<false>(hay).0
}

/// [`quote_or_backslash`], and whether a byte before the one it finds may
/// fold ([`may_fold`]), in the same pass: the cache key asks it of every
/// key it reads.
#[inline]
pub fn quote_or_backslash_folding(hay: &[u8]) -> (Option<usize>, bool) {
    quote_scan::<true>(hay)
}

/// Both of the above: `FOLD` says whether to tell the folding too.
#[inline(always)]
fn quote_scan<const FOLD: bool>(hay: &[u8]) -> (Option<usize>, bool) {
    // The lowest flag of `zero_bytes` is exact.
    let mut at = 0;
    let mut folds = 0;
    let words = hay.len().min(WORD_SCAN) / 8;
    for _ in 0..words {
        let w = u64::from_le_bytes(hay[at..at + 8].try_into().unwrap_or([0; 8]));
        let hits =
            zero_bytes(w ^ (ONES * u64::from(b'"'))) | zero_bytes(w ^ (ONES * u64::from(b'\\')));
        let fold = if FOLD { fold_flags(w) } else { 0 };
        if hits != 0 {
            let k = hits.trailing_zeros() / 8;
            // The flags of the bytes before the one found (a wrong flag
            // only follows a right one, which is before it or masked too).
            let before = (1u64 << (8 * k)).wrapping_sub(1);
            return (Some(at + k as usize), folds != 0 || fold & before != 0);
        }
        folds |= fold;
        at += 8;
    }
    let found = memchr::memchr2(b'"', b'\\', &hay[at..]).map(|k| at + k);
    let folds = FOLD && (folds != 0 || may_fold(&hay[at..found.unwrap_or(hay.len())]));
    (found, folds)
}

/// `i` is at an opening quote; returns the offset after the closing quote.
fn skip_string(body: &[u8], i: usize) -> Result<usize, &'static str> {
    let mut j = i + 1;
    loop {
        match quote_or_backslash(&body[j.min(body.len())..]) {
            Some(k) if body[j + k] == b'\\' => j += k + 2,
            Some(k) => return Ok(j + k + 1),
            None => return Err("unterminated string"),
        }
    }
}

/// Returns the end offset of the JSON value starting at `i`.
pub fn skip_value(body: &[u8], i: usize) -> Result<usize, &'static str> {
    match body.get(i) {
        Some(b'"') => skip_string(body, i),
        Some(b'{' | b'[') => {
            let mut depth = 0usize;
            let mut j = i;
            while j < body.len() {
                match body[j] {
                    b'"' => {
                        j = skip_string(body, j)?;
                        continue;
                    }
                    b'{' | b'[' => {
                        depth += 1;
                        if depth > MAX_DEPTH {
                            return Err("JSON nested too deeply");
                        }
                    }
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Ok(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            Err("unterminated object or array")
        }
        Some(_) => {
            let mut j = i;
            while j < body.len()
                && !matches!(body[j], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            {
                j += 1;
            }
            let lit = &body[i..j];
            let ok = lit == b"true"
                || lit == b"false"
                || lit == b"null"
                || (!lit.is_empty()
                    && lit.iter().all(|b| {
                        b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E')
                    }));
            if ok { Ok(j) } else { Err("invalid JSON value") }
        }
        None => Err("unexpected end of JSON"),
    }
}

/// Whether `raw` is a number in JSON's own grammar (RFC 8259 §6):
/// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
pub fn is_number(raw: &[u8]) -> bool {
    let mut i = 0;
    let digits = |i: &mut usize| {
        let start = *i;
        while raw.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i > start
    };
    if raw.get(i) == Some(&b'-') {
        i += 1;
    }
    match raw.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if raw.get(i) == Some(&b'.') {
        i += 1;
        if !digits(&mut i) {
            return false;
        }
    }
    if matches!(raw.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(raw.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !digits(&mut i) {
            return false;
        }
    }
    i == raw.len()
}

/// Decodes a raw JSON string literal (with quotes). `None` if it is not a string.
pub fn string_value(raw: &[u8]) -> Option<Cow<'_, str>> {
    let inner = raw.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    if !inner.contains(&b'\\') {
        return std::str::from_utf8(inner).ok().map(Cow::Borrowed);
    }
    let mut out = String::with_capacity(inner.len());
    let s = std::str::from_utf8(inner).ok()?;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            '"' => out.push('"'),
            '\\' => out.push('\\'),
            '/' => out.push('/'),
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'u' => {
                let hex: String = chars.by_ref().take(4).collect();
                let mut cp = hex4(hex.as_bytes())?;
                if (0xD800..0xDC00).contains(&cp) {
                    if chars.next()? != '\\' || chars.next()? != 'u' {
                        return None;
                    }
                    let low: String = chars.by_ref().take(4).collect();
                    let low = hex4(low.as_bytes()).filter(|l| (0xDC00..0xE000).contains(l))?;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
                }
                out.push(char::from_u32(cp)?);
            }
            _ => return None,
        }
    }
    Some(Cow::Owned(out))
}

/// What the unified route changes in a request body.
pub struct Rewrite<'a> {
    /// The model name the provider should see (prefix stripped), UTF-8.
    pub model: &'a [u8],
    /// Ask for `stream_options.include_usage`.
    pub include_usage: bool,
}

/// Whether the client itself asked for usage in the stream.
pub fn client_asked_usage(body: &[u8], fields: &RequestFields) -> bool {
    fields
        .include_usage
        .clone()
        .is_some_and(|v| &body[v] == b"true")
}

/// Writes `body` with the rewrite applied into `out`.
pub fn rewrite_body(body: &[u8], fields: &RequestFields, rw: &Rewrite<'_>, out: &mut Vec<u8>) {
    enum With {
        Model,
        Bytes(&'static [u8]),
    }
    // At most two edits, applied in offset order, with no intermediate buffers.
    let usage = if rw.include_usage {
        usage_edit(body, fields)
    } else {
        None
    };
    let mut edits = [
        fields.model.clone().map(|m| (m, With::Model)),
        usage.map(|(r, b)| (r, With::Bytes(b))),
    ];
    if let [Some(a), Some(b)] = &edits
        && b.0.start < a.0.start
    {
        edits.swap(0, 1);
    }
    out.clear();
    out.reserve(body.len() + 64);
    let mut at = 0;
    for (range, with) in edits.into_iter().flatten() {
        out.extend_from_slice(&body[at..range.start]);
        match with {
            With::Model => push_json_bytes(out, rw.model),
            With::Bytes(b) => out.extend_from_slice(b),
        }
        at = range.end;
    }
    out.extend_from_slice(&body[at..]);
}

/// Where and what to write so the request asks for `include_usage`.
fn usage_edit(body: &[u8], fields: &RequestFields) -> Option<(Range<usize>, &'static [u8])> {
    Some(match fields.stream_options.clone() {
        Some(opts) if body.get(opts.start) == Some(&b'{') => match fields.include_usage.clone() {
            Some(v) => (v, b"true"),
            None if skip_ws(body, opts.start + 1) == opts.end - 1 => {
                (opts.start + 1..opts.start + 1, b"\"include_usage\":true")
            }
            None => (opts.start + 1..opts.start + 1, b"\"include_usage\":true,"),
        },
        Some(opts) => (opts, b"{\"include_usage\":true}"),
        None => (
            fields.body_open..fields.body_open,
            b"\"stream_options\":{\"include_usage\":true},",
        ),
    })
}

/// Appends `s` as a JSON string literal; model names rarely need escaping.
pub fn push_json_str(out: &mut Vec<u8>, s: &str) {
    push_json_bytes(out, s.as_bytes());
}

/// [`push_json_str`] of UTF-8 text as bytes: checked as text only when it
/// needs escaping (a name cut from a body already decoded as text does not
/// need reading again).
fn push_json_bytes(out: &mut Vec<u8>, s: &[u8]) {
    if s.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s);
        out.push(b'"');
    } else {
        let s = String::from_utf8_lossy(s);
        let mut escaped = String::with_capacity(s.len() + 8);
        crate::error::push_json_string(&mut escaped, &s);
        out.extend_from_slice(escaped.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain scan, deriving nothing.
    fn plain(body: &[u8]) -> Result<(RequestFields, Option<u128>), BodyError> {
        scan_request(body).map(|f| (f, None))
    }

    #[test]
    fn a_remembered_scan_is_the_scan_and_the_memo_stays_bounded() {
        let mut memo = ScanMemo::default();
        let digest = |b: &[u8]| xxhash_rust::xxh3::xxh3_128(b);
        let bodies: [&[u8]; 4] = [
            br#"{"model":"a/b","stream":true,"max_tokens":5,"n":2}"#,
            br#"{ "n":2, "model":"a/b" }"#,
            br#"{"model":"a/b","model":"c/d"}"#,
            br#"[1]"#,
        ];
        for _ in 0..2 {
            for body in bodies {
                assert_eq!(
                    scan_remembered(&mut memo, body, digest(body), plain).map(|(f, _)| f),
                    scan_request(body)
                );
            }
        }
        // Only the two bodies that scanned are remembered.
        assert_eq!(memo.len(), 2);
        // Bodies seen twice are kept (once is not enough).
        for n in 0..=SCAN_MEMO_ENTRIES {
            let body = format!(r#"{{"model":"p/m{n}"}}"#);
            for _ in 0..2 {
                let (f, _) =
                    scan_remembered(&mut memo, body.as_bytes(), digest(body.as_bytes()), plain)
                        .unwrap();
                assert_eq!(f.model(body.as_bytes()).unwrap(), format!("p/m{n}"));
                assert!(memo.len() <= SCAN_MEMO_ENTRIES);
            }
        }
        assert!(
            memo.len() < SCAN_MEMO_ENTRIES,
            "the memo never started over"
        );
        assert!(!memo.is_empty());
    }

    #[test]
    fn what_is_derived_from_a_remembered_body_comes_back_with_its_fields() {
        let mut memo = ScanMemo::default();
        let (a, b) = (br#"{"model":"a/b"}"#, br#"{"model":"c/d"}"#);
        let (da, db) = (
            xxhash_rust::xxh3::xxh3_128(a),
            xxhash_rust::xxh3::xxh3_128(b),
        );
        let derived =
            |memo: &mut ScanMemo, body: &[u8], d| scan_remembered(memo, body, d, plain).unwrap().1;
        // Seen once: not remembered, so nothing can be kept with it.
        assert_eq!(derived(&mut memo, a, da), Derived::NotKept);
        remember_derived(&mut memo, da, 7);
        // Seen twice: remembered from now on, nothing derived yet.
        assert_eq!(derived(&mut memo, a, da), Derived::Unknown);
        assert_eq!(derived(&mut memo, a, da), Derived::Unknown);
        remember_derived(&mut memo, da, 7);
        let (fields, d) = scan_remembered(&mut memo, a, da, plain).unwrap();
        assert_eq!((fields, d), (scan_request(a).unwrap(), Derived::Known(7)));
        // It stays with its own body.
        assert_eq!(derived(&mut memo, b, db), Derived::NotKept);
        assert_eq!(derived(&mut memo, b, db), Derived::Unknown);
        // A scan that derives the digest itself: known at once, and kept
        // with the body once the body is remembered.
        let c = br#"{"model":"e/f"}"#;
        let dc = xxhash_rust::xxh3::xxh3_128(c);
        let deriving = |b: &[u8]| scan_request(b).map(|f| (f, Some(9)));
        for _ in 0..2 {
            let got = scan_remembered(&mut memo, c, dc, deriving).unwrap().1;
            assert_eq!(got, Derived::Known(9));
        }
        let kept = scan_remembered(&mut memo, c, dc, |_| panic!("read again")).unwrap();
        assert_eq!(kept, (scan_request(c).unwrap(), Derived::Known(9)));
    }

    #[test]
    fn the_word_scan_finds_the_first_quote_or_backslash_as_memchr_does() {
        // Every length around the word and hand-off boundaries, each target
        // at every position, over filler that includes bytes >= 0x80 and
        // the bytes next to the targets (a borrow must not flag them).
        let fillers: [&[u8]; 3] = [b"a", b"\x80\xff\x00!#[]", b"\x21\x5b\x5d\x01\x7f"];
        for filler in fillers {
            for len in 0..(WORD_SCAN + 24) {
                let base: Vec<u8> = filler.iter().copied().cycle().take(len).collect();
                let want = |hay: &[u8]| memchr::memchr2(b'"', b'\\', hay);
                assert_eq!(quote_or_backslash(&base), want(&base), "len {len}");
                for at in 0..len {
                    for target in [b'"', b'\\'] {
                        let mut hay = base.clone();
                        hay[at] = target;
                        // A second hit after the first must not move the answer.
                        if at + 3 < len {
                            hay[at + 3] = b'"';
                        }
                        assert_eq!(quote_or_backslash(&hay), want(&hay), "len {len} at {at}");
                        assert_eq!(quote_or_backslash_folding(&hay), folding(&hay), "{hay:?}");
                    }
                }
            }
        }
        // The folding variant with a capital or a high byte before, at or
        // after the end it finds, over lower-case filler.
        for len in 1..(WORD_SCAN + 24) {
            for end in 0..len {
                for at in 0..len {
                    for b in [b'A', b'Z', b'@', b'[', 0x80, 0xC1, 0xFF] {
                        let mut hay = vec![b'a'; len];
                        hay[at] = b;
                        hay[end] = b'"';
                        assert_eq!(quote_or_backslash_folding(&hay), folding(&hay), "{hay:?}");
                    }
                }
            }
        }
    }

    /// What `quote_or_backslash_folding` finds, the plain way.
    fn folding(hay: &[u8]) -> (Option<usize>, bool) {
        let end = memchr::memchr2(b'"', b'\\', hay);
        let before = &hay[..end.unwrap_or(hay.len())];
        (
            end,
            before.iter().any(|&b| b.is_ascii_uppercase() || b >= 0x80),
        )
    }

    #[test]
    fn gemini_caps_and_best_of_count_as_output_caps_and_answers() {
        let caps = |body: &[u8]| {
            let f = scan_request(body).unwrap();
            (f.max_tokens(body), f.choices(body))
        };
        assert_eq!(
            caps(br#"{"contents":[],"generationConfig":{"temperature":1,"maxOutputTokens":2000,"candidateCount":3}}"#),
            (Some(2000), 3)
        );
        // Either spelling a proto JSON parser takes; the larger counts.
        assert_eq!(
            caps(br#"{"generation_config":{"max_output_tokens":50,"candidate_count":2},"generationConfig":{"maxOutputTokens":70}}"#),
            (Some(70), 2)
        );
        assert_eq!(
            caps(br#"{"generationConfig":{"maxOutputTokens":null}}"#),
            (None, 1)
        );
        // Every best_of candidate is generated and billed.
        assert_eq!(
            caps(br#"{"prompt":"x","max_tokens":10,"n":2,"best_of":5}"#),
            (Some(10), 5)
        );
        assert_eq!(
            scan_request(br#"{"generationConfig":{"maxOutputTokens":1e3}}"#),
            Err(BodyError::NotInteger("generationConfig.maxOutputTokens"))
        );
        assert_eq!(
            scan_request(br#"{"generationConfig":{"candidateCount":1,"candidateCount":9}}"#),
            Err(BodyError::Duplicate("generationConfig.candidateCount"))
        );
        assert_eq!(
            scan_request(br#"{"best_of":"5"}"#),
            Err(BodyError::NotInteger("best_of"))
        );
    }

    #[test]
    fn output_caps_and_answer_counts_are_read_as_plain_integers() {
        let body = br#"{"max_tokens":100,"max_completion_tokens":200,"n":3,"model":"m"}"#;
        let f = scan_request(body).unwrap();
        assert_eq!((f.max_tokens(body), f.choices(body)), (Some(200), 3));
        // No answers is read as one (providers refuse it); a cap written any
        // other way than in digits is refused (see below).
        let body = br#"{"max_tokens":5,"n":0}"#;
        let f = scan_request(body).unwrap();
        assert_eq!((f.max_tokens(body), f.choices(body)), (Some(5), 1));
        assert_eq!(
            scan_request(br#"{"max_tokens":1,"max_tokens":2}"#),
            Err(BodyError::Duplicate("max_tokens"))
        );
    }

    fn rewrite(body: &str, model: &str, include_usage: bool) -> String {
        let f = scan_request(body.as_bytes()).unwrap();
        let mut out = Vec::new();
        rewrite_body(
            body.as_bytes(),
            &f,
            &Rewrite {
                model: model.as_bytes(),
                include_usage,
            },
            &mut out,
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn finds_top_level_fields_only() {
        let body = br#"{"messages":[{"role":"user","content":"say \"model\": x"}],"model":"mock/echo","stream":true,"x":{"model":"no"}}"#;
        let f = scan_request(body).unwrap();
        assert_eq!(f.model(body).unwrap(), "mock/echo");
        assert!(f.is_stream(body));
    }

    #[test]
    fn model_is_replaced_and_the_rest_is_untouched() {
        assert_eq!(
            rewrite(
                r#"{"model": "openai/gpt-4o", "messages":[]}"#,
                "gpt-4o",
                false
            ),
            r#"{"model": "gpt-4o", "messages":[]}"#
        );
    }

    #[test]
    fn include_usage_is_injected_in_every_shape() {
        assert_eq!(
            rewrite(r#"{"model":"a/b","stream":true}"#, "b", true),
            r#"{"stream_options":{"include_usage":true},"model":"b","stream":true}"#
        );
        assert_eq!(
            rewrite(r#"{"model":"a/b","stream_options":{}}"#, "b", true),
            r#"{"model":"b","stream_options":{"include_usage":true}}"#
        );
        assert_eq!(
            rewrite(r#"{"model":"a/b","stream_options":{"x":1}}"#, "b", true),
            r#"{"model":"b","stream_options":{"include_usage":true,"x":1}}"#
        );
        assert_eq!(
            rewrite(
                r#"{"model":"a/b","stream_options":{"include_usage":false}}"#,
                "b",
                true
            ),
            r#"{"model":"b","stream_options":{"include_usage":true}}"#
        );
        assert_eq!(
            rewrite(r#"{"model":"a/b","stream_options":null}"#, "b", true),
            r#"{"model":"b","stream_options":{"include_usage":true}}"#
        );
    }

    #[test]
    fn escaped_strings_decode() {
        assert_eq!(string_value(br#""mock\/echo""#).unwrap(), "mock/echo");
        assert_eq!(string_value(br#""\u00e9\ud83d\ude00""#).unwrap(), "é😀");
        // What strict parsers refuse is refused: a sign or fewer than four
        // digits in `\u`, a high surrogate followed by a non-low one.
        for bad in [
            br#""m\u+06fdel""#.as_slice(),
            br#""\u06f""#,
            br#""\ud800\uffff""#,
            br#""\ud800\ud800""#,
            br#""\u-001""#,
        ] {
            assert_eq!(string_value(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(hex4(b"00e9"), Some(0xe9));
        assert_eq!(hex4(b"FFFF"), Some(0xffff));
        for bad in [&b"+0e9"[..], b"0e9", b"00e9 ", b" 0e9", b"00g9"] {
            assert_eq!(hex4(bad), None);
        }
    }

    #[test]
    fn keys_are_compared_after_unescaping() {
        let body = br#"{"str\u0065am":true,"m\u006fdel":"a/b","stream_options":{"include_\u0075sage":false}}"#;
        let f = scan_request(body).unwrap();
        assert!(f.is_stream(body));
        assert_eq!(f.model(body).unwrap(), "a/b");
        assert!(!client_asked_usage(body, &f));
        let mut out = Vec::new();
        rewrite_body(
            body,
            &f,
            &Rewrite {
                model: b"b",
                include_usage: true,
            },
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"str\u0065am":true,"m\u006fdel":"b","stream_options":{"include_\u0075sage":true}}"#
        );
    }

    #[test]
    fn fields_we_read_may_not_appear_twice() {
        for (body, field) in [
            (
                &br#"{"model":"up/cheap","mod\u0065l":"expensive"}"#[..],
                "model",
            ),
            (br#"{"stream":false,"stream":true}"#, "stream"),
            (
                br#"{"stream_options":{},"stream_options":null}"#,
                "stream_options",
            ),
            (
                br#"{"stream_options":{"include_usage":false,"include_usage":true}}"#,
                "stream_options.include_usage",
            ),
        ] {
            assert_eq!(
                scan_request(body),
                Err(BodyError::Duplicate(field)),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // Fields the gateway does not read may repeat; nested ones are not top level.
        assert!(scan_request(br#"{"x":1,"x":2,"a":{"model":1,"model":2}}"#).is_ok());
    }

    #[test]
    fn keys_some_parsers_read_as_ours_are_refused() {
        for (body, field) in [
            (&br#"{"MODEL":"a"}"#[..], "model"),
            (br#"{"model":"a","Model":"b"}"#, "model"),
            (br#"{"Max_Tokens":5}"#, "max_tokens"),
            (br#"{"N":2}"#, "n"),
            // Go folds the long s, the Kelvin sign and dotless i to ASCII.
            ("{\"\u{17f}tream\":true}".as_bytes(), "stream"),
            (br#"{"\u017ftream":true}"#, "stream"),
            ("{\"max_to\u{212a}ens\":5}".as_bytes(), "max_tokens"),
            (br#"{"STREAM_OPTIONS":{}}"#, "stream_options"),
            // An escape anywhere sends the key to be decoded first.
            (br#"{"\u004dODEL":1}"#, "model"),
            (br#"{"MODE\u004c":1}"#, "model"),
            (br#"{"STREAM_OPTION\u0053":{}}"#, "stream_options"),
            (
                br#"{"max_completion_token\u0053":1}"#,
                "max_completion_tokens",
            ),
            (
                "{\"stream_options\":{\"\u{131}nclude_usage\":true}}".as_bytes(),
                "stream_options.include_usage",
            ),
        ] {
            assert_eq!(
                scan_request(body),
                Err(BodyError::CaseVariant(field)),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // Keys no parser takes for ours pass, whatever their case.
        for ok in [
            &br#"{"Models":1,"modeL_":2,"Temperature":0,"STOP":[]}"#[..],
            "{\"\u{e9}tream\":1,\"stream_options\":{\"INCLUDE\":1}}".as_bytes(),
        ] {
            assert!(scan_request(ok).is_ok(), "{}", String::from_utf8_lossy(ok));
        }
        // Go's folds: to ASCII for four characters; a character whose upper
        // case is several (`ß`, `ﬆ`) stays itself.
        for (key, go) in [
            ("a\u{17f}\u{212a}\u{131}\u{130}_", "ASKII_"),
            ("\u{e9}\u{3c2}\u{1c5}", "\u{c9}\u{3a3}\u{1c4}"),
            ("\u{df}\u{fb06}", "\u{df}\u{fb06}"),
        ] {
            let mut folded = Vec::new();
            fold_key(key, &mut folded);
            assert_eq!(String::from_utf8(folded).unwrap(), go);
        }
        // A key that could be ours and does not decode is refused: lenient
        // parsers drop what they cannot read.
        for bad in [
            &b"{\"mod\xffel\":1}"[..],
            br#"{"\model":1}"#,
            br#"{"stream_options":{"inc\lude_usage":1}}"#,
        ] {
            assert!(
                matches!(scan_request(bad), Err(BodyError::Invalid(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(scan_request(b"{\"t\xff\":1,\"\xce\xbc\":2}").is_ok());
        assert!(scan_request("{\"\u{fb06}ream\":true,\"\u{df}\":1}".as_bytes()).is_ok());
        // The word-at-a-time check against the plain one, at every length
        // and position (a capital, a high byte, or neither).
        let plain = |k: &[u8]| k.iter().any(|&b| b.is_ascii_uppercase() || b >= 0x80);
        for len in 1..20 {
            for at in 0..len {
                for b in [
                    b'A', b'Z', b'@', b'[', b'a', b'z', 0x80, 0xC5, 0xFF, b'"', b'\\',
                ] {
                    let mut k = vec![b'a'; len];
                    k[at] = b;
                    assert_eq!(may_fold(&k), plain(&k), "{k:?}");
                    k[len - 1 - at] = b'[';
                    assert_eq!(may_fold(&k), plain(&k), "{k:?}");
                }
            }
        }
        assert!(!may_fold(b""));
    }

    #[test]
    fn numbers_and_models_we_read_have_one_reading() {
        for (body, e) in [
            (
                &br#"{"max_tokens":1e2}"#[..],
                BodyError::NotInteger("max_tokens"),
            ),
            (
                br#"{"max_tokens":100.0}"#,
                BodyError::NotInteger("max_tokens"),
            ),
            (
                br#"{"max_tokens":"100"}"#,
                BodyError::NotInteger("max_tokens"),
            ),
            (br#"{"max_tokens":-1}"#, BodyError::NotInteger("max_tokens")),
            (
                br#"{"max_tokens":064}"#,
                BodyError::NotInteger("max_tokens"),
            ),
            (
                br#"{"max_output_tokens":99999999999999999999}"#,
                BodyError::NotInteger("max_output_tokens"),
            ),
            (br#"{"n":true}"#, BodyError::NotInteger("n")),
            (br#"{"model":5}"#, BodyError::NotString("model")),
            (br#"{"model":{}}"#, BodyError::NotString("model")),
        ] {
            assert_eq!(
                scan_request(body),
                Err(e),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // A string's text is checked as it is read.
        for body in [&br#"{"model":"\x"}"#[..], b"{\"model\":\"a\xff\"}"] {
            let f = scan_request(body).unwrap();
            assert_eq!(f.model_str(body), Err(BodyError::NotString("model")));
        }
        let body = br#"{"model":"a\/b"}"#;
        let f = scan_request(body).unwrap();
        assert_eq!(f.model_str(body).unwrap().as_deref(), Some("a/b"));
        let body = br#"{"model":null,"max_tokens":null,"max_completion_tokens":0,"n":3}"#;
        let f = scan_request(body).unwrap();
        assert_eq!(
            (f.model(body), f.max_tokens(body), f.choices(body)),
            (None, Some(0), 3)
        );
    }

    #[test]
    fn booleans_we_read_must_be_booleans() {
        for (body, field) in [
            (&br#"{"stream":"true"}"#[..], "stream"),
            (br#"{"stream":1}"#, "stream"),
            (
                br#"{"stream_options":{"include_usage":"yes"}}"#,
                "stream_options.include_usage",
            ),
        ] {
            assert_eq!(scan_request(body), Err(BodyError::NotBoolean(field)));
        }
        assert!(
            scan_request(br#"{"stream":null,"stream_options":{"include_usage":false}}"#).is_ok()
        );
        // A byte order mark is JSON to Python's parser, so it is to us.
        let f = scan_request(b"\xEF\xBB\xBF {\"model\":\"a/b\"}").unwrap();
        assert_eq!(f.model(b"\xEF\xBB\xBF {\"model\":\"a/b\"}").unwrap(), "a/b");
    }

    #[test]
    fn numbers_follow_the_json_grammar() {
        for ok in ["0", "-0", "12", "1.5", "-1.5e3", "2E+2", "3e-1"] {
            assert!(is_number(ok.as_bytes()), "{ok}");
        }
        for bad in ["", "-", "01", "1.", ".5", "1e", "1-2", "+1", "1.5.5", "0x1"] {
            assert!(!is_number(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn malformed_bodies_are_errors() {
        for b in [
            &b"[]"[..],
            b"{",
            b"{\"a\":}",
            b"{\"a\":1} x",
            b"{\"a\" 1}",
            b"{\"a\":\"x}",
            b"{\"a\":nul}",
        ] {
            assert!(scan_request(b).is_err(), "{}", String::from_utf8_lossy(b));
        }
    }
}
