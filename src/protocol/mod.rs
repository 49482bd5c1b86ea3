//! Wire types of the agent-facing protocols. Imports nothing of the crate.

// The OCS codec is spoken by the server only (Tessera's agent speaks v1; quick-xml).
#[cfg(feature = "server")]
pub mod ocs;
pub mod proxy;
pub mod v1;
