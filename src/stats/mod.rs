//! The per-shard stats recorder: each shard records into its own counters and
//! histograms (plain fields, no atomics on the hot path); once a second, or when
//! the admin socket asks, a shard takes a [`Snapshot`] and sends it to the stats
//! thread (`control::stats`), which merges them.
//!
//! A leaf the data plane may import (it imports only `record`). Every counter is
//! counted from a [`RequestRecord`], the single place request facts live; shard
//! facts that are not requests (open connections, idle upstream connections,
//! connections accepted) are gauges handed to [`ShardStats::take`].

pub mod labels;

use crate::record::{Outcome, RequestRecord};
use hdrhistogram::Histogram;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::Duration;

/// Largest latency a histogram holds (µs); longer values saturate.
pub const MAX_LATENCY_US: u64 = 3_600_000_000;
/// Snapshots that may wait for the stats thread before shards start dropping.
pub const SNAPSHOT_QUEUE: usize = 256;

/// What is counted per shard besides the (provider, model) label counters,
/// which hold requests by status class, errors by source and tokens (the
/// totals are their sums: see `control::stats::Merged::totals`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub aborted_upstream: u64,
    pub aborted_client: u64,
    pub streams: u64,
    pub upstream_connects: u64,
    pub upstream_reused: u64,
    pub dropped_snapshots: u64,
    /// Records the request log's queue had no room for.
    pub log_dropped: u64,
    /// Rows logged without their bodies: the queue held too many body bytes.
    pub log_bodies_dropped: u64,
    /// Requests the log kept neither a row nor a tally of (the shard's tally
    /// and the log thread's inbox were both full).
    pub log_uncounted: u64,
}

impl Counters {
    pub fn add(&mut self, o: &Counters) {
        self.aborted_upstream += o.aborted_upstream;
        self.aborted_client += o.aborted_client;
        self.streams += o.streams;
        self.upstream_connects += o.upstream_connects;
        self.upstream_reused += o.upstream_reused;
        self.dropped_snapshots += o.dropped_snapshots;
        self.log_dropped += o.log_dropped;
        self.log_bodies_dropped += o.log_bodies_dropped;
        self.log_uncounted += o.log_uncounted;
    }
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

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid bounds")
}

/// One empty histogram per [`Series`].
pub fn new_series() -> [Histogram<u64>; 4] {
    [
        new_histogram(),
        new_histogram(),
        new_histogram(),
        new_histogram(),
    ]
}

/// Shard facts that are not requests, read when a snapshot is taken.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gauges {
    pub open_connections: u64,
    pub idle_upstream: u64,
    /// Requests between arrival and their record.
    pub requests_in_flight: u64,
    /// Event streams being relayed.
    pub streams_in_flight: u64,
    /// Client connections accepted since the shard started.
    pub connections_accepted: u64,
}

/// What a shard sends: deltas since its previous snapshot, plus gauges.
pub struct Snapshot {
    pub shard: usize,
    pub seq: u64,
    pub counters: Counters,
    pub histograms: [Histogram<u64>; 4],
    /// Counters by (provider, model), bounded.
    pub labels: Vec<(String, String, labels::LabelCounters)>,
    /// Counters by gateway key id, bounded.
    pub keys: Vec<(String, labels::KeyCounters)>,
    /// Counters by metadata field and value, bounded.
    pub metadata: Vec<(String, String, labels::KeyCounters)>,
    pub gauges: Gauges,
}

const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Snapshot>();
};

/// One shard's recorder.
pub struct ShardStats {
    counters: Counters,
    histograms: [Histogram<u64>; 4],
    labels: labels::ByLabel,
    keys: labels::ByKey,
    metadata: labels::ByMetadata,
}

impl Default for ShardStats {
    fn default() -> Self {
        ShardStats {
            counters: Counters::default(),
            histograms: new_series(),
            labels: labels::ByLabel::default(),
            keys: labels::ByKey::default(),
            metadata: labels::ByMetadata::default(),
        }
    }
}

impl ShardStats {
    pub fn record(&mut self, r: &RequestRecord) {
        let c = &mut self.counters;
        match r.outcome {
            Outcome::UpstreamAborted => c.aborted_upstream += 1,
            Outcome::ClientAborted => c.aborted_client += 1,
            _ => {}
        }
        c.streams += u64::from(r.stream);
        c.upstream_connects += u64::from(r.upstream_connects);
        c.upstream_reused += u64::from(r.upstream_reused);
        let us = |d: Duration| (d.as_micros() as u64).max(1);
        self.histograms[Series::Total as usize].saturating_record(us(r.total));
        self.histograms[Series::Gateway as usize].saturating_record(us(r.gateway));
        if let Some(t) = r.upstream_ttfb {
            self.histograms[Series::UpstreamTtfb as usize].saturating_record(us(t));
        }
        if let Some(t) = r.ttft {
            self.histograms[Series::Ttft as usize].saturating_record(us(t));
        }
        self.labels.record(r);
        self.keys.record(r);
        self.metadata.record(r);
    }

    /// A finished record the request log's queue had no room for. Not a fact
    /// of the request (it was answered), but of the log channel, as
    /// `dropped_snapshots` is of the stats channel.
    pub fn log_dropped(&mut self) {
        self.counters.log_dropped += 1;
    }

    /// A row the log keeps without its bodies (too many body bytes queued).
    pub fn log_bodies_dropped(&mut self) {
        self.counters.log_bodies_dropped += 1;
    }

    /// Requests the log keeps no row of and could not tally either.
    pub fn log_uncounted(&mut self, n: u64) {
        self.counters.log_uncounted += n;
    }

    /// Metadata fields counted apart whatever clients send first.
    pub fn reserve_metadata<'a>(
        &mut self,
        fields: impl Iterator<Item = (&'a str, Option<&'a str>)>,
    ) {
        self.metadata.reserve(fields);
    }

    /// Takes the deltas, leaving the recorder empty.
    pub fn take(&mut self, shard: usize, seq: u64, gauges: Gauges) -> Snapshot {
        let histograms = std::mem::replace(&mut self.histograms, new_series());
        Snapshot {
            shard,
            seq,
            counters: std::mem::take(&mut self.counters),
            histograms,
            labels: self.labels.take(),
            keys: self.keys.take(),
            metadata: self.metadata.take(),
            gauges,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorSource;
    use std::time::Instant;

    #[test]
    fn error_sources_are_counted_apart() {
        let mut s = ShardStats::default();
        for source in [
            Some(ErrorSource::Client),
            Some(ErrorSource::Client),
            Some(ErrorSource::Gateway),
            Some(ErrorSource::Provider),
            None,
        ] {
            let mut r = RequestRecord::new(Default::default(), 0, Instant::now());
            r.status = if source.is_some() { 400 } else { 200 };
            r.error_source = source;
            s.record(&r);
        }
        let mut c = labels::LabelCounters::default();
        for (_, _, l) in s.take(0, 1, Gauges::default()).labels {
            c.add(&l);
        }
        assert_eq!(
            (c.errors[0], c.errors[1], c.errors[2], c.total_requests()),
            (2, 1, 1, 5)
        );
    }
}
