//! Sources of configuration. Each reads every document and publishes a whole
//! `resources::Snapshot` on a `tokio::sync::watch` channel; `desired` takes it from there.

pub mod dir;
pub mod git;
