//! Configuration: the TOML file and the built-in defaults, parsed once.
//!
//! Owns the raw-to-typed step: every key is checked against [`KEYS`] (unknown keys
//! are errors), every value becomes a typed field (`Duration`, byte counts,
//! `SocketAddr`, [`BaseUrl`], [`Secret`]) and every problem is reported with its key
//! path and what to do. After [`Config::from_toml`] returns, a `Config` is valid.
//! Not on the request path: shards get an `Arc<Config>` at start.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

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
        meaning: "directory for the admin socket and later the cache and logs",
    },
    KeySpec {
        path: "server.drain_timeout",
        default: "10s",
        meaning: "on SIGTERM, how long in-flight requests may take before exit",
    },
    KeySpec {
        path: "server.spin_before_park",
        default: "0us",
        meaning: "busy-poll this long before an idle shard sleeps (trades idle CPU for wake-up cost)",
    },
    KeySpec {
        path: "admin.socket",
        default: "<data_dir>/admin.sock",
        meaning: "Unix socket (mode 0600) serving /stats and /metrics",
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
        meaning: "wire protocol: openai (any OpenAI-compatible server), anthropic, mock",
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
        path: "providers.*.ca_file",
        default: "(none)",
        meaning: "PEM file of extra CAs trusted for this provider (private CAs); public roots stay trusted",
    },
];

/// A secret that cannot be printed by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Secret(s)
    }
    /// The only way to read the value; call it only where the secret is sent.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

/// Wire protocol a provider speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderKind {
    /// Any OpenAI-compatible server: `Authorization: Bearer`, `/chat/completions`.
    OpenAi,
    /// Anthropic: native API under `/v1/messages` with `x-api-key`; unified requests
    /// use its OpenAI-compatible endpoint `/v1/chat/completions`.
    Anthropic,
    /// Answered inside the gateway; synthesizes OpenAI-shaped replies.
    Mock,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Mock => "mock",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// A provider base URL split once into what a connection needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseUrl {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash ("" or "/v1").
    pub path: String,
    /// `Host` header value (host, plus `:port` when not the scheme's default).
    pub authority: String,
}

impl BaseUrl {
    pub fn parse(s: &str) -> Result<BaseUrl, String> {
        let (scheme, rest) = if let Some(r) = s.strip_prefix("https://") {
            (Scheme::Https, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (Scheme::Http, r)
        } else {
            return Err(format!("`{s}` must start with http:// or https://"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("`{s}` needs a host (and no user:password@)"));
        }
        if path.contains(['?', '#']) {
            return Err(format!("`{s}` must not carry a query or fragment"));
        }
        let default_port = if scheme == Scheme::Https { 443 } else { 80 };
        let (host, port) = split_host_port(authority, default_port)
            .ok_or_else(|| format!("`{s}` has an invalid port"))?;
        let path = path.trim_end_matches('/').to_string();
        let authority = if port == default_port {
            host.clone()
        } else if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(BaseUrl {
            scheme,
            host,
            port,
            path,
            authority,
        })
    }
}

fn split_host_port(authority: &str, default_port: u16) -> Option<(String, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let end = rest.find(']')?;
        let host = rest[..end].to_string();
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        return Some((host, port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Some((h.to_string(), p.parse().ok()?)),
        None => Some((authority.to_string(), default_port)),
    }
}

#[derive(Clone, Debug)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: BaseUrl,
    pub api_key: Option<Secret>,
    /// Where the key came from, for messages (never the key itself).
    pub api_key_env: Option<String>,
    /// Extra trusted CA certificates (DER), read from `ca_file` at start.
    pub extra_roots: Vec<Vec<u8>>,
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// `None` = one shard per CPU in the process's affinity mask.
    pub shards: Option<NonZeroUsize>,
    pub data_dir: PathBuf,
    pub drain_timeout: Duration,
    /// Busy-poll before sleeping; zero = sleep at once.
    pub spin_before_park: Duration,
}

#[derive(Clone, Debug)]
pub struct Limits {
    pub max_head_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: u64,
    pub max_response_head_bytes: usize,
}

#[derive(Clone, Debug)]
pub struct Timeouts {
    pub head: Duration,
    pub body: Duration,
    pub idle: Duration,
    pub client_write: Duration,
    pub upstream_connect: Duration,
    pub first_byte: Duration,
    pub stream_idle: Duration,
    pub upstream_idle: Duration,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub admin_socket: PathBuf,
    pub limits: Limits,
    pub timeouts: Timeouts,
    pub providers: BTreeMap<String, ProviderConfig>,
}

/// One problem in the file: where it is and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// All problems found in one pass, so a user fixes them in one edit.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The built-in provider catalog: name, kind, base URL, key variable.
const BUILTIN_PROVIDERS: &[(&str, ProviderKind, &str, Option<&str>)] = &[
    ("mock", ProviderKind::Mock, "http://mock.invalid/v1", None),
    (
        "openai",
        ProviderKind::OpenAi,
        "https://api.openai.com/v1",
        Some("OPENAI_API_KEY"),
    ),
    (
        "anthropic",
        ProviderKind::Anthropic,
        "https://api.anthropic.com",
        Some("ANTHROPIC_API_KEY"),
    ),
    (
        "groq",
        ProviderKind::OpenAi,
        "https://api.groq.com/openai/v1",
        Some("GROQ_API_KEY"),
    ),
    (
        "mistral",
        ProviderKind::OpenAi,
        "https://api.mistral.ai/v1",
        Some("MISTRAL_API_KEY"),
    ),
    (
        "deepseek",
        ProviderKind::OpenAi,
        "https://api.deepseek.com/v1",
        Some("DEEPSEEK_API_KEY"),
    ),
    (
        "xai",
        ProviderKind::OpenAi,
        "https://api.x.ai/v1",
        Some("XAI_API_KEY"),
    ),
    (
        "openrouter",
        ProviderKind::OpenAi,
        "https://openrouter.ai/api/v1",
        Some("OPENROUTER_API_KEY"),
    ),
    (
        "together",
        ProviderKind::OpenAi,
        "https://api.together.xyz/v1",
        Some("TOGETHER_API_KEY"),
    ),
    (
        "fireworks",
        ProviderKind::OpenAi,
        "https://api.fireworks.ai/inference/v1",
        Some("FIREWORKS_API_KEY"),
    ),
    (
        "perplexity",
        ProviderKind::OpenAi,
        "https://api.perplexity.ai",
        Some("PERPLEXITY_API_KEY"),
    ),
    (
        "cerebras",
        ProviderKind::OpenAi,
        "https://api.cerebras.ai/v1",
        Some("CEREBRAS_API_KEY"),
    ),
    (
        "ollama",
        ProviderKind::OpenAi,
        "http://127.0.0.1:11434/v1",
        None,
    ),
];

/// Names that would collide with the gateway's own URL layout.
const RESERVED_PROVIDER_NAMES: &[&str] = &["v1", "healthz", "compat"];

impl Config {
    /// The built-in defaults, as `aigw serve` with no file runs them.
    pub fn defaults() -> Config {
        Config::from_toml("").expect("built-in defaults are valid")
    }

    /// Reads and parses a file; errors carry the file name.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                path: String::new(),
                message: format!("cannot read config file {}: {e}", path.display()),
            }])
        })?;
        Config::from_toml(&text)
    }

    pub fn from_toml(text: &str) -> Result<Config, ConfigErrors> {
        Config::from_toml_with_env(text, &|k| std::env::var(k).ok())
    }

    /// As [`Config::from_toml`], reading provider keys through `env` (tests pass a map).
    pub fn from_toml_with_env(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigErrors> {
        let root: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            ConfigErrors(vec![
                ConfigError {
                    path: String::new(),
                    message: format!("not valid TOML: {}", e.message().trim()),
                }
                .with_span(text, e.span()),
            ])
        })?;
        let mut w = Walker::default();
        w.check_keys(&root, "");
        let server = w.table(&root, "server");
        let limits_t = w.table(&root, "limits");
        let timeouts_t = w.table(&root, "timeouts");
        let admin = w.table(&root, "admin");

        let listen = w
            .string(server, "server.listen")
            .map(|s| match s.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    w.err("server.listen", format!("`{s}` is not IP:PORT; write e.g. \"127.0.0.1:8080\" or \"0.0.0.0:8080\""));
                    None
                }
            })
            .unwrap_or_else(|| Some("127.0.0.1:8080".parse().expect("valid")));
        let shards = w.uint(server, "server.shards", 0, 4096).unwrap_or(0);
        let data_dir = PathBuf::from(
            w.string(server, "server.data_dir")
                .unwrap_or_else(|| "aigw-data".into()),
        );
        let drain_timeout = w.duration(server, "server.drain_timeout", "10s");
        let spin_before_park = w.duration_or_zero(server, "server.spin_before_park");
        let admin_socket = w
            .string(admin, "admin.socket")
            .map(PathBuf::from)
            .unwrap_or_else(|| data_dir.join("admin.sock"));

        let limits = Limits {
            max_head_bytes: w.bytes(
                limits_t,
                "limits.max_head_bytes",
                16 << 10,
                1 << 10,
                1 << 20,
            ) as usize,
            max_headers: w
                .uint(limits_t, "limits.max_headers", 4, 1024)
                .unwrap_or(64) as usize,
            max_body_bytes: w.bytes(limits_t, "limits.max_body_bytes", 32 << 20, 0, 1 << 34),
            max_response_head_bytes: w.bytes(
                limits_t,
                "limits.max_response_head_bytes",
                64 << 10,
                1 << 10,
                1 << 22,
            ) as usize,
        };
        let timeouts = Timeouts {
            head: w.duration(timeouts_t, "timeouts.head", "10s"),
            body: w.duration(timeouts_t, "timeouts.body", "30s"),
            idle: w.duration(timeouts_t, "timeouts.idle", "60s"),
            client_write: w.duration(timeouts_t, "timeouts.client_write", "60s"),
            upstream_connect: w.duration(timeouts_t, "timeouts.upstream_connect", "5s"),
            first_byte: w.duration(timeouts_t, "timeouts.first_byte", "300s"),
            stream_idle: w.duration(timeouts_t, "timeouts.stream_idle", "120s"),
            upstream_idle: w.duration(timeouts_t, "timeouts.upstream_idle", "30s"),
        };

        let builtin = w.boolean(&root, "builtin_providers").unwrap_or(true);
        let mut providers = BTreeMap::new();
        if builtin {
            for (name, kind, url, key_env) in BUILTIN_PROVIDERS {
                let api_key = key_env
                    .and_then(env)
                    .filter(|k| !k.is_empty())
                    .map(Secret::new);
                providers.insert(
                    name.to_string(),
                    ProviderConfig {
                        name: name.to_string(),
                        kind: *kind,
                        base_url: BaseUrl::parse(url).expect("built-in URL is valid"),
                        api_key,
                        api_key_env: key_env.map(str::to_string),
                        extra_roots: Vec::new(),
                    },
                );
            }
        }
        if let Some(user) = w.table(&root, "providers") {
            for (name, value) in user {
                let path = format!("providers.{name}");
                if let Some(p) = w.provider(name, value, &path, env) {
                    providers.insert(name.clone(), p);
                }
            }
        }

        if !w.errors.is_empty() {
            return Err(ConfigErrors(w.errors));
        }
        Ok(Config {
            server: ServerConfig {
                listen: listen.expect("checked above"),
                shards: NonZeroUsize::new(shards as usize),
                data_dir,
                drain_timeout,
                spin_before_park,
            },
            admin_socket,
            limits,
            timeouts,
            providers,
        })
    }

    /// The `print-config` text: every key, its default and meaning.
    pub fn describe_keys() -> String {
        let mut out = String::from("# key = default    # meaning\n");
        for k in KEYS {
            out.push_str(&format!(
                "{:<34} = {:<22} # {}\n",
                k.path, k.default, k.meaning
            ));
        }
        out.push_str("\n# built-in providers (name kind base_url key_env):\n");
        for (name, kind, url, env) in BUILTIN_PROVIDERS {
            out.push_str(&format!(
                "#   {:<11} {:<9} {:<40} {}\n",
                name,
                kind.as_str(),
                url,
                env.unwrap_or("-")
            ));
        }
        out
    }
}

impl ConfigError {
    fn with_span(mut self, text: &str, span: Option<std::ops::Range<usize>>) -> ConfigError {
        if let Some(span) = span {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            self.message = format!("line {line}: {}", self.message);
        }
        self
    }
}

/// Walks the raw TOML tree, collecting typed values and errors with key paths.
#[derive(Default)]
struct Walker {
    errors: Vec<ConfigError>,
}

impl Walker {
    fn err(&mut self, path: &str, message: String) {
        self.errors.push(ConfigError {
            path: path.to_string(),
            message,
        });
    }

    /// Every key must be in [`KEYS`] (or a table on the way to one).
    fn check_keys(&mut self, table: &toml::Table, prefix: &str) {
        for (k, v) in table {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            let pattern = key_pattern(&path);
            if KEYS.iter().any(|s| s.path == pattern) {
                continue;
            }
            let is_table_prefix = KEYS
                .iter()
                .any(|s| s.path.starts_with(&format!("{pattern}.")));
            match v {
                toml::Value::Table(t) if is_table_prefix => self.check_keys(t, &path),
                _ if is_table_prefix => {
                    self.err(&path, format!("must be a table, e.g. [{path}]"));
                }
                _ => {
                    let hint = suggest(&pattern)
                        .map(|s| format!("; did you mean `{s}`?"))
                        .unwrap_or_else(|| "; run `aigw print-config` for the list".into());
                    self.err(&path, format!("unknown key{hint}"));
                }
            }
        }
    }

    fn table<'a>(&mut self, root: &'a toml::Table, key: &str) -> Option<&'a toml::Table> {
        match root.get(key) {
            Some(toml::Value::Table(t)) => Some(t),
            _ => None, // non-tables were reported by check_keys
        }
    }

    fn leaf<'a>(&self, t: Option<&'a toml::Table>, path: &str) -> Option<&'a toml::Value> {
        t?.get(path.rsplit('.').next().expect("non-empty"))
    }

    fn string(&mut self, t: Option<&toml::Table>, path: &str) -> Option<String> {
        match self.leaf(t, path)? {
            toml::Value::String(s) => Some(s.clone()),
            other => {
                self.err(
                    path,
                    format!("expected a string, found {}", other.type_str()),
                );
                None
            }
        }
    }

    fn boolean(&mut self, t: &toml::Table, path: &str) -> Option<bool> {
        match t.get(path)? {
            toml::Value::Boolean(b) => Some(*b),
            other => {
                self.err(
                    path,
                    format!("expected true or false, found {}", other.type_str()),
                );
                None
            }
        }
    }

    fn uint(&mut self, t: Option<&toml::Table>, path: &str, min: u64, max: u64) -> Option<u64> {
        match self.leaf(t, path)? {
            toml::Value::Integer(i)
                if (*i as i128) >= min as i128 && (*i as i128) <= max as i128 =>
            {
                Some(*i as u64)
            }
            toml::Value::Integer(i) => {
                self.err(path, format!("{i} is out of range; use {min}..={max}"));
                None
            }
            other => {
                self.err(
                    path,
                    format!("expected an integer, found {}", other.type_str()),
                );
                None
            }
        }
    }

    fn duration(&mut self, t: Option<&toml::Table>, path: &str, default: &str) -> Duration {
        let fallback = parse_duration(default).expect("valid default");
        let Some(v) = self.leaf(t, path) else {
            return fallback;
        };
        let parsed = match v {
            toml::Value::String(s) => parse_duration(s),
            toml::Value::Integer(_) => Err("a bare number has no unit".to_string()),
            other => Err(format!("expected a string, found {}", other.type_str())),
        };
        match parsed {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.err(path, "must be greater than zero".into());
                fallback
            }
            Err(e) => {
                self.err(
                    path,
                    format!("{e}; write a duration like \"500ms\", \"10s\" or \"2m\""),
                );
                fallback
            }
        }
    }

    /// A duration that may be zero ("0us" or "0ms").
    fn duration_or_zero(&mut self, t: Option<&toml::Table>, path: &str) -> Duration {
        let Some(v) = self.leaf(t, path) else {
            return Duration::ZERO;
        };
        match v {
            toml::Value::String(s) => parse_duration(s).unwrap_or_else(|e| {
                self.err(
                    path,
                    format!("{e}; write a duration like \"50us\" or \"0us\""),
                );
                Duration::ZERO
            }),
            other => {
                self.err(
                    path,
                    format!("expected a duration string, found {}", other.type_str()),
                );
                Duration::ZERO
            }
        }
    }

    fn bytes(
        &mut self,
        t: Option<&toml::Table>,
        path: &str,
        default: u64,
        min: u64,
        max: u64,
    ) -> u64 {
        let Some(v) = self.leaf(t, path) else {
            return default;
        };
        let parsed = match v {
            toml::Value::Integer(i) if *i >= 0 => Ok(*i as u64),
            toml::Value::String(s) => parse_bytes(s),
            other => Err(format!("expected a size, found {}", other.type_str())),
        };
        match parsed {
            Ok(n) if n >= min && n <= max => n,
            Ok(n) => {
                self.err(
                    path,
                    format!("{n} bytes is out of range; use {min}..={max} bytes"),
                );
                default
            }
            Err(e) => {
                self.err(
                    path,
                    format!("{e}; write a size like 16384, \"64KiB\" or \"32MiB\""),
                );
                default
            }
        }
    }

    fn provider(
        &mut self,
        name: &str,
        value: &toml::Value,
        path: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<ProviderConfig> {
        let toml::Value::Table(t) = value else {
            self.err(
                path,
                format!("must be a table, e.g. [{path}] with kind and base_url"),
            );
            return None;
        };
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if !valid_name {
            self.err(
                path,
                "provider names use only letters, digits, '-', '_' and '.'".into(),
            );
            return None;
        }
        if RESERVED_PROVIDER_NAMES.contains(&name) {
            self.err(
                path,
                format!("`{name}` is reserved by the URL layout; pick another name"),
            );
            return None;
        }
        let kind_path = format!("{path}.kind");
        let kind = match self.string(Some(t), &kind_path).as_deref() {
            None | Some("openai") => ProviderKind::OpenAi,
            Some("anthropic") => ProviderKind::Anthropic,
            Some("mock") => ProviderKind::Mock,
            Some(other) => {
                self.err(
                    &kind_path,
                    format!("unknown kind `{other}`; use openai, anthropic or mock"),
                );
                return None;
            }
        };
        let url_path = format!("{path}.base_url");
        let base_url = match self.string(Some(t), &url_path) {
            Some(s) => match BaseUrl::parse(&s) {
                Ok(u) => u,
                Err(e) => {
                    self.err(&url_path, e);
                    return None;
                }
            },
            None if kind == ProviderKind::Mock => {
                BaseUrl::parse("http://mock.invalid/v1").expect("valid")
            }
            None => {
                self.err(&url_path, "missing; set the URL the provider's SDK uses, e.g. \"https://api.openai.com/v1\"".into());
                return None;
            }
        };
        let key = self.string(Some(t), &format!("{path}.api_key"));
        let key_env = self.string(Some(t), &format!("{path}.api_key_env"));
        if key.is_some() && key_env.is_some() {
            self.err(path, "set api_key or api_key_env, not both".into());
        }
        let api_key = key
            .or_else(|| key_env.as_deref().and_then(env))
            .filter(|k| !k.is_empty());
        let ca_path = format!("{path}.ca_file");
        let extra_roots = match self.string(Some(t), &ca_path) {
            Some(file) => match read_pem_certs(&file) {
                Ok(certs) => certs,
                Err(e) => {
                    self.err(&ca_path, e);
                    return None;
                }
            },
            None => Vec::new(),
        };
        Some(ProviderConfig {
            name: name.to_string(),
            kind,
            base_url,
            api_key: api_key.map(Secret::new),
            api_key_env: key_env,
            extra_roots,
        })
    }
}

/// Reads every certificate in a PEM file (DER bytes).
fn read_pem_certs(file: &str) -> Result<Vec<Vec<u8>>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(file)
        .map_err(|e| format!("cannot read {file}: {e}"))?
        .map(|c| c.map(|c| c.to_vec()))
        .collect();
    let certs = certs.map_err(|e| format!("{file} is not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{file} holds no PEM certificates"));
    }
    let mut store = rustls::RootCertStore::empty();
    for der in &certs {
        store
            .add(CertificateDer::from(der.clone()))
            .map_err(|e| format!("{file}: a certificate cannot be a trust anchor: {e}"))?;
    }
    Ok(certs)
}

/// `providers.foo.kind` -> `providers.*.kind`.
fn key_pattern(path: &str) -> String {
    let mut parts: Vec<&str> = path.split('.').collect();
    if parts.len() >= 2 && parts[0] == "providers" {
        parts[1] = "*";
    }
    parts.join(".")
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

/// "500ms", "10s", "2m", "1h".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration"))?;
    let d = match unit.trim() {
        "us" => Duration::from_micros(n),
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(format!("`{s}` has no unit (us, ms, s, m, h)")),
    };
    Ok(d)
}

/// "16384", "64KiB", "32MiB", "1GiB" (also KB/MB/GB as powers of 1000).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a size"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(format!("`{s}` has an unknown unit (B, KiB, MiB, GiB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        match Config::from_toml_with_env(text, &|_| None) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn defaults_name_every_builtin_provider() {
        let c = Config::from_toml_with_env("", &|_| None).unwrap();
        for name in [
            "mock",
            "openai",
            "anthropic",
            "groq",
            "mistral",
            "deepseek",
            "xai",
            "openrouter",
            "together",
            "fireworks",
            "perplexity",
            "cerebras",
            "ollama",
        ] {
            assert!(c.providers.contains_key(name), "{name}");
        }
        assert_eq!(c.providers["groq"].base_url.path, "/openai/v1");
        assert_eq!(c.server.listen, "127.0.0.1:8080".parse().unwrap());
    }

    #[test]
    fn unknown_key_names_its_path_and_a_suggestion() {
        let e = errors("[server]\nlisen = \"127.0.0.1:1\"\n");
        assert_eq!(
            e,
            vec!["server.lisen: unknown key; did you mean `server.listen`?"]
        );
    }

    #[test]
    fn bad_values_name_their_key_paths() {
        let e = errors(
            "[server]\nlisten = \"nope\"\n[timeouts]\nhead = 5\n[providers.x]\nkind = \"grpc\"\n[providers.y]\nkind = \"openai\"\n",
        );
        assert!(
            e.iter()
                .any(|m| m.starts_with("server.listen: `nope` is not IP:PORT")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.starts_with("timeouts.head: a bare number has no unit")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.starts_with("providers.x.kind: unknown kind `grpc`")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.starts_with("providers.y.base_url: missing")),
            "{e:?}"
        );
    }

    #[test]
    fn provider_key_comes_from_env_and_is_never_printed() {
        let c = Config::from_toml_with_env(
            "[providers.up]\nbase_url = \"http://127.0.0.1:9/v1\"\napi_key_env = \"UP_KEY\"\n",
            &|k| (k == "UP_KEY").then(|| "sk-secret".to_string()),
        )
        .unwrap();
        let p = &c.providers["up"];
        assert_eq!(p.api_key.as_ref().unwrap().expose(), "sk-secret");
        assert!(!format!("{p:?}").contains("sk-secret"));
    }

    #[test]
    fn base_url_splits_host_port_and_path() {
        let u = BaseUrl::parse("http://127.0.0.1:9090/v1/").unwrap();
        assert_eq!(
            (
                u.host.as_str(),
                u.port,
                u.path.as_str(),
                u.authority.as_str()
            ),
            ("127.0.0.1", 9090, "/v1", "127.0.0.1:9090")
        );
        let u = BaseUrl::parse("https://api.anthropic.com").unwrap();
        assert_eq!(
            (u.port, u.path.as_str(), u.authority.as_str()),
            (443, "", "api.anthropic.com")
        );
        assert!(BaseUrl::parse("ftp://x").is_err());
    }

    #[test]
    fn sizes_and_durations_parse_with_units() {
        assert_eq!(parse_bytes("64KiB").unwrap(), 65536);
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("10").is_err());
        let e = errors("[limits]\nmax_body_bytes = \"12 parsecs\"\n");
        assert!(e[0].starts_with("limits.max_body_bytes:"), "{e:?}");
    }
}
