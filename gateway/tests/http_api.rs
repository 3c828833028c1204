//! The HTTP API of the real binary: bad input of every kind gets a 4xx JSON error naming
//! the problem, and the server keeps serving; batches, dry runs, inspection endpoints,
//! metrics, OpenAPI, and draining on SIGTERM.

mod common;

use std::time::Duration;

use common::{Recorder, Server};
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

    let mut unknown = good();
    unknown["provider"] = json!("nope");
    let (s, b) = post(&c, &url, unknown.to_string()).await;
    assert_error(s, &b, 400, "unknown provider `nope`");

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
        b[0]["error"]
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
    assert!(
        items[2]["error"]
            .as_str()
            .is_some_and(|m| m.contains("action [2]") && m.contains("tenant")),
        "{}",
        items[2]
    );
    assert!(
        items[3]["error"]
            .as_str()
            .is_some_and(|m| m.contains("nope")),
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
