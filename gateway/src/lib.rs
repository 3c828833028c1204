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

/// Makes ring the process's TLS crypto provider: every HTTP client (provider calls, OTLP
/// export, TokenReview) needs one, and reqwest is built without its own. Idempotent.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
#[ctor::ctor]
fn install_tls_for_tests() {
    install_tls_provider();
}
