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
use crate::server::admin::{ObjectKind, ObjectReport, Report};
use crate::store::atomic::{self, Access, WriteError};
use crate::store::fragments::FragmentStore;

/// Errors writing status files.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("failed to serialise the status of {object}")]
    Serialise { object: String },
    #[error("failed to read the status files at {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a status file this version can read", path.display())]
    Parse { path: PathBuf },
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

/// Reads back the objects whose status files [`write`] left under `state_dir`, in kind then
/// namespace then name order: what `tessera get` shows when no server runs. The spec of the
/// version applied and the related objects come from [`APPLIED_FILE`], as the server's
/// report has them (none for an object that no pass acted on).
pub fn read(state_dir: &Path) -> Result<Vec<ObjectReport>, StatusError> {
    let root = state_dir.join("status");
    let mut files = Vec::new();
    collect_yaml(&root, &mut files).map_err(|source| StatusError::Read {
        path: root.clone(),
        source,
    })?;
    let mut objects = Vec::new();
    for path in files {
        if path.parent() == Some(root.as_path()) {
            continue; // problems.yaml
        }
        let text = std::fs::read_to_string(&path).map_err(|source| StatusError::Read {
            path: path.clone(),
            source,
        })?;
        let object = parse_status_file(&text).ok_or(StatusError::Parse { path })?;
        objects.push(object);
    }
    let applied: Vec<(ObjectKey, crate::resources::Resource)> = read_applied(state_dir)
        .ok()
        .flatten()
        .map(|applied| applied.objects)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|o| crate::resources::Resource::from_document(o.resource).ok())
        .map(|resource| (resource.key(), resource))
        .collect();
    let mut related = crate::reconcile::related_objects(applied.iter().map(|(k, r)| (k, r)));
    for object in &mut objects {
        let Some((key, resource)) = applied.iter().find(|(key, _)| {
            outcome::object_kind(key.kind) == object.kind
                && key.namespace == object.namespace
                && key.name == object.name
        }) else {
            continue;
        };
        object.spec = Some(resource.spec_json());
        object.related = related.remove(key).unwrap_or_default();
    }
    objects.sort_by(|a, b| {
        (kind_rank(a.kind), &a.namespace, &a.name).cmp(&(kind_rank(b.kind), &b.namespace, &b.name))
    });
    Ok(objects)
}

/// The order the report lists kinds in (the order objects depend on one another).
fn kind_rank(kind: ObjectKind) -> u8 {
    match kind {
        ObjectKind::Server => 0,
        ObjectKind::Issuer => 1,
        ObjectKind::Certificate => 2,
        ObjectKind::Package => 3,
        ObjectKind::Activation => 4,
        ObjectKind::Affectation => 5,
        ObjectKind::Gateway => 6,
    }
}

/// One status file as [`write`] wrote it, back as the report's object.
fn parse_status_file(text: &str) -> Option<ObjectReport> {
    let document: Value = serde_saphyr::from_str(text).ok()?;
    let metadata = document.get("metadata")?;
    let mut status = document.get("status")?.as_object()?.clone();
    let observed_generation = status.remove("observedGeneration").and_then(|v| v.as_i64());
    let source_revision = status
        .remove("sourceRevision")
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let conditions = serde_json::from_value(status.remove("conditions")?).ok()?;
    status.retain(|_, value| !value.is_null());
    Some(ObjectReport {
        api_version: document.get("apiVersion")?.as_str()?.to_owned(),
        kind: serde_json::from_value(document.get("kind")?.clone()).ok()?,
        namespace: metadata.get("namespace")?.as_str()?.to_owned(),
        name: metadata.get("name")?.as_str()?.to_owned(),
        source: document
            .get("source")
            .filter(|s| !s.is_null())
            .and_then(|s| serde_json::from_value(s.clone()).ok()),
        generation: metadata.get("generation")?.as_i64()?,
        observed_generation,
        source_revision,
        details: status,
        conditions,
        problems: document
            .get("problems")
            .and_then(|p| serde_json::from_value(p.clone()).ok())
            .unwrap_or_default(),
        spec: None,
        related: Vec::new(),
    })
}

/// Every `.yaml` file below `dir` (none when it does not exist).
fn collect_yaml(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            collect_yaml(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "yaml") {
            out.push(path);
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::admin::{ConditionReport, ConditionStatus, ConditionType, SourceRef};

    #[test]
    fn status_files_read_back_as_the_objects_written() {
        let object = |kind, name: &str| ObjectReport {
            api_version: "tessera.dev/v1alpha1".into(),
            kind,
            namespace: "default".into(),
            name: name.into(),
            source: Some(SourceRef {
                file: "p.yaml".into(),
                line: 3,
            }),
            generation: 2,
            observed_generation: Some(1),
            source_revision: "abc".into(),
            details: json!({"packageId": "1700000001", "fragments": 2})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            conditions: vec![ConditionReport {
                type_: ConditionType::Ready,
                status: ConditionStatus::True,
                reason: "Built".into(),
                message: "package 1700000001".into(),
                last_transition_time: "2026-01-01T00:00:00Z".into(),
            }],
            problems: vec![],
            spec: None,
            related: vec![],
        };
        let report = Report {
            revision: "abc".into(),
            ready: true,
            objects: vec![
                object(ObjectKind::Package, "hello"),
                object(ObjectKind::Issuer, "ca"),
            ],
            ..Report::default()
        };
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path()).unwrap().is_empty(), "no status yet");
        write(dir.path(), &report).unwrap();
        let back = read(dir.path()).unwrap();
        assert_eq!(
            back,
            [
                object(ObjectKind::Issuer, "ca"),
                object(ObjectKind::Package, "hello")
            ]
        );
    }
}
