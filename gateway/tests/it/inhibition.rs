//! Conditions that read shared state, in process: inhibition by the active events of a
//! StateMachine (moved by dispatches, by the worker's timeouts and by hand), `stateSeen`,
//! `stateCounter`; the reads are one backend call, made only for rules that need them.
//! The inhibition flow also runs on Redis and Postgres.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use acteon_api::compile::{CompileOptions, compile, parse_text};
use acteon_gateway::config::{LiveConfig, Runtime};
use acteon_gateway::metrics::Metrics;
use acteon_gateway::outcome::ActionOutcome;
use acteon_gateway::pipeline::{DispatchError, Gateway, GatewayOptions};
use acteon_gateway::state::{
    ClaimedTimer, DedupConfirm, DeferResult, Deferral, EventInfo, Gate, GateMode, GateResult,
    GroupBatch, GroupInfo, MemoryStore, StateAnswers, StateError, StateRead, StateStore, Versioned,
};
use async_trait::async_trait;
use serde_json::{Value, json};

/// A store that counts (and can fail) `read_state` calls.
struct Counting {
    inner: Arc<dyn StateStore>,
    reads: AtomicUsize,
    fail_reads: AtomicBool,
}

impl Counting {
    fn new(inner: Arc<dyn StateStore>) -> Arc<Counting> {
        Arc::new(Counting {
            inner,
            reads: AtomicUsize::new(0),
            fail_reads: AtomicBool::new(false),
        })
    }

    fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl StateStore for Counting {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    async fn ping(&self) -> Result<(), StateError> {
        self.inner.ping().await
    }
    async fn apply_gates(&self, gates: &[Gate]) -> Result<GateResult, StateError> {
        self.inner.apply_gates(gates).await
    }
    async fn run_gates(&self, gates: &[Gate], mode: GateMode) -> Result<GateResult, StateError> {
        self.inner.run_gates(gates, mode).await
    }
    async fn run_gates_and_defer(
        &self,
        gates: &[Gate],
        mode: GateMode,
        deferrals: &[Deferral],
    ) -> Result<(GateResult, Vec<DeferResult>), StateError> {
        self.inner.run_gates_and_defer(gates, mode, deferrals).await
    }
    async fn group_flush_begin(&self, key: &str) -> Result<Option<GroupBatch>, StateError> {
        self.inner.group_flush_begin(key).await
    }
    async fn group_flush_end(
        &self,
        key: &str,
        timer_id: &str,
        claim: &str,
        interval: Duration,
        repeat_at_ms: Option<u64>,
    ) -> Result<bool, StateError> {
        self.inner
            .group_flush_end(key, timer_id, claim, interval, repeat_at_ms)
            .await
    }
    async fn get_group(&self, key: &str) -> Result<Option<GroupInfo>, StateError> {
        self.inner.get_group(key).await
    }
    async fn list_groups(&self, prefix: &str, limit: usize) -> Result<Vec<GroupInfo>, StateError> {
        self.inner.list_groups(prefix, limit).await
    }
    async fn get_event(&self, key: &str) -> Result<Option<EventInfo>, StateError> {
        self.inner.get_event(key).await
    }
    async fn list_events(&self, prefix: &str, limit: usize) -> Result<Vec<EventInfo>, StateError> {
        self.inner.list_events(prefix, limit).await
    }
    async fn read_state(&self, reads: &[StateRead]) -> Result<StateAnswers, StateError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        if self.fail_reads.load(Ordering::SeqCst) {
            return Err(StateError::Unavailable("reads fail in this test".into()));
        }
        self.inner.read_state(reads).await
    }
    async fn pending_timers(&self) -> Result<u64, StateError> {
        self.inner.pending_timers().await
    }
    async fn release_timers(&self, claims: &[(String, String)]) -> Result<usize, StateError> {
        self.inner.release_timers(claims).await
    }
    async fn confirm_dedup(&self, marks: &[DedupConfirm]) -> Result<usize, StateError> {
        self.inner.confirm_dedup(marks).await
    }
    async fn release_dedup(&self, key: &str, token: &str) -> Result<bool, StateError> {
        self.inner.release_dedup(key, token).await
    }
    async fn dedup_exists(&self, key: &str) -> Result<bool, StateError> {
        self.inner.dedup_exists(key).await
    }
    async fn window_count(&self, key: &str, window: Duration) -> Result<u64, StateError> {
        self.inner.window_count(key, window).await
    }
    async fn quota_usage(&self, key: &str, window: Duration) -> Result<u64, StateError> {
        self.inner.quota_usage(key, window).await
    }
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StateError> {
        self.inner.get(key).await
    }
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Versioned>>, StateError> {
        self.inner.get_many(keys).await
    }

    async fn reserve_slot(
        &self,
        key: &str,
        interval: Duration,
        max_wait: Duration,
    ) -> Result<Option<Duration>, StateError> {
        self.inner.reserve_slot(key, interval, max_wait).await
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<u64>,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<Option<u64>, StateError> {
        self.inner.compare_and_swap(key, expected, value, ttl).await
    }
    async fn delete(&self, key: &str) -> Result<bool, StateError> {
        self.inner.delete(key).await
    }
    async fn try_lock(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool, StateError> {
        self.inner.try_lock(key, owner, ttl).await
    }
    async fn unlock(&self, key: &str, owner: &str) -> Result<bool, StateError> {
        self.inner.unlock(key, owner).await
    }
    async fn schedule_timer(
        &self,
        id: &str,
        due_unix_ms: u64,
        payload: Vec<u8>,
    ) -> Result<(), StateError> {
        self.inner.schedule_timer(id, due_unix_ms, payload).await
    }
    async fn claim_due_timers(
        &self,
        now_unix_ms: u64,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedTimer>, StateError> {
        self.inner.claim_due_timers(now_unix_ms, max, lease).await
    }
    async fn complete_timer(&self, id: &str, claim: &str) -> Result<bool, StateError> {
        self.inner.complete_timer(id, claim).await
    }
    async fn get_timer(&self, id: &str) -> Result<Option<(u64, Vec<u8>)>, StateError> {
        self.inner.get_timer(id).await
    }
    async fn delete_timer(&self, id: &str) -> Result<bool, StateError> {
        self.inner.delete_timer(id).await
    }
    async fn list_timers(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<acteon_gateway::state::ListedTimer>, StateError> {
        self.inner.list_timers(prefix, after, limit).await
    }
    async fn advance_timer(
        &self,
        id: &str,
        claim: &str,
        due_unix_ms: u64,
        payload: Vec<u8>,
        hold: Option<Duration>,
    ) -> Result<bool, StateError> {
        self.inner
            .advance_timer(id, claim, due_unix_ms, payload, hold)
            .await
    }
}

/// A gateway compiled from YAML on `state`.
fn gateway_on(yaml: &str, state: Arc<dyn StateStore>) -> Arc<Gateway> {
    let docs =
        parse_text("test.yaml", yaml).unwrap_or_else(|e| panic!("test YAML does not parse: {e:?}"));
    let compiled = compile(&docs, &CompileOptions::default());
    assert!(
        compiled.rejections.is_empty(),
        "test config rejected: {:?}",
        compiled.rejections
    );
    let runtime =
        Runtime::build(compiled.snapshot, &reqwest::Client::new(), None).expect("runtime builds");
    Arc::new(Gateway {
        config: LiveConfig::new(runtime),
        state,
        metrics: Arc::new(Metrics::new()),
        options: GatewayOptions::default(),
        confirmer: Default::default(),
        delivered: Default::default(),
        chain_activity: Default::default(),
        guards: Default::default(),
        audit: None,
    })
}

const PROVIDERS: &str = "apiVersion: acteon.dev/v1alpha1
kind: Provider
metadata: {name: p, namespace: ns}
spec: {type: noop}
---
apiVersion: acteon.dev/v1alpha1
kind: Provider
metadata: {name: q, namespace: ns}
spec: {type: noop}
";

/// Cluster events: `firing` is active until `resolved` (or `expired`, after `firing_for`
/// seconds, when given). Events are fingerprinted by cluster.
fn cluster_events(firing_for: Option<u64>) -> String {
    let timeout = firing_for.map_or(String::new(), |s| {
        format!("  timeouts: [{{state: firing, afterSeconds: {s}, transitionTo: expired}}]\n")
    });
    format!(
        "---
apiVersion: acteon.dev/v1alpha1
kind: StateMachine
metadata: {{name: cluster-events, namespace: ns}}
spec:
  states: [pending, firing, resolved, expired]
  initialState: pending
  terminalStates: [resolved, expired]
  transitions:
    - {{from: pending, to: firing}}
    - {{from: firing, to: resolved}}
    - {{from: firing, to: expired}}
{timeout}---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {{name: cluster-lifecycle, namespace: ns}}
spec:
  priority: 1
  condition: {{field: action.action_type, eq: cluster_down}}
  action: {{type: stateMachine, stateMachine: cluster-events, fingerprintFields: [action.payload.cluster]}}
"
    )
}

/// Pod alerts of a cluster with an active `cluster-events` event are suppressed.
const INHIBIT_PODS: &str = "---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {name: inhibit-pods, namespace: ns}
spec:
  priority: 2
  condition:
    all:
      - {field: action.action_type, eq: pod_crash}
      - inhibitedBy: {stateMachine: cluster-events, equal: [action.payload.cluster]}
  action: {type: suppress}
";

fn inhibition_config(firing_for: Option<u64>) -> String {
    format!("{PROVIDERS}{}{INHIBIT_PODS}", cluster_events(firing_for))
}

fn act(tenant: &str, action_type: &str, payload: Value, status: Option<&str>) -> Value {
    let mut a = json!({"namespace": "ns", "tenant": tenant, "provider": "p", "action_type": action_type, "payload": payload});
    if let Some(s) = status {
        a["status"] = json!(s);
    }
    a
}

async fn send(gw: &Gateway, a: Value) -> ActionOutcome {
    gw.dispatch(common::action(a), false)
        .await
        .expect("dispatch answers")
}

async fn pod(gw: &Gateway, tenant: &str, cluster: &str) -> ActionOutcome {
    send(
        gw,
        act(
            tenant,
            "pod_crash",
            json!({"cluster": cluster, "pod": "web-1"}),
            None,
        ),
    )
    .await
}

async fn cluster(gw: &Gateway, cluster: &str, status: &str) -> ActionOutcome {
    send(
        gw,
        act(
            "infra",
            "cluster_down",
            json!({"cluster": cluster}),
            Some(status),
        ),
    )
    .await
}

fn executed(o: &ActionOutcome) -> bool {
    matches!(o, ActionOutcome::Executed(_))
}

fn suppressed_by(o: &ActionOutcome, rule: &str) -> bool {
    matches!(o, ActionOutcome::Suppressed { rule: r } if r == rule)
}

fn moved(o: &ActionOutcome, from: &str, to: &str) {
    match o {
        ActionOutcome::StateChanged {
            previous_state,
            new_state,
            ..
        } => assert_eq!((previous_state.as_str(), new_state.as_str()), (from, to)),
        other => panic!("expected StateChanged {from} -> {to}, got {other:?}"),
    }
}

/// Pod alerts are suppressed while their cluster's event is active, for every tenant of
/// the namespace; other clusters are not; once the event is resolved they are delivered
/// again, and a new occurrence inhibits again.
async fn inhibition_flow(state: Arc<dyn StateStore>) {
    let gw = gateway_on(&inhibition_config(None), state);
    assert!(executed(&pod(&gw, "team-a", "c1").await));
    moved(&cluster(&gw, "c1", "firing").await, "pending", "firing");
    assert!(suppressed_by(
        &pod(&gw, "team-a", "c1").await,
        "inhibit-pods"
    ));
    assert!(
        suppressed_by(&pod(&gw, "team-b", "c1").await, "inhibit-pods"),
        "inhibition is namespace-wide: another tenant's pods too"
    );
    assert!(executed(&pod(&gw, "team-a", "c2").await), "another cluster");
    assert!(
        executed(&send(&gw, act("team-a", "pod_crash", json!({"pod": "x"}), None)).await),
        "an alert without the field is not inhibited by an event that has it"
    );
    // A repeated firing alert changes nothing, and the event stays active.
    moved(&cluster(&gw, "c1", "firing").await, "firing", "firing");
    assert!(suppressed_by(
        &pod(&gw, "team-a", "c1").await,
        "inhibit-pods"
    ));
    // A dry run reads the same state.
    match gw
        .dispatch(
            common::action(act("team-a", "pod_crash", json!({"cluster": "c1"}), None)),
            true,
        )
        .await
        .expect("answers")
    {
        ActionOutcome::DryRun {
            verdict,
            matched_rule,
            errors,
            ..
        } => {
            assert_eq!(verdict, "suppress");
            assert_eq!(matched_rule.as_deref(), Some("inhibit-pods"));
            assert!(errors.is_empty(), "{errors:?}");
        }
        other => panic!("expected DryRun, got {other:?}"),
    }
    moved(&cluster(&gw, "c1", "resolved").await, "firing", "resolved");
    assert!(
        executed(&pod(&gw, "team-a", "c1").await),
        "resolved: delivered again"
    );
    // Two clusters down; resolving one leaves the other inhibiting.
    moved(&cluster(&gw, "c3", "firing").await, "pending", "firing");
    moved(&cluster(&gw, "c2", "firing").await, "pending", "firing");
    assert!(suppressed_by(
        &pod(&gw, "team-a", "c3").await,
        "inhibit-pods"
    ));
    moved(&cluster(&gw, "c3", "resolved").await, "firing", "resolved");
    assert!(executed(&pod(&gw, "team-a", "c3").await));
    assert!(suppressed_by(
        &pod(&gw, "team-a", "c2").await,
        "inhibit-pods"
    ));
    assert_eq!(
        gw.metrics
            .render()
            .lines()
            .filter(|l| l.starts_with("acteon_rule_errors_total"))
            .count(),
        0,
        "no rule error"
    );
}

/// Deploys hold while their incident (an event with that fingerprint, any machine) is
/// `firing`; releases hold while the `freeze` event of `cluster-events` is firing (the
/// three-argument form, with a literal fingerprint). Per tenant, like the events.
const HOLD_WHILE_FIRING: &str = "---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {name: hold-deploys, namespace: ns}
spec:
  priority: 2
  condition:
    all:
      - {field: action.action_type, eq: deploy}
      - {call: event_in_state, args: [action.payload.incident, firing]}
  action: {type: suppress}
---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {name: hold-releases, namespace: ns}
spec:
  priority: 3
  condition:
    all:
      - {field: action.action_type, eq: release}
      - {call: event_in_state, args: [cluster-events, freeze, firing]}
  action: {type: suppress}
";

async fn event_in_state_flow(state: Arc<dyn StateStore>) {
    let config = format!("{PROVIDERS}{}{HOLD_WHILE_FIRING}", cluster_events(None));
    let gw = gateway_on(&config, state);
    let deploy =
        |tenant: &str, incident: Value| act(tenant, "deploy", json!({"incident": incident}), None);
    let incident = |fp: &str, status: &str| {
        let mut a = act("t", "cluster_down", json!({"cluster": fp}), Some(status));
        a["fingerprint"] = json!(fp);
        a
    };
    assert!(executed(&send(&gw, deploy("t", json!("inc-1"))).await));
    moved(
        &send(&gw, incident("inc-1", "firing")).await,
        "pending",
        "firing",
    );
    assert!(suppressed_by(
        &send(&gw, deploy("t", json!("inc-1"))).await,
        "hold-deploys"
    ));
    assert!(
        executed(&send(&gw, deploy("t", json!("inc-2"))).await),
        "another incident"
    );
    assert!(
        executed(&send(&gw, deploy("t", Value::Null)).await),
        "no incident field"
    );
    assert!(
        executed(&send(&gw, deploy("u", json!("inc-1"))).await),
        "another tenant"
    );
    let release = || act("t", "release", json!({}), None);
    assert!(executed(&send(&gw, release()).await));
    moved(
        &send(&gw, incident("freeze", "firing")).await,
        "pending",
        "firing",
    );
    assert!(suppressed_by(&send(&gw, release()).await, "hold-releases"));
    moved(
        &send(&gw, incident("inc-1", "resolved")).await,
        "firing",
        "resolved",
    );
    assert!(
        executed(&send(&gw, deploy("t", json!("inc-1"))).await),
        "resolved: no longer firing"
    );
    assert!(suppressed_by(&send(&gw, release()).await, "hold-releases"));
}

/// CEL expressions read state through the same leaves: `has_active_event` (an inhibition,
/// which moves of the machine's events maintain), `event_in_state` and `state.seen`, with
/// literals and action fields as arguments.
const CEL_STATE_RULES: &str = "---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {name: cel-inhibit, namespace: ns}
spec:
  priority: 2
  cel: 'action.action_type.startsWith(\"pod_\") && has_active_event(\"cluster-events\", action.payload.cluster)'
  action: {type: suppress}
---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {name: cel-hold, namespace: ns}
spec:
  priority: 3
  cel: 'action.action_type == \"deploy\" && (event_in_state(action.payload.incident, \"firing\") || event_in_state(\"cluster-events\", \"cel-freeze\", \"firing\"))'
  action: {type: suppress}
---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {name: cel-seen, namespace: ns}
spec:
  priority: 4
  cel: 'action.action_type == \"email\" && state.seen(action.payload.to)'
  action: {type: suppress}
---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {name: one-email, namespace: ns}
spec:
  priority: 5
  condition: {field: action.action_type, eq: email}
  action: {type: deduplicate, ttlSeconds: 60, key: \"{{action.payload.to}}\"}
";

async fn cel_state_flow(state: Arc<dyn StateStore>) {
    let config = format!("{PROVIDERS}{}{CEL_STATE_RULES}", cluster_events(None));
    let gw = gateway_on(&config, state);
    let pod = |cluster: &str| act("t", "pod_crash", json!({"cluster": cluster}), None);
    let deploy = |incident: &str| act("t", "deploy", json!({"incident": incident}), None);
    let email = |to: &str| act("t", "email", json!({"to": to}), None);
    let event = |fp: Option<&str>, cluster: &str, status: &str| {
        let mut a = act(
            "infra",
            "cluster_down",
            json!({"cluster": cluster}),
            Some(status),
        );
        if let Some(fp) = fp {
            a["tenant"] = json!("t");
            a["fingerprint"] = json!(fp);
        }
        a
    };
    assert!(executed(&send(&gw, pod("k1")).await));
    moved(
        &send(&gw, event(None, "k1", "firing")).await,
        "pending",
        "firing",
    );
    assert!(suppressed_by(&send(&gw, pod("k1")).await, "cel-inhibit"));
    assert!(executed(&send(&gw, pod("k2")).await), "another cluster");
    moved(
        &send(&gw, event(None, "k1", "resolved")).await,
        "firing",
        "resolved",
    );
    assert!(executed(&send(&gw, pod("k1")).await), "resolved");

    assert!(executed(&send(&gw, deploy("cel-inc-1")).await));
    moved(
        &send(&gw, event(Some("cel-inc-1"), "x", "firing")).await,
        "pending",
        "firing",
    );
    assert!(suppressed_by(
        &send(&gw, deploy("cel-inc-1")).await,
        "cel-hold"
    ));
    assert!(executed(&send(&gw, deploy("cel-inc-2")).await));
    moved(
        &send(&gw, event(Some("cel-freeze"), "y", "firing")).await,
        "pending",
        "firing",
    );
    assert!(
        suppressed_by(&send(&gw, deploy("cel-inc-2")).await, "cel-hold"),
        "the freeze"
    );

    assert!(executed(&send(&gw, email("cel-a@x")).await), "never seen");
    assert!(suppressed_by(
        &send(&gw, email("cel-a@x")).await,
        "cel-seen"
    ));
    assert!(executed(&send(&gw, email("cel-b@x")).await), "another key");
    let errors = gw
        .metrics
        .render()
        .lines()
        .filter(|l| l.starts_with("acteon_rule_errors_total"))
        .map(str::to_owned)
        .collect::<Vec<_>>();
    assert!(errors.is_empty(), "no rule errors: {errors:?}");
}

#[tokio::test]
async fn cel_expressions_read_state_like_condition_leaves() {
    cel_state_flow(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn pod_alerts_are_inhibited_while_their_cluster_event_is_active() {
    inhibition_flow(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn event_in_state_holds_while_the_event_is_in_that_state() {
    event_in_state_flow(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn redis_inhibition() {
    let url =
        std::env::var("ACTEON_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("acteon-test-{}", uuid::Uuid::new_v4().simple());
    let store = acteon_gateway::state::RedisStore::connect(&url, &prefix, Duration::from_secs(2))
        .await
        .unwrap_or_else(|e| panic!("Redis at {url} is needed (set ACTEON_TEST_REDIS_URL): {e}"));
    let store: Arc<dyn StateStore> = Arc::new(store);
    inhibition_flow(store.clone()).await;
    event_in_state_flow(store.clone()).await;
    cel_state_flow(store).await;
}

#[tokio::test]
async fn postgres_inhibition() {
    use sqlx::Connection;

    let url = std::env::var("ACTEON_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".into());
    // Named like the other tests' schemas, so a run that dies leaves one they clean up.
    let schema = format!(
        "acteon_test_{}_{}",
        acteon_gateway::state::unix_ms() / 1000,
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let store = acteon_gateway::state::PostgresStore::connect(&url, &schema)
        .await
        .unwrap_or_else(|e| {
            panic!("Postgres at {url} is needed (set ACTEON_TEST_POSTGRES_URL): {e}")
        });
    store.migrate().await.expect("migrates");
    let store: Arc<dyn StateStore> = Arc::new(store);
    inhibition_flow(store.clone()).await;
    event_in_state_flow(store.clone()).await;
    cel_state_flow(store).await;
    let mut conn = sqlx::PgConnection::connect(&url).await.expect("connects");
    let sql = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .expect("drops the test schema");
}

/// `has_active_event(machine, field)` is the inhibition on that one field; Acteon's
/// spelling of the leaf reads the metadata label.
#[tokio::test]
async fn has_active_event_reads_like_an_inhibition() {
    let config = format!(
        "{PROVIDERS}{}---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {{name: inhibit-by-label, namespace: ns}}
spec:
  priority: 2
  condition:
    all:
      - {{field: action.action_type, startsWith: pod_}}
      - {{call: has_active_event, args: [cluster-events, action.metadata.cluster]}}
  action: {{type: suppress}}
",
        cluster_events(None).replace("action.payload.cluster", "action.metadata.cluster")
    );
    let gw = gateway_on(&config, Arc::new(MemoryStore::new()));
    let labelled = |action_type: &str, cluster: &str, status: Option<&str>| {
        let mut a = act("t", action_type, json!({}), status);
        a["metadata"] = json!({"cluster": cluster});
        a
    };
    assert!(executed(
        &send(&gw, labelled("pod_oom", "east", None)).await
    ));
    moved(
        &send(&gw, labelled("cluster_down", "east", Some("firing"))).await,
        "pending",
        "firing",
    );
    assert!(suppressed_by(
        &send(&gw, labelled("pod_oom", "east", None)).await,
        "inhibit-by-label"
    ));
    assert!(executed(
        &send(&gw, labelled("pod_oom", "west", None)).await
    ));
}

/// The worker's timeout ends an event (terminal `expired`): its inhibition ends with it,
/// computed from the record of the action that last moved the event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_into_a_terminal_state_ends_the_inhibition() {
    let gw = gateway_on(&inhibition_config(Some(1)), Arc::new(MemoryStore::new()));
    let worker = acteon_gateway::worker::spawn(
        gw.clone(),
        acteon_gateway::worker::WorkerOptions {
            poll_interval: Duration::from_millis(50),
            ..Default::default()
        },
    );
    moved(&cluster(&gw, "c1", "firing").await, "pending", "firing");
    assert!(suppressed_by(&pod(&gw, "t", "c1").await, "inhibit-pods"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if executed(&pod(&gw, "t", "c1").await) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the timeout never ended the inhibition"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    worker.stop().await;
    // The event kept its record: listed with the alert's payload, in `expired`.
    let events = gw
        .state
        .list_events(
            &acteon_gateway::rules::state_machine::key_prefix("ns", None),
            10,
        )
        .await
        .expect("lists");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].state, "expired");
    let record: Value = serde_json::from_slice(&events[0].record).expect("json record");
    assert_eq!(record["payload"], json!({"cluster": "c1"}));
}

/// A move by hand (`PUT /v1/events/{fingerprint}/transition`) ends the inhibition too.
#[tokio::test]
async fn a_move_by_hand_ends_the_inhibition() {
    use acteon_gateway::http::extract::PathParam;
    use acteon_gateway::http::{AppState, lifecycle::Lifecycle, parked};
    use axum::extract::State;

    let gw = gateway_on(&inhibition_config(None), Arc::new(MemoryStore::new()));
    let fingerprint = match cluster(&gw, "c1", "firing").await {
        ActionOutcome::StateChanged { fingerprint, .. } => fingerprint,
        other => panic!("expected StateChanged, got {other:?}"),
    };
    assert!(suppressed_by(&pod(&gw, "t", "c1").await, "inhibit-pods"));
    let app = Arc::new(AppState {
        gateway: gw.clone(),
        body_limit: 1 << 20,
        body_timeout: Duration::from_secs(5),
        lifecycle: Arc::new(Lifecycle::new(&prometheus::Registry::new())),
        auth: None,
    });
    let mut headers = axum::http::HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    // No `machine`, as Acteon's SDKs send it: the machine holding the event is found.
    let body = json!({"namespace": "ns", "tenant": "infra", "to": "resolved"});
    let moved_by_hand = parked::transition(
        State(app),
        PathParam(fingerprint),
        None,
        headers,
        axum::body::Body::from(body.to_string()),
    )
    .await
    .expect("moves");
    let view = &moved_by_hand.0;
    assert_eq!(
        (view.previous_state.as_str(), view.new_state.as_str()),
        ("firing", "resolved")
    );
    assert_eq!(view.machine, "ns/cluster-events");
    assert!(executed(&pod(&gw, "t", "c1").await));
}

/// `stateSeen` reads the mark a `deduplicate` rule with the same key template sets;
/// `stateCounter` the passes of a throttle rule's window.
#[tokio::test]
async fn state_seen_and_state_counter() {
    let config = format!(
        "{PROVIDERS}---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {{name: seen-before, namespace: ns}}
spec:
  priority: 1
  condition:
    all:
      - {{field: action.action_type, eq: email}}
      - {{stateSeen: \"{{{{action.payload.to}}}}\"}}
  action: {{type: suppress}}
---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {{name: one-email, namespace: ns}}
spec:
  priority: 2
  condition: {{field: action.action_type, eq: email}}
  action: {{type: deduplicate, ttlSeconds: 60, key: \"{{{{action.payload.to}}}}\"}}
---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {{name: busy-service, namespace: ns}}
spec:
  priority: 1
  condition:
    all:
      - {{field: action.action_type, eq: page}}
      - {{stateCounter: pager, key: \"{{{{action.payload.service}}}}\", gte: 2}}
  action: {{type: reroute, targetProvider: q}}
---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {{name: pager, namespace: ns}}
spec:
  priority: 2
  condition: {{field: action.action_type, eq: page}}
  action: {{type: throttle, maxCount: 5, windowSeconds: 60, key: \"{{{{action.payload.service}}}}\"}}
---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {{name: quiet-window, namespace: ns}}
spec:
  priority: 0
  condition:
    all:
      - {{field: action.action_type, eq: page}}
      - {{field: action.payload.quiet, eq: true}}
      - {{stateCounter: pager, key: \"{{{{action.payload.service}}}}\", windowSeconds: 1, eq: 0}}
  action: {{type: suppress}}
"
    );
    let gw = gateway_on(&config, Arc::new(MemoryStore::new()));
    let email = |to: &str| act("t", "email", json!({"to": to}), None);
    assert!(executed(&send(&gw, email("a@x")).await), "never seen");
    assert!(
        suppressed_by(&send(&gw, email("a@x")).await, "seen-before"),
        "the dedup mark of the same key is seen"
    );
    assert!(executed(&send(&gw, email("b@x")).await), "another key");
    // A key template that cannot be rendered: a rule error, the rule does not match.
    assert!(executed(
        &send(&gw, act("t", "email", json!({}), None)).await
    ));
    assert!(
        gw.metrics
            .render()
            .contains("acteon_rule_errors_total{reason=\"missing_key\",rule=\"ns/seen-before\"} 1")
    );
    // Marks are per tenant, as the dedup rule's.
    assert!(executed(
        &send(&gw, act("u", "email", json!({"to": "a@x"}), None)).await
    ));

    let page = |service: &str| act("t", "page", json!({"service": service}), None);
    assert!(executed(&send(&gw, page("db")).await), "count 0");
    assert!(executed(&send(&gw, page("db")).await), "count 1");
    assert!(
        matches!(send(&gw, page("db")).await, ActionOutcome::Rerouted { new_provider, .. } if new_provider == "q"),
        "count 2: busy"
    );
    assert!(
        executed(&send(&gw, page("web")).await),
        "another key's window"
    );
    // Over the last second only: the two passes were just now, so not 0.
    let quiet = act("t", "page", json!({"service": "db", "quiet": true}), None);
    assert!(!suppressed_by(
        &send(&gw, quiet.clone()).await,
        "quiet-window"
    ));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(suppressed_by(&send(&gw, quiet).await, "quiet-window"));
}

/// Rules that read no state cost no read; a dispatch whose candidate rules read state makes
/// exactly one read whatever the number of leaves, none when their other leaves decide
/// them; a failed read answers 503 (an error).
#[tokio::test]
async fn reads_are_one_call_and_only_when_needed() {
    let plain = Counting::new(Arc::new(MemoryStore::new()));
    let gw = gateway_on(
        &format!(
            "{PROVIDERS}---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {{name: dedup, namespace: ns}}
spec:
  condition: {{field: action.action_type, eq: pod_crash}}
  action: {{type: deduplicate, ttlSeconds: 60}}
"
        ),
        plain.clone(),
    );
    for _ in 0..3 {
        pod(&gw, "t", "c1").await;
    }
    assert_eq!(plain.reads(), 0, "no state leaf: no read");

    let counting = Counting::new(Arc::new(MemoryStore::new()));
    let config = format!(
        "{PROVIDERS}{}---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {{name: inhibit-pods, namespace: ns}}
spec:
  priority: 2
  condition:
    all:
      - {{field: action.action_type, startsWith: pod_}}
      - any:
          - {{field: action.payload.maintenance, eq: true}}
          - inhibitedBy: {{stateMachine: cluster-events, equal: [action.payload.cluster]}}
          - {{stateSeen: \"{{{{action.payload.pod}}}}\"}}
          - {{stateCounter: pod-throttle, gt: 100}}
  action: {{type: suppress}}
---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {{name: pod-throttle, namespace: ns}}
spec:
  priority: 3
  condition: {{field: action.action_type, eq: pod_crash}}
  action: {{type: throttle, maxCount: 1000, windowSeconds: 60}}
",
        cluster_events(None)
    );
    let gw = gateway_on(&config, counting.clone());
    assert!(executed(&pod(&gw, "t", "c1").await));
    assert_eq!(counting.reads(), 1, "three leaves, one call");
    // The rule cannot match a cluster action (not indexed: `startsWith`), nor can it miss
    // a pod alert in maintenance: no read either way.
    moved(&cluster(&gw, "c1", "firing").await, "pending", "firing");
    assert_eq!(counting.reads(), 1, "decided without state: no read");
    let maintenance = act(
        "t",
        "pod_crash",
        json!({"cluster": "c9", "maintenance": true}),
        None,
    );
    assert!(suppressed_by(&send(&gw, maintenance).await, "inhibit-pods"));
    assert_eq!(counting.reads(), 1, "decided without state: no read");
    assert!(suppressed_by(&pod(&gw, "t", "c1").await, "inhibit-pods"));
    assert_eq!(counting.reads(), 2);
    counting.fail_reads.store(true, Ordering::SeqCst);
    match gw
        .dispatch(
            common::action(act("t", "pod_crash", json!({"cluster": "c1"}), None)),
            false,
        )
        .await
    {
        Err(DispatchError::State(_)) => {}
        other => panic!("a failed read is the dispatch's error (503), got {other:?}"),
    }
    assert!(
        gw.metrics
            .render()
            .contains("acteon_state_errors_total{operation=\"read_state\"} 1"),
        "{}",
        gw.metrics.render()
    );
}

/// A released action (here a scheduled one) reads the state of the rules after the one
/// that parked it when it resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_actions_read_state_when_they_resume() {
    let config = format!(
        "{}---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {{name: later, namespace: ns}}
spec:
  priority: 0
  condition: {{field: action.payload.later, eq: true}}
  action: {{type: schedule, delaySeconds: 1}}
",
        inhibition_config(None)
    );
    let gw = gateway_on(&config, Arc::new(MemoryStore::new()));
    let worker = acteon_gateway::worker::spawn(
        gw.clone(),
        acteon_gateway::worker::WorkerOptions {
            poll_interval: Duration::from_millis(50),
            ..Default::default()
        },
    );
    moved(&cluster(&gw, "c1", "firing").await, "pending", "firing");
    let later = act(
        "t",
        "pod_crash",
        json!({"cluster": "c1", "later": true}),
        None,
    );
    assert!(matches!(
        send(&gw, later).await,
        ActionOutcome::Scheduled { .. }
    ));
    let needle = "acteon_released_total{kind=\"schedule\",outcome=\"suppressed\"} 1";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !gw.metrics.render().contains(needle) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not released as suppressed: {}",
            gw.metrics.render()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    worker.stop().await;
}

/// `stateSeen` with `withinSeconds` holds only while the mark is that young: a repeat at
/// once is suppressed by it, a repeat after the window falls through to the deduplicate
/// rule (the mark still lives).
#[tokio::test]
async fn state_seen_within_reads_the_age_of_the_mark() {
    let config = format!(
        "{PROVIDERS}---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {{name: just-sent, namespace: ns}}
spec:
  priority: 1
  condition:
    all:
      - {{field: action.action_type, eq: email}}
      - {{stateSeen: \"{{{{action.payload.to}}}}\", withinSeconds: 1}}
  action: {{type: suppress}}
---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {{name: one-email, namespace: ns}}
spec:
  priority: 2
  condition: {{field: action.action_type, eq: email}}
  action: {{type: deduplicate, ttlSeconds: 60, key: \"{{{{action.payload.to}}}}\"}}
"
    );
    let gw = gateway_on(&config, Arc::new(MemoryStore::new()));
    let email = || act("t", "email", json!({"to": "a@x"}), None);
    assert!(executed(&send(&gw, email()).await));
    assert!(suppressed_by(&send(&gw, email()).await, "just-sent"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    match send(&gw, email()).await {
        ActionOutcome::Deduplicated => {}
        other => panic!("older than the window: deduplicated, got {other:?}"),
    }
}
