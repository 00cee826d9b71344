//! The data plane inside one shard: connections, the pipeline, the attempts,
//! the relay and its taps. Imports the stages, `upstream` and the leaves;
//! never `control/`.
//!
//! Files, from the bottom up (each imports only files above it in this list):
//!
//! - [`shard`]: [`ShardCtx`], everything a shard owns.
//! - [`client`]: the client connection's socket and buffers, the request read off it.
//! - [`respond`]: response heads (and small whole responses) as bytes.
//! - [`forward`]: the request as it goes upstream.
//! - [`taps`]: what watches the body on its way (usage today).
//! - [`attempt`]: one upstream attempt, up to the response head; never writes to the client.
//! - [`relay`]: the body to the client through the taps.
//! - [`pipeline`]: the one function that orders a request's stages.
//! - [`conn`]: the per-connection loop (read a request, run the pipeline, repeat).

pub mod attempt;
pub mod client;
pub mod conn;
pub mod forward;
pub mod pipeline;
pub mod relay;
pub mod respond;
pub mod shard;
pub mod taps;

pub use shard::ShardCtx;
