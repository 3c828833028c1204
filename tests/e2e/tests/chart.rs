//! The Helm chart (`charts/acteon`): lint, a matrix of renderings installed into a real
//! kube-apiserver, locked-down pods, the values schema, Argo CD's health check, and the
//! installed chart actually running: the operator and gateways started exactly as its
//! Deployments describe (command, arguments, environment, Secrets), with the operator's token
//! authorized only by the RBAC this release created.
//!
//! Installs go to an API server of this process's own ([`Kube::private`]): releases here
//! create and delete the CRDs, which would disturb the tests on the shared server.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use acteon_e2e::*;
use mlua::{Lua, LuaSerdeExt, SerializeOptions};
use serde_json::{Value, json};

const CHART: &str = "charts/acteon";
const WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------------------------------------
// Rendering helpers
// ---------------------------------------------------------------------------------------------

/// `charts/acteon/ci/<name>-values.yaml`, by name, in name order.
fn values_files() -> Vec<(String, PathBuf)> {
    let dir = repo_path("charts/acteon/ci");
    let mut files: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let name = path.file_name()?.to_str()?.strip_suffix("-values.yaml")?;
            Some((name.to_owned(), path))
        })
        .collect();
    files.sort();
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    for needed in [
        "defaults",
        "redis",
        "postgres",
        "ha",
        "monitoring",
        "networkpolicy",
        "namespaced",
    ] {
        assert!(
            names.contains(&needed),
            "charts/acteon/ci lacks {needed}-values.yaml"
        );
    }
    files
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// The documents of a multi-document YAML stream (empty ones skipped).
fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|doc| {
            serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("rendered YAML does not parse: {e}"))
        })
        .filter(|doc: &Value| !doc.is_null())
        .collect()
}

/// `helm template acteon charts/acteon -n acteon-system -f <values> <extra>`, as documents.
fn render(values: &Path, extra: &[&str]) -> Vec<Value> {
    let mut args = vec![
        "template",
        RELEASE,
        CHART,
        "--namespace",
        SYSTEM_NAMESPACE,
        "-f",
        path_str(values),
    ];
    args.extend(extra);
    documents(&helm_ok(&args))
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn named<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendering"))
}

fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---------------------------------------------------------------------------------------------
// Lint, schema, rendering
// ---------------------------------------------------------------------------------------------

#[test]
fn helm_lint_is_clean_for_the_defaults_and_every_values_file() {
    let mut runs: Vec<Vec<String>> = vec![vec!["lint".into(), "--strict".into(), CHART.into()]];
    for (_, file) in values_files() {
        runs.push(vec![
            "lint".into(),
            "--strict".into(),
            CHART.into(),
            "-f".into(),
            path_str(&file).into(),
        ]);
    }
    for args in runs {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = helm(&args);
        let text = output_text(&out);
        assert!(
            out.status.success() && !text.contains("[WARNING]") && !text.contains("[ERROR]"),
            "helm {}:\n{text}",
            args.join(" ")
        );
        assert!(
            text.contains("1 chart(s) linted, 0 chart(s) failed"),
            "{text}"
        );
    }
}

#[test]
fn the_values_schema_rejects_wrong_values_naming_the_field() {
    let defaults = repo_path("charts/acteon/ci/defaults-values.yaml");
    let cases: [(&str, &[&str]); 5] = [
        ("gateway.replicas=two", &["/gateway/replicas", "integer"]),
        ("gateway.replica=2", &["/gateway", "replica"]),
        ("image.pullPolicy=Sometimes", &["/image/pullPolicy"]),
        ("operator.metricsPort=70000", &["/operator/metricsPort"]),
        ("state.url=mysql://db", &["/state/url"]),
    ];
    for (set, wanted) in cases {
        let out = helm(&[
            "template",
            RELEASE,
            CHART,
            "-f",
            path_str(&defaults),
            "--set",
            set,
        ]);
        let text = output_text(&out);
        assert!(!out.status.success(), "--set {set} was accepted");
        assert!(
            text.contains("don't meet the specifications of the schema"),
            "--set {set}: not a schema error:\n{text}"
        );
        for w in wanted {
            assert!(
                text.contains(w),
                "--set {set}: the error does not name {w}:\n{text}"
            );
        }
    }
    // The one value without a default, once the evaluation Redis is off.
    let out = helm(&[
        "template",
        RELEASE,
        CHART,
        "--set",
        "evaluationRedis.enabled=false",
    ]);
    let text = output_text(&out);
    assert!(!out.status.success(), "rendered without a state backend");
    assert!(
        text.contains("state.url") && text.contains("state.existingSecret"),
        "{text}"
    );
}

#[test]
fn every_container_is_locked_down_and_probed() {
    for (name, file) in values_files() {
        let docs = render(&file, &[]);
        let deployments = of_kind(&docs, "Deployment");
        assert_eq!(deployments.len(), 2, "{name}: operator and gateway");
        for deployment in deployments {
            let what = format!("{name}: {}", deployment["metadata"]["name"]);
            let pod = &deployment["spec"]["template"]["spec"];
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{what}");
            assert_eq!(
                pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
                "{what}"
            );
            let containers: Vec<&Value> = ["containers", "initContainers"]
                .iter()
                .filter_map(|k| pod[k].as_array())
                .flatten()
                .collect();
            assert!(!containers.is_empty(), "{what}");
            for c in containers {
                let what = format!("{what} container {}", c["name"]);
                let sc = &c["securityContext"];
                assert_eq!(sc["runAsNonRoot"], true, "{what}");
                assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}");
                assert_eq!(sc["allowPrivilegeEscalation"], false, "{what}");
                assert_ne!(sc["privileged"], true, "{what}");
                assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{what}");
                assert!(sc["capabilities"]["add"].is_null(), "{what}");
                assert!(c["resources"]["requests"]["cpu"].is_string(), "{what}");
                assert!(c["resources"]["requests"]["memory"].is_string(), "{what}");
                assert!(c["resources"]["limits"]["memory"].is_string(), "{what}");
                assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz", "{what}");
                assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz", "{what}");
                let image = c["image"].as_str().unwrap_or_default();
                assert!(
                    !image.ends_with(":latest") && image.contains(':'),
                    "{what}: pinned image, got {image}"
                );
            }
        }
        gateway_has_only_the_api_access_auth_needs(&name, &docs);
    }
    let off = render(
        &repo_path("charts/acteon/ci/defaults-values.yaml"),
        &["--set", "gateway.auth.enabled=false"],
    );
    gateway_has_only_the_api_access_auth_needs("auth off", &off);
    assert_eq!(
        named(&off, "Deployment", "acteon-gateway")["spec"]["template"]["spec"]["automountServiceAccountToken"],
        false
    );
}

/// The gateway's API access follows authentication: with it off, no token mounted and no role
/// bound; with it on (the default), exactly token reviews (system:auth-delegator) and reading
/// the Secrets of the release namespace (API tokens), nothing else.
fn gateway_has_only_the_api_access_auth_needs(name: &str, docs: &[Value]) {
    let gateway = named(docs, "Deployment", "acteon-gateway");
    let pod = &gateway["spec"]["template"]["spec"];
    let env = |key: &str| {
        pod["containers"][0]["env"]
            .as_array()
            .and_then(|e| e.iter().find(|v| v["name"] == key))
            .map(|v| v["value"].clone())
    };
    let auth_on = env("ACTEON_AUTH") == Some(json!("on"));
    assert_eq!(pod["automountServiceAccountToken"], auth_on, "{name}");
    let account = pod["serviceAccountName"]
        .as_str()
        .expect("serviceAccountName");
    assert_eq!(
        named(docs, "ServiceAccount", account)["automountServiceAccountToken"],
        auth_on,
        "{name}"
    );
    let mut roles = Vec::new();
    for binding in of_kind(docs, "RoleBinding")
        .into_iter()
        .chain(of_kind(docs, "ClusterRoleBinding"))
    {
        if binding["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["name"] == account)
        {
            roles.push((binding["kind"].clone(), binding["roleRef"]["name"].clone()));
        }
    }
    if !auth_on {
        assert!(
            roles.is_empty(),
            "{name}: roles bound to the gateway: {roles:?}"
        );
        return;
    }
    let mut want = vec![(json!("RoleBinding"), json!("acteon-gateway-api-tokens"))];
    if env("ACTEON_AUTH_SERVICE_ACCOUNTS") == Some(json!("true")) {
        want.push((json!("ClusterRoleBinding"), json!("system:auth-delegator")));
    }
    roles.sort_by_key(|r| r.0.to_string());
    want.sort_by_key(|r| r.0.to_string());
    assert_eq!(roles, want, "{name}");
    let role = named(docs, "Role", "acteon-gateway-api-tokens");
    assert_eq!(
        role["rules"],
        json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]}]),
        "{name}"
    );
}

/// Rendering is a pure function of the values (Argo CD and Flux render on every sync): two
/// renders are identical, and no render carries a seal key — the operator owns that Secret
/// (creates it when absent, never rotates it); only `sealKey.existingSecret` replaces it.
#[test]
fn renders_are_stable_and_carry_no_seal_key() {
    for (name, values) in values_files() {
        let args = |v: &Path| {
            helm_ok(&[
                "template",
                RELEASE,
                CHART,
                "--namespace",
                SYSTEM_NAMESPACE,
                "-f",
                path_str(v),
            ])
        };
        assert_eq!(args(&values), args(&values), "{name}: two renders differ");
        let docs = render(&values, &[]);
        assert!(
            !docs.iter().any(|d| d["kind"] == "Secret"
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.contains("seal"))),
            "{name}: a seal key Secret is rendered"
        );
    }
    let defaults = render(&repo_path("charts/acteon/ci/defaults-values.yaml"), &[]);
    let operator = container(&defaults, "acteon-operator");
    let env = operator["env"].as_array().expect("env");
    let managed = env
        .iter()
        .find(|e| e["name"] == "ACTEON_SEAL_KEY_SECRET")
        .expect("the operator manages the seal key Secret");
    assert_eq!(managed["value"], "acteon-seal-key");
    assert!(!env.iter().any(|e| e["name"] == "ACTEON_SEAL_KEY"));
    // Gateways mount the Secret as files they re-read (a rotation needs no restart).
    let mounted = |docs: &[Value], deployment: &str, secret: &str| {
        let pod = pod_spec(docs, deployment);
        let c = &pod["containers"][0];
        let env = |name: &str| {
            c["env"]
                .as_array()
                .and_then(|e| e.iter().find(|e| e["name"] == name))
                .map(|e| e["value"].clone())
        };
        assert_eq!(
            env("ACTEON_SEAL_KEY_FILE"),
            Some(json!("/etc/acteon/seal/key"))
        );
        assert!(env("ACTEON_SEAL_KEY").is_none(), "{deployment}: key in env");
        let volume = pod["volumes"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["secret"]["secretName"] == secret))
            .unwrap_or_else(|| panic!("{deployment}: no volume of Secret {secret}"));
        let mount = c["volumeMounts"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["name"] == volume["name"]))
            .unwrap_or_else(|| panic!("{deployment}: volume not mounted"));
        assert_eq!(mount["mountPath"], "/etc/acteon/seal");
        assert_eq!(mount["readOnly"], true);
    };
    mounted(&defaults, "acteon-gateway", "acteon-seal-key");
    assert_eq!(
        container(&defaults, "acteon-gateway")["env"]
            .as_array()
            .and_then(|e| e
                .iter()
                .find(|e| e["name"] == "ACTEON_PREVIOUS_SEAL_KEYS_FILE"))
            .map(|e| e["value"].clone()),
        Some(json!("/etc/acteon/seal/previous"))
    );
    // With an existing Secret both read it and the operator creates nothing.
    let own = render(
        &repo_path("charts/acteon/ci/defaults-values.yaml"),
        &["--set", "sealKey.existingSecret=mine"],
    );
    let operator = container(&own, "acteon-operator");
    let env = operator["env"].as_array().expect("env");
    assert!(!env.iter().any(|e| e["name"] == "ACTEON_SEAL_KEY_SECRET"));
    mounted(&own, "acteon-operator", "mine");
    mounted(&own, "acteon-gateway", "mine");
    let role = named(&own, "Role", "acteon-operator");
    let touches_secrets = role["rules"].as_array().into_iter().flatten().any(|r| {
        r["resources"]
            .as_array()
            .is_some_and(|v| v.iter().any(|x| x == "secrets"))
    });
    assert!(!touches_secrets, "no Secret rule without need: {role}");
}

/// With `operator.watchNamespaces` the operator's access is a Role in each listed namespace
/// and nothing cluster-wide; tenants with the built-in `edit` / `view` roles manage / read the
/// custom resources through the aggregated ClusterRoles (checked on the API server: a user
/// bound to each in a namespace, as aggregation would bind them).
#[test]
fn namespaced_rbac_and_roles_for_tenants() {
    let docs = render(&repo_path("charts/acteon/ci/namespaced-values.yaml"), &[]);
    let operator_cluster_wide = docs.iter().any(|d| {
        (d["kind"] == "ClusterRole" || d["kind"] == "ClusterRoleBinding")
            && d["metadata"]["name"] == "acteon-operator"
    });
    assert!(!operator_cluster_wide, "no cluster-wide operator access");
    for ns in ["team-a", "team-b", SYSTEM_NAMESPACE] {
        let role = docs
            .iter()
            .find(|d| {
                d["kind"] == "Role"
                    && d["metadata"]["name"] == "acteon-operator-watch"
                    && d["metadata"]["namespace"] == ns
            })
            .unwrap_or_else(|| panic!("no Role in {ns}"));
        assert!(role.to_string().contains("secrets"), "{role}");
        assert!(docs.iter().any(|d| d["kind"] == "RoleBinding"
            && d["metadata"]["name"] == "acteon-operator-watch"
            && d["metadata"]["namespace"] == ns));
    }
    let defaults = render(&repo_path("charts/acteon/ci/defaults-values.yaml"), &[]);
    let edit = named(&defaults, "ClusterRole", "acteon-edit");
    let view = named(&defaults, "ClusterRole", "acteon-view");
    assert_eq!(
        edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"],
        "true"
    );
    assert_eq!(
        edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"],
        "true"
    );
    assert_eq!(
        view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"],
        "true"
    );
    // The shared server has the CRDs; the roles get names of this test's own.
    let kube = Kube::get();
    kube.ensure_installed();
    let ns = unique_name("tenant");
    kube.create_namespace(&ns);
    let (edit_name, view_name) = (format!("{ns}-edit"), format!("{ns}-view"));
    let renamed = |d: &Value, name: &str| {
        let mut d = d.clone();
        d["metadata"]["name"] = Value::String(name.to_owned());
        serde_json::to_string(&d).expect("json")
    };
    kube.apply(&renamed(edit, &edit_name));
    kube.apply(&renamed(view, &view_name));
    for (user, role) in [("alice", edit_name.as_str()), ("bob", view_name.as_str())] {
        kube.apply(&format!(
            "{{\"apiVersion\":\"rbac.authorization.k8s.io/v1\",\"kind\":\"RoleBinding\",\"metadata\":{{\"name\":\"{user}\",\"namespace\":\"{ns}\"}},\"roleRef\":{{\"apiGroup\":\"rbac.authorization.k8s.io\",\"kind\":\"ClusterRole\",\"name\":\"{role}\"}},\"subjects\":[{{\"kind\":\"User\",\"name\":\"{user}\",\"apiGroup\":\"rbac.authorization.k8s.io\"}}]}}"
        ));
    }
    let can = |user: &str, verb: &str, resource: &str| {
        wait_until(WAIT, POLL, || {
            (kube.user_can(user, verb, resource, Some(&ns))).then_some(())
        })
        .is_some()
    };
    for resource in [
        "rules.acteon.dev",
        "providers.acteon.dev",
        "chains.acteon.dev",
        "statemachines.acteon.dev",
        "actionquotas.acteon.dev",
    ] {
        assert!(can("alice", "create", resource), "edit creates {resource}");
        assert!(can("bob", "list", resource), "view lists {resource}");
        assert!(
            !kube.user_can("bob", "create", resource, Some(&ns)),
            "view cannot create {resource}"
        );
    }
    assert!(
        !kube.user_can("alice", "create", "rules.acteon.dev", Some("default")),
        "only in the bound namespace"
    );
}

/// The knobs of the charts platform teams already run: extra args and volumes, probe
/// timing and a startup probe, a disruption budget that never blocks a drain (none for one
/// replica; `maxUnavailable`), gateways spread by default, ServiceMonitor relabelings, a
/// PrometheusRule whose every metric exists, a `helm test` dry-run dispatch, `kubeVersion`.
#[test]
fn the_chart_follows_the_usual_conventions() {
    let defaults = repo_path("charts/acteon/ci/defaults-values.yaml");
    let docs = render(
        &defaults,
        &[
            "--set-string",
            "gateway.extraArgs={--dedup-cache-entries,0}",
            "--set-string",
            "operator.extraArgs={--status-concurrency,64}",
            "--set",
            "gateway.extraVolumes[0].name=ca,gateway.extraVolumes[0].emptyDir.medium=Memory",
            "--set",
            "gateway.extraVolumeMounts[0].name=ca,gateway.extraVolumeMounts[0].mountPath=/etc/ca",
            "--set",
            "gateway.probes.startup.failureThreshold=60",
            "--set",
            "gateway.podDisruptionBudget.enabled=true,gateway.podDisruptionBudget.maxUnavailable=1",
        ],
    );
    let gateway = container(&docs, "acteon-gateway");
    assert_eq!(
        gateway["args"],
        json!(["serve", "--dedup-cache-entries", "0"])
    );
    assert_eq!(gateway["startupProbe"]["failureThreshold"], 60);
    assert_eq!(gateway["startupProbe"]["httpGet"]["path"], "/healthz");
    // The user's volumes come after the seal key's.
    assert_eq!(gateway["volumeMounts"][1]["mountPath"], "/etc/ca");
    let deployment = named(&docs, "Deployment", "acteon-gateway");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["volumes"][1]["name"], "ca");
    let spread: Vec<&str> = pod["topologySpreadConstraints"]
        .as_array()
        .expect("spread by default")
        .iter()
        .map(|c| c["topologyKey"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        spread,
        ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
    );
    assert_eq!(
        container(&docs, "acteon-operator")["args"],
        json!(["run", "--status-concurrency", "64"])
    );
    let pdb = named(&docs, "PodDisruptionBudget", "acteon-gateway");
    assert_eq!(
        (
            pdb["spec"]["maxUnavailable"].clone(),
            pdb["spec"]["minAvailable"].clone()
        ),
        (json!(1), Value::Null)
    );
    let single = render(
        &defaults,
        &[
            "--set",
            "gateway.replicas=1,gateway.podDisruptionBudget.enabled=true,operator.replicas=1",
        ],
    );
    assert!(
        of_kind(&single, "PodDisruptionBudget").is_empty(),
        "no budget for one replica"
    );
    let test_pod = named(&docs, "Pod", "acteon-test-dispatch");
    assert_eq!(test_pod["metadata"]["annotations"]["helm.sh/hook"], "test");
    assert!(test_pod.to_string().contains("dry_run=true"));

    let monitoring = render(
        &repo_path("charts/acteon/ci/monitoring-values.yaml"),
        &[
            "--set",
            "metrics.prometheusRule.enabled=true,metrics.serviceMonitor.honorLabels=true",
            "--set",
            "metrics.serviceMonitor.namespace=monitoring",
            "--set",
            "metrics.serviceMonitor.metricRelabelings[0].action=labeldrop,metrics.serviceMonitor.metricRelabelings[0].regex=pod",
        ],
    );
    let sm = named(&monitoring, "ServiceMonitor", "acteon-gateway");
    assert_eq!(sm["metadata"]["namespace"], "monitoring");
    assert_eq!(sm["spec"]["endpoints"][0]["honorLabels"], true);
    assert_eq!(
        sm["spec"]["endpoints"][0]["metricRelabelings"][0]["action"],
        "labeldrop"
    );
    let rule = named(&monitoring, "PrometheusRule", "acteon");
    let defined: String = [
        "gateway/src/metrics.rs",
        "gateway/src/http/lifecycle.rs",
        "operator/src/metrics.rs",
    ]
    .iter()
    .map(|p| std::fs::read_to_string(repo_path(p)).expect("metrics source"))
    .collect();
    let alerts = rule["spec"]["groups"][0]["rules"]
        .as_array()
        .expect("rules");
    assert!(alerts.len() >= 6, "{alerts:?}");
    for alert in alerts {
        for name in metric_names(alert["expr"].as_str().expect("expr")) {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            assert!(
                defined.contains(&format!("\"{base}\"")),
                "alert {}: {name} is not exported",
                alert["alert"]
            );
        }
    }
    let chart = std::fs::read_to_string(repo_path("charts/acteon/Chart.yaml")).expect("Chart.yaml");
    assert!(
        chart.contains("kubeVersion:") && chart.contains("sources:"),
        "{chart}"
    );
}

#[test]
fn the_values_shape_the_rendering() {
    let file = |n: &str| repo_path(&format!("charts/acteon/ci/{n}-values.yaml"));
    let defaults = render(&file("defaults"), &[]);
    assert_eq!(of_kind(&defaults, "CustomResourceDefinition").len(), 5);
    for crd in of_kind(&defaults, "CustomResourceDefinition") {
        assert_eq!(
            crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
            "CRDs are kept on uninstall by default"
        );
    }
    let operator = named(&defaults, "Deployment", "acteon-operator");
    assert_eq!(operator["spec"]["replicas"], 2, "two operators by default");
    assert!(of_kind(&defaults, "HorizontalPodAutoscaler").is_empty());
    assert!(of_kind(&defaults, "NetworkPolicy").is_empty());
    assert!(of_kind(&defaults, "ServiceMonitor").is_empty());
    // The state URL reaches the pods only through the Secret.
    let state_secret = named(&defaults, "Secret", "acteon-state");
    assert_eq!(
        state_secret["stringData"]["url"],
        "redis://redis.acteon-system.svc:6379"
    );
    assert!(
        !serde_json::to_string(operator)
            .unwrap()
            .contains("redis://")
    );

    let skipped = render(&file("defaults"), &["--set", "crds.install=false"]);
    assert!(of_kind(&skipped, "CustomResourceDefinition").is_empty());
    let unkept = render(&file("defaults"), &["--set", "crds.keep=false"]);
    for crd in of_kind(&unkept, "CustomResourceDefinition") {
        assert!(crd["metadata"]["annotations"]["helm.sh/resource-policy"].is_null());
    }

    let ha = render(&file("ha"), &[]);
    let hpa = of_kind(&ha, "HorizontalPodAutoscaler");
    assert_eq!(hpa.len(), 1);
    assert_eq!(hpa[0]["spec"]["scaleTargetRef"]["name"], "acteon-gateway");
    assert!(
        named(&ha, "Deployment", "acteon-gateway")["spec"]["replicas"].is_null(),
        "the HPA owns the replica count"
    );
    assert_eq!(of_kind(&ha, "PodDisruptionBudget").len(), 2);

    let monitoring = render(&file("monitoring"), &[]);
    assert_eq!(of_kind(&monitoring, "ServiceMonitor").len(), 2);
    let policies = render(&file("networkpolicy"), &[]);
    assert_eq!(of_kind(&policies, "NetworkPolicy").len(), 2);

    let redis = render(&file("redis"), &[]);
    assert!(
        of_kind(&redis, "Secret").is_empty(),
        "existing Secrets are used, none created"
    );
    let env = &named(&redis, "Deployment", "acteon-gateway")["spec"]["template"]["spec"]["containers"]
        [0]["env"];
    let state = env
        .as_array()
        .and_then(|e| e.iter().find(|v| v["name"] == "ACTEON_STATE"))
        .expect("ACTEON_STATE");
    assert_eq!(
        state["valueFrom"]["secretKeyRef"],
        json!({"name": "acteon-redis", "key": "redis-url"})
    );
}

// ---------------------------------------------------------------------------------------------
// Installs into the real API server
// ---------------------------------------------------------------------------------------------

fn ensure_servicemonitor_crd(kube: &Kube) {
    let fixture = repo_path("tests/e2e/fixtures/servicemonitor-crd.yaml");
    kube.apply_path(&fixture);
    kube.kubectl_ok(&[
        "wait",
        "--for",
        "condition=Established",
        "--timeout=60s",
        "crd/servicemonitors.monitoring.coreos.com",
    ]);
}

/// `(kind, namespace, name)` of every object in a release's manifest.
fn objects(manifest: &str) -> Vec<(String, Option<String>, String)> {
    documents(manifest)
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap_or_default().to_owned(),
                d["metadata"]["namespace"].as_str().map(str::to_owned),
                d["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}

fn exists(kube: &Kube, kind: &str, namespace: Option<&str>, name: &str) -> bool {
    let mut args = vec!["get", kind, name, "-o", "name"];
    if let Some(ns) = namespace {
        args.extend(["-n", ns]);
    }
    kube.kubectl(&args).status.success()
}

#[test]
fn every_rendering_installs_into_the_api_server_and_uninstalls_cleanly() {
    let kube = Kube::private();
    ensure_servicemonitor_crd(kube);
    // The namespaces `namespaced-values.yaml` lists (its Roles live there).
    for ns in ["team-a", "team-b", SYSTEM_NAMESPACE] {
        kube.create_namespace(ns);
    }
    for (name, file) in values_files() {
        let namespace = unique_name(&name);
        kube.create_namespace(&namespace);
        let release = format!("r-{name}");
        let out = kube.helm_ok(&[
            "install",
            &release,
            CHART,
            "--namespace",
            &namespace,
            "-f",
            path_str(&file),
            // The CRDs are installed (and removed) by the test below, once.
            "--set",
            "crds.install=false",
        ]);
        assert!(
            out.contains("NOTES:") && out.contains(&format!("r-{name}-acteon-gateway")),
            "{name}: NOTES name the gateway Service:\n{out}"
        );
        let manifest = kube.helm_ok(&["get", "manifest", &release, "-n", &namespace]);
        let created = objects(&manifest);
        assert!(created.len() >= 10, "{name}: {created:?}");
        for (kind, ns, object) in &created {
            assert!(
                exists(kube, kind, ns.as_deref(), object),
                "{name}: {kind} {object} was not created"
            );
        }
        kube.helm_ok(&["uninstall", &release, "--namespace", &namespace]);
        for (kind, ns, object) in &created {
            let gone = wait_until(WAIT, POLL, || {
                (!exists(kube, kind, ns.as_deref(), object)).then_some(())
            });
            assert!(gone.is_some(), "{name}: {kind} {object} survived uninstall");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The installed chart, running
// ---------------------------------------------------------------------------------------------

/// The container of a Deployment in a release manifest.
fn container<'a>(docs: &'a [Value], deployment: &str) -> &'a Value {
    &pod_spec(docs, deployment)["containers"][0]
}

fn pod_spec<'a>(docs: &'a [Value], deployment: &str) -> &'a Value {
    &named(docs, "Deployment", deployment)["spec"]["template"]["spec"]
}

/// The process a Deployment's first container describes: its command's binary (from this
/// build) with its arguments, and exactly its environment, Secret references read from the
/// cluster and Secret volumes projected into a local directory (paths under a mount
/// rewritten to it).
fn container_command(
    kube: &Kube,
    namespace: &str,
    pod: &Value,
    pod_name: &str,
) -> (Command, Projection) {
    let c = &pod["containers"][0];
    let program = c["command"][0].as_str().expect("command");
    let binary = Path::new(program)
        .file_name()
        .and_then(|n| n.to_str())
        .expect("binary name");
    let projection = Projection::new(kube, namespace, pod, pod_name);
    let mut cmd = Command::new(bin_path(binary));
    cmd.env_clear().current_dir(test_dir());
    for arg in c["args"].as_array().into_iter().flatten() {
        cmd.arg(projection.local(arg.as_str().expect("string argument")));
    }
    for var in c["env"].as_array().into_iter().flatten() {
        let name = var["name"].as_str().expect("env name");
        cmd.env(
            name,
            projection.local(&env_value(kube, namespace, var, pod_name)),
        );
    }
    (cmd, projection)
}

/// A pod's Secret volumes as the kubelet projects them: every key of each mounted Secret a
/// file in a local directory standing for the mount path.
struct Projection {
    /// (mount path, Secret name, local directory)
    mounts: Vec<(String, String, PathBuf)>,
    namespace: String,
}

impl Projection {
    fn new(kube: &Kube, namespace: &str, pod: &Value, pod_name: &str) -> Projection {
        let volumes = pod["volumes"].as_array().cloned().unwrap_or_default();
        let mut mounts = Vec::new();
        for mount in pod["containers"][0]["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let name = &mount["name"];
            let Some(secret) = volumes
                .iter()
                .find(|v| &v["name"] == name)
                .and_then(|v| v["secret"]["secretName"].as_str())
            else {
                continue;
            };
            let dir = test_dir().join(format!("{pod_name}-{}", name.as_str().expect("name")));
            let path = mount["mountPath"].as_str().expect("mountPath").to_owned();
            mounts.push((path, secret.to_owned(), dir));
        }
        let projection = Projection {
            mounts,
            namespace: namespace.to_owned(),
        };
        projection.refresh(kube);
        projection
    }

    /// Writes the Secrets' current data, as the kubelet does after a Secret changes (keys
    /// no longer in the Secret disappear).
    fn refresh(&self, kube: &Kube) {
        for (_, secret, dir) in &self.mounts {
            let _ = std::fs::remove_dir_all(dir);
            std::fs::create_dir_all(dir).expect("projection directory");
            let keys = kube.kubectl_ok(&[
                "get",
                "secret",
                secret,
                "-n",
                &self.namespace,
                "--template={{range $k, $v := .data}}{{$k}} {{end}}",
            ]);
            for key in keys.split_whitespace() {
                let template = format!("--template={{{{index .data \"{key}\" | base64decode}}}}");
                let value =
                    kube.kubectl_ok(&["get", "secret", secret, "-n", &self.namespace, &template]);
                std::fs::write(dir.join(key), value).expect("projected key");
            }
        }
    }

    /// `value` with a mount path prefix replaced by its local directory.
    fn local(&self, value: &str) -> String {
        for (path, _, dir) in &self.mounts {
            if let Some(rest) = value.strip_prefix(path.as_str()) {
                return format!("{}{rest}", dir.display());
            }
        }
        value.to_owned()
    }
}

fn env_value(kube: &Kube, namespace: &str, var: &Value, pod_name: &str) -> String {
    if let Some(v) = var["value"].as_str() {
        return v.to_owned();
    }
    let from = &var["valueFrom"];
    if let Some(secret) = from["secretKeyRef"].as_object() {
        let (name, key) = (
            secret["name"].as_str().expect("secret name"),
            secret["key"].as_str().expect("secret key"),
        );
        // An optional key that is absent gives an empty value (as the kubelet omits it).
        let template = format!(
            "--template={{{{with index .data \"{key}\"}}}}{{{{. | base64decode}}}}{{{{end}}}}"
        );
        return kube.kubectl_ok(&["get", "secret", name, "-n", namespace, &template]);
    }
    assert_eq!(
        from["fieldRef"]["fieldPath"], "metadata.name",
        "unexpected env source {var}"
    );
    pod_name.to_owned()
}

fn ready_condition(object: &Value) -> Option<&Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
}

fn get_json(kube: &Kube, kind: &str, namespace: &str, name: &str) -> Option<Value> {
    let out = kube.kubectl(&["get", kind, name, "-n", namespace, "-o", "json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

#[test]
fn the_installed_chart_runs_and_its_crds_follow_crds_keep() {
    let kube = Kube::private();
    kube.create_namespace(SYSTEM_NAMESPACE);
    let prefix = unique_name("chart");
    let gateway_port = free_port();
    let metrics_port = free_port();
    let set = format!(
        "state.url={},state.prefix={prefix},gateway.port={gateway_port},\
         operator.metricsPort={metrics_port},logging.json=false",
        redis_url()
    );
    // `helm install|upgrade` of this release with these values.
    let release = |verb: &str, extra: &[&str]| {
        let mut args = vec![verb, RELEASE, CHART, "-n", SYSTEM_NAMESPACE, "--set", &set];
        args.extend(extra);
        kube.helm_ok(&args)
    };
    release("install", &[]);
    kube.kubectl_ok(&[
        "wait",
        "--for",
        "condition=Established",
        "--timeout=60s",
        "crd/rules.acteon.dev",
        "crd/providers.acteon.dev",
        "crd/chains.acteon.dev",
        "crd/statemachines.acteon.dev",
        "crd/actionquotas.acteon.dev",
    ]);
    let manifest = documents(&kube.helm_ok(&["get", "manifest", RELEASE, "-n", SYSTEM_NAMESPACE]));

    // The operator as its Deployment runs it, with the token of the ServiceAccount the chart
    // created (kube-env issues it for system:serviceaccount:acteon-system:acteon-operator).
    let (mut operator, _) = container_command(
        kube,
        SYSTEM_NAMESPACE,
        pod_spec(&manifest, "acteon-operator"),
        "acteon-operator-0",
    );
    operator.env("KUBECONFIG", kube.operator_kubeconfig_path());
    let operator = Proc::spawn("acteon-operator", operator);
    // The operator creates the seal key Secret at its first start (the chart renders none);
    // the kubelet would hold the gateway containers until it exists.
    wait_until(WAIT, POLL, || {
        let out = kube.kubectl(&["get", "secret", "acteon-seal-key", "-n", SYSTEM_NAMESPACE]);
        out.status.success().then_some(())
    })
    .unwrap_or_else(|| panic!("no seal key Secret:\n{}", operator.log_tail(40)));
    let gateway = pod_spec(&manifest, "acteon-gateway");
    let mut gateways = Vec::new();
    let mut projections = Vec::new();
    for (i, port) in [gateway_port, free_port()].into_iter().enumerate() {
        let (mut cmd, projection) =
            container_command(kube, SYSTEM_NAMESPACE, gateway, &format!("gw-{i}"));
        cmd.env("ACTEON_LISTEN", format!("127.0.0.1:{port}"));
        cmd.env("ACTEON_PROBES_LISTEN", format!("127.0.0.1:{}", free_port()));
        // Stands in for the ServiceAccount token the pod mounts (what that ServiceAccount
        // may do is checked below).
        cmd.env("KUBECONFIG", kube.admin_kubeconfig_path());
        let proc = Proc::spawn("acteon-gateway", cmd);
        wait_healthy(&proc, port, WAIT).unwrap_or_else(|e| panic!("{e}"));
        gateways.push((proc, port));
        projections.push(projection);
    }
    wait_until(WAIT, POLL, || {
        matches!(http_get(metrics_port, "/readyz"), Some((200, _))).then_some(())
    })
    .unwrap_or_else(|| panic!("operator not ready:\n{}", operator.log_tail(40)));

    // A team's Provider and Rule become Ready and are served by both gateways, to the
    // team's own ServiceAccount (authentication is on by default).
    let team = unique_name("team");
    kube.create_namespace(&team);
    kube.kubectl_ok(&["create", "serviceaccount", "app", "-n", &team]);
    let token = kube
        .kubectl_ok(&[
            "create",
            "token",
            "app",
            "-n",
            &team,
            "--audience",
            "acteon",
        ])
        .trim()
        .to_owned();
    let dispatch = |port: u16, action: &Value| {
        let (status, body) = http_post_bearer(port, "/v1/dispatch", &token, action)
            .unwrap_or_else(|| panic!("no answer from :{port}"));
        (
            status,
            serde_json::from_str::<Value>(&body).unwrap_or(Value::String(body)),
        )
    };
    let gateway_sa = format!("system:serviceaccount:{SYSTEM_NAMESPACE}:acteon-gateway");
    assert!(kube.user_can(
        &gateway_sa,
        "create",
        "tokenreviews.authentication.k8s.io",
        None
    ));
    assert!(kube.user_can(&gateway_sa, "watch", "secrets", Some(SYSTEM_NAMESPACE)));
    assert!(!kube.user_can(&gateway_sa, "get", "secrets", Some(&team)));
    kube.apply(&format!(
        "apiVersion: acteon.dev/v1alpha1\nkind: Provider\nmetadata: {{name: out, namespace: {team}}}\n\
         spec: {{type: log}}\n---\n\
         apiVersion: acteon.dev/v1alpha1\nkind: Rule\nmetadata: {{name: quiet, namespace: {team}}}\n\
         spec: {{condition: {{field: action.action_type, eq: probe}}, action: {{type: suppress}}}}\n"
    ));
    let rule = wait_until(WAIT, POLL, || {
        get_json(kube, "rule", &team, "quiet")
            .filter(|r| ready_condition(r).is_some_and(|c| c["status"] == "True"))
    })
    .unwrap_or_else(|| panic!("Rule not Ready:\n{}", operator.log_tail(40)));
    for (_, port) in &gateways {
        let action = json!({"namespace": team, "tenant": "t", "provider": "out",
            "action_type": "probe", "payload": {}});
        let (status, body) = dispatch(*port, &action);
        assert_eq!(status, 200, "{body}");
        assert!(body.get("Suppressed").is_some(), "{body}");
        let anonymous = http_post(*port, "/v1/dispatch", &action).map(|a| a.0);
        assert_eq!(anonymous, Some(401), "authentication is on by default");
    }
    assert_eq!(argocd_health(&rule).0, "Healthy");

    // A broken Rule: Argo CD sees Degraded with the reason, Flux (kstatus) sees Stalled.
    kube.apply(&format!(
        "apiVersion: acteon.dev/v1alpha1\nkind: Rule\nmetadata: {{name: broken, namespace: {team}}}\n\
         spec: {{condition: {{field: action.action_type, eq: x}}, action: {{type: reroute, targetProvider: nowhere}}}}\n"
    ));
    let broken = wait_until(WAIT, POLL, || {
        get_json(kube, "rule", &team, "broken")
            .filter(|r| ready_condition(r).is_some_and(|c| c["status"] == "False"))
    })
    .expect("broken Rule not-ready");
    let (health, message) = argocd_health(&broken);
    assert_eq!(health, "Degraded", "{message}");
    assert!(message.starts_with("ProviderNotFound"), "{message}");
    let stalled = broken["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Stalled"))
        .expect("Stalled condition");
    assert_eq!(stalled["status"], "True");

    // Key rotation as the README describes it, with nothing restarted: the Secret gets a new
    // `key` (the old one as `previous`), the operator re-reads it, the kubelet rewrites the
    // gateways' files and they re-read them; then `previous` goes. A change made after that
    // is served only if the operator signs with the new key and the gateways hold it.
    let secret_value = |key: &str| {
        kube.kubectl_ok(&[
            "get",
            "secret",
            "acteon-seal-key",
            "-n",
            SYSTEM_NAMESPACE,
            &format!("--template={{{{index .data \"{key}\" | base64decode}}}}"),
        ])
    };
    let old_key = secret_value("key");
    let new_key = acteon_channel::seal::SealKey::generate().to_text();
    let patch_secret = |patch: Value| {
        kube.kubectl_ok(&[
            "patch",
            "secret",
            "acteon-seal-key",
            "-n",
            SYSTEM_NAMESPACE,
            "--type=merge",
            "-p",
            &patch.to_string(),
        ])
    };
    patch_secret(json!({"stringData": {"key": new_key, "previous": old_key}}));
    projections.iter().for_each(|p| p.refresh(kube));
    patch_secret(json!({"data": {"previous": null}}));
    projections.iter().for_each(|p| p.refresh(kube));
    kube.apply(&format!(
        "apiVersion: acteon.dev/v1alpha1\nkind: Rule\nmetadata: {{name: quiet, namespace: {team}}}\n\
         spec: {{condition: {{field: action.action_type, eq: rotated}}, action: {{type: suppress}}}}\n"
    ));
    for (_, port) in &gateways {
        let action = json!({"namespace": team, "tenant": "t", "provider": "out",
            "action_type": "rotated", "payload": {}});
        wait_until(WAIT, POLL, || {
            let (status, body) = dispatch(*port, &action);
            (status == 200 && body.get("Suppressed").is_some()).then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "the change after the rotation is not served on :{port}:\n{}\n{}",
                operator.log_tail(20),
                gateways
                    .iter()
                    .map(|(g, _)| g.log_tail(10))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        });
    }
    drop(gateways);
    drop(operator);

    // An upgrade keeps the operator's seal key (sealed credentials stay readable).
    let seal_key = || secret_value("key");
    let before = seal_key();
    assert_eq!(before, new_key, "64 hex characters of 32 random bytes");
    release("upgrade", &[]);
    assert_eq!(seal_key(), before, "helm upgrade replaced the seal key");

    // Uninstall keeps the CRDs (crds.keep defaults to true), and with them every Rule.
    kube.helm_ok(&["uninstall", RELEASE, "-n", SYSTEM_NAMESPACE]);
    assert!(exists(kube, "crd", None, "rules.acteon.dev"));
    assert!(exists(kube, "rule", Some(&team), "quiet"));
    assert!(!exists(
        kube,
        "deployment",
        Some(SYSTEM_NAMESPACE),
        "acteon-operator"
    ));

    // Installed again with crds.keep=false (adopting the kept CRDs), uninstall removes them.
    release("install", &["--set", "crds.keep=false"]);
    kube.helm_ok(&["uninstall", RELEASE, "-n", SYSTEM_NAMESPACE]);
    let gone = wait_until(WAIT, POLL, || {
        (!exists(kube, "crd", None, "rules.acteon.dev")).then_some(())
    });
    assert!(
        gone.is_some(),
        "crds.keep=false: the CRDs survived uninstall"
    );
}

// ---------------------------------------------------------------------------------------------
// Argo CD health check and Grafana dashboard
// ---------------------------------------------------------------------------------------------

/// Runs `files/argocd/health.lua` the way Argo CD does (Lua 5.1, the object as global `obj`,
/// JSON null as nil) → `(status, message)`.
fn argocd_health(object: &Value) -> (String, String) {
    let script = std::fs::read_to_string(repo_path("charts/acteon/files/argocd/health.lua"))
        .expect("health.lua");
    let lua = Lua::new();
    let options = SerializeOptions::new()
        .serialize_none_to_null(false)
        .serialize_unit_to_null(false);
    let obj = lua.to_value_with(object, options).expect("object to Lua");
    lua.globals().set("obj", obj).expect("set obj");
    let hs: mlua::Table = lua.load(&script).eval().expect("health.lua runs");
    (
        hs.get("status").expect("hs.status"),
        hs.get("message").unwrap_or_default(),
    )
}

fn with_status(generation: i64, status: Value) -> Value {
    json!({"apiVersion": "acteon.dev/v1alpha1", "kind": "Rule",
        "metadata": {"name": "r", "namespace": "n", "generation": generation},
        "spec": {}, "status": status})
}

fn conditions(accepted: (&str, &str), ready: (&str, &str), generation: i64) -> Value {
    json!({"observedGeneration": generation, "conditions": [
        {"type": "Accepted", "status": accepted.0, "reason": accepted.1, "message": "m1",
         "observedGeneration": generation, "lastTransitionTime": null},
        {"type": "Ready", "status": ready.0, "reason": ready.1, "message": "m2",
         "observedGeneration": generation},
    ]})
}

#[test]
fn argocd_health_follows_ready_accepted_and_the_observed_generation() {
    let new = json!({"apiVersion": "acteon.dev/v1alpha1", "kind": "Rule",
        "metadata": {"name": "r", "generation": 1}, "spec": {}});
    assert_eq!(argocd_health(&new).0, "Progressing", "no status yet");

    let served = with_status(3, conditions(("True", "Valid"), ("True", "Served"), 3));
    assert_eq!(
        argocd_health(&served),
        ("Healthy".to_owned(), "Served: m2".to_owned())
    );

    let stale = with_status(4, conditions(("True", "Valid"), ("True", "Served"), 3));
    let (status, message) = argocd_health(&stale);
    assert_eq!(status, "Progressing", "generation 4 not observed yet");
    assert!(message.contains('4'), "{message}");

    let propagating = with_status(
        3,
        conditions(("True", "Valid"), ("False", "Propagating"), 3),
    );
    assert_eq!(argocd_health(&propagating).0, "Progressing");

    let rejected = with_status(
        3,
        conditions(("False", "InvalidCel"), ("False", "InvalidCel"), 3),
    );
    assert_eq!(
        argocd_health(&rejected),
        ("Degraded".to_owned(), "InvalidCel: m1".to_owned())
    );
}

/// Every metric the dashboard queries is one the gateway or the operator defines.
#[test]
fn the_grafana_dashboard_queries_only_metrics_that_exist() {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_path("charts/acteon/files/grafana/acteon.json"))
            .expect("dashboard"),
    )
    .expect("dashboard JSON");
    let defined: String = ["gateway/src/metrics.rs", "operator/src/metrics.rs"]
        .iter()
        .map(|p| std::fs::read_to_string(repo_path(p)).expect("metrics source"))
        .collect();
    let mut used = BTreeMap::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("expr");
            for name in metric_names(expr) {
                used.insert(name, panel["title"].clone());
            }
        }
    }
    assert!(used.len() >= 15, "{used:?}");
    for (name, panel) in used {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name);
        assert!(
            defined.contains(&format!("\"{base}\"")),
            "panel {panel}: {name} is not a metric of the gateway or the operator"
        );
    }
}

fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("acteon_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn the_dashboard_ships_in_a_configmap() {
    let docs = render(&repo_path("charts/acteon/ci/monitoring-values.yaml"), &[]);
    let map = named(&docs, "ConfigMap", "acteon-dashboard");
    assert_eq!(map["metadata"]["labels"]["grafana_dashboard"], "1");
    let json: Value = serde_json::from_str(map["data"]["acteon.json"].as_str().expect("data"))
        .expect("the ConfigMap holds valid dashboard JSON");
    assert_eq!(json["uid"], "acteon-overview");
}

// ---------------------------------------------------------------------------------------------
// First contact: no values at all
// ---------------------------------------------------------------------------------------------

/// `helm template` of the chart with `extra` and nothing else, as documents.
fn render_bare(extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["template", RELEASE, CHART, "--namespace", SYSTEM_NAMESPACE];
    args.extend(extra);
    documents(&helm_ok(&args))
}

fn evaluation_redis(docs: &[Value]) -> Vec<&Value> {
    docs.iter()
        .filter(|d| d["metadata"]["labels"]["app.kubernetes.io/component"] == "evaluation-redis")
        .collect()
}

/// With no values the chart renders a single Redis for evaluation, marked not for
/// production, as locked down as the rest, and points the state Secret at it; a state URL
/// or an existing Secret removes it; disabling it without a backend fails naming the value.
#[test]
fn with_no_values_a_locked_down_evaluation_redis_is_the_state_backend() {
    let docs = render_bare(&[]);
    let redis = named(&docs, "Deployment", "acteon-redis");
    assert!(
        redis["metadata"]["annotations"]["acteon.dev/not-for-production"].is_string(),
        "{redis}"
    );
    assert_eq!(redis["spec"]["replicas"], 1);
    let pod = &redis["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(pod["automountServiceAccountToken"], false);
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert!(c["resources"]["requests"]["cpu"].is_string(), "{c}");
    assert!(c["resources"]["requests"]["memory"].is_string(), "{c}");
    assert!(c["resources"]["limits"]["memory"].is_string(), "{c}");
    assert!(
        c["readinessProbe"].is_object() && c["livenessProbe"].is_object(),
        "{c}"
    );
    let image = c["image"].as_str().unwrap_or_default();
    assert!(
        image.contains("redis:") && !image.ends_with(":latest"),
        "{image}"
    );
    assert_eq!(c["volumeMounts"][0]["mountPath"], "/data", "{c}");
    assert!(pod["volumes"][0]["emptyDir"].is_object(), "{pod}");
    named(&docs, "Service", "acteon-redis");
    let state = named(&docs, "Secret", "acteon-state");
    assert_eq!(
        state["stringData"]["url"],
        format!("redis://acteon-redis.{SYSTEM_NAMESPACE}.svc:6379")
    );

    for extra in [
        &["--set", "state.url=redis://mine:6379"][..],
        &["--set", "state.existingSecret=my-state"][..],
    ] {
        let docs = render_bare(extra);
        assert!(evaluation_redis(&docs).is_empty(), "{extra:?}");
    }
    let out = helm(&[
        "template",
        RELEASE,
        CHART,
        "--set",
        "evaluationRedis.enabled=false",
    ]);
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("state.url") && text.contains("evaluationRedis.enabled"),
        "{text}"
    );
}

/// `helm install` with no values succeeds on a real API server and its NOTES say the state
/// backend is for evaluation only; uninstall removes the Redis.
#[test]
fn helm_install_with_no_values_works_and_says_not_for_production() {
    let kube = Kube::private();
    let namespace = unique_name("bare");
    kube.create_namespace(&namespace);
    let out = kube.helm_ok(&[
        "install",
        "bare",
        CHART,
        "--namespace",
        &namespace,
        "--set",
        "crds.install=false",
    ]);
    assert!(out.contains("NOT FOR PRODUCTION"), "{out}");
    assert!(exists(
        kube,
        "Deployment",
        Some(&namespace),
        "bare-acteon-redis"
    ));
    assert!(exists(
        kube,
        "Service",
        Some(&namespace),
        "bare-acteon-redis"
    ));
    kube.helm_ok(&["uninstall", "bare", "--namespace", &namespace]);
    let gone = wait_until(WAIT, POLL, || {
        (!exists(kube, "Deployment", Some(&namespace), "bare-acteon-redis")).then_some(())
    });
    assert!(gone.is_some(), "the evaluation Redis survived uninstall");
}
