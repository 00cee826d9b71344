//! Hostile input the pipeline restructure had to close: bodies whose keys mean
//! one thing to aigw and another to a provider, paths that climb out of a base
//! URL once decoded, model names too long to echo, clients that leave while a
//! provider generates, and how each kind of error is counted. Raw bytes in,
//! status and what the provider saw out; at 1 and 2 shards.

mod common;

use common::gateway::admin_get;
use common::wire::request_bytes;
use common::{FixedUpstream, Gateway, HeldUpstream, json, mock};
use simd_json::prelude::*;

fn gateway_with_key(base_url: &str, shards: usize) -> Gateway {
    Gateway::with(shards)
        .provider("up", base_url, "api_key = \"sk-gateway-held\"")
        .start()
}

fn escaped_keys_mean_to_aigw_what_they_mean_to_the_provider(shards: usize) {
    let mock = mock();
    let gw = gateway_with_key(&mock.base_url(), shards);
    // `m\u006fdel` is `model` and `str\u0065am` is `stream` to every JSON parser.
    let body = r#"{"m\u006fdel":"up/gpt-x","str\u0065am":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let r = gw.client().post("/v1/chat/completions", &[], body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("aigw-model"), Some("gpt-x"));
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    // aigw asked for usage on the client's behalf and kept the usage-only event to itself.
    assert!(r.sse_data().iter().all(|d| !d.contains("\"choices\":[]")));
    let seen = mock.captured();
    assert_eq!(seen.len(), 1);
    let sent = json(&seen[0].body);
    assert_eq!(sent["model"], "gpt-x");
    assert_eq!(sent["stream_options"]["include_usage"], true);
    let s = gw.stats();
    assert_eq!(s["streams"].as_u64(), Some(1));
    assert!(s["tokens"]["output"].as_u64().unwrap() > 0, "{s}");
}

fn fields_we_read_may_not_appear_twice(shards: usize) {
    let mock = mock();
    let gw = gateway_with_key(&mock.base_url(), shards);
    let mut client = gw.client();
    for (path, body, field) in [
        (
            "/v1/chat/completions",
            r#"{"model":"up/cheap","mod\u0065l":"up/expensive","messages":[]}"#,
            "`model`",
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"up/a","stream":false,"stream":true}"#,
            "`stream`",
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"up/a","stream":true,"stream_options":{"include_usage":false,"include_usage":true}}"#,
            "`stream_options.include_usage`",
        ),
        (
            "/up/chat/completions",
            r#"{"model":"cheap","model":"expensive"}"#,
            "`model`",
        ),
    ] {
        let r = client.post(path, &[], body);
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert_eq!(r.error_code(), "duplicate_field");
        assert!(r.text().contains(field), "{}", r.text());
        assert_eq!(r.header("aigw-error-source"), Some("gateway"));
    }
    assert_eq!(
        mock.requests_seen(),
        0,
        "nothing ambiguous reaches the provider"
    );
}

/// Keys that parsers matching keys ignoring case (Go's `encoding/json`,
/// ASP.NET Core) read as a field we read, and numbers a lax parser (pydantic)
/// reads otherwise than we do: refused, on the unified and pass-through
/// routes alike, before anything reaches the provider.
fn fields_we_read_mean_one_thing_to_every_parser(shards: usize) {
    let mock = mock();
    let gw = gateway_with_key(&mock.base_url(), shards);
    let mut client = gw.client();
    for (path, body, code, field) in [
        (
            "/v1/chat/completions",
            r#"{"model":"up/cheap","MODEL":"up/expensive","messages":[]}"#,
            "ambiguous_field",
            "`model`",
        ),
        (
            "/up/chat/completions",
            r#"{"model":"cheap","Model":"expensive"}"#,
            "ambiguous_field",
            "`model`",
        ),
        (
            "/up/chat/completions",
            r#"{"model":"m","max_to\u212aens":100000,"max_tokens":10}"#,
            "ambiguous_field",
            "`max_tokens`",
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"up/a","\u017ftream":true}"#,
            "ambiguous_field",
            "`stream`",
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"up/a","stream":true,"stream_options":{"Include_Usage":false}}"#,
            "ambiguous_field",
            "`stream_options.include_usage`",
        ),
        (
            "/up/chat/completions",
            r#"{"model":"m","max_tokens":1e5}"#,
            "invalid_field",
            "`max_tokens`",
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"up/a","max_completion_tokens":"100"}"#,
            "invalid_field",
            "`max_completion_tokens`",
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"up/a","n":2.0}"#,
            "invalid_field",
            "`n`",
        ),
        (
            "/up/chat/completions",
            r#"{"model":["m"]}"#,
            "invalid_field",
            "`model`",
        ),
    ] {
        let r = client.post(path, &[], body);
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert_eq!(r.error_code(), code, "{body}: {}", r.text());
        assert!(r.text().contains(field), "{}", r.text());
        assert_eq!(r.header("aigw-error-source"), Some("gateway"));
    }
    assert_eq!(
        mock.requests_seen(),
        0,
        "nothing read two ways reaches the provider"
    );
    // Null is absent to every reader, and a key no reader takes for one we
    // read goes through untouched.
    let body = r#"{"model":"up/a","max_tokens":null,"n":null,"Temperature":0,"messages":[{"role":"user","content":"hi"}]}"#;
    let r = client.post("/v1/chat/completions", &[], body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(json(&mock.captured()[0].body)["Temperature"], 0);
}

fn encoded_dot_segments_never_reach_the_provider(shards: usize) {
    let mock = mock();
    let gw = gateway_with_key(&mock.base_url(), shards);
    for path in [
        "/up/..%2fadmin",
        "/up/..%2Fadmin",
        "/up/%2e%2e/admin",
        "/up/%2E%2E%2fadmin",
        "/up/..\\admin",
        "/up/x/..%5cadmin",
        "/up/%252e%252e/admin",
        "/v1/acct/gw/up/%2e%2e/admin",
    ] {
        let mut client = gw.client();
        let raw = request_bytes("GET", path, &[], b"");
        let r = client
            .try_read_response_after(&raw)
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert!(r.header("aigw-request-id").is_some(), "{path}");
    }
    assert_eq!(
        mock.requests_seen(),
        0,
        "no climbing path reaches the provider with its key"
    );
}

fn a_long_model_name_is_not_echoed_in_a_header(shards: usize) {
    let mock = mock();
    let gw = gateway_with_key(&mock.base_url(), shards);
    let mut client = gw.client();
    let long = "m".repeat(100_000);
    let r = client.post(
        "/v1/chat/completions",
        &[],
        &format!(r#"{{"model":"up/{long}","messages":[]}}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("aigw-model"), None);
    // A name within the limit is still echoed, on the same connection.
    let fits = "m".repeat(256);
    let r = client.post(
        "/v1/chat/completions",
        &[],
        &format!(r#"{{"model":"up/{fits}","messages":[]}}"#),
    );
    assert_eq!(r.header("aigw-model"), Some(fits.as_str()));
}

fn a_client_that_leaves_during_the_wait_cancels_the_attempt(shards: usize) {
    let held = HeldUpstream::start();
    let gw = gateway_with_key(&held.base_url(), shards);
    let mut client = gw.client();
    client.send(&request_bytes(
        "POST",
        "/v1/chat/completions",
        &[("content-type", "application/json")],
        br#"{"model":"up/slow","messages":[]}"#,
    ));
    held.wait_arrival();
    drop(client);
    // timeouts.first_byte is 300 s: only noticing the client ends the attempt in time.
    held.wait_closed();
    let s = gw.stats();
    assert_eq!(s["aborted"]["client"].as_u64(), Some(1), "{s}");
    assert_eq!(s["requests"].as_u64(), Some(1));
}

fn client_errors_are_counted_apart_from_gateway_and_provider_errors(shards: usize) {
    let mock = mock();
    let gw = gateway_with_key(&mock.base_url(), shards);
    let mut client = gw.client();
    assert_eq!(client.post("/v1/chat/completions", &[], "{").status, 400);
    assert_eq!(client.post("/v1/chat/completions", &[], "{}").status, 400);
    assert_eq!(client.get("/nowhere/x").status, 404);
    // A framing error (Content-Length and Transfer-Encoding together) closes.
    let r = gw
        .client()
        .try_read_response_after(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        .unwrap();
    assert_eq!(r.status, 400);
    let r = client.post(
        "/v1/chat/completions",
        &[("x-mock-error", "500")],
        r#"{"model":"up/x","messages":[]}"#,
    );
    assert_eq!(r.status, 500);
    let s = gw.stats();
    assert_eq!(s["errors"]["client"].as_u64(), Some(4), "{s}");
    assert_eq!(s["errors"]["gateway"].as_u64(), Some(0), "{s}");
    assert_eq!(s["errors"]["provider"].as_u64(), Some(1), "{s}");
    let (_, metrics) = admin_get(&gw.admin_socket, "/metrics");
    let metrics = String::from_utf8(metrics).unwrap();
    for line in [
        "aigw_errors_total{source=\"client\"} 4",
        "aigw_errors_total{source=\"gateway\"} 0",
        "aigw_errors_total{source=\"provider\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
}

fn a_framing_error_carries_a_request_id_and_its_real_time(shards: usize) {
    let mock = mock();
    let gw = Gateway::with(shards)
        .provider("up", &mock.base_url(), "")
        .toml("[timeouts]\nhead = \"300ms\"")
        .start();
    // Half a head, then nothing: the head deadline answers 408.
    let mut client = gw.client();
    let r = client
        .try_read_response_after(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    assert_eq!(r.status, 408);
    let id = r
        .header("aigw-request-id")
        .expect("a request id on a framing error");
    assert!(!id.is_empty());
    assert!(client.closed_by_peer());
    let s = gw.stats();
    let total = &s["latency_us"]["total"];
    assert_eq!(total["count"].as_u64(), Some(1), "{s}");
    assert!(
        total["max"].as_u64().unwrap() >= 300_000,
        "the histogram holds the time the head took: {s}"
    );
    assert_eq!(s["errors"]["client"].as_u64(), Some(1));
}

fn provider_statuses_keep_a_reason_phrase(shards: usize) {
    for (raw, status, reason) in [
        (
            &b"HTTP/1.1 422 Unprocessable Entity\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"[..],
            422,
            "Unprocessable Content",
        ),
        (
            b"HTTP/1.1 529 Overloaded\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
            529,
            "Overloaded",
        ),
        (
            b"HTTP/1.1 529 \r\ncontent-length: 0\r\n\r\n",
            529,
            "Server Error",
        ),
    ] {
        let up = FixedUpstream::start(raw);
        let gw = gateway_with_key(&up.base_url(), shards);
        let r = gw
            .client()
            .post("/v1/chat/completions", &[], r#"{"model":"up/x"}"#);
        assert_eq!((r.status, r.reason.as_str()), (status, reason));
        assert_eq!(r.header("aigw-error-source"), Some("provider"));
    }
}

/// Regression: a head that fails to parse used to be logged with the previous
/// request's spans, which a shorter window turned into an out-of-range slice.
fn a_bad_head_after_a_long_one_is_answered_not_a_crash(shards: usize) {
    let mock = mock();
    let gw = gateway_with_key(&mock.base_url(), shards);
    let mut client = gw.client();
    let pad = "p".repeat(1000);
    let r = client.request("GET", "/healthz", &[("x-pad", &pad)], b"");
    assert_eq!(r.status, 200);
    let r = client.try_read_response_after(b"\x01\r\n\r\n").unwrap();
    assert_eq!(r.status, 400);
    assert!(r.header("aigw-request-id").is_some());
    assert_eq!(
        gw.client().get("/healthz").status,
        200,
        "the gateway lives on"
    );
}

/// Regression: a gateway error to a HEAD request carried a body, which the
/// client then read as the start of the next response.
fn an_error_to_a_head_request_has_no_body(shards: usize) {
    use std::io::{Read, Write};
    let mock = mock();
    let gw = gateway_with_key(&mock.base_url(), shards);
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(common::WAIT)).unwrap();
    s.write_all(
        b"HEAD /nowhere/x HTTP/1.1\r\nHost: a\r\n\r\nGET /healthz HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !got.ends_with(b"{\"status\":\"ok\"}") {
        let n = s.read(&mut chunk).expect("both answers arrive");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8(got).unwrap();
    let (first, rest) = text.split_once("\r\n\r\n").unwrap();
    assert!(first.starts_with("HTTP/1.1 404 "), "{first}");
    assert!(
        rest.starts_with("HTTP/1.1 200 OK\r\n"),
        "the 404 had a body: {rest}"
    );
}

at_1_and_2_shards!(
    an_error_to_a_head_request_has_no_body,
    a_bad_head_after_a_long_one_is_answered_not_a_crash,
    escaped_keys_mean_to_aigw_what_they_mean_to_the_provider,
    fields_we_read_may_not_appear_twice,
    fields_we_read_mean_one_thing_to_every_parser,
    encoded_dot_segments_never_reach_the_provider,
    a_long_model_name_is_not_echoed_in_a_header,
    a_client_that_leaves_during_the_wait_cancels_the_attempt,
    client_errors_are_counted_apart_from_gateway_and_provider_errors,
    a_framing_error_carries_a_request_id_and_its_real_time,
    provider_statuses_keep_a_reason_phrase,
);
