//! `tessera validate`: every problem of a configuration directory, for pre-commit and CI.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;

use super::{OutputFormat, plural};
use crate::desired::{self, DesiredState};
use crate::sources::dir::DirSource;

/// `tessera validate`.
#[derive(Debug, Args)]
pub(super) struct ValidateArgs {
    /// The configuration directory.
    dir: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    output: OutputFormat,
}

/// Prints every problem; exit 1 when there is any.
pub(super) fn run(args: &ValidateArgs) -> Result<ExitCode> {
    let state = evaluate_dir(&args.dir)?;
    let valid = state.entries.values().filter(|e| e.is_actionable()).count();
    let files: std::collections::BTreeSet<_> = state
        .problems
        .iter()
        .filter_map(|p| p.file.as_deref())
        .collect();
    let mut out = std::io::stdout().lock();
    match args.output {
        OutputFormat::Human => {
            for problem in &state.problems {
                writeln!(out, "{problem}")?;
            }
            if state.problems.is_empty() {
                writeln!(out, "{} objects, no problems", state.entries.len())?;
            } else {
                writeln!(
                    out,
                    "{} problem{} in {} file{}; {valid} of {} objects valid",
                    state.problems.len(),
                    plural(state.problems.len()),
                    files.len(),
                    plural(files.len()),
                    state.entries.len()
                )?;
            }
        }
        OutputFormat::Json => {
            let body = serde_json::json!({
                "objects": state.entries.len(),
                "valid": valid,
                "problems": state.problems,
            });
            writeln!(out, "{}", serde_json::to_string_pretty(&body)?)?;
        }
    }
    Ok(if state.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Reads and evaluates a configuration directory once, as `validate` does.
pub fn evaluate_dir(dir: &Path) -> Result<DesiredState> {
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let state_dir = dir.join(".tessera");
    let source = DirSource::new(dir, vec![state_dir])?;
    Ok(desired::evaluate(
        &source.scan(),
        None,
        desired::Options::default(),
    ))
}
