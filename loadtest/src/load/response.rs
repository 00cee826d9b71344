//! HTTP/1.1 response framing for aigw-load's connections.
//!
//! Owns: finding the end of a response (head via httparse, then a
//! Content-Length, chunked or read-until-close body) and spotting server-sent
//! event boundaries in the decoded body. Does not own sockets or clocks: the
//! connection task (`conn.rs`) feeds bytes in and stamps the times. "Need more
//! bytes" is a state (`Partial`, `Feed::NeedMore`), not an error.

use std::fmt;

/// Most response-head headers we look at; a head with more is a protocol error.
pub const MAX_HEADERS: usize = 64;

/// Why a response could not be understood.
#[derive(Debug, Clone, PartialEq)]
pub struct ProtocolError(pub &'static str);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// How the body of a response ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Framing {
    /// No body (1xx, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// HTTP/1.0-style: the body ends when the server closes.
    UntilClose,
}

/// What the connection needs from a parsed response head.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Head {
    pub status: u16,
    pub framing: Framing,
    /// False when the server said `Connection: close` (or spoke HTTP/1.0
    /// without keep-alive): reconnect before the next request.
    pub keep_alive: bool,
}

/// Result of looking for a complete head at the start of a buffer.
#[derive(Debug, PartialEq)]
pub enum HeadParse {
    /// The head and how many bytes of the buffer it took.
    Complete(Head, usize),
    Partial,
}

/// Parses a response head from the start of `buf`.
pub fn parse_head(buf: &[u8]) -> Result<HeadParse, ProtocolError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(HeadParse::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(ProtocolError("too many headers")),
        Err(_) => return Err(ProtocolError("malformed response head")),
    };
    let status = resp.code.unwrap_or(0);
    let http11 = resp.version == Some(1);
    let mut keep_alive = http11;
    let mut length = None;
    let mut chunked = false;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let text =
                std::str::from_utf8(h.value).map_err(|_| ProtocolError("bad content-length"))?;
            let n = text
                .trim()
                .parse::<u64>()
                .map_err(|_| ProtocolError("bad content-length"))?;
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = h
                .value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
            }
        }
    }
    let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        keep_alive = false;
        Framing::UntilClose
    };
    Ok(HeadParse::Complete(
        Head {
            status,
            framing,
            keep_alive,
        },
        len,
    ))
}

/// Outcome of feeding bytes to a `BodyDecoder`.
#[derive(Debug, PartialEq)]
pub enum Feed {
    /// The body ended after this many of the fed bytes.
    Done(usize),
    NeedMore,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Chunk {
    /// Reading the hex size; `digits` seen so far.
    Size {
        size: u64,
        digits: u8,
    },
    /// Skipping a chunk extension up to the end of the size line.
    Extension {
        size: u64,
    },
    Data(u64),
    /// After the data: expecting CRLF.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailer {
        line_start: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    Done,
}

/// Longest hex chunk size we accept (16 digits fill a u64).
const MAX_CHUNK_SIZE_DIGITS: u8 = 16;

/// Incremental body decoder: hands decoded body bytes to a sink and says when
/// the body ends.
#[derive(Debug)]
pub struct BodyDecoder {
    state: State,
}

impl BodyDecoder {
    pub fn new(framing: Framing) -> BodyDecoder {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Chunk::Size { size: 0, digits: 0 }),
            Framing::UntilClose => State::UntilClose,
        };
        BodyDecoder { state }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The server closed the connection: fine only for read-until-close bodies.
    pub fn finish_at_eof(&mut self) -> Result<(), ProtocolError> {
        match self.state {
            State::UntilClose | State::Done => {
                self.state = State::Done;
                Ok(())
            }
            _ => Err(ProtocolError("connection closed mid-body")),
        }
    }

    /// Decodes `input`, passing body bytes to `sink`.
    pub fn feed(
        &mut self,
        input: &[u8],
        sink: &mut impl FnMut(&[u8]),
    ) -> Result<Feed, ProtocolError> {
        let mut pos = 0;
        loop {
            match self.state {
                State::Done => return Ok(Feed::Done(pos)),
                State::UntilClose => {
                    sink(&input[pos..]);
                    return Ok(Feed::NeedMore);
                }
                State::Length(left) => {
                    let take = (input.len() - pos).min(left as usize);
                    sink(&input[pos..pos + take]);
                    pos += take;
                    let left = left - take as u64;
                    if left == 0 {
                        self.state = State::Done;
                    } else {
                        self.state = State::Length(left);
                        return Ok(Feed::NeedMore);
                    }
                }
                State::Chunked(Chunk::Data(left)) => {
                    let take = (input.len() - pos).min(left as usize);
                    sink(&input[pos..pos + take]);
                    pos += take;
                    let left = left - take as u64;
                    if left == 0 {
                        self.state = State::Chunked(Chunk::DataEnd);
                    } else {
                        self.state = State::Chunked(Chunk::Data(left));
                        return Ok(Feed::NeedMore);
                    }
                }
                State::Chunked(chunk) => {
                    let Some(&byte) = input.get(pos) else {
                        return Ok(Feed::NeedMore);
                    };
                    pos += 1;
                    self.state = chunk_step(chunk, byte)?;
                }
            }
        }
    }
}

/// One byte of chunked framing outside chunk data. Bare LF is accepted for CRLF.
fn chunk_step(chunk: Chunk, byte: u8) -> Result<State, ProtocolError> {
    let end_of_size_line = |size: u64| {
        if size == 0 {
            State::Chunked(Chunk::Trailer { line_start: true })
        } else {
            State::Chunked(Chunk::Data(size))
        }
    };
    Ok(match chunk {
        Chunk::Size { size, digits } => match byte {
            b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                if digits >= MAX_CHUNK_SIZE_DIGITS {
                    return Err(ProtocolError("chunk size too long"));
                }
                let v = (byte as char).to_digit(16).expect("hex digit") as u64;
                State::Chunked(Chunk::Size {
                    size: size << 4 | v,
                    digits: digits + 1,
                })
            }
            _ if digits == 0 => return Err(ProtocolError("bad chunk size")),
            b';' | b' ' | b'\t' => State::Chunked(Chunk::Extension { size }),
            b'\r' => State::Chunked(Chunk::Size { size, digits }),
            b'\n' => end_of_size_line(size),
            _ => return Err(ProtocolError("bad chunk size")),
        },
        Chunk::Extension { size } => match byte {
            b'\n' => end_of_size_line(size),
            _ => State::Chunked(Chunk::Extension { size }),
        },
        Chunk::DataEnd => match byte {
            b'\r' => State::Chunked(Chunk::DataEnd),
            b'\n' => State::Chunked(Chunk::Size { size: 0, digits: 0 }),
            _ => return Err(ProtocolError("missing CRLF after chunk")),
        },
        Chunk::Trailer { line_start } => match byte {
            b'\r' => State::Chunked(Chunk::Trailer { line_start }),
            b'\n' if line_start => State::Done,
            b'\n' => State::Chunked(Chunk::Trailer { line_start: true }),
            _ => State::Chunked(Chunk::Trailer { line_start: false }),
        },
        Chunk::Data(_) => unreachable!("chunk data is handled by the caller"),
    })
}

/// Counts server-sent events: an event ends at a blank line (`\n\n`, CRs
/// ignored), so boundaries split across reads are still found.
#[derive(Debug, Default)]
pub struct SseScanner {
    after_newline: bool,
}

impl SseScanner {
    /// Number of events that ended inside `data`.
    pub fn scan(&mut self, data: &[u8]) -> u32 {
        let mut ended = 0;
        for &b in data {
            match b {
                b'\r' => {}
                b'\n' => {
                    if self.after_newline {
                        ended += 1;
                        self.after_newline = false;
                    } else {
                        self.after_newline = true;
                    }
                }
                _ => self.after_newline = false,
            }
        }
        ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(bytes: &[u8]) -> (Head, usize) {
        match parse_head(bytes).unwrap() {
            HeadParse::Complete(h, n) => (h, n),
            HeadParse::Partial => panic!("partial"),
        }
    }

    #[test]
    fn heads_are_framed_by_their_headers() {
        let cases: &[(&[u8], u16, Framing, bool)] = &[
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                200,
                Framing::Length(5),
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                200,
                Framing::Chunked,
                true,
            ),
            (
                b"HTTP/1.1 204 No Content\r\n\r\n",
                204,
                Framing::Empty,
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
                200,
                Framing::Length(1),
                false,
            ),
            (b"HTTP/1.0 200 OK\r\n\r\n", 200, Framing::UntilClose, false),
            (
                b"HTTP/1.0 500 X\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
                500,
                Framing::Length(0),
                true,
            ),
        ];
        for (bytes, status, framing, keep_alive) in cases {
            let (h, n) = head(bytes);
            assert_eq!(
                (h.status, h.framing, h.keep_alive),
                (*status, *framing, *keep_alive)
            );
            assert_eq!(n, bytes.len());
        }
    }

    #[test]
    fn an_incomplete_head_asks_for_more() {
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Le").unwrap(),
            HeadParse::Partial
        );
        assert!(parse_head(b"NOT HTTP\r\n\r\n").is_err());
    }

    fn decode_in_pieces(framing: Framing, wire: &[u8], piece: usize) -> (Vec<u8>, Option<usize>) {
        let mut dec = BodyDecoder::new(framing);
        let mut body = Vec::new();
        let mut offset = 0;
        for part in wire.chunks(piece) {
            match dec.feed(part, &mut |d| body.extend_from_slice(d)).unwrap() {
                Feed::Done(n) => return (body, Some(offset + n)),
                Feed::NeedMore => offset += part.len(),
            }
        }
        (body, None)
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_size() {
        let wire = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\nEXTRA";
        for piece in 1..=wire.len() {
            let (body, end) = decode_in_pieces(Framing::Chunked, wire, piece);
            assert_eq!(body, b"hello, world", "piece size {piece}");
            assert_eq!(end, Some(wire.len() - 5), "piece size {piece}");
        }
    }

    #[test]
    fn length_bodies_stop_at_their_length() {
        let (body, end) = decode_in_pieces(Framing::Length(3), b"abcdef", 2);
        assert_eq!((body.as_slice(), end), (&b"abc"[..], Some(3)));
    }

    #[test]
    fn malformed_chunks_are_protocol_errors() {
        for wire in [
            &b"zz\r\n"[..],
            b"\r\n",
            b"1\r\nab\r\n",
            b"11111111111111111\r\n",
        ] {
            let mut dec = BodyDecoder::new(Framing::Chunked);
            assert!(dec.feed(wire, &mut |_| {}).is_err(), "{wire:?}");
        }
    }

    #[test]
    fn eof_ends_only_until_close_bodies() {
        assert!(
            BodyDecoder::new(Framing::UntilClose)
                .finish_at_eof()
                .is_ok()
        );
        assert!(
            BodyDecoder::new(Framing::Length(2))
                .finish_at_eof()
                .is_err()
        );
    }

    #[test]
    fn sse_events_are_counted_across_reads() {
        let mut sse = SseScanner::default();
        assert_eq!(sse.scan(b"data: {\"a\":1}\n"), 0);
        assert_eq!(sse.scan(b"\ndata: {\"a\":2}\r\n\r\ndata: [DONE]\n\n"), 3);
    }
}
