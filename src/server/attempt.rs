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
    /// No complete response head within this is a timeout (`None`:
    /// `timeouts.first_byte`).
    pub first_byte: Option<Duration>,
}

/// The setting that bounds the wait for a response head by default.
pub const FIRST_BYTE: &str = "timeouts.first_byte";

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

    /// The error the client sees, naming the provider and, for a head that
    /// did not come, the setting whose wait ran out (`head_wait`:
    /// `timeouts.first_byte` unless the request or its route set another).
    pub fn to_gateway_error(&self, provider: &str, head_wait: &str) -> GatewayError {
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
                GatewayError::upstream_timeout(provider, &format!("no response within {head_wait}"))
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
    let config = ctx.config();
    let t = &config.timeouts;
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
    let max_head = config.limits.max_response_head_bytes;
    let was_head = req.method == Method::Head;
    let first_byte = req.first_byte.unwrap_or(t.first_byte);
    match client::read_head(&mut up, rhead, was_head, max_head, first_byte, sent_at).await {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::upstream::dns::Resolver;
    use aigw_loadtest::mock::{MockConfig, MockServer};
    use std::sync::Arc;

    /// Outcome of one attempt as the tests compare it.
    #[derive(Debug, PartialEq, Eq)]
    enum Seen {
        Head(u16),
        Failed {
            failure: String,
            retryable: bool,
            status: u16,
        },
    }

    /// Runs one attempt on a fresh shard context against `base_url`, with the
    /// mock fault `fault` asked for in the request.
    fn attempt_at(base_url: &str, fault: &str) -> Seen {
        let toml = format!(
            "[timeouts]\nfirst_byte = \"300ms\"\nupstream_connect = \"2s\"\n[providers.up]\nbase_url = \"{base_url}\"\n"
        );
        let config = Arc::new(Config::from_toml_with_env(&toml, &|_| None).unwrap());
        let request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: up\r\nx-mock-error: {fault}\r\ncontent-length: 2\r\n\r\n{{}}"
        );
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(128 << 10)
            .spawn(move || async move {
                let keys = crate::auth::Registry::new(&config.keys, vec![]);
                let shared = crate::server::shard::Shared {
                    keys,
                    limiter: crate::limit::Limiter::new(1),
                    budgets: crate::budget::Budgets::new(),
                };
                let ctx = ShardCtx::new(0, config, Resolver::new(), None, None, shared);
                let provider = ctx.providers()["up"].clone();
                let req = AttemptRequest {
                    bytes: request.as_bytes(),
                    method: Method::Post,
                    path: "/v1/chat/completions",
                    body: b"{}",
                    request_id: 1,
                    first_byte: None,
                };
                let mut rh = ResponseHead::default();
                match attempt(&ctx, &provider, &req, &mut rh).await {
                    Ok(_) => Seen::Head(rh.status),
                    Err(e) => Seen::Failed {
                        failure: format!("{:?}", e.failure)
                            .split('(')
                            .next()
                            .unwrap_or_default()
                            .to_string(),
                        retryable: e.retryable(),
                        status: e.status(),
                    },
                }
            })
            .expect("executor starts")
            .join()
            .expect("attempt runs")
    }

    fn failed(failure: &str, retryable: bool, status: u16) -> Seen {
        Seen::Failed {
            failure: failure.into(),
            retryable,
            status,
        }
    }

    #[test]
    fn attempt_failures_are_classified_by_whether_a_retry_may_help() {
        let mock = MockServer::start(MockConfig::default()).unwrap();
        let url = mock.base_url();
        assert_eq!(attempt_at(&url, "none"), Seen::Head(200));
        // A provider's own error status is a reply, not an attempt failure.
        assert_eq!(attempt_at(&url, "503"), Seen::Head(503));
        assert_eq!(attempt_at(&url, "reset"), failed("ClosedEarly", true, 502));
        assert_eq!(attempt_at(&url, "hang"), failed("HeadTimeout", true, 504));
        assert_eq!(attempt_at(&url, "malformed"), failed("BadHead", false, 502));
        // Refused: a port bound but not listening.
        let sock = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = sock.local_addr().unwrap().port();
        drop(sock);
        let refused = attempt_at(&format!("http://127.0.0.1:{port}/v1"), "none");
        assert_eq!(refused, failed("Unreachable", true, 502));
    }

    #[test]
    fn only_a_pooled_connection_failing_before_any_byte_is_stale() {
        let e = |failure, pooled| AttemptError {
            failure,
            pooled,
            connected: false,
        };
        assert!(e(Failure::ClosedEarly, true).stale_connection());
        assert!(e(Failure::SendFailed("reset".into()), true).stale_connection());
        assert!(!e(Failure::ClosedEarly, false).stale_connection());
        assert!(!e(Failure::HeadTimeout, true).stale_connection());
        assert!(!e(Failure::BadHead("x".into()), true).stale_connection());
        let g = e(Failure::HeadTimeout, false).to_gateway_error("up", FIRST_BYTE);
        assert_eq!(
            (g.status, g.source, g.code),
            (504, ErrorSource::Provider, "upstream_timeout")
        );
        assert!(g.message.contains("`up`"));
    }
}
