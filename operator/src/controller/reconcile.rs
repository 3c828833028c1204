//! One leader's reconcile state: the last build, which published version introduced each
//! object's current generation, and the gateways' reports.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use acteon_api::compile::Kind;
use acteon_api::compile::gaps::gaps;
use acteon_api::crd::ResourceStatus;
use acteon_channel::{GatewayReport, Head, PublishOutcome};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use serde_json::json;

use super::build::{self, Verdict};
use super::index::{Object, ObjectKey};
use super::status::{self, Serving};
use super::watch::{KINDS, api_resource};
use super::{Context, FIELD_MANAGER};
use crate::error::{Error, Result};

pub struct Reconciler {
    ctx: Arc<Context>,
    verdicts: HashMap<ObjectKey, Verdict>,
    /// Object → (generation, publication sequence number of the first snapshot that
    /// contains that generation).
    introduced: HashMap<ObjectKey, (i64, u64)>,
    /// Digests this operator published, with their sequence numbers: a gateway serves an
    /// object's generation when its digest's number is at least the object's. Counted
    /// here, not from the backend's version, which starts again at 1 when the backend
    /// loses its data.
    publications: Publications,
    /// The head as this operator last published it: a different or missing head means the
    /// backend lost (or another writer replaced) the snapshot — republish.
    published: Option<Head>,
    gateways: Vec<GatewayReport>,
    /// Status we wrote, with the status we replaced: skips rewriting while the watch
    /// has not yet brought our own write back.
    written: HashMap<ObjectKey, (ResourceStatus, ResourceStatus)>,
    /// A rebuild is due (first pass as leader, or the last one failed).
    pending: bool,
}

impl Reconciler {
    pub fn new(ctx: Arc<Context>) -> Reconciler {
        Reconciler {
            ctx,
            verdicts: HashMap::new(),
            introduced: HashMap::new(),
            publications: Publications::default(),
            published: None,
            gateways: Vec::new(),
            written: HashMap::new(),
            pending: true,
        }
    }

    /// Leadership lost: forget everything; the next leader term starts from scratch.
    pub fn step_down(&mut self) {
        self.verdicts.clear();
        self.introduced.clear();
        self.published = None;
        self.written.clear();
        self.pending = true;
    }

    /// Periodic work: retry a due rebuild; republish a lost snapshot; read gateway reports
    /// and update status.
    pub async fn tick(&mut self) {
        if self.pending || self.snapshot_lost().await {
            self.rebuild().await;
            return;
        }
        match self.ctx.channel.gateways().await {
            Ok(reports) => {
                if reports != self.gateways {
                    self.ctx.metrics.gateways.set(reports.len() as i64);
                    self.gateways = reports;
                    self.write_statuses().await;
                }
            }
            Err(e) => {
                self.ctx
                    .metrics
                    .reconcile_errors
                    .with_label_values(&[Error::from(e).metric_label()])
                    .inc();
            }
        }
    }

    /// Whether the backend no longer holds what this operator published (its data was
    /// lost, or the head was replaced): then the snapshot is published again.
    async fn snapshot_lost(&mut self) -> bool {
        let Some(published) = &self.published else {
            return false;
        };
        match self.ctx.channel.head().await {
            Ok(head) if head.as_ref().map(|h| &h.digest) == Some(&published.digest) => false,
            Ok(head) => {
                tracing::warn!(
                    published_version = published.version,
                    digest = %published.digest,
                    head = ?head,
                    "the published snapshot is gone from the state backend; publishing it again"
                );
                self.ctx.metrics.republished.inc();
                true
            }
            // Unreachable: nothing to compare; the next tick tries again.
            Err(_) => false,
        }
    }

    /// Compile, publish, write status. Failures are counted and retried on the next tick.
    pub async fn rebuild(&mut self) {
        let started = Instant::now();
        let result = self.compile_and_publish().await;
        let ctx = self.ctx.clone();
        let m = &ctx.metrics;
        m.reconcile_seconds
            .with_label_values(&["publish"])
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                self.pending = false;
                m.reconciles.with_label_values(&["ok"]).inc();
                let started = Instant::now();
                // Fresh reports first, so a status written now counts gateways that already
                // picked up the new version.
                if let Ok(reports) = self.ctx.channel.gateways().await {
                    m.gateways.set(reports.len() as i64);
                    self.gateways = reports;
                }
                self.write_statuses().await;
                m.reconcile_seconds
                    .with_label_values(&["status"])
                    .observe(started.elapsed().as_secs_f64());
            }
            Err(e) => {
                self.pending = true;
                m.reconciles.with_label_values(&["error"]).inc();
                m.reconcile_errors
                    .with_label_values(&[e.metric_label()])
                    .inc();
                if !matches!(e, Error::NotSynced) {
                    tracing::warn!(error = %e, "reconcile failed; retrying");
                }
            }
        }
    }

    async fn compile_and_publish(&mut self) -> Result<()> {
        let ctx = self.ctx.clone();
        if !ctx.index.is_synced() {
            return Err(Error::NotSynced);
        }
        let objects = ctx.index.objects();
        let secrets = ctx
            .secrets
            .resolve(&build::referenced_secrets(&objects))
            .await?;
        // One key for the whole publication: sealed values and signature agree.
        let seal_key = ctx.seal_key();
        let build = {
            let ctx = ctx.clone();
            let objects = objects.clone();
            let seal_key = seal_key.clone();
            tokio::task::spawn_blocking(move || {
                build::build(&objects, &secrets, seal_key.as_ref(), &ctx.options.compile)
            })
            .await
            .map_err(|e| Error::Build(e.to_string()))?
        };
        let body = serde_json::to_vec(&build.snapshot)?;
        // Gateways refuse snapshots that do not authenticate under the shared seal key;
        // without a key the snapshot goes out bare, for gateways that allow unsigned ones.
        let body = match &seal_key {
            Some(key) => acteon_channel::auth::sign(key, &build.snapshot.digest, &body),
            None => body,
        };
        let outcome = ctx.channel.publish(&build.snapshot.digest, &body).await?;
        let version = outcome.head().version;
        if let PublishOutcome::Published(h) = &outcome {
            tracing::info!(
                version = h.version,
                digest = %h.digest,
                rules = build.snapshot.rules.len(),
                providers = build.snapshot.providers.len(),
                bytes = body.len(),
                signed = seal_key.is_some(),
                "published configuration snapshot"
            );
        }
        ctx.metrics.published_version.set(version as i64);
        let seq = self.publications.number(&outcome.head().digest);
        self.published = Some(outcome.head().clone());
        self.record(&objects, build.verdicts, seq);
        Ok(())
    }

    fn record(&mut self, objects: &[Arc<Object>], verdicts: HashMap<ObjectKey, Verdict>, seq: u64) {
        let mut introduced = HashMap::with_capacity(objects.len());
        for o in objects {
            if verdicts.get(&o.key) != Some(&Verdict::Accepted) {
                continue;
            }
            let since = match self.introduced.get(&o.key) {
                Some(&(generation, v)) if generation == o.generation => v,
                _ => seq,
            };
            introduced.insert(o.key.clone(), (o.generation, since));
        }
        self.introduced = introduced;
        for kind in KINDS {
            let count = |f: &dyn Fn(&Verdict) -> bool| {
                verdicts
                    .iter()
                    .filter(|(k, v)| k.kind == kind && f(v))
                    .count() as i64
            };
            let m = &self.ctx.metrics;
            m.rejected
                .with_label_values(&[kind.as_str()])
                .set(count(&|v| matches!(v, Verdict::Rejected { .. })));
            m.objects
                .with_label_values(&[kind.as_str()])
                .set(count(&|_| true));
        }
        self.written.retain(|k, _| verdicts.contains_key(k));
        self.verdicts = verdicts;
    }

    fn serving(&self, o: &Object) -> Option<Serving> {
        let &(generation, since) = self.introduced.get(&o.key)?;
        if generation != o.generation {
            return None;
        }
        Some(Serving {
            serving: self
                .gateways
                .iter()
                .filter(|g| self.publications.of(&g.digest).is_some_and(|n| n >= since))
                .count() as u32,
            live: self.gateways.len() as u32,
        })
    }

    /// Writes every status that differs from what it should be.
    pub async fn write_statuses(&mut self) {
        if self.verdicts.is_empty() && self.pending {
            return;
        }
        let now = k8s_openapi::jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let mut jobs = Vec::new();
        for o in self.ctx.index.objects() {
            let Some(verdict) = self.verdicts.get(&o.key) else {
                continue; // arrived after the last build; the next one covers it
            };
            let mut want = status::desired(
                o.generation,
                verdict,
                self.serving(&o),
                &gaps(o.key.kind, &o.spec),
                &o.status,
                &now,
            );
            if o.key.kind == Kind::Chain {
                let chain = format!("{}/{}", o.key.namespace, o.key.name);
                let current = o.status.executions.as_ref();
                let executions = status::chain_executions(&chain, &self.gateways, current);
                want.executions = Some(executions);
            }
            if want == o.status {
                // Our last write (if any) has come back through the watch.
                self.written.remove(&o.key);
                continue;
            }
            if let Some((wrote, replaced)) = self.written.get(&o.key)
                && *wrote == want
                && *replaced == o.status
            {
                continue; // our write is on its way back through the watch
            }
            let announce = status::is_new_rejection(o.generation, &want, &o.status);
            jobs.push((o, want, announce));
        }
        if jobs.is_empty() {
            return;
        }
        let ctx = self.ctx.clone();
        let results: Vec<(ObjectKey, ResourceStatus, ResourceStatus, bool)> =
            futures::stream::iter(jobs)
                .map(|(o, want, announce)| {
                    let ctx = ctx.clone();
                    async move {
                        let ok = write_status(&ctx, &o, &want, announce).await;
                        (o.key.clone(), o.status.clone(), want, ok)
                    }
                })
                .buffer_unordered(ctx.options.status_concurrency.max(1))
                .collect()
                .await;
        for (key, replaced, want, ok) in results {
            if ok {
                self.written.insert(key, (want, replaced));
            }
        }
    }
}

fn object_ref(o: &Object) -> ObjectReference {
    ObjectReference {
        api_version: Some(acteon_api::API_VERSION.into()),
        kind: Some(o.key.kind.as_str().into()),
        namespace: Some(o.key.namespace.clone()),
        name: Some(o.key.name.clone()),
        uid: Some(o.uid.clone()),
        ..ObjectReference::default()
    }
}

/// One status patch (server-side apply on the status subresource), plus a Warning Event
/// when it announces a new rejection. Returns whether the patch was applied.
async fn write_status(ctx: &Context, o: &Object, want: &ResourceStatus, announce: bool) -> bool {
    let kind = o.key.kind;
    let ar = api_resource(kind);
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &o.key.namespace, &ar);
    let patch = json!({
        "apiVersion": acteon_api::API_VERSION,
        "kind": kind.as_str(),
        "status": want,
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let result = api
        .patch_status(&o.key.name, &params, &Patch::Apply(&patch))
        .await;
    let label = match &result {
        Ok(_) => "ok",
        Err(kube::Error::Api(s)) if s.code == 404 => "gone",
        Err(_) => "error",
    };
    ctx.metrics
        .status_writes
        .with_label_values(&[kind.as_str(), label])
        .inc();
    if let Err(e) = &result {
        if label == "error" {
            tracing::warn!(object = %o.key, error = %e, "status write failed");
        }
        return false;
    }
    if announce {
        announce_rejection(ctx, o, want).await;
    }
    true
}

async fn announce_rejection(ctx: &Context, o: &Object, want: &ResourceStatus) {
    let Some(c) = want.conditions.iter().find(|c| c.type_ == "Accepted") else {
        return;
    };
    let event = Event {
        type_: EventType::Warning,
        reason: c.reason.clone(),
        note: Some(truncate(&c.message, 1000)),
        action: "Validate".into(),
        secondary: None,
    };
    tracing::info!(object = %o.key, reason = %c.reason, message = %c.message, "rejected");
    match ctx.recorder.publish(&event, &object_ref(o)).await {
        Ok(()) => ctx
            .metrics
            .events
            .with_label_values(&[c.reason.as_str()])
            .inc(),
        Err(e) => tracing::warn!(object = %o.key, error = %e, "could not emit Event"),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Digests published by this operator process, numbered in publication order (a digest
/// published again keeps its number). The oldest are forgotten past [`KEPT_DIGESTS`]: a
/// gateway still serving one of those is behind anyway.
#[derive(Debug, Default)]
struct Publications {
    numbers: HashMap<String, u64>,
    last: u64,
}

const KEPT_DIGESTS: usize = 256;

impl Publications {
    fn number(&mut self, digest: &str) -> u64 {
        if let Some(n) = self.numbers.get(digest) {
            return *n;
        }
        self.last += 1;
        self.numbers.insert(digest.to_owned(), self.last);
        if self.numbers.len() > KEPT_DIGESTS {
            let oldest = self.last - KEPT_DIGESTS as u64;
            self.numbers.retain(|_, n| *n > oldest);
        }
        self.last
    }

    fn of(&self, digest: &str) -> Option<u64> {
        self.numbers.get(digest).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publications_are_numbered_by_digest_and_bounded() {
        let mut p = Publications::default();
        assert_eq!((p.number("a"), p.number("b"), p.number("a")), (1, 2, 1));
        assert_eq!((p.of("a"), p.of("b"), p.of("c")), (Some(1), Some(2), None));
        for i in 0..KEPT_DIGESTS {
            p.number(&format!("d{i}"));
        }
        assert_eq!(p.of("a"), None, "the oldest are forgotten");
        assert_eq!(p.numbers.len(), KEPT_DIGESTS);
    }
}
