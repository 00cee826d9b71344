//! Request controls: the `aigw-*` request headers (each also accepted as
//! `cf-aig-*`, so code written for Cloudflare AI Gateway works unchanged) that
//! steer what the gateway does with one request, read once into typed values.
//!
//! A stage right after routing. Today: `metadata` (a flat JSON object of at
//! most [`MAX_METADATA_ENTRIES`] strings, numbers or booleans), `event-id`
//! (stored as given) and `collect-log` (`false` keeps the request out of the
//! log). Anything malformed is a 400 that says why. Also picks up the one
//! header value the log keeps, `User-Agent`. Cache and retry controls join here.

use crate::error::GatewayError;
use crate::http::request::RequestView;
use crate::record::{MAX_METADATA_ENTRIES, Metadata, MetadataMemo};
/// Longest event id, in bytes.
pub const MAX_EVENT_ID: usize = 256;
/// Longest user agent kept, in bytes (longer ones are cut).
pub const MAX_USER_AGENT: usize = 512;
/// Longest `cache-key`, in bytes.
pub const MAX_CACHE_KEY: usize = 1024;

/// What the controls of one request ask for.
#[derive(Debug, Default, PartialEq)]
pub struct Controls<'a> {
    pub metadata: Option<Metadata>,
    pub event_id: Option<String>,
    /// `false` when the client asked not to be logged.
    pub collect_log: bool,
    /// Borrowed from the request: only the log copies it, and only when it keeps the request.
    pub user_agent: Option<&'a [u8]>,
    pub cache: CacheControls<'a>,
    /// `custom-cost`: this request's own prices, replacing the table's.
    pub custom_cost: Option<CustomCost>,
    /// `include-cost: true`: the answer says what it cost (`aigw-cost`).
    pub include_cost: bool,
    /// `request-timeout`, `max-attempts`, `retry-delay`, `backoff`.
    pub retry: RetryControls,
}

/// Per-request retry controls (Cloudflare's names), over the route's own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetryControls {
    /// `request-timeout` (ms): no response head within it is a timeout,
    /// which falls back.
    pub timeout: Option<std::time::Duration>,
    /// `max-attempts` (1 to 5): tries per target.
    pub max_attempts: Option<u32>,
    /// `retry-delay` (ms): the first wait between tries.
    pub delay: Option<std::time::Duration>,
    /// `backoff`: constant, linear or exponential.
    pub backoff: Option<crate::config::routes::Backoff>,
}

/// `custom-cost`: USD per token (Cloudflare's names). Fields left out are
/// taken from the price table.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CustomCost {
    pub per_token_in: Option<f64>,
    pub per_token_out: Option<f64>,
    pub per_cache_read_token: Option<f64>,
    pub per_cache_write_token: Option<f64>,
}

/// `cache-ttl`, `skip-cache` and `cache-key`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheControls<'a> {
    /// How long this answer is kept (else `cache.default_ttl`).
    pub ttl: Option<std::time::Duration>,
    /// Neither look up nor store.
    pub skip: bool,
    /// Replaces the upstream path and body in the key (still scoped).
    pub key: Option<&'a str>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Control {
    Metadata,
    EventId,
    CollectLog,
    CacheTtl,
    SkipCache,
    CacheKey,
    CustomCost,
    IncludeCost,
    RequestTimeout,
    MaxAttempts,
    RetryDelay,
    Backoff,
}

/// How many controls there are (for the duplicate check).
const CONTROLS: usize = 12;

/// Which control a header names, if any (either prefix, any case).
fn control_of(name: &[u8]) -> Option<Control> {
    let rest = strip_prefix_ci(name, b"aigw-").or_else(|| strip_prefix_ci(name, b"cf-aig-"))?;
    if rest.eq_ignore_ascii_case(b"metadata") {
        Some(Control::Metadata)
    } else if rest.eq_ignore_ascii_case(b"event-id") {
        Some(Control::EventId)
    } else if rest.eq_ignore_ascii_case(b"collect-log") {
        Some(Control::CollectLog)
    } else if rest.eq_ignore_ascii_case(b"cache-ttl") {
        Some(Control::CacheTtl)
    } else if rest.eq_ignore_ascii_case(b"skip-cache") {
        Some(Control::SkipCache)
    } else if rest.eq_ignore_ascii_case(b"cache-key") {
        Some(Control::CacheKey)
    } else if rest.eq_ignore_ascii_case(b"custom-cost") {
        Some(Control::CustomCost)
    } else if rest.eq_ignore_ascii_case(b"include-cost") {
        Some(Control::IncludeCost)
    } else if rest.eq_ignore_ascii_case(b"request-timeout") {
        Some(Control::RequestTimeout)
    } else if rest.eq_ignore_ascii_case(b"max-attempts") {
        Some(Control::MaxAttempts)
    } else if rest.eq_ignore_ascii_case(b"retry-delay") {
        Some(Control::RetryDelay)
    } else if rest.eq_ignore_ascii_case(b"backoff") {
        Some(Control::Backoff)
    } else {
        None
    }
}

fn strip_prefix_ci<'a>(name: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (name.len() >= prefix.len() && name[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &name[prefix.len()..])
}

/// Longest `request-timeout`: ten minutes.
const MAX_TIMEOUT_MS: u64 = 600_000;

/// Longest `retry-delay`: a minute.
const MAX_RETRY_DELAY_MS: u64 = 60_000;

/// A whole number from `min` to `max`, else a 400 naming the header.
fn number(
    value: &[u8],
    min: u64,
    max: u64,
    code: &'static str,
    shown: &dyn Fn() -> String,
    unit: &str,
) -> Result<u64, GatewayError> {
    std::str::from_utf8(value)
        .ok()
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| {
            bad(
                code,
                format!(
                    "`{}` must be a whole number of {unit} from {min} to {max}",
                    shown()
                ),
            )
        })
}

fn bad(code: &'static str, message: String) -> GatewayError {
    GatewayError::bad_request(code, message)
}

/// The stage: reads every control header of `req` (a metadata object through
/// the shard's `memo`).
pub fn read<'a>(
    req: &RequestView<'a>,
    memo: &mut MetadataMemo,
) -> Result<Controls<'a>, GatewayError> {
    let mut c = Controls {
        collect_log: true,
        ..Controls::default()
    };
    let mut seen = [false; CONTROLS];
    for h in &req.head.headers {
        let name = h.name.get(req.window);
        let value = h.value.get(req.window);
        if name.eq_ignore_ascii_case(b"user-agent") {
            c.user_agent = Some(&value[..value.len().min(MAX_USER_AGENT)]);
            continue;
        }
        let Some(control) = control_of(name) else {
            continue;
        };
        // The header's name, for error messages only.
        let shown = || String::from_utf8_lossy(name).to_ascii_lowercase();
        if std::mem::replace(&mut seen[control as usize], true) {
            return Err(bad(
                "duplicate_header",
                format!(
                    "`{}` is given more than once (aigw-* and cf-aig-* name the same control); send it once",
                    shown()
                ),
            ));
        }
        match control {
            Control::Metadata => c.metadata = Some(metadata(memo, value, &shown)?),
            Control::EventId => {
                let id = std::str::from_utf8(value)
                    .ok()
                    .filter(|v| v.len() <= MAX_EVENT_ID && !v.is_empty())
                    .ok_or_else(|| {
                        bad(
                            "invalid_event_id",
                            format!(
                                "`{}` must be 1 to {MAX_EVENT_ID} bytes of UTF-8 text",
                                shown()
                            ),
                        )
                    })?;
                c.event_id = Some(id.to_string());
            }
            Control::CollectLog => {
                c.collect_log = flag(value).ok_or_else(|| {
                    bad(
                        "invalid_collect_log",
                        format!("`{}` must be true or false", shown()),
                    )
                })?
            }
            Control::SkipCache => {
                c.cache.skip = flag(value).ok_or_else(|| {
                    bad(
                        "invalid_skip_cache",
                        format!("`{}` must be true or false", shown()),
                    )
                })?
            }
            Control::CacheTtl => {
                let max = crate::config::cache::MAX_TTL.as_secs();
                let secs = std::str::from_utf8(value)
                    .ok()
                    .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|v| v.parse::<u64>().ok())
                    .filter(|n| (1..=max).contains(n))
                    .ok_or_else(|| {
                        bad(
                            "invalid_cache_ttl",
                            format!(
                                "`{}` must be a whole number of seconds from 1 to {max} (31 days)",
                                shown()
                            ),
                        )
                    })?;
                c.cache.ttl = Some(std::time::Duration::from_secs(secs));
            }
            Control::CacheKey => {
                let key = std::str::from_utf8(value)
                    .ok()
                    .filter(|v| !v.is_empty() && v.len() <= MAX_CACHE_KEY)
                    .ok_or_else(|| {
                        bad(
                            "invalid_cache_key",
                            format!(
                                "`{}` must be 1 to {MAX_CACHE_KEY} bytes of UTF-8 text",
                                shown()
                            ),
                        )
                    })?;
                c.cache.key = Some(key);
            }
            Control::CustomCost => c.custom_cost = Some(custom_cost(value, &shown)?),
            Control::RequestTimeout => {
                c.retry.timeout = Some(std::time::Duration::from_millis(number(
                    value,
                    1,
                    MAX_TIMEOUT_MS,
                    "invalid_request_timeout",
                    &shown,
                    "milliseconds",
                )?))
            }
            Control::MaxAttempts => {
                c.retry.max_attempts = Some(number(
                    value,
                    1,
                    u64::from(crate::config::routes::MAX_ATTEMPTS),
                    "invalid_max_attempts",
                    &shown,
                    "tries",
                )? as u32)
            }
            Control::RetryDelay => {
                c.retry.delay = Some(std::time::Duration::from_millis(number(
                    value,
                    0,
                    MAX_RETRY_DELAY_MS,
                    "invalid_retry_delay",
                    &shown,
                    "milliseconds",
                )?))
            }
            Control::Backoff => {
                c.retry.backoff = Some(
                    std::str::from_utf8(value)
                        .ok()
                        .and_then(crate::config::routes::Backoff::parse)
                        .ok_or_else(|| {
                            bad(
                                "invalid_backoff",
                                format!("`{}` must be constant, linear or exponential", shown()),
                            )
                        })?,
                )
            }
            Control::IncludeCost => {
                c.include_cost = flag(value).ok_or_else(|| {
                    bad(
                        "invalid_include_cost",
                        format!("`{}` must be true or false", shown()),
                    )
                })?
            }
        }
    }
    Ok(c)
}

/// Parses `custom-cost`: a JSON object of non-negative USD-per-token numbers.
fn custom_cost(value: &[u8], header: &dyn Fn() -> String) -> Result<CustomCost, GatewayError> {
    use simd_json::prelude::*;
    let fail = |why: &str| {
        bad(
            "invalid_custom_cost",
            format!(
                "`{}` {why}; send e.g. {{\"per_token_in\":0.000001,\"per_token_out\":0.000002}}",
                header()
            ),
        )
    };
    let mut copy = value.to_vec();
    let v = simd_json::to_owned_value(&mut copy)
        .map_err(|_| fail("is not JSON (or holds a number past 1e308, which none can read)"))?;
    let o = v.as_object().ok_or_else(|| fail("is not a JSON object"))?;
    let max = crate::config::prices::MAX_PER_MILLION / 1e6;
    let mut c = CustomCost::default();
    for (k, v) in o.iter() {
        let slot = match k.as_str() {
            "per_token_in" => &mut c.per_token_in,
            "per_token_out" => &mut c.per_token_out,
            "per_cache_read_token" => &mut c.per_cache_read_token,
            "per_cache_write_token" => &mut c.per_cache_write_token,
            other => {
                return Err(fail(&format!(
                    "has `{other}`; use per_token_in, per_token_out, per_cache_read_token, per_cache_write_token"
                )));
            }
        };
        // A name given twice would mean whichever a reader keeps: said
        // before either value is judged.
        if slot.is_some() {
            return Err(fail(&format!("names `{k}` twice")));
        }
        let n = v
            .as_f64()
            .or_else(|| v.as_u64().map(|n| n as f64))
            .filter(|n| n.is_finite() && (0.0..=max).contains(n))
            .ok_or_else(|| {
                fail(&format!(
                    "has `{k}` that is not a number from 0 to {max} (USD per token)"
                ))
            })?;
        *slot = Some(n);
    }
    if c == CustomCost::default() {
        return Err(fail("sets no price"));
    }
    Ok(c)
}

/// `true` or `false`, any case.
fn flag(value: &[u8]) -> Option<bool> {
    if value.eq_ignore_ascii_case(b"true") {
        Some(true)
    } else if value.eq_ignore_ascii_case(b"false") {
        Some(false)
    } else {
        None
    }
}

/// Parses a metadata header: a flat JSON object, at most five entries, each a
/// string, number or boolean.
fn metadata(
    memo: &mut MetadataMemo,
    value: &[u8],
    header: &dyn Fn() -> String,
) -> Result<Metadata, GatewayError> {
    memo.parse(value).map_err(|why| {
        bad(
            "invalid_metadata",
            format!(
                "`{}` must be a flat JSON object of at most {MAX_METADATA_ENTRIES} entries whose values are strings, numbers or booleans: {why}",
                header()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::{HeadLimits, RequestHead, parse_request};
    use crate::record::MetaValue;

    /// Reads the controls of a request with `headers` and hands them to `f`
    /// (they borrow the request).
    fn with_controls<R>(
        headers: &str,
        f: impl FnOnce(Result<Controls<'_>, GatewayError>) -> R,
    ) -> R {
        let raw = format!("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n{headers}\r\n");
        let mut head = RequestHead::default();
        let limits = HeadLimits {
            max_head_bytes: 16 << 10,
            max_headers: 64,
            max_body_bytes: 1 << 20,
        };
        parse_request(raw.as_bytes(), &limits, &mut head).unwrap();
        f(read(
            &RequestView {
                head: &head,
                window: raw.as_bytes(),
                body: b"",
            },
            &mut MetadataMemo::new(),
        ))
    }

    #[test]
    fn controls_are_read_under_either_prefix() {
        let headers = "aigw-metadata: {\"user\":\"ann\",\"n\":-1.5e3,\"vip\":true}\r\ncf-aig-event-id: ev-1\r\nCF-AIG-Collect-Log: false\r\nUser-Agent: sdk/1\r\n";
        with_controls(headers, |c| {
            let c = c.unwrap();
            let m = c.metadata.unwrap();
            assert_eq!(
                *m.0,
                vec![
                    ("user".into(), MetaValue::Str("ann".into())),
                    ("n".into(), MetaValue::Num("-1.5e3".into())),
                    ("vip".into(), MetaValue::Bool(true)),
                ]
            );
            let mut json = String::new();
            m.write_json(&mut json);
            assert_eq!(json, r#"{"user":"ann","n":-1.5e3,"vip":true}"#);
            assert_eq!(c.event_id.as_deref(), Some("ev-1"));
            assert!(!c.collect_log);
            assert_eq!(c.user_agent, Some(&b"sdk/1"[..]));
        });
        with_controls("", |c| assert!(c.unwrap().collect_log));
    }

    #[test]
    fn cache_controls_are_read_and_checked() {
        let headers =
            "cf-aig-cache-ttl: 60\r\naigw-skip-cache: TRUE\r\naigw-cache-key: tenant-a/q1\r\n";
        with_controls(headers, |c| {
            let c = c.unwrap().cache;
            assert_eq!(c.ttl, Some(std::time::Duration::from_secs(60)));
            assert!(c.skip);
            assert_eq!(c.key, Some("tenant-a/q1"));
        });
        with_controls("", |c| {
            assert_eq!(c.unwrap().cache, CacheControls::default())
        });
        for (header, code) in [
            ("aigw-cache-ttl: 0", "invalid_cache_ttl"),
            ("aigw-cache-ttl: -5", "invalid_cache_ttl"),
            ("aigw-cache-ttl: 1.5", "invalid_cache_ttl"),
            ("aigw-cache-ttl: 99999999999", "invalid_cache_ttl"),
            ("cf-aig-skip-cache: yes", "invalid_skip_cache"),
            ("aigw-cache-key: ", "invalid_cache_key"),
            (
                "aigw-cache-ttl: 5\r\ncf-aig-cache-ttl: 6",
                "duplicate_header",
            ),
        ] {
            with_controls(&format!("{header}\r\n"), |c| {
                let e = c.unwrap_err();
                assert_eq!((e.status, e.code), (400, code), "{header}");
            });
        }
    }

    #[test]
    fn bad_controls_are_400s_that_say_why() {
        for (header, says) in [
            ("aigw-metadata: [1]", "not a JSON object"),
            ("aigw-metadata: {\"a\":{\"b\":1}}", "nesting"),
            (
                "aigw-metadata: {\"a\":null}",
                "not a string, number or boolean",
            ),
            (
                "aigw-metadata: {\"a\":1,\"b\":2,\"c\":3,\"d\":4,\"e\":5,\"f\":6}",
                "6 entries",
            ),
            ("aigw-metadata: {\"a\":1,\"a\":2}", "more than once"),
            (
                "aigw-metadata: {\"a\":1-2}",
                "not a string, number or boolean",
            ),
            ("aigw-metadata: {\"a\":1} x", "after the object"),
            ("aigw-collect-log: maybe", "true or false"),
            ("aigw-event-id: x\r\ncf-aig-event-id: y", "more than once"),
        ] {
            let e = with_controls(&format!("{header}\r\n"), |c| c.unwrap_err());
            assert_eq!(e.status, 400, "{header}");
            assert!(e.message.contains(says), "{header}: {}", e.message);
        }
    }
}
