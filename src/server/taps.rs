//! Taps: what watches (and may rewrite) a provider's body on its way to the
//! client. The relay feeds every decoded chunk through the chain in order and
//! ends it with [`Tap::finish`], so a tap commits only on a [`End::Complete`]
//! body. Today's taps read token usage and keep the response payload for the
//! request log; the cache fill and stream translation join the chain later.

use crate::cache::flight::Leading;
use crate::providers::translate::ReplyTranslator;
use crate::providers::usage::{
    JsonScratch, JsonTail, SseTap, UsageShape, text_bytes, usage_from_json,
};
use crate::record::{Payload, Usage};
use std::time::Instant;

/// How a body ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Every byte arrived and was framed as the provider framed it.
    Complete,
    /// The provider broke off, or the client went away.
    Aborted,
}

pub trait Tap {
    /// Whether this tap may change the bytes (then the provider's length no
    /// longer holds and the relay re-frames the body).
    fn rewrites(&self) -> bool {
        false
    }
    /// A decoded body chunk, in order. Returns the bytes to pass on: `data`
    /// itself when the tap only watches.
    fn chunk<'a>(&'a mut self, data: &'a [u8]) -> &'a [u8];
    /// The body ended. Returns bytes the tap held back, to pass on (nothing
    /// when aborted).
    fn finish(&mut self, end: End) -> &[u8];
}

/// Passes `data` through every tap in order; returns what the last one passes on.
pub fn through<'a>(taps: &'a mut [&mut dyn Tap], data: &'a [u8]) -> &'a [u8] {
    let mut data = data;
    for tap in taps.iter_mut() {
        data = tap.chunk(data);
    }
    data
}

/// Ends every tap in order. What a tap releases flows through the taps after
/// it and reaches `emit`.
pub fn finish(taps: &mut [&mut dyn Tap], end: End, mut emit: impl FnMut(&[u8])) {
    for i in 0..taps.len() {
        let (head, rest) = taps.split_at_mut(i + 1);
        let released = head[i].finish(end);
        if !released.is_empty() {
            emit(through(rest, released));
        }
    }
}

/// Feeds the body the client receives into the cache's flight: followers
/// read it as it grows, and the partition's owner stores it once complete.
pub struct FillTap {
    pub leading: Leading,
}

impl Tap for FillTap {
    fn chunk<'a>(&'a mut self, data: &'a [u8]) -> &'a [u8] {
        self.leading.append(data);
        data
    }
    fn finish(&mut self, _: End) -> &[u8] {
        &[]
    }
}

/// Turns the provider's format into the client's (a translated request's
/// reply): events pass as they are translated, a JSON body once whole.
pub struct TranslateTap {
    translator: Box<dyn ReplyTranslator>,
    out: Vec<u8>,
}

impl TranslateTap {
    pub fn new(translator: Box<dyn ReplyTranslator>) -> TranslateTap {
        TranslateTap {
            translator,
            out: Vec::new(),
        }
    }

    /// The provider's successful reply could not be translated: what went
    /// through is an error, not an answer ([`ReplyTranslator::unreadable`]).
    pub fn unreadable(&self) -> Option<&str> {
        self.translator.unreadable()
    }
}

impl Tap for TranslateTap {
    fn rewrites(&self) -> bool {
        true
    }
    fn chunk<'a>(&'a mut self, data: &'a [u8]) -> &'a [u8] {
        self.out.clear();
        self.translator.feed(data, &mut self.out);
        &self.out
    }
    fn finish(&mut self, end: End) -> &[u8] {
        self.out.clear();
        self.translator.finish(end == End::Complete, &mut self.out);
        &self.out
    }
}

/// Reads token usage (and, for streams, the time of the first event). When
/// aigw asked for stream usage on the client's behalf, it also drops the
/// usage-only event the client did not ask for.
pub struct UsageTap<'s> {
    shape: &'static UsageShape,
    read: Read<'s>,
    usage: Usage,
    first_event: Option<Instant>,
}

enum Read<'s> {
    /// A JSON body: the usage object is near its end.
    Json {
        tail: JsonTail,
        /// The body's length, when known: a body that arrives in one piece is
        /// read in place instead of through the tail.
        length: Option<u64>,
        done: bool,
        scratch: &'s mut JsonScratch,
        /// Bytes that went through the tail.
        pushed: u64,
        /// The text of a body read in place that reported no usage.
        whole_text: Option<u64>,
    },
    /// An SSE stream, with the bytes to pass on when filtering.
    Sse {
        tap: Box<SseTap>,
        out: Vec<u8>,
        /// The event that ends a stream which stops short
        /// ([`UsageTap::end_short_streams_with`]).
        short: Option<&'static [u8]>,
    },
}

impl<'s> UsageTap<'s> {
    /// For a JSON body of `length` bytes (if known).
    pub fn json(
        shape: &'static UsageShape,
        length: Option<u64>,
        scratch: &'s mut JsonScratch,
    ) -> Self {
        UsageTap {
            shape,
            read: Read::Json {
                tail: JsonTail::default(),
                length,
                done: false,
                scratch,
                pushed: 0,
                whole_text: None,
            },
            usage: Usage::default(),
            first_event: None,
        }
    }

    /// For an SSE stream; `filter_usage_event` drops the usage-only event.
    pub fn sse(shape: &'static UsageShape, filter_usage_event: bool) -> Self {
        UsageTap {
            shape,
            read: Read::Sse {
                tap: Box::new(SseTap::new(shape, filter_usage_event)),
                out: Vec::new(),
                short: None,
            },
            usage: Usage::default(),
            first_event: None,
        }
    }

    /// A stream whose body ends cleanly but without its provider's end
    /// ([`SseTap::ended_well`]: no `[DONE]`, no finish reason, no last
    /// event) stopped short: `event` goes after it, as after a stream that
    /// broke off, so its client never takes half an answer for a whole one.
    /// For a stream relayed as the provider wrote it (a translated one's
    /// translator ends it itself), framed so that bytes may be added.
    pub fn end_short_streams_with(&mut self, event: &'static [u8]) {
        if let Read::Sse { short, .. } = &mut self.read {
            *short = Some(event);
        }
    }

    /// Whether a stream, once whole, ended as its provider ends one
    /// ([`SseTap::ended_well`]); a JSON body always does.
    pub fn ended_well(&self) -> bool {
        match &self.read {
            Read::Sse { tap, .. } => tap.ended_well(),
            Read::Json { .. } => true,
        }
    }

    /// The usage read so far (all of it once finished).
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// When the stream's first data event passed.
    pub fn first_event(&self) -> Option<Instant> {
        self.first_event
    }

    /// Whether the stream carried an error event (a failure the provider
    /// reported inside a 200 stream).
    pub fn error_event(&self) -> bool {
        matches!(&self.read, Read::Sse { tap, .. } if tap.error_event)
    }

    /// Bytes of model-written text relayed so far, without the JSON around
    /// it ([`text_bytes`]): what an estimate counts when the provider
    /// reported no usage. A JSON answer's is read only when asked (an answer
    /// cut short, or one without usage), from the tail it kept: past that
    /// window, in proportion. `None`: a whole JSON answer that had usage.
    pub fn relayed_text(&self) -> Option<u64> {
        match &self.read {
            Read::Sse { tap, .. } => Some(tap.text_bytes),
            Read::Json {
                tail,
                pushed,
                whole_text,
                ..
            } => whole_text.or_else(|| {
                let kept = tail.bytes();
                if kept.is_empty() {
                    return None;
                }
                let text = text_bytes(kept);
                Some(text.saturating_mul(*pushed) / kept.len() as u64)
            }),
        }
    }
}

impl Tap for UsageTap<'_> {
    fn rewrites(&self) -> bool {
        matches!(&self.read, Read::Sse { tap, .. } if tap.filters())
    }

    fn chunk<'a>(&'a mut self, data: &'a [u8]) -> &'a [u8] {
        match &mut self.read {
            Read::Json {
                tail,
                length,
                done,
                scratch,
                pushed,
                whole_text,
            } => {
                if *done {
                } else if tail.bytes().is_empty() && *length == Some(data.len() as u64) {
                    // The whole body in one piece: read usage from it directly.
                    self.usage = usage_from_json(data, self.shape, scratch).unwrap_or_else(|| {
                        *whole_text = Some(text_bytes(data));
                        Usage::default()
                    });
                    *done = true;
                } else {
                    *pushed += data.len() as u64;
                    tail.push(data);
                }
                data
            }
            Read::Sse { tap, out, .. } => {
                let before = tap.data_events;
                out.clear();
                tap.feed(data, out);
                if before == 0 && tap.data_events > 0 {
                    self.first_event = Some(Instant::now());
                }
                self.usage = tap.usage;
                if tap.filters() { out } else { data }
            }
        }
    }

    fn finish(&mut self, end: End) -> &[u8] {
        match &mut self.read {
            Read::Json {
                tail,
                done,
                scratch,
                ..
            } => {
                if !*done {
                    self.usage =
                        usage_from_json(tail.bytes(), self.shape, scratch).unwrap_or_default();
                    *done = true;
                }
                &[]
            }
            Read::Sse { tap, out, short } => {
                out.clear();
                if end == End::Complete && tap.filters() {
                    tap.finish(out);
                }
                if let (End::Complete, Some(event), false) = (end, *short, tap.ended_well()) {
                    out.extend_from_slice(event);
                }
                self.usage = tap.usage;
                out
            }
        }
    }
}

/// Keeps the body as it passes (what the client receives, when it runs last),
/// up to a cap: the request log's response payload.
pub struct PayloadTap {
    cap: usize,
    kept: Payload,
}

impl PayloadTap {
    pub fn new(cap: usize) -> PayloadTap {
        PayloadTap {
            cap,
            kept: Payload::default(),
        }
    }

    pub fn into_payload(self) -> Payload {
        self.kept
    }
}

impl Tap for PayloadTap {
    fn chunk<'a>(&'a mut self, data: &'a [u8]) -> &'a [u8] {
        self.kept.push(data, self.cap);
        data
    }

    fn finish(&mut self, _end: End) -> &[u8] {
        &[]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::openai;

    /// Doubles every byte: a stand-in for a rewriting tap later in the chain.
    struct Double(Vec<u8>);
    impl Tap for Double {
        fn rewrites(&self) -> bool {
            true
        }
        fn chunk<'a>(&'a mut self, data: &'a [u8]) -> &'a [u8] {
            self.0.clear();
            self.0.extend(data.iter().flat_map(|b| [*b, *b]));
            &self.0
        }
        fn finish(&mut self, _: End) -> &[u8] {
            &[]
        }
    }

    #[test]
    fn a_json_body_in_pieces_yields_its_usage_at_the_end() {
        let body = br#"{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2}}"#;
        let mut scratch = JsonScratch::default();
        let mut tap = UsageTap::json(&openai::USAGE, Some(body.len() as u64), &mut scratch);
        let mut passed = Vec::new();
        for piece in body.chunks(9) {
            passed.extend_from_slice(through(&mut [&mut tap], piece));
        }
        assert_eq!(passed, body);
        finish(&mut [&mut tap], End::Complete, |_| {
            panic!("a JSON tap holds nothing back")
        });
        assert_eq!(tap.usage().input_tokens, Some(7));
        assert!(!tap.rewrites());
    }

    #[test]
    fn the_payload_tap_keeps_what_passes_up_to_its_cap() {
        let mut usage = UsageTap::sse(&openai::USAGE, true);
        let mut keep = PayloadTap::new(16);
        let stream = b"data: {\"choices\":[{}]}\n\ndata: {\"choices\":[],\"usage\":{\"completion_tokens\":1}}\n\n";
        {
            let mut chain: [&mut dyn Tap; 2] = [&mut usage, &mut keep];
            through(&mut chain, stream);
            finish(&mut chain, End::Complete, |_| {});
        }
        let p = keep.into_payload();
        assert_eq!(p.bytes, b"data: {\"choices\"");
        assert!(p.truncated);
    }

    #[test]
    fn held_back_bytes_flow_through_the_taps_after_and_only_on_completion() {
        let stream = b"data: {\"choices\":[{\"delta\":{}}],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\ndata: [DONE]\n";
        for (end, expect_tail) in [(End::Complete, true), (End::Aborted, false)] {
            let mut usage = UsageTap::sse(&openai::USAGE, true);
            let mut double = Double(Vec::new());
            let mut out = Vec::new();
            {
                let mut chain: [&mut dyn Tap; 2] = [&mut usage, &mut double];
                out.extend_from_slice(through(&mut chain, stream));
                finish(&mut chain, end, |b| out.extend_from_slice(b));
            }
            let text = String::from_utf8(out).unwrap();
            // The usage-only event is gone; every byte that passed was doubled.
            assert!(!text.contains("\"choices\":[]"));
            assert!(text.starts_with("ddaattaa::"));
            // The unterminated last line is released only when the body completed.
            assert_eq!(text.contains("[[DDOONNEE]]"), expect_tail, "{end:?}");
            assert_eq!(usage.usage().output_tokens, Some(1));
            assert!(usage.first_event().is_some() && usage.rewrites());
        }
    }
}
