//! Compatibility with Acteon: its rule-file semantics on absent, null and wrong-typed
//! fields (a differential test against a written-down oracle) and its Python SDK's wire
//! contract, both through the real binary.

mod common;

#[path = "acteon_compat/differential.rs"]
mod differential;
#[path = "acteon_compat/sdk.rs"]
mod sdk;
