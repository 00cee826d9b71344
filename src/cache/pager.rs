//! Page-ahead: makes the pages a partition's writer is about to fill
//! writable before it gets there, on a thread of its own.
//!
//! A page of a shared file mapping is mapped read-only until its first write
//! after the start, and again after the kernel wrote it back (that is how it
//! tracks dirty pages); the write that finds it so faults, and on ext4 such a
//! fault journals. On all-miss traffic those faults took about 1% of the
//! shard's samples, inside the store, on the request path. The writer asks
//! for the next [`STEP`] of its open segment while it still has one step of
//! prepared room ahead; the `aigw-cache-pager` thread (lowered priority, like
//! the log's) does the work with `MADV_POPULATE_WRITE`, one [`STEP`] per
//! call: the call holds the process's memory-map lock for reading, so longer
//! ones could make a shard's `mmap` (its allocator growing) wait.
//!
//! Only a few steps ahead, not whole segments: a page made writable is also
//! dirty, and one the writer reaches only after the kernel wrote it back
//! (about 30 s later) faults anyway, having been written twice.
//!
//! Owns: the thread and the jobs. Does not own where the writer stands
//! (`store::Writer` decides what to ask for) nor the mapping (`sys::SharedMap`).

use crate::sys::Prefault;
use std::io;
use std::sync::mpsc;

/// How much the writer asks for at a time, and how much room it keeps
/// prepared ahead of its next write (a thousand 1 KiB entries: at 25k misses
/// a second, 40 ms; the pager needs well under 1 ms for it).
pub const STEP: usize = 1 << 20;

/// Make `len` bytes from `at` of `pages` writable.
pub struct Job {
    pub pages: Prefault,
    pub at: usize,
    pub len: usize,
}

/// A handle on the pager thread; it ends when the last handle is dropped
/// (once it has done the jobs already asked for).
#[derive(Clone)]
pub struct Pager {
    jobs: mpsc::Sender<Job>,
}

impl Pager {
    pub fn start() -> io::Result<Pager> {
        let (jobs, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("aigw-cache-pager".into())
            .spawn(move || {
                let _ = crate::sys::lower_thread_priority(crate::sys::BACKGROUND_NICE);
                for job in rx {
                    let end = job.at.saturating_add(job.len);
                    let mut at = job.at;
                    while at < end {
                        let len = STEP.min(end - at);
                        // Best effort: refused, the writes fault as before.
                        let _ = job.pages.prepare_write(at, len);
                        at += len;
                    }
                }
            })?;
        Ok(Pager { jobs })
    }

    /// A pager whose jobs the caller receives instead of a thread (tests).
    #[cfg(test)]
    pub fn capture() -> (Pager, mpsc::Receiver<Job>) {
        let (jobs, rx) = mpsc::channel();
        (Pager { jobs }, rx)
    }

    pub fn ask(&self, pages: &Prefault, at: usize, len: usize) {
        if len > 0 {
            let _ = self.jobs.send(Job {
                pages: pages.clone(),
                at,
                len,
            });
        }
    }
}
