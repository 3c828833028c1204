//! The Acteon gateway: takes actions over HTTP, runs them through the rule pipeline and
//! delivers them through providers, with shared state in a backend.

pub mod action;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod dead_letter;
pub mod delivery;
pub mod follow;
pub mod http;
pub mod metrics;
pub mod outcome;
pub mod pipeline;
pub mod providers;
pub mod rules;
pub mod seal_keys;
pub mod state;
pub mod trace;
pub mod worker;
