//! `Affectation`: which computers get an activation, the OCS "affect".

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::meta::{CommonStatus, LocalRef, Os};
use super::quantity::Duration;

/// Assigns an Activation to computers chosen by name, name glob, tag, OS, or all.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "tessera.dev",
    version = "v1alpha1",
    kind = "Affectation",
    namespaced,
    derive = "PartialEq",
    status = "AffectationStatus",
    shortname = "aff",
    category = "tessera",
    doc = "Assigns an Activation to computers chosen by name, glob, tag, OS, or all.",
    printcolumn(
        name = "Activation",
        type_ = "string",
        json_path = ".spec.activationRef.name"
    ),
    printcolumn(name = "Targets", type_ = "integer", json_path = ".status.targets"),
    printcolumn(
        name = "Success",
        type_ = "integer",
        json_path = ".status.counts.success"
    ),
    printcolumn(name = "Error", type_ = "integer", json_path = ".status.counts.error"),
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
pub struct AffectationSpec {
    /// The Activation to deploy, in the same namespace.
    pub activation_ref: LocalRef,
    /// Which computers receive it, matched against the facts of their latest inventory.
    pub targets: Targets,
    /// Any string; changing it re-arms every target once, so computers that already ran
    /// the package run it again (also those that reported it installed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redeploy: Option<String>,
    /// When the package may be offered. Default: at once, with no end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    /// A staged rollout: the share of targets offered the package grows stage by stage.
    /// Default: every target at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    /// Stop offering the package to these targets: computers not yet notified get nothing
    /// new until it is false again; those already notified may finish, and results are
    /// still recorded. `tessera suspend` does the same without a commit. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
}

/// Computer selection. A computer is a target when `all` is true or it matches any of
/// `names`, `nameGlobs` or `tags`; `os`, when given, further restricts that set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Targets {
    /// Every computer known to Tessera (still restricted by `os`). Default false.
    #[serde(default)]
    pub all: bool,
    /// Exact computer names (the NAME of the inventory, case-insensitive).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// Computer name patterns with `*` and `?`, e.g. `LAB-*` (case-insensitive).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub name_globs: Vec<String>,
    /// Tags from the agent's inventory (the OCS TAG of ACCOUNTINFO, or the native agent's tags).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Only computers running one of these operating systems.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub os: Vec<Os>,
}

/// A window in time during which the package is offered.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Schedule {
    /// Offer the package from this instant on (RFC 3339, e.g. `2026-12-01T18:00:00Z`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    /// Stop offering it to computers that have not started by this instant (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
}

/// Stages of a rollout, in order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rollout {
    /// Each stage offers the package to a growing percentage of targets, chosen by a stable
    /// hash of the computer name, once the previous stage has lasted `after`.
    pub stages: Vec<RolloutStage>,
    /// Pause the rollout when this many targets of the current stage report an error.
    /// Default: never pause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_errors: Option<i64>,
}

/// One step of a rollout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RolloutStage {
    /// Share of the targets offered the package in this stage, 1 to 100.
    #[schemars(range(min = 1, max = 100))]
    pub percent: i64,
    /// How long after the previous stage began this one begins (default `0s`).
    #[serde(default)]
    pub after: Duration,
}

/// Deployment progress, as counts (per-computer states live in the state store).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AffectationStatus {
    #[serde(flatten)]
    pub common: CommonStatus,
    /// Number of computers currently matched by `targets`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<i64>,
    /// Computers per deployment state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<DeploymentCounts>,
    /// A staged rollout's progress, when `rollout` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
    /// What suspends it (or its Activation), while suspended: `spec` or `operator`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspended: Option<super::activation::SuspendedBy>,
}

/// Where a staged rollout stands.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// Share of the targets offered the package now, in percent.
    pub percent: i64,
    /// Paused by `maxErrors`: nothing new is offered.
    pub paused: bool,
    /// When the next stage starts, if one is left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_stage: Option<String>,
}

/// How many targets are in each deployment state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentCounts {
    /// Not yet told about the package.
    pub waiting: i64,
    /// Told about the package, no result yet.
    pub notified: i64,
    /// Notified longer ago than the Server's `staleAfter`, no result yet.
    pub stale: i64,
    /// Fetching fragments (native agent only).
    pub downloading: i64,
    /// Running the action (native agent only).
    pub installing: i64,
    /// Reported success.
    pub success: i64,
    /// Reported an error.
    pub error: i64,
}
