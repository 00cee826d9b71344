//! `[server]`, `[admin]`, `[limits]` and `[timeouts]`: how the gateway itself runs.
//!
//! Owns reading these sections into [`ServerConfig`], the admin socket path,
//! [`Limits`] and [`Timeouts`]. Does not enforce them: the runtime binds and
//! shards, the connection loop and upstream apply the limits and timeouts.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::read::Walker;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// `None` = one shard per CPU in the process's affinity mask.
    pub shards: Option<NonZeroUsize>,
    pub data_dir: PathBuf,
    pub drain_timeout: Duration,
    /// Busy-poll before sleeping; zero = sleep at once.
    pub spin_before_park: Duration,
}

#[derive(Clone, Debug)]
pub struct Limits {
    pub max_head_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: u64,
    pub max_response_head_bytes: usize,
}

#[derive(Clone, Debug)]
pub struct Timeouts {
    pub head: Duration,
    pub body: Duration,
    pub idle: Duration,
    pub client_write: Duration,
    pub upstream_connect: Duration,
    pub first_byte: Duration,
    pub stream_idle: Duration,
    pub upstream_idle: Duration,
}

/// `[server]`. A bad `listen` is recorded in `w` and the default stands in, so the
/// returned value is only used when `w` finishes clean.
pub(super) fn read_server(w: &mut Walker, root: &toml::Table) -> ServerConfig {
    let t = w.table(root, "server");
    let default_listen: SocketAddr = "127.0.0.1:8080".parse().expect("valid");
    let listen = match w.string(t, "server.listen") {
        Some(s) => s.parse::<SocketAddr>().unwrap_or_else(|_| {
            w.err(
                "server.listen",
                format!("`{s}` is not IP:PORT; write e.g. \"127.0.0.1:8080\" or \"0.0.0.0:8080\""),
            );
            default_listen
        }),
        None => default_listen,
    };
    let shards = w.uint(t, "server.shards", 0, 4096).unwrap_or(0);
    let data_dir =
        PathBuf::from(one_line_path(w, t, "server.data_dir").unwrap_or_else(|| "aigw-data".into()));
    let drain_timeout = w.duration(t, "server.drain_timeout", "10s");
    let spin_before_park = w.duration_or_zero(t, "server.spin_before_park");
    ServerConfig {
        listen,
        shards: NonZeroUsize::new(shards as usize),
        data_dir,
        drain_timeout,
        spin_before_park,
    }
}

/// `admin.listen`: a TCP address for `/metrics` and `/healthz`. A bare port
/// (`"9090"` or `":9090"`) means loopback.
pub(super) fn read_admin_listen(
    w: &mut Walker,
    root: &toml::Table,
) -> Option<std::net::SocketAddr> {
    let t = w.table(root, "admin");
    let v = w.string(t, "admin.listen")?;
    let port_only = v.strip_prefix(':').unwrap_or(&v);
    if let Ok(port) = port_only.parse::<u16>() {
        return Some(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    match v.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            w.err(
                "admin.listen",
                format!("`{v}` is not a port or IP:PORT; write e.g. \"9090\" (loopback) or \"0.0.0.0:9090\""),
            );
            None
        }
    }
}

/// `[admin]`: the socket path, by default inside `data_dir`.
pub(super) fn read_admin_socket(w: &mut Walker, root: &toml::Table, data_dir: &Path) -> PathBuf {
    let t = w.table(root, "admin");
    one_line_path(w, t, "admin.socket")
        .map(PathBuf::from)
        .unwrap_or_else(|| data_dir.join("admin.sock"))
}

/// A path setting: one line of text (a control character in it is likely a
/// mistake, and would split the lines that show it: `/config`, the
/// start-up lines).
fn one_line_path(w: &mut Walker, t: Option<&toml::Table>, path: &str) -> Option<String> {
    let v = w.string(t, path)?;
    if v.chars().any(char::is_control) {
        w.err(
            path,
            "contains a control character (a line break, a tab, ...); a path must be one line of text".into(),
        );
        return None;
    }
    Some(v)
}

/// `[limits]`.
pub(super) fn read_limits(w: &mut Walker, root: &toml::Table) -> Limits {
    let t = w.table(root, "limits");
    Limits {
        max_head_bytes: w.bytes(t, "limits.max_head_bytes", 16 << 10, 1 << 10, 1 << 20) as usize,
        max_headers: w.uint(t, "limits.max_headers", 4, 1024).unwrap_or(64) as usize,
        max_body_bytes: w.bytes(t, "limits.max_body_bytes", 32 << 20, 0, 1 << 34),
        max_response_head_bytes: w.bytes(
            t,
            "limits.max_response_head_bytes",
            64 << 10,
            1 << 10,
            1 << 22,
        ) as usize,
    }
}

/// `[timeouts]`.
pub(super) fn read_timeouts(w: &mut Walker, root: &toml::Table) -> Timeouts {
    let t = w.table(root, "timeouts");
    Timeouts {
        head: w.duration(t, "timeouts.head", "10s"),
        body: w.duration(t, "timeouts.body", "30s"),
        idle: w.duration(t, "timeouts.idle", "60s"),
        client_write: w.duration(t, "timeouts.client_write", "60s"),
        upstream_connect: w.duration(t, "timeouts.upstream_connect", "5s"),
        first_byte: w.duration(t, "timeouts.first_byte", "300s"),
        stream_idle: w.duration(t, "timeouts.stream_idle", "120s"),
        upstream_idle: w.duration(t, "timeouts.upstream_idle", "30s"),
    }
}
