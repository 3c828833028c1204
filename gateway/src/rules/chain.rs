//! `chain`: start a Chain — a durable sequence of provider calls run by the worker, one
//! step per claim, on any replica.
//!
//! The run is recorded in the dispatch's atomic backend call (a timer whose payload is the
//! whole run: the definition it started with, the origin action, the step results), so a
//! rejected dispatch starts nothing and a started chain is never half-recorded. Each step
//! is claimed, delivered, and the next one recorded and scheduled in one owner-checked call
//! (`advance_timer`); see `worker::chain`.

use std::collections::HashMap;
use std::sync::Arc;

use acteon_api::Entry;
use acteon_api::crd::ChainSpec;

use crate::action::Action;
use crate::state::TimerWrite;
use crate::worker::chain_record::run_timer_id;
use crate::worker::task::{ChainRun, Task};

/// Whole-chain timeout when the Chain sets none.
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 300;

/// A compiled `chain` rule: the Chain it starts.
#[derive(Debug)]
pub struct ChainRule {
    pub chain: String,
}

/// A Chain as served, with its id (`namespace/name`, or `name` when shared).
#[derive(Debug)]
pub struct ChainDef {
    pub id: String,
    pub name: String,
    /// The definition's version: the object's generation, if known.
    pub generation: Option<i64>,
    pub spec: ChainSpec,
}

/// The Chains of a snapshot, by scope and name.
#[derive(Debug, Default)]
pub struct Chains {
    by_name: HashMap<(String, String), Arc<ChainDef>>,
}

impl Chains {
    pub fn build(entries: &[Entry<ChainSpec>]) -> Chains {
        let by_name = entries
            .iter()
            .map(|e| {
                let scope = e.namespace.clone().unwrap_or_default();
                let id = match &e.namespace {
                    Some(ns) => format!("{ns}/{}", e.name),
                    None => e.name.clone(),
                };
                let def = ChainDef {
                    id,
                    name: e.name.clone(),
                    generation: e.generation,
                    spec: e.spec.clone(),
                };
                ((scope, e.name.clone()), Arc::new(def))
            })
            .collect();
        Chains { by_name }
    }

    /// The Chain `name` for an action of `namespace`: the namespace's own, else a shared one.
    pub fn resolve(&self, namespace: &str, name: &str) -> Option<&Arc<ChainDef>> {
        self.by_name
            .get(&(namespace.to_owned(), name.to_owned()))
            .or_else(|| self.by_name.get(&(String::new(), name.to_owned())))
    }
}

impl ChainDef {
    /// The timer that starts a run of this chain for `action`: due after the first step's
    /// delay, carrying the whole run.
    pub fn start(&self, action: &Action, chain_id: &str, now_ms: u64) -> TimerWrite {
        let timeout = self.spec.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECONDS);
        let run = ChainRun {
            chain_id: chain_id.to_owned(),
            chain: self.id.clone(),
            generation: self.generation,
            definition: self.spec.clone(),
            origin: action.clone(),
            step: 0,
            attempt: 0,
            results: Vec::new(),
            started_ms: now_ms,
            deadline_ms: now_ms.saturating_add(timeout.saturating_mul(1000)),
            parents: Vec::new(),
            cancelled: false,
            cancel_reason: None,
            cancelled_by: None,
        };
        let delay = self
            .spec
            .steps
            .first()
            .and_then(|s| s.delay_seconds)
            .unwrap_or(0);
        TimerWrite {
            id: run_timer_id(&action.namespace, &action.tenant, chain_id),
            due_unix_ms: now_ms.saturating_add(delay.saturating_mul(1000)),
            payload: Task::AdvanceChain(Box::new(run)).encode(),
        }
    }
}
