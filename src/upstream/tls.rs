//! TLS to providers: rustls with the webpki (Mozilla) roots and ALPN http/1.1.
//! One config per process, plus one per provider that trusts extra CAs
//! (`providers.*.ca_file`). Session resumption comes from each config's
//! shared session cache.

use std::sync::{Arc, OnceLock};

fn build(extra_roots: &[Vec<u8>]) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for der in extra_roots {
        roots
            .add(rustls::pki_types::CertificateDer::from(der.clone()))
            .map_err(|e| format!("invalid CA certificate: {e}"))?;
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The process-wide config: public roots only.
pub fn client_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| build(&[]).expect("the public roots are valid"))
        .clone()
}

/// The config for a provider: shared when it adds no roots.
pub fn config_for(extra_roots: &[Vec<u8>]) -> Result<Arc<rustls::ClientConfig>, String> {
    if extra_roots.is_empty() {
        Ok(client_config())
    } else {
        build(extra_roots)
    }
}
