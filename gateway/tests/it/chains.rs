//! Chains through the real binary: three gateway processes on one backend run chain steps
//! on their workers, branch on a step's JSON answer, render earlier steps' answers into
//! later payloads, and finish every run when one gateway is SIGKILLed mid-way; a repeat is
//! only a step the killed gateway had claimed. Providers are a local HTTP server (`/echo`
//! answers with the request's body). Redis and Postgres.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{Recorded, Recorder, Server};
use serde_json::{Value, json};

/// The worker's claim batch: the most steps a killed gateway can have claimed.
const CLAIM_BATCH: usize = 64;

fn config(hook: &Recorder) -> String {
    let provider = |name: &str, path: &str| {
        format!(
            "---\napiVersion: acteon.dev/v1alpha1\nkind: Provider\nmetadata: {{name: {name}, namespace: ch}}\nspec:\n  type: webhook\n  webhook: {{url: \"{}\"}}\n  timeoutSeconds: 5\n  retry: {{maxAttempts: 1}}\n",
            hook.url(path)
        )
    };
    [
        provider("triage", "/echo/triage"),
        provider("pager", "/page"),
        provider("logbook", "/log"),
        provider("chat", "/notify"),
        // triage answers with what it was sent: the branch reads `body.severity`.
        r#"---
apiVersion: acteon.dev/v1alpha1
kind: Chain
metadata: {name: incident, namespace: ch}
spec:
  steps:
    - name: triage
      provider: triage
      payloadTemplate: {severity: "{{origin.payload.severity}}", ticket: "T-{{origin.payload.n}}", n: "{{origin.payload.n}}"}
      branches:
        - {field: body.severity, operator: eq, value: high, target: page}
      defaultNext: log
    - name: page
      provider: pager
      payloadTemplate: {ticket: "{{steps.triage.body.ticket}}", chain: "{{chain_id}}"}
      defaultNext: notify
    - name: log
      provider: logbook
      delaySeconds: 1
      payloadTemplate: {ticket: "{{steps.triage.body.ticket}}", n: "{{steps.triage.body.n}}"}
    - name: notify
      provider: chat
      payloadTemplate: {text: "{{prev.body.ok}} for {{steps.triage.body.ticket}}", step: "{{step_index}}"}
---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {name: start, namespace: ch}
spec:
  condition: {field: action.action_type, eq: incident}
  action: {type: chain, chain: incident}
"#
        .to_owned(),
    ]
    .concat()
}

struct Cluster {
    servers: Vec<Option<Server>>,
    hook: Recorder,
}

impl Cluster {
    async fn start(state_url: &str, replicas: usize) -> Cluster {
        let hook = Recorder::start().await;
        let dir =
            std::env::temp_dir().join(format!("acteon-chains-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("config.yaml");
        std::fs::write(&file, config(&hook)).expect("config");
        let file = file.to_str().expect("utf-8").to_owned();
        let prefix = format!(
            "acteon_c{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let args = [
            "--config",
            &file,
            "--state",
            state_url,
            "--state-prefix",
            &prefix,
        ];
        let env = [
            ("ACTEON_WORKER_LEASE_SECONDS", "3"),
            ("ACTEON_WORKER_POLL_MS", "100"),
        ];
        let servers = (0..replicas)
            .map(|_| Some(Server::start_with(&args, &env, None)))
            .collect();
        Cluster { servers, hook }
    }

    fn bases(&self) -> Vec<String> {
        self.servers
            .iter()
            .flatten()
            .map(|s| s.base.clone())
            .collect()
    }

    fn at(&self, path: &str) -> Vec<Recorded> {
        self.hook
            .requests
            .lock()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }
}

/// The chain id of a step's delivery: its idempotency key is `<chain id>:<step>:<attempt>`.
fn chain_of(r: &Recorded) -> String {
    let key = r.headers["x-acteon-action-id"].to_str().expect("ascii");
    key.split(':').next().expect("chain id").to_owned()
}

/// `n` incidents, every other one `high`: high ones are triaged, paged and notified, the
/// others triaged, logged and notified; each step's payload carries the earlier answers.
/// With `kill`, one of three gateways is SIGKILLed while the chains run: every chain still
/// finishes, and a step repeats only if the killed gateway had claimed it.
async fn run_chains(state_url: &str, replicas: usize, n: usize, kill: bool) {
    let mut cluster = Cluster::start(state_url, replicas).await;
    let client = reqwest::Client::new();
    let actions = (0..n)
        .map(|i| {
            let severity = if i % 2 == 0 { "high" } else { "low" };
            json!({"namespace": "ch", "tenant": "t", "provider": "chat", "action_type": "incident", "payload": {"severity": severity, "n": i}})
        })
        .collect();
    // Slow answers, so the chains are still running when a gateway is killed.
    *cluster.hook.delay.lock() = Duration::from_millis(if kill { 50 } else { 0 });
    let outcomes = common::send_round_robin(&client, &cluster.bases(), actions).await;
    let mut started = BTreeMap::new();
    for (i, o) in outcomes.iter().enumerate() {
        let s = &o["ChainStarted"];
        assert_eq!(
            (
                s["chain_name"].as_str(),
                s["total_steps"].as_u64(),
                s["first_step"].as_str()
            ),
            (Some("incident"), Some(4), Some("triage")),
            "{o}"
        );
        started.insert(s["chain_id"].as_str().expect("id").to_owned(), i);
    }
    if kill {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if let Some(mut s) = cluster.servers[replicas - 1].take() {
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
        let done = cluster.at("/notify").len();
        assert!(
            done < n,
            "the gateway was killed while chains ran ({done} of {n} done)"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while cluster
        .at("/notify")
        .iter()
        .map(chain_of)
        .collect::<BTreeSet<_>>()
        .len()
        < n
    {
        assert!(
            Instant::now() < deadline,
            "{} of {n} chains notified",
            cluster.at("/notify").len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    *cluster.hook.delay.lock() = Duration::ZERO;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let mut repeats = 0;
    for (path, expected) in [
        ("/echo/triage", n),
        ("/page", n / 2 + n % 2),
        ("/log", n / 2),
        ("/notify", n),
    ] {
        let got = cluster.at(path);
        let chains: BTreeSet<String> = got.iter().map(chain_of).collect();
        assert_eq!(chains.len(), expected, "{path}: one delivery per chain");
        repeats += got.len() - chains.len();
        for r in &got {
            let i = started[&chain_of(r)];
            let ticket = format!("T-{i}");
            match path {
                "/page" => {
                    assert_eq!(i % 2, 0, "only high incidents are paged");
                    assert_eq!(r.body, json!({"ticket": ticket, "chain": chain_of(r)}));
                }
                "/log" => {
                    assert_eq!(i % 2, 1, "low incidents are logged");
                    assert_eq!(r.body, json!({"ticket": ticket, "n": i}));
                }
                "/notify" => {
                    let step = if i % 2 == 0 { 3 } else { 3 };
                    assert_eq!(
                        r.body,
                        json!({"text": format!("true for {ticket}"), "step": step})
                    );
                }
                _ => {}
            }
        }
    }
    // `log` waits its `delaySeconds: 1` after triage.
    let triaged: BTreeMap<String, Instant> = cluster
        .at("/echo/triage")
        .iter()
        .map(|r| (chain_of(r), r.at))
        .collect();
    for r in cluster.at("/log") {
        let waited = r.at.duration_since(triaged[&chain_of(&r)]);
        assert!(
            waited >= Duration::from_millis(950),
            "log step after {waited:?}"
        );
    }
    if kill {
        eprintln!("{repeats} steps repeated after the kill");
        assert!(repeats <= CLAIM_BATCH, "{repeats} repeated steps");
    } else {
        assert_eq!(repeats, 0, "no step delivered twice");
    }
}

fn redis_url() -> String {
    std::env::var("ACTEON_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn postgres_url() -> String {
    std::env::var("ACTEON_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_chains_branch_and_render() {
    run_chains("memory", 1, 50, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_chains_finish_when_a_gateway_is_killed() {
    run_chains(&redis_url(), 3, 100, false).await;
    run_chains(&redis_url(), 3, 500, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_chains_finish_when_a_gateway_is_killed() {
    run_chains(&postgres_url(), 3, 100, false).await;
    run_chains(&postgres_url(), 3, 500, true).await;
}
