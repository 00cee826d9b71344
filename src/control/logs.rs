//! The log thread: receives finished request records from the shards and
//! commits them to the request log store in batches, then applies retention.
//!
//! Control plane, a std thread. It never makes a shard wait: shards `try_send`
//! into a bounded queue ([`LOG_QUEUE`]) and count a drop when it is full. The
//! thread does not sleep in `recv` (a blocked receiver would make every send
//! wake it, a syscall per request on the shard): it wakes every
//! `logs.flush_interval`, takes everything queued, and commits it in one
//! transaction. So a crash or `kill -9` loses at most the rows of one interval
//! (plus the one being committed), under a second by construction.

use crate::config::LogsConfig;
use crate::logstore::write::Writer;
use crate::record::RequestRecord;
use crate::reqid::now_unix_ms;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Records that may wait for the log thread. At a 200 ms interval this holds
/// bursts of over 300k requests/s before a row is dropped.
pub const LOG_QUEUE: usize = 1 << 16;
/// How often retention runs.
pub const RETENTION_EVERY: Duration = Duration::from_secs(1);
/// Most retention passes per run (each deletes up to `RETENTION_BATCH` rows).
pub const RETENTION_PASSES: usize = 4;
/// How often metadata rows of deleted requests are swept (a scan of `meta_seqs`).
pub const META_SWEEP_EVERY: Duration = Duration::from_secs(60);
/// The log thread's nice value. Serving comes first: on a CPU it shares with
/// a shard, the shard preempts it at once; when the CPU is saturated it still
/// gets about a tenth of it (CFS weight 110 against 1024), which is what it
/// needs at full load, and its queue absorbs the rest.
pub const LOG_THREAD_NICE: i32 = 10;

/// What the log thread has done, for `/stats` and `/metrics`, and the
/// handshake that lets the admin socket ask for a commit now.
#[derive(Debug, Default)]
pub struct LogStats {
    pub rows_written: AtomicU64,
    pub write_errors: AtomicU64,
    pub rows_deleted: AtomicU64,
    /// Rows in the store.
    pub rows: AtomicU64,
    /// (commits asked for, commits done, stop after the next commit).
    flush: Mutex<(u64, u64, bool)>,
    flushed: Condvar,
    /// Settings from a reload, taken up at the next round.
    reloaded: Mutex<Option<LogsConfig>>,
}

impl LogStats {
    /// Hands the log thread reloaded settings (retention, flush interval).
    pub fn set_config(&self, cfg: LogsConfig) {
        *self.reloaded.lock().unwrap_or_else(|p| p.into_inner()) = Some(cfg);
    }

    /// Asks the log thread to commit what it has received and waits (at most
    /// `wait`) until it has. False when the thread did not answer in time
    /// (or there is none).
    pub fn flush(&self, wait: Duration) -> bool {
        let mut s = self.flush.lock().unwrap_or_else(|p| p.into_inner());
        s.0 += 1;
        let want = s.0;
        self.flushed.notify_all();
        let (s, _) = self
            .flushed
            .wait_timeout_while(s, wait, |s| s.1 < want)
            .unwrap_or_else(|p| p.into_inner());
        s.1 >= want
    }

    /// Asks the log thread to commit what is queued and end (the shards are
    /// gone; detached tasks may still hold a sender, so the channel alone
    /// cannot say so).
    pub fn stop(&self) {
        let mut s = self.flush.lock().unwrap_or_else(|p| p.into_inner());
        s.2 = true;
        drop(s);
        self.flushed.notify_all();
    }

    /// The log thread's sleep: until the interval passes, a commit is asked
    /// for, or a stop. Returns the request number this round answers, and
    /// whether to stop after it.
    fn wait_round(&self, interval: Duration) -> (u64, bool) {
        let s = self.flush.lock().unwrap_or_else(|p| p.into_inner());
        let (s, _) = self
            .flushed
            .wait_timeout_while(s, interval, |s| s.0 <= s.1 && !s.2)
            .unwrap_or_else(|p| p.into_inner());
        (s.0, s.2)
    }

    fn round_done(&self, answered: u64) {
        let mut s = self.flush.lock().unwrap_or_else(|p| p.into_inner());
        s.1 = s.1.max(answered);
        drop(s);
        self.flushed.notify_all();
    }
}

/// Opens the store (failing start-up if it cannot) and starts the thread. It
/// ends after [`LogStats::stop`] (or once every sender is gone), having
/// committed what was queued.
pub fn spawn(
    path: PathBuf,
    cfg: LogsConfig,
    rx: Receiver<RequestRecord>,
    payload_bytes: Arc<AtomicUsize>,
    stats: Arc<LogStats>,
) -> Result<JoinHandle<()>, String> {
    let mut writer = Writer::open(&path)?;
    stats.rows.store(writer.rows(), Ordering::Relaxed);
    std::thread::Builder::new()
        .name("aigw-log".into())
        .spawn(move || {
            if let Err(e) = crate::sys::lower_thread_priority(LOG_THREAD_NICE) {
                log::debug!("log thread keeps its priority: {e}");
            }
            run(&mut writer, cfg, &rx, &payload_bytes, &stats)
        })
        .map_err(|e| format!("cannot start the log thread: {e}"))
}

fn run(
    writer: &mut Writer,
    mut cfg: LogsConfig,
    rx: &Receiver<RequestRecord>,
    payload_bytes: &AtomicUsize,
    stats: &LogStats,
) {
    let mut batch: Vec<RequestRecord> = Vec::with_capacity(4096);
    let mut last_retention = Instant::now();
    let mut last_sweep = Instant::now();
    loop {
        if let Some(new) = stats
            .reloaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            cfg = new;
        }
        let (answers, stop) = stats.wait_round(cfg.flush_interval);
        let mut open = !stop;
        loop {
            match rx.try_recv() {
                Ok(r) => {
                    payload_bytes.fetch_sub(r.payload_len(), Ordering::Relaxed);
                    batch.push(r)
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        if !batch.is_empty() {
            match writer.insert(&batch) {
                Ok(()) => {
                    stats
                        .rows_written
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    // SQLite's message names the failure, never row contents.
                    stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    log::warn!(
                        "request log: a batch of {} rows was not written: {e}",
                        batch.len()
                    );
                }
            }
            batch.clear();
        }
        // Over the row limit: trim at once; by age: once a second.
        if writer.rows() > cfg.max_rows || last_retention.elapsed() >= RETENTION_EVERY || !open {
            last_retention = Instant::now();
            retain(writer, &cfg, stats);
        }
        if last_sweep.elapsed() >= META_SWEEP_EVERY || !open {
            last_sweep = Instant::now();
            if let Err(e) = writer.sweep_meta() {
                stats.write_errors.fetch_add(1, Ordering::Relaxed);
                log::warn!("request log metadata sweep: {e}");
            }
        }
        stats.rows.store(writer.rows(), Ordering::Relaxed);
        stats.round_done(answers);
        if !open {
            return;
        }
    }
}

fn retain(writer: &mut Writer, cfg: &LogsConfig, stats: &LogStats) {
    let min_ts = now_unix_ms().saturating_sub(cfg.max_age.as_millis() as u64);
    for _ in 0..RETENTION_PASSES {
        match writer.retain(cfg.max_rows, min_ts) {
            Ok(0) => return,
            Ok(n) => {
                stats.rows_deleted.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                stats.write_errors.fetch_add(1, Ordering::Relaxed);
                log::warn!("request log retention: {e}");
                return;
            }
        }
    }
}
