//! The layer every provider call goes through, whatever asked for it (a dispatch, a group
//! flush, a chain step, a state-machine notification, a dead-letter replay): the circuit
//! breaker (shared by all replicas) with its fallback provider, the rate limit (shared),
//! then the provider with its own retries (following the first message of a worker's
//! conversation, see [`threads`]), then statistics and metrics. Providers know none of
//! this.

pub mod breaker;
pub mod rate_limit;
pub mod record;
pub mod stats;
pub mod threads;

use std::time::Instant;

use breaker::{Admit, Breakers, Report, Ticket};
use stats::ProviderStats;

use crate::action::Action;
use crate::config::Runtime;
use crate::outcome::ProviderResponse;
use crate::pipeline::Gateway;
use crate::providers::{ProviderError, ProviderHandle};
use crate::state::unix_ms;

/// Fallbacks followed from one open circuit, at most (validation rejects cycles; this
/// bounds a chain of open circuits).
const MAX_FALLBACKS: usize = 8;

/// What the delivery layer keeps per gateway.
#[derive(Default)]
pub struct Guards {
    pub breakers: Breakers,
    pub stats: ProviderStats,
}

/// How a provider call ended.
#[derive(Debug)]
pub enum Called {
    /// A provider was called: the one asked for, or (`fallback`) a fallback of its open
    /// circuit, named by `provider`.
    Done {
        provider: String,
        fallback: bool,
        result: Result<ProviderResponse, ProviderError>,
    },
    /// The circuit is open and so are those of its fallbacks (listed), or it has none.
    CircuitOpen { fallback_chain: Vec<String> },
    /// No provider of that name for the namespace.
    NotFound { provider: String },
}

impl Called {
    /// The result as a provider error for callers without outcomes of their own (worker
    /// tasks): an open circuit is a retryable failure, an unknown provider a permanent one.
    pub fn into_result(self, asked: &str) -> Result<ProviderResponse, ProviderError> {
        match self {
            Called::Done { result, .. } => result,
            Called::CircuitOpen { fallback_chain } => Err(ProviderError::new(
                "CIRCUIT_OPEN",
                format!(
                    "the circuit of provider `{asked}` is open (fallbacks tried: {fallback_chain:?})"
                ),
                true,
                0,
            )),
            Called::NotFound { provider } => Err(ProviderError::new(
                "PROVIDER_NOT_FOUND",
                format!("provider `{provider}` not found"),
                false,
                0,
            )),
        }
    }
}

impl Gateway {
    /// Delivers `action` to the provider `provider` of `namespace` through the delivery
    /// layer: its breaker (an open circuit sends to its fallback), rate limit, provider.
    #[tracing::instrument(level = "debug", skip_all, fields(provider = ?provider))]
    pub async fn call_provider(
        &self,
        rt: &Runtime,
        namespace: &str,
        provider: &str,
        action: &Action,
    ) -> Called {
        let mut name = provider;
        let mut chain: Vec<String> = Vec::new();
        loop {
            let Some(handle) = rt.providers.get(namespace, name) else {
                return Called::NotFound {
                    provider: name.to_owned(),
                };
            };
            if let Admit::Go(ticket) = self.guards.breakers.admit(self, handle).await {
                let result = self.call_admitted(handle, action, ticket).await;
                return Called::Done {
                    provider: handle.name.clone(),
                    fallback: !chain.is_empty(),
                    result,
                };
            }
            let next = handle
                .circuit
                .as_ref()
                .and_then(|c| c.fallback_provider.as_deref())
                .filter(|f| *f != provider && !chain.iter().any(|c| c == f))
                .filter(|_| chain.len() < MAX_FALLBACKS);
            let result = if next.is_some() {
                "fallback"
            } else {
                "rejected"
            };
            self.metrics
                .circuit_rejections
                .with_label_values(&[handle.name.as_str(), result])
                .inc();
            match next {
                Some(fallback) => {
                    chain.push(fallback.to_owned());
                    name = fallback;
                }
                None => {
                    return Called::CircuitOpen {
                        fallback_chain: chain,
                    };
                }
            }
        }
    }

    /// A call the breaker admitted: rate-limit slot, provider, statistics, breaker report.
    async fn call_admitted(
        &self,
        handle: &ProviderHandle,
        action: &Action,
        ticket: Ticket,
    ) -> Result<ProviderResponse, ProviderError> {
        rate_limit::take_slot(self, handle).await?;
        let started = Instant::now();
        // Through the conversation's first message when the provider's messageMode asks.
        let result = threads::deliver(self, handle, action).await;
        let took = started.elapsed();
        self.measure(handle, &result, took);
        let report = match &result {
            Ok(_) => Report::Success,
            Err(e) if e.retryable => Report::Failed,
            Err(_) => Report::Refused,
        };
        self.guards
            .breakers
            .report(self, handle, ticket, report)
            .await;
        result
    }

    fn measure(
        &self,
        handle: &ProviderHandle,
        result: &Result<ProviderResponse, ProviderError>,
        took: std::time::Duration,
    ) {
        let name = handle.name.as_str();
        let label = if result.is_ok() { "success" } else { "failure" };
        self.metrics
            .provider_seconds
            .with_label_values(&[name, label])
            .observe(took.as_secs_f64());
        let error = result.as_ref().err();
        if let Some(e) = error {
            self.metrics
                .provider_failures
                .with_label_values(&[name, e.code.as_str()])
                .inc();
            tracing::warn!(provider = %handle.id, code = %e.code, error = %e.message, attempts = e.attempts, "delivery failed");
        }
        let text = error.map(|e| format!("{}: {}", e.code, e.message));
        self.guards
            .stats
            .of(&handle.id)
            .record(took, unix_ms(), text.as_deref());
    }
}
