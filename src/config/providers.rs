//! `builtin_providers` and `[providers.*]`: where requests can go.
//!
//! Owns the provider types ([`ProviderKind`], [`BaseUrl`], [`ProviderConfig`]), the
//! built-in catalog, and reading the file's providers on top of it, keys and
//! extra CAs included. Every string that reaches a request line or header (the
//! base URL, the key) is checked here to be one line, so upstream can write it
//! as is. Does not connect or route: upstream and route use the result.

use std::collections::BTreeMap;

use super::read::{Secret, Walker};

/// Wire protocol a provider speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderKind {
    /// Any OpenAI-compatible server: `Authorization: Bearer`, `/chat/completions`.
    OpenAi,
    /// Anthropic: the Messages API under `/v1/messages` with `x-api-key`;
    /// unified chat completions are translated to it.
    Anthropic,
    /// Google Gemini: `generateContent` with `x-goog-api-key`; unified chat
    /// completions are translated to it.
    Google,
    /// Azure OpenAI: OpenAI's format under deployment URLs with `api-key`.
    Azure,
    /// Answered inside the gateway; synthesizes OpenAI-shaped replies.
    Mock,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Google => "google",
            ProviderKind::Azure => "azure",
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

impl std::fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        write!(f, "{scheme}://{}{}", self.authority, self.path)
    }
}

impl BaseUrl {
    pub fn parse(s: &str) -> Result<BaseUrl, String> {
        // An error shows the URL without what may be a secret in it.
        let shown = redacted(s);
        // Host and path are written into the request line and the Host header as
        // they are; a space would split the request line and a CR or LF would end
        // it. Escaped in the message so the offending byte shows.
        if s.bytes().any(|b| b == b' ' || is_control(b)) {
            return Err(format!(
                "`{}` contains whitespace or a control character; a URL must be one line without spaces",
                shown.escape_debug()
            ));
        }
        let (scheme, rest) = if let Some(r) = s.strip_prefix("https://") {
            (Scheme::Https, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (Scheme::Http, r)
        } else {
            // A value with no scheme at all is not shown: it may be a key
            // pasted into the wrong field.
            if !s.contains("://") {
                return Err("must start with http:// or https://".into());
            }
            return Err(format!("`{shown}` must start with http:// or https://"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        // No `@` anywhere: one in the path is likely a password with a `/`.
        if s.contains('@') {
            return Err(format!(
                "`{shown}` must not carry user:password@ (or any @): give the key as api_key or api_key_env"
            ));
        }
        if authority.is_empty() {
            return Err(format!("`{shown}` needs a host"));
        }
        if path.contains(['?', '#']) {
            return Err(format!(
                "`{shown}` must not carry a query or fragment (a key goes in api_key or api_key_env)"
            ));
        }
        let default_port = if scheme == Scheme::Https { 443 } else { 80 };
        let (host, port) = split_host_port(authority, default_port)
            .ok_or_else(|| format!("`{shown}` has an invalid port"))?;
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

/// `url` as an error may show it: everything up to its last `@` but the
/// scheme (credentials, however the URL is broken), and anything after a `?`
/// or `#` (a key in a query), become `****`. Over-redacts rather than show.
fn redacted(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let rest = match url.find("://") {
        Some(i) if url[..i].bytes().all(|b| b.is_ascii_alphanumeric()) => {
            out.push_str(&url[..i + 3]);
            &url[i + 3..]
        }
        _ => url,
    };
    let rest = match rest.rfind('@') {
        Some(at) => {
            out.push_str("****");
            &rest[at..]
        }
        None => rest,
    };
    match rest.find(['?', '#']) {
        Some(cut) => {
            out.push_str(&rest[..=cut]);
            out.push_str("****");
        }
        None => out.push_str(rest),
    }
    out
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
    /// `max_tokens` written into translated requests that set none.
    pub default_max_tokens: u64,
    /// Azure's `api-version` (kind azure only).
    pub api_version: Option<String>,
    /// A note when the file gives a key that is not there (an empty
    /// `api_key`, or an `api_key_env` whose variable is not set or empty):
    /// aigw then adds no key of its own and passes each client's key on,
    /// which is likely not what the file meant. A built-in's unset default
    /// variable is the ordinary bring-your-own-key set-up: no note.
    pub key_note: Option<String>,
}

/// The note of a declared provider whose key is not there (the variable's
/// name is not shown: a key pasted in its place can look like one).
fn key_note(path: &str, name: &str, in_file: bool) -> String {
    let what = if in_file {
        format!("{path}.api_key: empty")
    } else {
        format!("{path}.api_key_env: the variable it names is not set (or is empty)")
    };
    format!("{what}: aigw adds no key to requests for `{name}` and passes each client's own key on")
}

/// The Azure OpenAI API version unified requests use when none is configured.
pub const AZURE_API_VERSION: &str = "2024-10-21";

/// The output cap a translated request gets when it sets none.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// The built-in provider catalog: name, kind, base URL, key variable.
pub(super) const BUILTIN_PROVIDERS: &[(&str, ProviderKind, &str, Option<&str>)] = &[
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
        "google",
        ProviderKind::Google,
        "https://generativelanguage.googleapis.com",
        Some("GEMINI_API_KEY"),
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

/// Whether `model` may go into a provider's URL (kinds whose unified path
/// names the model: Gemini, Azure): only plain names (letters, digits, `.`,
/// `-`, `_`, not starting with `.`), so it cannot climb out of the base URL.
/// A route target's model is checked with it when the config is read, a
/// client's when its request is.
pub fn url_model_plain(model: &str) -> bool {
    !model.is_empty()
        && model
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        && !model.starts_with('.')
}

/// Names that would collide with the gateway's own URL layout, or (`dynamic`)
/// with how a model names a route.
const RESERVED_PROVIDER_NAMES: &[&str] = &["v1", "healthz", "compat", "dynamic"];

/// `builtin_providers` and `[providers.*]`: the catalog first, then the file's
/// providers, each replacing a built-in of the same name.
pub(super) fn read_providers(
    w: &mut Walker,
    root: &toml::Table,
    env: &dyn Fn(&str) -> Option<String>,
) -> BTreeMap<String, ProviderConfig> {
    let builtin = w.flag(Some(root), "builtin_providers").unwrap_or(true);
    let user = w.table(root, "providers");
    let mut providers = BTreeMap::new();
    if builtin {
        for (name, kind, url, key_env) in BUILTIN_PROVIDERS {
            // A provider the file redefines replaces this one, so its key variable
            // is not read (nor judged).
            if user.is_some_and(|u| u.contains_key(*name)) {
                continue;
            }
            let path = format!("providers.{name}");
            let api_key = read_api_key(w, &path, None, *key_env, env);
            providers.insert(
                name.to_string(),
                ProviderConfig {
                    name: name.to_string(),
                    kind: *kind,
                    base_url: BaseUrl::parse(url).expect("built-in URL is valid"),
                    api_key,
                    api_key_env: key_env.map(str::to_string),
                    extra_roots: Vec::new(),
                    default_max_tokens: DEFAULT_MAX_TOKENS,
                    api_version: None,
                    key_note: None,
                },
            );
        }
    }
    if let Some(user) = user {
        for (name, value) in user {
            let path = format!("providers.{name}");
            if let Some(mut p) = read_provider(w, name, value, &path, env) {
                // A table that replaces a built-in without a key of its own
                // no longer reads the built-in's variable: said when that
                // variable holds a key the file may have meant.
                let names_key = value
                    .as_table()
                    .is_some_and(|t| t.contains_key("api_key") || t.contains_key("api_key_env"));
                let builtin_var = BUILTIN_PROVIDERS
                    .iter()
                    .find(|(n, ..)| *n == name.as_str())
                    .and_then(|(.., var)| *var);
                if let Some(var) =
                    builtin_var.filter(|v| !names_key && env(v).is_some_and(|k| !blank(&k)))
                {
                    p.key_note.get_or_insert_with(|| format!(
                        "providers.{name} replaces the built-in `{name}`, so `{var}` (which is set) is not read: aigw adds no key and passes each client's own key on; add api_key_env = \"{var}\" to use it"
                    ));
                }
                providers.insert(name.clone(), p);
            }
        }
    }
    providers
}

/// One `[providers.<name>]` table.
fn read_provider(
    w: &mut Walker,
    name: &str,
    value: &toml::Value,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<ProviderConfig> {
    let toml::Value::Table(t) = value else {
        w.err(
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
        w.err(
            path,
            "provider names use only letters, digits, '-', '_' and '.'".into(),
        );
        return None;
    }
    if RESERVED_PROVIDER_NAMES.contains(&name) {
        let why = if name == "dynamic" {
            ": a model `dynamic/<name>` names route <name> (Cloudflare's dynamic routes)"
        } else {
            " by the URL layout"
        };
        w.err(
            path,
            format!("`{name}` is reserved{why}; pick another name"),
        );
        return None;
    }
    let kind_path = format!("{path}.kind");
    let kind = match w.string(Some(t), &kind_path).as_deref() {
        None | Some("openai") => ProviderKind::OpenAi,
        Some("anthropic") => ProviderKind::Anthropic,
        Some("google") => ProviderKind::Google,
        Some("azure") => ProviderKind::Azure,
        Some("mock") => ProviderKind::Mock,
        Some(other) => {
            w.err(
                &kind_path,
                format!("unknown kind `{other}`; use openai, anthropic, google, azure or mock"),
            );
            return None;
        }
    };
    let url_path = format!("{path}.base_url");
    let base_url = match w.string(Some(t), &url_path) {
        Some(s) => match BaseUrl::parse(&s) {
            Ok(u) => u,
            Err(e) => {
                w.err(&url_path, e);
                return None;
            }
        },
        None if kind == ProviderKind::Mock => {
            BaseUrl::parse("http://mock.invalid/v1").expect("valid")
        }
        None => {
            w.err(
                &url_path,
                "missing; set the URL the provider's SDK uses, e.g. \"https://api.openai.com/v1\""
                    .into(),
            );
            return None;
        }
    };
    let key = w.string(Some(t), &format!("{path}.api_key"));
    let key_env = w.string(Some(t), &format!("{path}.api_key_env"));
    if key.is_some() && key_env.is_some() {
        w.err(path, "set api_key or api_key_env, not both".into());
    }
    let errors = w.count();
    let api_key = read_api_key(w, path, key.clone(), key_env.as_deref(), env);
    // Only where no error was reported for the key already.
    let key_note = (kind != ProviderKind::Mock
        && api_key.is_none()
        && (key.is_some() || key_env.is_some())
        && w.count() == errors)
        .then(|| key_note(path, name, key.is_some()));
    let ca_path = format!("{path}.ca_file");
    let extra_roots = match w.string(Some(t), &ca_path) {
        Some(file) => match read_pem_certs(&file) {
            Ok(certs) => certs,
            Err(e) => {
                w.err(&ca_path, e);
                return None;
            }
        },
        None => Vec::new(),
    };
    let api_version = match w.string(Some(t), &format!("{path}.api_version")) {
        Some(v) if kind != ProviderKind::Azure => {
            w.err(
                &format!("{path}.api_version"),
                format!(
                    "only kind = \"azure\" takes an api_version (this provider is {})",
                    kind.as_str()
                ),
            );
            let _ = v;
            None
        }
        Some(v)
            if v.is_empty()
                || !v
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') =>
        {
            w.err(
                &format!("{path}.api_version"),
                "use an Azure API version such as \"2024-10-21\"".into(),
            );
            None
        }
        Some(v) => Some(v),
        None if kind == ProviderKind::Azure => Some(AZURE_API_VERSION.to_string()),
        None => None,
    };
    let max_path = format!("{path}.default_max_tokens");
    let default_max_tokens = match t.get("default_max_tokens") {
        None => DEFAULT_MAX_TOKENS,
        Some(toml::Value::Integer(n)) if *n > 0 => *n as u64,
        Some(_) => {
            w.err(
                &max_path,
                "must be a positive integer (the output cap for translated requests without max_tokens)".into(),
            );
            return None;
        }
    };
    Some(ProviderConfig {
        name: name.to_string(),
        kind,
        base_url,
        api_key,
        api_key_env: key_env,
        extra_roots,
        default_max_tokens,
        api_version,
        key_note,
    })
}

/// The key sent upstream: `api_key` from the file, else the value of the variable
/// `api_key_env` names ([`key_from_env`]); empty means none. It goes into a
/// request header as is, where a CR or LF would end the line and start a
/// header of the key's choosing, so any control character is an error at the
/// key's path. The message names where the key came from and never shows the key.
pub(super) fn read_api_key(
    w: &mut Walker,
    path: &str,
    in_file: Option<String>,
    var: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<Secret> {
    match (in_file, var) {
        (Some(key), _) => one_line_key(w, &format!("{path}.api_key"), "contains", key),
        (None, Some(var)) => match key_from_env(w, &format!("{path}.api_key_env"), var, env) {
            FromEnv::Key(k) => Some(k),
            FromEnv::Unset | FromEnv::Reported => None,
        },
        (None, None) => None,
    }
}

/// What the variable a `*_env` value names gives.
pub(super) enum FromEnv {
    Key(Secret),
    /// Not set, or empty.
    Unset,
    /// An error at the value's path was reported (a name that cannot be a
    /// variable's, or a key with a control character).
    Reported,
}

/// The key in the variable `var` (the value at `at`), never shown.
pub(super) fn key_from_env(
    w: &mut Walker,
    at: &str,
    var: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> FromEnv {
    if !is_variable_name(var) {
        w.err(at, NOT_A_VARIABLE.into());
        return FromEnv::Reported;
    }
    match env(var).filter(|k| !blank(k)) {
        None => FromEnv::Unset,
        Some(key) => match one_line_key(w, at, &format!("{} holds", shown_variable(var)), key) {
            Some(k) => FromEnv::Key(k),
            None => FromEnv::Reported,
        },
    }
}

/// `key` if it is one line of printable characters (empty: none), else an
/// error at `at` saying where it came from (`holder`), not what it is.
fn one_line_key(w: &mut Walker, at: &str, holder: &str, key: String) -> Option<Secret> {
    if blank(&key) {
        return None;
    }
    let key = key.trim_matches(' ');
    if key.bytes().any(is_control) {
        w.err(
            at,
            format!("{holder} a control character (CR, LF, ...); a key must be one line of printable characters"),
        );
        return None;
    }
    Some(Secret::new(key.to_string()))
}

/// Whether a key as given is none: empty, or spaces only. Surrounding
/// spaces are never a key's (a line break or tab is a control character,
/// an error of its own).
fn blank(key: &str) -> bool {
    key.trim_matches(' ').is_empty()
}

/// A variable's name as messages and `/config` show it: in backquotes when
/// it reads as a variable's name does (upper-case letters, digits and `_`,
/// such as `OPENAI_API_KEY`), else withheld: a key pasted where a variable's
/// name belongs (`gsk_...`, `AIza...`) may still be a valid name.
pub fn shown_variable(var: &str) -> String {
    if conventional_variable(var) {
        format!("`{var}`")
    } else {
        "the variable it names (its name, not upper-case, is not shown: it may be a key)".into()
    }
}

/// Longest variable name shown (a longer one is likely pasted text).
const LONGEST_SHOWN_NAME: usize = 64;
/// Longest name shown without a `_`: long names are words joined by `_`,
/// and a long run without one (an AWS key id, `AKIA...`) is likely a key.
const LONGEST_NAME_WITHOUT_UNDERSCORE: usize = 12;

/// Whether `var` reads as a variable's name does (see [`shown_variable`]).
pub fn conventional_variable(var: &str) -> bool {
    (var.len() <= LONGEST_NAME_WITHOUT_UNDERSCORE || var.contains('_'))
        && var.len() <= LONGEST_SHOWN_NAME
        && var
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_uppercase() || b == b'_')
        && var
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// Whether `s` can name an environment variable (letters, digits and `_`,
/// not starting with a digit). A value that cannot is likely the key
/// itself, pasted where its variable's name belongs: it is never shown.
fn is_variable_name(s: &str) -> bool {
    s.bytes().next().is_some_and(|b| !b.is_ascii_digit())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The error for a `*_env` value that cannot name a variable (not shown).
const NOT_A_VARIABLE: &str = "must name an environment variable (letters, digits and _): the value given cannot be one (is it the key itself? keys go in the environment, or in api_key)";

/// A byte that no header value or request line may carry: C0 controls (CR, LF,
/// NUL, tab, ...) and DEL.
fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::config::tests::errors;

    /// A key that would add a header of its own if sent as is.
    const INJECTING_KEY: &str = "sk-secret\r\nX-Injected: 1";

    /// As `errors`, with one variable set in the environment.
    fn errors_with_env(text: &str, var: &str, value: &str) -> Vec<String> {
        let env = |k: &str| (k == var).then(|| value.to_string());
        match Config::from_toml_with_env(text, &env) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    fn shows_the_key(messages: &[String]) -> bool {
        messages
            .iter()
            .any(|m| m.contains("sk-secret") || m.contains("X-Injected"))
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
    fn key_with_crlf_in_the_file_is_an_error_at_its_path() {
        let e = errors(
            "[providers.up]\nbase_url = \"http://127.0.0.1:9/v1\"\napi_key = \"sk-secret\\r\\nX-Injected: 1\"\n",
        );
        assert_eq!(
            e,
            vec![
                "providers.up.api_key: contains a control character (CR, LF, ...); a key must be one line of printable characters"
            ]
        );
    }

    #[test]
    fn key_with_crlf_from_the_environment_is_an_error_naming_the_variable() {
        let e = errors_with_env(
            "[providers.up]\nbase_url = \"http://127.0.0.1:9/v1\"\napi_key_env = \"UP_KEY\"\n",
            "UP_KEY",
            INJECTING_KEY,
        );
        assert_eq!(
            e,
            vec![
                "providers.up.api_key_env: `UP_KEY` holds a control character (CR, LF, ...); a key must be one line of printable characters"
            ]
        );
    }

    #[test]
    fn builtin_key_with_crlf_in_the_environment_is_an_error_unless_the_file_replaces_it() {
        let e = errors_with_env("", "OPENAI_API_KEY", INJECTING_KEY);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with(
                "providers.openai.api_key_env: `OPENAI_API_KEY` holds a control character"
            ),
            "{e:?}"
        );
        let replaced = "[providers.openai]\nbase_url = \"https://api.openai.com/v1\"\napi_key_env = \"MY_KEY\"\n";
        assert_eq!(
            errors_with_env(replaced, "OPENAI_API_KEY", INJECTING_KEY),
            Vec::<String>::new()
        );
    }

    #[test]
    fn base_url_with_a_space_or_cr_is_an_error_at_its_path() {
        let e = errors(
            "[providers.a]\nbase_url = \"http://127.0.0.1:9/v 1\"\n[providers.b]\nbase_url = \"http://127.0.0.1:9/v1\\r\\nX-Injected: 1\"\n",
        );
        assert_eq!(
            e,
            vec![
                "providers.a.base_url: `http://127.0.0.1:9/v 1` contains whitespace or a control character; a URL must be one line without spaces",
                "providers.b.base_url: `http://127.0.0.1:9/v1\\r\\nX-Injected: 1` contains whitespace or a control character; a URL must be one line without spaces",
            ]
        );
        for url in [
            "http://exa mple.com/v1",
            "http://example.com\t/v1",
            "http://example.com/v1\x7f",
        ] {
            assert!(BaseUrl::parse(url).is_err(), "{url:?}");
        }
    }

    #[test]
    fn no_key_error_shows_the_key() {
        let up = "[providers.up]\nbase_url = \"http://127.0.0.1:9/v1\"\n";
        for key in [
            INJECTING_KEY,
            "sk-secret\n",
            "sk-secret\t",
            "sk-secret\0",
            "sk-secret\x7f",
        ] {
            let in_file = format!("{up}api_key = {}\n", toml::Value::from(key));
            let e = errors(&in_file);
            assert_eq!(e.len(), 1, "{key:?}: {e:?}");
            assert!(!shows_the_key(&e), "{e:?}");

            let from_env = format!("{up}api_key_env = \"UP_KEY\"\n");
            let e = errors_with_env(&from_env, "UP_KEY", key);
            assert_eq!(e.len(), 1, "{key:?}: {e:?}");
            assert!(!shows_the_key(&e), "{e:?}");

            let e = errors_with_env("", "GROQ_API_KEY", key);
            assert_eq!(e.len(), 1, "{key:?}: {e:?}");
            assert!(!shows_the_key(&e), "{e:?}");
        }
    }

    #[test]
    fn a_base_url_error_shows_no_credentials_or_query() {
        for (url, secret) in [
            ("http://admin:hunter2pw@127.0.0.1:9/v1", "hunter2pw"),
            ("https://host/v1?key=AIzaSECRET", "AIzaSECRET"),
            ("http://u:p@ss@host/v1 x", "p@ss"),
            ("ftp://user:topsecret@host/", "topsecret"),
            ("https://host/v1#frag-secret", "frag-secret"),
            ("http:/admin:hunter2pw@127.0.0.1:9/v1", "hunter2pw"),
            ("http//admin:hunter2pw@127.0.0.1/v1", "hunter2pw"),
            ("http://admin:hun/ter2pw@127.0.0.1:9/v1", "ter2pw"),
            ("http://admin:hun?ter2pw@127.0.0.1/v1", "admin:hun"),
            ("http://admin:hun#ter2pw@127.0.0.1/v1", "admin:hun"),
            ("admin:hunter2pw@127.0.0.1/v1", "hunter2pw"),
            ("http://admin:123/x@127.0.0.1/v1", "admin:123/x"),
        ] {
            let e = BaseUrl::parse(url).unwrap_err();
            assert!(!e.contains(secret), "{e}");
            // Shown redacted, or (no URL at all) not shown.
            assert!(
                e.contains("****") || e == "must start with http:// or https://",
                "{e}"
            );
        }
        // A key pasted into base_url, or a key where a variable's name
        // belongs: never shown (found by a review).
        assert!(!BaseUrl::parse("sk-LEAK13").unwrap_err().contains("LEAK"));
        let c = Config::from_toml(
            "[providers.up]\nbase_url = \"http://127.0.0.1:9/v1\"\napi_key_env = \"sk-LEAK08\"\n[routes.r]\ntargets = [{ provider = \"up\", model = \"m\", api_keys_env = [\"sk-LEAK12b\"] }]\n",
        );
        let e = c.unwrap_err().to_string();
        assert!(!e.contains("LEAK"), "{e}");
        assert!(
            e.contains("providers.up.api_key_env: must name an environment variable"),
            "{e}"
        );
        assert!(
            e.contains("api_keys_env[0]: must name an environment variable"),
            "{e}"
        );
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
}
