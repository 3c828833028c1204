//! In-memory state for a single gateway process (the standalone default).
//!
//! One mutex guards everything: every operation is a few map lookups, far shorter than
//! the cost of sharding, and it makes multi-gate atomicity trivial. Expired entries are
//! dropped on access and by a periodic sweep, so memory stays bounded by live keys.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{ClaimedTimer, Gate, GateResult, GateStop, StateError, StateStore, Versioned, unix_ms};

/// Source of "now" in Unix milliseconds; tests inject a manual clock.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

struct Window {
    window_ms: u64,
    passes: VecDeque<u64>,
}

struct Timer {
    due_ms: u64,
    payload: Vec<u8>,
    claim: Option<(String, u64)>,
}

#[derive(Default)]
struct Inner {
    dedup: HashMap<String, (String, u64)>,
    windows: HashMap<String, Window>,
    /// key → (window start, window end, count)
    quotas: HashMap<String, (u64, u64, u64)>,
    kv: HashMap<String, (Versioned, Option<u64>)>,
    locks: HashMap<String, (String, u64)>,
    timers: HashMap<String, Timer>,
    next_version: u64,
    claims: u64,
}

/// The in-memory [`StateStore`].
pub struct MemoryStore {
    inner: Mutex<Inner>,
    clock: Clock,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

impl Window {
    fn prune(&mut self, now: u64) {
        while self
            .passes
            .front()
            .is_some_and(|t| *t + self.window_ms <= now)
        {
            self.passes.pop_front();
        }
    }
}

impl Inner {
    fn check(&mut self, gate: &Gate, now: u64) -> Option<GateStop> {
        match gate {
            Gate::Dedup { key, .. } => {
                let live = self.dedup.get(key).is_some_and(|(_, exp)| *exp > now);
                live.then_some(GateStop::Duplicate)
            }
            Gate::Throttle { key, limit, window } => {
                if *limit == 0 {
                    // Nothing ever passes; there is no pass whose leaving frees a slot.
                    return Some(GateStop::Throttled {
                        retry_after: (*window).max(Duration::from_millis(1)),
                    });
                }
                let w = self.windows.get_mut(key)?;
                w.window_ms = ms(*window);
                w.prune(now);
                if (w.passes.len() as u64) < *limit {
                    return None;
                }
                // The pass that frees a slot is the one `limit` places from the end.
                let freeing = w.passes[w.passes.len() - *limit as usize];
                Some(GateStop::Throttled {
                    retry_after: Duration::from_millis(freeing + w.window_ms - now),
                })
            }
            Gate::Quota { key, limit, window } => {
                let (start, end) = quota_window(now, ms(*window));
                let used = match self.quotas.get(key) {
                    Some((s, _, count)) if *s == start => *count,
                    _ => 0,
                };
                (used >= *limit).then(|| GateStop::QuotaExceeded {
                    used,
                    resets_in: Duration::from_millis(end - now),
                })
            }
        }
    }

    fn apply(&mut self, gate: &Gate, now: u64) {
        match gate {
            Gate::Dedup { key, ttl, token } => {
                self.dedup
                    .insert(key.clone(), (token.clone(), now + ms(*ttl)));
            }
            Gate::Throttle { key, window, .. } => {
                let w = self.windows.entry(key.clone()).or_insert_with(|| Window {
                    window_ms: ms(*window),
                    passes: VecDeque::new(),
                });
                w.passes.push_back(now);
            }
            Gate::Quota { key, window, .. } => {
                let (start, end) = quota_window(now, ms(*window));
                let entry = self.quotas.entry(key.clone()).or_insert((start, end, 0));
                if entry.0 != start {
                    *entry = (start, end, 0);
                }
                entry.2 += 1;
            }
        }
    }

    fn sweep(&mut self, now: u64) {
        self.dedup.retain(|_, (_, exp)| *exp > now);
        self.windows.retain(|_, w| {
            w.prune(now);
            !w.passes.is_empty()
        });
        self.quotas.retain(|_, (_, end, _)| *end > now);
        self.kv.retain(|_, (_, exp)| exp.is_none_or(|e| e > now));
        self.locks.retain(|_, (_, exp)| *exp > now);
    }
}

/// Start and end of the fixed window containing `now`.
fn quota_window(now: u64, window_ms: u64) -> (u64, u64) {
    let w = window_ms.max(1);
    let start = now - now % w;
    (start, start + w)
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::with_clock(Arc::new(unix_ms))
    }

    pub fn with_clock(clock: Clock) -> Self {
        MemoryStore {
            inner: Mutex::new(Inner::default()),
            clock,
        }
    }

    /// Drops expired entries every `every`, for as long as the store lives.
    pub fn start_sweeper(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(store) = weak.upgrade() else { break };
                let now = (store.clock)();
                store.inner.lock().sweep(now);
            }
        });
    }

    /// Number of live entries of every kind (for tests of boundedness).
    pub fn entry_count(&self) -> usize {
        let inner = self.inner.lock();
        inner.dedup.len()
            + inner.windows.len()
            + inner.quotas.len()
            + inner.kv.len()
            + inner.locks.len()
            + inner.timers.len()
    }

    /// Sweeps now (tests).
    pub fn sweep_now(&self) {
        let now = (self.clock)();
        self.inner.lock().sweep(now);
    }
}

#[async_trait]
impl StateStore for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn ping(&self) -> Result<(), StateError> {
        Ok(())
    }

    async fn apply_gates(&self, gates: &[Gate]) -> Result<GateResult, StateError> {
        let now = (self.clock)();
        let mut inner = self.inner.lock();
        for (index, gate) in gates.iter().enumerate() {
            if let Some(reason) = inner.check(gate, now) {
                return Ok(GateResult::Stopped { index, reason });
            }
        }
        for gate in gates {
            inner.apply(gate, now);
        }
        Ok(GateResult::Passed)
    }

    async fn release_dedup(&self, key: &str, token: &str) -> Result<bool, StateError> {
        let now = (self.clock)();
        let mut inner = self.inner.lock();
        // An expired mark is no longer owned: there is nothing to release.
        let owned = inner
            .dedup
            .get(key)
            .is_some_and(|(t, exp)| t == token && *exp > now);
        if owned {
            inner.dedup.remove(key);
        }
        Ok(owned)
    }

    async fn dedup_exists(&self, key: &str) -> Result<bool, StateError> {
        let now = (self.clock)();
        Ok(self
            .inner
            .lock()
            .dedup
            .get(key)
            .is_some_and(|(_, exp)| *exp > now))
    }

    async fn window_count(&self, key: &str, window: Duration) -> Result<u64, StateError> {
        let now = (self.clock)();
        let inner = self.inner.lock();
        let count = inner.windows.get(key).map_or(0, |w| {
            w.passes.iter().filter(|t| **t + ms(window) > now).count()
        });
        Ok(count as u64)
    }

    async fn quota_usage(&self, key: &str, window: Duration) -> Result<u64, StateError> {
        let now = (self.clock)();
        let (start, _) = quota_window(now, ms(window));
        Ok(match self.inner.lock().quotas.get(key) {
            Some((s, _, count)) if *s == start => *count,
            _ => 0,
        })
    }

    async fn get(&self, key: &str) -> Result<Option<Versioned>, StateError> {
        let now = (self.clock)();
        let inner = self.inner.lock();
        Ok(inner
            .kv
            .get(key)
            .filter(|(_, exp)| exp.is_none_or(|e| e > now))
            .map(|(v, _)| v.clone()))
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<u64>,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<Option<u64>, StateError> {
        let now = (self.clock)();
        let mut inner = self.inner.lock();
        let current = inner
            .kv
            .get(key)
            .filter(|(_, exp)| exp.is_none_or(|e| e > now))
            .map(|(v, _)| v.version);
        if current != expected {
            return Ok(None);
        }
        inner.next_version += 1;
        let version = inner.next_version;
        inner.kv.insert(
            key.to_owned(),
            (Versioned { value, version }, ttl.map(|t| now + ms(t))),
        );
        Ok(Some(version))
    }

    async fn delete(&self, key: &str) -> Result<bool, StateError> {
        let now = (self.clock)();
        // An expired value counts as absent, as for `get`.
        let removed = self.inner.lock().kv.remove(key);
        Ok(removed.is_some_and(|(_, exp)| exp.is_none_or(|e| e > now)))
    }

    async fn try_lock(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool, StateError> {
        let now = (self.clock)();
        let mut inner = self.inner.lock();
        let free = inner
            .locks
            .get(key)
            .is_none_or(|(o, exp)| *exp <= now || o == owner);
        if free {
            inner
                .locks
                .insert(key.to_owned(), (owner.to_owned(), now + ms(ttl)));
        }
        Ok(free)
    }

    async fn unlock(&self, key: &str, owner: &str) -> Result<bool, StateError> {
        let now = (self.clock)();
        let mut inner = self.inner.lock();
        let held = inner
            .locks
            .get(key)
            .is_some_and(|(o, exp)| o == owner && *exp > now);
        if held {
            inner.locks.remove(key);
        }
        Ok(held)
    }

    async fn schedule_timer(
        &self,
        id: &str,
        due_unix_ms: u64,
        payload: Vec<u8>,
    ) -> Result<(), StateError> {
        self.inner.lock().timers.insert(
            id.to_owned(),
            Timer {
                due_ms: due_unix_ms,
                payload,
                claim: None,
            },
        );
        Ok(())
    }

    async fn claim_due_timers(
        &self,
        now_unix_ms: u64,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedTimer>, StateError> {
        let mut inner = self.inner.lock();
        let Inner { timers, claims, .. } = &mut *inner;
        let mut due: Vec<(&String, &mut Timer)> = timers
            .iter_mut()
            .filter(|(_, t)| {
                t.due_ms <= now_unix_ms
                    && t.claim
                        .as_ref()
                        .is_none_or(|(_, until)| *until <= now_unix_ms)
            })
            .collect();
        due.sort_by_key(|(id, t)| (t.due_ms, (*id).clone()));
        let mut out = Vec::new();
        for (id, timer) in due.into_iter().take(max) {
            *claims += 1;
            let claim = format!("c{claims}");
            timer.claim = Some((claim.clone(), now_unix_ms + ms(lease)));
            out.push(ClaimedTimer {
                id: id.clone(),
                payload: timer.payload.clone(),
                claim,
            });
        }
        Ok(out)
    }

    async fn complete_timer(&self, id: &str, claim: &str) -> Result<bool, StateError> {
        let mut inner = self.inner.lock();
        let owned = inner
            .timers
            .get(id)
            .and_then(|t| t.claim.as_ref())
            .is_some_and(|(c, _)| c == claim);
        if owned {
            inner.timers.remove(id);
        }
        Ok(owned)
    }
}
