//! The response cache end to end, against the real binary and the mock: miss
//! then hit byte-identical, canonical keys, controls, scopes, expiry, streams,
//! what is never stored, coalescing (JSON and streams, a failing leader),
//! restart, damaged files, kill -9, the data_dir lock, purge, stats. At 1 and
//! 2 shards.

mod common;

use aigw_loadtest::mock::MockConfig;
use common::gateway::{admin_get, admin_post, run_aigw};
use common::held::read_request;
use common::{Client, Gateway, HeldUpstream, Response, WAIT, json, mock, mock_with};
use simd_json::prelude::*;
use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpListener;
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const CACHE: &str = "[cache]\nenabled = true\nsize = \"16MiB\"\nmax_entry = \"1MiB\"\n";

fn chat(content: &str, stream: bool) -> String {
    format!(
        r#"{{"model":"up/gpt-x","messages":[{{"role":"user","content":"{content}"}}],"temperature":0.5,"stream":{stream}}}"#
    )
}

fn cached_gateway(shards: usize, upstream: &str) -> Gateway {
    Gateway::with(shards)
        .provider("up", upstream, "")
        .toml(CACHE)
        .start()
}

fn status(r: &Response) -> &str {
    r.header("aigw-cache-status").unwrap_or("(none)")
}

fn post(gw: &Gateway, headers: &[(&str, &str)], body: &str) -> Response {
    gw.client().post("/v1/chat/completions", headers, body)
}

fn cache_stats(gw: &Gateway) -> simd_json::OwnedValue {
    gw.stats()["cache"].clone()
}

/// Waits until `count` answers are stored: at 2 shards an answer may still be
/// on its way to its partition's owner when its client has it.
fn wait_stored(gw: &Gateway, count: u64) {
    let deadline = Instant::now() + WAIT;
    while n(&cache_stats(gw), &["stores"]) < count {
        assert!(Instant::now() < deadline, "never stored {count}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn n(v: &simd_json::OwnedValue, path: &[&str]) -> u64 {
    let mut cur = v.clone();
    for p in path {
        cur = cur[*p].clone();
    }
    cur.as_u64().unwrap_or_else(|| panic!("{path:?} in {v}"))
}

fn a_miss_then_byte_identical_hits(shards: usize) {
    let mock = mock();
    let gw = cached_gateway(shards, &mock.base_url());
    let body = chat("cache me", false);
    let first = post(&gw, &[], &body);
    assert_eq!((first.status, status(&first)), (200, "MISS"));
    assert!(first.header("age").is_none());
    // New connections land on either shard: the entry is read from any. (At
    // 2 shards the first of these may still find the answer on its way to
    // its partition's owner, and share it as a coalesced answer: a HIT too.)
    for _ in 0..6 {
        let again = post(&gw, &[], &body);
        assert_eq!((again.status, status(&again)), (200, "HIT"));
        assert_eq!(again.body, first.body, "a hit is what the provider sent");
        assert!(again.header("age").is_some());
        assert_eq!(again.header("aigw-provider"), Some("up"));
        assert_eq!(
            again.header("content-type"),
            first.header("content-type"),
            "provider headers are replayed"
        );
        assert_ne!(
            again.header("aigw-request-id"),
            first.header("aigw-request-id")
        );
        // The provider's id was of the answer copied, not of this request.
        assert!(
            again.header("x-request-id").is_none(),
            "{:?}",
            again.headers
        );
    }
    assert!(
        first
            .header("x-request-id")
            .unwrap()
            .starts_with("req_mock_")
    );
    assert_eq!(mock.requests_seen(), 1);
    // Key order and whitespace do not matter; any value does.
    let reordered = r#" { "temperature" : 0.5, "stream": false,
        "messages":[{"content":"cache me","role":"user"}], "model":"up/gpt-x" } "#;
    assert_eq!(status(&post(&gw, &[], reordered)), "HIT");
    let hotter = body.replace("0.5", "0.7");
    assert_eq!(status(&post(&gw, &[], &hotter)), "MISS");
    // A stream request for the same prompt never gets the JSON answer.
    let streamed = post(&gw, &[], &chat("cache me", true));
    assert_eq!(status(&streamed), "MISS");
    assert_eq!(streamed.header("content-type"), Some("text/event-stream"));
    assert_eq!(mock.requests_seen(), 3);
    // A body aigw cannot key (not JSON, on the passthrough route) bypasses the cache.
    let r = gw.client().post("/up/chat/completions", &[], "not json");
    assert_eq!(status(&r), "BYPASS");

    wait_stored(&gw, 3);
    let c = cache_stats(&gw);
    assert_eq!(
        n(&c, &["requests", "hit"]) + n(&c, &["requests", "coalesced"]),
        7
    );
    assert_eq!(n(&c, &["requests", "miss"]), 3);
    assert_eq!(n(&c, &["requests", "bypass"]), 1);
    assert_eq!(n(&c, &["entries"]), 3);
    assert_eq!(n(&c, &["stores"]), 3);
    assert_eq!(mock.requests_seen(), 4);
    assert!(n(&c, &["bytes"]) > 0 && n(&c, &["capacity"]) > 0);
    assert!(n(&c, &["saved_tokens", "input"]) > 0, "{c}");
    // Hits cost no tokens: the spent tokens are those of the three misses.
    let hit_tokens = first.json()["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(n(&c, &["saved_tokens", "input"]), hit_tokens * 7);
    let (code, metrics) = admin_get(&gw.admin_socket, "/metrics");
    assert_eq!(code, 200);
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics
            .contains("aigw_cache_requests_total{provider=\"up\",model=\"gpt-x\",cache=\"hit\"} "),
        "{metrics}"
    );
    assert!(metrics.contains("aigw_cache_entries 3"), "{metrics}");
}

fn streams_replay_as_streams_without_the_usage_event_nobody_asked_for(shards: usize) {
    let mock = mock();
    let gw = cached_gateway(shards, &mock.base_url());
    let body = chat("stream me", true);
    let first = post(&gw, &[], &body);
    assert_eq!(status(&first), "MISS");
    assert!(first.complete);
    let hit = post(&gw, &[], &body);
    assert_eq!(status(&hit), "HIT");
    assert_eq!(hit.header("content-type"), Some("text/event-stream"));
    assert_eq!(hit.body, first.body, "the same SSE bytes, event for event");
    assert_eq!(hit.sse_data().last().map(String::as_str), Some("[DONE]"));
    // aigw asked the provider for usage on this client's behalf; the client
    // never sees that event, live or replayed.
    for d in hit.sse_data().iter().filter(|d| *d != "[DONE]") {
        let v = json(d.as_bytes());
        assert!(!v["choices"].as_array().unwrap().is_empty(), "{d}");
    }
    // ...yet the replay knows what the answer cost.
    let c = cache_stats(&gw);
    assert!(n(&c, &["saved_tokens", "output"]) > 0, "{c}");
    // A client that asks for usage has another key and gets its usage event.
    let with_usage = body.replace(
        r#""stream":true"#,
        r#""stream":true,"stream_options":{"include_usage":true}"#,
    );
    let asked = post(&gw, &[], &with_usage);
    assert_eq!(status(&asked), "MISS");
    let again = post(&gw, &[], &with_usage);
    assert_eq!(status(&again), "HIT");
    assert_eq!(again.body, asked.body);
    assert!(again.text().contains("\"usage\":{"), "{}", again.text());
    assert_eq!(mock.requests_seen(), 2);
    // Under a custom key (which replaces the body that says whether usage
    // was asked for), the two still have entries of their own: neither
    // gets the other's stream.
    let key = [("aigw-cache-key", "faq-7")];
    let asked = post(&gw, &key, &with_usage.replace("stream me", "first words"));
    assert_eq!(status(&asked), "MISS");
    let plain = post(&gw, &key, &body.replace("stream me", "other words"));
    assert_eq!(status(&plain), "MISS");
    for d in plain.sse_data().iter().filter(|d| *d != "[DONE]") {
        let v = json(d.as_bytes());
        assert!(!v["choices"].as_array().unwrap().is_empty(), "{d}");
    }
    let asked_again = post(&gw, &key, &with_usage);
    assert_eq!(status(&asked_again), "HIT");
    assert_eq!(asked_again.body, asked.body);
    let plain_again = post(&gw, &key, &body);
    assert_eq!(status(&plain_again), "HIT");
    assert_eq!(plain_again.body, plain.body);
    assert_eq!(mock.requests_seen(), 4);
}

fn controls_skip_ttl_and_custom_keys(shards: usize) {
    let mock = mock();
    let gw = cached_gateway(shards, &mock.base_url());
    let body = chat("controls", false);
    let skipped = post(&gw, &[("aigw-skip-cache", "true")], &body);
    assert_eq!((skipped.status, status(&skipped)), (200, "BYPASS"));
    assert_eq!(
        status(&post(&gw, &[], &body)),
        "MISS",
        "a skip stores nothing"
    );
    assert_eq!(
        status(&post(&gw, &[("cf-aig-skip-cache", "true")], &body)),
        "BYPASS",
        "a skip does not read either"
    );
    // A caller-chosen key replaces the body in the key.
    let a = post(&gw, &[("aigw-cache-key", "answer-42")], &chat("one", false));
    assert_eq!(status(&a), "MISS");
    let b = post(
        &gw,
        &[("cf-aig-cache-key", "answer-42")],
        &chat("two", false),
    );
    assert_eq!(status(&b), "HIT");
    assert_eq!(b.body, a.body);
    // Bad values are 400s that say why.
    for (h, v, code) in [
        ("aigw-cache-ttl", "0", "invalid_cache_ttl"),
        ("aigw-cache-ttl", "ten", "invalid_cache_ttl"),
        ("cf-aig-cache-ttl", "99999999", "invalid_cache_ttl"),
        ("aigw-skip-cache", "maybe", "invalid_skip_cache"),
    ] {
        let r = post(&gw, &[(h, v)], &body);
        assert_eq!(
            (r.status, r.error_code()),
            (400, code.to_string()),
            "{h}: {v}"
        );
        assert_eq!(r.header("aigw-error-source"), Some("gateway"));
    }
    // Cloudflare-layout URLs name the header as Cloudflare does.
    let path = "/v1/acct/gw/up/chat/completions";
    let cf_body = r#"{"model":"gpt-x","messages":[{"role":"user","content":"cf"}]}"#;
    let r = gw.client().post(path, &[], cf_body);
    assert_eq!(r.header("cf-aig-cache-status"), Some("MISS"));
    assert!(r.header("aigw-cache-status").is_none());
    let r = gw.client().post(path, &[], cf_body);
    assert_eq!(r.header("cf-aig-cache-status"), Some("HIT"));
    // The same upstream request by another URL layout is the same entry.
    let r = gw.client().post("/up/chat/completions", &[], cf_body);
    assert_eq!(status(&r), "HIT");
    assert_eq!(mock.requests_seen(), 5);
}

/// An entry answers only requests whose provider is asked the same thing
/// in the same format: the same bytes sent unified (the model loses its
/// prefix) and passed through (it does not), a route's variants and a key's
/// allowed targets, and a custom key asked in another format, are apart.
fn what_the_provider_is_asked_and_in_which_format_is_in_the_key(shards: usize) {
    let mock = mock();
    let gw = Gateway::with(shards)
        .provider("up", &mock.base_url(), "")
        .toml(&format!(
            "{CACHE}[routes.chat]\ntargets = [{{ provider = \"up\", model = \"premium\" }}]\n\
             [[routes.chat.variants]]\nwhen = {{ \"metadata.tier\" = \"free\" }}\n\
             targets = [{{ provider = \"up\", model = \"cheap\" }}]\n"
        ))
        .start();
    let model = |r: &Response| r.json()["model"].as_str().unwrap_or("?").to_string();
    // Unified: the provider sees `gpt-x`; passed through: `up/gpt-x`.
    let body = chat("asked", false);
    let unified = post(&gw, &[], &body);
    assert_eq!(
        (status(&unified), model(&unified).as_str()),
        ("MISS", "gpt-x")
    );
    let passed = gw.client().post("/up/chat/completions", &[], &body);
    assert_eq!(
        (status(&passed), model(&passed).as_str()),
        ("MISS", "up/gpt-x")
    );
    let cf = gw
        .client()
        .post("/v1/acct/gw/up/chat/completions", &[], &body);
    assert_eq!(
        (cf.header("cf-aig-cache-status"), model(&cf).as_str()),
        (Some("HIT"), "up/gpt-x")
    );
    assert_eq!(model(&post(&gw, &[], &body)), "gpt-x");
    // A route's variants choose other targets.
    let routed = chat("routed", false).replace("up/gpt-x", "chat");
    let free = [("aigw-metadata", r#"{"tier":"free"}"#)];
    let r = post(&gw, &free, &routed);
    assert_eq!((status(&r), model(&r).as_str()), ("MISS", "cheap"));
    let r = post(&gw, &[], &routed);
    assert_eq!((status(&r), model(&r).as_str()), ("MISS", "premium"));
    let r = post(&gw, &[("aigw-metadata", r#"{"tier":"pro"}"#)], &routed);
    assert_eq!((status(&r), model(&r).as_str()), ("HIT", "premium"));
    let r = post(&gw, &free, &routed);
    assert_eq!((status(&r), model(&r).as_str()), ("HIT", "cheap"));
    // The query goes upstream, and into the key, routed or not.
    let queried = chat("queried", false).replace("up/gpt-x", "chat");
    let q = |query: &str| {
        let r = gw
            .client()
            .post(&format!("/v1/chat/completions{query}"), &[], &queried);
        status(&r).to_string()
    };
    assert_eq!(q("?x=1"), "MISS");
    assert_eq!(q("?x=2"), "MISS");
    assert_eq!(q(""), "MISS");
    assert_eq!(q("?x=1"), "HIT");
    // A custom key is the key of one endpoint and format.
    let key = [
        ("aigw-cache-key", "same"),
        ("anthropic-version", "2023-06-01"),
    ];
    let msg =
        r#"{"model":"up/gpt-x","max_tokens":50,"messages":[{"role":"user","content":"fmt"}]}"#;
    let anthropic = gw.client().post("/v1/messages", &key, msg);
    assert_eq!((anthropic.status, status(&anthropic)), (200, "MISS"));
    assert_eq!(anthropic.json()["type"], "message");
    let openai = post(&gw, &key, &chat("fmt", false));
    assert_eq!(
        (status(&openai), openai.json()["object"].as_str()),
        ("MISS", Some("chat.completion"))
    );
    let again = gw.client().post("/v1/messages", &key, msg);
    assert_eq!(
        (status(&again), again.body.clone()),
        ("HIT", anthropic.body.clone())
    );
    assert_eq!(mock.requests_seen(), 9);
}

fn two_credentials_never_share_an_entry(shards: usize) {
    let mock = mock();
    let gw = cached_gateway(shards, &mock.base_url());
    let body = chat("tenant", false);
    let alice = [("authorization", "Bearer sk-alice")];
    let bob = [("authorization", "Bearer sk-bob")];
    assert_eq!(status(&post(&gw, &alice, &body)), "MISS");
    assert_eq!(status(&post(&gw, &alice, &body)), "HIT");
    assert_eq!(status(&post(&gw, &bob, &body)), "MISS");
    assert_eq!(
        status(&post(&gw, &[("x-api-key", "sk-alice")], &body)),
        "MISS"
    );
    assert_eq!(status(&post(&gw, &[], &body)), "MISS");
    // A custom key is scoped too: Bob cannot probe Alice's keys.
    let k = [
        ("authorization", "Bearer sk-alice"),
        ("aigw-cache-key", "k1"),
    ];
    assert_eq!(status(&post(&gw, &k, &body)), "MISS");
    let k = [("authorization", "Bearer sk-bob"), ("aigw-cache-key", "k1")];
    assert_eq!(status(&post(&gw, &k, &body)), "MISS");
    // `cache.shared` says every credential shares.
    let shared = Gateway::with(shards)
        .provider("up", &mock.base_url(), "")
        .toml(&format!("{CACHE}shared = true\n"))
        .start();
    assert_eq!(status(&post(&shared, &alice, &body)), "MISS");
    assert_eq!(status(&post(&shared, &bob, &body)), "HIT");
}

fn entries_expire(shards: usize) {
    let mock = mock();
    let gw = cached_gateway(shards, &mock.base_url());
    let body = chat("short-lived", false);
    let ttl = [("aigw-cache-ttl", "1")];
    let stored = Instant::now();
    assert_eq!(status(&post(&gw, &ttl, &body)), "MISS");
    assert_eq!(status(&post(&gw, &ttl, &body)), "HIT");
    // The entry's clock, not ours, decides: ask until it says EXPIRED.
    let deadline = Instant::now() + WAIT;
    let expired = loop {
        let r = post(&gw, &ttl, &body);
        if status(&r) != "HIT" {
            break r;
        }
        assert!(Instant::now() < deadline, "never expired");
        std::thread::sleep(Duration::from_millis(25));
    };
    assert_eq!(status(&expired), "EXPIRED");
    assert!(stored.elapsed() >= Duration::from_millis(900));
    // The fresh answer was stored again.
    assert_eq!(status(&post(&gw, &ttl, &body)), "HIT");
    let c = cache_stats(&gw);
    assert_eq!(n(&c, &["requests", "expired"]), 1);
}

fn cut_streams_errors_and_no_store_are_never_stored(shards: usize) {
    let mock = mock();
    let gw = cached_gateway(shards, &mock.base_url());
    for (knob, stream) in [
        ("cut", true),
        ("500", false),
        ("cut", false),
        ("reset", false),
        ("malformed", false),
    ] {
        let body = chat(&format!("broken {knob} {stream}"), stream);
        let h = [("x-mock-error", knob)];
        let r = post(&gw, &h, &body);
        assert!(r.status >= 500 || !r.complete, "{knob}: {}", r.status);
        // The provider's error or the gateway's: either says where it looked.
        assert_eq!(status(&r), "MISS", "{knob}: {:?}", r.headers);
        // (A reset connection is tried again once: count from here.)
        let before = mock.requests_seen();
        let r = post(&gw, &[], &body);
        assert_eq!((r.status, status(&r)), (200, "MISS"), "{knob} was stored");
        assert_eq!(mock.requests_seen(), before + 1);
    }
    // The provider says no-store.
    const NO_STORE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncache-control: no-store\r\ncontent-length: 2\r\n\r\n{}";
    let fixed = common::FixedUpstream::start(NO_STORE);
    let gw = Gateway::with(shards)
        .provider("up", &fixed.base_url(), "")
        .toml(CACHE)
        .start();
    let body = chat("private", false);
    assert_eq!(status(&post(&gw, &[], &body)), "MISS");
    assert_eq!(status(&post(&gw, &[], &body)), "MISS");
    assert_eq!(n(&cache_stats(&gw), &["entries"]), 0);
    // A provider that compresses unasked (aigw asks for no encoding): the
    // client gets what it sent; aigw cannot read it, and does not keep it.
    const GZIP: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\ncontent-length: 2\r\n\r\n\x1f\x8b";
    let fixed = common::FixedUpstream::start(GZIP);
    let gw = Gateway::with(shards)
        .provider("up", &fixed.base_url(), "")
        .toml(CACHE)
        .start();
    for _ in 0..2 {
        let r = post(&gw, &[], &body);
        assert_eq!((r.status, status(&r)), (200, "MISS"));
        assert_eq!(r.header("content-encoding"), Some("gzip"));
    }
    assert_eq!(n(&cache_stats(&gw), &["entries"]), 0);
}

/// A Gemini pass-through stream (`:streamGenerateContent`) is a stream: it
/// is stored only when it finished and replays as the events it was.
fn gemini_pass_through_streams_are_stored_only_when_they_finished(shards: usize) {
    let g = mock();
    let gw = Gateway::with(shards)
        .toml(&format!(
            "[providers.gem]\nkind = \"google\"\nbase_url = \"{}\"\napi_key = \"g-key\"\n{CACHE}",
            g.base_url().trim_end_matches("/v1")
        ))
        .start();
    let path = "/gem/v1beta/models/gemini-test:streamGenerateContent?alt=sse";
    let body =
        |text: &str| format!(r#"{{"contents":[{{"role":"user","parts":[{{"text":"{text}"}}]}}]}}"#);
    let first = gw.client().post(path, &[], &body("cache me"));
    assert_eq!((first.status, status(&first)), (200, "MISS"));
    assert_eq!(first.header("content-type"), Some("text/event-stream"));
    assert_eq!(
        gw.stats()["streams"].as_u64(),
        Some(1),
        "counted as a stream"
    );
    wait_stored(&gw, 1);
    let again = gw.client().post(path, &[], &body("cache me"));
    assert_eq!((again.status, status(&again)), (200, "HIT"));
    assert_eq!(again.body, first.body, "the events the provider sent");
    assert_eq!(again.header("content-type"), Some("text/event-stream"));
    // A stream the provider broke off is not stored.
    let cut = gw
        .client()
        .post(path, &[("x-mock-error", "cut")], &body("cut me"));
    assert!(!cut.complete);
    let after = gw.client().post(path, &[], &body("cut me"));
    assert_eq!((after.status, status(&after)), (200, "MISS"));
    assert_eq!(g.requests_seen(), 3);
}

fn errors_in_a_200_stream_and_other_askers_are_never_shared(shards: usize) {
    // A provider that reports a failure inside a 200 stream.
    const ERROR_STREAM: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: 56\r\n\r\ndata: {\"error\":{\"message\":\"overloaded\"}}\n\ndata: [DONE]\n\n";
    let fixed = common::FixedUpstream::start(ERROR_STREAM);
    let gw = Gateway::with(shards)
        .provider("up", &fixed.base_url(), "")
        .toml(CACHE)
        .start();
    let body = chat("overloaded", true);
    let r = post(&gw, &[], &body);
    assert_eq!((r.status, status(&r)), (200, "MISS"));
    assert!(r.text().contains("overloaded"), "{}", r.text());
    // The second may still share the first's answer while its flight ends
    // (a coalesced answer, `HIT` to the client); it is never a stored one.
    let again = post(&gw, &[], &body);
    assert!(again.text().contains("overloaded"), "{}", again.text());
    let c = cache_stats(&gw);
    assert_eq!(
        n(&c, &["requests", "hit"]),
        0,
        "an error stream was stored: {c}"
    );
    assert_eq!((n(&c, &["stores"]), n(&c, &["entries"])), (0, 0), "{c}");

    let mock = mock();
    let gw = cached_gateway(shards, &mock.base_url());
    // A credential in the query scopes a caller-chosen key too.
    let path = |k: &str| format!("/up/chat/completions?key={k}");
    let custom = [("aigw-cache-key", "same")];
    let plain = r#"{"model":"gpt-x","messages":[{"role":"user","content":"q"}]}"#;
    assert_eq!(
        status(&gw.client().post(&path("a"), &custom, plain)),
        "MISS"
    );
    assert_eq!(status(&gw.client().post(&path("a"), &custom, plain)), "HIT");
    assert_eq!(
        status(&gw.client().post(&path("b"), &custom, plain)),
        "MISS"
    );
    // A header that changes the answer (an API beta) is another entry.
    let body = chat("beta", false);
    assert_eq!(status(&post(&gw, &[], &body)), "MISS");
    assert_eq!(
        status(&post(&gw, &[("openai-beta", "assistants=v2")], &body)),
        "MISS"
    );
    assert_eq!(
        status(&post(&gw, &[("openai-beta", "assistants=v2")], &body)),
        "HIT"
    );
}

/// Sends `count` identical requests at once, each on its own connection.
fn all_at_once(gw: &Gateway, count: usize, body: &str) -> Vec<Response> {
    all_at_once_with(gw, count, body, &[])
}

fn all_at_once_with(
    gw: &Gateway,
    count: usize,
    body: &str,
    headers: &'static [(&'static str, &'static str)],
) -> Vec<Response> {
    let barrier = Arc::new(Barrier::new(count));
    let handles: Vec<_> = (0..count)
        .map(|_| {
            let barrier = barrier.clone();
            let addr = gw.addr;
            let body = body.to_string();
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                barrier.wait();
                c.post("/v1/chat/completions", headers, &body)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn fifty_identical_misses_make_one_upstream_call(shards: usize) {
    let mock = mock_with(MockConfig {
        latency: Duration::from_millis(300),
        ..MockConfig::default()
    });
    let gw = cached_gateway(shards, &mock.base_url());
    let rs = all_at_once(&gw, 50, &chat("stampede", false));
    assert_eq!(mock.requests_seen(), 1);
    for r in &rs {
        assert_eq!(r.status, 200);
        assert_eq!(r.body, rs[0].body);
    }
    let misses = rs.iter().filter(|r| status(r) == "MISS").count();
    assert_eq!(misses, 1);
    assert!(rs.iter().all(|r| matches!(status(r), "MISS" | "HIT")));
}

/// `count` identical streamed requests at once (with `headers`) to a cached
/// gateway whose provider streams 10 events 30 ms apart.
fn stream_stampede(
    shards: usize,
    count: usize,
    prompt: &str,
    headers: &'static [(&'static str, &'static str)],
) -> (aigw_loadtest::mock::MockServer, Gateway, Vec<Response>) {
    let mock = mock_with(MockConfig {
        chunks: 10,
        chunk_interval: Duration::from_millis(30),
        ..MockConfig::default()
    });
    let gw = cached_gateway(shards, &mock.base_url());
    let rs = all_at_once_with(&gw, count, &chat(prompt, true), headers);
    (mock, gw, rs)
}

/// A leader's stream that the provider cuts: every follower ends as its
/// leader's client does, with the typed error event (not a stream that
/// just stops), and nothing is stored.
fn stream_followers_of_a_cut_stream_get_its_error_event(shards: usize) {
    let (mock, gw, rs) = stream_stampede(shards, 20, "cut stampede", &[("x-mock-error", "cut")]);
    let led = mock.requests_seen();
    assert!(
        led < 20,
        "the requests were coalesced: {led} upstream calls"
    );
    for r in &rs {
        assert_eq!(r.status, 200);
        let last = r.sse_data().last().cloned().unwrap_or_default();
        assert!(
            last.contains("stream_truncated"),
            "{} ended with {last}",
            status(r)
        );
    }
    let again = post(&gw, &[], &chat("cut stampede", true));
    assert_eq!(status(&again), "MISS");
}

/// A stream that ends cleanly but short of its end (no finish reason, no
/// `[DONE]`): the leader's client and every follower get the typed error
/// event after what came, it is not stored, and every record says the
/// provider's stream was cut short, not completed; followers of a stream
/// carrying the provider's own error event are its error too.
fn a_stream_that_stops_short_is_truncated_for_leader_and_followers(shards: usize) {
    let (mock, gw, rs) =
        stream_stampede(shards, 10, "short stampede", &[("x-mock-error", "short")]);
    assert!(mock.requests_seen() < 10, "coalesced");
    for r in &rs {
        assert_eq!(r.status, 200);
        let data = r.sse_data();
        assert!(data.len() > 1, "the events that came are relayed: {data:?}");
        let last = json(data.last().unwrap().as_bytes());
        assert_eq!(last["error"]["code"], "stream_truncated", "{}", status(r));
        assert!(!data.iter().any(|d| d == "[DONE]"));
    }
    let again = post(
        &gw,
        &[("x-mock-error", "short")],
        &chat("short stampede", true),
    );
    assert_eq!(status(&again), "MISS", "a stream cut short is never stored");
    let with_error = all_at_once_with(
        &gw,
        5,
        &chat("error stampede", true),
        &[("x-mock-error", "stream-error")],
    );
    assert!(with_error.iter().all(|r| r.status == 200));
    // Every record: 10 + 1 cut short, 5 with the provider's error event.
    let rows = gw.log_rows_at_least(16, "limit=100");
    assert_eq!(rows.len(), 16);
    let count = |code: &str, outcome: &str| {
        rows.iter()
            .filter(|r| {
                r["error_code"].as_str() == Some(code)
                    && r["outcome"].as_str() == Some(outcome)
                    && r["error_source"].as_str() == Some("provider")
            })
            .count()
    };
    assert_eq!(
        count("stream_truncated", "aborted_by_provider"),
        11,
        "{rows:?}"
    );
    assert_eq!(count("stream_error", "completed"), 5, "{rows:?}");
    // And a stream that ends as it should still passes untouched.
    let r = post(&gw, &[], &chat("whole", true));
    assert_eq!(r.sse_data().last().map(String::as_str), Some("[DONE]"));
    assert!(!r.text().contains("stream_truncated"));
}

fn stream_followers_get_events_as_the_leader_does(shards: usize) {
    let mock = mock_with(MockConfig {
        chunks: 10,
        chunk_interval: Duration::from_millis(60),
        ..MockConfig::default()
    });
    let gw = cached_gateway(shards, &mock.base_url());
    let rs = all_at_once(&gw, 50, &chat("stream stampede", true));
    assert_eq!(mock.requests_seen(), 1);
    let leader = rs.iter().find(|r| status(r) == "MISS").expect("a leader");
    let leader_end = *leader.event_times.last().unwrap();
    for r in &rs {
        assert_eq!(r.status, 200);
        assert!(r.complete);
        assert_eq!(r.body, leader.body);
        assert_eq!(r.sse_data().last().map(String::as_str), Some("[DONE]"));
        // Each follower saw its first event while the leader's stream went on.
        assert!(
            r.event_times[0] < leader_end,
            "a follower waited for the whole stream"
        );
    }
    let c = cache_stats(&gw);
    assert!(
        n(&c, &["requests", "coalesced"]) + n(&c, &["requests", "hit"]) == 49,
        "{c}"
    );
}

fn followers_finish_a_stream_whose_leader_left(shards: usize) {
    let mock = mock_with(MockConfig {
        chunks: 10,
        chunk_interval: Duration::from_millis(50),
        ..MockConfig::default()
    });
    let gw = cached_gateway(shards, &mock.base_url());
    let body = chat("the leader leaves", true);
    // The leader reads its first event, then waits for the test to drop it.
    let mut leader = send_chat(&gw, &body);
    leader.set_read_timeout(Some(WAIT)).unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("data: ") {
        let mut buf = [0u8; 4096];
        let n = std::io::Read::read(&mut leader, &mut buf).unwrap();
        assert!(n > 0, "the leader's stream ended early");
        seen.extend_from_slice(&buf[..n]);
    }
    let followers = three_followers(&gw, &body, &[]);
    drop(leader);
    for f in followers {
        let r = f.join().unwrap();
        assert!(r.complete, "a follower's stream was cut with its leader");
        assert_eq!(r.sse_data().last().map(String::as_str), Some("[DONE]"));
    }
    assert_eq!(mock.requests_seen(), 1);
    // The leader's client aborted: the answer was shared, not stored.
    assert_eq!(status(&post(&gw, &[], &body)), "MISS");
}

/// A leader whose client leaves while it waits for the provider's head,
/// JSON or stream: its call goes on for the followers, who get the whole
/// answer; the leader's record is a 499 its client aborted, and the answer
/// is shared, not stored (its client never received it).
fn a_leader_whose_client_left_before_the_answer_is_not_stored(shards: usize) {
    let mock = mock_with(MockConfig {
        latency: Duration::from_millis(400),
        ..MockConfig::default()
    });
    let gw = cached_gateway(shards, &mock.base_url());
    for (n, stream) in [(0u64, false), (1, true)] {
        let body = chat(&format!("gone before the head {n}"), stream);
        let seen = mock.requests_seen();
        let leader = send_chat(&gw, &body);
        let deadline = Instant::now() + WAIT;
        while mock.requests_seen() < seen + 1 {
            assert!(Instant::now() < deadline, "the leader never went upstream");
        }
        let followers = followers_after(&gw, &body, &[], 3 * n);
        drop(leader);
        for f in followers {
            let r = f.join().unwrap();
            assert_eq!(r.status, 200);
            assert!(r.complete || !stream);
        }
        assert_eq!(mock.requests_seen(), seen + 1);
        assert_eq!(status(&post(&gw, &[], &body)), "MISS", "stream: {stream}");
    }
    let left = gw.log_rows_at_least(2, "limit=100&status=499");
    assert_eq!(left.len(), 2, "each leader's record is its client's abort");
}

/// A chat request sent on a connection of its own, not read (the caller
/// reads or drops it).
fn send_chat(gw: &Gateway, body: &str) -> std::net::TcpStream {
    let mut conn = std::net::TcpStream::connect(gw.addr).unwrap();
    conn.write_all(&common::wire::request_bytes(
        "POST",
        "/v1/chat/completions",
        &[],
        body.as_bytes(),
    ))
    .unwrap();
    conn
}

/// Three clients that send `body` (with `headers`), each on a thread of its
/// own, once all three follow the answer a leader is waiting for.
fn three_followers(
    gw: &Gateway,
    body: &str,
    headers: &'static [(&'static str, &'static str)],
) -> Vec<std::thread::JoinHandle<Response>> {
    followers_after(gw, body, headers, 0)
}

/// [`three_followers`] when `already` followers joined earlier flights.
fn followers_after(
    gw: &Gateway,
    body: &str,
    headers: &'static [(&'static str, &'static str)],
    already: u64,
) -> Vec<std::thread::JoinHandle<Response>> {
    let followers: Vec<_> = (0..3)
        .map(|_| {
            let (addr, b) = (gw.addr, body.to_string());
            std::thread::spawn(move || {
                Client::connect(addr).post("/v1/chat/completions", headers, &b)
            })
        })
        .collect();
    let deadline = Instant::now() + WAIT;
    while n(&cache_stats(gw), &["followers"]) < already + 3 {
        assert!(Instant::now() < deadline, "followers never joined");
        std::thread::sleep(Duration::from_millis(5));
    }
    followers
}

/// A leader whose client leaves before the provider's head (a whole JSON
/// answer's head comes only once it is generated) does not call the
/// provider off while others follow it: they get its answer, from the one call.
fn followers_keep_the_call_of_a_leader_that_left_before_the_head(shards: usize) {
    let mock = mock();
    let gw = cached_gateway(shards, &mock.base_url());
    let body = chat("the leader leaves early", false);
    const SLOW: &[(&str, &str)] = &[("x-mock-latency-ms", "800")];
    let mut leader = std::net::TcpStream::connect(gw.addr).unwrap();
    leader
        .write_all(&common::wire::request_bytes(
            "POST",
            "/v1/chat/completions",
            SLOW,
            body.as_bytes(),
        ))
        .unwrap();
    let followers = three_followers(&gw, &body, SLOW);
    drop(leader);
    let answers: Vec<_> = followers.into_iter().map(|f| f.join().unwrap()).collect();
    for r in &answers {
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.complete);
        assert_eq!(r.body, answers[0].body, "one answer for all");
    }
    assert_eq!(mock.requests_seen(), 1, "each follower called the provider");
}

/// A provider whose first request waits for the test, then fails with a 500;
/// every later request gets a 200 at once. Reports each arrival.
fn first_fails_upstream() -> (String, mpsc::Receiver<()>, mpsc::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (arrived_tx, arrived) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let release_rx = Arc::new(std::sync::Mutex::new(release_rx));
        let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let (arrived_tx, release_rx, first) =
                (arrived_tx.clone(), release_rx.clone(), first.clone());
            std::thread::spawn(move || {
                conn.set_read_timeout(Some(WAIT)).unwrap();
                while read_request(&mut conn).is_some() {
                    let _ = arrived_tx.send(());
                    let answer: &[u8] = if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
                        let _ = release_rx.lock().unwrap().recv_timeout(WAIT * 3);
                        b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
                    } else {
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}"
                    };
                    if conn.write_all(answer).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (format!("http://{addr}/v1"), arrived, release)
}

fn a_failing_leader_lets_followers_go_on_their_own(shards: usize) {
    let (url, arrived, release) = first_fails_upstream();
    let gw = cached_gateway(shards, &url);
    let body = chat("doomed leader", false);
    let addr = gw.addr;
    let b = body.clone();
    let leader =
        std::thread::spawn(move || Client::connect(addr).post("/v1/chat/completions", &[], &b));
    arrived
        .recv_timeout(WAIT)
        .expect("the leader reached the provider");
    let followers: Vec<_> = (0..5)
        .map(|_| {
            let b = body.clone();
            std::thread::spawn(move || Client::connect(addr).post("/v1/chat/completions", &[], &b))
        })
        .collect();
    // Every follower has joined the leader's call before it fails.
    let deadline = Instant::now() + WAIT;
    while n(&cache_stats(&gw), &["followers"]) < 5 {
        assert!(Instant::now() < deadline, "followers never joined");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The provider holds the leader's call a while (not a wait for
    // anything: the time the followers spend on it, measured below).
    std::thread::sleep(Duration::from_millis(300));
    release.send(()).unwrap();
    assert_eq!(leader.join().unwrap().status, 500);
    for f in followers {
        let r = f.join().unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "{\"ok\":true}"));
        // That wait was the provider's time, not the gateway's.
        assert!(r.gateway_ms() < 200.0, "{:?}", r.header("server-timing"));
    }
    // The leader and each follower asked the provider once.
    for _ in 0..5 {
        arrived
            .recv_timeout(WAIT)
            .expect("a follower went upstream");
    }
    // What they got is stored: the next asker is answered from the cache.
    wait_stored(&gw, 1);
    let r = post(&gw, &[], &body);
    assert_eq!((status(&r), r.text().as_str()), ("HIT", "{\"ok\":true}"));
    assert!(arrived.try_recv().is_err(), "a hit went upstream");
}

/// A follower's own `aigw-request-timeout` bounds its wait on the leader: it
/// times out as it would have on its own, without asking the provider again.
fn a_follower_keeps_its_own_request_timeout(shards: usize) {
    let mock = mock();
    let gw = cached_gateway(shards, &mock.base_url());
    let body = chat("slow leader", false);
    std::thread::scope(|s| {
        let leader = s.spawn(|| post(&gw, &[("x-mock-latency-ms", "1500")], &body));
        let deadline = Instant::now() + WAIT;
        while mock.requests_seen() == 0 {
            assert!(
                Instant::now() < deadline,
                "the leader never reached the mock"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        let asked = Instant::now();
        let r = post(&gw, &[("aigw-request-timeout", "200")], &body);
        assert!(
            asked.elapsed() < Duration::from_millis(1200),
            "{:?}",
            asked.elapsed()
        );
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (504, "upstream_timeout"),
            "{}",
            r.text()
        );
        assert_eq!(status(&r), "MISS");
        assert_eq!(leader.join().unwrap().status, 200);
    });
    assert_eq!(mock.requests_seen(), 1);
}

/// Sends `count` distinct prompts; returns each prompt's first answer body.
fn fill(gw: &Gateway, prefix: &str, count: usize) -> BTreeMap<String, Vec<u8>> {
    let mut c = gw.client();
    (0..count)
        .map(|i| {
            let body = chat(&format!("{prefix} {i}"), i % 3 == 0);
            let r = c.post("/v1/chat/completions", &[], &body);
            assert_eq!(r.status, 200);
            (body, r.body)
        })
        .collect()
}

fn restart_keeps_entries_and_damage_loses_only_entries(shards: usize) {
    let mock = mock();
    let mut first = cached_gateway(shards, &mock.base_url());
    let data = first.data_dir();
    let answers = fill(&first, "keep", 60);
    first.terminate();
    assert!(first.wait_exit().success());
    let second = Gateway::with(shards)
        .provider("up", &mock.base_url(), "")
        .toml(CACHE)
        .data_dir(&data)
        .start();
    assert!(
        second.stderr().contains("60 entries kept"),
        "{}",
        second.stderr()
    );
    for (body, answer) in &answers {
        let r = post(&second, &[], body);
        assert_eq!(status(&r), "HIT", "lost across a restart");
        assert_eq!(&r.body, answer);
    }
    drop(second);
    // Random byte flips in the files lose entries, never answer wrong.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for i in 0..shards {
        let path = data.join(format!("cache/partition-{i}.bin"));
        let mut bytes = std::fs::read(&path).unwrap();
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Mostly where entries live (the first segments), some anywhere.
            let span = if x & 1 == 0 { 256 << 10 } else { bytes.len() };
            let at = (x >> 8) as usize % span.min(bytes.len());
            bytes[at] ^= 1 << ((x >> 4) & 7);
        }
        std::fs::write(&path, &bytes).unwrap();
    }
    let third = Gateway::with(shards)
        .provider("up", &mock.base_url(), "")
        .toml(CACHE)
        .data_dir(&data)
        .start();
    let mut hits = 0;
    for (body, answer) in &answers {
        let r = post(&third, &[], body);
        assert_eq!(r.status, 200);
        if status(&r) == "HIT" {
            assert_eq!(&r.body, answer, "a damaged entry answered");
            hits += 1;
        }
    }
    assert!(hits < answers.len(), "no flip landed on an entry");
    drop(first);
}

fn kill9_during_writes_never_serves_a_wrong_answer(shards: usize) {
    let mock = mock();
    let mut gw = cached_gateway(shards, &mock.base_url());
    let data = gw.data_dir();
    // Writers fill the cache until the kill; each keeps what it saw.
    let (tx, rx) = mpsc::channel::<(String, Vec<u8>)>();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let addr = gw.addr;
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                for i in 0.. {
                    let body = chat(
                        &format!("heavy {w} {i} {}", "x".repeat(i % 7 * 300)),
                        i % 2 == 0,
                    );
                    match c.try_read_response_after(&common::wire::request_bytes(
                        "POST",
                        "/v1/chat/completions",
                        &[],
                        body.as_bytes(),
                    )) {
                        Ok(r) if r.status == 200 && r.complete => {
                            if tx.send((body, r.body)).is_err() {
                                return;
                            }
                        }
                        _ => return,
                    }
                }
            })
        })
        .collect();
    drop(tx);
    let mut seen = BTreeMap::new();
    for (body, answer) in rx.iter().take(300) {
        seen.insert(body, answer);
    }
    gw.kill9();
    for w in writers {
        let _ = w.join();
    }
    seen.extend(rx.try_iter());
    let again = Gateway::with(shards)
        .provider("up", &mock.base_url(), "")
        .toml(CACHE)
        .data_dir(&data)
        .start();
    let mut hits = 0;
    for (body, answer) in &seen {
        let r = post(&again, &[], body);
        assert_eq!(r.status, 200);
        if status(&r) == "HIT" {
            assert_eq!(
                &r.body, answer,
                "a hit after kill -9 differs from what the provider sent"
            );
            hits += 1;
        }
    }
    assert!(hits > seen.len() / 2, "{hits} of {} survived", seen.len());
    drop(gw);
}

fn another_shard_count_drops_the_entries_and_says_so(shards: usize) {
    let mock = mock();
    let mut first = cached_gateway(shards, &mock.base_url());
    let data = first.data_dir();
    let answers = fill(&first, "reshard", 10);
    first.terminate();
    assert!(first.wait_exit().success());
    let other = Gateway::with(shards + 1)
        .provider("up", &mock.base_url(), "")
        .toml(CACHE)
        .data_dir(&data)
        .start();
    let said = other.wait_stderr("started empty");
    assert!(
        said.contains(&format!("written for {shards} shards")) && said.contains("dropped"),
        "{said}"
    );
    for body in answers.keys() {
        let r = post(&other, &[], body);
        assert_eq!((r.status, status(&r)), (200, "MISS"));
    }
    drop(first);
}

fn a_second_instance_on_the_same_data_dir_is_refused(shards: usize) {
    let mock = mock();
    let gw = cached_gateway(shards, &mock.base_url());
    let file = gw.dir().join("second.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n[admin]\nsocket = \"{}/other.sock\"\n{CACHE}",
            gw.data_dir().display(),
            gw.dir().display()
        ),
    )
    .unwrap();
    let (code, _, stderr) = run_aigw(&["serve", "--config", file.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("server.data_dir") && stderr.contains("in use by another aigw"),
        "{stderr}"
    );
    assert_eq!(status(&post(&gw, &[], &chat("still here", false))), "MISS");
}

fn purge_all_by_key_and_by_provider(shards: usize) {
    let mock = mock();
    let gw = Gateway::with(shards)
        .provider("up", &mock.base_url(), "")
        .provider("other", &mock.base_url(), "")
        .toml(CACHE)
        .start();
    let a = chat("purge a", false);
    let b = chat("purge b", false);
    let o = a.replace("up/gpt-x", "other/gpt-x");
    for body in [&a, &b, &o] {
        assert_eq!(status(&post(&gw, &[], body)), "MISS");
    }
    wait_stored(&gw, 3);
    // By key: the key is in the request log.
    let id = post(&gw, &[], &a)
        .header("aigw-request-id")
        .unwrap()
        .to_string();
    let (code, row) = admin_get(&gw.admin_socket, &format!("/logs?id={id}"));
    assert_eq!(code, 200);
    let row = json(row.split(|c| *c == b'\n').next().unwrap());
    assert_eq!(row["cache"], "HIT");
    let key = row["cache_key"].as_str().unwrap().to_string();
    assert_eq!(key.len(), 32);
    // `aigw logs show` prints it too, where the purge's help says to look.
    let data = gw.data_dir();
    let (code, shown, err) = run_aigw(&["logs", "--data-dir", data.to_str().unwrap(), "show", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("cache key") && l.ends_with(&key)),
        "{shown}"
    );
    let socket = gw.admin_socket.to_str().unwrap();
    let (code, out, err) = run_aigw(&["cache", "purge", "--key", &key, "--socket", socket]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(out.as_bytes())["purged"].as_u64(), Some(1));
    assert_eq!(status(&post(&gw, &[], &a)), "MISS");
    wait_stored(&gw, 4);
    assert_eq!(status(&post(&gw, &[], &b)), "HIT");
    // By provider.
    let (code, out) = admin_post(&gw.admin_socket, "/cache/purge?provider=other");
    assert_eq!((code, json(&out)["purged"].as_u64()), (200, Some(1)));
    assert_eq!(status(&post(&gw, &[], &o)), "MISS");
    wait_stored(&gw, 5);
    assert_eq!(status(&post(&gw, &[], &b)), "HIT");
    // Everything; a bad filter is a 400 that says what to use.
    let (code, out) = admin_post(&gw.admin_socket, "/cache/purge");
    assert_eq!((code, json(&out)["purged"].as_u64()), (200, Some(3)));
    assert_eq!(status(&post(&gw, &[], &b)), "MISS");
    let (code, out) = admin_post(&gw.admin_socket, "/cache/purge?key=xyz");
    assert_eq!(code, 400, "{}", String::from_utf8_lossy(&out));
    // One filter at a time, a provider that exists: two filters purged
    // what the last one said (found by a review), a misspelt provider
    // purged nothing and said so by `0` alone.
    for (query, says) in [
        (format!("key={key}&provider=up"), "give one filter"),
        ("provider=up&provider=other".to_string(), "give one filter"),
        ("provider=".to_string(), "give a provider"),
        ("provider=nosuch".to_string(), "`nosuch`"),
    ] {
        let (code, out) = admin_post(&gw.admin_socket, &format!("/cache/purge?{query}"));
        let out = String::from_utf8_lossy(&out);
        assert_eq!(code, 400, "{query}: {out}");
        assert!(out.contains(says), "{query}: {out}");
    }
    let (code, _, err) = run_aigw(&[
        "cache",
        "purge",
        "--key",
        &key,
        "--provider",
        "up",
        "--socket",
        socket,
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("cannot be used with"), "{err}");
    assert_eq!(n(&cache_stats(&gw), &["purged"]), 5);

    // An answer under way while a purge runs reaches its client, and is
    // neither stored nor shared after it: it may be what the purge was for.
    let held = HeldUpstream::start();
    let gw = Gateway::with(shards)
        .provider("up", &held.base_url(), "")
        .toml(CACHE)
        .start();
    let slow = chat("purge slow", false);
    std::thread::scope(|s| {
        let asked = s.spawn(|| post(&gw, &[], &slow));
        held.wait_arrival();
        let (code, _) = admin_post(&gw.admin_socket, "/cache/purge");
        assert_eq!(code, 200);
        held.release();
        let r = asked.join().unwrap();
        assert_eq!((r.status, status(&r)), (200, "MISS"));
    });
    // Asked again, it goes to the provider again.
    held.release();
    assert_eq!(status(&post(&gw, &[], &slow)), "MISS");
    held.wait_arrival();
}

/// An upstream that answers every request 200 with a small JSON object and
/// counts what reaches it.
fn counting_upstream() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let counter = counter.clone();
            std::thread::spawn(move || {
                conn.set_read_timeout(Some(WAIT)).unwrap();
                while read_request(&mut conn).is_some() {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 21\r\n\r\n{\"id\":\"obj_1\",\"ok\":1}";
                    if conn.write_all(answer).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (format!("http://{addr}/v1"), seen)
}

/// A POST that changes state on the provider (a thread's message, a run, a
/// batch, an upload's completion, a Responses turn of a stored conversation
/// or in the background) reaches it every time it is sent: never a hit.
/// Generating and embedding requests, pass-through or unified, are cached.
fn state_changing_posts_always_reach_the_provider(shards: usize) {
    let (url, seen) = counting_upstream();
    let gw = cached_gateway(shards, &url);
    let reached = || seen.load(std::sync::atomic::Ordering::SeqCst);
    let twice = |path: &str, body: &str| -> (Vec<String>, usize) {
        let before = reached();
        let statuses = (0..2)
            .map(|_| {
                let r = gw.client().post(path, &[], body);
                assert_eq!(r.status, 200, "{path}: {}", r.text());
                status(&r).to_string()
            })
            .collect();
        (statuses, reached() - before)
    };
    for (path, body) in [
        (
            "/up/threads/thread_1/messages",
            r#"{"role":"user","content":"go on"}"#,
        ),
        ("/up/threads/thread_1/runs", r#"{"assistant_id":"asst_1"}"#),
        ("/up/threads/runs", r#"{"assistant_id":"asst_1"}"#),
        (
            "/up/batches",
            r#"{"input_file_id":"f","endpoint":"/v1/chat/completions"}"#,
        ),
        ("/up/uploads/upload_1/complete", r#"{"part_ids":["p"]}"#),
        ("/up/vector_stores", r#"{"name":"x"}"#),
        (
            "/up/chat/completions/chatcmpl_1",
            r#"{"metadata":{"a":"b"}}"#,
        ),
        (
            "/up/responses",
            r#"{"model":"gpt-x","conversation":"conv_1","input":"go on"}"#,
        ),
        (
            "/up/responses",
            r#"{"model":"gpt-x","Background":true,"input":"go on"}"#,
        ),
        (
            "/v1/responses",
            r#"{"model":"up/gpt-x","conversation":{"id":"conv_1"},"input":"go on"}"#,
        ),
        (
            "/v1/responses",
            r#"{"model":"up/gpt-x","background":true,"input":"go on"}"#,
        ),
    ] {
        let (statuses, upstream) = twice(path, body);
        assert_eq!(statuses, ["BYPASS", "BYPASS"], "{path} {body}");
        assert_eq!(
            upstream, 2,
            "{path} {body}: the repeat must reach the provider"
        );
    }
    for (path, body) in [
        ("/up/chat/completions", r#"{"model":"gpt-x","messages":[]}"#),
        ("/up/embeddings", r#"{"model":"e","input":"x"}"#),
        (
            "/up/responses",
            r#"{"model":"gpt-x","background":false,"input":"hi"}"#,
        ),
        (
            "/v1/responses",
            r#"{"model":"up/gpt-x","previous_response_id":"resp_1","input":"hi"}"#,
        ),
        ("/v1/embeddings", r#"{"model":"up/e","input":"y"}"#),
    ] {
        let (statuses, upstream) = twice(path, body);
        assert_eq!(statuses, ["MISS", "HIT"], "{path} {body}");
        assert_eq!(upstream, 1, "{path} {body}");
    }
}

at_1_and_2_shards!(
    gemini_pass_through_streams_are_stored_only_when_they_finished,
    a_miss_then_byte_identical_hits,
    streams_replay_as_streams_without_the_usage_event_nobody_asked_for,
    controls_skip_ttl_and_custom_keys,
    what_the_provider_is_asked_and_in_which_format_is_in_the_key,
    two_credentials_never_share_an_entry,
    entries_expire,
    cut_streams_errors_and_no_store_are_never_stored,
    errors_in_a_200_stream_and_other_askers_are_never_shared,
    fifty_identical_misses_make_one_upstream_call,
    stream_followers_get_events_as_the_leader_does,
    stream_followers_of_a_cut_stream_get_its_error_event,
    a_stream_that_stops_short_is_truncated_for_leader_and_followers,
    a_leader_whose_client_left_before_the_answer_is_not_stored,
    a_failing_leader_lets_followers_go_on_their_own,
    a_follower_keeps_its_own_request_timeout,
    followers_keep_the_call_of_a_leader_that_left_before_the_head,
    followers_finish_a_stream_whose_leader_left,
    restart_keeps_entries_and_damage_loses_only_entries,
    kill9_during_writes_never_serves_a_wrong_answer,
    another_shard_count_drops_the_entries_and_says_so,
    a_second_instance_on_the_same_data_dir_is_refused,
    purge_all_by_key_and_by_provider,
    state_changing_posts_always_reach_the_provider,
);

#[test]
fn the_cache_is_off_by_default() {
    let mock = mock();
    let gw = Gateway::with(1)
        .provider("up", &mock.base_url(), "")
        .start();
    let r = post(&gw, &[], &chat("no cache", false));
    assert!(r.header("aigw-cache-status").is_none());
    assert!(gw.stats().get("cache").is_none());
    let (code, _) = admin_post(&gw.admin_socket, "/cache/purge");
    assert_eq!(code, 409);
}
