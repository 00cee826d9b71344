//! Response synthesis: the JSON bodies and SSE events of an OpenAI-compatible
//! provider.
//!
//! Owns the shape of every answer (chat completion, text completion,
//! embeddings, stream chunks, usage, OpenAI error objects) and the token
//! arithmetic. Does not frame HTTP (that is `http.rs`) or decide timing (that
//! is `conn.rs`). Everything is appended to caller-owned buffers so a
//! connection reuses the same allocation for every answer.

use std::io::Write as _;

/// The assistant's words: this sentence repeated and cut to the asked length.
/// Plain ASCII without quotes or backslashes, so it never needs JSON escaping
/// and can be cut at any byte.
const TEXT: &[u8] = b"The quick brown fox jumps over the lazy dog. ";

/// Numbers per embedding vector. Real models use hundreds; eight keeps
/// answers small while still being a list of floats.
pub const EMBEDDING_DIMS: usize = 8;

/// The SSE event that ends an OpenAI stream.
pub const DONE_EVENT: &[u8] = b"data: [DONE]\n\n";

/// Which OpenAI API a request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
    Embeddings,
}

impl Endpoint {
    /// The endpoint a `POST` to `path` addresses, if any.
    pub fn from_path(path: &str) -> Option<Endpoint> {
        // Azure OpenAI's layout: `/v1/deployments/<deployment>/chat/completions`.
        let azure;
        let path = match path.split_once("/deployments/") {
            Some((base, rest)) => {
                azure = format!("{base}/{}", rest.split_once('/')?.1);
                azure.as_str()
            }
            None => path,
        };
        match path.trim_end_matches('/') {
            "/v1/chat/completions" => Some(Endpoint::Chat),
            "/v1/completions" => Some(Endpoint::Completions),
            "/v1/embeddings" => Some(Endpoint::Embeddings),
            _ => None,
        }
    }

    fn object(self, streaming: bool) -> &'static str {
        match (self, streaming) {
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Completions, _) => "text_completion",
            (Endpoint::Embeddings, _) => "list",
        }
    }

    fn id_prefix(self) -> &'static str {
        match self {
            Endpoint::Chat => "chatcmpl-mock-",
            Endpoint::Completions => "cmpl-mock-",
            Endpoint::Embeddings => "embd-mock-",
        }
    }
}

/// Prompt tokens billed for a request body: about four bytes per token, at
/// least one, so usage is deterministic for a given body.
pub fn prompt_tokens(body_len: usize) -> u64 {
    (body_len / 4 + 1) as u64
}

/// Completion tokens billed for a reply of `reply_bytes` (four bytes a token,
/// rounded up; an empty reply costs nothing).
pub fn completion_tokens(reply_bytes: usize) -> u64 {
    reply_bytes.div_ceil(4) as u64
}

/// Everything that is the same in every event of one answer.
#[derive(Debug)]
pub struct Answer {
    pub endpoint: Endpoint,
    /// `id` of the answer, e.g. `chatcmpl-mock-0-17`.
    pub id: String,
    pub created: u64,
    /// The request's model, already a JSON string literal (quotes included).
    pub model_json: String,
    pub prompt_tokens: u64,
    pub reply_bytes: usize,
    /// Streams: the client asked for `stream_options.include_usage`.
    pub include_usage: bool,
    /// A forced tool call (chat only): the tool's name and its arguments.
    pub tool: Option<(String, String)>,
}

impl Answer {
    pub fn new(endpoint: Endpoint, shard: usize, seq: u64, model: &str) -> Answer {
        Answer {
            endpoint,
            id: format!("{}{shard}-{seq}", endpoint.id_prefix()),
            created: unix_now(),
            model_json: serde_json::to_string(model).unwrap_or_else(|_| "\"mock\"".to_owned()),
            prompt_tokens: 0,
            reply_bytes: 0,
            include_usage: false,
            tool: None,
        }
    }

    /// Bytes the reply is made of: the text, or a tool call's arguments.
    fn output_bytes(&self) -> usize {
        match &self.tool {
            Some((_, args)) if self.endpoint == Endpoint::Chat => args.len(),
            _ => self.reply_bytes,
        }
    }

    fn tool_call(&self, args: &str, with_head: bool) -> serde_json::Value {
        let (name, _) = self.tool.as_ref().expect("a tool call");
        if with_head {
            serde_json::json!([{"index": 0, "id": format!("call_{}", self.id), "type": "function",
                "function": {"name": name, "arguments": args}}])
        } else {
            serde_json::json!([{"index": 0, "function": {"arguments": args}}])
        }
    }

    fn push_usage(&self, out: &mut Vec<u8>) {
        let completion = completion_tokens(self.output_bytes());
        let _ = write!(
            out,
            r#"{{"prompt_tokens":{},"completion_tokens":{completion},"total_tokens":{}}}"#,
            self.prompt_tokens,
            self.prompt_tokens + completion
        );
    }

    fn push_preamble(&self, out: &mut Vec<u8>, streaming: bool) {
        let _ = write!(
            out,
            r#"{{"id":"{}","object":"{}","created":{},"model":{},"#,
            self.id,
            self.endpoint.object(streaming),
            self.created,
            self.model_json
        );
    }

    /// The whole non-streaming body (`chat.completion` or `text_completion`).
    pub fn push_body(&self, out: &mut Vec<u8>) {
        self.push_preamble(out, false);
        match self.endpoint {
            Endpoint::Chat if self.tool.is_some() => {
                let (_, args) = self.tool.as_ref().expect("checked");
                let mut calls = self.tool_call(args, true);
                if let Some(c) = calls.get_mut(0).and_then(|c| c.as_object_mut()) {
                    c.remove("index");
                }
                out.extend_from_slice(
                    br#""choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":"#,
                );
                let _ = serde_json::to_writer(&mut *out, &calls);
                out.extend_from_slice(br#"},"logprobs":null,"finish_reason":"tool_calls"}],"#);
            }
            Endpoint::Chat => {
                out.extend_from_slice(
                    br#""choices":[{"index":0,"message":{"role":"assistant","content":""#,
                );
                push_text(out, 0, self.reply_bytes);
                out.extend_from_slice(br#""},"logprobs":null,"finish_reason":"stop"}],"#);
            }
            Endpoint::Completions | Endpoint::Embeddings => {
                out.extend_from_slice(br#""choices":[{"index":0,"text":""#);
                push_text(out, 0, self.reply_bytes);
                out.extend_from_slice(br#"","logprobs":null,"finish_reason":"stop"}],"#);
            }
        }
        out.extend_from_slice(br#""usage":"#);
        self.push_usage(out);
        out.extend_from_slice(br#","system_fingerprint":"fp_mock"}"#);
    }

    /// Stream event `i` of `n` as `data: {...}\n\n`. Event 0 carries the
    /// assistant role; the last carries `finish_reason: "stop"`; together they
    /// spell the whole reply.
    pub fn push_event(&self, out: &mut Vec<u8>, i: u32, n: u32) {
        let (start, end) = piece(self.reply_bytes, i, n);
        let finish = if i + 1 >= n { r#""stop""# } else { "null" };
        out.extend_from_slice(b"data: ");
        self.push_preamble(out, true);
        match self.endpoint {
            Endpoint::Chat if self.tool.is_some() => {
                let (_, args) = self.tool.as_ref().expect("checked");
                let (a, b) = piece(args.len(), i, n);
                let (a, b) = (floor_char(args, a), floor_char(args, b));
                let mut delta =
                    serde_json::json!({"tool_calls": self.tool_call(&args[a..b], i == 0)});
                if i == 0 {
                    delta["role"] = "assistant".into();
                    delta["content"] = serde_json::Value::Null;
                }
                out.extend_from_slice(br#""choices":[{"index":0,"delta":"#);
                let _ = serde_json::to_writer(&mut *out, &delta);
                let finish = if i + 1 >= n {
                    r#""tool_calls""#
                } else {
                    "null"
                };
                let _ = write!(out, r#","logprobs":null,"finish_reason":{finish}}}]"#);
            }
            Endpoint::Chat => {
                out.extend_from_slice(br#""choices":[{"index":0,"delta":{"#);
                if i == 0 {
                    out.extend_from_slice(br#""role":"assistant","#);
                }
                out.extend_from_slice(br#""content":""#);
                push_text(out, start, end);
                let _ = write!(out, r#""}},"logprobs":null,"finish_reason":{finish}}}]"#);
            }
            Endpoint::Completions | Endpoint::Embeddings => {
                out.extend_from_slice(br#""choices":[{"index":0,"text":""#);
                push_text(out, start, end);
                let _ = write!(out, r#"","logprobs":null,"finish_reason":{finish}}}]"#);
            }
        }
        if self.include_usage {
            // OpenAI marks every content chunk `"usage":null` when usage was
            // asked for, then sends it in one extra chunk.
            out.extend_from_slice(br#","usage":null"#);
        }
        out.extend_from_slice(b"}\n\n");
    }

    /// The extra final event with `"choices":[]` and the usage totals.
    pub fn push_usage_event(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"data: ");
        self.push_preamble(out, true);
        out.extend_from_slice(br#""choices":[],"usage":"#);
        self.push_usage(out);
        out.extend_from_slice(b"}\n\n");
    }

    /// The embeddings body: `inputs` vectors of [`EMBEDDING_DIMS`] floats.
    pub fn push_embeddings(&self, out: &mut Vec<u8>, inputs: usize) {
        out.extend_from_slice(br#"{"object":"list","data":["#);
        for i in 0..inputs {
            if i > 0 {
                out.push(b',');
            }
            let _ = write!(out, r#"{{"object":"embedding","index":{i},"embedding":["#);
            for d in 0..EMBEDDING_DIMS {
                if d > 0 {
                    out.push(b',');
                }
                // Deterministic, distinct per input and dimension, in (-1, 1).
                let x = ((i * 31 + d * 7) % 200) as f64 / 100.0 - 0.995;
                let _ = write!(out, "{x:.3}");
            }
            out.extend_from_slice(b"]}");
        }
        let _ = write!(
            out,
            r#"],"model":{},"usage":{{"prompt_tokens":{p},"total_tokens":{p}}}}}"#,
            self.model_json,
            p = self.prompt_tokens
        );
    }
}

/// The byte range of the reply that stream event `i` of `n` carries. Pieces
/// differ in length by at most one byte and cover the reply exactly.
pub fn piece(len: usize, i: u32, n: u32) -> (usize, usize) {
    let n = n.max(1) as usize;
    let i = (i as usize).min(n);
    (len * i / n, len * (i + 1).min(n) / n)
}

/// `i`, moved down to a character boundary of `s`.
fn floor_char(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Appends bytes `start..end` of the endless repetition of [`TEXT`].
fn push_text(out: &mut Vec<u8>, start: usize, end: usize) {
    let mut pos = start;
    while pos < end {
        let offset = pos % TEXT.len();
        let take = (TEXT.len() - offset).min(end - pos);
        out.extend_from_slice(&TEXT[offset..offset + take]);
        pos += take;
    }
}

/// The reply text of `len` bytes, as the client should reassemble it.
pub fn reply_text(len: usize) -> String {
    let mut out = Vec::with_capacity(len);
    push_text(&mut out, 0, len);
    String::from_utf8_lossy(&out).into_owned()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The `stream-error` fault's only event: an OpenAI-shaped error.
pub fn push_error_event(out: &mut Vec<u8>) {
    out.extend_from_slice(b"data: ");
    push_error(
        out,
        "The server is overloaded (mock stream error)",
        "server_error",
        Some("overloaded"),
    );
    out.extend_from_slice(b"\n\n");
}

/// An OpenAI-shaped error body: `{"error":{"message","type","param","code"}}`.
pub fn push_error(out: &mut Vec<u8>, message: &str, kind: &str, code: Option<&str>) {
    let body = serde_json::json!({
        "error": { "message": message, "type": kind, "param": null, "code": code }
    });
    let _ = serde_json::to_writer(&mut *out, &body);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(endpoint: Endpoint, reply_bytes: usize, include_usage: bool) -> Answer {
        Answer {
            prompt_tokens: 5,
            reply_bytes,
            include_usage,
            ..Answer::new(endpoint, 0, 1, "gpt-\"q\"")
        }
    }

    #[test]
    fn chat_body_is_valid_json_with_usage_and_the_escaped_model() {
        let mut out = Vec::new();
        answer(Endpoint::Chat, 10, false).push_body(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "gpt-\"q\"");
        assert_eq!(v["choices"][0]["message"]["content"], reply_text(10));
        assert_eq!(v["usage"]["completion_tokens"], 3);
        assert_eq!(v["usage"]["total_tokens"], 8);
    }

    #[test]
    fn stream_events_spell_the_whole_reply() {
        let a = answer(Endpoint::Chat, 100, true);
        let mut text = String::new();
        for i in 0..7 {
            let mut out = Vec::new();
            a.push_event(&mut out, i, 7);
            let json = out
                .strip_prefix(b"data: ")
                .unwrap()
                .strip_suffix(b"\n\n")
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(json).unwrap();
            text.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap());
            assert!(v["usage"].is_null());
            assert_eq!(v["choices"][0]["finish_reason"].is_null(), i < 6);
        }
        assert_eq!(text, reply_text(100));
    }

    #[test]
    fn a_forced_tool_call_streams_its_arguments_in_fragments() {
        let mut a = answer(Endpoint::Chat, 10, false);
        a.tool = Some(("f".into(), r#"{"city":"mock city"}"#.into()));
        let mut args = String::new();
        for i in 0..3 {
            let mut out = Vec::new();
            a.push_event(&mut out, i, 3);
            let json = out
                .strip_prefix(b"data: ")
                .unwrap()
                .strip_suffix(b"\n\n")
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(json).unwrap();
            let call = &v["choices"][0]["delta"]["tool_calls"][0];
            assert_eq!(call["id"].is_string(), i == 0);
            args.push_str(call["function"]["arguments"].as_str().unwrap());
        }
        assert_eq!(args, r#"{"city":"mock city"}"#);
        let mut out = Vec::new();
        a.push_body(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            v["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
            "f"
        );
    }

    #[test]
    fn embeddings_have_one_vector_per_input() {
        let mut out = Vec::new();
        answer(Endpoint::Embeddings, 0, false).push_embeddings(&mut out, 3);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["data"].as_array().unwrap().len(), 3);
        assert_eq!(
            v["data"][2]["embedding"].as_array().unwrap().len(),
            EMBEDDING_DIMS
        );
        assert_eq!(v["usage"]["total_tokens"], 5);
    }

    #[test]
    fn pieces_cover_the_reply_even_with_more_events_than_bytes() {
        let ends: Vec<_> = (0..5).map(|i| piece(3, i, 5)).collect();
        assert_eq!(ends.first().unwrap().0, 0);
        assert_eq!(ends.last().unwrap().1, 3);
        assert!(ends.windows(2).all(|w| w[0].1 == w[1].0));
    }
}
