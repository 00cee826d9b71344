//! Budgets end to end: 64 clients racing for the last dollar never overspend
//! with `max_tokens`, an exhausted budget's 429 says what was spent and when
//! it resets, alerts before anything is blocked, spend that survives a
//! restart and kill -9, `GET /usage` and `aigw usage`. At 1 and 2 shards.

mod common;

use common::gateway::{admin_get, run_aigw};
use common::{Gateway, HeldUpstream, json, mock};
use simd_json::prelude::*;
use std::path::Path;
use std::sync::{Arc, Barrier};

/// $1 per thousand tokens each way: tiny requests cost cents.
const PRICE: &str = "[prices.\"up/gpt-x\"]\ninput = 1000.0\noutput = 1000.0\n";

fn body(i: usize) -> String {
    format!(
        r#"{{"model":"up/gpt-x","max_tokens":10,"messages":[{{"role":"user","content":"n{i}"}}]}}"#
    )
}

/// The mock's answers: 5 output tokens, within `max_tokens`.
const SHORT: (&str, &str) = ("x-mock-reply-bytes", "20");

fn usage(gw: &Gateway, query: &str) -> simd_json::OwnedValue {
    let (code, body) = admin_get(&gw.admin_socket, &format!("/usage?{query}"));
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    json(&body)
}

fn sixty_four_racing_clients_never_overspend(shards: usize) {
    let mock = mock();
    let gw = Gateway::with(shards)
        .provider("up", &mock.base_url(), "")
        .toml(&format!(
            "{PRICE}[[budgets]]\nname = \"five\"\nscope = \"gateway\"\nusd = 5.0\nwindow = \"daily\"\n"
        ))
        .start();
    let start = Arc::new(Barrier::new(64));
    let threads: Vec<_> = (0..64)
        .map(|t| {
            let mut c = gw.client();
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                let mut spent = 0.0;
                for i in 0.. {
                    let r = c.post(
                        "/v1/chat/completions",
                        &[SHORT, ("aigw-include-cost", "true")],
                        &body(t * 1000 + i),
                    );
                    if r.status != 200 {
                        assert_eq!(r.status, 429, "{}", r.text());
                        assert!(r.header("retry-after").is_some());
                        return spent;
                    }
                    spent += r.header("aigw-cost").unwrap().parse::<f64>().unwrap();
                }
                unreachable!()
            })
        })
        .collect();
    let spent: f64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    // Never past the budget; and not far from it (the worst case of one
    // request is under 20 cents).
    assert!(spent <= 5.0 + 1e-6, "spent {spent}");
    assert!(spent > 4.5, "spent only {spent}");
    let u = usage(&gw, "by=provider");
    let b = &u["budgets"][0];
    assert_eq!(b["budget"].as_str(), Some("five"));
    assert!(b["spent_usd"].cast_f64().unwrap() <= 5.0 + 1e-6, "{u}");
}

fn an_exhausted_budget_says_what_and_when_and_alerts_first(shards: usize) {
    let mock = mock();
    let gw = Gateway::with(shards)
        .provider("up", &mock.base_url(), "")
        .toml(&format!(
            "{PRICE}[[budgets]]\nname = \"team\"\nscope = \"metadata.team\"\nusd = 0.5\nwindow = \"monthly\"\nalert_at = 0.5\n"
        ))
        .start();
    let mut c = gw.client();
    let meta = ("aigw-metadata", r#"{"team":"search"}"#);
    let mut last = None;
    for i in 0..100 {
        let r = c.post("/v1/chat/completions", &[SHORT, meta], &body(i));
        if r.status != 200 {
            last = Some(r);
            break;
        }
    }
    let r = last.expect("the budget ran out");
    assert_eq!(r.status, 429);
    assert_eq!(r.error_code(), "budget_exceeded");
    let text = r.text();
    assert!(
        text.contains("budget `team`") && text.contains("search"),
        "{text}"
    );
    assert!(
        text.contains("of $0.500000") && text.contains("monthly"),
        "{text}"
    );
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=31 * 86_400).contains(&retry), "{retry}");
    // Another team is not affected.
    let other = c.post(
        "/v1/chat/completions",
        &[SHORT, ("aigw-metadata", r#"{"team":"ads"}"#)],
        &body(1),
    );
    assert_eq!(other.status, 200);
    // The alert was raised before the block: a warning, a metric, a flag.
    // (Written by the shard before it answered; the test's reader of the
    // pipe may not have it yet.)
    gw.wait_stderr("budget `team`");
    let u = usage(&gw, "by=metadata.team");
    let search = u["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["value"].as_str() == Some("search"))
        .unwrap()
        .clone();
    assert_eq!(search["alert"].as_bool(), Some(true), "{u}");
    let groups = u["groups"].as_array().unwrap();
    assert!(
        groups.iter().any(|g| g["value"].as_str() == Some("search")),
        "{u}"
    );
    let (_, metrics) = admin_get(&gw.admin_socket, "/metrics");
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(metrics.contains("aigw_budget_alerts_total 1"), "{metrics}");
    assert!(
        metrics.contains("aigw_budget_spent_usd{budget=\"team\",value=\"search\"}"),
        "{metrics}"
    );
}

/// A gateway with a 20-cent budget per key over `dir` (the same each time,
/// to restart on it), with `extra` config.
fn with_budget(shards: usize, upstream: &str, dir: &Path, extra: &str) -> Gateway {
    Gateway::with(shards)
        .provider("up", upstream, "")
        .toml(&format!(
            "{PRICE}{extra}[[budgets]]\nname = \"k\"\nscope = \"key\"\nusd = 0.2\nwindow = \"7d\"\n"
        ))
        .data_dir(dir)
        .start()
}

/// After a restart the budget still holds `before` of spend: the next
/// request is refused.
fn assert_spend_kept(gw: &Gateway, before: f64) {
    let r = gw
        .client()
        .post("/v1/chat/completions", &[SHORT], &body(999));
    assert_eq!(r.status, 429, "spend was forgotten: {}", r.text());
    let after = usage(gw, "by=key")["budgets"][0]["spent_usd"]
        .cast_f64()
        .unwrap();
    assert!((after - before).abs() < 1e-6, "{before} then {after}");
}

fn spend_survives_restart_and_kill9(shards: usize) {
    let mock = mock();
    let dir = common::gateway::TempDir::new("budget-data");
    let start = || with_budget(shards, &mock.base_url(), dir.path(), "");
    let mut gw = start();
    let mut c = gw.client();
    let mut admitted = 0;
    while c
        .post("/v1/chat/completions", &[SHORT], &body(admitted))
        .status
        == 200
    {
        admitted += 1;
        assert!(admitted < 100, "never refused");
    }
    // Everything answered is in the log once a query has answered.
    let before = usage(&gw, "by=key")["budgets"][0]["spent_usd"]
        .cast_f64()
        .unwrap();
    assert!(before > 0.1, "{before}");
    gw.kill9();
    let gw = start();
    assert!(gw.stderr().contains("rebuilt from"), "{}", gw.stderr());
    assert_spend_kept(&gw, before);
    // `aigw usage` reads the same store.
    let cfg = gw.dir().join("aigw.toml");
    let (code, out, err) = run_aigw(&[
        "usage",
        "--config",
        cfg.to_str().unwrap(),
        "--by",
        "provider",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("up ") && out.contains("budget"), "{out}");
    let (code, out, err) = run_aigw(&["usage", "--config", cfg.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let v = json(out.as_bytes());
    let cli = v["budgets"][0]["spent_usd"].cast_f64().unwrap();
    assert!((cli - before).abs() < 1e-6, "{cli} vs {before}");
    assert_eq!(v["groups"][0]["value"].as_str(), Some("(none)"));
    assert_eq!(
        v["groups"][0]["requests"].as_u64(),
        Some(admitted as u64 + 2)
    );
}

/// With `logs.sample = 0` no successful request gets a row: their requests,
/// tokens and spend are tallied instead (as for rows dropped when the log
/// falls behind), and `/usage` and a restart after kill -9 count them.
fn spend_of_requests_kept_no_row_of_survives_kill9(shards: usize) {
    let mock = mock();
    let dir = common::gateway::TempDir::new("budget-tally");
    let start = || {
        with_budget(
            shards,
            &mock.base_url(),
            dir.path(),
            "[logs]\nsample = 0.0\n",
        )
    };
    let mut gw = start();
    let mut c = gw.client();
    let mut admitted = 0;
    let meta = ("aigw-metadata", r#"{"user":"u1"}"#);
    while c
        .post("/v1/chat/completions", &[SHORT, meta], &body(admitted))
        .status
        == 200
    {
        admitted += 1;
        assert!(admitted < 100, "never refused");
    }
    // `/usage` moves the shards' tallies to the log and commits them first.
    let v = usage(&gw, "by=metadata.user");
    let before = v["budgets"][0]["spent_usd"].cast_f64().unwrap();
    assert!(before > 0.1, "{before}");
    let group = &v["groups"][0];
    assert_eq!(group["value"].as_str(), Some("u1"), "{v:?}");
    assert_eq!(group["requests"].as_u64(), Some(admitted as u64 + 1));
    assert!((group["cost_usd"].cast_f64().unwrap() - before).abs() < 1e-6);
    assert_eq!(group["tokens_out"].as_u64(), Some(5 * admitted as u64));
    // Only the refusal has a row.
    let (_, stats) = admin_get(&gw.admin_socket, "/stats");
    assert_eq!(json(&stats)["logs"]["rows"].as_u64(), Some(1));
    gw.kill9();
    let gw = start();
    assert!(
        gw.stderr()
            .contains(&format!("rebuilt from {} logged", admitted + 1)),
        "{}",
        gw.stderr()
    );
    assert_spend_kept(&gw, before);
}

/// The first budget's spend as `aigw usage --config` reads it from the log
/// (what a restart would rebuild).
fn cli_spent(gw: &Gateway) -> f64 {
    let cfg = gw.dir().join("aigw.toml");
    let (code, out, err) = run_aigw(&["usage", "--config", cfg.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    json(out.as_bytes())["budgets"][0]["spent_usd"]
        .cast_f64()
        .unwrap()
}

/// A request in flight while a reload rebuilds a budget from the log counts
/// in the rebuilt budget when it ends (its row was not in the log yet).
fn a_request_in_flight_across_a_reload_counts_in_the_rebuilt_budget(shards: usize) {
    let held = HeldUpstream::start();
    let dir = common::gateway::TempDir::new("budget-in-flight");
    let gw = with_budget(shards, &held.base_url(), dir.path(), "");
    std::thread::scope(|s| {
        let asked = s.spawn(|| gw.client().post("/v1/chat/completions", &[], &body(1)));
        held.wait_arrival();
        reload(&gw, "window = \"7d\"", "window = \"30d\"");
        held.release();
        assert_eq!(asked.join().unwrap().status, 200);
    });
    let live = usage(&gw, "by=key")["budgets"][0]["spent_usd"]
        .cast_f64()
        .unwrap();
    let cli = cli_spent(&gw);
    assert!(
        cli > 0.0 && (cli - live).abs() < 1e-6,
        "live {live}, log {cli}"
    );
}

/// A Gemini-native request's output cap and candidate count are in its
/// `generationConfig`: the reservation is made by them (it was made by the
/// budget's default cap, and the answer overspent the budget).
fn a_gemini_native_request_reserves_by_its_generation_config(shards: usize) {
    let mock = mock();
    let gw = Gateway::with(shards)
        .toml(&format!(
            "[providers.gm]\nkind = \"google\"\nbase_url = \"{}\"\napi_key = \"g-key\"\n\
             [prices.\"gm/gemini-x\"]\ninput = 1000.0\noutput = 1000.0\n\
             [[budgets]]\nname = \"half\"\nscope = \"gateway\"\nusd = 0.5\nwindow = \"daily\"\ndefault_max_tokens = 100\n",
            mock.base_url().trim_end_matches("/v1")
        ))
        .start();
    let ask = |config: &str| {
        gw.client().post(
            "/gm/v1beta/models/gemini-x:generateContent",
            &[SHORT],
            &format!(
                r#"{{"contents":[{{"parts":[{{"text":"x"}}]}}],"generationConfig":{config}}}"#
            ),
        )
    };
    // 2000 tokens at $1 per thousand: more than the whole budget, which no
    // wait can cover (a 400, not a 429 a client would retry).
    for config in [
        r#"{"maxOutputTokens":2000}"#,
        r#"{"max_output_tokens":2000}"#,
        r#"{"maxOutputTokens":100,"candidateCount":20}"#,
    ] {
        let r = ask(config);
        assert_eq!(r.status, 400, "{config}: {}", r.text());
        assert_eq!(r.error_code(), "request_too_large");
        assert_eq!(r.header("retry-after"), None);
    }
    assert_eq!(mock.requests_seen(), 0);
    let r = ask(r#"{"maxOutputTokens":100}"#);
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Spends the gateway's budget until a request is refused; returns the
/// spend `/usage` shows.
fn spend_all(gw: &Gateway, from: usize) -> f64 {
    let mut c = gw.client();
    let mut i = from;
    while c.post("/v1/chat/completions", &[SHORT], &body(i)).status == 200 {
        i += 1;
        assert!(i < from + 100, "never refused");
    }
    usage(gw, "by=key")["budgets"][0]["spent_usd"]
        .cast_f64()
        .unwrap()
}

fn reload(gw: &Gateway, from: &str, to: &str) {
    let path = gw.dir().join("aigw.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{from} not in\n{text}");
    std::fs::write(&path, text.replace(from, to)).unwrap();
    let (code, body) = common::gateway::admin_post(&gw.admin_socket, "/config/reload");
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
}

/// A budget whose window a reload changes counts the spend the log holds for
/// its new window, as a restart and `aigw usage` do; changed back, it is
/// rebuilt again, never counted twice.
fn a_reloaded_window_counts_what_a_restart_would(shards: usize) {
    let mock = mock();
    let dir = common::gateway::TempDir::new("budget-reload");
    let gw = with_budget(shards, &mock.base_url(), dir.path(), "");
    let first = spend_all(&gw, 0);
    assert!(first > 0.1, "{first}");
    reload(
        &gw,
        "usd = 0.2\nwindow = \"7d\"",
        "usd = 0.4\nwindow = \"30d\"",
    );
    let standing = |gw: &Gateway| {
        let b = usage(gw, "by=key")["budgets"][0].clone();
        (
            b["window"].as_str().unwrap().to_string(),
            b["spent_usd"].cast_f64().unwrap(),
        )
    };
    let (window, spent) = standing(&gw);
    assert_eq!(window, "rolling 2592000s");
    assert!((spent - first).abs() < 1e-6, "{first} then {spent}");
    // The rest of the new amount, and no more.
    let second = spend_all(&gw, 1000);
    assert!(second > 0.3 && second <= 0.4 + 1e-9, "{second}");
    // What `aigw usage` and a restart would say.
    let cli = cli_spent(&gw);
    assert!((cli - second).abs() < 1e-6, "{cli} vs {second}");
    // Back to the first window: everything spent is in it, once.
    reload(
        &gw,
        "usd = 0.4\nwindow = \"30d\"",
        "usd = 0.2\nwindow = \"7d\"",
    );
    let (window, spent) = standing(&gw);
    assert_eq!(window, "rolling 604800s");
    assert!((spent - second).abs() < 1e-6, "{second} then {spent}");
    assert_eq!(
        gw.client()
            .post("/v1/chat/completions", &[SHORT], &body(5000))
            .status,
        429
    );
}

/// A lowered amount applies from the next window, across a restart (here
/// after kill -9) as across a reload: the window in force goes on with the
/// amount it began with, the gateway, `/usage` and `aigw usage` agree.
fn a_lowered_amount_waits_for_the_next_window_across_a_restart(shards: usize) {
    let mock = mock();
    let dir = common::gateway::TempDir::new("budget-amount");
    let start = |usd: &str| {
        Gateway::with(shards)
            .provider("up", &mock.base_url(), "")
            .toml(&format!(
                "{PRICE}[[budgets]]\nname = \"k\"\nscope = \"key\"\nusd = {usd}\nwindow = \"7d\"\n"
            ))
            .data_dir(dir.path())
            .start()
    };
    let mut gw = start("0.2");
    let r = gw.client().post("/v1/chat/completions", &[SHORT], &body(0));
    assert_eq!(r.status, 200, "{}", r.text());
    let spent = usage(&gw, "by=key")["budgets"][0]["spent_usd"]
        .cast_f64()
        .unwrap();
    assert!(spent > 0.0);
    gw.kill9();
    // Below what is spent already: it would refuse at once.
    let gw = start("0.000001");
    let r = gw.client().post("/v1/chat/completions", &[SHORT], &body(1));
    assert_eq!(
        r.status,
        200,
        "the new amount applied at once: {}",
        r.text()
    );
    let budget = usage(&gw, "by=key")["budgets"][0].clone();
    assert_eq!(budget["usd"].cast_f64(), Some(0.2), "{budget}");
    let cfg = gw.dir().join("aigw.toml");
    let (code, out, err) = run_aigw(&["usage", "--config", cfg.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let cli = json(out.as_bytes())["budgets"][0]["usd"].cast_f64();
    assert_eq!(cli, Some(0.2), "{out}");
    // A window changed and changed back is a budget anew: it takes the
    // amount configured then, not one stored before.
    reload(&gw, "window = \"7d\"", "window = \"daily\"");
    reload(
        &gw,
        "usd = 0.000001\nwindow = \"daily\"",
        "usd = 0.5\nwindow = \"7d\"",
    );
    let r = gw.client().post("/v1/chat/completions", &[SHORT], &body(2));
    assert_eq!(r.status, 200, "{}", r.text());
    let budget = usage(&gw, "by=key")["budgets"][0].clone();
    assert_eq!(budget["usd"].cast_f64(), Some(0.5), "{budget}");
}

at_1_and_2_shards!(
    sixty_four_racing_clients_never_overspend,
    an_exhausted_budget_says_what_and_when_and_alerts_first,
    spend_survives_restart_and_kill9,
    spend_of_requests_kept_no_row_of_survives_kill9,
    a_reloaded_window_counts_what_a_restart_would,
    a_gemini_native_request_reserves_by_its_generation_config,
    a_request_in_flight_across_a_reload_counts_in_the_rebuilt_budget,
    a_lowered_amount_waits_for_the_next_window_across_a_restart,
    budgets_stand_in_usage_without_a_log,
);

/// With the request log off there are no totals to read, but the budgets
/// are enforced and `GET /usage` shows them, saying why the groups are empty;
/// `aigw usage` (which reads the log) says what to turn on.
fn budgets_stand_in_usage_without_a_log(shards: usize) {
    let mock = mock();
    // A store an earlier run left (the log on then) is not read for totals.
    let mut earlier = Gateway::with(shards)
        .provider("up", &mock.base_url(), "")
        .toml(PRICE)
        .start();
    let r = earlier
        .client()
        .post("/v1/chat/completions", &[SHORT], &body(0));
    assert_eq!(r.status, 200, "{}", r.text());
    earlier.terminate();
    assert!(earlier.wait_exit().success());
    let gw = Gateway::with(shards)
        .provider("up", &mock.base_url(), "")
        .toml(&format!(
            "{PRICE}[logs]\nenabled = false\n[[budgets]]\nname = \"five\"\nscope = \"gateway\"\nusd = 5.0\nwindow = \"daily\"\n"
        ))
        .data_dir(&earlier.data_dir())
        .start();
    let mut c = gw.client();
    let r = c.post("/v1/chat/completions", &[SHORT], &body(1));
    assert_eq!(r.status, 200, "{}", r.text());
    let u = usage(&gw, "by=provider");
    assert_eq!(u["groups"].as_array().map(Vec::len), Some(0), "{u}");
    let why = u["log_error"].as_str().unwrap_or_default();
    assert!(why.contains("logs.enabled"), "{u}");
    let b = &u["budgets"][0];
    assert_eq!(b["budget"].as_str(), Some("five"));
    assert!(b["spent_usd"].cast_f64().unwrap() > 0.0, "{u}");
    let cfg = gw.dir().join("aigw.toml");
    let (code, out, err) = run_aigw(&["usage", "--config", cfg.to_str().unwrap()]);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("logs.enabled") && !err.contains("no such table"),
        "{err}"
    );
}

fn a_client_cannot_price_its_own_spend_down_or_overflow_a_budget(shards: usize) {
    let mock = mock();
    let gw = Gateway::with(shards)
        .provider("up", &mock.base_url(), "")
        .toml(&format!(
            "{PRICE}[[budgets]]\nname = \"b\"\nscope = \"gateway\"\nusd = 0.3\nwindow = \"daily\"\n"
        ))
        .start();
    let mut c = gw.client();
    let free = (
        "aigw-custom-cost",
        r#"{"per_token_in":0,"per_token_out":0}"#,
    );
    let mut admitted = 0;
    while c
        .post("/v1/chat/completions", &[SHORT, free], &body(admitted))
        .status
        == 200
    {
        admitted += 1;
        assert!(
            admitted < 1000,
            "a zero custom price bought unlimited spend"
        );
    }
    let spent = usage(&gw, "")["budgets"][0]["spent_usd"]
        .cast_f64()
        .unwrap();
    assert!(spent > 0.0 && spent <= 0.3 + 1e-6, "{spent}");
    // A cap no budget could cover is refused, and the spend stays as it was.
    let huge = r#"{"model":"up/gpt-x","max_tokens":9999999999999999999,"messages":[{"role":"user","content":"x"}]}"#;
    let r = c.post("/v1/chat/completions", &[SHORT], huge);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.error_code(), "request_too_large");
    let after = usage(&gw, "")["budgets"][0]["spent_usd"]
        .cast_f64()
        .unwrap();
    assert!((after - spent).abs() < 1e-9, "{spent} then {after}");
}

at_1_and_2_shards!(a_client_cannot_price_its_own_spend_down_or_overflow_a_budget);
