//! Request ids: UUIDv7 (RFC 9562), the `aigw-request-id` header and the log
//! row's key. Time-ordered, so ids sort like the requests they name, and unique
//! across shards and restarts without coordination. A leaf.
//!
//! Each shard owns a [`IdGen`]: the time comes from the request's arrival; of
//! the 74 bits RFC 9562 leaves to the implementation, the low 8 of `rand_a`
//! name the shard that served the request (the last two hex digits of the
//! third group), the other 66 come from a per-shard xorshift generator seeded
//! from the OS.

use std::fmt;

/// One request id: a UUIDv7.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u128);

/// Length of the text form (`8-4-4-4-12` hex digits and dashes).
pub const TEXT_LEN: usize = 36;

impl RequestId {
    /// The shard that served the request (modulo 256).
    pub fn shard(self) -> u8 {
        (self.0 >> 64) as u8
    }

    /// Milliseconds since the Unix epoch when the request arrived.
    pub fn unix_ms(self) -> u64 {
        (self.0 >> 80) as u64
    }

    /// The canonical lower-case text form.
    pub fn to_text(self) -> [u8; TEXT_LEN] {
        // This runs for every response head and every log row.
        let hex = crate::num::hex_u128(self.0);
        let mut out = [b'-'; TEXT_LEN];
        // 8-4-4-4-12.
        out[..8].copy_from_slice(&hex[..8]);
        out[9..13].copy_from_slice(&hex[8..12]);
        out[14..18].copy_from_slice(&hex[12..16]);
        out[19..23].copy_from_slice(&hex[16..20]);
        out[24..].copy_from_slice(&hex[20..]);
        out
    }

    /// Parses the text form (either case). `None` for anything else.
    pub fn parse(s: &str) -> Option<RequestId> {
        let b = s.as_bytes();
        if b.len() != TEXT_LEN {
            return None;
        }
        let mut v: u128 = 0;
        for (i, c) in b.iter().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                if *c != b'-' {
                    return None;
                }
                continue;
            }
            v = v << 4 | u128::from((*c as char).to_digit(16)?);
        }
        Some(RequestId(v))
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The text form is ASCII by construction.
        f.write_str(std::str::from_utf8(&self.to_text()).unwrap_or_default())
    }
}

/// A shard's id generator (and its source of cheap randomness, e.g. log sampling).
pub struct IdGen {
    state: u64,
    shard: u8,
}

impl IdGen {
    /// For `shard`; seeded from the OS (`/dev/urandom`), mixed with the shard
    /// (and the clock, should the OS fail us), so two shards never share a sequence.
    pub fn new(shard: usize) -> IdGen {
        let salt = shard as u64;
        let mut seed = [0u8; 8];
        let from_os = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed))
            .is_ok();
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut state = u64::from_le_bytes(seed) ^ splitmix(salt ^ if from_os { 0 } else { clock });
        if state == 0 {
            state = 0x9e37_79b9_7f4a_7c15;
        }
        IdGen {
            state,
            shard: shard as u8,
        }
    }

    /// 64 random bits (xorshift64*).
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A uniform number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A uniform number in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A UUIDv7 for a request that arrived at `unix_ms`.
    pub fn id(&mut self, unix_ms: u64) -> RequestId {
        let (a, b) = (self.next_u64(), self.next_u64());
        let ms = u128::from(unix_ms & 0xffff_ffff_ffff) << 80;
        let version = 0x7u128 << 76;
        let rand_a = u128::from((a & 0xf00) | u64::from(self.shard)) << 64;
        let variant = 0b10u128 << 62;
        let rand_b = u128::from(b & 0x3fff_ffff_ffff_ffff);
        RequestId(ms | version | rand_a | variant | rand_b)
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Wall-clock time read off the monotonic clock, for one thread: a request's
/// arrival `Instant` (which it reads anyway) gives its Unix millisecond
/// without a second clock read. The pairing of the two clocks is taken again
/// when a second has passed, so a step of the wall clock shows within a
/// second, and the clocks' drift in between (NTP slews at most 0.5 ms a
/// second) stays below the millisecond asked for.
pub struct WallClock {
    /// A monotonic instant and the wall-clock nanoseconds since the epoch at it.
    base: std::cell::Cell<(std::time::Instant, u64)>,
}

impl WallClock {
    const REPAIR: std::time::Duration = std::time::Duration::from_secs(1);

    pub fn new() -> WallClock {
        WallClock {
            base: std::cell::Cell::new(Self::pair()),
        }
    }

    fn pair() -> (std::time::Instant, u64) {
        let at = std::time::Instant::now();
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        (at, unix)
    }

    /// Milliseconds since the Unix epoch at `at` (an instant of the recent
    /// past or present).
    pub fn unix_ms(&self, at: std::time::Instant) -> u64 {
        let (mut base, mut unix) = self.base.get();
        if at.saturating_duration_since(base) >= Self::REPAIR {
            (base, unix) = Self::pair();
            self.base.set((base, unix));
        }
        let ns = match at.checked_duration_since(base) {
            Some(after) => unix.saturating_add(after.as_nanos() as u64),
            None => unix.saturating_sub(base.duration_since(at).as_nanos() as u64),
        };
        ns / 1_000_000
    }
}

impl Default for WallClock {
    fn default() -> Self {
        WallClock::new()
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wall_clock_read_off_instants_agrees_with_the_system_clock() {
        let clock = WallClock::new();
        let before = now_unix_ms();
        let at = std::time::Instant::now();
        let after = now_unix_ms();
        let ms = clock.unix_ms(at);
        assert!(
            before <= ms + 1 && ms <= after + 1,
            "{before} <= {ms} <= {after}"
        );
        // An instant before the pairing maps before it, one after it after.
        let earlier = at
            .checked_sub(std::time::Duration::from_millis(250))
            .unwrap();
        let e = clock.unix_ms(earlier);
        assert!(ms - e >= 249 && ms - e <= 251, "{ms} - {e}");
        let later = at + std::time::Duration::from_millis(400);
        let l = clock.unix_ms(later);
        assert!(l - ms >= 399 && l - ms <= 401, "{l} - {ms}");
        // Past the repair interval the pairing is taken again, and an
        // instant far ahead still maps to its own millisecond.
        let ahead = at + std::time::Duration::from_secs(5);
        let a = clock.unix_ms(ahead);
        assert!(a >= before + 4_999 && a <= after + 5_001, "{a}");
    }

    #[test]
    fn ids_are_uuid_v7_and_round_trip_through_text() {
        let mut g = IdGen::new(1);
        let id = g.id(0x0190_1234_5678);
        let text = id.to_string();
        assert_eq!(text.len(), 36);
        assert_eq!(&text[..13], "01901234-5678");
        assert_eq!(&text[14..15], "7", "version nibble: {text}");
        assert!(
            matches!(&text[19..20], "8" | "9" | "a" | "b"),
            "variant: {text}"
        );
        assert_eq!(RequestId::parse(&text), Some(id));
        assert_eq!(RequestId::parse(&text.to_uppercase()), Some(id));
        assert_eq!(id.unix_ms(), 0x0190_1234_5678);
        assert_eq!(id.shard(), 1);
        assert!(text[14..18].ends_with("01"), "{text}");
        assert_eq!(RequestId::parse("not-an-id"), None);
    }

    #[test]
    fn the_text_is_the_hex_digits_with_dashes_at_8_13_18_23() {
        let mut g = IdGen::new(4);
        for v in [0u128, u128::MAX, 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210]
            .into_iter()
            .chain((0..1000).map(|_| u128::from(g.next_u64()) << 64 | u128::from(g.next_u64())))
        {
            let hex = format!("{v:032x}");
            let want = format!(
                "{}-{}-{}-{}-{}",
                &hex[..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..]
            );
            let id = RequestId(v);
            assert_eq!(std::str::from_utf8(&id.to_text()).unwrap(), want);
            assert_eq!(RequestId::parse(&want), Some(id));
        }
    }

    #[test]
    fn ids_sort_by_time_and_do_not_repeat() {
        let mut g = IdGen::new(2);
        let a = g.id(1000);
        let b = g.id(1001);
        assert!(a < b);
        let mut seen = std::collections::HashSet::new();
        assert!((0..10_000).all(|_| seen.insert(g.id(5))));
        let mut other = IdGen::new(3);
        assert_ne!(other.id(5), g.id(5));
    }
}
