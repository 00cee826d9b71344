//! `aigw-mock` command-line flags, parsed once into a [`MockConfig`].
//!
//! Owns flag names, their units and their error messages. Does not start
//! anything (that is `bin/aigw-mock.rs` through [`super::MockServer`]).
//! Limits are checked again by `MockServer::start`, so a flag can never
//! produce a config the server would misread.

use std::net::SocketAddr;
use std::time::Duration;

use super::{ErrorKind, MockConfig, Stall};

/// `--help` text.
pub const USAGE: &str = "\
aigw-mock: a fast OpenAI-compatible mock LLM provider (base URL http://ADDR/v1)

USAGE: aigw-mock [FLAGS]

  --listen ADDR              listen address (default 127.0.0.1:9090; port 0 = any free port)
  --shards N                 executor threads sharing the port (default 1)
  --cpus LIST                pin shards to these CPUs, e.g. 0 or 0,1 (default: unpinned)
  --latency-ms MS            wait before the response head       [x-mock-latency-ms]
  --ttft-ms MS               streams: wait before the first event [x-mock-ttft-ms]
  --chunks N                 streams: content events (default 8)  [x-mock-chunks]
  --chunk-interval-ms MS     streams: wait between events         [x-mock-chunk-interval-ms]
  --reply-bytes N            assistant text length (default 64)   [x-mock-reply-bytes]
  --error KIND               inject 429|500|503|reset|cut|hang|malformed|stream-error|short [x-mock-error, or none]
  --error-rate F             apply --error to this fraction, 0..1 (default 1)
  --retry-after SECS         Retry-After sent with 429 (default 1) [x-mock-retry-after]
  --stall-at SECS            freeze the whole server once, SECS after start
  --stall-ms MS              ...for this long (default 1000 when --stall-at is given)
  --no-capture               do not keep the last 256 requests (for load runs)
  -h, --help                 print this text

Control plane: GET /mock/stats, POST /mock/reset, GET /mock/requests.
";

/// What the command line asks for.
#[derive(Debug, PartialEq)]
pub enum Command {
    Run(MockConfig),
    Help,
}

/// Parses `args` (without the program name). Accepts `--flag value` and
/// `--flag=value`.
pub fn parse_args<I>(args: I) -> Result<Command, String>
where
    I: IntoIterator<Item = String>,
{
    let mut cfg = MockConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
        ..MockConfig::default()
    };
    let mut stall_at: Option<Duration> = None;
    let mut stall_for = Duration::from_secs(1);
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg.clone(), None),
        };
        let mut value = || -> Result<String, String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => args.next().ok_or_else(|| format!("{flag} needs a value")),
            }
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--listen" => cfg.listen = parse(&flag, &value()?)?,
            "--shards" => cfg.shards = parse(&flag, &value()?)?,
            "--cpus" => {
                cfg.cpus = value()?
                    .split(',')
                    .map(|cpu| parse(&flag, cpu.trim()))
                    .collect::<Result<_, _>>()?
            }
            "--latency-ms" => cfg.latency = millis(&flag, &value()?)?,
            "--ttft-ms" => cfg.ttft = millis(&flag, &value()?)?,
            "--chunks" => cfg.chunks = parse(&flag, &value()?)?,
            "--chunk-interval-ms" => cfg.chunk_interval = millis(&flag, &value()?)?,
            "--reply-bytes" => cfg.reply_bytes = parse(&flag, &value()?)?,
            "--error" => {
                let v = value()?;
                cfg.error = if v.eq_ignore_ascii_case("none") {
                    None
                } else {
                    Some(v.parse::<ErrorKind>().map_err(|e| format!("{flag}: {e}"))?)
                };
            }
            "--error-rate" => cfg.error_rate = parse(&flag, &value()?)?,
            "--retry-after" => cfg.retry_after_secs = parse(&flag, &value()?)?,
            "--stall-at" => stall_at = Some(seconds(&flag, &value()?)?),
            "--stall-ms" => stall_for = millis(&flag, &value()?)?,
            "--no-capture" => cfg.capture = false,
            other => return Err(format!("unknown flag {other:?} (see --help)")),
        }
    }
    cfg.stall = stall_at.map(|after| Stall {
        after,
        duration: stall_for,
    });
    Ok(Command::Run(cfg))
}

fn parse<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value
        .trim()
        .parse()
        .map_err(|_| format!("{flag}: cannot parse {value:?}"))
}

fn millis(flag: &str, value: &str) -> Result<Duration, String> {
    parse::<u64>(flag, value).map(Duration::from_millis)
}

fn seconds(flag: &str, value: &str) -> Result<Duration, String> {
    let secs: f64 = parse(flag, value)?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{flag}: {value:?} is not a duration"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<MockConfig, String> {
        match parse_args(args.iter().map(|s| s.to_string()))? {
            Command::Run(cfg) => Ok(cfg),
            Command::Help => Err("help".into()),
        }
    }

    #[test]
    fn no_flags_listen_on_the_documented_default_port() {
        let cfg = run(&[]).unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(cfg.shards, 1);
        assert!(cfg.capture);
    }

    #[test]
    fn every_flag_lands_in_its_field() {
        let cfg = run(&[
            "--listen=0.0.0.0:0",
            "--shards",
            "2",
            "--cpus",
            "0,1",
            "--latency-ms",
            "5",
            "--ttft-ms=6",
            "--chunks",
            "3",
            "--chunk-interval-ms",
            "7",
            "--reply-bytes",
            "100",
            "--error",
            "429",
            "--error-rate",
            "0.25",
            "--retry-after",
            "9",
            "--stall-at",
            "1.5",
            "--stall-ms",
            "200",
            "--no-capture",
        ])
        .unwrap();
        assert_eq!(cfg.listen, "0.0.0.0:0".parse().unwrap());
        assert_eq!((cfg.shards, cfg.cpus.as_slice()), (2, &[0, 1][..]));
        assert_eq!(cfg.latency, Duration::from_millis(5));
        assert_eq!(cfg.ttft, Duration::from_millis(6));
        assert_eq!(cfg.chunks, 3);
        assert_eq!(cfg.chunk_interval, Duration::from_millis(7));
        assert_eq!(cfg.reply_bytes, 100);
        assert_eq!(cfg.error, Some(ErrorKind::RateLimited));
        assert_eq!(cfg.error_rate, 0.25);
        assert_eq!(cfg.retry_after_secs, 9);
        assert_eq!(
            cfg.stall,
            Some(Stall {
                after: Duration::from_millis(1500),
                duration: Duration::from_millis(200)
            })
        );
        assert!(!cfg.capture);
    }

    #[test]
    fn bad_flags_are_reported_by_name() {
        assert!(run(&["--shards"]).unwrap_err().contains("--shards"));
        assert!(run(&["--chunks", "many"]).unwrap_err().contains("--chunks"));
        assert!(run(&["--error", "teapot"]).unwrap_err().contains("teapot"));
        assert!(
            run(&["--stall-at", "-1"])
                .unwrap_err()
                .contains("--stall-at")
        );
        assert!(run(&["--frobnicate"]).unwrap_err().contains("--frobnicate"));
        assert_eq!(run(&["--help"]), Err("help".into()));
    }
}
