//! A growable read window: bytes arrive at the end, parsed bytes leave at the front.
//!
//! Owned by one connection (client or upstream). Never grows past the limit its
//! caller names, so a peer cannot make us buffer without bound.

/// Smallest free space handed to a read, so tiny reads do not multiply syscalls.
pub const MIN_READ: usize = 4 << 10;

pub struct ReadBuf {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl ReadBuf {
    pub fn with_capacity(n: usize) -> ReadBuf {
        ReadBuf {
            data: vec![0; n],
            start: 0,
            end: 0,
        }
    }

    /// The bytes received and not yet consumed.
    pub fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Drops `n` bytes from the front.
    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.start += n.min(self.len());
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Free space at the end for the next read, keeping the window at most
    /// `max_window` bytes. Empty when the window is already full.
    pub fn spare(&mut self, max_window: usize) -> &mut [u8] {
        let len = self.len();
        let want = (len + MIN_READ).min(max_window.max(len));
        if self.data.len() - self.start < want {
            if self.start > 0 {
                self.data.copy_within(self.start..self.end, 0);
                self.start = 0;
                self.end = len;
            }
            if self.data.len() < want {
                let grown = (self.data.len() * 2).clamp(want, max_window.max(want));
                self.data.resize(grown, 0);
            }
        }
        let cap_end = (self.start + max_window).min(self.data.len());
        &mut self.data[self.end..cap_end.max(self.end)]
    }

    /// Marks `n` bytes of [`ReadBuf::spare`] as filled.
    pub fn advance(&mut self, n: usize) {
        self.end += n;
        debug_assert!(self.end <= self.data.len());
    }

    /// Appends bytes (used by the in-process mock provider and tests).
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        let len = self.len();
        if self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.start = 0;
            self.end = len;
        }
        if self.data.len() < len + bytes.len() {
            self.data.resize(len + bytes.len(), 0);
        }
        self.data[len..len + bytes.len()].copy_from_slice(bytes);
        self.end = len + bytes.len();
    }
}

/// Reads once into `buf`, bounded by `max_window`. `Ok(0)` means end of stream;
/// a full window is an `InvalidData` error the caller maps to its own limit.
pub async fn read_some<R>(
    reader: &mut R,
    buf: &mut ReadBuf,
    max_window: usize,
) -> std::io::Result<usize>
where
    R: futures_lite::AsyncRead + Unpin,
{
    use futures_lite::AsyncReadExt;
    let spare = buf.spare(max_window);
    if spare.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "read window full",
        ));
    }
    let n = reader.read(spare).await?;
    buf.advance(n);
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_keeps_unconsumed_bytes_across_growth() {
        let mut b = ReadBuf::with_capacity(8);
        b.extend_from_slice(b"hello world, this is long");
        b.consume(6);
        assert_eq!(b.filled(), b"world, this is long");
        let s = b.spare(64);
        assert!(!s.is_empty());
        assert_eq!(b.filled(), b"world, this is long");
    }

    #[test]
    fn spare_is_empty_when_window_is_full() {
        let mut b = ReadBuf::with_capacity(4);
        b.extend_from_slice(b"abcd");
        assert!(b.spare(4).is_empty());
    }
}
