//! Where the commands that read a server's state (`status`, `token`, `notify`) find its
//! database.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::store::db::Database;

/// Where the state database is: `--state`, or `<config>/.tessera`.
#[derive(Debug, Clone, Args)]
pub(super) struct StateArgs {
    /// The state directory of a `tessera serve` (default `<config>/.tessera`).
    #[arg(long, env = "TESSERA_STATE")]
    pub(super) state: Option<PathBuf>,
    /// The configuration directory, to find the default state directory.
    #[arg(long, env = "TESSERA_CONFIG", default_value = ".")]
    pub(super) config: PathBuf,
    /// The PostgreSQL database of the servers, if they use one (`postgres://...`).
    #[arg(long, env = "TESSERA_DATABASE")]
    pub(super) database: Option<String>,
}

impl StateArgs {
    /// Opens the state database, which `tessera serve` creates. Blocks (PostgreSQL).
    pub(super) fn open(&self) -> Result<Database> {
        if let Some(url) = &self.database {
            return Ok(Database::postgres(url)?);
        }
        let state = self
            .state
            .clone()
            .unwrap_or_else(|| self.config.join(".tessera"));
        let path = state.join("state.db");
        if !path.is_file() {
            bail!(
                "no state database at {}: has `tessera serve` run with this state directory?",
                path.display()
            );
        }
        Database::open(&path).with_context(|| format!("failed to open {}", path.display()))
    }
}
