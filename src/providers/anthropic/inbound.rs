//! The other direction: an Anthropic Messages request (`POST /v1/messages`
//! from the anthropic SDK) sent to an OpenAI-compatible provider as a chat
//! completion, and the chat completion's reply (whole or streamed) written
//! back as a Messages reply, so the anthropic SDK can use any model.
//!
//! Values pass byte for byte where the formats agree; the system prompt
//! becomes a system message, `tool_result` blocks become tool messages
//! (ahead of the rest of their turn, as OpenAI requires), `tool_use` blocks
//! become tool calls, images become `image_url` parts (base64 as a data URL),
//! and the stream's chunks become Anthropic's events as they arrive.

use crate::providers::translate::{
    self, Format, Obj, Result, StreamFormat, TranslateError, Translator, data_of,
};
use std::ops::Range;

/// Writes the chat completion request for the Messages request `body`.
/// `usage`: ask for stream usage (the provider accepts `stream_options`);
/// `completion_cap`: write the cap as `max_completion_tokens` (OpenAI's own
/// API, whose reasoning models refuse `max_tokens`). Returns whether it streams.
pub fn chat_request(
    body: &[u8],
    model: &str,
    usage: bool,
    completion_cap: bool,
    out: &mut Vec<u8>,
) -> Result<bool> {
    if !translate::is_valid_json(body) {
        return Err(TranslateError::new("request body is not valid JSON"));
    }
    let top = Obj::document(body, "request body")?;
    let doc = top.doc();
    let stream = top.get("stream")? == Some(b"true");
    out.clear();
    out.reserve(body.len() + 128);
    out.extend_from_slice(b"{\"model\":");
    translate::string(out, model);
    out.extend_from_slice(b",\"messages\":[");
    let mut first = true;
    let mut sep = |out: &mut Vec<u8>| {
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
    };
    match top.range("system")? {
        Some(r) if doc[r.start] == b'"' => {
            sep(out);
            out.extend_from_slice(b"{\"role\":\"system\",\"content\":");
            translate::raw(out, &doc[r]);
            out.push(b'}');
        }
        Some(r) => {
            sep(out);
            out.extend_from_slice(b"{\"role\":\"system\",\"content\":[");
            text_parts(doc, r, "system", out)?;
            out.extend_from_slice(b"]}");
        }
        None => {}
    }
    for (i, r) in top.array("messages")?.iter().enumerate() {
        let at = format!("messages[{i}]");
        let m = Obj::read(doc, r.clone(), &at)?;
        let role = m
            .str("role")?
            .ok_or_else(|| TranslateError::new(format!("`{at}.role` is required")))?;
        let content = m
            .range("content")?
            .ok_or_else(|| TranslateError::new(format!("`{at}.content` is required")))?;
        match &*role {
            "user" => user(doc, content, &at, out, &mut sep)?,
            "assistant" => {
                sep(out);
                assistant(doc, content, &at, out)?;
            }
            other => {
                return Err(TranslateError::new(format!(
                    "`{at}.role` must be user or assistant, not `{other}`"
                )));
            }
        }
    }
    out.push(b']');
    if let Some(n) = top.get("max_tokens")? {
        out.extend_from_slice(if completion_cap {
            b",\"max_completion_tokens\":"
        } else {
            b",\"max_tokens\":"
        });
        translate::raw(out, n);
    }
    for name in ["temperature", "top_p"] {
        if let Some(v) = top.get(name)? {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
            translate::raw(out, v);
        }
    }
    if let Some(s) = top.get("stop_sequences")? {
        out.extend_from_slice(b",\"stop\":");
        translate::raw(out, s);
    }
    if stream {
        out.extend_from_slice(b",\"stream\":true");
        if usage {
            out.extend_from_slice(b",\"stream_options\":{\"include_usage\":true}");
        }
    }
    tools(&top, out)?;
    if let Some(user) = top
        .obj("metadata")?
        .map(|m| m.raw_str("user_id"))
        .transpose()?
        .flatten()
    {
        out.extend_from_slice(b",\"user\":");
        translate::raw(out, user);
    }
    out.push(b'}');
    Ok(stream)
}

/// Text blocks as OpenAI text parts (comma-separated).
fn text_parts(doc: &[u8], r: Range<usize>, at: &str, out: &mut Vec<u8>) -> Result<()> {
    for (j, b) in translate::elements(doc, r, at)?.iter().enumerate() {
        let block = Obj::read(doc, b.clone(), at)?;
        let text = block
            .raw_str("text")?
            .ok_or_else(|| TranslateError::new(format!("`{at}[{j}]` must be a text block")))?;
        if j > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"type\":\"text\",\"text\":");
        translate::raw(out, text);
        out.push(b'}');
    }
    Ok(())
}

/// A user turn: its tool results as tool messages first, then the rest as
/// one user message.
fn user(
    doc: &[u8],
    content: Range<usize>,
    at: &str,
    out: &mut Vec<u8>,
    sep: &mut dyn FnMut(&mut Vec<u8>),
) -> Result<()> {
    if doc[content.start] == b'"' {
        sep(out);
        out.extend_from_slice(b"{\"role\":\"user\",\"content\":");
        translate::raw(out, &doc[content]);
        out.push(b'}');
        return Ok(());
    }
    let mut parts = Vec::new();
    for (j, b) in translate::elements(doc, content, at)?.iter().enumerate() {
        let bat = format!("{at}.content[{j}]");
        let block = Obj::read(doc, b.clone(), &bat)?;
        match block.str("type")?.as_deref() {
            Some("tool_result") => {
                let id = block.raw_str("tool_use_id")?.ok_or_else(|| {
                    TranslateError::new(format!("`{bat}.tool_use_id` is required"))
                })?;
                sep(out);
                out.extend_from_slice(b"{\"role\":\"tool\",\"tool_call_id\":");
                translate::raw(out, id);
                out.extend_from_slice(b",\"content\":");
                match block.range("content")? {
                    Some(c) if doc[c.start] == b'"' => translate::raw(out, &doc[c]),
                    Some(c) => {
                        out.push(b'[');
                        text_parts(doc, c, &format!("{bat}.content"), out)?;
                        out.push(b']');
                    }
                    None => out.extend_from_slice(b"\"\""),
                }
                out.push(b'}');
            }
            Some("text") => {
                if !parts.is_empty() {
                    parts.push(b',');
                }
                parts.extend_from_slice(b"{\"type\":\"text\",\"text\":");
                translate::raw(&mut parts, block.raw_str("text")?.unwrap_or(b"\"\""));
                parts.push(b'}');
            }
            Some("image") => {
                if !parts.is_empty() {
                    parts.push(b',');
                }
                image(&block, &bat, &mut parts)?;
            }
            other => {
                return Err(TranslateError::new(format!(
                    "`{bat}.type` `{}` has no OpenAI counterpart; use text, image or tool_result",
                    other.unwrap_or("")
                )));
            }
        }
    }
    if !parts.is_empty() {
        sep(out);
        out.extend_from_slice(b"{\"role\":\"user\",\"content\":[");
        out.extend_from_slice(&parts);
        out.extend_from_slice(b"]}");
    }
    Ok(())
}

/// An `image` block as an `image_url` part.
fn image(block: &Obj<'_>, at: &str, out: &mut Vec<u8>) -> Result<()> {
    let source = block
        .obj("source")?
        .ok_or_else(|| TranslateError::new(format!("`{at}.source` is required")))?;
    out.extend_from_slice(b"{\"type\":\"image_url\",\"image_url\":{\"url\":");
    match source.str("type")?.as_deref() {
        Some("base64") => {
            let media = source.str("media_type")?.unwrap_or_default();
            let data = source.str("data")?.unwrap_or_default();
            translate::string(out, &format!("data:{media};base64,{data}"));
        }
        Some("url") => {
            let url = source
                .raw_str("url")?
                .ok_or_else(|| TranslateError::new(format!("`{at}.source.url` is required")))?;
            translate::raw(out, url);
        }
        _ => {
            return Err(TranslateError::new(format!(
                "`{at}.source.type` must be base64 or url"
            )));
        }
    }
    out.extend_from_slice(b"}}");
    Ok(())
}

/// An assistant turn: its text as content, its `tool_use` blocks as tool calls.
fn assistant(doc: &[u8], content: Range<usize>, at: &str, out: &mut Vec<u8>) -> Result<()> {
    out.extend_from_slice(b"{\"role\":\"assistant\",\"content\":");
    if doc[content.start] == b'"' {
        translate::raw(out, &doc[content]);
        out.push(b'}');
        return Ok(());
    }
    let mut text = String::new();
    let mut calls = Vec::new();
    for (j, b) in translate::elements(doc, content, at)?.iter().enumerate() {
        let bat = format!("{at}.content[{j}]");
        let block = Obj::read(doc, b.clone(), &bat)?;
        match block.str("type")?.as_deref() {
            Some("text") => text.push_str(&block.str("text")?.unwrap_or_default()),
            Some("tool_use") => {
                if !calls.is_empty() {
                    calls.push(b',');
                }
                calls.extend_from_slice(b"{\"id\":");
                translate::raw(&mut calls, block.raw_str("id")?.unwrap_or(b"\"\""));
                calls.extend_from_slice(b",\"type\":\"function\",\"function\":{\"name\":");
                translate::raw(&mut calls, block.raw_str("name")?.unwrap_or(b"\"\""));
                calls.extend_from_slice(b",\"arguments\":");
                translate::stringified(&mut calls, block.get("input")?.unwrap_or(b"{}"));
                calls.extend_from_slice(b"}}");
            }
            // Thinking has no place in an OpenAI request.
            Some("thinking" | "redacted_thinking") => {}
            other => {
                return Err(TranslateError::new(format!(
                    "`{bat}.type` `{}` has no OpenAI counterpart in an assistant turn",
                    other.unwrap_or("")
                )));
            }
        }
    }
    if text.is_empty() && !calls.is_empty() {
        out.extend_from_slice(b"null");
    } else {
        translate::string(out, &text);
    }
    if !calls.is_empty() {
        out.extend_from_slice(b",\"tool_calls\":[");
        out.extend_from_slice(&calls);
        out.push(b']');
    }
    out.push(b'}');
    Ok(())
}

fn tools(top: &Obj<'_>, out: &mut Vec<u8>) -> Result<()> {
    let doc = top.doc();
    let list = top.array("tools")?;
    if !list.is_empty() {
        out.extend_from_slice(b",\"tools\":[");
        for (i, r) in list.iter().enumerate() {
            let at = format!("tools[{i}]");
            let t = Obj::read(doc, r.clone(), &at)?;
            if t.str("type")?.is_some_and(|k| k != "custom") {
                return Err(TranslateError::new(format!(
                    "`{at}` is an Anthropic server tool, which an OpenAI-compatible provider cannot run"
                )));
            }
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"type\":\"function\",\"function\":{\"name\":");
            translate::raw(
                out,
                t.raw_str("name")?
                    .ok_or_else(|| TranslateError::new(format!("`{at}.name` is required")))?,
            );
            if let Some(d) = t.raw_str("description")? {
                out.extend_from_slice(b",\"description\":");
                translate::raw(out, d);
            }
            out.extend_from_slice(b",\"parameters\":");
            translate::raw(
                out,
                t.get("input_schema")?.unwrap_or(b"{\"type\":\"object\"}"),
            );
            out.extend_from_slice(b"}}");
        }
        out.push(b']');
    }
    if let Some(c) = top.obj("tool_choice")? {
        out.extend_from_slice(b",\"tool_choice\":");
        match c.str("type")?.as_deref() {
            Some("auto") => out.extend_from_slice(b"\"auto\""),
            Some("any") => out.extend_from_slice(b"\"required\""),
            Some("none") => out.extend_from_slice(b"\"none\""),
            Some("tool") => {
                out.extend_from_slice(b"{\"type\":\"function\",\"function\":{\"name\":");
                translate::raw(
                    out,
                    c.raw_str("name")?
                        .ok_or_else(|| TranslateError::new("`tool_choice.name` is required"))?,
                );
                out.extend_from_slice(b"}}");
            }
            _ => {
                return Err(TranslateError::new(
                    "`tool_choice.type` must be auto, any, tool or none",
                ));
            }
        }
        if c.get("disable_parallel_tool_use")? == Some(b"true") && !list.is_empty() {
            out.extend_from_slice(b",\"parallel_tool_calls\":false");
        }
    }
    Ok(())
}

/// OpenAI finish reasons as Anthropic stop reasons.
fn stop_reason(finish: &[u8]) -> &'static str {
    match finish {
        b"\"length\"" => "max_tokens",
        b"\"tool_calls\"" | b"\"function_call\"" => "tool_use",
        b"\"content_filter\"" => "refusal",
        _ => "end_turn",
    }
}

/// The Anthropic error type for an HTTP status.
fn error_type(status: u16) -> &'static str {
    match status {
        400 | 413 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

/// Writes an Anthropic error body for an OpenAI one (or anything else).
pub fn error_body(status: u16, body: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"type\":\"error\",\"error\":{\"type\":\"");
    out.extend_from_slice(error_type(status).as_bytes());
    out.extend_from_slice(b"\",\"message\":");
    let message = Obj::document(body, "error")
        .ok()
        .and_then(|t| t.obj("error").ok()?)
        .and_then(|e| e.raw_str("message").ok()?);
    match message {
        Some(m) => translate::raw(out, m),
        None => translate::string(out, &translate::answered(status, body)),
    }
    out.extend_from_slice(b"}}");
}

/// Token counts from an OpenAI `usage` object.
#[derive(Default, Clone, Copy)]
struct Counts {
    prompt: u64,
    completion: u64,
    cached: u64,
}

impl Counts {
    fn read(usage: &Obj<'_>) -> Counts {
        let n = |o: &Obj<'_>, name| o.u64(name).unwrap_or(0);
        let cached = usage
            .obj("prompt_tokens_details")
            .ok()
            .flatten()
            .map_or(0, |d| n(&d, "cached_tokens"));
        Counts {
            prompt: n(usage, "prompt_tokens"),
            completion: n(usage, "completion_tokens"),
            cached,
        }
    }

    /// As Anthropic's `usage` (input excludes what was read from cache).
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(
            format!(
                "{{\"input_tokens\":{},\"output_tokens\":{},\"cache_read_input_tokens\":{},\"cache_creation_input_tokens\":0}}",
                self.prompt.saturating_sub(self.cached),
                self.completion,
                self.cached
            )
            .as_bytes(),
        );
    }
}

/// Writes the Messages reply for a whole chat completion; `false` when
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
    let doc = top.doc();
    let choice = top.array("choices").ok()?.first().cloned()?;
    let choice = Obj::read(doc, choice, "choice").ok()?;
    let m = choice.obj("message").ok()??;
    out.extend_from_slice(b"{\"id\":");
    translate::raw(out, top.raw_str("id").ok()?.unwrap_or(b"\"\""));
    out.extend_from_slice(b",\"type\":\"message\",\"role\":\"assistant\",\"model\":");
    translate::raw(out, top.raw_str("model").ok()?.unwrap_or(b"\"\""));
    out.extend_from_slice(b",\"content\":[");
    let mut first = true;
    if let Some(text) = m.raw_str("content").ok()?
        && text != b"\"\""
    {
        first = false;
        out.extend_from_slice(b"{\"type\":\"text\",\"text\":");
        translate::raw(out, text);
        out.push(b'}');
    }
    for call in m.array("tool_calls").ok()? {
        let c = Obj::read(doc, call, "tool_call").ok()?;
        let f = c.obj("function").ok()??;
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"type\":\"tool_use\",\"id\":");
        translate::raw(out, c.raw_str("id").ok()?.unwrap_or(b"\"\""));
        out.extend_from_slice(b",\"name\":");
        translate::raw(out, f.raw_str("name").ok()??);
        out.extend_from_slice(b",\"input\":");
        input(&f.str("arguments").ok()?.unwrap_or_default(), out);
        out.push(b'}');
    }
    out.extend_from_slice(b"],\"stop_reason\":\"");
    let finish = choice.get("finish_reason").ok()?.unwrap_or(b"\"stop\"");
    out.extend_from_slice(stop_reason(finish).as_bytes());
    out.extend_from_slice(b"\",\"stop_sequence\":null,\"usage\":");
    let counts = top
        .obj("usage")
        .ok()?
        .map(|u| Counts::read(&u))
        .unwrap_or_default();
    counts.write(out);
    out.push(b'}');
    Some(())
}

/// A tool call's `arguments` (JSON text) as a `tool_use` input object.
fn input(args: &str, out: &mut Vec<u8>) {
    let a = args.trim();
    if a.starts_with('{') && translate::is_valid_json(a.as_bytes()) {
        out.extend_from_slice(a.as_bytes());
    } else {
        out.extend_from_slice(b"{}");
    }
}

/// What kind of content block is open in the stream.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Open {
    None,
    Text,
    /// A tool call, by its OpenAI index.
    Tool(u64),
}

/// The state of a translated stream.
pub struct Stream {
    started: bool,
    /// Content blocks opened so far (the next block's index).
    blocks: u64,
    open: Open,
    stop: &'static str,
    counts: Counts,
    done: bool,
    failed: bool,
    /// Why it stopped: an event that could not be read.
    unreadable: Option<String>,
    /// The first tool call, streamed as it comes (its OpenAI index).
    first_tool: Option<u64>,
    /// The tool calls after the first, held whole until the stream ends:
    /// OpenAI may interleave parallel calls' deltas (each names its
    /// `index`), and Anthropic's blocks follow one another.
    later_tools: Vec<HeldCall>,
}

/// A `tool_use` content block opening, its input to come in deltas: the
/// call's id and name (raw string literals; empty when the provider sent
/// none).
fn tool_use_block(id: Option<&[u8]>, name: Option<&[u8]>) -> Vec<u8> {
    let mut b = Vec::with_capacity(96);
    b.extend_from_slice(b"{\"type\":\"tool_use\",\"id\":");
    translate::raw(&mut b, id.unwrap_or(b"\"\""));
    b.extend_from_slice(b",\"name\":");
    translate::raw(&mut b, name.unwrap_or(b"\"\""));
    b.extend_from_slice(b",\"input\":{}}");
    b
}

/// `raw`, unless it is empty (nothing was sent).
fn known(raw: &[u8]) -> Option<&[u8]> {
    (!raw.is_empty()).then_some(raw)
}

/// A tool call held until the stream ends: its id and name (raw string
/// literals) and its arguments' text so far.
struct HeldCall {
    index: u64,
    id: Vec<u8>,
    name: Vec<u8>,
    arguments: String,
}

/// [`translate::TOO_LARGE`] in Anthropic's error shape.
const ANTHROPIC_TOO_LARGE: &[u8] = b"{\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"the provider's reply is larger than aigw translates (64 MiB)\"}}";

/// Chat completion replies as Messages replies.
pub struct ToMessages;

impl Format for ToMessages {
    type Stream = Stream;
    const TOO_LARGE: &'static [u8] = ANTHROPIC_TOO_LARGE;
    fn whole(&self, body: &[u8], out: &mut Vec<u8>) -> bool {
        message(body, out)
    }
    fn error(&self, status: u16, body: &[u8], out: &mut Vec<u8>) {
        error_body(status, body, out)
    }
}

/// Translates one chat completion reply (JSON, stream or error) into a Messages reply.
pub type MessagesReply = Translator<ToMessages>;

impl Translator<ToMessages> {
    pub fn for_messages(status: u16, event_stream: bool) -> MessagesReply {
        let stream = event_stream.then_some(Stream {
            started: false,
            blocks: 0,
            open: Open::None,
            stop: "end_turn",
            counts: Counts::default(),
            done: false,
            failed: false,
            unreadable: None,
            first_tool: None,
            later_tools: Vec::new(),
        });
        Translator::new(ToMessages, status, stream)
    }
}

impl StreamFormat for Stream {
    fn line(&mut self, line: &[u8], out: &mut Vec<u8>) {
        self.chunk_line(line, out)
    }
    fn unreadable(&self) -> Option<&str> {
        self.unreadable.as_deref()
    }
    fn end(&mut self, out: &mut Vec<u8>) {
        if !self.done && !self.failed {
            event(
                out,
                "error",
                b"{\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"the provider ended the stream before [DONE]: the answer is incomplete\"}}",
            );
        }
    }
}

fn event(out: &mut Vec<u8>, name: &str, data: &[u8]) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
}

impl Stream {
    fn chunk_line(&mut self, line: &[u8], out: &mut Vec<u8>) {
        let Some(data) = data_of(line) else { return };
        if self.done || self.failed {
            return;
        }
        if data == b"[DONE]" {
            self.end(out);
            return;
        }
        let Ok(chunk) = Obj::document(data, "chunk") else {
            let why = translate::unreadable_event(data);
            let mut e =
                b"{\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":".to_vec();
            translate::string(&mut e, &format!("the provider sent {why}"));
            e.extend_from_slice(b"}}");
            event(out, "error", &e);
            self.unreadable = Some(why);
            self.failed = true;
            return;
        };
        if chunk.obj("error").ok().flatten().is_some() {
            self.failed = true;
            let mut e = Vec::new();
            error_body(500, data, &mut e);
            event(out, "error", &e);
            return;
        }
        if !self.started {
            self.started = true;
            let mut m = Vec::with_capacity(256);
            m.extend_from_slice(b"{\"type\":\"message_start\",\"message\":{\"id\":");
            translate::raw(
                &mut m,
                chunk.raw_str("id").ok().flatten().unwrap_or(b"\"\""),
            );
            m.extend_from_slice(b",\"type\":\"message\",\"role\":\"assistant\",\"model\":");
            translate::raw(
                &mut m,
                chunk.raw_str("model").ok().flatten().unwrap_or(b"\"\""),
            );
            m.extend_from_slice(b",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":0,\"output_tokens\":0}}}");
            event(out, "message_start", &m);
        }
        if let Some(u) = chunk.obj("usage").ok().flatten() {
            self.counts = Counts::read(&u);
        }
        let Some(choice) = chunk
            .array("choices")
            .ok()
            .and_then(|c| c.first().cloned())
            .and_then(|r| Obj::read(data, r, "choice").ok())
        else {
            return;
        };
        if let Some(delta) = choice.obj("delta").ok().flatten() {
            if let Some(text) = delta.raw_str("content").ok().flatten()
                && text != b"\"\""
            {
                if self.open != Open::Text {
                    self.close(out);
                    self.open(out, Open::Text, b"{\"type\":\"text\",\"text\":\"\"}");
                }
                self.delta(out, b"{\"type\":\"text_delta\",\"text\":", text);
            }
            for call in delta.array("tool_calls").unwrap_or_default() {
                let Ok(c) = Obj::read(data, call, "tool_call") else {
                    continue;
                };
                let index = c.u64("index").unwrap_or(0);
                let f = c.obj("function").ok().flatten();
                if self.first_tool.is_some_and(|first| first != index) {
                    self.hold_call(index, &c, f.as_ref());
                    continue;
                }
                self.first_tool = Some(index);
                if self.open != Open::Tool(index) {
                    self.close(out);
                    let name = f.as_ref().and_then(|f| f.raw_str("name").ok().flatten());
                    let b = tool_use_block(c.raw_str("id").ok().flatten(), name);
                    self.open(out, Open::Tool(index), &b);
                }
                if let Some(args) = f.and_then(|f| f.raw_str("arguments").ok().flatten())
                    && args != b"\"\""
                {
                    self.delta(
                        out,
                        b"{\"type\":\"input_json_delta\",\"partial_json\":",
                        args,
                    );
                }
            }
        }
        if let Some(f) = choice.get("finish_reason").ok().flatten() {
            self.stop = stop_reason(f);
        }
    }

    /// A delta of a tool call after the first: kept, to be written whole
    /// when the stream ends ([`Stream::write_held_calls`]).
    fn hold_call(&mut self, index: u64, call: &Obj<'_>, f: Option<&Obj<'_>>) {
        let at = match self.later_tools.iter().position(|h| h.index == index) {
            Some(at) => at,
            None => {
                self.later_tools.push(HeldCall {
                    index,
                    id: Vec::new(),
                    name: Vec::new(),
                    arguments: String::new(),
                });
                self.later_tools.len() - 1
            }
        };
        let held = &mut self.later_tools[at];
        if let Some(id) = call.raw_str("id").ok().flatten()
            && held.id.is_empty()
        {
            held.id = id.to_vec();
        }
        if let Some(name) = f.and_then(|f| f.raw_str("name").ok().flatten())
            && held.name.is_empty()
        {
            held.name = name.to_vec();
        }
        if let Some(args) = f
            .and_then(|f| f.raw_str("arguments").ok().flatten())
            .and_then(crate::json::string_value)
        {
            held.arguments.push_str(&args);
        }
    }

    /// The held tool calls, each a whole block, in the order they began.
    fn write_held_calls(&mut self, out: &mut Vec<u8>) {
        for held in std::mem::take(&mut self.later_tools) {
            self.close(out);
            let b = tool_use_block(known(&held.id), known(&held.name));
            self.open(out, Open::Tool(held.index), &b);
            if !held.arguments.is_empty() {
                let mut args = Vec::with_capacity(held.arguments.len() + 8);
                translate::string(&mut args, &held.arguments);
                self.delta(
                    out,
                    b"{\"type\":\"input_json_delta\",\"partial_json\":",
                    &args,
                );
            }
        }
    }

    /// A `content_block_delta` event of the open block, written in place:
    /// `{"type":"content_block_delta","index":N,"delta":<kind><value>}}`,
    /// `kind` opening the delta object up to its value (a raw string literal).
    fn delta(&self, out: &mut Vec<u8>, kind: &[u8], value: &[u8]) {
        out.extend_from_slice(
            b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":",
        );
        crate::http::push_decimal(out, self.blocks - 1);
        out.extend_from_slice(b",\"delta\":");
        out.extend_from_slice(kind);
        out.extend_from_slice(value);
        out.extend_from_slice(b"}}\n\n");
    }

    fn open(&mut self, out: &mut Vec<u8>, kind: Open, block: &[u8]) {
        let mut e = Vec::with_capacity(block.len() + 64);
        e.extend_from_slice(b"{\"type\":\"content_block_start\",\"index\":");
        crate::http::push_decimal(&mut e, self.blocks);
        e.extend_from_slice(b",\"content_block\":");
        e.extend_from_slice(block);
        e.push(b'}');
        event(out, "content_block_start", &e);
        self.blocks += 1;
        self.open = kind;
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if self.open == Open::None {
            return;
        }
        let e = format!(
            "{{\"type\":\"content_block_stop\",\"index\":{}}}",
            self.blocks - 1
        );
        event(out, "content_block_stop", e.as_bytes());
        self.open = Open::None;
    }

    fn end(&mut self, out: &mut Vec<u8>) {
        self.done = true;
        if !self.started {
            self.started = true;
            event(
                out,
                "message_start",
                b"{\"type\":\"message_start\",\"message\":{\"id\":\"\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":0,\"output_tokens\":0}}}",
            );
        }
        self.write_held_calls(out);
        self.close(out);
        let mut d = Vec::with_capacity(192);
        d.extend_from_slice(b"{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"");
        d.extend_from_slice(self.stop.as_bytes());
        d.extend_from_slice(b"\",\"stop_sequence\":null},\"usage\":");
        self.counts.write(&mut d);
        d.push(b'}');
        event(out, "message_delta", &d);
        event(out, "message_stop", b"{\"type\":\"message_stop\"}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::translate::ReplyTranslator;
    use simd_json::prelude::*;

    use crate::providers::translate::parse;

    #[test]
    fn a_messages_request_becomes_a_chat_request() {
        let body = br#"{"model":"m","max_tokens":100,"system":"be brief","stream":true,"messages":[{"role":"user","content":"weather?"},{"role":"assistant","content":[{"type":"text","text":"checking"},{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{"city":"Paris"}}]},{"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":"sunny"},{"type":"text","text":"thanks"},{"type":"image","source":{"type":"base64","media_type":"image/png","data":"AAA="}}]}],"tools":[{"name":"get_weather","input_schema":{"type":"object"}}],"tool_choice":{"type":"any","disable_parallel_tool_use":true},"stop_sequences":["X"],"metadata":{"user_id":"u"}}"#;
        let mut out = Vec::new();
        assert!(chat_request(body, "gpt-x", true, false, &mut out).unwrap());
        let v = parse(&out);
        assert_eq!(v["model"], "gpt-x");
        let m = v["messages"].as_array().unwrap();
        assert_eq!(m[0]["role"], "system");
        assert_eq!(m[2]["tool_calls"][0]["id"], "toolu_1");
        let args = m[2]["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap();
        assert_eq!(parse(args.as_bytes())["city"], "Paris");
        assert_eq!(m[3]["role"], "tool");
        assert_eq!(m[3]["tool_call_id"], "toolu_1");
        assert_eq!(m[4]["role"], "user");
        assert_eq!(
            m[4]["content"][1]["image_url"]["url"],
            "data:image/png;base64,AAA="
        );
        assert_eq!(v["tools"][0]["function"]["name"], "get_weather");
        assert_eq!(v["tool_choice"], "required");
        assert_eq!(v["parallel_tool_calls"], false);
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["stop"][0], "X");
        assert_eq!(v["user"], "u");
        assert_eq!(v["max_tokens"], 100);
    }

    #[test]
    fn a_chat_completion_becomes_a_message() {
        let body = br#"{"id":"c1","object":"chat.completion","model":"gpt-x","choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":10,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":4}}}"#;
        let mut t = MessagesReply::for_messages(200, false);
        let mut out = Vec::new();
        t.feed(body, &mut out);
        t.finish(true, &mut out);
        let v = parse(&out);
        assert_eq!(v["type"], "message");
        assert_eq!(v["content"][0]["type"], "tool_use");
        assert_eq!(v["content"][0]["input"]["a"], 1);
        assert_eq!(v["stop_reason"], "tool_use");
        assert_eq!(v["usage"]["input_tokens"], 6);
        assert_eq!(v["usage"]["cache_read_input_tokens"], 4);
        let mut e = MessagesReply::for_messages(429, false);
        let mut out = Vec::new();
        e.feed(
            br#"{"error":{"message":"slow down","type":"requests"}}"#,
            &mut out,
        );
        e.finish(true, &mut out);
        let v = parse(&out);
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert_eq!(v["error"]["message"], "slow down");
    }

    /// The events of an Anthropic stream: (name, data).
    #[test]
    fn interleaved_parallel_tool_calls_become_whole_blocks() {
        let chunk = |calls: &str| {
            format!(
                "data: {{\"id\":\"c\",\"model\":\"g\",\"choices\":[{{\"index\":0,\"delta\":{{\"tool_calls\":[{calls}]}}}}]}}\n\n"
            )
        };
        let stream = [
            chunk(r#"{"index":0,"id":"call_A","type":"function","function":{"name":"w","arguments":""}}"#),
            chunk(r#"{"index":1,"id":"call_B","type":"function","function":{"name":"w","arguments":"{\"c\":"}}"#),
            chunk(r#"{"index":0,"function":{"arguments":"{\"c\":\"Paris\"}"}}"#),
            chunk(r#"{"index":1,"function":{"arguments":"\"Rome\"}"}}"#),
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\ndata: [DONE]\n\n".to_string(),
        ]
        .concat();
        for piece in [7, stream.len()] {
            let mut t = MessagesReply::for_messages(200, true);
            let mut out = Vec::new();
            for p in stream.as_bytes().chunks(piece) {
                t.feed(p, &mut out);
            }
            t.finish(true, &mut out);
            let e = events(&out);
            // Each call is one block with its own id, name and arguments.
            let mut calls: Vec<(String, String, String)> = Vec::new();
            for (name, v) in &e {
                match name.as_str() {
                    "content_block_start" => calls.push((
                        v["content_block"]["id"].as_str().unwrap().to_string(),
                        v["content_block"]["name"].as_str().unwrap().to_string(),
                        String::new(),
                    )),
                    "content_block_delta" => {
                        assert_eq!(v["index"].as_u64(), Some(calls.len() as u64 - 1));
                        calls.last_mut().unwrap().2 += v["delta"]["partial_json"].as_str().unwrap();
                    }
                    _ => {}
                }
            }
            let want = |id: &str, args: &str| (id.to_string(), "w".to_string(), args.to_string());
            assert_eq!(
                calls,
                [
                    want("call_A", r#"{"c":"Paris"}"#),
                    want("call_B", r#"{"c":"Rome"}"#)
                ],
                "{e:?}"
            );
            assert_eq!(e.last().unwrap().0, "message_stop");
        }
    }

    fn events(out: &[u8]) -> Vec<(String, simd_json::OwnedValue)> {
        String::from_utf8_lossy(out)
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let mut lines = e.lines();
                let name = lines
                    .next()
                    .unwrap()
                    .trim_start_matches("event: ")
                    .to_string();
                let data = lines.next().unwrap().trim_start_matches("data: ");
                (name, parse(data.as_bytes()))
            })
            .collect()
    }

    #[test]
    fn chunks_become_events_with_blocks_opened_and_closed() {
        let stream = b"data: {\"id\":\"c\",\"model\":\"g\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\ndata: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"\"}}]}}]}\n\ndata: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"a\\\":\"}}]}}]}\n\ndata: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"1}\"}}]}}]}\n\ndata: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\ndata: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n";
        for piece in [1, 7, stream.len()] {
            let mut t = MessagesReply::for_messages(200, true);
            let mut out = Vec::new();
            for p in stream.chunks(piece) {
                t.feed(p, &mut out);
            }
            t.finish(true, &mut out);
            let e = events(&out);
            let names: Vec<&str> = e.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(
                names,
                [
                    "message_start",
                    "content_block_start",
                    "content_block_delta",
                    "content_block_stop",
                    "content_block_start",
                    "content_block_delta",
                    "content_block_delta",
                    "content_block_stop",
                    "message_delta",
                    "message_stop"
                ]
            );
            assert_eq!(e[2].1["delta"]["text"], "Hi");
            assert_eq!(e[4].1["content_block"]["id"], "call_1");
            assert_eq!(e[4].1["index"], 1);
            let args: String = [&e[5].1, &e[6].1]
                .iter()
                .map(|d| d["delta"]["partial_json"].as_str().unwrap().to_string())
                .collect();
            assert_eq!(args, "{\"a\":1}");
            assert_eq!(e[8].1["delta"]["stop_reason"], "tool_use");
            assert_eq!(e[8].1["usage"]["output_tokens"], 2);
        }
        // Cut before [DONE]: an error event, no message_stop.
        let mut t = MessagesReply::for_messages(200, true);
        let mut out = Vec::new();
        t.feed(&stream[..200], &mut out);
        t.finish(true, &mut out);
        let e = events(&out);
        assert_eq!(e.last().unwrap().0, "error");
        assert!(t.unreadable().is_none());
        // A chunk that is not JSON: an error event there, nothing after it.
        let mut t = MessagesReply::for_messages(200, true);
        let mut out = Vec::new();
        t.feed(
            b"data: {\"choices\":[{\"delta\n\ndata: [DONE]\n\n",
            &mut out,
        );
        t.finish(true, &mut out);
        let e = events(&out);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].0, "error");
        assert!(
            e[0].1["error"]["message"]
                .as_str()
                .unwrap()
                .contains("not JSON")
        );
        assert!(t.unreadable().unwrap().contains("not JSON"));
    }
}
