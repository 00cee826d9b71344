//! Counting in windows: [`Windows`] (the current and previous window's
//! counts, each packed with its window number into one atomic word, shared
//! with the budgets), a rate-limit bucket's [`Counter`] on it (a take is a
//! compare-and-swap that can never admit past the limit), the in-flight count
//! of `concurrent` rules, and the arithmetic of when a refused request may retry.

use std::sync::atomic::{AtomicU64, Ordering};

/// Where `now_ms` falls: the window's number and how far into it (0..1).
pub fn position(now_ms: u64, window_ms: u64) -> (u32, f64) {
    let window_ms = window_ms.max(1);
    (
        (now_ms / window_ms) as u32,
        (now_ms % window_ms) as f64 / window_ms as f64,
    )
}

/// Why a take was refused: the counts it saw.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Refusal {
    pub current: u64,
    /// The previous window's count (0 for fixed windows).
    pub previous: u64,
    /// How far into its window the take was (0..1).
    pub elapsed: f64,
}

/// What a take was granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The window the units count in.
    pub window: u32,
    pub units: u64,
    /// What was left after them.
    pub remaining: u64,
}

/// Two windows' counts, the current one and the one before it, each packed
/// with its window number into one atomic word: the low `BITS` bits count,
/// the rest number the window (`64 - BITS` bits of it, enough that a number
/// wraps only after decades). Rate limits count in 32 bits, budgets
/// micro-dollars in 40. Every change is a compare-and-swap; a window rolls
/// over without a lock.
#[derive(Debug, Default)]
pub struct Windows<const BITS: u32> {
    current: AtomicU64,
    previous: AtomicU64,
}

impl<const BITS: u32> Windows<BITS> {
    /// Largest count a window holds (more saturates).
    pub const MAX: u64 = (1 << BITS) - 1;

    /// One word: `window`'s number (its bits that fit above the count)
    /// over `count` (saturated at [`Windows::MAX`]).
    pub fn pack(window: u32, count: u64) -> u64 {
        (u64::from(window) << BITS) | count.min(Self::MAX)
    }

    /// A word's window number (as stored) and count.
    pub fn unpack(v: u64) -> (u32, u64) {
        ((v >> BITS) as u32, v & Self::MAX)
    }

    /// A window number as stored (the bits above the count).
    pub fn number(window: u32) -> u32 {
        (u64::from(window) & ((1u64 << (64 - BITS)) - 1)) as u32
    }

    /// The current word, rolled to `window` if it is older; a window number
    /// behind the stored one (another shard's clock ran ahead) uses the
    /// stored one. Returns (its window, its count).
    pub fn rolled(&self, window: u32) -> (u32, u64) {
        let window = Self::number(window);
        loop {
            let cur = self.current.load(Ordering::Acquire);
            let (w, count) = Self::unpack(cur);
            if w >= window {
                return (w, count);
            }
            // The previous window's count first: a reader who sees the new
            // current window then finds its predecessor. `fetch_max` keeps
            // the largest count a racing roller saw for the same window.
            let carried = if w.wrapping_add(1) == window {
                count
            } else {
                0
            };
            self.previous
                .fetch_max(Self::pack(window - 1, carried), Ordering::AcqRel);
            if self
                .current
                .compare_exchange(
                    cur,
                    Self::pack(window, 0),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
            {
                return (window, 0);
            }
        }
    }

    /// The count of the window before `window` (0 if none is kept).
    pub fn previous_of(&self, window: u32) -> u64 {
        let (w, count) = Self::unpack(self.previous.load(Ordering::Acquire));
        if window > 0 && w == window - 1 {
            count
        } else {
            0
        }
    }

    /// Sets the current window's count from `count` to `to`; `false` if it
    /// moved meanwhile (the caller looks again).
    pub fn swap(&self, window: u32, count: u64, to: u64) -> bool {
        self.current
            .compare_exchange(
                Self::pack(window, count),
                Self::pack(window, to),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// Adds to the count of `window` if it is the current or the previous one.
    pub fn add(&self, window: u32, units: u64) {
        let window = Self::number(window);
        if units == 0 {
            return;
        }
        let (w, _) = self.rolled(window);
        let slot = if w == window {
            &self.current
        } else if w > 0 && w - 1 == window {
            &self.previous
        } else {
            return;
        };
        let _ = slot.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
            let (vw, count) = Self::unpack(v);
            (vw == window).then(|| Self::pack(vw, count + units))
        });
    }

    /// Takes back units counted in `window`, if that window still counts.
    pub fn give_back(&self, window: u32, units: u64) {
        let window = Self::number(window);
        if units == 0 {
            return;
        }
        for slot in [&self.current, &self.previous] {
            let done = slot
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                    let (w, count) = Self::unpack(v);
                    (w == window).then(|| Self::pack(w, count.saturating_sub(units)))
                })
                .is_ok();
            if done {
                return;
            }
        }
    }
}

/// The previous window's count as it still weighs `elapsed` into window
/// `asked`; if the stored window `w` is newer (another shard's clock is
/// ahead), the previous one weighs whole: a take never counts less than due.
fn weighted(previous: u64, elapsed: f64, w: u32, asked: u32) -> u64 {
    let elapsed = if w > Windows::<32>::number(asked) {
        0.0
    } else {
        elapsed
    };
    crate::num::ceil_u64(previous as f64 * (1.0 - elapsed))
}

/// A bucket's counts. Shared by every shard (one per rule and scope value).
#[derive(Debug, Default)]
pub struct Counter {
    windows: Windows<32>,
    in_flight: AtomicU64,
}

impl Counter {
    /// Takes between `min` and `max` units if the window has room for `min`:
    /// never more than `limit` counted (sliding: the previous window's count
    /// weighted by how much of it still overlaps, rounded up).
    pub fn take(
        &self,
        now: (u32, f64),
        sliding: bool,
        limit: u64,
        min: u64,
        max: u64,
    ) -> Result<Grant, Refusal> {
        self.take_with(now, sliding, limit, min, |_| max)
    }

    /// As [`Counter::take`], with the most to take decided from the room
    /// there is (a lease: a share of the room, so shards leave some to others).
    pub fn take_with(
        &self,
        now: (u32, f64),
        sliding: bool,
        limit: u64,
        min: u64,
        max: impl Fn(u64) -> u64,
    ) -> Result<Grant, Refusal> {
        let (window, elapsed) = now;
        loop {
            let (w, count) = self.windows.rolled(window);
            let previous = if sliding {
                self.windows.previous_of(w)
            } else {
                0
            };
            let weighted = weighted(previous, elapsed, w, window);
            let room = limit.saturating_sub(count + weighted);
            if room < min.max(1) {
                return Err(Refusal {
                    current: count,
                    previous,
                    elapsed,
                });
            }
            let units = room.min(max(room).max(min));
            if self.windows.swap(w, count, count + units) {
                return Ok(Grant {
                    window: w,
                    units,
                    remaining: room - units,
                });
            }
        }
    }

    /// What is left now (for the remaining-count headers; not a promise).
    pub fn remaining(&self, now: (u32, f64), sliding: bool, limit: u64) -> u64 {
        let (w, count) = self.windows.rolled(now.0);
        let previous = if sliding {
            self.windows.previous_of(w)
        } else {
            0
        };
        let weighted = weighted(previous, now.1, w, now.0);
        limit.saturating_sub(count + weighted)
    }

    /// Adds units past the limit (usage above a reservation: debt, never
    /// forgiven) to the window of `now`.
    pub fn add(&self, now: u32, units: u64) {
        self.windows.add(now, units);
    }

    /// Gives back units taken in `window`: to the current count if that window
    /// is still current, to the previous count if it just ended, else nowhere.
    pub fn give_back(&self, window: u32, units: u64) {
        self.windows.give_back(window, units);
    }

    /// One more in flight, unless `limit` are.
    pub fn enter(&self, limit: u64) -> bool {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    pub fn leave(&self) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// The window number last counted in.
    pub fn last_window(&self) -> u32 {
        self.windows.rolled(0).0
    }
}

/// Milliseconds until a refused take of `want` units could succeed, with no
/// other traffic: for a fixed window its end; for a sliding one, until the
/// previous window's weight (or, next window, this one's) has faded enough.
/// `None`: `want` is more than the whole limit, so never.
pub fn wait_ms(r: &Refusal, limit: u64, want: u64, window_ms: u64, sliding: bool) -> Option<u64> {
    if want > limit {
        return None;
    }
    let w = window_ms as f64;
    let to_end = (1.0 - r.elapsed) * w;
    if !sliding {
        return Some(to_end.round() as u64);
    }
    let (limit, want) = (limit as f64, want as f64);
    let (cur, prev) = (r.current as f64, r.previous as f64);
    // Still in this window: prev * (1 - f) + cur + want <= limit.
    if cur + want <= limit && prev > 0.0 {
        let f = 1.0 - (limit - cur - want) / prev;
        return Some(((f - r.elapsed) * w).max(1.0).round() as u64);
    }
    // In the next one: cur * (1 - f) + want <= limit.
    let f = if cur > 0.0 {
        (1.0 - (limit - want) / cur).clamp(0.0, 1.0)
    } else {
        0.0
    };
    Some((to_end + f * w).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_never_pass_the_limit_and_leases_shrink_at_the_end() {
        let c = Counter::default();
        let g = c.take((5, 0.1), false, 10, 1, 4).unwrap();
        assert_eq!((g.window, g.units, g.remaining), (5, 4, 6));
        assert_eq!(c.take((5, 0.2), false, 10, 1, 4).unwrap().units, 4);
        assert_eq!(c.take((5, 0.3), false, 10, 1, 4).unwrap().units, 2);
        let r = c.take((5, 0.4), false, 10, 1, 4).unwrap_err();
        assert_eq!(r.current, 10);
        c.give_back(5, 3);
        assert_eq!(c.take((5, 0.5), false, 10, 3, 3).unwrap().units, 3);
        // A new fixed window starts empty.
        assert_eq!(c.take((6, 0.0), false, 10, 10, 10).unwrap().units, 10);
    }

    #[test]
    fn a_sliding_window_weighs_the_previous_one() {
        let c = Counter::default();
        c.take((1, 0.5), true, 10, 10, 10).unwrap();
        // A quarter into window 2, three quarters of window 1's 10 still count.
        let r = c.take((2, 0.25), true, 10, 3, 3).unwrap_err();
        assert_eq!((r.current, r.previous), (0, 10));
        assert_eq!(c.take((2, 0.25), true, 10, 1, 8).unwrap().units, 2);
        // Half into window 3: window 2's 2 count for 1.
        assert_eq!(c.remaining((3, 0.5), true, 10), 9);
        // Two windows later nothing carries.
        assert_eq!(c.remaining((5, 0.0), true, 10), 10);
    }

    #[test]
    fn units_given_back_after_the_window_ended_go_to_the_previous_count() {
        let c = Counter::default();
        let g = c.take((1, 0.9), true, 10, 10, 10).unwrap();
        c.take((2, 0.0), true, 10, 1, 1).unwrap_err();
        c.give_back(g.window, 10);
        assert_eq!(c.remaining((2, 0.0), true, 10), 10);
        // Debt goes into the window of its settlement.
        c.add(2, 25);
        assert_eq!(c.remaining((2, 0.5), true, 10), 0);
        assert!(
            c.take((3, 0.5), true, 10, 1, 1).is_err(),
            "half of 25 still counts"
        );
    }

    #[test]
    fn a_shard_behind_the_clock_counts_the_previous_window_whole() {
        let c = Counter::default();
        c.take((1, 0.5), true, 10, 10, 10).unwrap();
        // Another shard moved the bucket to window 2 at its start.
        assert!(c.take((2, 0.0), true, 10, 1, 1).is_err());
        // A shard whose clock still says late in window 1 must not weigh
        // window 1 (now the previous one) as nearly over.
        assert!(c.take((1, 0.999), true, 10, 1, 1).is_err());
    }

    #[test]
    fn concurrency_enters_up_to_its_limit() {
        let c = Counter::default();
        assert!(c.enter(2) && c.enter(2) && !c.enter(2));
        c.leave();
        assert!(c.enter(2));
        assert_eq!(c.in_flight(), 2);
    }

    #[test]
    fn waits_are_until_enough_has_faded() {
        let fixed = Refusal {
            current: 10,
            previous: 0,
            elapsed: 0.25,
        };
        assert_eq!(wait_ms(&fixed, 10, 1, 60_000, false), Some(45_000));
        assert_eq!(wait_ms(&fixed, 10, 11, 60_000, false), None);
        // Sliding, full now: the rest of this window, then a tenth of the next.
        assert_eq!(wait_ms(&fixed, 10, 1, 60_000, true), Some(45_000 + 6_000));
        // Sliding, room now but the previous window weighs: until it fades.
        let prev = Refusal {
            current: 2,
            previous: 10,
            elapsed: 0.25,
        };
        assert_eq!(wait_ms(&prev, 10, 1, 60_000, true), Some(3_000));
    }

    #[test]
    fn racing_takers_share_exactly_the_limit() {
        let c = std::sync::Arc::new(Counter::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    let mut got = 0;
                    while let Ok(g) = c.take((7, 0.5), true, 1000, 1, 3) {
                        got += g.units;
                    }
                    got
                })
            })
            .collect();
        let total: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(total, 1000);
    }
}
