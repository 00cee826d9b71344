//! Running aigw-load: the whole story of a run, target by target.
//!
//! Owns: the generator threads (one pinned to each `--cpus` entry, each
//! running its own event loop, `crate::event`),
//! the run's clock, the main thread's loop (progress lines, CPU samples at the
//! measured window's edges) and assembling the `Report`. Targets run one
//! after the other, each with its own warm-up and measured window, so they
//! never compete for the load generator's cores.

use super::body::RequestPlan;
use super::config::{LoadConfig, Mode, Target, allowed_cpus};
use super::conn::RunClock;
use super::cpu::{process_cpu, processes_cpu};
use super::progress::Collector;
use super::report::{CpuUse, Report, TargetReport};
use super::shard::{ShardPlan, Snapshot, run_shard};
use crate::event;
use std::fmt;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Time between starting the threads and the first request, so every
/// thread is up before the clock starts.
pub const STARTUP_GRACE: Duration = Duration::from_millis(200);
/// Extra time after the last read timeout before unfinished requests are
/// abandoned and counted as timeouts.
pub const HARD_STOP_MARGIN: Duration = Duration::from_secs(1);
/// How often the progress line is printed.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// A run that could not be carried out (as opposed to a server that failed).
#[derive(Debug)]
pub struct RunError(pub String);

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RunError {}

/// Runs every target of `cfg` in turn and reports.
pub fn run(cfg: &LoadConfig) -> Result<Report, RunError> {
    check_cpus(&cfg.cpus)?;
    let nonce = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut targets = Vec::with_capacity(cfg.targets.len());
    for (i, target) in cfg.targets.iter().enumerate() {
        let label = format!("[{}/{} {}]", i + 1, cfg.targets.len(), target.url);
        targets.push(run_target(
            cfg,
            target,
            &label,
            nonce.wrapping_add(i as u64),
        )?);
    }
    Ok(Report {
        mode: match cfg.mode {
            Mode::Closed => "closed",
            Mode::Open { .. } => "open",
        },
        connections: cfg.connections.get(),
        cpus: cfg.cpus.clone(),
        stream: cfg.stream,
        hit_ratio: cfg.hit_ratio,
        max_error_rate: cfg.max_error_rate,
        targets,
    })
}

/// One target: start the executors, watch them, collect.
fn run_target(
    cfg: &LoadConfig,
    target: &Target,
    label: &str,
    nonce: u64,
) -> Result<TargetReport, RunError> {
    let start = Instant::now() + STARTUP_GRACE;
    let clock = RunClock {
        start,
        measure_start: start + cfg.warmup,
        end: start + cfg.warmup + cfg.duration,
    };
    let (tx, rx) = mpsc::channel::<Snapshot>();
    let plan = ShardPlan {
        addr: target.addr,
        requests: Arc::new(RequestPlan::new(cfg, target, nonce)),
        clock,
        hard_stop: clock.end + cfg.timeout + HARD_STOP_MARGIN,
        connections: cfg.connections.get(),
        shards: cfg.cpus.len(),
        interval: cfg.per_connection_interval(),
        timeout: cfg.timeout,
        spin: cfg.spin,
        stream: cfg.stream,
        snapshots: tx,
    };
    let mut handles = Vec::with_capacity(cfg.cpus.len());
    for (index, &cpu) in cfg.cpus.iter().enumerate() {
        let plan = plan.clone();
        let handle = std::thread::Builder::new()
            .name(format!("aigw-load-{index}"))
            .spawn(move || {
                event::pin_to_cpu(cpu).map_err(|e| format!("cannot pin to CPU {cpu}: {e}"))?;
                event::block_on(run_shard(plan, index));
                Ok::<(), String>(())
            })
            .map_err(|e| RunError(format!("cannot start a thread for CPU {cpu}: {e}")))?;
        handles.push(handle);
    }
    // The threads hold the only senders now: the loop below ends when they do.
    drop(plan);

    // Main loop: merge snapshots, print progress, sample CPU at the window's edges.
    let mut collector = Collector::default();
    let mut cpu_at_start = None;
    let mut cpu_at_end = None;
    let mut next_line = start + PROGRESS_EVERY;
    loop {
        let now = Instant::now();
        if cpu_at_start.is_none() && now >= clock.measure_start {
            cpu_at_start = Some(sample_cpu(cfg));
        }
        if cpu_at_end.is_none() && now >= clock.end {
            cpu_at_end = Some(sample_cpu(cfg));
        }
        if now >= next_line && now <= clock.end + PROGRESS_EVERY {
            if cfg.progress {
                let elapsed = now.saturating_duration_since(start);
                // The phase of the interval that just ended.
                let in_warmup = now < clock.measure_start + PROGRESS_EVERY / 2;
                let line = collector.progress_line(label, elapsed, in_warmup, now);
                eprintln!("{line}");
            }
            next_line += PROGRESS_EVERY;
        }
        let mut wake = next_line;
        for edge in [clock.measure_start, clock.end] {
            if edge > now {
                wake = wake.min(edge);
            }
        }
        match rx.recv_timeout(wake.saturating_duration_since(Instant::now())) {
            Ok(snapshot) => collector.absorb(snapshot),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    let cpu_at_end = cpu_at_end.unwrap_or_else(|| sample_cpu(cfg));
    for (i, handle) in handles.into_iter().enumerate() {
        // Pinning errors surface here, not earlier.
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(RunError(format!("generator thread {i} failed: {e}"))),
            Err(_) => return Err(RunError(format!("generator thread {i} panicked"))),
        }
    }

    let mut report = TargetReport::new(
        target.url.clone(),
        target.model.clone(),
        cfg.duration,
        match cfg.mode {
            Mode::Open { rate } => Some(rate),
            Mode::Closed => None,
        },
        collector.measured,
    );
    if let Some(cpu_at_start) = cpu_at_start {
        let requests = report.stats.responses;
        for (watch, (before, after)) in cfg
            .cpu_watch
            .iter()
            .zip(cpu_at_start.watched.iter().zip(&cpu_at_end.watched))
        {
            if let (Some(before), Some(after)) = (before, after) {
                let used = after.saturating_sub(*before);
                report.cpu.push(CpuUse {
                    label: watch.label.clone(),
                    cpu: used,
                    us_per_request: (requests > 0)
                        .then(|| used.as_secs_f64() * 1e6 / requests as f64),
                });
            }
        }
        if let (Some(before), Some(after)) = (cpu_at_start.own, cpu_at_end.own) {
            let capacity = cfg.duration.as_secs_f64() * cfg.cpus.len() as f64;
            report.loadgen_cpu_percent =
                Some(after.saturating_sub(before).as_secs_f64() * 100.0 / capacity.max(1e-9));
        }
    }
    Ok(report)
}

/// Every requested CPU must be in our affinity mask (pinning outside it
/// fails later with a vaguer error).
fn check_cpus(cpus: &[usize]) -> Result<(), RunError> {
    if let Some(allowed) = allowed_cpus()
        && let Some(bad) = cpus.iter().find(|c| !allowed.contains(c))
    {
        return Err(RunError(format!(
            "CPU {bad} is not available to this process (allowed: {allowed:?})"
        )));
    }
    Ok(())
}

struct CpuSample {
    watched: Vec<Option<Duration>>,
    own: Option<Duration>,
}

fn sample_cpu(cfg: &LoadConfig) -> CpuSample {
    CpuSample {
        watched: cfg
            .cpu_watch
            .iter()
            .map(|w| processes_cpu(&w.pids))
            .collect(),
        own: process_cpu("self"),
    }
}
