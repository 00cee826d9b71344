//! DNS for provider hosts, cached and refreshed off the request path.
//!
//! Owns a process-wide cache (host:port -> addresses). A shard asks the cache.
//! At start a control thread resolves every configured provider host; a host it
//! could not resolve is looked up by its first request (on glommio's blocking
//! pool). The same thread re-resolves cached hosts every [`REFRESH`], so
//! requests do not wait on DNS. Failed refreshes keep the last good answer for
//! [`STALE_GRACE`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often cached hosts are re-resolved.
pub const REFRESH: Duration = Duration::from_secs(30);
/// How long a last good answer is used when refreshing fails.
pub const STALE_GRACE: Duration = Duration::from_secs(600);

struct Entry {
    addrs: Arc<[SocketAddr]>,
    resolved: Instant,
}

#[derive(Default)]
pub struct Resolver {
    cache: Mutex<HashMap<(String, u16), Entry>>,
}

impl Resolver {
    pub fn new() -> Arc<Resolver> {
        Arc::new(Resolver::default())
    }

    /// Addresses for `host:port`: from the cache, or resolved now (first use).
    pub async fn lookup(&self, host: &str, port: u16) -> std::io::Result<Arc<[SocketAddr]>> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Arc::from([SocketAddr::new(ip, port)]));
        }
        if let Some(hit) = self.cached(host, port) {
            return Ok(hit);
        }
        let name = host.to_string();
        let resolved = glommio::executor()
            .spawn_blocking(move || resolve(&name, port))
            .await?;
        self.insert(host, port, resolved.clone());
        Ok(resolved)
    }

    fn cached(&self, host: &str, port: u16) -> Option<Arc<[SocketAddr]>> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let e = cache.get(&(host.to_string(), port))?;
        (e.resolved.elapsed() < STALE_GRACE).then(|| e.addrs.clone())
    }

    fn insert(&self, host: &str, port: u16, addrs: Arc<[SocketAddr]>) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.insert(
            (host.to_string(), port),
            Entry {
                addrs,
                resolved: Instant::now(),
            },
        );
    }

    /// Re-resolves every cached host; run by a control thread every [`REFRESH`].
    pub fn refresh_all(&self) {
        let keys: Vec<(String, u16)> = {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache.keys().cloned().collect()
        };
        for (host, port) in keys {
            if let Ok(addrs) = resolve(&host, port) {
                self.insert(&host, port, addrs);
            }
        }
    }

    /// Starts the refresh thread. It first resolves `hosts` (the configured
    /// providers), so even a provider's first request usually finds its
    /// addresses cached; failures are left for the request to report.
    pub fn spawn_refresher(self: &Arc<Self>, hosts: Vec<(String, u16)>) {
        let me = Arc::clone(self);
        let _ = std::thread::Builder::new()
            .name("aigw-dns".into())
            .spawn(move || {
                for (host, port) in hosts {
                    if host.parse::<IpAddr>().is_err()
                        && let Ok(addrs) = resolve(&host, port)
                    {
                        me.insert(&host, port, addrs);
                    }
                }
                loop {
                    std::thread::sleep(REFRESH);
                    me.refresh_all();
                }
            });
    }
}

fn resolve(host: &str, port: u16) -> std::io::Result<Arc<[SocketAddr]>> {
    let mut addrs: Vec<SocketAddr> = (host, port).to_socket_addrs()?.collect();
    // Prefer IPv4: many hosts have no IPv6 route.
    addrs.sort_by_key(|a| a.is_ipv6());
    if addrs.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{host} has no addresses"),
        ));
    }
    Ok(Arc::from(addrs))
}
