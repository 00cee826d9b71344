//! Behaviour knobs: how slow, how long, and how broken one answer is.
//!
//! Owns the [`ErrorKind`] names, the limits on every knob, and the rule that a
//! request's `x-mock-*` header beats the server-wide default. Does not act on a
//! knob (that is `conn.rs`) or shape bytes (that is `reply.rs`). Sits between
//! parsing a request head and answering it.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Longest delay any knob may ask for, in milliseconds. Ten minutes outlasts any
/// test or bench timeout, and a typo such as `6000000` fails loudly instead of
/// leaving a connection parked for hours.
pub const MAX_DELAY_MS: u64 = 10 * 60 * 1000;

/// Most stream events one answer may carry. Enough to model a long generation
/// token by token; a larger value is almost certainly a typo.
pub const MAX_CHUNKS: u32 = 100_000;

/// Largest assistant message, in bytes. Big enough for "huge response" tests,
/// small enough that a typo cannot make one answer eat the machine's memory.
pub const MAX_REPLY_BYTES: usize = 16 * 1024 * 1024;

/// Largest `Retry-After` value, in seconds (one day).
pub const MAX_RETRY_AFTER_SECS: u32 = 24 * 60 * 60;

/// A fault the mock injects instead of a normal answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// `429` with an OpenAI rate-limit body and a `Retry-After` header.
    RateLimited,
    /// `500` with an OpenAI server-error body.
    Internal,
    /// `503` with an OpenAI overloaded body.
    Unavailable,
    /// Close the socket with RST (SO_LINGER 0) without answering.
    Reset,
    /// Send the head and about half the body, then close without finishing.
    Cut,
    /// Read the request and never answer.
    Hang,
    /// Send an invalid HTTP response head, then close.
    Malformed,
    /// A `200` event stream whose first and only event is an error.
    StreamError,
    /// An OpenAI event stream that ends cleanly (its last chunk sent, the
    /// connection kept) after about half its events: no finish reason, no
    /// usage, no `[DONE]`.
    Short,
}

impl ErrorKind {
    /// Every kind, in the order `--help` lists them.
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::RateLimited,
        ErrorKind::Internal,
        ErrorKind::Unavailable,
        ErrorKind::Reset,
        ErrorKind::Cut,
        ErrorKind::Hang,
        ErrorKind::Malformed,
        ErrorKind::StreamError,
        ErrorKind::Short,
    ];

    /// The name used by `--error` and `x-mock-error`.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::RateLimited => "429",
            ErrorKind::Internal => "500",
            ErrorKind::Unavailable => "503",
            ErrorKind::Reset => "reset",
            ErrorKind::Cut => "cut",
            ErrorKind::Hang => "hang",
            ErrorKind::Malformed => "malformed",
            ErrorKind::StreamError => "stream-error",
            ErrorKind::Short => "short",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not an [`ErrorKind`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownErrorKind(pub String);

impl fmt::Display for UnknownErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown error kind {:?} (expected one of 429, 500, 503, reset, cut, hang, malformed, stream-error, short)",
            self.0
        )
    }
}

impl std::error::Error for UnknownErrorKind {}

impl FromStr for ErrorKind {
    type Err = UnknownErrorKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ErrorKind::ALL
            .into_iter()
            .find(|kind| kind.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownErrorKind(s.to_owned()))
    }
}

/// The knobs for one answer, already checked against the limits above.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Knobs {
    /// Wait before the response head.
    pub latency: Duration,
    /// Streams: wait between the head and the first event.
    pub ttft: Duration,
    /// Streams: number of content events (at least 1).
    pub chunks: u32,
    /// Streams: wait between two content events.
    pub chunk_interval: Duration,
    /// Length of the assistant message (or completion text), in bytes.
    pub reply_bytes: usize,
    /// Fault to inject, if any.
    pub error: Option<ErrorKind>,
    /// `Retry-After` seconds sent with a 429.
    pub retry_after_secs: u32,
}

/// A knob header whose value is not acceptable; answered with a 400.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadKnob {
    /// The header's name, as the mock spells it.
    pub header: &'static str,
    /// Why the value was refused.
    pub reason: String,
}

impl fmt::Display for BadKnob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {} header: {}", self.header, self.reason)
    }
}

/// Header names, lower case (httparse keeps the client's case; we compare
/// case-insensitively).
pub const H_LATENCY: &str = "x-mock-latency-ms";
pub const H_TTFT: &str = "x-mock-ttft-ms";
pub const H_CHUNKS: &str = "x-mock-chunks";
pub const H_CHUNK_INTERVAL: &str = "x-mock-chunk-interval-ms";
pub const H_REPLY_BYTES: &str = "x-mock-reply-bytes";
pub const H_ERROR: &str = "x-mock-error";
pub const H_RETRY_AFTER: &str = "x-mock-retry-after";

impl Knobs {
    /// Overlays one request header on these knobs. Headers that are not knobs
    /// are ignored. `x-mock-error: none` turns off a server-wide `--error`.
    pub fn apply_header(&mut self, name: &str, value: &[u8]) -> Result<(), BadKnob> {
        // Every knob header starts with "x-mock-"; most headers do not, so this
        // one comparison is all the hot path pays for them.
        if !name
            .as_bytes()
            .get(..7)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"x-mock-"))
        {
            return Ok(());
        }
        let lower = name.to_ascii_lowercase();
        match lower.as_str() {
            H_LATENCY => self.latency = delay(H_LATENCY, value)?,
            H_TTFT => self.ttft = delay(H_TTFT, value)?,
            H_CHUNK_INTERVAL => self.chunk_interval = delay(H_CHUNK_INTERVAL, value)?,
            H_CHUNKS => {
                self.chunks = bounded(H_CHUNKS, value, 1, u64::from(MAX_CHUNKS))?
                    .try_into()
                    .unwrap_or(MAX_CHUNKS)
            }
            H_REPLY_BYTES => {
                self.reply_bytes = bounded(H_REPLY_BYTES, value, 0, MAX_REPLY_BYTES as u64)?
                    .try_into()
                    .unwrap_or(MAX_REPLY_BYTES)
            }
            H_RETRY_AFTER => {
                self.retry_after_secs =
                    bounded(H_RETRY_AFTER, value, 0, u64::from(MAX_RETRY_AFTER_SECS))?
                        .try_into()
                        .unwrap_or(MAX_RETRY_AFTER_SECS)
            }
            H_ERROR => {
                let text = text(H_ERROR, value)?;
                self.error = if text.trim().eq_ignore_ascii_case("none") {
                    None
                } else {
                    Some(text.parse().map_err(|e: UnknownErrorKind| BadKnob {
                        header: H_ERROR,
                        reason: e.to_string(),
                    })?)
                };
            }
            _ => {}
        }
        Ok(())
    }
}

fn text<'v>(header: &'static str, value: &'v [u8]) -> Result<&'v str, BadKnob> {
    std::str::from_utf8(value).map_err(|_| BadKnob {
        header,
        reason: "not UTF-8".to_owned(),
    })
}

fn bounded(header: &'static str, value: &[u8], min: u64, max: u64) -> Result<u64, BadKnob> {
    let text = text(header, value)?;
    let n: u64 = text.trim().parse().map_err(|_| BadKnob {
        header,
        reason: format!("{text:?} is not a whole number"),
    })?;
    if n < min || n > max {
        return Err(BadKnob {
            header,
            reason: format!("{n} is outside {min}..={max}"),
        });
    }
    Ok(n)
}

fn delay(header: &'static str, value: &[u8]) -> Result<Duration, BadKnob> {
    bounded(header, value, 0, MAX_DELAY_MS).map(Duration::from_millis)
}

/// Decides which requests a server-wide `--error` applies to when
/// `--error-rate` is below 1: request `n` (counting from 1) is faulty exactly
/// when `floor(n * rate)` steps up, so faults are spread evenly and the same
/// sequence repeats on every run.
pub fn rate_selects(n: u64, rate: f64) -> bool {
    if rate >= 1.0 {
        return true;
    }
    if rate <= 0.0 || n == 0 {
        return false;
    }
    // Precision: u64 -> f64 is exact below 2^53 requests, far beyond any run.
    let now = (n as f64 * rate).floor();
    let before = ((n - 1) as f64 * rate).floor();
    now > before
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Knobs {
        Knobs {
            latency: Duration::ZERO,
            ttft: Duration::ZERO,
            chunks: 8,
            chunk_interval: Duration::ZERO,
            reply_bytes: 64,
            error: Some(ErrorKind::Internal),
            retry_after_secs: 1,
        }
    }

    #[test]
    fn headers_override_defaults_case_insensitively() {
        let mut k = defaults();
        k.apply_header("X-Mock-Latency-Ms", b"25").unwrap();
        k.apply_header("x-mock-chunks", b" 3 ").unwrap();
        k.apply_header("x-mock-error", b"None").unwrap();
        k.apply_header("content-type", b"whatever").unwrap();
        assert_eq!(k.latency, Duration::from_millis(25));
        assert_eq!(k.chunks, 3);
        assert_eq!(k.error, None);
    }

    #[test]
    fn out_of_range_or_garbage_knobs_are_refused_with_the_header_name() {
        let mut k = defaults();
        assert_eq!(
            k.apply_header("x-mock-chunks", b"0").unwrap_err().header,
            H_CHUNKS
        );
        assert!(k.apply_header("x-mock-latency-ms", b"-1").is_err());
        assert!(k.apply_header("x-mock-latency-ms", b"99999999999").is_err());
        assert!(k.apply_header("x-mock-error", b"teapot").is_err());
        assert!(k.apply_header("x-mock-reply-bytes", &[0xff]).is_err());
    }

    #[test]
    fn every_error_kind_round_trips_through_its_name() {
        for kind in ErrorKind::ALL {
            assert_eq!(kind.name().parse::<ErrorKind>(), Ok(kind));
        }
    }

    #[test]
    fn error_rate_spreads_faults_evenly() {
        let picked: Vec<u64> = (1..=10).filter(|&n| rate_selects(n, 0.5)).collect();
        assert_eq!(picked, vec![2, 4, 6, 8, 10]);
        assert_eq!((1..=1000).filter(|&n| rate_selects(n, 0.1)).count(), 100);
        assert!((1..=100).all(|n| !rate_selects(n, 0.0)));
        assert!((1..=100).all(|n| rate_selects(n, 1.0)));
    }
}
