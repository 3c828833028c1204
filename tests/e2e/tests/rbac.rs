//! The chart's operator RBAC (charts/acteon/templates/operator-rbac.yaml) against a real
//! kube-apiserver: the operator's token can do exactly what the operator needs, and no more.

use std::time::Duration;

use acteon_e2e::*;
use serde_json::json;

/// Asks as the operator (a SelfSubjectAccessReview through `kubectl auth can-i`) and collects
/// every answer that is not the expected one, so one failure lists them all.
fn check(
    kube: &Kube,
    expected: bool,
    cases: &[(&str, &str, Option<&str>, Option<&str>)],
) -> Vec<String> {
    cases
        .iter()
        .filter(|(verb, resource, sub, ns)| {
            kube.operator_can(verb, resource, *sub, *ns) != expected
        })
        .map(|(verb, resource, sub, ns)| {
            format!(
                "operator {} {verb} {resource}{} in {}",
                if expected { "cannot" } else { "CAN" },
                sub.map(|s| format!("/{s}")).unwrap_or_default(),
                ns.unwrap_or("all namespaces"),
            )
        })
        .collect()
}

const KINDS: [&str; 5] = [
    "rules.acteon.dev",
    "providers.acteon.dev",
    "chains.acteon.dev",
    "statemachines.acteon.dev",
    "actionquotas.acteon.dev",
];

#[test]
fn operator_can_do_what_it_needs() {
    let kube = Kube::get();
    kube.ensure_installed();
    let team = unique_name("team");
    kube.create_namespace(&team);
    let mut cases = Vec::new();
    for kind in KINDS {
        for verb in ["get", "list", "watch"] {
            cases.push((verb, kind, None, None));
            cases.push((verb, kind, None, Some(team.as_str())));
        }
        for verb in ["get", "patch", "update"] {
            cases.push((verb, kind, Some("status"), Some(team.as_str())));
        }
    }
    for verb in ["get", "list", "watch"] {
        cases.push((verb, "secrets", None, None));
        cases.push((verb, "secrets", None, Some(team.as_str())));
    }
    for verb in ["create", "patch"] {
        cases.push((verb, "events.events.k8s.io", None, Some(team.as_str())));
        cases.push((verb, "events", None, Some(team.as_str())));
    }
    for verb in ["get", "list", "watch", "create", "update", "patch"] {
        cases.push((
            verb,
            "leases.coordination.k8s.io",
            None,
            Some(SYSTEM_NAMESPACE),
        ));
    }
    let wrong = check(kube, true, &cases);
    assert!(
        wrong.is_empty(),
        "missing permissions:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn operator_cannot_do_more() {
    let kube = Kube::get();
    kube.ensure_installed();
    let team = unique_name("team");
    kube.create_namespace(&team);
    let ns = Some(team.as_str());
    let mut cases = Vec::new();
    // Never writes spec (or anything but status) of the custom resources.
    for kind in KINDS {
        for verb in ["create", "update", "patch", "delete", "deletecollection"] {
            cases.push((verb, kind, None, ns));
        }
        cases.push(("delete", kind, Some("status"), ns));
    }
    cases.extend([
        ("create", "secrets", None, ns),
        ("update", "secrets", None, ns),
        ("patch", "secrets", None, ns),
        ("delete", "secrets", None, ns),
        // Leases only in its own namespace.
        ("get", "leases.coordination.k8s.io", None, ns),
        ("create", "leases.coordination.k8s.io", None, ns),
        ("update", "leases.coordination.k8s.io", None, ns),
        (
            "update",
            "leases.coordination.k8s.io",
            None,
            Some("default"),
        ),
        ("list", "leases.coordination.k8s.io", None, None),
        (
            "delete",
            "leases.coordination.k8s.io",
            None,
            Some(SYSTEM_NAMESPACE),
        ),
        // Events: write-only, and not deletable.
        ("delete", "events.events.k8s.io", None, ns),
        ("list", "events", None, ns),
        // Nothing else.
        ("get", "pods", None, ns),
        ("list", "pods", None, None),
        ("get", "configmaps", None, ns),
        ("create", "namespaces", None, None),
        ("list", "namespaces", None, None),
        ("create", "deployments.apps", None, ns),
        (
            "update",
            "customresourcedefinitions.apiextensions.k8s.io",
            None,
            None,
        ),
        (
            "create",
            "clusterrolebindings.rbac.authorization.k8s.io",
            None,
            None,
        ),
        (
            "create",
            "rolebindings.rbac.authorization.k8s.io",
            None,
            Some(SYSTEM_NAMESPACE),
        ),
        (
            "impersonate",
            "serviceaccounts",
            None,
            Some(SYSTEM_NAMESPACE),
        ),
        (
            "create",
            "serviceaccounts",
            Some("token"),
            Some(SYSTEM_NAMESPACE),
        ),
    ]);
    let wrong = check(kube, false, &cases);
    assert!(
        wrong.is_empty(),
        "excess permissions:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_operator_token_really_is_limited() {
    // Not only the access review: real requests with the operator's kubeconfig.
    let kube = Kube::get();
    kube.ensure_installed();
    let team = unique_name("team");
    kube.create_namespace(&team);
    kube.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: creds, namespace: {team}}}\n\
         stringData: {{token: t}}\n"
    ));
    let ok = kube.kubectl_as_operator(&["get", "rules.acteon.dev", "--all-namespaces"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let ok = kube.kubectl_as_operator(&["get", "secret", "creds", "-n", &team]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let denied = kube.kubectl_as_operator(&["delete", "secret", "creds", "-n", &team]);
    assert!(!denied.status.success(), "the operator deleted a Secret");
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(stderr.contains("forbidden"), "{stderr}");
    assert!(
        stderr.contains(kube.operator_user()),
        "denied for the wrong user: {stderr}"
    );
    let denied = kube.kubectl_as_operator(&["get", "pods", "-n", &team]);
    assert!(!denied.status.success(), "the operator listed pods");
}

/// The gateway's ServiceAccount (authentication on, the chart's default) may review tokens and
/// read the Secrets of its own namespace (API tokens) — nothing else.
#[test]
fn the_gateway_service_account_has_only_what_authentication_needs() {
    let kube = Kube::get();
    kube.ensure_installed();
    kube.apply(&render_chart_template(
        "templates/gateway-serviceaccount.yaml",
    ));
    let gateway = format!("system:serviceaccount:{SYSTEM_NAMESPACE}:acteon-gateway");
    let team = unique_name("team");
    kube.create_namespace(&team);
    let mut wrong = Vec::new();
    for (verb, resource, ns, expected) in [
        ("create", "tokenreviews.authentication.k8s.io", None, true),
        ("watch", "secrets", Some(SYSTEM_NAMESPACE), true),
        ("get", "secrets", Some(SYSTEM_NAMESPACE), true),
        ("list", "secrets", Some(team.as_str()), false),
        ("create", "secrets", Some(SYSTEM_NAMESPACE), false),
        ("list", "rules.acteon.dev", None, false),
        ("get", "providers.acteon.dev", Some(team.as_str()), false),
        ("create", "events", Some(SYSTEM_NAMESPACE), false),
        (
            "get",
            "leases.coordination.k8s.io",
            Some(SYSTEM_NAMESPACE),
            false,
        ),
        ("get", "configmaps", Some(SYSTEM_NAMESPACE), false),
    ] {
        if kube.user_can(&gateway, verb, resource, ns) != expected {
            wrong.push(format!("{verb} {resource} in {ns:?}: expected {expected}"));
        }
    }
    assert!(wrong.is_empty(), "the gateway's rights: {wrong:?}");
}

#[test]
fn helm_lint_is_clean() {
    let out = helm(&["lint", "--strict", "charts/acteon"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "helm lint failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("0 chart(s) failed"), "{stdout}");
    assert!(!stdout.contains("[WARNING]"), "{stdout}");
    assert!(!stdout.contains("[ERROR]"), "{stdout}");
}

#[test]
fn the_chart_renders_the_operator_rbac_with_the_expected_names() {
    let yaml = render_operator_rbac();
    let docs: Vec<&str> = yaml
        .split("\n---")
        .filter(|d| d.contains("kind:"))
        .collect();
    let field = |doc: &str, key: &str| -> Option<String> {
        doc.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_owned())
    };
    let mut objects: Vec<(String, String, Option<String>)> = docs
        .iter()
        .map(|d| {
            (
                field(d, "kind: ").expect("kind"),
                field(d, "  name: ").expect("metadata.name"),
                field(d, "  namespace: "),
            )
        })
        .collect();
    objects.sort();
    let ns = Some(SYSTEM_NAMESPACE.to_owned());
    let name = "acteon-operator".to_owned();
    assert_eq!(
        objects,
        vec![
            ("ClusterRole".to_owned(), name.clone(), None),
            ("ClusterRoleBinding".to_owned(), name.clone(), None),
            ("Role".to_owned(), name.clone(), ns.clone()),
            ("RoleBinding".to_owned(), name.clone(), ns.clone()),
            ("ServiceAccount".to_owned(), name.clone(), ns.clone()),
        ],
        "{yaml}"
    );
    // Both bindings bind the ServiceAccount the e2e token stands for.
    for binding in docs.iter().filter(|d| d.contains("Binding\n")) {
        assert!(
            binding.contains(
                "subjects:\n  - kind: ServiceAccount\n    name: acteon-operator\n    namespace: acteon-system"
            ),
            "{binding}"
        );
    }
    // The operator never gets write access to spec, nor wildcards.
    assert!(!yaml.contains('*'), "wildcard in the RBAC:\n{yaml}");
    let all = helm_ok(&[
        "template",
        RELEASE,
        "charts/acteon",
        "--namespace",
        SYSTEM_NAMESPACE,
        "--set",
        "state.url=redis://127.0.0.1:6379",
    ]);
    assert!(
        all.contains(
            "kind: ServiceAccount\nmetadata:\n  name: acteon-gateway\n  namespace: acteon-system"
        ),
        "{all}"
    );
    assert!(all.contains("automountServiceAccountToken: false"), "{all}");
}

/// `--auth on` against the real API server. ServiceAccount tokens (TokenRequest, audience
/// `acteon`) scope a caller to its namespace: its own → 200, another → 403; a token for
/// another audience → 401; a deleted ServiceAccount's token stops working within the cache
/// TTL. API tokens from labelled Secrets: role and scope enforced, and editing the Secret
/// swaps the token without a restart.
#[test]
fn gateway_callers_are_who_the_api_server_says_within_their_namespace() {
    let kube = Kube::get();
    let (a, b) = (unique_name("auth-a"), unique_name("auth-b"));
    let tokens_ns = unique_name("auth-gw");
    for ns in [&a, &b, &tokens_ns] {
        kube.create_namespace(ns);
    }
    for ns in [&a, &b] {
        kube.kubectl_ok(&["create", "serviceaccount", "app", "-n", ns]);
    }
    let token = |ns: &str, audience: &str| {
        kube.kubectl_ok(&[
            "create",
            "token",
            "app",
            "-n",
            ns,
            "--audience",
            audience,
            "--duration",
            "10m",
        ])
        .trim()
        .to_owned()
    };
    let (token_a, token_b, token_other) =
        (token(&a, "acteon"), token(&b, "acteon"), token(&a, "other"));
    let config = test_dir().join(format!("{}.yaml", unique_name("auth-config")));
    std::fs::write(
        &config,
        format!(
            "apiVersion: acteon.dev/v1alpha1\nkind: Provider\nmetadata: {{name: p, namespace: {a}}}\nspec: {{type: noop}}\n---\n\
             apiVersion: acteon.dev/v1alpha1\nkind: Provider\nmetadata: {{name: p, namespace: {b}}}\nspec: {{type: noop}}\n"
        ),
    )
    .expect("config");
    let port = free_port();
    let mut cmd = gateway_command(
        port,
        &[
            "--config",
            config.to_str().expect("utf-8"),
            "--auth",
            "on",
            "--auth-service-accounts",
            "--auth-cache-seconds",
            "2",
            "--api-token-secrets-namespace",
            &tokens_ns,
        ],
    );
    cmd.env("KUBECONFIG", kube.admin_kubeconfig_path());
    let gateway = Proc::spawn("acteon-gateway", cmd);
    wait_healthy(&gateway, port, Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"));
    let action = |ns: &str| json!({"namespace": ns, "tenant": "t", "provider": "p", "action_type": "x", "payload": {}});
    let status = |token: &str, ns: &str| {
        http_post_bearer(port, "/v1/dispatch", token, &action(ns))
            .unwrap_or_else(|| panic!("no answer:\n{}", gateway.log_tail(20)))
    };
    let (code, body) = status(&token_a, &a);
    assert_eq!(code, 200, "{body}\n{}", gateway.log_tail(20));
    assert_eq!(status(&token_b, &b).0, 200);
    let (code, body) = status(&token_a, &b);
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains(&format!("system:serviceaccount:{a}:app")),
        "{body}"
    );
    let (code, body) = status(&token_other, &a);
    assert_eq!(code, 401, "another audience: {body}");
    assert!(!body.contains(&token_other), "{body}");
    assert_eq!(
        http_post(port, "/v1/dispatch", &action(&a)).map(|r| r.0),
        Some(401)
    );

    // A deleted ServiceAccount: its token stops working once the cached review expires.
    kube.kubectl_ok(&["delete", "serviceaccount", "app", "-n", &a]);
    wait_until(Duration::from_secs(20), Duration::from_millis(250), || {
        (status(&token_a, &a).0 == 401).then_some(())
    })
    .unwrap_or_else(|| panic!("the deleted ServiceAccount's token still works"));
    assert_eq!(status(&token_b, &b).0, 200, "others unaffected");

    // API tokens from labelled Secrets in the gateway's namespace.
    let secret = |name: &str, token: &str, role: &str| {
        kube.apply(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {tokens_ns}\n  labels: {{acteon.dev/api-token: \"true\"}}\n\
             stringData: {{token: {token}, role: {role}, namespaces: {a}}}\n"
        ));
    };
    secret("ci", "ci-token-1", "dispatch");
    secret("viewer", "viewer-token", "read");
    let works = |token: &str, ns: &str, want: u16| {
        wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
            (status(token, ns).0 == want).then_some(())
        })
        .unwrap_or_else(|| panic!("{token} into {ns}: never {want}: {:?}", status(token, ns)));
    };
    works("ci-token-1", &a, 200);
    assert_eq!(status("ci-token-1", &b).0, 403, "outside its namespaces");
    assert_eq!(status("viewer-token", &a).0, 403, "read may not dispatch");
    secret("ci", "ci-token-2", "dispatch");
    works("ci-token-2", &a, 200);
    assert_eq!(status("ci-token-1", &a).0, 401, "the old token is gone");
}
