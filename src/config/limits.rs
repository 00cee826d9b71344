//! `[[rate_limits]]`: rules on how much a scope may use per window.
//!
//! Owns reading the rules into [`RateRule`]s: what is counted, per what
//! (the whole gateway, each key, each value of a metadata field), how many,
//! over which window and how the window moves. `[limits]` stays the HTTP size
//! limits. Rules are reloadable; a rule keeps its counts across a reload as
//! long as what it counts, per what and its window stay the same.

use super::auth::pattern_problem;
use super::read::Walker;
use std::time::Duration;

/// Largest `limit` (counts are 32-bit per window).
pub const MAX_LIMIT: u64 = u32::MAX as u64;
/// Longest rate-limit window.
pub const MAX_WINDOW: Duration = Duration::from_secs(31 * 86_400);

/// Whose use a rule counts.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Everything through the gateway, together.
    Gateway,
    /// Each gateway key apart (requests without a key share one count).
    Key,
    /// Each value of this metadata field apart (from the key's metadata or
    /// the request's `aigw-metadata`; requests without it share one count).
    Metadata(String),
    /// Each provider apart (budgets only).
    Provider,
}

impl Scope {
    pub fn parse(s: &str, allow_provider: bool) -> Result<Scope, String> {
        match s {
            "gateway" => Ok(Scope::Gateway),
            "key" => Ok(Scope::Key),
            "provider" if allow_provider => Ok(Scope::Provider),
            _ => match s.strip_prefix("metadata.") {
                Some(f) if !f.is_empty() => Ok(Scope::Metadata(f.to_string())),
                _ => Err(format!(
                    "`{s}` is not a scope; use \"gateway\", \"key\"{} or \"metadata.<field>\" (e.g. \"metadata.user\")",
                    if allow_provider { ", \"provider\"" } else { "" }
                )),
            },
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Scope::Gateway => "gateway".into(),
            Scope::Key => "key".into(),
            Scope::Provider => "provider".into(),
            Scope::Metadata(f) => format!("metadata.{f}"),
        }
    }
}

/// What a rule counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Count {
    Requests,
    InputTokens,
    OutputTokens,
    TotalTokens,
    /// Requests in flight at once (no window).
    Concurrent,
}

impl Count {
    pub fn as_str(self) -> &'static str {
        match self {
            Count::Requests => "requests",
            Count::InputTokens => "input_tokens",
            Count::OutputTokens => "output_tokens",
            Count::TotalTokens => "total_tokens",
            Count::Concurrent => "concurrent",
        }
    }

    pub fn is_tokens(self) -> bool {
        matches!(
            self,
            Count::InputTokens | Count::OutputTokens | Count::TotalTokens
        )
    }
}

/// How the window moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Technique {
    /// The current window plus the previous one weighted by how much of it
    /// still overlaps the last `window` (Cloudflare's sliding).
    Sliding,
    /// Windows aligned to the clock (Unix epoch multiples of `window`).
    Fixed,
}

impl Technique {
    pub fn as_str(self) -> &'static str {
        match self {
            Technique::Sliding => "sliding",
            Technique::Fixed => "fixed",
        }
    }
}

/// One `[[rate_limits]]` table.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RateRule {
    /// Named in the 429's message (default `rate_limits[i]`).
    pub name: String,
    pub scope: Scope,
    pub count: Count,
    pub limit: u64,
    pub window: Duration,
    pub technique: Technique,
    /// `provider/model` patterns the rule applies to; empty: every request.
    pub models: Vec<String>,
    /// The gateway keys (ids) whose requests the rule applies to; empty:
    /// every request. A key's own limit: `scope = "key"` and its id here.
    pub keys: Vec<String>,
    /// Cache hits count toward a `requests` rule (never toward token rules).
    pub count_cache_hits: bool,
    /// Output tokens reserved for a request without `max_tokens`.
    pub default_max_tokens: u64,
}

pub(super) fn read_rate_limits(w: &mut Walker, root: &toml::Table) -> Vec<RateRule> {
    let Some(toml::Value::Array(items)) = root.get("rate_limits") else {
        return Vec::new();
    };
    let mut rules = Vec::new();
    let mut names: Vec<(String, String)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Some(t) = item.as_table() else { continue };
        let at = format!("rate_limits[{i}]");
        let p = |k: &str| format!("{at}.{k}");
        let name = w.string(Some(t), &p("name")).unwrap_or_else(|| at.clone());
        unique_name(w, &mut names, &name, &at);
        let scope = read_scope(w, t, &p("scope"), false);
        let count = match w.string(Some(t), &p("count")).as_deref() {
            Some("requests") => Some(Count::Requests),
            Some("input_tokens") => Some(Count::InputTokens),
            Some("output_tokens") => Some(Count::OutputTokens),
            Some("total_tokens") => Some(Count::TotalTokens),
            Some("concurrent") => Some(Count::Concurrent),
            Some(other) => {
                w.err(
                    &p("count"),
                    format!("`{other}` is not counted; use requests, input_tokens, output_tokens, total_tokens or concurrent"),
                );
                None
            }
            None => {
                missing(
                    w,
                    t,
                    &p("count"),
                    "\"requests\", \"input_tokens\", \"output_tokens\", \"total_tokens\" or \"concurrent\"",
                );
                None
            }
        };
        let limit = w.uint(Some(t), &p("limit"), 1, MAX_LIMIT);
        if !t.contains_key("limit") {
            w.err(
                &p("limit"),
                "missing: how many per window, e.g. limit = 100".into(),
            );
        }
        let window = if t.contains_key("window") {
            if count == Some(Count::Concurrent) {
                w.err(
                    &p("window"),
                    "a concurrent limit counts requests in flight, over no window: remove window"
                        .into(),
                );
            }
            let d = w.duration(Some(t), &p("window"), "60s");
            if d > MAX_WINDOW {
                w.err(&p("window"), format!("{d:?} is longer than 31 days"));
            }
            if d < Duration::from_millis(100) {
                w.err(&p("window"), "must be at least 100ms".into());
            }
            d
        } else {
            if count.is_some_and(|c| c != Count::Concurrent) {
                w.err(
                    &p("window"),
                    "missing: the window the limit counts over, e.g. window = \"60s\"".into(),
                );
            }
            Duration::from_secs(60)
        };
        let technique = match w.string(Some(t), &p("technique")).as_deref() {
            None | Some("sliding") => Technique::Sliding,
            Some("fixed") => Technique::Fixed,
            Some(other) => {
                w.err(
                    &p("technique"),
                    format!("`{other}` is not a technique; use \"sliding\" or \"fixed\""),
                );
                Technique::Sliding
            }
        };
        let models = w.strings(Some(t), &p("models")).unwrap_or_default();
        for (j, m) in models.iter().enumerate() {
            if let Some(why) = pattern_problem(m) {
                w.err(&format!("{}[{j}]", p("models")), why);
            }
        }
        let keys = read_rule_keys(w, t, &p("keys"));
        let count_cache_hits = w.flag(Some(t), &p("count_cache_hits")).unwrap_or(false);
        let default_max_tokens = w
            .uint(Some(t), &p("default_max_tokens"), 1, MAX_LIMIT)
            .unwrap_or(4096);
        if let (Some(scope), Some(count), Some(limit)) = (scope, count, limit) {
            rules.push(RateRule {
                name,
                scope,
                count,
                limit,
                window,
                technique,
                models,
                keys,
                count_cache_hits,
                default_max_tokens,
            });
        }
    }
    rules
}

/// A rule's `keys`: gateway key ids (a key created over the admin socket
/// may be named before it exists).
pub(super) fn read_rule_keys(w: &mut Walker, t: &toml::Table, path: &str) -> Vec<String> {
    let keys = w.strings(Some(t), path).unwrap_or_default();
    for (j, id) in keys.iter().enumerate() {
        if !super::auth::valid_key_id(id) {
            w.err(
                &format!("{path}[{j}]"),
                format!("`{id}` is not a key id; use the ids of [keys.<id>] or `aigw key list`"),
            );
        }
    }
    keys
}

/// A rule's `scope` (budgets also take `provider`); `None` after an error.
/// Notes rule `at`'s `name`; one that an earlier rule (in `names`) has is an
/// error: the name tells rules apart (in 429s, `/usage`, and which counts
/// are whose), and two of one name would share their counts.
pub(super) fn unique_name(w: &mut Walker, names: &mut Vec<(String, String)>, name: &str, at: &str) {
    if let Some((_, first)) = names.iter().find(|(n, _)| n == name) {
        w.err(
            &format!("{at}.name"),
            format!("`{name}` is the name of {first} too: give each rule a name of its own"),
        );
    }
    names.push((name.to_string(), at.to_string()));
}

pub(super) fn read_scope(
    w: &mut Walker,
    t: &toml::Table,
    path: &str,
    allow_provider: bool,
) -> Option<Scope> {
    match w.string(Some(t), path) {
        Some(s) => Scope::parse(&s, allow_provider)
            .map_err(|e| w.err(path, e))
            .ok(),
        None => {
            let what = if allow_provider {
                "\"gateway\", \"key\", \"provider\" or \"metadata.<field>\""
            } else {
                "\"gateway\", \"key\" or \"metadata.<field>\""
            };
            missing(w, t, path, what);
            None
        }
    }
}

pub(super) fn missing(w: &mut Walker, t: &toml::Table, path: &str, what: &str) {
    if !t.contains_key(path.rsplit('.').next().unwrap_or(path)) {
        w.err(path, format!("missing: use {what}"));
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::super::tests::errors;
    use super::*;

    #[test]
    fn rules_read_with_defaults() {
        let c = Config::from_toml(
            "[[rate_limits]]\nscope = \"key\"\ncount = \"requests\"\nlimit = 100\nwindow = \"60s\"\n\
             [[rate_limits]]\nname = \"per-user\"\nscope = \"metadata.user\"\ncount = \"total_tokens\"\nlimit = 5000\nwindow = \"1h\"\ntechnique = \"fixed\"\nmodels = [\"openai/*\"]\n\
             [[rate_limits]]\nscope = \"gateway\"\ncount = \"concurrent\"\nlimit = 4\n",
        )
        .unwrap();
        let r = &c.rate_limits;
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].name, "rate_limits[0]");
        assert_eq!(
            (r[0].scope.clone(), r[0].count, r[0].limit),
            (Scope::Key, Count::Requests, 100)
        );
        assert_eq!(r[0].technique, Technique::Sliding);
        assert!(!r[0].count_cache_hits);
        assert_eq!(r[1].scope, Scope::Metadata("user".into()));
        assert_eq!(
            (r[1].technique, r[1].window.as_secs()),
            (Technique::Fixed, 3600)
        );
        assert_eq!(r[1].models, ["openai/*"]);
        assert_eq!(r[2].count, Count::Concurrent);
    }

    #[test]
    fn bad_rules_name_their_path() {
        let e = errors(
            "[[rate_limits]]\nscope = \"team\"\ncount = \"requests\"\nlimit = 1\nwindow = \"1s\"\n",
        )
        .join("\n");
        assert!(
            e.contains("rate_limits[0].scope") && e.contains("metadata.<field>"),
            "{e}"
        );
        let e = errors(
            "[[rate_limits]]\nscope = \"key\"\ncount = \"calls\"\nlimit = 1\nwindow = \"1s\"\n",
        )
        .join("\n");
        assert!(e.contains("rate_limits[0].count"), "{e}");
        let e = errors("[[rate_limits]]\nscope = \"key\"\ncount = \"requests\"\nlimit = 1\n")
            .join("\n");
        assert!(e.contains("rate_limits[0].window: missing"), "{e}");
        let e = errors("[[rate_limits]]\nscope = \"key\"\ncount = \"requests\"\nwindow = \"1s\"\n")
            .join("\n");
        assert!(e.contains("rate_limits[0].limit: missing"), "{e}");
        let e = errors("[[rate_limits]]\nscope = \"key\"\ncount = \"requests\"\nlimit = 1\nwindow = \"1s\"\nlimt = 3\n").join("\n");
        assert!(e.contains("rate_limits[0].limt: unknown key"), "{e}");
        let e = errors("rate_limits = 3\n").join("\n");
        assert!(e.contains("rate_limits: must be an array of tables"), "{e}");
        let e = errors(
            "[[rate_limits]]\nscope = \"key\"\ncount = \"requests\"\nlimit = 0\nwindow = \"1s\"\n",
        )
        .join("\n");
        assert!(e.contains("rate_limits[0].limit"), "{e}");
        // A window on a concurrent limit would count nothing: said, not ignored.
        let e = errors(
            "[[rate_limits]]\nscope = \"key\"\ncount = \"concurrent\"\nlimit = 4\nwindow = \"10s\"\n",
        )
        .join("\n");
        assert!(
            e.contains("rate_limits[0].window") && e.contains("in flight"),
            "{e}"
        );
    }
}
