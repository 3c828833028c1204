//! The audit trail through the real binary, on the memory store and on Postgres: one record
//! per dispatch with the right fields for every outcome kind, redaction before storage
//! (checked in the table itself), filters and keyset paging, replay, group releases, a
//! Postgres outage that costs records (counted) but never dispatches, and recovery.

use crate::common;
use common::proxy::FaultProxy;
use common::{Recorder, Server, get_json, postgres_url};

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::Connection;

const SECRET: &str = "s3cr3t-XYZZY";

fn config(hook: &Recorder) -> String {
    format!(
        r#"
apiVersion: acteon.dev/v1alpha1
kind: Provider
metadata: {{name: hook, namespace: au}}
spec:
  type: webhook
  webhook: {{url: "{}"}}
  timeoutSeconds: 5
  retry: {{maxAttempts: 1}}
---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {{name: mute-noise, namespace: au}}
spec:
  condition: {{field: action.action_type, eq: noise}}
  action: {{type: suppress}}
---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {{name: one-burst, namespace: au}}
spec:
  condition: {{field: action.action_type, eq: burst}}
  action: {{type: throttle, maxCount: 1, windowSeconds: 60}}
---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {{name: dedup, namespace: au}}
spec:
  condition: {{field: action.action_type, eq: dup}}
  action: {{type: deduplicate, ttlSeconds: 60}}
---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {{name: batch-up, namespace: au}}
spec:
  condition: {{field: action.action_type, eq: grouped}}
  action: {{type: group, groupBy: [payload.key], groupWaitSeconds: 1, groupIntervalSeconds: 60}}
---
apiVersion: acteon.dev/v1alpha1
kind: Chain
metadata: {{name: two-steps, namespace: au}}
spec:
  steps:
    - {{name: first, provider: hook}}
---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {{name: start-chain, namespace: au}}
spec:
  condition: {{field: action.action_type, eq: chained}}
  action: {{type: chain, chain: two-steps}}
---
apiVersion: acteon.dev/v1alpha1
kind: StateMachine
metadata: {{name: acks, namespace: au}}
spec:
  states: [open, acked, expired]
  initialState: open
  terminalStates: [expired]
  notifyProvider: hook
  transitions:
    - {{from: open, to: acked}}
    - {{from: acked, to: expired, notify: true}}
  timeouts:
    - {{state: acked, afterSeconds: 1, transitionTo: expired}}
---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {{name: track, namespace: au}}
spec:
  condition: {{field: action.action_type, eq: tracked}}
  action: {{type: stateMachine, stateMachine: acks, fingerprintFields: [payload.key]}}
"#,
        hook.url("/hook")
    )
}

fn schema() -> String {
    format!(
        "acteon_a{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// A gateway on `state` (`memory` or a Postgres URL) with the audit flags in `extra`.
fn start(hook: &Recorder, state: &str, schema: &str, extra: &[&str]) -> Server {
    let dir = std::env::temp_dir().join(format!("acteon-audit-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("config.yaml");
    std::fs::write(&file, config(hook)).expect("config");
    let mut args = vec![
        "--config",
        file.to_str().expect("utf-8"),
        "--state",
        state,
        "--state-prefix",
        schema,
    ];
    args.extend_from_slice(extra);
    Server::start_with(&args, &[("ACTEON_WORKER_POLL_MS", "100")], None)
}

fn action(action_type: &str, provider: &str, id: &str) -> Value {
    json!({"id": id, "namespace": "au", "tenant": "t", "provider": provider,
        "action_type": action_type,
        "payload": {"password": SECRET, "card": {"number": SECRET, "holder": "Ann"}, "key": "k1", "note": "kept"},
        "metadata": {"API_KEY": SECRET, "team": "ops"}})
}

async fn dispatch(c: &reqwest::Client, gw: &Server, body: &Value) -> Value {
    let r = c
        .post(gw.url("/v1/dispatch"))
        .json(body)
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 200);
    r.json().await.expect("json")
}

/// Waits until `/v1/audit?{query}` (one page of up to 1000) holds `n` records.
async fn wait_records(c: &reqwest::Client, gw: &Server, query: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = get_json(c, &gw.url(&format!("/v1/audit?limit=1000&{query}"))).await;
        assert_eq!(status, 200, "{body}");
        let records = body["records"].as_array().cloned().unwrap_or_default();
        assert_eq!(body["count"].as_u64(), Some(records.len() as u64));
        if records.len() >= n {
            assert_eq!(records.len(), n, "{query}: {records:#?}");
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "{query}: {} of {n}",
            records.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn metric(c: &reqwest::Client, gw: &Server, name: &str) -> f64 {
    let text = c
        .get(gw.url("/metrics"))
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("text");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn outcomes(state: &str) {
    let hook = Recorder::start().await;
    let schema = schema();
    let gw = start(
        &hook,
        state,
        &schema,
        &[
            "--audit-store-payload",
            "--audit-redact",
            "payload.PASSWORD,payload.card.number,metadata.api_key",
        ],
    );
    let c = reqwest::Client::new();
    let mut expected = vec![
        ("a-exec", "executed", "allow", None),
        ("a-noise", "suppressed", "suppress", Some("mute-noise")),
        ("a-unknown", "failed", "none", None),
        ("a-burst-1", "executed", "throttle", Some("one-burst")),
        ("a-burst-2", "throttled", "throttle", Some("one-burst")),
        ("a-dup-1", "executed", "deduplicate", Some("dedup")),
        ("a-dup-2", "deduplicated", "deduplicate", Some("dedup")),
    ];
    let sends = [
        action("ok", "hook", "a-exec"),
        action("noise", "hook", "a-noise"),
        action("ok", "nope", "a-unknown"),
        action("burst", "hook", "a-burst-1"),
        action("burst", "hook", "a-burst-2"),
        {
            let mut a = action("dup", "hook", "a-dup-1");
            a["dedup_key"] = json!("d");
            a
        },
        {
            let mut a = action("dup", "hook", "a-dup-2");
            a["dedup_key"] = json!("d");
            a
        },
    ];
    for a in &sends {
        dispatch(&c, &gw, a).await;
    }
    // A dry run changes nothing and is not recorded.
    let r = c
        .post(gw.url("/v1/dispatch?dry_run=true"))
        .json(&action("ok", "hook", "a-dry"))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 200);
    // A batch item is recorded like a dispatch.
    let r = c
        .post(gw.url("/v1/dispatch/batch"))
        .json(&json!([action("noise", "hook", "a-batch")]))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 200);
    expected.push(("a-batch", "suppressed", "suppress", Some("mute-noise")));

    let records = wait_records(&c, &gw, "namespace=au", expected.len()).await;
    for (id, outcome, verdict, rule) in &expected {
        let mine: Vec<&Value> = records.iter().filter(|r| r["action_id"] == *id).collect();
        assert_eq!(mine.len(), 1, "{id}: {records:#?}");
        let r = mine[0];
        assert_eq!(r["outcome"], *outcome, "{id}: {r}");
        assert_eq!(r["verdict"], *verdict, "{id}: {r}");
        assert_eq!(r["matched_rule"].as_str(), *rule, "{id}: {r}");
        assert_eq!(r["source"], "dispatch");
        assert_eq!(r["caller"], Value::Null);
        assert_eq!(r["namespace"], "au");
        assert_eq!(r["tenant"], "t");
        assert_eq!(r["error"].is_string(), *outcome == "failed", "{id}: {r}");
        assert!(r["duration_ms"].is_u64());
        assert!(chrono::DateTime::parse_from_rfc3339(r["dispatched_at"].as_str().unwrap()).is_ok());
        assert_eq!(r["payload"]["password"], "[REDACTED]");
        assert_eq!(r["payload"]["card"]["number"], "[REDACTED]");
        assert_eq!(r["payload"]["card"]["holder"], "Ann");
        assert_eq!(r["payload"]["note"], "kept");
        assert_eq!(r["metadata"]["API_KEY"], "[REDACTED]");
        assert_eq!(r["metadata"]["team"], "ops");
        assert!(!r.to_string().contains(SECRET));
    }
    let failed = records
        .iter()
        .find(|r| r["action_id"] == "a-unknown")
        .unwrap();
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("PROVIDER_NOT_FOUND")
    );
    assert!(records.iter().all(|r| r["action_id"] != "a-dry"));

    // GET by action id.
    let (status, body) = get_json(&c, &gw.url("/v1/audit/a-noise")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["count"], 1);
    assert_eq!(body["records"][0]["outcome"], "suppressed");
    let (status, body) = get_json(&c, &gw.url("/v1/audit/no-such-action")).await;
    assert_eq!(status, 404, "{body}");

    // A group notification released by the worker is recorded with source `group`.
    dispatch(&c, &gw, &action("grouped", "hook", "a-grouped")).await;
    let grouped = wait_records(&c, &gw, "namespace=au&outcome=grouped", 1).await;
    assert_eq!(grouped[0]["action_id"], "a-grouped");
    let released = wait_records(
        &c,
        &gw,
        "namespace=au&action_type=grouped&outcome=executed",
        1,
    )
    .await;
    assert_eq!(released[0]["source"], "group");
    // The grouped payloads inside the notification are redacted too.
    assert_eq!(
        released[0]["payload"]["events"][0]["password"],
        "[REDACTED]"
    );
    // A chain: the dispatch (chain_started), then its step delivered by the worker.
    dispatch(&c, &gw, &action("chained", "hook", "a-chained")).await;
    let started = wait_records(&c, &gw, "namespace=au&outcome=chain_started", 1).await;
    assert_eq!(started[0]["matched_rule"], "start-chain");
    let step = wait_records(
        &c,
        &gw,
        "namespace=au&action_type=chained&outcome=executed",
        1,
    )
    .await;
    assert_eq!(step[0]["source"], "chain");
    assert_eq!(step[0]["verdict"], "chain");
    assert_eq!(step[0]["metadata"]["chain_step"], "first");
    assert_eq!(step[0]["payload"]["password"], "[REDACTED]");
    // A state timeout: the dispatch moves the event (state_changed); its timeout's
    // notification, sent by the worker, is a record of its own.
    let mut tracked = action("tracked", "hook", "a-tracked");
    tracked["status"] = json!("acked");
    let moved = dispatch(&c, &gw, &tracked).await;
    assert_eq!(moved["StateChanged"]["new_state"], "acked", "{moved}");
    let timed_out = wait_records(
        &c,
        &gw,
        "namespace=au&action_type=tracked&outcome=executed",
        1,
    )
    .await;
    assert_eq!(timed_out[0]["source"], "state_timeout");
    assert_eq!(timed_out[0]["verdict"], "state_machine");
    let all = wait_records(&c, &gw, "", expected.len() + 6).await;
    assert!(!Value::Array(all).to_string().contains(SECRET));

    if state.starts_with("postgres") {
        // What reached the table itself: the secret is nowhere, every record is there.
        let mut conn = sqlx::PgConnection::connect(&postgres_url())
            .await
            .expect("postgres");
        let table = format!("\"{schema}\".acteon_audit");
        let leaked: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {table} WHERE payload::text LIKE '%' || $1 || '%' \
             OR metadata::text LIKE '%' || $1 || '%' OR coalesce(error, '') LIKE '%' || $1 || '%'"
        )))
        .bind(SECRET)
        .fetch_one(&mut conn)
        .await
        .expect("count");
        assert_eq!(leaked, 0);
        let rows: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(&mut conn)
                .await
                .expect("count");
        assert_eq!(rows, expected.len() as i64 + 6);
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA \"{schema}\" CASCADE"
        )))
        .execute(&mut conn)
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_outcomes_on_memory() {
    outcomes("memory").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_outcomes_on_postgres() {
    outcomes(&postgres_url()).await;
}

/// Every page of `query` with `limit`, following `next_cursor`: the action ids in order.
async fn paged(c: &reqwest::Client, gw: &Server, query: &str, limit: usize) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let mut url = format!("/v1/audit?limit={limit}&{query}");
        if let Some(cur) = &cursor {
            url.push_str(&format!("&cursor={cur}"));
        }
        let (status, body) = get_json(c, &gw.url(&url)).await;
        assert_eq!(status, 200, "{body}");
        let records = body["records"].as_array().unwrap();
        assert!(records.len() <= limit);
        ids.extend(
            records
                .iter()
                .map(|r| r["action_id"].as_str().unwrap().to_owned()),
        );
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return ids,
        }
    }
    panic!("paging did not end");
}

async fn query_and_paging(state: &str) {
    let hook = Recorder::start().await;
    let schema = schema();
    let gw = start(&hook, state, &schema, &[]);
    let c = reqwest::Client::new();
    let before = chrono::Utc::now();
    // 30 records: tenants t0..t2, every third one suppressed.
    let mut sent = Vec::new();
    for i in 0..30 {
        let tenant = format!("t{}", i % 3);
        let kind = if i % 4 == 0 { "noise" } else { "ok" };
        let a = json!({"id": format!("q-{i:02}"), "namespace": "au", "tenant": tenant,
            "provider": "hook", "action_type": kind, "payload": {}});
        dispatch(&c, &gw, &a).await;
        sent.push((format!("q-{i:02}"), tenant, kind));
    }
    wait_records(&c, &gw, "namespace=au", 30).await;
    let after = chrono::Utc::now() + chrono::Duration::seconds(1);
    let expect = |f: &dyn Fn(&(String, String, &str)) -> bool| -> BTreeSet<String> {
        sent.iter().filter(|s| f(s)).map(|s| s.0.clone()).collect()
    };
    let cases: Vec<(String, BTreeSet<String>)> = vec![
        ("namespace=au".into(), expect(&|_| true)),
        ("namespace=au&tenant=t1".into(), expect(&|s| s.1 == "t1")),
        (
            "namespace=au&outcome=suppressed".into(),
            expect(&|s| s.2 == "noise"),
        ),
        (
            "namespace=au&tenant=t0&matched_rule=mute-noise".into(),
            expect(&|s| s.1 == "t0" && s.2 == "noise"),
        ),
        (
            "provider=hook&action_type=ok".into(),
            expect(&|s| s.2 == "ok"),
        ),
        (
            format!(
                "namespace=au&from={}&to={}",
                urlencode(&before.to_rfc3339()),
                urlencode(&after.to_rfc3339())
            ),
            expect(&|_| true),
        ),
        (
            format!("namespace=au&to={}", urlencode(&before.to_rfc3339())),
            BTreeSet::new(),
        ),
        ("namespace=other".into(), BTreeSet::new()),
        ("caller=nobody".into(), BTreeSet::new()),
    ];
    for (query, want) in cases {
        let ids = paged(&c, &gw, &query, 7).await;
        let set: BTreeSet<String> = ids.iter().cloned().collect();
        assert_eq!(set.len(), ids.len(), "{query}: a record on two pages");
        assert_eq!(set, want, "{query}");
        // Newest first: dispatches were sequential, so ids come in reverse order.
        let mut sorted = ids.clone();
        sorted.sort_by(|a, b| b.cmp(a));
        assert_eq!(ids, sorted, "{query}");
    }
    // Acteon's SDKs page with `offset` and read `total`, `limit`, `offset`: pages of 7
    // by offset are the same records in the same order as by cursor.
    let by_cursor = paged(&c, &gw, "namespace=au", 7).await;
    let mut by_offset = Vec::new();
    for offset in (0..35).step_by(7) {
        let url = format!("/v1/audit?namespace=au&limit=7&offset={offset}");
        let (status, body) = get_json(&c, &gw.url(&url)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            (body["limit"].as_u64(), body["offset"].as_u64()),
            (Some(7), Some(offset))
        );
        let records = body["records"].as_array().unwrap();
        let last = offset as usize + records.len() >= 30;
        let total = body["total"].as_u64().unwrap() as usize;
        if last {
            assert_eq!(total, 30, "the exact total on the last page: {body}");
        } else {
            assert!(
                total > offset as usize + records.len(),
                "a next page is counted: {body}"
            );
        }
        by_offset.extend(
            records
                .iter()
                .map(|r| r["action_id"].as_str().unwrap().to_owned()),
        );
    }
    assert_eq!(by_offset, by_cursor);
    // Bad parameters: 400 naming the field.
    for (query, field) in [
        ("offset=-1", "offset"),
        ("limit=10&offset=991", "offset"),
        ("offset=1&cursor=zz", "offset"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=abc", "limit"),
        ("from=yesterday", "from"),
        ("to=2026-13-01", "to"),
        ("cursor=zz", "cursor"),
        ("cursor=%C3%A9", "cursor"),
        ("namespace=Bad_NS!", "namespace"),
    ] {
        let (status, body) = get_json(&c, &gw.url(&format!("/v1/audit?{query}"))).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["code"], "INVALID_REQUEST");
        assert!(
            body["message"].as_str().unwrap().starts_with(field),
            "{query}: {body}"
        );
    }
    if state.starts_with("postgres") {
        drop_schema(&schema).await;
    }
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

async fn drop_schema(schema: &str) {
    if let Ok(mut conn) = sqlx::PgConnection::connect(&postgres_url()).await {
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA \"{schema}\" CASCADE"
        )))
        .execute(&mut conn)
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_query_and_paging_on_memory() {
    query_and_paging("memory").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_query_and_paging_on_postgres() {
    query_and_paging(&postgres_url()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_replay_delivers_once_with_replayed_from() {
    let hook = Recorder::start().await;
    let schema = schema();
    let gw = start(
        &hook,
        &postgres_url(),
        &schema,
        &[
            "--audit-store-payload",
            "--audit-redact",
            "payload.password",
        ],
    );
    let c = reqwest::Client::new();
    let mut a = action("ok", "hook", "r-1");
    a["dedup_key"] = json!("r");
    dispatch(&c, &gw, &a).await;
    assert_eq!(hook.count(), 1);
    wait_records(&c, &gw, "namespace=au", 1).await;
    let r = c
        .post(gw.url("/v1/audit/r-1/replay"))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["replayed_from"], "r-1");
    // Acteon's names for the same (its SDKs index them).
    assert_eq!(body["original_action_id"], "r-1");
    assert_eq!(body["new_action_id"], body["action_id"]);
    assert_eq!(body["success"], true);
    assert!(body["outcome"]["Executed"].is_object(), "{body}");
    let new_id = body["action_id"].as_str().unwrap().to_owned();
    assert_ne!(new_id, "r-1");
    assert_eq!(hook.count(), 2, "the replay delivers once");
    let delivered = hook.requests.lock()[1].body.clone();
    assert_eq!(delivered["note"], "kept");
    assert_eq!(delivered["password"], "[REDACTED]");
    let records = wait_records(&c, &gw, "namespace=au", 2).await;
    let replayed = records.iter().find(|r| r["action_id"] == new_id).unwrap();
    assert_eq!(replayed["metadata"]["replayed_from"], "r-1");
    assert_eq!(replayed["outcome"], "executed");
    // Still exactly one record of the original.
    let (_, body) = get_json(&c, &gw.url("/v1/audit/r-1")).await;
    assert_eq!(body["count"], 1);
    // The newest record's fields at the top level, as Acteon's SDKs parse one record.
    assert_eq!(body["action_id"], "r-1");
    assert_eq!(body["id"], body["records"][0]["id"]);
    assert_eq!(body["outcome"], "executed");
    assert!(
        body["verdict"].is_string() && body["duration_ms"].is_u64(),
        "{body}"
    );
    assert!(body["dispatched_at"].is_string(), "{body}");
    let r = c
        .post(gw.url("/v1/audit/nope/replay"))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 404);
    drop(gw);
    drop_schema(&schema).await;

    // Without the payload: 409 saying why; with the audit off: 404 AUDIT_DISABLED.
    let gw = start(&hook, "memory", "acteon", &[]);
    dispatch(&c, &gw, &action("ok", "hook", "r-2")).await;
    wait_records(&c, &gw, "namespace=au", 1).await;
    let r = c
        .post(gw.url("/v1/audit/r-2/replay"))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["code"], "PAYLOAD_NOT_STORED");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("--audit-store-payload")
    );
    assert_eq!(hook.count(), 3);
    let gw = start(&hook, "memory", "acteon", &["--audit", "off"]);
    for path in ["/v1/audit", "/v1/audit/x"] {
        let (status, body) = get_json(&c, &gw.url(path)).await;
        assert_eq!(status, 404);
        assert_eq!(body["code"], "AUDIT_DISABLED");
    }
}

fn socket_addr(url: &str) -> std::net::SocketAddr {
    use std::net::ToSocketAddrs;
    let rest = url.split("@").last().unwrap_or(url);
    let rest = rest.trim_start_matches("postgres://");
    let host_port = rest.split('/').next().unwrap();
    host_port.to_socket_addrs().unwrap().next().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_postgres_outage_drops_records_not_dispatches() {
    let hook = Recorder::start().await;
    let schema = schema();
    let proxy = FaultProxy::start(socket_addr(&postgres_url()));
    let db = postgres_url();
    let db_name = db.rsplit('/').next().unwrap();
    let user = db
        .trim_start_matches("postgres://")
        .split('@')
        .next()
        .unwrap();
    let audit_url = format!("postgres://{user}@{}/{db_name}", proxy.addr());
    let gw = start(
        &hook,
        "memory",
        &schema,
        &[
            "--audit-postgres-url",
            &audit_url,
            "--audit-queue-capacity",
            "50",
        ],
    );
    let c = reqwest::Client::new();
    dispatch(&c, &gw, &action("noise", "hook", "o-0")).await;
    wait_records(&c, &gw, "namespace=au", 1).await;

    proxy.cut();
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..300 {
        let t = Instant::now();
        dispatch(&c, &gw, &action("noise", "hook", &format!("o-{}", i + 1))).await;
        slowest = slowest.max(t.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(500),
        "slowest dispatch {slowest:?}"
    );
    // The queue holds 50: most of the 300 were dropped at once, and counted.
    let dropped = metric(&c, &gw, "acteon_audit_dropped_total").await;
    assert!(dropped >= 200.0, "dropped {dropped}");
    assert!(metric(&c, &gw, "acteon_audit_records_total{result=\"dropped\"}").await >= 200.0);
    eprintln!(
        "300 dispatches during the outage in {:?}",
        started.elapsed()
    );

    // The batch stuck on the dead link gives up after its bounded retries: its records
    // are counted as store errors, and the writer moves on.
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&c, &gw, "acteon_audit_records_total{result=\"error\"}").await == 0.0 {
        assert!(Instant::now() < deadline, "no store error counted");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("first store error after {:?}", started.elapsed());
    // Dispatches stay fast while the writer is stuck.
    let t = Instant::now();
    dispatch(&c, &gw, &action("noise", "hook", "o-during")).await;
    assert!(t.elapsed() < Duration::from_millis(500));
    proxy.restore();
    // Once the stuck batches gave up, writes recover: a new record gets through.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut n = 0;
    loop {
        n += 1;
        let id = format!("after-{n}");
        dispatch(&c, &gw, &action("noise", "hook", &id)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (status, _) = get_json(&c, &gw.url(&format!("/v1/audit/{id}"))).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "audit writes did not recover");
    }
    let lost = metric(&c, &gw, "acteon_audit_dropped_total").await;
    let errors = metric(&c, &gw, "acteon_audit_records_total{result=\"error\"}").await;
    let written = metric(&c, &gw, "acteon_audit_records_total{result=\"written\"}").await;
    eprintln!("lost {lost} (store errors {errors}), written {written}");
    assert!(written >= 2.0);
    assert!(errors >= 1.0);
    assert!(lost >= dropped + errors);
    drop(gw);
    drop_schema(&schema).await;
}

/// The writer alone into Postgres (batches of up to 500, one `INSERT … SELECT FROM UNNEST`
/// each, blocking when full): every record is written exactly once, and the rate is printed
/// (`ACTEON_AUDIT_BENCH_RECORDS`, default 50,000; the figure of the README:
/// `ACTEON_AUDIT_BENCH_RECORDS=200000 cargo test -p acteon-gateway --test it -- audit_writer_throughput --nocapture`).
#[tokio::test(flavor = "multi_thread")]
async fn audit_writer_throughput_postgres() {
    use acteon_gateway::audit::postgres::PostgresAuditStore;
    use acteon_gateway::audit::redact::Redactor;
    use acteon_gateway::audit::{
        AuditOptions, AuditRecord, AuditSink, AuditStore, Retention, WhenFull,
    };
    use std::sync::Arc;
    let n: usize = std::env::var("ACTEON_AUDIT_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let schema = schema();
    let store = Arc::new(
        PostgresAuditStore::new(&postgres_url(), &schema, Duration::from_secs(30)).unwrap(),
    );
    // Creates the table before timing.
    assert_eq!(store.count().await.unwrap(), 0);
    let registry = prometheus::Registry::new();
    let sink = AuditSink::start(
        store.clone() as Arc<dyn AuditStore>,
        AuditOptions {
            queue_capacity: 10_000,
            when_full: WhenFull::Block,
            store_payload: true,
            redactor: Redactor::default(),
            retention: Retention::parse(30, &[]).unwrap(),
        },
        &registry,
    );
    let template = AuditRecord {
        id: String::new(),
        action_id: String::new(),
        namespace: "bench".into(),
        tenant: "tenant-1".into(),
        provider: "webhook".into(),
        action_type: "alert".into(),
        verdict: "allow".into(),
        matched_rule: Some("route-critical".into()),
        outcome: "executed".into(),
        error: None,
        caller: Some("system:serviceaccount:bench:client".into()),
        source: "dispatch".into(),
        dispatched_at: chrono::Utc::now(),
        duration_ms: 3,
        payload: Some(json!({"severity": "critical", "host": "db-1", "value": 97.5})),
        metadata: [("team".to_owned(), "ops".to_owned())].into(),
    };
    let started = Instant::now();
    for i in 0..n {
        let mut r = template.clone();
        r.id = uuid::Uuid::now_v7().hyphenated().to_string();
        r.action_id = format!("bench-{i}");
        r.dispatched_at = acteon_gateway::audit::now_micros();
        sink.enqueue(r).await;
    }
    sink.shutdown(Duration::from_secs(120)).await;
    let took = started.elapsed();
    let written = sink.metrics.records.with_label_values(&["written"]).get();
    assert_eq!(written as usize, n);
    assert_eq!(store.count().await.unwrap() as usize, n);
    let rate = n as f64 / took.as_secs_f64();
    let batches = sink.metrics.batch_seconds.get_sample_count();
    eprintln!(
        "audit writer: {n} records to Postgres in {took:.2?}: {rate:.0} records/s \
         ({batches} batches, mean {:.1} ms per batch)",
        sink.metrics.batch_seconds.get_sample_sum() * 1000.0 / batches.max(1) as f64
    );
    drop_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_postgres_sweep_applies_namespace_retention() {
    use acteon_gateway::audit::postgres::PostgresAuditStore;
    use acteon_gateway::audit::{AuditRecord, AuditStore, Retention};
    let schema = schema();
    let store = PostgresAuditStore::new(&postgres_url(), &schema, Duration::from_secs(10)).unwrap();
    let now = chrono::Utc::now();
    let record = |id: &str, ns: &str, days: i64| AuditRecord {
        id: uuid::Uuid::now_v7().hyphenated().to_string(),
        action_id: id.into(),
        namespace: ns.into(),
        tenant: "t".into(),
        provider: "p".into(),
        action_type: "x".into(),
        verdict: "allow".into(),
        matched_rule: None,
        outcome: "executed".into(),
        error: None,
        caller: None,
        source: "dispatch".into(),
        dispatched_at: chrono::DateTime::from_timestamp_micros(
            (now - chrono::Duration::days(days)).timestamp_micros(),
        )
        .unwrap(),
        duration_ms: 0,
        payload: None,
        metadata: Default::default(),
    };
    store
        .write_batch(&[
            record("short-old", "short", 10),
            record("short-new", "short", 1),
            record("long-old", "long", 60),
            record("long-kept", "long", 10),
            record("default-old", "other", 40),
            record("default-kept", "other", 10),
        ])
        .await
        .unwrap();
    let retention = Retention::parse(30, &["short=7".into(), "long=90".into()]).unwrap();
    assert_eq!(store.sweep(now, &retention).await.unwrap(), 2);
    for (id, kept) in [
        ("short-old", false),
        ("short-new", true),
        ("long-old", true),
        ("long-kept", true),
        ("default-old", false),
        ("default-kept", true),
    ] {
        assert_eq!(!store.get(id).await.unwrap().is_empty(), kept, "{id}");
    }
    // The same record written twice (a retried batch) is stored once.
    let again = store.get("short-new").await.unwrap();
    store.write_batch(&again).await.unwrap();
    assert_eq!(store.count().await.unwrap(), 4);
    // A retried batch that also holds new records (the COPY meets a stored id and the batch
    // goes through the INSERT): the new ones are written, the stored one is not doubled.
    let mut mixed = again.clone();
    mixed.push(record("short-newer", "short", 0));
    store.write_batch(&mixed).await.unwrap();
    assert_eq!(store.count().await.unwrap(), 5);
    assert_eq!(store.get("short-newer").await.unwrap().len(), 1);
    // An id that is not a UUID is refused, naming the value, and writes nothing.
    let mut bad = record("bad-id", "short", 0);
    bad.id = "not-a-uuid".into();
    let err = store
        .write_batch(&[record("beside-bad", "short", 0), bad])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not-a-uuid"), "{err}");
    assert_eq!(store.count().await.unwrap(), 5);
    drop_schema(&schema).await;
}
