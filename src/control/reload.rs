//! Live reload: `POST /config/reload` on the admin socket and SIGHUP re-read
//! the config file, validate it completely, and apply it to every shard
//! without dropping a connection. Control plane.
//!
//! An invalid file changes nothing: the answer lists every error with its key
//! path. Settings that cannot change while running (addresses, shards, the
//! data directory, whether the log is on) keep their running values and are
//! named in the answer. Shards apply a reload between requests; requests in
//! flight finish with the config they started with.

use super::ShardCmd;
use super::ShardSenders;
use super::logs::LogStats;
use super::stats::StatsHub;
use crate::config::Config;
use crate::server::shard::Shared;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a reload waits for every shard to have applied it.
pub const APPLY_WAIT: Duration = Duration::from_secs(2);

/// Settings a running gateway cannot change: a reload keeps their running
/// values and says so.
pub const RESTART_ONLY: &[&str] = &[
    "server.listen",
    "server.shards",
    "server.data_dir",
    "server.drain_timeout",
    "server.spin_before_park",
    "admin.socket",
    "admin.listen",
    "logs.enabled",
    "cache.enabled",
    "cache.size",
    "cache.max_entry",
];

/// Where the running config came from, and the command-line overrides that
/// apply on top of the file (so a reload does not undo them).
#[derive(Clone, Debug, Default)]
pub struct Source {
    pub path: Option<PathBuf>,
    pub listen: Option<std::net::SocketAddr>,
    pub shards: Option<usize>,
    pub admin_socket: Option<PathBuf>,
}

impl Source {
    /// Reads the file (or the built-in defaults) with the overrides applied.
    pub fn load(&self) -> Result<Config, Vec<String>> {
        let mut c = match &self.path {
            Some(p) => Config::load(p),
            None => Config::from_toml(""),
        }
        .map_err(|e| e.0.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
        if let Some(l) = self.listen {
            c.server.listen = l;
        }
        if let Some(n) = self.shards {
            c.server.shards = std::num::NonZeroUsize::new(n);
        }
        if let Some(p) = &self.admin_socket {
            c.admin_socket = p.clone();
        }
        Ok(c)
    }
}

/// What a reload did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Keys whose new values are in force.
    pub changed: Vec<String>,
    /// Keys that changed in the file but need a restart.
    pub restart_needed: Vec<String>,
    /// What the new config does that is likely not meant (a declared
    /// provider's missing key): in force, and said to whoever reloaded.
    pub notes: Vec<String>,
}

impl Report {
    pub fn to_json(&self) -> String {
        let list = |v: &[String]| {
            let items: Vec<String> = v
                .iter()
                .map(|k| {
                    let mut s = String::new();
                    crate::error::push_json_string(&mut s, k);
                    s
                })
                .collect();
            format!("[{}]", items.join(","))
        };
        format!(
            "{{\"applied\":true,\"changed\":{},\"restart_needed\":{},\"notes\":{}}}\n",
            list(&self.changed),
            list(&self.restart_needed),
            list(&self.notes)
        )
    }
}

pub struct Reloader {
    source: Source,
    /// Whether a process started on a config would start (what `serve` and
    /// `check-config` refuse at start, such as a cache too small for its
    /// shards): a reload refuses a file the next start would refuse, though
    /// the settings at fault wait for that restart.
    startable: fn(&Config) -> Result<(), String>,
    running: Mutex<Arc<Config>>,
    shards: ShardSenders,
    hub: Arc<StatsHub>,
    logs: Arc<LogStats>,
    shared: Shared,
}

impl Reloader {
    pub fn new(
        source: Source,
        startable: fn(&Config) -> Result<(), String>,
        running: Arc<Config>,
        shards: ShardSenders,
        hub: Arc<StatsHub>,
        logs: Arc<LogStats>,
        shared: Shared,
    ) -> Arc<Reloader> {
        Arc::new(Reloader {
            source,
            startable,
            running: Mutex::new(running),
            shards,
            hub,
            logs,
            shared,
        })
    }

    /// The running config.
    pub fn running(&self) -> Arc<Config> {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads, validates and applies the config. `Err` lists every problem
    /// (and nothing changed).
    pub fn reload(&self) -> Result<Report, Vec<String>> {
        let mut new = self.source.load()?;
        (self.startable)(&new).map_err(|e| vec![e])?;
        let clashes = self.shared.keys.clashes(&new.keys);
        if !clashes.is_empty() {
            return Err(clashes);
        }
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let before = running.entries(true);
        let after = new.entries(true);
        let mut report = Report::default();
        for note in new.key_notes() {
            log::warn!("reload: {note}");
            report.notes.push(note);
        }
        for (k, v) in &after {
            if before.get(k) != Some(v) {
                let restart = RESTART_ONLY.contains(&k.as_str());
                if restart {
                    &mut report.restart_needed
                } else {
                    &mut report.changed
                }
                .push(k.clone());
            }
        }
        for k in before.keys().filter(|k| !after.contains_key(*k)) {
            report.changed.push(k.clone());
        }
        // What cannot change keeps its running value.
        new.server = running.server.clone();
        new.admin_socket = running.admin_socket.clone();
        new.admin_listen = running.admin_listen;
        new.logs.enabled = running.logs.enabled;
        new.cache.enabled = running.cache.enabled;
        new.cache.size = running.cache.size;
        new.cache.max_entry = running.cache.max_entry;
        self.carry_on(&running, &new);
        let new = Arc::new(new);
        for tx in self.shards.iter() {
            let _ = tx.send(ShardCmd::Reload(new.clone()));
        }
        self.logs.set_config(new.logs.clone());
        self.shared.keys.set_config(&new.keys);
        *running = new;
        drop(running);
        // Shards handle commands in order: once they answer a flush, the
        // reload is in force for their next request.
        if !self.hub.flush_shards(&self.shards, APPLY_WAIT) {
            log::warn!("reload: not every shard confirmed within {APPLY_WAIT:?}");
        }
        Ok(report)
    }

    /// Rules and budgets the reload brings in (new, or changed in what they
    /// count, per what or over which window) start from the request log, as
    /// after a restart: a reload and a restart never disagree on what was
    /// spent. A new amount or limit keeps the counts. Before any shard
    /// applies them, so nothing is counted twice. Requests in flight across
    /// the switch count into them as they end (`ShardCtx::carry_over`); what
    /// ends between this read and the switch counts under the old rules only.
    fn carry_on(&self, running: &Config, new: &Config) {
        // Stored amounts of budgets the reload drops or changes go.
        self.shared.budgets.keep_amounts_of(&new.budgets);
        let rates = crate::limit::fresh_rules(&running.rate_limits, &new.rate_limits);
        let budgets = crate::budget::fresh_rules(&running.budgets, &new.budgets);
        if rates.is_empty() && budgets.is_empty() {
            return;
        }
        // Spend of an earlier time these were in force is not theirs now.
        self.shared.limiter.forget(&rates);
        self.shared.budgets.forget(&budgets);
        // Every settled request into the store first.
        if running.logs.enabled
            && (!self.hub.flush_shards(&self.shards, APPLY_WAIT) || !self.logs.flush(APPLY_WAIT))
        {
            log::warn!(
                "reload: the request log did not confirm a flush; the newest requests may be missing from the rebuilt rules"
            );
        }
        // What settles while the log is read (seconds, for a large one) is
        // read again after it, so the rules miss only what settles in the
        // second read and the switch.
        let again = || {
            if running.logs.enabled {
                let _ =
                    self.hub.flush_shards(&self.shards, APPLY_WAIT) && self.logs.flush(APPLY_WAIT);
            }
        };
        match super::usage::rebuild_rules(
            &running.server.data_dir,
            &rates,
            &budgets,
            &self.shared.limiter,
            &self.shared.budgets,
            false,
            Some(&again),
        ) {
            Ok(n) => log::info!(
                "reload: {} new rate limits and {} new budgets rebuilt from {n} logged requests",
                rates.len(),
                budgets.len()
            ),
            Err(e) => log::warn!("reload: new rate limits and budgets start empty: {e}"),
        }
    }

    /// `GET /config`: the running values, secrets as `****`.
    pub fn render(&self) -> String {
        let entries: BTreeMap<String, String> = self.running().entries(false);
        let mut out = String::new();
        for (k, v) in entries {
            out.push_str(&format!("{k} = {v}\n"));
        }
        out
    }
}
