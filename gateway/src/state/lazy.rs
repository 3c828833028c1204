//! A state backend that is connected in the background: a gateway whose backend is down
//! when it starts serves anyway (503 on what needs the backend, not ready) instead of
//! exiting into a crash loop, and starts using the backend as soon as it can connect
//! (Postgres migrations included).

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{
    ClaimedTimer, DedupConfirm, DeferResult, Deferral, EventInfo, Gate, GateMode, GateResult,
    GroupBatch, GroupInfo, ListedTimer, StateAnswers, StateError, StateRead, StateStore, Versioned,
};

/// First and longest pause between connection attempts.
const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);

pub struct LazyStore {
    kind: &'static str,
    inner: OnceLock<Arc<dyn StateStore>>,
    last_error: Mutex<String>,
}

impl LazyStore {
    /// Not connected yet; `first_error` is why the first attempt failed.
    pub fn new(kind: &'static str, first_error: String) -> Arc<LazyStore> {
        Arc::new(LazyStore {
            kind,
            inner: OnceLock::new(),
            last_error: Mutex::new(first_error),
        })
    }

    pub fn is_connected(&self) -> bool {
        self.inner.get().is_some()
    }

    /// Calls `connect` with backoff until it succeeds, then serves through its store.
    pub fn connect_in_background<F, Fut>(self: &Arc<Self>, connect: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Arc<dyn StateStore>, String>> + Send,
    {
        let me = self.clone();
        tokio::spawn(async move {
            let mut delay = RETRY_MIN;
            loop {
                tokio::time::sleep(delay).await;
                match connect().await {
                    Ok(store) => {
                        let _ = me.inner.set(store);
                        tracing::info!(backend = me.kind, "state backend connected");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(backend = me.kind, error = ?e, retry_in = ?delay, "state backend still unreachable");
                        *me.last_error.lock() = e;
                    }
                }
                delay = (delay * 2).min(RETRY_MAX);
            }
        });
    }

    fn store(&self) -> Result<&Arc<dyn StateStore>, StateError> {
        self.inner.get().ok_or_else(|| {
            StateError::Unavailable(format!("not connected yet: {}", self.last_error.lock()))
        })
    }
}

#[async_trait]
impl StateStore for LazyStore {
    fn kind(&self) -> &'static str {
        self.kind
    }

    async fn ping(&self) -> Result<(), StateError> {
        self.store()?.ping().await
    }

    fn gate_batch_counts(&self) -> Option<super::GateBatchCounts> {
        self.inner.get()?.gate_batch_counts()
    }

    async fn apply_gates(&self, gates: &[Gate]) -> Result<GateResult, StateError> {
        self.store()?.apply_gates(gates).await
    }

    async fn run_gates(&self, gates: &[Gate], mode: GateMode) -> Result<GateResult, StateError> {
        self.store()?.run_gates(gates, mode).await
    }

    async fn run_gates_and_defer(
        &self,
        gates: &[Gate],
        mode: GateMode,
        deferrals: &[Deferral],
    ) -> Result<(GateResult, Vec<DeferResult>), StateError> {
        self.store()?
            .run_gates_and_defer(gates, mode, deferrals)
            .await
    }

    async fn group_flush_begin(&self, key: &str) -> Result<Option<GroupBatch>, StateError> {
        self.store()?.group_flush_begin(key).await
    }

    async fn group_flush_end(
        &self,
        key: &str,
        timer_id: &str,
        claim: &str,
        interval: Duration,
        repeat_at_ms: Option<u64>,
    ) -> Result<bool, StateError> {
        self.store()?
            .group_flush_end(key, timer_id, claim, interval, repeat_at_ms)
            .await
    }

    async fn get_group(&self, key: &str) -> Result<Option<GroupInfo>, StateError> {
        self.store()?.get_group(key).await
    }

    async fn list_groups(&self, prefix: &str, limit: usize) -> Result<Vec<GroupInfo>, StateError> {
        self.store()?.list_groups(prefix, limit).await
    }

    async fn get_event(&self, key: &str) -> Result<Option<EventInfo>, StateError> {
        self.store()?.get_event(key).await
    }

    async fn list_events(&self, prefix: &str, limit: usize) -> Result<Vec<EventInfo>, StateError> {
        self.store()?.list_events(prefix, limit).await
    }

    async fn read_state(&self, reads: &[StateRead]) -> Result<StateAnswers, StateError> {
        self.store()?.read_state(reads).await
    }

    async fn pending_timers(&self) -> Result<u64, StateError> {
        self.store()?.pending_timers().await
    }

    async fn release_timers(&self, claims: &[(String, String)]) -> Result<usize, StateError> {
        self.store()?.release_timers(claims).await
    }

    async fn confirm_dedup(&self, marks: &[DedupConfirm]) -> Result<usize, StateError> {
        self.store()?.confirm_dedup(marks).await
    }

    async fn release_dedup(&self, key: &str, token: &str) -> Result<bool, StateError> {
        self.store()?.release_dedup(key, token).await
    }

    async fn dedup_exists(&self, key: &str) -> Result<bool, StateError> {
        self.store()?.dedup_exists(key).await
    }

    async fn window_count(&self, key: &str, window: Duration) -> Result<u64, StateError> {
        self.store()?.window_count(key, window).await
    }

    async fn quota_usage(&self, key: &str, window: Duration) -> Result<u64, StateError> {
        self.store()?.quota_usage(key, window).await
    }

    async fn get(&self, key: &str) -> Result<Option<Versioned>, StateError> {
        self.store()?.get(key).await
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Versioned>>, StateError> {
        self.store()?.get_many(keys).await
    }

    async fn reserve_slot(
        &self,
        key: &str,
        interval: Duration,
        max_wait: Duration,
    ) -> Result<Option<Duration>, StateError> {
        self.store()?.reserve_slot(key, interval, max_wait).await
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<u64>,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<Option<u64>, StateError> {
        self.store()?
            .compare_and_swap(key, expected, value, ttl)
            .await
    }

    async fn delete(&self, key: &str) -> Result<bool, StateError> {
        self.store()?.delete(key).await
    }

    async fn try_lock(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool, StateError> {
        self.store()?.try_lock(key, owner, ttl).await
    }

    async fn unlock(&self, key: &str, owner: &str) -> Result<bool, StateError> {
        self.store()?.unlock(key, owner).await
    }

    async fn schedule_timer(
        &self,
        id: &str,
        due_unix_ms: u64,
        payload: Vec<u8>,
    ) -> Result<(), StateError> {
        self.store()?.schedule_timer(id, due_unix_ms, payload).await
    }

    async fn claim_due_timers(
        &self,
        now_unix_ms: u64,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedTimer>, StateError> {
        self.store()?
            .claim_due_timers(now_unix_ms, max, lease)
            .await
    }

    async fn complete_timer(&self, id: &str, claim: &str) -> Result<bool, StateError> {
        self.store()?.complete_timer(id, claim).await
    }

    async fn get_timer(&self, id: &str) -> Result<Option<(u64, Vec<u8>)>, StateError> {
        self.store()?.get_timer(id).await
    }

    async fn delete_timer(&self, id: &str) -> Result<bool, StateError> {
        self.store()?.delete_timer(id).await
    }

    async fn list_timers(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ListedTimer>, StateError> {
        self.store()?.list_timers(prefix, after, limit).await
    }

    async fn advance_timer(
        &self,
        id: &str,
        claim: &str,
        due_unix_ms: u64,
        payload: Vec<u8>,
        hold: Option<Duration>,
    ) -> Result<bool, StateError> {
        self.store()?
            .advance_timer(id, claim, due_unix_ms, payload, hold)
            .await
    }
}
