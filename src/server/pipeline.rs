//! The pipeline: the order of a request's stages, top to bottom, in one place.
//!
//! ```text
//! 1 parse head + body      server::conn + http::request   (done before `handle`)
//! 2 route                  route + plan() below: path + model -> provider target
//! 3 upstream               relay::exchange: pooled connection, request written
//! 4 relay + usage tap      relay::exchange: response streamed, usage read
//! 5 settle + record        ShardCtx::finish: the request record is counted
//! ```
//!
//! Authentication, admission (limits, budgets) and the cache slot in between 2
//! and 3 as later issues build them. Each stage is its own module and never calls
//! a later one; data flows one way.

use super::ShardCtx;
use super::conn::{ClientConn, Incoming};
use super::relay;
use crate::config::ProviderKind;
use crate::error::GatewayError;
use crate::http::request::Method;
use crate::json::{self, Rewrite};
use crate::record::{Outcome, RequestRecord, RouteKind};
use crate::route::{self, Route};
use crate::upstream::Provider;
use futures_lite::AsyncWriteExt;
use std::rc::Rc;

/// Where and how one request goes upstream: the output of routing.
pub struct Plan {
    pub provider: Rc<Provider>,
    pub method: Method,
    /// Upstream request target (path and query).
    pub path: Rc<str>,
    /// The unified API: send `ClientConn::rewritten` (model prefix stripped)
    /// with the provider's unified auth lines; otherwise the client's body, untouched.
    pub unified: bool,
    /// aigw asked for stream usage on the client's behalf: drop the usage-only event.
    pub filter_usage_event: bool,
}

/// Runs one request through every stage; returns whether the connection stays open.
pub async fn handle(ctx: &ShardCtx, c: &mut ClientConn, req: &Incoming) -> bool {
    let mut rec = RequestRecord::new(ctx.next_request_id(), ctx.shard, req.started);
    rec.bytes_in = req.consumed as u64;
    let keep_alive = c.head.keep_alive && !ctx.draining.get();

    let keep_alive = match plan(ctx, c, req, &mut rec) {
        // 2. route  ->  3 + 4. upstream exchange, relay with usage tap
        Ok(Some(plan)) => relay::exchange(ctx, c, req, &plan, &mut rec, keep_alive).await,
        Ok(None) => answer_health(c, &mut rec, keep_alive).await,
        Err(e) => answer_error(ctx, c, &mut rec, e, keep_alive).await,
    };

    // 5. settle + record
    rec.total = req.started.elapsed();
    if rec.gateway.is_zero() {
        rec.gateway = rec.total;
    }
    ctx.finish(&rec);
    keep_alive
}

/// Stage 2: turns path, method and body into a [`Plan`]. `Ok(None)` is `/healthz`.
fn plan(
    ctx: &ShardCtx,
    c: &mut ClientConn,
    req: &Incoming,
    rec: &mut RequestRecord,
) -> Result<Option<Plan>, GatewayError> {
    let window = c.buf.filled();
    let target = std::str::from_utf8(c.head.target.get(window))
        .map_err(|_| GatewayError::bad_request("invalid_path", "request path is not UTF-8"))?;
    let method = c.head.method;
    match route::route(target) {
        Route::Health => Ok(None),
        Route::NotFound => Err(GatewayError::not_found(format!(
            "no route for {target}; use /v1/chat/completions, /<provider>/<path> or /v1/<account>/<gateway>/<provider>/<path>"
        ))),
        Route::Traversal => Err(GatewayError::bad_request(
            "invalid_path",
            "path segments `.` and `..` are not allowed",
        )),
        Route::Unified {
            endpoint,
            query,
            cloudflare,
        } => {
            rec.route = if cloudflare {
                RouteKind::Cloudflare
            } else {
                RouteKind::Unified
            };
            if method != Method::Post {
                return Err(GatewayError::method_not_allowed(format!(
                    "/v1/{endpoint} takes POST"
                )));
            }
            let body = req.body.slice(window, &c.body);
            let fields = json::scan_request(body).map_err(|e| {
                GatewayError::bad_request(
                    "invalid_json",
                    format!("request body is not valid JSON: {e}"),
                )
            })?;
            let model = fields.model(body).ok_or_else(|| {
                GatewayError::bad_request(
                    "missing_model",
                    "`model` is required, as \"<provider>/<model>\", e.g. \"openai/gpt-4o-mini\"",
                )
            })?;
            let (provider_name, model_name) = route::split_model(&model).ok_or_else(|| {
                GatewayError::bad_request(
                    "invalid_model",
                    format!("model `{model}` must be \"<provider>/<model>\", e.g. \"openai/gpt-4o-mini\""),
                )
            })?;
            let provider = lookup(ctx, provider_name)?;
            rec.provider = Some(provider.name.clone());
            rec.model = Some(model_name.to_string());
            let stream = fields.is_stream(body);
            rec.stream = stream;
            let wants_usage = stream
                && matches!(provider.kind(), ProviderKind::OpenAi | ProviderKind::Mock)
                && !json::client_asked_usage(body, &fields);
            json::rewrite_body(
                body,
                &fields,
                &Rewrite {
                    model: model_name,
                    include_usage: wants_usage,
                },
                &mut c.rewritten,
            );
            Ok(Some(Plan {
                path: provider.unified_path(endpoint, query),
                provider,
                method,
                unified: true,
                filter_usage_event: wants_usage,
            }))
        }
        Route::Passthrough {
            provider,
            rest,
            cloudflare,
        } => {
            rec.route = if cloudflare {
                RouteKind::Cloudflare
            } else {
                RouteKind::Passthrough
            };
            let provider = match ctx.providers.get(provider) {
                Some(p) => p.clone(),
                None if cloudflare => return Err(unknown_provider(ctx, provider)),
                None => {
                    return Err(GatewayError::not_found(format!(
                        "no route for {target}: `{provider}` is not a configured provider"
                    )));
                }
            };
            rec.provider = Some(provider.name.clone());
            let body = req.body.slice(window, &c.body);
            // The body is forwarded untouched; read model and stream for the record.
            if let Ok(fields) = json::scan_request(body) {
                rec.model = fields.model(body).map(|m| m.into_owned());
                rec.stream = fields.is_stream(body);
            }
            Ok(Some(Plan {
                path: provider.passthrough_path(rest),
                provider,
                method,
                unified: false,
                filter_usage_event: false,
            }))
        }
    }
}

fn lookup(ctx: &ShardCtx, name: &str) -> Result<Rc<Provider>, GatewayError> {
    ctx.providers
        .get(name)
        .cloned()
        .ok_or_else(|| unknown_provider(ctx, name))
}

fn unknown_provider(ctx: &ShardCtx, name: &str) -> GatewayError {
    let mut known: Vec<&str> = ctx.providers.keys().map(String::as_str).collect();
    known.sort_unstable();
    GatewayError::bad_request(
        "unknown_provider",
        format!(
            "unknown provider `{name}`; configured providers: {}",
            known.join(", ")
        ),
    )
}

async fn answer_health(c: &mut ClientConn, rec: &mut RequestRecord, keep_alive: bool) -> bool {
    const BODY: &str = "{\"status\":\"ok\"}";
    c.out.clear();
    let conn_header = match (keep_alive, c.head.http10) {
        (false, _) => "connection: close\r\n",
        (true, true) => "connection: keep-alive\r\n",
        (true, false) => "",
    };
    let head = format!(
        "HTTP/1.{} 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{conn_header}\r\n",
        if c.head.http10 { 0 } else { 1 },
        BODY.len()
    );
    c.out.extend_from_slice(head.as_bytes());
    if c.head.method != Method::Head {
        c.out.extend_from_slice(BODY.as_bytes());
    }
    rec.status = 200;
    rec.bytes_out = c.out.len() as u64;
    c.stream.write_all(&c.out).await.is_ok() && keep_alive
}

/// Answers with a gateway error (the one place such a response is written).
/// The caller finishes the record.
pub async fn answer_error(
    ctx: &ShardCtx,
    c: &mut ClientConn,
    rec: &mut RequestRecord,
    e: GatewayError,
    keep_alive: bool,
) -> bool {
    // An upstream error can come long after the request arrived: if a drain
    // began meanwhile, this answer is the connection's last.
    let keep_alive = keep_alive && !ctx.draining.get();
    c.out.clear();
    let id_header = format!("aigw-request-id: {}{}\r\n", ctx.id_prefix, rec.id);
    e.write_response(&mut c.out, c.head.http10, keep_alive, &id_header);
    rec.status = e.status;
    rec.error_source = Some(e.source.header_value());
    rec.error_code = Some(e.code);
    rec.outcome = Outcome::GatewayError;
    rec.bytes_out = c.out.len() as u64;
    c.stream.write_all(&c.out).await.is_ok() && keep_alive && !e.close
}
