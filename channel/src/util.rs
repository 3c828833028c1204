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

/// Removes the password of `url` (raw and percent-decoded) from `message`.
///
/// Driver errors may quote the connection string; the URL often comes from a Kubernetes
/// Secret, and errors end up in logs and in custom resource status.
pub(crate) struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    pub(crate) fn new(url: &str) -> Redactor {
        let mut secrets = Vec::new();
        if let Some(raw) = url_password(url) {
            let decoded = percent_decode(&raw);
            if decoded != raw && !decoded.is_empty() {
                secrets.push(decoded);
            }
            secrets.push(raw);
        }
        Redactor { secrets }
    }

    pub(crate) fn clean(&self, message: impl Into<String>) -> String {
        let mut message = message.into();
        for secret in &self.secrets {
            message = message.replace(secret.as_str(), "***");
        }
        message
    }

    /// An [`ChannelError::Unavailable`] naming the backend and operation.
    pub(crate) fn unavailable(
        &self,
        backend: &str,
        op: &str,
        error: impl std::fmt::Display,
    ) -> ChannelError {
        ChannelError::Unavailable(self.clean(format!("{backend} {op}: {error}")))
    }
}

/// The password of a `scheme://user:password@host/…` URL, if any.
fn url_password(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let userinfo = authority.rsplit_once('@')?.0;
    let password = userinfo.split_once(':')?.1;
    (!password.is_empty()).then(|| password.to_owned())
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| {
            std::str::from_utf8(h)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        });
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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
    fn passwords_are_redacted() {
        let r = Redactor::new("redis://user:p%40ss@host:6379/0");
        assert_eq!(
            r.clean("auth p%40ss and p@ss failed"),
            "auth *** and *** failed"
        );
        let r = Redactor::new("postgres://me:s3cret@db/app?sslmode=require");
        assert_eq!(r.clean("password s3cret wrong"), "password *** wrong");
        for url in [
            "redis://host:6379",
            "postgres://me@db/app",
            "redis://:@h",
            "nonsense",
        ] {
            assert!(Redactor::new(url).secrets.is_empty(), "{url}");
        }
        let r = Redactor::new("redis://:only@h");
        assert_eq!(r.clean("only"), "***");
    }

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
