//! Types shared by the Acteon operator and gateway: the custom resources, the condition
//! grammar, Acteon rule files, and the one compile path from documents to a [`Snapshot`].

// Compile errors carry file, object and field for the user; they are on the cold path.
#![allow(clippy::result_large_err)]

pub mod cel;
pub mod compile;
pub mod condition;
pub mod crd;
pub mod field;
pub mod message_template;
pub mod redact;
pub mod snapshot;
pub mod template;

pub use snapshot::{Entry, Snapshot};

/// API group of the custom resources.
pub const GROUP: &str = "acteon.dev";
/// API version of the custom resources.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of manifests.
pub const API_VERSION: &str = "acteon.dev/v1alpha1";
