//! The `aigw-mock` binary as scripts use it: one banner line with the port,
//! answers over HTTP, exit 0 on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

const MOCK: &str = env!("CARGO_BIN_EXE_aigw-mock");

#[test]
fn binary_prints_its_address_answers_and_exits_zero_on_sigterm() {
    let mut child = Command::new(MOCK)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "2",
            "--reply-bytes",
            "5",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn aigw-mock");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut banner = String::new();
    stdout.read_line(&mut banner).unwrap();
    let url = banner
        .trim_end()
        .strip_prefix("aigw-mock listening on http://")
        .unwrap_or_else(|| panic!("unexpected banner {banner:?}"));
    let addr: SocketAddr = url.parse().expect("IP:PORT");
    assert_ne!(addr.port(), 0);

    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let body = r#"{"model":"m"}"#;
    write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.contains(r#""content":"The q""#), "{answer}");

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn binary_rejects_unknown_flags_with_exit_code_2() {
    let out = Command::new(MOCK).arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bogus"));
}

#[test]
fn binary_help_lists_every_knob() {
    let out = Command::new(MOCK).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--shards",
        "--cpus",
        "--latency-ms",
        "--ttft-ms",
        "--chunks",
        "--chunk-interval-ms",
        "--reply-bytes",
        "--error",
        "--error-rate",
        "--retry-after",
        "--stall-at",
        "--stall-ms",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
}
