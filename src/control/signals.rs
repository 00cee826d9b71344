//! Signals: SIGTERM and SIGINT drain every shard; a second one exits at once.
//! SIGHUP reloads the config file (as `POST /config/reload` does), logging
//! what changed or every error of a file it refused.

use super::logs::LogStats;
use super::reload::Reloader;
use super::stats::StatsHub;
use super::{ShardCmd, ShardSenders};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::sync::Arc;

/// The most a second signal waits for the rows of requests already
/// answered to be committed before it exits.
const LAST_FLUSH: std::time::Duration = std::time::Duration::from_millis(500);

pub fn spawn(
    shards: ShardSenders,
    reloader: Arc<Reloader>,
    hub: Arc<StatsHub>,
    logs: Arc<LogStats>,
) -> std::io::Result<()> {
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    std::thread::Builder::new().name("aigw-signals".into()).spawn(move || {
        let mut draining = false;
        for sig in signals.forever() {
            if sig == SIGHUP {
                match reloader.reload() {
                    Ok(r) => {
                        log::warn!("SIGHUP: config reloaded; changed: {:?}", r.changed);
                        if !r.restart_needed.is_empty() {
                            log::warn!("SIGHUP: these settings take a restart and keep their running values: {:?}", r.restart_needed);
                        }
                    }
                    Err(errors) => log::warn!(
                        "SIGHUP: the config file was not applied (nothing changed):\n{}",
                        errors.join("\n")
                    ),
                }
                continue;
            }
            if draining {
                log::warn!("second signal: exiting without waiting for in-flight requests");
                // What was answered already is committed first (its rows
                // and tallies are what usage, limits and budgets rebuild
                // from); a shard or log thread that does not answer in
                // time is not waited for.
                hub.flush_shards(&shards, LAST_FLUSH);
                logs.flush(LAST_FLUSH);
                std::process::exit(1);
            }
            draining = true;
            log::info!("signal {sig}: draining (stop accepting, finish in-flight requests)");
            for tx in shards.iter() {
                let _ = tx.send(ShardCmd::Drain);
            }
        }
    })?;
    Ok(())
}
