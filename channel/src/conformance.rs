//! The conformance suite of [`ConfigChannel`]: written once, run on every implementation.
//!
//! A backend's test file implements [`Fixture`] (how to open another handle on one fresh,
//! isolated channel, and how to remove it afterwards) and expands
//! [`channel_conformance_tests!`](crate::channel_conformance_tests), which makes one test per
//! check. The checks panic on failure; they are test code that lives in the library so that
//! every backend (and a future one) runs the very same checks.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::auth::{AuthError, SnapshotAuth, sign};
use crate::seal::SealKey;
use crate::{ConfigChannel, GatewayReport, Head, PublishOutcome, Published};

/// How long a notification may take to reach another instance.
pub const NOTIFY_WITHIN: Duration = Duration::from_secs(1);

/// One fresh channel under test.
#[async_trait]
pub trait Fixture: Send + Sync + 'static {
    /// A new handle on the channel, as another process would open it (for a server
    /// backend: new connections).
    async fn open(&self) -> Arc<dyn ConfigChannel>;

    /// Removes what the channel stored. Runs after the check, whether it passed or not.
    async fn cleanup(&self) {}

    /// Replaces the newest snapshot's digest and body in place, straight in the backend's
    /// storage and without notifying anyone, as someone with write access to the backend
    /// could. False when the backend has no storage of its own (the in-process channel).
    async fn write_directly(&self, _digest: &str, _body: &[u8]) -> bool {
        false
    }
}

/// One `#[tokio::test]` per conformance check, for the fixture made by `$fixture` (an
/// expression evaluating to a future of a [`Fixture`], e.g. `fixture()`).
#[macro_export]
macro_rules! channel_conformance_tests {
    ($fixture:expr) => {
        $crate::channel_conformance_tests!(@checks $fixture;
            empty_channel,
            first_publish_is_version_one,
            empty_digest_and_body_are_published,
            same_digest_is_unchanged_and_silent,
            new_digest_notifies_other_instances,
            fetch_is_consistent,
            fetch_is_consistent_under_concurrent_publishing,
            versions_are_monotonic_across_instances,
            concurrent_publishers_never_share_a_version,
            concurrent_same_digest_publishes_once,
            reports_are_listed_sorted_and_replaced,
            reports_expire,
            large_bodies_roundtrip,
            snapshots_not_from_the_operator_do_not_authenticate,
        );
    };
    (@checks $fixture:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                $crate::conformance::run_check($fixture.await, |f| async move {
                    $crate::conformance::$check(&*f).await
                })
                .await;
            }
        )*
    };
}

/// Runs `check` on `fixture`, then [`Fixture::cleanup`] whether the check passed or not
/// (the check runs in a task of its own, so its panic is caught and re-raised afterwards).
pub async fn run_check<F, C, Fut>(fixture: F, check: C)
where
    F: Fixture,
    C: FnOnce(Arc<F>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let fixture = Arc::new(fixture);
    let outcome = tokio::spawn(check(fixture.clone())).await;
    fixture.cleanup().await;
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("check did not finish: {e}"),
        }
    }
}

fn head(version: u64, digest: &str) -> Head {
    Head {
        version,
        digest: digest.to_owned(),
    }
}

fn published(version: u64, digest: &str, body: &[u8]) -> Published {
    Published {
        version,
        digest: digest.to_owned(),
        body: body.to_vec(),
    }
}

/// A report of `gateway` serving `version`.
pub fn report(gateway: &str, version: u64) -> GatewayReport {
    GatewayReport {
        gateway: gateway.to_owned(),
        version,
        digest: format!("digest-{version}"),
        ..GatewayReport::default()
    }
}

/// Whether `rx` shows `version` (or newer) within `within`.
pub async fn notified(rx: &mut watch::Receiver<u64>, version: u64, within: Duration) -> bool {
    matches!(
        tokio::time::timeout(within, rx.wait_for(|v| *v >= version)).await,
        Ok(Ok(_))
    )
}

/// Publishes and expects a new version.
pub async fn publish_new(ch: &dyn ConfigChannel, digest: &str, body: &[u8]) -> u64 {
    match ch.publish(digest, body).await {
        Ok(PublishOutcome::Published(h)) => {
            assert_eq!(h.digest, digest);
            h.version
        }
        other => panic!("publish {digest}: expected Published, got {other:?}"),
    }
}

pub async fn empty_channel(f: &dyn Fixture) {
    let ch = f.open().await;
    assert_eq!(ch.head().await.unwrap(), None);
    assert_eq!(ch.fetch().await.unwrap(), None);
    assert_eq!(ch.gateways().await.unwrap(), vec![]);
    assert_eq!(*ch.notifications().borrow(), 0);
}

pub async fn first_publish_is_version_one(f: &dyn Fixture) {
    let ch = f.open().await;
    let outcome = ch.publish("d1", b"body-1").await.unwrap();
    assert_eq!(outcome, PublishOutcome::Published(head(1, "d1")));
    assert_eq!(outcome.head(), &head(1, "d1"));
    assert_eq!(ch.head().await.unwrap(), Some(head(1, "d1")));
    assert_eq!(
        ch.fetch().await.unwrap(),
        Some(published(1, "d1", b"body-1"))
    );
}

/// An empty digest or body is data like any other (no backend may use them as "absent").
pub async fn empty_digest_and_body_are_published(f: &dyn Fixture) {
    let ch = f.open().await;
    assert_eq!(
        ch.publish("", b"").await.unwrap(),
        PublishOutcome::Published(head(1, ""))
    );
    assert_eq!(ch.fetch().await.unwrap(), Some(published(1, "", b"")));
    assert_eq!(
        ch.publish("", b"").await.unwrap(),
        PublishOutcome::Unchanged(head(1, ""))
    );
    assert_eq!(publish_new(&*ch, "d", b"x").await, 2);
    assert_eq!(publish_new(&*ch, "", b"").await, 3);
}

pub async fn same_digest_is_unchanged_and_silent(f: &dyn Fixture) {
    let (a, b) = (f.open().await, f.open().await);
    let mut rx = b.notifications();
    assert_eq!(publish_new(&*a, "d1", b"first").await, 1);
    assert!(
        notified(&mut rx, 1, NOTIFY_WITHIN).await,
        "no notification of version 1"
    );
    rx.borrow_and_update();
    assert_eq!(
        a.publish("d1", b"another body").await.unwrap(),
        PublishOutcome::Unchanged(head(1, "d1"))
    );
    assert_eq!(
        b.publish("d1", b"yet another").await.unwrap(),
        PublishOutcome::Unchanged(head(1, "d1"))
    );
    let quiet = tokio::time::timeout(Duration::from_millis(500), rx.changed()).await;
    assert!(quiet.is_err(), "an unchanged publish notified: {quiet:?}");
    assert_eq!(b.fetch().await.unwrap(), Some(published(1, "d1", b"first")));
}

pub async fn new_digest_notifies_other_instances(f: &dyn Fixture) {
    let (a, b, c) = (f.open().await, f.open().await, f.open().await);
    let (mut rx_a, mut rx_b) = (a.notifications(), b.notifications());
    publish_new(&*a, "d1", b"one").await;
    assert!(
        notified(&mut rx_b, 1, NOTIFY_WITHIN).await,
        "b missed version 1"
    );
    assert_eq!(
        a.publish("d2", b"two").await.unwrap(),
        PublishOutcome::Published(head(2, "d2"))
    );
    assert!(
        notified(&mut rx_b, 2, NOTIFY_WITHIN).await,
        "b missed version 2"
    );
    assert!(
        notified(&mut rx_a, 2, NOTIFY_WITHIN).await,
        "the publisher missed its own"
    );
    // A third instance publishes; the first hears it.
    assert_eq!(publish_new(&*c, "d3", b"three").await, 3);
    assert!(
        notified(&mut rx_a, 3, NOTIFY_WITHIN).await,
        "a missed version 3"
    );
    assert!(
        notified(&mut rx_b, 3, NOTIFY_WITHIN).await,
        "b missed version 3"
    );
}

pub async fn fetch_is_consistent(f: &dyn Fixture) {
    let (a, b) = (f.open().await, f.open().await);
    for i in 1..=5u64 {
        let (digest, body) = (format!("d{i}"), format!("body of d{i}"));
        assert_eq!(publish_new(&*a, &digest, body.as_bytes()).await, i);
        let fetched = b.fetch().await.unwrap();
        assert_eq!(fetched, Some(published(i, &digest, body.as_bytes())));
        assert_eq!(b.head().await.unwrap(), Some(head(i, &digest)));
    }
}

/// A reader never sees the body of one version with the version or digest of another.
pub async fn fetch_is_consistent_under_concurrent_publishing(f: &dyn Fixture) {
    const VERSIONS: u64 = 30;
    let (writer, reader) = (f.open().await, f.open().await);
    let body_of = |v: u64| format!("body {v} ").repeat(50 + v as usize).into_bytes();
    let write = async {
        for v in 1..=VERSIONS {
            assert_eq!(
                publish_new(&*writer, &format!("d{v}"), &body_of(v)).await,
                v
            );
        }
    };
    let read = async {
        let mut last = 0;
        let mut seen = 0;
        while last < VERSIONS {
            if let Some(p) = reader.fetch().await.unwrap() {
                assert!(
                    p.version >= last,
                    "fetch went back from {last} to {}",
                    p.version
                );
                assert_eq!(p.digest, format!("d{}", p.version));
                assert!(
                    p.body == body_of(p.version),
                    "body of another version at {}",
                    p.version
                );
                last = p.version;
                seen += 1;
            }
            // Lets the writer run when both share a thread (the memory channel never waits).
            tokio::task::yield_now().await;
        }
        seen
    };
    let ((), seen) = tokio::join!(write, read);
    assert!(seen > 0);
}

pub async fn versions_are_monotonic_across_instances(f: &dyn Fixture) {
    let a = f.open().await;
    assert_eq!(publish_new(&*a, "d1", b"1").await, 1);
    drop(a); // an operator restart: a new instance continues the sequence
    let b = f.open().await;
    assert_eq!(publish_new(&*b, "d2", b"2").await, 2);
    let c = f.open().await;
    // Going back to an older digest is a new version, not a rollback of the counter.
    assert_eq!(publish_new(&*c, "d1", b"1").await, 3);
    assert_eq!(
        b.publish("d1", b"1").await.unwrap(),
        PublishOutcome::Unchanged(head(3, "d1"))
    );
    assert_eq!(publish_new(&*b, "d4", b"4").await, 4);
    assert_eq!(c.head().await.unwrap(), Some(head(4, "d4")));
}

pub async fn concurrent_publishers_never_share_a_version(f: &dyn Fixture) {
    const EACH: u64 = 25;
    let (a, b) = (f.open().await, f.open().await);
    let run = |ch: Arc<dyn ConfigChannel>, name: &'static str| async move {
        let mut versions = Vec::new();
        for i in 0..EACH {
            versions.push(publish_new(&*ch, &format!("{name}{i}"), name.as_bytes()).await);
        }
        versions
    };
    let (va, vb) = tokio::join!(
        tokio::spawn(run(a.clone(), "a")),
        tokio::spawn(run(b.clone(), "b"))
    );
    let (va, vb) = (va.unwrap(), vb.unwrap());
    for v in [&va, &vb] {
        assert!(v.windows(2).all(|w| w[0] < w[1]), "not increasing: {v:?}");
    }
    let all: BTreeSet<u64> = va.iter().chain(&vb).copied().collect();
    assert_eq!(
        all.len() as u64,
        2 * EACH,
        "a version was given twice: {va:?} {vb:?}"
    );
    assert_eq!(all, (1..=2 * EACH).collect(), "versions skipped");
    assert_eq!(a.head().await.unwrap().map(|h| h.version), Some(2 * EACH));
}

/// Many publishers of one digest at once: exactly one stores it, the others see it stored
/// (with its version, even when they waited for the one that stored it).
pub async fn concurrent_same_digest_publishes_once(f: &dyn Fixture) {
    const ROUNDS: u64 = 20;
    let (a, b) = (f.open().await, f.open().await);
    for round in 1..=ROUNDS {
        let digest = format!("same-{round}");
        let mut tasks = Vec::new();
        for i in 0..8 {
            let ch = if i % 2 == 0 { a.clone() } else { b.clone() };
            let digest = digest.clone();
            tasks.push(tokio::spawn(async move { ch.publish(&digest, b"s").await }));
        }
        let mut stored = 0;
        for task in tasks {
            match task.await.unwrap().unwrap() {
                PublishOutcome::Published(h) => {
                    assert_eq!(h, head(round, &digest));
                    stored += 1;
                }
                PublishOutcome::Unchanged(h) => assert_eq!(h, head(round, &digest)),
            }
        }
        assert_eq!(stored, 1, "round {round}");
    }
}

pub async fn reports_are_listed_sorted_and_replaced(f: &dyn Fixture) {
    let (a, b, operator) = (f.open().await, f.open().await, f.open().await);
    let ttl = Duration::from_secs(60);
    a.report(&report("gw-b", 1), ttl).await.unwrap();
    b.report(&report("gw-a", 1), ttl).await.unwrap();
    b.report(&report("gw-c", 0), ttl).await.unwrap();
    let listed = operator.gateways().await.unwrap();
    assert_eq!(
        listed,
        vec![report("gw-a", 1), report("gw-b", 1), report("gw-c", 0)]
    );
    let failing = GatewayReport {
        failed_version: Some(3),
        error: Some("provider hook: sealed value does not open".into()),
        chains: [(
            "ns/escalate".to_owned(),
            crate::ChainActivity {
                running: Some(3),
                last_failure: Some("step `page`: 503".into()),
                last_failure_ms: Some(1_700_000_000_000),
            },
        )]
        .into(),
        chain_census_ms: Some(1_700_000_000_500),
        ..report("gw-b", 2)
    };
    a.report(&failing, ttl).await.unwrap();
    let listed = operator.gateways().await.unwrap();
    assert_eq!(
        listed,
        vec![report("gw-a", 1), failing.clone(), report("gw-c", 0)]
    );
}

pub async fn reports_expire(f: &dyn Fixture) {
    let ch = f.open().await;
    ch.report(&report("long", 1), Duration::from_secs(60))
        .await
        .unwrap();
    ch.report(&report("short", 1), Duration::from_secs(1))
        .await
        .unwrap();
    let reported = Instant::now();
    let ids = |list: Vec<GatewayReport>| list.into_iter().map(|r| r.gateway).collect::<Vec<_>>();
    assert_eq!(ids(ch.gateways().await.unwrap()), ["long", "short"]);
    tokio::time::sleep_until(reported + Duration::from_millis(1300)).await;
    assert_eq!(ids(ch.gateways().await.unwrap()), ["long"]);
    // Renewing brings it back; the record is replaced, not duplicated.
    ch.report(&report("short", 2), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        f.open().await.gateways().await.unwrap(),
        vec![report("long", 1), report("short", 2)]
    );
}

pub async fn large_bodies_roundtrip(f: &dyn Fixture) {
    let (a, b) = (f.open().await, f.open().await);
    // 4 MiB that do not compress, every byte value included.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let body: Vec<u8> = (0..4 << 20)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i < 256 { i as u8 } else { (x >> 24) as u8 }
        })
        .collect();
    assert_eq!(publish_new(&*a, "big", &body).await, 1);
    let fetched = b.fetch().await.unwrap().expect("published");
    assert_eq!((fetched.version, fetched.digest.as_str()), (1, "big"));
    assert!(
        fetched.body == body,
        "body differs ({} bytes)",
        fetched.body.len()
    );
}

/// What a following gateway sees when someone other than the operator writes the backend:
/// a snapshot published without a MAC, with another key's MAC, or altered after signing
/// (through the channel, and written straight into the backend's storage) never opens;
/// the operator's snapshot opens to its exact bytes.
pub async fn snapshots_not_from_the_operator_do_not_authenticate(f: &dyn Fixture) {
    let (operator, gateway) = (f.open().await, f.open().await);
    let key = SealKey::generate();
    let auth = SnapshotAuth::new(Some(key.clone()), false).expect("a key");
    let opened = |p: &Published| auth.open(&p.digest, &p.body).map(<[u8]>::to_vec);
    let good = br#"{"providers":[{"webhook":"https://ours.example"}]}"#;
    let evil = br#"{"providers":[{"webhook":"https://attacker.example"}]}"#;

    let v1 = publish_new(&*operator, "good", &sign(&key, "good", good)).await;
    let fetched = gateway.fetch().await.unwrap().expect("published");
    assert_eq!((fetched.version, opened(&fetched)), (v1, Ok(good.to_vec())));

    let forgeries: [(&str, Vec<u8>, AuthError); 3] = [
        ("bare", evil.to_vec(), AuthError::Unsigned),
        (
            "other-key",
            sign(&SealKey::generate(), "other-key", evil),
            AuthError::WrongKey {
                expected: key.fingerprint(),
                found: String::new(),
            },
        ),
        (
            "altered",
            altered(&sign(&key, "altered", good)),
            AuthError::Tampered,
        ),
    ];
    for (digest, body, want) in &forgeries {
        publish_new(&*operator, digest, body).await;
        let fetched = gateway.fetch().await.unwrap().expect("published");
        assert_refused(opened(&fetched), want, digest);
        if f.write_directly(digest, body).await {
            let fetched = gateway.fetch().await.unwrap().expect("published");
            assert_eq!((fetched.digest.as_str(), &fetched.body), (*digest, body));
            assert_refused(opened(&fetched), want, digest);
        }
    }
    // The operator's envelope under another digest: the digest is authenticated too.
    if f.write_directly("forged-digest", &sign(&key, "good", good))
        .await
    {
        let fetched = gateway.fetch().await.unwrap().expect("published");
        assert_eq!(fetched.digest, "forged-digest");
        assert_eq!(opened(&fetched), Err(AuthError::Tampered));
    }
}

/// `body` with its last byte changed (an envelope whose snapshot was edited after signing).
fn altered(body: &[u8]) -> Vec<u8> {
    let mut body = body.to_vec();
    if let Some(last) = body.last_mut() {
        *last ^= 0x20;
    }
    body
}

fn assert_refused(got: Result<Vec<u8>, AuthError>, want: &AuthError, what: &str) {
    match (got, want) {
        (Err(AuthError::WrongKey { expected, .. }), AuthError::WrongKey { expected: e, .. }) => {
            assert_eq!(&expected, e, "{what}")
        }
        (got, want) => assert_eq!(got, Err(want.clone()), "{what}"),
    }
}
