//! What the mock remembers: request counters and the capture log.
//!
//! Owns the only state shared across shards. Counters are one padded pair of
//! atomics per shard (no cache-line bouncing on the hot path) summed when read;
//! the capture log is a short `Mutex<VecDeque>` critical section. Does not
//! decide what to record (that is `conn.rs`). Read by tests through
//! `MockServer` and by clients through `/mock/stats` and `/mock/requests`.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// How many requests the capture log keeps. Enough for any single test to
/// inspect everything it sent, small enough that a load run does not grow it.
pub const CAPTURE_CAPACITY: usize = 256;

/// One request as the mock received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapturedRequest {
    pub method: String,
    /// The request target as sent, query string included.
    pub path: String,
    /// Header lines in arrival order, names as the client spelled them,
    /// values lossily decoded as UTF-8.
    pub headers: Vec<(String, String)>,
    /// The body after chunked decoding.
    pub body: Vec<u8>,
}

impl CapturedRequest {
    /// The first header called `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON, for assertions on what a proxy forwarded.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "method": self.method,
            "path": self.path,
            "headers": self.headers,
            "body": String::from_utf8_lossy(&self.body),
        })
    }
}

/// Per-shard counters, padded to a cache line so shards never share one.
#[derive(Default, Debug)]
#[repr(align(64))]
pub struct ShardCounters {
    pub requests: AtomicU64,
    pub connections: AtomicU64,
}

/// Everything the shards record, shared behind one `Arc`.
#[derive(Debug)]
pub struct Record {
    shards: Vec<ShardCounters>,
    capture: Option<Mutex<VecDeque<CapturedRequest>>>,
    /// Requests being answered now, and the most at once (kept with capture
    /// on, for tests: shared by every shard, so off the benchmark path).
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

/// One request being answered, counted until it drops.
pub struct InFlight<'a>(Option<&'a Record>);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(r) = self.0 {
            r.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Record {
    pub fn new(shards: usize, capture: bool) -> Record {
        Record {
            shards: (0..shards.max(1))
                .map(|_| ShardCounters::default())
                .collect(),
            capture: capture.then(|| Mutex::new(VecDeque::with_capacity(CAPTURE_CAPACITY))),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
        }
    }

    /// Counts a request in flight until the guard drops (with capture on).
    pub fn enter(&self) -> InFlight<'_> {
        if !self.is_capturing() {
            return InFlight(None);
        }
        let now = self.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        self.max_in_flight.fetch_max(now, Ordering::AcqRel);
        InFlight(Some(self))
    }

    /// The most requests answered at once since start or last reset (capture on).
    pub fn max_in_flight(&self) -> u64 {
        self.max_in_flight.load(Ordering::Acquire)
    }

    /// The counters shard `i` writes to. Out-of-range indices share the last
    /// shard's counters rather than panic.
    pub fn shard(&self, i: usize) -> &ShardCounters {
        let last = self.shards.len().saturating_sub(1);
        &self.shards[i.min(last)]
    }

    pub fn is_capturing(&self) -> bool {
        self.capture.is_some()
    }

    pub fn requests(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.requests.load(Ordering::Relaxed))
            .sum()
    }

    pub fn connections(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.connections.load(Ordering::Relaxed))
            .sum()
    }

    /// Appends to the capture log, dropping the oldest entry when full.
    pub fn capture(&self, request: CapturedRequest) {
        let Some(log) = &self.capture else { return };
        let mut log = log.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if log.len() == CAPTURE_CAPACITY {
            log.pop_front();
        }
        log.push_back(request);
    }

    /// The capture log, oldest first.
    pub fn captured(&self) -> Vec<CapturedRequest> {
        match &self.capture {
            Some(log) => {
                let log = log.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                log.iter().cloned().collect()
            }
            None => Vec::new(),
        }
    }

    /// Zeroes the counters and empties the capture log.
    pub fn reset(&self) {
        self.max_in_flight.store(0, Ordering::Release);
        for s in &self.shards {
            s.requests.store(0, Ordering::Relaxed);
            s.connections.store(0, Ordering::Relaxed);
        }
        if let Some(log) = &self.capture {
            log.lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clear();
        }
    }

    /// The `/mock/stats` body.
    pub fn stats_json(&self) -> Vec<u8> {
        format!(
            "{{\"requests\":{},\"connections\":{}}}",
            self.requests(),
            self.connections()
        )
        .into_bytes()
    }

    /// The `/mock/requests` body: a JSON array, oldest first.
    pub fn captured_json(&self) -> Vec<u8> {
        let all: Vec<serde_json::Value> = self.captured().iter().map(|r| r.to_json()).collect();
        serde_json::to_vec(&all).unwrap_or_else(|_| b"[]".to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(n: usize) -> CapturedRequest {
        CapturedRequest {
            method: "POST".into(),
            path: format!("/v1/{n}"),
            headers: vec![("X-Trace".into(), n.to_string())],
            body: Vec::new(),
        }
    }

    #[test]
    fn capture_log_keeps_only_the_newest_requests_oldest_first() {
        let record = Record::new(1, true);
        for n in 0..CAPTURE_CAPACITY + 3 {
            record.capture(req(n));
        }
        let got = record.captured();
        assert_eq!(got.len(), CAPTURE_CAPACITY);
        assert_eq!(got[0].path, "/v1/3");
        assert_eq!(got[0].header("x-trace"), Some("3"));
    }

    #[test]
    fn counters_sum_over_shards_and_reset_to_zero() {
        let record = Record::new(2, false);
        record.shard(0).requests.fetch_add(2, Ordering::Relaxed);
        record.shard(1).requests.fetch_add(3, Ordering::Relaxed);
        record.shard(9).connections.fetch_add(1, Ordering::Relaxed);
        assert_eq!(record.stats_json(), br#"{"requests":5,"connections":1}"#);
        record.reset();
        assert_eq!(record.requests(), 0);
        assert!(record.captured().is_empty());
    }
}
