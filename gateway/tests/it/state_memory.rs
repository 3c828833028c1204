//! The memory backend: the shared conformance suite, plus exact edges that need the
//! injectable clock and the sweep of expired entries, and the pipeline's use of gates.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use acteon_gateway::outcome::ActionOutcome;
use acteon_gateway::state::{
    Deferral, Gate, GateMode, GateResult, GateStop, GroupAppend, MemoryStore, StateRead,
    StateStore, Transition, Versioned,
};
use serde_json::json;

acteon_gateway::conformance_tests!(conformance, async { Arc::new(MemoryStore::new()) });

/// A manual clock in Unix milliseconds.
#[derive(Clone)]
struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    fn at(ms: u64) -> Self {
        ManualClock(Arc::new(AtomicU64::new(ms)))
    }

    fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }

    fn store(&self) -> MemoryStore {
        let now = self.0.clone();
        MemoryStore::with_clock(Arc::new(move || now.load(Ordering::SeqCst)))
    }
}

fn throttle(key: &str, limit: u64, window: Duration) -> Gate {
    Gate::Throttle {
        key: key.into(),
        limit,
        window,
    }
}

fn quota(key: &str, limit: u64, window: Duration) -> Gate {
    Gate::Quota {
        key: key.into(),
        limit,
        window,
    }
}

fn dedup(key: &str, ttl: Duration, token: &str) -> Gate {
    Gate::Dedup {
        key: key.into(),
        ttl,
        token: token.into(),
    }
}

fn throttled(ms: u64) -> GateResult {
    GateResult::Stopped {
        index: 0,
        reason: GateStop::Throttled {
            retry_after: Duration::from_millis(ms),
        },
    }
}

fn exceeded(used: u64, resets_in_ms: u64) -> GateResult {
    GateResult::Stopped {
        index: 0,
        reason: GateStop::QuotaExceeded {
            used,
            resets_in: Duration::from_millis(resets_in_ms),
        },
    }
}

/// A 10 s window of 100: passes at t = 0, 10, …, 990 ms. The 101st attempt at t = 5 s waits
/// exactly until the oldest pass leaves (t = 10 s); rejections cost nothing, so at t = 10 s
/// exactly one more passes, and the next waits for the second-oldest pass (t = 10.01 s).
#[tokio::test]
async fn sliding_window_exact_retry_after() {
    let clock = ManualClock::at(1_000_000);
    let store = clock.store();
    let window = Duration::from_secs(10);
    let gate = [throttle("t", 100, window)];
    for i in 0..100 {
        clock.set(1_000_000 + i * 10);
        assert_eq!(
            store.apply_gates(&gate).await.unwrap(),
            GateResult::Passed,
            "pass {i}"
        );
    }
    clock.set(1_005_000);
    assert_eq!(store.apply_gates(&gate).await.unwrap(), throttled(5_000));
    assert_eq!(store.window_count("t", window).await.unwrap(), 100);
    clock.set(1_009_999);
    assert_eq!(store.apply_gates(&gate).await.unwrap(), throttled(1));
    assert_eq!(store.window_count("t", window).await.unwrap(), 100);

    clock.set(1_010_000);
    assert_eq!(
        store.window_count("t", window).await.unwrap(),
        99,
        "the pass at t = 0 left at t = 10 s"
    );
    assert_eq!(store.apply_gates(&gate).await.unwrap(), GateResult::Passed);
    assert_eq!(store.apply_gates(&gate).await.unwrap(), throttled(10));
    assert_eq!(store.window_count("t", window).await.unwrap(), 100);

    // Long after: everything but the pass at t = 10 s has left.
    clock.set(1_019_999);
    assert_eq!(store.window_count("t", window).await.unwrap(), 1);
    clock.set(1_020_000);
    assert_eq!(store.window_count("t", window).await.unwrap(), 0);
}

/// A fixed window of 60 s aligned to the epoch: resets_in counts down to the boundary, and
/// the boundary itself starts a new window.
#[tokio::test]
async fn quota_exact_window_edges() {
    let clock = ManualClock::at(120_000);
    let store = clock.store();
    let window = Duration::from_secs(60);
    let gate = [quota("q", 2, window)];
    clock.set(150_000);
    assert_eq!(store.apply_gates(&gate).await.unwrap(), GateResult::Passed);
    assert_eq!(store.apply_gates(&gate).await.unwrap(), GateResult::Passed);
    assert_eq!(store.apply_gates(&gate).await.unwrap(), exceeded(2, 30_000));
    clock.set(179_999);
    assert_eq!(store.apply_gates(&gate).await.unwrap(), exceeded(2, 1));
    assert_eq!(store.quota_usage("q", window).await.unwrap(), 2);
    clock.set(180_000);
    assert_eq!(store.quota_usage("q", window).await.unwrap(), 0);
    assert_eq!(store.apply_gates(&gate).await.unwrap(), GateResult::Passed);
    assert_eq!(store.quota_usage("q", window).await.unwrap(), 1);
}

/// Dedup marks, values and locks live while `now < set + ttl` and are gone at `set + ttl`.
#[tokio::test]
async fn ttls_expire_exactly() {
    let clock = ManualClock::at(1_000);
    let store = clock.store();
    let ttl = Duration::from_millis(1_000);
    assert_eq!(
        store.apply_gates(&[dedup("d", ttl, "tok")]).await.unwrap(),
        GateResult::Passed
    );
    let version = store
        .compare_and_swap("v", None, b"x".to_vec(), Some(ttl))
        .await
        .unwrap()
        .unwrap();
    assert!(store.try_lock("l", "a", ttl).await.unwrap());

    clock.set(1_999);
    assert!(store.dedup_exists("d").await.unwrap());
    assert_eq!(
        store.get("v").await.unwrap(),
        Some(Versioned {
            value: b"x".to_vec(),
            version
        })
    );
    assert!(!store.try_lock("l", "b", ttl).await.unwrap());

    clock.set(2_000);
    assert!(!store.dedup_exists("d").await.unwrap());
    assert!(
        !store.release_dedup("d", "tok").await.unwrap(),
        "an expired mark is not released"
    );
    assert_eq!(store.get("v").await.unwrap(), None);
    assert!(
        !store.delete("v").await.unwrap(),
        "an expired value is not deleted"
    );
    assert!(!store.unlock("l", "a").await.unwrap());
    assert!(store.try_lock("l", "b", ttl).await.unwrap());
}

/// Timer leases run on the caller's `now`: a claim at t with lease L is exclusive until t + L.
#[tokio::test]
async fn timer_lease_exact_edges() {
    let store = MemoryStore::new();
    store
        .schedule_timer("x", 1_000, b"p".to_vec())
        .await
        .unwrap();
    assert!(
        store
            .claim_due_timers(999, 10, Duration::from_millis(500))
            .await
            .unwrap()
            .is_empty(),
        "not due yet"
    );
    let first = store
        .claim_due_timers(1_000, 10, Duration::from_millis(500))
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    assert!(
        store
            .claim_due_timers(1_499, 10, Duration::from_millis(500))
            .await
            .unwrap()
            .is_empty(),
        "lease still held"
    );
    let second = store
        .claim_due_timers(1_500, 10, Duration::from_millis(500))
        .await
        .unwrap();
    assert_eq!(second.len(), 1, "lease ran out at exactly 1.5 s");
    assert!(!store.complete_timer("x", &first[0].claim).await.unwrap());
    assert!(store.complete_timer("x", &second[0].claim).await.unwrap());
}

/// Claims come oldest-due first and respect `max`.
#[tokio::test]
async fn timers_claimed_oldest_first() {
    let store = MemoryStore::new();
    for (id, due) in [("c", 300), ("a", 100), ("b", 200)] {
        store.schedule_timer(id, due, Vec::new()).await.unwrap();
    }
    let lease = Duration::from_secs(60);
    let ids = |v: Vec<acteon_gateway::state::ClaimedTimer>| {
        v.into_iter().map(|t| t.id).collect::<Vec<_>>()
    };
    assert_eq!(
        ids(store.claim_due_timers(1_000, 2, lease).await.unwrap()),
        ["a", "b"]
    );
    assert_eq!(
        ids(store.claim_due_timers(1_000, 2, lease).await.unwrap()),
        ["c"]
    );
}

/// A poll costs what it claims, not what is pending: with 100,000 timers not yet due, and
/// then 100,000 claimed under a running lease, 2,000 empty polls take well under a second
/// (a scan of every timer per poll takes seconds). The backlog still drains oldest first.
#[tokio::test]
async fn timer_polls_are_cheap_with_100k_pending() {
    const TIMERS: u64 = 100_000;
    const POLLS: u32 = 2_000;
    let store = MemoryStore::new();
    let lease = Duration::from_secs(60);
    // Registered in a scrambled order, named by due time.
    for i in 0..TIMERS {
        let n = (i * 7_919) % TIMERS;
        store
            .schedule_timer(&format!("t{n:06}"), 1_000_000 + n, Vec::new())
            .await
            .unwrap();
    }
    let idle = |now: u64| {
        let store = &store;
        async move {
            let started = Instant::now();
            for _ in 0..POLLS {
                assert!(
                    store
                        .claim_due_timers(now, 100, lease)
                        .await
                        .unwrap()
                        .is_empty()
                );
            }
            started.elapsed()
        }
    };
    let before_due = idle(999_999).await;
    assert!(
        before_due < Duration::from_secs(1),
        "{POLLS} polls over {TIMERS} timers not yet due took {before_due:?}"
    );

    let now = 2_000_000;
    let mut last = None;
    let mut claimed = 0;
    loop {
        let batch = store.claim_due_timers(now, 1_000, lease).await.unwrap();
        if batch.is_empty() {
            break;
        }
        for t in &batch {
            assert!(last.as_ref() < Some(&t.id), "claimed oldest first");
            last = Some(t.id.clone());
        }
        claimed += batch.len() as u64;
    }
    assert_eq!(claimed, TIMERS);
    assert_eq!(store.pending_timers().await.unwrap(), TIMERS);
    let leased = idle(now + 1).await;
    assert!(
        leased < Duration::from_secs(1),
        "{POLLS} polls over {TIMERS} claimed timers took {leased:?}"
    );
    assert_eq!(
        store
            .claim_due_timers(now + 60_000, 10, lease)
            .await
            .unwrap()
            .len(),
        10,
        "claimable again when the lease ends"
    );
}

/// Expired entries of every kind are dropped by a sweep; live ones and timers stay.
#[tokio::test]
async fn sweep_drops_expired_entries() {
    let clock = ManualClock::at(1_000_000);
    let store = clock.store();
    let short = Duration::from_secs(1);
    let long = Duration::from_secs(3_600);
    for (n, ttl) in [("short", short), ("long", long)] {
        let gates = [
            dedup(&format!("d-{n}"), ttl, "tok"),
            throttle(&format!("t-{n}"), 10, ttl),
            quota(&format!("q-{n}"), 10, ttl),
        ];
        assert_eq!(store.apply_gates(&gates).await.unwrap(), GateResult::Passed);
        store
            .compare_and_swap(&format!("v-{n}"), None, b"x".to_vec(), Some(ttl))
            .await
            .unwrap()
            .unwrap();
        assert!(store.try_lock(&format!("l-{n}"), "a", ttl).await.unwrap());
    }
    store
        .compare_and_swap("v-forever", None, b"x".to_vec(), None)
        .await
        .unwrap()
        .unwrap();
    store.schedule_timer("timer", 0, Vec::new()).await.unwrap();
    // 5 kinds × 2 lifetimes, a value without TTL and a timer.
    assert_eq!(store.entry_count(), 12);

    store.sweep_now();
    assert_eq!(store.entry_count(), 12, "nothing has expired yet");

    clock.set(1_000_000 + 1_000);
    store.sweep_now();
    assert_eq!(
        store.entry_count(),
        7,
        "the five short-lived entries are gone"
    );
    assert!(store.dedup_exists("d-long").await.unwrap());
    assert_eq!(store.window_count("t-long", long).await.unwrap(), 1);
    assert_eq!(store.quota_usage("q-long", long).await.unwrap(), 1);

    clock.set(1_000_000 + 3_600_000);
    store.sweep_now();
    assert_eq!(
        store.entry_count(),
        2,
        "only the value without TTL and the timer stay"
    );
}

/// Groups, events and set members expire exactly (an idle group `idle_ttl` after its last
/// flush, an event and its memberships `ttl` after its change, an armed group never) and
/// the sweep drops them.
#[tokio::test]
async fn sweep_drops_expired_parked_state() {
    let clock = ManualClock::at(1_000_000);
    let store = clock.store();
    let (short, long) = (Duration::from_secs(1), Duration::from_secs(3_600));
    let append = |key: &str| {
        Deferral::GroupAppend(GroupAppend {
            key: key.into(),
            group_id: key.into(),
            meta: Vec::new(),
            event: b"e".to_vec(),
            max_events: 10,
            wait: Duration::from_secs(10),
            interval: Duration::from_secs(10),
            idle_ttl: short,
            timer_id: format!("{key}#t"),
            timer_payload: Vec::new(),
            fingerprint: None,
            repeat: None,
        })
    };
    let event = |key: &str, ttl: Duration| {
        Deferral::Transition(Transition {
            key: key.into(),
            fingerprint: key.into(),
            initial: "new".into(),
            to: Some("on".into()),
            allowed_from: vec!["new".into()],
            require_timer: None,
            timeout: None,
            to_terminal: false,
            terminal: Vec::new(),
            active_sets: vec!["set".into()],
            record: Vec::new(),
            ttl,
            notice: None,
        })
    };
    let deferrals = [
        append("idle"),
        append("armed"),
        event("short", short),
        event("long", long),
    ];
    let (result, _) = store
        .run_gates_and_defer(&[], GateMode::APPLY, &deferrals)
        .await
        .unwrap();
    assert_eq!(result, GateResult::Passed);
    let lease = Duration::from_secs(60);
    let claimed = store.claim_due_timers(1_010_000, 10, lease).await.unwrap();
    assert_eq!(claimed.len(), 2, "both flush timers are due after the wait");
    for t in &claimed {
        if t.id == "idle#t" {
            assert!(store.group_flush_begin("idle").await.unwrap().is_some());
            let ended = store.group_flush_end("idle", &t.id, &t.claim, short, None);
            assert!(ended.await.unwrap());
        } else {
            let claim = [(t.id.clone(), t.claim.clone())];
            assert_eq!(store.release_timers(&claim).await.unwrap(), 1);
        }
    }
    // Two groups, two events, two members, the armed group's timer.
    assert_eq!(store.entry_count(), 7);
    let set = [StateRead::SetNotEmpty { key: "set".into() }];

    clock.set(1_001_000);
    store.sweep_now();
    assert_eq!(
        store.entry_count(),
        4,
        "the idle group, an event and its member"
    );
    assert!(store.get_group("idle").await.unwrap().is_none());
    assert!(store.get_group("armed").await.unwrap().is_some());
    assert!(store.get_event("short").await.unwrap().is_none());
    assert_eq!(store.read_state(&set).await.unwrap(), [1]);

    clock.set(1_000_000 + 3_600_000);
    assert_eq!(store.read_state(&set).await.unwrap(), [0]);
    store.sweep_now();
    assert_eq!(
        store.entry_count(),
        2,
        "an armed group never expires: it and its timer stay"
    );
}

/// The background sweeper does the same on its own.
#[tokio::test]
async fn background_sweeper_drops_expired_entries() {
    let clock = ManualClock::at(1_000_000);
    let store = Arc::new(clock.store());
    store
        .apply_gates(&[dedup("d", Duration::from_secs(1), "tok")])
        .await
        .unwrap();
    store.start_sweeper(Duration::from_millis(10));
    clock.set(1_001_000);
    let started = Instant::now();
    while store.entry_count() != 0 {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the sweeper did not drop the expired mark"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Dedup (priority 1), throttle 1/min (2), suppress when `payload.block` (3): an action that
/// ends suppressed is checked against the gates (a duplicate is still `Deduplicated`, a full
/// window still `Throttled`) but consumes neither the dedup mark nor the throttle budget.
#[tokio::test]
async fn suppressed_actions_consume_no_gates() {
    let rule = |name: &str, priority: u32, condition: &str, action: &str| {
        format!(
            "---\napiVersion: acteon.dev/v1alpha1\nkind: Rule\nmetadata: {{name: {name}, namespace: ns}}\nspec:\n  priority: {priority}\n  condition: {condition}\n  action: {action}\n"
        )
    };
    let yaml = [
        "apiVersion: acteon.dev/v1alpha1\nkind: Provider\nmetadata: {name: p, namespace: ns}\nspec: {type: noop}\n".to_owned(),
        rule("a-dedup", 1, "{field: action.tenant, eq: t}", "{type: deduplicate, ttlSeconds: 60}"),
        rule("b-throttle", 2, "{field: action.tenant, eq: t}", "{type: throttle, maxCount: 1, windowSeconds: 60}"),
        rule("c-block", 3, "{field: action.payload.block, eq: true}", "{type: suppress}"),
    ]
    .concat();
    let gw = common::gateway(&yaml);
    let send = |key: &str, block: bool| {
        let a = common::action(json!({
            "namespace": "ns", "tenant": "t", "provider": "p", "action_type": "x",
            "dedup_key": key, "payload": {"block": block}
        }));
        let gw = &gw;
        async move { gw.dispatch(a, false).await.expect("dispatch answers") }
    };
    let suppressed = ActionOutcome::Suppressed {
        rule: "c-block".into(),
    };
    assert_eq!(send("k1", true).await, suppressed);
    assert_eq!(send("k1", true).await, suppressed, "no mark was set");
    assert!(
        matches!(send("k1", false).await, ActionOutcome::Executed(_)),
        "the suppressed actions neither marked k1 nor used the throttle budget"
    );
    assert_eq!(send("k1", false).await, ActionOutcome::Deduplicated);
    assert_eq!(
        send("k1", true).await,
        ActionOutcome::Deduplicated,
        "gates are still checked before a later rule stops the action"
    );
    assert!(matches!(
        send("k2", true).await,
        ActionOutcome::Throttled { .. }
    ));
    assert!(matches!(
        send("k3", false).await,
        ActionOutcome::Throttled { .. }
    ));
}
