//! `aigw`: the gateway binary. `serve`, `check-config`, `print-config`, `stats`.

use aigw::config::Config;
use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

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
    },
}

fn main() -> ExitCode {
    init_logging();
    match Cli::parse().command {
        Command::Serve {
            config,
            listen,
            shards,
            admin_socket,
        } => {
            let mut cfg = match load(config.as_deref()) {
                Ok(c) => c,
                Err(e) => return fail(&e),
            };
            if let Some(l) = listen {
                cfg.server.listen = l;
            }
            if let Some(n) = shards {
                cfg.server.shards = std::num::NonZeroUsize::new(n);
            }
            if let Some(p) = admin_socket {
                cfg.admin_socket = p;
            }
            let result = aigw::runtime::serve(cfg, |l| {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(
                    out,
                    "aigw listening on http://{} ({} shards)",
                    l.addr, l.shards
                );
                let _ = writeln!(out, "aigw admin socket {}", l.admin_socket.display());
                let _ = out.flush();
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(c) => {
                println!("{}: ok ({} providers)", file.display(), c.providers.len());
                ExitCode::SUCCESS
            }
            Err(e) => fail(&format!("{}:\n{e}", file.display())),
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
        } => {
            let socket = match socket {
                Some(s) => s,
                None => match load(config.as_deref()) {
                    Ok(c) => c.admin_socket,
                    Err(e) => return fail(&e),
                },
            };
            match aigw::control::admin::query(
                &socket,
                if prometheus { "/metrics" } else { "/stats" },
            ) {
                Ok(body) => {
                    let text = if json || prometheus {
                        body
                    } else {
                        aigw::control::report::render(&body).unwrap_or(body)
                    };
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
    }
}

fn load(path: Option<&std::path::Path>) -> Result<Config, String> {
    match path {
        Some(p) => Config::load(p).map_err(|e| format!("config {}:\n{e}", p.display())),
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
