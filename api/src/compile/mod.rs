//! The one compile path: documents (manifests, Acteon rule files or Acteon server configs)
//! → validated [`Snapshot`].
//!
//! Each object is validated on its own and against the objects it refers to; a bad object
//! is rejected with a reason and left out, and everything else still compiles. The
//! standalone gateway refuses to start on any rejection; the operator writes them to status.

pub mod acteon;
mod acteon_chains;
pub mod documents;
pub mod error;
pub mod gaps;
pub mod limits;
mod validate;

pub use documents::{Document, Spec, parse_file, parse_text, read_paths};
pub use error::{CompileError, Kind, ObjectId};

use crate::snapshot::Snapshot;

/// Namespace whose objects apply to every namespace's actions, unless configured otherwise.
pub const DEFAULT_SHARED_NAMESPACE: &str = "acteon-system";

/// Compile settings.
#[derive(Clone, Debug)]
pub struct CompileOptions {
    /// Objects in this namespace are shared by all namespaces.
    pub shared_namespace: String,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            shared_namespace: DEFAULT_SHARED_NAMESPACE.to_owned(),
        }
    }
}

/// The result of compiling a set of documents.
#[derive(Clone, Debug)]
pub struct Compiled {
    pub snapshot: Snapshot,
    /// One entry per rejected object (an object may have several problems; the first is kept).
    pub rejections: Vec<CompileError>,
}

/// Validates every document and builds the snapshot of the accepted ones.
pub fn compile(docs: &[Document], options: &CompileOptions) -> Compiled {
    let mut compiled = validate::compile(docs, options);
    // Chains of Acteon files are named in the file's own terms.
    compiled
        .rejections
        .iter_mut()
        .for_each(acteon_chains::restate);
    compiled
}

/// Reads and compiles files; any read or validation problem is an error.
pub fn compile_paths(
    paths: &[std::path::PathBuf],
    options: &CompileOptions,
) -> Result<Snapshot, Vec<CompileError>> {
    let docs = read_paths(paths)?;
    let compiled = compile(&docs, options);
    if compiled.rejections.is_empty() {
        Ok(compiled.snapshot)
    } else {
        Err(compiled.rejections)
    }
}
