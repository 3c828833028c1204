//! The sink: records are redacted, queued (bounded) and written in batches by one task.
//!
//! Policy when the queue is full (`--audit-when-full`): `drop` (default) counts the record
//! in `acteon_audit_dropped_total` and logs a warning at most every [`WARN_EVERY`]; `block`
//! makes the dispatch wait for room (no record is lost to a full queue, dispatches slow down
//! to the store's pace instead). A batch the store refuses is retried a bounded number of
//! times, then its records are counted as lost (`result="error"`, and in the dropped total):
//! the queue keeps moving, so a store outage never holds dispatches.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::redact::Redactor;
use super::{AuditRecord, AuditSource, AuditStore, CallerIdentity, Retention};
use crate::action::Action;
use crate::outcome::ActionOutcome;

/// Most rows one write carries.
pub const BATCH: usize = 500;
/// How long a short batch waits for more records before it is written: records reach the
/// store at most this much later, and the writer wakes at most ~1/LINGER times a second
/// below full batches rather than once per record.
const LINGER: Duration = Duration::from_millis(10);
/// Batches written at once.
const WRITERS: usize = 2;
/// Attempts per batch before its records are counted as lost.
const ATTEMPTS: u32 = 3;
/// Pause before the 2nd attempt (doubled before the 3rd).
const RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// At most one "records dropped" warning per this interval.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// What a full queue does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WhenFull {
    Drop,
    Block,
}

/// Settings of the sink (from the `--audit-*` flags).
#[derive(Clone, Debug)]
pub struct AuditOptions {
    pub queue_capacity: usize,
    pub when_full: WhenFull,
    pub store_payload: bool,
    pub redactor: Redactor,
    pub retention: Retention,
}

/// Metrics of the audit trail.
#[derive(Clone)]
pub struct AuditMetrics {
    /// By result: written, dropped (queue full), error (the store failed after retries).
    pub records: IntCounterVec,
    /// Records lost, whatever the reason.
    pub dropped: IntCounter,
    pub queue_depth: IntGauge,
    pub batch_seconds: Histogram,
    pub swept: IntCounter,
}

impl AuditMetrics {
    pub fn new(registry: &Registry) -> AuditMetrics {
        let records = IntCounterVec::new(
            Opts::new("acteon_audit_records_total", "Audit records by result"),
            &["result"],
        )
        .expect("static metric definition");
        for r in ["written", "dropped", "error"] {
            records.with_label_values(&[r]);
        }
        let dropped = IntCounter::new(
            "acteon_audit_dropped_total",
            "Audit records lost: queue full, or the store failed after retries",
        )
        .expect("static metric definition");
        let queue_depth = IntGauge::new("acteon_audit_queue_depth", "Audit records waiting")
            .expect("static metric definition");
        let batch_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "acteon_audit_batch_write_seconds",
                "Duration of one audit batch write",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )
        .expect("static metric definition");
        let swept = IntCounter::new(
            "acteon_audit_swept_total",
            "Audit records deleted by retention",
        )
        .expect("static metric definition");
        for c in [
            Box::new(records.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(dropped.clone()),
            Box::new(queue_depth.clone()),
            Box::new(batch_seconds.clone()),
            Box::new(swept.clone()),
        ] {
            // One sink per registry; a second registration (tests) is harmless.
            let _ = registry.register(c);
        }
        AuditMetrics {
            records,
            dropped,
            queue_depth,
            batch_seconds,
            swept,
        }
    }
}

/// The gateway's handle on the audit trail.
pub struct AuditSink {
    pub store: Arc<dyn AuditStore>,
    pub options: AuditOptions,
    pub metrics: AuditMetrics,
    tx: mpsc::Sender<AuditRecord>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
    /// Unix seconds of the last "dropped" warning (rate limit).
    last_warn: AtomicI64,
}

/// What a finished dispatch or delivery tells the audit trail.
pub struct Finished<'a> {
    pub action: &'a Action,
    /// The payload as received (before `modify` rules); the action's when `None`.
    pub original_payload: Option<Value>,
    /// `ActionOutcome::label()`, or `executed` / `failed` for a worker's provider call.
    pub outcome: &'a str,
    pub error: Option<String>,
    pub verdict: &'a str,
    pub matched_rule: Option<String>,
    pub caller: Option<&'a CallerIdentity>,
    pub source: AuditSource,
    pub dispatched_at: DateTime<Utc>,
    pub started: Instant,
}

impl Finished<'_> {
    /// The record's `outcome` and `error` of a pipeline outcome.
    pub fn outcome_of(outcome: &ActionOutcome) -> (&'static str, Option<String>) {
        let error = match outcome {
            ActionOutcome::Failed(e) => Some(format!("{}: {}", e.code, e.message)),
            _ => None,
        };
        (outcome.label(), error)
    }
}

impl AuditSink {
    /// Starts the writer task (needs a Tokio runtime).
    pub fn start(
        store: Arc<dyn AuditStore>,
        options: AuditOptions,
        registry: &Registry,
    ) -> Arc<AuditSink> {
        let metrics = AuditMetrics::new(registry);
        let (tx, rx) = mpsc::channel(options.queue_capacity.max(1));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(write_loop(store.clone(), metrics.clone(), rx, stopped));
        Arc::new(AuditSink {
            store,
            options,
            metrics,
            tx,
            stop,
            task: Mutex::new(Some(task)),
            last_warn: AtomicI64::new(0),
        })
    }

    /// Builds, redacts and queues the record of a finished dispatch or delivery.
    pub async fn record(&self, f: Finished<'_>) {
        let rec = self.build(f);
        self.enqueue(rec).await;
    }

    /// The redacted record (public for the bench and tests).
    pub fn build(&self, f: Finished<'_>) -> AuditRecord {
        let payload = if self.options.store_payload {
            let mut p = f
                .original_payload
                .unwrap_or_else(|| f.action.payload.clone());
            self.options.redactor.payload(&mut p);
            // A group notification carries the grouped actions' payloads as they were
            // received: the paths apply to each of them too.
            if f.source == AuditSource::Group
                && let Some(events) = p.get_mut("events").and_then(Value::as_array_mut)
            {
                for event in events {
                    self.options.redactor.payload(event);
                }
            }
            Some(p)
        } else {
            None
        };
        let mut metadata = f.action.metadata.clone();
        self.options.redactor.metadata(&mut metadata);
        AuditRecord {
            id: super::record_id(f.dispatched_at).hyphenated().to_string(),
            action_id: f.action.id.clone(),
            namespace: f.action.namespace.clone(),
            tenant: f.action.tenant.clone(),
            provider: f.action.provider.clone(),
            action_type: f.action.action_type.clone(),
            verdict: f.verdict.to_owned(),
            matched_rule: f.matched_rule,
            outcome: f.outcome.to_owned(),
            error: f.error,
            caller: f.caller.map(|c| c.0.clone()),
            source: f.source.as_str().to_owned(),
            dispatched_at: f.dispatched_at,
            duration_ms: u64::try_from(f.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            payload,
            metadata,
        }
    }

    /// Queues an already redacted record, per the full-queue policy.
    pub async fn enqueue(&self, rec: AuditRecord) {
        match self.options.when_full {
            WhenFull::Drop => match self.tx.try_send(rec) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => self.lost(1, "dropped", "queue full"),
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.lost(1, "dropped", "writer stopped")
                }
            },
            WhenFull::Block => {
                if self.tx.send(rec).await.is_err() {
                    self.lost(1, "dropped", "writer stopped");
                }
            }
        }
    }

    fn lost(&self, n: u64, result: &str, why: &str) {
        lost(&self.metrics, &self.last_warn, n, result, why);
    }

    /// Stops taking records and writes what is queued, waiting at most `wait`.
    pub async fn shutdown(&self, wait: Duration) {
        let _ = self.stop.send(true);
        let task = self.task.lock().take();
        if let Some(task) = task {
            match tokio::time::timeout(wait, task).await {
                Ok(_) => tracing::info!("audit queue flushed"),
                Err(_) => tracing::warn!(
                    queued = self.tx.max_capacity() - self.tx.capacity(),
                    "audit queue not flushed in time; the records left are lost"
                ),
            }
        }
    }

    /// Starts the retention sweeper. With a shared store, one replica sweeps at a time
    /// (a state-backend lease); a memory store is this process's own and always swept.
    pub fn spawn_sweeper(
        self: &Arc<Self>,
        state: Arc<dyn crate::state::StateStore>,
        every: Duration,
    ) -> JoinHandle<()> {
        let sink = self.clone();
        let owner = uuid::Uuid::new_v4().simple().to_string();
        tokio::spawn(async move {
            let mut stopped = sink.stop.subscribe();
            let mut tick = tokio::time::interval(every.max(Duration::from_secs(1)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => return,
                }
                if sink.store.shared() {
                    // The lease outlives the sweep interval a little: the next one is
                    // taken by whichever replica gets there first.
                    let lease = every + Duration::from_secs(5);
                    match state.try_lock("audit-sweep", &owner, lease).await {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(e) => {
                            tracing::debug!(error = %e, "audit sweep lease unavailable");
                            continue;
                        }
                    }
                }
                let span = tracing::info_span!("audit.sweep", store = sink.store.kind());
                match sink
                    .store
                    .sweep(Utc::now(), &sink.options.retention)
                    .instrument(span)
                    .await
                {
                    Ok(n) => {
                        sink.metrics.swept.inc_by(n);
                        if n > 0 {
                            tracing::info!(deleted = n, "audit retention sweep");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "audit retention sweep failed"),
                }
            }
        })
    }
}

fn lost(metrics: &AuditMetrics, last_warn: &AtomicI64, n: u64, result: &str, why: &str) {
    metrics.records.with_label_values(&[result]).inc_by(n);
    metrics.dropped.inc_by(n);
    let now = Utc::now().timestamp();
    let last = last_warn.load(Ordering::Relaxed);
    if now - last >= WARN_EVERY.as_secs() as i64
        && last_warn
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(
            lost = n,
            reason = why,
            total = metrics.dropped.get(),
            "audit records lost (see acteon_audit_dropped_total)"
        );
    }
}

async fn write_loop(
    store: Arc<dyn AuditStore>,
    metrics: AuditMetrics,
    mut rx: mpsc::Receiver<AuditRecord>,
    mut stopped: watch::Receiver<bool>,
) {
    let last_warn = Arc::new(AtomicI64::new(0));
    // Up to WRITERS batches in flight: while one waits for its commit, the next is sent.
    // Records carry their own time, so the order batches land in does not matter.
    let mut running = tokio::task::JoinSet::new();
    let mut stopping = false;
    loop {
        while running.len() >= WRITERS {
            let _ = running.join_next().await;
        }
        let mut buf = Vec::with_capacity(BATCH);
        let n = if stopping {
            rx.recv_many(&mut buf, BATCH).await
        } else {
            tokio::select! {
                n = rx.recv_many(&mut buf, BATCH) => n,
                _ = stopped.changed() => {
                    // Shutdown: take no more records, write what is queued, then end.
                    rx.close();
                    stopping = true;
                    continue;
                }
            }
        };
        if n == 0 {
            break;
        }
        if buf.len() < BATCH && !stopping {
            // A short batch: let more records arrive before writing, instead of waking this
            // task (often a parked worker thread) per record under load.
            tokio::time::sleep(LINGER).await;
            while buf.len() < BATCH {
                match rx.try_recv() {
                    Ok(r) => buf.push(r),
                    Err(_) => break,
                }
            }
        }
        metrics.queue_depth.set(rx.len() as i64);
        let (store, metrics, last_warn) = (store.clone(), metrics.clone(), last_warn.clone());
        running.spawn(async move { write(&*store, &metrics, &last_warn, buf).await });
    }
    while running.join_next().await.is_some() {}
    metrics.queue_depth.set(0);
}

async fn write(
    store: &dyn AuditStore,
    metrics: &AuditMetrics,
    last_warn: &AtomicI64,
    mut batch: Vec<AuditRecord>,
) {
    let records = batch.len() as u64;
    let mut backoff = RETRY_BACKOFF;
    for attempt in 1..=ATTEMPTS {
        let started = Instant::now();
        match store.write_owned(&mut batch).await {
            Ok(()) => {
                metrics
                    .batch_seconds
                    .observe(started.elapsed().as_secs_f64());
                metrics
                    .records
                    .with_label_values(&["written"])
                    .inc_by(records);
                return;
            }
            Err(e) if attempt < ATTEMPTS => {
                tracing::debug!(error = %e, attempt, "audit batch write failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            Err(e) => {
                tracing::debug!(error = %e, "audit batch write failed; records lost");
                lost(metrics, last_warn, records, "error", "store unavailable");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditError, AuditPage, AuditQuery};
    use chrono::DateTime;
    use tokio::sync::Semaphore;

    /// A store whose writes wait for a permit, then succeed.
    struct Gated {
        permits: Semaphore,
        written: Mutex<usize>,
    }

    #[async_trait::async_trait]
    impl AuditStore for Gated {
        fn kind(&self) -> &'static str {
            "gated"
        }
        fn shared(&self) -> bool {
            false
        }
        async fn write_batch(&self, records: &[AuditRecord]) -> Result<(), AuditError> {
            self.permits.acquire().await.unwrap().forget();
            *self.written.lock() += records.len();
            Ok(())
        }
        async fn query(&self, _: &AuditQuery) -> Result<AuditPage, AuditError> {
            Ok(AuditPage::default())
        }
        async fn get(&self, _: &str) -> Result<Vec<AuditRecord>, AuditError> {
            Ok(vec![])
        }
        async fn sweep(&self, _: DateTime<Utc>, _: &Retention) -> Result<u64, AuditError> {
            Ok(0)
        }
    }

    fn record() -> AuditRecord {
        crate::audit::test_record()
    }

    fn gated_sink(when_full: WhenFull) -> (Arc<Gated>, Arc<AuditSink>) {
        let store = Arc::new(Gated {
            permits: Semaphore::new(0),
            written: Mutex::new(0),
        });
        let options = AuditOptions {
            queue_capacity: 2,
            when_full,
            store_payload: false,
            redactor: Redactor::default(),
            retention: Retention::parse(30, &[]).unwrap(),
        };
        let sink = AuditSink::start(store.clone(), options, &Registry::new());
        (store, sink)
    }

    #[tokio::test]
    async fn full_queue_drops_and_counts_or_blocks() {
        // At most two batches stuck in the store and two records queued: the rest are
        // dropped, and counted.
        let n = 2 * BATCH + 20;
        let (store, sink) = gated_sink(WhenFull::Drop);
        for _ in 0..n {
            sink.enqueue(record()).await;
            tokio::task::yield_now().await;
        }
        let dropped = sink.metrics.dropped.get();
        assert!(dropped >= (n - 2 * BATCH - 2) as u64, "{dropped}");
        assert_eq!(
            sink.metrics.records.with_label_values(&["dropped"]).get(),
            dropped
        );
        store.permits.add_permits(10 * n);
        sink.shutdown(Duration::from_secs(5)).await;
        assert_eq!(*store.written.lock() as u64 + dropped, n as u64);

        // Block: the dispatch waits for room; nothing is lost.
        let (store, sink) = gated_sink(WhenFull::Block);
        let producer = {
            let sink = sink.clone();
            tokio::spawn(async move {
                for _ in 0..n {
                    sink.enqueue(record()).await;
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!producer.is_finished(), "blocked on the full queue");
        store.permits.add_permits(10 * n);
        tokio::time::timeout(Duration::from_secs(5), producer)
            .await
            .unwrap()
            .unwrap();
        sink.shutdown(Duration::from_secs(5)).await;
        assert_eq!(*store.written.lock(), n);
        assert_eq!(sink.metrics.dropped.get(), 0);
    }
}
