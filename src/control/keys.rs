//! The admin socket's `/keys`: list, create and revoke gateway keys at run
//! time. A created key is stored (hashed) in the data directory's database
//! first, then published to every shard; a revoked one is marked in the
//! database, then unpublished. Answers are JSON; no secret is ever shown
//! except the one a create made, once.

use crate::auth::{self, KeyEntry, KeyError, Origin, Registry};
use crate::config::auth::{MAX_KEY_ID, parse_sha256, pattern_problem, valid_key_id};
use crate::error::push_json_string;
use crate::logstore::keys::{KeyStore, encode_metadata, encode_models};
use simd_json::prelude::*;
use std::path::Path;
use std::sync::Arc;

/// `GET /keys`: every key, without hashes.
pub fn list(keys: &Registry) -> String {
    let mut out = String::from("{\"keys\":[");
    for (i, (k, in_force)) in keys.list().iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"id\":");
        push_json_string(&mut out, &k.id);
        out.push_str(",\"origin\":\"");
        out.push_str(k.origin.as_str());
        out.push_str(&format!("\",\"in_force\":{in_force},\"models\":"));
        out.push_str(&encode_models(&k.models));
        out.push_str(",\"metadata\":");
        out.push_str(&encode_metadata(&k.metadata));
        out.push_str(&format!(",\"created_ms\":{}}}", k.created_ms));
    }
    out.push_str("]}\n");
    out
}

fn error(status: u16, message: &str) -> (u16, String) {
    let mut out = String::from("{\"error\":");
    push_json_string(&mut out, message);
    out.push_str("}\n");
    (status, out)
}

fn key_error(e: &KeyError) -> (u16, String) {
    let status = match e {
        KeyError::NotFound(_) => 404,
        KeyError::Exists(_)
        | KeyError::InConfig(_)
        | KeyError::ConfigId(_)
        | KeyError::SameSecret(_) => 409,
    };
    error(status, &e.to_string())
}

/// `POST /keys` with `{"id": "...", "models": [...], "metadata": {...}}` and
/// optionally `"secret_sha256"` (the caller keeps the secret; otherwise one
/// is made and returned once). 201 on success.
pub fn create(keys: &Registry, data_dir: &Path, body: &[u8]) -> (u16, String) {
    let entry = match parse(body) {
        Ok(e) => e,
        Err(why) => return error(400, &why),
    };
    let (entry, secret) = entry;
    if let Err(e) = keys.can_add(&entry) {
        return key_error(&e);
    }
    let store = match KeyStore::open(data_dir) {
        Ok(s) => s,
        Err(e) => return error(500, &format!("the key was not stored: {e}")),
    };
    // A revoked secret stays revoked (a provisioning script run again after
    // a leak must not put it back in force).
    match store.revoked_as(&entry.hash) {
        Ok(Some(was)) => {
            return error(
                409,
                &format!(
                    "this secret was revoked (it was key `{was}`); a revoked secret is never put back in force: make a new one"
                ),
            );
        }
        Ok(None) => {}
        Err(e) => return error(500, &format!("the key was not stored: {e}")),
    }
    if let Err(e) = store.insert(&entry) {
        return error(500, &format!("the key was not stored: {e}"));
    }
    if let Err(e) = keys.add(entry.clone()) {
        return key_error(&e);
    }
    let mut out = String::from("{\"id\":");
    push_json_string(&mut out, &entry.id);
    if let Some(s) = secret {
        out.push_str(",\"secret\":");
        push_json_string(&mut out, &s);
    }
    out.push_str(",\"secret_sha256\":\"");
    out.push_str(&auth::hex(&entry.hash));
    out.push_str("\"}\n");
    (201, out)
}

/// The entry a create body describes, and the secret made for it (if the
/// body brought no hash).
fn parse(body: &[u8]) -> Result<(KeyEntry, Option<String>), String> {
    // A field given twice would be read as either, depending on the reader.
    if let Err(crate::cache::key::NoKey::DuplicateKey) =
        crate::cache::key::canonical(body, &mut Vec::new())
    {
        return Err("a field is given twice (at any depth); give each once".into());
    }
    let mut bytes = body.to_vec();
    let v = simd_json::to_owned_value(&mut bytes)
        .map_err(|_| "the body must be a JSON object like {\"id\":\"alice\"}".to_string())?;
    let o = v
        .as_object()
        .ok_or("the body must be a JSON object like {\"id\":\"alice\"}")?;
    for k in o.keys() {
        if !matches!(k.as_str(), "id" | "models" | "metadata" | "secret_sha256") {
            return Err(format!(
                "unknown field `{k}`; use id, models, metadata, secret_sha256"
            ));
        }
    }
    let id = o
        .get("id")
        .and_then(|v| v.as_str())
        .ok_or("`id` is required: a string")?;
    if !valid_key_id(id) {
        return Err(format!(
            "id: `{id}` is not a key id; use 1 to {MAX_KEY_ID} of A-Z a-z 0-9 _ - ."
        ));
    }
    let mut models = Vec::new();
    if let Some(m) = o.get("models") {
        let a = m.as_array().ok_or("models: expected an array of strings")?;
        for (i, p) in a.iter().enumerate() {
            let p = p
                .as_str()
                .ok_or_else(|| format!("models[{i}]: expected a string"))?;
            if let Some(why) = pattern_problem(p) {
                return Err(format!("models[{i}]: {why}"));
            }
            models.push(p.to_string());
        }
    }
    let mut metadata = Vec::new();
    if let Some(m) = o.get("metadata") {
        let m = m
            .as_object()
            .ok_or("metadata: expected an object of strings")?;
        for (k, v) in m.iter() {
            // As `[keys.<id>] metadata` in the config takes them: an
            // integer or a boolean is kept as its text.
            let text = if let Some(s) = v.as_str() {
                s.to_string()
            } else if let Some(b) = v.as_bool() {
                b.to_string()
            } else if let Some(i) = v.as_i64() {
                i.to_string()
            } else if let Some(u) = v.as_u64() {
                u.to_string()
            } else {
                return Err(format!(
                    "metadata.{k}: expected a string, an integer or a boolean{}",
                    if v.as_f64().is_some() {
                        " (write a fraction as text, e.g. \"1.5\")"
                    } else {
                        ""
                    }
                ));
            };
            metadata.push((k.to_string(), text));
        }
        if let Some(why) = crate::record::key_metadata_problem(&metadata) {
            return Err(format!("metadata: {why}"));
        }
    }
    let (hash, secret) = match o.get("secret_sha256") {
        Some(h) => {
            let h = h
                .as_str()
                .and_then(parse_sha256)
                .ok_or("secret_sha256: expected 64 hex digits")?;
            (h, None)
        }
        None => {
            let s = auth::new_secret()?;
            (auth::hash_secret(s.as_bytes()), Some(s))
        }
    };
    Ok((
        KeyEntry {
            id: Arc::from(id),
            hash,
            models,
            metadata,
            origin: Origin::Admin,
            created_ms: crate::reqid::now_unix_ms(),
        },
        secret,
    ))
}

/// `DELETE /keys/ID`: the key stops working on every shard at its next request.
pub fn revoke(keys: &Registry, data_dir: &Path, id: &str) -> (u16, String) {
    if let Err(e) = keys.can_revoke(id) {
        return key_error(&e);
    }
    let stored = KeyStore::open(data_dir).and_then(|s| s.revoke(id, crate::reqid::now_unix_ms()));
    if let Err(e) = stored {
        return error(500, &format!("the key was not revoked: {e}"));
    }
    if let Err(e) = keys.revoke(id) {
        return key_error(&e);
    }
    let mut out = String::from("{\"revoked\":");
    push_json_string(&mut out, id);
    out.push_str("}\n");
    (200, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_given_twice_is_refused() {
        for body in [
            &br#"{"id":"a","id":"b"}"#[..],
            br#"{"id":"a","metadata":{"team":"x","team":"y"}}"#,
        ] {
            let e = parse(body).unwrap_err();
            assert!(e.contains("twice"), "{e}");
        }
        assert!(parse(br#"{"id":"a","metadata":{"team":"x"}}"#).is_ok());
        // Log columns and metric labels: no control characters, as many
        // entries as a request may send (found by a review).
        for bad in [
            &br#"{"id":"a","metadata":{"te\nam":"x"}}"#[..],
            br#"{"id":"a","metadata":{"team":"x\u0000"}}"#,
            br#"{"id":"a","metadata":{"":"x"}}"#,
            br#"{"id":"a","metadata":{"a":"1","b":"1","c":"1","d":"1","e":"1","f":"1"}}"#,
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.starts_with("metadata: "), "{e}");
        }
    }

    #[test]
    fn create_bodies_are_checked_field_by_field() {
        let e = |b: &str| parse(b.as_bytes()).err().unwrap();
        assert!(e("[]").contains("JSON object"));
        assert!(e("{}").contains("`id` is required"));
        assert!(e("{\"id\":\"a b\"}").contains("not a key id"));
        assert!(e("{\"id\":\"a\",\"models\":[\"gpt\"]}").starts_with("models[0]"));
        assert!(e("{\"id\":\"a\",\"secret\":\"x\"}").contains("unknown field"));
        assert!(e("{\"id\":\"a\",\"secret_sha256\":\"ab\"}").contains("64 hex"));
        let (k, s) =
            parse(b"{\"id\":\"a\",\"models\":[\"openai/*\"],\"metadata\":{\"team\":\"x\"}}")
                .unwrap();
        let s = s.unwrap();
        assert_eq!(k.hash, auth::hash_secret(s.as_bytes()));
        assert_eq!(k.models, ["openai/*"]);
        assert_eq!(k.metadata, [("team".to_string(), "x".to_string())]);
        // Integers and booleans as the config file takes them, as their text.
        let (k, _) =
            parse(b"{\"id\":\"a\",\"metadata\":{\"tier\":2,\"beta\":true,\"n\":-1}}").unwrap();
        let text = |v: &str| v.to_string();
        let mut metadata = k.metadata.clone();
        metadata.sort();
        assert_eq!(
            metadata,
            [
                (text("beta"), text("true")),
                (text("n"), text("-1")),
                (text("tier"), text("2"))
            ]
        );
        for bad in ["1.5", "null", "[1]", "{}"] {
            let body = format!("{{\"id\":\"a\",\"metadata\":{{\"x\":{bad}}}}}");
            assert!(
                e(&body).starts_with("metadata.x: expected a string, an integer"),
                "{bad}"
            );
        }
    }
}
