//! Typed run configuration for aigw-load, and the parsers that build it.
//!
//! Owns: every knob of a run, already validated (parse, don't validate): a
//! `LoadConfig` that exists is runnable. Does not own the command line (the
//! binary maps flags onto these types with the `parse_*` helpers here) nor any
//! I/O beyond reading body files, resolving target addresses once and reading
//! which CPUs the process may run on.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::num::NonZeroUsize;
use std::path::Path;
use std::time::Duration;

/// Connections per run when none are given, closed loop: enough to keep one
/// pinned nginx worker saturated on loopback (see perf/README.md).
pub const DEFAULT_CLOSED_CONNECTIONS: usize = 64;
/// Connections per run when none are given, open loop: enough for a few
/// thousand req/s at sub-millisecond service time without queueing per connection.
pub const DEFAULT_OPEN_CONNECTIONS: usize = 32;
/// Requests slower than this (per read or write) count as `timeout` errors.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Share of failed requests above which the run exits non-zero.
pub const DEFAULT_MAX_ERROR_RATE: f64 = 0.01;
/// Distinct prompts in the reused pool that `--hit-ratio` draws from.
pub const DEFAULT_POOL_SIZE: usize = 64;
/// Model string sent in template bodies; the mock and nginx accept any model.
pub const DEFAULT_MODEL: &str = "mock/gpt-4o-mini";
/// Largest body file we load into memory (bodies are kept whole per request).
pub const MAX_BODY_FILE: u64 = 64 * 1024 * 1024;

/// How requests are paced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// Each connection sends its next request as soon as the previous completes.
    Closed,
    /// A fixed arrival rate in requests per second over all connections;
    /// latency is measured from each request's intended send time.
    Open { rate: f64 },
}

/// Where request bodies come from.
#[derive(Clone, Debug)]
pub enum BodySource {
    /// A chat-completion template; `{{prompt}}`, `{{model}}` and `{{stream}}`
    /// are substituted (the built-in one when `None`).
    Template(Option<String>),
    /// The same bytes for every request.
    Fixed(Vec<u8>),
    /// One body per line, sent round-robin.
    Lines(Vec<Vec<u8>>),
}

/// One endpoint to load, in the order given on the command line.
#[derive(Clone, Debug)]
pub struct Target {
    /// As given, for the report.
    pub url: String,
    pub addr: SocketAddr,
    /// `host[:port]` for the Host header.
    pub authority: String,
    /// Path and query, starting with `/`.
    pub path: String,
    /// Model string for template bodies.
    pub model: String,
}

/// A process whose CPU time is sampled over the measured window; several pids
/// under one label are summed (nginx master + workers).
#[derive(Clone, Debug, PartialEq)]
pub struct CpuWatch {
    pub label: String,
    pub pids: Vec<u32>,
}

/// Everything one run needs. Several targets run one after the other, each
/// with its own warm-up and measured window.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub targets: Vec<Target>,
    pub mode: Mode,
    pub connections: NonZeroUsize,
    pub duration: Duration,
    pub warmup: Duration,
    /// One executor per CPU, pinned.
    pub cpus: Vec<usize>,
    pub method: String,
    /// Extra `Name: value` header lines, already validated.
    pub headers: Vec<(String, String)>,
    pub body: BodySource,
    /// Ask for and measure server-sent events.
    pub stream: bool,
    /// Probability in [0, 1] that a template body reuses a pooled prompt.
    pub hit_ratio: f64,
    pub pool_size: NonZeroUsize,
    /// Socket tries before waiting on it (`--spin`; 0: wait at once).
    pub spin: usize,
    pub timeout: Duration,
    pub max_error_rate: f64,
    pub cpu_watch: Vec<CpuWatch>,
    /// Print a progress line to stderr every second.
    pub progress: bool,
}

impl LoadConfig {
    /// A closed-loop run against `targets` with every other knob at its
    /// default; one executor on the first CPU this process may use.
    pub fn new(targets: Vec<Target>) -> LoadConfig {
        let first_cpu = allowed_cpus()
            .and_then(|cpus| cpus.first().copied())
            .unwrap_or(0);
        LoadConfig {
            targets,
            mode: Mode::Closed,
            connections: NonZeroUsize::new(DEFAULT_CLOSED_CONNECTIONS).expect("non-zero"),
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            cpus: vec![first_cpu],
            method: "POST".to_string(),
            headers: Vec::new(),
            body: BodySource::Template(None),
            stream: false,
            hit_ratio: 0.0,
            pool_size: NonZeroUsize::new(DEFAULT_POOL_SIZE).expect("non-zero"),
            spin: 0,
            timeout: DEFAULT_TIMEOUT,
            max_error_rate: DEFAULT_MAX_ERROR_RATE,
            cpu_watch: Vec::new(),
            progress: true,
        }
    }

    /// Requests per second each connection is asked to send in open loop.
    pub fn per_connection_interval(&self) -> Option<Duration> {
        match self.mode {
            Mode::Closed => None,
            Mode::Open { rate } => Some(Duration::from_secs_f64(
                self.connections.get() as f64 / rate,
            )),
        }
    }
}

/// A flag value that could not be understood; says which flag and why.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// `10s`, `500ms`, `2m`, `1.5s`, `250us`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, ConfigError> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = match num.parse() {
        Ok(v) if v >= 0.0 && f64::is_finite(v) => v,
        _ => return err(format!("bad duration {s:?}: expected e.g. 10s, 500ms, 2m")),
    };
    let secs = match unit {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => return err(format!("bad duration unit in {s:?}: use us, ms, s, m or h")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// The CPUs this process may run on (`Cpus_allowed_list` in /proc/self/status).
pub fn allowed_cpus() -> Option<Vec<usize>> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .and_then(|list| parse_cpu_list(list.trim()).ok())
}

/// `0`, `0,2`, `0-3`, `0-1,4`: CPU numbers, deduplicated, in the given order.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, ConfigError> {
    let mut cpus = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let (Ok(lo), Ok(hi)) = (lo.parse::<usize>(), hi.parse::<usize>()) else {
            return err(format!("bad CPU list {s:?}: expected e.g. 0 or 0,1 or 0-3"));
        };
        if lo > hi {
            return err(format!("bad CPU range {part:?} in {s:?}"));
        }
        for cpu in lo..=hi {
            if !cpus.contains(&cpu) {
                cpus.push(cpu);
            }
        }
    }
    if cpus.is_empty() {
        return err("empty CPU list");
    }
    Ok(cpus)
}

/// `Name: value` as for curl's `-H`. Framing headers are ours to write.
pub fn parse_header(s: &str) -> Result<(String, String), ConfigError> {
    let Some((name, value)) = s.split_once(':') else {
        return err(format!("bad header {s:?}: expected 'Name: value'"));
    };
    let name = name.trim();
    let value = value.trim();
    let valid_name = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !valid_name || value.bytes().any(|b| b == b'\r' || b == b'\n') {
        return err(format!("bad header {s:?}"));
    }
    let lower = name.to_ascii_lowercase();
    if ["content-length", "transfer-encoding", "host"].contains(&lower.as_str()) {
        return err(format!("header {name} is set by aigw-load itself"));
    }
    Ok((name.to_string(), value.to_string()))
}

/// `LABEL=PID[,PID...]` for `--cpu-pid`.
pub fn parse_cpu_watch(s: &str) -> Result<CpuWatch, ConfigError> {
    let (label, pids) = s.split_once('=').unwrap_or(("server", s));
    let pids: Result<Vec<u32>, _> = pids.split(',').map(|p| p.trim().parse::<u32>()).collect();
    match pids {
        Ok(pids) if !pids.is_empty() && !label.is_empty() => Ok(CpuWatch {
            label: label.to_string(),
            pids,
        }),
        _ => err(format!("bad --cpu-pid {s:?}: expected LABEL=PID[,PID...]")),
    }
}

/// `http://host[:port][/path]`. Only loopback addresses unless `allow_remote`:
/// a load generator pointed at the wrong host is an outage, so that takes a flag.
pub fn parse_target(url: &str, model: &str, allow_remote: bool) -> Result<Target, ConfigError> {
    let Some(rest) = url.strip_prefix("http://") else {
        return err(format!(
            "unsupported URL {url:?}: only http:// is supported"
        ));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return err(format!("URL {url:?} has no host"));
    }
    let has_port = if authority.starts_with('[') {
        authority.contains("]:")
    } else {
        authority.contains(':')
    };
    let with_port = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let addr = match with_port.to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(addr)) => addr,
        _ => return err(format!("cannot resolve {authority:?} in {url:?}")),
    };
    if !allow_remote && !addr.ip().is_loopback() {
        return err(format!(
            "{url:?} resolves to {}, which is not loopback; pass --allow-remote to load it",
            addr.ip()
        ));
    }
    Ok(Target {
        url: url.to_string(),
        addr,
        authority: authority.to_string(),
        path: path.to_string(),
        model: model.to_string(),
    })
}

/// Reads a body file whole.
pub fn read_body_file(path: &Path) -> Result<Vec<u8>, ConfigError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
    if meta.len() > MAX_BODY_FILE {
        return err(format!(
            "{} is larger than {MAX_BODY_FILE} bytes",
            path.display()
        ));
    }
    std::fs::read(path).map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))
}

/// One body per non-empty line.
pub fn read_jsonl_file(path: &Path) -> Result<Vec<Vec<u8>>, ConfigError> {
    let all = read_body_file(path)?;
    let lines: Vec<Vec<u8>> = all
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .map(<[u8]>::to_vec)
        .collect();
    if lines.is_empty() {
        return err(format!("{} has no bodies", path.display()));
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_common_units() {
        let cases = [
            ("10s", 10_000),
            ("500ms", 500),
            ("2m", 120_000),
            ("1.5", 1_500),
            ("0s", 0),
        ];
        for (text, ms) in cases {
            assert_eq!(
                parse_duration(text).unwrap(),
                Duration::from_millis(ms),
                "{text}"
            );
        }
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn cpu_lists_expand_ranges_and_keep_order() {
        assert_eq!(parse_cpu_list("1,0").unwrap(), vec![1, 0]);
        assert_eq!(parse_cpu_list("0-2,1").unwrap(), vec![0, 1, 2]);
        assert!(parse_cpu_list("2-1").is_err());
        assert!(parse_cpu_list("").is_err());
    }

    #[test]
    fn headers_are_name_colon_value() {
        assert_eq!(
            parse_header("Authorization: Bearer sk-1").unwrap(),
            ("Authorization".to_string(), "Bearer sk-1".to_string())
        );
        assert!(parse_header("no colon").is_err());
        assert!(parse_header("Content-Length: 3").is_err());
        assert!(parse_header("Bad Name: x").is_err());
    }

    #[test]
    fn targets_default_port_and_path() {
        let t = parse_target("http://127.0.0.1", "m", false).unwrap();
        assert_eq!(t.addr.port(), 80);
        assert_eq!(t.path, "/");
        let t = parse_target("http://localhost:9/v1/chat/completions", "m", false).unwrap();
        assert_eq!(t.addr.port(), 9);
        assert_eq!(t.path, "/v1/chat/completions");
        assert_eq!(t.authority, "localhost:9");
        assert!(parse_target("https://127.0.0.1/", "m", false).is_err());
    }

    #[test]
    fn non_loopback_targets_need_a_flag() {
        assert!(parse_target("http://192.0.2.1:80/", "m", false).is_err());
        assert!(parse_target("http://192.0.2.1:80/", "m", true).is_ok());
    }

    #[test]
    fn cpu_watch_is_label_and_pids() {
        assert_eq!(
            parse_cpu_watch("nginx=10,11").unwrap(),
            CpuWatch {
                label: "nginx".into(),
                pids: vec![10, 11]
            }
        );
        assert!(parse_cpu_watch("x=").is_err());
    }
}
