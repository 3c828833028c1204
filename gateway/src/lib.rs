//! The Acteon gateway: takes actions over HTTP, runs them through the rule pipeline and
//! delivers them through providers, with shared state in a backend.

pub mod action;
pub mod outcome;
pub mod rules;
pub mod state;
pub mod config;
pub mod metrics;
pub mod pipeline;
pub mod providers;
pub mod http;
pub mod cli;
