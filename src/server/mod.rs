//! The data plane inside one shard: connections, the pipeline, the relay.
//!
//! - [`conn`]: the per-connection loop (read head, read body, answer, repeat).
//! - [`pipeline`]: the one function that orders a request's stages.
//! - [`relay`]: the upstream exchange and the response relay with its usage tap.
//!
//! [`ShardCtx`] is everything a shard owns; it is `Rc`-shared by the shard's
//! tasks and never leaves its thread.

pub mod conn;
pub mod pipeline;
pub mod relay;

use crate::config::Config;
use crate::control::stats::ShardStats;
use crate::fasthash::FastMap;
use crate::http::request::HeadLimits;
use crate::record::RequestRecord;
use crate::upstream::Provider;
use crate::upstream::dns::Resolver;
use crate::upstream::pool::Pool;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

/// A live client connection as the drain logic sees it.
struct ConnEntry {
    /// Waiting for the next request with nothing buffered.
    idle: bool,
    /// Woken when a drain starts while the connection is idle.
    waker: Option<Waker>,
}

/// Connection entries by id; ids are reused after a connection ends.
#[derive(Default)]
struct Slab {
    entries: Vec<Option<ConnEntry>>,
    free: Vec<usize>,
    live: usize,
}

impl Slab {
    fn insert(&mut self, e: ConnEntry) -> usize {
        self.live += 1;
        match self.free.pop() {
            Some(i) => {
                self.entries[i] = Some(e);
                i
            }
            None => {
                self.entries.push(Some(e));
                self.entries.len() - 1
            }
        }
    }
    fn remove(&mut self, i: usize) {
        if let Some(slot) = self.entries.get_mut(i)
            && slot.take().is_some()
        {
            self.live -= 1;
            self.free.push(i);
        }
    }
    fn get_mut(&mut self, i: usize) -> Option<&mut ConnEntry> {
        self.entries.get_mut(i)?.as_mut()
    }
}

pub struct ShardCtx {
    pub shard: usize,
    pub config: Arc<Config>,
    pub limits: HeadLimits,
    pub providers: FastMap<String, Rc<Provider>>,
    pub pool: Pool,
    pub resolver: Arc<Resolver>,
    pub stats: RefCell<ShardStats>,
    pub draining: Cell<bool>,
    /// Prefix of `aigw-request-id`: process start and shard.
    pub id_prefix: String,
    next_request: Cell<u64>,
    /// Live connections: a slab indexed by connection id, with a free list.
    conns: RefCell<Slab>,
}

impl ShardCtx {
    pub fn new(
        shard: usize,
        config: Arc<Config>,
        resolver: Arc<Resolver>,
        boot_id: u32,
    ) -> ShardCtx {
        let providers = config
            .providers
            .values()
            .map(|p| (p.name.clone(), Rc::new(Provider::new(p.clone()))))
            .collect();
        ShardCtx {
            shard,
            limits: HeadLimits {
                max_head_bytes: config.limits.max_head_bytes,
                max_headers: config.limits.max_headers,
                max_body_bytes: config.limits.max_body_bytes,
            },
            pool: Pool::new(config.timeouts.upstream_idle),
            config,
            providers,
            resolver,
            stats: RefCell::new(ShardStats::default()),
            draining: Cell::new(false),
            id_prefix: format!("{boot_id:08x}-{shard}-"),
            next_request: Cell::new(1),
            conns: RefCell::new(Slab::default()),
        }
    }

    pub fn next_request_id(&self) -> u64 {
        let id = self.next_request.get();
        self.next_request.set(id + 1);
        id
    }

    /// The record is final: count it. (Logs will read it here too.)
    pub fn finish(&self, rec: &RequestRecord) {
        self.stats.borrow_mut().record(rec);
    }

    fn register(&self) -> u64 {
        self.stats.borrow_mut().counters.connections_accepted += 1;
        self.conns.borrow_mut().insert(ConnEntry {
            idle: true,
            waker: None,
        }) as u64
    }

    fn unregister(&self, id: u64) {
        self.conns.borrow_mut().remove(id as usize);
    }

    fn set_idle(&self, id: u64, idle: bool) {
        if let Some(e) = self.conns.borrow_mut().get_mut(id as usize) {
            e.idle = idle;
        }
    }

    pub fn open_connections(&self) -> usize {
        self.conns.borrow().live
    }

    /// Starts the drain: requests in flight finish with `Connection: close`;
    /// idle connections are woken and close.
    pub fn begin_drain(&self) {
        self.draining.set(true);
        let wakers: Vec<Waker> = self
            .conns
            .borrow_mut()
            .entries
            .iter_mut()
            .flatten()
            .filter(|e| e.idle)
            .filter_map(|e| e.waker.take())
            .collect();
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Resolves when a drain starts (used to interrupt an idle read).
    fn drain_started(&self, conn: u64) -> DrainStarted<'_> {
        DrainStarted { ctx: self, conn }
    }
}

struct DrainStarted<'a> {
    ctx: &'a ShardCtx,
    conn: u64,
}

impl Future for DrainStarted<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.ctx.draining.get() {
            return Poll::Ready(());
        }
        if let Some(e) = self.ctx.conns.borrow_mut().get_mut(self.conn as usize) {
            e.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}
