//! The HTTP/1.1 client side of an upstream connection: send the request bytes,
//! read the response head within the first-byte deadline.
//!
//! Reports what went wrong as a transport fact ([`HeadError`]); deciding whose
//! fault it is and whether to try again is `server::attempt`'s job.

use super::conn::UpstreamConn;
use crate::http::Parsed;
use crate::http::response::{ResponseHead, ResponseParsed, parse_response};
use futures_lite::AsyncWriteExt;
use std::io;
use std::time::{Duration, Instant};

/// Why no response head was read.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    /// Closed or reset before a single response byte arrived.
    ClosedEarly,
    /// No complete head within the first-byte timeout.
    Timeout,
    /// Bytes arrived but do not make a head we can frame (malformed, too
    /// large, or cut in the middle).
    Bad(String),
}

/// Writes the whole request, bounded by `timeout`.
pub async fn send(up: &mut UpstreamConn, request: &[u8], timeout: Duration) -> io::Result<()> {
    up.stream.set_write_timeout(timeout);
    up.stream.write_all(request).await
}

/// Reads until a final response head is parsed into `rhead`; returns the time
/// from `sent_at` to the first response byte. Interim (1xx) heads are skipped.
pub async fn read_head(
    up: &mut UpstreamConn,
    rhead: &mut ResponseHead,
    was_head: bool,
    max_head: usize,
    first_byte: Duration,
    sent_at: Instant,
) -> Result<Duration, HeadError> {
    let deadline = sent_at + first_byte;
    let mut ttfb = None;
    let mut first_wait = true;
    loop {
        if !up.buf.is_empty() {
            match parse_response(up.buf.filled(), max_head, was_head, rhead) {
                Ok(ResponseParsed::Head(Parsed::Complete(_))) => {
                    return Ok(ttfb.unwrap_or_else(|| sent_at.elapsed()));
                }
                Ok(ResponseParsed::Interim(n)) => {
                    up.buf.consume(n);
                    continue;
                }
                Ok(ResponseParsed::Head(Parsed::Partial)) => {}
                Err(why) => return Err(HeadError::Bad(why.to_string())),
            }
        }
        // The first wait starts right after the request was sent: skip a clock read.
        let left = if first_wait {
            first_byte
        } else {
            deadline.saturating_duration_since(Instant::now())
        };
        first_wait = false;
        if left.is_zero() {
            return Err(HeadError::Timeout);
        }
        up.stream
            .set_read_timeout(left.max(Duration::from_millis(1)));
        match up.stream.read_some(&mut up.buf, max_head).await {
            Ok(0) if ttfb.is_none() => return Err(HeadError::ClosedEarly),
            Ok(0) => {
                return Err(HeadError::Bad(
                    "connection closed in the middle of the response head".into(),
                ));
            }
            Ok(_) => {
                ttfb.get_or_insert_with(|| sent_at.elapsed());
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                ) =>
            {
                return Err(HeadError::Timeout);
            }
            Err(_) if ttfb.is_none() => return Err(HeadError::ClosedEarly),
            Err(e) => return Err(HeadError::Bad(format!("reading the response head: {e}"))),
        }
    }
}
