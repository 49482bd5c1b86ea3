//! `Activation`: makes a package deployable and says where agents fetch it, the OCS "activate".

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::meta::{CommonStatus, LocalRef};

/// Makes a Package deployable and says where agents download it from.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "tessera.dev",
    version = "v1alpha1",
    kind = "Activation",
    namespaced,
    derive = "PartialEq",
    status = "ActivationStatus",
    shortname = "act",
    category = "tessera",
    doc = "Makes a Package deployable and says where agents download it from.",
    printcolumn(
        name = "Package",
        type_ = "string",
        json_path = ".spec.packageRef.name"
    ),
    printcolumn(name = "Package ID", type_ = "string", json_path = ".status.packageId"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ActivationSpec {
    /// The Package to make deployable, in the same namespace.
    pub package_ref: LocalRef,
    /// Base address of the package's `info` file, always `https://host[:port]/path`; agents
    /// fetch `<infoLocation>/<id>/info`. Defaults to this server's `/download`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info_location: Option<String>,
    /// Base address of the fragments, `http://` or `https://host[:port]/path`, for example a
    /// site-local mirror; agents fetch `<packLocation>/<id>/<id>-<n>`. Defaults to this
    /// server's `/download`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pack_location: Option<String>,
    /// Stop offering the package: computers not yet notified get nothing new until it is
    /// false again; those already notified may finish, and results are still recorded.
    /// `tessera suspend` does the same without a commit. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
}

/// The package this activation serves.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActivationStatus {
    #[serde(flatten)]
    pub common: CommonStatus,
    /// The package id agents are offered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package_id: Option<String>,
    /// What suspends it, while it is suspended: `spec` (`spec.suspend`) or `operator`
    /// (`tessera suspend`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspended: Option<SuspendedBy>,
}

/// What holds an Activation or an Affectation suspended. `spec` wins when both do: only a
/// commit lifts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SuspendedBy {
    /// `spec.suspend: true`.
    Spec,
    /// `tessera suspend`, an override kept in the state database until `tessera resume`.
    Operator,
}

impl SuspendedBy {
    /// As written in statuses (`spec`, `operator`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Spec => "spec",
            Self::Operator => "operator",
        }
    }
}
