//! Azure OpenAI: OpenAI's wire format under deployment URLs
//! (`{base}/deployments/{deployment}/chat/completions?api-version=...`, the
//! request's model naming the deployment) with an `api-key` header.

use super::Adapter;
use super::usage::UsageShape;

pub struct Azure;

impl Adapter for Azure {
    fn auth_native(&self, key: &str) -> String {
        format!("api-key: {key}\r\n")
    }
    fn auth_unified(&self, key: &str) -> String {
        self.auth_native(key)
    }
    fn injects_stream_usage(&self) -> bool {
        true
    }
    fn usage_shape(&self) -> &'static UsageShape {
        &super::openai::USAGE
    }
    fn names_model_in_path(&self) -> bool {
        true
    }
    /// The deployment, under `deployments/`; the v1 API (no deployment in
    /// the path) goes by the body's `model`.
    fn path_model<'a>(&self, rest: &'a str) -> super::PathModel<'a> {
        match super::segment_after(rest, "deployments") {
            Some(deployment) => super::PathModel::Path(deployment),
            None => super::PathModel::Body,
        }
    }
    /// Chat, completions and embeddings live under the deployment; the
    /// Responses API does not (it goes to `{base}/responses`).
    fn model_path(&self, base: &str, endpoint: &str, model: &str, _stream: bool) -> Option<String> {
        matches!(endpoint, "chat/completions" | "completions" | "embeddings")
            .then(|| format!("{base}/deployments/{model}/{endpoint}"))
    }
}
