//! What operators asked for that a pass acts on (`tessera renew`'s requests, read from the
//! state database and withdrawn once answered), and the leader recording itself so that
//! followers can name it when they refuse an operator's action. Suspensions are read where
//! they gate offers, in `routes`.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;

use crate::desired::DesiredState;
use crate::resources::{Kind, ObjectKey};
use crate::store::db::OperatorAction;

use super::routes::Runtime;
use super::{Config, Reconciler};
use crate::server::admin::Report;

/// The setting naming the server that leads (its identity), written by the leader each
/// pass it leads; followers name it when they refuse an operator's action.
pub const LEADER_SETTING: &str = "leaderIdentity";

impl Reconciler {
    /// What operators asked for that this pass acts on, read from the state database: the
    /// renewals requested (`tessera renew`); and this server recorded as the leader, so
    /// followers can name it when they refuse to steer.
    pub(super) fn steer_before(&mut self, desired: &DesiredState, leading: bool) {
        let Some(runtime) = self.config.runtime.clone().filter(|_| leading) else {
            return;
        };
        let db = &runtime.db;
        if db.setting(LEADER_SETTING).ok().flatten().as_deref() != Some(&runtime.identity)
            && let Err(error) = db.set_setting(LEADER_SETTING, &runtime.identity)
        {
            tracing::warn!(error = %crate::error_chain(&error), "failed to record this server as the leader");
        }
        match db.requests(OperatorAction::Renew) {
            Ok(requests) => {
                let requests = requests
                    .into_iter()
                    .filter(|r| r.kind == Kind::Certificate.as_str())
                    .map(|r| {
                        let key = ObjectKey::new(Kind::Certificate, &r.namespace, &r.name);
                        (key, r.requested_at)
                    })
                    .filter(|(key, _)| desired.entries.contains_key(key))
                    .collect();
                self.certificates.set_renewal_requests(requests);
            }
            Err(error) => {
                tracing::warn!(error = %crate::error_chain(&error), "failed to read the renewals operators requested");
            }
        }
    }

    /// Withdraws the renewal requests this pass answered (a request made since stays).
    pub(super) fn steer_after(&mut self) {
        let honoured = self.certificates.take_renewals_honoured();
        self.certificates.set_renewal_requests(HashMap::new());
        let Some(runtime) = &self.config.runtime else {
            return;
        };
        for (key, at) in honoured {
            let done = runtime.db.withdraw(
                OperatorAction::Renew,
                key.kind.as_str(),
                &key.namespace,
                &key.name,
                at,
            );
            if let Err(error) = done {
                tracing::warn!(certificate = %key, error = %crate::error_chain(&error), "failed to withdraw an answered renewal request");
            }
        }
    }
}

/// Operators' requests for a pass (`tessera reconcile`, and after suspend, resume and
/// renew), as the reconcile loop reads them; nothing when no runtime takes them.
pub(super) struct Requests {
    runtime: Option<Arc<Runtime>>,
    requested: Option<watch::Receiver<u64>>,
}

impl Requests {
    pub(super) fn new(config: &Config) -> Self {
        let runtime = config.runtime.clone().filter(|r| r.passes.is_some());
        let requested = runtime
            .as_ref()
            .and_then(|r| r.passes.as_ref())
            .map(|p| p.requested.clone());
        Self { runtime, requested }
    }

    /// The requests the pass about to start answers: every one made before it starts.
    pub(super) fn serving(&mut self) -> Option<u64> {
        self.requested.as_mut().map(|r| *r.borrow_and_update())
    }

    /// Tells those who asked up to `serving` what the pass did (its `report`).
    pub(super) fn answer(&self, serving: Option<u64>, report: &Report) {
        let queue = self.runtime.as_ref().and_then(|r| r.passes.as_ref());
        if let (Some(queue), Some(request)) = (queue, serving) {
            queue.finished(request, report);
        }
    }

    /// Resolves when a pass is asked for; never without a runtime that takes requests.
    pub(super) async fn asked(&mut self) -> Option<()> {
        match &mut self.requested {
            Some(requested) => requested.changed().await.ok(),
            None => std::future::pending().await,
        }
    }
}
