//! One aigw-load executor: its share of the connections, and its reporting.
//!
//! Owns: spawning this executor's connection tasks, sending its counts to the
//! main thread every second, and a hard stop so a hung server cannot hold the
//! run past its bound. Does not own pinning or the pool (`run.rs`) nor what a
//! connection does (`conn.rs`).

use super::body::{RequestFactory, RequestPlan};
use super::conn::{Connection, Pacing, RunClock, ShardRecorder, run_connection};
use super::stats::{ErrorKind, Stats};
use crate::event::{self, sleep};
use futures_lite::future;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

/// How often executors hand their counts to the main thread.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Counts from one executor for one interval.
pub struct Snapshot {
    pub warmup: Stats,
    pub measured: Stats,
}

/// What every executor of one target run gets (cloned into each).
#[derive(Clone)]
pub struct ShardPlan {
    pub addr: SocketAddr,
    pub requests: Arc<RequestPlan>,
    pub clock: RunClock,
    /// After this, unfinished connections are cancelled and their in-flight
    /// requests counted as timeouts.
    pub hard_stop: Instant,
    pub connections: usize,
    pub shards: usize,
    /// Open-loop interval per connection; `None` for closed loop.
    pub interval: Option<Duration>,
    pub timeout: Duration,
    /// Socket tries before waiting (`--spin`).
    pub spin: usize,
    pub stream: bool,
    pub snapshots: Sender<Snapshot>,
}

/// Runs shard `index`'s connections to completion.
pub async fn run_shard(plan: ShardPlan, index: usize) {
    let recorder = Rc::new(RefCell::new(ShardRecorder::default()));
    let mine: Vec<usize> = (index..plan.connections).step_by(plan.shards).collect();
    let tasks: Vec<_> = mine
        .iter()
        .map(|&j| {
            let pacing = match plan.interval {
                None => Pacing::Closed,
                Some(every) => Pacing::Open {
                    // Spread first sends so arrivals are evenly spaced overall.
                    first: plan.clock.start + every.mul_f64(j as f64 / plan.connections as f64),
                    every,
                },
            };
            event::spawn(run_connection(Connection {
                addr: plan.addr,
                requests: RequestFactory::new(plan.requests.clone(), j),
                pacing,
                clock: plan.clock,
                timeout: plan.timeout,
                spin: plan.spin,
                stream: plan.stream,
                recorder: recorder.clone(),
            }))
        })
        .collect();

    let reporter = {
        let recorder = recorder.clone();
        let snapshots = plan.snapshots.clone();
        event::spawn(async move {
            loop {
                sleep(REPORT_INTERVAL).await;
                send_snapshot(&recorder, &snapshots);
            }
        })
    };

    let all_done = async {
        for task in tasks {
            task.await;
        }
        true
    };
    let hard_stop = async {
        let now = Instant::now();
        if plan.hard_stop > now {
            sleep(plan.hard_stop - now).await;
        }
        false
    };
    let finished = future::or(all_done, hard_stop).await;
    if !finished {
        // The remaining tasks were dropped (cancelled) while stuck on a request.
        let mut rec = recorder.borrow_mut();
        for _ in 0..rec.in_flight {
            rec.measured.record_failure(ErrorKind::Timeout);
        }
        if rec.in_flight > 0 {
            rec.measured
                .note_first_error(|| "no answer before the run's hard stop".to_string());
        }
        rec.in_flight = 0;
    }
    drop(reporter);
    send_snapshot(&recorder, &plan.snapshots);
}

fn send_snapshot(recorder: &RefCell<ShardRecorder>, snapshots: &Sender<Snapshot>) {
    let mut rec = recorder.borrow_mut();
    let snapshot = Snapshot {
        warmup: rec.warmup.take(),
        measured: rec.measured.take(),
    };
    // The main thread only goes away if it panicked; nothing to do then.
    let _ = snapshots.send(snapshot);
}
