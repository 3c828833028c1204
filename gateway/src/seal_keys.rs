//! The seal key(s) of a following gateway, reloaded when their files change.
//!
//! In Kubernetes the key Secret is mounted as files, and the kubelet rewrites them when the
//! Secret changes: re-reading them on every config poll means a rotated key reaches running
//! gateways without a restart (the chart needs no checksum annotation: the operator, not the
//! chart, owns the Secret). A key given in the environment is fixed for the process's life.
//!
//! When the keys change, the publication that failed to authenticate under the old ones is
//! worth trying again (the follower asks [`SealKeys::reload`] and retries it).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use acteon_channel::auth::SnapshotAuth;
use acteon_channel::seal::SealKey;
use parking_lot::RwLock;

/// Where the keys come from.
#[derive(Clone, Debug)]
pub enum KeySource {
    /// Given once (environment or flags): never reloaded.
    Fixed,
    /// Files re-read on every poll: the current key and, optionally, a file of previous keys
    /// (absent file = none: the Secret's `previous` entry is optional).
    Files {
        key: PathBuf,
        previous: Option<PathBuf>,
    },
}

/// The keys in force and the snapshot policy they make.
#[derive(Clone, Debug)]
pub struct Keys {
    /// Opens the credentials sealed into snapshots.
    pub key: Option<SealKey>,
    /// Which snapshots are authentic.
    pub auth: SnapshotAuth,
}

/// The current keys, shared by the follower's checks and reloaded from their source.
#[derive(Debug)]
pub struct SealKeys {
    source: KeySource,
    allow_unsigned: bool,
    current: RwLock<Arc<Keys>>,
}

impl SealKeys {
    /// Keys fixed for the process's life (or none, with `allow_unsigned`).
    pub fn fixed(key: Option<SealKey>, allow_unsigned: bool) -> anyhow::Result<SealKeys> {
        Self::with_source(KeySource::Fixed, key, allow_unsigned)
    }

    /// Keys read from files now and re-read by [`SealKeys::reload`].
    pub fn from_files(
        key: PathBuf,
        previous: Option<PathBuf>,
        allow_unsigned: bool,
    ) -> anyhow::Result<SealKeys> {
        let loaded = read_files(&key, previous.as_deref())?;
        Self::with_source(
            KeySource::Files { key, previous },
            Some(loaded),
            allow_unsigned,
        )
    }

    fn with_source(
        source: KeySource,
        key: Option<SealKey>,
        allow_unsigned: bool,
    ) -> anyhow::Result<SealKeys> {
        let auth = SnapshotAuth::new(key.clone(), allow_unsigned)?;
        Ok(SealKeys {
            source,
            allow_unsigned,
            current: RwLock::new(Arc::new(Keys { key, auth })),
        })
    }

    /// The keys in force.
    pub fn current(&self) -> Arc<Keys> {
        self.current.read().clone()
    }

    /// Re-reads the key files; `true` when the keys changed. A file that cannot be read or
    /// parsed (the kubelet swaps them atomically, so this is a real problem) keeps the
    /// current keys and is logged.
    pub fn reload(&self) -> bool {
        let KeySource::Files { key, previous } = &self.source else {
            return false;
        };
        let loaded = match read_files(key, previous.as_deref()) {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::warn!(error = %e, "seal key files unreadable; keeping the current key");
                return false;
            }
        };
        if self.current().key.as_ref() == Some(&loaded) {
            return false;
        }
        let auth = match SnapshotAuth::new(Some(loaded.clone()), self.allow_unsigned) {
            Ok(auth) => auth,
            Err(e) => {
                tracing::warn!(error = %e, "seal key refused; keeping the current key");
                return false;
            }
        };
        tracing::info!(
            fingerprint = %loaded.fingerprint(),
            previous = ?loaded.previous_fingerprints(),
            "seal key changed on disk; reloaded"
        );
        *self.current.write() = Arc::new(Keys {
            key: Some(loaded),
            auth,
        });
        true
    }
}

/// The key of `key_file`, accepting also the keys of `previous_file` when it exists.
fn read_files(key_file: &Path, previous_file: Option<&Path>) -> anyhow::Result<SealKey> {
    let key = acteon_channel::seal::load_key(Some(key_file), None)
        .map_err(|e| anyhow::anyhow!("seal key: {e}"))?
        .ok_or_else(|| anyhow::anyhow!("seal key: {} is empty", key_file.display()))?;
    let previous_text = match previous_file {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => anyhow::bail!("previous seal keys: {}: {e}", path.display()),
        },
        None => String::new(),
    };
    let previous = SealKey::list_from_text(&previous_text)
        .map_err(|e| anyhow::anyhow!("previous seal keys: {e}"))?;
    Ok(key.with_previous(previous))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system's temporary one.
    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("acteon-seal-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_rewritten_key_file_is_picked_up_and_an_unchanged_one_is_not() {
        let dir = temp_dir();
        let (old, new) = (SealKey::generate(), SealKey::generate());
        let key_file = write(dir.as_path(), "key", &old.to_text());
        let previous_file = dir.as_path().join("previous");
        let keys =
            SealKeys::from_files(key_file.clone(), Some(previous_file.clone()), false).unwrap();
        assert_eq!(
            keys.current().key.as_ref().unwrap().fingerprint(),
            old.fingerprint()
        );
        assert!(!keys.reload(), "nothing changed");
        write(dir.as_path(), "key", &new.to_text());
        write(dir.as_path(), "previous", &format!("{}\n", old.to_text()));
        assert!(keys.reload());
        let current = keys.current();
        let key = current.key.as_ref().unwrap();
        assert_eq!(key.fingerprint(), new.fingerprint());
        assert_eq!(key.previous_fingerprints(), vec![old.fingerprint()]);
        let signed = acteon_channel::auth::sign(&old, "d", b"{}");
        assert!(
            current.auth.open("d", &signed).is_ok(),
            "old signatures still open"
        );
        assert!(!keys.reload());
    }

    #[test]
    fn a_broken_key_file_keeps_the_current_key() {
        let dir = temp_dir();
        let key = SealKey::generate();
        let key_file = write(dir.as_path(), "key", &key.to_text());
        let keys = SealKeys::from_files(key_file, None, false).unwrap();
        write(dir.as_path(), "key", "not a key");
        assert!(!keys.reload());
        assert_eq!(
            keys.current().key.as_ref().unwrap().fingerprint(),
            key.fingerprint()
        );
    }

    #[test]
    fn fixed_keys_never_reload() {
        let keys = SealKeys::fixed(Some(SealKey::generate()), false).unwrap();
        assert!(!keys.reload());
        assert!(
            SealKeys::fixed(None, false).is_err(),
            "following needs a key"
        );
    }
}
