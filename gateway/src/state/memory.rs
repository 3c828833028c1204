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
//!
//! Timers are indexed by when each may next be claimed (its due time, or the end of its
//! claim's lease), so a poll of [`StateStore::claim_due_timers`] reads only the timers it
//! claims, however many are pending. Groups, state-machine events and their active sets
//! ("parked" state) live behind one mutex of their own with an expiry queue like the
//! shards'; a call that needs several locks takes them in the order gate shards, parked
//! state, timers.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::{Mutex, MutexGuard};
use smallvec::SmallVec;

use super::{
    ClaimedTimer, DedupConfirm, DeferResult, Deferral, EventInfo, Gate, GateMode, GateResult,
    GateStop, GroupAppend, GroupBatch, GroupInfo, ListedTimer, MAX_GROUP_FINGERPRINTS,
    StateAnswers, StateError, StateRead, StateStore, Transition, TransitionResult, Versioned,
    dedup_token_time, unix_ms,
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
    /// (claim, lease end in the claimer's clock).
    claim: Option<(String, u64)>,
}

impl Timer {
    /// When the timer may next be claimed: when due, and not before its lease ends.
    fn ready_at(&self) -> u64 {
        self.claim
            .as_ref()
            .map_or(self.due_ms, |(_, until)| (*until).max(self.due_ms))
    }
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
    /// Rate-limited streams: key → the next free slot (Unix µs). One per rate-limited
    /// provider, so never swept.
    rate_slots: HashMap<String, u64>,
    expiry: BinaryHeap<Due>,
}

#[derive(Default)]
struct Timers {
    timers: HashMap<String, Timer>,
    /// (ready at, id) of every timer: a poll reads the claimable ones in order and stops.
    ready: BTreeSet<(u64, String)>,
    claims: u64,
}

impl Timers {
    /// Registers or replaces a timer (a claim on the old one ends).
    fn put(&mut self, id: &str, due_ms: u64, payload: Vec<u8>) {
        self.remove(id);
        self.ready.insert((due_ms, id.to_owned()));
        let timer = Timer {
            due_ms,
            payload,
            claim: None,
        };
        self.timers.insert(id.to_owned(), timer);
    }

    fn remove(&mut self, id: &str) -> Option<Timer> {
        let timer = self.timers.remove(id)?;
        self.ready.remove(&(timer.ready_at(), id.to_owned()));
        Some(timer)
    }

    fn exists(&self, id: &str) -> bool {
        self.timers.contains_key(id)
    }

    fn claimed(&self, id: &str) -> bool {
        self.timers.get(id).is_some_and(|t| t.claim.is_some())
    }

    fn claimed_by(&self, id: &str, claim: &str) -> bool {
        self.timers
            .get(id)
            .and_then(|t| t.claim.as_ref())
            .is_some_and(|(c, _)| c == claim)
    }

    /// Sets the claim and due time of an existing timer (payload kept), keeping the index.
    fn update(&mut self, id: &str, due_ms: u64, claim: Option<(String, u64)>) {
        let Some(timer) = self.timers.get_mut(id) else {
            return;
        };
        self.ready.remove(&(timer.ready_at(), id.to_owned()));
        timer.due_ms = due_ms;
        timer.claim = claim;
        self.ready.insert((timer.ready_at(), id.to_owned()));
    }

    /// Moves an existing timer to `due_ms`, unclaimed, payload kept.
    fn rearm(&mut self, id: &str, due_ms: u64) {
        self.update(id, due_ms, None);
    }

    /// Ends the claim `claim` of timer `id` if it still holds (the timer is claimable again
    /// at its due time).
    fn release(&mut self, id: &str, claim: &str) -> bool {
        let due = match self.timers.get(id) {
            Some(t) if t.claim.as_ref().is_some_and(|(c, _)| c == claim) => t.due_ms,
            _ => return false,
        };
        self.update(id, due, None);
        true
    }

    /// Claims up to `max` timers ready at `now`, oldest first.
    fn claim(&mut self, now: u64, max: usize, lease_ms: u64) -> Vec<ClaimedTimer> {
        let upper = match now.checked_add(1) {
            Some(next) => Bound::Excluded((next, String::new())),
            None => Bound::Unbounded,
        };
        let ready: Vec<String> = self
            .ready
            .range((Bound::Unbounded, upper))
            .take(max)
            .map(|(_, id)| id.clone())
            .collect();
        let mut out = Vec::with_capacity(ready.len());
        for id in ready {
            let Some((due, payload)) = self.timers.get(&id).map(|t| (t.due_ms, t.payload.clone()))
            else {
                continue;
            };
            self.claims += 1;
            let claim = format!("c{}", self.claims);
            let until = now.saturating_add(lease_ms);
            self.update(&id, due, Some((claim.clone(), until)));
            out.push(ClaimedTimer {
                id,
                payload,
                claim,
                due_ms: due,
            });
        }
        out
    }
}

/// A group's notification: the pending events moved out for sending, or the last one sent.
#[derive(Clone)]
struct Batch {
    events: Vec<Vec<u8>>,
    count: u64,
    last_event_ms: u64,
}

struct Group {
    group_id: String,
    meta: Vec<u8>,
    /// The flush timer; the group counts as armed while it exists and `notify_at` is set.
    timer_id: String,
    notify_at: Option<u64>,
    /// The newest kept pending events, oldest first, and how many arrived (kept or not).
    pending: VecDeque<Vec<u8>>,
    pending_count: u64,
    in_flight: Option<Batch>,
    last: Option<Batch>,
    last_flush_ms: Option<u64>,
    last_event_ms: u64,
    idle_ttl_ms: u64,
    /// Idle expiry; an armed group never expires.
    expires_at: u64,
    /// Fingerprints of the events of a repeating group, and its last refresh.
    seen: HashSet<String>,
    /// A refresh arrived since the last flush ended.
    refreshed: bool,
}

impl Group {
    fn armed(&self, timers: &Timers) -> bool {
        self.notify_at.is_some() && timers.exists(&self.timer_id)
    }

    fn live(&self, now: u64, timers: &Timers) -> bool {
        self.expires_at > now || self.armed(timers)
    }

    /// Whether the event is a refresh of one the repeating group holds; else remembers it
    /// (bounded: a fingerprint over the limit is not remembered).
    fn known(&mut self, a: &GroupAppend) -> bool {
        let Some(fp) = a.identity() else {
            return false;
        };
        if self.seen.contains(fp) {
            return true;
        }
        if self.seen.len() < MAX_GROUP_FINGERPRINTS {
            self.seen.insert(fp.to_owned());
        }
        false
    }

    /// Arms (or brings forward) the flush timer for a new event: `wait` after the group
    /// started, else `interval` after the last notification.
    fn arm_for_news(&mut self, a: &GroupAppend, now: u64, timers: &mut Timers) {
        let due = match self.last_flush_ms {
            Some(last) => now.max(last.saturating_add(ms(a.interval))),
            None => now.saturating_add(ms(a.wait)),
        };
        if !self.armed(timers) {
            // New, flushed since, or its timer vanished.
            self.arm(a, due, timers);
        } else if self.last_flush_ms.is_some()
            && self.notify_at.is_some_and(|at| at > due)
            && self.in_flight.is_none()
            && !timers.claimed(&self.timer_id)
        {
            // Waiting for a repeat: news go out after `interval`.
            timers.rearm(&self.timer_id, due);
            self.notify_at = Some(due);
        }
    }

    /// A repeating group's known event arrived again: the group is still active.
    fn refresh(&mut self, a: &GroupAppend, now: u64, timers: &mut Timers) {
        self.refreshed = true;
        if !self.armed(timers) {
            let due = match (self.last_flush_ms, a.repeat) {
                (Some(last), Some(repeat)) => now.max(last.saturating_add(ms(repeat))),
                // Not flushed yet (its timer vanished): as for news.
                _ => now.saturating_add(ms(a.wait)),
            };
            self.arm(a, due, timers);
        }
    }

    fn arm(&mut self, a: &GroupAppend, due: u64, timers: &mut Timers) {
        timers.put(&a.timer_id, due, a.timer_payload.clone());
        self.timer_id = a.timer_id.clone();
        self.notify_at = Some(due);
    }

    fn info(&self, key: &str, timers: &Timers) -> GroupInfo {
        GroupInfo {
            key: key.to_owned(),
            group_id: self.group_id.clone(),
            meta: self.meta.clone(),
            pending: self.pending_count,
            notify_at_ms: self.notify_at.filter(|_| self.armed(timers)),
            last_flush_ms: self.last_flush_ms,
            last_event_ms: self.last_event_ms,
        }
    }
}

impl Batch {
    fn to_batch(&self, group: &Group, repeat: bool) -> GroupBatch {
        GroupBatch {
            group_id: group.group_id.clone(),
            meta: group.meta.clone(),
            events: self.events.clone(),
            event_count: self.count,
            repeat,
            last_event_ms: self.last_event_ms,
        }
    }
}

struct Event {
    fingerprint: String,
    state: String,
    record: Vec<u8>,
    changed_ms: u64,
    timeout: Option<(String, u64)>,
    expires_at: u64,
}

/// Which parked map a queued expiry refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum ParkedKind {
    Group,
    Event,
    /// A member (the item's second string) of an active set.
    Member,
}

/// A queued parked expiry: (due ms, map, key, set member or empty), earliest first.
type ParkedDue = Reverse<(u64, ParkedKind, String, String)>;

/// Groups, state-machine events and active sets.
#[derive(Default)]
struct Parked {
    groups: BTreeMap<String, Group>,
    events: BTreeMap<String, Event>,
    /// set key → member (event key) → expiry (its event's).
    sets: HashMap<String, HashMap<String, u64>>,
    expiry: BinaryHeap<ParkedDue>,
}

/// An armed group is looked at again this often by the sweeper (its timer may vanish).
const ARMED_RECHECK_MS: u64 = 60_000;

/// The in-memory [`StateStore`].
pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    hasher: foldhash::fast::RandomState,
    parked: Mutex<Parked>,
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

    fn dedup_live(&self, key: &str, now: u64) -> bool {
        self.dedup.get(key).is_some_and(|(_, exp)| *exp > now)
    }

    fn dedup_set_within(&self, key: &str, within: u64, now: u64) -> bool {
        self.dedup.get(key).is_some_and(|(token, exp)| {
            *exp > now && dedup_token_time(token).is_none_or(|set| set.saturating_add(within) > now)
        })
    }

    fn window_count(&self, key: &str, window: Duration, now: u64) -> u64 {
        self.windows.get(key).map_or(0, |w| {
            w.passes.iter().filter(|t| **t + ms(window) > now).count() as u64
        })
    }

    fn len(&self) -> usize {
        self.dedup.len() + self.windows.len() + self.quotas.len() + self.kv.len() + self.locks.len()
    }
}

impl Parked {
    fn defer(&mut self, deferral: &Deferral, now: u64, timers: &mut Timers) -> DeferResult {
        match deferral {
            Deferral::Timer(t) => {
                timers.put(&t.id, t.due_unix_ms, t.payload.clone());
                DeferResult::Timer
            }
            Deferral::GroupAppend(a) => self.append(a, now, timers),
            Deferral::Transition(t) => DeferResult::Transition(self.transition(t, now, timers)),
        }
    }

    fn event_in_state(&self, key: &str, state: &str, now: u64) -> bool {
        self.events
            .get(key)
            .is_some_and(|e| e.expires_at > now && e.state == state)
    }

    /// The live group at `key` (an expired one is as good as absent).
    fn live_group(&mut self, key: &str, now: u64, timers: &Timers) -> Option<&mut Group> {
        self.groups.get_mut(key).filter(|g| g.live(now, timers))
    }

    fn append(&mut self, a: &GroupAppend, now: u64, timers: &mut Timers) -> DeferResult {
        let mut created = false;
        let group = self.groups.entry(a.key.clone()).or_insert_with(|| {
            created = true;
            new_group(a)
        });
        if !group.live(now, timers) {
            // Expired: as good as absent, a new group starts.
            *group = new_group(a);
            created = true;
        }
        if group.known(a) {
            group.refresh(a, now, timers);
        } else {
            group.arm_for_news(a, now, timers);
            group.pending.push_back(a.event.clone());
            while group.pending.len() > a.max_events.max(1) {
                group.pending.pop_front();
            }
            group.pending_count += 1;
        }
        group.last_event_ms = now;
        group.idle_ttl_ms = ms(a.idle_ttl);
        group.expires_at = now.saturating_add(group.idle_ttl_ms);
        let result = DeferResult::Grouped {
            group_id: group.group_id.clone(),
            size: group.pending_count,
            notify_at_ms: group.notify_at.unwrap_or(now),
        };
        if created {
            // Looked at again while armed, in case its timer vanishes without a flush.
            let at = now.saturating_add(ms(a.idle_ttl).max(ARMED_RECHECK_MS));
            self.queue(at, ParkedKind::Group, &a.key, "");
        }
        result
    }

    fn flush_begin(&mut self, key: &str, now: u64, timers: &Timers) -> Option<GroupBatch> {
        let group = self.live_group(key, now, timers)?;
        if let Some(batch) = &group.in_flight {
            return Some(batch.to_batch(group, false));
        }
        if group.pending_count > 0 {
            let batch = Batch {
                events: group.pending.drain(..).collect(),
                count: std::mem::take(&mut group.pending_count),
                last_event_ms: group.last_event_ms,
            };
            let out = batch.to_batch(group, false);
            group.in_flight = Some(batch);
            return Some(out);
        }
        // A repeat only while the group is still active: refreshed since its last flush.
        let last = group.last.as_ref().filter(|_| group.refreshed)?;
        Some(last.to_batch(group, true))
    }

    fn flush_end(&mut self, key: &str, end: &FlushEnd<'_>, now: u64, timers: &mut Timers) {
        let Some(group) = self.live_group(key, now, timers) else {
            // No group behind the timer: nothing to send ever again.
            timers.remove(end.timer_id);
            return;
        };
        let sent = group.in_flight.take();
        group.last = match end.repeat_at_ms {
            Some(_) => sent.or(group.last.take()),
            None => None,
        };
        group.last_flush_ms = Some(now);
        group.refreshed = false;
        group.timer_id = end.timer_id.to_owned();
        let next = if group.pending_count > 0 {
            Some(now.saturating_add(ms(end.interval)))
        } else {
            end.repeat_at_ms
        };
        group.notify_at = next;
        if let Some(due) = next {
            timers.rearm(end.timer_id, due);
            return;
        }
        timers.remove(end.timer_id);
        group.expires_at = now.saturating_add(group.idle_ttl_ms);
        let at = group.expires_at;
        self.queue(at, ParkedKind::Group, key, "");
    }

    fn transition(&mut self, t: &Transition, now: u64, timers: &mut Timers) -> TransitionResult {
        let stored = self.events.get(&t.key).filter(|e| e.expires_at > now);
        // An event in a terminal state is finished: a move starts a new lifecycle.
        let live = stored.filter(|e| !t.terminal.contains(&e.state));
        let current = live.map_or_else(|| t.initial.clone(), |e| e.state.clone());
        let Some(to) = t.to.as_ref() else {
            return TransitionResult::Unchanged { current };
        };
        if let Some(required) = &t.require_timer {
            let armed = live.and_then(|e| e.timeout.as_ref()).map(|(id, _)| id);
            if armed != Some(required) {
                return TransitionResult::Unchanged { current };
            }
        }
        if *to == current {
            // Recorded in the initial state only when it has no record (or a finished one).
            if live.is_some() {
                return TransitionResult::Unchanged { current };
            }
        } else if !t.allowed_from.contains(&current) {
            return TransitionResult::Refused { current };
        }
        let previous_timeout = stored
            .and_then(|e| e.timeout.as_ref())
            .map(|(id, _)| id.clone());
        let previous_expiry = stored.map(|e| e.expires_at);
        // The timer that fired (`require_timer`) is its claimant's to complete.
        if let Some(id) = previous_timeout
            && t.require_timer.is_none()
        {
            timers.remove(&id);
        }
        if let Some(w) = &t.timeout {
            timers.put(&w.id, w.due_unix_ms, w.payload.clone());
        }
        if let Some(n) = &t.notice
            && *to != current
            && n.from.contains(&current)
        {
            timers.put(&n.timer.id, n.timer.due_unix_ms, n.timer.payload.clone());
        }
        let expires_at = now.saturating_add(ms(t.ttl));
        self.events.insert(
            t.key.clone(),
            Event {
                fingerprint: t.fingerprint.clone(),
                state: to.clone(),
                record: t.record.clone(),
                changed_ms: now,
                timeout: t.timeout.as_ref().map(|w| (w.id.clone(), w.due_unix_ms)),
                expires_at,
            },
        );
        // A queued item due no later than the expiry already covers it.
        if previous_expiry.is_none_or(|old| expires_at < old) {
            self.queue(expires_at, ParkedKind::Event, &t.key, "");
        }
        for set in &t.active_sets {
            self.set_member(set, &t.key, (!t.to_terminal).then_some(expires_at));
        }
        TransitionResult::Changed { previous: current }
    }

    /// Adds (`Some(expiry)`) or removes (`None`) a member of an active set.
    fn set_member(&mut self, set: &str, member: &str, expiry: Option<u64>) {
        let Some(expires_at) = expiry else {
            if let Some(members) = self.sets.get_mut(set) {
                members.remove(member);
                if members.is_empty() {
                    self.sets.remove(set);
                }
            }
            return;
        };
        let members = self.sets.entry(set.to_owned()).or_default();
        let old = members.insert(member.to_owned(), expires_at);
        if old.is_none_or(|old| expires_at < old) {
            self.queue(expires_at, ParkedKind::Member, set, member);
        }
    }

    fn set_not_empty(&self, set: &str, now: u64) -> bool {
        self.sets
            .get(set)
            .is_some_and(|members| members.values().any(|exp| *exp > now))
    }

    fn live_event(&self, key: &str, now: u64) -> Option<&Event> {
        self.events.get(key).filter(|e| e.expires_at > now)
    }

    fn queue(&mut self, at: u64, kind: ParkedKind, key: &str, member: &str) {
        self.expiry
            .push(Reverse((at, kind, key.to_owned(), member.to_owned())));
    }

    /// Handles up to `max` due expiries (see [`Shard::sweep_slice`]).
    fn sweep_slice(&mut self, now: u64, max: usize, timers: &Timers) -> usize {
        let mut handled = 0;
        while handled < max {
            let due = match self.expiry.peek() {
                Some(Reverse((at, ..))) if *at <= now => self.expiry.pop(),
                _ => break,
            };
            let Some(Reverse((_, kind, key, member))) = due else {
                break;
            };
            handled += 1;
            if let Some(again) = self.expire(kind, &key, &member, now, timers) {
                self.expiry.push(Reverse((again, kind, key, member)));
            }
        }
        handled
    }

    /// Removes the entry behind a due item if it expired; else when to look again.
    fn expire(
        &mut self,
        kind: ParkedKind,
        key: &str,
        member: &str,
        now: u64,
        timers: &Timers,
    ) -> Option<u64> {
        let expiry = match kind {
            ParkedKind::Group => self.groups.get(key).map(|g| {
                if g.armed(timers) {
                    // Never expires while armed; its timer may still vanish without a flush.
                    now.saturating_add(g.idle_ttl_ms.max(ARMED_RECHECK_MS))
                } else {
                    g.expires_at
                }
            }),
            ParkedKind::Event => self.events.get(key).map(|e| e.expires_at),
            ParkedKind::Member => self.sets.get(key).and_then(|m| m.get(member)).copied(),
        }?;
        if expiry > now {
            return Some(expiry);
        }
        match kind {
            ParkedKind::Group => drop(self.groups.remove(key)),
            ParkedKind::Event => drop(self.events.remove(key)),
            ParkedKind::Member => self.set_member(key, member, None),
        }
        None
    }

    fn len(&self) -> usize {
        let members: usize = self.sets.values().map(HashMap::len).sum();
        self.groups.len() + self.events.len() + members
    }
}

/// The arguments of `group_flush_end` that decide what follows a flush.
struct FlushEnd<'a> {
    timer_id: &'a str,
    interval: Duration,
    repeat_at_ms: Option<u64>,
}

fn new_group(a: &GroupAppend) -> Group {
    Group {
        group_id: a.group_id.clone(),
        meta: a.meta.clone(),
        timer_id: a.timer_id.clone(),
        notify_at: None,
        pending: VecDeque::new(),
        pending_count: 0,
        in_flight: None,
        last: None,
        last_flush_ms: None,
        last_event_ms: 0,
        idle_ttl_ms: ms(a.idle_ttl),
        expires_at: 0,
        seen: HashSet::new(),
        refreshed: false,
    }
}

fn event_info(key: &str, e: &Event) -> EventInfo {
    EventInfo {
        key: key.to_owned(),
        fingerprint: e.fingerprint.clone(),
        state: e.state.clone(),
        record: e.record.clone(),
        changed_ms: e.changed_ms,
        timeout: e.timeout.clone(),
    }
}

/// The entries of `map` whose key starts with `prefix`, in key order.
fn with_prefix<'a, V>(
    map: &'a BTreeMap<String, V>,
    prefix: &'a str,
) -> impl Iterator<Item = (&'a String, &'a V)> + 'a {
    map.range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
        .take_while(move |(k, _)| k.starts_with(prefix))
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
            parked: Mutex::new(Parked::default()),
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
                while store.sweep_parked(now) == SWEEP_SLICE {
                    tokio::task::yield_now().await;
                }
            }
        });
    }

    /// Number of live entries of every kind (for tests of boundedness).
    pub fn entry_count(&self) -> usize {
        let keyed: usize = self.shards.iter().map(|s| s.lock().len()).sum();
        keyed + self.parked.lock().len() + self.timers.lock().timers.len()
    }

    /// Sweeps now, completely (tests).
    pub fn sweep_now(&self) {
        let now = (self.clock)();
        for shard in self.shards.iter() {
            while shard.lock().sweep_slice(now, SWEEP_SLICE) == SWEEP_SLICE {}
        }
        while self.sweep_parked(now) == SWEEP_SLICE {}
    }

    /// One slice of the parked state's sweep.
    fn sweep_parked(&self, now: u64) -> usize {
        let mut parked = self.parked.lock();
        let timers = self.timers.lock();
        parked.sweep_slice(now, SWEEP_SLICE, &timers)
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
        self.run_gates_and_defer(gates, mode, &[])
            .await
            .map(|(result, _)| result)
    }

    async fn run_gates_and_defer(
        &self,
        gates: &[Gate],
        mode: GateMode,
        deferrals: &[Deferral],
    ) -> Result<(GateResult, Vec<DeferResult>), StateError> {
        let now = (self.clock)();
        // The gate shards stay locked until the deferrals are made: one atomic step.
        let (mut guards, slots) = self.lock_gates(gates);
        for (index, gate) in gates.iter().enumerate() {
            if let Some(reason) = guards[slots[index]].check(gate, now) {
                return Ok((GateResult::Stopped { index, reason }, Vec::new()));
            }
        }
        if mode != GateMode::Check {
            for (index, gate) in gates.iter().enumerate() {
                guards[slots[index]].apply(gate, now, mode);
            }
        }
        if deferrals.is_empty() {
            return Ok((GateResult::Passed, Vec::new()));
        }
        let mut parked = self.parked.lock();
        let mut timers = self.timers.lock();
        let results = deferrals
            .iter()
            .map(|d| parked.defer(d, now, &mut timers))
            .collect();
        Ok((GateResult::Passed, results))
    }

    async fn group_flush_begin(&self, key: &str) -> Result<Option<GroupBatch>, StateError> {
        let now = (self.clock)();
        let mut parked = self.parked.lock();
        let timers = self.timers.lock();
        Ok(parked.flush_begin(key, now, &timers))
    }

    async fn group_flush_end(
        &self,
        key: &str,
        timer_id: &str,
        claim: &str,
        interval: Duration,
        repeat_at_ms: Option<u64>,
    ) -> Result<bool, StateError> {
        let now = (self.clock)();
        let mut parked = self.parked.lock();
        let mut timers = self.timers.lock();
        if !timers.claimed_by(timer_id, claim) {
            return Ok(false);
        }
        let end = FlushEnd {
            timer_id,
            interval,
            repeat_at_ms,
        };
        parked.flush_end(key, &end, now, &mut timers);
        Ok(true)
    }

    async fn get_group(&self, key: &str) -> Result<Option<GroupInfo>, StateError> {
        let now = (self.clock)();
        let parked = self.parked.lock();
        let timers = self.timers.lock();
        Ok(parked
            .groups
            .get(key)
            .filter(|g| g.live(now, &timers))
            .map(|g| g.info(key, &timers)))
    }

    async fn list_groups(&self, prefix: &str, limit: usize) -> Result<Vec<GroupInfo>, StateError> {
        let now = (self.clock)();
        let parked = self.parked.lock();
        let timers = self.timers.lock();
        Ok(with_prefix(&parked.groups, prefix)
            .filter(|(_, g)| g.live(now, &timers))
            .take(limit)
            .map(|(k, g)| g.info(k, &timers))
            .collect())
    }

    async fn get_event(&self, key: &str) -> Result<Option<EventInfo>, StateError> {
        let now = (self.clock)();
        let parked = self.parked.lock();
        Ok(parked.live_event(key, now).map(|e| event_info(key, e)))
    }

    async fn list_events(&self, prefix: &str, limit: usize) -> Result<Vec<EventInfo>, StateError> {
        let now = (self.clock)();
        let parked = self.parked.lock();
        Ok(with_prefix(&parked.events, prefix)
            .filter(|(_, e)| e.expires_at > now)
            .take(limit)
            .map(|(k, e)| event_info(k, e))
            .collect())
    }

    async fn read_state(&self, reads: &[StateRead]) -> Result<StateAnswers, StateError> {
        let now = (self.clock)();
        Ok(reads
            .iter()
            .map(|read| match read {
                StateRead::SetNotEmpty { key } => {
                    u64::from(self.parked.lock().set_not_empty(key, now))
                }
                StateRead::DedupSeen { key } => u64::from(self.shard(key).dedup_live(key, now)),
                StateRead::DedupSeenWithin { key, within } => {
                    u64::from(self.shard(key).dedup_set_within(key, ms(*within), now))
                }
                StateRead::EventInState { key, state } => {
                    u64::from(self.parked.lock().event_in_state(key, state, now))
                }
                StateRead::WindowCount { key, window } => {
                    self.shard(key).window_count(key, *window, now)
                }
            })
            .collect())
    }

    async fn pending_timers(&self) -> Result<u64, StateError> {
        Ok(self.timers.lock().timers.len() as u64)
    }

    async fn release_timers(&self, claims: &[(String, String)]) -> Result<usize, StateError> {
        let mut timers = self.timers.lock();
        Ok(claims
            .iter()
            .filter(|(id, claim)| timers.release(id, claim))
            .count())
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
        Ok(self.shard(key).dedup_live(key, now))
    }

    async fn window_count(&self, key: &str, window: Duration) -> Result<u64, StateError> {
        let now = (self.clock)();
        Ok(self.shard(key).window_count(key, window, now))
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

    async fn reserve_slot(
        &self,
        key: &str,
        interval: Duration,
        max_wait: Duration,
    ) -> Result<Option<Duration>, StateError> {
        let now = (self.clock)().saturating_mul(1000);
        let mut shard = self.shard(key);
        let next = shard.rate_slots.get(key).copied().unwrap_or(0).max(now);
        let wait = next - now;
        if u128::from(wait) > max_wait.as_micros() {
            return Ok(None);
        }
        let step = u64::try_from(interval.as_micros()).unwrap_or(u64::MAX);
        shard
            .rate_slots
            .insert(key.to_owned(), next.saturating_add(step));
        Ok(Some(Duration::from_micros(wait)))
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
        self.timers.lock().put(id, due_unix_ms, payload);
        Ok(())
    }

    async fn claim_due_timers(
        &self,
        now_unix_ms: u64,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedTimer>, StateError> {
        Ok(self.timers.lock().claim(now_unix_ms, max, ms(lease)))
    }

    async fn complete_timer(&self, id: &str, claim: &str) -> Result<bool, StateError> {
        let mut timers = self.timers.lock();
        let owned = timers.claimed_by(id, claim);
        if owned {
            timers.remove(id);
        }
        Ok(owned)
    }

    async fn get_timer(&self, id: &str) -> Result<Option<(u64, Vec<u8>)>, StateError> {
        let timers = self.timers.lock();
        Ok(timers.timers.get(id).map(|t| (t.due_ms, t.payload.clone())))
    }

    async fn delete_timer(&self, id: &str) -> Result<bool, StateError> {
        Ok(self.timers.lock().remove(id).is_some())
    }

    async fn list_timers(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ListedTimer>, StateError> {
        let timers = self.timers.lock();
        let mut found: Vec<ListedTimer> = timers
            .timers
            .iter()
            .filter(|(id, _)| id.starts_with(prefix) && after.is_none_or(|a| id.as_str() > a))
            .map(|(id, t)| ListedTimer {
                id: id.clone(),
                due_ms: t.due_ms,
                payload: t.payload.clone(),
            })
            .collect();
        drop(timers);
        found.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        found.truncate(limit);
        Ok(found)
    }

    async fn advance_timer(
        &self,
        id: &str,
        claim: &str,
        due_unix_ms: u64,
        payload: Vec<u8>,
        hold: Option<Duration>,
    ) -> Result<bool, StateError> {
        let mut timers = self.timers.lock();
        let owned = timers.claimed_by(id, claim);
        if owned {
            timers.put(id, due_unix_ms, payload);
            if let Some(lease) = hold {
                let until = unix_ms().saturating_add(ms(lease));
                timers.update(id, due_unix_ms, Some((claim.to_owned(), until)));
            }
        }
        Ok(owned)
    }
}
