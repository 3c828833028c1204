//! `--auth on` with API tokens from a file, on the real binary: 401 without valid
//! credentials, 403 outside role or scope (per batch item too), inspection limited to the
//! caller's scope, open probes, a token rotated by editing the file, and fuzzed
//! `Authorization` headers that never get a 5xx.

use crate::common;

use std::time::{Duration, Instant};

use common::{Server, free_port};
use serde_json::{Value, json};

const CONFIG: &str = r#"
apiVersion: acteon.dev/v1alpha1
kind: Provider
metadata: {name: p, namespace: ns-a}
spec: {type: noop}
---
apiVersion: acteon.dev/v1alpha1
kind: Provider
metadata: {name: p, namespace: ns-b}
spec: {type: noop}
"#;

fn tokens(dispatcher: &str) -> String {
    format!(
        r#"tokens:
  - {{name: dispatcher, token: "{dispatcher}", role: dispatch, namespaces: [ns-a]}}
  - {{name: reader, token: reader-token, role: read, namespaces: ["ns-*"], tenants: [acme]}}
  - {{name: everything, token: all-reader-token, role: read, namespaces: ["*"]}}
  - {{name: ops, token: admin-token, role: admin, namespaces: ["*"]}}
"#
    )
}

struct Setup {
    server: Server,
    probes: u16,
    token_file: std::path::PathBuf,
    client: reqwest::Client,
}

fn setup() -> Setup {
    let dir = std::env::temp_dir().join(format!("acteon-auth-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("config.yaml");
    std::fs::write(&config, CONFIG).expect("config");
    let token_file = dir.join("tokens.yaml");
    std::fs::write(&token_file, tokens("dispatch-token-1")).expect("tokens");
    let probes = free_port();
    let probes_listen = format!("127.0.0.1:{probes}");
    let server = Server::start(&[
        "--config",
        config.to_str().expect("utf-8"),
        "--auth",
        "on",
        "--api-tokens-file",
        token_file.to_str().expect("utf-8"),
        "--probes-listen",
        &probes_listen,
    ]);
    Setup {
        server,
        probes,
        token_file,
        client: reqwest::Client::new(),
    }
}

fn action(ns: &str, tenant: &str) -> Value {
    json!({"namespace": ns, "tenant": tenant, "provider": "p", "action_type": "x", "payload": {}})
}

impl Setup {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.client.request(method, self.server.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn dispatch(&self, token: Option<&str>, ns: &str) -> (u16, Value) {
        self.send(
            reqwest::Method::POST,
            "/v1/dispatch",
            token,
            Some(action(ns, "acme")),
        )
        .await
    }

    async fn get(&self, path: &str, token: Option<&str>) -> u16 {
        self.send(reqwest::Method::GET, path, token, None).await.0
    }
}

#[tokio::test]
async fn tokens_are_required_and_hold_to_their_role_and_scope() {
    let s = setup();
    // No or unknown credentials: 401 naming why, never echoing the token.
    let (status, body) = s.dispatch(None, "ns-a").await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["code"], "UNAUTHORIZED");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("missing Authorization"),
        "{body}"
    );
    let (status, body) = s.dispatch(Some("not-a-known-token-42"), "ns-a").await;
    assert_eq!(status, 401);
    assert!(!body.to_string().contains("not-a-known-token-42"), "{body}");

    // A dispatcher of ns-a: its namespace yes, another no, inspection no.
    let d = Some("dispatch-token-1");
    let (status, body) = s.dispatch(d, "ns-a").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("Executed").is_some(), "{body}");
    let (status, body) = s.dispatch(d, "ns-b").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["code"], "FORBIDDEN");
    assert!(body["message"].as_str().unwrap().contains("ns-b"), "{body}");
    let batch = json!([action("ns-a", "t"), action("ns-b", "t")]);
    let (status, body) = s
        .send(reqwest::Method::POST, "/v1/dispatch/batch", d, Some(batch))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body[0].get("Executed").is_some(), "{body}");
    assert_eq!(body[1]["error"]["code"], "FORBIDDEN", "{body}");
    assert_eq!(s.get("/v1/groups?namespace=ns-a", d).await, 403);

    // A reader of ns-* for tenant acme: reads there, names namespace and tenant, no more.
    let r = Some("reader-token");
    assert_eq!(s.get("/v1/groups?namespace=ns-a&tenant=acme", r).await, 200);
    assert_eq!(
        s.get("/v1/groups?namespace=ns-a&tenant=globex", r).await,
        403
    );
    assert_eq!(
        s.get("/v1/groups?namespace=ns-a", r).await,
        403,
        "tenant required"
    );
    assert_eq!(
        s.get("/v1/groups?namespace=other&tenant=acme", r).await,
        403
    );
    assert_eq!(s.get("/v1/config", r).await, 403, "all namespaces at once");
    assert_eq!(s.dispatch(r, "ns-a").await.0, 403, "read is not dispatch");
    // Unlimited readers see everything; they still cannot administer.
    let all = Some("all-reader-token");
    assert_eq!(s.get("/v1/config", all).await, 200);
    assert_eq!(s.get("/metrics", all).await, 200);
    let (status, _) = s
        .send(
            reqwest::Method::DELETE,
            "/v1/groups/k?namespace=ns-a&tenant=t",
            all,
            None,
        )
        .await;
    assert_eq!(status, 403);
    // Admin passes authorization (the group does not exist).
    let (status, body) = s
        .send(
            reqwest::Method::DELETE,
            "/v1/groups/k?namespace=ns-a&tenant=t",
            Some("admin-token"),
            None,
        )
        .await;
    assert!(status != 401 && status != 403, "{status} {body}");
    assert_eq!(s.dispatch(Some("admin-token"), "ns-b").await.0, 200);

    // Probes stay open; metrics need no token on the probes port only.
    assert_eq!(s.get("/healthz", None).await, 200);
    assert_eq!(s.get("/metrics", None).await, 401);
    let probes = format!("http://127.0.0.1:{}", s.probes);
    let metrics = s
        .client
        .get(format!("{probes}/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.expect("text");
    assert!(
        text.contains(r#"acteon_auth_decisions_total{result="forbidden"}"#),
        "{text}"
    );
    let config = s
        .client
        .get(format!("{probes}/v1/config"))
        .send()
        .await
        .expect("config");
    assert_eq!(config.status(), 404, "only probes and metrics there");
}

#[tokio::test]
async fn a_token_rotated_in_the_file_swaps_without_a_restart() {
    let s = setup();
    assert_eq!(s.dispatch(Some("dispatch-token-1"), "ns-a").await.0, 200);
    std::fs::write(&s.token_file, tokens("dispatch-token-2")).expect("rotate");
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.dispatch(Some("dispatch-token-2"), "ns-a").await.0 != 200 {
        assert!(Instant::now() < deadline, "the new token never worked");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(s.dispatch(Some("dispatch-token-1"), "ns-a").await.0, 401);
}

/// Whatever the `Authorization` headers, the answer is a 4xx and the server keeps serving.
#[tokio::test]
async fn fuzzed_authorization_headers_get_401_never_5xx() {
    let s = setup();
    let huge = format!("Bearer {}", "x".repeat(64 * 1024));
    let mut cases: Vec<Vec<Vec<u8>>> = vec![
        vec![b"".to_vec()],
        vec![b"Bearer".to_vec()],
        vec![b"Bearer ".to_vec()],
        vec![b"bearer\t".to_vec()],
        vec![b"Bearer \xff\xfe\xfd".to_vec()],
        vec![b"Basic YTpi".to_vec()],
        vec![b"Bearer a.b.c".to_vec()],
        vec![b"Bearer eyJ.eyJ.sig".to_vec()],
        vec![huge.into_bytes()],
        (0..60)
            .map(|i| format!("Bearer t{i}").into_bytes())
            .collect(),
    ];
    // Random bytes a header may carry (visible ASCII, tab, obs-text).
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..40 {
        let len = (seed % 200) as usize;
        let mut v = b"Bearer ".to_vec();
        for _ in 0..len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let b = (seed % 256) as u8;
            if b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80 {
                v.push(b);
            }
        }
        cases.push(vec![v]);
    }
    for values in cases {
        let mut req = s
            .client
            .post(s.server.url("/v1/dispatch"))
            .json(&action("ns-a", "t"));
        for v in &values {
            let Ok(value) = reqwest::header::HeaderValue::from_bytes(v) else {
                continue;
            };
            req = req.header(reqwest::header::AUTHORIZATION, value);
        }
        let status = req.send().await.expect("answered").status().as_u16();
        assert!(
            (400..500).contains(&status),
            "{status} for {:?}",
            values
                .iter()
                .map(|v| String::from_utf8_lossy(&v[..v.len().min(40)]).into_owned())
                .collect::<Vec<_>>()
        );
    }
    assert_eq!(s.dispatch(Some("dispatch-token-1"), "ns-a").await.0, 200);
}

/// The audit trail names the authenticated caller, and a caller reads only the records of
/// its scope (another tenant's action is a 404, as if it did not exist).
#[tokio::test]
async fn the_audit_trail_names_callers_and_shows_only_their_scope() {
    let s = setup();
    let mut a = action("ns-a", "acme");
    a["id"] = json!("audited-a");
    let mut b = action("ns-b", "globex");
    b["id"] = json!("audited-b");
    for (token, body) in [("dispatch-token-1", a), ("admin-token", b)] {
        let (status, answer) = s
            .send(
                reqwest::Method::POST,
                "/v1/dispatch",
                Some(token),
                Some(body),
            )
            .await;
        assert_eq!(status, 200, "{answer}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let records = loop {
        let (status, body) = s
            .send(
                reqwest::Method::GET,
                "/v1/audit?namespace=ns-a&tenant=acme",
                Some("reader-token"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        if body["count"].as_u64().unwrap_or(0) >= 1 {
            break body;
        }
        assert!(Instant::now() < deadline, "no audit record: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let record = &records["records"][0];
    assert_eq!(record["action_id"], "audited-a", "{records}");
    assert_eq!(record["caller"], "token:dispatcher", "{records}");
    let mine = s
        .send(
            reqwest::Method::GET,
            "/v1/audit/audited-a?namespace=ns-a&tenant=acme",
            Some("reader-token"),
            None,
        )
        .await;
    assert_eq!(mine.0, 200, "{}", mine.1);
    let (status, body) = s
        .send(
            reqwest::Method::GET,
            "/v1/audit/audited-b?namespace=ns-a&tenant=acme",
            Some("reader-token"),
            None,
        )
        .await;
    assert_eq!(status, 404, "another tenant's record: {body}");
    let (status, body) = s
        .send(
            reqwest::Method::GET,
            "/v1/audit/audited-b",
            Some("admin-token"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["records"][0]["caller"], "token:ops");
}
