//! Tessera: declarative, GitOps-driven software deployment for endpoint fleets.
//!
//! Modules in data-flow order:
//!
//! ```text
//! sources ──snapshot──▶ desired ──desired state + problems──▶ reconcile ──▶ runtime
//! (dir, git, kube)      (pure)                                (fragments,     (agent server,
//!                                                              certificates,   gateway, state
//!                                                              routes)         store) ──status──▶ sources
//! ```
//!
//! `resources` and `desired` are pure (no tokio, no I/O). `server` never imports `sources`,
//! `desired` or `reconcile`: it is handed plain values to serve.

pub mod cli;
pub mod desired;
pub mod doctor;
pub mod pki;
pub mod reconcile;
pub mod resources;
pub mod server;
pub mod sources;
pub mod store;
