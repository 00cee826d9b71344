//! Gateway errors: whose fault, which status, whether a retry may help, and the
//! one place an error becomes bytes on the wire.
//!
//! A provider's own error response is not a `GatewayError`: it passes through
//! unchanged (marked `aigw-error-source: provider`). This type covers what the
//! gateway itself answers: bad requests, unreachable or misbehaving providers,
//! timeouts. Building an error never logs; the request record does that.

use std::fmt::Write as _;

/// Whose fault an error is. Becomes the `aigw-error-source` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The client sent something we cannot serve (4xx). Reported as `gateway`:
    /// the gateway is the one answering.
    Client,
    /// The provider failed us (unreachable, timeout, malformed reply).
    Provider,
    /// Our own failure.
    Gateway,
}

impl Source {
    /// Header value: who produced this error response. Client-caused errors are
    /// answered by the gateway, provider transport failures are the provider's.
    pub fn header_value(self) -> &'static str {
        match self {
            Source::Client | Source::Gateway => "gateway",
            Source::Provider => "provider",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayError {
    pub status: u16,
    pub source: Source,
    /// OpenAI `error.type`.
    pub kind: &'static str,
    /// OpenAI `error.code`, also the metric label.
    pub code: &'static str,
    pub message: String,
    /// The connection must close after this response (framing errors).
    pub close: bool,
}

impl GatewayError {
    fn new(
        status: u16,
        source: Source,
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
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(
            400,
            Source::Client,
            "invalid_request_error",
            code,
            message.into(),
        )
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(
            404,
            Source::Client,
            "invalid_request_error",
            "not_found",
            message.into(),
        )
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(
            405,
            Source::Client,
            "invalid_request_error",
            "method_not_allowed",
            message.into(),
        )
    }

    /// A framing violation: the connection cannot be trusted any more.
    pub fn framing(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        let mut e = Self::new(
            status,
            Source::Client,
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
            Source::Provider,
            "upstream_error",
            "upstream_unreachable",
            format!("provider `{provider}` is unreachable: {why}"),
        )
    }

    pub fn upstream_bad_response(provider: &str, why: impl std::fmt::Display) -> Self {
        Self::new(
            502,
            Source::Provider,
            "upstream_error",
            "upstream_bad_response",
            format!("provider `{provider}` sent an invalid response: {why}"),
        )
    }

    pub fn upstream_timeout(provider: &str, what: &str) -> Self {
        Self::new(
            504,
            Source::Provider,
            "upstream_error",
            "upstream_timeout",
            format!("provider `{provider}` timed out ({what})"),
        )
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        let mut e = Self::new(
            503,
            Source::Gateway,
            "server_error",
            "shutting_down",
            message.into(),
        );
        e.close = true;
        e
    }

    /// Renders the whole response (head and JSON body) into `out`.
    /// `extra_headers` are complete header lines, each ending in CRLF.
    pub fn write_response(
        &self,
        out: &mut Vec<u8>,
        http10: bool,
        keep_alive: bool,
        extra_headers: &str,
    ) {
        let mut body = String::with_capacity(self.message.len() + 96);
        body.push_str("{\"error\":{\"message\":");
        push_json_string(&mut body, &self.message);
        let _ = write!(
            body,
            ",\"type\":\"{}\",\"code\":\"{}\",\"param\":null}}}}",
            self.kind, self.code
        );
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
}

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

/// Appends `s` as a JSON string literal.
pub fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Reason phrases for the statuses the gateway itself produces.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_renders_openai_shaped_json_with_its_source() {
        let mut out = Vec::new();
        GatewayError::upstream_timeout("openai", "first byte")
            .write_response(&mut out, false, true, "");
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 504 Gateway Timeout\r\n"), "{s}");
        assert!(s.contains("aigw-error-source: provider\r\n"));
        assert!(s.ends_with(
            "{\"error\":{\"message\":\"provider `openai` timed out (first byte)\",\"type\":\"upstream_error\",\"code\":\"upstream_timeout\",\"param\":null}}"
        ));
    }

    #[test]
    fn framing_errors_close_the_connection() {
        let mut out = Vec::new();
        GatewayError::framing(400, "bad_framing", "x").write_response(&mut out, false, true, "");
        assert!(
            String::from_utf8(out)
                .unwrap()
                .contains("connection: close\r\n")
        );
    }
}
