//! An Anthropic Messages reply, written as an OpenAI chat completion: the
//! whole message as a `chat.completion`, a stream's events as
//! `chat.completion.chunk`s as they arrive (text deltas, tool calls with their
//! ids and argument fragments, the finish reason, usage when asked), an error
//! body as an OpenAI error object with the provider's type and message.
//!
//! A stream that ends without `message_stop` was cut: it ends with an error
//! event and no `[DONE]`, so no client mistakes half an answer for a whole one.

use crate::providers::translate::{self, Format, Obj, StreamFormat, Translator, data_of};
use smallvec::SmallVec;

/// Anthropic's stop reasons as OpenAI finish reasons.
fn finish_reason(stop: &[u8]) -> &'static str {
    match stop {
        b"\"max_tokens\"" | b"\"model_context_window_exceeded\"" => "length",
        b"\"tool_use\"" => "tool_calls",
        b"\"refusal\"" => "content_filter",
        _ => "stop",
    }
}

/// Token counts as Anthropic reports them (input excludes cached input).
#[derive(Default, Clone, Copy)]
struct Counts {
    input: u64,
    output: u64,
    cache_read: u64,
    cache_write: u64,
}

impl Counts {
    /// Takes every count `usage` holds (stream events repeat them cumulatively).
    fn read(&mut self, usage: &Obj<'_>) {
        for (slot, name) in [
            (&mut self.input, "input_tokens"),
            (&mut self.output, "output_tokens"),
            (&mut self.cache_read, "cache_read_input_tokens"),
            (&mut self.cache_write, "cache_creation_input_tokens"),
        ] {
            if let Some(v) = usage.u64(name) {
                *slot = v;
            }
        }
    }

    /// As an OpenAI `usage` object (prompt tokens include cached input).
    fn write(&self, out: &mut Vec<u8>) {
        let prompt = self
            .input
            .saturating_add(self.cache_read)
            .saturating_add(self.cache_write);
        translate::openai_usage(
            out,
            prompt,
            self.output,
            self.cache_read,
            Some(self.cache_write),
        );
    }
}

/// Writes the OpenAI error object for an Anthropic error body (`{"type":
/// "error","error":{"type","message"}}`), or for a body that is not one.
pub fn error_body(status: u16, body: &[u8], out: &mut Vec<u8>) {
    let parsed = Obj::document(body, "error").ok().and_then(|top| {
        let e = top.obj("error").ok()??;
        Some((
            e.raw_str("message").ok()??,
            e.raw_str("type").ok().flatten(),
        ))
    });
    translate::openai_error(status, body, parsed, out);
}

/// Writes the `chat.completion` for a whole Messages reply; `false` when
/// `body` is not one.
pub fn message(body: &[u8], out: &mut Vec<u8>) -> bool {
    let start = out.len();
    let ok = write_message(body, out).is_some();
    if !ok {
        out.truncate(start);
    }
    ok
}

fn write_message(body: &[u8], out: &mut Vec<u8>) -> Option<()> {
    let top = Obj::document(body, "reply").ok()?;
    // A message says it is one: any other object (`{}`, an error event's
    // body) is not a reply.
    if top.str("type").ok()?.as_deref() != Some("message") {
        return None;
    }
    let doc = top.doc();
    let mut text: Vec<&[u8]> = Vec::new();
    let mut thinking: Vec<&[u8]> = Vec::new();
    let mut calls = Vec::new();
    for r in top.array("content").ok()? {
        let b = Obj::read(doc, r, "content").ok()?;
        match b.str("type").ok()??.as_ref() {
            "text" => text.push(b.raw_str("text").ok()??),
            "thinking" => thinking.push(b.raw_str("thinking").ok()??),
            "tool_use" => calls.push((
                b.raw_str("id").ok()??,
                b.raw_str("name").ok()??,
                b.get("input").ok()?.unwrap_or(b"{}"),
            )),
            _ => {}
        }
    }
    out.extend_from_slice(b"{\"id\":");
    translate::raw(out, top.raw_str("id").ok()?.unwrap_or(b"\"\""));
    out.extend_from_slice(b",\"object\":\"chat.completion\",\"created\":");
    crate::http::push_decimal(out, translate::unix_now());
    out.extend_from_slice(b",\"model\":");
    translate::raw(out, top.raw_str("model").ok()?.unwrap_or(b"\"\""));
    out.extend_from_slice(
        b",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":",
    );
    joined(&text, out);
    if !thinking.is_empty() {
        out.extend_from_slice(b",\"reasoning_content\":");
        joined(&thinking, out);
    }
    if !calls.is_empty() {
        out.extend_from_slice(b",\"tool_calls\":[");
        for (i, (id, name, input)) in calls.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"id\":");
            translate::raw(out, id);
            out.extend_from_slice(b",\"type\":\"function\",\"function\":{\"name\":");
            translate::raw(out, name);
            out.extend_from_slice(b",\"arguments\":");
            translate::stringified(out, input);
            out.extend_from_slice(b"}}");
        }
        out.push(b']');
    }
    out.extend_from_slice(b",\"refusal\":null},\"logprobs\":null,\"finish_reason\":\"");
    let stop = top.get("stop_reason").ok()?.unwrap_or(b"\"end_turn\"");
    out.extend_from_slice(finish_reason(stop).as_bytes());
    out.extend_from_slice(b"\"}],\"usage\":");
    let mut counts = Counts::default();
    if let Some(u) = top.obj("usage").ok()? {
        counts.read(&u);
    }
    counts.write(out);
    out.push(b'}');
    Some(())
}

/// Raw string literals as one string (`null` when there are none).
fn joined(parts: &[&[u8]], out: &mut Vec<u8>) {
    match parts {
        [] => out.extend_from_slice(b"null"),
        [one] => translate::raw(out, one),
        many => {
            let text: String = many
                .iter()
                .filter_map(|p| crate::json::string_value(p))
                .collect();
            translate::string(out, &text);
        }
    }
}

/// The state of a translated stream.
pub struct Stream {
    include_usage: bool,
    /// `data: {"id":...,"choices":[{"index":0,"delta":` for every chunk.
    prefix: Vec<u8>,
    /// The same up to `"choices":`, for the usage chunk.
    head: Vec<u8>,
    /// Content block index to OpenAI tool call index.
    tools: SmallVec<[(u64, u32); 4]>,
    counts: Counts,
    stopped: bool,
    failed: bool,
    /// Why it stopped: an event that could not be read.
    unreadable: Option<String>,
}

/// Messages replies as chat completions.
pub struct ToChat;

impl Format for ToChat {
    type Stream = Stream;
    const TOO_LARGE: &'static [u8] = translate::TOO_LARGE;
    fn whole(&self, body: &[u8], out: &mut Vec<u8>) -> bool {
        message(body, out)
    }
    fn error(&self, status: u16, body: &[u8], out: &mut Vec<u8>) {
        error_body(status, body, out)
    }
}

/// Translates one Messages reply (JSON, stream or error) into a chat completion.
pub type ChatReply = Translator<ToChat>;

impl Translator<ToChat> {
    /// For a reply of `status`; `event_stream` when its type is `text/event-stream`.
    pub fn for_chat(status: u16, event_stream: bool, include_usage: bool) -> ChatReply {
        let stream = event_stream.then(|| Stream {
            include_usage,
            prefix: Vec::new(),
            head: Vec::new(),
            tools: SmallVec::new(),
            counts: Counts::default(),
            stopped: false,
            failed: false,
            unreadable: None,
        });
        Translator::new(ToChat, status, stream)
    }
}

impl StreamFormat for Stream {
    fn line(&mut self, line: &[u8], out: &mut Vec<u8>) {
        self.event_line(line, out)
    }
    fn unreadable(&self) -> Option<&str> {
        self.unreadable.as_deref()
    }
    fn end(&mut self, out: &mut Vec<u8>) {
        if !self.stopped && !self.failed {
            out.extend_from_slice(
                b"data: {\"error\":{\"message\":\"the provider ended the stream before message_stop: the answer is incomplete\",\"type\":\"provider_error\",\"param\":null,\"code\":\"stream_truncated\"}}\n\n",
            );
        }
    }
}

impl Stream {
    fn event_line(&mut self, line: &[u8], out: &mut Vec<u8>) {
        let Some(data) = data_of(line) else { return };
        if self.stopped || self.failed {
            return;
        }
        let Ok(ev) = Obj::document(data, "event") else {
            let why = translate::unreadable_event(data);
            translate::openai_unreadable_event(&why, out);
            self.unreadable = Some(why);
            self.failed = true;
            return;
        };
        let kind = ev.get("type").ok().flatten().unwrap_or(b"");
        match kind {
            b"\"message_start\"" => {
                let m = ev.obj("message").ok().flatten();
                let raw = |name| {
                    m.as_ref()
                        .and_then(|m| m.raw_str(name).ok().flatten())
                        .unwrap_or(b"\"\"")
                };
                self.start(raw("id"), raw("model"));
                if let Some(u) = m.as_ref().and_then(|m| m.obj("usage").ok().flatten()) {
                    self.counts.read(&u);
                }
                self.chunk(out, b"{\"role\":\"assistant\",\"content\":\"\"}", None);
            }
            b"\"content_block_start\"" => {
                let Some(b) = ev.obj("content_block").ok().flatten() else {
                    return;
                };
                match b.get("type").ok().flatten() {
                    Some(b"\"tool_use\"") => {
                        let index = block_index(&ev);
                        let k = self.tools.len() as u32;
                        self.tools.push((index, k));
                        let mut d = Vec::with_capacity(96);
                        d.extend_from_slice(b"{\"tool_calls\":[{\"index\":");
                        crate::http::push_decimal(&mut d, k as u64);
                        d.extend_from_slice(b",\"id\":");
                        translate::raw(&mut d, b.raw_str("id").ok().flatten().unwrap_or(b"\"\""));
                        d.extend_from_slice(b",\"type\":\"function\",\"function\":{\"name\":");
                        translate::raw(&mut d, b.raw_str("name").ok().flatten().unwrap_or(b"\"\""));
                        d.extend_from_slice(b",\"arguments\":\"\"}}]}");
                        self.chunk(out, &d, None);
                    }
                    Some(b"\"text\"") => {
                        if let Some(t) = b.raw_str("text").ok().flatten()
                            && t != b"\"\""
                        {
                            self.content(out, b"content", t);
                        }
                    }
                    _ => {}
                }
            }
            b"\"content_block_delta\"" => {
                let Some(d) = ev.obj("delta").ok().flatten() else {
                    return;
                };
                match d.get("type").ok().flatten() {
                    Some(b"\"text_delta\"") => {
                        if let Some(t) = d.raw_str("text").ok().flatten() {
                            self.content(out, b"content", t);
                        }
                    }
                    Some(b"\"thinking_delta\"") => {
                        if let Some(t) = d.raw_str("thinking").ok().flatten() {
                            self.content(out, b"reasoning_content", t);
                        }
                    }
                    Some(b"\"input_json_delta\"") => {
                        let index = block_index(&ev);
                        let Some(&(_, k)) = self.tools.iter().find(|(i, _)| *i == index) else {
                            return;
                        };
                        let Some(part) = d
                            .raw_str("partial_json")
                            .ok()
                            .flatten()
                            .filter(|p| *p != b"\"\"")
                        else {
                            return;
                        };
                        // In place: a fragment per event, many per call.
                        self.chunk_start(out);
                        out.extend_from_slice(b"{\"tool_calls\":[{\"index\":");
                        crate::http::push_decimal(out, u64::from(k));
                        out.extend_from_slice(b",\"function\":{\"arguments\":");
                        translate::raw(out, part);
                        out.extend_from_slice(b"}}]}");
                        translate::chunk_end(out, None);
                    }
                    _ => {}
                }
            }
            b"\"message_delta\"" => {
                if let Some(u) = ev.obj("usage").ok().flatten() {
                    self.counts.read(&u);
                }
                let stop = ev
                    .obj("delta")
                    .ok()
                    .flatten()
                    .and_then(|d| d.get("stop_reason").ok().flatten());
                if let Some(stop) = stop {
                    self.chunk(out, b"{}", Some(finish_reason(stop)));
                }
            }
            b"\"message_stop\"" => {
                self.stopped = true;
                if self.include_usage {
                    out.extend_from_slice(&self.head);
                    out.extend_from_slice(b"[],\"usage\":");
                    self.counts.write(out);
                    out.extend_from_slice(b"}\n\n");
                }
                out.extend_from_slice(b"data: [DONE]\n\n");
            }
            b"\"error\"" => {
                self.failed = true;
                out.extend_from_slice(b"data: ");
                error_body(200, data, out);
                out.extend_from_slice(b"\n\n");
            }
            _ => {}
        }
    }

    fn start(&mut self, id: &[u8], model: &[u8]) {
        self.head.clear();
        self.head.extend_from_slice(b"data: {\"id\":");
        self.head.extend_from_slice(id);
        self.head
            .extend_from_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
        crate::http::push_decimal(&mut self.head, translate::unix_now());
        self.head.extend_from_slice(b",\"model\":");
        self.head.extend_from_slice(model);
        self.head.extend_from_slice(b",\"choices\":");
        self.prefix.clear();
        self.prefix.extend_from_slice(&self.head);
        self.prefix.extend_from_slice(b"[{\"index\":0,\"delta\":");
    }

    /// One chunk with `delta` (a JSON object) and a finish reason.
    fn chunk(&mut self, out: &mut Vec<u8>, delta: &[u8], finish: Option<&str>) {
        self.chunk_start(out);
        out.extend_from_slice(delta);
        translate::chunk_end(out, finish);
    }

    /// A chunk up to its delta object (written next, in place).
    fn chunk_start(&mut self, out: &mut Vec<u8>) {
        if self.prefix.is_empty() {
            self.start(b"\"\"", b"\"\"");
        }
        out.extend_from_slice(&self.prefix);
    }

    /// A chunk whose delta is `{"<field>":<text>}` (text a raw string literal).
    fn content(&mut self, out: &mut Vec<u8>, field: &[u8], text: &[u8]) {
        self.chunk_start(out);
        out.extend_from_slice(b"{\"");
        out.extend_from_slice(field);
        out.extend_from_slice(b"\":");
        out.extend_from_slice(text);
        out.push(b'}');
        translate::chunk_end(out, None);
    }
}

fn block_index(ev: &Obj<'_>) -> u64 {
    ev.u64("index").unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::translate::ReplyTranslator;
    use simd_json::prelude::*;

    use crate::providers::translate::parse;

    fn run(status: u16, stream: bool, usage: bool, body: &[u8], piece: usize) -> Vec<u8> {
        let mut t = ChatReply::for_chat(status, stream, usage);
        let mut out = Vec::new();
        for p in body.chunks(piece) {
            t.feed(p, &mut out);
        }
        t.finish(true, &mut out);
        out
    }

    #[test]
    fn json_that_is_no_message_is_no_reply() {
        for body in [
            &b"{}"[..],
            b"{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"busy\"}}",
            b"{\"content\":[]}",
        ] {
            let mut out = Vec::new();
            assert!(
                !message(body, &mut out),
                "{}",
                String::from_utf8_lossy(body)
            );
            assert!(out.is_empty());
        }
    }

    #[test]
    fn a_message_becomes_a_chat_completion_with_tool_calls_and_usage() {
        let body = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-x","content":[{"type":"text","text":"Let me check."},{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{"city":"Paris","days":[1,2]}}],"stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":10,"output_tokens":5,"cache_read_input_tokens":4,"cache_creation_input_tokens":2}}"#;
        let v = parse(&run(200, false, false, body, 7));
        assert_eq!(v["id"], "msg_1");
        assert_eq!(v["object"], "chat.completion");
        let m = &v["choices"][0]["message"];
        assert_eq!(m["content"], "Let me check.");
        assert_eq!(m["tool_calls"][0]["id"], "toolu_1");
        let args = m["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap();
        assert_eq!(parse(args.as_bytes())["days"][1], 2);
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(v["usage"]["prompt_tokens"], 16);
        assert_eq!(v["usage"]["completion_tokens"], 5);
        assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 4);
    }

    #[test]
    fn an_error_keeps_the_providers_type_and_message() {
        let body =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        let v = parse(&run(529, false, false, body, 100));
        assert_eq!(v["error"]["message"], "Overloaded");
        assert_eq!(v["error"]["type"], "overloaded_error");
        let v = parse(&run(502, false, false, b"<html>bad gateway</html>", 100));
        assert!(v["error"]["message"].as_str().unwrap().contains("HTTP 502"));
    }

    const STREAM: &[u8] = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_2\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-x\",\"content\":[],\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\nevent: ping\ndata: {\"type\":\"ping\"}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi \\\"there\\\"\"}}\n\nevent: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_9\",\"name\":\"f\",\"input\":{}}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"a\\\":\"}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"1}\"}}\n\nevent: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":7}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

    /// The chunks of an OpenAI stream, parsed; `[DONE]` as a string.
    fn chunks(out: &[u8]) -> Vec<simd_json::OwnedValue> {
        out.split(|b| *b == b'\n')
            .filter_map(|l| l.strip_prefix(b"data: "))
            .map(|d| {
                if d == b"[DONE]" {
                    simd_json::OwnedValue::from("[DONE]")
                } else {
                    parse(d)
                }
            })
            .collect()
    }

    #[test]
    fn stream_events_become_chunks_however_the_bytes_are_cut() {
        for piece in [1, 5, 64, STREAM.len()] {
            let c = chunks(&run(200, true, true, STREAM, piece));
            assert_eq!(c[0]["choices"][0]["delta"]["role"], "assistant");
            assert_eq!(c[0]["id"], "msg_2");
            assert_eq!(c[1]["choices"][0]["delta"]["content"], "Hi \"there\"");
            let call = &c[2]["choices"][0]["delta"]["tool_calls"][0];
            assert_eq!(
                (call["index"].as_u64(), call["id"].as_str()),
                (Some(0), Some("toolu_9"))
            );
            let args: String = c[3..5]
                .iter()
                .map(|e| {
                    e["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
                .collect();
            assert_eq!(args, "{\"a\":1}");
            assert_eq!(c[5]["choices"][0]["finish_reason"], "tool_calls");
            assert_eq!(c[6]["usage"]["completion_tokens"], 7);
            assert_eq!(c[6]["usage"]["prompt_tokens"], 12);
            assert_eq!(c[7], "[DONE]");
            assert_eq!(c.len(), 8, "piece {piece}");
        }
        // Without include_usage there is no usage chunk.
        let c = chunks(&run(200, true, false, STREAM, 64));
        assert_eq!(c.len(), 7);
    }

    #[test]
    fn a_cut_stream_ends_with_an_error_and_no_done() {
        let cut = &STREAM[..STREAM.len() / 2];
        let out = run(200, true, false, cut, 64);
        let c = chunks(&out);
        assert_eq!(c.last().unwrap()["error"]["code"], "stream_truncated");
        assert!(!out.windows(6).any(|w| w == b"[DONE]"));
        // An error event from the provider passes as an OpenAI error.
        let err = b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
        let c = chunks(&run(200, true, false, err, 64));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0]["error"]["type"], "overloaded_error");
    }
}
