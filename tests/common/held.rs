//! A provider that answers exactly when the test says so.
//!
//! It accepts connections, reads one request on each, reports the request's
//! arrival through a channel, and writes a fixed JSON answer only after
//! [`HeldUpstream::release`]. A test can therefore act (send SIGTERM, say) while
//! a request is provably in flight, without guessing with timers. It also
//! reports when the gateway closes a held connection ([`HeldUpstream::wait_closed`]).

use super::WAIT;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc::{self, Receiver, Sender};

/// The body every held request is answered with.
pub const HELD_REPLY: &str = r#"{"id":"held-1","object":"chat.completion","created":0,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"held"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;

pub struct HeldUpstream {
    pub addr: SocketAddr,
    arrived: Receiver<Vec<u8>>,
    release: Sender<()>,
    closed: Receiver<()>,
}

impl HeldUpstream {
    pub fn start() -> HeldUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind held upstream");
        let addr = listener.local_addr().unwrap();
        let (arrived_tx, arrived) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<()>();
        let (closed_tx, closed) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                conn.set_read_timeout(Some(WAIT)).unwrap();
                let Some(request) = read_request(&mut conn) else {
                    continue;
                };
                // A watcher reports the gateway closing this connection.
                if let Ok(mut watch) = conn.try_clone() {
                    let closed_tx = closed_tx.clone();
                    std::thread::spawn(move || {
                        let _ = watch.set_read_timeout(Some(WAIT * 3));
                        let mut byte = [0u8; 1];
                        if matches!(watch.read(&mut byte), Ok(0) | Err(_)) {
                            let _ = closed_tx.send(());
                        }
                    });
                }
                if arrived_tx.send(request).is_err() {
                    return;
                }
                // The test decides when the answer leaves (bounded, so a failed
                // test never leaves this thread waiting forever).
                if release_rx.recv_timeout(WAIT * 3).is_err() {
                    return;
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    HELD_REPLY.len()
                );
                let _ = conn.write_all(head.as_bytes());
                let _ = conn.write_all(HELD_REPLY.as_bytes());
            }
        });
        HeldUpstream {
            addr,
            arrived,
            release,
            closed,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Waits (bounded) until a request has arrived; returns its raw bytes.
    pub fn wait_arrival(&self) -> Vec<u8> {
        self.arrived
            .recv_timeout(WAIT)
            .expect("a request reaches the held upstream")
    }

    /// Waits (bounded) until the gateway has closed a held connection.
    pub fn wait_closed(&self) {
        self.closed
            .recv_timeout(WAIT)
            .expect("the gateway closes the held upstream connection");
    }

    /// Lets the held answer go.
    pub fn release(&self) {
        self.release.send(()).expect("held upstream is waiting");
    }
}

/// Reads one request head and its Content-Length body.
pub fn read_request(conn: &mut impl Read) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if buf.len() >= end + 4 + length {
            return Some(buf);
        }
    }
}
