//! `tessera crds`: the CustomResourceDefinitions of every kind, as YAML.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use crate::resources::crd;

/// `tessera crds`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  tessera crds | kubectl apply -f -
  tessera crds --output-dir charts/tessera/crds")]
pub(super) struct CrdsArgs {
    /// Write one file per CRD into this directory instead of printing them.
    #[arg(long)]
    output_dir: Option<PathBuf>,
}

/// Prints the CRDs, or writes one file per CRD.
pub(super) fn run(args: &CrdsArgs) -> Result<ExitCode> {
    match &args.output_dir {
        None => {
            std::io::stdout()
                .lock()
                .write_all(crd::all_yaml().as_bytes())?;
        }
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("failed to create {}", dir.display()))?;
            for definition in crd::all() {
                let path = dir.join(crd::file_name(&definition));
                std::fs::write(&path, crd::to_yaml(&definition))
                    .with_context(|| format!("failed to write {}", path.display()))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
