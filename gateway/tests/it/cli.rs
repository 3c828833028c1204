//! The `validate` and `convert` subcommands of the real binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use acteon_api::compile::{CompileOptions, compile, parse_text};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs the gateway binary from the repository root.
fn gateway(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_acteon-gateway"))
        .args(args)
        .current_dir(repo_root())
        .env_remove("ACTEON_SHARED_NAMESPACE")
        .output()
        .expect("the gateway binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A file under the temp directory that is removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &str) -> TempFile {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let unique = format!(
            "acteon-cli-test-{}-{}-{name}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(unique);
        std::fs::write(&path, contents).expect("temp file is writable");
        TempFile(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn arg(&self) -> &str {
        self.0.to_str().expect("temp path is UTF-8")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn validate_accepts_the_repository_samples_and_rules() {
    let out = gateway(&["validate", "config/samples", "rules"]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {stdout}\nstderr: {}",
        out.status.code(),
        text(&out.stderr)
    );
    assert!(stdout.starts_with("ok: "), "{stdout}");
    // The samples hold rules, providers, chains and a quota; none of them may be dropped.
    for kind in ["rules", "providers", "chains", "quotas"] {
        assert!(
            !stdout.contains(&format!(" 0 {kind}")),
            "{kind} missing: {stdout}"
        );
    }
}

#[test]
fn validate_rejects_a_broken_manifest_naming_file_object_and_field() {
    let file = TempFile::new(
        "broken.yaml",
        "apiVersion: acteon.dev/v1alpha1
kind: Provider
metadata: {name: pager, namespace: team-a}
spec: {type: log}
---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {name: page-on-call, namespace: team-a}
spec:
  condition: {field: action.tenant, eq: t1}
  action: {type: reroute, targetProvider: pagr}
---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {name: fine, namespace: team-a}
spec:
  condition: {field: action.tenant, eq: t1}
  action: {type: reroute, targetProvider: pager}
",
    );
    let out = gateway(&["validate", file.arg()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains(file.arg()), "names the file: {stderr}");
    assert!(
        stderr.contains("Rule team-a/page-on-call"),
        "names the object: {stderr}"
    );
    assert!(
        stderr.contains("spec.action.targetProvider"),
        "names the field: {stderr}"
    );
    assert!(
        stderr.contains("pagr"),
        "names the missing provider: {stderr}"
    );
    assert!(
        !stderr.contains("fine"),
        "only the bad object is reported: {stderr}"
    );
    assert!(stderr.contains("1 problem(s) found"), "{stderr}");
}

#[test]
fn validate_reports_a_type_error_at_its_field() {
    let file = TempFile::new(
        "ttl.yaml",
        "apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {name: dedup, namespace: team-a}
spec:
  condition: {field: action.tenant, eq: t1}
  action: {type: deduplicate, ttlSeconds: soon}
",
    );
    let out = gateway(&["validate", file.arg()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("Rule team-a/dedup"), "{stderr}");
    assert!(stderr.contains("spec.action.ttlSeconds"), "{stderr}");
}

#[test]
fn validate_rejects_yaml_syntax_errors_and_missing_files() {
    let file = TempFile::new("syntax.yaml", "kind: Rule\nmetadata: {name: x\n");
    let out = gateway(&["validate", file.arg()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains(file.arg()), "{stderr}");
    assert!(stderr.contains("not valid YAML"), "{stderr}");

    let missing =
        std::env::temp_dir().join(format!("acteon-cli-test-{}-nope.yaml", std::process::id()));
    let out = gateway(&["validate", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("nope.yaml"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn validate_honours_the_shared_namespace_option() {
    let file = TempFile::new(
        "shared.yaml",
        "apiVersion: acteon.dev/v1alpha1
kind: Provider
metadata: {name: shared-log, namespace: platform}
spec: {type: log}
---
apiVersion: acteon.dev/v1alpha1
kind: Rule
metadata: {name: to-shared, namespace: team-a}
spec:
  condition: {field: action.tenant, eq: t1}
  action: {type: reroute, targetProvider: shared-log}
",
    );
    let out = gateway(&["validate", file.arg()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let out = gateway(&["validate", "--shared-namespace", "platform", file.arg()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn convert_prints_manifests_that_validate_and_compile_to_the_same_specs() {
    let out = gateway(&["convert", "rules/maintenance.yaml", "--namespace", "demo"]);
    let manifests = text(&out.stdout);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert!(
        manifests.contains("apiVersion: acteon.dev/v1alpha1"),
        "{manifests}"
    );
    assert!(manifests.contains("kind: Rule"), "{manifests}");
    assert!(manifests.contains("namespace: demo"), "{manifests}");
    // Manifests spell operators in camelCase.
    assert!(manifests.contains("inList"), "{manifests}");
    assert!(!manifests.contains("in_list"), "{manifests}");

    let file = TempFile::new("converted.yaml", &manifests);
    let out = gateway(&["validate", file.arg()]);
    assert!(
        out.status.success(),
        "the converted manifests validate:\n{manifests}\nstderr: {}",
        text(&out.stderr)
    );

    let original_text =
        std::fs::read_to_string(repo_root().join("rules/maintenance.yaml")).unwrap();
    let original = compile(
        &parse_text("rules/maintenance.yaml", &original_text).expect("rule file parses"),
        &CompileOptions::default(),
    );
    assert!(original.rejections.is_empty(), "{:#?}", original.rejections);
    let converted = compile(
        &parse_text(&file.path().display().to_string(), &manifests)
            .expect("converted manifests parse"),
        &CompileOptions::default(),
    );
    assert!(
        converted.rejections.is_empty(),
        "{:#?}",
        converted.rejections
    );

    assert!(!original.snapshot.rules.is_empty());
    assert_eq!(
        original.snapshot.rules.len(),
        converted.snapshot.rules.len()
    );
    for (a, b) in original
        .snapshot
        .rules
        .iter()
        .zip(&converted.snapshot.rules)
    {
        assert_eq!(a.name, b.name);
        assert_eq!(a.namespace, None, "rule-file rules are shared");
        assert_eq!(b.namespace.as_deref(), Some("demo"));
        assert_eq!(a.spec, b.spec, "rule {}", a.name);
    }
}

#[test]
fn convert_without_namespace_leaves_it_out() {
    let out = gateway(&["convert", "rules/maintenance.yaml"]);
    let manifests = text(&out.stdout);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert!(!manifests.contains("namespace:"), "{manifests}");
}

#[test]
fn convert_reports_a_bad_rule_file() {
    let file = TempFile::new(
        "bad-rules.yaml",
        "rules:\n  - name: r\n    mute_time_intervals: [nights]\n    action: {type: suppress}\n",
    );
    let out = gateway(&["convert", file.arg()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("rules[0].mute_time_intervals"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing is printed on error");
}

#[test]
fn validate_and_convert_warn_about_keys_acteon_ignores() {
    let file = TempFile::new(
        "ignored-keys.yaml",
        "rules:\n  - name: r\n    when: {}\n    condition: {field: action.tenant, eq: t}\n    action: {type: suppress, default_next: x}\n",
    );
    let out = gateway(&["validate", file.arg()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("warning:") && err.contains("rules[0].when"),
        "{err}"
    );
    assert!(err.contains("rules[0].action.default_next"), "{err}");
    let out = gateway(&["convert", file.arg()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("rules[0].when"));
    assert!(
        !text(&out.stdout).contains("default_next"),
        "dropped from the manifest"
    );
    // A key Acteon reads that is not supported yet is an error naming it.
    let not_yet = TempFile::new(
        "not-yet.yaml",
        "rules:\n  - name: r\n    condition: {semantic_match: billing}\n    action: {type: suppress}\n",
    );
    let out = gateway(&["validate", not_yet.arg()]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not supported yet: semantic_match"),
        "{}",
        text(&out.stderr)
    );
}

/// The README's flag tables list every environment variable the binaries read.
#[test]
fn readme_lists_every_environment_variable() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README");
    for source in ["gateway/src/cli.rs", "operator/src/main.rs"] {
        let code = std::fs::read_to_string(root.join(source)).expect("source");
        let vars: Vec<&str> = code
            .split("env = \"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .collect();
        assert!(vars.len() >= 10, "{source}: {vars:?}");
        for var in vars {
            assert!(
                readme.contains(&format!("`{var}`")),
                "README lacks `{var}` ({source})"
            );
        }
    }
}
