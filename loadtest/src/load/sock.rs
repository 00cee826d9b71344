//! Reads with `--spin`: ask the socket a few times, letting the thread's
//! other connections run in between, before waiting on it.
//!
//! With 64 connections on one thread the answer to a request is usually in
//! its socket by the time the connection runs again, so a read first asks
//! the socket (`recv` on a non-blocking socket), yielding to the other
//! connections in between, and only then waits (epoll, `event.rs`). Against
//! a slow server the tries only find empty sockets and take CPU from
//! whatever shares the generator's core (the harness's mock), so it is a
//! choice: `--spin N`, off by default.

use crate::event::{self, Stream};
use std::io;
use std::time::Instant;

/// Largest `--spin`.
pub const MAX_SPIN: usize = 64;

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// Reads what the socket has into `buf`, waiting (until `deadline`) only
/// when it is empty. `Ok(0)` is end of stream.
pub async fn read(
    stream: &Stream,
    buf: &mut [u8],
    spin: usize,
    deadline: Instant,
) -> io::Result<usize> {
    // The answer cannot be here the moment the request left: the thread's
    // other connections run first, then the socket is asked.
    for _ in 0..spin {
        event::yield_now().await;
        match stream.try_read(buf) {
            Err(e) if would_block(&e) => {}
            other => return other,
        }
    }
    stream.read_before(buf, deadline).await
}
