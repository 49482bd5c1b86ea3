//! `tessera status`: deployment states, packages × states, or one computer's deployments
//! and history, read from the state database.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;

use super::OutputFormat;
use super::state::StateArgs;
use crate::server::admin;

/// `tessera status`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  tessera status --config fleet/               packages × deployment states
  tessera status --computer lab-01             one computer's deployments and history
  tessera status --state /var/lib/tessera --output json")]
pub(super) struct StatusArgs {
    #[command(flatten)]
    state: StateArgs,
    /// Show one computer (device id or name): its facts, deployments and history.
    #[arg(long)]
    computer: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    output: OutputFormat,
}

/// Prints the deployment table, or one computer.
pub(super) fn run(args: &StatusArgs) -> Result<ExitCode> {
    let db = args.state.open()?;
    let now = jiff::Timestamp::now().as_second();
    let mut out = std::io::stdout().lock();
    let Some(wanted) = &args.computer else {
        let table = admin::deployment_table_of(&db, now)?;
        match args.output {
            OutputFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&table)?)?,
            OutputFormat::Human => admin::write_deployment_table(&mut out, &table)?,
        }
        return Ok(ExitCode::SUCCESS);
    };
    let found = admin::computer_reports(&db, wanted)?;
    if found.is_empty() {
        bail!("no computer with device id or name {wanted:?}");
    }
    match args.output {
        OutputFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&found)?)?,
        OutputFormat::Human => {
            for report in &found {
                admin::write_computer_report(&mut out, report, now)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
