//! Which of several servers reconciles. Every server serves agents; one of them, the
//! leader, also arms deployments, advances rollouts, issues and renews certificates and
//! writes statuses, and the others follow its results.
//!
//! Leadership is a `watch` channel of `bool`, driven by whatever elects the leader:
//! - one server on SQLite: always the leader ([`Leadership::always`]);
//! - several servers on one PostgreSQL database: a session-level advisory lock held on a
//!   dedicated connection ([`AdvisoryLock`]); PostgreSQL releases it when that connection
//!   ends, so a leader that dies or loses the database hands over within one retry;
//! - in Kubernetes: a coordination Lease (another driver of the same channel).

use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

/// Whether this server is the leader now, and a way to wait for that to change.
#[derive(Clone, Debug)]
pub struct Leadership(watch::Receiver<bool>);

impl Leadership {
    /// The only server there is: always the leader.
    pub fn always() -> Self {
        // The sender goes away at once: the value never changes.
        Self(watch::channel(true).1)
    }

    /// Leadership as `receiver` reports it (an advisory lock, a Kubernetes Lease).
    pub fn new(receiver: watch::Receiver<bool>) -> Self {
        Self(receiver)
    }

    /// Whether this server leads now. Checked right before each reconciling write, so a
    /// server that lost leadership stops writing at once.
    pub fn is_leader(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits for a change and returns the new value; `None` once nothing can change it any
    /// more (the driver stopped), after which it stays as it is.
    pub async fn changed(&mut self) -> Option<bool> {
        self.0.changed().await.ok()?;
        Some(*self.0.borrow_and_update())
    }
}

/// Errors of leader election.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("failed to read the PostgreSQL URL for leader election")]
    Url(#[source] tokio_postgres::Error),
}

/// The advisory lock key every Tessera server of one database takes ("tesslead").
pub const LEADER_LOCK: i64 = 0x7465_7373_6c65_6164;

/// How often a follower tries to take the lock, and a leader checks its connection. A dead
/// leader is replaced within about this (plus PostgreSQL noticing the dead connection: at
/// once when its process dies, within the TCP keepalive when its machine does).
pub const RETRY: Duration = Duration::from_secs(2);

/// Leader election on PostgreSQL: `pg_try_advisory_lock` on a connection of its own.
#[derive(Clone, Debug)]
pub struct AdvisoryLock {
    config: tokio_postgres::Config,
    key: i64,
    retry: Duration,
}

impl AdvisoryLock {
    /// Election on the database at `url`, with the usual key and retry.
    pub fn new(url: &str) -> Result<Self, LeaderError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(LeaderError::Url)?;
        config.connect_timeout(RETRY);
        // A leader's machine that vanishes leaves a half-open connection: keepalives let
        // PostgreSQL drop it (and the lock) in seconds instead of hours.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(5));
        config.keepalives_interval(Duration::from_secs(2));
        config.keepalives_retries(3);
        Ok(Self {
            config,
            key: LEADER_LOCK,
            retry: RETRY,
        })
    }

    /// Another lock key (servers sharing a database but not a fleet; tests).
    pub fn key(mut self, key: i64) -> Self {
        self.key = key;
        self
    }

    /// Another retry interval.
    pub fn retry(mut self, retry: Duration) -> Self {
        self.retry = retry;
        self
    }

    /// Starts electing: the returned leadership changes as the lock is taken and lost,
    /// until `shutdown`, which releases the lock. (`tessera serve` runs [`Self::run`] among
    /// its own tasks.)
    #[cfg(test)]
    pub fn spawn(self, shutdown: CancellationToken) -> (Leadership, tokio::task::JoinHandle<()>) {
        let (sender, receiver) = watch::channel(false);
        let task = tokio::spawn(self.run(sender, shutdown));
        (Leadership::new(receiver), task)
    }

    /// Holds or waits for the lock, reporting on `leader`, until `shutdown`.
    pub async fn run(self, leader: watch::Sender<bool>, shutdown: CancellationToken) {
        loop {
            let ended = tokio::select! {
                () = shutdown.cancelled() => break,
                ended = self.session(&leader) => ended,
            };
            // The connection is gone, and the lock with it.
            if leader.send_replace(false) {
                tracing::warn!("lost leadership: the connection to the database ended");
            }
            if let Err(error) = ended {
                tracing::warn!(error = %crate::error_chain(&error), "leader election cannot reach the database; retrying");
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(self.retry) => {}
            }
        }
        leader.send_replace(false);
    }

    /// One connection: tries the lock every `retry` while not holding it, and checks the
    /// connection while holding it. Returns when the connection ends; dropping it closes
    /// the connection, which releases the lock.
    async fn session(&self, leader: &watch::Sender<bool>) -> Result<(), tokio_postgres::Error> {
        let (client, connection) = self.config.connect(tokio_postgres::NoTls).await?;
        let (lost_tx, mut lost) = oneshot::channel();
        let driver = tokio::spawn(async move {
            let _ = lost_tx.send(connection.await);
        });
        let _close = AbortOnDrop(driver);
        let mut tick = tokio::time::interval(self.retry);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ended = &mut lost => {
                    return match ended {
                        Ok(Err(error)) => Err(error),
                        _ => Ok(()),
                    };
                }
                _ = tick.tick() => {}
            }
            let leading = *leader.borrow();
            let step = async {
                if leading {
                    client.simple_query("SELECT 1").await.map(|_| true)
                } else {
                    let row = client
                        .query_one("SELECT pg_try_advisory_lock($1)", &[&self.key])
                        .await?;
                    row.try_get::<_, bool>(0)
                }
            };
            match tokio::time::timeout(self.retry, step).await {
                Ok(Ok(held)) => {
                    if held && !leading {
                        tracing::info!("took leadership: this server reconciles");
                        leader.send_replace(true);
                    }
                }
                Ok(Err(error)) => return Err(error),
                // No answer within a retry: as good as lost.
                Err(_) => return Ok(()),
            }
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::db::tests::test_postgres_url;

    const PATIENCE: Duration = Duration::from_secs(20);

    async fn until(leadership: &mut Leadership, wanted: bool) {
        tokio::time::timeout(PATIENCE, async {
            while leadership.is_leader() != wanted {
                leadership.changed().await.expect("the election runs");
            }
        })
        .await
        .unwrap_or_else(|_| panic!("leadership never became {wanted}"));
    }

    /// A key of its own per test, so tests running at once do not compete.
    fn key() -> i64 {
        i64::from(std::process::id()) << 20 | i64::from(rand_part())
    }

    fn rand_part() -> u32 {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    #[test]
    fn a_single_server_always_leads() {
        let mut leadership = Leadership::always();
        assert!(leadership.is_leader());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(
            runtime.block_on(leadership.changed()),
            None,
            "nothing changes it"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_of_two_servers_leads_and_the_other_takes_over_when_it_stops() {
        let Some(url) = test_postgres_url() else {
            return;
        };
        let key = key();
        let elect = || {
            AdvisoryLock::new(&url)
                .unwrap()
                .key(key)
                .retry(Duration::from_millis(200))
        };
        let (first_stop, second_stop) = (CancellationToken::new(), CancellationToken::new());
        let (mut first, first_task) = elect().spawn(first_stop.clone());
        until(&mut first, true).await;
        let (mut second, second_task) = elect().spawn(second_stop.clone());
        // The second tries several times while the first holds the lock.
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(!second.is_leader(), "two leaders at once");
        first_stop.cancel();
        first_task.await.unwrap();
        assert!(!first.is_leader(), "a stopped server does not lead");
        until(&mut second, true).await;
        second_stop.cancel();
        second_task.await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_leader_whose_connection_is_killed_stops_leading_and_takes_the_lock_again() {
        let Some(url) = test_postgres_url() else {
            return;
        };
        let key = key();
        let stop = CancellationToken::new();
        let (mut leadership, task) = AdvisoryLock::new(&url)
            .unwrap()
            .key(key)
            .retry(Duration::from_millis(200))
            .spawn(stop.clone());
        until(&mut leadership, true).await;
        let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        // The backend holding the lock: advisory keys are split into two 32-bit halves.
        let killed = admin
            .query_one(
                "SELECT pg_terminate_backend(pid) FROM pg_locks
                 WHERE locktype = 'advisory' AND classid::bigint = $1 AND objid::bigint = $2
                     AND granted",
                &[&(key >> 32), &(key & 0xffff_ffff)],
            )
            .await;
        assert!(killed.is_ok(), "{killed:?}");
        until(&mut leadership, false).await;
        until(&mut leadership, true).await;
        stop.cancel();
        task.await.unwrap();
    }
}
