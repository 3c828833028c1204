//! Condition leaves that read shared state: `inhibitedBy` (and `has_active_event`),
//! `event_in_state`, `stateSeen`, `stateCounter`, and the same calls in CEL rules. Each rejection names its reason and field; the other
//! objects still compile.

use acteon_api::compile::{CompileError, CompileOptions, Compiled, Kind, compile, parse_text};

fn compile_yaml(text: &str) -> Compiled {
    let docs =
        parse_text("test.yaml", text).unwrap_or_else(|e| panic!("test YAML does not parse: {e:?}"));
    compile(&docs, &CompileOptions::default())
}

fn manifest(kind: &str, ns: &str, name: &str, spec: &str) -> String {
    let spec: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    format!(
        "apiVersion: acteon.dev/v1alpha1\nkind: {kind}\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}---\n"
    )
}

/// A suppress Rule with `condition`.
fn rule(ns: &str, name: &str, condition: &str) -> String {
    manifest(
        "Rule",
        ns,
        name,
        &format!("condition: {condition}\naction: {{type: suppress}}"),
    )
}

fn rejection_of<'a>(c: &'a Compiled, ns: &str, name: &str) -> &'a CompileError {
    c.rejections
        .iter()
        .find(|e| {
            e.object.as_ref().is_some_and(|o| {
                o.kind == Kind::Rule && o.namespace.as_deref() == Some(ns) && o.name == name
            })
        })
        .unwrap_or_else(|| panic!("no rejection of rule {ns}/{name} in {:#?}", c.rejections))
}

fn kept(c: &Compiled) -> Vec<String> {
    let mut names: Vec<String> = c.snapshot.rules.iter().map(|e| e.name.clone()).collect();
    names.sort();
    names
}

const CLUSTER_EVENTS: &str = "states: [pending, firing, resolved]
initialState: pending
terminalStates: [resolved]
transitions:
  - {from: pending, to: firing}
  - {from: firing, to: resolved}";

#[test]
fn inhibitions_name_an_accepted_machine_in_scope_and_action_fields() {
    let text = [
        manifest("StateMachine", "a", "cluster-events", CLUSTER_EVENTS),
        manifest("StateMachine", "acteon-system", "shared-events", CLUSTER_EVENTS),
        manifest("StateMachine", "b", "b-only", CLUSTER_EVENTS),
        manifest(
            "StateMachine",
            "a",
            "broken",
            "states: [open]\ninitialState: open\ntransitions: [{from: open, to: nowhere}]",
        ),
        // Accepted.
        rule(
            "a",
            "own",
            "{inhibitedBy: {stateMachine: cluster-events, equal: [action.payload.cluster, metadata.region]}}",
        ),
        rule("a", "shared", "{inhibitedBy: {stateMachine: shared-events}}"),
        rule(
            "a",
            "call",
            "{all: [{field: action.action_type, startsWith: pod_}, {call: has_active_event, args: [cluster-events, action.metadata.cluster]}]}",
        ),
        rule("a", "in-state", "{call: event_in_state, args: [fp, firing]}"),
        rule(
            "a",
            "in-state-of",
            "{call: event_in_state, args: [cluster-events, action.fingerprint, firing]}",
        ),
        // Rejected.
        rule("a", "missing", "{inhibitedBy: {stateMachine: nothing}}"),
        rule("a", "other-namespace", "{not: {inhibitedBy: {stateMachine: b-only}}}"),
        rule("a", "uses-broken", "{inhibitedBy: {stateMachine: broken}}"),
        rule(
            "a",
            "call-missing",
            "{call: has_active_event, args: [nothing, action.metadata.cluster]}",
        ),
        rule(
            "a",
            "call-not-strings",
            "{call: has_active_event, args: [cluster-events, 3]}",
        ),
        rule(
            "a",
            "bad-path",
            "{any: [{field: action.tenant, eq: t}, {inhibitedBy: {stateMachine: cluster-events, equal: [payload.c, clusterr]}}]}",
        ),
        rule(
            "a",
            "time-field",
            "{inhibitedBy: {stateMachine: cluster-events, equal: [time.hour]}}",
        ),
        rule(
            "a",
            "status-field",
            "{inhibitedBy: {stateMachine: cluster-events, equal: [action.status]}}",
        ),
        rule(
            "a",
            "call-id-field",
            "{call: has_active_event, args: [cluster-events, action.id]}",
        ),
        rule(
            "a",
            "twice",
            "{inhibitedBy: {stateMachine: cluster-events, equal: [payload.c, action.payload.c]}}",
        ),
        rule(
            "a",
            "in-state-missing",
            "{call: event_in_state, args: [nothing, action.fingerprint, firing]}",
        ),
        rule(
            "a",
            "in-state-bad-path",
            "{call: event_in_state, args: [action.nosuch, firing]}",
        ),
        rule(
            "a",
            "in-state-time",
            "{call: event_in_state, args: [action.time.hour, firing]}",
        ),
        rule("a", "in-state-empty", "{call: event_in_state, args: [fp, \"\"]}"),
        rule("a", "in-state-arity", "{call: event_in_state, args: [fp]}"),
        rule(
            "a",
            "unknown-key",
            "{inhibitedBy: {stateMachine: cluster-events, labels: [payload.c]}}",
        ),
    ]
    .concat();
    let c = compile_yaml(&text);
    let expected = [
        (
            "missing",
            "StateMachineNotFound",
            "spec.condition.inhibitedBy.stateMachine",
            "state machine `nothing` not found",
        ),
        (
            "other-namespace",
            "StateMachineNotFound",
            "spec.condition.not.inhibitedBy.stateMachine",
            "state machine `b-only` not found",
        ),
        (
            "uses-broken",
            "StateMachineNotFound",
            "spec.condition.inhibitedBy.stateMachine",
            "state machine `broken` is rejected (see its own status)",
        ),
        (
            "call-missing",
            "StateMachineNotFound",
            "spec.condition.args[0]",
            "state machine `nothing` not found",
        ),
        (
            "call-not-strings",
            "InvalidCondition",
            "spec.condition.args",
            "",
        ),
        (
            "bad-path",
            "InvalidFieldPath",
            "spec.condition.any[1].inhibitedBy.equal[1]",
            "",
        ),
        (
            "time-field",
            "InvalidFieldPath",
            "spec.condition.inhibitedBy.equal[0]",
            "evaluation time",
        ),
        (
            "status-field",
            "InvalidFieldPath",
            "spec.condition.inhibitedBy.equal[0]",
            "by nature",
        ),
        (
            "call-id-field",
            "InvalidFieldPath",
            "spec.condition.args[1]",
            "by nature",
        ),
        (
            "twice",
            "InvalidFieldPath",
            "spec.condition.inhibitedBy.equal[1]",
            "listed twice",
        ),
        (
            "in-state-missing",
            "StateMachineNotFound",
            "spec.condition.args[0]",
            "state machine `nothing` not found",
        ),
        (
            "in-state-bad-path",
            "InvalidFieldPath",
            "spec.condition.args[0]",
            "",
        ),
        (
            "in-state-time",
            "InvalidFieldPath",
            "spec.condition.args[0]",
            "",
        ),
        (
            "in-state-empty",
            "InvalidCondition",
            "spec.condition.args[1]",
            "state is empty",
        ),
        (
            "in-state-arity",
            "InvalidCondition",
            "spec.condition.args",
            "takes 2 or 3 arguments, got 1",
        ),
        (
            "unknown-key",
            "InvalidSpec",
            "spec.condition.inhibitedBy.labels",
            "unknown field `labels`",
        ),
    ];
    for (name, reason, field, message) in expected {
        let e = rejection_of(&c, "a", name);
        assert_eq!(e.reason, reason, "{name}: {e}");
        assert_eq!(e.field.as_deref(), Some(field), "{name}: {e}");
        assert!(e.message.contains(message), "{name}: {e}");
    }
    // The broken machine is the only other rejection.
    assert_eq!(
        c.rejections.len(),
        expected.len() + 1,
        "{:#?}",
        c.rejections
    );
    assert_eq!(
        kept(&c),
        ["call", "in-state", "in-state-of", "own", "shared"]
    );
}

#[test]
fn state_seen_reads_a_dedup_key_template_within_an_optional_window() {
    let text = [
        rule("a", "literal", "{stateSeen: my-key}"),
        rule(
            "a",
            "template",
            "{not: {stateSeen: \"{{action.payload.id}}:x\"}}",
        ),
        rule("a", "bad-template", "{stateSeen: \"{{action.nope}}\"}"),
        rule("a", "within", "{stateSeen: k, withinSeconds: 30}"),
        rule("a", "within-zero", "{stateSeen: k, withinSeconds: 0}"),
        rule("a", "within-long", "{stateSeen: k, withinSeconds: 604801}"),
    ]
    .concat();
    let c = compile_yaml(&text);
    let bad = rejection_of(&c, "a", "bad-template");
    assert_eq!(
        (bad.reason, bad.field.as_deref()),
        ("InvalidTemplate", Some("spec.condition.stateSeen"))
    );
    for name in ["within-zero", "within-long"] {
        let within = rejection_of(&c, "a", name);
        assert_eq!(
            (within.reason, within.field.as_deref()),
            ("InvalidCondition", Some("spec.condition.withinSeconds")),
            "{within}"
        );
    }
    assert_eq!(c.rejections.len(), 3, "{:#?}", c.rejections);
    assert_eq!(kept(&c), ["literal", "template", "within"]);
}

#[test]
fn state_counters_read_a_throttle_rule_in_scope() {
    let throttle = |ns: &str, name: &str, key: &str| {
        manifest(
            "Rule",
            ns,
            name,
            &format!(
                "condition: {{field: action.action_type, eq: page}}\naction: {{type: throttle, maxCount: 10, windowSeconds: 60{key}}}"
            ),
        )
    };
    let text = [
        throttle("a", "pager", ""),
        throttle("a", "per-service", ", key: \"{{action.payload.service}}\""),
        throttle("acteon-system", "global", ""),
        throttle("b", "b-only", ""),
        // Accepted.
        rule("a", "count", "{stateCounter: pager, gte: 5}"),
        rule(
            "a",
            "keyed",
            "{stateCounter: per-service, key: \"{{action.payload.service}}\", windowSeconds: 30, lt: 3}",
        ),
        rule("a", "shared", "{stateCounter: global, inList: [0, 1]}"),
        // Rejected.
        rule("a", "missing", "{stateCounter: nope, gt: 1}"),
        rule("a", "other-namespace", "{stateCounter: b-only, gt: 1}"),
        rule("a", "not-a-throttle", "{stateCounter: count, gt: 1}"),
        rule("a", "window-too-long", "{stateCounter: pager, windowSeconds: 61, gt: 1}"),
        rule("a", "zero-window", "{stateCounter: pager, windowSeconds: 0, gt: 1}"),
        rule("a", "key-missing", "{stateCounter: per-service, gt: 1}"),
        rule("a", "key-extra", "{stateCounter: pager, key: k, gt: 1}"),
        rule("a", "string-op", "{stateCounter: pager, startsWith: \"1\"}"),
        rule("a", "string-value", "{stateCounter: pager, gt: \"1\"}"),
        rule("a", "key-alone", "{field: action.tenant, eq: t, key: k}"),
        // Reads a rule that is itself rejected for its counter: rejected in turn.
        rule("a", "chained", "{stateCounter: missing, gt: 1}"),
    ]
    .concat();
    let c = compile_yaml(&text);
    let expected = [
        ("missing", "RuleNotFound", "spec.condition.stateCounter"),
        (
            "other-namespace",
            "RuleNotFound",
            "spec.condition.stateCounter",
        ),
        (
            "not-a-throttle",
            "InvalidCondition",
            "spec.condition.stateCounter",
        ),
        (
            "window-too-long",
            "InvalidCondition",
            "spec.condition.windowSeconds",
        ),
        (
            "zero-window",
            "InvalidCondition",
            "spec.condition.windowSeconds",
        ),
        ("key-missing", "InvalidCondition", "spec.condition.key"),
        ("key-extra", "InvalidCondition", "spec.condition.key"),
        ("string-op", "InvalidCondition", "spec.condition.startsWith"),
        ("string-value", "InvalidCondition", "spec.condition.gt"),
        ("key-alone", "InvalidSpec", "spec.condition"),
        ("chained", "RuleNotFound", "spec.condition.stateCounter"),
    ];
    for (name, reason, field) in expected {
        let e = rejection_of(&c, "a", name);
        assert_eq!(e.reason, reason, "{name}: {e}");
        assert_eq!(e.field.as_deref(), Some(field), "{name}: {e}");
    }
    assert_eq!(c.rejections.len(), expected.len(), "{:#?}", c.rejections);
    assert_eq!(
        rejection_of(&c, "a", "missing").message,
        "rule `nope` not found"
    );
    assert_eq!(
        rejection_of(&c, "a", "chained").message,
        "rule `missing` is rejected (see its own status)"
    );
    assert_eq!(
        kept(&c),
        [
            "b-only",
            "count",
            "global",
            "keyed",
            "pager",
            "per-service",
            "shared"
        ]
    );
}

#[test]
fn acteon_files_spell_the_leaves_in_snake_case() {
    let file = "rules:
  - name: inhibit-pod-alerts
    condition:
      all:
        - field: action.action_type
          starts_with: pod_
        - inhibited_by:
            state_machine: cluster-events
            equal: [metadata.cluster]
    action:
      type: suppress
  - name: pager
    condition:
      field: action.action_type
      eq: page
    action:
      type: throttle
      max_count: 10
      window_seconds: 60
  - name: busy
    condition:
      state_counter: pager
      window_seconds: 30
      gt: 5
    action:
      type: suppress
";
    let mut docs = parse_text("rules.yaml", file).expect("rule file parses");
    docs.extend(
        parse_text(
            "machines.yaml",
            &manifest(
                "StateMachine",
                "acteon-system",
                "cluster-events",
                CLUSTER_EVENTS,
            ),
        )
        .unwrap(),
    );
    let c = compile(&docs, &CompileOptions::default());
    assert!(c.rejections.is_empty(), "{:#?}", c.rejections);
    let spec = |name: &str| {
        let r = c.snapshot.rules.iter().find(|r| r.name == name).unwrap();
        serde_json::to_value(&r.spec).unwrap()["condition"].clone()
    };
    assert_eq!(
        spec("inhibit-pod-alerts")["all"][1],
        serde_json::json!({"inhibitedBy": {"stateMachine": "cluster-events", "equal": ["metadata.cluster"]}})
    );
    assert_eq!(
        spec("busy"),
        serde_json::json!({"stateCounter": "pager", "windowSeconds": 30, "gt": 5})
    );
}

/// A CEL rule's state calls are checked like condition leaves, named `spec.cel`.
#[test]
fn cel_state_calls_are_checked_like_leaves() {
    let cel_rule = |name: &str, expr: &str| {
        manifest(
            "Rule",
            "a",
            name,
            &format!("cel: '{expr}'\naction: {{type: suppress}}"),
        )
    };
    let text = [
        manifest(
            "StateMachine",
            "a",
            "cluster-events",
            "states: [open, firing]\ninitialState: open\ntransitions: [{from: open, to: firing}]",
        ),
        cel_rule(
            "ok",
            r#"has_active_event("cluster-events", action.metadata.cluster) || event_in_state(action.fingerprint, "firing") || state.seen(action.payload.k)"#,
        ),
        cel_rule("no-state", r#"action.payload.x > 1"#),
        cel_rule(
            "missing-machine",
            r#"has_active_event("nothing", action.metadata.cluster)"#,
        ),
        cel_rule(
            "computed-argument",
            r#"event_in_state(action.payload.a + "x", "firing")"#,
        ),
        cel_rule(
            "bad-field",
            r#"has_active_event("cluster-events", action.nosuch)"#,
        ),
        cel_rule("arity", r#"event_in_state("fp")"#),
    ]
    .concat();
    let c = compile_yaml(&text);
    for (name, reason, message) in [
        (
            "missing-machine",
            "StateMachineNotFound",
            "`nothing` not found",
        ),
        (
            "computed-argument",
            "InvalidCel",
            "string literals or action fields",
        ),
        ("bad-field", "InvalidFieldPath", "has_active_event"),
        ("arity", "InvalidCel", "event_in_state"),
    ] {
        let e = rejection_of(&c, "a", name);
        assert_eq!(e.reason, reason, "{name}: {e}");
        assert_eq!(e.field.as_deref(), Some("spec.cel"), "{name}: {e}");
        assert!(e.message.contains(message), "{name}: {e}");
    }
    assert_eq!(c.rejections.len(), 4, "{:#?}", c.rejections);
    assert_eq!(kept(&c), ["no-state", "ok"]);
}
