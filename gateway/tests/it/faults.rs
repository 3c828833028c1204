//! Backend outages: with the state backend cut off (a black-holed port, like a dead host)
//! under load, gateways answer 503 within 2 s, `/health` reports it (`/readyz` stays ready:
//! the backend is shared), nothing panics; when the
//! backend comes back, service resumes within 5 s without a restart. Redis and Postgres.
//! A gateway SIGKILLed mid-delivery loses no action to the dedup mark it left.

use crate::common;
use crate::common::proxy;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Recorder, Server};
use parking_lot::Mutex;
use proxy::FaultProxy;
use serde_json::json;

const CONFIG: &str = r#"
apiVersion: acteon.dev/v1alpha1
kind: Provider
metadata: {name: p, namespace: f}
spec: {type: noop}
---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {name: dedup, namespace: f}
spec:
  condition: {field: action.action_type, eq: x}
  action: {type: deduplicate, ttlSeconds: 60}
"#;

/// One answered request: when it was sent, its status, how long it took.
#[derive(Clone, Copy, Debug)]
struct Sample {
    sent: Instant,
    status: u16,
    took: Duration,
}

fn socket_addr(host_port: &str) -> SocketAddr {
    use std::net::ToSocketAddrs;
    host_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| panic!("resolves {host_port}"))
}

async fn ready(client: &reqwest::Client, server: &Server) -> u16 {
    match client
        .get(server.url("/readyz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// Runs the outage scenario against a backend reached through `proxy` with `state_url`.
async fn outage_and_recovery(proxy: &FaultProxy, state_url: &str) {
    let dir = std::env::temp_dir().join(format!("acteon-faults-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("config.yaml");
    std::fs::write(&file, CONFIG).expect("config");
    let prefix = format!(
        "acteon_f{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let args = [
        "--config",
        file.to_str().expect("utf-8"),
        "--state",
        state_url,
        "--state-prefix",
        &prefix,
        "--state-timeout-ms",
        "1500",
    ];
    let mut servers = [Server::start(&args), Server::start(&args)];
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    for s in &servers {
        assert_eq!(ready(&client, s).await, 200);
    }

    // Background load on both gateways, recording every answer.
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for worker in 0..8 {
        let url = servers[worker % 2].url("/v1/dispatch");
        let (client, samples, stop) = (client.clone(), samples.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let body = json!({"namespace": "f", "tenant": "t", "provider": "p", "action_type": "x", "payload": {}, "dedup_key": format!("{worker}-{n}")});
                let sent = Instant::now();
                let status = match client.post(&url).json(&body).send().await {
                    Ok(r) => r.status().as_u16(),
                    Err(_) => 0,
                };
                samples.lock().push(Sample { sent, status, took: sent.elapsed() });
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }

    tokio::time::sleep(Duration::from_millis(500)).await;
    let cut_at = Instant::now();
    proxy.cut();
    // Long enough for several 1.5 s state timeouts in a row, so requests are both sent and
    // answered inside the outage.
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Readiness does not follow a shared backend (every replica would leave the Service at
    // once); `/health` reports it instead.
    for s in &servers {
        assert_eq!(ready(&client, s).await, 200, "/readyz stays ready");
        let health: serde_json::Value = client
            .get(s.url("/health"))
            .send()
            .await
            .expect("health answered")
            .json()
            .await
            .expect("health json");
        assert_eq!(health["state_backend"]["up"], false, "{health}");
    }
    let restored_at = Instant::now();
    proxy.restore();

    // Recovery: each gateway is ready again within 5 s.
    for s in &servers {
        let deadline = restored_at + Duration::from_secs(5);
        while ready(&client, s).await != 200 {
            assert!(
                Instant::now() < deadline,
                "not ready 5 s after the backend came back"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let recovered_at = Instant::now();
    eprintln!(
        "ready again {:?} after the backend came back",
        recovered_at - restored_at
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.expect("load task");
    }

    let samples = samples.lock().clone();
    let before: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.sent + s.took < cut_at)
        .collect();
    let during: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.sent > cut_at + Duration::from_millis(100) && s.sent + s.took < restored_at)
        .collect();
    let after: Vec<&Sample> = samples.iter().filter(|s| s.sent > recovered_at).collect();
    assert!(
        !before.is_empty() && before.iter().all(|s| s.status == 200),
        "healthy before the outage"
    );
    assert!(!during.is_empty(), "requests were sent during the outage");
    for s in &during {
        assert_eq!(s.status, 503, "only 503 during the outage: {s:?}");
    }
    let slowest = samples
        .iter()
        .filter(|s| s.status == 503)
        .map(|s| s.took)
        .max()
        .unwrap_or_default();
    assert!(slowest <= Duration::from_secs(2), "a 503 took {slowest:?}");
    assert!(
        !after.is_empty() && after.iter().all(|s| s.status == 200),
        "service resumed: {:?}",
        after.iter().filter(|s| s.status != 200).collect::<Vec<_>>()
    );
    assert!(
        samples.iter().all(|s| s.status == 200 || s.status == 503),
        "no other answers, no dropped connections"
    );
    for s in &mut servers {
        assert!(
            s.child.try_wait().expect("status").is_none(),
            "the gateway is still running"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_outage_gives_503_and_recovers() {
    let url = std::env::var("ACTEON_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let host_port = url.trim_start_matches("redis://").trim_end_matches('/');
    let proxy = FaultProxy::start(socket_addr(host_port));
    outage_and_recovery(&proxy, &format!("redis://{}", proxy.addr())).await;
}

/// `postgres://user@host:port/db` → (`host:port`, a function that puts another address in).
fn split_postgres_url(url: &str) -> (String, String, String) {
    let (scheme_user, rest) = url
        .rsplit_once('@')
        .unwrap_or_else(|| panic!("postgres URL with user@: {url}"));
    let (host_port, db) = rest.split_once('/').unwrap_or((rest, ""));
    (
        format!("{scheme_user}@"),
        host_port.to_owned(),
        format!("/{db}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_outage_gives_503_and_recovers() {
    let url = std::env::var("ACTEON_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".to_owned());
    let (head, host_port, tail) = split_postgres_url(&url);
    let proxy = FaultProxy::start(socket_addr(&host_port));
    outage_and_recovery(&proxy, &format!("{head}{}{tail}", proxy.addr())).await;
}

/// Webhook with 1 s attempts, 3 of them, 100 then 200 ms backoffs: worst case 3 s + 2 × (100
/// + 200) ms of jittered backoff = 3.6 s, so the in-flight lease is 3.6 s + 3 s of margin.
const LEASE: Duration = Duration::from_millis(6_600);

fn kill_config(hook: &Recorder) -> String {
    format!(
        r#"
apiVersion: acteon.dev/v1alpha1
kind: Provider
metadata: {{name: hook, namespace: f}}
spec:
  type: webhook
  webhook: {{url: "{}"}}
  timeoutSeconds: 1
  retry: {{maxAttempts: 3, initialBackoffMs: 100, maxBackoffMs: 200}}
---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {{name: dedup, namespace: f}}
spec:
  condition: {{field: action.action_type, eq: x}}
  action: {{type: deduplicate, ttlSeconds: 600}}
"#,
        hook.url("/hook")
    )
}

async fn dispatch_key(client: &reqwest::Client, server: &Server, key: &str) -> serde_json::Value {
    let body = json!({"namespace": "f", "tenant": "t", "provider": "hook", "action_type": "x", "payload": {"key": key}, "dedup_key": key});
    let r = client
        .post(server.url("/v1/dispatch"))
        .json(&body)
        .send()
        .await
        .expect("dispatch answered");
    r.json().await.expect("json outcome")
}

fn delivered(hook: &Recorder, key: &str) -> usize {
    hook.requests
        .lock()
        .iter()
        .filter(|r| r.body["key"] == key)
        .count()
}

/// A gateway SIGKILLed while a delivery hangs leaves a dedup mark behind. The mark only
/// holds for the in-flight lease: a retry during the lease is still `Deduplicated` (the
/// action may be in flight elsewhere), a retry after it is delivered. A mark whose delivery
/// succeeded was confirmed in the background and still blocks duplicates after the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_gateway_loses_no_action_to_a_dedup_mark() {
    let url = std::env::var("ACTEON_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let hook = Recorder::start().await;
    let dir = std::env::temp_dir().join(format!("acteon-kill-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("config.yaml");
    std::fs::write(&file, kill_config(&hook)).expect("config");
    let prefix = format!(
        "acteon_k{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let args = [
        "--config",
        file.to_str().expect("utf-8"),
        "--state",
        &url,
        "--state-prefix",
        &prefix,
    ];
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");

    let first = Server::start(&args);
    let done = dispatch_key(&client, &first, "done").await;
    let done_at = Instant::now();
    assert!(done.get("Executed").is_some(), "{done}");

    // The target now hangs; the gateway is killed mid-attempt.
    *hook.delay.lock() = Duration::from_secs(3600);
    let hanging = {
        let (client, body_url) = (client.clone(), first.url("/v1/dispatch"));
        tokio::spawn(async move {
            let body = json!({"namespace": "f", "tenant": "t", "provider": "hook", "action_type": "x", "payload": {"key": "lost"}, "dedup_key": "lost"});
            let _ = client.post(body_url).json(&body).send().await;
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(first); // SIGKILL
    let killed_at = Instant::now();
    let _ = hanging.await;
    *hook.delay.lock() = Duration::ZERO;

    let second = Server::start(&args);
    let early = dispatch_key(&client, &second, "lost").await;
    assert_eq!(
        early,
        json!("Deduplicated"),
        "within the lease the mark of the interrupted delivery still holds"
    );
    let outcome = loop {
        let o = dispatch_key(&client, &second, "lost").await;
        if o != json!("Deduplicated") {
            break o;
        }
        assert!(
            killed_at.elapsed() < LEASE + Duration::from_secs(3),
            "the retry is still answered Deduplicated {:?} after the kill (lease {LEASE:?})",
            killed_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("retry delivered {:?} after the kill", killed_at.elapsed());
    assert!(
        killed_at.elapsed() >= LEASE - Duration::from_secs(1),
        "the mark held for the lease, not less"
    );
    assert!(outcome.get("Executed").is_some(), "{outcome}");
    assert_eq!(delivered(&hook, "lost"), 1, "delivered once, by the retry");

    // The confirmed mark outlives the lease.
    tokio::time::sleep(
        (done_at + LEASE + Duration::from_millis(500)).saturating_duration_since(Instant::now()),
    )
    .await;
    assert_eq!(
        dispatch_key(&client, &second, "done").await,
        json!("Deduplicated"),
        "a delivered action's mark was confirmed and lasts its full TTL"
    );
    assert_eq!(delivered(&hook, "done"), 1);
}

/// A gateway remembers the dedup marks of its own successful deliveries: a repeat is
/// answered `Deduplicated` with the backend cut off (no backend call), counted in
/// `acteon_dedup_local_total`; a key whose delivery failed is not remembered (its repeat
/// needs the backend), nor is one delivered by another gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delivered_marks_answer_repeats_without_the_backend() {
    let url = std::env::var("ACTEON_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let host_port = url.trim_start_matches("redis://").trim_end_matches('/');
    let proxy = FaultProxy::start(socket_addr(host_port));
    let hook = Recorder::start().await;
    let dir = std::env::temp_dir().join(format!("acteon-local-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("config.yaml");
    std::fs::write(&file, kill_config(&hook)).expect("config");
    let prefix = format!(
        "acteon_l{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let state = format!("redis://{}", proxy.addr());
    let args = [
        "--config",
        file.to_str().expect("utf-8"),
        "--state",
        &state,
        "--state-prefix",
        &prefix,
        "--state-timeout-ms",
        "1000",
    ];
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let (one, other) = (Server::start(&args), Server::start(&args));
    assert!(
        dispatch_key(&client, &one, "ok")
            .await
            .get("Executed")
            .is_some()
    );
    *hook.script.lock() = vec![500, 500, 500];
    let failed = dispatch_key(&client, &one, "failed").await;
    assert!(failed.get("Failed").is_some(), "{failed}");
    assert!(
        dispatch_key(&client, &other, "elsewhere")
            .await
            .get("Executed")
            .is_some()
    );

    proxy.cut();
    assert_eq!(
        dispatch_key(&client, &one, "ok").await,
        json!("Deduplicated")
    );
    for (server, key) in [(&one, "failed"), (&one, "elsewhere"), (&one, "new")] {
        let r = client
            .post(server.url("/v1/dispatch"))
            .json(&json!({"namespace": "f", "tenant": "t", "provider": "hook", "action_type": "x", "payload": {"key": key}, "dedup_key": key}))
            .send()
            .await
            .expect("answered");
        assert_eq!(r.status().as_u16(), 503, "{key} needs the backend");
    }
    proxy.restore();
    let metrics = client
        .get(one.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.lines().any(|l| l == "acteon_dedup_local_total 1"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("dedup_local"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(delivered(&hook, "ok"), 1);
}
