//! Rule evaluation cost as the rule set grows: with the index, an action only looks at the
//! rules filed under its (namespace, tenant, action type), so 10,000 rules should cost about
//! what 10 do.
//!
//! Each tenant `tenant-T` owns 10 rules: five for `type-0` and five for `type-1`, one of each
//! kind in priority order modify → deduplicate → throttle → suppress → reroute. The measured
//! action (`tenant-0`, `type-0`, severity 5) therefore has five candidates whatever the size
//! and matches four of them (modify, deduplicate, throttle, then the terminal suppress).
//!
//! Run with `cargo bench -p acteon-gateway --bench rules`.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

use acteon_api::condition::{Condition, FieldOp};
use acteon_api::crd::{RuleAction, RuleSpec};
use acteon_api::snapshot::Entry;
use acteon_gateway::action::Action;
use acteon_gateway::rules::RuleSet;
use chrono::Utc;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use serde_json::json;

const SIZES: [usize; 3] = [10, 1_000, 10_000];

/// Rules per tenant; half of them per action type.
const RULES_PER_TENANT: usize = 10;
const TYPES: usize = 2;

fn field(path: &str, op: FieldOp) -> Condition {
    Condition::Field {
        field: path.to_owned(),
        op,
    }
}

fn rule(i: usize) -> Entry<RuleSpec> {
    let tenant = i / RULES_PER_TENANT;
    let action_type = i % TYPES;
    let action = match (i / TYPES) % 5 {
        0 => RuleAction::Modify {
            changes: json!({"enriched": true, "rule": i}),
        },
        1 => RuleAction::Deduplicate {
            ttl_seconds: Some(60),
            key: None,
        },
        2 => RuleAction::Throttle {
            max_count: 100,
            window_seconds: 1,
            key: None,
        },
        3 => RuleAction::Suppress,
        _ => RuleAction::Reroute {
            target_provider: "fallback".into(),
        },
    };
    let condition = Condition::All(vec![
        field(
            "action.tenant",
            FieldOp::Eq(json!(format!("tenant-{tenant}"))),
        ),
        field(
            "action.action_type",
            FieldOp::Eq(json!(format!("type-{action_type}"))),
        ),
        field("action.payload.severity", FieldOp::Gte(json!(3))),
    ]);
    Entry {
        namespace: Some("bench".into()),
        name: format!("rule-{i:05}"),
        generation: None,
        source: "bench".into(),
        spec: RuleSpec {
            priority: i as i32,
            description: None,
            enabled: true,
            condition: Some(condition),
            cel: None,
            timezone: None,
            action,
        },
    }
}

fn rule_set(size: usize) -> RuleSet {
    let entries: Vec<Entry<RuleSpec>> = (0..size).map(rule).collect();
    let set = RuleSet::build(&entries).expect("bench rules compile");
    assert_eq!(set.len(), size);
    assert_eq!(set.unindexed(), 0, "every bench rule should be indexed");
    set
}

fn action(tenant: &str, action_type: &str) -> Action {
    Action {
        id: "0190c9a0-0000-7000-8000-000000000000".into(),
        namespace: "bench".into(),
        tenant: tenant.into(),
        provider: "noop".into(),
        action_type: action_type.into(),
        payload: json!({"severity": 5, "message": "disk almost full", "host": "db-1"}),
        created_at: None,
        metadata: HashMap::new(),
        dedup_key: Some("db-1/disk".into()),
        status: None,
        fingerprint: None,
        trace: None,
    }
}

fn bench_evaluate(c: &mut Criterion) {
    let sets: Vec<(usize, RuleSet)> = SIZES.iter().map(|&n| (n, rule_set(n))).collect();
    let now = Utc::now();

    let matching = action("tenant-0", "type-0");
    for (_, set) in &sets {
        let eval = set.evaluate(&matching, now);
        assert_eq!(
            eval.matched.len(),
            4,
            "the measured action should match modify, dedup, throttle and suppress"
        );
        assert_eq!(eval.gates.len(), 2);
    }
    let mut group = c.benchmark_group("evaluate");
    for (n, set) in &sets {
        group.bench_with_input(BenchmarkId::from_parameter(n), set, |b, set| {
            b.iter(|| set.evaluate(black_box(&matching), now));
        });
    }
    group.finish();

    let unmatched = action("nobody", "type-0");
    for (_, set) in &sets {
        assert!(set.evaluate(&unmatched, now).matched.is_empty());
    }
    let mut group = c.benchmark_group("evaluate_no_match");
    for (n, set) in &sets {
        group.bench_with_input(BenchmarkId::from_parameter(n), set, |b, set| {
            b.iter(|| set.evaluate(black_box(&unmatched), now));
        });
    }
    group.finish();
}

/// One CEL rule (`severity >= 3 && host.startsWith("db")`), matching: the cost of a CEL
/// evaluation (the action converted to CEL values, the expression run).
fn bench_cel(c: &mut Criterion) {
    let entry = Entry {
        namespace: Some("bench".into()),
        name: "cel".into(),
        generation: None,
        source: "bench".into(),
        spec: RuleSpec {
            priority: 1,
            description: None,
            enabled: true,
            condition: None,
            cel: Some(
                r#"action.payload.severity >= 3 && action.payload.host.startsWith("db")"#.into(),
            ),
            timezone: None,
            action: RuleAction::Suppress,
        },
    };
    let set = RuleSet::build(&[entry]).expect("CEL rule compiles");
    let now = Utc::now();
    let matching = action("tenant-0", "type-0");
    assert_eq!(set.evaluate(&matching, now).matched.len(), 1);
    c.bench_function("evaluate_cel", |b| {
        b.iter(|| set.evaluate(black_box(&matching), now));
    });
}

criterion_group! {
    name = benches;
    // Short runs: the whole bench finishes in well under a minute.
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench_evaluate, bench_cel
}
criterion_main!(benches);
