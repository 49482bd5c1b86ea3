//! What the long-running commands share: the tasks of a running `serve` or `gateway`, how
//! they stop, and the pieces every wiring needs (the runtime, the connection budget).

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::server::admin::Report;

/// How long running tasks get to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A running `tessera serve`: its tasks and how to reach it.
pub struct Running {
    /// Where the admin API listens.
    pub admin_address: SocketAddr,
    /// The latest report, as the admin API shows it.
    pub reports: watch::Receiver<Report>,
    shutdown: CancellationToken,
    tasks: JoinSet<Result<()>>,
}

impl Running {
    /// Stops every task, waiting at most `SHUTDOWN_GRACE`.
    pub async fn stop(mut self) -> Result<()> {
        self.shutdown.cancel();
        let drain = async {
            while let Some(joined) = self.tasks.join_next().await {
                joined.context("a task panicked")??;
            }
            Ok::<(), anyhow::Error>(())
        };
        match tokio::time::timeout(SHUTDOWN_GRACE, drain).await {
            Ok(result) => result,
            Err(_) => bail!("tasks did not stop within {SHUTDOWN_GRACE:?}"),
        }
    }

    /// Waits until a task ends on its own (which is an error) or `signal` resolves.
    pub(super) async fn until(mut self, signal: impl Future<Output = ()>) -> Result<()> {
        tokio::select! {
            () = signal => {
                tracing::info!("shutting down");
                self.stop().await
            }
            Some(joined) = self.tasks.join_next() => {
                self.shutdown.cancel();
                joined.context("a task panicked")??;
                bail!("a task stopped unexpectedly")
            }
        }
    }
}

/// The tasks of a command being started, all stopped by one token.
#[derive(Default)]
pub(super) struct Tasks {
    shutdown: CancellationToken,
    set: JoinSet<Result<()>>,
}

impl Tasks {
    /// Spawns `task`, handing it the shutdown token.
    pub(super) fn spawn<F>(&mut self, task: impl FnOnce(CancellationToken) -> F)
    where
        F: Future<Output = Result<()>> + Send + 'static,
    {
        self.set.spawn(task(self.shutdown.clone()));
    }

    /// The running command, its admin API at `admin_address`.
    pub(super) fn running(
        self,
        admin_address: SocketAddr,
        reports: watch::Receiver<Report>,
    ) -> Running {
        Running {
            admin_address,
            reports,
            shutdown: self.shutdown,
            tasks: self.set,
        }
    }
}

/// The runtime and the shutdown signal are the agent's too (the agent builds without `cli`).
pub(super) use crate::agent::cli::{runtime, shutdown_signal};

/// Threads of `tessera serve`'s blocking pool (tokio's default is 512). Its work is state
/// database calls (one SQLite connection, or `POOL_SIZE` PostgreSQL connections: more
/// threads only queue for them), inventories inflated and parsed (CPU work: more threads
/// than cores buy nothing), fragment reads and the reconcile pass. Each thread costs its
/// stack and, with glibc, may take an allocator arena of its own that keeps what it once
/// held. `cargo bench --bench ingest`, 20,000 inventories from 32 connections: 100 threads
/// and 82 MiB resident unbounded, 20 threads and 49 MiB with 16, at the same rate within
/// the noise of a shared machine. 16 is twice `POOL_SIZE`, so PostgreSQL calls and file
/// reads still overlap; further calls wait in the pool's queue, not on a thread.
pub(super) const BLOCKING_THREADS: usize = 16;

/// Overrides [`BLOCKING_THREADS`] (a positive number), for tuning and measuring.
pub(super) const BLOCKING_THREADS_ENV: &str = "TESSERA_BLOCKING_THREADS";

/// The runtime of `tessera serve`: the shared one with a bounded blocking pool.
pub(super) fn server_runtime() -> Result<tokio::runtime::Runtime> {
    let threads = match std::env::var(BLOCKING_THREADS_ENV) {
        Ok(text) => text
            .parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .with_context(|| format!("{BLOCKING_THREADS_ENV}={text:?} is not a positive number"))?,
        Err(_) => BLOCKING_THREADS,
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(threads)
        .build()
        .context("failed to start the async runtime")
}

/// Creates the state directory (and its parents).
pub(super) fn create_state_dir(state_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("failed to create state directory {}", state_dir.display()))
}

/// The connection budget of every listener: the open-files limit raised to the hard limit
/// first (and logged), the caps fitted to it, then `TESSERA_CONNECTION_BUDGET` (for tests
/// and tuning) applied.
pub(super) fn connection_budget() -> Result<Arc<crate::budget::ConnectionBudget>> {
    use crate::budget::{BUDGET_ENV, ConnectionBudget, raise_fd_limit};
    let mut budget = ConnectionBudget::default();
    match raise_fd_limit() {
        Ok(limit) => {
            budget = budget.fit_to(limit.soft);
            tracing::info!(before = limit.before, soft = limit.soft, hard = ?limit.hard, max_connections = budget.max_connections, "open-files limit");
        }
        Err(error) => {
            tracing::warn!(error = %crate::error_chain(&error), "could not raise the open-files limit")
        }
    }
    if let Ok(text) = std::env::var(BUDGET_ENV) {
        budget = budget.with_overrides(&text)?;
        tracing::info!(?budget, "connection budget from {BUDGET_ENV}");
    }
    Ok(Arc::new(budget))
}
