//! How finished records reach the log thread: a bounded queue of records
//! (with a bound on the body bytes it holds), and the inbox of tallies of the
//! requests it keeps no row of ([`crate::tally`]). Shards send; the log
//! thread (`control::logs`) receives.

use crate::record::RequestRecord;
use crate::tally::TallyInbox;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::Duration;

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
    /// When the log thread last finished a round ([`crate::reqid::monotonic_ms`]).
    pub last_round: Arc<AtomicU64>,
    /// The log thread's id while it runs (0 before and after).
    pub tid: Arc<AtomicI32>,
    /// It runs `SCHED_IDLE`, not raised yet: the shard that raises it
    /// clears this, so it is raised once.
    pub idle: Arc<AtomicBool>,
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
    /// Set as each round ends: shards read it to tell a log thread that gets
    /// no CPU ([`LogQueue::overdue`]).
    pub last_round: Arc<AtomicU64>,
    /// Its thread id while it runs, and whether it is `SCHED_IDLE`.
    pub tid: Arc<AtomicI32>,
    pub idle: Arc<AtomicBool>,
}

impl LogInbound {
    /// A round ended now.
    pub fn round_done(&self) {
        self.last_round
            .store(crate::reqid::monotonic_ms(), Ordering::Relaxed);
    }
}

/// How long the log thread may go without finishing a round, as a multiple of
/// `logs.flush_interval` (and at least [`STARVED_AFTER_MIN`]), before the
/// shards look at whether it is starved of CPU: a round waits at most one
/// interval, and commits in a fraction of one.
pub const STARVED_AFTER_ROUNDS: u32 = 4;
pub const STARVED_AFTER_MIN: Duration = Duration::from_secs(1);
/// A log thread starved this long, for all the shards' pauses (the CPU went
/// to other processes), is raised back to the normal policy at nice 10.
pub const RAISE_AFTER: Duration = Duration::from_secs(10);

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
            last_round: Arc::new(AtomicU64::new(crate::reqid::monotonic_ms())),
            tid: Arc::default(),
            idle: Arc::default(),
        };
        let inbound = LogInbound {
            rx: [rx_errors, rx],
            payload_bytes: queue.payload_bytes.clone(),
            tallies: queue.tallies.clone(),
            full: queue.full.clone(),
            last_round: queue.last_round.clone(),
            tid: queue.tid.clone(),
            idle: queue.idle.clone(),
        };
        (queue, inbound)
    }

    /// Whether the log thread has finished no round for longer than it
    /// would if it got any CPU (see [`STARVED_AFTER_ROUNDS`]), at `now_ms`
    /// ([`crate::reqid::monotonic_ms`]) with rounds every `interval`. Only
    /// overdue: whether for want of CPU, its run-queue wait says
    /// (`ShardCtx::give_way_to_log`).
    pub fn overdue(&self, now_ms: u64, interval: Duration) -> bool {
        let after = (interval * STARVED_AFTER_ROUNDS).max(STARVED_AFTER_MIN);
        self.since_round(now_ms) > after.as_millis() as u64
    }

    /// Milliseconds since the log thread last finished a round.
    pub fn since_round(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.last_round.load(Ordering::Relaxed))
    }

    /// The id of the `SCHED_IDLE` log thread to raise, once: when its last
    /// round is [`RAISE_AFTER`] old.
    pub fn take_idle_tid(&self, now_ms: u64) -> Option<i32> {
        if self.since_round(now_ms) <= RAISE_AFTER.as_millis() as u64 {
            return None;
        }
        let tid = self.tid.load(Ordering::Relaxed);
        (tid != 0 && self.idle.swap(false, Ordering::Relaxed)).then_some(tid)
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

    #[test]
    fn a_log_thread_is_overdue_after_four_intervals_without_a_round() {
        let (q, inbound) = LogQueue::new(1, 1);
        let start = q.last_round.load(Ordering::Relaxed);
        let interval = Duration::from_millis(500);
        // Rounds every 500 ms: overdue past 2 s without one.
        assert!(!q.overdue(start + 2000, interval));
        assert!(q.overdue(start + 2001, interval));
        // Never sooner than a second, however short the interval.
        assert!(!q.overdue(start + 1000, Duration::from_millis(10)));
        assert!(q.overdue(start + 1001, Duration::from_millis(10)));
        // A round ends: the count starts over.
        inbound.last_round.store(start + 5000, Ordering::Relaxed);
        assert!(!q.overdue(start + 5100, interval));
        inbound.round_done();
        assert!(!q.overdue(crate::reqid::monotonic_ms(), interval));
    }

    /// An idle-policy log thread is handed out for raising once, and only
    /// when its last round is `RAISE_AFTER` old.
    #[test]
    fn an_idle_log_thread_is_raised_once() {
        let (q, inbound) = LogQueue::new(1, 1);
        let start = q.last_round.load(Ordering::Relaxed);
        let late = start + RAISE_AFTER.as_millis() as u64 + 1;
        assert_eq!(q.take_idle_tid(late), None, "no thread yet");
        inbound.tid.store(42, Ordering::Relaxed);
        assert_eq!(q.take_idle_tid(late), None, "not idle-policy");
        inbound.idle.store(true, Ordering::Relaxed);
        assert_eq!(q.take_idle_tid(late - 1), None, "not that late");
        assert_eq!(q.take_idle_tid(late), Some(42));
        assert_eq!(q.take_idle_tid(late), None, "once");
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
