//! The `opsgenie` provider against a local peer speaking the Alert API v2: `GenieKey`
//! auth, create at `/v2/alerts`, close and acknowledge by alias, 202 with a request id,
//! 401/422 with Opsgenie's `message` (and per-field `errors`).

use super::*;

const OG_KEY: &str = "eb243592-faa2-4ba2-a551-1afdf565c889";
const REQUEST_ID: &str = "43a29c5c-3dbf-4fa4-9c26-f4f71023e120";

fn error(status: StatusCode, message: &str, errors: Option<Value>) -> Response {
    let mut body = json!({"message": message, "took": 0.001, "requestId": REQUEST_ID});
    if let Some(e) = errors {
        body["errors"] = e;
    }
    (status, axum::Json(body)).into_response()
}

fn unprocessable(field: &str, why: &str) -> Response {
    error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "Request body is not processable. Please check the errors.",
        Some(json!({field: why})),
    )
}

/// Opsgenie's Alert API: what it checks of a create, close or acknowledge request.
pub(super) fn answer(peer: &Peer, uri: &Uri, headers: &HeaderMap, body: &Value) -> Response {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    if auth != Some(&format!("GenieKey {}", peer.secret)) {
        return error(StatusCode::UNAUTHORIZED, "Could not authenticate", None);
    }
    let json_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    if !json_type {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Unsupported Media Type",
            None,
        );
    }
    if let Some(refused) = refusal(uri, body) {
        return refused;
    }
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({"result": "Request will be processed", "took": 0.302,
                          "requestId": REQUEST_ID})),
    )
        .into_response()
}

/// Opsgenie's answer to a request it refuses by path or body, if it does.
fn refusal(uri: &Uri, body: &Value) -> Option<Response> {
    let path = uri.path();
    if path == "/v2/alerts" {
        return check_create(body);
    }
    let Some(rest) = path.strip_prefix("/v2/alerts/") else {
        return Some(error(StatusCode::NOT_FOUND, "Not found", None));
    };
    let by_alias = uri.query() == Some("identifierType=alias");
    match rest.rsplit_once('/') {
        Some((_, "close" | "acknowledge")) if by_alias => None,
        Some((_, "close" | "acknowledge")) => Some(unprocessable(
            "identifierType",
            "Identifier type is not valid",
        )),
        _ => Some(error(StatusCode::NOT_FOUND, "Not found", None)),
    }
}

fn check_create(body: &Value) -> Option<Response> {
    let message = body["message"].as_str().unwrap_or("");
    if message.trim().is_empty() {
        return Some(unprocessable("message", "Message can not be empty."));
    }
    if message.chars().count() > 130 {
        return Some(unprocessable(
            "message",
            "Message can not be longer than 130 characters.",
        ));
    }
    if let Some(p) = body.get("priority")
        && !["P1", "P2", "P3", "P4", "P5"].contains(&p.as_str().unwrap_or(""))
    {
        return Some(unprocessable(
            "priority",
            "Priority should be one of [P1, P2, P3, P4, P5]",
        ));
    }
    if body.get("details").is_some_and(|d| {
        d.as_object()
            .is_none_or(|m| m.values().any(|v| !v.is_string()))
    }) {
        return Some(unprocessable(
            "details",
            "Details should be a map of strings",
        ));
    }
    for r in body["responders"].as_array().into_iter().flatten() {
        let known = ["team", "user", "escalation", "schedule"];
        if !known.contains(&r["type"].as_str().unwrap_or("")) {
            return Some(unprocessable("responders", "Responder type is not valid"));
        }
    }
    None
}

fn opsgenie_gateway(peer: &Peer, max_attempts: u32) -> Gateway {
    gateway_with_secrets(
        &format!(
            r#"apiVersion: acteon.dev/v1alpha1
kind: Provider
metadata: {{name: og, namespace: ns}}
spec:
  type: opsgenie
  opsgenie:
    apiKeySecretRef: {{name: og, key: apikey}}
    apiUrl: "{}"
    priority: P4
    tags: [acteon]
    responders: [{{type: team, name: ops}}]
  retry: {{maxAttempts: {max_attempts}, initialBackoffMs: 10, maxBackoffMs: 2000}}
"#,
            peer.base
        ),
        &[("og", "apikey", OG_KEY)],
    )
}

#[tokio::test]
async fn opsgenie_creates_closes_and_acknowledges_by_alias() {
    let peer = Peer::start(Protocol::Opsgenie, OG_KEY, vec![]).await;
    let gw = opsgenie_gateway(&peer, 3);
    let r = executed(
        &gw,
        act(
            "og",
            json!({"summary": "CPU above 95% on db-1", "text": "for 10 minutes",
                   "severity": "critical", "alias": "db-1/cpu", "tags": ["db"],
                   "details": {"cpu": 97}, "entity": "db-1"}),
        ),
    )
    .await;
    assert_eq!(r.body["requestId"], REQUEST_ID, "{:?}", r.body);
    let seen = peer.seen();
    assert_eq!(seen[0].path, "/v2/alerts");
    assert_eq!(
        header(&seen[0], "authorization"),
        format!("GenieKey {OG_KEY}")
    );
    assert_eq!(
        seen[0].body,
        json!({"message": "CPU above 95% on db-1", "alias": "db-1/cpu",
               "description": "for 10 minutes", "priority": "P1", "tags": ["db", "acteon"],
               "details": {"cpu": "97"}, "entity": "db-1", "source": "ns/t",
               "responders": [{"type": "team", "name": "ops"}]})
    );
    // The Provider's priority without a severity; a long message is cut to 130.
    executed(&gw, act("og", json!({"message": "m".repeat(300)}))).await;
    let b = &peer.seen()[1].body;
    assert_eq!(
        (b["priority"].as_str(), b["message"].as_str().map(str::len)),
        (Some("P4"), Some(130))
    );

    // Close by the payload's alias (PagerDuty's word works too), acknowledge by the
    // action's dedup_key.
    executed(
        &gw,
        act(
            "og",
            json!({"event_action": "resolve", "alias": "db-1/cpu", "note": "fixed"}),
        ),
    )
    .await;
    let mut ack = act("og", json!({"action": "acknowledge"}));
    ack.dedup_key = Some("db-2".into());
    executed(&gw, ack).await;
    let seen = peer.seen();
    assert_eq!(seen[2].path, "/v2/alerts/db-1%2Fcpu/close");
    assert_eq!(seen[2].body, json!({"source": "ns/t", "note": "fixed"}));
    assert_eq!(seen[3].path, "/v2/alerts/db-2/acknowledge");

    // Close without any alias: refused here, nothing sent.
    let e = failed(&gw, act("og", json!({"action": "close"}))).await;
    assert_eq!((e.code.as_str(), e.retryable), ("INVALID_PAYLOAD", false));
    assert_eq!(peer.seen().len(), 4);
}

#[tokio::test]
async fn opsgenie_422_is_not_retried_and_carries_opsgenies_message() {
    let peer = Peer::start(Protocol::Opsgenie, OG_KEY, vec![]).await;
    let gw = opsgenie_gateway(&peer, 3);
    let e = failed(
        &gw,
        act(
            "og",
            json!({"summary": "x", "responders": [{"type": "group", "name": "g"}]}),
        ),
    )
    .await;
    assert_eq!(
        (e.code.as_str(), e.retryable, e.attempts),
        ("HTTP_4XX", false, 1)
    );
    assert!(
        e.message.contains("Request body is not processable")
            && e.message
                .contains("responders: Responder type is not valid"),
        "{}",
        e.message
    );
    assert_eq!(peer.seen().len(), 1);
}

#[tokio::test]
async fn opsgenie_429_and_5xx_are_retried() {
    let peer = Peer::start(
        Protocol::Opsgenie,
        OG_KEY,
        vec![
            Answer::Raw(
                429,
                vec![("retry-after", "1"), ("content-type", "application/json")],
                r#"{"message":"You are making too many requests!","took":0.0,"requestId":"r"}"#,
            ),
            Answer::Raw(503, vec![], "Service Unavailable"),
        ],
    )
    .await;
    let gw = opsgenie_gateway(&peer, 3);
    executed(&gw, act("og", json!({"summary": "x"}))).await;
    let seen = peer.seen();
    assert_eq!(seen.len(), 3, "429, 503, then 202");
    assert!(
        seen[1].at - seen[0].at >= Duration::from_millis(950),
        "Retry-After honoured"
    );
    peer.script.lock().extend([
        Answer::Raw(500, vec![], "oops"),
        Answer::Raw(502, vec![], "bad gateway"),
        Answer::Raw(502, vec![], "bad gateway"),
    ]);
    let e = failed(&gw, act("og", json!({"summary": "x"}))).await;
    assert_eq!(
        (e.code.as_str(), e.retryable, e.attempts),
        ("HTTP_5XX", true, 3)
    );
}

#[tokio::test]
async fn opsgenie_key_is_not_shown() {
    let (log, _guard) = Log::capture();
    let peer = Peer::start(Protocol::Opsgenie, "another-key", vec![]).await;
    let gw = opsgenie_gateway(&peer, 3);
    let e = failed(&gw, act("og", json!({"summary": "x"}))).await;
    assert_eq!(
        (e.code.as_str(), e.retryable, e.attempts),
        ("HTTP_4XX", false, 1)
    );
    assert!(
        e.message.contains("Could not authenticate"),
        "{}",
        e.message
    );
    assert_not_shown(&[OG_KEY], &e, &gw, &log);
    assert_not_in_config(&[OG_KEY], gw).await;
    let dead = Peer {
        base: format!("http://127.0.0.1:{}", free_port()),
        ..peer.clone()
    };
    let gw = opsgenie_gateway(&dead, 1);
    let e = failed(&gw, act("og", json!({"summary": "x"}))).await;
    assert_eq!((e.code.as_str(), e.retryable), ("CONNECTION", true));
    assert_not_shown(&[OG_KEY], &e, &gw, &log);
}
