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

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Barrier;
use tokio::task::JoinSet;

use super::{
    ClaimedTimer, DedupConfirm, Gate, GateMode, GateResult, GateStop, StateError, StateStore,
    Versioned, unix_ms,
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
