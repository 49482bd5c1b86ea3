//! `--kube`: the cluster's Tessera custom resources as the configuration, leader election
//! on a Lease, and the glue between reconcile and the cluster (statuses and Secrets), which
//! live in `sources::kube`.

use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use tokio::sync::watch;

use super::running::Tasks;
use crate::reconcile;
use crate::resources::{Kind, ObjectKey};
use crate::server::admin::Report;
use crate::sources::kube::secrets::{self, KubeSecrets};
use crate::sources::kube::status::write_statuses;
use crate::sources::kube::{self as kube_source, Listing, ObjectStatus, StatusWriter, lease};

/// `tessera serve --kube`: the custom resources of a cluster instead of a directory.
#[derive(Debug, Clone, Default, Args)]
pub struct KubeArgs {
    /// Watch the Tessera custom resources (in-cluster configuration, or the kubeconfig)
    /// instead of a directory; statuses, Events and Secrets are written back.
    #[arg(long, env = "TESSERA_KUBE")]
    pub kube: bool,
    /// The namespace to watch. Default: every namespace.
    #[arg(long, env = "TESSERA_NAMESPACE", requires = "kube")]
    pub namespace: Option<String>,
    /// The Lease that elects the replica writing statuses and Secrets.
    #[arg(long, env = "TESSERA_LEASE", default_value = "tessera")]
    pub lease: String,
    /// Namespace of the Lease (the chart passes the pod's). Default: `--namespace`, else
    /// `default`.
    #[arg(long, env = "TESSERA_POD_NAMESPACE", requires = "kube")]
    pub lease_namespace: Option<String>,
    /// This replica's name in the Lease and in Events (the chart passes the pod's).
    /// Default: the host name.
    #[arg(long, env = "TESSERA_POD_NAME", requires = "kube")]
    pub pod_name: Option<String>,
}

/// A client from the in-cluster configuration or the kubeconfig.
pub(super) async fn connect() -> Result<kube::Client> {
    kube::Client::try_default()
        .await
        .context("failed to connect to Kubernetes (in-cluster configuration or kubeconfig)")
}

/// Starts what `--kube` adds: the watch of the custom resources, leader election, and the
/// status writer (only while leading). Returns the Secrets reconcile reads and writes,
/// whether this replica leads, and who holds the Lease.
pub(super) fn start_kube(
    args: &KubeArgs,
    client: kube::Client,
    listings: watch::Sender<Option<Listing>>,
    reports: watch::Receiver<Report>,
    tasks: &mut Tasks,
) -> (
    Arc<dyn reconcile::secrets::Secrets>,
    watch::Receiver<bool>,
    watch::Receiver<Option<String>>,
) {
    let identity = args
        .pod_name
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("tessera-{}", std::process::id()));
    let lease_namespace = args
        .lease_namespace
        .clone()
        .or_else(|| args.namespace.clone())
        .unwrap_or_else(|| crate::resources::DEFAULT_NAMESPACE.to_owned());
    let lease_name = if args.lease.is_empty() {
        "tessera"
    } else {
        &args.lease
    };
    let (leader_tx, leader_rx) = watch::channel(false);
    let secrets = Arc::new(KubeSecrets::new(client.clone(), leader_rx.clone()));
    let resync = resync_trigger(
        client.clone(),
        args.namespace.clone(),
        &secrets,
        leader_rx.clone(),
        tasks,
    );
    let source =
        kube_source::KubeSource::new(client.clone(), args.namespace.clone()).resync_on(resync);
    let observed = listings.subscribe();
    tasks.spawn(|token| async move {
        source.run(listings, token).await;
        Ok(())
    });
    let (holder_tx, holder) = watch::channel(None);
    let lock = lease::LeaseLock::new(client.clone(), &lease_namespace, lease_name, &identity)
        .reporting_holder(holder_tx);
    tasks.spawn(|token| async move {
        lease::run(lock, leader_tx, token).await;
        Ok(())
    });

    let writer = StatusWriter::new(client, Some(identity)).observing(observed);
    let leader = leader_rx.clone();
    tasks.spawn(|token| async move {
        // A Gateway's status is written by the `tessera gateway` that runs it.
        let statuses = |report: &Report| {
            report.ready.then(|| {
                kube_statuses(report)
                    .into_iter()
                    .filter(|s| s.key.kind != Kind::Gateway)
                    .collect()
            })
        };
        write_statuses(writer, reports, Some(leader), statuses, token).await;
        Ok(())
    });

    (secrets, leader_rx, holder)
}

/// What makes the source publish its snapshot again (so reconcile makes a pass): this
/// replica becoming leader (it writes its Secrets at once), and a Secret that a pass read
/// appearing, changing or going away (an Issuer's `ca.secretName` created after the
/// Issuer, a Server's `certificateSecretRef` renewed by cert-manager). Returns the trigger
/// the source follows; the watch of Secrets runs as its own task.
fn resync_trigger(
    client: kube::Client,
    namespace: Option<String>,
    secrets: &KubeSecrets,
    mut leader: watch::Receiver<bool>,
    tasks: &mut Tasks,
) -> watch::Receiver<bool> {
    let (resync_tx, resync_rx) = watch::channel(false);
    let on_leader = resync_tx.clone();
    tasks.spawn(|token| async move {
        loop {
            tokio::select! {
                () = token.cancelled() => return Ok(()),
                changed = leader.changed() => {
                    if changed.is_err() {
                        // The election ended (shutting down): nothing more to forward.
                        token.cancelled().await;
                        return Ok(());
                    }
                    if *leader.borrow_and_update() {
                        on_leader.send_replace(true);
                    }
                }
            }
        }
    });
    watch_secrets(client, namespace, secrets, resync_tx, tasks);
    resync_rx
}

/// Starts the watch of the Secrets that passes read through `secrets`: `true` is sent on
/// `resync` when one of them appears, changes or goes away.
pub(super) fn watch_secrets(
    client: kube::Client,
    namespace: Option<String>,
    secrets: &KubeSecrets,
    resync: watch::Sender<bool>,
    tasks: &mut Tasks,
) {
    let read = secrets.read_secrets();
    tasks.spawn(|token| async move {
        secrets::watch_read_secrets(client, namespace, read, resync, token).await;
        Ok(())
    });
}

/// Writes the status of the Gateway `own` from each report (`tessera gateway --kube`: the
/// gateway alone writes its Gateway's status; it leads no election). Like `serve --kube`'s
/// writer, it takes the status the object carries in `listings` as already written, so a
/// restarted gateway whose status has not changed writes nothing.
pub(super) fn write_gateway_status(
    client: kube::Client,
    own: ObjectKey,
    listings: watch::Receiver<Option<Listing>>,
    reports: watch::Receiver<Report>,
    tasks: &mut Tasks,
) {
    let writer = StatusWriter::new(client, None).observing(listings);
    tasks.spawn(|token| async move {
        let statuses = |report: &Report| {
            Some(
                kube_statuses(report)
                    .into_iter()
                    .filter(|s| s.key == own)
                    .collect(),
            )
        };
        write_statuses(writer, reports, None, statuses, token).await;
        Ok(())
    });
}

/// The status subresource of every object of a report, with `sourceRevision`: the revision
/// of the listing it was reconciled from (a digest of every object's spec, the same
/// `tessera get` and the admin API show), as status files have it in the other modes.
fn kube_statuses(report: &Report) -> Vec<ObjectStatus> {
    report
        .objects
        .iter()
        .map(|object| {
            let mut status = reconcile::status::subresource(object);
            if !object.source_revision.is_empty() {
                status.insert(
                    "sourceRevision".into(),
                    serde_json::json!(object.source_revision),
                );
            }
            ObjectStatus {
                key: ObjectKey::new(
                    reconcile::outcome::resource_kind(object.kind),
                    &object.namespace,
                    &object.name,
                ),
                status,
            }
        })
        .collect()
}

/// What reconcile reads: a directory or git source's snapshots, or the Kubernetes source's
/// listings (`None` until every kind has been listed whole; see `sources::kube::Listing`).
pub(super) enum Snapshots {
    Read(watch::Receiver<crate::resources::Snapshot>),
    Listed(watch::Receiver<Option<Listing>>),
}

impl Snapshots {
    /// Runs the reconcile loop on these snapshots until `shutdown`.
    pub(super) async fn reconcile(
        self,
        reports: watch::Sender<Report>,
        config: reconcile::Config,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<(), reconcile::ReconcileError> {
        match self {
            Self::Read(snapshots) => reconcile::run(snapshots, reports, config, shutdown).await,
            Self::Listed(listings) => reconcile::run(listings, reports, config, shutdown).await,
        }
    }
}
