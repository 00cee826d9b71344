//! The cache's partition store: lookup (hit and miss), insert, for 1 KiB and
//! 16 KiB values, and the index rebuild at start with 1,000,000 entries.
//!
//! The rebuild builds its file once under the temp dir (about 1.2 GiB) and
//! reuses it on later runs.

use aigw::cache::entry::{Entry, FLAG_STREAM};
use aigw::cache::key::CacheKey;
use aigw::cache::store::{self, Found, Geometry};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::{Duration, Instant};

const HEAD: &[u8] = b"content-type: application/json\r\nx-request-id: req_0123456789abcdef\r\n";

fn entry(key: u128, body: &[u8]) -> Entry<'_> {
    Entry {
        key: CacheKey(key),
        flags: FLAG_STREAM,
        created_ms: 1,
        expires_ms: u64::MAX,
        provider: 1,
        input_tokens: 10,
        output_tokens: 20,
        status: 200,
        served: b"openai\ngpt-4o-mini",
        head: HEAD,
        body,
    }
}

fn dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("aigw-bench-cache-{name}"));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn mix(k: u64) -> u128 {
    let a = xxhash_rust::xxh3::xxh3_128(&k.to_le_bytes());
    a | 1
}

fn ops(c: &mut Criterion) {
    let mut g = c.benchmark_group("cache_store");
    for (name, size) in [("1KiB", 1024usize), ("16KiB", 16 << 10)] {
        let geo = Geometry::new(256 << 20, 1, 1 << 20).expect("geometry");
        let (part, mut writer, _) =
            store::open(&dir(&format!("ops-{name}")), 0, 1, geo, 0).expect("open");
        let body = vec![b'x'; size];
        let n = 10_000u64;
        for k in 0..n {
            writer.insert(&part, &entry(mix(k), &body), 0);
        }
        let mut buf = Vec::new();
        g.throughput(Throughput::Bytes(size as u64));
        let mut k = 0u64;
        g.bench_function(format!("lookup_hit_{name}"), |b| {
            b.iter(|| {
                k = (k + 1) % n;
                let found = part.lookup(CacheKey(mix(k)), 0, &mut buf);
                assert!(matches!(found, Some(Found::Fresh(_))));
                black_box(found.is_some())
            })
        });
        g.bench_function(format!("lookup_miss_{name}"), |b| {
            b.iter(|| {
                k += 1;
                black_box(part.lookup(CacheKey(mix(n + k)), 0, &mut buf).is_some())
            })
        });
        let mut k = n;
        g.bench_function(format!("insert_{name}"), |b| {
            b.iter(|| {
                k += 1;
                black_box(writer.insert(&part, &entry(mix(k), &body), 0))
            })
        });
    }
    g.finish();
}

fn rebuild(c: &mut Criterion) {
    const ENTRIES: u64 = 1_000_000;
    let body = vec![b'y'; 1024];
    let per = store::SEG_HEADER + aigw::cache::entry::encoded_len(HEAD.len(), body.len());
    let size = (ENTRIES as usize * per * 11 / 10) as u64 + (64 << 20);
    let geo = Geometry::new(size, 1, 1 << 20).expect("geometry");
    let d = dir("rebuild-1000000");
    let (_, _, o) = store::open(&d, 0, 1, geo, 0).expect("open");
    if o.kept < ENTRIES {
        let (part, mut writer, _) = store::open(&d, 0, 1, geo, 0).expect("open");
        for k in 0..ENTRIES {
            writer.insert(&part, &entry(mix(k), &body), 0);
        }
    }
    let mut g = c.benchmark_group("cache_rebuild");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.bench_function("open_1000000_entries_1KiB", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let (_, _, o) = store::open(&d, 0, 1, geo, 0).expect("open");
                total += t.elapsed();
                assert!(o.kept >= ENTRIES * 99 / 100, "kept {}", o.kept);
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, ops, rebuild);
criterion_main!(benches);
