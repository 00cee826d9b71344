//! The request log end to end: every answered request leaves one row with the
//! right fields; `aigw logs` and `GET /logs` select exactly the rows each filter
//! names; retention, payload caps, `collect-log: false`, bad metadata, a kill -9,
//! and secrets that must never be written anywhere. At 1 and 2 shards.

mod common;

use common::gateway::{AIGW, admin_get};
use common::{Gateway, json, mock};
use simd_json::prelude::*;
use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

fn chat(model: &str, stream: bool) -> String {
    format!(
        r#"{{"model":"{model}","messages":[{{"role":"user","content":"hello log"}}],"stream":{stream}}}"#
    )
}

/// `GET /logs?QUERY` on the admin socket: every request answered before is in it.
fn admin_logs(gw: &Gateway, query: &str) -> Vec<simd_json::OwnedValue> {
    let (status, body) = admin_get(&gw.admin_socket, &format!("/logs?{query}"));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    body.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(json)
        .collect()
}

/// `aigw logs --data-dir D --json ARGS`: (exit code, rows, stderr).
fn cli(gw: &Gateway, args: &[&str]) -> (i32, Vec<simd_json::OwnedValue>, String) {
    let out = Command::new(AIGW)
        .arg("logs")
        .arg("--data-dir")
        .arg(gw.data_dir())
        .arg("--json")
        .args(args)
        .output()
        .expect("run aigw logs");
    let rows = out
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(json)
        .collect();
    (
        out.status.code().unwrap_or(-1),
        rows,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ids(rows: &[simd_json::OwnedValue]) -> BTreeSet<String> {
    rows.iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

fn id_of(r: &common::Response) -> String {
    r.header("aigw-request-id").expect("request id").to_string()
}

fn a_burst_leaves_exactly_one_row_per_request(shards: usize) {
    let mock = mock();
    let gw = Gateway::with(shards)
        .provider("up", &mock.base_url(), "")
        .start();
    let mut sent = BTreeSet::new();
    let mut streamed = BTreeSet::new();
    for conn in 0..4 {
        let mut c = gw.client();
        // A load balancer's probe leaves no row.
        assert_eq!(c.get("/healthz").status, 200);
        for i in 0..10 {
            let stream = (conn + i) % 3 == 0;
            let r = c.post("/v1/chat/completions", &[], &chat("up/gpt-x", stream));
            assert_eq!(r.status, 200);
            if stream {
                streamed.insert(id_of(&r));
            }
            sent.insert(id_of(&r));
        }
    }
    let rows = admin_logs(&gw, "limit=1000");
    assert_eq!(rows.len(), 40);
    assert_eq!(ids(&rows), sent);
    let stats = gw.stats();
    let sum = |k: &str| rows.iter().map(|r| r[k].as_u64().unwrap()).sum::<u64>();
    assert_eq!(sum("tokens_in"), stats["tokens"]["input"].as_u64().unwrap());
    assert_eq!(
        sum("tokens_out"),
        stats["tokens"]["output"].as_u64().unwrap()
    );
    for r in &rows {
        assert_eq!(r["provider"], "up");
        assert_eq!(r["model"], "gpt-x");
        assert_eq!(r["route"], "unified");
        assert_eq!(r["path"], "/v1/chat/completions");
        assert_eq!(r["status"].as_u64(), Some(200));
        assert_eq!(r["outcome"], "completed");
        let id = r["id"].as_str().unwrap();
        assert_eq!(r["stream"].as_bool(), Some(streamed.contains(id)), "{r}");
        if streamed.contains(id) {
            assert!(r["ttft_us"].as_u64().is_some(), "{r}");
        }
        assert!(r["total_us"].as_u64().unwrap() >= r["gateway_us"].as_u64().unwrap());
    }
    // The CLI reads the same file, newest first.
    let (code, cli_rows, err) = cli(&gw, &["--limit", "1000"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(ids(&cli_rows), sent);
    let times: Vec<&str> = cli_rows
        .iter()
        .map(|r| r["time"].as_str().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {times:?}"
    );
}

fn each_filter_selects_exactly_its_rows(shards: usize) {
    let mock = mock();
    let other = common::mock();
    let gw = Gateway::with(shards)
        .provider("up", &mock.base_url(), "")
        .provider("other", &other.base_url(), "")
        .start();
    let mut c = gw.client();
    let a = id_of(&c.post(
        "/v1/chat/completions",
        &[
            ("aigw-metadata", r#"{"user":"ann","team":"x","tier":2}"#),
            ("aigw-event-id", "ev-a"),
            ("user-agent", "ua-alpha/1"),
        ],
        &chat("up/gpt-a", false),
    ));
    let b = id_of(&c.post(
        "/v1/chat/completions",
        &[
            ("cf-aig-metadata", r#"{"user":"bob","vip":true}"#),
            ("user-agent", "ua-beta/2"),
        ],
        &chat("up/gpt-b", true),
    ));
    let r = c.post(
        "/v1/chat/completions",
        &[("x-mock-error", "500")],
        &chat("up/gpt-a", false),
    );
    assert_eq!(r.status, 500);
    let fail = id_of(&r);
    let r = c.post("/v1/chat/completions", &[], "{not json");
    assert_eq!(r.status, 400);
    let bad = id_of(&r);
    let slow = id_of(&c.post(
        "/v1/chat/completions",
        &[("x-mock-latency-ms", "300")],
        &chat("up/gpt-c", false),
    ));
    let elsewhere = id_of(&c.post("/v1/chat/completions", &[], &chat("other/gpt-a", false)));
    // Everything is committed once the admin socket has answered a query.
    assert_eq!(admin_logs(&gw, "limit=100").len(), 6);

    let a_upper = a.to_uppercase();
    let set = |v: &[&String]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let all = [&a, &b, &fail, &bad, &slow, &elsewhere];
    let table: Vec<(Vec<&str>, BTreeSet<String>)> = vec![
        (vec!["--status", "500"], set(&[&fail])),
        (vec!["--status", "4xx"], set(&[&bad])),
        (vec!["--status", "2xx"], set(&[&a, &b, &slow, &elsewhere])),
        (vec!["--source", "client"], set(&[&bad])),
        (vec!["--source", "provider"], set(&[&fail])),
        (vec!["--source", "gateway"], set(&[])),
        (vec!["--provider", "other"], set(&[&elsewhere])),
        (vec!["--model", "gpt-a"], set(&[&a, &fail, &elsewhere])),
        (vec!["--model", "other/gpt-a"], set(&[&elsewhere])),
        (vec!["--meta", "user=ann"], set(&[&a])),
        (vec!["--meta", "user=bob"], set(&[&b])),
        (vec!["--meta", "user=ann", "--meta", "team=x"], set(&[&a])),
        (vec!["--meta", "user=ann", "--meta", "team=y"], set(&[])),
        (vec!["--meta", "tier=2"], set(&[&a])),
        (vec!["--meta", "vip=true"], set(&[&b])),
        (vec!["--id", &a], set(&[&a])),
        (vec!["--id", &a_upper], set(&[&a])),
        (vec!["--event-id", "ev-a"], set(&[&a])),
        (vec!["--user-agent", "beta"], set(&[&b])),
        (vec!["--min-duration", "250ms"], set(&[&slow])),
        (
            vec!["--max-duration", "250ms"],
            set(&[&a, &b, &fail, &bad, &elsewhere]),
        ),
        (vec!["--min-tokens", "1"], set(&[&a, &b, &slow, &elsewhere])),
        (vec!["--max-tokens", "0"], set(&[&fail, &bad])),
        // Bounds past any stored value hold as such (they wrapped negative).
        (vec!["--max-tokens", "18446744073709551615"], set(&all)),
        (vec!["--min-tokens", "9223372036854775808"], set(&[])),
        (vec!["--max-duration", "99999999999h"], set(&all)),
        (vec!["--min-duration", "99999999999h"], set(&[])),
        (vec!["--since", "1h"], set(&all)),
        (vec!["--until", "1h"], set(&[])),
        (
            vec![
                "--since",
                "2000-01-01T00:00:00Z",
                "--until",
                "2100-01-01T00:00:00Z",
            ],
            set(&all),
        ),
        (vec!["--limit", "2"], set(&[&slow, &elsewhere])),
        // No model here has a price: only what used no tokens has a cost (zero).
        (vec!["--min-cost", "0"], set(&[&fail, &bad])),
        (vec!["--min-cost", "0.000001"], set(&[])),
        (vec!["--cache", "HIT"], set(&[])),
    ];
    for (args, want) in table {
        let (code, rows, err) = cli(&gw, &args);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert_eq!(ids(&rows), want, "aigw logs {args:?}");
    }
    // The admin socket takes the same filters.
    assert_eq!(
        ids(&admin_logs(&gw, "meta=user%3Dann&status=2xx")),
        set(&[&a])
    );
    let row = &admin_logs(&gw, &format!("id={a}"))[0];
    assert_eq!(row["event_id"], "ev-a");
    assert_eq!(row["user_agent"], "ua-alpha/1");
    assert_eq!(row["metadata"]["tier"].as_u64(), Some(2));
    let row = &admin_logs(&gw, &format!("id={bad}"))[0];
    assert_eq!(
        (row["error_source"].as_str(), row["error_code"].as_str()),
        (Some("client"), Some("invalid_json"))
    );
    // Bad filters are errors that say what is wrong.
    let (code, _, err) = cli(&gw, &["--status", "6xx"]);
    assert_eq!(code, 2);
    assert!(err.contains("status"), "{err}");
    let (status, body) = admin_get(&gw.admin_socket, "/logs?colour=red");
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
}

fn rows_older_than_max_age_are_deleted(shards: usize) {
    let mock = mock();
    let mut gw = Gateway::with(shards)
        .provider("up", &mock.base_url(), "")
        .toml("[logs]\nmax_age = \"1ms\"")
        .start();
    let mut c = gw.client();
    for _ in 0..3 {
        assert_eq!(
            c.post("/v1/chat/completions", &[], &chat("up/m", false))
                .status,
            200
        );
    }
    drop(c);
    admin_logs(&gw, "limit=1");
    assert_eq!(
        gw.stats()["logs"]["written"].as_u64(),
        Some(3),
        "the rows were stored"
    );
    // Retention also runs as the log thread stops; by then every row is older
    // than a millisecond.
    gw.terminate();
    assert!(gw.wait_exit().success());
    let (code, rows, err) = cli(&gw, &["--limit", "100"]);
    assert_eq!(code, 0, "{err}");
    assert!(rows.is_empty(), "{rows:?}");
}

fn follow_prints_new_rows_as_they_are_stored(shards: usize) {
    let mock = mock();
    let gw = Gateway::with(shards)
        .provider("up", &mock.base_url(), "")
        .start();
    let mut c = gw.client();
    let first = id_of(&c.post("/v1/chat/completions", &[], &chat("up/m", false)));
    admin_logs(&gw, "limit=1");
    let mut follow = Command::new(AIGW)
        .args(["logs", "--follow", "--json", "--data-dir"])
        .arg(gw.data_dir())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = common::gateway::lines_of(follow.stdout.take().unwrap());
    let next_id = |lines: &std::sync::mpsc::Receiver<String>| {
        let line = lines.recv_timeout(common::WAIT).expect("a row");
        json(line.as_bytes())["id"].as_str().unwrap().to_string()
    };
    // The latest row first, then each new one as it is committed.
    assert_eq!(next_id(&lines), first);
    let second = id_of(&c.post("/v1/chat/completions", &[], &chat("up/m", false)));
    admin_logs(&gw, "limit=1");
    assert_eq!(next_id(&lines), second);
    let _ = follow.kill();
    let _ = follow.wait();
}

fn retention_deletes_the_oldest_first(shards: usize) {
    let mock = mock();
    let gw = Gateway::with(shards)
        .provider("up", &mock.base_url(), "")
        .toml("[logs]\nmax_rows = 5")
        .start();
    let mut c = gw.client();
    let mut order = Vec::new();
    for _ in 0..8 {
        order.push(id_of(&c.post(
            "/v1/chat/completions",
            &[],
            &chat("up/m", false),
        )));
        // One commit per request, so each batch is older than the next.
        admin_logs(&gw, "limit=1");
    }
    let kept = ids(&admin_logs(&gw, "limit=100"));
    let newest: BTreeSet<String> = order[3..].iter().cloned().collect();
    assert_eq!(kept, newest);
    assert_eq!(gw.stats()["logs"]["rows"].as_u64(), Some(5));
}

fn payloads_are_capped_and_streams_stored_as_received(shards: usize) {
    let mock = mock();
    let gw = Gateway::with(shards)
        .provider("up", &mock.base_url(), "")
        .toml("[logs]\npayloads = true\npayload_max = \"2KiB\"")
        .start();
    let mut c = gw.client();
    let streamed = c.post(
        "/v1/chat/completions",
        &[("x-mock-chunks", "5")],
        &chat("up/m", true),
    );
    assert_eq!(streamed.status, 200);
    let long_prompt = "p".repeat(5000);
    let big = c.post(
        "/v1/chat/completions",
        &[("x-mock-reply-bytes", "6000")],
        &format!(r#"{{"model":"up/m","messages":[{{"role":"user","content":"{long_prompt}"}}]}}"#),
    );
    assert_eq!(big.status, 200);
    admin_logs(&gw, "limit=1");

    let show = |id: &str| {
        let out = Command::new(AIGW)
            .args(["logs", "--data-dir"])
            .arg(gw.data_dir())
            .args(["show", id, "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        json(&out.stdout)
    };
    let s = show(&id_of(&streamed));
    assert_eq!(
        s["response_body"].as_str().unwrap().as_bytes(),
        &streamed.body[..]
    );
    assert_eq!(s["response_body_truncated"].as_bool(), Some(false));
    assert_eq!(
        s["request_body"].as_str(),
        Some(chat("up/m", true).as_str())
    );
    let s = show(&id_of(&big));
    let resp = s["response_body"].as_str().unwrap();
    assert_eq!(resp.len(), 2048);
    assert_eq!(resp.as_bytes(), &big.body[..2048]);
    assert_eq!(s["response_body_truncated"].as_bool(), Some(true));
    assert_eq!(s["request_body"].as_str().unwrap().len(), 2048);
    assert_eq!(s["request_body_truncated"].as_bool(), Some(true));
}

fn collect_log_false_leaves_no_row(shards: usize) {
    let mock = mock();
    let gw = Gateway::with(shards)
        .provider("up", &mock.base_url(), "")
        .start();
    let mut c = gw.client();
    for h in ["aigw-collect-log", "cf-aig-collect-log"] {
        let r = c.post(
            "/v1/chat/completions",
            &[(h, "false")],
            &chat("up/m", false),
        );
        assert_eq!(r.status, 200);
    }
    let kept = id_of(&c.post(
        "/v1/chat/completions",
        &[("aigw-collect-log", "true")],
        &chat("up/m", false),
    ));
    let rows = admin_logs(&gw, "limit=100");
    assert_eq!(ids(&rows), BTreeSet::from([kept]));
    assert_eq!(
        gw.stats()["requests"].as_u64(),
        Some(3),
        "still counted in stats"
    );
    // And in usage (and so in a restart's rebuild): tallied, without a row.
    let (code, body) = common::gateway::admin_get(&gw.admin_socket, "/usage?by=provider");
    assert_eq!(code, 200);
    let usage = json(&body);
    assert_eq!(usage["groups"][0]["value"].as_str(), Some("up"));
    assert_eq!(usage["groups"][0]["requests"].as_u64(), Some(3));
}

/// `aigw usage` counts the tokens providers used, as `/stats` does: a cache
/// hit's were saved (logged or tallied, it counts as cached).
fn usage_counts_the_tokens_providers_used_not_those_hits_saved(shards: usize) {
    let mock = mock();
    let gw = Gateway::with(shards)
        .provider("up", &mock.base_url(), "")
        .toml("[cache]\nenabled = true\nsize = \"16MiB\"\nmax_entry = \"1MiB\"\n")
        .start();
    let mut c = gw.client();
    let body = chat("up/m", false);
    let miss = c.post("/v1/chat/completions", &[], &body);
    assert_eq!(miss.header("aigw-cache-status"), Some("MISS"));
    let used = miss.json()["usage"]["prompt_tokens"].as_u64().unwrap();
    for collect in ["true", "false"] {
        let hit = c.post(
            "/v1/chat/completions",
            &[("aigw-collect-log", collect)],
            &body,
        );
        assert_eq!(hit.header("aigw-cache-status"), Some("HIT"));
    }
    let (code, out) = common::gateway::admin_get(&gw.admin_socket, "/usage?by=provider");
    assert_eq!(code, 200);
    let usage = json(&out);
    // One grouping a query: a second `by` would silently win.
    let (code, twice) = common::gateway::admin_get(&gw.admin_socket, "/usage?by=provider&by=key");
    assert_eq!(code, 400, "{}", String::from_utf8_lossy(&twice));
    let up = &usage["groups"][0];
    assert_eq!(
        (up["requests"].as_u64(), up["cached"].as_u64()),
        (Some(3), Some(2)),
        "{usage}"
    );
    assert_eq!(up["tokens_in"].as_u64(), Some(used), "{usage}");
    assert_eq!(gw.stats()["tokens"]["input"].as_u64(), Some(used));
}

fn sampling_keeps_every_error_and_a_share_of_successes(shards: usize) {
    let mock = mock();
    let gw = Gateway::with(shards)
        .provider("up", &mock.base_url(), "")
        .toml("[logs]\nsample = 0.0")
        .start();
    let mut c = gw.client();
    for _ in 0..5 {
        assert_eq!(
            c.post("/v1/chat/completions", &[], &chat("up/m", false))
                .status,
            200
        );
    }
    let bad = id_of(&c.post("/v1/chat/completions", &[], "{"));
    let failed = id_of(&c.post(
        "/v1/chat/completions",
        &[("x-mock-error", "503")],
        &chat("up/m", false),
    ));
    assert_eq!(
        ids(&admin_logs(&gw, "limit=100")),
        BTreeSet::from([bad, failed])
    );
}

fn bad_metadata_is_a_400_that_names_the_problem(shards: usize) {
    let mock = mock();
    let gw = Gateway::with(shards)
        .provider("up", &mock.base_url(), "")
        .start();
    let mut c = gw.client();
    for (value, says) in [
        ("not json", "not a JSON object"),
        (r#"{"a":{"b":1}}"#, "nesting is not allowed"),
        (r#"{"a":[1]}"#, "nesting is not allowed"),
        (r#"{"a":null}"#, "not a string, number or boolean"),
        (
            r#"{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6}"#,
            "it has 6 entries",
        ),
        (r#"{"a":1,"a":2}"#, "appears more than once"),
    ] {
        let r = c.post(
            "/v1/chat/completions",
            &[("aigw-metadata", value)],
            &chat("up/m", false),
        );
        assert_eq!(r.status, 400, "{value}");
        assert_eq!(r.error_code(), "invalid_metadata");
        assert!(r.text().contains(says), "{value}: {}", r.text());
    }
    assert_eq!(mock.requests_seen(), 0);
}

fn a_kill_9_loses_at_most_one_flush_interval(shards: usize) {
    let mock = mock();
    let mut gw = Gateway::with(shards)
        .provider("up", &mock.base_url(), "")
        .toml("[logs]\nflush_interval = \"100ms\"")
        .start();
    let mut c = gw.client();
    let mut sent = BTreeSet::new();
    for _ in 0..30 {
        sent.insert(id_of(&c.post(
            "/v1/chat/completions",
            &[],
            &chat("up/m", false),
        )));
    }
    // The property under test is time itself: a request answered more than
    // one interval (plus the commit) before the kill is in the store.
    let answered = Instant::now();
    std::thread::sleep(
        Duration::from_millis(100) * 3 - answered.elapsed().min(Duration::from_millis(100)),
    );
    gw.kill9();
    let (code, rows, err) = cli(&gw, &["--limit", "1000"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(ids(&rows), sent);
}

fn no_secret_is_written_or_shown_anywhere(shards: usize) {
    const PROVIDER_KEY: &str = "sk-canary-provider-7f3a";
    const CLIENT_KEY: &str = "sk-canary-client-91bd";
    const X_KEY: &str = "sk-canary-xapikey-22c1";
    const GW_KEY: &str = "sk-canary-gateway-5e0f";
    let mock = mock();
    let mut gw = Gateway::with(shards)
        .provider(
            "up",
            &mock.base_url(),
            "api_key_env = \"AIGW_TEST_CANARY_KEY\"",
        )
        .provider("own", &mock.base_url(), "")
        .env("AIGW_TEST_CANARY_KEY", PROVIDER_KEY)
        .toml("[logs]\npayloads = true")
        .start();
    let mut c = gw.client();
    let headers = [
        ("authorization", &*format!("Bearer {CLIENT_KEY}")),
        ("x-api-key", X_KEY),
        ("aigw-authorization", GW_KEY),
        ("cf-aig-authorization", GW_KEY),
    ];
    for (path, model) in [
        ("/v1/chat/completions", "up/m"),
        ("/up/chat/completions", "m"),
        ("/own/chat/completions", "m"),
        ("/v1/chat/completions", "own/m"),
    ] {
        for stream in [false, true] {
            let r = c.post(path, &headers, &chat(model, stream));
            assert_eq!(r.status, 200, "{path}: {}", r.text());
        }
    }
    let r = c.post("/v1/chat/completions", &headers, "{bad");
    assert_eq!(r.status, 400);
    // The injected key reached the provider, so the canary is live.
    assert!(
        mock.captured()
            .iter()
            .any(|q| q.headers.iter().any(|(_, v)| v.contains(PROVIDER_KEY)))
    );

    let mut seen: Vec<(String, Vec<u8>)> = Vec::new();
    for path in ["/stats", "/metrics", "/logs?limit=1000", "/healthz"] {
        seen.push((format!("admin {path}"), admin_get(&gw.admin_socket, path).1));
    }
    let out = Command::new(AIGW)
        .args(["logs", "--data-dir"])
        .arg(gw.data_dir())
        .args(["--limit", "1000"])
        .output()
        .unwrap();
    seen.push(("aigw logs".into(), [out.stdout, out.stderr].concat()));
    for row in admin_logs(&gw, "limit=1000") {
        let id = row["id"].as_str().unwrap().to_string();
        for json_flag in [false, true] {
            let mut cmd = Command::new(AIGW);
            cmd.args(["logs", "--data-dir"])
                .arg(gw.data_dir())
                .args(["show", &id]);
            if json_flag {
                cmd.arg("--json");
            }
            let out = cmd.output().unwrap();
            seen.push((
                format!("aigw logs show {id}"),
                [out.stdout, out.stderr].concat(),
            ));
        }
    }
    gw.terminate();
    gw.wait_exit();
    seen.push(("gateway stderr".into(), gw.stderr().into_bytes()));
    for (p, bytes) in common::gateway::files_under(gw.data_dir()) {
        seen.push((p.display().to_string(), bytes));
    }
    assert!(
        seen.iter().any(|(w, _)| w.ends_with("requests.db")),
        "the store was read"
    );
    for (what, bytes) in &seen {
        for canary in [PROVIDER_KEY, CLIENT_KEY, X_KEY, GW_KEY] {
            assert!(
                memchr::memmem::find(bytes, canary.as_bytes()).is_none(),
                "{canary} found in {what}"
            );
        }
    }
}

at_1_and_2_shards!(
    usage_counts_the_tokens_providers_used_not_those_hits_saved,
    a_burst_leaves_exactly_one_row_per_request,
    each_filter_selects_exactly_its_rows,
    retention_deletes_the_oldest_first,
    follow_prints_new_rows_as_they_are_stored,
    rows_older_than_max_age_are_deleted,
    payloads_are_capped_and_streams_stored_as_received,
    collect_log_false_leaves_no_row,
    sampling_keeps_every_error_and_a_share_of_successes,
    bad_metadata_is_a_400_that_names_the_problem,
    a_kill_9_loses_at_most_one_flush_interval,
    no_secret_is_written_or_shown_anywhere,
);
