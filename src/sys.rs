//! The crate's system calls that need `unsafe`, each with its invariant.
//!
//! Kept in one file so a reader audits them in one place: a non-blocking
//! `recv(2)` on a borrowed socket, and adopting a listening socket into glommio.

use std::io;
use std::os::fd::{FromRawFd, IntoRawFd, RawFd};

/// `recv(fd, buf, MSG_DONTWAIT)`: reads what the socket holds now, or
/// `WouldBlock`. Never waits.
pub fn try_recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `fd` is the descriptor of a socket owned by a stream the caller
    // holds a `&mut` to for the duration of this call, so it is open and not
    // reused; `buf` is a valid, writable region of exactly `buf.len()` bytes.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Hands a bound, listening, non-blocking socket to glommio.
pub fn adopt_listener(sock: socket2::Socket) -> glommio::net::TcpListener {
    let fd = sock.into_raw_fd();
    // SAFETY: `fd` is a listening socket we just created and own; ownership
    // moves into the glommio listener, which closes it.
    unsafe { glommio::net::TcpListener::from_raw_fd(fd) }
}
