//! Google Gemini: the native `generateContent` API with `x-goog-api-key`.
//! Passthrough requests go under the base URL as they are; a unified chat
//! completion is translated to `models/{model}:generateContent` (or
//! `:streamGenerateContent?alt=sse` for a stream) by `request`, and its reply
//! back by `reply`. Usage is `usageMetadata` (prompt tokens include cached
//! ones; thinking tokens are billed as output).

pub mod reply;
pub mod request;

use super::usage::UsageShape;
use super::{Adapter, Dialect};

pub struct Google;

pub static USAGE: UsageShape = UsageShape {
    input: &["promptTokenCount"],
    output: &["candidatesTokenCount"],
    output_also: &["thoughtsTokenCount"],
    cached_nested: &[],
    cached: &["cachedContentTokenCount"],
    cache_write: &[],
    input_includes_cached: true,
};

impl Adapter for Google {
    fn auth_native(&self, key: &str) -> String {
        format!("x-goog-api-key: {key}\r\n")
    }
    fn auth_unified(&self, key: &str) -> String {
        self.auth_native(key)
    }
    fn injects_stream_usage(&self) -> bool {
        false
    }
    fn usage_shape(&self) -> &'static UsageShape {
        &USAGE
    }
    fn dialect(&self) -> Dialect {
        Dialect::Google
    }
    /// Gemini reads no model from a body: a path without one names none.
    fn path_model<'a>(&self, rest: &'a str) -> super::PathModel<'a> {
        let named = super::segment_after(rest, "models").flatten();
        super::PathModel::Path(
            named
                .map(|n| n.rsplit_once(':').map_or(n, |(model, _method)| model))
                .filter(|m| !m.is_empty()),
        )
    }
    fn names_model_in_path(&self) -> bool {
        true
    }
    fn path_streams(&self, rest: &str) -> bool {
        super::segment_after(rest, "models")
            .flatten()
            .and_then(|named| named.rsplit_once(':'))
            .is_some_and(|(_, method)| method == "streamGenerateContent")
    }
    fn model_path(&self, base: &str, _endpoint: &str, model: &str, stream: bool) -> Option<String> {
        Some(if stream {
            format!("{base}/v1beta/models/{model}:streamGenerateContent?alt=sse")
        } else {
            format!("{base}/v1beta/models/{model}:generateContent")
        })
    }
}
