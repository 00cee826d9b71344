//! The per-request cost of the stages issue 9 added: authentication (SHA-256
//! of the presented secret, a lookup among 1,000 keys, a constant-time
//! compare, the first time; a keyed-hash lookup after), rate-limit admission and settlement (a `requests` rule served
//! from a shard lease and a `total_tokens` rule on the shared counter), and a
//! budget's reservation and settlement. One thread: no contention.

use aigw::auth::{KeyEntry, Origin, Registry, ShardKeys, hash_secret};
use aigw::budget::{Ask, Budgets, Rates, Reservation, ShardBudgets};
use aigw::config::Config;
use aigw::limit::{self, Admission, Limiter, ShardLimiter, Subject};
use criterion::{Criterion, criterion_group, criterion_main};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;

const RULES: &str = "[[rate_limits]]\nscope = \"key\"\ncount = \"requests\"\nlimit = 4000000000\nwindow = \"30d\"\n\
[[rate_limits]]\nscope = \"key\"\ncount = \"total_tokens\"\nlimit = 4000000000\nwindow = \"30d\"\n\
[[budgets]]\nscope = \"key\"\nusd = 1000000\nwindow = \"monthly\"\n";

fn stages(c: &mut Criterion) {
    let mut g = c.benchmark_group("admission");
    let keys: Vec<KeyEntry> = (0..1000)
        .map(|i| KeyEntry {
            id: Arc::from(format!("key{i}")),
            hash: hash_secret(format!("sk-aigw-{i:064}").as_bytes()),
            models: vec!["openai/*".into()],
            metadata: vec![],
            origin: Origin::Admin,
            created_ms: 0,
        })
        .collect();
    let shard_keys = ShardKeys::new(Registry::new(&BTreeMap::new(), keys));
    let secret = format!("sk-aigw-{:064}", 517);
    // The first time a shard sees a secret: SHA-256 and a constant-time compare.
    g.bench_function("authenticate_first", |b| {
        b.iter(|| {
            shard_keys.with(|k| {
                let e = k.find(black_box(secret.as_bytes())).unwrap();
                black_box(e.allows("openai", Some("gpt-4o-mini")))
            })
        })
    });
    // Every later request: the secret's seeded xxh3-128 among those verified.
    g.bench_function("authenticate", |b| {
        b.iter(|| {
            let e = shard_keys.find(black_box(secret.as_bytes())).unwrap();
            black_box(e.allows("openai", Some("gpt-4o-mini")))
        })
    });

    let config = Config::from_toml(RULES).unwrap();
    let limiter = ShardLimiter::new(Limiter::new(2), &config.rate_limits);
    let subject = Subject {
        key_id: Some("key517"),
        provider: "openai",
        model: Some("gpt-4o-mini"),
        key_metadata: &[],
        metadata: None,
    };
    let ask = limit::Ask {
        subject,
        input_estimate: 300,
        max_tokens: Some(256),
        choices: 1,
        now_ms: 1_796_032_800_000,
        hit: false,
    };
    g.bench_function("rate_limits_admit_and_settle", |b| {
        b.iter(|| {
            // Filled in place, as the pipeline does.
            let mut a = Admission::default();
            limiter.admit_into(black_box(&ask), &mut a).unwrap();
            // Used nothing: the counts stay where they are, however long it runs.
            a.settle(Some((0, 0)), || ask.now_ms);
            black_box(&a);
        })
    });

    let shared = Budgets::new();
    let budgets = ShardBudgets::new(shared.clone(), &config.budgets);
    let rates = Some(Rates {
        input: 0.15e-6,
        output: 0.6e-6,
    });
    g.bench_function("budget_reserve_and_settle", |b| {
        b.iter(|| {
            let ask = Ask {
                rates,
                input_bytes: 1200,
                max_tokens: Some(256),
                choices: 1,
                now_ms: 1_796_032_800_000,
            };
            let mut r = Reservation::default();
            budgets
                .reserve_into(black_box(&subject), black_box(&ask), &mut r)
                .unwrap();
            black_box(r.settle(Some(0.000_114), &shared))
        })
    });
    g.finish();
}

criterion_group!(benches, stages);
criterion_main!(benches);
