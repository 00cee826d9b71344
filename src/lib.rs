//! aigw: a thread-per-core AI gateway.
//!
//! # Layout
//!
//! One process: a few control-plane std threads and one glommio executor ("shard")
//! per allowed CPU. A request is served start to finish by the shard that accepted
//! its connection; nothing on its path crosses a core.
//!
//! - [`config`]: the TOML file and the built-in defaults, parsed once into typed values.
//! - [`http`]: HTTP/1.1 framing on top of httparse, for both directions.
//! - [`json`]: top-level field scanning and splicing of request bodies.
//! - [`usage`]: token usage from JSON replies and SSE streams (simd-json).
//! - [`route`]: URL layout + model string to a provider target.
//! - [`upstream`]: pooled HTTP/1.1 (+TLS) connections to providers, DNS cache,
//!   and the in-process `mock` provider.
//! - [`server`]: the per-connection loop and the pipeline that orders the stages.
//! - [`record`]: the one record every finished request leaves.
//! - [`control`]: stats thread, admin socket, signals.
//! - [`runtime`]: shards, pinning, listeners, drain.
//! - [`error`]: gateway errors and the only place they become bytes.
//! - [`net`]: socket reads tuned for glommio; [`sys`]: the only `unsafe` calls.

pub mod config;
pub mod control;
pub mod error;
pub mod fasthash;
pub mod http;
pub mod json;
pub mod net;
pub mod record;
pub mod route;
pub mod runtime;
pub mod server;
pub mod sys;
pub mod upstream;
pub mod usage;
