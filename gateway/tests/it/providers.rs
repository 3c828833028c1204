//! The `slack`, `pagerduty`, `email` and `discord` providers through the whole gateway (sealed
//! credentials, the pipeline, metrics), each against a local peer speaking its protocol:
//! HTTP servers that check requests the way Slack and PagerDuty do and answer with their
//! success and error shapes, and a real SMTP server (Debian's aiosmtpd, with STARTTLS and
//! AUTH). Each: what is sent, success, a non-retryable error (one attempt), a retryable one
//! then success, a retry hint, and no credential in errors, metrics or the debug log.

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use acteon_api::compile::{CompileOptions, compile, parse_text};
use acteon_channel::seal::SealKey;
use acteon_gateway::config::{LiveConfig, Runtime};
use acteon_gateway::metrics::Metrics;
use acteon_gateway::outcome::{ActionError, ActionOutcome, ProviderResponse};
use acteon_gateway::pipeline::{Gateway, GatewayOptions};
use acteon_gateway::state::MemoryStore;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::common::{action, free_port};

mod opsgenie;
mod teams;
mod templates;

// ---------------------------------------------------------------------------------------
// The gateway, with sealed credentials, and what it shows

/// A gateway from `yaml` whose `secretKeyRef`s (`name`/`key` → value) are sealed in the
/// snapshot, as the operator publishes them.
pub(crate) fn gateway_with_secrets(yaml: &str, secrets: &[(&str, &str, &str)]) -> Gateway {
    let docs = parse_text("test.yaml", yaml).expect("test YAML parses");
    let compiled = compile(&docs, &CompileOptions::default());
    assert!(
        compiled.rejections.is_empty(),
        "rejected: {:?}",
        compiled.rejections
    );
    let mut snapshot = compiled.snapshot;
    let key = SealKey::generate();
    for (name, k, value) in secrets {
        let id = acteon_api::snapshot::secret_id(
            Some("ns"),
            &acteon_api::crd::SecretKeyRef {
                name: (*name).into(),
                key: (*k).into(),
            },
        );
        snapshot
            .secrets
            .insert(id.clone(), key.seal(&id, value.as_bytes()));
    }
    snapshot.seal();
    let runtime = Runtime::build(snapshot, &reqwest::Client::new(), Some(&key))
        .unwrap_or_else(|e| panic!("runtime builds: {e}"));
    Gateway {
        config: LiveConfig::new(runtime),
        state: Arc::new(MemoryStore::new()),
        metrics: Arc::new(Metrics::new()),
        options: GatewayOptions::default(),
        confirmer: Default::default(),
        delivered: Default::default(),
        chain_activity: Default::default(),
        guards: Default::default(),
        audit: None,
    }
}

/// The gateway's debug log while a test runs (this thread: tests run on a current-thread
/// runtime).
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn capture() -> (Log, tracing::subscriber::DefaultGuard) {
        let log = Log::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (log, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock()).into_owned()
    }
}

fn act(provider: &str, payload: Value) -> acteon_gateway::action::Action {
    action(json!({
        "namespace": "ns", "tenant": "t", "provider": provider,
        "action_type": "alert", "payload": payload
    }))
}

async fn executed(gw: &Gateway, a: acteon_gateway::action::Action) -> ProviderResponse {
    match gw.dispatch(a, false).await.expect("dispatch answers") {
        ActionOutcome::Executed(r) => r,
        other => panic!("expected Executed, got {other:?}"),
    }
}

async fn failed(gw: &Gateway, a: acteon_gateway::action::Action) -> ActionError {
    match gw.dispatch(a, false).await.expect("dispatch answers") {
        ActionOutcome::Failed(e) => e,
        other => panic!("expected Failed, got {other:?}"),
    }
}

/// None of `secrets` in what `GET /v1/config` answers for `gw`.
async fn assert_not_in_config(secrets: &[&str], gw: Gateway) {
    let app = acteon_gateway::http::AppState {
        gateway: Arc::new(gw),
        body_limit: 1 << 20,
        body_timeout: Duration::from_secs(5),
        lifecycle: Arc::new(acteon_gateway::http::lifecycle::Lifecycle::new(
            &prometheus::Registry::new(),
        )),
        auth: None,
    };
    let axum::Json(info) = acteon_gateway::http::ops::config(State(Arc::new(app))).await;
    let text = serde_json::to_string(&info).expect("serialises");
    assert!(text.contains("\"providers\""), "{text}");
    for s in secrets {
        assert!(!text.contains(s), "/v1/config shows {s:?}: {text}");
    }
}

/// None of `secrets` in the error, the metrics or the log.
fn assert_not_shown(secrets: &[&str], error: &ActionError, gw: &Gateway, log: &Log) {
    let metrics = gw.metrics.render();
    let log = log.text();
    assert!(!log.is_empty(), "the log was captured");
    for s in secrets {
        for (what, text) in [
            ("error", format!("{error:?}")),
            ("metrics", metrics.clone()),
            ("log", log.clone()),
        ] {
            assert!(!text.contains(s), "{what} shows {s:?}: {text}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// An HTTP peer: checks requests as the real service does, answers as scripted

/// How the peer answers one request.
#[derive(Clone, Debug)]
enum Answer {
    /// As the real service answers a request like this one (success when it is right).
    Real,
    /// This status, these headers and this body.
    Raw(u16, Vec<(&'static str, &'static str)>, &'static str),
}

#[derive(Clone, Debug)]
struct Seen {
    path: String,
    at: Instant,
    headers: HeaderMap,
    body: Value,
}

#[derive(Clone, Copy)]
enum Protocol {
    Slack,
    PagerDuty,
    Discord,
    Teams,
    Opsgenie,
}

#[derive(Clone)]
struct Peer {
    protocol: Protocol,
    secret: &'static str,
    script: Arc<Mutex<VecDeque<Answer>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    base: String,
}

impl Peer {
    async fn start(protocol: Protocol, secret: &'static str, script: Vec<Answer>) -> Peer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let peer = Peer {
            protocol,
            secret,
            script: Arc::new(Mutex::new(script.into())),
            seen: Arc::default(),
            base: format!("http://{addr}"),
        };
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(peer.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        peer
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }
}

async fn handle(State(peer): State<Peer>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    peer.seen.lock().push(Seen {
        path: uri.path().to_owned(),
        at: Instant::now(),
        headers: headers.clone(),
        body: parsed.clone(),
    });
    let answer = peer.script.lock().pop_front().unwrap_or(Answer::Real);
    match answer {
        Answer::Raw(status, hdrs, body) => {
            let mut r = (StatusCode::from_u16(status).expect("status"), body).into_response();
            for (k, v) in hdrs {
                r.headers_mut().insert(k, v.parse().expect("header value"));
            }
            r
        }
        Answer::Real => match peer.protocol {
            Protocol::Slack => slack_answer(&peer, uri.path(), &headers, &parsed),
            Protocol::PagerDuty => pagerduty_answer(&peer, uri.path(), &parsed),
            Protocol::Discord => discord_answer(&peer, &uri, &parsed),
            Protocol::Teams => teams::answer(&peer, &uri, &parsed),
            Protocol::Opsgenie => opsgenie::answer(&peer, &uri, &headers, &parsed),
        },
    }
}

/// Slack: the Web API answers 200 with `ok` true or false; incoming webhooks answer `ok`
/// or a 4xx with the error code as text.
fn slack_answer(peer: &Peer, path: &str, headers: &HeaderMap, body: &Value) -> Response {
    let has_text = body.get("text").and_then(Value::as_str).is_some()
        || body.get("blocks").is_some_and(Value::is_array);
    if path == format!("/services/T000/B000/{}", peer.secret) {
        if !has_text {
            return (StatusCode::BAD_REQUEST, "invalid_payload").into_response();
        }
        return (StatusCode::OK, "ok").into_response();
    }
    if path.starts_with("/services/") {
        return (StatusCode::NOT_FOUND, "no_service").into_response();
    }
    if path != "/api/chat.postMessage" {
        return (StatusCode::NOT_FOUND, "unknown method").into_response();
    }
    let fail = |code: &str| axum::Json(json!({"ok": false, "error": code})).into_response();
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    if auth != Some(&format!("Bearer {}", peer.secret)) {
        return fail("invalid_auth");
    }
    let json_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    if !json_type {
        return fail("invalid_form_data");
    }
    match body.get("channel").and_then(Value::as_str) {
        None => return fail("channel_not_found"),
        Some(c) if c.starts_with("#gone") => return fail("channel_not_found"),
        Some(_) => {}
    }
    if !has_text {
        return fail("no_text");
    }
    axum::Json(json!({
        "ok": true, "channel": "C024BE91L", "ts": "1700000000.000100",
        "message": {"text": body.get("text"), "type": "message"}
    }))
    .into_response()
}

/// PagerDuty Events API v2: 202 with the dedup key, 400 with a message and errors.
fn pagerduty_answer(peer: &Peer, path: &str, body: &Value) -> Response {
    if path != "/v2/enqueue" {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    }
    let invalid = |error: &str| {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"status": "invalid event", "message": "Event object is invalid", "errors": [error]})),
        )
            .into_response()
    };
    if body.get("routing_key").and_then(Value::as_str) != Some(peer.secret) {
        return invalid("Invalid routing key");
    }
    let action = body.get("event_action").and_then(Value::as_str);
    match action {
        Some("trigger") => {
            let p = &body["payload"];
            for field in ["summary", "source", "severity"] {
                if p.get(field).and_then(Value::as_str).is_none() {
                    return invalid(&format!("'payload.{field}' is missing or blank"));
                }
            }
            if !["critical", "error", "warning", "info"]
                .contains(&p["severity"].as_str().unwrap_or(""))
            {
                return invalid("'payload.severity' is invalid");
            }
        }
        Some("acknowledge" | "resolve") => {
            if body.get("dedup_key").and_then(Value::as_str).is_none() {
                return invalid("'dedup_key' is missing or blank");
            }
        }
        _ => return invalid("'event_action' is missing or invalid"),
    }
    let dedup = body
        .get("dedup_key")
        .and_then(Value::as_str)
        .unwrap_or("5cf2d5c4b9a1483f9c55d5cfb0d3b1b2");
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({"status": "success", "message": "Event processed", "dedup_key": dedup})),
    )
        .into_response()
}

/// Discord webhooks: `/api/webhooks/{id}/{token}`; with `wait=true` 200 and the message,
/// else 204; 400 `{"code": 50006, …}` for an empty message, 401/404 for a wrong token.
fn discord_answer(peer: &Peer, uri: &Uri, body: &Value) -> Response {
    if uri.path() != format!("/api/webhooks/1234/{}", peer.secret) {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"message": "Invalid Webhook Token", "code": 50027})),
        )
            .into_response();
    }
    let content = body.get("content").and_then(Value::as_str).unwrap_or("");
    let embeds = body.get("embeds").and_then(Value::as_array);
    if content.is_empty() && embeds.is_none_or(|e| e.is_empty()) {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"message": "Cannot send an empty message", "code": 50006})),
        )
            .into_response();
    }
    if content.chars().count() > 2000 {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"message": "Invalid Form Body", "code": 50035})),
        )
            .into_response();
    }
    if !uri.query().unwrap_or("").contains("wait=true") {
        return StatusCode::NO_CONTENT.into_response();
    }
    axum::Json(json!({"id": "1188000000000000001", "channel_id": "1100", "content": content}))
        .into_response()
}

fn header(seen: &Seen, name: &str) -> String {
    seen.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

// ---------------------------------------------------------------------------------------
// Slack

const SLACK_TOKEN: &str = "xoxb-17-s3cr3t-bot-token";
const SLACK_HOOK_SECRET: &str = "hOoKs3cr3tPath99";

fn slack_gateway(peer: &Peer, max_attempts: u32) -> Gateway {
    gateway_with_secrets(
        &format!(
            r##"apiVersion: acteon.dev/v1alpha1
kind: Provider
metadata: {{name: chat, namespace: ns}}
spec:
  type: slack
  slack: {{tokenSecretRef: {{name: slack, key: token}}, apiUrl: "{}/api", channel: "#alerts"}}
  retry: {{maxAttempts: {max_attempts}, initialBackoffMs: 10, maxBackoffMs: 2000}}
---
apiVersion: acteon.dev/v1alpha1
kind: Provider
metadata: {{name: hook, namespace: ns}}
spec:
  type: slack
  slack: {{webhookUrlSecretRef: {{name: slack, key: url}}}}
  retry: {{maxAttempts: {max_attempts}, initialBackoffMs: 10, maxBackoffMs: 2000}}
"##,
            peer.base
        ),
        &[
            ("slack", "token", SLACK_TOKEN),
            (
                "slack",
                "url",
                &format!("{}/services/T000/B000/{SLACK_HOOK_SECRET}", peer.base),
            ),
        ],
    )
}

#[tokio::test]
async fn slack_posts_with_the_bot_token_and_maps_the_payload() {
    let peer = Peer::start(Protocol::Slack, SLACK_TOKEN, vec![]).await;
    let gw = slack_gateway(&peer, 3);
    let blocks = json!([{"type": "section", "text": {"type": "mrkdwn", "text": "*disk* full"}}]);
    let r = executed(
        &gw,
        act(
            "chat",
            json!({"summary": "disk full on db-1", "blocks": blocks}),
        ),
    )
    .await;
    assert_eq!(r.body["ok"], true, "{:?}", r.body);
    assert_eq!(
        r.body["ts"], "1700000000.000100",
        "the message id is returned"
    );
    assert_eq!(r.body["channel"], "C024BE91L");
    let seen = peer.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/api/chat.postMessage");
    assert_eq!(
        header(&seen[0], "authorization"),
        format!("Bearer {SLACK_TOKEN}")
    );
    assert_eq!(seen[0].body["channel"], "#alerts", "the Provider's channel");
    assert_eq!(
        seen[0].body["text"], "disk full on db-1",
        "text from summary"
    );
    assert_eq!(seen[0].body["blocks"], blocks);

    // The payload's channel and text win; with neither text nor blocks, a text is made.
    executed(
        &gw,
        act("chat", json!({"channel": "#ops", "text": "hello"})),
    )
    .await;
    executed(&gw, act("chat", json!({"value": 91}))).await;
    let seen = peer.seen();
    assert_eq!(
        (&seen[1].body["channel"], &seen[1].body["text"]),
        (&json!("#ops"), &json!("hello"))
    );
    assert_eq!(seen[2].body["text"], r#"alert: {"value":91}"#);
}

#[tokio::test]
async fn slack_ok_false_fails_with_slacks_code_and_is_not_retried() {
    let peer = Peer::start(Protocol::Slack, SLACK_TOKEN, vec![]).await;
    let gw = slack_gateway(&peer, 3);
    let e = failed(&gw, act("chat", json!({"channel": "#gone", "text": "x"}))).await;
    assert_eq!(e.code, "SLACK_ERROR");
    assert!(e.message.contains("channel_not_found"), "{}", e.message);
    assert!(!e.retryable);
    assert_eq!((e.attempts, peer.seen().len()), (1, 1));
}

#[tokio::test]
async fn slack_429_waits_for_retry_after_and_ratelimited_is_retried() {
    let peer = Peer::start(
        Protocol::Slack,
        SLACK_TOKEN,
        vec![
            Answer::Raw(429, vec![("retry-after", "1")], ""),
            Answer::Raw(
                200,
                vec![("content-type", "application/json")],
                r#"{"ok":false,"error":"ratelimited"}"#,
            ),
            Answer::Raw(503, vec![], "upstream"),
        ],
    )
    .await;
    let gw = slack_gateway(&peer, 4);
    executed(&gw, act("chat", json!({"text": "x"}))).await;
    let seen = peer.seen();
    assert_eq!(seen.len(), 4, "429, ratelimited, 503, then ok");
    let waited = seen[1].at - seen[0].at;
    assert!(
        waited >= Duration::from_millis(950),
        "Retry-After honoured: {waited:?}"
    );

    // A hint longer than maxBackoffMs ends the delivery at once, retryable.
    peer.script
        .lock()
        .push_back(Answer::Raw(429, vec![("retry-after", "30")], ""));
    let start = Instant::now();
    let e = failed(&gw, act("chat", json!({"text": "x"}))).await;
    assert_eq!(
        (e.code.as_str(), e.retryable, e.attempts),
        ("RATE_LIMITED", true, 1)
    );
    assert!(e.message.contains("retry after 30"), "{}", e.message);
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn slack_incoming_webhook_posts_to_the_secret_url() {
    let peer = Peer::start(Protocol::Slack, SLACK_HOOK_SECRET, vec![]).await;
    let gw = slack_gateway(&peer, 3);
    let r = executed(&gw, act("hook", json!({"text": "deployed"}))).await;
    assert_eq!(r.body, json!({"ok": true}));
    let seen = peer.seen();
    assert_eq!(
        seen[0].path,
        format!("/services/T000/B000/{SLACK_HOOK_SECRET}")
    );
    assert_eq!(
        seen[0].body,
        json!({"text": "deployed"}),
        "no channel: the webhook's own"
    );
    assert!(seen[0].headers.get("authorization").is_none());

    // A webhook's errors are 4xx with a text code: not retried.
    peer.script
        .lock()
        .push_back(Answer::Raw(404, vec![], "no_service"));
    let e = failed(&gw, act("hook", json!({"text": "x"}))).await;
    assert_eq!(
        (e.code.as_str(), e.retryable, e.attempts),
        ("SLACK_ERROR", false, 1)
    );
    assert!(e.message.contains("no_service"), "{}", e.message);

    // An answer quoting the request line (a proxy's error page) loses the secret path.
    peer.script.lock().push_back(Answer::Raw(
        404,
        vec![],
        "Cannot POST /services/T000/B000/hOoKs3cr3tPath99 (hOoKs3cr3tPath99)",
    ));
    let e = failed(&gw, act("hook", json!({"text": "x"}))).await;
    assert!(e.message.contains("Cannot POST *** (***)"), "{}", e.message);
    assert!(!e.message.contains(SLACK_HOOK_SECRET), "{}", e.message);
}

#[tokio::test]
async fn slack_credentials_are_not_shown() {
    let (log, _guard) = Log::capture();
    // The peer expects another token: Slack's invalid_auth; the webhook path is refused.
    let peer = Peer::start(Protocol::Slack, "xoxb-other", vec![]).await;
    let gw = slack_gateway(&peer, 2);
    let e = failed(&gw, act("chat", json!({"text": "x"}))).await;
    assert!(e.message.contains("invalid_auth"), "{}", e.message);
    assert_not_shown(&[SLACK_TOKEN], &e, &gw, &log);
    let e = failed(&gw, act("hook", json!({"text": "x"}))).await;
    assert_not_shown(&[SLACK_TOKEN, SLACK_HOOK_SECRET], &e, &gw, &log);
    // Nothing listening: a transport error names no URL.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let gw = slack_gateway(
        &Peer {
            base: dead,
            ..peer.clone()
        },
        1,
    );
    let e = failed(&gw, act("hook", json!({"text": "x"}))).await;
    assert_eq!((e.code.as_str(), e.retryable), ("CONNECTION", true));
    assert_not_shown(&[SLACK_TOKEN, SLACK_HOOK_SECRET], &e, &gw, &log);
}

// ---------------------------------------------------------------------------------------
// PagerDuty

const PD_KEY: &str = "R0UT1NGk3yR0UT1NGk3yR0UT1NGk3y12";

fn pagerduty_gateway(peer: &Peer, max_attempts: u32) -> Gateway {
    gateway_with_secrets(
        &format!(
            r#"apiVersion: acteon.dev/v1alpha1
kind: Provider
metadata: {{name: pd, namespace: ns}}
spec:
  type: pagerduty
  pagerduty: {{routingKeySecretRef: {{name: pd, key: routing}}, apiUrl: "{}", severity: warning}}
  retry: {{maxAttempts: {max_attempts}, initialBackoffMs: 10, maxBackoffMs: 2000}}
"#,
            peer.base
        ),
        &[("pd", "routing", PD_KEY)],
    )
}

#[tokio::test]
async fn pagerduty_triggers_with_the_mapped_payload_and_returns_the_dedup_key() {
    let peer = Peer::start(Protocol::PagerDuty, PD_KEY, vec![]).await;
    let gw = pagerduty_gateway(&peer, 3);
    let r = executed(
        &gw,
        act(
            "pd",
            json!({"text": "CPU above 95%", "component": "db", "group": "prod", "class": "cpu",
                   "source": "db-1", "custom_details": {"cpu": 97}}),
        ),
    )
    .await;
    assert_eq!(
        r.body["dedup_key"], "5cf2d5c4b9a1483f9c55d5cfb0d3b1b2",
        "{:?}",
        r.body
    );
    let seen = peer.seen();
    assert_eq!(seen[0].path, "/v2/enqueue");
    let b = &seen[0].body;
    assert_eq!(b["routing_key"], PD_KEY);
    assert_eq!(b["event_action"], "trigger");
    assert_eq!(
        b["payload"],
        json!({"summary": "CPU above 95%", "severity": "warning", "source": "db-1",
               "component": "db", "group": "prod", "class": "cpu", "custom_details": {"cpu": 97}})
    );

    // Resolve by dedup key; the payload's severity wins over the Provider's.
    let r = executed(
        &gw,
        act(
            "pd",
            json!({"event_action": "resolve", "dedup_key": "db-1/cpu"}),
        ),
    )
    .await;
    assert_eq!(r.body["dedup_key"], "db-1/cpu");
    executed(
        &gw,
        act("pd", json!({"summary": "s", "severity": "critical"})),
    )
    .await;
    let seen = peer.seen();
    assert_eq!(
        (&seen[1].body["event_action"], &seen[1].body["dedup_key"]),
        (&json!("resolve"), &json!("db-1/cpu"))
    );
    assert_eq!(seen[2].body["payload"]["severity"], "critical");
    assert_eq!(seen[2].body["payload"]["source"], "ns/t", "default source");

    // Acknowledge without a dedup key: refused here, nothing sent.
    let e = failed(&gw, act("pd", json!({"event_action": "acknowledge"}))).await;
    assert_eq!((e.code.as_str(), e.retryable), ("INVALID_PAYLOAD", false));
    assert_eq!(peer.seen().len(), 3);
}

#[tokio::test]
async fn pagerduty_400_is_not_retried_and_carries_pagerdutys_message() {
    let (log, _guard) = Log::capture();
    let peer = Peer::start(Protocol::PagerDuty, "some-other-key", vec![]).await;
    let gw = pagerduty_gateway(&peer, 3);
    let e = failed(&gw, act("pd", json!({"summary": "x"}))).await;
    assert_eq!(
        (e.code.as_str(), e.retryable, e.attempts),
        ("HTTP_4XX", false, 1)
    );
    assert!(
        e.message.contains("Event object is invalid") && e.message.contains("Invalid routing key"),
        "{}",
        e.message
    );
    assert_eq!(peer.seen().len(), 1);
    assert_not_shown(&[PD_KEY], &e, &gw, &log);
}

#[tokio::test]
async fn pagerduty_429_and_5xx_are_retried() {
    let peer = Peer::start(
        Protocol::PagerDuty,
        PD_KEY,
        vec![
            Answer::Raw(429, vec![("retry-after", "1")], ""),
            Answer::Raw(
                500,
                vec![("content-type", "application/json")],
                r#"{"status":"error","message":"internal"}"#,
            ),
        ],
    )
    .await;
    let gw = pagerduty_gateway(&peer, 3);
    executed(&gw, act("pd", json!({"summary": "x"}))).await;
    let seen = peer.seen();
    assert_eq!(seen.len(), 3);
    assert!(
        seen[1].at - seen[0].at >= Duration::from_millis(950),
        "Retry-After honoured"
    );

    // Server errors until the attempts run out: a retryable failure.
    peer.script.lock().extend([
        Answer::Raw(502, vec![], "bad gateway"),
        Answer::Raw(502, vec![], "bad gateway"),
        Answer::Raw(502, vec![], "bad gateway"),
    ]);
    let e = failed(&gw, act("pd", json!({"summary": "x"}))).await;
    assert_eq!(
        (e.code.as_str(), e.retryable, e.attempts),
        ("HTTP_5XX", true, 3)
    );
}

// ---------------------------------------------------------------------------------------
// Email, against aiosmtpd

const SMTP_USER: &str = "acteon-mailer";
const SMTP_PASSWORD: &str = "smtp-pa55w0rd-s3cr3t";

/// Debian's python with aiosmtpd (`ACTEON_TEST_PYTHON` overrides).
fn python() -> String {
    std::env::var("ACTEON_TEST_PYTHON").unwrap_or_else(|_| {
        if Path::new("/usr/bin/python3").exists() {
            "/usr/bin/python3".into()
        } else {
            "python3".into()
        }
    })
}

/// aiosmtpd on a free port, stopped when dropped.
pub(crate) struct Smtp {
    child: Child,
    pub(crate) port: u16,
    pub(crate) dir: PathBuf,
    /// The CA that signed the server's certificate (PEM), with TLS.
    ca: Option<String>,
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("command runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Smtp {
    /// With `tls_auth`, STARTTLS (a certificate for 127.0.0.1 from a throw-away CA) and
    /// AUTH are required.
    pub(crate) fn start(tls_auth: bool) -> Smtp {
        let dir = std::env::temp_dir().join(format!(
            "acteon-smtp-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let port = free_port();
        let mut args: Vec<String> = vec![
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/smtp_peer.py").into(),
            port.to_string(),
            dir.display().to_string(),
        ];
        let mut ca = None;
        if tls_auth {
            let p = |f: &str| dir.join(f).display().to_string();
            run(Command::new("openssl").args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=acteon test CA",
                "-keyout",
                &p("ca.key"),
                "-out",
                &p("ca.pem"),
            ]));
            run(Command::new("openssl").args([
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                &p("key.pem"),
                "-out",
                &p("req.csr"),
            ]));
            std::fs::write(
                dir.join("ext.cnf"),
                "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n",
            )
            .expect("ext");
            run(Command::new("openssl").args([
                "x509",
                "-req",
                "-in",
                &p("req.csr"),
                "-CA",
                &p("ca.pem"),
                "-CAkey",
                &p("ca.key"),
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                &p("ext.cnf"),
                "-out",
                &p("cert.pem"),
            ]));
            ca = Some(std::fs::read_to_string(dir.join("ca.pem")).expect("ca"));
            args.extend([
                p("cert.pem"),
                p("key.pem"),
                SMTP_USER.into(),
                SMTP_PASSWORD.into(),
            ]);
        }
        let child = Command::new(python())
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs (apt-get install python3-aiosmtpd)");
        let smtp = Smtp {
            child,
            port,
            dir,
            ca,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !smtp.dir.join("ready").exists() {
            assert!(
                Instant::now() < deadline,
                "aiosmtpd did not start (is python3-aiosmtpd installed?)"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        smtp
    }

    fn replies(&self, lines: &[&str]) {
        let mut f = std::fs::File::create(self.dir.join("replies")).expect("replies");
        for l in lines {
            writeln!(f, "{l}").expect("write");
        }
    }

    fn data_count(&self) -> usize {
        std::fs::read_to_string(self.dir.join("data-count"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    pub(crate) fn message(&self, n: usize) -> Value {
        let text = std::fs::read_to_string(self.dir.join(format!("msg-{n}.json")))
            .unwrap_or_else(|e| panic!("message {n} received: {e}"));
        serde_json::from_str(&text).expect("json")
    }
}

fn email_gateway(smtp: &Smtp, max_attempts: u32) -> Gateway {
    let (tls, auth) = match &smtp.ca {
        Some(ca) => (
            format!(
                "tls: starttls\n    caCert: {}",
                serde_json::to_string(ca).expect("json")
            ),
            "\n    usernameSecretRef: {name: smtp, key: user}\n    passwordSecretRef: {name: smtp, key: password}",
        ),
        None => ("tls: none".to_owned(), ""),
    };
    gateway_with_secrets(
        &format!(
            r#"apiVersion: acteon.dev/v1alpha1
kind: Provider
metadata: {{name: mail, namespace: ns}}
spec:
  type: email
  email:
    smtpHost: 127.0.0.1
    smtpPort: {}
    from: "Acteon <acteon@example.com>"
    to: ["oncall@example.com"]
    subject: "default subject"
    {tls}{auth}
  timeoutSeconds: 5
  retry: {{maxAttempts: {max_attempts}, initialBackoffMs: 10, maxBackoffMs: 200}}
"#,
            smtp.port
        ),
        &[
            ("smtp", "user", SMTP_USER),
            ("smtp", "password", SMTP_PASSWORD),
        ],
    )
}

#[tokio::test]
async fn email_goes_through_starttls_and_auth_and_is_received_as_mapped() {
    let smtp = Smtp::start(true);
    let gw = email_gateway(&smtp, 3);
    let r = executed(
        &gw,
        act(
            "mail",
            json!({"to": ["a@example.com", "b@example.com"], "cc": "c@example.com",
                   "subject": "Disk full", "text": "db-1 is at 99%", "html": "<b>db-1</b> is at 99%"}),
        ),
    )
    .await;
    assert_eq!(r.body["code"], "250", "{:?}", r.body);
    let message_id = r.body["message_id"].as_str().unwrap_or_default().to_owned();
    assert!(message_id.ends_with("@example.com>"), "{message_id}");
    let m = smtp.message(1);
    assert_eq!(m["tls"], true, "STARTTLS");
    assert_eq!(m["login"], SMTP_USER, "AUTH");
    assert_eq!(m["mail_from"], "acteon@example.com");
    assert_eq!(
        m["rcpt_tos"],
        json!(["a@example.com", "b@example.com", "c@example.com"])
    );
    let data = m["data"].as_str().unwrap_or_default();
    for needle in [
        "From: Acteon <acteon@example.com>",
        "To: a@example.com, b@example.com",
        "Cc: c@example.com",
        "Subject: Disk full",
        "multipart/alternative",
        "db-1 is at 99%",
        "<b>db-1</b> is at 99%",
        &format!("Message-ID: {message_id}"),
    ] {
        assert!(data.contains(needle), "{needle:?} not in {data}");
    }

    // Defaults from the Provider: recipients; the summary is the subject and the text.
    executed(&gw, act("mail", json!({"summary": "CPU high"}))).await;
    let m = smtp.message(2);
    assert_eq!(m["rcpt_tos"], json!(["oncall@example.com"]));
    let data = m["data"].as_str().unwrap_or_default();
    assert!(
        data.contains("Subject: CPU high") && data.contains("\r\n\r\nCPU high"),
        "{data}"
    );
}

#[tokio::test]
async fn email_permanent_replies_fail_at_once_and_transient_ones_are_retried() {
    let smtp = Smtp::start(false);
    let gw = email_gateway(&smtp, 3);
    smtp.replies(&["550 5.1.1 mailbox unavailable"]);
    let e = failed(&gw, act("mail", json!({"text": "x"}))).await;
    assert_eq!(
        (e.code.as_str(), e.retryable, e.attempts),
        ("SMTP_PERMANENT", false, 1)
    );
    assert!(e.message.contains("mailbox unavailable"), "{}", e.message);
    assert_eq!(smtp.data_count(), 1);

    smtp.replies(&["450 4.2.0 mailbox busy, try later"]);
    executed(&gw, act("mail", json!({"subject": "retried", "text": "x"}))).await;
    assert_eq!(smtp.data_count(), 3, "450, then accepted");
    assert!(
        smtp.message(1)["data"]
            .as_str()
            .unwrap_or_default()
            .contains("Subject: retried")
    );

    smtp.replies(&["451 a", "451 b", "451 c"]);
    let e = failed(&gw, act("mail", json!({"text": "x"}))).await;
    assert_eq!(
        (e.code.as_str(), e.retryable, e.attempts),
        ("SMTP_TRANSIENT", true, 3)
    );

    // A bad address in the payload: refused here, nothing sent.
    let before = smtp.data_count();
    let e = failed(
        &gw,
        act("mail", json!({"to": "not an address", "text": "x"})),
    )
    .await;
    assert_eq!((e.code.as_str(), e.retryable), ("INVALID_PAYLOAD", false));
    assert_eq!(smtp.data_count(), before);
}

#[tokio::test]
async fn email_credentials_are_not_shown_and_a_wrong_password_is_permanent() {
    let (log, _guard) = Log::capture();
    let smtp = Smtp::start(true);
    let gw = email_gateway(&smtp, 3);
    executed(&gw, act("mail", json!({"text": "x"}))).await;
    let ca = serde_json::to_string(smtp.ca.as_ref().expect("tls")).expect("json");
    let wrong = gateway_with_secrets(
        &format!(
            r#"apiVersion: acteon.dev/v1alpha1
kind: Provider
metadata: {{name: mail, namespace: ns}}
spec:
  type: email
  email:
    smtpHost: 127.0.0.1
    smtpPort: {}
    from: acteon@example.com
    to: [oncall@example.com]
    tls: starttls
    caCert: {ca}
    usernameSecretRef: {{name: smtp, key: user}}
    passwordSecretRef: {{name: smtp, key: password}}
  retry: {{maxAttempts: 3, initialBackoffMs: 10, maxBackoffMs: 100}}
"#,
            smtp.port
        ),
        &[
            ("smtp", "user", SMTP_USER),
            ("smtp", "password", "wr0ng-pa55w0rd"),
        ],
    );
    let e = failed(&wrong, act("mail", json!({"text": "x"}))).await;
    assert_eq!(
        (e.code.as_str(), e.retryable, e.attempts),
        ("SMTP_PERMANENT", false, 1)
    );
    assert_not_shown(&[SMTP_PASSWORD, "wr0ng-pa55w0rd"], &e, &wrong, &log);
    assert_not_shown(&[SMTP_PASSWORD], &e, &gw, &log);
}

// ---------------------------------------------------------------------------------------
// Discord

const DISCORD_TOKEN: &str = "d1sc0rdW3bh00kT0k3n";

fn discord_gateway(peer: &Peer, max_attempts: u32) -> Gateway {
    gateway_with_secrets(
        &format!(
            r#"apiVersion: acteon.dev/v1alpha1
kind: Provider
metadata: {{name: dc, namespace: ns}}
spec:
  type: discord
  discord: {{webhookUrlSecretRef: {{name: dc, key: url}}}}
  retry: {{maxAttempts: {max_attempts}, initialBackoffMs: 10, maxBackoffMs: 2000}}
"#
        ),
        &[(
            "dc",
            "url",
            &format!("{}/api/webhooks/1234/{DISCORD_TOKEN}", peer.base),
        )],
    )
}

#[tokio::test]
async fn discord_posts_content_and_embeds_and_returns_the_message_id() {
    let peer = Peer::start(Protocol::Discord, DISCORD_TOKEN, vec![]).await;
    let gw = discord_gateway(&peer, 3);
    let embeds = json!([{"title": "Disk full", "description": "db-1", "color": 15158332}]);
    let r = executed(
        &gw,
        act(
            "dc",
            json!({"summary": "disk full", "embeds": embeds, "username": "acteon"}),
        ),
    )
    .await;
    assert_eq!(r.body["id"], "1188000000000000001", "{:?}", r.body);
    let seen = peer.seen();
    assert_eq!(seen[0].path, format!("/api/webhooks/1234/{DISCORD_TOKEN}"));
    assert_eq!(
        seen[0].body,
        json!({"content": "disk full", "embeds": embeds, "username": "acteon"})
    );
    // Longer content is cut to Discord's 2000 characters rather than refused.
    executed(&gw, act("dc", json!({"text": "x".repeat(5000)}))).await;
    assert_eq!(
        peer.seen()[1].body["content"].as_str().map(str::len),
        Some(2000)
    );
}

#[tokio::test]
async fn discord_429_waits_for_retry_after_and_400_is_not_retried() {
    let peer = Peer::start(
        Protocol::Discord,
        DISCORD_TOKEN,
        vec![
            Answer::Raw(
                429,
                vec![("content-type", "application/json")],
                r#"{"message": "You are being rate limited.", "retry_after": 0.6, "global": false}"#,
            ),
            Answer::Raw(502, vec![], "bad gateway"),
        ],
    )
    .await;
    let gw = discord_gateway(&peer, 3);
    executed(&gw, act("dc", json!({"text": "x"}))).await;
    let seen = peer.seen();
    assert_eq!(seen.len(), 3, "429, 502, then ok");
    let waited = seen[1].at - seen[0].at;
    assert!(
        waited >= Duration::from_millis(550),
        "retry_after honoured: {waited:?}"
    );

    let e = failed(&gw, act("dc", json!({"embeds": []}))).await;
    assert_eq!(
        (e.code.as_str(), e.retryable, e.attempts),
        ("HTTP_4XX", false, 1)
    );
    assert!(
        e.message
            .contains("Cannot send an empty message (code 50006)"),
        "{}",
        e.message
    );
}

#[tokio::test]
async fn discord_webhook_token_is_not_shown() {
    let (log, _guard) = Log::capture();
    let peer = Peer::start(Protocol::Discord, "another-token", vec![]).await;
    let gw = discord_gateway(&peer, 2);
    let e = failed(&gw, act("dc", json!({"text": "x"}))).await;
    assert!(e.message.contains("Invalid Webhook Token"), "{}", e.message);
    assert_not_shown(&[DISCORD_TOKEN], &e, &gw, &log);
    // Answers that quote the request (a proxy's page, an echoing JSON message) lose
    // the token.
    let gw = discord_gateway(&peer, 1);
    for (status, body) in [
        (
            404,
            "Cannot POST /api/webhooks/1234/d1sc0rdW3bh00kT0k3n?wait=true",
        ),
        (
            400,
            r#"{"message": "bad token d1sc0rdW3bh00kT0k3n", "code": 50027}"#,
        ),
    ] {
        peer.script.lock().push_back(Answer::Raw(
            status,
            vec![("content-type", "application/json")],
            body,
        ));
        let e = failed(&gw, act("dc", json!({"text": "x"}))).await;
        assert!(e.message.contains("***"), "{}", e.message);
        assert_not_shown(&[DISCORD_TOKEN], &e, &gw, &log);
    }
    let dead = Peer {
        base: format!("http://127.0.0.1:{}", free_port()),
        ..peer.clone()
    };
    let gw = discord_gateway(&dead, 1);
    let e = failed(&gw, act("dc", json!({"text": "x"}))).await;
    assert_eq!((e.code.as_str(), e.retryable), ("CONNECTION", true));
    assert_not_shown(&[DISCORD_TOKEN], &e, &gw, &log);
}

// ---------------------------------------------------------------------------------------
// The sample Providers of `config/samples/providers/`, each with its Secret

/// Every sample Provider compiles without rejection and builds in a gateway with the
/// values of the Secrets beside it, sealed as the operator seals them.
#[test]
fn provider_samples_build_with_their_secrets() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/samples/providers");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("samples directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "{files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).expect("sample reads");
        let (secrets, acteon) = split_secrets(&text);
        let docs = parse_text(&file.display().to_string(), &acteon).expect("sample parses");
        let compiled = compile(&docs, &CompileOptions::default());
        assert!(
            compiled.rejections.is_empty(),
            "{file:?}: {:?}",
            compiled.rejections
        );
        let mut snapshot = compiled.snapshot;
        assert!(!snapshot.providers.is_empty(), "{file:?}");
        let key = SealKey::generate();
        for p in &snapshot.providers {
            for (field, r) in p.spec.secret_refs() {
                let ns = p.namespace.clone().unwrap_or_default();
                let value = secrets
                    .get(&(ns.clone(), r.name.clone(), r.key.clone()))
                    .unwrap_or_else(|| panic!("{file:?}: no Secret {ns}/{} for {field}", r.name));
                let id = acteon_api::snapshot::secret_id(p.namespace.as_deref(), r);
                snapshot
                    .secrets
                    .insert(id.clone(), key.seal(&id, value.as_bytes()));
            }
        }
        // Their templates render a typical action.
        for p in &snapshot.providers {
            let Some(t) = &p.spec.templates else { continue };
            let compiled = acteon_api::message_template::compile(t).expect("compiles");
            let templated = acteon_gateway::providers::template::TemplatedProvider::new(
                Arc::new(acteon_gateway::providers::Noop),
                compiled,
            );
            let a = act(
                &p.name,
                json!({"summary": "disk \"full\"", "severity": "critical"}),
            );
            if let Err(e) = templated.render(&a) {
                panic!("{file:?}: {}: {e:?}", p.name);
            }
        }
        snapshot.seal();
        if let Err(e) = Runtime::build(snapshot, &reqwest::Client::new(), Some(&key)) {
            panic!("{file:?}: {e}");
        }
    }
}

/// The `v1` Secrets of a manifest file, by (namespace, name, key), and its other documents.
fn split_secrets(
    text: &str,
) -> (
    std::collections::HashMap<(String, String, String), String>,
    String,
) {
    use serde::Deserialize as _;
    let mut secrets = std::collections::HashMap::new();
    let mut rest = String::new();
    for de in serde_yaml_ng::Deserializer::from_str(text) {
        let doc = Value::deserialize(de).expect("sample YAML parses");
        if doc["kind"] != "Secret" {
            rest.push_str("---\n");
            rest.push_str(&serde_yaml_ng::to_string(&doc).expect("serialises"));
            continue;
        }
        let ns = doc["metadata"]["namespace"].as_str().unwrap_or("default");
        let name = doc["metadata"]["name"].as_str().unwrap_or_default();
        for (k, v) in doc["stringData"].as_object().into_iter().flatten() {
            let key = (ns.to_owned(), name.to_owned(), k.clone());
            secrets.insert(key, v.as_str().unwrap_or_default().to_owned());
        }
    }
    (secrets, rest)
}
