//! What every kind shares: identity (`Kind`, `ObjectKey`), references between objects, and the
//! status fields every kind carries (`observedGeneration` and kstatus conditions).

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of every Tessera kind.
pub const GROUP: &str = "tessera.dev";
/// The API version of every Tessera kind.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as written in documents.
pub const API_VERSION: &str = "tessera.dev/v1alpha1";
/// The namespace of an object whose document names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The kinds Tessera understands, in the order they depend on each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    Issuer,
    Certificate,
    Server,
    Gateway,
    Package,
    Activation,
    Affectation,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Self; 7] = [
        Self::Issuer,
        Self::Certificate,
        Self::Server,
        Self::Gateway,
        Self::Package,
        Self::Activation,
        Self::Affectation,
    ];

    /// The name as written in `kind:`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Issuer => "Issuer",
            Self::Certificate => "Certificate",
            Self::Server => "Server",
            Self::Gateway => "Gateway",
            Self::Package => "Package",
            Self::Activation => "Activation",
            Self::Affectation => "Affectation",
        }
    }

    /// The kind named by `kind:`, exactly as Kubernetes matches it (case-sensitive).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who an object is: its kind, namespace and name. Shown as `Kind/name`, or
/// `Kind/namespace/name` outside the default namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    /// The key of `kind` named `name` in `namespace`.
    pub fn new(kind: Kind, namespace: &str, name: &str) -> Self {
        Self {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    /// The key of an object of `kind` named by a reference from an object in `namespace`.
    pub fn referenced(kind: Kind, namespace: &str, reference: &LocalRef) -> Self {
        Self::new(kind, namespace, &reference.name)
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace == DEFAULT_NAMESPACE {
            write!(f, "{}/{}", self.kind, self.name)
        } else {
            write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// A reference to another object of a known kind in the same namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LocalRef {
    /// Name of the referenced object, in the same namespace as this one.
    pub name: String,
}

/// The kstatus condition a status is `Ready` by, as written in `status.conditions[].type`
/// (for readers of the status as JSON; reconcile writes it from a typed condition, and a
/// test there checks the two agree).
pub const CONDITION_READY: &str = "Ready";
/// The kstatus condition saying nothing changes until someone acts.
pub const CONDITION_STALLED: &str = "Stalled";
/// A condition's `status` when it holds.
pub const CONDITION_TRUE: &str = "True";

/// The status fields every kind has.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommonStatus {
    /// The `metadata.generation` that the rest of this status describes. Lower than the
    /// object's generation while a newer version is being applied or was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The revision of the configuration this status was reconciled from: the commit of a
    /// git source, a content digest of a directory, a digest of every watched object's spec
    /// in Kubernetes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_revision: Option<String>,
    /// kstatus conditions: `Ready`, `Reconciling` and `Stalled`, each with a reason and a
    /// message in plain words.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The operating systems a package can target and an affectation can select.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Os {
    /// Microsoft Windows: packages are zip archives.
    Windows,
    /// Linux: packages are tar.gz archives.
    Linux,
    /// macOS: packages are tar.gz archives.
    Macos,
}

impl fmt::Display for Os {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Windows => "windows",
            Self::Linux => "linux",
            Self::Macos => "macos",
        })
    }
}
