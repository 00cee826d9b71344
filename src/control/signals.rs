//! Signals: SIGTERM and SIGINT drain every shard; a second one exits at once.
//! SIGHUP is acknowledged in the log (config reload is not implemented yet; a
//! restart applies a changed file).

use super::{ShardCmd, ShardSenders};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

pub fn spawn(shards: ShardSenders) -> std::io::Result<()> {
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    std::thread::Builder::new().name("aigw-signals".into()).spawn(move || {
        let mut draining = false;
        for sig in signals.forever() {
            if sig == SIGHUP {
                log::warn!("SIGHUP received: config reload is not supported yet; restart aigw to apply changes");
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
