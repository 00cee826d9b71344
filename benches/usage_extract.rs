//! Token usage extraction from replies (stage 4's tap) and request-body field
//! scanning (stage 2), in bytes of body per second.

use aigw::json::{Rewrite, rewrite_body, scan_request};
use aigw::providers::openai::USAGE;
use aigw::providers::usage::{JsonScratch, SseTap, usage_from_json};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

fn chat_reply(content_len: usize) -> Vec<u8> {
    let content: String = "lorem ipsum \\\"quoted\\\" dolor "
        .chars()
        .cycle()
        .take(content_len)
        .collect();
    format!(
        r#"{{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{{"index":0,"message":{{"role":"assistant","content":"{content}"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":120,"completion_tokens":480,"total_tokens":600,"prompt_tokens_details":{{"cached_tokens":0}}}}}}"#
    )
    .into_bytes()
}

fn stream(events: usize) -> Vec<u8> {
    let mut s = String::new();
    for i in 0..events {
        s.push_str(&format!(
            "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"token{i} \"}}}}],\"usage\":null}}\n\n"
        ));
    }
    s.push_str("data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":64,\"total_tokens\":74}}\n\ndata: [DONE]\n\n");
    s.into_bytes()
}

fn usage(c: &mut Criterion) {
    let mut g = c.benchmark_group("usage_from_json");
    let mut scratch = JsonScratch::default();
    for len in [400usize, 6_000, 60_000] {
        let body = chat_reply(len);
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(format!("chat_reply_{}B", body.len()), |b| {
            b.iter(|| usage_from_json(black_box(&body), &USAGE, &mut scratch).unwrap())
        });
    }
    g.finish();

    let s = stream(64);
    let mut g = c.benchmark_group("sse_tap");
    g.throughput(Throughput::Bytes(s.len() as u64));
    let mut out = Vec::with_capacity(s.len());
    g.bench_function("64_events_in_1KiB_reads", |b| {
        b.iter(|| {
            let mut tap = SseTap::new(&USAGE, false);
            for piece in s.chunks(1024) {
                tap.feed(black_box(piece), &mut out);
            }
            tap.usage
        })
    });
    g.bench_function("64_events_filtering_usage_event", |b| {
        b.iter(|| {
            out.clear();
            let mut tap = SseTap::new(&USAGE, true);
            for piece in s.chunks(1024) {
                tap.feed(black_box(piece), &mut out);
            }
            tap.finish(&mut out);
            tap.usage
        })
    });
    g.finish();

    let req = br#"{"model":"openai/gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Write a haiku about thread-per-core gateways and \"zero-copy\" JSON."}],"temperature":0.2,"stream":true}"#;
    let mut g = c.benchmark_group("request_body");
    g.throughput(Throughput::Bytes(req.len() as u64));
    g.bench_function("scan_top_level", |b| {
        b.iter(|| scan_request(black_box(req)).unwrap())
    });
    let mut out = Vec::new();
    g.bench_function("scan_and_rewrite", |b| {
        b.iter(|| {
            let f = scan_request(black_box(req)).unwrap();
            rewrite_body(
                req,
                &f,
                &Rewrite {
                    model: b"gpt-4o-mini",
                    include_usage: true,
                },
                &mut out,
            );
        })
    });
    g.finish();
}

criterion_group!(benches, usage);
criterion_main!(benches);
