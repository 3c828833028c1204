//! Authenticated snapshots: whoever can write the state backend must not be able to
//! configure the gateways.
//!
//! The operator publishes every snapshot inside an envelope that carries an HMAC-SHA256
//! made with a key derived from the seal key; gateways open the envelope with
//! [`SnapshotAuth::open`] and refuse (keeping the snapshot they serve) anything that does not
//! authenticate. Envelope, one header line then the exact snapshot bytes:
//!
//! ```text
//! acteon-snapshot v1 <key id> <64 hex chars of MAC>\n<snapshot JSON>
//! ```
//!
//! - The MAC covers a domain tag, the channel's digest of the snapshot and the snapshot
//!   bytes, so neither the body nor the digest that gateways report can be changed.
//! - The MAC key is `HMAC-SHA256(seal key, "acteon-snapshot-mac-key-v1")`: the seal key itself
//!   is only ever used for AES-GCM-SIV, so the two uses cannot interact.
//! - The key id is the seal key's fingerprint ([`SealKey::fingerprint`], safe to log). It is
//!   there for rotation: a gateway holding another key says which key signed the snapshot
//!   and which one it has, instead of "tampered".
//! - HMAC is deterministic, so an unchanged snapshot gives the same envelope and the
//!   channel's "unchanged digest, nothing published" rule keeps working.
//!
//! What it does not stop: the backend stores versions, and the version number is assigned
//! by the backend at publish time, so it is not covered. Someone with write access can
//! republish an *older authenticated* snapshot as a new version (a rollback to a
//! configuration the operator once published); they cannot make a new one.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::seal::SealKey;

/// First bytes of an authenticated snapshot.
const MAGIC: &str = "acteon-snapshot";
/// Envelope format version.
const VERSION: &str = "v1";
/// Domain separation of the MAC input.
const MAC_DOMAIN: &[u8] = b"acteon-snapshot-mac-v1\0";
/// Derivation label of the MAC key.
const MAC_KEY_LABEL: &[u8] = b"acteon-snapshot-mac-key-v1";
/// Longest accepted header line (magic, version, an 8-char key id, 64 hex chars, spaces).
const MAX_HEADER: usize = 128;

type HmacSha256 = Hmac<Sha256>;

/// Why a snapshot was refused. Safe to log and to report: key ids only, never key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "snapshot is not authenticated (no MAC): refused; it was not published by an operator \
         with a seal key (or someone wrote the backend directly)"
    )]
    Unsigned,
    #[error("snapshot envelope is malformed: {0}")]
    Malformed(&'static str),
    #[error(
        "snapshot was signed with key {found}, but this gateway's seal key is {expected}: \
         the operator and the gateways must share one seal key"
    )]
    WrongKey { expected: String, found: String },
    #[error("snapshot does not authenticate (MAC mismatch): tampered with; refused")]
    Tampered,
    #[error(
        "no seal key: following the operator needs the seal key to authenticate snapshots \
         (--seal-key-file or ACTEON_SEAL_KEY, the operator's key), or \
         --allow-unsigned-snapshots to accept unauthenticated ones (then anyone who can write \
         the state backend can configure this gateway)"
    )]
    NoKey,
}

/// The MAC key of `key` (see the module documentation).
fn mac_key(key: &SealKey) -> HmacSha256 {
    let mut derive = <HmacSha256 as KeyInit>::new_from_slice(key.bytes())
        .expect("HMAC takes keys of any length");
    derive.update(MAC_KEY_LABEL);
    let derived = derive.finalize().into_bytes();
    <HmacSha256 as KeyInit>::new_from_slice(&derived).expect("HMAC takes keys of any length")
}

fn mac(key: &SealKey, digest: &str, snapshot: &[u8]) -> HmacSha256 {
    let mut mac = mac_key(key);
    mac.update(MAC_DOMAIN);
    mac.update(digest.as_bytes());
    mac.update(b"\0");
    mac.update(snapshot);
    mac
}

/// The envelope the operator publishes for `snapshot` (whose channel digest is `digest`).
pub fn sign(key: &SealKey, digest: &str, snapshot: &[u8]) -> Vec<u8> {
    let tag = mac(key, digest, snapshot).finalize().into_bytes();
    let header = format!(
        "{MAGIC} {VERSION} {} {}\n",
        key.fingerprint(),
        hex::encode(tag)
    );
    let mut out = Vec::with_capacity(header.len() + snapshot.len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(snapshot);
    out
}

/// Whether `body` is an envelope (rather than a bare, unauthenticated snapshot).
pub fn is_signed(body: &[u8]) -> bool {
    body.starts_with(MAGIC.as_bytes())
}

/// A parsed envelope header.
struct Envelope<'a> {
    key_id: &'a str,
    tag: Vec<u8>,
    snapshot: &'a [u8],
}

fn parse(body: &[u8]) -> Result<Envelope<'_>, AuthError> {
    let end = body
        .iter()
        .take(MAX_HEADER)
        .position(|&b| b == b'\n')
        .ok_or(AuthError::Malformed("no header line"))?;
    let header =
        std::str::from_utf8(&body[..end]).map_err(|_| AuthError::Malformed("header not UTF-8"))?;
    let mut fields = header.split(' ');
    let (Some(MAGIC), Some(version), Some(key_id), Some(tag), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(AuthError::Malformed(
            "expected `acteon-snapshot v1 <key id> <mac>`",
        ));
    };
    if version != VERSION {
        return Err(AuthError::Malformed("unknown envelope version"));
    }
    let tag = hex::decode(tag).map_err(|_| AuthError::Malformed("MAC is not hexadecimal"))?;
    Ok(Envelope {
        key_id,
        tag,
        snapshot: &body[end + 1..],
    })
}

/// How a gateway treats the snapshots it fetches.
#[derive(Clone, Debug)]
pub struct SnapshotAuth {
    key: Option<SealKey>,
    allow_unsigned: bool,
}

impl SnapshotAuth {
    /// The policy of a following gateway: with a key, only snapshots signed with it are
    /// accepted unless `allow_unsigned`; without a key, following is refused
    /// ([`AuthError::NoKey`]) unless `allow_unsigned` says so explicitly.
    pub fn new(key: Option<SealKey>, allow_unsigned: bool) -> Result<SnapshotAuth, AuthError> {
        if key.is_none() && !allow_unsigned {
            return Err(AuthError::NoKey);
        }
        Ok(SnapshotAuth {
            key,
            allow_unsigned,
        })
    }

    /// Whether snapshots without a MAC are accepted.
    pub fn allows_unsigned(&self) -> bool {
        self.allow_unsigned
    }

    /// The snapshot bytes of a fetched `body` whose channel digest is `digest`, if it
    /// authenticates under this policy.
    ///
    /// An envelope is always checked when there is a key (a wrong MAC is refused even with
    /// `allow_unsigned`); a bare snapshot is accepted only with `allow_unsigned`; an
    /// envelope without a key to check it (only possible with `allow_unsigned`) is taken as
    /// unauthenticated.
    pub fn open<'a>(&self, digest: &str, body: &'a [u8]) -> Result<&'a [u8], AuthError> {
        if !is_signed(body) {
            return if self.allow_unsigned {
                Ok(body)
            } else {
                Err(AuthError::Unsigned)
            };
        }
        let envelope = parse(body)?;
        let Some(key) = &self.key else {
            return Ok(envelope.snapshot);
        };
        // This key, or a previous one during a rotation.
        let Some(signer) = key.accepting(envelope.key_id) else {
            return Err(AuthError::WrongKey {
                expected: key.fingerprint(),
                found: printable(envelope.key_id),
            });
        };
        mac(&signer, digest, envelope.snapshot)
            .verify_slice(&envelope.tag)
            .map_err(|_| AuthError::Tampered)?;
        Ok(envelope.snapshot)
    }
}

/// A key id from the backend, made safe to log (it is attacker-controlled).
fn printable(id: &str) -> String {
    id.chars()
        .take(16)
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '?' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SNAPSHOT: &[u8] = br#"{"version":0,"digest":"d1","rules":[]}"#;

    fn strict(key: &SealKey) -> SnapshotAuth {
        SnapshotAuth::new(Some(key.clone()), false).unwrap()
    }

    #[test]
    fn a_gateway_rotating_keys_accepts_snapshots_signed_with_the_previous_key() {
        let old = SealKey::generate();
        let new = SealKey::generate();
        let body = sign(&old, "d1", b"{}");
        let plain = SnapshotAuth::new(Some(new.clone()), false).unwrap();
        assert!(matches!(
            plain.open("d1", &body),
            Err(AuthError::WrongKey { .. })
        ));
        let rotating =
            SnapshotAuth::new(Some(new.clone().with_previous(vec![old])), false).unwrap();
        assert_eq!(rotating.open("d1", &body).unwrap(), b"{}");
        assert_eq!(
            rotating.open("d1", &sign(&new, "d1", b"[]")).unwrap(),
            b"[]"
        );
        assert!(
            rotating.open("d2", &body).is_err(),
            "the MAC still covers the digest"
        );
    }

    #[test]
    fn signed_snapshots_open_to_the_exact_bytes() {
        let key = SealKey::generate();
        let body = sign(&key, "d1", SNAPSHOT);
        assert!(is_signed(&body));
        assert_eq!(strict(&key).open("d1", &body), Ok(SNAPSHOT));
        // Deterministic: an unchanged snapshot is an unchanged publication.
        assert_eq!(body, sign(&key, "d1", SNAPSHOT));
    }

    #[test]
    fn known_key_gives_known_envelope() {
        // Pins the format and the key derivation: a change here makes every gateway refuse
        // what an older operator publishes. Checked against Python's hmac module.
        let key = SealKey::from_text(&"01".repeat(32)).unwrap();
        let body = sign(&key, "d", b"{}");
        assert_eq!(
            String::from_utf8(body).unwrap(),
            "acteon-snapshot v1 72cd6e84 0396e02c35e8a64d8418fc06804ea81ffec14793dbcee0e3a09795a939f93a3e\n{}"
        );
    }

    #[test]
    fn bare_snapshots_need_an_explicit_choice() {
        let key = SealKey::generate();
        assert_eq!(strict(&key).open("d1", SNAPSHOT), Err(AuthError::Unsigned));
        let lax = SnapshotAuth::new(Some(key.clone()), true).unwrap();
        assert_eq!(lax.open("d1", SNAPSHOT), Ok(SNAPSHOT));
        assert_eq!(
            SnapshotAuth::new(None, false).unwrap_err(),
            AuthError::NoKey
        );
        let keyless = SnapshotAuth::new(None, true).unwrap();
        assert_eq!(keyless.open("d1", SNAPSHOT), Ok(SNAPSHOT));
        assert_eq!(
            keyless.open("d1", &sign(&key, "d1", SNAPSHOT)),
            Ok(SNAPSHOT)
        );
    }

    #[test]
    fn tampering_is_refused_even_when_unsigned_is_allowed() {
        let key = SealKey::generate();
        let body = sign(&key, "d1", SNAPSHOT);
        for auth in [
            strict(&key),
            SnapshotAuth::new(Some(key.clone()), true).unwrap(),
        ] {
            // Every byte of the snapshot part flipped.
            let header_len = body.iter().position(|&b| b == b'\n').unwrap() + 1;
            for i in header_len..body.len() {
                let mut forged = body.clone();
                forged[i] ^= 0x01;
                assert_eq!(
                    auth.open("d1", &forged),
                    Err(AuthError::Tampered),
                    "byte {i}"
                );
            }
            // Another digest (what gateways report) does not authenticate either.
            assert_eq!(auth.open("d2", &body), Err(AuthError::Tampered));
        }
    }

    #[test]
    fn a_foreign_mac_under_this_key_id_is_tampered() {
        let key = SealKey::generate();
        let other = SealKey::generate();
        let forged = sign(&other, "d1", SNAPSHOT);
        let text = String::from_utf8(forged).unwrap();
        let relabelled = text.replacen(&other.fingerprint(), &key.fingerprint(), 1);
        assert_eq!(
            strict(&key).open("d1", relabelled.as_bytes()),
            Err(AuthError::Tampered)
        );
    }

    #[test]
    fn another_key_is_named_not_called_tampering() {
        let (a, b) = (SealKey::generate(), SealKey::generate());
        let err = strict(&b)
            .open("d1", &sign(&a, "d1", SNAPSHOT))
            .unwrap_err();
        assert_eq!(
            err,
            AuthError::WrongKey {
                expected: b.fingerprint(),
                found: a.fingerprint()
            }
        );
        // An attacker-chosen key id is shown only as safe characters.
        let body = b"acteon-snapshot v1 \x1b[31mevil\n\x00 00\n{}";
        let shown = strict(&b).open("d", body).unwrap_err().to_string();
        assert!(!shown.contains('\x1b'), "{shown:?}");
    }

    #[test]
    fn malformed_envelopes_are_refused_without_panicking() {
        let key = SealKey::generate();
        let long = format!("acteon-snapshot v1 {}", "a".repeat(500));
        for bad in [
            b"acteon-snapshot".as_slice(),
            b"acteon-snapshot v1\n{}",
            b"acteon-snapshot v2 72cd6e84 00\n{}",
            b"acteon-snapshot v1 72cd6e84 zz\n{}",
            b"acteon-snapshot v1 a b c\n{}",
            b"acteon-snapshot \xff\xfe\n{}",
            long.as_bytes(),
        ] {
            let err = strict(&key).open("d", bad).unwrap_err();
            assert!(
                matches!(err, AuthError::Malformed(_) | AuthError::WrongKey { .. }),
                "{bad:?}: {err:?}"
            );
        }
        // A short MAC under the right key id is a mismatch, not a panic.
        let short = format!("acteon-snapshot v1 {} 00\n{{}}", key.fingerprint());
        assert_eq!(
            strict(&key).open("d", short.as_bytes()),
            Err(AuthError::Tampered)
        );
    }
}
