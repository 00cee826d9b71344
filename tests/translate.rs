//! One API over an Anthropic provider: `POST /v1/chat/completions` with
//! `model: "<anthropic provider>/<model>"` goes to aigw-mock's `/v1/messages`
//! in the Messages format and comes back as an OpenAI chat completion, whole
//! and streamed (events translated as they arrive), with tool calls, usage,
//! provider errors in OpenAI shape, a cut stream ending in an error event and
//! no `[DONE]`, and the passthrough route left byte for byte. At 1 and 2 shards.

mod common;

use aigw_loadtest::mock::MockServer;
use common::gateway::newest_log_row;
use common::{Gateway, json, mock};
use simd_json::prelude::*;

/// A gateway with provider `claude` (kind anthropic) at the mock, holding a key.
fn gateway(shards: usize, mock: &MockServer) -> Gateway {
    let base = mock.base_url();
    let base = base.trim_end_matches("/v1");
    Gateway::with(shards)
        .toml(&format!(
            "[providers.claude]\nkind = \"anthropic\"\nbase_url = \"{base}\"\napi_key = \"sk-ant-test\"\ndefault_max_tokens = 321\n"
        ))
        .start()
}

const WEATHER_TOOL: &str = r#"[{"type":"function","function":{"name":"get_weather","description":"Weather in a city","parameters":{"type":"object","properties":{"city":{"type":"string"},"days":{"type":"integer"}},"required":["city"]}}}]"#;

fn chat(extra: &str) -> String {
    format!(
        r#"{{"model":"claude/claude-test","messages":[{{"role":"system","content":"be brief"}},{{"role":"user","content":"hello"}}]{extra}}}"#
    )
}

fn a_chat_completion_is_translated_both_ways(shards: usize) {
    let mock = mock();
    let gw = gateway(shards, &mock);
    let r = gw.client().post("/v1/chat/completions", &[], &chat(""));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "claude-test");
    let text = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(text, aigw_loadtest::mock::reply_text(64));
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    assert_eq!(v["usage"]["completion_tokens"], 16);
    assert_eq!(r.header("aigw-provider"), Some("claude"));

    // What the provider saw: the Messages API, its headers, a default cap.
    let seen = mock.captured();
    let req = seen.last().unwrap();
    assert_eq!(req.path, "/v1/messages");
    assert_eq!(req.header("x-api-key"), Some("sk-ant-test"));
    assert_eq!(req.header("anthropic-version"), Some("2023-06-01"));
    assert!(req.header("authorization").is_none());
    let body = req.json().unwrap();
    assert_eq!(body["max_tokens"], 321);
    assert_eq!(body["system"][0]["text"], "be brief");
    assert_eq!(body["messages"][0]["role"], "user");

    // Streamed: the same text as chunks, usage when asked, then [DONE].
    let s = gw.client().post(
        "/v1/chat/completions",
        &[("x-mock-chunks", "5")],
        &chat(r#","stream":true,"stream_options":{"include_usage":true}"#),
    );
    assert_eq!(s.status, 200);
    assert!(
        s.header("content-type")
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert_eq!(s.stream_content(), text);
    let data = s.sse_data();
    assert_eq!(data.last().unwrap(), "[DONE]");
    let usage = json(data[data.len() - 2].as_bytes());
    assert_eq!(usage["usage"]["completion_tokens"], 16);
    let finish = json(data[data.len() - 3].as_bytes());
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");

    // The log row carries Anthropic's token counts.
    let row = newest_log_row(&gw.admin_socket);
    assert_eq!(row["provider"], "claude");
    assert_eq!(row["tokens_out"], 16);
}

fn tool_calls_survive_translation_whole_and_streamed(shards: usize) {
    let mock = mock();
    let gw = gateway(shards, &mock);
    let forced = format!(
        r#","tools":{WEATHER_TOOL},"tool_choice":{{"type":"function","function":{{"name":"get_weather"}}}}"#
    );
    let r = gw
        .client()
        .post("/v1/chat/completions", &[], &chat(&forced));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let id = call["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("toolu_"));
    let args = call["function"]["arguments"].as_str().unwrap().to_string();
    let parsed = json(args.as_bytes());
    assert_eq!(parsed["days"], 1);
    // The provider got the tool as Anthropic's and was forced to call it.
    let body = mock.captured().last().unwrap().json().unwrap();
    assert_eq!(body["tools"][0]["input_schema"]["required"][0], "city");
    assert_eq!(body["tool_choice"]["type"], "tool");

    // Streamed: the arguments arrive in fragments that join to the same JSON.
    let s = gw.client().post(
        "/v1/chat/completions",
        &[],
        &chat(&format!(r#"{forced},"stream":true"#)),
    );
    assert_eq!(s.status, 200);
    let mut streamed = String::new();
    let mut fragments = 0;
    let mut first_id = None;
    for d in s.sse_data().iter().filter(|d| *d != "[DONE]") {
        let e = json(d.as_bytes());
        if let Some(c) = e["choices"][0]["delta"].get("tool_calls") {
            if first_id.is_none() {
                first_id = c[0]["id"].as_str().map(str::to_string);
            }
            streamed.push_str(c[0]["function"]["arguments"].as_str().unwrap());
            fragments += 1;
        }
    }
    assert!(fragments >= 3, "{fragments} fragments");
    assert_eq!(json(streamed.as_bytes()), parsed);
    assert!(first_id.unwrap().starts_with("toolu_"));

    // The tool's result goes back as a tool_result with the same id.
    let follow = format!(
        r#"{{"model":"claude/claude-test","messages":[{{"role":"user","content":"weather?"}},{{"role":"assistant","content":null,"tool_calls":[{{"id":"{id}","type":"function","function":{{"name":"get_weather","arguments":{}}}}}]}},{{"role":"tool","tool_call_id":"{id}","content":"sunny"}}],"tools":{WEATHER_TOOL}}}"#,
        serde_json_string(&args)
    );
    let r = gw.client().post("/v1/chat/completions", &[], &follow);
    assert_eq!(r.status, 200, "{}", r.text());
    let body = mock.captured().last().unwrap().json().unwrap();
    assert_eq!(body["messages"][1]["content"][0]["type"], "tool_use");
    assert_eq!(body["messages"][1]["content"][0]["id"], id.as_str());
    assert_eq!(body["messages"][1]["content"][0]["input"]["days"], 1);
    assert_eq!(
        body["messages"][2]["content"][0]["tool_use_id"],
        id.as_str()
    );
}

/// `s` as a JSON string literal.
fn serde_json_string(s: &str) -> String {
    let v = simd_json::OwnedValue::from(s);
    simd_json::to_string(&v).unwrap()
}

fn provider_errors_and_cut_streams_reach_the_client_in_openai_shape(shards: usize) {
    let mock = mock();
    let gw = gateway(shards, &mock);
    let r = gw.client().post(
        "/v1/chat/completions",
        &[("x-mock-error", "429"), ("x-mock-retry-after", "7")],
        &chat(""),
    );
    assert_eq!(r.status, 429);
    assert_eq!(r.header("aigw-error-source"), Some("provider"));
    assert_eq!(r.header("retry-after"), Some("7"));
    let v = r.json();
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Rate limit exceeded (mock)")
    );

    // A whole answer cut off is the provider's failure, a 502: a translated
    // answer goes out only once whole, so the client was sent nothing.
    let r = gw.client().post(
        "/v1/chat/completions",
        &[("x-mock-error", "cut")],
        &chat(""),
    );
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.complete);
    assert_eq!(r.header("aigw-error-source"), Some("provider"));
    assert!(r.text().contains("cut off"), "{}", r.text());

    // A stream cut after its first events ends with an error event, no [DONE].
    let s = gw.client().post(
        "/v1/chat/completions",
        &[("x-mock-error", "cut"), ("x-mock-chunks", "6")],
        &chat(r#","stream":true"#),
    );
    let data = s.sse_data();
    assert!(!data.iter().any(|d| d == "[DONE]"), "{data:?}");
    // Some text arrived, then a typed error.
    assert!(!s.stream_content().is_empty());
    let last = json(data.last().unwrap().as_bytes());
    assert_eq!(last["error"]["code"], "stream_truncated", "{data:?}");

    // A 200 stream whose only event is an error passes as an OpenAI error event.
    let s = gw.client().post(
        "/v1/chat/completions",
        &[("x-mock-error", "stream-error")],
        &chat(r#","stream":true"#),
    );
    let data = s.sse_data();
    assert_eq!(data.len(), 1, "{data:?}");
    assert_eq!(
        json(data[0].as_bytes())["error"]["type"],
        "overloaded_error"
    );

    // What has no Anthropic counterpart is refused before anything is sent.
    let before = mock.requests_seen();
    let r = gw
        .client()
        .post("/v1/chat/completions", &[], &chat(r#","n":2"#));
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "untranslatable_request");
    let r = gw.client().post(
        "/v1/embeddings",
        &[],
        r#"{"model":"claude/claude-test","input":"x"}"#,
    );
    assert_eq!(r.status, 400);
    assert_eq!(mock.requests_seen(), before);
}

fn passthrough_to_anthropic_stays_byte_for_byte(shards: usize) {
    let mock = mock();
    let gw = gateway(shards, &mock);
    let body = r#"{"model":"claude-test","max_tokens":10,"messages":[{"role":"user","content":[{"type":"text","text":"hi","cache_control":{"type":"ephemeral"}}]}]}"#;
    let r = gw.client().post(
        "/claude/v1/messages",
        &[("anthropic-version", "2023-06-01")],
        body,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["type"], "message");
    let seen = mock.captured();
    let req = seen.last().unwrap();
    assert_eq!(req.body, body.as_bytes());
    assert_eq!(req.header("x-api-key"), Some("sk-ant-test"));
    // The stream passes as Anthropic's events.
    let s = gw.client().post(
        "/claude/v1/messages",
        &[("anthropic-version", "2023-06-01")],
        &body.replace("\"max_tokens\":10", "\"max_tokens\":10,\"stream\":true"),
    );
    assert!(s.text().contains("event: message_stop"));
}

/// `/v1/messages` (Anthropic-shaped in) to an OpenAI-compatible provider
/// and to an Anthropic one.
fn the_messages_api_reaches_any_provider(shards: usize) {
    let (openai, claude) = (mock(), mock());
    let base = claude.base_url();
    let gw = Gateway::with(shards)
        .provider("up", &openai.base_url(), "")
        .toml(&format!(
            "[providers.claude]\nkind = \"anthropic\"\nbase_url = \"{}\"\napi_key = \"k\"\n",
            base.trim_end_matches("/v1")
        ))
        .start();
    let msg = |model: &str, extra: &str| {
        format!(
            r#"{{"model":"{model}","max_tokens":50,"system":"be brief","messages":[{{"role":"user","content":"hello"}}]{extra}}}"#
        )
    };
    let headers = [
        ("anthropic-version", "2023-06-01"),
        ("x-api-key", "client-key"),
    ];
    let r = gw
        .client()
        .post("/v1/messages", &headers, &msg("up/gpt-x", ""));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["type"], "message");
    assert_eq!(
        v["content"][0]["text"],
        aigw_loadtest::mock::reply_text(64).as_str()
    );
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["usage"]["output_tokens"], 16);
    let seen = openai.captured();
    assert_eq!(seen[0].path, "/v1/chat/completions");
    let body = seen[0].json().unwrap();
    assert_eq!(body["messages"][0]["role"], "system");
    assert_eq!(body["model"], "gpt-x");

    // Streamed: Anthropic's events, the text in text deltas.
    let s = gw.client().post(
        "/v1/messages",
        &headers,
        &msg("up/gpt-x", r#","stream":true"#),
    );
    assert_eq!(s.status, 200);
    let text = s.text();
    let mut joined = String::new();
    for d in s.sse_data() {
        let e = json(d.as_bytes());
        if e["type"] == "content_block_delta" {
            joined.push_str(e["delta"]["text"].as_str().unwrap());
        }
    }
    assert_eq!(joined, aigw_loadtest::mock::reply_text(64));
    assert!(text.contains("event: message_stop"));
    assert!(text.contains("\"output_tokens\":16"));

    // A stream the provider ends cleanly but short of its [DONE]: Anthropic's
    // error event, no message_stop, and a record that says it was cut.
    let s = gw.client().post(
        "/v1/messages",
        &[("x-mock-error", "short")],
        &msg("up/gpt-x", r#","stream":true"#),
    );
    assert_eq!(s.status, 200);
    assert!(s.text().contains("event: error"), "{}", s.text());
    assert!(!s.text().contains("event: message_stop"), "{}", s.text());
    let id = s.header("aigw-request-id").unwrap();
    let row = gw.log_rows_at_least(1, &format!("id={id}")).remove(0);
    assert_eq!(
        row["outcome"].as_str(),
        Some("aborted_by_provider"),
        "{row}"
    );
    assert_eq!(
        row["error_code"].as_str(),
        Some("stream_truncated"),
        "{row}"
    );

    // A whole answer cut short is a 502, not a 200 with no body.
    let r = gw.client().post(
        "/v1/messages",
        &[("x-mock-error", "cut")],
        &msg("up/gpt-x", ""),
    );
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.header("aigw-error-source"), Some("provider"));
    // aigw's own errors to this client are in Anthropic's shape, its code kept.
    let v = r.json();
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], "api_error", "{v}");
    assert_eq!(v["error"]["code"], "upstream_bad_response", "{v}");
    let r = gw
        .client()
        .post("/v1/messages", &headers, &msg("nowhere/gpt-x", ""));
    assert_eq!(r.status, 400, "{}", r.text());
    let v = r.json();
    assert_eq!(
        (v["type"].as_str(), v["error"]["type"].as_str()),
        (Some("error"), Some("invalid_request_error")),
        "{v}"
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("nowhere"),
        "{v}"
    );

    // A stream cut short ends with Anthropic's own error event.
    let s = gw.client().post(
        "/v1/messages",
        &[("x-mock-error", "cut"), ("x-mock-chunks", "6")],
        &msg("up/gpt-x", r#","stream":true"#),
    );
    let text = s.text();
    assert!(!text.contains("message_stop"), "{text}");
    assert!(
        text.trim_end().ends_with("}}") && text.contains("event: error"),
        "{text}"
    );

    // Tools: a forced tool comes back as a tool_use block.
    let tools = r#","tools":[{"name":"get_weather","input_schema":{"type":"object","properties":{"city":{"type":"string"}}}}],"tool_choice":{"type":"tool","name":"get_weather"}"#;
    let r = gw
        .client()
        .post("/v1/messages", &headers, &msg("up/gpt-x", tools));
    let v = r.json();
    assert_eq!(v["stop_reason"], "tool_use");
    assert_eq!(v["content"][0]["name"], "get_weather");
    assert_eq!(v["content"][0]["input"]["city"], "mock city");
    // A number past 64 bits (valid JSON) passes as written, as it does
    // untranslated.
    let big = r#","tools":[{"name":"f","input_schema":{"type":"object","properties":{"id":{"type":"integer","maximum":18446744073709551616}}}}]"#;
    let r = gw
        .client()
        .post("/v1/messages", &headers, &msg("up/gpt-x", big));
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = openai.captured().pop().unwrap();
    assert!(
        String::from_utf8_lossy(&sent.body).contains(r#""maximum":18446744073709551616"#),
        "{}",
        String::from_utf8_lossy(&sent.body)
    );

    // To an Anthropic provider the request goes as it is, its model rewritten.
    let r = gw
        .client()
        .post("/v1/messages", &headers, &msg("claude/claude-x", ""));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["type"], "message");
    let seen = claude.captured();
    assert_eq!(seen[0].path, "/v1/messages");
    assert_eq!(seen[0].json().unwrap()["model"], "claude-x");
    assert_eq!(seen[0].header("x-api-key"), Some("k"));
    assert_eq!(seen[0].header("anthropic-version"), Some("2023-06-01"));
    // The client's own API version goes as it asked; without one, aigw's.
    let r = gw.client().post(
        "/v1/messages",
        &[("anthropic-version", "2026-10-21")],
        &msg("claude/claude-x", r#","temperature":0.5"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = gw.client().post(
        "/v1/messages",
        &[],
        &msg("claude/claude-x", r#","top_k":3"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = claude.captured();
    assert_eq!(seen.len(), 3);
    let versions: Vec<_> = seen[1..]
        .iter()
        .map(|s| s.header("anthropic-version").map(str::to_string))
        .collect();
    assert_eq!(
        versions,
        [
            Some("2026-10-21".to_string()),
            Some("2023-06-01".to_string())
        ]
    );
}

/// `model: "<google provider>/<model>"` goes to Gemini's generateContent
/// and comes back as a chat completion; Azure gets deployment URLs.
fn gemini_and_azure_speak_their_own_formats(shards: usize) {
    let (g, az) = (mock(), mock());
    let gw = Gateway::with(shards)
        .toml(&format!(
            "[providers.gem]\nkind = \"google\"\nbase_url = \"{}\"\napi_key = \"g-key\"\n\
             [providers.az]\nkind = \"azure\"\nbase_url = \"{}\"\napi_key = \"az-key\"\n",
            g.base_url().trim_end_matches("/v1"),
            az.base_url()
        ))
        .start();
    let chat = |model: &str, extra: &str| {
        format!(
            r#"{{"model":"{model}","messages":[{{"role":"system","content":"be brief"}},{{"role":"user","content":"hello"}}]{extra}}}"#
        )
    };
    let r = gw
        .client()
        .post("/v1/chat/completions", &[], &chat("gem/gemini-test", ""));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let text = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(text, aigw_loadtest::mock::reply_text(64));
    assert_eq!(v["usage"]["completion_tokens"], 16);
    let seen = g.captured();
    assert_eq!(seen[0].path, "/v1beta/models/gemini-test:generateContent");
    assert_eq!(seen[0].header("x-goog-api-key"), Some("g-key"));
    let body = seen[0].json().unwrap();
    assert_eq!(body["systemInstruction"]["parts"][0]["text"], "be brief");
    assert_eq!(body["contents"][0]["role"], "user");

    let s = gw.client().post(
        "/v1/chat/completions",
        &[("x-mock-chunks", "4")],
        &chat(
            "gem/gemini-test",
            r#","stream":true,"stream_options":{"include_usage":true}"#,
        ),
    );
    assert_eq!(s.stream_content(), text);
    let data = s.sse_data();
    assert_eq!(data.last().unwrap(), "[DONE]");
    assert_eq!(
        json(data[data.len() - 2].as_bytes())["usage"]["completion_tokens"],
        16
    );
    assert_eq!(
        g.captured().last().unwrap().path,
        "/v1beta/models/gemini-test:streamGenerateContent?alt=sse"
    );
    // The log has Gemini's usageMetadata.
    let row = newest_log_row(&gw.admin_socket);
    assert_eq!(row["tokens_out"], 16);

    // A forced tool: a function call comes back as a tool call, and its
    // result goes back named after the function.
    let forced = format!(
        r#","tools":{WEATHER_TOOL},"tool_choice":{{"type":"function","function":{{"name":"get_weather"}}}}"#
    );
    let r = gw.client().post(
        "/v1/chat/completions",
        &[],
        &chat("gem/gemini-test", &forced),
    );
    let v = r.json();
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(
        json(call["function"]["arguments"].as_str().unwrap().as_bytes())["days"],
        1
    );
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    let s = gw.client().post(
        "/v1/chat/completions",
        &[],
        &chat("gem/gemini-test", &format!(r#"{forced},"stream":true"#)),
    );
    let streamed: Vec<_> = s
        .sse_data()
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| json(d.as_bytes()))
        .filter(|e| e["choices"][0]["delta"].get("tool_calls").is_some())
        .collect();
    assert_eq!(
        streamed[0]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );

    // Errors in Google's shape come back in OpenAI's.
    let r = gw.client().post(
        "/v1/chat/completions",
        &[("x-mock-error", "429")],
        &chat("gem/gemini-test", ""),
    );
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["type"], "RESOURCE_EXHAUSTED");
    let s = gw.client().post(
        "/v1/chat/completions",
        &[("x-mock-error", "cut"), ("x-mock-chunks", "6")],
        &chat("gem/gemini-test", r#","stream":true"#),
    );
    let data = s.sse_data();
    assert!(!data.iter().any(|d| d == "[DONE]"));
    assert_eq!(
        json(data.last().unwrap().as_bytes())["error"]["code"],
        "stream_truncated"
    );
    // A pass-through client of Gemini's own API gets Gemini's error shape.
    let s = gw.client().post(
        "/gem/v1beta/models/gemini-test:streamGenerateContent?alt=sse",
        &[("x-mock-error", "cut"), ("x-mock-chunks", "6")],
        r#"{"contents":[{"role":"user","parts":[{"text":"hello"}]}]}"#,
    );
    let data = s.sse_data();
    let last = json(data.last().unwrap().as_bytes());
    assert_eq!(
        (
            last["error"]["code"].as_u64(),
            last["error"]["status"].as_str()
        ),
        (Some(503), Some("UNAVAILABLE")),
        "{data:?}"
    );
    // The client's query does not reach a path aigw builds from the model.
    let r = gw.client().post(
        "/v1/chat/completions?alt=json&key=x",
        &[],
        &chat("gem/gemini-test", r#","stream":true"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        g.captured().last().unwrap().path,
        "/v1beta/models/gemini-test:streamGenerateContent?alt=sse"
    );
    // A model name that would change the URL is refused.
    let r = gw
        .client()
        .post("/v1/chat/completions", &[], &chat("gem/x?key=1", ""));
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "invalid_model");

    // The anthropic SDK's format reaches Gemini too (two translations).
    let msg = r#"{"model":"gem/gemini-test","max_tokens":50,"messages":[{"role":"user","content":"hello"}]}"#;
    let r = gw.client().post("/v1/messages", &[], msg);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"][0]["text"], text.as_str());
    assert_eq!(v["usage"]["output_tokens"], 16);
    let s = gw.client().post(
        "/v1/messages",
        &[("x-mock-chunks", "3")],
        &msg.replace("\"max_tokens\":50", "\"max_tokens\":50,\"stream\":true"),
    );
    let mut joined = String::new();
    for d in s.sse_data() {
        let e = json(d.as_bytes());
        if e["type"] == "content_block_delta" {
            joined.push_str(e["delta"]["text"].as_str().unwrap());
        }
    }
    assert_eq!(joined, text);
    assert!(s.text().contains("event: message_stop"));
    let forced = r#"{"model":"gem/gemini-test","max_tokens":50,"messages":[{"role":"user","content":"weather?"}],"tools":[{"name":"get_weather","input_schema":{"type":"object","properties":{"city":{"type":"string"}}}}],"tool_choice":{"type":"tool","name":"get_weather"}}"#;
    let v = gw.client().post("/v1/messages", &[], forced).json();
    assert_eq!(v["stop_reason"], "tool_use");
    assert_eq!(v["content"][0]["input"]["city"], "mock city");

    // Azure: the deployment in the path, api-version in the query, api-key.
    let r = gw
        .client()
        .post("/v1/chat/completions", &[], &chat("az/my-deploy", ""));
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = az.captured();
    assert_eq!(
        seen[0].path,
        "/v1/deployments/my-deploy/chat/completions?api-version=2024-10-21"
    );
    assert_eq!(seen[0].header("api-key"), Some("az-key"));
    let r = gw.client().post(
        "/v1/chat/completions?api-version=1999-01-01",
        &[],
        &chat("az/my-deploy", ""),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        az.captured().last().unwrap().path,
        "/v1/deployments/my-deploy/chat/completions?api-version=2024-10-21"
    );
}

/// A translated request with the cache on: a hit answers with what the
/// first one got, translated back, and asks no provider; what Anthropic's
/// format cannot say is still a 400, and stores nothing.
fn translated_answers_are_cached_and_untranslatable_ones_refused(shards: usize) {
    let claude = mock();
    let base = claude.base_url();
    let gw = Gateway::with(shards)
        .toml(&format!(
            "[providers.claude]\nkind = \"anthropic\"\nbase_url = \"{}\"\napi_key = \"k\"\n\
             [cache]\nenabled = true\nsize = \"16MiB\"\nmax_entry = \"1MiB\"\n",
            base.trim_end_matches("/v1")
        ))
        .start();
    let first = gw.client().post("/v1/chat/completions", &[], &chat(""));
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.header("aigw-cache-status"), Some("MISS"));
    assert_eq!(claude.captured()[0].path, "/v1/messages");
    let deadline = std::time::Instant::now() + common::WAIT;
    loop {
        let again = gw.client().post("/v1/chat/completions", &[], &chat(""));
        assert_eq!(again.status, 200, "{}", again.text());
        if again.header("aigw-cache-status") == Some("HIT") {
            assert_eq!(again.body, first.body, "the answer as first translated");
            break;
        }
        // At 2 shards the answer may still be on its way to its partition.
        assert!(std::time::Instant::now() < deadline, "never a hit");
    }
    let seen = claude.requests_seen();
    let r = gw
        .client()
        .post("/v1/chat/completions", &[], &chat(r#","n":2"#));
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.error_code(), "untranslatable_request");
    assert_eq!(r.header("aigw-error-source"), Some("gateway"));
    let r = gw
        .client()
        .post("/v1/chat/completions", &[], &chat(r#","n":2"#));
    assert_eq!(r.error_code(), "untranslatable_request");
    assert_eq!(
        claude.requests_seen(),
        seen,
        "refused requests reach no provider"
    );
}

/// A 200 whose body is no reply of its kind (broken JSON, an empty body):
/// the client gets a 502 in its own format saying it is the provider's
/// fault, the record counts a provider error, and nothing is cached.
fn an_unreadable_answer_is_the_providers_502_in_the_clients_format(shards: usize) {
    const BROKEN: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 36\r\n\r\n{\"id\":\"msg_1\",\"type\":\"message\", junk";
    const EMPTY: &[u8] =
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n";
    let (broken, empty) = (
        common::FixedUpstream::start(BROKEN),
        common::FixedUpstream::start(EMPTY),
    );
    let base = |u: &common::FixedUpstream| u.base_url().trim_end_matches("/v1").to_string();
    let gw = Gateway::with(shards)
        .toml(&format!(
            "[providers.claude]\nkind = \"anthropic\"\nbase_url = \"{}\"\napi_key = \"k\"\n\
             [providers.hollow]\nkind = \"anthropic\"\nbase_url = \"{}\"\napi_key = \"k\"\n\
             [providers.up]\nkind = \"openai\"\nbase_url = \"{}\"\napi_key = \"k\"\n\
             [cache]\nenabled = true\nsize = \"16MiB\"\nmax_entry = \"1MiB\"\n",
            base(&broken),
            base(&empty),
            broken.base_url(),
        ))
        .start();
    for (model, quoted) in [
        ("claude/claude-test", "junk"),
        ("hollow/claude-test", "(an empty body)"),
    ] {
        // Twice: the second is no cache hit of the first.
        for _ in 0..2 {
            let r = gw.client().post(
                "/v1/chat/completions",
                &[],
                &chat("").replace("claude/claude-test", model),
            );
            assert_eq!(r.status, 502, "{model}: {}", r.text());
            assert_eq!(r.header("aigw-error-source"), Some("provider"), "{model}");
            // It names who answered, as the provider's own errors do.
            assert_eq!(
                r.header("aigw-provider"),
                model.split('/').next(),
                "{model}"
            );
            assert_eq!(r.header("aigw-model"), Some("claude-test"), "{model}");
            assert_eq!(r.error_code(), "upstream_bad_response", "{model}");
            assert!(
                r.text()
                    .contains("HTTP 200 answer is not a reply aigw can translate")
                    && r.text().contains(quoted),
                "{model}: {}",
                r.text()
            );
            assert_ne!(r.header("aigw-cache-status"), Some("HIT"), "{model}");
        }
    }
    // An Anthropic client of an OpenAI provider: Anthropic's error shape.
    let m = gw.client().post(
        "/v1/messages",
        &[("anthropic-version", "2023-06-01")],
        r#"{"model":"up/gpt-x","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#,
    );
    assert_eq!(m.status, 502, "{}", m.text());
    assert_eq!(m.json()["type"], "error", "{}", m.text());
    assert_eq!(m.header("aigw-error-source"), Some("provider"));
    let row = gw.log_rows_at_least(5, "").remove(0);
    assert_eq!(row["status"].as_u64(), Some(502), "{row}");
    assert_eq!(row["error_source"].as_str(), Some("provider"), "{row}");
    assert_eq!(gw.stats()["errors"]["provider"].as_u64(), Some(5));
}

/// A translated stream whose provider sends an event that is not JSON ends
/// there with an error event (its text is not dropped without a word), and
/// its record counts the provider's failure.
fn a_stream_event_that_is_not_json_ends_the_stream_with_an_error(shards: usize) {
    let events = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude-test\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n\
        event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"lost\"\n\n\
        event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    let up = common::FixedUpstream::event_stream(events);
    let gw = Gateway::with(shards)
        .toml(&format!(
            "[providers.claude]\nkind = \"anthropic\"\nbase_url = \"{}\"\napi_key = \"k\"\n",
            up.base_url().trim_end_matches("/v1")
        ))
        .start();
    let r = gw
        .client()
        .post("/v1/chat/completions", &[], &chat(r#","stream":true"#));
    assert_eq!(r.status, 200, "{}", r.text());
    let data = r.sse_data();
    let last = json(data.last().unwrap().as_bytes());
    assert_eq!(last["error"]["code"], "upstream_bad_response", "{data:?}");
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("a stream event that is not JSON"),
        "{data:?}"
    );
    assert!(!data.iter().any(|d| d == "[DONE]"), "{data:?}");
    let row = gw.log_rows_at_least(1, "").remove(0);
    assert_eq!(row["error_source"].as_str(), Some("provider"), "{row}");
    assert_eq!(
        row["error_code"].as_str(),
        Some("upstream_bad_response"),
        "{row}"
    );
    assert_eq!(
        row["outcome"].as_str(),
        Some("aborted_by_provider"),
        "{row}"
    );
}

at_1_and_2_shards!(
    an_unreadable_answer_is_the_providers_502_in_the_clients_format,
    a_stream_event_that_is_not_json_ends_the_stream_with_an_error,
    translated_answers_are_cached_and_untranslatable_ones_refused,
    gemini_and_azure_speak_their_own_formats,
    the_messages_api_reaches_any_provider,
    a_chat_completion_is_translated_both_ways,
    tool_calls_survive_translation_whole_and_streamed,
    provider_errors_and_cut_streams_reach_the_client_in_openai_shape,
    passthrough_to_anthropic_stays_byte_for_byte,
);
