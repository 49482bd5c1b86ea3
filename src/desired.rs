//! Snapshot → desired state: every object that should exist, the version of it to serve, and
//! every problem, each naming file, line, object and field. Pure: no tokio, no I/O.
//!
//! A broken document never takes down what already runs: when a valid object turns invalid,
//! its last valid version stays served and the problem is reported against it. Objects whose
//! file was deleted are pruned, unless the whole source suddenly reads as empty.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use crate::resources::certificate::KeyUsage;
use crate::resources::parse::{FieldLines, Origin, SourcedObject, parse_file};
use crate::resources::{Kind, ObjectKey, Problem, Resource, Snapshot};

/// How to evaluate a snapshot.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Accept a snapshot with no objects at all as "delete everything". Off by default: an
    /// empty read is far more often a broken mount or checkout than an intent.
    pub allow_empty: bool,
}

/// What should exist, as of one snapshot.
#[derive(Clone, Debug, Default)]
pub struct DesiredState {
    /// The snapshot's revision.
    pub revision: String,
    /// Every object seen, valid or not, by key.
    pub entries: BTreeMap<ObjectKey, Entry>,
    /// Every problem, sorted by file and line; those about an object are also in its entry.
    pub problems: Vec<Problem>,
    /// True when the empty-source guard kept the previous state.
    pub held_back: bool,
}

/// One object of the desired state.
#[derive(Clone, Debug)]
pub struct Entry {
    pub key: ObjectKey,
    /// Where the latest version was read, when known.
    pub origin: Option<Origin>,
    /// Line of each field of the version read, to place problems found later.
    pub lines: FieldLines,
    /// Generation of the latest version read: it grows each time the spec changes.
    pub generation: i64,
    /// The version to act on.
    pub served: Served,
    /// Problems of the latest version itself (parse and validation).
    pub problems: Vec<Problem>,
    /// Problems with what the object refers to: it is kept but not acted on.
    pub dependency_problems: Vec<Problem>,
}

/// Which version of an object is acted on.
#[derive(Clone, Debug)]
pub enum Served {
    /// The latest version, which is valid.
    Current(Box<Resource>),
    /// The latest version is invalid; the last valid one, of an earlier generation, is kept.
    LastGood {
        resource: Box<Resource>,
        generation: i64,
    },
    /// The latest version is invalid and no valid version was ever seen.
    Nothing,
}

impl Entry {
    /// The version to act on, if any.
    pub fn resource(&self) -> Option<&Resource> {
        match &self.served {
            Served::Current(resource) | Served::LastGood { resource, .. } => Some(resource),
            Served::Nothing => None,
        }
    }

    /// The generation of the version acted on.
    pub fn observed_generation(&self) -> Option<i64> {
        match &self.served {
            Served::Current(_) => Some(self.generation),
            Served::LastGood { generation, .. } => Some(*generation),
            Served::Nothing => None,
        }
    }

    /// Whether reconcile should act on this object: there is a version to act on and
    /// everything it refers to exists.
    pub fn is_actionable(&self) -> bool {
        self.resource().is_some() && self.dependency_problems.is_empty()
    }
}

impl DesiredState {
    /// The objects to act on, with their keys.
    pub fn actionable(&self) -> impl Iterator<Item = (&ObjectKey, &Resource)> {
        self.entries
            .iter()
            .filter(|(_, entry)| entry.is_actionable())
            .filter_map(|(key, entry)| entry.resource().map(|r| (key, r)))
    }

    /// Number of objects of each kind, for logs.
    pub fn count(&self, kind: Kind) -> usize {
        self.entries.keys().filter(|key| key.kind == kind).count()
    }
}

/// Evaluates `snapshot` against the `previous` desired state (None on the first pass).
pub fn evaluate(
    snapshot: &Snapshot,
    previous: Option<&DesiredState>,
    options: Options,
) -> DesiredState {
    let mut problems: Vec<Problem> = snapshot.problems.clone();
    let (valid, broken, incomplete_files) = read_files(snapshot, &mut problems);

    let seen_anything = !valid.is_empty() || !broken.is_empty() || !incomplete_files.is_empty();
    if let Some(previous) = previous
        && !seen_anything
        && !previous.entries.is_empty()
        && !options.allow_empty
    {
        let mut held = previous.clone();
        held.revision = snapshot.revision.clone();
        held.held_back = true;
        problems.push(Problem::general(format!(
            "the source has no objects at all while {} were served before: nothing was removed \
             (if emptying the configuration is intended, run with --allow-empty)",
            previous.entries.len()
        )));
        held.problems = sorted(problems);
        return held;
    }

    let mut entries: BTreeMap<ObjectKey, Entry> = BTreeMap::new();
    let before = |key: &ObjectKey| previous.and_then(|p| p.entries.get(key));

    for (key, object) in valid {
        let prior = before(&key);
        let generation = object.resource.metadata().generation.unwrap_or_else(|| {
            match prior.and_then(|p| p.resource().map(|r| (p, r))) {
                Some((p, r))
                    if matches!(p.served, Served::Current(_))
                        && r.spec_json() == object.resource.spec_json() =>
                {
                    p.generation
                }
                Some((p, _)) => p.generation + 1,
                None => prior.map_or(1, |p| p.generation + 1),
            }
        });
        let mut resource = object.resource;
        resource.metadata_mut().generation = Some(generation);
        entries.insert(
            key.clone(),
            Entry {
                key,
                origin: Some(object.origin),
                lines: object.lines,
                generation,
                served: Served::Current(Box::new(resource)),
                problems: Vec::new(),
                dependency_problems: Vec::new(),
            },
        );
    }

    for (key, found) in broken {
        let prior = before(&key);
        entries.insert(key.clone(), refused(key, found, prior));
    }

    if let Some(previous) = previous {
        keep_from_incomplete_files(previous, &incomplete_files, &mut entries);
    }

    check_dependencies(&mut entries);

    for entry in entries.values() {
        problems.extend(entry.problems.iter().cloned());
        problems.extend(entry.dependency_problems.iter().cloned());
    }
    DesiredState {
        revision: snapshot.revision.clone(),
        entries,
        problems: sorted(problems),
        held_back: false,
    }
}

/// What [`read_files`] found: valid objects, refused ones, and files cut short.
type FilesRead<'a> = (
    BTreeMap<ObjectKey, SourcedObject>,
    BTreeMap<ObjectKey, Vec<Problem>>,
    BTreeSet<&'a str>,
);

/// Parses every file of `snapshot`: the valid objects (the first of a name declared twice),
/// the refused ones with their problems, and the files that stop at a syntax error. Problems
/// of no single object go to `problems`.
fn read_files<'a>(snapshot: &'a Snapshot, problems: &mut Vec<Problem>) -> FilesRead<'a> {
    let mut valid: BTreeMap<ObjectKey, SourcedObject> = BTreeMap::new();
    let mut broken: BTreeMap<ObjectKey, Vec<Problem>> = BTreeMap::new();
    let mut incomplete_files: BTreeSet<&str> = BTreeSet::new();

    for file in &snapshot.files {
        let parsed = parse_file(&file.path, &file.text);
        if !parsed.complete {
            incomplete_files.insert(&file.path);
        }
        for object in parsed.objects {
            let key = object.resource.key();
            if let Some(first) = valid.get(&key) {
                problems.push(Problem {
                    file: Some(object.origin.file.clone()),
                    line: object
                        .lines
                        .line("metadata.name")
                        .or(Some(object.origin.line)),
                    object: Some(key.clone()),
                    field: Some("metadata.name".into()),
                    message: format!(
                        "{key} is declared twice: the first declaration, at {}:{}, is used",
                        first.origin.file, first.origin.line
                    ),
                });
                continue;
            }
            valid.insert(key, object);
        }
        for problem in parsed.problems {
            match &problem.object {
                Some(key) => broken.entry(key.clone()).or_default().push(problem),
                None => problems.push(problem),
            }
        }
    }
    // A key both valid and broken was declared twice, once badly: the valid one is served and
    // the broken one is reported as a plain problem.
    broken.retain(|key, found| {
        if valid.contains_key(key) {
            problems.append(found);
            false
        } else {
            true
        }
    });
    (valid, broken, incomplete_files)
}

/// Objects last read from a file that now stops at a syntax error: the rest of that file
/// is unknown, so they are kept as they were rather than taken as deleted.
fn keep_from_incomplete_files(
    previous: &DesiredState,
    incomplete_files: &BTreeSet<&str>,
    entries: &mut BTreeMap<ObjectKey, Entry>,
) {
    for (key, prior) in &previous.entries {
        let from_incomplete = prior
            .origin
            .as_ref()
            .is_some_and(|origin| incomplete_files.contains(origin.file.as_str()));
        if from_incomplete && !entries.contains_key(key) {
            let problem = Problem {
                file: prior.origin.as_ref().map(|o| o.file.clone()),
                line: None,
                object: Some(key.clone()),
                field: None,
                message: "its file has a YAML syntax error before this object; the last valid version is kept".into(),
            };
            entries.insert(
                key.clone(),
                refused(key.clone(), vec![problem], Some(prior)),
            );
        }
    }
}

/// The entry of an object whose latest version was refused.
fn refused(key: ObjectKey, problems: Vec<Problem>, prior: Option<&Entry>) -> Entry {
    let origin = problems.first().and_then(|p| {
        Some(Origin {
            file: p.file.clone()?,
            line: p.line.unwrap_or(1),
        })
    });
    let (generation, served) = match prior {
        Some(Entry {
            served: Served::Current(resource),
            generation,
            ..
        }) => (
            generation + 1,
            Served::LastGood {
                resource: resource.clone(),
                generation: *generation,
            },
        ),
        Some(prior) => (prior.generation, prior.served.clone()),
        None => (1, Served::Nothing),
    };
    Entry {
        key,
        origin: origin.or_else(|| prior.and_then(|p| p.origin.clone())),
        lines: prior.map(|p| p.lines.clone()).unwrap_or_default(),
        generation,
        served,
        problems,
        dependency_problems: Vec::new(),
    }
}

/// Reference checks: each object's references must name an object that exists and has a
/// version to act on; at most one Server; a Server's certificate must allow server auth.
fn check_dependencies(entries: &mut BTreeMap<ObjectKey, Entry>) {
    let usable: HashMap<ObjectKey, Option<Resource>> = entries
        .iter()
        .map(|(key, entry)| (key.clone(), entry.resource().cloned()))
        .collect();
    let servers: Vec<ObjectKey> = entries
        .keys()
        .filter(|key| key.kind == Kind::Server)
        .cloned()
        .collect();

    for entry in entries.values_mut() {
        let Some(resource) = entry.resource() else {
            continue;
        };
        let place = |field: &str, message: String| Problem {
            file: entry.origin.as_ref().map(|o| o.file.clone()),
            line: entry
                .lines
                .line(field)
                .or(entry.origin.as_ref().map(|o| o.line)),
            object: Some(entry.key.clone()),
            field: Some(field.to_owned()),
            message,
        };
        let mut found = Vec::new();
        for (field, target) in resource.references() {
            match usable.get(&target) {
                None => found.push(place(
                    &field,
                    format!("refers to {target}, which does not exist"),
                )),
                Some(None) => found.push(place(
                    &field,
                    format!("refers to {target}, which is invalid (see its problems)"),
                )),
                Some(Some(Resource::Certificate(certificate))) => {
                    let needed = match (resource, field.as_str()) {
                        (Resource::Server(_), "spec.certificateRef")
                        | (Resource::Gateway(_), "spec.certificateRef") => {
                            Some(KeyUsage::ServerAuth)
                        }
                        (Resource::Gateway(_), "spec.backendCertificateRef") => {
                            Some(KeyUsage::ClientAuth)
                        }
                        _ => None,
                    };
                    let usages = &certificate.spec.usages;
                    if let Some(needed) = needed
                        && !usages.is_empty()
                        && !usages.contains(&needed)
                    {
                        let name = match needed {
                            KeyUsage::ServerAuth => "server auth",
                            _ => "client auth",
                        };
                        found.push(place(
                            &field,
                            format!(
                                "{target} does not list the usage `{name}` that this use needs"
                            ),
                        ));
                    }
                }
                Some(Some(_)) => {}
            }
        }
        if entry.key.kind == Kind::Server && servers.first() != Some(&entry.key) {
            found.push(place(
                "metadata.name",
                format!(
                    "only one Server may be declared; {} is the one in use",
                    servers[0]
                ),
            ));
        }
        entry.dependency_problems = found;
    }
}

fn sorted(mut problems: Vec<Problem>) -> Vec<Problem> {
    problems.sort_by(|a, b| {
        (a.file.as_deref(), a.line, &a.object, &a.field, &a.message).cmp(&(
            b.file.as_deref(),
            b.line,
            &b.object,
            &b.field,
            &b.message,
        ))
    });
    problems.dedup();
    problems
}

/// What happened to one object between two desired states.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Added(ObjectKey),
    Updated(ObjectKey),
    Removed(ObjectKey),
    /// The latest version is refused (the last valid one may still be served).
    Refused(ObjectKey),
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Added(key) => write!(f, "+{key}"),
            Self::Updated(key) => write!(f, "~{key}"),
            Self::Removed(key) => write!(f, "-{key}"),
            Self::Refused(key) => write!(f, "!{key}"),
        }
    }
}

/// The changes from `previous` to `next`, in key order.
pub fn changes(previous: &DesiredState, next: &DesiredState) -> Vec<Change> {
    let mut found = Vec::new();
    for (key, entry) in &next.entries {
        let refused = !matches!(entry.served, Served::Current(_));
        match previous.entries.get(key) {
            None if refused => found.push(Change::Refused(key.clone())),
            None => found.push(Change::Added(key.clone())),
            Some(before) if before.generation != entry.generation => {
                found.push(if refused {
                    Change::Refused(key.clone())
                } else {
                    Change::Updated(key.clone())
                });
            }
            Some(_) => {}
        }
    }
    for key in previous.entries.keys() {
        if !next.entries.contains_key(key) {
            found.push(Change::Removed(key.clone()));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::SourceFile;

    const PACKAGE: &str = "apiVersion: tessera.dev/v1alpha1\nkind: Package\nmetadata:\n  name: hello\nspec:\n  os: linux\n  priority: 5\n  action:\n    execute:\n      command: echo hi\n";

    fn snapshot(files: &[(&str, &str)]) -> Snapshot {
        Snapshot {
            revision: "r".into(),
            files: files
                .iter()
                .map(|(path, text)| SourceFile {
                    path: (*path).into(),
                    text: (*text).into(),
                })
                .collect(),
            problems: Vec::new(),
            root: None,
        }
    }

    fn key(kind: Kind, name: &str) -> ObjectKey {
        ObjectKey::new(kind, "default", name)
    }

    #[test]
    fn a_valid_object_is_current_at_generation_one() {
        let state = evaluate(&snapshot(&[("p.yaml", PACKAGE)]), None, Options::default());
        assert!(state.problems.is_empty(), "{:?}", state.problems);
        let entry = &state.entries[&key(Kind::Package, "hello")];
        assert!(matches!(entry.served, Served::Current(_)));
        assert_eq!(entry.generation, 1);
        assert!(entry.is_actionable());
    }

    #[test]
    fn generation_grows_only_when_the_spec_changes() {
        let first = evaluate(&snapshot(&[("p.yaml", PACKAGE)]), None, Options::default());
        let same = evaluate(
            &snapshot(&[("p.yaml", PACKAGE)]),
            Some(&first),
            Options::default(),
        );
        assert_eq!(same.entries[&key(Kind::Package, "hello")].generation, 1);
        let edited = PACKAGE.replace("priority: 5", "priority: 7");
        let next = evaluate(
            &snapshot(&[("p.yaml", &edited)]),
            Some(&same),
            Options::default(),
        );
        assert_eq!(next.entries[&key(Kind::Package, "hello")].generation, 2);
        assert_eq!(
            changes(&same, &next),
            vec![Change::Updated(key(Kind::Package, "hello"))]
        );
    }

    #[test]
    fn a_broken_edit_keeps_the_last_good_version_and_reports_the_problem() {
        let first = evaluate(&snapshot(&[("p.yaml", PACKAGE)]), None, Options::default());
        let broken = PACKAGE.replace("priority: 5", "priority: 300");
        let next = evaluate(
            &snapshot(&[("p.yaml", &broken)]),
            Some(&first),
            Options::default(),
        );
        let entry = &next.entries[&key(Kind::Package, "hello")];
        match &entry.served {
            Served::LastGood {
                resource,
                generation,
            } => {
                assert_eq!(*generation, 1);
                let Resource::Package(p) = resource.as_ref() else {
                    panic!("not a package")
                };
                assert_eq!(p.spec.priority, 5);
            }
            other => panic!("expected the last good version, got {other:?}"),
        }
        assert_eq!(entry.generation, 2);
        assert_eq!(entry.observed_generation(), Some(1));
        assert_eq!(entry.problems.len(), 1);
        assert_eq!(entry.problems[0].field.as_deref(), Some("spec.priority"));
        assert_eq!(entry.problems[0].line, Some(7));
        // Fixing it serves the fix.
        let fixed = evaluate(
            &snapshot(&[("p.yaml", PACKAGE)]),
            Some(&next),
            Options::default(),
        );
        assert!(matches!(
            fixed.entries[&key(Kind::Package, "hello")].served,
            Served::Current(_)
        ));
    }

    #[test]
    fn an_object_invalid_from_the_start_is_listed_with_nothing_served() {
        let broken = PACKAGE.replace("os: linux", "os: beos");
        let state = evaluate(&snapshot(&[("p.yaml", &broken)]), None, Options::default());
        let entry = &state.entries[&key(Kind::Package, "hello")];
        assert!(matches!(entry.served, Served::Nothing));
        assert!(!entry.is_actionable());
        assert_eq!(entry.problems[0].line, Some(6));
    }

    #[test]
    fn deleting_a_file_removes_its_objects() {
        let other = PACKAGE.replace("name: hello", "name: other");
        let first = evaluate(
            &snapshot(&[("a.yaml", PACKAGE), ("b.yaml", &other)]),
            None,
            Options::default(),
        );
        let next = evaluate(
            &snapshot(&[("b.yaml", &other)]),
            Some(&first),
            Options::default(),
        );
        assert!(!next.entries.contains_key(&key(Kind::Package, "hello")));
        assert_eq!(
            changes(&first, &next),
            vec![Change::Removed(key(Kind::Package, "hello"))]
        );
    }

    #[test]
    fn an_empty_source_prunes_nothing_unless_allowed() {
        let first = evaluate(&snapshot(&[("p.yaml", PACKAGE)]), None, Options::default());
        let held = evaluate(&snapshot(&[]), Some(&first), Options::default());
        assert!(held.held_back);
        assert!(held.entries.contains_key(&key(Kind::Package, "hello")));
        assert!(
            held.problems
                .iter()
                .any(|p| p.message.contains("--allow-empty"))
        );
        let emptied = evaluate(&snapshot(&[]), Some(&first), Options { allow_empty: true });
        assert!(emptied.entries.is_empty());
        assert!(emptied.problems.is_empty());
    }

    #[test]
    fn a_syntax_error_keeps_the_objects_of_its_file() {
        let first = evaluate(&snapshot(&[("p.yaml", PACKAGE)]), None, Options::default());
        let next = evaluate(
            &snapshot(&[("p.yaml", "a: [1, 2\n")]),
            Some(&first),
            Options::default(),
        );
        let entry = &next.entries[&key(Kind::Package, "hello")];
        assert!(matches!(entry.served, Served::LastGood { .. }));
        assert!(
            next.problems
                .iter()
                .any(|p| p.message.contains("YAML syntax error"))
        );
    }

    #[test]
    fn missing_references_block_the_referring_object() {
        let activation = "apiVersion: tessera.dev/v1alpha1\nkind: Activation\nmetadata:\n  name: a\nspec:\n  packageRef:\n    name: missing\n";
        let state = evaluate(
            &snapshot(&[("a.yaml", activation)]),
            None,
            Options::default(),
        );
        let entry = &state.entries[&key(Kind::Activation, "a")];
        assert!(!entry.is_actionable());
        let problem = &entry.dependency_problems[0];
        assert_eq!(problem.field.as_deref(), Some("spec.packageRef"));
        assert!(
            problem
                .message
                .contains("Package/missing, which does not exist")
        );
    }

    #[test]
    fn a_second_declaration_of_a_name_is_reported_and_the_first_kept() {
        let state = evaluate(
            &snapshot(&[
                ("a.yaml", PACKAGE),
                ("b.yaml", &PACKAGE.replace("priority: 5", "priority: 1")),
            ]),
            None,
            Options::default(),
        );
        let problem = state
            .problems
            .iter()
            .find(|p| p.message.contains("declared twice"))
            .expect("duplicate reported");
        assert_eq!(problem.file.as_deref(), Some("b.yaml"));
        let Some(Resource::Package(p)) = state.entries[&key(Kind::Package, "hello")].resource()
        else {
            panic!("package missing")
        };
        assert_eq!(p.spec.priority, 5);
    }
}
