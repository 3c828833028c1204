//! Writes that park an action (group, schedule, state machine) and the worker's side of them.
//!
//! A dispatch's deferrals are made by [`super::StateStore::run_gates_and_defer`] in the same
//! atomic backend call as its gates: made only if every gate passed (and then the gates are
//! applied too), so a rejected dispatch writes nothing and an accepted one is never
//! half-recorded. The worker later claims the timers they armed (see
//! [`super::StateStore::claim_due_timers`]) and uses the group and event operations below.
//!
//! Keys are built by the caller (escaped, scoped by namespace and tenant); payloads are
//! opaque bytes to the backend (JSON written by the gateway). Listings match keys by literal
//! prefix (no wildcard of any backend applies) and answer in byte order of the keys.
//!
//! Times: "now" is the backend's clock (as for gates: one clock for every replica), except
//! the due times of [`TimerWrite`]s, which are the caller's, as for
//! [`super::StateStore::schedule_timer`]. A group's flush timer and a transition's timeout
//! are ordinary timers: the worker claims them with the other timers.
//!
//! Expiry: a group or event whose time has passed reads as absent everywhere (not got, not
//! listed, not counted in a set); the next append or transition starts it anew.

use std::time::Duration;

/// A timer to register (replacing a timer of the same id, claimed or not).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimerWrite {
    pub id: String,
    pub due_unix_ms: u64,
    pub payload: Vec<u8>,
}

/// One write of a dispatch, made only when all its gates pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Deferral {
    /// Register a timer (`schedule` rules).
    Timer(TimerWrite),
    /// Append an event to a group, arming the group's flush timer if none is armed.
    GroupAppend(GroupAppend),
    /// Move (or read) a state-machine event.
    Transition(Transition),
}

/// Append `event` to the group at `key`.
///
/// - A group that does not exist is created with `group_id` and `meta` (both kept as they
///   were at creation), and its flush timer `timer_id` is armed at now + `wait`.
/// - A group with a timer armed (a notification is pending, or being sent) only gains the
///   event: `notify_at` is the armed time.
/// - A group that exists but has no timer armed (it was flushed and nothing arrived since)
///   arms the timer at max(now, last flush + `interval`) (now + `wait` if it never flushed).
///
/// "Armed" means the group's flush timer exists: a group whose timer was removed other than
/// by `group_flush_end` (say by `complete_timer`) counts as idle, so the next append arms a
/// timer again rather than waiting forever. While a batch is in flight the timer is armed
/// (claimed): an append then answers the armed time, and the event goes into the next
/// notification, which `group_flush_end` arms at its end + `interval`.
///
/// The group keeps its newest `max_events` events (at least one; older ones are dropped,
/// still counted in `event_count`). Every append refreshes the group's expiry to `idle_ttl`
/// from now; a group whose timer is armed never expires before the timer completed, and a
/// flush that leaves it idle gives it `idle_ttl` from that flush.
///
/// **Repeating groups** (`repeat` set, Alertmanager's `repeat_interval`): events are told
/// apart by their `fingerprint` (events without one are always new). The group remembers
/// the fingerprints of its events (at most [`MAX_GROUP_FINGERPRINTS`]; later ones are not
/// remembered, so they always count as new). An event whose fingerprint the group already
/// holds is a *refresh*: it is not pending (no notification for it, `size` unchanged); it
/// marks the group as still active, so the worker repeats the last notification at its
/// armed time (see [`super::StateStore::group_flush_begin`]); an idle group it finds is
/// armed at max(now, last flush + `repeat`). A new event of a group whose timer waits
/// (armed, neither claimed nor sending) for a later time than max(now, last flush +
/// `interval`) brings the timer forward to that time: a repeat timer never delays news.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupAppend {
    pub key: String,
    pub group_id: String,
    pub meta: Vec<u8>,
    pub event: Vec<u8>,
    pub max_events: usize,
    pub wait: Duration,
    pub interval: Duration,
    pub idle_ttl: Duration,
    pub timer_id: String,
    /// Payload of the flush timer when this append arms it.
    pub timer_payload: Vec<u8>,
    /// The event's identity, for repeating groups.
    pub fingerprint: Option<String>,
    /// The group's repeat interval: set for repeating groups only.
    pub repeat: Option<Duration>,
}

/// Most fingerprints a repeating group remembers (see [`GroupAppend`]).
pub const MAX_GROUP_FINGERPRINTS: usize = 1000;

impl GroupAppend {
    /// The fingerprint to tell this event apart by, when its group repeats.
    pub fn identity(&self) -> Option<&str> {
        self.repeat
            .and(self.fingerprint.as_deref())
            .filter(|f| !f.is_empty())
    }
}

/// Move the state-machine event at `key` to `to`.
///
/// The current state is the stored one, or `initial` for an event never seen (or expired)
/// or finished: an event whose stored state is one of `terminal` has ended its lifecycle,
/// so a move starts a new one from `initial` (its old record is replaced by the change, if
/// any, and kept by a refusal). Then:
/// - `to` is `None`: nothing changes ([`TransitionResult::Unchanged`]);
/// - `require_timer` is set and the event's armed timeout is not that timer id (the state was
///   left, or re-entered, since that timeout was armed; an absent or finished event has none):
///   nothing changes (`Unchanged`);
/// - `to` equals the current state: nothing changes (`Unchanged`) for a live event; an event
///   with no record (never seen, expired or finished) is recorded in `initial` as a change
///   would record it, `allowed_from` not consulted, and the answer is
///   [`TransitionResult::Changed`] with `previous` = `initial` (= `to`: the one answer whose
///   previous state is the new one);
/// - the current state is not in `allowed_from` (an empty list allows nothing): nothing
///   changes ([`TransitionResult::Refused`]);
/// - otherwise the state becomes `to` ([`TransitionResult::Changed`]): the event's previous
///   timeout timer, if any, is removed (except the `require_timer` one: the worker that
///   claimed it completes it, so a lost claim still means what it says); `timeout`, if given, is registered and remembered as
///   the event's armed timeout; `record` replaces the stored record bytes; the event (its
///   `key`: fingerprints may repeat across tenants) joins every set in `active_sets` if
///   `to_terminal` is false and leaves them if it is true; the event expires `ttl` after
///   this change (a later change refreshes it), and its set memberships with it. When the
///   move changes the state from one of `notice.from` (to another state), `notice.timer`
///   is registered in the same call: the move's notification, sent by the worker.
///
/// Several transitions of one key in one call apply in order, each seeing the one before.
/// An expired event is absent: its state is `initial` again and it has no armed timeout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub key: String,
    pub fingerprint: String,
    pub initial: String,
    pub to: Option<String>,
    pub allowed_from: Vec<String>,
    pub require_timer: Option<String>,
    pub timeout: Option<TimerWrite>,
    pub to_terminal: bool,
    /// The machine's terminal states: an event stored in one of them is finished.
    pub terminal: Vec<String>,
    pub active_sets: Vec<String>,
    pub record: Vec<u8>,
    pub ttl: Duration,
    pub notice: Option<MoveNotice>,
}

/// The notification of a move, registered only if the move happens from one of `from`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoveNotice {
    pub from: Vec<String>,
    pub timer: TimerWrite,
}

/// What a deferral did, in the order given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeferResult {
    Timer,
    Grouped {
        /// The group's id (the one given when it was created).
        group_id: String,
        /// Events pending in the group (this one included), before truncation.
        size: u64,
        /// When the group's armed timer is due.
        notify_at_ms: u64,
    },
    Transition(TransitionResult),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransitionResult {
    /// Moved from `previous` (or, `previous` being the target, recorded in `initial`).
    Changed {
        previous: String,
    },
    Unchanged {
        current: String,
    },
    Refused {
        current: String,
    },
}

/// A group's notification, handed to the worker by [`super::StateStore::group_flush_begin`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupBatch {
    pub group_id: String,
    pub meta: Vec<u8>,
    /// The newest kept events, oldest first.
    pub events: Vec<Vec<u8>>,
    /// All events of this notification, kept or dropped.
    pub event_count: u64,
    /// The last notification sent again (see `repeat_at` of `group_flush_end`).
    pub repeat: bool,
    /// Unix ms of the newest event of this notification.
    pub last_event_ms: u64,
}

/// A group as listed by `GET /v1/groups`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupInfo {
    pub key: String,
    pub group_id: String,
    pub meta: Vec<u8>,
    /// Events waiting for the next notification (kept or dropped).
    pub pending: u64,
    /// When the armed timer is due, if one is.
    pub notify_at_ms: Option<u64>,
    pub last_flush_ms: Option<u64>,
    pub last_event_ms: u64,
}

/// A state-machine event as listed by `GET /v1/events`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventInfo {
    pub key: String,
    pub fingerprint: String,
    pub state: String,
    pub record: Vec<u8>,
    pub changed_ms: u64,
    /// Armed timeout: (timer id, due ms).
    pub timeout: Option<(String, u64)>,
}

/// A read for rule conditions, answered by [`super::StateStore::read_state`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateRead {
    /// Whether the set (an `active_sets` entry of [`Transition`]) has a live member (an
    /// event key).
    SetNotEmpty { key: String },
    /// Whether a dedup mark is present (the marks of [`super::Gate::Dedup`]).
    DedupSeen { key: String },
    /// Whether a dedup mark is present and was set within `within` of now: by its token's
    /// time ([`dedup_token`]; a token without one counts as just set).
    DedupSeenWithin { key: String, within: Duration },
    /// Passes counted in a sliding window now (the windows of [`super::Gate::Throttle`],
    /// as [`super::StateStore::window_count`] counts them).
    WindowCount { key: String, window: Duration },
    /// Whether the state-machine event at `key` is live and recorded in `state`.
    EventInState { key: String, state: String },
}

/// The token of a dedup mark: when it was set (Unix ms, the setting gateway's clock) and by
/// which action, so `stateSeen` with `withinSeconds` can tell how long ago it was set.
pub fn dedup_token(set_ms: u64, action_id: &str) -> String {
    format!("{set_ms}:{action_id}")
}

/// When the dedup mark with this token was set, if its token says.
pub fn dedup_token_time(token: &str) -> Option<u64> {
    token.split_once(':')?.0.parse().ok()
}

/// Answers to [`StateRead`]s, in order: 1/0 for the yes/no reads, the count for counts.
pub type StateAnswers = Vec<u64>;
