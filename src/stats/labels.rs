//! Counters by label set (provider, model) for `/metrics`: requests by status
//! class, errors by source, tokens, and latency histograms with fixed buckets
//! (Prometheus histograms aggregate across instances; HdrHistograms, kept for
//! `/stats` percentiles, do not).
//!
//! Label values are bounded: each provider tracks at most
//! [`MAX_MODELS_PER_PROVIDER`] model names; the rest fold into `other`, so a
//! client sending random model names cannot grow memory or series. Requests
//! that reached no provider are labelled `none`.

use crate::error::ErrorSource;
use crate::fasthash::FastMap;
use crate::record::RequestRecord;
use std::sync::Arc;
use std::time::Duration;

/// Distinct model labels per provider; further models count as `other`.
pub const MAX_MODELS_PER_PROVIDER: usize = 32;
/// The label of models beyond the limit.
pub const OTHER: &str = "other";
/// The provider (and model) label of requests that reached no provider.
pub const NONE: &str = "none";

/// Upper bounds of the latency buckets, in microseconds (exported in seconds);
/// a last, implicit bucket is `+Inf`.
pub const BUCKETS_US: [u64; 16] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
];

/// A fixed-bucket histogram: counts per bucket (not cumulative) and the sum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Buckets {
    pub counts: [u64; BUCKETS_US.len() + 1],
    pub sum_us: u64,
}

impl Buckets {
    pub fn record(&mut self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        let i = BUCKETS_US.partition_point(|b| *b < us);
        self.counts[i] += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }

    pub fn add(&mut self, o: &Buckets) {
        for (a, b) in self.counts.iter_mut().zip(o.counts.iter()) {
            *a += b;
        }
        self.sum_us = self.sum_us.saturating_add(o.sum_us);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// An estimate of quantile `q` (0..=1), in microseconds: the bucket that
    /// holds it, interpolated linearly inside. `None` when empty.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).max(1);
        let mut below = 0;
        for (i, c) in self.counts.iter().enumerate() {
            if *c > 0 && below + c >= rank {
                let lo = if i == 0 { 0 } else { BUCKETS_US[i - 1] };
                let hi = BUCKETS_US.get(i).copied().unwrap_or(lo * 2);
                let within = (rank - below) as f64 / *c as f64;
                return Some(lo + ((hi - lo) as f64 * within) as u64);
            }
            below += c;
        }
        None
    }
}

/// What is counted for one (provider, model).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LabelCounters {
    /// By status class: 1xx..5xx (index 0..4).
    pub requests: [u64; 5],
    /// By error source: client, gateway, provider.
    pub errors: [u64; 3],
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    /// By cache status ([`crate::record::CacheStatus::ALL`] order).
    pub cache: [u64; 5],
    /// Tokens answers from the cache would have cost (not counted above).
    pub saved_input_tokens: u64,
    pub saved_output_tokens: u64,
    /// Spend, in pico-dollars (requests whose cost is known; a cost is
    /// rounded to one, so the sum is the log's).
    pub cost_picos: u128,
    /// Requests whose cost is unknown (no price for their model).
    pub cost_unknown: u64,
    /// Requests charged an estimate (cut before their usage).
    pub cost_estimated: u64,
    /// Tries of this provider and model that failed and were followed by
    /// another (retried or fallen back from): not in `requests`.
    pub failed_tries: u64,
    pub duration: Buckets,
    pub ttft: Buckets,
}

/// A request's cost in pico-dollars (costs are rounded to one).
fn picos(usd: f64) -> u128 {
    u128::from(crate::num::round_u64(usd * 1e12))
}

/// Pico-dollars as US dollars.
pub fn usd(picos: u128) -> f64 {
    picos as f64 / 1e12
}

impl LabelCounters {
    fn record(&mut self, r: &RequestRecord) {
        let class = (r.status / 100).clamp(1, 5) as usize - 1;
        self.requests[class] += 1;
        if let Some(s) = r.error_source {
            self.errors[source_index(s)] += 1;
        }
        let (input, output) = match r.cache {
            Some(c) if c.served() => (&mut self.saved_input_tokens, &mut self.saved_output_tokens),
            _ => (&mut self.input_tokens, &mut self.output_tokens),
        };
        let (used_in, used_out) = r.shown_tokens();
        *input = input.saturating_add(used_in);
        *output = output.saturating_add(used_out);
        if let Some(c) = r.cache {
            self.cache[c.index()] += 1;
        }
        self.cached_tokens = self
            .cached_tokens
            .saturating_add(r.usage.cached_tokens.unwrap_or(0));
        match r.cost {
            Some(usd) => {
                self.cost_picos = self.cost_picos.saturating_add(picos(usd));
            }
            None if r.provider.is_some() => self.cost_unknown += 1,
            None => {}
        }
        self.cost_estimated += u64::from(r.cost_estimated);
        self.duration.record(r.total);
        if let Some(t) = r.ttft {
            self.ttft.record(t);
        }
    }

    pub fn add(&mut self, o: &LabelCounters) {
        for (a, b) in self.requests.iter_mut().zip(o.requests) {
            *a += b;
        }
        for (a, b) in self.errors.iter_mut().zip(o.errors) {
            *a += b;
        }
        self.input_tokens = self.input_tokens.saturating_add(o.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(o.output_tokens);
        self.cached_tokens = self.cached_tokens.saturating_add(o.cached_tokens);
        for (a, b) in self.cache.iter_mut().zip(o.cache) {
            *a += b;
        }
        self.saved_input_tokens = self.saved_input_tokens.saturating_add(o.saved_input_tokens);
        self.saved_output_tokens = self
            .saved_output_tokens
            .saturating_add(o.saved_output_tokens);
        self.cost_picos = self.cost_picos.saturating_add(o.cost_picos);
        self.cost_unknown += o.cost_unknown;
        self.cost_estimated += o.cost_estimated;
        self.failed_tries += o.failed_tries;
        self.duration.add(&o.duration);
        self.ttft.add(&o.ttft);
    }

    pub fn total_requests(&self) -> u64 {
        self.requests.iter().sum()
    }
}

/// Index of an error source in [`LabelCounters::errors`].
pub fn source_index(s: ErrorSource) -> usize {
    match s {
        ErrorSource::Client => 0,
        ErrorSource::Gateway => 1,
        ErrorSource::Provider => 2,
    }
}

/// The label values of the error sources, in [`source_index`] order.
pub const SOURCES: [&str; 3] = ["client", "gateway", "provider"];

#[derive(Default)]
struct ProviderModels {
    models: FastMap<Box<str>, LabelCounters>,
    other: LabelCounters,
}

/// A shard's counters by (provider, model), bounded.
#[derive(Default)]
pub struct ByLabel {
    providers: FastMap<Arc<str>, ProviderModels>,
    none: LabelCounters,
}

impl ByLabel {
    pub fn record(&mut self, r: &RequestRecord) {
        for (p, model) in &r.failed_tries {
            self.slot(p, model.as_deref()).failed_tries += 1;
        }
        let Some(p) = &r.provider else {
            self.none.record(r);
            return;
        };
        let entry = match self.providers.get_mut(p) {
            Some(e) => e,
            None => self.providers.entry(p.clone()).or_default(),
        };
        let model = r.model.as_deref().unwrap_or(NONE);
        let counters = if let Some(c) = entry.models.get_mut(model) {
            c
        } else if entry.models.len() < MAX_MODELS_PER_PROVIDER && model != OTHER {
            entry.models.entry(Box::from(model)).or_default()
        } else {
            &mut entry.other
        };
        counters.record(r);
    }

    /// The counters of `provider`'s `model` (its provider's `other` past
    /// the models tracked), for the rare count outside [`ByLabel::record`]'s
    /// own (two look-ups where that one makes one).
    #[cold]
    fn slot(&mut self, p: &Arc<str>, model: Option<&str>) -> &mut LabelCounters {
        let entry = self.providers.entry(p.clone()).or_default();
        let model = model.unwrap_or(NONE);
        if entry.models.contains_key(model) {
            entry.models.get_mut(model).expect("just found")
        } else if entry.models.len() < MAX_MODELS_PER_PROVIDER && model != OTHER {
            entry.models.entry(Box::from(model)).or_default()
        } else {
            &mut entry.other
        }
    }

    /// Takes everything counted, as (provider, model, counters), leaving the
    /// tracked names in place (a model keeps its label slot).
    pub fn take(&mut self) -> Vec<(String, String, LabelCounters)> {
        let mut out = Vec::new();
        let empty = LabelCounters::default();
        for (p, e) in &mut self.providers {
            for (m, c) in &mut e.models {
                if *c != empty {
                    out.push((p.to_string(), m.to_string(), std::mem::take(c)));
                }
            }
            if e.other != empty {
                out.push((p.to_string(), OTHER.into(), std::mem::take(&mut e.other)));
            }
        }
        if self.none != empty {
            out.push((NONE.into(), NONE.into(), std::mem::take(&mut self.none)));
        }
        out
    }
}

/// The merged view across shards, bounded the same way.
#[derive(Default)]
pub struct MergedLabels {
    pub by: std::collections::BTreeMap<(String, String), LabelCounters>,
}

impl MergedLabels {
    /// Adds `c` under (provider, model), or under (provider, `other`) once the
    /// provider has its share of model labels; returns the key used.
    pub fn add(&mut self, provider: String, model: String, c: &LabelCounters) -> (String, String) {
        let tracked = self
            .by
            .keys()
            .filter(|(p, m)| *p == provider && m != OTHER)
            .count();
        let key = if self.by.contains_key(&(provider.clone(), model.clone()))
            || (tracked < MAX_MODELS_PER_PROVIDER && model != OTHER)
        {
            (provider, model)
        } else {
            (provider, OTHER.into())
        };
        self.by.entry(key.clone()).or_default().add(c);
        key
    }
}

/// Most gateway keys counted apart; further keys count as `other`.
pub const MAX_KEYS: usize = 4096;

/// What is counted for one gateway key (requests without a key are not).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyCounters {
    pub requests: u64,
    /// Answers with a 4xx or 5xx status.
    pub errors: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Spend in pico-dollars.
    pub cost_picos: u128,
}

impl KeyCounters {
    fn record(&mut self, r: &RequestRecord) {
        self.requests += 1;
        self.errors += u64::from(r.status >= 400);
        if !r.cache.is_some_and(|c| c.served()) {
            let (used_in, used_out) = r.shown_tokens();
            self.input_tokens = self.input_tokens.saturating_add(used_in);
            self.output_tokens = self.output_tokens.saturating_add(used_out);
        }
        if let Some(usd) = r.cost {
            self.cost_picos = self.cost_picos.saturating_add(picos(usd));
        }
    }

    pub fn add(&mut self, o: &KeyCounters) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.input_tokens = self.input_tokens.saturating_add(o.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(o.output_tokens);
        self.cost_picos = self.cost_picos.saturating_add(o.cost_picos);
    }
}

/// A shard's counters by gateway key id, bounded by [`MAX_KEYS`].
#[derive(Default)]
pub struct ByKey {
    keys: FastMap<Arc<str>, KeyCounters>,
    other: KeyCounters,
}

impl ByKey {
    pub fn record(&mut self, r: &RequestRecord) {
        let Some(id) = &r.key_id else { return };
        if let Some(c) = self.keys.get_mut(id) {
            c.record(r);
        } else if self.keys.len() < MAX_KEYS {
            self.keys.entry(id.clone()).or_default().record(r);
        } else {
            self.other.record(r);
        }
    }

    /// Takes everything counted, as (key id, counters).
    pub fn take(&mut self) -> Vec<(String, KeyCounters)> {
        let empty = KeyCounters::default();
        let mut out: Vec<(String, KeyCounters)> = self
            .keys
            .iter_mut()
            .filter(|(_, c)| **c != empty)
            .map(|(k, c)| (k.to_string(), std::mem::take(c)))
            .collect();
        if self.other != empty {
            out.push((OTHER.into(), std::mem::take(&mut self.other)));
        }
        out
    }
}

/// Most metadata fields counted apart; a request's entries under further
/// field names are not counted by field (its totals still are).
pub const MAX_META_FIELDS: usize = 16;
/// Most values counted apart per metadata field; further values count as
/// [`OTHER_VALUES`]. Per-value totals of every value are in `aigw usage`.
pub const MAX_META_VALUES: usize = 256;
/// The value label of the values beyond [`MAX_META_VALUES`].
pub const OTHER_VALUES: &str = "(other)";

/// One metadata field's counters: slot 0 is [`OTHER_VALUES`].
struct MetaField {
    name: Box<str>,
    /// Named by the config (a key's attribution, a limit's or budget's
    /// scope): counted whatever fields clients made up first.
    reserved: bool,
    /// Values a key's attribution sets: counted apart whatever values
    /// clients sent first (not counted against [`MAX_META_VALUES`]).
    reserved_values: usize,
    slots: Vec<(Box<str>, KeyCounters)>,
    by_value: FastMap<Box<str>, usize>,
}

impl MetaField {
    fn new(name: &str) -> MetaField {
        MetaField {
            name: name.into(),
            reserved: false,
            reserved_values: 0,
            slots: vec![(OTHER_VALUES.into(), KeyCounters::default())],
            by_value: FastMap::default(),
        }
    }

    /// The slot of `value`: its own while there is room, else [`OTHER_VALUES`]'s.
    fn slot(&mut self, value: &str) -> usize {
        if let Some(&i) = self.by_value.get(value) {
            return i;
        }
        if self.slots.len() - self.reserved_values > MAX_META_VALUES {
            return 0;
        }
        self.add_slot(value)
    }

    fn add_slot(&mut self, value: &str) -> usize {
        self.slots.push((value.into(), KeyCounters::default()));
        self.by_value.insert(value.into(), self.slots.len() - 1);
        self.slots.len() - 1
    }
}

/// A shard's counters by metadata field and value (`aigw-metadata`, with a
/// key's attribution merged in), bounded by [`MAX_META_FIELDS`] and
/// [`MAX_META_VALUES`]; the fields the config names are counted beyond the
/// bound, so clients sending made-up field names cannot push them out.
/// Requests that send the same header share one parsed
/// object (the shard's metadata memo): the slots of the object seen last are
/// remembered, so such a request costs a pointer compare and its counts.
#[derive(Default)]
pub struct ByMetadata {
    fields: Vec<MetaField>,
    /// The metadata object seen last, and its entries' (field, slot).
    last: Option<(crate::record::Metadata, Vec<(usize, usize)>)>,
}

impl ByMetadata {
    /// Counts these fields, and these values of them, whatever else clients
    /// send (called with the config's at start and on each reload; a field
    /// or value once known stays).
    pub fn reserve<'a>(&mut self, names: impl Iterator<Item = (&'a str, Option<&'a str>)>) {
        for (name, value) in names {
            let f = match self.fields.iter().position(|f| *f.name == *name) {
                Some(i) => i,
                None => {
                    self.fields.push(MetaField::new(name));
                    self.fields.len() - 1
                }
            };
            let f = &mut self.fields[f];
            f.reserved = true;
            if let Some(v) = value
                && !f.by_value.contains_key(v)
            {
                f.add_slot(v);
                f.reserved_values += 1;
            }
        }
    }

    pub fn record(&mut self, r: &RequestRecord) {
        let Some(m) = &r.metadata else { return };
        if let Some((seen, slots)) = &self.last
            && Arc::ptr_eq(&seen.0, &m.0)
        {
            for &(f, s) in slots {
                self.fields[f].slots[s].1.record(r);
            }
            return;
        }
        // The last object's list, reused.
        let mut slots = self.last.take().map(|(_, v)| v).unwrap_or_default();
        slots.clear();
        for (k, v) in m.0.iter() {
            let f = match self.fields.iter().position(|f| *f.name == **k) {
                Some(f) => f,
                None if self.fields.iter().filter(|f| !f.reserved).count() < MAX_META_FIELDS => {
                    self.fields.push(MetaField::new(k));
                    self.fields.len() - 1
                }
                None => continue,
            };
            let s = self.fields[f].slot(v.as_text());
            self.fields[f].slots[s].1.record(r);
            slots.push((f, s));
        }
        self.last = Some((m.clone(), slots));
    }

    /// Takes everything counted, as (field, value, counters); the fields and
    /// values stay known (their slots keep their places).
    pub fn take(&mut self) -> Vec<(String, String, KeyCounters)> {
        let empty = KeyCounters::default();
        let mut out = Vec::new();
        for f in &mut self.fields {
            for (value, c) in &mut f.slots {
                if *c != empty {
                    out.push((f.name.to_string(), value.to_string(), std::mem::take(c)));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reqid::RequestId;
    use std::time::Instant;

    fn rec(model: &str, status: u16, ms: u64) -> RequestRecord {
        let mut r = RequestRecord::new(RequestId::default(), 0, Instant::now());
        r.provider = Some(Arc::from("up"));
        r.model = Some(model.into());
        r.status = status;
        r.total = Duration::from_millis(ms);
        r
    }

    #[test]
    fn buckets_count_into_the_first_bound_at_or_above() {
        let mut b = Buckets::default();
        for us in [1, 500, 501, 60_000_000, 60_000_001] {
            b.record(Duration::from_micros(us));
        }
        assert_eq!(b.counts[0], 2);
        assert_eq!(b.counts[1], 1);
        assert_eq!(b.counts[15], 1);
        assert_eq!(b.counts[16], 1);
        assert_eq!(b.count(), 5);
    }

    #[test]
    fn quantiles_interpolate_inside_their_bucket() {
        let mut b = Buckets::default();
        assert_eq!(b.quantile_us(0.5), None);
        for _ in 0..100 {
            b.record(Duration::from_micros(700)); // bucket 500..1000
        }
        let p50 = b.quantile_us(0.5).unwrap();
        assert!((500..=1000).contains(&p50), "{p50}");
        b.record(Duration::from_secs(2)); // bucket 1s..2.5s
        let p999 = b.quantile_us(0.999).unwrap();
        assert!((1_000_000..=2_500_000).contains(&p999), "{p999}");
    }

    #[test]
    fn random_model_names_fold_into_other() {
        let mut l = ByLabel::default();
        for i in 0..1000 {
            l.record(&rec(&format!("m{i}"), 200, 1));
        }
        l.record(&rec("m0", 500, 1));
        let taken = l.take();
        assert_eq!(taken.len(), MAX_MODELS_PER_PROVIDER + 1);
        let other = taken.iter().find(|(_, m, _)| m == OTHER).unwrap();
        assert_eq!(
            other.2.total_requests(),
            1000 - MAX_MODELS_PER_PROVIDER as u64
        );
        let m0 = taken.iter().find(|(_, m, _)| m == "m0").unwrap();
        assert_eq!(m0.2.requests, [0, 2 - 1, 0, 0, 1]);
        let mut merged = MergedLabels::default();
        for shard in 0..3 {
            for i in 0..100 {
                let mut c = LabelCounters::default();
                c.requests[1] = 1;
                merged.add("up".into(), format!("s{shard}-{i}"), &c);
            }
        }
        assert_eq!(merged.by.len(), MAX_MODELS_PER_PROVIDER + 1);
    }

    fn with_meta(meta: &crate::record::Metadata) -> RequestRecord {
        let mut r = RequestRecord::new(
            crate::reqid::RequestId::default(),
            0,
            std::time::Instant::now(),
        );
        r.status = 200;
        r.usage.input_tokens = Some(3);
        r.metadata = Some(meta.clone());
        r
    }

    fn meta(pairs: &[(&str, &str)]) -> crate::record::Metadata {
        crate::record::Metadata::from(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), crate::record::MetaValue::Str(v.to_string())))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn fields_the_config_names_count_whatever_clients_send_first() {
        let mut by = ByMetadata::default();
        by.reserve([("team", None), ("app", Some("billing"))].into_iter());
        for i in 0..MAX_META_FIELDS + 5 {
            by.record(&with_meta(&meta(&[(&format!("made-up-{i}"), "v")])));
        }
        by.record(&with_meta(&meta(&[("team", "search"), ("late", "v")])));
        // A key's value keeps its place however many values clients send.
        for i in 0..MAX_META_VALUES + 5 {
            by.record(&with_meta(&meta(&[("app", &format!("made-up-{i}"))])));
        }
        by.record(&with_meta(&meta(&[("app", "billing")])));
        let got = by.take();
        let count = |field: &str, value: &str| {
            got.iter()
                .find(|(f, v, _)| f == field && v == value)
                .map(|(_, _, c)| c.requests)
        };
        assert_eq!(count("team", "search"), Some(1));
        assert_eq!(count("app", "billing"), Some(1));
        assert_eq!(count("app", OTHER_VALUES), Some(5));
        assert!(!got.iter().any(|(f, _, _)| f == "late"), "past the bound");
        // A reload may name a field already counted: it stays one field.
        by.reserve([("made-up-0", None), ("team", None)].into_iter());
        assert_eq!(by.fields.len(), MAX_META_FIELDS + 2);
    }

    #[test]
    fn metadata_counts_by_field_and_value_within_bounds() {
        let mut by = ByMetadata::default();
        let shared = meta(&[("user", "ann"), ("app", "x")]);
        // The same object again (the memo's path) and an equal copy count alike.
        by.record(&with_meta(&shared));
        by.record(&with_meta(&shared));
        by.record(&with_meta(&meta(&[("user", "ann"), ("app", "x")])));
        by.record(&with_meta(&meta(&[("app", "y")])));
        let mut got = by.take();
        got.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        let got: Vec<_> = got
            .iter()
            .map(|(f, v, c)| (f.as_str(), v.as_str(), c.requests, c.input_tokens))
            .collect();
        assert_eq!(
            got,
            [
                ("app", "x", 3, 9),
                ("app", "y", 1, 3),
                ("user", "ann", 3, 9)
            ]
        );
        assert!(by.take().is_empty(), "taken counts start again from zero");
        by.record(&with_meta(&shared));
        assert_eq!(by.take().len(), 2, "the memo still points at live slots");

        // Values past the bound count as one; fields past theirs not at all.
        for i in 0..MAX_META_VALUES + 10 {
            by.record(&with_meta(&meta(&[("user", &format!("u{i}"))])));
        }
        for i in 0..MAX_META_FIELDS + 3 {
            by.record(&with_meta(&meta(&[(&format!("f{i}"), "v")])));
        }
        let got = by.take();
        let users = got.iter().filter(|(f, _, _)| f == "user").count();
        // "ann" holds one of the value slots (counted before this take):
        // u0..u254 took the rest, and `(other)` counts the 11 beyond.
        assert_eq!(users, MAX_META_VALUES);
        let other = got
            .iter()
            .find(|(f, v, _)| f == "user" && v == OTHER_VALUES)
            .unwrap();
        assert_eq!(other.2.requests, 11);
        let fields: std::collections::BTreeSet<&str> =
            got.iter().map(|(f, _, _)| f.as_str()).collect();
        // `app` holds a field too, idle since the last take: f0..f13 took the rest.
        assert_eq!(fields.len(), MAX_META_FIELDS - 1);
        assert!(fields.contains("f13") && !fields.contains("f14"));
    }
}
