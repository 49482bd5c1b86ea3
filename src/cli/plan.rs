//! `tessera plan`: what serving a configuration would change, compared with what a server
//! last applied.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;

use super::OutputFormat;
use super::git::{GitArgs, git_source};
use super::running::runtime;
use super::validate::evaluate_dir;
use crate::desired::{self, DesiredState};
use crate::reconcile;
use crate::reconcile::fragments::Packages;
use crate::reconcile::plan::{self, Side};
use crate::store::db::{Computer, Database};

/// `tessera plan`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  tessera plan .                                     against the state in ./.tessera
  tessera plan checkout/ --state /var/lib/tessera    what merging this checkout would change
  tessera plan --git https://git.example.com/it/fleet.git --branch release --state /var/lib/tessera
  tessera plan . --output json                       for a merge request's comment")]
pub(super) struct PlanArgs {
    /// The configuration directory (a checkout of the commit to merge).
    #[arg(required_unless_present = "git", conflicts_with = "git")]
    dir: Option<PathBuf>,
    /// The state directory of the running `tessera serve` (default `<dir>/.tessera`). Only
    /// read: nothing is written there.
    #[arg(
        long,
        env = "TESSERA_STATE",
        required_unless_present = "dir",
        help_heading = "State"
    )]
    state: Option<PathBuf>,
    /// The servers' PostgreSQL database, when they use one (`tessera serve --database`):
    /// computers are read from it, in read-only transactions.
    #[arg(long, env = "TESSERA_DATABASE", help_heading = "State")]
    database: Option<String>,
    /// Plan a branch of a git repository instead of a directory (fetched into a scratch
    /// directory, with the credential flags of `tessera serve --git`).
    #[arg(long, help_heading = "Git source")]
    git: Option<String>,
    /// With --git: the branch to plan.
    #[arg(
        long,
        default_value = "main",
        requires = "git",
        help_heading = "Git source"
    )]
    branch: String,
    /// With --git: the folder of the repository holding the configuration.
    #[arg(
        long,
        default_value = "",
        requires = "git",
        help_heading = "Git source"
    )]
    path: String,
    /// With --git: SSH private key.
    #[arg(
        long,
        env = "TESSERA_GIT_SSH_KEY_FILE",
        requires = "git",
        help_heading = "Git source"
    )]
    ssh_key_file: Option<PathBuf>,
    /// With --git: `known_hosts`, checked strictly.
    #[arg(
        long,
        env = "TESSERA_GIT_KNOWN_HOSTS_FILE",
        requires = "git",
        help_heading = "Git source"
    )]
    known_hosts_file: Option<PathBuf>,
    /// With --git: HTTPS user name.
    #[arg(
        long,
        env = "TESSERA_GIT_USERNAME",
        requires = "git",
        help_heading = "Git source"
    )]
    username: Option<String>,
    /// With --git: a file holding the HTTPS password or token.
    #[arg(
        long,
        env = "TESSERA_GIT_PASSWORD_FILE",
        requires = "git",
        help_heading = "Git source"
    )]
    password_file: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Human, help_heading = "Output")]
    output: OutputFormat,
}

/// Compares the configuration with what the server last applied; exit 0: no change,
/// 2: changes, 1: problems.
pub(super) fn run(args: &PlanArgs) -> Result<ExitCode> {
    // The configuration: a directory, or a branch fetched into a scratch directory.
    let scratch = tempfile::tempdir().context("failed to make a scratch directory")?;
    let (desired, config_dir, label) = configuration(args, scratch.path())?;
    let state = match (&args.state, &args.dir) {
        (Some(state), _) => state.clone(),
        (None, Some(dir)) => dir.join(".tessera"),
        (None, None) => bail!("--state is required with --git"),
    };
    let mut notes = Vec::new();
    let (before, unreadable) = match reconcile::status::read_applied(&state)
        .with_context(|| format!("failed to read {}", state.join("applied.json").display()))?
    {
        Some(applied) => Side::applied(&applied),
        None => {
            notes.push(format!(
                "{} holds no applied configuration: everything counts as new",
                state.display()
            ));
            (Side::default(), Vec::new())
        }
    };
    notes.extend(
        unreadable
            .into_iter()
            .map(|u| format!("left out of the comparison: {u}")),
    );
    let computers = computers(args, &state, &mut notes)?;
    // Packages are built in a scratch directory, so their ids are the ones serve would make.
    let outcomes = Packages::new(scratch.path().join("state"), config_dir).reconcile(&desired);
    let mut problems: Vec<String> = desired.problems.iter().map(ToString::to_string).collect();
    let mut ids = std::collections::HashMap::new();
    for (key, outcome) in &outcomes {
        match reconcile::outcome::package_id(&outcome.details) {
            Some(id) if outcome.ready => {
                ids.insert(key.clone(), id);
            }
            _ => problems.push(format!("{key}: not built: {}", outcome.message)),
        }
    }
    problems.sort();
    let after = Side::desired(&desired, ids);
    let found = plan::plan(&before, &after, &computers, jiff::Timestamp::now());

    let mut out = std::io::stdout().lock();
    match args.output {
        OutputFormat::Json => {
            let mut body = serde_json::to_value(&found)?;
            body["changes"] = found.changes().into();
            body["problems"] = problems.clone().into();
            body["notes"] = notes.clone().into();
            writeln!(out, "{}", serde_json::to_string_pretty(&body)?)?;
        }
        OutputFormat::Human => {
            let heading = plan::Heading {
                label: &label,
                state: &state,
                notes: &notes,
                problems: &problems,
            };
            plan::write_plan(&mut out, &found, &heading)?;
        }
    }
    Ok(if !problems.is_empty() {
        ExitCode::from(1)
    } else if found.changes() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// The configuration planned (a directory, or a branch fetched below `scratch`), evaluated;
/// its directory; and how to name it.
fn configuration(args: &PlanArgs, scratch: &Path) -> Result<(DesiredState, PathBuf, String)> {
    Ok(match (&args.git, &args.dir) {
        (Some(url), _) => {
            let git = GitArgs {
                git: Some(url.clone()),
                branch: args.branch.clone(),
                path: args.path.clone(),
                ssh_key_file: args.ssh_key_file.clone(),
                known_hosts_file: args.known_hosts_file.clone(),
                username: args.username.clone(),
                password_file: args.password_file.clone(),
                ..GitArgs::default()
            };
            let (source, _) = git_source(&git, &scratch.join("fetched"))?;
            let snapshot = runtime()?
                .block_on(source.fetch_snapshot())
                .with_context(|| format!("failed to fetch {}", source.display_url()))?;
            let root = snapshot.root.clone().context("a git snapshot has a root")?;
            let desired = desired::evaluate(&snapshot, None, desired::Options::default());
            (
                desired,
                root,
                format!("{} {}", source.display_url(), args.branch),
            )
        }
        (None, Some(dir)) => {
            let config_dir = dir
                .canonicalize()
                .with_context(|| format!("failed to read {}", dir.display()))?;
            (evaluate_dir(dir)?, config_dir, dir.display().to_string())
        }
        (None, None) => bail!("give DIR or --git URL"),
    })
}

/// The computers known to the server's state database; none, with a note, without one.
fn computers(args: &PlanArgs, state: &Path, notes: &mut Vec<String>) -> Result<Vec<Computer>> {
    let db_path = state.join("state.db");
    Ok(if let Some(url) = &args.database {
        Database::postgres_read_only(url)
            .and_then(|db| db.computers())
            .context("failed to read the computers from the PostgreSQL database")?
    } else if db_path.is_file() {
        Database::open_read_only(&db_path)
            .and_then(|db| db.computers())
            .with_context(|| format!("failed to read {}", db_path.display()))?
    } else {
        notes.push(format!(
            "no state database at {}: no computers",
            db_path.display()
        ));
        Vec::new()
    })
}
