//! Status files: in directory mode, each object's status is written as YAML under
//! `<state>/status/<namespace>/<kind>/<name>.yaml`, and problems that concern no object to
//! `<state>/status/problems.yaml`, so a git-driven user can read them without the admin API.
//! Files are rewritten only when their content changes, and removed with their object.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use crate::desired::DesiredState;
use crate::reconcile::outcome::{self, Outcome, Reason};
use crate::resources::{Kind, ObjectKey, PackageStatus};
use crate::server::admin::{ObjectReport, Report};
use crate::store::atomic::{self, Access, WriteError};
use crate::store::fragments::FragmentStore;

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
            .join(object.kind.as_str().to_ascii_lowercase())
            .join(format!("{}.yaml", object.name));
        let mut status = object.details.clone();
        status.insert(
            "observedGeneration".into(),
            json!(object.observed_generation),
        );
        status.insert("sourceRevision".into(), json!(object.source_revision));
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

/// The file, below the state directory, that records what the last pass applied.
pub const APPLIED_FILE: &str = "applied.json";

/// What the last pass applied: the revision, and every object acted on (the version served,
/// which is the last valid one when the latest is broken) with its status fields. `tessera
/// plan` compares a configuration against it.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Applied {
    pub revision: String,
    pub objects: Vec<AppliedObject>,
}

/// One object in [`Applied`].
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct AppliedObject {
    /// The object as a document (apiVersion, kind, metadata, spec).
    pub resource: serde_json::Value,
    /// Its status fields as reconcile found them (a Package's `packageId`, a Certificate's
    /// `renewalTime`).
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// Writes [`Applied`] for `desired` and the `outcomes` of its pass.
pub fn write_applied(
    state_dir: &Path,
    desired: &DesiredState,
    outcomes: &HashMap<ObjectKey, Outcome>,
) -> Result<(), StatusError> {
    let applied = Applied {
        revision: desired.revision.clone(),
        objects: desired
            .actionable()
            .map(|(key, resource)| AppliedObject {
                resource: resource.to_document(),
                details: outcomes
                    .get(key)
                    .map(|o| o.details.clone())
                    .unwrap_or_default(),
            })
            .collect(),
    };
    let text = serde_json::to_vec_pretty(&applied).map_err(|_| StatusError::Serialise {
        object: APPLIED_FILE.into(),
    })?;
    atomic::write_if_changed(&state_dir.join(APPLIED_FILE), &text, Access::Public)?;
    Ok(())
}

/// Reads what the last pass under `state_dir` applied; `None` when no pass has run there.
pub fn read_applied(state_dir: &Path) -> Result<Option<Applied>, std::io::Error> {
    let path = state_dir.join(APPLIED_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// The Packages of `desired` already built under `state_dir` by an earlier run, as ready
/// outcomes with their `packageId`: those whose spec is the one applied last and whose
/// fragments are complete in the store. What a restarted server serves before it builds
/// anything; content changed meanwhile is rebuilt by the pass, as when running.
pub fn already_built(state_dir: &Path, desired: &DesiredState) -> HashMap<ObjectKey, Outcome> {
    let Ok(Some(applied)) = read_applied(state_dir) else {
        return HashMap::new();
    };
    let Ok(store) = FragmentStore::open(state_dir.join("download")) else {
        return HashMap::new();
    };
    let mut built = HashMap::new();
    for (key, resource) in desired.actionable() {
        if key.kind != Kind::Package {
            continue;
        }
        let spec = resource.spec_json();
        let found = applied.objects.iter().find(|object| {
            let document = &object.resource;
            document["kind"] == "Package"
                && document["metadata"]["name"] == key.name.as_str()
                && document["metadata"]["namespace"]
                    .as_str()
                    .is_none_or(|namespace| namespace == key.namespace)
                && document["spec"] == spec
        });
        let Some(id) = found.and_then(|o| outcome::package_id(&o.details)) else {
            continue;
        };
        if !matches!(store.manifest(&id), Ok(Some(_))) {
            continue;
        }
        let details = outcome::details(&PackageStatus {
            package_id: Some(id.to_owned()),
            ..PackageStatus::default()
        });
        built.insert(
            key.clone(),
            Outcome::ready(
                Reason::Built,
                format!("package {id}, built before this start"),
            )
            .with_details(details),
        );
    }
    built
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
