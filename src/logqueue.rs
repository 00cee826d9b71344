//! How finished records reach the log thread: a bounded queue of records
//! (with a bound on the body bytes it holds), and the inbox of tallies of the
//! requests it keeps no row of ([`crate::tally`]). Shards send; the log
//! thread (`control::logs`) receives.

use crate::record::RequestRecord;
use crate::tally::TallyInbox;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};

/// Most payload bytes the log queue may hold: with `logs.payloads` on, a
/// burst of large bodies would otherwise queue up to 65,536 of them in memory.
/// Past it, rows still go to the log, without their bodies.
pub const LOG_QUEUE_PAYLOAD_BYTES: usize = 256 << 20;

/// How finished records reach the log thread: two bounded queues, one for
/// successes and one for errors (a log that falls behind drops successes,
/// which are tallied, before errors), the payload bytes they hold (added by
/// shards, taken off by the log thread), and the tallies of the requests it
/// keeps no row of.
#[derive(Clone)]
pub struct LogQueue {
    pub tx: SyncSender<RequestRecord>,
    /// Errors and answers that did not complete ([`RequestRecord::failed`]).
    pub errors: SyncSender<RequestRecord>,
    pub payload_bytes: Arc<AtomicUsize>,
    pub tallies: Arc<TallyInbox>,
    /// A shard found the successes' queue full since the log thread last
    /// took from it: successes are tallied without being offered (moving a
    /// record into a full queue and back cost more than the tally).
    pub full: Arc<AtomicBool>,
}

/// The log thread's end of a [`LogQueue`].
pub struct LogInbound {
    /// Errors first, then successes.
    pub rx: [Receiver<RequestRecord>; 2],
    /// The queue's parts the log thread changes too: it takes payload
    /// bytes off, takes the tallies, and clears `full` after each take.
    pub payload_bytes: Arc<AtomicUsize>,
    pub tallies: Arc<TallyInbox>,
    pub full: Arc<AtomicBool>,
}

impl LogQueue {
    /// A queue of `successes` and `errors` places, and the log thread's end.
    pub fn new(successes: usize, errors: usize) -> (LogQueue, LogInbound) {
        let (tx, rx) = std::sync::mpsc::sync_channel(successes);
        let (errors, rx_errors) = std::sync::mpsc::sync_channel(errors);
        let queue = LogQueue {
            tx,
            errors,
            payload_bytes: Arc::default(),
            tallies: Arc::default(),
            full: Arc::default(),
        };
        let inbound = LogInbound {
            rx: [rx_errors, rx],
            payload_bytes: queue.payload_bytes.clone(),
            tallies: queue.tallies.clone(),
            full: queue.full.clone(),
        };
        (queue, inbound)
    }

    /// Whether a success would find no room now: the queue was full when a
    /// shard last offered one, and the log thread has not taken since.
    pub fn successes_full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    /// Hands `rec` to the log thread without waiting. Its bodies are left out
    /// when the queue already holds [`LOG_QUEUE_PAYLOAD_BYTES`] of them.
    pub fn send(&self, mut rec: RequestRecord) -> Sent {
        let mut bodies_dropped = false;
        let len = rec.payload_len();
        if len > 0 {
            let queued = self.payload_bytes.fetch_add(len, Ordering::Relaxed);
            if queued + len > LOG_QUEUE_PAYLOAD_BYTES {
                self.payload_bytes.fetch_sub(len, Ordering::Relaxed);
                if let Some(l) = rec.log.as_mut() {
                    l.request_body = None;
                    l.response_body = None;
                }
                bodies_dropped = true;
            }
        }
        let carried = rec.payload_len();
        let failed = rec.failed();
        let queue = if failed { &self.errors } else { &self.tx };
        match queue.try_send(rec) {
            Ok(()) if bodies_dropped => Sent::WithoutBodies,
            Ok(()) => Sent::Whole,
            Err(e) => {
                self.payload_bytes.fetch_sub(carried, Ordering::Relaxed);
                if !failed && !self.successes_full() {
                    self.full.store(true, Ordering::Relaxed);
                }
                let rec = match e {
                    std::sync::mpsc::TrySendError::Full(r)
                    | std::sync::mpsc::TrySendError::Disconnected(r) => r,
                };
                Sent::Dropped(Box::new(rec))
            }
        }
    }
}

/// What [`LogQueue::send`] did with a record.
#[derive(Debug)]
pub enum Sent {
    Whole,
    /// Queued without its bodies (too many payload bytes queued).
    WithoutBodies,
    /// No room: the row is dropped, and the record handed back (to tally).
    Dropped(Box<RequestRecord>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{LogFacts, Payload};
    use crate::reqid::RequestId;
    use std::sync::atomic::Ordering;
    use std::time::Instant;

    fn with_body(n: usize) -> RequestRecord {
        let mut r = RequestRecord::new(RequestId::default(), 0, Instant::now());
        r.log = Some(Box::new(LogFacts {
            request_body: Some(Payload::capped(&vec![b'x'; n], n)),
            ..LogFacts::default()
        }));
        r
    }

    #[test]
    fn the_log_queue_bounds_rows_and_body_bytes() {
        let (q, LogInbound { rx: [_, rx], .. }) = LogQueue::new(2, 2);
        assert!(matches!(q.send(with_body(100)), Sent::Whole));
        assert_eq!(q.payload_bytes.load(Ordering::Relaxed), 100);
        // Past the byte budget, the row goes without its body.
        q.payload_bytes
            .store(LOG_QUEUE_PAYLOAD_BYTES - 50, Ordering::Relaxed);
        assert!(matches!(q.send(with_body(100)), Sent::WithoutBodies));
        assert_eq!(
            q.payload_bytes.load(Ordering::Relaxed),
            LOG_QUEUE_PAYLOAD_BYTES - 50
        );
        // A full queue drops the row and gives its bytes back.
        q.payload_bytes.store(0, Ordering::Relaxed);
        match q.send(with_body(10)) {
            Sent::Dropped(r) => assert_eq!(r.payload_len(), 10),
            other => panic!("{other:?}"),
        }
        assert_eq!(q.payload_bytes.load(Ordering::Relaxed), 0);
        let kept: Vec<_> = rx.try_iter().collect();
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[1].payload_len(), 0);
    }

    fn finished(status: u16) -> RequestRecord {
        let mut r = RequestRecord::new(RequestId::default(), 0, Instant::now());
        r.status = status;
        r
    }

    /// Errors have a queue of their own: a log whose successes' queue is
    /// full still takes them.
    #[test]
    fn errors_have_room_when_successes_do_not() {
        let (
            q,
            LogInbound {
                rx: [rx_errors, rx],
                ..
            },
        ) = LogQueue::new(2, 2);
        assert!(matches!(q.send(finished(200)), Sent::Whole));
        assert!(matches!(q.send(finished(200)), Sent::Whole));
        assert!(!q.successes_full());
        assert!(matches!(q.send(finished(200)), Sent::Dropped(_)));
        // Shards tally the next successes without offering them.
        assert!(q.successes_full());
        assert!(matches!(q.send(finished(502)), Sent::Whole));
        let mut cut = finished(200);
        cut.outcome = crate::record::Outcome::ClientAborted;
        assert!(matches!(q.send(cut), Sent::Whole));
        // A full errors' queue does not stop the successes.
        q.full.store(false, Ordering::Relaxed);
        assert!(matches!(q.send(finished(429)), Sent::Dropped(_)));
        assert!(!q.successes_full());
        assert_eq!(rx.try_iter().count(), 2);
        let statuses: Vec<u16> = rx_errors.try_iter().map(|r| r.status).collect();
        assert_eq!(statuses, [502, 200]);
    }
}
