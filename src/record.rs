//! The one record every finished request leaves: the single place the facts of a
//! request live. Stats count from it today; logs and billing will read it later.
//!
//! Built by the pipeline as the request proceeds, finished once, then handed to
//! the shard's stats recorder. `Send`, because it crosses to control-plane threads.

use crate::usage::Usage;
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

/// Everything known about one finished request.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    pub id: u64,
    pub shard: usize,
    pub route: RouteKind,
    pub provider: Option<Rc<str>>,
    pub model: Option<String>,
    pub status: u16,
    /// `aigw-error-source` of an error response, if it was one.
    pub error_source: Option<&'static str>,
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
    /// The provider connection was reused from the pool.
    pub upstream_reused: bool,
}

/// The cross-thread form: `Rc` names become owned strings.
#[derive(Clone, Debug)]
pub struct SentRecord {
    pub id: u64,
    pub shard: usize,
    pub route: RouteKind,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub status: u16,
    pub error_source: Option<&'static str>,
    pub error_code: Option<&'static str>,
    pub outcome: Outcome,
    pub stream: bool,
    pub usage: Usage,
    pub gateway_us: u64,
    pub upstream_ttfb_us: Option<u64>,
    pub ttft_us: Option<u64>,
    pub total_us: u64,
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
            upstream_reused: false,
        }
    }

    pub fn to_sent(&self) -> SentRecord {
        SentRecord {
            id: self.id,
            shard: self.shard,
            route: self.route,
            provider: self.provider.as_deref().map(str::to_string),
            model: self.model.clone(),
            status: self.status,
            error_source: self.error_source,
            error_code: self.error_code,
            outcome: self.outcome,
            stream: self.stream,
            usage: self.usage,
            gateway_us: self.gateway.as_micros() as u64,
            upstream_ttfb_us: self.upstream_ttfb.map(|d| d.as_micros() as u64),
            ttft_us: self.ttft.map(|d| d.as_micros() as u64),
            total_us: self.total.as_micros() as u64,
        }
    }
}

const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<SentRecord>();
};
