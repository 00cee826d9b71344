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
//! goes through the `ts` index and `id` needs none of its own), `meta` (one
//! row per metadata entry, clustered by key, value and time for `--meta K=V`;
//! rows of deleted requests are swept by time, and until then a join with
//! `requests` hides them), `payloads` (bodies, when `logs.payloads` is on).
//!
//! Every index costs the log thread time on every row (measured: the
//! thread's cost per row is what the request log costs a busy shard), so
//! there is one, on time. `seq` is AUTOINCREMENT: a number is never reused,
//! even after retention empties the table, so a metadata row swept late or a
//! `--follow` position can never point at another request.

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
    metadata TEXT
);
CREATE INDEX IF NOT EXISTS requests_ts ON requests(ts);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    ts INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (key, value, ts, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS payloads (
    seq INTEGER PRIMARY KEY,
    request BLOB,
    request_truncated INTEGER NOT NULL DEFAULT 0,
    response BLOB,
    response_truncated INTEGER NOT NULL DEFAULT 0
);
";

/// Opens (creating if needed) the store for writing: WAL, `synchronous =
/// NORMAL` (a commit survives a process crash; an OS crash may lose the last
/// commits), the schema in place.
pub fn open_for_writing(path: &Path) -> Result<Connection, String> {
    let fail = |e: rusqlite::Error| format!("request log {}: {e}", path.display());
    let conn = Connection::open(path).map_err(fail)?;
    conn.busy_timeout(BUSY_WAIT).map_err(fail)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(fail)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(fail)?;
    conn.pragma_update(None, "cache_size", -CACHE_KIB)
        .map_err(fail)?;
    conn.execute_batch(SCHEMA).map_err(fail)?;
    migrate(&conn).map_err(fail)?;
    Ok(conn)
}

/// Columns added since the first release of the schema: a store made by an
/// older aigw gains them (empty for its old rows).
const ADDED_COLUMNS: &[(&str, &str)] = &[
    ("cache_key", "TEXT"),
    ("cost_estimated", "INTEGER"),
    ("context_share", "REAL"),
    ("routing", "TEXT"),
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
    Ok(())
}

/// Opens the store read-only (it must exist).
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
    Ok(conn)
}
