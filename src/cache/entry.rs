//! The cache's entry format: how one cached response is laid out in a segment
//! of a shard's mapped file, and how a reader proves what it read is whole.
//!
//! A reader on another shard reads the shared mapping while the owner may be
//! writing, and a restart reads whatever a crash left. So every entry carries
//! a format version, its key, lengths, expiry, a checksum over key, head and
//! body, and a completion mark written last; anything that does not check out
//! is "not there" (never a wrong answer). Pure functions over byte slices: the
//! mapping and its `unsafe` live elsewhere.
//!
//! ```text
//! offset  size  field
//!      0     4  MAGIC
//!      4     2  FORMAT_VERSION
//!      6     2  flags (STREAM: the body is the SSE bytes the client received)
//!      8    16  key (xxh3-128, little endian)
//!     24     8  created, Unix ms
//!     32     8  expires, Unix ms
//!     40     4  head length (status and headers to replay)
//!     44     4  body length
//!     48     4  provider tag (low 32 bits of xxh3-64 of its name: purge by provider)
//!     52     4  input tokens the stored answer cost (saved by each hit)
//!     56     4  output tokens
//!     60     2  HTTP status of the stored answer
//!     62     2  served length (who answered: see [`served`])
//!     64     8  checksum: xxh3-64 of bytes 0..64 (rotated by 32 bits)
//!                xor xxh3-64 of served, head, body and padding
//!     72     -  served, then head, then body, then zeros to a multiple of 8
//!      -     8  completion mark: checksum ^ COMPLETE, written last
//! ```
//!
//! Every entry starts and ends 8-aligned, so the mapping is read and written
//! in whole words.

use super::key::CacheKey;

/// Marks the start of an entry.
pub const MAGIC: u32 = 0xA16A_CAC1;
/// Bumped on any layout change: entries of another version are dropped.
pub const FORMAT_VERSION: u16 = 4;
/// Bytes before the head.
pub const HEADER_LEN: usize = 72;
/// Bytes of the completion mark after the body.
pub const TRAILER_LEN: usize = 8;
/// Mixed into the checksum to make the completion mark.
const COMPLETE: u64 = 0x00C0_FFEE_D0E5_0001;
/// Where the checksum sits (the bytes before it are what it covers of the header).
const SUM_AT: usize = 64;

/// Flag: the body is an SSE stream (replayed as a stream, only to stream requests).
pub const FLAG_STREAM: u16 = 1;

/// One response to store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    pub key: CacheKey,
    pub flags: u16,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub provider: u32,
    pub input_tokens: u32,
    pub output_tokens: u32,
    /// The HTTP status replayed.
    pub status: u16,
    /// Who answered: the provider and model a route's fallback reached, not
    /// its first target ([`served`]; empty: not known).
    pub served: &'a [u8],
    /// What is replayed before the body (status line and headers, as stored).
    pub head: &'a [u8],
    pub body: &'a [u8],
}

impl Entry<'_> {
    /// Bytes the entry takes in a segment.
    pub fn size(&self) -> usize {
        encoded_len(self.served.len() + self.head.len(), self.body.len())
    }
}

/// Longest `served` field kept (a longer model name is not recorded: the
/// hit keeps the names its own request routed to).
pub const MAX_SERVED: usize = 1024;

/// Writes who answered into `out` (cleared first): the provider's name, a
/// newline (never in a provider's name), the model. Nothing when too long.
pub fn served(provider: &str, model: Option<&str>, out: &mut Vec<u8>) {
    out.clear();
    let model = model.unwrap_or("");
    if provider.is_empty() || provider.len() + 1 + model.len() > MAX_SERVED {
        return;
    }
    // One allocation (grown piece by piece, a miss paid two and a copy).
    out.reserve_exact(provider.len() + 1 + model.len());
    out.extend_from_slice(provider.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(model.as_bytes());
}

/// Whether `bytes` say `provider` and `model` answered, as [`served`]
/// writes them (compared as bytes: the usual hit, answered by the target its
/// own request routed to, reads nothing back).
pub fn served_is(bytes: &[u8], provider: &str, model: Option<&str>) -> bool {
    let model = model.unwrap_or("");
    bytes.len() == provider.len() + 1 + model.len()
        && bytes.starts_with(provider.as_bytes())
        && bytes[provider.len()] == b'\n'
        && bytes.ends_with(model.as_bytes())
}

/// Reads back what [`served`] wrote.
pub fn served_by(bytes: &[u8]) -> Option<(&str, Option<&str>)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (provider, model) = text.split_once('\n')?;
    Some((provider, (!model.is_empty()).then_some(model)))
}

/// The provider tag of a provider name.
pub fn provider_tag(name: &str) -> u32 {
    xxhash_rust::xxh3::xxh3_64(name.as_bytes()) as u32
}

/// Bytes an entry with these lengths takes.
pub fn encoded_len(head: usize, body: usize) -> usize {
    HEADER_LEN + (head + body).next_multiple_of(8) + TRAILER_LEN
}

/// Why bytes are not a valid entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// No magic: free space, or not an entry boundary.
    Empty,
    /// Another format version (written by another release).
    Version,
    /// Lengths run past the bytes given.
    Truncated,
    /// The checksum does not match: a torn or corrupt entry.
    Corrupt,
    /// The completion mark is missing: the write did not finish.
    Incomplete,
}

/// Two one-shot hashes: a streaming hasher's set-up and buffering cost more
/// than the hashing at these sizes, on every store and every hit (criterion
/// `lookup_hit_1KiB`: 181 ns to 148 ns). It guards against torn and corrupt
/// bytes, not an adversary: only aigw writes entries.
fn checksum(header: &[u8], rest: &[u8]) -> u64 {
    let head = xxhash_rust::xxh3::xxh3_64(&header[..SUM_AT]);
    head.rotate_left(32) ^ xxhash_rust::xxh3::xxh3_64(rest)
}

/// Writes `e` at the start of `out` (which must hold `e.size()` bytes) and
/// returns its length. The completion mark is the last thing written; a writer
/// to shared memory writes it last, with release ordering.
pub fn encode(e: &Entry<'_>, out: &mut [u8]) -> usize {
    let len = e.size();
    assert!(out.len() >= len, "encode needs {len} bytes");
    out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    out[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    out[6..8].copy_from_slice(&e.flags.to_le_bytes());
    out[8..24].copy_from_slice(&e.key.0.to_le_bytes());
    out[24..32].copy_from_slice(&e.created_ms.to_le_bytes());
    out[32..40].copy_from_slice(&e.expires_ms.to_le_bytes());
    out[40..44].copy_from_slice(&(e.head.len() as u32).to_le_bytes());
    out[44..48].copy_from_slice(&(e.body.len() as u32).to_le_bytes());
    out[48..52].copy_from_slice(&e.provider.to_le_bytes());
    out[52..56].copy_from_slice(&e.input_tokens.to_le_bytes());
    out[56..60].copy_from_slice(&e.output_tokens.to_le_bytes());
    out[60..62].copy_from_slice(&e.status.to_le_bytes());
    assert!(
        e.served.len() <= MAX_SERVED,
        "served is at most {MAX_SERVED} bytes"
    );
    out[62..64].copy_from_slice(&(e.served.len() as u16).to_le_bytes());
    let head_at = HEADER_LEN + e.served.len();
    let body_at = head_at + e.head.len();
    let end = body_at + e.body.len();
    let mark_at = len - TRAILER_LEN;
    out[HEADER_LEN..head_at].copy_from_slice(e.served);
    out[head_at..body_at].copy_from_slice(e.head);
    out[body_at..end].copy_from_slice(e.body);
    out[end..mark_at].fill(0);
    let sum = checksum(&out[..HEADER_LEN], &out[HEADER_LEN..mark_at]);
    out[SUM_AT..SUM_AT + 8].copy_from_slice(&sum.to_le_bytes());
    out[mark_at..len].copy_from_slice(&(sum ^ COMPLETE).to_le_bytes());
    len
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// What an entry's header alone says (not yet proven: see [`decode`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Frame {
    pub key: CacheKey,
    /// Bytes the whole entry takes.
    pub len: usize,
    pub expires_ms: u64,
    pub provider: u32,
}

/// From an entry's header alone: its key, the bytes the whole entry takes,
/// its expiry and provider, or why the header is not one. Never panics.
/// (Readers copy the header, then exactly `len` bytes.)
pub fn frame(header: &[u8]) -> Result<Frame, Invalid> {
    if header.len() < HEADER_LEN || u32_at(header, 0) != MAGIC {
        return Err(Invalid::Empty);
    }
    if u16_at(header, 4) != FORMAT_VERSION {
        return Err(Invalid::Version);
    }
    let head_len = u32_at(header, 40) as usize;
    let body_len = u32_at(header, 44) as usize;
    let served_len = usize::from(u16_at(header, 62));
    let key = CacheKey(u128::from_le_bytes(
        header[8..24].try_into().expect("16 bytes"),
    ));
    Ok(Frame {
        key,
        len: encoded_len(served_len + head_len, body_len),
        expires_ms: u64_at(header, 32),
        provider: u32_at(header, 48),
    })
}

/// Reads the entry at the start of `bytes`, proving it whole. Never panics,
/// whatever the bytes.
pub fn decode(bytes: &[u8]) -> Result<Entry<'_>, Invalid> {
    let len = frame(bytes)?.len;
    if bytes.len() < len {
        return Err(Invalid::Truncated);
    }
    let mark_at = len - TRAILER_LEN;
    let sum = u64_at(bytes, SUM_AT);
    if u64_at(bytes, mark_at) != sum ^ COMPLETE {
        return Err(Invalid::Incomplete);
    }
    if checksum(&bytes[..HEADER_LEN], &bytes[HEADER_LEN..mark_at]) != sum {
        return Err(Invalid::Corrupt);
    }
    view(bytes)
}

/// Reads the fields of an entry already proven whole by [`decode`] (a
/// second look at the same bytes, without the checksum). Never panics.
pub fn view(bytes: &[u8]) -> Result<Entry<'_>, Invalid> {
    let Frame {
        key,
        len,
        expires_ms,
        provider,
    } = frame(bytes)?;
    if bytes.len() < len {
        return Err(Invalid::Truncated);
    }
    let head_len = u32_at(bytes, 40) as usize;
    let body_len = u32_at(bytes, 44) as usize;
    let head_at = HEADER_LEN + usize::from(u16_at(bytes, 62));
    let body_at = head_at + head_len;
    Ok(Entry {
        key,
        flags: u16_at(bytes, 6),
        created_ms: u64_at(bytes, 24),
        expires_ms,
        provider,
        input_tokens: u32_at(bytes, 52),
        output_tokens: u32_at(bytes, 56),
        status: u16_at(bytes, 60),
        served: &bytes[HEADER_LEN..head_at],
        head: &bytes[head_at..body_at],
        body: &bytes[body_at..body_at + body_len],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Vec<u8>, usize) {
        let e = Entry {
            key: CacheKey(0x1234_5678_9abc_def0_0fed_cba9_8765_4321),
            flags: FLAG_STREAM,
            created_ms: 1_790_000_000_000,
            expires_ms: 1_790_000_360_000,
            provider: provider_tag("openai"),
            input_tokens: 12,
            output_tokens: 34,
            status: 200,
            served: b"openai\ngpt-4o-mini",
            head: b"content-type: text/event-stream\r\n",
            body: b"data: {\"x\":1}\n\ndata: [DONE]\n\n",
        };
        let mut buf = vec![0u8; e.size() + 32];
        let n = encode(&e, &mut buf);
        assert_eq!(decode(&buf).unwrap(), e);
        (buf, n)
    }

    #[test]
    fn who_answered_reads_back_as_written() {
        let mut out = Vec::new();
        for (provider, model) in [("openai", Some("gpt-4o")), ("a", None), ("b", Some("x\ny"))] {
            served(provider, model, &mut out);
            assert_eq!(served_by(&out), Some((provider, model)));
            assert!(served_is(&out, provider, model));
            assert!(!served_is(&out, provider, Some("other")));
            assert!(!served_is(&out, "openaj", model));
        }
        served("p", Some(&"m".repeat(MAX_SERVED)), &mut out);
        assert!(out.is_empty(), "too long to keep");
    }

    #[test]
    fn an_entry_reads_back_as_written() {
        let (buf, n) = sample();
        let e = decode(&buf).unwrap();
        assert_eq!(e.size(), n);
        assert_eq!(e.flags & FLAG_STREAM, FLAG_STREAM);
        assert!(e.body.ends_with(b"[DONE]\n\n"));
    }

    #[test]
    fn a_write_that_did_not_finish_is_not_there() {
        let (mut buf, n) = sample();
        buf[n - TRAILER_LEN..n].fill(0);
        assert_eq!(decode(&buf), Err(Invalid::Incomplete));
        assert_eq!(decode(&buf[..n - 1]), Err(Invalid::Truncated));
        assert_eq!(decode(&[0u8; 100]), Err(Invalid::Empty));
    }

    #[test]
    fn any_flipped_byte_loses_the_entry_and_never_panics() {
        let (buf, n) = sample();
        for at in 0..n {
            for bit in [0x01u8, 0x80] {
                let mut b = buf.clone();
                b[at] ^= bit;
                let r = decode(&b);
                assert!(r.is_err(), "flip at {at} went unnoticed: {r:?}");
            }
        }
        // Garbage of every short length, and huge lengths, never panic.
        for len in 0..HEADER_LEN + 16 {
            let _ = decode(&buf[..len]);
        }
        let mut b = buf.clone();
        b[40..48].fill(0xff);
        assert_eq!(decode(&b), Err(Invalid::Truncated));
        // Lengths of the largest kind still frame without overflow.
        assert!(frame(&b).is_ok());
    }

    #[test]
    fn another_version_is_dropped() {
        let (mut buf, _) = sample();
        buf[4] = buf[4].wrapping_add(1);
        assert_eq!(decode(&buf), Err(Invalid::Version));
    }
}
