//! One upstream attempt: take a pooled connection or open one, send the
//! request, read the response head. Never writes to the client, so the
//! pipeline can still try again, fall back, or answer with an error.
//!
//! Classifies every failure: whose fault (the provider's), whether another try
//! may help (connect refused, reset before any byte, timeout before the head:
//! yes; a malformed head: no), its status, and whether the connection came
//! from the pool (a pooled connection closed before any byte had gone stale).

use super::shard::ShardCtx;
use crate::error::{ErrorSource, GatewayError};
use crate::http::request::Method;
use crate::http::response::ResponseHead;
use crate::providers::Provider;
use crate::upstream::client::{self, HeadError};
use crate::upstream::conn::{ConnectError, UpstreamConn, connect};
use std::time::{Duration, Instant};

/// What one attempt sends.
pub struct AttemptRequest<'a> {
    /// The whole serialized request (head and body).
    pub bytes: &'a [u8],
    pub method: Method,
    /// Upstream path and body, for a provider that answers in process.
    pub path: &'a str,
    pub body: &'a [u8],
    pub request_id: u64,
}

/// A response head has arrived; the body is still on `conn`.
pub struct UpstreamReply {
    pub conn: UpstreamConn,
    /// When the request had been written.
    pub sent_at: Instant,
    /// Request sent to first response byte.
    pub ttfb: Duration,
    /// The connection came from the pool.
    pub reused: bool,
    /// A new connection was opened.
    pub connected: bool,
}

/// What went wrong, as the attempt saw it.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// No connection within `timeouts.upstream_connect`.
    ConnectTimeout,
    /// DNS, TCP or TLS failed (refused, unreachable, bad certificate).
    Unreachable(String),
    /// The request could not be written (reset or closed while sending).
    SendFailed(String),
    /// Closed or reset before a single response byte.
    ClosedEarly,
    /// No complete head within `timeouts.first_byte`.
    HeadTimeout,
    /// The provider sent something we cannot frame.
    BadHead(String),
}

#[derive(Debug)]
pub struct AttemptError {
    pub failure: Failure,
    /// The attempt ran on a connection taken from the pool.
    pub pooled: bool,
    /// The attempt opened a new connection.
    pub connected: bool,
}

impl AttemptError {
    /// Whether another try (on a fresh connection, or another target) may help.
    /// Everything before the provider said anything may; a malformed answer
    /// would be malformed again.
    pub fn retryable(&self) -> bool {
        !matches!(self.failure, Failure::BadHead(_))
    }

    /// A pooled connection the provider had already closed: the request never
    /// reached it, so sending it again on a fresh connection is safe.
    pub fn stale_connection(&self) -> bool {
        self.pooled && matches!(self.failure, Failure::SendFailed(_) | Failure::ClosedEarly)
    }

    /// Every attempt failure is the provider's (or the network's towards it).
    pub fn source(&self) -> ErrorSource {
        ErrorSource::Provider
    }

    pub fn status(&self) -> u16 {
        match self.failure {
            Failure::ConnectTimeout | Failure::HeadTimeout => 504,
            _ => 502,
        }
    }

    /// The error the client sees, naming the provider.
    pub fn to_gateway_error(&self, provider: &str) -> GatewayError {
        let e = match &self.failure {
            Failure::ConnectTimeout => GatewayError::upstream_timeout(provider, "connect"),
            Failure::Unreachable(why) => GatewayError::upstream_unreachable(provider, why),
            Failure::SendFailed(why) => {
                GatewayError::upstream_unreachable(provider, format!("sending the request: {why}"))
            }
            Failure::ClosedEarly => {
                GatewayError::upstream_bad_response(provider, "connection closed before a response")
            }
            Failure::HeadTimeout => {
                GatewayError::upstream_timeout(provider, "no response within timeouts.first_byte")
            }
            Failure::BadHead(why) => GatewayError::upstream_bad_response(provider, why),
        };
        debug_assert_eq!((e.status, e.source), (self.status(), self.source()));
        e
    }
}

/// One attempt at `provider`: the head lands in `rhead`, the body stays on the
/// returned connection for the relay.
pub async fn attempt(
    ctx: &ShardCtx,
    provider: &Provider,
    req: &AttemptRequest<'_>,
    rhead: &mut ResponseHead,
) -> Result<UpstreamReply, AttemptError> {
    let t = &ctx.config.timeouts;
    let fail = |failure, pooled, connected| AttemptError {
        failure,
        pooled,
        connected,
    };
    let (mut up, pooled, connected) = if let Some(bytes) =
        provider.answer_in_process(req.path, req.body, req.request_id)
    {
        (UpstreamConn::in_memory(bytes), false, false)
    } else if let Some(up) = ctx.pool.take(&provider.endpoint.name) {
        (up, true, false)
    } else {
        match connect(&provider.endpoint, &ctx.resolver, t.upstream_connect).await {
            Ok(up) => (up, false, true),
            Err(ConnectError::Timeout) => return Err(fail(Failure::ConnectTimeout, false, false)),
            Err(ConnectError::Failed(why)) => {
                return Err(fail(Failure::Unreachable(why), false, false));
            }
        }
    };
    let sent_at = Instant::now();
    if let Err(e) = client::send(&mut up, req.bytes, t.client_write).await {
        return Err(fail(Failure::SendFailed(e.to_string()), pooled, connected));
    }
    let max_head = ctx.config.limits.max_response_head_bytes;
    let was_head = req.method == Method::Head;
    match client::read_head(&mut up, rhead, was_head, max_head, t.first_byte, sent_at).await {
        Ok(ttfb) => Ok(UpstreamReply {
            conn: up,
            sent_at,
            ttfb,
            reused: pooled,
            connected,
        }),
        Err(HeadError::ClosedEarly) => Err(fail(Failure::ClosedEarly, pooled, connected)),
        Err(HeadError::Timeout) => Err(fail(Failure::HeadTimeout, pooled, connected)),
        Err(HeadError::Bad(why)) => Err(fail(Failure::BadHead(why), pooled, connected)),
    }
}
