//! Rate limits: stage 1b of the pipeline (admission), after the key is known
//! and before the cache lookup.
//!
//! The true count of each bucket (a rule and one value of its scope: the
//! gateway, a key id, a metadata value) lives in one [`Limiter`] every shard
//! shares: a dashmap of [`window::Counter`]s, whose takes are compare-and-swaps
//! that never count past the limit. A shard admits `requests` from leases it
//! takes from the counter (a few units at a time, fewer as the window fills,
//! one at a time near its end), so a busy shard touches the shared word once
//! every few requests; it gives unused units back as soon as it has no request
//! of that bucket in flight. Worst-case overshoot of a `requests` rule: zero
//! (every admitted request holds a unit the counter granted). Token rules
//! reserve at admission (a prompt estimate plus `max_tokens`, or the rule's
//! `default_max_tokens`) and settle to the real usage: usage above the
//! reservation is debt in the window it is settled in, never forgiven, so a
//! token rule overshoots by at most what in-flight requests use beyond their
//! reservations. `concurrent` rules count requests in flight, exactly.
//!
//! An [`Admission`] holds what a request took; it settles once, and what it
//! did not settle (a request that never reached a provider) is refunded when
//! it drops.

pub mod window;

use crate::auth::models_allow;
use crate::config::limits::{Count, RateRule, Scope, Technique};
use crate::error::GatewayError;
use crate::fasthash::{FastMap, LastFound};
use crate::http::push_decimal;
use crate::record::Metadata;
use dashmap::DashMap;
use smallvec::SmallVec;
use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::Arc;
use window::{Counter, Grant, Refusal};

/// Most units a shard leases at once for a `requests` rule.
pub const MAX_LEASE: u64 = 32;
/// Buckets kept before idle ones (no shard holding them, both windows over)
/// are swept from the shared table.
pub const SWEEP_AT: usize = 16_384;
/// Bucket handles a shard keeps (limits and budgets each) before dropping
/// those it does not hold.
pub const LOCAL_CAP: usize = 1024;

/// The scope value of requests without one (no key, no such metadata field).
pub const NO_VALUE: &str = "(none)";

/// Who and what a request is, as rate limits and budgets scope it (live, or
/// replayed from the log at start).
#[derive(Clone, Copy, Debug)]
pub struct Subject<'a> {
    pub key_id: Option<&'a str>,
    pub provider: &'a str,
    pub model: Option<&'a str>,
    /// Attribution the key fixes: it wins over the request's own.
    pub key_metadata: &'a [(String, String)],
    /// The request's own `aigw-metadata`.
    pub metadata: Option<&'a Metadata>,
}

impl<'a> Subject<'a> {
    /// A metadata field's value: the key's, else the request's.
    pub fn field(&self, name: &str) -> Option<&'a str> {
        if let Some((_, v)) = self.key_metadata.iter().find(|(k, _)| k == name) {
            return Some(v);
        }
        let m = self.metadata?;
        m.0.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_text())
    }

    /// The value a scope counts this request under ([`NO_VALUE`] without one).
    pub fn value(&self, scope: &Scope) -> &'a str {
        match scope {
            Scope::Gateway => "",
            Scope::Key => self.key_id.unwrap_or(NO_VALUE),
            Scope::Provider => self.provider,
            Scope::Metadata(f) => self.field(f).unwrap_or(NO_VALUE),
        }
    }

    /// Whether a rule limited to `models` and `keys` (empty: all) applies
    /// to it.
    pub fn applies(&self, models: &[String], keys: &[String]) -> bool {
        (keys.is_empty() || self.key_id.is_some_and(|id| keys.iter().any(|k| k == id)))
            && models_allow(models, self.provider, self.model)
    }
}

/// One bucket: a rule's count for one scope value.
#[derive(Debug)]
pub struct Bucket {
    pub counter: Counter,
    window_ms: u64,
}

/// The shared table of buckets, by (rule fingerprint, scope value hash).
pub struct Limiter {
    buckets: DashMap<(u64, u64), Arc<Bucket>>,
    shards: usize,
}

impl Limiter {
    pub fn new(shards: usize) -> Arc<Limiter> {
        Arc::new(Limiter {
            buckets: DashMap::new(),
            shards: shards.max(1),
        })
    }

    fn bucket(&self, key: (u64, u64), window_ms: u64) -> Arc<Bucket> {
        if let Some(b) = self.buckets.get(&key) {
            return b.clone();
        }
        if self.buckets.len() >= SWEEP_AT {
            self.sweep(crate::reqid::now_unix_ms());
        }
        self.buckets
            .entry(key)
            .or_insert_with(|| {
                Arc::new(Bucket {
                    counter: Counter::default(),
                    window_ms,
                })
            })
            .clone()
    }

    /// Drops every bucket of `rules` (counts of an earlier time they were in
    /// force), before they are rebuilt from the log.
    pub fn forget(&self, rules: &[RateRule]) {
        let gone: Vec<u64> = rules.iter().map(fingerprint).collect();
        self.buckets.retain(|k, _| !gone.contains(&k.0));
    }

    /// Drops buckets no shard holds whose current and previous windows are
    /// over (their counts can no longer refuse anything).
    pub fn sweep(&self, now_ms: u64) {
        self.buckets.retain(|_, b| {
            Arc::strong_count(b) > 1
                || b.counter.in_flight() > 0
                || b.counter.last_window().saturating_add(1)
                    >= window::position(now_ms, b.window_ms).0
        });
    }

    /// Counts what the request log recorded into the windows of `rules` (at
    /// start, before any shard runs; `logged` oldest first): each admitted
    /// request, and its tokens. Requests the gateway refused count nothing;
    /// cache hits count only toward `requests` rules that count them.
    pub fn rebuild(&self, rules: &[RateRule], logged: &[Logged<'_>]) {
        for r in rules {
            if r.count == Count::Concurrent {
                continue;
            }
            let fp = fingerprint(r);
            let window_ms = r.window.as_millis().max(1) as u64;
            for l in logged {
                if l.refused
                    || (l.cached && (r.count != Count::Requests || !r.count_cache_hits))
                    || !l.subject.applies(&r.models, &r.keys)
                {
                    continue;
                }
                let value = l.subject.value(&r.scope);
                let units = match r.count {
                    Count::Requests => l.requests,
                    Count::InputTokens => l.tokens_in,
                    Count::OutputTokens => l.tokens_out,
                    _ => l.tokens_in + l.tokens_out,
                };
                let key = (fp, xxhash_rust::xxh3::xxh3_64(value.as_bytes()));
                let b = self.bucket(key, window_ms);
                b.counter.add(window::position(l.ts_ms, window_ms).0, units);
            }
        }
    }
}

/// A logged request (or a tally of several) as the rebuild counts it.
pub struct Logged<'a> {
    pub ts_ms: u64,
    /// How many requests it stands for.
    pub requests: u64,
    pub subject: Subject<'a>,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub refused: bool,
    pub cached: bool,
}

/// A rule as a shard applies it.
#[derive(Debug)]
struct Prepared {
    rule: RateRule,
    /// Identifies the rule's buckets: what it counts, per what, over which
    /// window (not its limit: a reload that changes only the limit keeps counts).
    fingerprint: u64,
    window_ms: u64,
    /// `x-ratelimit-limit-<what>: N` with its CRLF, then
    /// `x-ratelimit-remaining-<what>: `, rendered once.
    limit_line: Vec<u8>,
    /// The last reset rendered (`\r\nx-ratelimit-reset-<what>: 1m2s\r\n`,
    /// ending the remaining line), by the value it was rendered for (it
    /// changes once a second at most, and takes divisions to write).
    reset: RefCell<(u64, Vec<u8>)>,
    /// The bucket of the scope value this rule saw last.
    last: LastFound<Rc<Local>>,
}

impl Prepared {
    /// Milliseconds from `now_ms` until the rule is whole again (OpenAI's
    /// `x-ratelimit-reset-*`, on answers and refusals alike): the window's
    /// end, and for a sliding rule one window more, when what the current
    /// window counts has left the weighted look back too.
    fn reset_ms(&self, now_ms: u64) -> u64 {
        let sliding = self.rule.technique == Technique::Sliding;
        self.window_ms - now_ms % self.window_ms + if sliding { self.window_ms } else { 0 }
    }
}

/// What a rule's headers count: `requests` or `tokens` (OpenAI's names).
fn what(r: &RateRule) -> &'static str {
    if r.count.is_tokens() {
        "tokens"
    } else {
        "requests"
    }
}

/// The rules of `after` whose counts `before` did not keep (new, or changed
/// in what they count, per what, over which window or how): a reload
/// rebuilds them from the request log, as a restart does. `concurrent` rules
/// count only what is in flight: nothing to rebuild.
pub fn fresh_rules(before: &[RateRule], after: &[RateRule]) -> Vec<RateRule> {
    let kept: Vec<u64> = before.iter().map(fingerprint).collect();
    after
        .iter()
        .filter(|r| r.count != Count::Concurrent && !kept.contains(&fingerprint(r)))
        .cloned()
        .collect()
}

fn fingerprint(r: &RateRule) -> u64 {
    // The name too: two rules alike in all else are two sets of counts.
    let text = format!(
        "{:?}|{}|{}|{}|{:?}|{:?}|{}",
        r.scope,
        r.count.as_str(),
        r.window.as_millis(),
        r.technique.as_str(),
        r.models,
        r.keys,
        r.name
    );
    xxhash_rust::xxh3::xxh3_64(text.as_bytes())
}

/// A shard's view of one bucket: the bucket, its lease, its requests in flight.
#[derive(Debug)]
struct Local {
    bucket: Arc<Bucket>,
    lease_window: Cell<u32>,
    lease_left: Cell<u64>,
    /// What the shared count had left after the lease was taken.
    lease_room: Cell<u64>,
    holders: Cell<u32>,
}

impl Local {
    /// Gives the lease's unused units back (no request of this bucket is in
    /// flight on this shard, or the lease's window is over).
    fn return_lease(&self) {
        let left = self.lease_left.replace(0);
        self.bucket.counter.give_back(self.lease_window.get(), left);
    }
}

/// What a request brings to admission.
pub struct Ask<'a> {
    pub subject: Subject<'a>,
    /// Input tokens the prompt may hold (an estimate from its size).
    pub input_estimate: u64,
    /// The request's output cap, when it sets one.
    pub max_tokens: Option<u64>,
    /// How many answers it asks for (`n`): each may use the cap.
    pub choices: u64,
    pub now_ms: u64,
    /// The cache answers it: only `concurrent` rules and `requests` rules
    /// with `count_cache_hits` count it (a hit uses no tokens).
    pub hit: bool,
}

/// A shard's limiter: its rules, its leases, and the shared table.
pub struct ShardLimiter {
    shared: Arc<Limiter>,
    rules: RefCell<Rc<Vec<Prepared>>>,
    local: RefCell<FastMap<(u64, u64), Rc<Local>>>,
}

impl ShardLimiter {
    pub fn new(shared: Arc<Limiter>, rules: &[RateRule]) -> ShardLimiter {
        let s = ShardLimiter {
            shared,
            rules: RefCell::new(Rc::new(Vec::new())),
            local: RefCell::new(FastMap::default()),
        };
        s.set_rules(rules);
        s
    }

    /// The counts every shard shares.
    pub fn shared(&self) -> &Limiter {
        &self.shared
    }

    /// A reload's rules (requests in flight settle against the ones they took).
    pub fn set_rules(&self, rules: &[RateRule]) {
        let prepared = rules
            .iter()
            .map(|r| {
                let what = what(r);
                let mut limit_line = format!("x-ratelimit-limit-{what}: ").into_bytes();
                push_decimal(&mut limit_line, r.limit);
                limit_line.extend_from_slice(b"\r\nx-ratelimit-remaining-");
                limit_line.extend_from_slice(what.as_bytes());
                limit_line.extend_from_slice(b": ");
                Prepared {
                    rule: r.clone(),
                    fingerprint: fingerprint(r),
                    window_ms: r.window.as_millis().max(1) as u64,
                    limit_line,
                    reset: RefCell::new((u64::MAX, Vec::new())),
                    last: LastFound::default(),
                }
            })
            .collect::<Vec<Prepared>>();
        // Handles on the buckets of rules no longer in force go: were the
        // rule back later, its buckets are rebuilt from the log, not these.
        let live: Vec<u64> = prepared.iter().map(|p| p.fingerprint).collect();
        self.local.borrow_mut().retain(|k, l| {
            let keep = live.contains(&k.0);
            if !keep {
                l.return_lease();
            }
            keep
        });
        *self.rules.borrow_mut() = Rc::new(prepared);
    }

    pub fn is_empty(&self) -> bool {
        self.rules.borrow().is_empty()
    }

    fn local(&self, p: &Prepared, value: &str) -> Rc<Local> {
        p.last
            .get_or(value, || self.find_local(p.fingerprint, value, p.window_ms))
    }

    /// Out of line: run once per scope value, not per request.
    #[cold]
    #[inline(never)]
    fn find_local(&self, fingerprint: u64, value: &str, window_ms: u64) -> Rc<Local> {
        let key = (fingerprint, xxhash_rust::xxh3::xxh3_64(value.as_bytes()));
        let mut map = self.local.borrow_mut();
        if let Some(l) = map.get(&key) {
            return l.clone();
        }
        if map.len() >= LOCAL_CAP {
            map.retain(|_, l| Rc::strong_count(l) > 1 || l.lease_left.get() > 0);
        }
        let l = Rc::new(Local {
            bucket: self.shared.bucket(key, window_ms),
            lease_window: Cell::new(0),
            lease_left: Cell::new(0),
            lease_room: Cell::new(0),
            holders: Cell::new(0),
        });
        map.insert(key, l.clone());
        l
    }

    /// [`ShardLimiter::admit_into`] a fresh admission (for tests).
    #[cfg(test)]
    fn admit(&self, ask: &Ask<'_>) -> Result<Admission, GatewayError> {
        let mut admission = Admission::default();
        self.admit_into(ask, &mut admission)?;
        Ok(admission)
    }

    /// Admits the request under every rule that applies into `admission`
    /// (empty: it is filled where it lives, not moved), or refuses it with
    /// the first rule it would break (a 429 naming the rule, with
    /// `Retry-After` and the rate-limit headers). Nothing is taken from any
    /// rule when one refuses.
    pub fn admit_into(&self, ask: &Ask<'_>, admission: &mut Admission) -> Result<(), GatewayError> {
        debug_assert!(admission.is_empty());
        let rules = self.rules.borrow().clone();
        let mut best: [Option<Shown>; 2] = [None, None];
        for (at, p) in rules.iter().enumerate() {
            let r = &p.rule;
            if !ask.subject.applies(&r.models, &r.keys) {
                continue;
            }
            let value = ask.subject.value(&r.scope);
            let local = self.local(p, value);
            let now = window::position(ask.now_ms, p.window_ms);
            let sliding = r.technique == Technique::Sliding;
            if ask.hit
                && !matches!(
                    (r.count, r.count_cache_hits),
                    (Count::Concurrent, _) | (Count::Requests, true)
                )
            {
                // Not counted, still shown: what is left for the answers
                // that are (this shard's unused lease included).
                let leased = if local.lease_window.get() == now.0 {
                    local.lease_left.get()
                } else {
                    0
                };
                let left = local.bucket.counter.remaining(now, sliding, r.limit) + leased;
                let kind = usize::from(r.count != Count::Requests);
                show(&mut best[kind], at, p, left.min(r.limit), ask.now_ms);
                continue;
            }
            let mut refused = |refusal: Option<Refusal>, want: u64| {
                // What earlier rules took for this request goes back.
                admission.undo();
                Err(refusal_error(p, value, refusal, want, ask.now_ms))
            };
            match r.count {
                Count::Concurrent => {
                    if !local.bucket.counter.enter(r.limit) {
                        return refused(None, 1);
                    }
                    admission.held.push(Held {
                        local,
                        kind: Kind::Concurrent,
                        count_hits: true,
                    });
                }
                Count::Requests => {
                    if local.lease_window.get() != now.0 || local.lease_left.get() == 0 {
                        local.return_lease();
                        // A few units while the window has room, one at a time near its end.
                        let share = 4 * self.shared.shards as u64;
                        let lease = |room: u64| (room / share).clamp(1, MAX_LEASE);
                        match local
                            .bucket
                            .counter
                            .take_with(now, sliding, r.limit, 1, lease)
                        {
                            Ok(Grant {
                                window,
                                units,
                                remaining,
                            }) => {
                                local.lease_window.set(window);
                                local.lease_left.set(units);
                                local.lease_room.set(remaining);
                            }
                            Err(refusal) => return refused(Some(refusal), 1),
                        }
                    }
                    local.lease_left.set(local.lease_left.get() - 1);
                    local.holders.set(local.holders.get() + 1);
                    // As of the lease (others' use since is not seen: an estimate).
                    let remaining = local.lease_room.get() + local.lease_left.get();
                    show(&mut best[0], at, p, remaining, ask.now_ms);
                    admission.held.push(Held {
                        kind: Kind::Request {
                            window: local.lease_window.get(),
                        },
                        local,
                        count_hits: r.count_cache_hits,
                    });
                }
                Count::InputTokens | Count::OutputTokens | Count::TotalTokens => {
                    let output = ask
                        .max_tokens
                        .unwrap_or(r.default_max_tokens)
                        .saturating_mul(ask.choices.max(1));
                    let want = match r.count {
                        Count::InputTokens => ask.input_estimate,
                        Count::OutputTokens => output,
                        _ => ask.input_estimate.saturating_add(output),
                    }
                    .max(1);
                    match local.bucket.counter.take(now, sliding, r.limit, want, want) {
                        Ok(g) => {
                            show(&mut best[1], at, p, g.remaining, ask.now_ms);
                            admission.held.push(Held {
                                local,
                                kind: Kind::Tokens {
                                    count: r.count,
                                    window: g.window,
                                    reserved: want,
                                },
                                count_hits: false,
                            });
                        }
                        Err(refusal) => return refused(Some(refusal), want),
                    }
                }
            }
        }
        if best.iter().any(Option::is_some) {
            admission.shown = best;
            admission.rules = Some(rules);
        }
        Ok(())
    }
}

/// The tightest rule of a kind, for the success headers.
#[derive(Clone, Copy, Debug)]
struct Shown {
    /// Its place in the rules the admission keeps.
    rule: usize,
    remaining: u64,
    reset_ms: u64,
}

impl Shown {
    /// Hand-formatted: this runs for every admitted request.
    fn write(&self, rule: &Prepared, out: &mut Vec<u8>) {
        out.extend_from_slice(&rule.limit_line);
        push_decimal(out, self.remaining);
        // Seconds from 1 s on, as written: rendered once per value.
        let key = if self.reset_ms < 1000 {
            self.reset_ms
        } else {
            self.reset_ms.div_ceil(1000) * 1000
        };
        let mut cached = rule.reset.borrow_mut();
        if cached.0 != key {
            let line = &mut cached.1;
            line.clear();
            line.extend_from_slice(b"\r\nx-ratelimit-reset-");
            line.extend_from_slice(what(&rule.rule).as_bytes());
            line.extend_from_slice(b": ");
            push_go_duration(line, key);
            line.extend_from_slice(b"\r\n");
            cached.0 = key;
        }
        out.extend_from_slice(&cached.1);
    }
}

fn show(best: &mut Option<Shown>, at: usize, p: &Prepared, remaining: u64, now_ms: u64) {
    if best.as_ref().is_some_and(|b| b.remaining <= remaining) {
        return;
    }
    *best = Some(Shown {
        rule: at,
        remaining,
        reset_ms: p.reset_ms(now_ms),
    });
}

/// `1h2m3s`, `6m0s`, `12s`, `250ms`: how OpenAI writes its reset headers.
pub fn go_duration(ms: u64) -> String {
    let mut v = Vec::new();
    push_go_duration(&mut v, ms);
    String::from_utf8_lossy(&v).into_owned()
}

fn push_go_duration(out: &mut Vec<u8>, ms: u64) {
    if ms < 1000 {
        push_decimal(out, ms);
        out.extend_from_slice(b"ms");
        return;
    }
    let s = ms.div_ceil(1000);
    let (h, m, s) = (s / 3600, (s / 60) % 60, s % 60);
    if h > 0 {
        push_decimal(out, h);
        out.push(b'h');
    }
    if h > 0 || m > 0 {
        push_decimal(out, m);
        out.push(b'm');
    }
    push_decimal(out, s);
    out.push(b's');
}

/// The 429 for a rule a request would break (cold: see `budget::exhausted`).
#[cold]
#[inline(never)]
fn refusal_error(
    p: &Prepared,
    value: &str,
    refusal: Option<Refusal>,
    want: u64,
    now_ms: u64,
) -> GatewayError {
    let r = &p.rule;
    let whose = match &r.scope {
        Scope::Gateway => String::new(),
        Scope::Key => format!(" for key `{value}`"),
        Scope::Provider => format!(" for provider `{value}`"),
        Scope::Metadata(f) => format!(" for {f} `{value}`"),
    };
    let (message, wait_ms, what) = match (r.count, refusal) {
        (Count::Concurrent, _) | (_, None) => (
            format!(
                "rate limit `{}` exceeded: at most {} concurrent requests{whose}; retry when one finishes",
                r.name, r.limit
            ),
            1000,
            "requests",
        ),
        (count, Some(refusal)) => {
            let sliding = r.technique == Technique::Sliding;
            let what = if count == Count::Requests {
                "requests"
            } else {
                "tokens"
            };
            let per = format!(
                "{} {} per {} ({})",
                r.limit,
                count.as_str(),
                go_duration(p.window_ms),
                r.technique.as_str()
            );
            match window::wait_ms(&refusal, r.limit, want, p.window_ms, sliding) {
                Some(ms) => (
                    format!(
                        "rate limit `{}` exceeded: {per}{whose}; retry in {}",
                        r.name,
                        go_duration(ms)
                    ),
                    ms,
                    what,
                ),
                None => (
                    format!(
                        "rate limit `{}` ({per}{whose}) can never admit this request: it reserves {want} tokens; lower max_tokens",
                        r.name
                    ),
                    p.window_ms,
                    what,
                ),
            }
        }
    };
    // A request more than the whole limit fails however long it waits: a
    // 400, as a prompt past the context window is, not a 429 to retry.
    let never = want > r.limit && r.count != Count::Concurrent && refusal.is_some();
    let mut e = if never {
        GatewayError::bad_request("request_too_large", message)
    } else {
        GatewayError::rate_limited(message)
    };
    let reset_ms = p.reset_ms(now_ms);
    // What the window has left (less than this request wants).
    let remaining = refusal.map_or(0, |f| {
        let counted = f.current as f64 + (f.previous as f64 * (1.0 - f.elapsed)).ceil();
        r.limit.saturating_sub(counted as u64)
    });
    if !never {
        let _ = write!(
            e.headers,
            "retry-after: {}\r\n",
            wait_ms.div_ceil(1000).max(1)
        );
    }
    let _ = write!(
        e.headers,
        "x-ratelimit-limit-{what}: {}\r\nx-ratelimit-remaining-{what}: {remaining}\r\nx-ratelimit-reset-{what}: {}\r\n",
        r.limit,
        // Never sooner than Retry-After: a sliding window's previous
        // requests may still count past the current window's end.
        go_duration(if r.count == Count::Concurrent {
            wait_ms
        } else {
            reset_ms.max(wait_ms)
        })
    );
    e
}

#[derive(Debug)]
enum Kind {
    Request {
        window: u32,
    },
    Concurrent,
    Tokens {
        count: Count,
        window: u32,
        reserved: u64,
    },
}

#[derive(Debug)]
struct Held {
    local: Rc<Local>,
    kind: Kind,
    /// A cache hit keeps its `requests` unit.
    count_hits: bool,
}

/// What one request holds under the rules: settle it with the usage; what is
/// not settled is given back when it drops.
#[must_use = "an admission holds units until it settles or drops"]
#[derive(Debug, Default)]
pub struct Admission {
    /// Inline for the usual few rules: no allocation per request.
    held: SmallVec<[Held; 4]>,
    /// The tightest rule of each kind (requests, tokens), for the success
    /// headers, rendered only when they are written.
    shown: [Option<Shown>; 2],
    /// The rules `shown` points into (a reload may have replaced the shard's since).
    rules: Option<Rc<Vec<Prepared>>>,
}

impl Admission {
    /// Writes the `x-ratelimit-*` lines of a successful answer (nothing when
    /// no rule applied).
    pub fn write_headers(&self, out: &mut Vec<u8>) {
        let Some(rules) = &self.rules else { return };
        for s in self.shown.iter().flatten() {
            s.write(&rules[s.rule], out);
        }
    }

    /// Whether [`Admission::write_headers`] writes anything.
    pub fn has_headers(&self) -> bool {
        self.rules.is_some()
    }

    /// The answer came from the cache: token reservations are given back, and
    /// `requests` units too unless the rule counts cache hits.
    pub fn cache_hit(&mut self) {
        self.held.retain(|h| match h.kind {
            Kind::Tokens {
                window, reserved, ..
            } => {
                h.local.bucket.counter.give_back(window, reserved);
                false
            }
            Kind::Request { window } if !h.count_hits => {
                let l = &h.local;
                if l.lease_window.get() == window {
                    l.lease_left.set(l.lease_left.get() + 1);
                } else {
                    l.bucket.counter.give_back(window, 1);
                }
                release(l);
                false
            }
            _ => true,
        });
    }

    /// Settles token reservations to what the provider reported (`None`:
    /// nothing reported, so the reservation stands as the charge). `now_ms`
    /// is read only when usage passed a reservation (the debt goes into the
    /// window of now).
    pub fn settle(&mut self, used: Option<(u64, u64)>, now_ms: impl Fn() -> u64) {
        for h in &mut self.held {
            let Kind::Tokens {
                count,
                window,
                reserved,
            } = &mut h.kind
            else {
                continue;
            };
            let Some((input, output)) = used else {
                *reserved = 0;
                continue;
            };
            let actual = match count {
                Count::InputTokens => input,
                Count::OutputTokens => output,
                _ => input + output,
            };
            let counter = &h.local.bucket.counter;
            if actual > *reserved {
                let now = window::position(now_ms(), h.local.bucket.window_ms).0;
                counter.add(now, actual - *reserved);
            } else {
                counter.give_back(*window, *reserved - actual);
            }
            *reserved = 0;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Gives back everything: the request was refused (by a later rule, or
    /// by a budget).
    pub fn undo(&mut self) {
        for h in &mut self.held {
            h.count_hits = false;
        }
        self.cache_hit();
    }
}

fn release(l: &Local) {
    let n = l.holders.get().saturating_sub(1);
    l.holders.set(n);
    if n == 0 {
        l.return_lease();
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        for h in self.held.drain(..) {
            match h.kind {
                Kind::Request { .. } => release(&h.local),
                Kind::Concurrent => h.local.bucket.counter.leave(),
                Kind::Tokens {
                    window, reserved, ..
                } => h.local.bucket.counter.give_back(window, reserved),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn limiter(toml: &str, shards: usize) -> (Arc<Limiter>, ShardLimiter) {
        let c = Config::from_toml(toml).unwrap();
        let shared = Limiter::new(shards);
        let s = ShardLimiter::new(shared.clone(), &c.rate_limits);
        (shared, s)
    }

    fn ask<'a>(key: Option<&'a str>, meta: &'a [(String, String)]) -> Ask<'a> {
        Ask {
            subject: Subject {
                key_id: key,
                provider: "openai",
                model: Some("gpt-4o"),
                key_metadata: meta,
                metadata: None,
            },
            input_estimate: 100,
            max_tokens: Some(50),
            choices: 1,
            now_ms: 1_000_000,
            hit: false,
        }
    }

    const NONE: &[(String, String)] = &[];

    #[test]
    fn two_shards_admit_exactly_the_limit_between_them() {
        let rules = "[[rate_limits]]\nscope = \"key\"\ncount = \"requests\"\nlimit = 100\nwindow = \"30d\"\n";
        let (shared, a) = limiter(rules, 2);
        let b = ShardLimiter::new(shared, &Config::from_toml(rules).unwrap().rate_limits);
        let mut held = Vec::new();
        let mut admitted = 0;
        for i in 0..300 {
            let s = if i % 3 == 0 { &a } else { &b };
            if let Ok(adm) = s.admit(&ask(Some("alice"), NONE)) {
                admitted += 1;
                held.push(adm);
            }
        }
        // Units leased but unused went back as their shards emptied; with
        // everything in flight, each shard used what it leased.
        drop(held);
        let more = (0..300)
            .filter(|i| {
                let s = if i % 2 == 0 { &a } else { &b };
                s.admit(&ask(Some("alice"), NONE)).is_ok()
            })
            .count();
        assert_eq!(admitted + more, 100);
        // Another key has its own count.
        assert!(a.admit(&ask(Some("bob"), NONE)).is_ok());
    }

    /// On a sliding rule the limit is whole again a window after the
    /// current one ends (its count is looked back on, weighted, until then).
    #[test]
    fn a_sliding_rule_resets_when_its_count_has_left_the_look_back() {
        let (_, s) = limiter(
            "[[rate_limits]]\nscope = \"key\"\ncount = \"requests\"\nlimit = 10\nwindow = \"60s\"\ntechnique = \"sliding\"\n",
            1,
        );
        let mut out = Vec::new();
        s.admit(&ask(Some("k"), NONE))
            .unwrap()
            .write_headers(&mut out);
        // 1,000,000 ms: 20 s left in its minute, then a whole minute more.
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("x-ratelimit-reset-requests: 1m20s\r\n"),
            "{text}"
        );
    }

    #[test]
    fn success_lines_name_the_tightest_rule_of_each_kind_exactly() {
        let (_, s) = limiter(
            "[[rate_limits]]\nscope = \"key\"\ncount = \"requests\"\nlimit = 10\nwindow = \"60s\"\ntechnique = \"fixed\"\n\
             [[rate_limits]]\nscope = \"key\"\ncount = \"requests\"\nlimit = 5\nwindow = \"1h\"\ntechnique = \"fixed\"\n\
             [[rate_limits]]\nscope = \"key\"\ncount = \"total_tokens\"\nlimit = 1000\nwindow = \"60s\"\ntechnique = \"fixed\"\n",
            1,
        );
        let lines = |a: &Admission| {
            let mut out = Vec::new();
            a.write_headers(&mut out);
            String::from_utf8(out).unwrap()
        };
        let first = s.admit(&ask(Some("k"), NONE)).unwrap();
        // 1,000,000 ms: 20 s left in its minute, 2,600 s (43m20s) in its hour.
        let want = "x-ratelimit-limit-requests: 5\r\nx-ratelimit-remaining-requests: 4\r\nx-ratelimit-reset-requests: 43m20s\r\n\
                    x-ratelimit-limit-tokens: 1000\r\nx-ratelimit-remaining-tokens: 850\r\nx-ratelimit-reset-tokens: 20s\r\n";
        assert_eq!(lines(&first), want);
        // The rendered reset is remembered per value: a second admission
        // (another second) renders its own.
        let mut later = ask(Some("k"), NONE);
        later.now_ms += 1000;
        let second = s.admit(&later).unwrap();
        assert!(lines(&second).contains("x-ratelimit-reset-tokens: 19s\r\n"));
        assert!(lines(&second).contains("x-ratelimit-remaining-requests: 3\r\n"));
        // A reload does not change what an admission already holds.
        s.set_rules(&[]);
        assert_eq!(lines(&first), want);
        assert!(!s.admit(&ask(Some("k"), NONE)).unwrap().has_headers());
    }

    #[test]
    fn a_refusal_names_the_rule_and_says_when_to_retry() {
        let (_, s) = limiter(
            "[[rate_limits]]\nname = \"tiny\"\nscope = \"key\"\ncount = \"requests\"\nlimit = 1\nwindow = \"60s\"\ntechnique = \"fixed\"\n",
            1,
        );
        let first = s.admit(&ask(Some("k"), NONE)).unwrap();
        let mut lines = Vec::new();
        first.write_headers(&mut lines);
        let shown = String::from_utf8(lines).unwrap();
        assert!(
            shown.contains("x-ratelimit-remaining-requests: 0"),
            "{shown}"
        );
        let e = s.admit(&ask(Some("k"), NONE)).unwrap_err();
        assert_eq!(e.status, 429);
        assert!(
            e.message.contains("`tiny`") && e.message.contains("key `k`"),
            "{}",
            e.message
        );
        // 1,000,000 ms is 40 s into its minute: 20 s to go.
        assert!(e.headers.contains("retry-after: 20\r\n"), "{}", e.headers);
        assert!(e.headers.contains("x-ratelimit-limit-requests: 1\r\n"));
        assert!(e.headers.contains("x-ratelimit-reset-requests: 20s\r\n"));
        assert!(e.headers.contains("x-ratelimit-remaining-requests: 0\r\n"));
        // Sliding: this minute's request still counts, weighted, into the
        // next, so the retry is past the window's end, and the reset with it.
        let (_, s) = limiter(
            "[[rate_limits]]\nname = \"tiny\"\nscope = \"key\"\ncount = \"requests\"\nlimit = 1\nwindow = \"60s\"\ntechnique = \"sliding\"\n",
            1,
        );
        drop(s.admit(&ask(Some("k"), NONE)).unwrap());
        let e = s.admit(&ask(Some("k"), NONE)).unwrap_err();
        // 40 s into the minute: 20 s to its end, then the request, weighted
        // and rounded up, counts as one all through the next minute.
        assert!(e.headers.contains("retry-after: 80\r\n"), "{}", e.headers);
        assert!(
            e.headers.contains("x-ratelimit-reset-requests: 1m20s\r\n"),
            "{}",
            e.headers
        );
        // A request more than the whole limit is a 400, never asked to come
        // back, and what the window has left is said as it is.
        let (_, s) = limiter(
            "[[rate_limits]]\nname = \"small\"\nscope = \"key\"\ncount = \"output_tokens\"\nlimit = 40\nwindow = \"60s\"\ntechnique = \"fixed\"\n",
            1,
        );
        let e = s.admit(&ask(Some("k"), NONE)).unwrap_err();
        assert_eq!((e.status, e.code), (400, "request_too_large"));
        assert!(e.message.contains("can never admit"), "{}", e.message);
        assert!(!e.headers.contains("retry-after"), "{}", e.headers);
        assert!(
            e.headers.contains("x-ratelimit-remaining-tokens: 40\r\n"),
            "{}",
            e.headers
        );
        // One that fits a window but not what is left of this one: told
        // when, and what is left.
        let (_, s) = limiter(
            "[[rate_limits]]\nname = \"small\"\nscope = \"key\"\ncount = \"output_tokens\"\nlimit = 80\nwindow = \"60s\"\ntechnique = \"fixed\"\n",
            1,
        );
        let held = s.admit(&ask(Some("k"), NONE)).unwrap();
        let e = s.admit(&ask(Some("k"), NONE)).unwrap_err();
        assert!(e.headers.contains("retry-after: 20\r\n"), "{}", e.headers);
        assert!(
            e.headers.contains("x-ratelimit-remaining-tokens: 30\r\n"),
            "{}",
            e.headers
        );
        drop(held);
    }

    #[test]
    fn concurrency_is_held_until_the_admission_drops() {
        let (_, s) = limiter(
            "[[rate_limits]]\nscope = \"gateway\"\ncount = \"concurrent\"\nlimit = 2\n",
            1,
        );
        let a = s.admit(&ask(None, NONE)).unwrap();
        let _b = s.admit(&ask(None, NONE)).unwrap();
        assert!(s.admit(&ask(None, NONE)).is_err());
        drop(a);
        assert!(s.admit(&ask(None, NONE)).is_ok());
    }

    #[test]
    fn tokens_reserve_then_settle_and_carry_debt() {
        let (_, s) = limiter(
            "[[rate_limits]]\nscope = \"metadata.user\"\ncount = \"total_tokens\"\nlimit = 1000\nwindow = \"30d\"\ntechnique = \"fixed\"\n",
            1,
        );
        let ann: &[(String, String)] = &[("user".to_string(), "ann".to_string())];
        // 100 + 50 reserved each: six fit, the seventh does not.
        let held: Vec<_> = (0..6).map(|_| s.admit(&ask(None, ann)).unwrap()).collect();
        assert!(s.admit(&ask(None, ann)).is_err());
        // Someone else's user has their own count.
        assert!(s.admit(&ask(None, NONE)).is_ok());
        // Each used 20: 780 left.
        for mut h in held {
            h.settle(Some((10, 10)), || 1_000_000);
        }
        let many: Vec<_> = (0..5).map(|_| s.admit(&ask(None, ann)).unwrap()).collect();
        // 750 reserved; one uses 600 beyond its 150: debt fills the window.
        for (i, mut h) in many.into_iter().enumerate() {
            h.settle(Some(if i == 0 { (300, 450) } else { (0, 0) }), || 1_000_000);
        }
        // 120 + 750 = 870 counted: 130 left, less than 150.
        assert!(s.admit(&ask(None, ann)).is_err());
        // A dropped admission (never reached a provider) gives its reservation back.
        let mut small = ask(None, ann);
        small.max_tokens = Some(10);
        small.input_estimate = 10;
        let h = s.admit(&small).unwrap();
        drop(h);
        assert!(s.admit(&small).is_ok());
    }

    #[test]
    fn a_cache_hit_gives_its_request_unit_back_unless_hits_count() {
        let (_, s) = limiter(
            "[[rate_limits]]\nscope = \"key\"\ncount = \"requests\"\nlimit = 1\nwindow = \"30d\"\n",
            1,
        );
        let mut a = s.admit(&ask(Some("k"), NONE)).unwrap();
        a.cache_hit();
        drop(a);
        let b = s.admit(&ask(Some("k"), NONE)).unwrap();
        drop(b);
        assert!(s.admit(&ask(Some("k"), NONE)).is_err());
        let (_, s) = limiter(
            "[[rate_limits]]\nscope = \"key\"\ncount = \"requests\"\nlimit = 1\nwindow = \"30d\"\ncount_cache_hits = true\n",
            1,
        );
        let mut a = s.admit(&ask(Some("k"), NONE)).unwrap();
        a.cache_hit();
        drop(a);
        assert!(s.admit(&ask(Some("k"), NONE)).is_err());
    }

    #[test]
    fn a_hit_shows_what_is_left_and_takes_nothing() {
        let (_, s) = limiter(
            "[[rate_limits]]\nscope = \"key\"\ncount = \"requests\"\nlimit = 3\nwindow = \"30d\"\n\
             [[rate_limits]]\nscope = \"key\"\ncount = \"total_tokens\"\nlimit = 1000\nwindow = \"30d\"\n",
            1,
        );
        let held = s.admit(&ask(Some("k"), NONE)).unwrap();
        let hit = Ask {
            hit: true,
            ..ask(Some("k"), NONE)
        };
        let headers = |a: &Admission| {
            let mut out = Vec::new();
            a.write_headers(&mut out);
            String::from_utf8(out).unwrap()
        };
        for _ in 0..5 {
            let a = s.admit(&hit).unwrap();
            assert!(a.is_empty(), "a hit holds nothing");
            let h = headers(&a);
            assert!(h.contains("x-ratelimit-remaining-requests: 2\r\n"), "{h}");
            // 100 input + 50 output reserved by the request in flight.
            assert!(h.contains("x-ratelimit-remaining-tokens: 850\r\n"), "{h}");
        }
        drop(held);
        assert!(
            headers(&s.admit(&hit).unwrap()).contains("x-ratelimit-remaining-tokens: 1000\r\n")
        );
    }

    #[test]
    fn rules_apply_to_their_models_only() {
        let (_, s) = limiter(
            "[[rate_limits]]\nscope = \"gateway\"\ncount = \"requests\"\nlimit = 1\nwindow = \"30d\"\nmodels = [\"anthropic/*\"]\n",
            1,
        );
        for _ in 0..3 {
            let a = s.admit(&ask(None, NONE)).unwrap();
            assert!(a.is_empty());
        }
    }

    #[test]
    fn durations_read_like_openais() {
        assert_eq!(go_duration(250), "250ms");
        assert_eq!(go_duration(12_000), "12s");
        assert_eq!(go_duration(360_000), "6m0s");
        assert_eq!(go_duration(3_723_000), "1h2m3s");
    }
}
