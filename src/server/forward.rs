//! The request as it goes upstream: re-serialized from the parsed head (never
//! the client's raw bytes), with the gateway's own controls, hop-by-hop
//! headers and (when aigw injects a key) the client's credentials removed.
//! Built once per request, before the first attempt; every attempt sends the
//! same bytes.

use crate::http::is_hop_by_hop;
use crate::http::push_decimal;
use crate::http::request::{Method, RequestView};

/// Headers that carry a provider credential; a client's are dropped when aigw
/// sends its own key, so the provider never sees two.
const CREDENTIAL_HEADERS: &[&str] = &["authorization", "x-api-key", "api-key", "x-goog-api-key"];

/// What goes upstream besides the client's end-to-end headers.
pub struct Upstream<'a> {
    pub method: Method,
    /// Request target (path and query).
    pub path: &'a str,
    /// `Host` value.
    pub authority: &'a str,
    /// Header lines carrying the configured key, when aigw holds one.
    pub auth: Option<&'a str>,
    /// Header lines a translated request carries (an API version).
    pub extra: &'a str,
    pub body: &'a [u8],
}

/// Headers never forwarded upstream beyond the hop-by-hop set.
#[inline]
pub fn skip_upstream(name: &[u8], key_injected: bool) -> bool {
    let ci = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
    let prefix =
        |p: &str| name.len() >= p.len() && name[..p.len()].eq_ignore_ascii_case(p.as_bytes());
    is_hop_by_hop(name)
        || ci("host")
        || ci("expect")
        // Usage must be readable: ask for an uncompressed reply.
        || ci("accept-encoding")
        || prefix("aigw-")
        || prefix("cf-aig-")
        || (key_injected && CREDENTIAL_HEADERS.iter().any(|h| ci(h)))
}

/// Whether `lines` (CRLF-ended header lines) set header `name`.
fn names_line(lines: &str, name: &[u8]) -> bool {
    lines.split("\r\n").any(|l| {
        l.split_once(':')
            .is_some_and(|(n, _)| n.as_bytes().eq_ignore_ascii_case(name))
    })
}

/// Writes the upstream request into `out`.
pub fn build(out: &mut Vec<u8>, req: &RequestView<'_>, up: &Upstream<'_>) {
    let (window, head) = (req.window, req.head);
    out.clear();
    out.extend_from_slice(up.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(up.path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(up.authority.as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(auth) = up.auth {
        out.extend_from_slice(auth.as_bytes());
    }
    out.extend_from_slice(up.extra.as_bytes());
    let listed = crate::http::connection_listed(&head.headers, window);
    for h in &head.headers {
        let name = h.name.get(window);
        if skip_upstream(name, up.auth.is_some())
            || listed(name)
            || (!up.extra.is_empty() && names_line(up.extra, name))
        {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value.get(window));
        out.extend_from_slice(b"\r\n");
    }
    if !up.body.is_empty() || matches!(up.method, Method::Post | Method::Put | Method::Patch) {
        out.extend_from_slice(b"content-length: ");
        push_decimal(out, up.body.len() as u64);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(up.body);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::{HeadLimits, RequestHead, parse_request};

    fn forwarded(raw: &[u8], auth: Option<&str>, body: &[u8]) -> String {
        let mut head = RequestHead::default();
        let limits = HeadLimits {
            max_head_bytes: 8192,
            max_headers: 64,
            max_body_bytes: 1 << 20,
        };
        parse_request(raw, &limits, &mut head).unwrap();
        let view = RequestView {
            head: &head,
            window: raw,
            body,
        };
        let mut out = Vec::new();
        build(
            &mut out,
            &view,
            &Upstream {
                method: head.method,
                path: "/v1/chat/completions",
                authority: "up.example",
                auth,
                extra: "",
                body,
            },
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_upstream_request_is_reserialized_without_our_controls() {
        let s = forwarded(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\nAccept-Encoding: gzip\r\naigw-cache-ttl: 5\r\ncf-aig-metadata: {}\r\nX-Keep: 1\r\nConnection: x-hop\r\nX-Hop: no\r\n\r\n",
            None,
            b"{}",
        );
        assert_eq!(
            s,
            "POST /v1/chat/completions HTTP/1.1\r\nhost: up.example\r\nX-Keep: 1\r\ncontent-length: 2\r\n\r\n{}"
        );
    }

    #[test]
    fn an_injected_key_replaces_every_client_credential() {
        let s = forwarded(
            b"POST /x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer client\r\nX-Api-Key: c2\r\napi-key: c3\r\nContent-Length: 0\r\n\r\n",
            Some("authorization: Bearer sk-gw\r\n"),
            b"",
        );
        assert!(s.contains("authorization: Bearer sk-gw\r\n"));
        assert!(
            !s.contains("client") && !s.contains("c2") && !s.contains("c3"),
            "{s}"
        );
        // Without a configured key the client's own key goes through.
        let s = forwarded(
            b"POST /x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer client\r\nContent-Length: 0\r\n\r\n",
            None,
            b"",
        );
        assert!(s.contains("Authorization: Bearer client\r\n"));
    }
}
