//! The census of kept work: running chains by chain (the running gauge, and the Chain
//! resources' status through the gateway's report to the operator) and dead letters by
//! namespace/provider (their gauge); and how chains last failed.
//!
//! Counting means reading every entry, so one replica at a time does it — the holder of a
//! short lease — every [`CENSUS_EVERY`], reading at most [`MAX_COUNTED`] of each (past that
//! the counts are lower bounds). Failures are what each replica saw itself; the operator
//! keeps the newest across gateways.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use acteon_channel::ChainActivity;
use parking_lot::Mutex;
use serde::Deserialize;
use tokio::sync::watch;

use super::chain_record::ALL_RUNNING;
use crate::dead_letter;
use crate::pipeline::Gateway;
use crate::state::unix_ms;

pub const CENSUS_EVERY: Duration = Duration::from_secs(10);
/// The census lease: three missed censuses and another replica takes over.
const LEASE_CENSUSES: u32 = 3;
const LOCK_KEY: &str = "chain-census";
const PAGE: usize = 1000;
/// Runs one census reads at most.
pub const MAX_COUNTED: usize = 50_000;
/// Chains whose last failure a replica remembers; past it, new chains' failures are not kept.
const MAX_CHAINS: usize = 10_000;
/// Longest failure reason kept.
const MAX_REASON: usize = 512;

/// This replica's view of chain activity.
#[derive(Debug, Default)]
pub struct ChainActivityLog {
    inner: Mutex<Log>,
}

#[derive(Debug, Default)]
struct Log {
    /// Running runs by chain, as of `census_ms`, when this replica took the last census.
    running: BTreeMap<String, u64>,
    census_ms: Option<u64>,
    /// Last failure by chain: reason, unix ms.
    failures: HashMap<String, (String, u64)>,
}

impl ChainActivityLog {
    /// A run of `chain` failed or timed out.
    pub fn failed(&self, chain: &str, reason: &str, at_ms: u64) {
        let mut log = self.inner.lock();
        if log.failures.len() >= MAX_CHAINS && !log.failures.contains_key(chain) {
            return;
        }
        let reason = truncate(reason, MAX_REASON);
        log.failures.insert(chain.to_owned(), (reason, at_ms));
    }

    fn counted(&self, running: Option<(BTreeMap<String, u64>, u64)>) {
        let mut log = self.inner.lock();
        match running {
            Some((counts, at)) => {
                log.running = counts;
                log.census_ms = Some(at);
            }
            None => {
                log.running.clear();
                log.census_ms = None;
            }
        }
    }

    /// What the gateway reports: by chain, and when its census was taken (if it took one).
    pub fn report(&self) -> (BTreeMap<String, ChainActivity>, Option<u64>) {
        let log = self.inner.lock();
        let mut out: BTreeMap<String, ChainActivity> = BTreeMap::new();
        for (chain, n) in &log.running {
            out.entry(chain.clone()).or_default().running = Some(*n);
        }
        for (chain, (reason, at)) in &log.failures {
            let entry = out.entry(chain.clone()).or_default();
            entry.last_failure = Some(reason.clone());
            entry.last_failure_ms = Some(*at);
        }
        (out, log.census_ms)
    }
}

fn truncate(text: &str, max: usize) -> String {
    text[..text.floor_char_boundary(max)].to_owned()
}

/// The fields of a running run's timer the census reads.
#[derive(Deserialize)]
struct RunChain {
    chain: String,
    #[serde(default)]
    parents: Vec<ParentChain>,
}

#[derive(Deserialize)]
struct ParentChain {
    chain: String,
}

/// The fields of a dead letter the census reads.
#[derive(Deserialize)]
struct LetterOf {
    namespace: String,
    provider: String,
}

/// Takes the census while this replica holds the lease, until `stopped`.
pub async fn run(gateway: Arc<Gateway>, every: Duration, mut stopped: watch::Receiver<bool>) {
    let owner = uuid::Uuid::new_v4().simple().to_string();
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            _ = tick.tick() => {}
        }
        let gw = &gateway;
        let holds = gw
            .state_call(gw.state.try_lock(LOCK_KEY, &owner, every * LEASE_CENSUSES))
            .await
            .unwrap_or(false);
        let counts = if holds { count(gw).await } else { None };
        let letters = if holds {
            count_dead_letters(gw).await
        } else {
            None
        };
        publish(&gw.metrics.chains_running, counts.as_ref());
        publish(&gw.metrics.dead_letters_pending, letters.as_ref());
        gw.chain_activity.counted(counts.map(|c| (c, unix_ms())));
    }
    let _ = gateway
        .state_call(gateway.state.unlock(LOCK_KEY, &owner))
        .await;
}

/// Running runs by chain (`namespace/name` of the started chain), or `None` if the
/// backend could not be read.
async fn count(gw: &Gateway) -> Option<BTreeMap<String, u64>> {
    tally(gw, ALL_RUNNING, |payload| {
        let run = serde_json::from_slice::<RunChain>(payload).ok()?;
        Some(
            run.parents
                .into_iter()
                .next()
                .map_or(run.chain, |p| p.chain),
        )
    })
    .await
}

/// Dead letters by `namespace/provider`.
async fn count_dead_letters(gw: &Gateway) -> Option<BTreeMap<String, u64>> {
    tally(gw, &dead_letter::list_prefix(None, None), |payload| {
        let entry = serde_json::from_slice::<LetterOf>(payload).ok()?;
        Some(format!("{}/{}", entry.namespace, entry.provider))
    })
    .await
}

/// Counts the timers of `prefix` by the label `label_of` reads from each payload.
async fn tally(
    gw: &Gateway,
    prefix: &str,
    label_of: impl Fn(&[u8]) -> Option<String>,
) -> Option<BTreeMap<String, u64>> {
    let mut counts = BTreeMap::new();
    let mut after: Option<String> = None;
    let mut read = 0;
    while read < MAX_COUNTED {
        let page = gw
            .state_call(gw.state.list_timers(prefix, after.as_deref(), PAGE))
            .await
            .ok()?;
        read += page.len();
        for label in page.iter().filter_map(|t| label_of(&t.payload)) {
            *counts.entry(label).or_insert(0) += 1;
        }
        if page.len() < PAGE {
            break;
        }
        after = page.last().map(|t| t.id.clone());
    }
    Some(counts)
}

/// A gauge set by the census holder only (others clear theirs), so a sum over replicas
/// counts each entry once.
fn publish(gauge: &prometheus::IntGaugeVec, counts: Option<&BTreeMap<String, u64>>) {
    gauge.reset();
    for (chain, n) in counts.into_iter().flatten() {
        gauge
            .with_label_values(&[chain])
            .set(i64::try_from(*n).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_running_counts_and_the_last_failure_per_chain() {
        let log = ChainActivityLog::default();
        log.failed("ns/a", "step `x`: 500", 10);
        log.failed("ns/a", "step `y`: timeout", 20);
        log.counted(Some((
            [("ns/a".to_owned(), 2), ("ns/b".to_owned(), 5)].into(),
            30,
        )));
        let (chains, census) = log.report();
        assert_eq!(census, Some(30));
        assert_eq!(
            chains["ns/a"],
            ChainActivity {
                running: Some(2),
                last_failure: Some("step `y`: timeout".into()),
                last_failure_ms: Some(20),
            }
        );
        assert_eq!(chains["ns/b"].running, Some(5));
        assert_eq!(chains["ns/b"].last_failure, None);
        log.counted(None);
        let (chains, census) = log.report();
        assert_eq!(census, None);
        assert_eq!(chains["ns/a"].running, None, "no census, no counts");
        assert!(!chains.contains_key("ns/b"));
    }

    #[test]
    fn failure_reasons_are_bounded() {
        let log = ChainActivityLog::default();
        log.failed("ns/a", &"é".repeat(1000), 1);
        let (chains, _) = log.report();
        let reason = chains["ns/a"].last_failure.clone().unwrap_or_default();
        assert!(reason.len() <= MAX_REASON && reason.starts_with('é'));
    }
}
