//! The gateway's integration tests, in one binary: every test binary links the whole
//! gateway and its dependencies, which costs minutes on a 2-core machine. Each module
//! is what used to be a binary of its own; `common` holds the shared helpers.

mod common;

/// Every test may build an HTTP client: the TLS provider comes first.
#[ctor::ctor]
fn install_tls() {
    acteon_gateway::install_tls_provider();
}

mod acteon_compat;
mod audit;
mod auth;
mod chains;
mod cli;
mod dead_letters;
mod delivery;
mod faults;
mod follow;
mod golden;
mod http_api;
mod inhibition;
mod parked;
mod pipeline;
mod providers;
mod proxy_selftest;
mod replicas;
mod samples_e2e;
mod state_memory;
mod state_postgres;
mod state_redis;
mod threads;
mod trace;
mod webhook;
