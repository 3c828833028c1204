//! The operator's one error type; each variant has a bounded metric label.

use acteon_channel::ChannelError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Channel(#[from] ChannelError),
    #[error("serializing the snapshot: {0}")]
    Serialize(#[from] serde_json::Error),
    #[error("the configuration caches are not synced yet")]
    NotSynced,
    #[error("compiling the configuration failed unexpectedly: {0}")]
    Build(String),
}

impl Error {
    /// Label for `acteon_operator_reconcile_errors_total{reason}`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube_api",
            Error::Channel(_) => "state_backend",
            Error::Serialize(_) => "serialize",
            Error::NotSynced => "not_synced",
            Error::Build(_) => "build",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
