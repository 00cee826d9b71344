//! Routes: `model: "<route>"` (or `dynamic/<route>`) over several targets.
//! Fallback when the primary answers 500, 429 (honouring Retry-After),
//! times out, refuses, or sends a 200 stream whose first event is an error;
//! weighted balancing within 5% of the weights over 1,000 requests; a
//! cooling target skipped and tried again; every target cooling gives a 503
//! with Retry-After; per-request retry controls; a translated target behind
//! a fallback; metadata variants. `aigw-step` names the serving target. At 1
//! and 2 shards.

mod common;

use aigw_loadtest::mock::{ErrorKind, MockConfig, MockServer};
use common::gateway::newest_log_row;
use common::{Gateway, json, mock, mock_with};
use simd_json::prelude::*;
use std::time::{Duration, Instant};

fn failing(kind: ErrorKind) -> MockServer {
    mock_with(MockConfig {
        error: Some(kind),
        retry_after_secs: 0,
        ..MockConfig::default()
    })
}

/// A gateway with providers `a` and `b` at two mocks and `routes` as given.
fn gateway(shards: usize, a: &MockServer, b: &MockServer, routes: &str) -> Gateway {
    Gateway::with(shards)
        .provider("a", &a.base_url(), "")
        .provider("b", &b.base_url(), "")
        .toml(routes)
        .start()
}

const FALLBACK: &str = "[routes.chat]\ntargets = [{ provider = \"a\", model = \"m-a\" }, { provider = \"b\", model = \"m-b\" }]\n";

fn chat(model: &str, stream: bool) -> String {
    format!(
        r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}],"stream":{stream}}}"#
    )
}

fn a_failing_primary_falls_back_to_the_next_target(shards: usize) {
    let (a, b) = (failing(ErrorKind::Internal), mock());
    let gw = gateway(shards, &a, &b, FALLBACK);
    let r = gw
        .client()
        .post("/v1/chat/completions", &[], &chat("chat", false));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("aigw-step"), Some("1"));
    assert_eq!(r.header("aigw-provider"), Some("b"));
    assert_eq!(r.header("aigw-model"), Some("m-b"));
    assert_eq!(r.json()["model"], "m-b");
    assert_eq!((a.requests_seen(), b.requests_seen()), (1, 1));
    // Each target got its own model.
    assert_eq!(a.captured()[0].json().unwrap()["model"], "m-a");
    // Streams too, and `dynamic/<route>` names the same route.
    let s = gw
        .client()
        .post("/v1/chat/completions", &[], &chat("dynamic/chat", true));
    assert_eq!(s.status, 200);
    assert_eq!(s.header("aigw-step"), Some("1"));
    assert_eq!(s.sse_data().last().unwrap(), "[DONE]");
    // The log row names the serving target and counts the tries.
    let row = newest_log_row(&gw.admin_socket);
    assert_eq!(row["provider"], "b");
    assert_eq!(row["model"], "m-b");
    let routing = &row["routing"];
    assert_eq!(routing["route"], "chat");
    assert_eq!(routing["attempts"], 2);
    // `aigw logs --route` (GET /logs?route=) finds the route's rows.
    assert_eq!(gw.log_rows_at_least(2, "route=chat").len(), 2);
    assert!(gw.log_rows("route=other").is_empty());
    let tries = &routing["tries"];
    assert_eq!(tries[0]["provider"], "a");
    assert_eq!(tries[0]["status"], 500);
    assert_eq!(tries[0]["step"], 0);
    assert_eq!(tries[1]["model"], "m-b");
    assert_eq!(tries[1]["status"], 200);
    assert_eq!(tries[1]["step"], 1);
    // `/stats` and `/metrics` count the two failed tries under the target
    // that failed; the requests count where they ended.
    let stats = gw.stats();
    let providers = &stats["providers"];
    assert_eq!(
        (
            providers["a"]["failed_tries"].as_u64(),
            providers["a"]["requests"].as_u64(),
            providers["b"]["failed_tries"].as_u64(),
            providers["b"]["requests"].as_u64(),
        ),
        (Some(2), Some(0), Some(0), Some(2)),
        "{stats}"
    );
    let (_, metrics) = common::gateway::admin_get(&gw.admin_socket, "/metrics");
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("aigw_failed_tries_total{provider=\"a\",model=\"m-a\"} 2\n"),
        "{metrics}"
    );
    // The failed try's time is the provider's, not the gateway's: 200 ms in
    // each target, and the gateway's share stays small.
    let slow = gw.client().post(
        "/v1/chat/completions",
        &[("x-mock-latency-ms", "200")],
        &chat("chat", false),
    );
    assert_eq!(slow.status, 200, "{}", slow.text());
    assert!(
        slow.gateway_ms() < 150.0,
        "{:?}",
        slow.header("server-timing")
    );
    // The third row: the two requests before are logged already.
    let row = gw.log_rows_at_least(3, "").remove(0);
    assert_eq!(row["model"], "m-b");
    assert!(row["total_us"].as_u64().unwrap() >= 400_000, "{row}");
    assert!(row["gateway_us"].as_u64().unwrap() < 150_000, "{row}");
}

/// An Anthropic stream that opens with its `error` event (data spaced as
/// some servers write JSON) is a failed try: the route moves on before the
/// client sees a byte.
fn an_anthropic_stream_that_opens_with_an_error_falls_back(shards: usize) {
    let events = "event: error\ndata: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}\n\n";
    let claude = common::FixedUpstream::event_stream(events);
    let b = mock();
    let gw = Gateway::with(shards)
        .provider("b", &b.base_url(), "")
        .toml(&format!(
            "[providers.claude]\nkind = \"anthropic\"\nbase_url = \"{}\"\napi_key = \"k\"\n\
             [routes.chat]\ntargets = [{{ provider = \"claude\", model = \"claude-x\" }}, {{ provider = \"b\", model = \"m-b\" }}]\n",
            claude.base_url().trim_end_matches("/v1")
        ))
        .start();
    let s = gw
        .client()
        .post("/v1/chat/completions", &[], &chat("chat", true));
    assert_eq!(s.status, 200, "{}", s.text());
    assert_eq!(s.header("aigw-step"), Some("1"), "{}", s.text());
    assert_eq!(s.sse_data().last().unwrap(), "[DONE]");
    assert_eq!(b.requests_seen(), 1);
}

/// A translated target whose 200 is not a reply (JSON of another kind, or a
/// body whose chunked framing is broken) is a failed try: the route moves
/// on before the client sees a byte, and the try says why. One whose 200 is
/// a reply (chunked, read whole before it is taken) is the answer.
fn an_unreadable_translated_answer_falls_back(shards: usize) {
    const NOT_A_MESSAGE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 17\r\n\r\n{\"not\":\"a reply\"}";
    const BROKEN_FRAMING: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n{}\r\n";
    const MESSAGE: &str = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-x","content":[{"type":"text","text":"hello from claude"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":3,"output_tokens":4}}"#;
    let good = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n10\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
        &MESSAGE[..16],
        MESSAGE.len() - 16,
        &MESSAGE[16..]
    );
    let good = common::FixedUpstream::start(Box::leak(good.into_bytes().into_boxed_slice()));
    let b = mock();
    for (n, (raw, why)) in [(NOT_A_MESSAGE, "not a reply"), (BROKEN_FRAMING, "framing")]
        .into_iter()
        .enumerate()
    {
        let bad = common::FixedUpstream::start(raw);
        let gw = Gateway::with(shards)
            .provider("b", &b.base_url(), "")
            .toml(&format!(
                "[providers.claude]\nkind = \"anthropic\"\nbase_url = \"{}\"\napi_key = \"k\"\n\
                 [providers.good]\nkind = \"anthropic\"\nbase_url = \"{}\"\napi_key = \"k\"\n\
                 [routes.chat]\ntargets = [{{ provider = \"claude\", model = \"claude-x\" }}, {{ provider = \"b\", model = \"m-b\" }}]\n\
                 [routes.sure]\ntargets = [{{ provider = \"good\", model = \"claude-x\" }}, {{ provider = \"b\", model = \"m-b\" }}]\n",
                bad.base_url().trim_end_matches("/v1"),
                good.base_url().trim_end_matches("/v1"),
            ))
            .start();
        let r = gw
            .client()
            .post("/v1/chat/completions", &[], &chat("chat", false));
        assert_eq!(r.status, 200, "{why}: {}", r.text());
        assert_eq!(r.header("aigw-step"), Some("1"), "{why}: {}", r.text());
        assert_eq!(r.json()["model"], "m-b");
        assert_eq!(b.requests_seen(), n as u64 + 1, "{why}");
        let row = newest_log_row(&gw.admin_socket);
        let tries = &row["routing"]["tries"];
        assert_eq!(tries[0]["provider"], "claude", "{row}");
        assert_eq!(tries[0]["status"], 200, "{row}");
        assert_eq!(tries[0]["error"], "upstream_bad_response", "{row}");
        assert_eq!(tries[1]["status"], 200, "{row}");
        assert_eq!(row["status"], 200, "{row}");
        assert_eq!(
            gw.stats()["providers"]["claude"]["failed_tries"].as_u64(),
            Some(1)
        );
        // A reply is the answer, translated.
        let r = gw
            .client()
            .post("/v1/chat/completions", &[], &chat("sure", false));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("aigw-step"), Some("0"), "{}", r.text());
        let answer = r.json();
        assert_eq!(
            answer["choices"][0]["message"]["content"], "hello from claude",
            "{answer}"
        );
        assert_eq!(answer["usage"]["completion_tokens"], 4, "{answer}");
    }
    assert_eq!(b.requests_seen(), 2);
}

/// A cache hit of a routed answer, and a request that shares one in flight,
/// say and are counted under the target that answered, not the first one
/// (which failed).
fn a_shared_or_cached_answer_names_the_target_that_served(shards: usize) {
    let (a, b) = (failing(ErrorKind::Internal), mock());
    let gw = Gateway::with(shards)
        .provider("a", &a.base_url(), "")
        .provider("b", &b.base_url(), "")
        .toml(&format!(
            "{FALLBACK}[cache]\nenabled = true\nsize = \"16MiB\"\nmax_entry = \"1MiB\"\n"
        ))
        .start();
    for want in ["MISS", "HIT"] {
        let r = gw
            .client()
            .post("/v1/chat/completions", &[], &chat("chat", false));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("aigw-cache-status"), Some(want));
        assert_eq!(r.header("aigw-provider"), Some("b"), "{want}");
        assert_eq!(r.header("aigw-model"), Some("m-b"), "{want}");
        assert_eq!(r.header("aigw-step"), Some("1"), "{want}");
        let row = newest_log_row(&gw.admin_socket);
        assert_eq!(
            (row["provider"].as_str(), row["model"].as_str()),
            (Some("b"), Some("m-b")),
            "{row}"
        );
        // A hit names the route too (it has no tries).
        assert_eq!(row["routing"]["route"], "chat", "{row}");
    }
    // Five at once: one asks (the others follow it); all name `b`.
    let threads: Vec<_> = (0..5)
        .map(|_| {
            let mut c = gw.client();
            std::thread::spawn(move || {
                let body = r#"{"model":"chat","messages":[{"role":"user","content":"together"}]}"#;
                let r = c.post(
                    "/v1/chat/completions",
                    &[("x-mock-latency-ms", "300")],
                    body,
                );
                assert_eq!(r.status, 200, "{}", r.text());
                assert_eq!(r.header("aigw-step"), Some("1"));
                (
                    r.header("aigw-cache-status").map(str::to_string),
                    r.header("aigw-provider").map(str::to_string),
                    r.header("aigw-model").map(str::to_string),
                )
            })
        })
        .collect();
    for t in threads {
        let (status, provider, model) = t.join().unwrap();
        assert_eq!(
            (provider.as_deref(), model.as_deref()),
            (Some("b"), Some("m-b")),
            "{status:?}"
        );
    }
    let stats = gw.stats();
    assert_eq!(
        stats["providers"]["b"]["requests"].as_u64(),
        Some(7),
        "{stats}"
    );
    // A serving model whose name is too long to keep in the entry: the
    // answer is not stored (never credited to the first target).
    let long = "m".repeat(1100);
    let gw = Gateway::with(shards)
        .provider("a", &a.base_url(), "")
        .provider("b", &b.base_url(), "")
        .toml(&format!(
            "[routes.chat]\ntargets = [{{ provider = \"a\", model = \"m-a\" }}, {{ provider = \"b\", model = \"{long}\" }}]\n[cache]\nenabled = true\nsize = \"16MiB\"\nmax_entry = \"1MiB\"\n"
        ))
        .start();
    for _ in 0..2 {
        let r = gw
            .client()
            .post("/v1/chat/completions", &[], &chat("chat", false));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("aigw-cache-status"), Some("MISS"));
        assert_eq!(r.header("aigw-provider"), Some("b"));
    }
    // `a` counts no request, only the failed tries of the two requests
    // that went upstream (the miss and the leader the others followed).
    assert_eq!(
        (
            stats["providers"]["a"]["requests"].as_u64(),
            stats["providers"]["a"]["failed_tries"].as_u64()
        ),
        (Some(0), Some(2)),
        "{stats}"
    );
}

fn a_rate_limited_primary_is_retried_then_left(shards: usize) {
    // Retry-After 0: the route tries the primary again at once, then moves on.
    let (a, b) = (failing(ErrorKind::RateLimited), mock());
    let gw = gateway(
        shards,
        &a,
        &b,
        &format!("{FALLBACK}retry = {{ attempts = 3, backoff = \"constant\", base = \"10ms\" }}\n"),
    );
    let r = gw
        .client()
        .post("/v1/chat/completions", &[], &chat("chat", false));
    assert_eq!(r.status, 200);
    assert_eq!(a.requests_seen(), 3);
    assert_eq!(r.header("aigw-step"), Some("1"));
    // A Retry-After longer than the route waits goes to the next target at once.
    let slow = mock_with(MockConfig {
        error: Some(ErrorKind::RateLimited),
        retry_after_secs: 60,
        ..MockConfig::default()
    });
    let gw = gateway(
        shards,
        &slow,
        &b,
        &format!("{FALLBACK}retry = {{ attempts = 3, max = \"2s\" }}\n"),
    );
    let started = Instant::now();
    let r = gw
        .client()
        .post("/v1/chat/completions", &[], &chat("chat", false));
    assert_eq!(r.status, 200);
    assert_eq!(slow.requests_seen(), 1);
    assert!(started.elapsed() < Duration::from_secs(2));
}

fn timeouts_refusals_and_stream_errors_fall_back(shards: usize) {
    let b = mock();
    // A primary that takes 5 s to answer, with a 200 ms first-byte timeout.
    let slow = mock_with(MockConfig {
        latency: Duration::from_secs(5),
        ..MockConfig::default()
    });
    let refused = {
        let sock = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = sock.local_addr().unwrap().port();
        drop(sock);
        format!("http://127.0.0.1:{port}/v1")
    };
    let stream_error = failing(ErrorKind::StreamError);
    let gw = Gateway::with(shards)
        .provider("slow", &slow.base_url(), "")
        .provider("gone", &refused, "")
        .provider("bad_stream", &stream_error.base_url(), "")
        .provider("b", &b.base_url(), "")
        .toml(
            "[routes.t]\ntargets = [{ provider = \"slow\", model = \"x\", first_byte = \"200ms\" }, { provider = \"b\", model = \"y\" }]\n\
             [routes.r]\ntargets = [{ provider = \"gone\", model = \"x\" }, { provider = \"b\", model = \"y\" }]\n\
             [routes.s]\ntargets = [{ provider = \"bad_stream\", model = \"x\" }, { provider = \"b\", model = \"y\" }]\n",
        )
        .start();
    let started = Instant::now();
    let r = gw
        .client()
        .post("/v1/chat/completions", &[], &chat("t", false));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("aigw-step"), Some("1"));
    assert!(started.elapsed() < Duration::from_secs(3));
    let r = gw
        .client()
        .post("/v1/chat/completions", &[], &chat("r", false));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("aigw-step"), Some("1"));
    let s = gw
        .client()
        .post("/v1/chat/completions", &[], &chat("s", true));
    assert_eq!(s.status, 200);
    assert_eq!(s.header("aigw-step"), Some("1"));
    assert_eq!(s.stream_content(), aigw_loadtest::mock::reply_text(64));
    assert_eq!(stream_error.requests_seen(), 1);
    // The failed try says why.
    let tries = &newest_log_row(&gw.admin_socket)["routing"]["tries"];
    assert_eq!(
        (tries[0]["status"].as_u64(), tries[0]["error"].as_str()),
        (Some(200), Some("stream_error")),
        "{tries}"
    );
    // With no target left, the stream error itself reaches the client.
    let only = Gateway::with(shards)
        .provider("bad_stream", &stream_error.base_url(), "")
        .start();
    let s = only
        .client()
        .post("/v1/chat/completions", &[], &chat("bad_stream/x", true));
    let data = s.sse_data();
    assert_eq!(json(data[0].as_bytes())["error"]["code"], "overloaded");
}

fn weighted_targets_share_requests_by_weight(shards: usize) {
    let (a, b) = (mock(), mock());
    let gw = gateway(
        shards,
        &a,
        &b,
        "[routes.w]\nstrategy = \"weighted\"\ntargets = [{ provider = \"a\", model = \"x\", weight = 3 }, { provider = \"b\", model = \"y\", weight = 1 }]\n",
    );
    let mut conns = gw.connection_per_shard();
    let n = conns.len();
    for i in 0..1000 {
        let c = &mut conns[i % n];
        let r = c.post("/v1/chat/completions", &[], &chat("w", false));
        assert_eq!(r.status, 200);
    }
    let share = a.requests_seen() as f64 / 1000.0;
    assert!(
        (0.70..=0.80).contains(&share),
        "a got {share} of requests, want 0.75"
    );
    assert_eq!(a.requests_seen() + b.requests_seen(), 1000);
}

fn a_cooling_target_is_skipped_then_tried_again(shards: usize) {
    let (a, b) = (failing(ErrorKind::Unavailable), mock());
    let gw = gateway(
        shards,
        &a,
        &b,
        &format!(
            "{FALLBACK}cooldown = {{ failures = 2, window = \"60s\", duration = \"300ms\" }}\n"
        ),
    );
    // One connection: one shard learns (cooldowns are per shard).
    let mut c = gw.client();
    for _ in 0..2 {
        let r = c.post("/v1/chat/completions", &[], &chat("chat", false));
        assert_eq!(r.header("aigw-step"), Some("1"));
    }
    assert_eq!(a.requests_seen(), 2);
    // Cooling: the primary is skipped.
    let r = c.post("/v1/chat/completions", &[], &chat("chat", false));
    assert_eq!(r.status, 200);
    assert_eq!(a.requests_seen(), 2);
    // After the cooldown it is tried again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.requests_seen() == 2 {
        assert!(
            Instant::now() < deadline,
            "the primary was never tried again"
        );
        let r = c.post("/v1/chat/completions", &[], &chat("chat", false));
        assert_eq!(r.status, 200);
    }
    assert_eq!(a.requests_seen(), 3);

    // A route whose every target cools: a 503 that says when to come back.
    let gw = Gateway::with(shards)
        .provider("a", &a.base_url(), "")
        .toml("[routes.one]\ntargets = [{ provider = \"a\", model = \"x\" }]\ncooldown = { failures = 1, window = \"60s\", duration = \"30s\" }\n")
        .start();
    let mut c = gw.client();
    let r = c.post("/v1/chat/completions", &[], &chat("one", false));
    assert_eq!(r.status, 503);
    assert_eq!(r.header("aigw-error-source"), Some("provider"));
    let r = c.post("/v1/chat/completions", &[], &chat("one", false));
    assert_eq!(r.status, 503);
    assert_eq!(r.error_code(), "targets_cooling_down");
    assert_eq!(r.header("aigw-error-source"), Some("gateway"));
    let after: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((29..=30).contains(&after), "{after}");
}

fn per_request_controls_retry_a_plain_request(shards: usize) {
    let a = failing(ErrorKind::Internal);
    let gw = Gateway::with(shards)
        .provider("a", &a.base_url(), "")
        .start();
    let r = gw.client().post(
        "/v1/chat/completions",
        &[
            ("aigw-max-attempts", "3"),
            ("cf-aig-retry-delay", "5"),
            ("aigw-backoff", "constant"),
        ],
        &chat("a/x", false),
    );
    // The last try's answer is the client's, as the provider gave it.
    assert_eq!(r.status, 500);
    assert_eq!(r.header("aigw-error-source"), Some("provider"));
    assert_eq!(a.requests_seen(), 3);
    // Without the control, one try.
    let r = gw
        .client()
        .post("/v1/chat/completions", &[], &chat("a/x", false));
    assert_eq!(r.status, 500);
    assert_eq!(a.requests_seen(), 4);
    for (h, v, code) in [
        ("aigw-max-attempts", "9", "invalid_max_attempts"),
        ("cf-aig-request-timeout", "soon", "invalid_request_timeout"),
        ("aigw-backoff", "random", "invalid_backoff"),
    ] {
        let r = gw
            .client()
            .post("/v1/chat/completions", &[(h, v)], &chat("a/x", false));
        assert_eq!(r.status, 400);
        assert_eq!(r.error_code(), code);
    }
    // A request timeout falls back like a slow provider.
    let slow = mock_with(MockConfig {
        latency: Duration::from_secs(5),
        ..MockConfig::default()
    });
    let b = mock();
    let gw = gateway(shards, &slow, &b, FALLBACK);
    let started = Instant::now();
    let r = gw.client().post(
        "/v1/chat/completions",
        &[("aigw-request-timeout", "200")],
        &chat("chat", false),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("aigw-step"), Some("1"));
    assert!(started.elapsed() < Duration::from_secs(3));
    // Straight to the slow provider: a 504 that names the wait that ran out.
    let r = gw.client().post(
        "/v1/chat/completions",
        &[("aigw-request-timeout", "200")],
        &chat("a/m-a", false),
    );
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.text().contains("aigw-request-timeout"), "{}", r.text());
}

fn a_route_falls_back_across_formats_and_chooses_by_metadata(shards: usize) {
    let (a, claude) = (failing(ErrorKind::Internal), mock());
    let root = claude.base_url().trim_end_matches("/v1").to_string();
    let gw = Gateway::with(shards)
        .provider("a", &a.base_url(), "")
        .toml(&format!(
            "[providers.claude]\nkind = \"anthropic\"\nbase_url = \"{root}\"\napi_key = \"k\"\n\
             [routes.chat]\ntargets = [{{ provider = \"a\", model = \"gpt\" }}, {{ provider = \"claude\", model = \"claude-x\" }}]\n\
             [[routes.chat.variants]]\nwhen = {{ \"metadata.tier\" = \"free\" }}\ntargets = [{{ provider = \"claude\", model = \"claude-small\" }}]\n"
        ))
        .start();
    let r = gw
        .client()
        .post("/v1/chat/completions", &[], &chat("chat", false));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("aigw-step"), Some("1"));
    assert_eq!(r.json()["object"], "chat.completion");
    let seen = claude.captured();
    assert_eq!(seen[0].path, "/v1/messages");
    assert_eq!(seen[0].json().unwrap()["model"], "claude-x");
    let s = gw
        .client()
        .post("/v1/chat/completions", &[], &chat("chat", true));
    assert_eq!(s.stream_content(), aigw_loadtest::mock::reply_text(64));
    // A free-tier request takes the variant's list.
    let r = gw.client().post(
        "/v1/chat/completions",
        &[("aigw-metadata", r#"{"tier":"free"}"#)],
        &chat("chat", false),
    );
    assert_eq!(r.header("aigw-step"), Some("0"));
    assert_eq!(r.header("aigw-model"), Some("claude-small"));
    assert_eq!(a.requests_seen(), 2);
    // A request the first target's format cannot express (n = 2 to
    // Anthropic) goes to a target that can take it.
    let b = mock();
    let gw = Gateway::with(shards)
        .provider("b", &b.base_url(), "")
        .toml(&format!(
            "[providers.claude]\nkind = \"anthropic\"\nbase_url = \"{root}\"\napi_key = \"k\"\n\
             [routes.two]\ntargets = [{{ provider = \"claude\", model = \"c\" }}, {{ provider = \"b\", model = \"m\" }}]\n"
        ))
        .start();
    let r = gw.client().post(
        "/v1/chat/completions",
        &[],
        r#"{"model":"two","n":2,"messages":[{"role":"user","content":"hi"}]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("aigw-provider"), Some("b"));
}

fn a_target_uses_its_keys_in_turn_and_its_whole_timeout(shards: usize) {
    let a = mock();
    let gw = Gateway::with(shards)
        .provider("a", &a.base_url(), "")
        .env("AIGW_TEST_KEY_1", "sk-one")
        .env("AIGW_TEST_KEY_2", "sk-two")
        .toml("[routes.k]\ntargets = [{ provider = \"a\", model = \"x\", api_keys_env = [\"AIGW_TEST_KEY_1\", \"AIGW_TEST_KEY_2\"], timeout = \"400ms\" }]\n")
        .start();
    let mut c = gw.client();
    for _ in 0..4 {
        let r = c.post(
            "/v1/chat/completions",
            &[("authorization", "Bearer client")],
            &chat("k", false),
        );
        assert_eq!(r.status, 200);
    }
    let keys: Vec<String> = a
        .captured()
        .iter()
        .map(|r| r.header("authorization").unwrap().to_string())
        .collect();
    assert_eq!(
        keys,
        [
            "Bearer sk-one",
            "Bearer sk-two",
            "Bearer sk-one",
            "Bearer sk-two"
        ]
    );
    // The whole response must arrive within the target's timeout: a slow
    // stream is broken off with a typed error.
    let started = Instant::now();
    let s = c.post(
        "/v1/chat/completions",
        &[("x-mock-chunks", "10"), ("x-mock-chunk-interval-ms", "150")],
        &chat("k", true),
    );
    assert!(started.elapsed() < Duration::from_millis(1200));
    let data = s.sse_data();
    assert_eq!(
        json(data.last().unwrap().as_bytes())["error"]["code"],
        "stream_truncated"
    );
}

/// A gateway key restricts a route to the targets it allows; a gateway
/// secret never travels to a target that holds no key of its own.
fn keys_restrict_routes_and_never_reach_a_provider(shards: usize) {
    let (a, b) = (failing(ErrorKind::Internal), mock());
    let secret = format!("sk-aigw-{}", "3".repeat(64));
    let hash = aigw::auth::hex(&aigw::auth::hash_secret(secret.as_bytes()));
    let gw = Gateway::with(shards)
        .provider("a", &a.base_url(), "api_key = \"sk-a\"")
        .provider("b", &b.base_url(), "")
        .toml(&format!(
            "[keys.only_b]\nsecret_sha256 = \"{hash}\"\nmodels = [\"b/*\"]\n{FALLBACK}"
        ))
        .start();
    // `b` holds no key: a gateway secret in Authorization would travel there.
    let bearer = format!("Bearer {secret}");
    let r = gw.client().post(
        "/v1/chat/completions",
        &[("authorization", &bearer)],
        &chat("chat", false),
    );
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(a.requests_seen() + b.requests_seen(), 0);
    // As aigw-authorization it is the gateway's; the key allows only `b`,
    // so the route goes straight there, and no secret goes upstream.
    let r = gw.client().post(
        "/v1/chat/completions",
        &[("aigw-authorization", &bearer)],
        &chat("chat", false),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("aigw-provider"), Some("b"));
    assert_eq!(a.requests_seen(), 0);
    let seen = b.captured();
    assert!(
        seen.iter().all(
            |q| q.header("authorization").is_none() && q.header("aigw-authorization").is_none()
        )
    );
}

/// Limits are those of the target that answers: a rule on `b` counts the
/// requests a route sends to `b` after `a` failed, and refuses past its limit.
fn limits_follow_the_serving_target(shards: usize) {
    let (a, b) = (failing(ErrorKind::Internal), mock());
    let gw = gateway(
        shards,
        &a,
        &b,
        &format!(
            "{FALLBACK}[[rate_limits]]\nname = \"b-only\"\nscope = \"gateway\"\ncount = \"requests\"\nlimit = 1\nwindow = \"1h\"\nmodels = [\"b/*\"]\n"
        ),
    );
    let mut c = gw.client();
    let r = c.post("/v1/chat/completions", &[], &chat("chat", false));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("aigw-provider"), Some("b"));
    assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("0"));
    let r = c.post("/v1/chat/completions", &[], &chat("chat", false));
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.header("aigw-error-source"), Some("gateway"));
    assert!(r.text().contains("b-only"), "{}", r.text());
    assert_eq!(b.requests_seen(), 1);
    // Refused at the route's first target, a request moves on to the next,
    // as it does when refused at any later one.
    let (a, b) = (mock(), mock());
    let gw = gateway(
        shards,
        &a,
        &b,
        &format!(
            "{FALLBACK}[[rate_limits]]\nname = \"a-only\"\nscope = \"gateway\"\ncount = \"requests\"\nlimit = 1\nwindow = \"1h\"\nmodels = [\"a/*\"]\n"
        ),
    );
    let mut c = gw.client();
    let served: Vec<_> = (0..3)
        .map(|_| {
            let r = c.post("/v1/chat/completions", &[], &chat("chat", false));
            assert_eq!(r.status, 200, "{}", r.text());
            r.header("aigw-provider").unwrap().to_string()
        })
        .collect();
    assert_eq!(served, ["a", "b", "b"]);
    assert_eq!((a.requests_seen(), b.requests_seen()), (1, 2));
}

fn route_config_errors_name_the_key(_shards: usize) {
    for (toml, path) in [
        (
            "[routes.x]\ntargets = [{ provider = \"nope\", model = \"m\" }]\n",
            "routes.x.targets[0].provider",
        ),
        (
            "[routes.x]\nstrategy = \"random\"\ntargets = [{ provider = \"mock\", model = \"m\" }]\n",
            "routes.x.strategy",
        ),
        (
            "[routes.x]\ntargets = [{ provider = \"mock\", model = \"m\" }]\nretry = { attempts = 9 }\n",
            "routes.x.retry.attempts",
        ),
        (
            "[routes.x]\ntargets = [{ provider = \"mock\", model = \"m\" }]\nfallback_on = [200]\n",
            "routes.x.fallback_on[0]",
        ),
        (
            "[routes.x]\ntargets = [{ provider = \"mock\", model = \"m\" }]\nretries = 3\n",
            "routes.x.retries",
        ),
    ] {
        let err = aigw::config::Config::from_toml_with_env(toml, &|_| None).unwrap_err();
        assert!(err.to_string().contains(path), "{path}: {err}");
    }
    // A provider that is there but in error is named for its error only,
    // not as missing from the routes that use it.
    let err = aigw::config::Config::from_toml_with_env(
        "[providers.m]\nkind = \"openaii\"\nbase_url = \"http://127.0.0.1:9/v1\"\n[routes.x]\ntargets = [{ provider = \"m\", model = \"a\" }]\n",
        &|_| None,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("providers.m.kind"), "{err}");
    assert!(!err.contains("not a configured provider"), "{err}");
}

at_1_and_2_shards!(
    an_anthropic_stream_that_opens_with_an_error_falls_back,
    an_unreadable_translated_answer_falls_back,
    a_failing_primary_falls_back_to_the_next_target,
    a_shared_or_cached_answer_names_the_target_that_served,
    a_rate_limited_primary_is_retried_then_left,
    timeouts_refusals_and_stream_errors_fall_back,
    weighted_targets_share_requests_by_weight,
    a_cooling_target_is_skipped_then_tried_again,
    per_request_controls_retry_a_plain_request,
    a_route_falls_back_across_formats_and_chooses_by_metadata,
    route_config_errors_name_the_key,
    a_target_uses_its_keys_in_turn_and_its_whole_timeout,
    keys_restrict_routes_and_never_reach_a_provider,
    limits_follow_the_serving_target,
);
