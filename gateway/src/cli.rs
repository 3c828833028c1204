//! Command line: `serve` (the default), `validate`, `convert`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use acteon_api::compile::{self, CompileOptions, acteon};
use acteon_channel::seal::SealKey;
use clap::{Args, Parser, Subcommand};

use crate::auth::Authenticator;
use crate::auth::api_tokens::{self, ApiTokens};
use crate::auth::service_accounts::ServiceAccounts;
use crate::config::{ConfigSource, LiveConfig, Runtime};
use crate::follow::FollowOptions;
use crate::http::conn::Deadlines;
use crate::http::lifecycle::Lifecycle;
use crate::http::serve::ServeOptions;
use crate::http::{self, AppState};
use crate::metrics::Metrics;
use crate::pipeline::{DeliveredMarks, Gateway, GatewayOptions};
use crate::seal_keys::SealKeys;
use crate::state::lazy::LazyStore;
use crate::state::postgres::{GateBatches, PostgresOptions};
use crate::state::{MemoryStore, PostgresStore, RedisStore, StateStore};

#[derive(Parser, Debug)]
#[command(name = "acteon-gateway", version, about = "Acteon action gateway")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

// Parsed once per process: the size of the `serve` variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the HTTP API (the default when no subcommand is given).
    Serve(ServeArgs),
    /// Check manifests, Acteon rule files and Acteon server configs (`.toml`, read for their
    /// chains); exit 1 with messages on errors.
    Validate {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[arg(long, env = "ACTEON_SHARED_NAMESPACE", default_value = compile::DEFAULT_SHARED_NAMESPACE)]
        shared_namespace: String,
    },
    /// Create or upgrade the Postgres schema (`serve` also does it at start), then exit.
    Migrate {
        /// `postgres://…`
        #[arg(long, env = "ACTEON_STATE")]
        state: String,
        /// Schema of this installation's state.
        #[arg(long, env = "ACTEON_STATE_PREFIX", default_value = "acteon")]
        state_prefix: String,
    },
    /// Print an Acteon rule file (or server config, `.toml`) as Rule and Chain manifests.
    Convert {
        file: PathBuf,
        /// Namespace for the generated manifests (omitted if not given).
        #[arg(long)]
        namespace: Option<String>,
    },
}

/// What `serve` reads when given no `--config` and the memory backend (standalone).
pub const DEFAULT_CONFIG: [&str; 2] = ["config/samples", "rules"];

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Manifest files or directories, Acteon rule files and server configs (`.toml`, read
    /// for their chains). Without it, a gateway on the memory backend serves
    /// `config/samples` and `rules`, and a gateway on Redis or Postgres follows the
    /// snapshots the operator publishes there.
    #[arg(long = "config", env = "ACTEON_CONFIG", value_delimiter = ',')]
    pub config: Vec<PathBuf>,
    #[arg(long, env = "ACTEON_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// `memory`, `redis://…` or `postgres://…`.
    #[arg(long, env = "ACTEON_STATE", default_value = "memory")]
    pub state: String,
    /// Key prefix (Redis) or schema (Postgres) of this installation's state.
    #[arg(long, env = "ACTEON_STATE_PREFIX", default_value = "acteon")]
    pub state_prefix: String,
    /// Objects in this namespace apply to every namespace.
    #[arg(long, env = "ACTEON_SHARED_NAMESPACE", default_value = compile::DEFAULT_SHARED_NAMESPACE)]
    pub shared_namespace: String,
    /// Largest accepted request body in bytes.
    #[arg(long, env = "ACTEON_BODY_LIMIT", default_value_t = http::DEFAULT_BODY_LIMIT)]
    pub body_limit: usize,
    /// Bound on each state backend call, in milliseconds.
    #[arg(long, env = "ACTEON_STATE_TIMEOUT_MS", default_value_t = 2000)]
    pub state_timeout_ms: u64,
    /// Postgres: gate calls of concurrent dispatches are sent together, one transaction per
    /// batch (group commit); this many batches run at once. 0: each call in a transaction
    /// of its own.
    #[arg(long, env = "ACTEON_POSTGRES_GATE_BATCHES", default_value_t = GateBatches::default().in_flight)]
    pub postgres_gate_batches: usize,
    /// Redis / Postgres: dedup marks of this gateway's own successful deliveries
    /// remembered (until they expire), so a repeat of one is answered `Deduplicated`
    /// without a backend call. 0: none.
    #[arg(long, env = "ACTEON_DEDUP_CACHE_ENTRIES", default_value_t = 100_000)]
    pub dedup_cache_entries: usize,
    /// Deny actions that no terminal rule matched (default: execute them).
    #[arg(long, env = "ACTEON_DEFAULT_DENY")]
    pub default_deny: bool,
    /// Pause between the worker's polls for due timers (group notifications, scheduled
    /// actions, state timeouts), in milliseconds: one backend call per poll when idle.
    #[arg(long, env = "ACTEON_WORKER_POLL_MS", default_value_t = 200)]
    pub worker_poll_ms: u64,
    /// Pause between reads of the circuit breakers' shared state, in milliseconds: a
    /// circuit opened by another replica is seen within this long. One backend call per
    /// poll, none when no provider has a breaker.
    #[arg(long, env = "ACTEON_CIRCUIT_POLL_MS", default_value_t = 250)]
    pub circuit_poll_ms: u64,
    /// How long the worker's claim on a due timer holds: a replica that dies mid-task
    /// leaves its tasks to others after this long. Longer than any delivery takes.
    #[arg(long, env = "ACTEON_WORKER_LEASE_SECONDS", default_value_t = 60)]
    pub worker_lease_seconds: u64,
    /// How long an ended chain run stays listed (`GET /v1/chains`) and readable, in seconds.
    #[arg(long, env = "ACTEON_CHAIN_RETENTION_SECONDS", default_value_t = 7 * 24 * 3600,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub chain_retention_seconds: u64,
    /// How long a dead letter (a delivery that failed after its retries, or a chain step
    /// with `onFailure: dlq`) is kept for `/v1/dlq`, in seconds; 0 keeps none.
    #[arg(long, env = "ACTEON_DLQ_RETENTION_SECONDS", default_value_t = 7 * 24 * 3600)]
    pub dlq_retention_seconds: u64,
    /// How often one replica counts running chains (the `acteon_chains_running` gauge and
    /// the Chain resources' `status.executions.running`), in seconds.
    #[arg(long, env = "ACTEON_CHAIN_CENSUS_SECONDS", default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub chain_census_seconds: u64,
    /// Longest wait for in-flight requests on shutdown, in seconds.
    #[arg(long, env = "ACTEON_SHUTDOWN_TIMEOUT", default_value_t = 30)]
    pub shutdown_timeout: u64,
    /// After SIGTERM, seconds to keep serving while `/readyz` answers 503 (endpoints and
    /// load balancers stop sending here meanwhile), before draining. SIGINT skips it.
    #[arg(long, env = "ACTEON_SHUTDOWN_DELAY_SECONDS", default_value_t = 5)]
    pub shutdown_delay_seconds: u64,
    /// Most client connections open at once; past it, new ones wait in the listen backlog
    /// until one closes. Keep it below the process's file limit.
    #[arg(long, env = "ACTEON_HTTP_MAX_CONNECTIONS", default_value_t = 10_000,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub http_max_connections: u32,
    /// Seconds an idle connection (no request started since it opened or since its last
    /// response) stays open.
    #[arg(long, env = "ACTEON_HTTP_IDLE_TIMEOUT_SECONDS", default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub http_idle_timeout_seconds: u64,
    /// Milliseconds from the first byte of a request to the end of its head (headers).
    #[arg(long, env = "ACTEON_HTTP_HEADER_TIMEOUT_MS", default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub http_header_timeout_ms: u64,
    /// Milliseconds to receive a request body (408 past it).
    #[arg(long, env = "ACTEON_HTTP_BODY_TIMEOUT_MS", default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub http_body_timeout_ms: u64,
    /// Seconds between checks of the state backend (`acteon_state_backend_up`, `/health`).
    #[arg(long, env = "ACTEON_STATE_CHECK_SECONDS", default_value_t = 2,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub state_check_seconds: u64,
    /// Log as JSON lines.
    #[arg(long, env = "ACTEON_LOG_JSON")]
    pub log_json: bool,
    /// W3C trace context: `always` continues a dispatch's `traceparent` or starts a new
    /// trace, so every provider request carries one; `incoming` only continues one sent
    /// by the client; `off` neither reads nor sends any.
    #[arg(long, env = "ACTEON_TRACE_PROPAGATION", value_enum, default_value_t = crate::trace::Propagation::Always)]
    pub trace_propagation: crate::trace::Propagation,
    /// OpenTelemetry collector (OTLP over HTTP) to export spans to, e.g.
    /// `http://otel-collector:4318` (`/v1/traces` is appended). Unset: no export.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// OTLP encoding: `http/protobuf` or `http/json`.
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_PROTOCOL",
        value_enum,
        default_value = "http/protobuf"
    )]
    pub otlp_protocol: crate::trace::otel::OtlpProtocol,
    /// Following the operator: seconds between checks of the newest published version
    /// (besides change notifications).
    #[arg(long, env = "ACTEON_CONFIG_POLL_SECONDS", default_value_t = 5)]
    pub config_poll_seconds: u64,
    /// Following the operator: seconds between reports of the served version (each
    /// report lives three intervals).
    #[arg(long, env = "ACTEON_REPORT_INTERVAL_SECONDS", default_value_t = 5)]
    pub report_interval_seconds: u64,
    /// This gateway's id in its reports (default: `$HOSTNAME` plus 6 random hex characters).
    #[arg(long, env = "ACTEON_GATEWAY_ID")]
    pub gateway_id: Option<String>,
    /// File holding the key that opens credentials sealed by the operator, re-read on every
    /// config poll so a rotated key needs no restart (or give the key itself in the
    /// environment variable `ACTEON_SEAL_KEY`, never on the command line).
    #[arg(long, env = "ACTEON_SEAL_KEY_FILE")]
    pub seal_key_file: Option<PathBuf>,
    /// During a seal key rotation: the old key(s), whitespace- or comma-separated, still
    /// accepted for snapshots and credentials sealed before the operator switched keys.
    #[arg(long, env = "ACTEON_PREVIOUS_SEAL_KEYS", hide_env_values = true)]
    pub previous_seal_keys: Option<String>,
    /// During a seal key rotation: a file of previous keys (as `--previous-seal-keys`),
    /// re-read with `--seal-key-file` on every config poll; a missing file means none.
    #[arg(
        long,
        env = "ACTEON_PREVIOUS_SEAL_KEYS_FILE",
        conflicts_with = "previous_seal_keys"
    )]
    pub previous_seal_keys_file: Option<PathBuf>,
    /// Following the operator: accept snapshots that carry no MAC (an operator without a
    /// seal key). Without a seal key, following needs this flag; anyone who can write the
    /// state backend can then configure this gateway.
    #[arg(long, env = "ACTEON_ALLOW_UNSIGNED_SNAPSHOTS")]
    pub allow_unsigned_snapshots: bool,
    /// Who may call: `off` (anyone who reaches the port) or `on` (a Bearer token: an API
    /// token, or with `--auth-service-accounts` a Kubernetes ServiceAccount token). The probes
    /// (`/healthz`, `/readyz`, `/health`) stay open; `/metrics` needs a token on this port,
    /// none on `--probes-listen`.
    #[arg(long, env = "ACTEON_AUTH", value_enum, default_value_t = AuthMode::Off)]
    pub auth: AuthMode,
    /// Accept Kubernetes ServiceAccount tokens (verified by TokenReview): a ServiceAccount of
    /// namespace N may dispatch into N and read what N owns.
    #[arg(long, env = "ACTEON_AUTH_SERVICE_ACCOUNTS")]
    pub auth_service_accounts: bool,
    /// Audience ServiceAccount tokens must be issued for (a projected token's `audience`).
    #[arg(long, env = "ACTEON_AUTH_AUDIENCE", default_value = "acteon")]
    pub auth_audience: String,
    /// Seconds a ServiceAccount token's review is cached (a deleted ServiceAccount's token
    /// works at most this long).
    #[arg(long, env = "ACTEON_AUTH_CACHE_SECONDS", default_value_t = 30)]
    pub auth_cache_seconds: u64,
    /// File of API tokens (YAML; see the README), re-read when it changes.
    #[arg(long, env = "ACTEON_API_TOKENS_FILE")]
    pub api_tokens_file: Option<PathBuf>,
    /// Namespace whose labelled Secrets hold API tokens (watched: editing one rotates it).
    #[arg(long, env = "ACTEON_API_TOKEN_SECRETS_NAMESPACE")]
    pub api_token_secrets_namespace: Option<String>,
    /// Label selector of the API token Secrets.
    #[arg(
        long,
        env = "ACTEON_API_TOKEN_SELECTOR",
        default_value = "acteon.dev/api-token=true"
    )]
    pub api_token_selector: String,
    /// A second address serving `/healthz`, `/readyz`, `/health` and `/metrics` without
    /// authentication, for kubelet probes and Prometheus.
    #[arg(long, env = "ACTEON_PROBES_LISTEN")]
    pub probes_listen: Option<SocketAddr>,
    /// Audit trail: `on` (default) or `off`. Kept in Postgres when `--state` is Postgres or
    /// `--audit-postgres-url` is given, else in memory (per process).
    #[arg(long, env = "ACTEON_AUDIT", default_value = "on", value_parser = ["on", "off"])]
    pub audit: String,
    /// Postgres for the audit trail when the state is elsewhere (Redis); its schema is
    /// `--state-prefix`.
    #[arg(long, env = "ACTEON_AUDIT_POSTGRES_URL", hide_env_values = true)]
    pub audit_postgres_url: Option<String>,
    /// Keep the action payload (redacted) in audit records; needed by audit replay.
    #[arg(long, env = "ACTEON_AUDIT_STORE_PAYLOAD")]
    pub audit_store_payload: bool,
    /// Field paths replaced by `[REDACTED]` before a record is queued, comma-separated:
    /// `payload.password,payload.card.number,metadata.api_key` (keys match ignoring case).
    #[arg(long, env = "ACTEON_AUDIT_REDACT", value_delimiter = ',')]
    pub audit_redact: Vec<String>,
    /// Records waiting to be written, at most.
    #[arg(long, env = "ACTEON_AUDIT_QUEUE_CAPACITY", default_value_t = 10_000)]
    pub audit_queue_capacity: usize,
    /// When the queue is full: `drop` the record (counted) or `block` the dispatch.
    #[arg(
        long,
        env = "ACTEON_AUDIT_WHEN_FULL",
        value_enum,
        default_value = "drop"
    )]
    pub audit_when_full: crate::audit::WhenFull,
    /// Days audit records are kept.
    #[arg(long, env = "ACTEON_AUDIT_RETENTION_DAYS", default_value_t = 30)]
    pub audit_retention_days: u32,
    /// Per-namespace retention in days: `team-a=7,team-b=90`.
    #[arg(long, env = "ACTEON_AUDIT_RETENTION_NAMESPACE", value_delimiter = ',')]
    pub audit_retention_namespace: Vec<String>,
    /// Records the memory audit store keeps (the oldest go first).
    #[arg(long, env = "ACTEON_AUDIT_MEMORY_CAPACITY", default_value_t = 100_000)]
    pub audit_memory_capacity: usize,
    /// Seconds between retention sweeps (one replica sweeps a shared store).
    #[arg(long, env = "ACTEON_AUDIT_SWEEP_SECONDS", default_value_t = 300)]
    pub audit_sweep_seconds: u64,
}

impl ServeArgs {
    /// Whether this gateway follows the operator's snapshots (shared backend, no files).
    pub fn follows_channel(&self) -> bool {
        self.config.is_empty() && !is_memory(&self.state)
    }

    /// The files to compile when not following the operator.
    pub fn config_paths(&self) -> Vec<PathBuf> {
        if self.config.is_empty() {
            DEFAULT_CONFIG.iter().map(PathBuf::from).collect()
        } else {
            self.config.clone()
        }
    }
}

fn is_memory(state: &str) -> bool {
    matches!(state, "memory" | "memory://")
}

impl Default for ServeArgs {
    fn default() -> Self {
        match Cli::parse_from(["acteon-gateway", "serve"]).command {
            Some(Command::Serve(a)) => a,
            _ => unreachable!("`serve` parses into Command::Serve"),
        }
    }
}

pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        None => serve_blocking(ServeArgs::default()),
        Some(Command::Serve(args)) => serve_blocking(args),
        Some(Command::Validate {
            paths,
            shared_namespace,
        }) => validate(&paths, shared_namespace),
        Some(Command::Convert { file, namespace }) => convert(&file, namespace.as_deref()),
        Some(Command::Migrate {
            state,
            state_prefix,
        }) => migrate(&state, &state_prefix),
    }
}

fn validate(paths: &[PathBuf], shared_namespace: String) -> ExitCode {
    let opts = CompileOptions { shared_namespace };
    for w in acteon::warnings_in_paths(paths) {
        eprintln!("warning: {w}");
    }
    match compile::compile_paths(paths, &opts) {
        Ok(s) => {
            println!(
                "ok: {} rules, {} providers, {} chains, {} state machines, {} quotas",
                s.rules.len(),
                s.providers.len(),
                s.chains.len(),
                s.state_machines.len(),
                s.quotas.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            eprintln!("{} problem(s) found", errors.len());
            ExitCode::FAILURE
        }
    }
}

fn convert(file: &PathBuf, namespace: Option<&str>) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    for w in acteon::warnings_in_paths(std::slice::from_ref(file)) {
        eprintln!("warning: {w}");
    }
    match acteon::to_manifests(&file.display().to_string(), &text, namespace) {
        Ok(yaml) => {
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

fn migrate(url: &str, schema: &str) -> ExitCode {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        eprintln!(
            "error: --state: `migrate` is for postgres://… (Redis and memory need no migration)"
        );
        return ExitCode::FAILURE;
    }
    let run = async {
        let store = PostgresStore::connect(url, schema).await?;
        store.migrate().await
    };
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(run).map_err(|e| e.to_string()));
    match result {
        Ok(()) => {
            println!("schema `{schema}` is up to date");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn log_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}

fn init_tracing(json: bool) {
    let builder = tracing_subscriber::fmt().with_env_filter(log_filter());
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Logging plus span export: the log keeps its filter (`RUST_LOG`) and never shows the
/// exported spans; the exporter sees those spans only.
fn init_tracing_with_export(
    json: bool,
    options: &crate::trace::otel::OtlpOptions,
    runtime: tokio::runtime::Handle,
) -> anyhow::Result<crate::trace::otel::Exporter> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let hidden = format!("{}=off", crate::trace::otel::TARGET);
    let filter = log_filter().add_directive(hidden.parse()?);
    let log = if json {
        tracing_subscriber::fmt::layer().json().boxed()
    } else {
        tracing_subscriber::fmt::layer().boxed()
    };
    let (spans, exporter) = crate::trace::otel::layer(options, runtime)?;
    let only_ours = tracing_subscriber::filter::Targets::new()
        .with_target(crate::trace::otel::TARGET, tracing::Level::INFO);
    tracing_subscriber::registry()
        .with(log.with_filter(filter))
        .with(spans.with_filter(only_ours))
        .try_init()?;
    Ok(exporter)
}

/// The exporter `args` ask for, with logging set up either way.
fn init_observability(
    args: &ServeArgs,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<Option<crate::trace::otel::Exporter>> {
    let Some(endpoint) = args.otlp_endpoint.clone().filter(|e| !e.trim().is_empty()) else {
        init_tracing(args.log_json);
        return Ok(None);
    };
    let options = crate::trace::otel::OtlpOptions {
        endpoint,
        protocol: args.otlp_protocol,
        instance: args.gateway_id.clone().filter(|id| !id.trim().is_empty()),
    };
    let exporter = init_tracing_with_export(args.log_json, &options, runtime.handle().clone())?;
    tracing::info!(endpoint = %acteon_api::redact::redact_url(&options.endpoint), "exporting spans (OTLP)");
    Ok(Some(exporter))
}

fn serve_blocking(args: ServeArgs) -> ExitCode {
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
    let exporter = match init_observability(&args, &rt) {
        Ok(exporter) => exporter,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let served = rt.block_on(serve(args));
    // After the drain, on this (non-runtime) thread: the last spans are sent by the
    // runtime's workers while this waits.
    if let Some(exporter) = exporter {
        exporter.shutdown();
    }
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `memory`, `redis` or `postgres` for a `--state` URL; other schemes are refused at start.
fn backend_kind(url: &str) -> anyhow::Result<&'static str> {
    match url {
        "memory" | "memory://" => Ok("memory"),
        u if u.starts_with("redis://")
            || u.starts_with("rediss://")
            || u.starts_with("redis+unix://") =>
        {
            Ok("redis")
        }
        u if u.starts_with("postgres://") || u.starts_with("postgresql://") => Ok("postgres"),
        other => anyhow::bail!("--state `{other}`: expected memory, redis://… or postgres://…"),
    }
}

/// Opens the state backend named by `--state`. A Redis or Postgres backend that cannot be
/// reached yet is connected in the background (and migrated): the gateway serves 503 on
/// what needs it and is not ready until then, instead of exiting into a crash loop.
pub async fn state_backend(
    url: &str,
    prefix: &str,
    tuning: StateTuning,
) -> anyhow::Result<Arc<dyn StateStore>> {
    let kind = backend_kind(url)?;
    match connect_state_backend(url, prefix, tuning).await {
        Ok(store) => Ok(store),
        Err(e) if kind == "memory" => Err(e),
        Err(e) => {
            let first = format!("{e:#}");
            tracing::warn!(backend = kind, error = ?first, "state backend unreachable at start; serving 503 until it is reached");
            let lazy = LazyStore::new(kind, first);
            let (url, prefix) = (url.to_owned(), prefix.to_owned());
            lazy.connect_in_background(move || reconnect(url.clone(), prefix.clone(), tuning));
            Ok(lazy)
        }
    }
}

type Reconnect = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Arc<dyn StateStore>, String>> + Send>,
>;

/// A connection attempt of [`LazyStore`]. It runs on a blocking thread driving the runtime:
/// sqlx's migration future is not `Send` for every lifetime, so it cannot be a task itself.
fn reconnect(url: String, prefix: String, tuning: StateTuning) -> Reconnect {
    Box::pin(async move {
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            handle.block_on(connect_state_backend(&url, &prefix, tuning))
        })
        .await
        .map_err(|e| format!("connection attempt failed: {e}"))?
        .map_err(|e| format!("{e:#}"))
    })
}

/// How state backend calls are bounded and combined (from the `serve` flags).
#[derive(Clone, Copy, Debug)]
pub struct StateTuning {
    pub timeout: Duration,
    pub postgres_gate_batches: usize,
}

async fn connect_state_backend(
    url: &str,
    prefix: &str,
    tuning: StateTuning,
) -> anyhow::Result<Arc<dyn StateStore>> {
    let timeout = tuning.timeout;
    match url {
        "memory" | "memory://" => {
            let store = Arc::new(MemoryStore::new());
            store.start_sweeper(Duration::from_secs(10));
            Ok(store)
        }
        u if u.starts_with("redis://")
            || u.starts_with("rediss://")
            || u.starts_with("redis+unix://") =>
        {
            let store = RedisStore::connect(u, prefix, timeout)
                .await
                .map_err(|e| anyhow::anyhow!("--state: {e}"))?;
            tracing::info!(prefix, "state backend: redis");
            Ok(Arc::new(store))
        }
        u if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
            let options = PostgresOptions {
                op_timeout: timeout,
                gate_batches: GateBatches {
                    in_flight: tuning.postgres_gate_batches,
                    ..GateBatches::default()
                },
                ..PostgresOptions::default()
            };
            let store = Arc::new(
                PostgresStore::connect_with(u, prefix, options)
                    .await
                    .map_err(|e| anyhow::anyhow!("--state: {e}"))?,
            );
            // Migrations are idempotent and versioned: every gateway applies them at start.
            store
                .migrate()
                .await
                .map_err(|e| anyhow::anyhow!("--state: migrating schema `{prefix}`: {e}"))?;
            store.start_sweeper(Duration::from_secs(10));
            tracing::info!(schema = prefix, "state backend: postgres");
            Ok(store)
        }
        other => anyhow::bail!("--state `{other}`: expected memory, redis://… or postgres://…"),
    }
}

/// Compiles `--config` files into a runtime (standalone, or files with a shared backend).
fn runtime_from_files(
    args: &ServeArgs,
    http_client: &reqwest::Client,
    metrics: &Metrics,
) -> anyhow::Result<Runtime> {
    let opts = CompileOptions {
        shared_namespace: args.shared_namespace.clone(),
    };
    for w in acteon::warnings_in_paths(&args.config_paths()) {
        tracing::warn!(warning = %w, "Acteon rule file key ignored");
    }
    let snapshot = compile::compile_paths(&args.config_paths(), &opts).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
        anyhow::anyhow!(
            "the configuration has {} problem(s):\n{}",
            errors.len(),
            lines.join("\n")
        )
    })?;
    crate::config::reject_secret_refs(&snapshot).map_err(anyhow::Error::msg)?;
    metrics.config_version.set(snapshot.version as i64);
    let runtime = Runtime::build(snapshot, http_client, None)?;
    metrics.config_rules.set(runtime.rules.len() as i64);
    metrics.zero_provider_series(&runtime.snapshot);
    tracing::info!(
        rules = runtime.rules.len(),
        unindexed = runtime.rules.unindexed(),
        providers = runtime.snapshot.providers.len(),
        digest = %runtime.snapshot.digest,
        "configuration loaded"
    );
    Ok(runtime)
}

/// The keys that open the credentials sealed by the operator and authenticate its
/// snapshots: from `--seal-key-file` (re-read on every config poll, with
/// `--previous-seal-keys-file`) or the environment variable `ACTEON_SEAL_KEY` (fixed).
fn load_seal_keys(args: &ServeArgs) -> anyhow::Result<SealKeys> {
    let allow_unsigned = args.allow_unsigned_snapshots;
    let env_value = std::env::var("ACTEON_SEAL_KEY")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let keys = match (&args.seal_key_file, env_value) {
        (Some(_), Some(_)) => {
            anyhow::bail!("seal key: --seal-key-file and ACTEON_SEAL_KEY: give one")
        }
        (Some(file), None) if args.previous_seal_keys.is_none() => SealKeys::from_files(
            file.clone(),
            args.previous_seal_keys_file.clone(),
            allow_unsigned,
        )?,
        (file, env_value) => {
            let key = acteon_channel::seal::load_key(file.as_deref(), env_value.as_deref())
                .map_err(|e| anyhow::anyhow!("seal key: {e}"))?;
            let previous_text = match &args.previous_seal_keys_file {
                Some(path) => std::fs::read_to_string(path).unwrap_or_default(),
                None => args.previous_seal_keys.clone().unwrap_or_default(),
            };
            let previous = SealKey::list_from_text(&previous_text)
                .map_err(|e| anyhow::anyhow!("previous seal keys: {e}"))?;
            SealKeys::fixed(key.map(|k| k.with_previous(previous)), allow_unsigned)?
        }
    };
    match &keys.current().key {
        Some(k) => {
            tracing::info!(fingerprint = %k.fingerprint(), previous = ?k.previous_fingerprints(), "seal key loaded")
        }
        None => tracing::info!(
            "no seal key (--seal-key-file / ACTEON_SEAL_KEY): snapshots whose providers \
             reference Secrets will be refused"
        ),
    }
    Ok(keys)
}

/// Whether callers must authenticate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    Off,
    On,
}

/// The authenticator `--auth on` asks for, its credential sources started.
async fn authenticator(args: &ServeArgs) -> anyhow::Result<Option<Arc<Authenticator>>> {
    if args.auth == AuthMode::Off {
        return Ok(None);
    }
    if !args.auth_service_accounts
        && args.api_tokens_file.is_none()
        && args.api_token_secrets_namespace.is_none()
    {
        anyhow::bail!(
            "--auth on: no credentials would be accepted; give --auth-service-accounts, \
             --api-tokens-file or --api-token-secrets-namespace"
        );
    }
    let tokens = Arc::new(ApiTokens::default());
    if let Some(path) = &args.api_tokens_file {
        api_tokens::watch_file(tokens.clone(), path.clone(), Duration::from_secs(5))?;
    }
    let needs_kube = args.auth_service_accounts || args.api_token_secrets_namespace.is_some();
    let client = if needs_kube {
        Some(
            kube::Client::try_default()
                .await
                .map_err(|e| anyhow::anyhow!("--auth on: Kubernetes client: {e}"))?,
        )
    } else {
        None
    };
    if let (Some(namespace), Some(client)) = (&args.api_token_secrets_namespace, &client) {
        api_tokens::watch_secrets(
            tokens.clone(),
            client.clone(),
            namespace,
            &args.api_token_selector,
        );
    }
    let service_accounts = match (args.auth_service_accounts, client) {
        (true, Some(client)) => Some(ServiceAccounts::new(
            client,
            args.auth_audience.clone(),
            Duration::from_secs(args.auth_cache_seconds),
        )),
        _ => None,
    };
    tracing::info!(
        service_accounts = args.auth_service_accounts,
        audience = %args.auth_audience,
        "authentication on"
    );
    Ok(Some(Arc::new(Authenticator {
        api_tokens: tokens,
        service_accounts,
    })))
}

/// Serves the probes and metrics without authentication on `addr`, until the process ends.
async fn serve_probes(addr: SocketAddr, app: Arc<AppState>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (--probes-listen): {e}"))?;
    tracing::info!(addr = %listener.local_addr()?, "probes and metrics listening");
    let router = http::probes_router(app);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "probes listener stopped");
        }
    });
    Ok(())
}

/// Loads the configuration (files, or the operator's snapshots through the config channel),
/// binds, and serves until SIGINT/SIGTERM, then drains.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let http_client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let metrics = Arc::new(Metrics::new());
    let timeout = Duration::from_millis(args.state_timeout_ms);
    let follows = args.follows_channel();
    // Files are checked before any backend is contacted, as before.
    let files_runtime = if follows {
        None
    } else {
        Some(runtime_from_files(&args, &http_client, &metrics)?)
    };
    let seal_keys = if follows {
        Some(Arc::new(load_seal_keys(&args)?))
    } else {
        None
    };
    if follows && args.allow_unsigned_snapshots {
        tracing::warn!("--allow-unsigned-snapshots: snapshots without a MAC are accepted");
    }
    let tuning = StateTuning {
        timeout,
        postgres_gate_batches: args.postgres_gate_batches,
    };
    let state = state_backend(&args.state, &args.state_prefix, tuning).await?;
    crate::metrics::GateBatchCollector::register(&metrics.registry, state.clone());
    let mut follower = None;
    let config = match files_runtime {
        Some(runtime) => LiveConfig::new(runtime),
        None => {
            // Connected (and reconnected) by the follower: a channel that is down at
            // start is waited for, not a reason to exit.
            let channel_kind = crate::follow::channel_kind(&args.state)
                .map_err(|e| anyhow::anyhow!("--state: config channel: {e}"))?;
            let gateway_id = args
                .gateway_id
                .clone()
                .filter(|id| !id.trim().is_empty())
                .unwrap_or_else(crate::follow::default_gateway_id);
            follower = Some((
                (args.state.clone(), args.state_prefix.clone(), timeout),
                FollowOptions {
                    gateway_id: gateway_id.clone(),
                    poll_interval: Duration::from_secs(args.config_poll_seconds),
                    report_interval: Duration::from_secs(args.report_interval_seconds),
                    keys: seal_keys
                        .clone()
                        .ok_or_else(|| anyhow::anyhow!("seal keys: not loaded"))?,
                    http: http_client.clone(),
                },
            ));
            LiveConfig::waiting(
                ConfigSource::Channel {
                    backend: channel_kind,
                },
                Some(gateway_id),
            )
        }
    };
    let audit = audit_sink(&args, &metrics.registry)?;
    let gateway = Arc::new(Gateway {
        config,
        state,
        metrics,
        options: GatewayOptions {
            state_timeout: timeout,
            default_deny: args.default_deny,
            chain_retention: Duration::from_secs(args.chain_retention_seconds),
            dead_letter_retention: Duration::from_secs(args.dlq_retention_seconds),
            trace: args.trace_propagation,
        },
        confirmer: Default::default(),
        // In process already for the memory backend.
        delivered: DeliveredMarks::new(if is_memory(&args.state) {
            0
        } else {
            args.dedup_cache_entries
        }),
        chain_activity: Default::default(),
        guards: Default::default(),
        audit,
    });
    if let Some(((url, prefix, timeout), options)) = follower {
        crate::follow::spawn_when_connected(url, prefix, timeout, gateway.clone(), options);
    }
    let worker = crate::worker::spawn(
        gateway.clone(),
        crate::worker::WorkerOptions {
            poll_interval: Duration::from_millis(args.worker_poll_ms.max(10)),
            lease: Duration::from_secs(args.worker_lease_seconds.max(1)),
            census_every: Duration::from_secs(args.chain_census_seconds),
            ..Default::default()
        },
    );
    let breaker_poll = crate::delivery::breaker::spawn_poll(
        gateway.clone(),
        Duration::from_millis(args.circuit_poll_ms.max(10)),
    );
    let auth = authenticator(&args).await?;
    let sweeper = gateway.audit.as_ref().map(|a| {
        a.spawn_sweeper(
            gateway.state.clone(),
            Duration::from_secs(args.audit_sweep_seconds),
        )
    });
    let lifecycle = Arc::new(Lifecycle::new(&gateway.metrics.registry));
    // One check before listening, so that `/readyz` is right from the first request.
    lifecycle.check(&gateway).await;
    lifecycle.spawn_monitor(
        gateway.clone(),
        Duration::from_secs(args.state_check_seconds),
    );
    let registry = gateway.metrics.registry.clone();
    let audit = gateway.audit.clone();
    let app = Arc::new(AppState {
        gateway,
        body_limit: args.body_limit,
        body_timeout: Duration::from_millis(args.http_body_timeout_ms),
        lifecycle,
        auth,
    });
    if let Some(addr) = args.probes_listen {
        serve_probes(addr, app.clone()).await?;
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "listening");
    let options = ServeOptions {
        max_connections: args.http_max_connections,
        deadlines: Deadlines {
            idle: Duration::from_secs(args.http_idle_timeout_seconds),
            header: Duration::from_millis(args.http_header_timeout_ms),
        },
        drain_timeout: Duration::from_secs(args.shutdown_timeout),
    };
    let delay = Duration::from_secs(args.shutdown_delay_seconds);
    http::serve::serve(listener, app, &registry, options, shutdown_signal(delay)).await;
    // After the HTTP drain: running tasks finish (bounded), unfinished claims are released.
    worker.stop().await;
    // Last: the records of the requests and tasks above are queued by now.
    if let Some(audit) = audit {
        audit.shutdown(AUDIT_FLUSH_TIMEOUT).await;
    }
    breaker_poll.abort();
    if let Some(s) = sweeper {
        s.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

/// Longest wait for the audit queue to be written on shutdown.
const AUDIT_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The audit trail of `serve`: Postgres when the state is (or `--audit-postgres-url`),
/// else memory; `None` with `--audit off`.
fn audit_sink(
    args: &ServeArgs,
    registry: &prometheus::Registry,
) -> anyhow::Result<Option<Arc<crate::audit::AuditSink>>> {
    use crate::audit::{AuditOptions, AuditSink, AuditStore, Retention, redact::Redactor};
    if args.audit == "off" {
        return Ok(None);
    }
    let redactor =
        Redactor::new(&args.audit_redact).map_err(|e| anyhow::anyhow!("--audit-redact: {e}"))?;
    let retention = Retention::parse(args.audit_retention_days, &args.audit_retention_namespace)
        .map_err(|e| anyhow::anyhow!("--audit-retention-namespace: {e}"))?;
    let state_pg = args.state.starts_with("postgres://") || args.state.starts_with("postgresql://");
    let pg_url = args
        .audit_postgres_url
        .clone()
        .filter(|u| !u.trim().is_empty())
        .or_else(|| state_pg.then(|| args.state.clone()));
    let store: Arc<dyn AuditStore> = match pg_url {
        Some(url) => {
            let store = crate::audit::postgres::PostgresAuditStore::new(
                &url,
                &args.state_prefix,
                Duration::from_secs(5),
            )
            .map_err(|e| anyhow::anyhow!("audit store: {e}"))?;
            tracing::info!(schema = %args.state_prefix, "audit trail: postgres");
            Arc::new(store)
        }
        None => {
            tracing::info!(capacity = args.audit_memory_capacity, "audit trail: memory");
            Arc::new(crate::audit::memory::MemoryAuditStore::new(
                args.audit_memory_capacity,
            ))
        }
    };
    if args.audit_queue_capacity == 0 || args.audit_queue_capacity > 10_000_000 {
        anyhow::bail!("--audit-queue-capacity: between 1 and 10000000");
    }
    let options = AuditOptions {
        queue_capacity: args.audit_queue_capacity,
        when_full: args.audit_when_full,
        store_payload: args.audit_store_payload,
        redactor,
        retention,
    };
    Ok(Some(AuditSink::start(store, options, registry)))
}

/// Waits for SIGTERM (answers `delay`: keep serving while unready) or SIGINT (no delay).
async fn shutdown_signal(delay: Duration) -> Duration {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    let delay = tokio::select! {
        _ = ctrl_c => Duration::ZERO,
        _ = term => delay,
    };
    tracing::info!(delay = ?delay, "shutdown signal received");
    delay
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve_args(args: &[&str]) -> ServeArgs {
        let argv = ["acteon-gateway", "serve"].iter().chain(args);
        match Cli::parse_from(argv).command {
            Some(Command::Serve(a)) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn config_defaults_only_for_the_memory_backend() {
        let standalone = serve_args(&[]);
        assert!(!standalone.follows_channel());
        assert_eq!(
            standalone.config_paths(),
            vec![PathBuf::from("config/samples"), PathBuf::from("rules")]
        );
        for url in ["redis://127.0.0.1:6379", "postgres://u@h/db"] {
            assert!(serve_args(&["--state", url]).follows_channel(), "{url}");
            let files = serve_args(&["--state", url, "--config", "a.yaml,b"]);
            assert!(!files.follows_channel());
            assert_eq!(
                files.config_paths(),
                vec![PathBuf::from("a.yaml"), PathBuf::from("b")]
            );
        }
        let follower = serve_args(&["--state", "redis://r", "--gateway-id", "g-1"]);
        assert_eq!(follower.gateway_id.as_deref(), Some("g-1"));
        assert_eq!(follower.config_poll_seconds, 5);
        assert_eq!(follower.report_interval_seconds, 5);
    }

    #[test]
    fn audit_flags() {
        let a = serve_args(&[]);
        assert_eq!(a.audit, "on");
        assert_eq!(a.audit_when_full, crate::audit::WhenFull::Drop);
        assert_eq!(a.audit_queue_capacity, 10_000);
        assert_eq!(a.audit_retention_days, 30);
        assert!(!a.audit_store_payload);
        let a = serve_args(&[
            "--audit-redact",
            "payload.password,payload.card.number",
            "--audit-retention-namespace",
            "team-a=7,team-b=90",
            "--audit-when-full",
            "block",
        ]);
        assert_eq!(a.audit_redact.len(), 2);
        assert_eq!(a.audit_retention_namespace, vec!["team-a=7", "team-b=90"]);
        assert_eq!(a.audit_when_full, crate::audit::WhenFull::Block);
        let argv = ["acteon-gateway", "serve", "--audit", "maybe"];
        assert!(Cli::try_parse_from(argv).is_err());
    }
}
