//! The controller: watches feed an index; the leader compiles the index into a snapshot,
//! publishes it through the state backend, and writes each object's status.
//!
//! Compilation is global rather than per object because objects refer to each other
//! (a Rule is only valid if its Provider is), so one pass over the index replaces the
//! usual per-object reconcile: read (index) → validate + build (pure, `build.rs`) →
//! apply (publish) → status (pure desired status, `status.rs`, written when it differs).

pub mod build;
pub mod index;
mod reconcile;
pub mod secrets;
pub mod status;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use acteon_api::compile::CompileOptions;
use acteon_channel::ConfigChannel;
use acteon_channel::seal::SealKey;
use kube::runtime::events::{Recorder, Reporter};

use crate::metrics::Metrics;
use index::Index;
use reconcile::Reconciler;
use secrets::Secrets;

/// Field manager of every status write.
pub const FIELD_MANAGER: &str = "acteon-operator";

#[derive(Clone, Debug)]
pub struct Options {
    /// Namespaces to watch; empty = all.
    pub namespaces: Vec<String>,
    pub compile: CompileOptions,
    /// Status patches in flight at once.
    pub status_concurrency: usize,
    /// Quiet time after a change before compiling, so a burst compiles once.
    pub debounce: Duration,
    /// How often gateway reports are read.
    pub report_poll: Duration,
    /// This replica's name (Events' reporting instance).
    pub identity: String,
    /// Only Secrets with these labels are watched and read for Providers.
    pub secret_label_selector: Option<String>,
}

/// What every stage of a reconcile needs.
pub struct Context {
    pub client: kube::Client,
    pub index: Arc<Index>,
    pub secrets: Arc<Secrets>,
    pub channel: Arc<dyn ConfigChannel>,
    /// Seals credentials and signs snapshots; replaced when the key source changes.
    seal_key: parking_lot::RwLock<Option<SealKey>>,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    pub options: Options,
}

impl Context {
    /// Starts the watches; the index fills in the background.
    pub fn start(
        client: kube::Client,
        channel: Arc<dyn ConfigChannel>,
        seal_key: Option<SealKey>,
        metrics: Arc<Metrics>,
        options: Options,
    ) -> Arc<Context> {
        let scopes = watch::scopes(&options.namespaces);
        let index = Arc::new(Index::new(scopes.len()));
        watch::spawn(&client, &index, scopes);
        let secrets = Secrets::new(
            client.clone(),
            index.clone(),
            options.secret_label_selector.clone(),
        );
        secrets.spawn_watches(&options.namespaces);
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: Some(options.identity.clone()),
            },
        );
        Arc::new(Context {
            client,
            index,
            secrets,
            channel,
            seal_key: parking_lot::RwLock::new(seal_key),
            metrics,
            recorder,
            options,
        })
    }
}

impl Context {
    /// The seal key in force.
    pub fn seal_key(&self) -> Option<SealKey> {
        self.seal_key.read().clone()
    }

    /// Puts a new seal key in force and republishes: everything is sealed and signed with
    /// it from the next snapshot on.
    pub fn replace_seal_key(&self, key: SealKey) {
        *self.seal_key.write() = Some(key);
        self.index.touch_config();
    }
}

/// Reconciles while `leading` is true; idles (caches stay warm) while it is false.
pub async fn run(ctx: Arc<Context>, mut leading: tokio::sync::watch::Receiver<bool>) {
    let mut config = ctx.index.config_changes();
    let mut status = ctx.index.status_changes();
    let mut poll = tokio::time::interval(ctx.options.report_poll);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut r = Reconciler::new(ctx.clone());
    loop {
        let is_leader = *leading.borrow_and_update();
        ctx.metrics.leader.set(i64::from(is_leader));
        if !is_leader {
            r.step_down();
            if leading.changed().await.is_err() {
                return;
            }
            continue;
        }
        tokio::select! {
            changed = leading.changed() => if changed.is_err() { return },
            _ = config.changed() => {
                tokio::time::sleep(ctx.options.debounce).await;
                config.mark_unchanged();
                r.rebuild().await;
            }
            _ = status.changed() => {
                status.mark_unchanged();
                r.write_statuses().await;
            }
            _ = poll.tick() => r.tick().await,
        }
    }
}
