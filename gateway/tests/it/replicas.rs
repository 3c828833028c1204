//! Three real gateway processes on one backend behave exactly like one: dedup, throttle,
//! quota, dedup release on failure, and gates left unapplied for actions that a later rule
//! stops, are exact across replicas. Run on Redis and
//! Postgres (`ACTEON_TEST_REDIS_URL`, `ACTEON_TEST_POSTGRES_URL`).

use crate::common;

use std::time::{Duration, Instant};

use common::{Recorder, Server};
use serde_json::{Value, json};

fn config(hook: &Recorder) -> String {
    let provider = |name: &str, path: &str| {
        format!(
            "---\napiVersion: acteon.dev/v1alpha1\nkind: Provider\nmetadata: {{name: {name}, namespace: rep}}\nspec:\n  type: webhook\n  webhook: {{url: \"{}\"}}\n  timeoutSeconds: 5\n  retry: {{maxAttempts: 1}}\n",
            hook.url(path)
        )
    };
    let rule = |name: &str, action_type: &str, action: &str| {
        format!(
            "---\napiVersion: acteon.dev/v1alpha1\nkind: Rule\nmetadata: {{name: {name}, namespace: rep}}\nspec:\n  condition: {{field: action.action_type, eq: {action_type}}}\n  action: {action}\n"
        )
    };
    let ordered = |priority: u32, name: &str, condition: &str, action: &str| {
        format!(
            "---\napiVersion: acteon.dev/v1alpha1\nkind: Rule\nmetadata: {{name: {name}, namespace: rep}}\nspec:\n  priority: {priority}\n  condition: {condition}\n  action: {action}\n"
        )
    };
    [
        provider("dedup", "/dedup"),
        provider("throttle", "/throttle"),
        provider("short", "/short"),
        provider("quota", "/quota"),
        provider("flaky", "/flaky"),
        rule("dedup", "dedup", "{type: deduplicate, ttlSeconds: 60}"),
        rule("throttle", "throttled", "{type: throttle, maxCount: 100, windowSeconds: 10}"),
        rule("short-throttle", "short", "{type: throttle, maxCount: 5, windowSeconds: 1}"),
        provider("gated", "/gated"),
        ordered(1, "gated-dedup", "{field: action.action_type, eq: gated}", "{type: deduplicate, ttlSeconds: 60}"),
        ordered(2, "gated-throttle", "{field: action.action_type, eq: gated}", "{type: throttle, maxCount: 1, windowSeconds: 60}"),
        ordered(3, "gated-block", "{field: action.payload.block, eq: true}", "{type: suppress}"),
        "---\napiVersion: acteon.dev/v1alpha1\nkind: Quota\nmetadata: {name: q, namespace: rep}\nspec: {tenant: quota-tenant, limit: 500, window: 1h}\n".to_owned(),
    ]
    .concat()
}

struct Cluster {
    servers: Vec<Server>,
    client: reqwest::Client,
    hook: Recorder,
}

impl Cluster {
    async fn start(state_url: &str) -> Cluster {
        let hook = Recorder::start().await;
        let dir =
            std::env::temp_dir().join(format!("acteon-replicas-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("config.yaml");
        std::fs::write(&file, config(&hook)).expect("config");
        let prefix = format!(
            "acteon_t{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let file = file.to_str().expect("utf-8").to_owned();
        let servers = (0..3)
            .map(|_| {
                Server::start(&[
                    "--config",
                    &file,
                    "--state",
                    state_url,
                    "--state-prefix",
                    &prefix,
                ])
            })
            .collect();
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()
            .expect("client");
        Cluster {
            servers,
            client,
            hook,
        }
    }

    /// The sum over the gateways of the Prometheus sample `series` (0 where absent).
    async fn metric_sum(&self, series: &str) -> u64 {
        let mut sum = 0;
        for server in &self.servers {
            let text = self
                .client
                .get(server.url("/metrics"))
                .send()
                .await
                .expect("sent")
                .text()
                .await
                .expect("text");
            sum += text
                .lines()
                .filter_map(|l| l.strip_prefix(series)?.trim().parse::<u64>().ok())
                .sum::<u64>();
        }
        sum
    }

    /// Sends every action (spread over the three gateways, at most 128 in flight) and
    /// returns the outcomes in order.
    async fn send_all(&self, actions: Vec<Value>) -> Vec<Value> {
        let bases = self
            .servers
            .iter()
            .map(|s| s.base.clone())
            .collect::<Vec<_>>();
        common::send_round_robin(&self.client, &bases, actions).await
    }
}

fn action(action_type: &str, provider: &str, tenant: &str, dedup_key: Option<String>) -> Value {
    let mut a = json!({"namespace": "rep", "tenant": tenant, "provider": provider, "action_type": action_type, "payload": {"n": 1}});
    if let Some(k) = dedup_key {
        a["dedup_key"] = json!(k);
    }
    a
}

fn count(outcomes: &[Value], tag: &str) -> usize {
    outcomes
        .iter()
        .filter(|o| o.get(tag).is_some() || o.as_str() == Some(tag))
        .count()
}

fn retry_after(o: &Value) -> Option<Duration> {
    let r = &o.get("Throttled")?["retry_after"];
    Some(Duration::new(
        r["secs"].as_u64()?,
        r["nanos"].as_u64()? as u32,
    ))
}

fn deliveries(hook: &Recorder, path: &str) -> usize {
    hook.requests
        .lock()
        .iter()
        .filter(|r| r.path == path)
        .count()
}

/// One scenario at a time: each drives six gateway processes' worth of load on two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn exact_across_replicas(state_url: &str) {
    let _serial = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start(state_url).await;
    stopped_actions_consume_no_gates(&cluster).await;

    // 10,000 dispatches over 1,000 dedup keys → exactly 1,000 deliveries.
    let actions = (0..10_000)
        .map(|i| action("dedup", "dedup", "t", Some(format!("key-{}", i % 1000))))
        .collect();
    let outcomes = cluster.send_all(actions).await;
    assert_eq!(count(&outcomes, "Executed"), 1000);
    assert_eq!(count(&outcomes, "Deduplicated"), 9000);
    assert_eq!(deliveries(&cluster.hook, "/dedup"), 1000);
    if !state_url.starts_with("memory") {
        // Exact with group commit: concurrent gate calls went out together (Postgres
        // statements, Redis pipelines of lone dedup gates).
        let together = cluster
            .metric_sum(r#"acteon_state_gate_batches_total{what="calls_together"}"#)
            .await;
        assert!(
            together > 0,
            "gate calls were sent in batches on {state_url}"
        );
    }

    // A throttle of 100 per 10 s hammered through all three → exactly 100 pass; every
    // rejection says how long until the oldest pass leaves the window.
    let started = Instant::now();
    let outcomes = cluster
        .send_all(
            (0..400)
                .map(|_| action("throttled", "throttle", "t", None))
                .collect(),
        )
        .await;
    let elapsed = started.elapsed();
    assert_eq!(count(&outcomes, "Executed"), 100);
    assert_eq!(count(&outcomes, "Throttled"), 300);
    assert_eq!(deliveries(&cluster.hook, "/throttle"), 100);
    for o in outcomes.iter().filter_map(retry_after) {
        assert!(
            o <= Duration::from_secs(10)
                && o + elapsed + Duration::from_millis(200) >= Duration::from_secs(10),
            "retry_after {o:?} after {elapsed:?}"
        );
    }

    // A short window: after the reported retry_after, exactly one more slot has freed.
    let outcomes = cluster
        .send_all(
            (0..20)
                .map(|_| action("short", "short", "t", None))
                .collect(),
        )
        .await;
    assert_eq!(count(&outcomes, "Executed"), 5);
    let wait = outcomes
        .iter()
        .filter_map(retry_after)
        .min()
        .expect("some throttled");
    tokio::time::sleep(wait).await;
    let again = cluster
        .send_all(vec![action("short", "short", "t", None)])
        .await;
    assert!(
        again[0].get("Executed").is_some(),
        "a slot freed after retry_after: {}",
        again[0]
    );

    // A quota of 500 per window → exactly 500 pass.
    let outcomes = cluster
        .send_all(
            (0..800)
                .map(|_| action("x", "quota", "quota-tenant", None))
                .collect(),
        )
        .await;
    assert_eq!(count(&outcomes, "Executed"), 500);
    assert_eq!(count(&outcomes, "QuotaExceeded"), 300);
    assert_eq!(deliveries(&cluster.hook, "/quota"), 500);
    // Its usage, read on another replica (`GET /v1/quotas`, SPEC section 5).
    let (status, usage) = common::get_json(
        &cluster.client,
        &cluster.servers[2].url("/v1/quotas?namespace=rep&tenant=quota-tenant"),
    )
    .await;
    assert_eq!(status, 200, "{usage}");
    assert_eq!(usage["count"], 1, "{usage}");
    let q = &usage["quotas"][0];
    assert_eq!(
        (
            &q["id"],
            &q["used"],
            &q["remaining"],
            &q["limit"],
            &q["window_seconds"]
        ),
        (
            &json!("rep/q"),
            &json!(500),
            &json!(0),
            &json!(500),
            &json!(3600)
        ),
        "{usage}"
    );
    assert_eq!(q["overage"], "block");
    let (_, other) = common::get_json(
        &cluster.client,
        &cluster.servers[0].url("/v1/quotas?namespace=rep&tenant=someone-else"),
    )
    .await;
    assert_eq!(other["count"], 0, "{other}");
    let (status, bad) = common::get_json(
        &cluster.client,
        &cluster.servers[0].url("/v1/quotas?namespace=Not_A_Namespace"),
    )
    .await;
    assert_eq!(status, 400, "{bad}");

    // The provider fails the first attempt: the dedup mark is released, so the retry
    // (through another replica) is delivered, once.
    cluster.hook.script.lock().push(500);
    let key = Some("retry-key".to_owned());
    let first = cluster
        .send_all(vec![action("dedup", "flaky", "t", key.clone())])
        .await;
    assert_eq!(first[0]["Failed"]["code"], "HTTP_5XX", "{}", first[0]);
    let mut retries: Vec<Value> = Vec::new();
    for server in [1, 2] {
        let r = cluster
            .client
            .post(cluster.servers[server].url("/v1/dispatch"))
            .json(&action("dedup", "flaky", "t", key.clone()))
            .send()
            .await
            .expect("sent");
        retries.push(r.json().await.expect("json"));
    }
    assert!(
        retries[0].get("Executed").is_some(),
        "retry delivered: {}",
        retries[0]
    );
    assert_eq!(retries[1], json!("Deduplicated"));
    assert_eq!(
        deliveries(&cluster.hook, "/flaky"),
        2,
        "one failed attempt, one delivery"
    );
}

/// Dedup (1), throttle 1/min (2), suppress when `payload.block` (3), one action at a time
/// through each replica in turn: a suppressed action is checked against the gates but
/// consumes neither the dedup mark nor the throttle budget.
async fn stopped_actions_consume_no_gates(cluster: &Cluster) {
    let mut turn = 0;
    let mut send = async |key: &str, block: bool| -> Value {
        turn += 1;
        let mut a = action("gated", "gated", "g", Some(key.to_owned()));
        a["payload"] = json!({"block": block});
        let r = cluster
            .client
            .post(cluster.servers[turn % 3].url("/v1/dispatch"))
            .json(&a)
            .send()
            .await
            .expect("sent");
        r.json().await.expect("json")
    };
    let suppressed = json!({"Suppressed": {"rule": "gated-block"}});
    assert_eq!(send("k1", true).await, suppressed);
    assert_eq!(send("k1", true).await, suppressed, "no mark was set");
    let delivered = send("k1", false).await;
    assert!(
        delivered.get("Executed").is_some(),
        "the suppressed actions neither marked k1 nor used the throttle budget: {delivered}"
    );
    assert_eq!(send("k1", false).await, json!("Deduplicated"));
    assert_eq!(
        send("k1", true).await,
        json!("Deduplicated"),
        "gates are still checked before a later rule stops the action"
    );
    for (key, block) in [("k2", true), ("k3", false)] {
        let o = send(key, block).await;
        assert!(o.get("Throttled").is_some(), "{key}: {o}");
    }
    assert_eq!(deliveries(&cluster.hook, "/gated"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_replicas_are_exact() {
    let url = std::env::var("ACTEON_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    exact_across_replicas(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_replicas_are_exact() {
    let url = std::env::var("ACTEON_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".to_owned());
    exact_across_replicas(&url).await;
}
