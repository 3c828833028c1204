use std::process::ExitCode;

use clap::Parser;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    acteon_gateway::install_tls_provider();
    acteon_gateway::cli::run(acteon_gateway::cli::Cli::parse())
}
