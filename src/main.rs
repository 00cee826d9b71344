//! `aigw`: the gateway binary. `serve`, `check-config`, `print-config`, `stats`, `logs`.

use aigw::config::{Config, show};
use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc, not glibc's malloc: finished requests' records are built on a
/// shard and freed on the log thread, and glibc returns each such block to
/// its arena under that arena's lock, which the shard takes on its next
/// allocation. Measured: +2.4% closed-loop throughput with the request log
/// on, +2.8% with it off (`perf/results/2026-11-30T144003Z.md`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "aigw",
    version,
    about = "A thread-per-core AI gateway: one OpenAI-compatible API over many LLM providers."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (built-in defaults unless --config is given).
    Serve {
        /// TOML config file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Override server.listen.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Override server.shards.
        #[arg(long)]
        shards: Option<usize>,
        /// Override admin.socket.
        #[arg(long)]
        admin_socket: Option<PathBuf>,
    },
    /// Validate a config file and exit (0 when valid).
    CheckConfig { file: PathBuf },
    /// Print every config key with its default and meaning.
    PrintConfig,
    /// Show live stats from a running gateway's admin socket.
    Stats {
        /// Admin socket path (default: from --config, else the built-in default).
        #[arg(long)]
        socket: Option<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print the raw JSON from /stats.
        #[arg(long)]
        json: bool,
        /// Print Prometheus text from /metrics.
        #[arg(long, conflicts_with = "json")]
        prometheus: bool,
        /// Redraw every second until interrupted.
        #[arg(long)]
        watch: bool,
    },
    /// Search the request log (newest first); `aigw logs show ID` prints one request.
    Logs(Box<LogsArgs>),
    /// The response cache of a running gateway.
    Cache {
        #[command(subcommand)]
        cmd: CacheCmd,
    },
    /// Spend, tokens and requests by key, provider, model or a metadata
    /// field, from the request log, with every budget and what is left.
    Usage {
        /// Find the store and the budgets from this config file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// key, provider, model or metadata.<field>.
        #[arg(long, default_value = "key")]
        by: String,
        /// From: a duration ago (24h, 7d), 2026-11-30T06:00:00Z (or +01:00 for Z), 2026-11-30 or Unix seconds.
        #[arg(long, default_value = "24h")]
        since: String,
        #[arg(long)]
        json: bool,
    },
    /// The price table: shipped prices (with their date) and the config's.
    Prices {
        /// Add this config file's [prices] (else the shipped table alone).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Only "provider/model" names matching this pattern (`*` a wildcard).
        #[arg(long)]
        model: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Gateway keys: make one, list them, revoke one.
    Key {
        #[command(subcommand)]
        cmd: KeyCmd,
    },
}

#[derive(clap::Subcommand)]
enum KeyCmd {
    /// Make a fresh secret (printed once) and its `[keys.ID]` config lines;
    /// with --create, also add it to the running gateway (stored hashed).
    New {
        id: String,
        /// A model pattern the key may use, "provider/model" with `*` (repeatable; none: all).
        #[arg(long = "model")]
        models: Vec<String>,
        /// Attribution KEY=VALUE every request with the key carries (repeatable).
        #[arg(long = "meta")]
        meta: Vec<String>,
        /// Add the key to the running gateway over its admin socket.
        #[arg(long)]
        create: bool,
        #[arg(long)]
        socket: Option<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// The keys of the running gateway (ids, origin, models; never secrets).
    List {
        #[arg(long)]
        json: bool,
        #[arg(long)]
        socket: Option<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Revoke a key created over the admin socket: refused from the next request on.
    Revoke {
        id: String,
        #[arg(long)]
        socket: Option<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(clap::Subcommand)]
enum CacheCmd {
    /// Drop cached answers: all of them, one key, or one provider's.
    Purge {
        /// One entry: its cache key (32 hex digits, `cache_key` in `aigw logs show ID`).
        #[arg(long, conflicts_with = "provider")]
        key: Option<String>,
        /// Every entry of this provider.
        #[arg(long)]
        provider: Option<String>,
        /// Admin socket path (default: from --config, else the built-in default).
        #[arg(long)]
        socket: Option<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct LogsArgs {
    #[command(subcommand)]
    show: Option<LogsCmd>,
    /// Find the store from this config file's server.data_dir.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Find the store in this data directory.
    #[arg(long, global = true, conflicts_with = "config")]
    data_dir: Option<PathBuf>,
    /// A status code (429) or class (4xx).
    #[arg(long)]
    status: Option<String>,
    /// Whose fault an error was: client, gateway or provider.
    #[arg(long)]
    source: Option<String>,
    /// Cache status (HIT, COALESCED, MISS, BYPASS, EXPIRED).
    #[arg(long)]
    cache: Option<String>,
    #[arg(long)]
    provider: Option<String>,
    /// The model as the provider was asked (`gpt-4o-mini`), or with its
    /// provider as `aigw usage --by model` prints it (`openai/gpt-4o-mini`).
    #[arg(long)]
    model: Option<String>,
    /// The gateway key's id.
    #[arg(long)]
    key: Option<String>,
    /// The route (`[routes.<name>]`) the request named.
    #[arg(long)]
    route: Option<String>,
    /// Metadata KEY=VALUE (repeatable; all must match).
    #[arg(long)]
    meta: Vec<String>,
    /// A request id (the aigw-request-id header).
    #[arg(long)]
    id: Option<String>,
    #[arg(long)]
    event_id: Option<String>,
    /// Rows whose user agent contains this.
    #[arg(long)]
    user_agent: Option<String>,
    #[arg(long)]
    min_cost: Option<String>,
    #[arg(long)]
    max_cost: Option<String>,
    /// Input plus output tokens, at least.
    #[arg(long)]
    min_tokens: Option<String>,
    #[arg(long)]
    max_tokens: Option<String>,
    /// Total time, at least (e.g. 500ms, 2s).
    #[arg(long)]
    min_duration: Option<String>,
    #[arg(long)]
    max_duration: Option<String>,
    /// Arrived at or after: a duration ago (15m, 1h, 7d), 2026-11-30T06:00:00Z (or +01:00 for Z), 2026-11-30 or Unix seconds.
    #[arg(long)]
    since: Option<String>,
    /// Arrived before (same forms as --since).
    #[arg(long)]
    until: Option<String>,
    /// Most rows printed (default 50).
    #[arg(long)]
    limit: Option<String>,
    /// One JSON object per line.
    #[arg(long, global = true)]
    json: bool,
    /// Keep printing new rows as they are stored.
    #[arg(long)]
    follow: bool,
}

#[derive(Subcommand)]
enum LogsCmd {
    /// One request with its payloads.
    Show { id: String },
}

fn main() -> ExitCode {
    if let Some(missing) = cpu_lacks_build_features() {
        eprintln!(
            "aigw: this binary was built for CPUs with {missing} (scripts/build-pgo targets the building host's CPU); this CPU has none: build it here with `cargo build --release`, or `AIGW_PGO_CPU=x86-64 scripts/build-pgo`"
        );
        return ExitCode::from(2);
    }
    init_logging();
    if let Err(option) = aigw::sys::keep_c_heap() {
        log::debug!("the C allocator keeps its defaults ({option} refused)");
    }
    aigw::sys::delay_heap_purge();
    match Cli::parse().command {
        Command::Serve {
            config,
            listen,
            shards,
            admin_socket,
        } => {
            let source = aigw::control::reload::Source {
                path: config,
                listen,
                shards,
                admin_socket,
            };
            let cfg = match source.load() {
                Ok(c) => c,
                Err(errors) => {
                    let file = source
                        .path
                        .as_ref()
                        .map(|p| format!("config {}:\n", p.display()))
                        .unwrap_or_default();
                    return fail(&format!("{file}{}", errors.join("\n")));
                }
            };
            for note in cfg.key_notes() {
                eprintln!("aigw: note: {note}");
            }
            let result = aigw::runtime::serve(cfg, source, |l| {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(
                    out,
                    "aigw listening on http://{} ({} shards)",
                    l.addr, l.shards
                );
                let _ = writeln!(out, "aigw admin socket {}", l.admin_socket.display());
                if let Some(m) = l.metrics_addr {
                    let _ = writeln!(out, "aigw metrics on http://{m}/metrics");
                }
                let _ = out.flush();
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
        Command::CheckConfig { file } => match Config::load(&file)
            .map_err(|e| e.to_string())
            .and_then(|c| aigw::runtime::check_startable(&c).map(|()| c))
        {
            Ok(c) => {
                println!("{}: ok ({} providers)", file.display(), c.providers.len());
                for note in c.key_notes() {
                    println!("note: {note}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(&format!("{}:\n{e}", file.display())),
        },
        Command::Cache {
            cmd:
                CacheCmd::Purge {
                    key,
                    provider,
                    socket,
                    config,
                },
        } => {
            let socket = match admin_socket(socket, config.as_deref()) {
                Ok(s) => s,
                Err(e) => return fail(&e),
            };
            let mut path = String::from("/cache/purge");
            if let Some(k) = key {
                path.push_str(&format!("?key={}", aigw::http::percent_encode(&k)));
            } else if let Some(p) = provider {
                path.push_str(&format!("?provider={}", aigw::http::percent_encode(&p)));
            }
            match aigw::control::admin::request(&socket, "POST", &path) {
                Ok(body) => {
                    print!("{body}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        Command::Usage {
            config,
            by,
            since,
            json,
        } => match usage(config.as_deref(), &by, &since, json) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        Command::Prices {
            config,
            model,
            json,
        } => {
            let overrides = match config.as_deref().map(Config::load_for_tools) {
                Some(Ok(c)) => c.prices,
                Some(Err(e)) => return fail(&e.to_string()),
                None => Default::default(),
            };
            print!("{}", prices_text(&overrides, model.as_deref(), json));
            ExitCode::SUCCESS
        }
        Command::Key { cmd } => match key_command(cmd) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        Command::PrintConfig => {
            print!("{}", Config::describe_keys());
            ExitCode::SUCCESS
        }
        Command::Stats {
            socket,
            config,
            json,
            prometheus,
            watch,
        } => {
            let socket = match admin_socket(socket, config.as_deref()) {
                Ok(s) => s,
                Err(e) => return fail(&e),
            };
            let path = if prometheus { "/metrics" } else { "/stats" };
            loop {
                let text = match aigw::control::admin::query(&socket, path) {
                    Ok(body) if json || prometheus => body,
                    Ok(body) => aigw::control::report::render(&body).unwrap_or(body),
                    Err(e) => return fail(&e),
                };
                if !watch {
                    print!("{text}");
                    return ExitCode::SUCCESS;
                }
                // Clear the screen and draw the frame in one write.
                let mut out = std::io::stdout().lock();
                let _ = write!(out, "\x1b[2J\x1b[H{text}");
                let _ = out.flush();
                drop(out);
                std::thread::sleep(WATCH_EVERY);
            }
        }
        Command::Logs(args) => match logs(*args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        },
    }
}

/// `aigw logs`: reads the store directly, so it works with the gateway
/// running or stopped.
fn logs(a: LogsArgs) -> Result<(), String> {
    use aigw::logstore::{self, query};
    let data_dir = match (&a.data_dir, &a.config) {
        (Some(d), _) => d.clone(),
        (None, c) => load(c.as_deref())?.server.data_dir,
    };
    let conn = logstore::open_for_reading(&logstore::path(&data_dir))?;
    let mut out = std::io::stdout().lock();
    if let Some(LogsCmd::Show { id }) = &a.show {
        let Some(query::Shown {
            row,
            request: req,
            response: resp,
        }) = query::show(&conn, id).map_err(|e| e.to_string())?
        else {
            return Err(format!("no request {id} in the log"));
        };
        let body = |b: &Option<query::StoredBody>| {
            b.as_ref().map(|b| {
                let text = String::from_utf8_lossy(&b.bytes).into_owned();
                // Bodies are printed for people unless --json: no terminal escapes.
                let text = if a.json {
                    text
                } else {
                    query::printable(&text, true)
                };
                (text, b.truncated)
            })
        };
        let (req, resp) = (body(&req), body(&resp));
        if a.json {
            let mut line = row.to_json();
            line.pop();
            for (name, b) in [("request_body", &req), ("response_body", &resp)] {
                line.push_str(&format!(",\"{name}\":"));
                match b {
                    Some((text, truncated)) => {
                        aigw::error::push_json_string(&mut line, text);
                        line.push_str(&format!(",\"{name}_truncated\":{truncated}"));
                    }
                    None => line.push_str("null"),
                }
            }
            line.push('}');
            let _ = writeln!(out, "{line}");
        } else {
            let _ = write!(out, "{}", show_text(&row));
            for (name, b) in [("request body", &req), ("response body", &resp)] {
                match b {
                    Some((text, truncated)) => {
                        let cut = if *truncated { " (truncated)" } else { "" };
                        let _ = writeln!(out, "\n--- {name}{cut} ---\n{text}");
                    }
                    None => {
                        let _ = writeln!(
                            out,
                            "\n--- {name}: not stored (logs.payloads is off, or it held a gateway key) ---"
                        );
                    }
                }
            }
        }
        return Ok(());
    }
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    let flags: [(&str, &Option<String>); 19] = [
        ("status", &a.status),
        ("source", &a.source),
        ("cache", &a.cache),
        ("provider", &a.provider),
        ("model", &a.model),
        ("key", &a.key),
        ("route", &a.route),
        ("id", &a.id),
        ("event-id", &a.event_id),
        ("user-agent", &a.user_agent),
        ("min-cost", &a.min_cost),
        ("max-cost", &a.max_cost),
        ("min-tokens", &a.min_tokens),
        ("max-tokens", &a.max_tokens),
        ("min-duration", &a.min_duration),
        ("max-duration", &a.max_duration),
        ("since", &a.since),
        ("until", &a.until),
        ("limit", &a.limit),
    ];
    for (name, v) in flags {
        if let Some(v) = v {
            pairs.push((name, v));
        }
    }
    for m in &a.meta {
        pairs.push(("meta", m));
    }
    let mut filter = query::Filter::from_pairs(pairs, aigw::reqid::now_unix_ms())
        .map_err(|e| format!("--{e}"))?;
    let mut rows = query::query(&conn, &filter).map_err(|e| e.to_string())?;
    let print = |out: &mut std::io::StdoutLock<'_>, rows: &[query::Row], header: bool| {
        if a.json {
            for r in rows {
                let _ = writeln!(out, "{}", r.to_json());
            }
        } else {
            let text = query::table(rows);
            let text = if header {
                &text[..]
            } else {
                text.split_once('\n').map_or("", |(_, t)| t)
            };
            let _ = write!(out, "{text}");
        }
        let _ = out.flush();
    };
    if !a.follow {
        print(&mut out, &rows, true);
        return Ok(());
    }
    // Following: the latest rows oldest first, then new rows as they are stored.
    rows.reverse();
    print(&mut out, &rows, true);
    filter.after_seq = Some(
        rows.iter()
            .map(|r| r.seq)
            .max()
            .map_or_else(|| max_seq(&conn), Ok)?,
    );
    filter.limit = query::MAX_LIMIT;
    loop {
        std::thread::sleep(FOLLOW_POLL);
        let new = query::query(&conn, &filter).map_err(|e| e.to_string())?;
        if let Some(last) = new.last() {
            filter.after_seq = Some(last.seq);
            print(&mut out, &new, false);
        }
    }
}

/// How often `aigw stats --watch` redraws.
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// How often `aigw logs --follow` looks for new rows.
const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_millis(250);

fn max_seq(conn: &rusqlite::Connection) -> Result<i64, String> {
    conn.query_row("SELECT coalesce(max(seq), 0) FROM requests", [], |r| {
        r.get(0)
    })
    .map_err(|e| e.to_string())
}

/// `aigw logs show ID` for people: one field per line.
fn show_text(r: &aigw::logstore::query::Row) -> String {
    let ms =
        |us: Option<i64>| us.map_or("-".to_string(), |v| format!("{:.3} ms", v as f64 / 1000.0));
    let n = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
    let t = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let mut s = String::new();
    for (k, v) in [
        ("id", r.id.clone()),
        ("time", aigw::logstore::time::format_ms(r.ts as u64)),
        ("route", r.route.clone()),
        ("provider", t(&r.provider)),
        ("model", t(&r.model)),
        ("path", t(&r.path)),
        ("status", r.status.to_string()),
        (
            "error",
            format!("{} {}", t(&r.error_source), t(&r.error_code)),
        ),
        ("outcome", r.outcome.clone()),
        ("stream", r.stream.to_string()),
        ("cache", t(&r.cache)),
        // What `aigw cache purge --key` takes.
        ("cache key", t(&r.cache_key)),
        ("total", ms(Some(r.total_us))),
        ("gateway", ms(Some(r.gateway_us))),
        ("upstream", ms(r.upstream_us)),
        ("ttft", ms(r.ttft_us)),
        (
            "tokens",
            format!(
                "in {} out {} cached {}",
                n(r.tokens_in),
                n(r.tokens_out),
                n(r.tokens_cached)
            ),
        ),
        ("cost", r.cost.map_or("-".into(), |c| c.to_string())),
        ("bytes", format!("in {} out {}", r.bytes_in, r.bytes_out)),
        ("user agent", t(&r.user_agent)),
        ("event id", t(&r.event_id)),
        ("key", t(&r.key_id)),
        ("metadata", t(&r.metadata)),
    ] {
        s.push_str(&format!(
            "{k:<11} {}\n",
            aigw::logstore::query::printable(&v, false)
        ));
    }
    s
}

/// The admin socket a client command talks to: `--socket`, else the one the
/// config (`--config`, or the built-in defaults) names.
fn admin_socket(
    socket: Option<PathBuf>,
    config: Option<&std::path::Path>,
) -> Result<PathBuf, String> {
    match socket {
        Some(s) => Ok(s),
        None => load(config).map(|c| c.admin_socket),
    }
}

fn load(path: Option<&std::path::Path>) -> Result<Config, String> {
    match path {
        Some(p) => Config::load_for_tools(p).map_err(|e| format!("config {}:\n{e}", p.display())),
        None => Config::from_toml("").map_err(|e| e.to_string()),
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("aigw: {msg}");
    ExitCode::from(2)
}

/// A minimal stderr logger; level from AIGW_LOG (error, warn, info, debug).
fn init_logging() {
    struct Stderr(log::LevelFilter);
    impl log::Log for Stderr {
        fn enabled(&self, m: &log::Metadata<'_>) -> bool {
            // glommio warns when it cannot register its I/O buffers under a small
            // memlock limit; aigw's network path does not use them, so that is
            // debug-level news here.
            let limit = if m.target().starts_with("glommio") && self.0 < log::LevelFilter::Debug {
                log::LevelFilter::Error
            } else {
                self.0
            };
            m.level() <= limit
        }
        fn log(&self, r: &log::Record<'_>) {
            if self.enabled(r.metadata()) {
                eprintln!("aigw {} {}: {}", r.level(), r.target(), r.args());
            }
        }
        fn flush(&self) {}
    }
    let level = match std::env::var("AIGW_LOG").as_deref() {
        Ok("error") => log::LevelFilter::Error,
        Ok("debug") => log::LevelFilter::Debug,
        Ok("info") => log::LevelFilter::Info,
        _ => log::LevelFilter::Warn,
    };
    let _ = log::set_boxed_logger(Box::new(Stderr(level)));
    log::set_max_level(level);
}

/// `aigw key new|list|revoke`.
fn key_command(cmd: KeyCmd) -> Result<String, String> {
    use aigw::auth;
    use aigw::config::auth::{pattern_problem, valid_key_id};
    use aigw::logstore::keys::{encode_metadata, encode_models};
    match cmd {
        KeyCmd::New {
            id,
            models,
            meta,
            create,
            socket,
            config,
        } => {
            if !valid_key_id(&id) {
                return Err(format!(
                    "`{id}` is not a key id; use 1 to 64 of A-Z a-z 0-9 _ - ."
                ));
            }
            if let Some(why) = models.iter().find_map(|m| pattern_problem(m)) {
                return Err(format!("--model: {why}"));
            }
            let mut metadata = Vec::new();
            for m in &meta {
                let (k, v) = m
                    .split_once('=')
                    .ok_or_else(|| format!("--meta: `{m}` must be KEY=VALUE"))?;
                metadata.push((k.to_string(), v.to_string()));
            }
            // What the config (and the admin socket) would refuse, refused
            // here: the printed lines must load.
            if let Some(why) = aigw::record::key_metadata_problem(&metadata) {
                return Err(format!(
                    "--meta: {}",
                    aigw::logstore::query::printable(&why, false)
                ));
            }
            let secret = auth::new_secret()?;
            let hash = auth::hex(&auth::hash_secret(secret.as_bytes()));
            let mut out = String::new();
            if create {
                let socket = admin_socket(socket, config.as_deref())?;
                let body = format!(
                    "{{\"id\":{},\"models\":{},\"metadata\":{},\"secret_sha256\":\"{hash}\"}}",
                    json_quote(&id),
                    encode_models(&models),
                    encode_metadata(&metadata),
                );
                aigw::control::admin::request_with_body(&socket, "POST", "/keys", &body)?;
                out.push_str(&format!(
                    "key `{id}` is in force on the running gateway (stored hashed)\n"
                ));
            }
            out.push_str(&format!(
                "secret: {secret}\n(shown once: give it to the client; only its hash is kept)\n\n"
            ));
            if !create {
                out.push_str(&format!(
                    "[keys.{}]\nsecret_sha256 = \"{hash}\"\n",
                    show::bare_or_quoted(&id)
                ));
                if !models.is_empty() {
                    out.push_str(&format!("models = {}\n", encode_models(&models)));
                }
                if !metadata.is_empty() {
                    out.push_str(&format!("metadata = {}\n", show::metadata(&metadata)));
                }
            }
            Ok(out)
        }
        KeyCmd::List {
            json,
            socket,
            config,
        } => {
            let socket = admin_socket(socket, config.as_deref())?;
            let body = aigw::control::admin::query(&socket, "/keys")?;
            if json {
                return Ok(body);
            }
            Ok(aigw::control::report::keys_table(&body).unwrap_or(body))
        }
        KeyCmd::Revoke { id, socket, config } => {
            let socket = admin_socket(socket, config.as_deref())?;
            let path = format!("/keys/{}", aigw::http::percent_encode(&id));
            aigw::control::admin::request(&socket, "DELETE", &path)?;
            Ok(format!("key `{id}` revoked\n"))
        }
    }
}

/// A TOML key: bare when it can be, quoted otherwise.
/// `s` as a JSON string literal (also a valid TOML basic string).
fn json_quote(s: &str) -> String {
    let mut out = String::new();
    aigw::error::push_json_string(&mut out, s);
    out
}

/// `aigw prices`: the table as text or JSON lines.
fn prices_text(
    overrides: &std::collections::BTreeMap<String, aigw::config::PriceConfig>,
    pattern: Option<&str>,
    json: bool,
) -> String {
    use aigw::cost::{self, Origin};
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v}"));
    let mut out = String::new();
    if !json {
        out.push_str(&format!(
            "# USD per million tokens; shipped table of {} (src/cost/prices.toml), [prices] in config over it\n",
            cost::shipped().0
        ));
        out.push_str(&format!(
            "{:<44} {:>9} {:>9} {:>9} {:>9} {:>9}  from\n",
            "model", "input", "output", "cached", "write", "context"
        ));
    }
    for (name, p) in cost::all(overrides) {
        if pattern.is_some_and(|pat| !aigw::auth::glob(pat.as_bytes(), name.as_bytes())) {
            continue;
        }
        let from = if p.origin == Origin::Config {
            "config"
        } else {
            "shipped"
        };
        if json {
            let num = |v: Option<f64>| v.map_or("null".to_string(), |v| format!("{v}"));
            out.push_str(&format!(
                "{{\"model\":{},\"input\":{},\"output\":{},\"cached_input\":{},\"cache_write\":{},\"context_window\":{},\"from\":\"{from}\"}}\n",
                json_quote(&name),
                p.input,
                p.output,
                num(p.cached_input),
                num(p.cache_write),
                p.context_window.map_or("null".to_string(), |w| w.to_string()),
            ));
        } else {
            out.push_str(&format!(
                "{:<44} {:>9} {:>9} {:>9} {:>9} {:>9}  {from}\n",
                name,
                p.input,
                p.output,
                opt(p.cached_input),
                opt(p.cache_write),
                p.context_window.map_or("-".to_string(), |w| w.to_string()),
            ));
        }
    }
    out
}

/// `aigw usage`: reads the store like `aigw logs`; budgets are replayed from
/// it with the config's budgets, as a restarting gateway does.
fn usage(
    config: Option<&std::path::Path>,
    by: &str,
    since: &str,
    json: bool,
) -> Result<String, String> {
    use aigw::control::usage::{By, rebuild, usage_json, usage_table};
    let config = load(config)?;
    if !config.logs.enabled {
        return Err("the request log is off in this config (logs.enabled = false), and `aigw usage` reads the log: turn it on, or ask the running gateway (GET /usage on its admin socket shows its budgets)".into());
    }
    let parsed = By::parse(by).map_err(|e| format!("--{e}"))?;
    let now = aigw::reqid::now_unix_ms();
    let since_ms =
        aigw::logstore::time::parse_start(since, now).map_err(|e| format!("--since: {e}"))?;
    let path = aigw::logstore::path(&config.server.data_dir);
    let conn = aigw::logstore::open_for_reading(&path)?;
    let budgets = aigw::budget::Budgets::new();
    let limiter = aigw::limit::Limiter::new(1);
    let only_budgets = Config {
        rate_limits: Vec::new(),
        ..config.clone()
    };
    rebuild(&only_budgets, &limiter, &budgets)?;
    let standings = budgets.report(&config.budgets, now);
    let body = usage_json(Ok(&conn), &parsed, since_ms, &standings)?;
    if json {
        return Ok(body);
    }
    Ok(usage_table(&body, by).unwrap_or(body))
}

/// A feature the binary was compiled to use that this CPU lacks (a build for
/// x86-64-v3 run on an older CPU would otherwise die of an illegal
/// instruction somewhere later).
fn cpu_lacks_build_features() -> Option<&'static str> {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    if !std::arch::is_x86_feature_detected!("avx2") {
        return Some("AVX2");
    }
    None
}
