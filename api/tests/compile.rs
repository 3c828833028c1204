//! The compile path end to end: YAML text → documents → validated snapshot.
//!
//! Every rejection test checks the exact reason and field, that the bad object is left
//! out of the snapshot, and that the other objects still compile.

use std::sync::mpsc;
use std::time::Duration;

use acteon_api::compile::{CompileError, CompileOptions, Compiled, Kind, compile, parse_text};

/// Compiles one YAML text with the default options (shared namespace `acteon-system`).
fn compile_yaml(text: &str) -> Compiled {
    let docs =
        parse_text("test.yaml", text).unwrap_or_else(|e| panic!("test YAML does not parse: {e:?}"));
    compile(&docs, &CompileOptions::default())
}

/// The single rejection of the compile, which must belong to `kind` `ns`/`name`.
fn only_rejection<'a>(c: &'a Compiled, kind: Kind, ns: &str, name: &str) -> &'a CompileError {
    assert_eq!(
        c.rejections.len(),
        1,
        "expected exactly one rejection, got {:#?}",
        c.rejections
    );
    let e = &c.rejections[0];
    let id = e.object.as_ref().expect("a rejection names its object");
    assert_eq!(
        (id.kind, id.namespace.as_deref(), id.name.as_str()),
        (kind, Some(ns), name),
        "{e}"
    );
    e
}

fn assert_rejected(e: &CompileError, reason: &str, field: &str) {
    assert_eq!(e.reason, reason, "{e}");
    assert_eq!(e.field.as_deref(), Some(field), "{e}");
    // The message shown to users carries the source, object and field.
    let shown = e.to_string();
    assert!(shown.contains("test.yaml"), "{shown}");
    assert!(shown.contains(field), "{shown}");
}

fn rejection_of<'a>(c: &'a Compiled, kind: Kind, ns: &str, name: &str) -> &'a CompileError {
    c.rejections
        .iter()
        .find(|e| {
            e.object.as_ref().is_some_and(|o| {
                o.kind == kind && o.namespace.as_deref() == Some(ns) && o.name == name
            })
        })
        .unwrap_or_else(|| panic!("no rejection of {kind} {ns}/{name} in {:#?}", c.rejections))
}

fn rules(c: &Compiled) -> Vec<String> {
    c.snapshot.rules.iter().map(|e| e.name.clone()).collect()
}

fn providers(c: &Compiled) -> Vec<String> {
    c.snapshot
        .providers
        .iter()
        .map(|e| e.name.clone())
        .collect()
}

fn chains(c: &Compiled) -> Vec<String> {
    c.snapshot.chains.iter().map(|e| e.name.clone()).collect()
}

/// A log provider manifest.
fn provider(ns: &str, name: &str) -> String {
    format!(
        "apiVersion: acteon.dev/v1alpha1\nkind: Provider\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{type: log}}\n---\n"
    )
}

/// A Rule manifest with the given spec body (indented YAML under `spec:`).
fn rule(ns: &str, name: &str, spec: &str) -> String {
    let spec: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    format!(
        "apiVersion: acteon.dev/v1alpha1\nkind: Rule\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}---\n"
    )
}

fn manifest(kind: &str, ns: &str, name: &str, spec: &str) -> String {
    let spec: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    format!(
        "apiVersion: acteon.dev/v1alpha1\nkind: {kind}\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}---\n"
    )
}

const GOOD_RULE: &str = "condition: {field: action.tenant, eq: t1}\naction: {type: suppress}";

// ---------------------------------------------------------------------------------------
// Rules

#[test]
fn reroute_to_unknown_provider_is_provider_not_found() {
    let text = [
        provider("a", "pager"),
        rule("a", "good", "condition: {field: action.tenant, eq: t1}\naction: {type: reroute, targetProvider: pager}"),
        rule("a", "bad", "condition: {field: action.tenant, eq: t1}\naction: {type: reroute, targetProvider: missing}"),
    ]
    .concat();
    let c = compile_yaml(&text);
    let e = only_rejection(&c, Kind::Rule, "a", "bad");
    assert_rejected(e, "ProviderNotFound", "spec.action.targetProvider");
    assert!(e.message.contains("missing"), "{e}");
    assert!(e.to_string().contains("Rule a/bad"), "{e}");
    assert_eq!(rules(&c), ["good"]);
    assert_eq!(providers(&c), ["pager"]);
}

#[test]
fn bad_regex_is_invalid_regex() {
    let text = [
        rule("a", "good", "condition: {field: action.payload.subject, matches: '^\\[test\\]'}\naction: {type: suppress}"),
        rule("a", "bad", "condition:\n  all:\n    - {field: action.tenant, eq: t1}\n    - {field: action.payload.subject, matches: '(unclosed'}\naction: {type: suppress}"),
    ]
    .concat();
    let c = compile_yaml(&text);
    let e = only_rejection(&c, Kind::Rule, "a", "bad");
    assert_rejected(e, "InvalidRegex", "spec.condition.all[1].matches");
    assert_eq!(rules(&c), ["good"]);
}

#[test]
fn unparsable_cel_is_invalid_cel() {
    let text = [
        rule(
            "a",
            "good",
            "cel: 'action.tenant == \"t1\" && action.payload.value > 85'\naction: {type: suppress}",
        ),
        rule(
            "a",
            "bad",
            "cel: 'action.tenant == '\naction: {type: suppress}",
        ),
    ]
    .concat();
    let c = compile_yaml(&text);
    let e = only_rejection(&c, Kind::Rule, "a", "bad");
    assert_rejected(e, "InvalidCel", "spec.cel");
    assert_eq!(rules(&c), ["good"]);
}

#[test]
fn condition_and_cel_together_is_invalid_condition() {
    let text = [
        rule("a", "good", GOOD_RULE),
        rule("a", "both", "condition: {field: action.tenant, eq: t1}\ncel: 'action.tenant == \"t1\"'\naction: {type: suppress}"),
    ]
    .concat();
    let c = compile_yaml(&text);
    let e = only_rejection(&c, Kind::Rule, "a", "both");
    assert_rejected(e, "InvalidCondition", "spec.cel");
    assert_eq!(rules(&c), ["good"]);
}

#[test]
fn neither_condition_nor_cel_is_invalid_condition() {
    let text = [
        rule("a", "good", GOOD_RULE),
        rule("a", "neither", "priority: 3\naction: {type: suppress}"),
    ]
    .concat();
    let c = compile_yaml(&text);
    let e = only_rejection(&c, Kind::Rule, "a", "neither");
    assert_rejected(e, "InvalidCondition", "spec.condition");
    assert_eq!(rules(&c), ["good"]);
}

#[test]
fn bad_timezone_is_invalid_timezone() {
    let text = [
        rule("a", "good", "timezone: Europe/Berlin\ncondition: {field: time.hour, gte: 22}\naction: {type: suppress}"),
        rule("a", "bad", "timezone: Mars/Olympus_Mons\ncondition: {field: time.hour, gte: 22}\naction: {type: suppress}"),
    ]
    .concat();
    let c = compile_yaml(&text);
    let e = only_rejection(&c, Kind::Rule, "a", "bad");
    assert_rejected(e, "InvalidTimezone", "spec.timezone");
    assert_eq!(rules(&c), ["good"]);
}

#[test]
fn unknown_field_path_is_invalid_field_path() {
    let text = [
        rule("a", "good", "condition: {field: action.metadata.cluster, eq: c1}\naction: {type: suppress}"),
        rule("a", "bad", "condition:\n  any:\n    - {field: action.tenant, eq: t1}\n    - not: {field: action.colour, eq: red}\naction: {type: suppress}"),
        rule("a", "bad-time", "condition: {field: time.century, eq: 21}\naction: {type: suppress}"),
    ]
    .concat();
    let c = compile_yaml(&text);
    assert_eq!(c.rejections.len(), 2, "{:#?}", c.rejections);
    assert_rejected(
        rejection_of(&c, Kind::Rule, "a", "bad"),
        "InvalidFieldPath",
        "spec.condition.any[1].not.field",
    );
    assert_rejected(
        rejection_of(&c, Kind::Rule, "a", "bad-time"),
        "InvalidFieldPath",
        "spec.condition.field",
    );
    assert_eq!(rules(&c), ["good"]);
}

#[test]
fn unknown_field_path_in_group_by_is_invalid_field_path() {
    let text = [
        rule("a", "good", "condition: {field: action.tenant, eq: t1}\naction: {type: group, groupBy: [payload.floor]}"),
        rule("a", "bad", "condition: {field: action.tenant, eq: t1}\naction: {type: group, groupBy: [payload.floor, floor]}"),
    ]
    .concat();
    let c = compile_yaml(&text);
    let e = only_rejection(&c, Kind::Rule, "a", "bad");
    assert_rejected(e, "InvalidFieldPath", "spec.action.groupBy[1]");
    assert_eq!(rules(&c), ["good"]);
}

#[test]
fn wrong_type_in_spec_is_invalid_spec_naming_the_field() {
    let text = [
        rule("a", "good", "condition: {field: action.tenant, eq: t1}\naction: {type: deduplicate, ttlSeconds: 60}"),
        rule("a", "bad", "condition: {field: action.tenant, eq: t1}\naction: {type: deduplicate, ttlSeconds: x}"),
        rule("a", "bad-priority", "priority: high\ncondition: {field: action.tenant, eq: t1}\naction: {type: suppress}"),
    ]
    .concat();
    let c = compile_yaml(&text);
    assert_eq!(c.rejections.len(), 2, "{:#?}", c.rejections);
    assert_rejected(
        rejection_of(&c, Kind::Rule, "a", "bad"),
        "InvalidSpec",
        "spec.action.ttlSeconds",
    );
    assert_rejected(
        rejection_of(&c, Kind::Rule, "a", "bad-priority"),
        "InvalidSpec",
        "spec.priority",
    );
    assert_eq!(rules(&c), ["good"]);
}

#[test]
fn unknown_spec_key_is_invalid_spec() {
    let text = [
        rule("a", "good", GOOD_RULE),
        rule(
            "a",
            "bad",
            "colour: red\ncondition: {field: action.tenant, eq: t1}\naction: {type: suppress}",
        ),
        rule(
            "a",
            "bad-action",
            "condition: {field: action.tenant, eq: t1}\naction: {type: deduplicate, ttl: 60}",
        ),
        manifest(
            "Provider",
            "a",
            "bad-provider",
            "type: log\nlog: {level: info, colour: red}",
        ),
    ]
    .concat();
    let c = compile_yaml(&text);
    assert_eq!(c.rejections.len(), 3, "{:#?}", c.rejections);
    let e = rejection_of(&c, Kind::Rule, "a", "bad");
    assert_rejected(e, "InvalidSpec", "spec.colour");
    assert!(e.message.contains("unknown field `colour`"), "{e}");
    // Inside the tagged `action` too, although serde does not track paths there.
    let e = rejection_of(&c, Kind::Rule, "a", "bad-action");
    assert_rejected(e, "InvalidSpec", "spec.action.ttl");
    assert!(e.message.contains("unknown field `ttl`"), "{e}");
    let e = rejection_of(&c, Kind::Provider, "a", "bad-provider");
    assert_rejected(e, "InvalidSpec", "spec.log.colour");
    assert_eq!(rules(&c), ["good"]);
    assert!(providers(&c).is_empty());
}

#[test]
fn missing_required_field_is_invalid_spec_naming_the_field() {
    let text = [
        rule("a", "good", "condition: {field: action.tenant, eq: t1}\naction: {type: throttle, maxCount: 30, windowSeconds: 60}"),
        rule("a", "no-max", "condition: {field: action.tenant, eq: t1}\naction: {type: throttle, windowSeconds: 60, key: k}"),
        rule("a", "no-type", "condition: {field: action.tenant, eq: t1}\naction: {ttlSeconds: 60}"),
        rule("a", "bad-type", "condition: {field: action.tenant, eq: t1}\naction: {type: explode}"),
        rule("a", "no-action", "condition: {field: action.tenant, eq: t1}"),
        rule("a", "bad-group", "condition: {field: action.tenant, eq: t1}\naction: {type: group, groupBy: [payload.floor], groupWaitSeconds: soon}"),
        manifest("Quota", "a", "no-limit", "tenant: t1\nwindow: 1h"),
    ]
    .concat();
    let c = compile_yaml(&text);
    assert_eq!(c.rejections.len(), 6, "{:#?}", c.rejections);
    assert_rejected(
        rejection_of(&c, Kind::Rule, "a", "no-max"),
        "InvalidSpec",
        "spec.action.maxCount",
    );
    assert_rejected(
        rejection_of(&c, Kind::Rule, "a", "no-type"),
        "InvalidSpec",
        "spec.action.type",
    );
    assert_rejected(
        rejection_of(&c, Kind::Rule, "a", "bad-type"),
        "InvalidSpec",
        "spec.action.type",
    );
    assert_rejected(
        rejection_of(&c, Kind::Rule, "a", "no-action"),
        "InvalidSpec",
        "spec.action",
    );
    assert_rejected(
        rejection_of(&c, Kind::Rule, "a", "bad-group"),
        "InvalidSpec",
        "spec.action.groupWaitSeconds",
    );
    assert_rejected(
        rejection_of(&c, Kind::Quota, "a", "no-limit"),
        "InvalidSpec",
        "spec.limit",
    );
    assert_eq!(rules(&c), ["good"]);
}

#[test]
fn rule_referring_to_rejected_provider_is_rejected_too() {
    let text = [
        provider("a", "ok"),
        // A webhook provider without its `webhook` block is rejected…
        manifest("Provider", "a", "broken", "type: webhook"),
        // …and so is every rule that needs it.
        rule("a", "uses-broken", "condition: {field: action.tenant, eq: t1}\naction: {type: reroute, targetProvider: broken}"),
        rule("a", "approval-broken", "condition: {field: action.tenant, eq: t1}\naction: {type: requestApproval, notifyProvider: broken}"),
        rule("a", "uses-ok", "condition: {field: action.tenant, eq: t1}\naction: {type: reroute, targetProvider: ok}"),
    ]
    .concat();
    let c = compile_yaml(&text);
    assert_eq!(c.rejections.len(), 3, "{:#?}", c.rejections);
    assert_rejected(
        rejection_of(&c, Kind::Provider, "a", "broken"),
        "InvalidProvider",
        "spec.webhook",
    );
    assert_rejected(
        rejection_of(&c, Kind::Rule, "a", "uses-broken"),
        "ProviderNotFound",
        "spec.action.targetProvider",
    );
    assert_rejected(
        rejection_of(&c, Kind::Rule, "a", "approval-broken"),
        "ProviderNotFound",
        "spec.action.notifyProvider",
    );
    assert_eq!(rules(&c), ["uses-ok"]);
    assert_eq!(providers(&c), ["ok"]);
}

#[test]
fn duplicate_objects_are_rejected() {
    let text = [
        rule("a", "twice", GOOD_RULE),
        rule("a", "other", GOOD_RULE),
        rule(
            "a",
            "twice",
            "condition: {field: action.tenant, eq: t2}\naction: {type: deny}",
        ),
        // The same name in another namespace or of another kind is no duplicate.
        rule("b", "twice", GOOD_RULE),
        provider("a", "twice"),
    ]
    .concat();
    let c = compile_yaml(&text);
    let e = only_rejection(&c, Kind::Rule, "a", "twice");
    assert_rejected(e, "Duplicate", "metadata.name");
    assert!(
        e.source.contains("#3"),
        "the second definition is the one reported: {e}"
    );
    assert!(
        e.message.contains("#1"),
        "the message points at the first definition: {e}"
    );
    let kept: Vec<(Option<&str>, &str)> = c
        .snapshot
        .rules
        .iter()
        .map(|r| (r.namespace.as_deref(), r.name.as_str()))
        .collect();
    assert!(
        kept.contains(&(Some("a"), "twice")),
        "the first definition is served: {kept:?}"
    );
    assert_eq!(
        kept.iter().filter(|k| **k == (Some("a"), "twice")).count(),
        1
    );
    assert!(kept.contains(&(Some("a"), "other")), "{kept:?}");
    assert!(kept.contains(&(Some("b"), "twice")), "{kept:?}");
    assert_eq!(providers(&c), ["twice"]);
}

#[test]
fn namespaces_scope_provider_references() {
    let text = [
        provider("b", "b-only"),
        provider("acteon-system", "shared"),
        rule("a", "to-other-namespace", "condition: {field: action.tenant, eq: t1}\naction: {type: reroute, targetProvider: b-only}"),
        rule("a", "to-shared", "condition: {field: action.tenant, eq: t1}\naction: {type: reroute, targetProvider: shared}"),
        rule("b", "to-own", "condition: {field: action.tenant, eq: t1}\naction: {type: reroute, targetProvider: b-only}"),
        rule("acteon-system", "shared-rule", "condition: {field: action.tenant, eq: t1}\naction: {type: reroute, targetProvider: shared}"),
        // A shared rule cannot use a namespaced provider either.
        rule("acteon-system", "shared-to-b", "condition: {field: action.tenant, eq: t1}\naction: {type: reroute, targetProvider: b-only}"),
    ]
    .concat();
    let c = compile_yaml(&text);
    assert_eq!(c.rejections.len(), 2, "{:#?}", c.rejections);
    assert_rejected(
        rejection_of(&c, Kind::Rule, "a", "to-other-namespace"),
        "ProviderNotFound",
        "spec.action.targetProvider",
    );
    assert_rejected(
        rejection_of(&c, Kind::Rule, "acteon-system", "shared-to-b"),
        "ProviderNotFound",
        "spec.action.targetProvider",
    );
    let scope = |name: &str| {
        c.snapshot
            .rules
            .iter()
            .find(|r| r.name == name)
            .map(|r| r.namespace.clone())
    };
    assert_eq!(scope("to-shared"), Some(Some("a".to_owned())));
    assert_eq!(scope("to-own"), Some(Some("b".to_owned())));
    assert_eq!(
        scope("shared-rule"),
        Some(None),
        "a rule of the shared namespace applies to all namespaces"
    );
    assert_eq!(scope("to-other-namespace"), None);
    let provider_scope: Vec<(Option<&str>, &str)> = c
        .snapshot
        .providers
        .iter()
        .map(|p| (p.namespace.as_deref(), p.name.as_str()))
        .collect();
    assert!(
        provider_scope.contains(&(None, "shared")),
        "{provider_scope:?}"
    );
    assert!(
        provider_scope.contains(&(Some("b"), "b-only")),
        "{provider_scope:?}"
    );
}

#[test]
fn shared_namespace_is_configurable() {
    let text = [
        provider("platform", "shared"),
        rule("a", "to-shared", "condition: {field: action.tenant, eq: t1}\naction: {type: reroute, targetProvider: shared}"),
    ]
    .concat();
    let docs = parse_text("test.yaml", &text).unwrap();
    let default = compile(&docs, &CompileOptions::default());
    assert_rejected(
        only_rejection(&default, Kind::Rule, "a", "to-shared"),
        "ProviderNotFound",
        "spec.action.targetProvider",
    );
    let custom = compile(
        &docs,
        &CompileOptions {
            shared_namespace: "platform".into(),
        },
    );
    assert!(custom.rejections.is_empty(), "{:#?}", custom.rejections);
    assert_eq!(custom.snapshot.providers[0].namespace, None);
}

#[test]
fn manifest_without_namespace_lands_in_default() {
    let text = "apiVersion: acteon.dev/v1alpha1\nkind: Rule\nmetadata: {name: r}\nspec: {condition: {field: action.tenant, eq: t}, action: {type: deny}}\n";
    let c = compile_yaml(text);
    assert!(c.rejections.is_empty(), "{:#?}", c.rejections);
    assert_eq!(c.snapshot.rules[0].namespace.as_deref(), Some("default"));
}

#[test]
fn invalid_action_values_name_the_field() {
    let text = [
        rule("a", "good", "condition: {field: action.tenant, eq: t1}\naction: {type: throttle, maxCount: 30, windowSeconds: 60}"),
        rule("a", "zero-window", "condition: {field: action.tenant, eq: t1}\naction: {type: throttle, maxCount: 30, windowSeconds: 0}"),
        rule("a", "bad-key", "condition: {field: action.tenant, eq: t1}\naction: {type: deduplicate, key: '{{action.payload.service'}"),
        rule("a", "modify-list", "condition: {field: action.tenant, eq: t1}\naction: {type: modify, changes: [1, 2]}"),
    ]
    .concat();
    let c = compile_yaml(&text);
    assert_eq!(c.rejections.len(), 3, "{:#?}", c.rejections);
    assert_rejected(
        rejection_of(&c, Kind::Rule, "a", "zero-window"),
        "InvalidAction",
        "spec.action.windowSeconds",
    );
    assert_rejected(
        rejection_of(&c, Kind::Rule, "a", "bad-key"),
        "InvalidTemplate",
        "spec.action.key",
    );
    assert_rejected(
        rejection_of(&c, Kind::Rule, "a", "modify-list"),
        "InvalidAction",
        "spec.action.changes",
    );
    assert_eq!(rules(&c), ["good"]);
}

// ---------------------------------------------------------------------------------------
// Chains

const CHAIN_PROVIDERS: &str = "apiVersion: acteon.dev/v1alpha1\nkind: Provider\nmetadata: {name: p, namespace: a}\nspec: {type: log}\n---\n";

#[test]
fn chain_with_dangling_branch_target_is_dangling_step() {
    let text = [
        CHAIN_PROVIDERS.to_owned(),
        manifest("Chain", "a", "good", "steps:\n  - {name: one, provider: p, branches: [{field: success, operator: eq, value: true, target: two}]}\n  - {name: two, provider: p}"),
        manifest("Chain", "a", "bad", "steps:\n  - {name: one, provider: p, branches: [{field: success, operator: eq, value: true, target: nowhere}]}\n  - {name: two, provider: p}"),
        manifest("Chain", "a", "bad-default", "steps:\n  - {name: one, provider: p, defaultNext: gone}"),
        rule("a", "uses-good", "condition: {field: action.tenant, eq: t1}\naction: {type: chain, chain: good}"),
        rule("a", "uses-bad", "condition: {field: action.tenant, eq: t1}\naction: {type: chain, chain: bad}"),
    ]
    .concat();
    let c = compile_yaml(&text);
    assert_eq!(c.rejections.len(), 3, "{:#?}", c.rejections);
    assert_rejected(
        rejection_of(&c, Kind::Chain, "a", "bad"),
        "DanglingStep",
        "spec.steps[0].branches[0].target",
    );
    assert_rejected(
        rejection_of(&c, Kind::Chain, "a", "bad-default"),
        "DanglingStep",
        "spec.steps[0].defaultNext",
    );
    assert_rejected(
        rejection_of(&c, Kind::Rule, "a", "uses-bad"),
        "ChainNotFound",
        "spec.action.chain",
    );
    assert_eq!(chains(&c), ["good"]);
    assert_eq!(rules(&c), ["uses-good"]);
}

#[test]
fn chain_step_with_unknown_provider_is_provider_not_found() {
    let text = [
        CHAIN_PROVIDERS.to_owned(),
        manifest("Chain", "a", "good", "steps:\n  - {name: one, provider: p}"),
        manifest(
            "Chain",
            "a",
            "bad",
            "steps:\n  - {name: one, provider: p}\n  - {name: two, provider: missing}",
        ),
    ]
    .concat();
    let c = compile_yaml(&text);
    assert_rejected(
        only_rejection(&c, Kind::Chain, "a", "bad"),
        "ProviderNotFound",
        "spec.steps[1].provider",
    );
    assert_eq!(chains(&c), ["good"]);
}

#[test]
fn chain_step_cycle_is_cycle_detected() {
    let text = [
        CHAIN_PROVIDERS.to_owned(),
        // A branch back to an earlier step is a loop.
        manifest("Chain", "a", "loop", "steps:\n  - {name: one, provider: p}\n  - {name: two, provider: p, branches: [{field: success, operator: eq, value: false, target: one}], defaultNext: three}\n  - {name: three, provider: p}"),
        // So is a step whose defaultNext is itself.
        manifest("Chain", "a", "self", "steps:\n  - {name: one, provider: p, defaultNext: one}"),
        // Jumping forward is fine.
        manifest("Chain", "a", "forward", "steps:\n  - {name: one, provider: p, branches: [{field: success, operator: eq, value: true, target: three}]}\n  - {name: two, provider: p, defaultNext: three}\n  - {name: three, provider: p}"),
    ]
    .concat();
    let c = compile_yaml(&text);
    assert_eq!(c.rejections.len(), 2, "{:#?}", c.rejections);
    assert_rejected(
        rejection_of(&c, Kind::Chain, "a", "loop"),
        "CycleDetected",
        "spec.steps",
    );
    assert_rejected(
        rejection_of(&c, Kind::Chain, "a", "self"),
        "CycleDetected",
        "spec.steps",
    );
    assert_eq!(chains(&c), ["forward"]);
}

#[test]
fn sub_chain_cycle_is_cycle_detected() {
    let text = [
        CHAIN_PROVIDERS.to_owned(),
        manifest(
            "Chain",
            "a",
            "ping",
            "steps:\n  - {name: one, provider: p}\n  - {name: two, subChain: pong}",
        ),
        manifest(
            "Chain",
            "a",
            "pong",
            "steps:\n  - {name: one, subChain: ping}",
        ),
        manifest("Chain", "a", "leaf", "steps:\n  - {name: one, provider: p}"),
        manifest(
            "Chain",
            "a",
            "uses-leaf",
            "steps:\n  - {name: one, subChain: leaf}",
        ),
        rule(
            "a",
            "starts-ping",
            "condition: {field: action.tenant, eq: t1}\naction: {type: chain, chain: ping}",
        ),
        rule(
            "a",
            "starts-leaf",
            "condition: {field: action.tenant, eq: t1}\naction: {type: chain, chain: uses-leaf}",
        ),
    ]
    .concat();
    let c = compile_yaml(&text);
    assert_eq!(c.rejections.len(), 3, "{:#?}", c.rejections);
    assert_rejected(
        rejection_of(&c, Kind::Chain, "a", "ping"),
        "CycleDetected",
        "spec.steps",
    );
    assert_rejected(
        rejection_of(&c, Kind::Chain, "a", "pong"),
        "CycleDetected",
        "spec.steps",
    );
    assert_rejected(
        rejection_of(&c, Kind::Rule, "a", "starts-ping"),
        "ChainNotFound",
        "spec.action.chain",
    );
    let mut kept = chains(&c);
    kept.sort();
    assert_eq!(kept, ["leaf", "uses-leaf"]);
    assert_eq!(rules(&c), ["starts-leaf"]);
}

#[test]
fn chain_referring_to_rejected_sub_chain_is_chain_not_found() {
    let text = [
        CHAIN_PROVIDERS.to_owned(),
        // Rejected for its own reason (unknown provider)…
        manifest(
            "Chain",
            "a",
            "broken",
            "steps:\n  - {name: one, provider: missing}",
        ),
        // …so the chain that calls it is rejected as well.
        manifest(
            "Chain",
            "a",
            "caller",
            "steps:\n  - {name: one, provider: p}\n  - {name: two, subChain: broken}",
        ),
        // …and a chain calling that one, transitively.
        manifest(
            "Chain",
            "a",
            "outer",
            "steps:\n  - {name: one, subChain: caller}",
        ),
        manifest("Chain", "a", "fine", "steps:\n  - {name: one, provider: p}"),
    ]
    .concat();
    let c = compile_yaml(&text);
    assert_eq!(c.rejections.len(), 3, "{:#?}", c.rejections);
    assert_rejected(
        rejection_of(&c, Kind::Chain, "a", "broken"),
        "ProviderNotFound",
        "spec.steps[0].provider",
    );
    assert_rejected(
        rejection_of(&c, Kind::Chain, "a", "caller"),
        "ChainNotFound",
        "spec.steps[1].subChain",
    );
    assert_rejected(
        rejection_of(&c, Kind::Chain, "a", "outer"),
        "ChainNotFound",
        "spec.steps[0].subChain",
    );
    assert_eq!(chains(&c), ["fine"]);
}

#[test]
fn chain_calling_a_chain_on_a_cycle_is_chain_not_found() {
    let text = [
        CHAIN_PROVIDERS.to_owned(),
        manifest(
            "Chain",
            "a",
            "ping",
            "steps:\n  - {name: one, subChain: pong}",
        ),
        manifest(
            "Chain",
            "a",
            "pong",
            "steps:\n  - {name: one, subChain: ping}",
        ),
        // Not on the cycle itself, but calls a chain rejected for being on one.
        manifest(
            "Chain",
            "a",
            "caller",
            "steps:\n  - {name: one, provider: p}\n  - {name: two, subChain: ping}",
        ),
        manifest("Chain", "a", "fine", "steps:\n  - {name: one, provider: p}"),
        rule(
            "a",
            "starts-caller",
            "condition: {field: action.tenant, eq: t1}\naction: {type: chain, chain: caller}",
        ),
    ]
    .concat();
    let c = compile_yaml(&text);
    assert_rejected(
        rejection_of(&c, Kind::Chain, "a", "ping"),
        "CycleDetected",
        "spec.steps",
    );
    assert_rejected(
        rejection_of(&c, Kind::Chain, "a", "pong"),
        "CycleDetected",
        "spec.steps",
    );
    assert_rejected(
        rejection_of(&c, Kind::Chain, "a", "caller"),
        "ChainNotFound",
        "spec.steps[1].subChain",
    );
    assert_rejected(
        rejection_of(&c, Kind::Rule, "a", "starts-caller"),
        "ChainNotFound",
        "spec.action.chain",
    );
    assert_eq!(c.rejections.len(), 4, "{:#?}", c.rejections);
    assert_eq!(chains(&c), ["fine"]);
}

#[test]
fn chain_step_needs_exactly_one_of_provider_and_sub_chain() {
    let text = [
        CHAIN_PROVIDERS.to_owned(),
        manifest("Chain", "a", "fine", "steps:\n  - {name: one, provider: p}"),
        manifest(
            "Chain",
            "a",
            "both",
            "steps:\n  - {name: one, provider: p, subChain: fine}",
        ),
        manifest("Chain", "a", "empty", "steps: []"),
        manifest(
            "Chain",
            "a",
            "twice",
            "steps:\n  - {name: one, provider: p}\n  - {name: one, provider: p}",
        ),
    ]
    .concat();
    let c = compile_yaml(&text);
    assert_eq!(c.rejections.len(), 3, "{:#?}", c.rejections);
    assert_rejected(
        rejection_of(&c, Kind::Chain, "a", "both"),
        "InvalidChain",
        "spec.steps[0]",
    );
    assert_rejected(
        rejection_of(&c, Kind::Chain, "a", "empty"),
        "InvalidChain",
        "spec.steps",
    );
    assert_rejected(
        rejection_of(&c, Kind::Chain, "a", "twice"),
        "InvalidChain",
        "spec.steps[1].name",
    );
    assert_eq!(chains(&c), ["fine"]);
}

// ---------------------------------------------------------------------------------------
// Providers

#[test]
fn provider_type_block_mismatch_is_invalid_provider() {
    let text = [
        manifest(
            "Provider",
            "a",
            "hook",
            "type: webhook\nwebhook: {url: 'http://127.0.0.1:9000/x', method: POST}",
        ),
        manifest(
            "Provider",
            "a",
            "wrong-block",
            "type: webhook\nslack: {webhookUrlSecretRef: {name: s, key: k}}",
        ),
        manifest(
            "Provider",
            "a",
            "two-blocks",
            "type: webhook\nwebhook: {url: 'http://127.0.0.1:9000/x'}\nlog: {level: info}",
        ),
        manifest("Provider", "a", "no-block", "type: slack"),
        manifest(
            "Provider",
            "a",
            "bad-url",
            "type: webhook\nwebhook: {url: 'ftp://example.com/'}",
        ),
        manifest(
            "Provider",
            "a",
            "bad-method",
            "type: webhook\nwebhook: {url: 'http://127.0.0.1:9000/x', method: TRACE}",
        ),
        manifest("Provider", "a", "unknown-type", "type: carrier-pigeon"),
    ]
    .concat();
    let c = compile_yaml(&text);
    assert_eq!(c.rejections.len(), 6, "{:#?}", c.rejections);
    assert_rejected(
        rejection_of(&c, Kind::Provider, "a", "wrong-block"),
        "InvalidProvider",
        "spec.slack",
    );
    assert_rejected(
        rejection_of(&c, Kind::Provider, "a", "two-blocks"),
        "InvalidProvider",
        "spec.log",
    );
    assert_rejected(
        rejection_of(&c, Kind::Provider, "a", "no-block"),
        "InvalidProvider",
        "spec.slack",
    );
    assert_rejected(
        rejection_of(&c, Kind::Provider, "a", "bad-url"),
        "InvalidProvider",
        "spec.webhook.url",
    );
    assert_rejected(
        rejection_of(&c, Kind::Provider, "a", "bad-method"),
        "InvalidProvider",
        "spec.webhook.method",
    );
    assert_rejected(
        rejection_of(&c, Kind::Provider, "a", "unknown-type"),
        "InvalidSpec",
        "spec.type",
    );
    assert_eq!(providers(&c), ["hook"]);
}

#[test]
fn provider_retry_and_fallback_are_checked() {
    let text = [
        provider("a", "spare"),
        manifest("Provider", "a", "main", "type: log\nretry: {maxAttempts: 3, initialBackoffMs: 100, maxBackoffMs: 2000}\ncircuitBreaker: {failureThreshold: 2, recoveryTimeoutSeconds: 60, fallbackProvider: spare}"),
        manifest("Provider", "a", "zero-attempts", "type: log\nretry: {maxAttempts: 0}"),
        manifest("Provider", "a", "backwards-backoff", "type: log\nretry: {initialBackoffMs: 5000, maxBackoffMs: 100}"),
        manifest("Provider", "a", "self-fallback", "type: log\ncircuitBreaker: {failureThreshold: 2, recoveryTimeoutSeconds: 60, fallbackProvider: self-fallback}"),
        manifest("Provider", "a", "lost-fallback", "type: log\ncircuitBreaker: {failureThreshold: 2, recoveryTimeoutSeconds: 60, fallbackProvider: nowhere}"),
        manifest("Provider", "a", "zero-timeout", "type: log\ntimeoutSeconds: 0"),
    ]
    .concat();
    let c = compile_yaml(&text);
    assert_eq!(c.rejections.len(), 5, "{:#?}", c.rejections);
    assert_rejected(
        rejection_of(&c, Kind::Provider, "a", "zero-attempts"),
        "InvalidProvider",
        "spec.retry.maxAttempts",
    );
    assert_rejected(
        rejection_of(&c, Kind::Provider, "a", "backwards-backoff"),
        "InvalidProvider",
        "spec.retry.initialBackoffMs",
    );
    assert_rejected(
        rejection_of(&c, Kind::Provider, "a", "self-fallback"),
        "InvalidProvider",
        "spec.circuitBreaker.fallbackProvider",
    );
    assert_rejected(
        rejection_of(&c, Kind::Provider, "a", "lost-fallback"),
        "ProviderNotFound",
        "spec.circuitBreaker.fallbackProvider",
    );
    assert_rejected(
        rejection_of(&c, Kind::Provider, "a", "zero-timeout"),
        "InvalidProvider",
        "spec.timeoutSeconds",
    );
    let mut kept = providers(&c);
    kept.sort();
    assert_eq!(kept, ["main", "spare"]);
}

#[test]
fn fallback_to_a_provider_rejected_for_its_own_fallback_is_rejected() {
    // `first` is listed before `second`, whose fallback does not exist: `second` is
    // rejected, so `first` (falling back to it) must be rejected too, whatever the order.
    let text = [
        manifest("Provider", "a", "first", "type: log\ncircuitBreaker: {failureThreshold: 2, recoveryTimeoutSeconds: 60, fallbackProvider: second}"),
        manifest("Provider", "a", "second", "type: log\ncircuitBreaker: {failureThreshold: 2, recoveryTimeoutSeconds: 60, fallbackProvider: nowhere}"),
        provider("a", "fine"),
    ]
    .concat();
    let c = compile_yaml(&text);
    assert_rejected(
        rejection_of(&c, Kind::Provider, "a", "second"),
        "ProviderNotFound",
        "spec.circuitBreaker.fallbackProvider",
    );
    assert_rejected(
        rejection_of(&c, Kind::Provider, "a", "first"),
        "ProviderNotFound",
        "spec.circuitBreaker.fallbackProvider",
    );
    assert_eq!(c.rejections.len(), 2, "{:#?}", c.rejections);
    assert_eq!(providers(&c), ["fine"]);
}

// ---------------------------------------------------------------------------------------
// Quotas and state machines

#[test]
fn quota_windows_and_overage_are_checked() {
    let text = [
        provider("a", "spare"),
        manifest("Quota", "a", "hourly", "tenant: t1\nlimit: 500\nwindow: 1h"),
        manifest(
            "Quota",
            "a",
            "seconds",
            "tenant: t1\nlimit: 5\nwindow: '90'\noverage: warn",
        ),
        manifest(
            "Quota",
            "a",
            "degrade",
            "tenant: t1\nlimit: 5\nwindow: 15m\noverage: degrade\nfallbackProvider: spare",
        ),
        manifest("Quota", "a", "weekly", "tenant: t1\nlimit: 5\nwindow: 1w"),
        manifest(
            "Quota",
            "a",
            "zero-window",
            "tenant: t1\nlimit: 5\nwindow: 0s",
        ),
        manifest(
            "Quota",
            "a",
            "zero-limit",
            "tenant: t1\nlimit: 0\nwindow: 1h",
        ),
        manifest(
            "Quota",
            "a",
            "degrade-nowhere",
            "tenant: t1\nlimit: 5\nwindow: 1h\noverage: degrade",
        ),
        manifest(
            "Quota",
            "a",
            "degrade-missing",
            "tenant: t1\nlimit: 5\nwindow: 1h\noverage: degrade\nfallbackProvider: missing",
        ),
        manifest(
            "Quota",
            "a",
            "bad-overage",
            "tenant: t1\nlimit: 5\nwindow: 1h\noverage: explode",
        ),
    ]
    .concat();
    let c = compile_yaml(&text);
    assert_eq!(c.rejections.len(), 6, "{:#?}", c.rejections);
    assert_rejected(
        rejection_of(&c, Kind::Quota, "a", "weekly"),
        "InvalidQuota",
        "spec.window",
    );
    assert_rejected(
        rejection_of(&c, Kind::Quota, "a", "zero-window"),
        "InvalidQuota",
        "spec.window",
    );
    assert_rejected(
        rejection_of(&c, Kind::Quota, "a", "zero-limit"),
        "InvalidQuota",
        "spec.limit",
    );
    assert_rejected(
        rejection_of(&c, Kind::Quota, "a", "degrade-nowhere"),
        "InvalidQuota",
        "spec.fallbackProvider",
    );
    assert_rejected(
        rejection_of(&c, Kind::Quota, "a", "degrade-missing"),
        "ProviderNotFound",
        "spec.fallbackProvider",
    );
    assert_rejected(
        rejection_of(&c, Kind::Quota, "a", "bad-overage"),
        "InvalidSpec",
        "spec.overage",
    );
    let mut kept: Vec<&str> = c.snapshot.quotas.iter().map(|q| q.name.as_str()).collect();
    kept.sort();
    assert_eq!(kept, ["degrade", "hourly", "seconds"]);
}

#[test]
fn state_machine_states_are_checked() {
    let good = "states: [open, acknowledged, resolved]\ninitialState: open\ntransitions:\n  - {from: open, to: acknowledged}\n  - {from: acknowledged, to: resolved, notify: true}\ntimeouts:\n  - {state: acknowledged, afterSeconds: 3600, transitionTo: open}";
    let text = [
        manifest("StateMachine", "a", "alert", good),
        manifest("StateMachine", "a", "bad-initial", "states: [open, closed]\ninitialState: pending"),
        manifest("StateMachine", "a", "bad-transition", "states: [open, closed]\ninitialState: open\ntransitions: [{from: open, to: reopened}]"),
        manifest("StateMachine", "a", "bad-timeout", "states: [open, closed]\ninitialState: open\ntimeouts: [{state: open, afterSeconds: 60, transitionTo: gone}]"),
        manifest("StateMachine", "a", "zero-timeout", "states: [open, closed]\ninitialState: open\ntimeouts: [{state: open, afterSeconds: 0, transitionTo: closed}]"),
        manifest("StateMachine", "a", "no-states", "states: []\ninitialState: open"),
        rule("a", "drives-alert", "condition: {field: action.action_type, eq: alert}\naction: {type: stateMachine, stateMachine: alert, fingerprintFields: [action.metadata.cluster]}"),
        rule("a", "drives-broken", "condition: {field: action.action_type, eq: alert}\naction: {type: stateMachine, stateMachine: bad-initial}"),
        rule("a", "bad-fingerprint", "condition: {field: action.action_type, eq: alert}\naction: {type: stateMachine, stateMachine: alert, fingerprintFields: [cluster]}"),
    ]
    .concat();
    let c = compile_yaml(&text);
    assert_eq!(c.rejections.len(), 7, "{:#?}", c.rejections);
    assert_rejected(
        rejection_of(&c, Kind::StateMachine, "a", "bad-initial"),
        "InvalidStateMachine",
        "spec.initialState",
    );
    assert_rejected(
        rejection_of(&c, Kind::StateMachine, "a", "bad-transition"),
        "InvalidStateMachine",
        "spec.transitions[0].to",
    );
    assert_rejected(
        rejection_of(&c, Kind::StateMachine, "a", "bad-timeout"),
        "InvalidStateMachine",
        "spec.timeouts[0].transitionTo",
    );
    assert_rejected(
        rejection_of(&c, Kind::StateMachine, "a", "zero-timeout"),
        "InvalidStateMachine",
        "spec.timeouts[0].afterSeconds",
    );
    assert_rejected(
        rejection_of(&c, Kind::StateMachine, "a", "no-states"),
        "InvalidStateMachine",
        "spec.states",
    );
    assert_rejected(
        rejection_of(&c, Kind::Rule, "a", "drives-broken"),
        "StateMachineNotFound",
        "spec.action.stateMachine",
    );
    assert_rejected(
        rejection_of(&c, Kind::Rule, "a", "bad-fingerprint"),
        "InvalidFieldPath",
        "spec.action.fingerprintFields[0]",
    );
    let machines: Vec<&str> = c
        .snapshot
        .state_machines
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(machines, ["alert"]);
    assert_eq!(rules(&c), ["drives-alert"]);
}

// ---------------------------------------------------------------------------------------
// Acteon rule files

const ACTEON_FILE: &str = r#"
rules:
  - name: dedup-sensor-readings
    priority: 2
    description: Duplicate readings are dropped
    condition:
      all:
        - field: action.tenant
          eq: smartbuilding-hq
        - field: action.action_type
          in_list: [sensor_reading, sensor_batch]
        - not:
            field: action.payload.device_id
            starts_with: "test-"
        - any:
            - field: action.payload.site
              ends_with: "_eu"
            - field: action.payload.subject
              matches: "(?i)^\\[prod\\]"
            - state_seen: "{{action.payload.device_id}}"
              within_seconds: 30
    action:
      type: deduplicate
      ttl_seconds: 60
      key: "{{action.payload.device_id}}"
  - name: humidity-by-floor
    priority: 4
    timezone: Europe/Berlin
    condition:
      field: time.hour
      gte: 8
    action:
      type: group
      group_by: [payload.floor]
      group_wait_seconds: 30
      max_group_size: 10
  - name: patch-version
    priority: 5
    enabled: false
    condition:
      field: action.payload.pipeline_version
      exists: false
    action:
      type: modify
      changes: {pipeline_version: "2", nested_key: {keep_me: true}}
  - name: hot-sensor-approval
    priority: 6
    cel: 'action.payload.value > 85'
    action:
      type: request_approval
      notify_provider: approvers
      timeout_seconds: 600
"#;

const EQUIVALENT_MANIFESTS: &str = r#"
apiVersion: acteon.dev/v1alpha1
kind: Provider
metadata: {name: approvers, namespace: acteon-system}
spec: {type: log}
---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {name: dedup-sensor-readings, namespace: acteon-system}
spec:
  priority: 2
  description: Duplicate readings are dropped
  condition:
    all:
      - {field: action.tenant, eq: smartbuilding-hq}
      - {field: action.action_type, inList: [sensor_reading, sensor_batch]}
      - not: {field: action.payload.device_id, startsWith: "test-"}
      - any:
          - {field: action.payload.site, endsWith: "_eu"}
          - {field: action.payload.subject, matches: "(?i)^\\[prod\\]"}
          - {stateSeen: "{{action.payload.device_id}}", withinSeconds: 30}
  action: {type: deduplicate, ttlSeconds: 60, key: "{{action.payload.device_id}}"}
---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {name: humidity-by-floor, namespace: acteon-system}
spec:
  priority: 4
  timezone: Europe/Berlin
  condition: {field: time.hour, gte: 8}
  action: {type: group, groupBy: [payload.floor], groupWaitSeconds: 30, maxGroupSize: 10}
---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {name: patch-version, namespace: acteon-system}
spec:
  priority: 5
  enabled: false
  condition: {field: action.payload.pipeline_version, exists: false}
  action: {type: modify, changes: {pipeline_version: "2", nested_key: {keep_me: true}}}
---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {name: hot-sensor-approval, namespace: acteon-system}
spec:
  priority: 6
  cel: 'action.payload.value > 85'
  action: {type: requestApproval, notifyProvider: approvers, timeoutSeconds: 600}
"#;

#[test]
fn acteon_rule_file_compiles_like_camel_case_manifests_in_the_shared_namespace() {
    let provider_doc = parse_text("providers.yaml", EQUIVALENT_MANIFESTS)
        .unwrap()
        .into_iter()
        .filter(|d| d.id.kind == Kind::Provider);
    let mut from_file = parse_text("rules.yaml", ACTEON_FILE).expect("rule file parses");
    assert_eq!(from_file.len(), 4);
    assert!(
        from_file
            .iter()
            .all(|d| d.id.kind == Kind::Rule && d.id.namespace.is_none())
    );
    from_file.extend(provider_doc);
    let file = compile(&from_file, &CompileOptions::default());
    assert!(file.rejections.is_empty(), "{:#?}", file.rejections);

    let manifests = parse_text("manifests.yaml", EQUIVALENT_MANIFESTS).unwrap();
    let man = compile(&manifests, &CompileOptions::default());
    assert!(man.rejections.is_empty(), "{:#?}", man.rejections);

    assert_eq!(file.snapshot.rules.len(), 4);
    assert_eq!(file.snapshot.rules.len(), man.snapshot.rules.len());
    for (a, b) in file.snapshot.rules.iter().zip(&man.snapshot.rules) {
        assert_eq!(a.name, b.name);
        assert_eq!(a.namespace, None, "rules of Acteon files are shared");
        assert_eq!(
            b.namespace, None,
            "rules of the shared namespace are shared"
        );
        assert_eq!(a.spec, b.spec, "rule {}", a.name);
    }
    // The payload patch keeps its snake_case keys.
    let patch = file
        .snapshot
        .rules
        .iter()
        .find(|r| r.name == "patch-version")
        .unwrap();
    let json = serde_json::to_value(&patch.spec).unwrap();
    assert_eq!(
        json["action"]["changes"],
        serde_json::json!({"pipeline_version": "2", "nested_key": {"keep_me": true}})
    );
}

#[test]
fn acteon_rule_file_errors_name_the_rule() {
    let text = "rules:\n  - name: fine\n    condition: {field: action.tenant, eq: t}\n    action: {type: suppress}\n  - name: broken\n    condition: {field: action.tenant, matches: '(x'}\n    action: {type: suppress}\n";
    let docs = parse_text("rules.yaml", text).unwrap();
    let c = compile(&docs, &CompileOptions::default());
    assert_eq!(c.rejections.len(), 1, "{:#?}", c.rejections);
    let e = &c.rejections[0];
    assert_eq!(e.reason, "InvalidRegex");
    assert_eq!(e.field.as_deref(), Some("spec.condition.matches"));
    assert_eq!(
        e.object
            .as_ref()
            .map(|o| (o.kind, o.namespace.clone(), o.name.as_str())),
        Some((Kind::Rule, None, "broken"))
    );
    assert!(
        e.source.contains("rules.yaml") && e.source.contains("rules[1]"),
        "{e}"
    );
    assert_eq!(rules(&c), ["fine"]);

    // A key Acteon reads that this gateway does not run yet is named as such.
    let not_yet = parse_text(
        "rules.yaml",
        "rules:\n  - name: r\n    mute_time_intervals: [nights]\n    condition: {field: action.tenant, eq: t}\n    action: {type: suppress}\n",
    )
    .unwrap_err();
    assert_eq!(not_yet.len(), 1);
    assert_eq!(not_yet[0].reason, "InvalidRuleFile");
    assert_eq!(
        not_yet[0].field.as_deref(),
        Some("rules[0].mute_time_intervals")
    );
    assert_eq!(not_yet[0].message, "not supported yet: mute_time_intervals");
}

#[test]
fn acteon_keys_acteon_ignores_compile_with_warnings() {
    let dir = std::env::temp_dir().join(format!("acteon-warn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("rules.yaml");
    let text = "rules:\n  - name: r\n    when: {}\n    condition: {field: action.tenant, eq: t, comment: why}\n    action: {type: suppress, default_next: x}\n";
    std::fs::write(&path, text).expect("write");
    let docs = parse_text("rules.yaml", text).expect("accepted");
    let c = compile(&docs, &CompileOptions::default());
    assert!(c.rejections.is_empty(), "{:#?}", c.rejections);
    assert_eq!(rules(&c), ["r"]);
    let warnings = acteon_api::compile::acteon::warnings_in_paths(std::slice::from_ref(&dir));
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    for at in [
        "rules[0].when",
        "rules[0].condition.comment",
        "rules[0].action.default_next",
    ] {
        assert!(
            warnings.iter().any(|w| w.contains(at)),
            "{at}: {warnings:?}"
        );
    }
    // The repository's own Acteon files have nothing to warn about.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    assert_eq!(
        acteon_api::compile::acteon::warnings_in_paths(&[
            root.join("rules"),
            root.join("config/samples")
        ]),
        Vec::<String>::new()
    );
}

// ---------------------------------------------------------------------------------------
// YAML problems

/// Runs `f` on another thread and fails if it takes longer than five seconds.
fn within_5s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("parsing hung (or panicked)")
}

#[test]
fn yaml_syntax_error_mid_stream_is_an_error_and_does_not_hang() {
    let text = [
        rule("a", "first", GOOD_RULE),
        "apiVersion: acteon.dev/v1alpha1\nkind: Rule\nmetadata: {name: broken, namespace: a\nspec: [unclosed\n---\n".to_owned(),
        rule("a", "third", GOOD_RULE),
    ]
    .concat();
    let result = within_5s(move || parse_text("multi.yaml", &text));
    let errors = result.expect_err("a syntax error is an error");
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].reason, "InvalidManifest");
    assert!(
        errors[0].source.starts_with("multi.yaml#2"),
        "the error names the document: {}",
        errors[0]
    );
    assert!(errors[0].message.contains("YAML"), "{}", errors[0]);
}

#[test]
fn yaml_syntax_error_in_first_document_does_not_hang() {
    let text = format!("key: [1, 2\n---\n{}", rule("a", "second", GOOD_RULE));
    let errors =
        within_5s(move || parse_text("multi.yaml", &text)).expect_err("a syntax error is an error");
    assert!(
        errors[0].source.starts_with("multi.yaml#1"),
        "{}",
        errors[0]
    );
}

#[test]
fn bad_manifest_envelopes_name_the_field() {
    let cases: &[(&str, &str)] = &[
        ("kind: Rule\nmetadata: {name: r}\nspec: {}\n", "apiVersion"),
        (
            "apiVersion: acteon.dev/v1\nkind: Rule\nmetadata: {name: r}\nspec: {}\n",
            "apiVersion",
        ),
        (
            "apiVersion: acteon.dev/v1alpha1\nkind: Rulez\nmetadata: {name: r}\nspec: {}\n",
            "kind",
        ),
        (
            "apiVersion: acteon.dev/v1alpha1\nkind: Rule\nmetadata: {name: Bad_Name}\nspec: {}\n",
            "metadata.name",
        ),
        (
            "apiVersion: acteon.dev/v1alpha1\nkind: Rule\nmetadata: {namespace: a}\nspec: {}\n",
            "metadata.name",
        ),
        (
            "apiVersion: acteon.dev/v1alpha1\nkind: Rule\nmetadata: {name: r}\n",
            "spec",
        ),
    ];
    for (text, field) in cases {
        let errors = parse_text("bad.yaml", text).expect_err(text);
        assert_eq!(errors.len(), 1, "{text}: {errors:#?}");
        assert_eq!(errors[0].reason, "InvalidManifest", "{text}");
        assert_eq!(
            errors[0].field.as_deref(),
            Some(*field),
            "{text}: {}",
            errors[0]
        );
    }
}

// ---------------------------------------------------------------------------------------
// Snapshot digest and order

fn sample_text(ttl: u64) -> String {
    [
        provider("a", "pager"),
        provider("acteon-system", "shared"),
        rule("a", "dedup", &format!("priority: 2\ncondition: {{field: action.tenant, eq: t1}}\naction: {{type: deduplicate, ttlSeconds: {ttl}}}")),
        rule("a", "reroute", "priority: 5\ncondition: {field: action.tenant, eq: t1}\naction: {type: reroute, targetProvider: pager}"),
        rule("acteon-system", "global", "priority: 1\ncondition: {field: action.tenant, eq: t1}\naction: {type: suppress}"),
        manifest("Quota", "a", "hourly", "tenant: t1\nlimit: 500\nwindow: 1h"),
    ]
    .concat()
}

#[test]
fn digest_is_stable_for_equal_input_and_changes_with_the_spec() {
    let a = compile_yaml(&sample_text(60));
    let b = compile_yaml(&sample_text(60));
    assert!(a.rejections.is_empty(), "{:#?}", a.rejections);
    assert!(!a.snapshot.digest.is_empty());
    assert_eq!(a.snapshot.digest, b.snapshot.digest);
    assert_eq!(a.snapshot, b.snapshot);

    let changed = compile_yaml(&sample_text(61));
    assert_ne!(
        a.snapshot.digest, changed.snapshot.digest,
        "a changed ttlSeconds changes the digest"
    );

    // The digest is of the content: re-sealing does not change it, the version is not part of it.
    let mut resealed = a.snapshot.clone();
    resealed.version = 42;
    resealed.seal();
    assert_eq!(resealed.digest, a.snapshot.digest);
}

#[test]
fn digest_does_not_depend_on_document_order() {
    // The operator lists objects from its cache in no particular order; equal content
    // must still give an equal snapshot (and digest), or every gateway reloads for nothing.
    let docs = parse_text("test.yaml", &sample_text(60)).unwrap();
    let forward = compile(&docs, &CompileOptions::default());
    let mut reversed_docs = docs.clone();
    reversed_docs.reverse();
    let reversed = compile(&reversed_docs, &CompileOptions::default());
    assert!(reversed.rejections.is_empty(), "{:#?}", reversed.rejections);
    assert_eq!(forward.snapshot, reversed.snapshot);
    assert_eq!(forward.snapshot.digest, reversed.snapshot.digest);
}

#[test]
fn rules_come_out_in_priority_then_namespace_then_name_order() {
    let text = [
        rule(
            "b",
            "zeta",
            "priority: 5\ncondition: {field: action.tenant, eq: t1}\naction: {type: suppress}",
        ),
        rule(
            "a",
            "zeta",
            "priority: 5\ncondition: {field: action.tenant, eq: t1}\naction: {type: suppress}",
        ),
        rule(
            "a",
            "alpha",
            "priority: 5\ncondition: {field: action.tenant, eq: t1}\naction: {type: suppress}",
        ),
        rule(
            "acteon-system",
            "shared",
            "priority: 5\ncondition: {field: action.tenant, eq: t1}\naction: {type: suppress}",
        ),
        rule(
            "z",
            "first",
            "priority: -1\ncondition: {field: action.tenant, eq: t1}\naction: {type: suppress}",
        ),
        rule(
            "a",
            "last",
            "priority: 100\ncondition: {field: action.tenant, eq: t1}\naction: {type: suppress}",
        ),
        rule(
            "a",
            "default-priority",
            "condition: {field: action.tenant, eq: t1}\naction: {type: suppress}",
        ),
    ]
    .concat();
    let expected = [
        (Some("z"), "first"),
        (Some("a"), "default-priority"),
        (None, "shared"),
        (Some("a"), "alpha"),
        (Some("a"), "zeta"),
        (Some("b"), "zeta"),
        (Some("a"), "last"),
    ];
    let docs = parse_text("test.yaml", &text).unwrap();
    for attempt in 0..3 {
        let mut docs = docs.clone();
        docs.rotate_left(attempt * 2);
        let c = compile(&docs, &CompileOptions::default());
        assert!(c.rejections.is_empty(), "{:#?}", c.rejections);
        let got: Vec<(Option<&str>, &str)> = c
            .snapshot
            .rules
            .iter()
            .map(|r| (r.namespace.as_deref(), r.name.as_str()))
            .collect();
        assert_eq!(got, expected, "input rotated by {}", attempt * 2);
    }
}

#[test]
fn an_acteon_rule_and_a_shared_manifest_with_one_name_collide() {
    let file = "rules:\n  - name: same\n    condition: {field: action.tenant, eq: t}\n    action: {type: suppress}\n";
    let manifest = "apiVersion: acteon.dev/v1alpha1\nkind: Rule\nmetadata: {name: same, namespace: acteon-system}\nspec:\n  condition: {field: action.tenant, eq: t}\n  action: {type: allow}\n";
    let mut docs = acteon_api::compile::parse_text("a.yaml", file).expect("parses");
    docs.extend(acteon_api::compile::parse_text("b.yaml", manifest).expect("parses"));
    let compiled =
        acteon_api::compile::compile(&docs, &acteon_api::compile::CompileOptions::default());
    assert_eq!(compiled.rejections.len(), 1, "{:?}", compiled.rejections);
    assert_eq!(compiled.rejections[0].reason, "Duplicate");
    assert!(compiled.rejections[0].source.starts_with("b.yaml"));
    assert_eq!(
        compiled.snapshot.rules.len(),
        1,
        "the first definition stays"
    );
    assert_eq!(
        compiled.snapshot.rules[0].spec.action,
        acteon_api::crd::RuleAction::Suppress
    );
}
