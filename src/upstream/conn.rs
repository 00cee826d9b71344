//! One connection to a provider: plain TCP, TLS, or bytes already in memory
//! (a provider answered in process).
//!
//! Owns the byte stream and its read window. Timeouts are set on the TCP socket
//! per phase (first byte, stream idle), so an unanswered read never hangs.

use super::Endpoint;
use super::dns::Resolver;
use crate::http::ReadBuf;
use futures_lite::io::Cursor;
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Initial read window of a provider connection.
pub const UPSTREAM_BUF: usize = 16 << 10;

pub enum Stream {
    Plain(TcpStream),
    Tls(Box<futures_rustls::client::TlsStream<TcpStream>>),
    /// A finished response waiting to be read (a provider answered in process).
    Memory(Cursor<Vec<u8>>),
}

impl Stream {
    fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Plain(s) => Some(s),
            Stream::Tls(s) => Some(s.get_ref().0),
            Stream::Memory(_) => None,
        }
    }

    pub fn set_read_timeout(&self, d: Duration) {
        if let Some(t) = self.tcp() {
            let _ = t.set_read_timeout(Some(d));
        }
    }

    /// Reads once into `buf`; plain TCP goes through [`crate::net`], which
    /// avoids glommio's speculative polls.
    pub async fn read_some(&mut self, buf: &mut ReadBuf, max_window: usize) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => crate::net::read_some_tcp(s, buf, max_window).await,
            other => crate::http::buf::read_some(other, buf, max_window).await,
        }
    }

    pub fn set_write_timeout(&self, d: Duration) {
        if let Some(t) = self.tcp() {
            let _ = t.set_write_timeout(Some(d));
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Memory(c) => Pin::new(c).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Memory(_) => Poll::Ready(Ok(buf.len())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Memory(_) => Poll::Ready(Ok(())),
        }
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_close(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
            Stream::Memory(_) => Poll::Ready(Ok(())),
        }
    }
}

pub struct UpstreamConn {
    pub stream: Stream,
    pub buf: ReadBuf,
    /// Requests this connection has carried before the current one.
    pub uses: u64,
    pub idle_since: Instant,
}

impl UpstreamConn {
    /// A connection whose whole response is `bytes`.
    pub fn in_memory(bytes: Vec<u8>) -> UpstreamConn {
        UpstreamConn::new(Stream::Memory(Cursor::new(bytes)))
    }

    /// Whether this connection could carry another request (a network one).
    pub fn poolable(&self) -> bool {
        !matches!(self.stream, Stream::Memory(_))
    }

    pub fn new(stream: Stream) -> UpstreamConn {
        UpstreamConn {
            stream,
            buf: ReadBuf::with_capacity(UPSTREAM_BUF),
            uses: 0,
            idle_since: Instant::now(),
        }
    }
}

/// Why a connection could not be made.
#[derive(Debug)]
pub enum ConnectError {
    Timeout,
    Failed(String),
}

/// Opens a new connection to `to` (DNS from the cache, TCP_NODELAY, TLS
/// for https), bounded by `timeout` as a whole.
pub async fn connect(
    to: &Endpoint,
    resolver: &Resolver,
    timeout: Duration,
) -> Result<UpstreamConn, ConnectError> {
    let deadline = Instant::now() + timeout;
    let addrs = resolver
        .lookup(&to.host, to.port)
        .await
        .map_err(|e| ConnectError::Failed(format!("cannot resolve {}: {e}", to.host)))?;
    let mut last_err = String::from("no addresses");
    let mut tcp = None;
    for addr in addrs.iter() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ConnectError::Timeout);
        }
        match TcpStream::connect_timeout(*addr, left).await {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(glommio::GlommioError::IoError(e)) if e.kind() == io::ErrorKind::TimedOut => {
                return Err(ConnectError::Timeout);
            }
            Err(e) => last_err = format!("connect to {addr}: {e}"),
        }
    }
    let tcp = tcp.ok_or(ConnectError::Failed(last_err))?;
    let _ = tcp.set_nodelay(true);
    let Some(tls) = to.tls.clone() else {
        return Ok(UpstreamConn::new(Stream::Plain(tcp)));
    };
    let name = rustls::pki_types::ServerName::try_from(to.host.clone())
        .map_err(|e| ConnectError::Failed(format!("invalid TLS name {}: {e}", to.host)))?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    let _ = tcp.set_read_timeout(Some(left));
    let _ = tcp.set_write_timeout(Some(left));
    let connector = futures_rustls::TlsConnector::from(tls);
    match connector.connect(name, tcp).await {
        Ok(tls) => Ok(UpstreamConn::new(Stream::Tls(Box::new(tls)))),
        Err(e) if e.kind() == io::ErrorKind::TimedOut => Err(ConnectError::Timeout),
        Err(e) => Err(ConnectError::Failed(format!(
            "TLS handshake with {}: {e}",
            to.host
        ))),
    }
}
