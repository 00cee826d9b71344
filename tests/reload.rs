//! Live reload: `POST /config/reload` and SIGHUP re-read the config file and
//! apply it to every shard without closing a connection; an invalid file
//! changes nothing and names every error; restart-only settings are named;
//! `GET /config` shows the running values without secrets. At 1 and 2 shards.

mod common;

use common::gateway::{admin_get, admin_post};
use common::{Gateway, json, mock};
use simd_json::prelude::*;

fn config_path(gw: &Gateway) -> std::path::PathBuf {
    gw.dir().join("aigw.toml")
}

/// Rewrites the gateway's config file with `from` replaced by `to`.
fn edit(gw: &Gateway, from: &str, to: &str) {
    let path = config_path(gw);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{from} not in\n{text}");
    std::fs::write(&path, text.replace(from, to)).unwrap();
}

fn chat() -> &'static str {
    r#"{"model":"up/m","messages":[{"role":"user","content":"hi"}]}"#
}

fn a_reload_moves_a_provider_without_closing_a_connection(shards: usize) {
    let (a, b) = (mock(), mock());
    let gw = Gateway::with(shards)
        .provider("up", &a.base_url(), "")
        .start();
    let mut client = gw.client();
    assert_eq!(client.post("/v1/chat/completions", &[], chat()).status, 200);
    assert_eq!(a.requests_seen(), 1);

    edit(&gw, &a.base_url(), &b.base_url());
    let (status, body) = admin_post(&gw.admin_socket, "/config/reload");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let report = json(&body);
    assert_eq!(report["applied"].as_bool(), Some(true));
    let changed: Vec<&str> = report["changed"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(changed, ["providers.up.base_url"]);
    assert_eq!(report["notes"].as_array().map(Vec::len), Some(0));

    // A key the new config names but does not have is in force and noted
    // to whoever reloaded.
    edit(
        &gw,
        &b.base_url(),
        &format!(
            "{}\"\napi_key_env = \"AIGW_TEST_RELOAD_UNSET_VAR",
            b.base_url()
        ),
    );
    let (status, body) = admin_post(&gw.admin_socket, "/config/reload");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let report = json(&body);
    let notes = report["notes"].as_array().unwrap();
    assert_eq!(notes.len(), 1, "{report}");
    let note = notes[0].as_str().unwrap();
    assert!(note.starts_with("providers.up.api_key_env: "), "{note}");
    assert!(!note.contains("AIGW_TEST_RELOAD_UNSET_VAR"), "{note}");

    // The same keep-alive connection now reaches the new address.
    let r = client.post("/v1/chat/completions", &[], chat());
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), None, "the connection stays open");
    assert_eq!((a.requests_seen(), b.requests_seen()), (1, 1));
}

fn an_invalid_reload_changes_nothing_and_names_every_error(shards: usize) {
    let a = mock();
    let gw = Gateway::with(shards)
        .provider("up", &a.base_url(), "")
        .start();
    let before = admin_get(&gw.admin_socket, "/config").1;
    edit(
        &gw,
        "kind = \"openai\"",
        "kind = \"grpc\"\ncolour = \"red\"",
    );
    let (status, body) = admin_post(&gw.admin_socket, "/config/reload");
    assert_eq!(status, 400);
    let answer = json(&body);
    assert_eq!(answer["applied"].as_bool(), Some(false));
    let errors: Vec<&str> = answer["errors"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        errors.iter().any(|e| e.starts_with("providers.up.kind:")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.starts_with("providers.up.colour:")),
        "{errors:?}"
    );
    assert_eq!(admin_get(&gw.admin_socket, "/config").1, before);
    assert_eq!(
        gw.client().post("/v1/chat/completions", &[], chat()).status,
        200
    );
    assert_eq!(a.requests_seen(), 1);
}

fn restart_only_settings_are_named_and_keep_their_values(shards: usize) {
    let a = mock();
    let gw = Gateway::with(shards)
        .server("drain_timeout = \"3s\"")
        .provider("up", &a.base_url(), "")
        .toml("[timeouts]\nfirst_byte = \"30s\"\n[cache]\nenabled = true\nsize = \"16MiB\"\nmax_entry = \"1MiB\"\n")
        .start();
    edit(&gw, "drain_timeout = \"3s\"", "drain_timeout = \"4s\"");
    edit(&gw, "first_byte = \"30s\"", "first_byte = \"40s\"");
    edit(&gw, "max_entry = \"1MiB\"", "max_entry = \"2MiB\"");
    let (status, body) = admin_post(&gw.admin_socket, "/config/reload");
    assert_eq!(status, 200);
    let report = json(&body);
    let list = |k: &str| -> Vec<String> {
        report[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        list("restart_needed"),
        ["cache.max_entry", "server.drain_timeout"]
    );
    assert_eq!(list("changed"), ["timeouts.first_byte"]);
    let config = String::from_utf8(admin_get(&gw.admin_socket, "/config").1).unwrap();
    assert!(config.contains("server.drain_timeout = 3s\n"), "{config}");
    assert!(config.contains("cache.max_entry = 1048576\n"), "{config}");
    assert!(config.contains("timeouts.first_byte = 40s\n"), "{config}");
    // The running values stay what the next reload compares with: the
    // file set back, nothing needs a restart.
    edit(&gw, "max_entry = \"2MiB\"", "max_entry = \"1MiB\"");
    edit(&gw, "drain_timeout = \"4s\"", "drain_timeout = \"3s\"");
    let (status, body) = admin_post(&gw.admin_socket, "/config/reload");
    assert_eq!(status, 200);
    assert_eq!(
        json(&body)["restart_needed"].as_array().map(Vec::len),
        Some(0)
    );
}

/// A reload refuses what the next start would refuse, though the setting at
/// fault waits for that restart: a cache too small for its shards names the
/// size that is enough, and that size is then accepted.
fn a_reload_refuses_a_cache_the_next_start_would_refuse(shards: usize) {
    let a = mock();
    let gw = Gateway::with(shards)
        .provider("up", &a.base_url(), "")
        .toml("[cache]\nenabled = true\nsize = \"16MiB\"\nmax_entry = \"1MiB\"\n")
        .start();
    let before = admin_get(&gw.admin_socket, "/config").1;
    edit(&gw, "size = \"16MiB\"", "size = \"2MiB\"");
    let (status, body) = admin_post(&gw.admin_socket, "/config/reload");
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let answer = json(&body);
    assert_eq!(answer["applied"].as_bool(), Some(false));
    let error = answer["errors"][0].as_str().unwrap().to_string();
    assert!(error.starts_with("cache.size: "), "{error}");
    assert_eq!(admin_get(&gw.admin_socket, "/config").1, before);
    let least: u64 = error
        .split("set cache.size to at least ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no size in {error}"));
    // One byte less is still refused; the size named is enough.
    edit(&gw, "size = \"2MiB\"", &format!("size = {}", least - 1));
    assert_eq!(admin_post(&gw.admin_socket, "/config/reload").0, 400);
    edit(
        &gw,
        &format!("size = {}", least - 1),
        &format!("size = {least}"),
    );
    let (status, body) = admin_post(&gw.admin_socket, "/config/reload");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        json(&body)["restart_needed"][0].as_str(),
        Some("cache.size")
    );
    assert_eq!(
        gw.client().post("/v1/chat/completions", &[], chat()).status,
        200
    );
}

/// `cache.shared` applies from the next request: turned off, two
/// credentials no longer share what one of them stored.
fn a_reload_turns_cache_sharing_off(shards: usize) {
    let a = mock();
    let gw = Gateway::with(shards)
        .provider("up", &a.base_url(), "")
        .toml("[cache]\nenabled = true\nsize = \"16MiB\"\nmax_entry = \"1MiB\"\nshared = true\n")
        .start();
    let post = |who: &str, content: &str| {
        let body = chat().replace("hi", content);
        let r = gw
            .client()
            .post("/v1/chat/completions", &[("authorization", who)], &body);
        r.header("aigw-cache-status").unwrap_or("").to_string()
    };
    assert_eq!(post("Bearer sk-a", "one"), "MISS");
    assert_eq!(post("Bearer sk-b", "one"), "HIT");
    edit(&gw, "shared = true", "shared = false");
    let (status, body) = admin_post(&gw.admin_socket, "/config/reload");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body)["changed"][0].as_str(), Some("cache.shared"));
    assert_eq!(post("Bearer sk-a", "two"), "MISS");
    assert_eq!(post("Bearer sk-b", "two"), "MISS");
    assert_eq!(post("Bearer sk-a", "two"), "HIT");
}

fn sighup_reloads_and_get_config_hides_secrets(shards: usize) {
    let (a, b) = (mock(), mock());
    let gw = Gateway::with(shards)
        .provider("up", &a.base_url(), "api_key = \"sk-reload-canary-1\"")
        .start();
    edit(&gw, &a.base_url(), &b.base_url());
    edit(&gw, "sk-reload-canary-1", "sk-reload-canary-2");
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(gw.pid(), libc::SIGHUP) }, 0);
    // The whole line: it names what changed, the key by its path only.
    let log = gw.wait_stderr("\"providers.up.base_url\"]");
    assert!(
        log.contains("SIGHUP: config reloaded; changed: [\"providers.up.api_key\", \"providers.up.base_url\"]"),
        "{log}"
    );
    let r = gw.client().post("/v1/chat/completions", &[], chat());
    assert_eq!(r.status, 200);
    assert_eq!(b.requests_seen(), 1);
    let seen = b.captured();
    assert_eq!(
        seen[0].header("authorization"),
        Some("Bearer sk-reload-canary-2")
    );
    let config = String::from_utf8(admin_get(&gw.admin_socket, "/config").1).unwrap();
    assert!(config.contains("providers.up.api_key = ****\n"), "{config}");
    assert!(
        config.contains(&format!("providers.up.base_url = {}\n", b.base_url())),
        "{config}"
    );
    for text in [config, gw.stderr()] {
        assert!(!text.contains("sk-reload-canary"), "{text}");
    }
}

at_1_and_2_shards!(
    a_reload_moves_a_provider_without_closing_a_connection,
    an_invalid_reload_changes_nothing_and_names_every_error,
    restart_only_settings_are_named_and_keep_their_values,
    sighup_reloads_and_get_config_hides_secrets,
    a_reload_turns_cache_sharing_off,
    a_reload_refuses_a_cache_the_next_start_would_refuse,
);
