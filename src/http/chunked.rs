//! Strict incremental chunked-body decoder, used for client request bodies and
//! provider responses alike.
//!
//! Stricter than httparse's `parse_chunk_size`: a chunk size needs 1..=15 hex
//! digits, lines end in CRLF (no bare LF or CR), extensions and trailers are
//! bounded and discarded. Decoded data is appended to the caller's buffer;
//! "need more bytes" is simply consuming everything and returning not-done.

/// Longest chunk-extension we skip before calling the body malformed.
pub const MAX_CHUNK_EXT: usize = 4 << 10;
/// Most trailer bytes we skip (trailers are never forwarded).
pub const MAX_TRAILERS: usize = 16 << 10;
/// Hex digits in a chunk size: 15 keeps the value below 2^60, far above any limit.
const MAX_SIZE_DIGITS: u32 = 15;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Size {
        digits: u32,
        value: u64,
    },
    /// After the digits: optional whitespace, then `;ext` or CR.
    AfterSize {
        value: u64,
    },
    Ext {
        value: u64,
        len: usize,
    },
    SizeLf {
        value: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    Trailer,
    TrailerLf {
        empty: bool,
    },
    Done,
}

#[derive(Clone, Debug)]
pub struct ChunkedDecoder {
    state: State,
    trailer_bytes: usize,
    decoded: u64,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: State::Size {
                digits: 0,
                value: 0,
            },
            trailer_bytes: 0,
            decoded: 0,
        }
    }
}

/// What went wrong in a chunked body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkError {
    Malformed(&'static str),
    TooLarge,
}

impl ChunkError {
    pub fn message(self) -> &'static str {
        match self {
            ChunkError::Malformed(m) => m,
            ChunkError::TooLarge => "chunked body exceeds the size limit",
        }
    }
}

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from `input`, appending data to `out`; returns bytes consumed.
    /// Stops right after the final CRLF, leaving later bytes (pipelined requests)
    /// unconsumed. `limit` bounds the total decoded size.
    pub fn decode(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        limit: u64,
    ) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            self.state = match self.state {
                State::Size { digits, value } => match hex(b) {
                    Some(d) if digits < MAX_SIZE_DIGITS => State::Size {
                        digits: digits + 1,
                        value: value << 4 | d,
                    },
                    Some(_) => return Err(ChunkError::Malformed("chunk size has too many digits")),
                    None if digits == 0 => {
                        return Err(ChunkError::Malformed("chunk size is missing"));
                    }
                    None => {
                        if self.decoded.saturating_add(value) > limit {
                            return Err(ChunkError::TooLarge);
                        }
                        // Re-examine this byte in AfterSize.
                        self.state = State::AfterSize { value };
                        continue;
                    }
                },
                State::AfterSize { value } => match b {
                    b' ' | b'\t' => State::AfterSize { value },
                    b';' => State::Ext { value, len: 0 },
                    b'\r' => State::SizeLf { value },
                    _ => return Err(ChunkError::Malformed("invalid byte after chunk size")),
                },
                State::Ext { value, len } => match b {
                    b'\r' => State::SizeLf { value },
                    b'\n' => return Err(ChunkError::Malformed("bare LF in chunk extension")),
                    _ if len >= MAX_CHUNK_EXT => {
                        return Err(ChunkError::Malformed("chunk extension too long"));
                    }
                    _ => State::Ext {
                        value,
                        len: len + 1,
                    },
                },
                State::SizeLf { value } => match b {
                    b'\n' if value == 0 => State::TrailerStart,
                    b'\n' => State::Data { left: value },
                    _ => return Err(ChunkError::Malformed("chunk size line must end in CRLF")),
                },
                State::Data { left } => {
                    let take = (left as usize).min(input.len() - i);
                    out.extend_from_slice(&input[i..i + take]);
                    self.decoded += take as u64;
                    i += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data { left }
                    };
                    continue;
                }
                State::DataCr => match b {
                    b'\r' => State::DataLf,
                    _ => return Err(ChunkError::Malformed("chunk data must be followed by CRLF")),
                },
                State::DataLf => match b {
                    b'\n' => State::Size {
                        digits: 0,
                        value: 0,
                    },
                    _ => return Err(ChunkError::Malformed("chunk data must be followed by CRLF")),
                },
                State::TrailerStart => match b {
                    b'\r' => State::TrailerLf { empty: true },
                    b'\n' => return Err(ChunkError::Malformed("bare LF in trailers")),
                    _ => {
                        self.trailer_bytes += 1;
                        State::Trailer
                    }
                },
                State::Trailer => {
                    self.trailer_bytes += 1;
                    if self.trailer_bytes > MAX_TRAILERS {
                        return Err(ChunkError::Malformed("trailers too long"));
                    }
                    match b {
                        b'\r' => State::TrailerLf { empty: false },
                        b'\n' => return Err(ChunkError::Malformed("bare LF in trailers")),
                        _ => State::Trailer,
                    }
                }
                State::TrailerLf { empty } => match b {
                    b'\n' if empty => {
                        self.state = State::Done;
                        return Ok(i + 1);
                    }
                    b'\n' => State::TrailerStart,
                    _ => return Err(ChunkError::Malformed("trailer line must end in CRLF")),
                },
                State::Done => return Ok(i),
            };
            i += 1;
        }
        Ok(i)
    }
}

fn hex(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some(u64::from(b - b'0')),
        b'a'..=b'f' => Some(u64::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u64::from(b - b'A' + 10)),
        _ => None,
    }
}

/// Appends one chunk (`size CRLF data CRLF`) to `out`.
pub fn write_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let mut tmp = [0u8; 16];
    let mut n = data.len();
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The terminating chunk.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        let n = d.decode(input, &mut out, 1 << 20)?;
        Ok((out, n, d.is_done()))
    }

    #[test]
    fn decodes_chunks_and_stops_after_the_last_one() {
        let (out, n, done) =
            decode_all(b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\nGET /").unwrap();
        assert_eq!(out, b"hello world");
        assert!(done);
        assert_eq!(n, 40);
    }

    #[test]
    fn decodes_byte_by_byte() {
        let input = b"3\r\nabc\r\n0\r\n\r\n";
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        for b in input.chunks(1) {
            assert_eq!(d.decode(b, &mut out, 100).unwrap(), 1);
        }
        assert!(d.is_done());
        assert_eq!(out, b"abc");
    }

    #[test]
    fn rejects_malformed_chunk_lines() {
        let bad: &[&[u8]] = &[
            b"\r\n",
            b"x\r\n",
            b"1\nA\r\n",
            b"1;a\nb\r\nA\r\n",
            b"5 0\r\n",
            b"0x5\r\n",
            b"+5\r\n",
            b"1\r\nAB\r\n",
            b"1\r\nA\n",
            b"ffffffffffffffff\r\n",
            b"0\r\n\n",
        ];
        for b in bad {
            assert!(decode_all(b).is_err(), "{:?}", String::from_utf8_lossy(b));
        }
    }

    #[test]
    fn enforces_the_size_limit_before_reading_data() {
        let mut d = ChunkedDecoder::default();
        assert_eq!(
            d.decode(b"fffffff\r\n", &mut Vec::new(), 1000),
            Err(ChunkError::TooLarge)
        );
    }

    #[test]
    fn write_chunk_uses_hex_sizes() {
        let mut out = Vec::new();
        write_chunk(&mut out, &[b'a'; 26]);
        assert!(out.starts_with(b"1a\r\n"));
    }
}
