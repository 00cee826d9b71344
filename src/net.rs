//! Socket reads that avoid glommio's speculative polls.
//!
//! glommio 0.9 arms an io_uring `POLL_ADD` after every read that does not fill
//! the caller's buffer ("early poll"). Its completion is delivered as task work,
//! which interrupts the running shard with a reschedule IPI when the data comes
//! from another CPU; profiles showed those IPIs as the largest cost aigw pays
//! and nginx (epoll) does not. Here every read goes through glommio with a
//! one-byte buffer (which glommio fills, so it arms no early poll), then takes
//! the rest of what arrived with one `recv(MSG_DONTWAIT)`.

use crate::http::ReadBuf;
use futures_lite::AsyncReadExt;
use glommio::net::TcpStream;
use std::io;
use std::os::fd::AsRawFd;

/// Reads once into `buf` (bounded by `max_window`), waiting only if the socket
/// is empty. `Ok(0)` is end of stream. Timeouts set on `stream` apply to the wait.
pub async fn read_some_tcp(
    stream: &mut TcpStream,
    buf: &mut ReadBuf,
    max_window: usize,
) -> io::Result<usize> {
    let fd = stream.as_raw_fd();
    let spare = buf.spare(max_window);
    if spare.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "read window full",
        ));
    }
    // glommio's read tries a non-blocking recv before it waits, so asking the
    // socket ourselves first would only add an EAGAIN in the common case (we
    // read right after writing, before the peer answered).
    let first = stream.read(&mut spare[..1]).await?;
    if first == 0 {
        return Ok(0);
    }
    let more = match crate::sys::try_recv(fd, &mut spare[1..]) {
        Ok(n) => n,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            0
        }
        Err(e) => return Err(e),
    };
    buf.advance(first + more);
    Ok(first + more)
}
