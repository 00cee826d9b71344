//! Client request heads: stage 1 of the pipeline.
//!
//! Owns the framing verdict for a request (DESIGN.md "HTTP/1.1 rules"): which body
//! follows, whether the connection may persist, and every reject (400/405/413/
//! 417/431, always with close). Does not read bodies or route.

use super::{Header, MAX_HEADER_SLOTS, Parsed, Span, parse_content_length, tokens, trim_ows};
use crate::error::GatewayError;
use std::mem::MaybeUninit;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
        }
    }
}

/// How the request body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

/// Limits that apply while reading a head.
#[derive(Clone, Copy, Debug)]
pub struct HeadLimits {
    pub max_head_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: u64,
}

/// A parsed request head; spans point into the connection's read window.
#[derive(Debug)]
pub struct RequestHead {
    pub method: Method,
    pub target: Span,
    pub http10: bool,
    pub head_len: usize,
    pub body: BodyFraming,
    pub keep_alive: bool,
    pub expect_continue: bool,
    pub headers: Vec<Header>,
}

impl Default for RequestHead {
    fn default() -> Self {
        RequestHead {
            method: Method::Get,
            target: Span::default(),
            http10: false,
            head_len: 0,
            body: BodyFraming::None,
            keep_alive: true,
            expect_continue: false,
            headers: Vec::with_capacity(32),
        }
    }
}

/// A request as the stages read it: the parsed head, the read window its spans
/// point into, and the body. Borrowed from the connection for one request.
#[derive(Clone, Copy)]
pub struct RequestView<'a> {
    pub head: &'a RequestHead,
    pub window: &'a [u8],
    pub body: &'a [u8],
}

impl<'a> RequestView<'a> {
    /// The request target (path and query) as sent.
    pub fn target(&self) -> &'a [u8] {
        self.head.target.get(self.window)
    }

    /// Every header as (name, value), in order.
    pub fn headers(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        let window = self.window;
        self.head
            .headers
            .iter()
            .map(move |h| (h.name.get(window), h.value.get(window)))
    }
}

/// Parses a request head from `window`, or says more bytes are needed.
pub fn parse_request(
    window: &[u8],
    limits: &HeadLimits,
    head: &mut RequestHead,
) -> Result<Parsed, GatewayError> {
    let mut slots: [MaybeUninit<httparse::Header<'_>>; MAX_HEADER_SLOTS] =
        [const { MaybeUninit::uninit() }; MAX_HEADER_SLOTS];
    let slots = &mut slots[..limits.max_headers.min(MAX_HEADER_SLOTS)];
    let mut req = httparse::Request::new(&mut []);
    let status = match req.parse_with_uninit_headers(window, slots) {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => {
            return Err(GatewayError::framing(
                431,
                "too_many_headers",
                format!("request has more than {} header lines", limits.max_headers),
            ));
        }
        Err(e) => {
            return Err(GatewayError::framing(
                400,
                "malformed_request",
                format!("malformed request head: {e}"),
            ));
        }
    };
    let head_len = match status {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => {
            if window.len() >= limits.max_head_bytes {
                let line_done = window[..limits.max_head_bytes].contains(&b'\n');
                return Err(if line_done {
                    GatewayError::framing(
                        431,
                        "head_too_large",
                        format!("request head exceeds {} bytes", limits.max_head_bytes),
                    )
                } else {
                    GatewayError::framing(
                        414,
                        "uri_too_long",
                        format!("request line exceeds {} bytes", limits.max_head_bytes),
                    )
                });
            }
            return Ok(Parsed::Partial);
        }
    };
    if head_len > limits.max_head_bytes {
        return Err(GatewayError::framing(
            431,
            "head_too_large",
            format!("request head exceeds {} bytes", limits.max_head_bytes),
        ));
    }
    let bad = |msg: &str| GatewayError::framing(400, "malformed_request", msg.to_string());

    head.method = match req.method.unwrap_or("") {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "PATCH" => Method::Patch,
        "DELETE" => Method::Delete,
        "OPTIONS" => Method::Options,
        m => {
            let mut e = GatewayError::method_not_allowed(format!("method {m} is not supported"));
            e.close = true;
            return Err(e);
        }
    };
    let target = req.path.unwrap_or("");
    if !target.starts_with('/') {
        return Err(bad("request target must be a path starting with '/'"));
    }
    head.target = Span::of(window, target.as_bytes());
    head.http10 = req.version == Some(0);
    head.head_len = head_len;
    head.expect_continue = false;
    head.headers.clear();

    let mut hosts = 0;
    let mut content_length: Option<u64> = None;
    let mut transfer_encodings = 0;
    let mut close = false;
    let mut keep_alive_token = false;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let value = h.value;
        head.headers.push(Header {
            name: Span::of(window, name),
            value: Span::of(window, value),
        });
        if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
            if trim_ows(value).is_empty()
                || value.iter().any(|b| matches!(b, b',' | b' ' | b'/' | b'@'))
            {
                return Err(bad("invalid Host header"));
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            content_length = Some(parse_content_length(value, content_length).map_err(bad)?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encodings += 1;
            if !trim_ows(value).eq_ignore_ascii_case(b"chunked") {
                return Err(bad(
                    "only a single `Transfer-Encoding: chunked` is accepted",
                ));
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for t in tokens(value) {
                close |= t.eq_ignore_ascii_case(b"close");
                keep_alive_token |= t.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case(b"expect") {
            if !trim_ows(value).eq_ignore_ascii_case(b"100-continue") {
                return Err(GatewayError::framing(
                    417,
                    "expectation_failed",
                    "only `Expect: 100-continue` is supported",
                ));
            }
            head.expect_continue = !head.http10;
        }
    }
    if hosts > 1 || (hosts == 0 && !head.http10) {
        return Err(bad("an HTTP/1.1 request needs exactly one Host header"));
    }
    if transfer_encodings > 1 {
        return Err(bad(
            "only a single `Transfer-Encoding: chunked` is accepted",
        ));
    }
    if transfer_encodings == 1 && content_length.is_some() {
        return Err(bad(
            "Content-Length and Transfer-Encoding together are ambiguous",
        ));
    }
    if transfer_encodings == 1 && head.http10 {
        return Err(bad("Transfer-Encoding is not allowed in HTTP/1.0"));
    }
    head.body = match (transfer_encodings, content_length) {
        (1, _) => BodyFraming::Chunked,
        (_, Some(n)) if n > limits.max_body_bytes => {
            return Err(GatewayError::framing(
                413,
                "body_too_large",
                format!(
                    "request body of {n} bytes exceeds the limit of {} bytes",
                    limits.max_body_bytes
                ),
            ));
        }
        (_, Some(0)) | (_, None) => BodyFraming::None,
        (_, Some(n)) => BodyFraming::Length(n),
    };
    if head.body == BodyFraming::None {
        head.expect_continue = false;
    }
    head.keep_alive = if head.http10 {
        keep_alive_token && !close
    } else {
        !close
    };
    Ok(Parsed::Complete(head_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_head_bytes: 1024,
        max_headers: 8,
        max_body_bytes: 1000,
    };

    fn parse(raw: &[u8]) -> Result<(Parsed, RequestHead), u16> {
        let mut head = RequestHead::default();
        parse_request(raw, &LIMITS, &mut head)
            .map(|p| (p, head))
            .map_err(|e| e.status)
    }

    #[test]
    fn a_simple_post_is_length_framed() {
        let raw =
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
        let (p, h) = parse(raw).unwrap();
        assert_eq!(p, Parsed::Complete(raw.len() - 5));
        assert_eq!(h.body, BodyFraming::Length(5));
        assert_eq!(h.target.get(raw), b"/v1/chat/completions");
        assert!(h.keep_alive);
    }

    #[test]
    fn partial_heads_ask_for_more() {
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: a\r\n").unwrap().0,
            Parsed::Partial
        );
    }

    #[test]
    fn framing_rejects_follow_the_design_table() {
        let cases: &[(&[u8], u16)] = &[
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n", 413),
            (b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", 405),
            (b"GET http://x/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\nContent-Length: 1\r\n\r\n", 417),
            (b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 1\r\nC: 1\r\nD: 1\r\nE: 1\r\nF: 1\r\nG: 1\r\nH: 1\r\n\r\n", 431),
        ];
        for (raw, status) in cases {
            assert_eq!(
                parse(raw).err(),
                Some(*status),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn equal_content_length_lists_collapse() {
        let (_, h) = parse(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\n",
        )
        .unwrap();
        assert_eq!(h.body, BodyFraming::Length(3));
    }

    #[test]
    fn http10_persists_only_with_keep_alive() {
        assert!(!parse(b"GET / HTTP/1.0\r\n\r\n").unwrap().1.keep_alive);
        assert!(
            parse(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .unwrap()
                .1
                .keep_alive
        );
        assert!(
            !parse(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                .unwrap()
                .1
                .keep_alive
        );
    }

    #[test]
    fn oversized_heads_get_431_or_414() {
        let mut raw = b"GET / HTTP/1.1\r\nHost: a\r\nX: ".to_vec();
        raw.resize(2000, b'a');
        assert_eq!(parse(&raw).err(), Some(431));
        let mut raw = b"GET /".to_vec();
        raw.resize(2000, b'a');
        assert_eq!(parse(&raw).err(), Some(414));
    }
}
