//! Gateway keys end to end: `aigw key new` lines in the config, `auth.required`,
//! which header carries the key, 401 and 403 that never reach the provider,
//! the key id in the log, keys created and revoked over the admin socket (on
//! every shard at once, surviving a restart), `aigw key list|revoke`. At 1 and
//! 2 shards.

mod common;

use common::gateway::{admin_get, admin_send, run_aigw};
use common::{Gateway, json, mock};
use simd_json::prelude::*;

const CHAT: &str = r#"{"model":"up/gpt-x","messages":[{"role":"user","content":"hi"}]}"#;

fn chat(model: &str) -> String {
    CHAT.replace("up/gpt-x", model)
}

/// `aigw key new ID ARGS`: (secret, the config lines it printed).
fn key_new(id: &str, args: &[&str]) -> (String, String) {
    let mut all = vec!["key", "new", id];
    all.extend_from_slice(args);
    let (code, out, err) = run_aigw(&all);
    assert_eq!(code, 0, "{err}");
    let secret = out
        .lines()
        .find_map(|l| l.strip_prefix("secret: "))
        .expect("a secret line")
        .to_string();
    let config = out[out.find("[keys.").expect("config lines")..].to_string();
    assert!(!config.contains(&secret), "the config lines hold no secret");
    (secret, config)
}

fn bearer(secret: &str) -> String {
    format!("Bearer {secret}")
}

fn printed_keys_work_and_everything_else_is_refused(shards: usize) {
    let mock = mock();
    let (alice, alice_lines) = key_new("alice", &["--model", "up/gpt-*", "--meta", "team=search"]);
    let (bob, bob_lines) = key_new("team.bob", &[]);
    let gw = Gateway::with(shards)
        .provider("up", &mock.base_url(), "api_key = \"sk-provider\"")
        .toml(&format!(
            "[auth]\nrequired = true\n{alice_lines}\n{bob_lines}"
        ))
        .start();
    let post = |headers: &[(&str, &str)], body: &str| {
        gw.client().post("/v1/chat/completions", headers, body)
    };

    // No key, a wrong one, one in the wrong header shape: 401, nothing upstream.
    let r = post(&[], CHAT);
    assert_eq!(r.status, 401);
    assert_eq!(r.error_code(), "invalid_api_key");
    assert_eq!(r.header("aigw-error-source"), Some("gateway"));
    assert!(r.header("www-authenticate").is_some());
    assert!(r.text().contains("Authorization: Bearer"), "{}", r.text());
    // To an Anthropic-shaped request, the header its SDK sends (which
    // carries the key: below).
    let messages =
        r#"{"model":"up/gpt-4o","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#;
    let r = gw.client().post("/v1/messages", &[], messages);
    assert_eq!(r.status, 401);
    assert!(r.text().contains("x-api-key: <key>"), "{}", r.text());
    let wrong = bearer(&alice.replace('a', "b"));
    assert_eq!(post(&[("Authorization", &wrong)], CHAT).status, 401);
    assert_eq!(post(&[("aigw-authorization", &wrong)], CHAT).status, 401);
    assert_eq!(mock.requests_seen(), 0);

    // A model the key does not allow: 403 naming both, nothing upstream.
    let r = post(&[("Authorization", &bearer(&alice))], &chat("up/o3"));
    assert_eq!(r.status, 403);
    assert_eq!(r.error_code(), "model_not_allowed");
    let text = r.text();
    assert!(text.contains("alice") && text.contains("up/o3"), "{text}");
    assert_eq!(mock.requests_seen(), 0);

    // The key in `Authorization` (aigw holds the provider key), in
    // `aigw-authorization`, in `cf-aig-authorization`, as `x-api-key`.
    for (header, value) in [
        ("Authorization", bearer(&alice)),
        ("aigw-authorization", bearer(&alice)),
        ("cf-aig-authorization", bearer(&alice)),
        ("x-api-key", alice.clone()),
    ] {
        let r = post(&[(header, &value)], CHAT);
        assert_eq!(r.status, 200, "{header}: {}", r.text());
    }
    let r = post(&[("Authorization", &bearer(&bob))], &chat("up/o3"));
    assert_eq!(r.status, 200, "bob may use every model");
    assert_eq!(mock.requests_seen(), 5);
    // The provider sees its own key, never the gateway's.
    for c in mock.captured() {
        assert_eq!(c.header("authorization"), Some("Bearer sk-provider"));
        assert!(c.header("x-api-key").is_none());
        assert!(c.header("aigw-authorization").is_none());
        assert!(c.header("cf-aig-authorization").is_none());
    }

    // The log knows whose requests they were; the key's metadata is attributed.
    let (code, body) = admin_get(&gw.admin_socket, "/logs?key=alice&limit=100");
    assert_eq!(code, 200);
    let rows: Vec<_> = String::from_utf8(body)
        .unwrap()
        .lines()
        .map(|l| json(l.as_bytes()))
        .collect();
    // Four successes and the 403.
    assert_eq!(rows.len(), 5, "{rows:?}");
    assert!(rows.iter().all(|r| r["key_id"].as_str() == Some("alice")));
    assert!(
        rows.iter()
            .all(|r| r["metadata"]["team"].as_str() == Some("search")),
        "{rows:?}"
    );
    let (code, body) = admin_get(&gw.admin_socket, "/logs?key=team.bob");
    assert_eq!(code, 200);
    assert_eq!(String::from_utf8(body).unwrap().lines().count(), 1);
    // /stats and /metrics count by key too (requests without one are not).
    let stats = gw.stats();
    assert_eq!(
        stats["keys"]["alice"]["requests"].as_u64(),
        Some(5),
        "{stats}"
    );
    assert_eq!(
        stats["keys"]["alice"]["errors"].as_u64(),
        Some(1),
        "{stats}"
    );
    assert_eq!(
        stats["keys"]["team.bob"]["requests"].as_u64(),
        Some(1),
        "{stats}"
    );
    assert!(stats["keys"]["alice"]["tokens"]["input"].as_u64().unwrap() > 0);
    let (_, metrics) = admin_get(&gw.admin_socket, "/metrics");
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("aigw_key_requests_total{key=\"alice\"} 5"),
        "{metrics}"
    );
}

fn a_client_with_its_own_provider_key_sends_the_gateway_key_beside_it(shards: usize) {
    let mock = mock();
    let (secret, lines) = key_new("carol", &[]);
    let gw = Gateway::with(shards)
        .provider("up", &mock.base_url(), "")
        .toml(&format!(
            "[auth]\nrequired = true\n{lines}[logs]\npayloads = true\n"
        ))
        .start();
    let post = |headers: &[(&str, &str)]| gw.client().post("/v1/chat/completions", headers, CHAT);
    // Its Authorization is the provider's key: it is not the gateway key.
    let r = post(&[("Authorization", "Bearer sk-client-own")]);
    assert_eq!(r.status, 401);
    assert!(r.text().contains("aigw-authorization"), "{}", r.text());
    let r = post(&[
        ("Authorization", "Bearer sk-client-own"),
        ("aigw-authorization", &bearer(&secret)),
    ]);
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = mock.captured();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].header("authorization"),
        Some("Bearer sk-client-own")
    );
    assert!(seen[0].header("aigw-authorization").is_none());
    // The gateway key in `Authorization`, which would go to the provider:
    // refused, and never sent.
    let r = post(&[("Authorization", &bearer(&secret))]);
    assert_eq!(r.status, 401);
    assert!(r.text().contains("aigw-authorization"), "{}", r.text());
    // Nor beside a gateway key where it belongs, in any header that goes
    // upstream, however it is spelled.
    let (other, _) = key_new("dave", &[]);
    let beside = |name: &str, value: String| {
        post(&[
            ("aigw-authorization", &bearer(&secret)),
            (name, value.as_str()),
        ])
    };
    for r in [
        beside("Authorization", format!("bearer {other}")),
        beside("authorization", other.clone()),
        beside("api-key", other.clone()),
        beside("x-goog-api-key", other.clone()),
        beside("x-api-key", secret.clone()),
    ] {
        assert_eq!(r.status, 401, "{}", r.text());
        assert_eq!(r.header("aigw-error-source"), Some("gateway"));
    }
    // Two different gateway keys: neither is taken.
    let r = post(&[
        ("aigw-authorization", &bearer(&secret)),
        ("cf-aig-authorization", &bearer(&other)),
    ]);
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.text().contains("two different"), "{}", r.text());
    // Nor in the URL query (where Google's API takes its key), however
    // encoded: the query goes upstream as written.
    for query in [
        format!("?key={secret}"),
        format!("?alt=sse&key=%73{}", &secret[1..]),
    ] {
        let r = gw.client().post(
            &format!("/up/chat/completions{query}"),
            &[("aigw-authorization", &bearer(&secret))],
            CHAT,
        );
        assert_eq!(r.status, 401, "{query}: {}", r.text());
        assert!(r.text().contains("the URL"), "{}", r.text());
    }
    // Nor in any other form, header or place that goes upstream.
    let basic = {
        // base64 of "u:<secret>", by hand (no crate for one test).
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let raw = format!("u:{other}").into_bytes();
        let mut out = String::new();
        for chunk in raw.chunks(3) {
            let n =
                chunk.iter().fold(0u32, |n, b| n << 8 | u32::from(*b)) << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    };
    for (name, value) in [
        ("Authorization", format!("Bearer\t{other}")),
        ("Authorization", format!("Token {other}")),
        ("Authorization", format!("Bearer \"{other}\"")),
        ("Authorization", format!("Basic {basic}")),
        ("x-api-key", format!("foo, {other}")),
        ("Cookie", format!("session={other}")),
        ("x-anything", other.clone()),
    ] {
        let r = beside(name, value.clone());
        assert_eq!(r.status, 401, "{name}: {value}: {}", r.text());
    }
    for path in [
        format!("/up/{other}/chat/completions"),
        format!("/up/chat/completions/%73{}", &other[1..]),
    ] {
        let r = gw
            .client()
            .post(&path, &[("aigw-authorization", &bearer(&secret))], CHAT);
        assert_eq!(r.status, 401, "{path}: {}", r.text());
        assert!(r.text().contains("the URL"), "{}", r.text());
    }
    let r = gw.client().post(
        "/v1/chat/completions",
        &[("aigw-authorization", &bearer(&secret))],
        &CHAT.replace("up/gpt-x", &format!("up/{other}")),
    );
    assert_eq!(r.status, 401, "{}", r.text());
    // Nor in aigw's own headers, which stay here but whose values are
    // logged and exported (metadata as metric labels).
    for (name, value) in [
        ("aigw-metadata", format!(r#"{{"user":"{other}"}}"#)),
        ("cf-aig-metadata", format!(r#"{{"{other}":"x"}}"#)),
        ("aigw-event-id", other.clone()),
    ] {
        let r = beside(name, value.clone());
        assert_eq!(r.status, 401, "{name}: {value}: {}", r.text());
        assert!(r.text().contains("logs"), "{}", r.text());
    }
    // Nor in requests refused before a provider is chosen (an unknown path
    // or model, a body that is not JSON): their answers quote no secret,
    // and their rows keep none (found by a review: the path, user agent,
    // event id and metadata were logged and exported as sent).
    let early = |path: &str, headers: &[(&str, &str)], body: &str| {
        let r = gw.client().post(path, headers, body);
        assert!(matches!(r.status, 400 | 404), "{path}: {}", r.text());
        assert!(!r.text().contains(&other), "{path}: {}", r.text());
    };
    early(&format!("/{other}/chat/completions"), &[], "{}");
    early(&format!("/v1/models/{other}"), &[], "{}");
    early("/nope", &[("User-Agent", &format!("app/1 {other}"))], "{}");
    early("/nope", &[("aigw-event-id", &other)], "{}");
    early(
        "/v1/chat/completions",
        &[("aigw-metadata", &format!(r#"{{"u":"{other}"}}"#))],
        "{bad",
    );
    early(
        "/v1/chat/completions",
        &[("aigw-authorization", &bearer(&secret))],
        &format!(r#"{{"model":"{other}","messages":[]}}"#),
    );
    let (_, metrics) = admin_get(&gw.admin_socket, "/metrics");
    assert!(
        !String::from_utf8_lossy(&metrics).contains("sk-aigw-"),
        "a gateway secret in /metrics"
    );
    let (_, stats) = admin_get(&gw.admin_socket, "/stats");
    assert!(
        !String::from_utf8_lossy(&stats).contains("sk-aigw-"),
        "a gateway secret in /stats"
    );
    // The log keeps no secret of these either (bodies are kept: payloads on).
    let (code, rows) = admin_get(&gw.admin_socket, "/logs?limit=100");
    assert_eq!(code, 200);
    assert!(
        !String::from_utf8_lossy(&rows).contains("sk-aigw-"),
        "a gateway secret in the log"
    );
    assert_eq!(mock.requests_seen(), 1);
    assert!(
        !mock
            .captured()
            .iter()
            .any(|c| format!("{c:?}").contains("sk-aigw-")),
        "no gateway secret reached the provider"
    );
    // Nor any file the gateway wrote (the log's rows and kept bodies).
    let mut gw = gw;
    gw.terminate();
    gw.wait_exit();
    for (p, bytes) in common::gateway::files_under(gw.data_dir()) {
        assert!(
            memchr::memmem::find(&bytes, &other.as_bytes()[8..]).is_none(),
            "a gateway secret in {}",
            p.display()
        );
    }
}

fn without_auth_required_anonymous_requests_pass_but_bad_gateway_keys_do_not(shards: usize) {
    let mock = mock();
    let (secret, lines) = key_new("dave", &["--model", "up/gpt-x"]);
    let gw = Gateway::with(shards)
        .provider("up", &mock.base_url(), "api_key = \"sk-provider\"")
        .toml(&lines)
        .start();
    let post = |headers: &[(&str, &str)], body: &str| {
        gw.client().post("/v1/chat/completions", headers, body)
    };
    assert_eq!(post(&[], CHAT).status, 200);
    // A habitual provider key in Authorization is not a gateway key.
    assert_eq!(
        post(&[("Authorization", "Bearer sk-whatever")], CHAT).status,
        200
    );
    // Something meant for the gateway that it does not know is refused.
    let unknown = format!("sk-aigw-{}", "0".repeat(64));
    assert_eq!(
        post(&[("Authorization", &bearer(&unknown))], CHAT).status,
        401
    );
    assert_eq!(
        post(&[("aigw-authorization", "Bearer nope")], CHAT).status,
        401
    );
    // A known key still has its limits on models.
    let r = post(&[("Authorization", &bearer(&secret))], &chat("up/other"));
    assert_eq!(r.status, 403);
    assert_eq!(mock.requests_seen(), 2);
}

fn keys_made_over_the_admin_socket_work_on_every_shard_and_survive_a_restart(shards: usize) {
    let mock = mock();
    let dir = common::gateway::TempDir::new("keys-data");
    let start = || {
        Gateway::with(shards)
            .provider("up", &mock.base_url(), "api_key = \"sk-provider\"")
            .toml("[auth]\nrequired = true\n")
            .data_dir(dir.path())
            .start()
    };
    let gw = start();
    let (code, body) = admin_send(
        &gw.admin_socket,
        "POST",
        "/keys",
        r#"{"id":"erin","models":["up/*"],"metadata":{"app":"bot"}}"#,
    );
    assert_eq!(code, 201, "{}", String::from_utf8_lossy(&body));
    let made = json(&body);
    let erin = made["secret"].as_str().unwrap().to_string();
    assert!(erin.starts_with("sk-aigw-"));
    // A second key, the CLI's way: only the hash crosses the socket.
    let socket = gw.admin_socket.to_str().unwrap().to_string();
    let (code, out, err) = run_aigw(&["key", "new", "frank", "--create", "--socket", &socket]);
    assert_eq!(code, 0, "{err}");
    let frank = out
        .lines()
        .find_map(|l| l.strip_prefix("secret: "))
        .unwrap()
        .to_string();
    // Taken ids and bad bodies are refused with a reason.
    let (code, body) = admin_send(&gw.admin_socket, "POST", "/keys", r#"{"id":"erin"}"#);
    assert_eq!(code, 409, "{}", String::from_utf8_lossy(&body));
    let (code, _) = admin_send(
        &gw.admin_socket,
        "POST",
        "/keys",
        r#"{"id":"x","models":["gpt"]}"#,
    );
    assert_eq!(code, 400);
    // Nor may the config file take an admin key's id or secret: a reload
    // that tries is refused, naming the key, and changes nothing.
    let path = gw.dir().join("aigw.toml");
    let file = std::fs::read_to_string(&path).unwrap();
    let (_, lines) = key_new("erin", &[]);
    let hash = aigw::auth::hex(&aigw::auth::hash_secret(frank.as_bytes()));
    std::fs::write(
        &path,
        format!("{file}\n{lines}\n[keys.copy]\nsecret_sha256 = \"{hash}\"\n"),
    )
    .unwrap();
    let (code, body) = common::gateway::admin_post(&gw.admin_socket, "/config/reload");
    let text = String::from_utf8_lossy(&body).to_string();
    assert_eq!(code, 400, "{text}");
    assert!(
        text.contains("keys.erin") && text.contains("keys.copy"),
        "{text}"
    );
    std::fs::write(&path, &file).unwrap();

    // In force on every shard, on connections opened before it existed too.
    let mut conns = gw.connection_per_shard();
    for c in &mut conns {
        for secret in [&erin, &frank] {
            let r = c.post(
                "/v1/chat/completions",
                &[("Authorization", &bearer(secret))],
                CHAT,
            );
            assert_eq!(r.status, 200, "{}", r.text());
        }
    }
    let (code, out, err) = run_aigw(&["key", "list", "--socket", &socket]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("erin") && out.contains("frank") && out.contains("app=bot"),
        "{out}"
    );
    assert!(
        !out.contains(&erin) && !out.contains("sk-aigw-"),
        "no secret listed: {out}"
    );

    // Revoked: the very next request on every shard is refused.
    let (code, out, err) = run_aigw(&["key", "revoke", "frank", "--socket", &socket]);
    assert_eq!(code, 0, "{err}{out}");
    for c in &mut conns {
        let r = c.post(
            "/v1/chat/completions",
            &[("Authorization", &bearer(&frank))],
            CHAT,
        );
        assert_eq!(r.status, 401);
    }
    let (code, _, err) = run_aigw(&["key", "revoke", "frank", "--socket", &socket]);
    assert_ne!(code, 0);
    assert!(err.contains("no key with id"), "{err}");
    // A revoked secret is never put back in force, under its id or another,
    // even once the id is used again by a new secret.
    let create = |body: &str| {
        let (code, out) = admin_send(&gw.admin_socket, "POST", "/keys", body);
        (code, String::from_utf8_lossy(&out).to_string())
    };
    let again = |id: &str| create(&format!(r#"{{"id":"{id}","secret_sha256":"{hash}"}}"#));
    for id in ["frank", "frank2"] {
        let (code, text) = again(id);
        assert_eq!(code, 409, "{text}");
        assert!(text.contains("revoked"), "{text}");
    }
    let (code, text) = create(r#"{"id":"frank"}"#);
    assert_eq!(code, 201, "{text}");
    let (code, text) = again("frank3");
    assert_eq!(code, 409, "{text}");
    let (code, _, err) = run_aigw(&["key", "revoke", "frank", "--socket", &socket]);
    assert_eq!(code, 0, "{err}");
    let before = mock.requests_seen();
    drop(gw);

    // After a restart on the same data directory: erin works, frank does not.
    let gw = start();
    let ok = gw.client().post(
        "/v1/chat/completions",
        &[("Authorization", &bearer(&erin))],
        CHAT,
    );
    assert_eq!(ok.status, 200);
    let no = gw.client().post(
        "/v1/chat/completions",
        &[("Authorization", &bearer(&frank))],
        CHAT,
    );
    assert_eq!(no.status, 401);
    assert_eq!(mock.requests_seen(), before + 1);
    let (code, body) = admin_get(&gw.admin_socket, "/keys");
    assert_eq!(code, 200);
    let listed = json(&body);
    let ids: Vec<&str> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["erin"]);
}

fn a_file_key_is_revoked_by_a_reload_not_the_socket(shards: usize) {
    let mock = mock();
    let (secret, lines) = key_new("gina", &[]);
    let gw = Gateway::with(shards)
        .provider("up", &mock.base_url(), "api_key = \"sk-provider\"")
        .toml(&format!("[auth]\nrequired = true\n{lines}"))
        .start();
    let (code, body) = admin_send(&gw.admin_socket, "DELETE", "/keys/gina", "");
    assert_eq!(code, 409);
    assert!(String::from_utf8_lossy(&body).contains("reload"));
    let mut conns = gw.connection_per_shard();
    for c in &mut conns {
        let r = c.post(
            "/v1/chat/completions",
            &[("Authorization", &bearer(&secret))],
            CHAT,
        );
        assert_eq!(r.status, 200);
    }
    // The file without the key, reloaded: refused on every shard.
    let config = gw.dir().join("aigw.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let cut = text.find("[keys.gina]").unwrap();
    std::fs::write(&config, &text[..cut]).unwrap();
    let (code, body) = common::gateway::admin_post(&gw.admin_socket, "/config/reload");
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    for c in &mut conns {
        let r = c.post(
            "/v1/chat/completions",
            &[("Authorization", &bearer(&secret))],
            CHAT,
        );
        assert_eq!(r.status, 401);
    }
}

/// `/stats` and `/metrics` count by metadata field and value, the key's
/// attribution winning over the request's own, with the log off too.
fn metadata_is_attributed_in_stats_and_metrics(shards: usize) {
    let mock = mock();
    let (alice, lines) = key_new("alice", &["--meta", "team=search"]);
    let gw = Gateway::with(shards)
        .provider("up", &mock.base_url(), "api_key = \"sk-provider\"")
        .toml(&format!("[logs]\nenabled = false\n{lines}"))
        .start();
    let mut c = gw.client();
    let alice = bearer(&alice);
    for _ in 0..3 {
        let r = c.post(
            "/v1/chat/completions",
            &[
                ("Authorization", &alice),
                ("aigw-metadata", r#"{"user":"ann","team":"spoof"}"#),
            ],
            CHAT,
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    for _ in 0..2 {
        let r = c.post(
            "/v1/chat/completions",
            &[("aigw-metadata", r#"{"user":"bob \"b\""}"#)],
            CHAT,
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = c.post(
        "/v1/chat/completions",
        &[("cf-aig-metadata", r#"{"user":"ann"}"#)],
        CHAT,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let stats = gw.stats();
    let m = &stats["metadata"];
    assert_eq!(m["user"]["ann"]["requests"].as_u64(), Some(4), "{stats}");
    assert_eq!(
        m["user"]["bob \"b\""]["requests"].as_u64(),
        Some(2),
        "{stats}"
    );
    assert_eq!(m["team"]["search"]["requests"].as_u64(), Some(3), "{stats}");
    assert!(m["team"].get("spoof").is_none(), "{stats}");
    assert!(m["user"]["ann"]["tokens"]["input"].as_u64().unwrap() > 0);
    let (_, metrics) = admin_get(&gw.admin_socket, "/metrics");
    let metrics = String::from_utf8(metrics).unwrap();
    for line in [
        "aigw_metadata_requests_total{field=\"user\",value=\"ann\"} 4",
        "aigw_metadata_requests_total{field=\"user\",value=\"bob \\\"b\\\"\"} 2",
        "aigw_metadata_requests_total{field=\"team\",value=\"search\"} 3",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
    }
}

/// With the cache on, a gateway key is one cache scope whichever header
/// carries it (`Authorization`, `x-api-key`, `aigw-authorization`), and two
/// keys never share an entry.
fn a_key_is_one_cache_scope_whichever_header_carries_it(shards: usize) {
    let mock = mock();
    let (alice, alice_lines) = key_new("alice", &[]);
    let (bob, bob_lines) = key_new("bob", &[]);
    let gw = Gateway::with(shards)
        .provider("up", &mock.base_url(), "api_key = \"sk-provider\"")
        .toml(&format!(
            "[auth]\nrequired = true\n[cache]\nenabled = true\nsize = \"32MiB\"\n{alice_lines}\n{bob_lines}"
        ))
        .start();
    let status = |header: &str, secret: &str| {
        let r = gw
            .client()
            .post("/v1/chat/completions", &[(header, &bearer(secret))], CHAT);
        assert_eq!(r.status, 200, "{}", r.text());
        r.header("aigw-cache-status").unwrap().to_string()
    };
    assert_eq!(status("Authorization", &alice), "MISS");
    assert_eq!(status("aigw-authorization", &alice), "HIT");
    let r = gw.client().post(
        "/v1/chat/completions",
        &[("x-api-key", alice.as_str())],
        CHAT,
    );
    assert_eq!(r.header("aigw-cache-status"), Some("HIT"), "{}", r.text());
    assert_eq!(status("Authorization", &bob), "MISS");
    assert_eq!(status("aigw-authorization", &bob), "HIT");
    assert_eq!(mock.requests_seen(), 2);
}

at_1_and_2_shards!(
    a_key_is_one_cache_scope_whichever_header_carries_it,
    metadata_is_attributed_in_stats_and_metrics,
    printed_keys_work_and_everything_else_is_refused,
    a_client_with_its_own_provider_key_sends_the_gateway_key_beside_it,
    without_auth_required_anonymous_requests_pass_but_bad_gateway_keys_do_not,
    keys_made_over_the_admin_socket_work_on_every_shard_and_survive_a_restart,
    a_file_key_is_revoked_by_a_reload_not_the_socket,
);

#[test]
fn key_new_refuses_bad_ids_and_patterns() {
    let (code, _, err) = run_aigw(&["key", "new", "a b"]);
    assert_ne!(code, 0);
    assert!(err.contains("not a key id"), "{err}");
    let (code, _, err) = run_aigw(&["key", "new", "a", "--model", "gpt-4o"]);
    assert_ne!(code, 0);
    assert!(err.contains("provider/model"), "{err}");
    // A name given twice would print `metadata = { a = "1", a = "2" }`,
    // which no config loads.
    let (code, out, err) = run_aigw(&["key", "new", "a", "--meta", "a=1", "--meta", "a=2"]);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("--meta: a: given twice"), "{err}");
}
