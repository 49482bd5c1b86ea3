//! `tessera validate`: every problem of a configuration directory, for pre-commit and CI:
//! what parsing and checking the documents finds, and what building the packages would
//! find on disk (content present, a launched file present, an archive's digest, a download
//! address that can be fetched), without building or downloading anything.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;

use super::{OutputFormat, plural};
use crate::desired::{self, DesiredState, Served};
use crate::reconcile::outcome::Reason;
use crate::resources::{Problem, Resource};
use crate::sources::dir::DirSource;
use crate::sources::inputs;

/// `tessera validate`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  tessera validate .                       every problem of the configuration here, exit 1 if any
  tessera validate fleet/ --output json    for CI annotations
  tessera validate \"$(git rev-parse --show-toplevel)\"   in a pre-commit hook")]
pub(super) struct ValidateArgs {
    /// The configuration directory.
    dir: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    output: OutputFormat,
}

/// Prints every problem; exit 1 when there is any.
pub(super) fn run(args: &ValidateArgs) -> Result<ExitCode> {
    let mut state = evaluate_dir(&args.dir)?;
    check_on_disk(&args.dir.canonicalize()?, &mut state);
    check_kubernetes_only(&mut state);
    let valid = state
        .entries
        .values()
        .filter(|e| e.is_actionable() && e.problems.is_empty())
        .count();
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

/// Adds what building each package would find on disk to `state`'s problems (and to its
/// entry's, so it no longer counts as valid), in file order.
fn check_on_disk(root: &Path, state: &mut DesiredState) {
    let mut found = Vec::new();
    for (key, entry) in &mut state.entries {
        let Served::Current(resource) = &entry.served else {
            continue; // Its own problems are reported already.
        };
        let Resource::Package(package) = resource.as_ref() else {
            continue;
        };
        let file = entry.origin.as_ref().map(|o| o.file.clone());
        for (field, message) in inputs::check(&package.spec, root, file.as_deref()) {
            let problem = Problem {
                line: entry
                    .lines
                    .line(&field)
                    .or(entry.origin.as_ref().map(|o| o.line)),
                file: file.clone(),
                object: Some(key.clone()),
                field: Some(field),
                message,
            };
            entry.problems.push(problem.clone());
            found.push(problem);
        }
    }
    state.problems.extend(found);
    sort_problems(&mut state.problems);
}

/// Adds a problem for each field that only Kubernetes mode reads (`tessera serve` in
/// directory or git mode refuses it with reason `SecretsNeedKubernetes`): a Server's or a
/// Gateway's `certificateSecretRef`, which names a Kubernetes Secret.
fn check_kubernetes_only(state: &mut DesiredState) {
    const FIELD: &str = "spec.certificateSecretRef";
    let mut found = Vec::new();
    for (key, entry) in &mut state.entries {
        let Served::Current(resource) = &entry.served else {
            continue; // Its own problems are reported already.
        };
        let secret = match resource.as_ref() {
            Resource::Server(server) => server.spec.certificate_secret_ref.as_ref(),
            Resource::Gateway(gateway) => gateway.spec.certificate_secret_ref.as_ref(),
            _ => None,
        };
        let Some(secret) = secret else {
            continue;
        };
        let problem = Problem {
            line: entry
                .lines
                .line(FIELD)
                .or(entry.origin.as_ref().map(|o| o.line)),
            file: entry.origin.as_ref().map(|o| o.file.clone()),
            object: Some(key.clone()),
            field: Some(FIELD.to_owned()),
            message: format!(
                "{}: names the Kubernetes Secret {:?}, which only Kubernetes mode (`--kube`) reads; in directory and git mode use certificateRef",
                Reason::SecretsNeedKubernetes.as_str(),
                secret.name
            ),
        };
        entry.problems.push(problem.clone());
        found.push(problem);
    }
    state.problems.extend(found);
    sort_problems(&mut state.problems);
}

/// Problems in file order.
fn sort_problems(problems: &mut [Problem]) {
    problems.sort_by(|a, b| {
        (a.file.as_deref(), a.line, &a.object, &a.field, &a.message).cmp(&(
            b.file.as_deref(),
            b.line,
            &b.object,
            &b.field,
            &b.message,
        ))
    });
}
