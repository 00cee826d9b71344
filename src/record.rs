//! The one record every finished request leaves: the single place the facts of a
//! request live. Stats count from it (and only from it); logs and billing will
//! read it later. A leaf: it imports only the error source from `error`.
//!
//! Built by the pipeline as the request proceeds, finished once in
//! `pipeline::finish`, then handed to the shard's stats recorder. It stays on its
//! shard; the log stage (a later issue) will send a `Send` copy to the log thread.

use crate::error::ErrorSource;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// How the request reached its provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    /// `/v1/chat/completions` etc. with `model: "provider/model"`.
    Unified,
    /// `/<provider>/<path>`, body untouched.
    Passthrough,
    /// `/v1/<account>/<gateway>/...`, either form.
    Cloudflare,
    /// Answered by the gateway itself (healthz, errors before routing).
    Local,
}

impl RouteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Unified => "unified",
            RouteKind::Passthrough => "passthrough",
            RouteKind::Cloudflare => "cloudflare",
            RouteKind::Local => "local",
        }
    }
}

/// How the response ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Fully delivered.
    Completed,
    /// The gateway answered with its own error.
    GatewayError,
    /// The provider's stream or body broke off; the client saw an aborted response.
    UpstreamAborted,
    /// The client went away before the response was delivered.
    ClientAborted,
}

/// Token counts of one request. Fields absent from the reply stay `None`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cached_tokens: Option<u64>,
}

impl Usage {
    pub fn is_empty(&self) -> bool {
        self.input_tokens.is_none() && self.output_tokens.is_none()
    }

    /// Later reports win field by field (Anthropic sends input tokens at the
    /// start and cumulative output tokens at the end).
    pub fn merge(&mut self, later: Usage) {
        self.input_tokens = later.input_tokens.or(self.input_tokens);
        self.output_tokens = later.output_tokens.or(self.output_tokens);
        self.cached_tokens = later.cached_tokens.or(self.cached_tokens);
    }
}

/// Everything known about one finished request.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    pub id: u64,
    pub shard: usize,
    pub route: RouteKind,
    pub provider: Option<Rc<str>>,
    pub model: Option<String>,
    pub status: u16,
    /// Whose fault an error response was, if it was one.
    pub error_source: Option<ErrorSource>,
    pub error_code: Option<&'static str>,
    pub outcome: Outcome,
    pub stream: bool,
    pub usage: Usage,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub started: Instant,
    /// Gateway time: total minus time spent waiting on the provider.
    pub gateway: Duration,
    /// Request sent to first response byte from the provider.
    pub upstream_ttfb: Option<Duration>,
    /// Time to the first SSE data event, from the request's arrival (streams).
    pub ttft: Option<Duration>,
    pub total: Duration,
    /// Upstream attempts made (0: answered without a provider).
    pub attempts: u32,
    /// New provider connections opened for this request.
    pub upstream_connects: u32,
    /// The answering provider connection was reused from the pool.
    pub upstream_reused: bool,
}

impl RequestRecord {
    pub fn new(id: u64, shard: usize, started: Instant) -> RequestRecord {
        RequestRecord {
            id,
            shard,
            route: RouteKind::Local,
            provider: None,
            model: None,
            status: 0,
            error_source: None,
            error_code: None,
            outcome: Outcome::Completed,
            stream: false,
            usage: Usage::default(),
            bytes_in: 0,
            bytes_out: 0,
            started,
            gateway: Duration::ZERO,
            upstream_ttfb: None,
            ttft: None,
            total: Duration::ZERO,
            attempts: 0,
            upstream_connects: 0,
            upstream_reused: false,
        }
    }
}
