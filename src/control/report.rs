//! `aigw stats` for people: renders the admin socket's `/stats` JSON as a short
//! table. Client side only; the JSON stays the machine interface (`--json`).

use simd_json::prelude::*;
use std::fmt::Write as _;

/// Renders `/stats` JSON as text; `None` if the JSON is not what aigw serves.
pub fn render(stats_json: &str) -> Option<String> {
    let mut bytes = stats_json.as_bytes().to_vec();
    // Names in it come from clients (models, metadata values): printed as
    // they are, a control character would reach the operator's terminal.
    let v = printable_value(simd_json::to_owned_value(&mut bytes).ok()?);
    let n = |path: &[&str]| -> u64 {
        let mut cur = Some(&v);
        for p in path {
            cur = cur.and_then(|c| c.get(*p));
        }
        cur.and_then(|c| c.as_u64()).unwrap_or(0)
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "aigw: up {} s, {} shard(s)",
        n(&["uptime_s"]),
        n(&["shards"])
    );
    let _ = writeln!(
        out,
        "requests    {:>10}   2xx {}  3xx {}  4xx {}  5xx {}",
        n(&["requests"]),
        n(&["status", "2xx"]),
        n(&["status", "3xx"]),
        n(&["status", "4xx"]),
        n(&["status", "5xx"])
    );
    let _ = writeln!(
        out,
        "errors      client {}  gateway {}  provider {}   aborted: by provider {}  by client {}",
        n(&["errors", "client"]),
        n(&["errors", "gateway"]),
        n(&["errors", "provider"]),
        n(&["aborted", "upstream"]),
        n(&["aborted", "client"])
    );
    let _ = writeln!(
        out,
        "tokens      input {}  output {}  cached {}   streams {}",
        n(&["tokens", "input"]),
        n(&["tokens", "output"]),
        n(&["tokens", "cached"]),
        n(&["streams"])
    );
    if v.get("cache").is_some() {
        let ratio = v
            .get("cache")
            .and_then(|c| c.get("hit_ratio"))
            .and_then(|r| r.as_f64())
            .unwrap_or(0.0);
        let _ = writeln!(
            out,
            "cache       hit {}  coalesced {}  miss {}  expired {}  bypass {}   hit ratio {:.1}%   saved tokens: input {}  output {}",
            n(&["cache", "requests", "hit"]),
            n(&["cache", "requests", "coalesced"]),
            n(&["cache", "requests", "miss"]),
            n(&["cache", "requests", "expired"]),
            n(&["cache", "requests", "bypass"]),
            ratio * 100.0,
            n(&["cache", "saved_tokens", "input"]),
            n(&["cache", "saved_tokens", "output"]),
        );
        let _ = writeln!(
            out,
            "cache store entries {}  bytes {} of {}  stores {}  evictions {}  expirations {}  purged {}  in flight {}",
            n(&["cache", "entries"]),
            n(&["cache", "bytes"]),
            n(&["cache", "capacity"]),
            n(&["cache", "stores"]),
            n(&["cache", "evictions"]),
            n(&["cache", "expirations"]),
            n(&["cache", "purged"]),
            n(&["cache", "in_flight"]),
        );
    }
    if v.get("logs").is_some() {
        // Dropped rows are not in `aigw logs`; their requests are tallied for
        // `aigw usage`, unless even the tally had no room: say so here.
        let dropped = n(&["logs", "dropped"]);
        let uncounted = n(&["logs", "uncounted"]);
        let _ = writeln!(
            out,
            "request log rows {}  written {}  dropped {}  write errors {}  deleted {}{}{}",
            n(&["logs", "rows"]),
            n(&["logs", "written"]),
            dropped,
            n(&["logs", "write_errors"]),
            n(&["logs", "deleted"]),
            if dropped > 0 {
                "   (dropped: its queue was full; not in aigw logs, tallied for usage)"
            } else {
                ""
            },
            if uncounted > 0 {
                format!("   {uncounted} requests not even tallied (missing from usage)")
            } else {
                String::new()
            }
        );
    }
    let _ = writeln!(
        out,
        "upstream    connects {}  reused {}  idle {}   connections: accepted {}  open {}",
        n(&["upstream", "connects"]),
        n(&["upstream", "reused"]),
        n(&["upstream", "idle"]),
        n(&["connections", "accepted"]),
        n(&["connections", "open"])
    );
    let _ = writeln!(
        out,
        "latency µs  {:>14} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "count", "p50", "p90", "p99", "p99.9", "max"
    );
    for series in ["total", "gateway", "upstream_ttfb", "ttft"] {
        let q = |k: &str| n(&["latency_us", series, k]);
        let _ = writeln!(
            out,
            "  {:<13} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
            series,
            q("count"),
            q("p50"),
            q("p90"),
            q("p99"),
            q("p999"),
            q("max")
        );
    }
    let f = |path: &[&str]| -> String {
        let mut cur = Some(&v);
        for p in path {
            cur = cur.and_then(|c| c.get(*p));
        }
        match cur {
            Some(x) if x.as_f64().is_some() || x.as_u64().is_some() => {
                format!("{:.1}", x.cast_f64().unwrap_or(0.0))
            }
            _ => "-".into(),
        }
    };
    let _ = writeln!(
        out,
        "window      {:>9} {:>9} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "requests", "req/s", "err %", "p50 ms", "p99 ms", "ttft ms", "tok in", "tok out"
    );
    for w in ["1m", "5m"] {
        let k = |path: &[&'static str]| -> Vec<&'static str> {
            let mut full = vec!["windows", w];
            full.extend_from_slice(path);
            full
        };
        let _ = writeln!(
            out,
            "  {:<9} {:>9} {:>9} {:>7.2} {:>9} {:>9} {:>9} {:>9} {:>9}",
            w,
            n(&k(&["requests"])),
            f(&k(&["rps"])),
            v.get("windows")
                .and_then(|x| x.get(w))
                .and_then(|x| x.get("error_rate"))
                .and_then(|x| x.cast_f64())
                .unwrap_or(0.0)
                * 100.0,
            f(&k(&["latency_ms", "p50"])),
            f(&k(&["latency_ms", "p99"])),
            f(&k(&["ttft_ms", "p50"])),
            n(&k(&["tokens", "input"])),
            n(&k(&["tokens", "output"])),
        );
    }
    if let Some(models) = v.get("models").and_then(|m| m.as_array()) {
        let _ = writeln!(
            out,
            "model (1m)  {:<32} {:>9} {:>7} {:>9} {:>9} {:>9} {:>9}",
            "", "req/s", "err %", "p50 ms", "p99 ms", "ttft ms", "tok out"
        );
        for m in models {
            let name = format!(
                "{}/{}",
                m.get("provider").and_then(|x| x.as_str()).unwrap_or("?"),
                m.get("model").and_then(|x| x.as_str()).unwrap_or("?")
            );
            let w = m.get("1m");
            let g = |path: &[&str]| -> String {
                let mut cur = w;
                for p in path {
                    cur = cur.and_then(|c| c.get(*p));
                }
                cur.and_then(|x| x.cast_f64())
                    .map_or("-".into(), |x| format!("{x:.1}"))
            };
            let err = w
                .and_then(|x| x.get("error_rate"))
                .and_then(|x| x.cast_f64())
                .unwrap_or(0.0);
            let _ = writeln!(
                out,
                "  {:<42} {:>9} {:>7.2} {:>9} {:>9} {:>9} {:>9}",
                name.chars().take(42).collect::<String>(),
                g(&["rps"]),
                err * 100.0,
                g(&["latency_ms", "p50"]),
                g(&["latency_ms", "p99"]),
                g(&["ttft_ms", "p50"]),
                g(&["tokens", "output"]),
            );
        }
    }
    if let Some(providers) = v.get("providers").and_then(|p| p.as_object()) {
        let mut names: Vec<&String> = providers.keys().collect();
        names.sort();
        for name in names {
            let p = |k: &str| n(&["providers", name.as_str(), k]);
            let _ = writeln!(
                out,
                "provider    {:<12} requests {}  errors {}  failed tries {}  tokens in {}  out {}",
                name,
                p("requests"),
                p("errors"),
                p("failed_tries"),
                p("input_tokens"),
                p("output_tokens")
            );
        }
    }
    Some(out)
}

/// `v` with every string and object key safe to print on a terminal
/// ([`crate::logstore::query::printable`]).
fn printable_value(v: simd_json::OwnedValue) -> simd_json::OwnedValue {
    use simd_json::OwnedValue as V;
    let text = |s: &str| crate::logstore::query::printable(s, false);
    match v {
        V::String(s) => V::String(text(&s)),
        V::Array(items) => V::Array(Box::new(items.into_iter().map(printable_value).collect())),
        V::Object(map) => {
            let mut out = simd_json::owned::Object::with_capacity(map.len());
            for (k, v) in map.into_iter() {
                out.insert(text(&k), printable_value(v));
            }
            V::Object(Box::new(out))
        }
        other => other,
    }
}

/// Renders `GET /keys` JSON as a table (`aigw key list`); `None` if the JSON
/// is not what aigw serves.
pub fn keys_table(keys_json: &str) -> Option<String> {
    let mut bytes = keys_json.as_bytes().to_vec();
    let v = simd_json::to_owned_value(&mut bytes).ok()?;
    let keys = v.get("keys")?.as_array()?;
    let mut out = format!("{:<24} {:<7} {:<40} metadata\n", "id", "origin", "models");
    let mut shadowed = false;
    for k in keys {
        let list = |field: &str| -> String {
            k.get(field)
                .and_then(|m| m.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "*".into())
        };
        let meta = k
            .get("metadata")
            .and_then(|m| m.as_object())
            .map(|o| {
                o.iter()
                    .map(|(a, b)| format!("{a}={}", b.as_str().unwrap_or("")))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<24} {:<7} {:<40} {}",
            crate::logstore::query::printable(k.get("id")?.as_str()?, false),
            if k.get("in_force").and_then(|x| x.as_bool()) == Some(false) {
                // Explained under the table: the columns stay aligned.
                shadowed = true;
                "admin*"
            } else {
                k.get("origin")?.as_str()?
            },
            crate::logstore::query::printable(&list("models"), false),
            crate::logstore::query::printable(&meta, false),
        );
    }
    if keys.is_empty() {
        out.push_str("(no keys: add [keys.ID] to the config, or `aigw key new ID --create`)\n");
    }
    if shadowed {
        out.push_str("* not in force: the config file has a key of its id\n");
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_key_out_of_force_keeps_the_key_table_aligned() {
        let json = r#"{"keys":[{"id":"a","origin":"config","models":["m/*"],"metadata":{}},{"id":"a","origin":"admin","in_force":false,"models":[],"metadata":{"team":"x"}}]}"#;
        let text = super::keys_table(json).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let at = lines[0].find("models").unwrap();
        assert_eq!(lines[1].find("m/*"), Some(at), "{text}");
        assert_eq!(lines[2].get(at..at + 1), Some("*"), "{text}");
        assert!(lines[2].contains("admin*"), "{text}");
        assert!(
            text.ends_with("* not in force: the config file has a key of its id\n"),
            "{text}"
        );
    }

    #[test]
    fn names_from_clients_print_without_control_characters() {
        let json = r#"{"uptime_s":3,"shards":1,"requests":1,"models":[{"provider":"m\u001b[2J","model":"gp\u0000\u001b[31mred\r\nX-Injected: 1\u202e\u2028","1m":{"requests":1}}],"providers":{"m\r\nX-Fake: 2":{"requests":1,"errors":0,"input_tokens":1,"output_tokens":1}}}"#;
        let text = super::render(json).unwrap();
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert!(text.contains("red??X-Injected: 1??"), "{text}");
        assert!(!text.lines().any(|l| l.starts_with("X-")), "{text}");
    }

    #[test]
    fn stats_json_renders_as_a_table() {
        let json = r#"{"uptime_s":3,"shards":2,"requests":5,"status":{"2xx":4,"3xx":0,"4xx":1,"5xx":0},"errors":{"client":2,"gateway":1,"provider":0},"aborted":{"upstream":0,"client":0},"streams":1,"tokens":{"input":47,"output":5,"cached":0},"upstream":{"connects":1,"reused":3,"idle":1},"connections":{"accepted":2,"open":1},"dropped_snapshots":0,"latency_us":{"total":{"count":5,"p50":100,"p90":200,"p99":300,"p999":300,"max":310}},"providers":{"mock":{"requests":2,"errors":0,"input_tokens":47,"output_tokens":5}}}"#;
        let text = super::render(json).unwrap();
        assert!(text.contains("aigw: up 3 s, 2 shard(s)"), "{text}");
        assert!(text.contains("2xx 4  3xx 0  4xx 1"), "{text}");
        assert!(text.contains("client 2  gateway 1  provider 0"), "{text}");
        assert!(text.contains("provider    mock"), "{text}");
        assert!(super::render("not json").is_none());
        assert!(!text.contains("cache       hit"), "{text}");
        let with_cache = format!(
            "{},\"cache\":{{\"entries\":3,\"bytes\":900,\"capacity\":1000,\"stores\":4,\"evictions\":1,\"expirations\":0,\"purged\":0,\"in_flight\":0,\"hit_ratio\":0.5,\"requests\":{{\"hit\":2,\"coalesced\":0,\"miss\":2,\"expired\":0,\"bypass\":1}},\"saved_tokens\":{{\"input\":30,\"output\":8}}}}}}",
            &json[..json.len() - 1]
        );
        let text = super::render(&with_cache).unwrap();
        assert!(
            text.contains("hit 2  coalesced 0  miss 2") && text.contains("50.0%"),
            "{text}"
        );
        assert!(text.contains("entries 3  bytes 900 of 1000"), "{text}");
        assert!(!text.contains("request log"), "{text}");
        let with_logs = |dropped: u64, uncounted: u64| {
            format!(
                "{},\"logs\":{{\"rows\":90,\"written\":100,\"dropped\":{dropped},\"bodies_dropped\":0,\"uncounted\":{uncounted},\"write_errors\":0,\"deleted\":10}}}}",
                &json[..json.len() - 1]
            )
        };
        let text = super::render(&with_logs(0, 0)).unwrap();
        assert!(
            text.contains(
                "request log rows 90  written 100  dropped 0  write errors 0  deleted 10"
            ) && !text.contains("queue was full")
                && !text.contains("tallied"),
            "{text}"
        );
        let text = super::render(&with_logs(7, 0)).unwrap();
        assert!(
            text.contains("dropped 7")
                && text.contains("queue was full")
                && text.contains("tallied for usage")
                && !text.contains("not even tallied"),
            "{text}"
        );
        let text = super::render(&with_logs(7, 3)).unwrap();
        assert!(text.contains("3 requests not even tallied"), "{text}");
    }
}
