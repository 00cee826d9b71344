//! Settings written back as the config file writes them, for `/config`: each
//! value reads as TOML meaning what the file said (strings quoted and
//! escaped on one line, durations in whole units, rules as inline tables).
//! Keys are never written: a route target says how many it has. `aigw key
//! new` writes its config lines with these too.

use super::budgets::{BudgetRule, BudgetWindow};
use super::limits::{Count, RateRule};
use super::routes::{Backoff, RouteConfig, Strategy, TargetConfig};
use std::time::Duration;

/// A TOML basic string on one line (JSON's escapes are TOML's:
/// [`crate::error::push_json_string`]), so no value can start a line of
/// its own in `/config`.
pub fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    crate::error::push_json_string(&mut out, s);
    out
}

/// A TOML array of strings.
pub fn strings(list: &[String]) -> String {
    let items: Vec<String> = list.iter().map(|s| string(s)).collect();
    format!("[{}]", items.join(", "))
}

/// A duration as the file writes one: a whole number of the largest unit
/// that holds it exactly of `s`, `ms`, `us` (`1500ms`, not `1.5s`, which
/// the parser refuses).
pub fn duration(d: Duration) -> String {
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}us", d.as_micros())
    } else if d.subsec_millis() != 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs())
    }
}

/// `{ a = 1, b = "x" }` from (key, rendered value) pairs; keys quoted.
fn inline(pairs: &[(&str, String)]) -> String {
    let body: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{} = {v}", bare_or_quoted(k)))
        .collect();
    format!("{{ {} }}", body.join(", "))
}

/// A key as TOML writes it: bare when it can be, else a quoted string.
pub fn bare_or_quoted(k: &str) -> String {
    let bare = !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare { k.to_string() } else { string(k) }
}

/// A key's metadata: `{ team = "search" }`.
pub fn metadata(pairs: &[(String, String)]) -> String {
    let rendered: Vec<(&str, String)> =
        pairs.iter().map(|(k, v)| (k.as_str(), string(v))).collect();
    inline(&rendered)
}

pub fn rate_rule(r: &RateRule) -> String {
    let mut pairs = vec![
        ("name", string(&r.name)),
        ("scope", string(&r.scope.describe())),
        ("count", string(r.count.as_str())),
        ("limit", r.limit.to_string()),
    ];
    if r.count != Count::Concurrent {
        pairs.push(("window", string(&duration(r.window))));
        pairs.push(("technique", string(r.technique.as_str())));
    }
    pairs.extend([
        ("models", strings(&r.models)),
        ("keys", strings(&r.keys)),
        ("count_cache_hits", r.count_cache_hits.to_string()),
        ("default_max_tokens", r.default_max_tokens.to_string()),
    ]);
    inline(&pairs)
}

pub fn budget(b: &BudgetRule) -> String {
    let window = match b.window {
        BudgetWindow::Daily => "daily".to_string(),
        BudgetWindow::Monthly => "monthly".to_string(),
        BudgetWindow::Rolling(d) => duration(d),
    };
    let mut pairs = vec![
        ("name", string(&b.name)),
        ("scope", string(&b.scope.describe())),
        ("usd", toml::Value::Float(b.usd).to_string()),
        ("window", string(&window)),
    ];
    if let Some(a) = b.alert_at {
        pairs.push(("alert_at", toml::Value::Float(a).to_string()));
    }
    pairs.extend([
        ("models", strings(&b.models)),
        ("keys", strings(&b.keys)),
        ("default_max_tokens", b.default_max_tokens.to_string()),
    ]);
    inline(&pairs)
}

fn targets(list: &[TargetConfig]) -> String {
    let items: Vec<String> = list
        .iter()
        .map(|t| {
            let mut pairs = vec![
                ("provider", string(&t.provider)),
                ("model", string(&t.model)),
                ("weight", t.weight.to_string()),
            ];
            if let Some(d) = t.first_byte {
                pairs.push(("first_byte", string(&duration(d))));
            }
            if let Some(d) = t.timeout {
                pairs.push(("timeout", string(&duration(d))));
            }
            if !t.keys.is_empty() {
                // How many, never which (nor the variables that hold them).
                pairs.push(("api_keys", t.keys.len().to_string()));
            }
            inline(&pairs)
        })
        .collect();
    format!("[{}]", items.join(", "))
}

/// A route as its table in the file (`api_keys_env` shown as the number
/// of keys read, as `api_keys`).
pub fn route(r: &RouteConfig) -> String {
    let strategy = match r.strategy {
        Strategy::Fallback => "fallback",
        Strategy::Weighted => "weighted",
    };
    let backoff = match r.retry.backoff {
        Backoff::Constant => "constant",
        Backoff::Linear => "linear",
        Backoff::Exponential => "exponential",
    };
    let mut on: Vec<String> = r.fallback_on.statuses.iter().map(u16::to_string).collect();
    if r.fallback_on.timeout {
        on.push(string("timeout"));
    }
    if r.fallback_on.connect {
        on.push(string("connect"));
    }
    let mut pairs = vec![
        ("strategy", string(strategy)),
        ("targets", targets(&r.targets)),
    ];
    if !r.variants.is_empty() {
        let variants: Vec<String> = r
            .variants
            .iter()
            .map(|v| {
                let when: Vec<(String, String)> = v
                    .when
                    .iter()
                    .map(|(f, value)| (format!("metadata.{f}"), string(value)))
                    .collect();
                let when: Vec<(&str, String)> =
                    when.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
                inline(&[("when", inline(&when)), ("targets", targets(&v.targets))])
            })
            .collect();
        pairs.push(("variants", format!("[{}]", variants.join(", "))));
    }
    pairs.push((
        "retry",
        inline(&[
            ("attempts", r.retry.attempts.to_string()),
            ("backoff", string(backoff)),
            ("base", string(&duration(r.retry.base))),
            ("max", string(&duration(r.retry.max))),
            ("jitter", r.retry.jitter.to_string()),
        ]),
    ));
    pairs.push(("fallback_on", format!("[{}]", on.join(", "))));
    if let Some(c) = r.cooldown {
        pairs.push((
            "cooldown",
            inline(&[
                ("failures", c.failures.to_string()),
                ("window", string(&duration(c.window))),
                ("duration", string(&duration(c.duration))),
            ]),
        ));
    }
    inline(&pairs)
}
