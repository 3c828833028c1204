//! Sealing credentials for the snapshot: deterministic authenticated encryption.
//!
//! The operator resolves the Secrets that Providers reference and puts them into the
//! published snapshot *sealed*, so the state backend (and anyone reading it) never holds
//! them in clear; gateways open them with the same key.
//!
//! **Why deterministic.** The snapshot's digest decides whether the operator publishes a new
//! version. Sealing the same value under the same id and key must give the same text, or
//! every recompile (and every operator restart) would publish a "new" snapshot and make
//! every gateway reload. So the nonce is derived from the id rather than drawn at random.
//! AES-256-GCM-SIV (RFC 8452) is designed for exactly this: under a repeated nonce it leaks
//! only whether two plaintexts are equal, never the plaintexts or the key. The id is also
//! the associated data, so a sealed value moved to another id does not open.
//!
//! Format: `v1:<key fingerprint>:<standard base64 of ciphertext + tag>`. The fingerprint
//! (first 8 hex chars of SHA-256 of the key) lets [`SealKey::open`] tell "sealed with another
//! key" from "tampered", and is safe to log.

use std::path::{Path, PathBuf};

use aes_gcm_siv::aead::{Aead, Generate, KeyInit, Payload};
use aes_gcm_siv::{Aes256GcmSiv, Key, Nonce};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use sha2::{Digest, Sha256};

/// Version tag of the sealed format.
const FORMAT: &str = "v1";
/// Domain separation of the nonce derivation.
const NONCE_DOMAIN: &[u8] = b"acteon-seal";
/// Accepted key forms, for error messages.
const KEY_FORMS: &str = "64 hexadecimal characters or standard base64 of 32 bytes";

/// Why a key could not be loaded or a value could not be opened. Never contains key
/// material or plaintext.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("invalid seal key: expected {KEY_FORMS} (got {0} characters)")]
    InvalidKey(usize),
    #[error("cannot read seal key file {}: {reason}", path.display())]
    KeyFile { path: PathBuf, reason: String },
    #[error("seal key given both as a file and in the environment; give one")]
    TwoKeys,
    #[error("malformed sealed value for {id:?}: {reason}")]
    Malformed { id: String, reason: String },
    #[error(
        "value was sealed with key {found}, but this key is {expected}: the operator and the gateways must share one seal key"
    )]
    WrongKey { expected: String, found: String },
    #[error(
        "sealed value for {id:?} does not authenticate (tampered with, or sealed for another id)"
    )]
    Tampered { id: String },
}

/// A 256-bit sealing key. `Debug` shows only its fingerprint.
///
/// During a key rotation a gateway may also hold *previous* keys ([`SealKey::with_previous`]):
/// values and snapshots sealed or signed under one of them still open, while everything new
/// is sealed and signed with this key only.
#[derive(Clone, PartialEq, Eq)]
pub struct SealKey {
    bytes: [u8; 32],
    previous: Vec<[u8; 32]>,
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealKey")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl SealKey {
    /// Parses a key: 64 hex characters, or standard base64 (padded or not) of 32 bytes;
    /// surrounding whitespace (a trailing newline in a Secret) is ignored.
    pub fn from_text(text: &str) -> Result<SealKey, SealError> {
        let text = text.trim();
        let decoded = if text.len() == 64 {
            hex::decode(text).ok()
        } else {
            STANDARD
                .decode(text)
                .or_else(|_| STANDARD_NO_PAD.decode(text))
                .ok()
        };
        let bytes = decoded
            .and_then(|d| <[u8; 32]>::try_from(d).ok())
            .ok_or(SealError::InvalidKey(text.chars().count()))?;
        Ok(SealKey {
            bytes,
            previous: Vec::new(),
        })
    }

    /// Parses several keys separated by whitespace or commas (the previous keys of a
    /// rotation); an empty text gives none.
    pub fn list_from_text(text: &str) -> Result<Vec<SealKey>, SealError> {
        text.split(|c: char| c.is_whitespace() || c == ',')
            .filter(|k| !k.is_empty())
            .map(SealKey::from_text)
            .collect()
    }

    /// This key, also accepting what `previous` keys sealed or signed (a rotation's old key).
    pub fn with_previous(mut self, previous: Vec<SealKey>) -> SealKey {
        self.previous = previous.into_iter().map(|k| k.bytes).collect();
        self
    }

    /// The key of fingerprint `id` among this one and its previous keys.
    pub fn accepting(&self, id: &str) -> Option<SealKey> {
        std::iter::once(self.bytes)
            .chain(self.previous.iter().copied())
            .map(|bytes| SealKey {
                bytes,
                previous: Vec::new(),
            })
            .find(|k| k.fingerprint() == id)
    }

    /// Fingerprints of the previous keys accepted.
    pub fn previous_fingerprints(&self) -> Vec<String> {
        self.previous
            .iter()
            .map(|bytes| hex::encode(&Sha256::digest(bytes)[..4]))
            .collect()
    }

    /// A new random key from the operating system's generator.
    pub fn generate() -> SealKey {
        let key = Key::<Aes256GcmSiv>::generate();
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(key.as_slice());
        SealKey {
            bytes,
            previous: Vec::new(),
        }
    }

    /// The key as 64 lowercase hex characters (what [`SealKey::from_text`] reads).
    pub fn to_text(&self) -> String {
        hex::encode(self.bytes)
    }

    /// The raw key, for deriving the snapshot MAC key ([`crate::auth`]).
    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// First 8 hex characters of SHA-256 of the key: identifies it in logs and errors
    /// without revealing it.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.bytes);
        hex::encode(&digest[..4])
    }

    /// Seals `plaintext` for `id`. The same key, id and plaintext always give the same text.
    pub fn seal(&self, id: &str, plaintext: &[u8]) -> String {
        let payload = Payload {
            msg: plaintext,
            aad: id.as_bytes(),
        };
        // Encryption into a Vec fails only for plaintexts over 2^36 bytes: impossible here.
        let ciphertext = self
            .cipher()
            .encrypt(&nonce_for(id), payload)
            .expect("AES-GCM-SIV fails only for plaintexts over 2^36 bytes");
        format!(
            "{FORMAT}:{}:{}",
            self.fingerprint(),
            STANDARD.encode(ciphertext)
        )
    }

    /// Opens a value sealed for `id` by [`SealKey::seal`].
    pub fn open(&self, id: &str, sealed: &str) -> Result<Vec<u8>, SealError> {
        let malformed = |reason: &str| SealError::Malformed {
            id: id.to_owned(),
            reason: reason.to_owned(),
        };
        let mut parts = sealed.splitn(3, ':');
        let (Some(format), Some(found), Some(data)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("expected v1:<fingerprint>:<base64>"));
        };
        if format != FORMAT {
            return Err(malformed("unknown format version"));
        }
        let Some(key) = self.accepting(found) else {
            return Err(SealError::WrongKey {
                expected: self.fingerprint(),
                found: found.chars().take(16).collect(),
            });
        };
        let ciphertext = STANDARD
            .decode(data)
            .map_err(|_| malformed("invalid base64"))?;
        let payload = Payload {
            msg: &ciphertext,
            aad: id.as_bytes(),
        };
        key.cipher()
            .decrypt(&nonce_for(id), payload)
            .map_err(|_| SealError::Tampered { id: id.to_owned() })
    }

    fn cipher(&self) -> Aes256GcmSiv {
        Aes256GcmSiv::new(&Key::<Aes256GcmSiv>::from(self.bytes))
    }
}

/// The nonce of `id`: the first 12 bytes of SHA-256("acteon-seal" || id).
fn nonce_for(id: &str) -> Nonce {
    let digest = Sha256::new()
        .chain_update(NONCE_DOMAIN)
        .chain_update(id.as_bytes())
        .finalize();
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&digest[..12]);
    Nonce::from(nonce)
}

/// Loads the seal key from a file (e.g. a mounted Secret) or from an environment value.
///
/// `None` when neither is given (an empty or blank environment value counts as not given,
/// as an optional Secret reference produces one). Giving both is an error rather than a
/// silent precedence, so a stale key in one place cannot shadow the intended one.
pub fn load_key(
    file: Option<&Path>,
    env_value: Option<&str>,
) -> Result<Option<SealKey>, SealError> {
    let env_value = env_value.filter(|v| !v.trim().is_empty());
    match (file, env_value) {
        (Some(_), Some(_)) => Err(SealError::TwoKeys),
        (None, None) => Ok(None),
        (None, Some(text)) => SealKey::from_text(text).map(Some),
        (Some(path), None) => {
            let text = std::fs::read_to_string(path).map_err(|e| SealError::KeyFile {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
            SealKey::from_text(&text).map(Some)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotation_opens_what_the_previous_key_sealed() {
        let old = SealKey::generate();
        let new = SealKey::generate();
        let sealed = old.seal("ns/creds/token", b"s3cr3t");
        assert!(matches!(
            new.open("ns/creds/token", &sealed),
            Err(SealError::WrongKey { .. })
        ));
        let rotating = new.clone().with_previous(vec![old.clone()]);
        assert_eq!(rotating.open("ns/creds/token", &sealed).unwrap(), b"s3cr3t");
        // New values are sealed with the new key only.
        assert!(rotating.seal("a", b"x").contains(&new.fingerprint()));
        assert_eq!(rotating.fingerprint(), new.fingerprint());
        assert_eq!(rotating.previous_fingerprints(), [old.fingerprint()]);
        let text = format!("{},{}\n", old.to_text(), new.to_text());
        let listed = SealKey::list_from_text(&text).unwrap();
        assert_eq!(listed, [old, new]);
        assert!(SealKey::list_from_text("  ").unwrap().is_empty());
    }

    #[test]
    fn roundtrip_and_determinism() {
        let key = SealKey::generate();
        let one = key.seal("ns/creds/token", b"s3cr3t");
        let two = key.seal("ns/creds/token", b"s3cr3t");
        assert_eq!(one, two);
        assert!(one.starts_with(&format!("v1:{}:", key.fingerprint())));
        assert!(!one.contains("s3cr3t"));
        assert_eq!(key.open("ns/creds/token", &one).unwrap(), b"s3cr3t");
        // Empty plaintext works too.
        let empty = key.seal("x", b"");
        assert_eq!(key.open("x", &empty).unwrap(), b"");
    }

    #[test]
    fn known_key_gives_known_text() {
        // Pins the format and the nonce derivation (checked against an independent
        // AES-GCM-SIV implementation): a change here would republish every snapshot and
        // strand values sealed by an older operator.
        let key = SealKey::from_text(&"01".repeat(32)).unwrap();
        assert_eq!(key.fingerprint(), "72cd6e84");
        assert_eq!(
            key.seal("a/b/c", b"hello"),
            "v1:72cd6e84:ZNl/6HdXbayQ01PkuaP+DVejwrex"
        );
    }

    #[test]
    fn different_ids_and_plaintexts_differ() {
        let key = SealKey::generate();
        let a = key.seal("ns/creds/a", b"same");
        let b = key.seal("ns/creds/b", b"same");
        assert_ne!(a, b);
        assert_ne!(key.seal("ns/creds/a", b"other"), a);
        // Moving a sealed value to another id does not open it.
        assert_eq!(
            key.open("ns/creds/b", &a),
            Err(SealError::Tampered {
                id: "ns/creds/b".into()
            })
        );
    }

    #[test]
    fn tampering_fails() {
        let key = SealKey::generate();
        let sealed = key.seal("id", b"payload-bytes");
        let (head, data) = sealed.rsplit_once(':').unwrap();
        let mut raw = STANDARD.decode(data).unwrap();
        for i in 0..raw.len() {
            raw[i] ^= 0x01;
            let forged = format!("{head}:{}", STANDARD.encode(&raw));
            assert!(matches!(
                key.open("id", &forged),
                Err(SealError::Tampered { .. })
            ));
            raw[i] ^= 0x01;
        }
        let truncated = format!("{head}:{}", STANDARD.encode(&raw[..raw.len() - 1]));
        assert!(matches!(
            key.open("id", &truncated),
            Err(SealError::Tampered { .. })
        ));
        for bad in ["", "v1", "v1:abc", "v2:x:y", &format!("{head}:not base64!")] {
            assert!(
                matches!(
                    key.open("id", bad),
                    Err(SealError::Malformed { .. }) | Err(SealError::WrongKey { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn wrong_key_names_both_fingerprints() {
        let (a, b) = (SealKey::generate(), SealKey::generate());
        let sealed = a.seal("id", b"x");
        let err = b.open("id", &sealed).unwrap_err();
        assert_eq!(
            err,
            SealError::WrongKey {
                expected: b.fingerprint(),
                found: a.fingerprint()
            }
        );
        let msg = err.to_string();
        assert!(
            msg.contains(&a.fingerprint()) && msg.contains(&b.fingerprint()),
            "{msg}"
        );
    }

    #[test]
    fn key_text_forms() {
        let key = SealKey::generate();
        let hex_text = key.to_text();
        assert_eq!(hex_text.len(), 64);
        assert_eq!(SealKey::from_text(&hex_text).unwrap(), key);
        assert_eq!(SealKey::from_text(&hex_text.to_uppercase()).unwrap(), key);
        assert_eq!(SealKey::from_text(&format!("  {hex_text}\n")).unwrap(), key);
        let b64 = STANDARD.encode(key.bytes);
        assert_eq!(SealKey::from_text(&format!("{b64}\n")).unwrap(), key);
        assert_eq!(SealKey::from_text(b64.trim_end_matches('=')).unwrap(), key);
    }

    #[test]
    fn bad_key_text_is_rejected_without_echo() {
        let secretish = "g".repeat(64);
        let short_b64 = STANDARD.encode([7u8; 16]);
        for bad in [
            "",
            "abc",
            &secretish,
            &"ab".repeat(31),
            &short_b64,
            "hunter2-hunter2",
        ] {
            let err = SealKey::from_text(bad).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains("64 hexadecimal characters or standard base64 of 32 bytes"));
            if !bad.is_empty() {
                assert!(!msg.contains(bad), "{msg}");
            }
        }
    }

    #[test]
    fn debug_does_not_print_the_key() {
        let key = SealKey::generate();
        let shown = format!("{key:?}");
        assert!(!shown.contains(&key.to_text()));
        assert!(shown.contains(&key.fingerprint()));
    }

    #[test]
    fn load_key_sources() {
        let key = SealKey::generate();
        assert_eq!(load_key(None, None), Ok(None));
        assert_eq!(load_key(None, Some("  ")), Ok(None));
        assert_eq!(load_key(None, Some(&key.to_text())), Ok(Some(key.clone())));
        let dir = std::env::temp_dir().join(format!("acteon-seal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("key");
        std::fs::write(&file, format!("{}\n", key.to_text())).unwrap();
        assert_eq!(load_key(Some(&file), None), Ok(Some(key.clone())));
        assert_eq!(load_key(Some(&file), Some("x")), Err(SealError::TwoKeys));
        let missing = dir.join("missing");
        assert!(matches!(
            load_key(Some(&missing), None),
            Err(SealError::KeyFile { .. })
        ));
        std::fs::write(&file, "nonsense").unwrap();
        assert_eq!(load_key(Some(&file), None), Err(SealError::InvalidKey(8)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
