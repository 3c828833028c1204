//! Confirmation of in-flight dedup marks, batched off the request path.
//!
//! A dedup mark is set for an in-flight lease only (see [`GateMode::Apply`]), so that a
//! gateway killed mid-delivery does not leave a mark that answers `Deduplicated` to every
//! retry for the whole TTL. Once the delivery succeeded the pipeline hands the mark to a
//! [`DedupConfirmer`], which extends it to its full TTL: a background task collects
//! confirmations for up to [`ConfirmOptions::max_delay`] or [`ConfirmOptions::max_batch`]
//! marks and writes each batch with ONE backend call ([`StateStore::confirm_dedup`]).
//! The caller never waits for it. A confirmation that cannot be written (queue full,
//! backend down) only means the mark expires at the end of its lease: a duplicate may then
//! be delivered again (at-least-once), an action is never lost.
//!
//! [`GateMode::Apply`]: super::GateMode::Apply

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus::IntCounterVec;
use tokio::sync::mpsc;

use super::{DedupConfirm, StateStore};
use crate::metrics::Metrics;

/// Tuning of a [`DedupConfirmer`].
#[derive(Clone, Debug)]
pub struct ConfirmOptions {
    /// Marks written by one backend call at most.
    pub max_batch: usize,
    /// Longest wait for a batch to fill after its first mark.
    pub max_delay: Duration,
    /// Confirmations waiting at most; beyond, new ones are dropped (and counted).
    pub queue: usize,
    /// Bound on one batch's backend call.
    pub call_timeout: Duration,
}

impl Default for ConfirmOptions {
    fn default() -> Self {
        ConfirmOptions {
            max_batch: 512,
            max_delay: Duration::from_millis(25),
            queue: 65_536,
            call_timeout: Duration::from_secs(2),
        }
    }
}

/// The confirmer's counters (defined with the gateway's other metrics).
#[derive(Clone)]
struct ConfirmMetrics {
    batches: IntCounterVec,
    marks: IntCounterVec,
}

impl ConfirmMetrics {
    fn new(metrics: &Metrics) -> ConfirmMetrics {
        ConfirmMetrics {
            batches: metrics.dedup_confirm_batches.clone(),
            marks: metrics.dedup_confirmations.clone(),
        }
    }
}

struct Running {
    tx: mpsc::Sender<DedupConfirm>,
    metrics: ConfirmMetrics,
}

/// Queue and background writer of dedup confirmations; started on first use (it needs
/// the store, the metrics and a Tokio runtime, which the pipeline has at hand).
#[derive(Default)]
pub struct DedupConfirmer {
    running: OnceLock<Running>,
    options: ConfirmOptions,
}

impl DedupConfirmer {
    pub fn new(options: ConfirmOptions) -> DedupConfirmer {
        DedupConfirmer {
            running: OnceLock::new(),
            options,
        }
    }

    /// Queues a confirmation without waiting; drops it (counted) when the queue is full.
    pub fn enqueue(
        &self,
        state: &Arc<dyn StateStore>,
        metrics: &Metrics,
        confirmation: DedupConfirm,
    ) {
        let running = self
            .running
            .get_or_init(|| self.start(state.clone(), metrics));
        if running.tx.try_send(confirmation).is_err() {
            running.metrics.marks.with_label_values(&["dropped"]).inc();
            tracing::debug!("dedup confirmation queue full; the mark expires after its lease");
        }
    }

    fn start(&self, state: Arc<dyn StateStore>, metrics: &Metrics) -> Running {
        let (tx, rx) = mpsc::channel(self.options.queue.max(1));
        let metrics = ConfirmMetrics::new(metrics);
        tokio::spawn(run(rx, state, metrics.clone(), self.options.clone()));
        Running { tx, metrics }
    }
}

/// Collects batches until every sender is gone.
async fn run(
    mut rx: mpsc::Receiver<DedupConfirm>,
    state: Arc<dyn StateStore>,
    metrics: ConfirmMetrics,
    options: ConfirmOptions,
) {
    let max_batch = options.max_batch.max(1);
    let mut batch = Vec::with_capacity(max_batch);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        let deadline = tokio::time::Instant::now() + options.max_delay;
        while batch.len() < max_batch {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(c)) => batch.push(c),
                Ok(None) | Err(_) => break,
            }
        }
        flush(&*state, &batch, &metrics, options.call_timeout).await;
        batch.clear();
    }
}

async fn flush(
    state: &dyn StateStore,
    batch: &[DedupConfirm],
    metrics: &ConfirmMetrics,
    timeout: Duration,
) {
    let n = batch.len() as u64;
    let error = match tokio::time::timeout(timeout, state.confirm_dedup(batch)).await {
        Ok(Ok(confirmed)) => {
            let confirmed = (confirmed as u64).min(n);
            metrics.batches.with_label_values(&["ok"]).inc();
            metrics
                .marks
                .with_label_values(&["confirmed"])
                .inc_by(confirmed);
            metrics
                .marks
                .with_label_values(&["stale"])
                .inc_by(n - confirmed);
            return;
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("timed out after {timeout:?}"),
    };
    metrics.batches.with_label_values(&["error"]).inc();
    metrics.marks.with_label_values(&["failed"]).inc_by(n);
    tracing::warn!(marks = n, %error, "could not confirm dedup marks; they expire after their in-flight lease");
}
