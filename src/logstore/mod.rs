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
//! milliseconds), `meta` (one row per metadata entry, for `--meta K=V`),
//! `payloads` (bodies, when `logs.payloads` is on).

pub mod query;
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

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS requests (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
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
CREATE INDEX IF NOT EXISTS requests_provider ON requests(provider, ts);
CREATE INDEX IF NOT EXISTS requests_model ON requests(model, ts);
CREATE INDEX IF NOT EXISTS requests_status ON requests(status, ts);
CREATE TABLE IF NOT EXISTS meta (
    seq INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS meta_kv ON meta(key, value, ts);
CREATE INDEX IF NOT EXISTS meta_seq ON meta(seq);
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
    conn.execute_batch(SCHEMA).map_err(fail)?;
    Ok(conn)
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
