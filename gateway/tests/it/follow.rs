//! The gateway binary following the operator's snapshots (`serve --state <url>` with no
//! `--config`), on a real Redis and a real Postgres (`ACTEON_TEST_REDIS_URL`,
//! `ACTEON_TEST_POSTGRES_URL`). The test plays the operator: it compiles YAML, serializes
//! the snapshot and publishes it through the config channel.
//!
//! Checked on both backends: 503 before the first snapshot, then the published rules; a
//! changed rule takes effect within a second (latency printed); a snapshot that does not
//! build (bad regex, garbage bytes) leaves the previous one serving and shows
//! `failed_version`; a gateway started later gets the current snapshot; reports list every
//! gateway with its version; a gateway cut off from the backend keeps serving and catches up
//! when it returns; webhook `secretHeaders` sealed by the operator reach the target, and a
//! snapshot sealed with another key is refused while the old one keeps serving.

use crate::common;
use crate::common::proxy;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use acteon_api::Snapshot;
use acteon_api::compile::{CompileOptions, compile, parse_text};
use acteon_channel::seal::SealKey;
use acteon_channel::{ConfigChannel, GatewayReport, PublishOutcome};
use common::{Recorder, Server};
use proxy::FaultProxy;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------
// Backends

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Redis,
    Postgres,
}

/// A backend and a fresh prefix (Redis key prefix / Postgres schema) for one test.
struct Backend {
    kind: Kind,
    url: String,
    prefix: String,
}

impl Backend {
    fn new(kind: Kind) -> Backend {
        let url = match kind {
            Kind::Redis => std::env::var("ACTEON_TEST_REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned()),
            Kind::Postgres => std::env::var("ACTEON_TEST_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned()),
        };
        // `acteon_test_<secs>_<random>`: the Postgres state tests drop stale ones.
        let secs = acteon_gateway::state::unix_ms() / 1000;
        let prefix = format!(
            "acteon_test_{secs}_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        Backend { kind, url, prefix }
    }

    /// The config channel, as the operator would open it.
    async fn channel(&self) -> Arc<dyn ConfigChannel> {
        acteon_channel::connect(&self.url, &self.prefix, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("config channel on {:?}: {e}", self.kind))
    }

    /// This backend's URL with its host:port replaced by `addr` (to go through a proxy).
    fn url_via(&self, addr: SocketAddr) -> String {
        let (scheme, rest) = self.url.split_once("://").expect("URL with scheme");
        let (user, hostpart) = match rest.rsplit_once('@') {
            Some((user, host)) => (format!("{user}@"), host),
            None => (String::new(), rest),
        };
        let tail = hostpart.find('/').map_or("", |i| &hostpart[i..]);
        format!("{scheme}://{user}{addr}{tail}")
    }

    /// The backend's socket address (for the proxy's upstream).
    fn addr(&self) -> SocketAddr {
        use std::net::ToSocketAddrs;
        let rest = self.url.split_once("://").expect("URL with scheme").1;
        let hostpart = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
        let host_port = hostpart.split('/').next().expect("host");
        let host_port = if host_port.contains(':') {
            host_port.to_owned()
        } else {
            let port = if self.kind == Kind::Redis { 6379 } else { 5432 };
            format!("{host_port}:{port}")
        };
        host_port
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .unwrap_or_else(|| panic!("resolves {host_port}"))
    }

    /// Gateway arguments: follow this backend under this prefix.
    fn args<'a>(&'a self, url: &'a str, id: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec![
            "--state",
            url,
            "--state-prefix",
            &self.prefix,
            "--gateway-id",
            id,
            "--report-interval-seconds",
            "1",
            // The scenarios above publish bare snapshots; authentication is checked by
            // `refuses_snapshots_that_do_not_authenticate`.
            "--allow-unsigned-snapshots",
        ];
        args.extend_from_slice(extra);
        args
    }

    /// Drops the Postgres schema (best effort; stale ones are dropped by later runs too).
    async fn cleanup(&self) {
        if self.kind != Kind::Postgres {
            return;
        }
        use sqlx::Connection;
        if let Ok(mut conn) = sqlx::PgConnection::connect(&self.url).await {
            // The prefix is ours: `acteon_test_<digits>_<hex>`.
            let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.prefix);
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Snapshots

fn compiled(yaml: &str) -> Snapshot {
    let docs = parse_text("test.yaml", yaml).unwrap_or_else(|e| panic!("YAML: {e:?}"));
    let c = compile(&docs, &CompileOptions::default());
    assert!(c.rejections.is_empty(), "rejected: {:?}", c.rejections);
    c.snapshot
}

/// A noop provider and a rule that suppresses actions whose `payload.kind` is `kind`.
fn rules(kind: &str) -> Snapshot {
    compiled(&format!(
        r#"
apiVersion: acteon.dev/v1alpha1
kind: Provider
metadata: {{name: p, namespace: f}}
spec: {{type: noop}}
---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {{name: gate, namespace: f}}
spec:
  condition: {{field: action.payload.kind, eq: {kind}}}
  action: {{type: suppress}}
"#
    ))
}

async fn publish(channel: &dyn ConfigChannel, snapshot: &Snapshot) -> u64 {
    let body = serde_json::to_vec(snapshot).expect("snapshot serializes");
    publish_raw(channel, &snapshot.digest, &body).await
}

async fn publish_raw(channel: &dyn ConfigChannel, digest: &str, body: &[u8]) -> u64 {
    match channel.publish(digest, body).await.expect("publish") {
        PublishOutcome::Published(head) => head.version,
        PublishOutcome::Unchanged(head) => panic!("nothing new published (head {head:?})"),
    }
}

// ---------------------------------------------------------------------------------------
// HTTP

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

async fn get(client: &reqwest::Client, server: &Server, path: &str) -> (u16, Value) {
    let resp = client
        .get(server.url(path))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn dispatch(
    client: &reqwest::Client,
    server: &Server,
    ns: &str,
    provider: &str,
    kind: &str,
) -> (u16, Value) {
    let action = json!({
        "namespace": ns, "tenant": "t", "provider": provider, "action_type": "x",
        "payload": {"kind": kind},
    });
    let resp = client
        .post(server.url("/v1/dispatch"))
        .json(&action)
        .send()
        .await
        .unwrap_or_else(|e| panic!("dispatch: {e}"));
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Whether `payload.kind = kind` is suppressed (panics on anything but 200).
async fn suppressed(client: &reqwest::Client, server: &Server, kind: &str) -> bool {
    let (status, body) = dispatch(client, server, "f", "p", kind).await;
    assert_eq!(status, 200, "dispatch answered {status}: {body}");
    match &body {
        v if v.get("Suppressed").is_some() => true,
        v if v.get("Executed").is_some() => false,
        other => panic!("unexpected outcome {other}"),
    }
}

/// Polls `check` every 10 ms until it holds; returns how long it took, panics past `limit`.
async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn config(client: &reqwest::Client, server: &Server) -> Value {
    let (status, body) = get(client, server, "/v1/config").await;
    assert_eq!(status, 200, "/v1/config: {body}");
    body
}

async fn report_of(channel: &dyn ConfigChannel, id: &str) -> Option<GatewayReport> {
    channel
        .gateways()
        .await
        .expect("gateways()")
        .into_iter()
        .find(|r| r.gateway == id)
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn metrics(client: &reqwest::Client, server: &Server) -> String {
    client
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text")
}

fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("acteon-follow-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

// ---------------------------------------------------------------------------------------
// Scenarios

/// Readiness, first snapshot, a changed rule, unbuildable snapshots, late gateway, reports.
async fn follows_published_snapshots(kind: Kind) {
    let backend = Backend::new(kind);
    let channel = backend.channel().await;
    let client = client();
    let a_id = format!("gw-a-{}", &backend.prefix[backend.prefix.len() - 6..]);
    // Default poll period (5 s): prompt changes must come from notifications.
    let a = Server::start(&backend.args(&backend.url, &a_id, &[]));

    // Nothing published: not ready, dispatch 503 (not "unknown provider").
    let (status, body) = get(&client, &a, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("no configuration snapshot received yet")),
        "{body}"
    );
    let (status, body) = dispatch(&client, &a, "f", "p", "a").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "UNAVAILABLE", "{body}");
    assert_eq!(body["retryable"], true, "{body}");
    let info = config(&client, &a).await;
    assert_eq!(info["loaded"], false, "{info}");
    assert_eq!(info["version"], 0, "{info}");
    assert_eq!(info["source"], "channel", "{info}");
    let backend_kind = if kind == Kind::Redis {
        "redis"
    } else {
        "postgres"
    };
    assert_eq!(info["channel_backend"], backend_kind, "{info}");
    assert_eq!(info["gateway_id"], a_id.as_str(), "{info}");
    // The heartbeat reports version 0 before anything is served.
    eventually(
        "report before the first snapshot",
        Duration::from_secs(5),
        || async {
            report_of(&*channel, &a_id)
                .await
                .is_some_and(|r| r.version == 0)
        },
    )
    .await;

    // First snapshot.
    let v1_snapshot = rules("a");
    let v1 = publish(&*channel, &v1_snapshot).await;
    let first = eventually(
        "ready after the first publish",
        Duration::from_secs(5),
        || async { get(&client, &a, "/readyz").await.0 == 200 },
    )
    .await;
    println!("{kind:?}: first snapshot served {first:?} after publish");
    let (_, ready) = get(&client, &a, "/readyz").await;
    assert_eq!(ready["snapshot_version"], v1, "{ready}");
    assert!(suppressed(&client, &a, "a").await);
    assert!(!suppressed(&client, &a, "b").await);
    let info = config(&client, &a).await;
    assert_eq!(
        (info["loaded"].clone(), info["version"].clone()),
        (json!(true), json!(v1))
    );
    assert_eq!(info["digest"], v1_snapshot.digest.as_str(), "{info}");

    // A changed rule: measure publish → behaviour change.
    let v2_snapshot = rules("b");
    let published_at = Instant::now();
    let v2 = publish(&*channel, &v2_snapshot).await;
    let publish_took = published_at.elapsed();
    let latency = eventually("changed rule in effect", Duration::from_secs(3), || async {
        suppressed(&client, &a, "b").await
    })
    .await;
    let latency = publish_took + latency;
    println!(
        "{kind:?}: propagation latency publish → changed behaviour: {latency:?} \
         (publish call {publish_took:?})"
    );
    assert!(
        latency < Duration::from_millis(1500),
        "a changed rule took {latency:?} to take effect"
    );
    assert!(!suppressed(&client, &a, "a").await);

    // Valid JSON, but a rule with a bad regex: refused, v2 keeps serving.
    let mut bad: Value = serde_json::to_value(&v2_snapshot).expect("to JSON");
    bad["rules"][0]["spec"]["condition"] =
        json!({"field": "action.payload.kind", "matches": "(unclosed"});
    let v3 = publish_raw(
        &*channel,
        "bad-regex",
        &serde_json::to_vec(&bad).expect("JSON"),
    )
    .await;
    eventually(
        "failed_version in /v1/config",
        Duration::from_secs(3),
        || async { config(&client, &a).await["failed_version"] == v3 },
    )
    .await;
    let info = config(&client, &a).await;
    assert_eq!(info["version"], v2, "{info}");
    let error = info["error"].as_str().unwrap_or_default();
    assert!(error.contains("f/gate"), "the error names the rule: {info}");
    assert!(suppressed(&client, &a, "b").await, "v2 still serves");
    let text = metrics(&client, &a).await;
    assert_eq!(
        metric(&text, "acteon_config_reload_failures_total"),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "acteon_config_snapshot_version"),
        Some(v2 as f64)
    );
    assert_eq!(metric(&text, "acteon_config_reloads_total"), Some(2.0));
    // Reported right away: served v2, failed v3.
    eventually(
        "report with failed_version",
        Duration::from_secs(3),
        || async {
            report_of(&*channel, &a_id).await.is_some_and(|r| {
                r.version == v2 && r.failed_version == Some(v3) && r.error.is_some()
            })
        },
    )
    .await;

    // Garbage bytes: refused too.
    let v4 = publish_raw(&*channel, "garbage", b"\x00\xffnot a snapshot").await;
    eventually("garbage refused", Duration::from_secs(3), || async {
        config(&client, &a).await["failed_version"] == v4
    })
    .await;
    assert!(suppressed(&client, &a, "b").await, "v2 still serves");
    // Not retried in a loop: the failure count moves once per failed version.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let text = metrics(&client, &a).await;
    assert_eq!(
        metric(&text, "acteon_config_reload_failures_total"),
        Some(2.0)
    );

    // A good version again: applied, failure cleared.
    let v5_snapshot = rules("c");
    let v5 = publish(&*channel, &v5_snapshot).await;
    eventually("v5 served", Duration::from_secs(3), || async {
        config(&client, &a).await["version"] == v5
    })
    .await;
    let info = config(&client, &a).await;
    assert!(info.get("failed_version").is_none(), "{info}");
    assert!(info.get("error").is_none(), "{info}");
    assert!(suppressed(&client, &a, "c").await);

    // A gateway started after the publish gets the current snapshot at start.
    let b_id = format!("gw-b-{}", &backend.prefix[backend.prefix.len() - 6..]);
    let b = Server::start(&backend.args(&backend.url, &b_id, &[]));
    let late = eventually("late gateway ready", Duration::from_secs(5), || async {
        get(&client, &b, "/readyz").await.0 == 200
    })
    .await;
    println!("{kind:?}: late gateway ready {late:?} after listening");
    assert_eq!(config(&client, &b).await["version"], v5);
    assert!(suppressed(&client, &b, "c").await);

    // Both report the served version.
    eventually(
        "both gateways report v5",
        Duration::from_secs(5),
        || async {
            let reports = channel.gateways().await.expect("gateways()");
            [&a_id, &b_id].iter().all(|id| {
                reports.iter().any(|r| {
                    &r.gateway == *id
                        && r.version == v5
                        && r.digest == v5_snapshot.digest
                        && r.failed_version.is_none()
                })
            })
        },
    )
    .await;

    // A stopped gateway's report expires (TTL 3 × 1 s).
    drop(b);
    eventually(
        "stopped gateway's report expires",
        Duration::from_secs(8),
        || async { report_of(&*channel, &b_id).await.is_none() },
    )
    .await;
    assert!(report_of(&*channel, &a_id).await.is_some());
    drop(a);
    backend.cleanup().await;
}

/// Cut off from the backend, a gateway keeps serving its snapshot, then catches up.
async fn survives_an_outage(kind: Kind) {
    let backend = Backend::new(kind);
    let channel = backend.channel().await;
    let client = client();
    let proxy = FaultProxy::start(backend.addr());
    let via = backend.url_via(proxy.addr());
    let id = format!("gw-o-{}", &backend.prefix[backend.prefix.len() - 6..]);
    let gw = Server::start(&backend.args(
        &via,
        &id,
        &["--config-poll-seconds", "1", "--state-timeout-ms", "1000"],
    ));
    publish(&*channel, &rules("a")).await;
    eventually("ready", Duration::from_secs(5), || async {
        get(&client, &gw, "/readyz").await.0 == 200
    })
    .await;
    assert!(suppressed(&client, &gw, "a").await);

    proxy.cut();
    // The rule needs no state: dispatch keeps working on the last snapshot.
    let v2 = publish(&*channel, &rules("b")).await;
    let cut_for = Instant::now();
    while cut_for.elapsed() < Duration::from_secs(4) {
        assert!(suppressed(&client, &gw, "a").await, "last snapshot serves");
        assert!(
            !suppressed(&client, &gw, "b").await,
            "v2 cannot have arrived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The backend is shared by every replica: readiness stays, `/health` reports it.
    assert_eq!(get(&client, &gw, "/readyz").await.0, 200, "still ready");
    let (_, health) = get(&client, &gw, "/health").await;
    assert_eq!(health["state_backend"]["up"], false, "{health}");
    assert_eq!(config(&client, &gw).await["version"], v2 - 1);

    proxy.restore();
    let back = eventually(
        "newer version after the backend returns",
        Duration::from_secs(15),
        || async { suppressed(&client, &gw, "b").await },
    )
    .await;
    println!("{kind:?}: caught up {back:?} after the backend returned");
    assert_eq!(config(&client, &gw).await["version"], v2);
    eventually(
        "report after the outage",
        Duration::from_secs(5),
        || async {
            report_of(&*channel, &id)
                .await
                .is_some_and(|r| r.version == v2)
        },
    )
    .await;
    let mut gw = gw;
    assert!(
        gw.child.try_wait().expect("status").is_none(),
        "still running"
    );
    drop(gw);
    backend.cleanup().await;
}

/// Started while its backend is unreachable, a follower stays up (not ready), then connects
/// the channel and the state store by itself and serves the published snapshot.
async fn starts_before_its_backend(kind: Kind) {
    let backend = Backend::new(kind);
    let channel = backend.channel().await;
    let client = client();
    let proxy = FaultProxy::start(backend.addr());
    proxy.cut();
    let via = backend.url_via(proxy.addr());
    let id = format!("gw-s-{}", &backend.prefix[backend.prefix.len() - 6..]);
    let mut gw = Server::start(&backend.args(
        &via,
        &id,
        &["--config-poll-seconds", "1", "--state-timeout-ms", "500"],
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(get(&client, &gw, "/readyz").await.0, 503, "not ready");
    assert!(
        gw.child.try_wait().expect("status").is_none(),
        "still running"
    );
    publish(&*channel, &rules("a")).await;
    proxy.restore();
    eventually(
        "ready once the backend appears",
        Duration::from_secs(20),
        || async { get(&client, &gw, "/readyz").await.0 == 200 },
    )
    .await;
    assert!(suppressed(&client, &gw, "a").await);
    drop(gw);
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_follower_starts_before_its_backend() {
    starts_before_its_backend(Kind::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_follower_starts_before_its_backend() {
    starts_before_its_backend(Kind::Postgres).await;
}

const SECRET_VALUE: &str = "tok-5ecr3t-value-1234";

/// A webhook provider whose `X-Api-Key` comes from a Secret, sealed with `key`.
fn webhook_snapshot(url: &str, key: &SealKey, value: &str) -> Snapshot {
    let mut s = compiled(&format!(
        r#"
apiVersion: acteon.dev/v1alpha1
kind: Provider
metadata: {{name: hook, namespace: s}}
spec:
  type: webhook
  retry: {{maxAttempts: 1}}
  webhook:
    url: {url}
    headers: {{X-Plain: visible}}
    secretHeaders:
      X-Api-Key: {{name: creds, key: token}}
"#
    ));
    let id = acteon_api::snapshot::secret_id(
        Some("s"),
        &acteon_api::crd::SecretKeyRef {
            name: "creds".into(),
            key: "token".into(),
        },
    );
    s.secrets
        .insert(id.clone(), key.seal(&id, value.as_bytes()));
    s.seal();
    s
}

/// Sealed credentials reach the target; a snapshot sealed with another key is refused.
async fn delivers_sealed_secret_headers(kind: Kind) {
    let backend = Backend::new(kind);
    let channel = backend.channel().await;
    let client = client();
    let recorder = Recorder::start().await;
    let key = SealKey::generate();
    let id = format!("gw-s-{}", &backend.prefix[backend.prefix.len() - 6..]);
    let log = temp_path("gateway.log");
    let key_text = key.to_text();
    let gw = Server::start_with(
        &backend.args(&backend.url, &id, &[]),
        &[("ACTEON_SEAL_KEY", &key_text), ("RUST_LOG", "debug")],
        Some(&log),
    );

    let v1_snapshot = webhook_snapshot(&recorder.url("/hook"), &key, SECRET_VALUE);
    let sealed_text = v1_snapshot
        .secrets
        .values()
        .next()
        .cloned()
        .expect("sealed");
    let v1 = publish(&*channel, &v1_snapshot).await;
    eventually("ready", Duration::from_secs(5), || async {
        get(&client, &gw, "/readyz").await.0 == 200
    })
    .await;
    let (status, body) = dispatch(&client, &gw, "s", "hook", "k").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("Executed").is_some(), "{body}");
    let seen = recorder.requests.lock().last().cloned().expect("delivered");
    assert_eq!(seen.path, "/hook");
    assert_eq!(
        seen.headers.get("x-api-key").and_then(|v| v.to_str().ok()),
        Some(SECRET_VALUE)
    );
    assert_eq!(
        seen.headers.get("x-plain").and_then(|v| v.to_str().ok()),
        Some("visible")
    );

    // Sealed with another key (and a different path, so behaviour would show): refused.
    let wrong = SealKey::generate();
    let v2 = publish(
        &*channel,
        &webhook_snapshot(&recorder.url("/other"), &wrong, "tok-other-value"),
    )
    .await;
    eventually("wrong key refused", Duration::from_secs(3), || async {
        config(&client, &gw).await["failed_version"] == v2
    })
    .await;
    let info = config(&client, &gw).await;
    assert_eq!(info["version"], v1, "{info}");
    let error = info["error"].as_str().unwrap_or_default().to_owned();
    assert!(error.contains("s/hook"), "names the provider: {error}");
    assert!(
        error.contains("spec.webhook.secretHeaders.X-Api-Key"),
        "names the field: {error}"
    );
    assert!(
        error.contains(&wrong.fingerprint()),
        "says which key: {error}"
    );
    let report = report_of(&*channel, &id).await.expect("reported");
    assert_eq!((report.version, report.failed_version), (v1, Some(v2)));
    // The old snapshot still delivers with the old credential.
    let (status, body) = dispatch(&client, &gw, "s", "hook", "k").await;
    assert_eq!(status, 200, "{body}");
    let seen = recorder.requests.lock().last().cloned().expect("delivered");
    assert_eq!(seen.path, "/hook");
    assert_eq!(
        seen.headers.get("x-api-key").and_then(|v| v.to_str().ok()),
        Some(SECRET_VALUE)
    );

    // Credentials never show: not in /v1/config (not even sealed), not in the log.
    let info_text = config(&client, &gw).await.to_string();
    for needle in [
        SECRET_VALUE,
        sealed_text.as_str(),
        "tok-other-value",
        "secrets",
    ] {
        assert!(
            !info_text.contains(needle),
            "/v1/config shows {needle:?}: {info_text}"
        );
    }
    let rules_text = get(&client, &gw, "/v1/rules").await.1.to_string();
    assert!(!rules_text.contains(SECRET_VALUE));
    drop(gw);
    let logged = std::fs::read_to_string(&log).expect("gateway log");
    assert!(
        logged.contains("configuration snapshot applied"),
        "debug log captured"
    );
    for needle in [SECRET_VALUE, "tok-other-value", key_text.as_str()] {
        assert!(!logged.contains(needle), "the log shows {needle:?}");
    }
    backend.cleanup().await;
}

// ---------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_follows_published_snapshots() {
    follows_published_snapshots(Kind::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_follows_published_snapshots() {
    follows_published_snapshots(Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_gateway_survives_an_outage_and_catches_up() {
    survives_an_outage(Kind::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_gateway_survives_an_outage_and_catches_up() {
    survives_an_outage(Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_delivers_sealed_secret_headers() {
    delivers_sealed_secret_headers(Kind::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_delivers_sealed_secret_headers() {
    delivers_sealed_secret_headers(Kind::Postgres).await;
}

/// Standalone (files) has no Secrets: a webhook with `secretHeaders` refuses to start,
/// naming the provider and pointing at the operator.
#[test]
fn files_with_secret_headers_refuse_to_start() {
    let file = temp_path("secret.yaml");
    std::fs::write(
        &file,
        r#"
apiVersion: acteon.dev/v1alpha1
kind: Provider
metadata: {name: hook, namespace: s}
spec:
  type: webhook
  webhook:
    url: http://127.0.0.1:9/
    secretHeaders:
      Authorization: {name: creds, key: token}
"#,
    )
    .expect("write config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_acteon-gateway"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&file)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("provider s/hook"), "{err}");
    assert!(
        err.contains("spec.webhook.secretHeaders.Authorization"),
        "{err}"
    );
    assert!(err.contains("operator"), "{err}");
}

/// `--state memory` with no `--config` still serves the samples (standalone), and says so.
#[tokio::test]
async fn memory_without_config_serves_the_samples_from_files() {
    let gw = Server::start(&[]);
    let client = client();
    assert_eq!(get(&client, &gw, "/readyz").await.0, 200);
    let info = config(&client, &gw).await;
    assert_eq!(info["source"], "files", "{info}");
    assert_eq!(info["loaded"], true, "{info}");
    assert!(info.get("channel_backend").is_none(), "{info}");
}

// ---------------------------------------------------------------------------------------
// Snapshot authentication (the gateway's seal key, no --allow-unsigned-snapshots)

/// Writes `digest` and `body` as the newest snapshot straight into the backend (no version
/// bump, nobody notified): what someone with write access could do.
async fn write_directly(backend: &Backend, digest: &str, body: &[u8]) {
    match backend.kind {
        Kind::Redis => {
            let client = redis::Client::open(backend.url.as_str()).expect("redis url");
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .expect("redis");
            let _: () = redis::cmd("HSET")
                .arg(format!("{}:config", backend.prefix))
                .arg("digest")
                .arg(digest)
                .arg("body")
                .arg(body)
                .query_async(&mut conn)
                .await
                .expect("HSET");
        }
        Kind::Postgres => {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&backend.url)
                .await
                .expect("postgres");
            let sql = format!(
                "UPDATE \"{}\".config_snapshot SET digest = $1, body = $2 WHERE id",
                backend.prefix
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(digest)
                .bind(body)
                .execute(&mut conn)
                .await
                .expect("UPDATE");
        }
    }
}

/// A signed snapshot is served; a bare one, one signed with another key and one altered
/// after signing are refused while the last good one keeps serving (`/v1/config`,
/// `/readyz`, the log, the failure counter); a gateway started on a forged head is not
/// ready and says why; without a key the gateway does not follow at all.
async fn refuses_snapshots_that_do_not_authenticate(kind: Kind) {
    use acteon_channel::auth::sign;
    let backend = Backend::new(kind);
    let channel = backend.channel().await;
    let client = client();
    let key = SealKey::generate();
    let key_text = key.to_text();
    let id = format!("gw-auth-{}", &backend.prefix[backend.prefix.len() - 6..]);
    let args = [
        "--state",
        backend.url.as_str(),
        "--state-prefix",
        &backend.prefix,
        "--gateway-id",
        &id,
    ];
    let log = temp_path("gateway.log");
    let env = [("ACTEON_SEAL_KEY", key_text.as_str()), ("RUST_LOG", "info")];
    let gw = Server::start_with(&args, &env, Some(&log));

    let good = rules("a");
    let good_body = serde_json::to_vec(&good).expect("serializes");
    let v1 = publish_raw(
        &*channel,
        &good.digest,
        &sign(&key, &good.digest, &good_body),
    )
    .await;
    eventually("signed snapshot served", Duration::from_secs(5), || async {
        config(&client, &gw).await["version"] == v1
    })
    .await;
    assert!(suppressed(&client, &gw, "a").await);

    // Rerouting attempts: each would suppress `b` instead of `a` if it were served.
    let evil = rules("b");
    let evil_body = serde_json::to_vec(&evil).expect("serializes");
    let mut altered = sign(&key, &evil.digest, &evil_body);
    let last = altered.len() - 2;
    altered[last] ^= 0x01;
    let forgeries = [
        ("bare", evil_body.clone(), "not authenticated"),
        (
            "other key",
            sign(&SealKey::generate(), &evil.digest, &evil_body),
            "signed with key",
        ),
        ("altered", altered, "does not authenticate"),
    ];
    for (n, (what, body, says)) in forgeries.iter().enumerate() {
        let mut digest = evil.digest.clone();
        digest.push_str(&n.to_string());
        let version = publish_raw(&*channel, &digest, body).await;
        eventually(
            &format!("{what} refused"),
            Duration::from_secs(5),
            || async { config(&client, &gw).await["failed_version"] == version },
        )
        .await;
        let info = config(&client, &gw).await;
        assert_eq!(info["version"], v1, "{what}: {info}");
        assert!(
            info["error"].as_str().is_some_and(|e| e.contains(says)),
            "{what}: {info}"
        );
        assert!(
            suppressed(&client, &gw, "a").await,
            "{what}: still the old rule"
        );
        assert!(!suppressed(&client, &gw, "b").await, "{what}: not rerouted");
        let (status, ready) = get(&client, &gw, "/readyz").await;
        assert_eq!(status, 200, "keeps serving the last good snapshot: {ready}");
        assert_eq!(
            ready["refused_version"], version,
            "readyz names it: {ready}"
        );
        assert!(
            ready["refused_because"]
                .as_str()
                .is_some_and(|e| e.contains(says)),
            "{what}: {ready}"
        );
    }
    let text = metrics(&client, &gw).await;
    assert!(
        metric(&text, "acteon_config_reload_failures_total").is_some_and(|v| v >= 3.0),
        "{text}"
    );

    // Written straight into the backend, in place: a gateway starting now is not ready and
    // says why, instead of serving it.
    write_directly(&backend, "forged", &evil_body).await;
    let late = Server::start_with(&args, &env, None);
    eventually("late gateway refuses", Duration::from_secs(5), || async {
        let (status, body) = get(&client, &late, "/readyz").await;
        status == 503
            && body["message"]
                .as_str()
                .is_some_and(|m| m.contains("refused") && m.contains("not authenticated"))
    })
    .await;
    assert!(!suppressed_or_unavailable(&client, &late).await);
    drop(late);
    drop(gw);
    let logged = std::fs::read_to_string(&log).expect("gateway log");
    assert!(
        logged.contains("configuration snapshot rejected") && logged.contains("not authenticated"),
        "{logged}"
    );

    // No key and no --allow-unsigned-snapshots: following is refused at start.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_acteon-gateway"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .env_remove("ACTEON_SEAL_KEY")
        .env_remove("ACTEON_ALLOW_UNSIGNED_SNAPSHOTS")
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--allow-unsigned-snapshots") && err.contains("seal key"),
        "{err}"
    );
    backend.cleanup().await;
}

/// Whether a gateway that serves nothing answers a dispatch with anything but 503.
async fn suppressed_or_unavailable(client: &reqwest::Client, server: &Server) -> bool {
    dispatch(client, server, "f", "p", "b").await.0 != 503
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_refuses_snapshots_that_do_not_authenticate() {
    refuses_snapshots_that_do_not_authenticate(Kind::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_refuses_snapshots_that_do_not_authenticate() {
    refuses_snapshots_that_do_not_authenticate(Kind::Postgres).await;
}
