//! Admin socket: HTTP/1.1 over a Unix socket (mode 0600), one request per
//! connection, each read on a thread of its own (at most
//! [`MAX_ADMIN_CONNECTIONS`] at once: a client that connects and sends
//! nothing holds up no one else) and answered one at a time.
//! `curl --unix-socket PATH localhost/stats`.
//!
//! Endpoints: `GET /stats` (JSON, fresh: every shard flushes first),
//! `GET /metrics` (Prometheus text), `GET /healthz`, `GET /logs`,
//! `GET /config`, `POST /config/reload`, `POST /cache/purge`, and the gateway
//! keys: `GET /keys`, `POST /keys`, `DELETE /keys/ID`; `GET /usage`. Not on
//! any request path.

use super::logs::LogStats;
use super::reload::Reloader;
use super::stats::{Merged, SERIES, StatsHub};
use super::{ShardCmd, ShardSenders};
use crate::cache::key::CacheKey;
use crate::cache::{Cache, PurgeWhat, Totals};
use crate::logstore::{self, query::Filter};
use crate::record::CacheStatus;
use crate::server::shard::Shared;
use crate::stats::labels::LabelCounters;
use hdrhistogram::Histogram;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Longest an admin client may take to send its whole request (and each
/// write of the answer may stall).
pub const ADMIN_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest `/stats` waits for shards to flush before answering with what it has.
pub const FLUSH_WAIT: Duration = Duration::from_secs(1);
/// Largest admin request head.
pub const MAX_ADMIN_REQUEST: usize = 8 << 10;
/// Longest `POST /cache/purge` waits for every shard.
pub const PURGE_WAIT: Duration = Duration::from_secs(30);
/// Connections a listener reads at once; more are answered 503 at once.
pub const MAX_ADMIN_CONNECTIONS: usize = 32;
/// The admin's paths, for a 405 that says which method they take.
const ROUTES: [(&str, &str); 10] = [
    ("/stats", "GET"),
    ("/metrics", "GET"),
    ("/healthz", "GET"),
    ("/logs", "GET"),
    ("/config", "GET"),
    ("/usage", "GET"),
    ("/config/reload", "POST"),
    ("/cache/purge", "POST"),
    ("/keys", "GET or POST"),
    ("/keys/ID", "DELETE"),
];

pub struct Admin {
    hub: Arc<StatsHub>,
    shards: ShardSenders,
    logs: Arc<LogStats>,
    /// The request log store (read-only from here).
    log_path: PathBuf,
    reloader: Arc<Reloader>,
    /// The response cache, when on (its totals; purges go through the shards).
    cache: Option<Arc<Cache>>,
    /// The key table, rate-limit counts and budgets every shard shares.
    shared: Shared,
}

/// Binds the socket (refusing to steal one a live aigw is serving) with mode 0600.
pub fn bind(path: &Path) -> Result<UnixListener, String> {
    if UnixStream::connect(path).is_ok() {
        return Err(format!(
            "admin socket {} is in use by a running aigw; stop it or set admin.socket",
            path.display()
        ));
    }
    let _ = std::fs::remove_file(path);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::private::create_dir(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| format!("cannot bind admin socket {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot chmod admin socket {}: {e}", path.display()))?;
    Ok(listener)
}

/// Why `/usage` has no totals with the log off.
const LOG_OFF: &str = "the request log is off (logs.enabled = false): no totals by group; the budgets are the running counts";

impl Admin {
    pub fn new(
        hub: Arc<StatsHub>,
        shards: ShardSenders,
        logs: Arc<LogStats>,
        log_path: PathBuf,
        reloader: Arc<Reloader>,
        cache: Option<Arc<Cache>>,
        shared: Shared,
    ) -> Arc<Admin> {
        Arc::new(Admin {
            hub,
            shards,
            logs,
            log_path,
            reloader,
            cache,
            shared,
        })
    }

    pub fn spawn(self: &Arc<Self>, listener: UnixListener) -> std::io::Result<()> {
        self.spawn_accepting("aigw-admin", Scope::Everything, move || {
            let (c, _) = listener.accept()?;
            c.set_read_timeout(Some(ADMIN_READ_TIMEOUT))?;
            c.set_write_timeout(Some(ADMIN_READ_TIMEOUT))?;
            Ok(c)
        })
    }

    /// Serves `/metrics` and `/healthz` (only) on a TCP listener
    /// (`admin.listen`), for scrapers that cannot reach a Unix socket.
    pub fn spawn_metrics(self: &Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        self.spawn_accepting("aigw-metrics", Scope::MetricsOnly, move || {
            let (c, _) = listener.accept()?;
            c.set_read_timeout(Some(ADMIN_READ_TIMEOUT))?;
            c.set_write_timeout(Some(ADMIN_READ_TIMEOUT))?;
            Ok(c)
        })
    }

    /// A thread accepting from `accept`; each connection is read on a
    /// thread of its own (idle clients must not queue the others behind
    /// them: a scraper, a `curl`), and answered under the listener's turn
    /// (one at a time, as key changes and purges need).
    fn spawn_accepting<C: Read + Write + Send + 'static>(
        self: &Arc<Self>,
        name: &str,
        scope: Scope,
        mut accept: impl FnMut() -> std::io::Result<C> + Send + 'static,
    ) -> std::io::Result<()> {
        let me = Arc::clone(self);
        let turn = Arc::new(std::sync::Mutex::new(()));
        let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let conn_name = format!("{name}-conn");
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                loop {
                    let mut c = match accept() {
                        Ok(c) => c,
                        Err(e) => {
                            log::warn!("admin accept: {e}");
                            continue;
                        }
                    };
                    if open.load(Ordering::Acquire) >= MAX_ADMIN_CONNECTIONS {
                        respond(
                            &mut c,
                            503,
                            "text/plain",
                            &format!("too many admin connections at once (over {MAX_ADMIN_CONNECTIONS}); retry\n"),
                        );
                        continue;
                    }
                    open.fetch_add(1, Ordering::AcqRel);
                    let (me, turn, done) = (Arc::clone(&me), Arc::clone(&turn), Arc::clone(&open));
                    let spawned = std::thread::Builder::new()
                        .name(conn_name.clone())
                        .spawn(move || {
                            me.serve(c, scope, &turn);
                            done.fetch_sub(1, Ordering::AcqRel);
                        });
                    if let Err(e) = spawned {
                        open.fetch_sub(1, Ordering::AcqRel);
                        log::warn!("admin connection thread: {e}");
                    }
                }
            })?;
        Ok(())
    }

    fn serve<C: Read + Write>(&self, mut conn: C, scope: Scope, turn: &std::sync::Mutex<()>) {
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        // The whole request within the read timeout, however slowly it drips.
        let deadline = std::time::Instant::now() + ADMIN_READ_TIMEOUT;
        // The head, then the body its Content-Length announces.
        let mut want: Option<(String, String, usize, usize)> = None;
        loop {
            if let Some((_, _, _, end)) = &want
                && buf.len() >= *end
            {
                break;
            }
            let timed_out = std::time::Instant::now() > deadline
                || match conn.read(&mut chunk) {
                    Ok(0) => return,
                    Ok(n) => {
                        buf.extend_from_slice(&chunk[..n]);
                        false
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        true
                    }
                    Err(_) => return,
                };
            if timed_out {
                // A client that sent part of a request is told why it was
                // cut (one that sent nothing is just closed).
                let secs = ADMIN_READ_TIMEOUT.as_secs();
                let why = if want.is_some() {
                    format!(
                        "the body did not arrive within {secs} s: send as many bytes as Content-Length says\n"
                    )
                } else {
                    format!("the request head did not arrive within {secs} s\n")
                };
                if !buf.is_empty() {
                    respond(&mut conn, 408, "text/plain", &why);
                }
                return;
            }
            if want.is_some() {
                continue;
            }
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    if req
                        .headers
                        .iter()
                        .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
                    {
                        respond(
                            &mut conn,
                            411,
                            "text/plain",
                            "send the body with Content-Length (a chunked body is not read here)\n",
                        );
                        return;
                    }
                    // Digits only, and every Content-Length alike: `+5`, or
                    // two that differ, would be read differently elsewhere.
                    let mut lengths = req
                        .headers
                        .iter()
                        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .map(|h| {
                            let v = h.value.trim_ascii();
                            (!v.is_empty() && v.iter().all(u8::is_ascii_digit))
                                .then(|| {
                                    v.iter().try_fold(0usize, |n, d| {
                                        n.checked_mul(10)?.checked_add(usize::from(d - b'0'))
                                    })
                                })
                                .flatten()
                        });
                    let length = lengths
                        .next()
                        .map(|first| first.filter(|l| lengths.all(|other| other == Some(*l))));
                    let length = match length {
                        None => 0,
                        Some(Some(l))
                            if n.checked_add(l).is_some_and(|end| end <= MAX_ADMIN_REQUEST) =>
                        {
                            l
                        }
                        Some(_) => {
                            respond(
                                &mut conn,
                                400,
                                "text/plain",
                                "bad request: Content-Length must be one number (given once, or alike each time), the request at most 8 KiB\n",
                            );
                            return;
                        }
                    };
                    want = Some((
                        req.method.unwrap_or("").to_string(),
                        req.path.unwrap_or("").to_string(),
                        n,
                        n + length,
                    ));
                }
                Ok(httparse::Status::Partial) if buf.len() < MAX_ADMIN_REQUEST => continue,
                _ => {
                    respond(
                        &mut conn,
                        400,
                        "text/plain",
                        "bad request: the request head did not parse (HTTP/1.1, at most 32 headers and 8 KiB, a UTF-8 path)\n",
                    );
                    return;
                }
            }
        }
        let Some((method, target, head_len, end)) = want else {
            return;
        };
        let body = &buf[head_len..end];
        let (route, query) = target.split_once('?').unwrap_or((&target, ""));
        // Answered one at a time (reads went on meanwhile), into memory:
        // the answer is written after the turn is given up, so a client that
        // does not read holds up no one else.
        let mut out = Vec::new();
        {
            let _turn = turn.lock().unwrap_or_else(|p| p.into_inner());
            self.answer(&mut out, scope, &method, route, query, body);
        }
        let _ = conn.write_all(&out);
    }

    /// The answer to one admin request, written into `out`.
    fn answer(
        &self,
        out: &mut Vec<u8>,
        scope: Scope,
        method: &str,
        route: &str,
        query: &str,
        body: &[u8],
    ) {
        if scope == Scope::MetricsOnly && !matches!(route, "/metrics" | "/healthz") {
            respond(
                out,
                404,
                "text/plain",
                "not found: this listener serves /metrics and /healthz\n",
            );
            return;
        }
        match (method, route) {
            // Rendered under the stats lock, written after it is released: a
            // slow reader must never hold up the stats thread.
            ("GET", "/stats") => {
                self.flush();
                let body = render_json(
                    &self.hub.merged.lock().unwrap_or_else(|p| p.into_inner()),
                    &self.logs,
                    self.cache.as_ref().map(|c| c.totals()),
                );
                respond(out, 200, "application/json", &body);
            }
            ("GET", "/metrics") => {
                self.flush();
                let mut body = super::metrics::render(
                    &self.hub.merged.lock().unwrap_or_else(|p| p.into_inner()),
                    &self.logs,
                    self.cache.as_ref().map(|c| c.totals()),
                );
                let standings = self.shared.budgets.report(
                    &self.reloader.running().budgets,
                    crate::reqid::now_unix_ms(),
                );
                super::metrics::render_budgets(
                    &mut body,
                    &standings,
                    self.shared.budgets.alerts.load(Ordering::Relaxed),
                );
                respond(out, 200, "text/plain; version=0.0.4", &body);
            }
            ("GET", "/logs") => match self.logs_query(query) {
                // Every request answered before this query is in the answer.
                Ok(body) => respond(out, 200, "application/x-ndjson", &body),
                Err((status, why)) => respond(out, status, "text/plain", &format!("{why}\n")),
            },
            ("POST", "/config/reload") => match self.reloader.reload() {
                Ok(report) => respond(out, 200, "application/json", &report.to_json()),
                Err(errors) => {
                    let mut body = String::from("{\"applied\":false,\"errors\":[");
                    for (i, e) in errors.iter().enumerate() {
                        if i > 0 {
                            body.push(',');
                        }
                        crate::error::push_json_string(&mut body, e);
                    }
                    body.push_str("]}\n");
                    respond(out, 400, "application/json", &body);
                }
            },
            ("POST", "/cache/purge") => match self.purge(query) {
                Ok(n) => respond(
                    out,
                    200,
                    "application/json",
                    &format!("{{\"purged\":{n}}}\n"),
                ),
                Err((status, why)) => respond(out, status, "text/plain", &format!("{why}\n")),
            },
            ("GET", "/config") => respond(out, 200, "text/plain", &self.reloader.render()),
            ("GET", "/usage") => match self.usage(query) {
                Ok(body) => respond(out, 200, "application/json", &body),
                Err((status, why)) => respond(out, status, "text/plain", &format!("{why}\n")),
            },
            ("GET", "/keys") => respond(
                out,
                200,
                "application/json",
                &super::keys::list(&self.shared.keys),
            ),
            ("POST", "/keys") => {
                let (status, body) = super::keys::create(&self.shared.keys, &self.data_dir(), body);
                respond(out, status, "application/json", &body);
            }
            ("DELETE", r) if r.starts_with("/keys/") => {
                let id = query_decode(&r["/keys/".len()..]);
                let (status, body) = super::keys::revoke(&self.shared.keys, &self.data_dir(), &id);
                respond(out, status, "application/json", &body);
            }
            ("GET", "/healthz") => respond(out, 200, "application/json", "{\"status\":\"ok\"}\n"),
            (method, route) => {
                let known = ROUTES.iter().find(|(r, _)| {
                    *r == route || (*r == "/keys/ID" && route.starts_with("/keys/"))
                });
                match known {
                    Some((r, allowed)) => respond(
                        out,
                        405,
                        "text/plain",
                        &format!("{method} is not allowed on {r}: use {allowed}\n"),
                    ),
                    None => {
                        let mut try_ = String::from("not found: try");
                        for (i, (r, m)) in ROUTES.iter().enumerate() {
                            let sep = if i == 0 { " " } else { ", " };
                            let _ = write!(try_, "{sep}{m} {r}");
                        }
                        try_.push('\n');
                        respond(out, 404, "text/plain", &try_);
                    }
                }
            }
        }
    }

    /// `GET /logs?status=4xx&provider=...`: the filters of `aigw logs`, as JSON lines.
    fn logs_query(&self, query: &str) -> Result<String, (u16, String)> {
        let pairs: Vec<(String, String)> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (query_decode(k), query_decode(v))
            })
            .collect();
        let filter = Filter::from_pairs(
            pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            crate::reqid::now_unix_ms(),
        )
        .map_err(|e| (400, e))?;
        // Shards hand over records of answered requests, then the log thread commits.
        self.flush();
        self.logs.flush(FLUSH_WAIT);
        let conn = logstore::open_for_reading(&self.log_path).map_err(|e| (404, e))?;
        let rows = logstore::query::query(&conn, &filter).map_err(|e| (500, e.to_string()))?;
        let mut out = String::new();
        for r in rows {
            out.push_str(&r.to_json());
            out.push('\n');
        }
        Ok(out)
    }

    /// `GET /usage?by=key&since=24h`: totals from the log, and every budget's
    /// standing from the running counts.
    fn usage(&self, query: &str) -> Result<String, (u16, String)> {
        let mut by = super::usage::By::Key;
        let now = crate::reqid::now_unix_ms();
        let mut since = now.saturating_sub(86_400_000);
        let mut seen = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = query_decode(v);
            let k = query_decode(k);
            crate::logstore::query::once(&mut seen, &k).map_err(|e| (400, e))?;
            match k.as_str() {
                "by" => by = super::usage::By::parse(&v).map_err(|e| (400, e))?,
                "since" => {
                    since = crate::logstore::time::parse_start(&v, now)
                        .map_err(|e| (400, format!("since: {e}")))?
                }
                other => {
                    return Err((
                        400,
                        format!("`{other}` is not a usage filter: use by, since"),
                    ));
                }
            }
        }
        self.flush();
        self.logs.flush(FLUSH_WAIT);
        let standings = self
            .shared
            .budgets
            .report(&self.reloader.running().budgets, now);
        // Without a log there are no totals, but the budgets still stand. A
        // store an earlier run left is not today's: with the log off, no
        // totals are read from it.
        let conn = if self.reloader.running().logs.enabled {
            logstore::open_for_reading(&self.log_path)
        } else {
            Err(LOG_OFF.to_string())
        };
        super::usage::usage_json(
            conn.as_ref().map_err(String::as_str),
            &by,
            since,
            &standings,
        )
        .map_err(|e| (500, e))
    }

    /// `POST /cache/purge` (everything), `?key=<32 hex digits>` (one entry, as
    /// the request log's `cache_key` shows it) or `?provider=NAME`: every
    /// shard purges its partition. Returns how many entries went.
    fn purge(&self, query: &str) -> Result<u64, (u16, String)> {
        if self.cache.is_none() {
            return Err((409, "the cache is off (cache.enabled = false)".into()));
        }
        let mut what = PurgeWhat::All;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = query_decode(v);
            let name = query_decode(k);
            // One filter: a key is one entry whoever answered it, and a
            // second filter that replaced the first purged more than asked.
            if !matches!(what, PurgeWhat::All) && matches!(name.as_str(), "key" | "provider") {
                return Err((
                    400,
                    "give one filter: key=HEX (one entry) or provider=NAME (all of its entries), not both nor one twice".into(),
                ));
            }
            what = match name.as_str() {
                "key" => {
                    let key = CacheKey::parse(&v)
                        .ok_or((400, format!("key: `{v}` must be 32 hex digits (the cache_key of `aigw logs show ID`)")))?;
                    PurgeWhat::Key(key)
                }
                "provider" if v.is_empty() => {
                    return Err((
                        400,
                        "provider: give a provider's (or a route's) name".into(),
                    ));
                }
                "provider" => {
                    let config = self.reloader.running();
                    let known = config.providers.contains_key(&v)
                        || config.routes.iter().any(|r| r.name == v);
                    if !known {
                        return Err((
                            400,
                            format!(
                                "provider: no provider or route is named `{v}` (entries are kept under the name a request used)"
                            ),
                        ));
                    }
                    PurgeWhat::Provider(crate::cache::entry::provider_tag(&v))
                }
                other => {
                    return Err((
                        400,
                        format!(
                            "`{other}` is not a purge filter: use key=HEX or provider=NAME, or none to purge everything"
                        ),
                    ));
                }
            };
        }
        if let Some(c) = &self.cache {
            c.begin_purge();
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let mut asked = 0;
        for s in self.shards.iter() {
            if s.send(ShardCmd::Purge(what, tx.clone())).is_ok() {
                asked += 1;
            }
        }
        drop(tx);
        let deadline = std::time::Instant::now() + PURGE_WAIT;
        let mut total = 0;
        for _ in 0..asked {
            match rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
                Ok(n) => total += n,
                Err(_) => {
                    return Err((
                        504,
                        format!(
                            "not every shard purged within {PURGE_WAIT:?}; {total} entries went so far"
                        ),
                    ));
                }
            }
        }
        Ok(total)
    }

    /// Where admin-created keys are stored (`server.data_dir` is restart-only).
    fn data_dir(&self) -> PathBuf {
        self.reloader.running().server.data_dir.clone()
    }

    /// Asks every shard for a snapshot and waits (bounded) until they arrive.
    fn flush(&self) {
        if !self.hub.flush_shards(&self.shards, FLUSH_WAIT) {
            log::debug!("admin: not every shard flushed within {FLUSH_WAIT:?}");
        }
    }
}

/// What a listener may serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scope {
    /// The Unix socket (mode 0600): everything.
    Everything,
    /// The optional TCP listener: `/metrics` and `/healthz` only.
    MetricsOnly,
}

fn respond(conn: &mut impl Write, status: u16, content_type: &str, body: &str) {
    let head = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        crate::error::reason(status),
        body.len()
    );
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(body.as_bytes());
}

fn quantiles(h: &Histogram<u64>) -> String {
    format!(
        "{{\"count\":{},\"p50\":{},\"p90\":{},\"p99\":{},\"p999\":{},\"max\":{}}}",
        h.len(),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.9),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max()
    )
}

fn sum_labels<'a>(it: impl Iterator<Item = &'a LabelCounters>) -> LabelCounters {
    let mut sum = LabelCounters::default();
    for c in it {
        sum.add(c);
    }
    sum
}

/// One window's numbers: rate, errors, tokens, latency estimates (from the
/// fixed buckets `/metrics` exports, interpolated).
fn window_json(seconds: u64, c: &LabelCounters) -> String {
    let requests = c.total_requests();
    let errors: u64 = c.errors.iter().sum();
    let ms =
        |us: Option<u64>| us.map_or("null".to_string(), |v| format!("{:.3}", v as f64 / 1000.0));
    format!(
        "{{\"seconds\":{seconds},\"requests\":{requests},\"rps\":{:.3},\"errors\":{{\"client\":{},\"gateway\":{},\"provider\":{}}},\
         \"error_rate\":{:.4},\"tokens\":{{\"input\":{},\"output\":{}}},\"latency_ms\":{{\"p50\":{},\"p99\":{}}},\"ttft_ms\":{{\"p50\":{}}}}}",
        requests as f64 / seconds.max(1) as f64,
        c.errors[0],
        c.errors[1],
        c.errors[2],
        if requests == 0 {
            0.0
        } else {
            errors as f64 / requests as f64
        },
        c.input_tokens,
        c.output_tokens,
        ms(c.duration.quantile_us(0.5)),
        ms(c.duration.quantile_us(0.99)),
        ms(c.ttft.quantile_us(0.5)),
    )
}

/// `{"NAME":{"requests":..,"errors":..,"tokens":{..},"cost_usd":..},...}`.
fn counters_json(
    s: &mut String,
    by: &std::collections::BTreeMap<String, crate::stats::labels::KeyCounters>,
) {
    s.push('{');
    for (i, (name, k)) in by.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        crate::error::push_json_string(s, name);
        let _ = write!(
            s,
            ":{{\"requests\":{},\"errors\":{},\"tokens\":{{\"input\":{},\"output\":{}}},\"cost_usd\":{}}}",
            k.requests,
            k.errors,
            k.input_tokens,
            k.output_tokens,
            crate::stats::labels::usd(k.cost_picos)
        );
    }
    s.push('}');
}

/// Decodes a query-string part: `+` is a space, then `%XX` escapes.
fn query_decode(s: &str) -> String {
    let spaced: Vec<u8> = s
        .bytes()
        .map(|b| if b == b'+' { b' ' } else { b })
        .collect();
    String::from_utf8_lossy(&crate::http::percent_decode(&spaced)).into_owned()
}

pub fn render_json(m: &Merged, logs: &LogStats, cache: Option<Totals>) -> String {
    let c = &m.counters;
    let t = m.totals();
    let mut s = String::with_capacity(2048);
    let _ = write!(
        s,
        "{{\"uptime_s\":{},\"shards\":{},\"requests\":{},\"status\":{{\"2xx\":{},\"3xx\":{},\"4xx\":{},\"5xx\":{}}},\
         \"errors\":{{\"client\":{},\"gateway\":{},\"provider\":{}}},\"aborted\":{{\"upstream\":{},\"client\":{}}},\"streams\":{},\
         \"tokens\":{{\"input\":{},\"output\":{},\"cached\":{}}},\"cost\":{{\"usd\":{},\"unknown\":{},\"estimated\":{}}},\"upstream\":{{\"connects\":{},\"reused\":{},\"idle\":{}}},\
         \"connections\":{{\"accepted\":{},\"open\":{}}},\"dropped_snapshots\":{},\
         \"logs\":{{\"rows\":{},\"written\":{},\"dropped\":{},\"bodies_dropped\":{},\"uncounted\":{},\"write_errors\":{},\"deleted\":{}}},\"latency_us\":{{",
        m.started.elapsed().as_secs(),
        m.shards,
        t.total_requests(),
        t.requests[1],
        t.requests[2],
        t.requests[3],
        // Anything outside 2xx-4xx is a 5xx here, as no final answer is a 1xx.
        t.requests[4] + t.requests[0],
        t.errors[0],
        t.errors[1],
        t.errors[2],
        c.aborted_upstream,
        c.aborted_client,
        c.streams,
        t.input_tokens,
        t.output_tokens,
        t.cached_tokens,
        crate::stats::labels::usd(t.cost_picos),
        t.cost_unknown,
        t.cost_estimated,
        c.upstream_connects,
        c.upstream_reused,
        m.gauge(|g| g.idle_upstream),
        m.gauge(|g| g.connections_accepted),
        m.gauge(|g| g.open_connections),
        c.dropped_snapshots,
        logs.rows.load(Ordering::Relaxed),
        logs.rows_written.load(Ordering::Relaxed),
        c.log_dropped,
        c.log_bodies_dropped,
        c.log_uncounted,
        logs.write_errors.load(Ordering::Relaxed),
        logs.rows_deleted.load(Ordering::Relaxed),
    );
    for (i, (series, name)) in SERIES.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(
            s,
            "\"{name}\":{}",
            quantiles(&m.histograms[*series as usize])
        );
    }
    s.push_str("},\"keys\":");
    counters_json(&mut s, &m.keys);
    s.push_str(",\"metadata\":{");
    for (i, (field, values)) in m.metadata.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        crate::error::push_json_string(&mut s, field);
        s.push(':');
        counters_json(&mut s, values);
    }
    s.push_str("},\"windows\":{");
    let windows = [("1m", m.window(60)), ("5m", m.window(300))];
    for (i, (name, w)) in windows.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let sum = sum_labels(w.labels.values());
        let _ = write!(s, "\"{name}\":{}", window_json(w.seconds, &sum));
    }
    s.push_str("},\"models\":[");
    let uptime = m.started.elapsed().as_secs().max(1);
    for (i, ((p, model), since)) in m.labels.by.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str("{\"provider\":");
        crate::error::push_json_string(&mut s, p);
        s.push_str(",\"model\":");
        crate::error::push_json_string(&mut s, model);
        let _ = write!(s, ",\"since_start\":{}", window_json(uptime, since));
        for (name, w) in &windows {
            let here = w
                .labels
                .get(&(p.clone(), model.clone()))
                .copied()
                .unwrap_or_default();
            let _ = write!(s, ",\"{name}\":{}", window_json(w.seconds, &here));
        }
        s.push('}');
    }
    s.push_str("],\"providers\":{");
    for (i, (name, p)) in m.providers().iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let mut key = String::new();
        crate::error::push_json_string(&mut key, name);
        let _ = write!(
            s,
            "{key}:{{\"requests\":{},\"errors\":{},\"failed_tries\":{},\"input_tokens\":{},\"output_tokens\":{}}}",
            p.total_requests(),
            // The provider's own failures (its error statuses, cut answers,
            // errors inside its streams), not the client's refused requests.
            p.errors[crate::stats::labels::source_index(crate::error::ErrorSource::Provider)],
            p.failed_tries,
            p.input_tokens,
            p.output_tokens
        );
    }
    s.push('}');
    if let Some(c) = cache {
        s.push_str(",\"cache\":");
        s.push_str(&cache_json(&t, &c));
    }
    s.push_str("}\n");
    s
}

/// The `cache` object of `/stats`: what the partitions hold, and what the
/// cache did with requests since start.
fn cache_json(t: &LabelCounters, c: &Totals) -> String {
    let n = |s: CacheStatus| t.cache[s.index()];
    let served = n(CacheStatus::Hit) + n(CacheStatus::Coalesced);
    let looked = served + n(CacheStatus::Miss) + n(CacheStatus::Expired);
    let ratio = if looked == 0 {
        0.0
    } else {
        served as f64 / looked as f64
    };
    let mut s = format!(
        "{{\"entries\":{},\"bytes\":{},\"capacity\":{},\"stores\":{},\"evictions\":{},\"expirations\":{},\"purged\":{},\"in_flight\":{},\"followers\":{},\"hit_ratio\":{ratio:.4},\"requests\":{{",
        c.entries,
        c.bytes,
        c.capacity,
        c.stores,
        c.evictions,
        c.expirations,
        c.purged,
        c.flights,
        c.followers
    );
    for (i, st) in CacheStatus::ALL.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "\"{}\":{}", st.as_str(), n(*st));
    }
    let _ = write!(
        s,
        "}},\"saved_tokens\":{{\"input\":{},\"output\":{}}}}}",
        t.saved_input_tokens, t.saved_output_tokens
    );
    s
}

/// Client side for `aigw stats`: one GET over the socket, the body returned.
pub fn query(socket: &Path, path: &str) -> Result<String, String> {
    request(socket, "GET", path)
}

/// One request over the admin socket; the body of a 200, else an error that
/// quotes the answer.
pub fn request(socket: &Path, method: &str, path: &str) -> Result<String, String> {
    request_with_body(socket, method, path, "")
}

/// As [`request`], sending `body` (JSON); any 2xx is success.
pub fn request_with_body(
    socket: &Path,
    method: &str,
    path: &str,
    body: &str,
) -> Result<String, String> {
    let mut conn = UnixStream::connect(socket).map_err(|e| {
        format!(
            "cannot connect to admin socket {}: {e} (is aigw running?)",
            socket.display()
        )
    })?;
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    conn.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nhost: aigw\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    let mut resp = Vec::new();
    conn.read_to_end(&mut resp).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("malformed admin response")?;
    if !head.starts_with("HTTP/1.1 2") {
        return Err(format!(
            "admin socket answered: {}: {}",
            head.lines().next().unwrap_or(""),
            body.trim()
        ));
    }
    Ok(body.to_string())
}
