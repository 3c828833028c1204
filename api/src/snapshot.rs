//! The compiled configuration snapshot: what a gateway serves.
//!
//! The operator (from the API server) and the standalone gateway (from files) both build
//! it through [`crate::compile`]; the operator publishes it through the state backend.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::crd::{ChainSpec, ProviderSpec, QuotaSpec, RuleSpec, SecretKeyRef, StateMachineSpec};

/// A validated, self-contained configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Monotonic version assigned by the publisher (1 for a standalone gateway).
    pub version: u64,
    /// Stable hash of the content; equal content gives an equal digest.
    pub digest: String,
    pub rules: Vec<Entry<RuleSpec>>,
    pub providers: Vec<Entry<ProviderSpec>>,
    pub chains: Vec<Entry<ChainSpec>>,
    pub state_machines: Vec<Entry<StateMachineSpec>>,
    pub quotas: Vec<Entry<QuotaSpec>>,
    /// Credentials that Providers reference, sealed by the operator (never plaintext):
    /// [`secret_id`] → sealed value (see `acteon_channel::seal`). Empty for a standalone
    /// gateway, which reads no Secrets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
    /// Fingerprint of the seal key the operator sealed and signed this snapshot with, so
    /// that a new key makes a new digest (and a new publication) even when no credential is
    /// sealed: gateways holding only the new key must not be left with a body signed by the
    /// old one. `None` for a standalone gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal_key_id: Option<String>,
}

/// Key of a resolved `secretKeyRef` in [`Snapshot::secrets`]: the Provider's scope (its
/// namespace, or `_shared` for shared Providers), the Secret's name and the key.
pub fn secret_id(scope: Option<&str>, secret: &SecretKeyRef) -> String {
    format!(
        "{}/{}/{}",
        scope.unwrap_or(SHARED_SCOPE),
        secret.name,
        secret.key
    )
}

/// Scope name of shared Providers in [`secret_id`] (not a valid namespace, so no clash).
pub const SHARED_SCOPE: &str = "_shared";

/// One accepted object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry<S> {
    /// The namespace whose actions it applies to; `None` = shared by all namespaces.
    pub namespace: Option<String>,
    pub name: String,
    /// `metadata.generation` when it came from the API server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// Where it came from: a file path, or `namespace/name` in the cluster.
    pub source: String,
    pub spec: S,
}

impl Snapshot {
    /// Recomputes `digest` from the content (version excluded).
    pub fn seal(&mut self) {
        let mut copy = self.clone();
        copy.version = 0;
        copy.digest.clear();
        let bytes = serde_json::to_vec(&copy).unwrap_or_default();
        self.digest = format!("{:016x}", fnv1a64(&bytes));
    }
}

/// FNV-1a: a stable, dependency-free content hash (not for security).
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}
