//! The request log's costs: building and handing over one record on the shard
//! (ns per request), the log thread's sustained insert rate (rows/s), and
//! `aigw logs` filters over a million rows (ms per query).
//!
//! The million-row store is built once per run under the system temp dir
//! (about half a minute); set `AIGW_BENCH_ROWS` for another size.

use aigw::logstore::query::{Filter, query};
use aigw::logstore::write::Writer;
use aigw::record::{LogFacts, MetaValue, Metadata, Outcome, RequestRecord, RouteKind, Usage};
use aigw::reqid::IdGen;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PROVIDERS: [&str; 4] = ["openai", "anthropic", "groq", "mock"];
const MODELS: [&str; 8] = [
    "gpt-4o-mini",
    "gpt-4o",
    "claude-sonnet-4-5",
    "claude-haiku",
    "llama-3.1-70b",
    "mixtral",
    "echo",
    "o3",
];
const USERS: usize = 1000;

/// A record as the pipeline finishes it, with metadata and no payloads.
fn record(ids: &mut IdGen, ts: u64, i: usize, provider: &Arc<str>) -> RequestRecord {
    let mut r = RequestRecord::new(ids.id(ts), 0, Instant::now());
    r.route = RouteKind::Unified;
    r.provider = Some(provider.clone());
    r.model = Some(MODELS[i % MODELS.len()].to_string());
    r.status = if i.is_multiple_of(50) { 429 } else { 200 };
    r.outcome = Outcome::Completed;
    r.usage = Usage {
        input_tokens: Some(100 + (i % 500) as u64),
        output_tokens: Some(20 + (i % 300) as u64),
        cached_tokens: None,
        cache_write_tokens: None,
    };
    r.total = Duration::from_micros(200 + (i % 5000) as u64 * 100);
    r.gateway = Duration::from_micros(30);
    r.bytes_in = 900;
    r.bytes_out = 1200;
    r.metadata = Some(Metadata::from(vec![
        ("user".into(), MetaValue::Str(format!("u{}", i % USERS))),
        ("app".into(), MetaValue::Str("bench".into())),
    ]));
    r.log = Some(Box::new(LogFacts {
        path: "/v1/chat/completions".into(),
        user_agent: Some("OpenAI/Python 1.54.0".into()),
        event_id: None,
        request_body: None,
        response_body: None,
        routing: None,
    }));
    r
}

fn hand_over(c: &mut Criterion) {
    let mut g = c.benchmark_group("log_record");
    g.throughput(Throughput::Elements(1));
    let (tx, rx) = std::sync::mpsc::sync_channel::<RequestRecord>(1 << 16);
    let drain = std::thread::spawn(move || while rx.recv().is_ok() {});
    let mut ids = IdGen::new(0);
    let provider: Arc<str> = Arc::from("openai");
    let mut i = 0;
    g.bench_function("build_and_try_send", |b| {
        b.iter(|| {
            i += 1;
            let r = record(&mut ids, 1_790_000_000_000, i, &provider);
            let _ = black_box(tx.try_send(r));
        })
    });
    g.finish();
    drop(tx);
    let _ = drain.join();
}

fn insert(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("aigw-bench-insert-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut w = Writer::open(&dir.join("requests.db")).unwrap();
    let mut ids = IdGen::new(0);
    let providers: Vec<Arc<str>> = PROVIDERS.iter().map(|p| Arc::from(*p)).collect();
    const BATCH: usize = 5_000;
    let mut g = c.benchmark_group("log_thread");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.sample_size(10);
    let mut n = 0;
    g.bench_function("insert_batch_of_5000", |b| {
        b.iter_batched(
            || {
                (0..BATCH)
                    .map(|_| {
                        n += 1;
                        record(&mut ids, 1_790_000_000_000 + n as u64, n, &providers[n % 4])
                    })
                    .collect::<Vec<_>>()
            },
            |batch| w.insert(&batch).unwrap(),
            criterion::BatchSize::PerIteration,
        )
    });
    g.finish();
    drop(w);
    let _ = std::fs::remove_dir_all(&dir);
}

fn queries(c: &mut Criterion) {
    let rows: usize = std::env::var("AIGW_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = std::env::temp_dir().join(format!("aigw-bench-query-{rows}"));
    let path = dir.join("requests.db");
    // One request every 3 ms for the newest `rows` requests: a million is ~50 minutes.
    // A store built by an earlier run is kept; times are relative to its
    // newest row then ("the last 10 minutes" of the log).
    let mut now = aigw::reqid::now_unix_ms();
    let first = now - rows as u64 * 3;
    let built = Writer::open(&path).map(|w| w.rows()).unwrap_or(0) as usize;
    if built == rows {
        let conn = aigw::logstore::open_for_reading(&path).unwrap();
        let newest: i64 = conn
            .query_row("SELECT max(ts) FROM requests", [], |r| r.get(0))
            .unwrap();
        now = newest as u64 + 3;
    } else {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = Writer::open(&path).unwrap();
        let mut ids = IdGen::new(0);
        let providers: Vec<Arc<str>> = PROVIDERS.iter().map(|p| Arc::from(*p)).collect();
        let started = Instant::now();
        for chunk in (0..rows).collect::<Vec<_>>().chunks(10_000) {
            let batch: Vec<_> = chunk
                .iter()
                .map(|&i| record(&mut ids, first + i as u64 * 3, i, &providers[i % 4]))
                .collect();
            w.insert(&batch).unwrap();
        }
        eprintln!("built {rows} rows in {:?}", started.elapsed());
    }
    let conn = aigw::logstore::open_for_reading(&path).unwrap();
    let mut g = c.benchmark_group("logs_query_1m");
    g.sample_size(20);
    let cases: [(&str, Vec<(&str, String)>); 8] = [
        ("newest_50", vec![]),
        ("since_10m", vec![("since", "10m".into())]),
        ("provider", vec![("provider", "groq".into())]),
        ("model", vec![("model", "claude-haiku".into())]),
        ("status_429", vec![("status", "429".into())]),
        ("status_4xx", vec![("status", "4xx".into())]),
        ("meta_user", vec![("meta", "user=u417".into())]),
        // Every request carries it: the newest of a million.
        ("meta_every_row", vec![("meta", "app=bench".into())]),
    ];
    for (name, pairs) in cases {
        let f = Filter::from_pairs(pairs.iter().map(|(k, v)| (*k, v.as_str())), now).unwrap();
        let n = query(&conn, &f).unwrap().len();
        assert!(n > 0, "{name} selects rows");
        g.bench_function(name, |b| b.iter(|| query(&conn, black_box(&f)).unwrap()));
    }
    g.finish();
}

criterion_group!(benches, hand_over, insert, queries);
criterion_main!(benches);
