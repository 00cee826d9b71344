//! `[routes.<name>]`: a model name clients use (`model: "<name>"` or
//! `"dynamic/<name>"`) that stands for an ordered (fallback) or weighted list
//! of provider targets, with retries, what counts as a failure, and cooldowns.
//!
//! Owns reading a route into a [`RouteConfig`]; checking that each target
//! names a configured provider is done once the providers are read.

use super::providers::FromEnv;
use super::read::{Secret, Walker};
use std::time::Duration;

/// How a route orders its targets for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// In the configured order: the next one when one fails.
    Fallback,
    /// One chosen at random by weight first, then the others by weight.
    Weighted,
}

/// How the wait between two tries of one target grows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backoff {
    Constant,
    Linear,
    Exponential,
}

impl Backoff {
    pub fn parse(s: &str) -> Option<Backoff> {
        match s.trim().to_ascii_lowercase().as_str() {
            "constant" => Some(Backoff::Constant),
            "linear" => Some(Backoff::Linear),
            "exponential" => Some(Backoff::Exponential),
            _ => None,
        }
    }
}

/// Tries per target and the waits between them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Tries of one target before the next (1: no retry).
    pub attempts: u32,
    pub backoff: Backoff,
    /// The first wait.
    pub base: Duration,
    /// No wait is longer; a provider's `Retry-After` above it moves on to the next target.
    pub max: Duration,
    /// Each wait is drawn from its upper half at random, so clients spread out.
    pub jitter: bool,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry {
            attempts: 1,
            backoff: Backoff::Exponential,
            base: Duration::from_millis(200),
            max: Duration::from_secs(5),
            jitter: true,
        }
    }
}

/// Most tries of one target (Cloudflare allows 5).
pub const MAX_ATTEMPTS: u32 = 5;

/// Which failures move a request on (to a retry or the next target).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FallbackOn {
    pub statuses: Vec<u16>,
    /// No response head within the first-byte timeout.
    pub timeout: bool,
    /// The provider could not be reached (refused, reset, DNS, TLS).
    pub connect: bool,
}

impl Default for FallbackOn {
    fn default() -> FallbackOn {
        FallbackOn {
            statuses: vec![429, 500, 502, 503, 504, 529],
            timeout: true,
            connect: true,
        }
    }
}

/// When a target has failed `failures` times within `window`, it is skipped
/// for `duration`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cooldown {
    pub failures: u32,
    pub window: Duration,
    pub duration: Duration,
}

/// One provider and model a route may send to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetConfig {
    pub provider: String,
    pub model: String,
    /// Share of requests under `weighted` (relative).
    pub weight: u32,
    /// First-byte timeout for this target (else `timeouts.first_byte`).
    pub first_byte: Option<Duration>,
    /// Whole-response timeout for this target (the body included).
    pub timeout: Option<Duration>,
    /// Provider keys used in turn instead of the provider's own (read from
    /// the variables `api_keys_env` names).
    pub keys: Vec<Secret>,
}

/// A target list chosen when the request's metadata matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Variant {
    /// `(field, value)` pairs that must all match (`metadata.<field>`).
    pub when: Vec<(String, String)>,
    pub targets: Vec<TargetConfig>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteConfig {
    pub name: String,
    pub strategy: Strategy,
    pub targets: Vec<TargetConfig>,
    /// Checked in order before `targets`; the first that matches is used.
    pub variants: Vec<Variant>,
    pub retry: Retry,
    pub fallback_on: FallbackOn,
    pub cooldown: Option<Cooldown>,
}

/// Reads environment variables (the process's, or a test's).
type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

pub(super) fn read_routes(w: &mut Walker, root: &toml::Table, env: Env<'_>) -> Vec<RouteConfig> {
    let Some(routes) = w.table(root, "routes") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (name, value) in routes {
        let at = format!("routes.{name}");
        let Some(t) = value.as_table() else {
            w.err(&at, format!("must be a table, e.g. [{at}] with targets"));
            continue;
        };
        if name.contains('/') || name.is_empty() {
            w.err(
                &at,
                "a route name is a model name without '/', e.g. [routes.chat]".into(),
            );
            continue;
        }
        let p = |k: &str| format!("{at}.{k}");
        let strategy = match w.string(Some(t), &p("strategy")).as_deref() {
            None | Some("fallback") => Strategy::Fallback,
            Some("weighted") => Strategy::Weighted,
            Some(other) => {
                w.err(
                    &p("strategy"),
                    format!("`{other}` is not a strategy; use \"fallback\" or \"weighted\""),
                );
                Strategy::Fallback
            }
        };
        let targets = read_targets(w, t, &p("targets"), env);
        if targets.is_empty() && !t.contains_key("targets") {
            w.err(
                &p("targets"),
                "missing: e.g. targets = [{ provider = \"openai\", model = \"gpt-4o-mini\" }]"
                    .into(),
            );
        }
        let mut variants = Vec::new();
        if let Some(toml::Value::Array(items)) = t.get("variants") {
            for (i, item) in items.iter().enumerate() {
                let Some(v) = item.as_table() else { continue };
                let vat = format!("{at}.variants[{i}]");
                let when = read_when(w, v, &format!("{vat}.when"));
                let targets = read_targets(w, v, &format!("{vat}.targets"), env);
                if !v.contains_key("targets") {
                    w.err(
                        &format!("{vat}.targets"),
                        "missing: a variant needs its own targets".into(),
                    );
                }
                if strategy == Strategy::Weighted
                    && !targets.is_empty()
                    && targets.iter().all(|t| t.weight == 0)
                {
                    w.err(
                        &format!("{vat}.targets"),
                        "a weighted route needs a target with weight above 0".into(),
                    );
                }
                variants.push(Variant { when, targets });
            }
        }
        let retry = read_retry(w, t.get("retry").and_then(|v| v.as_table()), &p("retry"));
        let fallback_on = read_fallback_on(w, t, &p("fallback_on"));
        let cooldown = t
            .get("cooldown")
            .and_then(|v| v.as_table())
            .map(|c| Cooldown {
                failures: w
                    .uint(Some(c), &format!("{at}.cooldown.failures"), 1, 1000)
                    .unwrap_or(3) as u32,
                window: w.duration(Some(c), &format!("{at}.cooldown.window"), "30s"),
                duration: w.duration(Some(c), &format!("{at}.cooldown.duration"), "30s"),
            });
        out.push(RouteConfig {
            name: name.clone(),
            strategy,
            targets,
            variants,
            retry,
            fallback_on,
            cooldown,
        });
    }
    out
}

fn read_targets(w: &mut Walker, t: &toml::Table, at: &str, env: Env<'_>) -> Vec<TargetConfig> {
    let items = match t.get("targets") {
        None => return Vec::new(),
        Some(toml::Value::Array(items)) if !items.is_empty() => items,
        Some(_) => {
            w.err(
                at,
                "must be a non-empty array of { provider, model } tables".into(),
            );
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let tat = format!("{at}[{i}]");
        let Some(x) = item.as_table() else {
            w.err(
                &tat,
                "must be a table: { provider = \"...\", model = \"...\" }".into(),
            );
            continue;
        };
        let provider = w.string(Some(x), &format!("{tat}.provider"));
        let model = w.string(Some(x), &format!("{tat}.model"));
        let (Some(provider), Some(model)) = (provider, model) else {
            w.err(&tat, "needs both provider and model".into());
            continue;
        };
        let weight = w
            .uint(Some(x), &format!("{tat}.weight"), 0, 1_000_000)
            .unwrap_or(1) as u32;
        let first_byte = x
            .contains_key("first_byte")
            .then(|| w.duration(Some(x), &format!("{tat}.first_byte"), "300s"));
        let timeout = x
            .contains_key("timeout")
            .then(|| w.duration(Some(x), &format!("{tat}.timeout"), "600s"));
        let mut keys = Vec::new();
        let kat = format!("{tat}.api_keys_env");
        for (j, var) in w
            .strings(Some(x), &kat)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let at = format!("{kat}[{j}]");
            match super::providers::key_from_env(w, &at, var, env) {
                FromEnv::Key(k) => keys.push(k),
                FromEnv::Reported => {}
                FromEnv::Unset => w.err(
                    &at,
                    format!(
                        "{} is not set (or empty); set it to a provider key",
                        super::providers::shown_variable(var)
                    ),
                ),
            }
        }
        out.push(TargetConfig {
            provider,
            model,
            weight,
            first_byte,
            timeout,
            keys,
        });
    }
    out
}

fn read_when(w: &mut Walker, t: &toml::Table, at: &str) -> Vec<(String, String)> {
    let Some(toml::Value::Table(when)) = t.get("when") else {
        w.err(
            at,
            "missing: e.g. when = { \"metadata.tier\" = \"free\" }".into(),
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (k, v) in when {
        let Some(field) = k.strip_prefix("metadata.") else {
            w.err(
                &format!("{at}.{k}"),
                "conditions name request metadata, e.g. \"metadata.tier\"".into(),
            );
            continue;
        };
        let value = match v {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                w.err(
                    &format!("{at}.{k}"),
                    format!(
                        "expected a string, an integer or a boolean, found {}{}",
                        other.type_str(),
                        if other.is_float() {
                            " (write a fraction as text, e.g. \"1.5\": it is matched as written)"
                        } else {
                            ""
                        }
                    ),
                );
                continue;
            }
        };
        out.push((field.to_string(), value));
    }
    out
}

fn read_retry(w: &mut Walker, t: Option<&toml::Table>, at: &str) -> Retry {
    let mut r = Retry::default();
    let Some(t) = t else { return r };
    r.attempts = w
        .uint(
            Some(t),
            &format!("{at}.attempts"),
            1,
            u64::from(MAX_ATTEMPTS),
        )
        .unwrap_or(1) as u32;
    if let Some(b) = w.string(Some(t), &format!("{at}.backoff")) {
        match Backoff::parse(&b) {
            Some(b) => r.backoff = b,
            None => w.err(
                &format!("{at}.backoff"),
                format!("`{b}` is not a backoff; use constant, linear or exponential"),
            ),
        }
    }
    r.base = w.duration(Some(t), &format!("{at}.base"), "200ms");
    r.max = w.duration(Some(t), &format!("{at}.max"), "5s");
    if let Some(j) = w.flag(Some(t), &format!("{at}.jitter")) {
        r.jitter = j;
    }
    r
}

fn read_fallback_on(w: &mut Walker, t: &toml::Table, at: &str) -> FallbackOn {
    let Some(v) = t.get("fallback_on") else {
        return FallbackOn::default();
    };
    let mut f = FallbackOn {
        statuses: Vec::new(),
        timeout: false,
        connect: false,
    };
    let Some(items) = v.as_array() else {
        w.err(
            at,
            "must be an array such as [429, 500, \"timeout\", \"connect\"]".into(),
        );
        return FallbackOn::default();
    };
    for (i, item) in items.iter().enumerate() {
        match item {
            toml::Value::Integer(n) if (400..600).contains(n) => f.statuses.push(*n as u16),
            toml::Value::String(s) if s == "timeout" => f.timeout = true,
            toml::Value::String(s) if s == "connect" => f.connect = true,
            other => w.err(
                &format!("{at}[{i}]"),
                format!("`{other}` is not a failure; use a status from 400 to 599, \"timeout\" or \"connect\""),
            ),
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn a_targets_keys_are_read_from_the_environment_and_never_shown() {
        let toml = "[routes.r]\ntargets = [{ provider = \"mock\", model = \"m\", api_keys_env = [\"K1\", \"K2\"] }]\n";
        let env = |k: &str| match k {
            "K1" => Some("sk-first-secret".to_string()),
            "K2" => Some("sk-second-secret".to_string()),
            _ => None,
        };
        let c = Config::from_toml_with_env(toml, &env).unwrap();
        assert_eq!(c.routes[0].targets[0].keys.len(), 2);
        for fingerprint in [false, true] {
            let shown = format!("{:?}", c.entries(fingerprint));
            assert!(!shown.contains("secret"), "{shown}");
        }
        assert!(!format!("{c:?}").contains("secret"));
        let routes = crate::targets::build(&c, &crate::providers::build(&c));
        assert!(!format!("{routes:?}").contains("secret"));
    }
}
