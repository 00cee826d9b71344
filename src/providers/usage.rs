//! Token usage from provider replies, read by each adapter's [`UsageShape`];
//! `server::taps` runs it on the relay's chunks.
//!
//! Owns finding and reading `usage` objects in JSON bodies and SSE streams, and
//! (for streams where aigw asked for usage on the client's behalf) dropping the
//! usage-only event the client did not ask for. Never builds a DOM of a whole
//! body: a memchr search finds the last `"usage":{...}`, and only that small
//! object is copied and parsed with simd-json (which rewrites its input, hence
//! the copy). Does not price tokens or count them per key (later stages).

use crate::record::Usage;
use memchr::memmem;
use simd_json::prelude::*;

/// Longest SSE line we keep while waiting for its end; longer lines are
/// forwarded but not inspected.
pub const MAX_SSE_LINE: usize = 1 << 20;
/// Bytes of a JSON reply kept for the usage search when the body arrives in
/// pieces. `usage` is the last member of every provider's reply object.
pub const JSON_TAIL_WINDOW: usize = 64 << 10;

/// Where a provider's `usage` object keeps its counts: field names tried in
/// order. Each adapter names its own.
#[derive(Debug)]
pub struct UsageShape {
    pub input: &'static [&'static str],
    pub output: &'static [&'static str],
    /// Members added to the output count (Gemini's thinking tokens).
    pub output_also: &'static [&'static str],
    /// Cached input tokens as `outer.inner` members.
    pub cached_nested: &'static [(&'static str, &'static str)],
    /// Cached input tokens as a member of `usage` itself.
    pub cached: &'static [&'static str],
    /// Tokens written to the prompt cache, as a member of `usage`.
    pub cache_write: &'static [&'static str],
    /// The input count includes cached (and cache-written) tokens (OpenAI);
    /// otherwise they are counted apart (Anthropic).
    pub input_includes_cached: bool,
}

/// Reusable buffers for parsing usage objects: the copy simd-json rewrites
/// in place, and simd-json's own stage buffers, kept across requests.
#[derive(Default)]
pub struct JsonScratch {
    bytes: Vec<u8>,
    buffers: Option<simd_json::Buffers>,
}

/// Finds `"usage"` and Gemini's `"usageMetadata"` (the key's start; see [`key_len`]).
fn usage_key() -> &'static memmem::FinderRev<'static> {
    static FINDER: std::sync::OnceLock<memmem::FinderRev<'static>> = std::sync::OnceLock::new();
    FINDER.get_or_init(|| memmem::FinderRev::new(b"\"usage"))
}

/// Whether a stream of this request has an end [`SseTap::ended_well`]
/// knows: the unified chat, completions, Responses and Messages endpoints,
/// and the same paths (or Gemini's `:streamGenerateContent`) passed through.
/// Other event streams (audio, image and transcription events, a provider's
/// own endpoints) end as their API says, which aigw does not read: such a
/// stream is relayed as it ends, never said to stop short.
pub fn stream_end_known(endpoint: Option<&str>, path: &str) -> bool {
    if let Some(e) = endpoint {
        return matches!(
            e,
            "chat/completions" | "completions" | "responses" | "messages"
        );
    }
    let path = path.split(['?', '#']).next().unwrap_or("");
    let path = path.trim_end_matches('/');
    [
        "/chat/completions",
        "/completions",
        "/responses",
        "/messages",
    ]
    .iter()
    .any(|end| path.ends_with(end))
        || path.contains(":streamGenerateContent")
}

/// Whether a request to this endpoint (unified) or path (pass-through)
/// yields no output tokens: embeddings (OpenAI's, Azure's, Mistral's,
/// Cohere's `/embed`, Gemini's `:embedContent` and `:batchEmbedContents`)
/// and moderations. Admission reserves no output for it: a rule's or
/// budget's `default_max_tokens` is for answers that write text.
pub fn yields_no_output(endpoint: Option<&str>, path: &str) -> bool {
    if let Some(e) = endpoint {
        return e == "embeddings";
    }
    let path = path.split(['?', '#']).next().unwrap_or("");
    let last = path.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    matches!(last, "embeddings" | "embed" | "moderations")
        || last.ends_with(":embedContent")
        || last.ends_with(":batchEmbedContents")
}

/// Whether an event's data says why a choice (or candidate) finished:
/// `"finish_reason"` (`"finishReason"`) with a string, not `null`.
fn names_a_finish(data: &[u8]) -> bool {
    static FINDER: std::sync::OnceLock<memmem::Finder<'static>> = std::sync::OnceLock::new();
    let finder = FINDER.get_or_init(|| memmem::Finder::new(b"inish"));
    finder.find_iter(data).any(|at| {
        let key = &data[at.saturating_sub(2)..];
        let rest = if let Some(r) = key.strip_prefix(b"\"finish_reason\"") {
            r
        } else if let Some(r) = key.strip_prefix(b"\"finishReason\"") {
            r
        } else {
            return false;
        };
        let rest = rest.trim_ascii_start();
        rest.strip_prefix(b":")
            .is_some_and(|r| r.trim_ascii_start().first() == Some(&b'"'))
    })
}

fn usage_key_forward() -> &'static memmem::Finder<'static> {
    static FINDER: std::sync::OnceLock<memmem::Finder<'static>> = std::sync::OnceLock::new();
    FINDER.get_or_init(|| memmem::Finder::new(b"\"usage"))
}

/// The length of the usage key found at `at` (`"usage"` or
/// `"usageMetadata"`, quotes included), if it is one.
fn key_len(body: &[u8], at: usize) -> Option<usize> {
    let rest = &body[at + 6..];
    if rest.first() == Some(&b'"') {
        Some(7)
    } else if rest.starts_with(b"Metadata\"") {
        Some(15)
    } else {
        None
    }
}

/// Whether the event `data` is an object whose `choices` is an empty array,
/// however it is spaced (`"choices": []` from a server that writes JSON with
/// Python's defaults): the usage-only event. Read member by member, so the
/// text in a string never counts.
fn empty_choices(data: &[u8]) -> bool {
    let start = crate::json::json_start(data);
    if data.get(start) != Some(&b'{') {
        return false;
    }
    let mut empty = false;
    let _ = crate::json::for_each_member(data, start, |key, value| {
        if key == b"choices" {
            let v = &data[value];
            empty = v.first() == Some(&b'[')
                && v.len() >= 2
                && crate::json::skip_ws(v, 1) == v.len() - 1;
        }
    });
    empty
}

/// Byte range of the last `"usage": {...}` object in `body`.
pub fn find_usage_object(body: &[u8]) -> Option<&[u8]> {
    let finder = usage_key();
    let mut end = body.len();
    while let Some(at) = finder.rfind(&body[..end]) {
        end = at;
        let backslashes = body[..at].iter().rev().take_while(|b| **b == b'\\').count();
        if backslashes % 2 == 1 {
            continue; // an escaped quote inside a string
        }
        let Some(len) = key_len(body, at) else {
            continue;
        };
        let colon = crate::json::skip_ws(body, at + len);
        if body.get(colon) != Some(&b':') {
            continue;
        }
        let open = crate::json::skip_ws(body, colon + 1);
        if body.get(open) != Some(&b'{') {
            continue; // "usage": null in stream chunks
        }
        if let Ok(close) = crate::json::skip_value(body, open) {
            return Some(&body[open..close]);
        }
    }
    None
}

/// Reads usage from a JSON reply in `shape`. Only the usage object is copied
/// and parsed (simd-json tape, buffers reused through `scratch`).
pub fn usage_from_json(
    body: &[u8],
    shape: &UsageShape,
    scratch: &mut JsonScratch,
) -> Option<Usage> {
    let obj = find_usage_object(body)?;
    scratch.bytes.clear();
    scratch.bytes.extend_from_slice(obj);
    let buffers = scratch
        .buffers
        .get_or_insert_with(|| simd_json::Buffers::new(256));
    let tape = simd_json::to_tape_with_buffers(&mut scratch.bytes, buffers).ok()?;
    let v = tape.as_value();
    let field = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| v.get(*n).and_then(|x| x.as_u64()))
    };
    let nested = |outer: &str, inner: &str| {
        v.get(outer)
            .and_then(|o| o.get(inner))
            .and_then(|x| x.as_u64())
    };
    let u = Usage {
        input_tokens: field(shape.input),
        output_tokens: field(shape.output).map(|o| {
            shape
                .output_also
                .iter()
                .filter_map(|n| v.get(*n).and_then(|x| x.as_u64()))
                .fold(o, u64::saturating_add)
        }),
        cached_tokens: shape
            .cached_nested
            .iter()
            .find_map(|(o, i)| nested(o, i))
            .or_else(|| field(shape.cached)),
        cache_write_tokens: field(shape.cache_write),
    };
    (!u.is_empty()).then_some(u)
}

/// Keys whose string values are text a model wrote: chat's `content`,
/// `refusal`, `reasoning_content` and tool calls' `arguments` (OpenAI),
/// `text`, `thinking` and `partial_json` (Anthropic; Gemini's `text`), the
/// Responses API's `delta`.
const TEXT_KEYS: [&[u8]; 8] = [
    b"content",
    b"text",
    b"arguments",
    b"delta",
    b"thinking",
    b"partial_json",
    b"refusal",
    b"reasoning_content",
];

fn member_end() -> &'static memmem::Finder<'static> {
    static FINDER: std::sync::OnceLock<memmem::Finder<'static>> = std::sync::OnceLock::new();
    FINDER.get_or_init(|| memmem::Finder::new(b"\":"))
}

/// Bytes of model-written text in one event's JSON (the values of
/// [`TEXT_KEYS`] members that are strings, as written, escapes included):
/// what a client that leaves mid-stream was sent of the answer, without the
/// events' framing, which is most of their bytes. An estimate: a key spelled
/// with an escape, or with space before its colon, is not seen.
pub fn text_bytes(data: &[u8]) -> u64 {
    let mut n = 0u64;
    let mut pos = 0;
    while let Some(k) = data.get(pos..).and_then(|rest| member_end().find(rest)) {
        // `at`: the key's closing quote (a quote inside a string is escaped).
        let at = pos + k;
        pos = at + 2;
        let Some(open) = memchr::memrchr(b'"', &data[..at]) else {
            continue;
        };
        let v = crate::json::skip_ws(data, at + 2);
        if data.get(v) != Some(&b'"') || !TEXT_KEYS.contains(&&data[open + 1..at]) {
            continue;
        }
        // The value's end: the first quote not escaped (or the event's,
        // when it was cut).
        let mut j = v + 1;
        let end = loop {
            match memchr::memchr2(b'"', b'\\', &data[j.min(data.len())..]) {
                Some(q) if data[j + q] == b'\\' => j += q + 2,
                Some(q) => break j + q,
                None => break data.len(),
            }
        };
        n += (end - (v + 1)) as u64;
        // Whatever the text holds is not read as members.
        pos = end + 1;
    }
    n
}

/// Collects the tail of a JSON reply that arrives in several reads.
#[derive(Default)]
pub struct JsonTail {
    buf: Vec<u8>,
}

impl JsonTail {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() > 2 * JSON_TAIL_WINDOW {
            let cut = self.buf.len() - JSON_TAIL_WINDOW;
            self.buf.drain(..cut);
        }
    }
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }
}

/// Watches an SSE stream: counts events, notes `[DONE]`, reads usage events, and
/// optionally drops the usage-only event (`"choices":[]`) the client did not ask for.
pub struct SseTap {
    shape: &'static UsageShape,
    carry: Vec<u8>,
    /// Lines of the current event, held back only when filtering.
    event: Vec<u8>,
    drop_event: bool,
    filter_usage_event: bool,
    overlong: bool,
    scratch: JsonScratch,
    pub usage: Usage,
    pub data_events: u64,
    pub saw_done: bool,
    /// The stream ended the way its provider ends one, or said it is about
    /// to: `[DONE]`, Anthropic's `message_stop`, the Responses API's last
    /// event (`response.completed`, `.incomplete`, `.failed`), or a choice's
    /// `finish_reason` (Gemini's `finishReason`), which providers that send
    /// no `[DONE]` still send. A stream that ends cleanly without any of
    /// them stopped short ([`SseTap::ended_well`]).
    pub saw_end: bool,
    /// Bytes of model-written text in the events so far ([`text_bytes`]).
    pub text_bytes: u64,
    /// The provider reported a failure inside the stream: an error event
    /// (`data: {"error":..}` of OpenAI and Google, Anthropic's and the
    /// Responses API's `event: error`, `event: response.failed`).
    pub error_event: bool,
}

impl SseTap {
    pub fn new(shape: &'static UsageShape, filter_usage_event: bool) -> SseTap {
        SseTap {
            shape,
            carry: Vec::new(),
            event: Vec::new(),
            drop_event: false,
            filter_usage_event,
            overlong: false,
            scratch: JsonScratch::default(),
            usage: Usage::default(),
            data_events: 0,
            saw_done: false,
            saw_end: false,
            text_bytes: 0,
            error_event: false,
        }
    }

    /// True when [`SseTap::feed`] may hold back or drop bytes, so the caller must
    /// forward `out` instead of the input.
    pub fn filters(&self) -> bool {
        self.filter_usage_event
    }

    /// Feeds decoded body bytes. When filtering, the bytes to forward are
    /// appended to `out` (whole events only); otherwise `out` is untouched and
    /// the caller forwards `input` as is.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let mut start = 0;
        while let Some(i) = memchr::memchr(b'\n', &input[start..]) {
            let end = start + i + 1;
            if self.carry.is_empty() {
                self.on_line(&input[start..end], out);
            } else {
                let mut line = std::mem::take(&mut self.carry);
                line.extend_from_slice(&input[start..end]);
                self.on_line(&line, out);
                line.clear();
                self.carry = line;
            }
            start = end;
        }
        let rest = &input[start..];
        if rest.is_empty() {
            return;
        }
        if self.overlong || self.carry.len() + rest.len() > MAX_SSE_LINE {
            // Too long to inspect: pass it on unexamined. The lines of its
            // event held so far go first, in order, and the event can no
            // longer be dropped.
            if self.filter_usage_event && !self.overlong {
                out.extend_from_slice(&self.event);
                self.event.clear();
                self.drop_event = false;
            }
            self.overlong = true;
            if self.filter_usage_event {
                out.extend_from_slice(&self.carry);
                out.extend_from_slice(rest);
            }
            self.carry.clear();
        } else {
            self.carry.extend_from_slice(rest);
        }
    }

    /// Whether the stream, now ended, ended as its provider ends one (or
    /// reported its own failure: an error event says what happened).
    pub fn ended_well(&self) -> bool {
        self.saw_end || self.error_event
    }

    /// End of stream: whatever was held back is released.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.filter_usage_event && !self.drop_event {
            out.extend_from_slice(&self.event);
            out.extend_from_slice(&self.carry);
        }
        self.event.clear();
        self.carry.clear();
    }

    fn on_line(&mut self, raw: &[u8], out: &mut Vec<u8>) {
        if self.overlong {
            // The tail of an overlong line.
            self.overlong = false;
            if self.filter_usage_event {
                out.extend_from_slice(raw);
            }
            return;
        }
        let line = raw.strip_suffix(b"\n").unwrap_or(raw);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if self.filter_usage_event {
                if !self.drop_event {
                    out.extend_from_slice(&self.event);
                    out.extend_from_slice(raw);
                }
                self.event.clear();
                self.drop_event = false;
            }
            return;
        }
        if let Some(name) = line.strip_prefix(b"event:") {
            let name = name.strip_prefix(b" ").unwrap_or(name);
            self.error_event |= name == b"error" || name == b"response.failed";
            self.saw_end |= matches!(
                name,
                b"message_stop"
                    | b"response.completed"
                    | b"response.incomplete"
                    | b"response.failed"
            );
        } else if let Some(data) = line.strip_prefix(b"data:") {
            let data = data.strip_prefix(b" ").unwrap_or(data);
            self.data_events += 1;
            if data == b"[DONE]" {
                self.saw_done = true;
                self.saw_end = true;
            } else {
                if !self.saw_end {
                    self.saw_end = names_a_finish(data);
                }
                self.error_event |= data.starts_with(b"{\"error\"");
                self.text_bytes += text_bytes(data);
                if usage_key_forward().find(data).is_some()
                    && let Some(u) = usage_from_json(data, self.shape, &mut self.scratch)
                {
                    self.usage.merge(u);
                    if self.filter_usage_event && empty_choices(data) {
                        self.drop_event = true;
                    }
                }
            }
        }
        if self.filter_usage_event {
            self.event.extend_from_slice(raw);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::{anthropic, openai};

    #[test]
    fn a_stream_ended_well_when_it_says_so_in_its_providers_way() {
        let ended = |stream: &str| {
            let mut tap = SseTap::new(&openai::USAGE, false);
            tap.feed(stream.as_bytes(), &mut Vec::new());
            tap.ended_well()
        };
        let delta = "data: {\"choices\":[{\"delta\":{\"content\":\"finish_reason\"},\"finish_reason\":null}]}\n\n";
        assert!(!ended(delta), "a null finish reason, or the words in text");
        assert!(ended(&format!("{delta}data: [DONE]\n\n")));
        // Providers that send no [DONE] still say why a choice finished.
        assert!(ended(&format!(
            "{delta}data: {{\"choices\":[{{\"delta\":{{}},\"finish_reason\" : \"stop\"}}]}}\n\n"
        )));
        assert!(ended(
            "data: {\"candidates\":[{\"finishReason\":\"STOP\"}]}\n\n"
        ));
        assert!(ended(
            "event: message_delta\ndata: {}\n\nevent: message_stop\ndata: {}\n\n"
        ));
        assert!(!ended("event: message_start\ndata: {}\n\n"));
        assert!(ended("event: response.completed\ndata: {}\n\n"));
        assert!(!ended("event: response.output_text.delta\ndata: {}\n\n"));
        // Its own failure is an ending too (the error says what happened).
        assert!(ended("data: {\"error\":{\"code\":\"overloaded\"}}\n\n"));
        assert!(!ended(""));
    }

    #[test]
    fn embeddings_and_moderations_yield_no_output() {
        for (endpoint, path) in [
            (Some("embeddings"), "/x"),
            (None, "/v1/embeddings"),
            (None, "/openai/deployments/e/embeddings?api-version=1"),
            (None, "/v2/embed/"),
            (None, "/v1/moderations"),
            (None, "/v1beta/models/text-embedding-004:embedContent"),
            (
                None,
                "/v1beta/models/text-embedding-004:batchEmbedContents?key=k",
            ),
        ] {
            assert!(yields_no_output(endpoint, path), "{endpoint:?} {path}");
        }
        for (endpoint, path) in [
            (Some("chat/completions"), "/v1/embeddings"),
            (Some("responses"), "/x"),
            (None, "/v1/chat/completions"),
            (None, "/v1/embeddings/chat/completions"),
            (None, "/v1/images/generations"),
            (None, "/v1/audio/speech"),
            (None, "/v1beta/models/gemini-2.0-flash:generateContent"),
        ] {
            assert!(!yields_no_output(endpoint, path), "{endpoint:?} {path}");
        }
    }

    #[test]
    fn only_streams_whose_end_is_known_are_judged() {
        for (endpoint, path) in [
            (Some("chat/completions"), "/x"),
            (Some("responses"), "/x"),
            (Some("messages"), "/x"),
            (None, "/v1/chat/completions"),
            (None, "/v1/completions?x=1"),
            (None, "/v1/responses/"),
            (None, "/v1/messages"),
            (
                None,
                "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse",
            ),
        ] {
            assert!(stream_end_known(endpoint, path), "{endpoint:?} {path}");
        }
        for (endpoint, path) in [
            (Some("embeddings"), "/v1/chat/completions"),
            (None, "/v1/audio/speech"),
            (None, "/v1/audio/transcriptions"),
            (None, "/v1/images/generations"),
            (None, "/v1/responses/resp_1/input_items"),
        ] {
            assert!(!stream_end_known(endpoint, path), "{endpoint:?} {path}");
        }
    }

    #[test]
    fn usage_is_read_from_a_chat_completion() {
        let body = br#"{"id":"x","choices":[{"message":{"content":"the \"usage\": {} trick"}}],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17,"prompt_tokens_details":{"cached_tokens":3}}}"#;
        let u = usage_from_json(body, &openai::USAGE, &mut JsonScratch::default()).unwrap();
        assert_eq!(
            (u.input_tokens, u.output_tokens, u.cached_tokens),
            (Some(12), Some(5), Some(3))
        );
    }

    #[test]
    fn error_events_are_seen_in_every_providers_shape() {
        for (stream, error) in [
            (&b"data: {\"error\":{\"message\":\"overloaded\"}}\n\n"[..], true),
            (b"event: error\ndata: {\"type\":\"error\",\"error\":{}}\n\n", true),
            (b"event: response.failed\ndata: {}\n\n", true),
            (b"data: {\"choices\":[{\"delta\":{\"content\":\"{\\\"error\\\":1}\"}}]}\n\ndata: [DONE]\n\n", false),
            (b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n", false),
        ] {
            let mut tap = SseTap::new(&openai::USAGE, false);
            tap.feed(stream, &mut Vec::new());
            assert_eq!(tap.error_event, error, "{}", String::from_utf8_lossy(stream));
        }
    }

    #[test]
    fn text_bytes_counts_what_the_model_wrote_not_the_framing() {
        for (event, text) in [
            // OpenAI chat: the role event has no text, a content delta has.
            (&br#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#[..], 0),
            (br#"{"id":"c","choices":[{"index":0,"delta":{"content":"Hello"},"finish_reason":null}]}"#, 5),
            // An escaped quote stays inside its string; what the text holds
            // is not read as members.
            (br#"{"choices":[{"delta":{"content":"say \"text\":\"no\""}}]}"#, 19),
            (br#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":\"Paris\"}"}}]}}]}"#, 20),
            // Anthropic: `text` and `partial_json` deltas; `type` values are not text.
            (br#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi there"}}"#, 8),
            (br#"{"type":"content_block_delta","delta":{"type":"input_json_delta","partial_json":"{\"a\""}}"#, 6),
            // Responses API, spaced as Python writes it.
            (br#"{"type": "response.output_text.delta", "delta": "abc"}"#, 3),
            // Usage events and cut text.
            (br#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#, 0),
            (br#"{"choices":[{"delta":{"content":"cut sho"#, 7),
        ] {
            assert_eq!(text_bytes(event), text, "{}", String::from_utf8_lossy(event));
            // Cut anywhere, an event reads without a panic.
            for cut in 0..event.len() {
                assert!(text_bytes(&event[..cut]) <= text + 1);
            }
        }
    }

    #[test]
    fn anthropic_stream_usage_merges_start_and_delta() {
        let stream = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n";
        let mut tap = SseTap::new(&anthropic::USAGE, false);
        let mut out = Vec::new();
        for piece in stream.chunks(7) {
            tap.feed(piece, &mut out);
        }
        assert_eq!(
            (tap.usage.input_tokens, tap.usage.output_tokens),
            (Some(25), Some(15))
        );
        assert!(out.is_empty());
    }

    #[test]
    fn usage_only_event_is_dropped_when_filtering_and_everything_else_kept() {
        let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\ndata: [DONE]\n\n";
        let mut tap = SseTap::new(&openai::USAGE, true);
        let mut out = Vec::new();
        for piece in stream.as_bytes().chunks(5) {
            tap.feed(piece, &mut out);
        }
        tap.finish(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\ndata: [DONE]\n\n"
        );
        assert_eq!(tap.usage.output_tokens, Some(1));
        assert!(tap.saw_done);
        // Spaced as Python writes JSON: dropped too. A `choices` that is not
        // empty, or that only a string mentions, is kept.
        for (event, dropped) in [
            (
                r#"{"id": "c1", "choices": [ ], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}"#,
                true,
            ),
            (
                r#"{"choices":[{"delta":{}}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#,
                false,
            ),
            (
                r#"{"note":"\"choices\":[]","choices":[{}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#,
                false,
            ),
        ] {
            let mut tap = SseTap::new(&openai::USAGE, true);
            let mut out = Vec::new();
            tap.feed(
                format!("data: {event}\n\ndata: [DONE]\n\n").as_bytes(),
                &mut out,
            );
            tap.finish(&mut out);
            assert_eq!(
                !String::from_utf8(out).unwrap().contains("usage"),
                dropped,
                "{event}"
            );
            assert_eq!(tap.usage.output_tokens, Some(1), "{event}");
        }
    }

    #[test]
    fn an_overlong_line_keeps_its_event_in_order() {
        let long = "x".repeat(MAX_SSE_LINE + 10);
        let stream = format!("id: 1\ndata: {long}\ndata: tail\n\ndata: [DONE]\n\n");
        let mut tap = SseTap::new(&openai::USAGE, true);
        let mut out = Vec::new();
        for piece in stream.as_bytes().chunks(64 << 10) {
            tap.feed(piece, &mut out);
        }
        tap.finish(&mut out);
        assert_eq!(out, stream.as_bytes());
    }

    #[test]
    fn null_usage_is_not_usage() {
        assert!(
            usage_from_json(
                br#"{"usage":null}"#,
                &openai::USAGE,
                &mut JsonScratch::default()
            )
            .is_none()
        );
    }
}
