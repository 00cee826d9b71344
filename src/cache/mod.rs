//! The response cache: a stage between routing and the attempts, and a tap
//! (the fill) on the relay.
//!
//! - [`key`]: the cache key: xxh3-128 over a schema version, the credential
//!   scope, the provider, the upstream path and the canonical request body.
//! - [`entry`]: the entry format in a segment, and proving an entry whole.
//! - [`store`]: one shard's partition: mapped file, segments, index.
//! - [`flight`]: coalescing identical misses into one upstream call.
//! - [`pager`]: the thread that makes the pages each writer is about to fill
//!   writable before it gets there (no page fault in a store).
//!
//! [`Cache`] is what all shards share (every partition's mapping and index,
//! the flights in progress); [`ShardCache`] is one shard's part (the writer of
//! its own partition and its buffers). A hit reads any partition in place and
//! sends no message; a miss's answer is stored by the partition's owner,
//! handed over through a channel when another shard fetched it.

pub mod entry;
pub mod flight;
pub mod key;
pub mod pager;
pub mod store;

use crate::config::CacheConfig;
use crate::record::CacheStatus;
use dashmap::mapref::entry::Entry as MapEntry;
use entry::Entry;
use flight::{Flight, Flights, Leading};
use key::{CacheKey, KeyInput, KeyMaker};
use std::cell::{Ref, RefCell};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use store::{Found, Geometry, Opened, Partition, Purge, Writer, partition_of};

/// The cache's directory under `server.data_dir`.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("cache")
}

/// Request headers that carry a credential: entries are scoped by them.
pub const CREDENTIAL_HEADERS: [&str; 6] = [
    "authorization",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "cf-aig-authorization",
    "aigw-authorization",
];

/// Query parameters that carry a credential (some clients authenticate with
/// `?key=...`): scoped like the headers.
pub const CREDENTIAL_PARAMS: [&str; 5] = ["key", "api_key", "api-key", "access_token", "token"];

/// Forwarded request headers that change the answer (API versions and betas,
/// the organization or project billed): part of the scope, whoever shares.
pub const VARYING_HEADERS: [&str; 5] = [
    "anthropic-version",
    "anthropic-beta",
    "openai-beta",
    "openai-organization",
    "openai-project",
];

/// More headers that carry a credential, scoped like [`CREDENTIAL_HEADERS`]
/// (they are forwarded, so a provider behind a custom base URL may read
/// them); `cache.credential_headers` adds others.
pub const MORE_CREDENTIAL_HEADERS: [&str; 5] = [
    "cookie",
    "proxy-authorization",
    "x-auth-token",
    "x-access-token",
    "x-api-token",
];

/// A header's part in the scope, with the name it is hashed under (its
/// lower-case spelling: letter case is not a credential).
enum Role<'a> {
    Credential(&'a str),
    /// It changes the answer ([`VARYING_HEADERS`]).
    Varies(&'a str),
}

/// What `name` is to the scope: one of [`CREDENTIAL_HEADERS`],
/// [`MORE_CREDENTIAL_HEADERS`] and `more` (`cache.credential_headers`,
/// lower-cased), or of [`VARYING_HEADERS`]. Looked up by length first: this
/// runs for every header of every cached request, and most names match no
/// length here.
fn scope_role<'a>(name: &[u8], more: &'a [String]) -> Option<Role<'a>> {
    let is = |s: &'static str| name.eq_ignore_ascii_case(s.as_bytes()).then_some(s);
    let credential = match name.len() {
        6 => is("cookie"),
        7 => is("api-key"),
        9 => is("x-api-key"),
        11 => is("x-api-token"),
        12 => is("x-auth-token"),
        13 => is("authorization"),
        14 => is("x-goog-api-key").or_else(|| is("x-access-token")),
        18 => is("aigw-authorization"),
        19 => is("proxy-authorization"),
        20 => is("cf-aig-authorization"),
        _ => None,
    };
    if let Some(n) = credential {
        return Some(Role::Credential(n));
    }
    let varying = match name.len() {
        11 => is("openai-beta"),
        14 => is("anthropic-beta").or_else(|| is("openai-project")),
        17 => is("anthropic-version"),
        19 => is("openai-organization"),
        _ => None,
    };
    if let Some(n) = varying {
        return Some(Role::Varies(n));
    }
    more.iter()
        .find(|m| m.len() == name.len() && name.eq_ignore_ascii_case(m.as_bytes()))
        .map(|m| Role::Credential(m))
}

/// The entry of `list` that `name` is, in any case.
fn named(name: &[u8], list: &[&'static str]) -> Option<&'static str> {
    list.iter()
        .copied()
        .find(|c| name.eq_ignore_ascii_case(c.as_bytes()))
}

/// The credential parameter a query parameter's name is, as the provider
/// reads it: percent-decoded (`%6Bey` is `key` to a server).
pub fn credential_param(name: &str) -> Option<&'static str> {
    if name.contains('%') {
        named(
            &crate::http::percent_decode(name.as_bytes()),
            &CREDENTIAL_PARAMS,
        )
    } else {
        named(name.as_bytes(), &CREDENTIAL_PARAMS)
    }
}

/// Whether a POST to the upstream `path` (its query aside) asks for an
/// answer that depends on its body alone, so an identical request may be
/// answered by an earlier one: generating (chat, completions, messages,
/// Gemini's `generateContent`, images, speech), embedding, moderating,
/// reranking, counting tokens. Everything else a provider's API takes by
/// POST changes state on the provider (a thread's message, a run, a batch,
/// a file, a fine-tune): repeated, it must reach the provider again, so it
/// is never answered from the cache. `endpoint`: the unified endpoint a
/// unified request named. A Responses request that continues a stored
/// `conversation` or runs in the `background` depends on more than its
/// body (the conversation's items so far; a job): not answered either.
pub fn repeatable(endpoint: Option<&str>, path: &str, body: &[u8]) -> bool {
    let responses = match endpoint {
        Some(e) => e == "responses",
        None => match repeatable_path(path) {
            Some(responses) => responses,
            None => return false,
        },
    };
    !responses || !stateful_response(body)
}

/// A pass-through path (its query aside) read as a server may read it:
/// percent-decoded (`thr%65ads`, `threads%2F...`), in any letter case, each
/// segment without its `;parameters`, empty segments dropped. `Some`: it is
/// repeatable, and whether it is the Responses API's; `None`: it is not.
fn repeatable_path(path: &str) -> Option<bool> {
    let path = crate::http::split_byte(path, b'?').map_or(path, |(p, _)| p);
    let read: std::borrow::Cow<'_, str> = if path
        .bytes()
        .any(|b| b == b'%' || b == b';' || b.is_ascii_uppercase())
    {
        let decoded = crate::http::percent_decode(path.as_bytes());
        std::borrow::Cow::Owned(String::from_utf8_lossy(&decoded).to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(path)
    };
    let segments = || {
        read.split('/')
            .map(|s| s.split(';').next().unwrap_or(""))
            .filter(|s| !s.is_empty())
    };
    // Under these, a POST acts on a stored object.
    if segments().any(|s| {
        matches!(
            s,
            "threads"
                | "conversations"
                | "assistants"
                | "batches"
                | "files"
                | "uploads"
                | "vector_stores"
                | "fine_tuning"
                | "containers"
        )
    }) {
        return None;
    }
    let mut rev = segments().rev();
    let last = rev.next().unwrap_or("");
    let before = rev.next().unwrap_or("");
    let repeatable = match (before, last) {
        ("chat", "completions")
        | ("images", "generations")
        | ("audio", "speech")
        | ("v1", "messages" | "complete")
        | ("messages", "count_tokens")
        | ("api", "chat" | "generate" | "embed" | "embeddings") => true,
        (_, "completions" | "embeddings" | "moderations" | "responses" | "rerank") => true,
        // Gemini: `models/{model}:{method}` (compared lower-cased).
        (_, last) => last.rsplit_once(':').is_some_and(|(_, m)| {
            matches!(
                m,
                "generatecontent"
                    | "streamgeneratecontent"
                    | "embedcontent"
                    | "batchembedcontents"
                    | "counttokens"
            )
        }),
    };
    repeatable.then_some(last == "responses")
}

/// Whether a Responses API body continues a `conversation` or asks for a
/// `background` run (either name in any letter case, any value but `null`
/// or `false`: a body that cannot be read is judged so too).
fn stateful_response(body: &[u8]) -> bool {
    let open = crate::json::json_start(body);
    if body.get(open) != Some(&b'{') {
        return false;
    }
    let mut stateful = false;
    let read = crate::json::for_each_member(body, open, |key, value| {
        let named = |n: &[u8]| key.eq_ignore_ascii_case(n) || key.contains(&b'\\');
        if (named(b"conversation") || named(b"background"))
            && !matches!(&body[value], b"null" | b"false")
        {
            stateful = true;
        }
    });
    stateful || read.is_err()
}

/// A hash of one named value; `kind` keeps a header and a query parameter of
/// the same name apart.
fn pair_hash(
    h: &mut Option<xxhash_rust::xxh3::Xxh3>,
    kind: &[u8],
    name: &str,
    value: &[u8],
) -> u64 {
    let h = h.get_or_insert_with(xxhash_rust::xxh3::Xxh3::new);
    h.reset();
    h.update(kind);
    h.update(name.as_bytes());
    h.update(b"\0");
    h.update(value);
    h.digest()
}

/// What besides the provider, the path and the body decides an answer
/// ([`key::KeyInput::form`]). `unified`: the body does not go upstream as
/// written (a unified request's model loses its prefix, or the body is
/// translated), so it never shares an entry with a pass-through of the
/// same bytes, whose provider sees another model. `targets`: the (provider,
/// model) pairs a routed request may be answered by, in any order (a
/// weighted route draws them anew each time); a route's variant or a key's
/// allowed models that leave another set never share an entry.
pub fn form<'a>(unified: bool, targets: impl Iterator<Item = (&'a str, &'a str)>) -> u64 {
    let set = targets.fold(0u64, |sum, (provider, model)| {
        let seed = xxhash_rust::xxh3::xxh3_64(provider.as_bytes());
        sum.wrapping_add(xxhash_rust::xxh3::xxh3_64_with_seed(model.as_bytes(), seed))
    });
    (set << 1) | u64::from(unified)
}

/// The scope of a request: who may share its entries, and which answer its
/// headers ask for.
///
/// Who: a hash of every credential the request carries (the headers in
/// [`CREDENTIAL_HEADERS`], [`MORE_CREDENTIAL_HEADERS`] and
/// `more_credentials`; the query parameters in [`CREDENTIAL_PARAMS`] of
/// the upstream `query`), so two credentials never share an entry; 0 with
/// `cache.shared` (everyone shares), 1 for requests without any credential
/// (they all use the gateway's own provider keys). Mixed with a hash of the
/// [`VARYING_HEADERS`] present, whoever shares.
///
/// `gateway`: the gateway key the request presented (its token, a slice of
/// the header that carries it, and the key's id). The header stands as the
/// key's id, so a key is one scope whichever header it came in
/// (`Authorization`, `x-api-key`, `aigw-authorization`, ...) and whatever
/// secret of it was presented.
pub fn scope<'a>(
    shared: bool,
    more_credentials: &[String],
    headers: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    query: &str,
    gateway: Option<(&[u8], &str)>,
) -> u64 {
    // Made only for a request that has something to hash.
    let mut h = None;
    let mut any = false;
    // Order-independent: each pair's hash is summed.
    let (mut who, mut vary) = (0u64, 0u64);
    // Where the presented gateway token is: the header holding it is skipped.
    let token_at = gateway.map(|(token, _)| token.as_ptr() as usize);
    let carries_token = |value: &[u8]| {
        token_at.is_some_and(|at| {
            let from = value.as_ptr() as usize;
            (from..from + value.len()).contains(&at)
        })
    };
    if let Some((_, id)) = gateway {
        who = who.wrapping_add(pair_hash(&mut h, b"k", "gateway-key", id.as_bytes()));
        any = true;
    }
    for (name, value) in headers {
        match scope_role(name, more_credentials) {
            Some(Role::Credential(_)) if carries_token(value) => {}
            Some(Role::Credential(name)) => {
                who = who.wrapping_add(pair_hash(&mut h, b"h", name, value));
                any = true;
            }
            Some(Role::Varies(name)) => {
                vary = vary.wrapping_add(pair_hash(&mut h, b"h", name, value));
            }
            None => {}
        }
    }
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = crate::http::split_byte(pair, b'=').unwrap_or((pair, ""));
        if let Some(name) = credential_param(k) {
            who = who.wrapping_add(pair_hash(&mut h, b"q", name, v.as_bytes()));
            any = true;
        }
    }
    let who = match (shared, any) {
        (true, _) => 0,
        (false, true) => who | 2,
        (false, false) => 1,
    };
    who ^ vary
}

/// Whether a whole answer may be stored. A stream must have ended the way
/// its provider ends one (`data: [DONE]`, Anthropic's `message_stop`, or a
/// last Gemini event with its `finishReason`) and carry no error event: a
/// provider reports some failures inside a 200 stream, and such an answer
/// must not be served for a whole TTL. (Streams of providers that end
/// otherwise are not stored.)
pub fn storable(stream: bool, body: &[u8]) -> bool {
    if !stream {
        return true;
    }
    use memchr::memmem::{find, rfind};
    let end = body
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    let body_end = &body[..end];
    let gemini_finished = || {
        rfind(body_end, b"data: ")
            .is_some_and(|at| find(&body_end[at..], b"\"finishReason\"").is_some())
    };
    // The Responses API ends with `response.completed` (never `[DONE]`);
    // `response.incomplete` and `response.failed` are not answers to keep.
    let ended = body_end.ends_with(b"data: [DONE]")
        || find(body, b"event: message_stop").is_some()
        || find(body, b"event: response.completed").is_some()
        || gemini_finished();
    let error = find(body, b"event: error").is_some()
        || body.starts_with(b"data: {\"error\"")
        || find(body, b"\ndata: {\"error\"").is_some();
    ended && !error
}

/// Everything the shards share.
pub struct Cache {
    shards: usize,
    config: CacheConfig,
    geo: Geometry,
    partitions: Vec<Partition>,
    /// Each partition's writer, while no shard holds it: its owner shard
    /// takes it for as long as it runs (so a store takes no lock: a lock's
    /// release waited for the entry's writes to reach memory), and the main
    /// thread uses it once every shard stopped.
    writers: Vec<Mutex<Option<Writer>>>,
    flights: Arc<Flights>,
    fills: Vec<flume::Sender<Arc<Flight>>>,
    fill_rx: Vec<flume::Receiver<Arc<Flight>>>,
    /// Requests that joined another's upstream call (counted as they join).
    followers: AtomicU64,
    /// Purges begun since start: an answer whose flight began before one is
    /// not stored (it may be what the purge was for).
    purges: AtomicU64,
}

/// What a start found, per partition (for the start-up line).
pub struct Report {
    pub opened: Vec<Opened>,
    /// Files of partitions beyond today's shard count, removed.
    pub removed: Vec<PathBuf>,
}

impl Report {
    /// One line for the operator.
    pub fn summary(&self, dir: &Path) -> String {
        let kept: u64 = self.opened.iter().map(|o| o.kept).sum();
        let dropped: u64 = self.opened.iter().map(|o| o.dropped).sum();
        let mut s = format!(
            "cache: {} partitions in {}: {kept} entries kept, {dropped} skipped (expired, superseded by a newer answer, damaged or torn: their space is reused as the segments cycle)",
            self.opened.len(),
            dir.display()
        );
        // Each partition made anew, and why (its entries are not counted
        // above: they were not read).
        for (i, o) in self.opened.iter().enumerate() {
            if let Some(w) = o.fresh.as_deref().filter(|w| *w != "new file") {
                s.push_str(&format!("; partition {i} started empty: {w}"));
            }
        }
        if !self.removed.is_empty() {
            s.push_str(&format!(
                "; removed {} partition files of a larger shard count",
                self.removed.len()
            ));
        }
        s
    }
}

/// Totals over every partition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub entries: u64,
    pub bytes: u64,
    pub capacity: u64,
    pub stores: u64,
    pub evictions: u64,
    pub expirations: u64,
    pub purged: u64,
    pub flights: u64,
    /// Requests that joined an identical request's upstream call.
    pub followers: u64,
}

impl Cache {
    /// Opens (or makes) one partition file per shard under `dir` and rebuilds
    /// their indexes, in parallel.
    pub fn open(
        dir: &Path,
        config: &CacheConfig,
        shards: usize,
        now_ms: u64,
    ) -> Result<(Cache, Report), String> {
        let geo = Geometry::new(config.size, shards, config.max_entry)?;
        crate::private::create_dir(dir)
            .map_err(|e| format!("cache: cannot create {}: {e}", dir.display()))?;
        let mut removed = Vec::new();
        for i in shards.. {
            let p = store::file_path(dir, i);
            if !p.exists() {
                break;
            }
            std::fs::remove_file(&p)
                .map_err(|e| format!("cache: cannot remove {}: {e}", p.display()))?;
            removed.push(p);
        }
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..shards)
                .map(|i| s.spawn(move || store::open(dir, i, shards, geo, now_ms)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(std::io::Error::other("panicked")))
                })
                .collect()
        });
        let mut partitions = Vec::with_capacity(shards);
        let mut writers = Vec::with_capacity(shards);
        let mut opened = Vec::with_capacity(shards);
        // Without it (no thread to be had), pages fault as they are written.
        let pager = pager::Pager::start()
            .map_err(|e| {
                log::warn!("cache: no page-ahead thread ({e}); writes take the page faults")
            })
            .ok();
        for (i, r) in results.into_iter().enumerate() {
            let (p, mut w, o) = r.map_err(|e| {
                format!(
                    "cache: cannot open {}: {e}",
                    store::file_path(dir, i).display()
                )
            })?;
            if let Some(pager) = &pager {
                w.use_pager(&p, pager.clone());
            }
            partitions.push(p);
            writers.push(Mutex::new(Some(w)));
            opened.push(o);
        }
        let (fills, fill_rx) = (0..shards).map(|_| flume::unbounded()).unzip();
        Ok((
            Cache {
                shards,
                config: config.clone(),
                geo,
                partitions,
                writers,
                flights: Arc::new(Flights::default()),
                fills,
                fill_rx,
                followers: AtomicU64::new(0),
                purges: AtomicU64::new(0),
            },
            Report { opened, removed },
        ))
    }

    /// Call before the shards purge: answers of flights already under way
    /// are then not stored (each still reaches its clients).
    pub fn begin_purge(&self) {
        self.purges.fetch_add(1, Ordering::AcqRel);
    }

    pub fn totals(&self) -> Totals {
        let mut t = Totals {
            capacity: (self.geo.segment * self.geo.segments * self.shards) as u64,
            flights: self.flights.len() as u64,
            followers: self.followers.load(Ordering::Relaxed),
            ..Totals::default()
        };
        for p in &self.partitions {
            let s = &p.stats;
            t.entries += s.entries.load(Ordering::Relaxed);
            t.bytes += s.bytes.load(Ordering::Relaxed);
            t.stores += s.stores.load(Ordering::Relaxed);
            t.evictions += s.evictions.load(Ordering::Relaxed);
            t.expirations += s.expirations.load(Ordering::Relaxed);
            t.purged += s.purged.load(Ordering::Relaxed);
        }
        t
    }

    /// Shard `shard`'s part, holding its partition's writer until it drops
    /// (`None` while another holds it).
    pub fn for_shard(self: &Arc<Self>, shard: usize) -> Option<ShardCache> {
        let fills = self.fill_rx.get(shard)?.clone();
        let writer = self.writer_slot(shard).take()?;
        Some(ShardCache {
            shared: self.clone(),
            shard,
            fills,
            writer: RefCell::new(Some(writer)),
            keys: RefCell::new(KeyMaker::default()),
            buf: RefCell::new(Vec::new()),
        })
    }

    fn writer_slot(&self, shard: usize) -> std::sync::MutexGuard<'_, Option<Writer>> {
        self.writers[shard]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a completed flight in partition `shard` with its writer,
    /// then lets new requests find the entry instead of the flight.
    fn store_in(&self, writer: &mut Writer, shard: usize, flight: &Arc<Flight>, now_ms: u64) {
        if flight.purges == self.purges.load(Ordering::Acquire)
            && let Some(f) = flight.finished()
            && let Some(head) = f.head()
            && storable(head.stream, f.body())
        {
            let (created_ms, expires_ms) = f.times();
            let (input_tokens, output_tokens) = f.tokens();
            let e = Entry {
                key: flight.key,
                flags: if head.stream { entry::FLAG_STREAM } else { 0 },
                created_ms,
                expires_ms,
                provider: f.provider(),
                input_tokens,
                output_tokens,
                status: head.status,
                served: &head.served,
                head: &head.head,
                body: f.body(),
            };
            writer.insert(&self.partitions[shard], &e, now_ms);
        }
        self.forget(flight);
    }

    fn forget(&self, flight: &Arc<Flight>) {
        self.flights
            .remove_if(&flight.key, |_, v| Arc::ptr_eq(v, flight));
    }

    /// After every shard has stopped: stores the answers still on their way to
    /// their partitions (a shard may have handed one over as its owner
    /// stopped), then asks the kernel to write the files back.
    pub fn settle(&self) {
        let now = crate::reqid::now_unix_ms();
        for shard in 0..self.shards {
            // Every shard gave its writer back as it stopped (one that
            // panicked first keeps it, and the answers for its partition).
            let Some(writer) = &mut *self.writer_slot(shard) else {
                log::warn!(
                    "cache: partition {shard}'s writer was not given back; answers handed to it as the shards stopped are not stored"
                );
                continue;
            };
            while let Ok(f) = self.fill_rx[shard].try_recv() {
                self.store_in(writer, shard, &f, now);
            }
            writer.flush(&self.partitions[shard]);
        }
    }

    pub fn config(&self) -> &CacheConfig {
        &self.config
    }
}

/// What the cache stage decided for a request.
pub enum Lookup {
    /// A fresh entry: it is in [`ShardCache::hit`].
    Hit,
    /// An identical request is upstream: follow it.
    Follow(Arc<Flight>, CacheStatus),
    /// Go upstream and share the answer (store it, feed followers).
    Lead(Leading, CacheStatus),
    /// Not cacheable (no key: not one JSON value, duplicate keys).
    Bypass,
}

/// One shard's part of the cache.
pub struct ShardCache {
    pub shared: Arc<Cache>,
    shard: usize,
    fills: flume::Receiver<Arc<Flight>>,
    /// Its partition's writer, until the shard gives it back
    /// ([`ShardCache::give_back`]).
    writer: RefCell<Option<Writer>>,
    keys: RefCell<KeyMaker>,
    /// The entry of the last hit, as copied out of its partition.
    buf: RefCell<Vec<u8>>,
}

impl ShardCache {
    /// The stage: computes the key, looks it up in its partition (any shard's,
    /// read in place), and on a miss joins or leads the flight for it.
    /// Also returns the body's canonical digest when the key includes the
    /// body (see [`KeyInput::canonical`]).
    pub fn lookup(
        &self,
        input: &KeyInput<'_>,
        now_ms: u64,
    ) -> (Option<CacheKey>, Option<u128>, Lookup) {
        let Ok((key, canonical)) = self.keys.borrow_mut().key_and_canonical(input) else {
            return (None, None, Lookup::Bypass);
        };
        (Some(key), canonical, self.find(key, now_ms))
    }

    /// [`crate::json::scan_request`] of a request body with its canonical
    /// digest (for [`KeyInput::canonical`]), in one pass over the body; no
    /// digest for a body that has no key (it is scanned on its own then, so
    /// a body the cache bypasses reads exactly as it would with it off).
    pub fn scan(
        &self,
        body: &[u8],
    ) -> Result<(crate::json::RequestFields, Option<u128>), crate::json::BodyError> {
        // Only an object has fields: anything else fails the scan at once,
        // without a walk of its whole body first.
        if crate::json::top_object(body).is_err() {
            return crate::json::scan_request(body).map(|f| (f, None));
        }
        let mut keys = self.keys.borrow_mut();
        match keys.digest_and_members(body) {
            Ok((digest, tops)) => {
                let members = tops.iter().map(|(k, v)| (&body[k.clone()], v.clone()));
                crate::json::scan_members(body, members).map(|f| (f, Some(digest)))
            }
            Err(_) => crate::json::scan_request(body).map(|f| (f, None)),
        }
    }

    fn find(&self, key: CacheKey, now_ms: u64) -> Lookup {
        let shared = &self.shared;
        let part = &shared.partitions[partition_of(key, shared.shards)];
        // Whether an answer was stored while this request looked (see below).
        let stores = part.stats.stores.load(Ordering::Acquire);
        let status = match part.lookup(key, now_ms, &mut self.buf.borrow_mut()) {
            Some(Found::Fresh(_)) => return Lookup::Hit,
            Some(Found::Expired) => CacheStatus::Expired,
            None => CacheStatus::Miss,
        };
        let purges = shared.purges.load(Ordering::Acquire);
        let flight = match shared.flights.entry(key) {
            // Not one that began before a purge: the purge keeps its answer
            // out of the cache, and out of requests that come after it.
            MapEntry::Occupied(o) if !o.get().is_failed() && o.get().purges == purges => {
                shared.followers.fetch_add(1, Ordering::Relaxed);
                return Lookup::Follow(o.get().clone(), status);
            }
            e => {
                let flight = Arc::new(Flight::new(key, shared.config.max_entry, purges));
                e.insert(flight.clone());
                flight
            }
        };
        let leading = Leading::new(flight, shared.flights.clone());
        // The flight this request missed may have been stored and left the
        // table between the lookup and now: look again before going upstream.
        // A store counts itself before its flight leaves the table, so an
        // unchanged count proves there is nothing new to find.
        if part.stats.stores.load(Ordering::Acquire) != stores
            && let Some(Found::Fresh(_)) = part.lookup(key, now_ms, &mut self.buf.borrow_mut())
        {
            drop(leading);
            return Lookup::Hit;
        }
        Lookup::Lead(leading, status)
    }

    /// A lead for a follower whose leader failed: it goes upstream on its own
    /// (as every such follower does, none waiting on another) and its answer
    /// is stored like a leader's. Its flight is in no table: nobody follows it.
    pub fn lead_alone(&self, key: CacheKey) -> Leading {
        let purges = self.shared.purges.load(Ordering::Acquire);
        let flight = Arc::new(Flight::new(key, self.shared.config.max_entry, purges));
        Leading::new(flight, self.shared.flights.clone())
    }

    /// The entry the last [`Lookup::Hit`] found, as proven when it was found
    /// (read it with [`entry::view`]).
    pub fn hit(&self) -> Ref<'_, [u8]> {
        Ref::map(self.buf.borrow(), |b| &b[..])
    }

    /// A completed flight's answer goes to its partition's owner: stored here
    /// when that is this shard, else handed over (off this request's path).
    pub fn store(&self, flight: Arc<Flight>, now_ms: u64) {
        let owner = partition_of(flight.key, self.shared.shards);
        if owner == self.shard {
            self.with_writer(|w| self.shared.store_in(w, owner, &flight, now_ms));
        } else if self.shared.fills[owner].send(flight.clone()).is_err() {
            self.shared.forget(&flight);
        }
    }

    /// A completed flight that is not to be stored leaves the table.
    pub fn release(&self, flight: &Arc<Flight>) {
        self.shared.forget(flight);
    }

    /// Waits for the next answer another shard handed over, and stores it.
    /// `None` once every sender is gone.
    pub async fn store_next(&self) -> Option<()> {
        let flight = self.fills.recv_async().await.ok()?;
        let now = crate::reqid::now_unix_ms();
        self.with_writer(|w| self.shared.store_in(w, self.shard, &flight, now));
        Some(())
    }

    /// Purges this shard's partition (after [`Cache::begin_purge`]).
    pub fn purge(&self, what: Purge) -> u64 {
        // Answers already handed to this partition go in first, so a purge
        // that follows an answer finds it.
        self.with_writer(|writer| {
            while let Ok(f) = self.fills.try_recv() {
                self.shared
                    .store_in(writer, self.shard, &f, crate::reqid::now_unix_ms());
            }
            let part = &self.shared.partitions[self.shard];
            writer.purge(part, what)
        })
        .unwrap_or(0)
    }

    /// Runs `f` with the partition's writer: the shard's own while it holds
    /// it, else the cache's (`None`: neither has it, which cannot happen).
    fn with_writer<R>(&self, f: impl FnOnce(&mut Writer) -> R) -> Option<R> {
        if let Some(w) = self.writer.borrow_mut().as_mut() {
            return Some(f(w));
        }
        self.shared.writer_slot(self.shard).as_mut().map(f)
    }

    /// Gives the partition's writer back to the cache: the shard calls this
    /// when it stops, so the main thread can store what other shards hand
    /// over after that (`Cache::settle`). Not left to `Drop`: tasks of a
    /// stopped shard that wait on a channel keep its context, and this, alive.
    pub fn give_back(&self) {
        if let Some(w) = self.writer.borrow_mut().take() {
            *self.shared.writer_slot(self.shard) = Some(w);
        }
    }
}

pub use store::Purge as PurgeWhat;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_requests_that_mean_the_same_each_time_are_repeatable() {
        let yes = |path: &str| repeatable(None, path, b"{}");
        for path in [
            "/v1/chat/completions",
            "/openai/v1/chat/completions?x=1",
            "/openai/deployments/gpt/chat/completions?api-version=2024-10-21",
            "/v1/completions",
            "/v1/fim/completions",
            "/v1/embeddings",
            "/v1/moderations",
            "/v1/responses",
            "/v1/images/generations",
            "/v1/audio/speech",
            "/v1/messages",
            "/v1/messages/count_tokens",
            "/v1/complete",
            "/v1beta/models/gemini-2.0-flash:generateContent",
            "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse",
            "/v1beta/models/text-embedding-004:embedContent",
            "/v1beta/models/g:GENERATECONTENT",
            "/v1//chat//completions/",
            "/api/chat",
        ] {
            assert!(yes(path), "{path}");
        }
        for path in [
            "/v1/thr%65ads/thread_1/messages",
            "/v1/threads%2Fthread_1/messages",
            "/v1/Threads/thread_1/messages",
            "/v1/THREADS/t/messages",
            "/v1/threads;x/t/messages",
            "/openai/Threads/t/messages?api-version=1",
            "/v1/x/messages",
            "/v1/threads/thread_1/messages",
            "/v1/threads/runs",
            "/v1/threads",
            "/v1/assistants",
            "/v1/batches",
            "/v1/files",
            "/v1/uploads/u/complete",
            "/v1/uploads/u/parts",
            "/v1/vector_stores/vs/files",
            "/v1/fine_tuning/jobs",
            "/v1/chat/completions/chatcmpl_1",
            "/v1/responses/resp_1/cancel",
            "/v1/conversations/c/items",
            "/v1beta/cachedContents",
            "/v1beta/models/gemini-2.0-flash:unknownMethod",
            "/v1beta/files",
            "/v1/realtime/sessions",
        ] {
            assert!(!yes(path), "{path}");
        }
        // The Responses API: a stored conversation or a background run is
        // not repeatable, by any letter case or spelling of the name.
        for (body, ok) in [
            (r#"{"input":"x"}"#, true),
            (
                r#"{"input":"x","background":false,"conversation":null}"#,
                true,
            ),
            (r#"{"input":"x","previous_response_id":"resp_1"}"#, true),
            (r#"{"input":"x","conversation":"conv_1"}"#, false),
            (r#"{"input":"x","Conversation":{"id":"c"}}"#, false),
            (r#"{"input":"x","background":true}"#, false),
            (r#"{"input":"x","backgroun\u0064":true}"#, false),
            (r#"{"input":"x","background":true"#, false),
        ] {
            assert_eq!(
                repeatable(Some("responses"), "/v1/responses", body.as_bytes()),
                ok,
                "{body}"
            );
            assert_eq!(
                repeatable(None, "/v1/responses", body.as_bytes()),
                ok,
                "{body}"
            );
            // Other endpoints do not read the body.
            assert!(repeatable(
                Some("chat/completions"),
                "/v1/chat/completions",
                body.as_bytes()
            ));
        }
    }

    #[test]
    fn a_credential_parameter_is_known_percent_encoded_too() {
        assert_eq!(credential_param("key"), Some("key"));
        assert_eq!(credential_param("%6Bey"), Some("key"));
        assert_eq!(credential_param("API%5FKEY"), Some("api_key"));
        assert_eq!(credential_param("alt"), None);
        let scope = |q: &str| scope(false, &[], std::iter::empty(), q, None);
        assert_eq!(scope("%6Bey=A"), scope("key=A"));
        assert_ne!(scope("%6Bey=A"), scope(""));
        assert_ne!(scope("%6Bey=A"), scope("key=B"));
    }

    /// A 4 MiB cache with entries of up to 64 KiB.
    fn small() -> CacheConfig {
        CacheConfig {
            enabled: true,
            size: 4 << 20,
            default_ttl: std::time::Duration::from_secs(60),
            max_entry: 64 << 10,
            shared: false,
            credential_headers: Vec::new(),
        }
    }

    /// An empty directory of this test process's own.
    fn fresh_dir(what: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("aigw-cache-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// A body read for the first time with the cache on: its fields are
    /// what the scan alone reads (same result, error or not, for bodies
    /// with the fields the gateway reads, escaped or not, in any order, with
    /// any whitespace, a BOM, repeats), and its digest, when it has one,
    /// gives the key the body itself gives.
    #[test]
    fn a_first_read_scans_as_the_scan_alone_and_keys_as_its_body() {
        let dir = fresh_dir("scan");
        let (cache, _) = Cache::open(&dir, &small(), 1, crate::reqid::now_unix_ms()).unwrap();
        let shard = Arc::new(cache).for_shard(0).unwrap();
        let members = [
            r#""model":"a/b""#,
            r#""m\u006fdel":"c/d""#,
            r#""stream":true"#,
            r#""stream":null"#,
            r#""str\u0065am":"yes""#,
            r#""stream_options":{"include_usage":true}"#,
            r#""stream_options":{"include_usage":1,"x":[]}"#,
            r#""max_tokens":5"#,
            r#""max_completion_tokens":7"#,
            r#""max_output_tokens":-1"#,
            r#""n":2"#,
            r#""messages":[{"role":"user","content":"x\"y\u00e9"}]"#,
            r#""temperature":0.5"#,
            r#""tools":[{"a":{"b":[1,{"c":null}]}}]"#,
        ];
        let ws = [" ", "", "\n", "\t "];
        let mut rng = crate::reqid::IdGen::new(17);
        let mut pick = |n: usize| rng.next_u64() as usize % n;
        let mut keyed = 0;
        for round in 0..400 {
            let mut body = String::new();
            if round % 7 == 0 {
                body.push('\u{feff}');
            }
            body.push_str(ws[pick(ws.len())]);
            body.push('{');
            for m in 0..pick(5) {
                if m > 0 {
                    body.push(',');
                }
                body.push_str(ws[pick(ws.len())]);
                body.push_str(members[pick(members.len())]);
                body.push_str(ws[pick(ws.len())]);
            }
            body.push('}');
            body.push_str(ws[pick(ws.len())]);
            let b = body.as_bytes();
            let got = shard.scan(b);
            let alone = crate::json::scan_request(b);
            assert_eq!(got.as_ref().map(|(f, _)| f), alone.as_ref(), "{body}");
            if let Ok((_, Some(digest))) = got {
                keyed += 1;
                let input = KeyInput {
                    scope: 1,
                    provider: "openai",
                    path: "/v1/chat/completions",
                    body: b,
                    canonical: None,
                    custom: None,
                    form: 0,
                    stream: false,
                    asked_usage: false,
                };
                let mut maker = key::KeyMaker::default();
                let from_body = maker.key(&input).unwrap();
                let from_digest = maker
                    .key(&KeyInput {
                        canonical: Some(digest),
                        body: b"",
                        ..input
                    })
                    .unwrap();
                assert_eq!(from_body, from_digest, "{body}");
            }
        }
        // Most of them have a key (the rest repeat a member).
        assert!(keyed > 200, "{keyed}");
        // Not an object: no digest, the scan's own error.
        for body in [&b"[1,2]"[..], b"\"text\"", b"", b"{\"model\":\"a/b\"} x"] {
            let got = shard.scan(body).map(|(f, d)| (f, d.is_some()));
            assert_eq!(got, crate::json::scan_request(body).map(|f| (f, false)));
        }
        drop(shard);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// An answer a shard hands to another shard's partition after that shard
    /// stopped is stored by the main thread (`settle`), with the writer the
    /// stopped shard gave back, and is there at the next start.
    #[test]
    fn answers_handed_over_after_their_owner_stopped_are_stored() {
        let dir = fresh_dir("settle");
        let config = small();
        let now = crate::reqid::now_unix_ms();
        let (cache, _) = Cache::open(&dir, &config, 2, now).unwrap();
        let cache = Arc::new(cache);
        let (zero, one) = (cache.for_shard(0).unwrap(), cache.for_shard(1).unwrap());
        assert!(cache.for_shard(0).is_none(), "one writer per partition");
        // Shard 1 leads a request whose key partition 0 owns.
        let (key, mut lead) = (0..)
            .find_map(|n| {
                let body = format!("{{\"n\":{n}}}");
                let input = KeyInput {
                    scope: 1,
                    provider: "openai",
                    path: "/v1/chat/completions",
                    body: body.as_bytes(),
                    canonical: None,
                    custom: None,
                    form: 0,
                    stream: false,
                    asked_usage: false,
                };
                match one.lookup(&input, now) {
                    (Some(k), _, Lookup::Lead(l, _)) if partition_of(k, 2) == 0 => Some((k, l)),
                    _ => None,
                }
            })
            .unwrap();
        zero.give_back();
        let head = flight::FlightHead {
            status: 200,
            served: b"up\nm".to_vec(),
            head: b"content-type: application/json\r\n".to_vec(),
            stream: false,
        };
        lead.head(head, 1, None);
        lead.append(b"{}");
        let done = lead.complete(now, now + 60_000, (1, 2), None).unwrap();
        one.store(done, now);
        one.give_back();
        assert_eq!(cache.totals().entries, 0, "handed over, not yet stored");
        cache.settle();
        assert_eq!(cache.totals().entries, 1);
        drop((zero, one, cache));
        let (again, _) = Cache::open(&dir, &config, 2, now).unwrap();
        let mut buf = Vec::new();
        assert!(again.partitions[0].lookup(key, now, &mut buf).is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_streams_that_ended_well_are_stored() {
        assert!(storable(false, b"{\"error\":1}"));
        assert!(storable(true, b"data: {\"a\":1}\n\ndata: [DONE]\n\n"));
        assert!(storable(
            true,
            b"event: message_start\ndata: {}\n\nevent: message_stop\ndata: {}\n\n"
        ));
        assert!(!storable(true, b"data: {\"a\":1}\n\n"), "no end");
        // The Responses API's own end; not one that failed or stopped short.
        let responses = |last: &str| {
            format!(
                "event: response.created\ndata: {{}}\n\nevent: response.output_text.delta\ndata: {{}}\n\nevent: {last}\ndata: {{}}\n\n"
            )
        };
        assert!(storable(true, responses("response.completed").as_bytes()));
        assert!(!storable(true, responses("response.incomplete").as_bytes()));
        assert!(!storable(true, responses("response.failed").as_bytes()));
        assert!(!storable(
            true,
            responses("response.output_text.done").as_bytes()
        ));
        // Gemini ends a stream with a last event that says why it finished.
        let gemini = |events: &[&str]| -> Vec<u8> {
            events
                .iter()
                .flat_map(|e| format!("data: {e}\r\n\r\n").into_bytes())
                .collect()
        };
        let (part, last) = (
            r#"{"candidates":[{"content":{"parts":[{"text":"a"}]}}]}"#,
            r#"{"candidates":[{"finishReason":"STOP"}],"usageMetadata":{}}"#,
        );
        assert!(storable(true, &gemini(&[part, last])));
        assert!(!storable(true, &gemini(&[part])), "no finish");
        assert!(
            !storable(true, &gemini(&[last, part])),
            "more after the finish"
        );
        assert!(!storable(true, b"data: {\"error\":{}}\n\ndata: [DONE]\n\n"));
        assert!(!storable(
            true,
            b"data: {}\n\ndata: {\"error\":{}}\n\ndata: [DONE]\n\n"
        ));
        assert!(!storable(
            true,
            b"event: error\ndata: {}\n\nevent: message_stop\n\n"
        ));
    }

    #[test]
    fn credentials_scope_entries_and_order_does_not_matter() {
        let a: [(&[u8], &[u8]); 2] = [(b"Authorization", b"Bearer a"), (b"x-other", b"1")];
        let b: [(&[u8], &[u8]); 1] = [(b"authorization", b"Bearer b")];
        let none: [(&[u8], &[u8]); 1] = [(b"content-type", b"application/json")];
        let sa = scope(false, &[], a.into_iter(), "", None);
        assert_ne!(sa, scope(false, &[], b.into_iter(), "", None));
        assert_eq!(
            sa,
            scope(
                false,
                &[],
                [(&b"AUTHORIZATION"[..], &b"Bearer a"[..])].into_iter(),
                "",
                None,
            )
        );
        assert_eq!(scope(false, &[], none.into_iter(), "", None), 1);
        assert_eq!(scope(true, &[], a.into_iter(), "", None), 0);
        // A credential in the query scopes too; other parameters do not.
        let q1 = scope(false, &[], none.into_iter(), "alt=sse&key=k1", None);
        assert_ne!(q1, 1);
        assert_ne!(
            q1,
            scope(false, &[], none.into_iter(), "alt=sse&key=k2", None)
        );
        assert_eq!(scope(false, &[], none.into_iter(), "alt=sse", None), 1);
        // A header that changes the answer separates entries even when shared.
        let beta: [(&[u8], &[u8]); 1] = [(b"anthropic-beta", b"tools-2024")];
        assert_ne!(scope(true, &[], beta.into_iter(), "", None), 0);
        assert_ne!(scope(false, &[], beta.into_iter(), "", None), 1);
        let two: [(&[u8], &[u8]); 2] = [(b"x-api-key", b"k"), (b"authorization", b"Bearer a")];
        let two_rev: [(&[u8], &[u8]); 2] = [(b"authorization", b"Bearer a"), (b"x-api-key", b"k")];
        assert_eq!(
            scope(false, &[], two.into_iter(), "", None),
            scope(false, &[], two_rev.into_iter(), "", None)
        );
        assert_ne!(scope(false, &[], two.into_iter(), "", None), sa);
    }

    /// A presented gateway key stands as its id: the header holding its
    /// token is not hashed, other credentials still are.
    #[test]
    fn a_gateway_key_scopes_by_its_id_whichever_header_carries_it() {
        let auth: [(&[u8], &[u8]); 1] = [(b"authorization", b"Bearer sk-aigw-1")];
        let aigw: [(&[u8], &[u8]); 2] = [
            (b"aigw-authorization", b"Bearer sk-aigw-1"),
            (b"x-api-key", b"provider-key"),
        ];
        let key = |h: &[(&'static [u8], &'static [u8])], id: &'static str| Some((&h[0].1[7..], id));
        let alice = scope(false, &[], auth.into_iter(), "", key(&auth, "alice"));
        assert_eq!(
            alice,
            scope(
                false,
                &[],
                aigw[..1].iter().copied(),
                "",
                key(&aigw, "alice")
            )
        );
        assert_ne!(
            alice,
            scope(false, &[], auth.into_iter(), "", key(&auth, "bob"))
        );
        assert_ne!(alice, scope(false, &[], auth.into_iter(), "", None));
        // The client's own provider key beside it scopes too.
        assert_ne!(
            alice,
            scope(false, &[], aigw.into_iter(), "", key(&aigw, "alice"))
        );
        assert!(scope(false, &[], auth.into_iter(), "", key(&auth, "alice")) > 1);
        assert_eq!(
            scope(true, &[], auth.into_iter(), "", key(&auth, "alice")),
            0
        );
    }

    /// A credential in a header a custom provider may read (a cookie, an
    /// auth token, one the config names) scopes entries like the known
    /// ones; the headers SDKs send on every request (an idempotency key,
    /// their own `x-stainless-*`) do not.
    #[test]
    fn credential_headers_scope_entries_known_and_configured() {
        let more = ["x-tenant-auth".to_string()];
        let one = |name: &str, value: &str| {
            scope(
                false,
                &more,
                [(name.as_bytes(), value.as_bytes())].into_iter(),
                "",
                None,
            )
        };
        for name in CREDENTIAL_HEADERS
            .iter()
            .chain(&MORE_CREDENTIAL_HEADERS)
            .copied()
            .chain(["X-Tenant-Auth", "Cookie", "X-AUTH-TOKEN"])
        {
            assert_ne!(one(name, "a"), 1, "{name} scopes");
            assert_ne!(
                one(name, "a"),
                one(name, "b"),
                "{name}: two values, two scopes"
            );
            assert_eq!(
                one(name, "a"),
                one(&name.to_ascii_uppercase(), "a"),
                "{name}: letter case is not a credential"
            );
        }
        for name in [
            "Idempotency-Key",
            "x-stainless-retry-count",
            "x-stainless-os",
            "User-Agent",
            "Content-Type",
            "Accept",
            "traceparent",
            "x-tenant-auth2",
        ] {
            assert_eq!(one(name, "a"), 1, "{name} does not scope");
        }
        assert_ne!(one("Cookie", "a"), one("X-Auth-Token", "a"));
        assert_ne!(one("x-tenant-auth", "a"), one("X-Auth-Token", "a"));
        // Every varying header varies the scope (shared or not).
        for name in VARYING_HEADERS {
            let v = scope(
                true,
                &[],
                [(name.as_bytes(), &b"x"[..])].into_iter(),
                "",
                None,
            );
            assert_ne!(v, 0, "{name}");
        }
    }
}
