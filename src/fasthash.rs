//! One multiply per word for small shard-local maps keyed by short names
//! (providers, models, key ids) and for keys that are hashes already (limit
//! buckets).
//!
//! These maps are looked up on every request and never see untrusted keys in
//! bulk (provider names come from the config), so SipHash's flooding defence
//! buys nothing here and costs a few hundred instructions per lookup.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A multiply and a fold per eight bytes: unseeded, for keys a client does
/// not choose.
#[derive(Clone, Copy)]
pub struct WordHash(u64);

impl Default for WordHash {
    fn default() -> Self {
        WordHash(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for WordHash {
    fn finish(&self) -> u64 {
        self.0
    }
    /// Eight bytes per multiply (a byte at a time, FNV-1a's way, cost a
    /// model name's look-up more than the table's probe); the last word is
    /// padded and carries how many bytes it holds.
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            self.write_u64(u64::from_le_bytes(b));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut w = (rest.len() as u64) << 56;
            for (i, b) in rest.iter().enumerate() {
                w |= u64::from(*b) << (8 * i);
            }
            self.write_u64(w);
        }
    }
    /// `str`'s terminator: one word.
    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }
    /// A whole word at once (keys built from hashes: one multiply, folded).
    fn write_u64(&mut self, n: u64) {
        let x = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = x ^ (x >> 29);
    }
    /// A 128-bit hash (a cache key): two words, not sixteen bytes one by one.
    fn write_u128(&mut self, n: u128) {
        self.write_u64(n as u64);
        self.write_u64((n >> 64) as u64);
    }
}

/// A `HashMap` with [`WordHash`].
pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<WordHash>>;

/// xxh3 with a per-table seed, for small shard-local maps keyed by text a
/// client chose (user agents): fast on strings of any length, and a client
/// cannot aim its keys at one bucket without knowing the seed.
#[derive(Clone, Copy)]
pub struct SeededXxh3(pub u64);

impl std::hash::BuildHasher for SeededXxh3 {
    type Hasher = Xxh3Word;
    fn build_hasher(&self) -> Xxh3Word {
        Xxh3Word(self.0)
    }
}

/// Each write folds its bytes into the state with one seeded xxh3.
pub struct Xxh3Word(u64);

impl Hasher for Xxh3Word {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }
    /// `str`'s terminator: one multiply, not another hash call.
    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        let x = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = x ^ (x >> 29);
    }
}

/// A 128-bit digest as a map key: already a hash, so one word of it is
/// enough for the table.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Digest128(u128);

impl std::hash::Hash for Digest128 {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0 as u64);
    }
}

/// The value found last for one name (a rule's bucket for the key that
/// asked last: the same key asks again and again), found again with one
/// string compare instead of a hash and a map lookup.
#[derive(Debug, Clone)]
pub struct LastFound<T> {
    last: std::cell::RefCell<Option<(Box<str>, T)>>,
}

impl<T> Default for LastFound<T> {
    fn default() -> Self {
        LastFound {
            last: std::cell::RefCell::new(None),
        }
    }
}

impl<T: Clone> LastFound<T> {
    /// The value for `name`: the remembered one, else `find`'s (remembered).
    pub fn get_or(&self, name: &str, find: impl FnOnce() -> T) -> T {
        let mut last = self.last.borrow_mut();
        if let Some((n, v)) = last.as_ref()
            && **n == *name
        {
            return v.clone();
        }
        let v = find();
        *last = Some((name.into(), v.clone()));
        v
    }
}

/// Results of a pure function of some bytes, by the xxh3-128 of those bytes
/// (a shard's memo of request bodies it read: their canonical digest for
/// the cache key, their fields for routing). At most `CAP` entries: the
/// table is allocated once at that size and starts over when full, so it
/// stays small enough to stay in cache.
///
/// A result is kept the second time its bytes are offered, not the first:
/// bodies that never repeat (every request a miss) would otherwise pay a
/// table insert each and push out the ones that do. The first sight leaves
/// 32 bits of the digest in a direct-mapped array of `CAP` slots.
pub struct DigestMemo<V, const CAP: usize> {
    map: FastMap<Digest128, V>,
    seen: Box<[u32]>,
}

impl<V, const CAP: usize> Default for DigestMemo<V, CAP> {
    fn default() -> Self {
        DigestMemo {
            map: FastMap::default(),
            seen: Box::default(),
        }
    }
}

impl<V, const CAP: usize> DigestMemo<V, CAP> {
    pub fn get(&self, digest: u128) -> Option<&V> {
        self.map.get(&Digest128(digest))
    }

    /// The result kept for `digest`, to add to it.
    pub fn get_mut(&mut self, digest: u128) -> Option<&mut V> {
        self.map.get_mut(&Digest128(digest))
    }

    /// Starts loading what [`DigestMemo::insert`] reads first for `digest`,
    /// for a caller with other work to do before it offers the result.
    pub fn prefetch(&self, digest: u128) {
        if let Some(slot) = self.seen.get(self.slot(digest)) {
            crate::sys::prefetch(slot);
        }
    }

    fn slot(&self, digest: u128) -> usize {
        (digest as usize) & self.seen.len().saturating_sub(1)
    }

    /// Offers `digest`'s result: kept when the same digest was offered
    /// lately (its slot still holds it), else only noted. The result is made
    /// only when it is kept. Returns whether it was.
    pub fn insert(&mut self, digest: u128, value: impl FnOnce() -> V) -> bool {
        if self.seen.is_empty() {
            self.seen = vec![0; CAP.next_power_of_two()].into_boxed_slice();
        }
        let slot = self.slot(digest);
        // Never 0, so an empty slot matches nothing.
        let tag = ((digest >> 96) as u32) | 1;
        if self.seen[slot] != tag {
            self.seen[slot] = tag;
            return false;
        }
        if self.map.len() >= CAP {
            self.map.clear();
        }
        if self.map.capacity() == 0 {
            self.map.reserve(CAP);
        }
        self.map.insert(Digest128(digest), value());
        true
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_differ_anywhere_hash_apart() {
        use std::hash::BuildHasher;
        let build = BuildHasherDefault::<WordHash>::default();
        // Every length around a word's, trailing zero bytes, a byte moved
        // between words.
        let mut names: Vec<Vec<u8>> = (0..=17).map(|n| vec![b'a'; n]).collect();
        names.extend((1..=9).map(|n| [b"ab".to_vec(), vec![0; n]].concat()));
        names.extend([
            b"gpt-4o-mini".to_vec(),
            b"gpt-4o-minj".to_vec(),
            b"gpt-4o-mini\0".to_vec(),
        ]);
        names.extend([
            b"abcdefgh".to_vec(),
            b"abcdefg".to_vec(),
            b"bcdefgh".to_vec(),
        ]);
        let mut seen = std::collections::HashMap::new();
        for n in &names {
            let h = build.hash_one(n.as_slice());
            if let Some(other) = seen.insert(h, n) {
                panic!("{n:?} and {other:?} hash alike");
            }
        }
        let map: FastMap<&str, u32> = [("openai", 1), ("anthropic", 2), ("openai-2", 3)]
            .into_iter()
            .collect();
        assert_eq!(
            (map.get("openai"), map.get("openai-2"), map.get("open")),
            (Some(&1), Some(&3), None)
        );
    }

    #[test]
    fn a_digest_is_remembered_from_its_second_sight() {
        let mut memo = DigestMemo::<u32, 8>::default();
        let a = 0x1234_5678_u128 << 96 | 3;
        // Noted, not kept: the result is not even made.
        assert!(!memo.insert(a, || panic!("made but not kept")));
        assert_eq!(memo.get(a), None, "once is not enough");
        assert!(memo.insert(a, || 1));
        assert_eq!(memo.get(a), Some(&1));
        // Another digest in the same slot between two sights replaces the
        // first's note.
        let (b, c) = (0x9abc_def0_u128 << 96 | 4, 0x0fed_cba9_u128 << 96 | 4);
        memo.insert(b, || 2);
        memo.insert(c, || 3);
        memo.insert(b, || 2);
        assert_eq!((memo.get(b), memo.get(c)), (None, None));
        memo.insert(b, || 2);
        assert_eq!(memo.get(b), Some(&2));
        assert_eq!(memo.len(), 2);
    }

    #[test]
    fn the_last_value_is_found_again_and_another_name_looks_afresh() {
        let memo = LastFound::default();
        let looked = std::cell::Cell::new(0);
        let find = |v: u32| {
            looked.set(looked.get() + 1);
            v
        };
        assert_eq!(memo.get_or("alice", || find(1)), 1);
        assert_eq!(memo.get_or("alice", || find(2)), 1);
        assert_eq!(looked.get(), 1);
        assert_eq!(memo.get_or("bob", || find(3)), 3);
        assert_eq!(memo.get_or("alice", || find(4)), 4);
        assert_eq!(looked.get(), 3);
    }
}
