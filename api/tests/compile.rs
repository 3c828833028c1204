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

#[test]
fn chain_delays_timeouts_and_failure_modes_are_bounded() {
    let text = [
        CHAIN_PROVIDERS.to_owned(),
        manifest(
            "Chain",
            "a",
            "fine",
            "timeoutSeconds: 600\nsteps:\n  - {name: one, provider: p, delaySeconds: 5, onFailure: skip}\n  - {name: two, provider: p, onFailure: dlq}",
        ),
        manifest(
            "Chain",
            "a",
            "bad-failure",
            "steps:\n  - {name: one, provider: p, onFailure: retry}",
        ),
        manifest(
            "Chain",
            "a",
            "long-delay",
            "steps:\n  - {name: one, provider: p}\n  - {name: two, provider: p, delaySeconds: 604801}",
        ),
        manifest(
            "Chain",
            "a",
            "no-timeout",
            "timeoutSeconds: 0\nsteps:\n  - {name: one, provider: p}",
        ),
    ]
    .concat();
    let c = compile_yaml(&text);
    assert_eq!(c.rejections.len(), 3, "{:#?}", c.rejections);
    for (name, field) in [
        ("bad-failure", "spec.steps[0].onFailure"),
        ("long-delay", "spec.steps[1].delaySeconds"),
        ("no-timeout", "spec.timeoutSeconds"),
    ] {
        assert_rejected(
            rejection_of(&c, Kind::Chain, "a", name),
            "InvalidChain",
            field,
        );
    }
    assert_eq!(chains(&c), ["fine"]);
}

#[test]
fn chain_parallel_retry_and_on_cancel_are_checked() {
    let text = [
        CHAIN_PROVIDERS.to_owned(),
        manifest(
            "Chain",
            "a",
            "fine",
            "onCancel: {name: undo, provider: p}\nsteps:\n  - name: both\n    retry: {maxAttempts: 2, backoffSeconds: 5}\n    parallel: {join: any, onFailure: bestEffort, timeoutSeconds: 30, steps: [{name: x, provider: p}, {name: y, provider: p}]}",
        ),
        manifest(
            "Chain",
            "a",
            "bad-join",
            "steps:\n  - {name: s, parallel: {join: most, steps: [{name: x, provider: p}]}}",
        ),
        manifest(
            "Chain",
            "a",
            "bad-provider",
            "steps:\n  - {name: s, parallel: {steps: [{name: x, provider: p}, {name: y, provider: nope}]}}",
        ),
        manifest(
            "Chain",
            "a",
            "twice",
            "steps:\n  - {name: s, parallel: {steps: [{name: x, provider: p}, {name: x, provider: p}]}}",
        ),
        manifest(
            "Chain",
            "a",
            "both-kinds",
            "steps:\n  - {name: s, provider: p, parallel: {steps: [{name: x, provider: p}]}}",
        ),
        manifest(
            "Chain",
            "a",
            "retry-zero",
            "steps:\n  - {name: s, provider: p, retry: {maxAttempts: 0}}",
        ),
        manifest(
            "Chain",
            "a",
            "cancel-nowhere",
            "onCancel: {name: undo, provider: nope}\nsteps:\n  - {name: s, provider: p}",
        ),
    ]
    .concat();
    let c = compile_yaml(&text);
    for (name, reason, field) in [
        ("bad-join", "InvalidChain", "spec.steps[0].parallel.join"),
        (
            "bad-provider",
            "ProviderNotFound",
            "spec.steps[0].parallel.steps[1].provider",
        ),
        (
            "twice",
            "InvalidChain",
            "spec.steps[0].parallel.steps[1].name",
        ),
        ("both-kinds", "InvalidChain", "spec.steps[0]"),
        (
            "retry-zero",
            "InvalidChain",
            "spec.steps[0].retry.maxAttempts",
        ),
        (
            "cancel-nowhere",
            "ProviderNotFound",
            "spec.onCancel.provider",
        ),
    ] {
        assert_rejected(rejection_of(&c, Kind::Chain, "a", name), reason, field);
    }
    assert_eq!(c.rejections.len(), 6, "{:#?}", c.rejections);
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
          - {stateSeen: "{{action.payload.device_id}}"}
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

// ---------------------------------------------------------------------------------------
// Group, schedule and state machines (issue 11)

/// Compiles `text` and checks that exactly `expected` (name, reason, field) are rejected
/// (all objects of kind `kind` in namespace `a`); returns the compile for further checks.
fn expect_rejections(text: &str, kind: Kind, expected: &[(&str, &str, &str)]) -> Compiled {
    let c = compile_yaml(text);
    for (name, reason, field) in expected {
        assert_rejected(rejection_of(&c, kind, "a", name), reason, field);
    }
    assert_eq!(
        c.rejections.len(),
        expected.len(),
        "unexpected rejections: {:#?}",
        c.rejections
    );
    c
}

fn group_rule(name: &str, fields: &str) -> String {
    rule(
        "a",
        name,
        &format!("condition: {{field: action.tenant, eq: t1}}\naction: {{type: group, {fields}}}"),
    )
}

fn machines(c: &Compiled) -> Vec<String> {
    c.snapshot
        .state_machines
        .iter()
        .map(|m| m.name.clone())
        .collect()
}

#[test]
fn group_rules_are_checked_field_by_field() {
    let many: Vec<String> = (0..21).map(|i| format!("payload.f{i}")).collect();
    let text = [
        provider("a", "digest"),
        manifest("Provider", "a", "broken", "type: webhook"),
        // Accepted: the shipped sample's short path, full paths, every bound at its edge.
        group_rule("floor", "groupBy: [payload.floor], groupWaitSeconds: 30"),
        group_rule(
            "edges",
            "groupBy: [action.metadata.cluster, tenant, action.payload.site.building], groupWaitSeconds: 0, groupIntervalSeconds: 1, repeatIntervalSeconds: 604800, maxGroupSize: 1000, notifyProvider: digest",
        ),
        group_rule(
            "upper",
            "groupBy: [action_type], groupWaitSeconds: 604800, groupIntervalSeconds: 604800, maxGroupSize: 1",
        ),
        // Rejected, each naming its field.
        group_rule("no-fields", "groupBy: []"),
        group_rule("unknown-path", "groupBy: [payload.floor, floor]"),
        group_rule("empty-key", "groupBy: [payload.]"),
        group_rule("time-path", "groupBy: [time.hour]"),
        group_rule("same-field-twice", "groupBy: [payload.floor, action.payload.floor]"),
        group_rule("too-many-fields", &format!("groupBy: [{}]", many.join(", "))),
        group_rule("wait-too-long", "groupBy: [payload.floor], groupWaitSeconds: 604801"),
        group_rule("zero-interval", "groupBy: [payload.floor], groupIntervalSeconds: 0"),
        group_rule("interval-too-long", "groupBy: [payload.floor], groupIntervalSeconds: 604801"),
        group_rule(
            "repeat-below-interval",
            "groupBy: [payload.floor], groupIntervalSeconds: 300, repeatIntervalSeconds: 60",
        ),
        group_rule(
            "repeat-too-long",
            "groupBy: [payload.floor], repeatIntervalSeconds: 604801",
        ),
        group_rule("empty-group", "groupBy: [payload.floor], maxGroupSize: 0"),
        group_rule("huge-group", "groupBy: [payload.floor], maxGroupSize: 1001"),
        group_rule("unknown-provider", "groupBy: [payload.floor], notifyProvider: nobody"),
        group_rule("rejected-provider", "groupBy: [payload.floor], notifyProvider: broken"),
        group_rule("negative-wait", "groupBy: [payload.floor], groupWaitSeconds: -1"),
    ]
    .concat();
    let c = compile_yaml(&text);
    let expected = [
        ("no-fields", "InvalidAction", "spec.action.groupBy"),
        ("unknown-path", "InvalidFieldPath", "spec.action.groupBy[1]"),
        ("empty-key", "InvalidFieldPath", "spec.action.groupBy[0]"),
        ("time-path", "InvalidFieldPath", "spec.action.groupBy[0]"),
        (
            "same-field-twice",
            "InvalidAction",
            "spec.action.groupBy[1]",
        ),
        ("too-many-fields", "InvalidAction", "spec.action.groupBy"),
        (
            "wait-too-long",
            "InvalidAction",
            "spec.action.groupWaitSeconds",
        ),
        (
            "zero-interval",
            "InvalidAction",
            "spec.action.groupIntervalSeconds",
        ),
        (
            "interval-too-long",
            "InvalidAction",
            "spec.action.groupIntervalSeconds",
        ),
        (
            "repeat-below-interval",
            "InvalidAction",
            "spec.action.repeatIntervalSeconds",
        ),
        (
            "repeat-too-long",
            "InvalidAction",
            "spec.action.repeatIntervalSeconds",
        ),
        ("empty-group", "InvalidAction", "spec.action.maxGroupSize"),
        ("huge-group", "InvalidAction", "spec.action.maxGroupSize"),
        (
            "unknown-provider",
            "ProviderNotFound",
            "spec.action.notifyProvider",
        ),
        (
            "rejected-provider",
            "ProviderNotFound",
            "spec.action.notifyProvider",
        ),
        (
            "negative-wait",
            "InvalidSpec",
            "spec.action.groupWaitSeconds",
        ),
    ];
    for (name, reason, field) in expected {
        assert_rejected(rejection_of(&c, Kind::Rule, "a", name), reason, field);
    }
    assert_eq!(
        c.rejections.len(),
        expected.len() + 1,
        "{:#?}",
        c.rejections
    );
    let msg = |name: &str| rejection_of(&c, Kind::Rule, "a", name).message.clone();
    assert!(
        msg("unknown-path").contains("unknown field path `floor`"),
        "{}",
        msg("unknown-path")
    );
    assert!(
        msg("time-path").contains("evaluation time"),
        "{}",
        msg("time-path")
    );
    assert!(
        msg("same-field-twice").contains("spec.action.groupBy[0]"),
        "{}",
        msg("same-field-twice")
    );
    assert!(
        msg("too-many-fields").contains("at most 20"),
        "{}",
        msg("too-many-fields")
    );
    assert_eq!(msg("wait-too-long"), "must be at most 604800 (7 days)");
    assert_eq!(
        msg("zero-interval"),
        "must be between 1 and 604800 (7 days)"
    );
    assert_eq!(
        msg("repeat-below-interval"),
        "must be at least groupIntervalSeconds (300)"
    );
    assert_eq!(msg("huge-group"), "must be between 1 and 1000");
    assert_eq!(msg("unknown-provider"), "provider `nobody` not found");
    assert_eq!(
        msg("rejected-provider"),
        "provider `broken` is rejected (see its own status)"
    );
    assert_eq!(rules(&c), ["edges", "floor", "upper"]);
    // The new fields reach the snapshot.
    let edges = c.snapshot.rules.iter().find(|r| r.name == "edges").unwrap();
    let json = serde_json::to_value(&edges.spec.action).unwrap();
    assert_eq!(json["repeatIntervalSeconds"], 604800);
    assert_eq!(json["notifyProvider"], "digest");
    assert_eq!(json["groupWaitSeconds"], 0);
}

#[test]
fn schedule_delays_are_bounded_to_seven_days() {
    let schedule = |name: &str, delay: &str| {
        rule(
            "a",
            name,
            &format!(
                "condition: {{field: action.tenant, eq: t1}}\naction: {{type: schedule, delaySeconds: {delay}}}"
            ),
        )
    };
    let text = [
        schedule("one-second", "1"),
        schedule("a-minute", "60"),
        schedule("a-week", "604800"),
        schedule("zero", "0"),
        schedule("a-week-and-a-second", "604801"),
        schedule("negative", "-5"),
        rule(
            "a",
            "no-delay",
            "condition: {field: action.tenant, eq: t1}\naction: {type: schedule}",
        ),
    ]
    .concat();
    let c = expect_rejections(
        &text,
        Kind::Rule,
        &[
            ("zero", "InvalidAction", "spec.action.delaySeconds"),
            (
                "a-week-and-a-second",
                "InvalidAction",
                "spec.action.delaySeconds",
            ),
            ("negative", "InvalidSpec", "spec.action.delaySeconds"),
            ("no-delay", "InvalidSpec", "spec.action.delaySeconds"),
        ],
    );
    assert_eq!(
        rejection_of(&c, Kind::Rule, "a", "zero").message,
        "must be between 1 and 604800 (7 days)"
    );
    assert_eq!(rules(&c), ["a-minute", "a-week", "one-second"]);
}

const ALERT_MACHINE: &str = "states: [firing, acknowledged, resolved]
initialState: firing
terminalStates: [resolved]
notifyProvider: pager
transitions:
  - {from: firing, to: acknowledged}
  - {from: acknowledged, to: firing}
  - {from: firing, to: resolved, notify: true}
  - {from: acknowledged, to: resolved, notify: true}
timeouts:
  - {state: firing, afterSeconds: 3600, transitionTo: resolved}
  - {state: acknowledged, afterSeconds: 604800, transitionTo: firing}";

#[test]
fn a_complete_state_machine_is_accepted_with_every_field_in_the_snapshot() {
    let text = [
        provider("a", "pager"),
        manifest("StateMachine", "a", "alert", ALERT_MACHINE),
        // The minimum: one state, nothing else.
        manifest(
            "StateMachine",
            "a",
            "single",
            "states: [open]\ninitialState: open",
        ),
    ]
    .concat();
    let c = compile_yaml(&text);
    assert!(c.rejections.is_empty(), "{:#?}", c.rejections);
    assert_eq!(machines(&c), ["alert", "single"]);
    let alert = &c.snapshot.state_machines[0];
    assert_eq!(alert.namespace.as_deref(), Some("a"));
    assert_eq!(alert.spec.terminal_states, ["resolved"]);
    assert_eq!(alert.spec.notify_provider.as_deref(), Some("pager"));
    assert_eq!(alert.spec.transitions.len(), 4);
    assert!(alert.spec.transitions[2].notify);
    assert_eq!(alert.spec.timeouts[1].after_seconds, 604800);
}

#[test]
fn state_machine_problems_name_the_field() {
    let sm = |name: &str, spec: &str| manifest("StateMachine", "a", name, spec);
    let many_states: Vec<String> = (0..101).map(|i| format!("s{i}")).collect();
    let many_transitions: String = (0..1001)
        .map(|i| format!("  - {{from: s{}, to: s{}}}\n", i % 40, i / 40 + 41))
        .collect();
    let text = [
        provider("a", "pager"),
        manifest("Provider", "a", "broken", "type: webhook"),
        sm("alert", ALERT_MACHINE),
        sm("no-states", "states: []\ninitialState: open"),
        sm("too-many-states", &format!("states: [{}]\ninitialState: s0", many_states.join(", "))),
        sm("state-twice", "states: [open, closed, open]\ninitialState: open"),
        sm("empty-state", "states: [open, '']\ninitialState: open"),
        sm("long-state", &format!("states: [open, {}]\ninitialState: open", "x".repeat(64))),
        sm("spaced-state", "states: [open, ' closed']\ninitialState: open"),
        sm("bad-initial", "states: [open, closed]\ninitialState: pending"),
        sm("unknown-terminal", "states: [open, closed]\ninitialState: open\nterminalStates: [done]"),
        sm("terminal-twice", "states: [open, closed]\ninitialState: open\nterminalStates: [closed, closed]"),
        sm("initial-terminal", "states: [open, closed]\ninitialState: open\nterminalStates: [open]"),
        sm("unknown-from", "states: [open, closed]\ninitialState: open\ntransitions: [{from: new, to: closed}]"),
        sm("unknown-to", "states: [open, closed]\ninitialState: open\ntransitions: [{from: open, to: reopened}]"),
        sm("leaves-terminal", "states: [open, closed]\ninitialState: open\nterminalStates: [closed]\ntransitions: [{from: open, to: closed}, {from: closed, to: open}]"),
        sm("transition-twice", "states: [open, closed]\ninitialState: open\ntransitions: [{from: open, to: closed}, {from: open, to: closed, notify: true}]"),
        sm("too-many-transitions", &format!(
            "states: [{}]\ninitialState: s0\ntransitions:\n{many_transitions}",
            (0..100).map(|i| format!("s{i}")).collect::<Vec<_>>().join(", ")
        )),
        sm("timeout-unknown-state", "states: [open, closed]\ninitialState: open\ntimeouts: [{state: gone, afterSeconds: 60, transitionTo: closed}]"),
        sm("timeout-unknown-target", "states: [open, closed]\ninitialState: open\ntimeouts: [{state: open, afterSeconds: 60, transitionTo: stale}]"),
        sm("timeout-zero", "states: [open, closed]\ninitialState: open\ntimeouts: [{state: open, afterSeconds: 0, transitionTo: closed}]"),
        sm("timeout-too-long", "states: [open, closed]\ninitialState: open\ntimeouts: [{state: open, afterSeconds: 604801, transitionTo: closed}]"),
        sm("timeout-twice", "states: [open, closed, stale]\ninitialState: open\ntimeouts: [{state: open, afterSeconds: 60, transitionTo: closed}, {state: open, afterSeconds: 120, transitionTo: stale}]"),
        sm("timeout-to-itself", "states: [open, closed]\ninitialState: open\ntimeouts: [{state: open, afterSeconds: 60, transitionTo: open}]"),
        sm("timeout-leaves-terminal", "states: [open, closed]\ninitialState: open\nterminalStates: [closed]\ntimeouts: [{state: closed, afterSeconds: 60, transitionTo: open}]"),
        sm("unknown-notify", "states: [open]\ninitialState: open\nnotifyProvider: nobody"),
        sm("rejected-notify", "states: [open]\ninitialState: open\nnotifyProvider: broken"),
        sm("unknown-key", "states: [open]\ninitialState: open\nfinalStates: [open]"),
        sm("no-initial", "states: [open]"),
    ]
    .concat();
    let c = compile_yaml(&text);
    let expected = [
        ("no-states", "InvalidStateMachine", "spec.states"),
        ("too-many-states", "InvalidStateMachine", "spec.states"),
        ("state-twice", "InvalidStateMachine", "spec.states[2]"),
        ("empty-state", "InvalidStateMachine", "spec.states[1]"),
        ("long-state", "InvalidStateMachine", "spec.states[1]"),
        ("spaced-state", "InvalidStateMachine", "spec.states[1]"),
        ("bad-initial", "InvalidStateMachine", "spec.initialState"),
        (
            "unknown-terminal",
            "InvalidStateMachine",
            "spec.terminalStates[0]",
        ),
        (
            "terminal-twice",
            "InvalidStateMachine",
            "spec.terminalStates[1]",
        ),
        (
            "initial-terminal",
            "InvalidStateMachine",
            "spec.terminalStates[0]",
        ),
        (
            "unknown-from",
            "InvalidStateMachine",
            "spec.transitions[0].from",
        ),
        (
            "unknown-to",
            "InvalidStateMachine",
            "spec.transitions[0].to",
        ),
        (
            "leaves-terminal",
            "InvalidStateMachine",
            "spec.transitions[1].from",
        ),
        (
            "transition-twice",
            "InvalidStateMachine",
            "spec.transitions[1]",
        ),
        (
            "too-many-transitions",
            "InvalidStateMachine",
            "spec.transitions",
        ),
        (
            "timeout-unknown-state",
            "InvalidStateMachine",
            "spec.timeouts[0].state",
        ),
        (
            "timeout-unknown-target",
            "InvalidStateMachine",
            "spec.timeouts[0].transitionTo",
        ),
        (
            "timeout-zero",
            "InvalidStateMachine",
            "spec.timeouts[0].afterSeconds",
        ),
        (
            "timeout-too-long",
            "InvalidStateMachine",
            "spec.timeouts[0].afterSeconds",
        ),
        (
            "timeout-twice",
            "InvalidStateMachine",
            "spec.timeouts[1].state",
        ),
        (
            "timeout-to-itself",
            "InvalidStateMachine",
            "spec.timeouts[0].transitionTo",
        ),
        (
            "timeout-leaves-terminal",
            "InvalidStateMachine",
            "spec.timeouts[0].state",
        ),
        ("unknown-notify", "ProviderNotFound", "spec.notifyProvider"),
        ("rejected-notify", "ProviderNotFound", "spec.notifyProvider"),
        ("unknown-key", "InvalidSpec", "spec.finalStates"),
        ("no-initial", "InvalidSpec", "spec.initialState"),
    ];
    for (name, reason, field) in expected {
        assert_rejected(
            rejection_of(&c, Kind::StateMachine, "a", name),
            reason,
            field,
        );
    }
    assert_eq!(
        c.rejections.len(),
        expected.len() + 1,
        "{:#?}",
        c.rejections
    );
    let msg = |name: &str| {
        rejection_of(&c, Kind::StateMachine, "a", name)
            .message
            .clone()
    };
    assert_eq!(msg("too-many-states"), "has 101 states; at most 100");
    assert_eq!(
        msg("state-twice"),
        "`open` is listed twice (also spec.states[0])"
    );
    assert_eq!(msg("unknown-to"), "`reopened` is not one of spec.states");
    assert!(
        msg("initial-terminal").contains("spec.initialState"),
        "{}",
        msg("initial-terminal")
    );
    assert!(
        msg("leaves-terminal").contains("`closed` is terminal"),
        "{}",
        msg("leaves-terminal")
    );
    assert_eq!(
        msg("too-many-transitions"),
        "has 1001 transitions; at most 1000"
    );
    assert_eq!(
        msg("timeout-too-long"),
        "must be between 1 and 604800 (7 days)"
    );
    assert!(
        msg("timeout-twice").contains("at most one per state"),
        "{}",
        msg("timeout-twice")
    );
    assert_eq!(
        msg("rejected-notify"),
        "provider `broken` is rejected (see its own status)"
    );
    assert_eq!(machines(&c), ["alert"]);
}

#[test]
fn state_machine_rules_need_an_accepted_machine_in_scope_and_action_fields() {
    let drive = |ns: &str, name: &str, machine: &str, fields: &str| {
        rule(
            ns,
            name,
            &format!(
                "condition: {{field: action.action_type, eq: alert}}\naction: {{type: stateMachine, stateMachine: {machine}, fingerprintFields: [{fields}]}}"
            ),
        )
    };
    let many: Vec<String> = (0..21).map(|i| format!("metadata.k{i}")).collect();
    let text = [
        provider("a", "pager"),
        manifest("StateMachine", "a", "alert", ALERT_MACHINE),
        manifest(
            "StateMachine",
            "a",
            "broken",
            "states: [open]\ninitialState: open\ntransitions: [{from: open, to: nowhere}]",
        ),
        manifest(
            "StateMachine",
            "acteon-system",
            "shared",
            "states: [open, closed]\ninitialState: open",
        ),
        manifest(
            "StateMachine",
            "b",
            "b-only",
            "states: [open]\ninitialState: open",
        ),
        // Accepted: own namespace, shared namespace, Acteon's unprefixed paths, no fields.
        drive(
            "a",
            "own",
            "alert",
            "action.metadata.cluster, action.payload.alert_key",
        ),
        drive(
            "a",
            "shared-machine",
            "shared",
            "action_type, metadata.cluster, metadata.service",
        ),
        drive("a", "no-fields", "alert", ""),
        // Rejected.
        drive("a", "missing", "nothing", "metadata.cluster"),
        drive("a", "uses-broken", "broken", "metadata.cluster"),
        drive("a", "other-namespace", "b-only", "metadata.cluster"),
        drive("a", "bad-field", "alert", "metadata.cluster, cluster"),
        drive("a", "time-field", "alert", "time.date"),
        drive(
            "a",
            "field-twice",
            "alert",
            "metadata.cluster, action.metadata.cluster",
        ),
        drive("a", "too-many-fields", "alert", &many.join(", ")),
    ]
    .concat();
    let c = compile_yaml(&text);
    let expected = [
        (
            "missing",
            "StateMachineNotFound",
            "spec.action.stateMachine",
        ),
        (
            "uses-broken",
            "StateMachineNotFound",
            "spec.action.stateMachine",
        ),
        (
            "other-namespace",
            "StateMachineNotFound",
            "spec.action.stateMachine",
        ),
        (
            "bad-field",
            "InvalidFieldPath",
            "spec.action.fingerprintFields[1]",
        ),
        (
            "time-field",
            "InvalidFieldPath",
            "spec.action.fingerprintFields[0]",
        ),
        (
            "field-twice",
            "InvalidAction",
            "spec.action.fingerprintFields[1]",
        ),
        (
            "too-many-fields",
            "InvalidAction",
            "spec.action.fingerprintFields",
        ),
    ];
    for (name, reason, field) in expected {
        assert_rejected(rejection_of(&c, Kind::Rule, "a", name), reason, field);
    }
    assert_rejected(
        rejection_of(&c, Kind::StateMachine, "a", "broken"),
        "InvalidStateMachine",
        "spec.transitions[0].to",
    );
    assert_eq!(
        c.rejections.len(),
        expected.len() + 1,
        "{:#?}",
        c.rejections
    );
    let msg = |name: &str| rejection_of(&c, Kind::Rule, "a", name).message.clone();
    assert_eq!(msg("missing"), "state machine `nothing` not found");
    assert_eq!(
        msg("uses-broken"),
        "state machine `broken` is rejected (see its own status)"
    );
    assert_eq!(msg("other-namespace"), "state machine `b-only` not found");
    let mut kept = rules(&c);
    kept.sort();
    assert_eq!(kept, ["no-fields", "own", "shared-machine"]);
    let mut kept = machines(&c);
    kept.sort();
    assert_eq!(kept, ["alert", "b-only", "shared"]);
    // The shared machine applies to every namespace.
    let shared = c
        .snapshot
        .state_machines
        .iter()
        .find(|m| m.name == "shared")
        .unwrap();
    assert_eq!(shared.namespace, None);
}

#[test]
fn acteon_rule_files_take_the_snake_case_group_schedule_and_state_machine_keys() {
    // The seed's spellings (README "Event Grouping & State Machines", guide 003), plus
    // repeat_interval_seconds and notify_provider.
    let file = r#"
rules:
  - name: group-cluster-alerts
    condition:
      field: action.action_type
      starts_with: cluster_
    action:
      type: group
      group_by:
        - metadata.cluster
        - metadata.severity
      group_wait_seconds: 60
      group_interval_seconds: 300
      repeat_interval_seconds: 3600
      max_group_size: 100
      notify_provider: digest
  - name: schedule-energy-reports
    condition:
      field: action.payload.sensor_type
      eq: energy
    action:
      type: schedule
      delay_seconds: 60
  - name: alert-state-machine
    condition:
      field: action.action_type
      eq: alert
    action:
      type: state_machine
      state_machine: alert
      fingerprint_fields:
        - action_type
        - metadata.cluster
        - metadata.service
"#;
    let manifests = r#"
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {name: group-cluster-alerts, namespace: acteon-system}
spec:
  condition: {field: action.action_type, startsWith: cluster_}
  action: {type: group, groupBy: [metadata.cluster, metadata.severity], groupWaitSeconds: 60, groupIntervalSeconds: 300, repeatIntervalSeconds: 3600, maxGroupSize: 100, notifyProvider: digest}
---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {name: schedule-energy-reports, namespace: acteon-system}
spec:
  condition: {field: action.payload.sensor_type, eq: energy}
  action: {type: schedule, delaySeconds: 60}
---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {name: alert-state-machine, namespace: acteon-system}
spec:
  condition: {field: action.action_type, eq: alert}
  action: {type: stateMachine, stateMachine: alert, fingerprintFields: [action_type, metadata.cluster, metadata.service]}
"#;
    let shared = "apiVersion: acteon.dev/v1alpha1\nkind: Provider\nmetadata: {name: digest, namespace: acteon-system}\nspec: {type: log}\n---\napiVersion: acteon.dev/v1alpha1\nkind: StateMachine\nmetadata: {name: alert, namespace: acteon-system}\nspec:\n  states: [firing, acknowledged, resolved]\n  initialState: firing\n  terminalStates: [resolved]\n  transitions: [{from: firing, to: acknowledged}, {from: acknowledged, to: resolved}]\n  timeouts: [{state: firing, afterSeconds: 3600, transitionTo: resolved}]\n";
    let mut from_file = parse_text("rules.yaml", file).expect("rule file parses");
    from_file.extend(parse_text("shared.yaml", shared).unwrap());
    let a = compile(&from_file, &CompileOptions::default());
    assert!(a.rejections.is_empty(), "{:#?}", a.rejections);
    let mut from_manifests = parse_text("manifests.yaml", manifests).unwrap();
    from_manifests.extend(parse_text("shared.yaml", shared).unwrap());
    let b = compile(&from_manifests, &CompileOptions::default());
    assert!(b.rejections.is_empty(), "{:#?}", b.rejections);
    assert_eq!(a.snapshot.rules.len(), 3);
    for (x, y) in a.snapshot.rules.iter().zip(&b.snapshot.rules) {
        assert_eq!((&x.name, &x.spec), (&y.name, &y.spec));
    }
    // Nothing in the file was dropped with a warning.
    let value: serde_json::Value = serde_yaml_ng::from_str(file).unwrap();
    assert_eq!(
        acteon_api::compile::acteon::file_warnings("rules.yaml", &value),
        Vec::<String>::new()
    );
    // The same bounds apply to rule files, reported with the Acteon rule's name.
    let bad = "rules:\n  - name: forever\n    condition: {field: action.tenant, eq: t}\n    action: {type: schedule, delay_seconds: 0}\n";
    let c = compile(
        &parse_text("rules.yaml", bad).unwrap(),
        &CompileOptions::default(),
    );
    assert_eq!(c.rejections.len(), 1, "{:#?}", c.rejections);
    assert_eq!(
        c.rejections[0].field.as_deref(),
        Some("spec.action.delaySeconds")
    );
    assert_eq!(c.rejections[0].object.as_ref().unwrap().name, "forever");
}

#[test]
fn the_repository_samples_compile_without_rejections() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let docs = acteon_api::compile::read_paths(&[root.join("config/samples"), root.join("rules")])
        .expect("samples read");
    let c = compile(&docs, &CompileOptions::default());
    assert!(c.rejections.is_empty(), "{:#?}", c.rejections);
    // Seed 003's parking rules and the sample state machine with the rule that drives it.
    let action_of = |name: &str| {
        c.snapshot
            .rules
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("sample rule {name} missing"))
            .spec
            .action
            .type_name()
    };
    assert_eq!(action_of("group-humidity-readings"), "group");
    assert_eq!(action_of("schedule-energy-reports"), "schedule");
    assert_eq!(action_of("incident-lifecycle"), "stateMachine");
    let machine = c
        .snapshot
        .state_machines
        .iter()
        .find(|m| m.name == "incident")
        .expect("the sample StateMachine");
    assert_eq!(machine.namespace.as_deref(), Some("payments"));
    assert!(!machine.spec.terminal_states.is_empty());
    assert!(machine.spec.notify_provider.is_some());
}

// ---------------------------------------------------------------------------------------
// Chains in Acteon files: `chains:` in a rule file, `[[chains.definitions]]` in a server
// config (TOML)

/// Seed 003's two chains as its server config spells them (multi-line inline tables, TOML
/// 1.1), with the payloads of `config/samples/iot-chains.yaml`, beside server sections.
const SEED_CHAINS_TOML: &str = r#"
[server]
host = "0.0.0.0"
port = 8080

[state]
backend = "redis"

[circuit_breaker]
enabled = true
failure_threshold = 3

[circuit_breaker.providers.anomaly-detector]
failure_threshold = 2

[chains]
completed_chain_ttl_seconds = 86400

[[chains.definitions]]
name = "telemetry-processing"
timeout_seconds = 300

[[chains.definitions.steps]]
name = "normalize"
provider = "telemetry-normalizer"
action_type = "invoke"
payload_template = {
  device_id = "{{origin.payload.device_id}}",
  sensor_type = "{{origin.payload.sensor_type}}",
  value = "{{origin.payload.value}}"
}

[[chains.definitions.steps.branches]]
field = "body.logged"
operator = "eq"
value = true
target = "detect-anomaly"

[[chains.definitions.steps]]
name = "detect-anomaly"
provider = "anomaly-detector"
action_type = "invoke"
payload_template = {
  device_id = "{{origin.payload.device_id}}",
  value = "{{origin.payload.value}}"
}
default_next = "archive-metrics"

[[chains.definitions.steps.branches]]
field = "success"
operator = "eq"
value = true
target = "publish-event"

[[chains.definitions.steps]]
name = "publish-event"
sub_chain = "critical-alert"
default_next = "archive-metrics"

[[chains.definitions.steps]]
name = "archive-metrics"
provider = "metrics-queue"
action_type = "send_message"
payload_template = { device_id = "{{origin.payload.device_id}}", processed = "true" }

[[chains.definitions]]
name = "critical-alert"
timeout_seconds = 120

[[chains.definitions.steps]]
name = "fan-out-alert"
provider = "alert-fanout"
action_type = "publish"
payload_template = { device_id = "{{origin.payload.device_id}}", severity = "critical" }

[[chains.definitions.steps]]
name = "publish-to-bus"
provider = "event-bus"
action_type = "put_event"
payload_template = { source = "acteon.iot", detail_type = "CriticalAlert" }
"#;

/// The same chains as `chains:` of a rule file, with a rule that starts one.
const SEED_CHAINS_YAML: &str = r#"
rules:
  - name: chain-sensor-readings
    priority: 10
    condition: {field: action.action_type, eq: sensor_reading}
    action: {type: chain, chain: telemetry-processing}
chains:
  - name: telemetry-processing
    timeout_seconds: 300
    steps:
      - name: normalize
        provider: telemetry-normalizer
        action_type: invoke
        payload_template:
          device_id: "{{origin.payload.device_id}}"
          sensor_type: "{{origin.payload.sensor_type}}"
          value: "{{origin.payload.value}}"
        branches:
          - {field: body.logged, operator: eq, value: true, target: detect-anomaly}
      - name: detect-anomaly
        provider: anomaly-detector
        action_type: invoke
        payload_template: {device_id: "{{origin.payload.device_id}}", value: "{{origin.payload.value}}"}
        branches:
          - {field: success, operator: eq, value: true, target: publish-event}
        default_next: archive-metrics
      - name: publish-event
        sub_chain: critical-alert
        default_next: archive-metrics
      - name: archive-metrics
        provider: metrics-queue
        action_type: send_message
        payload_template: {device_id: "{{origin.payload.device_id}}", processed: "true"}
  - name: critical-alert
    timeout_seconds: 120
    steps:
      - name: fan-out-alert
        provider: alert-fanout
        action_type: publish
        payload_template: {device_id: "{{origin.payload.device_id}}", severity: critical}
      - name: publish-to-bus
        provider: event-bus
        action_type: put_event
        payload_template: {source: acteon.iot, detail_type: CriticalAlert}
"#;

fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The sample IoT providers, moved to the shared namespace (where the chains of Acteon
/// files, which are shared, find them).
fn shared_iot_providers() -> Vec<acteon_api::compile::Document> {
    let path = repo_root().join("config/samples/iot-providers.yaml");
    let text = std::fs::read_to_string(&path).expect("sample providers");
    let mut docs = parse_text("iot-providers.yaml", &text).expect("sample providers parse");
    for d in &mut docs {
        d.id.namespace = Some("acteon-system".into());
    }
    docs
}

/// Compiles the documents of an Acteon file with the shared IoT providers; no rejections.
fn compile_with_providers(mut docs: Vec<acteon_api::compile::Document>) -> Compiled {
    docs.extend(shared_iot_providers());
    let c = compile(&docs, &CompileOptions::default());
    assert!(c.rejections.is_empty(), "{:#?}", c.rejections);
    c
}

/// (name, spec) of each chain of the sample manifests `config/samples/iot-chains.yaml`.
fn sample_chain_specs() -> Vec<(String, serde_json::Value)> {
    let docs = acteon_api::compile::read_paths(&[
        repo_root().join("config/samples/iot-chains.yaml"),
        repo_root().join("config/samples/iot-providers.yaml"),
    ])
    .expect("samples read");
    let c = compile(&docs, &CompileOptions::default());
    assert!(c.rejections.is_empty(), "{:#?}", c.rejections);
    chain_specs(&c)
}

fn chain_specs(c: &Compiled) -> Vec<(String, serde_json::Value)> {
    c.snapshot
        .chains
        .iter()
        .map(|e| (e.name.clone(), serde_json::to_value(&e.spec).unwrap()))
        .collect()
}

#[test]
fn acteon_chains_compile_like_the_sample_chain_manifests() {
    let sample = sample_chain_specs();
    assert_eq!(sample.len(), 2);

    let toml = acteon_api::compile::parse_file("acteon.toml", SEED_CHAINS_TOML)
        .unwrap_or_else(|e| panic!("{e:#?}"));
    assert!(
        toml.iter()
            .all(|d| d.id.kind == Kind::Chain && d.id.namespace.is_none())
    );
    let from_toml = compile_with_providers(toml);
    assert_eq!(chain_specs(&from_toml), sample);
    assert!(
        from_toml
            .snapshot
            .chains
            .iter()
            .all(|c| c.namespace.is_none())
    );

    let yaml = parse_text("chains.yaml", SEED_CHAINS_YAML).unwrap_or_else(|e| panic!("{e:#?}"));
    let from_yaml = compile_with_providers(yaml);
    assert_eq!(chain_specs(&from_yaml), sample);
    // The file's rule starts the file's chain.
    assert_eq!(rules(&from_yaml), ["chain-sensor-readings"]);

    // `chains: {definitions: [...]}`, the server config's shape, reads the same.
    let (rules_part, chains_part) = SEED_CHAINS_YAML.split_once("chains:\n").unwrap();
    let indented: String = chains_part.lines().map(|l| format!("  {l}\n")).collect();
    let mapped = format!("{rules_part}chains:\n  definitions:\n{indented}");
    let from_map = compile_with_providers(parse_text("chains.yaml", &mapped).unwrap());
    assert_eq!(chain_specs(&from_map), sample);

    // Payload templates are user data: their keys keep their snake_case.
    let normalize = &from_toml
        .snapshot
        .chains
        .iter()
        .find(|c| c.name == "telemetry-processing")
        .unwrap()
        .spec
        .steps[0];
    assert_eq!(
        normalize.payload_template,
        Some(serde_json::json!({
            "device_id": "{{origin.payload.device_id}}",
            "sensor_type": "{{origin.payload.sensor_type}}",
            "value": "{{origin.payload.value}}"
        }))
    );
    let bus = &from_yaml.snapshot.chains[0].spec.steps[1];
    assert_eq!(
        bus.payload_template.as_ref().unwrap()["detail_type"],
        "CriticalAlert"
    );
}

#[test]
fn acteon_chain_problems_name_the_field_as_the_file_spells_it() {
    // A branch to a step the chain does not have, from YAML and from TOML.
    let yaml = "chains:\n  - name: c\n    steps:\n      - {name: a, provider: event-bus}\n      - name: b\n        provider: event-bus\n        branches: [{field: success, operator: eq, value: true, target: nowhere}]\n";
    let toml = "[[chains.definitions]]\nname = \"c\"\n[[chains.definitions.steps]]\nname = \"a\"\nprovider = \"event-bus\"\n[[chains.definitions.steps]]\nname = \"b\"\nprovider = \"event-bus\"\nsub_chain = \"x\"\n[[chains.definitions.steps.branches]]\nfield = \"success\"\noperator = \"eq\"\nvalue = true\ntarget = \"nowhere\"\n";
    for (file, docs, field) in [
        (
            "chains.yaml",
            parse_text("chains.yaml", yaml).unwrap(),
            "chains[0].steps[1].branches[0].target",
        ),
        (
            "acteon.toml",
            acteon_api::compile::parse_file(
                "acteon.toml",
                &toml.replace("sub_chain = \"x\"\n", ""),
            )
            .unwrap(),
            "chains.definitions[0].steps[1].branches[0].target",
        ),
    ] {
        let mut all = docs;
        all.extend(shared_iot_providers());
        let c = compile(&all, &CompileOptions::default());
        assert_eq!(c.rejections.len(), 1, "{:#?}", c.rejections);
        let e = &c.rejections[0];
        assert_eq!(e.reason, "DanglingStep", "{e}");
        assert_eq!(e.field.as_deref(), Some(field), "{e}");
        assert_eq!(e.source, file);
        assert_eq!(
            e.object
                .as_ref()
                .map(|o| (o.kind, o.namespace.clone(), o.name.as_str())),
            Some((Kind::Chain, None, "c"))
        );
        assert!(e.to_string().contains(field), "{e}");
        assert!(c.snapshot.chains.is_empty());
    }

    // Two of provider / sub_chain / parallel, and a wrong type, in the file's spelling.
    let docs = acteon_api::compile::parse_file("acteon.toml", toml).unwrap();
    let mut all = docs;
    all.extend(shared_iot_providers());
    let c = compile(&all, &CompileOptions::default());
    assert_eq!(
        c.rejections[0].field.as_deref(),
        Some("chains.definitions[0].steps[1]")
    );
    let bad_type = parse_text(
        "chains.yaml",
        "chains:\n  - {name: c, timeout_seconds: soon, steps: [{name: a, provider: event-bus}]}\n",
    )
    .unwrap();
    let c = compile(&bad_type, &CompileOptions::default());
    assert_eq!(c.rejections.len(), 1, "{:#?}", c.rejections);
    assert_eq!(c.rejections[0].reason, "InvalidSpec");
    assert_eq!(
        c.rejections[0].field.as_deref(),
        Some("chains[0].timeout_seconds")
    );

    // Keys Acteon reads that this gateway does not run yet are errors of the file.
    let err = parse_text(
        "chains.yaml",
        "chains:\n  - name: c\n    on_failure: abort_no_dlq\n    steps: [{name: a, provider: event-bus, retry: {max_retries: 2}}]\n",
    )
    .unwrap_err();
    let fields: Vec<_> = err.iter().filter_map(|e| e.field.as_deref()).collect();
    assert_eq!(
        fields,
        [
            "chains[0].on_failure",
            "chains[0].steps[0].retry.max_retries"
        ],
        "{err:#?}"
    );
    // A TOML syntax error says where.
    let err = acteon_api::compile::parse_file("acteon.toml", "[chains\n").unwrap_err();
    assert_eq!(err.len(), 1);
    assert!(
        err[0].message.starts_with("not valid TOML at line 1"),
        "{}",
        err[0]
    );
}

#[test]
fn acteon_chain_files_in_directories_are_read_and_unknown_keys_warn() {
    let dir = std::env::temp_dir().join(format!("acteon-chains-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("acteon.toml"), SEED_CHAINS_TOML).expect("write");
    let yaml = "chains:\n  - name: yaml-chain\n    colour: blue\n    steps:\n      - {name: a, provider: event-bus, note: hi, payload_template: {any_key: 1}}\n";
    std::fs::write(dir.join("chains.yaml"), yaml).expect("write");
    let docs = acteon_api::compile::read_paths(std::slice::from_ref(&dir));
    let warnings = acteon_api::compile::acteon::warnings_in_paths(std::slice::from_ref(&dir));
    std::fs::remove_dir_all(&dir).ok();

    let c = compile_with_providers(docs.unwrap_or_else(|e| panic!("{e:#?}")));
    assert_eq!(
        chains(&c),
        ["critical-alert", "telemetry-processing", "yaml-chain"]
    );
    let expected = [
        ("acteon.toml: server:", "server setting"),
        ("acteon.toml: state:", "server setting"),
        ("acteon.toml: circuit_breaker:", "server setting"),
        (
            "acteon.toml: chains.completed_chain_ttl_seconds:",
            "server setting",
        ),
        ("chains.yaml: chains[0].colour:", "does not read"),
        ("chains.yaml: chains[0].steps[0].note:", "does not read"),
    ];
    for (at, why) in expected {
        assert!(
            warnings.iter().any(|w| w.contains(at) && w.contains(why)),
            "{at}: {warnings:?}"
        );
    }
    assert_eq!(warnings.len(), expected.len(), "{warnings:?}");
}

#[test]
fn convert_prints_the_chains_of_acteon_files_as_chain_manifests() {
    // The sample-equivalent chains convert to the sample's specs.
    for (file, text) in [
        ("chains.yaml", SEED_CHAINS_YAML),
        ("acteon.toml", SEED_CHAINS_TOML),
    ] {
        let yaml = acteon_api::compile::acteon::to_manifests(file, text, Some("iot"))
            .unwrap_or_else(|e| panic!("{e:#?}"));
        assert!(yaml.contains("kind: Chain"), "{yaml}");
        let mut docs = parse_text("converted.yaml", &yaml).unwrap_or_else(|e| panic!("{e:#?}"));
        docs.extend(
            parse_text(
                "p.yaml",
                &std::fs::read_to_string(repo_root().join("config/samples/iot-providers.yaml"))
                    .unwrap(),
            )
            .unwrap(),
        );
        let c = compile(&docs, &CompileOptions::default());
        assert!(c.rejections.is_empty(), "{:#?}", c.rejections);
        assert_eq!(chain_specs(&c), sample_chain_specs(), "{file}");
    }
    // Names become Kubernetes names, and references to the file's chains follow.
    let text = "rules:\n  - name: start\n    condition: {field: action.tenant, eq: t}\n    action: {type: chain, chain: Main_Chain}\nchains:\n  - name: Main_Chain\n    steps: [{name: a, sub_chain: other_chain}]\n  - name: other_chain\n    steps: [{name: b, provider: event-bus}]\n";
    let yaml = acteon_api::compile::acteon::to_manifests("c.yaml", text, Some("iot")).unwrap();
    for expected in [
        "name: main-chain",
        "name: other-chain",
        "chain: main-chain",
        "subChain: other-chain",
    ] {
        assert!(yaml.contains(expected), "{expected} in {yaml}");
    }
    let mut docs = parse_text("converted.yaml", &yaml).unwrap();
    docs.extend(parse_text("p.yaml", &provider("iot", "event-bus")).unwrap());
    let c = compile(&docs, &CompileOptions::default());
    assert!(c.rejections.is_empty(), "{:#?}", c.rejections);
    assert_eq!(chains(&c), ["main-chain", "other-chain"]);
    assert_eq!(rules(&c), ["start"]);
}
