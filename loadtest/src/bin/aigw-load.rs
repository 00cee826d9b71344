//! aigw-load: open/closed-loop HTTP/1.1 load generator for LLM gateways.
//!
//! Maps flags onto `aigw_loadtest::load::LoadConfig`, runs it, prints the
//! report table to stdout (progress goes to stderr), writes `--json FILE`.
//! Exit codes: 0 fine, 1 error rate above `--max-error-rate`, 2 bad usage or
//! a run that could not start.

use aigw_loadtest::load::config::{
    self, BodySource, ConfigError, DEFAULT_CLOSED_CONNECTIONS, DEFAULT_MAX_ERROR_RATE,
    DEFAULT_MODEL, DEFAULT_OPEN_CONNECTIONS, DEFAULT_POOL_SIZE, LoadConfig, Mode,
};
use clap::Parser;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;

/// Load an OpenAI-style HTTP endpoint: open loop at a fixed rate (latency from
/// the intended send time, coordinated omission corrected) or closed loop at
/// max throughput. Several --url targets run one after the other.
#[derive(Parser, Debug)]
#[command(name = "aigw-load", version)]
struct Args {
    /// Target URL (http:// only; repeat for several targets, run in turn).
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    /// Model for template bodies: once for all targets, or once per --url in order.
    #[arg(long = "model")]
    models: Vec<String>,
    /// Send this file as every request body.
    #[arg(long, conflicts_with_all = ["body_jsonl", "template"])]
    body: Option<PathBuf>,
    /// One body per line, sent round-robin.
    #[arg(long, conflicts_with = "template")]
    body_jsonl: Option<PathBuf>,
    /// A body template with {{prompt}}, {{model}} and {{stream}} placeholders
    /// (default: a built-in chat completion).
    #[arg(long)]
    template: Option<PathBuf>,
    /// Extra request header, 'Name: value' (repeatable).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// Measured time per target (e.g. 10s, 500ms, 1m).
    #[arg(long, default_value = "10s", value_parser = duration)]
    duration: std::time::Duration,
    /// Unmeasured time before it.
    #[arg(long, default_value = "2s", value_parser = duration)]
    warmup: std::time::Duration,
    /// Concurrent keep-alive connections [default: 64 closed loop, 32 open loop].
    #[arg(long, short = 'c')]
    connections: Option<NonZeroUsize>,
    /// Open loop at this many requests per second over all connections;
    /// without it, closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// CPUs to run executors on, one pinned executor each (e.g. 0 or 0,1 or 2-3).
    #[arg(long, default_value = "0")]
    cpus: String,
    /// Ask for streamed responses and record time to first event and event gaps.
    #[arg(long)]
    stream: bool,
    /// Share of template requests that reuse a prompt from a small pool (0..1).
    #[arg(long, default_value_t = 0.0)]
    hit_ratio: f64,
    /// Size of that prompt pool.
    #[arg(long, default_value_t = NonZeroUsize::new(DEFAULT_POOL_SIZE).unwrap())]
    pool_size: NonZeroUsize,
    /// Ask each socket this many times (letting the other connections run in
    /// between) before waiting on it (epoll); 0 waits at once. Use 16 when
    /// the generator has its CPU to itself and the server answers in
    /// microseconds (a cache, nginx static): it then keeps up with wrk.
    #[arg(long, default_value_t = 0)]
    spin: usize,
    /// HTTP method.
    #[arg(long, default_value = "POST")]
    method: String,
    /// Per read/write timeout; slower requests count as errors.
    #[arg(long, default_value = "5s", value_parser = duration)]
    timeout: std::time::Duration,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Exit 1 when a target's error rate exceeds this share.
    #[arg(long, default_value_t = DEFAULT_MAX_ERROR_RATE)]
    max_error_rate: f64,
    /// Report CPU-µs per request of these processes: LABEL=PID[,PID...] (repeatable).
    #[arg(long = "cpu-pid")]
    cpu_pids: Vec<String>,
    /// No progress lines on stderr.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// Allow targets that are not loopback addresses.
    #[arg(long)]
    allow_remote: bool,
}

fn duration(s: &str) -> Result<std::time::Duration, ConfigError> {
    config::parse_duration(s)
}

fn build_config(args: Args) -> Result<(LoadConfig, Option<PathBuf>), ConfigError> {
    let cpus = config::parse_cpu_list(&args.cpus)?;
    let models = match args.models.len() {
        0 => vec![DEFAULT_MODEL.to_string(); args.urls.len()],
        1 => vec![args.models[0].clone(); args.urls.len()],
        n if n == args.urls.len() => args.models.clone(),
        n => {
            return Err(ConfigError(format!(
                "{n} --model values for {} --url targets: give one, or one per target",
                args.urls.len()
            )));
        }
    };
    let targets = args
        .urls
        .iter()
        .zip(&models)
        .map(|(url, model)| config::parse_target(url, model, args.allow_remote))
        .collect::<Result<Vec<_>, _>>()?;
    let mut cfg = LoadConfig::new(targets);
    cfg.mode = match args.rate {
        None => Mode::Closed,
        Some(rate) if rate > 0.0 && rate.is_finite() => Mode::Open { rate },
        Some(rate) => return Err(ConfigError(format!("--rate {rate}: must be positive"))),
    };
    let default_connections = match cfg.mode {
        Mode::Closed => DEFAULT_CLOSED_CONNECTIONS,
        Mode::Open { .. } => DEFAULT_OPEN_CONNECTIONS,
    };
    cfg.connections = args
        .connections
        .unwrap_or(NonZeroUsize::new(default_connections).expect("non-zero"));
    if cfg.connections.get() < cpus.len() {
        return Err(ConfigError(format!(
            "{} connections cannot cover {} CPUs",
            cfg.connections,
            cpus.len()
        )));
    }
    if args.duration.is_zero() {
        return Err(ConfigError("--duration must be more than 0".into()));
    }
    if args.timeout.is_zero() {
        return Err(ConfigError("--timeout must be more than 0".into()));
    }
    if !(0.0..=1.0).contains(&args.hit_ratio) {
        return Err(ConfigError("--hit-ratio must be between 0 and 1".into()));
    }
    if !(0.0..=1.0).contains(&args.max_error_rate) {
        return Err(ConfigError(
            "--max-error-rate must be between 0 and 1".into(),
        ));
    }
    if args.method.is_empty() || !args.method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(ConfigError(format!("bad --method {:?}", args.method)));
    }
    cfg.duration = args.duration;
    cfg.warmup = args.warmup;
    cfg.cpus = cpus;
    cfg.method = args.method;
    cfg.headers = args
        .headers
        .iter()
        .map(|h| config::parse_header(h))
        .collect::<Result<_, _>>()?;
    cfg.body = if let Some(path) = &args.body {
        BodySource::Fixed(config::read_body_file(path)?)
    } else if let Some(path) = &args.body_jsonl {
        BodySource::Lines(config::read_jsonl_file(path)?)
    } else if let Some(path) = &args.template {
        let bytes = config::read_body_file(path)?;
        let text = String::from_utf8(bytes)
            .map_err(|_| ConfigError(format!("{} is not UTF-8", path.display())))?;
        BodySource::Template(Some(text.trim_end().to_string()))
    } else {
        BodySource::Template(None)
    };
    cfg.stream = args.stream;
    cfg.hit_ratio = args.hit_ratio;
    cfg.pool_size = args.pool_size;
    cfg.spin = args.spin.min(aigw_loadtest::load::sock::MAX_SPIN);
    cfg.timeout = args.timeout;
    cfg.max_error_rate = args.max_error_rate;
    cfg.cpu_watch = args
        .cpu_pids
        .iter()
        .map(|s| config::parse_cpu_watch(s))
        .collect::<Result<_, _>>()?;
    cfg.progress = !args.quiet;
    Ok((cfg, args.json))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (cfg, json_path) = match build_config(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("aigw-load: {e}");
            return ExitCode::from(2);
        }
    };
    let report = match aigw_loadtest::load::run(&cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("aigw-load: {e}");
            return ExitCode::from(2);
        }
    };
    print!("{}", report.to_table());
    if let Some(path) = json_path {
        let text = serde_json::to_string_pretty(&report.to_json()).expect("JSON values serialize");
        if let Err(e) = std::fs::write(&path, text + "\n") {
            eprintln!("aigw-load: cannot write {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    if report.exceeds_error_threshold() {
        eprintln!(
            "aigw-load: error rate above --max-error-rate {} for at least one target",
            cfg.max_error_rate
        );
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
