//! The key table: every key the file may hold, its default and meaning.
//!
//! Owns [`KEYS`] and the two things read from it: the unknown-key check (every key
//! in the file must be listed, with a did-you-mean hint when it is not) and the
//! `aigw print-config` text ([`super::Config::describe_keys`]). Does not read values;
//! the sections do that, each for its own keys. A new key is one row here plus its
//! read in its section's file.

use super::read::Walker;

/// One documented key: its path (`*` stands for a provider name), default and meaning.
pub struct KeySpec {
    pub path: &'static str,
    pub default: &'static str,
    pub meaning: &'static str,
}

/// Every key the file may hold. `aigw print-config` prints this table, and the
/// unknown-key check uses it, so the two can never disagree.
pub const KEYS: &[KeySpec] = &[
    KeySpec {
        path: "server.listen",
        default: "127.0.0.1:8080",
        meaning: "address the data plane listens on (port 0 picks a free port)",
    },
    KeySpec {
        path: "server.shards",
        default: "0",
        meaning: "executors, one per CPU; 0 = one per CPU this process may run on",
    },
    KeySpec {
        path: "server.data_dir",
        default: "aigw-data",
        meaning: "directory for the admin socket, the request log (requests.db), the cache (cache/) and the lock (aigw.lock)",
    },
    KeySpec {
        path: "server.drain_timeout",
        default: "10s",
        meaning: "on SIGTERM, how long in-flight requests may take before exit (those still running near its end are stopped, charged and logged as shutting_down; give it at least 1.1s for that)",
    },
    KeySpec {
        path: "server.spin_before_park",
        default: "0us",
        meaning: "busy-poll this long before an idle shard sleeps (trades idle CPU for wake-up cost)",
    },
    KeySpec {
        path: "admin.socket",
        default: "<data_dir>/admin.sock",
        meaning: "Unix socket (mode 0600): /stats, /metrics, /logs, /config, POST /config/reload",
    },
    KeySpec {
        path: "admin.listen",
        default: "(off)",
        meaning: "TCP address serving /metrics and /healthz only (\"9090\" = loopback port 9090)",
    },
    KeySpec {
        path: "limits.max_head_bytes",
        default: "16KiB",
        meaning: "largest request head; larger gets 431",
    },
    KeySpec {
        path: "limits.max_headers",
        default: "64",
        meaning: "most request header lines; more gets 431",
    },
    KeySpec {
        path: "limits.max_body_bytes",
        default: "32MiB",
        meaning: "largest request body; larger gets 413 without reading it",
    },
    KeySpec {
        path: "limits.max_response_head_bytes",
        default: "64KiB",
        meaning: "largest provider response head; larger is a 502",
    },
    KeySpec {
        path: "timeouts.head",
        default: "10s",
        meaning: "time for a client to send a whole request head (408 after)",
    },
    KeySpec {
        path: "timeouts.body",
        default: "30s",
        meaning: "time for a client to send a whole request body (408 after)",
    },
    KeySpec {
        path: "timeouts.idle",
        default: "60s",
        meaning: "idle keep-alive connection lifetime between requests",
    },
    KeySpec {
        path: "timeouts.client_write",
        default: "60s",
        meaning: "longest a write to a client may stall before the connection is dropped",
    },
    KeySpec {
        path: "timeouts.upstream_connect",
        default: "5s",
        meaning: "TCP (+TLS) connect to a provider (502 after)",
    },
    KeySpec {
        path: "timeouts.first_byte",
        default: "300s",
        meaning: "provider's first response byte (504 after)",
    },
    KeySpec {
        path: "timeouts.stream_idle",
        default: "120s",
        meaning: "longest gap between two body reads from a provider (stream aborted after)",
    },
    KeySpec {
        path: "timeouts.upstream_idle",
        default: "30s",
        meaning: "pooled provider connection unused longer than this is closed",
    },
    KeySpec {
        path: "builtin_providers",
        default: "true",
        meaning: "include the built-in provider catalog (mock, openai, anthropic, groq, ...)",
    },
    KeySpec {
        path: "providers.*.kind",
        default: "openai",
        meaning: "wire protocol: openai (any OpenAI-compatible server), anthropic, google, azure, mock",
    },
    KeySpec {
        path: "providers.*.base_url",
        default: "(per provider)",
        meaning: "what the provider's own SDK uses as base URL, e.g. https://api.openai.com/v1",
    },
    KeySpec {
        path: "providers.*.api_key",
        default: "(none)",
        meaning: "provider key injected upstream; absent = forward the client's own key",
    },
    KeySpec {
        path: "providers.*.api_key_env",
        default: "(per provider)",
        meaning: "environment variable holding the provider key (read at start)",
    },
    KeySpec {
        path: "providers.*.api_version",
        default: "2024-10-21",
        meaning: "Azure OpenAI api-version for unified requests (kind azure only)",
    },
    KeySpec {
        path: "providers.*.default_max_tokens",
        default: "4096",
        meaning: "max_tokens written into a translated request (Anthropic requires one) that sets none",
    },
    KeySpec {
        path: "providers.*.ca_file",
        default: "(none)",
        meaning: "PEM file of extra CAs trusted for this provider (private CAs); public roots stay trusted",
    },
    KeySpec {
        path: "logs.enabled",
        default: "true",
        meaning: "keep a row per request in <data_dir>/requests.db (SQLite); `aigw logs` reads it",
    },
    KeySpec {
        path: "logs.payloads",
        default: "false",
        meaning: "also store request and response bodies (streams as the client received them)",
    },
    KeySpec {
        path: "logs.payload_max",
        default: "64KiB",
        meaning: "cap on each stored body; longer ones are cut and marked truncated",
    },
    KeySpec {
        path: "logs.sample",
        default: "1.0",
        meaning: "share of successful requests kept (errors are always kept)",
    },
    KeySpec {
        path: "logs.max_rows",
        default: "1000000",
        meaning: "rows kept at most; the oldest are deleted first, off the request path",
    },
    KeySpec {
        path: "logs.max_age",
        default: "30d",
        meaning: "rows older than this are deleted",
    },
    KeySpec {
        path: "logs.flush_interval",
        default: "200ms",
        meaning: "how often received rows are committed: what a crash or kill -9 can lose at most (< 1s)",
    },
    KeySpec {
        path: "logs.yield_to_requests",
        default: "true",
        meaning: "the log thread gives the CPU back to requests after every 32 rows: at saturation the log keeps fewer rows (their usage is tallied) and requests keep their latency; false keeps more rows at a tail latency of milliseconds",
    },
    KeySpec {
        path: "cache.enabled",
        default: "false",
        meaning: "exact-match response cache: identical requests are answered from <data_dir>/cache",
    },
    KeySpec {
        path: "cache.size",
        default: "1GiB",
        meaning: "bytes of all cache files together, split evenly across shards, allocated at start",
    },
    KeySpec {
        path: "cache.default_ttl",
        default: "1h",
        meaning: "how long an entry is served; `aigw-cache-ttl: <seconds>` sets it per request (1s..31d)",
    },
    KeySpec {
        path: "cache.max_entry",
        default: "4MiB",
        meaning: "largest response stored (status, headers and body); larger ones pass uncached",
    },
    KeySpec {
        path: "cache.shared",
        default: "false",
        meaning: "share entries between credentials; by default each provider key or gateway key has its own",
    },
    KeySpec {
        path: "cache.credential_headers",
        default: "[]",
        meaning: "more request headers that carry a credential (a custom provider's own), scoping entries like Authorization, x-api-key, Cookie, X-Auth-Token",
    },
    KeySpec {
        path: "auth.required",
        default: "false",
        meaning: "requests without a valid gateway key get 401 before anything reaches a provider",
    },
    KeySpec {
        path: "keys.*.secret_sha256",
        default: "(required)",
        meaning: "SHA-256 (hex) of the key's secret; `aigw key new ID` prints a secret and this line",
    },
    KeySpec {
        path: "keys.*.models",
        default: "[] (all)",
        meaning: "models the key may use: \"provider/model\" patterns, `*` a wildcard (\"openai/*\")",
    },
    KeySpec {
        path: "keys.*.metadata",
        default: "{}",
        meaning: "attribution every request with the key carries, e.g. { team = \"search\" }",
    },
    KeySpec {
        path: "rate_limits[].name",
        default: "rate_limits[i]",
        meaning: "named in the 429 message",
    },
    KeySpec {
        path: "rate_limits[].scope",
        default: "(required)",
        meaning: "whose use is counted: \"gateway\", \"key\" or \"metadata.<field>\" (e.g. metadata.user)",
    },
    KeySpec {
        path: "rate_limits[].count",
        default: "(required)",
        meaning: "requests, input_tokens, output_tokens, total_tokens, or concurrent (in flight at once)",
    },
    KeySpec {
        path: "rate_limits[].limit",
        default: "(required)",
        meaning: "how many per window (at most 4294967295)",
    },
    KeySpec {
        path: "rate_limits[].window",
        default: "(required)",
        meaning: "the window, e.g. \"60s\" (not for concurrent)",
    },
    KeySpec {
        path: "rate_limits[].technique",
        default: "sliding",
        meaning: "sliding (the previous window weighted by overlap) or fixed (clock-aligned)",
    },
    KeySpec {
        path: "rate_limits[].models",
        default: "[] (all)",
        meaning: "\"provider/model\" patterns the rule applies to",
    },
    KeySpec {
        path: "rate_limits[].keys",
        default: "[] (all)",
        meaning: "gateway key ids the rule applies to (a key's own limit: scope = \"key\" and its id)",
    },
    KeySpec {
        path: "rate_limits[].count_cache_hits",
        default: "false",
        meaning: "cache hits count toward a requests rule (never toward token rules)",
    },
    KeySpec {
        path: "rate_limits[].default_max_tokens",
        default: "4096",
        meaning: "output tokens reserved for a request without max_tokens (settled to the real usage)",
    },
    KeySpec {
        path: "prices.*.input",
        default: "(table)",
        meaning: "USD per million input tokens of \"provider/model\" (overrides or extends the shipped table; `aigw prices`)",
    },
    KeySpec {
        path: "prices.*.output",
        default: "(table)",
        meaning: "USD per million output tokens",
    },
    KeySpec {
        path: "prices.*.cached_input",
        default: "(none)",
        meaning: "USD per million cached input tokens (cache reads)",
    },
    KeySpec {
        path: "prices.*.cache_write",
        default: "(none)",
        meaning: "USD per million tokens written to a provider's prompt cache",
    },
    KeySpec {
        path: "prices.*.context_window",
        default: "(table)",
        meaning: "the model's context window, in tokens",
    },
    KeySpec {
        path: "budgets[].name",
        default: "budgets[i]",
        meaning: "named in the 429 message and `aigw usage`",
    },
    KeySpec {
        path: "budgets[].scope",
        default: "(required)",
        meaning: "whose spend: \"gateway\", \"key\", \"provider\" or \"metadata.<field>\"",
    },
    KeySpec {
        path: "budgets[].usd",
        default: "(required)",
        meaning: "US dollars per window",
    },
    KeySpec {
        path: "budgets[].window",
        default: "(required)",
        meaning: "\"daily\" or \"monthly\" (UTC calendar), or a duration such as \"7d\" (rolling)",
    },
    KeySpec {
        path: "budgets[].alert_at",
        default: "(none)",
        meaning: "share of the budget (0..1) at which a warning is logged, counted and flagged in /usage",
    },
    KeySpec {
        path: "budgets[].models",
        default: "[] (all)",
        meaning: "\"provider/model\" patterns the budget applies to",
    },
    KeySpec {
        path: "budgets[].keys",
        default: "[] (all)",
        meaning: "gateway key ids the budget applies to (a key's own budget: scope = \"key\" and its id)",
    },
    KeySpec {
        path: "budgets[].default_max_tokens",
        default: "4096",
        meaning: "output tokens reserved for a request without max_tokens (spend may pass the budget by what such requests use beyond it)",
    },
    KeySpec {
        path: "routes.*.strategy",
        default: "fallback",
        meaning: "\"fallback\" (targets in order) or \"weighted\" (by weight, then the others)",
    },
    KeySpec {
        path: "routes.*.targets[].provider",
        default: "(required)",
        meaning: "a configured provider",
    },
    KeySpec {
        path: "routes.*.targets[].model",
        default: "(required)",
        meaning: "the model that provider serves",
    },
    KeySpec {
        path: "routes.*.targets[].weight",
        default: "1",
        meaning: "share of requests under \"weighted\"",
    },
    KeySpec {
        path: "routes.*.targets[].timeout",
        default: "(none)",
        meaning: "this target's whole-response timeout (the body included)",
    },
    KeySpec {
        path: "routes.*.targets[].api_keys_env",
        default: "[]",
        meaning: "variables holding provider keys this target uses in turn (instead of the provider's)",
    },
    KeySpec {
        path: "routes.*.targets[].first_byte",
        default: "timeouts.first_byte",
        meaning: "this target's first-byte timeout (a fallback after)",
    },
    KeySpec {
        path: "routes.*.variants[].when",
        default: "(required)",
        meaning: "{ \"metadata.<field>\" = value, ... }: use these targets when all match",
    },
    KeySpec {
        path: "routes.*.variants[].targets[].provider",
        default: "(required)",
        meaning: "as in targets",
    },
    KeySpec {
        path: "routes.*.variants[].targets[].model",
        default: "(required)",
        meaning: "as in targets",
    },
    KeySpec {
        path: "routes.*.variants[].targets[].weight",
        default: "1",
        meaning: "as in targets",
    },
    KeySpec {
        path: "routes.*.variants[].targets[].timeout",
        default: "(none)",
        meaning: "this target's whole-response timeout (the body included)",
    },
    KeySpec {
        path: "routes.*.variants[].targets[].api_keys_env",
        default: "[]",
        meaning: "variables holding provider keys this target uses in turn (instead of the provider's)",
    },
    KeySpec {
        path: "routes.*.variants[].targets[].first_byte",
        default: "timeouts.first_byte",
        meaning: "as in targets",
    },
    KeySpec {
        path: "routes.*.retry.attempts",
        default: "1",
        meaning: "tries of one target before the next (at most 5)",
    },
    KeySpec {
        path: "routes.*.retry.backoff",
        default: "exponential",
        meaning: "constant, linear or exponential",
    },
    KeySpec {
        path: "routes.*.retry.base",
        default: "200ms",
        meaning: "the first wait between tries",
    },
    KeySpec {
        path: "routes.*.retry.max",
        default: "5s",
        meaning: "longest wait; a Retry-After above it moves on to the next target",
    },
    KeySpec {
        path: "routes.*.retry.jitter",
        default: "true",
        meaning: "draw each wait from its upper half at random",
    },
    KeySpec {
        path: "routes.*.fallback_on",
        default: "[429, 500, 502, 503, 504, 529, \"timeout\", \"connect\"]",
        meaning: "failures that lead to a retry or the next target",
    },
    KeySpec {
        path: "routes.*.cooldown.failures",
        default: "3",
        meaning: "failures within the window that cool a target down (cooldowns are off for a route without a `cooldown` table; these defaults fill one that is written)",
    },
    KeySpec {
        path: "routes.*.cooldown.window",
        default: "30s",
        meaning: "how far back failures are counted",
    },
    KeySpec {
        path: "routes.*.cooldown.duration",
        default: "30s",
        meaning: "how long a cooling target is skipped",
    },
];

/// Every key in `root` must be in [`KEYS`] (or a table on the way to one).
pub(super) fn check_keys(w: &mut Walker, root: &toml::Table) {
    check_table(w, root, "", "");
}

/// Tables whose keys are names the user chooses (`*` in [`KEYS`]).
const NAMED: &[&str] = &["providers", "keys", "prices", "routes"];

/// `prefix` is the path so far (for messages), `prefix_pattern` its [`KEYS`] form.
fn check_table(w: &mut Walker, table: &toml::Table, prefix: &str, prefix_pattern: &str) {
    for (k, v) in table {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        // A chosen name may hold dots ("openai/gpt-4.1"): it is one `*`.
        let pattern = if prefix_pattern.is_empty() {
            k.clone()
        } else if NAMED.contains(&prefix_pattern) {
            format!("{prefix_pattern}.*")
        } else {
            format!("{prefix_pattern}.{k}")
        };
        if KEYS.iter().any(|s| s.path == pattern) {
            continue;
        }
        let is_table_prefix = KEYS
            .iter()
            .any(|s| s.path.starts_with(&format!("{pattern}.")));
        let is_array_prefix = KEYS
            .iter()
            .any(|s| s.path.starts_with(&format!("{pattern}[].")));
        match v {
            toml::Value::Table(t) if is_table_prefix => check_table(w, t, &path, &pattern),
            toml::Value::Array(items) if is_array_prefix => {
                let item_pattern = format!("{pattern}[]");
                for (i, item) in items.iter().enumerate() {
                    let at = format!("{path}[{i}]");
                    match item {
                        toml::Value::Table(t) => check_table(w, t, &at, &item_pattern),
                        _ => w.err(&at, format!("must be a table, e.g. [[{path}]]")),
                    }
                }
            }
            _ if is_array_prefix => {
                w.err(
                    &path,
                    format!("must be an array of tables, e.g. [[{path}]]"),
                );
            }
            _ if is_table_prefix => {
                w.err(&path, format!("must be a table, e.g. [{path}]"));
            }
            _ => {
                let hint = suggest(&pattern)
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_else(|| "; run `aigw print-config` for the list".into());
                w.err(&path, format!("unknown key{hint}"));
            }
        }
    }
}

fn suggest(pattern: &str) -> Option<&'static str> {
    KEYS.iter()
        .map(|k| (edit_distance(k.path, pattern), k.path))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, p)| p)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use crate::config::tests::errors;

    #[test]
    fn unknown_key_names_its_path_and_a_suggestion() {
        let e = errors("[server]\nlisen = \"127.0.0.1:1\"\n");
        assert_eq!(
            e,
            vec!["server.lisen: unknown key; did you mean `server.listen`?"]
        );
    }
}
