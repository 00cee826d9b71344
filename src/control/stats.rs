//! Stats: each shard records into its own counters and histograms (plain fields,
//! no atomics on the hot path); once a second, or when the admin socket asks,
//! a shard sends a snapshot to the stats thread, which merges them.
//!
//! Owns: the per-shard recorder ([`ShardStats`]), the cross-thread snapshot, and
//! the merged view ([`StatsHub`]) the admin socket renders. Counts come only
//! from [`RequestRecord`]s, the single place request facts live.

use crate::fasthash::FastMap;
use crate::record::{Outcome, RequestRecord};
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Largest latency a histogram holds (µs); longer values saturate.
pub const MAX_LATENCY_US: u64 = 3_600_000_000;
/// Snapshots that may wait for the stats thread before shards start dropping.
pub const SNAPSHOT_QUEUE: usize = 256;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub requests: u64,
    pub status_2xx: u64,
    pub status_3xx: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    pub errors_gateway: u64,
    pub errors_provider: u64,
    pub aborted_upstream: u64,
    pub aborted_client: u64,
    pub streams: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    pub upstream_connects: u64,
    pub upstream_reused: u64,
    pub connections_accepted: u64,
    pub dropped_snapshots: u64,
}

impl Counters {
    fn add(&mut self, o: &Counters) {
        self.requests += o.requests;
        self.status_2xx += o.status_2xx;
        self.status_3xx += o.status_3xx;
        self.status_4xx += o.status_4xx;
        self.status_5xx += o.status_5xx;
        self.errors_gateway += o.errors_gateway;
        self.errors_provider += o.errors_provider;
        self.aborted_upstream += o.aborted_upstream;
        self.aborted_client += o.aborted_client;
        self.streams += o.streams;
        self.input_tokens += o.input_tokens;
        self.output_tokens += o.output_tokens;
        self.cached_tokens += o.cached_tokens;
        self.upstream_connects += o.upstream_connects;
        self.upstream_reused += o.upstream_reused;
        self.connections_accepted += o.connections_accepted;
        self.dropped_snapshots += o.dropped_snapshots;
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProviderCounters {
    pub requests: u64,
    pub errors: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// The latency series every shard keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Series {
    Total = 0,
    Gateway = 1,
    UpstreamTtfb = 2,
    Ttft = 3,
}

pub const SERIES: [(Series, &str); 4] = [
    (Series::Total, "total"),
    (Series::Gateway, "gateway"),
    (Series::UpstreamTtfb, "upstream_ttfb"),
    (Series::Ttft, "ttft"),
];

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid bounds")
}

/// One empty histogram per [`Series`].
fn new_series() -> [Histogram<u64>; 4] {
    [
        new_histogram(),
        new_histogram(),
        new_histogram(),
        new_histogram(),
    ]
}

/// What a shard sends: deltas since its previous snapshot, plus gauges.
pub struct Snapshot {
    pub shard: usize,
    pub seq: u64,
    pub counters: Counters,
    pub histograms: [Histogram<u64>; 4],
    pub providers: Vec<(String, ProviderCounters)>,
    pub open_connections: u64,
    pub idle_upstream: u64,
}

const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Snapshot>();
};

/// One shard's recorder.
pub struct ShardStats {
    pub counters: Counters,
    histograms: [Histogram<u64>; 4],
    providers: FastMap<Rc<str>, ProviderCounters>,
}

impl Default for ShardStats {
    fn default() -> Self {
        ShardStats {
            counters: Counters::default(),
            histograms: new_series(),
            providers: FastMap::default(),
        }
    }
}

impl ShardStats {
    pub fn record(&mut self, r: &RequestRecord) {
        let c = &mut self.counters;
        c.requests += 1;
        match r.status {
            200..=299 => c.status_2xx += 1,
            300..=399 => c.status_3xx += 1,
            400..=499 => c.status_4xx += 1,
            _ => c.status_5xx += 1,
        }
        match r.error_source {
            Some("provider") => c.errors_provider += 1,
            Some(_) => c.errors_gateway += 1,
            None => {}
        }
        match r.outcome {
            Outcome::UpstreamAborted => c.aborted_upstream += 1,
            Outcome::ClientAborted => c.aborted_client += 1,
            _ => {}
        }
        c.streams += u64::from(r.stream);
        c.input_tokens += r.usage.input_tokens.unwrap_or(0);
        c.output_tokens += r.usage.output_tokens.unwrap_or(0);
        c.cached_tokens += r.usage.cached_tokens.unwrap_or(0);
        let us = |d: Duration| (d.as_micros() as u64).max(1);
        self.histograms[Series::Total as usize].saturating_record(us(r.total));
        self.histograms[Series::Gateway as usize].saturating_record(us(r.gateway));
        if let Some(t) = r.upstream_ttfb {
            self.histograms[Series::UpstreamTtfb as usize].saturating_record(us(t));
        }
        if let Some(t) = r.ttft {
            self.histograms[Series::Ttft as usize].saturating_record(us(t));
        }
        if let Some(p) = &r.provider {
            let pc = self.providers.entry(p.clone()).or_default();
            pc.requests += 1;
            pc.errors += u64::from(r.status >= 400);
            pc.input_tokens += r.usage.input_tokens.unwrap_or(0);
            pc.output_tokens += r.usage.output_tokens.unwrap_or(0);
        }
    }

    pub fn histogram_mut(&mut self, s: Series) -> &mut Histogram<u64> {
        &mut self.histograms[s as usize]
    }

    /// Takes the deltas, leaving the recorder empty.
    pub fn take(
        &mut self,
        shard: usize,
        seq: u64,
        open_connections: u64,
        idle_upstream: u64,
    ) -> Snapshot {
        let histograms = std::mem::replace(&mut self.histograms, new_series());
        Snapshot {
            shard,
            seq,
            counters: std::mem::take(&mut self.counters),
            histograms,
            providers: self
                .providers
                .drain()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            open_connections,
            idle_upstream,
        }
    }
}

/// Sends a snapshot without ever blocking the shard; a full queue counts a drop.
pub fn send_snapshot(tx: &SyncSender<Snapshot>, snap: Snapshot) -> bool {
    match tx.try_send(snap) {
        Ok(()) => true,
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
    }
}

/// The merged, process-wide view.
pub struct Merged {
    pub started: Instant,
    pub shards: usize,
    pub counters: Counters,
    pub histograms: [Histogram<u64>; 4],
    pub providers: BTreeMap<String, ProviderCounters>,
    pub flushed: Vec<u64>,
    pub open_connections: Vec<u64>,
    pub idle_upstream: Vec<u64>,
}

pub struct StatsHub {
    pub merged: Mutex<Merged>,
    changed: Condvar,
}

impl StatsHub {
    pub fn new(shards: usize) -> Arc<StatsHub> {
        Arc::new(StatsHub {
            merged: Mutex::new(Merged {
                started: Instant::now(),
                shards,
                counters: Counters::default(),
                histograms: new_series(),
                providers: BTreeMap::new(),
                flushed: vec![0; shards],
                open_connections: vec![0; shards],
                idle_upstream: vec![0; shards],
            }),
            changed: Condvar::new(),
        })
    }

    fn merge(&self, s: Snapshot) {
        let mut m = self.merged.lock().unwrap_or_else(|p| p.into_inner());
        m.counters.add(&s.counters);
        for (acc, h) in m.histograms.iter_mut().zip(s.histograms.iter()) {
            let _ = acc.add(h);
        }
        for (name, pc) in s.providers {
            let acc = m.providers.entry(name).or_default();
            acc.requests += pc.requests;
            acc.errors += pc.errors;
            acc.input_tokens += pc.input_tokens;
            acc.output_tokens += pc.output_tokens;
        }
        if s.shard < m.flushed.len() {
            m.flushed[s.shard] = m.flushed[s.shard].max(s.seq);
            m.open_connections[s.shard] = s.open_connections;
            m.idle_upstream[s.shard] = s.idle_upstream;
        }
        drop(m);
        self.changed.notify_all();
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
                while let Ok(s) = rx.recv() {
                    hub.merge(s);
                }
            })
            .expect("spawn stats thread")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::Usage;

    #[test]
    fn snapshots_merge_into_totals() {
        let hub = StatsHub::new(2);
        for shard in 0..2 {
            let mut s = ShardStats::default();
            let mut r = RequestRecord::new(1, shard, Instant::now());
            r.status = 200;
            r.provider = Some(Rc::from("mock"));
            r.usage = Usage {
                input_tokens: Some(3),
                output_tokens: Some(4),
                cached_tokens: None,
            };
            r.total = Duration::from_micros(100);
            s.record(&r);
            hub.merge(s.take(shard, 1, 0, 0));
        }
        assert!(hub.wait_flushed(1, Duration::from_millis(1)));
        let m = hub.merged.lock().unwrap();
        assert_eq!(
            (
                m.counters.requests,
                m.counters.input_tokens,
                m.counters.output_tokens
            ),
            (2, 6, 8)
        );
        assert_eq!(m.providers["mock"].requests, 2);
        assert_eq!(m.histograms[Series::Total as usize].len(), 2);
    }
}
