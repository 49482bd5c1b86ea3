//! `tessera plan`: what serving a configuration would change, compared with what a server
//! last applied (its `applied.json`) and the computers in its state database: objects added,
//! changed or removed, packages built, rebuilt or removed, certificates issued or renewed,
//! and per activation the computers that would receive its package or lose it.
//!
//! Pure: the caller reads the files and builds the new packages in a scratch directory, so
//! the package ids compared are the ones the server would make. Targeting is the server's own
//! ([`deployments::wanted`]), so plan and serve agree on who gets what. Staged rollouts and
//! schedules are left out: a plan shows where a change ends, not its pace.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::desired::DesiredState;
use crate::reconcile::routes::{family, qualified};
use crate::reconcile::status::Applied;
use crate::resources::{CertificateStatus, Kind, ObjectKey, Resource};
use crate::server::deployments::{self, Assignment, Selector};
use crate::store::db::Computer;

mod render;

pub use render::{Heading, write_plan};

/// How many computer names a plan shows per list; the count is always whole.
pub const SAMPLE: usize = 10;

/// One side of the comparison: objects acted on, their package ids and status fields.
#[derive(Clone, Debug, Default)]
pub struct Side {
    pub revision: Option<String>,
    pub resources: BTreeMap<ObjectKey, Resource>,
    pub package_ids: HashMap<ObjectKey, String>,
    pub details: HashMap<ObjectKey, Map<String, Value>>,
}

impl Side {
    /// What a server last applied. Documents that no longer read (written by another
    /// version) are left out and named in the returned list.
    pub fn applied(applied: &Applied) -> (Self, Vec<String>) {
        let mut side = Self {
            revision: Some(applied.revision.clone()),
            ..Self::default()
        };
        let mut unreadable = Vec::new();
        for object in &applied.objects {
            match Resource::from_document(object.resource.clone()) {
                Ok(resource) => {
                    let key = resource.key();
                    if let Some(id) = object.details.get("packageId").and_then(Value::as_str)
                        && key.kind == Kind::Package
                    {
                        side.package_ids.insert(key.clone(), id.to_owned());
                    }
                    side.details.insert(key.clone(), object.details.clone());
                    side.resources.insert(key, resource);
                }
                Err(error) => unreadable.push(format!(
                    "{}/{}: {error}",
                    object.resource["kind"].as_str().unwrap_or("?"),
                    object.resource["metadata"]["name"].as_str().unwrap_or("?")
                )),
            }
        }
        (side, unreadable)
    }

    /// A configuration's desired state, with the ids its packages build to.
    pub fn desired(desired: &DesiredState, package_ids: HashMap<ObjectKey, String>) -> Self {
        Self {
            revision: Some(desired.revision.clone()),
            resources: desired
                .actionable()
                .map(|(key, resource)| (key.clone(), resource.clone()))
                .collect(),
            package_ids,
            details: HashMap::new(),
        }
    }
}

/// Everything a plan found.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// The revision the server last applied; `None` when it has applied nothing yet.
    pub applied_revision: Option<String>,
    pub revision: Option<String>,
    pub objects: Vec<ObjectChange>,
    pub packages: Vec<PackageChange>,
    pub certificates: Vec<CertificateChange>,
    pub deployments: Vec<DeploymentChange>,
    /// Computers known to the state database.
    pub computers: usize,
}

impl Plan {
    /// Whether applying the configuration would change anything.
    pub fn changes(&self) -> bool {
        !(self.objects.is_empty()
            && self.packages.is_empty()
            && self.certificates.is_empty()
            && self.deployments.is_empty())
    }
}

/// An object added, changed (its spec) or removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ObjectChange {
    pub object: String,
    pub change: Change,
}

/// What happens to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Add,
    Change,
    Remove,
}

/// A package built, rebuilt (a new id) or removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PackageChange {
    pub package: String,
    pub action: PackageAction,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// What happens to a package.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageAction {
    Build,
    Rebuild,
    Remove,
}

/// A certificate issued, renewed or removed, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CertificateChange {
    pub certificate: String,
    pub action: CertificateAction,
    pub reason: String,
}

/// What happens to a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CertificateAction {
    Issue,
    Renew,
    Remove,
}

/// The computers that would receive or lose one activation's package.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentChange {
    /// `namespace/name` of the Activation.
    pub activation: String,
    /// `namespace/name` of the Package.
    pub package: String,
    /// The package id received, or lost when nothing is received.
    pub package_id: String,
    pub receive: Sample,
    pub lose: Sample,
}

/// A count of computers and the first `SAMPLE` names, sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Sample {
    pub count: usize,
    pub names: Vec<String>,
}

impl Sample {
    fn of(mut names: Vec<String>) -> Self {
        names.sort();
        let count = names.len();
        names.truncate(SAMPLE);
        Self { count, names }
    }
}

/// Compares `after` with `before` for `computers` at `now`.
pub fn plan(before: &Side, after: &Side, computers: &[Computer], now: jiff::Timestamp) -> Plan {
    Plan {
        applied_revision: before.revision.clone(),
        revision: after.revision.clone(),
        objects: objects(before, after),
        packages: packages(before, after),
        certificates: certificates(before, after, now),
        deployments: deployment_changes(before, after, computers),
        computers: computers.len(),
    }
}

fn objects(before: &Side, after: &Side) -> Vec<ObjectChange> {
    let keys: BTreeSet<&ObjectKey> = before
        .resources
        .keys()
        .chain(after.resources.keys())
        .collect();
    keys.into_iter()
        .filter_map(|key| {
            let change = match (before.resources.get(key), after.resources.get(key)) {
                (None, Some(_)) => Change::Add,
                (Some(_), None) => Change::Remove,
                (Some(b), Some(a)) if b.spec_json() != a.spec_json() => Change::Change,
                _ => return None,
            };
            Some(ObjectChange {
                object: key.to_string(),
                change,
            })
        })
        .collect()
}

fn packages(before: &Side, after: &Side) -> Vec<PackageChange> {
    let mut found = Vec::new();
    for key in after.resources.keys().filter(|k| k.kind == Kind::Package) {
        let (from, to) = (before.package_ids.get(key), after.package_ids.get(key));
        let action = match (from, to) {
            (None, _) => PackageAction::Build,
            (Some(from), Some(to)) if from != to => PackageAction::Rebuild,
            _ => continue,
        };
        found.push(PackageChange {
            package: key.to_string(),
            action,
            from: from.cloned(),
            to: to.cloned(),
        });
    }
    for key in before.resources.keys().filter(|k| k.kind == Kind::Package) {
        if !after.resources.contains_key(key) {
            found.push(PackageChange {
                package: key.to_string(),
                action: PackageAction::Remove,
                from: before.package_ids.get(key).cloned(),
                to: None,
            });
        }
    }
    found
}

fn certificates(before: &Side, after: &Side, now: jiff::Timestamp) -> Vec<CertificateChange> {
    let spec = |side: &Side, key: &ObjectKey| side.resources.get(key).map(Resource::spec_json);
    let mut found = Vec::new();
    for (key, resource) in &after.resources {
        let Resource::Certificate(certificate) = resource else {
            continue;
        };
        let issuer =
            ObjectKey::referenced(Kind::Issuer, &key.namespace, &certificate.spec.issuer_ref);
        let status = before.details.get(key).and_then(|d| {
            serde_json::from_value::<CertificateStatus>(Value::Object(d.clone())).ok()
        });
        let renewal = status
            .as_ref()
            .and_then(|s| s.renewal_time.as_ref())
            .map(|t| t.0);
        let issued = status.is_some_and(|s| s.not_after.is_some());
        let (action, reason) = if !before.resources.contains_key(key) {
            (CertificateAction::Issue, "a new Certificate".to_owned())
        } else if spec(before, key) != spec(after, key) {
            (CertificateAction::Issue, "its spec changed".to_owned())
        } else if spec(before, &issuer) != spec(after, &issuer) {
            (CertificateAction::Issue, format!("{issuer} changed"))
        } else if !issued {
            (CertificateAction::Issue, "not issued yet".to_owned())
        } else if let Some(at) = renewal.filter(|at| *at <= now) {
            (CertificateAction::Renew, format!("due since {at}"))
        } else {
            continue;
        };
        found.push(CertificateChange {
            certificate: key.to_string(),
            action,
            reason,
        });
    }
    for key in before
        .resources
        .keys()
        .filter(|k| k.kind == Kind::Certificate)
    {
        if !after.resources.contains_key(key) {
            found.push(CertificateChange {
                certificate: key.to_string(),
                action: CertificateAction::Remove,
                reason: "no longer declared".to_owned(),
            });
        }
    }
    found
}

/// Every Affectation of `side` whose package has an id, as the server resolves it.
fn assignments(side: &Side) -> Vec<Assignment> {
    let mut found = Vec::new();
    for (key, resource) in &side.resources {
        let Resource::Affectation(affectation) = resource else {
            continue;
        };
        let spec = &affectation.spec;
        let activation_key =
            ObjectKey::referenced(Kind::Activation, &key.namespace, &spec.activation_ref);
        let Some(Resource::Activation(activation)) = side.resources.get(&activation_key) else {
            continue;
        };
        let package_key =
            ObjectKey::referenced(Kind::Package, &key.namespace, &activation.spec.package_ref);
        let (Some(Resource::Package(package)), Some(id)) = (
            side.resources.get(&package_key),
            side.package_ids.get(&package_key),
        ) else {
            continue;
        };
        let targets = &spec.targets;
        let Ok(selector) = Selector::new(
            targets.all,
            &targets.names,
            &targets.name_globs,
            &targets.tags,
            targets.os.iter().map(|os| family(*os)).collect(),
        ) else {
            continue;
        };
        found.push(Assignment {
            affectation: qualified(key),
            activation: qualified(&activation_key),
            package: qualified(&package_key),
            package_id: id.clone(),
            package_os: family(package.spec.os),
            selector,
            redeploy: spec.redeploy.clone(),
            not_before: None,
            not_after: None,
            info_location: None,
            pack_location: None,
            share: 100,
            // Suspended by spec: nothing new would be offered (an operator's override is
            // the server's, not the configuration's).
            paused: spec.suspend || activation.spec.suspend,
        });
    }
    found
}

/// (activation, package, package id).
type Slot = (String, String, String);

fn deployment_changes(
    before: &Side,
    after: &Side,
    computers: &[Computer],
) -> Vec<DeploymentChange> {
    let (old, new) = (assignments(before), assignments(after));
    // Per slot: (receive, lose).
    let mut lists: BTreeMap<Slot, (Vec<String>, Vec<String>)> = BTreeMap::new();
    for computer in computers {
        let name = if computer.name.is_empty() {
            computer.device_id.clone()
        } else {
            computer.name.clone()
        };
        let had = deployments::wanted(&old, computer);
        let has = deployments::wanted(&new, computer);
        for wanted in &has {
            // A suspended assignment offered nothing: lifting it reaches its targets.
            let unchanged = had.iter().any(|h| {
                !h.assignment.paused
                    && h.activation == wanted.activation
                    && h.package_id == wanted.package_id
                    && h.token == wanted.token
            });
            // Serve settles an installed package without offering it, unless re-armed.
            let installed = computer.history.iter().any(|id| id == wanted.package_id);
            if unchanged || (installed && !wanted.forced()) || wanted.assignment.paused {
                continue;
            }
            let slot = (
                wanted.activation.to_owned(),
                wanted.package.to_owned(),
                wanted.package_id.to_owned(),
            );
            lists.entry(slot).or_default().0.push(name.clone());
        }
        for lost in had
            .iter()
            .filter(|h| !has.iter().any(|w| w.activation == h.activation))
        {
            let slot = (
                lost.activation.to_owned(),
                lost.package.to_owned(),
                lost.package_id.to_owned(),
            );
            lists.entry(slot).or_default().1.push(name.clone());
        }
    }
    lists
        .into_iter()
        .map(
            |((activation, package, package_id), (receive, lose))| DeploymentChange {
                activation,
                package,
                package_id,
                receive: Sample::of(receive),
                lose: Sample::of(lose),
            },
        )
        .collect()
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{Snapshot, SourceFile};

    fn side(yaml: &str, ids: &[(&str, &str)]) -> Side {
        let snapshot = Snapshot {
            revision: "r".into(),
            files: vec![SourceFile {
                path: "all.yaml".into(),
                text: yaml.into(),
            }],
            problems: vec![],
            root: None,
        };
        let desired = crate::desired::evaluate(&snapshot, None, Default::default());
        assert!(desired.problems.is_empty(), "{:?}", desired.problems);
        let ids = ids
            .iter()
            .map(|(name, id)| {
                (
                    ObjectKey::new(Kind::Package, "default", name),
                    (*id).to_owned(),
                )
            })
            .collect();
        Side::desired(&desired, ids)
    }

    fn deploy(name: &str, targets: &str) -> String {
        format!(
            "apiVersion: tessera.dev/v1alpha1\nkind: Package\nmetadata:\n  name: {name}\nspec:\n  os: linux\n  action:\n    execute:\n      command: 'true'\n---\napiVersion: tessera.dev/v1alpha1\nkind: Activation\nmetadata:\n  name: {name}\nspec:\n  packageRef:\n    name: {name}\n---\napiVersion: tessera.dev/v1alpha1\nkind: Affectation\nmetadata:\n  name: {name}\nspec:\n  activationRef:\n    name: {name}\n  targets:\n{targets}\n---\n"
        )
    }

    fn computer(name: &str, tags: &[&str], history: &[&str]) -> Computer {
        Computer {
            device_id: format!("{name}-id"),
            name: name.into(),
            os_name: "Debian GNU/Linux 12".into(),
            os_version: String::new(),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            ip_addresses: vec![],
            history: history.iter().map(|t| (*t).to_owned()).collect(),
            first_seen: 0,
            last_contact: 0,
            last_inventory: Some(0),
            address: None,
        }
    }

    #[test]
    fn the_same_configuration_changes_nothing() {
        let config = deploy("a", "    tags: [lab]");
        let before = side(&config, &[("a", "1000000001")]);
        let found = plan(
            &before,
            &before,
            &[computer("pc1", &["lab"], &[])],
            jiff::Timestamp::UNIX_EPOCH,
        );
        assert!(!found.changes(), "{found:?}");
    }

    #[test]
    fn new_targets_receive_old_targets_lose_and_installed_ones_are_left_alone() {
        let before = side(
            &(deploy("a", "    tags: [lab]") + &deploy("b", "    all: true")),
            &[("a", "1000000001"), ("b", "1000000002")],
        );
        let after = side(
            &(deploy("a", "    tags: [lab, office]") + &deploy("c", "    all: true")),
            &[("a", "1000000001"), ("c", "1000000003")],
        );
        let computers = [
            computer("lab1", &["lab"], &["1000000001"]),
            computer("office1", &["office"], &[]),
            computer("office2", &["office"], &["1000000001"]),
        ];
        let found = plan(&before, &after, &computers, jiff::Timestamp::UNIX_EPOCH);
        let a = found
            .deployments
            .iter()
            .find(|d| d.activation == "default/a")
            .unwrap();
        assert_eq!(
            a.receive.names,
            ["office1"],
            "office2 has it installed already"
        );
        assert_eq!(a.lose.count, 0);
        let b = found
            .deployments
            .iter()
            .find(|d| d.activation == "default/b")
            .unwrap();
        assert_eq!((b.receive.count, b.lose.count), (0, 3));
        let c = found
            .deployments
            .iter()
            .find(|d| d.activation == "default/c")
            .unwrap();
        assert_eq!(c.receive.names, ["lab1", "office1", "office2"]);
        assert_eq!(
            found.packages,
            [
                PackageChange {
                    package: "Package/c".into(),
                    action: PackageAction::Build,
                    from: None,
                    to: Some("1000000003".into()),
                },
                PackageChange {
                    package: "Package/b".into(),
                    action: PackageAction::Remove,
                    from: Some("1000000002".into()),
                    to: None,
                },
            ]
        );
        assert!(found.objects.contains(&ObjectChange {
            object: "Affectation/a".into(),
            change: Change::Change
        }));
    }

    #[test]
    fn a_suspended_affectation_would_reach_no_one_until_its_suspension_is_lifted() {
        let ids = [("a", "1000000001")];
        let plain = side(&deploy("a", "    tags: [lab]"), &ids);
        let suspended = side(&deploy("a", "    tags: [lab]\n  suspend: true"), &ids);
        let computers = [computer("pc1", &["lab"], &[])];
        let now = jiff::Timestamp::UNIX_EPOCH;
        let empty = Side::default();
        let held = plan(&empty, &suspended, &computers, now);
        assert!(
            held.deployments.iter().all(|d| d.receive.count == 0),
            "{held:?}"
        );
        let lifted = plan(&suspended, &plain, &computers, now);
        let a = lifted
            .deployments
            .iter()
            .find(|d| d.activation == "default/a")
            .expect("pc1 would receive it");
        assert_eq!(
            (a.receive.names.as_slice(), a.lose.count),
            (&["pc1".to_owned()][..], 0)
        );
    }

    #[test]
    fn a_rebuilt_package_reaches_its_targets_again_and_samples_are_capped() {
        let config = deploy("a", "    all: true");
        let before = side(&config, &[("a", "1000000001")]);
        let after = side(&config, &[("a", "1000000009")]);
        let computers: Vec<Computer> = (0..25)
            .map(|i| computer(&format!("pc{i:02}"), &[], &["1000000001"]))
            .collect();
        let found = plan(&before, &after, &computers, jiff::Timestamp::UNIX_EPOCH);
        assert_eq!(found.packages[0].action, PackageAction::Rebuild);
        let a = &found.deployments[0];
        assert_eq!((a.receive.count, a.receive.names.len()), (25, SAMPLE));
        assert_eq!(a.package_id, "1000000009");
    }

    #[test]
    fn certificates_are_issued_when_new_or_changed_and_renewed_when_due() {
        let issuer = "apiVersion: tessera.dev/v1alpha1\nkind: Issuer\nmetadata:\n  name: ca\nspec:\n  selfSigned: {}\n---\n";
        let certificate = |cn: &str| {
            format!(
                "apiVersion: tessera.dev/v1alpha1\nkind: Certificate\nmetadata:\n  name: web\nspec:\n  issuerRef:\n    name: ca\n  commonName: {cn}\n  dnsNames: [{cn}]\n---\n"
            )
        };
        let mut before = side(&format!("{issuer}{}", certificate("a.example")), &[]);
        let key = ObjectKey::new(Kind::Certificate, "default", "web");
        let mut details = Map::new();
        details.insert("notAfter".into(), "2030-01-01T00:00:00Z".into());
        details.insert("renewalTime".into(), "2029-09-01T00:00:00Z".into());
        before.details.insert(key, details);

        let same = side(&format!("{issuer}{}", certificate("a.example")), &[]);
        let early: jiff::Timestamp = "2029-01-01T00:00:00Z".parse().unwrap();
        assert!(plan(&before, &same, &[], early).certificates.is_empty());
        let late: jiff::Timestamp = "2029-10-01T00:00:00Z".parse().unwrap();
        let renewals = plan(&before, &same, &[], late).certificates;
        assert_eq!(renewals[0].action, CertificateAction::Renew, "{renewals:?}");

        let changed = side(&format!("{issuer}{}", certificate("b.example")), &[]);
        let found = plan(&before, &changed, &[], early).certificates;
        assert_eq!(
            (found[0].action, found[0].reason.as_str()),
            (CertificateAction::Issue, "its spec changed")
        );
    }
}
