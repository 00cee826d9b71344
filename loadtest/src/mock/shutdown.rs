//! Stopping one shard's connections when the server is dropped.
//!
//! Owns a shard-local stop signal that every connection task races against,
//! and the count of connections still open. A detached task outlives the
//! accept loop, so without these a hung or idle connection would keep its
//! socket open after `MockServer` is gone. Does not decide when to stop (that
//! is the accept loop in `mod.rs`, told by the server handle).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// A one-shot, shard-local broadcast: once triggered, every [`Stopped`]
/// future completes.
#[derive(Default)]
pub struct StopSignal {
    triggered: Cell<bool>,
    next_key: Cell<u64>,
    waiters: RefCell<HashMap<u64, Waker>>,
}

impl StopSignal {
    /// Completes every current and future [`Stopped`].
    pub fn trigger(&self) {
        self.triggered.set(true);
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for waker in waiters.into_values() {
            waker.wake();
        }
    }

    /// A future that completes once [`trigger`](Self::trigger) is called.
    pub fn stopped(&self) -> Stopped<'_> {
        Stopped {
            signal: self,
            key: None,
        }
    }
}

/// See [`StopSignal::stopped`]. Deregisters itself when dropped, so finished
/// connections leave nothing behind.
pub struct Stopped<'a> {
    signal: &'a StopSignal,
    key: Option<u64>,
}

impl Future for Stopped<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let signal = self.signal;
        if signal.triggered.get() {
            return Poll::Ready(());
        }
        let key = *self.key.get_or_insert_with(|| {
            let key = signal.next_key.get();
            signal.next_key.set(key.wrapping_add(1));
            key
        });
        let mut waiters = signal.waiters.borrow_mut();
        match waiters.get_mut(&key) {
            // The same task again: keep the clone it left.
            Some(waker) if waker.will_wake(cx.waker()) => {}
            Some(waker) => waker.clone_from(cx.waker()),
            None => {
                waiters.insert(key, cx.waker().clone());
            }
        }
        Poll::Pending
    }
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.signal.waiters.borrow_mut().remove(&key);
        }
    }
}

/// The connections a shard has open; [`Open::closed`] waits for none.
#[derive(Default)]
pub struct Open {
    count: Cell<usize>,
    waiter: RefCell<Option<Waker>>,
}

impl Open {
    /// Counts a connection until the returned pass drops.
    pub fn enter(self: &std::rc::Rc<Self>) -> Pass {
        self.count.set(self.count.get() + 1);
        Pass(self.clone())
    }

    /// Completes once every pass has dropped.
    pub async fn closed(&self) {
        std::future::poll_fn(|cx| {
            if self.count.get() == 0 {
                Poll::Ready(())
            } else {
                *self.waiter.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// One open connection (see [`Open::enter`]).
pub struct Pass(std::rc::Rc<Open>);

impl Drop for Pass {
    fn drop(&mut self) {
        let open = &self.0;
        open.count.set(open.count.get() - 1);
        if open.count.get() == 0
            && let Some(w) = open.waiter.borrow_mut().take()
        {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    #[test]
    fn waiters_complete_once_triggered_and_leave_nothing_behind() {
        let signal = StopSignal::default();
        let mut cx = Context::from_waker(Waker::noop());
        let mut a = Box::pin(signal.stopped());
        let b = Box::pin(signal.stopped());
        assert!(a.as_mut().poll(&mut cx).is_pending());
        drop(b);
        assert_eq!(signal.waiters.borrow().len(), 1);
        signal.trigger();
        assert!(a.as_mut().poll(&mut cx).is_ready());
        drop(a);
        assert!(signal.waiters.borrow().is_empty());
        assert!(Box::pin(signal.stopped()).as_mut().poll(&mut cx).is_ready());
    }
}
