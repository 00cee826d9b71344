//! Coalescing: concurrent identical misses make one upstream call. The first
//! (the leader) goes upstream and publishes what its client receives into a
//! [`Flight`]; the others (followers, on any shard) read it as it grows, so a
//! stream's followers see each event when the leader's client does.
//!
//! A flight lives in the cache's table from the leader's miss until its answer
//! is stored (or it fails), so a request arriving in between follows it too.
//! The leader's [`Leading`] guard fails the flight if it is dropped unfinished
//! (an error, an abort, a cancelled task): followers then go upstream on their
//! own. Followers wake through their wakers from the leader's thread: the one
//! place a request crosses cores, and only on a miss.

use super::key::CacheKey;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

/// How a flight ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The whole answer is in the flight.
    Complete,
    /// No answer to share: the leader failed, was aborted, or the answer is
    /// not one to share (not 2xx, `no-store`, too large).
    Failed,
}

/// The answer's status and end-to-end header lines, once the leader has them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlightHead {
    pub status: u16,
    /// Who answered ([`crate::cache::entry::served`]).
    pub served: Vec<u8>,
    pub head: Vec<u8>,
    pub stream: bool,
}

#[derive(Default)]
struct State {
    head: Option<FlightHead>,
    body: Vec<u8>,
    end: Option<End>,
    wakers: Vec<Waker>,
    followers: u64,
    /// Followers reading the answer now ([`Attached`]).
    attached: u64,
    created_ms: u64,
    expires_ms: u64,
    input_tokens: u32,
    output_tokens: u32,
    /// What the leader's record says went wrong in the answer it shared
    /// (`stream_error`, `stream_truncated`), for its followers' records.
    fault: Option<&'static str>,
    provider: u32,
    /// The answer outgrew the largest entry: shared with its followers, never stored.
    oversize: bool,
}

/// Largest answer a flight keeps for its followers once it is too large to
/// store (past it, the flight fails and they are cut).
pub const MAX_SHARED_BYTES: usize = 64 << 20;

/// One upstream call that identical requests share.
pub struct Flight {
    pub key: CacheKey,
    /// The cache's purge count when the flight began.
    pub purges: u64,
    /// Largest answer (head and body) a flight carries.
    max_bytes: usize,
    state: Mutex<State>,
    /// Set once the flight fails: read without the lock (a lookup holding a
    /// table lock must not wait on a flight's lock, which a store may hold).
    failed: AtomicBool,
}

/// A complete flight, as stored.
pub struct Finished<'a> {
    guard: MutexGuard<'a, State>,
}

impl Finished<'_> {
    pub fn head(&self) -> Option<&FlightHead> {
        self.guard.head.as_ref()
    }
    pub fn body(&self) -> &[u8] {
        &self.guard.body
    }
    pub fn times(&self) -> (u64, u64) {
        (self.guard.created_ms, self.guard.expires_ms)
    }
    pub fn tokens(&self) -> (u32, u32) {
        (self.guard.input_tokens, self.guard.output_tokens)
    }
    pub fn fault(&self) -> Option<&'static str> {
        self.guard.fault
    }
    pub fn provider(&self) -> u32 {
        self.guard.provider
    }
}

impl Flight {
    pub fn new(key: CacheKey, max_bytes: usize, purges: u64) -> Flight {
        Flight {
            key,
            purges,
            max_bytes,
            state: Mutex::new(State::default()),
            failed: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding it cannot leave it half-written in a way that
        // matters more than losing the flight: take it either way.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake(state: &mut State) {
        for w in state.wakers.drain(..) {
            w.wake();
        }
    }

    /// Followers this flight has had.
    pub fn followers(&self) -> u64 {
        self.lock().followers
    }

    /// Followers reading the answer now: when none is left, a leader whose
    /// own client left has nobody to read on for.
    pub fn attached(&self) -> u64 {
        self.lock().attached
    }

    /// The stored form, when the flight completed.
    pub fn finished(&self) -> Option<Finished<'_>> {
        let guard = self.lock();
        (guard.end == Some(End::Complete) && guard.head.is_some() && !guard.oversize)
            .then_some(Finished { guard })
    }

    /// Waits for the head; `None` when the flight failed first.
    pub async fn head(&self) -> Option<FlightHead> {
        poll_fn(|cx| {
            let mut s = self.lock();
            if let Some(h) = &s.head {
                return Poll::Ready(Some(h.clone()));
            }
            if s.end.is_some() {
                return Poll::Ready(None);
            }
            register(&mut s.wakers, cx.waker());
            Poll::Pending
        })
        .await
    }

    /// Appends the body bytes past `cursor` to `out` (moving `cursor`), waiting
    /// for some. Returns `None` while more may come, else how it ended; bytes
    /// may have been appended either way.
    pub async fn more(&self, cursor: &mut usize, out: &mut Vec<u8>) -> Option<End> {
        poll_fn(|cx| {
            let mut s = self.lock();
            let have = s.body.len();
            if have > *cursor {
                out.extend_from_slice(&s.body[*cursor..]);
                *cursor = have;
                return Poll::Ready(s.end.filter(|e| *e == End::Complete));
            }
            if let Some(end) = s.end {
                return Poll::Ready(Some(end));
            }
            register(&mut s.wakers, cx.waker());
            Poll::Pending
        })
        .await
    }

    /// Counts a follower, attached while the guard lives; `None` when the
    /// flight already failed.
    pub fn follow(&self) -> Option<Attached<'_>> {
        let mut s = self.lock();
        s.followers += 1;
        if s.end == Some(End::Failed) {
            return None;
        }
        s.attached += 1;
        Some(Attached { flight: self })
    }

    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    fn fail(&self) {
        let mut s = self.lock();
        if s.end.is_none() {
            s.end = Some(End::Failed);
            self.failed.store(true, Ordering::Release);
            Self::wake(&mut s);
        }
    }
}

/// A follower reading a flight's answer; dropped, it no longer is.
pub struct Attached<'a> {
    flight: &'a Flight,
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        let mut s = self.flight.lock();
        s.attached = s.attached.saturating_sub(1);
    }
}

fn register(wakers: &mut Vec<Waker>, w: &Waker) {
    if !wakers.iter().any(|x| x.will_wake(w)) {
        wakers.push(w.clone());
    }
}

/// The flights in progress, by key (shared by every shard). A key is a hash
/// already: its two words are folded with a multiply each, not SipHashed.
pub type Flights = dashmap::DashMap<
    CacheKey,
    Arc<Flight>,
    std::hash::BuildHasherDefault<crate::fasthash::WordHash>,
>;

/// The leader's side of a flight. Dropped unfinished, it fails the flight.
pub struct Leading {
    pub flight: Arc<Flight>,
    /// The table the flight is in, until it fails (then it leaves it) or
    /// completes (then its store takes it out).
    table: Option<Arc<Flights>>,
}

impl Leading {
    pub fn new(flight: Arc<Flight>, table: Arc<Flights>) -> Leading {
        Leading {
            flight,
            table: Some(table),
        }
    }

    /// The answer's head: a shareable answer starts. `body_hint`: the body's
    /// length when the provider said it.
    pub fn head(&mut self, head: FlightHead, provider: u32, body_hint: Option<usize>) {
        let mut s = self.flight.lock();
        if s.end.is_none() {
            s.provider = provider;
            s.head = Some(head);
            if let Some(n) = body_hint.filter(|n| *n <= self.flight.max_bytes) {
                s.body.reserve_exact(n);
            }
            Flight::wake(&mut s);
        }
    }

    /// Body bytes as the leader's client receives them. Past the size limit
    /// the flight fails (and stops taking bytes).
    pub fn append(&mut self, data: &[u8]) {
        let mut s = self.flight.lock();
        if s.end.is_some() || data.is_empty() {
            return;
        }
        let size = s.head.as_ref().map_or(0, |h| h.head.len()) + s.body.len() + data.len();
        if size > self.flight.max_bytes {
            // Too large to store. Followers already reading it keep getting it
            // (up to a bound); with none, the flight ends here.
            s.oversize = true;
            if s.attached == 0 || size > MAX_SHARED_BYTES.max(self.flight.max_bytes) {
                drop(s);
                self.fail();
                return;
            }
        }
        s.body.extend_from_slice(data);
        Flight::wake(&mut s);
    }

    /// Fails the flight now: followers go upstream on their own.
    pub fn fail(&mut self) {
        self.flight.fail();
        if let Some(table) = self.table.take() {
            let f = &self.flight;
            table.remove_if(&f.key, |_, v| Arc::ptr_eq(v, f));
        }
    }

    /// The whole answer arrived: followers finish, and the flight is ready to
    /// store. Returns it unless it had failed.
    pub fn complete(
        mut self,
        created_ms: u64,
        expires_ms: u64,
        tokens: (u32, u32),
        fault: Option<&'static str>,
    ) -> Option<Arc<Flight>> {
        let mut s = self.flight.lock();
        if s.end.is_some() || s.head.is_none() {
            drop(s);
            self.fail();
            return None;
        }
        s.end = Some(End::Complete);
        s.created_ms = created_ms;
        s.expires_ms = expires_ms;
        (s.input_tokens, s.output_tokens) = tokens;
        s.fault = fault;
        Flight::wake(&mut s);
        drop(s);
        self.table = None;
        Some(self.flight.clone())
    }
}

impl Drop for Leading {
    fn drop(&mut self) {
        if self.table.is_some() {
            self.fail();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A leader whose flight is in a table; the check says whether the
    /// flight has left it.
    fn leading(max: usize) -> (Leading, impl Fn() -> bool) {
        let table = Arc::new(Flights::default());
        let flight = Arc::new(Flight::new(CacheKey(1), max, 0));
        table.insert(flight.key, flight.clone());
        let l = Leading::new(flight, table.clone());
        (l, move || table.is_empty())
    }

    fn head() -> FlightHead {
        FlightHead {
            status: 200,
            served: Vec::new(),
            head: b"content-type: text/event-stream\r\n".to_vec(),
            stream: true,
        }
    }

    #[test]
    fn followers_read_what_arrives_then_the_end() {
        let (mut l, failed) = leading(1 << 20);
        let f = l.flight.clone();
        let attached = f.follow().unwrap();
        assert_eq!(f.attached(), 1);
        l.head(head(), 3, Some(18));
        l.append(b"data: 1\n\n");
        let (mut cursor, mut out) = (0, Vec::new());
        let end = futures_lite::future::block_on(f.more(&mut cursor, &mut out));
        assert_eq!((end, &out[..]), (None, &b"data: 1\n\n"[..]));
        l.append(b"data: 2\n\n");
        let done = l.complete(1, 2, (3, 4), None).unwrap();
        let end = futures_lite::future::block_on(f.more(&mut cursor, &mut out));
        assert_eq!(end, Some(End::Complete));
        assert_eq!(out, b"data: 1\n\ndata: 2\n\n");
        assert!(!failed());
        let fin = done.finished().unwrap();
        assert_eq!(
            (fin.tokens(), fin.provider(), fin.times()),
            ((3, 4), 3, (1, 2))
        );
        drop(fin);
        assert_eq!(futures_lite::future::block_on(f.head()), Some(head()));
        drop(attached);
        assert_eq!((f.attached(), f.followers()), (0, 1));
    }

    #[test]
    fn a_dropped_or_oversized_leader_fails_its_followers() {
        let (l, failed) = leading(1 << 20);
        let f = l.flight.clone();
        drop(l);
        assert!(failed() && f.is_failed() && f.follow().is_none());
        assert_eq!(futures_lite::future::block_on(f.head()), None);
        let (mut l, failed) = leading(50);
        let f = l.flight.clone();
        l.head(head(), 0, None);
        l.append(&[b'x'; 10]);
        assert!(!f.is_failed());
        l.append(&[b'x'; 10]);
        assert!(f.is_failed() && failed());
        let (mut cursor, mut out) = (0, Vec::new());
        let end = futures_lite::future::block_on(f.more(&mut cursor, &mut out));
        assert_eq!((end, out.len()), (None, 10));
        let end = futures_lite::future::block_on(f.more(&mut cursor, &mut out));
        assert_eq!(end, Some(End::Failed));
        assert!(l.complete(0, 0, (0, 0), None).is_none());
    }

    #[test]
    fn an_oversized_answer_still_reaches_its_followers_but_is_not_stored() {
        let (mut l, failed) = leading(50);
        let f = l.flight.clone();
        l.head(head(), 0, None);
        let _attached = f.follow().unwrap();
        l.append(&[b'x'; 10]);
        l.append(&[b'y'; 100]);
        assert!(!f.is_failed() && !failed());
        let done = l.complete(1, 2, (3, 4), None).unwrap();
        assert!(done.finished().is_none(), "too large to store");
        let (mut cursor, mut out) = (0, Vec::new());
        let end = futures_lite::future::block_on(f.more(&mut cursor, &mut out));
        assert_eq!((end, out.len()), (Some(End::Complete), 110));
    }
}
