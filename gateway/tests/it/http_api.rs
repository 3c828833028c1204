//! The HTTP API of the real binary: bad input of every kind gets a 4xx JSON error naming
//! the problem, and the server keeps serving; batches, dry runs, inspection endpoints,
//! metrics, OpenAPI, and draining on SIGTERM.

use crate::common;
use crate::common::proxy;

use std::time::Duration;

use common::{Recorder, Server, get_json};
use serde_json::{Value, json};

const CONFIG: &str = r#"
apiVersion: acteon.dev/v1alpha1
kind: Provider
metadata: {name: p, namespace: ns}
spec: {type: noop}
---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {name: quiet, namespace: ns}
spec:
  condition: {field: action.action_type, eq: quiet}
  action: {type: suppress}
"#;

fn write_config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("acteon-http-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("config.yaml");
    std::fs::write(&file, text).expect("write config");
    file
}

fn start(name: &str, text: &str, extra: &[&str]) -> Server {
    let file = write_config(name, text);
    let mut args = vec!["--config", file.to_str().expect("utf-8 path")];
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn good() -> Value {
    json!({"namespace": "ns", "tenant": "t", "provider": "p", "action_type": "x", "payload": {"a": 1}})
}

async fn post(client: &reqwest::Client, url: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request sent");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// POST over a plain socket: the server answers 413 before reading a too-large body and
/// closes the connection, which HTTP client libraries report as a send error.
async fn raw_post(server: &Server, path: &str, body: String) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = server.base.trim_start_matches("http://").to_owned();
    let stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(head.as_bytes()).await;
        let _ = wr.write_all(body.as_bytes()).await;
    });
    let mut raw = Vec::new();
    let _ = rd.read_to_end(&mut raw).await;
    writer.abort();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let json = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    (status, serde_json::from_str(json).unwrap_or(Value::Null))
}

fn assert_error(status: u16, body: &Value, want_status: u16, needle: &str) {
    assert_eq!(status, want_status, "body: {body}");
    let msg = body["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains(needle),
        "message {msg:?} should mention {needle:?}"
    );
    assert_eq!(
        body["error"], body["message"],
        "Acteon's `error` and the SDKs' `message` agree"
    );
    assert!(body["code"].is_string());
    assert_eq!(body["retryable"], false);
}

#[tokio::test]
async fn bad_input_gets_named_4xx_and_the_server_keeps_serving() {
    let server = start("bad", CONFIG, &[]);
    let c = reqwest::Client::new();
    let url = server.url("/v1/dispatch");

    let (s, b) = post(&c, &url, "{\"namespace\": \"ns\",").await;
    assert_error(s, &b, 400, "malformed JSON");

    let mut wrong = good();
    wrong["tenant"] = json!(42);
    let (s, b) = post(&c, &url, wrong.to_string()).await;
    assert_error(s, &b, 400, "`tenant`");

    let mut missing = good();
    missing.as_object_mut().expect("object").remove("payload");
    let (s, b) = post(&c, &url, missing.to_string()).await;
    assert_error(s, &b, 400, "missing field `payload`");

    let mut empty = good();
    empty["namespace"] = json!("");
    let (s, b) = post(&c, &url, empty.to_string()).await;
    assert_error(s, &b, 400, "`namespace` must not be empty");

    let mut meta = good();
    meta["metadata"] = json!({"k": {"nested": true}});
    let (s, b) = post(&c, &url, meta.to_string()).await;
    assert_error(s, &b, 400, "metadata");

    // A well-formed action for an unknown provider is an outcome, as in Acteon.
    let mut unknown = good();
    unknown["provider"] = json!("nope");
    let (s, b) = post(&c, &url, unknown.to_string()).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["Failed"]["code"], "PROVIDER_NOT_FOUND", "{b}");
    assert!(
        b["Failed"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("nope")),
        "{b}"
    );

    let mut big = good();
    big["payload"] = json!({"blob": "x".repeat(2 * 1024 * 1024)});
    let (s, b) = raw_post(&server, "/v1/dispatch", big.to_string()).await;
    assert_error(s, &b, 413, "larger than the limit");

    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let nested = format!(
        r#"{{"namespace":"ns","tenant":"t","provider":"p","action_type":"x","payload":{deep}}}"#
    );
    let (s, b) = post(&c, &url, nested).await;
    assert_error(s, &b, 400, "recursion limit");
    let (s, b) = post(&c, &url, deep.clone()).await;
    assert_error(s, &b, 400, "invalid action");
    // In a batch, the deep item gets its own error and the batch is answered.
    let (s, b) = post(&c, &server.url("/v1/dispatch/batch"), format!("[{deep}]")).await;
    assert_eq!(s, 200);
    assert!(
        b[0]["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("invalid action [0]")),
        "{b}"
    );

    let batch: Vec<Value> = (0..1001).map(|_| good()).collect();
    let (s, b) = post(
        &c,
        &server.url("/v1/dispatch/batch"),
        serde_json::to_string(&batch).expect("json"),
    )
    .await;
    assert_error(s, &b, 400, "limit is 1000");

    let (s, b) = post(
        &c,
        &server.url("/v1/dispatch/batch"),
        "{\"not\": \"an array\"}",
    )
    .await;
    assert_error(s, &b, 400, "array");

    let resp = c
        .get(server.url("/v1/nothing-here"))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status().as_u16(), 404);

    // Still serving, and it counted the rejects.
    let (s, b) = post(&c, &url, good().to_string()).await;
    assert_eq!(s, 200, "{b}");
    assert!(b.get("Executed").is_some(), "{b}");
    let metrics = c
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("acteon_bad_requests_total{reason=\"invalid_json\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("acteon_bad_requests_total{reason=\"unknown_provider\"} 1"));
}

#[tokio::test]
async fn batch_answers_in_order_with_per_item_errors() {
    let server = start("batch", CONFIG, &[]);
    let c = reqwest::Client::new();
    let mut quiet = good();
    quiet["action_type"] = json!("quiet");
    let mut bad = good();
    bad["tenant"] = json!([1]);
    let mut unknown = good();
    unknown["provider"] = json!("nope");
    let body = json!([good(), quiet, bad, unknown, good()]);
    let (s, b) = post(&c, &server.url("/v1/dispatch/batch"), body.to_string()).await;
    assert_eq!(s, 200, "{b}");
    let items = b.as_array().expect("array");
    assert_eq!(items.len(), 5);
    assert!(items[0].get("Executed").is_some());
    assert_eq!(items[1], json!({"Suppressed": {"rule": "quiet"}}));
    // Acteon's SDKs read `{"error": {"code", "message", "retryable"}}`.
    assert_eq!(items[2]["error"]["code"], "INVALID_REQUEST", "{}", items[2]);
    assert_eq!(items[2]["error"]["retryable"], false, "{}", items[2]);
    assert!(
        items[2]["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("action [2]") && m.contains("tenant")),
        "{}",
        items[2]
    );
    assert_eq!(
        items[3]["Failed"]["code"], "PROVIDER_NOT_FOUND",
        "{}",
        items[3]
    );
    assert!(items[4].get("Executed").is_some());

    let (s, b) = post(
        &c,
        &server.url("/v1/dispatch/batch?dry_run=true"),
        json!([good()]).to_string(),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(b[0]["DryRun"]["verdict"], "allow");
}

#[tokio::test]
async fn inspection_endpoints() {
    let server = start("inspect", CONFIG, &[]);
    let c = reqwest::Client::new();
    let get = |path: &str| {
        let c = c.clone();
        let url = server.url(path);
        async move {
            let r = c.get(url).send().await.expect("sent");
            (r.status().as_u16(), r.text().await.expect("text"))
        }
    };
    let (s, body) = get("/healthz").await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = get("/readyz").await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = get("/v1/rules").await;
    assert_eq!(s, 200);
    let rules: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(rules[0]["name"], "quiet");
    assert_eq!(rules[0]["namespace"], "ns");
    assert_eq!(rules[0]["action"], "suppress");
    let (_, body) = get("/v1/config").await;
    let config: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(config["version"], 1);
    assert_eq!(config["state_backend"], "memory");
    assert_eq!(config["providers"], json!(["ns/p"]));
    assert!(config["digest"].as_str().is_some_and(|d| d.len() == 16));
    let (s, body) = get("/api-doc/openapi.json").await;
    assert_eq!(s, 200);
    let doc: Value = serde_json::from_str(&body).expect("json");
    assert!(doc["paths"]["/v1/dispatch"]["post"].is_object());
    assert!(doc["components"]["schemas"]["ActionOutcome"].is_object());
    assert!(doc["components"]["schemas"]["Action"].is_object());
    // Dispatch, then the histogram shows it.
    let (s, _) = post(&c, &server.url("/v1/dispatch"), good().to_string()).await;
    assert_eq!(s, 200);
    let (_, metrics) = get("/metrics").await;
    assert!(
        metrics.contains("acteon_dispatch_duration_seconds_bucket{outcome=\"executed\""),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "acteon_dispatches_total{namespace=\"ns\",outcome=\"executed\",provider=\"p\"} 1"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("acteon_config_snapshot_version 1"));
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests() {
    let hook = Recorder::start().await;
    *hook.delay.lock() = Duration::from_millis(800);
    let config = format!(
        "apiVersion: acteon.dev/v1alpha1\nkind: Provider\nmetadata: {{name: slow, namespace: ns}}\nspec:\n  type: webhook\n  webhook: {{url: \"{}\"}}\n  timeoutSeconds: 5\n",
        hook.url("/slow")
    );
    let mut server = start("drain", &config, &[]);
    let c = reqwest::Client::new();
    let mut action = good();
    action["provider"] = json!("slow");
    let url = server.url("/v1/dispatch");
    let in_flight = tokio::spawn(async move { post(&c, &url, action.to_string()).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.terminate();
    let (status, body) = in_flight.await.expect("task");
    assert_eq!(status, 200, "the in-flight request completed: {body}");
    assert!(body.get("Executed").is_some(), "{body}");
    let exit = tokio::task::spawn_blocking(move || server.child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(exit.success(), "clean exit after draining: {exit:?}");
    assert_eq!(hook.count(), 1);
}

#[test]
fn invalid_configuration_refuses_to_start() {
    let file = write_config(
        "invalid",
        "apiVersion: acteon.dev/v1alpha1\nkind: Rule\nmetadata: {name: r, namespace: ns}\nspec:\n  condition: {field: action.tenant, matches: '(unclosed'}\n  action: {type: suppress}\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_acteon-gateway"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            file.to_str().expect("utf-8"),
        ])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Rule ns/r")
            && err.contains("spec.condition.matches")
            && err.contains("regex"),
        "{err}"
    );
}

async fn metrics_text(client: &reqwest::Client, server: &Server) -> String {
    let resp = client
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("sent");
    resp.text().await.expect("text")
}

/// Sum of every sample of a metric family (0 when absent).
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn strict_parsing_and_json_errors_everywhere() {
    let server = start("strict", CONFIG, &[]);
    let c = reqwest::Client::new();
    let url = server.url("/v1/dispatch");
    let batch = server.url("/v1/dispatch/batch");
    let one = good().to_string();

    let (s, b) = post(&c, &url, format!("{one}{one}")).await;
    assert_error(s, &b, 400, "data after the value");
    let (s, b) = post(&c, &url, format!("{one} garbage")).await;
    assert_error(s, &b, 400, "data after the value");
    let (s, b) = post(&c, &batch, "[]]]garbage").await;
    assert_error(s, &b, 400, "data after the value");
    // Trailing whitespace is fine.
    let (s, b) = post(&c, &url, format!("{one}\n \t")).await;
    assert_eq!(s, 200, "{b}");

    // serde would read a struct from a positional array.
    let positional = json!(["ns", "t", "p", "x", {}]).to_string();
    let (s, b) = post(&c, &url, positional.clone()).await;
    assert_error(s, &b, 400, "expected a JSON object");
    let (s, b) = post(&c, &batch, format!("[{positional}]")).await;
    assert_eq!(s, 200);
    assert!(
        b[0]["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("expected a JSON object")),
        "{b}"
    );
    let (s, b) = post(&c, &url, "42").await;
    assert_error(s, &b, 400, "expected a JSON object");

    let (s, b) = post(&c, &server.url("/v1/dispatch?dry_run=maybe"), one.clone()).await;
    assert_error(s, &b, 400, "dry_run");
    let (s, b) = post(&c, &server.url("/v1/dispatch/batch?dry_run=maybe"), "[]").await;
    assert_error(s, &b, 400, "dry_run");

    let (s, b) = get_json(&c, &url).await;
    assert_eq!(s, 405, "{b}");
    assert_eq!(b["code"], "METHOD_NOT_ALLOWED", "{b}");
    assert_eq!(b["retryable"], false);
    let (s, b) = get_json(&c, &server.url("/nothing")).await;
    assert_eq!(s, 404);
    assert_eq!(b["code"], "NOT_FOUND", "{b}");
    // A missing resource says which, unlike a path no route serves.
    let (s, b) = get_json(&c, &server.url("/v1/groups/no-such-group")).await;
    assert_eq!((s, b["code"].as_str()), (404, Some("NOT_FOUND")), "{b}");
    assert_eq!(b["message"], "no group \"no-such-group\"", "{b}");
    let flushed = c
        .delete(server.url("/v1/groups/no-such-group"))
        .send()
        .await
        .expect("sent");
    assert_eq!(flushed.status(), 404);
    let b: Value = flushed.json().await.expect("JSON");
    assert_eq!(b["message"], "no group \"no-such-group\"", "{b}");
    let (_, b) = get_json(&c, &server.url("/nothing")).await;
    assert_eq!(b["message"], "no such endpoint", "{b}");

    // A path parameter that is not UTF-8 once decoded: the JSON 400, not axum's plain text.
    for path in [
        "/v1/audit/%FF%FE",
        "/v1/dlq/%FF%FE",
        "/v1/groups/%FF%FE",
        "/v1/events/%FF%FE",
        "/v1/chains/%FF%FE",
    ] {
        let (s, b) = get_json(&c, &server.url(path)).await;
        assert_error(s, &b, 400, "invalid path");
    }

    // The OpenAPI document declares the limits the server enforces.
    let (_, doc) = get_json(&c, &server.url("/api-doc/openapi.json")).await;
    let props = &doc["components"]["schemas"]["Action"]["properties"];
    assert_eq!(props["namespace"]["maxLength"], 63, "{props}");
    assert_eq!(
        props["namespace"]["pattern"], "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        "{props}"
    );
    assert_eq!(props["dedup_key"]["maxLength"], 1024, "{props}");
    assert_eq!(props["tenant"]["maxLength"], 253, "{props}");
}

/// Acteon's SDKs: `health()` is `GET /health` = 200; an unknown provider is a `Failed`
/// outcome; a batch item error is `{"error": {"code", "message", "retryable"}}`.
#[tokio::test]
async fn acteon_sdk_shapes() {
    let server = start("sdk", CONFIG, &[]);
    let c = reqwest::Client::new();
    let (s, b) = get_json(&c, &server.url("/health")).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["status"], "ok");
    assert_eq!(b["ready"], true);
    assert_eq!(b["state_backend"], json!({"kind": "memory", "up": true}));
    let mut unknown = good();
    unknown["provider"] = json!("ghost");
    let mut bad = good();
    bad["namespace"] = json!("Not_A_Namespace");
    let (s, b) = post(
        &c,
        &server.url("/v1/dispatch/batch"),
        json!([unknown, bad]).to_string(),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b[0]["Failed"]["code"], "PROVIDER_NOT_FOUND", "{b}");
    assert_eq!(b[0]["Failed"]["retryable"], false, "{b}");
    let err = &b[1]["error"];
    assert_eq!(err["code"], "INVALID_REQUEST", "{b}");
    assert_eq!(err["retryable"], false, "{b}");
    assert!(
        err["message"]
            .as_str()
            .is_some_and(|m| m.contains("`namespace`")),
        "{b}"
    );
    let metrics = metrics_text(&c, &server).await;
    assert!(
        metrics.contains("acteon_bad_requests_total{reason=\"unknown_provider\"} 1"),
        "{metrics}"
    );
}

/// Bad bytes and oversize fields are the client's fault: 400 naming the field on every
/// backend, and no state error is counted (a NUL used to reach Postgres and answer 503).
async fn bad_bytes_are_400_not_outages(state: &str) {
    let prefix = format!(
        "acteon_b{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let dedup_config = format!(
        "{CONFIG}---\napiVersion: acteon.dev/v1alpha1\nkind: Rule\nmetadata: {{name: d, namespace: ns}}\nspec:\n  condition: {{field: action.action_type, eq: x}}\n  action: {{type: deduplicate, ttlSeconds: 60}}\n"
    );
    let server = start(
        &format!("bytes-{}", &prefix[8..]),
        &dedup_config,
        &["--state", state, "--state-prefix", &prefix],
    );
    let c = reqwest::Client::new();
    let url = server.url("/v1/dispatch");
    let long = |n: usize| Value::String("k".repeat(n));
    let cases: Vec<(&str, Value, &str)> = vec![
        ("namespace", json!("ns\u{0}"), "`namespace`"),
        ("namespace", json!("ns\nforged"), "`namespace`"),
        ("namespace", json!("a:b"), "`namespace`"),
        ("namespace", long(64), "`namespace`"),
        ("tenant", json!("t\u{0}"), "`tenant`"),
        ("tenant", json!("t\r\nx"), "`tenant`"),
        ("tenant", long(254), "`tenant`"),
        ("provider", json!("p\u{0}"), "`provider`"),
        ("action_type", json!("x\u{1b}[2J"), "`action_type`"),
        ("id", json!("id\u{0}"), "`id`"),
        ("id", long(257), "`id`"),
        ("dedup_key", json!("key\u{0}"), "`dedup_key`"),
        ("dedup_key", long(1025), "`dedup_key`"),
        ("dedup_key", long(100 * 1024), "`dedup_key`"),
        ("fingerprint", json!("f\u{0}"), "`fingerprint`"),
        ("fingerprint", long(1025), "`fingerprint`"),
        ("status", json!("s\u{7f}"), "`status`"),
        ("metadata", json!({"k\u{0}": "v"}), "`metadata key`"),
        ("metadata", json!({"k": "v\u{0}"}), "`metadata value`"),
        (
            "metadata",
            json!({"k": "v".repeat(1025)}),
            "`metadata value`",
        ),
    ];
    for (field, value, needle) in cases {
        let mut action = good();
        action[field] = value;
        let (s, b) = post(&c, &url, action.to_string()).await;
        assert_error(s, &b, 400, needle);
    }
    let many: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("k{i}"), json!("v"))).collect();
    let mut action = good();
    action["metadata"] = Value::Object(many);
    let (s, b) = post(&c, &url, action.to_string()).await;
    assert_error(s, &b, 400, "`metadata` has 65 entries");
    // A payload string may hold anything: it is data, not a key.
    let mut action = good();
    action["payload"] = json!({"text": "line\u{0}one\nline two"});
    action["dedup_key"] = json!(format!("ok-{prefix}"));
    let (s, b) = post(&c, &url, action.to_string()).await;
    assert_eq!(s, 200, "{b}");
    assert!(b.get("Executed").is_some(), "{b}");
    let metrics = metrics_text(&c, &server).await;
    assert_eq!(
        metric_sum(&metrics, "acteon_state_errors_total"),
        0.0,
        "{state}: no state error counted\n{metrics}"
    );
}

#[tokio::test]
async fn bad_bytes_are_400_on_memory() {
    bad_bytes_are_400_not_outages("memory").await;
}

#[tokio::test]
async fn bad_bytes_are_400_on_redis() {
    let url = std::env::var("ACTEON_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    bad_bytes_are_400_not_outages(&url).await;
}

#[tokio::test]
async fn bad_bytes_are_400_on_postgres() {
    let url = std::env::var("ACTEON_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".to_owned());
    bad_bytes_are_400_not_outages(&url).await;
}

/// A raw connection to the server.
async fn connect(server: &Server) -> tokio::net::TcpStream {
    let addr = server.base.trim_start_matches("http://").to_owned();
    tokio::net::TcpStream::connect(addr).await.expect("connect")
}

/// Waits until the server closes `stream` (EOF or reset), up to `limit`; returns how long.
async fn closed_within(stream: &mut tokio::net::TcpStream, limit: Duration) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let started = std::time::Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(
            tokio::time::Instant::from_std(started + limit),
            stream.read(&mut buf),
        )
        .await
        {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn idle_and_slow_connections_are_closed_and_capped() {
    use tokio::io::AsyncWriteExt;
    let server = start(
        "conns",
        CONFIG,
        &[
            "--http-max-connections",
            "3",
            "--http-idle-timeout-seconds",
            "2",
            "--http-header-timeout-ms",
            "500",
        ],
    );
    // Slowloris: a head trickling in is cut at the header timeout, before the idle one.
    let mut slow = connect(&server).await;
    slow.write_all(b"POST /v1/dispatch HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("write");
    let trickle = async {
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if slow.write_all(b"x-a: b\r\n").await.is_err() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(700), trickle).await;
    let took = closed_within(&mut slow, Duration::from_secs(3)).await;
    assert!(
        took.is_some(),
        "a trickling head is cut at the header timeout"
    );

    // Idle keep-alive: served, then closed after the idle timeout (not the header one).
    let mut ka = connect(&server).await;
    ka.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let mut first = [0u8; 15];
    tokio::io::AsyncReadExt::read_exact(&mut ka, &mut first)
        .await
        .expect("response");
    assert_eq!(&first, b"HTTP/1.1 200 OK");
    let idle = closed_within(&mut ka, Duration::from_secs(6))
        .await
        .expect("idle closed");
    assert!(
        idle >= Duration::from_millis(1500) && idle <= Duration::from_secs(4),
        "closed after {idle:?}, the idle timeout is 2 s"
    );

    // The cap: three silent connections hold every slot; a normal client waits in the
    // backlog and is served once they are reaped — at the header timeout (500 ms), since a
    // connection that never sent a request gets no full idle period (2 s).
    let mut idle_conns = Vec::new();
    for _ in 0..3 {
        idle_conns.push(connect(&server).await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(8))
        .build()
        .expect("client");
    let (s, b) = post(&c, &server.url("/v1/dispatch"), good().to_string()).await;
    let waited = started.elapsed();
    assert_eq!(s, 200, "{b}");
    assert!(
        waited >= Duration::from_millis(350) && waited < Duration::from_millis(1800),
        "the cap held the client until the silent connections were reaped at the header \
         timeout, not the idle one ({waited:?})"
    );
    for mut conn in idle_conns {
        assert!(
            closed_within(&mut conn, Duration::from_secs(1))
                .await
                .is_some()
        );
    }
    let metrics = metrics_text(&c, &server).await;
    assert!(
        metric_sum(
            &metrics,
            "acteon_http_connection_timeouts_total{kind=\"idle\"}"
        ) >= 4.0,
        "{metrics}"
    );
    assert!(
        metric_sum(
            &metrics,
            "acteon_http_connection_timeouts_total{kind=\"header\"}"
        ) >= 1.0,
        "{metrics}"
    );
}

/// SIGTERM: `/readyz` turns 503 at once, requests are still served (asking clients to
/// reconnect elsewhere) during the delay, then the server drains and exits cleanly.
#[tokio::test]
async fn sigterm_turns_unready_and_keeps_serving_during_the_delay() {
    let mut server = start("delay", CONFIG, &["--shutdown-delay-seconds", "2"]);
    let c = reqwest::Client::new();
    assert_eq!(get_json(&c, &server.url("/readyz")).await.0, 200);
    let signalled = std::time::Instant::now();
    server.terminate();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (s, b) = get_json(&c, &server.url("/readyz")).await;
    assert_eq!(s, 503, "{b}");
    assert_eq!(b["message"], "shutting down");
    let resp = c
        .post(server.url("/v1/dispatch"))
        .header("content-type", "application/json")
        .body(good().to_string())
        .send()
        .await
        .expect("served during the delay");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()
            .get("connection")
            .and_then(|v| v.to_str().ok()),
        Some("close")
    );
    let exit = tokio::task::spawn_blocking(move || server.child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(exit.success(), "{exit:?}");
    let took = signalled.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "exited after {took:?}, before the delay"
    );
}

const DEDUP: &str = r#"
apiVersion: acteon.dev/v1alpha1
kind: Provider
metadata: {name: p, namespace: ns}
spec: {type: noop}
---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {name: d, namespace: ns}
spec:
  condition: {field: action.action_type, eq: x}
  action: {type: deduplicate, ttlSeconds: 60}
"#;

/// A gateway whose state backend is unreachable at start serves (503, not ready) and
/// recovers by itself when the backend appears.
async fn starts_without_its_backend(
    upstream: &str,
    url_via: impl Fn(std::net::SocketAddr) -> String,
) {
    use std::net::ToSocketAddrs;
    let addr = upstream
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .expect("backend address");
    let proxy = proxy::FaultProxy::start(addr);
    proxy.cut();
    let prefix = format!(
        "acteon_l{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let state = url_via(proxy.addr());
    let server = start(
        &format!("lazy-{}", &prefix[8..]),
        DEDUP,
        &[
            "--state",
            &state,
            "--state-prefix",
            &prefix,
            "--state-timeout-ms",
            "500",
            "--state-check-seconds",
            "1",
        ],
    );
    let c = reqwest::Client::new();
    let (s, b) = get_json(&c, &server.url("/readyz")).await;
    assert_eq!(s, 503, "{b}");
    let mut action = good();
    action["dedup_key"] = json!(prefix);
    let (s, b) = post(&c, &server.url("/v1/dispatch"), action.to_string()).await;
    assert_eq!(s, 503, "{b}");
    assert_eq!(b["retryable"], true, "{b}");
    let (s, b) = get_json(&c, &server.url("/health")).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["state_backend"]["up"], false, "{b}");

    proxy.restore();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while get_json(&c, &server.url("/readyz")).await.0 != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "not ready after the backend appeared"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (s, b) = post(&c, &server.url("/v1/dispatch"), action.to_string()).await;
    assert_eq!(s, 200, "{b}");
    assert!(b.get("Executed").is_some(), "{b}");
    let (_, b) = post(&c, &server.url("/v1/dispatch"), action.to_string()).await;
    assert_eq!(b, json!("Deduplicated"), "the backend is in use");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_without_redis_and_recovers() {
    let url = std::env::var("ACTEON_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let host_port = url
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_owned();
    starts_without_its_backend(&host_port, |a| format!("redis://{a}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_without_postgres_and_recovers() {
    let url = std::env::var("ACTEON_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".to_owned());
    let (head, rest) = url.rsplit_once('@').expect("user@ in the postgres URL");
    let (host_port, db) = rest.split_once('/').unwrap_or((rest, ""));
    let (head, db) = (head.to_owned(), db.to_owned());
    starts_without_its_backend(host_port, move |a| format!("{head}@{a}/{db}")).await;
}
