//! What a valid object asks for that this gateway does not do yet, so that its status can
//! say so instead of claiming `Ready`: an effect that answers `NOT_IMPLEMENTED` makes the
//! object not ready; a setting that is accepted but not enforced yet is named in its
//! `Ready` message. Every provider type delivers.

use serde_json::Value;

use super::documents::Spec;
use super::error::Kind;

/// Rule actions that answer `NOT_IMPLEMENTED` today.
const ACTIONS_NOT_YET: &[&str] = &["requestApproval"];
/// Provider settings validated and not enforced yet (none today: circuit breakers and
/// rate limits are enforced by the delivery layer).
const PROVIDER_SETTINGS_NOT_YET: &[&str] = &[];

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Gaps {
    /// Why the object does not work yet (it is served, and answers `NOT_IMPLEMENTED`).
    pub not_implemented: Option<String>,
    /// Settings accepted and not enforced yet.
    pub not_enforced: Vec<&'static str>,
}

/// The gaps of a valid object of `kind`.
pub fn gaps(kind: Kind, spec: &Spec) -> Gaps {
    let value = spec.value();
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
    match kind {
        Kind::Rule => {
            let action = value.get("action").cloned().unwrap_or(Value::Null);
            let not_implemented = text(&action, "type")
                .filter(|t| ACTIONS_NOT_YET.contains(&t.as_str()))
                .map(|t| {
                    format!("the `{t}` action is not implemented by this gateway yet: matching actions answer NOT_IMPLEMENTED")
                });
            Gaps {
                not_implemented,
                not_enforced: Vec::new(),
            }
        }
        Kind::Provider => {
            let not_enforced = PROVIDER_SETTINGS_NOT_YET
                .iter()
                .copied()
                .filter(|k| value.get(*k).is_some_and(|v| !v.is_null()))
                .collect();
            Gaps {
                not_implemented: None,
                not_enforced,
            }
        }
        _ => Gaps::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unimplemented_effects_and_unenforced_settings_are_named() {
        let rule = Spec::from_value(
            &json!({"action": {"type": "requestApproval", "notifyProvider": "p"}}),
        );
        let g = gaps(Kind::Rule, &rule);
        assert!(
            g.not_implemented
                .unwrap_or_default()
                .contains("`requestApproval`")
        );
        let chain_rule = Spec::from_value(&json!({"action": {"type": "chain", "chain": "c"}}));
        assert_eq!(gaps(Kind::Rule, &chain_rule), Gaps::default(), "chains run");
        let teams =
            Spec::from_value(&json!({"type": "teams", "circuitBreaker": {"failureThreshold": 2}}));
        let g = gaps(Kind::Provider, &teams);
        assert_eq!(g.not_implemented, None, "teams delivers");
        let slack = Spec::from_value(&json!({"type": "slack", "slack": {}}));
        assert_eq!(
            gaps(Kind::Provider, &slack),
            Gaps::default(),
            "slack delivers"
        );
        assert!(g.not_enforced.is_empty(), "circuit breakers are enforced");
        let webhook = Spec::from_value(&json!({"type": "webhook", "webhook": {"url": "http://x"}}));
        assert_eq!(gaps(Kind::Provider, &webhook), Gaps::default());
    }
}
