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
}
