//! Socket reads and writes that skip glommio's io_uring round trip when the
//! socket can answer at once, as aigw's own `net.rs` does for the same reason.
//!
//! A glommio read that does not fill its buffer arms an io_uring poll, and a
//! glommio write is an io_uring send that completes on the next reactor turn;
//! both cost more than the `recv`/`send` they replace. With 64 connections on
//! one executor the answer to a request is usually already in the socket by
//! the time its connection runs again, so a read first asks the socket
//! directly (`recv(MSG_DONTWAIT)`), yielding to the executor's other
//! connections in between, and only then waits through glommio. Measured on
//! this VM against nginx static (64 connections, one CPU): glommio reads and
//! writes drove 0.36x what wrk drives; direct reads with 2 yields 0.4-0.5x,
//! 6 yields 0.7x, 16 yields 0.97-1.0x. Against a slow server the tries only
//! find empty sockets and take CPU from whatever shares the generator's core
//! (the harness's mock), and adapting per connection flapped (0.7-1.0x), so
//! it is a choice: `--spin N`, off by default. What it saves is the io_uring poll
//! each waiting read arms: its completion is task work that interrupts the
//! executor with a reschedule IPI (10% of the CPU in a profile).
//!
//! The only `unsafe` in aigw-load besides the clock-tick lookup: two libc
//! calls on a descriptor borrowed from a live glommio stream.

#![allow(unsafe_code)]

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use std::io;
use std::os::fd::AsRawFd;

/// Largest `--spin`.
pub const MAX_SPIN: usize = 64;

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// `recv(fd, buf, MSG_DONTWAIT)` on the stream's socket.
fn try_recv(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the descriptor belongs to `stream`, which is borrowed for the
    // call, so it stays open and is not reused; `buf` is valid and writable
    // for `buf.len()` bytes.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `send(fd, buf, MSG_DONTWAIT | MSG_NOSIGNAL)` on the stream's socket.
fn try_send(stream: &TcpStream, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: as in `try_recv`; `buf` is valid for reads of `buf.len()` bytes.
    let n = unsafe {
        libc::send(
            stream.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Reads what the socket has into `buf`, waiting only when it is empty.
/// `Ok(0)` is end of stream; the stream's read timeout bounds the wait.
/// `spin` 0 is a plain glommio read (one io_uring receive: right for a slow
/// server, or a generator sharing its CPU with the mock).
pub async fn read(stream: &mut TcpStream, buf: &mut [u8], spin: usize) -> io::Result<usize> {
    if spin == 0 || buf.is_empty() {
        return stream.read(buf).await;
    }
    // The answer cannot be here the moment the request left: the executor's
    // other connections run first, then the socket is asked.
    for _ in 0..spin {
        futures_lite::future::yield_now().await;
        match try_recv(stream, buf) {
            Ok(n) => return Ok(n),
            Err(e) if would_block(&e) => {}
            Err(e) => return Err(e),
        }
    }
    // One byte through glommio fills its buffer, so it arms no extra poll
    // (whose completion would interrupt the executor); the rest comes with
    // one more `recv`.
    let first = stream.read(&mut buf[..1]).await?;
    if first == 0 || buf.len() == 1 {
        return Ok(first);
    }
    match try_recv(stream, &mut buf[1..]) {
        Ok(n) => Ok(1 + n),
        Err(e) if would_block(&e) => Ok(1),
        Err(e) => Err(e),
    }
}

/// Writes all of `bytes`: with `spin`, straight into the socket while it has
/// room, the rest (or all, without `spin`) through glommio, whose write
/// timeout bounds the wait.
pub async fn write_all(stream: &mut TcpStream, mut bytes: &[u8], spin: usize) -> io::Result<()> {
    while spin > 0 && !bytes.is_empty() {
        match try_send(stream, bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if would_block(&e) => break,
            Err(e) => return Err(e),
        }
    }
    if bytes.is_empty() {
        return Ok(());
    }
    stream.write_all(bytes).await
}
