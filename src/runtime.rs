//! Runtime: starts the control plane and one pinned glommio executor per shard,
//! each with its own SO_REUSEPORT listener, and drains them on a signal.
//!
//! Owns process-level facts: which CPUs we may run on (the affinity mask, so
//! `taskset` and cpusets are respected), the memlock budget glommio needs, the
//! listening address (port 0 resolved once, so every shard binds the same port),
//! and turning startup failures into clear messages.

use crate::auth::Registry;
use crate::cache::{self, Cache, ShardCache};
use crate::config::Config;
use crate::control::admin::{self, Admin};
use crate::control::logs::{self, LOG_ERROR_QUEUE, LOG_QUEUE, LogStats};
use crate::control::reload::{Reloader, Source};
use crate::control::stats::StatsHub;
use crate::control::{ShardCmd, ShardSenders, signals};
use crate::logqueue::LogQueue;
use crate::logstore;
use crate::logstore::keys::KeyStore;
use crate::server::shard::Shared;
use crate::server::{ShardCtx, conn};
use crate::stats::{SNAPSHOT_QUEUE, Snapshot, send_snapshot};
use crate::upstream::dns::Resolver;
use futures_lite::future::FutureExt;
use glommio::{LocalExecutorPoolBuilder, PoolPlacement, timer};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

/// Registered I/O memory per executor. glommio registers it in three rings, and
/// its default (10 MiB) overflows the common 8 MiB memlock; networking does not
/// use registered buffers, so small is right.
pub const IO_MEMORY: usize = 128 << 10;

/// Longest a shard runs tasks before it looks at its io_uring completions.
/// glommio looks only when no task is runnable or this much time has passed
/// (its default is 100 ms). Under saturation the connections that found
/// their next request while yielding keep the run queue from ever emptying,
/// so a connection parked on a socket poll waited for the whole interval:
/// the longest closed-loop request was about 100 ms, cache hits and
/// pass-through alike, and pass-through's p99.9 (log on) 41-45 ms. At 5 ms:
/// 5-17 ms and 5.8-6 ms. Throughput did not move in interleaved runs (hits:
/// 251k/s at 10 ms against 247-253k/s at 100 ms, 238-242k/s at 5 ms against
/// 237-244k/s at 10 ms; pass-through 91-92k/s at 5 ms, 89-90k/s at 100 ms);
/// 250 us cost hits 13%.
pub const PREEMPT_TIMER: Duration = Duration::from_millis(5);

/// glommio refuses to start below this memlock limit.
pub const MIN_MEMLOCK: u64 = 512 << 10;
/// Accept backlog per shard listener.
pub const LISTEN_BACKLOG: i32 = 4096;
/// How often a shard sends stats and sweeps idle upstream connections.
pub const TICK: Duration = Duration::from_secs(1);
/// How many log rounds a stopping shard waits for room for its tally.
pub const TALLY_RETRIES: usize = 5;
/// How long startup waits for every shard to report it is listening.
pub const STARTUP_WAIT: Duration = Duration::from_secs(30);

/// What a caller (the CLI, or a test) learns once the gateway is listening.
#[derive(Clone, Debug)]
pub struct Listening {
    pub addr: SocketAddr,
    pub shards: usize,
    pub admin_socket: std::path::PathBuf,
    /// Where `/metrics` is served over TCP (`admin.listen`).
    pub metrics_addr: Option<SocketAddr>,
}

/// Runs the gateway until it is drained by a signal. `on_ready` is called once
/// every shard is listening.
pub fn serve(
    config: Config,
    source: Source,
    on_ready: impl FnOnce(&Listening),
) -> Result<(), String> {
    let config = Arc::new(config);
    crate::private::create_dir(&config.server.data_dir).map_err(|e| {
        format!(
            "server.data_dir: cannot create {}: {e}",
            config.server.data_dir.display()
        )
    })?;
    let _lock = lock_data_dir(&config.server.data_dir)?;
    check_memlock()?;
    let cpus = allowed_cpus();
    let shards = shard_count(&config, &cpus);
    // Held until every shard listens: released earlier, port 0 could hand
    // the same port to another aigw starting meanwhile, and the two would
    // share it through SO_REUSEPORT.
    let (addr, probe) = probe_listen(config.server.listen)?;
    let cache = if config.cache.enabled {
        let dir = cache::dir(&config.server.data_dir);
        let (c, report) = Cache::open(&dir, &config.cache, shards, crate::reqid::now_unix_ms())?;
        eprintln!("{}", report.summary(&dir));
        Some(Arc::new(c))
    } else {
        None
    };

    let hub = StatsHub::new(shards);
    let (snap_tx, snap_rx) = std::sync::mpsc::sync_channel::<Snapshot>(SNAPSHOT_QUEUE);
    hub.spawn_merger(snap_rx);
    let (cmd_txs, cmd_rxs): (Vec<_>, Vec<_>) =
        (0..shards).map(|_| flume::unbounded::<ShardCmd>()).unzip();
    let senders: ShardSenders = Arc::new(cmd_txs);
    // The request log: a bounded queue from every shard to one writer thread.
    let log_stats = Arc::new(LogStats::default());
    let log_path = logstore::path(&config.server.data_dir);
    let budgets = crate::budget::Budgets::new();
    let (log_tx, log_thread) = if config.logs.enabled {
        let (queue, inbound) = LogQueue::new(LOG_QUEUE, LOG_ERROR_QUEUE);
        let thread = logs::spawn(
            log_path.clone(),
            config.logs.clone(),
            inbound,
            log_stats.clone(),
            budgets.clone(),
        )
        .map_err(|e| format!("logs: {e}"))?;
        (Some(queue), Some(thread))
    } else {
        (None, None)
    };
    let admin_listener =
        admin::bind(&config.admin_socket).map_err(|e| format!("admin.socket: {e}"))?;
    // Keys created over the admin socket, kept beside the request log.
    let stored_keys = KeyStore::open(&config.server.data_dir)
        .and_then(|s| s.load())
        .map_err(|e| format!("keys: {e}"))?;
    let keys = Registry::new(&config.keys, stored_keys);
    let limiter = crate::limit::Limiter::new(shards);
    // Limit windows and budgets carry on from the request log.
    match crate::control::usage::rebuild(&config, &limiter, &budgets) {
        Ok(0) => {}
        Ok(n) => eprintln!("aigw: rate limits and budgets rebuilt from {n} logged requests"),
        Err(e) => eprintln!("aigw: rate limits and budgets start empty: {e}"),
    }
    // Stored amounts of budgets no longer configured go.
    budgets.keep_amounts_of(&config.budgets);
    let shared = Shared {
        keys: keys.clone(),
        limiter,
        budgets,
    };
    let reloader = Reloader::new(
        source,
        check_startable,
        config.clone(),
        senders.clone(),
        hub.clone(),
        log_stats.clone(),
        shared.clone(),
    );
    let admin = Admin::new(
        hub.clone(),
        senders.clone(),
        log_stats.clone(),
        log_path,
        reloader.clone(),
        cache.clone(),
        shared.clone(),
    );
    admin
        .spawn(admin_listener)
        .map_err(|e| format!("cannot start the admin thread: {e}"))?;
    let metrics_addr = match config.admin_listen {
        Some(a) => {
            let l = std::net::TcpListener::bind(a)
                .map_err(|e| format!("admin.listen: cannot listen on {a}: {e}"))?;
            let bound = l.local_addr().map_err(|e| format!("admin.listen: {e}"))?;
            admin
                .spawn_metrics(l)
                .map_err(|e| format!("cannot start the metrics thread: {e}"))?;
            Some(bound)
        }
        None => None,
    };
    let resolver = Resolver::new();
    resolver.spawn_refresher(crate::providers::network_hosts(&config));

    let placement = placement(&cpus, shards);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<usize, String>>();
    let next_shard = Arc::new(AtomicUsize::new(0));
    let cmd_rxs = Arc::new(cmd_rxs);
    let shard_config = config.clone();
    let shard_log = log_tx.clone();
    let shard_cache = cache.clone();
    let shard_shared = shared.clone();
    let mut builder = LocalExecutorPoolBuilder::new(placement)
        .name("aigw-shard")
        .io_memory(IO_MEMORY)
        .preempt_timer(PREEMPT_TIMER);
    if !config.server.spin_before_park.is_zero() {
        builder = builder.spin_before_park(config.server.spin_before_park);
    }
    let handles = builder
        .blocking_thread_pool_placement(PoolPlacement::Unbound(1))
        .on_all_shards(move || async move {
            let shard = next_shard.fetch_add(1, Ordering::Relaxed);
            let args = ShardArgs {
                shard,
                config: shard_config,
                resolver,
                addr,
                commands: cmd_rxs[shard].clone(),
                snapshots: snap_tx,
                ready: ready_tx,
                log: shard_log,
                cache: shard_cache.and_then(|c| c.for_shard(shard)),
                shared: shard_shared,
            };
            run_shard(args).await
        })
        .map_err(|e| explain_executor_error(&e.to_string()))?;

    let deadline = Instant::now() + STARTUP_WAIT;
    let mut ready = 0;
    let mut failure = None;
    while ready < shards && failure.is_none() {
        match ready_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Ok(_)) => ready += 1,
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some("shards did not start in time".to_string()),
        }
    }
    drop(probe);
    if let Some(why) = failure {
        for tx in senders.iter() {
            let _ = tx.send(ShardCmd::Drain);
        }
        let detail: Vec<String> = handles
            .join_all()
            .into_iter()
            .filter_map(|r| r.err())
            .map(|e| explain_executor_error(&e.to_string()))
            .collect();
        let _ = std::fs::remove_file(&config.admin_socket);
        drop(log_tx);
        log_stats.stop();
        if let Some(t) = log_thread {
            let _ = t.join();
        }
        return Err(if detail.is_empty() {
            why
        } else {
            detail.join("; ")
        });
    }
    // Handlers go in before readiness is announced: a supervisor may send
    // SIGTERM as soon as it reads the listening line, and the default action
    // would kill the process without a drain.
    signals::spawn(senders.clone(), reloader, hub.clone(), log_stats.clone())
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    on_ready(&Listening {
        addr,
        shards,
        admin_socket: config.admin_socket.clone(),
        metrics_addr,
    });
    let results = handles.join_all();
    // Answers handed between shards as they stopped are stored now.
    if let Some(c) = &cache {
        c.settle();
    }
    // Every shard is gone: the log thread commits what is queued and ends.
    drop(log_tx);
    log_stats.stop();
    if let Some(t) = log_thread {
        let _ = t.join();
    }
    let _ = std::fs::remove_file(&config.admin_socket);
    let errors: Vec<String> = results
        .into_iter()
        .filter_map(|r| r.err())
        .map(|e| e.to_string())
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

struct ShardArgs {
    shard: usize,
    config: Arc<Config>,
    resolver: Arc<Resolver>,
    addr: SocketAddr,
    commands: flume::Receiver<ShardCmd>,
    snapshots: SyncSender<Snapshot>,
    ready: std::sync::mpsc::Sender<Result<usize, String>>,
    log: Option<LogQueue>,
    cache: Option<ShardCache>,
    shared: Shared,
}

/// The end of a drain given to stopping the requests still running: a relay
/// notices a shut client socket at its next write, or, while its provider
/// is silent, at its next look at the client (every `DRAIN_CHECK` once the
/// drain began, every `CLIENT_CHECK` before).
const STOP_GRACE: Duration = Duration::from_millis(1500);
/// The shortest stop that still follows a full first part.
const MIN_GRACE: Duration = Duration::from_millis(100);
/// How long, of the stop, the requests that had not answered have to send
/// their 503 before every connection is shut both ways.
const STOP_ANSWERS: Duration = Duration::from_millis(100);

/// Whether `f` (the drain's gate closing) ends within `d`. It is awaited
/// again by a later call while it has not ended.
async fn ends_within<F: std::future::Future>(d: Duration, f: std::pin::Pin<&mut F>) -> bool {
    timer::timeout(d, async {
        f.await;
        Ok(())
    })
    .await
    .is_ok()
}

async fn run_shard(a: ShardArgs) {
    // glommio 0.9.0's first timer sleep registers a membarrier (6-14 ms here);
    // pay it before serving instead of on the first request.
    timer::sleep(Duration::from_millis(1)).await;
    let (listener, stopper) = match bind_listener(a.addr) {
        Ok(l) => l,
        Err(e) => {
            let _ = a.ready.send(Err(format!(
                "server.listen: shard {} cannot listen on {}: {e}",
                a.shard, a.addr
            )));
            return;
        }
    };
    let ctx = Rc::new(ShardCtx::new(
        a.shard,
        a.config.clone(),
        a.resolver,
        a.log,
        a.cache,
        a.shared,
    ));
    if ctx.cache().is_some() {
        // Answers other shards fetched for this shard's partition.
        let ctx = ctx.clone();
        glommio::spawn_local(async move {
            if let Some(c) = ctx.cache() {
                while c.store_next().await.is_some() {}
            }
        })
        .detach();
    }
    if ctx.logging() {
        // The tally of requests the log keeps no row of goes to the log
        // thread as often as the log commits, so a crash loses no more of it
        // than of the rows.
        let ctx = ctx.clone();
        glommio::spawn_local(async move {
            loop {
                timer::sleep(ctx.config().logs.flush_interval).await;
                let _ = ctx.hand_over_tally(false);
            }
        })
        .detach();
    }
    let (drain_tx, drain_rx) = glommio::channels::local_channel::new_bounded::<()>(1);
    glommio::spawn_local(control_loop(
        ctx.clone(),
        a.commands,
        a.snapshots.clone(),
        drain_tx,
    ))
    .detach();
    let _ = a.ready.send(Ok(a.shard));

    let gate = glommio::sync::Gate::new();
    loop {
        let next = async { Some(listener.accept().await) }.or(async {
            drain_rx.recv().await;
            None
        });
        match next.await {
            Some(Ok(stream)) => {
                if let Ok(task) = gate.spawn(conn::serve(ctx.clone(), stream)) {
                    task.detach();
                }
            }
            Some(Err(e)) => {
                // Usually EMFILE: back off briefly instead of spinning.
                log::warn!("shard {}: accept failed: {e}", a.shard);
                timer::sleep(Duration::from_millis(10)).await;
            }
            None => break,
        }
    }
    // Dropping the listener is not enough: glommio's in-flight io_uring accept
    // keeps the socket listening until the cancel lands, and handshakes it
    // completes meanwhile are never served. shutdown(2) on a listening socket
    // stops it at once; new connects are refused from here on.
    let _ = stopper.shutdown(std::net::Shutdown::Read);
    drop(listener);
    ctx.begin_drain();
    // The last part of the drain stops what still runs, so every request
    // ends (and is recorded) within server.drain_timeout.
    let total = a.config.server.drain_timeout;
    // The drain's first part lasts a relay's longest wait (`CLIENT_CHECK`)
    // when it can: by the stop, every relay waiting on a silent provider
    // looks at its client every `DRAIN_CHECK`.
    let grace = if total >= crate::server::relay::CLIENT_CHECK + MIN_GRACE {
        STOP_GRACE.min(total - crate::server::relay::CLIENT_CHECK)
    } else {
        total / 2
    };
    let mut closing = std::pin::pin!(gate.close());
    if !ends_within(total - grace, closing.as_mut()).await {
        log::warn!(
            "shard {}: {} connection(s) still busy near the end of server.drain_timeout; stopping their requests (recorded with error_code shutting_down)",
            a.shard,
            ctx.open_connections()
        );
        ctx.stop_all();
        // Their 503s go out first; then what still waits on a write stops.
        let answers = STOP_ANSWERS.min(grace / 2);
        let stopped = ends_within(answers, closing.as_mut()).await || {
            ctx.stop_writes();
            ends_within(grace - answers, closing.as_mut()).await
        };
        if !stopped {
            log::warn!(
                "shard {}: {} connection(s) still busy after server.drain_timeout; closing them",
                a.shard,
                ctx.open_connections()
            );
        }
    }
    // The log thread runs until every shard has ended: a full inbox gets a
    // few of its rounds to make room.
    for _ in 0..TALLY_RETRIES {
        if ctx.hand_over_tally(false) {
            break;
        }
        timer::sleep(a.config.logs.flush_interval).await;
    }
    ctx.hand_over_tally(true);
    // Answers other shards hand over from here on are stored by the main
    // thread, after every shard stopped.
    if let Some(c) = ctx.cache() {
        c.give_back();
    }
    let _ = send_snapshot(&a.snapshots, ctx.snapshot(0));
}

/// Ticks (stats, pool sweep) and control commands for one shard.
async fn control_loop(
    ctx: Rc<ShardCtx>,
    commands: flume::Receiver<ShardCmd>,
    snapshots: SyncSender<Snapshot>,
    drain: glommio::channels::local_channel::LocalSender<()>,
) {
    let mut dropped = 0u64;
    loop {
        let cmd = async { commands.recv_async().await.ok() }
            .or(async {
                timer::sleep(TICK).await;
                Some(ShardCmd::Flush(0))
            })
            .await;
        match cmd {
            Some(ShardCmd::Flush(seq)) => {
                if seq == 0 {
                    ctx.pool.sweep();
                }
                let _ = ctx.hand_over_tally(false);
                let mut snap = ctx.snapshot(seq);
                snap.counters.dropped_snapshots = dropped;
                if send_snapshot(&snapshots, snap) {
                    dropped = 0;
                } else {
                    dropped += 1;
                }
            }
            Some(ShardCmd::Reload(config)) => ctx.apply(&config),
            Some(ShardCmd::Purge(what, reply)) => {
                let n = ctx.cache().map_or(0, |c| c.purge(what));
                let _ = reply.send(n);
            }
            Some(ShardCmd::Drain) => {
                let _ = drain.try_send(());
            }
            None => return,
        }
    }
}

/// A listener with SO_REUSEADDR + SO_REUSEPORT and our backlog, handed to glommio,
/// and a duplicate handle of the same socket to stop listening with on a drain.
fn bind_listener(
    addr: SocketAddr,
) -> std::io::Result<(glommio::net::TcpListener, socket2::Socket)> {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(LISTEN_BACKLOG)?;
    let stopper = sock.try_clone()?;
    Ok((crate::sys::adopt_listener(sock), stopper))
}

/// Holds `data_dir/aigw.lock` for the life of the process: a second aigw on
/// the same data_dir would write the same cache files and log store.
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, String> {
    use std::io::Write;
    let path = dir.join("aigw.lock");
    let mut f = crate::private::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .and_then(|f| crate::private::restrict(&path).map(|()| f))
        .map_err(|e| format!("server.data_dir: cannot open {}: {e}", path.display()))?;
    match f.try_lock() {
        Ok(()) => {
            let _ = f.set_len(0);
            let _ = writeln!(f, "{}", std::process::id());
            Ok(f)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            Err(format!(
                "server.data_dir: {} is in use by another aigw (pid {}); give each instance its own data_dir",
                dir.display(),
                holder.trim()
            ))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(format!(
            "server.data_dir: cannot lock {}: {e}",
            path.display()
        )),
    }
}

/// Binds once without SO_REUSEPORT: fails if anyone (another aigw included)
/// already listens there, and resolves port 0 to the port every shard will
/// share. The socket is returned to be held until the shards listen.
fn probe_listen(addr: SocketAddr) -> Result<(SocketAddr, socket2::Socket), String> {
    use socket2::{Domain, Socket, Type};
    let fail = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            format!(
                "server.listen: {addr} is already in use (another aigw?); stop it or pick another address"
            )
        } else {
            format!("server.listen: cannot bind {addr}: {e}")
        }
    };
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(fail)?;
    sock.set_reuse_address(true).map_err(fail)?;
    sock.bind(&addr.into()).map_err(fail)?;
    let local = sock.local_addr().map_err(fail)?;
    let local = local
        .as_socket()
        .ok_or_else(|| format!("server.listen: {addr} is not an IP address"))?;
    Ok((local, sock))
}

/// CPUs in this process's affinity mask (`taskset`, cgroup cpusets), from
/// /proc/self/status so no unsafe call is needed.
/// How many shards `serve` starts: `server.shards`, else one per CPU this
/// process may run on.
pub fn shard_count(config: &Config, cpus: &[usize]) -> usize {
    config
        .server
        .shards
        .map(|n| n.get())
        .unwrap_or(cpus.len().max(1))
}

/// What `serve` would refuse in a config that reads well (`check-config`
/// runs it): a cache whose size does not split into partitions of this
/// host's shard count.
pub fn check_startable(config: &Config) -> Result<(), String> {
    if config.cache.enabled {
        let shards = shard_count(config, &allowed_cpus());
        cache::store::Geometry::new(config.cache.size, shards, config.cache.max_entry)?;
    }
    Ok(())
}

pub fn allowed_cpus() -> Vec<usize> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(str::trim)
        .unwrap_or("");
    let mut cpus = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                    cpus.extend(a..=b);
                }
            }
            None => cpus.extend(part.parse::<usize>().ok()),
        }
    }
    if cpus.is_empty() {
        cpus = (0..std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1))
            .collect();
    }
    cpus
}

/// One CPU per shard, cycling through the allowed CPUs when there are more shards.
fn placement(cpus: &[usize], shards: usize) -> PoolPlacement {
    let online = glommio::CpuSet::online().ok();
    match online {
        Some(online) if !cpus.is_empty() => PoolPlacement::Custom(
            (0..shards)
                .map(|i| {
                    let cpu = cpus[i % cpus.len()];
                    online.clone().filter(|l| l.cpu == cpu)
                })
                .collect(),
        ),
        _ => PoolPlacement::Unbound(shards),
    }
}

/// Reads RLIMIT_MEMLOCK from /proc and fails early with advice when glommio
/// would refuse to start.
fn check_memlock() -> Result<(), String> {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let Some(line) = limits.lines().find(|l| l.starts_with("Max locked memory")) else {
        return Ok(());
    };
    let soft = line.split_whitespace().nth(3).unwrap_or("unlimited");
    if let Ok(bytes) = soft.parse::<u64>()
        && bytes < MIN_MEMLOCK
    {
        return Err(format!(
            "the memlock limit is {bytes} bytes but io_uring (glommio) needs at least {MIN_MEMLOCK}; \
                 raise it with `ulimit -l 8192`, LimitMEMLOCK=8M (systemd) or --ulimit memlock=8388608 (docker)"
        ));
    }
    Ok(())
}

fn explain_executor_error(e: &str) -> String {
    if e.contains("MemLock") || e.contains("memlock") {
        format!("cannot start io_uring executors ({e}); raise the memlock limit: `ulimit -l 8192`")
    } else if e.contains("Operation not permitted") || e.contains("io_uring") {
        format!(
            "cannot start io_uring executors ({e}); io_uring may be disabled (sysctl kernel.io_uring_disabled) or blocked by a seccomp profile"
        )
    } else {
        format!("cannot start shard executors: {e}")
    }
}
