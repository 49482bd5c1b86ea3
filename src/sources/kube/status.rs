//! The status writer's loop: each new report's statuses written to the cluster, only while
//! this replica leads.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{ObjectStatus, StatusWriter};

/// Quiet time after a report before its statuses are written. The first pass after a start
/// reports the Server `Pending` when its listeners bind a moment after the pass looked;
/// the next pass, right after, reports it `Serving`. Written at once, that moment would be
/// two Events and two patches at every restart.
pub const SETTLE: Duration = Duration::from_millis(250);
/// Longest wait for quiet: reports change every second while agents report in bursts.
pub const SETTLE_MAX: Duration = Duration::from_secs(1);

/// Writes what `statuses_of` picks out of each new value of `reports` (nothing when it
/// returns `None`) once reports have been quiet for [`SETTLE`], until `shutdown` or until
/// `reports` closes. With `leader`, only while
/// it is true; when leadership changes, what was written is forgotten, because another
/// replica may have written while this one was not leading.
pub async fn write_statuses<R>(
    mut writer: StatusWriter,
    mut reports: watch::Receiver<R>,
    mut leader: Option<watch::Receiver<bool>>,
    statuses_of: impl Fn(&R) -> Option<Vec<ObjectStatus>>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = reports.changed() => if changed.is_err() { return },
            changed = leadership_changed(&mut leader) => {
                if changed.is_err() { return }
                writer.forget();
            }
        }
        if leader.as_ref().is_some_and(|leader| !*leader.borrow()) {
            continue;
        }
        let latest = tokio::time::Instant::now() + SETTLE_MAX;
        loop {
            let quiet = (tokio::time::Instant::now() + SETTLE).min(latest);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep_until(quiet) => break,
                changed = reports.changed() => if changed.is_err() { return },
            }
        }
        let statuses = statuses_of(&reports.borrow());
        if let Some(statuses) = statuses {
            writer.write(&statuses).await;
        }
    }
}

/// The next change of `leader`; never, without one.
async fn leadership_changed(
    leader: &mut Option<watch::Receiver<bool>>,
) -> Result<(), watch::error::RecvError> {
    match leader {
        Some(leader) => leader.changed().await,
        None => std::future::pending().await,
    }
}
