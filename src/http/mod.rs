//! HTTP/1.1 framing on top of httparse, for both directions.
//!
//! httparse only tokenizes; every framing decision (Content-Length vs chunked,
//! Host rules, limits, hop-by-hop headers) lives here, in DESIGN.md's order.
//! Results borrow nothing across awaits: heads are recorded as [`Span`]s into the
//! connection's read window, so the window may be compacted or grown while a
//! request is in flight. "Need more bytes" is a state ([`Parsed::Partial`]), not an
//! error.

pub mod buf;
pub mod chunked;
pub mod request;
pub mod response;

pub use buf::ReadBuf;

/// Byte range into a read window (relative to the window's start).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    pub fn of(window: &[u8], part: &[u8]) -> Span {
        let start = part.as_ptr() as usize - window.as_ptr() as usize;
        Span {
            start: start as u32,
            end: (start + part.len()) as u32,
        }
    }
    pub fn get<'a>(&self, window: &'a [u8]) -> &'a [u8] {
        &window[self.start as usize..self.end as usize]
    }
}

/// One header line as spans.
#[derive(Clone, Copy, Debug, Default)]
pub struct Header {
    pub name: Span,
    pub value: Span,
}

/// Outcome of trying to parse a head from what has arrived so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole head; its length in bytes.
    Complete(usize),
    /// Not enough bytes yet.
    Partial,
}

/// Most header slots httparse is given at once (the configured limit is lower or equal).
pub const MAX_HEADER_SLOTS: usize = 256;

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus the framing headers we always rewrite.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    const HOP: &[&[u8]] = &[
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"proxy-authenticate",
        b"proxy-authorization",
    ];
    HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Whether a `Connection` header among `headers` lists a header name (which
/// is then hop-by-hop). Most messages carry no `Connection` header; then no
/// name is checked at all.
pub fn connection_listed<'a>(
    headers: &'a [Header],
    window: &'a [u8],
) -> impl Fn(&[u8]) -> bool + 'a {
    let connections = move || {
        headers
            .iter()
            .filter(move |h| h.name.get(window).eq_ignore_ascii_case(b"connection"))
    };
    let any = connections().next().is_some();
    move |name| {
        any && connections()
            .any(|h| tokens(h.value.get(window)).any(|t| t.eq_ignore_ascii_case(name)))
    }
}

/// Splits a comma-separated header value into trimmed tokens.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(trim_ows)
        .filter(|t| !t.is_empty())
}

/// Trims optional whitespace (SP, HTAB) only.
pub fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Parses a Content-Length value list: every element must be 1*DIGIT and all equal.
pub fn parse_content_length(value: &[u8], current: Option<u64>) -> Result<u64, &'static str> {
    let mut result = current;
    let mut any = false;
    for part in value.split(|b| *b == b',') {
        let part = trim_ows(part);
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return Err("Content-Length is not a number");
        }
        let mut n: u64 = 0;
        for d in part {
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(d - b'0')))
                .ok_or("Content-Length overflows")?;
        }
        if result.is_some_and(|r| r != n) {
            return Err("conflicting Content-Length values");
        }
        result = Some(n);
        any = true;
    }
    if !any {
        return Err("empty Content-Length");
    }
    result.ok_or("empty Content-Length")
}

/// Encodes every byte but unreserved ones (`A-Z a-z 0-9 - . _ ~`) as `%XX`,
/// for a query value.
/// `s.split_once(b)` for an ASCII byte `b`, by a plain byte scan: paths and
/// model names are short, and `str`'s character search costs several
/// times more on them (80-130 instructions a call, by callgrind).
pub fn split_byte(s: &str, b: u8) -> Option<(&str, &str)> {
    debug_assert!(b.is_ascii());
    let at = s.bytes().position(|c| c == b)?;
    // An ASCII byte is a character boundary on both sides.
    Some((s.get(..at)?, s.get(at + 1..)?))
}

pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes every valid `%XX`; anything else (a lone `%` too) stays as it is.
pub fn percent_decode(s: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%'
            && let (Some(h), Some(l)) = (
                s.get(i + 1).copied().and_then(hex),
                s.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(h << 4 | l);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

/// Appends `n` in decimal (header values on the hot path, without `fmt`).
pub fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    // Two digits per division: headers carry several numbers per response.
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    while n >= 100 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        i -= 2;
        digits[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if n >= 10 {
        let pair = n as usize * 2;
        i -= 2;
        digits[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    } else {
        i -= 1;
        digits[i] = b'0' + n as u8;
    }
    out.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    #[test]
    fn split_byte_is_split_once() {
        for s in ["", "a", "/", "a/b", "/a", "a/", "a/b/c", "é/ü", "ß", "??"] {
            for b in [b'/', b'?'] {
                assert_eq!(super::split_byte(s, b), s.split_once(char::from(b)), "{s}");
            }
        }
    }

    #[test]
    fn percent_encoding_round_trips() {
        for s in ["plain-1.2_~", "a b&c=d/é", "%41", ""] {
            assert_eq!(
                super::percent_decode(super::percent_encode(s).as_bytes()),
                s.as_bytes()
            );
        }
        assert_eq!(super::percent_encode("a b&"), "a%20b%26");
    }

    #[test]
    fn decimals_format_like_display() {
        for n in [
            0u64,
            7,
            9,
            10,
            99,
            100,
            101,
            999,
            12_345,
            1_000_000,
            3_999_999_999,
            9_999_999_999,
            10_000_000_000,
            u64::MAX / 10,
            u64::MAX,
        ]
        .into_iter()
        .chain((1..20).flat_map(|k| [10u64.pow(k) - 1, 10u64.pow(k)]))
        {
            let mut out = b"x: ".to_vec();
            super::push_decimal(&mut out, n);
            assert_eq!(out, format!("x: {n}").into_bytes());
        }
    }
}
