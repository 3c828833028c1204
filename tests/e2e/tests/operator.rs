//! The operator and two gateways as processes against a real kube-apiserver (SPEC §2, §3).
//! The operator runs with the token that only the chart's RBAC empowers, so a missing
//! permission fails these tests.

use std::time::{Duration, Instant};

use acteon_e2e::*;
use serde_json::{Value, json};

/// One operator + gateways setup on its own namespaces, lease and state prefix.
struct Setup {
    kube: &'static Kube,
    state: String,
    prefix: String,
    lease: String,
    namespaces: Vec<String>,
    /// The seal key file shared by the operator and the gateways (gateways refuse
    /// snapshots that do not authenticate under it).
    key_file: String,
}

impl Setup {
    fn new(state: String, namespaces: &[&str]) -> Setup {
        let kube = Kube::get();
        kube.ensure_installed();
        for ns in namespaces {
            kube.create_namespace(ns);
        }
        Setup {
            kube,
            state,
            prefix: unique_name("e2e"),
            lease: unique_name("lease"),
            namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
            key_file: seal_key_file(),
        }
    }

    fn operator(&self, identity: &str, extra: &[&str]) -> Proc {
        let metrics = format!("127.0.0.1:{}", free_port());
        let namespaces = self.namespaces.join(",");
        let mut args = vec![
            "--state",
            &self.state,
            "--state-prefix",
            &self.prefix,
            "--namespaces",
            &namespaces,
            "--shared-namespace",
            "acteon-e2e-none",
            "--lease-name",
            &self.lease,
            "--lease-namespace",
            "acteon-system",
            "--identity",
            identity,
            "--metrics-listen",
            &metrics,
        ];
        if !extra.contains(&"--seal-key-file") && !extra.contains(&"--seal-key-secret") {
            args.extend_from_slice(&["--seal-key-file", &self.key_file]);
        }
        args.extend_from_slice(extra);
        start_operator(&args)
    }

    fn gateway(&self) -> (Proc, u16) {
        start_gateway(&[
            "--state",
            &self.state,
            "--state-prefix",
            &self.prefix,
            "--shared-namespace",
            "acteon-e2e-none",
            "--config-poll-seconds",
            "5",
            "--seal-key-file",
            &self.key_file,
        ])
    }

    fn lease_holder(&self) -> String {
        self.kube
            .kubectl_ok(&[
                "get",
                "lease",
                "-n",
                "acteon-system",
                &self.lease,
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ])
            .trim()
            .to_owned()
    }
}

/// A new seal key in a file of this test's directory; its path.
fn seal_key_file() -> String {
    let path = test_dir().join(format!("{}.key", unique_name("seal")));
    std::fs::write(&path, acteon_channel::seal::SealKey::generate().to_text()).expect("key");
    path.display().to_string()
}

/// A Provider of type `log` (a YAML document followed by `---`).
fn log_provider(ns: &str, name: &str) -> String {
    format!(
        "apiVersion: acteon.dev/v1alpha1\nkind: Provider\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{type: log}}\n---\n"
    )
}

fn get_json(port: u16, path: &str) -> Option<Value> {
    let (status, body) = http_get(port, path)?;
    (status == 200)
        .then(|| serde_json::from_str(&body).ok())
        .flatten()
}

fn served_version(port: u16) -> Option<u64> {
    get_json(port, "/v1/config")?.get("version")?.as_u64()
}

fn rule_names(port: u16) -> Vec<String> {
    get_json(port, "/v1/rules")
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|r| r.get("name")?.as_str().map(str::to_owned))
        .collect()
}

fn outcome(port: u16, action: &Value) -> Value {
    let (status, body) =
        http_post(port, "/v1/dispatch?dry_run=true", action).expect("gateway answers");
    assert_eq!(status, 200, "dispatch: {body}");
    serde_json::from_str(&body).expect("json outcome")
}

/// The `Ready` condition of every object of `kinds` in `ns`: name → (status, reason).
fn readiness(kube: &Kube, ns: &str, kinds: &str) -> Vec<(String, String, String, String)> {
    let out = kube.kubectl_ok(&["get", kinds, "-n", ns, "-o", "json"]);
    let list: Value = serde_json::from_str(&out).expect("kubectl json");
    list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|o| {
            let ready = o["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready").cloned())
                .unwrap_or(Value::Null);
            (
                format!(
                    "{}/{}",
                    o["kind"].as_str().unwrap_or(""),
                    o["metadata"]["name"].as_str().unwrap_or("")
                ),
                ready["status"].as_str().unwrap_or("").to_owned(),
                ready["reason"].as_str().unwrap_or("").to_owned(),
                ready["message"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn ready_condition(kube: &Kube, kind: &str, ns: &str, name: &str) -> (String, String, String) {
    let out = kube.kubectl_ok(&["get", kind, "-n", ns, name, "-o", "json"]);
    let o: Value = serde_json::from_str(&out).expect("kubectl json");
    let c = o["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready").cloned())
        .unwrap_or(Value::Null);
    (
        c["status"].as_str().unwrap_or("").to_owned(),
        c["reason"].as_str().unwrap_or("").to_owned(),
        c["message"].as_str().unwrap_or("").to_owned(),
    )
}

fn wait_ready(
    kube: &Kube,
    kind: &str,
    ns: &str,
    name: &str,
    want: (&str, &str),
) -> (String, String, String) {
    wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        let c = ready_condition(kube, kind, ns, name);
        (c.0 == want.0 && c.1 == want.1).then_some(c)
    })
    .unwrap_or_else(|| {
        panic!(
            "{kind} {ns}/{name}: Ready never became {want:?}; last {:?}",
            ready_condition(kube, kind, ns, name)
        )
    })
}

fn resource_versions(kube: &Kube, ns: &str) -> Vec<(String, String)> {
    let out = kube.kubectl_ok(&["get", "acteon", "-n", ns, "-o", "json"]);
    let list: Value = serde_json::from_str(&out).expect("kubectl json");
    let mut v: Vec<(String, String)> = list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|o| {
            (
                format!("{}/{}", o["kind"], o["metadata"]["name"]),
                o["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn samples_are_served_by_both_gateways_and_every_object_is_ready() {
    let s = Setup::new(redis_url(), &["iot", "payments"]);
    // The samples use fixed namespaces: start from none of their objects.
    for ns in ["iot", "payments"] {
        s.kube.kubectl_ok(&[
            "delete",
            "rules,providers,chains,statemachines,actionquotas",
            "--all",
            "-n",
            ns,
            "--wait=false",
        ]);
    }
    let (_g1, p1) = s.gateway();
    let (_g2, p2) = s.gateway();
    assert_eq!(
        http_get(p1, "/readyz").map(|r| r.0),
        Some(503),
        "no snapshot yet"
    );
    let _op = s.operator("op-a", &[]);
    let started = Instant::now();
    s.kube.apply_path(&repo_path("config/samples"));
    let expected = [
        "critical-temperature-alert",
        "dedup-sensor-readings",
        "deny-unsigned-firmware",
        "dedup-alerts",
    ];
    for port in [p1, p2] {
        wait_until(Duration::from_secs(20), Duration::from_millis(20), || {
            let names = rule_names(port);
            expected
                .iter()
                .all(|e| names.iter().any(|n| n == e))
                .then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "gateway {port} never served the samples: {:?}",
                rule_names(port)
            )
        });
    }
    let served = started.elapsed();
    wait_until(Duration::from_secs(20), Duration::from_millis(50), || {
        ["iot", "payments"]
            .iter()
            .all(|ns| {
                let r = readiness(s.kube, ns, "acteon");
                !r.is_empty() && r.iter().all(|(_, st, _, _)| st == "True")
            })
            .then_some(())
    })
    .unwrap_or_else(|| panic!("not all Ready: {:?}", readiness(s.kube, "iot", "acteon")));
    println!(
        "samples: served by both gateways after {:?}, all Ready after {:?}",
        served,
        started.elapsed()
    );
    for (name, _, reason, message) in readiness(s.kube, "iot", "acteon") {
        assert_eq!(reason, "Served", "{name}");
        // The samples' circuit breakers are enforced: nothing left to name.
        assert_eq!(message, "served by all 2 gateways", "{name}");
    }
    // The sample StateMachine and the Rule that drives it are among the Ready objects.
    let payments = readiness(s.kube, "payments", "acteon");
    for name in ["StateMachine/incident", "Rule/incident-lifecycle"] {
        assert!(
            payments
                .iter()
                .any(|(n, st, reason, _)| n == name && st == "True" && reason == "Served"),
            "{name}: {payments:?}"
        );
    }
    // The samples behave on the gateway as they do standalone.
    let critical = json!({"namespace": "iot", "tenant": "smartbuilding-hq", "provider": "telemetry",
        "action_type": "sensor_reading", "payload": {"device_id": "t-1", "sensor_type": "temperature", "value": 91}});
    let o = outcome(p2, &critical);
    assert_eq!(
        o["DryRun"]["matched_rule"], "critical-temperature-alert",
        "{o}"
    );
    // `kubectl get acteon` lists every kind with its columns.
    let table = s.kube.kubectl_ok(&["get", "acteon", "-n", "iot"]);
    for needle in [
        "READY",
        "REASON",
        "AGE",
        "PRIORITY",
        "ACTION",
        "rule.acteon.dev/critical-temperature-alert",
        "provider.acteon.dev/alert-fanout",
        "chain.acteon.dev/critical-alert",
        "quota.acteon.dev/smartbuilding-hourly",
    ] {
        assert!(
            table.contains(needle),
            "`kubectl get acteon` lacks {needle}:\n{table}"
        );
    }
    let rules = s.kube.kubectl_ok(&["get", "rules", "-n", "iot"]);
    assert!(
        rules
            .lines()
            .any(|l| l.starts_with("critical-temperature-alert")
                && l.contains("reroute")
                && l.contains("True")
                && l.contains("Served")),
        "{rules}"
    );
    // Unchanged objects are not written again: resourceVersions stay put.
    let before = resource_versions(s.kube, "iot");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        before,
        resource_versions(s.kube, "iot"),
        "status rewritten without a change"
    );
}

#[test]
fn a_broken_rule_is_not_ready_with_an_event_while_the_rest_keeps_working() {
    let ns = unique_name("broken");
    let s = Setup::new(postgres_url(), &[&ns]);
    let out = log_provider(&ns, "out");
    let (_g1, p1) = s.gateway();
    let (_g2, _p2) = s.gateway();
    let _op = s.operator("op-a", &[]);
    s.kube.apply(&format!(
        r#"
{out}apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {{name: good, namespace: {ns}}}
spec:
  priority: 1
  condition: {{field: action.action_type, eq: noise}}
  action: {{type: suppress}}
---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {{name: unknown-provider, namespace: {ns}}}
spec:
  priority: 2
  condition: {{field: action.action_type, eq: page}}
  action: {{type: reroute, targetProvider: nowhere}}
---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {{name: bad-cel, namespace: {ns}}}
spec:
  priority: 3
  cel: 'action.payload.value >'
  action: {{type: deny}}
---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {{name: bad-regex, namespace: {ns}}}
spec:
  priority: 4
  condition: {{field: action.payload.host, matches: "(unclosed"}}
  action: {{type: deny}}
"#
    ));
    wait_ready(s.kube, "rule", &ns, "good", ("True", "Served"));
    let (_, _, msg) = wait_ready(
        s.kube,
        "rule",
        &ns,
        "unknown-provider",
        ("False", "ProviderNotFound"),
    );
    assert!(msg.contains("nowhere"), "{msg}");
    let (_, _, msg) = wait_ready(s.kube, "rule", &ns, "bad-cel", ("False", "InvalidCel"));
    assert!(msg.contains("spec.cel"), "{msg}");
    let (_, _, msg) = wait_ready(s.kube, "rule", &ns, "bad-regex", ("False", "InvalidRegex"));
    assert!(msg.contains("spec.condition"), "{msg}");
    // One Warning Event per rejection, on the object.
    let events = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        let out = s
            .kube
            .kubectl_ok(&["get", "events", "-n", &ns, "-o", "json"]);
        let v: Value = serde_json::from_str(&out).ok()?;
        let items = v["items"].as_array()?.clone();
        let warnings: Vec<(String, String)> = items
            .iter()
            .filter(|e| e["type"] == "Warning")
            .map(|e| {
                (
                    e["involvedObject"]["name"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned(),
                    e["reason"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        (warnings.len() >= 3).then_some(warnings)
    })
    .expect("three Warning Events");
    for (name, reason) in [
        ("unknown-provider", "ProviderNotFound"),
        ("bad-cel", "InvalidCel"),
        ("bad-regex", "InvalidRegex"),
    ] {
        assert!(
            events.contains(&(name.to_owned(), reason.to_owned())),
            "{events:?}"
        );
    }
    // The good rule is live; the broken ones are not in the snapshot.
    let names = rule_names(p1);
    assert!(
        names.contains(&"good".to_owned())
            && !names
                .iter()
                .any(|n| n.starts_with("bad") || n == "unknown-provider"),
        "{names:?}"
    );
    let noise = json!({"namespace": ns, "tenant": "t", "provider": "out", "action_type": "noise", "payload": {}});
    assert_eq!(outcome(p1, &noise)["DryRun"]["matched_rule"], "good");
    // Fixing the CEL makes it live.
    s.kube.apply(&format!(
        r#"
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {{name: bad-cel, namespace: {ns}}}
spec:
  priority: 3
  cel: 'action.payload.value > 5'
  action: {{type: deny}}
"#
    ));
    wait_ready(s.kube, "rule", &ns, "bad-cel", ("True", "Served"));
    let big = json!({"namespace": ns, "tenant": "t", "provider": "out", "action_type": "x", "payload": {"value": 9}});
    let o = outcome(p1, &big);
    assert_eq!(o["DryRun"]["matched_rule"], "bad-cel", "{o}");
    assert_eq!(o["DryRun"]["verdict"], "deny", "{o}");
}

#[test]
fn edits_and_deletions_change_what_gateways_do() {
    let ns = unique_name("edit");
    let s = Setup::new(redis_url(), &[&ns]);
    let out = log_provider(&ns, "out");
    let (_g1, p1) = s.gateway();
    let (_g2, p2) = s.gateway();
    let _op = s.operator("op-a", &[]);
    let rule = |action: &str| {
        format!(
            r#"
{out}apiVersion: acteon.dev/v1alpha1
kind: Provider
metadata: {{name: other, namespace: {ns}}}
spec: {{type: log}}
---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {{name: route, namespace: {ns}}}
spec:
  condition: {{field: action.action_type, eq: alert}}
  action: {action}
"#
        )
    };
    let alert = json!({"namespace": ns, "tenant": "t", "provider": "out", "action_type": "alert", "payload": {}});
    s.kube.apply(&rule("{type: suppress}"));
    wait_ready(s.kube, "rule", &ns, "route", ("True", "Served"));
    assert_eq!(outcome(p1, &alert)["DryRun"]["verdict"], "suppress");
    s.kube
        .apply(&rule("{type: reroute, targetProvider: other}"));
    for port in [p1, p2] {
        wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
            (outcome(port, &alert)["DryRun"]["verdict"] == "reroute").then_some(())
        })
        .expect("the edit reaches every gateway");
    }
    // Deleting the Provider a Rule uses turns the Rule not-ready and takes it out.
    s.kube.delete("provider", &ns, "other");
    let (_, _, msg) = wait_ready(s.kube, "rule", &ns, "route", ("False", "ProviderNotFound"));
    assert!(msg.contains("other"), "{msg}");
    wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
        (!rule_names(p2).contains(&"route".to_owned())).then_some(())
    })
    .expect("the rule left the snapshot");
    // Deleting the Rule removes it for good.
    s.kube.apply(&rule("{type: suppress}"));
    wait_ready(s.kube, "rule", &ns, "route", ("True", "Served"));
    s.kube.delete("rule", &ns, "route");
    wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
        (outcome(p1, &alert)["DryRun"]["verdict"] == "allow").then_some(())
    })
    .expect("deleted rule no longer applies");
}

/// The seed's IoT chains (`config/samples/iot-providers.yaml` + `iot-chains.yaml`, in a
/// namespace of their own) served through the operator: a reading dispatched to one gateway
/// runs `telemetry-processing` with its `critical-alert` sub-chain to the end on the
/// gateways' workers, readable from the other gateway; a run that fails shows on the Chain
/// as `status.executions.lastFailure`, and the census's running count as `running: 0`.
#[test]
fn sample_chains_run_through_the_operator_and_report_on_the_chain() {
    let ns = unique_name("iotc");
    let s = Setup::new(redis_url(), &[&ns]);
    let sample = |file: &str| {
        std::fs::read_to_string(repo_path(&format!("config/samples/{file}")))
            .expect("sample")
            .replace("namespace: iot}", &format!("namespace: {ns}}}"))
    };
    let rule = format!(
        "---\napiVersion: acteon.dev/v1alpha1\nkind: Rule\nmetadata: {{name: chain-readings, namespace: {ns}}}\nspec:\n  condition: {{field: action.action_type, eq: sensor_reading}}\n  action: {{type: chain, chain: telemetry-processing}}\n"
    );
    let (_g1, p1) = s.gateway();
    let (_g2, p2) = s.gateway();
    let _op = s.operator("op-a", &[]);
    s.kube.apply(&format!(
        "{}\n---\n{}{rule}",
        sample("iot-providers.yaml"),
        sample("iot-chains.yaml")
    ));
    for name in ["telemetry-processing", "critical-alert"] {
        wait_ready(s.kube, "chain", &ns, name, ("True", "Served"));
    }
    wait_ready(s.kube, "rule", &ns, "chain-readings", ("True", "Served"));
    let reading = |payload: Value| {
        let action = json!({"namespace": ns, "tenant": "hq", "provider": "telemetry-normalizer",
            "action_type": "sensor_reading", "payload": payload});
        let (status, body) = http_post(p1, "/v1/dispatch", &action).expect("gateway answers");
        assert_eq!(status, 200, "{body}");
        let outcome: Value = serde_json::from_str(&body).expect("json");
        outcome["ChainStarted"]["chain_id"]
            .as_str()
            .unwrap_or_else(|| panic!("not started: {outcome}"))
            .to_owned()
    };
    let run = |id: &str, want: &str| {
        wait_until(Duration::from_secs(20), Duration::from_millis(50), || {
            let path = format!("/v1/chains/{id}?namespace={ns}&tenant=hq");
            get_json(p2, &path).filter(|r| r["status"] == want)
        })
        .unwrap_or_else(|| {
            panic!(
                "run {id} never {want}: {:?}",
                http_get(p2, &format!("/v1/chains/{id}?namespace={ns}&tenant=hq"))
            )
        })
    };
    let ok = run(
        &reading(json!({"device_id": "t-9", "sensor_type": "temperature", "value": 21})),
        "completed",
    );
    assert_eq!(
        ok["execution_path"],
        json!([
            "normalize",
            "detect-anomaly",
            "fan-out-alert",
            "publish-to-bus",
            "publish-event",
            "archive-metrics"
        ]),
        "{ok}"
    );
    assert_eq!(ok["chain"], format!("{ns}/telemetry-processing"));
    assert_eq!(ok["steps"][0]["request"]["device_id"], "t-9", "{ok}");
    // No device id: the first step's template has nothing to render, the run fails.
    let failed = run(&reading(json!({"value": 3})), "failed");
    assert!(
        failed["error"]
            .as_str()
            .unwrap_or_default()
            .contains("device_id"),
        "{failed}"
    );
    let executions = wait_until(Duration::from_secs(40), Duration::from_millis(200), || {
        let out = s.kube.kubectl_ok(&[
            "get",
            "chain",
            "telemetry-processing",
            "-n",
            &ns,
            "-o",
            "jsonpath={.status.executions}",
        ]);
        let e: Value = serde_json::from_str(&out).ok()?;
        (e["running"] == 0 && e["lastFailure"].is_string()).then_some(e)
    })
    .unwrap_or_else(|| {
        panic!(
            "no executions status: {}",
            s.kube.kubectl_ok(&[
                "get",
                "chain",
                "telemetry-processing",
                "-n",
                &ns,
                "-o",
                "yaml"
            ])
        )
    });
    assert!(
        executions["lastFailure"]
            .as_str()
            .unwrap_or_default()
            .contains("device_id"),
        "{executions}"
    );
    assert!(executions["lastFailureTime"].is_string(), "{executions}");
}

/// Valid objects asking for what the gateway does not do yet are served but not `Ready`:
/// a Rule with `requestApproval` says so (Stalled, for Flux), while the objects beside it
/// are Ready, among them a `teams` Provider (a type that was once the example here: every
/// provider type delivers now).
#[test]
fn what_is_not_implemented_is_not_ready() {
    let ns = unique_name("gaps");
    let s = Setup::new(redis_url(), &[&ns]);
    let (_g1, _p1) = s.gateway();
    let _op = s.operator("op-a", &[]);
    s.kube.apply(&format!(
        r#"{out}---
apiVersion: v1
kind: Secret
metadata: {{name: chat-hook, namespace: {ns}}}
stringData: {{url: "http://127.0.0.1:9/hook"}}
---
apiVersion: acteon.dev/v1alpha1
kind: Provider
metadata: {{name: chat, namespace: {ns}}}
spec:
  type: teams
  teams: {{webhookUrlSecretRef: {{name: chat-hook, key: url}}}}
---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {{name: approve, namespace: {ns}}}
spec:
  condition: {{field: action.action_type, eq: deploy}}
  action: {{type: requestApproval, notifyProvider: out}}
---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {{name: plain, namespace: {ns}}}
spec:
  condition: {{field: action.action_type, eq: alert}}
  action: {{type: suppress}}
"#,
        out = log_provider(&ns, "out")
    ));
    wait_ready(s.kube, "rule", &ns, "plain", ("True", "Served"));
    let (_, _, why) = wait_ready(s.kube, "rule", &ns, "approve", ("False", "NotImplemented"));
    assert!(why.contains("requestApproval"), "{why}");
    let stalled = s.kube.kubectl_ok(&[
        "get",
        "rule",
        "approve",
        "-n",
        &ns,
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Stalled\")].reason}",
    ]);
    assert_eq!(stalled.trim(), "NotImplemented");
    wait_ready(s.kube, "provider", &ns, "chat", ("True", "Served"));
}

/// Installing the CRDs takes no name from a built-in resource: `kubectl get quota` still
/// lists ResourceQuotas, and no plural, singular or short name of ours is one of the API
/// server's own resources' names.
#[test]
fn crd_names_do_not_shadow_built_in_resources() {
    let ns = unique_name("names");
    let s = Setup::new(redis_url(), &[&ns]);
    s.kube.apply(&format!(
        "apiVersion: v1\nkind: ResourceQuota\nmetadata: {{name: pods, namespace: {ns}}}\nspec: {{hard: {{pods: \"10\"}}}}\n---\napiVersion: acteon.dev/v1alpha1\nkind: Quota\nmetadata: {{name: budget, namespace: {ns}}}\nspec: {{tenant: t, limit: 5, window: 1h}}\n"
    ));
    let quota = s
        .kube
        .kubectl_ok(&["get", "quota", "-n", &ns, "-o", "name"]);
    assert_eq!(quota.trim(), "resourcequota/pods");
    let ours = s
        .kube
        .kubectl_ok(&["get", "actionquota", "-n", &ns, "-o", "name"]);
    assert_eq!(
        ours.trim(),
        "quota.acteon.dev/budget",
        "kubectl names it by its kind"
    );
    let all = s
        .kube
        .kubectl_ok(&["get", "acteon", "-n", &ns, "-o", "name"]);
    assert!(all.contains("quota.acteon.dev/budget"), "{all}");
    // Every name a built-in resource answers to (its name and short names).
    let table = s
        .kube
        .kubectl_ok(&["api-resources", "--no-headers", "-o", "wide"]);
    let mut builtin = std::collections::BTreeSet::new();
    for line in table.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if line.contains("acteon.dev") || cols.len() < 3 {
            continue;
        }
        builtin.insert(cols[0].to_owned());
        // NAME [SHORTNAMES] APIVERSION NAMESPACED KIND …: short names sit before the version.
        let is_version = |c: &str| {
            c.contains('/')
                || (c.starts_with('v') && c[1..].starts_with(|d: char| d.is_ascii_digit()))
        };
        if !is_version(cols[1]) {
            builtin.extend(cols[1].split(',').map(str::to_owned));
        }
    }
    assert!(
        builtin.contains("quota") && builtin.contains("resourcequotas"),
        "{builtin:?}"
    );
    for crd in [
        "rules",
        "providers",
        "chains",
        "statemachines",
        "actionquotas",
    ] {
        let names = s.kube.kubectl_ok(&[
            "get",
            "crd",
            &format!("{crd}.acteon.dev"),
            "-o",
            "jsonpath={.spec.names.plural} {.spec.names.singular} {.spec.names.shortNames[*]}",
        ]);
        for name in names.split_whitespace() {
            assert!(
                !builtin.contains(name),
                "{crd}: `{name}` is a built-in resource's name"
            );
        }
    }
}

/// A dry run's verdict for `action` on the gateway at `port`; None while it has no
/// snapshot (503).
fn dry_run_verdict(port: u16, action: &Value) -> Option<String> {
    let (status, body) = http_post(port, "/v1/dispatch?dry_run=true", action)?;
    let o: Value = serde_json::from_str(&body).ok().filter(|_| status == 200)?;
    o["DryRun"]["verdict"].as_str().map(str::to_owned)
}

/// Waits (20 s) until the gateway at `port` gives `action` the verdict `want`.
fn wait_for_verdict(port: u16, action: &Value, want: &str) {
    wait_until(Duration::from_secs(20), Duration::from_millis(50), || {
        (dry_run_verdict(port, action).as_deref() == Some(want)).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "gateway {port} never served `{want}`: {:?}",
            dry_run_verdict(port, action)
        )
    })
}

/// Deletes everything the installation keeps in the state backend (its key prefix on
/// Redis, the rows of its schema's tables on Postgres — the schema itself and its migration
/// record stay), as a backend losing its data.
fn wipe_backend(state: &str, prefix: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        if state.starts_with("redis") {
            let client = redis::Client::open(state).expect("redis url");
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .expect("redis");
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{prefix}*"))
                .query_async(&mut conn)
                .await
                .expect("keys");
            assert!(!keys.is_empty(), "nothing under {prefix}");
            let _: i64 = redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .expect("del");
        } else {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(state).await.expect("postgres");
            let tables: Vec<(String,)> = sqlx::query_as(
                "SELECT tablename::text FROM pg_tables WHERE schemaname = $1 \
                     AND tablename <> 'acteon_migrations'",
            )
            .bind(prefix)
            .fetch_all(&mut conn)
            .await
            .expect("tables");
            assert!(!tables.is_empty(), "no tables in schema {prefix}");
            let list: Vec<String> = tables
                .iter()
                .map(|(t,)| format!("\"{prefix}\".\"{t}\""))
                .collect();
            // Names from pg_tables of our own test schema, quoted.
            let truncate = format!("TRUNCATE {}", list.join(", "));
            sqlx::query(sqlx::AssertSqlSafe(truncate))
                .execute(&mut conn)
                .await
                .expect("truncate");
        }
    });
}

/// The state backend loses its data under running processes: the operator notices and
/// publishes again; a gateway started afterwards gets the configuration; the next change —
/// numbered from the start again — reaches the gateway that served a higher version; and
/// `Ready` counts gateways by the snapshot they serve, not by its number.
fn the_configuration_survives_a_wiped_backend(state: String) {
    let ns = unique_name("wipe");
    let s = Setup::new(state, &[&ns]);
    let (_g1, p1) = s.gateway();
    let _op = s.operator("op-a", &[]);
    let rule = |action: &str| {
        format!(
            "{}apiVersion: acteon.dev/v1alpha1\nkind: Rule\nmetadata: {{name: route, namespace: {ns}}}\nspec:\n  condition: {{field: action.action_type, eq: alert}}\n  action: {action}\n",
            log_provider(&ns, "out")
        )
    };
    let alert = json!({"namespace": ns, "tenant": "t", "provider": "out", "action_type": "alert", "payload": {}});
    let serves = |port: u16, want: &str| wait_for_verdict(port, &alert, want);
    for action in [
        "{type: suppress}",
        "{type: deny}",
        "{type: allow}",
        "{type: deny}",
    ] {
        s.kube.apply(&rule(action));
        serves(
            p1,
            action.trim_start_matches("{type: ").trim_end_matches('}'),
        );
    }
    let before = served_version(p1).expect("version");
    assert!(before >= 3, "several publications: {before}");
    wipe_backend(&s.state, &s.prefix);
    // A gateway started after the loss gets the configuration: the operator published it again.
    let (_g2, p2) = s.gateway();
    serves(p2, "deny");
    // The next change is numbered from the start again; both gateways serve it.
    s.kube.apply(&rule("{type: suppress}"));
    serves(p1, "suppress");
    serves(p2, "suppress");
    assert!(
        served_version(p1).expect("version") < before,
        "the version went backwards and was still served"
    );
    wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        let c = ready_condition(s.kube, "rule", &ns, "route");
        (c.0 == "True" && c.2 == "served by all 2 gateways").then_some(())
    })
    .unwrap_or_else(|| panic!("{:?}", ready_condition(s.kube, "rule", &ns, "route")));
}

#[test]
fn redis_configuration_survives_a_wiped_backend() {
    the_configuration_survives_a_wiped_backend(redis_url());
}

#[test]
fn postgres_configuration_survives_a_wiped_backend() {
    the_configuration_survives_a_wiped_backend(postgres_url());
}

/// `--seal-key-secret`: the operator creates the seal key Secret when absent and keeps it
/// as it is afterwards (a restart reads the same key); gateways holding that key serve the
/// snapshots it signs, sealed credentials included.
#[test]
fn the_operator_creates_and_keeps_the_seal_key_secret() {
    let ns = unique_name("sealed");
    let s = Setup::new(redis_url(), &[&ns]);
    let read_key = || {
        let out = s.kube.kubectl(&[
            "get",
            "secret",
            "acteon-seal-key",
            "-n",
            "acteon-system",
            "-o",
            "go-template={{.data.key | base64decode}}",
        ]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let args = ["--seal-key-secret", "acteon-seal-key"];
    let op = s.operator("op-a", &args);
    let key = wait_until(
        Duration::from_secs(20),
        Duration::from_millis(100),
        read_key,
    )
    .unwrap_or_else(|| panic!("no seal key Secret:\n{}", op.log_tail(30)));
    assert_eq!(key.len(), 64, "64 hex characters");
    drop(op);
    let _op = s.operator("op-b", &args);
    // Gateways with that key (as the chart gives it, from the Secret).
    let key_file = test_dir().join(format!("{}.key", unique_name("sealed")));
    std::fs::write(&key_file, &key).expect("key file");
    let key_path = key_file.to_str().expect("utf-8").to_owned();
    let (_g, port) = start_gateway(&[
        "--state",
        &s.state,
        "--state-prefix",
        &s.prefix,
        "--shared-namespace",
        "acteon-e2e-none",
        "--config-poll-seconds",
        "5",
        "--seal-key-file",
        &key_path,
    ]);
    s.kube.apply(&format!(
        "{}apiVersion: acteon.dev/v1alpha1\nkind: Rule\nmetadata: {{name: quiet, namespace: {ns}}}\nspec: {{condition: {{field: action.action_type, eq: probe}}, action: {{type: suppress}}}}\n",
        log_provider(&ns, "out")
    ));
    wait_ready(s.kube, "rule", &ns, "quiet", ("True", "Served"));
    let probe = json!({"namespace": ns, "tenant": "t", "provider": "out", "action_type": "probe", "payload": {}});
    assert_eq!(outcome(port, &probe)["DryRun"]["verdict"], "suppress");
    assert_eq!(
        read_key().as_deref(),
        Some(key.as_str()),
        "the restart kept the key"
    );
}

/// The API server refuses, at `kubectl apply`, what the operator would reject where a
/// structural schema can say it (sizes, bounds, enums, patterns); the cross-field checks are
/// CRD validation rules, enforced by API servers from 1.25 (this one is 1.20: they are
/// checked as rendered).
#[test]
fn crd_schemas_reject_what_the_operator_rejects() {
    let ns = unique_name("schema");
    let s = Setup::new(redis_url(), &[&ns]);
    let meta = |kind: &str| {
        format!(
            "apiVersion: acteon.dev/v1alpha1\nkind: {kind}\nmetadata: {{name: bad, namespace: {ns}}}\n"
        )
    };
    let cases = [
        ("Chain", "spec: {steps: []}", "steps"),
        (
            "Chain",
            "spec: {steps: [{name: fan, parallel: {steps: []}}]}",
            "steps",
        ),
        (
            "StateMachine",
            "spec: {states: [], initialState: a}",
            "states",
        ),
        ("Quota", "spec: {tenant: t, limit: 0, window: 1h}", "limit"),
        (
            "Quota",
            "spec: {tenant: t, limit: 5, window: 1 hour}",
            "window",
        ),
        (
            "Rule",
            "spec: {condition: {field: action.action_type, eq: x}, action: {type: throttle, maxCount: 0, windowSeconds: 60}}",
            "maxCount",
        ),
        (
            "Rule",
            "spec: {condition: {field: action.action_type, eq: x}, action: {type: throttle, maxCount: 5, windowSeconds: 0}}",
            "windowSeconds",
        ),
        (
            "Rule",
            "spec: {condition: {field: action.action_type, eq: x}, action: {type: schedule, delaySeconds: 0}}",
            "delaySeconds",
        ),
        (
            "Rule",
            "spec: {condition: {field: action.action_type, eq: x}, action: {type: teleport}}",
            "type",
        ),
        (
            "Provider",
            "spec: {type: webhook, webhook: {url: \"http://x\", method: TRACE}}",
            "method",
        ),
        ("Provider", "spec: {type: log, log: {level: loud}}", "level"),
    ];
    for (kind, spec, field) in cases {
        let out = s.kube.kubectl_stdin(
            &[
                "apply",
                "--server-side",
                "--field-manager",
                "e2e",
                "-f",
                "-",
            ],
            &format!("{}{spec}\n", meta(kind)),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{kind} {spec}: accepted");
        assert!(stderr.contains(field), "{kind} {spec}: {stderr}");
    }
    // A valid object of each shape still goes in.
    let ok = s.kube.kubectl_stdin(
        &[
            "apply",
            "--server-side",
            "--field-manager",
            "e2e",
            "-f",
            "-",
        ],
        &format!(
            "{}spec: {{tenant: t, limit: 5, window: 15m}}\n",
            meta("Quota")
        ),
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // The cross-field rules, as rendered for API servers that enforce them.
    let rules = std::fs::read_to_string(repo_path("crds/cel/rules.yaml")).expect("crd");
    for rule in [
        "has(self.condition) != has(self.cel)",
        "self.type != 'reroute' || has(self.targetProvider)",
        "self.type != 'throttle' || has(self.maxCount)",
    ] {
        assert!(rules.contains(rule), "crds/cel/rules.yaml lacks `{rule}`");
    }
    let providers = std::fs::read_to_string(repo_path("crds/cel/providers.yaml")).expect("crd");
    assert!(providers.contains("self.type != 'webhook' || has(self.webhook)"));
}

/// Key rotation: gateways given the new key and, as previous, the old one keep serving what
/// the operator signed with the old key; once the operator switches to the new key they serve
/// its new snapshots. A gateway with only the new key refuses the old snapshots meanwhile.
#[test]
fn gateways_accept_the_previous_seal_key_during_a_rotation() {
    let ns = unique_name("rotate");
    let s = Setup::new(redis_url(), &[&ns]);
    let old_key = std::fs::read_to_string(&s.key_file).expect("old key");
    let new_file = seal_key_file();
    let gateway = |extra: &[&str]| {
        let mut args = vec![
            "--state",
            &s.state,
            "--state-prefix",
            &s.prefix,
            "--shared-namespace",
            "acteon-e2e-none",
            "--config-poll-seconds",
            "1",
            "--seal-key-file",
            &new_file,
        ];
        args.extend_from_slice(extra);
        start_gateway(&args)
    };
    let op = s.operator("op-old", &[]);
    let rule = |action: &str| {
        format!(
            "{}apiVersion: acteon.dev/v1alpha1\nkind: Rule\nmetadata: {{name: route, namespace: {ns}}}\nspec:\n  condition: {{field: action.action_type, eq: alert}}\n  action: {action}\n",
            log_provider(&ns, "out")
        )
    };
    s.kube.apply(&rule("{type: suppress}"));
    wait_ready(s.kube, "rule", &ns, "route", ("False", "NoGateways"));
    let (_rotating, p1) = gateway(&["--previous-seal-keys", old_key.trim()]);
    let (_plain, p2) = gateway(&[]);
    let alert = json!({"namespace": ns, "tenant": "t", "provider": "out", "action_type": "alert", "payload": {}});
    let verdict = |port: u16| dry_run_verdict(port, &alert);
    let serves = |port: u16, want: &str| wait_for_verdict(port, &alert, want);
    serves(p1, "suppress");
    assert_eq!(
        verdict(p2),
        None,
        "a gateway without the old key refuses the old signature"
    );
    // The operator switches to the new key: both gateways serve what it signs.
    drop(op);
    let _op = s.operator("op-new", &["--seal-key-file", &new_file]);
    s.kube.apply(&rule("{type: deny}"));
    serves(p1, "deny");
    serves(p2, "deny");
}

#[test]
fn the_standby_takes_over_and_a_restart_changes_nothing() {
    let ns = unique_name("ha");
    let s = Setup::new(redis_url(), &[&ns]);
    let out = log_provider(&ns, "out");
    let (_g1, p1) = s.gateway();
    let (_g2, _p2) = s.gateway();
    let a = s.operator("op-a", &["--lease-duration-seconds", "4"]);
    let b = s.operator("op-b", &["--lease-duration-seconds", "4"]);
    let manifest = |n: u32| {
        format!(
            r#"
{out}apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {{name: r{n}, namespace: {ns}}}
spec:
  condition: {{field: action.action_type, eq: t{n}}}
  action: {{type: suppress}}
"#
        )
    };
    s.kube.apply(&manifest(1));
    wait_ready(s.kube, "rule", &ns, "r1", ("True", "Served"));
    let leader = s.lease_holder();
    assert!(leader == "op-a" || leader == "op-b", "{leader}");
    let version = served_version(p1).expect("served version");
    // Kill the leader without a chance to release the lease.
    let killed = Instant::now();
    if leader == "op-a" {
        a.kill()
    } else {
        b.kill()
    }
    s.kube.apply(&manifest(2));
    wait_until(Duration::from_secs(15), Duration::from_millis(50), || {
        rule_names(p1).contains(&"r2".to_owned()).then_some(())
    })
    .expect("the standby propagated the change");
    let took = killed.elapsed();
    println!("standby took over and propagated after {took:?} (lease 4 s)");
    assert_ne!(s.lease_holder(), leader);
    wait_ready(s.kube, "rule", &ns, "r2", ("True", "Served"));
    // Restart both: the gateways keep the same version and no object is rewritten.
    let served = served_version(p1).expect("version");
    assert!(served > version);
    let before = resource_versions(s.kube, &ns);
    drop(a);
    drop(b);
    let _c = s.operator("op-c", &["--lease-duration-seconds", "4"]);
    wait_until(Duration::from_secs(15), Duration::from_millis(100), || {
        (s.lease_holder() == "op-c").then_some(())
    })
    .expect("the new operator leads");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(served_version(p1), Some(served), "a restart republished");
    assert_eq!(
        before,
        resource_versions(s.kube, &ns),
        "a restart rewrote status"
    );
}

#[test]
fn a_gateway_started_later_gets_the_current_snapshot() {
    let ns = unique_name("late");
    let s = Setup::new(postgres_url(), &[&ns]);
    let _op = s.operator("op-a", &[]);
    let (_g1, p1) = s.gateway();
    s.kube.apply(&log_provider(&ns, "out"));
    wait_ready(s.kube, "provider", &ns, "out", ("True", "Served"));
    let (_g2, p2) = s.gateway();
    wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
        (served_version(p2) == served_version(p1)).then_some(())
    })
    .expect("the late gateway serves the current version");
    // Two gateways now serve it; status follows.
    wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        let c = ready_condition(s.kube, "provider", &ns, "out");
        (c.2 == "served by all 2 gateways").then_some(())
    })
    .expect("status counts the late gateway");
}

/// Accepts HTTP requests on loopback and records each one's headers (lowercased names).
fn recording_server() -> (u16, std::sync::mpsc::Receiver<Vec<(String, String)>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut headers = Vec::new();
            let mut line = String::new();
            let _ = reader.read_line(&mut line); // request line
            let mut length = 0usize;
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = line.trim_end().split_once(':') {
                    let k = k.trim().to_ascii_lowercase();
                    if k == "content-length" {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    headers.push((k, v.trim().to_owned()));
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let mut stream = stream;
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n{}");
            let _ = tx.send(headers);
        }
    });
    (port, rx)
}

/// `--secret-label-selector`: the operator reads only the Secrets it selects; a Provider
/// referencing one outside it says so in its status (not "not found"), and labelling the
/// Secret makes it ready — noticed through the narrowed watch.
#[test]
fn the_secret_selector_limits_what_the_operator_reads_and_status_says_so() {
    let ns = unique_name("selsec");
    let s = Setup::new(redis_url(), &[&ns]);
    let _op = s.operator(
        "op-a",
        &["--secret-label-selector", "acteon.dev/credentials=true"],
    );
    s.kube.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "hook-creds",
        "-n",
        &ns,
        "--from-literal=token=Bearer x",
    ]);
    s.kube.apply(&format!(
        "apiVersion: acteon.dev/v1alpha1\nkind: Provider\nmetadata: {{name: hook, namespace: {ns}}}\n\
         spec:\n  type: webhook\n  webhook:\n    url: \"http://127.0.0.1:9/hook\"\n    \
         secretHeaders:\n      Authorization: {{name: hook-creds, key: token}}\n"
    ));
    let (_, _, message) = wait_ready(
        s.kube,
        "provider",
        &ns,
        "hook",
        ("False", "SecretNotSelected"),
    );
    assert!(message.contains("acteon.dev/credentials=true"), "{message}");
    s.kube.kubectl_ok(&[
        "label",
        "secret",
        "hook-creds",
        "-n",
        &ns,
        "acteon.dev/credentials=true",
    ]);
    // Accepted now; no gateway runs in this test, so not served.
    wait_ready(s.kube, "provider", &ns, "hook", ("False", "NoGateways"));
}

#[test]
fn provider_credentials_reach_the_gateway_sealed_and_nowhere_else() {
    let ns = unique_name("creds");
    let s = Setup::new(redis_url(), &[&ns]);
    let dir = std::env::temp_dir().join(unique_name("seal"));
    std::fs::create_dir_all(&dir).expect("tempdir");
    let key_file = dir.join("seal.key");
    std::fs::write(
        &key_file,
        acteon_channel::seal::SealKey::generate().to_text(),
    )
    .expect("key");
    let key_arg = key_file.display().to_string();
    let (_g1, p1) = start_gateway(&[
        "--state",
        &s.state,
        "--state-prefix",
        &s.prefix,
        "--shared-namespace",
        "acteon-e2e-none",
        "--seal-key-file",
        &key_arg,
    ]);
    let op = s.operator("op-a", &["--seal-key-file", &key_arg]);
    let secret = format!("Bearer s3cr3t-{}", unique_name("v"));
    s.kube.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "hook-creds",
        "-n",
        &ns,
        &format!("--from-literal=token={secret}"),
    ]);
    let (hook_port, requests) = recording_server();
    let provider = |secret_name: &str| {
        format!(
            r#"
apiVersion: acteon.dev/v1alpha1
kind: Provider
metadata: {{name: hook, namespace: {ns}}}
spec:
  type: webhook
  webhook:
    url: "http://127.0.0.1:{hook_port}/hook"
    secretHeaders:
      Authorization: {{name: {secret_name}, key: token}}
  retry: {{maxAttempts: 1}}
"#
        )
    };
    s.kube.apply(&provider("hook-creds"));
    wait_ready(s.kube, "provider", &ns, "hook", ("True", "Served"));
    let action = json!({"namespace": ns, "tenant": "t", "provider": "hook", "action_type": "page", "payload": {"x": 1}});
    let (status, body) = http_post(p1, "/v1/dispatch", &action).expect("dispatch");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Executed"), "{body}");
    let headers = requests
        .recv_timeout(Duration::from_secs(5))
        .expect("the webhook was called");
    assert!(
        headers.contains(&("authorization".to_owned(), secret.clone())),
        "{headers:?}"
    );
    // The value is nowhere but in that request.
    let needle = secret.trim_start_matches("Bearer ");
    let object = s
        .kube
        .kubectl_ok(&["get", "provider", "hook", "-n", &ns, "-o", "json"]);
    assert!(!object.contains(needle), "status leaks the credential");
    let events = s
        .kube
        .kubectl_ok(&["get", "events", "-n", &ns, "-o", "json"]);
    assert!(!events.contains(needle), "an Event leaks the credential");
    let config = http_get(p1, "/v1/config").expect("config").1;
    assert!(!config.contains(needle), "/v1/config leaks the credential");
    assert!(
        !op.log_tail(100_000).contains(needle),
        "the operator log leaks the credential"
    );
    let published = tokio::runtime::Runtime::new().expect("rt").block_on(async {
        let channel = acteon_channel::connect(&s.state, &s.prefix, Duration::from_secs(5))
            .await
            .expect("channel");
        channel.fetch().await.expect("fetch").expect("a snapshot")
    });
    assert!(
        !String::from_utf8_lossy(&published.body).contains(needle),
        "plaintext in the state backend"
    );
    // Rotating the Secret reaches the gateway.
    let rotated = format!("Bearer rotated-{}", unique_name("v"));
    let patch = json!({"stringData": {"token": rotated}}).to_string();
    s.kube.kubectl_ok(&[
        "patch",
        "secret",
        "hook-creds",
        "-n",
        &ns,
        "--type",
        "merge",
        "-p",
        &patch,
    ]);
    wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        let (status, _) = http_post(p1, "/v1/dispatch", &action)?;
        assert_eq!(status, 200);
        let h = requests.recv_timeout(Duration::from_secs(5)).ok()?;
        h.contains(&("authorization".to_owned(), rotated.clone()))
            .then_some(())
    })
    .expect("the rotated credential is delivered");
    // A Provider whose Secret does not exist is not ready.
    s.kube.apply(&provider("missing-creds"));
    let (_, _, msg) = wait_ready(s.kube, "provider", &ns, "hook", ("False", "SecretNotFound"));
    assert!(
        msg.contains("missing-creds") && msg.contains("secretHeaders.Authorization"),
        "{msg}"
    );
}

/// A lease namespace that does not exist fails the start with what to do, instead of a
/// warning every few seconds forever.
#[test]
fn run_with_a_missing_lease_namespace_fails_at_start() {
    let s = Setup::new(redis_url(), &[]);
    let missing = unique_name("no-such-ns");
    let metrics = format!("127.0.0.1:{}", free_port());
    let args = [
        "--state",
        s.state.as_str(),
        "--state-prefix",
        &s.prefix,
        "--lease-name",
        &s.lease,
        "--lease-namespace",
        &missing,
        "--metrics-listen",
        &metrics,
    ];
    // With the chart's RBAC (Leases only in acteon-system) the API server answers 403 for a
    // namespace that does not exist; with access everywhere (admin), 404. Both fail the start
    // and say what to do.
    let least_privilege = start_operator(&args);
    let mut admin = operator_command(&args);
    admin.env("KUBECONFIG", s.kube.admin_kubeconfig_path());
    let admin = Proc::spawn("acteon-operator-admin", admin);
    for op in [&least_privilege, &admin] {
        let status = op
            .wait_exit(Duration::from_secs(20))
            .unwrap_or_else(|| panic!("still running: {}", op.log_tail(20)));
        assert!(!status.success(), "exit status {status:?}");
        let log = op.log();
        assert!(
            log.contains(&format!("namespace \"{missing}\" does not exist")),
            "{log}"
        );
        assert!(
            log.contains(&format!("kubectl create namespace {missing}")),
            "{log}"
        );
        assert!(log.contains("--lease-namespace"), "{log}");
    }
    assert!(
        admin.log().contains("the lease namespace"),
        "{}",
        admin.log()
    );
}

/// The snapshot the operator last published for `s`, authenticated with its seal key.
fn published_snapshot(s: &Setup) -> Value {
    tokio::runtime::Runtime::new().expect("rt").block_on(async {
        let channel = acteon_channel::connect(&s.state, &s.prefix, Duration::from_secs(5))
            .await
            .expect("channel");
        let published = channel.fetch().await.expect("fetch").expect("a snapshot");
        let key_text = std::fs::read_to_string(&s.key_file).expect("key file");
        let key = acteon_channel::seal::SealKey::from_text(key_text.trim()).expect("seal key");
        let auth = acteon_channel::auth::SnapshotAuth::new(Some(key), false).expect("auth");
        let body = auth
            .open(&published.digest, &published.body)
            .expect("the snapshot authenticates");
        serde_json::from_slice(body).expect("snapshot JSON")
    })
}

/// `namespace/name` of every StateMachine in a published snapshot.
fn snapshot_machines(snapshot: &Value) -> Vec<String> {
    snapshot["state_machines"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["namespace"].as_str().unwrap_or(""),
                m["name"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// Warning Events in `ns`: (involved kind, involved name, reason).
fn warning_events(kube: &Kube, ns: &str) -> Vec<(String, String, String)> {
    let out = kube.kubectl_ok(&["get", "events", "-n", ns, "-o", "json"]);
    let v: Value = serde_json::from_str(&out).expect("kubectl json");
    v["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|e| e["type"] == "Warning")
        .map(|e| {
            let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
            (
                s(&e["involvedObject"]["kind"]),
                s(&e["involvedObject"]["name"]),
                s(&e["reason"]),
            )
        })
        .collect()
}

fn state_machine(ns: &str, name: &str, bad_target: &str) -> String {
    format!(
        r#"apiVersion: acteon.dev/v1alpha1
kind: StateMachine
metadata: {{name: {name}, namespace: {ns}}}
spec:
  states: [firing, acknowledged, resolved]
  initialState: firing
  terminalStates: [resolved]
  notifyProvider: pager
  transitions:
    - {{from: firing, to: acknowledged, notify: true}}
    - {{from: acknowledged, to: {bad_target}}}
  timeouts:
    - {{state: firing, afterSeconds: 3600, transitionTo: resolved}}
---
"#
    )
}

fn drive_rule(ns: &str, name: &str, machine: &str) -> String {
    format!(
        r#"apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {{name: {name}, namespace: {ns}}}
spec:
  condition: {{field: action.action_type, eq: {name}}}
  action: {{type: stateMachine, stateMachine: {machine}, fingerprintFields: [action.metadata.service]}}
---
"#
    )
}

/// StateMachines go through the operator like every kind (SPEC §3): a valid one is
/// Accepted, Ready and published; a broken one (a transition to an unknown state) is
/// rejected alone with the field in its reason and a Warning Event, and so is the Rule that
/// drives it, while the valid one in the same namespace stays Ready. Fixing or deleting a
/// machine re-validates the Rules that name it.
#[test]
fn state_machines_are_validated_alone_published_and_re_resolved() {
    let ns = unique_name("sm");
    let s = Setup::new(redis_url(), &[&ns]);
    let (_g1, p1) = s.gateway();
    let _op = s.operator("op-a", &[]);
    s.kube.apply(
        &[
            log_provider(&ns, "pager"),
            state_machine(&ns, "alert", "resolved"),
            state_machine(&ns, "broken", "reopened"),
            drive_rule(&ns, "drives-alert", "alert"),
            drive_rule(&ns, "drives-broken", "broken"),
        ]
        .concat(),
    );
    wait_ready(s.kube, "statemachine", &ns, "alert", ("True", "Served"));
    let (_, _, msg) = wait_ready(
        s.kube,
        "statemachine",
        &ns,
        "broken",
        ("False", "InvalidStateMachine"),
    );
    assert_eq!(
        msg, "spec.transitions[1].to: `reopened` is not one of spec.states",
        "the reason names the field"
    );
    let (_, _, msg) = wait_ready(
        s.kube,
        "rule",
        &ns,
        "drives-broken",
        ("False", "StateMachineNotFound"),
    );
    assert!(
        msg.contains("spec.action.stateMachine") && msg.contains("`broken` is rejected"),
        "{msg}"
    );
    wait_ready(s.kube, "rule", &ns, "drives-alert", ("True", "Served"));
    // Accepted carries the verdict, observedGeneration the generation it is about.
    let object: Value = serde_json::from_str(&s.kube.kubectl_ok(&[
        "get",
        "statemachine",
        "-n",
        &ns,
        "broken",
        "-o",
        "json",
    ]))
    .expect("json");
    let accepted = object["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Accepted").cloned())
        .expect("an Accepted condition");
    assert_eq!(
        (&accepted["status"], &accepted["reason"]),
        (&json!("False"), &json!("InvalidStateMachine"))
    );
    assert_eq!(
        object["status"]["observedGeneration"],
        object["metadata"]["generation"]
    );
    // One Warning Event for each rejection, on the object.
    let events = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        let events = warning_events(s.kube, &ns);
        (events.len() >= 2).then_some(events)
    })
    .expect("two Warning Events");
    for want in [
        ("StateMachine", "broken", "InvalidStateMachine"),
        ("Rule", "drives-broken", "StateMachineNotFound"),
    ] {
        assert!(
            events.contains(&(want.0.into(), want.1.into(), want.2.into())),
            "{want:?} in {events:?}"
        );
    }
    assert!(
        !events
            .iter()
            .any(|e| e.1 == "alert" || e.1 == "drives-alert"),
        "{events:?}"
    );
    // The published snapshot has the valid machine with every field, not the broken one.
    let snapshot = published_snapshot(&s);
    assert_eq!(snapshot_machines(&snapshot), [format!("{ns}/alert")]);
    let alert = &snapshot["state_machines"][0]["spec"];
    assert_eq!(alert["terminalStates"], json!(["resolved"]), "{alert}");
    assert_eq!(alert["notifyProvider"], "pager", "{alert}");
    assert_eq!(alert["timeouts"][0]["afterSeconds"], 3600, "{alert}");
    let rules: Vec<&str> = snapshot["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(rules, ["drives-alert"]);
    // …and the gateway serves it.
    wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        let served = get_json(p1, "/v1/config")?["state_machines"].clone();
        (served == json!([format!("{ns}/alert")])).then_some(())
    })
    .unwrap_or_else(|| panic!("gateway config: {:?}", get_json(p1, "/v1/config")));
    // `kubectl get statemachines` (and the short name) shows the columns.
    let table = s.kube.kubectl_ok(&["get", "asm", "-n", &ns]);
    for needle in [
        "INITIAL",
        "READY",
        "REASON",
        "AGE",
        "firing",
        "InvalidStateMachine",
    ] {
        assert!(table.contains(needle), "{needle}:\n{table}");
    }
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("alert") && l.contains("True") && l.contains("Served")),
        "{table}"
    );

    // Fixing the broken machine brings it and its Rule in.
    s.kube.apply(&state_machine(&ns, "broken", "resolved"));
    wait_ready(s.kube, "statemachine", &ns, "broken", ("True", "Served"));
    wait_ready(s.kube, "rule", &ns, "drives-broken", ("True", "Served"));
    let mut machines = snapshot_machines(&published_snapshot(&s));
    machines.sort();
    assert_eq!(machines, [format!("{ns}/alert"), format!("{ns}/broken")]);
    // Deleting a machine takes the Rule that drives it out, and says why.
    s.kube.delete("statemachine", &ns, "alert");
    let (_, _, msg) = wait_ready(
        s.kube,
        "rule",
        &ns,
        "drives-alert",
        ("False", "StateMachineNotFound"),
    );
    assert!(msg.contains("state machine `alert` not found"), "{msg}");
    wait_ready(s.kube, "rule", &ns, "drives-broken", ("True", "Served"));
    assert_eq!(
        snapshot_machines(&published_snapshot(&s)),
        [format!("{ns}/broken")]
    );
}
