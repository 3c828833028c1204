//! The `log` provider: writes what would be delivered to the gateway's log.

use acteon_api::crd::ProviderSpec;
use async_trait::async_trait;
use serde_json::json;

use super::{Provider, ProviderError};
use crate::action::Action;
use crate::outcome::ProviderResponse;

pub struct LogProvider {
    level: tracing::Level,
}

impl LogProvider {
    pub fn new(spec: &ProviderSpec) -> LogProvider {
        let level = match spec.log.as_ref().and_then(|l| l.level.as_deref()) {
            Some("warn") => tracing::Level::WARN,
            Some("debug") => tracing::Level::DEBUG,
            _ => tracing::Level::INFO,
        };
        LogProvider { level }
    }
}

#[async_trait]
impl Provider for LogProvider {
    async fn execute(&self, a: &Action) -> Result<ProviderResponse, ProviderError> {
        let payload = a.payload.to_string();
        macro_rules! emit {
            ($lvl:ident) => {
                tracing::$lvl!(target: "acteon::delivery", id = ?a.id, namespace = ?a.namespace, tenant = ?a.tenant,
                    provider = ?a.provider, action_type = ?a.action_type, payload = %payload, "delivered")
            };
        }
        match self.level {
            tracing::Level::WARN => emit!(warn),
            tracing::Level::DEBUG => emit!(debug),
            _ => emit!(info),
        }
        Ok(ProviderResponse::success(json!({"logged": true})))
    }
}
