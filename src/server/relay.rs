//! The relay: streams a provider's body to the client as it arrives, through
//! the taps, re-framed for the client (length, chunked, or close-delimited).
//!
//! Owns reading the body within `timeouts.stream_idle`, decoding chunked
//! bodies, feeding every chunk to the tap chain and ending it with
//! `finish(Complete | Aborted)`, and deciding whether the provider connection
//! may return to the pool (only after a cleanly framed body with nothing left
//! over). A body that breaks off is never completed: the client sees no
//! terminating chunk, and the pipeline closes the connection. Does not route,
//! retry or count (pipeline, record).

use super::respond::ClientFraming;
use super::taps::{self, End, Tap};
use crate::cache::flight::{End as FlightEnd, Flight};
use crate::http::chunked::{ChunkedDecoder, LAST_CHUNK, write_chunk};
use crate::http::response::ResponseBody;
use crate::upstream::conn::UpstreamConn;
use futures_lite::{AsyncWrite, AsyncWriteExt};
use std::time::{Duration, Instant};

/// Largest read window while relaying a provider body (the body streams through it).
pub const RELAY_WINDOW: usize = 256 << 10;

/// While the provider is silent (a model thinking before it writes, a slow
/// stream), the relay looks at its client this often: one that left ends the
/// relay then (the provider connection closes, so the spend stops and the
/// request's concurrency slot frees), not at the next event.
pub const CLIENT_CHECK: Duration = Duration::from_secs(1);

/// The same while the shard drains: the end of a drain shuts the sockets of
/// requests still running, and a relay waiting on a silent provider must see
/// that within the drain's last part.
pub const DRAIN_CHECK: Duration = Duration::from_millis(50);

/// How often to ask (see [`CLIENT_CHECK`], [`DRAIN_CHECK`]).
pub fn check_every(draining: bool) -> Duration {
    if draining { DRAIN_CHECK } else { CLIENT_CHECK }
}

/// What the relay may ask about its client.
#[derive(Clone, Copy)]
pub struct Watch<'a> {
    /// Whether the client closed or reset its connection (asked every
    /// [`CLIENT_CHECK`] the provider stays silent).
    pub left: &'a dyn Fn() -> bool,
    /// When the client is gone: whether to read the provider's body to its
    /// end anyway (others are waiting on it).
    pub carry_on: &'a dyn Fn() -> bool,
    /// How long a silent provider is waited on before `left` is asked again.
    pub every: &'a dyn Fn() -> Duration,
    /// Whether the end of a drain is stopping the shard's requests: then a
    /// client that `left` did not leave (the drain shut its reading side)
    /// and is told why its stream ends ([`EndEvents::stopped`]).
    pub stopping: &'a dyn Fn() -> bool,
}

/// How the body arrives and leaves.
#[derive(Clone, Copy, Debug)]
pub struct Framing {
    /// How the provider delimits it.
    pub body: ResponseBody,
    /// How the client gets it.
    pub client: ClientFraming,
    /// The provider said the connection may carry another request.
    pub reusable: bool,
    /// An event stream: if it ends early, the client gets the event of why
    /// ([`EndEvents`], in its format) before the connection closes.
    pub events: Option<EndEvents>,
    /// The whole body must have arrived by then (a route target's
    /// `timeout`); past it the body is broken off like a stalled one.
    pub deadline: Option<Instant>,
    /// A chunked body is left open at its end (no last chunk): the caller
    /// ends it with trailer fields.
    pub open_end: bool,
}

/// The events that end a stream early, in one client format: each a typed
/// error its SDK raises, never the format's clean end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndEvents {
    /// The provider's stream broke off.
    pub broke_off: &'static [u8],
    /// The end of a drain stopped it (`server.drain_timeout` ran out).
    pub stopped: &'static [u8],
}

/// OpenAI's format (and every format a unified client reads).
pub const OPENAI_END_EVENTS: EndEvents = EndEvents {
    broke_off: STREAM_BROKE_OFF,
    stopped: STREAM_STOPPED,
};

/// Anthropic's format (`/v1/messages`, pass-through to Anthropic).
pub const ANTHROPIC_END_EVENTS: EndEvents = EndEvents {
    broke_off: ANTHROPIC_STREAM_BROKE_OFF,
    stopped: ANTHROPIC_STREAM_STOPPED,
};

/// Gemini's own API (a pass-through stream to a `google` provider).
pub const GEMINI_END_EVENTS: EndEvents = EndEvents {
    broke_off: GEMINI_STREAM_BROKE_OFF,
    stopped: GEMINI_STREAM_STOPPED,
};

/// [`STREAM_STOPPED`] as Anthropic's SDKs read errors.
pub const ANTHROPIC_STREAM_STOPPED: &[u8] = b"\n\nevent: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"the gateway is shutting down (server.drain_timeout ran out) and stopped this stream before its end: the answer is incomplete; retry it\"}}\n\n";

/// [`STREAM_STOPPED`] as a client of Gemini's own API reads errors.
pub const GEMINI_STREAM_STOPPED: &[u8] = b"\n\ndata: {\"error\":{\"code\":503,\"message\":\"the gateway is shutting down (server.drain_timeout ran out) and stopped this stream before its end: the answer is incomplete; retry it\",\"status\":\"UNAVAILABLE\"}}\n\n";

/// The event a stream's client receives when the end of a drain stops it:
/// the gateway's error (as the 503 of a request not yet answered says), so
/// the client knows the answer is incomplete and whose doing that was.
pub const STREAM_STOPPED: &[u8] = b"\n\ndata: {\"error\":{\"message\":\"the gateway is shutting down (server.drain_timeout ran out) and stopped this stream before its end: the answer is incomplete; retry it\",\"type\":\"server_error\",\"param\":null,\"code\":\"shutting_down\"}}\n\n";

/// [`STREAM_BROKE_OFF`] as Anthropic's SDKs read errors: a named `error` event.
pub const ANTHROPIC_STREAM_BROKE_OFF: &[u8] = b"\n\nevent: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"the provider's stream broke off before its end: the answer is incomplete\"}}\n\n";

/// [`STREAM_BROKE_OFF`] as a client of Gemini's own API reads errors
/// (a pass-through stream to a `google` provider).
pub const GEMINI_STREAM_BROKE_OFF: &[u8] = b"\n\ndata: {\"error\":{\"code\":503,\"message\":\"the provider's stream broke off before its end: the answer is incomplete\",\"status\":\"UNAVAILABLE\"}}\n\n";

/// The event a client receives when the provider's stream breaks off: a typed
/// error (the OpenAI SDKs raise it) and never `[DONE]`. The blank lines end
/// whatever partial line went before, so it parses as an event of its own.
pub const STREAM_BROKE_OFF: &[u8] = b"\n\ndata: {\"error\":{\"message\":\"the provider's stream broke off before its end: the answer is incomplete\",\"type\":\"provider_error\",\"param\":null,\"code\":\"stream_truncated\"}}\n\n";

/// How the relay ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    Complete,
    /// The provider's body broke off (closed, reset, malformed, stalled).
    UpstreamAborted,
    /// A write to the client failed.
    ClientAborted,
}

pub struct Relayed {
    pub ending: Ending,
    /// Bytes written to the client (the head included).
    pub bytes_out: u64,
    /// When the last provider bytes arrived.
    pub last_read: Instant,
    /// The provider connection, when it may carry another request.
    pub reusable: Option<UpstreamConn>,
    /// The whole body came from the provider (and went through the taps),
    /// whether or not the client was still there to receive it.
    pub body_complete: bool,
}

/// Relays `up`'s body (its head already consumed) to `client`. `out` holds the
/// client's head, written together with the first body bytes; `decoded` is
/// scratch for chunked bodies. `first_read` is when the provider's head arrived.
/// When the client goes away (a failed write, or `watch.left` while the
/// provider is silent), `watch.carry_on` says whether to keep reading the
/// provider's body through the taps anyway (others are waiting on it).
#[expect(
    clippy::too_many_arguments,
    reason = "the client side, the provider side, the taps and two deadlines: grouping them would only rename them"
)]
pub async fn relay<W: AsyncWrite + Unpin>(
    client: &mut W,
    out: &mut Vec<u8>,
    decoded: &mut Vec<u8>,
    mut up: UpstreamConn,
    framing: Framing,
    taps: &mut [&mut dyn Tap],
    stream_idle: Duration,
    first_read: Instant,
    watch: Watch<'_>,
) -> Relayed {
    // A client that left while others waited with it for the provider (the
    // attempt went on for them) is gone before the first byte: its answer
    // is read for them, not sent, and not stored. Asked only then: a request
    // nobody follows stops its attempt when its client leaves.
    // Nobody is read for once the end of a drain stops the shard's requests:
    // those waiting on this answer are being stopped too.
    let carry_on = || (watch.carry_on)() && !(watch.stopping)();
    let mut client_gone = carry_on() && (watch.left)();
    let mut reached_end = false;
    let mut remaining = match framing.body {
        ResponseBody::Length(n) => n,
        _ => 0,
    };
    let mut decoder = ChunkedDecoder::default();
    let mut eof = false;
    let mut bytes_out = 0u64;
    let mut last_read = first_read;
    let ending = loop {
        let avail = up.buf.filled();
        let (data, used, done): (&[u8], usize, bool) = match framing.body {
            ResponseBody::None => (&[], 0, true),
            ResponseBody::Length(_) => {
                let take = (remaining as usize).min(avail.len());
                remaining -= take as u64;
                (&avail[..take], take, remaining == 0)
            }
            ResponseBody::Chunked => {
                decoded.clear();
                match decoder.decode(avail, decoded, u64::MAX) {
                    Ok(used) => (&decoded[..], used, decoder.is_done()),
                    Err(_) => break Ending::UpstreamAborted,
                }
            }
            ResponseBody::UntilClose => (avail, avail.len(), eof),
        };
        if !data.is_empty() {
            frame(out, taps::through(taps, data), framing.client);
        }
        if done {
            taps::finish(taps, End::Complete, |b| frame(out, b, framing.client));
            if framing.client == ClientFraming::Chunked && !framing.open_end {
                out.extend_from_slice(LAST_CHUNK);
            }
        }
        up.buf.consume(used);
        if client_gone {
            out.clear();
        } else if !send(client, out, &mut bytes_out).await {
            if !carry_on() {
                break Ending::ClientAborted;
            }
            client_gone = true;
        }
        if done {
            reached_end = true;
            break if client_gone {
                Ending::ClientAborted
            } else {
                Ending::Complete
            };
        }
        // Read on for others only while one is still there.
        if client_gone && !carry_on() {
            break Ending::ClientAborted;
        }
        let idle = match framing.deadline {
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => stream_idle.min(left),
                _ => {
                    // The wait since the last bytes was the provider's.
                    last_read = Instant::now();
                    break Ending::UpstreamAborted;
                }
            },
            None => stream_idle,
        };
        // The wait is cut into slices of `CLIENT_CHECK`: between them, a
        // client that left (with nobody else waiting) ends the relay.
        let mut waited = Duration::ZERO;
        let read = loop {
            let slice = (idle - waited).min((watch.every)());
            up.stream.set_read_timeout(slice);
            match up.stream.read_some(&mut up.buf, RELAY_WINDOW).await {
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut && waited + slice < idle => {
                    waited += slice;
                    if !client_gone && (watch.left)() {
                        client_gone = true;
                    }
                    if client_gone && !carry_on() {
                        break None;
                    }
                }
                other => break Some(other),
            }
        };
        match read {
            // The wait since the last bytes was the provider's, not the gateway's.
            None => {
                last_read = Instant::now();
                break Ending::ClientAborted;
            }
            Some(Ok(0)) if framing.body == ResponseBody::UntilClose => eof = true,
            Some(Ok(0)) => break Ending::UpstreamAborted,
            Some(Ok(_)) => last_read = Instant::now(),
            Some(Err(e)) => {
                if e.kind() == std::io::ErrorKind::TimedOut {
                    // Stalled past `stream_idle`: the wait was the provider's,
                    // not the gateway's (`gateway_us` counts from here).
                    last_read = Instant::now();
                }
                break Ending::UpstreamAborted;
            }
        }
    };
    // Ended at the body's end, with or without its client.
    let body_complete = reached_end;
    if !body_complete {
        // The taps learn the body is incomplete; whatever they held back stays held.
        taps::finish(taps, End::Aborted, |_| {});
        let event = match (ending, framing.events) {
            (Ending::UpstreamAborted, Some(e)) if !client_gone => Some(e.broke_off),
            // Its client did not leave: the drain shut its reading side.
            (Ending::ClientAborted, Some(e)) if (watch.stopping)() => Some(e.stopped),
            _ => None,
        };
        if let Some(event) = event.filter(|_| framing.client != ClientFraming::Length) {
            out.clear();
            frame(out, event, framing.client);
            send(client, out, &mut bytes_out).await;
        }
    }
    let reusable =
        (ending == Ending::Complete && framing.reusable && up.buf.is_empty() && up.poolable())
            .then_some(up);
    Relayed {
        ending,
        bytes_out,
        last_read,
        reusable,
        body_complete,
    }
}

/// What a follower's relay of a flight did.
#[derive(Debug)]
pub struct Followed {
    pub ending: Ending,
    pub bytes_out: u64,
    /// When the first body bytes went to the client.
    pub first_bytes: Option<Instant>,
}

/// Relays a coalesced stream to a follower as the leader receives it: `out`
/// holds the client's head, sent with the first bytes; `scratch` holds the
/// body bytes already taken from the flight (and `end`, whether it ended
/// with them). Framing is chunked (or ends at close, for HTTP/1.0). Waits at
/// most `idle` for each later step. If the leader's stream breaks off, the
/// follower gets `events.broke_off`, the event the leader's client got
/// ([`Framing::events`]); if the end of a drain stops it, `events.stopped`.
#[allow(clippy::too_many_arguments)]
pub async fn relay_flight<W: AsyncWrite + Unpin>(
    client: &mut W,
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
    flight: &Flight,
    mut end: Option<FlightEnd>,
    client_framing: ClientFraming,
    idle: Duration,
    events: EndEvents,
    watch: Watch<'_>,
) -> Followed {
    let mut cursor = scratch.len();
    let mut bytes_out = 0u64;
    let mut first_bytes = None;
    let mut taken = true;
    let ending = 'relay: loop {
        if !std::mem::replace(&mut taken, false) {
            scratch.clear();
            // As in `relay`: a client that left while the answer is silent
            // ends its wait every `CLIENT_CHECK`.
            let mut waited = Duration::ZERO;
            end = loop {
                let slice = (idle - waited).min((watch.every)());
                match glommio::timer::timeout(slice, async {
                    Ok(flight.more(&mut cursor, scratch).await)
                })
                .await
                {
                    Ok(end) => break end,
                    Err(_) if waited + slice < idle => {
                        waited += slice;
                        if (watch.left)() {
                            if (watch.stopping)() {
                                frame(out, events.stopped, client_framing);
                                send(client, out, &mut bytes_out).await;
                            }
                            break 'relay Ending::ClientAborted;
                        }
                    }
                    Err(_) => break Some(FlightEnd::Failed),
                }
            };
        }
        if !scratch.is_empty() {
            frame(out, scratch, client_framing);
            first_bytes.get_or_insert_with(Instant::now);
        }
        if end == Some(FlightEnd::Complete) && client_framing == ClientFraming::Chunked {
            out.extend_from_slice(LAST_CHUNK);
        }
        if !send(client, out, &mut bytes_out).await {
            break Ending::ClientAborted;
        }
        match end {
            None => {}
            Some(FlightEnd::Complete) => break Ending::Complete,
            Some(FlightEnd::Failed) => {
                // While the end of a drain stops the shard's requests, the
                // leader's answer failed because it was stopped.
                let stopped = (watch.stopping)();
                let event = if stopped {
                    events.stopped
                } else {
                    events.broke_off
                };
                frame(out, event, client_framing);
                send(client, out, &mut bytes_out).await;
                break if stopped {
                    Ending::ClientAborted
                } else {
                    Ending::UpstreamAborted
                };
            }
        }
    };
    Followed {
        ending,
        bytes_out,
        first_bytes,
    }
}

/// Sends what `out` holds (counting it) and empties it; false when the
/// client is gone.
async fn send<W: AsyncWrite + Unpin>(client: &mut W, out: &mut Vec<u8>, sent: &mut u64) -> bool {
    if out.is_empty() {
        return true;
    }
    *sent += out.len() as u64;
    let written = client.write_all(out).await;
    out.clear();
    written.is_ok()
}

fn frame(out: &mut Vec<u8>, data: &[u8], framing: ClientFraming) {
    match framing {
        ClientFraming::Chunked => write_chunk(out, data),
        ClientFraming::Length | ClientFraming::Close => out.extend_from_slice(data),
        ClientFraming::None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::response::{ResponseHead, ResponseParsed, parse_response};
    use crate::providers::openai;
    use crate::providers::usage::JsonScratch;
    use crate::server::taps::UsageTap;
    use futures_lite::future::block_on;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A client that accepts `limit` bytes, then fails every write.
    struct Client {
        got: Vec<u8>,
        limit: usize,
    }

    impl AsyncWrite for Client {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            if self.got.len() + buf.len() > self.limit {
                return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
            }
            self.got.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Relays a raw provider response to a client taking `limit` bytes.
    fn run(raw: &[u8], http10: bool, limit: usize) -> (Relayed, String, UsageTapResult) {
        run_with(raw, http10, limit, false, false)
    }

    fn run_with(
        raw: &[u8],
        http10: bool,
        limit: usize,
        carry_on: bool,
        open_end: bool,
    ) -> (Relayed, String, UsageTapResult) {
        let mut up = UpstreamConn::in_memory(raw.to_vec());
        let mut rh = ResponseHead::default();
        let window = raw;
        // The in-memory stream hands the whole response over in one read.
        block_on(up.stream.read_some(&mut up.buf, RELAY_WINDOW)).unwrap();
        let Ok(ResponseParsed::Head(_)) = parse_response(window, 4096, false, &mut rh) else {
            panic!("bad test response")
        };
        up.buf.consume(rh.head_len);
        let mut scratch = JsonScratch::default();
        let mut tap = if rh.event_stream {
            UsageTap::sse(&openai::USAGE, true)
        } else {
            UsageTap::json(&openai::USAGE, None, &mut scratch)
        };
        let framing = Framing {
            body: rh.body(),
            client: ClientFraming::for_body(rh.body(), tap.rewrites(), http10),
            reusable: rh.reusable,
            events: rh.event_stream.then_some(OPENAI_END_EVENTS),
            deadline: None,
            open_end,
        };
        let mut client = Client {
            got: Vec::new(),
            limit,
        };
        let relayed = block_on(relay(
            &mut client,
            &mut Vec::new(),
            &mut Vec::new(),
            up,
            framing,
            &mut [&mut tap],
            Duration::from_secs(1),
            Instant::now(),
            Watch {
                left: &|| false,
                carry_on: &|| carry_on,
                every: &|| CLIENT_CHECK,
                stopping: &|| false,
            },
        ));
        let usage = tap.usage().output_tokens;
        (relayed, String::from_utf8(client.got).unwrap(), usage)
    }

    type UsageTapResult = Option<u64>;

    const EVENTS: [&str; 3] = [
        "data: {\"choices\":[{}]}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n",
        "data: [DONE]\n\n",
    ];

    /// A chunked SSE response carrying the first `events` of [`EVENTS`],
    /// ended properly when `complete`.
    fn sse(events: usize, complete: bool) -> Vec<u8> {
        let mut raw = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        for e in &EVENTS[..events] {
            write_chunk(&mut raw, e.as_bytes());
        }
        if complete {
            raw.extend_from_slice(LAST_CHUNK);
        }
        raw
    }

    fn chunked(parts: &[&str]) -> String {
        let mut out = Vec::new();
        for p in parts {
            write_chunk(&mut out, p.as_bytes());
        }
        out.extend_from_slice(LAST_CHUNK);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn an_open_ended_stream_leaves_its_end_to_the_caller() {
        let (r, got, _) = run_with(&sse(3, true), false, usize::MAX, false, true);
        assert_eq!(r.ending, Ending::Complete);
        // The body whole, but no last chunk: the trailer fields follow it.
        let mut want = chunked(&[&format!("{}{}", EVENTS[0], EVENTS[2])]);
        want.truncate(want.len() - LAST_CHUNK.len());
        assert_eq!(got, want);
    }

    #[test]
    fn a_stream_is_rechunked_filtered_and_completed() {
        let (r, got, usage) = run(&sse(3, true), false, usize::MAX);
        assert_eq!(r.ending, Ending::Complete);
        // One read brought every chunk: they leave as one, minus the usage-only event.
        assert_eq!(got, chunked(&[&format!("{}{}", EVENTS[0], EVENTS[2])]));
        assert_eq!(usage, Some(4));
        // An in-memory answer never returns to the pool.
        assert!(r.reusable.is_none());
    }

    #[test]
    fn a_cut_stream_is_never_completed() {
        let (r, got, usage) = run(&sse(2, false), false, usize::MAX);
        assert_eq!(r.ending, Ending::UpstreamAborted);
        assert!(!got.contains("0\r\n\r\n"), "{got}");
        // Usage seen before the cut still counts.
        assert_eq!(usage, Some(4));
        let (r, got, _) = run(
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{\"a\":",
            false,
            usize::MAX,
        );
        assert_eq!(
            (r.ending, got.as_str()),
            (Ending::UpstreamAborted, "{\"a\":")
        );
    }

    #[test]
    fn a_client_that_goes_away_ends_the_relay() {
        let (r, _, _) = run(&sse(3, true), false, 10);
        assert_eq!(r.ending, Ending::ClientAborted);
        assert!(!r.body_complete);
    }

    #[test]
    fn a_relay_others_wait_on_reads_the_body_to_its_end_without_its_client() {
        let (r, got, usage) = run_with(&sse(3, true), false, 10, true, false);
        assert_eq!(r.ending, Ending::ClientAborted);
        assert!(r.body_complete && r.reusable.is_none());
        assert!(got.len() <= 10);
        assert_eq!(usage, Some(4), "the taps saw the whole body");
        let (r, _, _) = run_with(&sse(3, false), false, 10, true, false);
        assert!(!r.body_complete, "a cut body is not complete");
    }

    #[test]
    fn json_keeps_its_length_and_an_http10_stream_ends_at_close() {
        let body = r#"{"usage":{"prompt_tokens":1,"completion_tokens":2}}"#;
        let raw = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let (r, got, usage) = run(raw.as_bytes(), false, usize::MAX);
        assert_eq!(
            (r.ending, got.as_str(), usage),
            (Ending::Complete, body, Some(2))
        );
        let (r, got, _) = run(&sse(2, true), true, usize::MAX);
        assert_eq!(r.ending, Ending::Complete);
        assert_eq!(got, EVENTS[0]);
    }
}
