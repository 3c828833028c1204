//! Dead letters through the real binary, on Redis and Postgres: a dispatch whose retryable
//! failures exhaust its provider's retries, and a chain step with `onFailure: dlq`, are kept;
//! a non-retryable failure is not. Entries survive a gateway restart, are listed with
//! filters, counted by the census gauge, replayed exactly once (concurrent replays
//! included) and deleted.

use crate::common;
use common::{postgres_url, redis_url};

use std::time::{Duration, Instant};

use common::{Recorder, Server, get_json};
use serde_json::{Value, json};

fn config(hook: &Recorder) -> String {
    format!(
        r#"
apiVersion: acteon.dev/v1alpha1
kind: Provider
metadata: {{name: hook, namespace: dl}}
spec:
  type: webhook
  webhook: {{url: "{}"}}
  timeoutSeconds: 5
  retry: {{maxAttempts: 2, initialBackoffMs: 10, maxBackoffMs: 20}}
---
apiVersion: acteon.dev/v1alpha1
kind: Provider
metadata: {{name: down, namespace: dl}}
spec:
  type: webhook
  webhook: {{url: "http://127.0.0.1:1/x"}}
  timeoutSeconds: 1
  retry: {{maxAttempts: 1}}
---
apiVersion: acteon.dev/v1alpha1
kind: Chain
metadata: {{name: escalate, namespace: dl}}
spec:
  steps:
    - {{name: page, provider: down, onFailure: dlq, retry: {{maxAttempts: 1}}, payloadTemplate: {{who: "{{{{origin.payload.who}}}}"}}}}
    - {{name: never, provider: hook}}
---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {{name: start, namespace: dl}}
spec:
  condition: {{field: action.action_type, eq: escalate}}
  action: {{type: chain, chain: escalate}}
"#,
        hook.url("/x")
    )
}

struct Gateway {
    args: Vec<String>,
    server: Server,
}

impl Gateway {
    fn start(state_url: &str, hook: &Recorder) -> Gateway {
        let dir =
            std::env::temp_dir().join(format!("acteon-dlq-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("config.yaml");
        std::fs::write(&file, config(hook)).expect("config");
        let prefix = format!(
            "acteon_d{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let args = vec![
            "--config".to_owned(),
            file.to_str().expect("utf-8").to_owned(),
            "--state".to_owned(),
            state_url.to_owned(),
            "--state-prefix".to_owned(),
            prefix,
        ];
        let server = Gateway::spawn(&args);
        Gateway { args, server }
    }

    fn spawn(args: &[String]) -> Server {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env = [
            ("ACTEON_WORKER_POLL_MS", "100"),
            ("ACTEON_CHAIN_CENSUS_SECONDS", "1"),
        ];
        Server::start_with(&args, &env, None)
    }

    fn restart(&mut self) {
        let _ = self.server.child.kill();
        let _ = self.server.child.wait();
        self.server = Gateway::spawn(&self.args);
    }

    fn url(&self, path: &str) -> String {
        self.server.url(path)
    }
}

fn action(action_type: &str, provider: &str) -> Value {
    json!({"namespace": "dl", "tenant": "t", "provider": provider, "action_type": action_type,
        "payload": {"who": "alice"}})
}

async fn entries(c: &reqwest::Client, gw: &Gateway, query: &str) -> Vec<Value> {
    let body: Value = get_json(c, &gw.url(&format!("/v1/dlq?{query}"))).await.1;
    body["entries"].as_array().cloned().unwrap_or_default()
}

async fn wait_for_entries(c: &reqwest::Client, gw: &Gateway, query: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = entries(c, gw, query).await;
        if found.len() == n {
            return found;
        }
        assert!(Instant::now() < deadline, "{query}: {found:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn metric_line(c: &reqwest::Client, gw: &Gateway, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = c
            .get(gw.url("/metrics"))
            .send()
            .await
            .expect("sent")
            .text()
            .await
            .expect("text");
        if text.lines().any(|l| l == line) {
            return;
        }
        assert!(Instant::now() < deadline, "no `{line}`");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn dead_letters(state_url: &str) {
    let hook = Recorder::start().await;
    // The first dispatch fails twice (both attempts), the second once for good (400).
    *hook.script.lock() = vec![503, 503, 400];
    let mut gw = Gateway::start(state_url, &hook);
    let c = reqwest::Client::new();
    let base = gw.url("");
    let sent = common::send_round_robin(
        &c,
        std::slice::from_ref(&base),
        vec![action("alert", "hook")],
    )
    .await;
    assert_eq!(sent[0]["Failed"]["retryable"], true, "{sent:?}");
    let refused = common::send_round_robin(
        &c,
        std::slice::from_ref(&base),
        vec![action("alert", "hook")],
    )
    .await;
    assert_eq!(refused[0]["Failed"]["retryable"], false, "{refused:?}");
    let chained = common::send_round_robin(&c, &[base], vec![action("escalate", "hook")]).await;
    let chain_id = chained[0]["ChainStarted"]["chain_id"]
        .as_str()
        .expect("chain")
        .to_owned();
    assert_eq!(hook.count(), 3, "two attempts, then one");

    let all = wait_for_entries(&c, &gw, "namespace=dl&tenant=t", 2).await;
    let dispatched = entries(&c, &gw, "namespace=dl&source=dispatch").await;
    assert_eq!(dispatched.len(), 1, "only the retryable failure: {all:?}");
    let d = &dispatched[0];
    assert_eq!(
        (d["provider"].as_str(), d["attempts"].as_u64()),
        (Some("hook"), Some(2)),
        "{d}"
    );
    assert_eq!(d["action"]["provider"], "hook", "what a replay sends: {d}");
    assert!(
        d["timestamp"].as_u64().is_some() && d["error"].is_string(),
        "{d}"
    );
    let from_chain = entries(&c, &gw, "namespace=dl&source=chain").await;
    assert_eq!(from_chain.len(), 1, "{all:?}");
    let ch = &from_chain[0];
    assert_eq!(
        (ch["chain_id"].as_str(), ch["chain_step"].as_str()),
        (Some(chain_id.as_str()), Some("page")),
        "{ch}"
    );
    assert_eq!(
        ch["action"]["payload"],
        json!({"who": "alice"}),
        "the rendered call: {ch}"
    );
    assert!(entries(&c, &gw, "namespace=other").await.is_empty());
    assert_eq!(
        entries(&c, &gw, "namespace=dl&provider=down").await.len(),
        1
    );
    metric_line(
        &c,
        &gw,
        "acteon_dead_letters_pending{provider=\"dl/hook\"} 1",
    )
    .await;

    // Durable: a new process finds them.
    gw.restart();
    assert_eq!(wait_for_entries(&c, &gw, "namespace=dl", 2).await.len(), 2);
    let scope = "namespace=dl&tenant=t";
    let id = d["id"].as_str().expect("id").to_owned();
    let got: Value = get_json(&c, &gw.url(&format!("/v1/dlq/{id}?{scope}")))
        .await
        .1;
    assert_eq!(got["id"], d["id"]);

    // Two replays at once: one delivers, the other is turned away (busy, or gone after).
    let replay = |id: String| {
        let c = c.clone();
        let url = gw.url(&format!("/v1/dlq/{id}/replay?{scope}"));
        async move {
            let r = c.post(url).send().await.expect("sent");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (a, b) = tokio::join!(replay(id.clone()), replay(id.clone()));
    let mut statuses = [a.0, b.0];
    statuses.sort_unstable();
    assert!(matches!(statuses, [200, 404] | [200, 409]), "{a:?} {b:?}");
    let ok = if a.0 == 200 { &a.1 } else { &b.1 };
    assert_eq!(
        (
            ok["removed"].as_bool(),
            ok["outcome"]["Executed"]["status"].as_str()
        ),
        (Some(true), Some("success")),
        "{ok}"
    );
    assert_eq!(hook.count(), 4, "the replay delivered once");
    let replayed = hook.requests.lock()[3].clone();
    assert_eq!(replayed.body, json!({"who": "alice"}));
    assert_eq!(
        c.get(gw.url(&format!("/v1/dlq/{id}?{scope}")))
            .send()
            .await
            .expect("sent")
            .status()
            .as_u16(),
        404
    );

    // A replay that fails again keeps the entry, with its attempts added.
    let chain_entry = ch["id"].as_str().expect("id").to_owned();
    let (status, again) = replay(chain_entry.clone()).await;
    assert_eq!(
        (status, again["removed"].as_bool()),
        (200, Some(false)),
        "{again}"
    );
    let kept: Value = get_json(&c, &gw.url(&format!("/v1/dlq/{chain_entry}?{scope}")))
        .await
        .1;
    assert_eq!(kept["attempts"], 2, "{kept}");

    let del = |id: String| c.delete(gw.url(&format!("/v1/dlq/{id}?{scope}"))).send();
    assert_eq!(
        del(chain_entry.clone())
            .await
            .expect("sent")
            .status()
            .as_u16(),
        200
    );
    assert_eq!(del(chain_entry).await.expect("sent").status().as_u16(), 404);
    let stats: Value = get_json(&c, &gw.url("/v1/dlq/stats")).await.1;
    assert_eq!(stats, json!({"enabled": true, "count": 0}));
    let bad = c
        .get(gw.url("/v1/dlq?namespace=Bad%20NS"))
        .send()
        .await
        .expect("sent");
    assert_eq!(bad.status().as_u16(), 400);
}

/// `POST /v1/dlq/replay` replays what the filter selects; `POST /v1/dlq/drain` removes and
/// returns the rest.
async fn bulk_replay_and_drain(state_url: &str) {
    let hook = Recorder::start().await;
    *hook.script.lock() = vec![503; 6];
    let gw = Gateway::start(state_url, &hook);
    let c = reqwest::Client::new();
    let base = gw.url("");
    let actions = (0..3).map(|_| action("alert", "hook")).collect();
    common::send_round_robin(&c, std::slice::from_ref(&base), actions).await;
    common::send_round_robin(&c, &[base], vec![action("escalate", "hook")]).await;
    wait_for_entries(&c, &gw, "namespace=dl", 4).await;
    let bulk: Value = c
        .post(gw.url("/v1/dlq/replay?namespace=dl&provider=hook"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(
        (bulk["replayed"].as_u64(), bulk["failed"].as_u64()),
        (Some(3), Some(0)),
        "{bulk}"
    );
    assert_eq!(hook.count(), 9, "six failed attempts, three replays");
    let drained: Value = c
        .post(gw.url("/v1/dlq/drain"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(drained["count"], 1, "{drained}");
    assert_eq!(drained["entries"][0]["source"], "chain");
    assert!(entries(&c, &gw, "namespace=dl").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_dead_letters_are_kept_replayed_once_and_deleted() {
    dead_letters(&redis_url()).await;
    bulk_replay_and_drain(&redis_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_dead_letters_are_kept_replayed_once_and_deleted() {
    dead_letters(&postgres_url()).await;
    bulk_replay_and_drain(&postgres_url()).await;
}
