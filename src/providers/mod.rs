//! Providers: one adapter per [`ProviderKind`], owning everything that differs
//! between providers' wire formats. A stage module: `route` and the pipeline
//! ask it; it imports `upstream` (for the [`Endpoint`] a provider is reached
//! at) and the leaves, and never the server.
//!
//! An adapter says how a provider is authenticated (header lines built once at
//! start), where the unified endpoints live under its base URL, whether aigw
//! asks for stream usage on the client's behalf, which shape its `usage`
//! objects have, which wire format its unified endpoint speaks (a unified
//! request to a provider of another [`Dialect`] is translated, and its reply
//! translated back), and (for the mock) answers in process. `ProviderKind` is
//! matched in this file only.

pub mod anthropic;
pub mod azure;
pub mod google;
pub mod mock;
pub mod openai;
pub mod translate;
pub mod usage;

use crate::config::{Config, ProviderConfig, ProviderKind, Scheme};
use crate::fasthash::FastMap;
use crate::upstream::{Endpoint, tls};
use std::rc::Rc;
use std::sync::Arc;
use translate::{ReplyTranslator, TranslateError};
use usage::UsageShape;

/// Endpoints of the OpenAI-compatible unified API, as the client names them
/// after `/v1/`.
pub const UNIFIED_ENDPOINTS: &[&str] = &[
    "chat/completions",
    "completions",
    "embeddings",
    "responses",
    "messages",
];

/// The format a unified request arrives in: Anthropic's for `/v1/messages`,
/// OpenAI's for the rest.
pub fn client_dialect(endpoint: &str) -> Dialect {
    if endpoint == "messages" {
        Dialect::Anthropic
    } else {
        Dialect::OpenAi
    }
}

/// The wire format a provider's unified endpoint speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAI's: the client's body goes with its model rewritten.
    OpenAi,
    /// Anthropic's Messages API: requests and replies are translated.
    Anthropic,
    /// Google's Gemini `generateContent`: requests and replies are translated.
    Google,
}

/// How a translated request's reply is turned back into what the client
/// asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Translation {
    /// An Anthropic Messages reply as an OpenAI chat completion.
    AnthropicToChat {
        /// The client asked for a final usage chunk.
        include_usage: bool,
    },
    /// An OpenAI chat completion reply as an Anthropic Messages reply.
    ChatToMessages,
    /// A Gemini reply as an OpenAI chat completion.
    GoogleToChat { include_usage: bool },
    /// A Gemini reply as an Anthropic Messages reply (through the chat
    /// completion format: two translations chained).
    GoogleToMessages,
}

impl Translation {
    /// The translator for a reply of `status` (`event_stream`: an SSE body)
    /// to a request for `model`.
    pub fn reply(self, status: u16, event_stream: bool, model: &str) -> Box<dyn ReplyTranslator> {
        match self {
            Translation::AnthropicToChat { include_usage } => Box::new(
                anthropic::reply::ChatReply::for_chat(status, event_stream, include_usage),
            ),
            Translation::ChatToMessages => Box::new(
                anthropic::inbound::MessagesReply::for_messages(status, event_stream),
            ),
            Translation::GoogleToMessages => Box::new(translate::Chain::new(
                Box::new(google::reply::ChatReply::for_chat(
                    status,
                    event_stream,
                    true,
                    model,
                )),
                Box::new(anthropic::inbound::MessagesReply::for_messages(
                    status,
                    event_stream,
                )),
            )),
            Translation::GoogleToChat { include_usage } => Box::new(
                google::reply::ChatReply::for_chat(status, event_stream, include_usage, model),
            ),
        }
    }

    /// The unified endpoint the translated request goes to.
    pub fn upstream_endpoint(self) -> &'static str {
        match self {
            Translation::AnthropicToChat { .. } => "messages",
            Translation::ChatToMessages
            | Translation::GoogleToChat { .. }
            | Translation::GoogleToMessages => "chat/completions",
        }
    }
}

/// What one kind of provider does differently. Stateless: one static value per kind.
pub trait Adapter: Sync {
    /// Header lines (each ending in CRLF) that carry `key` on passthrough requests.
    fn auth_native(&self, key: &str) -> String;
    /// Header lines that carry `key` on unified (OpenAI-shaped) requests.
    fn auth_unified(&self, key: &str) -> String;
    /// Upstream path of a unified endpoint under the base URL's path.
    fn unified_path(&self, base: &str, endpoint: &str) -> String {
        format!("{base}/{endpoint}")
    }
    /// Whether a streamed unified request gets `stream_options.include_usage`
    /// injected when the client did not ask (the usage-only event is then
    /// dropped before the client sees it).
    fn injects_stream_usage(&self) -> bool;
    /// Where this provider's replies keep token counts.
    fn usage_shape(&self) -> &'static UsageShape;
    /// The format its unified endpoint speaks.
    fn dialect(&self) -> Dialect {
        Dialect::OpenAi
    }
    /// Header lines every unified request carries (an API version).
    fn unified_headers(&self) -> &'static str {
        ""
    }
    /// Upstream path of a unified request when it depends on the model (and
    /// whether it streams): Gemini's `models/{model}:...`, Azure's deployments.
    fn model_path(
        &self,
        _base: &str,
        _endpoint: &str,
        _model: &str,
        _stream: bool,
    ) -> Option<String> {
        None
    }
    /// The model a pass-through path names (under the base URL, query
    /// included), for providers whose API names it there rather than in
    /// the body: Gemini's `.../models/{model}:{method}`, Azure's
    /// `deployments/{deployment}/...`.
    fn path_model<'a>(&self, _rest: &'a str) -> PathModel<'a> {
        PathModel::Body
    }
    /// Whether a pass-through path asks for a stream (Gemini's
    /// `:streamGenerateContent`), for providers whose API says so there.
    fn path_streams(&self, _rest: &str) -> bool {
        false
    }
    /// Whether this API names the model in some of its paths.
    fn names_model_in_path(&self) -> bool {
        false
    }
    /// A provider answered inside the gateway: the whole raw HTTP response.
    fn answer_in_process(&self, _path: &str, _body: &[u8], _request_id: u64) -> Option<Vec<u8>> {
        None
    }
}

/// Where a pass-through request names its model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathModel<'a> {
    /// In its body (`model`), as most APIs do.
    Body,
    /// In its path, which the provider goes by (the body's `model`, if any,
    /// is not what it runs): the model, or none when the path names none.
    Path(Option<&'a str>),
}

/// The path segment after the first segment that is `name` (compared
/// ignoring ASCII case, as some routers do) in `rest`, its query cut off:
/// `None` without such a segment, `Some(None)` when nothing follows it.
fn segment_after<'a>(rest: &'a str, name: &str) -> Option<Option<&'a str>> {
    let path = rest.split(['?', '#']).next().unwrap_or_default();
    let mut segments = path.split('/');
    segments.find(|s| s.eq_ignore_ascii_case(name))?;
    Some(segments.next().filter(|s| !s.is_empty()))
}

fn adapter(kind: ProviderKind) -> &'static dyn Adapter {
    match kind {
        ProviderKind::OpenAi => &openai::OpenAi,
        ProviderKind::Anthropic => &anthropic::Anthropic,
        ProviderKind::Google => &google::Google,
        ProviderKind::Azure => &azure::Azure,
        ProviderKind::Mock => &mock::Mock,
    }
}

/// Most characters of a refused model name shown in its error.
const MODEL_SHOWN_MAX: usize = 64;

/// A provider as a shard sees it: built once at start, shared by `Rc`.
pub struct Provider {
    /// Shared with the request records (which cross to the log thread).
    pub name: Arc<str>,
    /// Where its connections go (the pool key is the provider's name).
    pub endpoint: Endpoint,
    adapter: &'static dyn Adapter,
    base_path: String,
    auth_native: Option<String>,
    auth_unified: Option<String>,
    /// Output cap written into translated requests that set none (Anthropic requires one).
    default_max_tokens: u64,
    /// Query every unified request carries (Azure's `api-version=...`).
    unified_query: Option<String>,
    /// Upstream paths of the unified endpoints, in [`UNIFIED_ENDPOINTS`] order.
    unified_paths: Vec<Rc<str>>,
}

impl std::fmt::Debug for Provider {
    // Auth lines hold the key: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name)
            .field("authority", &self.endpoint.authority)
            .finish_non_exhaustive()
    }
}

/// Every configured provider by name.
pub type Providers = FastMap<String, Rc<Provider>>;

/// Builds the shard's providers from the config.
pub fn build(config: &Config) -> Providers {
    config
        .providers
        .values()
        .map(|p| (p.name.clone(), Rc::new(Provider::new(p))))
        .collect()
}

/// Hosts to resolve at start: every provider reached over the network.
pub fn network_hosts(config: &Config) -> Vec<(String, u16)> {
    config
        .providers
        .values()
        .filter(|p| p.kind != ProviderKind::Mock)
        .map(|p| (p.base_url.host.clone(), p.base_url.port))
        .collect()
}

/// The pool key of a provider's connections: its name and everything that
/// makes a connection go somewhere else (address, scheme, extra trusted CAs).
/// A reload that moves a provider gives it a new key, so connections to the
/// old address, even ones returned later by requests still in flight, are
/// never taken for the new one.
pub fn pool_key(config: &ProviderConfig) -> String {
    let roots = config.extra_roots.concat();
    format!(
        "{}@{}#{:016x}",
        config.name,
        config.base_url,
        xxhash_rust::xxh3::xxh3_64(&roots)
    )
}

impl Provider {
    pub fn new(config: &ProviderConfig) -> Provider {
        let adapter = adapter(config.kind);
        let url = &config.base_url;
        let key = config.api_key.as_ref().map(|k| k.expose());
        // Certificates were validated when the config was parsed.
        let tls = (url.scheme == Scheme::Https)
            .then(|| tls::config_for(&config.extra_roots).unwrap_or_else(|_| tls::client_config()));
        let name: Arc<str> = Arc::from(config.name.as_str());
        Provider {
            unified_paths: UNIFIED_ENDPOINTS
                .iter()
                .map(|e| Rc::from(adapter.unified_path(&url.path, e)))
                .collect(),
            endpoint: Endpoint {
                name: Rc::from(pool_key(config)),
                host: url.host.clone(),
                port: url.port,
                authority: url.authority.clone(),
                tls,
            },
            name,
            adapter,
            base_path: url.path.clone(),
            auth_native: key.map(|k| adapter.auth_native(k)),
            auth_unified: key.map(|k| adapter.auth_unified(k)),
            default_max_tokens: config.default_max_tokens,
            unified_query: config
                .api_version
                .as_ref()
                .map(|v| format!("api-version={v}")),
        }
    }

    /// The format its unified endpoint speaks.
    pub fn dialect(&self) -> Dialect {
        self.adapter.dialect()
    }

    /// Header lines every unified request to it carries besides the key.
    pub fn unified_headers(&self) -> &'static str {
        self.adapter.unified_headers()
    }

    /// Writes the unified request `body` for `endpoint` in this provider's
    /// format into `out`, with `model` as the provider's model name; says how
    /// the reply comes back. Only for providers of another [`Dialect`].
    /// What [`Provider::translate`] will return for a request to `endpoint`
    /// that streams (`stream`) and asked for usage in its stream
    /// (`include_usage`), as the gateway's scan reads them, without writing
    /// the body: a cache hit never needs it. `Err`: the endpoint has no
    /// counterpart here (what the body holds may still be untranslatable).
    pub fn translation_of(
        &self,
        endpoint: &str,
        stream: bool,
        include_usage: bool,
    ) -> Result<Translation, TranslateError> {
        match (self.dialect(), endpoint) {
            (Dialect::Anthropic, "chat/completions") => Ok(Translation::AnthropicToChat {
                include_usage: stream && include_usage,
            }),
            (Dialect::Google, "chat/completions") => Ok(Translation::GoogleToChat {
                include_usage: stream && include_usage,
            }),
            (Dialect::Google, "messages") => Ok(Translation::GoogleToMessages),
            (Dialect::OpenAi, "messages") => Ok(Translation::ChatToMessages),
            (dialect, endpoint) => Err(self.no_counterpart(dialect, endpoint)),
        }
    }

    fn no_counterpart(&self, dialect: Dialect, endpoint: &str) -> TranslateError {
        TranslateError::new(format!(
            "provider `{}` ({dialect:?} API) has no counterpart of /v1/{endpoint}; only /v1/chat/completions and /v1/messages are translated",
            self.name
        ))
    }

    pub fn translate(
        &self,
        endpoint: &str,
        body: &[u8],
        model: &str,
        out: &mut Vec<u8>,
    ) -> Result<Translation, TranslateError> {
        match (self.dialect(), endpoint) {
            (Dialect::Anthropic, "chat/completions") => {
                let asked = anthropic::request::chat(body, model, self.default_max_tokens, out)?;
                Ok(Translation::AnthropicToChat {
                    include_usage: asked.stream && asked.include_usage,
                })
            }
            (Dialect::Google, "chat/completions") => {
                let (stream, include_usage) = google::request::chat(body, out)?;
                Ok(Translation::GoogleToChat {
                    include_usage: stream && include_usage,
                })
            }
            (Dialect::Google, "messages") => {
                // Anthropic's format to OpenAI's, then OpenAI's to Gemini's.
                let mut chat = Vec::with_capacity(body.len() + 64);
                anthropic::inbound::chat_request(body, model, false, false, &mut chat)?;
                google::request::chat(&chat, out)?;
                Ok(Translation::GoogleToMessages)
            }
            (Dialect::OpenAi, "messages") => {
                // OpenAI's own API (and Azure's) wants the newer name for the cap;
                // other OpenAI-compatible servers know `max_tokens`.
                let host = &self.endpoint.host;
                let modern = host.ends_with("openai.com") || host.ends_with(".azure.com");
                anthropic::inbound::chat_request(
                    body,
                    model,
                    self.injects_stream_usage(),
                    modern,
                    out,
                )?;
                Ok(Translation::ChatToMessages)
            }
            (dialect, endpoint) => Err(self.no_counterpart(dialect, endpoint)),
        }
    }

    /// Header lines carrying `key` on a unified request to this provider
    /// (a route target's own keys).
    pub fn unified_auth_with(&self, key: &str) -> String {
        self.adapter.auth_unified(key)
    }

    /// Header lines carrying the configured key, if aigw holds one.
    pub fn auth_lines(&self, unified: bool) -> Option<&str> {
        if unified {
            self.auth_unified.as_deref()
        } else {
            self.auth_native.as_deref()
        }
    }

    /// Upstream path for a unified endpoint such as `chat/completions`: the
    /// common no-query case is precomputed, so it costs a refcount.
    pub fn unified_path(&self, endpoint: &str, query: &str) -> Rc<str> {
        match UNIFIED_ENDPOINTS.iter().position(|e| *e == endpoint) {
            Some(i) if query.is_empty() => self.unified_paths[i].clone(),
            _ => Rc::from(format!(
                "{}{query}",
                self.adapter.unified_path(&self.base_path, endpoint)
            )),
        }
    }

    /// Upstream path of a unified request whose path names its model
    /// (Gemini, Azure); `None` for providers whose path does not. The model
    /// goes into the path, so only plain names pass (letters, digits, `.`,
    /// `-`, `_`): anything else could climb out of the base URL.
    pub fn model_path(
        &self,
        endpoint: &str,
        model: &str,
        stream: bool,
    ) -> Option<Result<Rc<str>, TranslateError>> {
        let path = self
            .adapter
            .model_path(&self.base_path, endpoint, model, stream)?;
        if !crate::config::url_model_plain(model) {
            return Some(Err(TranslateError::new(format!(
                "model `{}` goes into provider `{}`'s URL, so it may hold only letters, digits, '.', '-' and '_'",
                model.chars().take(MODEL_SHOWN_MAX).collect::<String>(),
                self.name
            ))));
        }
        // The client's query is not forwarded: on these paths it could undo
        // aigw's own (`alt=sse`, `api-version`) or trim the usage away.
        let mut path = path;
        if let Some(q) = &self.unified_query {
            path.push(if path.contains('?') { '&' } else { '?' });
            path.push_str(q);
        }
        Some(Ok(Rc::from(path)))
    }

    /// Upstream path for a passthrough `rest` (no leading slash, query included).
    pub fn passthrough_path(&self, rest: &str) -> Rc<str> {
        let mut p = String::with_capacity(self.base_path.len() + 1 + rest.len());
        p.push_str(&self.base_path);
        p.push('/');
        p.push_str(rest);
        Rc::from(p)
    }

    pub fn injects_stream_usage(&self) -> bool {
        self.adapter.injects_stream_usage()
    }

    /// See [`Adapter::path_model`].
    pub fn path_model<'a>(&self, rest: &'a str) -> PathModel<'a> {
        self.adapter.path_model(rest)
    }

    /// See [`Adapter::path_streams`].
    pub fn path_streams(&self, rest: &str) -> bool {
        self.adapter.path_streams(rest)
    }

    /// See [`Adapter::names_model_in_path`].
    pub fn names_model_in_path(&self) -> bool {
        self.adapter.names_model_in_path()
    }

    pub fn usage_shape(&self) -> &'static UsageShape {
        self.adapter.usage_shape()
    }

    /// The whole raw response when this provider answers in process (the mock).
    pub fn answer_in_process(&self, path: &str, body: &[u8], request_id: u64) -> Option<Vec<u8>> {
        self.adapter.answer_in_process(path, body, request_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemini_and_azure_name_the_model_in_the_path() {
        let (g, az) = (adapter(ProviderKind::Google), adapter(ProviderKind::Azure));
        let path = |m: Option<&'static str>| PathModel::Path(m);
        for (rest, model) in [
            (
                "v1beta/models/gemini-2.0-flash:generateContent",
                path(Some("gemini-2.0-flash")),
            ),
            (
                "v1beta/models/gemini-x:streamGenerateContent?alt=sse",
                path(Some("gemini-x")),
            ),
            ("v1/Models/gemini-x", path(Some("gemini-x"))),
            ("v1beta/models", path(None)),
            ("v1beta/models/:generateContent", path(None)),
            ("v1beta/tunedModels/t1:generateContent", path(None)),
            ("v1beta/files?models/x", path(None)),
        ] {
            assert_eq!(g.path_model(rest), model, "{rest}");
        }
        assert!(g.names_model_in_path() && az.names_model_in_path());
        assert_eq!(
            az.path_model("deployments/dep-1/chat/completions?api-version=2024-10-21"),
            path(Some("dep-1"))
        );
        assert_eq!(
            az.path_model("Deployments/dep-1/chat/completions"),
            path(Some("dep-1"))
        );
        assert_eq!(az.path_model("v1/chat/completions"), PathModel::Body);
        let openai = adapter(ProviderKind::OpenAi);
        assert_eq!(openai.path_model("models/x"), PathModel::Body);
        assert!(!openai.names_model_in_path());
        assert!(g.path_streams("v1beta/models/g:streamGenerateContent?alt=sse"));
        assert!(!g.path_streams("v1beta/models/g:generateContent"));
        assert!(!g.path_streams("v1beta/models/streamGenerateContent"));
        assert!(!az.path_streams("deployments/d/chat/completions"));
    }

    fn provider(toml: &str, name: &str) -> Provider {
        let c = Config::from_toml_with_env(toml, &|_| None).unwrap();
        Provider::new(&c.providers[name])
    }

    #[test]
    fn adapters_build_their_own_auth_and_paths() {
        let p = provider(
            "[providers.o]\nbase_url = \"http://127.0.0.1:9/v1\"\napi_key = \"sk-o\"\n",
            "o",
        );
        assert_eq!(p.auth_lines(true), Some("authorization: Bearer sk-o\r\n"));
        assert_eq!(p.auth_lines(false), Some("authorization: Bearer sk-o\r\n"));
        assert_eq!(
            &*p.unified_path("chat/completions", ""),
            "/v1/chat/completions"
        );
        assert_eq!(&*p.unified_path("embeddings", "?a=1"), "/v1/embeddings?a=1");
        assert_eq!(&*p.passthrough_path("files?x=1"), "/v1/files?x=1");
        assert!(p.injects_stream_usage());

        let a = provider(
            "[providers.a]\nkind = \"anthropic\"\nbase_url = \"http://127.0.0.1:9\"\napi_key = \"sk-a\"\n",
            "a",
        );
        assert_eq!(a.auth_lines(false), Some("x-api-key: sk-a\r\n"));
        assert_eq!(&*a.unified_path("chat/completions", ""), "/v1/messages");
        assert_eq!(a.dialect(), Dialect::Anthropic);
        assert!(a.unified_headers().starts_with("anthropic-version:"));
        let mut out = Vec::new();
        assert!(a.translate("embeddings", b"{}", "m", &mut out).is_err());
        let t = a.translate(
            "chat/completions",
            br#"{"messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}"#,
            "claude",
            &mut out,
        );
        assert_eq!(
            t,
            Ok(Translation::AnthropicToChat {
                include_usage: true
            })
        );
        assert!(!a.injects_stream_usage());
        assert!(!format!("{a:?}").contains("sk-a"));
    }

    #[test]
    fn only_the_mock_answers_in_process() {
        let c = Config::from_toml_with_env("", &|_| None).unwrap();
        let body = br#"{"model":"echo","messages":[{"role":"user","content":"hi"}]}"#;
        let mock = Provider::new(&c.providers["mock"]);
        assert!(
            mock.answer_in_process("/v1/chat/completions", body, 1)
                .is_some()
        );
        let openai = Provider::new(&c.providers["openai"]);
        assert!(
            openai
                .answer_in_process("/v1/chat/completions", body, 1)
                .is_none()
        );
    }
}
