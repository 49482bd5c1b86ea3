//! Wire types of the agent-facing protocols. Imports nothing of the crate.

pub mod ocs;
pub mod proxy;
pub mod v1;
