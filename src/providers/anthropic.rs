//! Anthropic: the native Messages API under `/v1/messages` with `x-api-key`
//! (passthrough); unified requests go to its OpenAI-compatible endpoint under
//! `/v1` until translation to the Messages API lands. `usage` counts
//! `input_tokens`/`output_tokens`, and streams report input at
//! `message_start` and cumulative output at `message_delta`.

use super::Adapter;
use super::usage::UsageShape;

pub struct Anthropic;

pub static USAGE: UsageShape = UsageShape {
    input: &["input_tokens", "prompt_tokens"],
    output: &["output_tokens", "completion_tokens"],
    cached_nested: &[("prompt_tokens_details", "cached_tokens")],
    cached: &["cache_read_input_tokens"],
    cache_write: &["cache_creation_input_tokens"],
    input_includes_cached: false,
};

impl Adapter for Anthropic {
    fn auth_native(&self, key: &str) -> String {
        format!("x-api-key: {key}\r\n")
    }
    /// The OpenAI-compatible endpoint takes a bearer token; `x-api-key` too.
    fn auth_unified(&self, key: &str) -> String {
        format!("authorization: Bearer {key}\r\nx-api-key: {key}\r\n")
    }
    /// Anthropic's OpenAI-compatible API lives under `/v1` of the native base URL.
    fn unified_path(&self, base: &str, endpoint: &str) -> String {
        format!("{base}/v1/{endpoint}")
    }
    /// Its streams carry usage without being asked.
    fn injects_stream_usage(&self) -> bool {
        false
    }
    fn usage_shape(&self) -> &'static UsageShape {
        &USAGE
    }
}
