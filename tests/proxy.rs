//! The proxy path end to end: the three URL layouts, JSON and streams, what the
//! provider receives (body, headers, keys), what the client gets back (replies,
//! added headers, errors), pipelining, upstream reuse and usage accounting.
//! Every scenario runs against the real `aigw` binary at 1 and 2 shards.

mod common;

use aigw_loadtest::mock::{MockServer, reply_text};
use common::{Gateway, Response, json, mock};
use simd_json::prelude::*;
use std::time::{Duration, Instant};

/// Reply length of the mock's default answer.
const REPLY_BYTES: usize = 64;

fn gateway_for(mock: &MockServer, shards: usize) -> Gateway {
    Gateway::with(shards)
        .provider("up", &mock.base_url(), "")
        .start()
}

fn chat(model: &str, stream: bool) -> String {
    format!(
        r#"{{"model":"{model}","messages":[{{"role":"user","content":"hello"}}],"stream":{stream}}}"#
    )
}

/// The reply text of a JSON chat completion.
fn content(r: &Response) -> String {
    let v = r.json();
    v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn unified_chat_completion_returns_the_providers_reply(shards: usize) {
    let mock = mock();
    let gw = gateway_for(&mock, shards);

    let r = gw
        .client()
        .post("/v1/chat/completions", &[], &chat("up/gpt-x", false));

    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(content(&r), reply_text(REPLY_BYTES));
    assert_eq!(r.header("aigw-provider"), Some("up"));
    assert_eq!(r.header("aigw-model"), Some("gpt-x"));
    assert!(r.header("aigw-request-id").is_some_and(|id| !id.is_empty()));
    let timing = r.header("server-timing").unwrap_or_default();
    assert!(
        timing.contains("gateway;dur=") && timing.contains("upstream;dur="),
        "{timing}"
    );
    let seen = mock.captured();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("POST", "/v1/chat/completions")
    );
    let body = json(&seen[0].body);
    assert_eq!(body["model"], "gpt-x");
    assert_eq!(body["messages"][0]["content"], "hello");
}

fn every_url_layout_round_trips_json_and_streams(shards: usize) {
    let mock = mock();
    let gw = gateway_for(&mock, shards);
    let mut client = gw.client();
    // (layout, path, model as the client writes it)
    let layouts = [
        ("unified", "/v1/chat/completions", "up/gpt-x"),
        ("passthrough", "/up/chat/completions", "gpt-x"),
        (
            "cloudflare passthrough",
            "/v1/acct/gw/up/chat/completions",
            "gpt-x",
        ),
        (
            "cloudflare compat",
            "/v1/acct/gw/compat/chat/completions",
            "up/gpt-x",
        ),
    ];
    for (layout, path, model) in layouts {
        for stream in [false, true] {
            mock.reset();
            let r = client.post(path, &[], &chat(model, stream));
            let what = format!("{layout}, stream={stream}");

            assert_eq!(r.status, 200, "{what}: {}", r.text());
            assert!(r.complete, "{what}: body ended early");
            if stream {
                assert!(
                    r.header("content-type")
                        .unwrap_or_default()
                        .starts_with("text/event-stream"),
                    "{what}"
                );
                assert_eq!(r.stream_content(), reply_text(REPLY_BYTES), "{what}");
                assert_eq!(
                    r.sse_data().last().map(String::as_str),
                    Some("[DONE]"),
                    "{what}"
                );
            } else {
                assert_eq!(content(&r), reply_text(REPLY_BYTES), "{what}");
            }
            let seen = mock.captured();
            assert_eq!(seen.len(), 1, "{what}");
            assert_eq!(seen[0].path, "/v1/chat/completions", "{what}");
            assert_eq!(json(&seen[0].body)["model"], "gpt-x", "{what}");
        }
    }
}

fn unified_endpoints_map_to_the_providers_paths(shards: usize) {
    let mock = mock();
    let gw = gateway_for(&mock, shards);
    let mut client = gw.client();

    let r = client.post(
        "/v1/completions",
        &[],
        r#"{"model":"up/davinci","prompt":"hi"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["choices"][0]["text"],
        reply_text(REPLY_BYTES).as_str()
    );

    let r = client.post(
        "/v1/embeddings",
        &[],
        r#"{"model":"up/embed-1","input":["a","b"]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"].as_array().map(Vec::len), Some(2));

    // The mock has no Responses API: its 404 comes back as the provider's error.
    let r = client.post("/v1/responses", &[], r#"{"model":"up/gpt-x","input":"hi"}"#);
    assert_eq!(r.status, 404);
    assert_eq!(r.header("aigw-error-source"), Some("provider"));

    let paths: Vec<String> = mock.captured().into_iter().map(|c| c.path).collect();
    assert_eq!(
        paths,
        ["/v1/completions", "/v1/embeddings", "/v1/responses"]
    );
    let models: Vec<String> = mock
        .captured()
        .iter()
        .map(|c| {
            json(&c.body)["model"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(models, ["davinci", "embed-1", "gpt-x"]);

    // A streamed Responses request goes as sent: that API reports usage in
    // its last event and refuses `stream_options.include_usage`, which
    // aigw adds to streamed chat and completions requests only.
    let body = r#"{"model":"up/gpt-x","input":"hi","stream":true}"#;
    assert_eq!(client.post("/v1/responses", &[], body).status, 404);
    let sent = mock.captured().pop().unwrap();
    assert_eq!(sent.path, "/v1/responses");
    assert_eq!(
        String::from_utf8_lossy(&sent.body),
        r#"{"model":"gpt-x","input":"hi","stream":true}"#
    );
    let body = r#"{"model":"up/davinci","prompt":"hi","stream":true}"#;
    assert_eq!(client.post("/v1/completions", &[], body).status, 200);
    let sent = json(&mock.captured().pop().unwrap().body);
    assert_eq!(sent["stream_options"]["include_usage"], true);
}

fn builtin_mock_echo_repeats_the_last_user_message(shards: usize) {
    let gw = Gateway::with(shards).start();
    let body = r#"{"model":"mock/echo","messages":[{"role":"user","content":"first"},{"role":"assistant","content":"x"},{"role":"user","content":"say this back"}]}"#;
    let r = gw.client().post("/v1/chat/completions", &[], body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(content(&r), "say this back");
}

fn first_stream_event_arrives_before_the_provider_finishes(shards: usize) {
    let mock = mock();
    let gw = gateway_for(&mock, shards);
    let interval = Duration::from_millis(150);
    let chunks = 6;
    // The mock sends its first event at once and the last 5 x 150 ms later.
    let provider_takes = interval * (chunks - 1);

    let sent = Instant::now();
    let r = gw.client().post(
        "/v1/chat/completions",
        &[("x-mock-chunks", "6"), ("x-mock-chunk-interval-ms", "150")],
        &chat("up/gpt-x", true),
    );

    assert_eq!(r.status, 200);
    assert_eq!(r.stream_content(), reply_text(REPLY_BYTES));
    assert_eq!(r.event_times.len(), r.sse_data().len());
    let first = r.event_times[0];
    let last = *r.event_times.last().unwrap();
    assert!(
        first - sent < provider_takes / 2,
        "first event after {:?}",
        first - sent
    );
    // Relayed as they came: the client saw them spread out as the mock sent them.
    assert!(
        last - first >= provider_takes * 2 / 3,
        "events arrived within {:?} of each other",
        last - first
    );
}

/// Makes a mock reply comparable across requests: `"id"` and `"created"`
/// values differ per answer (a per-shard sequence and the clock), nothing else.
fn normalize(body: &[u8]) -> String {
    let mut out = String::from_utf8_lossy(body).into_owned();
    for (key, end) in [("\"id\":\"", '"'), ("\"created\":", ',')] {
        let mut from = 0;
        while let Some(at) = out[from..].find(key) {
            let start = from + at + key.len();
            let stop = start + out[start..].find(end).expect("value ends");
            out.replace_range(start..stop, "_");
            from = start + 1;
        }
    }
    out
}

fn passthrough_bytes_equal_a_direct_call(shards: usize) {
    let mock = mock();
    let gw = gateway_for(&mock, shards);
    let mut direct = common::Client::connect(mock.addr());
    let mut via = gw.client();
    // Odd spacing, key order and escapes: passthrough must not touch a byte.
    for body in [
        "{ \"messages\" : [{\"role\":\"user\",\"content\":\"h\\u00e9llo \\\"there\\\"\"}],\n  \"model\":\"gpt-x\" , \"temperature\": 0.5 }",
        "{\"model\":\"gpt-x\",\"stream\":true,  \"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
    ] {
        mock.reset();
        let a = direct.post("/v1/chat/completions", &[], body);
        let b = via.post("/up/chat/completions", &[], body);

        assert_eq!((a.status, b.status), (200, 200), "{}", b.text());
        assert!(a.complete && b.complete);
        assert_eq!(normalize(&b.body), normalize(&a.body));
        assert_eq!(b.header("content-type"), a.header("content-type"));
        let seen = mock.captured();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].body, body.as_bytes());
        assert_eq!(seen[1].body, body.as_bytes());
    }
}

fn pipelined_requests_are_answered_in_order(shards: usize) {
    let mock = mock();
    let gw = gateway_for(&mock, shards);
    let mut client = gw.client();
    // The first is the slowest; reply sizes tell the answers apart.
    let mut wire = Vec::new();
    for (latency, bytes) in [("200", "10"), ("0", "20"), ("0", "30")] {
        wire.extend(common::wire::request_bytes(
            "POST",
            "/v1/chat/completions",
            &[
                ("x-mock-latency-ms", latency),
                ("x-mock-reply-bytes", bytes),
            ],
            chat("up/gpt-x", false).as_bytes(),
        ));
    }
    wire.extend(common::wire::request_bytes("GET", "/healthz", &[], b""));
    wire.extend(common::wire::request_bytes(
        "POST",
        "/up/chat/completions",
        &[("x-mock-reply-bytes", "40")],
        chat("gpt-x", true).as_bytes(),
    ));
    client.send(&wire);

    for n in [10, 20, 30] {
        let r = client.read_response();
        assert_eq!(r.status, 200);
        assert_eq!(content(&r), reply_text(n));
    }
    let health = client.read_response();
    assert_eq!(
        (health.status, health.text().as_str()),
        (200, r#"{"status":"ok"}"#)
    );
    let stream = client.read_response();
    assert_eq!(stream.stream_content(), reply_text(40));
    assert!(stream.complete);
    assert_eq!(mock.requests_seen(), 4);
}

fn upstream_connections_are_reused(shards: usize) {
    let mock = mock();
    let gw = gateway_for(&mock, shards);

    let mut client = gw.client();
    for i in 0..20 {
        let stream = i % 2 == 1;
        let r = client.post("/v1/chat/completions", &[], &chat("up/gpt-x", stream));
        assert_eq!(r.status, 200);
        assert!(r.complete);
    }
    for _ in 0..10 {
        let r = gw
            .client()
            .post("/up/chat/completions", &[], &chat("gpt-x", false));
        assert_eq!(r.status, 200);
    }

    assert_eq!(mock.requests_seen(), 30);
    assert!(
        mock.connections_seen() <= shards as u64,
        "{} upstream connections for {shards} shard(s)",
        mock.connections_seen()
    );
    let stats = gw.stats();
    assert_eq!(
        stats["upstream"]["connects"].as_u64(),
        Some(mock.connections_seen())
    );
    assert_eq!(
        stats["upstream"]["reused"].as_u64(),
        Some(30 - mock.connections_seen())
    );
}

fn provider_key_replaces_the_client_authorization(shards: usize) {
    let mock = mock();
    let gw = Gateway::with(shards)
        .provider("up", &mock.base_url(), "")
        .provider("keyed", &mock.base_url(), "api_key = \"sk-gateway\"")
        .start();
    let mut client = gw.client();
    let auth = [("Authorization", "Bearer sk-client")];

    for (path, model) in [
        ("/v1/chat/completions", "keyed/gpt-x"),
        ("/keyed/chat/completions", "gpt-x"),
    ] {
        mock.reset();
        assert_eq!(client.post(path, &auth, &chat(model, false)).status, 200);
        let seen = &mock.captured()[0];
        let auths: Vec<&str> = seen
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("authorization"))
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(auths, ["Bearer sk-gateway"], "{path}");
    }
    for (path, model) in [
        ("/v1/chat/completions", "up/gpt-x"),
        ("/up/chat/completions", "gpt-x"),
    ] {
        mock.reset();
        assert_eq!(client.post(path, &auth, &chat(model, false)).status, 200);
        assert_eq!(
            mock.captured()[0].header("authorization"),
            Some("Bearer sk-client"),
            "{path}"
        );
    }
}

fn anthropic_kind_gets_its_key_as_x_api_key_and_native_paths(shards: usize) {
    let mock = mock();
    // An Anthropic base URL is the host root: the SDK appends /v1/messages itself.
    let root = mock.base_url().trim_end_matches("/v1").to_string();
    let gw = Gateway::with(shards)
        .toml(&format!(
            "[providers.ant]\nkind = \"anthropic\"\nbase_url = \"{root}\"\napi_key = \"sk-ant-gateway\"\n"
        ))
        .start();
    let mut client = gw.client();
    let client_key = [
        ("x-api-key", "sk-ant-client"),
        ("anthropic-version", "2023-06-01"),
    ];

    // Native passthrough: the body is untouched, the key travels as x-api-key.
    let body =
        r#"{"model":"claude-x","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#;
    client.post("/ant/v1/messages", &client_key, body);
    let seen = mock.captured().pop().expect("the provider saw the request");
    assert_eq!(seen.path, "/v1/messages");
    assert_eq!(seen.body, body.as_bytes());
    assert_eq!(seen.header("x-api-key"), Some("sk-ant-gateway"));
    assert_eq!(seen.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(seen.header("authorization"), None);

    // Unified: translated to the Messages API under /v1 of the same root
    // (tests/translate.rs covers the translation itself).
    mock.reset();
    let r = client.post("/v1/chat/completions", &[], &chat("ant/claude-x", false));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["object"], "chat.completion");
    let seen = &mock.captured()[0];
    assert_eq!(seen.path, "/v1/messages");
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(seen.header("x-api-key"), Some("sk-ant-gateway"));
    assert_eq!(seen.header("anthropic-version"), Some("2023-06-01"));
}

fn hop_by_hop_and_gateway_headers_are_not_forwarded(shards: usize) {
    let mock = mock();
    let gw = gateway_for(&mock, shards);
    let headers = [
        ("Connection", "keep-alive, X-Listed"),
        ("X-Listed", "named in Connection"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Trailer", "x-t"),
        ("Upgrade", "h2c"),
        ("Proxy-Connection", "keep-alive"),
        ("Proxy-Authorization", "Basic eDp5"),
        ("Accept-Encoding", "gzip, br"),
        ("aigw-cache-ttl", "60"),
        ("cf-aig-metadata", "{\"a\":1}"),
        ("X-End-To-End", "kept"),
        ("OpenAI-Organization", "org-1"),
    ];
    let body = chat("up/gpt-x", false);
    let r = gw.client().post("/v1/chat/completions", &headers, &body);
    assert_eq!(r.status, 200, "{}", r.text());

    let seen = &mock.captured()[0];
    for gone in [
        "connection",
        "x-listed",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
        "proxy-authorization",
        "accept-encoding",
        "aigw-cache-ttl",
        "cf-aig-metadata",
        "transfer-encoding",
    ] {
        assert_eq!(seen.header(gone), None, "{gone} was forwarded");
    }
    assert_eq!(seen.header("x-end-to-end"), Some("kept"));
    assert_eq!(seen.header("openai-organization"), Some("org-1"));
    assert_eq!(seen.header("host"), Some(mock.addr().to_string().as_str()));
    let hosts = seen
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("host"))
        .count();
    assert_eq!(hosts, 1);
    // The body was rewritten (model prefix stripped), and its length with it.
    assert_eq!(
        seen.header("content-length"),
        Some(seen.body.len().to_string().as_str())
    );
    assert!(seen.body.len() < body.len());
}

fn usage_from_json_and_streams_is_counted_in_stats(shards: usize) {
    let mock = mock();
    let gw = gateway_for(&mock, shards);
    let mut client = gw.client();
    let before = gw.stats();

    assert_eq!(
        client
            .post("/v1/chat/completions", &[], &chat("up/gpt-x", false))
            .status,
        200
    );
    let r = client.post(
        "/v1/chat/completions",
        &[("x-mock-reply-bytes", "100")],
        &chat("up/gpt-x", true),
    );
    assert_eq!(r.status, 200);

    // The mock bills body_len/4 + 1 input tokens and ceil(reply/4) output tokens.
    let seen = mock.captured();
    let input: u64 = seen
        .iter()
        .map(|c| aigw_loadtest::mock::prompt_tokens(c.body.len()))
        .sum();
    let output = aigw_loadtest::mock::completion_tokens(REPLY_BYTES)
        + aigw_loadtest::mock::completion_tokens(100);
    let after = gw.stats();
    let delta = |a: &simd_json::OwnedValue, b: &simd_json::OwnedValue| {
        a.as_u64().unwrap() - b.as_u64().unwrap()
    };
    assert_eq!(
        delta(&after["tokens"]["input"], &before["tokens"]["input"]),
        input
    );
    assert_eq!(
        delta(&after["tokens"]["output"], &before["tokens"]["output"]),
        output
    );
    assert_eq!(
        after["providers"]["up"]["input_tokens"].as_u64(),
        Some(input)
    );
    assert_eq!(
        after["providers"]["up"]["output_tokens"].as_u64(),
        Some(output)
    );
    assert_eq!(after["providers"]["up"]["requests"].as_u64(), Some(2));
    assert_eq!(delta(&after["streams"], &before["streams"]), 1);
    assert_eq!(delta(&after["requests"], &before["requests"]), 2);
    assert_eq!(delta(&after["status"]["2xx"], &before["status"]["2xx"]), 2);
}

fn include_usage_is_injected_and_its_event_hidden_from_the_client(shards: usize) {
    let mock = mock();
    let gw = gateway_for(&mock, shards);
    let mut client = gw.client();

    let r = client.post("/v1/chat/completions", &[], &chat("up/gpt-x", true));
    assert_eq!(r.status, 200);
    assert!(r.complete);
    let sent = json(&mock.captured()[0].body);
    assert_eq!(sent["stream_options"]["include_usage"], true);
    assert_eq!(r.stream_content(), reply_text(REPLY_BYTES));
    let events = r.sse_data();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    for e in events.iter().filter(|e| *e != "[DONE]") {
        let v = json(e.as_bytes());
        assert!(
            !v["choices"].as_array().unwrap().is_empty(),
            "usage-only event reached the client: {e}"
        );
    }

    // A client that asked for usage gets it.
    mock.reset();
    let asked = r#"{"model":"up/gpt-x","messages":[{"role":"user","content":"hello"}],"stream":true,"stream_options":{"include_usage":true}}"#;
    let r = client.post("/v1/chat/completions", &[], asked);
    assert_eq!(r.status, 200);
    let usage_events: Vec<String> = r
        .sse_data()
        .into_iter()
        .filter(|e| e != "[DONE]" && json(e.as_bytes())["choices"].as_array().unwrap().is_empty())
        .collect();
    assert_eq!(usage_events.len(), 1, "{:?}", r.sse_data());
    let usage = json(usage_events[0].as_bytes());
    assert_eq!(
        usage["usage"]["completion_tokens"].as_u64(),
        Some(aigw_loadtest::mock::completion_tokens(REPLY_BYTES))
    );
}

fn http10_requests_work(shards: usize) {
    let mock = mock();
    let gw = gateway_for(&mock, shards);
    let body = chat("up/gpt-x", false);

    // Without keep-alive: answered in HTTP/1.0, then closed.
    let mut client = gw.client();
    client.send(
        format!(
            "POST /v1/chat/completions HTTP/1.0\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    let r = client.read_response();
    assert_eq!((r.minor_version, r.status), (0, 200));
    assert_eq!(content(&r), reply_text(REPLY_BYTES));
    assert!(client.closed_by_peer());

    // With keep-alive: the connection persists and says so.
    let mut client = gw.client();
    let keep = format!(
        "POST /v1/chat/completions HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    client.send(keep.as_bytes());
    let r = client.read_response();
    assert_eq!((r.minor_version, r.status), (0, 200));
    assert_eq!(r.header("connection"), Some("keep-alive"));
    client.send(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(client.read_response().status, 200);

    // A stream to an HTTP/1.0 client cannot be chunked: it ends with the close.
    let mut client = gw.client();
    let stream = chat("up/gpt-x", true);
    client.send(
        format!(
            "POST /v1/chat/completions HTTP/1.0\r\nContent-Length: {}\r\n\r\n{stream}",
            stream.len()
        )
        .as_bytes(),
    );
    let r = client.read_response();
    assert_eq!((r.minor_version, r.status), (0, 200));
    assert_eq!(r.header("transfer-encoding"), None);
    assert_eq!(r.stream_content(), reply_text(REPLY_BYTES));
    assert_eq!(r.sse_data().last().map(String::as_str), Some("[DONE]"));
}

fn expect_100_continue_gets_continue_before_the_body(shards: usize) {
    let mock = mock();
    let gw = gateway_for(&mock, shards);
    let body = chat("up/gpt-x", false);
    let mut client = gw.client();

    client.send(
        format!("POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n", body.len())
            .as_bytes(),
    );
    let interim = client.read_response();
    assert_eq!(interim.status, 100);
    assert_eq!(mock.requests_seen(), 0);
    client.send(body.as_bytes());
    let r = client.read_response();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(content(&r), reply_text(REPLY_BYTES));
    let seen = mock.captured();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("expect"), None);
}

fn healthz_answers_ok(shards: usize) {
    let gw = Gateway::with(shards).start();
    let mut client = gw.client();
    let r = client.get("/healthz");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), r#"{"status":"ok"}"#);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        client.get("/healthz").status,
        200,
        "keep-alive after /healthz"
    );
}

fn gateway_errors_are_openai_shaped_and_never_reach_the_provider(shards: usize) {
    let mock = mock();
    let gw = gateway_for(&mock, shards);
    let mut client = gw.client();
    // (method, path, body, status, error code)
    let cases = [
        (
            "POST",
            "/v1/chat/completions",
            r#"{"model":"nope/gpt-x","messages":[]}"#,
            400,
            "unknown_provider",
        ),
        (
            "POST",
            "/v1/chat/completions",
            r#"{"model":"gpt-x","messages":[]}"#,
            400,
            "invalid_model",
        ),
        (
            "POST",
            "/v1/chat/completions",
            r#"{"messages":[]}"#,
            400,
            "missing_model",
        ),
        (
            "POST",
            "/v1/chat/completions",
            r#"{"model":"up/gpt-x","#,
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/v1/acct/gw/compat/chat/completions",
            r#"{"model":"nope/x"}"#,
            400,
            "unknown_provider",
        ),
        (
            "POST",
            "/v1/acct/gw/nope/chat/completions",
            r#"{}"#,
            400,
            "unknown_provider",
        ),
        ("GET", "/v1/chat/completions", "", 405, "method_not_allowed"),
        ("GET", "/", "", 404, "not_found"),
        ("GET", "/v1/models", "", 404, "not_found"),
        ("POST", "/nope/chat/completions", "{}", 404, "not_found"),
        ("POST", "/up/../admin", "{}", 400, "invalid_path"),
        ("POST", "/up/%2e%2E/admin", "{}", 400, "invalid_path"),
    ];
    for (method, path, body, status, code) in cases {
        let r = client.request(
            method,
            path,
            &[("content-type", "application/json")],
            body.as_bytes(),
        );
        assert_eq!(r.status, status, "{method} {path}: {}", r.text());
        assert_eq!(r.error_code(), code, "{method} {path}");
        assert_eq!(
            r.header("aigw-error-source"),
            Some("gateway"),
            "{method} {path}"
        );
        let v = r.json();
        for field in ["message", "type", "code", "param"] {
            assert!(
                v["error"].get(field).is_some(),
                "{method} {path}: no error.{field}"
            );
        }
    }
    // All on one keep-alive connection: none of these errors closed it.
    assert_eq!(client.get("/healthz").status, 200);
    assert_eq!(mock.requests_seen(), 0);
}

fn large_bodies_cross_the_gateway_whole(shards: usize) {
    let mock = mock();
    let gw = gateway_for(&mock, shards);
    let mut client = gw.client();
    // Far larger than any read window on either side.
    let big = "x".repeat(3 << 20);
    let body = format!(r#"{{"model":"gpt-x","messages":[{{"role":"user","content":"{big}"}}]}}"#);

    let r = client.post(
        "/up/chat/completions",
        &[("x-mock-reply-bytes", "4194304")],
        &body,
    );
    assert_eq!(r.status, 200);
    // (Compared as booleans: a failure must not print megabytes.)
    assert!(content(&r) == reply_text(4 << 20), "reply differs");
    assert!(
        mock.captured()[0].body == body.as_bytes(),
        "request body differs"
    );

    // The same body chunked by the client, and a large stream back.
    mock.reset();
    let mut wire = b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nx-mock-reply-bytes: 4194304\r\nx-mock-chunks: 64\r\n\r\n".to_vec();
    let unified = format!(
        r#"{{"model":"up/gpt-x","stream":true,"messages":[{{"role":"user","content":"{big}"}}]}}"#
    );
    for piece in unified.as_bytes().chunks(100_000) {
        wire.extend(format!("{:x}\r\n", piece.len()).into_bytes());
        wire.extend(piece);
        wire.extend(b"\r\n");
    }
    wire.extend(b"0\r\n\r\n");
    client.send(&wire);
    let r = client.read_response();
    assert_eq!(r.status, 200);
    assert!(r.complete);
    assert_eq!(r.sse_data().len(), 64 + 1);
    assert!(
        r.stream_content() == reply_text(4 << 20),
        "streamed reply differs"
    );
    let seen = json(&mock.captured()[0].body);
    assert_eq!(
        seen["messages"][0]["content"].as_str().map(str::len),
        Some(big.len())
    );
}

at_1_and_2_shards!(
    unified_chat_completion_returns_the_providers_reply,
    every_url_layout_round_trips_json_and_streams,
    unified_endpoints_map_to_the_providers_paths,
    builtin_mock_echo_repeats_the_last_user_message,
    first_stream_event_arrives_before_the_provider_finishes,
    passthrough_bytes_equal_a_direct_call,
    pipelined_requests_are_answered_in_order,
    upstream_connections_are_reused,
    provider_key_replaces_the_client_authorization,
    anthropic_kind_gets_its_key_as_x_api_key_and_native_paths,
    hop_by_hop_and_gateway_headers_are_not_forwarded,
    usage_from_json_and_streams_is_counted_in_stats,
    include_usage_is_injected_and_its_event_hidden_from_the_client,
    http10_requests_work,
    expect_100_continue_gets_continue_before_the_body,
    healthz_answers_ok,
    gateway_errors_are_openai_shaped_and_never_reach_the_provider,
    large_bodies_cross_the_gateway_whole,
);
