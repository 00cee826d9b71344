//! One shard's partition of the cache: a file under `data_dir/cache`, mapped
//! shared, holding log-structured segments, and the index that finds entries
//! in it.
//!
//! ```text
//! file  = header (4 KiB) | segment 0 | segment 1 | ... (all the same size)
//! segment = header (64 B: magic, version, seq, checksum) | entry | entry | ... | 0
//! ```
//!
//! Only the owner shard writes ([`Writer`]); any shard reads ([`Partition::lookup`])
//! by copying the entry out word by word and proving it whole (checksum,
//! completion mark, key), so a read never waits on the writer and a torn or
//! reused region reads as a miss, never as a wrong answer.
//!
//! Entries are appended to the open segment. When it is full, the next one is
//! reused whole, segcache-style: a segment whose entries have all expired
//! first, else the oldest. Its entries leave the index a few per insert from
//! the time the open segment is half full, not all at the switch (thousands
//! of entries at once stalled the shard for milliseconds). The index is a
//! table of buckets of [`SLOTS`] words (tag, segment, offset): a few bytes
//! per entry. At start the index is
//! rebuilt by walking every segment in sequence order; anything that does not
//! check out is dropped. An entry is only ever findable through the index, and
//! whenever the writer drops one from the index (replaced, evicted, purged) it
//! also clears its completion mark, so a restart cannot bring it back.

use super::entry::{self, Entry, Invalid};
use super::key::CacheKey;
use super::pager::{self, Pager};
use crate::sys::{Prefault, SharedMap};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Files and segments are sized in whole pages.
const PAGE: usize = 4096;
/// Bytes before the first segment.
pub const FILE_HEADER: usize = PAGE;
/// The zero word written after the last entry of a segment, where a walk stops.
const END_MARKER: usize = 8;
/// Bytes of a segment's header.
pub const SEG_HEADER: usize = 64;
/// Slots per index bucket.
pub const SLOTS: usize = 8;
/// Segments per partition we aim for (fewer when entries are large).
const TARGET_SEGMENTS: usize = 32;
/// Largest segment (more, smaller segments evict in finer steps).
const MAX_SEGMENT: usize = 64 << 20;
/// The index is sized for entries of about this many bytes, at half load
/// (8 bytes of index per 256 of store). A short chat answer stored is about
/// 600 bytes: sized for 1 KiB, a full cache left most buckets full, and every
/// insert then evicted a random old entry, reading its header from cold
/// memory (0.3 µs of a 15 µs miss).
const EXPECTED_ENTRY: usize = 512;

const FILE_MAGIC: u64 = 0x4843_4143_5747_4941; // "AIGWCACH"
const FILE_VERSION: u64 = 1;
const SEG_MAGIC: u64 = 0x4745_5357_4749_4100; // "\0AIGWSEG"

/// How a partition is laid out (the same for every partition of a run).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub segment: usize,
    pub segments: usize,
    pub buckets: usize,
}

impl Geometry {
    /// Splits `total` bytes over `shards` partitions. Each must hold at least
    /// two segments, and a segment an entry of `max_entry` bytes.
    pub fn new(total: u64, shards: usize, max_entry: usize) -> Result<Geometry, String> {
        let partition = (total / shards.max(1) as u64) as usize;
        let room = (partition.saturating_sub(FILE_HEADER)) / PAGE * PAGE;
        let need = (SEG_HEADER + entry::encoded_len(max_entry + entry::MAX_SERVED, 0) + END_MARKER)
            .next_multiple_of(PAGE);
        let segment = (room / TARGET_SEGMENTS / PAGE * PAGE)
            .min(MAX_SEGMENT)
            .max(need);
        let segments = room / segment;
        // What whole segments leave over is shared among them: with 4 MiB
        // entries a shard of 32 MiB held 7 segments of 4 MiB, 12% of its
        // share unused.
        let segment = match segments {
            0 => segment,
            n => (room / n / PAGE * PAGE).max(segment),
        };
        if segments < 2 {
            // Two segments, each an entry of `max_entry` with its own
            // header, the segment's and the file's, in whole pages.
            let least = (FILE_HEADER + 2 * need) as u64 * shards.max(1) as u64;
            return Err(format!(
                "cache.size: {total} bytes over {shards} shards leaves {partition} per shard; a shard needs at least {} bytes for two entries of cache.max_entry ({max_entry}) with their headers: set cache.size to at least {least} or lower cache.max_entry",
                FILE_HEADER + 2 * need
            ));
        }
        if segments > u16::MAX as usize {
            return Err("cache.size: too many segments; this cannot happen below 1 TiB".into());
        }
        let buckets = (segments * segment / EXPECTED_ENTRY * 2 / SLOTS)
            .next_power_of_two()
            .max(64);
        Ok(Geometry {
            segment,
            segments,
            buckets,
        })
    }

    /// Bytes of one partition file.
    pub fn file_len(&self) -> usize {
        FILE_HEADER + self.segments * self.segment
    }

    fn seg_at(&self, seg: usize) -> usize {
        FILE_HEADER + seg * self.segment
    }
}

/// The partition (shard) that owns `key`, of `shards`.
pub fn partition_of(key: CacheKey, shards: usize) -> usize {
    ((key.0 >> 64) as u64 % shards.max(1) as u64) as usize
}

fn bucket_of(key: CacheKey, buckets: usize) -> usize {
    (key.0 as u64 as usize) & (buckets - 1)
}

fn tag_of(key: CacheKey) -> u64 {
    (key.0 >> 112) as u64
}

/// An index slot: tag (16 bits) | segment (16) | offset in the segment / 8 (32).
/// Zero is empty (no entry starts at offset 0: the segment header is there).
fn slot(key: CacheKey, seg: usize, offset: usize) -> u64 {
    (tag_of(key) << 48) | ((seg as u64) << 32) | (offset as u64 / 8)
}

fn slot_tag(s: u64) -> u64 {
    s >> 48
}

fn slot_seg(s: u64) -> usize {
    ((s >> 32) & 0xffff) as usize
}

fn slot_offset(s: u64) -> usize {
    ((s & 0xffff_ffff) * 8) as usize
}

/// The index words, in anonymous memory advised to use huge pages: a lookup
/// lands on a random bucket, and with 4 KiB pages each one also missed the
/// TLB (a profile of all-miss traffic showed the lookup at 0.6 µs).
struct Slots(SharedMap);

impl Slots {
    fn new(words: usize) -> io::Result<Slots> {
        SharedMap::anonymous(words * 8).map(Slots)
    }
    fn len(&self) -> usize {
        self.0.len() / 8
    }
    fn load(&self, i: usize, order: Ordering) -> u64 {
        self.0.load(i * 8, order)
    }
    fn store(&self, i: usize, value: u64, order: Ordering) {
        self.0.store(i * 8, value, order)
    }
    /// Starts loading the bucket that begins at word `i` (one cache line).
    fn prefetch(&self, i: usize) {
        self.0.prefetch(i * 8)
    }
}

/// Adds `n` to a partition counter. Only the partition's one [`Writer`]
/// changes its counters (the start's rebuild, then the owner shard, then the
/// main thread once every shard stopped, each handing it on in order), so a
/// load and a store do what a locked read-modify-write would, without its
/// cost: an insert that reclaims changed up to a dozen counters.
fn add(counter: &AtomicU64, n: u64, order: Ordering) {
    counter.store(counter.load(Ordering::Relaxed).wrapping_add(n), order)
}

/// Takes `n` from a partition counter (see [`add`]).
fn sub(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_sub(n),
        Ordering::Relaxed,
    )
}

/// Counters of one partition, written by its owner, read by the stats thread.
#[derive(Default, Debug)]
pub struct PartitionStats {
    pub entries: AtomicU64,
    /// Bytes of the live entries.
    pub bytes: AtomicU64,
    pub stores: AtomicU64,
    /// Live entries dropped to make room (segment reuse or a full bucket).
    pub evictions: AtomicU64,
    /// Expired entries dropped when their segment was reused.
    pub expirations: AtomicU64,
    pub purged: AtomicU64,
}

/// What every shard holds of one partition: its mapping and its index.
pub struct Partition {
    map: SharedMap,
    /// The index: `buckets * SLOTS` words.
    slots: Slots,
    geo: Geometry,
    pub stats: PartitionStats,
}

/// Why an entry was found but not served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found<'b> {
    Fresh(Entry<'b>),
    Expired,
}

impl Partition {
    /// Finds `key`, copying its entry into `buf`. Never waits; what another
    /// shard is writing meanwhile reads as absent.
    pub fn lookup<'b>(
        &self,
        key: CacheKey,
        now_ms: u64,
        buf: &'b mut Vec<u8>,
    ) -> Option<Found<'b>> {
        let b = bucket_of(key, self.geo.buckets) * SLOTS;
        let tag = tag_of(key);
        let mut at = None;
        for i in 0..SLOTS {
            let s = self.slots.load(b + i, Ordering::Acquire);
            if s != 0 && slot_tag(s) == tag && self.read_entry(s, key, buf) {
                at = Some(s);
                break;
            }
        }
        at?;
        let bytes: &'b Vec<u8> = buf;
        let e = entry::decode(bytes).ok()?;
        if e.key != key {
            return None;
        }
        Some(if e.expires_ms <= now_ms {
            Found::Expired
        } else {
            Found::Fresh(e)
        })
    }

    /// Copies the entry a slot points at into `buf` if its header names `key`
    /// and its lengths fit; the caller proves the copy whole.
    fn read_entry(&self, s: u64, key: CacheKey, buf: &mut Vec<u8>) -> bool {
        let (seg, off) = (slot_seg(s), slot_offset(s));
        if seg >= self.geo.segments || off + entry::HEADER_LEN > self.geo.segment {
            return false;
        }
        let at = self.geo.seg_at(seg) + off;
        let mut header = [0u8; entry::HEADER_LEN];
        self.map.read(at, &mut header);
        let Ok(entry::Frame { key: k, len, .. }) = entry::frame(&header) else {
            return false;
        };
        if k != key || off + len > self.geo.segment {
            return false;
        }
        // Every byte is overwritten below; `resize` zeroes only what the
        // buffer never had (the header went to the stack, not through it).
        buf.resize(len, 0);
        buf[..entry::HEADER_LEN].copy_from_slice(&header);
        self.map
            .read(at + entry::HEADER_LEN, &mut buf[entry::HEADER_LEN..]);
        true
    }
}

/// What a start found in a partition file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Opened {
    /// Valid, unexpired entries now in the index.
    pub kept: u64,
    /// Entries dropped: torn, corrupt, of another version, expired, or
    /// superseded.
    pub dropped: u64,
    /// The file was (re)made from scratch, and why.
    pub fresh: Option<String>,
}

/// The owner's bookkeeping of one segment.
#[derive(Clone, Copy, Debug, Default)]
struct Seg {
    /// Order of first use (0: empty, never used since the file was made).
    seq: u64,
    /// Where the next entry goes.
    used: usize,
    /// Latest expiry of any entry written to it.
    max_expires: u64,
}

/// What to purge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purge {
    All,
    Key(CacheKey),
    Provider(u32),
}

/// The owner shard's writer of its partition.
pub struct Writer {
    segs: Vec<Seg>,
    open: usize,
    next_seq: u64,
    scratch: Vec<u8>,
    /// The segment to reuse next, being taken out of the index a few
    /// entries per insert once the open one is half full, and where its walk
    /// stands (`None`: done). Reclaiming a whole segment at once stalled the
    /// shard for milliseconds (a segment holds thousands of entries).
    ahead: Option<(usize, Option<usize>)>,
    /// Who makes the open segment's pages writable ahead of the writer
    /// (`None`: nobody, they fault as they are first written).
    pager: Option<Pager>,
    pages: Prefault,
    /// Where the pages asked for so far end (an offset in the file).
    paged_to: usize,
}

/// Entries of the segment to reuse next that each insert takes out of the
/// index: enough to finish it in an eighth of a segment's inserts when its
/// entries are as large as the new ones (the rest, if any, goes at the switch).
const RECLAIM_STEP: usize = 8;

/// The segment to reuse next starts leaving the index once the open one is
/// past `1 / RECLAIM_AHEAD` full: early enough to finish in steps, late
/// enough that its entries stay findable most of the segment's life.
const RECLAIM_AHEAD: usize = 2;

/// The path of partition `shard`'s file.
pub fn file_path(dir: &Path, shard: usize) -> PathBuf {
    dir.join(format!("partition-{shard}.bin"))
}

/// Opens (or makes) partition `shard` of `shards` in `dir` and rebuilds its
/// index from what the file holds.
pub fn open(
    dir: &Path,
    shard: usize,
    shards: usize,
    geo: Geometry,
    now_ms: u64,
) -> io::Result<(Partition, Writer, Opened)> {
    let path = file_path(dir, shard);
    let file = crate::private::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    crate::private::restrict(&path)?;
    let len = geo.file_len();
    let on_disk = file.metadata()?.len();
    let mut fresh = None;
    if on_disk != len as u64 {
        if on_disk != 0 {
            // Say why in the operator's terms when the old header can tell.
            let mut old = vec![0u8; 64];
            let known = std::io::Read::read_exact(&mut &file, &mut old).is_ok()
                && old[..8] == FILE_MAGIC.to_le_bytes();
            fresh = Some(if known {
                describe_mismatch(&old, shards, Some((on_disk, len as u64)))
            } else {
                format!(
                    "{} was {on_disk} bytes, not the {len} this configuration needs",
                    path.display()
                )
            });
        }
        // Not mapped by any reader (the data_dir lock keeps other aigw out; a
        // page-ahead job of an earlier open in this process may still hold
        // a mapping of it, which reads and writes nothing).
        file.set_len(0)?;
        file.set_len(len as u64)?;
    }
    crate::sys::allocate(&file, len as u64)?;
    let map = SharedMap::new(&file, len)?;
    drop::<File>(file);
    let slots = Slots::new(geo.buckets * SLOTS)?;
    let part = Partition {
        map,
        slots,
        geo,
        stats: PartitionStats::default(),
    };
    let header = file_header(shard, shards, geo);
    let mut writer = Writer {
        segs: vec![Seg::default(); geo.segments],
        open: 0,
        next_seq: 1,
        scratch: Vec::new(),
        ahead: None,
        pager: None,
        pages: part.map.prefault(),
        paged_to: 0,
    };
    let mut found = vec![0u8; FILE_HEADER];
    part.map.read(0, &mut found);
    if found[..header.len()] != header[..] {
        if fresh.is_none() && on_disk != 0 {
            fresh = Some(describe_mismatch(&found, shards, None));
        }
        if on_disk == 0 {
            fresh = Some("new file".into());
        }
        for seg in 0..geo.segments {
            part.map.write(geo.seg_at(seg), &[0u8; SEG_HEADER]);
        }
        part.map.write(0, &header);
        let _ = part.map.flush_async();
        writer.start_segment(&part, 0);
        return Ok((
            part,
            writer,
            Opened {
                fresh,
                ..Opened::default()
            },
        ));
    }
    let opened = writer.rebuild(&part, shard, shards, now_ms);
    Ok((part, writer, opened))
}

/// The file header: what a file must say to be trusted as this partition.
fn file_header(shard: usize, shards: usize, geo: Geometry) -> Vec<u8> {
    let mut h = Vec::with_capacity(64);
    for w in [
        FILE_MAGIC,
        FILE_VERSION,
        entry::FORMAT_VERSION as u64,
        shard as u64,
        shards as u64,
        geo.segment as u64,
        geo.segments as u64,
    ] {
        h.extend_from_slice(&w.to_le_bytes());
    }
    let sum = xxhash_rust::xxh3::xxh3_64(&h);
    h.extend_from_slice(&sum.to_le_bytes());
    h
}

/// Says why a file's header is not this run's (for the start-up line);
/// `sizes`: the file's length and the one this run needs, when they differ.
fn describe_mismatch(found: &[u8], shards: usize, sizes: Option<(u64, u64)>) -> String {
    let word =
        |i: usize| u64::from_le_bytes(found[i * 8..i * 8 + 8].try_into().unwrap_or_default());
    if word(0) != FILE_MAGIC {
        return "not a cache file (or its header is damaged); started empty".into();
    }
    if word(1) != FILE_VERSION || word(2) != entry::FORMAT_VERSION as u64 {
        return "written by another aigw version; its entries were dropped".into();
    }
    if word(4) != shards as u64 {
        return format!(
            "written for {} shards, now {shards}: entries are partitioned by shard, so they were dropped (not re-partitioned)",
            word(4)
        );
    }
    match sizes {
        Some((was, needs)) => format!(
            "the file was {was} bytes, not the {needs} this configuration needs (cut short, or cache.size or cache.max_entry changed); its entries were dropped"
        ),
        None => "cache.size or cache.max_entry changed; its entries were dropped".into(),
    }
}

fn seg_header(seq: u64) -> [u8; SEG_HEADER] {
    let mut h = [0u8; SEG_HEADER];
    h[0..8].copy_from_slice(&SEG_MAGIC.to_le_bytes());
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    let sum = xxhash_rust::xxh3::xxh3_64(&h[..16]);
    h[16..24].copy_from_slice(&sum.to_le_bytes());
    h
}

/// The sequence number of a segment header, if it is a valid one.
fn read_seg_seq(h: &[u8]) -> Option<u64> {
    let w = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().unwrap_or_default());
    (w(0) == SEG_MAGIC && w(16) == xxhash_rust::xxh3::xxh3_64(&h[..16]) && w(8) != 0).then(|| w(8))
}

impl Writer {
    /// Has `pager` make the pages ahead of this writer writable from now on
    /// (see [`super::pager`]).
    pub fn use_pager(&mut self, part: &Partition, pager: Pager) {
        self.pager = Some(pager);
        let next = part.geo.seg_at(self.open) + self.segs[self.open].used;
        self.paged_to = next;
        self.page_ahead(part.geo, next);
    }

    /// Keeps at least one [`pager::STEP`] of the open segment from `next`
    /// (where the next write ends) asked for, up to the segment's end.
    fn page_ahead(&mut self, geo: Geometry, next: usize) {
        let Some(pager) = &self.pager else { return };
        let seg_end = geo.seg_at(self.open) + geo.segment;
        if self.paged_to >= seg_end || self.paged_to >= next + pager::STEP {
            return;
        }
        // `paged_to` is inside the open segment: opening one (or taking a
        // pager) sets it there.
        let to = (next + 2 * pager::STEP).min(seg_end);
        pager.ask(&self.pages, self.paged_to, to - self.paged_to);
        self.paged_to = to;
    }

    /// Walks every segment in sequence order and indexes each valid,
    /// unexpired entry of this partition (a later one replaces an earlier).
    fn rebuild(&mut self, part: &Partition, shard: usize, shards: usize, now_ms: u64) -> Opened {
        let geo = part.geo;
        let mut opened = Opened::default();
        let mut order = Vec::new();
        let mut h = [0u8; SEG_HEADER];
        for seg in 0..geo.segments {
            part.map.read(geo.seg_at(seg), &mut h);
            if let Some(seq) = read_seg_seq(&h) {
                self.segs[seg].seq = seq;
                order.push(seg);
            }
        }
        order.sort_by_key(|s| self.segs[*s].seq);
        let mut buf = Vec::new();
        for &seg in &order {
            let base = geo.seg_at(seg);
            let mut off = SEG_HEADER;
            loop {
                if off + entry::HEADER_LEN > geo.segment {
                    break;
                }
                buf.resize(entry::HEADER_LEN, 0);
                part.map.read(base + off, &mut buf);
                let len = match entry::frame(&buf) {
                    Ok(f) if off + f.len <= geo.segment => f.len,
                    _ => break,
                };
                buf.resize(len, 0);
                part.map.read(
                    base + off + entry::HEADER_LEN,
                    &mut buf[entry::HEADER_LEN..],
                );
                match entry::decode(&buf) {
                    Ok(e) if e.expires_ms > now_ms && partition_of(e.key, shards) == shard => {
                        let seg_meta = &mut self.segs[seg];
                        seg_meta.max_expires = seg_meta.max_expires.max(e.expires_ms);
                        let replaced = self.index(part, e.key, seg, off, len);
                        opened.kept += 1;
                        opened.dropped += u64::from(replaced);
                        opened.kept -= u64::from(replaced);
                    }
                    Ok(_) | Err(Invalid::Corrupt | Invalid::Incomplete) => opened.dropped += 1,
                    Err(_) => break,
                }
                off += len;
            }
            self.segs[seg].used = off;
        }
        match order.last() {
            Some(&last) => {
                self.open = last;
                self.next_seq = self.segs[last].seq + 1;
            }
            None => self.start_segment(part, 0),
        }
        opened
    }

    /// Makes `seg` the open segment, empty, with the next sequence number.
    fn start_segment(&mut self, part: &Partition, seg: usize) {
        let base = part.geo.seg_at(seg);
        // The first entry's place is zeroed before the header says the segment
        // is in use, so a crash between the two shows an empty segment.
        part.map.store(base + SEG_HEADER, 0, Ordering::Relaxed);
        part.map.write(base, &seg_header(self.next_seq));
        self.segs[seg] = Seg {
            seq: self.next_seq,
            used: SEG_HEADER,
            max_expires: 0,
        };
        self.next_seq += 1;
        self.open = seg;
        self.paged_to = base;
        self.page_ahead(part.geo, base);
    }

    /// Stores `e`; returns false when it cannot fit a segment.
    pub fn insert(&mut self, part: &Partition, e: &Entry<'_>, now_ms: u64) -> bool {
        let geo = part.geo;
        let len = e.size();
        if SEG_HEADER + len > geo.segment {
            return false;
        }
        // The entry's bucket, loading while the entry is written: it was
        // last touched at the lookup, a whole upstream call ago.
        part.slots.prefetch(bucket_of(e.key, geo.buckets) * SLOTS);
        let used = self.segs[self.open].used;
        let full = used + len > geo.segment;
        if full || used > geo.segment / RECLAIM_AHEAD {
            // The segment to reuse next, and where its walk stands.
            let (seg, at) = self
                .ahead
                .take()
                .unwrap_or_else(|| (self.victim(now_ms), Some(SEG_HEADER)));
            if full {
                // The rest of it leaves the index now, and it opens.
                if let Some(at) = at {
                    self.reclaim(part, seg, at, usize::MAX, now_ms);
                }
                self.start_segment(part, seg);
            } else {
                let at = at.and_then(|at| self.reclaim(part, seg, at, RECLAIM_STEP, now_ms));
                self.ahead = Some((seg, at));
            }
        }
        let seg = self.open;
        let off = self.segs[seg].used;
        let at = geo.seg_at(seg) + off;
        self.page_ahead(geo, at + len);
        self.scratch.resize(len, 0);
        entry::encode(e, &mut self.scratch);
        // The end marker first: a walk after a crash stops here.
        if off + len + END_MARKER <= geo.segment {
            part.map.store(at + len, 0, Ordering::Relaxed);
        }
        let mark = len - entry::TRAILER_LEN;
        part.map.write(at, &self.scratch[..mark]);
        let mark_word = u64::from_le_bytes(self.scratch[mark..len].try_into().unwrap_or_default());
        part.map.store(at + mark, mark_word, Ordering::Release);
        let s = &mut self.segs[seg];
        s.used = off + len;
        s.max_expires = s.max_expires.max(e.expires_ms);
        self.index(part, e.key, seg, off, len);
        // Release: a lookup that sees the new count sees the new slot (the
        // leader's re-check in `ShardCache::find` relies on it).
        add(&part.stats.stores, 1, Ordering::Release);
        true
    }

    /// Points the index at the entry at (`seg`, `off`). An older entry of the
    /// same key is dropped; in a full bucket, the entry in the oldest segment
    /// goes. Returns whether an entry of the same key was replaced.
    fn index(
        &mut self,
        part: &Partition,
        key: CacheKey,
        seg: usize,
        off: usize,
        len: usize,
    ) -> bool {
        let b = bucket_of(key, part.geo.buckets) * SLOTS;
        let new = slot(key, seg, off);
        let mut free = None;
        let mut oldest: Option<(usize, u64)> = None;
        for i in b..b + SLOTS {
            let s = part.slots.load(i, Ordering::Relaxed);
            if s == 0 {
                free.get_or_insert(i);
                continue;
            }
            if slot_tag(s) == slot_tag(new) && self.frame_at(part, s).map(|f| f.key) == Some(key) {
                self.drop_entry(part, i, s);
                part.slots.store(i, new, Ordering::Release);
                self.count_in(part, len);
                return true;
            }
            let seq = self.segs[slot_seg(s)].seq;
            if oldest.is_none_or(|(_, q)| seq < q) {
                oldest = Some((i, seq));
            }
        }
        let i = match (free, oldest) {
            (Some(i), _) => i,
            (None, Some((i, _))) => {
                let s = part.slots.load(i, Ordering::Relaxed);
                self.drop_entry(part, i, s);
                add(&part.stats.evictions, 1, Ordering::Relaxed);
                i
            }
            (None, None) => unreachable!("a bucket has slots"),
        };
        part.slots.store(i, new, Ordering::Release);
        self.count_in(part, len);
        false
    }

    fn count_in(&self, part: &Partition, len: usize) {
        add(&part.stats.entries, 1, Ordering::Relaxed);
        add(&part.stats.bytes, len as u64, Ordering::Relaxed);
    }

    /// The header of the entry a slot points at (the owner reads its own writes).
    fn frame_at(&self, part: &Partition, s: u64) -> Option<entry::Frame> {
        let at = part.geo.seg_at(slot_seg(s)) + slot_offset(s);
        let mut h = [0u8; entry::HEADER_LEN];
        part.map.read(at, &mut h);
        entry::frame(&h).ok()
    }

    /// Takes slot `i` (holding `s`) out of the index and clears its entry's
    /// completion mark, so no restart finds it again.
    fn drop_entry(&mut self, part: &Partition, i: usize, s: u64) {
        part.slots.store(i, 0, Ordering::Release);
        if let Some(entry::Frame { len, .. }) = self.frame_at(part, s) {
            self.unmark(part, s, len);
        }
    }

    /// Clears the completion mark of the `len`-byte entry slot `s` points at
    /// (already out of the index) and uncounts it.
    fn unmark(&mut self, part: &Partition, s: u64, len: usize) {
        let at = part.geo.seg_at(slot_seg(s)) + slot_offset(s);
        if slot_offset(s) + len <= part.geo.segment {
            part.map
                .store(at + len - entry::TRAILER_LEN, 0, Ordering::Release);
        }
        sub(&part.stats.entries, 1);
        sub(&part.stats.bytes, len as u64);
    }

    /// The segment to reuse next: one whose entries have all expired (the
    /// earliest such), else the oldest; never the open one.
    fn victim(&self, now_ms: u64) -> usize {
        let candidates = (0..self.segs.len()).filter(|s| *s != self.open);
        if let Some(s) = candidates.clone().filter(|s| self.segs[*s].seq == 0).min() {
            return s;
        }
        if let Some(s) = candidates
            .clone()
            .filter(|s| self.segs[*s].max_expires <= now_ms)
            .min_by_key(|s| self.segs[*s].max_expires)
        {
            return s;
        }
        candidates.min_by_key(|s| self.segs[*s].seq).unwrap_or(0)
    }

    /// Takes up to `most` entries of `seg`, from offset `from` on, out of the
    /// index, counting each as an eviction or an expiration. Returns where
    /// the walk stands, or `None` when the segment holds no more.
    ///
    /// A batch at a time: the walk reads the batch's headers (one after
    /// another: each gives the next one's offset) and starts loading each
    /// one's bucket and completion mark; then each leaves the index. Taken
    /// one by one, every entry waited on two lines of cold memory in turn.
    fn reclaim(
        &mut self,
        part: &Partition,
        seg: usize,
        from: usize,
        most: usize,
        now_ms: u64,
    ) -> Option<usize> {
        if self.segs[seg].seq == 0 {
            return None;
        }
        let geo = part.geo;
        let used = self.segs[seg].used;
        let mut off = from;
        let mut left = most;
        let mut batch = [(0usize, entry::Frame::default()); RECLAIM_STEP];
        loop {
            let mut n = 0;
            let mut ended = false;
            while n < RECLAIM_STEP.min(left) {
                if off + entry::HEADER_LEN > used {
                    ended = true;
                    break;
                }
                let Some(f) = self.frame_at(part, slot(CacheKey(0), seg, off)) else {
                    ended = true;
                    break;
                };
                part.slots.prefetch(bucket_of(f.key, geo.buckets) * SLOTS);
                part.map
                    .prefetch(geo.seg_at(seg) + off + f.len - entry::TRAILER_LEN);
                batch[n] = (off, f);
                n += 1;
                off += f.len;
            }
            for &(at, f) in &batch[..n] {
                let b = bucket_of(f.key, geo.buckets) * SLOTS;
                let here = slot(f.key, seg, at);
                for i in b..b + SLOTS {
                    if part.slots.load(i, Ordering::Relaxed) == here {
                        // Its header was just read: no second read for its length.
                        part.slots.store(i, 0, Ordering::Release);
                        self.unmark(part, here, f.len);
                        let counter = if f.expires_ms <= now_ms {
                            &part.stats.expirations
                        } else {
                            &part.stats.evictions
                        };
                        add(counter, 1, Ordering::Relaxed);
                    }
                }
            }
            left -= n;
            if ended {
                return None;
            }
            if left == 0 {
                return Some(off);
            }
        }
    }

    /// Drops what `what` names; returns how many entries went.
    pub fn purge(&mut self, part: &Partition, what: Purge) -> u64 {
        let mut n = 0;
        if what == Purge::All {
            n = part.stats.entries.load(Ordering::Relaxed);
            for i in 0..part.slots.len() {
                part.slots.store(i, 0, Ordering::Release);
            }
            for seg in 0..part.geo.segments {
                part.map.write(part.geo.seg_at(seg), &[0u8; SEG_HEADER]);
                self.segs[seg] = Seg::default();
            }
            part.stats.entries.store(0, Ordering::Relaxed);
            part.stats.bytes.store(0, Ordering::Relaxed);
            self.ahead = None;
            self.start_segment(part, 0);
        } else {
            // A key can only be in its bucket; a provider's entries anywhere.
            let slots = match what {
                Purge::Key(k) => {
                    let b = bucket_of(k, part.geo.buckets) * SLOTS;
                    b..b + SLOTS
                }
                _ => 0..part.slots.len(),
            };
            for i in slots {
                let s = part.slots.load(i, Ordering::Relaxed);
                if s == 0 {
                    continue;
                }
                let Some(f) = self.frame_at(part, s) else {
                    continue;
                };
                let hit = match what {
                    Purge::Key(k) => k == f.key,
                    Purge::Provider(p) => p == f.provider,
                    Purge::All => true,
                };
                if hit {
                    self.drop_entry(part, i, s);
                    n += 1;
                }
            }
        }
        add(&part.stats.purged, n, Ordering::Relaxed);
        n
    }

    /// Asks the kernel to write the partition back (at a clean stop).
    pub fn flush(&self, part: &Partition) {
        let _ = part.map.flush_async();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::FLAG_STREAM;

    /// A fresh directory, removed with what it holds when the test ends
    /// (each partition file is a megabyte; every run used to leave five).
    struct TestDir(PathBuf);

    impl std::ops::Deref for TestDir {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn dir(name: &str) -> TestDir {
        let d = std::env::temp_dir().join(format!("aigw-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TestDir(d)
    }

    fn e(key: u128, body: &[u8], expires_ms: u64) -> Entry<'_> {
        Entry {
            key: CacheKey(key),
            flags: FLAG_STREAM,
            created_ms: 1,
            expires_ms,
            provider: 7,
            input_tokens: 1,
            output_tokens: 2,
            status: 200,
            served: b"up\nm",
            head: b"content-type: application/json\r\n",
            body,
        }
    }

    fn geo() -> Geometry {
        Geometry::new(1 << 20, 1, 16 << 10).unwrap()
    }

    #[test]
    fn geometry_needs_two_segments_per_shard() {
        let g = Geometry::new(1 << 30, 2, 4 << 20).unwrap();
        assert!(g.segments >= 2 && g.segment >= 4 << 20);
        assert!(g.file_len() <= 1 << 29);
        let err = Geometry::new(4 << 20, 2, 4 << 20).unwrap_err();
        assert!(err.contains("cache.max_entry"), "{err}");
    }

    /// A partition file uses its share of `cache.size` (all but its header
    /// and less than a page a segment), whatever the share and entry size.
    #[test]
    fn partitions_use_their_share_of_the_size() {
        for (total, shards, max_entry) in [
            (64u64 << 20, 2, 4 << 20),
            (64 << 20, 1, 4 << 20),
            (1 << 30, 2, 4 << 20),
            (1 << 30, 3, 4 << 20),
            (100 << 20, 2, 1 << 20),
            (10 << 30, 2, 4 << 20),
            (1 << 20, 1, 16 << 10),
        ] {
            let g = Geometry::new(total, shards, max_entry).unwrap();
            let share = (total / shards as u64) as usize;
            assert!(g.file_len() <= share, "{total} {shards}: {g:?}");
            assert!(
                g.file_len() + FILE_HEADER + g.segments * PAGE >= share,
                "{total} {shards} {max_entry}: {} of {share} ({g:?})",
                g.file_len()
            );
            assert_eq!(g.segment % PAGE, 0);
            assert!(g.segment >= max_entry && g.segments >= 2);
        }
    }

    /// The writer keeps at least one step of its open segment asked for
    /// ahead of its writes, in contiguous jobs that stay inside the segment,
    /// from its first write on, in each segment it opens.
    #[test]
    fn the_writer_asks_for_its_pages_ahead_of_its_writes() {
        let d = dir("pager");
        let g = Geometry::new(128 << 20, 1, 16 << 10).unwrap();
        assert!(g.segment > 2 * pager::STEP, "{g:?}");
        let (p, mut w, _) = open(&d, 0, 1, g, 0).unwrap();
        let (pager, rx) = Pager::capture();
        w.use_pager(&p, pager);
        let mut jobs: Vec<(usize, usize)> = Vec::new();
        let body = vec![b'x'; 8 << 10];
        let mut opened = std::collections::BTreeSet::new();
        for k in 1..=(3 * g.segment / body.len()) as u128 {
            assert!(w.insert(&p, &e(k << 70 | k, &body, 1000), 0));
            jobs.extend(rx.try_iter().map(|j| (j.at, j.len)));
            let start = g.seg_at(w.open);
            let end = start + g.segment;
            let written = start + w.segs[w.open].used;
            opened.insert(w.open);
            let mut mine: Vec<_> = jobs
                .iter()
                .filter(|j| (start..end).contains(&j.0))
                .collect();
            mine.sort();
            assert!(mine[0].0 <= start + SEG_HEADER, "{mine:?}");
            for pair in mine.windows(2) {
                assert_eq!(pair[0].0 + pair[0].1, pair[1].0, "gap or overlap: {mine:?}");
            }
            let asked_to = mine.last().map(|j| j.0 + j.1).unwrap();
            assert!(asked_to <= end && asked_to <= g.file_len());
            assert!(
                asked_to >= (written + pager::STEP).min(end),
                "{asked_to} {written}"
            );
        }
        assert!(opened.len() >= 3, "{opened:?}");
    }

    #[test]
    fn stored_entries_are_found_and_survive_a_reopen() {
        let d = dir("reopen");
        let (p, mut w, o) = open(&d, 0, 1, geo(), 0).unwrap();
        assert_eq!(o.fresh.as_deref(), Some("new file"));
        let mut buf = Vec::new();
        assert!(p.lookup(CacheKey(5), 0, &mut buf).is_none());
        for k in 1..100u128 {
            assert!(w.insert(&p, &e(k << 70 | k, format!("body {k}").as_bytes(), 1000), 0));
        }
        match p.lookup(CacheKey(42 << 70 | 42), 10, &mut buf) {
            Some(Found::Fresh(x)) => assert_eq!(x.body, b"body 42"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            p.lookup(CacheKey(42 << 70 | 42), 1000, &mut buf),
            Some(Found::Expired)
        );
        drop((p, w));
        let (p, _w, o) = open(&d, 0, 1, geo(), 10).unwrap();
        assert_eq!((o.kept, o.fresh), (99, None));
        assert!(matches!(
            p.lookup(CacheKey(7 << 70 | 7), 10, &mut buf),
            Some(Found::Fresh(_))
        ));
        // A later start past their expiry keeps none.
        drop(p);
        let (_, _, o) = open(&d, 0, 1, geo(), 2000).unwrap();
        assert_eq!(o.kept, 0);
    }

    #[test]
    fn a_full_partition_reuses_its_oldest_segment() {
        let d = dir("evict");
        let (p, mut w, _) = open(&d, 0, 1, geo(), 0).unwrap();
        let body = vec![b'x'; 4000];
        let n = (geo().segments * geo().segment / 4000 * 2) as u128;
        for k in 1..=n {
            assert!(w.insert(&p, &e(k, &body, u64::MAX), 0));
        }
        let mut buf = Vec::new();
        assert!(
            p.lookup(CacheKey(1), 0, &mut buf).is_none(),
            "oldest evicted"
        );
        assert!(p.lookup(CacheKey(n), 0, &mut buf).is_some(), "newest kept");
        assert!(p.stats.evictions.load(Ordering::Relaxed) > 0);
        let live = p.stats.entries.load(Ordering::Relaxed);
        let found = (1..=n)
            .filter(|k| p.lookup(CacheKey(*k), 0, &mut buf).is_some())
            .count();
        assert_eq!(live, found as u64);
        drop((p, w));
        let (_, _, o) = open(&d, 0, 1, geo(), 0).unwrap();
        assert_eq!(o.kept, live, "a restart finds exactly the live entries");
    }

    #[test]
    fn no_insert_takes_more_than_a_few_entries_out_of_the_index() {
        let d = dir("steps");
        let (p, mut w, _) = open(&d, 0, 1, geo(), 0).unwrap();
        let body = vec![b'y'; 150];
        let per_segment = geo().segment / e(0, &body, 0).size();
        assert!(per_segment > 4 * RECLAIM_STEP, "{per_segment}");
        let n = (geo().segments * per_segment * 3) as u128;
        let gone = |p: &Partition| {
            p.stats.evictions.load(Ordering::Relaxed) + p.stats.expirations.load(Ordering::Relaxed)
        };
        let mut most = 0;
        for k in 1..=n {
            let before = gone(&p);
            // Odd keys expire, so both kinds of reclaim are counted.
            let expires = if k % 2 == 1 { 5 } else { u64::MAX };
            assert!(w.insert(&p, &e(k << 64 | k, &body, expires), 10));
            most = most.max(gone(&p) - before);
        }
        assert!(gone(&p) > n as u64 / 2, "the partition went round");
        // A step of the segment to reuse next, and at most one entry of a
        // full bucket; not a whole segment at once.
        assert!(most <= RECLAIM_STEP as u64 + 1, "{most} at once");
        // The newest entries are all there (only a segment reclaimed early).
        let mut buf = Vec::new();
        let recent = ((geo().segments - 2) * per_segment) as u128;
        for k in (n - recent + 1..=n).filter(|k| k % 2 == 0) {
            assert!(
                p.lookup(CacheKey(k << 64 | k), 0, &mut buf).is_some(),
                "{k}"
            );
        }
        // The counts agree with what is findable, now and after a restart.
        let live = p.stats.entries.load(Ordering::Relaxed);
        let found = (1..=n)
            .filter(|k| p.lookup(CacheKey(k << 64 | k), 0, &mut buf).is_some())
            .count();
        assert_eq!(live, found as u64);
        drop((p, w));
        let (_, _, o) = open(&d, 0, 1, geo(), 0).unwrap();
        assert_eq!(o.kept, live);
    }

    #[test]
    fn replaced_and_purged_entries_stay_gone_after_a_restart() {
        let d = dir("purge");
        let (p, mut w, _) = open(&d, 0, 1, geo(), 0).unwrap();
        w.insert(&p, &e(1, b"old", u64::MAX), 0);
        w.insert(&p, &e(1, b"new", u64::MAX), 0);
        w.insert(&p, &e(2, b"two", u64::MAX), 0);
        let mut other = e(3, b"three", u64::MAX);
        other.provider = 9;
        w.insert(&p, &other, 0);
        assert_eq!(w.purge(&p, Purge::Key(CacheKey(2))), 1);
        assert_eq!(w.purge(&p, Purge::Provider(9)), 1);
        drop((p, w));
        let (p, mut w, o) = open(&d, 0, 1, geo(), 0).unwrap();
        assert_eq!(o.kept, 1);
        let mut buf = Vec::new();
        match p.lookup(CacheKey(1), 0, &mut buf) {
            Some(Found::Fresh(x)) => assert_eq!(x.body, b"new"),
            other => panic!("{other:?}"),
        }
        assert_eq!(w.purge(&p, Purge::All), 1);
        assert!(p.lookup(CacheKey(1), 0, &mut buf).is_none());
        drop((p, w));
        let (_, _, o) = open(&d, 0, 1, geo(), 0).unwrap();
        assert_eq!(o.kept, 0);
    }

    #[test]
    fn another_shard_count_or_a_damaged_file_starts_empty() {
        let d = dir("shape");
        let (p, mut w, _) = open(&d, 0, 2, geo(), 0).unwrap();
        w.insert(&p, &e(2 << 64, b"x", u64::MAX), 0);
        drop((p, w));
        let (_, _, o) = open(&d, 0, 3, geo(), 0).unwrap();
        assert!(o.fresh.unwrap().contains("written for 2 shards"));
        let path = file_path(&d, 0);
        std::fs::write(&path, b"short").unwrap();
        let (_, _, o) = open(&d, 0, 3, geo(), 0).unwrap();
        assert!(o.fresh.unwrap().contains("bytes"));
        // A file of this run cut short says so (not that the size changed).
        let full = std::fs::metadata(&path).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(full / 2).unwrap();
        drop(f);
        let (_, _, o) = open(&d, 0, 3, geo(), 0).unwrap();
        let why = o.fresh.unwrap();
        assert!(
            why.contains("cut short") && why.contains(&format!("{}", full / 2)),
            "{why}"
        );
    }

    #[test]
    fn flipped_bytes_lose_entries_never_answer_wrong() {
        let d = dir("flip");
        let (p, mut w, _) = open(&d, 0, 1, geo(), 0).unwrap();
        let bodies: Vec<Vec<u8>> = (0..200u32)
            .map(|k| format!("answer {k}").repeat(20).into_bytes())
            .collect();
        for (k, b) in bodies.iter().enumerate() {
            w.insert(&p, &e(k as u128 + 1, b, u64::MAX), 0);
        }
        drop((p, w));
        let path = file_path(&d, 0);
        let mut bytes = std::fs::read(&path).unwrap();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..300 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let at = FILE_HEADER + (x as usize % (bytes.len() - FILE_HEADER));
            bytes[at] ^= 1 << (x >> 60 & 7);
        }
        std::fs::write(&path, &bytes).unwrap();
        let (p, _, o) = open(&d, 0, 1, geo(), 0).unwrap();
        assert!(o.kept < 200);
        let mut buf = Vec::new();
        for (k, b) in bodies.iter().enumerate() {
            if let Some(Found::Fresh(x)) = p.lookup(CacheKey(k as u128 + 1), 0, &mut buf) {
                assert_eq!(x.body, &b[..], "entry {k} answered wrong");
            }
        }
    }
}
