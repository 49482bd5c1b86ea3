//! The status writer's loop: each new report's statuses written to the cluster, only while
//! this replica leads.

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{ObjectStatus, StatusWriter};

/// Writes what `statuses_of` picks out of each new value of `reports` (nothing when it
/// returns `None`), until `shutdown` or until `reports` closes. With `leader`, only while
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
