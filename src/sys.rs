//! The crate's system calls that need `unsafe`, each with its invariant.
//!
//! Kept in one file so a reader audits them in one place: a non-blocking
//! `recv(2)` on a borrowed socket, asking whether a client left, borrowing
//! a glommio stream's descriptor, adopting a listening socket into glommio,
//! allocating a file's blocks, and the cache's shared mapping ([`SharedMap`]:
//! 64-bit words read and written with atomic loads and stores, so shards read
//! what another shard writes without a data race), and sizing a SQLite
//! connection's small-allocation slots (a C variadic call), the Rust heap's
//! purge delay, and running a connection's statements with text bound in
//! place ([`BorrowedRows`]). The crate root denies `unsafe_code`; this module
//! alone allows it.

#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// `recv(fd, buf, MSG_DONTWAIT)`: reads what the socket holds now, or
/// `WouldBlock`. Never waits.
///
/// Made as a raw `recvfrom` system call: libc's `recv` is a thread
/// cancellation point and brackets every call with two calls that switch
/// cancellation on and off (3.5% of a cache hit's user time in perf), which
/// a shard, never cancelled, has no use for.
pub fn try_recv(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `fd` is borrowed, so the descriptor stays open (and is not
    // reused) for the duration of this call; `buf` is a valid, writable region
    // of exactly `buf.len()` bytes; the address arguments are null, which
    // `recvfrom` takes as "no address wanted".
    let n = unsafe {
        libc::syscall(
            libc::SYS_recvfrom,
            libc::c_long::from(fd.as_raw_fd()),
            buf.as_mut_ptr(),
            buf.len(),
            libc::c_long::from(libc::MSG_DONTWAIT),
            std::ptr::null_mut::<libc::sockaddr>(),
            std::ptr::null_mut::<libc::socklen_t>(),
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `send(fd, buf, MSG_DONTWAIT | MSG_NOSIGNAL)`: writes what the socket has
/// room for now, or `WouldBlock`. Never waits. A raw `sendto` system call,
/// for the reason [`try_recv`] gives.
pub fn try_send(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `fd` is borrowed, so the descriptor stays open (and is not
    // reused) for the duration of this call; `buf` is valid for reads of
    // exactly `buf.len()` bytes; a null address with length 0 is what `send`
    // itself passes to `sendto`.
    let n = unsafe {
        libc::syscall(
            libc::SYS_sendto,
            libc::c_long::from(fd.as_raw_fd()),
            buf.as_ptr(),
            buf.len(),
            libc::c_long::from(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL),
            std::ptr::null::<libc::sockaddr>(),
            0 as libc::c_long,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Whether the peer of the socket `fd` has closed (or shut down its
/// sending side) or reset the connection, as the kernel knows now, without
/// reading or waiting: `poll` for `POLLRDHUP`, which also sees an end of
/// stream behind bytes not read yet (a pipelined request). A descriptor
/// that is not an open socket answers false.
pub fn peer_closed(fd: std::os::fd::RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: `p` is one valid `pollfd` for the call's duration, and the
    // count passed is 1; a timeout of 0 returns at once. The descriptor is a
    // number the kernel checks (a closed one comes back as POLLNVAL, read
    // as "not closed").
    let n = unsafe { libc::poll(&raw mut p, 1, 0) };
    n > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

/// Shuts socket `fd` down `how`, wherever its reads or writes wait: `Read`,
/// its reads end (as if its peer had closed) while writes still go out;
/// `Both`, its writes fail at once too. The end of a drain stops the requests
/// still running this way, so each ends and is recorded. Errors are ignored
/// (a socket already closed by its peer).
pub fn shutdown_socket(fd: std::os::fd::RawFd, how: std::net::Shutdown) {
    let how = match how {
        std::net::Shutdown::Read => libc::SHUT_RD,
        std::net::Shutdown::Write => libc::SHUT_WR,
        std::net::Shutdown::Both => libc::SHUT_RDWR,
    };
    // SAFETY: shutdown(2) takes a descriptor number and changes no memory; a
    // number that is not an open socket is refused by the kernel (EBADF,
    // ENOTSOCK), which is ignored. Callers pass the descriptor of a
    // connection that is still open (registered with its shard).
    unsafe {
        libc::shutdown(fd, how);
    }
}

/// The descriptor of a glommio TCP stream, borrowed for as long as the stream is.
pub fn tcp_fd(stream: &glommio::net::TcpStream) -> BorrowedFd<'_> {
    // SAFETY: a glommio `TcpStream` owns its socket and closes it only when
    // dropped, which the borrow of `stream` rules out while the fd is in use.
    unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) }
}

/// The nice value of the threads that work beside the shards on their CPUs
/// (the request log's writer, the cache's pager). Serving comes first: on a
/// CPU it shares with a shard, the shard preempts such a thread at once; when
/// the CPU is saturated it still gets about a tenth of it (CFS weight 110
/// against 1024), which is what the log needs at full load, and its queue
/// absorbs the rest.
pub const BACKGROUND_NICE: i32 = 10;

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

/// Allocates `len` bytes of `file`'s blocks now (`posix_fallocate(3)`), so a
/// later write into a mapping of it cannot fail for lack of space (SIGBUS).
pub fn allocate(file: &File, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file too large"))?;
    // SAFETY: the descriptor is borrowed from `file`, which stays open for the
    // call; posix_fallocate takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// The page size the mappings' offsets are aligned to (x86_64 and aarch64
/// Linux with 4 KiB pages; a larger real page only makes `madvise` round).
const PAGE: usize = 4096;

/// A file mapped shared (read and write) for the life of the process, read
/// and written only as aligned 64-bit words through atomic operations.
///
/// Any thread may read any word while its owner writes it: atomic accesses are
/// never a data race. What a reader gets may still be a mix of an old and a
/// new value of a region, so readers validate (checksums) what they copied.
/// The file is never shrunk or truncated while a reader may use the mapping
/// (that would SIGBUS it): it is sized before mapping, and the data_dir lock
/// keeps a second aigw from touching it. A [`Prefault`] handle may keep a
/// mapping a little longer than its reader (a page-ahead job still queued);
/// it reads and writes nothing, and asking for pages past a file's end fails
/// the request (`EFAULT`), it does not SIGBUS.
pub struct SharedMap {
    /// Shared with the [`Prefault`] handles given out (they only ask the
    /// kernel about pages, never touch bytes).
    map: Arc<memmap2::MmapRaw>,
    len: usize,
}

/// A handle on a [`SharedMap`] that can make its pages writable ahead of use
/// (from another thread) and keeps the mapping alive; it reads and writes no
/// byte of it.
#[derive(Clone)]
pub struct Prefault {
    map: Arc<memmap2::MmapRaw>,
    len: usize,
}

impl Prefault {
    /// Maps `len` bytes from `at` writable now (`MADV_POPULATE_WRITE`,
    /// Linux 5.14+), so writes to them later take no page fault: a shared
    /// file mapping read in at start still faults on each page's first write
    /// (the kernel tracks which pages are dirty), and again on the first
    /// write after the kernel wrote the page back. The range is clipped to
    /// the mapping; an older kernel's refusal is returned (writes then fault
    /// as before).
    pub fn prepare_write(&self, at: usize, len: usize) -> io::Result<()> {
        let start = (at / PAGE * PAGE).min(self.len);
        let end = at.saturating_add(len).min(self.len);
        if end <= start {
            return Ok(());
        }
        self.map
            .advise_range(memmap2::Advice::PopulateWrite, start, end - start)
    }
}

impl SharedMap {
    /// Maps the first `len` bytes of `file` (which must be at least that
    /// long), reading every page in now so first-touch faults happen at start.
    pub fn new(file: &File, len: usize) -> io::Result<SharedMap> {
        if file.metadata()?.len() < len as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "file shorter than its mapping",
            ));
        }
        let map = memmap2::MmapOptions::new()
            .len(len)
            .populate()
            .map_raw(file)?;
        Ok(SharedMap {
            map: Arc::new(map),
            len,
        })
    }

    /// Zeroed anonymous memory of `len` bytes, advised to use huge pages
    /// (a hint: without transparent huge pages it is plain memory), and
    /// made present and writable now, so no request pays for a first touch
    /// (zeroing a huge page took a fault of its own on some request).
    pub fn anonymous(len: usize) -> io::Result<SharedMap> {
        let map = memmap2::MmapRaw::from(memmap2::MmapMut::map_anon(len)?);
        let _ = map.advise(memmap2::Advice::HugePage);
        let map = SharedMap {
            map: Arc::new(map),
            len,
        };
        let _ = map.prefault().prepare_write(0, len);
        Ok(map)
    }

    /// A handle to make pages writable ahead of use ([`Prefault`]).
    pub fn prefault(&self) -> Prefault {
        Prefault {
            map: self.map.clone(),
            len: self.len,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The `n` words from byte offset `at`. Panics unless `at` is 8-aligned
    /// and all `n` words are inside.
    fn words(&self, at: usize, n: usize) -> &[AtomicU64] {
        assert!(
            at.is_multiple_of(8) && n <= self.len / 8 && at <= self.len - n * 8,
            "words {at}+{n} outside the mapping"
        );
        // SAFETY: the mapping starts page-aligned and `at` is a multiple of 8
        // with `at + 8 * n <= len`, so the pointer is aligned and the `n`
        // words are in bounds; the mapping lives as long as `self` (the
        // returned borrow), and every access to these bytes in this process
        // goes through `AtomicU64`.
        unsafe { std::slice::from_raw_parts(self.map.as_mut_ptr().add(at).cast::<AtomicU64>(), n) }
    }

    pub fn load(&self, at: usize, order: Ordering) -> u64 {
        self.words(at, 1)[0].load(order)
    }

    pub fn store(&self, at: usize, value: u64, order: Ordering) {
        self.words(at, 1)[0].store(value, order)
    }

    /// Copies `out.len()` bytes (a multiple of 8) from offset `at`, word by
    /// word (bounds checked once for the whole run, not per word).
    pub fn read(&self, at: usize, out: &mut [u8]) {
        assert!(out.len().is_multiple_of(8));
        let words = self.words(at, out.len() / 8);
        for (w, chunk) in words.iter().zip(out.chunks_exact_mut(8)) {
            chunk.copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
        }
    }

    /// Writes `src` (a multiple of 8 bytes) at offset `at`, word by word.
    pub fn write(&self, at: usize, src: &[u8]) {
        assert!(src.len().is_multiple_of(8));
        let words = self.words(at, src.len() / 8);
        for (w, chunk) in words.iter().zip(src.chunks_exact(8)) {
            let v = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
            w.store(v, Ordering::Relaxed);
        }
    }

    /// Starts loading the cache line holding byte `at` (nothing when `at` is
    /// outside the mapping), so a read or write of it soon after does not wait
    /// on memory: a cache index probe lands on a random line.
    pub fn prefetch(&self, at: usize) {
        if at < self.len {
            prefetch_address(self.map.as_ptr().wrapping_add(at));
        }
    }

    /// Asks the kernel to write dirty pages back (`msync(MS_ASYNC)`); never waits.
    pub fn flush_async(&self) -> io::Result<()> {
        self.map.flush_async()
    }
}

/// Starts loading the cache line holding `value`, so a read of it soon after
/// does not wait on memory (a table probe that lands on a random line).
pub fn prefetch<T>(value: &T) {
    prefetch_address(std::ptr::from_ref(value).cast());
}

/// Starts loading the cache line holding `address` (a hint: nothing happens
/// elsewhere than on x86_64).
fn prefetch_address(address: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint that never faults, reads nothing the
    // program sees and changes no memory, whatever the address. SSE, which
    // `_mm_prefetch` needs, is part of every x86_64 CPU.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>(address.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

/// Makes the C allocator (glibc's malloc, which SQLite uses) grow in big
/// steps and keep what it took. By default a thread's own heap grows by
/// exactly the block asked for: the log's writer, filling its page cache,
/// made an `mprotect` call per page or two (1,300 in 5 s under load, two
/// thirds of its system-call time by strace; none now, by `perf record -e
/// syscalls:sys_enter_mprotect`), and freed blocks of 128 KiB or more went
/// back to the kernel to be mapped and zeroed again. The writer's system
/// time per request still varies 0.6-1.9 µs from run to run (checkpoints),
/// so the gain is within that noise. The cost: memory the C heap once held
/// is not returned until 256 MiB of it is free. `Err`: the option glibc
/// refused.
pub fn keep_c_heap() -> Result<(), &'static str> {
    /// The most a heap keeps free before it gives some back.
    const TRIM_THRESHOLD: i32 = 256 << 20;
    /// Blocks this big or bigger are mapped on their own.
    const MMAP_THRESHOLD: i32 = 32 << 20;
    /// What a heap grows by beyond the block that made it grow.
    const TOP_PAD: i32 = 16 << 20;
    // SAFETY: mallopt takes no pointers and only sets the allocator's
    // parameters (under its own lock in glibc); any thread may call it.
    unsafe {
        if libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1 {
            return Err("M_TRIM_THRESHOLD");
        }
        if libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1 {
            return Err("M_MMAP_THRESHOLD");
        }
        // One heap for every thread (the first, which grows by TOP_PAD);
        // only SQLite allocates here, Rust code uses mimalloc.
        if libc::mallopt(libc::M_ARENA_MAX, 1) != 1 {
            return Err("M_ARENA_MAX");
        }
        if libc::mallopt(libc::M_TOP_PAD, TOP_PAD) != 1 {
            return Err("M_TOP_PAD");
        }
    }
    Ok(())
}

/// mimalloc's `mi_option_purge_delay` (its `mi_option_e` enum, v2 and v3
/// alike).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long the Rust heap (mimalloc) keeps freed memory before giving it back
/// to the OS. By default 10 ms: with the request log on, every commit frees
/// a flush interval's records at once, their pages sat unused for longer
/// than that, and were given back and faulted in again (1,000-1,500 page
/// faults a second at 30k requests/s, zeroing huge pages on the shard). At
/// 10 s the same run takes no fault after warm-up; memory unused for that
/// long still goes back.
pub const HEAP_PURGE_DELAY_MS: i64 = 10_000;

/// Sets [`HEAP_PURGE_DELAY_MS`].
pub fn delay_heap_purge() {
    // SAFETY: mi_option_set takes two integers and only stores the option
    // (an atomic write in mimalloc); any thread may call it at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, HEAP_PURGE_DELAY_MS as _) }
}

/// The purge delay in force (ms).
pub fn heap_purge_delay_ms() -> i64 {
    // SAFETY: as for `delay_heap_purge`: a read of one option.
    unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) as i64 }
}

/// Gives a just-opened SQLite connection `count` slots of `size` bytes for
/// its small allocations (SQLite's "lookaside"), allocated by SQLite. `Err`:
/// SQLite's result code.
pub fn sqlite_lookaside(conn: &rusqlite::Connection, size: usize, count: usize) -> Result<(), i32> {
    let (Ok(size), Ok(count)) = (i32::try_from(size), i32::try_from(count)) else {
        return Err(rusqlite::ffi::SQLITE_RANGE);
    };
    // SAFETY: `conn.handle()` is the live connection `conn` borrows, used on
    // this thread only; SQLITE_DBCONFIG_LOOKASIDE takes exactly (void*, int,
    // int), and a null buffer makes SQLite allocate the slots itself. SQLite
    // refuses (SQLITE_BUSY) rather than misbehaves if slots are in use.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_db_config(
            conn.handle(),
            rusqlite::ffi::SQLITE_DBCONFIG_LOOKASIDE,
            std::ptr::null_mut::<std::ffi::c_void>(),
            size as std::ffi::c_int,
            count as std::ffi::c_int,
        )
    };
    if rc == rusqlite::ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(rc)
    }
}

/// A value bound to a [`BorrowedRows`] statement: text is read in place.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SqlValue<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(&'a str),
}

/// Which of a [`BorrowedRows`]'s statements to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatementId(usize);

/// A SQLite connection and statements it runs with text bound in place
/// (`SQLITE_STATIC`): rusqlite binds every text as `SQLITE_TRANSIENT`, a
/// copy SQLite allocates, makes and frees per value, the largest part of
/// the log writer's binding. In place is sound only while the text lives
/// until the statement is reset; [`BorrowedRows::run`] binds, steps, resets
/// and clears in one call, so its borrow covers exactly that.
///
/// Owns the connection so its statements are finalized before it closes.
pub struct BorrowedRows {
    statements: Vec<std::ptr::NonNull<rusqlite::ffi::sqlite3_stmt>>,
    conn: rusqlite::Connection,
}

// SAFETY: rusqlite's `Connection` is `Send` (SQLite in multi-thread mode
// lets one thread at a time use a connection); the statements belong to it
// and move with it. `BorrowedRows` is not `Sync`, so one thread at a time
// runs them.
unsafe impl Send for BorrowedRows {}

impl BorrowedRows {
    pub fn new(conn: rusqlite::Connection) -> BorrowedRows {
        BorrowedRows {
            statements: Vec::new(),
            conn,
        }
    }

    /// The connection, for everything else (its transactions include what
    /// [`BorrowedRows::run`] writes).
    pub fn conn(&self) -> &rusqlite::Connection {
        &self.conn
    }

    /// Compiles `sql` once, for [`BorrowedRows::run`].
    pub fn prepare(&mut self, sql: &str) -> rusqlite::Result<StatementId> {
        let len =
            i32::try_from(sql.len()).map_err(|_| self.failure(rusqlite::ffi::SQLITE_TOOBIG))?;
        let mut stmt = std::ptr::null_mut();
        // SAFETY: the handle is the live connection `self` owns, used by
        // this thread only (`&mut self`); `sql` is valid for `len` bytes
        // (SQLite reads no further and copies what it keeps); `stmt` is a
        // valid out-pointer, and a null tail pointer is allowed.
        let rc = unsafe {
            rusqlite::ffi::sqlite3_prepare_v3(
                self.conn.handle(),
                sql.as_ptr().cast(),
                len,
                rusqlite::ffi::SQLITE_PREPARE_PERSISTENT,
                &mut stmt,
                std::ptr::null_mut(),
            )
        };
        if rc != rusqlite::ffi::SQLITE_OK {
            return Err(self.failure(rc));
        }
        let stmt = std::ptr::NonNull::new(stmt)
            .ok_or_else(|| self.failure(rusqlite::ffi::SQLITE_MISUSE))?;
        self.statements.push(stmt);
        Ok(StatementId(self.statements.len() - 1))
    }

    /// Binds `values` to parameters 1.. (a `Null` is left unbound: bindings
    /// are clear before each run), runs the statement to completion, then
    /// resets it and clears its bindings, so no borrowed text outlives the
    /// call.
    pub fn run(&self, id: StatementId, values: &[SqlValue<'_>]) -> rusqlite::Result<()> {
        use rusqlite::ffi;
        let stmt = self.statements[id.0].as_ptr();
        let mut rc = ffi::SQLITE_OK;
        for (i, v) in values.iter().enumerate() {
            let Ok(n) = i32::try_from(i + 1) else {
                rc = ffi::SQLITE_RANGE;
                break;
            };
            // SAFETY: `stmt` is a live statement of this connection (only
            // `Drop` finalizes it), used on this thread only (`BorrowedRows`
            // is not `Sync`). A text is valid for `len` bytes for the whole
            // of this call, and the statement is reset and its bindings
            // cleared below before the call returns, so SQLite never reads
            // it afterwards (`SQLITE_STATIC`'s contract).
            rc = unsafe {
                match *v {
                    SqlValue::Null => ffi::SQLITE_OK,
                    SqlValue::Int(x) => ffi::sqlite3_bind_int64(stmt, n, x),
                    SqlValue::Real(x) => ffi::sqlite3_bind_double(stmt, n, x),
                    SqlValue::Text(t) => match i32::try_from(t.len()) {
                        Ok(len) => ffi::sqlite3_bind_text(
                            stmt,
                            n,
                            t.as_ptr().cast(),
                            len,
                            ffi::SQLITE_STATIC(),
                        ),
                        Err(_) => ffi::SQLITE_TOOBIG,
                    },
                }
            };
            if rc != ffi::SQLITE_OK {
                break;
            }
        }
        if rc == ffi::SQLITE_OK {
            // SAFETY: as above; stepping reads the bound texts, all alive.
            rc = match unsafe { ffi::sqlite3_step(stmt) } {
                ffi::SQLITE_DONE | ffi::SQLITE_ROW => ffi::SQLITE_OK,
                e => e,
            };
        }
        let failure = (rc != ffi::SQLITE_OK).then(|| self.failure(rc));
        // SAFETY: `stmt` is live (as above). After these two calls the
        // statement holds no pointer into `values`.
        unsafe {
            ffi::sqlite3_reset(stmt);
            ffi::sqlite3_clear_bindings(stmt);
        }
        failure.map_or(Ok(()), Err)
    }

    /// rusqlite's error for `rc`, with the connection's message.
    fn failure(&self, rc: i32) -> rusqlite::Error {
        // SAFETY: the handle is the live connection `self` owns; the message
        // SQLite returns is a NUL-terminated string valid until the next
        // call on the connection, and it is copied at once.
        let msg = unsafe {
            let m = rusqlite::ffi::sqlite3_errmsg(self.conn.handle());
            (!m.is_null()).then(|| std::ffi::CStr::from_ptr(m).to_string_lossy().into_owned())
        };
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rc), msg)
    }
}

impl Drop for BorrowedRows {
    fn drop(&mut self) {
        for stmt in self.statements.drain(..) {
            // SAFETY: each statement is live and finalized once, here,
            // before the connection (a later field) closes.
            unsafe {
                rusqlite::ffi::sqlite3_finalize(stmt.as_ptr());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// Minor page faults this thread has taken.
    fn thread_faults() -> u64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        // Fields after the command (which may hold spaces), from the state on.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        rest.split(' ').nth(7).unwrap().parse().unwrap()
    }

    /// Faults taken by `f`, less what counting them costs.
    fn faults_of(f: impl FnOnce()) -> u64 {
        let (a, b) = (thread_faults(), thread_faults());
        let overhead = b - a;
        let before = thread_faults();
        f();
        (thread_faults() - before).saturating_sub(overhead)
    }

    /// Pages made writable ahead take no fault when first written, keep what
    /// they held, and a range past the end is clipped.
    #[test]
    fn prefaulted_pages_take_writes_without_faults() {
        use std::io::Write;
        use std::sync::atomic::Ordering;
        const PAGES: usize = 64;
        let path = std::env::temp_dir().join(format!("aigw-prefault-{}", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let len = PAGES * super::PAGE;
        // Written through the file: mapped in, the pages are clean.
        for page in 0..PAGES as u64 {
            let mut p = vec![0u8; super::PAGE];
            p[8..16].copy_from_slice(&page.to_le_bytes());
            file.write_all(&p).unwrap();
        }
        file.sync_all().unwrap();
        let map = super::SharedMap::new(&file, len).unwrap();
        drop(file);
        let _ = std::fs::remove_file(&path);
        let half = len / 2;
        match map.prefault().prepare_write(half, len) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                eprintln!("MADV_POPULATE_WRITE refused ({e}): nothing to check on this kernel");
                return;
            }
            r => r.unwrap(),
        }
        // The write path's code and the counter's buffers touched once
        // first, so their own first-use faults are not counted below.
        map.store(half, 7, Ordering::Relaxed);
        let _ = faults_of(|| {});
        let ahead = faults_of(|| {
            for page in PAGES / 2..PAGES {
                map.store(page * super::PAGE, 7, Ordering::Relaxed);
            }
        });
        let not_ahead = faults_of(|| {
            for page in 0..PAGES / 2 {
                map.store(page * super::PAGE, 7, Ordering::Relaxed);
            }
        });
        eprintln!("faults writing 32 pages: {ahead} made writable ahead, {not_ahead} not");
        // A fault the counting itself may take (a page of the stack or of
        // the counter's buffer first touched in between), either way.
        const SLACK: u64 = 1;
        assert!(
            ahead <= SLACK,
            "{ahead} faults writing pages made writable ahead"
        );
        if not_ahead == 0 {
            // tmpfs, say: its pages are writable once present.
            eprintln!("this file system does not track dirty pages: nothing to compare");
        } else {
            assert!(not_ahead >= PAGES as u64 / 2 - SLACK, "{not_ahead}");
        }
        for page in 0..PAGES {
            assert_eq!(
                map.load(page * super::PAGE + 8, Ordering::Relaxed),
                page as u64
            );
        }
        // Past the end: clipped, or nothing at all.
        assert!(
            map.prefault()
                .prepare_write(len - super::PAGE, 8192)
                .is_ok()
        );
        assert!(map.prefault().prepare_write(len, super::PAGE).is_ok());
    }

    #[test]
    fn the_c_allocator_takes_the_settings() {
        assert_eq!(super::keep_c_heap(), Ok(()));
    }

    /// An in-memory database with one table made by `schema`.
    fn table(schema: &str) -> super::BorrowedRows {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(schema).unwrap();
        super::BorrowedRows::new(conn)
    }

    #[test]
    fn borrowed_rows_store_each_value_and_leave_no_binding_behind() {
        use super::SqlValue;
        let mut db = table("CREATE TABLE t (a TEXT, b INTEGER, c REAL, d TEXT)");
        let two_rows = db
            .prepare("INSERT INTO t (a, b, c, d) VALUES (?1, ?2, ?3, ?4), (?5, ?6, ?7, ?8)")
            .unwrap();
        for round in 0..2 {
            // Text that dies right after the call it is bound in.
            let text = format!("row {round}");
            let values = [
                SqlValue::Text(&text),
                SqlValue::Int(-7),
                SqlValue::Real(0.25),
                SqlValue::Text(""),
                // Unbound this time: NULL, not the value bound last round.
                if round == 0 {
                    SqlValue::Text("x")
                } else {
                    SqlValue::Null
                },
                SqlValue::Null,
                SqlValue::Null,
                SqlValue::Int(i64::MAX),
            ];
            db.run(two_rows, &values).unwrap();
        }
        type Row = (Option<String>, Option<i64>, Option<f64>, Option<String>);
        let rows: Vec<Row> = db
            .conn()
            .prepare("SELECT a, b, c, d FROM t ORDER BY rowid")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let full = |a: &str| {
            (
                Some(a.to_string()),
                Some(-7),
                Some(0.25),
                Some(String::new()),
            )
        };
        // `d` has text affinity: the integer is stored as its digits.
        let max = Some(i64::MAX.to_string());
        assert_eq!(
            rows,
            [
                full("row 0"),
                (Some("x".to_string()), None, None, max.clone()),
                full("row 1"),
                (None, None, None, max),
            ]
        );
    }

    #[test]
    fn a_failing_borrowed_row_names_the_failure_and_the_statement_runs_again() {
        use super::SqlValue;
        let mut db = table("CREATE TABLE t (a TEXT NOT NULL)");
        let one = db.prepare("INSERT INTO t (a) VALUES (?1)").unwrap();
        let e = db.run(one, &[SqlValue::Null]).unwrap_err();
        assert!(e.to_string().contains("NOT NULL"), "{e}");
        db.run(one, &[SqlValue::Text("ok")]).unwrap();
        let n: i64 = db
            .conn()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        assert!(db.prepare("NOT SQL").is_err());
    }

    #[test]
    fn the_rust_heap_keeps_freed_memory_for_the_purge_delay() {
        super::delay_heap_purge();
        assert_eq!(super::heap_purge_delay_ms(), super::HEAP_PURGE_DELAY_MS);
    }
}
