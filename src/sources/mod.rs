//! Sources of configuration. Each reads every document and publishes a whole
//! `resources::Snapshot` on a `tokio::sync::watch` channel; `desired` takes it from there.
//!
//! - `dir`: a directory of YAML files.
//! - `git`: a branch of a git repository, read as a directory at each commit.
//! - `inputs`: what a Package is built from (content directory, archive, download), so the
//!   sources, reconcile, `plan` and `validate` agree on when a build changes.
//! - `kube`: the Tessera custom resources of a cluster, and the way back (statuses, Events,
//!   Secrets), with leader election on a Lease for `serve --kube` with several replicas.

pub mod dir;
pub mod git;
pub mod inputs;
pub mod kube;
pub mod secrets;
