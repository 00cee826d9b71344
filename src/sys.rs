//! The crate's system calls that need `unsafe`, each with its invariant.
//!
//! Kept in one file so a reader audits them in one place: a non-blocking
//! `recv(2)` on a borrowed socket, borrowing a glommio stream's descriptor,
//! and adopting a listening socket into glommio. The crate root denies
//! `unsafe_code`; this module alone allows it.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd};

/// `recv(fd, buf, MSG_DONTWAIT)`: reads what the socket holds now, or
/// `WouldBlock`. Never waits.
pub fn try_recv(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `fd` is borrowed, so the descriptor stays open (and is not
    // reused) for the duration of this call; `buf` is a valid, writable region
    // of exactly `buf.len()` bytes.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
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

/// The descriptor of a glommio TCP stream, borrowed for as long as the stream is.
pub fn tcp_fd(stream: &glommio::net::TcpStream) -> BorrowedFd<'_> {
    // SAFETY: a glommio `TcpStream` owns its socket and closes it only when
    // dropped, which the borrow of `stream` rules out while the fd is in use.
    unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) }
}

/// Lowers the calling thread's scheduling priority to `nice` (Linux keeps a
/// nice value per thread). Best effort: an error leaves the priority as it was.
pub fn lower_thread_priority(nice: i32) -> io::Result<()> {
    // SAFETY: gettid(2) and setpriority(2) take and return plain integers;
    // PRIO_PROCESS with a thread id addresses only this thread.
    let rc = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Hands a bound, listening, non-blocking socket to glommio.
pub fn adopt_listener(sock: socket2::Socket) -> glommio::net::TcpListener {
    let fd = sock.into_raw_fd();
    // SAFETY: `fd` is a listening socket we just created and own; ownership
    // moves into the glommio listener, which closes it.
    unsafe { glommio::net::TcpListener::from_raw_fd(fd) }
}
