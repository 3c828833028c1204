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

/// `data[key]` of a type the SDK's model (and its Go twin) can hold.
fn must<'a>(
    m: &'a serde_json::Map<String, Value>,
    key: &str,
    ok: fn(&Value) -> bool,
) -> Result<&'a Value, String> {
    match m.get(key) {
        Some(v) if ok(v) => Ok(v),
        Some(v) => Err(format!("`{key}` has an unusable type: {v}")),
        None => Err(format!("no `{key}`: the SDK indexes it")),
    }
}

fn str_or_null(v: &Value) -> bool {
    v.is_string() || v.is_null()
}

/// `EventState.from_dict`: `fingerprint`, `state` indexed; `action_type`, `updated_at`
/// optional strings (RFC 3339 for the time: Go's model holds a string).
fn parse_event(data: &Value) -> SdkResult {
    let m = obj(data, "event")?;
    let fp = must(m, "fingerprint", Value::is_string)?;
    let state = must(m, "state", Value::is_string)?;
    opt_of(m, "action_type", str_or_null)?;
    opt_of(m, "updated_at", str_or_null)?;
    Ok(format!(
        "{}={}",
        fp.as_str().unwrap_or(""),
        state.as_str().unwrap_or("")
    ))
}

/// `EventListResponse.from_dict`: `events` (each an `EventState`) and `count` indexed.
fn parse_event_list(data: &Value) -> Result<Vec<String>, String> {
    let m = obj(data, "event list")?;
    must(m, "count", Value::is_u64)?;
    let events = must(m, "events", Value::is_array)?;
    events
        .as_array()
        .into_iter()
        .flatten()
        .map(parse_event)
        .collect()
}

/// `TransitionResponse.from_dict`: all four keys indexed.
fn parse_transition(data: &Value) -> SdkResult {
    let m = obj(data, "transition")?;
    must(m, "fingerprint", Value::is_string)?;
    let from = must(m, "previous_state", Value::is_string)?;
    let to = must(m, "new_state", Value::is_string)?;
    must(m, "notify", Value::is_boolean)?;
    Ok(format!(
        "{}->{}",
        from.as_str().unwrap_or(""),
        to.as_str().unwrap_or("")
    ))
}

/// `GroupSummary.from_dict`: `group_id`, `group_key`, `event_count`, `state` indexed;
/// `notify_at`, `created_at` optional strings. Answers the key.
fn parse_group(data: &Value) -> SdkResult {
    let m = obj(data, "group")?;
    must(m, "group_id", Value::is_string)?;
    let key = must(m, "group_key", Value::is_string)?;
    must(m, "event_count", Value::is_u64)?;
    must(m, "state", Value::is_string)?;
    opt_of(m, "notify_at", str_or_null)?;
    opt_of(m, "created_at", str_or_null)?;
    Ok(key.as_str().unwrap_or("").to_owned())
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

    events_and_groups(&sdk).await;
}

/// The `host` an event's recorded action carried.
fn host_of(event: &Value) -> String {
    event["payload"]["host"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// list_events / get_event / transition_event and list_groups / get_group / flush_group,
/// with the parameters the SDK sends (no `machine`; the group key put into the path as it
/// came, unencoded).
async fn events_and_groups(sdk: &Sdk) {
    let get = |path: String| {
        let c = sdk.c.clone();
        let url = sdk.server.url(&path);
        async move {
            let r = c.get(url).send().await.expect("sent");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.expect("json"))
        }
    };
    for host in ["web-1", "web-2"] {
        let alert = sdk_action("email", "alert", json!({"host": host}), None);
        sdk.dispatch(&alert, "").await.expect("an outcome");
    }
    let (status, listed) = get("/v1/events?namespace=sdk&tenant=tenant-1".into()).await;
    assert_eq!(status, 200, "{listed}");
    let events = parse_event_list(&listed).expect("the SDK parses the event list");
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events.iter().all(|e| e.ends_with("=open")), "{events:?}");
    let fingerprint = events[0].split('=').next().expect("fingerprint").to_owned();

    let (status, one) = get(format!(
        "/v1/events/{fingerprint}?namespace=sdk&tenant=tenant-1"
    ))
    .await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(parse_event(&one), Ok(format!("{fingerprint}=open")));
    assert!(
        one["updated_at"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{one}"
    );
    assert_eq!(one["action_type"], "alert");
    assert!(
        one["timeout_at"].is_u64(),
        "recorded in the initial state with its timeout armed, though the SDK sent no status: {one}"
    );
    let (status, _) = get("/v1/events/nope?namespace=sdk&tenant=tenant-1".into()).await;
    assert_eq!(status, 404, "get_event answers None");

    let transition = |to: &'static str, fp: String| {
        let c = sdk.c.clone();
        let url = sdk.server.url(&format!("/v1/events/{fp}/transition"));
        async move {
            let r = c
                .put(url)
                .json(&json!({"to": to, "namespace": "sdk", "tenant": "tenant-1"}))
                .send()
                .await
                .expect("sent");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.expect("json"))
        }
    };
    let (status, moved) = transition("acked", fingerprint.clone()).await;
    assert_eq!(status, 200, "{moved}");
    assert_eq!(parse_transition(&moved), Ok("open->acked".into()));
    let (status, refused) = transition("open", fingerprint.clone()).await;
    assert_eq!(status, 409, "a move the machine does not allow: {refused}");
    assert_eq!(
        parse_api_error(&refused),
        Ok("api_error:TRANSITION_NOT_ALLOWED".into())
    );
    let (status, missing) = transition("acked", "nope".into()).await;
    assert_eq!(
        status, 404,
        "transition_event raises HttpError(404): {missing}"
    );
    let (_, one) = get(format!(
        "/v1/events/{fingerprint}?namespace=sdk&tenant=tenant-1"
    ))
    .await;
    assert_eq!(one["state"], "acked", "{one}");
    // Another alert without status: the live event stays where it is.
    let again: Value = sdk
        .c
        .post(sdk.server.url("/v1/dispatch"))
        .json(&sdk_action(
            "email",
            "alert",
            json!({"host": host_of(&one)}),
            None,
        ))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(again["StateChanged"]["previous_state"], "acked", "{again}");
    assert_eq!(again["StateChanged"]["new_state"], "acked", "{again}");
    let (_, acked) =
        get("/v1/events?namespace=sdk&tenant=tenant-1&status=acked&limit=5".into()).await;
    assert_eq!(
        parse_event_list(&acked),
        Ok(vec![format!("{fingerprint}=acked")])
    );

    for team in ["db", "db", "net"] {
        let page = sdk_action("email", "page", json!({"team": team}), None);
        sdk.dispatch(&page, "").await.expect("an outcome");
    }
    // list_groups() sends no parameter.
    let (status, groups) = get("/v1/groups".into()).await;
    assert_eq!(status, 200, "{groups}");
    let g = obj(&groups, "group list").expect("an object");
    assert_eq!(g.get("total"), Some(&json!(2)), "{groups}");
    let listed = groups["groups"].as_array().expect("groups");
    let db = listed
        .iter()
        .find(|g| g["labels"]["action.payload.team"] == "db")
        .unwrap_or_else(|| panic!("the db group: {groups}"));
    let key = parse_group(db).expect("the SDK parses the group");
    assert_eq!(db["event_count"], 2, "{db}");
    assert!(
        key.chars().all(|c| c.is_ascii_alphanumeric()),
        "a key the SDK can put into a path as it is: {key}"
    );
    // get_group(key): `f"/v1/groups/{group_key}"`.
    let (status, detail) = get(format!("/v1/groups/{key}")).await;
    assert_eq!(status, 200, "{detail}");
    assert_eq!(parse_group(&detail["group"]), Ok(key.clone()));
    assert!(detail["labels"].is_object(), "{detail}");
    // flush_group(key): `group_id`, `event_count`, `notified` indexed.
    let flushed: Value = sdk
        .c
        .delete(sdk.server.url(&format!("/v1/groups/{key}")))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(flushed["group_id"], db["group_id"], "{flushed}");
    assert_eq!(flushed["event_count"], 2, "{flushed}");
    assert_eq!(flushed["notified"], true, "{flushed}");
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
