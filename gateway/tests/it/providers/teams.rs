//! The `teams` provider against a local peer speaking both Teams webhook flavours: a
//! Power Automate Workflows trigger (202, signature in the query) and a legacy connector
//! (`/webhookb2/…`, 200 with `1`, and 200 with a failure text when delivery failed).

use super::*;

const TEAMS_SIG: &str = "w0rkfl0wS1gS3cr3tValue";

/// Teams: the message must be `{"type": "message", "attachments": [Adaptive Card…]}`.
pub(super) fn answer(peer: &Peer, uri: &Uri, body: &Value) -> Response {
    let workflow = uri.path() == "/workflows/abc/triggers/manual/paths/invoke";
    let connector = uri.path() == format!("/webhookb2/{}", peer.secret);
    let signed = uri
        .query()
        .is_some_and(|q| q.contains(&format!("sig={}", peer.secret)));
    if workflow && !signed {
        let error = json!({"error": {"code": "DirectApiAuthorizationRequired",
            "message": "The request must be authenticated only by Shared Access scheme."}});
        return (StatusCode::UNAUTHORIZED, axum::Json(error)).into_response();
    }
    if !workflow && !connector {
        return (StatusCode::NOT_FOUND, "Not Found").into_response();
    }
    if let Err(why) = check_message(body) {
        return (StatusCode::BAD_REQUEST, why).into_response();
    }
    if workflow {
        StatusCode::ACCEPTED.into_response()
    } else {
        (StatusCode::OK, "1").into_response()
    }
}

/// What Teams needs of a message with Adaptive Cards.
fn check_message(body: &Value) -> Result<(), String> {
    if body["type"] != "message" {
        return Err("Bad payload: type must be message".into());
    }
    let attachments = body["attachments"]
        .as_array()
        .ok_or("attachments missing")?;
    if attachments.is_empty() {
        return Err("Summary or Text is required.".into());
    }
    for a in attachments {
        if a["contentType"] != "application/vnd.microsoft.card.adaptive" {
            return Err("unsupported contentType".into());
        }
        let card = &a["content"];
        if card["type"] != "AdaptiveCard" || card["version"].as_str().is_none() {
            return Err("content is not an AdaptiveCard".into());
        }
        let blocks = card["body"].as_array().ok_or("AdaptiveCard without body")?;
        if blocks.iter().any(|b| b["type"].as_str().is_none()) {
            return Err("element without type".into());
        }
    }
    Ok(())
}

/// Two Teams providers: `flow` (a Workflows URL) and `hook` (a legacy connector).
fn teams_gateway(peer: &Peer, max_attempts: u32) -> Gateway {
    let provider = |name: &str, key: &str| {
        format!(
            r#"apiVersion: acteon.dev/v1alpha1
kind: Provider
metadata: {{name: {name}, namespace: ns}}
spec:
  type: teams
  teams: {{webhookUrlSecretRef: {{name: teams, key: {key}}}}}
  retry: {{maxAttempts: {max_attempts}, initialBackoffMs: 10, maxBackoffMs: 2000}}
"#
        )
    };
    gateway_with_secrets(
        &format!(
            "{}---\n{}",
            provider("flow", "flow"),
            provider("hook", "hook")
        ),
        &[
            (
                "teams",
                "flow",
                &format!(
                    "{}/workflows/abc/triggers/manual/paths/invoke?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig={TEAMS_SIG}",
                    peer.base
                ),
            ),
            (
                "teams",
                "hook",
                &format!("{}/webhookb2/{TEAMS_SIG}", peer.base),
            ),
        ],
    )
}

#[tokio::test]
async fn teams_posts_adaptive_cards_to_workflows_and_connectors() {
    let peer = Peer::start(Protocol::Teams, TEAMS_SIG, vec![]).await;
    let gw = teams_gateway(&peer, 3);
    // A card built from the payload, accepted with Workflows' 202.
    let r = executed(
        &gw,
        act(
            "flow",
            json!({"title": "Disk full", "text": "db-1 at 99%", "severity": "critical"}),
        ),
    )
    .await;
    assert_eq!(r.body, json!({"ok": true}));
    let seen = peer.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(header(&seen[0], "content-type"), "application/json");
    let attachment = &seen[0].body["attachments"][0];
    assert_eq!(
        attachment["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    assert_eq!(
        attachment["content"]["body"],
        json!([
            {"type": "TextBlock", "text": "Disk full", "wrap": true, "weight": "Bolder",
             "size": "Medium", "color": "Attention"},
            {"type": "TextBlock", "text": "db-1 at 99%", "wrap": true}
        ])
    );
    // The payload's own card is sent as is; the connector answers 200 `1`.
    let card = json!({"type": "AdaptiveCard", "version": "1.5",
                      "body": [{"type": "TextBlock", "text": "custom"}]});
    let r = executed(&gw, act("hook", json!({"card": card}))).await;
    assert_eq!(r.body, json!({"ok": true}));
    let seen = peer.seen();
    assert_eq!(seen[1].path, format!("/webhookb2/{TEAMS_SIG}"));
    assert_eq!(seen[1].body["attachments"][0]["content"], card);
    // Neither text nor card: the payload as text.
    executed(&gw, act("hook", json!({"value": 7}))).await;
    assert_eq!(
        peer.seen()[2].body["attachments"][0]["content"]["body"][0]["text"],
        r#"alert: {"value":7}"#
    );
    // A card that is not an object is refused here, nothing sent.
    let e = failed(&gw, act("hook", json!({"card": "x"}))).await;
    assert_eq!((e.code.as_str(), e.retryable), ("INVALID_PAYLOAD", false));
    assert_eq!(peer.seen().len(), 3);
}

#[tokio::test]
async fn teams_connector_failures_inside_200_are_failures() {
    let throttled = "Webhook message delivery failed with error: Microsoft Teams endpoint \
                     returned HttpStatusCode 429.";
    let refused = "Webhook message delivery failed with error: Microsoft Teams endpoint \
                   returned HttpStatusCode 400.";
    let peer = Peer::start(
        Protocol::Teams,
        TEAMS_SIG,
        vec![Answer::Raw(200, vec![], throttled)],
    )
    .await;
    let gw = teams_gateway(&peer, 3);
    // The quoted 429 is retried (then the peer answers for real: 1).
    executed(&gw, act("hook", json!({"text": "x"}))).await;
    assert_eq!(peer.seen().len(), 2);
    // The quoted 400 is not: one attempt, Teams' text in the message.
    peer.script
        .lock()
        .push_back(Answer::Raw(200, vec![], refused));
    let e = failed(&gw, act("hook", json!({"text": "x"}))).await;
    assert_eq!(
        (e.code.as_str(), e.retryable, e.attempts),
        ("TEAMS_ERROR", false, 1)
    );
    assert!(e.message.contains("HttpStatusCode 400"), "{}", e.message);
    assert_eq!(peer.seen().len(), 3);
}

#[tokio::test]
async fn teams_4xx_is_not_retried_and_429_and_5xx_are() {
    let peer = Peer::start(
        Protocol::Teams,
        TEAMS_SIG,
        vec![
            Answer::Raw(429, vec![("retry-after", "1")], ""),
            Answer::Raw(503, vec![], "Service Unavailable"),
            Answer::Raw(408, vec![], ""),
        ],
    )
    .await;
    let gw = teams_gateway(&peer, 4);
    executed(&gw, act("flow", json!({"summary": "x"}))).await;
    let seen = peer.seen();
    assert_eq!(seen.len(), 4, "429, 503, 408, then 202");
    let waited = seen[1].at - seen[0].at;
    assert!(
        waited >= Duration::from_millis(950),
        "Retry-After honoured: {waited:?}"
    );
    // An empty attachment list: the peer's 400, not retried.
    let e = failed(&gw, act("flow", json!({"attachments": []}))).await;
    assert_eq!((e.code.as_str(), e.retryable), ("INVALID_PAYLOAD", false));
    peer.script
        .lock()
        .push_back(Answer::Raw(400, vec![], "Summary or Text is required."));
    let e = failed(&gw, act("flow", json!({"text": "x"}))).await;
    assert_eq!(
        (e.code.as_str(), e.retryable, e.attempts),
        ("HTTP_4XX", false, 1)
    );
    assert!(
        e.message.contains("Summary or Text is required"),
        "{}",
        e.message
    );
    assert_eq!(peer.seen().len(), 5);
}

#[tokio::test]
async fn teams_webhook_secret_is_not_shown() {
    let (log, _guard) = Log::capture();
    let peer = Peer::start(Protocol::Teams, "another-signature", vec![]).await;
    let gw = teams_gateway(&peer, 2);
    let e = failed(&gw, act("flow", json!({"text": "x"}))).await;
    assert_eq!((e.code.as_str(), e.retryable), ("HTTP_4XX", false));
    assert!(e.message.contains("Shared Access scheme"), "{}", e.message);
    assert_not_shown(&[TEAMS_SIG], &e, &gw, &log);
    let e = failed(&gw, act("hook", json!({"text": "x"}))).await;
    assert_not_shown(&[TEAMS_SIG], &e, &gw, &log);
    assert_not_in_config(&[TEAMS_SIG], gw).await;
    let dead = Peer {
        base: format!("http://127.0.0.1:{}", free_port()),
        ..peer.clone()
    };
    let gw = teams_gateway(&dead, 1);
    let e = failed(&gw, act("flow", json!({"text": "x"}))).await;
    assert_eq!((e.code.as_str(), e.retryable), ("CONNECTION", true));
    assert_not_shown(&[TEAMS_SIG], &e, &gw, &log);
}
