//! Acteon's Python SDK against the real binary.
//!
//! The SDK (`clients/python/acteon_client` in penserai/acteon) is not vendored here. Its
//! wire contract is restated in [`Sdk`]: the request body `Action.to_dict()` builds, and for
//! each call, exactly which keys of the answer its `models.py` / `client.py` index (where a
//! missing key or a wrong type raises in Python) and which it reads with `.get` (optional).
//! Every response of the gateway is put through that contract: each outcome kind, a dry
//! run, a batch with a bad item and an unknown provider, the rule list, health and errors.

use serde_json::{Value, json};

use crate::common::Server;

/// Why the SDK would raise on an answer.
type SdkResult = Result<String, String>;

fn obj<'a>(v: &'a Value, what: &str) -> Result<&'a serde_json::Map<String, Value>, String> {
    v.as_object()
        .ok_or_else(|| format!("{what}: the SDK calls .get on it, got {v}"))
}

/// `.get(key, default)` on a dict whose result the SDK then uses as `kind`.
fn opt_of(
    m: &serde_json::Map<String, Value>,
    key: &str,
    ok: fn(&Value) -> bool,
) -> Result<(), String> {
    match m.get(key) {
        None => Ok(()),
        Some(v) if ok(v) => Ok(()),
        Some(v) => Err(format!("`{key}` has an unusable type: {v}")),
    }
}

/// `ActionOutcome.from_dict`: the outcome type the SDK reports.
fn parse_outcome(data: &Value) -> SdkResult {
    // `"X" in data` on a str is a substring test, on a dict a key test: Acteon sends
    // unit variants as bare strings ("Deduplicated") and the rest as one-key dicts.
    let has = |k: &str| match data {
        Value::String(s) => s.contains(k),
        Value::Object(m) => m.contains_key(k),
        _ => false,
    };
    let response = |r: &Value| -> Result<(), String> {
        let r = obj(r, "response")?;
        opt_of(r, "status", Value::is_string)?;
        opt_of(r, "body", Value::is_object)?;
        opt_of(r, "headers", |h| {
            h.as_object()
                .is_some_and(|m| m.values().all(Value::is_string))
        })
    };
    if has("Executed") {
        response(&data["Executed"])?;
        return Ok("executed".into());
    }
    if data == "Deduplicated" || has("Deduplicated") {
        return Ok("deduplicated".into());
    }
    if has("Suppressed") {
        opt_of(
            obj(&data["Suppressed"], "Suppressed")?,
            "rule",
            Value::is_string,
        )?;
        return Ok("suppressed".into());
    }
    if has("Rerouted") {
        let r = obj(&data["Rerouted"], "Rerouted")?;
        opt_of(r, "new_provider", Value::is_string)?;
        response(r.get("response").unwrap_or(&json!({})))?;
        return Ok("rerouted".into());
    }
    if has("Throttled") {
        let t = obj(&data["Throttled"], "Throttled")?;
        let empty = json!({});
        let ra = obj(t.get("retry_after").unwrap_or(&empty), "retry_after")?;
        opt_of(ra, "secs", Value::is_number)?;
        opt_of(ra, "nanos", Value::is_number)?;
        return Ok("throttled".into());
    }
    if has("Failed") {
        return Ok("failed".into());
    }
    if has("DryRun") {
        obj(&data["DryRun"], "DryRun")?;
        return Ok("dry_run".into());
    }
    Ok("unknown".into())
}

/// `BatchResult.from_dict`.
fn parse_batch_item(data: &Value) -> SdkResult {
    let is_error = match data {
        Value::Object(m) => m.contains_key("error"),
        Value::String(s) => s.contains("error"),
        _ => return Err(format!("batch item is neither a dict nor a str: {data}")),
    };
    if is_error {
        let e = obj(&data["error"], "batch item `error`")?;
        opt_of(e, "code", Value::is_string)?;
        opt_of(e, "message", Value::is_string)?;
        opt_of(e, "retryable", Value::is_boolean)?;
        return Ok(format!(
            "error:{}",
            e.get("code").and_then(Value::as_str).unwrap_or("UNKNOWN")
        ));
    }
    parse_outcome(data)
}

/// What `client.py` does with a non-200 answer: reads `code`/`message`/`retryable`.
fn parse_api_error(data: &Value) -> SdkResult {
    let m = obj(data, "error body")?;
    opt_of(m, "code", Value::is_string)?;
    opt_of(m, "message", Value::is_string)?;
    opt_of(m, "retryable", Value::is_boolean)?;
    Ok(format!(
        "api_error:{}",
        m.get("code").and_then(Value::as_str).unwrap_or("UNKNOWN")
    ))
}

/// `RuleInfo.from_dict`: `name`, `priority`, `enabled` indexed; `description` optional.
fn parse_rule(data: &Value) -> SdkResult {
    let m = obj(data, "rule")?;
    let name = m
        .get("name")
        .and_then(Value::as_str)
        .ok_or("rule without `name`")?;
    m.get("priority")
        .filter(|p| p.is_i64())
        .ok_or("rule without integer `priority`")?;
    m.get("enabled")
        .filter(|e| e.is_boolean())
        .ok_or("rule without boolean `enabled`")?;
    opt_of(m, "description", |d| d.is_string() || d.is_null())?;
    Ok(name.to_owned())
}

/// `Action(...).to_dict()` as the SDK sends it: a uuid4 id, a naive `isoformat()` time with
/// `Z` appended, metadata wrapped in `labels`.
fn sdk_action(provider: &str, action_type: &str, payload: Value, dedup_key: Option<&str>) -> Value {
    let mut a = json!({
        "id": uuid::Uuid::new_v4().to_string(),
        "namespace": "sdk", "tenant": "tenant-1",
        "provider": provider, "action_type": action_type, "payload": payload,
        "created_at": "2026-12-03T15:17:25.123456Z",
        "metadata": {"labels": {"team": "billing"}},
    });
    if let Some(k) = dedup_key {
        a["dedup_key"] = json!(k);
    }
    a
}

struct Sdk {
    c: reqwest::Client,
    server: Server,
}

impl Sdk {
    /// `client.dispatch(action)`: 200 → an outcome, anything else → `ApiError`.
    async fn dispatch(&self, action: &Value, query: &str) -> SdkResult {
        let r = self
            .c
            .post(self.server.url(&format!("/v1/dispatch{query}")))
            .json(action)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = r.status().as_u16();
        let data: Value = r
            .json()
            .await
            .map_err(|e| format!("not JSON ({status}): {e}"))?;
        if status == 200 {
            parse_outcome(&data)
        } else {
            parse_api_error(&data)
        }
    }

    async fn batch(&self, actions: &Value) -> Result<Vec<String>, String> {
        let r = self
            .c
            .post(self.server.url("/v1/dispatch/batch"))
            .json(actions)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = r.status().as_u16();
        let data: Value = r.json().await.map_err(|e| e.to_string())?;
        if status != 200 {
            return parse_api_error(&data).map(|e| vec![e]);
        }
        data.as_array()
            .ok_or("batch answer is not a list")?
            .iter()
            .map(parse_batch_item)
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_contract() {
    let sdk = Sdk {
        c: reqwest::Client::new(),
        server: Server::start(&[
            "--config",
            "gateway/tests/fixtures/sdk",
            "--state",
            "memory",
        ]),
    };
    let email = |t: &str, p: Value, k: Option<&str>| sdk_action("email", t, p, k);

    // health(): True only on 200.
    let health = sdk
        .c
        .get(sdk.server.url("/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status().as_u16(), 200, "GET /health");

    // Every outcome kind parses, and is the kind the rules make.
    let cases = [
        (
            email("welcome", json!({"to": "a@example.com"}), None),
            "",
            "executed",
        ),
        (email("reminder", json!({}), Some("r-1")), "", "executed"),
        (
            email("reminder", json!({}), Some("r-1")),
            "",
            "deduplicated",
        ),
        (email("digest", json!({}), None), "", "executed"),
        (email("digest", json!({}), None), "", "throttled"),
        (email("spam", json!({}), None), "", "suppressed"),
        (
            email("welcome", json!({"urgent": true}), None),
            "",
            "rerouted",
        ),
        (sdk_action("fax", "welcome", json!({}), None), "", "failed"),
        (email("spam", json!({}), None), "?dry_run=true", "dry_run"),
    ];
    for (action, query, want) in &cases {
        let got = sdk.dispatch(action, query).await;
        assert_eq!(got.as_deref(), Ok(*want), "{action} {query}");
    }

    // A batch with a malformed item and an unknown provider: the batch parses, the bad item
    // is an error with code/message/retryable, the unknown provider an outcome.
    let items = sdk
        .batch(&json!([
            email("welcome", json!({}), None),
            {"namespace": "sdk", "tenant": "tenant-1", "provider": "email"},
            sdk_action("fax", "welcome", json!({}), None),
        ]))
        .await
        .expect("the SDK parses every batch item");
    assert_eq!(items[0], "executed");
    assert!(items[1].starts_with("error:"), "{items:?}");
    assert_eq!(items[2], "failed");

    // The unknown provider is PROVIDER_NOT_FOUND, as Acteon answers it.
    let r: Value = sdk
        .c
        .post(sdk.server.url("/v1/dispatch"))
        .json(&sdk_action("fax", "welcome", json!({}), None))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(r["Failed"]["code"], "PROVIDER_NOT_FOUND", "{r}");

    // A malformed request is an ApiError the SDK can read.
    let bad = sdk.dispatch(&json!({"namespace": "sdk"}), "").await;
    assert!(
        bad.as_deref().is_ok_and(|e| e.starts_with("api_error:")),
        "{bad:?}"
    );

    // list_rules().
    let rules: Value = sdk
        .c
        .get(sdk.server.url("/v1/rules"))
        .send()
        .await
        .expect("rules")
        .json()
        .await
        .expect("rules json");
    let names: Vec<String> = rules
        .as_array()
        .expect("a list of rules")
        .iter()
        .map(|r| parse_rule(r).expect("the SDK parses the rule"))
        .collect();
    assert!(names.contains(&"block-spam".to_owned()), "{names:?}");
}

#[test]
fn the_contract_rejects_what_crashed_the_sdk() {
    // The shape that crashed `BatchResult.from_dict`: `error` as a string.
    let old = json!({"error": "invalid action", "code": "INVALID_REQUEST", "message": "m", "retryable": false});
    assert!(parse_batch_item(&old).is_err());
    assert!(parse_outcome(&json!({"Suppressed": "rule"})).is_err());
    assert_eq!(
        parse_outcome(&json!("Deduplicated")).as_deref(),
        Ok("deduplicated")
    );
}
