//! Stages 3 and 4: the upstream exchange and the response relay.
//!
//! Owns: writing the re-serialized request to a pooled (or new) provider
//! connection, reading the response head within the first-byte timeout,
//! re-framing the body to the client as it arrives, tapping token usage on the
//! way, and deciding whether the provider connection may return to the pool
//! (only after a cleanly framed response with nothing left over). A response
//! that breaks off is never completed: the client connection is closed without
//! a terminating chunk. Does not route or count (pipeline, record).

use super::ShardCtx;
use super::conn::{ClientConn, Incoming};
use super::pipeline::{Plan, answer_error};
use crate::config::ProviderKind;
use crate::error::GatewayError;
use crate::http::chunked::{ChunkedDecoder, LAST_CHUNK, write_chunk};
use crate::http::request::{Method, RequestHead};
use crate::http::response::{ResponseBody, ResponseHead, ResponseParsed, parse_response};
use crate::http::{Parsed, is_hop_by_hop, push_decimal, tokens};
use crate::record::{Outcome, RequestRecord};
use crate::upstream::conn::{ConnectError, Stream, UpstreamConn, connect};
use crate::upstream::mock;
use crate::usage::{JsonTail, SseTap, usage_from_json};
use futures_lite::AsyncWriteExt;
use futures_lite::io::Cursor;
use std::time::{Duration, Instant};

/// Largest read window while relaying a provider body (the body streams through it).
pub const RELAY_WINDOW: usize = 256 << 10;

/// How the body is framed towards the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientFraming {
    None,
    Length,
    Chunked,
    /// HTTP/1.0 client and a body of unknown length: close ends it.
    Close,
}

enum HeadError {
    /// Closed or reset before a single byte: a stale pooled connection.
    ClosedEarly,
    Timeout,
    Bad(String),
}

/// Runs the exchange and relays the response; returns whether the client
/// connection stays open.
pub async fn exchange(
    ctx: &ShardCtx,
    c: &mut ClientConn,
    req: &Incoming,
    plan: &Plan,
    rec: &mut RequestRecord,
    keep_alive: bool,
) -> bool {
    let provider = &plan.provider;
    let t = &ctx.config.timeouts;
    let body: &[u8] = if plan.unified {
        &c.rewritten
    } else {
        req.body.slice(c.buf.filled(), &c.body)
    };
    let auth = if plan.unified {
        &provider.auth_unified
    } else {
        &provider.auth_native
    };
    build_request(
        &mut c.up_out,
        c.buf.filled(),
        &c.head,
        plan,
        auth.as_deref(),
        body,
    );
    let mut mock_reply = (provider.kind() == ProviderKind::Mock).then(|| {
        mock::respond(
            &mock::MockRequest {
                path: &plan.path,
                body,
            },
            rec.id,
        )
    });

    // 3. upstream: a pooled connection (one retry if it turns out stale), or a new one.
    let mut attempt = 0;
    let (mut up, sent_at, ttfb) = loop {
        attempt += 1;
        let (mut up, reused) = if let Some(reply) = mock_reply.take() {
            (UpstreamConn::new(Stream::Memory(Cursor::new(reply))), false)
        } else if let Some(up) = ctx.pool.take(&provider.name) {
            (up, true)
        } else {
            match connect(provider, &ctx.resolver, t.upstream_connect).await {
                Ok(up) => {
                    ctx.stats.borrow_mut().counters.upstream_connects += 1;
                    (up, false)
                }
                Err(ConnectError::Timeout) => {
                    let e = GatewayError::upstream_timeout(&provider.name, "connect");
                    return answer_error(ctx, c, rec, e, keep_alive).await;
                }
                Err(ConnectError::Failed(why)) => {
                    let e = GatewayError::upstream_unreachable(&provider.name, why);
                    return answer_error(ctx, c, rec, e, keep_alive).await;
                }
            }
        };
        let sent_at = Instant::now();
        up.stream.set_write_timeout(t.client_write);
        if let Err(e) = up.stream.write_all(&c.up_out).await {
            if reused && attempt == 1 {
                continue;
            }
            let e = GatewayError::upstream_unreachable(
                &provider.name,
                format!("sending the request: {e}"),
            );
            return answer_error(ctx, c, rec, e, keep_alive).await;
        }
        let max_head = ctx.config.limits.max_response_head_bytes;
        match read_response_head(
            &mut up,
            &mut c.rhead,
            plan.method == Method::Head,
            max_head,
            t.first_byte,
            sent_at,
        )
        .await
        {
            Ok(ttfb) => {
                rec.upstream_reused = reused;
                ctx.stats.borrow_mut().counters.upstream_reused += u64::from(reused);
                break (up, sent_at, ttfb);
            }
            Err(HeadError::ClosedEarly) if reused && attempt == 1 => continue,
            Err(HeadError::ClosedEarly) => {
                let e = GatewayError::upstream_bad_response(
                    &provider.name,
                    "connection closed before a response",
                );
                return answer_error(ctx, c, rec, e, keep_alive).await;
            }
            Err(HeadError::Timeout) => {
                let e = GatewayError::upstream_timeout(
                    &provider.name,
                    "no response within timeouts.first_byte",
                );
                return answer_error(ctx, c, rec, e, keep_alive).await;
            }
            Err(HeadError::Bad(why)) => {
                let e = GatewayError::upstream_bad_response(&provider.name, why);
                return answer_error(ctx, c, rec, e, keep_alive).await;
            }
        }
    };
    rec.upstream_ttfb = Some(ttfb);
    let pre_upstream = sent_at.duration_since(req.started);

    // 4. relay the response as it arrives, tapping usage.
    let rh = &c.rhead;
    let status = rh.status;
    let body_kind = rh.body();
    let filter = plan.filter_usage_event && rh.event_stream;
    let http10 = c.head.http10;
    let framing = match body_kind {
        ResponseBody::None => ClientFraming::None,
        ResponseBody::Length(_) if !filter => ClientFraming::Length,
        _ if !http10 => ClientFraming::Chunked,
        _ => ClientFraming::Close,
    };
    // A drain may have begun while we waited for the provider: say `close` in
    // the head now rather than closing a connection the client thinks persists.
    let mut keep = keep_alive && framing != ClientFraming::Close && !ctx.draining.get();
    rec.status = status;
    if status >= 400 {
        rec.error_source = Some("provider");
    }
    c.out.clear();
    write_client_head(
        &mut c.out,
        ctx,
        rec,
        rh,
        up.buf.filled(),
        framing,
        http10,
        keep,
        pre_upstream,
        ttfb,
        plan.method,
    );
    up.buf.consume(rh.head_len);

    let mut tap = rh.event_stream.then(|| SseTap::new(filter));
    let mut json_tail = JsonTail::default();
    let mut json_done = false;
    let mut filtered = Vec::new();
    let mut remaining = match body_kind {
        ResponseBody::Length(n) => n,
        _ => 0,
    };
    let mut decoder = ChunkedDecoder::default();
    let mut eof = false;
    let mut aborted = false;
    let mut last_read = sent_at + ttfb;
    loop {
        let avail = up.buf.filled();
        let (data, used, done): (&[u8], usize, bool) = match body_kind {
            ResponseBody::None => (&[], 0, true),
            ResponseBody::Length(n) => {
                let take = (remaining as usize).min(avail.len());
                if take as u64 == n && tap.is_none() {
                    // The whole body in one piece: read usage from it directly.
                    rec.usage = usage_from_json(&avail[..take], &mut c.scratch).unwrap_or_default();
                    json_done = true;
                }
                remaining -= take as u64;
                (&avail[..take], take, remaining == 0)
            }
            ResponseBody::Chunked => {
                c.decoded.clear();
                match decoder.decode(avail, &mut c.decoded, u64::MAX) {
                    Ok(used) => (&c.decoded[..], used, decoder.is_done()),
                    Err(_) => {
                        aborted = true;
                        break;
                    }
                }
            }
            ResponseBody::UntilClose => (avail, avail.len(), eof),
        };
        if !data.is_empty() {
            match tap.as_mut() {
                Some(tap) => {
                    let before = tap.data_events;
                    filtered.clear();
                    tap.feed(data, &mut filtered);
                    frame(
                        &mut c.out,
                        if tap.filters() { &filtered } else { data },
                        framing,
                    );
                    if before == 0 && tap.data_events > 0 {
                        rec.ttft = Some(req.started.elapsed());
                    }
                }
                None => {
                    if !json_done {
                        json_tail.push(data);
                    }
                    frame(&mut c.out, data, framing);
                }
            }
        }
        if done {
            if let Some(tap) = tap.as_mut().filter(|t| t.filters()) {
                filtered.clear();
                tap.finish(&mut filtered);
                frame(&mut c.out, &filtered, framing);
            }
            if framing == ClientFraming::Chunked {
                c.out.extend_from_slice(LAST_CHUNK);
            }
        }
        up.buf.consume(used);
        if !c.out.is_empty() {
            rec.bytes_out += c.out.len() as u64;
            if c.stream.write_all(&c.out).await.is_err() {
                rec.outcome = Outcome::ClientAborted;
                settle_usage(rec, tap.as_ref(), &json_tail, json_done, &mut c.scratch);
                return false;
            }
            c.out.clear();
        }
        if done {
            break;
        }
        up.stream.set_read_timeout(t.stream_idle);
        match up.stream.read_some(&mut up.buf, RELAY_WINDOW).await {
            Ok(0) if body_kind == ResponseBody::UntilClose => eof = true,
            Ok(0) => {
                aborted = true;
                break;
            }
            Ok(_) => last_read = Instant::now(),
            Err(_) => {
                aborted = true;
                break;
            }
        }
    }
    rec.gateway = pre_upstream + last_read.elapsed();
    settle_usage(rec, tap.as_ref(), &json_tail, json_done, &mut c.scratch);
    if aborted {
        // The client saw a head and part of a body: it must not see an ending.
        rec.outcome = Outcome::UpstreamAborted;
        return false;
    }
    let reusable = c.rhead.reusable && up.buf.is_empty() && !matches!(up.stream, Stream::Memory(_));
    if reusable {
        ctx.pool.put(&provider.name, up);
    }
    if ctx.draining.get() {
        keep = false;
    }
    keep
}

fn settle_usage(
    rec: &mut RequestRecord,
    tap: Option<&SseTap>,
    tail: &JsonTail,
    json_done: bool,
    scratch: &mut crate::usage::JsonScratch,
) {
    match tap {
        Some(tap) => rec.usage = tap.usage,
        None if !json_done => {
            rec.usage = usage_from_json(tail.bytes(), scratch).unwrap_or_default()
        }
        None => {}
    }
}

fn frame(out: &mut Vec<u8>, data: &[u8], framing: ClientFraming) {
    match framing {
        ClientFraming::Chunked => write_chunk(out, data),
        ClientFraming::Length | ClientFraming::Close => out.extend_from_slice(data),
        ClientFraming::None => {}
    }
}

/// Reads until a final response head is parsed; returns the time to first byte.
async fn read_response_head(
    up: &mut UpstreamConn,
    rhead: &mut ResponseHead,
    was_head: bool,
    max_head: usize,
    first_byte: Duration,
    start: Instant,
) -> Result<Duration, HeadError> {
    let deadline = start + first_byte;
    let mut ttfb = None;
    let mut first_wait = true;
    loop {
        if !up.buf.is_empty() {
            match parse_response(up.buf.filled(), max_head, was_head, rhead) {
                Ok(ResponseParsed::Head(Parsed::Complete(_))) => {
                    return Ok(ttfb.unwrap_or_else(|| start.elapsed()));
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
                ttfb.get_or_insert_with(|| start.elapsed());
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                ) =>
            {
                return Err(HeadError::Timeout);
            }
            Err(_) if ttfb.is_none() => return Err(HeadError::ClosedEarly),
            Err(e) => return Err(HeadError::Bad(format!("reading the response head: {e}"))),
        }
    }
}

/// Headers never forwarded upstream beyond the hop-by-hop set.
fn skip_upstream(name: &[u8], key_injected: bool) -> bool {
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
        || (key_injected && (ci("authorization") || ci("x-api-key") || ci("api-key")))
}

/// Re-serializes the request for the provider (never the client's raw head bytes).
fn build_request(
    out: &mut Vec<u8>,
    window: &[u8],
    head: &RequestHead,
    plan: &Plan,
    auth: Option<&str>,
    body: &[u8],
) {
    out.clear();
    out.extend_from_slice(plan.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(plan.path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(plan.provider.config.base_url.authority.as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(auth) = auth {
        out.extend_from_slice(auth.as_bytes());
    }
    let has_connection = head
        .headers
        .iter()
        .any(|h| h.name.get(window).eq_ignore_ascii_case(b"connection"));
    for h in &head.headers {
        let name = h.name.get(window);
        if skip_upstream(name, auth.is_some())
            || (has_connection && head.connection_lists(window, name))
        {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value.get(window));
        out.extend_from_slice(b"\r\n");
    }
    if !body.is_empty() || matches!(plan.method, Method::Post | Method::Put | Method::Patch) {
        out.extend_from_slice(b"content-length: ");
        push_decimal(out, body.len() as u64);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// A value safe to put in a response header (no control bytes).
fn header_safe(v: &str) -> bool {
    v.bytes().all(|b| (0x20..0x7f).contains(&b))
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call site; each argument is a distinct fact of the head"
)]
fn write_client_head(
    out: &mut Vec<u8>,
    ctx: &ShardCtx,
    rec: &RequestRecord,
    rh: &ResponseHead,
    window: &[u8],
    framing: ClientFraming,
    http10: bool,
    keep_alive: bool,
    pre_upstream: Duration,
    ttfb: Duration,
    method: Method,
) {
    // Hand-formatted: this runs once per response, and `write!` costs more than the rest.
    out.extend_from_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
    push_decimal(out, u64::from(rh.status));
    out.push(b' ');
    out.extend_from_slice(crate::error::reason(rh.status).as_bytes());
    out.extend_from_slice(b"\r\n");
    let listed = |name: &[u8]| {
        rh.headers
            .iter()
            .filter(|h| h.name.get(window).eq_ignore_ascii_case(b"connection"))
            .any(|h| tokens(h.value.get(window)).any(|t| t.eq_ignore_ascii_case(name)))
    };
    for h in &rh.headers {
        let name = h.name.get(window);
        let keep_length = method == Method::Head && name.eq_ignore_ascii_case(b"content-length");
        if (!keep_length && is_hop_by_hop(name)) || listed(name) {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value.get(window));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"aigw-request-id: ");
    out.extend_from_slice(ctx.id_prefix.as_bytes());
    push_decimal(out, rec.id);
    if let Some(p) = &rec.provider {
        out.extend_from_slice(b"\r\naigw-provider: ");
        out.extend_from_slice(p.as_bytes());
    }
    if let Some(m) = rec.model.as_deref().filter(|m| header_safe(m)) {
        out.extend_from_slice(b"\r\naigw-model: ");
        out.extend_from_slice(m.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    if rh.status >= 400 {
        out.extend_from_slice(b"aigw-error-source: provider\r\n");
    }
    // Milliseconds with microsecond precision, formatted as integers (no float formatting).
    let (g, u) = (pre_upstream.as_micros(), ttfb.as_micros());
    out.extend_from_slice(b"server-timing: gateway;dur=");
    push_millis(out, g as u64);
    out.extend_from_slice(b", upstream;dur=");
    push_millis(out, u as u64);
    out.extend_from_slice(b"\r\n");
    match (framing, rh.body()) {
        (ClientFraming::Length, ResponseBody::Length(n)) => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        (ClientFraming::Chunked, _) => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        // A bodyless answer to a GET/POST still needs an explicit length, or the
        // client would read until close.
        (ClientFraming::None, _)
            if method != Method::Head && rh.status != 204 && rh.status != 304 =>
        {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        _ => {}
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
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
