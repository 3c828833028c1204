//! The rule pipeline, in process on the memory backend: every operator, every action type,
//! and rules in combination.

use crate::common;

use std::time::Duration;

use acteon_gateway::outcome::ActionOutcome;
use acteon_gateway::pipeline::Gateway;
use chrono::{TimeZone, Utc};
use common::{action, gateway};
use serde_json::{Value, json};

const PROVIDERS: &str = r#"
apiVersion: acteon.dev/v1alpha1
kind: Provider
metadata: {name: p, namespace: ns}
spec: {type: noop}
---
apiVersion: acteon.dev/v1alpha1
kind: Provider
metadata: {name: q, namespace: ns}
spec: {type: noop}
"#;

/// Providers plus one rule with the given condition (YAML flow map) and action.
fn one_rule(condition: &str, rule_action: &str) -> Gateway {
    gateway(&format!(
        "{PROVIDERS}---\napiVersion: acteon.dev/v1alpha1\nkind: Rule\nmetadata: {{name: r, namespace: ns}}\nspec:\n  condition: {condition}\n  action: {rule_action}\n"
    ))
}

fn act(payload: Value) -> acteon_gateway::action::Action {
    action(
        json!({"namespace": "ns", "tenant": "t", "provider": "p", "action_type": "alert", "payload": payload}),
    )
}

async fn dispatch(gw: &Gateway, a: acteon_gateway::action::Action) -> ActionOutcome {
    gw.dispatch(a, false).await.expect("dispatch answers")
}

/// Whether rule `r` suppresses an action with this payload.
async fn matches(condition: &str, payload: Value) -> bool {
    let gw = one_rule(condition, "{type: suppress}");
    match dispatch(&gw, act(payload)).await {
        ActionOutcome::Suppressed { .. } => true,
        ActionOutcome::Executed(_) => false,
        other => panic!("unexpected outcome {other:?}"),
    }
}

fn metric(gw: &Gateway, needle: &str) -> f64 {
    gw.metrics
        .render()
        .lines()
        .find(|l| l.starts_with(needle))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn eq_and_ne() {
    assert!(matches("{field: action.payload.s, eq: x}", json!({"s": "x"})).await);
    assert!(!matches("{field: action.payload.s, eq: x}", json!({"s": "y"})).await);
    assert!(
        matches("{field: action.payload.n, eq: 1}", json!({"n": 1.0})).await,
        "numbers compare by value"
    );
    assert!(
        !matches("{field: action.payload.n, eq: \"1\"}", json!({"n": 1})).await,
        "types must agree"
    );
    assert!(matches("{field: action.payload.b, eq: false}", json!({"b": false})).await);
    assert!(matches("{field: action.tenant, eq: t}", json!({})).await);
    assert!(matches("{field: action.payload.s, ne: x}", json!({"s": "y"})).await);
    assert!(!matches("{field: action.payload.s, ne: x}", json!({"s": "x"})).await);
}

#[tokio::test]
async fn ordering_operators() {
    assert!(matches("{field: action.payload.v, gt: 85}", json!({"v": 86})).await);
    assert!(!matches("{field: action.payload.v, gt: 85}", json!({"v": 85})).await);
    assert!(matches("{field: action.payload.v, gte: 85}", json!({"v": 85})).await);
    assert!(matches("{field: action.payload.v, lt: 1.5}", json!({"v": 1})).await);
    assert!(!matches("{field: action.payload.v, lt: 1}", json!({"v": 1})).await);
    assert!(matches("{field: action.payload.v, lte: 1}", json!({"v": 1})).await);
    assert!(
        matches("{field: action.payload.s, gt: abc}", json!({"s": "abd"})).await,
        "strings compare lexically"
    );
}

#[tokio::test]
async fn string_operators() {
    assert!(
        matches(
            "{field: action.payload.s, contains: ell}",
            json!({"s": "hello"})
        )
        .await
    );
    assert!(
        !matches(
            "{field: action.payload.s, contains: xyz}",
            json!({"s": "hello"})
        )
        .await
    );
    assert!(
        matches(
            "{field: action.payload.l, contains: b}",
            json!({"l": ["a", "b"]})
        )
        .await,
        "contains on a list"
    );
    assert!(
        matches(
            "{field: action.payload.s, startsWith: he}",
            json!({"s": "hello"})
        )
        .await
    );
    assert!(
        !matches(
            "{field: action.payload.s, startsWith: lo}",
            json!({"s": "hello"})
        )
        .await
    );
    assert!(
        matches(
            "{field: action.payload.s, endsWith: lo}",
            json!({"s": "hello"})
        )
        .await
    );
    assert!(
        matches(
            "{field: action.payload.s, matches: '^h.l+o$'}",
            json!({"s": "hello"})
        )
        .await
    );
    assert!(
        !matches(
            "{field: action.payload.s, matches: '^x'}",
            json!({"s": "hello"})
        )
        .await
    );
}

#[tokio::test]
async fn membership_and_existence() {
    assert!(
        matches(
            "{field: action.payload.s, inList: [a, b]}",
            json!({"s": "b"})
        )
        .await
    );
    assert!(
        !matches(
            "{field: action.payload.s, inList: [a, b]}",
            json!({"s": "c"})
        )
        .await
    );
    assert!(matches("{field: action.payload.s, exists: true}", json!({"s": 1})).await);
    assert!(!matches("{field: action.payload.s, exists: true}", json!({})).await);
    assert!(matches("{field: action.payload.s, exists: false}", json!({})).await);
    assert!(
        matches(
            "{field: action.payload.a.b.0, eq: 7}",
            json!({"a": {"b": [7]}})
        )
        .await,
        "nested path with index"
    );
}

#[tokio::test]
async fn boolean_combinators() {
    let c = "{all: [{field: action.payload.a, eq: 1}, {any: [{field: action.payload.b, eq: 1}, {field: action.payload.c, eq: 1}]}, {not: {field: action.payload.d, eq: 1}}]}";
    assert!(matches(c, json!({"a": 1, "b": 0, "c": 1, "d": 0})).await);
    assert!(!matches(c, json!({"a": 1, "b": 0, "c": 0, "d": 0})).await);
    assert!(!matches(c, json!({"a": 1, "b": 1, "c": 0, "d": 1})).await);
    // An absent field reads as null: `eq: 1` on it is false, never an error.
    assert!(
        !matches(
            "{all: [{field: action.payload.a, eq: 1}, {field: action.payload.missing, eq: 1}]}",
            json!({"a": 2})
        )
        .await
    );
    // `any` is true when one part is true; the absent part is simply false.
    assert!(
        matches(
            "{any: [{field: action.payload.missing, eq: 1}, {field: action.payload.a, eq: 1}]}",
            json!({"a": 1})
        )
        .await
    );
}

#[tokio::test]
async fn metadata_and_action_fields() {
    let gw = one_rule(
        "{all: [{field: action.metadata.cluster, eq: c1}, {field: action.dedup_key, startsWith: k}, {field: action.status, eq: firing}]}",
        "{type: suppress}",
    );
    let a = action(
        json!({"namespace": "ns", "tenant": "t", "provider": "p", "action_type": "alert", "payload": {},
        "metadata": {"cluster": "c1"}, "dedup_key": "k1", "status": "firing"}),
    );
    assert!(matches!(
        dispatch(&gw, a).await,
        ActionOutcome::Suppressed { .. }
    ));
}

#[test]
fn time_fields_use_the_rule_timezone() {
    // 2026-03-02 23:30 UTC is 08:30 on Tuesday 3 March in Tokyo.
    let now = Utc
        .with_ymd_and_hms(2026, 3, 2, 23, 30, 0)
        .single()
        .expect("valid");
    let yaml = format!(
        "{PROVIDERS}---\napiVersion: acteon.dev/v1alpha1\nkind: Rule\nmetadata: {{name: tokyo-morning, namespace: ns}}\nspec:\n  timezone: Asia/Tokyo\n  condition: {{all: [{{field: time.hour, eq: 8}}, {{field: time.weekday, eq: Tuesday}}, {{field: time.weekday_num, eq: 2}}, {{field: time.date, eq: '2026-03-03'}}]}}\n  action: {{type: suppress}}\n---\napiVersion: acteon.dev/v1alpha1\nkind: Rule\nmetadata: {{name: utc-evening, namespace: ns}}\nspec:\n  condition: {{all: [{{field: time.hour, eq: 23}}, {{field: time.minute, eq: 30}}, {{field: time.month, eq: 3}}, {{field: time.day, eq: 2}}]}}\n  action: {{type: allow}}\n"
    );
    let gw = gateway(&yaml);
    let rt = gw.config.load();
    let eval = rt.rules.evaluate(&act(json!({})), now);
    let matched: Vec<&str> = eval
        .matched
        .iter()
        .map(|p| rt.rules.rule(*p).name.as_str())
        .collect();
    assert_eq!(
        matched,
        ["tokyo-morning"],
        "Tokyo rule matched first and is terminal"
    );
    let later = Utc
        .with_ymd_and_hms(2026, 3, 2, 12, 0, 0)
        .single()
        .expect("valid");
    assert!(rt.rules.evaluate(&act(json!({})), later).matched.is_empty());
}

#[tokio::test]
async fn cel_conditions() {
    let gw = gateway(&format!(
        "{PROVIDERS}---\napiVersion: acteon.dev/v1alpha1\nkind: Rule\nmetadata: {{name: hot, namespace: ns}}\nspec:\n  cel: 'action.payload.sensor == \"temp\" && action.payload.value > 85 && action.tenant in [\"t\"]'\n  action: {{type: reroute, targetProvider: q}}\n"
    ));
    let out = dispatch(&gw, act(json!({"sensor": "temp", "value": 90}))).await;
    assert!(
        matches!(&out, ActionOutcome::Rerouted { new_provider, .. } if new_provider == "q"),
        "{out:?}"
    );
    assert!(matches!(
        dispatch(&gw, act(json!({"sensor": "temp", "value": 20}))).await,
        ActionOutcome::Executed(_)
    ));
    // A CEL error (no such key) is a non-match, counted, never a failed dispatch.
    assert!(matches!(
        dispatch(&gw, act(json!({"value": 90}))).await,
        ActionOutcome::Executed(_)
    ));
    assert_eq!(
        metric(
            &gw,
            "acteon_rule_errors_total{reason=\"cel\",rule=\"ns/hot\"}"
        ),
        1.0
    );
}

/// One row per operator × kind of value: (condition, payload, matches). Absent values read
/// as null; ordering and string operators on null or across types are false.
const ABSENT_VALUE_TABLE: &[(&str, &str, bool)] = &[
    // The issue's safety rule: block unencrypted PHI unless `encrypted` is true.
    ("{field: action.payload.encrypted, ne: true}", "{}", true),
    (
        "{field: action.payload.encrypted, ne: true}",
        "{\"encrypted\": null}",
        true,
    ),
    (
        "{field: action.payload.encrypted, ne: true}",
        "{\"encrypted\": \"yes\"}",
        true,
    ),
    (
        "{field: action.payload.encrypted, ne: true}",
        "{\"encrypted\": true}",
        false,
    ),
    (
        "{field: action.payload.meta.encrypted, ne: true}",
        "{}",
        true,
    ),
    (
        "{field: action.payload.meta.encrypted, ne: true}",
        "{\"meta\": 5}",
        true,
    ),
    // eq / ne / inList compare with null (a `null` literal is written in an inList: as
    // in Acteon's files, `eq: null` reads as no operator at all).
    ("{field: action.payload.x, eq: 1}", "{}", false),
    ("{field: action.payload.x, ne: 1}", "{}", true),
    ("{field: action.payload.x, ne: 1}", "{\"x\": null}", true),
    (
        "{field: action.payload.a.b.c, inList: [null]}",
        "{\"a\": \"text\"}",
        true,
    ),
    ("{field: action.payload.x, eq: \"1\"}", "{\"x\": 1}", false),
    ("{field: action.payload.x, inList: [a, b]}", "{}", false),
    ("{field: action.payload.x, inList: [a, null]}", "{}", true),
    (
        "{field: action.payload.x, inList: [a, null]}",
        "{\"x\": null}",
        true,
    ),
    (
        "{field: action.payload.x, inList: [1, 2]}",
        "{\"x\": \"1\"}",
        false,
    ),
    ("{field: action.metadata.absent, inList: [a]}", "{}", false),
    // Ordering: false on absent, null, nested-absent and across types.
    ("{field: action.payload.v, gt: 5}", "{}", false),
    ("{field: action.payload.v, gte: 5}", "{\"v\": null}", false),
    ("{field: action.payload.v, lt: 5}", "{\"v\": \"3\"}", false),
    ("{field: action.payload.v, lte: 5}", "{\"v\": [1]}", false),
    ("{field: action.payload.v, gt: abc}", "{\"v\": 7}", false),
    ("{field: action.payload.a.b, lt: 5}", "{\"a\": {}}", false),
    ("{field: action.payload.a.b, lt: 5}", "{\"a\": [1]}", false),
    ("{field: action.payload.v, lt: 5}", "{\"v\": 3}", true),
    // String operators: false on absent, null and other types.
    ("{field: action.payload.s, contains: a}", "{}", false),
    (
        "{field: action.payload.s, contains: a}",
        "{\"s\": null}",
        false,
    ),
    (
        "{field: action.payload.s, contains: a}",
        "{\"s\": 10}",
        false,
    ),
    (
        "{field: action.payload.s, contains: 1}",
        "{\"s\": {\"k\": 1}}",
        false,
    ),
    ("{field: action.payload.s, startsWith: a}", "{}", false),
    (
        "{field: action.payload.s, startsWith: a}",
        "{\"s\": [\"a\"]}",
        false,
    ),
    (
        "{field: action.payload.s, endsWith: a}",
        "{\"s\": null}",
        false,
    ),
    (
        "{field: action.payload.s, endsWith: \"1\"}",
        "{\"s\": 1}",
        false,
    ),
    ("{field: action.payload.s, matches: '.*'}", "{}", false),
    (
        "{field: action.payload.s, matches: '.*'}",
        "{\"s\": true}",
        false,
    ),
    (
        "{field: action.payload.a.s, matches: '.*'}",
        "{\"a\": null}",
        false,
    ),
    // exists tests presence (null counts as absent).
    (
        "{field: action.payload.x, exists: true}",
        "{\"x\": null}",
        false,
    ),
    (
        "{field: action.payload.x, exists: false}",
        "{\"x\": null}",
        true,
    ),
    (
        "{field: action.payload.a.b, exists: false}",
        "{\"a\": 3}",
        true,
    ),
    (
        "{field: action.payload.x, exists: true}",
        "{\"x\": 0}",
        true,
    ),
    // `not` of a comparison on an absent field is `not false`: true (documented).
    ("{not: {field: action.payload.v, gt: 5}}", "{}", true),
    (
        "{not: {field: action.payload.s, contains: a}}",
        "{\"s\": 1}",
        true,
    ),
    ("{not: {field: action.payload.x, eq: 1}}", "{}", true),
    // Combinators see definite answers.
    (
        "{all: [{field: action.payload.x, exists: true}, {field: action.payload.x, gt: 1}]}",
        "{}",
        false,
    ),
    (
        "{any: [{field: action.payload.x, gt: 1}, {field: action.tenant, eq: t}]}",
        "{}",
        true,
    ),
];

#[tokio::test]
async fn absent_values_never_fail_open() {
    for (condition, payload, expected) in ABSENT_VALUE_TABLE {
        let gw = one_rule(condition, "{type: suppress}");
        let payload: Value = serde_json::from_str(payload).expect("test payload");
        let matched = match dispatch(&gw, act(payload.clone())).await {
            ActionOutcome::Suppressed { .. } => true,
            ActionOutcome::Executed(_) => false,
            other => panic!("{condition} on {payload}: unexpected {other:?}"),
        };
        assert_eq!(matched, *expected, "{condition} on {payload}");
        let errors = gw
            .metrics
            .render()
            .lines()
            .filter(|l| l.starts_with("acteon_rule_errors_total"))
            .count();
        assert_eq!(errors, 0, "{condition} on {payload}: no rule error counted");
    }
}

#[tokio::test]
async fn remaining_rule_errors_are_counted_and_shown_by_dry_runs() {
    // A `stateSeen` key from an absent field cannot be formed: the rule errs, does not
    // match, is counted.
    let gw = one_rule(
        "{all: [{field: action.tenant, eq: t}, {stateSeen: \"{{action.payload.absent}}\"}]}",
        "{type: suppress}",
    );
    assert!(matches!(
        dispatch(&gw, act(json!({}))).await,
        ActionOutcome::Executed(_)
    ));
    assert_eq!(
        metric(
            &gw,
            "acteon_rule_errors_total{reason=\"missing_key\",rule=\"ns/r\"}"
        ),
        1.0
    );
    match gw.dispatch(act(json!({})), true).await.expect("answers") {
        ActionOutcome::DryRun {
            verdict, errors, ..
        } => {
            assert_eq!(verdict, "allow");
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert_eq!(errors[0].rule, "ns/r");
            assert!(errors[0].error.contains("absent field"), "{errors:?}");
        }
        other => panic!("expected DryRun, got {other:?}"),
    }
    // The extra field is left out of the wire form when there is no error.
    let ok = one_rule("{field: action.tenant, eq: t}", "{type: allow}");
    let out = ok.dispatch(act(json!({})), true).await.expect("answers");
    let wire = serde_json::to_value(&out).expect("serializes");
    assert_eq!(
        wire,
        json!({"DryRun": {"verdict": "allow", "matched_rule": "r", "would_be_provider": "p"}})
    );
}

#[tokio::test]
async fn terminal_actions() {
    let allow = one_rule("{field: action.tenant, eq: t}", "{type: allow}");
    assert!(matches!(
        dispatch(&allow, act(json!({}))).await,
        ActionOutcome::Executed(_)
    ));
    let deny = one_rule("{field: action.tenant, eq: t}", "{type: deny}");
    assert_eq!(
        dispatch(&deny, act(json!({}))).await,
        ActionOutcome::Suppressed { rule: "r".into() }
    );
    let suppress = one_rule("{field: action.tenant, eq: t}", "{type: suppress}");
    assert_eq!(
        dispatch(&suppress, act(json!({}))).await,
        ActionOutcome::Suppressed { rule: "r".into() }
    );
    let reroute = one_rule(
        "{field: action.tenant, eq: t}",
        "{type: reroute, targetProvider: q}",
    );
    match dispatch(&reroute, act(json!({}))).await {
        ActionOutcome::Rerouted {
            original_provider,
            new_provider,
            ..
        } => {
            assert_eq!(
                (original_provider.as_str(), new_provider.as_str()),
                ("p", "q")
            );
        }
        other => panic!("expected Rerouted, got {other:?}"),
    }
}

#[tokio::test]
async fn later_feature_actions_answer_not_implemented() {
    let extra = "---\napiVersion: acteon.dev/v1alpha1\nkind: Chain\nmetadata: {name: c, namespace: ns}\nspec: {steps: [{name: s, provider: p}]}\n---\napiVersion: acteon.dev/v1alpha1\nkind: StateMachine\nmetadata: {name: m, namespace: ns}\nspec: {states: [open, closed], initialState: open}\n";
    for a in ["{type: requestApproval, notifyProvider: q}"] {
        let gw = gateway(&format!(
            "{PROVIDERS}{extra}---\napiVersion: acteon.dev/v1alpha1\nkind: Rule\nmetadata: {{name: r, namespace: ns}}\nspec:\n  condition: {{field: action.tenant, eq: t}}\n  action: {a}\n"
        ));
        match dispatch(&gw, act(json!({}))).await {
            ActionOutcome::Failed(e) => {
                assert_eq!(e.code, "NOT_IMPLEMENTED", "{a}");
                assert!(!e.retryable);
            }
            other => panic!("{a}: expected NOT_IMPLEMENTED, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn deduplicate_by_dedup_key_scoped_by_tenant() {
    let gw = one_rule(
        "{field: action.action_type, eq: alert}",
        "{type: deduplicate, ttlSeconds: 60}",
    );
    let with = |tenant: &str, key: &str| {
        action(
            json!({"namespace": "ns", "tenant": tenant, "provider": "p", "action_type": "alert", "payload": {}, "dedup_key": key}),
        )
    };
    assert!(matches!(
        dispatch(&gw, with("t", "k")).await,
        ActionOutcome::Executed(_)
    ));
    assert_eq!(
        dispatch(&gw, with("t", "k")).await,
        ActionOutcome::Deduplicated
    );
    assert!(
        matches!(
            dispatch(&gw, with("t", "other")).await,
            ActionOutcome::Executed(_)
        ),
        "another key"
    );
    assert!(
        matches!(
            dispatch(&gw, with("t2", "k")).await,
            ActionOutcome::Executed(_)
        ),
        "another tenant"
    );
}

#[tokio::test]
async fn deduplicate_by_template() {
    let gw = one_rule(
        "{field: action.action_type, eq: alert}",
        "{type: deduplicate, key: '{{action.payload.service}}:{{action.payload.alert_key}}'}",
    );
    assert!(matches!(
        dispatch(&gw, act(json!({"service": "db", "alert_key": "cpu"}))).await,
        ActionOutcome::Executed(_)
    ));
    assert_eq!(
        dispatch(
            &gw,
            act(json!({"service": "db", "alert_key": "cpu", "extra": 1}))
        )
        .await,
        ActionOutcome::Deduplicated
    );
    assert!(matches!(
        dispatch(&gw, act(json!({"service": "db", "alert_key": "mem"}))).await,
        ActionOutcome::Executed(_)
    ));
}

#[tokio::test]
async fn throttle_reports_time_until_a_slot_frees() {
    let gw = one_rule(
        "{field: action.action_type, eq: alert}",
        "{type: throttle, maxCount: 2, windowSeconds: 30}",
    );
    assert!(matches!(
        dispatch(&gw, act(json!({}))).await,
        ActionOutcome::Executed(_)
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(matches!(
        dispatch(&gw, act(json!({}))).await,
        ActionOutcome::Executed(_)
    ));
    let ActionOutcome::Throttled { retry_after } = dispatch(&gw, act(json!({}))).await else {
        panic!("third should be throttled")
    };
    // The first pass leaves the window 30 s after it was counted, ~0.3 s ago.
    assert!(
        retry_after <= Duration::from_millis(29_750) && retry_after > Duration::from_secs(29),
        "{retry_after:?}"
    );
    // Rejections do not consume budget: still throttled with a shrinking retry_after.
    let ActionOutcome::Throttled { retry_after: again } = dispatch(&gw, act(json!({}))).await
    else {
        panic!("still throttled")
    };
    assert!(again <= retry_after);
}

#[tokio::test]
async fn throttle_keyed_by_template_splits_the_budget() {
    let gw = one_rule(
        "{field: action.action_type, eq: alert}",
        "{type: throttle, maxCount: 1, windowSeconds: 60, key: '{{action.payload.service}}'}",
    );
    assert!(matches!(
        dispatch(&gw, act(json!({"service": "a"}))).await,
        ActionOutcome::Executed(_)
    ));
    assert!(matches!(
        dispatch(&gw, act(json!({"service": "b"}))).await,
        ActionOutcome::Executed(_)
    ));
    assert!(matches!(
        dispatch(&gw, act(json!({"service": "a"}))).await,
        ActionOutcome::Throttled { .. }
    ));
}

#[test]
fn modify_is_a_merge_patch_and_evaluation_continues() {
    let gw = gateway(&format!(
        "{PROVIDERS}---\napiVersion: acteon.dev/v1alpha1\nkind: Rule\nmetadata: {{name: enrich, namespace: ns}}\nspec:\n  priority: 1\n  condition: {{field: action.tenant, eq: t}}\n  action: {{type: modify, changes: {{zone: north, drop: null, nested: {{b: 2}}}}}}\n---\napiVersion: acteon.dev/v1alpha1\nkind: Rule\nmetadata: {{name: after, namespace: ns}}\nspec:\n  priority: 2\n  condition: {{field: action.payload.zone, eq: north}}\n  action: {{type: suppress}}\n"
    ));
    let rt = gw.config.load();
    let eval = rt.rules.evaluate(
        &act(json!({"drop": 1, "keep": 2, "nested": {"a": 1}})),
        Utc::now(),
    );
    assert_eq!(
        eval.payload,
        Some(json!({"keep": 2, "zone": "north", "nested": {"a": 1, "b": 2}}))
    );
    assert_eq!(
        eval.matched.len(),
        2,
        "the rule after modify saw the patched payload"
    );
}

#[tokio::test]
async fn modify_then_dedup_then_reroute() {
    let gw = gateway(&format!(
        "{PROVIDERS}---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {{name: a-modify, namespace: ns}}
spec:
  priority: 1
  condition: {{field: action.action_type, eq: alert}}
  action: {{type: modify, changes: {{fingerprint_key: fixed}}}}
---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {{name: b-dedup, namespace: ns}}
spec:
  priority: 2
  condition: {{field: action.payload.fingerprint_key, exists: true}}
  action: {{type: deduplicate, key: '{{{{action.payload.fingerprint_key}}}}'}}
---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {{name: c-reroute, namespace: ns}}
spec:
  priority: 3
  condition: {{field: action.action_type, eq: alert}}
  action: {{type: reroute, targetProvider: q}}
"
    ));
    // Different payloads, but modify gives both the same dedup key.
    assert!(matches!(
        dispatch(&gw, act(json!({"n": 1}))).await,
        ActionOutcome::Rerouted { .. }
    ));
    assert_eq!(
        dispatch(&gw, act(json!({"n": 2}))).await,
        ActionOutcome::Deduplicated
    );
}

#[tokio::test]
async fn throttle_then_allow() {
    let gw = gateway(&format!(
        "{PROVIDERS}---\napiVersion: acteon.dev/v1alpha1\nkind: Rule\nmetadata: {{name: limit, namespace: ns}}\nspec:\n  priority: 1\n  condition: {{field: action.tenant, eq: t}}\n  action: {{type: throttle, maxCount: 1, windowSeconds: 60}}\n---\napiVersion: acteon.dev/v1alpha1\nkind: Rule\nmetadata: {{name: ok, namespace: ns}}\nspec:\n  priority: 2\n  condition: {{field: action.tenant, eq: t}}\n  action: {{type: allow}}\n"
    ));
    assert!(matches!(
        dispatch(&gw, act(json!({}))).await,
        ActionOutcome::Executed(_)
    ));
    assert!(matches!(
        dispatch(&gw, act(json!({}))).await,
        ActionOutcome::Throttled { .. }
    ));
}

#[tokio::test]
async fn equal_priorities_break_ties_by_name() {
    let rules = |first: &str, second: &str| {
        format!(
            "{PROVIDERS}---\napiVersion: acteon.dev/v1alpha1\nkind: Rule\nmetadata: {{name: {first}, namespace: ns}}\nspec:\n  priority: 5\n  condition: {{field: action.tenant, eq: t}}\n  action: {{type: suppress}}\n---\napiVersion: acteon.dev/v1alpha1\nkind: Rule\nmetadata: {{name: {second}, namespace: ns}}\nspec:\n  priority: 5\n  condition: {{field: action.tenant, eq: t}}\n  action: {{type: reroute, targetProvider: q}}\n"
        )
    };
    // Same content, listed in either order: the name decides.
    assert_eq!(
        dispatch(&gateway(&rules("a-suppress", "b-reroute")), act(json!({}))).await,
        ActionOutcome::Suppressed {
            rule: "a-suppress".into()
        }
    );
    assert!(matches!(
        dispatch(&gateway(&rules("b-suppress", "a-reroute")), act(json!({}))).await,
        ActionOutcome::Rerouted { .. }
    ));
}

#[tokio::test]
async fn disabled_rules_never_match() {
    let gw = gateway(&format!(
        "{PROVIDERS}---\napiVersion: acteon.dev/v1alpha1\nkind: Rule\nmetadata: {{name: off, namespace: ns}}\nspec:\n  enabled: false\n  condition: {{field: action.tenant, eq: t}}\n  action: {{type: suppress}}\n"
    ));
    assert!(matches!(
        dispatch(&gw, act(json!({}))).await,
        ActionOutcome::Executed(_)
    ));
}

#[tokio::test]
async fn namespace_scoping() {
    let gw = gateway(&format!(
        "{PROVIDERS}---\napiVersion: acteon.dev/v1alpha1\nkind: Provider\nmetadata: {{name: p, namespace: acteon-system}}\nspec: {{type: noop}}\n---\napiVersion: acteon.dev/v1alpha1\nkind: Rule\nmetadata: {{name: local, namespace: ns}}\nspec:\n  condition: {{field: action.payload.kind, eq: local}}\n  action: {{type: suppress}}\n---\napiVersion: acteon.dev/v1alpha1\nkind: Rule\nmetadata: {{name: everywhere, namespace: acteon-system}}\nspec:\n  condition: {{field: action.payload.kind, eq: shared}}\n  action: {{type: suppress}}\n"
    ));
    let in_ns = |ns: &str, kind: &str| {
        action(
            json!({"namespace": ns, "tenant": "t", "provider": "p", "action_type": "x", "payload": {"kind": kind}}),
        )
    };
    assert!(matches!(
        dispatch(&gw, in_ns("ns", "local")).await,
        ActionOutcome::Suppressed { .. }
    ));
    assert!(
        matches!(
            dispatch(&gw, in_ns("other", "local")).await,
            ActionOutcome::Executed(_)
        ),
        "a namespaced rule stays in its namespace"
    );
    assert!(
        matches!(
            dispatch(&gw, in_ns("other", "shared")).await,
            ActionOutcome::Suppressed { .. }
        ),
        "shared rules apply everywhere"
    );
    // Provider `q` lives in `ns` only.
    let foreign = action(
        json!({"namespace": "other", "tenant": "t", "provider": "q", "action_type": "x", "payload": {}}),
    );
    match gw.dispatch(foreign, false).await {
        Ok(ActionOutcome::Failed(e)) => assert_eq!(
            e.code, "PROVIDER_NOT_FOUND",
            "another namespace's provider is unknown"
        ),
        other => panic!("expected PROVIDER_NOT_FOUND, got {other:?}"),
    }
}

#[tokio::test]
async fn quotas_block_warn_and_degrade() {
    let quota = |overage: &str| {
        gateway(&format!(
            "{PROVIDERS}---\napiVersion: acteon.dev/v1alpha1\nkind: Quota\nmetadata: {{name: q1, namespace: ns}}\nspec: {{tenant: t, limit: 2, window: 1h, overage: {overage}, fallbackProvider: q}}\n"
        ))
    };
    let block = quota("block");
    assert!(matches!(
        dispatch(&block, act(json!({}))).await,
        ActionOutcome::Executed(_)
    ));
    assert!(matches!(
        dispatch(&block, act(json!({}))).await,
        ActionOutcome::Executed(_)
    ));
    match dispatch(&block, act(json!({}))).await {
        ActionOutcome::QuotaExceeded {
            quota, limit, used, ..
        } => assert_eq!((quota.as_str(), limit, used), ("ns/q1", 2, 2)),
        other => panic!("expected QuotaExceeded, got {other:?}"),
    }
    let warn = quota("warn");
    for _ in 0..4 {
        assert!(matches!(
            dispatch(&warn, act(json!({}))).await,
            ActionOutcome::Executed(_)
        ));
    }
    let degrade = quota("degrade");
    dispatch(&degrade, act(json!({}))).await;
    dispatch(&degrade, act(json!({}))).await;
    assert!(
        matches!(dispatch(&degrade, act(json!({}))).await, ActionOutcome::Rerouted { new_provider, .. } if new_provider == "q")
    );
}

#[tokio::test]
async fn dry_run_touches_no_state() {
    let gw = one_rule(
        "{field: action.action_type, eq: alert}",
        "{type: deduplicate}",
    );
    let keyed = || {
        action(
            json!({"namespace": "ns", "tenant": "t", "provider": "p", "action_type": "alert", "payload": {}, "dedup_key": "k"}),
        )
    };
    for _ in 0..2 {
        match gw.dispatch(keyed(), true).await.expect("answers") {
            ActionOutcome::DryRun {
                verdict,
                would_be_provider,
                matched_rule,
                ..
            } => assert_eq!(
                (
                    verdict.as_str(),
                    matched_rule.as_deref(),
                    would_be_provider.as_str()
                ),
                ("deduplicate", Some("r"), "p"),
                "Acteon's verdict name; the passing dedup rule is named"
            ),
            other => panic!("expected DryRun, got {other:?}"),
        }
    }
    assert!(
        matches!(dispatch(&gw, keyed()).await, ActionOutcome::Executed(_)),
        "dry runs left no dedup mark"
    );
    let sup = one_rule("{field: action.tenant, eq: t}", "{type: suppress}");
    assert_eq!(
        sup.dispatch(act(json!({})), true).await.expect("answers"),
        ActionOutcome::DryRun {
            verdict: "suppress".into(),
            matched_rule: Some("r".into()),
            would_be_provider: "p".into(),
            errors: vec![],
        }
    );
}

#[tokio::test]
async fn dry_run_verdicts_use_acteon_names() {
    let extra = "---\napiVersion: acteon.dev/v1alpha1\nkind: Chain\nmetadata: {name: c, namespace: ns}\nspec: {steps: [{name: s, provider: p}]}\n---\napiVersion: acteon.dev/v1alpha1\nkind: StateMachine\nmetadata: {name: m, namespace: ns}\nspec: {states: [open, closed], initialState: open}\n";
    for (rule_action, verdict, provider) in [
        ("{type: allow}", "allow", "p"),
        ("{type: deny}", "deny", "p"),
        ("{type: suppress}", "suppress", "p"),
        ("{type: reroute, targetProvider: q}", "reroute", "q"),
        ("{type: deduplicate}", "deduplicate", "p"),
        (
            "{type: throttle, maxCount: 1, windowSeconds: 60}",
            "throttle",
            "p",
        ),
        ("{type: group, groupBy: [payload.floor]}", "group", "p"),
        ("{type: schedule, delaySeconds: 5}", "schedule", "p"),
        ("{type: chain, chain: c}", "chain", "p"),
        (
            "{type: stateMachine, stateMachine: m}",
            "state_machine",
            "p",
        ),
        (
            "{type: requestApproval, notifyProvider: q}",
            "request_approval",
            "p",
        ),
    ] {
        let gw = gateway(&format!(
            "{PROVIDERS}{extra}---\napiVersion: acteon.dev/v1alpha1\nkind: Rule\nmetadata: {{name: r, namespace: ns}}\nspec:\n  condition: {{field: action.tenant, eq: t}}\n  action: {rule_action}\n"
        ));
        assert_eq!(
            gw.dispatch(act(json!({})), true).await.expect("answers"),
            ActionOutcome::DryRun {
                verdict: verdict.into(),
                matched_rule: Some("r".into()),
                would_be_provider: provider.into(),
                errors: vec![],
            },
            "{rule_action}"
        );
    }
    // No rule at all: allow, nothing named.
    let none = one_rule("{field: action.tenant, eq: other}", "{type: deny}");
    assert_eq!(
        none.dispatch(act(json!({})), true).await.expect("answers"),
        ActionOutcome::DryRun {
            verdict: "allow".into(),
            matched_rule: None,
            would_be_provider: "p".into(),
            errors: vec![],
        }
    );
}

#[tokio::test]
async fn dedup_without_a_key_is_keyed_by_the_action_id() {
    let gw = one_rule(
        "{field: action.action_type, eq: alert}",
        "{type: deduplicate, ttlSeconds: 60}",
    );
    let with_id = |id: &str| {
        action(
            json!({"id": id, "namespace": "ns", "tenant": "t", "provider": "p", "action_type": "alert", "payload": {}}),
        )
    };
    assert!(matches!(
        dispatch(&gw, with_id("a-1")).await,
        ActionOutcome::Executed(_)
    ));
    assert_eq!(
        dispatch(&gw, with_id("a-1")).await,
        ActionOutcome::Deduplicated,
        "a retry of the same action is deduplicated, as in Acteon"
    );
    assert!(matches!(
        dispatch(&gw, with_id("a-2")).await,
        ActionOutcome::Executed(_)
    ));
    assert_eq!(
        metric(&gw, "acteon_rule_errors_total{reason=\"missing_key\""),
        0.0,
        "Acteon's documented fallback is not an error"
    );
}

#[tokio::test]
async fn dedup_template_with_an_absent_field_is_never_lost() {
    let gw = one_rule(
        "{field: action.action_type, eq: alert}",
        "{type: deduplicate, key: '{{action.payload.service}}'}",
    );
    let with = |id: &str, payload: Value| {
        action(
            json!({"id": id, "namespace": "ns", "tenant": "t", "provider": "p", "action_type": "alert", "payload": payload}),
        )
    };
    // Two different actions without the field are both delivered (not merged into one key)...
    for id in ["x-1", "x-2"] {
        assert!(
            matches!(
                dispatch(&gw, with(id, json!({}))).await,
                ActionOutcome::Executed(_)
            ),
            "{id}"
        );
    }
    // ...a retry of one of them is still deduplicated (keyed by its id)...
    assert_eq!(
        dispatch(&gw, with("x-1", json!({}))).await,
        ActionOutcome::Deduplicated
    );
    // ...and each is counted as a rule error and shown by a dry run.
    assert_eq!(
        metric(
            &gw,
            "acteon_rule_errors_total{reason=\"missing_key\",rule=\"ns/r\"}"
        ),
        3.0
    );
    match gw
        .dispatch(with("x-3", json!({})), true)
        .await
        .expect("answers")
    {
        ActionOutcome::DryRun { errors, .. } => {
            assert_eq!(errors.len(), 1);
            assert!(errors[0].error.contains("absent field"), "{errors:?}");
        }
        other => panic!("expected DryRun, got {other:?}"),
    }
    // A present null is absent too.
    assert!(matches!(
        dispatch(&gw, with("x-4", json!({"service": null}))).await,
        ActionOutcome::Executed(_)
    ));
}

#[tokio::test]
async fn throttle_template_with_an_absent_field_is_never_unthrottled() {
    let gw = one_rule(
        "{field: action.action_type, eq: alert}",
        "{type: throttle, maxCount: 1, windowSeconds: 60, key: '{{action.payload.service}}'}",
    );
    assert!(matches!(
        dispatch(&gw, act(json!({}))).await,
        ActionOutcome::Executed(_)
    ));
    assert!(
        matches!(
            dispatch(&gw, act(json!({"other": 1}))).await,
            ActionOutcome::Throttled { .. }
        ),
        "actions without the key share the rule's unkeyed window"
    );
    assert!(
        matches!(
            dispatch(&gw, act(json!({"service": "db"}))).await,
            ActionOutcome::Executed(_)
        ),
        "a keyed window is separate from the unkeyed one"
    );
    assert_eq!(
        metric(
            &gw,
            "acteon_rule_errors_total{reason=\"missing_key\",rule=\"ns/r\"}"
        ),
        2.0
    );
}

#[tokio::test]
async fn long_dedup_keys_are_bounded_and_stay_distinct() {
    let gw = one_rule(
        "{field: action.action_type, eq: alert}",
        "{type: deduplicate, ttlSeconds: 60}",
    );
    let keyed = |key: &str| {
        action(
            json!({"namespace": "ns", "tenant": "t", "provider": "p", "action_type": "alert", "payload": {}, "dedup_key": key}),
        )
    };
    let long = "k".repeat(100_000);
    let long_b = format!("{}x", &long[1..]);
    assert!(matches!(
        dispatch(&gw, keyed(&long)).await,
        ActionOutcome::Executed(_)
    ));
    assert_eq!(
        dispatch(&gw, keyed(&long)).await,
        ActionOutcome::Deduplicated
    );
    assert!(
        matches!(
            dispatch(&gw, keyed(&long_b)).await,
            ActionOutcome::Executed(_)
        ),
        "keys differing in their last byte stay distinct"
    );
    let stored = acteon_gateway::rules::scoped_key("d", "ns", "t", &long);
    assert!(
        stored.len() < 100,
        "backend key is bounded: {}",
        stored.len()
    );
    assert!(gw.state.dedup_exists(&stored).await.expect("memory"));
}

/// The index only narrows the search: on many rules and actions it gives exactly what a
/// scan of every rule gives.
#[test]
fn index_agrees_with_a_full_scan() {
    let mut yaml = String::from(PROVIDERS);
    let tenants = ["t0", "t1", "t2", "t3"];
    let types = ["a", "b", "c"];
    for i in 0..300 {
        let t = tenants[i % 4];
        let ty = types[i % 3];
        let cond = match i % 5 {
            0 => format!(
                "{{all: [{{field: action.tenant, eq: {t}}}, {{field: action.action_type, eq: {ty}}}, {{field: action.payload.v, gt: {}}}]}}",
                i % 7
            ),
            1 => format!("{{field: action.tenant, inList: [{t}, t9]}}"),
            2 => format!(
                "{{all: [{{field: action.provider, eq: p}}, {{field: action.payload.v, lt: {}}}]}}",
                i % 5
            ),
            3 => format!(
                "{{any: [{{field: action.tenant, eq: {t}}}, {{field: action.payload.v, eq: {}}}]}}",
                i % 9
            ),
            _ => format!("{{field: action.action_type, eq: {ty}}}"),
        };
        let act_yaml = match i % 4 {
            0 => "{type: suppress}",
            1 => "{type: modify, changes: {v: 3}}",
            2 => "{type: throttle, maxCount: 5, windowSeconds: 10}",
            _ => "{type: reroute, targetProvider: q}",
        };
        yaml.push_str(&format!(
            "---\napiVersion: acteon.dev/v1alpha1\nkind: Rule\nmetadata: {{name: r{i}, namespace: ns}}\nspec:\n  priority: {}\n  condition: {cond}\n  action: {act_yaml}\n",
            i % 17
        ));
    }
    let gw = gateway(&yaml);
    let rt = gw.config.load();
    let now = Utc::now();
    for t in tenants.iter().chain(["t9", "zz"].iter()) {
        for ty in types {
            for v in 0..8 {
                let a = action(
                    json!({"namespace": "ns", "tenant": t, "provider": "p", "action_type": ty, "payload": {"v": v}}),
                );
                let fast = rt.rules.evaluate(&a, now);
                let slow = rt.rules.evaluate_without_index(&a, now);
                assert_eq!(fast.matched, slow.matched, "tenant {t} type {ty} v {v}");
                assert_eq!(fast.decision, slow.decision);
                assert_eq!(fast.payload, slow.payload);
                assert_eq!(fast.gates.len(), slow.gates.len());
            }
        }
    }
}

/// A backend whose first `apply_gates` applies the gates but loses the answer, as a
/// timeout after the server committed would.
struct LostReply {
    inner: acteon_gateway::state::MemoryStore,
    lost: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl acteon_gateway::state::StateStore for LostReply {
    fn kind(&self) -> &'static str {
        "lost-reply"
    }
    async fn ping(&self) -> Result<(), StateError> {
        Ok(())
    }
    async fn apply_gates(&self, gates: &[Gate]) -> Result<GateResult, StateError> {
        let r = self.inner.apply_gates(gates).await;
        if !self.lost.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Err(StateError::Timeout(Duration::from_secs(2)));
        }
        r
    }
    async fn release_dedup(&self, key: &str, token: &str) -> Result<bool, StateError> {
        self.inner.release_dedup(key, token).await
    }
    async fn dedup_exists(&self, key: &str) -> Result<bool, StateError> {
        self.inner.dedup_exists(key).await
    }
    async fn window_count(&self, key: &str, window: Duration) -> Result<u64, StateError> {
        self.inner.window_count(key, window).await
    }
    async fn quota_usage(&self, key: &str, window: Duration) -> Result<u64, StateError> {
        self.inner.quota_usage(key, window).await
    }
    async fn get(&self, key: &str) -> Result<Option<acteon_gateway::state::Versioned>, StateError> {
        self.inner.get(key).await
    }
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<u64>,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<Option<u64>, StateError> {
        self.inner.compare_and_swap(key, expected, value, ttl).await
    }
    async fn delete(&self, key: &str) -> Result<bool, StateError> {
        self.inner.delete(key).await
    }
    async fn try_lock(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool, StateError> {
        self.inner.try_lock(key, owner, ttl).await
    }
    async fn unlock(&self, key: &str, owner: &str) -> Result<bool, StateError> {
        self.inner.unlock(key, owner).await
    }
    async fn schedule_timer(&self, id: &str, due: u64, payload: Vec<u8>) -> Result<(), StateError> {
        self.inner.schedule_timer(id, due, payload).await
    }
    async fn claim_due_timers(
        &self,
        now: u64,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<acteon_gateway::state::ClaimedTimer>, StateError> {
        self.inner.claim_due_timers(now, max, lease).await
    }
    async fn complete_timer(&self, id: &str, claim: &str) -> Result<bool, StateError> {
        self.inner.complete_timer(id, claim).await
    }
}

use acteon_gateway::state::{Gate, GateResult, StateError};

#[tokio::test]
async fn a_lost_gate_answer_does_not_leave_a_dedup_mark_behind() {
    let mut gw = one_rule(
        "{field: action.action_type, eq: alert}",
        "{type: deduplicate, ttlSeconds: 60}",
    );
    gw.state = std::sync::Arc::new(LostReply {
        inner: acteon_gateway::state::MemoryStore::new(),
        lost: Default::default(),
    });
    let keyed = || {
        action(
            json!({"namespace": "ns", "tenant": "t", "provider": "p", "action_type": "alert", "payload": {}, "dedup_key": "k"}),
        )
    };
    assert!(
        gw.dispatch(keyed(), false).await.is_err(),
        "the first answer is lost: 503"
    );
    // The mark the backend did write is released in the background.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while gw
        .state
        .dedup_exists(&acteon_gateway::rules::scoped_key("d", "ns", "t", "k"))
        .await
        .expect("memory")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the dedup mark was not released"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        matches!(dispatch(&gw, keyed()).await, ActionOutcome::Executed(_)),
        "the client's retry is delivered"
    );
}
