//! State on disk: atomic file writes, the fragment store, and the state database (SQLite
//! or PostgreSQL).

pub mod atomic;
pub mod db;
pub mod fragments;
pub mod sql;
