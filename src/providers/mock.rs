//! The built-in `mock` provider: answered inside the gateway, so aigw works
//! offline out of the box.
//!
//! It writes a complete HTTP response (OpenAI-shaped, streaming or not, with
//! `usage` derived from the request size) into memory; the relay then reads it
//! exactly as it reads a network provider, so the mock exercises the same
//! framing, tap and accounting code. Model `echo` repeats the last user message.
//! Its replies are OpenAI-shaped, so it reads usage with the OpenAI shape.

use crate::error::push_json_string;
use crate::http::chunked::{LAST_CHUNK, write_chunk};
use simd_json::prelude::*;
use std::fmt::Write as _;

use super::Adapter;
use super::usage::UsageShape;

pub struct Mock;

impl Adapter for Mock {
    fn auth_native(&self, _key: &str) -> String {
        String::new()
    }
    fn auth_unified(&self, _key: &str) -> String {
        String::new()
    }
    fn injects_stream_usage(&self) -> bool {
        true
    }
    fn usage_shape(&self) -> &'static UsageShape {
        &super::openai::USAGE
    }
    fn answer_in_process(&self, path: &str, body: &[u8], request_id: u64) -> Option<Vec<u8>> {
        Some(respond(&MockRequest { path, body }, request_id))
    }
}

const DEFAULT_REPLY: &str =
    "This is a mock reply from aigw. Point a provider at a real model to get real answers.";

/// What the mock needs to know about a request.
pub struct MockRequest<'a> {
    /// Path after the base URL, e.g. `/v1/chat/completions` or `/chat/completions`.
    pub path: &'a str,
    pub body: &'a [u8],
}

/// Builds the full raw HTTP response for `req`.
pub fn respond(req: &MockRequest<'_>, request_id: u64) -> Vec<u8> {
    let path = req.path.split('?').next().unwrap_or("");
    let endpoint = path.trim_start_matches("/v1").trim_start_matches('/');
    let mut scratch = req.body.to_vec();
    let parsed = simd_json::to_borrowed_value(&mut scratch).ok();
    let get_str = |k: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(k))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let model = get_str("model").unwrap_or_else(|| "mock".into());
    let stream = parsed
        .as_ref()
        .and_then(|v| v.get("stream"))
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let include_usage = parsed
        .as_ref()
        .and_then(|v| v.get("stream_options"))
        .and_then(|o| o.get("include_usage"))
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let prompt_tokens = (req.body.len() as u64 / 4).max(1);
    let id = format!("mock-{request_id:x}");
    match endpoint {
        "chat/completions" | "completions" => {
            let reply = if model == "echo" {
                parsed.as_ref().map(last_user_text).unwrap_or_default()
            } else {
                DEFAULT_REPLY.to_string()
            };
            let chat = endpoint == "chat/completions";
            let completion_tokens = reply.split_whitespace().count().max(1) as u64;
            let usage = format!(
                "{{\"prompt_tokens\":{prompt_tokens},\"completion_tokens\":{completion_tokens},\"total_tokens\":{}}}",
                prompt_tokens + completion_tokens
            );
            if stream {
                stream_reply(
                    &id,
                    &model,
                    &reply,
                    chat,
                    include_usage.then_some(usage.as_str()),
                )
            } else {
                let mut body = String::with_capacity(reply.len() + 256);
                let text = json_str(&reply);
                if chat {
                    let _ = write!(
                        body,
                        "{{\"id\":\"{id}\",\"object\":\"chat.completion\",\"created\":0,\"model\":{},\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":{text}}},\"finish_reason\":\"stop\"}}],\"usage\":{usage}}}",
                        json_str(&model)
                    );
                } else {
                    let _ = write!(
                        body,
                        "{{\"id\":\"{id}\",\"object\":\"text_completion\",\"created\":0,\"model\":{},\"choices\":[{{\"index\":0,\"text\":{text},\"finish_reason\":\"stop\"}}],\"usage\":{usage}}}",
                        json_str(&model)
                    );
                }
                json_response(200, &body)
            }
        }
        "embeddings" => {
            let body = format!(
                "{{\"object\":\"list\",\"data\":[{{\"object\":\"embedding\",\"index\":0,\"embedding\":[0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8]}}],\"model\":{},\"usage\":{{\"prompt_tokens\":{prompt_tokens},\"total_tokens\":{prompt_tokens}}}}}",
                json_str(&model)
            );
            json_response(200, &body)
        }
        "responses" if stream => responses_stream(&id, &model, prompt_tokens),
        "responses" => {
            let r = Responses::new(&id, &model, prompt_tokens);
            json_response(200, &r.response("completed", &r.item, &r.usage))
        }
        _ => json_response(
            404,
            &format!(
                "{{\"error\":{{\"message\":{},\"type\":\"invalid_request_error\",\"code\":\"not_found\"}}}}",
                json_str(&format!("the mock provider has no endpoint /{endpoint}"))
            ),
        ),
    }
}

fn last_user_text(v: &simd_json::BorrowedValue<'_>) -> String {
    let Some(msgs) = v.get("messages").and_then(|m| m.as_array()) else {
        return v
            .get("prompt")
            .and_then(|p| p.as_str())
            .unwrap_or("")
            .to_string();
    };
    msgs.iter()
        .filter(|m| m.get("role").and_then(|r| r.as_str()) == Some("user"))
        .last()
        .and_then(|m| m.get("content"))
        .map(|c| match c.as_str() {
            Some(s) => s.to_string(),
            // Content parts: join the text parts.
            None => c
                .as_array()
                .map(|parts| {
                    parts
                        .iter()
                        .filter_map(|p| p.get("text").and_then(|t| t.as_str()))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default(),
        })
        .unwrap_or_default()
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    push_json_string(&mut out, s);
    out
}

fn json_response(status: u16, body: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 128);
    let _ = write!(
        WriteVec(&mut out),
        "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        crate::error::reason(status),
        body.len()
    );
    out.extend_from_slice(body.as_bytes());
    out
}

fn stream_reply(id: &str, model: &str, reply: &str, chat: bool, usage: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(reply.len() * 4 + 512);
    out.extend_from_slice(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
    );
    let model = json_str(model);
    let null_usage = if usage.is_some() {
        ",\"usage\":null"
    } else {
        ""
    };
    let object = if chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let words: Vec<&str> = reply.split_inclusive(' ').collect();
    let mut event = String::new();
    for (i, word) in words.iter().enumerate() {
        event.clear();
        let choice = if chat {
            let role = if i == 0 {
                "\"role\":\"assistant\","
            } else {
                ""
            };
            format!(
                "{{\"index\":0,\"delta\":{{{role}\"content\":{}}},\"finish_reason\":null}}",
                json_str(word)
            )
        } else {
            format!(
                "{{\"index\":0,\"text\":{},\"finish_reason\":null}}",
                json_str(word)
            )
        };
        let _ = write!(
            event,
            "data: {{\"id\":\"{id}\",\"object\":\"{object}\",\"created\":0,\"model\":{model},\"choices\":[{choice}]{null_usage}}}\n\n"
        );
        write_chunk(&mut out, event.as_bytes());
    }
    event.clear();
    let stop = if chat {
        "{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}"
    } else {
        "{\"index\":0,\"text\":\"\",\"finish_reason\":\"stop\"}"
    };
    let _ = write!(
        event,
        "data: {{\"id\":\"{id}\",\"object\":\"{object}\",\"created\":0,\"model\":{model},\"choices\":[{stop}]{null_usage}}}\n\n"
    );
    write_chunk(&mut out, event.as_bytes());
    if let Some(usage) = usage {
        event.clear();
        let _ = write!(
            event,
            "data: {{\"id\":\"{id}\",\"object\":\"{object}\",\"created\":0,\"model\":{model},\"choices\":[],\"usage\":{usage}}}\n\n"
        );
        write_chunk(&mut out, event.as_bytes());
    }
    write_chunk(&mut out, b"data: [DONE]\n\n");
    out.extend_from_slice(LAST_CHUNK);
    out
}

/// The parts of a Responses API answer, whole or streamed: its one output
/// message (the default reply) and its usage.
struct Responses<'a> {
    id: &'a str,
    /// As JSON.
    model: String,
    item_id: String,
    /// The message's text part.
    part: String,
    item: String,
    usage: String,
}

impl<'a> Responses<'a> {
    fn new(id: &'a str, model: &str, prompt_tokens: u64) -> Responses<'a> {
        let output_tokens = DEFAULT_REPLY.split_whitespace().count() as u64;
        let item_id = format!("msg_{id}");
        let part = format!(
            "{{\"type\":\"output_text\",\"text\":{},\"annotations\":[]}}",
            json_str(DEFAULT_REPLY)
        );
        let item = format!(
            "{{\"id\":\"{item_id}\",\"type\":\"message\",\"status\":\"completed\",\"role\":\"assistant\",\"content\":[{part}]}}"
        );
        let usage = format!(
            "{{\"input_tokens\":{prompt_tokens},\"output_tokens\":{output_tokens},\"total_tokens\":{}}}",
            prompt_tokens + output_tokens
        );
        Responses {
            id,
            model: json_str(model),
            item_id,
            part,
            item,
            usage,
        }
    }

    /// The response object with this status, output and usage.
    fn response(&self, status: &str, output: &str, usage: &str) -> String {
        format!(
            "{{\"id\":\"{}\",\"object\":\"response\",\"created_at\":0,\"status\":\"{status}\",\"model\":{},\"output\":[{output}],\"parallel_tool_calls\":true,\"tool_choice\":\"auto\",\"tools\":[],\"usage\":{usage}}}",
            self.id, self.model
        )
    }
}

/// A streamed Responses API answer: the events the OpenAI SDKs read
/// (`response.created`, the output item and text part opening, a text delta
/// per word, their closing, `response.completed` with the whole response and
/// its usage), each as `event:` and `data:` lines.
fn responses_stream(id: &str, model: &str, prompt_tokens: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(DEFAULT_REPLY.len() * 8 + 2048);
    out.extend_from_slice(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
    );
    let r = Responses::new(id, model, prompt_tokens);
    let (item_id, part) = (&r.item_id, &r.part);
    let text = json_str(DEFAULT_REPLY);
    let mut seq = 0u64;
    let mut event = |out: &mut Vec<u8>, kind: &str, fields: &str| {
        let data = format!(
            "event: {kind}\ndata: {{\"type\":\"{kind}\",\"sequence_number\":{seq}{fields}}}\n\n"
        );
        seq += 1;
        write_chunk(out, data.as_bytes());
    };
    event(
        &mut out,
        "response.created",
        &format!(",\"response\":{}", r.response("in_progress", "", "null")),
    );
    let at = format!(",\"output_index\":0,\"item_id\":\"{item_id}\"");
    event(
        &mut out,
        "response.output_item.added",
        &format!(
            ",\"output_index\":0,\"item\":{{\"id\":\"{item_id}\",\"type\":\"message\",\"status\":\"in_progress\",\"role\":\"assistant\",\"content\":[]}}"
        ),
    );
    event(
        &mut out,
        "response.content_part.added",
        &format!(
            "{at},\"content_index\":0,\"part\":{{\"type\":\"output_text\",\"text\":\"\",\"annotations\":[]}}"
        ),
    );
    for word in DEFAULT_REPLY.split_inclusive(' ') {
        event(
            &mut out,
            "response.output_text.delta",
            &format!("{at},\"content_index\":0,\"delta\":{}", json_str(word)),
        );
    }
    event(
        &mut out,
        "response.output_text.done",
        &format!("{at},\"content_index\":0,\"text\":{text}"),
    );
    event(
        &mut out,
        "response.content_part.done",
        &format!("{at},\"content_index\":0,\"part\":{part}"),
    );
    event(
        &mut out,
        "response.output_item.done",
        &format!(",\"output_index\":0,\"item\":{}", r.item),
    );
    event(
        &mut out,
        "response.completed",
        &format!(
            ",\"response\":{}",
            r.response("completed", &r.item, &r.usage)
        ),
    );
    out.extend_from_slice(LAST_CHUNK);
    out
}

struct WriteVec<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for WriteVec<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_repeats_the_last_user_message_with_usage() {
        let body = br#"{"model":"echo","messages":[{"role":"user","content":"hello there"}]}"#;
        let raw = respond(
            &MockRequest {
                path: "/v1/chat/completions",
                body,
            },
            1,
        );
        let s = String::from_utf8(raw).unwrap();
        assert!(s.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(s.contains("\"content\":\"hello there\""));
        assert!(s.contains("\"completion_tokens\":2"));
    }

    #[test]
    fn a_streamed_responses_request_gets_the_responses_events() {
        let body = br#"{"model":"x","stream":true,"input":"hi"}"#;
        let s = String::from_utf8(respond(
            &MockRequest {
                path: "/v1/responses",
                body,
            },
            1,
        ))
        .unwrap();
        assert!(s.contains("content-type: text/event-stream"));
        let created = s.find("event: response.created\n").unwrap();
        let delta = s.find("event: response.output_text.delta\n").unwrap();
        let completed = s.find("event: response.completed\n").unwrap();
        assert!(created < delta && delta < completed);
        assert!(s[completed..].contains("\"output_tokens\":"));
        assert!(s.ends_with("0\r\n\r\n"));
        // The events carry the usage the gateway reads.
        let mut tap = crate::providers::usage::SseTap::new(&super::super::openai::USAGE, false);
        let events = &s[s.find("\r\n\r\n").unwrap() + 4..];
        let mut decoded = Vec::new();
        crate::http::chunked::ChunkedDecoder::default()
            .decode(events.as_bytes(), &mut decoded, u64::MAX)
            .unwrap();
        tap.feed(&decoded, &mut Vec::new());
        assert!(tap.ended_well());
        assert!(
            tap.usage.output_tokens.is_some_and(|n| n > 0),
            "{:?}",
            tap.usage
        );
        // The whole answer is the streamed one's last response object.
        let whole = String::from_utf8(respond(
            &MockRequest {
                path: "/v1/responses",
                // As long as the streamed request: the same input tokens.
                body: br#"{"model":"x","stream":false,"input":"hi"}"#,
            },
            1,
        ))
        .unwrap();
        let body = &whole[whole.find("\r\n\r\n").unwrap() + 4..];
        let last = decoded
            .rsplit(|&b| b == b'\n')
            .find(|l| l.starts_with(b"data: "))
            .unwrap();
        let last = std::str::from_utf8(&last[6..]).unwrap();
        assert!(
            last.contains(&format!("\"response\":{body}")),
            "{last}\n{body}"
        );
    }

    #[test]
    fn streams_end_with_usage_then_done_when_asked() {
        let body =
            br#"{"model":"x","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#;
        let s = String::from_utf8(respond(
            &MockRequest {
                path: "/v1/chat/completions",
                body,
            },
            1,
        ))
        .unwrap();
        let usage_at = s.find("\"choices\":[],\"usage\":{").unwrap();
        assert!(usage_at < s.find("[DONE]").unwrap());
        assert!(s.ends_with("0\r\n\r\n"));
    }
}
