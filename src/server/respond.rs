//! Response heads (and whole small responses) for the client, as bytes.
//!
//! Owns what every answer carries (`aigw-request-id`, `aigw-provider`,
//! `aigw-model`, `Server-Timing`, the connection verdict) and how a body is
//! framed towards the client. Writes into a buffer; only the pipeline (and the
//! relay it runs) puts those bytes on the socket. Below `relay` and `pipeline`.

use crate::error::{GatewayError, Shape, provider_reason};
use crate::http::request::Method;
use crate::http::response::{ResponseBody, ResponseHead};
use crate::http::{is_hop_by_hop, push_decimal, tokens};
use crate::limit::Admission;
use crate::record::CacheStatus;
use crate::reqid::RequestId;
use std::time::Duration;

/// Longest model name echoed in `aigw-model`; a longer one (which no provider
/// names) is left out rather than put into the client's header parser.
pub const MAX_MODEL_ECHO: usize = 256;

/// How a body is framed towards the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientFraming {
    None,
    Length,
    Chunked,
    /// HTTP/1.0 client and a body of unknown length: close ends it.
    Close,
}

impl ClientFraming {
    /// The framing for a provider body. `rewrites`: a tap may change the
    /// bytes, so the provider's length no longer holds.
    pub fn for_body(body: ResponseBody, rewrites: bool, http10: bool) -> ClientFraming {
        match body {
            ResponseBody::None => ClientFraming::None,
            ResponseBody::Length(_) if !rewrites => ClientFraming::Length,
            _ if !http10 => ClientFraming::Chunked,
            _ => ClientFraming::Close,
        }
    }
}

/// `aigw-step: N` (`cf-aig-step` on Cloudflare-layout URLs) for a routed answer.
fn push_step(out: &mut Vec<u8>, step: Option<(usize, bool)>) {
    if let Some((step, cloudflare)) = step {
        out.extend_from_slice(if cloudflare {
            b"cf-aig-step: "
        } else {
            b"aigw-step: "
        });
        push_decimal(out, step as u64);
        out.extend_from_slice(b"\r\n");
    }
}

/// Writes the header lines every provider answer carries: request id,
/// provider and (when it can be echoed) model.
fn push_ours(out: &mut Vec<u8>, id: RequestId, provider: Option<&str>, model: Option<&str>) {
    push_id(out, id);
    if let Some(p) = provider {
        out.extend_from_slice(b"aigw-provider: ");
        out.extend_from_slice(p.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(m) = model.filter(|m| echoable(m)) {
        out.extend_from_slice(b"aigw-model: ");
        out.extend_from_slice(m.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Writes the `aigw-request-id` header line.
fn push_id(out: &mut Vec<u8>, id: RequestId) {
    out.extend_from_slice(b"aigw-request-id: ");
    out.extend_from_slice(&id.to_text());
    out.extend_from_slice(b"\r\n");
}

/// What the client side of a response head depends on, besides the provider's head.
pub struct ClientHead<'a> {
    pub http10: bool,
    pub keep_alive: bool,
    /// The request's method (a HEAD answer keeps the provider's length).
    pub method: Method,
    pub id: RequestId,
    pub provider: Option<&'a str>,
    pub model: Option<&'a str>,
    /// Gateway time before the request went upstream.
    pub pre_upstream: Duration,
    /// Upstream time to first byte.
    pub ttfb: Duration,
    pub framing: ClientFraming,
    /// The cache status line to send, if the cache looked at this request.
    pub cache: Option<CacheLine>,
    /// What the rate limits admitted: the gateway's `x-ratelimit-*` lines
    /// (none when no rule applied, and the provider's own pass through).
    pub limits: Option<&'a Admission>,
    /// Which target of a route served (`aigw-step`, or `cf-aig-step` on
    /// Cloudflare-layout requests), 0-based.
    pub step: Option<(usize, bool)>,
    /// The chunked body ends with an `aigw-cost` trailer field (the answer's
    /// cost, known only after its last byte): the head announces it.
    pub cost_trailer: bool,
}

/// The cache status header: its name follows the request's URL layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheLine {
    /// `cf-aig-cache-status` on Cloudflare-layout requests.
    pub cloudflare: bool,
    pub status: CacheStatus,
}

impl CacheLine {
    fn write(self, out: &mut Vec<u8>) {
        out.extend_from_slice(if self.cloudflare {
            b"cf-aig-cache-status: "
        } else {
            b"aigw-cache-status: "
        });
        out.extend_from_slice(self.status.header().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Whether a provider header is replayed from the cache: the headers that
/// describe the body (`content-*`), without its framing (the replay frames
/// its own body). Everything else a provider sends is of the one answer:
/// its request id (`x-request-id`, `request-id`), the account that paid
/// (`openai-organization`, `anthropic-organization-id`), its processing time,
/// its rate-limit counts, cookies. Replayed, a hit would claim another
/// request's id and, with `cache.shared`, show one tenant's account to
/// another.
fn stored(name: &[u8]) -> bool {
    name.len() > 8
        && name[..8].eq_ignore_ascii_case(b"content-")
        && !name.eq_ignore_ascii_case(b"content-length")
}

/// `x-ratelimit-*`: the provider's rate-limit counts (replaced by the
/// gateway's when its own rules applied to the request).
fn is_rate_limit(name: &[u8]) -> bool {
    name.len() > 12 && name[..12].eq_ignore_ascii_case(b"x-ratelimit-")
}

/// Writes the provider's header lines a cache entry keeps (see [`stored`]).
pub fn stored_head(out: &mut Vec<u8>, rh: &ResponseHead, window: &[u8]) {
    let listed = crate::http::connection_listed(&rh.headers, window);
    for x in &rh.headers {
        let name = x.name.get(window);
        if !stored(name) || listed(name) {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(x.value.get(window));
        out.extend_from_slice(b"\r\n");
    }
}

/// Whether a provider response is not to be stored, by its headers (one
/// pass over them):
/// - `Cache-Control: no-store`, or `private` when entries are shared between
///   credentials. Not `no-cache`: providers send it on every event stream
///   (OpenAI's `no-cache, must-revalidate`), for proxies that would hold a
///   stream back; honoured, no stream would ever be cached or shared.
/// - A content coding (`Content-Encoding` other than `identity`): aigw asks
///   for none; a provider that compresses anyway is relayed as it answered,
///   and not stored (aigw cannot read it).
pub fn forbids_store(rh: &ResponseHead, window: &[u8], shared: bool) -> bool {
    rh.headers.iter().any(|x| {
        let name = x.name.get(window);
        let value = x.value.get(window);
        if name.eq_ignore_ascii_case(b"cache-control") {
            tokens(value).any(|t| {
                t.eq_ignore_ascii_case(b"no-store")
                    || (shared && t.eq_ignore_ascii_case(b"private"))
            })
        } else if name.eq_ignore_ascii_case(b"content-encoding") {
            tokens(value).any(|t| !t.eq_ignore_ascii_case(b"identity"))
        } else {
            false
        }
    })
}

/// What the head of an answer from the cache depends on.
pub struct CachedHead<'a> {
    pub http10: bool,
    pub keep_alive: bool,
    pub id: RequestId,
    pub provider: Option<&'a str>,
    pub model: Option<&'a str>,
    pub status: u16,
    pub cache: CacheLine,
    /// Seconds since the entry was stored (`Age`; 0 for a coalesced answer).
    pub age: Option<u64>,
    pub gateway: Duration,
    /// The body's length, or `None` for a body still arriving (chunked, or
    /// ended by close for HTTP/1.0).
    pub length: Option<usize>,
    /// The gateway's `x-ratelimit-*` lines.
    pub limits: &'a [u8],
    /// A routed request's `aigw-step`: where in its targets the one whose
    /// answer this is stands (and whether it is Cloudflare's `cf-aig-step`).
    pub step: Option<(usize, bool)>,
}

/// Writes the head of an answer from the cache: the stored header lines
/// (`stored`, as [`stored_head`] wrote them), then ours.
pub fn cached_head(out: &mut Vec<u8>, h: &CachedHead<'_>, stored: &[u8]) {
    status_line(out, h.http10, h.status, provider_reason(h.status, b""));
    out.extend_from_slice(stored);
    push_ours(out, h.id, h.provider, h.model);
    out.extend_from_slice(h.limits);
    push_step(out, h.step);
    h.cache.write(out);
    if let Some(age) = h.age {
        out.extend_from_slice(b"age: ");
        push_decimal(out, age);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"server-timing: gateway;dur=");
    push_millis(out, h.gateway.as_micros() as u64);
    out.extend_from_slice(b"\r\n");
    match h.length {
        // A 204 or 304 has no body and must not say it has.
        Some(_) if matches!(h.status, 204 | 304) => {}
        Some(n) => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, n as u64);
            out.extend_from_slice(b"\r\n");
        }
        None if !h.http10 => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        None => {}
    }
    connection(
        out,
        h.http10,
        h.keep_alive && (h.length.is_some() || !h.http10),
    );
    out.extend_from_slice(b"\r\n");
}

/// Writes the client's head for a provider response `rh` (whose spans point
/// into `window`): the provider's end-to-end headers, then ours.
pub fn provider_head(out: &mut Vec<u8>, h: &ClientHead<'_>, rh: &ResponseHead, window: &[u8]) {
    // Hand-formatted: this runs once per response, and `write!` costs more than the rest.
    status_line(
        out,
        h.http10,
        rh.status,
        provider_reason(rh.status, rh.reason.get(window)),
    );
    let listed = crate::http::connection_listed(&rh.headers, window);
    let limits = h.limits.filter(|a| a.has_headers());
    for x in &rh.headers {
        let name = x.name.get(window);
        let keep_length = h.method == Method::Head && name.eq_ignore_ascii_case(b"content-length");
        if (!keep_length && is_hop_by_hop(name))
            || listed(name)
            || (limits.is_some() && is_rate_limit(name))
        {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(x.value.get(window));
        out.extend_from_slice(b"\r\n");
    }
    push_ours(out, h.id, h.provider, h.model);
    if let Some(a) = limits {
        a.write_headers(out);
    }
    push_step(out, h.step);
    if rh.status >= 400 {
        out.extend_from_slice(b"aigw-error-source: provider\r\n");
    }
    if let Some(c) = h.cache {
        c.write(out);
    }
    // Milliseconds with microsecond precision, formatted as integers (no float formatting).
    out.extend_from_slice(b"server-timing: gateway;dur=");
    push_millis(out, h.pre_upstream.as_micros() as u64);
    out.extend_from_slice(b", upstream;dur=");
    push_millis(out, h.ttfb.as_micros() as u64);
    out.extend_from_slice(b"\r\n");
    match (h.framing, rh.body()) {
        (ClientFraming::Length, ResponseBody::Length(n)) => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        (ClientFraming::Chunked, _) => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            if h.cost_trailer {
                out.extend_from_slice(b"trailer: aigw-cost\r\n");
            }
        }
        // A bodyless answer to a GET/POST still needs an explicit length, or the
        // client would read until close.
        (ClientFraming::None, _)
            if h.method != Method::Head && rh.status != 204 && rh.status != 304 =>
        {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        _ => {}
    }
    connection(out, h.http10, h.keep_alive);
    out.extend_from_slice(b"\r\n");
}

/// Writes a whole gateway error response to the request `to` (only its head
/// to a HEAD request), its body in `shape`.
pub fn error(
    out: &mut Vec<u8>,
    e: &GatewayError,
    to: &crate::http::request::RequestHead,
    keep_alive: bool,
    id: RequestId,
    cache: Option<CacheLine>,
    shape: Shape,
) {
    error_naming(out, e, to, keep_alive, id, None, cache, shape);
}

/// [`error`] for a failure found in a provider's answer (one it sent that
/// could not be read, or cut off): it names the provider and model that
/// answered, as their answers do.
#[allow(clippy::too_many_arguments)]
pub fn provider_error(
    out: &mut Vec<u8>,
    e: &GatewayError,
    to: &crate::http::request::RequestHead,
    keep_alive: bool,
    id: RequestId,
    answered: (Option<&str>, Option<&str>),
    cache: Option<CacheLine>,
    shape: Shape,
) {
    error_naming(out, e, to, keep_alive, id, Some(answered), cache, shape);
}

#[allow(clippy::too_many_arguments)]
fn error_naming(
    out: &mut Vec<u8>,
    e: &GatewayError,
    to: &crate::http::request::RequestHead,
    keep_alive: bool,
    id: RequestId,
    answered: Option<(Option<&str>, Option<&str>)>,
    cache: Option<CacheLine>,
    shape: Shape,
) {
    let (http10, method) = (to.http10, to.method);
    let mut id_line = Vec::with_capacity(96);
    match answered {
        Some((provider, model)) => push_ours(&mut id_line, id, provider, model),
        None => push_id(&mut id_line, id),
    }
    // A request that looked in the cache says so, whatever answered it.
    if let Some(c) = cache {
        c.write(&mut id_line);
    }
    // Request ids are ASCII (hex digits and dashes).
    let id_line = std::str::from_utf8(&id_line).unwrap_or_default();
    if method == Method::Head {
        e.write_head_response(out, http10, keep_alive, id_line, shape);
    } else {
        e.write_response(out, http10, keep_alive, id_line, shape);
    }
}

/// Writes the whole `GET /healthz` answer.
pub fn health(out: &mut Vec<u8>, http10: bool, keep_alive: bool, method: Method, id: RequestId) {
    const BODY: &[u8] = b"{\"status\":\"ok\"}";
    status_line(out, http10, 200, b"OK");
    out.extend_from_slice(b"content-type: application/json\r\ncontent-length: ");
    push_decimal(out, BODY.len() as u64);
    out.extend_from_slice(b"\r\n");
    push_id(out, id);
    connection(out, http10, keep_alive);
    out.extend_from_slice(b"\r\n");
    if method != Method::Head {
        out.extend_from_slice(BODY);
    }
}

fn status_line(out: &mut Vec<u8>, http10: bool, status: u16, reason: &[u8]) {
    out.extend_from_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
    push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason);
    out.extend_from_slice(b"\r\n");
}

fn connection(out: &mut Vec<u8>, http10: bool, keep_alive: bool) {
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
}

/// A model name we may put in a header: short, printable ASCII.
fn echoable(m: &str) -> bool {
    m.len() <= MAX_MODEL_ECHO && m.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// Microseconds as milliseconds with three decimals ("12.345").
fn push_millis(out: &mut Vec<u8>, micros: u64) {
    push_decimal(out, micros / 1000);
    let frac = micros % 1000;
    out.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::response::{ResponseParsed, parse_response};

    fn head_for(raw: &[u8], model: Option<&str>, method: Method) -> String {
        let mut rh = ResponseHead::default();
        let parsed = parse_response(raw, 4096, method == Method::Head, &mut rh).unwrap();
        assert!(matches!(parsed, ResponseParsed::Head(_)));
        let h = ClientHead {
            http10: false,
            keep_alive: true,
            method,
            id: RequestId(0x0190_1234_5678_7abc_8def_0123_4567_89ab),
            provider: Some("up"),
            model,
            pre_upstream: Duration::from_micros(1234),
            ttfb: Duration::from_micros(5),
            framing: ClientFraming::for_body(rh.body(), false, false),
            cache: None,
            limits: None,
            step: None,
            cost_trailer: false,
        };
        let mut out = Vec::new();
        provider_head(&mut out, &h, &rh, raw);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn provider_heads_keep_end_to_end_headers_and_add_ours() {
        let s = head_for(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Req: 1\r\nConnection: keep-alive, x-drop\r\nX-Drop: y\r\nKeep-Alive: timeout=5\r\n\r\n",
            Some("gpt"),
            Method::Post,
        );
        assert_eq!(
            s,
            "HTTP/1.1 200 OK\r\nX-Req: 1\r\naigw-request-id: 01901234-5678-7abc-8def-0123456789ab\r\naigw-provider: up\r\naigw-model: gpt\r\nserver-timing: gateway;dur=1.234, upstream;dur=0.005\r\ncontent-length: 2\r\n\r\n"
        );
    }

    #[test]
    fn stored_heads_keep_end_to_end_headers_only() {
        let stored_for = |raw: &[u8]| {
            let mut rh = ResponseHead::default();
            parse_response(raw, 4096, false, &mut rh).unwrap();
            let mut out = Vec::new();
            stored_head(&mut out, &rh, raw);
            String::from_utf8(out).unwrap()
        };
        // What `Connection` lists is hop-by-hop, whatever its name.
        assert_eq!(
            stored_for(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\nX-Req: 1\r\nConnection: keep-alive, content-x\r\nContent-X: y\r\nSet-Cookie: a=b\r\nx-ratelimit-remaining-requests: 5\r\n\r\n"),
            "Content-Type: application/json\r\n"
        );
        // Without a `Connection` header naming it, Content-X describes the body.
        assert_eq!(
            stored_for(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\ncontent-type: text/event-stream\r\nContent-X: y\r\n\r\n"),
            "content-type: text/event-stream\r\nContent-X: y\r\n"
        );
        // Of one answer only: its id, the account that paid, its timing.
        assert_eq!(
            stored_for(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nx-request-id: req_1\r\nrequest-id: req_2\r\nopenai-organization: org-a\r\nanthropic-organization-id: o\r\nopenai-processing-ms: 9\r\ncontent-language: en\r\n\r\n"),
            "content-language: en\r\n"
        );
    }

    #[test]
    fn unusual_statuses_keep_a_reason_and_errors_name_the_provider() {
        let s = head_for(
            b"HTTP/1.1 529 Overloaded\r\nContent-Length: 0\r\n\r\n",
            None,
            Method::Post,
        );
        assert!(s.starts_with("HTTP/1.1 529 Overloaded\r\n"), "{s}");
        assert!(s.contains("aigw-error-source: provider\r\n"));
        let s = head_for(
            b"HTTP/1.1 422 Whatever\r\nContent-Length: 0\r\n\r\n",
            None,
            Method::Post,
        );
        assert!(
            s.starts_with("HTTP/1.1 422 Unprocessable Content\r\n"),
            "{s}"
        );
        let s = head_for(
            b"HTTP/1.1 299\r\nContent-Length: 0\r\n\r\n",
            None,
            Method::Post,
        );
        assert!(s.starts_with("HTTP/1.1 299 Success\r\n"), "{s}");
    }

    #[test]
    fn long_or_unprintable_model_names_are_not_echoed() {
        let long = "m".repeat(MAX_MODEL_ECHO + 1);
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert!(!head_for(raw, Some(&long), Method::Post).contains("aigw-model"));
        assert!(!head_for(raw, Some("a\r\nx: y"), Method::Post).contains("aigw-model"));
        let ok = "m".repeat(MAX_MODEL_ECHO);
        assert!(head_for(raw, Some(&ok), Method::Post).contains("aigw-model"));
    }

    #[test]
    fn a_head_request_keeps_the_provider_length() {
        let s = head_for(
            b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n",
            None,
            Method::Head,
        );
        assert!(s.contains("Content-Length: 42\r\n"), "{s}");
        assert!(!s.contains("content-length: 0"), "{s}");
    }

    #[test]
    fn health_and_errors_carry_the_request_id() {
        let id = RequestId(3);
        let mut out = Vec::new();
        health(&mut out, true, true, Method::Get, id);
        let s = String::from_utf8(out).unwrap();
        assert!(
            s.starts_with("HTTP/1.0 200 OK\r\n")
                && s.contains("aigw-request-id: 00000000-0000-0000-0000-000000000003\r\n")
        );
        assert!(s.contains("connection: keep-alive\r\n") && s.ends_with("{\"status\":\"ok\"}"));
        let mut out = Vec::new();
        let get = crate::http::request::RequestHead::default();
        error(
            &mut out,
            &GatewayError::not_found("x"),
            &get,
            false,
            id,
            Some(CacheLine {
                cloudflare: false,
                status: CacheStatus::Miss,
            }),
            Shape::OpenAi,
        );
        let s = String::from_utf8(out).unwrap();
        assert!(
            s.contains("aigw-request-id: 00000000-0000-0000-0000-000000000003\r\n")
                && s.contains("aigw-cache-status: MISS\r\n")
                && s.contains("connection: close\r\n")
        );
        // A HEAD request gets the head (with its length) and no body.
        let mut out = Vec::new();
        let head = crate::http::request::RequestHead {
            method: Method::Head,
            ..Default::default()
        };
        error(
            &mut out,
            &GatewayError::not_found("x"),
            &head,
            true,
            id,
            None,
            Shape::Anthropic,
        );
        let s = String::from_utf8(out).unwrap();
        assert!(
            s.ends_with("\r\n\r\n") && s.contains("content-length: "),
            "{s}"
        );
        // To a client of Anthropic's format: its shape, aigw's code kept.
        let mut out = Vec::new();
        error(
            &mut out,
            &GatewayError::not_found("x"),
            &get,
            true,
            id,
            None,
            Shape::Anthropic,
        );
        let s = String::from_utf8(out).unwrap();
        let body = &s[s.find("\r\n\r\n").unwrap() + 4..];
        assert!(
            body.starts_with(r#"{"type":"error","error":{"type":"not_found_error","message":"#),
            "{body}"
        );
        assert!(body.ends_with(r#","code":"not_found"}}"#), "{body}");
    }
}
