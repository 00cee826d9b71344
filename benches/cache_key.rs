//! Cache key computation (canonical body + xxh3-128) for chat requests of
//! about 1 KiB and 16 KiB, in bytes of body per second: a body not seen
//! before, and one repeated byte for byte (the shard remembers its canonical
//! digest: what is left is hashing its bytes to find it, and the key).

use aigw::cache::key::{KeyInput, KeyMaker};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

/// Where a body's varying bytes go (see `new` below).
const NONCE: &str = "00000000";

/// A chat request with `turns` user/assistant messages.
fn chat(turns: usize) -> Vec<u8> {
    let mut messages = vec![format!(
        r#"{{"role":"system","content":"You are a helpful assistant ({NONCE}). Answer briefly."}}"#
    )];
    for i in 0..turns {
        messages.push(format!(
            r#"{{"role":"user","content":"Question {i}: what is the capital of the country with code \"{i:03}\"? Please explain."}}"#
        ));
        messages.push(format!(
            r#"{{"role":"assistant","content":"Answer {i}: it depends on the code; here is a short explanation of how codes map."}}"#
        ));
    }
    format!(
        r#"{{"model":"openai/gpt-4o-mini","temperature":0.2,"max_tokens":256,"stream":false,"messages":[{}]}}"#,
        messages.join(",")
    )
    .into_bytes()
}

fn input(body: &[u8]) -> KeyInput<'_> {
    KeyInput {
        scope: 1,
        provider: "openai",
        path: "/v1/chat/completions",
        body,
        canonical: None,
        custom: None,
        form: 0,
        stream: false,
        asked_usage: false,
    }
}

fn keys(c: &mut Criterion) {
    let mut g = c.benchmark_group("cache_key");
    let mut maker = KeyMaker::default();
    for (name, turns) in [("1KiB", 4), ("16KiB", 70)] {
        let body = chat(turns);
        g.throughput(Throughput::Bytes(body.len() as u64));
        // `new`: a body the shard has not seen (eight of its bytes change
        // every time), so the canonical form is written; `repeat`: the same
        // bytes again, as a client repeating its request sends them (their
        // digest is taken, as the shard does to find what it remembers, and
        // the canonical digest it remembered goes in).
        let at = body
            .windows(NONCE.len())
            .position(|w| w == NONCE.as_bytes())
            .unwrap();
        let mut body = body.clone();
        let mut n = 0u32;
        g.bench_function(format!("{name}_{}B_new", body.len()), |b| {
            b.iter(|| {
                n = n.wrapping_add(1);
                for (i, b) in body[at..at + 8].iter_mut().enumerate() {
                    *b = b"0123456789abcdef"[(n >> (4 * i)) as usize & 15];
                }
                maker.key(&input(black_box(&body))).unwrap()
            })
        });
        let (_, remembered) = maker.key_and_canonical(&input(&body)).unwrap();
        g.bench_function(format!("{name}_{}B_repeat", body.len()), |b| {
            b.iter(|| {
                let raw = xxhash_rust::xxh3::xxh3_128(black_box(&body));
                let canonical = black_box(raw)
                    .wrapping_sub(raw)
                    .wrapping_add(remembered.unwrap());
                maker
                    .key(&KeyInput {
                        canonical: Some(canonical),
                        ..input(&body)
                    })
                    .unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, keys);
criterion_main!(benches);
