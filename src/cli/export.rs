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

/// Builds and copies every activated package; exit 1 when one could not be built.
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
    let mut exported = std::collections::BTreeSet::new();
    let mut failures = 0;
    for key in &activated {
        let Some(outcome) = outcomes.get(key) else {
            continue;
        };
        let Some(id) = reconcile::outcome::package_id(&outcome.details).filter(|_| outcome.ready)
        else {
            writeln!(out, "{key}: not built: {}", outcome.message)?;
            failures += 1;
            continue;
        };
        copy_package(&state_dir.join("download").join(&id), &args.output, &id)?;
        writeln!(out, "{key}: {id} ({})", outcome.message)?;
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
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Copies a stored package into `output/<id>`, whole or not at all.
fn copy_package(stored: &Path, output: &Path, id: &str) -> Result<()> {
    let target = output.join(id);
    std::fs::create_dir_all(output)
        .with_context(|| format!("failed to create {}", output.display()))?;
    let staging = output.join(format!(".export-{id}"));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    for entry in std::fs::read_dir(stored)
        .with_context(|| format!("failed to read {}", stored.display()))?
        .flatten()
    {
        std::fs::copy(entry.path(), staging.join(entry.file_name()))
            .with_context(|| format!("failed to copy {}", entry.path().display()))?;
    }
    if target.exists() {
        std::fs::remove_dir_all(&target)?;
    }
    std::fs::rename(&staging, &target)
        .with_context(|| format!("failed to write {}", target.display()))?;
    Ok(())
}
