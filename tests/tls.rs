//! TLS to providers: aigw speaks HTTPS (rustls) to a provider whose certificate
//! chains to a private CA given in `providers.*.ca_file`, pools the TLS
//! connection, injects the configured key, and refuses an untrusted certificate.

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A tiny blocking HTTPS provider: counts TLS connections, remembers the last
/// Authorization header, answers every request with a chat completion.
struct TlsProvider {
    port: u16,
    connections: Arc<AtomicUsize>,
    last_auth: Arc<Mutex<Option<String>>>,
    ca_pem: String,
}

fn start_tls_provider() -> TlsProvider {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from(leaf.der().to_vec())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
    )
    .unwrap();
    let server = Arc::new(server);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let last_auth = Arc::new(Mutex::new(None));
    let (conns, auth) = (connections.clone(), last_auth.clone());
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            conns.fetch_add(1, Ordering::SeqCst);
            let (server, auth) = (server.clone(), auth.clone());
            std::thread::spawn(move || serve_tls(server, tcp, auth));
        }
    });
    TlsProvider {
        port,
        connections,
        last_auth,
        ca_pem: ca.pem(),
    }
}

fn serve_tls(cfg: Arc<rustls::ServerConfig>, tcp: TcpStream, auth: Arc<Mutex<Option<String>>>) {
    let conn = rustls::ServerConnection::new(cfg).unwrap();
    let mut tls = BufReader::new(rustls::StreamOwned::new(conn, tcp));
    loop {
        let mut content_length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            match tls.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    content_length = v.trim().parse().unwrap_or(0);
                }
                if k.eq_ignore_ascii_case("authorization") {
                    *auth.lock().unwrap() = Some(v.trim().to_string());
                }
            }
        }
        let mut body = vec![0u8; content_length];
        if tls.read_exact(&mut body).is_err() {
            return;
        }
        let reply = r#"{"id":"tls-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"over tls"},"finish_reason":"stop"}],"usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9}}"#;
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{reply}",
            reply.len()
        );
        let stream = tls.get_mut();
        // `pause` in the prompt: a provider silent for 2.5 s mid-body (the
        // relay waits on it in one-second slices, looking at its client).
        let (first, rest) = if body.windows(5).any(|w| w == b"pause") {
            resp.split_at(resp.len() - 20)
        } else {
            (resp.as_str(), "")
        };
        if stream.write_all(first.as_bytes()).is_err() || stream.flush().is_err() {
            return;
        }
        if !rest.is_empty() {
            std::thread::sleep(Duration::from_millis(2500));
            if stream.write_all(rest.as_bytes()).is_err() || stream.flush().is_err() {
                return;
            }
        }
    }
}

struct Gateway {
    child: Child,
    addr: String,
    dir: PathBuf,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `aigw serve` with `provider_toml` (where `{dir}` names its temp dir,
/// which also receives `files`), and waits for its listening line.
fn start_gateway(shards: usize, provider_toml: &str, tag: &str, files: &[(&str, &str)]) -> Gateway {
    let dir = std::env::temp_dir().join(format!("aigw-tls-{}-{tag}-{shards}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshards = {shards}\ndata_dir = \"{d}\"\n[admin]\nsocket = \"{d}/admin.sock\"\n{provider_toml}",
        d = dir.display()
    );
    let path = dir.join("aigw.toml");
    std::fs::write(&path, cfg.replace("{dir}", &dir.display().to_string())).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_aigw"))
        .args(["serve", "--config"])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr = first
        .split("http://")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no listening line: {first:?}"))
        .to_string();
    Gateway { child, addr, dir }
}

/// One keep-alive client connection; returns (status, body) per request.
fn post(conn: &mut BufReader<TcpStream>, body: &str) -> (u16, String) {
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: aigw\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.get_mut().write_all(req.as_bytes()).unwrap();
    let mut status_line = String::new();
    conn.read_line(&mut status_line).unwrap();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let mut len = 0usize;
    loop {
        let mut l = String::new();
        conn.read_line(&mut l).unwrap();
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some(v) = l.strip_prefix("content-length: ") {
            len = v.parse().unwrap();
        }
    }
    let mut b = vec![0u8; len];
    conn.read_exact(&mut b).unwrap();
    (status, String::from_utf8(b).unwrap())
}

fn connect(addr: &str) -> BufReader<TcpStream> {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    BufReader::new(s)
}

fn https_provider_is_reached_through_a_private_ca(shards: usize) {
    let p = start_tls_provider();
    let toml = format!(
        "[providers.secure]\nkind = \"openai\"\nbase_url = \"https://localhost:{}/v1\"\napi_key = \"sk-tls-test\"\nca_file = \"{{dir}}/ca.pem\"\n",
        p.port
    );
    let gw = start_gateway(shards, &toml, "ok", &[("ca.pem", &p.ca_pem)]);
    let mut conn = connect(&gw.addr);
    for _ in 0..3 {
        let (status, body) = post(
            &mut conn,
            r#"{"model":"secure/gpt-x","messages":[{"role":"user","content":"hi"}]}"#,
        );
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("over tls"), "{body}");
    }
    // A body that goes silent for longer than the relay's slices arrives
    // whole, and the TLS connection stays usable after the waits.
    for content in ["pause", "after"] {
        let (status, body) = post(
            &mut conn,
            &format!(
                r#"{{"model":"secure/gpt-x","messages":[{{"role":"user","content":"{content}"}}]}}"#
            ),
        );
        assert_eq!(status, 200, "{body}");
        assert!(body.ends_with("\"total_tokens\":9}}"), "{body}");
    }
    assert_eq!(
        p.connections.load(Ordering::SeqCst),
        1,
        "the TLS connection is pooled and reused"
    );
    assert_eq!(
        p.last_auth.lock().unwrap().as_deref(),
        Some("Bearer sk-tls-test")
    );
}

fn untrusted_certificate_is_a_provider_error(shards: usize) {
    let p = start_tls_provider();
    let toml = format!(
        "[providers.secure]\nkind = \"openai\"\nbase_url = \"https://localhost:{}/v1\"\n",
        p.port
    );
    let gw = start_gateway(shards, &toml, "untrusted", &[]);
    let mut conn = connect(&gw.addr);
    let (status, body) = post(&mut conn, r#"{"model":"secure/gpt-x","messages":[]}"#);
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("upstream_unreachable") && body.contains("TLS"),
        "{body}"
    );
}

#[test]
fn https_provider_is_reached_through_a_private_ca_at_1_and_2_shards() {
    https_provider_is_reached_through_a_private_ca(1);
    https_provider_is_reached_through_a_private_ca(2);
}

#[test]
fn untrusted_provider_certificate_gives_502_at_1_and_2_shards() {
    untrusted_certificate_is_a_provider_error(1);
    untrusted_certificate_is_a_provider_error(2);
}
