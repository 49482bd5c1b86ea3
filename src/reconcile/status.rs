//! Status files: in directory mode, each object's status is written as YAML under
//! `<state>/status/<namespace>/<kind>/<name>.yaml`, and problems that concern no object to
//! `<state>/status/problems.yaml`, so a git-driven user can read them without the admin API.
//! Files are rewritten only when their content changes, and removed with their object.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use crate::server::admin::{ObjectReport, Report};
use crate::store::atomic::{self, Access, WriteError};

/// Errors writing status files.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("failed to serialise the status of {object}")]
    Serialise { object: String },
}

/// Writes the status files of `report` under `state_dir`, removing those of objects gone.
pub fn write(state_dir: &Path, report: &Report) -> Result<(), StatusError> {
    let root = state_dir.join("status");
    let mut written: HashSet<PathBuf> = HashSet::new();
    for object in &report.objects {
        let path = root
            .join(&object.namespace)
            .join(object.kind.to_ascii_lowercase())
            .join(format!("{}.yaml", object.name));
        let mut status = object.details.clone();
        status.insert(
            "observedGeneration".into(),
            json!(object.observed_generation),
        );
        status.insert("conditions".into(), json!(object.conditions));
        let document = json!({
            "apiVersion": object.api_version,
            "kind": object.kind,
            "metadata": {
                "name": object.name,
                "namespace": object.namespace,
                "generation": object.generation,
            },
            "source": object.source,
            "status": status,
            "problems": object.problems,
        });
        let text = serde_saphyr::to_string(&document).map_err(|_| StatusError::Serialise {
            object: format!("{}/{}", object.kind, object.name),
        })?;
        atomic::write_if_changed(&path, text.as_bytes(), Access::Public)?;
        written.insert(path);
    }
    let problems = root.join("problems.yaml");
    let text = serde_saphyr::to_string(&json!({
        "revision": report.revision,
        "problems": report.problems,
    }))
    .map_err(|_| StatusError::Serialise {
        object: "problems".into(),
    })?;
    atomic::write_if_changed(&problems, text.as_bytes(), Access::Public)?;
    written.insert(problems);
    remove_others(&root, &written);
    Ok(())
}

/// The `status` subresource of `object` as Kubernetes stores it: the kind's facts,
/// `observedGeneration` (left out while no version is in effect) and the conditions.
pub fn subresource(object: &ObjectReport) -> Map<String, Value> {
    let mut status = object.details.clone();
    status.retain(|_, value| !value.is_null());
    if let Some(generation) = object.observed_generation {
        status.insert("observedGeneration".into(), json!(generation));
    }
    status.insert("conditions".into(), json!(object.conditions));
    status
}

/// Removes status files not written in this pass, and directories left empty.
fn remove_others(dir: &Path, keep: &HashSet<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            remove_others(&path, keep);
            let _ = std::fs::remove_dir(&path); // Fails, as it should, unless empty.
        } else if path.extension().is_some_and(|e| e == "yaml") && !keep.contains(&path) {
            let _ = std::fs::remove_file(&path);
        }
    }
}
