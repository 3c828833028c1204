//! Shared state: everything that outlives a request and must be exact across replicas.
//!
//! The trait is shaped by what Redis and Postgres can do atomically in one round trip.
//! The hot path is [`StateStore::apply_gates`]: all the dedup / throttle / quota checks a
//! dispatch needs are checked together and applied only if all pass, so a rejected action
//! never consumes budget and a dispatch costs one round trip whatever its rules.
//! [`StateStore::run_gates`] adds the two variations the pipeline needs in that same single
//! call: checking without applying (an action a later rule stops consumes nothing), and
//! setting dedup marks for an in-flight lease only, which [`StateStore::confirm_dedup`]
//! (batched, off the request path) extends to the full TTL once the delivery succeeded.

pub mod confirm;
pub mod conformance;
pub mod defer;
pub mod lazy;
pub mod memory;
pub mod postgres;
pub mod redis;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;

pub use defer::{
    DeferResult, Deferral, EventInfo, GroupAppend, GroupBatch, GroupInfo, MAX_GROUP_FINGERPRINTS,
    MoveNotice, StateAnswers, StateRead, TimerWrite, Transition, TransitionResult, dedup_token,
    dedup_token_time,
};
pub use memory::MemoryStore;
pub use postgres::PostgresStore;
pub use redis::RedisStore;

/// Errors of a state backend. Every one of them means "unavailable": callers answer 503.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StateError {
    #[error("state backend unavailable: {0}")]
    Unavailable(String),
    #[error("state backend timed out after {0:?}")]
    Timeout(Duration),
}

/// One check that a dispatch must pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gate {
    /// At most one holder of `key` within `ttl`. On pass the key is marked with `token`.
    Dedup {
        key: String,
        ttl: Duration,
        token: String,
    },
    /// Sliding window: at most `limit` passes in any `window`.
    Throttle {
        key: String,
        limit: u64,
        window: Duration,
    },
    /// Fixed window aligned to multiples of `window` since the epoch: at most `limit` passes.
    Quota {
        key: String,
        limit: u64,
        window: Duration,
    },
}

/// The answer to [`StateStore::apply_gates`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GateResult {
    /// All gates passed and were applied.
    Passed,
    /// Gate number `index` stopped the dispatch; nothing was applied.
    Stopped { index: usize, reason: GateStop },
}

/// Why a gate stopped a dispatch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GateStop {
    Duplicate,
    /// Time until the oldest counted pass leaves the window.
    Throttled {
        retry_after: Duration,
    },
    QuotaExceeded {
        used: u64,
        resets_in: Duration,
    },
}

/// What [`StateStore::run_gates`] does once every gate passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateMode {
    /// Apply them all. A dedup mark whose TTL is longer than `dedup_lease` is set for the
    /// lease only: if its delivery never finishes (the gateway died), the mark stops
    /// blocking retries after the lease; [`StateStore::confirm_dedup`] extends it to its
    /// full TTL, counted from when it was set.
    Apply { dedup_lease: Option<Duration> },
    /// Check only: report the first gate that stops, apply nothing.
    Check,
}

impl GateMode {
    /// Applies with full TTLs (what [`StateStore::apply_gates`] does).
    pub const APPLY: GateMode = GateMode::Apply { dedup_lease: None };

    /// The TTL a dedup mark of `ttl` is set with in this mode.
    pub fn mark_ttl(self, ttl: Duration) -> Duration {
        match self {
            GateMode::Apply {
                dedup_lease: Some(lease),
            } => ttl.min(lease),
            _ => ttl,
        }
    }
}

/// The delivery behind a leased dedup mark succeeded: the mark of `key`, if `token` still
/// owns it, lives `extend` longer (the rule TTL minus the lease it was set with).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DedupConfirm {
    pub key: String,
    pub token: String,
    pub extend: Duration,
}

/// A value with the version that compare-and-swap checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    pub value: Vec<u8>,
    pub version: u64,
}

/// A timer handed to exactly one caller until its lease runs out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimedTimer {
    pub id: String,
    pub payload: Vec<u8>,
    /// Proof of the claim, required to complete the timer.
    pub claim: String,
    /// When the timer was due, as registered (Unix ms, the caller's clock).
    pub due_ms: u64,
}

/// What the group commit of gate calls did so far (Postgres: whole gate calls, Redis: lone
/// dedup gates; for tests and the `acteon_state_gate_batches_total` metric).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GateBatchCounts {
    /// Statements (Postgres) or pipelines (Redis) that carried two calls or more.
    pub batches: u64,
    /// Calls answered by those.
    pub calls_together: u64,
    /// Calls run alone after the server refused their batch (Postgres).
    pub retried_alone: u64,
}

/// The live tallies behind [`GateBatchCounts`], updated by a backend's batching task.
#[derive(Default)]
pub(crate) struct GateBatchTally {
    batches: AtomicU64,
    calls_together: AtomicU64,
    retried_alone: AtomicU64,
}

impl GateBatchTally {
    /// `n` calls answered by one statement or pipeline (counted when two or more).
    pub(crate) fn sent_together(&self, n: usize) {
        if n > 1 {
            self.batches.fetch_add(1, Ordering::Relaxed);
            self.calls_together.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// `n` calls of a refused batch, run alone (counted when two or more).
    pub(crate) fn retried_alone(&self, n: usize) {
        if n > 1 {
            self.retried_alone.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    pub(crate) fn counts(&self) -> GateBatchCounts {
        GateBatchCounts {
            batches: self.batches.load(Ordering::Relaxed),
            calls_together: self.calls_together.load(Ordering::Relaxed),
            retried_alone: self.retried_alone.load(Ordering::Relaxed),
        }
    }
}

/// The state contract. Memory, Redis and Postgres implement it; one conformance suite
/// checks all three.
#[async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// Backend name for metrics and `/v1/config`.
    fn kind(&self) -> &'static str;

    /// Checks reachability (for `/readyz`).
    async fn ping(&self) -> Result<(), StateError>;

    /// What the group commit of gate calls did so far (Redis and Postgres; `None` in memory).
    fn gate_batch_counts(&self) -> Option<GateBatchCounts> {
        None
    }

    /// Checks every gate and, only if all pass, applies them all, atomically.
    async fn apply_gates(&self, gates: &[Gate]) -> Result<GateResult, StateError>;

    /// [`StateStore::apply_gates`] with a [`GateMode`], in one backend call.
    ///
    /// The default serves wrappers written before modes existed: `Apply` ignores the lease
    /// (full TTLs, so [`StateStore::confirm_dedup`] has nothing to do), `Check` reads each
    /// gate separately (several calls, not atomic, throttles report their whole window as
    /// `retry_after`). Every real backend overrides it.
    async fn run_gates(&self, gates: &[Gate], mode: GateMode) -> Result<GateResult, StateError> {
        match mode {
            GateMode::Apply { .. } => self.apply_gates(gates).await,
            GateMode::Check => check_by_reads(self, gates).await,
        }
    }

    /// [`StateStore::run_gates`] plus `deferrals` (see [`defer`]), in the same single atomic
    /// backend call: the deferrals are made only when every gate passed (the gates are then
    /// applied as `mode` says), and answered in order. When a gate stops, nothing is written
    /// and the result list is empty. A stopped gate never depends on the deferrals.
    ///
    /// With [`GateMode::Check`] the gates are checked and none is applied, and the deferrals
    /// are still made when they all pass. Deferrals apply in order, each seeing the ones
    /// before it (two transitions of one event in one call move it twice).
    async fn run_gates_and_defer(
        &self,
        gates: &[Gate],
        mode: GateMode,
        deferrals: &[Deferral],
    ) -> Result<(GateResult, Vec<DeferResult>), StateError> {
        if deferrals.is_empty() {
            return Ok((self.run_gates(gates, mode).await?, Vec::new()));
        }
        Err(StateError::Unavailable(format!(
            "the {} backend cannot park actions",
            self.kind()
        )))
    }

    /// Starts sending the group's notification: the batch already being sent (a worker
    /// died sending it) if there is one; else the pending events, which move out of the
    /// pending list into the batch being sent; else, if the group keeps a last
    /// notification for repeating and a refresh (see [`GroupAppend`]) arrived since its last
    /// flush, that one with `repeat: true`; else `None` (also for a
    /// group that does not exist or expired). Calling it again before
    /// [`StateStore::group_flush_end`] answers the same batch: at least once.
    async fn group_flush_begin(&self, key: &str) -> Result<Option<GroupBatch>, StateError> {
        let _ = key;
        Err(self.unsupported("groups"))
    }

    /// The batch from [`StateStore::group_flush_begin`] was delivered, under the claim
    /// `claim` of the group's timer `timer_id`. Atomically: the batch is dropped (kept as
    /// the last notification when `repeat_at` is given), the last flush time becomes now;
    /// then if events arrived meanwhile the timer is re-armed at now + `interval` (the claim
    /// ends), else if `repeat_at` is given at that time, else the timer is completed (the
    /// group stays, idle, until its `idle_ttl` passes). False, with nothing changed, when
    /// the claim was lost (see [`StateStore::complete_timer`]). A repeat (`repeat: true`)
    /// keeps the last notification when `repeat_at` is given again. When the group no
    /// longer exists the timer is completed (true).
    async fn group_flush_end(
        &self,
        key: &str,
        timer_id: &str,
        claim: &str,
        interval: Duration,
        repeat_at_ms: Option<u64>,
    ) -> Result<bool, StateError> {
        let _ = (key, timer_id, claim, interval, repeat_at_ms);
        Err(self.unsupported("groups"))
    }

    async fn get_group(&self, key: &str) -> Result<Option<GroupInfo>, StateError> {
        let _ = key;
        Err(self.unsupported("groups"))
    }

    /// Groups whose key starts with `prefix`, in key order, at most `limit`.
    async fn list_groups(&self, prefix: &str, limit: usize) -> Result<Vec<GroupInfo>, StateError> {
        let _ = (prefix, limit);
        Err(self.unsupported("groups"))
    }

    async fn get_event(&self, key: &str) -> Result<Option<EventInfo>, StateError> {
        let _ = key;
        Err(self.unsupported("state machines"))
    }

    /// State-machine events whose key starts with `prefix`, in key order, at most `limit`.
    async fn list_events(&self, prefix: &str, limit: usize) -> Result<Vec<EventInfo>, StateError> {
        let _ = (prefix, limit);
        Err(self.unsupported("state machines"))
    }

    /// Answers the reads of rule conditions in one backend call.
    async fn read_state(&self, reads: &[StateRead]) -> Result<StateAnswers, StateError> {
        let _ = reads;
        Err(self.unsupported("state reads"))
    }

    /// Timers registered and not completed (claimed or not), for the backlog gauge.
    async fn pending_timers(&self) -> Result<u64, StateError> {
        Err(self.unsupported("timer counts"))
    }

    /// Releases claims this process holds so other replicas may take the timers at once
    /// (shutdown): each (timer id, claim) whose claim still holds becomes due again (at its
    /// due time, so claimable at once); the claim is then lost. Returns how many.
    async fn release_timers(&self, claims: &[(String, String)]) -> Result<usize, StateError> {
        let _ = claims;
        Ok(0)
    }

    /// A timer's due time and payload, claimed or not (`GET /v1/chains/{id}` reads a
    /// running chain from its timer).
    async fn get_timer(&self, id: &str) -> Result<Option<(u64, Vec<u8>)>, StateError> {
        let _ = id;
        Err(self.unsupported("reading timers"))
    }

    /// Removes a timer, claimed or not; whether it existed (records kept as timers — dead
    /// letters — are deleted this way).
    async fn delete_timer(&self, id: &str) -> Result<bool, StateError> {
        let _ = id;
        Err(self.unsupported("deleting timers"))
    }

    /// Timers whose id starts with `prefix`, claimed or not, in id order, at most `limit`,
    /// from just after the id `after` when given (keyset paging): what `GET /v1/chains`
    /// lists.
    async fn list_timers(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ListedTimer>, StateError> {
        let _ = (prefix, after, limit);
        Err(self.unsupported("listing timers"))
    }

    /// Replaces a claimed timer's payload and due time in one step (the next step of a task
    /// that moves on: a chain's next step); false, with nothing changed, if the claim was
    /// lost (as for [`StateStore::complete_timer`]). The claim ends, unless `hold` is given:
    /// then it is kept, its lease renewed to `hold` from now, so the caller may run the
    /// next step itself at once (if it dies, the timer is claimable when the lease ends).
    async fn advance_timer(
        &self,
        id: &str,
        claim: &str,
        due_unix_ms: u64,
        payload: Vec<u8>,
        hold: Option<Duration>,
    ) -> Result<bool, StateError> {
        let _ = (id, claim, due_unix_ms, payload, hold);
        Err(self.unsupported("advancing timers"))
    }

    #[doc(hidden)]
    fn unsupported(&self, what: &str) -> StateError {
        StateError::Unavailable(format!(
            "the {} backend does not support {what}",
            self.kind()
        ))
    }

    /// Extends the dedup marks of successful deliveries (see [`GateMode::Apply`]) in one
    /// backend call; owner-checked, a mark that expired or changed hands is left alone.
    /// Returns how many marks were extended. The default has nothing to extend.
    async fn confirm_dedup(&self, marks: &[DedupConfirm]) -> Result<usize, StateError> {
        let _ = marks;
        Ok(0)
    }

    /// Releases a dedup mark if `token` still owns it (the provider failed, so a retry may run).
    async fn release_dedup(&self, key: &str, token: &str) -> Result<bool, StateError>;

    /// Whether a dedup mark is present (dry runs, `stateSeen`).
    async fn dedup_exists(&self, key: &str) -> Result<bool, StateError>;

    /// Passes counted in the sliding window now (dry runs, `stateCounter`).
    async fn window_count(&self, key: &str, window: Duration) -> Result<u64, StateError>;

    /// Usage of a fixed-window quota counter in the current window.
    async fn quota_usage(&self, key: &str, window: Duration) -> Result<u64, StateError>;

    async fn get(&self, key: &str) -> Result<Option<Versioned>, StateError>;

    /// [`StateStore::get`] of every key, answered in order, in one backend call (the
    /// circuit breaker poll reads every breaker at once). The default reads one by one.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Versioned>>, StateError> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.get(key).await?);
        }
        Ok(out)
    }

    /// Reserves the next start slot of the rate-limited stream `key`: slots are `interval`
    /// apart and never in the past (GCRA without burst), read on the backend's clock where
    /// it has one. Answers how long from now the caller must wait for its slot, or `None`,
    /// reserving nothing, when that would be longer than `max_wait`. Exact across callers:
    /// two reservations never get slots less than `interval` apart.
    async fn reserve_slot(
        &self,
        key: &str,
        interval: Duration,
        max_wait: Duration,
    ) -> Result<Option<Duration>, StateError> {
        let _ = (key, interval, max_wait);
        Err(self.unsupported("rate limits"))
    }

    /// Writes `value` if the current version is `expected` (`None` = key absent).
    /// Returns the new version, or `None` when the expectation did not hold.
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<u64>,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<Option<u64>, StateError>;

    async fn delete(&self, key: &str) -> Result<bool, StateError>;

    /// Takes the lock if free or expired. Re-acquiring one's own lock extends it.
    async fn try_lock(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool, StateError>;

    /// Releases the lock only if `owner` holds it.
    async fn unlock(&self, key: &str, owner: &str) -> Result<bool, StateError>;

    /// Registers (or replaces) a timer due at `due_unix_ms`.
    async fn schedule_timer(
        &self,
        id: &str,
        due_unix_ms: u64,
        payload: Vec<u8>,
    ) -> Result<(), StateError>;

    /// Claims up to `max` due timers for `lease`; a claimed timer goes to no one else until
    /// the lease expires without [`StateStore::complete_timer`]. Oldest due first (a timer
    /// whose lease ran out may come in the order its lease ended). A poll costs what it
    /// claims, not what is pending: one backend call on an index ordered by due time.
    async fn claim_due_timers(
        &self,
        now_unix_ms: u64,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedTimer>, StateError>;

    /// Removes a claimed timer; false if the claim was lost. A claim holds until the timer
    /// is claimed again (after the lease), released, replaced or removed: completing after
    /// the lease, before anyone else claimed the timer, still succeeds.
    async fn complete_timer(&self, id: &str, claim: &str) -> Result<bool, StateError>;
}

/// [`GateMode::Check`] through the read methods, for stores without a check of their own.
async fn check_by_reads<S: StateStore + ?Sized>(
    store: &S,
    gates: &[Gate],
) -> Result<GateResult, StateError> {
    for (index, gate) in gates.iter().enumerate() {
        let reason = match gate {
            Gate::Dedup { key, .. } => store
                .dedup_exists(key)
                .await?
                .then_some(GateStop::Duplicate),
            Gate::Throttle { key, limit, window } => {
                (store.window_count(key, *window).await? >= *limit).then_some(GateStop::Throttled {
                    retry_after: *window,
                })
            }
            Gate::Quota { key, limit, window } => {
                let used = store.quota_usage(key, *window).await?;
                (used >= *limit).then_some(GateStop::QuotaExceeded {
                    used,
                    resets_in: *window,
                })
            }
        };
        if let Some(reason) = reason {
            return Ok(GateResult::Stopped { index, reason });
        }
    }
    Ok(GateResult::Passed)
}

/// Wall-clock milliseconds since the Unix epoch.
/// A timer as [`StateStore::list_timers`] reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedTimer {
    pub id: String,
    pub due_ms: u64,
    pub payload: Vec<u8>,
}

/// A Unix-ms instant of the backends as a time (the epoch for one past chrono's range).
pub fn time_of_ms(ms: u64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(i64::try_from(ms).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
