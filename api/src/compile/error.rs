//! Compile errors: each names the file, the object and the field.

use std::fmt;

/// Which object a problem belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId {
    pub kind: Kind,
    /// The object's own namespace (`None` for Acteon rule files, which are shared).
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// The five kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Provider,
    StateMachine,
    Chain,
    Quota,
    Rule,
}

impl Kind {
    pub fn parse(kind: &str) -> Option<Kind> {
        Some(match kind {
            "Rule" => Kind::Rule,
            "Provider" => Kind::Provider,
            "Chain" => Kind::Chain,
            "StateMachine" => Kind::StateMachine,
            "Quota" => Kind::Quota,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Rule => "Rule",
            Kind::Provider => "Provider",
            Kind::Chain => "Chain",
            Kind::StateMachine => "StateMachine",
            Kind::Quota => "Quota",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem found while compiling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileError {
    /// File (and document index) or cluster location.
    pub source: String,
    pub object: Option<ObjectId>,
    /// Dotted path of the offending field, e.g. `spec.action.ttlSeconds`.
    pub field: Option<String>,
    /// CamelCase reason for status conditions, e.g. `ProviderNotFound`.
    pub reason: &'static str,
    pub message: String,
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.source)?;
        if let Some(o) = &self.object {
            write!(f, ": {o}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for CompileError {}
