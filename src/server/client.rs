//! The client side of one connection as a request sees it: the socket, the
//! buffers its requests reuse, and where the current request's body is.
//! Below `conn`, `pipeline` and `relay`, which all use these types.

use crate::http::ReadBuf;
use crate::http::request::{RequestHead, RequestView};
use crate::http::response::ResponseHead;
use crate::providers::usage::JsonScratch;
use glommio::net::TcpStream;
use std::time::Instant;

/// Initial read window of a client connection.
pub const CLIENT_BUF: usize = 16 << 10;

/// A client connection and the buffers its requests reuse.
pub struct ClientConn {
    pub stream: TcpStream,
    pub buf: ReadBuf,
    pub head: RequestHead,
    /// A decoded chunked request body.
    pub body: Vec<u8>,
    /// The response being written to the client.
    pub out: Vec<u8>,
    /// The request being written upstream.
    pub up_out: Vec<u8>,
    /// The body a unified request sends.
    pub unified: crate::route::UnifiedBody,
    /// simd-json scratch for usage parsing.
    pub scratch: JsonScratch,
    /// Decoded provider body bytes (chunked responses).
    pub decoded: Vec<u8>,
    pub rhead: ResponseHead,
    /// The current request speaks Anthropic's format, once it is routed
    /// (aigw's own errors are written in its shape; before, its path says).
    pub anthropic: Option<bool>,
    /// The shared answer this request leads, while it waits for the
    /// provider's head: others follow it, so its client leaving does not
    /// call the provider off while they do.
    pub followed: Option<std::sync::Arc<crate::cache::flight::Flight>>,
}

impl ClientConn {
    pub fn new(stream: TcpStream) -> ClientConn {
        ClientConn {
            stream,
            buf: ReadBuf::with_capacity(CLIENT_BUF),
            head: RequestHead::default(),
            body: Vec::new(),
            out: Vec::with_capacity(4096),
            up_out: Vec::with_capacity(4096),
            unified: Default::default(),
            scratch: JsonScratch::default(),
            decoded: Vec::new(),
            rhead: ResponseHead::default(),
            anthropic: None,
            followed: None,
        }
    }
}

/// Where the current request's body is.
#[derive(Clone, Copy, Debug)]
pub enum BodyAt {
    /// In the read window at this range.
    Window(usize, usize),
    /// Decoded into `ClientConn::body`.
    Decoded,
}

impl BodyAt {
    /// The body bytes, given the read window and the decoded-body buffer
    /// (taken separately so callers can still borrow other buffers mutably).
    pub fn slice<'a>(self, window: &'a [u8], decoded: &'a [u8]) -> &'a [u8] {
        match self {
            BodyAt::Window(s, e) => &window[s..e],
            BodyAt::Decoded => decoded,
        }
    }
}

/// A request read off the connection, ready for the pipeline.
pub struct Incoming {
    /// When its first byte arrived (or, pipelined, when its turn came).
    pub started: Instant,
    pub body: BodyAt,
    /// Bytes of the read window this request used (head + body on the wire).
    pub consumed: usize,
}

impl Incoming {
    /// The request as stages read it, borrowed from the connection's buffers.
    pub fn view<'a>(
        &self,
        head: &'a RequestHead,
        buf: &'a ReadBuf,
        decoded: &'a [u8],
    ) -> RequestView<'a> {
        let window = buf.filled();
        RequestView {
            head,
            window,
            body: self.body.slice(window, decoded),
        }
    }
}

/// A request that could not be read: the error to answer and when it began.
pub struct Unreadable {
    pub started: Instant,
    pub error: crate::error::GatewayError,
}
