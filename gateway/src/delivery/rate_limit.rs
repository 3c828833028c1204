//! Per-provider rate limits across all replicas: each delivery reserves a start slot from
//! the state backend (one call) and waits for it; slots are 1/maxPerSecond apart, plus a
//! 5% margin: a delivery that starts late (scheduling, a slow connection) moves toward the
//! next one, and the margin absorbs up to 50 ms of that before the peer could see more
//! than the limit in one second. A delivery whose slot is further away than its bound fails retryably
//! (`RATE_LIMITED`): never dropped silently, and a dispatch's dead letter keeps it.

use std::time::Duration;

use acteon_api::crd::ProviderRateLimit;

use crate::pipeline::Gateway;
use crate::providers::{ProviderError, ProviderHandle};

/// Default bound of the wait for a slot.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(30);

/// Time between two slots of `limit`.
pub fn interval(limit: &ProviderRateLimit) -> Duration {
    let per_second = f64::from(limit.max_per_second.max(1));
    Duration::from_secs_f64(1.05 / per_second)
}

/// The longest a delivery waits for its slot.
pub fn max_wait(limit: &ProviderRateLimit) -> Duration {
    limit
        .max_wait_seconds
        .map_or(DEFAULT_MAX_WAIT, |s| Duration::from_secs(u64::from(s)))
}

/// Waits for this delivery's slot, if `handle` is rate limited.
pub async fn take_slot(gw: &Gateway, handle: &ProviderHandle) -> Result<(), ProviderError> {
    let Some(limit) = &handle.rate_limit else {
        return Ok(());
    };
    let key = format!("rate/{}", handle.id);
    let bound = max_wait(limit);
    let reserved = gw
        .state_call(gw.state.reserve_slot(&key, interval(limit), bound))
        .await;
    match reserved {
        Ok(Some(wait)) => {
            gw.metrics
                .rate_limit_wait_seconds
                .with_label_values(&[handle.name.as_str()])
                .observe(wait.as_secs_f64());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            Ok(())
        }
        Ok(None) => {
            gw.metrics
                .rate_limited
                .with_label_values(&[handle.name.as_str()])
                .inc();
            Err(ProviderError::new(
                "RATE_LIMITED",
                format!(
                    "provider `{}` allows {}/s and has no free slot within {}s",
                    handle.name,
                    limit.max_per_second,
                    bound.as_secs()
                ),
                true,
                0,
            ))
        }
        // The limit cannot be kept without the backend: fail retryably rather than risk
        // flooding the peer.
        Err(e) => Err(ProviderError::new(
            "STATE_UNAVAILABLE",
            format!("rate limit of `{}`: {e}", handle.name),
            true,
            0,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_a_little_more_than_the_limit_apart() {
        let limit = |n, wait| ProviderRateLimit {
            max_per_second: n,
            max_wait_seconds: wait,
        };
        assert_eq!(interval(&limit(5, None)), Duration::from_millis(210));
        assert_eq!(interval(&limit(1, None)), Duration::from_millis(1050));
        assert_eq!(max_wait(&limit(5, None)), DEFAULT_MAX_WAIT);
        assert_eq!(max_wait(&limit(5, Some(3))), Duration::from_secs(3));
    }
}
