//! Compatibility with Acteon: its rule-file semantics on absent, null and wrong-typed
//! fields (a differential test against a written-down oracle) and its Python SDK's wire
//! contract, both through the real binary.

mod differential;
mod sdk;
