//! Group commit of gate calls.
//!
//! Most of a gate call's cost on the server is the transaction around it (parse, bind,
//! snapshot, commit), not the gates. Under load, the gate calls of concurrent dispatches
//! are therefore queued and sent together: one call of `acteon_apply_gates_batch`
//! (`migrations/postgres/0005_gate_batches.sql`) runs them in one transaction, each exactly
//! as it would run alone and in the order they were queued, and answers each call.
//!
//! A task owns the queue. It waits for one of [`GateBatches::in_flight`] slots, takes the
//! first waiting call and every call queued behind it (at most [`GateBatches::max_calls`]),
//! and runs them on a task of their own. At low load a call goes out at once, alone; under
//! load the calls that arrive while every slot is busy form the next batch, so batches grow
//! with the load and no call waits for a timer.
//!
//! Failure: if the batch's statement fails with an error of the server (e.g. a deadlock
//! with a confirmation batch), each call is retried alone, so one call can never fail its
//! neighbours. A call whose caller gave up before its batch started is not run (its answer
//! would be lost and its gates applied for nothing).

use std::sync::Arc;
use std::time::Instant;

use sqlx::postgres::PgConnection;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{Db, GateArrays, gate_result, run_gates_once};
use crate::state::{
    Gate, GateBatchCounts, GateBatchTally, GateMode, GateResult, GateStop, StateError,
};

/// Tuning of the group commit.
#[derive(Clone, Copy, Debug)]
pub struct GateBatches {
    /// Batches running at once (each on one connection); 0 turns group commit off, every
    /// call then runs in a transaction of its own.
    pub in_flight: usize,
    /// Calls per batch at most.
    pub max_calls: usize,
}

/// One batch at a time per gateway: the calls that arrive meanwhile form the next one. On
/// 2 cores (gateway, load and Postgres together) `gated.sh` measured 13.4k dispatches/s
/// with one batch in flight, 11.3–11.9k with two, 9.7k with four, 8.1k with eight: more
/// batches in flight means smaller batches and more transactions for the same work.
impl Default for GateBatches {
    fn default() -> Self {
        GateBatches {
            in_flight: 1,
            max_calls: 128,
        }
    }
}

/// Calls waiting for a batch at most; a caller beyond that waits to be queued.
const QUEUE: usize = 4096;

/// One queued gate call and where its answer goes.
struct Call {
    gates: Vec<Gate>,
    mode: GateMode,
    queued: Instant,
    reply: oneshot::Sender<Result<GateResult, StateError>>,
}

/// The handle of the queue (see the module documentation).
pub(super) struct GateBatcher {
    db: Arc<Db>,
    queue: Option<mpsc::Sender<Call>>,
    counters: Arc<GateBatchTally>,
}

impl GateBatcher {
    /// Starts the queue's task (none when group commit is off). The task ends when the
    /// handle is dropped and the queue is empty.
    pub(super) fn start(db: Arc<Db>, tuning: GateBatches) -> GateBatcher {
        let counters = Arc::new(GateBatchTally::default());
        let queue = (tuning.in_flight > 0).then(|| {
            let (queue, calls) = mpsc::channel(QUEUE);
            tokio::spawn(form_batches(db.clone(), counters.clone(), calls, tuning));
            queue
        });
        GateBatcher {
            db,
            queue,
            counters,
        }
    }

    pub(super) fn counts(&self) -> GateBatchCounts {
        self.counters.counts()
    }

    /// Applies `gates` in the next batch (alone when group commit is off). The caller
    /// waits at most one operation deadline for its batch to start and one for the batch.
    pub(super) async fn apply(
        &self,
        gates: &[Gate],
        mode: GateMode,
    ) -> Result<GateResult, StateError> {
        let Some(queue) = &self.queue else {
            return run_gates_once(&self.db, &GateArrays::new(gates, mode), mode).await;
        };
        let (reply, answer) = oneshot::channel();
        let call = Call {
            gates: gates.to_vec(),
            mode,
            queued: Instant::now(),
            reply,
        };
        let wait = self.db.op_timeout * 2;
        let queued_and_answered = async {
            queue.send(call).await.map_err(|_| closed())?;
            answer.await.map_err(|_| closed())?
        };
        tokio::time::timeout(wait, queued_and_answered)
            .await
            .unwrap_or(Err(StateError::Timeout(wait)))
    }
}

fn closed() -> StateError {
    StateError::Unavailable("postgres apply_gates: the batch queue stopped".to_owned())
}

/// The queue's task: one batch per free slot, of everything waiting (see the module docs).
async fn form_batches(
    db: Arc<Db>,
    counters: Arc<GateBatchTally>,
    mut calls: mpsc::Receiver<Call>,
    tuning: GateBatches,
) {
    let slots = Arc::new(Semaphore::new(tuning.in_flight));
    let max_calls = tuning.max_calls.max(1);
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = calls.recv().await else {
            return;
        };
        let mut batch = Vec::with_capacity(max_calls.min(calls.len() + 1));
        batch.push(first);
        while batch.len() < max_calls {
            match calls.try_recv() {
                Ok(call) => batch.push(call),
                Err(_) => break,
            }
        }
        let (db, counters) = (db.clone(), counters.clone());
        tokio::spawn(async move {
            run_batch(&db, &counters, batch).await;
            drop(slot);
        });
    }
}

/// Runs the live calls of `batch` and answers each.
async fn run_batch(db: &Db, counters: &GateBatchTally, batch: Vec<Call>) {
    let mut calls = Vec::with_capacity(batch.len());
    for call in batch {
        if call.reply.is_closed() {
            continue;
        }
        if call.queued.elapsed() >= db.op_timeout {
            let _ = call.reply.send(Err(StateError::Timeout(db.op_timeout)));
            continue;
        }
        calls.push(call);
    }
    let together = match calls.len() {
        0 => return,
        1 => Ok(None),
        _ => run_together(db, &calls).await,
    };
    match together {
        Ok(Some(answers)) => {
            counters.sent_together(calls.len());
            for (call, answer) in calls.into_iter().zip(answers) {
                let _ = call.reply.send(answer);
            }
        }
        // Alone: a batch of one, or the server refused the batch.
        Ok(None) => {
            counters.retried_alone(calls.len());
            for call in calls {
                let arrays = GateArrays::new(&call.gates, call.mode);
                let _ = call
                    .reply
                    .send(run_gates_once(db, &arrays, call.mode).await);
            }
        }
        Err(e) => {
            for call in calls {
                let _ = call.reply.send(Err(e.clone()));
            }
        }
    }
}

fn bad_reply(op: &str) -> StateError {
    StateError::Unavailable(format!("postgres {op}: one answer per call expected"))
}

type BatchRow = (i32, i32, Option<i16>, Option<i64>, Option<i64>);

/// One statement for all `calls`. `Ok(None)`: the server refused it (the connection is
/// fine); the caller retries each call alone.
async fn run_together(
    db: &Db,
    calls: &[Call],
) -> Result<Option<Vec<Result<GateResult, StateError>>>, StateError> {
    let mut counts = Vec::with_capacity(calls.len());
    let mut all = GateArrays::default();
    for call in calls {
        let arrays = GateArrays::new(&call.gates, call.mode);
        counts.push(arrays.kinds.len() as i32);
        all.extend(arrays);
    }
    tracing::debug!(
        calls = calls.len(),
        gates = all.kinds.len(),
        "postgres gate batch"
    );
    let lone_dedups = calls
        .iter()
        .all(|call| matches!(call.gates[..], [Gate::Dedup { .. }]));
    if lone_dedups {
        run_dedups(db, &all).await
    } else {
        run_mixed(db, &counts, &all).await
    }
}

/// A batch of calls of every kind: `acteon_apply_gates_batch`.
async fn run_mixed(
    db: &Db,
    counts: &[i32],
    all: &GateArrays<'_>,
) -> Result<Option<Vec<Result<GateResult, StateError>>>, StateError> {
    const OP: &str = "apply_gates_batch";
    let rows: Option<Vec<BatchRow>> = db
        .run(OP, async |conn: &mut PgConnection| {
            let rows = sqlx::query_as(
                "SELECT call, stop_index, stop_kind, stop_a, stop_b \
                 FROM acteon_apply_gates_batch($1, $2, $3, $4, $5, $6)",
            )
            .bind(counts)
            .bind(&all.kinds[..])
            .bind(&all.keys[..])
            .bind(&all.spans[..])
            .bind(&all.limits[..])
            .bind(&all.tokens[..])
            .fetch_all(conn)
            .await;
            refused_as_none(rows, counts.len())
        })
        .await?;
    let Some(mut rows) = rows else {
        return Ok(None);
    };
    if rows.len() != counts.len() {
        return Err(bad_reply(OP));
    }
    rows.sort_unstable_by_key(|row| row.0);
    Ok(Some(
        rows.into_iter()
            .map(|(_, index, kind, a, b)| gate_result(OP, index, kind, a, b))
            .collect(),
    ))
}

/// A batch whose every call is one dedup gate (the most common gated dispatch):
/// `acteon_apply_dedup_batch`, set operations instead of a function call per gate.
async fn run_dedups(
    db: &Db,
    all: &GateArrays<'_>,
) -> Result<Option<Vec<Result<GateResult, StateError>>>, StateError> {
    const OP: &str = "apply_dedup_batch";
    let rows: Option<Vec<(i32, bool)>> = db
        .run(OP, async |conn: &mut PgConnection| {
            let rows =
                sqlx::query_as("SELECT call, passed FROM acteon_apply_dedup_batch($1, $2, $3)")
                    .bind(&all.keys[..])
                    .bind(&all.spans[..])
                    .bind(&all.tokens[..])
                    .fetch_all(conn)
                    .await;
            refused_as_none(rows, all.keys.len())
        })
        .await?;
    let Some(mut rows) = rows else {
        return Ok(None);
    };
    if rows.len() != all.keys.len() {
        return Err(bad_reply(OP));
    }
    rows.sort_unstable_by_key(|row| row.0);
    Ok(Some(
        rows.into_iter()
            .map(|(_, passed)| {
                Ok(if passed {
                    GateResult::Passed
                } else {
                    GateResult::Stopped {
                        index: 0,
                        reason: GateStop::Duplicate,
                    }
                })
            })
            .collect(),
    ))
}

/// An error of the server (the statement was refused, the connection is fine) becomes
/// `None`: the calls are then retried alone, so that one bad call fails alone.
fn refused_as_none<T>(
    rows: Result<Vec<T>, sqlx::Error>,
    calls: usize,
) -> Result<Option<Vec<T>>, sqlx::Error> {
    match rows {
        Ok(rows) => Ok(Some(rows)),
        Err(sqlx::Error::Database(e)) => {
            tracing::debug!(error = %e, calls, "postgres gate batch refused; retrying its calls alone");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}
