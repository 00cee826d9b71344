//! The final report of an aigw-load run: per target, as a table and as JSON.
//!
//! Owns: turning merged `Stats` into the numbers people read (achieved vs
//! offered rate, status counts, latency percentiles, CPU per request) and
//! their two renderings. The JSON field names are an interface: the perf
//! harness (perf/harness.py) and tests read them.

use super::stats::{ErrorKind, Stats};
use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};
use std::fmt::Write as _;
use std::time::Duration;

/// Percentiles of one histogram, µs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }

    /// `PREFIXp50_us` … `PREFIXmean_us`; null when nothing was recorded.
    fn add_json(&self, prefix: &str, out: &mut Map<String, Value>) {
        if self.count == 0 {
            for name in ["p50", "p90", "p99", "p999", "max", "mean"] {
                out.insert(format!("{prefix}{name}_us"), Value::Null);
            }
            return;
        }
        out.insert(format!("{prefix}p50_us"), json!(self.p50));
        out.insert(format!("{prefix}p90_us"), json!(self.p90));
        out.insert(format!("{prefix}p99_us"), json!(self.p99));
        out.insert(format!("{prefix}p999_us"), json!(self.p999));
        out.insert(format!("{prefix}max_us"), json!(self.max));
        out.insert(format!("{prefix}mean_us"), json!(round2(self.mean)));
    }
}

/// CPU used by a watched process group over the measured window.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuUse {
    pub label: String,
    pub cpu: Duration,
    /// `None` when no request completed.
    pub us_per_request: Option<f64>,
}

/// Everything measured for one target.
#[derive(Debug, Clone)]
pub struct TargetReport {
    pub url: String,
    pub model: String,
    /// Length of the measured window.
    pub duration: Duration,
    /// Requested arrival rate (open loop).
    pub offered_rps: Option<f64>,
    pub stats: Stats,
    pub latency: Percentiles,
    pub ttft: Percentiles,
    pub gap: Percentiles,
    pub send_lag: Percentiles,
    pub cpu: Vec<CpuUse>,
    /// aigw-load's own CPU use over the window, in % of its executors' cores.
    pub loadgen_cpu_percent: Option<f64>,
}

impl TargetReport {
    pub fn new(
        url: String,
        model: String,
        duration: Duration,
        offered_rps: Option<f64>,
        stats: Stats,
    ) -> Self {
        TargetReport {
            url,
            model,
            duration,
            offered_rps,
            latency: Percentiles::of(&stats.latency),
            ttft: Percentiles::of(&stats.ttft),
            gap: Percentiles::of(&stats.gap),
            send_lag: Percentiles::of(&stats.send_lag),
            stats,
            cpu: Vec::new(),
            loadgen_cpu_percent: None,
        }
    }

    /// Completed responses (any status) per second of the measured window.
    pub fn rps(&self) -> f64 {
        self.stats.responses as f64 / self.duration.as_secs_f64().max(1e-9)
    }

    pub fn errors(&self) -> u64 {
        self.stats.errors()
    }

    /// Failed share of the requests that ended; unsent open-loop requests count
    /// as failures too (the server did not keep up with the offered rate).
    pub fn error_rate(&self) -> f64 {
        let failed = self.stats.errors() + self.stats.unsent;
        let total = self.stats.attempts() + self.stats.unsent;
        if total == 0 {
            1.0
        } else {
            failed as f64 / total as f64
        }
    }

    pub fn to_json(&self) -> Value {
        let mut o = Map::new();
        o.insert("url".into(), json!(self.url));
        o.insert("model".into(), json!(self.model));
        o.insert("duration_s".into(), json!(self.duration.as_secs_f64()));
        o.insert("requests".into(), json!(self.stats.responses));
        o.insert("rps".into(), json!(round2(self.rps())));
        o.insert("offered_rps".into(), json!(self.offered_rps));
        o.insert("errors".into(), json!(self.errors()));
        o.insert("error_rate".into(), json!(self.error_rate()));
        let kinds: Map<String, Value> = ErrorKind::ALL
            .iter()
            .map(|k| (k.label().to_string(), json!(self.stats.errors_of(*k))))
            .collect();
        o.insert("error_kinds".into(), Value::Object(kinds));
        o.insert("unsent".into(), json!(self.stats.unsent));
        o.insert("first_error".into(), json!(self.stats.first_error));
        let status: Map<String, Value> = self
            .stats
            .status
            .iter()
            .map(|(s, n)| (s.to_string(), json!(n)))
            .collect();
        o.insert("status".into(), Value::Object(status));
        o.insert("body_bytes".into(), json!(self.stats.body_bytes));
        self.latency.add_json("", &mut o);
        if self.stats.events > 0 || self.ttft.count > 0 {
            o.insert("events".into(), json!(self.stats.events));
            self.ttft.add_json("ttft_", &mut o);
            self.gap.add_json("gap_", &mut o);
        }
        if self.send_lag.count > 0 {
            self.send_lag.add_json("send_lag_", &mut o);
        }
        let cpu: Map<String, Value> = self
            .cpu
            .iter()
            .map(|c| (c.label.clone(), json!(c.us_per_request.map(round2))))
            .collect();
        o.insert("cpu_us_per_req".into(), Value::Object(cpu));
        o.insert(
            "loadgen_cpu_percent".into(),
            json!(self.loadgen_cpu_percent.map(round2)),
        );
        Value::Object(o)
    }
}

/// The whole run.
#[derive(Debug, Clone)]
pub struct Report {
    /// "open" or "closed".
    pub mode: &'static str,
    pub connections: usize,
    pub cpus: Vec<usize>,
    pub stream: bool,
    pub hit_ratio: f64,
    pub max_error_rate: f64,
    pub targets: Vec<TargetReport>,
}

impl Report {
    /// True when some target failed more than `max_error_rate` of its requests.
    pub fn exceeds_error_threshold(&self) -> bool {
        self.targets
            .iter()
            .any(|t| t.error_rate() > self.max_error_rate)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "tool": "aigw-load",
            "mode": self.mode,
            "connections": self.connections,
            "cpus": self.cpus,
            "stream": self.stream,
            "hit_ratio": self.hit_ratio,
            "max_error_rate": self.max_error_rate,
            "error_threshold_exceeded": self.exceeds_error_threshold(),
            "targets": self.targets.iter().map(TargetReport::to_json).collect::<Vec<_>>(),
        })
    }

    /// A plain-text table, one block per target.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "aigw-load: {} loop, {} connections on CPUs {:?}{}{}",
            self.mode,
            self.connections,
            self.cpus,
            if self.stream { ", streaming" } else { "" },
            if self.hit_ratio > 0.0 {
                format!(", hit ratio {}", self.hit_ratio)
            } else {
                String::new()
            },
        );
        for t in &self.targets {
            let _ = writeln!(out, "\ntarget {}  (model {})", t.url, t.model);
            let offered = t
                .offered_rps
                .map(|r| format!("{r:.0}/s offered"))
                .unwrap_or_else(|| "closed loop".into());
            let _ = writeln!(
                out,
                "  requests {:>10}   rate {:>10.1}/s  ({offered}, {:.1} s measured)",
                t.stats.responses,
                t.rps(),
                t.duration.as_secs_f64()
            );
            let status: Vec<String> = t
                .stats
                .status
                .iter()
                .map(|(s, n)| format!("{s}:{n}"))
                .collect();
            let kinds: Vec<String> = ErrorKind::ALL
                .iter()
                .filter(|k| t.stats.errors_of(**k) > 0)
                .map(|k| format!("{}:{}", k.label(), t.stats.errors_of(*k)))
                .collect();
            let _ = writeln!(
                out,
                "  errors   {:>10}   ({:.3}%{}{})   status [{}]{}",
                t.errors(),
                t.error_rate() * 100.0,
                if kinds.is_empty() { "" } else { " " },
                kinds.join(" "),
                status.join(" "),
                if t.stats.unsent > 0 {
                    format!("   unsent {}", t.stats.unsent)
                } else {
                    String::new()
                }
            );
            if let Some(why) = &t.stats.first_error {
                let _ = writeln!(out, "  first error: {why}");
            }
            let _ = writeln!(
                out,
                "  {:<10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                "latency", "p50", "p90", "p99", "p99.9", "max", "mean"
            );
            table_row(&mut out, "total", &t.latency);
            if t.ttft.count > 0 {
                table_row(&mut out, "ttft", &t.ttft);
                table_row(&mut out, "event gap", &t.gap);
            }
            if t.send_lag.count > 0 {
                table_row(&mut out, "send lag", &t.send_lag);
            }
            for c in &t.cpu {
                let per_request = c
                    .us_per_request
                    .map_or_else(|| "-".to_string(), |us| format!("{us:.1}"));
                let _ = writeln!(
                    out,
                    "  cpu {:<10} {per_request:>8} µs/request ({:.2} s)",
                    c.label,
                    c.cpu.as_secs_f64()
                );
            }
            if let Some(p) = t.loadgen_cpu_percent {
                let _ = writeln!(out, "  aigw-load cpu {p:.0}% of its cores");
            }
        }
        out
    }
}

fn table_row(out: &mut String, name: &str, p: &Percentiles) {
    if p.count == 0 {
        let _ = writeln!(out, "  {name:<10} {:>9}", "-");
        return;
    }
    let _ = writeln!(
        out,
        "  {:<10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        name,
        fmt_us(p.p50 as f64),
        fmt_us(p.p90 as f64),
        fmt_us(p.p99 as f64),
        fmt_us(p.p999 as f64),
        fmt_us(p.max as f64),
        fmt_us(p.mean)
    );
}

/// `850µs`, `1.25ms`, `3.20s`.
pub fn fmt_us(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.0}µs")
    } else if us < 1_000_000.0 {
        format!("{:.2}ms", us / 1e3)
    } else {
        format!("{:.2}s", us / 1e6)
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
