//! Differential test of rule semantics on absent, null and wrong-typed fields.
//!
//! The rule files in `tests/fixtures/differential/` are written in Acteon's format, in the
//! style of its examples (order checks on totals, PHI routing, incident triage). Actions
//! are generated from every combination of field variants; the expected outcome of each is
//! computed here by an oracle written from the README's "Absent values" table — not by the
//! gateway's own evaluator — and compared with what the real binary answers, on the memory
//! backend and on Redis, for real dispatches and for dry runs.

use serde_json::{Value, json};

use crate::common::Server;

/// The value a generated action gives a payload field.
#[derive(Clone, Debug)]
enum Var {
    Absent,
    Set(Value),
}

fn vars(values: &[Value]) -> Vec<Var> {
    std::iter::once(Var::Absent)
        .chain(values.iter().cloned().map(Var::Set))
        .collect()
}

fn payload(fields: &[(&str, &Var)]) -> Value {
    let mut map = serde_json::Map::new();
    for (name, var) in fields {
        if let Var::Set(v) = var {
            map.insert((*name).to_owned(), v.clone());
        }
    }
    Value::Object(map)
}

// ---------------------------------------------------------------- the oracle
// One function per operator, written from the documented table: an absent field, or a
// path through something that is not an object, reads as null; `eq`/`ne`/`in_list`
// compare with null like any value (numbers by value, different types unequal); ordering
// and string operators are false on null and across types; `exists` is true for a present,
// non-null value.

fn get<'a>(payload: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(payload, |v, k| v.as_object()?.get(*k))
}

fn same(a: Option<&Value>, lit: &Value) -> bool {
    match (a.unwrap_or(&Value::Null), lit) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (x, y) => x == y,
    }
}

fn ne(a: Option<&Value>, lit: &Value) -> bool {
    !same(a, lit)
}

fn in_list(a: Option<&Value>, items: &[Value]) -> bool {
    items.iter().any(|i| same(a, i))
}

fn num(a: Option<&Value>) -> Option<f64> {
    a.and_then(Value::as_f64)
}

fn gte(a: Option<&Value>, n: f64) -> bool {
    num(a).is_some_and(|x| x >= n)
}

fn gt(a: Option<&Value>, n: f64) -> bool {
    num(a).is_some_and(|x| x > n)
}

fn lte(a: Option<&Value>, n: f64) -> bool {
    num(a).is_some_and(|x| x <= n)
}

fn text(a: Option<&Value>) -> Option<&str> {
    a.and_then(Value::as_str)
}

/// `contains`: an element of a list, or a substring of a string.
fn contains(a: Option<&Value>, needle: &str) -> bool {
    match a {
        Some(Value::Array(items)) => items.iter().any(|i| i.as_str() == Some(needle)),
        Some(Value::String(s)) => s.contains(needle),
        _ => false,
    }
}

fn exists(a: Option<&Value>) -> bool {
    a.is_some_and(|v| !v.is_null())
}

fn looks_like_ssn(s: &str) -> bool {
    s.split(|c: char| !c.is_ascii_digit() && c != '-').any(|w| {
        let p: Vec<&str> = w.split('-').collect();
        p.len() == 3
            && [3, 2, 4]
                .iter()
                .zip(&p)
                .all(|(n, part)| part.len() == *n && part.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// What the rules of the fixture files must make of an action (first terminal rule wins,
/// in priority order; every rule is shared, so every action meets every rule).
fn expected(provider: &str, action_type: &str, p: &Value) -> Expect {
    let f = |path: &[&str]| get(p, path);
    let order = action_type == "place_order";
    let incident = action_type == "incident";
    let body = f(&["body"]);
    let rules: [(&str, bool, Expect); 10] = [
        (
            "deny-sanctioned-regions",
            order
                && in_list(
                    f(&["shipping_country"]),
                    &[json!("NK"), json!("SY"), json!("IR")],
                ),
            Expect::Suppressed("deny-sanctioned-regions", "deny"),
        ),
        (
            "suppress-empty-orders",
            order && lte(f(&["total_cents"]), 0.0),
            Expect::Suppressed("suppress-empty-orders", "suppress"),
        ),
        (
            "hold-unverified-large-orders",
            order
                && ne(f(&["customer", "verified"]), &json!(true))
                && gt(f(&["total_cents"]), 10000.0),
            Expect::Suppressed("hold-unverified-large-orders", "suppress"),
        ),
        (
            "review-high-value",
            order && gte(f(&["total_cents"]), 50000.0),
            Expect::Rerouted("review-high-value", "fraud-review"),
        ),
        (
            "block-phi-unencrypted-email",
            provider == "secure-email"
                && ne(f(&["encrypted"]), &json!(true))
                && (text(body).is_some_and(looks_like_ssn) || contains_str(body, "diagnosis")),
            Expect::Suppressed("block-phi-unencrypted-email", "suppress"),
        ),
        (
            "reroute-results-to-portal",
            ne(f(&["encrypted"]), &json!(true))
                && ["sms-service", "secure-email"].contains(&provider)
                && text(body).is_some_and(|s| s.starts_with("Your lab result")),
            Expect::Rerouted("reroute-results-to-portal", "patient-portal"),
        ),
        (
            "drop-informational",
            incident && same(f(&["severity"]), &json!("info")),
            Expect::Suppressed("drop-informational", "suppress"),
        ),
        (
            "page-critical",
            incident
                && (in_list(f(&["severity"]), &[json!("critical"), json!("sev1")])
                    || gte(f(&["affected_users"]), 1000.0)),
            Expect::Rerouted("page-critical", "oncall-pager"),
        ),
        (
            "ignore-flapping",
            incident && contains(f(&["tags"]), "flapping"),
            Expect::Suppressed("ignore-flapping", "suppress"),
        ),
        (
            "unowned-to-triage-queue",
            incident && !exists(f(&["service"])),
            Expect::Rerouted("unowned-to-triage-queue", "triage-queue"),
        ),
    ];
    rules
        .into_iter()
        .find(|(_, matched, _)| *matched)
        .map_or(Expect::Executed, |(_, _, e)| e)
}

/// `contains` with a string needle on the `body` field (a list body counts by element).
fn contains_str(a: Option<&Value>, needle: &str) -> bool {
    contains(a, needle)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    Executed,
    /// Rule name and the dry-run verdict (`deny` or `suppress`).
    Suppressed(&'static str, &'static str),
    /// Rule name and the new provider.
    Rerouted(&'static str, &'static str),
}

impl Expect {
    /// The real dispatch's outcome, described the way [`describe`] describes an answer.
    fn outcome(self, provider: &str) -> String {
        match self {
            Expect::Executed => format!("Executed:{provider}"),
            Expect::Suppressed(rule, _) => format!("Suppressed:{rule}"),
            Expect::Rerouted(_, to) => format!("Rerouted:{to}"),
        }
    }

    /// The dry run's verdict, matched rule and provider.
    fn dry_run(self, provider: &str) -> String {
        match self {
            Expect::Executed => format!("allow:-:{provider}"),
            Expect::Suppressed(rule, verdict) => format!("{verdict}:{rule}:{provider}"),
            Expect::Rerouted(rule, to) => format!("reroute:{rule}:{to}"),
        }
    }
}

fn describe(outcome: &Value, provider: &str) -> String {
    if let Some(o) = outcome.get("Executed") {
        assert_eq!(o["status"], "success", "{outcome}");
        return format!("Executed:{provider}");
    }
    if let Some(o) = outcome.get("Suppressed") {
        return format!("Suppressed:{}", o["rule"].as_str().unwrap_or("?"));
    }
    if let Some(o) = outcome.get("Rerouted") {
        assert_eq!(o["original_provider"], provider, "{outcome}");
        return format!("Rerouted:{}", o["new_provider"].as_str().unwrap_or("?"));
    }
    if let Some(o) = outcome.get("DryRun") {
        return format!(
            "{}:{}:{}",
            o["verdict"].as_str().unwrap_or("?"),
            o["matched_rule"].as_str().unwrap_or("-"),
            o["would_be_provider"].as_str().unwrap_or("?")
        );
    }
    format!("unexpected:{outcome}")
}

// ------------------------------------------------------------- the generator

/// Every combination of the variants of each family's fields.
fn generated_actions() -> Vec<Value> {
    let mut out = Vec::new();
    let base = |provider: &str, action_type: &str, payload: Value| {
        json!({"namespace": "difftest", "tenant": "t1", "provider": provider,
               "action_type": action_type, "payload": payload})
    };
    // Orders: 6 × 9 × 7 combinations.
    let countries = vars(&[
        json!(null),
        json!("NK"),
        json!("US"),
        json!(5),
        json!(["NK"]),
    ]);
    let totals = vars(&[
        json!(null),
        json!(0),
        json!(-5),
        json!(5000),
        json!(20000.5),
        json!(60000),
        json!("60000"),
        json!(true),
    ]);
    let customers = vars(&[
        json!(null),
        json!({}),
        json!({"verified": true}),
        json!({"verified": false}),
        json!({"verified": "true"}),
        json!("gold"),
    ]);
    for c in &countries {
        for t in &totals {
            for cu in &customers {
                let p = payload(&[
                    ("shipping_country", c),
                    ("total_cents", t),
                    ("customer", cu),
                ]);
                out.push(base("orders", "place_order", p));
            }
        }
    }
    // PHI: 3 providers × 6 × 8.
    let encrypted = vars(&[
        json!(null),
        json!(true),
        json!(false),
        json!("true"),
        json!(1),
    ]);
    let bodies = vars(&[
        json!(null),
        json!("SSN 123-45-6789 on file"),
        json!("your diagnosis is ready"),
        json!("Your lab result is in"),
        json!("hello"),
        json!(42),
        json!(["diagnosis"]),
    ]);
    for provider in ["secure-email", "sms-service", "patient-portal"] {
        for e in &encrypted {
            for b in &bodies {
                let p = payload(&[("encrypted", e), ("body", b)]);
                out.push(base(provider, "notification", p));
            }
        }
    }
    // Triage: 6 × 4 × 4 × 3.
    let severities = vars(&[
        json!(null),
        json!("info"),
        json!("critical"),
        json!("low"),
        json!(3),
    ]);
    let users = vars(&[json!(null), json!(5000), json!("5000")]);
    let tags = vars(&[json!(null), json!(["flapping"]), json!("flapping-host")]);
    let services = vars(&[json!(null), json!("api")]);
    for s in &severities {
        for u in &users {
            for t in &tags {
                for sv in &services {
                    let p = payload(&[
                        ("severity", s),
                        ("affected_users", u),
                        ("tags", t),
                        ("service", sv),
                    ]);
                    out.push(base("incidents", "incident", p));
                }
            }
        }
    }
    out
}

fn fields(action: &Value) -> (&str, &str, &Value) {
    (
        action["provider"].as_str().unwrap_or_default(),
        action["action_type"].as_str().unwrap_or_default(),
        &action["payload"],
    )
}

async fn batch(c: &reqwest::Client, server: &Server, actions: &[Value], dry: bool) -> Vec<Value> {
    let mut results = Vec::with_capacity(actions.len());
    for chunk in actions.chunks(500) {
        let url = server.url(if dry {
            "/v1/dispatch/batch?dry_run=true"
        } else {
            "/v1/dispatch/batch"
        });
        let r = c.post(url).json(chunk).send().await.expect("batch sent");
        assert_eq!(r.status().as_u16(), 200);
        let items: Vec<Value> = r.json().await.expect("batch answer");
        assert_eq!(items.len(), chunk.len());
        results.extend(items);
    }
    results
}

/// Sends every generated action (dry run, then for real) and lists every mismatch.
async fn check(server: &Server) {
    let actions = generated_actions();
    assert!(actions.len() >= 200, "{} actions", actions.len());
    let c = reqwest::Client::new();
    let dry = batch(&c, server, &actions, true).await;
    let real = batch(&c, server, &actions, false).await;
    let mut wrong = Vec::new();
    for ((action, dry), real) in actions.iter().zip(&dry).zip(&real) {
        let (provider, action_type, p) = fields(action);
        let want = expected(provider, action_type, p);
        let (got_dry, got_real) = (describe(dry, provider), describe(real, provider));
        if got_dry != want.dry_run(provider) || got_real != want.outcome(provider) {
            wrong.push(format!(
                "{provider}/{action_type} {p}: expected {} / {}, got {got_dry} / {got_real}",
                want.dry_run(provider),
                want.outcome(provider)
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} actions differ from the documented semantics:\n{}",
        wrong.len(),
        actions.len(),
        wrong[..wrong.len().min(40)].join("\n")
    );
    // None of these inputs is an evaluation error any more: no rule error is counted.
    let metrics = c
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let errors: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("acteon_rule_errors_total{"))
        .collect();
    assert!(errors.is_empty(), "rule errors counted: {errors:?}");
}

const FIXTURES: &str = "gateway/tests/fixtures/differential";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absent_null_and_wrong_types_on_memory() {
    let server = Server::start(&["--config", FIXTURES, "--state", "memory"]);
    check(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absent_null_and_wrong_types_on_redis() {
    let url = std::env::var("ACTEON_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let prefix = format!("difftest-{}", std::process::id());
    let server = Server::start(&[
        "--config",
        FIXTURES,
        "--state",
        &url,
        "--state-prefix",
        &prefix,
    ]);
    check(&server).await;
}

#[test]
fn the_oracle_reads_the_safety_rule_closed() {
    // The example: no `encrypted` field at all must still be blocked.
    let p = json!({"body": "diagnosis attached"});
    assert_eq!(
        expected("secure-email", "notification", &p),
        Expect::Suppressed("block-phi-unencrypted-email", "suppress")
    );
    assert!(looks_like_ssn("SSN 123-45-6789 on file"));
    assert!(!looks_like_ssn("1234-45-6789"));
}
