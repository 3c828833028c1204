//! W3C trace context end to end, through the real binary: a dispatch's `traceparent` is
//! continued on the provider's request (same trace, new span id), by deferred work (a
//! schedule, a group, a chain step, a state-machine timeout), and in the spans exported
//! to a local OTLP/HTTP receiver; a bad header starts a fresh trace.

use std::sync::Arc;
use std::time::{Duration, Instant};

use acteon_gateway::pipeline::Gateway;
use acteon_gateway::trace::TraceContext;
use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::common::{self, Recorded, Recorder, Server};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

fn traceparent(trace: &str) -> String {
    format!("00-{trace}-{PARENT}-01")
}

/// `traceparent` of a recorded request, split: (trace id, span id, flags).
fn parts(r: &Recorded) -> (String, String, String) {
    let tp = r
        .headers
        .get("traceparent")
        .unwrap_or_else(|| panic!("{}: no traceparent", r.path))
        .to_str()
        .expect("ascii");
    assert_eq!(tp.len(), 55, "{tp}");
    let f: Vec<&str> = tp.split('-').collect();
    assert_eq!((f.len(), f[0]), (4, "00"), "{tp}");
    for id in &f[1..] {
        assert!(
            id.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert!(id.bytes().any(|c| c != b'0'), "all-zero id in {tp}");
    }
    (f[1].to_owned(), f[2].to_owned(), f[3].to_owned())
}

fn provider(name: &str, url: &str) -> String {
    format!(
        "---\napiVersion: acteon.dev/v1alpha1\nkind: Provider\nmetadata: {{name: {name}, namespace: tr}}\nspec:\n  type: webhook\n  webhook: {{url: \"{url}\"}}\n  timeoutSeconds: 5\n  retry: {{maxAttempts: 1}}\n"
    )
}

fn rule(name: &str, action_type: &str, action: &str) -> String {
    format!(
        "---\napiVersion: acteon.dev/v1alpha1\nkind: Rule\nmetadata: {{name: {name}, namespace: tr}}\nspec:\n  priority: 1\n  condition: {{field: action.action_type, eq: {action_type}}}\n  action: {action}\n"
    )
}

/// Providers `hook` (→ `/deliver`), `grouped` (→ `/grouped`), `step` (→ `/step`),
/// `notify` (→ `/notify`) and `held` (→ `/held`); action types `later` (scheduled 1 s),
/// `ev` (grouped 1 s), `held` (grouped 10 min: flushed by hand),
/// `flow` (a two-step chain) and `alert` (a state machine whose `acked` state times out
/// after 1 s, notifying).
fn config(hook: &Recorder) -> String {
    [
        provider("hook", &hook.url("/deliver")),
        provider("grouped", &hook.url("/grouped")),
        provider("step", &hook.url("/step")),
        provider("notify", &hook.url("/notify")),
        provider("held", &hook.url("/held")),
        rule("later", "later", "{type: schedule, delaySeconds: 1}"),
        rule(
            "ev",
            "ev",
            "{type: group, groupBy: [payload.key], groupWaitSeconds: 1, groupIntervalSeconds: 60, notifyProvider: grouped}",
        ),
        rule(
            "held",
            "held",
            "{type: group, groupBy: [payload.key], groupWaitSeconds: 600, notifyProvider: held}",
        ),
        rule("flow", "flow", "{type: chain, chain: flow}"),
        rule(
            "alert",
            "alert",
            "{type: stateMachine, stateMachine: acks, fingerprintFields: [payload.id]}",
        ),
        "---\napiVersion: acteon.dev/v1alpha1\nkind: Chain\nmetadata: {name: flow, namespace: tr}\nspec:\n  steps:\n    - {name: one, provider: step}\n    - {name: two, provider: step}\n".to_owned(),
        "---\napiVersion: acteon.dev/v1alpha1\nkind: StateMachine\nmetadata: {name: acks, namespace: tr}\nspec:\n  states: [open, acked, expired]\n  initialState: open\n  terminalStates: [expired]\n  notifyProvider: notify\n  transitions:\n    - {from: open, to: acked}\n    - {from: acked, to: expired, notify: true}\n  timeouts:\n    - {state: acked, afterSeconds: 1, transitionTo: expired}\n".to_owned(),
    ]
    .concat()
}

/// A gateway on the memory backend serving [`config`], with `args` and `env` added.
fn start(hook: &Recorder, args: &[&str], env: &[(&str, &str)]) -> Server {
    let dir = std::env::temp_dir().join(format!("acteon-trace-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("config.yaml");
    std::fs::write(&file, config(hook)).expect("config");
    let file = file.to_str().expect("utf-8").to_owned();
    let mut all = vec!["--config", &file, "--worker-poll-ms", "50"];
    all.extend_from_slice(args);
    Server::start_with(&all, env, None)
}

fn action(action_type: &str, payload: Value) -> Value {
    json!({"namespace": "tr", "tenant": "t", "provider": "hook", "action_type": action_type,
        "payload": payload})
}

/// POSTs `body` to `path` with the given headers; the answer must be 200.
async fn post(server: &Server, path: &str, headers: &[(&str, &str)], body: &Value) -> Value {
    let mut req = reqwest::Client::new().post(server.url(path)).json(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("sent");
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.expect("json");
    assert_eq!(status, 200, "{body}");
    body
}

/// The requests `path` received once there are `n`, within `limit`.
async fn wait_for(hook: &Recorder, path: &str, n: usize, limit: Duration) -> Vec<Recorded> {
    let deadline = Instant::now() + limit;
    loop {
        let got: Vec<Recorded> = hook
            .requests
            .lock()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect();
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{path}: {} of {n} requests within {limit:?}",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_dispatchs_traceparent_reaches_the_webhook_with_a_new_span_id() {
    let hook = Recorder::start().await;
    let gw = start(&hook, &[], &[]);
    let tp = traceparent(TRACE);
    let headers = [
        ("traceparent", tp.as_str()),
        ("tracestate", "vendor=abc, other=x"),
    ];
    let out = post(&gw, "/v1/dispatch", &headers, &action("now", json!({}))).await;
    assert!(out.get("Executed").is_some(), "{out}");
    let got = wait_for(&hook, "/deliver", 1, Duration::from_secs(5)).await;
    let (trace, span, flags) = parts(&got[0]);
    assert_eq!(trace, TRACE);
    assert_ne!(
        span, PARENT,
        "the provider's request is a child, not the caller's span"
    );
    assert_eq!(flags, "01");
    assert_eq!(got[0].headers["tracestate"], "vendor=abc,other=x");

    // A malformed header is ignored: a fresh, valid trace, never an error.
    for bad in [
        "00-zzf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        &"0".repeat(4000),
    ] {
        let headers = [("traceparent", bad), ("tracestate", "vendor=abc")];
        post(&gw, "/v1/dispatch", &headers, &action("now", json!({}))).await;
    }
    // And none at all: a new trace per dispatch.
    post(&gw, "/v1/dispatch", &[], &action("now", json!({}))).await;
    post(&gw, "/v1/dispatch", &[], &action("now", json!({}))).await;
    let got = wait_for(&hook, "/deliver", 7, Duration::from_secs(5)).await;
    let fresh: Vec<String> = got[1..].iter().map(|r| parts(r).0).collect();
    for (r, trace) in got[1..].iter().zip(&fresh) {
        assert_ne!(trace, TRACE);
        assert!(
            r.headers.get("tracestate").is_none(),
            "no state without a parent"
        );
    }
    let distinct: std::collections::BTreeSet<&String> = fresh.iter().collect();
    assert_eq!(
        distinct.len(),
        fresh.len(),
        "one new trace per dispatch: {fresh:?}"
    );

    // A batch: every action continues the request's trace, each with its own span.
    let batch = json!([
        action("now", json!({"n": 1})),
        action("now", json!({"n": 2}))
    ]);
    let tp2 = traceparent("0af7651916cd43dd8448eb211c80319c");
    post(&gw, "/v1/dispatch/batch", &[("traceparent", &tp2)], &batch).await;
    let got = wait_for(&hook, "/deliver", 9, Duration::from_secs(5)).await;
    let (a, b) = (parts(&got[7]), parts(&got[8]));
    assert_eq!(a.0, "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(b.0, a.0);
    assert_ne!(a.1, b.1);
}

#[tokio::test]
async fn deferred_work_continues_the_trace_it_was_deferred_in() {
    let hook = Recorder::start().await;
    let gw = start(&hook, &[], &[]);
    let traces = [
        "11111111111111111111111111111111",
        "22222222222222222222222222222222",
        "33333333333333333333333333333333",
        "44444444444444444444444444444444",
        "55555555555555555555555555555555",
    ];
    let send = |i: usize, body: Value| {
        let tp = traceparent(traces[i]);
        let gw = &gw;
        async move { post(gw, "/v1/dispatch", &[("traceparent", &tp)], &body).await }
    };
    let out = send(0, action("later", json!({}))).await;
    assert!(out.get("Scheduled").is_some(), "{out}");
    // Two events of one group: the notification continues the first one's trace.
    send(1, action("ev", json!({"key": "k"}))).await;
    send(2, action("ev", json!({"key": "k"}))).await;
    send(3, action("flow", json!({}))).await;
    let mut alert = action("alert", json!({"id": "a1"}));
    alert["status"] = json!("acked");
    let out = send(4, alert).await;
    assert_eq!(out["StateChanged"]["new_state"], "acked", "{out}");

    let scheduled = wait_for(&hook, "/deliver", 1, Duration::from_secs(10)).await;
    assert_eq!(parts(&scheduled[0]).0, traces[0], "scheduled action");
    let grouped = wait_for(&hook, "/grouped", 1, Duration::from_secs(10)).await;
    assert_eq!(grouped[0].body["event_count"], 2, "{}", grouped[0].body);
    assert_eq!(parts(&grouped[0]).0, traces[1], "group notification");
    let steps = wait_for(&hook, "/step", 2, Duration::from_secs(10)).await;
    let (one, two) = (parts(&steps[0]), parts(&steps[1]));
    assert_eq!(
        (one.0.as_str(), two.0.as_str()),
        (traces[3], traces[3]),
        "chain steps"
    );
    assert_ne!(one.1, two.1);
    let timed_out = wait_for(&hook, "/notify", 1, Duration::from_secs(10)).await;
    assert_eq!(parts(&timed_out[0]).0, traces[4], "state-machine timeout");

    // A group flushed by hand continues the trace of the request that flushed it.
    send(0, action("held", json!({"key": "h"}))).await;
    let client = reqwest::Client::new();
    let (_, groups) = common::get_json(&client, &gw.url("/v1/groups?namespace=tr")).await;
    let key = groups["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|g| g["labels"]["payload.key"] == "h")
        .and_then(|g| g["group_key"].as_str())
        .unwrap_or_else(|| panic!("group of `held`: {groups}"))
        .to_owned();
    let mut url = reqwest::Url::parse(&gw.url("/v1/groups")).expect("url");
    url.path_segments_mut().expect("base").push(&key);
    let flusher = "66666666666666666666666666666666";
    let resp = client
        .delete(url)
        .header("traceparent", traceparent(flusher))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 200);
    let held = wait_for(&hook, "/held", 1, Duration::from_secs(10)).await;
    assert_eq!(parts(&held[0]).0, flusher, "group flushed by hand");
    for r in scheduled
        .iter()
        .chain(&grouped)
        .chain(&steps)
        .chain(&timed_out)
    {
        assert_ne!(parts(r).1, PARENT, "{}: a span of its own", r.path);
    }
}

#[tokio::test]
async fn a_dead_letters_replay_continues_the_failed_deliverys_trace() {
    let hook = Recorder::start().await;
    let gw = start(&hook, &[], &[]);
    *hook.script.lock() = vec![503];
    let tp = traceparent(TRACE);
    let out = post(
        &gw,
        "/v1/dispatch",
        &[("traceparent", &tp)],
        &action("now", json!({})),
    )
    .await;
    assert!(out.get("Failed").is_some(), "{out}");
    let client = reqwest::Client::new();
    let (_, list) = common::get_json(&client, &gw.url("/v1/dlq?namespace=tr")).await;
    let entry = &list["entries"][0];
    assert_eq!(
        entry["action"]["trace_context"]["traceparent"]
            .as_str()
            .map(|t| &t[3..35]),
        Some(TRACE),
        "the dead letter keeps the context: {entry}"
    );
    let id = entry["id"].as_str().expect("id");
    // The replay request carries another trace: the original one is continued.
    let url = gw.url(&format!("/v1/dlq/{id}/replay?namespace=tr&tenant=t"));
    let other = traceparent("77777777777777777777777777777777");
    let resp = client
        .post(url)
        .header("traceparent", other)
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 200);
    let got = wait_for(&hook, "/deliver", 2, Duration::from_secs(5)).await;
    let (first, replayed) = (parts(&got[0]), parts(&got[1]));
    assert_eq!((first.0.as_str(), replayed.0.as_str()), (TRACE, TRACE));
    assert_ne!(first.1, replayed.1);
}

#[tokio::test]
async fn propagation_can_be_limited_to_incoming_traces_or_turned_off() {
    let hook = Recorder::start().await;
    let incoming = start(&hook, &["--trace-propagation", "incoming"], &[]);
    let tp = traceparent(TRACE);
    post(&incoming, "/v1/dispatch", &[], &action("now", json!({}))).await;
    post(
        &incoming,
        "/v1/dispatch",
        &[("traceparent", &tp)],
        &action("now", json!({})),
    )
    .await;
    let got = wait_for(&hook, "/deliver", 2, Duration::from_secs(5)).await;
    assert!(got[0].headers.get("traceparent").is_none());
    assert_eq!(parts(&got[1]).0, TRACE);
    drop(incoming);

    let off = start(&hook, &[], &[("ACTEON_TRACE_PROPAGATION", "off")]);
    post(
        &off,
        "/v1/dispatch",
        &[("traceparent", &tp)],
        &action("now", json!({})),
    )
    .await;
    let got = wait_for(&hook, "/deliver", 3, Duration::from_secs(5)).await;
    assert!(got[2].headers.get("traceparent").is_none());
}

// ---------------------------------------------------------------------------------------
// OTLP export

/// A local OTLP/HTTP receiver (JSON encoding): keeps every span it is sent.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Value>>>,
    resources: Arc<Mutex<Vec<Value>>>,
}

impl Collector {
    async fn start() -> (Collector, String) {
        use axum::extract::State;
        use axum::http::{HeaderMap, StatusCode};
        async fn traces(
            State(c): State<Collector>,
            headers: HeaderMap,
            body: axum::body::Bytes,
        ) -> (StatusCode, &'static str) {
            let json = headers
                .get("content-type")
                .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
            let Ok(doc) = serde_json::from_slice::<Value>(&body) else {
                return (StatusCode::BAD_REQUEST, "{}");
            };
            assert!(json, "JSON export is sent as application/json");
            for rs in doc["resourceSpans"].as_array().into_iter().flatten() {
                c.resources.lock().push(rs["resource"].clone());
                for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                    let spans = ss["spans"].as_array().into_iter().flatten();
                    c.spans.lock().extend(spans.cloned());
                }
            }
            (StatusCode::OK, "{}")
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let c = Collector::default();
        let app = axum::Router::new()
            .route("/v1/traces", axum::routing::post(traces))
            .with_state(c.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (c, base)
    }

    /// The spans of `trace` once `pred` holds for them, within `limit`.
    async fn wait(
        &self,
        trace: &str,
        limit: Duration,
        pred: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let spans: Vec<Value> = self
                .spans
                .lock()
                .iter()
                .filter(|s| {
                    s["traceId"]
                        .as_str()
                        .is_some_and(|t| t.eq_ignore_ascii_case(trace))
                })
                .cloned()
                .collect();
            if pred(&spans) {
                return spans;
            }
            assert!(Instant::now() < deadline, "spans of {trace}: {spans:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn named<'a>(spans: &'a [Value], name: &str) -> Vec<&'a Value> {
    spans.iter().filter(|s| s["name"] == name).collect()
}

fn id(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_ascii_lowercase()
}

#[tokio::test]
async fn spans_are_exported_over_otlp_and_link_up_with_the_providers_request() {
    let hook = Recorder::start().await;
    let (collector, base) = Collector::start().await;
    let gw = start(
        &hook,
        &["--otlp-endpoint", &base, "--otlp-protocol", "http/json"],
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
    );
    let tp = traceparent(TRACE);
    post(
        &gw,
        "/v1/dispatch",
        &[("traceparent", &tp)],
        &action("now", json!({})),
    )
    .await;
    post(
        &gw,
        "/v1/dispatch",
        &[("traceparent", &tp)],
        &action("later", json!({})),
    )
    .await;
    let got = wait_for(&hook, "/deliver", 2, Duration::from_secs(10)).await;

    let spans = collector
        .wait(TRACE, Duration::from_secs(15), |s| {
            named(s, "dispatch").len() == 2
                && named(s, "provider request").len() == 2
                && !named(s, "fire_schedule").is_empty()
        })
        .await;
    let dispatches = named(&spans, "dispatch");
    for d in &dispatches {
        assert_eq!(
            id(&d["parentSpanId"]),
            PARENT,
            "the caller's span is the parent"
        );
        let attrs = d["attributes"].to_string();
        assert!(
            attrs.contains("acteon.namespace") && attrs.contains("\"tr\""),
            "{attrs}"
        );
        assert!(
            !attrs.to_ascii_lowercase().contains("traceparent"),
            "no headers: {attrs}"
        );
    }
    // The span id each request carried is the id of an exported client span, whose
    // parent is the dispatch (or the worker's task, for the scheduled action).
    let requests = named(&spans, "provider request");
    let parents: Vec<String> = dispatches
        .iter()
        .chain(&named(&spans, "fire_schedule"))
        .map(|s| id(&s["spanId"]))
        .collect();
    for r in &got {
        let sent = parts(r).1;
        let span = requests
            .iter()
            .find(|s| id(&s["spanId"]) == sent)
            .unwrap_or_else(|| panic!("no exported span {sent}: {requests:#?}"));
        assert!(parents.contains(&id(&span["parentSpanId"])), "{span:#}");
    }
    // The worker's span is named after its task.
    let worker = named(&spans, "fire_schedule")[0];
    assert!(
        dispatches
            .iter()
            .any(|d| id(&d["spanId"]) == id(&worker["parentSpanId"])),
        "the worker's task continues the dispatch that scheduled it"
    );
    let resources = collector.resources.lock().clone();
    assert!(
        resources
            .iter()
            .any(|r| r.to_string().contains("acteon-gateway")),
        "service.name: {resources:?}"
    );
}

#[tokio::test]
async fn queued_spans_are_sent_on_sigterm() {
    let hook = Recorder::start().await;
    let (collector, base) = Collector::start().await;
    // Batches every minute: only the shutdown flush can send these spans in time.
    let mut gw = start(
        &hook,
        &["--otlp-endpoint", &base, "--shutdown-delay-seconds", "0"],
        &[
            ("OTEL_BSP_SCHEDULE_DELAY", "60000"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ],
    );
    let tp = traceparent(TRACE);
    post(
        &gw,
        "/v1/dispatch",
        &[("traceparent", &tp)],
        &action("now", json!({})),
    )
    .await;
    wait_for(&hook, "/deliver", 1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        collector.spans.lock().is_empty(),
        "nothing sent before the flush"
    );
    gw.terminate();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = gw.child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "the gateway did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
    let spans = collector
        .wait(TRACE, Duration::from_secs(1), |s| {
            !named(s, "dispatch").is_empty()
        })
        .await;
    assert_eq!(named(&spans, "provider request").len(), 1);
}

// ---------------------------------------------------------------------------------------
// Providers that share `send_json`, in process

/// A gateway with one Discord provider whose (sealed) webhook URL points at `peer`.
fn discord_gateway(peer: &Recorder) -> Gateway {
    let yaml = "apiVersion: acteon.dev/v1alpha1\nkind: Provider\nmetadata: {name: dc, namespace: ns}\nspec:\n  type: discord\n  discord: {webhookUrlSecretRef: {name: dc, key: url}}\n  retry: {maxAttempts: 1}\n";
    let url = peer.url("/api/webhooks/1/token");
    crate::providers::gateway_with_secrets(yaml, &[("dc", "url", url.as_str())])
}

#[tokio::test]
async fn send_json_providers_carry_the_actions_trace() {
    let peer = Recorder::start().await;
    let gw = discord_gateway(&peer);
    let mut a = common::action(json!({"namespace": "ns", "tenant": "t", "provider": "dc",
        "action_type": "a", "payload": {"content": "hi"}}));
    let ctx = TraceContext::new_root();
    a.trace = Some(ctx.clone());
    gw.dispatch(a, false).await.expect("dispatched");
    let got = wait_for(&peer, "/api/webhooks/1/token", 1, Duration::from_secs(5)).await;
    let (trace, span, _) = parts(&got[0]);
    assert_eq!(trace, ctx.trace_id_hex());
    assert_ne!(span, ctx.traceparent()[36..52]);
    // Without a context, nothing is invented in process (the HTTP layer decides that).
    let a = common::action(json!({"namespace": "ns", "tenant": "t", "provider": "dc",
        "action_type": "a", "payload": {"content": "hi"}}));
    gw.dispatch(a, false).await.expect("dispatched");
    let got = wait_for(&peer, "/api/webhooks/1/token", 2, Duration::from_secs(5)).await;
    assert!(got[1].headers.get("traceparent").is_none());
}
