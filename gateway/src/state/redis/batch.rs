//! Group commit of lone dedup gates.
//!
//! Most gated dispatches carry exactly one dedup gate, a native `SET NX PX` (or `EXISTS`).
//! Sent one by one, each costs the gateway a write to the socket and the server a wake-up,
//! a read and a write — more than the command itself. Under load the calls of concurrent
//! dispatches are therefore queued and written together as one pipeline: one write, one
//! read on the server, each command still run alone and in the order queued (a pipeline is
//! not a transaction; it changes nothing a command sees), and each caller gets its own
//! answer.
//!
//! A task owns the queue: it takes the first waiting call and every call queued behind it
//! (at most [`MAX_CALLS`]; after letting runnable dispatches go first, see
//! [`YIELDS_BEFORE_SEND`]), sends them, and only then looks at the queue again. At low load
//! a call goes out at once, alone; under load the calls that arrive while a pipeline is on
//! the wire form the next one, so pipelines grow with the load and no call waits for a
//! timer. A call whose caller gave up before its pipeline was formed is not sent.

use std::sync::Arc;

use redis::Value;
use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot};

use super::unavailable;
use crate::state::{GateBatchCounts, GateBatchTally, StateError};

/// Calls per pipeline at most.
const MAX_CALLS: usize = 256;
/// Times the task lets the dispatches already runnable on its worker go first before it
/// sends: the gate calls they are about to make join this pipeline instead of the next.
/// Costs no timer and no syscall; on 2 cores one yield took pipelines from ~9 calls to
/// ~12 and cut the server's reads (each write wakes the server, which costs more than a
/// small command). A second yield made pipelines larger still but cost more in waiting
/// than it saved: 71% vs 72% of the memory backend's throughput (`gated.sh`, stop 26).
const YIELDS_BEFORE_SEND: usize = 1;
/// Calls waiting for a pipeline at most; a caller beyond that waits to be queued.
const QUEUE: usize = 4096;

/// What one queued call asks of its dedup mark.
pub(super) enum Probe {
    /// `SET key token NX PX ttl_ms`: mark it unless marked; the answer is "already marked".
    Mark { token: String, ttl_ms: u64 },
    /// `EXISTS key`: the answer is "marked".
    Exists,
}

struct Call {
    key: String,
    probe: Probe,
    reply: oneshot::Sender<Result<bool, StateError>>,
}

/// The handle of the queue (see the module documentation).
pub(super) struct DedupBatcher {
    queue: mpsc::Sender<Call>,
    counters: Arc<GateBatchTally>,
}

impl DedupBatcher {
    /// Starts the queue's task on `conn`; the task ends when the handle is dropped.
    pub(super) fn start(conn: ConnectionManager) -> DedupBatcher {
        let counters = Arc::new(GateBatchTally::default());
        let (queue, calls) = mpsc::channel(QUEUE);
        tokio::spawn(send_pipelines(conn, calls, counters.clone()));
        DedupBatcher { queue, counters }
    }

    pub(super) fn counts(&self) -> GateBatchCounts {
        self.counters.counts()
    }

    /// Runs `probe` on the mark `key` in the next pipeline: true when the mark was there
    /// (a duplicate). The caller bounds the wait (the pipeline's gate-call timeout).
    pub(super) async fn run(&self, key: String, probe: Probe) -> Result<bool, StateError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Call { key, probe, reply })
            .await
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

fn closed() -> StateError {
    StateError::Unavailable("redis dedup gate: the pipeline queue stopped".to_owned())
}

/// The queue's task: one pipeline of everything waiting at a time.
async fn send_pipelines(
    mut conn: ConnectionManager,
    mut calls: mpsc::Receiver<Call>,
    counters: Arc<GateBatchTally>,
) {
    let mut batch = Vec::with_capacity(MAX_CALLS);
    while calls.recv_many(&mut batch, MAX_CALLS).await > 0 {
        for _ in 0..YIELDS_BEFORE_SEND {
            tokio::task::yield_now().await;
            while batch.len() < MAX_CALLS {
                let Ok(call) = calls.try_recv() else { break };
                batch.push(call);
            }
        }
        batch.retain(|call| !call.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        counters.sent_together(batch.len());
        let mut pipe = redis::pipe();
        for call in &batch {
            match &call.probe {
                Probe::Mark { token, ttl_ms } => pipe
                    .cmd("SET")
                    .arg(&call.key)
                    .arg(token)
                    .arg("NX")
                    .arg("PX")
                    .arg(*ttl_ms),
                Probe::Exists => pipe.cmd("EXISTS").arg(&call.key),
            };
        }
        match pipe.query_async::<Vec<Value>>(&mut conn).await {
            Ok(answers) if answers.len() == batch.len() => {
                for (call, answer) in batch.drain(..).zip(answers) {
                    let _ = call.reply.send(Ok(marked(&call.probe, &answer)));
                }
            }
            Ok(answers) => {
                let e = StateError::Unavailable(format!(
                    "redis dedup gate: {} answers to {} commands",
                    answers.len(),
                    batch.len()
                ));
                answer_all(&mut batch, &e);
            }
            Err(e) => answer_all(&mut batch, &unavailable(e)),
        }
    }
}

/// Whether the mark was there, from the command's answer.
fn marked(probe: &Probe, answer: &Value) -> bool {
    match probe {
        // `SET … NX` answers nil when the key exists.
        Probe::Mark { .. } => matches!(answer, Value::Nil),
        Probe::Exists => matches!(answer, Value::Int(n) if *n > 0),
    }
}

fn answer_all(batch: &mut Vec<Call>, e: &StateError) {
    for call in batch.drain(..) {
        let _ = call.reply.send(Err(e.clone()));
    }
}
