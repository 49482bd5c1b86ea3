//! State on disk.

pub mod atomic;
pub mod fragments;
