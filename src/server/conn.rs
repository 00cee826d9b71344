//! One client connection: read a head, read its body, run the pipeline, repeat.
//!
//! Owns the connection's buffers (reused across requests) and the client-side
//! timeouts: idle between requests, head, body. Pipelined requests are answered
//! one at a time, in order, from the same read window. Any framing error is
//! answered and the connection closed; so is any request whose body we did not
//! read to the end.

use super::ShardCtx;
use super::pipeline;
use crate::error::GatewayError;
use crate::http::chunked::ChunkedDecoder;
use crate::http::request::{BodyFraming, RequestHead, parse_request};
use crate::http::response::ResponseHead;
use crate::http::{Parsed, ReadBuf};
use crate::net::read_some_tcp as read_some;
use futures_lite::AsyncWriteExt;
use futures_lite::future::FutureExt;
use glommio::net::TcpStream;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Initial read window of a client connection.
pub const CLIENT_BUF: usize = 16 << 10;
/// Shortest read timeout we set (glommio rejects zero).
const MIN_TIMEOUT: Duration = Duration::from_millis(1);

/// A client connection and the buffers its requests reuse.
pub struct ClientConn {
    pub stream: TcpStream,
    pub buf: ReadBuf,
    pub head: RequestHead,
    /// A decoded chunked request body.
    pub body: Vec<u8>,
    /// The response being written to the client.
    pub out: Vec<u8>,
    /// The request being written upstream.
    pub up_out: Vec<u8>,
    /// A rewritten request body (unified routes).
    pub rewritten: Vec<u8>,
    /// simd-json scratch for usage parsing.
    pub scratch: crate::usage::JsonScratch,
    /// Decoded provider body bytes (chunked responses).
    pub decoded: Vec<u8>,
    pub rhead: ResponseHead,
}

/// Where the current request's body is.
#[derive(Clone, Copy, Debug)]
pub enum BodyAt {
    /// In the read window at this range.
    Window(usize, usize),
    /// Decoded into `ClientConn::body`.
    Decoded,
}

/// A request ready for the pipeline.
pub struct Incoming {
    pub started: Instant,
    pub body: BodyAt,
    /// Bytes of the read window this request used (head + body on the wire).
    pub consumed: usize,
}

impl BodyAt {
    /// The body bytes, given the read window and the decoded-body buffer
    /// (taken separately so callers can still borrow other buffers mutably).
    pub fn slice<'a>(self, window: &'a [u8], decoded: &'a [u8]) -> &'a [u8] {
        match self {
            BodyAt::Window(s, e) => &window[s..e],
            BodyAt::Decoded => decoded,
        }
    }
}

/// Serves one accepted connection until it closes.
pub async fn serve(ctx: Rc<ShardCtx>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(ctx.config.timeouts.client_write));
    let id = ctx.register();
    let mut c = ClientConn {
        stream,
        buf: ReadBuf::with_capacity(CLIENT_BUF),
        head: RequestHead::default(),
        body: Vec::new(),
        out: Vec::with_capacity(4096),
        up_out: Vec::with_capacity(4096),
        rewritten: Vec::new(),
        scratch: crate::usage::JsonScratch::default(),
        decoded: Vec::new(),
        rhead: ResponseHead::default(),
    };
    loop {
        let req = match read_request(&ctx, &mut c, id).await {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) => {
                let mut rec = crate::record::RequestRecord::new(
                    ctx.next_request_id(),
                    ctx.shard,
                    Instant::now(),
                );
                rec.status = e.status;
                rec.error_source = Some(e.source.header_value());
                rec.error_code = Some(e.code);
                rec.outcome = crate::record::Outcome::GatewayError;
                c.out.clear();
                e.write_response(&mut c.out, c.head.http10, false, "");
                let _ = c.stream.write_all(&c.out).await;
                ctx.finish(&rec);
                break;
            }
        };
        let keep_alive = pipeline::handle(&ctx, &mut c, &req).await;
        c.buf.consume(req.consumed);
        if !keep_alive {
            break;
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
) -> Result<Option<Incoming>, GatewayError> {
    let t = &ctx.config.timeouts;
    let mut head_deadline: Option<Instant> = None;
    let head_len = loop {
        if !c.buf.is_empty() {
            if let Parsed::Complete(n) = parse_request(c.buf.filled(), &ctx.limits, &mut c.head)? {
                break n;
            }
            head_deadline.get_or_insert_with(|| Instant::now() + t.head);
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
        let max_window = ctx.limits.max_head_bytes.max(c.buf.len() + 1);
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
    let started = Instant::now();
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
                head_len + (ctx.limits.max_body_bytes as usize).saturating_mul(2) + (64 << 10);
            loop {
                let used = decoder
                    .decode(
                        &c.buf.filled()[pos..],
                        &mut c.body,
                        ctx.limits.max_body_bytes,
                    )
                    .map_err(|e| match e {
                        crate::http::chunked::ChunkError::TooLarge => GatewayError::framing(
                            413,
                            "body_too_large",
                            format!(
                                "request body exceeds the limit of {} bytes",
                                ctx.limits.max_body_bytes
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
