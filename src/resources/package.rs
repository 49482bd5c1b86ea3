//! `Package`: what to deploy (content, target OS, priority, action), the OCS "build".

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::meta::{CommonStatus, Os};
use super::quantity::{ByteSize, Duration};

/// Smallest fragment an agent is asked to fetch: below this, request overhead dominates.
pub const MIN_FRAGMENT_SIZE: ByteSize = ByteSize::from_kib(4);
/// Largest fragment: an agent holds a fragment in memory and retries it whole on failure.
pub const MAX_FRAGMENT_SIZE: ByteSize = ByteSize::from_mib(64);
/// Highest OCS priority; 0 is "absolute" priority and is processed alone, before any other.
pub const MAX_PRIORITY: i64 = 10;

/// A software package: its content, the OS it targets, how agents run it, and how it is
/// split into fragments for download.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "tessera.dev",
    version = "v1alpha1",
    kind = "Package",
    namespaced,
    derive = "PartialEq",
    status = "PackageStatus",
    shortname = "pkg",
    category = "tessera",
    doc = "A software package: content, target OS, priority and the action agents run.",
    printcolumn(name = "OS", type_ = "string", json_path = ".spec.os"),
    printcolumn(name = "Priority", type_ = "integer", json_path = ".spec.priority"),
    printcolumn(name = "Action", type_ = "string", json_path = ".status.action"),
    printcolumn(name = "Package ID", type_ = "string", json_path = ".status.packageId"),
    printcolumn(name = "Fragments", type_ = "integer", json_path = ".status.fragments"),
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
pub struct PackageSpec {
    /// Name shown to operators and in agent logs. Defaults to the object's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Operating system the package is built for: `windows` (zip archive), `linux` or
    /// `macos` (tar.gz archive).
    pub os: Os,
    /// Download priority, 0 to 10 (default 5). Agents fetch a fragment of a package in cycles
    /// whose number is a multiple of its priority; 0 means absolute priority: processed
    /// alone, before any other package.
    #[serde(default = "default_priority")]
    #[schemars(range(min = 0, max = 10))]
    pub priority: i64,
    /// Where the package's files come from. Omit it for a command-only `execute` package.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<PackageContent>,
    /// What the agent does with the package: exactly one of `launch`, `execute` or `store`.
    pub action: PackageAction,
    /// Size of each download fragment, from 4Ki to 64Mi (default 1Mi). Smaller fragments
    /// resume sooner after a cut on a poor link; larger ones make fewer requests. A number
    /// of bytes or a quantity such as `512Ki` (`kubectl explain` shows it as an object).
    #[serde(default = "default_fragment_size")]
    pub fragment_size: ByteSize,
    /// A dialog shown to the logged-in user before installing (Windows agents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification: Option<UserNotification>,
    /// A dialog shown to the logged-in user after installing (Windows agents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done_action: Option<DoneAction>,
    /// Exit codes of a `launch` or `execute` action that count as success (default `[0]`).
    #[serde(default = "default_success_exit_codes")]
    pub success_exit_codes: Vec<i32>,
}

/// The source of a package's files: exactly one of `directory`, `archive` or `url`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PackageContent {
    /// A directory, relative to the file that declares the package, archived
    /// deterministically (sorted entries, fixed times and modes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<String>,
    /// A ready-made archive (`.tar.gz` for Linux and macOS, `.zip` for Windows), relative to
    /// the file that declares the package, served as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<String>,
    /// An HTTP(S) address to download the archive from; `sha256` is then required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Expected SHA-256 of the archive, 64 hex digits. Required with `url`; checked with
    /// `archive` when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// What the agent does once the package is downloaded and verified: exactly one field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PackageAction {
    /// Run a file from the archive and keep its exit code (OCS `LAUNCH`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch: Option<LaunchAction>,
    /// Run a command, inside the unpacked archive when there is one (OCS `EXECUTE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execute: Option<ExecuteAction>,
    /// Unpack the archive into a directory on the computer (OCS `STORE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreAction>,
}

/// Run a file shipped in the archive.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LaunchAction {
    /// Command line whose first word is a file inside the archive, e.g. `setup.exe /S`.
    pub command: String,
}

/// Run a command line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecuteAction {
    /// Command line, run in the unpacked archive's directory when the package has content.
    pub command: String,
}

/// Unpack files into a directory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StoreAction {
    /// Destination directory on the computer; created if missing. Environment variables
    /// (`%ProgramData%`, `$HOME`) are expanded by the agent.
    pub path: String,
}

/// A dialog shown before installing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserNotification {
    /// Text shown to the user.
    pub text: String,
    /// How long the dialog waits before installing anyway (e.g. `5m`). Default: it waits
    /// for the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub countdown: Option<Duration>,
    /// Whether the user may cancel the installation (reported as `ERR_ABORTED`). Default false.
    #[serde(default)]
    pub can_abort: bool,
    /// Whether the user may postpone the installation. Default false.
    #[serde(default)]
    pub can_delay: bool,
}

/// A dialog shown after installing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DoneAction {
    /// Text shown to the user once the package is installed.
    pub text: String,
}

/// What Tessera built from the package.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PackageStatus {
    #[serde(flatten)]
    pub common: CommonStatus,
    /// The numeric package id agents see (all digits); it changes when content or spec do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package_id: Option<String>,
    /// MD5 of the whole archive, lowercase hex (what OCS agents check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub md5: Option<String>,
    /// SHA-256 of the whole archive, lowercase hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Size of the archive in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
    /// Number of fragments (0 for a command-only package).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fragments: Option<i64>,
    /// What the package does on the computer, in short (`launch setup.exe /S`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Earlier versions of this package still served to the computers that were notified
    /// of them and have not reported yet (see the Server's `download.drainGrace`); each is
    /// pruned once they have, or when its drain ends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub draining: Vec<DrainingVersion>,
}

/// A superseded package version still served while agents finish it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrainingVersion {
    /// The superseded package id.
    pub package_id: String,
    /// Computers notified of it that have not reported on it and are not stale.
    pub downloading: i64,
    /// When it stops being served at the latest (the grace period's end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Time>,
}

fn default_priority() -> i64 {
    5
}

fn default_fragment_size() -> ByteSize {
    ByteSize::from_mib(1)
}

fn default_success_exit_codes() -> Vec<i32> {
    vec![0]
}
