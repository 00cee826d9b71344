//! `[logs]`: the request log store (SQLite under `server.data_dir`).
//!
//! Owns reading the section into [`LogsConfig`]. Does not write logs (the log
//! thread in `control::logs` does) or decide per request (the pipeline asks
//! [`LogsConfig::keeps`]-style questions through the sample rate).

use super::read::Walker;
use std::time::Duration;

/// Largest payload cap: a row stays a row, not a blob store.
pub const MAX_PAYLOAD_CAP: u64 = 16 << 20;

#[derive(Clone, Debug)]
pub struct LogsConfig {
    /// Keep a row per request at all.
    pub enabled: bool,
    /// Store request and response bodies (each capped at `payload_max`).
    pub payloads: bool,
    pub payload_max: usize,
    /// Share of successful requests kept (errors are always kept).
    pub sample: f64,
    /// Rows kept at most; the oldest go first.
    pub max_rows: u64,
    /// Rows older than this go.
    pub max_age: Duration,
    /// How often the log thread commits what it received: what a crash loses at most.
    pub flush_interval: Duration,
    /// The log thread hands its CPU back to the shards after every statement
    /// of rows: at saturation, requests keep their latency and the log keeps
    /// fewer rows (their usage is tallied).
    pub yield_to_requests: bool,
}

/// Longest `flush_interval` we accept: a crash must lose under a second.
pub const MAX_FLUSH_INTERVAL: Duration = Duration::from_millis(900);

pub(super) fn read_logs(w: &mut Walker, root: &toml::Table) -> LogsConfig {
    let t = w.table(root, "logs");
    let flush_interval = w.duration(t, "logs.flush_interval", "200ms");
    if flush_interval > MAX_FLUSH_INTERVAL {
        w.err(
            "logs.flush_interval",
            format!(
                "{flush_interval:?} is too long: a crash would lose more than a second of requests; use at most 900ms"
            ),
        );
    }
    LogsConfig {
        enabled: w.flag(t, "logs.enabled").unwrap_or(true),
        payloads: w.flag(t, "logs.payloads").unwrap_or(false),
        payload_max: w.bytes(t, "logs.payload_max", 64 << 10, 0, MAX_PAYLOAD_CAP) as usize,
        sample: w.fraction(t, "logs.sample").unwrap_or(1.0),
        max_rows: w
            .uint(t, "logs.max_rows", 1, u64::MAX >> 1)
            .unwrap_or(1_000_000),
        max_age: w.duration(t, "logs.max_age", "30d"),
        flush_interval,
        yield_to_requests: w.flag(t, "logs.yield_to_requests").unwrap_or(true),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::super::tests::errors;

    #[test]
    fn logs_are_on_with_bounded_retention_by_default() {
        let c = Config::from_toml_with_env("", &|_| None).unwrap();
        assert!(c.logs.enabled && !c.logs.payloads);
        assert_eq!(c.logs.max_rows, 1_000_000);
        assert_eq!(c.logs.max_age.as_secs(), 30 * 86_400);
        assert!(c.logs.flush_interval.as_millis() < 1000);
        assert!(c.logs.yield_to_requests);
        let c = Config::from_toml_with_env("[logs]\nyield_to_requests = false", &|_| None).unwrap();
        assert!(!c.logs.yield_to_requests);
    }

    #[test]
    fn bad_log_settings_name_their_keys() {
        let e = errors(
            "[logs]\nsample = 1.5\npayloads = \"yes\"\nflush_interval = \"5s\"\nmax_rows = 0\nyield_to_requests = 1\n",
        );
        for key in [
            "logs.sample:",
            "logs.payloads:",
            "logs.flush_interval:",
            "logs.max_rows:",
            "logs.yield_to_requests:",
        ] {
            assert!(e.iter().any(|m| m.starts_with(key)), "{key} in {e:?}");
        }
    }
}
