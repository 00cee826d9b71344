//! The pipeline: a request's whole story, top to bottom, in the order data flows.
//!
//! ```text
//!   read     conn            head and body off the wire (before `handle`)
//! 0 controls controls        aigw-*/cf-aig-* headers: metadata, event id, collect-log
//! 1 route    route           path + model -> provider, upstream path, body to send
//! 2 attempt  attempt         connection, request sent, response head read; never
//!                            touches the client (a stale pooled connection is
//!                            retried once; a client that leaves cancels it)
//! 3 relay    relay + taps    the body streamed to the client; usage read on the way
//! 4 settle   here            usage, timings, the connection back to the pool
//! 5 record   record()        the record counted (stats) and handed to the request log
//! ```
//!
//! Between 1 and 2: 1a authentication (the gateway key), 1b the cache lookup,
//! 1c admission (rate limits, then the budgets' reservation; a hit, or a
//! follower of a concurrent identical request, is admitted as one: it takes
//! only what rules counting hits count, so an answer that costs nothing is
//! never refused for a token rule or a budget). Stages never call a
//! later stage or this module; they return typed values or a `GatewayError`.
//! Only this module answers the client, and every answer (framing errors
//! included, through [`reject`]) ends in [`record`].

use super::attempt::{self, AttemptError, AttemptRequest, Failure, UpstreamReply};
use super::client::{ClientConn, Incoming, Unreadable};
use super::forward::{self, Upstream};
use super::relay::{self, Ending, Framing, RELAY_WINDOW};
use super::respond::{self, ClientFraming, ClientHead};
use super::respond::{CacheLine, CachedHead};
use super::shard::ShardCtx;
use super::taps::{FillTap, PayloadTap, Tap, TranslateTap, UsageTap};
use crate::auth::{self, Carrier, KeyEntry};
use crate::budget::{self, Rates, Reservation};
use crate::cache::flight::{End as FlightEnd, Flight, FlightHead, Leading};
use crate::cache::key::KeyInput;
use crate::cache::{self, Lookup, entry};
use crate::config::routes::Retry;
use crate::controls::{self, CustomCost, RetryControls};
use crate::cost::{self, Price, Tokens};
use crate::error::{ErrorSource, GatewayError, Shape};
use crate::http::ReadBuf;
use crate::http::request::Method;
use crate::http::response::{ResponseBody, ResponseHead};
use crate::json::Derived;
use crate::limit::{Admission, Ask, Subject};
use crate::net::{Direct, Sink, read_some_tcp};
use crate::record::{
    CacheStatus, LogFacts, MetaValue, Metadata, Outcome, Payload, RequestRecord, RouteKind, Usage,
};
use crate::reqid::now_unix_ms;
use crate::route::{self, Plan, RouteInputs, Routed};
use crate::targets;
use futures_lite::AsyncWriteExt;
use futures_lite::future::FutureExt;
use glommio::net::TcpStream;
use smallvec::SmallVec;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long an attempt waits on the provider before the pipeline starts
/// watching whether the client is still there. Watching costs a poll on the
/// client's socket, so quick answers (most of them) never pay it; a client that
/// leaves a slow generation stops it within this long.
pub const CLIENT_WATCH_AFTER: Duration = Duration::from_millis(100);

/// The status recorded for a request whose client left before any answer
/// (nginx's convention; never sent).
pub const CLIENT_CLOSED: u16 = 499;

/// Runs one request through every stage; returns whether the connection stays open.
pub async fn handle(ctx: &ShardCtx, c: &mut ClientConn, req: &Incoming) -> bool {
    let _in_flight = ctx.in_flight();
    let mut rec = ctx.new_record(req.started);
    rec.bytes_in = req.consumed as u64;
    let keep_alive = c.head.keep_alive && !ctx.draining.get();
    c.anthropic = None;

    // 0. controls, and what the request log will keep of this request
    // Filled in place: moving it out of the stage copied it twice.
    let mut wish = Wish::default();
    if let Err(e) = controls(ctx, c, req, &mut rec, &mut wish) {
        return answer_error(ctx, c, &mut rec, &e, keep_alive).await;
    }

    // 1. route
    let (mut plan, digests) = match plan(ctx, c, req, &wish, &mut rec) {
        Ok((Routed::Upstream(plan), digest)) => {
            c.anthropic = Some(plan.anthropic_client);
            (plan, digest)
        }
        Ok((Routed::Health, _)) => {
            c.out.clear();
            respond::health(&mut c.out, c.head.http10, keep_alive, c.head.method, rec.id);
            rec.status = 200;
            // A load balancer's probes are not requests anyone asks the
            // log or `aigw usage` about (a probe a second would be most of
            // an idle gateway's rows); `/stats` still counts them.
            rec.log = None;
            return answer(ctx, c, &mut rec, keep_alive).await;
        }
        Err(e) => return answer_error(ctx, c, &mut rec, &e, keep_alive).await,
    };

    // 1a. who is calling, and whether their key may use this model
    // With where its token is in the request's window (the cache's scope).
    let (principal, token) = match authenticate(ctx, c, req, &plan, &mut rec) {
        Ok(p) => p,
        Err(e) => return answer_error(ctx, c, &mut rec, &e, keep_alive).await,
    };
    // A routed request may use only the targets its key allows.
    if let (Some(key), true) = (&principal, plan.routing.is_some())
        && let Err(e) = restrict_route(ctx, c, req, &mut plan, key, &mut rec)
    {
        return answer_error(ctx, c, &mut rec, &e, keep_alive).await;
    }

    // The log names the route the request named, whatever answers it (a
    // try, the cache, a request in flight) or refuses it.
    if let (Some(r), Some(log)) = (&plan.routing, rec.log.as_mut()) {
        let mut s = String::from("{\"route\":");
        crate::error::push_json_string(&mut s, &r.route.name);
        s.push_str(",\"tries\":[");
        log.routing = Some(s);
    }

    // The model's price, looked up once (admission reserves by it, the
    // record is charged by it).
    let prices = ctx.prices();
    let priced = rec
        .model
        .as_deref()
        .and_then(|m| prices.get(&plan.provider.name, m));

    // 1b. cache: a hit answers (below); a miss leads or follows the one
    // upstream call. Looked up before admission, which a hit passes on
    // rules that do not count it (token rules, budgets, `requests` rules
    // without `count_cache_hits`): an answer that costs nothing is not
    // refused for them.
    let gateway_key = principal.as_deref().zip(token);
    let cached = cache_lookup(ctx, c, req, &plan, &wish, digests, gateway_key, &mut rec);
    let answered = matches!(cached, Cached::Hit | Cached::Follow(_));

    // 1c. admission: the rate limits this request falls under
    let mut admission = Admission::default();
    let mut reservation = Reservation::default();
    let inputs = AdmitInputs {
        body_len: body_len(c, req),
        plan: &plan,
        key: principal.as_deref(),
        wish: &wish,
        rec: &rec,
        price: priced,
        // Counted at the request's arrival, as its id is stamped.
        now_ms: rec.id.unix_ms(),
        hit: answered,
    };
    // Refused at a route's first target: the next one is tried, as a
    // refusal at any later target moves on (the last refusal is the answer).
    let mut refused_first = None;
    if let Err(e) = admit(ctx, inputs, &mut admission, &mut reservation) {
        let moves_on = plan.routing.as_ref().is_some_and(|r| r.order.len() > 1)
            && matches!(cached, Cached::Off | Cached::Lead(_));
        if !moves_on {
            // Refused: it leads nothing (followers go on their own).
            drop(cached);
            rec.cache = None;
            return answer_error(ctx, c, &mut rec, &e, keep_alive).await;
        }
        refused_first = Some(e);
    }
    let mut lead = None;
    // A follower's wait on a leader whose call failed: the provider's time.
    let mut followed_wait = Duration::ZERO;
    match cached {
        Cached::Off => {}
        Cached::Hit => {
            let extra = answer_headers(&admission, &wish);
            let routing = plan.routing.as_ref();
            return serve_hit(ctx, c, req, &mut rec, keep_alive, &extra, routing).await;
        }
        Cached::Lead(l) => lead = Some(l),
        Cached::Follow(flight) => {
            // `None`: the leader failed, so this request goes upstream on
            // its own, admitted as one that does.
            let extra = answer_headers(&admission, &wish);
            let events = end_events(&plan);
            // Its own time to a response head bounds its wait too. With a
            // route, a timeout falls back: it goes on its own to the targets.
            let own = Own {
                timeout: wish.retry.timeout,
                routed: plan.routing.is_some(),
            };
            let routing = plan.routing.as_ref();
            let waited_from = Instant::now();
            let followed = follow(
                ctx, c, req, &flight, &mut rec, keep_alive, &extra, events, own, routing,
            );
            if let Some(keep) = followed.await {
                record(ctx, &mut rec);
                return keep;
            }
            followed_wait = waited_from.elapsed();
            rec.upstream_waited += followed_wait;
            // The shared answer failed: this request would go upstream on
            // its own, unless its client is gone (or the drain is stopping
            // it), which asks nothing of the provider.
            if ctx.stopping.get() || crate::sys::peer_closed(c.stream.as_raw_fd()) {
                rec.status = CLIENT_CLOSED;
                rec.outcome = Outcome::ClientAborted;
                rec.cost = Some(0.0);
                record(ctx, &mut rec);
                return false;
            }
            admission.undo();
            admission = Admission::default();
            let inputs = AdmitInputs {
                body_len: body_len(c, req),
                plan: &plan,
                key: principal.as_deref(),
                wish: &wish,
                rec: &rec,
                price: priced,
                now_ms: now_unix_ms(),
                hit: false,
            };
            if let Err(e) = admit(ctx, inputs, &mut admission, &mut reservation) {
                return answer_error(ctx, c, &mut rec, &e, keep_alive).await;
            }
            lead = ctx.cache().map(|cache| cache.lead_alone(flight.key));
        }
    }

    // 1d. the cache did not answer: a translated body is written now
    if c.unified.translates() {
        let view = req.view(&c.head, &c.buf, &c.body);
        if let Err(e) = c.unified.translate(view.body) {
            return answer_error(ctx, c, &mut rec, &e, keep_alive).await;
        }
    }

    // 2. attempts (retries, fallbacks): none of them writes to the client
    let upstream_from = Instant::now();
    // When a route moves on to another target, the limits and budgets are
    // those of the target that will answer: the earlier admission is given
    // back and the request admitted again (a refusal skips that target).
    let request_len = body_len(c, req);
    let mut readmit = |plan: &Plan, rec: &RequestRecord| -> Result<(), GatewayError> {
        if ctx.limiter().is_empty() && ctx.budgets().is_empty() {
            return Ok(());
        }
        admission.undo();
        admission = Admission::default();
        reservation = Reservation::default();
        let priced = rec
            .model
            .as_deref()
            .and_then(|m| prices.get(&plan.provider.name, m));
        let inputs = AdmitInputs {
            body_len: request_len,
            plan,
            key: principal.as_deref(),
            wish: &wish,
            rec,
            price: priced,
            now_ms: now_unix_ms(),
            hit: false,
        };
        admit(ctx, inputs, &mut admission, &mut reservation)
    };
    c.followed = lead.as_ref().map(|l| l.flight.clone());
    let attempted = attempts(
        ctx,
        c,
        req,
        &mut plan,
        &wish,
        &mut rec,
        &mut readmit,
        refused_first,
    )
    .await;
    c.followed = None;
    // A route's serving target sets the price (and the record's provider and model).
    let priced = if plan.routing.is_some() {
        rec.model
            .as_deref()
            .and_then(|m| prices.get(&plan.provider.name, m))
    } else {
        priced
    };
    let mut reply = match attempted {
        Ok(reply) => reply,
        Err(Unanswered::Failed(e)) => {
            // The time waiting on the provider is not the gateway's.
            rec.gateway = upstream_from
                .duration_since(req.started)
                .saturating_sub(followed_wait);
            if e.source == ErrorSource::Client {
                // Refused at every target: no cache status, as any refusal.
                rec.cache = None;
            }
            // No answer, so nothing reported spent: zero for a priced model
            // (unknown stays what a model without a price costs).
            if rec.cost.is_none() && (priced.is_some() || wish.custom_cost.is_some()) {
                rec.cost = Some(0.0);
            }
            return answer_error(ctx, c, &mut rec, &e, keep_alive).await;
        }
        Err(Unanswered::ClientGone) => {
            // No response went out; 499 is the status proxies log for that.
            rec.status = CLIENT_CLOSED;
            rec.gateway = upstream_from
                .duration_since(req.started)
                .saturating_sub(followed_wait);
            rec.outcome = Outcome::ClientAborted;
            // The provider had the prompt: it is charged, as an estimate.
            let used = Tokens {
                input: body_len(c, req).div_ceil(4),
                input_includes_cached: true,
                ..Tokens::default()
            };
            rec.cost_estimated = true;
            let custom = under_budget(wish.custom_cost, &reservation, priced);
            price(&mut rec, priced, &used, custom.as_ref());
            rec.count_tokens(used.input, 0);
            admission.settle(Some((used.input, 0)), now_unix_ms);
            if !reservation.is_empty() {
                reservation.settle(rec.cost, ctx.shared_budgets());
            }
            if ctx.stopping.get() {
                // Not its client: the end of a drain stopped the wait (the
                // client can still be told, and may retry elsewhere).
                return answer_error(ctx, c, &mut rec, &stopped_error(), false).await;
            }
            record(ctx, &mut rec);
            return false;
        }
    };

    // 3. relay the reply through the taps
    let rh = &c.rhead;
    rec.status = rh.status;
    if rh.status >= 400 {
        rec.error_source = Some(ErrorSource::Provider);
    }
    rec.upstream_ttfb = Some(reply.ttfb);
    rec.upstream_reused = reply.reused;
    let shape = plan.provider.usage_shape();
    let mut usage = if rh.event_stream {
        UsageTap::sse(shape, plan.filter_usage_event)
    } else {
        let length = match rh.body() {
            ResponseBody::Length(n) => Some(n),
            _ => None,
        };
        UsageTap::json(shape, length, &mut c.scratch)
    };
    // After the usage tap (which reads the provider's own format): the
    // reply in the format the client asked for.
    let mut translate = plan.translation.map(|t| {
        TranslateTap::new(t.reply(
            rh.status,
            rh.event_stream,
            rec.model.as_deref().unwrap_or(""),
        ))
    });
    // After the usage tap, so the cache keeps what the client receives.
    let mut fill = lead.and_then(|l| {
        let shared = ctx.cache().is_some() && ctx.config().cache.shared;
        fill_tap(
            l,
            &plan,
            &rec,
            rh,
            reply.conn.buf.filled(),
            c.head.method,
            shared,
        )
    });
    let shared_flight = fill.as_ref().map(|f| f.leading.flight.clone());
    // Last in the chain, so it keeps what the client receives.
    let mut payload = payload_cap(ctx)
        .filter(|_| rec.log.is_some())
        .map(PayloadTap::new);
    let client_framing = ClientFraming::for_body(
        rh.body(),
        usage.rewrites() || translate.is_some(),
        c.head.http10,
    );
    let events = end_events(&plan);
    // Whether a stream that ends cleanly but short of its end is cut: its
    // record says so, and it gets the event of one that broke off (a
    // translated one from its translator).
    let judged = rh.event_stream
        && rh.status < 400
        && crate::providers::usage::stream_end_known(plan.endpoint, &plan.path);
    if judged && translate.is_none() && client_framing != ClientFraming::Length {
        usage.end_short_streams_with(events.broke_off);
    }
    // `include-cost` on a chunked answer (a stream): its cost is known only
    // after its last byte, so it goes in a trailer field.
    let cost_trailer = wish.include_cost && client_framing == ClientFraming::Chunked;
    let framing = Framing {
        body: rh.body(),
        client: client_framing,
        reusable: rh.reusable,
        events: (rh.event_stream && rh.status < 400).then_some(events),
        deadline: plan
            .routing
            .as_ref()
            .and_then(|r| r.order[r.step].timeout)
            .map(|t| reply.sent_at + t),
        open_end: cost_trailer,
    };
    // A drain may have begun while we waited for the provider: say `close` in
    // the head now rather than closing a connection the client thinks persists.
    let keep = keep_alive && framing.client != ClientFraming::Close && !ctx.draining.get();
    // Earlier tries and the waits between them were the provider's time.
    let pre_upstream = reply
        .sent_at
        .duration_since(req.started)
        .saturating_sub(rec.upstream_waited);
    c.out.clear();
    let head = ClientHead {
        http10: c.head.http10,
        keep_alive: keep,
        method: c.head.method,
        id: rec.id,
        provider: rec.provider.as_deref(),
        model: rec.model.as_deref(),
        pre_upstream,
        ttfb: reply.ttfb,
        framing: framing.client,
        cache: cache_line(&rec),
        limits: Some(&admission),
        step: plan
            .routing
            .as_ref()
            .map(|r| (r.step, rec.route == RouteKind::Cloudflare)),
        cost_trailer,
    };
    respond::provider_head(&mut c.out, &head, rh, reply.conn.buf.filled());
    reply.conn.buf.consume(rh.head_len);
    let translated_whole = translate.is_some() && !rh.event_stream;
    // Only the taps this answer needs: each chunk passes every one.
    let mut chain: SmallVec<[&mut dyn Tap; 4]> = SmallVec::new();
    chain.push(&mut usage);
    if let Some(t) = translate.as_mut() {
        chain.push(t);
    }
    if let Some(f) = fill.as_mut() {
        chain.push(f);
    }
    if let Some(p) = payload.as_mut() {
        chain.push(p);
    }
    let taps: &mut [&mut dyn Tap] = &mut chain;
    let _streaming = c.rhead.event_stream.then(|| ctx.streaming());
    // If this client leaves while others follow its answer, the provider's
    // body is still read to its end for them.
    let carry_on = || shared_flight.as_ref().is_some_and(|f| f.attached() > 0);
    let client_fd = c.stream.as_raw_fd();
    let left = || crate::sys::peer_closed(client_fd);
    // `include-cost` on a whole JSON answer: it is read before it is sent, so
    // its head can say what it cost.
    let hold_for_cost = wish.include_cost
        && matches!(rh.body(), ResponseBody::Length(n) if n <= MAX_HELD_BODY)
        && framing.client == ClientFraming::Length;
    // A translated JSON answer goes out only once whole anyway (it is
    // translated whole): its head waits with it, so an answer the provider
    // cuts off is a 502, not a 200 with no body.
    // A provider's error body that echoes the credential it was sent (a
    // custom upstream quoting its `Authorization` header) would hand the
    // operator's key to every client and to the log: such a body is read
    // whole and the credential masked before it goes anywhere.
    let secrets = if rh.status >= 400
        && framing.client == ClientFraming::Length
        && matches!(rh.body(), ResponseBody::Length(n) if n <= MAX_MASKED_BODY)
    {
        upstream_credentials(&c.up_out)
    } else {
        Vec::new()
    };
    let hold = hold_for_cost || translated_whole || !secrets.is_empty();
    let mut held = Vec::new();
    let mut sink = if hold {
        Sink::Held(&mut held)
    } else {
        Sink::Direct(Direct::new(&mut c.stream))
    };
    let mut relayed = relay::relay(
        &mut sink,
        &mut c.out,
        &mut c.decoded,
        reply.conn,
        framing,
        taps,
        ctx.config().timeouts.stream_idle,
        reply.sent_at + reply.ttfb,
        relay::Watch {
            left: &left,
            carry_on: &carry_on,
            every: &|| relay::check_every(ctx.draining.get()),
            stopping: &|| ctx.stopping.get(),
        },
    )
    .await;

    drop(chain);
    // A successful reply that could not be translated: the provider's
    // failure (what the translator wrote is held, and goes as a 502).
    let unreadable = translate
        .as_ref()
        .and_then(TranslateTap::unreadable)
        .map(str::to_string);

    // 4. settle
    rec.usage = usage.usage();
    rec.ttft = usage.first_event().map(|t| t.duration_since(req.started));
    // A failure the provider reported inside its 200 stream is its error
    // (the cache does not store such a stream either: `cache::storable`).
    let failed = usage.error_event();
    if failed && rec.error_source.is_none() {
        rec.error_source = Some(ErrorSource::Provider);
        rec.error_code = Some("stream_error");
    }
    // A translated stream that sent an event it could not read ends there
    // with an error event: the provider's failure too.
    let stream_unreadable = unreadable.is_some() && !translated_whole;
    if stream_unreadable && rec.error_source.is_none() {
        rec.error_source = Some(ErrorSource::Provider);
        rec.error_code = Some("upstream_bad_response");
    }
    // A stream that ended short of its end: the provider's, as a cut one.
    let cut_short = judged && relayed.body_complete && !usage.ended_well();
    if cut_short && rec.error_source.is_none() {
        rec.error_source = Some(ErrorSource::Provider);
        rec.error_code = Some("stream_truncated");
    }
    // What it used: the provider's report, else (an answer cut before its
    // usage) an estimate from the request and what was relayed.
    let shape = plan.provider.usage_shape();
    let mut used = tokens_of(&rec.usage, shape.input_includes_cached);
    // A stream's estimate counts the text its events carried, not their
    // framing (most of their bytes); a JSON answer's, the bytes sent. Never
    // past what the request lets the provider write: an estimate stays
    // within what admission reserved.
    let most = plan
        .max_tokens
        .map_or(u64::MAX, |m| m.saturating_mul(plan.choices.max(1)));
    // Read only when an estimate is needed (a JSON answer's text is found
    // by reading its tail again).
    let relayed_tokens = || {
        usage
            .relayed_text()
            .unwrap_or(relayed.bytes_out)
            .div_ceil(4)
            .min(most)
    };
    // A whole answer that could not be read is an error (nothing of it
    // reached the client): nothing is estimated.
    let estimate =
        rec.usage.is_empty() && rec.status < 400 && !(translated_whole && unreadable.is_some());
    // A stream that failed before any text used nothing, as an error
    // status does.
    let output = if estimate { relayed_tokens() } else { 0 };
    if estimate && !(failed && output == 0) {
        used = Tokens {
            input: body_len(c, req).div_ceil(4),
            output,
            input_includes_cached: true,
            ..Tokens::default()
        };
        rec.cost_estimated = true;
    } else if !estimate && relayed.ending != Ending::Complete && rec.status < 400 {
        // Cut after a first report (Anthropic counts input at the start):
        // the output is at least what was relayed.
        let relayed = relayed_tokens();
        if used.output < relayed {
            used.output = relayed;
            rec.cost_estimated = true;
        }
    }
    let custom = under_budget(wish.custom_cost, &reservation, priced);
    price(&mut rec, priced, &used, custom.as_ref());
    if hold {
        // Nothing was sent: an answer that could not be read, or that the
        // provider cut off, is the provider's failure for the client, not
        // a 200 carrying an error or half an answer (a cut one closes the
        // connection after it).
        let failure = match (relayed.ending, &unreadable) {
            (Ending::Complete, Some(why)) => {
                Some((format!("its HTTP {} answer is {why}", rec.status), keep))
            }
            (Ending::UpstreamAborted, _) => {
                Some(("its answer was cut off before its end".to_string(), false))
            }
            _ => None,
        };
        if let Some((why, keep)) = failure {
            let e = GatewayError::upstream_bad_response(&plan.provider.name, why);
            c.out.clear();
            let shape = error_shape(c);
            respond::provider_error(
                &mut c.out,
                &e,
                &c.head,
                keep,
                rec.id,
                (rec.provider.as_deref(), rec.model.as_deref()),
                cache_line(&rec),
                shape,
            );
            rec.status = e.status;
            rec.error_source = Some(e.source);
            rec.error_code = Some(e.code);
            relayed.bytes_out = c.out.len() as u64;
            if Direct::new(&mut c.stream).write_all(&c.out).await.is_err() {
                relayed.ending = Ending::ClientAborted;
            }
        } else if relayed.ending == Ending::Complete {
            if hold_for_cost {
                insert_cost_header(&mut held, rec.cost);
            }
            mask(&mut held, &secrets);
            if Direct::new(&mut c.stream).write_all(&held).await.is_err() {
                relayed.ending = Ending::ClientAborted;
            }
        }
    }
    if cost_trailer && relayed.ending == Ending::Complete {
        let mut end = b"0\r\naigw-cost: ".to_vec();
        end.extend_from_slice(cost_text(rec.cost).as_bytes());
        end.extend_from_slice(b"\r\n\r\n");
        if Direct::new(&mut c.stream).write_all(&end).await.is_ok() {
            relayed.bytes_out += end.len() as u64;
        } else {
            relayed.ending = Ending::ClientAborted;
        }
    }
    if let (Some(p), Some(log)) = (payload, rec.log.as_mut()) {
        let mut kept = p.into_payload();
        mask(&mut kept.bytes, &secrets);
        log.response_body = Some(kept);
    }
    rec.bytes_out = relayed.bytes_out;
    rec.gateway = pre_upstream + relayed.last_read.elapsed();
    if relayed.ending == Ending::ClientAborted && relayed.bytes_out == 0 {
        // Nothing reached the client: 499, as a client that left before
        // the provider answered.
        rec.status = CLIENT_CLOSED;
    }
    rec.outcome = match relayed.ending {
        // The client got the stream's start and an error event for the rest.
        Ending::Complete if cut_short || stream_unreadable => Outcome::UpstreamAborted,
        Ending::Complete => Outcome::Completed,
        // The client saw a head and part of a body: it must not see an ending.
        Ending::UpstreamAborted => Outcome::UpstreamAborted,
        Ending::ClientAborted => Outcome::ClientAborted,
    };
    provider_cut(&mut rec);
    if let Some(conn) = relayed.reusable {
        ctx.pool.put(&plan.provider.endpoint.name, conn);
    }
    // A whole answer is shared, and stored if its client received it too;
    // anything else fails the flight (its followers go upstream on their own)
    // as the fill tap drops.
    let fill = fill.filter(|_| unreadable.is_none());
    if let (Some(f), Some(cache), true) = (fill, ctx.cache(), relayed.body_complete) {
        let now = ctx.unix_ms(relayed.last_read);
        let ttl = wish.ttl.unwrap_or(ctx.config().cache.default_ttl);
        let tokens = |t: Option<u64>| t.unwrap_or(0).min(u64::from(u32::MAX)) as u32;
        let used = (
            tokens(rec.usage.input_tokens),
            tokens(rec.usage.output_tokens),
        );
        // What its followers' records say of the answer they share.
        let fault = if failed {
            Some("stream_error")
        } else if cut_short {
            Some("stream_truncated")
        } else {
            None
        };
        if let Some(flight) = f
            .leading
            .complete(now, now + ttl.as_millis() as u64, used, fault)
        {
            if relayed.ending == Ending::Complete {
                cache.store(flight, now);
            } else {
                // A response its client aborted is never stored.
                cache.release(&flight);
            }
        }
    }
    let keep = keep && relayed.ending == Ending::Complete && !ctx.draining.get();
    // Token reservations settle to what was used (an error without usage
    // used nothing).
    rec.count_tokens(used.all_input(), used.output);
    if !admission.is_empty() {
        admission.settle(Some((used.all_input(), used.output)), now_unix_ms);
    }
    drop(admission);
    // Budgets are charged the cost (unknown: nothing can be charged).
    if !reservation.is_empty() {
        reservation.settle(rec.cost, ctx.shared_budgets());
    }

    // 5. record
    record(ctx, &mut rec);
    keep
}

/// Answers a request that could not be read (a framing error, a timeout) like
/// any other error; the connection then closes.
pub async fn reject(ctx: &ShardCtx, c: &mut ClientConn, u: Unreadable) {
    let mut rec = ctx.new_record(u.started);
    if ctx.logging() {
        // The head did not parse, so nothing of it is trusted: `c.head` still
        // describes the previous request on this connection.
        rec.log = Some(Box::default());
    }
    answer_error(ctx, c, &mut rec, &u.error, false).await;
}

/// What the request controls asked for, owned (they outlive the request's
/// buffers' borrow): the cache controls, and the metadata limits are scoped
/// by (moved into the log's facts when the log keeps the request).
#[derive(Default)]
struct Wish {
    ttl: Option<Duration>,
    skip: bool,
    key: Option<String>,
    custom_cost: Option<CustomCost>,
    include_cost: bool,
    retry: RetryControls,
}

/// Stage 0: the request controls. When the request log will keep this request
/// (logging on, and no `collect-log: false`), the record gathers what the log
/// needs: path, user agent, event id, metadata, and the body when payloads are on.
fn controls(
    ctx: &ShardCtx,
    c: &ClientConn,
    req: &Incoming,
    rec: &mut RequestRecord,
    wish: &mut Wish,
) -> Result<(), GatewayError> {
    let view = req.view(&c.head, &c.buf, &c.body);
    let mut read = controls::read(&view, &mut ctx.metadata_memo());
    if let Ok(r) = read.as_mut() {
        wish.ttl = r.cache.ttl;
        wish.skip = r.cache.skip;
        wish.key = r.cache.key.map(str::to_string);
        rec.metadata = r.metadata.take();
        wish.custom_cost = r.custom_cost;
        wish.include_cost = r.include_cost;
        wish.retry = r.retry;
    }
    if !ctx.logging() || read.as_ref().is_ok_and(|c| !c.collect_log) {
        return read.map(|_| ());
    }
    // The path without its query: some clients authenticate with `?key=...`.
    let target = view.target();
    let path = target.split(|b| *b == b'?').next().unwrap_or(target);
    let mut facts = LogFacts {
        path: ctx.intern(path),
        ..LogFacts::default()
    };
    if let Some(cap) = payload_cap(ctx) {
        facts.request_body = Some(Payload::capped(view.body, cap));
    }
    let result = match read {
        Ok(controls) => {
            facts.user_agent = controls.user_agent.map(|ua| ctx.intern(ua));
            facts.event_id = controls.event_id;
            Ok(())
        }
        Err(e) => Err(e),
    };
    rec.log = Some(Box::new(facts));
    result
}

/// The payload cap when the bodies of a request the log keeps are kept too.
fn payload_cap(ctx: &ShardCtx) -> Option<usize> {
    let config = ctx.config();
    (ctx.logging() && config.logs.payloads).then_some(config.logs.payload_max)
}

/// Stage 1: the route, then the plan; the record learns the route kind, the
/// provider, model and whether it streams.
/// With the routing, the xxh3-128 of the body when the cache will want it.
fn plan(
    ctx: &ShardCtx,
    c: &mut ClientConn,
    req: &Incoming,
    wish: &Wish,
    rec: &mut RequestRecord,
) -> Result<(Routed, Option<BodyDigests>), GatewayError> {
    let view = req.view(&c.head, &c.buf, &c.body);
    let target = std::str::from_utf8(view.target())
        .map_err(|_| GatewayError::bad_request("invalid_path", "request path is not UTF-8"))?;
    let route = route::route(target);
    rec.route = route.kind();
    let metadata = rec.metadata.as_ref();
    let routes = ctx.routes();
    // With the cache on, requests repeat byte for byte: their digest finds
    // the body's fields here, and the canonical digest its cache key needs.
    let digest = (ctx.cache().is_some() && !wish.skip && view.head.method == Method::Post)
        .then(|| xxhash_rust::xxh3::xxh3_128(view.body));
    let body = view.body;
    let derived = std::cell::Cell::new(Derived::NotKept);
    let scan = |b: &[u8]| match digest {
        Some(d) if std::ptr::eq(b, body) => {
            ctx.scan_remembered(b, d, wish.key.is_none())
                .map(|(fields, got)| {
                    derived.set(got);
                    fields
                })
        }
        _ => crate::json::scan_request(b),
    };
    let inputs = RouteInputs {
        routes: &routes,
        below: &|n| ctx.random_below(n),
        field: &|name| targets::metadata_field(metadata, name),
        scan: &scan,
    };
    let mut routed = route::plan(route, &view, &ctx.providers(), &inputs, &mut c.unified)?;
    if let Routed::Upstream(p) = &mut routed {
        rec.provider = Some(p.provider.name.clone());
        // The record is where the model lives from here on.
        rec.model = p.model.take();
        rec.stream = p.stream;
    }
    let digests = digest.map(|raw| BodyDigests {
        raw,
        canonical: derived.get(),
    });
    Ok((routed, digests))
}

/// A body's xxh3-128 (the cache wants it) and what is known of its
/// canonical digest: from the shard's memo, or from a first read that took
/// it with the fields (`ShardCache::scan`).
#[derive(Clone, Copy)]
struct BodyDigests {
    raw: u128,
    canonical: Derived,
}

/// Where [`secret_upstream`] found a gateway key that does not go upstream
/// but would be logged and exported.
const LOGGED_HEADER: &str = "a header whose value aigw logs (aigw-metadata, aigw-event-id, ...)";

/// What the log keeps of a path or user agent that held a gateway key.
const WITHHELD: &str = "(withheld: it held a gateway key)";

/// Where a gateway secret would go to the provider, if anywhere: in the URL
/// (as written, or percent-decoded as the provider reads it), in a header
/// that is forwarded (in any form: `Token <key>`, a list, quoted, or Basic
/// credentials), or as the model name. Only the header that presented it
/// to aigw, which never goes upstream, may hold one.
fn secret_upstream(
    view: &crate::http::request::RequestView<'_>,
    plan: &Plan,
    model: Option<&str>,
    injected: bool,
    presented_at: Option<usize>,
) -> Option<&'static str> {
    // From the target to the last header (spans are in the window).
    let from = view.head.target.start;
    let to = view
        .head
        .headers
        .last()
        .map_or(view.head.target.end, |h| h.value.end.max(h.name.end));
    let head = view
        .window
        .get(from as usize..to as usize)
        .unwrap_or_default();
    for at in auth::secret_offsets(head) {
        let at = from + at as u32;
        // The credential presented to aigw (`presented_at`, in a header
        // that stays with aigw), as it usually is: nothing to look up.
        if presented_at == Some(at as usize) {
            continue;
        }
        let header = view
            .head
            .headers
            .iter()
            .find(|h| h.name.start <= at && at < h.value.end.max(h.name.end));
        match header.map(|h| h.name.get(view.window)) {
            // Only a credential header that stays with aigw may hold one;
            // aigw's own others (`aigw-metadata`, `aigw-event-id`, ...) are
            // logged, counted and exported as labels.
            Some(name) if forward::skip_upstream(name, injected) => {
                if !auth::credential_header(name) {
                    return Some(LOGGED_HEADER);
                }
            }
            Some(_) => return Some("a header that goes upstream"),
            None => return Some("the URL"),
        }
    }
    // As written, the target was in the pass above; what goes upstream of
    // it (`plan.path`) is a part of it, or the model, checked below.
    if auth::decoded_carries_secret(view.target())
        || auth::decoded_carries_secret(plan.path.as_bytes())
    {
        return Some("the URL");
    }
    if model.is_some_and(|m| auth::carries_secret(m.as_bytes())) {
        return Some("the model name");
    }
    // `Authorization` goes upstream exactly when aigw injects no key.
    let basic = !injected
        && view.headers().any(|(name, value)| {
            name.eq_ignore_ascii_case(b"authorization")
                && !forward::skip_upstream(name, injected)
                && auth::basic_carries_secret(value)
        });
    basic.then_some("Basic credentials that go upstream")
}

/// Where a presented gateway token is in the request's window: start, length.
type TokenSpan = (usize, usize);

/// Stage 1a: the gateway key. When keys exist or `auth.required` is set, the
/// presented key must be one of them (401) and allow the routed model (403);
/// the record learns its id and the log its metadata. See [`auth::presented`]
/// for which header carries it. With the key, where its token is in the
/// request's window (start, length).
fn authenticate(
    ctx: &ShardCtx,
    c: &ClientConn,
    req: &Incoming,
    plan: &Plan,
    rec: &mut RequestRecord,
) -> Result<(Option<Arc<KeyEntry>>, Option<TokenSpan>), GatewayError> {
    let required = ctx.config().auth.required;
    let keys = ctx.keys();
    if !required && keys.is_empty() {
        return Ok((None, None));
    }
    let view = req.view(&c.head, &c.buf, &c.body);
    let headers = view.headers();
    // A route injects a key only if every target carries one: otherwise a
    // client credential could travel on to a target without.
    let injected = match &plan.routing {
        None => plan.provider.auth_lines(plan.unified).is_some(),
        Some(r) => r
            .order
            .iter()
            .all(|t| t.has_keys() || t.provider.auth_lines(true).is_some()),
    };
    let presented = auth::presented(headers, injected);
    // Where the token presented to aigw starts in the window.
    let presented_at = match presented {
        Some((Carrier::Gateway | Carrier::Provider, token)) => {
            let at = (token.as_ptr() as usize).wrapping_sub(view.window.as_ptr() as usize);
            (at < view.window.len()).then_some(at)
        }
        _ => None,
    };
    if let Some(place) = secret_upstream(&view, plan, rec.model.as_deref(), injected, presented_at)
    {
        return Err(secret_refused(place, plan));
    }
    let found = match presented {
        Some((Carrier::Misplaced, _)) => return Err(misplaced_refused(plan)),
        Some((Carrier::Conflicting, _)) => {
            return Err(GatewayError::unauthorized(
                "the request carries two different gateway credentials: send one",
            ));
        }
        Some((carrier, secret)) => match keys.find(secret) {
            Some(k) => Some(k),
            // A credential for the gateway, or one that may only be one.
            None if required
                || carrier == Carrier::Gateway
                || secret.starts_with(auth::SECRET_PREFIX.as_bytes()) =>
            {
                return Err(GatewayError::unauthorized(
                    "the gateway key is not valid (unknown or revoked)",
                ));
            }
            None => None,
        },
        None if required => {
            return Err(GatewayError::unauthorized(
                if injected && plan.anthropic_client {
                    // What the anthropic SDK sends its `api_key` as.
                    "this gateway requires a key: send `x-api-key: <key>` (or `Authorization: Bearer <key>`)"
                } else if injected {
                    "this gateway requires a key: send `Authorization: Bearer <key>`"
                } else {
                    "this gateway requires a key: send `aigw-authorization: Bearer <key>` (your provider key stays in `Authorization`)"
                },
            ));
        }
        None => None,
    };
    let Some(key) = found else {
        return Ok((None, None));
    };
    let token = presented_at.zip(presented.map(|(_, t)| t.len()));
    rec.key_id = Some(key.id.clone());
    if !key.metadata.is_empty() {
        // The key's attribution wins over the request's own of the same name.
        let meta = rec.metadata.get_or_insert_with(Metadata::default);
        // Copied first when the shard's memo shares it.
        let entries = Arc::make_mut(&mut meta.0);
        for (k, v) in &key.metadata {
            entries.retain(|(name, _)| name != k);
            entries.push((k.clone(), MetaValue::Str(v.clone())));
        }
    }
    let provider = &*plan.provider.name;
    // A route's targets are checked one by one (`restrict_route`).
    if plan.routing.is_none() && !key.allows(provider, rec.model.as_deref()) {
        return Err(model_refused(&key, provider, rec.model.as_deref()));
    }
    Ok((Some(key), token))
}

// The refusals of `authenticate`, cold and out of line: their formatting
// in its midst cost every request instruction-cache misses.

/// A gateway secret would reach the provider (`place`, from
/// `secret_upstream`): refused (its answer, as every error's, keeps it out
/// of the log: [`withhold_secrets`]).
#[cold]
#[inline(never)]
fn secret_refused(place: &str, plan: &Plan) -> GatewayError {
    let goes = if place == LOGGED_HEADER {
        String::new()
    } else {
        format!(", which goes to provider `{}`", plan.provider.name)
    };
    GatewayError::unauthorized(format!(
        "a gateway key was found in {place}{goes}: send it only as `aigw-authorization: Bearer <key>`, or as `Authorization: Bearer <key>` where aigw holds the provider's key"
    ))
}

/// What of an error's record holds a gateway secret is withheld from the
/// log, `/stats` and `/metrics`: the model, path, user agent and event id
/// (replaced), the metadata (dropped: it is counted by value) and a kept
/// request body. Every error answer runs it: one refused before the secret
/// checks of stage 1a (an unknown path or model, a body that is not JSON)
/// kept the secret as sent.
#[cold]
#[inline(never)]
fn withhold_secrets(rec: &mut RequestRecord) {
    let holds = |s: &str| auth::carries_secret(s.as_bytes());
    if rec.model.as_deref().is_some_and(holds) {
        rec.model = None;
    }
    if let Some(l) = rec.log.as_mut() {
        if holds(&l.path) {
            l.path = Arc::from(WITHHELD);
        }
        if l.user_agent.as_deref().is_some_and(holds) {
            l.user_agent = Some(Arc::from(WITHHELD));
        }
        if l.event_id.as_deref().is_some_and(holds) {
            l.event_id = Some(WITHHELD.to_string());
        }
        if l.request_body
            .as_ref()
            .is_some_and(|p| auth::carries_secret(&p.bytes))
        {
            l.request_body = None;
        }
    }
    // Its attribution goes too (counted in `/stats` and `/metrics` by value).
    let meta_holds = rec.metadata.as_ref().is_some_and(|m| {
        m.0.iter()
            .any(|(k, v)| holds(k) || matches!(v, MetaValue::Str(s) if holds(s)))
    });
    if meta_holds {
        rec.metadata = None;
    }
}

#[cold]
#[inline(never)]
fn misplaced_refused(plan: &Plan) -> GatewayError {
    GatewayError::unauthorized(format!(
        "a gateway key was sent in `Authorization`, `x-api-key`, `api-key` or `x-goog-api-key`, which go to provider `{}` (aigw holds no key for it): send it only as `aigw-authorization: Bearer <key>`",
        plan.provider.name
    ))
}

#[cold]
#[inline(never)]
fn model_refused(key: &KeyEntry, provider: &str, model: Option<&str>) -> GatewayError {
    let what = model.map_or_else(
        || format!("provider `{provider}`"),
        |m| format!("model `{provider}/{m}`"),
    );
    GatewayError::forbidden(
        "model_not_allowed",
        format!("key `{}` may not use {what}", key.id),
    )
}

/// Settles a routed request's targets once its key is known: the key's
/// metadata (which wins over the request's) chooses the route's variant, and
/// only the targets the key allows stay, in order; none is a 403 naming the
/// route. When the first target changes, the plan moves to the new first.
fn restrict_route(
    ctx: &ShardCtx,
    c: &mut ClientConn,
    req: &Incoming,
    plan: &mut Plan,
    key: &KeyEntry,
    rec: &mut RequestRecord,
) -> Result<(), GatewayError> {
    let Some(routing) = plan.routing.as_ref() else {
        return Ok(());
    };
    let route = routing.route.clone();
    let current = routing.order[routing.step].clone();
    let mut order = if key.metadata.is_empty() || !route.has_variants() {
        routing.order.clone()
    } else {
        // The key's fields are merged into the record's metadata (`authenticate`).
        let field = |name: &str| targets::metadata_field(rec.metadata.as_ref(), name);
        route.order(&field, &|n| ctx.random_below(n))
    };
    order.retain(|t| key.allows(&t.provider.name, Some(&t.model)));
    if order.is_empty() {
        return Err(GatewayError::forbidden(
            "model_not_allowed",
            format!(
                "key `{}` may use no target of route `{}`",
                key.id, route.name
            ),
        ));
    }
    if std::rc::Rc::ptr_eq(&order[0], &current) {
        if let Some(r) = plan.routing.as_mut() {
            r.order = order;
            r.step = 0;
        }
        return Ok(());
    }
    let (Some(endpoint), query) = (plan.endpoint, routing.query.clone()) else {
        return Ok(());
    };
    let view = req.view(&c.head, &c.buf, &c.body);
    let fields = crate::json::scan_request(view.body)
        .map_err(|e| GatewayError::bad_request("invalid_json", e.to_string()))?;
    *plan = route::routed_plan(
        &route,
        order,
        endpoint,
        &query,
        view.body,
        &fields,
        &mut c.unified,
    )?;
    rec.provider = Some(plan.provider.name.clone());
    rec.model = plan.model.take();
    Ok(())
}

/// The gateway's header lines for an answer no provider made for this
/// request (a cache hit or a shared answer): rate-limit counts, and its cost
/// (nothing) when asked.
fn answer_headers(admission: &Admission, wish: &Wish) -> Vec<u8> {
    // No allocation when there is nothing to say.
    let mut h = Vec::new();
    admission.write_headers(&mut h);
    if wish.include_cost {
        h.extend_from_slice(b"aigw-cost: 0\r\n");
    }
    h
}

/// The request's own prices; under a budget, never below the table's.
fn under_budget(
    custom: Option<CustomCost>,
    reservation: &Reservation,
    price: Option<&Price>,
) -> Option<CustomCost> {
    match custom {
        Some(c) if !reservation.is_empty() => Some(cost::floored(&c, price)),
        c => c,
    }
}

/// The request body's length.
fn body_len(c: &ClientConn, req: &Incoming) -> u64 {
    req.view(&c.head, &c.buf, &c.body).body.len() as u64
}

/// Largest JSON answer read whole before it is sent (for `include-cost`).
const MAX_HELD_BODY: u64 = 16 << 20;

/// A usage report as the cost arithmetic reads it.
fn tokens_of(u: &Usage, input_includes_cached: bool) -> Tokens {
    Tokens {
        input: u.input_tokens.unwrap_or(0),
        output: u.output_tokens.unwrap_or(0),
        cached: u.cached_tokens.unwrap_or(0),
        cache_write: u.cache_write_tokens.unwrap_or(0),
        input_includes_cached,
    }
}

/// The record learns the request's cost (unknown without a price) and its
/// share of the model's context window.
fn price(
    rec: &mut RequestRecord,
    found: Option<&Price>,
    used: &Tokens,
    custom: Option<&CustomCost>,
) {
    rec.cost = cost::cost(found, custom, used);
    rec.context_share = found
        .and_then(|p| p.context_window)
        .map(|w| used.all_input() as f64 / w as f64);
}

/// Adds `aigw-cost` (USD; `unknown` without a price) to a whole answer's head.
fn insert_cost_header(answer: &mut Vec<u8>, cost: Option<f64>) {
    let Some(end) = memchr::memmem::find(answer, b"\r\n\r\n") else {
        return;
    };
    let line = format!("\r\naigw-cost: {}", cost_text(cost));
    answer.splice(end..end, line.into_bytes());
}

/// An `aigw-cost` value: USD to the pico-dollar, as the log keeps it
/// (`0.00000000545`, `0.0012`, `0`), or `unknown` without a price.
fn cost_text(cost: Option<f64>) -> String {
    match cost {
        Some(usd) => {
            let mut s = format!("{usd:.12}");
            let kept = s.trim_end_matches('0').trim_end_matches('.').len();
            s.truncate(kept);
            s
        }
        None => "unknown".to_string(),
    }
}

/// What stage 1c reads of a request.
#[derive(Clone, Copy)]
struct AdmitInputs<'a> {
    body_len: u64,
    plan: &'a Plan,
    key: Option<&'a KeyEntry>,
    wish: &'a Wish,
    rec: &'a RequestRecord,
    price: Option<&'a Price>,
    /// When the request is counted (Unix ms).
    now_ms: u64,
    /// The cache answers it ([`limit::Ask::hit`]; no budget counts it).
    hit: bool,
}

/// Stage 1c: admission under the rate limits, then the budgets' reservation
/// of the request's worst-case cost (none configured: nothing to do). Both
/// are filled where they live (the caller's, empty), not moved.
fn admit(
    ctx: &ShardCtx,
    inputs: AdmitInputs<'_>,
    admission: &mut Admission,
    reservation: &mut Reservation,
) -> Result<(), GatewayError> {
    let AdmitInputs {
        body_len,
        plan,
        key,
        wish,
        rec,
        price,
        now_ms,
        hit,
    } = inputs;
    let (limiter, budgets) = (ctx.limiter(), ctx.budgets());
    if limiter.is_empty() && budgets.is_empty() {
        return Ok(());
    }
    let subject = Subject {
        key_id: key.map(|k| &*k.id),
        provider: &plan.provider.name,
        model: rec.model.as_deref(),
        key_metadata: key.map_or(&[][..], |k| &k.metadata),
        metadata: rec.metadata.as_ref(),
    };
    limiter.admit_into(
        &Ask {
            subject,
            // About four bytes of JSON per token.
            input_estimate: body_len.div_ceil(4),
            max_tokens: plan.max_tokens,
            choices: plan.choices,
            now_ms,
            hit,
        },
        admission,
    )?;
    if budgets.is_empty() || hit {
        return Ok(());
    }
    // Prices per token, the request's own over the table's, never below them.
    let floored = wish.custom_cost.map(|c| cost::floored(&c, price));
    let custom = floored.as_ref();
    let input = custom
        .and_then(|c| c.per_token_in)
        .or(price.map(|p| p.input / 1e6));
    let output = custom
        .and_then(|c| c.per_token_out)
        .or(price.map(|p| p.output / 1e6));
    let rates = input
        .zip(output)
        .map(|(input, output)| Rates { input, output });
    let ask = budget::Ask {
        rates,
        input_bytes: body_len,
        max_tokens: plan.max_tokens,
        choices: plan.choices,
        now_ms,
    };
    budgets
        .reserve_into(&subject, &ask, reservation)
        .inspect_err(|_| {
            // Refused: what the rate limits took goes back.
            admission.undo();
        })
}

/// What the cache stage decided.
enum Cached {
    /// The cache is off, or this request is not one it keeps.
    Off,
    /// A fresh entry answers (it waits in the shard's cache; it was looked
    /// up at the request's arrival, where the answer's `Age` counts to).
    Hit,
    /// Go upstream and share the answer.
    Lead(Leading),
    /// An identical request is upstream: share its answer.
    Follow(Arc<Flight>),
}

/// Stage 1b: the cache lookup. Keeps POST requests of the provider routes;
/// `skip-cache`, other methods and bodies without a key bypass it. The
/// gateway key and where its token is scope the entry by the key's id.
#[allow(clippy::too_many_arguments)]
fn cache_lookup(
    ctx: &ShardCtx,
    c: &ClientConn,
    req: &Incoming,
    plan: &Plan,
    wish: &Wish,
    digests: Option<BodyDigests>,
    gateway_key: Option<(&KeyEntry, TokenSpan)>,
    rec: &mut RequestRecord,
) -> Cached {
    let Some(cache) = ctx.cache() else {
        return Cached::Off;
    };
    let view = req.view(&c.head, &c.buf, &c.body);
    if wish.skip
        || c.head.method != Method::Post
        || !cache::repeatable(plan.endpoint, &plan.path, view.body)
    {
        rec.cache = Some(CacheStatus::Bypass);
        return Cached::Off;
    }
    let headers = view.headers();
    let config = ctx.config();
    // A routed request is keyed by its route (any target may answer it).
    // A translated request by the format its client speaks too (the same
    // upstream path serves `/v1/chat/completions` and `/v1/messages`).
    // Either way with the query that goes upstream (it may change the answer).
    let query = crate::http::split_byte(&plan.path, b'?').map(|(_, q)| q);
    let by_endpoint = |endpoint: &'static str| match query {
        Some(q) => std::borrow::Cow::Owned(format!("{endpoint}?{q}")),
        None => std::borrow::Cow::Borrowed(endpoint),
    };
    let (provider, path): (&str, std::borrow::Cow<'_, str>) =
        match (&plan.routing, plan.translation, plan.endpoint) {
            (Some(r), _, Some(endpoint)) => (&r.route.name, by_endpoint(endpoint)),
            (None, Some(_), Some(endpoint)) => (&plan.provider.name, by_endpoint(endpoint)),
            _ => (&plan.provider.name, std::borrow::Cow::Borrowed(&*plan.path)),
        };
    let input = KeyInput {
        scope: cache::scope(
            config.cache.shared,
            &config.cache.credential_headers,
            headers,
            query.unwrap_or(""),
            gateway_key
                .and_then(|(key, (at, len))| Some((view.window.get(at..at + len)?, &*key.id))),
        ),
        provider,
        path: &path,
        body: view.body,
        canonical: match digests.map(|d| d.canonical) {
            Some(Derived::Known(canonical)) => Some(canonical),
            _ => None,
        },
        custom: wish.key.as_deref(),
        form: cache::form(
            plan.unified,
            plan.routing
                .iter()
                .flat_map(|r| r.order.iter().map(|t| (&*t.provider.name, &*t.model))),
        ),
        stream: plan.stream,
        asked_usage: plan.asked_usage,
    };
    // Freshness is judged at the request's arrival, as its id is stamped.
    let now_ms = rec.id.unix_ms();
    let (key, canonical, lookup) = cache.lookup(&input, now_ms);
    // A remembered body keeps its canonical digest: the next time, one
    // probe of the shard's memo finds its fields and its key's body part.
    if let (Some(d), Some(canonical)) = (digests, canonical)
        && d.canonical == Derived::Unknown
    {
        ctx.note_canonical(d.raw, canonical);
    }
    rec.cache_key = key.map(|k| k.0);
    let (cached, status) = match lookup {
        Lookup::Hit => (Cached::Hit, CacheStatus::Hit),
        Lookup::Bypass => (Cached::Off, CacheStatus::Bypass),
        Lookup::Lead(l, status) => (Cached::Lead(l), status),
        Lookup::Follow(f, _) => (Cached::Follow(f), CacheStatus::Coalesced),
    };
    rec.cache = Some(status);
    cached
}

/// The cache status header for the record's cache status, if any.
fn cache_line(rec: &RequestRecord) -> Option<CacheLine> {
    rec.cache.map(|status| CacheLine {
        cloudflare: rec.route == RouteKind::Cloudflare,
        status,
    })
}

/// Answers from the entry the lookup found: no provider is asked.
async fn serve_hit(
    ctx: &ShardCtx,
    c: &mut ClientConn,
    req: &Incoming,
    rec: &mut RequestRecord,
    keep_alive: bool,
    limits: &[u8],
    routing: Option<&crate::route::Routing>,
) -> bool {
    // One clock read for the head's gateway time and a stream's first token.
    let gateway = req.started.elapsed();
    // The entry stays borrowed only while the answer is built.
    let built = ctx.cache().and_then(|cache| {
        let bytes = cache.hit();
        let e = entry::view(&bytes).ok()?;
        credit_served(rec, e.served);
        c.out.clear();
        let step = served_step(routing, rec);
        let head = CachedHead {
            http10: c.head.http10,
            keep_alive,
            id: rec.id,
            provider: rec.provider.as_deref(),
            model: rec.model.as_deref(),
            status: e.status,
            cache: CacheLine {
                cloudflare: rec.route == RouteKind::Cloudflare,
                status: CacheStatus::Hit,
            },
            age: Some(rec.id.unix_ms().saturating_sub(e.created_ms) / 1000),
            gateway,
            length: Some(e.body.len()),
            limits,
            step,
        };
        respond::cached_head(&mut c.out, &head, e.head);
        c.out.extend_from_slice(e.body);
        Some((e.status, e.input_tokens, e.output_tokens, e.flags))
    });
    let Some((status, input, output, flags)) = built else {
        let e = GatewayError::unavailable("the cache entry could not be read; retry the request");
        return answer_error(ctx, c, rec, &e, keep_alive).await;
    };
    rec.status = status;
    // No provider was asked: nothing was spent.
    rec.cost = Some(0.0);
    rec.usage = Usage {
        input_tokens: Some(u64::from(input)),
        output_tokens: Some(u64::from(output)),
        cached_tokens: None,
        cache_write_tokens: None,
    };
    if flags & entry::FLAG_STREAM != 0 {
        rec.ttft = Some(gateway);
    }
    answer(ctx, c, rec, keep_alive).await
}

/// An answer the provider cut off (or stopped sending, past
/// `timeouts.stream_idle`) is the provider's error, whatever reached the client.
fn provider_cut(rec: &mut RequestRecord) {
    if rec.outcome == Outcome::UpstreamAborted && rec.error_source.is_none() {
        rec.error_source = Some(ErrorSource::Provider);
        rec.error_code = Some("upstream_aborted");
    }
}

/// A hit or a follower is said to come from, and is counted under, the
/// provider and model that answered: a route's fallback may have reached
/// another target than the first, which the request itself routed to.
fn credit_served(rec: &mut RequestRecord, served: &[u8]) {
    if rec
        .provider
        .as_deref()
        .is_some_and(|p| entry::served_is(served, p, rec.model.as_deref()))
    {
        return;
    }
    let Some((provider, model)) = entry::served_by(served) else {
        return;
    };
    if rec.provider.as_deref() != Some(provider) {
        rec.provider = Some(Arc::from(provider));
    }
    if rec.model.as_deref() != model {
        rec.model = model.map(str::to_string);
    }
}

/// A routed answer from the cache or a shared call: the step, in this
/// request's targets, of the one that answered (`credit_served` put it in
/// the record); none when it is not among them (another variant's).
fn served_step(
    routing: Option<&crate::route::Routing>,
    rec: &RequestRecord,
) -> Option<(usize, bool)> {
    let r = routing?;
    let step = r.order.iter().position(|t| {
        Some(&*t.provider.name) == rec.provider.as_deref()
            && Some(t.model.as_str()) == rec.model.as_deref()
    })?;
    Some((step, rec.route == RouteKind::Cloudflare))
}

/// Room for a stored head's usual lines (content type, a request id or two).
const STORED_HEAD_CAPACITY: usize = 256;

/// The fill tap for a leader whose answer may be shared: a 2xx the provider
/// allows storing. Otherwise the flight fails now (followers go on their own).
fn fill_tap(
    mut leading: Leading,
    plan: &Plan,
    rec: &RequestRecord,
    rh: &ResponseHead,
    window: &[u8],
    method: Method,
    shared: bool,
) -> Option<FillTap> {
    // A body that ends at close cannot be told whole from cut: not shared.
    if !(200..300).contains(&rh.status)
        || method == Method::Head
        || rh.body() == ResponseBody::UntilClose
        || respond::forbids_store(rh, window, shared)
    {
        leading.fail();
        return None;
    }
    // Sized once: grown from empty, it was reallocated three or four times
    // per miss (the usual stored head is a line or two).
    let mut head = Vec::with_capacity(STORED_HEAD_CAPACITY);
    respond::stored_head(&mut head, rh, window);
    let hint = match rh.body() {
        ResponseBody::Length(n) => usize::try_from(n).ok(),
        _ => None,
    };
    // Who answered (a route's fallback may have reached another target
    // than the first): what a hit or a follower says and is counted under.
    let mut served = Vec::new();
    entry::served(&plan.provider.name, rec.model.as_deref(), &mut served);
    if served.is_empty() && plan.routing.is_some() {
        // Too long to keep: a routed answer is then neither stored nor
        // shared, rather than said to come from the route's first target.
        leading.fail();
        return None;
    }
    leading.head(
        FlightHead {
            status: rh.status,
            served,
            head,
            stream: rh.event_stream,
        },
        entry::provider_tag(&plan.provider.name),
        hint,
    );
    Some(FillTap { leading })
}

/// A follower's own bound on its wait for a response head.
#[derive(Clone, Copy)]
struct Own {
    /// `aigw-request-timeout`.
    timeout: Option<Duration>,
    /// A route's timeout falls back to its next target: the follower goes on
    /// its own rather than answer 504.
    routed: bool,
}

/// Answers a follower from its flight. A JSON answer is sent once whole (so a
/// failed leader leaves the follower free to go upstream itself); a stream is
/// relayed as it arrives. `None`: the flight failed before anything was sent.
#[allow(clippy::too_many_arguments)]
async fn follow(
    ctx: &ShardCtx,
    c: &mut ClientConn,
    req: &Incoming,
    flight: &Flight,
    rec: &mut RequestRecord,
    keep_alive: bool,
    limits: &[u8],
    events: relay::EndEvents,
    own: Own,
    routing: Option<&crate::route::Routing>,
) -> Option<bool> {
    // Attached until this returns: while it is, a leader whose client
    // left reads on for it.
    let Some(_attached) = flight.follow() else {
        rec.cache = Some(CacheStatus::Miss);
        return None;
    };
    // From here it waits on the provider the leader asked: not gateway time.
    rec.gateway = req.started.elapsed();
    let config = ctx.config();
    let t = &config.timeouts;
    // Measured from the request's arrival, as its own attempt would be.
    let own_left = own.timeout.map(|d| d.saturating_sub(req.started.elapsed()));
    let gateway_wait = t.upstream_connect + t.first_byte;
    let wait = own_left.map_or(gateway_wait, |d| d.min(gateway_wait));
    let on_own = |rec: &mut RequestRecord| {
        rec.cache = Some(CacheStatus::Miss);
        None
    };
    let Ok(head) = glommio::timer::timeout(wait, async {
        flight
            .head()
            .await
            .ok_or(glommio::GlommioError::<()>::TimedOut(wait))
    })
    .await
    else {
        if own_left.is_some_and(|d| d < gateway_wait) && !own.routed && !flight.is_failed() {
            // Its own time ran out while the provider still worked on the
            // leader's request: the answer it would have got on its own.
            rec.cache = Some(CacheStatus::Miss);
            let provider = rec.provider.clone().unwrap_or_default();
            let e = GatewayError::upstream_timeout(
                &provider,
                "no response within aigw-request-timeout (waiting on an identical request in flight)",
            );
            return Some(answer_error(ctx, c, rec, &e, keep_alive).await);
        }
        return on_own(rec);
    };
    credit_served(rec, &head.served);
    let step = served_step(routing, rec);
    let cache = CacheLine {
        cloudflare: rec.route == RouteKind::Cloudflare,
        status: CacheStatus::Coalesced,
    };
    let mut cached = CachedHead {
        http10: c.head.http10,
        keep_alive,
        id: rec.id,
        provider: rec.provider.as_deref(),
        model: rec.model.as_deref(),
        status: head.status,
        cache,
        // The shared answer is being generated (or just was): it is fresh.
        age: Some(0),
        gateway: Duration::ZERO,
        length: None,
        limits,
        step,
    };
    rec.status = head.status;
    rec.attempts = 0;
    if !head.stream {
        let mut body = std::mem::take(&mut c.decoded);
        body.clear();
        let mut cursor = 0;
        let ended = loop {
            let step = glommio::timer::timeout(t.stream_idle, async {
                Ok(flight.more(&mut cursor, &mut body).await)
            })
            .await;
            match step {
                Ok(None) => continue,
                Ok(Some(FlightEnd::Complete)) => break true,
                _ => break false,
            }
        };
        if !ended {
            c.decoded = body;
            return on_own(rec);
        }
        cached.gateway = req.started.elapsed();
        cached.length = Some(body.len());
        // A drain may have begun while this request waited.
        cached.keep_alive = keep_alive && !ctx.draining.get();
        c.out.clear();
        respond::cached_head(&mut c.out, &cached, &head.head);
        c.out.extend_from_slice(&body);
        c.decoded = body;
        let keep_alive = cached.keep_alive;
        settle_follower(flight, rec);
        let keep = write_answer(ctx, c, rec, keep_alive).await;
        return Some(keep);
    }
    // A stream: the head goes with the first events, then events as they
    // come. Until the first bytes, a failed flight still leaves this request
    // free to go upstream on its own.
    let mut first = std::mem::take(&mut c.decoded);
    first.clear();
    let mut cursor = 0;
    let end = match glommio::timer::timeout(t.first_byte, async {
        Ok(flight.more(&mut cursor, &mut first).await)
    })
    .await
    {
        Ok(end) => end,
        Err(_) => Some(FlightEnd::Failed),
    };
    if first.is_empty() && end != Some(FlightEnd::Complete) {
        c.decoded = first;
        return on_own(rec);
    }
    // A drain may have begun while this request waited.
    let keep = keep_alive && !c.head.http10 && !ctx.draining.get();
    cached.keep_alive = keep;
    cached.gateway = req.started.elapsed();
    c.out.clear();
    respond::cached_head(&mut c.out, &cached, &head.head);
    let framing = if c.head.http10 {
        ClientFraming::Close
    } else {
        ClientFraming::Chunked
    };
    let _streaming = ctx.streaming();
    let client_fd = c.stream.as_raw_fd();
    let followed = relay::relay_flight(
        &mut Direct::new(&mut c.stream),
        &mut c.out,
        &mut first,
        flight,
        end,
        framing,
        t.stream_idle,
        events,
        relay::Watch {
            left: &|| crate::sys::peer_closed(client_fd),
            carry_on: &|| false,
            every: &|| relay::check_every(ctx.draining.get()),
            stopping: &|| ctx.stopping.get(),
        },
    )
    .await;
    c.decoded = first;
    rec.bytes_out = followed.bytes_out;
    rec.ttft = followed.first_bytes.map(|t| t.duration_since(req.started));
    rec.outcome = match followed.ending {
        Ending::Complete => Outcome::Completed,
        Ending::UpstreamAborted => Outcome::UpstreamAborted,
        Ending::ClientAborted => Outcome::ClientAborted,
    };
    provider_cut(rec);
    settle_follower(flight, rec);
    Some(keep && followed.ending == Ending::Complete && !ctx.draining.get())
}

/// A follower's record learns the tokens its shared answer cost (saved).
fn settle_follower(flight: &Flight, rec: &mut RequestRecord) {
    rec.cost = Some(0.0);
    if let Some(f) = flight.finished() {
        // The stream it shared failed or stopped short: so did this answer,
        // as the leader's record says.
        if let Some(fault) = f.fault()
            && rec.error_source.is_none()
        {
            rec.error_source = Some(ErrorSource::Provider);
            rec.error_code = Some(fault);
            if fault == "stream_truncated" && rec.outcome == Outcome::Completed {
                rec.outcome = Outcome::UpstreamAborted;
            }
        }
        let (input, output) = f.tokens();
        rec.usage = Usage {
            input_tokens: Some(u64::from(input)),
            output_tokens: Some(u64::from(output)),
            cached_tokens: None,
            cache_write_tokens: None,
        };
    }
}

/// Why no reply came back.
enum Unanswered {
    /// The attempts failed; the client gets this error.
    Failed(GatewayError),
    /// The client left while we waited; the attempt was dropped (which closes
    /// its connection, so the provider stops generating).
    ClientGone,
}

/// Writes the upstream request for the plan's target into `c.up_out`;
/// returns where its body starts.
fn build_upstream(c: &mut ClientConn, req: &Incoming, plan: &Plan) -> usize {
    let view = req.view(&c.head, &c.buf, &c.body);
    let body: &[u8] = if plan.unified {
        c.unified.write(view.body)
    } else {
        view.body
    };
    // A route target with keys of its own uses them in turn.
    let target = plan.routing.as_ref().map(|r| &r.order[r.step]);
    let auth = target
        .and_then(|t| t.next_auth())
        .or(plan.provider.auth_lines(plan.unified));
    let up = Upstream {
        method: plan.method,
        path: &plan.path,
        authority: &plan.provider.endpoint.authority,
        auth,
        extra: match plan.provider.unified_headers() {
            h if plan.unified && !h.is_empty() && !own_dialect_headers(plan, &view) => h,
            _ => "",
        },
        body,
    };
    forward::build(&mut c.up_out, &view, &up);
    c.up_out.len() - body.len()
}

/// Whether a unified request keeps its own version of the headers the
/// provider's format needs (`anthropic-version`): when it is written in that
/// format already (not translated, only its model rewritten) and carries
/// every one of them. A translated request is written for the version aigw
/// translates to, so it gets aigw's.
fn own_dialect_headers(plan: &Plan, view: &crate::http::request::RequestView<'_>) -> bool {
    plan.translation.is_none()
        && plan
            .provider
            .unified_headers()
            .split("\r\n")
            .filter_map(|l| l.split_once(':'))
            .all(|(name, _)| {
                view.headers()
                    .any(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            })
}

/// What bounds the wait for a head when the request set it.
const REQUEST_TIMEOUT: &str = "the request's aigw-request-timeout";

/// Longest a request waits for a cooling target to return when every
/// target of its route is cooling (else a 503 with `Retry-After`).
const MAX_COOLING_WAIT: Duration = Duration::from_secs(1);

/// Statuses that lead to a retry or a fallback when no route says otherwise.
const DEFAULT_FALLBACK_STATUSES: &[u16] = &[429, 500, 502, 503, 504, 529];

/// Stage 2: tries the plan's targets until one yields a response head that
/// is not a failure. A route gives the targets, in this request's order,
/// with its retry policy and the failures that move on; per-request controls
/// override the tries, waits and timeout. A plain request has one target and
/// (without `max-attempts`) one try. Targets that are cooling are skipped.
/// The last try's reply is the answer, whatever its status; waits honour the
/// provider's `Retry-After`. A stale pooled connection earns a free retry.
#[allow(clippy::too_many_arguments)]
async fn attempts(
    ctx: &ShardCtx,
    c: &mut ClientConn,
    req: &Incoming,
    plan: &mut Plan,
    wish: &Wish,
    rec: &mut RequestRecord,
    readmit: &mut Readmit<'_>,
    refused_first: Option<GatewayError>,
) -> Result<UpstreamReply, Unanswered> {
    // The common case, one target and one try, without the engine's state
    // (which is boxed, so it does not grow every request's future).
    if plan.routing.is_none() && wish.retry.max_attempts.is_none_or(|n| n <= 1) {
        let body_at = build_upstream(c, req, plan);
        let first_byte = wish.retry.timeout;
        return match attempt_once(ctx, c, plan, body_at, rec, first_byte).await {
            Ok(reply) => Ok(reply),
            Err(Tried::Gone) => Err(Unanswered::ClientGone),
            Err(Tried::Failed(e)) => Err(Unanswered::Failed(e.to_gateway_error(
                &plan.provider.name,
                if first_byte.is_some() {
                    REQUEST_TIMEOUT
                } else {
                    attempt::FIRST_BYTE
                },
            ))),
        };
    }
    Box::pin(retrying_attempts(
        ctx,
        c,
        req,
        plan,
        wish,
        rec,
        readmit,
        refused_first,
    ))
    .await
}

/// Admits a request again for the plan's (new) target.
type Readmit<'a> = dyn FnMut(&Plan, &RequestRecord) -> Result<(), GatewayError> + 'a;

/// [`attempts`] with retries, fallbacks and cooldowns. `refused_first`:
/// the limits or budgets refused the plan's target before any try.
#[allow(clippy::too_many_arguments)]
async fn retrying_attempts(
    ctx: &ShardCtx,
    c: &mut ClientConn,
    req: &Incoming,
    plan: &mut Plan,
    wish: &Wish,
    rec: &mut RequestRecord,
    readmit: &mut Readmit<'_>,
    mut refused_first: Option<GatewayError>,
) -> Result<UpstreamReply, Unanswered> {
    let route = plan.routing.as_ref().map(|r| r.route.clone());
    let mut retry = route.as_ref().map_or_else(Retry::default, |r| r.retry);
    if let Some(n) = wish.retry.max_attempts {
        retry.attempts = n;
    }
    if let Some(d) = wish.retry.delay {
        retry.base = d;
    }
    if let Some(b) = wish.retry.backoff {
        retry.backoff = b;
    }
    let falls_back = |status: u16| match &route {
        Some(r) => r.fallback_on.statuses.contains(&status),
        None => DEFAULT_FALLBACK_STATUSES.contains(&status),
    };
    let steps_began = Instant::now();
    let steps = usable_steps(plan).await?;
    rec.upstream_waited += steps_began.elapsed();
    let track = rec.log.is_some() && (route.is_some() || retry.attempts > 1);
    let mut body_at = build_upstream(c, req, plan);
    let mut last_error = None;
    // The target of the last try that failed: counted as a failed try once
    // another try follows it (else its failure is the request's own).
    let mut failed_try: Option<(Arc<str>, Option<String>)> = None;
    for (n, &step) in steps.iter().enumerate() {
        let first = plan.routing.as_ref().is_some_and(|r| r.step == step);
        if first && refused_first.is_some() {
            last_error = refused_first.take();
            continue;
        }
        if plan.routing.as_ref().is_some_and(|r| r.step != step) {
            let view = req.view(&c.head, &c.buf, &c.body);
            match route::retarget(plan, step, view.body, &mut c.unified) {
                Ok(model) => {
                    rec.provider = Some(plan.provider.name.clone());
                    rec.model = Some(model);
                    // This target's limits and budgets; refused: the next target.
                    if let Err(e) = readmit(plan, rec) {
                        last_error = Some(e);
                        continue;
                    }
                }
                Err(e) => {
                    // A provider's failure before says more than why this
                    // target cannot take the request.
                    last_error.get_or_insert(e);
                    continue;
                }
            }
            body_at = build_upstream(c, req, plan);
        }
        let target = plan.routing.as_ref().map(|r| r.order[step].clone());
        let (first_byte, mut head_wait) = match (
            wish.retry.timeout,
            target.as_ref().and_then(|t| t.first_byte),
        ) {
            (Some(d), _) => (d, REQUEST_TIMEOUT),
            (None, Some(d)) => (d, "the route target's first_byte"),
            (None, None) => (ctx.config().timeouts.first_byte, attempt::FIRST_BYTE),
        };
        let whole = target.as_ref().and_then(|t| t.timeout);
        let first_byte = match whole {
            Some(t) if t < first_byte => {
                head_wait = "the route target's timeout";
                t
            }
            _ => first_byte,
        };
        let mut hint: Option<Duration> = None;
        // A target's failures count once per request towards its cooldown.
        let mut counted = false;
        let mut count_failure = |client_timeout: bool| {
            if let (Some(r), Some(t), false, false) = (&route, &target, counted, client_timeout) {
                counted = true;
                r.failed(t, Instant::now());
            }
        };
        for tried in 0..retry.attempts {
            if tried > 0 {
                let wait = hint
                    .take()
                    .unwrap_or_else(|| targets::backoff(&retry, tried, &|n| ctx.random_below(n)));
                let wait_began = Instant::now();
                wait_unless_gone(ctx, c, wait).await?;
                rec.upstream_waited += wait_began.elapsed();
                // A target with keys of its own tries again with the next one.
                if target.as_ref().is_some_and(|t| t.has_keys()) {
                    body_at = build_upstream(c, req, plan);
                }
            }
            let last = n + 1 == steps.len() && tried + 1 == retry.attempts;
            if let Some(f) = failed_try.take() {
                rec.failed_tries.push(f);
            }
            let started = Instant::now();
            let result = attempt_once(ctx, c, plan, body_at, rec, Some(first_byte)).await;
            if track {
                let outcome = match &result {
                    Ok(_) => Ok(c.rhead.status),
                    Err(Tried::Failed(e)) => Err(e.to_gateway_error("", "").code),
                    Err(Tried::Gone) => Err("client_gone"),
                };
                let step = plan.routing.as_ref().map(|r| r.step);
                note_try(rec, step, outcome, started.elapsed());
            }
            let failure = match result {
                Err(Tried::Gone) => return Err(Unanswered::ClientGone),
                Ok(mut reply) => {
                    let rh = &c.rhead;
                    let mut failed = falls_back(rh.status);
                    if !failed && !last && rh.status < 300 && rh.event_stream {
                        failed = first_event_is_error(&mut reply, rh.head_len, first_byte).await;
                        if failed && track {
                            note_stream_error(rec);
                        }
                    }
                    // A translated JSON answer that is not a reply (broken
                    // JSON, not a reply of its kind, cut off): the next
                    // target answers instead, as for a provider's 502.
                    let translation = plan
                        .translation
                        .filter(|_| !failed && !last && rh.status < 300 && !rh.event_stream);
                    let mut unreadable = None;
                    if let Some(t) = translation {
                        let model = rec.model.as_deref().unwrap_or("");
                        unreadable = unreadable_whole(&mut reply, rh, t, model, first_byte).await;
                        if unreadable.is_some() {
                            failed = true;
                            if track {
                                note_unreadable(rec);
                            }
                        }
                    }
                    if !failed {
                        if let (Some(r), Some(t)) = (&route, &target) {
                            r.succeeded(t);
                        }
                        return Ok(reply);
                    }
                    count_failure(false);
                    let after = retry_after(rh, reply.conn.buf.filled());
                    // Longer than the route would wait: the next target, if
                    // there is one; else this is the answer.
                    let too_long = after.is_some_and(|a| a > retry.max);
                    if last || (too_long && n + 1 == steps.len()) {
                        return Ok(reply);
                    }
                    drop(reply);
                    rec.upstream_waited += started.elapsed();
                    last_error = Some(match unreadable {
                        Some(why) => GatewayError::upstream_bad_response(
                            &plan.provider.name,
                            format!("its answer is not a reply: {why}"),
                        ),
                        None => GatewayError::upstream_status(&plan.provider.name, c.rhead.status),
                    });
                    failed_try = Some((plan.provider.name.clone(), rec.model.clone()));
                    if too_long {
                        break;
                    }
                    hint = after;
                    continue;
                }
                Err(Tried::Failed(e)) => e,
            };
            let covered = match &failure.failure {
                Failure::HeadTimeout => route.as_ref().is_none_or(|r| r.fallback_on.timeout),
                Failure::ConnectTimeout => route
                    .as_ref()
                    .is_none_or(|r| r.fallback_on.timeout || r.fallback_on.connect),
                Failure::BadHead(_) => true,
                _ => route.as_ref().is_none_or(|r| r.fallback_on.connect),
            };
            if covered {
                // A timeout the client chose is not the target's failure.
                let chosen =
                    wish.retry.timeout.is_some() && matches!(failure.failure, Failure::HeadTimeout);
                count_failure(chosen);
            }
            let error = failure.to_gateway_error(&plan.provider.name, head_wait);
            if last || !covered {
                return Err(Unanswered::Failed(error));
            }
            last_error = Some(error);
            rec.upstream_waited += started.elapsed();
            failed_try = Some((plan.provider.name.clone(), rec.model.clone()));
            // A malformed answer would be malformed again: the next target.
            if !failure.retryable() {
                break;
            }
        }
    }
    Err(Unanswered::Failed(last_error.unwrap_or_else(|| {
        GatewayError::unavailable("no target of the route could be tried")
    })))
}

/// Adds one try to the log's routing record (opened with the route's name
/// for a routed request): the route step (the last try's is the one that
/// served), the target, its status or failure, its time. [`record`] closes
/// the JSON.
fn note_try(
    rec: &mut RequestRecord,
    step: Option<usize>,
    outcome: Result<u16, &str>,
    took: Duration,
) {
    use std::fmt::Write as _;
    let provider = rec.provider.clone();
    let model = rec.model.clone();
    let Some(log) = rec.log.as_mut() else { return };
    let s = log
        .routing
        .get_or_insert_with(|| String::from("{\"tries\":["));
    if !s.ends_with('[') {
        s.push(',');
    }
    s.push('{');
    if let Some(step) = step {
        let _ = write!(s, "\"step\":{step},");
    }
    s.push_str("\"provider\":");
    crate::error::push_json_string(s, provider.as_deref().unwrap_or(""));
    s.push_str(",\"model\":");
    crate::error::push_json_string(s, model.as_deref().unwrap_or(""));
    let _ = match outcome {
        Ok(status) => write!(s, ",\"status\":{status}"),
        Err(code) => write!(s, ",\"error\":\"{code}\""),
    };
    let _ = write!(s, ",\"ms\":{}}}", took.as_millis());
}

/// The last try noted answered 200, but its stream opened with an error
/// event: the try says so.
fn note_stream_error(rec: &mut RequestRecord) {
    if let Some(s) = rec.log.as_mut().and_then(|l| l.routing.as_mut())
        && let Some(at) = s.rfind(",\"ms\":")
    {
        s.insert_str(at, ",\"error\":\"stream_error\"");
    }
}

/// The steps of the plan's order to try: those not cooling. When every
/// target is cooling, waits for the first to return if that is soon, else
/// refuses with a 503 saying when to come back.
async fn usable_steps(plan: &Plan) -> Result<SmallVec<[usize; 4]>, Unanswered> {
    let Some(routing) = &plan.routing else {
        return Ok(smallvec::smallvec![0]);
    };
    let now = Instant::now();
    let steps: SmallVec<[usize; 4]> = (0..routing.order.len())
        .filter(|&i| routing.order[i].cooling(now).is_none())
        .collect();
    if !steps.is_empty() {
        return Ok(steps);
    }
    let (step, until) = routing
        .order
        .iter()
        .enumerate()
        .filter_map(|(i, t)| t.cooling(now).map(|u| (i, u)))
        .min_by_key(|(_, u)| *u)
        .expect("every target is cooling");
    let wait = until.duration_since(now);
    if wait > MAX_COOLING_WAIT {
        return Err(Unanswered::Failed(GatewayError::all_cooling(
            &routing.route.name,
            wait,
        )));
    }
    glommio::timer::sleep(wait).await;
    Ok(smallvec::smallvec![step])
}

/// Waits `wait` between two tries; a client that leaves meanwhile ends the request.
async fn wait_unless_gone(
    ctx: &ShardCtx,
    c: &mut ClientConn,
    wait: Duration,
) -> Result<(), Unanswered> {
    let max_window = c.buf.len() + ctx.limits().max_head_bytes;
    let gone = async {
        client_gone(&mut c.stream, &mut c.buf, max_window).await;
        Err(Unanswered::ClientGone)
    };
    async {
        glommio::timer::sleep(wait).await;
        Ok(())
    }
    .or(gone)
    .await
}

/// Longest `Retry-After` read from a provider (a day); a route waits at
/// most `retry.max` anyway.
const MAX_RETRY_AFTER_SECS: u64 = 86_400;

/// A provider's `Retry-After` in seconds (the date form is not honoured).
fn retry_after(rh: &ResponseHead, window: &[u8]) -> Option<Duration> {
    rh.headers
        .iter()
        .find(|h| h.name.get(window).eq_ignore_ascii_case(b"retry-after"))
        .and_then(|h| std::str::from_utf8(h.value.get(window)).ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.min(MAX_RETRY_AFTER_SECS)))
}

/// Most bytes read ahead to find a stream's first event.
const PEEK_MAX: usize = 64 << 10;

/// Whether a `200` stream's first event is an error (`{"error":...}` or
/// Anthropic's `{"type":"error",...}`): a failure like any other, before
/// the client has seen a byte. Reads ahead into the connection's buffer,
/// which the relay then starts from.
async fn first_event_is_error(reply: &mut UpstreamReply, head_len: usize, wait: Duration) -> bool {
    loop {
        let body = &reply.conn.buf.filled()[head_len.min(reply.conn.buf.filled().len())..];
        if let Some(at) = memchr::memmem::find(body, b"data:") {
            let line = &body[at + 5..];
            if let Some(end) = memchr::memchr(b'\n', line) {
                // Anthropic names the event; OpenAI and Gemini put an
                // `error` object in its data.
                let named = body[..at].split(|&b| b == b'\n').any(|l| {
                    l.trim_ascii()
                        .strip_prefix(b"event:")
                        .is_some_and(|n| n.trim_ascii() == b"error")
                });
                return named || opens_with_error(&line[..end]);
            }
        }
        if body.len() >= PEEK_MAX || !read_more(reply, wait, RELAY_WINDOW).await {
            return false;
        }
    }
}

/// Largest provider error body read whole to mask the credentials it
/// echoes ([`upstream_credentials`]); a larger one is relayed as it comes.
const MAX_MASKED_BODY: u64 = 64 << 10;

/// The credentials the upstream request `sent` carried (the configured key,
/// a route target's, or the client's own): the values of its
/// `Authorization` (without `Bearer `), `x-api-key`, `api-key` and
/// `x-goog-api-key` lines, those of 8 bytes or more.
fn upstream_credentials(sent: &[u8]) -> Vec<Vec<u8>> {
    let head = memchr::memmem::find(sent, b"\r\n\r\n").map_or(sent, |end| &sent[..end]);
    let mut found = Vec::new();
    for line in head.split(|&b| b == b'\n').skip(1) {
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        if !(is("authorization") || is("x-api-key") || is("api-key") || is("x-goog-api-key")) {
            continue;
        }
        let mut value = line[colon + 1..].trim_ascii();
        if value.len() > 7 && value[..7].eq_ignore_ascii_case(b"bearer ") {
            value = value[7..].trim_ascii();
        }
        if value.len() >= 8 {
            found.push(value.to_vec());
        }
    }
    found
}

/// Overwrites every occurrence of each of `secrets` in `bytes` with `*`
/// (the length stays, so the framing does).
fn mask(bytes: &mut [u8], secrets: &[Vec<u8>]) {
    for secret in secrets {
        let mut from = 0;
        while let Some(at) = memchr::memmem::find(&bytes[from..], secret) {
            let at = from + at;
            bytes[at..at + secret.len()].fill(b'*');
            from = at + secret.len();
        }
    }
}

/// Largest translated JSON answer a try that may fall back reads whole
/// before it is taken ([`unreadable_whole`]); a larger one is taken as it
/// comes (and is judged as it is translated).
const JUDGED_WHOLE_MAX: usize = 1 << 20;

/// A translated JSON answer (head `rh`, not yet consumed) of a try that may
/// fall back: read whole into the reply's buffer (the relay then takes it
/// from there), and why it is not a reply `t` can translate, when it is not
/// (its body broke off or stalled past `wait`, or it is not one). `None`
/// also when it is larger than [`JUDGED_WHOLE_MAX`] or ends only at close:
/// it is taken, and judged as it is translated.
async fn unreadable_whole(
    reply: &mut UpstreamReply,
    rh: &ResponseHead,
    t: crate::providers::Translation,
    model: &str,
    wait: Duration,
) -> Option<String> {
    let mut body = Vec::new();
    loop {
        let filled = reply.conn.buf.filled();
        let raw = &filled[rh.head_len.min(filled.len())..];
        let whole = match rh.body() {
            ResponseBody::Length(n) if n as usize > JUDGED_WHOLE_MAX => return None,
            ResponseBody::Length(n) => (raw.len() as u64 >= n).then(|| &raw[..n as usize]),
            ResponseBody::Chunked => {
                body.clear();
                let mut decoder = crate::http::chunked::ChunkedDecoder::default();
                match decoder.decode(raw, &mut body, u64::MAX) {
                    Ok(_) if decoder.is_done() => Some(&body[..]),
                    Ok(_) => None,
                    Err(_) => return Some("its chunked framing is broken".into()),
                }
            }
            ResponseBody::None => Some(&[][..]),
            ResponseBody::UntilClose => return None,
        };
        if let Some(whole) = whole {
            let mut translator = t.reply(rh.status, false, model);
            let mut out = Vec::new();
            translator.feed(whole, &mut out);
            translator.finish(true, &mut out);
            return translator.unreadable().map(str::to_string);
        }
        if raw.len() >= JUDGED_WHOLE_MAX {
            return None;
        }
        if !read_more(reply, wait, rh.head_len + JUDGED_WHOLE_MAX).await {
            return Some("it broke off before its end".into());
        }
    }
}

/// Reads more of a reply into its buffer (holding at most `window` bytes),
/// waiting at most `wait`; false when nothing more came (closed, failed or
/// silent).
async fn read_more(reply: &mut UpstreamReply, wait: Duration, window: usize) -> bool {
    reply.conn.stream.set_read_timeout(wait);
    matches!(
        reply.conn.stream.read_some(&mut reply.conn.buf, window).await,
        Ok(n) if n > 0
    )
}

/// The last try noted answered 200, but what it answered is not a reply:
/// the try says so.
fn note_unreadable(rec: &mut RequestRecord) {
    if let Some(s) = rec.log.as_mut().and_then(|l| l.routing.as_mut())
        && let Some(at) = s.rfind(",\"ms\":")
    {
        s.insert_str(at, ",\"error\":\"upstream_bad_response\"");
    }
}

/// The events that end a stream early (the provider broke off, or the end
/// of a drain stopped it), in its client's format: Anthropic's, Gemini's (a
/// pass-through to a `google` provider) or OpenAI's.
fn end_events(plan: &Plan) -> relay::EndEvents {
    if plan.anthropic_client {
        relay::ANTHROPIC_END_EVENTS
    } else if !plan.unified && plan.provider.dialect() == crate::providers::Dialect::Google {
        relay::GEMINI_END_EVENTS
    } else {
        relay::OPENAI_END_EVENTS
    }
}

/// Whether an event's data is an error: its first member `"error"`, or
/// `"type": "error"` (whitespace allowed where JSON allows it).
fn opens_with_error(data: &[u8]) -> bool {
    let Some(rest) = data.trim_ascii().strip_prefix(b"{") else {
        return false;
    };
    let rest = rest.trim_ascii_start();
    if rest.starts_with(b"\"error\"") {
        return true;
    }
    rest.strip_prefix(b"\"type\"")
        .and_then(|r| r.trim_ascii_start().strip_prefix(b":"))
        .is_some_and(|r| r.trim_ascii_start().starts_with(b"\"error\""))
}

/// Why one try yielded no reply.
enum Tried {
    Gone,
    Failed(AttemptError),
}

/// One try at the plan's target (a stale pooled connection is retried once
/// on a fresh one); the client leaving cancels it.
async fn attempt_once(
    ctx: &ShardCtx,
    c: &mut ClientConn,
    plan: &Plan,
    body_at: usize,
    rec: &mut RequestRecord,
    first_byte: Option<Duration>,
) -> Result<UpstreamReply, Tried> {
    let request = AttemptRequest {
        bytes: &c.up_out,
        method: plan.method,
        path: &plan.path,
        body: &c.up_out[body_at..],
        // The in-process mock names its replies after the request.
        request_id: rec.id.0 as u64,
        first_byte,
    };
    let rhead = &mut c.rhead;
    let tries = async {
        let mut fresh = false;
        loop {
            rec.attempts += 1;
            match attempt::attempt(ctx, &plan.provider, &request, rhead).await {
                Ok(reply) => {
                    rec.upstream_connects += u32::from(reply.connected);
                    return Ok(reply);
                }
                Err(e) => {
                    rec.upstream_connects += u32::from(e.connected);
                    // The provider had closed that pooled connection: the request
                    // never reached it, so a fresh connection may carry it.
                    if e.stale_connection() && e.retryable() && !fresh {
                        fresh = true;
                        continue;
                    }
                    return Err(Tried::Failed(e));
                }
            }
        }
    };
    let max_window = c.buf.len() + ctx.limits().max_head_bytes;
    let followed = c.followed.as_deref();
    let gone = async {
        client_gone(&mut c.stream, &mut c.buf, max_window).await;
        // Others wait on this answer: the call goes on for them while any
        // do (the relay then reads it to its end for them); the end of a
        // drain still stops it.
        while followed.as_ref().is_some_and(|f| f.attached() > 0) && !ctx.stopping.get() {
            glommio::timer::sleep(relay::DRAIN_CHECK).await;
        }
        Err(Tried::Gone)
    };
    tries.or(gone).await
}

/// Resolves once the client has closed or reset its connection, checked from
/// [`CLIENT_WATCH_AFTER`] on. Bytes it sends meanwhile (a pipelined request)
/// stay in its read window; a full window ends the watch.
async fn client_gone(stream: &mut TcpStream, buf: &mut ReadBuf, max_window: usize) {
    glommio::timer::sleep(CLIENT_WATCH_AFTER).await;
    // The connection loop sets its own deadline before every read it makes.
    let _ = stream.set_read_timeout(None);
    loop {
        match read_some_tcp(stream, buf, max_window).await {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                std::future::pending::<()>().await;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// The answer to a request the end of a drain stopped before it answered.
#[cold]
fn stopped_error() -> GatewayError {
    GatewayError::unavailable(
        "the gateway is shutting down (server.drain_timeout ran out) and stopped this request before it was answered; retry it",
    )
}

/// The shape of aigw's own errors to this client: Anthropic's to a client
/// of its format (the anthropic SDK), else OpenAI's. Until the request is
/// routed, one to a Messages path is taken for one of Anthropic's format
/// (read only here: most requests never need it).
fn error_shape(c: &ClientConn) -> Shape {
    let anthropic = c.anthropic.unwrap_or_else(|| {
        let t = c.head.target;
        let target = c
            .buf
            .filled()
            .get(t.start as usize..t.end as usize)
            .unwrap_or_default();
        let path = target.split(|b| *b == b'?').next().unwrap_or_default();
        path.ends_with(b"/v1/messages")
    });
    if anthropic {
        Shape::Anthropic
    } else {
        Shape::OpenAi
    }
}

/// Answers with a gateway error (the one place such a response is written).
async fn answer_error(
    ctx: &ShardCtx,
    c: &mut ClientConn,
    rec: &mut RequestRecord,
    e: &GatewayError,
    keep_alive: bool,
) -> bool {
    // A body cut by the end of a drain (its reads were shut), not by its client.
    let stopped;
    let e = if ctx.stopping.get() && e.code == "incomplete_body" {
        stopped = stopped_error();
        &stopped
    } else {
        e
    };
    // A message quoting what the client sent (a model, a path) never
    // quotes a gateway secret: the answer's body is logged too.
    let redacted;
    let e = if auth::carries_secret(e.message.as_bytes()) {
        redacted = GatewayError {
            message: auth::redact_secrets(
                &e.message,
                "the request held a gateway key (withheld here)",
            ),
            ..e.clone()
        };
        &redacted
    } else {
        e
    };
    withhold_secrets(rec);
    // An upstream error can come long after the request arrived: if a drain
    // began meanwhile, this answer is the connection's last.
    let keep_alive = keep_alive && !e.close && !ctx.draining.get();
    c.out.clear();
    let shape = error_shape(c);
    respond::error(
        &mut c.out,
        e,
        &c.head,
        keep_alive,
        rec.id,
        cache_line(rec),
        shape,
    );
    rec.status = e.status;
    // Refused or failed before a provider could spend anything.
    if rec.cost.is_none() && (e.source != ErrorSource::Provider || rec.attempts == 0) {
        rec.cost = Some(0.0);
    }
    rec.error_source = Some(e.source);
    rec.error_code = Some(e.code);
    rec.outcome = Outcome::GatewayError;
    answer(ctx, c, rec, keep_alive).await
}

/// Writes the whole response in `c.out`, then records (with the body as the
/// response payload, when payloads are kept).
///
/// The record is borrowed, not moved: a record is a few hundred bytes, and
/// every move into a nested future copies it.
async fn answer(
    ctx: &ShardCtx,
    c: &mut ClientConn,
    rec: &mut RequestRecord,
    keep_alive: bool,
) -> bool {
    let keep = write_answer(ctx, c, rec, keep_alive).await;
    record(ctx, rec);
    keep
}

/// Writes the whole response in `c.out` (the record learns what went out).
async fn write_answer(
    ctx: &ShardCtx,
    c: &mut ClientConn,
    rec: &mut RequestRecord,
    keep_alive: bool,
) -> bool {
    rec.bytes_out = c.out.len() as u64;
    if let Some(cap) = payload_cap(ctx)
        && let Some(log) = rec.log.as_mut()
    {
        let body_at = memchr::memmem::find(&c.out, b"\r\n\r\n").map_or(c.out.len(), |i| i + 4);
        log.response_body = Some(Payload::capped(&c.out[body_at..], cap));
    }
    let written = Direct::new(&mut c.stream).write_all(&c.out).await.is_ok();
    c.out.clear();
    if !written && rec.outcome == Outcome::Completed {
        rec.outcome = Outcome::ClientAborted;
    }
    written && keep_alive
}

/// Stage 5, the end of every request: its total time, then the record is counted.
fn record(ctx: &ShardCtx, rec: &mut RequestRecord) {
    use std::fmt::Write as _;
    rec.total = rec.started.elapsed();
    if ctx.stopping.get()
        && (rec.outcome == Outcome::ClientAborted || rec.error_code == Some("incomplete_body"))
    {
        // Cut by the end of a drain (its answer, or its body still
        // arriving), not by its client.
        rec.error_source = Some(ErrorSource::Gateway);
        rec.error_code = Some("shutting_down");
        if rec.outcome == Outcome::ClientAborted {
            rec.outcome = Outcome::StoppedByGateway;
        }
    }
    if let Some(r) = rec.log.as_mut().and_then(|l| l.routing.as_mut()) {
        let _ = write!(r, "],\"attempts\":{}}}", rec.attempts);
    }
    if rec.gateway.is_zero() {
        rec.gateway = rec.total;
    }
    ctx.record(rec);
}
