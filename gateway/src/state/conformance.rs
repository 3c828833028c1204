//! Conformance suite for [`StateStore`]: one set of checks that every backend (memory,
//! Redis, Postgres) must pass.
//!
//! The checks use only the trait: no backend internals, no injected clock. Time is real
//! and short (windows, TTLs and leases of 250–400 ms, waits of a few hundred ms at most),
//! and every check works under its own random key prefix, so a shared backend can serve
//! many checks in parallel. Timers have no key space of their own (a claim takes any due
//! timer), so the timer checks filter claims by their prefix and run one at a time within
//! a process.
//!
//! Each check panics with a message naming the check and the broken rule. Checks that
//! depend on real time measure their own timing: when the machine stalls so long that a
//! verdict is impossible (say a sleep overran the window), the attempt is repeated with
//! fresh keys rather than reported as a backend failure.
//!
//! Use [`conformance_tests!`](crate::conformance_tests) to get one `#[tokio::test]` per
//! check, or [`run_all`] to run them in sequence.

mod rate_slots;
pub use rate_slots::*;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Barrier;
use tokio::task::JoinSet;

use super::{
    ClaimedTimer, DedupConfirm, DeferResult, Deferral, Gate, GateMode, GateResult, GateStop,
    GroupAppend, GroupBatch, GroupInfo, MoveNotice, StateAnswers, StateError, StateRead,
    StateStore, TimerWrite, Transition, TransitionResult, Versioned, unix_ms,
};

/// Margin for clock granularity, client/backend clock skew and round trips when a check
/// compares a duration reported by the backend with one measured here.
pub const SLACK: Duration = Duration::from_millis(40);
/// Short TTL of dedup marks, values and locks in the expiry checks.
const TTL: Duration = Duration::from_millis(250);
/// Sliding and fixed windows of the timed throttle and quota checks.
const WINDOW: Duration = Duration::from_millis(400);
/// Pause between the first pass of a window and the later ones.
const GAP: Duration = Duration::from_millis(200);
/// Timer lease in the lease checks.
const LEASE: Duration = Duration::from_millis(300);
/// Windows and TTLs of the checks that must not see anything expire.
const LONG: Duration = Duration::from_secs(3600);
/// Attempts of a timed check before giving up on a machine too slow to judge.
const ATTEMPTS: u32 = 3;
/// Concurrent tasks in the race checks.
const RACERS: usize = 200;

/// Serializes the timer checks of this process: a claim takes any due timer, so two timer
/// checks running at once on a shared backend would steal each other's timers.
static TIMER_CHECKS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A fresh key prefix for one run of `check`, unique across processes and runs.
pub fn unique_prefix(check: &str) -> String {
    format!("conformance:{check}:{}:", uuid::Uuid::new_v4().simple())
}

/// The list of checks, passed to the macro `$then` (a macro exported by this crate) after
/// the tokens `$args`. The single source of truth for [`run_all`] and `conformance_tests!`.
#[doc(hidden)]
#[macro_export]
macro_rules! __state_conformance_checks {
    ($then:ident $args:tt) => {
        $crate::$then! { $args [
            ping,
            dedup_first_passes_then_duplicate,
            dedup_release_requires_owner_token,
            dedup_ttl_expiry,
            gates_stop_at_later_throttle_applies_nothing,
            gates_stop_at_later_quota_applies_nothing,
            gates_stop_at_later_dedup_applies_nothing,
            gates_report_first_stopping_gate,
            gates_all_pass_apply_all,
            gates_check_mode_applies_nothing,
            dedup_lease_expires_unless_confirmed,
            dedup_confirm_batch_is_owner_checked,
            key_spaces_are_separate,
            zero_limits_stop_everything,
            throttle_limit_and_retry_after,
            throttle_window_slides_and_rejections_are_free,
            quota_limit_and_resets_in,
            quota_new_window_resets,
            concurrent_dedup_single_winner,
            concurrent_dedup_answers_reach_their_callers,
            concurrent_throttle_exact_limit,
            concurrent_quota_exact_limit,
            concurrent_multi_gate_atomic,
            cas_create_update_conflict,
            cas_delete,
            cas_ttl_expiry,
            concurrent_cas_single_winner,
            lock_exclusive_owner,
            lock_reacquire_extends,
            lock_expiry_hands_over,
            concurrent_lock_single_winner,
            timers_claim_lease_complete,
            timers_concurrent_claims_exactly_once,
            timers_advance_under_the_claim,
            timers_listed_by_prefix,
            defer_stopped_gate_writes_nothing,
            defer_passing_gates_write_all,
            defer_check_mode_makes_deferrals_only,
            group_append_creates_waits_and_truncates,
            group_flush_rearms_for_events_in_flight,
            group_flush_end_needs_the_claim,
            group_flush_redelivered_after_lease,
            group_idle_arms_at_last_flush_plus_interval,
            group_repeat_at_keeps_last_notification,
            groups_listed_by_literal_prefix,
            events_listed_by_literal_prefix,
            transition_changed_unchanged_refused,
            transition_require_timer,
            transition_timeout_replaced_on_change,
            transition_notice_registered_only_for_notifying_changes,
            transition_active_sets_and_read_state,
            transition_ttl_expires_event_and_membership,
            transition_initial_state_recorded,
            transition_terminal_starts_new_lifecycle,
            transition_set_members_are_event_keys,
            concurrent_transitions_single_winner,
            concurrent_group_appends_count_all,
            timers_pending_and_release,
            timers_claimed_in_due_order,
            get_many_answers_in_order,
            rate_slots_spaced_and_bounded,
            concurrent_rate_slots_distinct,
        ] }
    };
}

/// Expands to a module `$mod_name` with one `#[tokio::test]` (multi-threaded) per
/// conformance check, each on a store from `$factory`: an expression, evaluated anew for
/// every test inside the module (which imports `super::*`), whose value is a future of
/// something that coerces to `Arc<dyn StateStore>`. The calling crate needs `tokio`.
///
/// ```text
/// use std::sync::Arc;
/// use acteon_gateway::state::MemoryStore;
/// acteon_gateway::conformance_tests!(memory, async { Arc::new(MemoryStore::new()) });
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($mod_name:ident, $factory:expr $(,)?) => {
        $crate::__state_conformance_checks!(__state_conformance_tests {
            $mod_name,
            $factory
        });
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __state_conformance_tests {
    ({ $mod_name:ident, $factory:expr } [ $($check:ident),* $(,)? ]) => {
        mod $mod_name {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() {
                    let store: ::std::sync::Arc<dyn $crate::state::StateStore> = $factory.await;
                    let prefix = $crate::state::conformance::unique_prefix(stringify!($check));
                    $crate::state::conformance::$check(store, &prefix).await;
                }
            )*
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __state_conformance_run_all {
    ({ $store:ident } [ $($check:ident),* $(,)? ]) => {
        $(
            let started = ::std::time::Instant::now();
            let prefix = $crate::state::conformance::unique_prefix(stringify!($check));
            $crate::state::conformance::$check($store.clone(), &prefix).await;
            eprintln!("conformance: {} ok ({:?})", stringify!($check), started.elapsed());
        )*
    };
}

/// Runs every check in sequence against `store` (each under a fresh prefix).
pub async fn run_all(store: Arc<dyn StateStore>) {
    crate::__state_conformance_checks!(__state_conformance_run_all { store });
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn dedup(key: &str, ttl: Duration, token: &str) -> Gate {
    Gate::Dedup {
        key: key.to_owned(),
        ttl,
        token: token.to_owned(),
    }
}

fn throttle(key: &str, limit: u64, window: Duration) -> Gate {
    Gate::Throttle {
        key: key.to_owned(),
        limit,
        window,
    }
}

fn quota(key: &str, limit: u64, window: Duration) -> Gate {
    Gate::Quota {
        key: key.to_owned(),
        limit,
        window,
    }
}

/// Unwraps a backend answer; an error is a conformance failure (the backend must be up).
fn ok<T>(check: &str, what: &str, result: Result<T, StateError>) -> T {
    result.unwrap_or_else(|e| panic!("conformance[{check}]: {what}: backend error: {e}"))
}

async fn apply(store: &dyn StateStore, check: &str, gates: &[Gate]) -> GateResult {
    ok(check, "apply_gates", store.apply_gates(gates).await)
}

#[track_caller]
fn assert_passed(check: &str, what: &str, result: &GateResult) {
    assert!(
        matches!(result, GateResult::Passed),
        "conformance[{check}]: {what}: expected Passed, got {result:?}"
    );
}

#[track_caller]
fn assert_duplicate(check: &str, what: &str, result: &GateResult, index: usize) {
    let expected = GateResult::Stopped {
        index,
        reason: GateStop::Duplicate,
    };
    assert_eq!(
        result, &expected,
        "conformance[{check}]: {what}: expected a duplicate at gate {index}"
    );
}

/// Asserts `Stopped { index, Throttled }` with `0 < retry_after <= window`; returns it.
#[track_caller]
fn assert_throttled(
    check: &str,
    what: &str,
    result: &GateResult,
    index: usize,
    window: Duration,
) -> Duration {
    match result {
        GateResult::Stopped {
            index: i,
            reason: GateStop::Throttled { retry_after },
        } if *i == index => {
            assert!(
                !retry_after.is_zero() && *retry_after <= window,
                "conformance[{check}]: {what}: retry_after {retry_after:?} must be in (0, {window:?}]"
            );
            *retry_after
        }
        other => panic!(
            "conformance[{check}]: {what}: expected Stopped {{ index: {index}, Throttled }}, got {other:?}"
        ),
    }
}

/// Asserts `Stopped { index, QuotaExceeded { used } }` with `resets_in <= window`; returns it.
#[track_caller]
fn assert_quota_exceeded(
    check: &str,
    what: &str,
    result: &GateResult,
    index: usize,
    used: u64,
    window: Duration,
) -> Duration {
    match result {
        GateResult::Stopped {
            index: i,
            reason: GateStop::QuotaExceeded { used: u, resets_in },
        } if *i == index && *u == used => {
            assert!(
                *resets_in <= window,
                "conformance[{check}]: {what}: resets_in {resets_in:?} must be at most the window {window:?}"
            );
            *resets_in
        }
        other => panic!(
            "conformance[{check}]: {what}: expected Stopped {{ index: {index}, QuotaExceeded {{ used: {used} }} }}, got {other:?}"
        ),
    }
}

#[track_caller]
fn assert_between(check: &str, what: &str, value: Duration, lo: Duration, hi: Duration) {
    assert!(
        lo <= value && value <= hi,
        "conformance[{check}]: {what}: {value:?} is not within [{lo:?}, {hi:?}]"
    );
}

/// A timed attempt whose measured timing did not allow a verdict.
struct Stalled(String);

type Attempt = Result<(), Stalled>;

/// `Ok` while the monotonic clock is before `deadline`: what was just observed can be judged.
fn before(deadline: Instant, what: &str) -> Attempt {
    let now = Instant::now();
    if now < deadline {
        Ok(())
    } else {
        Err(Stalled(format!("{what}: {:?} late", now - deadline)))
    }
}

/// `Ok` while the wall clock is before `deadline_ms`.
fn before_wall(deadline_ms: u64, what: &str) -> Attempt {
    let now = unix_ms();
    if now < deadline_ms {
        Ok(())
    } else {
        Err(Stalled(format!("{what}: {} ms late", now - deadline_ms)))
    }
}

async fn sleep_until(deadline: Instant) {
    tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await;
}

async fn sleep_until_wall(deadline_ms: u64) {
    let now = unix_ms();
    if deadline_ms > now {
        tokio::time::sleep(Duration::from_millis(deadline_ms - now)).await;
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// Runs a timed attempt up to [`ATTEMPTS`] times, each under a fresh sub-prefix, until one
/// is conclusive. Backend failures panic inside the attempt and are never retried.
async fn timed<F, Fut>(check: &str, prefix: &str, mut attempt: F)
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Attempt>,
{
    let mut last = String::new();
    for n in 1..=ATTEMPTS {
        match attempt(format!("{prefix}a{n}:")).await {
            Ok(()) => return,
            Err(Stalled(why)) => {
                eprintln!(
                    "conformance[{check}]: attempt {n} inconclusive ({why}); retrying with fresh keys"
                );
                last = why;
            }
        }
    }
    panic!(
        "conformance[{check}]: the machine was too slow to judge the backend in {ATTEMPTS} attempts (last: {last})"
    );
}

/// Sleeps until `phase` into a fixed window of `window` (aligned to the epoch) and returns
/// the start of that window in Unix ms.
async fn align_to_window(window: Duration, phase: Duration) -> u64 {
    let (w, phase) = (ms(window), ms(phase));
    let now = unix_ms();
    let start = now - now % w;
    let start = if now % w <= phase { start } else { start + w };
    sleep_until_wall(start + phase).await;
    start
}

/// Starts `RACERS` tasks that wait on a common barrier and then run `op(i)`; returns the
/// results by task number.
async fn race<T, F, Fut>(store: &Arc<dyn StateStore>, racers: usize, op: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(Arc<dyn StateStore>, usize) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(racers));
    let mut tasks = JoinSet::new();
    for i in 0..racers {
        let barrier = barrier.clone();
        let fut = op(store.clone(), i);
        tasks.spawn(async move {
            barrier.wait().await;
            (i, fut.await)
        });
    }
    let mut out: Vec<Option<T>> = (0..racers).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        let (i, value) =
            joined.unwrap_or_else(|e| panic!("conformance: a racing task failed: {e}"));
        out[i] = Some(value);
    }
    out.into_iter()
        .map(|v| v.expect("every racer reports"))
        .collect()
}

/// The claims of `claimed` whose id starts with `prefix` (other checks' timers are ignored).
fn ours<'a>(claimed: &'a [ClaimedTimer], prefix: &str) -> Vec<&'a ClaimedTimer> {
    claimed
        .iter()
        .filter(|t| t.id.starts_with(prefix))
        .collect()
}

fn ids(claimed: &[&ClaimedTimer]) -> Vec<String> {
    let mut ids: Vec<String> = claimed.iter().map(|t| t.id.clone()).collect();
    ids.sort();
    ids
}

// ---------------------------------------------------------------------------------------
// Reachability
// ---------------------------------------------------------------------------------------

/// `ping` succeeds and the backend names itself.
pub async fn ping(store: Arc<dyn StateStore>, _prefix: &str) {
    const C: &str = "ping";
    ok(C, "ping", store.ping().await);
    assert!(
        !store.kind().is_empty(),
        "conformance[{C}]: kind() must name the backend"
    );
}

// ---------------------------------------------------------------------------------------
// Dedup
// ---------------------------------------------------------------------------------------

/// The first dedup gate passes and marks the key; the next one is a duplicate at index 0.
pub async fn dedup_first_passes_then_duplicate(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "dedup_first_passes_then_duplicate";
    let s = &*store;
    let key = format!("{prefix}k");
    let other = format!("{prefix}other");
    assert!(
        !ok(C, "dedup_exists", s.dedup_exists(&key).await),
        "conformance[{C}]: a fresh key must not be marked"
    );
    assert_passed(
        C,
        "first dedup gate",
        &apply(s, C, &[dedup(&key, LONG, "t1")]).await,
    );
    assert!(
        ok(C, "dedup_exists", s.dedup_exists(&key).await),
        "conformance[{C}]: a passed dedup gate must mark its key"
    );
    assert_duplicate(
        C,
        "second gate, same key, other token",
        &apply(s, C, &[dedup(&key, LONG, "t2")]).await,
        0,
    );
    assert_duplicate(
        C,
        "third gate, same key, same token",
        &apply(s, C, &[dedup(&key, LONG, "t1")]).await,
        0,
    );
    assert!(
        !ok(C, "dedup_exists", s.dedup_exists(&other).await),
        "conformance[{C}]: marking one key must not mark another"
    );
    assert_passed(
        C,
        "a different key",
        &apply(s, C, &[dedup(&other, LONG, "t3")]).await,
    );
}

/// Only the owner's token releases a mark; after a release the next attempt passes.
pub async fn dedup_release_requires_owner_token(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "dedup_release_requires_owner_token";
    let s = &*store;
    let key = format!("{prefix}k");
    assert!(
        !ok(C, "release_dedup", s.release_dedup(&key, "owner").await),
        "conformance[{C}]: releasing an unmarked key must return false"
    );
    assert_passed(
        C,
        "first gate",
        &apply(s, C, &[dedup(&key, LONG, "owner")]).await,
    );
    assert!(
        !ok(C, "release_dedup", s.release_dedup(&key, "intruder").await),
        "conformance[{C}]: release with a wrong token must return false"
    );
    assert!(
        ok(C, "dedup_exists", s.dedup_exists(&key).await),
        "conformance[{C}]: release with a wrong token must leave the mark"
    );
    assert_duplicate(
        C,
        "gate after a wrong-token release",
        &apply(s, C, &[dedup(&key, LONG, "retry")]).await,
        0,
    );
    assert!(
        ok(C, "release_dedup", s.release_dedup(&key, "owner").await),
        "conformance[{C}]: release with the owner's token must return true"
    );
    assert!(
        !ok(C, "dedup_exists", s.dedup_exists(&key).await),
        "conformance[{C}]: a released key must not be marked"
    );
    assert!(
        !ok(C, "release_dedup", s.release_dedup(&key, "owner").await),
        "conformance[{C}]: a second release must return false"
    );
    assert_passed(
        C,
        "gate after the release",
        &apply(s, C, &[dedup(&key, LONG, "second")]).await,
    );
    assert!(
        !ok(C, "release_dedup", s.release_dedup(&key, "owner").await),
        "conformance[{C}]: the first owner's token must not release the second owner's mark"
    );
    assert!(
        ok(C, "dedup_exists", s.dedup_exists(&key).await),
        "conformance[{C}]: the second owner's mark must stay"
    );
    assert!(
        ok(C, "release_dedup", s.release_dedup(&key, "second").await),
        "conformance[{C}]: the second owner's token must release its mark"
    );
}

/// A mark expires with its TTL: then it is not seen, cannot be released, and the key passes.
pub async fn dedup_ttl_expiry(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "dedup_ttl_expiry";
    timed(C, prefix, |p| dedup_ttl_expiry_once(&*store, p)).await;
}

async fn dedup_ttl_expiry_once(s: &dyn StateStore, p: String) -> Attempt {
    const C: &str = "dedup_ttl_expiry";
    let key = format!("{p}k");
    let started = Instant::now();
    assert_passed(
        C,
        "first gate",
        &apply(s, C, &[dedup(&key, TTL, "first")]).await,
    );
    let applied = Instant::now();
    let exists = ok(C, "dedup_exists", s.dedup_exists(&key).await);
    let again = apply(s, C, &[dedup(&key, TTL, "again")]).await;
    before(started + TTL - SLACK, "checks before the TTL")?;
    assert!(
        exists,
        "conformance[{C}]: the mark must exist before its TTL ({TTL:?}) ran out"
    );
    assert_duplicate(C, "gate before the TTL ran out", &again, 0);

    sleep_until(applied + TTL + SLACK).await;
    assert!(
        !ok(C, "dedup_exists", s.dedup_exists(&key).await),
        "conformance[{C}]: the mark must be gone after its TTL"
    );
    assert!(
        !ok(C, "release_dedup", s.release_dedup(&key, "first").await),
        "conformance[{C}]: releasing an expired mark must return false (nothing was released)"
    );
    assert_passed(
        C,
        "gate after the TTL",
        &apply(s, C, &[dedup(&key, LONG, "after")]).await,
    );
    assert!(
        ok(C, "dedup_exists", s.dedup_exists(&key).await),
        "conformance[{C}]: the new mark must exist"
    );
    Ok(())
}

async fn run(store: &dyn StateStore, check: &str, gates: &[Gate], mode: GateMode) -> GateResult {
    ok(check, "run_gates", store.run_gates(gates, mode).await)
}

fn leased(lease: Duration) -> GateMode {
    GateMode::Apply {
        dedup_lease: Some(lease),
    }
}

/// `Check` reports the first gate that stops exactly as applying would, and applies
/// nothing, whether the gates pass or stop.
pub async fn gates_check_mode_applies_nothing(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "gates_check_mode_applies_nothing";
    let s = &*store;
    let (d, t, q) = (
        format!("{prefix}d"),
        format!("{prefix}t"),
        format!("{prefix}q"),
    );
    let gates = [
        dedup(&d, LONG, "tok"),
        throttle(&t, 1, LONG),
        quota(&q, 1, LONG),
    ];
    for round in ["first", "second"] {
        assert_passed(
            C,
            &format!("{round} check"),
            &run(s, C, &gates, GateMode::Check).await,
        );
    }
    assert!(
        !ok(C, "dedup_exists", s.dedup_exists(&d).await),
        "conformance[{C}]: a check must not set the dedup mark"
    );
    assert_eq!(
        ok(C, "window_count", s.window_count(&t, LONG).await),
        0,
        "conformance[{C}]: a check must not count a throttle pass"
    );
    assert_eq!(
        ok(C, "quota_usage", s.quota_usage(&q, LONG).await),
        0,
        "conformance[{C}]: a check must not use quota"
    );

    assert_passed(C, "apply after checks", &apply(s, C, &gates).await);
    assert_duplicate(
        C,
        "check of a marked key",
        &run(s, C, &gates, GateMode::Check).await,
        0,
    );
    let fresh = format!("{prefix}d2");
    let after_dedup = [
        dedup(&fresh, LONG, "tok"),
        throttle(&t, 1, LONG),
        quota(&q, 1, LONG),
    ];
    assert_throttled(
        C,
        "check of a full window",
        &run(s, C, &after_dedup, GateMode::Check).await,
        1,
        LONG,
    );
    let quota_only = [dedup(&fresh, LONG, "tok"), quota(&q, 1, LONG)];
    assert_quota_exceeded(
        C,
        "check of a used quota",
        &run(s, C, &quota_only, GateMode::Check).await,
        1,
        1,
        LONG,
    );
    assert!(
        !ok(C, "dedup_exists", s.dedup_exists(&fresh).await),
        "conformance[{C}]: a stopped check must not set the dedup mark"
    );
    assert_eq!(
        ok(C, "window_count", s.window_count(&t, LONG).await),
        1,
        "conformance[{C}]: checks must not add throttle passes"
    );
    assert_eq!(
        ok(C, "quota_usage", s.quota_usage(&q, LONG).await),
        1,
        "conformance[{C}]: checks must not use quota"
    );
}

/// A mark applied with an in-flight lease shorter than its TTL blocks duplicates during
/// the lease and expires with it; a confirmed one lasts its TTL; a lease longer than the
/// TTL changes nothing.
pub async fn dedup_lease_expires_unless_confirmed(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "dedup_lease_expires_unless_confirmed";
    timed(C, prefix, |p| dedup_lease_once(&*store, p)).await;
}

async fn dedup_lease_once(s: &dyn StateStore, p: String) -> Attempt {
    const C: &str = "dedup_lease_expires_unless_confirmed";
    let (lost, confirmed, short) = (
        format!("{p}lost"),
        format!("{p}confirmed"),
        format!("{p}short"),
    );
    let started = Instant::now();
    let gates = [
        dedup(&lost, LONG, "a"),
        dedup(&confirmed, LONG, "b"),
        dedup(&short, TTL, "c"),
    ];
    assert_passed(C, "leased marks", &run(s, C, &gates, leased(TTL)).await);
    let applied = Instant::now();
    let n = ok(
        C,
        "confirm_dedup",
        s.confirm_dedup(&[DedupConfirm {
            key: confirmed.clone(),
            token: "b".into(),
            extend: LONG - TTL,
        }])
        .await,
    );
    let during = run(s, C, &[dedup(&lost, LONG, "x")], GateMode::Check).await;
    before(
        started + TTL - SLACK,
        "confirmation and check within the lease",
    )?;
    assert_eq!(
        n, 1,
        "conformance[{C}]: the owner's confirmation must extend its mark"
    );
    assert_duplicate(C, "an unconfirmed mark within its lease", &during, 0);

    sleep_until(applied + TTL + SLACK).await;
    assert!(
        !ok(C, "dedup_exists", s.dedup_exists(&lost).await),
        "conformance[{C}]: an unconfirmed mark must expire with its lease"
    );
    assert!(
        ok(C, "dedup_exists", s.dedup_exists(&confirmed).await),
        "conformance[{C}]: a confirmed mark must outlive its lease"
    );
    assert!(
        !ok(C, "dedup_exists", s.dedup_exists(&short).await),
        "conformance[{C}]: a mark whose TTL is shorter than the lease keeps its TTL"
    );
    assert_passed(
        C,
        "retry after the lease",
        &apply(s, C, &[dedup(&lost, LONG, "retry")]).await,
    );
    Ok(())
}

/// One confirmation call extends many marks, each only if its token still owns it.
pub async fn dedup_confirm_batch_is_owner_checked(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "dedup_confirm_batch_is_owner_checked";
    let s = &*store;
    let keys: Vec<String> = (0..50).map(|i| format!("{prefix}k{i}")).collect();
    for key in &keys {
        assert_passed(
            C,
            "leased mark",
            &run(s, C, &[dedup(key, LONG, "owner")], leased(LONG / 2)).await,
        );
    }
    let batch: Vec<DedupConfirm> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| DedupConfirm {
            key: key.clone(),
            token: if i % 2 == 0 { "owner" } else { "intruder" }.to_owned(),
            extend: LONG / 2,
        })
        .chain([DedupConfirm {
            key: format!("{prefix}absent"),
            token: "owner".to_owned(),
            extend: LONG,
        }])
        .collect();
    assert_eq!(
        ok(C, "confirm_dedup", s.confirm_dedup(&batch).await),
        25,
        "conformance[{C}]: exactly the marks whose token matches are extended"
    );
    assert!(
        !ok(
            C,
            "dedup_exists",
            s.dedup_exists(&format!("{prefix}absent")).await
        ),
        "conformance[{C}]: confirming an absent mark must not create it"
    );
    assert_eq!(ok(C, "confirm_dedup(empty)", s.confirm_dedup(&[]).await), 0);
}

// ---------------------------------------------------------------------------------------
// Multi-gate atomicity
// ---------------------------------------------------------------------------------------

/// `[Dedup, Quota, Throttle(full)]` stops at index 2 and applies neither the dedup nor the quota.
pub async fn gates_stop_at_later_throttle_applies_nothing(
    store: Arc<dyn StateStore>,
    prefix: &str,
) {
    const C: &str = "gates_stop_at_later_throttle_applies_nothing";
    let s = &*store;
    let (d, q, t) = (
        format!("{prefix}d"),
        format!("{prefix}q"),
        format!("{prefix}t"),
    );
    assert_passed(
        C,
        "filling the throttle",
        &apply(s, C, &[throttle(&t, 1, LONG)]).await,
    );
    let gates = [
        dedup(&d, LONG, "tok"),
        quota(&q, 10, LONG),
        throttle(&t, 1, LONG),
    ];
    for round in 0..2 {
        let r = apply(s, C, &gates).await;
        assert_throttled(
            C,
            &format!("round {round}: full throttle as third gate"),
            &r,
            2,
            LONG,
        );
    }
    assert!(
        !ok(C, "dedup_exists", s.dedup_exists(&d).await),
        "conformance[{C}]: a stopped dispatch must not mark its dedup key"
    );
    assert_eq!(
        ok(C, "quota_usage", s.quota_usage(&q, LONG).await),
        0,
        "conformance[{C}]: a stopped dispatch must not count quota"
    );
    assert_eq!(
        ok(C, "window_count", s.window_count(&t, LONG).await),
        1,
        "conformance[{C}]: a stopped dispatch must not count a pass"
    );
    assert_passed(
        C,
        "the dedup key alone",
        &apply(s, C, &[dedup(&d, LONG, "tok2")]).await,
    );
}

/// `[Dedup, Throttle, Quota(full)]` stops at index 2 and applies neither the dedup nor the throttle.
pub async fn gates_stop_at_later_quota_applies_nothing(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "gates_stop_at_later_quota_applies_nothing";
    let s = &*store;
    let (d, t, q) = (
        format!("{prefix}d"),
        format!("{prefix}t"),
        format!("{prefix}q"),
    );
    assert_passed(
        C,
        "filling the quota",
        &apply(s, C, &[quota(&q, 1, LONG)]).await,
    );
    let gates = [
        dedup(&d, LONG, "tok"),
        throttle(&t, 10, LONG),
        quota(&q, 1, LONG),
    ];
    for round in 0..2 {
        let r = apply(s, C, &gates).await;
        assert_quota_exceeded(
            C,
            &format!("round {round}: full quota as third gate"),
            &r,
            2,
            1,
            LONG,
        );
    }
    assert!(
        !ok(C, "dedup_exists", s.dedup_exists(&d).await),
        "conformance[{C}]: a stopped dispatch must not mark its dedup key"
    );
    assert_eq!(
        ok(C, "window_count", s.window_count(&t, LONG).await),
        0,
        "conformance[{C}]: a stopped dispatch must not count a pass"
    );
    assert_eq!(
        ok(C, "quota_usage", s.quota_usage(&q, LONG).await),
        1,
        "conformance[{C}]: a rejected attempt must not count quota"
    );
}

/// `[Throttle, Quota, Dedup(marked)]` stops at index 2; the counters stay, the mark keeps its owner.
pub async fn gates_stop_at_later_dedup_applies_nothing(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "gates_stop_at_later_dedup_applies_nothing";
    let s = &*store;
    let (t, q, d) = (
        format!("{prefix}t"),
        format!("{prefix}q"),
        format!("{prefix}d"),
    );
    assert_passed(
        C,
        "marking the dedup key",
        &apply(s, C, &[dedup(&d, LONG, "owner")]).await,
    );
    let gates = [
        throttle(&t, 10, LONG),
        quota(&q, 10, LONG),
        dedup(&d, LONG, "other"),
    ];
    for round in 0..2 {
        assert_duplicate(
            C,
            &format!("round {round}: marked dedup as third gate"),
            &apply(s, C, &gates).await,
            2,
        );
    }
    assert_eq!(
        ok(C, "window_count", s.window_count(&t, LONG).await),
        0,
        "conformance[{C}]: a stopped dispatch must not count a pass"
    );
    assert_eq!(
        ok(C, "quota_usage", s.quota_usage(&q, LONG).await),
        0,
        "conformance[{C}]: a stopped dispatch must not count quota"
    );
    assert!(
        ok(C, "release_dedup", s.release_dedup(&d, "owner").await),
        "conformance[{C}]: a stopped dispatch must not take over the mark (the owner's release failed)"
    );
}

/// When several gates would stop a dispatch, the first of them (lowest index) is reported.
pub async fn gates_report_first_stopping_gate(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "gates_report_first_stopping_gate";
    let s = &*store;
    let (t, q, d) = (
        format!("{prefix}t"),
        format!("{prefix}q"),
        format!("{prefix}d"),
    );
    let (t_room, q_room) = (format!("{prefix}t-room"), format!("{prefix}q-room"));
    assert_passed(
        C,
        "filling all three",
        &apply(
            s,
            C,
            &[
                throttle(&t, 1, LONG),
                quota(&q, 1, LONG),
                dedup(&d, LONG, "x"),
            ],
        )
        .await,
    );
    let r = apply(
        s,
        C,
        &[
            throttle(&t, 1, LONG),
            dedup(&d, LONG, "y"),
            quota(&q, 1, LONG),
        ],
    )
    .await;
    assert_throttled(
        C,
        "[Throttle(full), Dedup(marked), Quota(full)]",
        &r,
        0,
        LONG,
    );
    let r = apply(
        s,
        C,
        &[
            dedup(&d, LONG, "y"),
            quota(&q, 1, LONG),
            throttle(&t, 1, LONG),
        ],
    )
    .await;
    assert_duplicate(C, "[Dedup(marked), Quota(full), Throttle(full)]", &r, 0);
    let r = apply(s, C, &[quota(&q, 1, LONG), throttle(&t, 1, LONG)]).await;
    assert_quota_exceeded(C, "[Quota(full), Throttle(full)]", &r, 0, 1, LONG);
    let r = apply(
        s,
        C,
        &[
            throttle(&t_room, 5, LONG),
            quota(&q_room, 5, LONG),
            throttle(&t, 1, LONG),
            dedup(&d, LONG, "y"),
        ],
    )
    .await;
    assert_throttled(
        C,
        "[Throttle(room), Quota(room), Throttle(full), Dedup(marked)]",
        &r,
        2,
        LONG,
    );
    assert_eq!(
        ok(C, "window_count", s.window_count(&t_room, LONG).await),
        0,
        "conformance[{C}]: a stopped dispatch must not count a pass"
    );
}

/// When every gate passes, every gate is applied; an empty list passes.
pub async fn gates_all_pass_apply_all(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "gates_all_pass_apply_all";
    let s = &*store;
    let (t, q) = (format!("{prefix}t"), format!("{prefix}q"));
    assert_passed(C, "an empty gate list", &apply(s, C, &[]).await);
    for n in 1..=2u64 {
        let d = format!("{prefix}d{n}");
        let r = apply(
            s,
            C,
            &[
                dedup(&d, LONG, "tok"),
                throttle(&t, 2, LONG),
                quota(&q, 3, LONG),
            ],
        )
        .await;
        assert_passed(
            C,
            &format!("dispatch {n} of [Dedup, Throttle(2), Quota(3)]"),
            &r,
        );
        assert!(
            ok(C, "dedup_exists", s.dedup_exists(&d).await),
            "conformance[{C}]: dispatch {n} must mark its dedup key"
        );
        assert_eq!(
            ok(C, "window_count", s.window_count(&t, LONG).await),
            n,
            "conformance[{C}]: window_count after {n} passes"
        );
        assert_eq!(
            ok(C, "quota_usage", s.quota_usage(&q, LONG).await),
            n,
            "conformance[{C}]: quota_usage after {n} passes"
        );
    }
    let d3 = format!("{prefix}d3");
    let r = apply(
        s,
        C,
        &[
            dedup(&d3, LONG, "tok"),
            throttle(&t, 2, LONG),
            quota(&q, 3, LONG),
        ],
    )
    .await;
    assert_throttled(C, "dispatch 3 (throttle full)", &r, 1, LONG);
    assert!(
        !ok(C, "dedup_exists", s.dedup_exists(&d3).await),
        "conformance[{C}]: dispatch 3 was stopped and must not mark"
    );
    assert_eq!(
        ok(C, "quota_usage", s.quota_usage(&q, LONG).await),
        2,
        "conformance[{C}]: dispatch 3 was stopped and must not count quota"
    );
}

/// Dedup marks, throttle windows, quota counters, values and locks do not share keys:
/// the same key string in each is five independent things.
pub async fn key_spaces_are_separate(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "key_spaces_are_separate";
    let s = &*store;
    let k = format!("{prefix}shared");
    let created = ok(
        C,
        "compare_and_swap",
        s.compare_and_swap(&k, None, b"v".to_vec(), None).await,
    );
    assert!(
        created.is_some(),
        "conformance[{C}]: creating the value must succeed"
    );
    assert!(
        ok(C, "try_lock", s.try_lock(&k, "owner", LONG).await),
        "conformance[{C}]: a value must not hold the lock of the same key"
    );
    assert_passed(
        C,
        "dedup on a key used by a value and a lock",
        &apply(s, C, &[dedup(&k, LONG, "tok")]).await,
    );
    assert_passed(
        C,
        "throttle on the same key",
        &apply(s, C, &[throttle(&k, 1, LONG)]).await,
    );
    assert_passed(
        C,
        "quota on the same key",
        &apply(s, C, &[quota(&k, 1, LONG)]).await,
    );
    assert_eq!(
        ok(C, "window_count", s.window_count(&k, LONG).await),
        1,
        "conformance[{C}]: window_count of the shared key"
    );
    assert_eq!(
        ok(C, "quota_usage", s.quota_usage(&k, LONG).await),
        1,
        "conformance[{C}]: quota_usage of the shared key"
    );
    let got = ok(C, "get", s.get(&k).await).map(|v| v.value);
    assert_eq!(
        got.as_deref(),
        Some(&b"v"[..]),
        "conformance[{C}]: the value must survive gates and a lock on the same key"
    );
    assert!(
        ok(C, "release_dedup", s.release_dedup(&k, "tok").await),
        "conformance[{C}]: the dedup mark must be its own"
    );
    assert!(
        ok(C, "unlock", s.unlock(&k, "owner").await),
        "conformance[{C}]: the lock must be its own"
    );
    assert!(
        ok(C, "delete", s.delete(&k).await),
        "conformance[{C}]: the value must be its own"
    );
    assert_throttled(
        C,
        "throttle after the others were cleared",
        &apply(s, C, &[throttle(&k, 1, LONG)]).await,
        0,
        LONG,
    );
    assert_quota_exceeded(
        C,
        "quota after the others were cleared",
        &apply(s, C, &[quota(&k, 1, LONG)]).await,
        0,
        1,
        LONG,
    );
}

/// A throttle or quota limit of 0 lets nothing through (and does not crash the backend).
pub async fn zero_limits_stop_everything(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "zero_limits_stop_everything";
    let s = &*store;
    let (t, q) = (format!("{prefix}t"), format!("{prefix}q"));
    for round in 0..2 {
        assert_throttled(
            C,
            &format!("round {round}: throttle with limit 0"),
            &apply(s, C, &[throttle(&t, 0, LONG)]).await,
            0,
            LONG,
        );
        assert_quota_exceeded(
            C,
            &format!("round {round}: quota with limit 0"),
            &apply(s, C, &[quota(&q, 0, LONG)]).await,
            0,
            0,
            LONG,
        );
    }
    assert_eq!(
        ok(C, "window_count", s.window_count(&t, LONG).await),
        0,
        "conformance[{C}]: nothing may be counted"
    );
    assert_eq!(
        ok(C, "quota_usage", s.quota_usage(&q, LONG).await),
        0,
        "conformance[{C}]: nothing may be counted"
    );
}

// ---------------------------------------------------------------------------------------
// Sliding window
// ---------------------------------------------------------------------------------------

/// `limit` passes, then Throttled with `retry_after` = time until the oldest pass leaves.
pub async fn throttle_limit_and_retry_after(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "throttle_limit_and_retry_after";
    timed(C, prefix, |p| throttle_limit_once(&*store, p)).await;
}

async fn throttle_limit_once(s: &dyn StateStore, p: String) -> Attempt {
    const C: &str = "throttle_limit_and_retry_after";
    let key = format!("{p}t");
    let gate = [throttle(&key, 3, WINDOW)];
    let s1 = Instant::now();
    assert_passed(C, "pass 1 of 3", &apply(s, C, &gate).await);
    let e1 = Instant::now();
    tokio::time::sleep(GAP).await;
    assert_passed(C, "pass 2 of 3", &apply(s, C, &gate).await);
    assert_passed(C, "pass 3 of 3", &apply(s, C, &gate).await);
    let s4 = Instant::now();
    let r = apply(s, C, &gate).await;
    let e4 = Instant::now();
    before(
        s1 + WINDOW - SLACK,
        "the fourth attempt, while all three passes are in the window",
    )?;
    let retry = assert_throttled(C, "attempt 4 with limit 3", &r, 0, WINDOW);
    // The oldest pass happened in [s1, e1] and leaves the window WINDOW later.
    let lo = (s1 + WINDOW)
        .saturating_duration_since(e4)
        .saturating_sub(SLACK);
    let hi = (e1 + WINDOW).saturating_duration_since(s4) + SLACK;
    assert_between(
        C,
        "retry_after (time until the oldest pass leaves the window)",
        retry,
        lo,
        hi,
    );

    let count = ok(C, "window_count", s.window_count(&key, WINDOW).await);
    for n in 5..=7 {
        let r = apply(s, C, &gate).await;
        before(s1 + WINDOW - SLACK, "rejected attempts")?;
        assert_throttled(C, &format!("attempt {n}"), &r, 0, WINDOW);
    }
    let after = ok(C, "window_count", s.window_count(&key, WINDOW).await);
    before(s1 + WINDOW - SLACK, "window counts")?;
    assert_eq!(
        count, 3,
        "conformance[{C}]: window_count after 3 passes and 1 rejection"
    );
    assert_eq!(
        after, 3,
        "conformance[{C}]: rejected attempts must not be counted by window_count"
    );
    Ok(())
}

/// Rejected attempts do not consume budget: once the oldest pass leaves the window,
/// exactly one more pass is allowed, and the next retry_after points at the next-oldest pass.
pub async fn throttle_window_slides_and_rejections_are_free(
    store: Arc<dyn StateStore>,
    prefix: &str,
) {
    const C: &str = "throttle_window_slides_and_rejections_are_free";
    timed(C, prefix, |p| throttle_slides_once(&*store, p)).await;
}

async fn throttle_slides_once(s: &dyn StateStore, p: String) -> Attempt {
    const C: &str = "throttle_window_slides_and_rejections_are_free";
    let key = format!("{p}t");
    let gate = [throttle(&key, 3, WINDOW)];
    let s1 = Instant::now();
    assert_passed(C, "pass 1 of 3", &apply(s, C, &gate).await);
    let e1 = Instant::now();
    tokio::time::sleep(GAP).await;
    let s2 = Instant::now();
    assert_passed(C, "pass 2 of 3", &apply(s, C, &gate).await);
    assert_passed(C, "pass 3 of 3", &apply(s, C, &gate).await);
    let e3 = Instant::now();
    for n in 0..3 {
        let r = apply(s, C, &gate).await;
        before(s1 + WINDOW - SLACK, "rejected attempts")?;
        assert_throttled(C, &format!("rejected attempt {n}"), &r, 0, WINDOW);
    }

    // The oldest pass has left; passes 2 and 3 (and the rejected attempts, were they
    // wrongly counted) are still inside the window.
    sleep_until(e1 + WINDOW + SLACK).await;
    // Counted before any new attempt, so nothing but the expiry can have dropped pass 1.
    let slid = ok(C, "window_count", s.window_count(&key, WINDOW).await);
    let sa = Instant::now();
    let first = apply(s, C, &gate).await;
    let second = apply(s, C, &gate).await;
    let count = ok(C, "window_count", s.window_count(&key, WINDOW).await);
    let eb = Instant::now();
    before(
        s2 + WINDOW - SLACK,
        "the attempts after the oldest pass left, while passes 2 and 3 are in the window",
    )?;
    assert_eq!(
        slid, 2,
        "conformance[{C}]: window_count once the oldest pass left the window"
    );
    assert_passed(
        C,
        "attempt after the oldest pass left the window (rejected attempts must not count)",
        &first,
    );
    let retry = assert_throttled(C, "the attempt after that", &second, 0, WINDOW);
    let lo = (s2 + WINDOW)
        .saturating_duration_since(eb)
        .saturating_sub(SLACK);
    let hi = (e3 + WINDOW).saturating_duration_since(sa) + SLACK;
    assert_between(
        C,
        "retry_after (time until pass 2 leaves the window)",
        retry,
        lo,
        hi,
    );
    assert_eq!(
        count, 3,
        "conformance[{C}]: window_count after the window slid (passes 2, 3 and the new one)"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Fixed-window quota
// ---------------------------------------------------------------------------------------

/// Exactly `limit` passes per epoch-aligned window, then QuotaExceeded { used: limit,
/// resets_in = time to the window's end }; rejected attempts are not counted.
pub async fn quota_limit_and_resets_in(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "quota_limit_and_resets_in";
    timed(C, prefix, |p| quota_limit_once(&*store, p)).await;
}

async fn quota_limit_once(s: &dyn StateStore, p: String) -> Attempt {
    const C: &str = "quota_limit_and_resets_in";
    let key = format!("{p}q");
    let gate = [quota(&key, 3, WINDOW)];
    // Start 150 ms into a window: resets_in then differs from the window length, which
    // tells an aligned window from one anchored at the first pass.
    let start = align_to_window(WINDOW, Duration::from_millis(150)).await;
    let end = start + ms(WINDOW);
    let deadline = end - ms(SLACK);
    for n in 1..=3 {
        assert_passed(C, &format!("pass {n} of 3"), &apply(s, C, &gate).await);
    }
    let w4s = unix_ms();
    let r = apply(s, C, &gate).await;
    let w4e = unix_ms();
    let used = ok(C, "quota_usage", s.quota_usage(&key, WINDOW).await);
    before_wall(deadline, "the fourth attempt, inside the window")?;
    let resets_in = assert_quota_exceeded(C, "attempt 4 with limit 3", &r, 0, 3, WINDOW);
    let lo = Duration::from_millis(end.saturating_sub(w4e)).saturating_sub(SLACK);
    let hi = Duration::from_millis(end.saturating_sub(w4s)) + SLACK;
    assert_between(
        C,
        "resets_in (time until the epoch-aligned window ends)",
        resets_in,
        lo,
        hi,
    );
    assert_eq!(used, 3, "conformance[{C}]: quota_usage after 3 passes");
    for n in 5..=6 {
        let r = apply(s, C, &gate).await;
        before_wall(deadline, "rejected attempts")?;
        assert_quota_exceeded(
            C,
            &format!("attempt {n} (rejections must not raise `used`)"),
            &r,
            0,
            3,
            WINDOW,
        );
    }
    let used = ok(C, "quota_usage", s.quota_usage(&key, WINDOW).await);
    before_wall(deadline, "quota_usage")?;
    assert_eq!(
        used, 3,
        "conformance[{C}]: rejected attempts must not be counted by quota_usage"
    );
    Ok(())
}

/// The next window starts from zero.
pub async fn quota_new_window_resets(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "quota_new_window_resets";
    timed(C, prefix, |p| quota_reset_once(&*store, p)).await;
}

async fn quota_reset_once(s: &dyn StateStore, p: String) -> Attempt {
    const C: &str = "quota_new_window_resets";
    let key = format!("{p}q");
    let gate = [quota(&key, 2, WINDOW)];
    let start = align_to_window(WINDOW, Duration::from_millis(100)).await;
    let end = start + ms(WINDOW);
    assert_passed(C, "pass 1 of 2", &apply(s, C, &gate).await);
    assert_passed(C, "pass 2 of 2", &apply(s, C, &gate).await);
    let r = apply(s, C, &gate).await;
    before_wall(end - ms(SLACK), "filling the first window")?;
    assert_quota_exceeded(C, "attempt 3 in the first window", &r, 0, 2, WINDOW);

    sleep_until_wall(end + ms(SLACK)).await;
    let next_end = end + ms(WINDOW);
    // Read before any new attempt, so nothing but the new window can have reset it.
    let fresh = ok(C, "quota_usage", s.quota_usage(&key, WINDOW).await);
    let first = apply(s, C, &gate).await;
    let used = ok(C, "quota_usage", s.quota_usage(&key, WINDOW).await);
    let second = apply(s, C, &gate).await;
    let ws = unix_ms();
    let third = apply(s, C, &gate).await;
    let we = unix_ms();
    before_wall(next_end - ms(SLACK), "the attempts in the second window")?;
    assert_eq!(
        fresh, 0,
        "conformance[{C}]: quota_usage at the start of a new window"
    );
    assert_passed(C, "first attempt in the next window", &first);
    assert_eq!(
        used, 1,
        "conformance[{C}]: quota_usage in the new window after one pass"
    );
    assert_passed(C, "second attempt in the next window", &second);
    let resets_in =
        assert_quota_exceeded(C, "third attempt in the next window", &third, 0, 2, WINDOW);
    let lo = Duration::from_millis(next_end.saturating_sub(we)).saturating_sub(SLACK);
    let hi = Duration::from_millis(next_end.saturating_sub(ws)) + SLACK;
    assert_between(C, "resets_in in the next window", resets_in, lo, hi);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Races
// ---------------------------------------------------------------------------------------

/// 200 concurrent dispatches with the same dedup key: exactly one passes, and owns the mark.
pub async fn concurrent_dedup_single_winner(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "concurrent_dedup_single_winner";
    let key = format!("{prefix}d");
    let results = race(&store, RACERS, |s, i| {
        let key = key.clone();
        async move {
            s.apply_gates(&[dedup(&key, LONG, &format!("tok{i}"))])
                .await
        }
    })
    .await;
    let mut winners = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match ok(C, "apply_gates", r) {
            GateResult::Passed => winners.push(i),
            other => assert_duplicate(C, &format!("racer {i}"), &other, 0),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "conformance[{C}]: {RACERS} racers on one dedup key: exactly one must pass, got {winners:?}"
    );
    let winner = format!("tok{}", winners[0]);
    let loser = format!("tok{}", (winners[0] + 1) % RACERS);
    assert!(
        !ok(C, "release_dedup", store.release_dedup(&key, &loser).await),
        "conformance[{C}]: a loser's token must not release the mark"
    );
    assert!(
        ok(C, "release_dedup", store.release_dedup(&key, &winner).await),
        "conformance[{C}]: the winner's token must own the mark"
    );
}

/// Concurrent lone dedup gates on many keys — marks and checks mixed, half of the keys
/// marked before — each get the answer of their own key (a backend that sends concurrent
/// calls together must hand every answer to its caller).
pub async fn concurrent_dedup_answers_reach_their_callers(
    store: Arc<dyn StateStore>,
    prefix: &str,
) {
    const C: &str = "concurrent_dedup_answers_reach_their_callers";
    let key = |i: usize| format!("{prefix}k{}", i / 2);
    for i in (0..RACERS).step_by(4) {
        assert_passed(
            C,
            "premark",
            &apply(&*store, C, &[dedup(&key(i), LONG, "pre")]).await,
        );
    }
    // Racer i works on key i/2: even racers check it, odd racers try to mark it.
    let results = race(&store, RACERS, |s, i| {
        let gate = dedup(&key(i), LONG, &format!("tok{i}"));
        let mode = if i % 2 == 0 {
            GateMode::Check
        } else {
            GateMode::APPLY
        };
        async move { s.run_gates(&[gate], mode).await }
    })
    .await;
    for (i, r) in results.into_iter().enumerate() {
        let result = ok(C, "run_gates", r);
        let premarked = (i / 2) % 2 == 0;
        let what = format!("racer {i} on key {} (marked before: {premarked})", i / 2);
        if premarked {
            assert_duplicate(C, &what, &result, 0);
        } else if i % 2 == 1 {
            // The only marking call on a free key passes; the check beside it may see the
            // mark or not (they race).
            assert_passed(C, &what, &result);
        }
    }
    for i in (3..RACERS).step_by(4) {
        assert!(
            ok(
                C,
                "release_dedup",
                store.release_dedup(&key(i), &format!("tok{i}")).await
            ),
            "conformance[{C}]: racer {i} owns the mark it set"
        );
    }
}

/// 200 concurrent dispatches on a throttle of 50: exactly 50 pass.
pub async fn concurrent_throttle_exact_limit(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "concurrent_throttle_exact_limit";
    let key = format!("{prefix}t");
    let results = race(&store, RACERS, |s, _| {
        let key = key.clone();
        async move { s.apply_gates(&[throttle(&key, 50, LONG)]).await }
    })
    .await;
    let mut passed = 0;
    for (i, r) in results.into_iter().enumerate() {
        match ok(C, "apply_gates", r) {
            GateResult::Passed => passed += 1,
            other => {
                assert_throttled(C, &format!("racer {i}"), &other, 0, LONG);
            }
        }
    }
    assert_eq!(
        passed, 50,
        "conformance[{C}]: {RACERS} racers on a throttle of 50 must yield exactly 50 passes"
    );
    assert_eq!(
        ok(C, "window_count", store.window_count(&key, LONG).await),
        50,
        "conformance[{C}]: window_count after the race"
    );
}

/// 200 concurrent dispatches on a quota of 50: exactly 50 pass.
pub async fn concurrent_quota_exact_limit(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "concurrent_quota_exact_limit";
    timed(C, prefix, |p| concurrent_quota_once(&store, p)).await;
}

async fn concurrent_quota_once(store: &Arc<dyn StateStore>, p: String) -> Attempt {
    const C: &str = "concurrent_quota_exact_limit";
    let key = format!("{p}q");
    let window = ms(LONG);
    let started = unix_ms();
    let results = race(store, RACERS, |s, _| {
        let key = key.clone();
        async move { s.apply_gates(&[quota(&key, 50, LONG)]).await }
    })
    .await;
    let used = ok(C, "quota_usage", store.quota_usage(&key, LONG).await);
    // A race that straddles a window boundary legitimately passes more than 50.
    before_wall(
        started - started % window + window - ms(SLACK),
        "the race, inside one quota window",
    )?;
    let mut passed = 0;
    for (i, r) in results.into_iter().enumerate() {
        match ok(C, "apply_gates", r) {
            GateResult::Passed => passed += 1,
            other => {
                assert_quota_exceeded(C, &format!("racer {i}"), &other, 0, 50, LONG);
            }
        }
    }
    assert_eq!(
        passed, 50,
        "conformance[{C}]: {RACERS} racers on a quota of 50 must yield exactly 50 passes"
    );
    assert_eq!(used, 50, "conformance[{C}]: quota_usage after the race");
    Ok(())
}

/// 200 concurrent `[Dedup(own key), Throttle(shared, 50)]`: exactly 50 pass, and exactly
/// the passing dispatches marked their dedup keys.
pub async fn concurrent_multi_gate_atomic(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "concurrent_multi_gate_atomic";
    let t = format!("{prefix}t");
    let results = race(&store, RACERS, |s, i| {
        let gates = [
            dedup(&format!("{prefix}d{i}"), LONG, "tok"),
            throttle(&t, 50, LONG),
        ];
        async move { s.apply_gates(&gates).await }
    })
    .await;
    let mut passed = HashSet::new();
    for (i, r) in results.into_iter().enumerate() {
        match ok(C, "apply_gates", r) {
            GateResult::Passed => {
                passed.insert(i);
            }
            other => {
                assert_throttled(C, &format!("racer {i}"), &other, 1, LONG);
            }
        }
    }
    assert_eq!(
        passed.len(),
        50,
        "conformance[{C}]: exactly 50 of {RACERS} dispatches must pass"
    );
    for i in 0..RACERS {
        let marked = ok(
            C,
            "dedup_exists",
            store.dedup_exists(&format!("{prefix}d{i}")).await,
        );
        assert_eq!(
            marked,
            passed.contains(&i),
            "conformance[{C}]: dispatch {i}: its dedup key must be marked exactly when it passed"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Compare-and-swap values
// ---------------------------------------------------------------------------------------

/// Create with `None`; wrong expectations change nothing; the right version updates and
/// yields a new version.
pub async fn cas_create_update_conflict(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "cas_create_update_conflict";
    let s = &*store;
    let k = format!("{prefix}v");
    let get = |what: &'static str| async move { ok(C, what, s.get(&format!("{prefix}v")).await) };
    assert_eq!(
        get("get of a fresh key").await,
        None,
        "conformance[{C}]: a fresh key has no value"
    );
    assert_eq!(
        ok(
            C,
            "compare_and_swap",
            s.compare_and_swap(&k, Some(1), b"x".to_vec(), None).await
        ),
        None,
        "conformance[{C}]: expecting a version of an absent key must fail"
    );
    assert_eq!(
        get("get after a failed create").await,
        None,
        "conformance[{C}]: a failed swap must not write"
    );
    let v1 = ok(
        C,
        "compare_and_swap",
        s.compare_and_swap(&k, None, b"a".to_vec(), None).await,
    )
    .unwrap_or_else(|| {
        panic!("conformance[{C}]: creating an absent key with expected None must succeed")
    });
    let a = Versioned {
        value: b"a".to_vec(),
        version: v1,
    };
    assert_eq!(
        get("get after create").await,
        Some(a.clone()),
        "conformance[{C}]: get must return the value and its version"
    );
    assert_eq!(
        ok(
            C,
            "compare_and_swap",
            s.compare_and_swap(&k, None, b"b".to_vec(), None).await
        ),
        None,
        "conformance[{C}]: expecting absence of a present key must fail"
    );
    assert_eq!(
        ok(
            C,
            "compare_and_swap",
            s.compare_and_swap(&k, Some(v1.wrapping_add(1)), b"b".to_vec(), None)
                .await
        ),
        None,
        "conformance[{C}]: a wrong version must fail"
    );
    assert_eq!(
        get("get after failed swaps").await,
        Some(a),
        "conformance[{C}]: failed swaps must leave the value"
    );
    let v2 = ok(
        C,
        "compare_and_swap",
        s.compare_and_swap(&k, Some(v1), b"b".to_vec(), None).await,
    )
    .unwrap_or_else(|| panic!("conformance[{C}]: a swap with the current version must succeed"));
    assert_ne!(
        v2, v1,
        "conformance[{C}]: an update must yield a new version"
    );
    assert_eq!(
        get("get after update").await,
        Some(Versioned {
            value: b"b".to_vec(),
            version: v2
        }),
        "conformance[{C}]: get after update"
    );
    assert_eq!(
        ok(
            C,
            "compare_and_swap",
            s.compare_and_swap(&k, Some(v1), b"c".to_vec(), None).await
        ),
        None,
        "conformance[{C}]: the old version must no longer be accepted"
    );
    let v3 = ok(
        C,
        "compare_and_swap",
        s.compare_and_swap(&k, Some(v2), b"c".to_vec(), None).await,
    )
    .unwrap_or_else(|| panic!("conformance[{C}]: a second update must succeed"));
    assert!(
        v3 != v2 && v3 != v1,
        "conformance[{C}]: versions must not repeat ({v1}, {v2}, {v3})"
    );
    assert_eq!(
        ok(C, "get", s.get(&format!("{prefix}other")).await),
        None,
        "conformance[{C}]: other keys are untouched"
    );
}

/// `delete` removes a value (true) and reports absence (false); a deleted key can be created again.
pub async fn cas_delete(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "cas_delete";
    let s = &*store;
    let k = format!("{prefix}v");
    assert!(
        !ok(C, "delete", s.delete(&k).await),
        "conformance[{C}]: deleting an absent key must return false"
    );
    let v1 = ok(
        C,
        "compare_and_swap",
        s.compare_and_swap(&k, None, b"a".to_vec(), None).await,
    )
    .unwrap_or_else(|| panic!("conformance[{C}]: create must succeed"));
    assert!(
        ok(C, "delete", s.delete(&k).await),
        "conformance[{C}]: deleting a present key must return true"
    );
    assert_eq!(
        ok(C, "get", s.get(&k).await),
        None,
        "conformance[{C}]: a deleted key has no value"
    );
    assert!(
        !ok(C, "delete", s.delete(&k).await),
        "conformance[{C}]: a second delete must return false"
    );
    assert_eq!(
        ok(
            C,
            "compare_and_swap",
            s.compare_and_swap(&k, Some(v1), b"b".to_vec(), None).await
        ),
        None,
        "conformance[{C}]: the version of a deleted value must not be accepted"
    );
    let v2 = ok(
        C,
        "compare_and_swap",
        s.compare_and_swap(&k, None, b"c".to_vec(), None).await,
    )
    .unwrap_or_else(|| {
        panic!("conformance[{C}]: re-creating a deleted key with expected None must succeed")
    });
    assert_eq!(
        ok(C, "get", s.get(&k).await),
        Some(Versioned {
            value: b"c".to_vec(),
            version: v2
        }),
        "conformance[{C}]: get after re-create"
    );
}

/// A value with a TTL disappears after it: get, swaps against its version and delete see nothing.
pub async fn cas_ttl_expiry(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "cas_ttl_expiry";
    timed(C, prefix, |p| cas_ttl_once(&*store, p)).await;
}

async fn cas_ttl_once(s: &dyn StateStore, p: String) -> Attempt {
    const C: &str = "cas_ttl_expiry";
    let (k, d, forever) = (format!("{p}v"), format!("{p}d"), format!("{p}forever"));
    let started = Instant::now();
    let v1 = ok(
        C,
        "compare_and_swap",
        s.compare_and_swap(&k, None, b"a".to_vec(), Some(TTL)).await,
    )
    .unwrap_or_else(|| panic!("conformance[{C}]: create with a TTL must succeed"));
    ok(
        C,
        "compare_and_swap",
        s.compare_and_swap(&d, None, b"d".to_vec(), Some(TTL)).await,
    )
    .unwrap_or_else(|| panic!("conformance[{C}]: create with a TTL must succeed"));
    let created = Instant::now();
    ok(
        C,
        "compare_and_swap",
        s.compare_and_swap(&forever, None, b"f".to_vec(), None)
            .await,
    )
    .unwrap_or_else(|| panic!("conformance[{C}]: create without a TTL must succeed"));
    let got = ok(C, "get", s.get(&k).await);
    before(started + TTL - SLACK, "get before the TTL")?;
    assert_eq!(
        got,
        Some(Versioned {
            value: b"a".to_vec(),
            version: v1
        }),
        "conformance[{C}]: the value must exist before its TTL"
    );

    sleep_until(created + TTL + SLACK).await;
    assert_eq!(
        ok(C, "get", s.get(&k).await),
        None,
        "conformance[{C}]: the value must be gone after its TTL"
    );
    assert!(
        !ok(C, "delete", s.delete(&d).await),
        "conformance[{C}]: deleting an expired value must return false"
    );
    assert_eq!(
        ok(
            C,
            "compare_and_swap",
            s.compare_and_swap(&k, Some(v1), b"b".to_vec(), None).await
        ),
        None,
        "conformance[{C}]: the version of an expired value must not be accepted"
    );
    let v2 = ok(
        C,
        "compare_and_swap",
        s.compare_and_swap(&k, None, b"c".to_vec(), None).await,
    )
    .unwrap_or_else(|| {
        panic!("conformance[{C}]: an expired key must count as absent for expected None")
    });
    assert_eq!(
        ok(C, "get", s.get(&k).await),
        Some(Versioned {
            value: b"c".to_vec(),
            version: v2
        }),
        "conformance[{C}]: get after re-create"
    );
    assert!(
        ok(C, "get", s.get(&forever).await).is_some(),
        "conformance[{C}]: a value without a TTL must not expire"
    );
    Ok(())
}

/// 100 concurrent swaps from the same version: exactly one wins, and its value is stored.
pub async fn concurrent_cas_single_winner(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "concurrent_cas_single_winner";
    let key = format!("{prefix}v");
    let v0 = ok(
        C,
        "compare_and_swap",
        store
            .compare_and_swap(&key, None, b"start".to_vec(), None)
            .await,
    )
    .unwrap_or_else(|| panic!("conformance[{C}]: create must succeed"));
    let results = race(&store, 100, |s, i| {
        let key = key.clone();
        async move {
            s.compare_and_swap(&key, Some(v0), format!("racer{i}").into_bytes(), None)
                .await
        }
    })
    .await;
    let winners: Vec<(usize, u64)> = results
        .into_iter()
        .enumerate()
        .filter_map(|(i, r)| ok(C, "compare_and_swap", r).map(|v| (i, v)))
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "conformance[{C}]: 100 swaps from one version: exactly one must win, got {winners:?}"
    );
    let (i, version) = winners[0];
    assert_eq!(
        ok(C, "get", store.get(&key).await),
        Some(Versioned {
            value: format!("racer{i}").into_bytes(),
            version
        }),
        "conformance[{C}]: the stored value must be the winner's"
    );
}

// ---------------------------------------------------------------------------------------
// Locks
// ---------------------------------------------------------------------------------------

/// One owner at a time; only the owner unlocks.
pub async fn lock_exclusive_owner(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "lock_exclusive_owner";
    let s = &*store;
    let k = format!("{prefix}lock");
    assert!(
        !ok(C, "unlock", s.unlock(&k, "a").await),
        "conformance[{C}]: unlocking a free lock must return false"
    );
    assert!(
        ok(C, "try_lock", s.try_lock(&k, "a", LONG).await),
        "conformance[{C}]: A must get a free lock"
    );
    assert!(
        !ok(C, "try_lock", s.try_lock(&k, "b", LONG).await),
        "conformance[{C}]: B must not get A's lock"
    );
    assert!(
        !ok(C, "unlock", s.unlock(&k, "b").await),
        "conformance[{C}]: B must not unlock A's lock"
    );
    assert!(
        !ok(C, "try_lock", s.try_lock(&k, "b", LONG).await),
        "conformance[{C}]: A must still hold the lock after B's unlock"
    );
    assert!(
        ok(C, "try_lock", s.try_lock(&k, "a", LONG).await),
        "conformance[{C}]: A must be able to re-acquire its own lock"
    );
    assert!(
        ok(C, "unlock", s.unlock(&k, "a").await),
        "conformance[{C}]: A must unlock its lock"
    );
    assert!(
        !ok(C, "unlock", s.unlock(&k, "a").await),
        "conformance[{C}]: a second unlock must return false"
    );
    assert!(
        ok(C, "try_lock", s.try_lock(&k, "b", LONG).await),
        "conformance[{C}]: B must get the lock once A released it"
    );
    assert!(
        !ok(C, "try_lock", s.try_lock(&k, "a", LONG).await),
        "conformance[{C}]: A must not get B's lock"
    );
    assert!(
        ok(
            C,
            "try_lock",
            s.try_lock(&format!("{prefix}other"), "a", LONG).await
        ),
        "conformance[{C}]: locks of other keys are independent"
    );
    assert!(
        ok(C, "unlock", s.unlock(&k, "b").await),
        "conformance[{C}]: B must unlock its lock"
    );
}

/// Re-acquiring one's own lock extends it past its original expiry.
pub async fn lock_reacquire_extends(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "lock_reacquire_extends";
    timed(C, prefix, |p| lock_extend_once(&*store, p)).await;
}

async fn lock_extend_once(s: &dyn StateStore, p: String) -> Attempt {
    const C: &str = "lock_reacquire_extends";
    let k = format!("{p}lock");
    let ttl = WINDOW;
    assert!(
        ok(C, "try_lock", s.try_lock(&k, "a", ttl).await),
        "conformance[{C}]: A must get a free lock"
    );
    let e1 = Instant::now();
    tokio::time::sleep(GAP).await;
    let s2 = Instant::now();
    assert!(
        ok(C, "try_lock", s.try_lock(&k, "a", ttl).await),
        "conformance[{C}]: A must re-acquire its own lock"
    );
    let e2 = Instant::now();

    sleep_until(e1 + ttl + SLACK).await;
    let b = ok(C, "try_lock", s.try_lock(&k, "b", ttl).await);
    before(
        s2 + ttl - SLACK,
        "B's attempt after the first TTL but before the extended one",
    )?;
    assert!(
        !b,
        "conformance[{C}]: B got the lock after A's first TTL, but A's re-acquire must have extended it"
    );

    sleep_until(e2 + ttl + SLACK).await;
    assert!(
        ok(C, "try_lock", s.try_lock(&k, "b", ttl).await),
        "conformance[{C}]: B must get the lock once the extended TTL ran out"
    );
    assert!(
        !ok(C, "unlock", s.unlock(&k, "a").await),
        "conformance[{C}]: A lost the lock; its unlock must return false"
    );
    assert!(
        !ok(C, "try_lock", s.try_lock(&k, "a", ttl).await),
        "conformance[{C}]: A must not take B's lock back"
    );
    assert!(
        ok(C, "unlock", s.unlock(&k, "b").await),
        "conformance[{C}]: B must unlock its lock"
    );
    Ok(())
}

/// An expired lock goes to the next owner; the former owner can neither unlock nor retake it.
pub async fn lock_expiry_hands_over(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "lock_expiry_hands_over";
    timed(C, prefix, |p| lock_expiry_once(&*store, p)).await;
}

async fn lock_expiry_once(s: &dyn StateStore, p: String) -> Attempt {
    const C: &str = "lock_expiry_hands_over";
    let k = format!("{p}lock");
    let s1 = Instant::now();
    assert!(
        ok(C, "try_lock", s.try_lock(&k, "a", TTL).await),
        "conformance[{C}]: A must get a free lock"
    );
    let e1 = Instant::now();
    let b = ok(C, "try_lock", s.try_lock(&k, "b", TTL).await);
    let b_unlock = ok(C, "unlock", s.unlock(&k, "b").await);
    before(s1 + TTL - SLACK, "B's attempts before A's TTL")?;
    assert!(
        !b,
        "conformance[{C}]: B must not get A's lock before its TTL"
    );
    assert!(!b_unlock, "conformance[{C}]: B must not unlock A's lock");

    sleep_until(e1 + TTL + SLACK).await;
    assert!(
        !ok(C, "unlock", s.unlock(&k, "a").await),
        "conformance[{C}]: A's lock expired; its unlock must return false"
    );
    assert!(
        ok(C, "try_lock", s.try_lock(&k, "b", LONG).await),
        "conformance[{C}]: B must get the lock after A's TTL"
    );
    assert!(
        !ok(C, "unlock", s.unlock(&k, "a").await),
        "conformance[{C}]: A lost the lock; its unlock must return false"
    );
    assert!(
        !ok(C, "try_lock", s.try_lock(&k, "a", TTL).await),
        "conformance[{C}]: A must not take B's lock back"
    );
    assert!(
        ok(C, "unlock", s.unlock(&k, "b").await),
        "conformance[{C}]: B must unlock its lock"
    );
    Ok(())
}

/// 100 concurrent owners: exactly one gets the lock.
pub async fn concurrent_lock_single_winner(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "concurrent_lock_single_winner";
    let key = format!("{prefix}lock");
    let results = race(&store, 100, |s, i| {
        let key = key.clone();
        async move { s.try_lock(&key, &format!("owner{i}"), LONG).await }
    })
    .await;
    let mut winners = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        if ok(C, "try_lock", r) {
            winners.push(i);
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "conformance[{C}]: 100 owners on one lock: exactly one must get it, got {winners:?}"
    );
    assert!(
        ok(
            C,
            "unlock",
            store.unlock(&key, &format!("owner{}", winners[0])).await
        ),
        "conformance[{C}]: the winner must hold the lock"
    );
}

// ---------------------------------------------------------------------------------------
// Timers
// ---------------------------------------------------------------------------------------

/// Due timers are claimed once per lease; the lease expires; completion needs the current claim.
pub async fn timers_claim_lease_complete(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "timers_claim_lease_complete";
    let _serial = TIMER_CHECKS.lock().await;
    timed(C, prefix, |p| timers_lease_once(&*store, p)).await;
}

async fn timers_lease_once(s: &dyn StateStore, p: String) -> Attempt {
    const C: &str = "timers_claim_lease_complete";
    let (due1, due2, later) = (format!("{p}due1"), format!("{p}due2"), format!("{p}later"));
    let claim = |what: &'static str| async move {
        ok(C, what, s.claim_due_timers(unix_ms(), 10_000, LEASE).await)
    };
    let now = unix_ms();
    ok(
        C,
        "schedule_timer",
        s.schedule_timer(&due1, now - 2_000, b"one".to_vec()).await,
    );
    ok(
        C,
        "schedule_timer",
        s.schedule_timer(&due2, now - 1_000, b"two".to_vec()).await,
    );
    ok(
        C,
        "schedule_timer",
        s.schedule_timer(&later, now + 600_000, b"later".to_vec())
            .await,
    );

    let s1 = Instant::now();
    let first = claim("first claim").await;
    let e1 = Instant::now();
    let mine = ours(&first, &p);
    assert_eq!(
        ids(&mine),
        vec![due1.clone(), due2.clone()],
        "conformance[{C}]: the first claim must return exactly the two due timers"
    );
    let payloads: HashMap<&str, &[u8]> = mine
        .iter()
        .map(|t| (t.id.as_str(), t.payload.as_slice()))
        .collect();
    assert_eq!(
        payloads[due1.as_str()],
        b"one",
        "conformance[{C}]: payload of a claimed timer"
    );
    assert_eq!(
        payloads[due2.as_str()],
        b"two",
        "conformance[{C}]: payload of a claimed timer"
    );
    let claim1: HashMap<String, String> = mine
        .iter()
        .map(|t| (t.id.clone(), t.claim.clone()))
        .collect();

    let (second_a, second_b) =
        tokio::join!(claim("second claim"), claim("concurrent second claim"));
    before(s1 + LEASE - SLACK, "second claims within the lease")?;
    assert!(
        ours(&second_a, &p).is_empty(),
        "conformance[{C}]: a claim during the lease must get none of the claimed timers"
    );
    assert!(
        ours(&second_b, &p).is_empty(),
        "conformance[{C}]: a concurrent claim during the lease must get none of the claimed timers"
    );

    assert!(
        ok(
            C,
            "complete_timer",
            s.complete_timer(&due1, &claim1[&due1]).await
        ),
        "conformance[{C}]: completing with the claim must succeed"
    );
    assert!(
        !ok(
            C,
            "complete_timer",
            s.complete_timer(&due1, &claim1[&due1]).await
        ),
        "conformance[{C}]: a completed timer is gone"
    );

    sleep_until(e1 + LEASE + SLACK).await;
    let third = claim("claim after the lease").await;
    let reclaimed = ours(&third, &p);
    assert_eq!(
        ids(&reclaimed),
        vec![due2.clone()],
        "conformance[{C}]: after the lease only the unfinished due timer must be claimable again"
    );
    let fresh = reclaimed[0].claim.clone();
    assert_ne!(
        fresh, claim1[&due2],
        "conformance[{C}]: a new claim must differ from the expired one"
    );
    assert!(
        !ok(
            C,
            "complete_timer",
            s.complete_timer(&due2, &claim1[&due2]).await
        ),
        "conformance[{C}]: completing with a stale claim must fail"
    );
    assert!(
        ok(C, "complete_timer", s.complete_timer(&due2, &fresh).await),
        "conformance[{C}]: completing with the current claim must succeed"
    );
    assert!(
        !ok(C, "complete_timer", s.complete_timer(&due2, &fresh).await),
        "conformance[{C}]: a completed timer is gone"
    );
    assert!(
        ours(&claim("claim after completion").await, &p).is_empty(),
        "conformance[{C}]: completed timers must not be claimed again"
    );

    // Rescheduling replaces the timer: the future one becomes due with a new payload.
    ok(
        C,
        "schedule_timer",
        s.schedule_timer(&later, unix_ms() - 1, b"replaced".to_vec())
            .await,
    );
    let last = claim("claim after rescheduling").await;
    let mine = ours(&last, &p);
    assert_eq!(
        ids(&mine),
        vec![later.clone()],
        "conformance[{C}]: the rescheduled timer must now be due"
    );
    assert_eq!(
        mine[0].payload, b"replaced",
        "conformance[{C}]: rescheduling must replace the payload"
    );
    assert!(
        ok(
            C,
            "complete_timer",
            s.complete_timer(&later, &mine[0].claim).await
        ),
        "conformance[{C}]: completing the rescheduled timer"
    );
    Ok(())
}

/// 20 concurrent claimers over 50 due timers: every timer is claimed exactly once.
pub async fn timers_concurrent_claims_exactly_once(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "timers_concurrent_claims_exactly_once";
    const TIMERS: usize = 50;
    const CLAIMERS: usize = 20;
    const MAX: usize = 3;
    let _serial = TIMER_CHECKS.lock().await;
    let now = unix_ms();
    for i in 0..TIMERS {
        let id = format!("{prefix}timer{i:02}");
        ok(
            C,
            "schedule_timer",
            store
                .schedule_timer(&id, now - 1_000 - i as u64, id.clone().into_bytes())
                .await,
        );
    }
    let prefix_owned = prefix.to_owned();
    let results = race(&store, CLAIMERS, |s, _| {
        let prefix = prefix_owned.clone();
        async move {
            let mut mine = Vec::new();
            for _ in 0..1_000 {
                let claimed = ok(
                    C,
                    "claim_due_timers",
                    s.claim_due_timers(unix_ms(), MAX, Duration::from_secs(30))
                        .await,
                );
                assert!(
                    claimed.len() <= MAX,
                    "conformance[{C}]: a claim returned {} timers, more than max {MAX}",
                    claimed.len()
                );
                if claimed.is_empty() {
                    return mine;
                }
                mine.extend(claimed.into_iter().filter(|t| t.id.starts_with(&prefix)));
            }
            panic!("conformance[{C}]: a claimer was still getting timers after 1000 claims");
        }
    })
    .await;
    let mut seen: HashMap<String, Vec<String>> = HashMap::new();
    for claimed in results.iter().flatten() {
        assert_eq!(
            claimed.payload,
            claimed.id.as_bytes(),
            "conformance[{C}]: payload of {}",
            claimed.id
        );
        seen.entry(claimed.id.clone())
            .or_default()
            .push(claimed.claim.clone());
    }
    let twice: Vec<_> = seen
        .iter()
        .filter(|(_, c)| c.len() > 1)
        .map(|(id, _)| id.clone())
        .collect();
    assert!(
        twice.is_empty(),
        "conformance[{C}]: timers claimed more than once within their lease: {twice:?}"
    );
    assert_eq!(
        seen.len(),
        TIMERS,
        "conformance[{C}]: every due timer must be claimed once, got {} of {TIMERS}",
        seen.len()
    );
    for (id, claims) in &seen {
        assert!(
            ok(
                C,
                "complete_timer",
                store.complete_timer(id, &claims[0]).await
            ),
            "conformance[{C}]: completing {id}"
        );
    }
    let left = ok(
        C,
        "claim_due_timers",
        store.claim_due_timers(unix_ms(), 10_000, LEASE).await,
    );
    assert!(
        ours(&left, prefix).is_empty(),
        "conformance[{C}]: completed timers must be gone"
    );
}

// ---------------------------------------------------------------------------------------
// Parked actions: deferrals, groups, state machines, state reads, timer backlog
// ---------------------------------------------------------------------------------------

/// A group waits this long before its first notification in the group checks.
const WAIT: Duration = Duration::from_secs(3_600);
/// Pause between a group's notifications in the group checks.
const INTERVAL: Duration = Duration::from_secs(7_200);
/// Events a group keeps in the group checks.
const MAX_EVENTS: usize = 3;

/// A claim time later than every timer the parked checks arm: claims the groups' timers
/// without waiting for them (due-ness is the caller's clock).
fn far_future() -> u64 {
    unix_ms() + 2 * 86_400_000
}

/// An append to the group at `key` with the checks' defaults; its timer is `<key>#flush`.
fn append(key: &str, event: &str) -> GroupAppend {
    GroupAppend {
        key: key.to_owned(),
        group_id: format!("{key}#id"),
        meta: b"meta".to_vec(),
        event: event.as_bytes().to_vec(),
        max_events: MAX_EVENTS,
        wait: WAIT,
        interval: INTERVAL,
        idle_ttl: LONG,
        timer_id: flush_timer(key),
        timer_payload: format!("flush {key}").into_bytes(),
        fingerprint: None,
        repeat: None,
    }
}

/// `advance_timer` replaces a claimed timer's payload and due time and ends the claim (or,
/// held, keeps it: the timer goes to no one else though due); a wrong or ended claim
/// changes nothing.
pub async fn timers_advance_under_the_claim(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "timers_advance_under_the_claim";
    let _serial = TIMER_CHECKS.lock().await;
    let s = &*store;
    let id = format!("{prefix}step");
    let advance = |claim: String, due: u64, payload: &'static str| {
        let id = id.clone();
        async move {
            s.advance_timer(&id, &claim, due, payload.as_bytes().to_vec(), None)
                .await
        }
    };
    ok(
        C,
        "schedule_timer",
        s.schedule_timer(&id, unix_ms(), b"one".to_vec()).await,
    );
    let claimed = claim_ours(s, C, unix_ms() + 1_000, prefix).await;
    assert_eq!(claimed.len(), 1, "conformance[{C}]: the timer is due");
    let claim = claimed[0].claim.clone();
    let now = unix_ms();
    let held = s.advance_timer(&id, &claim, now, b"held".to_vec(), Some(LONG));
    assert!(
        ok(C, "advance_timer", held.await),
        "conformance[{C}]: advanced, holding the claim"
    );
    assert!(
        claim_ours(s, C, unix_ms() + 1_000, prefix).await.is_empty(),
        "conformance[{C}]: a held timer goes to no one else, though due"
    );
    assert_eq!(
        ok(C, "get_timer", s.get_timer(&id).await),
        Some((now, b"held".to_vec())),
        "conformance[{C}]: the held step's payload"
    );
    let later = unix_ms() + 3_600_000;
    assert!(
        !ok(
            C,
            "advance_timer",
            advance("not-the-claim".into(), later, "x").await
        ),
        "conformance[{C}]: another claim changes nothing"
    );
    assert!(
        ok(
            C,
            "advance_timer",
            advance(claim.clone(), later, "two").await
        ),
        "conformance[{C}]: advanced under the claim"
    );
    assert!(
        !ok(
            C,
            "advance_timer",
            advance(claim.clone(), later, "three").await
        ),
        "conformance[{C}]: advancing ended the claim"
    );
    assert_eq!(
        ok(C, "get_timer", s.get_timer(&id).await),
        Some((later, b"two".to_vec())),
        "conformance[{C}]: get_timer reads the timer"
    );
    assert_eq!(
        ok(C, "get_timer", s.get_timer(&format!("{prefix}none")).await),
        None,
        "conformance[{C}]: no such timer"
    );
    assert!(
        claim_ours(s, C, later - 1, prefix).await.is_empty(),
        "conformance[{C}]: not due before its new time"
    );
    let again = claim_ours(s, C, later, prefix).await;
    assert_eq!(
        again
            .iter()
            .map(|t| (t.payload.clone(), t.due_ms))
            .collect::<Vec<_>>(),
        [(b"two".to_vec(), later)],
        "conformance[{C}]: the new payload at the new time"
    );
    assert!(ok(
        C,
        "complete_timer",
        s.complete_timer(&id, &again[0].claim).await
    ));
}

/// `list_timers` lists the timers of an id prefix in id order, claimed or not, pages after
/// a given id, honours the limit, and forgets completed timers; a prefix with LIKE or glob
/// characters is taken literally.
pub async fn timers_listed_by_prefix(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "timers_listed_by_prefix";
    let _serial = TIMER_CHECKS.lock().await;
    let s = &*store;
    let later = unix_ms() + 3_600_000;
    let list = |p: String, after: Option<String>, limit: usize| async move {
        let found = ok(
            C,
            "list_timers",
            s.list_timers(&p, after.as_deref(), limit).await,
        );
        found.into_iter().map(|t| t.id).collect::<Vec<_>>()
    };
    let ids: Vec<String> = ["a%b:3", "a%b:1", "a%b:2", "a_b:1", "a%c:1"]
        .iter()
        .map(|k| format!("{prefix}list:{k}"))
        .collect();
    for (i, id) in ids.iter().enumerate() {
        let payload = format!("p{i}").into_bytes();
        ok(
            C,
            "schedule_timer",
            s.schedule_timer(id, later + i as u64, payload).await,
        );
    }
    let p = format!("{prefix}list:a%b:");
    let all = list(p.clone(), None, 10).await;
    assert_eq!(
        all,
        [ids[1].clone(), ids[2].clone(), ids[0].clone()],
        "conformance[{C}]: in id order, literal prefix"
    );
    let listed = ok(C, "list_timers", s.list_timers(&p, None, 1).await);
    assert_eq!(
        listed
            .iter()
            .map(|t| (t.id.as_str(), t.due_ms, t.payload.as_slice()))
            .collect::<Vec<_>>(),
        [(ids[1].as_str(), later + 1, b"p1".as_slice())],
        "conformance[{C}]: id, due time and payload, at most the limit"
    );
    assert_eq!(
        list(p.clone(), Some(ids[1].clone()), 10).await,
        [ids[2].clone(), ids[0].clone()],
        "conformance[{C}]: the page after an id"
    );
    ok(
        C,
        "schedule_timer",
        s.schedule_timer(&ids[2], unix_ms(), b"due".to_vec()).await,
    );
    let claimed = claim_ours(s, C, unix_ms() + 1_000, prefix).await;
    assert_eq!(claimed.len(), 1, "conformance[{C}]: the due one is claimed");
    assert_eq!(
        list(p.clone(), None, 10).await,
        [ids[1].clone(), ids[2].clone(), ids[0].clone()],
        "conformance[{C}]: a claimed timer is still listed"
    );
    assert!(ok(
        C,
        "complete_timer",
        s.complete_timer(&ids[2], &claimed[0].claim).await
    ));
    assert_eq!(
        list(p.clone(), None, 10).await,
        [ids[1].clone(), ids[0].clone()],
        "conformance[{C}]: a completed timer is not"
    );
    assert!(list(format!("{prefix}list:zz"), None, 10).await.is_empty());
    assert!(
        ok(C, "delete_timer", s.delete_timer(&ids[1]).await),
        "deleted"
    );
    assert!(
        !ok(C, "delete_timer", s.delete_timer(&ids[1]).await),
        "gone"
    );
    assert_eq!(
        list(p.clone(), None, 10).await,
        [ids[0].clone()],
        "conformance[{C}]: a deleted timer is not listed"
    );
    assert_eq!(ok(C, "get_timer", s.get_timer(&ids[1]).await), None);
    // Leave nothing due behind for other timer checks.
    for id in [&ids[0], &ids[3], &ids[4]] {
        ok(
            C,
            "schedule_timer",
            s.schedule_timer(id, unix_ms(), Vec::new()).await,
        );
    }
    for t in claim_ours(s, C, unix_ms() + 1_000, prefix).await {
        ok(C, "complete_timer", s.complete_timer(&t.id, &t.claim).await);
    }
}

/// Repeat interval of the repeating group checks.
const REPEAT: Duration = Duration::from_secs(3 * 3_600);

/// An append to the repeating group at `key` of an event with fingerprint `fp`.
fn repeating(key: &str, event: &str, fp: &str) -> GroupAppend {
    GroupAppend {
        fingerprint: Some(fp.to_owned()),
        repeat: Some(REPEAT),
        ..append(key, event)
    }
}

fn flush_timer(key: &str) -> String {
    format!("{key}#flush")
}

/// A move of the event at `key` (fingerprint `<key>#fp`, initial state `new`) to `to`.
fn transition(key: &str, to: Option<&str>, from: &[&str]) -> Transition {
    Transition {
        key: key.to_owned(),
        fingerprint: format!("{key}#fp"),
        initial: "new".to_owned(),
        to: to.map(str::to_owned),
        allowed_from: from.iter().map(|s| (*s).to_owned()).collect(),
        require_timer: None,
        timeout: None,
        to_terminal: false,
        terminal: Vec::new(),
        active_sets: Vec::new(),
        record: format!("{key} to {to:?}").into_bytes(),
        ttl: LONG,
        notice: None,
    }
}

fn timer_write(id: &str, due_unix_ms: u64, payload: &str) -> TimerWrite {
    TimerWrite {
        id: id.to_owned(),
        due_unix_ms,
        payload: payload.as_bytes().to_vec(),
    }
}

async fn defer(
    store: &dyn StateStore,
    check: &str,
    gates: &[Gate],
    mode: GateMode,
    deferrals: &[Deferral],
) -> (GateResult, Vec<DeferResult>) {
    ok(
        check,
        "run_gates_and_defer",
        store.run_gates_and_defer(gates, mode, deferrals).await,
    )
}

/// Makes `deferrals` without gates; they must all be made.
async fn defer_all(
    store: &dyn StateStore,
    check: &str,
    deferrals: &[Deferral],
) -> Vec<DeferResult> {
    let (gates, results) = defer(store, check, &[], GateMode::APPLY, deferrals).await;
    assert_passed(check, "deferrals without gates", &gates);
    assert_eq!(
        results.len(),
        deferrals.len(),
        "conformance[{check}]: one result per deferral"
    );
    results
}

/// Appends one event; returns (group id, size, notify_at).
async fn append_one(store: &dyn StateStore, check: &str, a: GroupAppend) -> (String, u64, u64) {
    match defer_all(store, check, &[Deferral::GroupAppend(a)])
        .await
        .remove(0)
    {
        DeferResult::Grouped {
            group_id,
            size,
            notify_at_ms,
        } => (group_id, size, notify_at_ms),
        other => panic!("conformance[{check}]: a group append answered {other:?}"),
    }
}

async fn move_event(store: &dyn StateStore, check: &str, t: Transition) -> TransitionResult {
    match defer_all(store, check, &[Deferral::Transition(t)])
        .await
        .remove(0)
    {
        DeferResult::Transition(result) => result,
        other => panic!("conformance[{check}]: a transition answered {other:?}"),
    }
}

fn changed(previous: &str) -> TransitionResult {
    TransitionResult::Changed {
        previous: previous.to_owned(),
    }
}

fn unchanged(current: &str) -> TransitionResult {
    TransitionResult::Unchanged {
        current: current.to_owned(),
    }
}

fn refused(current: &str) -> TransitionResult {
    TransitionResult::Refused {
        current: current.to_owned(),
    }
}

/// The claims at `now` of timers whose id starts with `prefix`. Other timers claimed on a
/// shared backend are released at once (a claim far ahead would hold them for long).
async fn claim_ours(
    store: &dyn StateStore,
    check: &str,
    now: u64,
    prefix: &str,
) -> Vec<ClaimedTimer> {
    let claimed = ok(
        check,
        "claim_due_timers",
        store.claim_due_timers(now, 10_000, LONG).await,
    );
    let (ours, others): (Vec<_>, Vec<_>) =
        claimed.into_iter().partition(|t| t.id.starts_with(prefix));
    release_all(store, check, &others).await;
    ours
}

async fn release_all(store: &dyn StateStore, check: &str, claimed: &[ClaimedTimer]) {
    if claimed.is_empty() {
        return;
    }
    let claims: Vec<(String, String)> = claimed
        .iter()
        .map(|t| (t.id.clone(), t.claim.clone()))
        .collect();
    ok(check, "release_timers", store.release_timers(&claims).await);
}

/// Claims the flush timer of the group at `key` (due or not); returns the claim.
async fn claim_flush(store: &dyn StateStore, check: &str, key: &str) -> String {
    let timer = flush_timer(key);
    let claimed = claim_ours(store, check, far_future(), &timer).await;
    match &claimed[..] {
        [one] if one.id == timer => one.claim.clone(),
        other => panic!("conformance[{check}]: expected a claim of {timer}, got {other:?}"),
    }
}

async fn pending(store: &dyn StateStore, check: &str) -> u64 {
    ok(check, "pending_timers", store.pending_timers().await)
}

async fn group(store: &dyn StateStore, check: &str, key: &str) -> GroupInfo {
    ok(check, "get_group", store.get_group(key).await)
        .unwrap_or_else(|| panic!("conformance[{check}]: the group {key} must exist"))
}

async fn begin(store: &dyn StateStore, check: &str, key: &str) -> Option<GroupBatch> {
    ok(
        check,
        "group_flush_begin",
        store.group_flush_begin(key).await,
    )
}

async fn end(
    store: &dyn StateStore,
    check: &str,
    key: &str,
    claim: &str,
    repeat_at_ms: Option<u64>,
) -> bool {
    ok(
        check,
        "group_flush_end",
        store
            .group_flush_end(key, &flush_timer(key), claim, INTERVAL, repeat_at_ms)
            .await,
    )
}

fn events(batch: &GroupBatch) -> Vec<String> {
    batch
        .events
        .iter()
        .map(|e| String::from_utf8_lossy(e).into_owned())
        .collect()
}

/// Asserts `lo - SLACK <= value <= hi + SLACK` (times in Unix ms of backend and checker).
#[track_caller]
fn assert_ms_within(check: &str, what: &str, value: u64, lo: u64, hi: u64) {
    let slack = ms(SLACK);
    assert!(
        lo.saturating_sub(slack) <= value && value <= hi + slack,
        "conformance[{check}]: {what}: {value} is not within [{lo}, {hi}] (± {slack} ms)"
    );
}

async fn read(store: &dyn StateStore, check: &str, reads: &[StateRead]) -> StateAnswers {
    let answers = ok(check, "read_state", store.read_state(reads).await);
    assert_eq!(
        answers.len(),
        reads.len(),
        "conformance[{check}]: one answer per read"
    );
    answers
}

fn set_not_empty(key: &str) -> StateRead {
    StateRead::SetNotEmpty {
        key: key.to_owned(),
    }
}

/// A dispatch whose gate stops writes none of its deferrals (and applies none of its
/// gates), in either mode; the result list is empty.
pub async fn defer_stopped_gate_writes_nothing(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "defer_stopped_gate_writes_nothing";
    let _serial = TIMER_CHECKS.lock().await;
    let s = &*store;
    let (d, t, g, e, set) = (
        format!("{prefix}d"),
        format!("{prefix}t"),
        format!("{prefix}g"),
        format!("{prefix}e"),
        format!("{prefix}set"),
    );
    assert_passed(
        C,
        "marking the key",
        &apply(s, C, &[dedup(&d, LONG, "x")]).await,
    );
    let base = pending(s, C).await;
    let mut moved = transition(&e, Some("firing"), &["new"]);
    moved.timeout = Some(timer_write(&format!("{prefix}timeout"), unix_ms(), "t"));
    moved.active_sets = vec![set.clone()];
    let deferrals = [
        Deferral::Timer(timer_write(&format!("{prefix}timer"), unix_ms(), "timer")),
        Deferral::GroupAppend(append(&g, "e1")),
        Deferral::Transition(moved),
    ];
    let gates = [throttle(&t, 10, LONG), dedup(&d, LONG, "y")];
    for mode in [GateMode::APPLY, leased(TTL), GateMode::Check] {
        let (result, results) = defer(s, C, &gates, mode, &deferrals).await;
        assert_duplicate(C, &format!("{mode:?}"), &result, 1);
        assert!(
            results.is_empty(),
            "conformance[{C}]: {mode:?}: a stopped dispatch answers no deferral, got {results:?}"
        );
    }
    assert_eq!(
        ok(C, "window_count", s.window_count(&t, LONG).await),
        0,
        "conformance[{C}]: the passing throttle of a stopped dispatch must not count"
    );
    assert_eq!(
        pending(s, C).await,
        base,
        "conformance[{C}]: a stopped dispatch must register no timer"
    );
    assert!(
        claim_ours(s, C, far_future(), prefix).await.is_empty(),
        "conformance[{C}]: a stopped dispatch must leave nothing to claim"
    );
    assert_eq!(
        ok(C, "get_group", s.get_group(&g).await),
        None,
        "conformance[{C}]: a stopped dispatch must create no group"
    );
    assert_eq!(
        ok(C, "get_event", s.get_event(&e).await),
        None,
        "conformance[{C}]: a stopped dispatch must move no event"
    );
    assert_eq!(
        read(s, C, &[set_not_empty(&set)]).await,
        vec![0],
        "conformance[{C}]: a stopped dispatch must join no set"
    );
}

/// A dispatch whose gates pass applies them and makes every deferral, answered in order:
/// the timer, the group (and its flush timer), the event (and its timeout, and its sets).
pub async fn defer_passing_gates_write_all(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "defer_passing_gates_write_all";
    let _serial = TIMER_CHECKS.lock().await;
    let s = &*store;
    let (d, t, q, g, e, set) = (
        format!("{prefix}d"),
        format!("{prefix}t"),
        format!("{prefix}q"),
        format!("{prefix}g"),
        format!("{prefix}e"),
        format!("{prefix}set"),
    );
    let base = pending(s, C).await;
    let (timer, timeout) = (format!("{prefix}timer"), format!("{prefix}timeout"));
    let timeout_due = unix_ms() + 60_000;
    let mut moved = transition(&e, Some("firing"), &["new"]);
    moved.timeout = Some(timer_write(&timeout, timeout_due, "timeout"));
    moved.active_sets = vec![set.clone()];
    let deferrals = [
        Deferral::Timer(timer_write(&timer, unix_ms() - 1_000, "timer")),
        Deferral::GroupAppend(append(&g, "e1")),
        Deferral::Transition(moved),
    ];
    let gates = [
        dedup(&d, LONG, "x"),
        throttle(&t, 10, LONG),
        quota(&q, 10, LONG),
    ];
    let t0 = unix_ms();
    let (result, results) = defer(s, C, &gates, GateMode::APPLY, &deferrals).await;
    let t1 = unix_ms();
    assert_passed(C, "gates and deferrals", &result);
    let [
        DeferResult::Timer,
        DeferResult::Grouped {
            group_id,
            size,
            notify_at_ms,
        },
        DeferResult::Transition(moved),
    ] = &results[..]
    else {
        panic!("conformance[{C}]: expected [Timer, Grouped, Transition], got {results:?}");
    };
    assert_eq!(group_id, &format!("{g}#id"), "conformance[{C}]: group id");
    assert_eq!(*size, 1, "conformance[{C}]: the first event of a group");
    assert_ms_within(
        C,
        "notify_at of a new group",
        *notify_at_ms,
        t0 + ms(WAIT),
        t1 + ms(WAIT),
    );
    assert_eq!(moved, &changed("new"), "conformance[{C}]: the transition");

    assert!(
        ok(C, "dedup_exists", s.dedup_exists(&d).await),
        "conformance[{C}]: dedup applied"
    );
    assert_eq!(
        ok(C, "window_count", s.window_count(&t, LONG).await),
        1,
        "conformance[{C}]: throttle applied"
    );
    assert_eq!(
        ok(C, "quota_usage", s.quota_usage(&q, LONG).await),
        1,
        "conformance[{C}]: quota applied"
    );
    assert_eq!(
        pending(s, C).await,
        base + 3,
        "conformance[{C}]: the timer, the group's flush timer and the event's timeout"
    );
    let info = group(s, C, &g).await;
    assert_eq!(
        info.notify_at_ms,
        Some(*notify_at_ms),
        "conformance[{C}]: the group's armed time"
    );
    let event = ok(C, "get_event", s.get_event(&e).await)
        .unwrap_or_else(|| panic!("conformance[{C}]: the event must exist"));
    assert_eq!(event.state, "firing", "conformance[{C}]: the event's state");
    assert_eq!(
        event.timeout,
        Some((timeout.clone(), timeout_due)),
        "conformance[{C}]: the event's timeout"
    );
    assert_eq!(
        read(s, C, &[set_not_empty(&set)]).await,
        vec![1],
        "conformance[{C}]: the event joined its set"
    );

    let mut claimed = claim_ours(s, C, far_future(), prefix).await;
    claimed.sort_by(|a, b| a.id.cmp(&b.id));
    let got: Vec<(&str, &[u8])> = claimed
        .iter()
        .map(|t| (t.id.as_str(), t.payload.as_slice()))
        .collect();
    let flush = flush_timer(&g);
    let flush_payload = format!("flush {g}");
    let mut expected: Vec<(&str, &[u8])> = vec![
        (flush.as_str(), flush_payload.as_bytes()),
        (timeout.as_str(), b"timeout"),
        (timer.as_str(), b"timer"),
    ];
    expected.sort();
    assert_eq!(
        got, expected,
        "conformance[{C}]: the armed timers and their payloads"
    );
    for t in &claimed {
        assert!(
            ok(C, "complete_timer", s.complete_timer(&t.id, &t.claim).await),
            "conformance[{C}]: completing {}",
            t.id
        );
    }
}

/// Check mode: the gates are checked, none is applied, and the deferrals are made when all
/// pass; a leased Apply makes them too.
pub async fn defer_check_mode_makes_deferrals_only(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "defer_check_mode_makes_deferrals_only";
    let _serial = TIMER_CHECKS.lock().await;
    let s = &*store;
    let (d, t, e) = (
        format!("{prefix}d"),
        format!("{prefix}t"),
        format!("{prefix}e"),
    );
    let base = pending(s, C).await;
    let gates = [dedup(&d, LONG, "x"), throttle(&t, 1, LONG)];
    let deferrals = [
        Deferral::Timer(timer_write(
            &format!("{prefix}timer"),
            unix_ms() + 60_000,
            "timer",
        )),
        Deferral::Transition(transition(&e, Some("a"), &["new"])),
    ];
    let (result, results) = defer(s, C, &gates, GateMode::Check, &deferrals).await;
    assert_passed(C, "checked gates", &result);
    assert_eq!(
        results,
        vec![DeferResult::Timer, DeferResult::Transition(changed("new"))],
        "conformance[{C}]: deferrals of a checked dispatch"
    );
    assert!(
        !ok(C, "dedup_exists", s.dedup_exists(&d).await),
        "conformance[{C}]: a check must not mark"
    );
    assert_eq!(
        ok(C, "window_count", s.window_count(&t, LONG).await),
        0,
        "conformance[{C}]: a check must not count"
    );
    assert_eq!(
        pending(s, C).await,
        base + 1,
        "conformance[{C}]: the timer of a checked dispatch"
    );

    let again = [Deferral::Transition(transition(&e, Some("b"), &["a"]))];
    let (result, results) = defer(s, C, &gates, leased(TTL), &again).await;
    assert_passed(C, "leased gates", &result);
    assert_eq!(
        results,
        vec![DeferResult::Transition(changed("a"))],
        "conformance[{C}]: leased dispatch"
    );
    assert!(
        ok(C, "dedup_exists", s.dedup_exists(&d).await),
        "conformance[{C}]: a leased apply marks"
    );
    let (result, results) = defer(s, C, &gates, GateMode::Check, &again).await;
    assert_duplicate(C, "check of the marked key", &result, 0);
    assert!(
        results.is_empty(),
        "conformance[{C}]: a stopped check makes no deferral"
    );
}

/// A new group keeps its id and meta, arms its timer at now + wait; later appends only add
/// events (the armed time stays); it keeps the newest `max_events` and counts them all.
pub async fn group_append_creates_waits_and_truncates(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "group_append_creates_waits_and_truncates";
    let _serial = TIMER_CHECKS.lock().await;
    let s = &*store;
    let g = format!("{prefix}g");
    let base = pending(s, C).await;
    let t0 = unix_ms();
    let (id, size, armed) = append_one(s, C, append(&g, "e1")).await;
    let t1 = unix_ms();
    assert_eq!(
        (id.as_str(), size),
        (format!("{g}#id").as_str(), 1),
        "conformance[{C}]: first append"
    );
    assert_ms_within(
        C,
        "notify_at of a new group",
        armed,
        t0 + ms(WAIT),
        t1 + ms(WAIT),
    );

    let mut other = append(&g, "e2");
    other.group_id = "other".into();
    other.meta = b"other".to_vec();
    other.wait = Duration::from_secs(60);
    other.timer_payload = b"other".to_vec();
    assert_eq!(
        append_one(s, C, other).await,
        (format!("{g}#id"), 2, armed),
        "conformance[{C}]: an append to an armed group keeps its id and armed time"
    );
    for (n, event) in ["e3", "e4", "e5"].into_iter().enumerate() {
        let (_, size, at) = append_one(s, C, append(&g, event)).await;
        assert_eq!(
            (size, at),
            (n as u64 + 3, armed),
            "conformance[{C}]: append of {event}"
        );
    }
    let t2 = unix_ms();
    let info = group(s, C, &g).await;
    assert_eq!(
        (
            info.key.as_str(),
            info.group_id.as_str(),
            info.meta.as_slice(),
            info.pending,
            info.notify_at_ms,
            info.last_flush_ms
        ),
        (
            g.as_str(),
            format!("{g}#id").as_str(),
            b"meta".as_slice(),
            5,
            Some(armed),
            None
        ),
        "conformance[{C}]: the group after five appends"
    );
    assert_ms_within(C, "last_event_ms", info.last_event_ms, t0, t2);
    assert_eq!(
        pending(s, C).await,
        base + 1,
        "conformance[{C}]: one flush timer per group"
    );
    let claimed = claim_ours(s, C, far_future(), prefix).await;
    assert_eq!(
        claimed.len(),
        1,
        "conformance[{C}]: one flush timer, got {claimed:?}"
    );
    assert_eq!(
        (claimed[0].id.as_str(), claimed[0].payload.as_slice()),
        (flush_timer(&g).as_str(), format!("flush {g}").as_bytes()),
        "conformance[{C}]: the flush timer keeps the payload of the append that armed it"
    );
    let batch = begin(s, C, &g)
        .await
        .unwrap_or_else(|| panic!("conformance[{C}]: a batch"));
    assert_eq!(
        events(&batch),
        ["e3", "e4", "e5"],
        "conformance[{C}]: the newest max_events events, oldest first"
    );
    assert_eq!(
        (
            batch.group_id.as_str(),
            batch.meta.as_slice(),
            batch.event_count,
            batch.repeat
        ),
        (format!("{g}#id").as_str(), b"meta".as_slice(), 5, false),
        "conformance[{C}]: the batch"
    );
    assert_ms_within(C, "batch last_event_ms", batch.last_event_ms, t0, t2);
    assert_eq!(
        group(s, C, &g).await.pending,
        0,
        "conformance[{C}]: the batch left the pending list"
    );
    assert!(
        end(s, C, &g, &claimed[0].claim, None).await,
        "conformance[{C}]: ending the flush"
    );
}

/// Events that arrive while a batch is in flight wait for the next notification: a crashed
/// flush gets the same batch again, and the end re-arms the timer at now + interval.
pub async fn group_flush_rearms_for_events_in_flight(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "group_flush_rearms_for_events_in_flight";
    let _serial = TIMER_CHECKS.lock().await;
    let s = &*store;
    let g = format!("{prefix}g");
    let base = pending(s, C).await;
    let (_, _, armed) = append_one(s, C, append(&g, "e1")).await;
    let claim = claim_flush(s, C, &g).await;
    let first = begin(s, C, &g)
        .await
        .unwrap_or_else(|| panic!("conformance[{C}]: a batch"));
    assert_eq!(events(&first), ["e1"], "conformance[{C}]: the first batch");
    for (n, event) in ["e2", "e3"].into_iter().enumerate() {
        assert_eq!(
            append_one(s, C, append(&g, event)).await,
            (format!("{g}#id"), n as u64 + 1, armed),
            "conformance[{C}]: an event arriving in flight is pending, counted anew"
        );
    }
    let info = group(s, C, &g).await;
    assert_eq!(
        (info.pending, info.notify_at_ms),
        (2, Some(armed)),
        "conformance[{C}]: in flight, the armed time stays"
    );
    assert_eq!(
        begin(s, C, &g).await.as_ref(),
        Some(&first),
        "conformance[{C}]: a flush begun again before its end (a crashed worker) gets the same batch"
    );
    let t0 = unix_ms();
    assert!(
        end(s, C, &g, &claim, None).await,
        "conformance[{C}]: ending the flush with its claim"
    );
    let t1 = unix_ms();
    let info = group(s, C, &g).await;
    assert_eq!(
        info.pending, 2,
        "conformance[{C}]: the events that arrived in flight stay pending"
    );
    let rearmed = info
        .notify_at_ms
        .unwrap_or_else(|| panic!("conformance[{C}]: the timer must be re-armed"));
    assert_ms_within(
        C,
        "re-armed notify_at",
        rearmed,
        t0 + ms(INTERVAL),
        t1 + ms(INTERVAL),
    );
    assert_ms_within(C, "last_flush_ms", info.last_flush_ms.unwrap_or(0), t0, t1);
    assert_eq!(
        pending(s, C).await,
        base + 1,
        "conformance[{C}]: still one flush timer"
    );
    assert!(
        !end(s, C, &g, &claim, None).await,
        "conformance[{C}]: re-arming ended the claim"
    );
    assert!(
        claim_ours(s, C, rearmed - 1, prefix).await.is_empty(),
        "conformance[{C}]: the re-armed timer is not due before now + interval"
    );
    let claim = claim_flush(s, C, &g).await;
    let second = begin(s, C, &g)
        .await
        .unwrap_or_else(|| panic!("conformance[{C}]: a second batch"));
    assert_eq!(
        (events(&second), second.event_count),
        (vec!["e2".to_owned(), "e3".to_owned()], 2),
        "conformance[{C}]: the second batch"
    );
    assert!(
        end(s, C, &g, &claim, None).await,
        "conformance[{C}]: ending the second flush"
    );
    assert_eq!(
        pending(s, C).await,
        base,
        "conformance[{C}]: nothing pending: the timer completed"
    );
    let info = group(s, C, &g).await;
    assert_eq!(
        (info.pending, info.notify_at_ms),
        (0, None),
        "conformance[{C}]: an idle group"
    );
    assert_eq!(
        begin(s, C, &g).await,
        None,
        "conformance[{C}]: nothing to send"
    );
}

/// The end of a flush is owner-checked: a claim that was released and taken again changes
/// nothing; the current one ends it; a released claim is not released twice.
pub async fn group_flush_end_needs_the_claim(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "group_flush_end_needs_the_claim";
    let _serial = TIMER_CHECKS.lock().await;
    let s = &*store;
    let g = format!("{prefix}g");
    let (_, _, armed) = append_one(s, C, append(&g, "e1")).await;
    let lost = claim_flush(s, C, &g).await;
    let batch = begin(s, C, &g).await;
    let released = ok(
        C,
        "release_timers",
        s.release_timers(&[(flush_timer(&g), lost.clone())]).await,
    );
    assert_eq!(released, 1, "conformance[{C}]: releasing a held claim");
    let current = claim_flush(s, C, &g).await;
    assert_ne!(current, lost, "conformance[{C}]: a new claim differs");
    assert!(
        !end(s, C, &g, &lost, None).await,
        "conformance[{C}]: a lost claim must not end the flush"
    );
    assert_eq!(
        begin(s, C, &g).await,
        batch,
        "conformance[{C}]: a refused end changes nothing"
    );
    let info = group(s, C, &g).await;
    assert_eq!(
        info.notify_at_ms,
        Some(armed),
        "conformance[{C}]: a refused end keeps the timer"
    );
    assert_eq!(
        ok(
            C,
            "release_timers",
            s.release_timers(&[(flush_timer(&g), lost.clone())]).await
        ),
        0,
        "conformance[{C}]: a lost claim releases nothing"
    );
    assert!(
        end(s, C, &g, &current, None).await,
        "conformance[{C}]: the current claim ends it"
    );
    assert!(
        !end(s, C, &g, &current, None).await,
        "conformance[{C}]: the timer completed"
    );
    assert_eq!(
        begin(s, C, &g).await,
        None,
        "conformance[{C}]: the batch was delivered"
    );
}

/// A worker that dies mid-flush: after the lease another claim gets the timer and the same
/// batch; the dead worker's claim can no longer end it.
pub async fn group_flush_redelivered_after_lease(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "group_flush_redelivered_after_lease";
    let _serial = TIMER_CHECKS.lock().await;
    timed(C, prefix, |p| group_redelivery_once(&*store, p)).await;
}

async fn group_redelivery_once(s: &dyn StateStore, p: String) -> Attempt {
    const C: &str = "group_flush_redelivered_after_lease";
    let g = format!("{p}g");
    let mut a = append(&g, "e1");
    a.wait = Duration::ZERO;
    append_one(s, C, a).await;
    let timer = &flush_timer(&g);
    // Claims a second ahead, so the timer armed on the backend's clock is surely due.
    let claim = |what: &'static str| async move {
        let claimed = ok(
            C,
            what,
            s.claim_due_timers(unix_ms() + 1_000, 10_000, LEASE).await,
        );
        claimed
            .into_iter()
            .filter(|t| t.id == *timer)
            .collect::<Vec<_>>()
    };
    let started = Instant::now();
    let first = claim("first claim").await;
    let claimed = Instant::now();
    assert_eq!(
        first.len(),
        1,
        "conformance[{C}]: the due flush timer is claimed"
    );
    let batch = begin(s, C, &g).await;
    let during = claim("claim within the lease").await;
    before(started + LEASE - SLACK, "claim within the lease")?;
    assert!(
        during.is_empty(),
        "conformance[{C}]: the timer is held during the lease"
    );
    sleep_until(claimed + LEASE + SLACK).await;
    let again = claim("claim after the lease").await;
    assert_eq!(
        again.len(),
        1,
        "conformance[{C}]: after the lease the timer is claimed again"
    );
    assert_eq!(
        begin(s, C, &g).await,
        batch,
        "conformance[{C}]: the re-claim gets the same batch"
    );
    assert!(
        !end(s, C, &g, &first[0].claim, None).await,
        "conformance[{C}]: the dead worker's claim is lost"
    );
    assert!(
        end(s, C, &g, &again[0].claim, None).await,
        "conformance[{C}]: the new claim ends the flush"
    );
    Ok(())
}

/// A flushed group with nothing pending is idle (no timer, still listed); the next event
/// arms its timer at last flush + interval, or now when that has passed.
pub async fn group_idle_arms_at_last_flush_plus_interval(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "group_idle_arms_at_last_flush_plus_interval";
    let _serial = TIMER_CHECKS.lock().await;
    let s = &*store;
    let base = pending(s, C).await;
    for (name, interval) in [("slow", INTERVAL), ("fast", Duration::ZERO)] {
        let g = format!("{prefix}{name}");
        let mut a = append(&g, "e1");
        a.interval = interval;
        append_one(s, C, a.clone()).await;
        let claim = claim_flush(s, C, &g).await;
        begin(s, C, &g).await;
        let t0 = unix_ms();
        assert!(
            ok(
                C,
                "group_flush_end",
                s.group_flush_end(&g, &flush_timer(&g), &claim, interval, None)
                    .await
            ),
            "conformance[{C}]: {name}: ending the flush"
        );
        let t1 = unix_ms();
        let info = group(s, C, &g).await;
        assert_eq!(
            (info.pending, info.notify_at_ms),
            (0, None),
            "conformance[{C}]: {name}: idle after the flush"
        );
        assert_eq!(
            pending(s, C).await,
            base,
            "conformance[{C}]: {name}: the timer completed"
        );
        a.event = b"e2".to_vec();
        let (_, size, at) = append_one(s, C, a).await;
        let t2 = unix_ms();
        assert_eq!(
            size, 1,
            "conformance[{C}]: {name}: a new notification starts"
        );
        if interval.is_zero() {
            assert_ms_within(C, "an interval already passed arms now", at, t1, t2);
        } else {
            assert_ms_within(
                C,
                "notify_at = last flush + interval",
                at,
                t0 + ms(interval),
                t1 + ms(interval),
            );
        }
        assert_eq!(
            group(s, C, &g).await.notify_at_ms,
            Some(at),
            "conformance[{C}]: {name}: armed"
        );
        let claim = claim_flush(s, C, &g).await;
        let batch = begin(s, C, &g)
            .await
            .unwrap_or_else(|| panic!("conformance[{C}]: a batch"));
        assert_eq!(
            events(&batch),
            ["e2"],
            "conformance[{C}]: {name}: only the new event"
        );
        assert!(
            end(s, C, &g, &claim, None).await,
            "conformance[{C}]: {name}: ending"
        );
    }
}

/// `repeat_at` keeps the last notification and re-arms the timer at that exact time; it is
/// sent again (`repeat`) only if a known event refreshed the group since the last flush; a
/// refresh of an idle group arms it at last flush + repeat; news bring a repeat timer
/// forward to last flush + interval (not while it is claimed); new events replace the
/// last notification.
pub async fn group_repeat_at_keeps_last_notification(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "group_repeat_at_keeps_last_notification";
    let _serial = TIMER_CHECKS.lock().await;
    let s = &*store;
    let g = format!("{prefix}g");
    append_one(s, C, repeating(&g, "e1", "f1")).await;
    let claim = claim_flush(s, C, &g).await;
    let first = begin(s, C, &g)
        .await
        .unwrap_or_else(|| panic!("conformance[{C}]: a batch"));
    let repeat_at = unix_ms() + ms(REPEAT);
    assert!(
        end(s, C, &g, &claim, Some(repeat_at)).await,
        "conformance[{C}]: ending with repeat_at"
    );
    assert_eq!(
        group(s, C, &g).await.notify_at_ms,
        Some(repeat_at),
        "conformance[{C}]: armed at repeat_at"
    );
    let (_, size, at) = append_one(s, C, repeating(&g, "e1 again", "f1")).await;
    assert_eq!(
        (size, at),
        (0, repeat_at),
        "conformance[{C}]: a known event is a refresh, not pending; the repeat stays armed"
    );
    assert!(
        claim_ours(s, C, repeat_at - 1, prefix).await.is_empty(),
        "conformance[{C}]: not due before repeat_at"
    );
    let claim = claim_flush(s, C, &g).await;
    let expected = GroupBatch {
        repeat: true,
        ..first.clone()
    };
    for round in ["repeat", "repeat begun again"] {
        assert_eq!(
            begin(s, C, &g).await.as_ref(),
            Some(&expected),
            "conformance[{C}]: {round}: refreshed since the flush"
        );
    }
    let again_at = unix_ms() + ms(REPEAT);
    assert!(
        end(s, C, &g, &claim, Some(again_at)).await,
        "conformance[{C}]: ending the repeat"
    );
    let last_flush = unix_ms();
    let claim = claim_flush(s, C, &g).await;
    assert_eq!(
        begin(s, C, &g).await,
        None,
        "conformance[{C}]: no refresh since the repeat: nothing to send"
    );
    assert!(
        ok(
            C,
            "complete_timer",
            s.complete_timer(&flush_timer(&g), &claim).await
        ),
        "conformance[{C}]: completing the quiet repeat"
    );
    let before = unix_ms();
    let (_, size, at) = append_one(s, C, repeating(&g, "e1 later", "f1")).await;
    assert_eq!(size, 0, "conformance[{C}]: a refresh of an idle group");
    assert_ms_within(
        C,
        "refresh arms at last flush + repeat",
        at,
        last_flush + ms(REPEAT) - 1_000,
        before + ms(REPEAT),
    );
    // A claimed timer stays as it is; once released by a flush, news bring it forward.
    let claim = claim_flush(s, C, &g).await;
    let (_, size, claimed_at) = append_one(s, C, repeating(&g, "e2", "f2")).await;
    assert_eq!(
        (size, claimed_at),
        (1, at),
        "conformance[{C}]: news do not move a claimed timer"
    );
    let next = begin(s, C, &g)
        .await
        .unwrap_or_else(|| panic!("conformance[{C}]: a batch"));
    assert_eq!(
        (events(&next), next.repeat),
        (vec!["e2".to_owned()], false),
        "conformance[{C}]: new events, not the repeat"
    );
    let later = unix_ms() + ms(REPEAT);
    assert!(
        end(s, C, &g, &claim, Some(later)).await,
        "conformance[{C}]: ending"
    );
    let flushed = unix_ms();
    let (_, size, at) = append_one(s, C, repeating(&g, "e3", "f3")).await;
    assert_eq!(size, 1, "conformance[{C}]: news");
    assert_ms_within(
        C,
        "news bring the repeat timer forward to last flush + interval",
        at,
        flushed - 1_000 + ms(INTERVAL),
        unix_ms() + ms(INTERVAL),
    );
    assert_eq!(
        group(s, C, &g).await.notify_at_ms,
        Some(at),
        "conformance[{C}]: the group's armed time"
    );
    let claimed = claim_ours(s, C, at, prefix).await;
    assert_eq!(
        claimed.iter().map(|t| t.id.clone()).collect::<Vec<_>>(),
        [flush_timer(&g)],
        "conformance[{C}]: the timer itself was brought forward"
    );
    let claim = claimed[0].claim.clone();
    let next = begin(s, C, &g)
        .await
        .unwrap_or_else(|| panic!("conformance[{C}]: a batch"));
    assert_eq!(events(&next), ["e3"], "conformance[{C}]: the news");
    assert!(
        end(s, C, &g, &claim, None).await,
        "conformance[{C}]: ending without repeat_at"
    );
    assert_eq!(
        group(s, C, &g).await.notify_at_ms,
        None,
        "conformance[{C}]: no repeat armed"
    );
    assert_eq!(
        begin(s, C, &g).await,
        None,
        "conformance[{C}]: without repeat_at nothing is kept"
    );
}

/// Keys with characters that are wildcards elsewhere (`%`, `_`, `*`, `?`, `[`, `\`).
const ODD_KEYS: [&str; 12] = [
    "a", "a%b", "a*", "a*z", "a?", "a[1]", "a\\x", "a_b", "ab", "axb", "a:b", "b",
];

/// Listing by prefix is a literal string prefix, in key order, bounded by `limit`.
async fn check_listing<F, Fut>(check: &str, prefix: &str, list: F)
where
    F: Fn(String, usize) -> Fut,
    Fut: Future<Output = Vec<String>>,
{
    let mut all: Vec<String> = ODD_KEYS.iter().map(|k| format!("{prefix}{k}")).collect();
    all.sort();
    let cases: [(&str, &[&str]); 8] = [
        ("a%", &["a%b"]),
        ("a_", &["a_b"]),
        ("a*", &["a*", "a*z"]),
        ("a?", &["a?"]),
        ("a[", &["a[1]"]),
        ("a\\", &["a\\x"]),
        ("a:", &["a:b"]),
        ("zz", &[]),
    ];
    for (p, expected) in cases {
        let expected: Vec<String> = expected.iter().map(|k| format!("{prefix}{k}")).collect();
        assert_eq!(
            list(format!("{prefix}{p}"), 100).await,
            expected,
            "conformance[{check}]: prefix {p:?} must match literally"
        );
    }
    assert_eq!(
        list(prefix.to_owned(), 100).await,
        all,
        "conformance[{check}]: every key, in order"
    );
    let starts_a = format!("{prefix}a");
    let with_a: Vec<String> = all
        .iter()
        .filter(|k| k.starts_with(&starts_a))
        .cloned()
        .collect();
    assert_eq!(
        list(format!("{prefix}a"), 100).await,
        with_a,
        "conformance[{check}]: prefix a"
    );
    assert_eq!(
        list(prefix.to_owned(), 4).await,
        all[..4],
        "conformance[{check}]: limit"
    );
    assert!(
        list(prefix.to_owned(), 0).await.is_empty(),
        "conformance[{check}]: limit 0"
    );
}

/// Groups are listed by literal key prefix (see [`ODD_KEYS`]).
pub async fn groups_listed_by_literal_prefix(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "groups_listed_by_literal_prefix";
    let _serial = TIMER_CHECKS.lock().await;
    let s = &*store;
    let appends: Vec<Deferral> = ODD_KEYS
        .iter()
        .map(|k| Deferral::GroupAppend(append(&format!("{prefix}{k}"), "e")))
        .collect();
    defer_all(s, C, &appends).await;
    check_listing(C, prefix, |p, limit| async move {
        let groups = ok(C, "list_groups", s.list_groups(&p, limit).await);
        groups.into_iter().map(|g| g.key).collect()
    })
    .await;
    let listed = ok(
        C,
        "list_groups",
        s.list_groups(&format!("{prefix}a%b"), 10).await,
    );
    assert_eq!(
        listed,
        vec![group(s, C, &format!("{prefix}a%b")).await],
        "conformance[{C}]: listed as read"
    );
}

/// State-machine events are listed by literal key prefix (see [`ODD_KEYS`]).
pub async fn events_listed_by_literal_prefix(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "events_listed_by_literal_prefix";
    let s = &*store;
    let moves: Vec<Deferral> = ODD_KEYS
        .iter()
        .map(|k| Deferral::Transition(transition(&format!("{prefix}{k}"), Some("open"), &["new"])))
        .collect();
    defer_all(s, C, &moves).await;
    check_listing(C, prefix, |p, limit| async move {
        let events = ok(C, "list_events", s.list_events(&p, limit).await);
        events.into_iter().map(|e| e.key).collect()
    })
    .await;
    let key = format!("{prefix}a_b");
    let listed = ok(C, "list_events", s.list_events(&key, 10).await);
    let read = ok(C, "get_event", s.get_event(&key).await);
    assert_eq!(
        listed.first(),
        read.as_ref(),
        "conformance[{C}]: listed as read"
    );
}

/// Transitions: changed (from an allowed state), unchanged (no target, or already there),
/// refused (not from an allowed state; nothing written); several in one call apply in order.
pub async fn transition_changed_unchanged_refused(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "transition_changed_unchanged_refused";
    let s = &*store;
    let e = format!("{prefix}e");
    let absent = format!("{prefix}absent");
    assert_eq!(
        move_event(s, C, transition(&absent, Some("x"), &["other"])).await,
        refused("new"),
        "conformance[{C}]: refused from the initial state"
    );
    assert_eq!(
        move_event(s, C, transition(&absent, None, &["new"])).await,
        unchanged("new"),
        "conformance[{C}]: no target"
    );
    assert_eq!(
        ok(C, "get_event", s.get_event(&absent).await),
        None,
        "conformance[{C}]: refused and unchanged write nothing"
    );

    let t0 = unix_ms();
    assert_eq!(
        move_event(s, C, transition(&e, Some("firing"), &["new"])).await,
        changed("new"),
        "conformance[{C}]: first change"
    );
    let t1 = unix_ms();
    let first = ok(C, "get_event", s.get_event(&e).await)
        .unwrap_or_else(|| panic!("conformance[{C}]: the event"));
    assert_eq!(
        (
            first.key.as_str(),
            first.fingerprint.as_str(),
            first.state.as_str(),
            first.timeout.as_ref()
        ),
        (e.as_str(), format!("{e}#fp").as_str(), "firing", None),
        "conformance[{C}]: the event after its first change"
    );
    assert_eq!(
        first.record,
        format!("{e} to {:?}", Some("firing")).into_bytes(),
        "conformance[{C}]: record"
    );
    assert_ms_within(C, "changed_ms", first.changed_ms, t0, t1);
    assert_eq!(
        move_event(s, C, transition(&e, Some("firing"), &["new", "firing"])).await,
        unchanged("firing"),
        "conformance[{C}]: already there"
    );
    assert_eq!(
        move_event(s, C, transition(&e, None, &["firing"])).await,
        unchanged("firing"),
        "conformance[{C}]: no target"
    );
    let mut bad = transition(&e, Some("resolved"), &["new"]);
    bad.record = b"refused".to_vec();
    assert_eq!(
        move_event(s, C, bad).await,
        refused("firing"),
        "conformance[{C}]: not from an allowed state"
    );
    assert_eq!(
        ok(C, "get_event", s.get_event(&e).await),
        Some(first),
        "conformance[{C}]: refused changes nothing"
    );

    let steps = [
        Deferral::Transition(transition(&e, Some("resolved"), &["firing"])),
        Deferral::Transition(transition(&e, Some("closed"), &["resolved"])),
        Deferral::Transition(transition(&e, Some("x"), &["firing"])),
    ];
    assert_eq!(
        defer_all(s, C, &steps).await,
        vec![
            DeferResult::Transition(changed("firing")),
            DeferResult::Transition(changed("resolved")),
            DeferResult::Transition(refused("closed")),
        ],
        "conformance[{C}]: transitions of one call apply in order"
    );
    let last = ok(C, "get_event", s.get_event(&e).await)
        .unwrap_or_else(|| panic!("conformance[{C}]: the event"));
    assert_eq!(
        (last.state.as_str(), last.record),
        (
            "closed",
            format!("{e} to {:?}", Some("closed")).into_bytes()
        ),
        "conformance[{C}]: the last change"
    );
}

/// `require_timer`: a timeout moves the event only while the timer that fired is still
/// its armed timeout (not after the state was left, nor re-entered with a new timeout).
pub async fn transition_require_timer(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "transition_require_timer";
    let _serial = TIMER_CHECKS.lock().await;
    let s = &*store;
    let e = format!("{prefix}e");
    let (t1, t2) = (format!("{prefix}t1"), format!("{prefix}t2"));
    let due = unix_ms() + 60_000;
    let timeout = |timer: &str| {
        let mut t = transition(&e, Some("timed_out"), &["pending", "firing"]);
        t.require_timer = Some(timer.to_owned());
        t
    };
    let mut absent = timeout(&t1);
    absent.key = format!("{prefix}absent");
    assert_eq!(
        move_event(s, C, absent.clone()).await,
        unchanged("new"),
        "conformance[{C}]: no event, no armed timeout"
    );
    assert_eq!(
        ok(C, "get_event", s.get_event(&absent.key).await),
        None,
        "conformance[{C}]: nothing written"
    );

    let mut arm = transition(&e, Some("pending"), &["new", "firing"]);
    arm.timeout = Some(timer_write(&t1, due, "t1"));
    assert_eq!(
        move_event(s, C, arm.clone()).await,
        changed("new"),
        "conformance[{C}]: armed"
    );
    assert_eq!(
        move_event(s, C, transition(&e, Some("firing"), &["pending"])).await,
        changed("pending"),
        "conformance[{C}]: left"
    );
    assert_eq!(
        move_event(s, C, timeout(&t1)).await,
        unchanged("firing"),
        "conformance[{C}]: a timeout whose state was left does nothing"
    );
    arm.timeout = Some(timer_write(&t2, due, "t2"));
    assert_eq!(
        move_event(s, C, arm).await,
        changed("firing"),
        "conformance[{C}]: re-entered"
    );
    assert_eq!(
        move_event(s, C, timeout(&t1)).await,
        unchanged("pending"),
        "conformance[{C}]: an older timeout of a re-entered state does nothing"
    );
    // The worker claims the armed timeout, then moves the event with it.
    let fired = claim_ours(s, C, far_future(), prefix).await;
    assert_eq!(
        fired.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        [t2.as_str()],
        "conformance[{C}]: leaving a state removed its timeout; only the armed one exists"
    );
    assert_eq!(
        fired[0].due_ms, due,
        "conformance[{C}]: a claimed timeout carries its due time"
    );
    assert_eq!(
        move_event(s, C, timeout(&t2)).await,
        changed("pending"),
        "conformance[{C}]: the armed timeout moves it"
    );
    let event = ok(C, "get_event", s.get_event(&e).await)
        .unwrap_or_else(|| panic!("conformance[{C}]: the event"));
    assert_eq!(
        (event.state.as_str(), event.timeout),
        ("timed_out", None),
        "conformance[{C}]: timed out, nothing armed"
    );
    assert!(
        ok(
            C,
            "complete_timer",
            s.complete_timer(&t2, &fired[0].claim).await
        ),
        "conformance[{C}]: the timer that fired is left for its claimant to complete"
    );
    assert_eq!(
        move_event(s, C, timeout(&t2)).await,
        unchanged("timed_out"),
        "conformance[{C}]: a timeout runs once"
    );
}

/// A change removes the event's armed timeout and registers the new one (or none);
/// unchanged and refused transitions leave timers alone.
/// A move's notice becomes a timer only when the move changes the state from one of the
/// notice's states: not for a move from another state, a refused or unchanged move, or an
/// event recorded in its initial state.
pub async fn transition_notice_registered_only_for_notifying_changes(
    store: Arc<dyn StateStore>,
    prefix: &str,
) {
    const C: &str = "transition_notice_registered_only_for_notifying_changes";
    let _serial = TIMER_CHECKS.lock().await;
    let s = &*store;
    let e = format!("{prefix}e");
    let now = unix_ms();
    let noticed = |to: &str, allowed: &[&str], notify_from: &[&str], timer: &str| {
        let mut t = transition(&e, Some(to), allowed);
        t.notice = Some(MoveNotice {
            from: notify_from.iter().map(|s| (*s).to_owned()).collect(),
            timer: timer_write(&format!("{prefix}{timer}"), now, timer),
        });
        t
    };
    assert_eq!(
        move_event(s, C, noticed("new", &[], &["new"], "n0")).await,
        changed("new"),
        "conformance[{C}]: recorded in the initial state"
    );
    assert_eq!(
        move_event(s, C, noticed("open", &["new"], &["new"], "n1")).await,
        changed("new"),
        "conformance[{C}]: new → open"
    );
    assert_eq!(
        move_event(s, C, noticed("ack", &["open"], &["other"], "n2")).await,
        changed("open"),
        "conformance[{C}]: open → ack"
    );
    assert_eq!(
        move_event(s, C, noticed("closed", &["open"], &["ack"], "n3")).await,
        refused("ack"),
        "conformance[{C}]: refused"
    );
    assert_eq!(
        move_event(s, C, noticed("ack", &["ack"], &["ack"], "n4")).await,
        unchanged("ack"),
        "conformance[{C}]: unchanged"
    );
    let claimed = claim_ours(s, C, far_future(), prefix).await;
    let got: Vec<(&str, &[u8])> = claimed
        .iter()
        .map(|t| (t.id.as_str(), t.payload.as_slice()))
        .collect();
    assert_eq!(
        got,
        vec![(format!("{prefix}n1").as_str(), b"n1".as_slice())],
        "conformance[{C}]: only the notifying change registered its notice"
    );
    for t in &claimed {
        ok(C, "complete_timer", s.complete_timer(&t.id, &t.claim).await);
    }
}

pub async fn transition_timeout_replaced_on_change(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "transition_timeout_replaced_on_change";
    let _serial = TIMER_CHECKS.lock().await;
    let s = &*store;
    let e = format!("{prefix}e");
    let base = pending(s, C).await;
    let now = unix_ms();
    let with_timeout = |to: &str, from: &str, timer: &str, due: u64| {
        let mut t = transition(&e, Some(to), &[from]);
        t.timeout = Some(timer_write(&format!("{prefix}{timer}"), due, timer));
        t
    };
    move_event(s, C, with_timeout("a", "new", "t1", now + 60_000)).await;
    assert_eq!(
        pending(s, C).await,
        base + 1,
        "conformance[{C}]: one timeout"
    );
    assert_eq!(
        move_event(s, C, with_timeout("b", "a", "t2", now + 120_000)).await,
        changed("a"),
        "conformance[{C}]: a → b"
    );
    assert_eq!(
        pending(s, C).await,
        base + 1,
        "conformance[{C}]: the first timeout was replaced"
    );
    let event = ok(C, "get_event", s.get_event(&e).await)
        .unwrap_or_else(|| panic!("conformance[{C}]: the event"));
    assert_eq!(
        event.timeout,
        Some((format!("{prefix}t2"), now + 120_000)),
        "conformance[{C}]: the armed timeout"
    );
    assert_eq!(
        move_event(s, C, with_timeout("c", "a", "t3", now)).await,
        refused("b"),
        "conformance[{C}]: refused"
    );
    assert_eq!(
        move_event(s, C, with_timeout("b", "b", "t4", now)).await,
        unchanged("b"),
        "conformance[{C}]: unchanged"
    );
    let claimed = claim_ours(s, C, far_future(), prefix).await;
    let got: Vec<(&str, &[u8])> = claimed
        .iter()
        .map(|t| (t.id.as_str(), t.payload.as_slice()))
        .collect();
    assert_eq!(
        got,
        vec![(format!("{prefix}t2").as_str(), b"t2".as_slice())],
        "conformance[{C}]: only the armed timeout exists"
    );
    assert_eq!(
        move_event(s, C, transition(&e, Some("c"), &["b"])).await,
        changed("b"),
        "conformance[{C}]: b → c without timeout"
    );
    assert_eq!(
        pending(s, C).await,
        base,
        "conformance[{C}]: a change without timeout removes the armed one"
    );
    let event = ok(C, "get_event", s.get_event(&e).await)
        .unwrap_or_else(|| panic!("conformance[{C}]: the event"));
    assert_eq!(event.timeout, None, "conformance[{C}]: nothing armed");
}

/// Events join their active sets while not terminal and leave them when terminal;
fn in_state(key: &str, state: &str) -> StateRead {
    StateRead::EventInState {
        key: key.to_owned(),
        state: state.to_owned(),
    }
}

/// `read_state` answers set, dedup, window and event-state reads in one call.
pub async fn transition_active_sets_and_read_state(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "transition_active_sets_and_read_state";
    let s = &*store;
    let (s1, s2, s3) = (
        format!("{prefix}s1"),
        format!("{prefix}s2"),
        format!("{prefix}s3"),
    );
    let (e1, e2) = (format!("{prefix}e1"), format!("{prefix}e2"));
    let sets = [set_not_empty(&s1), set_not_empty(&s2), set_not_empty(&s3)];
    assert_eq!(
        read(s, C, &sets).await,
        vec![0, 0, 0],
        "conformance[{C}]: empty sets"
    );
    assert!(
        read(s, C, &[]).await.is_empty(),
        "conformance[{C}]: no reads"
    );
    let moved = |key: &str, to: &str, from: &str, terminal: bool, active: &[&String]| {
        let mut t = transition(key, Some(to), &[from]);
        t.to_terminal = terminal;
        t.active_sets = active.iter().map(|s| (*s).clone()).collect();
        Deferral::Transition(t)
    };
    defer_all(s, C, &[moved(&e1, "firing", "new", false, &[&s1, &s2])]).await;
    assert_eq!(
        read(s, C, &sets).await,
        vec![1, 1, 0],
        "conformance[{C}]: e1 joined s1 and s2"
    );
    defer_all(s, C, &[moved(&e2, "firing", "new", false, &[&s1])]).await;
    defer_all(s, C, &[moved(&e1, "resolved", "firing", true, &[&s1, &s2])]).await;
    assert_eq!(
        read(s, C, &sets).await,
        vec![1, 0, 0],
        "conformance[{C}]: e1 left; e2 keeps s1"
    );
    defer_all(s, C, &[moved(&e2, "resolved", "firing", true, &[&s1])]).await;
    assert_eq!(
        read(s, C, &sets).await,
        vec![0, 0, 0],
        "conformance[{C}]: both left"
    );

    let (d, t) = (format!("{prefix}d"), format!("{prefix}t"));
    assert_passed(
        C,
        "dedup and throttle",
        &apply(s, C, &[dedup(&d, LONG, "x"), throttle(&t, 10, LONG)]).await,
    );
    assert_passed(C, "throttle", &apply(s, C, &[throttle(&t, 10, LONG)]).await);
    run(s, C, &[throttle(&t, 10, LONG)], GateMode::Check).await;
    defer_all(s, C, &[moved(&e1, "firing", "resolved", false, &[&s3])]).await;
    let reads = [
        StateRead::DedupSeen { key: d.clone() },
        StateRead::DedupSeen {
            key: format!("{prefix}other"),
        },
        StateRead::WindowCount {
            key: t.clone(),
            window: LONG,
        },
        StateRead::WindowCount {
            key: format!("{prefix}other"),
            window: LONG,
        },
        set_not_empty(&s3),
        in_state(&e1, "firing"),
        in_state(&e1, "resolved"),
        in_state(&e2, "resolved"),
        in_state(&format!("{prefix}never"), "new"),
    ];
    assert_eq!(
        read(s, C, &reads).await,
        vec![1, 0, 2, 0, 1, 1, 0, 1, 0],
        "conformance[{C}]: mixed reads in order (e1 firing again, e2 resolved)"
    );
    // A mark's age is its token's time; a token without one counts as just set.
    let old = format!("{prefix}old");
    let aged = super::dedup_token(unix_ms() - 10_000, "a");
    assert_passed(
        C,
        "aged mark",
        &apply(s, C, &[dedup(&old, LONG, &aged)]).await,
    );
    let within = |key: &str, secs: u64| StateRead::DedupSeenWithin {
        key: key.to_owned(),
        within: Duration::from_secs(secs),
    };
    assert_eq!(
        read(
            s,
            C,
            &[
                within(&old, 5),
                within(&old, 60),
                within(&d, 5),
                within(&format!("{prefix}none"), 60)
            ]
        )
        .await,
        vec![0, 1, 1, 0],
        "conformance[{C}]: DedupSeenWithin reads the mark's age"
    );
    assert!(
        ok(C, "release_dedup", s.release_dedup(&d, "x").await),
        "conformance[{C}]: releasing the mark"
    );
    assert_eq!(
        read(s, C, &reads[..1]).await,
        vec![0],
        "conformance[{C}]: DedupSeen reads the gates' marks"
    );
}

/// An event with no record (never seen, or finished) asked into its initial state is
/// recorded there: changed (previous = the initial state), its timeout armed, its sets
/// joined; a live event asked into its current state is unchanged.
pub async fn transition_initial_state_recorded(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "transition_initial_state_recorded";
    let _serial = TIMER_CHECKS.lock().await;
    let s = &*store;
    let (e, set, timer) = (
        format!("{prefix}e"),
        format!("{prefix}set"),
        format!("{prefix}t"),
    );
    let due = unix_ms() + 60_000;
    let t0 = unix_ms();
    let mut first = transition(&e, Some("new"), &[]);
    first.timeout = Some(timer_write(&timer, due, "t"));
    first.active_sets = vec![set.clone()];
    assert_eq!(
        move_event(s, C, first).await,
        changed("new"),
        "conformance[{C}]: a never-seen event is recorded in its initial state"
    );
    let t1 = unix_ms();
    let event = ok(C, "get_event", s.get_event(&e).await)
        .unwrap_or_else(|| panic!("conformance[{C}]: the event must be recorded"));
    assert_eq!(
        (event.state.as_str(), event.timeout.clone()),
        ("new", Some((timer.clone(), due))),
        "conformance[{C}]: in the initial state, its timeout armed"
    );
    assert_ms_within(C, "changed_ms", event.changed_ms, t0, t1);
    assert_eq!(
        read(s, C, &[set_not_empty(&set)]).await,
        vec![1],
        "conformance[{C}]: it joined its set"
    );
    let listed = ok(C, "list_events", s.list_events(prefix, 10).await);
    assert_eq!(
        listed.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
        [e.as_str()],
        "conformance[{C}]: it is listed"
    );
    let mut again = transition(&e, Some("new"), &["new"]);
    again.timeout = Some(timer_write(&format!("{prefix}t2"), due, "t2"));
    assert_eq!(
        move_event(s, C, again).await,
        unchanged("new"),
        "conformance[{C}]: a recorded event stays put"
    );
    let claimed = claim_ours(s, C, far_future(), prefix).await;
    assert_eq!(
        claimed
            .iter()
            .map(|t| (t.id.as_str(), t.due_ms))
            .collect::<Vec<_>>(),
        [(timer.as_str(), due)],
        "conformance[{C}]: the first timeout only"
    );
    for t in &claimed {
        ok(C, "complete_timer", s.complete_timer(&t.id, &t.claim).await);
    }
    assert_eq!(
        move_event(s, C, transition(&e, Some("firing"), &["new"])).await,
        changed("new"),
        "conformance[{C}]: it moves on from its initial state"
    );
}

/// An event in a terminal state is finished: the next move starts a new lifecycle from the
/// initial state (allowed from it, the record replaced); a refused one keeps the record.
pub async fn transition_terminal_starts_new_lifecycle(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "transition_terminal_starts_new_lifecycle";
    let s = &*store;
    let (e, f, set) = (
        format!("{prefix}e"),
        format!("{prefix}f"),
        format!("{prefix}set"),
    );
    let step = |key: &str, to: &str, from: &[&str]| {
        let mut t = transition(key, Some(to), from);
        t.terminal = vec!["closed".to_owned(), "resolved".to_owned()];
        t.to_terminal = t.terminal.iter().any(|x| x == to);
        t.active_sets = vec![set.clone()];
        t
    };
    for key in [&e, &f] {
        assert_eq!(
            move_event(s, C, step(key, "firing", &["new"])).await,
            changed("new"),
            "conformance[{C}]: new → firing"
        );
        assert_eq!(
            move_event(s, C, step(key, "resolved", &["firing"])).await,
            changed("firing"),
            "conformance[{C}]: firing → resolved (terminal)"
        );
    }
    assert_eq!(
        read(s, C, &[set_not_empty(&set)]).await,
        vec![0],
        "conformance[{C}]: finished events left the set"
    );
    assert_eq!(
        move_event(s, C, step(&e, "resolved", &["firing"])).await,
        refused("new"),
        "conformance[{C}]: a finished event counts as in its initial state"
    );
    let kept = ok(C, "get_event", s.get_event(&e).await)
        .unwrap_or_else(|| panic!("conformance[{C}]: the event"));
    assert_eq!(
        kept.state, "resolved",
        "conformance[{C}]: a refused move keeps the finished record"
    );
    assert_eq!(
        move_event(s, C, step(&e, "firing", &["new"])).await,
        changed("new"),
        "conformance[{C}]: firing again after resolved starts a new lifecycle"
    );
    let event = ok(C, "get_event", s.get_event(&e).await)
        .unwrap_or_else(|| panic!("conformance[{C}]: the event"));
    assert_eq!(
        (event.state.as_str(), event.record),
        (
            "firing",
            format!("{e} to {:?}", Some("firing")).into_bytes()
        ),
        "conformance[{C}]: the record replaced"
    );
    assert_eq!(
        read(s, C, &[set_not_empty(&set)]).await,
        vec![1],
        "conformance[{C}]: the new lifecycle joined the set"
    );
    assert_eq!(
        move_event(s, C, step(&e, "resolved", &["firing"])).await,
        changed("firing"),
        "conformance[{C}]: the new lifecycle moves on"
    );
    assert_eq!(
        move_event(s, C, step(&f, "new", &[])).await,
        changed("new"),
        "conformance[{C}]: a finished event asked into its initial state is recorded there"
    );
    let event = ok(C, "get_event", s.get_event(&f).await)
        .unwrap_or_else(|| panic!("conformance[{C}]: the event"));
    assert_eq!(event.state, "new", "conformance[{C}]: back in `new`");
    assert_eq!(
        move_event(s, C, step(&f, "new", &["new"])).await,
        unchanged("new"),
        "conformance[{C}]: and stays there"
    );
    let mut plain = transition(&e, Some("firing"), &["new"]);
    plain.terminal = Vec::new();
    assert_eq!(
        move_event(s, C, plain).await,
        refused("resolved"),
        "conformance[{C}]: a state not listed as terminal is an ordinary one"
    );
}

/// Set members are events (their keys), not fingerprints: two events sharing a fingerprint
/// (say of two tenants) are two members, and one leaving does not take the other out.
pub async fn transition_set_members_are_event_keys(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "transition_set_members_are_event_keys";
    let s = &*store;
    let (e1, e2, set) = (
        format!("{prefix}e1"),
        format!("{prefix}e2"),
        format!("{prefix}set"),
    );
    let step = |key: &str, to: &str, from: &str, terminal: bool| {
        let mut t = transition(key, Some(to), &[from]);
        t.fingerprint = format!("{prefix}shared-fp");
        t.to_terminal = terminal;
        t.active_sets = vec![set.clone()];
        Deferral::Transition(t)
    };
    defer_all(s, C, &[step(&e1, "firing", "new", false)]).await;
    defer_all(s, C, &[step(&e2, "firing", "new", false)]).await;
    defer_all(s, C, &[step(&e1, "resolved", "firing", true)]).await;
    assert_eq!(
        read(s, C, &[set_not_empty(&set)]).await,
        vec![1],
        "conformance[{C}]: e2 (same fingerprint) is still a member"
    );
    defer_all(s, C, &[step(&e2, "resolved", "firing", true)]).await;
    assert_eq!(
        read(s, C, &[set_not_empty(&set)]).await,
        vec![0],
        "conformance[{C}]: both left"
    );
}

/// An event expires `ttl` after its last change: it reads as absent (its state the initial
/// one again) and leaves its active sets.
pub async fn transition_ttl_expires_event_and_membership(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "transition_ttl_expires_event_and_membership";
    timed(C, prefix, |p| transition_ttl_once(&*store, p)).await;
}

async fn transition_ttl_once(s: &dyn StateStore, p: String) -> Attempt {
    const C: &str = "transition_ttl_expires_event_and_membership";
    let (e, set) = (format!("{p}e"), format!("{p}set"));
    let mut t = transition(&e, Some("firing"), &["new"]);
    t.ttl = TTL;
    t.active_sets = vec![set.clone()];
    let started = Instant::now();
    assert_eq!(
        move_event(s, C, t.clone()).await,
        changed("new"),
        "conformance[{C}]: first change"
    );
    let changed_at = Instant::now();
    let live = ok(C, "get_event", s.get_event(&e).await).is_some();
    let member = read(s, C, &[set_not_empty(&set), in_state(&e, "firing")]).await;
    before(started + TTL - SLACK, "reads within the TTL")?;
    assert!(live, "conformance[{C}]: the event lives within its TTL");
    assert_eq!(
        member,
        vec![1, 1],
        "conformance[{C}]: the event is in its set and its state within its TTL"
    );
    sleep_until(changed_at + TTL + SLACK).await;
    assert_eq!(
        ok(C, "get_event", s.get_event(&e).await),
        None,
        "conformance[{C}]: expired"
    );
    assert!(
        ok(C, "list_events", s.list_events(&p, 10).await).is_empty(),
        "conformance[{C}]: not listed"
    );
    assert_eq!(
        read(s, C, &[set_not_empty(&set), in_state(&e, "firing")]).await,
        vec![0, 0],
        "conformance[{C}]: an expired event leaves its sets and its state"
    );
    assert_eq!(
        move_event(s, C, t).await,
        changed("new"),
        "conformance[{C}]: an expired event starts anew"
    );
    Ok(())
}

/// 200 concurrent transitions of one event from its initial state: exactly one changes it.
pub async fn concurrent_transitions_single_winner(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "concurrent_transitions_single_winner";
    let e = format!("{prefix}e");
    let results = race(&store, RACERS, |s, i| {
        let t = Deferral::Transition(transition(&e, Some(&format!("s{i}")), &["new"]));
        async move { s.run_gates_and_defer(&[], GateMode::APPLY, &[t]).await }
    })
    .await;
    let mut winners = Vec::new();
    let mut refusals = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match ok(C, "run_gates_and_defer", r).1.pop() {
            Some(DeferResult::Transition(TransitionResult::Changed { previous })) => {
                assert_eq!(
                    previous, "new",
                    "conformance[{C}]: the winner moved from new"
                );
                winners.push(i);
            }
            Some(DeferResult::Transition(TransitionResult::Refused { current })) => {
                refusals.push(current)
            }
            other => panic!("conformance[{C}]: racer {i} answered {other:?}"),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "conformance[{C}]: exactly one change, got {winners:?}"
    );
    let state = format!("s{}", winners[0]);
    assert!(
        refusals.iter().all(|c| *c == state),
        "conformance[{C}]: the others see the winner's state"
    );
    let event = ok(C, "get_event", store.get_event(&e).await)
        .unwrap_or_else(|| panic!("conformance[{C}]: the event"));
    assert_eq!(
        event.state, state,
        "conformance[{C}]: the stored state is the winner's"
    );
}

/// 200 concurrent appends to one group: each counted once, one timer armed, one time.
pub async fn concurrent_group_appends_count_all(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "concurrent_group_appends_count_all";
    let _serial = TIMER_CHECKS.lock().await;
    let base = pending(&*store, C).await;
    let g = format!("{prefix}g");
    let results = race(&store, RACERS, |s, i| {
        let a = Deferral::GroupAppend(append(&g, &format!("e{i}")));
        async move { s.run_gates_and_defer(&[], GateMode::APPLY, &[a]).await }
    })
    .await;
    let mut sizes = Vec::new();
    let mut times = HashSet::new();
    for r in results {
        match ok(C, "run_gates_and_defer", r).1.pop() {
            Some(DeferResult::Grouped {
                size, notify_at_ms, ..
            }) => {
                sizes.push(size);
                times.insert(notify_at_ms);
            }
            other => panic!("conformance[{C}]: an append answered {other:?}"),
        }
    }
    sizes.sort_unstable();
    assert_eq!(
        sizes,
        (1..=RACERS as u64).collect::<Vec<_>>(),
        "conformance[{C}]: sizes 1..={RACERS}"
    );
    assert_eq!(
        times.len(),
        1,
        "conformance[{C}]: one armed time, got {times:?}"
    );
    assert_eq!(
        group(&*store, C, &g).await.pending,
        RACERS as u64,
        "conformance[{C}]: every event counted"
    );
    assert_eq!(
        pending(&*store, C).await,
        base + 1,
        "conformance[{C}]: one flush timer"
    );
}

/// `pending_timers` counts registered timers, claimed or not; `release_timers` makes each
/// held claim claimable at once, and a released (or stale) claim is lost.
pub async fn timers_pending_and_release(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "timers_pending_and_release";
    let _serial = TIMER_CHECKS.lock().await;
    let s = &*store;
    let base = pending(s, C).await;
    let now = unix_ms();
    let (a, b, later) = (
        format!("{prefix}a"),
        format!("{prefix}b"),
        format!("{prefix}later"),
    );
    for (id, due) in [
        (&a, now - 2_000),
        (&b, now - 1_000),
        (&later, now + 600_000),
    ] {
        ok(
            C,
            "schedule_timer",
            s.schedule_timer(id, due, id.clone().into_bytes()).await,
        );
    }
    assert_eq!(
        pending(s, C).await,
        base + 3,
        "conformance[{C}]: three registered"
    );
    let first = claim_ours(s, C, unix_ms(), prefix).await;
    assert_eq!(
        ids(&first.iter().collect::<Vec<_>>()),
        vec![a.clone(), b.clone()],
        "conformance[{C}]: the due ones"
    );
    assert_eq!(
        pending(s, C).await,
        base + 3,
        "conformance[{C}]: claimed timers are pending"
    );
    let claim_of = |id: &str| {
        first
            .iter()
            .find(|t| t.id == id)
            .map(|t| t.claim.clone())
            .unwrap_or_default()
    };
    let released = ok(
        C,
        "release_timers",
        s.release_timers(&[
            (a.clone(), claim_of(&a)),
            (b.clone(), "not-the-claim".into()),
            (format!("{prefix}unknown"), claim_of(&a)),
        ])
        .await,
    );
    assert_eq!(
        released, 1,
        "conformance[{C}]: only the held claim is released"
    );
    let again = claim_ours(s, C, unix_ms(), prefix).await;
    assert_eq!(
        ids(&again.iter().collect::<Vec<_>>()),
        vec![a.clone()],
        "conformance[{C}]: the released timer is claimable at once"
    );
    assert!(
        !ok(
            C,
            "complete_timer",
            s.complete_timer(&a, &claim_of(&a)).await
        ),
        "conformance[{C}]: a released claim is lost"
    );
    assert!(
        ok(
            C,
            "complete_timer",
            s.complete_timer(&a, &again[0].claim).await
        ),
        "conformance[{C}]: the new claim completes"
    );
    assert!(
        ok(
            C,
            "complete_timer",
            s.complete_timer(&b, &claim_of(&b)).await
        ),
        "conformance[{C}]: an unreleased claim holds"
    );
    assert_eq!(
        pending(s, C).await,
        base + 1,
        "conformance[{C}]: completed timers leave the count"
    );
    ok(C, "release_timers", s.release_timers(&[]).await);
}

/// Claims take due timers oldest first, `max` at a time, and never one not yet due.
pub async fn timers_claimed_in_due_order(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "timers_claimed_in_due_order";
    const DUE: u64 = 300;
    const BATCH: usize = 40;
    let _serial = TIMER_CHECKS.lock().await;
    let s = &*store;
    let base = pending(s, C).await;
    let now = unix_ms();
    // Registered in a scrambled order; due times all distinct.
    for i in 0..DUE {
        let n = (i * 7_919) % DUE;
        let id = format!("{prefix}due{n:03}");
        ok(
            C,
            "schedule_timer",
            s.schedule_timer(&id, now - 100_000 + n * 13, Vec::new())
                .await,
        );
    }
    for i in 0..20 {
        ok(
            C,
            "schedule_timer",
            s.schedule_timer(&format!("{prefix}later{i}"), now + 600_000 + i, Vec::new())
                .await,
        );
    }
    assert_eq!(
        pending(s, C).await,
        base + DUE + 20,
        "conformance[{C}]: all registered"
    );
    let mut order = Vec::new();
    let mut others = Vec::new();
    loop {
        let claimed = ok(
            C,
            "claim_due_timers",
            s.claim_due_timers(unix_ms(), BATCH, LONG).await,
        );
        assert!(
            claimed.len() <= BATCH,
            "conformance[{C}]: at most max per claim"
        );
        if claimed.is_empty() {
            break;
        }
        for t in claimed {
            if !t.id.starts_with(prefix) {
                others.push(t);
                continue;
            }
            let n: u64 = t.id[prefix.len() + 3..].parse().unwrap_or(u64::MAX);
            assert_eq!(
                t.due_ms,
                now - 100_000 + n * 13,
                "conformance[{C}]: the due time of {} as registered",
                t.id
            );
            assert!(
                ok(C, "complete_timer", s.complete_timer(&t.id, &t.claim).await),
                "conformance[{C}]: completing {}",
                t.id
            );
            order.push(t.id);
        }
        assert!(
            order.len() <= DUE as usize,
            "conformance[{C}]: claimed more than the due timers: {order:?}"
        );
    }
    release_all(s, C, &others).await;
    let expected: Vec<String> = (0..DUE).map(|n| format!("{prefix}due{n:03}")).collect();
    assert_eq!(
        order, expected,
        "conformance[{C}]: due timers claimed oldest first, none not yet due"
    );
    assert_eq!(
        pending(s, C).await,
        base + 20,
        "conformance[{C}]: the timers not yet due stay"
    );
}
