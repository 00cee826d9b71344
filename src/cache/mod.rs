//! The response cache (issue "Response cache"): a stage between admission and
//! the attempts. Built in steps; today it holds the key computation and the entry
//! format, which nothing on the request path calls yet.
//!
//! - [`key`]: the cache key: xxh3-128 over a schema version, the credential
//!   scope, the provider, the upstream path and the canonical request body.
//! - [`entry`]: the entry format in a segment, and proving an entry whole.

pub mod entry;
pub mod key;
