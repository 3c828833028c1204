//! Delivery through the delivery layer and the outcome it gives.

use super::{Delivery, Gateway};
use crate::action::Action;
use crate::config::Runtime;
use crate::dead_letter::{self, DeadLetter, FROM_DISPATCH};
use crate::delivery::Called;
use crate::outcome::ActionOutcome;
use crate::rules::Evaluation;

impl Gateway {
    pub(super) async fn deliver(
        &self,
        rt: &Runtime,
        action: &Action,
        eval: &Evaluation,
        delivery: &Delivery<'_>,
    ) -> ActionOutcome {
        let called = self
            .call_provider(rt, &action.namespace, &delivery.provider, action)
            .await;
        let (provider, fallback, result) = match called {
            Called::Done {
                provider,
                fallback,
                result,
            } => (provider, fallback, result),
            Called::CircuitOpen { fallback_chain } => {
                self.release_dedup(eval).await;
                return ActionOutcome::CircuitOpen {
                    provider: delivery.provider.clone(),
                    fallback_chain,
                };
            }
            Called::NotFound { provider } => {
                self.release_dedup(eval).await;
                return ActionOutcome::failed(
                    "PROVIDER_NOT_FOUND",
                    format!("provider `{provider}` not found"),
                    false,
                    0,
                );
            }
        };
        match result {
            Ok(response) => {
                self.confirm_dedup(eval, delivery.lease);
                if delivery.rerouted || fallback {
                    ActionOutcome::Rerouted {
                        original_provider: action.provider.clone(),
                        new_provider: provider,
                        response,
                    }
                } else {
                    ActionOutcome::Executed(response)
                }
            }
            Err(e) => {
                self.release_dedup(eval).await;
                if e.retryable && !self.options.dead_letter_retention.is_zero() {
                    let mut delivered = action.clone();
                    // The provider asked for: a replay goes through its breaker again.
                    delivered.provider = delivery.provider.clone();
                    let retention = self.options.dead_letter_retention;
                    let entry = DeadLetter::new(&delivered, &e, FROM_DISPATCH, retention);
                    // Counted and logged inside; the outcome says the delivery failed.
                    let _ = dead_letter::store(self, &entry).await;
                }
                ActionOutcome::failed(&e.code, e.message, e.retryable, e.attempts)
            }
        }
    }
}
