//! State on disk: atomic file writes, the fragment store, and the state database.

pub mod atomic;
pub mod db;
pub mod fragments;
