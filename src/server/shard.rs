//! What one shard owns: [`ShardCtx`], `Rc`-shared by the shard's tasks, never
//! leaving its thread. Config, providers, the upstream pool, the stats
//! recorder, request ids, and the live-connection slab the drain walks.
//! Below every other file of `server/`: it imports none of them.

use crate::auth::{Registry, ShardKeys};
use crate::budget::{Budgets, ShardBudgets};
use crate::cache::ShardCache;
use crate::config::Config;
use crate::cost::PriceTable;
use crate::http::request::HeadLimits;
use crate::limit::{Limiter, ShardLimiter};
use crate::logqueue::{LogQueue, Sent};
use crate::providers::{self, Providers};
use crate::record::RequestRecord;
use crate::reqid::{IdGen, RequestId, WallClock};
use crate::stats::{Gauges, ShardStats, Snapshot};
use crate::tally::Tally;
use crate::targets::{self, Routes};
use crate::upstream::dns::Resolver;
use crate::upstream::pool::Pool;
use std::cell::{Cell, RefCell, RefMut};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

/// A live client connection as the drain logic sees it.
struct ConnEntry {
    /// The client socket (open while the entry is registered).
    fd: std::os::fd::RawFd,
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

/// What every shard shares with the others and the control plane: the key
/// table, the rate-limit counts, the budgets' spend.
#[derive(Clone)]
pub struct Shared {
    pub keys: Arc<Registry>,
    pub limiter: Arc<Limiter>,
    pub budgets: Arc<Budgets>,
}

pub struct ShardCtx {
    pub shard: usize,
    /// The running config: replaced whole on a reload; a request holds the
    /// one it started with (`Rc`, this shard's own copy: no shared refcount).
    config: RefCell<Rc<Config>>,
    limits: Cell<HeadLimits>,
    providers: RefCell<Rc<Providers>>,
    /// The routes over those providers, with their cooldown state.
    routes: RefCell<Rc<Routes>>,
    pub pool: Pool,
    pub resolver: Arc<Resolver>,
    stats: RefCell<ShardStats>,
    /// Client connections accepted since start (a gauge, not a request count).
    accepted: Cell<u64>,
    /// Requests between arrival and their record.
    in_flight: Cell<u64>,
    /// Event streams being relayed.
    streams: Cell<u64>,
    pub draining: Cell<bool>,
    /// The drain ran out of time: requests still running are being stopped.
    pub stopping: Cell<bool>,
    /// Request ids (UUIDv7) and the shard's cheap randomness (log sampling).
    ids: RefCell<IdGen>,
    clock: WallClock,
    /// The log's shared copies of paths and user agents.
    interned: RefCell<crate::record::Interner>,
    /// Request bodies read lately (with the cache on, where they repeat).
    scans: RefCell<crate::json::ScanMemo>,
    /// Metadata headers read lately (`controls::read`).
    metadata_memo: RefCell<crate::record::MetadataMemo>,
    /// Finished records the request log keeps go here (`None`: logs are off).
    log: Option<LogQueue>,
    /// The requests the log keeps no row of (sampled out, dropped, or
    /// `collect-log: false`), until the next hand-over to the log thread
    /// (every `logs.flush_interval`).
    tally: RefCell<Tally>,
    /// Live connections: a slab indexed by connection id, with a free list.
    conns: RefCell<Slab>,
    /// This shard's part of the response cache (`None`: the cache is off).
    cache: Option<ShardCache>,
    /// This shard's copy of the gateway key table.
    keys: ShardKeys,
    /// The rate limits: this shard's leases of the shared counts.
    limiter: ShardLimiter,
    /// The budgets: this shard's handles on the shared spend.
    budgets: ShardBudgets,
    shared_budgets: Arc<Budgets>,
    /// The price table (shipped, with the config's prices over it).
    prices: RefCell<Rc<PriceTable>>,
    /// Reloads applied (a request notes the generation it began in).
    generation: Cell<u64>,
    /// The configs the last reloads replaced, by their generation.
    replaced: RefCell<std::collections::VecDeque<(u64, Rc<Config>)>>,
}

/// Replaced configs a shard keeps: a request in flight across more reloads
/// than this settles into its own rules only.
const REPLACED_KEPT: usize = 8;

impl ShardCtx {
    pub fn new(
        shard: usize,
        config: Arc<Config>,
        resolver: Arc<Resolver>,
        log: Option<LogQueue>,
        cache: Option<ShardCache>,
        shared: Shared,
    ) -> ShardCtx {
        let Shared {
            keys,
            limiter,
            budgets,
        } = shared;
        let config = Rc::new(Config::clone(&config));
        let limiter = ShardLimiter::new(limiter, &config.rate_limits);
        let config_prices = config.prices.clone();
        let budget_rules = config.budgets.clone();
        let built = providers::build(&config);
        let routes = targets::build(&config, &built);
        let mut ids = IdGen::new(shard);
        let interned = crate::record::Interner::new(ids.next_u64());
        let tally = Tally::new(ids.next_u64());
        let mut stats = ShardStats::default();
        stats.reserve_metadata(config_metadata_fields(&config));
        ShardCtx {
            shard,
            limits: Cell::new(head_limits(&config)),
            pool: Pool::new(config.timeouts.upstream_idle),
            routes: RefCell::new(Rc::new(routes)),
            providers: RefCell::new(Rc::new(built)),
            config: RefCell::new(config),
            resolver,
            stats: RefCell::new(stats),
            accepted: Cell::new(0),
            in_flight: Cell::new(0),
            streams: Cell::new(0),
            draining: Cell::new(false),
            stopping: Cell::new(false),
            interned: RefCell::new(interned),
            scans: RefCell::new(crate::json::ScanMemo::default()),
            metadata_memo: RefCell::new(crate::record::MetadataMemo::new()),
            ids: RefCell::new(ids),
            clock: WallClock::new(),
            log,
            tally: RefCell::new(tally),
            conns: RefCell::new(Slab::default()),
            cache,
            keys: ShardKeys::new(keys),
            limiter,
            budgets: ShardBudgets::new(budgets.clone(), &budget_rules),
            shared_budgets: budgets,
            prices: RefCell::new(Rc::new(PriceTable::build(&config_prices))),
            generation: Cell::new(0),
            replaced: RefCell::new(std::collections::VecDeque::new()),
        }
    }

    /// The budgets.
    pub fn budgets(&self) -> &ShardBudgets {
        &self.budgets
    }

    /// The shared spend (where alerts are counted).
    pub fn shared_budgets(&self) -> &Budgets {
        &self.shared_budgets
    }

    /// The running price table.
    pub fn prices(&self) -> Rc<PriceTable> {
        self.prices.borrow().clone()
    }

    /// The rate limits.
    pub fn limiter(&self) -> &ShardLimiter {
        &self.limiter
    }

    /// The gateway keys (refreshed when a reload or the admin socket changed them).
    pub fn keys(&self) -> &ShardKeys {
        &self.keys
    }

    /// The response cache, when it is on.
    pub fn cache(&self) -> Option<&ShardCache> {
        self.cache.as_ref()
    }

    /// The running config (a request keeps the one it started with).
    pub fn config(&self) -> Rc<Config> {
        self.config.borrow().clone()
    }

    /// The running providers.
    pub fn providers(&self) -> Rc<Providers> {
        self.providers.borrow().clone()
    }

    /// A uniform random number in `0..n` from the shard's cheap randomness
    /// (weighted routes, retry jitter).
    pub fn random_below(&self, n: u64) -> u64 {
        self.ids.borrow_mut().below(n)
    }

    /// The running routes.
    pub fn routes(&self) -> Rc<Routes> {
        self.routes.borrow().clone()
    }

    pub fn limits(&self) -> HeadLimits {
        self.limits.get()
    }

    /// Applies a reloaded config: new requests see it at once, requests in
    /// flight finish with the one they started with. Pooled connections to a
    /// provider whose address or trust changed (or that is gone) are closed.
    pub fn apply(&self, new: &Config) {
        let new = Rc::new(new.clone());
        let old = self.config();
        for (name, p) in &old.providers {
            // Keys follow addresses: a moved provider's new key holds nothing
            // yet; its old key's connections are closed now (and any returned
            // later by requests in flight are never taken, and expire).
            let key = providers::pool_key(p);
            if new.providers.get(name).map(providers::pool_key) != Some(key.clone()) {
                self.pool.forget(&key);
            }
        }
        self.pool.set_max_idle(new.timeouts.upstream_idle);
        self.limits.set(head_limits(&new));
        self.limiter.set_rules(&new.rate_limits);
        self.budgets.set_rules(&new.budgets);
        self.stats
            .borrow_mut()
            .reserve_metadata(config_metadata_fields(&new));
        *self.prices.borrow_mut() = Rc::new(PriceTable::build(&new.prices));
        let providers = providers::build(&new);
        *self.routes.borrow_mut() = Rc::new(targets::build(&new, &providers));
        *self.providers.borrow_mut() = Rc::new(providers);
        *self.config.borrow_mut() = new;
        let mut replaced = self.replaced.borrow_mut();
        if replaced.len() == REPLACED_KEPT {
            replaced.pop_front();
        }
        replaced.push_back((self.generation.get(), old));
        self.generation.set(self.generation.get() + 1);
    }

    /// A request that began before a reload: the rate limits and budgets the
    /// reload brought in were rebuilt from the log before its row was
    /// written, so it counts into them now, as its row would have (its own
    /// rules it settled already).
    fn carry_over(&self, rec: &RequestRecord) {
        let Some(provider) = rec.provider.as_deref() else {
            return;
        };
        let replaced = self.replaced.borrow();
        let Some((_, began)) = replaced.iter().find(|(g, _)| *g == rec.generation) else {
            return;
        };
        let now = self.config();
        let rates = crate::limit::fresh_rules(&began.rate_limits, &now.rate_limits);
        let budgets = crate::budget::fresh_rules(&began.budgets, &now.budgets);
        if rates.is_empty() && budgets.is_empty() {
            return;
        }
        // As the log replay reads its row (its metadata holds the key's).
        let subject = crate::limit::Subject {
            key_id: rec.key_id.as_deref(),
            provider,
            model: rec.model.as_deref(),
            key_metadata: &[],
            metadata: rec.metadata.as_ref(),
        };
        let ts_ms = rec.id.unix_ms();
        let (tokens_in, tokens_out) = rec.counted_tokens();
        self.limiter.shared().rebuild(
            &rates,
            &[crate::limit::Logged {
                ts_ms,
                requests: 1,
                subject,
                tokens_in,
                tokens_out,
                refused: rec.error_source == Some(crate::error::ErrorSource::Client),
                cached: matches!(
                    rec.cache,
                    Some(crate::record::CacheStatus::Hit | crate::record::CacheStatus::Coalesced)
                ),
            }],
        );
        if let Some(usd) = rec.cost.filter(|c| *c > 0.0) {
            self.shared_budgets.rebuild(
                &budgets,
                &[crate::budget::Spent {
                    ts_ms,
                    subject,
                    usd,
                }],
            );
        }
    }

    /// The fields of a request body whose xxh3-128 is `digest`, from the
    /// shard's memo when it read the same bytes lately, with the cache's
    /// canonical digest of them once it was noted ([`ShardCtx::note_canonical`]).
    /// A body read now is read once for both when `canonical` asks for the
    /// digest (the cache will key the request by its body).
    pub fn scan_remembered(
        &self,
        body: &[u8],
        digest: u128,
        canonical: bool,
    ) -> Result<(crate::json::RequestFields, crate::json::Derived), crate::json::BodyError> {
        let cache = self.cache().filter(|_| canonical);
        crate::json::scan_remembered(
            &mut self.scans.borrow_mut(),
            body,
            digest,
            |b| match cache {
                Some(cache) => cache.scan(b),
                None => crate::json::scan_request(b).map(|f| (f, None)),
            },
        )
    }

    /// Keeps the canonical digest of the body whose xxh3-128 is `digest`
    /// with its remembered fields (if the shard remembers them).
    pub fn note_canonical(&self, digest: u128, canonical: u128) {
        crate::json::remember_derived(&mut self.scans.borrow_mut(), digest, canonical);
    }

    /// The shard's shared copy of a path or user agent from the wire, for a
    /// log record (invalid UTF-8 replaced). Valid text, the usual case, is
    /// checked by `from_utf8`'s fast path, not walked chunk by chunk as
    /// `from_utf8_lossy` does.
    pub fn intern(&self, bytes: &[u8]) -> Arc<str> {
        let mut interned = self.interned.borrow_mut();
        match std::str::from_utf8(bytes) {
            Ok(text) => interned.get(text),
            Err(_) => interned.get(&String::from_utf8_lossy(bytes)),
        }
    }

    /// A fresh request id (UUIDv7, stamped with the request's arrival).
    pub fn new_request_id(&self, arrived: Instant) -> RequestId {
        self.ids.borrow_mut().id(self.clock.unix_ms(arrived))
    }

    /// The record of a request that arrived at `arrived`: a fresh id, this
    /// shard, and the config generation it begins in.
    pub fn new_record(&self, arrived: Instant) -> RequestRecord {
        let mut rec = RequestRecord::new(self.new_request_id(arrived), self.shard, arrived);
        rec.generation = self.generation.get();
        rec
    }

    /// Unix milliseconds at `at`, an instant the request path read anyway:
    /// without another read of the system clock.
    pub fn unix_ms(&self, at: Instant) -> u64 {
        self.clock.unix_ms(at)
    }

    /// The metadata headers this shard read lately (`controls::read`).
    pub fn metadata_memo(&self) -> RefMut<'_, crate::record::MetadataMemo> {
        self.metadata_memo.borrow_mut()
    }

    /// Counts a request in flight until the guard drops.
    pub fn in_flight(&self) -> Gauge<'_> {
        Gauge::up(&self.in_flight)
    }

    /// Counts a stream being relayed until the guard drops.
    pub fn streaming(&self) -> Gauge<'_> {
        Gauge::up(&self.streams)
    }

    /// Whether the request log is on (then requests gather log facts).
    pub fn logging(&self) -> bool {
        self.log.is_some()
    }

    /// The record is final: count it, then hand it to the request log if the
    /// log keeps it (errors always; successes at `logs.sample`). The shard never
    /// waits: a full queue drops the row and counts the drop. A request the log
    /// keeps no row of (sampled out, dropped, or `collect-log: false`) is
    /// tallied, so its tokens and spend still reach `aigw usage` and a
    /// restart's rebuild.
    ///
    /// The record is taken out of `rec` only when the log keeps it (what is
    /// left is an empty record of the same request).
    pub fn record(&self, rec: &mut RequestRecord) {
        if rec.generation != self.generation.get() {
            self.carry_over(rec);
        }
        self.stats.borrow_mut().record(rec);
        let Some(log) = &self.log else { return };
        if rec.log.is_none() {
            // `collect-log: false` keeps the request out of the log's rows,
            // not its spend out of usage and the rebuild.
            if rec.provider.is_some() {
                self.tally(log, rec);
            }
            return;
        }
        if !rec.failed() {
            let sample = self.config.borrow().logs.sample;
            if sample < 1.0 && self.ids.borrow_mut().unit() >= sample {
                self.tally(log, rec);
                return;
            }
            if log.successes_full() {
                // Dropped as the queue would drop it, without moving it there.
                self.stats.borrow_mut().log_dropped();
                self.tally(log, rec);
                return;
            }
        }
        let empty = RequestRecord::new(rec.id, rec.shard, rec.started);
        match log.send(std::mem::replace(rec, empty)) {
            Sent::Whole => {}
            Sent::WithoutBodies => self.stats.borrow_mut().log_bodies_dropped(),
            Sent::Dropped(dropped) => {
                self.stats.borrow_mut().log_dropped();
                self.tally(log, &dropped);
            }
        }
    }

    /// Counts a request the log keeps no row of in the shard's tally; when
    /// the tally is full, moves it to the log thread first.
    fn tally(&self, log: &LogQueue, rec: &RequestRecord) {
        let mut tally = self.tally.borrow_mut();
        if tally.add(rec) || (log.tallies.put(&mut tally) && tally.add(rec)) {
            return;
        }
        // No room for an entry of its own anywhere: counted without the
        // metadata no key, limit or budget names (see `Tally::add_coarse`);
        // keys created over the admin socket name fields too.
        let config = self.config.borrow();
        let named = |field: &str| {
            config_metadata_fields(&config).any(|(f, _)| f == field)
                || self.keys.with(|k| k.names_field(field))
        };
        if tally.add_coarse(rec, named) {
            return;
        }
        self.stats.borrow_mut().log_uncounted(1);
    }

    /// Moves the shard's tally to the log thread (each tick, and `last` at the
    /// end); true when it went (or there was none). When the log thread's
    /// inbox is full, the tally stays and grows; at the end it is counted as
    /// lost.
    pub fn hand_over_tally(&self, last: bool) -> bool {
        let Some(log) = &self.log else { return true };
        let mut tally = self.tally.borrow_mut();
        let moved = log.tallies.put(&mut tally);
        if !moved && last {
            self.stats.borrow_mut().log_uncounted(tally.requests());
        }
        moved
    }

    /// The stats since the last snapshot, with the shard's gauges.
    pub fn snapshot(&self, seq: u64) -> Snapshot {
        let gauges = Gauges {
            open_connections: self.open_connections() as u64,
            idle_upstream: self.pool.idle_count() as u64,
            connections_accepted: self.accepted.get(),
            requests_in_flight: self.in_flight.get(),
            streams_in_flight: self.streams.get(),
        };
        self.stats.borrow_mut().take(self.shard, seq, gauges)
    }

    /// A new client connection: its id in the slab.
    pub fn register(&self, fd: std::os::fd::RawFd) -> u64 {
        self.accepted.set(self.accepted.get() + 1);
        self.conns.borrow_mut().insert(ConnEntry {
            fd,
            idle: true,
            waker: None,
        }) as u64
    }

    /// The end of a drain: every connection still open stops reading, so the
    /// requests on them end now (recorded and charged what they used, marked
    /// `shutting_down`); one that has sent no answer yet answers 503.
    pub fn stop_all(&self) {
        self.stopping.set(true);
        self.shut_all(std::net::Shutdown::Read);
    }

    /// After [`ShardCtx::stop_all`]'s answers had their moment: every
    /// connection still open is shut both ways, so a request waiting to
    /// write to a client that reads nothing ends too.
    pub fn stop_writes(&self) {
        self.shut_all(std::net::Shutdown::Both);
    }

    fn shut_all(&self, how: std::net::Shutdown) {
        for e in self.conns.borrow().entries.iter().flatten() {
            crate::sys::shutdown_socket(e.fd, how);
        }
    }

    pub fn unregister(&self, id: u64) {
        self.conns.borrow_mut().remove(id as usize);
    }

    pub fn set_idle(&self, id: u64, idle: bool) {
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
    pub fn drain_started(&self, conn: u64) -> DrainStarted<'_> {
        DrainStarted { ctx: self, conn }
    }
}

/// The metadata fields the config names, with the value where it sets one:
/// keys' attribution, and the `metadata.<field>` scopes of limits and budgets.
fn config_metadata_fields(config: &Config) -> impl Iterator<Item = (&str, Option<&str>)> {
    fn scoped(s: &crate::config::limits::Scope) -> Option<(&str, Option<&str>)> {
        match s {
            crate::config::limits::Scope::Metadata(f) => Some((f.as_str(), None)),
            _ => None,
        }
    }
    config
        .keys
        .values()
        .flat_map(|k| {
            k.metadata
                .iter()
                .map(|(f, v)| (f.as_str(), Some(v.as_str())))
        })
        .chain(config.rate_limits.iter().filter_map(|r| scoped(&r.scope)))
        .chain(config.budgets.iter().filter_map(|b| scoped(&b.scope)))
}

/// One unit of a shard gauge, given back on drop (also when a task is
/// dropped mid-request, e.g. at the end of a drain).
pub struct Gauge<'a>(&'a Cell<u64>);

impl<'a> Gauge<'a> {
    fn up(cell: &'a Cell<u64>) -> Gauge<'a> {
        cell.set(cell.get() + 1);
        Gauge(cell)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

fn head_limits(config: &Config) -> HeadLimits {
    HeadLimits {
        max_head_bytes: config.limits.max_head_bytes,
        max_headers: config.limits.max_headers,
        max_body_bytes: config.limits.max_body_bytes,
    }
}

pub struct DrainStarted<'a> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::LogFacts;
    use std::sync::atomic::Ordering;

    fn finished(ctx: &ShardCtx, status: u16) -> RequestRecord {
        let mut r = RequestRecord::new(ctx.new_request_id(Instant::now()), 0, Instant::now());
        r.status = status;
        r.provider = Some("up".into());
        r.model = Some("m".into());
        r.cost = Some(0.5);
        r.usage.input_tokens = Some(7);
        r.log = Some(Box::new(LogFacts::default()));
        r
    }

    /// A shard context whose log queue holds one success and one error,
    /// with `admin` as the keys created over the admin socket.
    fn logging(
        config: Arc<Config>,
        admin: Vec<crate::auth::KeyEntry>,
    ) -> (
        ShardCtx,
        LogQueue,
        [std::sync::mpsc::Receiver<RequestRecord>; 2],
    ) {
        let (queue, inbound) = LogQueue::new(1, 1);
        let shared = Shared {
            keys: crate::auth::Registry::new(&config.keys, admin),
            limiter: crate::limit::Limiter::new(1),
            budgets: crate::budget::Budgets::new(),
        };
        let ctx = ShardCtx::new(
            0,
            config,
            Resolver::new(),
            Some(queue.clone()),
            None,
            shared,
        );
        (ctx, queue, inbound.rx)
    }

    /// A row the log's queue has no room for, and a success sampled out, are
    /// counted in the shard's tally, which the next hand-over moves to the
    /// log thread's inbox.
    #[test]
    fn requests_kept_no_row_of_are_tallied_and_handed_over() {
        let toml = "[logs]\nsample = 0.0\n[providers.up]\nbase_url = \"http://127.0.0.1:9\"\n";
        let config = Arc::new(Config::from_toml_with_env(toml, &|_| None).unwrap());
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(128 << 10)
            .spawn(move || async move {
                let (ctx, queue, [rx_errors, rx]) = logging(config, vec![]);
                // Errors are always logged: the first takes the queue's one
                // slot, the next two find it full.
                for _ in 0..3 {
                    ctx.record(&mut finished(&ctx, 502));
                }
                // A success at `sample = 0` is never offered to the queue.
                ctx.record(&mut finished(&ctx, 200));
                let snap = ctx.snapshot(1);
                assert_eq!(snap.counters.log_dropped, 2);
                assert_eq!(rx_errors.try_iter().count(), 1);
                assert_eq!(rx.try_iter().count(), 0);
                assert!(queue.tallies.take().is_empty(), "handed over early");
                ctx.hand_over_tally(false);
                let rows = queue.tallies.take();
                let requests: u64 = rows.iter().map(|r| r.requests).sum();
                let cost: f64 = rows.iter().map(|r| r.cost).sum();
                let tokens: u64 = rows.iter().map(|r| r.tokens_in).sum();
                assert_eq!((requests, cost, tokens), (3, 1.5, 21), "{rows:?}");
                assert_eq!(queue.payload_bytes.load(Ordering::Relaxed), 0);
                // Nothing left to hand over.
                ctx.hand_over_tally(true);
                assert!(queue.tallies.take().is_empty());
                assert_eq!(ctx.snapshot(2).counters.log_uncounted, 0);
            })
            .expect("executor starts")
            .join()
            .expect("the test runs");
    }

    /// Metadata that differs from request to request, with the log's inbox
    /// full: the requests are still counted, by the fields a budget and a key
    /// (created over the admin socket) name.
    #[test]
    fn with_no_room_left_requests_count_by_the_fields_the_config_names() {
        let toml = "[logs]\nsample = 0.0\n[providers.up]\nbase_url = \"http://127.0.0.1:9\"\n\
                    [[budgets]]\nscope = \"metadata.team\"\nusd = 100.0\nwindow = \"daily\"\n";
        let config = Arc::new(Config::from_toml_with_env(toml, &|_| None).unwrap());
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(128 << 10)
            .spawn(move || async move {
                use crate::record::{MetaValue, Metadata};
                // A key created over the admin socket names `app`.
                let key = crate::auth::KeyEntry {
                    id: Arc::from("k"),
                    hash: [7; 32],
                    models: vec![],
                    metadata: vec![("app".into(), "web".into())],
                    origin: crate::auth::Origin::Admin,
                    created_ms: 1,
                };
                let (ctx, queue, _rx) = logging(config, vec![key]);
                let mut n = 0u64;
                let mut traced = || {
                    n += 1;
                    let mut r = finished(&ctx, 200);
                    r.metadata = Some(Metadata::from(vec![
                        ("trace".to_string(), MetaValue::Num(n.to_string())),
                        ("team".to_string(), MetaValue::Str("search".into())),
                        ("app".to_string(), MetaValue::Str("web".into())),
                    ]));
                    r
                };
                // Fill the inbox, then the shard's own tally.
                let per_tally = crate::tally::TALLY_ENTRIES;
                for _ in 0..crate::tally::INBOX_ENTRIES / per_tally + 1 {
                    for _ in 0..per_tally {
                        ctx.record(&mut traced());
                    }
                    ctx.hand_over_tally(false);
                }
                ctx.record(&mut traced());
                ctx.record(&mut traced());
                assert_eq!(ctx.snapshot(1).counters.log_uncounted, 0);
                let inbox = queue.tallies.take();
                assert_eq!(inbox.len(), crate::tally::INBOX_ENTRIES);
                assert!(ctx.hand_over_tally(false));
                let rows = queue.tallies.take();
                let coarse: Vec<_> = rows
                    .iter()
                    .filter(|r| r.metadata.as_deref() == Some(r#"{"team":"search","app":"web"}"#))
                    .collect();
                assert_eq!(
                    coarse.iter().map(|r| r.requests).sum::<u64>(),
                    2,
                    "{coarse:?}"
                );
                assert_eq!(coarse.iter().map(|r| r.cost).sum::<f64>(), 1.0);
            })
            .expect("executor starts")
            .join()
            .expect("the test runs");
    }
}
