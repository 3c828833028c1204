//! The `Quota` custom resource: fixed-window budgets per tenant.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::status::ResourceStatus;

/// A tenant's budget of actions per fixed window, counted across all gateways.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "acteon.dev",
    version = "v1alpha1",
    kind = "Quota",
    // Not `quotas`/`quota`: `quota` is the short name of the core ResourceQuota, and
    // `kubectl get quota` must keep meaning that.
    plural = "actionquotas",
    singular = "actionquota",
    doc = "A Quota (acteon.dev/v1alpha1, resource actionquotas): a tenant's budget of deliveries per fixed window, counted across all gateways. It counts the actions of its namespace (every namespace when in the shared one) whose tenant, and provider and action type when set, match. Past `limit`, `overage` decides: block answers QuotaExceeded, warn delivers and logs, degrade delivers to `fallbackProvider`.",
    namespaced,
    status = "ResourceStatus",
    shortname = "aquota",
    category = "acteon",
    printcolumn = r#"{"name":"Tenant","type":"string","jsonPath":".spec.tenant"}"#,
    printcolumn = r#"{"name":"Limit","type":"integer","jsonPath":".spec.limit"}"#,
    printcolumn = r#"{"name":"Window","type":"string","jsonPath":".spec.window"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QuotaSpec {
    /// Tenant whose actions count (the action's `tenant`; not empty).
    pub tenant: String,
    /// Count only deliveries to this provider (default: to any provider).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Count only actions of this `action_type` (default: of any type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_type: Option<String>,
    /// Actions allowed per window (at least 1).
    #[schemars(range(min = 1))]
    pub limit: u64,
    /// Window length: `30s`, `15m`, `1h`, `1d` or a number of seconds.
    #[schemars(regex(pattern = r"^\s*0*[1-9][0-9]*[smhd]?\s*$"))]
    pub window: String,
    #[serde(default)]
    pub overage: Overage,
    /// Provider used when `overage` is `degrade` (required then; of this namespace or shared).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_provider: Option<String>,
}

/// What happens to actions past the limit: `block` (default: answered `QuotaExceeded`),
/// `warn` (delivered and logged) or `degrade` (delivered to `fallbackProvider`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Overage {
    #[default]
    Block,
    Warn,
    Degrade,
}

/// Parses `30s`, `15m`, `1h`, `1d` or plain seconds.
pub fn parse_window_seconds(window: &str) -> Option<u64> {
    let w = window.trim();
    let (digits, unit) = match w.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => w.split_at(i),
        None => (w, "s"),
    };
    let n: u64 = digits.parse().ok()?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(mult).filter(|s| *s > 0)
}

#[cfg(test)]
mod tests {
    use super::parse_window_seconds;

    #[test]
    fn windows_parse() {
        assert_eq!(parse_window_seconds("1h"), Some(3600));
        assert_eq!(parse_window_seconds("90"), Some(90));
        assert_eq!(parse_window_seconds("15m"), Some(900));
        assert_eq!(parse_window_seconds("0s"), None);
        assert_eq!(parse_window_seconds("1w"), None);
        assert_eq!(parse_window_seconds(""), None);
    }
}
