//! Usage and spend: the start-up replay of the request log into the rate
//! limits and budgets, and the totals `GET /usage` and `aigw usage` show (by
//! key, provider, model or a metadata field, over a chosen time), with every
//! budget's standing. Off the request path.

use crate::budget::{Budgets, Spent, Standing};
use crate::config::{BudgetRule, Config, RateRule};
use crate::error::push_json_string;
use crate::limit::{Limiter, Logged, Subject};
use crate::logstore;
pub use crate::logstore::replay::By;
use std::fmt::Write as _;

/// Rows replayed at a time.
const REPLAY_BATCH: usize = 8192;

/// Replays the request log into the rate-limit windows and budgets in force
/// now (at start, before any shard runs); returns how many logged requests
/// it read.
pub fn rebuild(config: &Config, limiter: &Limiter, budgets: &Budgets) -> Result<usize, String> {
    rebuild_rules(
        &config.server.data_dir,
        &config.rate_limits,
        &config.budgets,
        limiter,
        budgets,
        true,
        None,
    )
}

/// Replays the request log of `data_dir` into the windows of `rate_limits`
/// and the spend of `budget_rules` only (a reload's new rules; their buckets
/// are empty). `restore`: each budget's window goes on with the amount an
/// earlier run took for it (at start; a reload's new budgets are new, and
/// take the amount configured). `then`: after the read, makes what settled
/// meanwhile reach the store, and the rows written since are read too (a
/// reload, while requests go on: the read of a large log takes seconds).
pub fn rebuild_rules(
    data_dir: &std::path::Path,
    rate_limits: &[RateRule],
    budget_rules: &[BudgetRule],
    limiter: &Limiter,
    budgets: &Budgets,
    restore: bool,
    then: Option<&dyn Fn()>,
) -> Result<usize, String> {
    if rate_limits.is_empty() && budget_rules.is_empty() {
        return Ok(0);
    }
    let path = logstore::path(data_dir);
    if !path.exists() {
        return Ok(0);
    }
    let now = crate::reqid::now_unix_ms();
    // The earliest time any window in force (or, sliding, the one before it;
    // rolling budgets, the oldest part counted) began.
    let mut since = now;
    for r in rate_limits {
        let w = r.window.as_millis().max(1) as u64;
        since = since.min((now / w).saturating_sub(1) * w);
    }
    for b in budget_rules {
        since = since.min(crate::budget::slot(b.window, now).start_ms);
    }
    let conn = logstore::open_for_reading(&path)?;
    let mut each = |rows: &[logstore::replay::Replayed]| {
        // The logged metadata already holds the key's fields merged in.
        let subjects: Vec<(&logstore::replay::Replayed, Subject<'_>)> = rows
            .iter()
            .filter_map(|r| {
                let subject = Subject {
                    key_id: r.key_id.as_deref(),
                    provider: r.provider.as_deref()?,
                    model: r.model.as_deref(),
                    key_metadata: &r.metadata,
                    metadata: None,
                };
                Some((r, subject))
            })
            .collect();
        let logged: Vec<Logged<'_>> = subjects
            .iter()
            .map(|(r, subject)| Logged {
                ts_ms: r.ts_ms,
                requests: r.requests,
                subject: *subject,
                tokens_in: r.tokens_in,
                tokens_out: r.tokens_out,
                refused: r.refused,
                cached: r.cached,
            })
            .collect();
        limiter.rebuild(rate_limits, &logged);
        let spent: Vec<Spent<'_>> = subjects
            .iter()
            .filter_map(|(r, subject)| {
                let usd = r.cost.filter(|c| *c > 0.0)?;
                Some(Spent {
                    ts_ms: r.ts_ms,
                    subject: *subject,
                    usd,
                })
            })
            .collect();
        budgets.rebuild(budget_rules, &spent);
    };
    let read = |after, each: &mut dyn FnMut(&[logstore::replay::Replayed])| {
        logstore::replay::replay_after(&conn, since, after, REPLAY_BATCH, each)
            .map_err(|e| e.to_string())
    };
    let (mut replayed, marks) = read(Default::default(), &mut each)?;
    if let Some(settle) = then {
        settle();
        replayed += read(marks, &mut each)?.0;
    }
    // Each budget's window goes on with the amount it began with.
    if restore {
        budgets.restore_amounts(budget_rules, &logstore::budget_amounts(&conn), now);
        budgets.note_raised_alerts(budget_rules, now);
    }
    Ok(replayed)
}

/// `GET /usage` and `aigw usage --json`: the totals by `by` since `since_ms`
/// and the budgets' standings. `log`: the request log, or why there is none
/// to read (the groups are then empty and `log_error` says why).
pub fn usage_json(
    log: Result<&rusqlite::Connection, &str>,
    by: &By,
    since_ms: u64,
    standings: &[Standing],
) -> Result<String, String> {
    let rows = match log {
        Ok(conn) => logstore::replay::usage(conn, by, since_ms).map_err(|e| e.to_string())?,
        Err(_) => Vec::new(),
    };
    let mut s = String::from("{\"since\":");
    push_json_string(&mut s, &crate::calendar::format_ms(since_ms));
    if let Err(why) = log {
        s.push_str(",\"log_error\":");
        push_json_string(&mut s, why);
    }
    s.push_str(",\"groups\":[");
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str("{\"value\":");
        push_json_string(&mut s, &r.value);
        let _ = write!(
            s,
            ",\"requests\":{},\"tokens_in\":{},\"tokens_out\":{},\"cost_usd\":{},\"unknown_cost\":{},\"cached\":{}}}",
            r.requests,
            r.tokens_in,
            r.tokens_out,
            crate::num::to_pico(r.cost),
            r.unknown_cost,
            r.cached
        );
    }
    s.push_str("],\"budgets\":[");
    for (i, b) in standings.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str("{\"budget\":");
        push_json_string(&mut s, &b.budget);
        s.push_str(",\"scope\":");
        push_json_string(&mut s, &b.scope);
        s.push_str(",\"value\":");
        push_json_string(&mut s, &b.value);
        s.push_str(",\"window\":");
        push_json_string(&mut s, &b.window);
        let _ = write!(
            s,
            ",\"usd\":{},\"spent_usd\":{},\"left_usd\":{},\"alert\":{},\"resets\":",
            crate::num::to_pico(b.usd),
            crate::num::to_pico(b.spent_usd),
            crate::num::to_pico(b.usd - b.spent_usd),
            b.alert
        );
        push_json_string(&mut s, &crate::calendar::format_ms(b.resets_ms));
        s.push('}');
    }
    s.push_str("]}\n");
    Ok(s)
}

/// The text `aigw usage` prints (from the JSON above).
pub fn usage_table(json: &str, by: &str) -> Option<String> {
    use simd_json::prelude::*;
    let mut bytes = json.as_bytes().to_vec();
    let v = simd_json::to_owned_value(&mut bytes).ok()?;
    let mut out = format!(
        "since {}\n{:<32} {:>9} {:>12} {:>12} {:>14} {:>8} {:>8}\n",
        v.get("since")?.as_str()?,
        by,
        "requests",
        "tokens_in",
        "tokens_out",
        "cost_usd",
        "unpriced",
        "cached"
    );
    for g in v.get("groups")?.as_array()? {
        let n = |k: &str| g.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
        let _ = writeln!(
            out,
            "{:<32} {:>9} {:>12} {:>12} {:>14.6} {:>8} {:>8}",
            crate::logstore::query::printable(g.get("value")?.as_str()?, false),
            n("requests"),
            n("tokens_in"),
            n("tokens_out"),
            g.get("cost_usd").and_then(|x| x.cast_f64()).unwrap_or(0.0),
            n("unknown_cost"),
            n("cached")
        );
    }
    let budgets = v.get("budgets")?.as_array()?;
    if !budgets.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<20} {:<24} {:<14} {:>12} {:>12} {:>12}  resets",
            "budget", "for", "window", "usd", "spent", "left"
        );
        for b in budgets {
            let f = |k: &str| b.get(k).and_then(|x| x.cast_f64()).unwrap_or(0.0);
            let alert = if b.get("alert").and_then(|x| x.as_bool()) == Some(true) {
                "  ALERT"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "{:<20} {:<24} {:<14} {:>12.6} {:>12.6} {:>12.6}  {}{alert}",
                crate::logstore::query::printable(b.get("budget")?.as_str()?, false),
                crate::logstore::query::printable(
                    &format!(
                        "{}={}",
                        b.get("scope")?.as_str()?,
                        b.get("value")?.as_str()?
                    ),
                    false
                ),
                b.get("window")?.as_str()?,
                f("usd"),
                f("spent_usd"),
                f("left_usd"),
                b.get("resets")?.as_str()?,
            );
        }
    }
    Some(out)
}
