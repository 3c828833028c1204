//! Conformance checks of the reads and reservations the delivery layer needs: several
//! values read at once (circuit breakers) and rate slots (provider rate limits).

use std::sync::Arc;
use std::time::Duration;

use super::{RACERS, SLACK, ok, race};
use crate::state::{StateStore, Versioned};

/// `get_many` answers every key in order, absent ones as `None`, with their versions.
pub async fn get_many_answers_in_order(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "get_many_answers_in_order";
    let s = &*store;
    let keys: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|k| format!("{prefix}{k}"))
        .collect();
    let va = ok(
        C,
        "cas a",
        s.compare_and_swap(&keys[0], None, b"A".to_vec(), None)
            .await,
    )
    .unwrap_or_else(|| panic!("conformance[{C}]: creating a must succeed"));
    let vc = ok(
        C,
        "cas c",
        s.compare_and_swap(&keys[2], None, b"C".to_vec(), None)
            .await,
    )
    .unwrap_or_else(|| panic!("conformance[{C}]: creating c must succeed"));
    let read = ok(C, "get_many", s.get_many(&keys).await);
    let expected = vec![
        Some(Versioned {
            value: b"A".to_vec(),
            version: va,
        }),
        None,
        Some(Versioned {
            value: b"C".to_vec(),
            version: vc,
        }),
    ];
    assert_eq!(read, expected, "conformance[{C}]: values in key order");
    let reversed: Vec<String> = keys.iter().rev().cloned().collect();
    let read = ok(C, "get_many reversed", s.get_many(&reversed).await);
    let mut back = expected;
    back.reverse();
    assert_eq!(
        read, back,
        "conformance[{C}]: answers follow the order asked"
    );
    assert!(
        ok(C, "get_many of none", s.get_many(&[]).await).is_empty(),
        "conformance[{C}]: no keys, no answers"
    );
}

/// Slots are `interval` apart, a reservation beyond `max_wait` reserves nothing, and the
/// slots of one key do not delay another.
pub async fn rate_slots_spaced_and_bounded(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "rate_slots_spaced_and_bounded";
    let s = &*store;
    let interval = Duration::from_millis(200);
    let max_wait = Duration::from_millis(500);
    let key = format!("{prefix}stream");
    let mut waits = Vec::new();
    for _ in 0..3 {
        let wait = ok(C, "reserve", s.reserve_slot(&key, interval, max_wait).await);
        waits.push(wait.unwrap_or_else(|| panic!("conformance[{C}]: slot within the bound")));
    }
    assert!(
        waits[0] <= SLACK,
        "conformance[{C}]: first slot now: {waits:?}"
    );
    for (n, wait) in waits.iter().enumerate().skip(1) {
        let nominal = interval * n as u32;
        assert!(
            *wait + SLACK >= nominal && *wait <= nominal,
            "conformance[{C}]: slot {n} waits about {nominal:?}: {waits:?}"
        );
    }
    // The fourth would start 600 ms from now: refused, and refusing reserves nothing.
    assert_eq!(
        ok(
            C,
            "reserve beyond",
            s.reserve_slot(&key, interval, max_wait).await
        ),
        None,
        "conformance[{C}]: a slot beyond max_wait is refused"
    );
    let other = format!("{prefix}other");
    let wait = ok(
        C,
        "reserve other",
        s.reserve_slot(&other, interval, max_wait).await,
    );
    assert!(
        wait.is_some_and(|w| w <= SLACK),
        "conformance[{C}]: another key is independent: {wait:?}"
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    let wait = ok(
        C,
        "reserve later",
        s.reserve_slot(&key, interval, max_wait).await,
    );
    assert!(
        wait.is_some_and(|w| w <= Duration::from_millis(400)),
        "conformance[{C}]: the refused reservation took no slot: {wait:?}"
    );
}

/// Concurrent reservations get distinct slots, `interval` apart, none lost.
pub async fn concurrent_rate_slots_distinct(store: Arc<dyn StateStore>, prefix: &str) {
    const C: &str = "concurrent_rate_slots_distinct";
    let interval = Duration::from_millis(5);
    let key = Arc::new(format!("{prefix}stream"));
    let started = std::time::Instant::now();
    let slots = race(&store, RACERS, |s, _| {
        let key = key.clone();
        async move {
            let wait = s
                .reserve_slot(&key, interval, Duration::from_secs(60))
                .await;
            // The slot as an offset from the common start.
            (ok(C, "reserve", wait), started.elapsed())
        }
    })
    .await;
    let mut starts: Vec<Duration> = slots
        .iter()
        .map(|(wait, at)| {
            wait.unwrap_or_else(|| panic!("conformance[{C}]: every slot within a minute")) + *at
        })
        .collect();
    starts.sort();
    let span = *starts.last().unwrap_or(&Duration::ZERO) - starts[0];
    let nominal = interval * (RACERS as u32 - 1);
    assert!(
        span + SLACK * 2 >= nominal,
        "conformance[{C}]: {RACERS} slots {interval:?} apart span at least {nominal:?}, got {span:?}"
    );
}
