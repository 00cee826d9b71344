//! The one record every finished request leaves: the single place the facts of a
//! request live. Stats count from it (and only from it); logs and billing will
//! read it later. A leaf: it imports only the error source from `error`.
//!
//! Built by the pipeline as the request proceeds, finished once in
//! `pipeline::record`, counted by the shard's stats recorder, then (when the
//! request log keeps it) moved to the log thread: the record is `Send`.

use crate::error::ErrorSource;
use crate::json;
use crate::reqid::RequestId;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How the request reached its provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    /// `/v1/chat/completions` etc. with `model: "provider/model"`.
    Unified,
    /// `/<provider>/<path>`, body untouched.
    Passthrough,
    /// `/v1/<account>/<gateway>/...`, either form.
    Cloudflare,
    /// Answered by the gateway itself (healthz, errors before routing).
    Local,
}

impl RouteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Unified => "unified",
            RouteKind::Passthrough => "passthrough",
            RouteKind::Cloudflare => "cloudflare",
            RouteKind::Local => "local",
        }
    }
}

/// What the response cache did with a request (none when the cache is off).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    /// Answered from a stored entry; no provider was asked.
    Hit,
    /// Answered from an identical request's upstream call in flight.
    Coalesced,
    /// Not found: went upstream (and its answer may be stored).
    Miss,
    /// Found past its expiry: went upstream.
    Expired,
    /// Not looked up: `skip-cache`, or a request the cache does not keep.
    Bypass,
}

impl CacheStatus {
    /// The label in `/metrics`, `/stats` and the log.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Coalesced => "coalesced",
            CacheStatus::Miss => "miss",
            CacheStatus::Expired => "expired",
            CacheStatus::Bypass => "bypass",
        }
    }

    /// The `aigw-cache-status` value: a coalesced answer is a hit to the
    /// client (no provider call of its own).
    pub fn header(self) -> &'static str {
        match self {
            CacheStatus::Hit | CacheStatus::Coalesced => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Expired => "EXPIRED",
            CacheStatus::Bypass => "BYPASS",
        }
    }

    /// The value in the request log's `cache` column (`aigw logs --cache`).
    pub fn log_name(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Coalesced => "COALESCED",
            CacheStatus::Miss => "MISS",
            CacheStatus::Expired => "EXPIRED",
            CacheStatus::Bypass => "BYPASS",
        }
    }

    /// Index in [`CacheStatus::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Answered without a provider call of its own.
    pub fn served(self) -> bool {
        matches!(self, CacheStatus::Hit | CacheStatus::Coalesced)
    }

    pub const ALL: [CacheStatus; 5] = [
        CacheStatus::Hit,
        CacheStatus::Coalesced,
        CacheStatus::Miss,
        CacheStatus::Expired,
        CacheStatus::Bypass,
    ];
}

/// How the response ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Fully delivered.
    Completed,
    /// The gateway answered with its own error.
    GatewayError,
    /// The provider's stream or body broke off; the client saw an aborted response.
    UpstreamAborted,
    /// The client went away before the response was delivered.
    ClientAborted,
    /// The end of a drain stopped it (`server.drain_timeout` ran out).
    StoppedByGateway,
}

/// Token counts of one request. Fields absent from the reply stay `None`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cached_tokens: Option<u64>,
    /// Input tokens written to the provider's prompt cache (Anthropic's
    /// `cache_creation_input_tokens`).
    pub cache_write_tokens: Option<u64>,
}

impl Usage {
    pub fn is_empty(&self) -> bool {
        self.input_tokens.is_none() && self.output_tokens.is_none()
    }

    /// Later reports win field by field (Anthropic sends input tokens at the
    /// start and cumulative output tokens at the end).
    pub fn merge(&mut self, later: Usage) {
        self.input_tokens = later.input_tokens.or(self.input_tokens);
        self.output_tokens = later.output_tokens.or(self.output_tokens);
        self.cached_tokens = later.cached_tokens.or(self.cached_tokens);
        self.cache_write_tokens = later.cache_write_tokens.or(self.cache_write_tokens);
    }
}

impl Outcome {
    /// The log's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::GatewayError => "gateway_error",
            Outcome::UpstreamAborted => "aborted_by_provider",
            Outcome::ClientAborted => "aborted_by_client",
            Outcome::StoppedByGateway => "stopped_by_gateway",
        }
    }
}

/// Most metadata entries (Cloudflare's limit).
pub const MAX_METADATA_ENTRIES: usize = 5;
/// Longest metadata key or string value, in bytes.
pub const MAX_METADATA_TEXT: usize = 256;

/// What is wrong with a key's metadata (config `keys.<id>.metadata`, or
/// `POST /keys`), if anything: as a request's own, at most
/// [`MAX_METADATA_ENTRIES`] entries, names and values of at most
/// [`MAX_METADATA_TEXT`] bytes, names not empty, and no control characters
/// (they are log columns and metric labels).
pub fn key_metadata_problem(entries: &[(String, String)]) -> Option<String> {
    if entries.len() > MAX_METADATA_ENTRIES {
        return Some(format!(
            "at most {MAX_METADATA_ENTRIES} entries (as a request's aigw-metadata), not {}",
            entries.len()
        ));
    }
    let control = |s: &str| s.chars().any(char::is_control);
    entries.iter().enumerate().find_map(|(at, (k, v))| {
        if entries[..at].iter().any(|(earlier, _)| earlier == k) {
            // TOML and the admin socket's JSON refuse it themselves; `aigw
            // key new --meta` would print lines that do not load.
            Some(format!("{k}: given twice; give each name once"))
        } else if k.is_empty() || k.len() > MAX_METADATA_TEXT || control(k) {
            Some(format!(
                "a name must be 1 to {MAX_METADATA_TEXT} bytes without control characters"
            ))
        } else if v.len() > MAX_METADATA_TEXT || control(v) {
            Some(format!(
                "{k}: a value must be at most {MAX_METADATA_TEXT} bytes without control characters"
            ))
        } else {
            None
        }
    })
}

/// One `aigw-metadata` value: Cloudflare allows strings, numbers and booleans.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetaValue {
    Str(String),
    /// The number as the client wrote it (valid JSON number syntax).
    Num(String),
    Bool(bool),
}

impl MetaValue {
    /// The value as text, as `--meta KEY=VALUE` compares it.
    pub fn as_text(&self) -> &str {
        match self {
            MetaValue::Str(s) | MetaValue::Num(s) => s,
            MetaValue::Bool(true) => "true",
            MetaValue::Bool(false) => "false",
        }
    }
}

/// A request's metadata: a flat object of at most a few entries, in the
/// client's order. Shared: a clone (the shard's memo hands one to each
/// request that sends the same header) copies a pointer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata(pub Arc<Vec<(String, MetaValue)>>);

impl From<Vec<(String, MetaValue)>> for Metadata {
    fn from(entries: Vec<(String, MetaValue)>) -> Metadata {
        Metadata(Arc::new(entries))
    }
}

/// Slots of a [`MetadataMemo`] (a power of two).
const METADATA_MEMO_SLOTS: usize = 64;
/// Longest header value a [`MetadataMemo`] keeps (five entries of short text).
const METADATA_MEMO_LONGEST: usize = 512;

/// The metadata objects a shard read lately, by their header's exact bytes:
/// clients send the same few objects over and over, and reading one was the
/// costliest control (12% of a cache hit's user time in perf). Direct-mapped
/// by a hash of the bytes; a slot's bytes are compared whole before its
/// object is used, so a collision costs a parse, never a wrong object. Only
/// objects that parsed are kept: an invalid header is read (and refused)
/// every time.
pub struct MetadataMemo {
    slots: Box<[Option<Remembered>]>,
}

/// A header's exact bytes and the object they hold.
type Remembered = (Box<[u8]>, Metadata);

impl MetadataMemo {
    pub fn new() -> MetadataMemo {
        MetadataMemo {
            slots: (0..METADATA_MEMO_SLOTS).map(|_| None).collect(),
        }
    }

    /// [`Metadata::parse`] of `value`, from the memo when it holds those bytes.
    pub fn parse(&mut self, value: &[u8]) -> Result<Metadata, String> {
        if value.len() > METADATA_MEMO_LONGEST {
            return Metadata::parse(value);
        }
        let at = xxhash_rust::xxh3::xxh3_64(value) as usize & (METADATA_MEMO_SLOTS - 1);
        let slot = &mut self.slots[at];
        if let Some((bytes, m)) = slot
            && **bytes == *value
        {
            return Ok(m.clone());
        }
        let m = Metadata::parse(value)?;
        *slot = Some((value.into(), m.clone()));
        Ok(m)
    }
}

impl Default for MetadataMemo {
    fn default() -> Self {
        MetadataMemo::new()
    }
}

impl Metadata {
    /// Reads a metadata object: flat, at most [`MAX_METADATA_ENTRIES`]
    /// entries, each a string, number or boolean, no key twice. `Err` says
    /// what is wrong (the header's 400).
    pub fn parse(value: &[u8]) -> Result<Metadata, String> {
        Metadata::parse_at_most(value, MAX_METADATA_ENTRIES)
    }

    /// Reads a stored metadata object (the log's readers): as [`Metadata::parse`],
    /// but with any number of entries, since a key's attribution is merged
    /// into the request's own before it is stored.
    pub fn parse_stored(value: &[u8]) -> Result<Metadata, String> {
        Metadata::parse_at_most(value, usize::MAX)
    }

    fn parse_at_most(value: &[u8], max_entries: usize) -> Result<Metadata, String> {
        let start = json::skip_ws(value, 0);
        if value.get(start) != Some(&b'{') {
            return Err("it is not a JSON object".into());
        }
        let mut entries: Vec<(String, MetaValue)> = Vec::new();
        let mut problem: Option<String> = None;
        let end = json::for_each_member(value, start, |raw_key, range| {
            if problem.is_some() {
                return;
            }
            let Some(key) = json::decode_key(raw_key) else {
                problem = Some("a key is not a valid JSON string".into());
                return;
            };
            let raw = &value[range];
            let v = match raw.first() {
                Some(b'"') => match json::string_value(raw) {
                    Some(s) => MetaValue::Str(s.into_owned()),
                    None => {
                        problem = Some(format!("the value of `{key}` is not a valid JSON string"));
                        return;
                    }
                },
                Some(b't') if raw == b"true" => MetaValue::Bool(true),
                Some(b'f') if raw == b"false" => MetaValue::Bool(false),
                Some(b'-' | b'0'..=b'9') if json::is_number(raw) => {
                    MetaValue::Num(String::from_utf8_lossy(raw).into_owned())
                }
                Some(b'{' | b'[') => {
                    problem = Some(format!(
                        "`{key}` holds an object or array (nesting is not allowed)"
                    ));
                    return;
                }
                _ => {
                    problem = Some(format!("`{key}` is not a string, number or boolean"));
                    return;
                }
            };
            if key.is_empty() || key.len() > MAX_METADATA_TEXT {
                problem = Some(format!("keys must be 1 to {MAX_METADATA_TEXT} bytes"));
            } else if matches!(&v, MetaValue::Str(s) if s.len() > MAX_METADATA_TEXT) {
                problem = Some(format!(
                    "the value of `{key}` is longer than {MAX_METADATA_TEXT} bytes"
                ));
            } else if entries.iter().any(|(k, _)| *k == key) {
                problem = Some(format!("`{key}` appears more than once"));
            } else {
                entries.push((key, v));
            }
        })
        .map_err(str::to_string)?;
        if let Some(p) = problem {
            return Err(p);
        }
        if json::skip_ws(value, end) != value.len() {
            return Err("there is data after the object".into());
        }
        if entries.len() > max_entries {
            return Err(format!("it has {} entries", entries.len()));
        }
        Ok(Metadata::from(entries))
    }

    /// Appends the metadata as a JSON object to `out`.
    pub fn write_json(&self, out: &mut String) {
        out.push('{');
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            crate::error::push_json_string(out, k);
            out.push(':');
            match v {
                MetaValue::Str(s) => crate::error::push_json_string(out, s),
                MetaValue::Num(n) => out.push_str(n),
                MetaValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            }
        }
        out.push('}');
    }
}

/// A stored body: at most `logs.payload_max` bytes of it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Payload {
    pub bytes: Vec<u8>,
    /// The body was longer than what is kept.
    pub truncated: bool,
}

impl Payload {
    /// Keeps at most `cap` bytes of `body`.
    pub fn capped(body: &[u8], cap: usize) -> Payload {
        Payload {
            bytes: body[..body.len().min(cap)].to_vec(),
            truncated: body.len() > cap,
        }
    }

    /// Appends, up to `cap` bytes in all.
    pub fn push(&mut self, more: &[u8], cap: usize) {
        let room = cap.saturating_sub(self.bytes.len());
        self.bytes.extend_from_slice(&more[..more.len().min(room)]);
        self.truncated |= more.len() > room;
    }
}

/// Text that repeats from request to request (paths, user agents): a shard
/// keeps one shared copy of each, so a record carries a reference instead
/// of a fresh string the log thread must free.
pub struct Interner {
    set: std::collections::HashSet<Arc<str>, crate::fasthash::SeededXxh3>,
    /// The texts asked for lately, by [`recent_slot`]: a request's path and
    /// user agent usually repeat the last request's, and comparing them with
    /// one remembered copy costs less than hashing them into the set (a
    /// profile of cache hits put the set's lookups at 0.12 µs a request).
    recent: [Option<Arc<str>>; RECENT],
}

const RECENT: usize = 8;

/// Where [`Interner::recent`] keeps `text`: from its length and its first
/// and last bytes, which is all a repeat needs (a collision only costs a
/// lookup in the set).
fn recent_slot(text: &[u8]) -> usize {
    let ends = usize::from(text.first().copied().unwrap_or(0)) * 7
        + usize::from(text.last().copied().unwrap_or(0)) * 31;
    (text.len() ^ ends) % RECENT
}

/// Texts a shard keeps; it starts over when full (a client sending a new
/// user agent every time costs an allocation each, as without the interner).
pub const INTERNED: usize = 256;

impl Interner {
    pub fn new(seed: u64) -> Interner {
        Interner {
            set: std::collections::HashSet::with_capacity_and_hasher(
                INTERNED,
                crate::fasthash::SeededXxh3(seed),
            ),
            recent: Default::default(),
        }
    }

    /// The shared copy of `text`.
    pub fn get(&mut self, text: &str) -> Arc<str> {
        let slot = &mut self.recent[recent_slot(text.as_bytes())];
        if let Some(t) = slot
            && **t == *text
        {
            return t.clone();
        }
        let t = match self.set.get(text) {
            Some(t) => t.clone(),
            None => {
                if self.set.len() >= INTERNED {
                    self.set.clear();
                }
                let t: Arc<str> = Arc::from(text);
                self.set.insert(t.clone());
                t
            }
        };
        *slot = Some(t.clone());
        t
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

/// What only the request log needs: gathered for requests it will keep.
#[derive(Clone, Debug, Default)]
pub struct LogFacts {
    /// The request's path as the client sent it (without the query).
    pub path: Arc<str>,
    pub user_agent: Option<Arc<str>>,
    pub event_id: Option<String>,
    pub request_body: Option<Payload>,
    pub response_body: Option<Payload>,
    /// A request that could retry or fall back, as JSON:
    /// `{"tries":[{step?, provider, model, status | error, ms}, ...],"attempts":N}`;
    /// `step` is the try's place in the route's order (0-based; absent without
    /// a route), so the last try's is the step that served.
    pub routing: Option<String>,
}

/// Everything known about one finished request.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    /// UUIDv7; its timestamp is the request's arrival (wall clock).
    pub id: RequestId,
    pub shard: usize,
    pub route: RouteKind,
    pub provider: Option<Arc<str>>,
    pub model: Option<String>,
    /// The gateway key the request presented (its id), when it had one.
    pub key_id: Option<Arc<str>>,
    /// The request's `aigw-metadata`, with its key's attribution merged in
    /// (the key's fields win). Shared with the shard's memo until changed.
    pub metadata: Option<Metadata>,
    /// The shard's config generation when the request began (a request
    /// that outlives a reload counts into the rules it brought in too).
    pub generation: u64,
    pub status: u16,
    /// Whose fault an error response was, if it was one.
    pub error_source: Option<ErrorSource>,
    pub error_code: Option<&'static str>,
    pub outcome: Outcome,
    pub stream: bool,
    pub usage: Usage,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub started: Instant,
    /// Gateway time: total minus time spent waiting on the provider.
    pub gateway: Duration,
    /// Request sent to first response byte from the provider.
    pub upstream_ttfb: Option<Duration>,
    /// Time to the first SSE data event, from the request's arrival (streams).
    pub ttft: Option<Duration>,
    pub total: Duration,
    /// Upstream attempts made (0: answered without a provider).
    pub attempts: u32,
    /// Time spent in tries that failed before the answering one and in the
    /// waits between tries (backoff, a cooling target's return): the
    /// provider's, not the gateway's.
    pub upstream_waited: Duration,
    /// The provider and model of each try that failed and was followed by
    /// another (a retry or a fallback): failures the request's own outcome
    /// does not show, counted by target in `/stats` and `/metrics`.
    pub failed_tries: Vec<(Arc<str>, Option<String>)>,
    /// New provider connections opened for this request.
    pub upstream_connects: u32,
    /// The answering provider connection was reused from the pool.
    pub upstream_reused: bool,
    /// USD, when the model's price is known (0 for answers no provider made).
    pub cost: Option<f64>,
    /// The cost comes from an estimate of the tokens (the answer was cut
    /// before its provider reported usage).
    pub cost_estimated: bool,
    /// Input tokens over the model's context window, when known.
    pub context_share: Option<f64>,
    /// The input and output tokens the rate limits counted, when not those
    /// of `usage`: an estimate (the answer was cut before its usage came),
    /// or input the provider reports apart from `input_tokens` (Anthropic's
    /// cache reads and writes). The log keeps it so a restart counts the same.
    pub counted: Option<(u64, u64)>,
    /// What the cache did (`None`: cache off, or not a provider request).
    pub cache: Option<CacheStatus>,
    /// The cache key, when one was computed (`aigw cache purge --key`).
    pub cache_key: Option<u128>,
    /// Present when the request log keeps this request.
    pub log: Option<Box<LogFacts>>,
}

const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<RequestRecord>();
};

impl RequestRecord {
    /// An error answer, or one that did not complete: the log keeps these
    /// whatever `logs.sample` says, and before successes when it falls behind.
    pub fn failed(&self) -> bool {
        self.status >= 400 || self.outcome != Outcome::Completed
    }

    /// Notes the tokens the rate limits count for this request (kept only
    /// when they are not its reported usage).
    pub fn count_tokens(&mut self, input: u64, output: u64) {
        self.counted = ((input, output) != self.reported_tokens()).then_some((input, output));
    }

    /// The input and output tokens the rate limits count for this request.
    pub fn counted_tokens(&self) -> (u64, u64) {
        self.counted.unwrap_or_else(|| self.reported_tokens())
    }

    /// The input and output tokens the request is shown to have used
    /// (`/stats`, `/metrics`, `aigw usage`): what its provider reported,
    /// and, for an answer cut before its usage, the estimate it was charged
    /// in place of what is missing (the log row's `tokens_in`/`tokens_out`
    /// stay the provider's report).
    pub fn shown_tokens(&self) -> (u64, u64) {
        let (input, output) = self.reported_tokens();
        if !self.cost_estimated {
            return (input, output);
        }
        let (est_in, est_out) = self.counted_tokens();
        (
            self.usage.input_tokens.unwrap_or(est_in),
            output.max(est_out),
        )
    }

    /// The input and output tokens the provider reported (0 for none).
    fn reported_tokens(&self) -> (u64, u64) {
        (
            self.usage.input_tokens.unwrap_or(0),
            self.usage.output_tokens.unwrap_or(0),
        )
    }

    /// Bytes of stored bodies this record carries.
    pub fn payload_len(&self) -> usize {
        self.log.as_ref().map_or(0, |l| {
            l.request_body.as_ref().map_or(0, |p| p.bytes.len())
                + l.response_body.as_ref().map_or(0, |p| p.bytes.len())
        })
    }
}

impl RequestRecord {
    pub fn new(id: RequestId, shard: usize, started: Instant) -> RequestRecord {
        RequestRecord {
            id,
            shard,
            route: RouteKind::Local,
            provider: None,
            model: None,
            key_id: None,
            metadata: None,
            cost: None,
            cost_estimated: false,
            context_share: None,
            counted: None,
            status: 0,
            error_source: None,
            error_code: None,
            outcome: Outcome::Completed,
            stream: false,
            usage: Usage::default(),
            bytes_in: 0,
            bytes_out: 0,
            started,
            gateway: Duration::ZERO,
            upstream_ttfb: None,
            ttft: None,
            total: Duration::ZERO,
            attempts: 0,
            upstream_waited: Duration::ZERO,
            failed_tries: Vec::new(),
            upstream_connects: 0,
            upstream_reused: false,
            cache: None,
            cache_key: None,
            generation: 0,
            log: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metadata_memo_answers_as_parsing_does() {
        let mut memo = MetadataMemo::new();
        // More distinct objects than slots, twice over: every answer is its
        // own object, whether it came from the memo or a slot was replaced.
        for round in 0..2 {
            for i in 0..(3 * METADATA_MEMO_SLOTS) {
                let text = format!("{{\"user\":\"u{i}\",\"n\":{i}}}");
                let m = memo.parse(text.as_bytes()).unwrap();
                assert_eq!(
                    m,
                    Metadata::parse(text.as_bytes()).unwrap(),
                    "{round} {text}"
                );
            }
        }
        // A repeated header shares the memo's object; changing a request's
        // copy (the key's attribution is merged in) leaves the memo's alone.
        let text = br#"{"user":"ann"}"#;
        let first = memo.parse(text).unwrap();
        let mut second = memo.parse(text).unwrap();
        assert!(Arc::ptr_eq(&first.0, &second.0));
        Arc::make_mut(&mut second.0).push(("team".into(), MetaValue::Str("x".into())));
        assert_eq!(memo.parse(text).unwrap(), first);
        assert_eq!(first.0.len(), 1);
        // An invalid header is refused every time, never remembered.
        for _ in 0..2 {
            assert!(memo.parse(br#"{"a":{"b":1}}"#).is_err());
        }
        // Long values are parsed, not kept, and still answer correctly.
        let long = format!("{{\"user\":\"{}\"}}", "x".repeat(METADATA_MEMO_LONGEST));
        assert_eq!(
            memo.parse(long.as_bytes()),
            Metadata::parse(long.as_bytes())
        );
    }

    #[test]
    fn interned_texts_are_shared_and_the_interner_stays_bounded() {
        let mut i = Interner::new(42);
        let a = i.get("/v1/chat/completions");
        let b = i.get("/v1/chat/completions");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&*a, "/v1/chat/completions");
        assert_ne!(&*i.get("/v1/embeddings"), "/v1/chat/completions");
        for n in 0..3 * INTERNED {
            let t = format!("agent/{n}");
            assert_eq!(&*i.get(&t), t.as_str());
            assert!(i.len() <= INTERNED);
        }
        assert!(!i.is_empty());
    }

    /// The remembered recent texts answer repeats with the shared copy, and
    /// texts that share a slot (same length, first and last byte) are never
    /// confused.
    #[test]
    fn recent_texts_answer_repeats_and_never_mix_up() {
        let mut i = Interner::new(7);
        let (a, b) = ("agent/1x", "agent/2x");
        assert_eq!(recent_slot(a.as_bytes()), recent_slot(b.as_bytes()));
        let (first_a, first_b) = (i.get(a), i.get(b));
        for _ in 0..3 {
            let (again_a, again_b) = (i.get(a), i.get(b));
            assert_eq!((&*again_a, &*again_b), (a, b));
            // Taking turns in one slot, each still gets the one shared copy.
            assert!(Arc::ptr_eq(&again_a, &first_a) && Arc::ptr_eq(&again_b, &first_b));
        }
        let path = i.get("/v1/chat/completions");
        assert!(Arc::ptr_eq(&path, &i.get("/v1/chat/completions")));
        // Past the set's bound (it starts over) every text is still right.
        for n in 0..2 * INTERNED {
            let t = format!("other/{n}");
            assert_eq!(&*i.get(&t), t.as_str());
        }
        assert_eq!(&*i.get("/v1/chat/completions"), "/v1/chat/completions");
        assert_eq!(&*i.get(""), "");
        assert_eq!(&*i.get("é"), "é");
    }

    #[test]
    fn payloads_keep_at_most_their_cap() {
        let mut p = Payload::capped(b"abcdef", 4);
        assert_eq!((&p.bytes[..], p.truncated), (&b"abcd"[..], true));
        p = Payload::default();
        p.push(b"ab", 3);
        p.push(b"cd", 3);
        assert_eq!((&p.bytes[..], p.truncated), (&b"abc"[..], true));
    }
}
