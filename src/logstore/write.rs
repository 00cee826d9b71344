//! Writing the log: a batch of finished records in one transaction, and
//! retention (oldest first, in small deletes so no single one holds the file
//! for long). Used by the log thread only.

use crate::cache::key::{CacheKey, KEY_TEXT_LEN};
use crate::fasthash::FastMap;
use crate::record::{LogFacts, RequestRecord};
use crate::sys::{BorrowedRows, SqlValue, StatementId};
use crate::tally::TallyRow;
use rusqlite::params;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

/// Most rows one retention pass deletes; passes repeat every flush until the
/// store is within its limits.
pub const RETENTION_BATCH: u64 = 5_000;

/// What one retention pass deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retained {
    pub rows: u64,
    pub tallies: u64,
}

/// The write side of the store.
pub struct Writer {
    db: BorrowedRows,
    /// The INSERTs of [`ROWS_PER_INSERT`] rows and of one.
    insert_many: StatementId,
    insert_one: StatementId,
    /// One per row of `insert_many`.
    text: Vec<RowText>,
    /// Rows in `requests` (counted once at open, then kept).
    rows: u64,
    /// Rows in `tallies` (likewise).
    tally_rows: u64,
    /// Hand the CPU back between statements (`logs.yield_to_requests`).
    yield_between: bool,
}

/// The columns of a row of `requests`, in the order [`bind_row`] binds them.
const COLUMNS: [&str; 32] = [
    "id",
    "ts",
    "route",
    "provider",
    "model",
    "path",
    "status",
    "error_source",
    "error_code",
    "outcome",
    "stream",
    "gateway_us",
    "upstream_us",
    "ttft_us",
    "total_us",
    "tokens_in",
    "tokens_out",
    "tokens_cached",
    "bytes_in",
    "bytes_out",
    "user_agent",
    "event_id",
    "metadata",
    "cache",
    "cache_key",
    "key_id",
    "cost",
    "cost_estimated",
    "context_share",
    "routing",
    "counted_in",
    "counted_out",
];

/// Rows one INSERT carries: SQLite's cost per statement (bind, step, reset)
/// is then paid once for many rows (measured: 20% less per row).
const ROWS_PER_INSERT: usize = 32;

/// `INSERT INTO requests (...) VALUES (...), ...` for `rows` rows.
fn insert_sql(rows: usize) -> String {
    let mut sql = format!("INSERT INTO requests ({}) VALUES ", COLUMNS.join(", "));
    let mut n = 0;
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for col in 0..COLUMNS.len() {
            n += 1;
            let _ = write!(sql, "{}?{n}", if col == 0 { "" } else { ", " });
        }
        sql.push(')');
    }
    sql
}

/// Text a row needs that the record does not hold as text: made for each
/// row of a statement before it runs, and kept (one per row of the largest
/// statement, reused) so the statement reads it in place.
struct RowText {
    id: [u8; crate::reqid::TEXT_LEN],
    metadata: String,
    cache_key: [u8; KEY_TEXT_LEN],
}

impl RowText {
    fn new() -> RowText {
        RowText {
            id: [b'0'; crate::reqid::TEXT_LEN],
            metadata: String::new(),
            cache_key: [b'0'; KEY_TEXT_LEN],
        }
    }

    fn fill(&mut self, r: &RequestRecord) {
        self.id = r.id.to_text();
        self.metadata.clear();
        if let Some(m) = &r.metadata {
            m.write_json(&mut self.metadata);
        }
        if let Some(k) = r.cache_key {
            self.cache_key = CacheKey(k).to_text();
        }
    }
}

/// `r`'s values in [`COLUMNS`] order (NULL for what it lacks).
fn row_values<'a>(
    r: &'a RequestRecord,
    facts: &'a LogFacts,
    text: &'a RowText,
) -> [SqlValue<'a>; COLUMNS.len()] {
    use SqlValue::{Int, Null, Real, Text};
    let text_of = |t: Option<&'a str>| t.map_or(Null, Text);
    let int_of = |n: Option<i64>| n.map_or(Null, Int);
    // Both are ASCII (hex digits and dashes) by construction.
    let id = std::str::from_utf8(&text.id).unwrap_or_default();
    let cache_key = std::str::from_utf8(&text.cache_key).unwrap_or_default();
    [
        Text(id),
        Int(r.id.unix_ms() as i64),
        Text(r.route.as_str()),
        text_of(r.provider.as_deref()),
        text_of(r.model.as_deref()),
        Text(&facts.path),
        Int(i64::from(r.status)),
        text_of(r.error_source.map(|s| s.as_str())),
        text_of(r.error_code),
        Text(r.outcome.as_str()),
        Int(i64::from(r.stream)),
        Int(us(r.gateway)),
        int_of(r.upstream_ttfb.map(us)),
        int_of(r.ttft.map(us)),
        Int(us(r.total)),
        int_of(opt_i64(r.usage.input_tokens)),
        int_of(opt_i64(r.usage.output_tokens)),
        int_of(opt_i64(r.usage.cached_tokens)),
        int_of(opt_i64(Some(r.bytes_in))),
        int_of(opt_i64(Some(r.bytes_out))),
        text_of(facts.user_agent.as_deref()),
        text_of(facts.event_id.as_deref()),
        text_of(r.metadata.as_ref().map(|_| text.metadata.as_str())),
        text_of(r.cache.map(|c| c.log_name())),
        text_of(r.cache_key.map(|_| cache_key)),
        text_of(r.key_id.as_deref()),
        r.cost.map_or(Null, Real),
        // NULL (no bytes in the row) for the usual `false`.
        if r.cost_estimated { Int(1) } else { Null },
        r.context_share.map_or(Null, Real),
        text_of(facts.routing.as_deref()),
        int_of(opt_i64(r.counted.map(|c| c.0))),
        int_of(opt_i64(r.counted.map(|c| c.1))),
    ]
}

/// One metadata key and value in one commit: the requests that carried it.
struct Carried {
    ts_min: i64,
    ts_max: i64,
    /// A JSON array of their `seq` (ASCII), open at the end.
    seqs: Vec<u8>,
}

impl Carried {
    fn new(ts: i64) -> Carried {
        Carried {
            ts_min: ts,
            ts_max: ts,
            seqs: b"[".to_vec(),
        }
    }

    fn add(&mut self, ts: i64, seq: i64) {
        self.ts_min = self.ts_min.min(ts);
        self.ts_max = self.ts_max.max(ts);
        if self.seqs.len() > 1 {
            self.seqs.push(b',');
        }
        // Without `fmt`: a number for every metadata entry of every row.
        crate::http::push_decimal(&mut self.seqs, seq.max(0) as u64);
    }
}

fn us(d: Duration) -> i64 {
    d.as_micros().min(i64::MAX as u128) as i64
}

fn opt_i64(v: Option<u64>) -> Option<i64> {
    v.map(|n| n.min(i64::MAX as u64) as i64)
}

impl Writer {
    pub fn open(path: &Path) -> Result<Writer, String> {
        let conn = super::open_for_writing(path)?;
        let fail = |e: rusqlite::Error| format!("request log {}: {e}", path.display());
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM requests", [], |r| r.get(0))
            .map_err(fail)?;
        let tally_rows: i64 = conn
            .query_row("SELECT count(*) FROM tallies", [], |r| r.get(0))
            .map_err(fail)?;
        let mut db = BorrowedRows::new(conn);
        let insert_many = db.prepare(&insert_sql(ROWS_PER_INSERT)).map_err(fail)?;
        let insert_one = db.prepare(&insert_sql(1)).map_err(fail)?;
        Ok(Writer {
            db,
            insert_many,
            insert_one,
            text: (0..ROWS_PER_INSERT).map(|_| RowText::new()).collect(),
            rows: rows as u64,
            tally_rows: tally_rows as u64,
            yield_between: false,
        })
    }

    /// Whether the writer hands the CPU back to whatever else may run on it
    /// (a shard) after each statement of [`ROWS_PER_INSERT`] rows, instead of
    /// at the end of its time slice (`logs.yield_to_requests`).
    pub fn set_yield(&mut self, yield_between: bool) {
        self.yield_between = yield_between;
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Inserts the records of `batch` that carry log facts in one
    /// transaction. A failure rolls the whole batch back.
    pub fn insert(&mut self, batch: &[RequestRecord]) -> rusqlite::Result<()> {
        let logged: Vec<(&RequestRecord, &LogFacts)> = batch
            .iter()
            .filter_map(|r| Some((r, r.log.as_deref()?)))
            .collect();
        // Unchecked: the connection is shared with the in-place statements
        // (`&self.db`); nothing else runs on it meanwhile.
        let tx = self.db.conn().unchecked_transaction()?;
        {
            let mut meta = tx.prepare_cached(
                "INSERT INTO meta_seqs (key, value, ts_min, ts_max, seqs) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            let mut payload = tx.prepare_cached(
                "INSERT INTO payloads (seq, request, request_truncated, response, response_truncated) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            // Metadata key and value -> the commit's requests carrying it.
            let mut carried: FastMap<(&str, &str), Carried> = FastMap::default();
            for rows in logged.chunks(ROWS_PER_INSERT) {
                for ((r, _), text) in rows.iter().zip(self.text.iter_mut()) {
                    text.fill(r);
                }
                // A whole chunk in one statement; the last, shorter one a
                // row at a time (one statement per length would be compiled).
                if rows.len() == ROWS_PER_INSERT {
                    let mut values = [SqlValue::Null; ROWS_PER_INSERT * COLUMNS.len()];
                    for (row, ((r, facts), text)) in values
                        .chunks_exact_mut(COLUMNS.len())
                        .zip(rows.iter().zip(&self.text))
                    {
                        row.copy_from_slice(&row_values(r, facts, text));
                    }
                    self.db.run(self.insert_many, &values)?;
                    if self.yield_between {
                        std::thread::yield_now();
                    }
                } else {
                    for ((r, facts), text) in rows.iter().zip(&self.text) {
                        self.db.run(self.insert_one, &row_values(r, facts, text))?;
                    }
                }
                // One writer, one statement: its rows took consecutive numbers.
                let last = tx.last_insert_rowid();
                for (i, (r, facts)) in rows.iter().enumerate() {
                    let seq = last - (rows.len() - 1 - i) as i64;
                    let ts = r.id.unix_ms() as i64;
                    if let Some(m) = &r.metadata {
                        for (k, v) in m.0.iter() {
                            carried
                                .entry((k.as_str(), v.as_text()))
                                .or_insert_with(|| Carried::new(ts))
                                .add(ts, seq);
                        }
                    }
                    if facts.request_body.is_some() || facts.response_body.is_some() {
                        let (q, a) = (facts.request_body.as_ref(), facts.response_body.as_ref());
                        payload.execute(params![
                            seq,
                            q.map(|p| &p.bytes[..]),
                            q.is_some_and(|p| p.truncated),
                            a.map(|p| &p.bytes[..]),
                            a.is_some_and(|p| p.truncated),
                        ])?;
                    }
                }
            }
            for ((k, v), c) in &mut carried {
                c.seqs.push(b']');
                let seqs = std::str::from_utf8(&c.seqs).unwrap_or("[]");
                meta.execute(params![k, v, c.ts_min, c.ts_max, seqs])?;
            }
        }
        tx.commit()?;
        self.rows += logged.len() as u64;
        Ok(())
    }

    /// Stores tally entries (requests kept no row of) in one transaction.
    pub fn insert_tallies(&mut self, tallies: &[TallyRow]) -> rusqlite::Result<()> {
        let tx = self.db.conn().unchecked_transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO tallies (ts, key_id, provider, model, metadata, refused, cached,
                     requests, tokens_in, tokens_out, counted_in, counted_out, cost, unknown_cost)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            )?;
            for t in tallies {
                stmt.execute(params![
                    opt_i64(Some(t.ts_ms)),
                    t.key_id.as_deref(),
                    t.provider.as_deref(),
                    t.model.as_deref(),
                    t.metadata.as_deref(),
                    t.refused,
                    t.cached,
                    opt_i64(Some(t.requests)),
                    opt_i64(Some(t.tokens_in)),
                    opt_i64(Some(t.tokens_out)),
                    opt_i64(Some(t.counted_in)),
                    opt_i64(Some(t.counted_out)),
                    t.cost,
                    opt_i64(Some(t.unknown_cost)),
                ])?;
            }
        }
        tx.commit()?;
        self.tally_rows += tallies.len() as u64;
        Ok(())
    }

    /// Stores the amounts budgets took for their windows (one row a budget
    /// and scope value: the latest window's).
    pub fn save_amounts(&mut self, amounts: &[crate::budget::InForce]) -> rusqlite::Result<()> {
        let tx = self.db.conn().unchecked_transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT OR REPLACE INTO budget_amounts (budget, value, window, micros)
                 VALUES (?1, ?2, ?3, ?4)",
            )?;
            for a in amounts {
                stmt.execute(params![
                    a.budget as i64,
                    a.value,
                    i64::from(a.window),
                    opt_i64(Some(a.micros)),
                ])?;
            }
        }
        tx.commit()
    }

    /// Deletes the stored amounts of every budget but `keep`'s.
    pub fn keep_amounts(&mut self, keep: &[u64]) -> rusqlite::Result<()> {
        let tx = self.db.conn().unchecked_transaction()?;
        let stored: Vec<i64> = tx
            .prepare("SELECT DISTINCT budget FROM budget_amounts")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for b in stored {
            if !keep.contains(&(b as u64)) {
                tx.execute("DELETE FROM budget_amounts WHERE budget = ?1", [b])?;
            }
        }
        tx.commit()
    }

    /// Deletes metadata rows whose requests are all older than every request
    /// left (they are gone; until now a join hid them). A scan of
    /// `meta_seqs`: run it rarely.
    pub fn sweep_meta(&mut self) -> rusqlite::Result<u64> {
        let n = self.db.conn().execute(
            "DELETE FROM meta_seqs WHERE ts_max < (SELECT coalesce(min(ts), 9223372036854775807) FROM requests)",
            [],
        )?;
        Ok(n as u64)
    }

    /// Deletes at most [`RETENTION_BATCH`] of the oldest rows beyond `max_rows`
    /// or older than `min_ts`, and as many tallies by the same rules; returns
    /// how many went (call again while any did).
    pub fn retain(&mut self, max_rows: u64, min_ts: u64) -> rusqlite::Result<Retained> {
        let over = self.rows.saturating_sub(max_rows);
        let tx = self.db.conn().unchecked_transaction()?;
        let deleted = {
            let mut oldest =
                tx.prepare_cached("SELECT seq, ts FROM requests ORDER BY ts ASC LIMIT ?1")?;
            let mut victims: Vec<i64> = Vec::new();
            let want = RETENTION_BATCH;
            let mut rows = oldest.query([want as i64])?;
            while let Some(row) = rows.next()? {
                let (seq, ts): (i64, i64) = (row.get(0)?, row.get(1)?);
                if (victims.len() as u64) < over || (ts as u64) < min_ts {
                    victims.push(seq);
                } else {
                    break;
                }
            }
            drop(rows);
            let mut del = tx.prepare_cached("DELETE FROM requests WHERE seq = ?1")?;
            let mut del_payload = tx.prepare_cached("DELETE FROM payloads WHERE seq = ?1")?;
            for seq in &victims {
                del.execute([seq])?;
                del_payload.execute([seq])?;
            }
            victims.len() as u64
        };
        // Tallies: by the same age, and no more of them than rows are kept.
        let mut tallies_deleted = tx
            .prepare_cached(
                "DELETE FROM tallies WHERE rowid IN
                     (SELECT rowid FROM tallies WHERE ts < ?1 ORDER BY ts LIMIT ?2)",
            )?
            .execute(params![
                min_ts.min(i64::MAX as u64) as i64,
                RETENTION_BATCH as i64
            ])? as u64;
        let tally_over = self
            .tally_rows
            .saturating_sub(tallies_deleted)
            .saturating_sub(max_rows);
        if tally_over > 0 {
            tallies_deleted +=
                tx.prepare_cached(
                    "DELETE FROM tallies WHERE rowid IN
                         (SELECT rowid FROM tallies ORDER BY ts LIMIT ?1)",
                )?
                .execute([tally_over.min(RETENTION_BATCH) as i64])? as u64;
        }
        tx.commit()?;
        self.rows -= deleted.min(self.rows);
        self.tally_rows -= tallies_deleted.min(self.tally_rows);
        Ok(Retained {
            rows: deleted,
            tallies: tallies_deleted,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorSource;
    use crate::logstore::query::{Filter, MAX_LIMIT, query};
    use crate::record::CacheStatus;
    use crate::reqid::IdGen;
    use std::time::Instant;

    /// Rows with values and rows without them, many to a statement and one at
    /// a time: a row never keeps a value of the row bound before it.
    #[test]
    fn every_row_holds_its_own_values_and_nulls() {
        let dir = std::env::temp_dir().join(format!("aigw-write-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = Writer::open(&dir.join("requests.db")).unwrap();
        let mut ids = IdGen::new(0);
        let n = ROWS_PER_INSERT * 2 + 7;
        let batch: Vec<RequestRecord> = (0..n)
            .map(|i| {
                let mut r =
                    RequestRecord::new(ids.id(1_790_000_000_000 + i as u64), 0, Instant::now());
                r.status = 200;
                if i % 3 == 1 {
                    r.status = 502;
                    r.error_source = Some(ErrorSource::Provider);
                    r.error_code = Some("upstream_error");
                    r.cache = Some(CacheStatus::Miss);
                    r.cache_key = Some(i as u128);
                    r.key_id = Some("k1".into());
                    r.cost = Some(0.5);
                    r.usage.input_tokens = Some(i as u64);
                }
                r.log = Some(Box::new(LogFacts {
                    path: "/v1/chat/completions".into(),
                    user_agent: (i % 3 == 1).then(|| "ua".into()),
                    event_id: (i % 3 == 1).then(|| format!("e{i}")),
                    request_body: None,
                    response_body: None,
                    routing: (i % 3 == 1).then(|| "{\"step\":0}".to_string()),
                }));
                r
            })
            .collect();
        w.insert(&batch).unwrap();
        let conn = crate::logstore::open_for_reading(&dir.join("requests.db")).unwrap();
        let rows = query(
            &conn,
            &Filter {
                limit: MAX_LIMIT,
                ..Filter::default()
            },
        )
        .unwrap();
        assert_eq!(rows.len(), n);
        for row in rows {
            let i = (row.ts - 1_790_000_000_000) as usize;
            assert_eq!(row.id, batch[i].id.to_string());
            if i % 3 == 1 {
                assert_eq!(row.status, 502);
                assert_eq!(row.error_code.as_deref(), Some("upstream_error"));
                assert_eq!(row.event_id, Some(format!("e{i}")));
                assert_eq!(row.tokens_in, Some(i as i64));
                assert_eq!(row.cost, Some(0.5));
                assert!(row.routing.is_some() && row.cache_key.is_some() && row.key_id.is_some());
            } else {
                assert_eq!(row.status, 200);
                let nulls = (
                    &row.error_source,
                    &row.error_code,
                    &row.cache,
                    &row.cache_key,
                    &row.key_id,
                    &row.event_id,
                    &row.user_agent,
                    &row.routing,
                );
                assert_eq!(
                    nulls,
                    (&None, &None, &None, &None, &None, &None, &None, &None),
                    "row {i}"
                );
                assert_eq!((row.tokens_in, row.cost), (None, None), "row {i}");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
