//! Requests the request log keeps no row of (sampled out by `logs.sample`,
//! dropped because the log's queue was full, or `aigw-collect-log: false`), counted per second and per
//! what limits, budgets and `aigw usage` tell apart: gateway key, provider,
//! model, metadata, and whether the gateway refused the request or the cache
//! answered it. The log stores these tallies beside its rows, so a restart
//! rebuilds spend and limit windows from them too, and `aigw usage` counts
//! them.
//!
//! A shard folds each such record into its own [`Tally`] (no lock, no
//! message) and moves the tally into the shared [`TallyInbox`] every
//! `logs.flush_interval` (and whenever the admin socket asks the shards for
//! fresh stats, as `/usage` does); the log thread takes the inbox at each
//! commit. Both are bounded: a record that finds its shard's tally full and
//! the inbox full is counted without the metadata fields no key, limit or
//! budget names ([`Tally::add_coarse`]), in room kept for that; one that
//! finds that room full too is lost, and counted.

use crate::error::ErrorSource;
use crate::fasthash::SeededXxh3;
use crate::record::{CacheStatus, Metadata, RequestRecord};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

/// Most entries a shard's tally holds before it must move them on.
pub const TALLY_ENTRIES: usize = 1 << 14;
/// Entries kept beyond [`TALLY_ENTRIES`] for requests counted without the
/// metadata no key, limit or budget names ([`Tally::add_coarse`]).
pub const COARSE_ENTRIES: usize = 1 << 10;
/// Most entries the inbox holds for the log thread.
pub const INBOX_ENTRIES: usize = 1 << 16;

/// What one tally entry counts apart.
#[derive(Clone, Debug, PartialEq, Eq)]
struct TallyKey {
    /// Unix seconds of the requests' arrival.
    second: u64,
    key_id: Option<Arc<str>>,
    provider: Option<Arc<str>>,
    model: Option<String>,
    metadata: Option<Metadata>,
    refused: bool,
    cached: bool,
}

impl Hash for TallyKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.second.hash(state);
        self.key_id.as_deref().hash(state);
        self.provider.as_deref().hash(state);
        self.model.hash(state);
        if let Some(m) = &self.metadata {
            for (k, v) in m.0.iter() {
                k.hash(state);
                // The kind too: the string "true" is not the boolean.
                std::mem::discriminant(v).hash(state);
                v.as_text().hash(state);
            }
        }
        (self.refused, self.cached).hash(state);
    }
}

impl TallyKey {
    /// The entry as the log stores it.
    fn into_row(self, sums: Sums) -> TallyRow {
        TallyRow {
            ts_ms: sums.ts_ms,
            key_id: self.key_id,
            provider: self.provider,
            model: self.model,
            metadata: self.metadata.map(|m| {
                let mut s = String::new();
                m.write_json(&mut s);
                s
            }),
            refused: self.refused,
            cached: self.cached,
            requests: sums.requests,
            tokens_in: sums.tokens_in,
            tokens_out: sums.tokens_out,
            counted_in: sums.counted_in,
            counted_out: sums.counted_out,
            cost: sums.cost,
            unknown_cost: sums.unknown_cost,
        }
    }
}

/// What one entry sums (see [`TallyRow`]).
#[derive(Clone, Copy, Debug, Default)]
struct Sums {
    ts_ms: u64,
    requests: u64,
    tokens_in: u64,
    tokens_out: u64,
    counted_in: u64,
    counted_out: u64,
    cost: f64,
    unknown_cost: u64,
}

/// One entry: requests of one second with the same dimensions, summed.
#[derive(Clone, Debug, PartialEq)]
pub struct TallyRow {
    /// The latest arrival among them (Unix ms).
    pub ts_ms: u64,
    pub key_id: Option<Arc<str>>,
    pub provider: Option<Arc<str>>,
    pub model: Option<String>,
    /// The metadata object as JSON, as the log's rows hold it.
    pub metadata: Option<String>,
    /// The gateway refused them before any provider (client errors).
    pub refused: bool,
    /// The cache answered them.
    pub cached: bool,
    pub requests: u64,
    /// Tokens as the providers reported them.
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// Tokens as the rate limits counted them (see `RequestRecord::counted`).
    pub counted_in: u64,
    pub counted_out: u64,
    /// USD of those whose cost is known.
    pub cost: f64,
    /// Those sent to a provider whose cost is unknown (no price).
    pub unknown_cost: u64,
}

/// A shard's tally since it last moved it on.
pub struct Tally {
    entries: HashMap<TallyKey, Sums, SeededXxh3>,
}

impl Tally {
    /// `seed` keys the table's hash (metadata is text a client chose).
    pub fn new(seed: u64) -> Tally {
        Tally {
            entries: HashMap::with_hasher(SeededXxh3(seed)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Requests counted in it.
    pub fn requests(&self) -> u64 {
        self.entries.values().map(|r| r.requests).sum()
    }

    /// Counts `rec`; false when it needs an entry of its own and the tally
    /// holds [`TALLY_ENTRIES`] already (move it on, then try again).
    pub fn add(&mut self, rec: &RequestRecord) -> bool {
        self.add_as(rec, rec.metadata.clone(), TALLY_ENTRIES)
    }

    /// Counts `rec` with only the metadata fields `keep` names, for when
    /// neither this tally nor the log's inbox has room for an entry of its
    /// own: metadata that differs from request to request (an id), at a rate
    /// the log cannot write, would take an entry per request. Its tokens and
    /// cost still count by key, provider, model and the fields limits and
    /// budgets scope by (what a restart rebuilds); `aigw usage` shows the
    /// other fields as absent for it. Uses the [`COARSE_ENTRIES`] kept for
    /// such entries; false when those are taken too.
    pub fn add_coarse(&mut self, rec: &RequestRecord, keep: impl Fn(&str) -> bool) -> bool {
        let metadata = rec.metadata.as_ref().and_then(|m| {
            let kept: Vec<_> = m.0.iter().filter(|(k, _)| keep(k)).cloned().collect();
            (!kept.is_empty()).then(|| Metadata::from(kept))
        });
        self.add_as(rec, metadata, TALLY_ENTRIES + COARSE_ENTRIES)
    }

    /// Counts `rec` under `metadata`, if its entry exists or fewer than
    /// `most` do.
    fn add_as(&mut self, rec: &RequestRecord, metadata: Option<Metadata>, most: usize) -> bool {
        let ts_ms = rec.id.unix_ms();
        let key = TallyKey {
            second: ts_ms / 1000,
            key_id: rec.key_id.clone(),
            provider: rec.provider.clone(),
            model: rec.model.clone(),
            metadata,
            refused: rec.error_source == Some(ErrorSource::Client),
            cached: matches!(rec.cache, Some(CacheStatus::Hit | CacheStatus::Coalesced)),
        };
        let full = self.entries.len() >= most;
        let row = match self.entries.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(_) if full => return false,
            std::collections::hash_map::Entry::Vacant(e) => e.insert(Sums::default()),
        };
        row.ts_ms = row.ts_ms.max(ts_ms);
        row.requests += 1;
        let (shown_in, shown_out) = rec.shown_tokens();
        row.tokens_in += shown_in;
        row.tokens_out += shown_out;
        let (counted_in, counted_out) = rec.counted_tokens();
        row.counted_in += counted_in;
        row.counted_out += counted_out;
        match rec.cost {
            Some(c) => row.cost += c,
            None if rec.provider.is_some() => row.unknown_cost += 1,
            None => {}
        }
        true
    }
}

/// Tally entries waiting for the log thread, from every shard.
#[derive(Default)]
pub struct TallyInbox {
    rows: Mutex<Vec<TallyRow>>,
}

impl TallyInbox {
    /// Moves every entry of `tally` in, if they all fit under
    /// [`INBOX_ENTRIES`]; false (and `tally` untouched) if not.
    pub fn put(&self, tally: &mut Tally) -> bool {
        if tally.is_empty() {
            return true;
        }
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        if rows.len() + tally.len() > INBOX_ENTRIES {
            return false;
        }
        rows.extend(tally.entries.drain().map(|(k, sums)| k.into_row(sums)));
        true
    }

    /// Everything waiting.
    pub fn take(&self) -> Vec<TallyRow> {
        std::mem::take(&mut *self.rows.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::MetaValue;
    use crate::reqid::IdGen;
    use std::time::Instant;

    fn rec(ids: &mut IdGen, ms: u64, key: &str, meta: Option<Metadata>) -> RequestRecord {
        let mut r = RequestRecord::new(ids.id(ms), 0, Instant::now());
        r.status = 200;
        r.provider = Some("openai".into());
        r.model = Some("gpt-4o-mini".into());
        r.key_id = Some(key.into());
        r.usage.input_tokens = Some(10);
        r.usage.output_tokens = Some(5);
        r.cost = Some(0.25);
        r.metadata = meta;
        r
    }

    fn meta(pairs: &[(&str, MetaValue)]) -> Metadata {
        Metadata::from(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn requests_of_one_second_and_the_same_dimensions_share_an_entry() {
        let mut ids = IdGen::new(0);
        let mut t = Tally::new(7);
        let user = |u: &str| Some(meta(&[("user", MetaValue::Str(u.into()))]));
        let base = 1_790_000_000_000;
        for ms in [base + 1, base + 900, base + 400] {
            assert!(t.add(&rec(&mut ids, ms, "a", user("u1"))));
        }
        // Another second, key, user, or kind of value: an entry of its own.
        assert!(t.add(&rec(&mut ids, base + 1000, "a", user("u1"))));
        assert!(t.add(&rec(&mut ids, base + 5, "b", user("u1"))));
        assert!(t.add(&rec(&mut ids, base + 5, "a", user("u2"))));
        assert!(t.add(&rec(
            &mut ids,
            base + 5,
            "a",
            Some(meta(&[("user", MetaValue::Bool(true))]))
        )));
        assert!(t.add(&rec(
            &mut ids,
            base + 5,
            "a",
            Some(meta(&[("user", MetaValue::Str("true".into()))]))
        )));
        let mut refused = rec(&mut ids, base + 5, "a", user("u1"));
        refused.error_source = Some(ErrorSource::Client);
        refused.cost = None;
        refused.provider = None;
        assert!(t.add(&refused));
        let mut unpriced = rec(&mut ids, base + 6, "a", user("u1"));
        unpriced.cost = None;
        assert!(t.add(&unpriced));
        assert_eq!(t.len(), 7);

        let inbox = TallyInbox::default();
        assert!(inbox.put(&mut t));
        assert!(t.is_empty());
        let rows = inbox.take();
        assert!(inbox.take().is_empty());
        let first = rows
            .iter()
            .find(|r| {
                r.ts_ms / 1000 == base / 1000
                    && !r.refused
                    && r.key_id.as_deref() == Some("a")
                    && r.metadata.as_deref() == Some(r#"{"user":"u1"}"#)
            })
            .unwrap();
        assert_eq!(
            (
                first.requests,
                first.tokens_in,
                first.tokens_out,
                first.ts_ms
            ),
            (4, 40, 20, base + 900)
        );
        assert_eq!((first.cost, first.unknown_cost), (0.75, 1));
        let refused = rows.iter().find(|r| r.refused).unwrap();
        assert_eq!((refused.requests, refused.unknown_cost), (1, 0));
        assert_eq!(rows.iter().map(|r| r.requests).sum::<u64>(), 10);
    }

    #[test]
    fn a_full_tally_refuses_new_entries_and_a_full_inbox_leaves_it_whole() {
        let mut ids = IdGen::new(0);
        let mut t = Tally::new(1);
        let base = 1_790_000_000_000;
        for i in 0..TALLY_ENTRIES as u64 {
            assert!(t.add(&rec(&mut ids, base + i * 1000, "a", None)));
        }
        // A new entry does not fit; one more of an existing entry does.
        assert!(!t.add(&rec(
            &mut ids,
            base + TALLY_ENTRIES as u64 * 1000,
            "a",
            None
        )));
        assert!(t.add(&rec(&mut ids, base + 1, "a", None)));
        let inbox = TallyInbox::default();
        for _ in 0..INBOX_ENTRIES / TALLY_ENTRIES {
            let mut copy = Tally::new(1);
            copy.entries = t.entries.clone();
            assert!(inbox.put(&mut copy));
        }
        assert!(!inbox.put(&mut t));
        assert_eq!(t.len(), TALLY_ENTRIES);
        assert_eq!(inbox.take().len(), INBOX_ENTRIES);
        assert!(inbox.put(&mut t));
    }
}
