//! aigw: a thread-per-core AI gateway.
//!
//! # Layout
//!
//! One process: a few control-plane std threads and one glommio executor ("shard")
//! per allowed CPU. A request is served start to finish by the shard that accepted
//! its connection; nothing on its path crosses a core. Imports point down this list:
//!
//! - [`runtime`]: shards, pinning, listeners, control-plane threads, drain.
//! - [`control`]: stats thread, log thread, admin socket, signals, `aigw stats`
//!   rendering. Nothing on the data plane imports it.
//! - [`logstore`]: the request log's SQLite file: schema, batched writes and
//!   retention (for the log thread), the filters of `aigw logs` and `GET /logs`,
//!   and the admin-created gateway keys kept beside it.
//! - [`server`]: the per-connection loop, the pipeline that orders the stages,
//!   upstream attempts, the relay and its taps.
//! - Stages: [`controls`] (the `aigw-*`/`cf-aig-*` request headers), [`auth`]
//!   (gateway keys), [`limit`] (rate limits), [`budget`] (spend per window), [`cost`] (prices), [`cache`]
//!   (the response cache), [`route`]
//!   (path + model to a plan) and [`providers`] (one adapter per provider kind:
//!   auth, paths, usage shapes, the in-process mock).
//! - [`upstream`]: DNS, TCP, TLS, the pool and the HTTP/1.1 client; knows no
//!   models, routes or keys.
//! - Leaves, importing nothing above them: [`http`] (HTTP/1.1 framing on httparse),
//!   [`json`] (request-body field scanning and splicing), [`config`] (the TOML file,
//!   parsed once into typed values), [`error`] (gateway errors and their bytes),
//!   [`record`] (the one record a request leaves, and its token [`record::Usage`]),
//!   [`tally`] (per-second counts of the requests the log keeps no row of),
//!   [`logqueue`] (how records and tallies reach the log thread),
//!   [`reqid`] (UUIDv7 request ids), [`private`] (the data_dir's modes), [`calendar`] (UTC days and months),
//!   [`stats`] (the per-shard recorder), [`fasthash`], [`num`] (rounding without libm), [`net`] (socket reads
//!   tuned for glommio) and [`sys`] (the only `unsafe` code).

#![deny(unsafe_code)]

pub mod auth;
pub mod budget;
pub mod cache;
pub mod calendar;
pub mod config;
pub mod control;
pub mod controls;
pub mod cost;
pub mod error;
pub mod fasthash;
pub mod http;
pub mod json;
pub mod limit;
pub mod logqueue;
pub mod logstore;
pub mod net;
pub mod num;
pub mod private;
pub mod providers;
pub mod record;
pub mod reqid;
pub mod route;
pub mod runtime;
pub mod server;
pub mod stats;
pub mod sys;
pub mod tally;
pub mod targets;
pub mod upstream;
