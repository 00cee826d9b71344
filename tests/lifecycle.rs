//! The process around the data plane: config errors named by key path (from
//! `check-config` and from `serve`), `print-config`, `stats`, and the SIGTERM
//! drain (in-flight requests finish, idle connections close, exit 0).

mod common;

use aigw_loadtest::mock::MockServer;
use common::gateway::{TempDir, run_aigw};
use common::held::{HELD_REPLY, HeldUpstream};
use common::{Gateway, WAIT, json, mock};
use simd_json::prelude::*;
use std::net::TcpStream;

#[test]
fn check_config_accepts_a_valid_file() {
    let dir = TempDir::new("cfg");
    let file = dir.write(
        "ok.toml",
        "builtin_providers = false\n[server]\nshards = 2\ndrain_timeout = \"5s\"\n[timeouts]\nfirst_byte = \"300ms\"\n\
         [providers.up]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\napi_key = \"sk-x\"\n",
    );
    let (code, stdout, stderr) = run_aigw(&["check-config", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout.trim(),
        format!("{}: ok (1 providers)", file.display())
    );
}

/// (file contents, a line the errors must contain)
const BAD_CONFIGS: &[(&str, &str)] = &[
    (
        "[server]\ndata_dir = \"/tmp/x\\nauth.required = true\"\n",
        "server.data_dir: contains a control character",
    ),
    (
        "[admin]\nsocket = \"/tmp/a.sock\\r\"\n",
        "admin.socket: contains a control character",
    ),
    (
        "[server]\nlisen = \"127.0.0.1:1\"\n",
        "server.lisen: unknown key; did you mean `server.listen`?",
    ),
    (
        "[server]\nlisten = \"nowhere\"\n",
        "server.listen: `nowhere` is not IP:PORT",
    ),
    (
        "[server]\nshards = -1\n",
        "server.shards: -1 is out of range",
    ),
    (
        "[server]\ndrain_timeout = \"soon\"\n",
        "server.drain_timeout: ",
    ),
    (
        "[timeouts]\nfirst_byte = 5\n",
        "timeouts.first_byte: a bare number has no unit",
    ),
    (
        "[timeouts]\nhead = \"0s\"\n",
        "timeouts.head: must be greater than zero",
    ),
    (
        "[limits]\nmax_body_bytes = \"12 parsecs\"\n",
        "limits.max_body_bytes: ",
    ),
    (
        "[limits]\nmax_headers = 100000\n",
        "limits.max_headers: 100000 is out of range",
    ),
    (
        "[providers.x]\nkind = \"grpc\"\nbase_url = \"http://a/v1\"\n",
        "providers.x.kind: unknown kind `grpc`",
    ),
    (
        "[providers.y]\nkind = \"openai\"\n",
        "providers.y.base_url: missing",
    ),
    (
        "[providers.z]\nbase_url = \"ftp://a\"\n",
        "providers.z.base_url: `ftp://a` must start with http:// or https://",
    ),
    (
        "[providers.z]\nbase_url = \"http://a/v1\"\ncolour = \"red\"\n",
        "providers.z.colour: unknown key",
    ),
    (
        "[providers.v1]\nbase_url = \"http://a/v1\"\n",
        "providers.v1: `v1` is reserved",
    ),
    (
        "[providers.dynamic]\nbase_url = \"http://a/v1\"\n",
        "providers.dynamic: `dynamic` is reserved: a model `dynamic/<name>` names route",
    ),
    (
        "[providers.g]\nkind = \"google\"\nbase_url = \"http://a/v1beta\"\n[routes.r]\ntargets = [{ provider = \"g\", model = \"gemini 2.5 flash\" }]\n",
        "routes.r.targets[0].model: `gemini 2.5 flash` goes into provider `g`'s URL",
    ),
    (
        "[routes.r]\ntargets = [{ provider = \"openai\", model = \"\" }]\n",
        "routes.r.targets[0].model: empty",
    ),
    (
        "builtin_providers = \"yes\"\n",
        "builtin_providers: expected true or false",
    ),
    ("[server\n", "line 1: not valid TOML"),
];

#[test]
fn check_config_names_the_key_path_of_every_error() {
    let dir = TempDir::new("cfg");
    for (i, (text, line)) in BAD_CONFIGS.iter().enumerate() {
        let file = dir.write(&format!("bad{i}.toml"), text);
        let (code, stdout, stderr) = run_aigw(&["check-config", file.to_str().unwrap()]);
        assert_eq!(code, 2, "{text:?} was accepted: {stdout}");
        assert!(stderr.starts_with("aigw: "), "{stderr}");
        assert!(
            stderr.lines().any(|l| l.starts_with(line)),
            "{text:?}: expected a line starting {line:?} in\n{stderr}"
        );
    }
}

#[test]
fn a_provider_key_with_a_line_break_is_a_config_error_that_never_shows_the_key() {
    let dir = TempDir::new("crlf");
    // In the file.
    let file = dir.write(
        "file.toml",
        "[providers.up]\nbase_url = \"http://127.0.0.1:9/v1\"\napi_key = \"sk-leak\\r\\nx-evil: 1\"\n",
    );
    let (code, _, stderr) = run_aigw(&["check-config", file.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("providers.up.api_key:")),
        "{stderr}"
    );
    assert!(!stderr.contains("sk-leak"), "{stderr}");
    // In the variable `api_key_env` names, for check-config and for serve.
    let file = dir.write(
        "env.toml",
        "[providers.up]\nbase_url = \"http://127.0.0.1:9/v1\"\napi_key_env = \"AIGW_TEST_CRLF_KEY\"\n",
    );
    for args in [
        vec!["check-config", file.to_str().unwrap()],
        vec!["serve", "--config", file.to_str().unwrap()],
    ] {
        let out = std::process::Command::new(common::gateway::AIGW)
            .args(&args)
            .env("AIGW_TEST_CRLF_KEY", "sk-leak\nx-evil: 1")
            .output()
            .expect("run aigw");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with("providers.up.api_key_env:")
                    && l.contains("AIGW_TEST_CRLF_KEY")),
            "{stderr}"
        );
        assert!(!stderr.contains("sk-leak"), "{stderr}");
    }
}

#[test]
fn an_unset_key_variable_of_a_declared_provider_is_noted_without_its_name() {
    let dir = TempDir::new("unset");
    let file = dir.write(
        "env.toml",
        "[providers.up]\nbase_url = \"http://127.0.0.1:9/v1\"\napi_key_env = \"AIGW_TEST_UNSET_KEY_VAR\"\n",
    );
    let run = |value: Option<&str>| checked(&file, &[("AIGW_TEST_UNSET_KEY_VAR", value)]);
    let stdout = run(None);
    let notes: Vec<&str> = stdout.lines().filter(|l| l.starts_with("note: ")).collect();
    assert_eq!(notes.len(), 1, "{stdout}");
    assert!(
        notes[0].starts_with("note: providers.up.api_key_env: ") && notes[0].contains("not set"),
        "{stdout}"
    );
    assert!(!stdout.contains("AIGW_TEST_UNSET_KEY_VAR"), "{stdout}");
    // Set: no note. Empty counts as unset.
    assert!(!run(Some("sk-up")).contains("note:"));
    assert!(run(Some("")).contains("note: providers.up.api_key_env"));
    assert!(run(Some("   ")).contains("note: providers.up.api_key_env"));
    // An empty key in the file is noted too.
    let empty = dir.write(
        "empty.toml",
        "[providers.up]\nbase_url = \"http://127.0.0.1:9/v1\"\napi_key = \" \"\n",
    );
    let (code, stdout, _) = run_aigw(&["check-config", empty.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("note: providers.up.api_key: empty"),
        "{stdout}"
    );
    // A table that replaces a built-in without a key stops reading its set
    // variable: noted, with the variable (a built-in's name) named.
    let replaced = dir.write(
        "replaced.toml",
        "[providers.openai]\nbase_url = \"http://127.0.0.1:9/v1\"\n",
    );
    let stdout = checked(&replaced, &[("OPENAI_API_KEY", Some("sk-test-set"))]);
    assert!(
        stdout
            .contains("note: providers.openai replaces the built-in `openai`, so `OPENAI_API_KEY`"),
        "{stdout}"
    );
    assert!(!stdout.contains("sk-test-set"), "{stdout}");
    // The built-in catalog's unset default variables are bring-your-own-key:
    // no note for them.
    let plain = dir.write("plain.toml", "[server]\nshards = 1\n");
    let stdout = checked(
        &plain,
        &[("OPENAI_API_KEY", None), ("ANTHROPIC_API_KEY", None)],
    );
    assert!(!stdout.contains("note:"), "{stdout}");
}

/// `aigw check-config FILE`'s standard output, with each variable set
/// (`Some`) or removed (`None`); the file must pass.
fn checked(file: &std::path::Path, vars: &[(&str, Option<&str>)]) -> String {
    let mut cmd = std::process::Command::new(common::gateway::AIGW);
    cmd.args(["check-config", file.to_str().unwrap()]);
    for (name, value) in vars {
        match value {
            Some(v) => cmd.env(name, v),
            None => cmd.env_remove(name),
        };
    }
    let out = cmd.output().expect("run aigw");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn check_config_reports_every_error_at_once() {
    let dir = TempDir::new("cfg");
    let file = dir.write(
        "bad.toml",
        "[server]\nlisen = \"x\"\n[timeouts]\nidle = 3\n[providers.y]\nkind = \"openai\"\n",
    );
    let (code, _, stderr) = run_aigw(&["check-config", file.to_str().unwrap()]);
    assert_eq!(code, 2);
    for key in [
        "server.lisen: ",
        "timeouts.idle: ",
        "providers.y.base_url: ",
    ] {
        assert!(
            stderr.lines().any(|l| l.starts_with(key)),
            "{key} missing from\n{stderr}"
        );
    }
}

#[test]
fn serve_with_a_bad_config_exits_2_naming_the_key() {
    let dir = TempDir::new("cfg");
    for (i, (text, line)) in BAD_CONFIGS.iter().enumerate() {
        let file = dir.write(&format!("bad{i}.toml"), text);
        let (code, stdout, stderr) = run_aigw(&["serve", "--config", file.to_str().unwrap()]);
        assert_eq!(code, 2, "{text:?}: {stdout}");
        assert!(stderr.starts_with("aigw: "), "{stderr}");
        assert!(
            stderr.lines().any(|l| l.starts_with(line)),
            "{text:?}: expected {line:?} in\n{stderr}"
        );
        assert!(!stdout.contains("listening"), "{text:?}: it started");
    }
}

fn serve_refuses_a_listen_address_in_use(shards: usize) {
    let running = Gateway::with(shards).start();
    let dir = TempDir::new("second");
    let file = dir.write(
        "aigw.toml",
        &format!(
            "[server]\nlisten = \"{}\"\nshards = {shards}\ndata_dir = \"{d}\"\n[admin]\nsocket = \"{d}/admin.sock\"\n",
            running.addr,
            d = dir.path().display()
        ),
    );
    let (code, _, stderr) = run_aigw(&["serve", "--config", file.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(stderr.starts_with("aigw: server.listen: "), "{stderr}");
    assert!(stderr.contains("already in use"), "{stderr}");
    assert_eq!(
        running.client().get("/healthz").status,
        200,
        "the running gateway is untouched"
    );
}

fn serve_refuses_an_admin_socket_in_use(shards: usize) {
    let running = Gateway::with(shards).start();
    // Its own data_dir: only the admin socket is shared.
    let dir = TempDir::new("second-admin");
    let file = dir.write(
        "aigw.toml",
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nshards = {shards}\ndata_dir = \"{}\"\n[admin]\nsocket = \"{}\"\n",
            dir.path().display(),
            running.admin_socket.display()
        ),
    );
    let (code, _, stderr) = run_aigw(&["serve", "--config", file.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(stderr.starts_with("aigw: admin.socket: "), "{stderr}");
    assert_eq!(
        json(&common::gateway::admin_get(&running.admin_socket, "/healthz").1)["status"],
        "ok"
    );
}

#[test]
fn print_config_lists_every_key_with_its_default() {
    let (code, stdout, _) = run_aigw(&["print-config"]);
    assert_eq!(code, 0);
    for key in [
        "server.listen",
        "server.shards",
        "server.drain_timeout",
        "admin.socket",
        "limits.max_body_bytes",
        "timeouts.first_byte",
        "timeouts.upstream_idle",
        "providers.*.base_url",
    ] {
        assert!(stdout.lines().any(|l| l.starts_with(key)), "{key} missing");
    }
}

/// Everything aigw makes in its data_dir (the cache's partitions, the
/// request log and its WAL, the lock, the admin socket) only its user may
/// read, whatever the umask: they hold every tenant's answers and prompts.
fn the_data_dir_is_private_to_the_gateway_user(shards: usize) {
    use std::os::unix::fs::PermissionsExt;
    let mock = mock();
    let gw = Gateway::with(shards)
        .provider("up", &mock.base_url(), "")
        .toml("[cache]\nenabled = true\nsize = \"16MiB\"\nmax_entry = \"1MiB\"\n")
        .start();
    let body = r#"{"model":"up/gpt-x","messages":[{"role":"user","content":"hi"}]}"#;
    assert_eq!(
        gw.client().post("/v1/chat/completions", &[], body).status,
        200
    );
    let mut seen = Vec::new();
    let mut dirs = vec![gw.data_dir()];
    while let Some(dir) = dirs.pop() {
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", dir.display());
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                dirs.push(path);
                continue;
            }
            let mode = meta.permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
            seen.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    seen.sort();
    for name in ["admin.sock", "aigw.lock", "partition-0.bin", "requests.db"] {
        assert!(seen.iter().any(|s| s == name), "{name} not in {seen:?}");
    }
}

fn stats_command_prints_the_admin_json(shards: usize) {
    let mock = mock();
    let gw = Gateway::with(shards)
        .provider("up", &mock.base_url(), "")
        .start();
    let mut client = gw.client();
    assert_eq!(
        client
            .post("/v1/chat/completions", &[], r#"{"model":"up/gpt-x"}"#)
            .status,
        200
    );
    assert_eq!(
        client
            .post("/v1/chat/completions", &[], r#"{"model":"nope/gpt-x"}"#)
            .status,
        400
    );

    let (code, stdout, stderr) = run_aigw(&[
        "stats",
        "--json",
        "--socket",
        gw.admin_socket.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let s = json(stdout.as_bytes());
    assert_eq!(s["shards"].as_u64(), Some(shards as u64));
    assert_eq!(s["requests"].as_u64(), Some(2));
    assert_eq!(s["status"]["2xx"].as_u64(), Some(1));
    assert_eq!(s["status"]["4xx"].as_u64(), Some(1));
    // An unknown provider is the client's mistake, not the gateway's.
    assert_eq!(s["errors"]["client"].as_u64(), Some(1));
    assert_eq!(s["errors"]["gateway"].as_u64(), Some(0));
    assert_eq!(s["errors"]["provider"].as_u64(), Some(0));
    assert_eq!(s["aborted"]["upstream"].as_u64(), Some(0));
    assert_eq!(s["upstream"]["connects"].as_u64(), Some(1));
    assert_eq!(s["connections"]["accepted"].as_u64(), Some(1));
    assert_eq!(s["connections"]["open"].as_u64(), Some(1));
    assert_eq!(s["providers"]["up"]["requests"].as_u64(), Some(1));
    assert!(s["tokens"]["input"].as_u64().unwrap() > 0);
    for series in ["total", "gateway", "upstream_ttfb", "ttft"] {
        assert!(
            s["latency_us"][series].get("p50").is_some(),
            "latency_us.{series}"
        );
    }
    assert_eq!(s["latency_us"]["upstream_ttfb"]["count"].as_u64(), Some(1));

    let (code, table, stderr) = run_aigw(&["stats", "--socket", gw.admin_socket.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(table.contains(&format!("{shards} shard(s)")), "{table}");
    assert!(table.contains("provider    up"), "{table}");
    assert!(table.contains("request log rows"), "{table}");
}

fn sigterm_drains_in_flight_requests_and_closes_idle_connections(shards: usize) {
    let held = HeldUpstream::start();
    let mut gw = Gateway::with(shards)
        .provider("held", &held.base_url(), "")
        .start();
    let mut idle = gw.connection_per_shard();
    let mut in_flight = gw.client();
    in_flight.send(&common::wire::request_bytes(
        "POST",
        "/v1/chat/completions",
        &[],
        br#"{"model":"held/m"}"#,
    ));
    held.wait_arrival();

    gw.terminate();

    // Every shard starts draining: its idle connection is closed...
    for (shard, c) in idle.iter_mut().enumerate() {
        assert!(
            c.closed_by_peer(),
            "idle connection on shard {shard} left open"
        );
    }
    // ...and nobody accepts new connections any more.
    assert!(
        TcpStream::connect_timeout(&gw.addr, WAIT).is_err(),
        "still accepting during the drain"
    );
    // The request that was in flight finishes, and its connection closes.
    held.release();
    let r = in_flight.read_response();
    assert_eq!(r.status, 200);
    assert!(r.complete);
    assert_eq!(r.text(), HELD_REPLY);
    assert_eq!(
        r.header("connection"),
        Some("close"),
        "a draining gateway announces the close"
    );
    assert!(in_flight.closed_by_peer());

    let status = gw.wait_exit();
    assert_eq!(
        status.code(),
        Some(0),
        "{status:?}, stderr:\n{}",
        gw.stderr()
    );
}

/// A request to provider `held`, once it has reached it (never answered).
fn held_request(gw: &Gateway, held: &HeldUpstream) -> common::wire::Client {
    let mut stuck = gw.client();
    stuck.send(&common::wire::request_bytes(
        "POST",
        "/v1/chat/completions",
        &[],
        br#"{"model":"held/m"}"#,
    ));
    held.wait_arrival();
    stuck
}

/// A gateway with provider `held` (answers when told) and `up` (the mock),
/// its drain lasting `drain`, with `toml` besides.
fn held_and_up(shards: usize, drain: &str, toml: &str) -> (HeldUpstream, MockServer, Gateway) {
    let held = HeldUpstream::start();
    let up = mock();
    let gw = Gateway::with(shards)
        .server(&format!("drain_timeout = \"{drain}\""))
        .provider("held", &held.base_url(), "")
        .provider("up", &up.base_url(), "")
        .toml(toml)
        .start();
    (held, up, gw)
}

/// The rows `aigw logs --json` reads from the stopped gateway's store.
fn rows_after(gw: &Gateway) -> Vec<simd_json::OwnedValue> {
    let (code, out, err) = run_aigw(&[
        "logs",
        "--data-dir",
        gw.data_dir().to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    out.lines().map(|l| json(l.as_bytes())).collect()
}

fn drain_gives_up_after_drain_timeout(shards: usize) {
    let held = HeldUpstream::start();
    let mut gw = Gateway::with(shards)
        .server("drain_timeout = \"300ms\"")
        .provider("held", &held.base_url(), "")
        .start();
    let mut stuck = held_request(&gw, &held);

    gw.terminate();

    // Never released: the gateway exits anyway, within its drain timeout.
    let status = gw.wait_exit();
    assert_eq!(
        status.code(),
        Some(0),
        "{status:?}, stderr:\n{}",
        gw.stderr()
    );
    // Its client is told the gateway stopped it (not a provider's answer).
    let r = stuck.read_response();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.error_code(), "shutting_down");
}

/// A drain that runs out of time stops what still runs, and records it: a
/// request waiting on a silent provider, a stream whose provider went quiet
/// (one in OpenAI's format, one translated to Anthropic's) and a request
/// whose body is still arriving each leave a row (`shutting_down`, the
/// streams charged an estimate), each stream ends with its format's error
/// event saying the gateway stopped it, and the process exits within its
/// drain timeout (here 1.2 s: the relay looks at its client more often while
/// the shard drains).
fn a_drain_that_runs_out_records_what_it_stopped(shards: usize) {
    let (held, _streaming, mut gw) = held_and_up(
        shards,
        "1200ms",
        "[prices.\"up/gpt-x\"]\ninput = 1.0\noutput = 2.0\n",
    );
    let mut stuck = held_request(&gw, &held);
    let long_stream = |path: &str| {
        let mut long = gw.client();
        long.send(&common::wire::request_bytes(
            "POST",
            path,
            &[
                ("Content-Type", "application/json"),
                // Its first event, then a minute's silence (a model thinking):
                // the relay waits on the provider when the drain stops it.
                ("x-mock-chunks", "3"),
                ("x-mock-chunk-interval-ms", "60000"),
            ],
            br#"{"model":"up/gpt-x","stream":true,"max_tokens":50,"messages":[{"role":"user","content":"go on"}]}"#,
        ));
        long
    };
    let mut long = long_stream("/v1/chat/completions");
    let mut messages = long_stream("/v1/messages");
    // A request whose body is still arriving.
    let mut half = gw.client();
    half.send(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\":",
    );
    // The streams have begun (their heads are there).
    for c in [&mut long, &mut messages] {
        let mut head = [0u8; 12];
        std::io::Read::read_exact(&mut c.stream, &mut head).expect("the stream began");
    }
    let asked = std::time::Instant::now();
    gw.terminate();
    let status = gw.wait_exit();
    assert_eq!(status.code(), Some(0), "{}", gw.stderr());
    assert!(
        asked.elapsed() < std::time::Duration::from_millis(2500),
        "exit took {:?}",
        asked.elapsed()
    );
    let rows = rows_after(&gw);
    let stopped: Vec<_> = rows
        .iter()
        .filter(|r| r["error_code"].as_str() == Some("shutting_down"))
        .collect();
    assert_eq!(stopped.len(), 4, "{rows:?}");
    for r in &stopped {
        assert_eq!(r["error_source"].as_str(), Some("gateway"), "{r}");
    }
    // The two that had not answered were told so (a 503 they may retry
    // elsewhere); the stream, cut mid-answer, is the gateway's stop.
    for c in [&mut stuck, &mut half] {
        let r = c.read_response();
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(r.error_code(), "shutting_down");
        assert_eq!(r.header("aigw-error-source"), Some("gateway"));
    }
    assert_eq!(
        stopped
            .iter()
            .map(|r| (
                r["status"].as_u64().unwrap(),
                r["outcome"].as_str().unwrap()
            ))
            .collect::<std::collections::BTreeSet<_>>(),
        [(200, "stopped_by_gateway"), (503, "gateway_error")]
            .into_iter()
            .collect(),
        "{rows:?}"
    );
    let streams: Vec<_> = stopped
        .iter()
        .filter(|r| r["stream"].as_bool() == Some(true))
        .collect();
    assert_eq!(streams.len(), 2, "{rows:?}");
    for stream in streams {
        assert!(stream["cost"].cast_f64().unwrap() > 0.0, "{stream}");
        assert_eq!(stream["cost_estimated"].as_bool(), Some(true), "{stream}");
    }
    // Each stream's client is told, in its format, that the gateway stopped
    // it (not that its provider broke off, nor a clean end).
    let rest = |c: &mut common::wire::Client| {
        let mut got = Vec::new();
        let _ = std::io::Read::read_to_end(&mut c.stream, &mut got);
        String::from_utf8_lossy(&got).into_owned()
    };
    let openai = rest(&mut long);
    assert!(
        openai.contains(r#"data: {"error":{"message":"the gateway is shutting down"#)
            && openai.contains(r#""code":"shutting_down""#),
        "{openai}"
    );
    assert!(
        !openai.contains("[DONE]") && !openai.contains("broke off"),
        "{openai}"
    );
    let anthropic = rest(&mut messages);
    assert!(
        anthropic.contains("event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"the gateway is shutting down"),
        "{anthropic}"
    );
    assert!(!anthropic.contains("message_stop"), "{anthropic}");
}

/// A stream that coalesced (one upstream call, a leader and a follower of
/// it) stopped by the end of a drain: both clients get the stopped event,
/// and both requests leave a `shutting_down` row.
fn a_drain_that_runs_out_tells_a_streams_followers(shards: usize) {
    let (_held, up, mut gw) = held_and_up(
        shards,
        // As long as the first test's: the relays' look at their clients
        // every second comes within its first part.
        "1200ms",
        "[cache]\nenabled = true\nsize = \"32MiB\"\n",
    );
    let stream = || {
        let mut c = gw.client();
        c.send(&common::wire::request_bytes(
            "POST",
            "/v1/chat/completions",
            &[
                ("Content-Type", "application/json"),
                ("x-mock-chunks", "3"),
                ("x-mock-chunk-interval-ms", "60000"),
            ],
            br#"{"model":"up/gpt-x","stream":true,"messages":[{"role":"user","content":"wait for it"}]}"#,
        ));
        let mut head = [0u8; 12];
        std::io::Read::read_exact(&mut c.stream, &mut head).expect("the stream began");
        c
    };
    // The second begins once the first has: it follows it.
    let mut leader = stream();
    let mut follower = stream();
    assert_eq!(up.requests_seen(), 1, "the two were not coalesced");
    gw.terminate();
    assert_eq!(gw.wait_exit().code(), Some(0), "{}", gw.stderr());
    for (who, c) in [("leader", &mut leader), ("follower", &mut follower)] {
        let mut got = Vec::new();
        let _ = std::io::Read::read_to_end(&mut c.stream, &mut got);
        let got = String::from_utf8_lossy(&got);
        assert!(
            got.contains(r#""code":"shutting_down""#) && !got.contains("[DONE]"),
            "{who}: {got}\nrows: {:?}\nstderr: {}",
            rows_after(&gw),
            gw.stderr()
        );
    }
    let stopped = rows_after(&gw)
        .iter()
        .filter(|r| r["error_code"].as_str() == Some("shutting_down"))
        .count();
    assert_eq!(stopped, 2);
}

/// A second signal exits at once, but not before the rows of requests
/// already answered are committed: usage, limits and budgets rebuild from
/// them (with the log's batch still open, they were lost).
fn a_second_signal_keeps_what_was_answered(shards: usize) {
    let (held, _up, mut gw) = held_and_up(shards, "30s", "[logs]\nflush_interval = \"900ms\"\n");
    let mut c = gw.client();
    let mut answered = std::collections::BTreeSet::new();
    for _ in 0..5 {
        let r = c.post(
            "/v1/chat/completions",
            &[],
            r#"{"model":"up/gpt-x","messages":[{"role":"user","content":"hi"}]}"#,
        );
        assert_eq!(r.status, 200);
        answered.insert(r.header("aigw-request-id").unwrap().to_string());
    }
    // One in flight keeps the drain open.
    let _stuck = held_request(&gw, &held);
    gw.terminate();
    // The drain has begun once the idle connection is closed: the next
    // signal is the second.
    assert!(c.closed_by_peer(), "the idle connection stayed open");
    gw.terminate();
    let status = gw.wait_exit();
    assert_eq!(status.code(), Some(1), "{}", gw.stderr());
    let logged: std::collections::BTreeSet<String> = rows_after(&gw)
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert!(answered.is_subset(&logged), "{answered:?} vs {logged:?}");
}

at_1_and_2_shards!(
    a_second_signal_keeps_what_was_answered,
    a_drain_that_runs_out_records_what_it_stopped,
    a_drain_that_runs_out_tells_a_streams_followers,
    serve_refuses_a_listen_address_in_use,
    serve_refuses_an_admin_socket_in_use,
    stats_command_prints_the_admin_json,
    the_data_dir_is_private_to_the_gateway_user,
    sigterm_drains_in_flight_requests_and_closes_idle_connections,
    drain_gives_up_after_drain_timeout,
);
