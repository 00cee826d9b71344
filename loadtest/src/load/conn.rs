//! One load connection: pace, send, read, record. The heart of aigw-load.
//!
//! Owns: one keep-alive TCP connection to one target, the pacing of its
//! requests (open or closed loop) and what each request's latency is measured
//! from. Does not own the schedule's shape (`RunClock`, set by `run.rs`) or
//! aggregation (`stats.rs`, `progress.rs`).
//!
//! Open loop: connection `j` of `n` is asked to send at `start + j/rate + k*n/rate`.
//! When a response is late, the next request is already due and goes out at
//! once; its latency is still counted from when it was *due*, so a server
//! stall shows up in every request that queued behind it (coordinated
//! omission corrected, like wrk2 and vegeta). Closed loop: the next request
//! leaves when the previous one completes; latency is counted from the send.

use super::body::RequestFactory;
use super::response::{BodyDecoder, Feed, HeadParse, ProtocolError, SseScanner, parse_head};
use super::sock;
use super::stats::{ErrorKind, Stats, micros};
use crate::event::{Stream, sleep};
use std::cell::RefCell;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Bytes read per `read` call; also the largest response head we accept.
pub const READ_BUFFER: usize = 64 * 1024;
/// Bytes of an error response's body kept to explain the first failure.
pub const ERROR_BODY_SNIPPET: usize = 200;
/// Pause after a failed connect, so a refused port does not become a busy loop.
pub const CONNECT_BACKOFF: Duration = Duration::from_millis(10);

/// When a run's phases start and end; shared by all executors.
#[derive(Debug, Clone, Copy)]
pub struct RunClock {
    /// First request (warm-up begins).
    pub start: Instant,
    /// Requests due (open) or sent (closed) from here on are measured.
    pub measure_start: Instant,
    /// No request is due or sent from here on.
    pub end: Instant,
}

/// Open or closed loop, per connection.
#[derive(Debug, Clone, Copy)]
pub enum Pacing {
    Closed,
    /// First due time and the interval between this connection's requests.
    Open {
        first: Instant,
        every: Duration,
    },
}

/// Per-executor counters the connections record into; `warmup` feeds only the
/// progress line, `measured` the report.
#[derive(Default)]
pub struct ShardRecorder {
    pub warmup: Stats,
    pub measured: Stats,
    /// Requests written but not yet answered, across this executor's connections.
    pub in_flight: usize,
}

/// What one connection needs.
pub struct Connection {
    pub addr: SocketAddr,
    pub requests: RequestFactory,
    pub pacing: Pacing,
    pub clock: RunClock,
    pub timeout: Duration,
    /// Socket tries before waiting on it (0: wait at once).
    pub spin: usize,
    /// Measure server-sent events (time to first event, gaps).
    pub stream: bool,
    pub recorder: Rc<RefCell<ShardRecorder>>,
}

/// How an exchange failed.
enum Failure {
    Io(io::Error),
    Protocol(ProtocolError),
    /// The server closed before answering; the connection is reopened.
    Closed,
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Io(e)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Io(e) => write!(f, "{e}"),
            Failure::Protocol(e) => write!(f, "bad response: {e}"),
            Failure::Closed => f.write_str("server closed the connection before answering"),
        }
    }
}

impl Failure {
    fn kind(&self) -> ErrorKind {
        match self {
            Failure::Io(e) if e.kind() == io::ErrorKind::TimedOut => ErrorKind::Timeout,
            Failure::Io(_) | Failure::Closed => ErrorKind::Io,
            Failure::Protocol(_) => ErrorKind::Protocol,
        }
    }
}

/// Runs one connection until the run's end; returns after its last response.
pub async fn run_connection(mut c: Connection) {
    let mut buf = vec![0u8; READ_BUFFER];
    let mut stream: Option<Stream> = None;

    let mut due = match c.pacing {
        Pacing::Open { first, .. } => first,
        Pacing::Closed => c.clock.start,
    };
    loop {
        // Pace: the origin is when this request counts as sent.
        let origin = match c.pacing {
            Pacing::Open { every, .. } => {
                let now = Instant::now();
                // Nothing is sent after the end: requests still queued then
                // are counted below as unsent.
                if due >= c.clock.end || now >= c.clock.end {
                    break;
                }
                if due > now {
                    sleep(due - now).await;
                }
                let origin = due;
                due += every;
                origin
            }
            Pacing::Closed => {
                let now = Instant::now();
                if now >= c.clock.end {
                    break;
                }
                if now < c.clock.start {
                    sleep(c.clock.start - now).await;
                    Instant::now()
                } else {
                    now
                }
            }
        };
        let measured = origin >= c.clock.measure_start;

        if stream.is_none() {
            match connect(c.addr, c.timeout).await {
                Ok(s) => stream = Some(s),
                Err(e) => {
                    record(&c, measured, |s| {
                        s.record_failure(ErrorKind::Connect);
                        s.note_first_error(|| format!("connect to {}: {e}", c.addr));
                    });
                    sleep(CONNECT_BACKOFF).await;
                    continue;
                }
            }
        }
        if matches!(c.pacing, Pacing::Open { .. }) {
            let lag = micros(Instant::now().saturating_duration_since(origin));
            record(&c, measured, |s| s.send_lag.saturating_record(lag));
        }
        let conn = stream.as_ref().expect("connected above");
        let request = c.requests.next_request();
        let mut sse = c.stream.then(SseState::default);
        c.recorder.borrow_mut().in_flight += 1;
        let result = exchange(conn, request, &mut buf, sse.as_mut(), c.spin, c.timeout).await;
        c.recorder.borrow_mut().in_flight -= 1;
        match result {
            Ok(done) => {
                let latency = done.finished.saturating_duration_since(origin);
                record(&c, measured, |s| {
                    s.record_response(done.status, latency);
                    if done.status >= 400 {
                        s.note_first_error(|| {
                            let body = String::from_utf8_lossy(&done.error_body);
                            format!("HTTP {}: {}", done.status, body.trim())
                        });
                    }
                    s.body_bytes += done.body_bytes;
                    if let Some(sse) = &sse {
                        sse.record_into(s, origin);
                    }
                });
                if !done.keep_alive {
                    stream = None;
                }
            }
            Err(failure) => {
                record(&c, measured, |s| {
                    s.record_failure(failure.kind());
                    s.note_first_error(|| failure.to_string());
                });
                stream = None;
            }
        }
    }
    // Requests that were due before the end but never left because this
    // connection was still busy: offered load the server did not get.
    if let Pacing::Open { every, .. } = c.pacing
        && due < c.clock.end
        && !every.is_zero()
    {
        let missed = (c.clock.end - due).as_nanos().div_ceil(every.as_nanos()) as u64;
        c.recorder.borrow_mut().measured.unsent += missed;
    }
}

fn record(c: &Connection, measured: bool, f: impl FnOnce(&mut Stats)) {
    let mut rec = c.recorder.borrow_mut();
    f(if measured {
        &mut rec.measured
    } else {
        &mut rec.warmup
    });
}

async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Stream> {
    Stream::connect(addr, timeout).await
}

/// A complete response.
struct Done {
    status: u16,
    keep_alive: bool,
    finished: Instant,
    body_bytes: u64,
    /// The start of the body of a response with status >= 400.
    error_body: Vec<u8>,
}

/// Event times of one streamed response.
#[derive(Default)]
struct SseState {
    scanner: SseScanner,
    first: Option<Instant>,
    last: Option<Instant>,
    /// Gaps between consecutive events, µs; events that arrive in one read
    /// have a gap of 0 (the client saw them together).
    gaps: Vec<u64>,
    events: u64,
}

impl SseState {
    fn on_body(&mut self, data: &[u8], now: Instant) {
        let ended = self.scanner.scan(data);
        for _ in 0..ended {
            self.events += 1;
            if self.first.is_none() {
                self.first = Some(now);
            }
            if let Some(last) = self.last {
                self.gaps.push(micros(now - last));
            }
            self.last = Some(now);
        }
    }

    fn record_into(&self, s: &mut Stats, origin: Instant) {
        if let Some(first) = self.first {
            s.ttft
                .saturating_record(micros(first.saturating_duration_since(origin)));
        }
        for &g in &self.gaps {
            s.gap.saturating_record(g);
        }
        s.events += self.events;
    }
}

/// Writes one request and reads its whole response.
async fn exchange(
    conn: &Stream,
    request: &[u8],
    buf: &mut [u8],
    mut sse: Option<&mut SseState>,
    spin: usize,
    timeout: Duration,
) -> Result<Done, Failure> {
    // Each read and write may wait `timeout`.
    let deadline = || Instant::now() + timeout;
    conn.write_all_before(request, deadline()).await?;
    let mut filled = 0;
    let (head, head_len) = loop {
        let n = sock::read(conn, &mut buf[filled..], spin, deadline()).await?;
        if n == 0 {
            return Err(Failure::Closed);
        }
        filled += n;
        match parse_head(&buf[..filled]).map_err(Failure::Protocol)? {
            HeadParse::Complete(head, len) if head.status >= 200 => break (head, len),
            // An interim 1xx response: drop it and read the real one.
            HeadParse::Complete(_, len) => {
                buf.copy_within(len..filled, 0);
                filled -= len;
            }
            HeadParse::Partial if filled == buf.len() => {
                return Err(Failure::Protocol(ProtocolError("response head too large")));
            }
            HeadParse::Partial => {}
        }
    };
    let mut decoder = BodyDecoder::new(head.framing);
    let mut body_bytes = 0u64;
    let mut error_body = Vec::new();
    let keep_error_body = head.status >= 400;
    let mut feed = |decoder: &mut BodyDecoder, bytes: &[u8]| {
        // Event times only matter for streams; skip the clock read otherwise.
        let now = sse.is_some().then(Instant::now);
        decoder.feed(bytes, &mut |data: &[u8]| {
            body_bytes += data.len() as u64;
            if keep_error_body && error_body.len() < ERROR_BODY_SNIPPET {
                let room = ERROR_BODY_SNIPPET - error_body.len();
                error_body.extend_from_slice(&data[..data.len().min(room)]);
            }
            if let (Some(sse), Some(now)) = (sse.as_deref_mut(), now) {
                sse.on_body(data, now);
            }
        })
    };
    let mut state = feed(&mut decoder, &buf[head_len..filled]).map_err(Failure::Protocol)?;
    while state == Feed::NeedMore {
        let n = sock::read(conn, buf, spin, deadline()).await?;
        if n == 0 {
            decoder.finish_at_eof().map_err(Failure::Protocol)?;
            return Ok(Done {
                status: head.status,
                keep_alive: false,
                finished: Instant::now(),
                body_bytes,
                error_body,
            });
        }
        state = feed(&mut decoder, &buf[..n]).map_err(Failure::Protocol)?;
    }
    Ok(Done {
        status: head.status,
        keep_alive: head.keep_alive,
        finished: Instant::now(),
        body_bytes,
        error_body,
    })
}
