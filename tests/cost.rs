//! What requests cost, end to end: prices from the config over the shipped
//! table, `aigw-include-cost`, `aigw-custom-cost`, unknown prices shown as
//! unknown, cache hits at zero, a client that leaves mid-stream charged a
//! non-zero estimate, and the cost in the log, `/stats` and `/metrics`.
//! `aigw prices`. At 1 and 2 shards.

mod common;

use common::gateway::{admin_get, run_aigw};
use common::{Gateway, WAIT, json, mock};
use simd_json::prelude::*;
use std::time::{Duration, Instant};

fn chat(content: &str, stream: bool) -> String {
    format!(
        r#"{{"model":"up/gpt-x","messages":[{{"role":"user","content":"{content}"}}],"stream":{stream}}}"#
    )
}

const PRICED: &str = "[prices.\"up/gpt-x\"]\ninput = 1.0\noutput = 2.0\ncontext_window = 1000\n";

/// The log's rows, newest first (every answered request is in them).
fn rows(gw: &Gateway, query: &str) -> Vec<simd_json::OwnedValue> {
    let (code, body) = admin_get(&gw.admin_socket, &format!("/logs?{query}"));
    assert_eq!(code, 200);
    String::from_utf8(body)
        .unwrap()
        .lines()
        .map(|l| json(l.as_bytes()))
        .collect()
}

/// The newest row once the log holds at least `n` (waiting up to `WAIT`).
/// Rows of one millisecond come newest stored first, and two shards store
/// theirs in batches: a test waits for a request's row before sending the
/// next one whose row it reads this way.
fn newest_of(gw: &Gateway, n: usize) -> simd_json::OwnedValue {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = rows(gw, &format!("limit={n}"));
        if r.len() >= n {
            return r[0].clone();
        }
        assert!(Instant::now() < deadline, "fewer than {n} rows");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-9)
}

fn a_priced_answer_says_what_it_cost(shards: usize) {
    let mock = mock();
    let gw = Gateway::with(shards)
        .provider("up", &mock.base_url(), "")
        .toml(&format!(
            "{PRICED}[cache]\nenabled = true\nsize = \"16MiB\"\nmax_entry = \"1MiB\"\n"
        ))
        .start();
    let r = gw.client().post(
        "/v1/chat/completions",
        &[("aigw-include-cost", "true")],
        &chat("price me", false),
    );
    assert_eq!(r.status, 200);
    let usage = &r.json()["usage"];
    let (input, output) = (
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["completion_tokens"].as_u64().unwrap(),
    );
    let want = (input as f64 * 1.0 + output as f64 * 2.0) / 1e6;
    let said: f64 = r.header("aigw-cost").unwrap().parse().unwrap();
    assert!(close(said, want), "{said} vs {want}");
    // The body is whole and its length right.
    assert_eq!(
        r.header("content-length")
            .unwrap()
            .parse::<usize>()
            .unwrap(),
        r.body.len()
    );
    // Without the control, no header.
    let plain = gw
        .client()
        .post("/v1/chat/completions", &[], &chat("no header", false));
    assert!(plain.header("aigw-cost").is_none());
    // A custom price replaces the table's for this request only.
    let custom = gw.client().post(
        "/v1/chat/completions",
        &[
            ("aigw-include-cost", "true"),
            (
                "cf-aig-custom-cost",
                r#"{"per_token_in":0.5,"per_token_out":0}"#,
            ),
            ("aigw-skip-cache", "true"),
        ],
        &chat("price me", false),
    );
    let said: f64 = custom.header("aigw-cost").unwrap().parse().unwrap();
    assert!(close(said, input as f64 * 0.5), "{said}");
    // Unknown names, prices past $1 a token (1e308 made an infinite cost
    // that no budget saw and no JSON reader could read), a price named
    // twice: 400s that say why, before anything is sent.
    let seen = mock.requests_seen();
    for (value, why) in [
        (r#"{"per_token":1}"#, "per_token"),
        (
            r#"{"per_token_in":1e308,"per_token_out":1e308}"#,
            "from 0 to 1",
        ),
        (r#"{"per_token_out":1.5}"#, "from 0 to 1"),
        (r#"{"per_token_in":0.001,"per_token_in":0.5}"#, "twice"),
        (r#"{"per_token_in":0.001,"per_token_in":2}"#, "twice"),
        (r#"{"per_token_in":1e400}"#, "past 1e308"),
    ] {
        let bad = gw.client().post(
            "/v1/chat/completions",
            &[("aigw-custom-cost", value)],
            &chat("x", false),
        );
        assert_eq!(bad.status, 400, "{value}");
        assert_eq!(bad.error_code(), "invalid_custom_cost");
        assert!(bad.text().contains(why), "{value}: {}", bad.text());
    }
    assert_eq!(mock.requests_seen(), seen);
    // A cache hit costs nothing.
    let mut hit = None;
    let deadline = Instant::now() + WAIT;
    while hit.is_none() {
        let r = gw.client().post(
            "/v1/chat/completions",
            &[("aigw-include-cost", "true")],
            &chat("price me", false),
        );
        if r.header("aigw-cache-status") == Some("HIT") {
            hit = Some(r);
        }
        assert!(Instant::now() < deadline, "never a hit");
    }
    assert_eq!(hit.unwrap().header("aigw-cost"), Some("0"));

    // The log, /stats and /metrics have it.
    let logged = rows(&gw, "limit=100");
    let first = logged.last().unwrap();
    assert!(close(first["cost"].cast_f64().unwrap(), want), "{first}");
    assert_eq!(first["cost_estimated"].as_bool(), Some(false));
    let share = first["context_share"].cast_f64().unwrap();
    assert!(close(share, input as f64 / 1000.0), "{share}");
    let stats = gw.stats();
    let usd = stats["cost"]["usd"].cast_f64().unwrap();
    assert!(usd >= want + said - 1e-12, "{stats}");
    let (_, metrics) = admin_get(&gw.admin_socket, "/metrics");
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("aigw_cost_usd_total{provider=\"up\",model=\"gpt-x\"} "),
        "{metrics}"
    );
}

fn an_unknown_price_is_unknown_never_zero(shards: usize) {
    let mock = mock();
    let gw = Gateway::with(shards)
        .provider("up", &mock.base_url(), "")
        .start();
    let r = gw.client().post(
        "/v1/chat/completions",
        &[("aigw-include-cost", "true")],
        &chat("what price", false),
    );
    assert_eq!(r.status, 200, "an unknown price never blocks");
    assert_eq!(r.header("aigw-cost"), Some("unknown"));
    let row = &rows(&gw, "limit=1")[0];
    assert!(row["cost"].is_null(), "{row}");
    assert!(row["context_share"].is_null(), "{row}");
    assert_eq!(gw.stats()["cost"]["unknown"].as_u64(), Some(1));
    // Requests refused before any provider cost nothing (known: zero).
    let refused = gw
        .client()
        .post("/v1/chat/completions", &[], "{\"model\":\"up/gpt-x\"");
    assert_eq!(refused.status, 400);
    assert_eq!(rows(&gw, "limit=1")[0]["cost"].cast_f64(), Some(0.0));
}

fn a_client_that_leaves_mid_stream_is_charged_an_estimate(shards: usize) {
    let mock = mock();
    let gw = Gateway::with(shards)
        .provider("up", &mock.base_url(), "")
        .toml(PRICED)
        .start();
    // A client that reads the first event of a long stream and leaves.
    let leave = |body: &str| {
        common::wire::leave_after_first_event(
            gw.addr,
            "/v1/chat/completions",
            &[
                ("Content-Type", "application/json"),
                ("x-mock-chunks", "40"),
                ("x-mock-chunk-interval-ms", "50"),
            ],
            body,
        )
    };
    leave(&chat("a long story", true));
    let row = newest_of(&gw, 1);
    assert_eq!(row["outcome"].as_str(), Some("aborted_by_client"), "{row}");
    assert_eq!(row["cost_estimated"].as_bool(), Some(true), "{row}");
    assert!(row["cost"].cast_f64().unwrap() > 0.0, "{row}");
    // The provider was not read to its end: far fewer events than 40 reached us.
    assert!(row["bytes_out"].as_u64().unwrap() < 4000, "{row}");
    // The tokens it was charged for are shown, in /stats and usage alike
    // (the row's tokens_in/tokens_out stay what the provider reported).
    let stats = gw.stats();
    let shown = (
        stats["tokens"]["input"].as_u64().unwrap(),
        stats["tokens"]["output"].as_u64().unwrap(),
    );
    assert!(shown.0 > 0 && shown.1 > 0, "{stats}");
    let (code, body) = admin_get(&gw.admin_socket, "/usage?by=provider");
    assert_eq!(code, 200);
    let usage = json(&body);
    let up = &usage["groups"][0];
    assert_eq!(
        (up["tokens_in"].as_u64(), up["tokens_out"].as_u64()),
        (Some(shown.0), Some(shown.1)),
        "{usage}"
    );
    // The estimate never passes what the request let the provider write:
    // with `max_tokens: 1`, the text relayed counts as one token at most,
    // and the prompt as its bytes / 4.
    let capped = chat("a short story", true).replace("}],", "}],\"max_tokens\":1,");
    leave(&capped);
    let row = newest_of(&gw, 2);
    assert_eq!(row["cost_estimated"].as_bool(), Some(true), "{row}");
    let want = (capped.len().div_ceil(4) as f64 * 1.0 + 2.0) / 1e6;
    assert!(
        close(row["cost"].cast_f64().unwrap(), want),
        "{row} vs {want}"
    );
}

/// A failure the provider reports inside a 200 stream (an error event, no
/// text) is the provider's error in the log and `/stats`, and costs
/// nothing, as an error status does.
fn a_stream_that_fails_at_once_is_the_providers_error_and_costs_nothing(shards: usize) {
    let mock = mock();
    let gw = Gateway::with(shards)
        .provider("up", &mock.base_url(), "")
        .toml(PRICED)
        .start();
    let r = gw.client().post(
        "/v1/chat/completions",
        &[("x-mock-error", "stream-error")],
        &chat("fail me", true),
    );
    assert_eq!(r.status, 200);
    assert!(r.text().contains("\"error\""), "{}", r.text());
    let row = newest_of(&gw, 1);
    assert_eq!(row["status"].as_u64(), Some(200), "{row}");
    assert_eq!(row["error_source"].as_str(), Some("provider"), "{row}");
    assert_eq!(row["error_code"].as_str(), Some("stream_error"), "{row}");
    assert_eq!(row["cost"].cast_f64(), Some(0.0), "{row}");
    assert_eq!(row["cost_estimated"].as_bool(), Some(false), "{row}");
    let stats = gw.stats();
    assert_eq!(stats["errors"]["provider"].as_u64(), Some(1), "{stats}");
    // The provider's row counts it as its failure; a request aigw refuses
    // itself (nothing reached the provider) is not one.
    let refused = gw.client().post(
        "/v1/messages",
        &[],
        r#"{"model":"up/gpt-4o-mini","max_tokens":5,"messages":[{"role":"user","content":[{"type":"document","source":{"type":"text","media_type":"text/plain","data":"x"}}]}]}"#,
    );
    assert_eq!(refused.status, 400, "{}", refused.text());
    let stats = gw.stats();
    assert_eq!(stats["errors"]["client"].as_u64(), Some(1), "{stats}");
    assert_eq!(
        stats["providers"]["up"]["errors"].as_u64(),
        Some(1),
        "{stats}"
    );
}

/// A whole JSON answer the provider cuts short: with `aigw-include-cost`
/// (held to be sent with its cost) the client gets the provider's failure
/// as a 502, not a closed connection; either way it is charged an estimate
/// of the text relayed, not of the bytes (head and JSON framing are most of
/// them): never more than the whole answer's text would cost.
fn a_cut_json_answer_is_a_502_when_held_and_estimated_by_its_text(shards: usize) {
    let mock = mock();
    let gw = Gateway::with(shards)
        .provider("up", &mock.base_url(), "")
        .toml(PRICED)
        .start();
    let body = chat("cut me", false);
    let whole = gw.client().post("/v1/chat/completions", &[], &body);
    assert_eq!(whole.status, 200);
    let text = whole.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .len() as f64;
    // The most an estimate may say: the request's bytes / 4 in, the whole
    // answer's text / 4 out (and a token of rounding each).
    let most = ((body.len() as f64 / 4.0 + 1.0) * 1.0 + (text / 4.0 + 1.0) * 2.0) / 1e6;
    // Its row stored before the next request's (see `newest_of`).
    newest_of(&gw, 1);
    let held = gw.client().post(
        "/v1/chat/completions",
        &[("x-mock-error", "cut"), ("aigw-include-cost", "true")],
        &body,
    );
    assert_eq!(held.status, 502, "{}", held.text());
    assert_eq!(held.header("aigw-error-source"), Some("provider"));
    assert!(held.text().contains("cut off"), "{}", held.text());
    let row = newest_of(&gw, 2);
    assert_eq!(row["status"].as_u64(), Some(502), "{row}");
    assert_eq!(
        row["outcome"].as_str(),
        Some("aborted_by_provider"),
        "{row}"
    );
    assert_eq!(row["error_source"].as_str(), Some("provider"), "{row}");
    assert_eq!(row["cost_estimated"].as_bool(), Some(true), "{row}");
    let cost = row["cost"].cast_f64().unwrap();
    assert!(
        cost > 0.0 && cost <= most,
        "{cost} vs at most {most}: {row}"
    );
    // Not held: the client gets the head and part of the body, then a close.
    let cut = gw
        .client()
        .post("/v1/chat/completions", &[("x-mock-error", "cut")], &body);
    assert_eq!(cut.status, 200);
    assert!(!cut.complete);
    let row = newest_of(&gw, 3);
    assert_eq!(
        row["outcome"].as_str(),
        Some("aborted_by_provider"),
        "{row}"
    );
    let cost = row["cost"].cast_f64().unwrap();
    assert!(
        cost > 0.0 && cost <= most,
        "{cost} vs at most {most}: {row}"
    );
}

/// A provider that fails before any answer (a reset, a malformed head) costs
/// nothing on a priced model: `unknown` is for models without a price.
fn a_provider_that_fails_before_answering_costs_nothing_not_unknown(shards: usize) {
    let mock = mock();
    let gw = Gateway::with(shards)
        .provider("up", &mock.base_url(), "")
        .toml(PRICED)
        .start();
    for kind in ["reset", "malformed"] {
        let r = gw.client().post(
            "/v1/chat/completions",
            &[("x-mock-error", kind)],
            &chat(kind, false),
        );
        assert_eq!(r.status, 502, "{kind}: {}", r.text());
    }
    let stats = gw.stats();
    assert_eq!(stats["cost"]["unknown"].as_u64(), Some(0), "{stats}");
    assert_eq!(stats["errors"]["provider"].as_u64(), Some(2), "{stats}");
}

/// Polls the log until a row says its client aborted (the newest such),
/// failing after `WAIT`.
fn aborted_row(gw: &Gateway, since: Instant) -> simd_json::OwnedValue {
    loop {
        if let Some(row) = rows(gw, "limit=50")
            .into_iter()
            .find(|r| r["outcome"].as_str() == Some("aborted_by_client"))
        {
            return row;
        }
        assert!(since.elapsed() < WAIT, "no row of the client that left");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Headers of a stream whose provider goes silent for a minute after its
/// first event (a model thinking before it goes on).
const SILENT: &[(&str, &str)] = &[
    ("Content-Type", "application/json"),
    ("x-mock-chunks", "3"),
    ("x-mock-chunk-interval-ms", "60000"),
];

/// A client that leaves while its provider is silent is let go within about
/// a second, not at the provider's next event: the provider connection
/// closes (no more spend), the request's `concurrent` slot frees, and it is
/// charged an estimate.
fn a_client_that_leaves_a_silent_stream_is_let_go_at_once(shards: usize) {
    let mock = mock();
    let gw = Gateway::with(shards)
        .provider("up", &mock.base_url(), "")
        .toml(&format!(
            "{PRICED}[[rate_limits]]\nname = \"one\"\nscope = \"gateway\"\ncount = \"concurrent\"\nlimit = 1\n"
        ))
        .start();
    let left = Instant::now();
    common::wire::leave_after_first_event(
        gw.addr,
        "/v1/chat/completions",
        SILENT,
        &chat("think long", true),
    );
    // The slot frees when the relay ends: until then the next is refused.
    let mut c = gw.client();
    let r = loop {
        let r = c.post("/v1/chat/completions", &[], &chat("next", false));
        if r.status != 429 {
            break r;
        }
        assert!(
            left.elapsed() < WAIT,
            "the slot of the client that left is still held"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(r.status, 200, "{}", r.text());
    let row = aborted_row(&gw, left);
    assert_eq!(row["cost_estimated"].as_bool(), Some(true), "{row}");
    // The prompt as its bytes / 4 (input 1 $/M), and the text of the one
    // event relayed (output 2 $/M): a third of the mock's short reply, a
    // few tokens, not the event's framing and the head (over 130 tokens).
    let input = chat("think long", true).len().div_ceil(4) as f64;
    let output = (row["cost"].cast_f64().unwrap() * 1e6 - input) / 2.0;
    assert!(
        (1.0..=10.0).contains(&output),
        "{output} output tokens: {row}"
    );
    assert!(row["bytes_out"].as_u64().unwrap() > 200, "{row}");
    // The second it waited on the silent provider is not gateway time.
    assert!(row["gateway_us"].as_u64().unwrap() < 500_000, "{row}");
    // A client that sent more (a pipelined request) before it left is seen
    // to leave as well: its end of stream is behind bytes not read yet.
    let left = Instant::now();
    let mut s = silent_stream(&gw, &chat("think again", true));
    std::io::Write::write_all(&mut s, b"GET /healthz HTTP/1.1\r\n\r\n").unwrap();
    drop(s);
    loop {
        let r = c.post("/v1/chat/completions", &[], &chat("next", false));
        if r.status != 429 {
            assert_eq!(r.status, 200, "{}", r.text());
            break;
        }
        assert!(
            left.elapsed() < WAIT,
            "the slot of the client that pipelined and left is still held"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `body` as a stream request with [`SILENT`] and reads the answer up
/// to its first event; the connection stays open.
fn silent_stream(gw: &Gateway, body: &str) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let request =
        common::wire::request_bytes("POST", "/v1/chat/completions", SILENT, body.as_bytes());
    std::io::Write::write_all(&mut s, &request).unwrap();
    let mut got = Vec::new();
    while !got.windows(5).any(|w| w == b"data:") {
        let mut buf = [0u8; 4096];
        let n = std::io::Read::read(&mut s, &mut buf).unwrap();
        assert!(n > 0, "the stream closed before its first event");
        got.extend_from_slice(&buf[..n]);
    }
    s
}

/// A priced gateway with the cache on, in front of `mock`.
fn cached(shards: usize, mock: &aigw_loadtest::mock::MockServer) -> Gateway {
    Gateway::with(shards)
        .provider("up", &mock.base_url(), "")
        .toml(&format!(
            "{PRICED}[cache]\nenabled = true\nsize = \"16MiB\"\nmax_entry = \"1MiB\"\n"
        ))
        .start()
}

/// A follower of a shared stream that leaves while the stream is silent
/// ends within about a second too (its leader carries on).
fn a_follower_that_leaves_a_silent_stream_is_let_go_at_once(shards: usize) {
    let mock = mock();
    let gw = cached(shards, &mock);
    let body = chat("think together", true);
    // The leader reads its first event and stays.
    let leader = silent_stream(&gw, &body);
    let left = Instant::now();
    common::wire::leave_after_first_event(gw.addr, "/v1/chat/completions", SILENT, &body);
    let row = aborted_row(&gw, left);
    assert_eq!(row["cache"].as_str(), Some("COALESCED"), "{row}");
    assert_eq!(mock.requests_seen(), 1, "the follower never went upstream");
    drop(leader);
}

/// A leader whose client left reads on for its followers only while one is
/// there: once the last has left too, the provider connection closes.
fn a_leader_reads_on_only_while_a_follower_is_there(shards: usize) {
    let mock = mock();
    let gw = cached(shards, &mock);
    let body = chat("think alone", true);
    let leader = silent_stream(&gw, &body);
    let follower = silent_stream(&gw, &body);
    let left = Instant::now();
    drop(leader);
    drop(follower);
    // Both rows come within seconds, not when the provider's minute-long
    // gaps end.
    loop {
        let aborted = rows(&gw, "limit=10")
            .into_iter()
            .filter(|r| r["outcome"].as_str() == Some("aborted_by_client"))
            .count();
        if aborted == 2 {
            break;
        }
        assert!(left.elapsed() < WAIT, "{aborted} of 2 rows");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(mock.requests_seen(), 1);
}

/// A stream's cost is known only after its last event: with
/// `aigw-include-cost` it arrives as an `aigw-cost` trailer field, announced
/// in the head; a replay from the cache says 0 in its head.
fn a_stream_says_what_it_cost_in_a_trailer(shards: usize) {
    let mock = mock();
    let gw = Gateway::with(shards)
        .provider("up", &mock.base_url(), "")
        .provider("free", &mock.base_url(), "")
        .toml(&format!(
            "{PRICED}[cache]\nenabled = true\nsize = \"16MiB\"\nmax_entry = \"1MiB\"\n"
        ))
        .start();
    let body = r#"{"model":"up/gpt-x","messages":[{"role":"user","content":"stream a price"}],"stream":true,"stream_options":{"include_usage":true}}"#;
    let r = gw.client().post(
        "/v1/chat/completions",
        &[("aigw-include-cost", "true")],
        body,
    );
    assert_eq!(r.status, 200);
    assert!(r.complete);
    assert_eq!(r.header("trailer"), Some("aigw-cost"));
    assert!(
        r.header("aigw-cost").is_none(),
        "a stream's head has no cost"
    );
    // The client asked for usage: the last event before [DONE] carries it.
    let data = r.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    let usage = json(data[data.len() - 2].as_bytes())["usage"].clone();
    let (input, output) = (
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["completion_tokens"].as_u64().unwrap(),
    );
    assert!(output > 0);
    let want = (input as f64 * 1.0 + output as f64 * 2.0) / 1e6;
    let said: f64 = r.trailer("aigw-cost").unwrap().parse().unwrap();
    assert!(close(said, want), "{said} vs {want}");
    assert_eq!(r.trailers.len(), 1, "{:?}", r.trailers);

    // The same connection carries on after the trailer.
    let mut client = gw.client();
    let first = client.post(
        "/v1/chat/completions",
        &[("aigw-include-cost", "true"), ("aigw-skip-cache", "true")],
        &chat("once", true),
    );
    let second = client.post("/v1/chat/completions", &[], &chat("twice", true));
    assert_eq!((first.status, second.status), (200, 200));
    assert!(first.trailer("aigw-cost").unwrap().parse::<f64>().unwrap() > 0.0);
    // Without the control: no trailer, none announced.
    assert!(second.trailers.is_empty() && second.header("trailer").is_none());

    // No price: the trailer says unknown.
    let unknown = gw.client().post(
        "/v1/chat/completions",
        &[("aigw-include-cost", "true")],
        r#"{"model":"free/m","messages":[{"role":"user","content":"x"}],"stream":true}"#,
    );
    assert_eq!(unknown.trailer("aigw-cost"), Some("unknown"));

    // A replay from the cache costs nothing and says so in its head.
    let deadline = Instant::now() + WAIT;
    let hit = loop {
        let r = gw.client().post(
            "/v1/chat/completions",
            &[("aigw-include-cost", "true")],
            body,
        );
        if r.header("aigw-cache-status") == Some("HIT") {
            break r;
        }
        assert!(Instant::now() < deadline, "never a hit");
    };
    assert_eq!(hit.header("aigw-cost"), Some("0"));
    assert!(hit.trailers.is_empty() && hit.header("trailer").is_none());
    assert_eq!(
        hit.sse_data(),
        data,
        "the replay is the stream the client saw"
    );
}

/// The answer's `aigw-cost` is its usage (under `at`, the provider's own
/// names) at these prices per million tokens.
fn cost_is(r: &common::wire::Response, at: &str, input: (&str, f64), output: (&str, f64)) {
    let usage = &r.json()[at];
    let tokens = |name: &str| usage[name].as_u64().unwrap() as f64;
    let want = (tokens(input.0) * input.1 + tokens(output.0) * output.1) / 1e6;
    let said: f64 = r.header("aigw-cost").unwrap().parse().unwrap();
    assert!(close(said, want), "{said} vs {want}");
}

/// Gemini's and Azure's own APIs name the model in the path, not the body:
/// a pass-through request is priced, attributed and allowed by that model.
fn a_pass_through_is_priced_by_the_model_its_path_names(shards: usize) {
    let (g, az) = (mock(), mock());
    let secret = format!("sk-aigw-{}", "4".repeat(64));
    let hash = aigw::auth::hex(&aigw::auth::hash_secret(secret.as_bytes()));
    let gw = Gateway::with(shards)
        .toml(&format!(
            "[providers.gem]\nkind = \"google\"\nbase_url = \"{}\"\napi_key = \"g-key\"\n\
             [providers.az]\nkind = \"azure\"\nbase_url = \"{}\"\napi_key = \"az-key\"\n\
             [prices.\"gem/gemini-test\"]\ninput = 1.0\noutput = 2.0\n\
             [prices.\"az/dep1\"]\ninput = 3.0\noutput = 4.0\n\
             [keys.k]\nsecret_sha256 = \"{hash}\"\nmodels = [\"gem/gemini-test\", \"az/dep1\"]\n",
            g.base_url().trim_end_matches("/v1"),
            az.base_url()
        ))
        .start();
    let bearer = format!("Bearer {secret}");
    let auth = ("authorization", bearer.as_str());
    let cost = ("aigw-include-cost", "true");
    let gemini = r#"{"contents":[{"role":"user","parts":[{"text":"hello"}]}]}"#;
    let r = gw.client().post(
        "/gem/v1beta/models/gemini-test:generateContent",
        &[auth, cost],
        gemini,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    cost_is(
        &r,
        "usageMetadata",
        ("promptTokenCount", 1.0),
        ("candidatesTokenCount", 2.0),
    );
    assert_eq!(g.captured()[0].header("x-goog-api-key"), Some("g-key"));
    // Another model in the path is another model to the key.
    let r = gw.client().post(
        "/gem/v1beta/models/gemini-other:generateContent",
        &[auth],
        gemini,
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("gemini-other"), "{}", r.text());
    // A model spelled with percent-escapes would be one name to us and
    // another to the provider.
    let r = gw.client().post(
        "/gem/v1beta/models/gemini%2Dtest:generateContent",
        &[auth],
        gemini,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.error_code(), "invalid_path");
    // Nor does a path the provider may read otherwise than as written
    // (escapes, empty segments), or one whose keyword is in another case,
    // fall back to the body's model, which these providers do not go by.
    let claims = r#"{"model":"dep1","messages":[]}"#;
    for (path, status) in [
        ("/az/d%65ployments/big/chat/completions?api-version=1", 400),
        ("/az/deployments//big/chat/completions?api-version=1", 400),
        ("/gem/v1beta/m%6Fdels/big:generateContent", 400),
        ("/az/Deployments/big/chat/completions?api-version=1", 403),
        ("/gem/v1beta/cachedContents", 403),
    ] {
        let r = gw.client().post(path, &[auth], claims);
        assert_eq!(r.status, status, "{path}: {}", r.text());
    }
    assert_eq!(az.requests_seen(), 0);
    assert_eq!(g.requests_seen(), 1, "refused requests reach no provider");
    // Azure's deployment is the model, whatever the body says.
    let r = gw.client().post(
        "/az/deployments/dep1/chat/completions?api-version=2024-10-21",
        &[auth, cost],
        &chat("hi", false),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    cost_is(
        &r,
        "usage",
        ("prompt_tokens", 3.0),
        ("completion_tokens", 4.0),
    );
    let models: Vec<String> = rows(&gw, "limit=10")
        .iter()
        .filter(|r| r["status"].as_u64() == Some(200))
        .map(|r| r["model"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(models, ["dep1", "gemini-test"]);
}

/// `/stats` sums what each request cost, as the log does, and `aigw-cost`
/// says it to the pico-dollar: tiny costs (a fraction of a nano-dollar over
/// whole ones) are not rounded away one by one.
fn stats_sum_costs_as_charged(shards: usize) {
    let mock = mock();
    let gw = Gateway::with(shards)
        .provider("up", &mock.base_url(), "")
        .toml("[prices.\"up/gpt-x\"]\ninput = 0.00013\noutput = 0.00017\n")
        .start();
    let mut c = gw.client();
    let mut said = 0.0;
    for i in 0..20 {
        let r = c.post(
            "/v1/chat/completions",
            &[("aigw-include-cost", "true")],
            &chat(&format!("tiny {i}"), false),
        );
        assert_eq!(r.status, 200);
        let cost: f64 = r.header("aigw-cost").unwrap().parse().unwrap();
        assert!(cost > 0.0 && cost < 1e-8, "{cost}");
        said += cost;
    }
    let stats = gw.stats()["cost"]["usd"].cast_f64().unwrap();
    assert!(
        (stats - said).abs() < 1e-15,
        "/stats {stats} vs charged {said}"
    );
}

at_1_and_2_shards!(
    stats_sum_costs_as_charged,
    a_provider_that_fails_before_answering_costs_nothing_not_unknown,
    a_cut_json_answer_is_a_502_when_held_and_estimated_by_its_text,
    a_stream_that_fails_at_once_is_the_providers_error_and_costs_nothing,
    a_pass_through_is_priced_by_the_model_its_path_names,
    a_priced_answer_says_what_it_cost,
    a_stream_says_what_it_cost_in_a_trailer,
    an_unknown_price_is_unknown_never_zero,
    a_client_that_leaves_mid_stream_is_charged_an_estimate,
    a_client_that_leaves_a_silent_stream_is_let_go_at_once,
    a_follower_that_leaves_a_silent_stream_is_let_go_at_once,
    a_leader_reads_on_only_while_a_follower_is_there,
);

#[test]
fn aigw_prices_prints_the_table_with_config_prices_over_it() {
    let (code, out, err) = run_aigw(&["prices", "--model", "openai/gpt-4o-mini"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("shipped table of 20"), "{out}");
    assert!(out.contains("openai/gpt-4o-mini "), "{out}");
    let dir = common::gateway::TempDir::new("prices");
    let config = dir.write(
        "aigw.toml",
        "[prices.\"openai/gpt-4o-mini\"]\ninput = 7.0\noutput = 9.0\n[prices.\"acme/m1\"]\ninput = 1\noutput = 1\n",
    );
    let (code, out, err) = run_aigw(&[
        "prices",
        "--config",
        config.to_str().unwrap(),
        "--json",
        "--model",
        "*/*m*1*",
    ]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<_> = out.lines().map(|l| json(l.as_bytes())).collect();
    let acme = lines
        .iter()
        .find(|l| l["model"].as_str() == Some("acme/m1"))
        .expect("acme/m1 listed");
    assert_eq!(acme["from"].as_str(), Some("config"));
    let (code, out, _) = run_aigw(&[
        "prices",
        "--config",
        config.to_str().unwrap(),
        "--model",
        "openai/gpt-4o-mini",
    ]);
    assert_eq!(code, 0);
    assert!(out.contains("config"), "{out}");
}
