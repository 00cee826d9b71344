//! The request log store: one SQLite file, `<data_dir>/requests.db`, in WAL
//! mode so `aigw logs` (and `sqlite3`) read it while the gateway writes.
//!
//! Owns the schema, opening the file for writing (the log thread) or reading
//! (the CLI, the admin socket), batched inserts with retention ([`write`]), and
//! the filters of `aigw logs` ([`query`]). Never on a request's path: shards
//! hand finished records to the log thread through a bounded channel. Imports
//! only the leaves (`record`, `reqid`).
//!
//! Tables: `requests` (one row per request; `ts` is the arrival time in Unix
//! milliseconds, also the timestamp inside the UUIDv7 `id`, so an id lookup
//! goes through the `ts` index and `id` needs none of its own; `metadata` is
//! the request's metadata object as JSON), `meta_seqs` (for `--meta K=V`: one
//! row per metadata key and value per commit, listing the `seq` of every
//! request in that commit that carried it as a JSON array, with the
//! commit's time span; indexed by key, value and time; rows of deleted
//! requests are swept by time, and until then a join with `requests` hides
//! them), `payloads` (bodies, when `logs.payloads` is on), `tallies` (the
//! requests kept no row of, sampled out or dropped: one row per second, key,
//! provider, model, metadata object, refused and cached, with their count,
//! tokens and cost; `ts` is the latest arrival among them; see
//! [`crate::tally`]).
//!
//! Every index entry costs the log thread time (measured: the thread's cost
//! per row is what the request log costs a busy shard), so `requests` has
//! one index, on time, and metadata costs an index entry per distinct value
//! per commit rather than per request. (A row per request and entry, as
//! before, cost 1.7 µs of the 4.0 µs a request with two entries took to
//! store; at full load on one CPU the log thread now spends 3.3-3.9 µs per
//! request instead of 4.7-5.0.) `seq` is
//! AUTOINCREMENT: a number is never reused, even after retention empties
//! the table, so a metadata row swept late or a `--follow` position can never
//! point at another request.
//!
//! The readers' connections have two SQL functions over the stored metadata
//! object, read as the gateway reads the header: `aigw_meta(metadata, key)`
//! (the value as text, as `--meta` compares it, or NULL) and
//! `aigw_meta_has(metadata, key, value)`.

pub mod keys;
pub mod query;
pub mod replay;
pub mod time;
pub mod write;

use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The file's name under `server.data_dir`.
pub const FILE: &str = "requests.db";

/// How long a reader waits for the writer's lock before giving up.
pub const BUSY_WAIT: Duration = Duration::from_secs(5);

/// The store's path under a data directory.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

/// The writer's page cache: index inserts land all over the metadata tree,
/// and a cache that holds its hot pages saves a read per insert.
pub const CACHE_KIB: i64 = 16 << 10;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS requests (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    route TEXT NOT NULL,
    provider TEXT,
    model TEXT,
    path TEXT,
    status INTEGER NOT NULL,
    error_source TEXT,
    error_code TEXT,
    outcome TEXT NOT NULL,
    stream INTEGER NOT NULL,
    cache TEXT,
    cache_key TEXT,
    cost_estimated INTEGER,
    context_share REAL,
    routing TEXT,
    gateway_us INTEGER NOT NULL,
    upstream_us INTEGER,
    ttft_us INTEGER,
    total_us INTEGER NOT NULL,
    tokens_in INTEGER,
    tokens_out INTEGER,
    tokens_cached INTEGER,
    cost REAL,
    bytes_in INTEGER NOT NULL,
    bytes_out INTEGER NOT NULL,
    user_agent TEXT,
    event_id TEXT,
    key_id TEXT,
    metadata TEXT,
    counted_in INTEGER,
    counted_out INTEGER
);
CREATE INDEX IF NOT EXISTS requests_ts ON requests(ts);
CREATE TABLE IF NOT EXISTS meta_seqs (
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    ts_min INTEGER NOT NULL,
    ts_max INTEGER NOT NULL,
    seqs TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS meta_seqs_kv ON meta_seqs(key, value, ts_max);
CREATE TABLE IF NOT EXISTS tallies (
    ts INTEGER NOT NULL,
    key_id TEXT,
    provider TEXT,
    model TEXT,
    metadata TEXT,
    refused INTEGER NOT NULL,
    cached INTEGER NOT NULL,
    requests INTEGER NOT NULL,
    tokens_in INTEGER NOT NULL,
    tokens_out INTEGER NOT NULL,
    counted_in INTEGER NOT NULL,
    counted_out INTEGER NOT NULL,
    cost REAL NOT NULL,
    unknown_cost INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS tallies_ts ON tallies(ts);
CREATE TABLE IF NOT EXISTS budget_amounts (
    budget INTEGER NOT NULL,
    value TEXT NOT NULL,
    window INTEGER NOT NULL,
    micros INTEGER NOT NULL,
    PRIMARY KEY (budget, value)
);
CREATE TABLE IF NOT EXISTS payloads (
    seq INTEGER PRIMARY KEY,
    request BLOB,
    request_truncated INTEGER NOT NULL DEFAULT 0,
    response BLOB,
    response_truncated INTEGER NOT NULL DEFAULT 0
);
";

/// The writer's small-allocation slots: every text bound to a row is copied
/// by SQLite, and a statement of many rows holds hundreds of them at once,
/// past SQLite's default of 40.
const LOOKASIDE_SLOT: usize = 128;
const LOOKASIDE_SLOTS: usize = 2048;

/// Opens (creating if needed) the store for writing: WAL, `synchronous =
/// NORMAL` (a commit survives a process crash; an OS crash may lose the last
/// commits), the schema in place.
pub fn open_for_writing(path: &Path) -> Result<Connection, String> {
    let fail = |e: rusqlite::Error| format!("request log {}: {e}", path.display());
    crate::private::prepare_store(path)
        .map_err(|e| format!("request log {}: {e}", path.display()))?;
    let conn = Connection::open(path).map_err(fail)?;
    conn.busy_timeout(BUSY_WAIT).map_err(fail)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(fail)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(fail)?;
    conn.pragma_update(None, "cache_size", -CACHE_KIB)
        .map_err(fail)?;
    crate::sys::sqlite_lookaside(&conn, LOOKASIDE_SLOT, LOOKASIDE_SLOTS).map_err(|rc| {
        format!(
            "request log {}: lookaside: SQLite code {rc}",
            path.display()
        )
    })?;
    conn.execute_batch(SCHEMA).map_err(fail)?;
    migrate(&conn).map_err(fail)?;
    add_functions(&conn).map_err(fail)?;
    Ok(conn)
}

/// Columns added since the first release of the schema: a store made by an
/// older aigw gains them (empty for its old rows).
pub(crate) const ADDED_COLUMNS: &[(&str, &str)] = &[
    ("cache_key", "TEXT"),
    ("cost_estimated", "INTEGER"),
    ("context_share", "REAL"),
    ("routing", "TEXT"),
    ("counted_in", "INTEGER"),
    ("counted_out", "INTEGER"),
];

fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let mut have = Vec::new();
    {
        let mut stmt = conn.prepare("SELECT name FROM pragma_table_info('requests')")?;
        let names = stmt.query_map([], |r| r.get::<_, String>(0))?;
        for n in names {
            have.push(n?);
        }
    }
    for (name, kind) in ADDED_COLUMNS {
        if !have.iter().any(|h| h == name) {
            conn.execute_batch(&format!("ALTER TABLE requests ADD COLUMN {name} {kind}"))?;
        }
    }
    // Before `meta_seqs`, a row per request and metadata entry: gathered
    // into one row per key, value and minute.
    let old_meta: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
        [],
        |r| r.get(0),
    )?;
    if old_meta > 0 {
        conn.execute_batch(
            "BEGIN;
             INSERT INTO meta_seqs (key, value, ts_min, ts_max, seqs)
                 SELECT key, value, min(ts), max(ts), json_group_array(seq)
                 FROM meta GROUP BY key, value, ts / 60000;
             DROP TABLE meta;
             COMMIT;",
        )?;
    }
    Ok(())
}

/// `aigw_meta(metadata, key)` and `aigw_meta_has(metadata, key, value)` (see
/// the module's notes). A row whose metadata is NULL or unreadable has none.
fn add_functions(conn: &Connection) -> rusqlite::Result<()> {
    use rusqlite::functions::FunctionFlags;
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    fn value_of(ctx: &rusqlite::functions::Context<'_>) -> rusqlite::Result<Option<String>> {
        let Some(json) = ctx.get_raw(0).as_str_or_null()? else {
            return Ok(None);
        };
        let key = ctx.get_raw(1).as_str()?;
        let Ok(m) = crate::record::Metadata::parse_stored(json.as_bytes()) else {
            return Ok(None);
        };
        Ok(m.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_text().to_string()))
    }
    conn.create_scalar_function("aigw_meta", 2, flags, value_of)?;
    conn.create_scalar_function("aigw_meta_has", 3, flags, |ctx| {
        let want = ctx.get_raw(2).as_str()?;
        Ok(value_of(ctx)?.is_some_and(|v| v == want))
    })
}

/// Whether the store has `column` in `table` (a store last written by an
/// older aigw lacks what was added since; readers cannot add it).
pub fn has_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) FROM pragma_table_info(?1) WHERE name = ?2",
        [table, column],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

fn has_table(conn: &Connection, table: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [table],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

/// Opens the store read-only (it must exist and hold the log).
pub fn open_for_reading(path: &Path) -> Result<Connection, String> {
    if !path.exists() {
        return Err(format!(
            "no request log at {} (is logs.enabled on, and has the gateway served a request?)",
            path.display()
        ));
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("request log {}: {e}", path.display()))?;
    let _ = conn.busy_timeout(BUSY_WAIT);
    // The key store shares the file: it may be there with no log in it.
    if !has_table(&conn, "requests").map_err(|e| format!("request log {}: {e}", path.display()))? {
        return Err(format!(
            "no request log in {} yet (the gateway keeps one only with logs.enabled = true, and has logged no request there)",
            path.display()
        ));
    }
    add_functions(&conn).map_err(|e| format!("request log {}: {e}", path.display()))?;
    show_added_columns(&conn).map_err(|e| format!("request log {}: {e}", path.display()))?;
    Ok(conn)
}

/// A store an older aigw last wrote lacks the columns added since (the
/// gateway adds them when it next opens the store to write), and a
/// read-only reader cannot add them: it reads through a temporary view that
/// shows them as NULL, as the rows stored before they existed read anyway.
/// Temporary names come first in SQLite's name resolution, so every query
/// of `requests` reads the view; the planner still uses the table's indexes.
fn show_added_columns(conn: &Connection) -> rusqlite::Result<()> {
    let mut missing = String::new();
    for (name, _) in ADDED_COLUMNS {
        if !has_column(conn, "requests", name)? {
            missing.push_str(&format!(", NULL AS {name}"));
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    // The rowid too (a reload reads what was written after a row it read).
    conn.execute_batch(&format!(
        "CREATE TEMP VIEW requests AS SELECT rowid AS rowid, *{missing} FROM main.requests"
    ))
}

/// The amounts budgets took for their windows ([`crate::budget::InForce`]),
/// as the log thread stored them; none from a store older than the table.
pub fn budget_amounts(conn: &Connection) -> Vec<crate::budget::InForce> {
    let rows = conn
        .prepare("SELECT budget, value, window, micros FROM budget_amounts")
        .and_then(|mut stmt| {
            stmt.query_map([], |r| {
                Ok(crate::budget::InForce {
                    budget: r.get::<_, i64>(0)? as u64,
                    value: r.get(1)?,
                    window: r.get::<_, i64>(2)? as u32,
                    micros: r.get::<_, i64>(3)?.max(0) as u64,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        });
    rows.unwrap_or_default()
}
