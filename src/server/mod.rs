//! The HTTP side of Tessera: the agent-facing server (OCS endpoint, downloads), the
//! deployment state machine it drives, its metrics, and the admin API. It is handed plain
//! values to serve (routes, reports, TLS configs through `watch`), never resources.

pub mod admin;
pub mod agent;
pub mod deployments;
pub mod metrics;
pub mod ocs;
pub mod v1;

/// `error` and its causes on one line, `outer: inner: innermost`.
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
