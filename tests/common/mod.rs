//! Shared harness of the integration tests: the real `aigw` binary against the
//! mock provider, spoken to over raw sockets.
//!
//! - [`gateway`]: spawns `aigw serve` with a temporary config, waits (bounded)
//!   for its listening line, and kills it and removes its directory on drop.
//! - [`wire`]: a byte-level HTTP/1.1 client that reports exactly what came back
//!   (status, headers, body, whether the body ended by its framing, when each
//!   SSE event arrived, whether the server closed).
//! - [`held`]: a one-request provider that holds its answer until the test
//!   releases it, for tests that need a request provably in flight.
//! - [`fixed`]: a provider that answers every request with the same raw bytes.
//!
//! Every wait here is bounded by [`WAIT`] and ends on an event (a line, a byte,
//! a close), never on a sleep.

#![allow(
    dead_code,
    unused_imports,
    reason = "each test binary uses its own subset of the harness"
)]

pub mod fixed;
pub mod gateway;
pub mod held;
pub mod wire;

pub use fixed::FixedUpstream;
pub use gateway::Gateway;
pub use held::HeldUpstream;
pub use wire::{Client, Response};

use aigw_loadtest::mock::{MockConfig, MockServer};
use std::time::Duration;

/// Upper bound of any single wait in a test (a response, a line, an exit).
pub const WAIT: Duration = Duration::from_secs(10);

/// Shard counts every scenario runs at.
pub const SHARDS: [usize; 2] = [1, 2];

/// A mock provider with default knobs and capture on.
pub fn mock() -> MockServer {
    mock_with(MockConfig::default())
}

pub fn mock_with(cfg: MockConfig) -> MockServer {
    MockServer::start(cfg).expect("mock provider starts")
}

/// Parses JSON bytes, naming them when they are not JSON.
pub fn json(bytes: &[u8]) -> simd_json::OwnedValue {
    let mut copy = bytes.to_vec();
    simd_json::to_owned_value(&mut copy)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

/// Generates a `#[test]` per shard count for each named scenario `fn name(shards: usize)`:
/// `name::one_shard` and `name::two_shards`.
#[macro_export]
macro_rules! at_1_and_2_shards {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn one_shard() {
                    super::$name(1)
                }
                #[test]
                fn two_shards() {
                    super::$name(2)
                }
            }
        )*
    };
}
