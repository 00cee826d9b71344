//! Reading the log back for what it counts: the rows a restart replays into
//! the rate-limit windows and budgets (`replay`), and the totals of `aigw
//! usage` and `GET /usage` (`usage`). Read-only; never on a request's path.

use crate::record::Metadata;
use rusqlite::{Connection, params};

/// One logged request (or a tally of several), as the limits and budgets
/// count it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Replayed {
    pub ts_ms: u64,
    /// Requests it stands for: 1 for a row, the count of a tally.
    pub requests: u64,
    pub key_id: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    /// Metadata values as text.
    pub metadata: Vec<(String, String)>,
    pub cost: Option<f64>,
    /// Tokens as the rate limits counted them (estimates, and input a
    /// provider reports apart, included).
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// The gateway refused it before any provider (a client error).
    pub refused: bool,
    /// Answered from the cache (a hit or a shared answer).
    pub cached: bool,
}

/// Every row since `since_ms`, oldest first, then every tally since then
/// (the requests kept no row of), handed to `each` in batches of at most
/// `batch` (a month of a busy log does not fit in memory at once). Returns
/// the requests read. Rows and tallies are each in time order, and neither
/// runs past now: a tally older than the rows before it still lands in its
/// window, since `since_ms` reaches back no further than the window before
/// the current one, which a counter keeps beside the current.
pub fn replay(
    conn: &Connection,
    since_ms: u64,
    batch: usize,
    each: &mut dyn FnMut(&[Replayed]),
) -> rusqlite::Result<usize> {
    replay_after(conn, since_ms, Marks::default(), batch, each).map(|(n, _)| n)
}

/// Where a replay stopped: the last row and tally it read (rowids grow as
/// rows are written; retention deletes the oldest).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Marks {
    pub row: i64,
    pub tally: i64,
}

/// [`replay`] of what was written after `after` only; returns the requests
/// read and where it stopped (a reload reads the log once whole, then again
/// for what was written meanwhile).
pub fn replay_after(
    conn: &Connection,
    since_ms: u64,
    after: Marks,
    batch: usize,
    each: &mut dyn FnMut(&[Replayed]),
) -> rusqlite::Result<(usize, Marks)> {
    // A store last written by an older aigw has neither the counted tokens
    // nor tallies: what it has is read.
    let counted = super::has_column(conn, "requests", "counted_in")?;
    let tallied = has_tallies(conn)?;
    let mut marks = after;
    // A read of what was written after a mark walks the rowids from it (in
    // time order, the ts index would walk the whole window again).
    let order = if after == Marks::default() {
        "ts"
    } else {
        "rowid"
    };
    let columns = if counted {
        "ts, key_id, provider, model, metadata, cost,
                COALESCE(counted_in, tokens_in), COALESCE(counted_out, tokens_out), error_source, cache, rowid"
    } else {
        "ts, key_id, provider, model, metadata, cost, tokens_in, tokens_out, error_source, cache, rowid"
    };
    let mut stmt = conn.prepare(&format!(
        "SELECT {columns} FROM requests WHERE rowid > ?2 AND ts >= ?1 ORDER BY {order}"
    ))?;
    let rows = stmt.query_map(params![since_ms as i64, after.row], |r| {
        marks.row = marks.row.max(r.get::<_, i64>(10)?);
        let metadata: Option<String> = r.get(4)?;
        let error_source: Option<String> = r.get(8)?;
        let cache: Option<String> = r.get(9)?;
        Ok(Replayed {
            ts_ms: r.get::<_, i64>(0)?.max(0) as u64,
            requests: 1,
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
    let mut pass = |row: Replayed, chunk: &mut Vec<Replayed>| {
        total += row.requests;
        chunk.push(row);
        if chunk.len() >= batch.max(1) {
            each(chunk);
            chunk.clear();
        }
    };
    for row in rows {
        pass(row?, &mut chunk);
    }
    if tallied {
        let mut stmt = conn.prepare(&format!(
            "SELECT ts, key_id, provider, model, metadata, cost, counted_in, counted_out, refused,
                    cached, requests, unknown_cost, rowid
             FROM tallies WHERE rowid > ?2 AND ts >= ?1 ORDER BY {order}",
        ))?;
        let tallies = stmt.query_map(params![since_ms as i64, after.tally], |r| {
            marks.tally = marks.tally.max(r.get::<_, i64>(12)?);
            let metadata: Option<String> = r.get(4)?;
            let requests = r.get::<_, i64>(10)?.max(0) as u64;
            let unknown = r.get::<_, i64>(11)?.max(0) as u64;
            Ok(Replayed {
                ts_ms: r.get::<_, i64>(0)?.max(0) as u64,
                requests,
                key_id: r.get(1)?,
                provider: r.get(2)?,
                model: r.get(3)?,
                metadata: metadata.as_deref().map(metadata_pairs).unwrap_or_default(),
                // All unpriced: unknown, as a row without a cost is.
                cost: (unknown < requests).then(|| r.get(5)).transpose()?,
                tokens_in: r.get::<_, i64>(6)?.max(0) as u64,
                tokens_out: r.get::<_, i64>(7)?.max(0) as u64,
                refused: r.get(8)?,
                cached: r.get(9)?,
            })
        })?;
        for row in tallies {
            pass(row?, &mut chunk);
        }
    }
    if !chunk.is_empty() {
        each(&chunk);
    }
    Ok((total as usize, marks))
}

/// Whether the store has tallies (one last written by an older aigw has not).
fn has_tallies(conn: &Connection) -> rusqlite::Result<bool> {
    super::has_column(conn, "tallies", "counted_in")
}

/// A stored metadata object's fields as text, as the request's limits and
/// budgets compared them (numbers as the client wrote them).
fn metadata_pairs(json: &str) -> Vec<(String, String)> {
    Metadata::parse_stored(json.as_bytes())
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

impl UsageRow {
    fn add(&mut self, o: &UsageRow) {
        self.requests += o.requests;
        self.tokens_in += o.tokens_in;
        self.tokens_out += o.tokens_out;
        self.cost += o.cost;
        self.unknown_cost += o.unknown_cost;
        self.cached += o.cached;
    }
}

/// Totals by `by` of the requests since `since_ms` (rows and tallies), most
/// spend first. Tokens are those providers used (for an answer cut before
/// its usage, the estimate it was charged: `RequestRecord::shown_tokens`): a
/// cache hit's or a coalesced follower's were saved (as `/stats` counts
/// them), and are left out.
pub fn usage(conn: &Connection, by: &By, since_ms: u64) -> rusqlite::Result<Vec<UsageRow>> {
    let value = match by {
        By::Key => "COALESCE(r.key_id, '(none)')",
        By::Provider => "COALESCE(r.provider, '(none)')",
        By::Model => "COALESCE(r.provider || '/' || r.model, r.provider, '(none)')",
        By::Metadata(_) => "COALESCE(aigw_meta(r.metadata, ?2), '(none)')",
    };
    let rows_sql = format!(
        "SELECT {value} AS v, COUNT(*),
                SUM(CASE WHEN r.cache IN ('HIT', 'COALESCED') THEN 0
                         WHEN r.cost_estimated THEN COALESCE(r.tokens_in, r.counted_in, 0)
                         ELSE COALESCE(r.tokens_in, 0) END),
                SUM(CASE WHEN r.cache IN ('HIT', 'COALESCED') THEN 0
                         WHEN r.cost_estimated THEN MAX(COALESCE(r.tokens_out, 0), COALESCE(r.counted_out, 0))
                         ELSE COALESCE(r.tokens_out, 0) END),
                SUM(COALESCE(r.cost, 0)), SUM(r.cost IS NULL AND r.provider IS NOT NULL),
                SUM(COALESCE(r.cache IN ('HIT', 'COALESCED'), 0))
         FROM requests r WHERE r.ts >= ?1 GROUP BY v"
    );
    let tallies_sql = format!(
        "SELECT {value} AS v, SUM(r.requests),
                SUM(CASE WHEN r.cached THEN 0 ELSE r.tokens_in END),
                SUM(CASE WHEN r.cached THEN 0 ELSE r.tokens_out END),
                SUM(r.cost), SUM(r.unknown_cost), SUM(r.cached * r.requests)
         FROM tallies r WHERE r.ts >= ?1 GROUP BY v"
    );
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
    let mut out: Vec<UsageRow> = Vec::new();
    let mut index: crate::fasthash::FastMap<String, usize> = Default::default();
    // A store last written by an older aigw has no tallies.
    let sources = if has_tallies(conn)? {
        vec![rows_sql, tallies_sql]
    } else {
        vec![rows_sql]
    };
    for sql in sources {
        let mut stmt = conn.prepare(&sql)?;
        let rows = match by {
            By::Metadata(f) => stmt.query_map(params![since_ms as i64, f], map)?,
            _ => stmt.query_map(params![since_ms as i64], map)?,
        };
        for row in rows {
            let row = row?;
            match index.get(&row.value).map(|&i| &mut out[i]) {
                Some(o) => o.add(&row),
                None => {
                    index.insert(row.value.clone(), out.len());
                    out.push(row);
                }
            }
        }
    }
    out.sort_by(|a, b| b.cost.total_cmp(&a.cost).then(b.requests.cmp(&a.requests)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logstore::write::{Retained, Writer};
    use crate::record::{LogFacts, RequestRecord};
    use crate::tally::TallyRow;

    fn tally(ts_ms: u64, key: &str, requests: u64, cost: f64, unknown: u64) -> TallyRow {
        TallyRow {
            ts_ms,
            key_id: Some(key.into()),
            provider: Some("openai".into()),
            model: Some("gpt-4o-mini".into()),
            metadata: Some(format!(r#"{{"user":"{key}-user"}}"#)),
            refused: false,
            cached: false,
            requests,
            tokens_in: 10 * requests,
            tokens_out: 5 * requests,
            // The limits counted more (estimates, cache reads).
            counted_in: 12 * requests,
            counted_out: 6 * requests,
            cost,
            unknown_cost: unknown,
        }
    }

    /// A fresh directory for a store: (the directory, the store's path).
    fn fresh_store(name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("aigw-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("requests.db");
        (dir, path)
    }

    /// Rows and tallies count alike in `usage` and `replay`; retention
    /// deletes tallies by age and beyond the row limit.
    #[test]
    fn tallies_count_beside_rows_and_are_retained_like_them() {
        let (dir, path) = fresh_store("tallies");
        let mut w = Writer::open(&path).unwrap();
        let t0 = 1_790_000_000_000;
        let mut ids = crate::reqid::IdGen::new(0);
        let mut row = RequestRecord::new(ids.id(t0), 0, std::time::Instant::now());
        row.status = 200;
        row.provider = Some("openai".into());
        row.model = Some("gpt-4o-mini".into());
        row.key_id = Some("a".into());
        row.cost = Some(1.0);
        row.usage.input_tokens = Some(10);
        // Input the provider reported apart: the limits counted 25.
        row.count_tokens(25, 0);
        row.log = Some(Box::new(LogFacts::default()));
        w.insert(&[row]).unwrap();
        w.insert_tallies(&[
            tally(t0 + 1000, "a", 4, 2.0, 0),
            tally(t0 + 2000, "b", 3, 0.5, 1),
            // All unpriced: no spend to rebuild, and unknown in usage.
            tally(t0 + 3000, "c", 2, 0.0, 2),
        ])
        .unwrap();
        let conn = crate::logstore::open_for_reading(&path).unwrap();
        let by_key = usage(&conn, &By::Key, t0).unwrap();
        let got: Vec<_> = by_key
            .iter()
            .map(|u| {
                (
                    u.value.as_str(),
                    u.requests,
                    u.tokens_in,
                    u.cost,
                    u.unknown_cost,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("a", 5, 50, 3.0, 0),
                ("b", 3, 30, 0.5, 1),
                ("c", 2, 20, 0.0, 2)
            ]
        );
        let by_user = usage(&conn, &By::Metadata("user".into()), t0).unwrap();
        assert_eq!(by_user[0].value, "a-user");
        // The row has no metadata: a group of its own.
        assert!(
            by_user
                .iter()
                .any(|u| u.value == "(none)" && u.requests == 1)
        );
        // Since after the first tally: only the later ones.
        assert_eq!(usage(&conn, &By::Key, t0 + 1500).unwrap().len(), 2);

        let mut seen = Vec::new();
        let n = replay(&conn, t0, 2, &mut |rows| seen.extend_from_slice(rows)).unwrap();
        assert_eq!(n, 10);
        let costs: Vec<_> = seen.iter().map(|r| (r.requests, r.cost)).collect();
        assert_eq!(
            costs,
            [(1, Some(1.0)), (4, Some(2.0)), (3, Some(0.5)), (2, None)]
        );
        // The rebuild counts what the limits counted; usage shows what was reported.
        let counted: Vec<_> = seen.iter().map(|r| (r.tokens_in, r.tokens_out)).collect();
        assert_eq!(counted, [(25, 0), (48, 24), (36, 18), (24, 12)]);
        assert_eq!(
            seen[1].metadata,
            [("user".to_string(), "a-user".to_string())]
        );

        // Older than the first tally: the row and that tally go.
        let r = w.retain(u64::MAX, t0 + 1001).unwrap();
        assert_eq!(
            r,
            Retained {
                rows: 1,
                tallies: 1
            }
        );
        // At most one row kept: one tally of the two left goes, the oldest.
        let r = w.retain(1, 0).unwrap();
        assert_eq!(
            r,
            Retained {
                rows: 0,
                tallies: 1
            }
        );
        assert_eq!(w.retain(1, 0).unwrap(), Retained::default());
        let left = usage(&conn, &By::Key, 0).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].value, "c");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A store last written by an older aigw (no tallies, no counted
    /// tokens) is read for what it has: a reader cannot upgrade it.
    #[test]
    fn a_store_from_before_tallies_is_read_as_it_is() {
        let (dir, path) = fresh_store("old-store");
        let mut w = Writer::open(&path).unwrap();
        let mut ids = crate::reqid::IdGen::new(0);
        let mut row = RequestRecord::new(ids.id(1_790_000_000_000), 0, std::time::Instant::now());
        row.status = 200;
        row.provider = Some("openai".into());
        row.usage.input_tokens = Some(7);
        row.cost = Some(0.5);
        row.log = Some(Box::new(LogFacts::default()));
        w.insert(&[row]).unwrap();
        drop(w);
        let raw = rusqlite::Connection::open(&path).unwrap();
        // As the first release with a request log wrote it: no column
        // added since, no tallies.
        raw.execute_batch("DROP TABLE tallies;").unwrap();
        for (column, _) in crate::logstore::ADDED_COLUMNS {
            raw.execute_batch(&format!("ALTER TABLE requests DROP COLUMN {column}"))
                .unwrap();
        }
        drop(raw);
        let conn = crate::logstore::open_for_reading(&path).unwrap();
        // `aigw logs` lists and shows its rows.
        let all = crate::logstore::query::Filter {
            limit: 10,
            ..Default::default()
        };
        let listed = crate::logstore::query::query(&conn, &all).unwrap();
        assert_eq!((listed.len(), listed[0].cache_key.as_deref()), (1, None));
        let id = listed[0].id.clone();
        assert!(crate::logstore::query::show(&conn, &id).unwrap().is_some());
        let u = usage(&conn, &By::Provider, 0).unwrap();
        assert_eq!((u.len(), u[0].requests, u[0].cost), (1, 1, 0.5));
        let mut seen = Vec::new();
        assert_eq!(
            replay(&conn, 0, 8, &mut |r| seen.extend_from_slice(r)).unwrap(),
            1
        );
        assert_eq!(seen[0].tokens_in, 7);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// More entries than a header may carry (a key's attribution merged in)
    /// still read back.
    #[test]
    fn stored_metadata_has_no_entry_limit() {
        let json = r#"{"a":"1","b":"2","c":"3","d":"4","e":"5","team":"search"}"#;
        assert_eq!(metadata_pairs(json).len(), 6);
    }

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
