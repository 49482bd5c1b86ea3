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
//! Sources:
//! - `resources`: the kinds, YAML reading, per-object checks (pure).
//! - `sources`: where snapshots come from (`dir`, `git`, `kube/`), and in Kubernetes the way
//!   back (statuses, Events, Secrets) and leader election on a Lease (`kube::lease`).
//!
//! Desired state:
//! - `desired`: snapshot → desired state, references, last valid version, pruning guard (pure).
//!
//! Reconcile:
//! - `reconcile`: the loop; `outcome` (typed reasons and outcomes) and `health` (pure
//!   kstatus per kind); fragments, certificates, routes, the gateway's configuration, plan,
//!   status files.
//! - `leader`: which of several servers reconciles (always this one on SQLite; a PostgreSQL
//!   advisory lock; a Kubernetes Lease), as a `watch` channel of `bool`.
//!
//! Runtime (handed plain values, never resources):
//! - `server`: the agent-facing server (OCS endpoint, downloads, native API), the deployment
//!   state machine, metrics and the admin API.
//! - `gateway`: the DMZ relay.
//! - `store`: the state database and the fragment store.
//! - `agent`: Tessera's own agent (enrollment, check-in, verified and resumable downloads,
//!   safe extraction, actions); imports only `protocol` and `pki`.
//!
//! Shared by all of them, importing nothing of the crate:
//! - `pki`: CA, issuance, renewal and rollover policy (pure check chains), keystores, CRLs,
//!   rustls configs that follow renewals, `AgentId`, the diagnosis behind `tessera doctor`.
//! - `protocol`: the wire types (OCS codec, native API, PROXY protocol).
//! - `budget`: the connection budget every listener works within (timeouts per phase,
//!   connection caps, accept backoff, the open-files limit).
//! - `throttle`: how often one source may make us log or work (repeated warnings per source,
//!   a token bucket per client address).
//! - `logging`: how log lines are written (every value escaped, libraries' repeated warnings
//!   throttled); imports only `throttle`; both binaries install it.
//!
//! At the edge: `doctor` (the client side of `tessera doctor`) and `cli` (commands, the
//! environment, tasks: the only place that spawns long-lived tasks).
//!
//! `resources` and `desired` are pure (no tokio, no I/O). `server` never imports `sources`,
//! `desired` or `reconcile`: it is handed plain values to serve.

// Without the `server` feature (default on) the crate is the agent alone: `agent` and what it
// imports (`protocol`, `pki`, `logging`, `throttle`, the durations of `resources::quantity`),
// so `tessera-agent` built with `--no-default-features` links no Kubernetes code at all.
pub mod agent;
#[cfg(feature = "server")]
pub mod budget;
#[cfg(feature = "server")]
pub mod cli;
#[cfg(feature = "server")]
pub mod desired;
#[cfg(feature = "server")]
pub mod doctor;
#[cfg(feature = "server")]
pub mod gateway;
#[cfg(feature = "server")]
pub mod leader;
pub mod logging;
pub mod pki;
pub mod protocol;
#[cfg(feature = "server")]
pub mod reconcile;
#[cfg(feature = "server")]
pub mod resources;
/// The agent's command line reads durations (`--interval 90m`) like the resources do.
#[cfg(not(feature = "server"))]
pub mod resources {
    pub mod quantity;
}
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod sources;
#[cfg(feature = "server")]
pub mod store;
pub mod throttle;

/// `error` and its causes on one line, `outer: inner: innermost`, for logs and messages. A
/// helper every module may use (it is not a module, so the import rules are unchanged).
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
