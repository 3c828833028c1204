//! The Acteon operator: `run` reconciles the custom resources into configuration
//! snapshots for the gateways; `crdgen` writes the CRDs generated from the Rust types.

mod controller;
mod crdgen;
mod error;
mod leader;
mod metrics;
mod seal_secret;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use acteon_api::compile::{self, CompileOptions};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "acteon-operator", version, about = "Acteon operator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start; the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Write the CustomResourceDefinitions to a directory (default `crds/`), or check them.
    Crdgen {
        /// Directories to write (repeatable); by default the repository's `crds/` and the
        /// Helm chart's copy, which `templates/crds.yaml` installs.
        #[arg(long, default_values = crdgen::OUT_DIRS)]
        out: Vec<PathBuf>,
        /// Fail if the files differ from what would be written (for CI).
        #[arg(long)]
        check: bool,
    },
    /// Run the controller (kubeconfig from KUBECONFIG, ~/.kube/config or in-cluster).
    Run(RunArgs),
}

#[derive(Args, Debug)]
struct RunArgs {
    /// State backend the gateways use: `redis://…` or `postgres://…`.
    #[arg(long, env = "ACTEON_STATE")]
    state: String,
    /// Key prefix (Redis) or schema (Postgres); the gateways must use the same.
    #[arg(long, env = "ACTEON_STATE_PREFIX", default_value = "acteon")]
    state_prefix: String,
    /// Namespaces to watch (comma-separated); all when not given.
    #[arg(long, env = "ACTEON_NAMESPACES", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// Objects in this namespace apply to every namespace.
    #[arg(long, env = "ACTEON_SHARED_NAMESPACE", default_value = compile::DEFAULT_SHARED_NAMESPACE)]
    shared_namespace: String,
    /// Lease used for leader election.
    #[arg(long, env = "ACTEON_LEASE_NAME", default_value = "acteon-operator")]
    lease_name: String,
    /// Namespace of the Lease (the operator's own).
    #[arg(long, env = "ACTEON_LEASE_NAMESPACE", default_value = compile::DEFAULT_SHARED_NAMESPACE)]
    lease_namespace: String,
    #[arg(long, env = "ACTEON_LEASE_DURATION_SECONDS", default_value_t = 15)]
    lease_duration_seconds: u64,
    /// This replica's identity (default: $POD_NAME, else $HOSTNAME, plus the process id).
    #[arg(long, env = "ACTEON_IDENTITY")]
    identity: Option<String>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    #[arg(long, env = "ACTEON_METRICS_LISTEN", default_value = "0.0.0.0:8081")]
    metrics_listen: SocketAddr,
    /// File holding the key that seals credentials in snapshots (64 hex chars or base64).
    #[arg(long, env = "ACTEON_SEAL_KEY_FILE")]
    seal_key_file: Option<PathBuf>,
    /// Secret (in `--lease-namespace`, data key `key`) holding the seal key: created with a
    /// new random key when absent and never changed by the operator — what the chart uses,
    /// so that rendering it never rotates the key. Instead of a key file or ACTEON_SEAL_KEY.
    #[arg(long, env = "ACTEON_SEAL_KEY_SECRET")]
    seal_key_secret: Option<String>,
    /// Seconds between re-reads of `--seal-key-file` / `--seal-key-secret`: a changed key
    /// is put in force and everything is republished sealed and signed with it.
    #[arg(long, env = "ACTEON_SEAL_KEY_REFRESH_SECONDS", default_value_t = 15)]
    seal_key_refresh_seconds: u64,
    /// Label selector (e.g. `acteon.dev/credentials=true`) limiting the Secrets the operator
    /// watches and reads for Providers' `secretKeyRef`s; a referenced Secret outside it makes
    /// the Provider not ready (`SecretNotSelected`). Default: every Secret in the watched
    /// namespaces (metadata only; data is read only for referenced ones).
    #[arg(long, env = "ACTEON_SECRET_LABEL_SELECTOR")]
    secret_label_selector: Option<String>,
    /// Status patches in flight at once.
    #[arg(long, default_value_t = 32)]
    status_concurrency: usize,
    /// Bound on each state backend call, in milliseconds.
    #[arg(long, env = "ACTEON_STATE_TIMEOUT_MS", default_value_t = 5000)]
    state_timeout_ms: u64,
    /// Log as JSON lines.
    #[arg(long, env = "ACTEON_LOG_JSON")]
    log_json: bool,
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

fn default_identity() -> String {
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "acteon-operator".into());
    format!("{host}-{}", std::process::id())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let env_key = std::env::var("ACTEON_SEAL_KEY").ok();
    let seal_key =
        acteon_channel::seal::load_key(args.seal_key_file.as_deref(), env_key.as_deref())
            .map_err(|e| anyhow::anyhow!("seal key: {e}"))?;
    let client = kube::Client::try_default()
        .await
        .map_err(|e| anyhow::anyhow!("kubeconfig: {e}"))?;
    let (seal_key, key_source) = match (&args.seal_key_secret, seal_key) {
        (Some(_), Some(_)) => {
            anyhow::bail!("seal key: --seal-key-secret and a key file or ACTEON_SEAL_KEY: give one")
        }
        (Some(name), None) => (
            Some(
                seal_secret::ensure(&client, &args.lease_namespace, name)
                    .await
                    .map_err(|e| anyhow::anyhow!("seal key: {e}"))?,
            ),
            seal_secret::KeySource::Secret {
                namespace: args.lease_namespace.clone(),
                name: name.clone(),
            },
        ),
        (None, key) => (
            key,
            match &args.seal_key_file {
                Some(path) => seal_secret::KeySource::File(path.clone()),
                None => seal_secret::KeySource::Fixed,
            },
        ),
    };
    match &seal_key {
        Some(k) => tracing::info!(fingerprint = %k.fingerprint(), "seal key loaded"),
        None => {
            tracing::warn!(
                "no seal key: snapshots are published unsigned (gateways refuse them unless \
                 started with --allow-unsigned-snapshots) and Providers with secretKeyRefs are \
                 rejected (NoSealKey)"
            )
        }
    }
    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let elector = leader::Elector::new(
        client.clone(),
        leader::Election {
            namespace: args.lease_namespace.clone(),
            name: args.lease_name.clone(),
            identity: identity.clone(),
            duration: Duration::from_secs(args.lease_duration_seconds.max(3)),
        },
    );
    elector
        .preflight()
        .await
        .map_err(|e| anyhow::anyhow!("leader election: {e}"))?;
    let channel = acteon_channel::connect(
        &args.state,
        &args.state_prefix,
        Duration::from_millis(args.state_timeout_ms),
    )
    .await
    .map_err(|e| anyhow::anyhow!("--state: {e}"))?;
    let metrics = Arc::new(metrics::Metrics::new());
    let ctx = controller::Context::start(
        client.clone(),
        channel,
        seal_key,
        metrics.clone(),
        controller::Options {
            namespaces: args.namespaces.clone(),
            compile: CompileOptions {
                shared_namespace: args.shared_namespace.clone(),
            },
            status_concurrency: args.status_concurrency,
            debounce: Duration::from_millis(20),
            report_poll: Duration::from_millis(200),
            identity: identity.clone(),
            secret_label_selector: args.secret_label_selector.clone(),
        },
    );
    let server = tokio::spawn(metrics::serve(
        args.metrics_listen,
        metrics.clone(),
        ctx.index.clone(),
    ));
    seal_secret::spawn_refresh(
        key_source,
        client.clone(),
        ctx.clone(),
        Duration::from_secs(args.seal_key_refresh_seconds),
    );
    let leading = elector.leading();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let election = tokio::spawn(elector.run(stop_rx));
    let controller = tokio::spawn(controller::run(ctx, leading));
    tracing::info!(%identity, lease = %args.lease_name, "operator started");
    tokio::select! {
        _ = shutdown_signal() => {}
        r = server => match r {
            Ok(Err(e)) => return Err(e),
            _ => anyhow::bail!("metrics server stopped"),
        },
    }
    // Release the lease so a standby takes over at once.
    controller.abort();
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), election).await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}

fn crdgen(dirs: &[PathBuf], check: bool) -> ExitCode {
    let mut stale = Vec::new();
    for out in dirs {
        if let Err(e) = crdgen_into(out, check, &mut stale) {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    if !stale.is_empty() {
        eprintln!(
            "error: stale CRDs (run `cargo run -p acteon-operator -- crdgen`): {}",
            stale.join(", ")
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Writes (or, with `check`, compares) every CRD file in `out`; stale paths go to `stale`.
fn crdgen_into(out: &std::path::Path, check: bool, stale: &mut Vec<String>) -> Result<(), String> {
    for (file, yaml) in crdgen::files().map_err(|e| e.to_string())? {
        let path = out.join(&file);
        if check {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(yaml.as_str()) {
                stale.push(path.display().to_string());
            }
        } else {
            std::fs::create_dir_all(path.parent().unwrap_or(out))
                .and_then(|_| std::fs::write(&path, yaml))
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Crdgen { out, check } => crdgen(&out, check),
        Command::Run(args) => {
            init_tracing(args.log_json);
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
