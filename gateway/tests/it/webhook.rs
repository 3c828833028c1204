//! The webhook provider against a local HTTP server that records requests and answers
//! as scripted: success, 5xx, 4xx, slow answers, nothing listening.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use acteon_api::crd::ProviderSpec;
use acteon_gateway::action::Action;
use acteon_gateway::outcome::ResponseStatus;
use acteon_gateway::providers::Provider;
use acteon_gateway::providers::webhook::WebhookProvider;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::common;

/// How the server answers one request.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// This status, with a JSON body.
    Status(u16),
    /// Wait, then answer 200.
    Delay(Duration),
    /// This status, with a text body that quotes the request's URL with its credentials
    /// (as some servers do in their errors).
    Echo(u16),
}

/// A secret the server puts in an unsafe header of its answers (`set-cookie`).
const MIRROR_SECRET: &str = "their-s3ssion-cookie";

/// One request the server saw.
#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Default)]
struct Script {
    /// Answers in order; the last one repeats.
    answers: VecDeque<Answer>,
    seen: Vec<Seen>,
}

#[derive(Clone)]
struct Mock(Arc<Mutex<Script>>);

impl Mock {
    /// Serves on 127.0.0.1 on a free port until the test ends.
    async fn start(answers: &[Answer]) -> (Mock, SocketAddr) {
        let mock = Mock(Arc::new(Mutex::new(Script {
            answers: answers.iter().copied().collect(),
            seen: Vec::new(),
        })));
        let app = Router::new().fallback(handle).with_state(mock.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            axum::serve(listener, app).await.expect("mock server runs");
        });
        (mock, addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.0.lock().unwrap().seen.clone()
    }
}

async fn handle(
    State(mock): State<Mock>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned);
    let (answer, n) = {
        let mut script = mock.0.lock().unwrap();
        script.seen.push(Seen {
            method,
            path: uri.path().to_owned(),
            headers,
            body,
        });
        let answer = if script.answers.len() > 1 {
            script.answers.pop_front()
        } else {
            script.answers.front().copied()
        };
        (answer.unwrap_or(Answer::Status(200)), script.seen.len())
    };
    let status = match answer {
        Answer::Status(code) | Answer::Echo(code) => {
            StatusCode::from_u16(code).expect("valid status")
        }
        Answer::Delay(d) => {
            tokio::time::sleep(d).await;
            StatusCode::OK
        }
    };
    let headers = [
        ("x-request-number", n.to_string()),
        ("x-request-id", format!("req-{n}")),
        ("set-cookie", format!("session={MIRROR_SECRET}")),
    ];
    if let Answer::Echo(_) = answer {
        let host = host.as_deref().unwrap_or("?");
        let body = format!("invalid key for http://user:{URL_PASSWORD}@{host}{uri}");
        return (status, headers, body).into_response();
    }
    let body = json!({"received": n, "status": status.as_u16()});
    (status, headers, axum::Json(body)).into_response()
}

/// A webhook provider for `url` with small backoffs.
fn provider(url: &str, max_attempts: u32, timeout_seconds: u64) -> WebhookProvider {
    let spec: ProviderSpec = serde_json::from_value(json!({
        "type": "webhook",
        "webhook": {"url": url, "method": "POST", "headers": {"X-Team": "iot", "Authorization": "Bearer t0ken"}},
        "timeoutSeconds": timeout_seconds,
        "retry": {"maxAttempts": max_attempts, "initialBackoffMs": 10, "maxBackoffMs": 40}
    }))
    .expect("provider spec parses");
    let webhook = spec.webhook.as_ref().expect("webhook block");
    WebhookProvider::new(webhook, &spec, reqwest::Client::new())
}

fn action() -> Action {
    serde_json::from_value(json!({
        "id": "action-1",
        "namespace": "iot",
        "tenant": "smartbuilding-hq",
        "provider": "alert-fanout",
        "action_type": "sensor_reading",
        "payload": {"device_id": "sensor-7", "value": 91.5, "tags": ["a", "b"]}
    }))
    .expect("action parses")
}

fn header<'a>(seen: &'a Seen, name: &str) -> &'a str {
    seen.headers
        .get(name)
        .unwrap_or_else(|| panic!("header {name} missing: {:?}", seen.headers))
        .to_str()
        .unwrap()
}

#[tokio::test]
async fn success_returns_the_json_body_and_sends_payload_and_headers() {
    let (mock, addr) = Mock::start(&[Answer::Status(200)]).await;
    let p = provider(&format!("http://{addr}/hooks/alerts"), 3, 5);
    let response = p.execute(&action()).await.expect("2xx is a success");
    assert_eq!(response.status, ResponseStatus::Success);
    assert_eq!(response.body, json!({"received": 1, "status": 200}));
    assert_eq!(
        response.headers.get("x-request-id").map(String::as_str),
        Some("req-1"),
        "request ids are passed on"
    );
    for unsafe_header in ["x-request-number", "set-cookie"] {
        assert!(
            !response.headers.contains_key(unsafe_header),
            "{unsafe_header}: {:?}",
            response.headers
        );
    }
    assert!(
        response
            .headers
            .get("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{:?}",
        response.headers
    );

    let seen = mock.seen();
    assert_eq!(seen.len(), 1);
    let req = &seen[0];
    assert_eq!(req.method, Method::POST);
    assert_eq!(req.path, "/hooks/alerts");
    let body: Value = serde_json::from_slice(&req.body).expect("the body is JSON");
    assert_eq!(body, action().payload, "the body is the payload");
    assert!(header(req, "content-type").starts_with("application/json"));
    assert_eq!(header(req, "x-acteon-action-id"), "action-1");
    assert_eq!(header(req, "x-acteon-namespace"), "iot");
    assert_eq!(header(req, "x-acteon-tenant"), "smartbuilding-hq");
    assert_eq!(header(req, "x-acteon-action-type"), "sensor_reading");
    assert_eq!(header(req, "x-team"), "iot", "configured headers are sent");
    assert_eq!(header(req, "authorization"), "Bearer t0ken");
}

#[tokio::test]
async fn configured_method_is_used() {
    let (mock, addr) = Mock::start(&[Answer::Status(204)]).await;
    let spec: ProviderSpec = serde_json::from_value(json!({
        "type": "webhook",
        "webhook": {"url": format!("http://{addr}/put"), "method": "put"}
    }))
    .unwrap();
    let p = WebhookProvider::new(
        spec.webhook.as_ref().unwrap(),
        &spec,
        reqwest::Client::new(),
    );
    let response = p.execute(&action()).await.expect("204 is a success");
    assert_eq!(response.status, ResponseStatus::Success);
    assert_eq!(mock.seen()[0].method, Method::PUT);
}

#[tokio::test]
async fn server_errors_are_retried_until_success() {
    let (mock, addr) = Mock::start(&[
        Answer::Status(500),
        Answer::Status(500),
        Answer::Status(200),
    ])
    .await;
    let p = provider(&format!("http://{addr}/flaky"), 3, 5);
    let response = p
        .execute(&action())
        .await
        .expect("the third attempt succeeds");
    assert_eq!(response.status, ResponseStatus::Success);
    assert_eq!(response.body["received"], 3);
    let seen = mock.seen();
    assert_eq!(seen.len(), 3, "the server saw three attempts");
    for req in &seen {
        let body: Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(body, action().payload, "every attempt carries the payload");
        assert_eq!(header(req, "x-acteon-action-id"), "action-1");
    }
}

#[tokio::test]
async fn persistent_server_errors_fail_after_max_attempts() {
    let (mock, addr) = Mock::start(&[Answer::Status(500)]).await;
    let p = provider(&format!("http://{addr}/down"), 2, 5);
    let err = p
        .execute(&action())
        .await
        .expect_err("5xx is never a success");
    assert_eq!(err.code, "HTTP_5XX", "{err:?}");
    assert_eq!(err.attempts, 2, "{err:?}");
    assert!(err.retryable, "{err:?}");
    assert!(err.message.contains("500"), "{err:?}");
    assert_eq!(mock.seen().len(), 2);
}

#[tokio::test]
async fn client_errors_fail_at_once() {
    let (mock, addr) = Mock::start(&[Answer::Status(404)]).await;
    let p = provider(&format!("http://{addr}/missing"), 3, 5);
    let err = p
        .execute(&action())
        .await
        .expect_err("4xx is never a success");
    assert_eq!(err.code, "HTTP_4XX", "{err:?}");
    assert_eq!(err.attempts, 1, "{err:?}");
    assert!(!err.retryable, "{err:?}");
    assert!(err.message.contains("404"), "{err:?}");
    assert_eq!(mock.seen().len(), 1, "a 404 is not retried");
}

#[tokio::test]
async fn too_many_requests_is_retried() {
    let (mock, addr) = Mock::start(&[Answer::Status(429), Answer::Status(200)]).await;
    let p = provider(&format!("http://{addr}/limited"), 3, 5);
    let response = p.execute(&action()).await.expect("the retry succeeds");
    assert_eq!(response.status, ResponseStatus::Success);
    assert_eq!(mock.seen().len(), 2);
}

#[tokio::test]
async fn slow_answers_time_out() {
    let (mock, addr) = Mock::start(&[Answer::Delay(Duration::from_millis(2500))]).await;
    let p = provider(&format!("http://{addr}/slow"), 2, 1);
    let started = Instant::now();
    let err = p
        .execute(&action())
        .await
        .expect_err("a slow answer is a failure");
    let elapsed = started.elapsed();
    assert_eq!(err.code, "TIMEOUT", "{err:?}");
    assert_eq!(err.attempts, 2, "timeouts are retried: {err:?}");
    assert!(err.retryable, "{err:?}");
    assert_eq!(mock.seen().len(), 2);
    // Two attempts of one second each (plus a small backoff), not the server's 2.5 s each.
    assert!(elapsed >= Duration::from_millis(1900), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(4500), "{elapsed:?}");
}

#[tokio::test]
async fn nothing_listening_is_a_connection_error_retried_max_attempts_times() {
    // A port that was free a moment ago: nothing listens there any more.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let p = provider(&format!("http://{addr}/nobody"), 3, 2);
    let started = Instant::now();
    let err = p
        .execute(&action())
        .await
        .expect_err("connection refused is a failure");
    assert_eq!(err.code, "CONNECTION", "{err:?}");
    assert_eq!(err.attempts, 3, "{err:?}");
    assert!(err.retryable, "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "small backoffs: {:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------
// Credentials in the URL and what of the answer is returned (issue 10 item 7)

/// The key of the webhook URLs below; must never show.
const URL_KEY: &str = "k3y-in-the-query";
/// The password of the webhook URLs below; must never show.
const URL_PASSWORD: &str = "pa55w0rd-in-url";

fn secret_url(addr: SocketAddr) -> String {
    format!("http://user:{URL_PASSWORD}@{addr}/hook?api_key={URL_KEY}&team=iot")
}

fn provider_with(url: &str, extra: Value) -> WebhookProvider {
    let mut spec = json!({
        "type": "webhook",
        "webhook": {"url": url},
        "timeoutSeconds": 2,
        "retry": {"maxAttempts": 1}
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    let spec: ProviderSpec = serde_json::from_value(spec).expect("provider spec parses");
    let webhook = spec.webhook.as_ref().expect("webhook block");
    WebhookProvider::new(webhook, &spec, reqwest::Client::new())
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in [URL_KEY, URL_PASSWORD, MIRROR_SECRET] {
        assert!(!text.contains(secret), "{what} shows {secret:?}: {text}");
    }
}

#[tokio::test]
async fn a_failing_answer_names_the_url_redacted_and_quotes_the_body_briefly() {
    let (mock, addr) = Mock::start(&[Answer::Echo(400)]).await;
    let p = provider_with(&secret_url(addr), json!({}));
    let err = p.execute(&action()).await.expect_err("400");
    assert_eq!(err.code, "HTTP_4XX");
    // The request itself carried the credentials.
    let seen = mock.seen();
    assert!(header(&seen[0], "authorization").starts_with("Basic "));
    assert_eq!(seen[0].path, "/hook");
    assert_eq!(
        err.message.split(" answered").next(),
        Some(format!("POST http://***@{addr}/hook?api_key=***&team=***").as_str()),
        "{}",
        err.message
    );
    assert!(
        err.message
            .contains("400 Bad Request: invalid key for http://***@"),
        "{}",
        err.message
    );
    assert_no_secret("the error (URL and echoed body)", &err.message);
    assert!(err.message.len() < 512, "bounded: {}", err.message.len());
    assert!(!format!("{p:?}").contains(URL_KEY), "Debug shows the key");
}

#[tokio::test]
async fn transport_errors_do_not_quote_the_url() {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let p = provider_with(&secret_url(addr), json!({}));
    let err = p.execute(&action()).await.expect_err("nothing listens");
    assert_eq!(err.code, "CONNECTION");
    assert!(
        err.message
            .contains(&format!("http://***@{addr}/hook?api_key=***")),
        "{}",
        err.message
    );
    assert_no_secret("a connection error", &err.message);

    // A timeout too.
    let (_mock, addr) = Mock::start(&[Answer::Delay(Duration::from_millis(1500))]).await;
    let p = provider_with(&secret_url(addr), json!({"timeoutSeconds": 1}));
    let err = p.execute(&action()).await.expect_err("slow");
    assert_eq!(err.code, "TIMEOUT");
    assert_no_secret("a timeout", &err.message);
}

#[tokio::test]
async fn redact_response_returns_nothing_of_the_answer() {
    let (_mock, addr) = Mock::start(&[Answer::Status(200), Answer::Echo(400)]).await;
    let p = provider_with(&secret_url(addr), json!({"redactResponse": true}));
    let ok = p.execute(&action()).await.expect("200");
    assert_eq!(ok.body, json!({}));
    assert!(ok.headers.is_empty(), "{:?}", ok.headers);
    let err = p.execute(&action()).await.expect_err("400");
    assert_eq!(
        err.message,
        format!("POST http://***@{addr}/hook?api_key=***&team=*** answered 400 Bad Request")
    );
}

/// Plain text (Slack's "ok", an empty 204) comes back as Acteon's envelope, a JSON object:
/// Acteon's Go SDK decodes `body` as one and would report a delivered action as an error.
#[tokio::test]
async fn a_text_answer_comes_back_in_acteons_envelope() {
    let (_mock, addr) = Mock::start(&[Answer::Echo(200), Answer::Echo(202)]).await;
    let p = provider_with(&secret_url(addr), json!({}));
    let ok = p.execute(&action()).await.expect("200");
    assert_eq!(ok.body["status_code"], 200, "{}", ok.body);
    let text = ok.body["body"].as_str().expect("the text");
    assert!(text.starts_with("invalid key for http://"), "{text}");
    assert_no_secret("a text answer", text);
    let ok = p.execute(&action()).await.expect("202");
    assert_eq!(ok.body["status_code"], 202, "{}", ok.body);
}

#[tokio::test]
async fn huge_answers_are_cut() {
    async fn huge() -> String {
        "x".repeat(5 << 20)
    }
    let app = Router::new().fallback(huge);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    let p = provider_with(&format!("http://{addr}/big"), json!({}));
    let ok = p.execute(&action()).await.expect("200");
    assert_eq!(ok.body["status_code"], 200, "{}", ok.body);
    let body = ok.body["body"].as_str().expect("a truncated text");
    assert!(
        body.len() < 4200 && body.ends_with("(truncated)"),
        "{}",
        body.len()
    );
}

/// Through the real binary: the caller's outcome, the gateway's log and its metrics show
/// neither the URL's credentials nor the provider's cookie.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_leaks_no_credential_to_callers_logs_or_metrics() {
    let (mock, addr) = Mock::start(&[Answer::Echo(400)]).await;
    let dir =
        std::env::temp_dir().join(format!("acteon-webhook-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("hook.yaml");
    std::fs::write(
        &config,
        format!(
            "apiVersion: acteon.dev/v1alpha1\nkind: Provider\nmetadata: {{name: hook, namespace: iot}}\n\
             spec:\n  type: webhook\n  retry: {{maxAttempts: 1}}\n  webhook:\n    url: \"{}\"\n",
            secret_url(addr)
        ),
    )
    .expect("config");
    let log = dir.join("gateway.log");
    let config_arg = config.display().to_string();
    let gw = common::Server::start_with(
        &["--config", &config_arg],
        &[("RUST_LOG", "debug")],
        Some(&log),
    );
    let client = reqwest::Client::new();
    let resp = client
        .post(gw.url("/v1/dispatch"))
        .json(
            &json!({"namespace": "iot", "tenant": "t", "provider": "hook",
                      "action_type": "x", "payload": {}}),
        )
        .send()
        .await
        .expect("dispatch");
    let outcome = resp.text().await.expect("body");
    assert_eq!(mock.seen().len(), 1, "delivered: {outcome}");
    assert!(
        outcome.contains("Failed") && outcome.contains("HTTP_4XX"),
        "{outcome}"
    );
    assert!(
        outcome.contains("api_key=***"),
        "the URL is named, redacted: {outcome}"
    );
    assert_no_secret("the outcome", &outcome);
    for path in ["/metrics", "/v1/config", "/v1/rules"] {
        let text = client
            .get(gw.url(path))
            .send()
            .await
            .expect(path)
            .text()
            .await
            .expect(path);
        assert_no_secret(path, &text);
    }
    drop(gw);
    let logged = std::fs::read_to_string(&log).expect("log");
    assert!(
        logged.contains("delivery failed"),
        "the failure is logged: {logged}"
    );
    assert_no_secret("the log", &logged);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `https://` URLs speak TLS (real Slack, PagerDuty, Discord, Teams and Opsgenie are all
/// https): the peer's first bytes are a TLS handshake record (ClientHello).
#[tokio::test]
async fn https_urls_speak_tls() {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let first_bytes = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut head = [0u8; 3];
        stream.read_exact(&mut head).await.expect("read");
        head
    });
    let p = provider(&format!("https://{addr}/hook"), 1, 2);
    let err = p.execute(&action()).await.expect_err("no TLS server there");
    let head = first_bytes.await.expect("peer task");
    assert_eq!(head[0], 0x16, "a TLS handshake record, got {head:?}");
    assert_eq!(head[1], 0x03, "TLS version major 3, got {head:?}");
    assert!(err.retryable, "{err:?}");
}
