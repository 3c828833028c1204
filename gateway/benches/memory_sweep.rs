//! Latency of the memory store's `apply_gates` while expiry sweeps run over many live keys.
//!
//! A dedup-heavy load: `LIVE` marks stay live (long TTL) and every call sets a new mark with
//! a short TTL, so each sweep has expired marks to drop while most of the store is live.
//! The sweeper runs every `SWEEP_EVERY` as in `serve`. Prints p50/p99/p99.9/max of single
//! `apply_gates` calls from a few concurrent tasks. No assertion: figures for the README
//! and the issue.
//!
//! Run with `cargo bench -p acteon-gateway --bench memory_sweep` (optionally
//! `-- <live keys> <seconds>`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use acteon_gateway::state::{Gate, MemoryStore, StateStore};

const LIVE: usize = 1_000_000;
const SECONDS: u64 = 10;
const SWEEP_EVERY: Duration = Duration::from_millis(500);
const TASKS: usize = 4;

fn mark(key: String, ttl: Duration) -> [Gate; 1] {
    [Gate::Dedup {
        key,
        ttl,
        token: "t".to_owned(),
    }]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let live = args.first().and_then(|a| a.parse().ok()).unwrap_or(LIVE);
    let seconds = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(SECONDS);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(live, seconds));
}

async fn run(live: usize, seconds: u64) {
    let store = Arc::new(MemoryStore::new());
    let hour = Duration::from_secs(3600);
    for i in 0..live {
        let _ = store.apply_gates(&mark(format!("live-{i}"), hour)).await;
    }
    store.start_sweeper(SWEEP_EVERY);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut took = Vec::new();
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let gates = mark(format!("short-{t}-{n}"), Duration::from_millis(200));
                let started = Instant::now();
                let _ = store.apply_gates(&gates).await;
                took.push(started.elapsed());
                if n % 64 == 0 {
                    // Let the sweeper and the other tasks in, as requests would.
                    tokio::task::yield_now().await;
                }
            }
            took
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    all.sort_unstable();
    println!(
        "memory apply_gates, {live} live marks, {} calls in {seconds} s, sweep every {SWEEP_EVERY:?}: \
         p50 {:?}  p99 {:?}  p99.9 {:?}  max {:?}",
        all.len(),
        percentile(&all, 0.50),
        percentile(&all, 0.99),
        percentile(&all, 0.999),
        all.last().copied().unwrap_or_default(),
    );
}
