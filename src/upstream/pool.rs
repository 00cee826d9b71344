//! Per-shard pool of idle provider connections, keyed by provider name.
//!
//! Shard-local (`RefCell`, no locks). Most recently used first, so a small
//! working set stays warm. A connection enters only after a cleanly framed
//! response with nothing left over; the relay decides that, not the pool.

use super::conn::UpstreamConn;
use crate::fasthash::FastMap;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

/// Most idle connections kept per provider on one shard.
pub const MAX_IDLE_PER_PROVIDER: usize = 512;

pub struct Pool {
    /// Keyed by provider names from the config: [`crate::fasthash::FastMap`], not SipHash.
    idle: RefCell<FastMap<Rc<str>, Vec<UpstreamConn>>>,
    max_idle: Cell<Duration>,
}

impl Pool {
    pub fn new(max_idle: Duration) -> Pool {
        Pool {
            idle: RefCell::new(FastMap::default()),
            max_idle: Cell::new(max_idle),
        }
    }

    /// A warm connection, if one is younger than the idle limit.
    pub fn take(&self, provider: &Rc<str>) -> Option<UpstreamConn> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(provider)?;
        while let Some(c) = list.pop() {
            if c.idle_since.elapsed() < self.max_idle.get() {
                return Some(c);
            }
        }
        None
    }

    pub fn put(&self, provider: &Rc<str>, mut conn: UpstreamConn) {
        conn.idle_since = std::time::Instant::now();
        conn.uses += 1;
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(provider.clone()).or_default();
        if list.len() < MAX_IDLE_PER_PROVIDER {
            list.push(conn);
        }
    }

    /// Closes connections idle past the limit (called from the shard's tick).
    pub fn sweep(&self) {
        let mut idle = self.idle.borrow_mut();
        let max = self.max_idle.get();
        for list in idle.values_mut() {
            list.retain(|c| c.idle_since.elapsed() < max);
        }
    }

    /// Closes every idle connection to `endpoint` (its address changed).
    pub fn forget(&self, endpoint: &str) {
        self.idle.borrow_mut().remove(endpoint);
    }

    pub fn set_max_idle(&self, max_idle: Duration) {
        self.max_idle.set(max_idle);
    }

    pub fn idle_count(&self) -> usize {
        self.idle.borrow().values().map(Vec::len).sum()
    }
}
