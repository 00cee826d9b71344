//! Reading the log: the filters of `aigw logs` and `GET /logs` (Cloudflare's,
//! by the same names), newest first, and the two ways a row is shown (a table
//! line for people, JSON for programs).

use super::time::{format_ms, parse_time};
use crate::error::push_json_string;
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension};
use std::fmt::Write as _;
use std::time::Duration;

/// Rows returned when no `--limit` is given.
pub const DEFAULT_LIMIT: usize = 50;
/// Most rows one query returns.
pub const MAX_LIMIT: usize = 100_000;

/// `--status`: one code, or a class (`4xx`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Code(u16),
    Class(u16),
}

/// What `aigw logs` selects. Every field narrows; an empty filter selects all.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filter {
    pub status: Option<Status>,
    pub source: Option<String>,
    pub cache: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    /// The gateway key's id.
    pub key: Option<String>,
    /// The route the request named (`routing.route`).
    pub route: Option<String>,
    pub meta: Vec<(String, String)>,
    pub id: Option<String>,
    pub event_id: Option<String>,
    /// Rows whose user agent contains this.
    pub user_agent: Option<String>,
    pub min_cost: Option<f64>,
    pub max_cost: Option<f64>,
    /// Input plus output tokens.
    pub min_tokens: Option<u64>,
    pub max_tokens: Option<u64>,
    /// Total time.
    pub min_duration: Option<Duration>,
    pub max_duration: Option<Duration>,
    /// Arrival time, Unix milliseconds (inclusive).
    pub since: Option<u64>,
    /// Arrival time, Unix milliseconds (exclusive).
    pub until: Option<u64>,
    /// Only rows stored after this one (`--follow`).
    pub after_seq: Option<i64>,
    pub limit: usize,
}

impl Filter {
    /// Builds a filter from `(name, value)` pairs named as the CLI flags are
    /// (without `--`): `status`, `source`, `meta`, `since`, ... `now_ms` anchors
    /// relative times. Unknown names and bad values are errors that say so.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
        now_ms: u64,
    ) -> Result<Filter, String> {
        let mut f = Filter {
            limit: DEFAULT_LIMIT,
            ..Filter::default()
        };
        let mut seen = Vec::new();
        for (name, v) in pairs {
            // `meta` may repeat: every pair must match.
            if name != "meta" {
                once(&mut seen, name)?;
            }
            let num = |what: &str| -> Result<u64, String> {
                v.parse()
                    .map_err(|_| format!("{name}: `{v}` is not {what}"))
            };
            let dur = || -> Result<Duration, String> {
                crate::config::parse_duration(v).map_err(|e| format!("{name}: {e}"))
            };
            let cost = || -> Result<f64, String> {
                v.parse::<f64>()
                    .ok()
                    .filter(|c| c.is_finite())
                    .ok_or_else(|| format!("{name}: `{v}` is not a number"))
            };
            match name {
                "status" => f.status = Some(parse_status(v)?),
                "source" => {
                    if !matches!(v, "client" | "gateway" | "provider") {
                        return Err(format!("source: `{v}` must be client, gateway or provider"));
                    }
                    f.source = Some(v.to_string());
                }
                "cache" => {
                    let known = crate::record::CacheStatus::ALL
                        .iter()
                        .any(|c| c.as_str().eq_ignore_ascii_case(v));
                    if !known {
                        return Err(format!(
                            "cache: `{v}` must be hit, coalesced, miss, expired or bypass"
                        ));
                    }
                    f.cache = Some(v.to_ascii_uppercase());
                }
                "provider" => f.provider = Some(v.to_string()),
                "model" => f.model = Some(v.to_string()),
                "key" => f.key = Some(v.to_string()),
                "route" => f.route = Some(v.to_string()),
                "meta" => {
                    let (k, val) = v
                        .split_once('=')
                        .filter(|(k, _)| !k.is_empty())
                        .ok_or_else(|| format!("meta: `{v}` must be KEY=VALUE"))?;
                    f.meta.push((k.to_string(), val.to_string()));
                }
                "id" => f.id = Some(v.to_ascii_lowercase()),
                "event-id" | "event_id" => f.event_id = Some(v.to_string()),
                "user-agent" | "user_agent" => f.user_agent = Some(v.to_string()),
                "min-cost" | "min_cost" => f.min_cost = Some(cost()?),
                "max-cost" | "max_cost" => f.max_cost = Some(cost()?),
                "min-tokens" | "min_tokens" => f.min_tokens = Some(num("a token count")?),
                "max-tokens" | "max_tokens" => f.max_tokens = Some(num("a token count")?),
                "min-duration" | "min_duration" => f.min_duration = Some(dur()?),
                "max-duration" | "max_duration" => f.max_duration = Some(dur()?),
                "since" => {
                    f.since = Some(parse_time(v, now_ms).map_err(|e| format!("since: {e}"))?)
                }
                "until" => {
                    f.until = Some(parse_time(v, now_ms).map_err(|e| format!("until: {e}"))?)
                }
                "limit" => {
                    let n = num("a row count")? as usize;
                    if n == 0 || n > MAX_LIMIT {
                        return Err(format!("limit: use 1..={MAX_LIMIT}"));
                    }
                    f.limit = n;
                }
                other => return Err(format!("unknown filter `{other}`")),
            }
        }
        if let (Some(since), Some(until)) = (f.since, f.until)
            && since > until
        {
            return Err(format!(
                "since ({}) is after until ({}): nothing can match; swap them",
                crate::calendar::format_ms(since),
                crate::calendar::format_ms(until)
            ));
        }
        Ok(f)
    }

    /// The statement and its parameters. With `listed`, only the requests
    /// whose `seq` is in a JSON array bound as `?1` (left NULL here), and the
    /// first `--meta` pair is left to that list; without it every pair is
    /// read from the row.
    fn sql(&self, listed: bool) -> (String, Vec<Value>) {
        let from = "requests r";
        let mut wheres: Vec<String> = Vec::new();
        let mut args: Vec<Value> = Vec::new();
        let arg = |v: Value, args: &mut Vec<Value>| {
            args.push(v);
            format!("?{}", args.len())
        };
        if listed {
            let list = arg(Value::Null, &mut args);
            wheres.push(format!("r.seq IN (SELECT value FROM json_each({list}))"));
        }
        for (k, v) in self.meta.iter().skip(usize::from(listed)) {
            let (pk, pv) = (
                arg(k.clone().into(), &mut args),
                arg(v.clone().into(), &mut args),
            );
            wheres.push(format!("aigw_meta_has(r.metadata, {pk}, {pv})"));
        }
        let ts = "r.ts";
        match self.status {
            Some(Status::Code(c)) => wheres.push(format!(
                "r.status = {}",
                arg(i64::from(c).into(), &mut args)
            )),
            Some(Status::Class(c)) => {
                let lo = arg(i64::from(c * 100).into(), &mut args);
                let hi = arg(i64::from(c * 100 + 99).into(), &mut args);
                wheres.push(format!("r.status BETWEEN {lo} AND {hi}"));
            }
            None => {}
        }
        let mut eq = |col: &str, v: &Option<String>, args: &mut Vec<Value>| {
            if let Some(v) = v {
                wheres.push(format!("{col} = {}", arg(v.clone().into(), args)));
            }
        };
        eq("r.error_source", &self.source, &mut args);
        eq("r.cache", &self.cache, &mut args);
        eq("r.provider", &self.provider, &mut args);
        eq("r.key_id", &self.key, &mut args);
        eq("json_extract(r.routing, '$.route')", &self.route, &mut args);
        eq("r.id", &self.id, &mut args);
        // A UUIDv7 carries its arrival time: look it up through the time index.
        let id_ts = self
            .id
            .as_deref()
            .and_then(crate::reqid::RequestId::parse)
            .map(|id| id.unix_ms() as i64);
        eq("r.event_id", &self.event_id, &mut args);
        // `provider/model`, as `aigw usage --by model` prints it, names the
        // pair too (unless a provider is given apart), as well as a model
        // so named.
        if let Some(whole) = &self.model {
            let w = arg(whole.clone().into(), &mut args);
            match whole.split_once('/') {
                Some((provider, model)) if self.provider.is_none() => {
                    let p = arg(provider.to_string().into(), &mut args);
                    let m = arg(model.to_string().into(), &mut args);
                    wheres.push(format!(
                        "(r.model = {w} OR (r.provider = {p} AND r.model = {m}))"
                    ));
                }
                _ => wheres.push(format!("r.model = {w}")),
            }
        }
        if let Some(ts) = id_ts {
            wheres.push(format!("r.ts = {}", arg(ts.into(), &mut args)));
        }
        if let Some(ua) = &self.user_agent {
            wheres.push(format!(
                "instr(r.user_agent, {}) > 0",
                arg(ua.clone().into(), &mut args)
            ));
        }
        let mut range = |expr: &str, op: &str, v: Option<Value>, args: &mut Vec<Value>| {
            if let Some(v) = v {
                wheres.push(format!("{expr} {op} {}", arg(v, args)));
            }
        };
        range("r.cost", ">=", self.min_cost.map(Value::from), &mut args);
        range("r.cost", "<=", self.max_cost.map(Value::from), &mut args);
        let tokens = "(coalesce(r.tokens_in, 0) + coalesce(r.tokens_out, 0))";
        range(
            tokens,
            ">=",
            self.min_tokens.map(|n| Value::from(saturated(n))),
            &mut args,
        );
        range(
            tokens,
            "<=",
            self.max_tokens.map(|n| Value::from(saturated(n))),
            &mut args,
        );
        let us = |d: Duration| Value::from(i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        range("r.total_us", ">=", self.min_duration.map(us), &mut args);
        range("r.total_us", "<=", self.max_duration.map(us), &mut args);
        range(
            ts,
            ">=",
            self.since.map(|t| Value::from(saturated(t))),
            &mut args,
        );
        range(
            ts,
            "<",
            self.until.map(|t| Value::from(saturated(t))),
            &mut args,
        );
        range("r.seq", ">", self.after_seq.map(Value::from), &mut args);
        let mut sql = format!("SELECT {COLUMNS} FROM {from}");
        if !wheres.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&wheres.join(" AND "));
        }
        if self.after_seq.is_some() {
            // Following: in the order rows were stored.
            let _ = write!(sql, " ORDER BY r.seq ASC LIMIT {}", self.limit);
        } else {
            // Rows of one millisecond newest stored first (the order
            // within one was SQLite's choice).
            let _ = write!(sql, " ORDER BY {ts} DESC, r.seq DESC LIMIT {}", self.limit);
        }
        (sql, args)
    }
}

fn parse_status(v: &str) -> Result<Status, String> {
    let b = v.as_bytes();
    if b.len() == 3 && (b'1'..=b'5').contains(&b[0]) && b[1..].eq_ignore_ascii_case(b"xx") {
        return Ok(Status::Class(u16::from(b[0] - b'0')));
    }
    match v.parse::<u16>() {
        Ok(c) if (100..=599).contains(&c) => Ok(Status::Code(c)),
        _ => Err(format!(
            "status: `{v}` must be a code like 429 or a class like 4xx"
        )),
    }
}

const COLUMNS: &str = "r.seq, r.id, r.ts, r.route, r.provider, r.model, r.path, r.status, r.error_source, \
    r.error_code, r.outcome, r.stream, r.cache, r.gateway_us, r.upstream_us, r.ttft_us, r.total_us, \
    r.tokens_in, r.tokens_out, r.tokens_cached, r.cost, r.bytes_in, r.bytes_out, r.user_agent, \
    r.event_id, r.key_id, r.metadata, r.cache_key, r.cost_estimated, r.context_share, \
    r.routing";

/// One stored request.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub seq: i64,
    pub id: String,
    pub ts: i64,
    pub route: String,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub path: Option<String>,
    pub status: i64,
    pub error_source: Option<String>,
    pub error_code: Option<String>,
    pub outcome: String,
    pub stream: bool,
    pub cache: Option<String>,
    pub gateway_us: i64,
    pub upstream_us: Option<i64>,
    pub ttft_us: Option<i64>,
    pub total_us: i64,
    pub tokens_in: Option<i64>,
    pub tokens_out: Option<i64>,
    pub tokens_cached: Option<i64>,
    pub cost: Option<f64>,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub user_agent: Option<String>,
    pub event_id: Option<String>,
    pub key_id: Option<String>,
    /// The metadata object as JSON text.
    pub metadata: Option<String>,
    /// The cache key (32 hex digits), when the cache computed one.
    pub cache_key: Option<String>,
    /// The cost comes from estimated tokens (cut before its usage).
    pub cost_estimated: bool,
    /// Input tokens over the model's context window.
    pub context_share: Option<f64>,
    /// A request that could retry or fall back: `{"step","tries"}` (JSON).
    pub routing: Option<String>,
}

impl Row {
    fn from_sql(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
        Ok(Row {
            seq: r.get(0)?,
            id: r.get(1)?,
            ts: r.get(2)?,
            route: r.get(3)?,
            provider: r.get(4)?,
            model: r.get(5)?,
            path: r.get(6)?,
            status: r.get(7)?,
            error_source: r.get(8)?,
            error_code: r.get(9)?,
            outcome: r.get(10)?,
            stream: r.get(11)?,
            cache: r.get(12)?,
            gateway_us: r.get(13)?,
            upstream_us: r.get(14)?,
            ttft_us: r.get(15)?,
            total_us: r.get(16)?,
            tokens_in: r.get(17)?,
            tokens_out: r.get(18)?,
            tokens_cached: r.get(19)?,
            cost: r.get(20)?,
            bytes_in: r.get(21)?,
            bytes_out: r.get(22)?,
            user_agent: r.get(23)?,
            event_id: r.get(24)?,
            key_id: r.get(25)?,
            metadata: r.get(26)?,
            cache_key: r.get(27)?,
            cost_estimated: r.get::<_, Option<bool>>(28)?.unwrap_or(false),
            context_share: r.get(29)?,
            routing: r.get(30)?,
        })
    }

    /// One JSON object (a line of `--json` output).
    pub fn to_json(&self) -> String {
        let mut s = String::with_capacity(512);
        let text = |s: &mut String, k: &str, v: Option<&str>| {
            let _ = write!(s, ",\"{k}\":");
            match v {
                Some(v) => push_json_string(s, v),
                None => s.push_str("null"),
            }
        };
        let int = |s: &mut String, k: &str, v: Option<i64>| {
            let _ = match v {
                Some(v) => write!(s, ",\"{k}\":{v}"),
                None => write!(s, ",\"{k}\":null"),
            };
        };
        s.push_str("{\"id\":");
        push_json_string(&mut s, &self.id);
        text(&mut s, "time", Some(&format_ms(self.ts as u64)));
        text(&mut s, "route", Some(&self.route));
        text(&mut s, "provider", self.provider.as_deref());
        text(&mut s, "model", self.model.as_deref());
        text(&mut s, "path", self.path.as_deref());
        int(&mut s, "status", Some(self.status));
        text(&mut s, "error_source", self.error_source.as_deref());
        text(&mut s, "error_code", self.error_code.as_deref());
        text(&mut s, "outcome", Some(&self.outcome));
        let _ = write!(s, ",\"stream\":{}", self.stream);
        text(&mut s, "cache", self.cache.as_deref());
        text(&mut s, "cache_key", self.cache_key.as_deref());
        int(&mut s, "gateway_us", Some(self.gateway_us));
        int(&mut s, "upstream_us", self.upstream_us);
        int(&mut s, "ttft_us", self.ttft_us);
        int(&mut s, "total_us", Some(self.total_us));
        int(&mut s, "tokens_in", self.tokens_in);
        int(&mut s, "tokens_out", self.tokens_out);
        int(&mut s, "tokens_cached", self.tokens_cached);
        let _ = match self.cost {
            Some(c) => write!(s, ",\"cost\":{c}"),
            None => write!(s, ",\"cost\":null"),
        };
        let _ = write!(s, ",\"cost_estimated\":{}", self.cost_estimated);
        let _ = match self.context_share {
            Some(c) => write!(s, ",\"context_share\":{c}"),
            None => write!(s, ",\"context_share\":null"),
        };
        // Stored as JSON by the gateway itself.
        let _ = write!(
            s,
            ",\"routing\":{}",
            self.routing.as_deref().unwrap_or("null")
        );
        int(&mut s, "bytes_in", Some(self.bytes_in));
        int(&mut s, "bytes_out", Some(self.bytes_out));
        text(&mut s, "user_agent", self.user_agent.as_deref());
        text(&mut s, "event_id", self.event_id.as_deref());
        text(&mut s, "key_id", self.key_id.as_deref());
        // Stored as JSON by the gateway itself.
        let _ = write!(
            s,
            ",\"metadata\":{}",
            self.metadata.as_deref().unwrap_or("null")
        );
        s.push('}');
        s
    }
}

/// JSON text of `seq` lists gathered before the requests they name are read
/// (about 8,000 requests).
const LIST_BYTES: usize = 64 << 10;

/// Runs `f` against the store, newest first (or, following, in store order).
pub fn query(conn: &Connection, f: &Filter) -> rusqlite::Result<Vec<Row>> {
    if f.meta.is_empty() || f.after_seq.is_some() {
        // Following reads only the rows stored since the last look.
        let (sql, args) = f.sql(false);
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), Row::from_sql)?;
        return rows.collect();
    }
    by_meta(conn, f, LIST_BYTES)
}

/// Newest first among the requests carrying the first `--meta` pair: its
/// `meta_seqs` rows newest first, a few at a time, each group's requests
/// through the other filters, until the rows kept are all newer than any
/// request the rows left can list.
fn by_meta(conn: &Connection, f: &Filter, list_bytes: usize) -> rusqlite::Result<Vec<Row>> {
    let (key, value) = &f.meta[0];
    let (sql, mut args) = f.sql(true);
    let mut requests = conn.prepare_cached(&sql)?;
    let mut lists = conn
        .prepare_cached(
            "SELECT ts_max, seqs FROM meta_seqs WHERE key = ?1 AND value = ?2
             AND ts_max >= ?3 AND ts_min < ?4 ORDER BY ts_max DESC",
        )
        .map_err(|e| match e {
            rusqlite::Error::SqliteFailure(code, Some(m)) if m.contains("meta_seqs") => {
                rusqlite::Error::SqliteFailure(
                    code,
                    Some(format!(
                        "{m} (the store was written by an older aigw: start this one on it once)"
                    )),
                )
            }
            e => e,
        })?;
    let since = f.since.map_or(i64::MIN, |t| t.min(i64::MAX as u64) as i64);
    let until = f.until.map_or(i64::MAX, |t| t.min(i64::MAX as u64) as i64);
    let mut rows = lists.query(rusqlite::params![key, value, since, until])?;
    let mut found: Vec<Row> = Vec::new();
    let mut pending = next_list(&mut rows)?;
    while let Some((_, first)) = pending.take() {
        let mut list = String::from("[");
        add_seqs(&mut list, &first);
        while list.len() < list_bytes {
            match next_list(&mut rows)? {
                Some((_, seqs)) => add_seqs(&mut list, &seqs),
                None => break,
            }
        }
        list.push(']');
        pending = next_list(&mut rows)?;
        args[0] = Value::Text(list);
        for row in requests.query_map(rusqlite::params_from_iter(args.iter()), Row::from_sql)? {
            found.push(row?);
        }
        found.sort_by(|a, b| b.ts.cmp(&a.ts).then(b.seq.cmp(&a.seq)));
        found.truncate(f.limit);
        match &pending {
            Some((ts_max, _)) if found.len() >= f.limit && found[f.limit - 1].ts > *ts_max => break,
            _ => {}
        }
    }
    Ok(found)
}

/// The next `meta_seqs` row: its newest time and its `seq` list.
fn next_list(rows: &mut rusqlite::Rows<'_>) -> rusqlite::Result<Option<(i64, String)>> {
    Ok(match rows.next()? {
        Some(r) => Some((r.get(0)?, r.get(1)?)),
        None => None,
    })
}

/// Appends the numbers of the JSON array `seqs` to the open array `list`.
fn add_seqs(list: &mut String, seqs: &str) {
    let inner = seqs.trim().trim_start_matches('[').trim_end_matches(']');
    if !inner.is_empty() {
        if list.len() > 1 {
            list.push(',');
        }
        list.push_str(inner);
    }
}

/// A stored body and whether it was cut.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredBody {
    pub bytes: Vec<u8>,
    pub truncated: bool,
}

/// One request and its bodies (when they were stored).
#[derive(Clone, Debug, PartialEq)]
pub struct Shown {
    pub row: Row,
    pub request: Option<StoredBody>,
    pub response: Option<StoredBody>,
}

/// One request by id, with its payloads (when they were stored).
pub fn show(conn: &Connection, id: &str) -> rusqlite::Result<Option<Shown>> {
    let f = Filter {
        id: Some(id.to_ascii_lowercase()),
        limit: 1,
        ..Filter::default()
    };
    let Some(row) = query(conn, &f)?.into_iter().next() else {
        return Ok(None);
    };
    type Bodies = (Option<Vec<u8>>, bool, Option<Vec<u8>>, bool);
    let bodies: Option<Bodies> = conn
        .query_row(
            "SELECT request, request_truncated, response, response_truncated FROM payloads WHERE seq = ?1",
            [row.seq],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    let (req, resp) = match bodies {
        Some((q, qt, a, at)) => (
            q.map(|bytes| StoredBody {
                bytes,
                truncated: qt,
            }),
            a.map(|bytes| StoredBody {
                bytes,
                truncated: at,
            }),
        ),
        None => (None, None),
    };
    Ok(Some(Shown {
        row,
        request: req,
        response: resp,
    }))
}

/// Text safe to print on a terminal: control characters (escape sequences
/// included), Unicode's line and paragraph separators and its direction
/// controls (which reorder what follows them on the line) become `?`;
/// newlines and tabs stay when `keep_lines`.
pub fn printable(s: &str, keep_lines: bool) -> String {
    s.chars()
        .map(|c| match c {
            '\n' | '\t' if keep_lines => c,
            c if unprintable(c) => '?',
            c => c,
        })
        .collect()
}

/// What [`printable`] replaces (and `/metrics` in a label value): control
/// characters, Unicode's line and paragraph separators and its direction
/// controls.
pub fn unprintable(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{061c}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// The readable table `aigw logs` prints.
pub fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<24} {:<36} {:>3} {:<10} {:<24} {:>9} {:>7} {:>7}  {}\n",
        "time", "id", "sta", "provider", "model", "total_ms", "in", "out", "outcome"
    );
    for r in rows {
        let model = printable(r.model.as_deref().unwrap_or("-"), false);
        let model: String = model.chars().take(24).collect();
        let _ = writeln!(
            out,
            "{:<24} {:<36} {:>3} {:<10} {:<24} {:>9.1} {:>7} {:>7}  {}{}",
            format_ms(r.ts as u64),
            r.id,
            r.status,
            printable(r.provider.as_deref().unwrap_or("-"), false),
            model,
            r.total_us as f64 / 1000.0,
            r.tokens_in.map_or("-".into(), |n| n.to_string()),
            r.tokens_out.map_or("-".into(), |n| n.to_string()),
            r.outcome,
            r.error_code
                .as_deref()
                .map(|c| format!(" ({})", printable(c, false)))
                .unwrap_or_default(),
        );
    }
    out
}

/// Refuses a query parameter `name` given twice (`seen`: those given so
/// far): a second value would silently win over the first. `min_cost` and
/// `min-cost` are one name.
pub fn once(seen: &mut Vec<String>, name: &str) -> Result<(), String> {
    let canonical = name.replace('_', "-");
    if seen.contains(&canonical) {
        return Err(format!("{name}: given twice; give it once"));
    }
    seen.push(canonical);
    Ok(())
}

/// A filter's bound as SQLite's integer: values past `i64::MAX` (which
/// no stored count or time reaches) stay past every stored value instead of
/// wrapping negative.
fn saturated(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_escapes_are_not_printed() {
        assert_eq!(printable("a\u{1b}]52;x\u{7}b", false), "a?]52;x?b");
        assert_eq!(printable("l1\nl2\u{9b}", true), "l1\nl2?");
    }

    #[test]
    fn filters_parse_from_flag_pairs_and_refuse_nonsense() {
        let f = Filter::from_pairs(
            [
                ("status", "4xx"),
                ("source", "client"),
                ("meta", "user=ann"),
                ("meta", "team=a=b"),
                ("since", "1h"),
                ("min-duration", "250ms"),
                ("limit", "5"),
            ],
            10_000_000,
        )
        .unwrap();
        assert_eq!(f.status, Some(Status::Class(4)));
        assert_eq!(f.meta[1], ("team".into(), "a=b".into()));
        assert_eq!(f.since, Some(10_000_000 - 3_600_000));
        assert_eq!(f.min_duration, Some(Duration::from_millis(250)));
        assert_eq!(f.limit, 5);
        for (k, v) in [
            ("status", "4x"),
            ("status", "700"),
            ("source", "me"),
            ("meta", "novalue"),
            ("meta", "=x"),
            ("limit", "0"),
            ("colour", "red"),
            ("min-cost", "NaN"),
            ("cache", "NONE"),
        ] {
            assert!(Filter::from_pairs([(k, v)], 0).is_err(), "{k}={v}");
        }
        let f = Filter::from_pairs([("cache", "Coalesced")], 0).unwrap();
        assert_eq!(f.cache.as_deref(), Some("COALESCED"));
        // A filter given twice is refused (one would silently win), in
        // either spelling; `meta` repeats.
        for pairs in [
            [("model", "a"), ("model", "b")],
            [("min-cost", "1"), ("min_cost", "2")],
        ] {
            let e = Filter::from_pairs(pairs, 0).unwrap_err();
            assert!(e.contains("given twice"), "{e}");
        }
        assert!(Filter::from_pairs([("meta", "a=1"), ("meta", "b=2")], 0).is_ok());
        // A range that cannot hold anything says so.
        let e = Filter::from_pairs([("since", "1h"), ("until", "2h")], 10_000_000).unwrap_err();
        assert!(e.contains("is after until"), "{e}");
        assert!(Filter::from_pairs([("since", "2h"), ("until", "1h")], 10_000_000).is_ok());
    }
}

#[cfg(test)]
mod meta_tests {
    use super::*;
    use crate::logstore::write::Writer;
    use crate::record::{LogFacts, MetaValue, Metadata, RequestRecord};
    use crate::reqid::IdGen;
    use std::time::Instant;

    fn store(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("aigw-meta-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d.join("requests.db")
    }

    /// A record that arrived at `ts` with `meta`.
    fn record(ids: &mut IdGen, ts: u64, meta: &[(&str, MetaValue)]) -> RequestRecord {
        let mut r = RequestRecord::new(ids.id(ts), 0, Instant::now());
        r.status = 200;
        r.metadata = (!meta.is_empty()).then(|| {
            Metadata::from(
                meta.iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect::<Vec<_>>(),
            )
        });
        r.log = Some(Box::new(LogFacts {
            path: "/v1/chat/completions".into(),
            user_agent: None,
            event_id: None,
            request_body: None,
            response_body: None,
            routing: None,
        }));
        r
    }

    fn ids(rows: &[Row]) -> Vec<String> {
        rows.iter().map(|r| r.id.clone()).collect()
    }

    /// The rows `--meta` must select, newest first, worked out without
    /// `meta_seqs`: every row read and its metadata compared.
    fn expected(conn: &Connection, f: &Filter) -> Vec<Row> {
        let all = Filter {
            limit: MAX_LIMIT,
            meta: Vec::new(),
            ..f.clone()
        };
        let mut rows = query(conn, &all).unwrap();
        rows.retain(|r| {
            let m = r
                .metadata
                .as_deref()
                .and_then(|j| Metadata::parse_stored(j.as_bytes()).ok())
                .unwrap_or_default();
            f.meta
                .iter()
                .all(|(k, v)| m.0.iter().any(|(mk, mv)| mk == k && mv.as_text() == v))
        });
        rows.sort_by(|a, b| b.ts.cmp(&a.ts).then(b.seq.cmp(&a.seq)));
        rows.truncate(f.limit);
        rows
    }

    #[test]
    fn meta_filters_select_exactly_the_newest_rows_carrying_every_pair() {
        let path = store("select");
        let mut w = Writer::open(&path).unwrap();
        let mut idgen = IdGen::new(0);
        let t0 = 1_790_000_000_000u64;
        // 120 commits of 1 to 60 rows. Arrival times mostly rise with the
        // commits, but every 7th request arrived long before (a slow one
        // finishing late), so commits overlap in time.
        let mut n = 0u64;
        for commit in 0..120u64 {
            let batch: Vec<RequestRecord> = (0..1 + (commit * 37) % 60)
                .map(|_| {
                    n += 1;
                    let ts = if n.is_multiple_of(7) {
                        t0 + n * 10 - 5_000
                    } else {
                        t0 + n * 10
                    };
                    let user = format!("u{}", n % 13);
                    let mut meta = vec![("user", MetaValue::Str(user))];
                    if n.is_multiple_of(3) {
                        meta.push(("team", MetaValue::Str("a".into())));
                    }
                    if n.is_multiple_of(5) {
                        meta.push(("vip", MetaValue::Bool(true)));
                        meta.push(("n", MetaValue::Num("1.50".into())));
                    }
                    if n.is_multiple_of(11) {
                        meta.clear();
                    }
                    record(&mut idgen, ts, &meta)
                })
                .collect();
            w.insert(&batch).unwrap();
        }
        let conn = crate::logstore::open_for_reading(&path).unwrap();
        let now = t0 + n * 10 + 1;
        let cases: &[&[(&str, &str)]] = &[
            &[("meta", "user=u4")],
            &[("meta", "user=u4"), ("limit", "3")],
            &[("meta", "team=a"), ("limit", "500")],
            &[("meta", "team=a"), ("limit", "1")],
            &[("meta", "vip=true"), ("meta", "team=a")],
            &[("meta", "n=1.50"), ("limit", "7")],
            &[("meta", "n=1.5")],
            &[("meta", "user=nobody")],
            &[("meta", "user=u2"), ("since", "25s"), ("until", "10s")],
            &[("meta", "user=u5"), ("status", "200"), ("limit", "2")],
        ];
        for pairs in cases {
            let f = Filter::from_pairs(pairs.iter().copied(), now).unwrap();
            let got = query(&conn, &f).unwrap();
            let want = expected(&conn, &f);
            assert_eq!(ids(&got), ids(&want), "{pairs:?}");
            // A commit's list at a time, and a few at a time: the merge of
            // lists that overlap in time keeps the newest.
            for list_bytes in [1, 200] {
                let got = by_meta(&conn, &f, list_bytes).unwrap();
                assert_eq!(
                    ids(&got),
                    ids(&want),
                    "{pairs:?} in lists of {list_bytes} bytes"
                );
            }
            if !pairs
                .iter()
                .any(|(_, v)| v.contains("nobody") || *v == "n=1.5")
            {
                assert!(!want.is_empty(), "{pairs:?} selects rows");
            }
        }
        // Following reads the pairs from the rows themselves.
        let f = Filter {
            after_seq: Some(100),
            limit: MAX_LIMIT,
            ..Filter::from_pairs([("meta", "team=a")], now).unwrap()
        };
        let got = query(&conn, &f).unwrap();
        assert!(!got.is_empty());
        assert!(
            got.iter()
                .all(|r| r.seq > 100 && r.metadata.as_deref().unwrap().contains("\"team\":\"a\""))
        );
        let all_after = Filter {
            after_seq: Some(100),
            limit: MAX_LIMIT,
            ..Filter::default()
        };
        let carrying = query(&conn, &all_after)
            .unwrap()
            .into_iter()
            .filter(|r| {
                r.metadata
                    .as_deref()
                    .is_some_and(|m| m.contains("\"team\":\"a\""))
            })
            .count();
        assert_eq!(got.len(), carrying);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn a_store_with_a_row_per_metadata_entry_is_upgraded_in_place() {
        let path = store("upgrade");
        {
            // The layout before `meta_seqs`.
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE requests (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL,
                   ts INTEGER NOT NULL, route TEXT NOT NULL, provider TEXT, model TEXT, path TEXT,
                   status INTEGER NOT NULL, error_source TEXT, error_code TEXT, outcome TEXT NOT NULL,
                   stream INTEGER NOT NULL, cache TEXT, gateway_us INTEGER NOT NULL, upstream_us INTEGER,
                   ttft_us INTEGER, total_us INTEGER NOT NULL, tokens_in INTEGER, tokens_out INTEGER,
                   tokens_cached INTEGER, cost REAL, bytes_in INTEGER NOT NULL, bytes_out INTEGER NOT NULL,
                   user_agent TEXT, event_id TEXT, key_id TEXT, metadata TEXT);
                 CREATE TABLE meta (key TEXT NOT NULL, value TEXT NOT NULL, ts INTEGER NOT NULL,
                   seq INTEGER NOT NULL, PRIMARY KEY (key, value, ts, seq)) WITHOUT ROWID;",
            )
            .unwrap();
            for i in 1..=300i64 {
                let ts = 1_790_000_000_000 + i * 1_000;
                let user = format!("u{}", i % 4);
                c.execute(
                    "INSERT INTO requests (id, ts, route, status, outcome, stream, gateway_us, total_us,
                       bytes_in, bytes_out, metadata) VALUES (?1, ?2, 'unified', 200, 'completed', 0, 1, 1, 0, 0, ?3)",
                    rusqlite::params![format!("id-{i}"), ts, format!("{{\"user\":\"{user}\"}}")],
                )
                .unwrap();
                c.execute(
                    "INSERT INTO meta (key, value, ts, seq) VALUES ('user', ?1, ?2, ?3)",
                    rusqlite::params![user, ts, i],
                )
                .unwrap();
            }
        }
        drop(Writer::open(&path).unwrap());
        let conn = crate::logstore::open_for_reading(&path).unwrap();
        let old: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'meta'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(old, 0, "the old table is gone");
        let f = Filter::from_pairs([("meta", "user=u1"), ("limit", "1000")], u64::MAX / 2).unwrap();
        let got = query(&conn, &f).unwrap();
        let want: Vec<String> = (1..=300)
            .rev()
            .filter(|i| i % 4 == 1)
            .map(|i| format!("id-{i}"))
            .collect();
        assert_eq!(ids(&got), want);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
