//! The stats thread: merges the shards' snapshots (deltas of `crate::stats`
//! recorders) into the process-wide view the admin socket renders. Control
//! plane: never imported by the data plane.

use crate::stats::labels::{KeyCounters, LabelCounters, MergedLabels};
use crate::stats::{Counters, Gauges, Snapshot, new_series};
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub use crate::stats::{SERIES, SNAPSHOT_QUEUE, Series, send_snapshot};

/// Seconds of history kept for the sliding windows of `/stats`.
pub const WINDOW_SECS: u64 = 300;

/// Least time between two warnings that request-log rows were dropped.
pub const DROP_WARN_EVERY: Duration = Duration::from_secs(60);

/// Says in the server log, at most once per [`DROP_WARN_EVERY`], that rows
/// were dropped from the request log (its queue was full): `/stats` counts
/// them, but an operator reading the log should not have to look there to
/// learn that the log, and the spend a restart rebuilds from it, is partial.
#[derive(Default)]
pub struct DropWarning {
    /// Dropped since the last warning.
    pending: u64,
    last: Option<Instant>,
}

impl DropWarning {
    /// Counts `dropped` more rows; returns how many to warn about now.
    pub fn note(&mut self, dropped: u64, now: Instant) -> Option<u64> {
        self.pending += dropped;
        if self.pending == 0
            || self
                .last
                .is_some_and(|t| now.duration_since(t) < DROP_WARN_EVERY)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.pending))
    }
}

/// What was counted in one second (since the gateway started).
#[derive(Default)]
pub struct Slot {
    pub second: u64,
    pub labels: BTreeMap<(String, String), LabelCounters>,
}

/// Totals over the last few seconds.
#[derive(Default)]
pub struct Window {
    /// Seconds the window covers (less than asked when the gateway is younger).
    pub seconds: u64,
    pub labels: BTreeMap<(String, String), LabelCounters>,
}

/// The merged, process-wide view.
pub struct Merged {
    pub started: Instant,
    pub shards: usize,
    pub counters: Counters,
    pub histograms: [Histogram<u64>; 4],
    /// Counters by (provider, model), bounded.
    pub labels: MergedLabels,
    /// Counters by gateway key id since start, bounded.
    pub keys: BTreeMap<String, KeyCounters>,
    /// Counters by metadata field, then value, since start, bounded.
    pub metadata: BTreeMap<String, BTreeMap<String, KeyCounters>>,
    pub flushed: Vec<u64>,
    /// The latest gauges of each shard.
    pub gauges: Vec<Gauges>,
    /// Per-second history, oldest first, at most [`WINDOW_SECS`] long.
    pub history: std::collections::VecDeque<Slot>,
}

impl Merged {
    /// A gauge summed over shards.
    pub fn gauge(&self, f: impl Fn(&Gauges) -> u64) -> u64 {
        self.gauges.iter().map(f).sum()
    }

    /// The totals of the last `secs` seconds.
    pub fn window(&self, secs: u64) -> Window {
        let now = self.started.elapsed().as_secs();
        let from = now.saturating_sub(secs.saturating_sub(1));
        let mut w = Window {
            seconds: secs.min(now + 1),
            ..Window::default()
        };
        for slot in self.history.iter().filter(|s| s.second >= from) {
            for (k, v) in &slot.labels {
                w.labels.entry(k.clone()).or_default().add(v);
            }
        }
        w
    }

    /// The slot of the current second, created (and old ones dropped) as needed.
    fn slot(&mut self) -> &mut Slot {
        let now = self.started.elapsed().as_secs();
        while self
            .history
            .front()
            .is_some_and(|s| s.second + WINDOW_SECS <= now)
        {
            self.history.pop_front();
        }
        if self.history.back().is_none_or(|s| s.second != now) {
            self.history.push_back(Slot {
                second: now,
                ..Slot::default()
            });
        }
        self.history.back_mut().expect("just pushed")
    }

    /// Requests by status class, errors by source and tokens, over everything.
    pub fn totals(&self) -> LabelCounters {
        let mut t = LabelCounters::default();
        for c in self.labels.by.values() {
            t.add(c);
        }
        t
    }

    /// Counters summed per provider (requests that reached none excluded).
    pub fn providers(&self) -> BTreeMap<&str, LabelCounters> {
        let mut out: BTreeMap<&str, LabelCounters> = BTreeMap::new();
        for ((p, _), c) in &self.labels.by {
            if p != crate::stats::labels::NONE {
                out.entry(p.as_str()).or_default().add(c);
            }
        }
        out
    }
}

pub struct StatsHub {
    pub merged: Mutex<Merged>,
    changed: Condvar,
    /// Numbers flush requests; ticks send 0, so a request waits for a number no tick reaches.
    flush_seq: std::sync::atomic::AtomicU64,
}

impl StatsHub {
    pub fn new(shards: usize) -> Arc<StatsHub> {
        Arc::new(StatsHub {
            merged: Mutex::new(Merged {
                started: Instant::now(),
                shards,
                counters: Counters::default(),
                histograms: new_series(),
                labels: MergedLabels::default(),
                keys: BTreeMap::new(),
                metadata: BTreeMap::new(),
                flushed: vec![0; shards],
                gauges: vec![Gauges::default(); shards],
                history: std::collections::VecDeque::new(),
            }),
            changed: Condvar::new(),
            flush_seq: std::sync::atomic::AtomicU64::new(1),
        })
    }

    pub fn merge(&self, s: Snapshot) {
        let mut m = self.merged.lock().unwrap_or_else(|p| p.into_inner());
        m.counters.add(&s.counters);
        for (acc, h) in m.histograms.iter_mut().zip(s.histograms.iter()) {
            let _ = acc.add(h);
        }
        for (provider, model, c) in s.labels {
            let key = m.labels.add(provider, model, &c);
            m.slot().labels.entry(key).or_default().add(&c);
        }
        for (key, c) in s.keys {
            let key = if m.keys.contains_key(&key) || m.keys.len() < crate::stats::labels::MAX_KEYS
            {
                key
            } else {
                crate::stats::labels::OTHER.to_string()
            };
            m.keys.entry(key).or_default().add(&c);
        }
        for (field, value, c) in s.metadata {
            // Bounded by the shards' bounds: each shard's first fields and
            // values, and the config's.
            m.metadata
                .entry(field)
                .or_default()
                .entry(value)
                .or_default()
                .add(&c);
        }
        if s.shard < m.flushed.len() {
            m.flushed[s.shard] = m.flushed[s.shard].max(s.seq);
            m.gauges[s.shard] = s.gauges;
        }
        drop(m);
        self.changed.notify_all();
    }

    /// Asks every shard for a snapshot and waits (at most `wait`) until all
    /// arrived. Shards handle commands in order, so whatever was sent to them
    /// before (a reload, say) has been applied when this returns true.
    pub fn flush_shards(&self, shards: &super::ShardSenders, wait: Duration) -> bool {
        let seq = self
            .flush_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for tx in shards.iter() {
            let _ = tx.send(super::ShardCmd::Flush(seq));
        }
        self.wait_flushed(seq, wait)
    }

    /// Waits until every shard has sent a snapshot numbered at least `seq`.
    pub fn wait_flushed(&self, seq: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut m = self.merged.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if m.flushed.iter().all(|f| *f >= seq) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            m = self
                .changed
                .wait_timeout(m, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Runs the stats thread until every shard's sender is gone.
    pub fn spawn_merger(self: &Arc<Self>, rx: Receiver<Snapshot>) -> std::thread::JoinHandle<()> {
        let hub = Arc::clone(self);
        std::thread::Builder::new()
            .name("aigw-stats".into())
            .spawn(move || {
                let mut drops = DropWarning::default();
                while let Ok(s) = rx.recv() {
                    if let Some(n) = drops.note(s.counters.log_dropped, Instant::now()) {
                        log::warn!(
                            "request log: {n} rows dropped (its queue was full: the log thread cannot keep up with this request rate); they are not in `aigw logs`, but their requests, tokens and spend are tallied for `aigw usage` and a restart's rebuild; `logs.dropped` in /stats counts them"
                        );
                    }
                    hub.merge(s);
                }
            })
            .expect("spawn stats thread")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_rows_are_warned_about_at_most_once_a_minute_and_none_are_forgotten() {
        let t0 = Instant::now();
        let mut w = DropWarning::default();
        assert_eq!(w.note(0, t0), None, "nothing dropped, nothing said");
        assert_eq!(w.note(5, t0), Some(5));
        assert_eq!(w.note(3, t0 + Duration::from_secs(1)), None);
        assert_eq!(w.note(0, t0 + Duration::from_secs(59)), None);
        assert_eq!(
            w.note(2, t0 + DROP_WARN_EVERY),
            Some(5),
            "the quiet minute's drops are told"
        );
        assert_eq!(w.note(0, t0 + DROP_WARN_EVERY * 3), None);
    }
    use crate::record::{RequestRecord, Usage};
    use crate::stats::ShardStats;
    use std::sync::Arc;

    #[test]
    fn snapshots_merge_into_totals() {
        let hub = StatsHub::new(2);
        for shard in 0..2 {
            let mut s = ShardStats::default();
            let mut r = RequestRecord::new(Default::default(), shard, Instant::now());
            r.status = 200;
            r.provider = Some(Arc::from("mock"));
            r.usage = Usage {
                input_tokens: Some(3),
                output_tokens: Some(4),
                cached_tokens: None,
                cache_write_tokens: None,
            };
            r.total = Duration::from_micros(100);
            s.record(&r);
            hub.merge(s.take(shard, 1, Gauges::default()));
        }
        assert!(hub.wait_flushed(1, Duration::from_millis(1)));
        let m = hub.merged.lock().unwrap();
        assert_eq!(
            (
                m.totals().total_requests(),
                m.totals().input_tokens,
                m.totals().output_tokens
            ),
            (2, 6, 8)
        );
        assert_eq!(m.providers()["mock"].total_requests(), 2);
        assert_eq!(m.histograms[Series::Total as usize].len(), 2);
    }
}
