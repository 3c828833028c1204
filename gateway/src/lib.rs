//! The Acteon gateway: takes actions over HTTP, runs them through the rule pipeline and
//! delivers them through providers, with shared state in a backend.

pub mod action;
pub mod outcome;
pub mod rules;
pub mod state;
