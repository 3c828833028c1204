//! In-memory state for a single gateway process (the standalone default).
//!
//! Keys are spread over [`SHARDS`] shards by hash, each behind its own mutex, so that no
//! operation ever waits for work on the whole key space: a dispatch locks only the shards
//! of its gates (in ascending order, so two dispatches never wait on each other in a
//! cycle, and all its gates are checked and applied under those locks, atomically), and a
//! map that grows rehashes one shard, not everything.
//!
//! Expiry is driven by a time-ordered queue per shard: the sweeper pops only entries whose
//! time has come, [`SWEEP_SLICE`] at a time per lock hold, so a sweep never scans live keys
//! and never holds a lock for long, however many keys are live. Every entry with an expiry
//! has at least one queue item due no later than the entry's expiry; an item popped for an
//! entry whose expiry moved later is queued again. Expired entries are also ignored on
//! access, so the sweeper only bounds memory.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::{Mutex, MutexGuard};
use smallvec::SmallVec;

use super::{
    ClaimedTimer, DedupConfirm, Gate, GateMode, GateResult, GateStop, StateError, StateStore,
    Versioned, unix_ms,
};

/// Source of "now" in Unix milliseconds; tests inject a manual clock.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Shards of the key space. Enough that one shard's rehash or sweep slice is short on a
/// store of millions of keys; few enough that an empty store stays small.
pub const SHARDS: usize = 64;
/// Expired entries removed per lock hold by the sweeper.
pub const SWEEP_SLICE: usize = 256;

struct Window {
    window_ms: u64,
    passes: VecDeque<u64>,
}

struct Timer {
    due_ms: u64,
    payload: Vec<u8>,
    claim: Option<(String, u64)>,
}

/// Which map a queued expiry refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Dedup,
    Window,
    Quota,
    Kv,
    Lock,
}

/// A queued expiry: (due ms, map, key), earliest first.
type Due = Reverse<(u64, Kind, String)>;

#[derive(Default)]
struct Shard {
    dedup: HashMap<String, (String, u64)>,
    windows: HashMap<String, Window>,
    /// key → (window start, window end, count)
    quotas: HashMap<String, (u64, u64, u64)>,
    kv: HashMap<String, (Versioned, Option<u64>)>,
    locks: HashMap<String, (String, u64)>,
    expiry: BinaryHeap<Due>,
}

#[derive(Default)]
struct Timers {
    timers: HashMap<String, Timer>,
    claims: u64,
}

/// The in-memory [`StateStore`].
pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    hasher: foldhash::fast::RandomState,
    timers: Mutex<Timers>,
    next_version: AtomicU64,
    clock: Clock,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX / 4)) as u64
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

    fn expires_at(&self) -> u64 {
        self.passes.back().map_or(0, |t| t + self.window_ms)
    }
}

impl Shard {
    fn schedule(&mut self, at: u64, kind: Kind, key: &str) {
        self.expiry.push(Reverse((at, kind, key.to_owned())));
    }

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

    fn apply(&mut self, gate: &Gate, now: u64, mode: GateMode) {
        match gate {
            Gate::Dedup { key, ttl, token } => {
                let exp = now + ms(mode.mark_ttl(*ttl));
                // A key already present keeps its queued expiry (due no later than now).
                if let Some(entry) = self.dedup.get_mut(key) {
                    *entry = (token.clone(), exp);
                } else {
                    self.dedup.insert(key.clone(), (token.clone(), exp));
                    self.schedule(exp, Kind::Dedup, key);
                }
            }
            Gate::Throttle { key, window, .. } => {
                if let Some(w) = self.windows.get_mut(key) {
                    w.passes.push_back(now);
                } else {
                    let w = Window {
                        window_ms: ms(*window),
                        passes: VecDeque::from([now]),
                    };
                    let exp = w.expires_at();
                    self.windows.insert(key.clone(), w);
                    self.schedule(exp, Kind::Window, key);
                }
            }
            Gate::Quota { key, window, .. } => {
                let (start, end) = quota_window(now, ms(*window));
                if let Some(entry) = self.quotas.get_mut(key) {
                    if entry.0 != start {
                        *entry = (start, end, 0);
                    }
                    entry.2 += 1;
                } else {
                    self.quotas.insert(key.clone(), (start, end, 1));
                    self.schedule(end, Kind::Quota, key);
                }
            }
        }
    }

    /// When the entry behind a queued expiry really expires (`None`: it is gone), after
    /// dropping the passes of a window that left it.
    fn current_expiry(&mut self, kind: Kind, key: &str, now: u64) -> Option<u64> {
        match kind {
            Kind::Dedup => self.dedup.get(key).map(|(_, exp)| *exp),
            Kind::Window => self.windows.get_mut(key).map(|w| {
                w.prune(now);
                w.expires_at()
            }),
            Kind::Quota => self.quotas.get(key).map(|(_, end, _)| *end),
            Kind::Kv => self.kv.get(key).map(|(_, exp)| exp.unwrap_or(u64::MAX)),
            Kind::Lock => self.locks.get(key).map(|(_, exp)| *exp),
        }
    }

    fn remove(&mut self, kind: Kind, key: &str) {
        match kind {
            Kind::Dedup => drop(self.dedup.remove(key)),
            Kind::Window => drop(self.windows.remove(key)),
            Kind::Quota => drop(self.quotas.remove(key)),
            Kind::Kv => drop(self.kv.remove(key)),
            Kind::Lock => drop(self.locks.remove(key)),
        }
    }

    /// Handles up to `max` due expiries; returns how many it handled (fewer than `max`:
    /// nothing more is due).
    fn sweep_slice(&mut self, now: u64, max: usize) -> usize {
        let mut handled = 0;
        while handled < max {
            let due = match self.expiry.peek() {
                Some(Reverse((at, _, _))) if *at <= now => self.expiry.pop(),
                _ => break,
            };
            let Some(Reverse((_, kind, key))) = due else {
                break;
            };
            handled += 1;
            match self.current_expiry(kind, &key, now) {
                Some(exp) if exp <= now => self.remove(kind, &key),
                // Renewed or extended meanwhile: due again at its new expiry. A value
                // without expiry needs no item (a later write with a TTL queues one).
                Some(exp) if exp != u64::MAX => self.expiry.push(Reverse((exp, kind, key))),
                _ => {}
            }
        }
        handled
    }

    fn len(&self) -> usize {
        self.dedup.len() + self.windows.len() + self.quotas.len() + self.kv.len() + self.locks.len()
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
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: foldhash::fast::RandomState::default(),
            timers: Mutex::new(Timers::default()),
            next_version: AtomicU64::new(0),
            clock,
        }
    }

    fn shard_of(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) % SHARDS as u64) as usize
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, Shard> {
        self.shards[self.shard_of(key)].lock()
    }

    /// Drops expired entries every `every`, for as long as the store lives. Between slices
    /// of [`SWEEP_SLICE`] entries the task yields, so a large backlog never monopolizes a
    /// worker thread either.
    pub fn start_sweeper(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(store) = weak.upgrade() else { break };
                let now = (store.clock)();
                for shard in store.shards.iter() {
                    while shard.lock().sweep_slice(now, SWEEP_SLICE) == SWEEP_SLICE {
                        tokio::task::yield_now().await;
                    }
                }
            }
        });
    }

    /// Number of live entries of every kind (for tests of boundedness).
    pub fn entry_count(&self) -> usize {
        let keyed: usize = self.shards.iter().map(|s| s.lock().len()).sum();
        keyed + self.timers.lock().timers.len()
    }

    /// Sweeps now, completely (tests).
    pub fn sweep_now(&self) {
        let now = (self.clock)();
        for shard in self.shards.iter() {
            while shard.lock().sweep_slice(now, SWEEP_SLICE) == SWEEP_SLICE {}
        }
    }

    /// Locks the shards of `gates` in ascending order; `slots[i]` is the index in the
    /// returned guards of gate i's shard.
    fn lock_gates(
        &self,
        gates: &[Gate],
    ) -> (SmallVec<[MutexGuard<'_, Shard>; 4]>, SmallVec<[usize; 4]>) {
        let ids: SmallVec<[usize; 4]> = gates.iter().map(|g| self.shard_of(gate_key(g))).collect();
        let mut order = ids.clone();
        order.sort_unstable();
        order.dedup();
        let slots = ids
            .iter()
            .map(|id| order.binary_search(id).unwrap_or(0))
            .collect();
        let guards = order.iter().map(|id| self.shards[*id].lock()).collect();
        (guards, slots)
    }
}

fn gate_key(gate: &Gate) -> &str {
    match gate {
        Gate::Dedup { key, .. } | Gate::Throttle { key, .. } | Gate::Quota { key, .. } => key,
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
        self.run_gates(gates, GateMode::APPLY).await
    }

    async fn run_gates(&self, gates: &[Gate], mode: GateMode) -> Result<GateResult, StateError> {
        let now = (self.clock)();
        let (mut guards, slots) = self.lock_gates(gates);
        for (index, gate) in gates.iter().enumerate() {
            if let Some(reason) = guards[slots[index]].check(gate, now) {
                return Ok(GateResult::Stopped { index, reason });
            }
        }
        if mode != GateMode::Check {
            for (index, gate) in gates.iter().enumerate() {
                guards[slots[index]].apply(gate, now, mode);
            }
        }
        Ok(GateResult::Passed)
    }

    async fn confirm_dedup(&self, marks: &[DedupConfirm]) -> Result<usize, StateError> {
        let now = (self.clock)();
        let mut confirmed = 0;
        for mark in marks {
            let mut shard = self.shard(&mark.key);
            if let Some((token, exp)) = shard.dedup.get_mut(&mark.key)
                && *token == mark.token
                && *exp > now
            {
                *exp += ms(mark.extend);
                confirmed += 1;
            }
        }
        Ok(confirmed)
    }

    async fn release_dedup(&self, key: &str, token: &str) -> Result<bool, StateError> {
        let now = (self.clock)();
        let mut shard = self.shard(key);
        // An expired mark is no longer owned: there is nothing to release.
        let owned = shard
            .dedup
            .get(key)
            .is_some_and(|(t, exp)| t == token && *exp > now);
        if owned {
            shard.dedup.remove(key);
        }
        Ok(owned)
    }

    async fn dedup_exists(&self, key: &str) -> Result<bool, StateError> {
        let now = (self.clock)();
        Ok(self
            .shard(key)
            .dedup
            .get(key)
            .is_some_and(|(_, exp)| *exp > now))
    }

    async fn window_count(&self, key: &str, window: Duration) -> Result<u64, StateError> {
        let now = (self.clock)();
        let shard = self.shard(key);
        let count = shard.windows.get(key).map_or(0, |w| {
            w.passes.iter().filter(|t| **t + ms(window) > now).count()
        });
        Ok(count as u64)
    }

    async fn quota_usage(&self, key: &str, window: Duration) -> Result<u64, StateError> {
        let now = (self.clock)();
        let (start, _) = quota_window(now, ms(window));
        Ok(match self.shard(key).quotas.get(key) {
            Some((s, _, count)) if *s == start => *count,
            _ => 0,
        })
    }

    async fn get(&self, key: &str) -> Result<Option<Versioned>, StateError> {
        let now = (self.clock)();
        let shard = self.shard(key);
        Ok(shard
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
        let mut shard = self.shard(key);
        let current = shard
            .kv
            .get(key)
            .filter(|(_, exp)| exp.is_none_or(|e| e > now))
            .map(|(v, _)| v.version);
        if current != expected {
            return Ok(None);
        }
        let version = self.next_version.fetch_add(1, Ordering::Relaxed) + 1;
        let exp = ttl.map(|t| now + ms(t));
        shard
            .kv
            .insert(key.to_owned(), (Versioned { value, version }, exp));
        if let Some(exp) = exp {
            // Values are not hot: one item per write keeps a shortened TTL exact.
            shard.schedule(exp, Kind::Kv, key);
        }
        Ok(Some(version))
    }

    async fn delete(&self, key: &str) -> Result<bool, StateError> {
        let now = (self.clock)();
        // An expired value counts as absent, as for `get`.
        let removed = self.shard(key).kv.remove(key);
        Ok(removed.is_some_and(|(_, exp)| exp.is_none_or(|e| e > now)))
    }

    async fn try_lock(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool, StateError> {
        let now = (self.clock)();
        let mut shard = self.shard(key);
        let exp = now + ms(ttl);
        match shard.locks.get_mut(key) {
            Some((o, e)) if *e <= now || o == owner => {
                // Taking over or extending only moves the expiry later: the queued item
                // stays due in time.
                *o = owner.to_owned();
                *e = exp;
                Ok(true)
            }
            Some(_) => Ok(false),
            None => {
                shard.locks.insert(key.to_owned(), (owner.to_owned(), exp));
                shard.schedule(exp, Kind::Lock, key);
                Ok(true)
            }
        }
    }

    async fn unlock(&self, key: &str, owner: &str) -> Result<bool, StateError> {
        let now = (self.clock)();
        let mut shard = self.shard(key);
        let held = shard
            .locks
            .get(key)
            .is_some_and(|(o, exp)| o == owner && *exp > now);
        if held {
            shard.locks.remove(key);
        }
        Ok(held)
    }

    async fn schedule_timer(
        &self,
        id: &str,
        due_unix_ms: u64,
        payload: Vec<u8>,
    ) -> Result<(), StateError> {
        self.timers.lock().timers.insert(
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
        let mut guard = self.timers.lock();
        let Timers { timers, claims } = &mut *guard;
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
        let mut guard = self.timers.lock();
        let owned = guard
            .timers
            .get(id)
            .and_then(|t| t.claim.as_ref())
            .is_some_and(|(c, _)| c == claim);
        if owned {
            guard.timers.remove(id);
        }
        Ok(owned)
    }
}
