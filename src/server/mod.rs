//! The HTTP side of Tessera: the agent-facing server (OCS endpoint, downloads), the
//! deployment state machine it drives, its metrics, and the admin API. It is handed plain
//! values to serve (routes, reports, TLS configs through `watch`), never resources.

pub mod admin;
pub mod agent;
pub mod deployments;
pub mod dial_out;
pub mod download;
pub mod fleet_log;
pub mod identity;
pub mod listener;
pub mod metrics;
pub mod ocs;
pub mod push;
pub mod results;
pub mod v1;
pub mod webhook;
