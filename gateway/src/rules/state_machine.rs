//! `stateMachine`: move the action's event (identified by its fingerprint) through a
//! `StateMachine` (terminal). The requested state is the action's `status`; no status means
//! the event stays where it is.

use acteon_api::field::FieldPath;
use chrono_tz::Tz;
use sha2::{Digest, Sha256};

use super::EvalInput;
use super::field::resolve;
use super::key::state_key;

/// A compiled `stateMachine` rule.
#[derive(Debug)]
pub struct StateMachineRule {
    pub machine: String,
    pub fingerprint_fields: Vec<FieldPath>,
}

/// The event an action moves and where to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventTarget {
    pub fingerprint: String,
    pub to: Option<String>,
}

impl StateMachineRule {
    /// The action's `fingerprint`, else a stable hash of the listed fields (absent fields
    /// hash as absent, distinct from any value), else the action id.
    pub fn target(&self, input: &EvalInput<'_>, tz: Option<Tz>) -> EventTarget {
        let a = input.action;
        let fingerprint = match (&a.fingerprint, self.fingerprint_fields.is_empty()) {
            (Some(f), _) => f.clone(),
            (None, true) => a.id.clone(),
            (None, false) => {
                let values: Vec<String> = self
                    .fingerprint_fields
                    .iter()
                    .map(|p| match resolve(p, input, tz).to_key_text() {
                        Some(t) => format!("={t}"),
                        None => "!".to_owned(),
                    })
                    .collect();
                let parts: Vec<&str> = values.iter().map(String::as_str).collect();
                // The escaped key makes the parts unambiguous; its digest is the stable,
                // bounded fingerprint.
                let digest = Sha256::digest(state_key("fp", &parts).as_bytes());
                digest[..16].iter().map(|b| format!("{b:02x}")).collect()
            }
        };
        EventTarget {
            fingerprint,
            to: a.status.clone(),
        }
    }
}
