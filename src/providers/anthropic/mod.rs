//! Anthropic: the native Messages API under `/v1/messages` with `x-api-key`.
//! Passthrough requests go there as they are; a unified chat completion is
//! translated to a Messages request (`request`) and its reply back
//! (`reply`). `usage` counts `input_tokens`/`output_tokens`, and streams
//! report input at `message_start` and cumulative output at `message_delta`.

pub mod inbound;
pub mod reply;
pub mod request;

use super::usage::UsageShape;
use super::{Adapter, Dialect};

pub struct Anthropic;

pub static USAGE: UsageShape = UsageShape {
    input: &["input_tokens", "prompt_tokens"],
    output: &["output_tokens", "completion_tokens"],
    output_also: &[],
    cached_nested: &[("prompt_tokens_details", "cached_tokens")],
    cached: &["cache_read_input_tokens"],
    cache_write: &["cache_creation_input_tokens"],
    input_includes_cached: false,
};

impl Adapter for Anthropic {
    fn auth_native(&self, key: &str) -> String {
        format!("x-api-key: {key}\r\n")
    }
    fn auth_unified(&self, key: &str) -> String {
        self.auth_native(key)
    }
    /// Chat completions are translated to the Messages API; the other
    /// unified endpoints have no Anthropic counterpart (translation refuses them).
    fn unified_path(&self, base: &str, _endpoint: &str) -> String {
        format!("{base}/v1/messages")
    }
    fn dialect(&self) -> Dialect {
        Dialect::Anthropic
    }
    fn unified_headers(&self) -> &'static str {
        "anthropic-version: 2023-06-01\r\n"
    }
    /// Its streams carry usage without being asked.
    fn injects_stream_usage(&self) -> bool {
        false
    }
    fn usage_shape(&self) -> &'static UsageShape {
        &USAGE
    }
}
