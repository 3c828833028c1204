//! The chart's operator RBAC (charts/acteon/templates/operator-rbac.yaml) against a real
//! kube-apiserver: the operator's token can do exactly what the operator needs, and no more.

use acteon_e2e::*;

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

#[test]
fn the_gateway_service_account_has_no_api_rights() {
    let kube = Kube::get();
    kube.ensure_installed();
    kube.apply(&render_chart_template(
        "templates/gateway-serviceaccount.yaml",
    ));
    let gateway = format!("system:serviceaccount:{SYSTEM_NAMESPACE}:acteon-gateway");
    let team = unique_name("team");
    kube.create_namespace(&team);
    let mut granted = Vec::new();
    for (verb, resource, ns) in [
        ("list", "rules.acteon.dev", None),
        ("get", "providers.acteon.dev", Some(team.as_str())),
        ("get", "secrets", Some(team.as_str())),
        ("get", "secrets", Some(SYSTEM_NAMESPACE)),
        ("create", "events", Some(SYSTEM_NAMESPACE)),
        ("get", "leases.coordination.k8s.io", Some(SYSTEM_NAMESPACE)),
        ("get", "configmaps", Some(SYSTEM_NAMESPACE)),
    ] {
        if kube.user_can(&gateway, verb, resource, ns) {
            granted.push(format!("{verb} {resource} in {ns:?}"));
        }
    }
    assert!(granted.is_empty(), "the gateway may: {granted:?}");
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
