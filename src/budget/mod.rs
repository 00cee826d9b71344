//! Budgets: dollars a scope may spend per window. Stage 1b of the pipeline,
//! beside the rate limits: a request is admitted only if the worst case of
//! what it may cost fits what is left, and that worst case is reserved; when
//! it ends, the reservation settles to the real cost (the rest refunded), and
//! a reservation dropped unsettled refunds itself.
//!
//! Worst case: every byte of the request body as an input token (no token is
//! shorter than a byte) plus `max_tokens` (else the budget's
//! `default_max_tokens`) output tokens, at the model's prices (or the
//! request's `custom-cost`). With `max_tokens` set, spend therefore never
//! passes a budget, however many requests race for its last dollar; without
//! it, by at most what such requests use beyond `default_max_tokens`. A model
//! without a price reserves nothing and is never refused for it, but an
//! exhausted budget refuses every request in its scope.
//!
//! Spend is counted in micro-dollars (a window's charges summed exactly,
//! then rounded up) in one atomic word per bucket with its window's number,
//! shared by every shard: a reservation is a compare-and-swap that never
//! passes the budget. The amount in force is taken when a window begins, so
//! a lower amount set by a reload never blocks spend from before it; a
//! changed window is a new set of buckets.
//!
//! A duration window (rolling) keeps its spend in [`PARTS`] parts of the
//! duration and one more ([`Ring`]): what counts at any moment is every part
//! that overlaps the last duration, the oldest whole. So spend in any span of
//! the duration's length never passes the amount (the count never leaves out
//! a charge of that span), and the count holds at most two parts' worth of
//! time more than the span (spend leaves it up to 2/16 of the duration late).

use crate::calendar::{DAY_MS, month_of};
use crate::config::limits::Scope;
use crate::config::{BudgetRule, BudgetWindow};
use crate::error::GatewayError;
use crate::fasthash::{FastMap, LastFound};
use crate::limit::Subject;
use crate::limit::window::Windows;
use dashmap::DashMap;
use smallvec::SmallVec;
use std::cell::RefCell;
use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The scope value of requests without one.
pub const NO_VALUE: &str = crate::limit::NO_VALUE;

/// Spend is counted in micro-dollars, 40 bits a window (over $1M).
type SpendWindows = Windows<40>;

/// USD to micro-dollars, rounded up (a charge is never under-counted) once
/// the float's noise is gone: $0.0259 is 25,900, not 25,901 (which, a
/// micro-dollar a request, set budgets apart from the logged costs).
pub fn micros(usd: f64) -> u64 {
    if usd.is_finite() && usd > 0.0 {
        crate::num::round_u64(usd * 1e9).div_ceil(1000)
    } else {
        0
    }
}

/// USD to pico-dollars (a cost is rounded to one): what a charge really
/// is, where the counters keep micro-dollars. Past $10M, whole
/// micro-dollars, rounded up.
pub fn picos(usd: f64) -> u64 {
    if !(usd.is_finite() && usd > 0.0) {
        0
    } else if usd < 1e7 {
        crate::num::round_u64(usd * 1e12)
    } else {
        crate::num::ceil_u64(usd * 1e6).saturating_mul(PICOS_PER_MICRO)
    }
}

const PICOS_PER_MICRO: u64 = 1_000_000;

/// Where a time falls in a budget window: its number (the window an amount
/// is taken for, and an alert raised once in), its start and end (Unix ms),
/// and where spend is counted: the window itself (calendar), or (rolling)
/// the part of the duration it is in, `part_ms` long.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Slot {
    pub window: u32,
    /// Calendar: the window's bounds. Rolling: the start of the oldest part
    /// counted now and the end of the current one (when spend may next leave
    /// the count).
    pub start_ms: u64,
    pub end_ms: u64,
    /// Calendar: the window's number. Rolling: the part's (`now / part_ms`).
    pub part: u64,
    /// 0 for calendar windows.
    pub part_ms: u64,
}

impl Slot {
    fn rolling(&self) -> bool {
        self.part_ms != 0
    }
}

/// Parts a rolling budget's duration is cut into (see the module's text).
pub const PARTS: u64 = 16;

pub fn slot(window: BudgetWindow, now_ms: u64) -> Slot {
    match window {
        BudgetWindow::Daily => {
            let w = now_ms / DAY_MS;
            Slot {
                window: w as u32,
                start_ms: w * DAY_MS,
                end_ms: (w + 1) * DAY_MS,
                part: u64::from(w as u32),
                part_ms: 0,
            }
        }
        BudgetWindow::Monthly => {
            let (w, start_ms, end_ms) = month_of(now_ms);
            Slot {
                window: w,
                start_ms,
                end_ms,
                part: u64::from(w),
                part_ms: 0,
            }
        }
        BudgetWindow::Rolling(d) => {
            let len = (d.as_millis() as u64).max(1);
            let part_ms = len.div_ceil(PARTS);
            let part = now_ms / part_ms;
            Slot {
                window: (now_ms / len) as u32,
                start_ms: part.saturating_sub(PARTS) * part_ms,
                end_ms: (part + 1) * part_ms,
                part,
                part_ms,
            }
        }
    }
}

/// One budget's spend for one scope value.
#[derive(Debug, Default)]
pub struct Spend {
    /// Calendar windows: this window's spend and the last one's.
    windows: SpendWindows,
    /// Rolling windows: spend by part.
    ring: Ring,
    /// The amount in force and the window it was taken for.
    amount: SpendWindows,
    /// Pico-dollars the current window's spend counts beyond what was
    /// charged in it (under a micro-dollar: each charge is rounded up to a
    /// whole micro-dollar, and the next charge of the window uses what the
    /// last one overpaid). A window's count is therefore its charges' exact sum
    /// rounded up once, not once a charge: a $0.0000004 embedding call adds
    /// 0.4 µ$, not 1 µ$.
    credit: SpendWindows,
    /// The window whose alert was raised (+1; 0: none yet).
    alerted: AtomicU64,
}

impl Spend {
    /// The whole micro-dollars to count for a charge of `picos` to `window`
    /// (the current one, or the one just before it): what the window's
    /// credit does not cover, rounded up; what that overpays becomes its
    /// credit. The caller counts them (in one step with any reservation it
    /// gives back, so the count never dips below what is spent).
    fn micros_to_count(&self, window: u32, picos: u64) -> u64 {
        loop {
            let (w, credit) = self.credit.rolled(window);
            if w != SpendWindows::number(window) {
                // Spend of the window before the credit's: rounded up alone.
                return picos.div_ceil(PICOS_PER_MICRO);
            }
            let used = credit.min(picos);
            let rest = picos - used;
            let micros = rest.div_ceil(PICOS_PER_MICRO);
            // Under a micro-dollar (saturating: a charge near u64::MAX
            // picos is counted whole, never wrapped).
            let over = micros.saturating_mul(PICOS_PER_MICRO).saturating_sub(rest);
            let left = (credit - used)
                .saturating_add(over)
                .min(PICOS_PER_MICRO - 1);
            if self.credit.swap(w, credit, left) {
                return micros;
            }
        }
    }

    /// The amount for `window`: taken from `configured` when the window is
    /// new to this bucket, kept for the rest of it. True when this call took it.
    fn amount(&self, window: u32, configured: u64) -> (u64, bool) {
        let (w, amount) = self.amount.rolled(window);
        if amount != 0 || w != SpendWindows::number(window) {
            return (amount, false);
        }
        // New to this window: it takes the amount configured now.
        let took = self.amount.swap(w, 0, configured);
        (self.amount.rolled(window).1, took)
    }

    /// The amount taken for `window`, if one is.
    fn amount_taken(&self, window: u32) -> Option<u64> {
        let (w, amount) = self.amount.rolled(window);
        (w == SpendWindows::number(window) && amount != 0).then_some(amount)
    }

    /// Sets the amount of `window` (the current one) to what an earlier run
    /// took for it, unless one is taken already.
    fn restore_amount(&self, window: u32, amount: u64) {
        let (w, taken) = self.amount.rolled(window);
        if w == SpendWindows::number(window) && taken == 0 {
            let _ = self.amount.swap(w, 0, amount);
        }
    }

    /// Spend counted now: the window's (calendar), or every part of the
    /// last duration's (rolling).
    pub fn spent(&self, s: &Slot) -> u64 {
        if s.rolling() {
            return self.ring.scan(s.part, None).0;
        }
        let (w, cur) = self.windows.rolled(s.window);
        cur.saturating_add(self.ahead_previous(s, w))
    }

    /// A calendar window's predecessor counts only when the stored window
    /// is newer than `s` (another shard's clock is ahead): then the window
    /// `s` is in still counts, whole. Never less than is due.
    fn ahead_previous(&self, s: &Slot, w: u32) -> u64 {
        if w > SpendWindows::number(s.window) {
            self.windows.previous_of(w)
        } else {
            0
        }
    }

    /// When, adding nothing more, the spend counted falls to `room` or
    /// below: a calendar window's end; in a rolling one, when enough of the
    /// oldest parts have left the count.
    fn fits_at(&self, s: &Slot, room: u64) -> u64 {
        if s.rolling() {
            self.ring.fits_at(s, room)
        } else {
            s.end_ms
        }
    }

    /// Reserves `amount` if the budget is not spent and it fits; returns
    /// where it counts (the window, or the part), to settle it there.
    fn reserve(&self, s: &Slot, budget: u64, amount: u64) -> Result<u64, u64> {
        if s.rolling() {
            return self.ring.reserve(s.part, budget, amount);
        }
        loop {
            let (w, spent) = self.windows.rolled(s.window);
            let counted = spent.saturating_add(self.ahead_previous(s, w));
            if counted >= budget || counted.saturating_add(amount) > budget {
                return Err(counted);
            }
            if self.windows.swap(w, spent, spent + amount) {
                return Ok(u64::from(w));
            }
        }
    }

    /// Adds spend where it counts (`at`, from [`Spend::reserve`] or the
    /// slot of the time it was spent), if it still counts.
    pub fn add(&self, s: &Slot, at: u64, amount: u64) {
        if s.rolling() {
            self.ring.add(at, amount);
        } else {
            self.windows.add(at as u32, amount);
        }
    }

    /// Takes back spend reserved at `at`, if it still counts.
    fn give_back(&self, s: &Slot, at: u64, amount: u64) {
        if s.rolling() {
            self.ring.give_back(at, amount);
        } else {
            self.windows.give_back(at as u32, amount);
        }
    }
}

/// A rolling budget's spend by part: [`PARTS`] + 1 words, part `p` in word
/// `p % (PARTS + 1)`, each packed as the calendar windows' words are (the
/// part's number in the bits above its micro-dollars: [`SpendWindows::pack`]).
/// Counted at part `k`: the words
/// holding parts `k - PARTS ..= k`, and any a part or more ahead (another
/// shard's clock): never less than is due.
///
/// A reservation is a compare-and-swap on its part's word that never passes
/// the budget given what the other words held. Two reservations in two parts
/// at once (one shard's clock just past a part's turn, another's not) could
/// each miss the other's: so after its swap each reads the other words again
/// and, if they grew meanwhile, gives its reservation back and counts again
/// (sequentially consistent: of two such, at least one sees the other).
#[derive(Debug, Default)]
struct Ring {
    words: [AtomicU64; RING],
}

const RING: usize = PARTS as usize + 1;

/// Where a word's part stands from part `k`'s view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Age {
    /// `k` itself, or `n` parts before it (`n <= PARTS`): counted.
    Behind(u64),
    /// `n` parts after it (`n <= PARTS`): counted.
    Ahead(u64),
    /// Older than the count (or never written): not counted.
    Stale,
}

impl Ring {
    fn pack(part: u64, count: u64) -> u64 {
        SpendWindows::pack(part as u32, count)
    }

    /// A word's count.
    fn count(word: u64) -> u64 {
        SpendWindows::unpack(word).1
    }

    /// The word part `part` is kept in.
    fn index(part: u64) -> usize {
        (part % RING as u64) as usize
    }

    /// How the part in `word` stands from part `k`. The stored numbers wrap
    /// (after 2^24 parts): a word left unused that long reads as stale but
    /// for a few numbers in 2^24.
    fn age(word: u64, k: u64) -> Age {
        if word == 0 {
            return Age::Stale;
        }
        let number = u64::from(SpendWindows::unpack(word).0);
        let mask = u64::from(SpendWindows::number(u32::MAX));
        let behind = k.wrapping_sub(number) & mask;
        let ahead = number.wrapping_sub(k) & mask;
        if behind <= PARTS {
            Age::Behind(behind)
        } else if ahead <= PARTS {
            Age::Ahead(ahead)
        } else {
            Age::Stale
        }
    }

    /// What the words but `skip` count at part `k`, and the newest part
    /// among them (`k` if none is ahead).
    fn scan(&self, k: u64, skip: Option<usize>) -> (u64, u64) {
        let (mut sum, mut newest) = (0u64, k);
        for (i, w) in self.words.iter().enumerate() {
            if Some(i) == skip {
                continue;
            }
            let word = w.load(Ordering::SeqCst);
            match Self::age(word, k) {
                Age::Behind(_) => sum = sum.saturating_add(Self::count(word)),
                Age::Ahead(n) => {
                    sum = sum.saturating_add(Self::count(word));
                    newest = newest.max(k + n);
                }
                Age::Stale => {}
            }
        }
        (sum, newest)
    }

    /// Reserves `amount` at part `k` (or the newest part another shard
    /// counts in, if ahead) if the count leaves room; returns the part.
    fn reserve(&self, mut k: u64, budget: u64, amount: u64) -> Result<u64, u64> {
        loop {
            let i = Self::index(k);
            let word = self.words[i].load(Ordering::SeqCst);
            let count = match Self::age(word, k) {
                Age::Behind(0) => Self::count(word),
                Age::Ahead(n) => {
                    k += n;
                    continue;
                }
                // An older part's word (never an older counted one: those
                // are kept in other words): this part starts in it.
                Age::Behind(_) | Age::Stale => 0,
            };
            let (others, newest) = self.scan(k, Some(i));
            if newest > k {
                k = newest;
                continue;
            }
            let counted = others.saturating_add(count);
            if counted >= budget || counted.saturating_add(amount) > budget {
                return Err(counted);
            }
            let to = Self::pack(k, count + amount);
            if self.words[i]
                .compare_exchange(word, to, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                continue;
            }
            if self.scan(k, Some(i)).0 > others {
                // Another part's word grew meanwhile: a reservation there
                // may not have seen this one. Given back; counted again.
                self.give_back(k, amount);
                continue;
            }
            return Ok(k);
        }
    }

    /// Adds `amount` to part `k` (a charge past its reservation, or the
    /// log's rebuild), unless a newer part holds its word (then `k` is no
    /// longer counted).
    fn add(&self, k: u64, amount: u64) {
        if amount == 0 {
            return;
        }
        let w = &self.words[Self::index(k)];
        let _ = w.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |word| {
            match Self::age(word, k) {
                Age::Behind(0) => Some(Self::pack(k, Self::count(word).saturating_add(amount))),
                Age::Behind(_) | Age::Stale => Some(Self::pack(k, amount)),
                Age::Ahead(_) => None,
            }
        });
    }

    /// Takes back `amount` reserved at part `k`, if its word still holds it.
    fn give_back(&self, k: u64, amount: u64) {
        let w = &self.words[Self::index(k)];
        let _ = w.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |word| {
            (Self::age(word, k) == Age::Behind(0))
                .then(|| Self::pack(k, Self::count(word).saturating_sub(amount)))
        });
    }

    /// When the count at `s` falls to `room`, adding nothing: the turn of
    /// the part after which enough of the oldest parts have left it.
    fn fits_at(&self, s: &Slot, room: u64) -> u64 {
        // By age, oldest first: index j holds part k - PARTS + j.
        let mut by_age = [0u64; RING];
        let mut left = 0u64;
        for w in &self.words {
            let word = w.load(Ordering::SeqCst);
            let count = Self::count(word);
            match Self::age(word, s.part) {
                Age::Behind(n) => by_age[(PARTS - n) as usize] = count,
                Age::Ahead(_) => {}
                Age::Stale => continue,
            }
            left = left.saturating_add(count);
        }
        // Part k - PARTS + j is counted until part k + j + 1 begins.
        for (j, count) in by_age.iter().enumerate() {
            if left <= room {
                return (s.part + j as u64) * s.part_ms;
            }
            left = left.saturating_sub(*count);
        }
        if left <= room {
            (s.part + RING as u64) * s.part_ms
        } else {
            // Spend counted ahead of this part: after it leaves, at the latest.
            (s.part + 2 * RING as u64) * s.part_ms
        }
    }
}

/// One budget bucket in the shared table.
#[derive(Debug)]
pub struct Bucket {
    pub spend: Spend,
    /// Its budget's window (a sweep drops buckets whose spend no longer counts).
    window: BudgetWindow,
    /// Which budget (its index when the bucket was made) and scope value, for `/usage`.
    pub rule: String,
    pub value: Box<str>,
}

/// A budget as the shards apply it.
#[derive(Debug, Clone)]
struct Prepared {
    rule: BudgetRule,
    /// Identifies its buckets: its name, per what, over which window, which
    /// models (not the amount: a new amount applies from the next window).
    fingerprint: u64,
    amount: u64,
    /// The bucket of the scope value this budget saw last.
    last: LastFound<Arc<Bucket>>,
}

fn fingerprint(r: &BudgetRule) -> u64 {
    // The name too: two budgets alike in all else (a $100 and a $10 one)
    // are two sets of buckets, each with its own amount.
    xxhash_rust::xxh3::xxh3_64(
        format!(
            "{:?}|{:?}|{:?}|{:?}|{}",
            r.scope, r.window, r.models, r.keys, r.name
        )
        .as_bytes(),
    )
}

/// The budgets of `after` whose spend `before` did not keep (new, or changed
/// in per what, over which window or which models): a reload rebuilds them
/// from the request log, as a restart does.
pub fn fresh_rules(before: &[BudgetRule], after: &[BudgetRule]) -> Vec<BudgetRule> {
    let kept: Vec<u64> = before.iter().map(fingerprint).collect();
    after
        .iter()
        .filter(|r| !kept.contains(&fingerprint(r)))
        .cloned()
        .collect()
}

fn prepare(rules: &[BudgetRule]) -> Vec<Prepared> {
    rules
        .iter()
        .map(|r| Prepared {
            fingerprint: fingerprint(r),
            amount: micros(r.usd),
            rule: r.clone(),
            last: LastFound::default(),
        })
        .collect()
}

/// The amount a bucket took for a window. The request log's store keeps
/// them, so a restart goes on with the amount each window began with, as a
/// reload does (a new amount applies from the next window).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InForce {
    /// The budget's fingerprint (name, per what, over which window, which models).
    pub budget: u64,
    pub value: String,
    /// The window's number, as stored.
    pub window: u32,
    pub micros: u64,
}

/// Most amounts taken that wait for the log thread; more are not kept (a
/// restart in their window takes the configured amount).
const TAKEN_MAX: usize = 1 << 16;

/// Every budget's buckets, shared by the shards, the admin socket (`/usage`)
/// and the start-up rebuild.
pub struct Budgets {
    buckets: DashMap<(u64, u64), Arc<Bucket>>,
    /// Alerts raised (a warning logged) since start.
    pub alerts: AtomicU64,
    /// Amounts buckets took for a new window, for the log thread to store
    /// (once a bucket a window: not a lock a request).
    taken: std::sync::Mutex<Vec<InForce>>,
    /// The budgets (fingerprints) whose stored amounts the log thread keeps
    /// at its next round; the others' go (a budget removed, or changed in
    /// what it is, and brought back later starts anew).
    keep: std::sync::Mutex<Option<Vec<u64>>>,
}

impl Budgets {
    pub fn new() -> Arc<Budgets> {
        Arc::new(Budgets {
            buckets: DashMap::new(),
            alerts: AtomicU64::new(0),
            taken: std::sync::Mutex::new(Vec::new()),
            keep: std::sync::Mutex::new(None),
        })
    }

    /// Asks the log thread to keep the stored amounts of `rules` only.
    pub fn keep_amounts_of(&self, rules: &[BudgetRule]) {
        *self.keep.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(rules.iter().map(fingerprint).collect());
    }

    /// The budgets whose stored amounts to keep, once asked.
    pub fn take_keep(&self) -> Option<Vec<u64>> {
        self.keep.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// The amount `b` applies in `window`, noting it when the bucket takes
    /// it now.
    fn amount(&self, p: &Prepared, b: &Bucket, window: u32) -> u64 {
        let (amount, took) = b.spend.amount(window, p.amount);
        if took {
            let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
            if taken.len() < TAKEN_MAX {
                taken.push(InForce {
                    budget: p.fingerprint,
                    value: b.value.to_string(),
                    window: SpendWindows::number(window),
                    micros: amount,
                });
            }
        }
        amount
    }

    /// The amounts taken since the last call (the log thread stores them).
    pub fn take_amounts(&self) -> Vec<InForce> {
        std::mem::take(&mut *self.taken.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Marks as raised the alert of each bucket whose spend (rebuilt from
    /// the log) has passed its budget's `alert_at` in the window in force at
    /// `now_ms`: a restart does not warn again in a window that warned.
    pub fn note_raised_alerts(&self, rules: &[BudgetRule], now_ms: u64) {
        let prepared = prepare(rules);
        for entry in self.buckets.iter() {
            let Some(p) = prepared.iter().find(|p| p.fingerprint == entry.key().0) else {
                continue;
            };
            let Some(share) = p.rule.alert_at else {
                continue;
            };
            let s = slot(p.rule.window, now_ms);
            let b = entry.value();
            let amount = b.spend.amount_taken(s.window).unwrap_or(p.amount);
            // As `Reservation::settle` judges it.
            if b.spend.spent(&s) >= (share * amount as f64) as u64 {
                b.spend
                    .alerted
                    .store(u64::from(s.window) + 1, Ordering::Release);
            }
        }
    }

    /// Gives each bucket the amount an earlier run took for the window in
    /// force now (rows of other windows or budgets are passed over).
    pub fn restore_amounts(&self, rules: &[BudgetRule], rows: &[InForce], now_ms: u64) {
        let prepared = prepare(rules);
        for r in rows {
            let Some(p) = prepared.iter().find(|p| p.fingerprint == r.budget) else {
                continue;
            };
            let s = slot(p.rule.window, now_ms);
            if SpendWindows::number(s.window) != r.window {
                continue;
            }
            self.bucket(p, &r.value)
                .spend
                .restore_amount(s.window, r.micros);
        }
    }

    fn bucket(&self, p: &Prepared, value: &str) -> Arc<Bucket> {
        let key = (p.fingerprint, xxhash_rust::xxh3::xxh3_64(value.as_bytes()));
        if let Some(b) = self.buckets.get(&key) {
            return b.clone();
        }
        if self.buckets.len() >= crate::limit::SWEEP_AT {
            self.sweep(crate::reqid::now_unix_ms());
        }
        self.buckets
            .entry(key)
            .or_insert_with(|| {
                Arc::new(Bucket {
                    spend: Spend::default(),
                    window: p.rule.window,
                    rule: p.rule.name.clone(),
                    value: value.into(),
                })
            })
            .clone()
    }

    /// Drops every bucket of `rules` (spend of an earlier time they were in
    /// force), before they are rebuilt from the log.
    pub fn forget(&self, rules: &[BudgetRule]) {
        let gone: Vec<u64> = rules.iter().map(fingerprint).collect();
        self.buckets.retain(|k, _| !gone.contains(&k.0));
    }

    /// Drops buckets no shard holds whose spend no longer counts (scope
    /// values that come and go, e.g. per-user metadata, do not pile up).
    pub fn sweep(&self, now_ms: u64) {
        self.buckets
            .retain(|_, b| Arc::strong_count(b) > 1 || b.spend.spent(&slot(b.window, now_ms)) > 0);
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Adds spend the request log recorded (at start, before any shard runs).
    pub fn rebuild(&self, rules: &[BudgetRule], spent: &[Spent<'_>]) {
        let prepared = prepare(rules);
        for s in spent {
            for p in &prepared {
                if !s.subject.applies(&p.rule.models, &p.rule.keys) {
                    continue;
                }
                let b = self.bucket(p, s.subject.value(&p.rule.scope));
                let at = slot(p.rule.window, s.ts_ms);
                let micros = b.spend.micros_to_count(at.part as u32, picos(s.usd));
                b.spend.add(&at, at.part, micros);
            }
        }
    }

    /// Every bucket of the running budgets, for `/usage`.
    pub fn report(&self, rules: &[BudgetRule], now_ms: u64) -> Vec<Standing> {
        let prepared = prepare(rules);
        let mut out = Vec::new();
        for entry in self.buckets.iter() {
            let Some(p) = prepared.iter().find(|p| p.fingerprint == entry.key().0) else {
                continue;
            };
            let s = slot(p.rule.window, now_ms);
            let b = entry.value();
            let amount = self.amount(p, b, s.window);
            let spent = b.spend.spent(&s);
            out.push(Standing {
                budget: p.rule.name.clone(),
                scope: p.rule.scope.describe(),
                value: b.value.to_string(),
                window: p.rule.window.describe(),
                usd: amount as f64 / 1e6,
                spent_usd: spent as f64 / 1e6,
                alert: p
                    .rule
                    .alert_at
                    .is_some_and(|a| spent as f64 >= a * amount as f64),
                // Rolling: when all that is counted now has left the count.
                resets_ms: b.spend.fits_at(&s, 0).max(now_ms),
            });
        }
        out.sort_by(|a, b| (&a.budget, &a.value).cmp(&(&b.budget, &b.value)));
        out
    }
}

/// Spend the request log recorded: what the rebuild adds.
#[derive(Clone, Copy, Debug)]
pub struct Spent<'a> {
    pub ts_ms: u64,
    pub subject: Subject<'a>,
    pub usd: f64,
}

/// One bucket's standing (`/usage`, `aigw usage`).
#[derive(Clone, Debug, PartialEq)]
pub struct Standing {
    pub budget: String,
    pub scope: String,
    pub value: String,
    pub window: String,
    pub usd: f64,
    pub spent_usd: f64,
    /// Spend has passed `alert_at`.
    pub alert: bool,
    pub resets_ms: u64,
}

/// A shard's budgets: its rules and its handles on the shared buckets.
pub struct ShardBudgets {
    shared: Arc<Budgets>,
    rules: RefCell<Rc<Vec<Prepared>>>,
    local: RefCell<FastMap<(u64, u64), Arc<Bucket>>>,
    /// The last calendar slots worked out (a month's bounds cost a date
    /// computation; they hold until the slot ends).
    calendar: std::cell::Cell<[Option<(BudgetWindow, Slot)>; 2]>,
}

/// What a request brings to a reservation.
#[derive(Clone, Copy, Debug)]
pub struct Ask {
    /// `None`: the model has no price (nothing can be reserved).
    pub rates: Option<Rates>,
    /// The request body's size (its input tokens are at most this many).
    pub input_bytes: u64,
    pub max_tokens: Option<u64>,
    /// How many answers it asks for (`n`).
    pub choices: u64,
    pub now_ms: u64,
}

/// The worst case a request may cost, by price: USD per input and per output token.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rates {
    pub input: f64,
    pub output: f64,
}

impl ShardBudgets {
    pub fn new(shared: Arc<Budgets>, rules: &[BudgetRule]) -> ShardBudgets {
        ShardBudgets {
            shared,
            rules: RefCell::new(Rc::new(prepare(rules))),
            local: RefCell::new(FastMap::default()),
            calendar: std::cell::Cell::new([None, None]),
        }
    }

    /// [`slot`], remembering calendar days and months until they end.
    fn slot(&self, window: BudgetWindow, now_ms: u64) -> Slot {
        let i = match window {
            BudgetWindow::Daily => 0,
            BudgetWindow::Monthly => 1,
            BudgetWindow::Rolling(_) => return slot(window, now_ms),
        };
        let mut cached = self.calendar.get();
        if let Some((w, s)) = cached[i]
            && w == window
            && (s.start_ms..s.end_ms).contains(&now_ms)
        {
            return s;
        }
        let s = slot(window, now_ms);
        cached[i] = Some((window, s));
        self.calendar.set(cached);
        s
    }

    pub fn set_rules(&self, rules: &[BudgetRule]) {
        let prepared = prepare(rules);
        // Handles on the buckets of budgets no longer in force go: were the
        // budget back later, its spend is rebuilt from the log, not these.
        let live: Vec<u64> = prepared.iter().map(|p| p.fingerprint).collect();
        self.local.borrow_mut().retain(|k, _| live.contains(&k.0));
        *self.rules.borrow_mut() = Rc::new(prepared);
    }

    pub fn is_empty(&self) -> bool {
        self.rules.borrow().is_empty()
    }

    fn bucket(&self, p: &Prepared, value: &str) -> Arc<Bucket> {
        p.last.get_or(value, || self.find_bucket(p, value))
    }

    /// Out of line: run once per scope value, not per request.
    #[cold]
    #[inline(never)]
    fn find_bucket(&self, p: &Prepared, value: &str) -> Arc<Bucket> {
        let key = (p.fingerprint, xxhash_rust::xxh3::xxh3_64(value.as_bytes()));
        let mut map = self.local.borrow_mut();
        if let Some(b) = map.get(&key) {
            return b.clone();
        }
        if map.len() >= crate::limit::LOCAL_CAP {
            map.clear();
        }
        let b = self.shared.bucket(p, value);
        map.insert(key, b.clone());
        b
    }

    /// [`ShardBudgets::reserve_into`] a fresh reservation (for tests).
    #[cfg(test)]
    fn reserve(
        &self,
        who: &Subject<'_>,
        rates: Option<Rates>,
        input_bytes: u64,
        max_tokens: Option<u64>,
        choices: u64,
        now_ms: u64,
    ) -> Result<Reservation, GatewayError> {
        let mut r = Reservation::default();
        let ask = Ask {
            rates,
            input_bytes,
            max_tokens,
            choices,
            now_ms,
        };
        self.reserve_into(who, &ask, &mut r)?;
        Ok(r)
    }

    /// Reserves the request's worst case under every budget it falls under
    /// into `r` (empty: it is filled where it lives, not moved), or refuses
    /// it (429 naming the budget, what is spent, the amount and when it
    /// resets) and leaves `r` empty. `ask.rates`: `None` when the model has
    /// no price.
    pub fn reserve_into(
        &self,
        who: &Subject<'_>,
        ask: &Ask,
        r: &mut Reservation,
    ) -> Result<(), GatewayError> {
        debug_assert!(r.is_empty());
        let Ask {
            rates,
            input_bytes,
            max_tokens,
            choices,
            now_ms,
        } = *ask;
        let rules = self.rules.borrow().clone();
        for p in rules.iter() {
            if !who.applies(&p.rule.models, &p.rule.keys) {
                continue;
            }
            let value = who.value(&p.rule.scope);
            let b = self.bucket(p, value);
            let s = self.slot(p.rule.window, now_ms);
            let amount = self.shared.amount(p, &b, s.window);
            let worst = rates.map_or(0, |rates| {
                let output = max_tokens
                    .unwrap_or(p.rule.default_max_tokens)
                    .saturating_mul(choices.max(1));
                micros(input_bytes as f64 * rates.input + output as f64 * rates.output)
            });
            match b.spend.reserve(&s, amount, worst) {
                Ok(at) => r.held.push(Held {
                    bucket: b,
                    at,
                    reserved: worst,
                    alert_at: p.rule.alert_at.map(|a| (a * amount as f64) as u64),
                    amount,
                    slot: s,
                }),
                Err(spent) => {
                    // What earlier budgets reserved goes back.
                    *r = Reservation::default();
                    // When it could be admitted: when what is counted
                    // leaves room for it (never, if it costs more than the
                    // whole budget: the window's end is said then).
                    let at = amount
                        .checked_sub(worst)
                        .map_or(s.end_ms, |room| b.spend.fits_at(&s, room))
                        .max(now_ms);
                    return Err(exhausted(p, value, spent, amount, worst, at, now_ms));
                }
            }
        }
        Ok(())
    }
}

/// The 429 of an exhausted budget. Cold and out of line: the admission
/// that calls it runs on every request, and this code in its midst cost
/// instruction-cache misses on each.
#[cold]
#[inline(never)]
fn exhausted(
    p: &Prepared,
    value: &str,
    spent: u64,
    amount: u64,
    worst: u64,
    at: u64,
    now_ms: u64,
) -> GatewayError {
    let whose = match &p.rule.scope {
        Scope::Gateway => String::new(),
        Scope::Key => format!(" for key `{value}`"),
        Scope::Provider => format!(" for provider `{value}`"),
        Scope::Metadata(f) => format!(" for {f} `{value}`"),
    };
    let usd = |m: u64| m as f64 / 1e6;
    let resets = crate::calendar::format_ms(at);
    let message = if worst > amount {
        // Waiting does not help: no window has room for it.
        format!(
            "budget `{}`{whose} can never cover this request: it may cost up to ${:.6}, more than the whole ${:.6} a window ({}); lower max_tokens (without it, the budget's default_max_tokens counts)",
            p.rule.name,
            usd(worst),
            usd(amount),
            p.rule.window.describe()
        )
    } else if spent >= amount {
        format!(
            "budget `{}` exhausted{whose}: spent ${:.6} of ${:.6} ({}); try again at {resets}",
            p.rule.name,
            usd(spent),
            usd(amount),
            p.rule.window.describe()
        )
    } else {
        format!(
            "budget `{}`{whose} cannot cover this request: it may cost up to ${:.6}, and ${:.6} of ${:.6} is spent (${:.6} left; {}); lower max_tokens or try again at {resets}",
            p.rule.name,
            usd(worst),
            usd(spent),
            usd(amount),
            usd(amount - spent),
            p.rule.window.describe()
        )
    };
    if worst > amount {
        // Not a 429: a client that waits and retries (SDKs do, by
        // Retry-After) can never be admitted. As a rate limit's reservation
        // past the whole limit.
        return GatewayError::bad_request("request_too_large", message);
    }
    let mut e = GatewayError::rate_limited(message);
    e.code = "budget_exceeded";
    let _ = write!(
        e.headers,
        "retry-after: {}\r\n",
        at.saturating_sub(now_ms).div_ceil(1000).max(1)
    );
    e
}

#[derive(Debug)]
struct Held {
    bucket: Arc<Bucket>,
    /// Where the reservation counts: its window (calendar) or part (rolling).
    at: u64,
    reserved: u64,
    /// Micro-dollars at which the budget warns.
    alert_at: Option<u64>,
    amount: u64,
    slot: Slot,
}

/// What a request reserved: settle it with its real cost; dropped unsettled,
/// it refunds itself.
#[must_use = "a reservation holds budget until it settles or drops"]
#[derive(Debug, Default)]
pub struct Reservation {
    /// Inline for the usual one or two budgets: no allocation per request.
    held: SmallVec<[Held; 2]>,
}

impl Reservation {
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Charges the real cost (`None`: unknown, so nothing can be charged) and
    /// refunds the rest; raises a budget's alert the first time its window
    /// passes `alert_at`. Returns how many alerts this raised.
    pub fn settle(mut self, cost: Option<f64>, budgets: &Budgets) -> usize {
        let actual = cost.map_or(0, picos);
        let mut raised = 0;
        for h in std::mem::take(&mut self.held) {
            let spend = &h.bucket.spend;
            // A charge may count less than its micro-dollars rounded up
            // (see `Spend::credit`).
            let actual = spend.micros_to_count(h.at as u32, actual);
            if actual >= h.reserved {
                spend.add(&h.slot, h.at, actual - h.reserved);
            } else {
                spend.give_back(&h.slot, h.at, h.reserved - actual);
            }
            let Some(alert) = h.alert_at else { continue };
            let spent = spend.spent(&h.slot);
            let mark = u64::from(h.slot.window) + 1;
            if spent >= alert && spend.alerted.swap(mark, Ordering::AcqRel) != mark {
                raised += 1;
                budgets.alerts.fetch_add(1, Ordering::Relaxed);
                warn_alert(&h, spent);
            }
        }
        raised
    }
}

/// A budget's alert share was reached (once a window).
#[cold]
#[inline(never)]
fn warn_alert(h: &Held, spent: u64) {
    log::warn!(
        "budget `{}` for `{}`: ${:.6} of ${:.6} spent ({:.0}%)",
        h.bucket.rule,
        h.bucket.value,
        spent as f64 / 1e6,
        h.amount as f64 / 1e6,
        100.0 * spent as f64 / h.amount.max(1) as f64
    );
}

impl Drop for Reservation {
    /// In line for the common empty case (settled, or no budget applies):
    /// a call per request otherwise, budgets or not.
    #[inline]
    fn drop(&mut self) {
        if !self.held.is_empty() {
            self.refund();
        }
    }
}

impl Reservation {
    /// Gives back what an unsettled reservation holds.
    #[inline(never)]
    fn refund(&mut self) {
        for h in self.held.drain(..) {
            h.bucket.spend.give_back(&h.slot, h.at, h.reserved);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn shard(toml: &str) -> (Arc<Budgets>, ShardBudgets, Vec<BudgetRule>) {
        let c = Config::from_toml(toml).unwrap();
        let shared = Budgets::new();
        (
            shared.clone(),
            ShardBudgets::new(shared, &c.budgets),
            c.budgets,
        )
    }

    fn who(key: Option<&str>) -> Subject<'_> {
        Subject {
            key_id: key,
            provider: "openai",
            model: Some("gpt-4o"),
            key_metadata: &[],
            metadata: None,
        }
    }

    // A dollar per token each way: a request of 1 byte and max_tokens 1 may cost $2.
    const RATES: Option<Rates> = Some(Rates {
        input: 1.0,
        output: 1.0,
    });
    const NOW: u64 = 1_796_032_800_000;

    #[test]
    fn micro_dollars_round_up_without_float_noise() {
        assert_eq!(micros(0.0259), 25_900);
        assert_eq!(micros(4.932), 4_932_000);
        assert_eq!(micros(0.1 + 0.2), 300_000);
        assert_eq!(micros(0.000_000_5), 1);
        assert_eq!(micros(0.000_001_001), 2);
        assert_eq!((micros(0.0), micros(-1.0), micros(f64::NAN)), (0, 0, 0));
        assert_eq!(picos(0.000_000_4), 400_000);
        assert_eq!(picos(0.1 + 0.2), 300_000_000_000);
        assert_eq!(picos(0.000_041_358_025), 41_358_025);
        assert_eq!(picos(1e7), 10_000_000 * PICOS_PER_MICRO * 1_000_000);
        assert_eq!(picos(2e7), u64::MAX, "past u64: saturated, never wrapped");
        assert_eq!((picos(0.0), picos(-1.0), picos(f64::NAN)), (0, 0, 0));
    }

    #[test]
    fn budgets_alike_but_for_their_amount_count_apart() {
        let (shared, s, rules) = shard(
            "[[budgets]]\nname = \"wide\"\nscope = \"gateway\"\nusd = 10\nwindow = \"daily\"\n\
             [[budgets]]\nname = \"narrow\"\nscope = \"gateway\"\nusd = 1\nwindow = \"daily\"\n",
        );
        for _ in 0..2 {
            s.reserve(&who(None), None, 1, Some(1), 1, NOW)
                .unwrap()
                .settle(Some(0.6), &shared);
        }
        let e = s.reserve(&who(None), None, 1, Some(1), 1, NOW).unwrap_err();
        assert!(e.message.contains("`narrow`"), "{}", e.message);
        let standing = shared.report(&rules, NOW);
        let spent = |name: &str| {
            standing
                .iter()
                .find(|b| b.budget == name)
                .map(|b| (b.usd, b.spent_usd))
        };
        assert_eq!(spent("wide"), Some((10.0, 1.2)));
        assert_eq!(spent("narrow"), Some((1.0, 1.2)));
    }

    #[test]
    fn cheap_charges_count_their_sum_not_a_micro_dollar_each() {
        let (shared, s, rules) =
            shard("[[budgets]]\nscope = \"gateway\"\nusd = 10\nwindow = \"daily\"\n");
        // 1,000 embedding calls at $0.0000004: 400 µ$, where rounding each
        // up counted 1,000.
        for _ in 0..1000 {
            s.reserve(&who(None), RATES, 1, Some(1), 1, NOW)
                .unwrap()
                .settle(Some(0.000_000_4), &shared);
        }
        let spent = |shared: &Budgets| shared.report(&rules, NOW)[0].spent_usd;
        assert!(
            (spent(&shared) - 0.0004).abs() < 1e-12,
            "{}",
            spent(&shared)
        );
        // One more: 400.4 µ$, counted as 401 (never less than spent).
        s.reserve(&who(None), RATES, 1, Some(1), 1, NOW)
            .unwrap()
            .settle(Some(0.000_000_4), &shared);
        assert!(
            (spent(&shared) - 0.000_401).abs() < 1e-12,
            "{}",
            spent(&shared)
        );
        // The log rebuilds the same count.
        let rebuilt = Budgets::new();
        let spent_rows: Vec<Spent> = (0..1001)
            .map(|_| Spent {
                ts_ms: NOW,
                subject: who(None),
                usd: 0.000_000_4,
            })
            .collect();
        rebuilt.rebuild(&rules, &spent_rows);
        assert!(
            (spent(&rebuilt) - 0.000_401).abs() < 1e-12,
            "{}",
            spent(&rebuilt)
        );
    }

    #[test]
    fn racing_reservations_never_pass_the_budget() {
        let (shared, s, _) = shard("[[budgets]]\nscope = \"key\"\nusd = 25\nwindow = \"daily\"\n");
        let held: Vec<_> = (0..64)
            .filter_map(|_| s.reserve(&who(Some("a")), RATES, 1, Some(1), 1, NOW).ok())
            .collect();
        assert_eq!(held.len(), 12, "12 x $2 fit in $25, a 13th does not");
        // Each really cost $1.5: $18 spent, $7 left: three more of $2 fit.
        for h in held {
            h.settle(Some(1.5), &shared);
        }
        let more: Vec<_> = (0..64)
            .filter_map(|_| s.reserve(&who(Some("a")), RATES, 1, Some(1), 1, NOW).ok())
            .collect();
        assert_eq!(more.len(), 3);
        drop(more);
        // Dropped unsettled: refunded.
        let again: Vec<_> = (0..64)
            .filter_map(|_| s.reserve(&who(Some("a")), RATES, 1, Some(1), 1, NOW).ok())
            .collect();
        assert_eq!(again.len(), 3);
        // Another key has its own budget; tomorrow is a new day.
        assert!(
            s.reserve(&who(Some("b")), RATES, 1, Some(1), 1, NOW)
                .is_ok()
        );
        assert!(
            s.reserve(&who(Some("a")), RATES, 1, Some(1), 1, NOW + DAY_MS)
                .is_ok()
        );
    }

    #[test]
    fn an_exhausted_budget_says_what_was_spent_and_when_it_resets() {
        let (shared, s, _) = shard(
            "[[budgets]]\nname = \"day\"\nscope = \"gateway\"\nusd = 1\nwindow = \"daily\"\n",
        );
        s.reserve(&who(None), None, 10, None, 1, NOW)
            .unwrap()
            .settle(Some(1.25), &shared);
        // Even a model without a price is refused once the budget is spent.
        let e = s.reserve(&who(None), None, 10, None, 1, NOW).unwrap_err();
        assert_eq!((e.status, e.code), (429, "budget_exceeded"));
        assert!(
            e.message.contains("spent $1.250000 of $1.000000"),
            "{}",
            e.message
        );
        assert!(
            e.message.contains("2026-12-01T00:00:00.000Z"),
            "{}",
            e.message
        );
        // 10:00 UTC: 14 hours to midnight.
        assert!(
            e.headers.contains("retry-after: 50400\r\n"),
            "{}",
            e.headers
        );
        // A request whose worst case is more than the whole amount is not
        // told to wait: no window has room for it.
        let (_, s, _) = shard(
            "[[budgets]]\nname = \"day\"\nscope = \"gateway\"\nusd = 1\nwindow = \"daily\"\n",
        );
        let e = s
            .reserve(&who(None), RATES, 1, Some(10), 1, NOW)
            .unwrap_err();
        assert!(
            e.message.contains("can never cover this request") && !e.message.contains("try again"),
            "{}",
            e.message
        );
        // A 400, not a 429, and no Retry-After: waiting does not help.
        assert_eq!((e.status, e.code), (400, "request_too_large"));
        assert!(!e.headers.contains("retry-after"), "{}", e.headers);
    }

    /// A rolling budget's Retry-After is when the request fits: a request
    /// sent then is admitted, and one a second before it is not.
    #[test]
    fn a_rolling_budget_says_when_the_request_fits() {
        let (shared, s, _) = shard("[[budgets]]\nscope = \"gateway\"\nusd = 10\nwindow = \"2m\"\n");
        let len = 120_000;
        for (spent_at, asked_at) in [(1_000, 60_000), (len + 50_000, len + 119_000)] {
            let start = NOW - NOW % len + 10 * len;
            // $8 spent; later a $4 request (it may cost $4: refused).
            s.reserve(&who(None), RATES, 2, Some(2), 1, start + spent_at)
                .unwrap()
                .settle(Some(8.0), &shared);
            let at = start + asked_at;
            let e = s.reserve(&who(None), RATES, 2, Some(2), 1, at).unwrap_err();
            let secs: u64 = e
                .headers
                .strip_prefix("retry-after: ")
                .and_then(|h| h.trim_end().parse().ok())
                .unwrap_or_else(|| panic!("{}", e.headers));
            let then = at + secs * 1000;
            // The $8 counts for the whole duration after it was spent, and
            // at most two parts (15 s) longer.
            assert!(
                then >= start + spent_at + len && then <= start + spent_at + len + 2 * len / PARTS,
                "retry after {secs} s, asked {asked_at} ms in, spent {spent_at} ms in"
            );
            assert!(
                s.reserve(&who(None), RATES, 2, Some(2), 1, then - 1_000)
                    .is_err(),
                "not a second before: {secs} s after {asked_at}"
            );
            let r = s.reserve(&who(None), RATES, 2, Some(2), 1, then);
            assert!(r.is_ok(), "admitted {secs} s after {asked_at}");
            r.unwrap().settle(Some(0.0), &shared);
        }
    }

    /// Spend bunched at the end of one duration-aligned span and the start
    /// of the next stays within the amount in every span of the duration's
    /// length (the sliding approximation this replaced let $1.59 through in
    /// 59 s on a $1-per-60s budget: found by a review).
    #[test]
    fn a_rolling_budget_holds_in_every_span_of_its_length() {
        let (shared, s, rules) =
            shard("[[budgets]]\nscope = \"gateway\"\nusd = 1\nwindow = \"60s\"\n");
        let start = NOW - NOW % 60_000;
        // $0.90 at 59.9 s (a request of 1 byte with max_tokens 1 may cost $2
        // at RATES: these cheaper ones pass no rate).
        let cheap = Some(Rates {
            input: 0.2,
            output: 0.2,
        });
        s.reserve(&who(None), cheap, 1, Some(1), 1, start + 59_900)
            .unwrap()
            .settle(Some(0.9), &shared);
        // `/usage` says when what is counted leaves: a minute after it
        // was spent, at most two parts (7.5 s) later (review 15: it said
        // the current part's end).
        let resets = shared.report(&rules, start + 61_000)[0].resets_ms;
        assert!(
            (start + 119_900..=start + 127_400).contains(&resets),
            "resets {} ms in",
            resets - start
        );
        // A minute less a moment later, the $0.90 still counts.
        assert!(
            s.reserve(&who(None), cheap, 1, Some(1), 1, start + 119_000)
                .is_err()
        );
        // Once its part has left the count (at most two parts, 7.5 s, late).
        let r = s
            .reserve(&who(None), cheap, 1, Some(1), 1, start + 59_900 + 67_500)
            .unwrap();
        r.settle(Some(0.4), &shared);

        // Random charges at random times over ten minutes: whatever was
        // admitted, no 60 s span ever holds more than $1.
        let (shared, s, _) = shard("[[budgets]]\nscope = \"gateway\"\nusd = 1\nwindow = \"60s\"\n");
        let mut rng = crate::reqid::IdGen::new(7);
        let mut t = start;
        let mut charged: Vec<(u64, u64)> = Vec::new();
        for _ in 0..4_000 {
            t += rng.below(400);
            let cost = rng.below(200_000); // up to $0.20, in micro-dollars
            let rates = Some(Rates {
                input: cost as f64 / 2e6,
                output: cost as f64 / 2e6,
            });
            if let Ok(r) = s.reserve(&who(None), rates, 1, Some(1), 1, t) {
                r.settle(Some(cost as f64 / 1e6), &shared);
                charged.push((t, cost));
            }
        }
        assert!(charged.len() > 100, "{} admitted", charged.len());
        for (i, &(end, _)) in charged.iter().enumerate() {
            let span: u64 = charged[..=i]
                .iter()
                .filter(|(at, _)| *at + 60_000 > end)
                .map(|(_, c)| c)
                .sum();
            assert!(
                span <= 1_000_000,
                "${} in the 60 s to {end}",
                span as f64 / 1e6
            );
        }
    }

    /// Shards racing for a rolling budget's last dollars at a part's turn
    /// (one's clock just past it, another's not) never pass it together.
    #[test]
    fn racing_shards_at_a_parts_turn_never_pass_a_rolling_budget() {
        let toml = "[[budgets]]\nscope = \"gateway\"\nusd = 100\nwindow = \"16m\"\n";
        let (shared, s, rules) = shard(toml);
        for round in 0..300u64 {
            // A part is a minute; each round a whole duration after the last.
            let turn = NOW - NOW % 60_000 + 20 * 60_000 * (round + 1);
            // $98 of $100 reserved before the turn: one more $2 fits.
            let filled: Vec<_> = (0..49)
                .map(|_| {
                    s.reserve(&who(None), RATES, 1, Some(1), 1, turn - 1)
                        .unwrap()
                })
                .collect();
            let start = std::sync::Barrier::new(4);
            let admitted = std::sync::Mutex::new(Vec::new());
            std::thread::scope(|scope| {
                for t in 0..4u64 {
                    let (shared, rules, start, admitted) = (&shared, &rules, &start, &admitted);
                    scope.spawn(move || {
                        let s = ShardBudgets::new(shared.clone(), rules);
                        let at = if t % 2 == 0 { turn - 1 } else { turn };
                        start.wait();
                        if let Ok(r) = s.reserve(&who(None), RATES, 1, Some(1), 1, at) {
                            admitted.lock().unwrap().push(r);
                        }
                    });
                }
            });
            let admitted = admitted.into_inner().unwrap();
            assert_eq!(admitted.len(), 1, "round {round}: one more $2 fits in $100");
            for r in filled.into_iter().chain(admitted) {
                r.settle(Some(0.0), &shared);
            }
        }
    }

    #[test]
    fn an_unknown_price_reserves_nothing_and_is_never_refused_for_it() {
        let (shared, s, _) =
            shard("[[budgets]]\nscope = \"gateway\"\nusd = 1\nwindow = \"monthly\"\n");
        for _ in 0..100 {
            s.reserve(&who(None), None, 1_000_000, None, 1, NOW)
                .unwrap()
                .settle(None, &shared);
        }
    }

    #[test]
    fn alerts_fire_once_a_window() {
        let (shared, s, _) = shard(
            "[[budgets]]\nscope = \"gateway\"\nusd = 10\nwindow = \"daily\"\nalert_at = 0.5\n",
        );
        let settle = |usd: f64, now: u64| {
            s.reserve(&who(None), RATES, 1, Some(1), 1, now)
                .unwrap()
                .settle(Some(usd), &shared)
        };
        assert_eq!(settle(4.0, NOW), 0);
        assert_eq!(settle(1.5, NOW), 1);
        assert_eq!(settle(1.0, NOW), 0);
        assert_eq!(settle(6.0, NOW + DAY_MS), 1);
        assert_eq!(shared.alerts.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_restart_does_not_warn_again_in_a_window_that_warned() {
        let rules =
            "[[budgets]]\nscope = \"gateway\"\nusd = 10\nwindow = \"daily\"\nalert_at = 0.5\n";
        // What the log holds: $6 spent today (past the alert), $1 yesterday.
        let spent = [(NOW, 6.0), (NOW - DAY_MS, 1.0)].map(|(ts_ms, usd)| Spent {
            ts_ms,
            subject: who(None),
            usd,
        });
        for (today, raised) in [(NOW, 0), (NOW + DAY_MS, 1)] {
            let (shared, s, rules) = shard(rules);
            shared.rebuild(&rules, &spent);
            shared.note_raised_alerts(&rules, today);
            let settled = s
                .reserve(&who(None), RATES, 1, Some(1), 1, today)
                .unwrap()
                .settle(Some(if today == NOW { 0.5 } else { 5.0 }), &shared);
            // Today warned before the restart; tomorrow had not.
            assert_eq!(settled, raised, "{today}");
        }
    }

    #[test]
    fn a_new_amount_applies_from_the_next_window() {
        let (shared, s, rules) =
            shard("[[budgets]]\nscope = \"gateway\"\nusd = 10\nwindow = \"daily\"\n");
        s.reserve(&who(None), RATES, 1, Some(1), 1, NOW)
            .unwrap()
            .settle(Some(6.0), &shared);
        let lower =
            Config::from_toml("[[budgets]]\nscope = \"gateway\"\nusd = 5\nwindow = \"daily\"\n")
                .unwrap();
        s.set_rules(&lower.budgets);
        // Today the $10 still holds ($6 spent, $2 fits); tomorrow $5 does.
        assert!(s.reserve(&who(None), RATES, 1, Some(1), 1, NOW).is_ok());
        let standing = shared.report(&lower.budgets, NOW + DAY_MS);
        assert_eq!(standing.len(), 1);
        assert_eq!((standing[0].usd, standing[0].spent_usd), (5.0, 0.0));
        let _ = rules;
    }

    #[test]
    fn idle_buckets_are_swept() {
        let (shared, s, _) = shard("[[budgets]]\nscope = \"key\"\nusd = 10\nwindow = \"daily\"\n");
        for i in 0..3 {
            let id = format!("k{i}");
            s.reserve(&who(Some(&id)), RATES, 1, Some(1), 1, NOW)
                .unwrap()
                .settle(Some(if i == 0 { 1.0 } else { 0.0 }), &shared);
        }
        drop(s);
        shared.sweep(NOW);
        assert_eq!(shared.len(), 1, "the one with spend stays");
        shared.sweep(NOW + 2 * DAY_MS);
        assert!(shared.is_empty());
    }

    #[test]
    fn the_log_rebuilds_spend() {
        let (shared, s, rules) =
            shard("[[budgets]]\nscope = \"metadata.team\"\nusd = 10\nwindow = \"7d\"\n");
        let team = [("team".to_string(), "search".to_string())];
        let mut w = who(None);
        w.key_metadata = &team;
        let spent: Vec<Spent> = (0..9)
            .map(|i| Spent {
                ts_ms: NOW - 1000 * i,
                subject: w,
                usd: 1.0,
            })
            .collect();
        shared.rebuild(&rules, &spent);
        // $9 of $10 spent: a $2 worst case does not fit, another team's does.
        assert!(s.reserve(&w, RATES, 1, Some(1), 1, NOW).is_err());
        assert!(s.reserve(&who(None), RATES, 1, Some(1), 1, NOW).is_ok());
        let standing = shared.report(&rules, NOW);
        let team = standing.iter().find(|s| s.value == "search").unwrap();
        assert!((team.spent_usd - 9.0).abs() < 1e-6, "{team:?}");
    }
}
