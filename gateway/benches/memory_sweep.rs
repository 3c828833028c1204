//! Latency of the memory store's `apply_gates` while expiry sweeps run over many live keys.
//!
//! A dedup-heavy load: `LIVE` marks stay live (long TTL) and every call sets a new mark with
//! a short TTL, so each sweep has expired marks to drop while most of the store is live.
//! The sweeper runs every `SWEEP_EVERY` (`serve` sweeps every 10 s; more often here, so a
//! short run sees many sweeps). The load is open-loop, as requests arrive: each task calls
//! `apply_gates` `PER_TICK` times every millisecond, and a call's latency counts from when
//! it was due, so a call delayed behind a stalled one counts the stall too. Prints
//! p50/p99/p99.9/max. No assertion: figures for the README and the issue.
//!
//! Run with `cargo bench -p acteon-gateway --bench memory_sweep` (optionally
//! `-- <live keys> <seconds>`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use acteon_gateway::state::{Gate, MemoryStore, StateStore};

const LIVE: usize = 1_000_000;
const SECONDS: u64 = 10;
const SWEEP_EVERY: Duration = Duration::from_secs(1);
const TASKS: usize = 4;
/// Calls per task and millisecond: 4 tasks × 5 = 20,000 calls/s.
const PER_TICK: u64 = 5;

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
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
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
    let start = Instant::now();
    let ticks = seconds * 1_000;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut took = Vec::with_capacity((ticks * PER_TICK) as usize);
            let mut service = Vec::with_capacity((ticks * PER_TICK) as usize);
            for tick in 0..ticks {
                let due = start + Duration::from_millis(tick);
                tokio::time::sleep_until(due.into()).await;
                for n in 0..PER_TICK {
                    let key = format!("short-{t}-{tick}-{n}");
                    let started = Instant::now();
                    let _ = store
                        .apply_gates(&mark(key, Duration::from_millis(200)))
                        .await;
                    service.push(started.elapsed());
                    took.push(due.elapsed());
                }
            }
            (took, service)
        }));
    }
    let (mut all, mut service) = (Vec::new(), Vec::new());
    for t in tasks {
        let (took, served) = t.await.expect("task");
        all.extend(took);
        service.extend(served);
    }
    println!(
        "memory apply_gates, {live} live marks, {} calls in {seconds} s, sweep every {SWEEP_EVERY:?}",
        all.len()
    );
    report("  call alone        ", &mut service);
    report(
        "  from due (open loop, includes ~1 ms timer wake-up)",
        &mut all,
    );
}

fn report(what: &str, took: &mut [Duration]) {
    took.sort_unstable();
    println!(
        "{what}: p50 {:?}  p99 {:?}  p99.9 {:?}  max {:?}",
        percentile(took, 0.50),
        percentile(took, 0.99),
        percentile(took, 0.999),
        took.last().copied().unwrap_or_default(),
    );
}
