//! Gateway errors: whose fault, which status, whether a retry may help, and the
//! one place an error becomes bytes on the wire. A leaf: imports nothing of the crate.
//!
//! A provider's own error response is not a `GatewayError`: it passes through
//! unchanged (marked `aigw-error-source: provider`). This type covers what the
//! gateway itself answers: bad requests, unreachable or misbehaving providers,
//! timeouts. Building an error never logs; the request record does that.

use std::fmt::Write as _;

/// Whose fault an error is: the record's error source, a `/stats` and
/// `/metrics` label, and (folded to who answered) the `aigw-error-source` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorSource {
    /// The client sent something we cannot serve (a 4xx of the gateway's own).
    Client,
    /// Our own failure.
    Gateway,
    /// The provider failed us (unreachable, timeout, malformed reply) or
    /// answered with an error status of its own.
    Provider,
}

impl ErrorSource {
    /// The metric and log label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorSource::Client => "client",
            ErrorSource::Gateway => "gateway",
            ErrorSource::Provider => "provider",
        }
    }

    /// `aigw-error-source`: who produced the error response. A client's
    /// mistake is answered by the gateway, so it says `gateway`; the header's
    /// job is to tell the gateway's 429 from the provider's.
    pub fn header_value(self) -> &'static str {
        match self {
            ErrorSource::Client | ErrorSource::Gateway => "gateway",
            ErrorSource::Provider => "provider",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayError {
    pub status: u16,
    pub source: ErrorSource,
    /// OpenAI `error.type`.
    pub kind: &'static str,
    /// OpenAI `error.code`, also the metric label.
    pub code: &'static str,
    pub message: String,
    /// The connection must close after this response (framing errors).
    pub close: bool,
    /// More header lines for the answer (each ending in CRLF): `Retry-After`,
    /// rate-limit counts, `www-authenticate`.
    pub headers: String,
}

/// Whose format an error body is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    OpenAi,
    Anthropic,
}

/// Anthropic's error type for a status (its API's list).
fn anthropic_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

impl GatewayError {
    fn new(
        status: u16,
        source: ErrorSource,
        kind: &'static str,
        code: &'static str,
        message: String,
    ) -> Self {
        GatewayError {
            status,
            source,
            kind,
            code,
            message,
            close: false,
            headers: String::new(),
        }
    }

    /// A provider's failure status that a retry or fallback moved past (the
    /// reply itself is gone by the time every target has failed).
    pub fn upstream_status(provider: &str, status: u16) -> Self {
        Self::new(
            if status >= 500 { 502 } else { status },
            ErrorSource::Provider,
            "upstream_error",
            "upstream_error",
            format!("provider `{provider}` answered HTTP {status}"),
        )
    }

    /// Every target of a route is cooling down after failures.
    pub fn all_cooling(route: &str, wait: std::time::Duration) -> Self {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let mut e = Self::new(
            503,
            ErrorSource::Gateway,
            "server_error",
            "targets_cooling_down",
            format!(
                "every target of route `{route}` is cooling down after failures; retry in {secs}s"
            ),
        );
        e.headers = format!("retry-after: {secs}\r\n");
        e
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(
            400,
            ErrorSource::Client,
            "invalid_request_error",
            code,
            message.into(),
        )
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(
            404,
            ErrorSource::Client,
            "invalid_request_error",
            "not_found",
            message.into(),
        )
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(
            405,
            ErrorSource::Client,
            "invalid_request_error",
            "method_not_allowed",
            message.into(),
        )
    }

    /// A framing violation: the connection cannot be trusted any more.
    pub fn framing(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        let mut e = Self::new(
            status,
            ErrorSource::Client,
            "invalid_request_error",
            code,
            message.into(),
        );
        e.close = true;
        e
    }

    pub fn upstream_unreachable(provider: &str, why: impl std::fmt::Display) -> Self {
        Self::new(
            502,
            ErrorSource::Provider,
            "upstream_error",
            "upstream_unreachable",
            format!("provider `{provider}` is unreachable: {why}"),
        )
    }

    pub fn upstream_bad_response(provider: &str, why: impl std::fmt::Display) -> Self {
        Self::new(
            502,
            ErrorSource::Provider,
            "upstream_error",
            "upstream_bad_response",
            format!("provider `{provider}` sent an invalid response: {why}"),
        )
    }

    pub fn upstream_timeout(provider: &str, what: &str) -> Self {
        Self::new(
            504,
            ErrorSource::Provider,
            "upstream_error",
            "upstream_timeout",
            format!("provider `{provider}` timed out ({what})"),
        )
    }

    /// No gateway key, or one that is not (or no longer) valid.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        let mut e = Self::new(
            401,
            ErrorSource::Client,
            "invalid_request_error",
            "invalid_api_key",
            message.into(),
        );
        e.headers
            .push_str("www-authenticate: Bearer realm=\"aigw\"\r\n");
        e
    }

    /// A rate limit or budget refused the request (the caller adds
    /// `Retry-After` and the rate-limit headers).
    pub fn rate_limited(message: impl Into<String>) -> Self {
        Self::new(
            429,
            ErrorSource::Client,
            "rate_limit_error",
            "rate_limit_exceeded",
            message.into(),
        )
    }

    /// A valid key asked for something it may not use.
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(
            403,
            ErrorSource::Client,
            "permission_error",
            code,
            message.into(),
        )
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        let mut e = Self::new(
            503,
            ErrorSource::Gateway,
            "server_error",
            "shutting_down",
            message.into(),
        );
        e.close = true;
        e
    }

    /// Renders the whole response (head and JSON body) into `out`.
    /// `extra_headers` are complete header lines, each ending in CRLF. The
    /// body in `shape`: OpenAI's (`{"error":{"message","type","code",
    /// "param"}}`) or, to a client of Anthropic's format, Anthropic's
    /// (`{"type":"error","error":{"type","message"}}`, its error type chosen
    /// by status, aigw's `code` kept).
    pub fn write_response(
        &self,
        out: &mut Vec<u8>,
        http10: bool,
        keep_alive: bool,
        extra_headers: &str,
        shape: Shape,
    ) {
        let mut body = String::with_capacity(self.message.len() + 96);
        match shape {
            Shape::OpenAi => {
                body.push_str("{\"error\":{\"message\":");
                push_json_string(&mut body, &self.message);
                let _ = write!(
                    body,
                    ",\"type\":\"{}\",\"code\":\"{}\",\"param\":null}}}}",
                    self.kind, self.code
                );
            }
            Shape::Anthropic => {
                let _ = write!(
                    body,
                    "{{\"type\":\"error\",\"error\":{{\"type\":\"{}\",\"message\":",
                    anthropic_type(self.status)
                );
                push_json_string(&mut body, &self.message);
                let _ = write!(body, ",\"code\":\"{}\"}}}}", self.code);
            }
        }
        let mut head = String::with_capacity(256);
        let _ = write!(
            head,
            "HTTP/1.{} {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\naigw-error-source: {}\r\n{}",
            if http10 { 0 } else { 1 },
            self.status,
            reason(self.status),
            body.len(),
            self.source.header_value(),
            extra_headers,
        );
        head.push_str(&self.headers);
        let close = self.close || !keep_alive;
        if close {
            head.push_str("connection: close\r\n");
        } else if http10 {
            head.push_str("connection: keep-alive\r\n");
        }
        head.push_str("\r\n");
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(body.as_bytes());
    }

    /// The answer to a HEAD request: [`GatewayError::write_response`]'s head
    /// (its length included) without the body, which a HEAD response never has.
    pub fn write_head_response(
        &self,
        out: &mut Vec<u8>,
        http10: bool,
        keep_alive: bool,
        extra_headers: &str,
        shape: Shape,
    ) {
        let start = out.len();
        self.write_response(out, http10, keep_alive, extra_headers, shape);
        if let Some(end) = memchr::memmem::find(&out[start..], b"\r\n\r\n") {
            out.truncate(start + end + 4);
        }
    }
}

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

/// Appends `s` as a JSON string literal, on one line: every control
/// character (DEL and C1 too) and Unicode's line and paragraph separators
/// as escapes. The same text is a TOML basic string (`/config` writes its
/// values with it).
pub fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The standard reason phrase of a status (RFC 9110 §15), if it has one.
pub fn standard_reason(status: u16) -> Option<&'static str> {
    Some(match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        423 => "Locked",
        424 => "Failed Dependency",
        425 => "Too Early",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        507 => "Insufficient Storage",
        508 => "Loop Detected",
        511 => "Network Authentication Required",
        _ => return None,
    })
}

/// The reason phrase for a status the gateway itself produces.
pub fn reason(status: u16) -> &'static str {
    standard_reason(status).unwrap_or_else(|| class_reason(status))
}

/// A phrase for a status outside the standard table, by its class, so a
/// status line never goes out without one.
pub fn class_reason(status: u16) -> &'static str {
    match status {
        100..=199 => "Informational",
        200..=299 => "Success",
        300..=399 => "Redirection",
        400..=499 => "Client Error",
        _ => "Server Error",
    }
}

/// Longest provider reason phrase we repeat to the client.
pub const MAX_REASON: usize = 64;

/// The reason phrase to send for a provider's status: the standard one, else
/// the provider's own (529 "Overloaded") when it is short printable text,
/// else the status class.
pub fn provider_reason(status: u16, theirs: &[u8]) -> &[u8] {
    if let Some(r) = standard_reason(status) {
        return r.as_bytes();
    }
    let printable = theirs
        .iter()
        .all(|b| matches!(b, b' ' | b'\t' | 0x21..=0x7e));
    if !theirs.is_empty() && theirs.len() <= MAX_REASON && printable {
        theirs
    } else {
        class_reason(status).as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_renders_openai_shaped_json_with_its_source() {
        let mut out = Vec::new();
        GatewayError::upstream_timeout("openai", "first byte").write_response(
            &mut out,
            false,
            true,
            "",
            Shape::OpenAi,
        );
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 504 Gateway Timeout\r\n"), "{s}");
        assert!(s.contains("aigw-error-source: provider\r\n"));
        assert!(s.ends_with(
            "{\"error\":{\"message\":\"provider `openai` timed out (first byte)\",\"type\":\"upstream_error\",\"code\":\"upstream_timeout\",\"param\":null}}"
        ));
    }

    #[test]
    fn provider_statuses_keep_a_reason_phrase() {
        assert_eq!(provider_reason(422, b"whatever"), b"Unprocessable Content");
        assert_eq!(provider_reason(529, b"Overloaded"), b"Overloaded");
        assert_eq!(provider_reason(529, b""), b"Server Error");
        assert_eq!(provider_reason(529, b"bad\x01reason"), b"Server Error");
        assert_eq!(provider_reason(299, b"\x7f"), b"Success");
        assert_eq!(reason(599), "Server Error");
    }

    #[test]
    fn framing_errors_close_the_connection() {
        let mut out = Vec::new();
        GatewayError::framing(400, "bad_framing", "x").write_response(
            &mut out,
            false,
            true,
            "",
            Shape::OpenAi,
        );
        assert!(
            String::from_utf8(out)
                .unwrap()
                .contains("connection: close\r\n")
        );
    }
}
