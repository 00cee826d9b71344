//! A byte-level HTTP/1.1 client for tests: it writes exactly the bytes it is
//! given and reports exactly what came back, including framing facts a normal
//! client hides (did a chunked body end with its last chunk, did the server
//! close, when did each SSE event arrive).
//!
//! Responses are read one at a time from a buffer that keeps leftover bytes, so
//! pipelined responses come out in order. Every read is bounded by [`WAIT`].

use super::{WAIT, json};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How long [`Client::closed_by_peer`] waits for a close that should be immediate.
pub const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// One response as it arrived.
#[derive(Debug, Clone)]
pub struct Response {
    /// Version digit after `HTTP/1.` (0 or 1).
    pub minor_version: u8,
    pub status: u16,
    /// The reason phrase of the status line.
    pub reason: String,
    pub headers: Vec<(String, String)>,
    /// The body after de-chunking.
    pub body: Vec<u8>,
    /// The body ended as its framing says (last chunk, full length, or close
    /// for a close-delimited body); false when the connection broke off first.
    pub complete: bool,
    /// When each SSE event (`...\n\n`) of the body had fully arrived.
    pub event_times: Vec<Instant>,
    /// The trailer fields after a chunked body's last chunk.
    pub trailers: Vec<(String, String)>,
}

impl Response {
    /// First header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The gateway's time in `Server-Timing` (`gateway;dur=<ms>`), in ms.
    pub fn gateway_ms(&self) -> f64 {
        let timing = self.header("server-timing").unwrap_or_default();
        timing
            .strip_prefix("gateway;dur=")
            .and_then(|t| t.split(',').next())
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("no gateway time in Server-Timing `{timing}`"))
    }

    /// First trailer field called `name` (case-insensitive).
    pub fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> simd_json::OwnedValue {
        json(&self.body)
    }

    /// The `data:` payloads of an SSE body, in order.
    pub fn sse_data(&self) -> Vec<String> {
        self.text()
            .split("\n\n")
            .filter_map(|event| {
                event
                    .lines()
                    .find_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.trim().to_string())
            })
            .collect()
    }

    /// The assistant text of a chat completion stream (`choices[0].delta.content`).
    pub fn stream_content(&self) -> String {
        use simd_json::prelude::*;
        self.sse_data()
            .iter()
            .filter(|d| *d != "[DONE]")
            .filter_map(|d| {
                let v = json(d.as_bytes());
                let choice = v.get("choices")?.get_idx(0)?.clone();
                choice
                    .get("delta")?
                    .get("content")?
                    .as_str()
                    .map(str::to_string)
            })
            .collect()
    }

    /// The error code of an OpenAI-shaped error body.
    pub fn error_code(&self) -> String {
        use simd_json::prelude::*;
        let v = self.json();
        let err = v
            .get("error")
            .unwrap_or_else(|| panic!("not an error body: {}", self.text()));
        err.get("code")
            .and_then(|c| c.as_str())
            .map(str::to_string)
            .unwrap_or_default()
    }
}

/// A client connection with its unread bytes.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// Set once the peer closed (a read returned 0 or a reset).
    eof: bool,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect_timeout(&addr, WAIT)
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_nodelay(true).unwrap();
        stream.set_write_timeout(Some(WAIT)).unwrap();
        Client {
            stream,
            buf: Vec::new(),
            eof: false,
        }
    }

    /// Writes raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to the gateway");
    }

    /// Sends a request with `Host`, the given headers and a `Content-Length`
    /// body (for POST), then reads its response.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        self.send(&request_bytes(method, path, headers, body));
        self.read_response()
    }

    /// POSTs a JSON body.
    pub fn post(&mut self, path: &str, headers: &[(&str, &str)], body: &str) -> Response {
        let mut h = vec![("content-type", "application/json")];
        h.extend_from_slice(headers);
        self.request("POST", path, &h, body.as_bytes())
    }

    pub fn get(&mut self, path: &str) -> Response {
        self.request("GET", path, &[], b"")
    }

    /// Writes raw bytes and reads one response; a write to a closed connection
    /// or a close before the response is an `Err`.
    pub fn try_read_response_after(&mut self, bytes: &[u8]) -> Result<Response, String> {
        self.stream
            .write_all(bytes)
            .map_err(|e| format!("write failed: {e}"))?;
        self.try_read_response()
    }

    /// Reads bytes into the buffer; false at EOF (or reset).
    fn fill(&mut self) -> bool {
        if self.eof {
            return false;
        }
        self.stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut chunk = [0u8; 16 << 10];
        match self.stream.read(&mut chunk) {
            Ok(0) => {
                self.eof = true;
                false
            }
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!(
                    "no bytes from the gateway within {WAIT:?} (have {:?})",
                    String::from_utf8_lossy(&self.buf)
                )
            }
            Err(_) => {
                self.eof = true;
                false
            }
        }
    }

    /// Reads the next response (an interim 1xx comes back on its own).
    pub fn read_response(&mut self) -> Response {
        self.try_read_response().unwrap_or_else(|e| panic!("{e}"))
    }

    /// As [`Client::read_response`], but a connection that closes before a
    /// complete head is an `Err`.
    pub fn try_read_response(&mut self) -> Result<Response, String> {
        let (mut resp, head_len) = loop {
            if !self.buf.is_empty() {
                let mut slots = [httparse::EMPTY_HEADER; 64];
                let mut r = httparse::Response::new(&mut slots);
                match r.parse(&self.buf) {
                    Ok(httparse::Status::Complete(n)) => {
                        let resp = Response {
                            minor_version: r.version.unwrap_or(1),
                            status: r.code.unwrap_or(0),
                            reason: r.reason.unwrap_or_default().to_string(),
                            headers: r
                                .headers
                                .iter()
                                .map(|h| {
                                    (
                                        h.name.to_string(),
                                        String::from_utf8_lossy(h.value).into_owned(),
                                    )
                                })
                                .collect(),
                            body: Vec::new(),
                            complete: false,
                            event_times: Vec::new(),
                            trailers: Vec::new(),
                        };
                        break (resp, n);
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(e) => {
                        return Err(format!(
                            "malformed response head ({e}): {:?}",
                            String::from_utf8_lossy(&self.buf)
                        ));
                    }
                }
            }
            if !self.fill() {
                return Err(format!(
                    "connection closed before a complete response head (got {:?})",
                    String::from_utf8_lossy(&self.buf)
                ));
            }
        };
        self.buf.drain(..head_len);
        let chunked = resp
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        let length = resp
            .header("content-length")
            .map(|v| v.trim().parse::<usize>().expect("numeric content-length"));
        if (100..200).contains(&resp.status) || resp.status == 204 || resp.status == 304 {
            resp.complete = true;
        } else if chunked {
            self.read_chunked(&mut resp);
        } else if let Some(n) = length {
            self.read_exact_body(&mut resp, n);
        } else {
            self.read_until_close(&mut resp);
        }
        Ok(resp)
    }

    fn read_exact_body(&mut self, resp: &mut Response, n: usize) {
        loop {
            let from = resp.body.len();
            let take = self.buf.len().min(n - from);
            resp.body.extend(self.buf.drain(..take));
            note_events(resp, from);
            if resp.body.len() == n {
                resp.complete = true;
                return;
            }
            if !self.fill() {
                return;
            }
        }
    }

    fn read_until_close(&mut self, resp: &mut Response) {
        loop {
            let from = resp.body.len();
            resp.body.append(&mut self.buf);
            note_events(resp, from);
            if !self.fill() {
                resp.complete = true;
                return;
            }
        }
    }

    /// De-chunks; stops after the last chunk and its trailer section.
    fn read_chunked(&mut self, resp: &mut Response) {
        loop {
            let from = resp.body.len();
            // Decode every whole chunk in the buffer.
            while let Some(eol) = find(&self.buf, b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..eol]).into_owned();
                let size_hex = line.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size_hex, 16)
                    .unwrap_or_else(|_| panic!("bad chunk size line {line:?} from the gateway"));
                if size == 0 {
                    // The trailer section: `name: value` lines up to an empty one.
                    let Some(end) = find(&self.buf[eol..], b"\r\n\r\n") else {
                        break;
                    };
                    let section = String::from_utf8(self.buf[eol + 2..eol + end + 2].to_vec())
                        .expect("trailer fields are text");
                    for line in section.split_terminator("\r\n") {
                        let (name, value) = line
                            .split_once(':')
                            .unwrap_or_else(|| panic!("bad trailer line {line:?}"));
                        assert!(
                            !name.is_empty() && !name.contains(char::is_whitespace),
                            "bad trailer name in {line:?}"
                        );
                        resp.trailers
                            .push((name.to_string(), value.trim().to_string()));
                    }
                    self.buf.drain(..eol + end + 4);
                    note_events(resp, from);
                    resp.complete = true;
                    return;
                }
                if self.buf.len() < eol + 2 + size + 2 {
                    break;
                }
                assert_eq!(
                    &self.buf[eol + 2 + size..eol + 4 + size],
                    b"\r\n",
                    "chunk data must end with CRLF"
                );
                resp.body
                    .extend_from_slice(&self.buf[eol + 2..eol + 2 + size]);
                self.buf.drain(..eol + 4 + size);
            }
            note_events(resp, from);
            if !self.fill() {
                return;
            }
        }
    }

    /// True when the server closes the connection (EOF or reset) within
    /// [`CLOSE_WAIT`] with no further bytes; false if it sends bytes or stays open.
    pub fn closed_by_peer(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        if self.eof {
            return true;
        }
        self.stream.set_read_timeout(Some(CLOSE_WAIT)).unwrap();
        let mut byte = [0u8; 1];
        match self.stream.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => {
                self.buf.push(byte[0]);
                false
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
            Err(_) => true,
        }
    }

    /// Bytes received but not yet read as a response.
    pub fn pending(&self) -> &[u8] {
        &self.buf
    }
}

/// Records the arrival time of SSE events completed by the latest read.
/// `from` is the body length before the latest read.
fn note_events(resp: &mut Response, from: usize) {
    let now = Instant::now();
    // An event end may straddle two reads: look one byte back.
    let new = resp.body[from.saturating_sub(1)..]
        .windows(2)
        .filter(|w| w == b"\n\n")
        .count();
    resp.event_times.extend(std::iter::repeat_n(now, new));
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `METHOD PATH HTTP/1.1` with `Host`, `headers`, and `Content-Length` when
/// there is a body or the method is POST.
pub fn request_bytes(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: aigw.test\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Posts a streamed `body` to `path` with `headers` (the mock's pacing
/// headers, say), reads until the first SSE event arrives, then closes the
/// connection: a client that leaves mid-stream.
pub fn leave_after_first_event(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &str) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    s.write_all(&request_bytes("POST", path, headers, body.as_bytes()))
        .expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(5).any(|w| w == b"data:") {
        let n = s.read(&mut buf).expect("read");
        assert!(n > 0, "closed before the first event");
        got.extend_from_slice(&buf[..n]);
    }
}
