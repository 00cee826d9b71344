//! One client connection: read a head, read its body, run the pipeline, repeat.
//!
//! Owns the client-side timeouts (idle between requests, head, body) and the
//! framing of requests off the wire. Pipelined requests are answered one at a
//! time, in order, from the same read window. A request that cannot be read
//! goes to `pipeline::reject` (answered like every other response, then the
//! connection closes); so does any request whose body we did not read to the end.

use super::client::{BodyAt, ClientConn, Incoming, Unreadable};
use super::pipeline;
use super::shard::ShardCtx;
use crate::error::GatewayError;
use crate::http::Parsed;
use crate::http::chunked::ChunkedDecoder;
use crate::http::request::{BodyFraming, parse_request};
use crate::net::read_some_tcp as read_some;
use futures_lite::AsyncWriteExt;
use futures_lite::future::FutureExt;
use glommio::net::TcpStream;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Shortest read timeout we set (glommio rejects zero).
const MIN_TIMEOUT: Duration = Duration::from_millis(1);

/// Serves one accepted connection until it closes.
pub async fn serve(ctx: Rc<ShardCtx>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(ctx.config().timeouts.client_write));
    let id = ctx.register(std::os::fd::AsRawFd::as_raw_fd(&stream));
    let mut c = ClientConn::new(stream);
    loop {
        let req = match read_request(&ctx, &mut c, id).await {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(unreadable) => {
                pipeline::reject(&ctx, &mut c, unreadable).await;
                break;
            }
        };
        let keep_alive = pipeline::handle(&ctx, &mut c, &req).await;
        c.buf.consume(req.consumed);
        if !keep_alive {
            break;
        }
        // The client has only just been sent its answer: its next request
        // cannot be here yet, so let the shard's other connections run before
        // asking the socket (saves a `recv` that would find it empty).
        if c.buf.is_empty() {
            futures_lite::future::yield_now().await;
        }
    }
    ctx.unregister(id);
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

/// Reads the next request head and body. `Ok(None)`: the connection should
/// close quietly (peer closed, idle timeout, drain).
async fn read_request(
    ctx: &ShardCtx,
    c: &mut ClientConn,
    id: u64,
) -> Result<Option<Incoming>, Unreadable> {
    let mut started = None;
    read_framed(ctx, c, id, &mut started)
        .await
        .map_err(|error| Unreadable {
            started: started.unwrap_or_else(Instant::now),
            error,
        })
}

/// [`read_request`]'s work; `started` is set when the request's first byte is here.
async fn read_framed(
    ctx: &ShardCtx,
    c: &mut ClientConn,
    id: u64,
    started: &mut Option<Instant>,
) -> Result<Option<Incoming>, GatewayError> {
    let config = ctx.config();
    let t = &config.timeouts;
    let limits = ctx.limits();
    let mut head_deadline: Option<Instant> = None;
    let head_len = loop {
        if !c.buf.is_empty() {
            // One clock read per request: its arrival, which also starts the head deadline.
            let arrived = *started.get_or_insert_with(Instant::now);
            if let Parsed::Complete(n) = parse_request(c.buf.filled(), &limits, &mut c.head)? {
                break n;
            }
            head_deadline.get_or_insert(arrived + t.head);
        }
        let idle = c.buf.is_empty();
        if idle && ctx.draining.get() {
            return Ok(None);
        }
        let timeout = match head_deadline {
            Some(d) => d.saturating_duration_since(Instant::now()),
            None => t.idle,
        };
        if timeout.is_zero() {
            return Err(timeout_error("request head"));
        }
        let _ = c.stream.set_read_timeout(Some(timeout.max(MIN_TIMEOUT)));
        let max_window = limits.max_head_bytes.max(c.buf.len() + 1);
        let read = if idle {
            ctx.set_idle(id, true);
            let r = read_some(&mut c.stream, &mut c.buf, max_window)
                .or(async {
                    ctx.drain_started(id).await;
                    Ok(0)
                })
                .await;
            ctx.set_idle(id, false);
            r
        } else {
            read_some(&mut c.stream, &mut c.buf, max_window).await
        };
        match read {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) if is_timeout(&e) && !idle => return Err(timeout_error("request head")),
            Err(_) => return Ok(None),
        }
    };
    let started = started.unwrap_or_else(Instant::now);
    let (body, consumed) = match c.head.body {
        BodyFraming::None => (BodyAt::Window(head_len, head_len), head_len),
        BodyFraming::Length(n) => {
            let end = head_len + n as usize;
            if c.head.expect_continue && c.buf.len() == head_len {
                send_continue(c).await?;
            }
            if c.buf.len() < end {
                let deadline = Instant::now() + t.body;
                while c.buf.len() < end {
                    read_body_bytes(c, deadline, end).await?;
                }
            }
            (BodyAt::Window(head_len, end), end)
        }
        BodyFraming::Chunked => {
            if c.head.expect_continue && c.buf.len() == head_len {
                send_continue(c).await?;
            }
            let deadline = Instant::now() + t.body;
            let mut decoder = ChunkedDecoder::default();
            c.body.clear();
            let mut pos = head_len;
            // The wire form may exceed the decoded size by framing overhead.
            let max_window =
                head_len + (limits.max_body_bytes as usize).saturating_mul(2) + (64 << 10);
            loop {
                let used = decoder
                    .decode(&c.buf.filled()[pos..], &mut c.body, limits.max_body_bytes)
                    .map_err(|e| match e {
                        crate::http::chunked::ChunkError::TooLarge => GatewayError::framing(
                            413,
                            "body_too_large",
                            format!(
                                "request body exceeds the limit of {} bytes",
                                limits.max_body_bytes
                            ),
                        ),
                        other => {
                            GatewayError::framing(400, "malformed_chunked_body", other.message())
                        }
                    })?;
                pos += used;
                if decoder.is_done() {
                    break;
                }
                read_body_bytes(c, deadline, max_window).await?;
            }
            (BodyAt::Decoded, pos)
        }
    };
    Ok(Some(Incoming {
        started,
        body,
        consumed,
    }))
}

async fn send_continue(c: &mut ClientConn) -> Result<(), GatewayError> {
    c.stream
        .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
        .await
        .map_err(|_| GatewayError::framing(400, "client_gone", "client closed the connection"))
}

async fn read_body_bytes(
    c: &mut ClientConn,
    deadline: Instant,
    max_window: usize,
) -> Result<(), GatewayError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(timeout_error("request body"));
    }
    let _ = c.stream.set_read_timeout(Some(left.max(MIN_TIMEOUT)));
    match read_some(&mut c.stream, &mut c.buf, max_window).await {
        Ok(0) => Err(GatewayError::framing(
            400,
            "incomplete_body",
            "client closed the connection before the body ended",
        )),
        Ok(_) => Ok(()),
        Err(e) if is_timeout(&e) => Err(timeout_error("request body")),
        Err(e) => Err(GatewayError::framing(
            400,
            "incomplete_body",
            format!("reading the request body: {e}"),
        )),
    }
}

fn timeout_error(what: &str) -> GatewayError {
    GatewayError::framing(
        408,
        "request_timeout",
        format!("{what} did not arrive in time"),
    )
}
