//! Chains through the real binary: three gateway processes on one backend run chain steps
//! on their workers, branch on a step's JSON answer, render earlier steps' answers into
//! later payloads, and finish every run when one gateway is SIGKILLed mid-way; a repeat is
//! only a step the killed gateway had claimed. Providers are a local HTTP server (`/echo`
//! answers with the request's body). Redis and Postgres.

use crate::common;
use common::{postgres_url, redis_url};

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
        // Nothing listens on port 1: every call fails at once.
        "---\napiVersion: acteon.dev/v1alpha1\nkind: Provider\nmetadata: {name: broken, namespace: ch}\nspec:\n  type: webhook\n  webhook: {url: \"http://127.0.0.1:1/x\"}\n  timeoutSeconds: 1\n  retry: {maxAttempts: 1}\n".to_owned(),
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
kind: Chain
metadata: {name: slow, namespace: ch}
spec:
  steps:
    - {name: first, provider: chat}
    - {name: later, provider: pager, delaySeconds: 60}
  onCancel: {name: undo, provider: logbook, payloadTemplate: {undo: "{{chain_id}}"}}
---
apiVersion: acteon.dev/v1alpha1
kind: Chain
metadata: {name: late, namespace: ch}
spec:
  timeoutSeconds: 1
  steps:
    - {name: first, provider: chat}
    - {name: second, provider: pager, delaySeconds: 2}
---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {name: start-late, namespace: ch}
spec:
  condition: {field: action.action_type, eq: late}
  action: {type: chain, chain: late}
---
apiVersion: acteon.dev/v1alpha1
kind: Chain
metadata: {name: fanout, namespace: ch}
spec:
  steps:
    - name: both
      parallel:
        steps:
          - {name: a, provider: triage, payloadTemplate: {x: "A-{{origin.payload.n}}"}}
          - {name: b, provider: chat, payloadTemplate: {y: 1}}
    - name: after
      provider: logbook
      payloadTemplate: {a: "{{prev.body.results.a.body.x}}", b: "{{steps.both.body.results.b.success}}"}
    - name: either
      parallel:
        join: any
        onFailure: bestEffort
        steps: [{name: c, provider: broken}, {name: d, provider: pager}]
    - name: all-of-them
      onFailure: skip
      retry: {maxAttempts: 1}
      parallel:
        steps: [{name: e, provider: broken}, {name: f, provider: chat}]
    - name: end
      provider: logbook
      payloadTemplate: {all: "{{prev.success}}", any: "{{steps.either.success}}"}
---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {name: start-fanout, namespace: ch}
spec:
  condition: {field: action.action_type, eq: fanout}
  action: {type: chain, chain: fanout}
---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {name: start-slow, namespace: ch}
spec:
  condition: {field: action.action_type, eq: slow}
  action: {type: chain, chain: slow}
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
            ("ACTEON_CHAIN_CENSUS_SECONDS", "1"),
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
                    // Both paths reach `notify`, the fourth step (index 3).
                    let step = 3;
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

/// `GET /v1/chains/{id}` shows a run while it runs and after it ended; a cancelled run
/// delivers no further step; cancelling an ended run is a conflict, an unknown one 404.
async fn inspect_and_cancel(state_url: &str) {
    let cluster = Cluster::start(state_url, 1).await;
    let client = reqwest::Client::new();
    let base = cluster.bases()[0].clone();
    let start = |action_type: &str| json!({"namespace": "ch", "tenant": "t", "provider": "chat", "action_type": action_type, "payload": {"severity": "high", "n": 7}});
    let outcomes = common::send_round_robin(
        &client,
        std::slice::from_ref(&base),
        vec![start("incident"), start("slow"), start("late")],
    )
    .await;
    let id = |o: &Value| {
        o["ChainStarted"]["chain_id"]
            .as_str()
            .expect("id")
            .to_owned()
    };
    let (done, slow, late) = (id(&outcomes[0]), id(&outcomes[1]), id(&outcomes[2]));
    let get = |chain_id: String| {
        let client = client.clone();
        let url = format!("{base}/v1/chains/{chain_id}?namespace=ch&tenant=t");
        async move {
            let r = client.get(url).send().await.expect("answered");
            (r.status().as_u16(), r.json::<Value>().await.expect("json"))
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get(done.clone()).await;
        if status == 200 && body["status"] == "completed" {
            let names: Vec<&str> = body["steps"]
                .as_array()
                .expect("steps")
                .iter()
                .map(|s| s["name"].as_str().unwrap_or(""))
                .collect();
            assert_eq!(names, ["triage", "page", "notify"], "{body}");
            assert_eq!(body["chain"], "ch/incident");
            assert_eq!(body["chain_name"], "incident");
            assert_eq!(body["total_steps"], 4);
            assert_eq!(body["execution_path"], json!(["triage", "page", "notify"]));
            let triage = &body["steps"][0];
            assert_eq!(triage["response_body"]["ticket"], "T-7");
            assert_eq!(
                triage["request"],
                json!({"severity": "high", "ticket": "T-7", "n": 7})
            );
            assert_eq!(
                (triage["status"].as_str(), triage["attempts"].as_u64()),
                (Some("completed"), Some(1))
            );
            assert_eq!(triage["provider"], "triage");
            assert!(
                triage["started_at"].is_string() && body["updated_at"].is_string(),
                "{body}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while cluster
        .at("/notify")
        .iter()
        .filter(|r| chain_of(r) == slow)
        .count()
        == 0
    {
        assert!(Instant::now() < deadline, "the slow chain's first step");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = get(slow.clone()).await;
    assert_eq!(
        (
            status,
            body["status"].as_str(),
            body["current_step"].as_u64(),
            body["current_step_name"].as_str()
        ),
        (200, Some("running"), Some(1), Some("later")),
        "{body}"
    );
    running_is_counted(&client, &base, "ch/slow").await;
    let list = |query: String| {
        let client = client.clone();
        let url = format!("{base}/v1/chains?namespace=ch&{query}");
        async move {
            let r = client.get(url).send().await.expect("answered");
            (r.status().as_u16(), r.json::<Value>().await.expect("json"))
        }
    };
    let ids = |body: &Value| -> BTreeSet<String> {
        body["chains"]
            .as_array()
            .expect("chains")
            .iter()
            .map(|c| c["chain_id"].as_str().expect("id").to_owned())
            .collect()
    };
    let (_, running) = list("tenant=t&status=running".into()).await;
    // `late` may still be waiting for its timeout too.
    let running_ids = ids(&running);
    assert!(
        running_ids.contains(&slow) && !running_ids.contains(&done),
        "{running}"
    );
    let (_, completed) = list("tenant=t&status=completed".into()).await;
    assert_eq!(
        ids(&completed),
        BTreeSet::from([done.clone()]),
        "{completed}"
    );
    assert_eq!(completed["chains"][0]["chain_name"], "incident");
    let (_, other_tenant) = list("tenant=u".into()).await;
    assert_eq!(ids(&other_tenant), BTreeSet::new());
    assert_eq!(list("tenant=t&status=bogus".into()).await.0, 400);
    // Pages of one, by cursor: every run once.
    let mut paged = Vec::new();
    let mut cursor = String::new();
    loop {
        let url = reqwest::Url::parse_with_params(
            &format!("{base}/v1/chains"),
            [("namespace", "ch"), ("limit", "1"), ("cursor", &cursor)],
        )
        .expect("url");
        let page: Value = client
            .get(url)
            .send()
            .await
            .expect("answered")
            .json()
            .await
            .expect("json");
        paged.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
        assert!(paged.len() <= 6, "{paged:?}");
    }
    let unique: BTreeSet<String> = paged.iter().cloned().collect();
    assert_eq!(unique.len(), paged.len(), "no run twice: {paged:?}");
    assert!(
        unique.contains(&done) && unique.contains(&slow),
        "{paged:?}"
    );
    // Acteon's cancel: scope, reason and who in a JSON body.
    let cancel = |chain_id: &str| {
        client
            .post(format!("{base}/v1/chains/{chain_id}/cancel"))
            .json(&json!({"namespace": "ch", "tenant": "t", "reason": "maintenance", "cancelled_by": "alice"}))
            .send()
    };
    let r = cancel(&slow).await.expect("answered");
    assert_eq!(r.status().as_u16(), 200);
    loop {
        let (_, body) = get(slow.clone()).await;
        if body["status"] == "cancelled" {
            assert_eq!(
                (
                    body["cancel_reason"].as_str(),
                    body["cancelled_by"].as_str()
                ),
                (Some("maintenance"), Some("alice")),
                "{body}"
            );
            assert!(body["expires_at"].is_string(), "kept until: {body}");
            break;
        }
        assert!(Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        cluster.at("/page").iter().all(|r| chain_of(r) != slow),
        "no step after the cancel"
    );
    let undone: Vec<Value> = cluster
        .at("/log")
        .into_iter()
        .filter(|r| chain_of(r) == slow)
        .map(|r| r.body)
        .collect();
    assert_eq!(undone, [json!({"undo": slow})], "onCancel ran once");
    assert_eq!(
        cancel(&slow).await.expect("answered").status().as_u16(),
        409
    );
    assert_eq!(
        cancel("nope").await.expect("answered").status().as_u16(),
        404
    );
    assert_eq!(get("nope".into()).await.0, 404);
    // `late` runs out of time before its delayed second step.
    loop {
        let (_, body) = get(late.clone()).await;
        if body["status"] == "timed_out" {
            let names: Vec<&str> = body["steps"]
                .as_array()
                .expect("steps")
                .iter()
                .map(|s| s["name"].as_str().unwrap_or(""))
                .collect();
            assert_eq!(names, ["first"], "{body}");
            break;
        }
        assert!(Instant::now() < deadline + Duration::from_secs(5), "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        cluster.at("/page").iter().all(|r| chain_of(r) != late),
        "no step after the timeout"
    );
    let bad = client
        .get(format!("{base}/v1/chains/x?namespace=Bad%20NS&tenant=t"))
        .send()
        .await
        .expect("answered");
    assert_eq!(bad.status().as_u16(), 400);
}

/// The census (every second here) counts the running run of `chain` in the gauge.
async fn running_is_counted(client: &reqwest::Client, base: &str, chain: &str) {
    let line = format!("acteon_chains_running{{chain=\"{chain}\"}} 1");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("answered")
            .text()
            .await
            .expect("text");
        if metrics.lines().any(|l| l == line) {
            return;
        }
        assert!(Instant::now() < deadline, "no `{line}` in:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Parallel steps: `join: all` waits for both calls and the next steps read each call's
/// answer; `join: any` with `bestEffort` succeeds when one call does; a failed `all` step
/// with `onFailure: skip` goes on with `success: false`.
async fn parallel_steps(state_url: &str) {
    let cluster = Cluster::start(state_url, 1).await;
    let client = reqwest::Client::new();
    let action = json!({"namespace": "ch", "tenant": "t", "provider": "chat", "action_type": "fanout", "payload": {"n": 7}});
    let outcome = common::send_round_robin(&client, &cluster.bases(), vec![action]).await;
    let chain_id = outcome[0]["ChainStarted"]["chain_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(15);
    while cluster.at("/log").len() < 2 {
        assert!(Instant::now() < deadline, "{:?}", cluster.at("/log"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logged: Vec<Value> = cluster.at("/log").into_iter().map(|r| r.body).collect();
    assert_eq!(
        logged,
        [
            json!({"a": "A-7", "b": true}),
            json!({"all": false, "any": true})
        ]
    );
    let calls: BTreeSet<String> = cluster
        .hook
        .requests
        .lock()
        .iter()
        .map(|r| {
            r.headers["x-acteon-action-id"]
                .to_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    // `f` may not be called: `all-of-them` fails fast when `e` fails.
    for call in ["a", "b", "d"] {
        assert!(
            calls.contains(&format!("{chain_id}:{call}:0")),
            "{call} called: {calls:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_chains_branch_and_render() {
    run_chains("memory", 1, 50, false).await;
    inspect_and_cancel("memory").await;
    parallel_steps("memory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_chains_finish_when_a_gateway_is_killed() {
    run_chains(&redis_url(), 3, 100, false).await;
    run_chains(&redis_url(), 3, 500, true).await;
    inspect_and_cancel(&redis_url()).await;
    parallel_steps(&redis_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_chains_finish_when_a_gateway_is_killed() {
    run_chains(&postgres_url(), 3, 100, false).await;
    run_chains(&postgres_url(), 3, 500, true).await;
    inspect_and_cancel(&postgres_url()).await;
    parallel_steps(&postgres_url()).await;
}

/// Editing a Chain while runs are under way: the runs started before keep the definition
/// they started with (its second step's payload and provider), runs started after use the
/// new one; deleting the Chain does not stop a run either.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn running_chains_keep_the_definition_they_started_with() {
    use acteon_api::compile::{CompileOptions, compile, parse_text};
    use acteon_gateway::config::Runtime;
    use std::sync::Arc;

    let hook = Recorder::start().await;
    let yaml = |version: &str, chain: bool| {
        let provider = |name: &str, path: &str| {
            format!(
                "---\napiVersion: acteon.dev/v1alpha1\nkind: Provider\nmetadata: {{name: {name}, namespace: ch}}\nspec:\n  type: webhook\n  webhook: {{url: \"{}\"}}\n",
                hook.url(path)
            )
        };
        let target = if version == "old" { "chat" } else { "pager" };
        let chain_doc = format!(
            "---\napiVersion: acteon.dev/v1alpha1\nkind: Chain\nmetadata: {{name: edited, namespace: ch}}\nspec:\n  steps:\n    - {{name: first, provider: chat, payloadTemplate: {{v: {version}}}}}\n    - {{name: second, provider: {target}, delaySeconds: 1, payloadTemplate: {{v: {version}}}}}\n"
        );
        let rule = "---\napiVersion: acteon.dev/v1alpha1\nkind: Rule\nmetadata: {name: start, namespace: ch}\nspec:\n  condition: {field: action.action_type, eq: go}\n  action: {type: chain, chain: edited}\n";
        let chain_doc = if chain { chain_doc } else { String::new() };
        [
            provider("chat", "/notify"),
            provider("pager", "/page"),
            chain_doc,
            rule.to_owned(),
        ]
        .concat()
    };
    let runtime = |text: String| {
        let docs = parse_text("test.yaml", &text).expect("parses");
        // Without the Chain, its rule is rejected and left out: nothing new starts.
        let compiled = compile(&docs, &CompileOptions::default());
        Runtime::build(compiled.snapshot, &reqwest::Client::new(), None).expect("builds")
    };
    let gw = Arc::new(common::gateway(&yaml("old", true)));
    let worker = acteon_gateway::worker::spawn(
        gw.clone(),
        acteon_gateway::worker::WorkerOptions {
            poll_interval: Duration::from_millis(50),
            ..Default::default()
        },
    );
    let go = || {
        common::action(
            json!({"namespace": "ch", "tenant": "t", "provider": "chat", "action_type": "go", "payload": {}}),
        )
    };
    for _ in 0..100 {
        assert!(matches!(
            gw.dispatch(go(), false).await,
            Ok(acteon_gateway::outcome::ActionOutcome::ChainStarted { .. })
        ));
    }
    // Edited while the 100 runs wait for their second step, then deleted and restored.
    gw.config.swap(runtime(yaml("new", true)));
    for _ in 0..50 {
        assert!(matches!(
            gw.dispatch(go(), false).await,
            Ok(acteon_gateway::outcome::ActionOutcome::ChainStarted { .. })
        ));
    }
    gw.config.swap(runtime(yaml("new", false)));
    let deadline = Instant::now() + Duration::from_secs(15);
    while hook.requests.lock().len() < 300 {
        assert!(
            Instant::now() < deadline,
            "{} of 300 steps",
            hook.requests.lock().len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let at = |path: &str, v: &str| {
        hook.requests
            .lock()
            .iter()
            .filter(|r| r.path == path && r.body == json!({"v": v}))
            .count()
    };
    assert_eq!(
        (at("/notify", "old"), at("/notify", "new")),
        (200, 50),
        "old runs: both steps to chat; new runs: first step"
    );
    assert_eq!(
        (at("/page", "new"), at("/page", "old")),
        (50, 0),
        "new runs' second step goes to pager"
    );
    worker.stop().await;
}
