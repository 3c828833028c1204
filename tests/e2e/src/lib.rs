//! Harness for the end-to-end tests (see tests/e2e/README.md): a real kube-apiserver
//! ([`Kube`]), the operator and gateway binaries as child processes ([`Proc`],
//! [`start_gateway`], [`start_operator`]), and small helpers (waiting, ports, names, HTTP).
//!
//! The API server comes from `scripts/test.sh` (which runs `tests/e2e/kube-env.sh start` and
//! exports its `ACTEON_E2E_*` variables) or, when those variables are absent, is started by
//! [`Kube::get`] itself for the lifetime of the test process.
//!
//! This is test code: every helper panics with a message that says what failed (and shows the
//! relevant output or log) instead of returning errors, unless its name starts with `try_`.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, File};
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Namespace the chart is rendered into; the operator token user is
/// `system:serviceaccount:acteon-system:acteon-operator`.
pub const SYSTEM_NAMESPACE: &str = "acteon-system";
/// Helm release name used for the chart's RBAC (names render as `acteon-operator`).
pub const RELEASE: &str = "acteon";
/// Field manager of [`Kube::apply`].
pub const FIELD_MANAGER: &str = "e2e";

/// How long [`start_gateway`] waits for `/healthz`.
const GATEWAY_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Kube::ensure_installed`] waits for CRDs and RBAC to take effect.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Paths and tools
// ---------------------------------------------------------------------------------------------

/// The workspace root (the directory holding `crds/`, `charts/`, `tests/`).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(Path::parent)
        .expect("tests/e2e has a workspace root two levels up")
        .to_path_buf()
}

/// `target/<profile>/` of the running test executable (tests run from
/// `target/<profile>/deps/`).
fn profile_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let deps = exe.parent()?;
    if deps.file_name()? == "deps" {
        deps.parent().map(Path::to_path_buf)
    } else {
        // A binary run directly from target/<profile>/.
        Some(deps.to_path_buf())
    }
}

/// `<workspace root>/<relative>`.
pub fn repo_path(relative: &str) -> PathBuf {
    workspace_root().join(relative)
}

/// A workspace binary, `target/<profile>/<name>`, next to the running test executable.
///
/// Panics with "run `cargo build --workspace` first" when it is missing: `cargo test` builds a
/// package's binaries only for that package's own integration tests, so `scripts/test.sh` builds
/// them before running the tests.
pub fn bin_path(name: &str) -> PathBuf {
    let dir = profile_dir().expect("the test executable lives under target/<profile>/deps/");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace` first",
        path.display()
    );
    path
}

/// The cache of `kube-env.sh install`: `$ACTEON_CACHE/bin` (default `~/.cache/acteon-e2e/bin`).
fn cache_bin() -> Option<PathBuf> {
    if let Some(cache) = std::env::var_os("ACTEON_CACHE") {
        return Some(PathBuf::from(cache).join("bin"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/acteon-e2e/bin"))
}

/// Where `kubectl` / `helm` are taken from: `$ACTEON_E2E_BIN/<name>`, else the install cache,
/// else `PATH`. (On some machines the `kubectl` on `PATH` is a Google Cloud SDK dispatcher that
/// does not work offline, which is why the cache comes first.)
pub fn tool(name: &str) -> PathBuf {
    let candidates = std::env::var_os("ACTEON_E2E_BIN")
        .map(PathBuf::from)
        .into_iter()
        .chain(cache_bin());
    for dir in candidates {
        let path = dir.join(name);
        if path.is_file() {
            return path;
        }
    }
    PathBuf::from(name)
}

/// `PATH` with the directory of the cached tools first.
fn tools_path() -> OsString {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(bin) = std::env::var_os("ACTEON_E2E_BIN") {
        dirs.push(bin.into());
    }
    dirs.extend(cache_bin());
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(dirs).expect("PATH entries contain no ':'")
}

fn describe(program: &Path, args: &[&str]) -> String {
    let mut s = program.display().to_string();
    for a in args {
        s.push(' ');
        s.push_str(a);
    }
    s
}

fn run(mut cmd: Command, what: &str, stdin: Option<&str>) -> Output {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{what}`: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(input.as_bytes())
            .unwrap_or_else(|e| panic!("cannot write stdin of `{what}`: {e}"));
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("`{what}` did not finish: {e}"))
}

fn expect_success(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "`{what}` failed ({}):\n--- stderr ---\n{}\n--- stdout ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout),
    );
    String::from_utf8(out.stdout).unwrap_or_else(|e| panic!("`{what}` printed non-UTF-8: {e}"))
}

/// Runs `helm <args>` (cached helm v4, see [`tool`]) from the workspace root.
pub fn helm(args: &[&str]) -> Output {
    let program = tool("helm");
    let mut cmd = Command::new(&program);
    cmd.args(args)
        .current_dir(workspace_root())
        .env("PATH", tools_path());
    run(cmd, &describe(&program, args), None)
}

/// [`helm`], panicking with its stderr unless it succeeds; returns stdout.
pub fn helm_ok(args: &[&str]) -> String {
    let what = describe(Path::new("helm"), args);
    expect_success(helm(args), &what)
}

/// `kubectl apply` arguments for server-side apply of `file` (`-` = stdin) as field manager
/// `e2e`, taking over conflicting fields.
fn apply_args(file: &str) -> [&str; 7] {
    [
        "apply",
        "--server-side",
        "--field-manager",
        FIELD_MANAGER,
        "--force-conflicts",
        "-f",
        file,
    ]
}

/// One template of the chart, rendered for release `acteon` in `acteon-system`
/// (`helm template acteon charts/acteon --namespace acteon-system --show-only <template>`).
pub fn render_chart_template(template: &str) -> String {
    helm_ok(&[
        "template",
        RELEASE,
        "charts/acteon",
        "--namespace",
        SYSTEM_NAMESPACE,
        "--show-only",
        template,
        // Required by the chart, irrelevant to the templates shown here.
        "--set",
        "state.url=redis://127.0.0.1:6379",
    ])
}

/// The chart's operator RBAC (ServiceAccount, ClusterRole(Binding), Role(Binding)).
pub fn render_operator_rbac() -> String {
    render_chart_template("templates/operator-rbac.yaml")
}

// ---------------------------------------------------------------------------------------------
// The API server
// ---------------------------------------------------------------------------------------------

/// A running kube-apiserver (with etcd) from `tests/e2e/kube-env.sh`.
pub struct Kube {
    /// The `kube-env.sh start` directory (pki, kubeconfigs, logs).
    dir: PathBuf,
    apiserver: String,
    admin_kubeconfig: PathBuf,
    operator_kubeconfig: PathBuf,
    operator_user: String,
    /// `Err(message)` when the install failed: later callers fail at once with it.
    installed: OnceLock<Result<(), String>>,
}

static KUBE: OnceLock<Kube> = OnceLock::new();
static PRIVATE_KUBE: OnceLock<Kube> = OnceLock::new();

impl Kube {
    /// The API server for this test process.
    ///
    /// With the variables of a `kube-env.sh start` environment (`ACTEON_E2E_ADMIN_KUBECONFIG`,
    /// `ACTEON_E2E_OPERATOR_KUBECONFIG`, ...; exported by `scripts/test.sh`, or by sourcing
    /// `<dir>/env` by hand) that server is used. Otherwise this runs `kube-env.sh install` and
    /// `kube-env.sh start <tmp>` itself (about 5 s when the install is cached; the first install
    /// builds kube-apiserver, which takes minutes). That server stays up for the lifetime of the
    /// test process: a small watchdog shell, in its own process group, runs `kube-env.sh stop`
    /// once this process is gone (however it ends). Each test binary started this way gets its
    /// own server, so prefer `scripts/test.sh`, which starts one for all of them.
    pub fn get() -> &'static Kube {
        KUBE.get_or_init(|| match Kube::from_env() {
            Some(kube) => kube,
            None => Kube::start_own("shared"),
        })
    }

    /// An API server of this test process's own, never the shared one: for tests that own
    /// cluster-scoped objects, such as a Helm release that installs and deletes the CRDs,
    /// which would disturb the other tests on the shared server. Started like [`Kube::get`]
    /// starts one (about 5 s with a cached install), stopped when the process is gone.
    pub fn private() -> &'static Kube {
        PRIVATE_KUBE.get_or_init(|| Kube::start_own("private"))
    }

    fn from_env() -> Option<Kube> {
        let admin = std::env::var_os("ACTEON_E2E_ADMIN_KUBECONFIG")?;
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!(
                    "ACTEON_E2E_ADMIN_KUBECONFIG is set but {name} is not: source the whole \
                     `<dir>/env` written by `tests/e2e/kube-env.sh start <dir>`"
                )
            })
        };
        let kube = Kube {
            dir: PathBuf::from(var("ACTEON_E2E_DIR")),
            apiserver: var("ACTEON_E2E_APISERVER"),
            admin_kubeconfig: PathBuf::from(admin),
            operator_kubeconfig: PathBuf::from(var("ACTEON_E2E_OPERATOR_KUBECONFIG")),
            operator_user: var("ACTEON_E2E_OPERATOR_USER"),
            installed: OnceLock::new(),
        };
        for file in [&kube.admin_kubeconfig, &kube.operator_kubeconfig] {
            assert!(
                file.is_file(),
                "{} (from the ACTEON_E2E_* environment) does not exist: a stale environment? \
                 Unset the ACTEON_E2E_* variables or start it again with kube-env.sh",
                file.display()
            );
        }
        Some(kube)
    }

    fn start_own(tag: &str) -> Kube {
        let script = workspace_root().join("tests/e2e/kube-env.sh");
        let script_str = script.to_str().expect("UTF-8 workspace path");
        let out = run(
            bash(&script, &["install"]),
            &format!("bash {script_str} install"),
            None,
        );
        expect_success(out, &format!("bash {script_str} install"));

        let dir =
            std::env::temp_dir().join(format!("acteon-e2e-kube-{tag}-{}", std::process::id()));
        let dir_str = dir.to_str().expect("UTF-8 temp dir").to_owned();
        // The watchdog first, so that even a half-started environment is stopped.
        watchdog_stop(&script, &dir);
        let out = run(
            bash(&script, &["start", &dir_str]),
            &format!("bash {script_str} start {dir_str}"),
            None,
        );
        expect_success(out, &format!("bash {script_str} start {dir_str}"));

        let env = parse_env_file(&dir.join("env"));
        let get = |name: &str| {
            env.get(name)
                .unwrap_or_else(|| panic!("{}/env lacks {name}", dir.display()))
                .clone()
        };
        Kube {
            apiserver: get("ACTEON_E2E_APISERVER"),
            admin_kubeconfig: PathBuf::from(get("ACTEON_E2E_ADMIN_KUBECONFIG")),
            operator_kubeconfig: PathBuf::from(get("ACTEON_E2E_OPERATOR_KUBECONFIG")),
            operator_user: get("ACTEON_E2E_OPERATOR_USER"),
            dir,
            installed: OnceLock::new(),
        }
    }

    /// `https://127.0.0.1:<port>`.
    pub fn apiserver(&self) -> &str {
        &self.apiserver
    }

    /// The `kube-env.sh start` directory (`kube-apiserver.log`, `etcd.log`, pki).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kubeconfig of the admin user (group `system:masters`).
    pub fn admin_kubeconfig_path(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// Kubeconfig of the operator's token user
    /// (`system:serviceaccount:acteon-system:acteon-operator`): only what the chart's RBAC
    /// grants, once [`Kube::ensure_installed`] has applied it.
    pub fn operator_kubeconfig_path(&self) -> &Path {
        &self.operator_kubeconfig
    }

    /// `system:serviceaccount:acteon-system:acteon-operator`.
    pub fn operator_user(&self) -> &str {
        &self.operator_user
    }

    fn kubectl_command(&self, kubeconfig: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(tool("kubectl"));
        cmd.args(args)
            .current_dir(workspace_root())
            .env("KUBECONFIG", kubeconfig)
            .env("PATH", tools_path())
            // Discovery cache per environment, not in ~/.kube.
            .env("KUBECACHEDIR", self.dir.join("kubectl-cache"));
        cmd
    }

    /// `helm <args>` against this API server as admin (Helm's cache and config in its
    /// directory), from the workspace root. Never panics on a non-zero exit.
    pub fn helm(&self, args: &[&str]) -> Output {
        let program = tool("helm");
        let mut cmd = Command::new(&program);
        cmd.args(args)
            .current_dir(workspace_root())
            .env("PATH", tools_path())
            .env("KUBECONFIG", &self.admin_kubeconfig)
            .env("HELM_CACHE_HOME", self.dir.join("helm/cache"))
            .env("HELM_CONFIG_HOME", self.dir.join("helm/config"))
            .env("HELM_DATA_HOME", self.dir.join("helm/data"));
        run(cmd, &describe(&program, args), None)
    }

    /// [`Kube::helm`], panicking with its output unless it succeeds; returns stdout.
    pub fn helm_ok(&self, args: &[&str]) -> String {
        expect_success(self.helm(args), &describe(Path::new("helm"), args))
    }

    /// `kubectl <args>` as admin, from the workspace root. Never panics on a non-zero exit.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        let cmd = self.kubectl_command(&self.admin_kubeconfig, args);
        run(cmd, &describe(Path::new("kubectl"), args), None)
    }

    /// `kubectl <args>` as admin; panics with stderr unless it succeeds; returns stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        expect_success(self.kubectl(args), &describe(Path::new("kubectl"), args))
    }

    /// `kubectl <args>` as admin with `stdin` as input. Never panics on a non-zero exit.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let cmd = self.kubectl_command(&self.admin_kubeconfig, args);
        run(cmd, &describe(Path::new("kubectl"), args), Some(stdin))
    }

    /// `kubectl <args>` with the operator's kubeconfig. Never panics on a non-zero exit.
    pub fn kubectl_as_operator(&self, args: &[&str]) -> Output {
        let cmd = self.kubectl_command(&self.operator_kubeconfig, args);
        run(
            cmd,
            &describe(Path::new("kubectl (as operator)"), args),
            None,
        )
    }

    /// Server-side apply of YAML (one or more documents) as admin, field manager `e2e`,
    /// taking over conflicting fields (`--force-conflicts`). Panics on failure.
    pub fn apply(&self, yaml: &str) -> String {
        let args = apply_args("-");
        let out = self.kubectl_stdin(&args, yaml);
        let what = format!("kubectl {} <<EOF\n{yaml}\nEOF", args.join(" "));
        expect_success(out, &what)
    }

    /// [`Kube::apply`] of a file or directory of manifests.
    pub fn apply_path(&self, path: &Path) -> String {
        self.kubectl_ok(&apply_args(path.to_str().expect("UTF-8 path")))
    }

    /// Deletes one object (`kind` as kubectl understands it, e.g. `rules.acteon.dev`, `secret`);
    /// an absent object is fine. Does not wait for finalizers (this server runs no controllers:
    /// a deleted namespace stays `Terminating`). `namespace` is ignored for cluster-scoped kinds
    /// when empty.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) {
        let mut args = vec!["delete", kind, name, "--ignore-not-found", "--wait=false"];
        if !namespace.is_empty() {
            args.extend(["--namespace", namespace]);
        }
        self.kubectl_ok(&args);
    }

    /// Creates a namespace (idempotent).
    pub fn create_namespace(&self, name: &str) {
        self.apply(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n"
        ));
    }

    /// Whether the operator's token may `verb` `resource` (kubectl syntax, e.g.
    /// `rules.acteon.dev`, `leases.coordination.k8s.io`), optionally on a `subresource`, in
    /// `namespace` (`None`: all namespaces). Asked as the operator itself
    /// (`kubectl auth can-i`, a SelfSubjectAccessReview).
    pub fn operator_can(
        &self,
        verb: &str,
        resource: &str,
        subresource: Option<&str>,
        namespace: Option<&str>,
    ) -> bool {
        let mut args = vec!["auth", "can-i", verb, resource];
        if let Some(sub) = subresource {
            args.extend(["--subresource", sub]);
        }
        match namespace {
            Some(ns) => args.extend(["--namespace", ns]),
            None => args.push("--all-namespaces"),
        }
        can_i_answer(self.kubectl_as_operator(&args), &args)
    }

    /// Like [`Kube::operator_can`] for any user, asked by the admin with `--as <user>`.
    pub fn user_can(
        &self,
        user: &str,
        verb: &str,
        resource: &str,
        namespace: Option<&str>,
    ) -> bool {
        let mut args = vec!["auth", "can-i", verb, resource, "--as", user];
        match namespace {
            Some(ns) => args.extend(["--namespace", ns]),
            None => args.push("--all-namespaces"),
        }
        can_i_answer(self.kubectl(&args), &args)
    }

    /// Installs what the operator needs, once per process (idempotent across processes too):
    /// applies `crds/*.yaml`, waits until every CRD is Established, creates namespace
    /// `acteon-system`, applies the chart's operator RBAC ([`render_operator_rbac`]) and waits
    /// until the operator's token is actually authorized by it.
    pub fn ensure_installed(&self) {
        let result = self.installed.get_or_init(|| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.install())).map_err(
                |panic| {
                    panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_else(|| "(no message)".to_owned())
                },
            )
        });
        if let Err(message) = result {
            panic!("installing CRDs and RBAC failed (in this or an earlier test): {message}");
        }
    }

    fn install(&self) {
        let crds = workspace_root().join("crds");
        self.apply_path(&crds);
        let crds = crds.to_str().expect("UTF-8 workspace path");
        let timeout = format!("--timeout={}s", INSTALL_TIMEOUT.as_secs());
        self.kubectl_ok(&[
            "wait",
            "--for",
            "condition=Established",
            &timeout,
            "-f",
            crds,
        ]);
        self.create_namespace(SYSTEM_NAMESPACE);
        self.apply(&render_operator_rbac());
        // The authorizer learns of new bindings through its informers: wait until it has.
        let ready = wait_until(INSTALL_TIMEOUT, Duration::from_millis(200), || {
            (self.operator_can("list", "rules.acteon.dev", None, None)
                && self.operator_can(
                    "update",
                    "leases.coordination.k8s.io",
                    None,
                    Some(SYSTEM_NAMESPACE),
                ))
            .then_some(())
        });
        assert!(
            ready.is_some(),
            "the operator's token still cannot list rules.acteon.dev (all namespaces) or update \
             leases in {SYSTEM_NAMESPACE} {INSTALL_TIMEOUT:?} after applying the chart's RBAC"
        );
    }

    /// A client with the admin kubeconfig. Needs a Tokio runtime.
    pub async fn admin_client(&self) -> kube::Client {
        client_from(&self.admin_kubeconfig).await
    }

    /// A client with the operator's kubeconfig (least privilege). Needs a Tokio runtime.
    pub async fn operator_client(&self) -> kube::Client {
        client_from(&self.operator_kubeconfig).await
    }

    /// The last `lines` lines of the API server's log, for failure messages.
    pub fn apiserver_log_tail(&self, lines: usize) -> String {
        tail_file(&self.dir.join("kube-apiserver.log"), lines)
    }
}

fn can_i_answer(out: Output, args: &[&str]) -> bool {
    // `kubectl auth can-i` prints yes/no; exit status 1 also means "no".
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.lines().next().map(str::trim) {
        Some("yes") => true,
        Some("no") => false,
        _ => panic!(
            "`kubectl {}` answered neither yes nor no ({}):\n{}{}",
            args.join(" "),
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

async fn client_from(kubeconfig: &Path) -> kube::Client {
    let file = kube::config::Kubeconfig::read_from(kubeconfig)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", kubeconfig.display()));
    let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
        .await
        .unwrap_or_else(|e| panic!("bad kubeconfig {}: {e}", kubeconfig.display()));
    kube::Client::try_from(config)
        .unwrap_or_else(|e| panic!("no client for {}: {e}", kubeconfig.display()))
}

fn bash(script: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg(script).args(args).current_dir(workspace_root());
    cmd
}

/// Starts a shell in its own process group (so Ctrl-C on the tests does not reach it) that
/// waits for this process to end, then stops the environment in `dir` and deletes it.
fn watchdog_stop(script: &Path, dir: &Path) {
    let mut cmd = Command::new("bash");
    cmd.args([
        "-c",
        r#"while kill -0 "$1" 2>/dev/null; do sleep 1; done
           bash "$2" stop "$3" >/dev/null 2>&1
           rm -rf "$3""#,
        "acteon-e2e-watchdog",
    ])
    .arg(std::process::id().to_string())
    .arg(script)
    .arg(dir)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .process_group(0);
    // Not waited for: it outlives this process on purpose (and is reparented to init).
    let child = cmd
        .spawn()
        .expect("cannot start the kube-env watchdog shell");
    std::mem::forget(child);
}

/// `export NAME="value"` lines of a `kube-env.sh start` env file.
fn parse_env_file(path: &Path) -> HashMap<String, String> {
    let text =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("export "))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// Per-test-binary log directory: `target/tmp/acteon-e2e/<test binary>.<pid>/`. Directories of
/// earlier runs whose process is gone are removed on first use; logs of this run stay for
/// inspection (failure messages print their path).
fn run_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().ok();
        let stem = exe
            .as_deref()
            .and_then(Path::file_stem)
            .and_then(|s| s.to_str())
            .unwrap_or("e2e")
            .to_owned();
        let root = profile_dir()
            .and_then(|p| p.parent().map(|t| t.join("tmp/acteon-e2e")))
            .unwrap_or_else(|| std::env::temp_dir().join("acteon-e2e"));
        if let Ok(entries) = fs::read_dir(&root) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some((s, pid)) = name.to_str().and_then(|n| n.rsplit_once('.')) else {
                    continue;
                };
                let Ok(pid) = pid.parse::<i32>() else {
                    continue;
                };
                // SAFETY: kill with signal 0 only checks whether the process exists.
                let alive = unsafe { libc::kill(pid, 0) } == 0
                    || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
                if s == stem && !alive {
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
        let dir = root.join(format!("{stem}.{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        dir
    })
}

/// A temporary directory for the current test: `target/tmp/acteon-e2e/<binary>.<pid>/<test>/`
/// (the test harness names each test's thread after the test). Created if needed; kept after
/// the run for inspection, removed by the next run of the same test binary.
pub fn test_dir() -> PathBuf {
    let thread = std::thread::current();
    let name: String = thread
        .name()
        .unwrap_or("unnamed")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let dir = run_dir().join(name);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

fn tail_file(path: &Path, lines: usize) -> String {
    let text = match fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => return format!("(cannot read {}: {e})", path.display()),
    };
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

struct ProcState {
    child: Child,
    status: Option<ExitStatus>,
}

/// A child process, killed (SIGKILL) and reaped on drop. Its stdout and stderr go to one log
/// file in [`test_dir`]; [`Proc::log_tail`] is meant for failure messages. When dropped during a
/// panic, it prints the tail of its log to stderr (shown by the test harness).
pub struct Proc {
    name: String,
    pid: u32,
    log: PathBuf,
    state: Mutex<ProcState>,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

impl Proc {
    /// Spawns `cmd` (stdin from /dev/null, stdout+stderr to `<test_dir>/<name>-<n>.log`).
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let log = test_dir().join(format!("{name}-{n}.log"));
        let file =
            File::create(&log).unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let err = file.try_clone().expect("log file handle clones");
        cmd.stdin(Stdio::null()).stdout(file).stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({:?}): {e}", cmd.get_program()));
        Proc {
            name: name.to_owned(),
            pid: child.id(),
            log,
            state: Mutex::new(ProcState {
                child,
                status: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ProcState> {
        // A panic while holding the lock leaves the state consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn poll(state: &mut ProcState) -> Option<ExitStatus> {
        if state.status.is_none() {
            state.status = state.child.try_wait().expect("try_wait on a child process");
        }
        state.status
    }

    /// Sends `signal` if the process has not been reaped (the pid cannot have been reused: only
    /// this `Proc` reaps it, under the same lock).
    fn signal(&self, signal: libc::c_int) {
        let mut state = self.lock();
        if Self::poll(&mut state).is_none() {
            let pid = libc::pid_t::try_from(self.pid).expect("pid fits pid_t");
            // SAFETY: plain kill(2) on our own, unreaped child.
            unsafe { libc::kill(pid, signal) };
        }
    }

    /// The name given to [`Proc::spawn`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// SIGKILL, then reap: when this returns the process is gone (its ports are free).
    pub fn kill(&self) {
        let mut state = self.lock();
        if Self::poll(&mut state).is_none() {
            let _ = state.child.kill();
            state.status = Some(state.child.wait().expect("wait on a killed child"));
        }
    }

    /// SIGTERM (graceful shutdown); does not wait. See [`Proc::wait_exit`].
    pub fn term(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Sends any signal (e.g. `libc::SIGSTOP` / `libc::SIGCONT` to freeze a process).
    pub fn send_signal(&self, signal: libc::c_int) {
        self.signal(signal);
    }

    /// Its exit status if it has exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        Self::poll(&mut self.lock())
    }

    /// Whether it is still running.
    pub fn is_running(&self) -> bool {
        self.exit_status().is_none()
    }

    /// Waits up to `timeout` for it to exit.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        wait_until(timeout, Duration::from_millis(20), || self.exit_status())
    }

    /// The log file (stdout and stderr).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `lines` lines of the log, with a header naming the process and the file.
    pub fn log_tail(&self, lines: usize) -> String {
        format!(
            "---- last lines of {} (pid {}, {}) ----\n{}\n---- end of {} ----",
            self.name,
            self.pid,
            self.log.display(),
            tail_file(&self.log, lines),
            self.name
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let status = self.exit_status();
        self.kill();
        if std::thread::panicking() {
            let how = match status {
                Some(s) => format!("had exited: {s}"),
                None => "was running".to_owned(),
            };
            eprintln!("{} {how}\n{}", self.name, self.log_tail(40));
        }
    }
}

/// Environment variables of the gateway/operator that a developer's shell might set; removed
/// from the children's environment so that only the test's arguments count.
fn scrub_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let ours = key.starts_with("ACTEON_")
            && !key.starts_with("ACTEON_TEST_")
            && !key.starts_with("ACTEON_E2E_");
        if ours || key.starts_with("KUBERNETES_SERVICE_") {
            cmd.env_remove(key);
        }
    }
    cmd.current_dir(workspace_root());
}

/// The command [`start_gateway`] runs (`acteon-gateway serve --listen 127.0.0.1:<port> <args>`,
/// from the workspace root, `ACTEON_*` settings of the calling shell removed), for tests that
/// want to add environment variables before [`Proc::spawn`].
pub fn gateway_command(port: u16, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin_path("acteon-gateway"));
    scrub_env(&mut cmd);
    cmd.arg("serve")
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(args);
    cmd
}

/// Starts `acteon-gateway serve --listen 127.0.0.1:<free port> <args>` (relative paths in
/// `args` are relative to the workspace root) and waits until `GET /healthz` answers 200
/// (liveness, not `/readyz`). Retries on another port if it loses the race for the port.
pub fn start_gateway(args: &[&str]) -> (Proc, u16) {
    for _ in 0..3 {
        let port = free_port();
        let proc = Proc::spawn("acteon-gateway", gateway_command(port, args));
        match wait_healthy(&proc, port, GATEWAY_START_TIMEOUT) {
            Ok(()) => return (proc, port),
            Err(e) if e.contains("ddress already in use") || e.contains("os error 98") => continue,
            Err(e) => panic!("{e}"),
        }
    }
    panic!("acteon-gateway lost the race for a free port three times");
}

/// Waits until `GET http://127.0.0.1:<port>/healthz` answers 200; an error (with the log tail)
/// if `proc` exits first or `timeout` passes.
pub fn wait_healthy(proc: &Proc, port: u16, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some((200, _)) = http_get(port, "/healthz") {
            return Ok(());
        }
        if let Some(status) = proc.exit_status() {
            return Err(format!(
                "{} exited before /healthz answered on port {port} ({status})\n{}",
                proc.name(),
                proc.log_tail(40)
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{} did not answer GET /healthz on port {port} within {timeout:?}\n{}",
                proc.name(),
                proc.log_tail(40)
            ));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The command [`start_operator`] runs: `acteon-operator run <args>` with `KUBECONFIG` = the
/// OPERATOR kubeconfig (never the admin one; the `ACTEON_E2E_ADMIN_*` variables are removed).
///
/// With `ACTEON_E2E_OPERATOR_WRAPPER` set (e.g. `heaptrack -o /tmp/op`), the operator runs
/// under that command, for profiling.
pub fn operator_command(args: &[&str]) -> Command {
    let kube = Kube::get();
    let binary = bin_path("acteon-operator");
    let mut cmd = match std::env::var("ACTEON_E2E_OPERATOR_WRAPPER") {
        Ok(wrapper) if !wrapper.trim().is_empty() => {
            let mut words = wrapper.split_whitespace();
            let mut cmd = Command::new(words.next().unwrap_or_default());
            cmd.args(words).arg(binary);
            cmd
        }
        _ => Command::new(binary),
    };
    scrub_env(&mut cmd);
    cmd.env_remove("ACTEON_E2E_ADMIN_KUBECONFIG")
        .env_remove("ACTEON_E2E_ADMIN_TOKEN")
        .env("KUBECONFIG", kube.operator_kubeconfig_path())
        .arg("run")
        .args(args);
    cmd
}

/// Installs CRDs and RBAC ([`Kube::ensure_installed`]) and starts `acteon-operator run <args>`
/// with the operator's least-privilege kubeconfig. Does not wait for anything: what "ready"
/// means depends on the arguments (e.g. `--metrics-listen`).
pub fn start_operator(args: &[&str]) -> Proc {
    Kube::get().ensure_installed();
    Proc::spawn("acteon-operator", operator_command(args))
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Calls `f` every `poll` until it returns `Some` (returned) or `timeout` has passed (`None`).
/// `f` is always called at least once, and once more at the deadline.
pub fn wait_until<T>(
    timeout: Duration,
    poll: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep(poll.min(deadline - now));
    }
}

/// [`wait_until`] for async checks (sleeps with Tokio).
pub async fn wait_until_async<T, F, Fut>(timeout: Duration, poll: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        tokio::time::sleep(poll.min(deadline - now)).await;
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; bind it soon).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot bind a free port on 127.0.0.1")
}

/// `<prefix>-<8 random hex digits>`, a valid DNS-1123 label (lowercase alphanumerics and `-`,
/// at most 63 characters): for namespaces, object names, key prefixes.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    let suffix = format!("{:08x}", h.finish() as u32);
    let mut base: String = prefix
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    base.truncate(63 - 1 - suffix.len());
    let base = base.trim_matches('-');
    if base.is_empty() {
        format!("e2e-{suffix}")
    } else {
        format!("{base}-{suffix}")
    }
}

/// `ACTEON_TEST_REDIS_URL`, default `redis://127.0.0.1:6379` (what `scripts/test-services.sh`
/// exports).
pub fn redis_url() -> String {
    std::env::var("ACTEON_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// `ACTEON_TEST_POSTGRES_URL`, default `postgres://root@127.0.0.1:5432/test` (the role and
/// database `scripts/test-services.sh` requires of a local server, as in the gateway's tests).
pub fn postgres_url() -> String {
    std::env::var("ACTEON_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".to_owned())
}

// ---------------------------------------------------------------------------------------------
// HTTP (blocking, plain HTTP on loopback; usable inside async tests too: no runtime involved)
// ---------------------------------------------------------------------------------------------

fn agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .new_agent()
    })
}

fn answer(resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Option<(u16, String)> {
    let resp = resp.ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().read_to_string().ok()?;
    Some((status, body))
}

/// `GET http://127.0.0.1:<port><path>` → `(status, body)` for any status; `None` when there is
/// no answer (connection refused, reset, 30 s timeout).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    answer(agent().get(format!("http://127.0.0.1:{port}{path}")).call())
}

/// `POST http://127.0.0.1:<port><path>` with a JSON body → `(status, body)` for any status;
/// `None` when there is no answer.
pub fn http_post(port: u16, path: &str, body: &Value) -> Option<(u16, String)> {
    answer(
        agent()
            .post(format!("http://127.0.0.1:{port}{path}"))
            .header("content-type", "application/json")
            .send(body.to_string()),
    )
}

/// `POST` a JSON body with `Authorization: Bearer <token>` → `(status, body)`; `None` when
/// there is no answer.
pub fn http_post_bearer(port: u16, path: &str, token: &str, body: &Value) -> Option<(u16, String)> {
    answer(
        agent()
            .post(format!("http://127.0.0.1:{port}{path}"))
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {token}"))
            .send(body.to_string()),
    )
}

/// `POST /v1/dispatch` with an action → `(status, JSON body)`; panics when the gateway does not
/// answer or the body is not JSON.
pub fn dispatch(port: u16, action: &Value) -> (u16, Value) {
    let (status, body) = http_post(port, "/v1/dispatch", action)
        .unwrap_or_else(|| panic!("no answer from POST 127.0.0.1:{port}/v1/dispatch"));
    let json = serde_json::from_str(&body).unwrap_or_else(|e| {
        panic!("dispatch answered {status} with a non-JSON body ({e}): {body}")
    });
    (status, json)
}

/// `GET` a JSON document; `None` unless the answer is 200 with a JSON body.
pub fn http_get_json(port: u16, path: &str) -> Option<Value> {
    let (status, body) = http_get(port, path)?;
    if status == 200 {
        serde_json::from_str(&body).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_are_dns_labels_and_differ() {
        let a = unique_name("Rule_Test.x");
        let b = unique_name("Rule_Test.x");
        assert_ne!(a, b);
        for n in [&a, &b, &unique_name(&"x".repeat(100)), &unique_name("--")] {
            assert!(n.len() <= 63, "{n}");
            assert!(
                n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{n}"
            );
            assert!(!n.starts_with('-') && !n.ends_with('-'), "{n}");
        }
        assert!(a.starts_with("rule-test-x-"), "{a}");
    }

    #[test]
    fn wait_until_returns_value_or_none() {
        let mut n = 0;
        let got = wait_until(Duration::from_secs(5), Duration::from_millis(1), || {
            n += 1;
            (n == 3).then_some(n)
        });
        assert_eq!(got, Some(3));
        let t0 = Instant::now();
        let none: Option<()> =
            wait_until(Duration::from_millis(50), Duration::from_millis(10), || {
                None
            });
        assert!(none.is_none());
        assert!(t0.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn env_file_parses() {
        let dir = test_dir();
        let path = dir.join("env");
        fs::write(
            &path,
            "# comment\nexport PATH=\"/x/bin:$PATH\"\nexport A=\"1\"\nexport B=2\n",
        )
        .expect("write env file");
        let env = parse_env_file(&path);
        assert_eq!(env.get("A").map(String::as_str), Some("1"));
        assert_eq!(env.get("B").map(String::as_str), Some("2"));
    }

    #[test]
    fn proc_logs_and_signals() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exec sleep 30"]);
        let p = Proc::spawn("sleeper", cmd);
        assert!(
            wait_until(Duration::from_secs(5), Duration::from_millis(10), || {
                let log = p.log();
                (log.contains("out") && log.contains("err")).then_some(())
            })
            .is_some(),
            "{}",
            p.log_tail(40)
        );
        assert!(p.is_running());
        p.term();
        let status = p
            .wait_exit(Duration::from_secs(5))
            .expect("exits on SIGTERM");
        assert!(!status.success());
        // Signals after the exit are no-ops.
        p.term();
        p.kill();
    }
}
