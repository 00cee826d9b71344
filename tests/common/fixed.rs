//! A provider that answers every request with the same raw bytes: statuses and
//! reason phrases the mock does not produce (422, 529).

use super::WAIT;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};

pub struct FixedUpstream {
    pub addr: SocketAddr,
}

impl FixedUpstream {
    /// Answers each request (head and Content-Length body) with `raw`; keeps
    /// the connection open for the next one.
    pub fn start(raw: &'static [u8]) -> FixedUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fixed upstream");
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                std::thread::spawn(move || {
                    conn.set_read_timeout(Some(WAIT)).unwrap();
                    while super::held::read_request(&mut conn).is_some() {
                        if conn.write_all(raw).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        FixedUpstream { addr }
    }

    /// Answers each request with a 200 event stream of `events` (whole,
    /// with its length).
    pub fn event_stream(events: &str) -> FixedUpstream {
        let raw = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n{events}",
            events.len()
        );
        FixedUpstream::start(Box::leak(raw.into_bytes().into_boxed_slice()))
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
}
