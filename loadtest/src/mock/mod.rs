//! `aigw-mock`: a fast, scriptable, OpenAI-compatible mock LLM provider.
//!
//! Owns the server's lifecycle: typed configuration ([`MockConfig`]), the
//! shard threads (one epoll event loop each, [`crate::event`], all listening
//! on one port via SO_REUSEPORT), and the [`MockServer`] handle that tests
//! hold. It sits where
//! a real provider would: at the far end of the gateway's upstream connection.
//!
//! Layout, in the order a request meets it:
//! * `http.rs`: request framing and response framing (wire limits live here);
//! * `conn.rs`: one connection's pipeline (record, knobs, faults, answer);
//! * `knobs.rs`: latency/stream/fault knobs, defaults and `x-mock-*` headers;
//! * `reply.rs`: the JSON and SSE bytes of every OpenAI-shaped answer;
//! * `anthropic.rs`: the same for the Anthropic Messages API, and forced tool calls;
//! * `gemini.rs`: the same for Gemini's `generateContent`;
//! * `record.rs`: request/connection counters and the capture log;
//! * `shutdown.rs`: closing a shard's connections when the server stops;
//! * `cli.rs`: `aigw-mock` command-line flags into a [`MockConfig`].
//!
//! Base URL `http://ADDR/v1` (OpenAI shape; `POST /v1/messages` answers in
//! the Anthropic shape, `/v1beta/models/{model}:generateContent` and
//! `:streamGenerateContent` in Gemini's); `/mock/stats`, `/mock/reset` and
//! `/mock/requests` are the control plane.
//!
//! In a test:
//!
//! ```
//! use aigw_loadtest::mock::{MockConfig, MockServer};
//! use std::time::Duration;
//!
//! let mock = MockServer::start(MockConfig {
//!     latency: Duration::from_millis(5),
//!     ..MockConfig::default()
//! })?;
//! let upstream = mock.base_url(); // "http://127.0.0.1:PORT/v1"
//! // ... point the gateway at `upstream`, send it requests, then:
//! assert_eq!(mock.requests_seen(), 0);
//! assert!(mock.captured().iter().all(|r| r.header("authorization").is_some()));
//! # Ok::<(), std::io::Error>(())
//! ```

mod anthropic;
mod cli;
mod conn;
mod gemini;
mod http;
mod knobs;
mod record;
mod reply;
mod shutdown;

use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use crate::event::{self, Listener};
use futures_lite::future;

pub use cli::{Command, USAGE, parse_args};
pub use knobs::{
    ErrorKind, MAX_CHUNKS, MAX_DELAY_MS, MAX_REPLY_BYTES, MAX_RETRY_AFTER_SECS, UnknownErrorKind,
};
pub use record::{CAPTURE_CAPACITY, CapturedRequest};
pub use reply::{EMBEDDING_DIMS, completion_tokens, prompt_tokens, reply_text};

/// Most shards one server may run. Each is a thread with its own event
/// loop; more than the cores of any machine we use is a mistake.
pub const MAX_SHARDS: usize = 256;

/// Pause after a failed accept (e.g. out of file descriptors) so the shard
/// does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// One freeze of the whole server, for testing that a load generator reports
/// the stall honestly (no coordinated omission).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stall {
    /// When the freeze starts, counted from server start.
    pub after: Duration,
    /// How long every shard's thread is blocked.
    pub duration: Duration,
}

/// Everything a mock server needs. Every knob here is the default for every
/// request; `x-mock-*` request headers override them one request at a time.
#[derive(Clone, Debug, PartialEq)]
pub struct MockConfig {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Number of shards (threads), at least 1.
    pub shards: usize,
    /// CPUs to pin shards to, round-robin; empty leaves them unpinned.
    pub cpus: Vec<usize>,
    /// Wait before the response head (`x-mock-latency-ms`).
    pub latency: Duration,
    /// Streams: wait between the head and the first event (`x-mock-ttft-ms`).
    pub ttft: Duration,
    /// Streams: content events per answer (`x-mock-chunks`).
    pub chunks: u32,
    /// Streams: wait between content events (`x-mock-chunk-interval-ms`).
    pub chunk_interval: Duration,
    /// Bytes of assistant text per answer (`x-mock-reply-bytes`).
    pub reply_bytes: usize,
    /// Fault to inject (`x-mock-error`).
    pub error: Option<ErrorKind>,
    /// Fraction of requests, 0..=1, that the configured `error` applies to.
    /// A per-request `x-mock-error` header always applies.
    pub error_rate: f64,
    /// `Retry-After` seconds sent with a 429 (`x-mock-retry-after`).
    pub retry_after_secs: u32,
    /// One whole-server freeze, if any.
    pub stall: Option<Stall>,
    /// Keep the last [`CAPTURE_CAPACITY`] requests for inspection.
    pub capture: bool,
}

impl Default for MockConfig {
    fn default() -> MockConfig {
        MockConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            shards: 1,
            cpus: Vec::new(),
            latency: Duration::ZERO,
            ttft: Duration::ZERO,
            chunks: 8,
            chunk_interval: Duration::ZERO,
            reply_bytes: 64,
            error: None,
            error_rate: 1.0,
            retry_after_secs: 1,
            stall: None,
            capture: true,
        }
    }
}

impl MockConfig {
    /// Checks every limit once; after this, the knobs are trusted.
    fn knobs(&self) -> io::Result<knobs::Knobs> {
        let invalid = |what: String| Err(io::Error::new(io::ErrorKind::InvalidInput, what));
        if self.shards == 0 || self.shards > MAX_SHARDS {
            return invalid(format!(
                "shards must be 1..={MAX_SHARDS}, got {}",
                self.shards
            ));
        }
        let max_delay = Duration::from_millis(MAX_DELAY_MS);
        for (name, d) in [
            ("latency", self.latency),
            ("ttft", self.ttft),
            ("chunk interval", self.chunk_interval),
        ] {
            if d > max_delay {
                return invalid(format!("{name} {d:?} exceeds {max_delay:?}"));
            }
        }
        if self.chunks == 0 || self.chunks > MAX_CHUNKS {
            return invalid(format!(
                "chunks must be 1..={MAX_CHUNKS}, got {}",
                self.chunks
            ));
        }
        if self.reply_bytes > MAX_REPLY_BYTES {
            return invalid(format!("reply bytes must be at most {MAX_REPLY_BYTES}"));
        }
        if self.retry_after_secs > MAX_RETRY_AFTER_SECS {
            return invalid(format!(
                "retry-after must be at most {MAX_RETRY_AFTER_SECS} s"
            ));
        }
        if !(0.0..=1.0).contains(&self.error_rate) {
            return invalid(format!(
                "error rate must be in 0..=1, got {}",
                self.error_rate
            ));
        }
        Ok(knobs::Knobs {
            latency: self.latency,
            ttft: self.ttft,
            chunks: self.chunks,
            chunk_interval: self.chunk_interval,
            reply_bytes: self.reply_bytes,
            error: self.error,
            retry_after_secs: self.retry_after_secs,
        })
    }
}

/// State shared by all shards of one server (nothing is global, so many
/// servers can run in one test process).
#[derive(Debug)]
struct Shared {
    defaults: knobs::Knobs,
    error_rate: f64,
    /// Counts requests that the configured error could apply to, for
    /// `error_rate`.
    error_seq: AtomicU64,
    record: record::Record,
}

// Tests keep servers in statics and move them across threads.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<MockServer>();
    assert_send_sync::<MockConfig>();
    assert_send_sync::<CapturedRequest>();
};

/// A running mock server. Dropping it stops every shard and joins its thread.
pub struct MockServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// Dropping the sender wakes every shard's accept loop to stop.
    stop: Option<flume::Sender<()>>,
    shards: Vec<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for MockServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockServer")
            .field("addr", &self.addr)
            .field("shards", &self.shards.len())
            .finish()
    }
}

impl MockServer {
    /// Starts the shards and returns once every one is listening.
    ///
    /// With port 0 the first shard picks the port and the others bind the same
    /// one (every listener sets SO_REUSEPORT).
    pub fn start(cfg: MockConfig) -> io::Result<MockServer> {
        let defaults = cfg.knobs()?;
        let shared = Arc::new(Shared {
            defaults,
            error_rate: cfg.error_rate,
            error_seq: AtomicU64::new(0),
            record: record::Record::new(cfg.shards, cfg.capture),
        });
        let (stop_tx, stop_rx) = flume::bounded::<()>(1);
        let mut server = MockServer {
            addr: cfg.listen,
            shared,
            stop: Some(stop_tx),
            shards: Vec::with_capacity(cfg.shards),
        };
        for index in 0..cfg.shards {
            // On failure `server` is dropped, which stops and joins the shards
            // already started.
            server.addr = server.start_shard(index, &cfg, stop_rx.clone())?;
        }
        Ok(server)
    }

    fn start_shard(
        &mut self,
        index: usize,
        cfg: &MockConfig,
        stop: flume::Receiver<()>,
    ) -> io::Result<SocketAddr> {
        let cpu = match cfg.cpus.as_slice() {
            [] => None,
            cpus => Some(cpus[index % cpus.len()]),
        };
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let shard = ShardStart {
            index,
            addr: self.addr,
            shared: Arc::clone(&self.shared),
            stop,
            stall: cfg.stall,
            ready: ready_tx,
        };
        let handle = std::thread::Builder::new()
            .name(format!("aigw-mock-{index}"))
            .spawn(move || {
                if let Some(cpu) = cpu
                    && let Err(e) = event::pin_to_cpu(cpu)
                {
                    let _ = shard.ready.send(Err(io::Error::other(format!(
                        "cannot pin to CPU {cpu}: {e}"
                    ))));
                    return;
                }
                event::block_on(shard.run());
            })?;
        match ready_rx.recv() {
            Ok(Ok(addr)) => {
                self.shards.push(handle);
                Ok(addr)
            }
            Ok(Err(e)) => {
                let _ = handle.join();
                Err(e)
            }
            // The thread died before its shard could report.
            Err(_) => {
                let _ = handle.join();
                Err(io::Error::other("mock shard exited during startup"))
            }
        }
    }

    /// The bound address (with the real port when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT/v1`, the OpenAI base URL of this mock.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Data-plane requests answered or attempted since start or last reset.
    pub fn requests_seen(&self) -> u64 {
        self.shared.record.requests()
    }

    /// The most data-plane requests answered at once (capture on; streams
    /// count until their last byte is written).
    pub fn max_in_flight(&self) -> u64 {
        self.shared.record.max_in_flight()
    }

    /// TCP connections accepted since start or last reset.
    pub fn connections_seen(&self) -> u64 {
        self.shared.record.connections()
    }

    /// The last [`CAPTURE_CAPACITY`] data-plane requests, oldest first.
    pub fn captured(&self) -> Vec<CapturedRequest> {
        self.shared.record.captured()
    }

    /// Zeroes the counters and empties the capture log.
    pub fn reset(&self) {
        self.shared.record.reset();
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        // Disconnecting the channel wakes every accept loop; an executor
        // whose main future returns drops its connection tasks, closing
        // their sockets.
        self.stop.take();
        for handle in self.shards.drain(..) {
            let _ = handle.join();
        }
    }
}

/// What one shard thread is given.
struct ShardStart {
    index: usize,
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: flume::Receiver<()>,
    stall: Option<Stall>,
    ready: std::sync::mpsc::SyncSender<io::Result<SocketAddr>>,
}

impl ShardStart {
    /// Binds, reports readiness, then accepts until stopped.
    async fn run(self) {
        let listener = match Listener::bind(self.addr) {
            Ok(listener) => listener,
            Err(e) => {
                let _ = self.ready.send(Err(e));
                return;
            }
        };
        match listener.local_addr() {
            Ok(addr) => {
                let _ = self.ready.send(Ok(addr));
            }
            Err(e) => {
                let _ = self.ready.send(Err(e));
                return;
            }
        }
        if let Some(stall) = self.stall {
            event::spawn(async move {
                event::sleep(stall.after).await;
                // Deliberately block the executor thread: everything on this
                // shard freezes, as on a descheduled or swapping provider.
                std::thread::sleep(stall.duration);
            })
            .detach();
        }
        let shard = Rc::new(conn::Shard::new(self.index, self.shared));
        let stop_connections = Rc::new(shutdown::StopSignal::default());
        let open = Rc::new(shutdown::Open::default());
        let mut stopped = pin!(self.stop.recv_async());
        loop {
            let accepted = future::or(async { Some(listener.accept().await) }, async {
                let _ = stopped.as_mut().await;
                None
            })
            .await;
            match accepted {
                None => break,
                Some(Ok(stream)) => {
                    let pass = open.enter();
                    let shard = Rc::clone(&shard);
                    let stop = Rc::clone(&stop_connections);
                    event::spawn(async move {
                        future::or(conn::serve(stream, shard), stop.stopped()).await;
                        drop(pass);
                    })
                    .detach();
                }
                Some(Err(_)) => event::sleep(ACCEPT_BACKOFF).await,
            }
        }
        // End every connection (dropping its socket) and wait until they
        // have, so no socket outlives the server handle.
        drop(listener);
        stop_connections.trigger();
        open.closed().await;
    }
}
