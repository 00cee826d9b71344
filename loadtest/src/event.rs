//! The event loop of aigw-load and aigw-mock: one thread, its tasks, an
//! edge-triggered epoll set and a timer heap. Replaces glommio for the
//! benchmark tools' sockets.
//!
//! Why not io_uring: a socket a glommio executor waits on has an io_uring
//! poll armed on it, and when the *server* writes to it the server's `send`
//! runs that poll's wake callback, which queues task work and kicks the
//! generator's thread with a reschedule IPI when it is running. On this VM an
//! IPI costs the sender a VM exit: measured against aigw pass-through (64
//! connections, generator and mock on CPU 0, aigw on CPU 1), aigw spent
//! 29-30 µs of CPU per request under the glommio generator and 22 µs under
//! wrk (epoll), and served 0.73x wrk's throughput. An epoll wait costs the
//! sender nothing unless the waiting thread is asleep in `epoll_wait`: a
//! running thread finds the socket on its ready list at its next wait. The
//! mock stands in for a provider across a network, whose waits cost the
//! gateway nothing either, so it waits the same way.
//!
//! Owns: spawning and polling tasks ([`spawn`], [`block_on`]), waiting for a
//! socket to be readable or writable ([`Stream`], [`Listener`]), and
//! sleeping ([`sleep`]). Single-threaded by design: one loop per thread,
//! nothing shared between them; a waker called from another thread (a
//! channel's sender) wakes the loop through an eventfd. The `unsafe` here is
//! five libc calls (`epoll_create1`, `epoll_ctl`, `epoll_pwait2`, `eventfd`,
//! `sched_setaffinity`) and building a CPU set, each with its SAFETY line.

#![allow(unsafe_code)]

use futures_lite::io::{AsyncRead, AsyncWrite};
use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fs::File;
use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

/// Events taken from the kernel per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 256;
/// How often socket waits are checked against their deadlines (a timeout
/// is seconds; a heap timer per wait would cost more than the wait).
const DEADLINE_SWEEP: Duration = Duration::from_millis(100);

type BoxedTask = Pin<Box<dyn Future<Output = ()>>>;

/// A task waiting on a socket, and when it gives up (`None`: never).
type Waiter = (Waker, Option<Instant>);

/// What one socket's waiters are (one task per direction: a stream is used
/// by one task).
#[derive(Default)]
struct Waiters {
    read: Option<Waiter>,
    write: Option<Waiter>,
}

/// What a loop's wakers share with it.
struct Woken {
    /// Ids woken since the loop last looked (wakers need `Send`, hence the
    /// mutex; it is only contended when another thread wakes a task).
    ids: Mutex<VecDeque<u64>>,
    /// Written by a waker on another thread, so a sleeping loop wakes up.
    notify: File,
}

thread_local! {
    /// The address of this thread's loop's [`Woken`] (0: none yet): a waker
    /// compares it with its own to know whether it runs on the loop's thread.
    static THIS_LOOP: Cell<usize> = const { Cell::new(0) };
}

impl Woken {
    fn push(&self, id: u64) {
        if let Ok(mut q) = self.ids.lock() {
            q.push_back(id);
        }
        if THIS_LOOP.with(Cell::get) != std::ptr::from_ref(self) as usize {
            // A full counter still wakes the loop: nothing to do on error.
            let _ = (&self.notify).write(&1u64.to_ne_bytes());
        }
    }

    fn pop(&self) -> Option<u64> {
        self.ids.lock().ok().and_then(|mut q| q.pop_front())
    }

    fn len(&self) -> usize {
        self.ids.lock().map(|q| q.len()).unwrap_or(0)
    }
}

/// The epoll token of the loop's eventfd.
const NOTIFY: u64 = u64::MAX;

/// The thread's loop state.
struct Runtime {
    epoll: OwnedFd,
    next_id: Cell<u64>,
    /// Spawned tasks by id, each with its waker (made once); a task being
    /// polled is taken out meanwhile.
    tasks: RefCell<HashMap<u64, (BoxedTask, Waker)>>,
    woken: Arc<Woken>,
    sockets: RefCell<HashMap<u64, Waiters>>,
    timers: RefCell<BinaryHeap<Reverse<(Instant, u64)>>>,
    timer_wakers: RefCell<HashMap<u64, Waker>>,
    last_sweep: Cell<Instant>,
    /// Socket waits that have a deadline (the sweep runs only while any do).
    timed: Cell<usize>,
    /// `epoll_pwait2` failed (a kernel before 5.11, or a filter): waits
    /// fall back to `epoll_wait`'s milliseconds.
    millis_only: Cell<bool>,
}

/// Id of the future `block_on` drives (spawned tasks count from 1).
const MAIN: u64 = 0;

thread_local! {
    static RUNTIME: Runtime = Runtime::new().expect("epoll_create1");
}

impl Runtime {
    fn new() -> io::Result<Runtime> {
        // SAFETY: no pointers; the result is checked before it is used as a descriptor.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: no pointers; the result is checked before it is used.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `efd` is a fresh descriptor nobody else owns.
        let notify = File::from(unsafe { OwnedFd::from_raw_fd(efd) });
        add(epoll.as_raw_fd(), efd, libc::EPOLLIN as u32, NOTIFY)?;
        let woken = Arc::new(Woken {
            ids: Mutex::default(),
            notify,
        });
        THIS_LOOP.with(|l| l.set(Arc::as_ptr(&woken) as usize));
        Ok(Runtime {
            epoll,
            next_id: Cell::new(MAIN + 1),
            tasks: RefCell::default(),
            woken,
            sockets: RefCell::default(),
            timers: RefCell::default(),
            timer_wakers: RefCell::default(),
            last_sweep: Cell::new(Instant::now()),
            timed: Cell::new(0),
            millis_only: Cell::new(false),
        })
    }

    fn id(&self) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        id
    }

    fn waker(&self, id: u64) -> Waker {
        Waker::from(Arc::new(TaskWaker {
            id,
            woken: self.woken.clone(),
        }))
    }

    /// Puts `new` in a waiter slot, returning what was there, and keeps
    /// [`Runtime::timed`] right.
    fn put(&self, slot: &mut Option<Waiter>, new: Option<Waiter>) -> Option<Waiter> {
        let timed = |w: &Option<Waiter>| w.as_ref().is_some_and(|(_, at)| at.is_some());
        let n = self.timed.get() + usize::from(timed(&new));
        let old = std::mem::replace(slot, new);
        self.timed.set(n - usize::from(timed(&old)));
        old
    }

    /// A socket is closing: its waiters go.
    fn forget(&self, token: u64) {
        let removed = self.sockets.borrow_mut().remove(&token);
        if let Some(mut w) = removed {
            self.put(&mut w.read, None);
            self.put(&mut w.write, None);
        }
    }

    fn register(&self, fd: RawFd) -> io::Result<u64> {
        let token = self.id();
        let events = libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET;
        add(self.epoll.as_raw_fd(), fd, events as u32, token)?;
        self.sockets.borrow_mut().insert(token, Waiters::default());
        Ok(token)
    }

    /// Waits for sockets (at most until the next timer) and wakes their
    /// waiters and the timers that are due.
    fn turn(&self, block: bool) {
        // Nanosecond timeouts (`epoll_pwait2`): open-loop pacing sleeps to
        // each request's due time, and `epoll_wait`'s milliseconds would send
        // requests up to 1 ms late (counted as latency, since latency runs
        // from the due time).
        let timeout = if !block {
            Some(Duration::ZERO)
        } else {
            let next_timer = self.timers.borrow().peek().map(|Reverse((at, _))| *at);
            // Only waits with a deadline need the sweep (an idle mock has none).
            let next_sweep = (self.timed.get() > 0).then(|| self.last_sweep.get() + DEADLINE_SWEEP);
            next_timer
                .into_iter()
                .chain(next_sweep)
                .min()
                .map(|at| at.saturating_duration_since(Instant::now()))
        };
        let ts = timeout.map(|d| libc::timespec {
            tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
            tv_nsec: d.subsec_nanos() as libc::c_long,
        });
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_WAIT];
        let mut n = -1;
        if !self.millis_only.get() {
            // SAFETY: `events` is valid for writes of EVENTS_PER_WAIT entries
            // and outlives the call; the timeout is null (wait) or points at
            // `ts`, alive for the call; no signal mask; the descriptor is our
            // epoll set.
            n = unsafe {
                libc::epoll_pwait2(
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    EVENTS_PER_WAIT as i32,
                    ts.as_ref()
                        .map_or(std::ptr::null(), |t| t as *const libc::timespec),
                    std::ptr::null(),
                )
            };
            if n < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                self.millis_only.set(true);
            }
        }
        if self.millis_only.get() {
            // Rounded up: waking early would only wait again.
            let ms = timeout.map_or(-1, |d| {
                d.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
            });
            // SAFETY: as above, with a plain millisecond timeout.
            n = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    EVENTS_PER_WAIT as i32,
                    ms,
                )
            };
        }
        if n > 0 {
            let mut sockets = self.sockets.borrow_mut();
            for e in &events[..n as usize] {
                if e.u64 == NOTIFY {
                    // Another thread woke a task: its id is queued already.
                    let _ = (&self.woken.notify).read(&mut [0u8; 8]);
                    continue;
                }
                let Some(w) = sockets.get_mut(&{ e.u64 }) else {
                    continue;
                };
                let flags = e.events as i32;
                let broken = flags & (libc::EPOLLERR | libc::EPOLLHUP) != 0;
                if (flags & (libc::EPOLLIN | libc::EPOLLRDHUP) != 0 || broken)
                    && let Some((w, _)) = self.put(&mut w.read, None)
                {
                    w.wake();
                }
                if (flags & libc::EPOLLOUT != 0 || broken)
                    && let Some((w, _)) = self.put(&mut w.write, None)
                {
                    w.wake();
                }
            }
        }
        let now = Instant::now();
        if now >= self.last_sweep.get() + DEADLINE_SWEEP {
            // Waits past their deadline are woken; they see it and time out.
            self.last_sweep.set(now);
            for w in self.sockets.borrow_mut().values_mut() {
                for slot in [&mut w.read, &mut w.write] {
                    if slot
                        .as_ref()
                        .is_some_and(|(_, at)| at.is_some_and(|at| at <= now))
                        && let Some((w, _)) = self.put(slot, None)
                    {
                        w.wake();
                    }
                }
            }
        }
        loop {
            let due = {
                let mut timers = self.timers.borrow_mut();
                match timers.peek() {
                    Some(Reverse((at, _))) if *at <= now => timers.pop().map(|Reverse((_, id))| id),
                    _ => None,
                }
            };
            let Some(id) = due else { break };
            if let Some(w) = self.timer_wakers.borrow_mut().remove(&id) {
                w.wake();
            }
        }
    }

    /// Drops every task, outside the borrow (a task's drop may drop others).
    fn drop_tasks(&self) {
        loop {
            let tasks = std::mem::take(&mut *self.tasks.borrow_mut());
            if tasks.is_empty() {
                return;
            }
            drop(tasks);
        }
    }

    fn poll_task(&self, id: u64) {
        // Taken out while it runs: it may spawn or drop other tasks.
        let Some((mut task, waker)) = self.tasks.borrow_mut().remove(&id) else {
            return; // finished or cancelled since it was woken
        };
        if task
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending()
        {
            self.tasks.borrow_mut().insert(id, (task, waker));
        }
    }
}

struct TaskWaker {
    id: u64,
    woken: Arc<Woken>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.push(self.id);
    }
}

/// Adds `fd` to the epoll set `epoll` with `events`, tagged `token`.
fn add(epoll: RawFd, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
    let mut event = libc::epoll_event { events, u64: token };
    // SAFETY: both descriptors are open for the call (the caller owns
    // them), and `event` is valid for it.
    let r = unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut event) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `main` on this thread's loop, with every task it spawns, until
/// `main` completes; tasks still pending then are dropped before it returns
/// (not later, in the thread-local's destructor, where their timers and
/// sockets could no longer reach the loop).
pub fn block_on<F: Future>(main: F) -> F::Output {
    RUNTIME.with(|rt| {
        let mut main = std::pin::pin!(main);
        let main_waker = rt.waker(MAIN);
        rt.woken.push(MAIN);
        loop {
            // What was woken by now runs; what it wakes runs after the
            // kernel is asked (without waiting) for sockets that are ready.
            let queued = rt.woken.len();
            for _ in 0..queued {
                let Some(id) = rt.woken.pop() else {
                    break;
                };
                if id == MAIN {
                    if let Poll::Ready(out) =
                        main.as_mut().poll(&mut Context::from_waker(&main_waker))
                    {
                        rt.drop_tasks();
                        return out;
                    }
                } else {
                    rt.poll_task(id);
                }
            }
            rt.turn(rt.woken.len() == 0);
        }
    })
}

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    // SAFETY: `cpu_set_t` is a plain bit array, all zeroes is the empty set;
    // `cpu` is below CPU_SETSIZE, so CPU_SET writes inside it.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        set
    };
    // SAFETY: `set` is valid for reads of its size for the call; 0 is this thread.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A spawned task: await it for its output; dropping it cancels the task.
pub struct Task<T> {
    id: u64,
    state: Rc<RefCell<JoinState<T>>>,
    detached: bool,
}

impl<T> Task<T> {
    /// Lets the task run on without anyone awaiting it (it ends with its
    /// future, or with the thread).
    pub fn detach(mut self) {
        self.detached = true;
    }
}

struct JoinState<T> {
    output: Option<T>,
    waiter: Option<Waker>,
}

/// Starts `future` on this thread's loop.
pub fn spawn<F>(future: F) -> Task<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    let state = Rc::new(RefCell::new(JoinState {
        output: None,
        waiter: None,
    }));
    let done = state.clone();
    let task: BoxedTask = Box::pin(async move {
        let out = future.await;
        let waiter = {
            let mut s = done.borrow_mut();
            s.output = Some(out);
            s.waiter.take()
        };
        if let Some(w) = waiter {
            w.wake();
        }
    });
    RUNTIME.with(|rt| {
        let id = rt.id();
        rt.tasks.borrow_mut().insert(id, (task, rt.waker(id)));
        rt.woken.push(id);
        Task {
            id,
            state,
            detached: false,
        }
    })
}

impl<T> Future for Task<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut s = self.state.borrow_mut();
        match s.output.take() {
            Some(out) => Poll::Ready(out),
            None => {
                s.waiter = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        // Dropped outside the borrow: the task's own drops may reach the loop.
        let cancelled = RUNTIME
            .try_with(|rt| rt.tasks.borrow_mut().remove(&self.id))
            .ok()
            .flatten();
        drop(cancelled);
    }
}

/// Lets the loop's other tasks run once before this one goes on.
pub async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

/// Completes at `deadline` (its timer is dropped with it).
struct Timer {
    deadline: Instant,
    id: Option<u64>,
}

impl Future for Timer {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            return Poll::Ready(());
        }
        let deadline = self.deadline;
        let id = *self.id.get_or_insert_with(|| {
            RUNTIME.with(|rt| {
                let id = rt.id();
                rt.timers.borrow_mut().push(Reverse((deadline, id)));
                id
            })
        });
        RUNTIME.with(|rt| rt.timer_wakers.borrow_mut().insert(id, cx.waker().clone()));
        Poll::Pending
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        // Its heap entry stays until due and then finds no waker.
        if let Some(id) = self.id {
            let _ = RUNTIME.try_with(|rt| rt.timer_wakers.borrow_mut().remove(&id));
        }
    }
}

/// Sleeps for `d`.
pub async fn sleep(d: Duration) {
    Timer {
        deadline: Instant::now() + d,
        id: None,
    }
    .await
}

/// A non-blocking TCP connection registered with this thread's epoll set.
pub struct Stream {
    socket: TcpStream,
    token: u64,
}

/// Which way a wait goes.
#[derive(Clone, Copy)]
enum Ready {
    Read,
    Write,
}

impl Stream {
    /// Connects to `addr` within `timeout`, with `TCP_NODELAY` set.
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Stream> {
        let domain = socket2::Domain::for_address(addr);
        let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
        socket.set_nodelay(true)?;
        // Non-blocking from here on: the connect below only starts.
        let stream = Stream::register(socket.into())?;
        match stream.socket_ref().connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
                let deadline = Instant::now() + timeout;
                loop {
                    // Woken by the socket or by the deadline sweep: connected,
                    // refused, or still trying (then the next wait times out).
                    stream.wait(Ready::Write, deadline).await?;
                    if let Some(e) = stream.socket.take_error()? {
                        return Err(e);
                    }
                    match stream.socket.peer_addr() {
                        Ok(_) => break,
                        Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            Err(e) => return Err(e),
        }
        Ok(stream)
    }

    fn socket_ref(&self) -> socket2::SockRef<'_> {
        socket2::SockRef::from(&self.socket)
    }

    fn register(socket: TcpStream) -> io::Result<Stream> {
        socket.set_nonblocking(true)?;
        let token = RUNTIME.with(|rt| rt.register(socket.as_raw_fd()))?;
        Ok(Stream { socket, token })
    }

    /// Sets `TCP_NODELAY`.
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.socket.set_nodelay(on)
    }

    /// Shuts down one or both directions.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.socket.shutdown(how)
    }

    /// What the socket has now, without waiting (`WouldBlock` when empty).
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.socket).read(buf)
    }

    /// What the socket takes now, without waiting (`WouldBlock` when full).
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        (&self.socket).write(buf)
    }

    /// Reads into `buf`, waiting until `deadline` for data (`TimedOut` after).
    pub async fn read_before(&self, buf: &mut [u8], deadline: Instant) -> io::Result<usize> {
        loop {
            match self.try_read(buf) {
                Err(e) if would_block(&e) => self.wait(Ready::Read, deadline).await?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => return other,
            }
        }
    }

    /// Writes all of `bytes`, waiting until `deadline` for room.
    pub async fn write_all_before(&self, mut bytes: &[u8], deadline: Instant) -> io::Result<()> {
        while !bytes.is_empty() {
            match self.try_write(bytes) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => bytes = &bytes[n..],
                Err(e) if would_block(&e) => self.wait(Ready::Write, deadline).await?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Until the socket signals `which` (edge-triggered: call only after the
    /// socket said `WouldBlock`), or `deadline`.
    async fn wait(&self, which: Ready, deadline: Instant) -> io::Result<()> {
        let mut armed = false;
        std::future::poll_fn(|cx| {
            if armed {
                let still = RUNTIME.with(|rt| {
                    let sockets = rt.sockets.borrow();
                    sockets.get(&self.token).is_some_and(|w| match which {
                        Ready::Read => w.read.is_some(),
                        Ready::Write => w.write.is_some(),
                    })
                });
                if !still {
                    // An event (or the deadline sweep) took the waker: the
                    // caller asks the socket again, and waits again if need be.
                    return Poll::Ready(Ok(()));
                }
            }
            if Instant::now() >= deadline {
                return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
            }
            arm(self.token, which, cx, Some(deadline));
            armed = true;
            Poll::Pending
        })
        .await
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // Closing the descriptor takes it out of the epoll set.
        let _ = RUNTIME.try_with(|rt| rt.forget(self.token));
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

/// Reads and writes that wait without a deadline (as a plain socket does).
impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let tried = self.try_read(buf);
        ready_or_arm(self.token, Ready::Read, cx, tried)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let tried = self.try_write(buf);
        ready_or_arm(self.token, Ready::Write, cx, tried)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.socket.shutdown(Shutdown::Write))
    }
}

/// What a non-blocking attempt gave, or (it would block) a wait for `which`
/// on socket `token`, without a deadline.
fn ready_or_arm<T>(
    token: u64,
    which: Ready,
    cx: &Context<'_>,
    tried: io::Result<T>,
) -> Poll<io::Result<T>> {
    match tried {
        Err(e) if would_block(&e) => {
            arm(token, which, cx, None);
            Poll::Pending
        }
        // A signal cut the call short: try again on the next turn.
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {
            cx.waker().wake_by_ref();
            Poll::Pending
        }
        other => Poll::Ready(other),
    }
}

/// Registers the waker of `cx` for `which` on socket `token` (with
/// `deadline`); the caller saw `WouldBlock` in this same poll.
fn arm(token: u64, which: Ready, cx: &Context<'_>, deadline: Option<Instant>) {
    RUNTIME.with(|rt| {
        if let Some(w) = rt.sockets.borrow_mut().get_mut(&token) {
            let slot = match which {
                Ready::Read => &mut w.read,
                Ready::Write => &mut w.write,
            };
            rt.put(slot, Some((cx.waker().clone(), deadline)));
        }
    });
}

/// A non-blocking listening socket registered with this thread's epoll set.
pub struct Listener {
    socket: TcpListener,
    token: u64,
}

impl Listener {
    /// Binds `addr` with `SO_REUSEPORT`, so several threads (each with its
    /// own listener) share one port and the kernel spreads connections.
    pub fn bind(addr: SocketAddr) -> io::Result<Listener> {
        let domain = socket2::Domain::for_address(addr);
        let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        let socket: TcpListener = socket.into();
        let token = RUNTIME.with(|rt| rt.register(socket.as_raw_fd()))?;
        Ok(Listener { socket, token })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// The next connection, registered with this thread's loop.
    pub async fn accept(&self) -> io::Result<Stream> {
        let (socket, _) = std::future::poll_fn(|cx| {
            ready_or_arm(self.token, Ready::Read, cx, self.socket.accept())
        })
        .await?;
        Stream::register(socket)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = RUNTIME.try_with(|rt| rt.forget(self.token));
    }
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn tasks_run_sleep_and_cancel() {
        block_on(async {
            let started = Instant::now();
            let a = spawn(async {
                sleep(Duration::from_millis(20)).await;
                1
            });
            let b = spawn(async { 2 });
            assert_eq!(b.await + a.await, 3);
            assert!(started.elapsed() >= Duration::from_millis(20));
            // A dropped task never finishes (its side effect never happens).
            let flag = Rc::new(Cell::new(false));
            let f = flag.clone();
            drop(spawn(async move {
                sleep(Duration::from_millis(5)).await;
                f.set(true);
            }));
            sleep(Duration::from_millis(15)).await;
            assert!(!flag.get());
        });
    }

    #[test]
    fn a_stream_waits_for_data_and_times_out_without_it() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = [0u8; 4];
            s.read_exact(&mut got).unwrap();
            // Answer late, in two pieces: the reader must wait for each.
            std::thread::sleep(Duration::from_millis(30));
            s.write_all(b"po").unwrap();
            std::thread::sleep(Duration::from_millis(10));
            s.write_all(b"ng").unwrap();
            // Then silence, until the client gives up and closes.
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
        });
        block_on(async {
            let s = Stream::connect(addr, Duration::from_secs(5)).await.unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            s.write_all_before(b"ping", deadline).await.unwrap();
            let mut buf = [0u8; 8];
            let mut got = Vec::new();
            while got.len() < 4 {
                let n = s.read_before(&mut buf, deadline).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(got, b"pong");
            let soon = Instant::now() + Duration::from_millis(20);
            let e = s.read_before(&mut buf, soon).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        });
        server.join().unwrap();
    }

    #[test]
    fn a_thread_ends_cleanly_with_tasks_still_waiting() {
        // Pending tasks (a sleep, a socket wait) are dropped when `block_on`
        // returns, not in the thread-local's destructor (which would abort).
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            block_on(async move {
                spawn(sleep(Duration::from_secs(60))).detach();
                let s = Stream::connect(addr, Duration::from_secs(5)).await.unwrap();
                spawn(async move {
                    let mut buf = [0u8; 8];
                    let _ = s
                        .read_before(&mut buf, Instant::now() + Duration::from_secs(60))
                        .await;
                })
                .detach();
                yield_now().await;
            })
        })
        .join()
        .unwrap();
        drop(listener);
    }

    #[test]
    fn a_connect_nobody_answers_times_out_on_time() {
        // A listener that never accepts, with the smallest backlog: once its
        // queue is full, new handshakes go unanswered.
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket
            .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        socket.listen(0).unwrap();
        let addr = socket.local_addr().unwrap().as_socket().unwrap();
        let timeout = Duration::from_millis(300);
        block_on(async {
            let mut held = Vec::new();
            for _ in 0..16 {
                let started = Instant::now();
                match Stream::connect(addr, timeout).await {
                    Ok(s) => held.push(s),
                    Err(e) => {
                        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
                        let took = started.elapsed();
                        assert!(took >= timeout && took < timeout * 4, "{took:?}");
                        return;
                    }
                }
            }
            panic!("16 connections to a full backlog all succeeded");
        });
        drop(socket);
    }

    #[test]
    fn connecting_to_a_closed_port_fails_plainly() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        // The listener is gone: nothing accepts there now.
        block_on(async {
            assert!(Stream::connect(port, Duration::from_secs(5)).await.is_err());
        });
    }
}
