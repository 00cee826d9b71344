//! What every translation between wire formats shares: reading a JSON object's
//! members as raw byte ranges (so values pass through byte for byte: tool
//! schemas, tool arguments, `cache_control` markers), splitting an SSE stream
//! into lines, and the [`ReplyTranslator`] a reply goes through on its way to
//! the client. The formats themselves live with their adapters
//! (`anthropic::request`, `anthropic::reply`).
//!
//! Reading never guesses: a member we read that appears twice is an error,
//! since parsers disagree on which copy wins (STYLE 17).

use crate::json;
use smallvec::SmallVec;
use std::borrow::Cow;
use std::ops::Range;

/// Why a request cannot be translated: a 400 for the client, naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranslateError(pub String);

impl TranslateError {
    pub fn new(why: impl Into<String>) -> TranslateError {
        TranslateError(why.into())
    }
}

pub type Result<T> = std::result::Result<T, TranslateError>;

/// One JSON object's members: raw keys (between their quotes) and the byte
/// ranges of their values in the document.
pub struct Obj<'a> {
    doc: &'a [u8],
    members: SmallVec<[(&'a [u8], Range<usize>); 12]>,
}

impl<'a> Obj<'a> {
    /// The object whose value is `doc[range]`; `what` names it in errors.
    pub fn read(doc: &'a [u8], range: Range<usize>, what: &str) -> Result<Obj<'a>> {
        if doc.get(range.start) != Some(&b'{') {
            return Err(TranslateError::new(format!("`{what}` must be an object")));
        }
        let mut members = SmallVec::new();
        json::for_each_member(doc, range.start, |k, v| members.push((k, v)))
            .map_err(|e| TranslateError::new(format!("`{what}`: {e}")))?;
        Ok(Obj { doc, members })
    }

    /// The whole document as an object.
    pub fn document(doc: &'a [u8], what: &str) -> Result<Obj<'a>> {
        let start = json::json_start(doc);
        let end = json::skip_value(doc, start)
            .map_err(|e| TranslateError::new(format!("{what} is not JSON: {e}")))?;
        Obj::read(doc, start..end, what)
    }

    /// The raw value of `name` (`null` counts as absent); an error when the
    /// object holds it twice.
    pub fn get(&self, name: &str) -> Result<Option<&'a [u8]>> {
        Ok(self.range(name)?.map(|r| &self.doc[r]))
    }

    /// Like [`Obj::get`], as a range into the document.
    pub fn range(&self, name: &str) -> Result<Option<Range<usize>>> {
        let mut found = None;
        for (k, v) in &self.members {
            if json::key_is(k, name) {
                if found.is_some() {
                    return Err(TranslateError::new(format!(
                        "`{name}` appears more than once in an object; send it once"
                    )));
                }
                found = Some(v.clone());
            }
        }
        Ok(found.filter(|r| &self.doc[r.clone()] != b"null"))
    }

    /// The value of `name` decoded as a string; an error when it is not one.
    pub fn str(&self, name: &str) -> Result<Option<Cow<'a, str>>> {
        match self.get(name)? {
            None => Ok(None),
            Some(raw) => json::string_value(raw)
                .map(Some)
                .ok_or_else(|| TranslateError::new(format!("`{name}` must be a string"))),
        }
    }

    /// The raw value of `name` when it is a string literal (quotes included).
    pub fn raw_str(&self, name: &str) -> Result<Option<&'a [u8]>> {
        match self.get(name)? {
            Some(raw) if raw.first() != Some(&b'"') => {
                Err(TranslateError::new(format!("`{name}` must be a string")))
            }
            v => Ok(v),
        }
    }

    /// The object `name` holds, if any.
    pub fn obj(&self, name: &str) -> Result<Option<Obj<'a>>> {
        match self.range(name)? {
            None => Ok(None),
            Some(r) => Obj::read(self.doc, r, name).map(Some),
        }
    }

    /// The elements of the array `name` holds (empty when absent).
    pub fn array(&self, name: &str) -> Result<SmallVec<[Range<usize>; 8]>> {
        match self.range(name)? {
            None => Ok(SmallVec::new()),
            Some(r) => elements(self.doc, r, name),
        }
    }

    /// The value of `name` as a plain non-negative integer; `None` when it
    /// is absent, repeated or anything else (a provider's count).
    pub fn u64(&self, name: &str) -> Option<u64> {
        std::str::from_utf8(self.get(name).ok()??)
            .ok()?
            .parse()
            .ok()
    }

    pub fn doc(&self) -> &'a [u8] {
        self.doc
    }
}

/// The element ranges of the array at `doc[range]`.
pub fn elements(
    doc: &[u8],
    range: Range<usize>,
    what: &str,
) -> Result<SmallVec<[Range<usize>; 8]>> {
    let bad = |e: &str| TranslateError::new(format!("`{what}`: {e}"));
    if doc.get(range.start) != Some(&b'[') {
        return Err(bad("must be an array"));
    }
    let mut out = SmallVec::new();
    let mut i = json::skip_ws(doc, range.start + 1);
    if doc.get(i) == Some(&b']') {
        return Ok(out);
    }
    loop {
        let end = json::skip_value(doc, i).map_err(bad)?;
        out.push(i..end);
        i = json::skip_ws(doc, end);
        match doc.get(i) {
            Some(b',') => i = json::skip_ws(doc, i + 1),
            Some(b']') => return Ok(out),
            _ => return Err(bad("expected ',' or ']' in an array")),
        }
    }
}

/// Writes `raw` (a JSON value from a validated document) as it is.
pub fn raw(out: &mut Vec<u8>, raw: &[u8]) {
    out.extend_from_slice(raw);
}

/// Writes `s` as a JSON string literal.
pub fn string(out: &mut Vec<u8>, s: &str) {
    json::push_json_str(out, s);
}

/// Writes a JSON string literal whose content is the raw JSON text `value`
/// (a tool call's `arguments`: the object as a string).
pub fn stringified(out: &mut Vec<u8>, value: &[u8]) {
    match std::str::from_utf8(value) {
        Ok(s) => json::push_json_str(out, s),
        Err(_) => json::push_json_str(out, &String::from_utf8_lossy(value)),
    }
}

/// An OpenAI `image_url` part's image.
pub enum Image<'a> {
    /// A `data:<media>;base64,<data>` URL.
    Base64 {
        media: &'a str,
        data: &'a str,
    },
    Url(&'a str),
}

/// The URL of an OpenAI `image_url` part (`"image_url": "..."` or
/// `{"url": ...}`); `at` names the part in errors.
pub fn image_url<'a>(part: &Obj<'a>, at: &str) -> Result<Cow<'a, str>> {
    match part.get("image_url")? {
        Some(raw) if raw.first() == Some(&b'"') => json::string_value(raw),
        Some(_) => part
            .obj("image_url")?
            .map(|o| o.str("url"))
            .transpose()?
            .flatten(),
        None => None,
    }
    .ok_or_else(|| TranslateError::new(format!("`{at}.image_url.url` is required")))
}

/// What an image URL holds: base64 data (a data URL) or a link; `target`
/// names the provider in errors (only base64 data URLs are taken).
pub fn image<'u>(url: &'u str, at: &str, target: &str) -> Result<Image<'u>> {
    let Some(data) = url.strip_prefix("data:") else {
        return Ok(Image::Url(url));
    };
    let (meta, payload) = data.split_once(',').ok_or_else(|| {
        TranslateError::new(format!("`{at}.image_url.url`: a data URL needs a ','"))
    })?;
    let media = meta.strip_suffix(";base64").ok_or_else(|| {
        TranslateError::new(format!(
            "`{at}.image_url.url`: {target} takes base64 data URLs (data:<type>;base64,...)"
        ))
    })?;
    Ok(Image::Base64 {
        media,
        data: payload,
    })
}

/// Most bytes of a provider's unreadable body quoted in an error message.
pub const QUOTED_BODY_MAX: usize = 512;

/// "the provider answered HTTP <status>: <the start of its body>".
pub fn answered(status: u16, body: &[u8]) -> String {
    format!("the provider answered HTTP {status}: {}", quoted(body))
}

/// The start of a provider's body, for a message ([`QUOTED_BODY_MAX`]
/// bytes; empty says so).
pub fn quoted(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(QUOTED_BODY_MAX)]);
    match text.trim() {
        "" => "(an empty body)".to_string(),
        t => t.to_string(),
    }
}

/// Seconds since the epoch, for a translated reply's `created`.
pub fn unix_now() -> u64 {
    crate::reqid::now_unix_ms() / 1000
}

/// Ends an OpenAI stream chunk after its delta: the choice's finish reason
/// (`null` while it goes on), the chunk and its SSE event.
pub fn chunk_end(out: &mut Vec<u8>, finish: Option<&str>) {
    out.extend_from_slice(b",\"logprobs\":null,\"finish_reason\":");
    match finish {
        Some(f) => {
            out.push(b'"');
            out.extend_from_slice(f.as_bytes());
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b"}]}\n\n");
}

/// Writes an OpenAI `usage` object: `prompt` includes the `cached` input;
/// `cache_write`, when the provider reports it, is kept as Anthropic names it.
pub fn openai_usage(
    out: &mut Vec<u8>,
    prompt: u64,
    completion: u64,
    cached: u64,
    cache_write: Option<u64>,
) {
    use std::io::Write as _;
    let _ = write!(
        out,
        "{{\"prompt_tokens\":{prompt},\"completion_tokens\":{completion},\"total_tokens\":{},\"prompt_tokens_details\":{{\"cached_tokens\":{cached}}}",
        prompt.saturating_add(completion)
    );
    if let Some(w) = cache_write {
        let _ = write!(out, ",\"cache_creation_input_tokens\":{w}");
    }
    out.push(b'}');
}

/// Writes a tool call's `arguments` (JSON text, as OpenAI carries them) as
/// the object other formats want: empty is `{}`, anything but an object is
/// refused, naming `at`.
pub fn arguments_object(args: &str, at: &str, out: &mut Vec<u8>) -> Result<()> {
    let args = args.trim();
    if args.is_empty() {
        out.extend_from_slice(b"{}");
    } else if args.starts_with('{') && is_valid_json(args.as_bytes()) {
        out.extend_from_slice(args.as_bytes());
    } else {
        return Err(TranslateError::new(format!(
            "`{at}.function.arguments` must hold a JSON object"
        )));
    }
    Ok(())
}

/// Writes an OpenAI error object: the provider's `message` and `kind` (raw
/// string literals) when its body had them, else a message quoting the body.
pub fn openai_error(
    status: u16,
    body: &[u8],
    parsed: Option<(&[u8], Option<&[u8]>)>,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"{\"error\":{\"message\":");
    match parsed {
        Some((message, kind)) => {
            raw(out, message);
            out.extend_from_slice(b",\"type\":");
            raw(out, kind.unwrap_or(b"\"provider_error\""));
            out.extend_from_slice(b",\"param\":null,\"code\":");
            raw(out, kind.unwrap_or(b"null"));
        }
        None => {
            string(out, &answered(status, body));
            out.extend_from_slice(b",\"type\":\"provider_error\",\"param\":null,\"code\":null");
        }
    }
    out.extend_from_slice(b"}}");
}

/// Parses JSON into a value for tests' assertions.
#[cfg(test)]
pub fn parse(b: &[u8]) -> simd_json::OwnedValue {
    let mut copy = b.to_vec();
    simd_json::to_owned_value(&mut copy)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(b)))
}

/// Whether `doc` is one valid JSON value (a strict parse, so what we pass on
/// raw is what any parser reads). Numbers are held to JSON's grammar, not to
/// a machine range: they pass on as written (a tool schema's
/// `"maximum": 18446744073709551616` is valid JSON, and the untranslated path
/// forwards it), so each is checked by its text and stands as `0` for the
/// parse of the rest (which the parser would refuse beyond 64 bits or a
/// double's range).
pub fn is_valid_json(doc: &[u8]) -> bool {
    let mut copy = doc.to_vec();
    let mut i = 0;
    while i < copy.len() {
        match copy[i] {
            b'"' => match json::skip_value(&copy, i) {
                Ok(end) => i = end,
                Err(_) => return false,
            },
            b'-' | b'0'..=b'9' => {
                let end = i + copy[i..]
                    .iter()
                    .position(|b| !matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                    .unwrap_or(copy.len() - i);
                if !json::is_number(&copy[i..end]) {
                    return false;
                }
                copy[i] = b'0';
                copy[i + 1..end].fill(b' ');
                i = end;
            }
            _ => i += 1,
        }
    }
    simd_json::to_tape(&mut copy).is_ok()
}

/// Turns a reply in a provider's format into the client's, as it arrives:
/// whole SSE events as they complete, a JSON body once it is whole.
pub trait ReplyTranslator {
    /// Decoded body bytes, in order; what to send goes to `out`.
    fn feed(&mut self, data: &[u8], out: &mut Vec<u8>);
    /// The body ended (`complete`: every byte arrived); what is left goes to `out`.
    fn finish(&mut self, complete: bool, out: &mut Vec<u8>);
    /// After [`ReplyTranslator::finish`]: why the provider's successful
    /// reply could not be translated (not a reply of its kind, or too
    /// large), when it could not; what was written is then an error in the
    /// client's format, not an answer.
    fn unreadable(&self) -> Option<&str> {
        None
    }
}

/// Largest whole reply (JSON or error body) a translator holds until it
/// ends; a larger one is answered with an error instead.
pub const MAX_HELD: usize = 64 << 20;

/// Appends `data` to a held reply; once past [`MAX_HELD`], empties it and
/// says it overflowed (`true`).
pub fn hold(held: &mut Vec<u8>, data: &[u8], overflowed: &mut bool) {
    if *overflowed {
        return;
    }
    if held.len() + data.len() > MAX_HELD {
        *overflowed = true;
        *held = Vec::new();
    } else {
        held.extend_from_slice(data);
    }
}

/// The OpenAI error a client gets for a reply too large to translate.
pub const TOO_LARGE: &[u8] = b"{\"error\":{\"message\":\"the provider's reply is larger than aigw translates (64 MiB)\",\"type\":\"provider_error\",\"param\":null,\"code\":\"reply_too_large\"}}";

/// One direction of reply translation: what differs between formats. The
/// rest (holding a whole body, cutting a stream into lines, the size cap) is
/// [`Translator`]'s.
pub trait Format {
    /// A translated stream's state.
    type Stream: StreamFormat;
    /// The client's error body for a reply too large to hold.
    const TOO_LARGE: &'static [u8];
    /// Writes a whole successful reply in the client's format; `false` when
    /// `body` is not one.
    fn whole(&self, body: &[u8], out: &mut Vec<u8>) -> bool;
    /// Writes the client's error body for the provider's error `body`.
    fn error(&self, status: u16, body: &[u8], out: &mut Vec<u8>);
}

/// A stream's translation, line by line.
pub trait StreamFormat {
    fn line(&mut self, line: &[u8], out: &mut Vec<u8>);
    /// The body ended whole: what the client is still owed (the stream's
    /// end, or an error event when the provider never finished it).
    fn end(&mut self, out: &mut Vec<u8>);
    /// Why the stream stopped being translated, when the provider sent an
    /// event that could not be read ([`unreadable_event`]).
    fn unreadable(&self) -> Option<&str>;
}

/// Why a stream event could not be read: its data is not JSON. The stream
/// ends there with an error event (its text would otherwise be lost
/// without a word).
pub fn unreadable_event(data: &[u8]) -> String {
    format!("a stream event that is not JSON: {}", quoted(data))
}

/// An OpenAI stream's error event for an event the provider sent that could
/// not be read (`why`, from [`unreadable_event`]).
pub fn openai_unreadable_event(why: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"data: {\"error\":{\"message\":");
    string(out, &format!("the provider sent {why}"));
    out.extend_from_slice(
        b",\"type\":\"provider_error\",\"param\":null,\"code\":\"upstream_bad_response\"}}\n\n",
    );
}

enum Held<S> {
    /// A whole reply (`status` for errors), held until it ends.
    Whole(u16, Vec<u8>),
    Stream(Box<S>, Lines),
}

/// A [`ReplyTranslator`] for a [`Format`].
pub struct Translator<F: Format> {
    format: F,
    held: Held<F::Stream>,
    too_large: bool,
    unreadable: Option<String>,
}

impl<F: Format> Translator<F> {
    /// For a reply of `status`; `stream` is the stream state when the reply
    /// is a successful event stream.
    pub fn new(format: F, status: u16, stream: Option<F::Stream>) -> Translator<F> {
        let held = match stream {
            Some(s) if status < 400 => Held::Stream(Box::new(s), Lines::default()),
            _ => Held::Whole(status, Vec::new()),
        };
        Translator {
            format,
            held,
            too_large: false,
            unreadable: None,
        }
    }
}

impl<F: Format> ReplyTranslator for Translator<F> {
    fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) {
        match &mut self.held {
            Held::Whole(_, body) => hold(body, data, &mut self.too_large),
            Held::Stream(s, lines) => lines.feed(data, |line| s.line(line, out)),
        }
    }

    fn finish(&mut self, complete: bool, out: &mut Vec<u8>) {
        if !complete {
            return;
        }
        if self.too_large {
            self.unreadable = Some(format!(
                "larger than aigw translates ({} MiB)",
                MAX_HELD >> 20
            ));
            out.extend_from_slice(F::TOO_LARGE);
            return;
        }
        match &mut self.held {
            Held::Whole(status, body) if *status >= 400 => self.format.error(*status, body, out),
            Held::Whole(_, body) => {
                if !self.format.whole(body, out) {
                    self.unreadable =
                        Some(format!("not a reply aigw can translate: {}", quoted(body)));
                    self.format.error(502, body, out);
                }
            }
            Held::Stream(s, lines) => {
                // A last line without its end whose data does not parse was
                // cut there: the stream's end says it is incomplete.
                if let Some(last) = lines.rest()
                    && data_of(&last).is_none_or(|d| d == b"[DONE]" || is_valid_json(d))
                {
                    s.line(&last, out);
                }
                s.end(out);
            }
        }
    }

    fn unreadable(&self) -> Option<&str> {
        match &self.held {
            Held::Stream(s, _) => s.unreadable(),
            Held::Whole(..) => self.unreadable.as_deref(),
        }
    }
}

/// Two translations in a row: what the first writes, the second reads.
pub struct Chain {
    first: Box<dyn ReplyTranslator>,
    second: Box<dyn ReplyTranslator>,
    between: Vec<u8>,
}

impl Chain {
    pub fn new(first: Box<dyn ReplyTranslator>, second: Box<dyn ReplyTranslator>) -> Chain {
        Chain {
            first,
            second,
            between: Vec::new(),
        }
    }
}

impl ReplyTranslator for Chain {
    fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) {
        self.between.clear();
        self.first.feed(data, &mut self.between);
        self.second.feed(&self.between, out);
    }

    fn finish(&mut self, complete: bool, out: &mut Vec<u8>) {
        self.between.clear();
        self.first.finish(complete, &mut self.between);
        self.second.feed(&self.between, out);
        self.second.finish(complete, out);
    }

    fn unreadable(&self) -> Option<&str> {
        self.first.unreadable().or(self.second.unreadable())
    }
}

/// Longest SSE line a translator reads (a tool call's arguments can be large).
pub const MAX_LINE: usize = 16 << 20;

/// Splits a byte stream into lines (without their `\n` or `\r\n`).
#[derive(Default)]
pub struct Lines {
    carry: Vec<u8>,
    overlong: bool,
}

impl Lines {
    /// Calls `f` for every whole line in `input` (with what came before it).
    /// A line longer than [`MAX_LINE`] is skipped whole.
    pub fn feed(&mut self, input: &[u8], mut f: impl FnMut(&[u8])) {
        let mut start = 0;
        while let Some(i) = memchr::memchr(b'\n', &input[start..]) {
            let end = start + i;
            if self.overlong {
                self.overlong = false;
            } else if self.carry.is_empty() {
                f(trim_cr(&input[start..end]));
            } else {
                self.carry.extend_from_slice(&input[start..end]);
                let line = std::mem::take(&mut self.carry);
                f(trim_cr(&line));
                self.carry = line;
                self.carry.clear();
            }
            start = end + 1;
        }
        let rest = &input[start..];
        if self.overlong || self.carry.len() + rest.len() > MAX_LINE {
            self.overlong = true;
            self.carry.clear();
        } else {
            self.carry.extend_from_slice(rest);
        }
    }

    /// The unterminated last line, if any (a stream may end without `\n`).
    pub fn rest(&mut self) -> Option<Vec<u8>> {
        (!self.carry.is_empty() && !self.overlong).then(|| std::mem::take(&mut self.carry))
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The payload of an SSE `data:` line.
pub fn data_of(line: &[u8]) -> Option<&[u8]> {
    let d = line.strip_prefix(b"data:")?;
    Some(d.strip_prefix(b" ").unwrap_or(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_read_raw_and_a_duplicate_is_an_error() {
        let doc = br#"{"a":{"x":[1, 2]},"b":"s\u0074r","c":null,"d":1,"d":2}"#;
        let o = Obj::document(doc, "body").unwrap();
        assert_eq!(o.get("a").unwrap(), Some(&br#"{"x":[1, 2]}"#[..]));
        assert_eq!(o.str("b").unwrap().as_deref(), Some("str"));
        assert_eq!(o.get("c").unwrap(), None);
        assert!(o.get("d").is_err());
        let inner = o.obj("a").unwrap().unwrap();
        assert_eq!(inner.array("x").unwrap().len(), 2);
        assert!(o.str("a").is_err());
    }

    #[test]
    fn lines_split_across_pieces_and_drop_overlong_ones() {
        let mut l = Lines::default();
        let mut seen = Vec::new();
        for piece in [&b"da"[..], b"ta: 1\r\n\nda", b"ta: 2\n"] {
            l.feed(piece, |line| seen.push(line.to_vec()));
        }
        assert_eq!(seen, vec![b"data: 1".to_vec(), vec![], b"data: 2".to_vec()]);
        assert_eq!(data_of(b"data:x"), Some(&b"x"[..]));
        assert!(is_valid_json(br#"{"a":[1,2.5,"x"]}"#));
        assert!(!is_valid_json(br#"{"a":"\x"}"#));
    }

    #[test]
    fn numbers_are_valid_by_their_text_not_a_machine_range() {
        for ok in [
            &br#"{"max":18446744073709551616,"min":-99999999999999999999}"#[..],
            br#"[1e400,-1E-400,0.5e+3,-0,"12abc"]"#,
            br#"{"1":2}"#,
        ] {
            assert!(is_valid_json(ok), "{}", String::from_utf8_lossy(ok));
        }
        for bad in [
            &br#"{"a":01}"#[..],
            br#"{"a":1e}"#,
            br#"{"a":-}"#,
            br#"{"a":1.}"#,
            br#"{"a":12abc}"#,
            br#"{1:2}"#,
            br#"{"a":null5}"#,
            br#"{"a":1}}"#,
            b"{\"a\":\"\xff\"}",
            br#"{"a":"open"#,
        ] {
            assert!(!is_valid_json(bad), "{}", String::from_utf8_lossy(bad));
        }
    }
}
