//! The delivery layer through the real binary: circuit breakers shared by three gateway
//! processes (on Redis and on Postgres) with their fallback and their single probe, the
//! breaker endpoints, provider health, and rate limits kept across replicas. Counted at
//! the peers.

use crate::common;
use common::{Recorder, Server, get_json, postgres_url, redis_url};

use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Recovery time of the test breaker.
const RECOVERY: Duration = Duration::from_secs(2);

fn providers(flaky: &Recorder, backup: &Recorder) -> String {
    format!(
        r#"
apiVersion: acteon.dev/v1alpha1
kind: Provider
metadata: {{name: flaky, namespace: cb}}
spec:
  type: webhook
  webhook: {{url: "{flaky}"}}
  timeoutSeconds: 2
  retry: {{maxAttempts: 1}}
  circuitBreaker: {{failureThreshold: 3, recoveryTimeoutSeconds: {recovery}, fallbackProvider: backup}}
---
apiVersion: acteon.dev/v1alpha1
kind: Provider
metadata: {{name: backup, namespace: cb}}
spec:
  type: webhook
  webhook: {{url: "{backup}"}}
  retry: {{maxAttempts: 1}}
---
apiVersion: acteon.dev/v1alpha1
kind: Provider
metadata: {{name: lonely, namespace: cb}}
spec:
  type: webhook
  webhook: {{url: "{flaky}"}}
  retry: {{maxAttempts: 1}}
  circuitBreaker: {{failureThreshold: 1, recoveryTimeoutSeconds: 3600}}
---
apiVersion: acteon.dev/v1alpha1
kind: Provider
metadata: {{name: paced, namespace: cb}}
spec:
  type: webhook
  webhook: {{url: "{paced}"}}
  rateLimit: {{maxPerSecond: 5}}
"#,
        flaky = flaky.url("/flaky"),
        backup = backup.url("/backup"),
        paced = backup.url("/paced"),
        recovery = RECOVERY.as_secs(),
    )
}

/// `n` gateways on one state backend (same prefix) and one configuration.
fn cluster(state_url: &str, config: &str, n: usize) -> Vec<Server> {
    let dir = std::env::temp_dir().join(format!("acteon-cb-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("config.yaml");
    std::fs::write(&file, config).expect("config");
    let prefix = format!(
        "acteon_c{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let file = file.to_str().expect("utf-8").to_owned();
    let args = [
        "--config",
        file.as_str(),
        "--state",
        state_url,
        "--state-prefix",
        prefix.as_str(),
    ];
    (0..n)
        .map(|_| Server::start_with(&args, &[("ACTEON_CIRCUIT_POLL_MS", "100")], None))
        .collect()
}

fn action(provider: &str, n: usize) -> Value {
    json!({"namespace": "cb", "tenant": "t", "provider": provider, "action_type": "page",
        "payload": {"n": n}})
}

async fn dispatch(c: &reqwest::Client, gw: &Server, body: &Value) -> Value {
    let r = c
        .post(gw.url("/v1/dispatch"))
        .json(body)
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status().as_u16(), 200);
    r.json().await.expect("json")
}

/// Dispatches `n` actions to `provider` at once, spread over the gateways.
async fn burst(c: &reqwest::Client, gws: &[Server], provider: &str, n: usize) -> Vec<Value> {
    let bases: Vec<String> = gws.iter().map(|g| g.base.clone()).collect();
    let actions = (0..n).map(|i| action(provider, i)).collect();
    common::send_round_robin(c, &bases, actions).await
}

fn kind(outcome: &Value) -> &str {
    ["Executed", "Rerouted", "Failed", "CircuitOpen"]
        .into_iter()
        .find(|k| outcome.get(*k).is_some())
        .unwrap_or("other")
}

fn count_kinds(outcomes: &[Value]) -> std::collections::BTreeMap<&str, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for o in outcomes {
        *counts.entry(kind(o)).or_default() += 1;
    }
    counts
}

async fn breaker_state(c: &reqwest::Client, gw: &Server, provider: &str) -> Value {
    let (status, body) = get_json(c, &gw.url("/v1/circuit-breakers?namespace=cb")).await;
    assert_eq!(status, 200, "{body}");
    body["circuit_breakers"]
        .as_array()
        .and_then(|all| all.iter().find(|b| b["provider"] == provider).cloned())
        .unwrap_or_else(|| panic!("no breaker for {provider}: {body}"))
}

async fn breaker_across_replicas(state_url: &str) {
    let (flaky, backup) = (Recorder::start().await, Recorder::start().await);
    *flaky.script.lock() = vec![500; 10_000];
    let gws = cluster(state_url, &providers(&flaky, &backup), 3);
    let c = reqwest::Client::new();

    // Three retryable failures in a row, on three different gateways, open the circuit.
    for (i, gw) in gws.iter().enumerate() {
        let out = dispatch(&c, gw, &action("flaky", i)).await;
        assert_eq!(kind(&out), "Failed", "{out}");
    }
    assert_eq!(flaky.count(), 3);
    // Every replica sees it open within its poll interval (100 ms here; 1 s promised).
    tokio::time::sleep(Duration::from_millis(400)).await;
    for gw in &gws {
        let b = breaker_state(&c, gw, "flaky").await;
        assert_eq!(b["state"], "open", "{b}");
        assert_eq!(b["fallback_provider"], "backup");
    }
    let outcomes = burst(&c, &gws, "flaky", 30).await;
    assert_eq!(
        count_kinds(&outcomes).get("Rerouted"),
        Some(&30),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[0]["Rerouted"]["new_provider"], "backup");
    assert_eq!(
        flaky.count(),
        3,
        "no replica calls an open circuit's provider"
    );
    assert_eq!(backup.count(), 30, "the fallback delivered them");

    // After the recovery time: exactly one probe, whichever replica takes it; it fails,
    // so the circuit opens again and the rest go to the fallback.
    tokio::time::sleep(RECOVERY + Duration::from_millis(200)).await;
    let outcomes = burst(&c, &gws, "flaky", 30).await;
    assert_eq!(flaky.count(), 4, "one probe: {:?}", count_kinds(&outcomes));
    let kinds = count_kinds(&outcomes);
    assert_eq!(
        (kinds.get("Failed"), kinds.get("Rerouted")),
        (Some(&1), Some(&29))
    );

    // The peer recovers: the next probe closes the circuit and traffic returns.
    flaky.script.lock().clear();
    tokio::time::sleep(RECOVERY + Duration::from_millis(200)).await;
    let probe = dispatch(&c, &gws[1], &action("flaky", 0)).await;
    assert_eq!(kind(&probe), "Executed", "{probe}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before = flaky.count();
    let outcomes = burst(&c, &gws, "flaky", 30).await;
    assert_eq!(
        count_kinds(&outcomes).get("Executed"),
        Some(&30),
        "{outcomes:?}"
    );
    assert_eq!(flaky.count(), before + 30);
    let b = breaker_state(&c, &gws[2], "flaky").await;
    assert_eq!(
        (b["state"].as_str(), b["trips"].as_u64()),
        (Some("closed"), Some(1)),
        "{b}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn breaker_is_shared_by_three_gateways_on_redis() {
    breaker_across_replicas(&redis_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn breaker_is_shared_by_three_gateways_on_postgres() {
    breaker_across_replicas(&postgres_url()).await;
}

/// Starts of the deliveries the peer received on `path`, sorted.
fn arrivals(peer: &Recorder, path: &str) -> Vec<Instant> {
    let mut at: Vec<Instant> = peer
        .requests
        .lock()
        .iter()
        .filter(|r| r.path == path)
        .map(|r| r.at)
        .collect();
    at.sort();
    at
}

async fn rate_limit_across_replicas(state_url: &str) {
    let (flaky, peer) = (Recorder::start().await, Recorder::start().await);
    let gws = cluster(state_url, &providers(&flaky, &peer), 3);
    let c = reqwest::Client::new();
    let outcomes = burst(&c, &gws, "paced", 50).await;
    assert_eq!(
        count_kinds(&outcomes).get("Executed"),
        Some(&50),
        "all delivered"
    );
    let at = arrivals(&peer, "/paced");
    assert_eq!(at.len(), 50);
    // Slots are 210 ms apart, so six deliveries span 1.05 s; a start delayed past its
    // slot shortens that. The margin covers 50 ms; the test machine (2 cores, six gateway
    // processes, tests in parallel) is granted 50 ms more of scheduling delay.
    let shortest = at.windows(6).map(|w| w[5] - w[0]).min().unwrap_or_default();
    eprintln!("rate limit: the shortest span of 6 deliveries at the peer: {shortest:?}");
    assert!(
        shortest >= Duration::from_millis(950),
        "6 deliveries within {shortest:?}"
    );
    let total = at[49] - at[0];
    assert!(
        total >= Duration::from_millis(49 * 200),
        "50 at 5/s take 10 s: {total:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limit_holds_across_three_gateways_on_redis() {
    rate_limit_across_replicas(&redis_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limit_holds_across_three_gateways_on_postgres() {
    rate_limit_across_replicas(&postgres_url()).await;
}

/// Without a fallback an open circuit answers `CircuitOpen`; the breaker is tripped and
/// reset by hand (on Acteon's paths too), listed, and shown in provider health; a closed
/// healthy circuit costs no backend call.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn open_circuit_without_fallback_and_the_breaker_endpoints() {
    let (flaky, backup) = (Recorder::start().await, Recorder::start().await);
    let gws = cluster("memory", &providers(&flaky, &backup), 1);
    let gw = &gws[0];
    let c = reqwest::Client::new();
    for i in 0..20 {
        let out = dispatch(&c, gw, &action("lonely", i)).await;
        assert_eq!(kind(&out), "Executed", "{out}");
    }
    let metrics = c.get(gw.url("/metrics")).send().await.expect("metrics");
    let text = metrics.text().await.expect("text");
    for op in ["read", "write"] {
        assert!(
            !text.contains(&format!(
                "acteon_circuit_backend_calls_total{{op=\"{op}\"}}"
            )),
            "a closed, healthy circuit made {op} calls:\n{text}"
        );
    }

    *flaky.script.lock() = vec![503];
    let out = dispatch(&c, gw, &action("lonely", 20)).await;
    assert_eq!(kind(&out), "Failed", "{out}");
    let out = dispatch(&c, gw, &action("lonely", 21)).await;
    assert_eq!(
        out,
        json!({"CircuitOpen": {"provider": "lonely", "fallback_chain": []}})
    );
    assert_eq!(
        flaky.count(),
        21,
        "the open circuit kept the 22nd from the peer"
    );

    let reset = c
        .post(gw.url("/admin/circuit-breakers/lonely/reset?namespace=cb"))
        .send()
        .await
        .expect("reset");
    assert_eq!(reset.status().as_u16(), 200);
    let body: Value = reset.json().await.expect("json");
    assert_eq!(
        (body["provider"].as_str(), body["state"].as_str()),
        (Some("lonely"), Some("closed"))
    );
    let out = dispatch(&c, gw, &action("lonely", 22)).await;
    assert_eq!(kind(&out), "Executed", "{out}");

    let trip = c
        .post(gw.url("/v1/circuit-breakers/lonely/trip"))
        .send()
        .await
        .expect("trip");
    assert_eq!(trip.status().as_u16(), 200);
    let out = dispatch(&c, gw, &action("lonely", 23)).await;
    assert_eq!(kind(&out), "CircuitOpen", "{out}");

    let (status, health) = get_json(&c, &gw.url("/v1/providers/health?namespace=cb")).await;
    assert_eq!(status, 200, "{health}");
    let lonely = health["providers"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["provider"] == "lonely").cloned())
        .unwrap_or_else(|| panic!("{health}"));
    assert_eq!(lonely["circuit_breaker_state"], "open");
    assert_eq!(lonely["healthy"], false);
    assert_eq!(
        (lonely["successes"].as_u64(), lonely["failures"].as_u64()),
        (Some(21), Some(1))
    );
    assert!(
        lonely["p99_latency_ms"].as_f64().is_some_and(|p| p > 0.0),
        "{lonely}"
    );
    let paced = health["providers"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["provider"] == "paced").cloned())
        .unwrap_or_else(|| panic!("{health}"));
    assert_eq!(paced["circuit_breaker_state"], Value::Null);
    assert_eq!(paced["total_requests"], 0);

    let (status, err) = get_json(&c, &gw.url("/v1/circuit-breakers/nope/trip")).await;
    assert_eq!(status, 405, "{err}");
    let missing = c
        .post(gw.url("/v1/circuit-breakers/paced/trip"))
        .send()
        .await
        .expect("trip");
    assert_eq!(missing.status().as_u16(), 404, "paced has no breaker");
}
