//! The worker: runs on every gateway replica and does the work that waits for a time
//! (group notifications, scheduled actions, state timeouts).
//!
//! Each poll claims due timers from the state backend with a lease: a claimed timer goes to
//! no other replica until its lease runs out, so every timer runs once across replicas, and
//! a replica that dies mid-task leaves its claims to expire and be taken by another (the
//! only case where a task can run twice). An idle poll is one backend call, however many
//! timers are pending. On shutdown the worker stops claiming, lets running tasks finish
//! (bounded), and releases the claims it still holds so other replicas take them at once.

pub mod task;

pub mod census;
mod chain;
mod chain_call;
pub mod chain_record;
mod chain_step;
mod group;
mod notify_move;
mod schedule;
mod state_timeout;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use self::task::Task;
use crate::pipeline::{DispatchError, Gateway};
use crate::state::{ClaimedTimer, StateError, unix_ms};

/// How often the worker counts pending timers for the backlog gauge (one more call).
const BACKLOG_EVERY: Duration = Duration::from_secs(15);

/// Settings of the worker.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Pause between polls when the last one found fewer due timers than `batch`.
    pub poll_interval: Duration,
    /// Most tasks running at once (and so most timers claimed per poll).
    pub batch: usize,
    /// How long a claim holds: longer than any task takes (a provider's retries included).
    pub lease: Duration,
    /// Longest wait for running tasks on shutdown before their claims are released.
    pub drain_timeout: Duration,
    /// How often running chains are counted (by one replica at a time).
    pub census_every: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            poll_interval: Duration::from_millis(200),
            batch: 64,
            lease: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(10),
            census_every: census::CENSUS_EVERY,
        }
    }
}

/// How a task ended.
pub(crate) enum Done {
    /// Finished: the timer is completed.
    Complete,
    /// Finished, and the handler already completed or re-armed the timer itself.
    Settled,
    /// Could not run now (backend unavailable, no configuration yet): the claim is left to
    /// expire, so the task is retried after the lease by any replica.
    Retry(String),
}

impl From<DispatchError> for Done {
    fn from(e: DispatchError) -> Done {
        Done::Retry(e.to_string())
    }
}

impl From<StateError> for Done {
    fn from(e: StateError) -> Done {
        Done::Retry(e.to_string())
    }
}

/// A running worker; [`WorkerHandle::stop`] shuts it down.
pub struct WorkerHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    census: JoinHandle<()>,
}

impl WorkerHandle {
    /// Stops claiming, waits for running tasks (bounded), releases the claims still held.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        let _ = self.census.await;
    }
}

struct Worker {
    gateway: Arc<Gateway>,
    options: WorkerOptions,
    /// Claims held by this process: timer id → claim.
    held: Mutex<HashMap<String, String>>,
}

/// Starts the worker beside the HTTP server.
pub fn spawn(gateway: Arc<Gateway>, options: WorkerOptions) -> WorkerHandle {
    let (stop, stopped) = watch::channel(false);
    let census = tokio::spawn(census::run(
        gateway.clone(),
        options.census_every,
        stopped.clone(),
    ));
    let worker = Arc::new(Worker {
        gateway,
        options,
        held: Mutex::new(HashMap::new()),
    });
    let task = tokio::spawn(worker.run(stopped));
    WorkerHandle { stop, task, census }
}

impl Worker {
    async fn run(self: Arc<Self>, mut stopped: watch::Receiver<bool>) {
        let mut running = JoinSet::new();
        let mut counted = Instant::now() - BACKLOG_EVERY;
        loop {
            while running.try_join_next().is_some() {}
            if counted.elapsed() >= BACKLOG_EVERY {
                counted = Instant::now();
                self.count_backlog().await;
            }
            let room = self.options.batch.saturating_sub(running.len());
            let mut full = false;
            if room > 0 {
                let claimed = self.claim(room).await;
                full = claimed.len() == room;
                for timer in claimed {
                    self.held
                        .lock()
                        .insert(timer.id.clone(), timer.claim.clone());
                    let me = self.clone();
                    running.spawn(async move { me.run_one(&timer).await });
                }
            }
            // More may be due right now: poll again at once (tasks run meanwhile).
            if full {
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                _ = stopped.changed() => break,
                _ = tokio::time::sleep(self.options.poll_interval) => {}
            }
        }
        let drained = tokio::time::timeout(self.options.drain_timeout, async {
            while running.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            running.abort_all();
        }
        self.release_held().await;
    }

    async fn claim(&self, max: usize) -> Vec<ClaimedTimer> {
        let gw = &self.gateway;
        let call = gw
            .state
            .claim_due_timers(unix_ms(), max, self.options.lease);
        match tokio::time::timeout(gw.options.state_timeout, call).await {
            Ok(Ok(claimed)) => {
                gw.metrics.worker_claims.inc_by(claimed.len() as u64);
                claimed
            }
            Ok(Err(e)) => {
                self.claim_failed(&e.to_string());
                Vec::new()
            }
            Err(_) => {
                self.claim_failed("timed out");
                Vec::new()
            }
        }
    }

    async fn count_backlog(&self) {
        let gw = &self.gateway;
        if let Ok(n) = gw.state_call(gw.state.pending_timers()).await {
            gw.metrics.timers_pending.set(n as i64);
        }
    }

    fn claim_failed(&self, error: &str) {
        self.gateway
            .metrics
            .state_errors
            .with_label_values(&["claim_timers"])
            .inc();
        tracing::debug!(error, "worker could not claim timers");
    }

    #[tracing::instrument(level = "debug", skip_all, fields(timer = ?timer.id))]
    async fn run_one(&self, timer: &ClaimedTimer) {
        let started = Instant::now();
        let (label, done) = match Task::decode(&timer.payload) {
            Ok(task) => (task.label(), self.execute(task, timer).await),
            Err(e) => {
                // Nothing can ever run it: completed, so it does not come back every lease.
                tracing::error!(timer = ?timer.id, error = %e, "undecodable timer task dropped");
                ("undecodable", Done::Complete)
            }
        };
        let result = match done {
            Done::Complete => {
                self.complete(timer).await;
                "done"
            }
            Done::Settled => "done",
            Done::Retry(why) => {
                tracing::warn!(timer = ?timer.id, task = label, error = %why, "task will be retried after its lease");
                "retry"
            }
        };
        self.held.lock().remove(&timer.id);
        let m = &self.gateway.metrics;
        m.worker_tasks.with_label_values(&[label, result]).inc();
        m.worker_task_seconds
            .with_label_values(&[label])
            .observe(started.elapsed().as_secs_f64());
    }

    /// Runs `task` in a span continuing the trace stored with it (tasks that only expire a
    /// record have none).
    async fn execute(&self, task: Task, timer: &ClaimedTimer) -> Done {
        if matches!(task, Task::ChainEnded(_) | Task::DeadLetter(_)) {
            return self.execute_task(task, timer).await;
        }
        let kind = crate::trace::Kind::Worker(task.label());
        let opened = crate::trace::resumed(task.trace(), kind, self.gateway.options.trace);
        let span = opened.span.clone();
        let done = opened.run(self.execute_task(task, timer)).await;
        if matches!(done, Done::Retry(_)) {
            crate::trace::record_failure(&span);
        }
        done
    }

    async fn execute_task(&self, task: Task, timer: &ClaimedTimer) -> Done {
        match task {
            Task::FireSchedule(t) => schedule::fire(&self.gateway, t).await,
            Task::FlushGroup(t) => group::flush(&self.gateway, t, timer).await,
            Task::StateTimeout(t) => state_timeout::fire(&self.gateway, t, &timer.id).await,
            Task::NotifyMove(t) => notify_move::send(&self.gateway, t).await,
            Task::AdvanceChain(run) => {
                chain::advance(&self.gateway, run, timer, self.options.lease).await
            }
            // Its retention ended: completing the timer removes the record.
            Task::ChainEnded(_) | Task::DeadLetter(_) => Done::Complete,
        }
    }

    async fn complete(&self, timer: &ClaimedTimer) {
        let gw = &self.gateway;
        let call = gw.state.complete_timer(&timer.id, &timer.claim);
        match tokio::time::timeout(gw.options.state_timeout, call).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                gw.metrics.worker_claims_lost.inc();
                tracing::warn!(timer = ?timer.id, "claim lost before completion: another replica may run the task again");
            }
            _ => {
                gw.metrics
                    .state_errors
                    .with_label_values(&["complete_timer"])
                    .inc();
            }
        }
    }

    async fn release_held(&self) {
        let claims: Vec<(String, String)> = self.held.lock().drain().collect();
        if claims.is_empty() {
            return;
        }
        let gw = &self.gateway;
        let call = gw.state.release_timers(&claims);
        match tokio::time::timeout(gw.options.state_timeout, call).await {
            Ok(Ok(n)) => tracing::info!(released = n, "worker released its claims"),
            _ => tracing::warn!(
                held = claims.len(),
                "could not release claims; they expire with their lease"
            ),
        }
    }
}

/// Records how late a timer ran (fire time − due time).
pub(crate) fn observe_lateness(gateway: &Gateway, task: &'static str, due_ms: u64) {
    let late = unix_ms().saturating_sub(due_ms);
    gateway
        .metrics
        .timer_lateness_seconds
        .with_label_values(&[task])
        .observe(late as f64 / 1000.0);
}
