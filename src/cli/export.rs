//! `tessera export`: the `download/` tree of the activated packages (info files and
//! fragments), for a static web server or a site mirror.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;

use super::plural;
use super::validate::evaluate_dir;
use crate::reconcile;
use crate::reconcile::fragments::Packages;
use crate::resources::{Kind, ObjectKey, Resource};

/// `tessera export`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  tessera export --config fleet/ --output /srv/www/download      for a static web server
  tessera export --config fleet/ --output mirror/ --state /var/lib/tessera
  rsync -a mirror/ mirror.lab.example:/srv/download/            then a site mirror serves it")]
pub(super) struct ExportArgs {
    /// The configuration directory.
    #[arg(long, env = "TESSERA_CONFIG")]
    config: PathBuf,
    /// Where to write: one directory per package id. Package directories there that are no
    /// longer activated are removed.
    #[arg(long)]
    output: PathBuf,
    /// State directory, whose build cache is reused (default `<config>/.tessera`).
    #[arg(long, env = "TESSERA_STATE")]
    state: Option<PathBuf>,
}

/// Builds every activated package and copies them all; when one could not be built,
/// nothing is written and the exit is 1.
pub(super) fn run(args: &ExportArgs) -> Result<ExitCode> {
    let state = evaluate_dir(&args.config)?;
    let mut out = std::io::stdout().lock();
    let relevant: Vec<_> = state
        .problems
        .iter()
        .filter(|p| {
            p.object
                .as_ref()
                .is_none_or(|o| matches!(o.kind, Kind::Package | Kind::Activation))
        })
        .collect();
    if !relevant.is_empty() {
        for problem in &relevant {
            writeln!(out, "{problem}")?;
        }
        bail!("the configuration has problems with packages or activations: nothing was exported");
    }
    let state_dir = args
        .state
        .clone()
        .unwrap_or_else(|| args.config.join(".tessera"));
    let config_dir = args
        .config
        .canonicalize()
        .with_context(|| format!("failed to read {}", args.config.display()))?;
    let mut packages = Packages::new(state_dir.clone(), config_dir);
    let outcomes = packages.reconcile(&state);

    // Only packages an Activation makes deployable are published.
    let activated: std::collections::BTreeSet<ObjectKey> = state
        .actionable()
        .filter_map(|(key, resource)| match resource {
            Resource::Activation(a) => Some(ObjectKey::referenced(
                Kind::Package,
                &key.namespace,
                &a.spec.package_ref,
            )),
            _ => None,
        })
        .collect();
    // All or nothing: every package is built before anything is written, so one that
    // fails leaves the output as it was (a mirror half-updated would serve some packages of
    // the new configuration and some of the old).
    let mut built = Vec::new();
    let mut failures = Vec::new();
    for key in &activated {
        let Some(outcome) = outcomes.get(key) else {
            continue;
        };
        match reconcile::outcome::package_id(&outcome.details).filter(|_| outcome.ready) {
            Some(id) => built.push((key, id, outcome.message.clone())),
            None => failures.push(format!("{key}: not built: {}", outcome.message)),
        }
    }
    if !failures.is_empty() {
        for failure in &failures {
            writeln!(out, "{failure}")?;
        }
        bail!(
            "{} package{} could not be built: nothing was exported",
            failures.len(),
            plural(failures.len())
        );
    }
    let ids: Vec<String> = built.iter().map(|(_, id, _)| id.clone()).collect();
    publish(&state_dir.join("download"), &args.output, &ids)?;
    let mut exported = std::collections::BTreeSet::new();
    for (key, id, message) in built {
        writeln!(out, "{key}: {id} ({message})")?;
        exported.insert(id);
    }
    // Like `rsync --delete`: package directories no longer activated go away.
    if let Ok(entries) = std::fs::read_dir(&args.output) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_digit())
                && !exported.contains(&name)
            {
                std::fs::remove_dir_all(entry.path())
                    .with_context(|| format!("failed to remove {}", entry.path().display()))?;
                writeln!(out, "removed {name}")?;
            }
        }
    }
    writeln!(
        out,
        "{} package{} in {}",
        exported.len(),
        plural(exported.len()),
        args.output.display()
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Copies the stored packages `ids` into `output`: first all of them into a staging
/// directory beside their place (a copy that fails leaves `output` untouched), then each
/// renamed into place.
fn publish(store: &Path, output: &Path, ids: &[String]) -> Result<()> {
    std::fs::create_dir_all(output)
        .with_context(|| format!("failed to create {}", output.display()))?;
    let staging = output.join(".export-staging");
    let _ = std::fs::remove_dir_all(&staging);
    let staged = ids
        .iter()
        .try_for_each(|id| copy_package(&store.join(id), &staging, id));
    if let Err(error) = staged {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(error.context("nothing was exported"));
    }
    for id in ids {
        let target = output.join(id);
        if target.exists() {
            std::fs::remove_dir_all(&target)
                .with_context(|| format!("failed to replace {}", target.display()))?;
        }
        std::fs::rename(staging.join(id), &target)
            .with_context(|| format!("failed to write {}", target.display()))?;
    }
    std::fs::remove_dir(&staging)
        .with_context(|| format!("failed to remove {}", staging.display()))?;
    Ok(())
}

/// Copies a stored package into `staging/<id>`.
fn copy_package(stored: &Path, staging: &Path, id: &str) -> Result<()> {
    let target = staging.join(id);
    std::fs::create_dir_all(&target)
        .with_context(|| format!("failed to create {}", target.display()))?;
    for entry in std::fs::read_dir(stored)
        .with_context(|| format!("failed to read {}", stored.display()))?
        .flatten()
    {
        std::fs::copy(entry.path(), target.join(entry.file_name()))
            .with_context(|| format!("failed to copy {}", entry.path().display()))?;
    }
    Ok(())
}
