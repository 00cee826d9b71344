//! The log thread: receives finished request records from the shards and
//! commits them to the request log store in batches, then applies retention.
//!
//! Control plane, a std thread. It never makes a shard wait: shards `try_send`
//! into a bounded queue ([`LOG_QUEUE`]) and count a drop when it is full. The
//! thread does not sleep in `recv` (a blocked receiver would make every send
//! wake it, a syscall per request on the shard): it wakes every
//! `logs.flush_interval`, takes what is queued (at most [`MAX_BATCH`] rows,
//! going again at once when there were more), and commits it in one
//! transaction. So a crash or `kill -9` loses at most the rows of one interval
//! (plus the one being committed), under a second by construction.

use crate::config::LogsConfig;
use crate::logqueue::LogInbound;
use crate::logstore::write::{Retained, Writer};
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
/// Errors that may wait besides: they have a queue of their own, so a log
/// that falls behind drops successes (which are tallied) before errors.
pub const LOG_ERROR_QUEUE: usize = 1 << 13;
/// Most rows one transaction commits. Each round takes what is queued, up to
/// this; when it took this many the next round starts at once instead of
/// after `logs.flush_interval`. Unbounded, a round under saturation kept
/// taking what the shards queued while it took: its first transaction held
/// 427,786 rows (150 MB of records) and took 5.6 s to commit, while the queue
/// behind it overflowed and dropped about half of all rows, and a crash in
/// that time would have lost all of them.
pub const MAX_BATCH: usize = 8192;
/// How often retention runs.
pub const RETENTION_EVERY: Duration = Duration::from_secs(1);
/// Most retention passes per run (each deletes up to `RETENTION_BATCH` rows).
pub const RETENTION_PASSES: usize = 4;
/// How often metadata rows of deleted requests are swept (a scan of `meta_seqs`).
pub const META_SWEEP_EVERY: Duration = Duration::from_secs(60);

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
    inbound: LogInbound,
    stats: Arc<LogStats>,
    budgets: Arc<crate::budget::Budgets>,
) -> Result<JoinHandle<()>, String> {
    let mut writer = Writer::open(&path)?;
    writer.set_yield(cfg.yield_to_requests);
    stats.rows.store(writer.rows(), Ordering::Relaxed);
    std::thread::Builder::new()
        .name("aigw-log".into())
        .spawn(move || {
            if let Err(e) = crate::sys::lower_thread_priority(crate::sys::BACKGROUND_NICE) {
                log::debug!("log thread keeps its priority: {e}");
            }
            run(&mut writer, cfg, &inbound, &stats, &budgets)
        })
        .map_err(|e| format!("cannot start the log thread: {e}"))
}

fn run(
    writer: &mut Writer,
    mut cfg: LogsConfig,
    queue: &LogInbound,
    stats: &LogStats,
    budgets: &crate::budget::Budgets,
) {
    let mut batch: Vec<RequestRecord> = Vec::with_capacity(MAX_BATCH);
    let mut last_retention = Instant::now();
    let mut last_sweep = Instant::now();
    // The last round took a full batch: more may be queued.
    let mut full = false;
    loop {
        if let Some(new) = stats
            .reloaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            cfg = new;
            writer.set_yield(cfg.yield_to_requests);
        }
        // Set again since the last take cleared it (a shard found the queue
        // full, possibly before that take made room): take at once, so a
        // stale flag cannot keep successes unoffered for a whole interval.
        let wait = if full || queue.full.load(Ordering::Relaxed) {
            Duration::ZERO
        } else {
            cfg.flush_interval
        };
        let (answers, stop) = stats.wait_round(wait);
        let taken = take(
            [&queue.rx[0], &queue.rx[1]],
            &mut batch,
            &queue.payload_bytes,
        );
        if queue.full.load(Ordering::Relaxed) {
            queue.full.store(false, Ordering::Relaxed);
        }
        let tallies = queue.tallies.take();
        if !tallies.is_empty()
            && let Err(e) = writer.insert_tallies(&tallies)
        {
            stats.write_errors.fetch_add(1, Ordering::Relaxed);
            log::warn!(
                "request log: {} tallies of requests kept no row of were not written: {e}",
                tallies.len()
            );
        }
        // Amounts budgets took for a new window: a restart goes on with them
        // (those of budgets no longer configured go first).
        if let Some(keep) = budgets.take_keep()
            && let Err(e) = writer.keep_amounts(&keep)
        {
            stats.write_errors.fetch_add(1, Ordering::Relaxed);
            log::warn!("request log: stored budget amounts were not pruned: {e}");
        }
        let amounts = budgets.take_amounts();
        if !amounts.is_empty()
            && let Err(e) = writer.save_amounts(&amounts)
        {
            stats.write_errors.fetch_add(1, Ordering::Relaxed);
            log::warn!(
                "request log: {} budget amounts in force were not stored (a restart in their window takes the configured amount): {e}",
                amounts.len()
            );
        }
        full = taken == Taken::Full;
        let open = !stop && taken != Taken::Disconnected;
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
        // The last round before stopping (the queue empty) retains and
        // sweeps once, not after each of the batches that lead up to it.
        let last = !open && !full;
        // Over the row limit: trim at once; by age: once a second.
        if writer.rows() > cfg.max_rows || last_retention.elapsed() >= RETENTION_EVERY || last {
            last_retention = Instant::now();
            retain(writer, &cfg, stats);
        }
        if last_sweep.elapsed() >= META_SWEEP_EVERY || last {
            last_sweep = Instant::now();
            if let Err(e) = writer.sweep_meta() {
                stats.write_errors.fetch_add(1, Ordering::Relaxed);
                log::warn!("request log metadata sweep: {e}");
            }
        }
        stats.rows.store(writer.rows(), Ordering::Relaxed);
        // A commit asked for is answered once the queue is empty, and a stop
        // waits for that too.
        if full {
            continue;
        }
        stats.round_done(answers);
        if last {
            return;
        }
    }
}

/// How a round's taking ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Taken {
    /// The queue is empty.
    Empty,
    /// The batch is full; more may be queued.
    Full,
    /// Every sender is gone (and the queue is empty).
    Disconnected,
}

/// Moves queued records into `batch`, from each queue in turn (errors
/// first), until it holds [`MAX_BATCH`] or every queue is empty.
fn take(
    queues: [&Receiver<RequestRecord>; 2],
    batch: &mut Vec<RequestRecord>,
    payload_bytes: &AtomicUsize,
) -> Taken {
    let mut gone = 0;
    for rx in queues {
        loop {
            if batch.len() >= MAX_BATCH {
                return Taken::Full;
            }
            match rx.try_recv() {
                Ok(r) => {
                    payload_bytes.fetch_sub(r.payload_len(), Ordering::Relaxed);
                    batch.push(r)
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    gone += 1;
                    break;
                }
            }
        }
    }
    if gone == queues.len() {
        Taken::Disconnected
    } else {
        Taken::Empty
    }
}

fn retain(writer: &mut Writer, cfg: &LogsConfig, stats: &LogStats) {
    let min_ts = now_unix_ms().saturating_sub(cfg.max_age.as_millis() as u64);
    for _ in 0..RETENTION_PASSES {
        match writer.retain(cfg.max_rows, min_ts) {
            Ok(Retained {
                rows: 0,
                tallies: 0,
            }) => return,
            Ok(n) => {
                stats.rows_deleted.fetch_add(n.rows, Ordering::Relaxed);
            }
            Err(e) => {
                stats.write_errors.fetch_add(1, Ordering::Relaxed);
                log::warn!("request log retention: {e}");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reqid::IdGen;

    fn records(ids: &mut IdGen, n: usize) -> Vec<RequestRecord> {
        (0..n)
            .map(|i| {
                let mut r =
                    RequestRecord::new(ids.id(1_790_000_000_000 + i as u64), 0, Instant::now());
                r.status = 200;
                r
            })
            .collect()
    }

    #[test]
    fn a_round_takes_at_most_a_batch_and_says_when_more_may_wait() {
        let (tx, rx) = std::sync::mpsc::sync_channel(LOG_QUEUE);
        let (tx_e, rx_e) = std::sync::mpsc::sync_channel(LOG_ERROR_QUEUE);
        let bytes = AtomicUsize::new(0);
        let mut ids = IdGen::new(0);
        for r in records(&mut ids, 2 * MAX_BATCH + 5) {
            tx.send(r).unwrap();
        }
        // An error queued after them is taken first.
        let mut error = records(&mut ids, 1).pop().unwrap();
        error.status = 502;
        tx_e.send(error).unwrap();
        let mut batch = Vec::new();
        assert_eq!(take([&rx_e, &rx], &mut batch, &bytes), Taken::Full);
        assert_eq!(batch.len(), MAX_BATCH);
        assert_eq!(batch[0].status, 502);
        batch.clear();
        assert_eq!(take([&rx_e, &rx], &mut batch, &bytes), Taken::Full);
        batch.clear();
        assert_eq!(take([&rx_e, &rx], &mut batch, &bytes), Taken::Empty);
        assert_eq!(batch.len(), 6);
        batch.clear();
        drop(tx);
        // One queue gone is not the end.
        assert_eq!(take([&rx_e, &rx], &mut batch, &bytes), Taken::Empty);
        drop(tx_e);
        assert_eq!(take([&rx_e, &rx], &mut batch, &bytes), Taken::Disconnected);
        assert!(batch.is_empty());
    }

    #[test]
    fn a_flush_answers_once_every_queued_row_is_committed() {
        let dir = std::env::temp_dir().join(format!("aigw-logthread-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (queue, inbound) = crate::logqueue::LogQueue::new(LOG_QUEUE, 1);
        let n = 2 * MAX_BATCH + 5;
        let mut ids = IdGen::new(0);
        for r in records(&mut ids, n) {
            queue.tx.send(r).unwrap();
        }
        let cfg = LogsConfig {
            enabled: true,
            payloads: false,
            payload_max: 0,
            sample: 1.0,
            max_rows: u64::MAX >> 1,
            max_age: Duration::from_secs(86_400),
            // Long: only the flush below starts the rounds.
            flush_interval: Duration::from_secs(600),
            yield_to_requests: true,
        };
        let stats = Arc::new(LogStats::default());
        // As a shard leaves it when it found the queue full.
        queue.full.store(true, Ordering::Relaxed);
        let thread = spawn(
            dir.join("requests.db"),
            cfg,
            inbound,
            stats.clone(),
            crate::budget::Budgets::new(),
        )
        .unwrap();
        assert!(
            stats.flush(Duration::from_secs(60)),
            "the flush was not answered"
        );
        assert_eq!(stats.rows_written.load(Ordering::Relaxed), n as u64);
        assert!(!queue.successes_full(), "a take makes room");
        // A stop commits what came after the flush, however many batches it takes.
        for r in records(&mut ids, MAX_BATCH + 1) {
            queue.tx.send(r).unwrap();
        }
        stats.stop();
        thread.join().unwrap();
        assert_eq!(
            stats.rows_written.load(Ordering::Relaxed),
            (n + MAX_BATCH + 1) as u64
        );
        drop(queue);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
