//! Transport to providers: DNS cache, TCP, TLS, the per-shard pool and the
//! HTTP/1.1 client side (send a request, read a response head).
//!
//! Knows hosts, ports and bytes; knows nothing about models, routes, keys,
//! caches or providers' wire formats (`providers` builds the [`Endpoint`] and
//! the request bytes). Does not relay bodies (`server::relay`).

pub mod client;
pub mod conn;
pub mod dns;
pub mod pool;
pub mod tls;

use std::rc::Rc;
use std::sync::Arc;

/// Where an upstream connection goes: built once at start.
#[derive(Clone)]
pub struct Endpoint {
    /// Pool key (the provider's name).
    pub name: Rc<str>,
    pub host: String,
    pub port: u16,
    /// `Host` header value.
    pub authority: String,
    /// TLS settings when the base URL is https.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}
