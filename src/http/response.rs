//! Provider response heads: the framing verdict for what comes back upstream.
//!
//! Owns: status, which body follows (length, chunked, until close, none), whether
//! the connection may return to the pool, and rejecting what cannot be framed
//! (a 502 for the client; the connection is never reused). Does not relay bodies.

use super::{Header, Parsed, Span, parse_content_length, tokens, trim_ows};
use std::mem::MaybeUninit;

/// Most header lines a provider response may carry.
pub const MAX_RESPONSE_HEADERS: usize = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseBody {
    None,
    Length(u64),
    Chunked,
    /// Delimited by the provider closing the connection.
    UntilClose,
}

#[derive(Debug, Default)]
pub struct ResponseHead {
    pub status: u16,
    /// The provider's reason phrase (empty when it sent none).
    pub reason: Span,
    pub head_len: usize,
    pub headers: Vec<Header>,
    pub body: Option<ResponseBody>,
    /// The connection may carry another request after this body.
    pub reusable: bool,
    pub event_stream: bool,
}

impl ResponseHead {
    pub fn body(&self) -> ResponseBody {
        self.body.unwrap_or(ResponseBody::None)
    }
}

/// Outcome of parsing what the provider sent so far.
#[derive(Debug, PartialEq, Eq)]
pub enum ResponseParsed {
    Head(Parsed),
    /// An interim 1xx response of this many bytes: skip it and parse again.
    Interim(usize),
}

pub fn parse_response(
    window: &[u8],
    max_head: usize,
    request_was_head: bool,
    head: &mut ResponseHead,
) -> Result<ResponseParsed, &'static str> {
    // Uninitialized slots: zeroing 128 headers per response showed up in profiles.
    let mut slots: [MaybeUninit<httparse::Header<'_>>; MAX_RESPONSE_HEADERS] =
        [const { MaybeUninit::uninit() }; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let n = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, window, &mut slots)
    {
        Ok(httparse::Status::Complete(n)) if n <= max_head => n,
        Ok(httparse::Status::Complete(_)) => return Err("response head too large"),
        Ok(httparse::Status::Partial) if window.len() >= max_head => {
            return Err("response head too large");
        }
        Ok(httparse::Status::Partial) => return Ok(ResponseParsed::Head(Parsed::Partial)),
        Err(httparse::Error::TooManyHeaders) => return Err("too many response headers"),
        Err(_) => return Err("malformed response head"),
    };
    let status = resp.code.unwrap_or(0);
    if status == 101 {
        return Err("unexpected protocol switch");
    }
    if (100..200).contains(&status) {
        return Ok(ResponseParsed::Interim(n));
    }
    let http10 = resp.version == Some(0);
    head.status = status;
    head.reason = match resp.reason {
        Some(r) if !r.is_empty() => Span::of(window, r.as_bytes()),
        _ => Span::default(),
    };
    head.head_len = n;
    head.headers.clear();
    head.event_stream = false;
    let mut content_length = None;
    let mut te_chunked_final = None;
    let mut close = http10;
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        head.headers.push(Header {
            name: Span::of(window, name),
            value: Span::of(window, h.value),
        });
        if name.eq_ignore_ascii_case(b"content-length") {
            content_length = Some(parse_content_length(h.value, content_length)?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            let last = tokens(h.value).last().unwrap_or(b"");
            te_chunked_final =
                Some(last.eq_ignore_ascii_case(b"chunked") && te_chunked_final != Some(false));
        } else if name.eq_ignore_ascii_case(b"connection") {
            for t in tokens(h.value) {
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") && http10 {
                    close = false;
                }
            }
        } else if name.eq_ignore_ascii_case(b"content-type") {
            let v = trim_ows(h.value);
            head.event_stream = v.len() >= 17 && v[..17].eq_ignore_ascii_case(b"text/event-stream");
        }
    }
    let bodyless = request_was_head || status == 204 || status == 304;
    let body = if bodyless {
        ResponseBody::None
    } else {
        match (te_chunked_final, content_length) {
            (Some(true), cl) => {
                // TE wins over CL (RFC 9112 §6.3), but such a sender is not trusted again.
                close |= cl.is_some();
                ResponseBody::Chunked
            }
            (Some(false), _) => {
                close = true;
                ResponseBody::UntilClose
            }
            (None, Some(0)) => ResponseBody::None,
            (None, Some(n)) => ResponseBody::Length(n),
            (None, None) => {
                close = true;
                ResponseBody::UntilClose
            }
        }
    };
    head.body = Some(body);
    head.reusable = !close;
    Ok(ResponseParsed::Head(Parsed::Complete(n)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8], was_head: bool) -> Result<(ResponseParsed, ResponseHead), &'static str> {
        let mut h = ResponseHead::default();
        parse_response(raw, 4096, was_head, &mut h).map(|p| (p, h))
    }

    #[test]
    fn response_framing_follows_rfc9112() {
        let (_, h) = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", false).unwrap();
        assert_eq!((h.body(), h.reusable), (ResponseBody::Length(3), true));
        let (_, h) = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n", false).unwrap();
        assert_eq!(
            (h.body(), h.reusable, h.event_stream),
            (ResponseBody::Chunked, true, true)
        );
        let (_, h) = parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!((h.body(), h.reusable), (ResponseBody::Chunked, false));
        let (_, h) = parse(b"HTTP/1.1 200 OK\r\n\r\n", false).unwrap();
        assert_eq!((h.body(), h.reusable), (ResponseBody::UntilClose, false));
        let (_, h) = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true).unwrap();
        assert_eq!(h.body(), ResponseBody::None);
        let (_, h) = parse(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n", false).unwrap();
        assert!(!h.reusable);
    }

    #[test]
    fn bad_responses_are_errors_and_interim_ones_are_skipped() {
        assert!(
            parse(
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
                false
            )
            .is_err()
        );
        assert!(parse(b"garbage\r\n\r\n", false).is_err());
        assert_eq!(
            parse(b"HTTP/1.1 100 Continue\r\n\r\n", false).unwrap().0,
            ResponseParsed::Interim(25)
        );
    }
}
