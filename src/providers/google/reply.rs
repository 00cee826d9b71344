//! A Gemini `GenerateContentResponse` (whole, or each event of an
//! `alt=sse` stream), written as an OpenAI chat completion or chunks: text
//! parts as content, `functionCall` parts as tool calls (Gemini sends each
//! call whole), the finish reason, and `usageMetadata` as usage. Gemini's
//! stream has no end marker: it ends with the body, after an event with a
//! finish reason; a body that ends before one was cut.

use crate::providers::translate::{self, Format, Obj, StreamFormat, Translator, data_of};

fn finish_reason(reason: &[u8], calls: bool) -> &'static str {
    match reason {
        b"\"MAX_TOKENS\"" => "length",
        b"\"SAFETY\""
        | b"\"RECITATION\""
        | b"\"BLOCKLIST\""
        | b"\"PROHIBITED_CONTENT\""
        | b"\"SPII\""
        | b"\"IMAGE_SAFETY\"" => "content_filter",
        _ if calls => "tool_calls",
        _ => "stop",
    }
}

#[derive(Default, Clone, Copy)]
struct Counts {
    prompt: u64,
    output: u64,
    cached: u64,
}

impl Counts {
    fn read(u: &Obj<'_>) -> Counts {
        let n = |name| u.u64(name).unwrap_or(0);
        Counts {
            prompt: n("promptTokenCount"),
            // Thinking tokens are billed as output.
            output: n("candidatesTokenCount").saturating_add(n("thoughtsTokenCount")),
            cached: n("cachedContentTokenCount"),
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        translate::openai_usage(out, self.prompt, self.output, self.cached, None);
    }
}

/// Writes the OpenAI error object for a Google error body
/// (`{"error":{"code","message","status"}}`), or anything else.
pub fn error_body(status: u16, body: &[u8], out: &mut Vec<u8>) {
    let parsed = Obj::document(body, "error")
        .ok()
        .and_then(|t| t.obj("error").ok()?)
        .and_then(|e| {
            Some((
                e.raw_str("message").ok()??,
                e.raw_str("status").ok().flatten(),
            ))
        });
    translate::openai_error(status, body, parsed, out);
}

/// A function call, raw: `(name, args, id, thought signature)`.
type Call<'a> = (&'a [u8], &'a [u8], Option<&'a [u8]>, Option<&'a [u8]>);

/// The parts of a response's first candidate: its texts, its calls, its
/// finish reason.
struct Candidate<'a> {
    texts: Vec<&'a [u8]>,
    calls: Vec<Call<'a>>,
    finish: Option<&'a [u8]>,
}

fn candidate<'a>(top: &Obj<'a>) -> Option<Candidate<'a>> {
    let doc = top.doc();
    let mut c = Candidate {
        texts: Vec::new(),
        calls: Vec::new(),
        finish: None,
    };
    let Some(first) = top.array("candidates").ok()?.first().cloned() else {
        // A prompt Gemini blocked has no candidate, only the reason.
        if top
            .obj("promptFeedback")
            .ok()?
            .is_some_and(|f| f.get("blockReason").ok().flatten().is_some())
        {
            c.finish = Some(b"\"SAFETY\"");
        }
        return Some(c);
    };
    let cand = Obj::read(doc, first, "candidate").ok()?;
    c.finish = cand.get("finishReason").ok()?;
    if let Some(content) = cand.obj("content").ok()? {
        for p in content.array("parts").ok()? {
            let part = Obj::read(doc, p, "part").ok()?;
            // Thought summaries are not the answer.
            if part.get("thought").ok()? == Some(b"true") {
                continue;
            }
            if let Some(t) = part.raw_str("text").ok()? {
                c.texts.push(t);
            } else if let Some(f) = part.obj("functionCall").ok()? {
                c.calls.push((
                    f.raw_str("name").ok()??,
                    f.get("args").ok()?.unwrap_or(b"{}"),
                    f.raw_str("id").ok()?,
                    part.raw_str("thoughtSignature").ok()?,
                ));
            }
        }
    }
    Some(c)
}

/// What joins a tool call's id and the thought signature Gemini gave the
/// call: the client sends the id back with the call, and the signature goes
/// back to Gemini with it (Gemini refuses a later turn without it).
pub const SIGNATURE_MARK: &str = "~sig~";

/// Most characters of Gemini's response id kept in a made-up call id.
const RESPONSE_ID_MAX: usize = 48;

/// A tool call's id: Gemini's own when it sends one, else one made unique
/// across turns (`call_<response id>_<n>`, or the time when the response
/// has no id), so a later tool message finds its call; with the call's
/// thought signature after [`SIGNATURE_MARK`].
fn call_id(out: &mut Vec<u8>, id: Option<&[u8]>, n: usize, response: &[u8], sig: Option<&[u8]>) {
    if let Some(sig) = sig.and_then(crate::json::string_value) {
        let mut base = Vec::new();
        call_id(&mut base, id, n, response, None);
        let base = crate::json::string_value(&base)
            .unwrap_or_default()
            .into_owned();
        translate::string(out, &format!("{base}{SIGNATURE_MARK}{sig}"));
        return;
    }
    match id {
        Some(id) => translate::raw(out, id),
        None => {
            let rid: String = crate::json::string_value(response)
                .unwrap_or_default()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .take(RESPONSE_ID_MAX)
                .collect();
            let rid = if rid.is_empty() {
                format!("{:x}", unix_nanos())
            } else {
                rid
            };
            out.extend_from_slice(format!("\"call_{rid}_{n}\"").as_bytes());
        }
    }
}

fn unix_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Writes the `chat.completion` for a whole response; `false` when it is not one.
pub fn completion(body: &[u8], model: &str, out: &mut Vec<u8>) -> bool {
    let start = out.len();
    let ok = write_completion(body, model, out).is_some();
    if !ok {
        out.truncate(start);
    }
    ok
}

fn write_completion(body: &[u8], model: &str, out: &mut Vec<u8>) -> Option<()> {
    let top = Obj::document(body, "reply").ok()?;
    // A reply has candidates, or the feedback on a prompt it blocked: any
    // other object (`{}`, an error) is not one.
    top.get("candidates")
        .ok()?
        .or(top.get("promptFeedback").ok()?)?;
    let c = candidate(&top)?;
    out.extend_from_slice(b"{\"id\":");
    translate::raw(out, top.raw_str("responseId").ok()?.unwrap_or(b"\"\""));
    out.extend_from_slice(b",\"object\":\"chat.completion\",\"created\":");
    crate::http::push_decimal(out, translate::unix_now());
    out.extend_from_slice(b",\"model\":");
    match top.raw_str("modelVersion").ok()? {
        Some(m) => translate::raw(out, m),
        None => translate::string(out, model),
    }
    out.extend_from_slice(
        b",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":",
    );
    match c.texts.as_slice() {
        [] => out.extend_from_slice(b"null"),
        [one] => translate::raw(out, one),
        many => {
            let text: String = many
                .iter()
                .filter_map(|t| crate::json::string_value(t))
                .collect();
            translate::string(out, &text);
        }
    }
    if !c.calls.is_empty() {
        out.extend_from_slice(b",\"tool_calls\":[");
        for (i, (name, args, id, sig)) in c.calls.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"id\":");
            call_id(
                out,
                *id,
                i,
                top.raw_str("responseId").ok()?.unwrap_or(b"\"\""),
                *sig,
            );
            out.extend_from_slice(b",\"type\":\"function\",\"function\":{\"name\":");
            translate::raw(out, name);
            out.extend_from_slice(b",\"arguments\":");
            translate::stringified(out, args);
            out.extend_from_slice(b"}}");
        }
        out.push(b']');
    }
    out.extend_from_slice(b",\"refusal\":null},\"logprobs\":null,\"finish_reason\":\"");
    out.extend_from_slice(
        finish_reason(c.finish.unwrap_or(b"\"STOP\""), !c.calls.is_empty()).as_bytes(),
    );
    out.extend_from_slice(b"\"}],\"usage\":");
    let counts = top
        .obj("usageMetadata")
        .ok()?
        .map(|u| Counts::read(&u))
        .unwrap_or_default();
    counts.write(out);
    out.push(b'}');
    Some(())
}

/// The state of a translated stream.
pub struct Stream {
    include_usage: bool,
    model: String,
    /// `data: {"id":...,"model":...,"choices":` once the first event named them.
    head: Vec<u8>,
    calls: usize,
    counts: Counts,
    finished: bool,
    failed: bool,
    /// Why it stopped: an event that could not be read.
    unreadable: Option<String>,
}

/// Gemini replies as chat completions, for a request for `model` (named
/// when the reply names none).
pub struct ToChat {
    model: String,
}

impl Format for ToChat {
    type Stream = Stream;
    const TOO_LARGE: &'static [u8] = translate::TOO_LARGE;
    fn whole(&self, body: &[u8], out: &mut Vec<u8>) -> bool {
        completion(body, &self.model, out)
    }
    fn error(&self, status: u16, body: &[u8], out: &mut Vec<u8>) {
        error_body(status, body, out)
    }
}

/// Translates one Gemini reply (JSON, stream or error) into a chat completion.
pub type ChatReply = Translator<ToChat>;

impl Translator<ToChat> {
    pub fn for_chat(
        status: u16,
        event_stream: bool,
        include_usage: bool,
        model: &str,
    ) -> ChatReply {
        let stream = event_stream.then(|| Stream {
            include_usage,
            model: model.to_string(),
            head: Vec::new(),
            calls: 0,
            counts: Counts::default(),
            finished: false,
            failed: false,
            unreadable: None,
        });
        Translator::new(
            ToChat {
                model: model.to_string(),
            },
            status,
            stream,
        )
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
        if self.failed {
        } else if self.finished {
            if self.include_usage {
                out.extend_from_slice(&self.head);
                out.extend_from_slice(b"[],\"usage\":");
                self.counts.write(out);
                out.extend_from_slice(b"}\n\n");
            }
            out.extend_from_slice(b"data: [DONE]\n\n");
        } else {
            out.extend_from_slice(
                b"data: {\"error\":{\"message\":\"the provider ended the stream before a finish reason: the answer is incomplete\",\"type\":\"provider_error\",\"param\":null,\"code\":\"stream_truncated\"}}\n\n",
            );
        }
    }
}

impl Stream {
    fn event_line(&mut self, line: &[u8], out: &mut Vec<u8>) {
        let Some(data) = data_of(line) else { return };
        if self.failed {
            return;
        }
        let Ok(top) = Obj::document(data, "event") else {
            let why = translate::unreadable_event(data);
            translate::openai_unreadable_event(&why, out);
            self.unreadable = Some(why);
            self.failed = true;
            return;
        };
        if top.obj("error").ok().flatten().is_some() {
            self.failed = true;
            out.extend_from_slice(b"data: ");
            error_body(200, data, out);
            out.extend_from_slice(b"\n\n");
            return;
        }
        if self.head.is_empty() {
            self.head.extend_from_slice(b"data: {\"id\":");
            translate::raw(
                &mut self.head,
                top.raw_str("responseId").ok().flatten().unwrap_or(b"\"\""),
            );
            self.head
                .extend_from_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
            crate::http::push_decimal(&mut self.head, translate::unix_now());
            self.head.extend_from_slice(b",\"model\":");
            match top.raw_str("modelVersion").ok().flatten() {
                Some(m) => translate::raw(&mut self.head, m),
                None => translate::string(&mut self.head, &self.model),
            }
            self.head.extend_from_slice(b",\"choices\":");
            self.chunk(out, b"{\"role\":\"assistant\",\"content\":\"\"}", None);
        }
        if let Some(u) = top.obj("usageMetadata").ok().flatten() {
            self.counts = Counts::read(&u);
        }
        let Some(c) = candidate(&top) else { return };
        for t in &c.texts {
            self.chunk_start(out);
            out.extend_from_slice(b"{\"content\":");
            out.extend_from_slice(t);
            out.push(b'}');
            translate::chunk_end(out, None);
        }
        for (name, args, id, sig) in &c.calls {
            let k = self.calls;
            self.calls += 1;
            let mut d = Vec::with_capacity(args.len() + 128);
            d.extend_from_slice(b"{\"tool_calls\":[{\"index\":");
            crate::http::push_decimal(&mut d, k as u64);
            d.extend_from_slice(b",\"id\":");
            let rid = top.raw_str("responseId").ok().flatten().unwrap_or(b"\"\"");
            call_id(&mut d, *id, k, rid, *sig);
            d.extend_from_slice(b",\"type\":\"function\",\"function\":{\"name\":");
            translate::raw(&mut d, name);
            d.extend_from_slice(b",\"arguments\":");
            translate::stringified(&mut d, args);
            d.extend_from_slice(b"}}]}");
            self.chunk(out, &d, None);
        }
        if let Some(f) = c.finish {
            self.finished = true;
            self.chunk(out, b"{}", Some(finish_reason(f, self.calls > 0)));
        }
    }

    fn chunk(&self, out: &mut Vec<u8>, delta: &[u8], finish: Option<&str>) {
        self.chunk_start(out);
        out.extend_from_slice(delta);
        translate::chunk_end(out, finish);
    }

    /// A chunk up to its delta object (written next, in place).
    fn chunk_start(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.head);
        out.extend_from_slice(b"[{\"index\":0,\"delta\":");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::translate::ReplyTranslator;
    use simd_json::prelude::*;

    use crate::providers::translate::parse;

    fn run(status: u16, stream: bool, body: &[u8], piece: usize) -> Vec<u8> {
        let mut t = ChatReply::for_chat(status, stream, true, "gemini-x");
        let mut out = Vec::new();
        for p in body.chunks(piece) {
            t.feed(p, &mut out);
        }
        t.finish(true, &mut out);
        out
    }

    #[test]
    fn an_event_that_is_not_json_ends_the_stream_with_an_error() {
        let mut t = ChatReply::for_chat(200, true, true, "gemini-x");
        let mut out = Vec::new();
        t.feed(
            b"data: {\"candidates\":[\n\ndata: {\"candidates\":[]}\n\n",
            &mut out,
        );
        t.finish(true, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("data: ").count(), 1, "{text}");
        assert!(
            text.contains("\"code\":\"upstream_bad_response\""),
            "{text}"
        );
        assert!(t.unreadable().unwrap().contains("not JSON"));
        // A body that is not a reply: an error, and it says why. JSON that
        // is no reply (`{}`, an error object) is none either; a blocked
        // prompt's feedback is one.
        for (body, reply) in [
            (&b"<html>"[..], false),
            (b"{}", false),
            (b"{\"error\":{\"code\":503}}", false),
            (b"{\"promptFeedback\":{\"blockReason\":\"SAFETY\"}}", true),
        ] {
            let mut t = ChatReply::for_chat(200, false, true, "gemini-x");
            let mut out = Vec::new();
            t.feed(body, &mut out);
            t.finish(true, &mut out);
            assert_eq!(
                t.unreadable().is_none(),
                reply,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn a_response_becomes_a_chat_completion() {
        let body = br#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Hi "},{"text":"there"},{"functionCall":{"name":"f","args":{"a":[1,2]}}}]},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":7,"candidatesTokenCount":3,"thoughtsTokenCount":2,"cachedContentTokenCount":4},"modelVersion":"gemini-x-001","responseId":"r1"}"#;
        let v = parse(&run(200, false, body, 9));
        assert_eq!(v["id"], "r1");
        assert_eq!(v["model"], "gemini-x-001");
        let m = &v["choices"][0]["message"];
        assert_eq!(m["content"], "Hi there");
        assert_eq!(m["tool_calls"][0]["id"], "call_r1_0");
        assert_eq!(
            parse(
                m["tool_calls"][0]["function"]["arguments"]
                    .as_str()
                    .unwrap()
                    .as_bytes()
            )["a"][1],
            2
        );
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(v["usage"]["prompt_tokens"], 7);
        assert_eq!(v["usage"]["completion_tokens"], 5);
        assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 4);
        let e = parse(&run(
            429,
            false,
            br#"{"error":{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED"}}"#,
            100,
        ));
        assert_eq!(e["error"]["type"], "RESOURCE_EXHAUSTED");
        assert_eq!(e["error"]["message"], "Quota exceeded");
    }

    #[test]
    fn a_blocked_prompt_is_a_content_filter_finish() {
        let body = br#"{"promptFeedback":{"blockReason":"SAFETY"},"responseId":"r"}"#;
        let v = parse(&run(200, false, body, 5));
        assert_eq!(v["choices"][0]["finish_reason"], "content_filter");
        let out = run(
            200,
            true,
            b"data: {\"promptFeedback\":{\"blockReason\":\"OTHER\"}}\r\n\r\n",
            7,
        );
        assert!(String::from_utf8_lossy(&out).contains("content_filter"));
        assert!(String::from_utf8_lossy(&out).contains("[DONE]"));
    }

    #[test]
    fn a_thought_signature_rides_in_the_call_id() {
        let body = br#"{"candidates":[{"content":{"role":"model","parts":[{"functionCall":{"name":"f","args":{}},"thoughtSignature":"AbC+/="}]},"finishReason":"STOP"}],"responseId":"r"}"#;
        let v = parse(&run(200, false, body, 5));
        assert_eq!(
            v["choices"][0]["message"]["tool_calls"][0]["id"],
            "call_r_0~sig~AbC+/="
        );
    }

    #[test]
    fn stream_events_become_chunks_and_end_with_done() {
        let stream = b"data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"Hel\"}]}}],\"responseId\":\"r\"}\r\n\r\ndata: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"lo\"}]},\"finishReason\":\"STOP\"}],\"usageMetadata\":{\"promptTokenCount\":3,\"candidatesTokenCount\":2}}\r\n\r\n";
        for piece in [1, 13, stream.len()] {
            let out = run(200, true, stream, piece);
            let events: Vec<&[u8]> = out
                .split(|b| *b == b'\n')
                .filter_map(|l| l.strip_prefix(b"data: "))
                .collect();
            let text: String = events
                .iter()
                .filter(|e| **e != b"[DONE]")
                .map(|e| parse(e))
                .filter_map(|v| {
                    v["choices"]
                        .get_idx(0)?
                        .get("delta")?
                        .get("content")?
                        .as_str()
                        .map(str::to_string)
                })
                .collect();
            assert_eq!(text, "Hello");
            assert_eq!(*events.last().unwrap(), b"[DONE]");
            let usage = parse(events[events.len() - 2]);
            assert_eq!(usage["usage"]["completion_tokens"], 2);
        }
        // Cut before a finish reason: an error event, no [DONE].
        let out = run(200, true, &stream[..100], 7);
        assert!(String::from_utf8_lossy(&out).contains("stream_truncated"));
        assert!(!String::from_utf8_lossy(&out).contains("[DONE]"));
    }
}
