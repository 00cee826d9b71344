//! aigw-load: a thread-per-core HTTP/1.1 load generator for LLM-style traffic.
//!
//! Layout, in the order a request flows:
//! - `config`   — the typed run configuration and flag parsers;
//! - `body`     — request bytes: chat-completion templates, prompt pool
//!   (`--hit-ratio`), fixed or JSONL bodies;
//! - `run`      — one pinned thread per CPU, the run clock, the main
//!   thread's progress loop, the report per target;
//! - `shard`    — a thread's share of the connections and its snapshots;
//! - `conn`     — one keep-alive connection: pacing (open or closed loop),
//!   send, read, record; coordinated omission is corrected here;
//! - `sock`     — reads that ask the socket a few times before waiting;
//! - `response` — response framing (head, Content-Length, chunked, SSE events);
//! - `stats`    — histograms and counters; `progress` merges them;
//! - `cpu`      — CPU time from /proc for CPU-µs per request;
//! - `report`   — the table and the JSON.
//!
//! The binary (`src/bin/aigw-load.rs`) maps flags onto a `LoadConfig`, calls
//! [`run`], prints the table, writes the JSON and picks the exit code.

pub mod body;
pub mod config;
pub mod conn;
pub mod cpu;
pub mod progress;
pub mod report;
pub mod response;
pub mod run;
pub mod shard;
pub mod sock;
pub mod stats;

pub use config::{BodySource, CpuWatch, LoadConfig, Mode, Target, parse_target};
pub use report::{Percentiles, Report, TargetReport};
pub use run::{RunError, run};
