//! Golden tests: the wire forms of SPEC section 5 (Acteon-compatible), byte for byte.

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use acteon_gateway::action::Action;
use acteon_gateway::outcome::{ActionError, ActionOutcome, ProviderResponse, ResponseStatus};
use chrono::{TimeZone, Utc};
use serde_json::json;

fn wire(o: &ActionOutcome) -> String {
    serde_json::to_string(o).expect("serializes")
}

fn empty_response() -> ProviderResponse {
    ProviderResponse {
        status: ResponseStatus::Success,
        body: json!({}),
        headers: HashMap::new(),
    }
}

#[test]
fn executed() {
    assert_eq!(
        wire(&ActionOutcome::Executed(empty_response())),
        r#"{"Executed":{"status":"success","body":{},"headers":{}}}"#
    );
}

#[test]
fn deduplicated_is_a_bare_string() {
    assert_eq!(wire(&ActionOutcome::Deduplicated), r#""Deduplicated""#);
}

#[test]
fn suppressed() {
    assert_eq!(
        wire(&ActionOutcome::Suppressed { rule: "r".into() }),
        r#"{"Suppressed":{"rule":"r"}}"#
    );
}

#[test]
fn throttled_carries_a_std_duration() {
    let o = ActionOutcome::Throttled {
        retry_after: Duration::from_secs(3),
    };
    assert_eq!(
        wire(&o),
        r#"{"Throttled":{"retry_after":{"secs":3,"nanos":0}}}"#
    );
    let o = ActionOutcome::Throttled {
        retry_after: Duration::from_millis(2500),
    };
    assert_eq!(
        wire(&o),
        r#"{"Throttled":{"retry_after":{"secs":2,"nanos":500000000}}}"#
    );
}

#[test]
fn rerouted() {
    let o = ActionOutcome::Rerouted {
        original_provider: "a".into(),
        new_provider: "b".into(),
        response: empty_response(),
    };
    assert_eq!(
        wire(&o),
        r#"{"Rerouted":{"original_provider":"a","new_provider":"b","response":{"status":"success","body":{},"headers":{}}}}"#
    );
}

#[test]
fn failed() {
    let o = ActionOutcome::Failed(ActionError {
        code: "HTTP_5XX".into(),
        message: "boom".into(),
        retryable: false,
        attempts: 1,
    });
    assert_eq!(
        wire(&o),
        r#"{"Failed":{"code":"HTTP_5XX","message":"boom","retryable":false,"attempts":1}}"#
    );
}

#[test]
fn later_outcomes_keep_acteon_field_names() {
    let at = Utc
        .with_ymd_and_hms(2026, 1, 2, 3, 4, 5)
        .single()
        .expect("valid time");
    let cases = [
        (
            ActionOutcome::Grouped {
                group_id: "g".into(),
                group_size: 2,
                notify_at: at,
            },
            r#"{"Grouped":{"group_id":"g","group_size":2,"notify_at":"2026-01-02T03:04:05Z"}}"#,
        ),
        (
            ActionOutcome::Scheduled {
                action_id: "a".into(),
                scheduled_for: at,
            },
            r#"{"Scheduled":{"action_id":"a","scheduled_for":"2026-01-02T03:04:05Z"}}"#,
        ),
        (
            ActionOutcome::ChainStarted {
                chain_id: "c".into(),
                chain_name: "n".into(),
                total_steps: 3,
                first_step: "s".into(),
            },
            r#"{"ChainStarted":{"chain_id":"c","chain_name":"n","total_steps":3,"first_step":"s"}}"#,
        ),
        (
            ActionOutcome::StateChanged {
                fingerprint: "f".into(),
                previous_state: "a".into(),
                new_state: "b".into(),
                notify: true,
            },
            r#"{"StateChanged":{"fingerprint":"f","previous_state":"a","new_state":"b","notify":true}}"#,
        ),
        (
            ActionOutcome::QuotaExceeded {
                tenant: "t".into(),
                quota: "ns/q".into(),
                limit: 5,
                used: 5,
                resets_in: Duration::from_secs(7),
            },
            r#"{"QuotaExceeded":{"tenant":"t","quota":"ns/q","limit":5,"used":5,"resets_in":{"secs":7,"nanos":0}}}"#,
        ),
        (
            ActionOutcome::CircuitOpen {
                provider: "p".into(),
                fallback_chain: vec!["q".into()],
            },
            r#"{"CircuitOpen":{"provider":"p","fallback_chain":["q"]}}"#,
        ),
        (
            ActionOutcome::DryRun {
                verdict: "suppress".into(),
                matched_rule: Some("r".into()),
                would_be_provider: "p".into(),
                errors: vec![],
            },
            r#"{"DryRun":{"verdict":"suppress","matched_rule":"r","would_be_provider":"p"}}"#,
        ),
    ];
    for (outcome, expected) in cases {
        assert_eq!(wire(&outcome), expected);
        let back: ActionOutcome = serde_json::from_str(expected).expect("parses back");
        assert_eq!(back, outcome);
    }
}

#[test]
fn request_with_every_field() {
    let body = json!({
        "id": "a-1", "namespace": "ns", "tenant": "t", "provider": "email", "action_type": "send",
        "payload": {"to": "x@example.com"}, "created_at": "2026-01-02T03:04:05Z",
        "metadata": {"cluster": "c1"}, "dedup_key": "k", "status": "firing", "fingerprint": "fp",
        "template": "ignored", "attachments": [], "signature": "ignored"
    });
    let a: Action = serde_json::from_value(body).expect("parses");
    assert_eq!(a.id, "a-1");
    assert_eq!(a.dedup_key.as_deref(), Some("k"));
    assert_eq!(a.status.as_deref(), Some("firing"));
    assert_eq!(a.fingerprint.as_deref(), Some("fp"));
    assert_eq!(a.metadata.get("cluster").map(String::as_str), Some("c1"));
    assert_eq!(
        a.created_at.map(|t| t.to_rfc3339()),
        Some("2026-01-02T03:04:05+00:00".into())
    );
}

#[test]
fn python_sdk_labels_metadata() {
    let a: Action = serde_json::from_value(json!({
        "namespace": "ns", "tenant": "t", "provider": "p", "action_type": "x", "payload": {},
        "metadata": {"labels": {"team": "a"}}
    }))
    .expect("parses");
    assert_eq!(a.metadata.get("team").map(String::as_str), Some("a"));
}

#[test]
fn error_body_shape() {
    let e = acteon_gateway::http::error::ApiError::invalid("`tenant`: bad");
    let v = serde_json::to_value(e.body()).expect("serializes");
    assert_eq!(
        v,
        json!({"error": "`tenant`: bad", "code": "INVALID_REQUEST", "message": "`tenant`: bad", "retryable": false})
    );
}

/// A batch item error, as Acteon's SDKs parse it (`BatchResult.from_dict`).
#[test]
fn batch_item_error_shape() {
    let e = acteon_gateway::http::error::ApiError::invalid("`tenant`: bad");
    let item = acteon_gateway::http::dispatch::BatchItem::from(e);
    let v = serde_json::to_value(item).expect("serializes");
    assert_eq!(
        v,
        json!({"error": {"code": "INVALID_REQUEST", "message": "`tenant`: bad", "retryable": false}})
    );
}

/// An unknown provider is a `Failed` outcome with Acteon's code, not a 4xx.
#[tokio::test]
async fn unknown_provider_is_a_failed_outcome() {
    let gw = common::gateway(
        "apiVersion: acteon.dev/v1alpha1\nkind: Provider\nmetadata: {name: p, namespace: ns}\nspec: {type: noop}\n",
    );
    let a = common::action(
        json!({"namespace": "ns", "tenant": "t", "provider": "ghost", "action_type": "x", "payload": {}}),
    );
    let o = gw.dispatch(a, false).await.expect("an outcome");
    let v = serde_json::to_value(&o).expect("serializes");
    assert_eq!(v["Failed"]["code"], "PROVIDER_NOT_FOUND", "{v}");
    assert_eq!(v["Failed"]["retryable"], false, "{v}");
}
