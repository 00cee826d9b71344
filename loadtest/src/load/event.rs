//! aigw-load's event loop: one thread, its tasks, an edge-triggered epoll
//! set and a timer heap. Replaces glommio for the generator's sockets.
//!
//! Why not io_uring: a socket a glommio executor waits on has an io_uring
//! poll armed on it, and when the *server* writes to it the server's `send`
//! runs that poll's wake callback, which queues task work and kicks the
//! generator's thread with a reschedule IPI when it is running. On this VM an
//! IPI costs the sender a VM exit: measured against aigw pass-through (64
//! connections, generator and mock on CPU 0, aigw on CPU 1), aigw spent
//! 29-30 µs of CPU per request under the glommio generator and 22 µs under
//! wrk (epoll), and served 0.73x wrk's throughput. An epoll wait costs the
//! sender nothing unless the generator is asleep in `epoll_wait`: a running
//! generator finds the socket on its ready list at its next wait.
//!
//! Owns: spawning and polling tasks ([`spawn`], [`block_on`]), waiting for a
//! socket to be readable or writable ([`Stream`]), and sleeping ([`sleep`]).
//! Single-threaded by design: one per generator CPU, nothing shared between
//! them. The `unsafe` here is four libc calls (`epoll_create1`, `epoll_ctl`,
//! `epoll_wait`, `sched_setaffinity`) and building a CPU set, each with its
//! SAFETY line.

#![allow(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
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

/// What one socket's waiters are, with when they give up.
#[derive(Default)]
struct Waiters {
    read: Option<(Waker, Instant)>,
    write: Option<(Waker, Instant)>,
}

/// The thread's loop state.
struct Runtime {
    epoll: OwnedFd,
    next_id: Cell<u64>,
    /// Spawned tasks by id; a task being polled is taken out meanwhile.
    tasks: RefCell<HashMap<u64, BoxedTask>>,
    /// Ids woken since the last turn (wakers need `Send`, hence the mutex:
    /// only this thread ever locks it).
    woken: Arc<Mutex<VecDeque<u64>>>,
    sockets: RefCell<HashMap<u64, Waiters>>,
    timers: RefCell<BinaryHeap<Reverse<(Instant, u64)>>>,
    timer_wakers: RefCell<HashMap<u64, Waker>>,
    last_sweep: Cell<Instant>,
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
        Ok(Runtime {
            // SAFETY: `fd` is a fresh descriptor nobody else owns.
            epoll: unsafe { OwnedFd::from_raw_fd(fd) },
            next_id: Cell::new(MAIN + 1),
            tasks: RefCell::default(),
            woken: Arc::default(),
            sockets: RefCell::default(),
            timers: RefCell::default(),
            timer_wakers: RefCell::default(),
            last_sweep: Cell::new(Instant::now()),
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

    /// Waits for sockets (at most until the next timer) and wakes their
    /// waiters and the timers that are due.
    fn turn(&self, block: bool) {
        let timeout_ms = if !block {
            0
        } else {
            let next_timer = self.timers.borrow().peek().map(|Reverse((at, _))| *at);
            let next_sweep =
                (!self.sockets.borrow().is_empty()).then(|| self.last_sweep.get() + DEADLINE_SWEEP);
            match next_timer.into_iter().chain(next_sweep).min() {
                Some(at) => {
                    let left = at.saturating_duration_since(Instant::now());
                    // Round up: waking early would only wait again.
                    left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
                }
                None => -1,
            }
        };
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_WAIT];
        // SAFETY: `events` is valid for writes of EVENTS_PER_WAIT entries and
        // outlives the call; the descriptor is our open epoll set.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                EVENTS_PER_WAIT as i32,
                timeout_ms,
            )
        };
        if n > 0 {
            let mut sockets = self.sockets.borrow_mut();
            for e in &events[..n as usize] {
                let Some(w) = sockets.get_mut(&{ e.u64 }) else {
                    continue;
                };
                let flags = e.events as i32;
                let broken = flags & (libc::EPOLLERR | libc::EPOLLHUP) != 0;
                if (flags & (libc::EPOLLIN | libc::EPOLLRDHUP) != 0 || broken)
                    && let Some((w, _)) = w.read.take()
                {
                    w.wake();
                }
                if (flags & libc::EPOLLOUT != 0 || broken)
                    && let Some((w, _)) = w.write.take()
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
                    if slot.as_ref().is_some_and(|(_, at)| *at <= now)
                        && let Some((w, _)) = slot.take()
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

    fn poll_task(&self, id: u64) {
        // Taken out while it runs: it may spawn or drop other tasks.
        let Some(mut task) = self.tasks.borrow_mut().remove(&id) else {
            return; // finished or cancelled since it was woken
        };
        let waker = self.waker(id);
        if task
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending()
        {
            self.tasks.borrow_mut().insert(id, task);
        }
    }
}

struct TaskWaker {
    id: u64,
    woken: Arc<Mutex<VecDeque<u64>>>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Ok(mut q) = self.woken.lock() {
            q.push_back(self.id);
        }
    }
}

/// Runs `main` on this thread's loop, with every task it spawns, until
/// `main` completes (tasks still pending then are dropped with the loop's
/// state when the thread ends).
pub fn block_on<F: Future>(main: F) -> F::Output {
    RUNTIME.with(|rt| {
        let mut main = std::pin::pin!(main);
        let main_waker = rt.waker(MAIN);
        rt.woken.lock().map(|mut q| q.push_back(MAIN)).ok();
        loop {
            // What was woken by now runs; what it wakes runs after the
            // kernel is asked (without waiting) for sockets that are ready.
            let queued = rt.woken.lock().map(|q| q.len()).unwrap_or(0);
            for _ in 0..queued {
                let Some(id) = rt.woken.lock().ok().and_then(|mut q| q.pop_front()) else {
                    break;
                };
                if id == MAIN {
                    if let Poll::Ready(out) =
                        main.as_mut().poll(&mut Context::from_waker(&main_waker))
                    {
                        return out;
                    }
                } else {
                    rt.poll_task(id);
                }
            }
            let idle = rt.woken.lock().map(|q| q.is_empty()).unwrap_or(true);
            rt.turn(idle);
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
        rt.tasks.borrow_mut().insert(id, task);
        rt.woken.lock().map(|mut q| q.push_back(id)).ok();
        Task { id, state }
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
        // Dropped outside the borrow: the task's own drops may reach the loop.
        let cancelled = RUNTIME.with(|rt| rt.tasks.borrow_mut().remove(&self.id));
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
            RUNTIME.with(|rt| rt.timer_wakers.borrow_mut().remove(&id));
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
        socket.set_nonblocking(true)?;
        socket.set_nodelay(true)?;
        let stream = Stream::register(socket.into())?;
        match stream.socket_ref().connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
                stream.wait(Ready::Write, Instant::now() + timeout).await?;
                if let Some(e) = stream.socket.take_error()? {
                    return Err(e);
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
        RUNTIME.with(|rt| {
            let token = rt.id();
            let mut event = libc::epoll_event {
                events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
                u64: token,
            };
            // SAFETY: both descriptors are open (the socket is owned by
            // `socket`), and `event` is valid for the call.
            let r = unsafe {
                libc::epoll_ctl(
                    rt.epoll.as_raw_fd(),
                    libc::EPOLL_CTL_ADD,
                    socket.as_raw_fd(),
                    &mut event,
                )
            };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            rt.sockets.borrow_mut().insert(token, Waiters::default());
            Ok(Stream { socket, token })
        })
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
    pub async fn read(&self, buf: &mut [u8], deadline: Instant) -> io::Result<usize> {
        loop {
            match self.try_read(buf) {
                Err(e) if would_block(&e) => self.wait(Ready::Read, deadline).await?,
                other => return other,
            }
        }
    }

    /// Writes all of `bytes`, waiting until `deadline` for room.
    pub async fn write_all(&self, mut bytes: &[u8], deadline: Instant) -> io::Result<()> {
        while !bytes.is_empty() {
            match self.try_write(bytes) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => bytes = &bytes[n..],
                Err(e) if would_block(&e) => self.wait(Ready::Write, deadline).await?,
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
            RUNTIME.with(|rt| {
                if let Some(w) = rt.sockets.borrow_mut().get_mut(&self.token) {
                    let slot = match which {
                        Ready::Read => &mut w.read,
                        Ready::Write => &mut w.write,
                    };
                    *slot = Some((cx.waker().clone(), deadline));
                }
            });
            armed = true;
            Poll::Pending
        })
        .await
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // Closing the descriptor takes it out of the epoll set.
        RUNTIME.with(|rt| rt.sockets.borrow_mut().remove(&self.token));
    }
}

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
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
            s.write_all(b"ping", deadline).await.unwrap();
            let mut buf = [0u8; 8];
            let mut got = Vec::new();
            while got.len() < 4 {
                let n = s.read(&mut buf, deadline).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(got, b"pong");
            let soon = Instant::now() + Duration::from_millis(20);
            let e = s.read(&mut buf, soon).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        });
        server.join().unwrap();
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
