//! The Anthropic Messages API shape (`POST /v1/messages`): a whole message, a
//! stream of events (`message_start`, content blocks and their deltas,
//! `message_delta` with cumulative output tokens, `message_stop`), Anthropic
//! error bodies, and tool calls (`tool_use` blocks whose input streams as
//! `input_json_delta` fragments).
//!
//! Shapes bytes only, like `reply.rs`; `conn.rs` frames and times them.

use super::reply::{self, completion_tokens, piece};
use serde_json::{Value, json};

/// One Messages answer.
pub struct Message {
    pub id: String,
    pub model: String,
    pub prompt_tokens: u64,
    pub reply_bytes: usize,
    /// A forced tool call: the tool's name and its arguments as JSON text.
    pub tool: Option<(String, String)>,
}

impl Message {
    fn output_tokens(&self) -> u64 {
        match &self.tool {
            Some((_, args)) => completion_tokens(args.len()),
            None => completion_tokens(self.reply_bytes),
        }
    }

    fn usage(&self, output: u64) -> Value {
        json!({
            "input_tokens": self.prompt_tokens,
            "output_tokens": output,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        })
    }

    fn tool_id(&self) -> String {
        format!("toolu_{}", self.id.trim_start_matches("msg_"))
    }

    /// The whole non-streamed body.
    pub fn push_body(&self, out: &mut Vec<u8>) {
        let (content, stop) = match &self.tool {
            Some((name, args)) => {
                let input: Value = serde_json::from_str(args).unwrap_or_else(|_| json!({}));
                (
                    json!([{ "type": "tool_use", "id": self.tool_id(), "name": name, "input": input }]),
                    "tool_use",
                )
            }
            None => (
                json!([{ "type": "text", "text": reply::reply_text(self.reply_bytes) }]),
                "end_turn",
            ),
        };
        let body = json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": null,
            "usage": self.usage(self.output_tokens()),
        });
        let _ = serde_json::to_writer(&mut *out, &body);
    }

    /// Every event of the streamed answer, in order, with `n` content deltas.
    /// Index `i` of the returned list is one SSE event.
    pub fn events(&self, n: u32) -> Vec<Vec<u8>> {
        let mut events = Vec::new();
        let mut push = |kind: &str, data: Value| {
            let mut e = format!("event: {kind}\ndata: ").into_bytes();
            let _ = serde_json::to_writer(&mut e, &data);
            e.extend_from_slice(b"\n\n");
            events.push(e);
        };
        push(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": self.id, "type": "message", "role": "assistant", "model": self.model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": self.usage(1),
            }}),
        );
        push("ping", json!({"type": "ping"}));
        let n = n.max(1);
        match &self.tool {
            Some((name, args)) => {
                push(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0, "content_block": {
                        "type": "tool_use", "id": self.tool_id(), "name": name, "input": {}
                    }}),
                );
                // Several fragments, so a client must join them.
                let parts = n.max(3);
                for i in 0..parts {
                    let (a, b) = char_piece(args, i, parts);
                    push(
                        "content_block_delta",
                        json!({"type": "content_block_delta", "index": 0, "delta": {
                            "type": "input_json_delta", "partial_json": &args[a..b]
                        }}),
                    );
                }
            }
            None => {
                push(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                );
                let text = reply::reply_text(self.reply_bytes);
                for i in 0..n {
                    let (a, b) = piece(text.len(), i, n);
                    push(
                        "content_block_delta",
                        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": &text[a..b]}}),
                    );
                }
            }
        }
        push(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        );
        let stop = if self.tool.is_some() {
            "tool_use"
        } else {
            "end_turn"
        };
        push(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null},
                   "usage": {"output_tokens": self.output_tokens()}}),
        );
        push("message_stop", json!({"type": "message_stop"}));
        events
    }
}

/// Byte range `i` of `n` of `s`, moved to character boundaries.
fn char_piece(s: &str, i: u32, n: u32) -> (usize, usize) {
    let (mut a, mut b) = piece(s.len(), i, n);
    while !s.is_char_boundary(a) {
        a -= 1;
    }
    while !s.is_char_boundary(b) {
        b -= 1;
    }
    (a, b)
}

/// An Anthropic error body: `{"type":"error","error":{"type","message"}}`.
pub fn push_error(out: &mut Vec<u8>, status: u16, message: &str) {
    let kind = match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    };
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    let _ = serde_json::to_writer(&mut *out, &body);
}

/// The error event that opens a `stream-error` answer.
pub fn push_error_event(out: &mut Vec<u8>) {
    out.extend_from_slice(b"event: error\ndata: ");
    push_error(out, 529, "Overloaded (mock stream error)");
    out.extend_from_slice(b"\n\n");
}

/// The tool a request forces, with arguments that fit its schema: Anthropic's
/// `tool_choice` `{"type":"tool","name":...}` or `{"type":"any"}` (the first
/// tool), OpenAI's `{"type":"function","function":{"name":...}}` or
/// `"required"`. `None` when no tool is forced.
pub fn forced_tool(request: &Value) -> Option<(String, String)> {
    let choice = request.get("tool_choice")?;
    let tools = request.get("tools")?.as_array()?;
    let name_of = |t: &Value| {
        t.get("name")
            .or_else(|| t.get("function")?.get("name"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let name = match choice {
        Value::String(s) if s == "required" => name_of(tools.first()?)?,
        Value::Object(o) => match o.get("type").and_then(Value::as_str)? {
            "any" => name_of(tools.first()?)?,
            "tool" => o.get("name")?.as_str()?.to_owned(),
            "function" => o.get("function")?.get("name")?.as_str()?.to_owned(),
            _ => return None,
        },
        _ => return None,
    };
    let tool = tools
        .iter()
        .find(|t| name_of(t).as_deref() == Some(&name))?;
    let schema = tool
        .get("input_schema")
        .or_else(|| tool.get("function")?.get("parameters"));
    Some((name, arguments_for(schema)))
}

/// Arguments that satisfy a JSON schema's top-level properties by type.
fn arguments_for(schema: Option<&Value>) -> String {
    let mut args = serde_json::Map::new();
    if let Some(props) = schema
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object)
    {
        for (k, p) in props {
            let v = match p.get("type").and_then(Value::as_str) {
                Some("number") => json!(1.5),
                Some("integer") => json!(1),
                Some("boolean") => json!(true),
                Some("array") => json!([]),
                Some("object") => json!({}),
                _ => json!(format!("mock {k}")),
            };
            args.insert(k.clone(), v);
        }
    }
    Value::Object(args).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(tool: Option<(String, String)>) -> Message {
        Message {
            id: "msg_mock-0-1".into(),
            model: "claude-test".into(),
            prompt_tokens: 9,
            reply_bytes: 30,
            tool,
        }
    }

    #[test]
    fn a_stream_spells_the_reply_and_counts_output_at_message_delta() {
        let events = message(None).events(4);
        let mut text = String::new();
        for e in &events {
            let s = std::str::from_utf8(e).unwrap();
            let data = s.split("data: ").nth(1).unwrap().trim();
            let v: Value = serde_json::from_str(data).unwrap();
            if v["type"] == "content_block_delta" {
                text.push_str(v["delta"]["text"].as_str().unwrap());
            }
            if v["type"] == "message_delta" {
                assert_eq!(v["usage"]["output_tokens"], 8);
            }
        }
        assert_eq!(text, reply::reply_text(30));
        assert!(
            std::str::from_utf8(events.last().unwrap())
                .unwrap()
                .starts_with("event: message_stop")
        );
    }

    #[test]
    fn a_forced_tool_is_called_with_arguments_that_fit_its_schema() {
        let req = json!({"tools": [{"name": "a", "input_schema": {}}, {"name": "get_weather",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}],
            "tool_choice": {"type": "tool", "name": "get_weather"}});
        let (name, args) = forced_tool(&req).unwrap();
        assert_eq!(name, "get_weather");
        let v: Value = serde_json::from_str(&args).unwrap();
        assert_eq!(v["days"], 1);
        let openai = json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"properties": {"x": {"type": "boolean"}}}}}],
            "tool_choice": "required"});
        assert_eq!(forced_tool(&openai).unwrap().1, r#"{"x":true}"#);
        assert!(forced_tool(&json!({"tools": [], "tool_choice": "auto"})).is_none());
        // Its fragments join into the arguments.
        let events = message(Some((name, args.clone()))).events(1);
        let joined: String = events
            .iter()
            .filter_map(|e| {
                let s = std::str::from_utf8(e).unwrap();
                let v: Value = serde_json::from_str(s.split("data: ").nth(1)?.trim()).ok()?;
                Some(v["delta"]["partial_json"].as_str()?.to_owned())
            })
            .collect();
        assert_eq!(joined, args);
    }
}
