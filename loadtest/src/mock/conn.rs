//! One client connection, start to end: read, frame, record, apply knobs,
//! answer, in order, until the client leaves.
//!
//! Owns the per-connection buffers, the order of the stages (see
//! `Conn::answer`), timing (latency, time to first token, chunk interval) and
//! fault injection. Does not parse bytes (that is `http.rs`) or shape JSON
//! (that is `reply.rs`). Runs as one task per connection on a shard.

use std::borrow::Cow;
use std::cell::Cell;
use std::io;
use std::net::Shutdown;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::event::Stream as TcpStream;
use futures_lite::{AsyncReadExt as _, AsyncWriteExt as _, future};
use serde::Deserialize;

use super::Shared;
use super::anthropic;
use super::gemini;
use super::http::{self, BodyLen, KIB, MAX_BODY, MAX_HEAD, MAX_HEADERS, Parsed, Reject};
use super::knobs::{self, BadKnob, ErrorKind, H_ERROR, Knobs};
use super::record::CapturedRequest;
use super::reply::{self, Answer, DONE_EVENT, Endpoint};

/// A connection's resting read buffer. Holds a typical chat request whole
/// while keeping ten thousand idle load-test connections under 100 MiB; bigger
/// requests grow it (doubling) and it shrinks back afterwards.
const READ_CHUNK: usize = 8 * KIB;

/// Least free space offered to one read before the buffer is compacted or
/// grown, so large bodies are not read in dribbles.
const MIN_READ: usize = 2 * KIB;

/// Above this size an emptied read buffer is given back and reallocated at
/// [`READ_CHUNK`].
const SHRINK_ABOVE: usize = 256 * KIB;

/// Most bytes buffered for one request. A chunked body may carry up to 1 KiB of
/// size line per data byte on the wire, so the wire form is capped separately
/// from the decoded [`MAX_BODY`].
const MAX_BUFFERED: usize = MAX_HEAD + 2 * MAX_BODY;

/// How long a closing connection waits for the client to finish sending
/// before the socket is dropped. Closing with unread input makes the kernel
/// send RST, which can destroy the answer the client has not read yet.
const LINGER: Duration = Duration::from_secs(1);

/// What every connection on one shard shares.
pub struct Shard {
    pub index: usize,
    pub shared: Arc<Shared>,
    /// Sequence number for answer ids on this shard.
    seq: Cell<u64>,
}

impl Shard {
    pub fn new(index: usize, shared: Arc<Shared>) -> Shard {
        Shard {
            index,
            shared,
            seq: Cell::new(0),
        }
    }

    fn next_seq(&self) -> u64 {
        let n = self.seq.get() + 1;
        self.seq.set(n);
        n
    }
}

/// Whether the connection may carry another request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    KeepAlive,
    /// Stop reading, say goodbye politely (FIN, then drain).
    Close,
    /// Drop the socket now (after a reset or when the client is gone).
    Abort,
}

/// Serves one accepted connection until either side closes it.
pub async fn serve(stream: TcpStream, shard: Rc<Shard>) {
    let counters = shard.shared.record.shard(shard.index);
    counters.connections.fetch_add(1, Ordering::Relaxed);
    // Small answers must leave at once, not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let mut conn = Conn {
        stream,
        // Both grow to the largest answer this connection sends, then stay.
        out: Vec::new(),
        scratch: Vec::new(),
    };
    let mut buf = ReadBuf::new();
    let next = conn.run(&mut buf, &shard).await.unwrap_or(Next::Abort);
    if next == Next::Close {
        conn.linger_close().await;
    }
}

struct Conn {
    stream: TcpStream,
    /// Bytes of the answer being written; one write per flush.
    out: Vec<u8>,
    /// A JSON body or SSE event under construction.
    scratch: Vec<u8>,
}

impl Conn {
    /// The read loop: requests are answered one at a time, in arrival order,
    /// which is what makes pipelining correct.
    async fn run(&mut self, buf: &mut ReadBuf, shard: &Shard) -> io::Result<Next> {
        let mut continue_sent = false;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            match http::parse(buf.filled(), &mut headers) {
                Err(reject) => {
                    self.reject(reject).await?;
                    return Ok(Next::Close);
                }
                Ok(Parsed::Partial { expects_continue }) => {
                    if buf.filled().len() > MAX_BUFFERED {
                        self.reject(Reject::BodyTooLarge).await?;
                        return Ok(Next::Close);
                    }
                    if expects_continue && !continue_sent {
                        self.stream
                            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                            .await?;
                        continue_sent = true;
                    }
                    if buf.fill(&mut self.stream).await? == 0 {
                        return Ok(Next::Abort);
                    }
                }
                Ok(Parsed::Complete {
                    head,
                    body,
                    consumed,
                }) => {
                    let next = self.answer(&head, &body, shard).await?;
                    buf.consume(consumed);
                    continue_sent = false;
                    if next != Next::KeepAlive {
                        return Ok(next);
                    }
                }
            }
        }
    }

    /// The whole story of one request, top to bottom.
    async fn answer(
        &mut self,
        head: &http::Head<'_, '_>,
        body: &[u8],
        shard: &Shard,
    ) -> io::Result<Next> {
        let shared = &shard.shared;
        let path = head.path();
        let keep_alive = head.keep_alive;

        // 1. The control plane is for tests and scripts: not counted, not
        //    captured, never slowed or broken by knobs.
        if path.starts_with("/mock/") {
            return self.control(head, shared).await;
        }

        // 2. Record what arrived, before anything can fail.
        let counters = shared.record.shard(shard.index);
        counters.requests.fetch_add(1, Ordering::Relaxed);
        let _in_flight = shared.record.enter();
        if shared.record.is_capturing() {
            shared.record.capture(capture(head, body));
        }

        // 3. Knobs: server defaults, overridden by x-mock-* headers.
        let knobs = match resolve_knobs(head, shared) {
            Ok(knobs) => knobs,
            Err(bad) => {
                return self
                    .error(
                        400,
                        &bad.to_string(),
                        "invalid_request_error",
                        None,
                        keep_alive,
                        b"",
                    )
                    .await;
            }
        };

        // 4. Faults that replace the answer entirely.
        match knobs.error {
            Some(ErrorKind::Hang) => return self.hang().await,
            Some(ErrorKind::Reset) => {
                sleep(knobs.latency).await;
                return Ok(self.reset());
            }
            Some(ErrorKind::Malformed) => {
                sleep(knobs.latency).await;
                self.stream.write_all(http::MALFORMED_HEAD).await?;
                return Ok(Next::Close);
            }
            Some(
                status @ (ErrorKind::RateLimited | ErrorKind::Internal | ErrorKind::Unavailable),
            ) => {
                sleep(knobs.latency).await;
                if path == ANTHROPIC_PATH {
                    return self
                        .shaped_status(status, &knobs, keep_alive, anthropic::push_error)
                        .await;
                }
                if gemini::route(path).is_some() {
                    return self
                        .shaped_status(status, &knobs, keep_alive, gemini::push_error)
                        .await;
                }
                return self.injected_status(status, &knobs, keep_alive).await;
            }
            Some(ErrorKind::Cut | ErrorKind::StreamError | ErrorKind::Short) | None => {}
        }
        let cut = knobs.error == Some(ErrorKind::Cut);

        // 5. Route and read the JSON body.
        sleep(knobs.latency).await;
        if head.method == "POST" && path == ANTHROPIC_PATH {
            return self.anthropic(body, &knobs, shard, keep_alive, cut).await;
        }
        if head.method == "POST"
            && let Some((model, stream)) = gemini::route(path)
        {
            let model = model.to_owned();
            return self
                .gemini(body, &model, stream, &knobs, shard, keep_alive, cut)
                .await;
        }
        if knobs.error == Some(ErrorKind::StreamError) {
            return self
                .stream_error(keep_alive, &knobs, reply::push_error_event)
                .await;
        }
        let endpoint = match (head.method, Endpoint::from_path(path)) {
            ("POST", Some(endpoint)) => endpoint,
            _ => {
                let message = format!("Unknown request URL: {} {}. (mock)", head.method, path);
                self.scratch.clear();
                reply::push_error(
                    &mut self.scratch,
                    &message,
                    "invalid_request_error",
                    Some("not_found"),
                );
                return self
                    .send(404, "application/json", keep_alive, b"", cut)
                    .await;
            }
        };
        let Ok(request) = serde_json::from_slice::<RequestJson>(body) else {
            let message = "We could not parse the JSON body of your request. (mock)";
            return self
                .error(400, message, "invalid_request_error", None, keep_alive, b"")
                .await;
        };

        // 6. Answer.
        let model = request.model.as_deref().unwrap_or(DEFAULT_MODEL);
        let mut answer = Answer::new(endpoint, shard.index, shard.next_seq(), model);
        answer.prompt_tokens = reply::prompt_tokens(body.len());
        answer.reply_bytes = knobs.reply_bytes;
        answer.include_usage = request.include_usage();
        if let (Some(tools), Some(choice)) = (&request.tools, &request.tool_choice) {
            let forced = serde_json::json!({"tools": tools, "tool_choice": choice});
            answer.tool = anthropic::forced_tool(&forced);
        }
        self.scratch.clear();
        match endpoint {
            Endpoint::Embeddings => {
                answer.push_embeddings(&mut self.scratch, request.input_count());
                self.send(200, "application/json", keep_alive, b"", cut)
                    .await
            }
            _ if request.stream == Some(true) => {
                self.stream_answer(&answer, &knobs, keep_alive, cut).await
            }
            _ => {
                answer.push_body(&mut self.scratch);
                self.send(200, "application/json", keep_alive, b"", cut)
                    .await
            }
        }
    }

    /// `POST /v1/messages`: the Anthropic shape, whole or streamed, with a
    /// forced tool answered by a call to it.
    async fn anthropic(
        &mut self,
        body: &[u8],
        knobs: &Knobs,
        shard: &Shard,
        keep_alive: bool,
        cut: bool,
    ) -> io::Result<Next> {
        let Ok(request) = serde_json::from_slice::<serde_json::Value>(body) else {
            self.scratch.clear();
            anthropic::push_error(&mut self.scratch, 400, "invalid JSON body (mock)");
            return self
                .send(400, "application/json", keep_alive, b"", false)
                .await;
        };
        if knobs.error == Some(ErrorKind::StreamError) {
            return self
                .stream_error(keep_alive, knobs, anthropic::push_error_event)
                .await;
        }
        let message = anthropic::Message {
            id: format!("msg_mock-{}-{}", shard.index, shard.next_seq()),
            model: request
                .get("model")
                .and_then(|m| m.as_str())
                .unwrap_or(DEFAULT_MODEL)
                .to_owned(),
            prompt_tokens: reply::prompt_tokens(body.len()),
            reply_bytes: knobs.reply_bytes,
            tool: anthropic::forced_tool(&request),
        };
        self.scratch.clear();
        if request.get("stream").and_then(|s| s.as_bool()) != Some(true) {
            message.push_body(&mut self.scratch);
            return self
                .send(200, "application/json", keep_alive, b"", cut)
                .await;
        }
        let events = message.events(knobs.chunks);
        self.send_events(keep_alive, &events, knobs, cut).await
    }

    /// Gemini's `generateContent` (whole) or `streamGenerateContent` (SSE).
    #[expect(
        clippy::too_many_arguments,
        reason = "one answer's request, knobs and framing"
    )]
    async fn gemini(
        &mut self,
        body: &[u8],
        model: &str,
        stream: bool,
        knobs: &Knobs,
        shard: &Shard,
        keep_alive: bool,
        cut: bool,
    ) -> io::Result<Next> {
        let Ok(request) = serde_json::from_slice::<serde_json::Value>(body) else {
            self.scratch.clear();
            gemini::push_error(
                &mut self.scratch,
                400,
                "Invalid JSON payload received. (mock)",
            );
            return self
                .send(400, "application/json", keep_alive, b"", false)
                .await;
        };
        if knobs.error == Some(ErrorKind::StreamError) {
            return self
                .stream_error(keep_alive, knobs, gemini::push_error_event)
                .await;
        }
        let response = gemini::Response {
            id: format!("mock-{}-{}", shard.index, shard.next_seq()),
            model: model.to_owned(),
            prompt_tokens: reply::prompt_tokens(body.len()),
            reply_bytes: knobs.reply_bytes,
            call: gemini::forced_call(&request),
        };
        self.scratch.clear();
        if !stream {
            response.push_body(&mut self.scratch);
            return self
                .send(200, "application/json", keep_alive, b"", cut)
                .await;
        }
        let events = response.events(knobs.chunks);
        self.send_events(keep_alive, &events, knobs, cut).await
    }

    /// Starts a chunked SSE answer: its head, then the time to first token.
    async fn stream_head(&mut self, keep_alive: bool, knobs: &Knobs) -> io::Result<()> {
        self.out.clear();
        http::push_head(
            &mut self.out,
            200,
            "text/event-stream",
            BodyLen::Chunked,
            keep_alive,
            b"cache-control: no-cache\r\n",
        );
        if !knobs.ttft.is_zero() {
            self.flush().await?;
            sleep(knobs.ttft).await;
        }
        Ok(())
    }

    /// A chunked SSE answer of whole `events`, paced by the knobs; `cut`
    /// closes halfway.
    async fn send_events(
        &mut self,
        keep_alive: bool,
        events: &[Vec<u8>],
        knobs: &Knobs,
        cut: bool,
    ) -> io::Result<Next> {
        self.stream_head(keep_alive, knobs).await?;
        let cut_after = cut.then_some(events.len() / 2);
        for (i, event) in events.iter().enumerate() {
            if cut_after == Some(i) {
                self.flush().await?;
                return Ok(Next::Close);
            }
            if i > 0 && !knobs.chunk_interval.is_zero() {
                self.flush().await?;
                sleep(knobs.chunk_interval).await;
            }
            http::push_chunk(&mut self.out, event);
        }
        self.out.extend_from_slice(http::LAST_CHUNK);
        self.flush().await?;
        Ok(if keep_alive {
            Next::KeepAlive
        } else {
            Next::Close
        })
    }

    /// A 429, 500 or 503 in another provider's error shape: `push` writes
    /// the body for a status and message.
    async fn shaped_status(
        &mut self,
        kind: ErrorKind,
        knobs: &Knobs,
        keep_alive: bool,
        push: fn(&mut Vec<u8>, u16, &str),
    ) -> io::Result<Next> {
        let (status, message, extra) = match kind {
            ErrorKind::RateLimited => (
                429,
                "Rate limit exceeded (mock)",
                format!("retry-after: {}\r\n", knobs.retry_after_secs),
            ),
            ErrorKind::Unavailable => (503, "Overloaded (mock)", String::new()),
            _ => (500, "Internal server error (mock)", String::new()),
        };
        self.scratch.clear();
        push(&mut self.scratch, status, message);
        self.send(
            status,
            "application/json",
            keep_alive,
            extra.as_bytes(),
            false,
        )
        .await
    }

    /// `stream-error`: a 200 stream whose first and only event is an error.
    async fn stream_error(
        &mut self,
        keep_alive: bool,
        knobs: &Knobs,
        push_event: fn(&mut Vec<u8>),
    ) -> io::Result<Next> {
        let mut event = Vec::new();
        push_event(&mut event);
        self.send_events(keep_alive, &[event], knobs, false).await
    }

    /// `/mock/stats`, `/mock/reset`, `/mock/requests`.
    async fn control(&mut self, head: &http::Head<'_, '_>, shared: &Shared) -> io::Result<Next> {
        let keep_alive = head.keep_alive;
        let record = &shared.record;
        let body = match (head.method, head.path()) {
            ("GET", "/mock/stats") => record.stats_json(),
            ("POST", "/mock/reset") => {
                record.reset();
                b"{\"reset\":true}".to_vec()
            }
            ("GET", "/mock/requests") => record.captured_json(),
            (method, path) => {
                let message = format!("Unknown mock control URL: {method} {path}.");
                return self
                    .error(
                        404,
                        &message,
                        "invalid_request_error",
                        Some("not_found"),
                        keep_alive,
                        b"",
                    )
                    .await;
            }
        };
        self.scratch = body;
        self.send(200, "application/json", keep_alive, b"", false)
            .await
    }

    async fn injected_status(
        &mut self,
        kind: ErrorKind,
        knobs: &Knobs,
        keep_alive: bool,
    ) -> io::Result<Next> {
        match kind {
            ErrorKind::RateLimited => {
                let extra = format!("retry-after: {}\r\n", knobs.retry_after_secs);
                let message = "Rate limit reached for requests. (mock)";
                self.error(
                    429,
                    message,
                    "requests",
                    Some("rate_limit_exceeded"),
                    keep_alive,
                    extra.as_bytes(),
                )
                .await
            }
            ErrorKind::Unavailable => {
                let message = "The engine is currently overloaded, please try again later. (mock)";
                self.error(503, message, "server_error", None, keep_alive, b"")
                    .await
            }
            _ => {
                let message = "The server had an error while processing your request. (mock)";
                self.error(500, message, "server_error", None, keep_alive, b"")
                    .await
            }
        }
    }

    /// Sends an OpenAI-shaped error with Content-Length framing.
    async fn error(
        &mut self,
        status: u16,
        message: &str,
        kind: &str,
        code: Option<&str>,
        keep_alive: bool,
        extra: &[u8],
    ) -> io::Result<Next> {
        self.scratch.clear();
        reply::push_error(&mut self.scratch, message, kind, code);
        self.send(status, "application/json", keep_alive, extra, false)
            .await
    }

    /// Writes head + `scratch` as one response in one write. With `cut`, only
    /// the head and half the body leave, and the connection closes.
    async fn send(
        &mut self,
        status: u16,
        content_type: &str,
        keep_alive: bool,
        extra: &[u8],
        cut: bool,
    ) -> io::Result<Next> {
        self.out.clear();
        let len = self.scratch.len();
        http::push_head(
            &mut self.out,
            status,
            content_type,
            BodyLen::Known(len),
            keep_alive,
            extra,
        );
        let head_len = self.out.len();
        self.out.extend_from_slice(&self.scratch);
        if cut {
            self.stream
                .write_all(&self.out[..head_len + len / 2])
                .await?;
            return Ok(Next::Close);
        }
        self.stream.write_all(&self.out).await?;
        Ok(if keep_alive {
            Next::KeepAlive
        } else {
            Next::Close
        })
    }

    /// A chunked SSE answer. Bytes are gathered and leave in one write at each
    /// point where the mock has to wait, so a stream without delays is one
    /// write in all.
    async fn stream_answer(
        &mut self,
        answer: &Answer,
        knobs: &Knobs,
        keep_alive: bool,
        cut: bool,
    ) -> io::Result<Next> {
        // A tool call's arguments come in several fragments.
        let n = knobs.chunks.max(if answer.tool.is_some() { 3 } else { 1 });
        self.stream_head(keep_alive, knobs).await?;
        let cut_after = cut.then_some(n / 2);
        let short_after = (knobs.error == Some(ErrorKind::Short)).then_some(n / 2);
        for i in 0..n {
            if cut_after == Some(i) {
                self.flush().await?;
                return Ok(Next::Close);
            }
            if short_after == Some(i) {
                // A clean end of the body, short of the stream's own end.
                self.out.extend_from_slice(http::LAST_CHUNK);
                self.flush().await?;
                return Ok(if keep_alive {
                    Next::KeepAlive
                } else {
                    Next::Close
                });
            }
            if i > 0 && !knobs.chunk_interval.is_zero() {
                self.flush().await?;
                sleep(knobs.chunk_interval).await;
            }
            self.scratch.clear();
            answer.push_event(&mut self.scratch, i, n);
            http::push_chunk(&mut self.out, &self.scratch);
        }
        if answer.include_usage {
            self.scratch.clear();
            answer.push_usage_event(&mut self.scratch);
            http::push_chunk(&mut self.out, &self.scratch);
        }
        http::push_chunk(&mut self.out, DONE_EVENT);
        self.out.extend_from_slice(http::LAST_CHUNK);
        self.flush().await?;
        Ok(if keep_alive {
            Next::KeepAlive
        } else {
            Next::Close
        })
    }

    async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Answers a framing error; the connection closes afterwards.
    async fn reject(&mut self, reject: Reject) -> io::Result<()> {
        self.error(
            reject.status(),
            reject.message(),
            "invalid_request_error",
            None,
            false,
            b"",
        )
        .await
        .map(|_| ())
    }

    /// Never answers: reads and discards until the client gives up.
    async fn hang(&mut self) -> io::Result<Next> {
        let mut sink = [0u8; 4 * KIB];
        while self.stream.read(&mut sink).await? > 0 {}
        Ok(Next::Abort)
    }

    /// Arms SO_LINGER 0 so that dropping the socket sends RST, not FIN.
    fn reset(&mut self) -> Next {
        let _ = socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
        Next::Abort
    }

    /// FIN first, then read until the client closes (or [`LINGER`] passes),
    /// so the kernel never answers unread input with RST.
    async fn linger_close(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
        let stream = &mut self.stream;
        let drain = async {
            let mut sink = [0u8; 4 * KIB];
            while let Ok(n) = stream.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        };
        future::or(drain, sleep(LINGER)).await;
    }
}

/// Where the Anthropic Messages API answers.
const ANTHROPIC_PATH: &str = "/v1/messages";

/// The model named in answers when a request names none. The mock is lenient:
/// it answers whatever it is sent, so a gateway test can focus on one thing.
const DEFAULT_MODEL: &str = "mock-model";

/// The few request fields the mock reads; every other field is skipped.
#[derive(Deserialize)]
struct RequestJson<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    input: Option<serde_json::Value>,
    #[serde(default)]
    tools: Option<serde_json::Value>,
    #[serde(default)]
    tool_choice: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

impl RequestJson<'_> {
    fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }

    /// How many embeddings the request asks for: one per string, or one per
    /// token list; a single string or token list is one.
    fn input_count(&self) -> usize {
        match &self.input {
            Some(serde_json::Value::Array(items)) => match items.first() {
                Some(serde_json::Value::Number(_)) => 1,
                _ => items.len(),
            },
            _ => 1,
        }
    }
}

fn resolve_knobs(head: &http::Head<'_, '_>, shared: &Shared) -> Result<Knobs, BadKnob> {
    let mut knobs = shared.defaults;
    let mut error_from_header = false;
    for h in head.headers {
        knobs.apply_header(h.name, h.value)?;
        error_from_header |= h.name.eq_ignore_ascii_case(H_ERROR);
    }
    if !error_from_header && knobs.error.is_some() {
        let n = shared.error_seq.fetch_add(1, Ordering::Relaxed) + 1;
        if !knobs::rate_selects(n, shared.error_rate) {
            knobs.error = None;
        }
    }
    Ok(knobs)
}

fn capture(head: &http::Head<'_, '_>, body: &[u8]) -> CapturedRequest {
    CapturedRequest {
        method: head.method.to_owned(),
        path: head.target.to_owned(),
        headers: head
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_owned(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
    }
}

async fn sleep(d: Duration) {
    if !d.is_zero() {
        crate::event::sleep(d).await;
    }
}

/// The read side of a connection: bytes received but not yet consumed.
struct ReadBuf {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl ReadBuf {
    fn new() -> ReadBuf {
        ReadBuf {
            data: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
        }
    }

    fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            // Give back the memory of one huge request.
            if self.data.len() > SHRINK_ABOVE {
                self.data = vec![0; READ_CHUNK];
            }
        }
    }

    /// Reads more bytes; `Ok(0)` means the client closed.
    async fn fill(&mut self, stream: &mut TcpStream) -> io::Result<usize> {
        if self.data.len() - self.end < MIN_READ {
            if self.start > 0 {
                self.data.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.data.len() - self.end < MIN_READ {
                let grown = (self.data.len() * 2).max(self.end + READ_CHUNK);
                self.data.resize(grown, 0);
            }
        }
        let n = stream.read(&mut self.data[self.end..]).await?;
        self.end += n;
        Ok(n)
    }
}
