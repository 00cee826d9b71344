//! When the provider fails: refused, reset, malformed, silent, cut off, or
//! answering with its own error. The client gets the documented status with
//! `aigw-error-source: provider`, or an aborted body (never a completed one), and
//! the gateway keeps serving afterwards. Runs at 1 and 2 shards.

mod common;

use aigw_loadtest::mock::{MockServer, reply_text};
use common::{Gateway, json, mock};
use simd_json::prelude::*;
use std::time::Instant;

fn chat(stream: bool) -> String {
    format!(
        r#"{{"model":"up/gpt-x","messages":[{{"role":"user","content":"hello"}}],"stream":{stream}}}"#
    )
}

/// A gateway whose first-byte and stream-idle timeouts are 300 ms.
fn gateway(mock: &MockServer, shards: usize) -> Gateway {
    Gateway::with(shards)
        .provider("up", &mock.base_url(), "")
        .toml("[timeouts]\nfirst_byte = \"300ms\"\nstream_idle = \"300ms\"\n")
        .start()
}

/// A port on which nothing listens: a socket bound to it but not listening,
/// so connects are refused and no other test (a mock on port 0, say) can be
/// given the port while this test runs.
fn closed_port() -> (socket2::Socket, u16) {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    sock.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let port = sock.local_addr().unwrap().as_socket().unwrap().port();
    (sock, port)
}

fn refused_provider_is_a_502_upstream_unreachable(shards: usize) {
    let (_reserved, port) = closed_port();
    let gw = Gateway::with(shards)
        .provider("dead", &format!("http://127.0.0.1:{port}/v1"), "")
        .start();
    let mut client = gw.client();

    for path_and_model in [
        ("/v1/chat/completions", "dead/gpt-x"),
        ("/dead/chat/completions", "gpt-x"),
    ] {
        let (path, model) = path_and_model;
        let r = client.post(path, &[], &format!(r#"{{"model":"{model}"}}"#));
        assert_eq!(r.status, 502, "{path}: {}", r.text());
        assert_eq!(r.error_code(), "upstream_unreachable", "{path}");
        assert_eq!(r.header("aigw-error-source"), Some("provider"), "{path}");
    }
    assert_eq!(
        client.get("/healthz").status,
        200,
        "the client connection survives"
    );
    assert_eq!(gw.stats()["errors"]["provider"].as_u64(), Some(2));
}

fn provider_transport_faults_give_their_documented_status(shards: usize) {
    let mock = mock();
    let gw = gateway(&mock, shards);
    let mut client = gw.client();
    // (x-mock-error, status, code)
    let faults = [
        ("reset", 502, "upstream_bad_response"),
        ("malformed", 502, "upstream_bad_response"),
        ("hang", 504, "upstream_timeout"),
    ];
    for (fault, status, code) in faults {
        mock.reset();
        let sent = Instant::now();
        let r = client.post(
            "/v1/chat/completions",
            &[("x-mock-error", fault)],
            &chat(false),
        );
        assert_eq!(r.status, status, "{fault}: {}", r.text());
        assert_eq!(r.error_code(), code, "{fault}");
        assert_eq!(r.header("aigw-error-source"), Some("provider"), "{fault}");
        assert_eq!(
            mock.requests_seen(),
            1,
            "{fault}: a fresh connection is not retried"
        );
        if fault == "hang" {
            assert!(
                sent.elapsed().as_millis() >= 300,
                "504 before timeouts.first_byte"
            );
        }
    }
    // A broken provider connection never returns to the pool: the next request works.
    let r = client.post("/v1/chat/completions", &[], &chat(false));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(gw.stats()["errors"]["provider"].as_u64(), Some(3));
}

fn a_cut_stream_is_aborted_not_completed(shards: usize) {
    let mock = mock();
    let gw = gateway(&mock, shards);

    let mut client = gw.client();
    let r = client.post(
        "/v1/chat/completions",
        &[("x-mock-error", "cut"), ("x-mock-chunks", "8")],
        &chat(true),
    );
    assert_eq!(r.status, 200);
    let events = r.sse_data();
    assert!(
        !events.is_empty(),
        "the events before the cut are delivered"
    );
    assert!(events.len() < 8, "{events:?}");
    assert!(
        !events.iter().any(|e| e == "[DONE]"),
        "synthetic [DONE]: {events:?}"
    );
    assert!(
        !r.complete,
        "the chunked body was terminated as if complete"
    );
    assert!(client.closed_by_peer());

    // A JSON body cut short: fewer bytes than its Content-Length, then close.
    let mut client = gw.client();
    let r = client.post(
        "/v1/chat/completions",
        &[("x-mock-error", "cut")],
        &chat(false),
    );
    assert_eq!(r.status, 200);
    assert!(!r.complete, "a truncated body was delivered as complete");
    assert!(client.closed_by_peer());

    // Nothing stays broken.
    let r = gw.client().post("/v1/chat/completions", &[], &chat(true));
    assert!(r.complete);
    assert_eq!(r.stream_content(), reply_text(64));
    let stats = gw.stats();
    assert_eq!(stats["aborted"]["upstream"].as_u64(), Some(2));
    // The provider's error, as a failure before any byte would be.
    assert_eq!(stats["errors"]["provider"].as_u64(), Some(2), "{stats}");
}

fn a_stream_that_goes_quiet_is_aborted_after_stream_idle(shards: usize) {
    let mock = mock();
    let gw = gateway(&mock, shards);
    let mut client = gw.client();

    let sent = Instant::now();
    let r = client.post(
        "/v1/chat/completions",
        &[("x-mock-chunks", "3"), ("x-mock-chunk-interval-ms", "2000")],
        &chat(true),
    );

    assert_eq!(r.status, 200);
    let data = r.sse_data();
    assert_eq!(data.len(), 2, "only the first event came before the gap");
    // Then a typed error, and no [DONE].
    let error = json(data[1].as_bytes());
    assert_eq!(error["error"]["code"], "stream_truncated");
    assert!(!r.complete);
    assert!(
        sent.elapsed().as_millis() < 2000,
        "aborted by timeouts.stream_idle, not by the provider"
    );
    assert!(client.closed_by_peer());
    // The 300 ms it waited for the provider are not the gateway's time.
    let row = gw.log_rows_at_least(1, "limit=1").pop().expect("a row");
    assert_eq!(
        row["outcome"].as_str(),
        Some("aborted_by_provider"),
        "{row}"
    );
    let gateway_us = row["gateway_us"].as_u64().unwrap();
    assert!(gateway_us < 250_000, "{row}");
}

fn provider_errors_pass_through_with_their_headers(shards: usize) {
    let mock = mock();
    let gw = gateway(&mock, shards);
    let mut client = gw.client();
    let mut direct = common::Client::connect(mock.addr());
    // (x-mock-error, status)
    for (fault, status) in [("429", 429), ("500", 500), ("503", 503)] {
        let headers = [("x-mock-error", fault), ("x-mock-retry-after", "7")];
        let r = client.post("/v1/chat/completions", &headers, &chat(false));
        let expected = direct.post("/v1/chat/completions", &headers, &chat(false));

        assert_eq!(r.status, status, "{fault}");
        assert_eq!(r.header("aigw-error-source"), Some("provider"), "{fault}");
        assert_eq!(
            r.body, expected.body,
            "{fault}: the provider's error body is passed through unchanged"
        );
        assert_eq!(
            r.header("retry-after"),
            expected.header("retry-after"),
            "{fault}"
        );
    }
    let r = client.post(
        "/v1/chat/completions",
        &[("x-mock-error", "429"), ("x-mock-retry-after", "7")],
        &chat(false),
    );
    assert_eq!(r.header("retry-after"), Some("7"));
    assert_eq!(r.error_code(), "rate_limit_exceeded");
    assert_eq!(
        client.get("/healthz").status,
        200,
        "a provider error does not close the client connection"
    );
}

/// A provider error that quotes the credential it was sent (here the
/// operator's configured key) reaches the client, and the log's kept body,
/// with the key masked, its length unchanged; the rest of the body stays.
fn a_provider_error_that_echoes_its_key_is_masked(shards: usize) {
    const KEY: &str = "sk-operator-secret-0123456789";
    const BODY: &str = r#"{"error":{"message":"Incorrect API key provided: sk-operator-secret-0123456789 (Bearer sk-operator-secret-0123456789)","type":"invalid_request_error"}}"#;
    let raw = format!(
        "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let echo = common::FixedUpstream::start(Box::leak(raw.into_bytes().into_boxed_slice()));
    let gw = Gateway::with(shards)
        .provider("up", &echo.base_url(), &format!("api_key = \"{KEY}\""))
        .toml("[logs]\npayloads = true\n")
        .start();
    let r = gw.client().post("/v1/chat/completions", &[], &chat(false));
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.header("aigw-error-source"), Some("provider"));
    let text = r.text();
    assert!(!text.contains(KEY), "{text}");
    let masked = "*".repeat(KEY.len());
    assert_eq!(text, BODY.replace(KEY, &masked));
    let row = common::gateway::newest_log_row(&gw.admin_socket);
    let id = row["id"].as_str().unwrap().to_string();
    let out = std::process::Command::new(common::gateway::AIGW)
        .args(["logs", "--data-dir"])
        .arg(gw.data_dir())
        .args(["show", &id, "--json"])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(!shown.contains(KEY), "{shown}");
    assert!(shown.contains(&masked), "{shown}");
}

at_1_and_2_shards!(
    a_provider_error_that_echoes_its_key_is_masked,
    refused_provider_is_a_502_upstream_unreachable,
    provider_transport_faults_give_their_documented_status,
    a_cut_stream_is_aborted_not_completed,
    a_stream_that_goes_quiet_is_aborted_after_stream_idle,
    provider_errors_pass_through_with_their_headers,
);
