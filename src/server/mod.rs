//! The HTTP side of Tessera. It is handed plain values to serve (reports, later routing
//! tables and TLS configs through `watch`), never resources.

pub mod admin;
