//! Operator benchmark against the real kube-apiserver (figures, not assertions):
//! 1. propagation: one Rule change (server-side apply returning) → the first dry-run dispatch
//!    on each of two gateways that sees it; p50 / p90 / p99 / max over `--changes` changes;
//! 2. 1,000 Rules applied at once (32 requests in flight) → all served by both gateways and
//!    all `Ready=True`;
//! 3. operator memory (VmRSS, VmHWM) with 10,000 Rules.
//!
//!   bash tests/e2e/kube-env.sh start /tmp/kb && . /tmp/kb/env
//!   cargo build --release --workspace --bins
//!   cargo run --release -p acteon-e2e --bin operator-bench [-- --rules 10000 --changes 100]

use std::time::{Duration, Instant};

use acteon_e2e::*;
use futures::StreamExt;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::discovery::ApiResource;
use serde_json::{Value, json};

const IN_FLIGHT: usize = 32;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rules_api(client: kube::Client, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource {
        group: "acteon.dev".into(),
        version: "v1alpha1".into(),
        api_version: "acteon.dev/v1alpha1".into(),
        kind: "Rule".into(),
        plural: "rules".into(),
    };
    Api::namespaced_with(client, ns, &ar)
}

fn rule(ns: &str, name: &str, action_type: &str, action: &str) -> Value {
    json!({"apiVersion": "acteon.dev/v1alpha1", "kind": "Rule",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"condition": {"field": "action.action_type", "eq": action_type},
                 "action": {"type": action}}})
}

async fn apply(api: &Api<DynamicObject>, name: &str, body: &Value) {
    api.patch(
        name,
        &PatchParams::apply("bench").force(),
        &Patch::Apply(body),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {name}: {e}"));
}

fn verdict(port: u16, ns: &str, action_type: &str) -> String {
    let action = json!({"namespace": ns, "tenant": "t", "provider": "out",
        "action_type": action_type, "payload": {}});
    http_post(port, "/v1/dispatch?dry_run=true", &action)
        .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
        .and_then(|v| v["DryRun"]["verdict"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn served_rules(port: u16) -> u64 {
    http_get_json(port, "/v1/config")
        .and_then(|v| v["rules"].as_u64())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

async fn ready_count(api: &Api<DynamicObject>) -> usize {
    let list = api.list(&ListParams::default()).await.expect("list rules");
    list.items
        .iter()
        .filter(|o| {
            o.data["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        })
        .count()
}

fn memory(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .filter(|l| l.starts_with("VmRSS") || l.starts_with("VmHWM"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(", ")
}

#[tokio::main]
async fn main() {
    let total = arg("--rules", 10_000);
    let changes = arg("--changes", 100);
    let kube = Kube::get();
    kube.ensure_installed();
    let ns = unique_name("bench");
    kube.create_namespace(&ns);
    kube.apply(&format!(
        "apiVersion: acteon.dev/v1alpha1\nkind: Provider\nmetadata: {{name: out, namespace: {ns}}}\nspec: {{type: log}}\n"
    ));
    let prefix = unique_name("bench");
    let state = redis_url();
    let metrics = format!("127.0.0.1:{}", free_port());
    // Gateways only serve snapshots that authenticate under the operator's seal key.
    let key_file = test_dir().join("seal.key");
    let mut random = [0u8; 32];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").expect("urandom"),
        &mut random,
    )
    .expect("random key");
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&key_file, hex).expect("seal key");
    let key_file = key_file.display().to_string();
    let operator = start_operator(&[
        "--state",
        &state,
        "--state-prefix",
        &prefix,
        "--namespaces",
        &ns,
        "--lease-name",
        &prefix,
        "--metrics-listen",
        &metrics,
        "--seal-key-file",
        &key_file,
    ]);
    let gateway_args = [
        "--state",
        state.as_str(),
        "--state-prefix",
        prefix.as_str(),
        "--seal-key-file",
        key_file.as_str(),
    ];
    let (_g1, p1) = start_gateway(&gateway_args);
    let (_g2, p2) = start_gateway(&gateway_args);
    let api = rules_api(kube.admin_client().await, &ns);

    // 1. Propagation of single changes.
    apply(&api, "probe", &rule(&ns, "probe", "probe", "suppress")).await;
    wait_until(Duration::from_secs(30), Duration::from_millis(10), || {
        [p1, p2]
            .iter()
            .all(|&p| verdict(p, &ns, "probe") == "suppress")
            .then_some(())
    })
    .expect("first rule served");
    let mut latencies = Vec::with_capacity(changes);
    for i in 0..changes {
        let want = if i % 2 == 0 { "deny" } else { "suppress" };
        apply(&api, "probe", &rule(&ns, "probe", "probe", want)).await;
        let t0 = Instant::now();
        let mut pending = vec![p1, p2];
        while !pending.is_empty() && t0.elapsed() < Duration::from_secs(10) {
            pending.retain(|&p| verdict(p, &ns, "probe") != want);
        }
        latencies.push(t0.elapsed());
    }
    latencies.sort();
    println!(
        "propagation (apply returned → both gateways serve it), n={changes}: p50 {:?}, p90 {:?}, p99 {:?}, max {:?}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1]
    );

    // 2. 1,000 Rules at once.
    let batch = 1000.min(total);
    let started = Instant::now();
    create_rules(&api, &ns, 0..batch).await;
    let created = started.elapsed();
    let want_rules = (batch + 1) as u64;
    wait_until(Duration::from_secs(120), Duration::from_millis(20), || {
        [p1, p2]
            .iter()
            .all(|&p| served_rules(p) >= want_rules)
            .then_some(())
    })
    .expect("1,000 rules served");
    let served = started.elapsed();
    wait_until_async(
        Duration::from_secs(120),
        Duration::from_millis(200),
        || async { (ready_count(&api).await > batch).then_some(()) },
    )
    .await
    .expect("1,000 rules Ready");
    println!(
        "{batch} Rules applied at once ({IN_FLIGHT} in flight): created in {created:?}, served by both gateways after {served:?}, all Ready after {:?}",
        started.elapsed()
    );
    println!(
        "operator memory with {} Rules: {}",
        batch + 1,
        memory(operator.pid())
    );

    // 3. Memory with `total` Rules.
    if total > batch {
        let started = Instant::now();
        create_rules(&api, &ns, batch..total).await;
        let want_rules = (total + 1) as u64;
        wait_until(Duration::from_secs(600), Duration::from_millis(100), || {
            [p1, p2]
                .iter()
                .all(|&p| served_rules(p) >= want_rules)
                .then_some(())
        })
        .expect("all rules served");
        println!(
            "{total} Rules served by both gateways {:?} after the first create of the second batch",
            started.elapsed()
        );
        wait_until_async(
            Duration::from_secs(600),
            Duration::from_millis(1000),
            || async { (ready_count(&api).await > total).then_some(()) },
        )
        .await
        .expect("all rules Ready");
        println!(
            "{total} Rules all Ready {:?} after the second batch began",
            started.elapsed()
        );
        println!(
            "operator memory with {} Rules: {}",
            total + 1,
            memory(operator.pid())
        );
    }
    let metrics = http_get(
        metrics
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0),
        "/metrics",
    )
    .map(|(_, b)| b)
    .unwrap_or_default();
    for line in metrics.lines().filter(|l| {
        l.starts_with("acteon_operator_status_writes_total")
            || l.starts_with("acteon_operator_reconciles_total")
    }) {
        println!("{line}");
    }
}

async fn create_rules(api: &Api<DynamicObject>, ns: &str, range: std::ops::Range<usize>) {
    futures::stream::iter(range)
        .map(|i| {
            let name = format!("r-{i:05}");
            let body = rule(ns, &name, &format!("t{i}"), "suppress");
            async move { apply(api, &name, &body).await }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<()>>()
        .await;
}
