//! `/metrics` in the Prometheus text format (0.0.4): every family with
//! `# HELP` and `# TYPE`, counters ending in `_total`, latencies as histograms
//! in seconds (so they aggregate across instances), gauges for what is open
//! or in flight. Labels: provider, model (bounded, see `stats::labels`),
//! status class, error source. Rendered from the merged stats; control plane.

use super::logs::LogStats;
use super::stats::{Merged, SERIES};
use crate::cache::Totals;
use crate::record::CacheStatus;
use crate::stats::labels::{BUCKETS_US, Buckets, KeyCounters, LabelCounters, SOURCES};
use hdrhistogram::Histogram;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

/// `aigw_<what>_requests_total`, `_tokens_total` and `_cost_usd_total` for
/// counters attributed by `labels` (nothing when there are none).
fn attributed(s: &mut String, what: &str, by: &str, note: &str, rows: &[(String, &KeyCounters)]) {
    if rows.is_empty() {
        return;
    }
    let name = format!("aigw_{what}_requests_total");
    family(s, &name, "counter", &format!("Requests by {by}{note}."));
    for (l, k) in rows {
        let _ = writeln!(s, "{name}{{{l}}} {}", k.requests);
    }
    let name = format!("aigw_{what}_tokens_total");
    family(
        s,
        &name,
        "counter",
        &format!("Tokens spent by {by} and direction (cache hits not counted)."),
    );
    for (l, k) in rows {
        for (dir, n) in [("input", k.input_tokens), ("output", k.output_tokens)] {
            let _ = writeln!(s, "{name}{{{l},direction=\"{dir}\"}} {n}");
        }
    }
    let name = format!("aigw_{what}_cost_usd_total");
    family(
        s,
        &name,
        "counter",
        &format!("Spend in US dollars by {by} (requests whose price is known)."),
    );
    for (l, k) in rows {
        let _ = writeln!(
            s,
            "{name}{{{l}}} {}",
            crate::stats::labels::usd(k.cost_picos)
        );
    }
}

/// Label values escaped as the text format asks (`\`, `"`, newline); a
/// value from a client (a model name) may hold other control characters,
/// which the format cannot escape: each becomes `?`, as on the terminal
/// ([`crate::logstore::query::unprintable`]).
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c if crate::logstore::query::unprintable(c) => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

fn family(s: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn seconds(us: u64) -> String {
    format!("{}", us as f64 / 1e6)
}

/// One histogram's series: cumulative buckets, `+Inf`, sum and count.
fn histogram(s: &mut String, name: &str, labels: &str, b: &Buckets) {
    let mut cumulative = 0;
    let sep = if labels.is_empty() { "" } else { "," };
    for (i, bound) in BUCKETS_US.iter().enumerate() {
        cumulative += b.counts[i];
        let _ = writeln!(
            s,
            "{name}_bucket{{{labels}{sep}le=\"{}\"}} {cumulative}",
            seconds(*bound)
        );
    }
    cumulative += b.counts[BUCKETS_US.len()];
    let _ = writeln!(s, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}");
    let braces = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let _ = writeln!(s, "{name}_sum{braces} {}", seconds(b.sum_us));
    let _ = writeln!(s, "{name}_count{braces} {cumulative}");
}

/// Fixed buckets read back from an HdrHistogram (µs): its counts at or below
/// each bound, and its mean for the sum (HdrHistogram keeps no exact sum).
fn from_hdr(h: &Histogram<u64>) -> Buckets {
    let mut b = Buckets::default();
    let mut below = 0;
    for (i, bound) in BUCKETS_US.iter().enumerate() {
        let upto = h.count_between(0, *bound);
        b.counts[i] = upto - below;
        below = upto;
    }
    b.counts[BUCKETS_US.len()] = h.len() - below;
    b.sum_us = (h.mean() * h.len() as f64) as u64;
    b
}

pub fn render(m: &Merged, logs: &LogStats, cache: Option<Totals>) -> String {
    let c = &m.counters;
    let mut s = String::with_capacity(16 << 10);
    let labelled: Vec<(String, &LabelCounters)> = m
        .labels
        .by
        .iter()
        .map(|((p, model), v)| {
            (
                format!("provider=\"{}\",model=\"{}\"", escape(p), escape(model)),
                v,
            )
        })
        .collect();

    family(
        &mut s,
        "aigw_requests_total",
        "counter",
        "Requests answered, by provider, model and status class.",
    );
    for (l, v) in &labelled {
        for (i, n) in v.requests.iter().enumerate() {
            if *n > 0 {
                let _ = writeln!(s, "aigw_requests_total{{{l},status=\"{}xx\"}} {n}", i + 1);
            }
        }
    }
    family(
        &mut s,
        "aigw_errors_total",
        "counter",
        "Error responses by whose fault they were: client (a bad request), gateway, provider.",
    );
    for (i, source) in SOURCES.iter().enumerate() {
        let total: u64 = m.labels.by.values().map(|v| v.errors[i]).sum();
        let _ = writeln!(s, "aigw_errors_total{{source=\"{source}\"}} {total}");
    }
    family(
        &mut s,
        "aigw_model_errors_total",
        "counter",
        "Error responses by provider, model and error source.",
    );
    for (l, v) in &labelled {
        for (i, n) in v.errors.iter().enumerate() {
            if *n > 0 {
                let _ = writeln!(
                    s,
                    "aigw_model_errors_total{{{l},source=\"{}\"}} {n}",
                    SOURCES[i]
                );
            }
        }
    }
    family(
        &mut s,
        "aigw_failed_tries_total",
        "counter",
        "Tries that failed and were retried or fallen back from, by the provider and model tried (not in aigw_requests_total: the request counts where it ended).",
    );
    for (l, v) in &labelled {
        if v.failed_tries > 0 {
            let _ = writeln!(s, "aigw_failed_tries_total{{{l}}} {}", v.failed_tries);
        }
    }
    family(
        &mut s,
        "aigw_tokens_total",
        "counter",
        "Tokens by provider, model and direction (input, output, cached input).",
    );
    for (l, v) in &labelled {
        for (dir, n) in [
            ("input", v.input_tokens),
            ("output", v.output_tokens),
            ("cached", v.cached_tokens),
        ] {
            if n > 0 {
                let _ = writeln!(s, "aigw_tokens_total{{{l},direction=\"{dir}\"}} {n}");
            }
        }
    }
    let keys: Vec<(String, &KeyCounters)> = m
        .keys
        .iter()
        .map(|(id, k)| (format!("key=\"{}\"", escape(id)), k))
        .collect();
    attributed(
        &mut s,
        "key",
        "gateway key id",
        " (requests without a key are not counted here)",
        &keys,
    );
    let metadata: Vec<(String, &KeyCounters)> = m
        .metadata
        .iter()
        .flat_map(|(field, values)| {
            values.iter().map(move |(value, k)| {
                (
                    format!("field=\"{}\",value=\"{}\"", escape(field), escape(value)),
                    k,
                )
            })
        })
        .collect();
    attributed(
        &mut s,
        "metadata",
        "`aigw-metadata` field and value",
        " (a key's attribution merged in; besides the config's, at most 256 values per field and shard, the rest as `(other)`)",
        &metadata,
    );
    family(
        &mut s,
        "aigw_cost_usd_total",
        "counter",
        "Spend in US dollars by provider and model (requests whose price is known; cache hits cost nothing).",
    );
    for (l, v) in &labelled {
        if v.cost_picos > 0 {
            let _ = writeln!(
                s,
                "aigw_cost_usd_total{{{l}}} {}",
                crate::stats::labels::usd(v.cost_picos)
            );
        }
    }
    family(
        &mut s,
        "aigw_cost_unknown_total",
        "counter",
        "Requests whose cost is unknown (no price for their model; add one under [prices]).",
    );
    for (l, v) in &labelled {
        if v.cost_unknown > 0 {
            let _ = writeln!(s, "aigw_cost_unknown_total{{{l}}} {}", v.cost_unknown);
        }
    }
    family(
        &mut s,
        "aigw_cost_estimated_total",
        "counter",
        "Requests charged an estimate: their answer was cut before the provider reported usage.",
    );
    for (l, v) in &labelled {
        if v.cost_estimated > 0 {
            let _ = writeln!(s, "aigw_cost_estimated_total{{{l}}} {}", v.cost_estimated);
        }
    }
    family(
        &mut s,
        "aigw_cache_requests_total",
        "counter",
        "What the response cache did, by provider, model and cache (hit, coalesced, miss, expired, bypass).",
    );
    for (l, v) in &labelled {
        for st in CacheStatus::ALL {
            let n = v.cache[st.index()];
            if n > 0 {
                let _ = writeln!(
                    s,
                    "aigw_cache_requests_total{{{l},cache=\"{}\"}} {n}",
                    st.as_str()
                );
            }
        }
    }
    family(
        &mut s,
        "aigw_cache_saved_tokens_total",
        "counter",
        "Tokens that answers from the cache would have cost, by provider, model and direction.",
    );
    for (l, v) in &labelled {
        for (dir, n) in [
            ("input", v.saved_input_tokens),
            ("output", v.saved_output_tokens),
        ] {
            if n > 0 {
                let _ = writeln!(
                    s,
                    "aigw_cache_saved_tokens_total{{{l},direction=\"{dir}\"}} {n}"
                );
            }
        }
    }
    if let Some(c) = cache {
        for (name, kind, help, v) in [
            (
                "aigw_cache_entries",
                "gauge",
                "Entries in the cache.",
                c.entries,
            ),
            (
                "aigw_cache_bytes",
                "gauge",
                "Bytes of the entries in the cache.",
                c.bytes,
            ),
            (
                "aigw_cache_capacity_bytes",
                "gauge",
                "Bytes the cache files hold at most.",
                c.capacity,
            ),
            (
                "aigw_cache_in_flight",
                "gauge",
                "Upstream calls identical requests are waiting on.",
                c.flights,
            ),
            (
                "aigw_cache_stores_total",
                "counter",
                "Answers stored.",
                c.stores,
            ),
            (
                "aigw_cache_followers_total",
                "counter",
                "Requests that joined an identical request's upstream call.",
                c.followers,
            ),
            (
                "aigw_cache_evictions_total",
                "counter",
                "Live entries dropped to make room.",
                c.evictions,
            ),
            (
                "aigw_cache_expirations_total",
                "counter",
                "Expired entries dropped.",
                c.expirations,
            ),
            (
                "aigw_cache_purged_total",
                "counter",
                "Entries purged through the admin socket.",
                c.purged,
            ),
        ] {
            family(&mut s, name, kind, help);
            let _ = writeln!(s, "{name} {v}");
        }
    }
    family(
        &mut s,
        "aigw_request_duration_seconds",
        "histogram",
        "Time from a request's arrival to its last byte, by provider and model.",
    );
    for (l, v) in &labelled {
        histogram(&mut s, "aigw_request_duration_seconds", l, &v.duration);
    }
    family(
        &mut s,
        "aigw_time_to_first_token_seconds",
        "histogram",
        "Streams: time from a request's arrival to its first event, by provider and model.",
    );
    for (l, v) in &labelled {
        if v.ttft.count() > 0 {
            histogram(&mut s, "aigw_time_to_first_token_seconds", l, &v.ttft);
        }
    }
    for (series, name) in SERIES {
        let (metric, help) = match name {
            "total" => (
                "aigw_latency_total_seconds",
                "Every request's total time (all providers).",
            ),
            "gateway" => (
                "aigw_latency_gateway_seconds",
                "Time spent in the gateway itself, not waiting on a provider.",
            ),
            "upstream_ttfb" => (
                "aigw_latency_upstream_ttfb_seconds",
                "Request sent to the provider's first response byte.",
            ),
            _ => (
                "aigw_latency_ttft_seconds",
                "Streams: arrival to first event (all providers).",
            ),
        };
        family(&mut s, metric, "histogram", help);
        histogram(
            &mut s,
            metric,
            "",
            &from_hdr(&m.histograms[series as usize]),
        );
    }
    for (name, help, v) in [
        ("aigw_streams_total", "Streamed responses.", c.streams),
        (
            "aigw_connections_accepted_total",
            "Client connections accepted.",
            m.gauge(|g| g.connections_accepted),
        ),
        (
            "aigw_upstream_connects_total",
            "New connections opened to providers.",
            c.upstream_connects,
        ),
        (
            "aigw_upstream_reused_total",
            "Requests sent on a pooled provider connection.",
            c.upstream_reused,
        ),
        (
            "aigw_stats_snapshots_dropped_total",
            "Shard stats snapshots the stats thread had no room for.",
            c.dropped_snapshots,
        ),
        (
            "aigw_log_rows_written_total",
            "Request log rows committed.",
            logs.rows_written.load(Ordering::Relaxed),
        ),
        (
            "aigw_log_dropped_total",
            "Request log rows dropped because the log queue was full (their requests are tallied).",
            c.log_dropped,
        ),
        (
            "aigw_log_uncounted_total",
            "Requests the log kept neither a row nor a tally of (both queues full).",
            c.log_uncounted,
        ),
        (
            "aigw_log_write_errors_total",
            "Request log commits (or retention passes) that failed.",
            logs.write_errors.load(Ordering::Relaxed),
        ),
    ] {
        family(&mut s, name, "counter", help);
        let _ = writeln!(s, "{name} {v}");
    }
    family(
        &mut s,
        "aigw_responses_aborted_total",
        "counter",
        "Responses cut off, by who went away.",
    );
    let _ = writeln!(
        s,
        "aigw_responses_aborted_total{{by=\"provider\"}} {}",
        c.aborted_upstream
    );
    let _ = writeln!(
        s,
        "aigw_responses_aborted_total{{by=\"client\"}} {}",
        c.aborted_client
    );
    for (name, help, v) in [
        (
            "aigw_open_connections",
            "Client connections open.",
            m.gauge(|g| g.open_connections),
        ),
        (
            "aigw_requests_in_flight",
            "Requests being served.",
            m.gauge(|g| g.requests_in_flight),
        ),
        (
            "aigw_streams_in_flight",
            "Event streams being relayed.",
            m.gauge(|g| g.streams_in_flight),
        ),
        (
            "aigw_upstream_idle_connections",
            "Pooled provider connections waiting for a request.",
            m.gauge(|g| g.idle_upstream),
        ),
        (
            "aigw_log_rows",
            "Rows in the request log store.",
            logs.rows.load(Ordering::Relaxed),
        ),
        (
            "aigw_uptime_seconds",
            "Seconds since the gateway started.",
            m.started.elapsed().as_secs(),
        ),
        (
            "aigw_shards",
            "Executors serving requests.",
            m.shards as u64,
        ),
    ] {
        family(&mut s, name, "gauge", help);
        let _ = writeln!(s, "{name} {v}");
    }
    s
}

/// The budget families: spend and amount per budget and scope value, and
/// the alerts raised since start.
pub fn render_budgets(s: &mut String, standings: &[crate::budget::Standing], alerts: u64) {
    family(
        s,
        "aigw_budget_alerts_total",
        "counter",
        "Budget warnings raised (spend passed alert_at) since start.",
    );
    let _ = writeln!(s, "aigw_budget_alerts_total {alerts}");
    if standings.is_empty() {
        return;
    }
    family(
        s,
        "aigw_budget_spent_usd",
        "gauge",
        "Spend in the budget's current window, by budget and scope value.",
    );
    for b in standings {
        let _ = writeln!(
            s,
            "aigw_budget_spent_usd{{budget=\"{}\",value=\"{}\"}} {}",
            escape(&b.budget),
            escape(&b.value),
            b.spent_usd
        );
    }
    family(
        s,
        "aigw_budget_usd",
        "gauge",
        "The budget's amount for its current window.",
    );
    for b in standings {
        let _ = writeln!(
            s,
            "aigw_budget_usd{{budget=\"{}\",value=\"{}\"}} {}",
            escape(&b.budget),
            escape(&b.value),
            b.usd
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_in_seconds() {
        let mut b = Buckets::default();
        b.record(std::time::Duration::from_micros(700));
        b.record(std::time::Duration::from_secs(100));
        let mut s = String::new();
        histogram(&mut s, "x", "a=\"b\"", &b);
        assert!(s.contains("x_bucket{a=\"b\",le=\"0.0005\"} 0\n"), "{s}");
        assert!(s.contains("x_bucket{a=\"b\",le=\"0.001\"} 1\n"), "{s}");
        assert!(s.contains("x_bucket{a=\"b\",le=\"60\"} 1\n"), "{s}");
        assert!(s.contains("x_bucket{a=\"b\",le=\"+Inf\"} 2\n"), "{s}");
        assert!(s.contains("x_sum{a=\"b\"} 100.0007\n"), "{s}");
        assert!(s.contains("x_count{a=\"b\"} 2\n"), "{s}");
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(escape("m\r\u{1b}[31m\u{0}\u{2028}x"), "m??[31m??x");
    }
}
