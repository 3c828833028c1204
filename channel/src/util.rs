//! Pieces shared by the Redis and Postgres channels.

use std::time::Duration;

use tokio::sync::watch;

use crate::ChannelError;

/// Longest pause between two reconnection attempts of a subscription.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// First pause after a lost subscription.
const MIN_BACKOFF: Duration = Duration::from_millis(100);

/// Announces `version` unless a newer or equal one was already announced.
///
/// Only ever moving forward matters because the version read right after a (re)subscription
/// races with notifications queued on the new subscription: an older notification delivered
/// after the head read must not make the watch go backwards.
pub(crate) fn announce(tx: &watch::Sender<u64>, version: u64) {
    tx.send_if_modified(|current| {
        let newer = version > *current;
        if newer {
            *current = version;
        }
        newer
    });
}

/// Exponential backoff between reconnection attempts, reset after a success.
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Backoff {
        Backoff { next: MIN_BACKOFF }
    }

    pub(crate) fn reset(&mut self) {
        self.next = MIN_BACKOFF;
    }

    /// Sleeps for the current delay, then doubles it (up to [`MAX_BACKOFF`]).
    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(MAX_BACKOFF);
    }
}

/// Runs `fut` within `timeout`, mapping its error with `map` and a timeout to
/// [`ChannelError::Timeout`].
pub(crate) async fn bounded<T, E>(
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<T, E>>,
    map: impl FnOnce(E) -> ChannelError,
) -> Result<T, ChannelError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(result) => result.map_err(map),
        Err(_) => Err(ChannelError::Timeout(timeout)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announce_only_moves_forward() {
        let (tx, mut rx) = watch::channel(0);
        announce(&tx, 3);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 3);
        announce(&tx, 2);
        announce(&tx, 3);
        assert!(!rx.has_changed().unwrap());
        announce(&tx, 4);
        assert_eq!(*rx.borrow_and_update(), 4);
    }
}
