//! Request-head parsing and framing (stage 1), in bytes of head per second.

use aigw::http::chunked::ChunkedDecoder;
use aigw::http::request::{HeadLimits, RequestHead, parse_request};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

const LIMITS: HeadLimits = HeadLimits {
    max_head_bytes: 16 << 10,
    max_headers: 64,
    max_body_bytes: 32 << 20,
};

/// What the OpenAI Python SDK sends, roughly.
const SDK_HEAD: &[u8] = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAccept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\nAccept: application/json\r\nContent-Type: application/json\r\nUser-Agent: OpenAI/Python 1.54.0\r\nX-Stainless-Lang: python\r\nX-Stainless-Package-Version: 1.54.0\r\nX-Stainless-OS: Linux\r\nX-Stainless-Arch: x64\r\nX-Stainless-Runtime: CPython\r\nX-Stainless-Runtime-Version: 3.11.7\r\nAuthorization: Bearer sk-test-0123456789abcdef0123456789abcdef\r\nX-Stainless-Async: false\r\nx-stainless-retry-count: 0\r\nContent-Length: 161\r\n\r\n";

fn heads(c: &mut Criterion) {
    let mut g = c.benchmark_group("head_parse");
    g.throughput(Throughput::Bytes(SDK_HEAD.len() as u64));
    let mut head = RequestHead::default();
    g.bench_function("sdk_request_head", |b| {
        b.iter(|| parse_request(black_box(SDK_HEAD), &LIMITS, &mut head).unwrap())
    });
    let small = b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n";
    g.throughput(Throughput::Bytes(small.len() as u64));
    g.bench_function("minimal_request_head", |b| {
        b.iter(|| parse_request(black_box(small), &LIMITS, &mut head).unwrap())
    });
    g.finish();

    let mut body = Vec::new();
    for _ in 0..64 {
        aigw::http::chunked::write_chunk(&mut body, &[b'x'; 1000]);
    }
    body.extend_from_slice(aigw::http::chunked::LAST_CHUNK);
    let mut g = c.benchmark_group("chunked_decode");
    g.throughput(Throughput::Bytes(body.len() as u64));
    let mut out = Vec::with_capacity(70_000);
    g.bench_function("64x1000B", |b| {
        b.iter(|| {
            out.clear();
            let mut d = ChunkedDecoder::default();
            d.decode(black_box(&body), &mut out, u64::MAX).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, heads);
criterion_main!(benches);
