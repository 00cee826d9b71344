//! Signals: SIGTERM and SIGINT drain every shard; a second one exits at once.
//! SIGHUP reloads the config file (as `POST /config/reload` does), logging
//! what changed or every error of a file it refused.

use super::reload::Reloader;
use super::{ShardCmd, ShardSenders};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::sync::Arc;

pub fn spawn(shards: ShardSenders, reloader: Arc<Reloader>) -> std::io::Result<()> {
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
