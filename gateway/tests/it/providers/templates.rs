//! Message templates (`spec.templates`) through the whole gateway: rendered into the
//! payload before the provider maps it (here Slack, against the local Slack peer), a render
//! error failing the delivery without calling the peer, and a bad template refused by
//! validation naming its field.

use super::*;

fn templated_slack(peer: &Peer) -> Gateway {
    gateway_with_secrets(
        &format!(
            r##"apiVersion: acteon.dev/v1alpha1
kind: Provider
metadata: {{name: chat, namespace: ns}}
spec:
  type: slack
  slack: {{tokenSecretRef: {{name: slack, key: token}}, apiUrl: "{}/api", channel: "#alerts"}}
  retry: {{maxAttempts: 3, initialBackoffMs: 10, maxBackoffMs: 100}}
  templates:
    fields:
      text: "[{{{{ namespace }}}}/{{{{ tenant }}}}] {{{{ payload.service | upper }}}}: {{{{ payload.summary }}}}{{% if metadata.runbook %}} ({{{{ metadata.runbook }}}}){{% endif %}}"
    jsonFields:
      blocks: |
        [{{"type": "section", "text": {{"type": "mrkdwn", "text": {{{{ "*" ~ payload.summary ~ "*" }}}}}}}},
         {{"type": "context", "elements": [{{"type": "mrkdwn", "text": {{{{ payload.count * 2 }}}}}}]}}]
"##,
            peer.base
        ),
        &[("slack", "token", SLACK_TOKEN)],
    )
}

#[tokio::test]
async fn a_templated_slack_message_reaches_the_peer_rendered() {
    let peer = Peer::start(Protocol::Slack, SLACK_TOKEN, vec![]).await;
    let gw = templated_slack(&peer);
    let mut a = act(
        "chat",
        json!({"service": "db", "summary": "disk \"full\"", "count": 21}),
    );
    a.metadata.insert("runbook".into(), "rb-7".into());
    let r = executed(&gw, a).await;
    assert_eq!(r.body["ok"], true, "{:?}", r.body);
    let seen = peer.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body["text"], "[ns/t] DB: disk \"full\" (rb-7)");
    assert_eq!(
        seen[0].body["blocks"],
        json!([
            {"type": "section", "text": {"type": "mrkdwn", "text": "*disk \"full\"*"}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": 42}]}
        ])
    );
}

#[tokio::test]
async fn a_render_error_fails_the_delivery_without_calling_the_peer() {
    let peer = Peer::start(Protocol::Slack, SLACK_TOKEN, vec![]).await;
    let gw = templated_slack(&peer);
    // `count` is a map: `* 2` is a runtime error.
    let e = failed(
        &gw,
        act(
            "chat",
            json!({"service": "db", "summary": "s", "count": {"n": 1}}),
        ),
    )
    .await;
    assert_eq!(
        (e.code.as_str(), e.retryable, e.attempts),
        ("TEMPLATE_ERROR", false, 0)
    );
    assert!(
        e.message.contains("spec.templates.jsonFields.blocks"),
        "names the field: {}",
        e.message
    );
    assert!(e.message.contains("invalid operation"), "{}", e.message);
    assert!(peer.seen().is_empty(), "the peer was not called");
}

#[test]
fn a_bad_template_is_refused_by_validation_naming_its_field() {
    let yaml = r#"apiVersion: acteon.dev/v1alpha1
kind: Provider
metadata: {name: chat, namespace: ns}
spec:
  type: log
  templates:
    fields:
      text: "{{ payload.summary "
---
apiVersion: acteon.dev/v1alpha1
kind: Provider
metadata: {name: typo, namespace: ns}
spec:
  type: log
  templates:
    fields:
      subject: "{{ paylaod.summary }}"
"#;
    let docs = parse_text("test.yaml", yaml).expect("YAML parses");
    let compiled = compile(&docs, &CompileOptions::default());
    let mut found: Vec<_> = compiled
        .rejections
        .iter()
        .map(|r| {
            (
                r.object
                    .as_ref()
                    .map(|o| o.name.clone())
                    .unwrap_or_default(),
                r.field.clone().unwrap_or_default(),
                r.reason,
            )
        })
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            (
                "chat".into(),
                "spec.templates.fields.text".into(),
                "InvalidTemplate"
            ),
            (
                "typo".into(),
                "spec.templates.fields.subject".into(),
                "InvalidTemplate"
            ),
        ]
    );
    assert!(compiled.snapshot.providers.is_empty());
}
