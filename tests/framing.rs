//! HTTP/1.1 request framing at the wire (DESIGN.md "HTTP/1.1 rules"): a table of
//! raw bytes in, status and close out, and what the provider received.
//!
//! Every case runs on a fresh connection against the real gateway (1 and 2
//! shards) with the mock behind `/up/...`. A rejected request must reach the
//! provider not at all: bytes smuggled behind an ambiguous head never do. An
//! accepted one reaches it exactly once, with the decoded body. A connection that
//! should stay open must still be in sync: a follow-up `GET /healthz` on it
//! gets its 200.

mod common;

use aigw_loadtest::mock::MockServer;
use common::{Gateway, mock};

/// The JSON body of the accepted cases (13 bytes).
const B: &str = r#"{"model":"m"}"#;

/// Limits of the gateway under test, small so the cases stay small.
const MAX_HEAD: usize = 4096;
const MAX_HEADERS: usize = 16;
const MAX_BODY: usize = 1024;

/// What the provider must have received after a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upstream {
    Nothing,
    /// Exactly one request, with this body.
    One(&'static str),
}

use Upstream::{Nothing, One};

struct Case {
    name: &'static str,
    send: Vec<u8>,
    status: u16,
    closes: bool,
    upstream: Upstream,
}

fn case(
    name: &'static str,
    send: impl AsRef<[u8]>,
    status: u16,
    closes: bool,
    upstream: Upstream,
) -> Case {
    Case {
        name,
        send: send.as_ref().to_vec(),
        status,
        closes,
        upstream,
    }
}

/// `POST /up/chat/completions HTTP/1.1` with `headers` (CRLF-terminated lines) and raw `body`.
fn post(headers: &str, body: &str) -> String {
    format!("POST /up/chat/completions HTTP/1.1\r\n{headers}\r\n{body}")
}

/// A head of exactly `len` bytes that is still incomplete (no blank line).
fn unfinished_head(prefix: &str, len: usize) -> Vec<u8> {
    let mut v = prefix.as_bytes().to_vec();
    v.resize(len, b'a');
    v
}

// One case per line, so the table reads as a table.
#[rustfmt::skip]
fn cases() -> Vec<Case> {
    let cl = format!("Content-Length: {}\r\n", B.len());
    let smuggled = format!("POST /up/chat/completions HTTP/1.1\r\nHost: a\r\n{cl}\r\n{B}");
    let many_headers: String = (0..=MAX_HEADERS).map(|i| format!("X-H{i}: {i}\r\n")).collect();
    let half = "a".repeat(MAX_BODY / 2);
    vec![
        // Accepted framings.
        case("content-length body", post(&format!("Host: a\r\n{cl}"), B), 200, false, One(B)),
        case("chunked body in two chunks", post("Host: a\r\nTransfer-Encoding: chunked\r\n", "6\r\n{\"mode\r\n7\r\nl\":\"m\"}\r\n0\r\n\r\n"), 200, false, One(B)),
        case("chunk extension, upper-case hex and a trailer", post("Host: a\r\nTransfer-Encoding: chunked\r\n", &format!("D;name=value\r\n{B}\r\n0\r\nX-Trailer: t\r\n\r\n")), 200, false, One(B)),
        case("repeated equal content-lengths", post(&format!("Host: a\r\nContent-Length: 13, 13\r\n{cl}"), B), 200, false, One(B)),
        case("connection: close is honoured", post(&format!("Host: a\r\nConnection: close\r\n{cl}"), B), 200, true, One(B)),
        case("http/1.0 without host, then close", format!("POST /up/chat/completions HTTP/1.0\r\n{cl}\r\n{B}"), 200, true, One(B)),
        // Ambiguous lengths: the smuggled request behind them must never be forwarded.
        case("content-length and chunked", post(&format!("Host: a\r\n{cl}Transfer-Encoding: chunked\r\n"), &format!("0\r\n\r\n{smuggled}")), 400, true, Nothing),
        case("chunked and content-length", post(&format!("Host: a\r\nTransfer-Encoding: chunked\r\n{cl}"), &format!("0\r\n\r\n{smuggled}")), 400, true, Nothing),
        case("two different content-lengths", post("Host: a\r\nContent-Length: 13\r\nContent-Length: 0\r\n", &format!("{B}{smuggled}")), 400, true, Nothing),
        case("content-length list that differs", post("Host: a\r\nContent-Length: 13, 0\r\n", B), 400, true, Nothing),
        case("content-length with a sign", post("Host: a\r\nContent-Length: +13\r\n", B), 400, true, Nothing),
        case("negative content-length", post("Host: a\r\nContent-Length: -1\r\n", B), 400, true, Nothing),
        case("empty content-length", post("Host: a\r\nContent-Length: \r\n", B), 400, true, Nothing),
        case("content-length that overflows", post("Host: a\r\nContent-Length: 18446744073709551629\r\n", B), 400, true, Nothing),
        case("transfer-encoding other than chunked", post("Host: a\r\nTransfer-Encoding: gzip, chunked\r\n", "0\r\n\r\n"), 400, true, Nothing),
        case("transfer-encoding identity", post(&format!("Host: a\r\nTransfer-Encoding: identity\r\n{cl}"), B), 400, true, Nothing),
        case("transfer-encoding repeated", post("Host: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", &format!("0\r\n\r\n{smuggled}")), 400, true, Nothing),
        case("transfer-encoding in http/1.0", format!("POST /up/chat/completions HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\nd\r\n{B}\r\n0\r\n\r\n"), 400, true, Nothing),
        case("space before the header colon", post("Host: a\r\nTransfer-Encoding : chunked\r\n", "0\r\n\r\n"), 400, true, Nothing),
        case("obsolete line folding", post(&format!("Host: a\r\nX-Folded: a\r\n b\r\n{cl}"), B), 400, true, Nothing),
        // Host.
        case("missing host", post(&cl, B), 400, true, Nothing),
        case("two hosts", post(&format!("Host: a\r\nHost: b\r\n{cl}"), B), 400, true, Nothing),
        case("empty host", post(&format!("Host: \r\n{cl}"), B), 400, true, Nothing),
        case("host with userinfo", post(&format!("Host: user@evil\r\n{cl}"), B), 400, true, Nothing),
        // Request line.
        case("absolute-form target", format!("POST http://evil/up/chat/completions HTTP/1.1\r\nHost: a\r\n{cl}\r\n{B}"), 400, true, Nothing),
        case("asterisk-form target", "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", 400, true, Nothing),
        case("unknown http version", format!("POST /up/chat/completions HTTP/2.0\r\nHost: a\r\n{cl}\r\n{B}"), 400, true, Nothing),
        case("nul byte in a header value", post(&format!("Host: a\r\nX-Nul: a\0b\r\n{cl}"), B), 400, true, Nothing),
        case("connect", "CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: 127.0.0.1:443\r\n\r\n", 405, true, Nothing),
        case("trace", "TRACE /up/chat/completions HTTP/1.1\r\nHost: a\r\n\r\n", 405, true, Nothing),
        case("unknown method", format!("BREW /up/chat/completions HTTP/1.1\r\nHost: a\r\n{cl}\r\n{B}"), 405, true, Nothing),
        case("lower-case method", format!("post /up/chat/completions HTTP/1.1\r\nHost: a\r\n{cl}\r\n{B}"), 405, true, Nothing),
        // Malformed chunked bodies.
        case("empty chunk size", post("Host: a\r\nTransfer-Encoding: chunked\r\n", "\r\n0\r\n\r\n"), 400, true, Nothing),
        case("non-hex chunk size", post("Host: a\r\nTransfer-Encoding: chunked\r\n", &format!("zz\r\n{B}\r\n0\r\n\r\n")), 400, true, Nothing),
        case("0x chunk size", post("Host: a\r\nTransfer-Encoding: chunked\r\n", &format!("0xd\r\n{B}\r\n0\r\n\r\n")), 400, true, Nothing),
        case("chunk size with too many digits", post("Host: a\r\nTransfer-Encoding: chunked\r\n", "0000000000000000d\r\n"), 400, true, Nothing),
        case("bare LF after the chunk size", post("Host: a\r\nTransfer-Encoding: chunked\r\n", &format!("d\n{B}\r\n0\r\n\r\n")), 400, true, Nothing),
        case("no CRLF after chunk data", post("Host: a\r\nTransfer-Encoding: chunked\r\n", &format!("d\r\n{B}XX0\r\n\r\n")), 400, true, Nothing),
        case("bare LF ending the last chunk", post("Host: a\r\nTransfer-Encoding: chunked\r\n", &format!("d\r\n{B}\r\n0\r\n\n")), 400, true, Nothing),
        // Expectations and limits.
        case("expectation other than 100-continue", post(&format!("Host: a\r\nExpect: 200-ok\r\n{cl}"), B), 417, true, Nothing),
        case("more header lines than limits.max_headers", post(&format!("Host: a\r\n{many_headers}{cl}"), B), 431, true, Nothing),
        case("head over limits.max_head_bytes", unfinished_head("POST /up/chat/completions HTTP/1.1\r\nHost: a\r\nX-Big: ", MAX_HEAD), 431, true, Nothing),
        case("request line over limits.max_head_bytes", unfinished_head("GET /up/", MAX_HEAD), 414, true, Nothing),
        case("content-length over limits.max_body_bytes, body never sent", post(&format!("Host: a\r\nContent-Length: {}\r\n", MAX_BODY + 1), ""), 413, true, Nothing),
        case("chunk size over limits.max_body_bytes", post("Host: a\r\nTransfer-Encoding: chunked\r\n", &format!("{:x}\r\n", MAX_BODY + 1)), 413, true, Nothing),
        case("chunks adding up over limits.max_body_bytes", post("Host: a\r\nTransfer-Encoding: chunked\r\n", &format!("{:x}\r\n{half}\r\n{:x}\r\n", half.len(), half.len() + 1)), 413, true, Nothing),
        // Timeouts once bytes arrived (timeouts.head and timeouts.body are 300ms here).
        case("head that stops arriving", "POST /up/chat/completions HTTP/1.1\r\nHost: a\r\n", 408, true, Nothing),
        case("body that stops arriving", post(&format!("Host: a\r\n{cl}"), "{\"mo"), 408, true, Nothing),
        case("chunked body that stops arriving", post("Host: a\r\nTransfer-Encoding: chunked\r\n", "d\r\n{\"mo"), 408, true, Nothing),
    ]
}

fn gateway(mock: &MockServer, shards: usize) -> Gateway {
    Gateway::with(shards)
        .provider("up", &mock.base_url(), "")
        .toml(&format!(
            "[limits]\nmax_head_bytes = {MAX_HEAD}\nmax_headers = {MAX_HEADERS}\nmax_body_bytes = {MAX_BODY}\n\
             [timeouts]\nhead = \"300ms\"\nbody = \"300ms\"\n"
        ))
        .start()
}

fn framing_cases_give_their_status_close_and_upstream(shards: usize) {
    let mock = mock();
    let gw = gateway(&mock, shards);
    let cases = cases();
    assert!(cases.len() >= 25);
    for c in cases {
        mock.reset();
        let mut client = gw.client();
        client.send(&c.send);
        let r = client
            .try_read_response()
            .unwrap_or_else(|e| panic!("{}: {e}", c.name));

        assert_eq!(r.status, c.status, "{}: {}", c.name, r.text());
        if c.status >= 400 {
            assert_eq!(r.header("aigw-error-source"), Some("gateway"), "{}", c.name);
            assert!(!r.error_code().is_empty(), "{}", c.name);
        }
        if c.closes {
            assert!(client.closed_by_peer(), "{}: connection left open", c.name);
            if r.minor_version == 1 {
                assert_eq!(r.header("connection"), Some("close"), "{}", c.name);
            }
        } else {
            let health =
                client.try_read_response_after(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n");
            assert_eq!(
                health.map(|h| h.status),
                Ok(200),
                "{}: connection not reusable",
                c.name
            );
        }
        match c.upstream {
            Nothing => assert_eq!(
                mock.requests_seen(),
                0,
                "{}: reached the provider: {:?}",
                c.name,
                mock.captured()
            ),
            One(body) => {
                let seen = mock.captured();
                assert_eq!(seen.len(), 1, "{}", c.name);
                assert_eq!(seen[0].path, "/v1/chat/completions", "{}", c.name);
                assert_eq!(String::from_utf8_lossy(&seen[0].body), body, "{}", c.name);
                assert_eq!(seen[0].header("transfer-encoding"), None, "{}", c.name);
            }
        }
    }
}

/// Pipelined requests sharing one read: the second is framed by the first's
/// length, not by where a packet ended.
fn a_body_ending_mid_packet_leaves_the_next_request_intact(shards: usize) {
    let mock = mock();
    let gw = gateway(&mock, shards);
    let mut client = gw.client();
    let second = r#"{"model":"n"}"#;
    let mut wire = post(&format!("Host: a\r\nContent-Length: {}\r\n", B.len()), B).into_bytes();
    wire.extend(
        post(
            "Host: a\r\nTransfer-Encoding: chunked\r\n",
            &format!("{:x}\r\n{second}\r\n0\r\n\r\n", second.len()),
        )
        .into_bytes(),
    );
    wire.extend(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    client.send(&wire);

    assert_eq!(client.read_response().status, 200);
    assert_eq!(client.read_response().status, 200);
    assert_eq!(client.read_response().status, 200);
    assert!(client.closed_by_peer());
    let bodies: Vec<String> = mock
        .captured()
        .iter()
        .map(|c| String::from_utf8_lossy(&c.body).into_owned())
        .collect();
    assert_eq!(bodies, [B, second]);
}

at_1_and_2_shards!(
    framing_cases_give_their_status_close_and_upstream,
    a_body_ending_mid_packet_leaves_the_next_request_intact
);
