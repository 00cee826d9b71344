//! Providers as a shard sees them, and the connections that reach them: stage 6
//! of the pipeline ("upstream").
//!
//! Owns connection setup (DNS cache, TCP, TLS), the per-shard pool, and the
//! in-process `mock` provider. Does not parse responses (`http::response`) or
//! relay them (`server::relay`).

pub mod conn;
pub mod dns;
pub mod mock;
pub mod pool;
pub mod tls;

use crate::config::{ProviderConfig, ProviderKind, Scheme};
use std::rc::Rc;

/// A provider, ready for the request path (shard-local, built once at start).
#[derive(Debug)]
pub struct Provider {
    pub name: Rc<str>,
    pub config: ProviderConfig,
    /// `authorization: Bearer ...\r\n` (or `x-api-key`) precomputed, when a key is configured.
    pub auth_native: Option<String>,
    /// Auth header lines for OpenAI-compatible (unified) requests.
    pub auth_unified: Option<String>,
    /// TLS settings for https base URLs.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// Upstream paths of the unified endpoints, in `route::UNIFIED_ENDPOINTS` order.
    unified_paths: Vec<Rc<str>>,
}

impl Provider {
    pub fn new(config: ProviderConfig) -> Provider {
        let (native, unified) = match (&config.api_key, config.kind) {
            (Some(k), ProviderKind::OpenAi) => {
                let line = format!("authorization: Bearer {}\r\n", k.expose());
                (Some(line.clone()), Some(line))
            }
            (Some(k), ProviderKind::Anthropic) => (
                Some(format!("x-api-key: {}\r\n", k.expose())),
                Some(format!(
                    "authorization: Bearer {}\r\nx-api-key: {}\r\n",
                    k.expose(),
                    k.expose()
                )),
            ),
            _ => (None, None),
        };
        // Certificates were validated when the config was parsed.
        let tls = (config.base_url.scheme == Scheme::Https)
            .then(|| tls::config_for(&config.extra_roots).unwrap_or_else(|_| tls::client_config()));
        let unified_paths = crate::route::UNIFIED_ENDPOINTS
            .iter()
            .map(|e| Rc::from(unified_base(&config, e)))
            .collect();
        Provider {
            unified_paths,
            name: Rc::from(config.name.as_str()),
            config,
            auth_native: native,
            auth_unified: unified,
            tls,
        }
    }

    pub fn kind(&self) -> ProviderKind {
        self.config.kind
    }

    pub fn is_tls(&self) -> bool {
        self.config.base_url.scheme == Scheme::Https
    }

    /// Upstream path for a unified endpoint such as `chat/completions`: the
    /// common no-query case is precomputed, so it costs a refcount.
    pub fn unified_path(&self, endpoint: &str, query: &str) -> Rc<str> {
        let i = crate::route::UNIFIED_ENDPOINTS
            .iter()
            .position(|e| *e == endpoint);
        match i {
            Some(i) if query.is_empty() => self.unified_paths[i].clone(),
            _ => Rc::from(format!("{}{query}", unified_base(&self.config, endpoint))),
        }
    }

    /// Upstream path for a passthrough `rest` (no leading slash, query included).
    pub fn passthrough_path(&self, rest: &str) -> Rc<str> {
        let base = &self.config.base_url.path;
        let mut p = String::with_capacity(base.len() + 1 + rest.len());
        p.push_str(base);
        p.push('/');
        p.push_str(rest);
        Rc::from(p)
    }
}

fn unified_base(config: &ProviderConfig, endpoint: &str) -> String {
    let base = &config.base_url.path;
    match config.kind {
        // Anthropic's OpenAI-compatible API lives under /v1 of its native base URL.
        ProviderKind::Anthropic => format!("{base}/v1/{endpoint}"),
        _ => format!("{base}/{endpoint}"),
    }
}
