//! Rate limits end to end against the real binary and the mock: exactly the
//! limit admitted to 64 racing clients and to one connection, never a fifth
//! request in flight under a `concurrent` limit of 4, token rules settled to
//! the real usage, per-metadata scopes, cache hits that do not count, and
//! every 429 with `Retry-After` and the rate-limit headers. At 1 and 2 shards.

mod common;

use aigw_loadtest::mock::MockConfig;
use common::{Gateway, Response, mock, mock_with};
use simd_json::prelude::*;
use std::sync::{Arc, Barrier};
use std::time::Duration;

fn chat(content: &str) -> String {
    format!(r#"{{"model":"up/gpt-x","messages":[{{"role":"user","content":"{content}"}}]}}"#)
}

fn limited(shards: usize, upstream: &str, rules: &str) -> Gateway {
    Gateway::with(shards)
        .provider("up", upstream, "")
        .toml(rules)
        .start()
}

/// What every refusal carries.
fn assert_refusal(r: &Response, rule: &str) {
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.error_code(), "rate_limit_exceeded");
    assert_eq!(r.header("aigw-error-source"), Some("gateway"));
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("Retry-After in {:?}", r.headers));
    assert!(retry >= 1);
    for h in ["limit", "remaining", "reset"] {
        let name = format!("x-ratelimit-{h}-requests");
        let tokens = format!("x-ratelimit-{h}-tokens");
        assert!(
            r.header(&name).is_some() || r.header(&tokens).is_some(),
            "{name} in {:?}",
            r.headers
        );
    }
    assert!(r.text().contains(rule), "{}", r.text());
}

const HUNDRED: &str = "[[rate_limits]]\nname = \"hundred\"\nscope = \"key\"\ncount = \"requests\"\nlimit = 100\nwindow = \"30d\"\n";

fn sixty_four_racing_clients_get_exactly_the_limit(shards: usize) {
    let mock = mock();
    let gw = limited(shards, &mock.base_url(), HUNDRED);
    let start = Arc::new(Barrier::new(64));
    let threads: Vec<_> = (0..64)
        .map(|i| {
            let mut c = gw.client();
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                let mut ok = 0;
                loop {
                    let r = c.post("/v1/chat/completions", &[], &chat(&format!("c{i}")));
                    match r.status {
                        200 => {
                            assert!(r.header("x-ratelimit-remaining-requests").is_some());
                            assert_eq!(r.header("x-ratelimit-limit-requests"), Some("100"));
                            ok += 1;
                        }
                        _ => {
                            assert_refusal(&r, "hundred");
                            return ok;
                        }
                    }
                }
            })
        })
        .collect();
    let admitted: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(admitted, 100);
    assert_eq!(mock.requests_seen(), 100);
}

fn one_connection_gets_the_whole_limit(shards: usize) {
    let mock = mock();
    let gw = limited(shards, &mock.base_url(), HUNDRED);
    let mut c = gw.client();
    let mut seen = Vec::new();
    for i in 0..110 {
        let r = c.post("/v1/chat/completions", &[], &chat(&format!("{i}")));
        if r.status == 429 {
            assert_refusal(&r, "hundred");
        } else {
            assert_eq!(r.status, 200);
            seen.push(
                r.header("x-ratelimit-remaining-requests")
                    .unwrap()
                    .parse::<u64>()
                    .unwrap(),
            );
        }
    }
    assert_eq!(seen.len(), 100);
    assert_eq!(seen.last(), Some(&0));
    assert_eq!(mock.requests_seen(), 100);
}

fn a_concurrent_limit_of_four_never_has_a_fifth_in_flight(shards: usize) {
    let mock = mock_with(MockConfig {
        latency: Duration::from_millis(20),
        capture: true,
        ..MockConfig::default()
    });
    let gw = limited(
        shards,
        &mock.base_url(),
        "[[rate_limits]]\nname = \"four\"\nscope = \"gateway\"\ncount = \"concurrent\"\nlimit = 4\n",
    );
    let start = Arc::new(Barrier::new(16));
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let mut c = gw.client();
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                let (mut ok, mut refused) = (0, 0);
                for j in 0..6 {
                    let stream = j % 2 == 1;
                    let body = chat(&format!("{i}-{j}"))
                        .replace("}]}", &format!("}}],\"stream\":{stream}}}"));
                    let r = c.post("/v1/chat/completions", &[], &body);
                    match r.status {
                        200 => ok += 1,
                        _ => {
                            assert_refusal(&r, "four");
                            refused += 1;
                        }
                    }
                }
                (ok, refused)
            })
        })
        .collect();
    let (ok, refused) = threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    assert!(
        mock.max_in_flight() <= 4,
        "{} in flight",
        mock.max_in_flight()
    );
    assert!(ok >= 4 && refused > 0, "{ok} answered, {refused} refused");
    assert_eq!(mock.requests_seen(), ok);
}

fn token_limits_settle_to_the_real_usage_and_carry_debt(shards: usize) {
    let mock = mock();
    let limit = 2000;
    let gw = limited(
        shards,
        &mock.base_url(),
        &format!(
            "[[rate_limits]]\nname = \"tokens\"\nscope = \"gateway\"\ncount = \"total_tokens\"\nlimit = {limit}\nwindow = \"30d\"\ntechnique = \"fixed\"\n"
        ),
    );
    let mut c = gw.client();
    // `max_tokens: 1` reserves little; the mock's answers use far more.
    let body =
        r#"{"model":"up/gpt-x","max_tokens":1,"messages":[{"role":"user","content":"count me"}]}"#;
    let (mut used, mut most) = (0, 0);
    let refused = loop {
        let r = c.post("/v1/chat/completions", &[], body);
        if r.status != 200 {
            break r;
        }
        let t = r.json()["usage"]["total_tokens"].as_u64().unwrap();
        used += t;
        most = most.max(t);
        assert!(used < 10 * limit, "never refused");
    };
    assert_refusal(&refused, "tokens");
    assert!(refused.header("x-ratelimit-remaining-tokens").is_some());
    // Charged what was used, not what was reserved: the last admitted request
    // may run over (debt), by at most its own usage.
    assert!(
        used >= limit - most && used <= limit + most,
        "used {used} of {limit}"
    );
}

/// An embeddings request writes no output tokens: token rules and budgets
/// reserve none for it (not `default_max_tokens`, which alone is more than
/// these rules and this budget hold), on the unified and pass-through URLs.
/// A chat request without `max_tokens` still reserves the default.
fn embeddings_reserve_no_output(shards: usize) {
    let mock = mock();
    let gw = limited(
        shards,
        &mock.base_url(),
        "[[rate_limits]]\nname = \"out\"\nscope = \"gateway\"\ncount = \"output_tokens\"\nlimit = 1000\nwindow = \"30d\"\n\
         [[rate_limits]]\nname = \"all\"\nscope = \"gateway\"\ncount = \"total_tokens\"\nlimit = 1000\nwindow = \"30d\"\n\
         [[budgets]]\nname = \"cents\"\nscope = \"gateway\"\nusd = 0.001\nwindow = \"daily\"\n\
         [prices.\"up/embed-x\"]\ninput = 0.02\noutput = 10.0\n",
    );
    let mut c = gw.client();
    let chat = c.post("/v1/chat/completions", &[], &chat("no cap"));
    assert_eq!(chat.status, 400, "{}", chat.text());
    assert_eq!(chat.error_code(), "request_too_large", "{}", chat.text());
    let body = r#"{"model":"up/embed-x","input":"hello"}"#;
    let passthrough = r#"{"model":"embed-x","input":"hello"}"#;
    let mut last = None;
    for _ in 0..5 {
        for (path, body) in [("/v1/embeddings", body), ("/up/embeddings", passthrough)] {
            let r = c.post(path, &[], body);
            assert_eq!(r.status, 200, "{path}: {}", r.text());
            assert!(r.json()["data"][0]["embedding"].is_array(), "{}", r.text());
            last = Some(r);
        }
    }
    // Ten requests of a few input tokens each, a token of output reserved
    // at most: nearly the whole limit is left.
    let left: u64 = last
        .unwrap()
        .header("x-ratelimit-remaining-tokens")
        .and_then(|v| v.parse().ok())
        .expect("remaining tokens");
    assert!((800..1000).contains(&left), "{left} tokens left");
}

fn metadata_scopes_count_each_value_apart(shards: usize) {
    let mock = mock();
    let gw = limited(
        shards,
        &mock.base_url(),
        "[[rate_limits]]\nname = \"per-user\"\nscope = \"metadata.user\"\ncount = \"requests\"\nlimit = 2\nwindow = \"30d\"\n",
    );
    let post = |user: &str, i: u32| {
        let meta = format!("{{\"user\":\"{user}\"}}");
        gw.client().post(
            "/v1/chat/completions",
            &[("aigw-metadata", &meta)],
            &chat(&format!("{user}{i}")),
        )
    };
    assert_eq!(post("ann", 0).status, 200);
    assert_eq!(post("ann", 1).status, 200);
    let r = post("ann", 2);
    assert_refusal(&r, "per-user");
    assert!(r.text().contains("user `ann`"), "{}", r.text());
    assert_eq!(post("bob", 0).status, 200);
    assert_eq!(mock.requests_seen(), 3);
}

fn cache_hits_do_not_count_unless_asked(shards: usize) {
    let mock = mock();
    let gw = limited(
        shards,
        &mock.base_url(),
        "[cache]\nenabled = true\nsize = \"16MiB\"\nmax_entry = \"1MiB\"\n[[rate_limits]]\nname = \"two\"\nscope = \"gateway\"\ncount = \"requests\"\nlimit = 2\nwindow = \"30d\"\n",
    );
    let mut c = gw.client();
    let first = c.post("/v1/chat/completions", &[], &chat("same"));
    assert_eq!(first.status, 200);
    for _ in 0..5 {
        let r = c.post("/v1/chat/completions", &[], &chat("same"));
        assert_eq!(r.status, 200, "{}", r.text());
        // A hit from the writer's own shard (or, at 2 shards, a coalesced
        // answer while the entry settles): no provider call either way.
        assert_eq!(r.header("aigw-cache-status"), Some("HIT"));
        // Not counted, and still told what is left.
        assert_eq!(r.header("x-ratelimit-limit-requests"), Some("2"));
        assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("1"));
    }
    assert_eq!(
        c.post("/v1/chat/completions", &[], &chat("other")).status,
        200
    );
    assert_refusal(&c.post("/v1/chat/completions", &[], &chat("third")), "two");
    assert_eq!(mock.requests_seen(), 2);
    // The limit spent, an answer in the cache is still served: it costs nothing.
    let r = c.post("/v1/chat/completions", &[], &chat("same"));
    assert_eq!(
        (r.status, r.header("aigw-cache-status")),
        (200, Some("HIT"))
    );

    // Token rules and budgets never count a hit, so never refuse one.
    let spent = Gateway::with(shards)
        .provider("up", &mock.base_url(), "")
        .toml(
            "[cache]\nenabled = true\nsize = \"16MiB\"\nmax_entry = \"1MiB\"\n\
             [[rate_limits]]\nname = \"tokens\"\nscope = \"gateway\"\ncount = \"total_tokens\"\nlimit = 400\nwindow = \"30d\"\n\
             [[budgets]]\nname = \"dollars\"\nscope = \"gateway\"\nusd = 0.0004\nwindow = \"daily\"\n\
             [prices.\"up/gpt-x\"]\ninput = 1.0\noutput = 1.0\n",
        )
        .start();
    let capped = |p: &str| chat(p).replace("}]", "}],\"max_tokens\":16");
    let mut c = spent.client();
    assert_eq!(
        c.post("/v1/chat/completions", &[], &capped("kept")).status,
        200
    );
    let refused = (0..40)
        .map(|i| c.post("/v1/chat/completions", &[], &capped(&format!("more {i}"))))
        .find(|r| r.status == 429)
        .expect("the tokens or the dollars run out");
    assert!(
        ["rate_limit_exceeded", "budget_exceeded"].contains(&refused.error_code().as_str()),
        "{}",
        refused.text()
    );
    let r = c.post("/v1/chat/completions", &[], &capped("kept"));
    assert_eq!(
        (r.status, r.header("aigw-cache-status")),
        (200, Some("HIT")),
        "{}",
        r.text()
    );
    assert_eq!(r.header("x-ratelimit-limit-tokens"), Some("400"));
    assert!(r.header("x-ratelimit-remaining-tokens").is_some());

    // A rule that counts hits refuses them once spent.
    let counting = limited(
        shards,
        &mock.base_url(),
        "[cache]\nenabled = true\nsize = \"16MiB\"\nmax_entry = \"1MiB\"\n[[rate_limits]]\nname = \"hits too\"\nscope = \"gateway\"\ncount = \"requests\"\nlimit = 2\nwindow = \"30d\"\ncount_cache_hits = true\n",
    );
    let mut c = counting.client();
    assert_eq!(
        c.post("/v1/chat/completions", &[], &chat("same")).status,
        200
    );
    assert_eq!(
        c.post("/v1/chat/completions", &[], &chat("same")).status,
        200
    );
    assert_refusal(
        &c.post("/v1/chat/completions", &[], &chat("same")),
        "hits too",
    );
}

at_1_and_2_shards!(
    sixty_four_racing_clients_get_exactly_the_limit,
    one_connection_gets_the_whole_limit,
    a_concurrent_limit_of_four_never_has_a_fifth_in_flight,
    token_limits_settle_to_the_real_usage_and_carry_debt,
    embeddings_reserve_no_output,
    metadata_scopes_count_each_value_apart,
    cache_hits_do_not_count_unless_asked,
    each_key_its_own_limit_and_budget,
);

#[test]
fn limits_by_key_need_the_key() {
    let mock = mock();
    let secret = "sk-aigw-test-limits";
    let hash = aigw::auth::hex(&aigw::auth::hash_secret(secret.as_bytes()));
    let gw = Gateway::with(1)
        .provider("up", &mock.base_url(), "api_key = \"sk-p\"")
        .toml(&format!(
            "[keys.kim]\nsecret_sha256 = \"{hash}\"\n[[rate_limits]]\nname = \"one\"\nscope = \"key\"\ncount = \"requests\"\nlimit = 1\nwindow = \"30d\"\n"
        ))
        .start();
    let auth = format!("Bearer {secret}");
    let post = |h: &[(&str, &str)], i: u32| {
        gw.client()
            .post("/v1/chat/completions", h, &chat(&format!("{i}")))
    };
    assert_eq!(post(&[("Authorization", &auth)], 0).status, 200);
    let r = post(&[("Authorization", &auth)], 1);
    assert_refusal(&r, "one");
    assert!(r.text().contains("key `kim`"), "{}", r.text());
    // Requests without a key share one count of their own.
    assert_eq!(post(&[], 2).status, 200);
    assert_eq!(post(&[], 3).status, 429);
}

/// A rule or budget with `keys` applies to those keys' requests only: each
/// key its own limit and budget, and a key named nowhere is not limited.
fn each_key_its_own_limit_and_budget(shards: usize) {
    let mock = mock();
    let key = |id: &str| {
        let secret = format!("sk-aigw-test-{id}");
        let hash = aigw::auth::hex(&aigw::auth::hash_secret(secret.as_bytes()));
        (secret, format!("[keys.{id}]\nsecret_sha256 = \"{hash}\"\n"))
    };
    let (ann, ann_toml) = key("ann");
    let (bob, bob_toml) = key("bob");
    let (cid, cid_toml) = key("cid");
    let gw = Gateway::with(shards)
        .provider("up", &mock.base_url(), "api_key = \"sk-p\"")
        .toml(&format!(
            "{ann_toml}{bob_toml}{cid_toml}\
             [prices.\"up/gpt-x\"]\ninput = 1000.0\noutput = 1000.0\n\
             [[rate_limits]]\nname = \"ann-two\"\nscope = \"key\"\nkeys = [\"ann\"]\ncount = \"requests\"\nlimit = 2\nwindow = \"30d\"\n\
             [[rate_limits]]\nname = \"bob-four\"\nscope = \"key\"\nkeys = [\"bob\"]\ncount = \"requests\"\nlimit = 4\nwindow = \"30d\"\n\
             [[budgets]]\nname = \"cid-cents\"\nscope = \"key\"\nkeys = [\"cid\"]\nusd = 0.5\nwindow = \"daily\"\n"
        ))
        .start();
    let post = |secret: &str, i: usize| {
        gw.client().post(
            "/v1/chat/completions",
            &[("Authorization", &format!("Bearer {secret}"))],
            &chat(&format!("{secret} {i}")).replace("}]}", "}],\"max_tokens\":5}"),
        )
    };
    let admitted = |secret: &str| {
        (0..12)
            .map(|i| post(secret, i))
            .take_while(|r| r.status == 200)
            .count()
    };
    assert_eq!(admitted(&ann), 2);
    assert_refusal(&post(&ann, 99), "ann-two");
    assert_eq!(admitted(&bob), 4);
    assert_refusal(&post(&bob, 99), "bob-four");
    // cid: no rate limit, but a budget of a few requests' worth.
    let cid_admitted = admitted(&cid);
    assert!(
        (1..12).contains(&cid_admitted),
        "{cid_admitted}: {}",
        post(&cid, 50).text()
    );
    let r = post(&cid, 99);
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.text().contains("cid-cents"), "{}", r.text());
    // Neither rule counted another key's requests: ann is still refused,
    // bob's count is his own.
    assert_eq!(post(&ann, 100).status, 429);
}

fn limit_windows_survive_a_restart(shards: usize) {
    survive_a_restart(shards, "");
}

/// The same with `logs.sample = 0`: the admitted requests have no rows, only
/// tallies, and the rebuild counts them.
fn limit_windows_survive_a_restart_from_tallies(shards: usize) {
    survive_a_restart(shards, "[logs]\nsample = 0.0\n");
}

/// Three requests admitted of three, one refused; after a graceful restart
/// with `extra` config, the window is still full.
fn survive_a_restart(shards: usize, extra: &str) {
    let mock = mock();
    let dir = common::gateway::TempDir::new("limits-data");
    let rules = format!(
        "{extra}[[rate_limits]]\nname = \"three\"\nscope = \"gateway\"\ncount = \"requests\"\nlimit = 3\nwindow = \"30d\"\n"
    );
    let start = || {
        Gateway::with(shards)
            .provider("up", &mock.base_url(), "")
            .toml(&rules)
            .data_dir(dir.path())
            .start()
    };
    let mut gw = start();
    for i in 0..3 {
        let r = gw
            .client()
            .post("/v1/chat/completions", &[], &chat(&format!("{i}")));
        assert_eq!(r.status, 200);
    }
    // A refused request is logged too, and must not count after the restart.
    assert_refusal(
        &gw.client().post("/v1/chat/completions", &[], &chat("x")),
        "three",
    );
    gw.terminate();
    assert!(gw.wait_exit().success());
    let gw = start();
    assert!(
        gw.stderr().contains("rebuilt from 4 logged"),
        "{}",
        gw.stderr()
    );
    assert_refusal(
        &gw.client().post("/v1/chat/completions", &[], &chat("y")),
        "three",
    );
    assert_eq!(mock.requests_seen(), 3);
}

/// A stream its client leaves before the usage event: the limits count an
/// estimate of its output, and so does the rebuild after a restart (the log
/// keeps what was counted, not only what the provider reported).
fn estimated_tokens_count_after_a_restart(shards: usize) {
    let mock = mock();
    let dir = common::gateway::TempDir::new("limits-estimate");
    let rules = "[[rate_limits]]\nname = \"out\"\nscope = \"gateway\"\ncount = \"output_tokens\"\nlimit = 1\nwindow = \"30d\"\n";
    let start = || {
        Gateway::with(shards)
            .provider("up", &mock.base_url(), "")
            .toml(rules)
            .data_dir(dir.path())
            .start()
    };
    let body = |stream: bool| {
        format!(
            r#"{{"model":"up/gpt-x","stream":{stream},"max_tokens":1,"messages":[{{"role":"user","content":"a long story"}}]}}"#
        )
    };
    let mut gw = start();
    common::wire::leave_after_first_event(
        gw.addr,
        "/v1/chat/completions",
        &[("x-mock-chunks", "40"), ("x-mock-chunk-interval-ms", "50")],
        &body(true),
    );
    // The row of the abandoned stream, with what the limits counted.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, rows) = common::gateway::admin_get(&gw.admin_socket, "/logs?limit=1");
        let rows = String::from_utf8(rows).unwrap();
        if rows.contains("aborted_by_client") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no row: {rows}");
    }
    assert_refusal(
        &gw.client().post("/v1/chat/completions", &[], &body(false)),
        "out",
    );
    gw.terminate();
    assert!(gw.wait_exit().success());
    let gw = start();
    assert_refusal(
        &gw.client().post("/v1/chat/completions", &[], &body(false)),
        "out",
    );
    assert_eq!(mock.requests_seen(), 1);
}

/// A rule whose window a reload changes counts what the log holds for its
/// new window (as after a restart), not nothing; a new limit alone keeps
/// the counts.
fn a_reloaded_window_counts_what_the_log_holds(shards: usize) {
    let mock = mock();
    let gw = limited(
        shards,
        &mock.base_url(),
        "[[rate_limits]]\nname = \"two\"\nscope = \"gateway\"\ncount = \"requests\"\nlimit = 2\nwindow = \"30d\"\n",
    );
    let mut c = gw.client();
    for i in 0..2 {
        assert_eq!(
            c.post("/v1/chat/completions", &[], &chat(&format!("p{i}")))
                .status,
            200
        );
    }
    assert_refusal(&c.post("/v1/chat/completions", &[], &chat("p2")), "two");
    let reload = |from: &str, to: &str| {
        let path = gw.dir().join("aigw.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace(from, to)).unwrap();
        let (code, body) = common::gateway::admin_post(&gw.admin_socket, "/config/reload");
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    };
    reload("window = \"30d\"", "window = \"7d\"");
    assert_refusal(&c.post("/v1/chat/completions", &[], &chat("p3")), "two");
    reload("limit = 2\n", "limit = 3\n");
    assert_eq!(c.post("/v1/chat/completions", &[], &chat("p4")).status, 200);
    assert_refusal(&c.post("/v1/chat/completions", &[], &chat("p5")), "two");
    assert_eq!(mock.requests_seen(), 3);
}

at_1_and_2_shards!(
    estimated_tokens_count_after_a_restart,
    limit_windows_survive_a_restart,
    limit_windows_survive_a_restart_from_tallies,
    a_reloaded_window_counts_what_the_log_holds
);
