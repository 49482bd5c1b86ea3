//! The admin API's report: every object with its kstatus conditions and problems, typed
//! (`ObjectKind`, `ConditionType`, `ConditionStatus`) so a wrong kind or condition is a
//! compile error; serialized as the admin API, the status files and the CRD statuses show it.

use serde::{Deserialize, Serialize};

/// What the admin API shows: the latest reconcile's view of every object.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Revision of the configuration reconciled.
    pub revision: String,
    /// False until the first reconcile pass has finished.
    pub ready: bool,
    /// Every object, in kind then name order.
    pub objects: Vec<ObjectReport>,
    /// Problems that concern no single object (unreadable files, YAML syntax errors,
    /// unknown kinds).
    pub problems: Vec<ProblemReport>,
    /// Conditions of the server itself, when one is not `True` (status files that cannot
    /// be written, a state database that is full or lost): see [`STATUS_WRITTEN`] and
    /// [`STATE_DATABASE`].
    pub conditions: Vec<ConditionReport>,
}

/// The server's condition: the last pass wrote its status files (`False` with reason
/// `WriteFailed` while they cannot be written; retried every pass).
pub const STATUS_WRITTEN: ConditionType = ConditionType::StatusWritten;

/// The server's condition: the state database takes writes (`False` with reason `DiskFull`
/// or `DatabaseLost`).
pub const STATE_DATABASE: ConditionType = ConditionType::StateDatabaseWritable;

/// The kind of an object in the report, written as the resource kind is. Defined here
/// because the server imports nothing of `resources`; reconcile maps one onto the other
/// with exhaustive matches (`reconcile::outcome::object_kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ObjectKind {
    Server,
    Issuer,
    Certificate,
    Package,
    Activation,
    Affectation,
    Gateway,
}

impl ObjectKind {
    /// The kind as written (`Certificate`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Server => "Server",
            Self::Issuer => "Issuer",
            Self::Certificate => "Certificate",
            Self::Package => "Package",
            Self::Activation => "Activation",
            Self::Affectation => "Affectation",
            Self::Gateway => "Gateway",
        }
    }
}

impl std::fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The type of a condition: kstatus's three, cert-manager's `Issuing`, and the server's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConditionType {
    /// The desired state is achieved.
    Ready,
    /// Work is in flight; the object will change by itself.
    Reconciling,
    /// Nothing changes until someone acts.
    Stalled,
    /// A Certificate: an issuance is due (cert-manager's condition).
    Issuing,
    /// The server: the last pass wrote its status files.
    StatusWritten,
    /// The server: the state database takes writes.
    StateDatabaseWritable,
    /// A Server: OCS agents are served over plain HTTP (a warning; Ready is unaffected).
    PlainHttp,
}

impl ConditionType {
    /// The type as written (`Ready`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "Ready",
            Self::Reconciling => "Reconciling",
            Self::Stalled => "Stalled",
            Self::Issuing => "Issuing",
            Self::StatusWritten => "StatusWritten",
            Self::StateDatabaseWritable => "StateDatabaseWritable",
            Self::PlainHttp => "PlainHttp",
        }
    }
}

impl std::fmt::Display for ConditionType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The status of a condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    /// `True` or `False`.
    pub fn from_bool(value: bool) -> Self {
        if value { Self::True } else { Self::False }
    }

    /// The status as written (`True`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

/// One object as reconciled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReport {
    pub api_version: String,
    pub kind: ObjectKind,
    pub namespace: String,
    pub name: String,
    /// Where the latest version was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceRef>,
    /// Generation of the latest version read.
    pub generation: i64,
    /// Generation of the version in effect, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The revision of the configuration this status was reconciled from: the commit for a
    /// git source, a content digest for a directory.
    pub source_revision: String,
    /// The kind's own status fields (a Certificate's `notAfter`, `renewalTime`, `revision`...).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub details: serde_json::Map<String, serde_json::Value>,
    /// kstatus conditions.
    pub conditions: Vec<ConditionReport>,
    /// What is wrong with this object, if anything.
    pub problems: Vec<ProblemReport>,
    /// The spec of the version in effect (absent while none is), for `tessera describe`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<serde_json::Value>,
    /// The objects this one refers to and those that refer to it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub related: Vec<RelatedReport>,
}

/// An object related to another: one it names in its spec, or one that names it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RelatedReport {
    pub relation: Relation,
    pub kind: ObjectKind,
    pub namespace: String,
    pub name: String,
    /// The field that names the other object (on whichever side names it).
    pub field: String,
}

/// Which side of a reference an object is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Relation {
    /// This object names the other in its spec (an Activation its Package).
    RefersTo,
    /// The other object names this one (a Package's Activations).
    ReferredBy,
}

/// A file and line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceRef {
    pub file: String,
    pub line: u32,
}

/// A kstatus condition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionReport {
    #[serde(rename = "type")]
    pub type_: ConditionType,
    pub status: ConditionStatus,
    pub reason: String,
    pub message: String,
    /// RFC 3339; changes only when `status` does.
    pub last_transition_time: String,
}

/// A problem in plain words, with where it is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProblemReport {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}
