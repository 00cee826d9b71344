//! Admin-created keys on disk: the `gateway_keys` table of the data
//! directory's database (`requests.db`, beside the request log), so they
//! survive restarts. Only the SHA-256 of a secret is stored. Used by the
//! admin thread and at start; never on a request's path.

use crate::auth::{self, KeyEntry, Origin};
use crate::error::push_json_string;
use rusqlite::{Connection, OptionalExtension, params};
use simd_json::prelude::*;
use std::path::Path;
use std::sync::Arc;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS gateway_keys (
    id TEXT PRIMARY KEY,
    secret_sha256 TEXT NOT NULL,
    models TEXT NOT NULL,
    metadata TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    revoked_ms INTEGER
);
CREATE TABLE IF NOT EXISTS revoked_secrets (
    secret_sha256 TEXT PRIMARY KEY,
    id TEXT NOT NULL,
    revoked_ms INTEGER NOT NULL
);
";

/// The table, opened (and created if needed).
pub struct KeyStore {
    conn: Connection,
}

impl KeyStore {
    pub fn open(data_dir: &Path) -> Result<KeyStore, String> {
        let path = super::path(data_dir);
        let fail = |e: rusqlite::Error| format!("key store {}: {e}", path.display());
        crate::private::prepare_store(&path)
            .map_err(|e| format!("key store {}: {e}", path.display()))?;
        let conn = Connection::open(&path).map_err(fail)?;
        conn.busy_timeout(super::BUSY_WAIT).map_err(fail)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(fail)?;
        conn.execute_batch(SCHEMA).map_err(fail)?;
        Ok(KeyStore { conn })
    }

    /// The keys in force (not revoked).
    pub fn load(&self) -> Result<Vec<KeyEntry>, String> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, secret_sha256, models, metadata, created_ms FROM gateway_keys
                 WHERE revoked_ms IS NULL ORDER BY id",
            )
            .map_err(|e| e.to_string())?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for row in rows {
            let (id, hash, models, metadata, created) = row.map_err(|e| e.to_string())?;
            let Some(hash) = crate::config::auth::parse_sha256(&hash) else {
                log::warn!("key store: key `{id}` has a malformed hash; skipped");
                continue;
            };
            out.push(KeyEntry {
                id: Arc::from(id.as_str()),
                hash,
                models: decode_models(&models),
                metadata: decode_metadata(&metadata),
                origin: Origin::Admin,
                created_ms: created.max(0) as u64,
            });
        }
        Ok(out)
    }

    /// Stores a new key (an id revoked earlier may be used again).
    pub fn insert(&self, e: &KeyEntry) -> Result<(), String> {
        let live: Option<i64> = self
            .conn
            .query_row(
                "SELECT 1 FROM gateway_keys WHERE id = ?1 AND revoked_ms IS NULL",
                params![&*e.id],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| e.to_string())?;
        if live.is_some() {
            return Err(format!("a key with id `{}` exists", e.id));
        }
        self.conn
            .execute(
                "INSERT OR REPLACE INTO gateway_keys
                 (id, secret_sha256, models, metadata, created_ms, revoked_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, NULL)",
                params![
                    &*e.id,
                    auth::hex(&e.hash),
                    encode_models(&e.models),
                    encode_metadata(&e.metadata),
                    e.created_ms as i64
                ],
            )
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Marks a key revoked; `false` if there was no live key of that id.
    /// Its secret is remembered apart (the id may be used again, by a key
    /// of another secret), so it is never put back in force.
    pub fn revoke(&self, id: &str, now_ms: u64) -> Result<bool, String> {
        let n = self
            .conn
            .execute(
                "UPDATE gateway_keys SET revoked_ms = ?2 WHERE id = ?1 AND revoked_ms IS NULL",
                params![id, now_ms as i64],
            )
            .map_err(|e| e.to_string())?;
        if n > 0 {
            self.conn
                .execute(
                    "INSERT OR IGNORE INTO revoked_secrets (secret_sha256, id, revoked_ms)
                     SELECT secret_sha256, id, revoked_ms FROM gateway_keys WHERE id = ?1",
                    params![id],
                )
                .map_err(|e| e.to_string())?;
        }
        Ok(n > 0)
    }

    /// The id of the key a revoked secret (by its SHA-256) was, if any.
    pub fn revoked_as(&self, hash: &[u8; 32]) -> Result<Option<String>, String> {
        let hex = auth::hex(hash);
        self.conn
            .query_row(
                "SELECT id FROM revoked_secrets WHERE secret_sha256 = ?1
                 UNION ALL
                 SELECT id FROM gateway_keys WHERE secret_sha256 = ?1 AND revoked_ms IS NOT NULL
                 LIMIT 1",
                params![hex],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| e.to_string())
    }
}

/// Models as a JSON array of strings.
pub fn encode_models(models: &[String]) -> String {
    let mut out = String::from("[");
    for (i, m) in models.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_string(&mut out, m);
    }
    out.push(']');
    out
}

/// Metadata as a JSON object of strings.
pub fn encode_metadata(metadata: &[(String, String)]) -> String {
    let mut out = String::from("{");
    for (i, (k, v)) in metadata.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_string(&mut out, k);
        out.push(':');
        push_json_string(&mut out, v);
    }
    out.push('}');
    out
}

fn decode_models(s: &str) -> Vec<String> {
    let v = parse(s);
    let Some(a) = v.as_ref().and_then(|v| v.as_array()) else {
        return Vec::new();
    };
    a.iter()
        .filter_map(|m| m.as_str().map(str::to_string))
        .collect()
}

fn decode_metadata(s: &str) -> Vec<(String, String)> {
    let v = parse(s);
    let Some(o) = v.as_ref().and_then(|v| v.as_object()) else {
        return Vec::new();
    };
    o.iter()
        .filter_map(|(k, v)| Some((k.to_string(), v.as_str()?.to_string())))
        .collect()
}

/// A stored JSON column (written by this module), or `None` if damaged.
fn parse(s: &str) -> Option<simd_json::OwnedValue> {
    let mut bytes = s.as_bytes().to_vec();
    simd_json::to_owned_value(&mut bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_survive_reopening_and_revoked_ones_do_not_load() {
        let dir = std::env::temp_dir().join(format!("aigw-keystore-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = KeyEntry {
            id: Arc::from("k1"),
            hash: auth::hash_secret(b"s"),
            models: vec!["openai/*".into(), "a\"b".into()],
            metadata: vec![("team".into(), "se\\arch".into())],
            origin: Origin::Admin,
            created_ms: 42,
        };
        {
            let s = KeyStore::open(&dir).unwrap();
            s.insert(&e).unwrap();
            assert!(s.insert(&e).is_err());
        }
        let s = KeyStore::open(&dir).unwrap();
        assert_eq!(s.load().unwrap(), vec![e.clone()]);
        assert!(s.revoke("k1", 50).unwrap());
        assert!(!s.revoke("k1", 51).unwrap());
        assert!(s.load().unwrap().is_empty());
        s.insert(&e).unwrap();
        assert_eq!(s.load().unwrap().len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
