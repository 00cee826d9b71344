//! aigw-load against an in-process aigw-mock: the report is complete, the
//! open loop is honest about a server stall, and too many errors fail the run.

use aigw_loadtest::load::{self, LoadConfig, Mode, Report, parse_target};
use aigw_loadtest::mock::{MockConfig, MockServer, Stall};
use std::num::NonZeroUsize;
use std::process::Command;
use std::time::Duration;

/// Closed-loop p99 must stay below this while the server stalls for 1 s: a
/// quarter of the stall, so the stall is plainly hidden, with room for a
/// loaded CI machine's scheduling noise.
const CLOSED_LOOP_P99_BOUND_US: u64 = 250_000;

fn mock(cfg: MockConfig) -> MockServer {
    MockServer::start(MockConfig {
        capture: false,
        ..cfg
    })
    .expect("mock starts")
}

fn config(server: &MockServer, connections: usize) -> LoadConfig {
    let url = format!("{}/chat/completions", server.base_url());
    let mut cfg = LoadConfig::new(vec![parse_target(&url, "mock/gpt-4o-mini", false).unwrap()]);
    cfg.connections = NonZeroUsize::new(connections).unwrap();
    cfg.warmup = Duration::from_millis(200);
    cfg.duration = Duration::from_secs(1);
    cfg.progress = false;
    cfg
}

fn run(cfg: &LoadConfig) -> Report {
    load::run(cfg).expect("run completes")
}

#[test]
fn closed_loop_reports_rate_statuses_and_percentiles() {
    let server = mock(MockConfig::default());
    let report = run(&config(&server, 4));
    let json = report.to_json();
    let target = &json["targets"][0];
    assert!(target["rps"].as_f64().unwrap() > 0.0, "{json}");
    assert_eq!(target["errors"], 0, "{json}");
    assert_eq!(target["status"]["200"], target["requests"], "{json}");
    for field in ["p50_us", "p90_us", "p99_us", "p999_us", "max_us"] {
        assert!(target[field].as_u64().unwrap() > 0, "{field} in {json}");
    }
    assert!(!report.exceeds_error_threshold());
}

/// `--spin` reads and writes the sockets directly: every answer still
/// arrives whole, streams and bodies split across reads included.
#[test]
fn spinning_reads_lose_nothing() {
    let server = mock(MockConfig {
        reply_bytes: 100_000,
        ..MockConfig::default()
    });
    let mut cfg = config(&server, 8);
    cfg.spin = 16;
    let json = run(&cfg).to_json();
    let target = &json["targets"][0];
    assert_eq!(target["errors"], 0, "{json}");
    assert_eq!(target["status"]["200"], target["requests"], "{json}");
    let mut cfg = config(&server, 4);
    cfg.spin = 16;
    cfg.stream = true;
    let json = run(&cfg).to_json();
    let target = &json["targets"][0];
    assert_eq!(target["errors"], 0, "{json}");
    assert!(
        target["events"].as_u64().unwrap() >= target["requests"].as_u64().unwrap() * 8,
        "{json}"
    );
}

#[test]
fn streams_report_time_to_first_event_and_gaps() {
    let server = mock(MockConfig {
        chunks: 4,
        chunk_interval: Duration::from_millis(2),
        ..MockConfig::default()
    });
    let mut cfg = config(&server, 4);
    cfg.stream = true;
    let json = run(&cfg).to_json();
    let target = &json["targets"][0];
    assert_eq!(target["errors"], 0, "{json}");
    let requests = target["requests"].as_u64().unwrap();
    assert!(target["events"].as_u64().unwrap() >= requests * 4, "{json}");
    assert!(target["ttft_p50_us"].as_u64().unwrap() > 0, "{json}");
    assert!(target["gap_p50_us"].as_u64().unwrap() >= 1_500, "{json}");
}

/// The mock freezes for 1 s a second into a ~3 s run. In open loop every
/// request due during the freeze waits for it, so p99.9 shows it; in closed
/// loop the 4 connections just stop sending, and the stall is 4 samples among
/// thousands.
#[test]
fn open_loop_shows_a_stall_that_closed_loop_hides() {
    let stall = Some(Stall {
        after: Duration::from_secs(1),
        duration: Duration::from_secs(1),
    });
    let server = mock(MockConfig {
        stall,
        ..MockConfig::default()
    });
    let mut open = config(&server, 16);
    open.mode = Mode::Open { rate: 1000.0 };
    open.duration = Duration::from_secs(3);
    let open = run(&open);
    let open = &open.targets[0];

    let server = mock(MockConfig {
        stall,
        ..MockConfig::default()
    });
    let mut closed = config(&server, 4);
    closed.duration = Duration::from_secs(3);
    let closed = run(&closed);
    let closed = &closed.targets[0];

    eprintln!(
        "stall of 1 s: open loop p99 {} µs p99.9 {} µs ({} req); closed loop p99 {} µs p99.9 {} µs ({} req)",
        open.latency.p99,
        open.latency.p999,
        open.stats.responses,
        closed.latency.p99,
        closed.latency.p999,
        closed.stats.responses
    );
    assert_eq!(open.errors(), 0);
    assert!(
        open.latency.p999 >= 900_000,
        "open loop hid the stall: {:?}",
        open.latency
    );
    assert!(
        closed.latency.max >= 900_000,
        "the closed-loop run saw no stall: {:?}",
        closed.latency
    );
    assert!(
        closed.latency.p99 < CLOSED_LOOP_P99_BOUND_US,
        "closed loop p99 {:?}",
        closed.latency
    );
}

fn aigw_load(args: &[&str]) -> (i32, serde_json::Value) {
    let dir = std::env::temp_dir().join(format!("aigw-load-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json_path = dir.join(format!("report-{}.json", args.join("_").len()));
    let cpu = load::config::allowed_cpus()
        .and_then(|cpus| cpus.first().copied())
        .unwrap_or(0)
        .to_string();
    let status = Command::new(env!("CARGO_BIN_EXE_aigw-load"))
        .args(args)
        .args(["--cpus", &cpu])
        .args(["--quiet", "--json", json_path.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("aigw-load runs");
    let json = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    // Leave nothing behind (the directory stays while another test's report is in it).
    let _ = std::fs::remove_file(&json_path);
    let _ = std::fs::remove_dir(&dir);
    (status.code().unwrap_or(-1), json)
}

#[test]
fn server_errors_above_the_threshold_exit_non_zero() {
    let server = mock(MockConfig::default());
    let url = format!("{}/chat/completions", server.base_url());
    let base = [
        "--url",
        &url,
        "--duration",
        "500ms",
        "--warmup",
        "0s",
        "-c",
        "2",
    ];

    let (code, json) = aigw_load(&[&base[..], &["-H", "x-mock-error: 500"]].concat());
    assert_eq!(code, 1, "{json}");
    assert!(
        json["targets"][0]["status"]["500"].as_u64().unwrap() > 0,
        "{json}"
    );
    assert_eq!(json["error_threshold_exceeded"], true);

    let (code, json) = aigw_load(&base);
    assert_eq!(code, 0, "{json}");
}

#[test]
fn refused_connections_count_as_errors() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    let (code, json) = aigw_load(&[
        "--url",
        &url,
        "--duration",
        "300ms",
        "--warmup",
        "0s",
        "-c",
        "2",
    ]);
    assert_eq!(code, 1, "{json}");
    assert!(
        json["targets"][0]["error_kinds"]["connect"]
            .as_u64()
            .unwrap()
            > 0,
        "{json}"
    );
}

#[test]
fn an_open_loop_the_server_cannot_keep_up_with_counts_unsent_requests() {
    // 2 connections at 50 ms per answer carry 40 req/s; 200 req/s are offered.
    let server = mock(MockConfig {
        latency: Duration::from_millis(50),
        ..MockConfig::default()
    });
    let mut cfg = config(&server, 2);
    cfg.mode = Mode::Open { rate: 200.0 };
    // Every request counts: with a warm-up, the backlog could keep all sent
    // requests' due times inside it.
    cfg.warmup = Duration::ZERO;
    let report = run(&cfg);
    let target = &report.targets[0];
    assert!(target.stats.unsent > 100, "{:?}", target.stats.unsent);
    assert!(target.rps() < 60.0, "{}", target.rps());
    // Requests that queued behind slow answers carry their wait.
    assert!(target.latency.max >= 500_000, "{:?}", target.latency);
    assert!(report.exceeds_error_threshold());
}
