//! `tessera gateway`: the DMZ relay, configured by a Gateway resource (from a file, a
//! directory, a git branch or the cluster), with the certificates it presents issued and
//! renewed from the same configuration.
//!
//! `start_gateway` reads as the order things come up in: the configuration is read and its
//! Gateway chosen, the listeners are bound (a bad address fails at once), reconcile starts
//! (it issues the certificates and publishes the relay's configuration), then the admin
//! API, and the relay itself, which waits until its Gateway is Ready.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::admin::AdminArgs;
use super::git::{GitArgs, first_git_snapshot, webhook};
use super::kube::{Snapshots, connect, write_gateway_status};
use super::running::{
    Running, Tasks, connection_budget, create_state_dir, runtime, shutdown_signal,
};
use crate::budget::ConnectionBudget;
use crate::desired;
use crate::gateway::{Counters, InsidePool};
use crate::reconcile;
use crate::reconcile::gateway::{GatewayRuntime, relay_config};
use crate::resources::gateway::{GatewayMode, GatewaySpec};
use crate::resources::{Kind, ObjectKey, Resource, Snapshot};
use crate::server::admin::{self, ConditionStatus, ConditionType, ObjectKind, Report};
use crate::sources::dir::DirSource;
use crate::sources::git::GitSource;
use crate::sources::kube::secrets::KubeSecrets;
use crate::sources::kube::{KubeSource, Listing};

/// How long `tessera gateway --kube` waits for the first full list of the resources.
const FIRST_LIST_TIMEOUT: Duration = Duration::from_secs(60);

/// The admin API's port on loopback unless `--admin-address` says otherwise: one above
/// `serve`'s, so a gateway and a server fit on one machine.
const ADMIN_PORT: u16 = 9091;

/// `tessera gateway`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  tessera gateway --config gateway.yaml         the DMZ relay a Gateway resource describes
  tessera gateway --config dmz/ --name roaming --admin-address 127.0.0.1:9091
  tessera gateway --git https://git.example.com/it/dmz.git --state /var/lib/tessera-gateway
  tessera gateway --kube --namespace dmz")]
pub struct GatewayArgs {
    /// A YAML file, or a directory, holding the Gateway resource (and the Issuers and
    /// Certificates it uses).
    #[arg(
        help_heading = "Source",
        long,
        env = "TESSERA_CONFIG",
        required_unless_present_any = ["git", "kube"],
        conflicts_with_all = ["git", "kube"]
    )]
    pub config: Option<PathBuf>,
    /// The same from a git branch (`--state` is then required), as `tessera serve --git`.
    #[command(flatten, next_help_heading = "Git source")]
    pub git: GitArgs,
    /// The same from the cluster's Tessera custom resources (in-cluster configuration, or
    /// the kubeconfig); Issuers of type `ca` may read their key pair from a Secret.
    #[arg(
        long,
        env = "TESSERA_KUBE",
        conflicts_with = "git",
        help_heading = "Kubernetes"
    )]
    pub kube: bool,
    /// With --kube: the namespace to watch (default: all).
    #[arg(
        long = "namespace",
        env = "TESSERA_NAMESPACE",
        requires = "kube",
        help_heading = "Kubernetes"
    )]
    pub namespace: Option<String>,
    /// Which Gateway, when there are several.
    #[arg(long, help_heading = "Source")]
    pub name: Option<String>,
    /// Where the gateway keeps the certificates it issues and renews (default: `.tessera`
    /// beside the configuration, `/var/lib/tessera-gateway` with --kube; required with
    /// --git).
    #[arg(long, env = "TESSERA_STATE", help_heading = "State")]
    pub state: Option<PathBuf>,
    #[command(flatten, next_help_heading = "Admin API")]
    pub admin: AdminArgs,
}

/// Relays until Ctrl-C or SIGTERM.
pub(super) fn run(args: &GatewayArgs) -> Result<ExitCode> {
    runtime()?.block_on(async {
        let client = if args.kube {
            Some(connect().await?)
        } else {
            None
        };
        start_gateway(args, client)
            .await?
            .until(shutdown_signal())
            .await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Starts everything `tessera gateway` runs and returns once the admin API listens; with
/// `client`, the configuration comes from the cluster (tests hand in a mock).
pub async fn start_gateway(args: &GatewayArgs, client: Option<kube::Client>) -> Result<Running> {
    args.admin
        .refuse_unprotected(args.admin.address_or(ADMIN_PORT))?;
    let admin_tls = args.admin.tls()?;
    let mut tasks = Tasks::default();
    let configuration = read_configuration(args, client, &mut tasks).await?;
    let (key, spec) = choose_gateway(args, &configuration.snapshot)?;
    let listener = TcpListener::bind(&spec.listen)
        .await
        .with_context(|| format!("failed to listen on {}", spec.listen))?;
    let listening = listener.local_addr()?.to_string();
    // Dial-out: where inside servers connect, bound now so that a bad address fails at once.
    let inside = match &spec.dial_out {
        Some(dial_out) => {
            let listener = TcpListener::bind(&dial_out.listen)
                .await
                .with_context(|| format!("failed to listen on {} (dial-out)", dial_out.listen))?;
            Some((listener, Arc::new(InsidePool::default())))
        }
        None => None,
    };
    let counters = Arc::new(Counters::default());
    let (report_tx, report_rx) = watch::channel(Report::default());
    let (runtime, relay) = relay_channels(&key, &spec, listener, inside, &counters)?;
    // The client, and the listings whose statuses a restarted gateway compares with.
    let kube = match &configuration.reconcile.snapshots {
        Snapshots::Listed(listings) => configuration
            .kube_client
            .map(|client| (client, listings.clone())),
        Snapshots::Read(_) => None,
    };
    start_reconcile(configuration.reconcile, runtime, report_tx, &mut tasks);

    let budget = connection_budget()?;
    let admin = admin::bind(args.admin.address_or(ADMIN_PORT)).await?;
    let admin_address = admin.local_addr()?;
    // The gateway keeps no state database, so no admin tokens: loopback, or --admin-insecure.
    let auth = args.admin.authentication(admin_address, None)?;
    let pool = relay.inside.as_ref().map(|(_, pool)| pool.clone());
    let mut app = admin::app(report_rx.clone()).merge(metrics(counters.clone(), pool, listening));
    if let Some(hooks) = configuration.hooks {
        app = app.merge(hooks);
    }
    let app = admin::protect(app, auth);
    let app = admin::host_checked(app, admin::AdminHosts::new(&args.admin.hosts));
    let admin_budget = budget.clone();
    tasks.spawn(|token| async move {
        admin::serve(admin, app, admin_tls, admin_budget, Arc::default(), token)
            .await
            .map_err(Into::into)
    });

    // In Kubernetes the gateway writes its own Gateway's status (the server leaves it be).
    if let Some((client, listings)) = kube {
        write_gateway_status(client, key.clone(), listings, report_rx.clone(), &mut tasks);
    }
    let reports = report_rx.clone();
    tasks.spawn(|token| relay.run(key, spec, reports, counters, budget, token));
    Ok(tasks.running(admin_address, report_rx))
}

/// Where the Gateway's configuration comes from: a directory is watched like `tessera
/// serve`'s, a git branch fetched like it; a single file is read once.
enum Source {
    Dir(DirSource),
    Git(GitSource, Arc<tokio::sync::Notify>),
    /// Already running, publishing on this channel.
    Kube(watch::Receiver<Option<Listing>>),
    File,
}

/// The configuration read, and what reconcile needs to follow it.
struct Configuration {
    snapshot: Snapshot,
    reconcile: ReconcileInputs,
    hooks: Option<axum::Router>,
    kube_client: Option<kube::Client>,
}

/// What the gateway's reconcile loop reads and where it writes.
struct ReconcileInputs {
    config_dir: PathBuf,
    state_dir: PathBuf,
    snapshots: Snapshots,
    secrets: Option<Arc<dyn reconcile::secrets::Secrets>>,
}

/// Reads the first snapshot of the configuration the arguments name, and starts following
/// it.
async fn read_configuration(
    args: &GatewayArgs,
    client: Option<kube::Client>,
    tasks: &mut Tasks,
) -> Result<Configuration> {
    let mut hooks = None;
    let mut secrets: Option<Arc<dyn reconcile::secrets::Secrets>> = None;
    let mut kube_client = None;
    let (config_dir, state_dir, source, snapshot) = match (&args.git.git, &args.config, client) {
        (None, None, Some(client)) => {
            let state_dir = args
                .state
                .clone()
                .unwrap_or_else(|| PathBuf::from("/var/lib/tessera-gateway"));
            create_state_dir(&state_dir)?;
            // Reads only (an Issuer's key pair, the Gateway's certificateSecretRef): the
            // gateway writes none. A change to a Secret read makes a pass.
            let (_, never) = watch::channel(false);
            let read = Arc::new(KubeSecrets::new(client.clone(), never));
            let (resync_tx, resync) = watch::channel(false);
            super::kube::watch_secrets(
                client.clone(),
                args.namespace.clone(),
                &read,
                resync_tx,
                tasks,
            );
            let (snapshots, snapshot) = watch_cluster(args, client.clone(), resync, tasks).await?;
            kube_client = Some(client);
            secrets = Some(read);
            (
                state_dir.clone(),
                state_dir,
                Source::Kube(snapshots),
                snapshot,
            )
        }
        (Some(_), _, _) => {
            let (state_dir, source, wake, first) =
                first_git_snapshot(&args.git, args.state.as_ref()).await?;
            let root = first.root.clone().unwrap_or_else(|| state_dir.clone());
            hooks = webhook(&args.git, &wake)?;
            (root, state_dir, Source::Git(source, wake), first)
        }
        (None, Some(config), _) if config.is_dir() => {
            let state_dir = args
                .state
                .clone()
                .unwrap_or_else(|| config.join(".tessera"));
            create_state_dir(&state_dir)?;
            let source = DirSource::new(config, vec![state_dir.clone()])?;
            let snapshot = source.scan();
            (config.clone(), state_dir, Source::Dir(source), snapshot)
        }
        (None, Some(config), _) => {
            let (dir, state_dir, snapshot) = read_file(args, config)?;
            (dir, state_dir, Source::File, snapshot)
        }
        (None, None, None) => bail!("give --config FILE|DIR, --git URL or --kube"),
    };
    let snapshots = follow(source, snapshot.clone(), tasks);
    Ok(Configuration {
        snapshot,
        reconcile: ReconcileInputs {
            config_dir,
            state_dir,
            snapshots,
            secrets,
        },
        hooks,
        kube_client,
    })
}

/// Starts watching the cluster's resources, and waits for the first full list: the Gateway
/// is looked for in it, not in an empty placeholder.
async fn watch_cluster(
    args: &GatewayArgs,
    client: kube::Client,
    resync: watch::Receiver<bool>,
    tasks: &mut Tasks,
) -> Result<(watch::Receiver<Option<Listing>>, Snapshot)> {
    let (listing_tx, mut listing_rx) = watch::channel(None);
    let source = KubeSource::new(client, args.namespace.clone()).resync_on(resync);
    tasks.spawn(|token| async move {
        source.run(listing_tx, token).await;
        Ok(())
    });
    let snapshot = tokio::time::timeout(
        FIRST_LIST_TIMEOUT,
        listing_rx.wait_for(|listing: &Option<Listing>| listing.is_some()),
    )
    .await
    .context("no list of the Tessera resources from Kubernetes in time")?
    .context("the Kubernetes watch stopped")?
    .as_ref()
    .map(|listing| listing.snapshot().clone())
    .unwrap_or_default();
    Ok((listing_rx, snapshot))
}

/// A single file: its directory (where relative names resolve), the state directory, and
/// the file as a snapshot.
fn read_file(args: &GatewayArgs, config: &Path) -> Result<(PathBuf, PathBuf, Snapshot)> {
    let text = std::fs::read_to_string(config)
        .with_context(|| format!("failed to read {}", config.display()))?;
    let dir = config
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let file = config
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let snapshot = Snapshot {
        revision: "file".into(),
        files: vec![crate::resources::SourceFile { path: file, text }],
        problems: Vec::new(),
        root: None,
    };
    let state_dir = args.state.clone().unwrap_or_else(|| dir.join(".tessera"));
    create_state_dir(&state_dir)?;
    Ok((dir, state_dir, snapshot))
}

/// Publishes `snapshot`, then what `source` reads next.
fn follow(source: Source, snapshot: Snapshot, tasks: &mut Tasks) -> Snapshots {
    let snapshots = match source {
        Source::Kube(receiver) => return Snapshots::Listed(receiver),
        Source::Dir(source) => {
            let (snapshot_tx, snapshot_rx) = watch::channel(snapshot);
            tasks.spawn(
                |token| async move { source.run(snapshot_tx, token).await.map_err(Into::into) },
            );
            snapshot_rx
        }
        Source::Git(source, wake) => {
            let (snapshot_tx, snapshot_rx) = watch::channel(snapshot);
            tasks.spawn(|token| async move {
                source
                    .run(snapshot_tx, wake, token)
                    .await
                    .map_err(Into::into)
            });
            snapshot_rx
        }
        Source::File => {
            let (snapshot_tx, snapshot_rx) = watch::channel(snapshot);
            // Kept open: a closed channel ends the reconcile loop.
            tasks.spawn(|_| async move {
                snapshot_tx.closed().await;
                Ok(())
            });
            snapshot_rx
        }
    };
    Snapshots::Read(snapshots)
}

/// The one valid Gateway of the configuration (the one `--name` names, if given).
fn choose_gateway(args: &GatewayArgs, snapshot: &Snapshot) -> Result<(ObjectKey, GatewaySpec)> {
    let shown = match (&args.config, &args.git.git) {
        (Some(config), _) => config.display().to_string(),
        (None, Some(url)) => url.clone(),
        (None, None) => "Kubernetes".to_owned(),
    };
    let desired = desired::evaluate(snapshot, None, desired::Options::default());
    let gateways: Vec<_> = desired
        .entries
        .iter()
        .filter_map(|(key, entry)| match entry.resource() {
            Some(Resource::Gateway(gateway)) if key.kind == Kind::Gateway => {
                Some((key.clone(), gateway.spec.clone(), entry.problems.clone()))
            }
            _ => None,
        })
        .filter(|(key, _, _)| args.name.as_ref().is_none_or(|n| *n == key.name))
        .collect();
    let (key, spec, problems) = match gateways.as_slice() {
        [one] => one.clone(),
        [] => bail!(
            "{shown}: no valid Gateway{}{}",
            args.name
                .as_ref()
                .map(|n| format!(" named {n}"))
                .unwrap_or_default(),
            desired
                .problems
                .iter()
                .map(|p| format!("\n  {p}"))
                .collect::<String>()
        ),
        _ => bail!("{shown}: several Gateways; choose one with --name"),
    };
    if let Some(problem) = problems.first() {
        bail!("{problem}");
    }
    Ok((key, spec))
}

/// The channels between reconcile and the relay: reconcile's ends (`GatewayRuntime`) and
/// the relay's.
fn relay_channels(
    key: &ObjectKey,
    spec: &GatewaySpec,
    listener: TcpListener,
    inside: Option<(TcpListener, Arc<InsidePool>)>,
    counters: &Arc<Counters>,
) -> Result<(GatewayRuntime, Relay)> {
    let (config_tx, config_rx) = watch::channel(Arc::new(relay_config(spec)));
    let (certificate_tx, certificate_rx) = watch::channel(None);
    // Replaced before the first connection is accepted: a tunnel starts only once its
    // Gateway is Ready, which needs the trusted issuers' verifier published.
    let placeholder =
        || crate::pki::tls::client_verifier(crate::pki::tls::ClientAuth::None, &[], vec![]);
    let (verifier_tx, verifier_rx) = watch::channel(placeholder()?);
    let (inside_verifier_tx, inside_verifier_rx) = watch::channel(placeholder()?);
    let runtime = GatewayRuntime {
        key: key.clone(),
        listen: spec.listen.clone(),
        config: config_tx,
        certificate: certificate_tx,
        verifier: verifier_tx,
        inside_verifier: inside_verifier_tx,
        inside: inside.as_ref().map(|(_, pool)| pool.clone()),
        counters: counters.clone(),
    };
    let relay = Relay {
        listener,
        inside,
        config: config_rx,
        certificate: certificate_rx,
        verifier: verifier_rx,
        inside_verifier: inside_verifier_rx,
    };
    Ok((runtime, relay))
}

/// Starts the reconcile loop: it issues the Gateway's certificates and publishes its
/// configuration to the relay.
fn start_reconcile(
    inputs: ReconcileInputs,
    runtime: GatewayRuntime,
    reports: watch::Sender<Report>,
    tasks: &mut Tasks,
) {
    let config = reconcile::Config {
        state_dir: inputs.state_dir,
        config_dir: inputs.config_dir,
        options: desired::Options::default(),
        environment: reconcile::certificates::Environment::new(|name| std::env::var(name).ok()),
        clock: reconcile::Clock::system(),
        runtime: None,
        secrets: inputs.secrets,
        leadership: crate::leader::Leadership::always(),
        shared_database: false,
        gateway: Some(Arc::new(runtime)),
    };
    let snapshots = inputs.snapshots;
    tasks.spawn(|token| async move {
        snapshots
            .reconcile(reports, config, token)
            .await
            .map_err(Into::into)
    });
}

/// `/metrics` of the gateway: its counters, and the idle dial-out connections.
fn metrics(
    counters: Arc<Counters>,
    pool: Option<Arc<InsidePool>>,
    listening: String,
) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let text = crate::gateway::metrics::render(&counters, &listening, pool.as_deref());
            async move { text }
        }),
    )
}

/// The relay's ends of its channels, and its listeners.
struct Relay {
    listener: TcpListener,
    inside: Option<(TcpListener, Arc<InsidePool>)>,
    config: watch::Receiver<Arc<crate::gateway::Config>>,
    certificate: watch::Receiver<Option<Arc<CertifiedKey>>>,
    verifier: watch::Receiver<Arc<dyn ClientCertVerifier>>,
    inside_verifier: watch::Receiver<Arc<dyn ClientCertVerifier>>,
}

impl Relay {
    /// Relays once the Gateway `key` is Ready: tunnel, terminate and dial-out need their
    /// certificates and trust in place first; a passthrough is Ready at the first pass.
    async fn run(
        self,
        key: ObjectKey,
        spec: GatewaySpec,
        mut reports: watch::Receiver<Report>,
        counters: Arc<Counters>,
        budget: Arc<ConnectionBudget>,
        shutdown: CancellationToken,
    ) -> Result<()> {
        let (mode, backend, routes) = (spec.mode, spec.backend.clone(), spec.routes.len());
        let name = key.to_string();
        if !until_ready(&key, &mut reports, &shutdown).await {
            return Ok(());
        }
        let edge = if mode == GatewayMode::Passthrough {
            None
        } else {
            let mut edge =
                (*crate::pki::tls::server_config(self.certificate.clone(), self.verifier)
                    .context("failed to build the TLS configuration")?)
                .clone();
            if mode == GatewayMode::Tunnel {
                // CONNECT is HTTP/1.1; an agent's raw inner session offers no ALPN.
                edge.alpn_protocols = vec![b"http/1.1".to_vec()];
            }
            Some(Arc::new(edge))
        };
        let (pool, accepting) = match self.inside {
            Some((listener, pool)) => {
                let mut tls =
                    (*crate::pki::tls::server_config(self.certificate, self.inside_verifier)
                        .context("failed to build the dial-out TLS configuration")?)
                    .clone();
                tls.alpn_protocols.clear();
                tracing::info!(listen = %listener.local_addr()?, "waiting for inside servers to dial out");
                let accepting = crate::gateway::accept_inside(
                    listener,
                    Arc::new(tls),
                    self.config.clone(),
                    pool.clone(),
                    counters.clone(),
                    shutdown.clone(),
                );
                (Some(pool), Some(accepting))
            }
            None => (None, None),
        };
        tracing::info!(
            gateway = %name,
            listen = %self.listener.local_addr()?,
            mode = ?mode,
            %backend,
            routes,
            "relaying"
        );
        let relaying = crate::gateway::run(
            self.listener,
            self.config,
            edge,
            pool,
            counters,
            budget,
            shutdown,
        );
        match accepting {
            Some(accepting) => {
                tokio::join!(accepting, relaying);
            }
            None => relaying.await,
        }
        Ok(())
    }
}

/// Waits until the Gateway `key` is Ready, logging why not each time the reason changes;
/// false when shut down first.
async fn until_ready(
    key: &ObjectKey,
    reports: &mut watch::Receiver<Report>,
    shutdown: &CancellationToken,
) -> bool {
    let name = key.to_string();
    let ready = |report: &Report| {
        report
            .objects
            .iter()
            .find(|o| o.kind == ObjectKind::Gateway && o.name == key.name)
            .map(|o| {
                o.conditions
                    .iter()
                    .find(|c| c.type_ == ConditionType::Ready)
                    .map(|c| (c.status == ConditionStatus::True, c.message.clone()))
                    .unwrap_or_default()
            })
    };
    let mut said = String::new();
    loop {
        if let Some((true, _)) = ready(&reports.borrow_and_update()) {
            return true;
        }
        if let Some((false, message)) = ready(&reports.borrow())
            && message != said
        {
            tracing::warn!(gateway = %name, %message, "not relaying yet");
            said = message;
        }
        tokio::select! {
            () = shutdown.cancelled() => return false,
            changed = reports.changed() => if changed.is_err() { return false },
        }
    }
}
