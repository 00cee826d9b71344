//! Control plane: std threads that may block but never sit on a request's path.
//!
//! - [`stats`]: per-shard recorders and the merging stats thread.
//! - [`admin`]: HTTP/1.1 over a Unix socket (`/stats`, `/metrics`, `/healthz`).
//! - [`signals`]: SIGTERM/SIGINT start a drain; SIGHUP reloads.
//! - [`reload`]: re-reads the config file and applies it to every shard.
//! - [`report`]: `aigw stats` as a table (client side).
//!
//! Shards hear from the control plane only through [`ShardCmd`] on a flume
//! channel, which wakes a glommio executor from a foreign thread.

pub mod admin;
pub mod keys;
pub mod logs;
pub mod metrics;
pub mod reload;
pub mod report;
pub mod signals;
pub mod stats;
pub mod usage;

/// Messages from control threads to one shard.
#[derive(Clone, Debug)]
pub enum ShardCmd {
    /// Send a stats snapshot now, numbered with this sequence.
    Flush(u64),
    /// Stop accepting, finish in-flight requests, close idle connections.
    Drain,
    /// Use this config from the next request on.
    Reload(std::sync::Arc<crate::config::Config>),
    /// Purge the shard's cache partition; the reply is how many entries went.
    Purge(crate::cache::PurgeWhat, std::sync::mpsc::Sender<u64>),
}

/// Senders to every shard, in shard order.
pub type ShardSenders = std::sync::Arc<Vec<flume::Sender<ShardCmd>>>;
