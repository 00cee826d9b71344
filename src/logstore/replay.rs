//! Reading the log back for what it counts: the rows a restart replays into
//! the rate-limit windows and budgets (`replay`), and the totals of `aigw
//! usage` and `GET /usage` (`usage`). Read-only; never on a request's path.

use crate::record::Metadata;
use rusqlite::{Connection, params};

/// One logged request, as the limits and budgets count it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Replayed {
    pub ts_ms: u64,
    pub key_id: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    /// Metadata values as text.
    pub metadata: Vec<(String, String)>,
    pub cost: Option<f64>,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// The gateway refused it before any provider (a client error).
    pub refused: bool,
    /// Answered from the cache (a hit or a shared answer).
    pub cached: bool,
}

/// Every row since `since_ms`, oldest first, handed to `each` in batches of
/// at most `batch` (a month of a busy log does not fit in memory at once).
pub fn replay(
    conn: &Connection,
    since_ms: u64,
    batch: usize,
    each: &mut dyn FnMut(&[Replayed]),
) -> rusqlite::Result<usize> {
    let mut stmt = conn.prepare(
        "SELECT ts, key_id, provider, model, metadata, cost, tokens_in, tokens_out, error_source, cache
         FROM requests WHERE ts >= ?1 ORDER BY ts",
    )?;
    let rows = stmt.query_map(params![since_ms as i64], |r| {
        let metadata: Option<String> = r.get(4)?;
        let error_source: Option<String> = r.get(8)?;
        let cache: Option<String> = r.get(9)?;
        Ok(Replayed {
            ts_ms: r.get::<_, i64>(0)?.max(0) as u64,
            key_id: r.get(1)?,
            provider: r.get(2)?,
            model: r.get(3)?,
            metadata: metadata.as_deref().map(metadata_pairs).unwrap_or_default(),
            cost: r.get(5)?,
            tokens_in: r.get::<_, Option<i64>>(6)?.unwrap_or(0).max(0) as u64,
            tokens_out: r.get::<_, Option<i64>>(7)?.unwrap_or(0).max(0) as u64,
            refused: error_source.as_deref() == Some("client"),
            cached: matches!(cache.as_deref(), Some("HIT" | "COALESCED")),
        })
    })?;
    let mut chunk = Vec::with_capacity(batch.min(1 << 16));
    let mut total = 0;
    for row in rows {
        chunk.push(row?);
        if chunk.len() >= batch.max(1) {
            total += chunk.len();
            each(&chunk);
            chunk.clear();
        }
    }
    total += chunk.len();
    each(&chunk);
    Ok(total)
}

/// A stored metadata object's fields as text, as the request's limits and
/// budgets compared them (numbers as the client wrote them).
fn metadata_pairs(json: &str) -> Vec<(String, String)> {
    Metadata::parse(json.as_bytes())
        .map(|m| {
            m.0.iter()
                .map(|(k, v)| (k.clone(), v.as_text().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// What `aigw usage` groups by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum By {
    Key,
    Provider,
    Model,
    Metadata(String),
}

impl By {
    pub fn parse(s: &str) -> Result<By, String> {
        match s {
            "key" => Ok(By::Key),
            "provider" => Ok(By::Provider),
            "model" => Ok(By::Model),
            _ => match s.strip_prefix("metadata.") {
                Some(f) if !f.is_empty() => Ok(By::Metadata(f.to_string())),
                _ => Err(format!(
                    "by: `{s}` is not a dimension; use key, provider, model or metadata.<field>"
                )),
            },
        }
    }
}

/// One group's totals.
#[derive(Clone, Debug, PartialEq)]
pub struct UsageRow {
    /// The group's value (`(none)` for requests without one).
    pub value: String,
    pub requests: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// USD of the requests whose cost is known.
    pub cost: f64,
    /// Requests whose cost is unknown (no price).
    pub unknown_cost: u64,
    /// Requests answered from the cache (no spend).
    pub cached: u64,
}

/// Totals by `by` of the requests since `since_ms`, most spend first.
pub fn usage(conn: &Connection, by: &By, since_ms: u64) -> rusqlite::Result<Vec<UsageRow>> {
    let value = match by {
        By::Key => "COALESCE(r.key_id, '(none)')",
        By::Provider => "COALESCE(r.provider, '(none)')",
        By::Model => "COALESCE(r.provider || '/' || r.model, r.provider, '(none)')",
        By::Metadata(_) => "COALESCE(aigw_meta(r.metadata, ?2), '(none)')",
    };
    let sql = format!(
        "SELECT {value} AS v, COUNT(*), SUM(COALESCE(r.tokens_in, 0)), SUM(COALESCE(r.tokens_out, 0)),
                SUM(COALESCE(r.cost, 0)), SUM(r.cost IS NULL AND r.provider IS NOT NULL),
                SUM(COALESCE(r.cache IN ('HIT', 'COALESCED'), 0))
         FROM requests r WHERE r.ts >= ?1 GROUP BY v ORDER BY 5 DESC, 2 DESC"
    );
    let mut stmt = conn.prepare(&sql)?;
    let map = |r: &rusqlite::Row<'_>| {
        Ok(UsageRow {
            value: r.get(0)?,
            requests: r.get::<_, i64>(1)?.max(0) as u64,
            tokens_in: r.get::<_, i64>(2)?.max(0) as u64,
            tokens_out: r.get::<_, i64>(3)?.max(0) as u64,
            cost: r.get(4)?,
            unknown_cost: r.get::<_, i64>(5)?.max(0) as u64,
            cached: r.get::<_, i64>(6)?.max(0) as u64,
        })
    };
    let rows = match by {
        By::Metadata(f) => stmt.query_map(params![since_ms as i64, f], map)?,
        _ => stmt.query_map(params![since_ms as i64], map)?,
    };
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_metadata_reads_as_the_request_compared_it() {
        assert_eq!(
            metadata_pairs(r#"{"team":"a","n":1.50,"big":1e3,"vip":true}"#),
            [
                ("team", "a"),
                ("n", "1.50"),
                ("big", "1e3"),
                ("vip", "true")
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert!(metadata_pairs("not json").is_empty());
    }
}
