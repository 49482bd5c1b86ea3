//! State on disk.

pub mod atomic;
