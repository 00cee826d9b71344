//! The main thread's view of a run in progress: merging snapshots and the
//! once-a-second progress line.
//!
//! Owns: cumulative counts for one target (warm-up and measured kept apart)
//! and the text of the progress line. Does not own timing of the run
//! (`run.rs` decides when to print and when phases change).

use super::report::fmt_us;
use super::shard::Snapshot;
use super::stats::Stats;
use std::time::{Duration, Instant};

/// Merged counts for one target so far.
#[derive(Default)]
pub struct Collector {
    pub warmup: Stats,
    pub measured: Stats,
    /// Responses counted at the last progress line, for the interval rate.
    responses_at_last_line: u64,
    last_line_at: Option<Instant>,
}

impl Collector {
    pub fn absorb(&mut self, snapshot: Snapshot) {
        self.warmup.merge(&snapshot.warmup);
        self.measured.merge(&snapshot.measured);
    }

    /// `[1/2 http://…] 3s measure  4998 req/s  errors 0  p50 210µs  p99 950µs`,
    /// where the rate is over the last interval and the rest is cumulative for
    /// the current phase.
    pub fn progress_line(
        &mut self,
        label: &str,
        elapsed: Duration,
        in_warmup: bool,
        now: Instant,
    ) -> String {
        let phase = if in_warmup {
            &self.warmup
        } else {
            &self.measured
        };
        let responses = self.warmup.responses + self.measured.responses;
        let since = self
            .last_line_at
            .map(|t| now.saturating_duration_since(t))
            .unwrap_or(elapsed)
            .as_secs_f64()
            .max(1e-3);
        let rate = (responses - self.responses_at_last_line) as f64 / since;
        self.responses_at_last_line = responses;
        self.last_line_at = Some(now);
        let (p50, p99) = if phase.latency.is_empty() {
            ("-".to_string(), "-".to_string())
        } else {
            (
                fmt_us(phase.latency.value_at_quantile(0.5) as f64),
                fmt_us(phase.latency.value_at_quantile(0.99) as f64),
            )
        };
        format!(
            "aigw-load {label} {:>4.0}s {:<7} {:>9.0} req/s  errors {:<6} p50 {p50:<8} p99 {p99}",
            elapsed.as_secs_f64(),
            if in_warmup { "warmup" } else { "measure" },
            rate,
            phase.errors(),
        )
    }
}
