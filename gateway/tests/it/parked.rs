//! Parked actions through the real binary: groups, schedules and state-machine timeouts run
//! exactly once across three gateway processes on one backend, and survive a gateway
//! killed with SIGKILL. Memory runs one process; Redis and Postgres run three
//! (`ACTEON_TEST_REDIS_URL`, `ACTEON_TEST_POSTGRES_URL`).

use crate::common;
use common::{postgres_url, redis_url};

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{Recorded, Recorder, Server};
use serde_json::{Value, json};

/// The worker's claim batch (`WorkerOptions::batch`): the most tasks a killed gateway can
/// have claimed and not completed, so the most that may run twice.
const CLAIM_BATCH: usize = 64;

fn config(hook: &Recorder) -> String {
    let provider = |name: &str, path: &str| {
        format!(
            "---\napiVersion: acteon.dev/v1alpha1\nkind: Provider\nmetadata: {{name: {name}, namespace: park}}\nspec:\n  type: webhook\n  webhook: {{url: \"{}\"}}\n  timeoutSeconds: 5\n  retry: {{maxAttempts: 1}}\n",
            hook.url(path)
        )
    };
    let rule = |name: &str, condition: &str, action: &str| {
        format!(
            "---\napiVersion: acteon.dev/v1alpha1\nkind: Rule\nmetadata: {{name: {name}, namespace: park}}\nspec:\n  priority: 1\n  condition: {condition}\n  action: {action}\n"
        )
    };
    let delay = |d: u32| {
        rule(
            &format!("later-{d}"),
            &format!(
                "{{all: [{{field: action.action_type, eq: later}}, {{field: action.payload.delay, eq: {d}}}]}}"
            ),
            &format!("{{type: schedule, delaySeconds: {d}}}"),
        )
    };
    [
        provider("hook", "/deliver"),
        provider("notify", "/notify"),
        provider("pager", "/paged"),
        provider("alerts", "/repeated"),
        rule(
            "repeating",
            "{field: action.action_type, eq: firing}",
            "{type: group, groupBy: [payload.alertname], groupWaitSeconds: 1, groupIntervalSeconds: 1, repeatIntervalSeconds: 2}",
        ),
        rule(
            "grouped",
            "{field: action.action_type, eq: ev}",
            "{type: group, groupBy: [payload.key], groupWaitSeconds: 10, groupIntervalSeconds: 60, maxGroupSize: 4}",
        ),
        delay(1),
        delay(2),
        delay(3),
        rule(
            "alerts",
            "{field: action.action_type, eq: alert}",
            "{type: stateMachine, stateMachine: acks, fingerprintFields: [payload.id]}",
        ),
        rule(
            "pages",
            "{field: action.action_type, eq: page}",
            "{type: stateMachine, stateMachine: pages, fingerprintFields: [payload.id]}",
        ),
        "---\napiVersion: acteon.dev/v1alpha1\nkind: StateMachine\nmetadata: {name: pages, namespace: park}\nspec:\n  states: [open, paged, resolved]\n  initialState: open\n  terminalStates: [resolved]\n  notifyProvider: pager\n  transitions:\n    - {from: open, to: paged, notify: true}\n    - {from: paged, to: resolved, notify: true}\n".to_owned(),
        // The group notification continues after the group rule: this rule (later in the
        // order) sees it and adds a mark, so the test can tell it went through the rules.
        "---\napiVersion: acteon.dev/v1alpha1\nkind: Rule\nmetadata: {name: mark-notifications, namespace: park}\nspec:\n  priority: 5\n  condition: {field: action.payload.event_count, exists: true}\n  action: {type: modify, changes: {continued: true}}\n".to_owned(),
        "---\napiVersion: acteon.dev/v1alpha1\nkind: StateMachine\nmetadata: {name: acks, namespace: park}\nspec:\n  states: [open, acked, expired, closed]\n  initialState: open\n  terminalStates: [expired, closed]\n  notifyProvider: notify\n  transitions:\n    - {from: open, to: acked}\n    - {from: acked, to: expired, notify: true}\n    - {from: acked, to: closed}\n  timeouts:\n    - {state: acked, afterSeconds: 2, transitionTo: expired}\n".to_owned(),
    ]
    .concat()
}

struct Cluster {
    servers: Vec<Option<Server>>,
    client: reqwest::Client,
    hook: Recorder,
}

impl Cluster {
    async fn start(state_url: &str, replicas: usize) -> Cluster {
        let hook = Recorder::start().await;
        let dir =
            std::env::temp_dir().join(format!("acteon-parked-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("config.yaml");
        std::fs::write(&file, config(&hook)).expect("config");
        let file = file.to_str().expect("utf-8").to_owned();
        let prefix = format!(
            "acteon_p{}",
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
        // A short lease, so the survivors take a killed gateway's claims within the test.
        let env = [
            ("ACTEON_WORKER_LEASE_SECONDS", "3"),
            ("ACTEON_WORKER_POLL_MS", "100"),
        ];
        let servers = (0..replicas)
            .map(|_| Some(Server::start_with(&args, &env, None)))
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

    fn url(&self, i: usize, path: &str) -> String {
        let live: Vec<&Server> = self.servers.iter().flatten().collect();
        live[i % live.len()].url(path)
    }

    /// SIGKILL: the gateway gets no chance to release anything.
    fn kill(&mut self, i: usize) {
        if let Some(mut s) = self.servers[i].take() {
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
    }

    /// Sends every action round-robin over the live gateways (at most 128 in flight).
    async fn send_all(&self, actions: Vec<Value>) -> Vec<Value> {
        let bases = self
            .servers
            .iter()
            .flatten()
            .map(|s| s.base.clone())
            .collect::<Vec<_>>();
        common::send_round_robin(&self.client, &bases, actions).await
    }

    fn received(&self, path: &str) -> Vec<Recorded> {
        self.hook
            .requests
            .lock()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Waits until `path` received at least `n` requests (then a little longer, so that
    /// extra deliveries would show), or panics after `limit`.
    async fn wait_for(&self, path: &str, n: usize, limit: Duration) -> Vec<Recorded> {
        let deadline = Instant::now() + limit;
        while self.received(path).len() < n {
            assert!(
                Instant::now() < deadline,
                "{path}: {} of {n} within {limit:?}",
                self.received(path).len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        self.received(path)
    }
}

fn tagged(outcomes: &[Value], tag: &str) -> usize {
    outcomes.iter().filter(|o| o.get(tag).is_some()).count()
}

/// 2,000 events over 200 group keys, round-robin over the gateways → exactly 200
/// notifications, each with its key's 10 events (the newest 4 kept, 6 counted as left
/// out), having gone on through the rules after the group rule. With `kill`, a gateway is
/// SIGKILLed while every group is still waiting: the survivors send all 200.
async fn groups(state_url: &str, replicas: usize, kill: bool) {
    let mut cluster = Cluster::start(state_url, replicas).await;
    let actions = (0..2000)
        .map(|i| json!({"namespace": "park", "tenant": "t", "provider": "hook", "action_type": "ev", "payload": {"key": i % 200, "n": i}}))
        .collect();
    let started = Instant::now();
    let outcomes = cluster.send_all(actions).await;
    assert_eq!(tagged(&outcomes, "Grouped"), 2000, "{:?}", &outcomes[..3]);
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "sending took {:?}: groups may flush before all their events arrived",
        started.elapsed()
    );
    if kill {
        cluster.kill(replicas - 1);
    }
    let got = cluster
        .wait_for("/deliver", 200, Duration::from_secs(30))
        .await;
    assert_eq!(got.len(), 200, "one notification per group");
    let mut keys = BTreeSet::new();
    for r in &got {
        let p = &r.body;
        assert_eq!(p["event_count"], 10, "{p}");
        assert_eq!(p["events"].as_array().map(Vec::len), Some(4), "{p}");
        assert_eq!(p["omitted"], 6, "{p}");
        assert_eq!(p["continued"], true, "went on through the later rules: {p}");
        keys.insert(p["labels"]["payload.key"].as_u64().expect("key label"));
        let key = p["labels"]["payload.key"].as_u64().expect("key");
        for e in p["events"].as_array().expect("events") {
            assert_eq!(e["key"].as_u64(), Some(key), "only its key's events: {p}");
        }
    }
    assert_eq!(keys.len(), 200);
}

/// A group with `repeatIntervalSeconds` (wait 1 s, interval 1 s, repeat 2 s): while its
/// two alerts (fingerprints) keep arriving, one notification and then repeats of it every
/// 2 s; when they stop, the repeats stop; an alert with a new fingerprint is news.
async fn repeating_groups(state_url: &str, replicas: usize) {
    let cluster = Cluster::start(state_url, replicas).await;
    let alert = |fp: &str| json!({"namespace": "park", "tenant": "t", "provider": "alerts", "action_type": "firing", "fingerprint": fp, "payload": {"alertname": "disk", "fp": fp}});
    let started = Instant::now();
    // Prometheus-style: the firing alerts are sent again every 500 ms for 6.5 s.
    while started.elapsed() < Duration::from_millis(6500) {
        let outcomes = cluster.send_all(vec![alert("f1"), alert("f2")]).await;
        assert_eq!(tagged(&outcomes, "Grouped"), 2, "{outcomes:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Refreshes stopped: at most one repeat is still due (≈7 s), then quiet.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let got = cluster.received("/repeated");
    let repeat = |r: &Recorded| r.body["repeat"] == true;
    let (repeats, news): (Vec<&Recorded>, Vec<&Recorded>) = got.iter().partition(|r| repeat(r));
    assert_eq!(
        news.len(),
        1,
        "one notification for the two alerts: {got:?}"
    );
    let first = &news[0].body;
    assert_eq!(
        first["event_count"], 2,
        "known alerts are not counted again: {first}"
    );
    assert!(
        (2..=4).contains(&repeats.len()),
        "repeats every 2 s while the alerts keep arriving (≈3 s, 5 s, 7 s): {} in {got:?}",
        repeats.len()
    );
    for r in &repeats {
        assert_eq!(
            r.body["events"], first["events"],
            "a repeat re-sends the notification"
        );
        assert_eq!(r.body["group_id"], first["group_id"]);
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        cluster.received("/repeated").len(),
        got.len(),
        "no repeat once the alerts stopped arriving"
    );
    let outcomes = cluster.send_all(vec![alert("f3")]).await;
    assert_eq!(tagged(&outcomes, "Grouped"), 1, "{outcomes:?}");
    let got = cluster
        .wait_for("/repeated", got.len() + 1, Duration::from_secs(10))
        .await;
    let last = &got[got.len() - 1].body;
    assert_eq!(
        (
            last["repeat"].clone(),
            last["event_count"].clone(),
            last["events"][0]["fp"].clone()
        ),
        (json!(false), json!(1), json!("f3")),
        "a new alert is news: {last}"
    );
}

/// 1,000 actions scheduled 1–3 s ahead; with `kill`, a gateway is SIGKILLed midway.
/// Every action is delivered; repeats only of what the killed gateway had claimed.
async fn schedules(state_url: &str, replicas: usize, kill: bool) {
    let mut cluster = Cluster::start(state_url, replicas).await;
    let actions = (0..1000)
        .map(|i| json!({"namespace": "park", "tenant": "t", "provider": "hook", "action_type": "later", "payload": {"delay": 1 + i % 3, "n": i}}))
        .collect();
    let outcomes = cluster.send_all(actions).await;
    assert_eq!(tagged(&outcomes, "Scheduled"), 1000, "{:?}", &outcomes[..3]);
    if kill {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        cluster.kill(replicas - 1);
    }
    let got = cluster
        .wait_for("/deliver", 1000, Duration::from_secs(40))
        .await;
    let mut per_n: BTreeMap<u64, usize> = BTreeMap::new();
    for r in &got {
        *per_n.entry(r.body["n"].as_u64().expect("n")).or_default() += 1;
    }
    assert_eq!(per_n.len(), 1000, "every scheduled action delivered");
    let repeats = got.len() - 1000;
    let allowed = if kill { CLAIM_BATCH } else { 0 };
    assert!(
        repeats <= allowed,
        "{repeats} delivered twice (allowed {allowed})"
    );
}

/// 500 events moved to `acked`, whose timeout (2 s) moves them to `expired` with a
/// notification: each times out exactly once; one closed by hand first does not, until
/// acknowledged again: `closed` is terminal, so that starts a new lifecycle (`open` →
/// `acked`) whose timeout fires once too.
async fn state_timeouts(state_url: &str, replicas: usize) {
    let cluster = Cluster::start(state_url, replicas).await;
    let alert = |id: u32, status: &str| json!({"namespace": "park", "tenant": "t", "provider": "hook", "action_type": "alert", "status": status, "payload": {"id": id}});
    // Event 0 is acknowledged and closed by hand first, well within its timeout (sending
    // the other 499 may take longer than 2 s on a loaded machine).
    let acked = cluster.send_all(vec![alert(0, "acked")]).await;
    assert_eq!(acked[0]["StateChanged"]["new_state"], "acked", "{acked:?}");
    let first = acked[0]["StateChanged"]["fingerprint"]
        .as_str()
        .expect("fingerprint")
        .to_owned();
    let closed = cluster.send_all(vec![alert(0, "closed")]).await;
    assert_eq!(
        closed[0]["StateChanged"]["new_state"], "closed",
        "{closed:?}"
    );
    let outcomes = cluster
        .send_all((1..500).map(|i| alert(i, "acked")).collect())
        .await;
    for o in &outcomes {
        assert_eq!(o["StateChanged"]["new_state"], "acked", "{o}");
        assert_eq!(o["StateChanged"]["previous_state"], "open", "{o}");
    }
    let got = cluster
        .wait_for("/notify", 499, Duration::from_secs(30))
        .await;
    assert_eq!(got.len(), 499, "each timeout fired once");
    let fingerprints: BTreeSet<String> = got
        .iter()
        .map(|r| {
            r.body["fingerprint"]
                .as_str()
                .expect("fingerprint")
                .to_owned()
        })
        .collect();
    assert_eq!(fingerprints.len(), 499);
    assert!(
        !fingerprints.contains(&first),
        "the event closed by hand did not time out"
    );
    assert!(got.iter().all(|r| r.body["new_state"] == "expired"));
    let listed: Value = cluster
        .client
        .get(cluster.url(0, "/v1/events?namespace=park&tenant=t&state=expired"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    let events = listed["events"].as_array().expect("events");
    assert_eq!(events.len(), 499, "listed as expired");
    assert_eq!(listed["count"], 499);
    assert!(events.iter().all(|e| e["machine"] == "park/acks"));
    // Acteon's parameter names (`status`, `limit`) select the same.
    let (status, page) = common::get_json(
        &cluster.client,
        &cluster.url(
            0,
            "/v1/events?namespace=park&tenant=t&status=expired&limit=7",
        ),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["count"], 7, "{page}");
    assert!(
        page["events"]
            .as_array()
            .expect("events")
            .iter()
            .all(|e| e["state"] == "expired")
    );

    // `closed` is terminal: acknowledging event 0 again starts a new lifecycle.
    let reopened = cluster.send_all(vec![alert(0, "acked")]).await;
    assert_eq!(
        (
            &reopened[0]["StateChanged"]["previous_state"],
            &reopened[0]["StateChanged"]["new_state"]
        ),
        (&json!("open"), &json!("acked")),
        "closed is terminal: a new lifecycle from open: {reopened:?}"
    );
    let got = cluster
        .wait_for("/notify", 500, Duration::from_secs(30))
        .await;
    assert_eq!(got.len(), 500, "the new lifecycle's timeout fired once");
    let last: Vec<&str> = got
        .iter()
        .filter_map(|r| r.body["fingerprint"].as_str())
        .filter(|fp| *fp == first)
        .collect();
    assert_eq!(
        last.len(),
        1,
        "event 0 timed out once, in its new lifecycle"
    );
}

/// Notifying moves made by dispatches and by hand reach the machine's provider through the
/// worker, at least once: the first two attempts fail (503) and are sent again after the
/// claim's lease; every other notification is sent exactly once.
async fn move_notifications(state_url: &str, replicas: usize) {
    let cluster = Cluster::start(state_url, replicas).await;
    cluster.hook.script.lock().extend([503, 503]);
    let page = |id: u32| json!({"namespace": "park", "tenant": "t", "provider": "hook", "action_type": "page", "status": "paged", "payload": {"id": id}});
    let outcomes = cluster.send_all((0..20).map(page).collect()).await;
    for o in &outcomes {
        assert_eq!(o["StateChanged"]["new_state"], "paged", "{o}");
        assert_eq!(o["StateChanged"]["notify"], true, "{o}");
    }
    // 20 notifications, 2 of them failed once and sent again after the 3 s lease.
    let got = cluster
        .wait_for("/paged", 22, Duration::from_secs(30))
        .await;
    assert_eq!(got.len(), 22, "each sent once, the two failures twice");
    let mut sends: BTreeMap<u64, usize> = BTreeMap::new();
    for r in &got {
        *sends
            .entry(r.body["id"].as_u64().expect("the moving action's payload"))
            .or_default() += 1;
    }
    assert_eq!(sends.len(), 20, "every move notified: {sends:?}");
    assert_eq!(
        sends.values().filter(|&&n| n == 2).count(),
        2,
        "only the failed ones were sent again: {sends:?}"
    );

    // A notifying move by hand notifies too.
    let fingerprint = outcomes[0]["StateChanged"]["fingerprint"]
        .as_str()
        .expect("fingerprint");
    let moved: Value = cluster
        .client
        .put(cluster.url(0, &format!("/v1/events/{fingerprint}/transition")))
        .json(&json!({"namespace": "park", "tenant": "t", "machine": "pages", "to": "resolved"}))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(moved["notify"], true, "{moved}");
    assert_eq!(moved["new_state"], "resolved", "{moved}");
    let got = cluster
        .wait_for("/paged", 23, Duration::from_secs(30))
        .await;
    let event0 = got.iter().filter(|r| r.body["id"] == 0).count();
    assert_eq!(
        event0,
        sends[&0] + 1,
        "the move by hand notified with event 0's record"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_groups_schedules_and_timeouts() {
    groups("memory", 1, false).await;
    repeating_groups("memory", 1).await;
    schedules("memory", 1, false).await;
    state_timeouts("memory", 1).await;
    move_notifications("memory", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_groups_exactly_once_across_replicas() {
    groups(&redis_url(), 3, false).await;
    groups(&redis_url(), 3, true).await;
    repeating_groups(&redis_url(), 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_schedules_survive_a_killed_gateway() {
    schedules(&redis_url(), 3, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_state_timeouts_fire_once() {
    state_timeouts(&redis_url(), 3).await;
    move_notifications(&redis_url(), 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_groups_exactly_once_across_replicas() {
    groups(&postgres_url(), 3, false).await;
    groups(&postgres_url(), 3, true).await;
    repeating_groups(&postgres_url(), 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_schedules_survive_a_killed_gateway() {
    schedules(&postgres_url(), 3, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_state_timeouts_fire_once() {
    state_timeouts(&postgres_url(), 3).await;
    move_notifications(&postgres_url(), 3).await;
}
