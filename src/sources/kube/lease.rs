//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does:
//! take the Lease when it is free or expired, renew it every few seconds, give it up on
//! shutdown. The outcome is a `watch` of "is leader" that other tasks follow.
//!
//! Every write carries the `resourceVersion` read just before it (a `replace`), so two
//! replicas racing for an expired Lease cannot both win: the API server refuses the second
//! with 409 Conflict.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long a Lease holds without renewal: a crashed leader is replaced after this.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the leader renews, and others retry: three tries before the Lease expires.
pub const RETRY_PERIOD: Duration = Duration::from_secs(4);
/// A leader that could not renew for this long steps down before the Lease expires, so two
/// replicas never both believe they lead.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);

/// Errors of the Lease calls.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("failed to {verb} Lease {namespace}/{name}")]
    Api {
        verb: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// One Lease and who we are.
pub struct LeaseLock {
    api: Api<Lease>,
    namespace: String,
    name: String,
    identity: String,
    /// Where the holder read at each round is published (who leads, for followers that
    /// refuse an operator's action), if anyone listens.
    holder: Option<watch::Sender<Option<String>>>,
}

impl LeaseLock {
    /// The Lease `name` in `namespace`, held as `identity` (the pod name).
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            identity: identity.to_owned(),
            holder: None,
        }
    }

    /// The same, publishing on `holder` who holds the Lease at each round.
    pub fn reporting_holder(mut self, holder: watch::Sender<Option<String>>) -> Self {
        self.holder = Some(holder);
        self
    }

    /// One round: creates the Lease if there is none, renews it if we hold it, takes it
    /// over if it is free or expired at `now`. Returns whether we hold it afterwards.
    pub async fn try_acquire_or_renew(&self, now: jiff::Timestamp) -> Result<bool, LeaseError> {
        let Some(current) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.error("read", e))?
        else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, now, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                Err(e) => Err(self.error("create", e)),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.as_deref().unwrap_or_default();
        if let Some(report) = &self.holder {
            report.send_replace((!holder.is_empty()).then(|| holder.to_owned()));
        }
        let transitions = spec.lease_transitions.unwrap_or(0);
        let replacement = if holder == self.identity {
            let acquired = spec.acquire_time.map_or(now, |t| t.0);
            self.spec(acquired, now, transitions)
        } else if holder.is_empty() || expired(&spec, now) {
            self.spec(now, now, transitions + 1)
        } else {
            return Ok(false);
        };
        let lease = Lease {
            // Keeps resourceVersion: the write fails if anyone wrote since the read.
            metadata: current.metadata,
            spec: Some(replacement),
        };
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(e) => Err(self.error("update", e)),
        }
    }

    /// Gives the Lease up if we hold it, so another replica takes over at once rather than
    /// after it expires.
    pub async fn release(&self) -> Result<(), LeaseError> {
        let Some(current) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.error("read", e))?
        else {
            return Ok(());
        };
        let mut spec = current.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        let lease = Lease {
            metadata: current.metadata,
            spec: Some(spec),
        };
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            // Someone else wrote it since: it is not ours to release any more.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            Err(e) => Err(self.error("release", e)),
        }
    }

    fn spec(
        &self,
        acquired: jiff::Timestamp,
        renewed: jiff::Timestamp,
        transitions: i32,
    ) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(renewed)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    fn error(&self, verb: &'static str, source: kube::Error) -> LeaseError {
        LeaseError::Api {
            verb,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            source,
        }
    }
}

/// Whether a Lease held by someone else may be taken at `now`: its last renewal is older
/// than its duration. A Lease never renewed is expired.
fn expired(spec: &LeaseSpec, now: jiff::Timestamp) -> bool {
    let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return true;
    };
    let duration =
        jiff::SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
    renewed.0 + duration < now
}

/// Runs the election until `shutdown`, publishing whether we lead on `leader` and logging
/// every change; releases the Lease on the way out. Errors are logged and retried.
pub async fn run(lock: LeaseLock, leader: watch::Sender<bool>, shutdown: CancellationToken) {
    let mut last_renewal: Option<tokio::time::Instant> = None;
    loop {
        let leading = match lock.try_acquire_or_renew(jiff::Timestamp::now()).await {
            Ok(held) => {
                last_renewal = held.then(tokio::time::Instant::now);
                held
            }
            Err(error) => {
                tracing::warn!(error = %crate::error_chain(&error), "leader election failed; retrying");
                last_renewal.is_some_and(|at| at.elapsed() < RENEW_DEADLINE)
            }
        };
        leader.send_if_modified(|current| {
            let changed = *current != leading;
            if changed {
                if leading {
                    tracing::info!(identity = %lock.identity, lease = %lock.name, "became the leader");
                } else {
                    tracing::info!(identity = %lock.identity, lease = %lock.name, "no longer the leader");
                }
                *current = leading;
            }
            changed
        });
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(RETRY_PERIOD) => {}
        }
    }
    if *leader.borrow() {
        leader.send_replace(false);
        if let Err(error) = lock.release().await {
            tracing::warn!(error = %crate::error_chain(&error), "failed to release the Lease");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(renewed: Option<&str>, seconds: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some("other".into()),
            lease_duration_seconds: Some(seconds),
            renew_time: renewed.map(|t| MicroTime(t.parse().unwrap())),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_lease_expires_after_its_duration_since_the_last_renewal() {
        let now: jiff::Timestamp = "2026-11-23T12:00:00Z".parse().unwrap();
        assert!(!expired(&spec(Some("2026-11-23T11:59:46Z"), 15), now));
        assert!(!expired(&spec(Some("2026-11-23T11:59:45Z"), 15), now));
        assert!(expired(&spec(Some("2026-11-23T11:59:44Z"), 15), now));
        assert!(expired(&spec(None, 15), now), "never renewed");
    }
}
