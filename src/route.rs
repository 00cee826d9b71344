//! Routing: the first stage. Turns a request's path (and, for unified routes,
//! its `model`) into a [`Plan`]: which provider, which upstream path, which body.
//!
//! Owns the three URL layouts (unified `/v1/<endpoint>`, passthrough
//! `/<provider>/<rest>`, Cloudflare's `/v1/<account>/<gateway>/...`), refusing
//! paths that climb out of a base URL, and the reading of `model`/`stream` from
//! the body. Asks `providers` for names, paths and the include-usage decision;
//! does not know addresses, keys or connections.

use crate::error::GatewayError;
use crate::http::percent_decode;
use crate::http::request::{Method, RequestView};
use crate::json::{self, BodyError, Rewrite};
use crate::providers::{self, Provider, Providers, Translation, UNIFIED_ENDPOINTS};
use crate::record::RouteKind;
use crate::targets::{Below, Order, Route as TargetRoute, Routes};
use std::borrow::Cow;
use std::ops::Range;
use std::rc::Rc;

/// Which URL layout a path uses.
#[derive(Debug, PartialEq, Eq)]
pub enum Route<'a> {
    Health,
    /// OpenAI-compatible request; the provider comes from `model: "provider/model"`.
    Unified {
        endpoint: &'static str,
        query: &'a str,
        cloudflare: bool,
    },
    /// Forward `rest` (no leading slash, query included) to `provider`'s base URL.
    Passthrough {
        provider: &'a str,
        rest: &'a str,
        cloudflare: bool,
    },
    NotFound,
    /// A path that tries to climb out of its base URL (`..`, also encoded).
    Traversal,
}

impl Route<'_> {
    /// The record's route kind.
    pub fn kind(&self) -> RouteKind {
        match self {
            Route::Unified {
                cloudflare: true, ..
            }
            | Route::Passthrough {
                cloudflare: true, ..
            } => RouteKind::Cloudflare,
            Route::Unified { .. } => RouteKind::Unified,
            Route::Passthrough { .. } => RouteKind::Passthrough,
            _ => RouteKind::Local,
        }
    }
}

/// Where and how one request goes upstream: the output of routing.
#[derive(Debug)]
pub struct Plan {
    pub provider: Rc<Provider>,
    pub method: Method,
    /// Upstream request target (path and query).
    pub path: Rc<str>,
    /// The unified API: the body to send is the rewritten one (model prefix
    /// stripped) with the provider's unified auth; otherwise the client's
    /// body, untouched.
    pub unified: bool,
    /// aigw asked for stream usage on the client's behalf: drop the usage-only event.
    pub filter_usage_event: bool,
    /// The client asked for a stream with usage (`stream_options.include_usage`):
    /// what it receives differs by it, so a cache entry under a custom key does.
    pub asked_usage: bool,
    /// The model as the provider sees it, when the body names one (the
    /// pipeline moves it into the record).
    pub model: Option<String>,
    pub stream: bool,
    /// The output cap the body sets (`max_tokens` and its other names);
    /// `Some(0)` for an endpoint that writes no output tokens
    /// ([`providers::usage::yields_no_output`]: embeddings).
    pub max_tokens: Option<u64>,
    /// How many answers it asks for (`n`): each may use `max_tokens`.
    pub choices: u64,
    /// The request was translated to the provider's format: how its reply
    /// comes back.
    pub translation: Option<Translation>,
    /// The request names a route: its targets in this request's order.
    pub routing: Option<Routing>,
    /// The client speaks Anthropic's format (`/v1/messages`, or passthrough
    /// to an Anthropic provider): its stream errors are Anthropic's events.
    pub anthropic_client: bool,
    /// The unified endpoint the client asked for (`chat/completions`).
    pub endpoint: Option<&'static str>,
}

/// The body a unified request sends. A translation is written once the
/// cache has not answered ([`UnifiedBody::translate`]; a route's, which
/// chooses its target by it, as the plan is made); the common rewrite
/// (the model's prefix cut, usage asked for) as the request goes upstream
/// ([`UnifiedBody::write`]); a cache hit writes neither. A route target's
/// model, or a model name that is not in the body as it stands, is
/// rewritten as the plan is made.
#[derive(Default)]
pub struct UnifiedBody {
    bytes: Vec<u8>,
    pending: Option<Pending>,
}

/// A body left to write.
enum Pending {
    /// What [`json::rewrite_body`] needs, as places in the client's body.
    Rewrite {
        fields: json::RequestFields,
        /// The model name the provider sees, as it stands in the body.
        name: Range<usize>,
        ask_usage: bool,
    },
    /// A translation into the provider's format, and what the plan
    /// expects it to say.
    Translate {
        provider: Rc<Provider>,
        endpoint: &'static str,
        model: String,
        planned: Translation,
    },
}

impl UnifiedBody {
    /// Writes a pending translation of `client_body` (the body the plan was
    /// made from): a body that cannot be said in the provider's format is
    /// the client's error.
    pub fn translate(&mut self, client_body: &[u8]) -> Result<(), GatewayError> {
        let Some(Pending::Translate {
            provider,
            endpoint,
            model,
            planned,
        }) = self
            .pending
            .take_if(|p| matches!(p, Pending::Translate { .. }))
        else {
            return Ok(());
        };
        let t = provider
            .translate(endpoint, client_body, &model, &mut self.bytes)
            .map_err(|e| untranslatable(&provider, e))?;
        // The scan and the translator read `stream` and `include_usage` alike
        // (the scan refuses any body they could read otherwise).
        debug_assert_eq!(t, planned);
        Ok(())
    }

    /// Whether a translation is left to write.
    pub fn translates(&self) -> bool {
        matches!(self.pending, Some(Pending::Translate { .. }))
    }

    /// The bytes to send for `client_body`, a pending rewrite written now.
    pub fn write(&mut self, client_body: &[u8]) -> &[u8] {
        if let Some(Pending::Rewrite {
            fields,
            name,
            ask_usage,
        }) = self
            .pending
            .take_if(|p| matches!(p, Pending::Rewrite { .. }))
        {
            // A piece of a string decoded as text when the plan was made
            // from this body (a plan drops what an earlier one left).
            let rw = Rewrite {
                model: client_body.get(name).unwrap_or_default(),
                include_usage: ask_usage,
            };
            json::rewrite_body(client_body, &fields, &rw, &mut self.bytes);
        }
        &self.bytes
    }
}

fn untranslatable(provider: &Provider, e: providers::translate::TranslateError) -> GatewayError {
    GatewayError::bad_request(
        "untranslatable_request",
        format!(
            "this request cannot be sent to provider `{}`: {}",
            provider.name, e.0
        ),
    )
}

/// Where `name` is in `body`, when it is a piece of it (a model name cut
/// from the body's own `model` string, which had no escapes).
fn place_in(body: &[u8], name: &str) -> Option<Range<usize>> {
    let start = (name.as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    let place = start..start.checked_add(name.len())?;
    (body.get(place.clone()) == Some(name.as_bytes())).then_some(place)
}

/// A routed request: which route, the order it tries targets in, and which
/// one the plan is for now.
#[derive(Debug)]
pub struct Routing {
    pub route: Rc<TargetRoute>,
    pub order: Order,
    /// Index into `order` of the target this plan sends to (`aigw-step`).
    pub step: usize,
    /// The client's query (`?...` or empty).
    pub query: String,
}

/// What routing needs besides the request: the routes, a random draw for
/// weights, and the request's metadata fields (routes choose by them).
pub struct RouteInputs<'a> {
    pub routes: &'a Routes,
    pub below: &'a Below<'a>,
    pub field: &'a dyn Fn(&str) -> Option<String>,
    /// Reads the request body's fields ([`json::scan_request`], or the
    /// shard's memo of bodies it read lately, or with the cache on a read
    /// that also takes the body's canonical digest for its key).
    pub scan: &'a dyn Fn(&[u8]) -> Result<json::RequestFields, BodyError>,
}

/// What routing decided.
#[derive(Debug)]
pub enum Routed {
    /// `GET /healthz`: the gateway answers itself.
    Health,
    Upstream(Plan),
}

/// Classifies a request target into a layout.
pub fn route(target: &str) -> Route<'_> {
    let (path, query) = match target.bytes().position(|b| b == b'?') {
        Some(i) => (&target[..i], &target[i..]),
        None => (target, ""),
    };
    if path == "/healthz" {
        return Route::Health;
    }
    if has_dot_segment(path) {
        return Route::Traversal;
    }
    if let Some(rest) = path.strip_prefix("/v1/") {
        if let Some(ep) = unified(rest) {
            return Route::Unified {
                endpoint: ep,
                query,
                cloudflare: false,
            };
        }
        // Cloudflare layout: /v1/<account>/<gateway>/<provider or compat>/<rest>
        let mut parts = rest.splitn(4, '/');
        let (Some(account), Some(gateway), Some(provider), Some(tail)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Route::NotFound;
        };
        if account.is_empty() || gateway.is_empty() || provider.is_empty() {
            return Route::NotFound;
        }
        if provider == "compat" {
            return match unified(tail) {
                Some(ep) => Route::Unified {
                    endpoint: ep,
                    query,
                    cloudflare: true,
                },
                None => Route::NotFound,
            };
        }
        let start = target.len() - query.len() - tail.len();
        return Route::Passthrough {
            provider,
            rest: &target[start..],
            cloudflare: true,
        };
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Route::NotFound;
    };
    match rest.split_once('/') {
        Some((provider, _)) if !provider.is_empty() => Route::Passthrough {
            provider,
            rest: &target[provider.len() + 2..],
            cloudflare: false,
        },
        _ => Route::NotFound,
    }
}

/// The stage: turns a routed request into a [`Plan`]. A unified request's body
/// is rewritten into `out` (model prefix stripped, include-usage asked).
pub fn plan(
    route: Route<'_>,
    req: &RequestView<'_>,
    providers: &Providers,
    inputs: &RouteInputs<'_>,
    out: &mut UnifiedBody,
) -> Result<Routed, GatewayError> {
    // What an earlier request on the connection left belongs to its body.
    out.pending = None;
    let method = req.head.method;
    match route {
        Route::Health => Ok(Routed::Health),
        Route::NotFound => Err(GatewayError::not_found(format!(
            "no route for {}; use /v1/chat/completions, /<provider>/<path> or /v1/<account>/<gateway>/<provider>/<path>",
            String::from_utf8_lossy(req.target())
        ))),
        Route::Traversal => Err(GatewayError::bad_request(
            "invalid_path",
            "path segments `.` and `..` (also percent-encoded or with `\\`) are not allowed",
        )),
        Route::Unified {
            endpoint, query, ..
        } => {
            if method != Method::Post {
                return Err(GatewayError::method_not_allowed(format!(
                    "/v1/{endpoint} takes POST"
                )));
            }
            let body = req.body;
            let fields = (inputs.scan)(body).map_err(body_error)?;
            let model = fields.model_str(body).map_err(body_error)?.ok_or_else(|| {
                GatewayError::bad_request(
                    "missing_model",
                    "`model` is required, as \"<provider>/<model>\", e.g. \"openai/gpt-4o-mini\"",
                )
            })?;
            let named = model.strip_prefix("dynamic/").unwrap_or(&model);
            if let Some(r) = (!inputs.routes.is_empty())
                .then(|| inputs.routes.get(named))
                .flatten()
            {
                let order = r.order(inputs.field, inputs.below);
                return routed_plan(r, order, endpoint, query, body, &fields, out)
                    .map(Routed::Upstream);
            }
            let (provider_name, model_name) = split_model(&model).ok_or_else(|| {
                // Route names are not listed: the caller may not be authenticated yet.
                let routes = if inputs.routes.is_empty() {
                    ""
                } else {
                    " or a configured route name"
                };
                GatewayError::bad_request(
                    "invalid_model",
                    format!(
                        "model `{}` must be \"<provider>/<model>\", e.g. \"openai/gpt-4o-mini\"{routes}",
                        clip(&model)
                    ),
                )
            })?;
            let provider = providers
                .get(provider_name)
                .cloned()
                .ok_or_else(|| unknown_provider(providers, provider_name))?;
            unified_plan(&provider, model_name, endpoint, query, body, &fields, out)
                .map(Routed::Upstream)
        }
        Route::Passthrough {
            provider,
            rest,
            cloudflare,
        } => {
            let provider = match providers.get(provider) {
                Some(p) => p.clone(),
                None if cloudflare => return Err(unknown_provider(providers, provider)),
                None => {
                    return Err(GatewayError::not_found(format!(
                        "no route for /{provider}/...: `{provider}` is not a configured provider"
                    )));
                }
            };
            // The body is forwarded untouched; model and stream are read for the
            // record (and later limits and the cache). A body that is not JSON
            // is the provider's business, but one whose fields we read appear
            // twice would mean one thing to us and another upstream.
            let (model, stream, max_tokens, choices, asked_usage) = match (inputs.scan)(req.body) {
                Ok(f) => (
                    f.model_str(req.body)
                        .map_err(body_error)?
                        .map(Cow::into_owned),
                    f.is_stream(req.body),
                    f.max_tokens(req.body),
                    f.choices(req.body),
                    json::client_asked_usage(req.body, &f),
                ),
                // A JSON object we cannot read could hide the fields we read
                // (a duplicate past a nesting limit, say): refuse it.
                Err(e @ BodyError::Invalid(_))
                    if req.body.get(json::json_start(req.body)) == Some(&b'{') =>
                {
                    return Err(body_error(e));
                }
                Err(BodyError::Invalid(_)) => (None, false, None, 1, false),
                Err(e) => return Err(body_error(e)),
            };
            // Gemini and Azure name the model in the path, and go by it. Such
            // a path is read as written: a percent-escape or an empty segment
            // could make it name one model to us and another to the provider.
            let model = match provider.path_model(rest) {
                providers::PathModel::Body if !provider.names_model_in_path() => model,
                _ if !plain_path(rest) => {
                    return Err(GatewayError::bad_request(
                        "invalid_path",
                        format!(
                            "a pass-through path to provider `{}` names its model: write it without percent-escapes or empty segments",
                            provider.name
                        ),
                    ));
                }
                providers::PathModel::Body => model,
                providers::PathModel::Path(named) => named.map(str::to_string),
            };
            let stream = stream || provider.path_streams(rest);
            let path = provider.passthrough_path(rest);
            let max_tokens = if providers::usage::yields_no_output(None, &path) {
                Some(0)
            } else {
                max_tokens
            };
            Ok(Routed::Upstream(Plan {
                path,
                anthropic_client: provider.dialect() == providers::Dialect::Anthropic,
                provider,
                method,
                unified: false,
                filter_usage_event: false,
                asked_usage: stream && asked_usage,
                model,
                stream,
                max_tokens,
                choices,
                translation: None,
                routing: None,
                endpoint: None,
            }))
        }
    }
}

/// The plan of a unified request to `provider`'s `model`: the body
/// translated into `out`, or its rewrite (same dialect) left to
/// [`UnifiedBody::write`].
fn unified_plan(
    provider: &Rc<Provider>,
    model_name: &str,
    endpoint: &'static str,
    query: &str,
    body: &[u8],
    fields: &json::RequestFields,
    out: &mut UnifiedBody,
) -> Result<Plan, GatewayError> {
    let stream = fields.is_stream(body);
    let asked_usage = stream && json::client_asked_usage(body, fields);
    let same = provider.dialect() == providers::client_dialect(endpoint);
    // Only the endpoints whose streams take `stream_options.include_usage`:
    // the Responses API reports usage in its `response.completed` event and
    // refuses the option (its `stream_options` has no `include_usage`).
    let wants_usage = same
        && matches!(endpoint, "chat/completions" | "completions")
        && stream
        && provider.injects_stream_usage()
        && !asked_usage;
    // What is left to write takes effect only with the plan it belongs to.
    out.pending = None;
    let pending;
    let translation = if same {
        pending = match place_in(body, model_name) {
            // Written when the request goes upstream (a hit never does).
            Some(name) => Some(Pending::Rewrite {
                fields: fields.clone(),
                name,
                ask_usage: wants_usage,
            }),
            // A route target's model, or a decoded one: written now.
            None => {
                json::rewrite_body(
                    body,
                    fields,
                    &Rewrite {
                        model: model_name.as_bytes(),
                        include_usage: wants_usage,
                    },
                    &mut out.bytes,
                );
                None
            }
        };
        None
    } else {
        let t = provider
            .translation_of(endpoint, stream, json::client_asked_usage(body, fields))
            .map_err(|e| untranslatable(provider, e))?;
        pending = Some(Pending::Translate {
            provider: provider.clone(),
            endpoint,
            model: model_name.to_string(),
            planned: t,
        });
        Some(t)
    };
    let upstream = translation.map_or(endpoint, |t| t.upstream_endpoint());
    let path = match provider.model_path(upstream, model_name, stream) {
        Some(Ok(p)) => p,
        Some(Err(e)) => return Err(GatewayError::bad_request("invalid_model", e.0)),
        None => provider.unified_path(upstream, query),
    };
    out.pending = pending;
    Ok(Plan {
        path,
        provider: provider.clone(),
        method: Method::Post,
        unified: true,
        filter_usage_event: wants_usage && translation.is_none(),
        asked_usage,
        model: Some(model_name.to_string()),
        stream,
        max_tokens: if providers::usage::yields_no_output(Some(endpoint), "") {
            Some(0)
        } else {
            fields.max_tokens(body)
        },
        choices: fields.choices(body),
        translation,
        routing: None,
        anthropic_client: endpoint == "messages",
        endpoint: Some(endpoint),
    })
}

/// The plan of a routed request: for the first target of `order` that can
/// take the request (targets whose format cannot express it are left out of
/// the order); none: the first target's reason.
pub fn routed_plan(
    route: &Rc<TargetRoute>,
    mut order: Order,
    endpoint: &'static str,
    query: &str,
    body: &[u8],
    fields: &json::RequestFields,
    out: &mut UnifiedBody,
) -> Result<Plan, GatewayError> {
    let mut first_error = None;
    while !order.is_empty() {
        let t = order[0].clone();
        // A route chooses its target by what the target's format can say,
        // so its translation is written now.
        match unified_plan(&t.provider, &t.model, endpoint, query, body, fields, out)
            .and_then(|plan| out.translate(body).map(|()| plan))
        {
            Ok(mut plan) => {
                plan.routing = Some(Routing {
                    route: route.clone(),
                    order,
                    step: 0,
                    query: query.to_string(),
                });
                return Ok(plan);
            }
            Err(e) => {
                first_error.get_or_insert(e);
                order.remove(0);
            }
        }
    }
    Err(first_error
        .unwrap_or_else(|| GatewayError::bad_request("invalid_model", "the route has no target")))
}

/// Points a routed plan at step `step` of its order: the body is written
/// anew for that target (its model, its format) into `out`. Returns the
/// target's model.
pub fn retarget(
    plan: &mut Plan,
    step: usize,
    body: &[u8],
    out: &mut UnifiedBody,
) -> Result<String, GatewayError> {
    // Routed plans are unified ones: they name their endpoint.
    let Some(endpoint) = plan.endpoint.filter(|_| plan.routing.is_some()) else {
        return Err(GatewayError::unavailable(
            "the request has no route to move on",
        ));
    };
    let routing = plan.routing.take().expect("checked above");
    let target = routing.order[step].clone();
    let result = json::scan_request(body)
        .map_err(body_error)
        .and_then(|fields| {
            unified_plan(
                &target.provider,
                &target.model,
                endpoint,
                &routing.query,
                body,
                &fields,
                out,
            )
        })
        // Past the cache: a translation is written now, and a body this
        // target cannot take moves the request on like any refusal.
        .and_then(|next| out.translate(body).map(|()| next));
    match result {
        Ok(mut next) => {
            next.routing = Some(Routing { step, ..routing });
            *plan = next;
            Ok(target.model.clone())
        }
        Err(e) => {
            plan.routing = Some(routing);
            Err(e)
        }
    }
}

/// Whether the path part of a pass-through `rest` reads only as written: no
/// `%` and no empty segment.
fn plain_path(rest: &str) -> bool {
    let path = rest.split(['?', '#']).next().unwrap_or_default();
    !path.contains('%') && !path.split('/').any(str::is_empty)
}

fn body_error(e: BodyError) -> GatewayError {
    let code = match e {
        BodyError::Invalid(_) => "invalid_json",
        BodyError::Duplicate(_) => "duplicate_field",
        BodyError::NotBoolean(_) | BodyError::NotInteger(_) | BodyError::NotString(_) => {
            "invalid_field"
        }
        BodyError::CaseVariant(_) => "ambiguous_field",
    };
    GatewayError::bad_request(code, e.to_string())
}

/// A name for an error message, cut to a readable length.
fn clip(s: &str) -> Cow<'_, str> {
    const MAX: usize = 128;
    if s.len() <= MAX {
        return Cow::Borrowed(s);
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}... ({} bytes)", &s[..end], s.len()))
}

fn unknown_provider(providers: &Providers, name: &str) -> GatewayError {
    let mut known: Vec<&str> = providers.keys().map(String::as_str).collect();
    known.sort_unstable();
    GatewayError::bad_request(
        "unknown_provider",
        format!(
            "unknown provider `{}`; configured providers: {}",
            clip(name),
            known.join(", ")
        ),
    )
}

fn unified(rest: &str) -> Option<&'static str> {
    let rest = rest.trim_end_matches('/');
    UNIFIED_ENDPOINTS.iter().copied().find(|e| *e == rest)
}

/// How many rounds of percent-decoding the traversal check looks through
/// (`%252e` is `%2e` after one round, `.` after two).
const DECODE_ROUNDS: usize = 3;

/// A `.` or `..` segment, also percent-encoded (once or more) and with `\`
/// or an encoded `/` or `\` as separator, any of which could climb out of a
/// provider's base path once some server along the way decodes it.
fn has_dot_segment(path: &str) -> bool {
    let bytes = path.as_bytes();
    if memchr::memchr2(b'.', b'%', bytes).is_none() {
        return false; // the common case: nothing to decode, nothing to climb
    }
    let mut cur = Cow::Borrowed(bytes);
    for _ in 0..DECODE_ROUNDS {
        if dot_segment(&cur) {
            return true;
        }
        if !cur.contains(&b'%') {
            return false;
        }
        cur = Cow::Owned(percent_decode(&cur));
    }
    dot_segment(&cur)
}

fn dot_segment(path: &[u8]) -> bool {
    path.split(|b| *b == b'/' || *b == b'\\')
        .any(|seg| seg == b"." || seg == b"..")
}

/// Splits `provider/model` at the first slash.
pub fn split_model(model: &str) -> Option<(&str, &str)> {
    let (p, m) = crate::http::split_byte(model, b'/')?;
    (!p.is_empty() && !m.is_empty()).then_some((p, m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::http::request::RequestHead;

    #[test]
    fn the_three_layouts_route() {
        assert_eq!(
            route("/v1/chat/completions"),
            Route::Unified {
                endpoint: "chat/completions",
                query: "",
                cloudflare: false
            }
        );
        assert_eq!(
            route("/v1/embeddings?x=1"),
            Route::Unified {
                endpoint: "embeddings",
                query: "?x=1",
                cloudflare: false
            }
        );
        assert_eq!(
            route("/openai/chat/completions?a=b"),
            Route::Passthrough {
                provider: "openai",
                rest: "chat/completions?a=b",
                cloudflare: false
            }
        );
        assert_eq!(
            route("/v1/acct/gw/anthropic/v1/messages"),
            Route::Passthrough {
                provider: "anthropic",
                rest: "v1/messages",
                cloudflare: true
            }
        );
        assert_eq!(
            route("/v1/acct/gw/compat/chat/completions"),
            Route::Unified {
                endpoint: "chat/completions",
                query: "",
                cloudflare: true
            }
        );
        assert_eq!(route("/healthz"), Route::Health);
        assert_eq!(route("/"), Route::NotFound);
        assert_eq!(route("/v1/models"), Route::NotFound);
    }

    #[test]
    fn dot_segments_are_refused_however_they_are_spelled() {
        for path in [
            "/openai/../x",
            "/openai/%2E%2e/x",
            "/openai/..%2fx",
            "/openai/..%2Fx",
            "/openai/%2e%2e%2fx",
            "/openai/..\\x",
            "/openai/x\\..\\y",
            "/openai/..%5cx",
            "/openai/%252e%252e/x",
            "/openai/.",
            "/v1/acct/gw/openai/%2e%2e/files",
        ] {
            assert_eq!(route(path), Route::Traversal, "{path}");
        }
        for path in [
            "/openai/v1.2/x",
            "/openai/...",
            "/openai/a..b",
            "/openai/%41",
        ] {
            assert_ne!(route(path), Route::Traversal, "{path}");
        }
    }

    #[test]
    fn model_strings_split_at_the_first_slash() {
        assert_eq!(
            split_model("openrouter/meta/llama"),
            Some(("openrouter", "meta/llama"))
        );
        assert_eq!(split_model("gpt-4o"), None);
        assert_eq!(split_model("/x"), None);
    }

    fn plan_for(target: &str, method: Method, body: &str) -> Result<Routed, GatewayError> {
        plan_into(target, method, body, &mut UnifiedBody::default())
    }

    fn plan_into(
        target: &str,
        method: Method,
        body: &str,
        out: &mut UnifiedBody,
    ) -> Result<Routed, GatewayError> {
        let providers =
            crate::providers::build(&Config::from_toml_with_env("", &|_| None).unwrap());
        let window = target.as_bytes();
        let head = RequestHead {
            method,
            target: crate::http::Span::of(window, window),
            ..RequestHead::default()
        };
        let view = RequestView {
            head: &head,
            window,
            body: body.as_bytes(),
        };
        let routes = crate::targets::Routes::default();
        let inputs = RouteInputs {
            routes: &routes,
            below: &|_| 0,
            field: &|_| None,
            scan: &json::scan_request,
        };
        plan(route(target), &view, &providers, &inputs, out)
    }

    #[test]
    fn a_unified_body_is_written_when_it_goes_upstream_and_only_for_its_own_plan() {
        let mut out = UnifiedBody::default();
        let body = r#"{"model":"mock/echo","stream":true,"messages":[]}"#;
        let Ok(Routed::Upstream(p)) =
            plan_into("/v1/chat/completions", Method::Post, body, &mut out)
        else {
            panic!("planned")
        };
        assert!(p.unified);
        // Nothing is written until the request goes upstream.
        assert!(out.bytes.is_empty() && out.pending.is_some());
        let sent = String::from_utf8(out.write(body.as_bytes()).to_vec()).unwrap();
        assert!(sent.starts_with(r#"{"stream_options":{"include_usage":true},"model":"echo""#));
        // Written once (nothing is left pending): a retry sends the same bytes.
        assert!(out.pending.is_none());
        assert_eq!(out.write(body.as_bytes()), sent.as_bytes());
        // A model name that is not in the body as it stands (escaped) is
        // written at once; a pass-through plan leaves nothing pending.
        let escaped = r#"{"model":"mock/\u0065cho"}"#;
        let _ = plan_into("/v1/chat/completions", Method::Post, escaped, &mut out);
        assert!(out.pending.is_none());
        assert_eq!(out.write(escaped.as_bytes()), br#"{"model":"echo"}"#);
        let _ = plan_into("/v1/chat/completions", Method::Post, body, &mut out);
        let _ = plan_into("/mock/v1/chat/completions", Method::Post, body, &mut out);
        assert!(
            out.pending.is_none(),
            "a stale rewrite never applies to another body"
        );
    }

    #[test]
    fn a_translation_is_written_only_once_the_cache_has_not_answered() {
        let mut out = UnifiedBody::default();
        let body = r#"{"model":"anthropic/claude-x","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
        let Ok(Routed::Upstream(p)) =
            plan_into("/v1/chat/completions", Method::Post, body, &mut out)
        else {
            panic!("planned")
        };
        assert_eq!(
            p.translation,
            Some(Translation::AnthropicToChat {
                include_usage: false
            })
        );
        assert!(out.bytes.is_empty(), "nothing translated while planning");
        out.translate(body.as_bytes()).unwrap();
        let sent = String::from_utf8(out.write(body.as_bytes()).to_vec()).unwrap();
        assert!(sent.contains(r#""model":"claude-x""#), "{sent}");
        // What the provider's format cannot say is the client's error, then.
        let two =
            r#"{"model":"anthropic/claude-x","n":2,"messages":[{"role":"user","content":"hi"}]}"#;
        assert!(plan_into("/v1/chat/completions", Method::Post, two, &mut out).is_ok());
        let e = out.translate(two.as_bytes()).unwrap_err();
        assert_eq!(e.code, "untranslatable_request");
    }

    #[test]
    fn a_unified_request_plans_its_provider_model_and_usage_filter() {
        let Ok(Routed::Upstream(p)) = plan_for(
            "/v1/chat/completions",
            Method::Post,
            r#"{"model":"mock/echo","stream":true}"#,
        ) else {
            panic!("not planned")
        };
        assert_eq!(&*p.provider.name, "mock");
        assert_eq!(p.model.as_deref(), Some("echo"));
        assert!(p.stream && p.filter_usage_event && p.unified);
        assert_eq!(&*p.path, "/v1/chat/completions");
    }

    #[test]
    fn planning_errors_name_the_problem() {
        let code = |target: &str, method, body: &str| match plan_for(target, method, body) {
            Err(e) => (e.status, e.code),
            Ok(r) => panic!("planned {r:?}"),
        };
        assert_eq!(
            code("/v1/chat/completions", Method::Get, ""),
            (405, "method_not_allowed")
        );
        assert_eq!(
            code("/v1/chat/completions", Method::Post, "{"),
            (400, "invalid_json")
        );
        assert_eq!(
            code("/v1/chat/completions", Method::Post, "{}"),
            (400, "missing_model")
        );
        assert_eq!(
            code("/v1/chat/completions", Method::Post, r#"{"model":"gpt"}"#),
            (400, "invalid_model")
        );
        assert_eq!(
            code(
                "/v1/chat/completions",
                Method::Post,
                r#"{"model":"nope/x"}"#
            ),
            (400, "unknown_provider")
        );
        assert_eq!(
            code(
                "/mock/chat/completions",
                Method::Post,
                r#"{"model":"a","model":"b"}"#
            ),
            (400, "duplicate_field")
        );
        assert_eq!(code("/nope/x", Method::Post, ""), (404, "not_found"));
        assert_eq!(
            code("/mock/%2e%2e/x", Method::Get, ""),
            (400, "invalid_path")
        );
        // A passthrough body that is not JSON is the provider's business...
        assert!(plan_for("/mock/files", Method::Post, "not json").is_ok());
        assert!(plan_for("/mock/files", Method::Post, "[1,2]").is_ok());
        // ...but a JSON object aigw cannot read is refused.
        let deep = format!("{{\"x\":{}1{}}}", "[".repeat(300), "]".repeat(300));
        assert_eq!(
            code("/mock/chat/completions", Method::Post, &deep),
            (400, "invalid_json")
        );
        assert_eq!(
            code(
                "/mock/chat/completions",
                Method::Post,
                r#"{"stream":"true"}"#
            ),
            (400, "invalid_field")
        );
    }
}
