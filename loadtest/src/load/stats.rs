//! What aigw-load counts: latency histograms, status codes and errors.
//!
//! Owns: one `Stats` value per executor per interval, and merging them. Each
//! executor records into its own `Stats` (no sharing between threads), swaps it
//! out every second and sends it to the main thread, which merges (see
//! `progress.rs`). Does not decide what is measured (that is `conn.rs`).

use hdrhistogram::Histogram;
use std::time::Duration;

/// Highest latency a histogram holds, in µs: one minute; longer saturates.
pub const MAX_LATENCY_US: u64 = 60_000_000;
/// Significant figures kept by the histograms (0.1% value resolution).
pub const SIGFIGS: u8 = 3;

/// Why a request did not complete with a response below 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The TCP connect failed or timed out.
    Connect,
    /// A read or write took longer than `--timeout`.
    Timeout,
    /// The connection reset or closed mid-response.
    Io,
    /// The response could not be parsed.
    Protocol,
    /// A response with status >= 400 (also counted under its status).
    Status,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 5] = [
        ErrorKind::Connect,
        ErrorKind::Timeout,
        ErrorKind::Io,
        ErrorKind::Protocol,
        ErrorKind::Status,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Io => "io",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Status => "status",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A fresh latency histogram in µs.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, SIGFIGS).expect("valid histogram bounds")
}

/// Whole microseconds, at least 1 for non-zero durations below a µs.
pub fn micros(d: Duration) -> u64 {
    let us = d.as_micros() as u64;
    if us == 0 && !d.is_zero() { 1 } else { us }
}

/// Counts for one slice of time on one executor, or merged.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Full request latency, µs (from the intended send time in open loop).
    pub latency: Histogram<u64>,
    /// Time to the first server-sent event, µs (streams only).
    pub ttft: Histogram<u64>,
    /// Gap between consecutive events of one stream, µs.
    pub gap: Histogram<u64>,
    /// Open loop: how late requests left against their intended time, µs.
    /// Large values with an idle server mean the load generator (or its
    /// connection count) is the bottleneck, not the target.
    pub send_lag: Histogram<u64>,
    /// Responses by status code, few distinct codes so a small vector.
    pub status: Vec<(u16, u64)>,
    errors: [u64; ErrorKind::ALL.len()],
    /// Responses received, any status.
    pub responses: u64,
    /// Scheduled (open-loop) requests never sent because the run ended while
    /// their connection was still busy.
    pub unsent: u64,
    pub events: u64,
    pub body_bytes: u64,
    /// The first failure's message, to tell the user what went wrong.
    pub first_error: Option<String>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            latency: new_histogram(),
            ttft: new_histogram(),
            gap: new_histogram(),
            send_lag: new_histogram(),
            status: Vec::new(),
            errors: [0; ErrorKind::ALL.len()],
            responses: 0,
            unsent: 0,
            events: 0,
            body_bytes: 0,
            first_error: None,
        }
    }
}

impl Stats {
    /// A response arrived; statuses >= 400 also count as errors.
    pub fn record_response(&mut self, status: u16, latency: Duration) {
        self.responses += 1;
        self.latency.saturating_record(micros(latency));
        match self.status.iter_mut().find(|(s, _)| *s == status) {
            Some((_, n)) => *n += 1,
            None => self.status.push((status, 1)),
        }
        if status >= 400 {
            self.errors[ErrorKind::Status.index()] += 1;
        }
    }

    /// A request failed without a response.
    pub fn record_failure(&mut self, kind: ErrorKind) {
        self.errors[kind.index()] += 1;
    }

    /// Keeps `why` if it is the first failure seen; built lazily so the
    /// common case allocates nothing.
    pub fn note_first_error(&mut self, why: impl FnOnce() -> String) {
        if self.first_error.is_none() {
            self.first_error = Some(why());
        }
    }

    pub fn errors_of(&self, kind: ErrorKind) -> u64 {
        self.errors[kind.index()]
    }

    /// All failed requests: no response, or a status >= 400.
    pub fn errors(&self) -> u64 {
        self.errors.iter().sum()
    }

    /// Requests that ended one way or the other (responses + failures without one).
    pub fn attempts(&self) -> u64 {
        self.responses + self.errors() - self.errors_of(ErrorKind::Status)
    }

    /// Responses below 400.
    pub fn successes(&self) -> u64 {
        self.responses - self.errors_of(ErrorKind::Status)
    }

    pub fn merge(&mut self, other: &Stats) {
        self.latency
            .add(&other.latency)
            .expect("same histogram bounds");
        self.ttft.add(&other.ttft).expect("same histogram bounds");
        self.gap.add(&other.gap).expect("same histogram bounds");
        self.send_lag
            .add(&other.send_lag)
            .expect("same histogram bounds");
        for &(status, n) in &other.status {
            match self.status.iter_mut().find(|(s, _)| *s == status) {
                Some((_, m)) => *m += n,
                None => self.status.push((status, n)),
            }
        }
        self.status.sort_unstable();
        for (mine, theirs) in self.errors.iter_mut().zip(other.errors) {
            *mine += theirs;
        }
        self.responses += other.responses;
        self.unsent += other.unsent;
        self.events += other.events;
        self.body_bytes += other.body_bytes;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }

    /// Hands back the counts so far and starts a new interval.
    pub fn take(&mut self) -> Stats {
        std::mem::take(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_above_400_are_errors_and_statuses() {
        let mut s = Stats::default();
        s.record_response(200, Duration::from_micros(100));
        s.record_response(503, Duration::from_micros(200));
        s.record_failure(ErrorKind::Connect);
        assert_eq!(s.responses, 2);
        assert_eq!(s.errors(), 2);
        assert_eq!(s.attempts(), 3);
        assert_eq!(s.successes(), 1);
        assert_eq!(s.status, vec![(200, 1), (503, 1)]);
    }

    #[test]
    fn merging_adds_everything() {
        let mut a = Stats::default();
        a.record_response(200, Duration::from_millis(1));
        let mut b = Stats::default();
        b.record_response(200, Duration::from_millis(3));
        b.record_failure(ErrorKind::Timeout);
        a.merge(&b);
        assert_eq!(a.latency.len(), 2);
        assert_eq!(a.status, vec![(200, 2)]);
        assert_eq!(a.errors_of(ErrorKind::Timeout), 1);
        assert!(a.latency.max() >= 2_990);
    }
}
