//! Delivery on the provider and the outcome it gives.

use std::time::Instant;

use super::{Delivery, Gateway};
use crate::action::Action;
use crate::config::Runtime;
use crate::dead_letter::{self, DeadLetter, FROM_DISPATCH};
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
        let Some(handle) = rt.providers.get(&action.namespace, &delivery.provider) else {
            self.release_dedup(eval).await;
            return ActionOutcome::failed(
                "PROVIDER_NOT_FOUND",
                format!("provider `{}` not found", delivery.provider),
                false,
                0,
            );
        };
        let started = Instant::now();
        let result = handle.provider.execute(action).await;
        let elapsed = started.elapsed().as_secs_f64();
        match result {
            Ok(response) => {
                self.metrics
                    .provider_seconds
                    .with_label_values(&[handle.name.as_str(), "success"])
                    .observe(elapsed);
                self.confirm_dedup(eval, delivery.lease);
                if delivery.rerouted {
                    ActionOutcome::Rerouted {
                        original_provider: action.provider.clone(),
                        new_provider: delivery.provider.clone(),
                        response,
                    }
                } else {
                    ActionOutcome::Executed(response)
                }
            }
            Err(e) => {
                self.metrics
                    .provider_seconds
                    .with_label_values(&[handle.name.as_str(), "failure"])
                    .observe(elapsed);
                self.metrics
                    .provider_failures
                    .with_label_values(&[handle.name.as_str(), e.code.as_str()])
                    .inc();
                tracing::warn!(provider = %handle.name, code = %e.code, error = %e.message, attempts = e.attempts, "delivery failed");
                self.release_dedup(eval).await;
                if e.retryable && !self.options.dead_letter_retention.is_zero() {
                    let mut delivered = action.clone();
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
