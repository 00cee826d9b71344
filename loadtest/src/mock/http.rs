//! HTTP/1.1 framing for the mock: request heads and bodies in, response heads
//! and chunks out.
//!
//! Owns the wire limits and the rules for finding where one request ends
//! (Content-Length, chunked, neither) so that pipelined requests are split
//! correctly. Does not know what a request means (that is `conn.rs`) or what
//! an answer says (that is `reply.rs`). First stage of every request; last
//! stage of every answer.

use std::borrow::Cow;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// The number in the next answer's `x-request-id`.
static RESPONSE_ID: AtomicU64 = AtomicU64::new(1);

pub const KIB: usize = 1024;
pub const MIB: usize = 1024 * KIB;

/// Largest request head we buffer before answering 431. Real clients and
/// gateways send a few KiB at most.
pub const MAX_HEAD: usize = 64 * KIB;

/// Most header lines in one request before answering 431. Each slot costs
/// 32 bytes of stack per parse.
pub const MAX_HEADERS: usize = 64;

/// Largest request body before answering 413. Far above any real chat request
/// (a 128k-token prompt is about 0.5 MiB) and still bounded per connection.
pub const MAX_BODY: usize = 64 * MIB;

/// Longest chunk-size or trailer line in a chunked body. Sizes are a few hex
/// digits; anything longer is garbage or an attack.
const MAX_CHUNK_LINE: usize = KIB;

/// How the body of a request is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
}

/// A parsed request head. Borrows from the read buffer.
#[derive(Debug)]
pub struct Head<'h, 'b> {
    pub method: &'b str,
    /// The request target as sent, query string included.
    pub target: &'b str,
    pub headers: &'h [httparse::Header<'b>],
    /// False when the client asked to close (or spoke HTTP/1.0 without
    /// `Connection: keep-alive`).
    pub keep_alive: bool,
}

impl Head<'_, '_> {
    /// The path without the query string.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or(self.target)
    }
}

/// Outcome of looking at the bytes read so far.
#[derive(Debug)]
pub enum Parsed<'h, 'b> {
    /// Not a whole request yet. `expects_continue` is true once a complete
    /// head asked for `100 Continue` and the body is still missing.
    Partial { expects_continue: bool },
    /// One whole request; `consumed` bytes of the buffer belong to it.
    Complete {
        head: Head<'h, 'b>,
        body: Cow<'b, [u8]>,
        consumed: usize,
    },
}

/// A request the mock refuses at the framing level. The connection is closed
/// after the answer because the request boundary is no longer known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    BadRequest(&'static str),
    HeadTooLarge,
    BodyTooLarge,
}

impl Reject {
    pub fn status(self) -> u16 {
        match self {
            Reject::BadRequest(_) => 400,
            Reject::HeadTooLarge => 431,
            Reject::BodyTooLarge => 413,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Reject::BadRequest(why) => why,
            Reject::HeadTooLarge => "request head too large",
            Reject::BodyTooLarge => "request body too large",
        }
    }
}

/// Finds the first whole request in `buf`.
pub fn parse<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [httparse::Header<'b>],
) -> Result<Parsed<'h, 'b>, Reject> {
    let mut req = httparse::Request::new(headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(Reject::HeadTooLarge);
        }
        Ok(httparse::Status::Partial) => {
            return Ok(Parsed::Partial {
                expects_continue: false,
            });
        }
        Err(httparse::Error::TooManyHeaders) => return Err(Reject::HeadTooLarge),
        Err(_) => return Err(Reject::BadRequest("malformed request head")),
    };
    if head_len > MAX_HEAD {
        return Err(Reject::HeadTooLarge);
    }
    let method = req.method.unwrap_or("");
    let target = req.path.unwrap_or("");
    let version = req.version.unwrap_or(1);
    let headers: &'h [httparse::Header<'b>] = req.headers;

    let mut framing = Framing::Length(0);
    let mut seen_length: Option<usize> = None;
    let mut chunked = false;
    let mut keep_alive = version >= 1;
    let mut expects_continue = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = parse_length(h.value)?;
            if seen_length.is_some_and(|m| m != n) {
                return Err(Reject::BadRequest("conflicting content-length headers"));
            }
            seen_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Only the last coding matters for framing, and it must be chunked.
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or(b"");
            if !last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(Reject::BadRequest("unsupported transfer-encoding"));
            }
            chunked = true;
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
            }
        } else if h.name.eq_ignore_ascii_case("expect") {
            expects_continue = h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        }
    }
    if chunked && seen_length.is_some() {
        // RFC 9112 §6.1 lets a server reject this; a proxy that sends both is
        // exactly the bug the mock exists to catch.
        return Err(Reject::BadRequest(
            "both transfer-encoding and content-length",
        ));
    }
    if chunked {
        framing = Framing::Chunked;
    } else if let Some(n) = seen_length {
        if n > MAX_BODY {
            return Err(Reject::BodyTooLarge);
        }
        framing = Framing::Length(n);
    }

    let rest = &buf[head_len..];
    let (body, body_wire_len) = match framing {
        Framing::Length(n) => match rest.get(..n) {
            Some(body) => (Cow::Borrowed(body), n),
            None => return Ok(Parsed::Partial { expects_continue }),
        },
        Framing::Chunked => match scan_chunked(rest)? {
            Some(scan) => (Cow::Owned(decode_chunked(rest, scan.decoded)), scan.end),
            None => return Ok(Parsed::Partial { expects_continue }),
        },
    };
    Ok(Parsed::Complete {
        head: Head {
            method,
            target,
            headers,
            keep_alive,
        },
        body,
        consumed: head_len + body_wire_len,
    })
}

fn parse_length(value: &[u8]) -> Result<usize, Reject> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(Reject::BadRequest("invalid content-length"));
    }
    // More than 19 digits cannot be a length we accept; saturate rather than
    // overflow and let the MAX_BODY check answer 413.
    Ok(digits
        .iter()
        .try_fold(0usize, |n, &d| {
            n.checked_mul(10)?.checked_add(usize::from(d - b'0'))
        })
        .unwrap_or(usize::MAX))
}

/// Where a complete chunked body ends, and how long it is once decoded.
struct ChunkedScan {
    end: usize,
    decoded: usize,
}

/// Walks chunk-size lines without copying. `Ok(None)` means more bytes are
/// needed; the walk restarts from the top on the next read, which costs one
/// pass over the size lines, not over the data.
fn scan_chunked(buf: &[u8]) -> Result<Option<ChunkedScan>, Reject> {
    let mut pos = 0;
    let mut decoded = 0usize;
    loop {
        let Some((line, next)) = line_at(buf, pos)? else {
            return Ok(None);
        };
        let size = parse_chunk_size(line)?;
        pos = next;
        if size == 0 {
            // Trailer section: header lines until an empty line.
            loop {
                let Some((line, next)) = line_at(buf, pos)? else {
                    return Ok(None);
                };
                pos = next;
                if line.is_empty() {
                    return Ok(Some(ChunkedScan { end: pos, decoded }));
                }
            }
        }
        decoded = decoded.saturating_add(size);
        if decoded > MAX_BODY {
            return Err(Reject::BodyTooLarge);
        }
        let data_end = pos.saturating_add(size);
        match buf.get(data_end..data_end.saturating_add(2)) {
            None => return Ok(None),
            Some(b"\r\n") => pos = data_end + 2,
            Some(_) => return Err(Reject::BadRequest("chunk data not followed by CRLF")),
        }
    }
}

/// Copies the data of a chunked body that `scan_chunked` found complete.
fn decode_chunked(buf: &[u8], decoded: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(decoded);
    let mut pos = 0;
    while let Ok(Some((line, next))) = line_at(buf, pos) {
        let Ok(size) = parse_chunk_size(line) else {
            break;
        };
        if size == 0 {
            break;
        }
        match buf.get(next..next.saturating_add(size)) {
            Some(data) => out.extend_from_slice(data),
            None => break,
        }
        pos = next + size + 2;
    }
    out
}

/// The CRLF-terminated line starting at `pos` (without the CRLF) and the
/// position after it.
fn line_at(buf: &[u8], pos: usize) -> Result<Option<(&[u8], usize)>, Reject> {
    let rest = buf.get(pos..).unwrap_or(&[]);
    let window = &rest[..rest.len().min(MAX_CHUNK_LINE + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok(Some((&rest[..i], pos + i + 2))),
        None if window.len() > MAX_CHUNK_LINE => Err(Reject::BadRequest("chunk line too long")),
        None => Ok(None),
    }
}

fn parse_chunk_size(line: &[u8]) -> Result<usize, Reject> {
    // Chunk extensions (";name=value") are allowed and ignored.
    let hex = line
        .split(|&b| b == b';')
        .next()
        .unwrap_or(b"")
        .trim_ascii();
    if hex.is_empty() || hex.len() > 16 {
        return Err(Reject::BadRequest("invalid chunk size"));
    }
    hex.iter()
        .try_fold(0usize, |n, &d| {
            let digit = char::from(d).to_digit(16)?;
            n.checked_mul(16)?.checked_add(digit as usize)
        })
        .ok_or(Reject::BadRequest("invalid chunk size"))
}

/// The reason phrase the mock sends with `status`.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// How a response body is delimited on the wire.
#[derive(Clone, Copy, Debug)]
pub enum BodyLen {
    Known(usize),
    Chunked,
}

/// Appends a response head. `extra` lines are written as given and must each
/// end in CRLF.
pub fn push_head(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    len: BodyLen,
    keep_alive: bool,
    extra: &[u8],
) {
    // Writes to a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\n",
        reason(status)
    );
    match len {
        BodyLen::Known(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        BodyLen::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    // Each answer's own id, as OpenAI (`x-request-id`) sends one: a gateway
    // that replays an answer must not replay the id of the one it copies.
    let id = RESPONSE_ID.fetch_add(1, Ordering::Relaxed);
    let _ = write!(out, "x-request-id: req_mock_{id}\r\n");
    out.extend_from_slice(extra);
    out.extend_from_slice(b"\r\n");
}

/// Appends `data` as one HTTP chunk.
pub fn push_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        // A zero-size chunk would end the body early.
        return;
    }
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The chunk that ends a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// The `malformed` fault's answer. Three independent reasons any HTTP client
/// must refuse it: status and reason swapped, a header line without a colon,
/// and a length that is not a number.
pub const MALFORMED_HEAD: &[u8] =
    b"HTTP/1.1 OK 200 mock-malformed\r\nthis is not a header\r\ncontent-length: banana\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_owned(buf: &[u8]) -> Result<Option<(Vec<u8>, usize, bool)>, Reject> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        Ok(match parse(buf, &mut headers)? {
            Parsed::Partial { .. } => None,
            Parsed::Complete {
                head,
                body,
                consumed,
            } => Some((body.into_owned(), consumed, head.keep_alive)),
        })
    }

    #[test]
    fn wire_cases_frame_as_expected() {
        type Want = Result<Option<(&'static [u8], usize, bool)>, Reject>;
        let cases: &[(&[u8], Want)] = &[
            (b"GET / HTTP/1.1\r\n\r\n", Ok(Some((b"", 18, true)))),
            (b"GET / HTTP/1.1\r\n", Ok(None)),
            (b"GET / HTTP/1.0\r\n\r\n", Ok(Some((b"", 18, false)))),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabcGET",
                Ok(Some((b"abc", 60, false))),
            ),
            (b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nab", Ok(None)),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
                Ok(Some((b"abcde", 71, true))),
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nTrailer: 1\r\n\r\n",
                Ok(Some((b"abc", 72, true))),
            ),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab", Ok(None)),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                Err(Reject::BadRequest("invalid chunk size")),
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n",
                Err(Reject::BadRequest("chunk data not followed by CRLF")),
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                Err(Reject::BadRequest(
                    "both transfer-encoding and content-length",
                )),
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                Err(Reject::BadRequest("conflicting content-length headers")),
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                Err(Reject::BadRequest("invalid content-length")),
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                Err(Reject::BodyTooLarge),
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
                Err(Reject::BadRequest("unsupported transfer-encoding")),
            ),
            (
                b"\x00\x01garbage\r\n\r\n",
                Err(Reject::BadRequest("malformed request head")),
            ),
        ];
        for (input, want) in cases {
            let got = parse_owned(input);
            let want = (*want).map(|o| o.map(|(body, n, keep)| (body.to_vec(), n, keep)));
            assert_eq!(got, want, "input {:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn oversized_heads_are_refused_instead_of_buffered_forever() {
        let mut big = b"GET / HTTP/1.1\r\nx: ".to_vec();
        big.resize(MAX_HEAD + 10, b'a');
        assert_eq!(parse_owned(&big), Err(Reject::HeadTooLarge));
    }

    #[test]
    fn expect_continue_is_reported_while_the_body_is_missing() {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let buf = b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n";
        assert!(matches!(
            parse(buf, &mut headers),
            Ok(Parsed::Partial {
                expects_continue: true
            })
        ));
    }
}
