//! OpenAI and every OpenAI-compatible server (Groq, Mistral, DeepSeek, Ollama...):
//! `Authorization: Bearer`, endpoints directly under the base URL, `usage`
//! with `prompt_tokens`/`completion_tokens` (and `input_tokens`/`output_tokens`
//! on the Responses API).

use super::Adapter;
use super::usage::UsageShape;

pub struct OpenAi;

/// Chat/completions/embeddings and the Responses API.
pub static USAGE: UsageShape = UsageShape {
    input: &["prompt_tokens", "input_tokens"],
    output: &["completion_tokens", "output_tokens"],
    output_also: &[],
    cached_nested: &[
        ("prompt_tokens_details", "cached_tokens"),
        ("input_tokens_details", "cached_tokens"),
    ],
    cached: &[],
    cache_write: &[],
    input_includes_cached: true,
};

impl Adapter for OpenAi {
    fn auth_native(&self, key: &str) -> String {
        format!("authorization: Bearer {key}\r\n")
    }
    fn auth_unified(&self, key: &str) -> String {
        self.auth_native(key)
    }
    fn injects_stream_usage(&self) -> bool {
        true
    }
    fn usage_shape(&self) -> &'static UsageShape {
        &USAGE
    }
}
