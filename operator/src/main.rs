//! The Acteon operator. Today: `crdgen`, which writes the CRDs generated from the Rust
//! types. The controller arrives with the operator issue.

mod crdgen;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "acteon-operator", version, about = "Acteon operator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the CustomResourceDefinitions to a directory (default `crds/`), or check them.
    Crdgen {
        #[arg(long, default_value = "crds")]
        out: PathBuf,
        /// Fail if the files differ from what would be written (for CI).
        #[arg(long)]
        check: bool,
    },
    /// Run the controller (not implemented yet).
    Run,
}

fn crdgen(out: &PathBuf, check: bool) -> ExitCode {
    let mut stale = Vec::new();
    for (file, crd) in crdgen::definitions() {
        let yaml = match crdgen::render(&crd) {
            Ok(y) => y,
            Err(e) => {
                eprintln!("error: {file}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let path = out.join(file);
        if check {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(yaml.as_str()) {
                stale.push(path.display().to_string());
            }
        } else if let Err(e) =
            std::fs::create_dir_all(out).and_then(|_| std::fs::write(&path, yaml))
        {
            eprintln!("error: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if !stale.is_empty() {
        eprintln!(
            "error: stale CRDs (run `cargo run -p acteon-operator -- crdgen`): {}",
            stale.join(", ")
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Crdgen { out, check } => crdgen(&out, check),
        Command::Run => {
            eprintln!("acteon-operator: the controller is not implemented yet (see the README)");
            ExitCode::from(2)
        }
    }
}
