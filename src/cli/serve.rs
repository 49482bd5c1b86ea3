//! `tessera serve`: a configuration (directory, git branch or the cluster's custom
//! resources) watched and reconciled, the agent-facing server, and the admin API.
//!
//! `start_with` reads as the order things come up in: the admin listener is bound first (so
//! its address can be logged), then the source publishes its first snapshot, the state
//! database is opened and leadership decided, the agent-facing listeners start, then
//! reconcile, and last the admin API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;
use tokio::sync::watch;

use super::admin::AdminArgs;
use super::git::{GitArgs, first_git_snapshot, webhook};
use super::kube::{KubeArgs, Snapshots, connect, start_kube};
use super::running::{
    Running, Tasks, connection_budget, create_state_dir, server_runtime, shutdown_signal,
};
use crate::budget::ConnectionBudget;
use crate::desired;
use crate::leader::{AdvisoryLock, Leadership};
use crate::reconcile;
use crate::server::admin::{self, Report};
use crate::server::agent::{self, Listen, Routes, Shared};
use crate::server::metrics::{Metrics, Timed};
use crate::sources::dir::DirSource;
use crate::store::db::Database;

/// The admin API's port on loopback unless `--admin-address` says otherwise (Prometheus's
/// neighbourhood, and what the chart's probes and the CLI expect).
const ADMIN_PORT: u16 = 9090;

/// `tessera serve`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "Examples:
  tessera serve --config fleet/                 a directory; state in fleet/.tessera
  tessera serve --git https://git.example.com/it/fleet.git --branch main --state /var/lib/tessera
  tessera serve --kube --namespace tessera      the cluster's Tessera resources
  tessera serve --config fleet/ --database postgres://tessera@db.example.com:5432/tessera")]
pub struct ServeArgs {
    /// The configuration directory to serve (directory mode).
    #[arg(
        help_heading = "Source",
        long,
        env = "TESSERA_CONFIG",
        required_unless_present_any = ["kube", "git"],
        conflicts_with_all = ["kube", "git"]
    )]
    pub config: Option<PathBuf>,
    /// State directory (database, fragments, certificates, status files).
    /// Default: `<config>/.tessera`, or `/var/lib/tessera` with `--kube`; required with
    /// `--git`.
    #[arg(long, env = "TESSERA_STATE", help_heading = "State")]
    pub state: Option<PathBuf>,
    #[command(flatten, next_help_heading = "Git source")]
    pub git: GitArgs,
    /// Keep computers, inventories and deployment states in this PostgreSQL database
    /// (`postgres://user@host:port/name`, no TLS: a trusted network) instead of SQLite in
    /// the state directory. Several servers on one database serve agents together; one of
    /// them (an advisory lock decides) reconciles, and the others follow it. Each keeps its
    /// own state directory.
    #[arg(long, env = "TESSERA_DATABASE", help_heading = "State")]
    pub database: Option<String>,
    #[command(flatten, next_help_heading = "Admin API")]
    pub admin: AdminArgs,
    /// Accept a configuration with no objects at all as "remove everything". Without it, an
    /// empty read (a broken mount, a bad checkout) prunes nothing.
    #[arg(long, env = "TESSERA_ALLOW_EMPTY", help_heading = "Source")]
    pub allow_empty: bool,
    /// Start with an empty state database where the state directory has state but its
    /// database is missing (deleted) or damaged (the damaged file is moved aside).
    /// Computers, deployment states and enrollment tokens are then lost.
    #[arg(long, env = "TESSERA_RESET_STATE", help_heading = "State")]
    pub reset_state: bool,
    #[command(flatten, next_help_heading = "Kubernetes")]
    pub kube: KubeArgs,
}

impl ServeArgs {
    /// `tessera serve --config DIR` with every other flag at its default, except the admin
    /// API, on a free loopback port: what tests start. Change a field with
    /// `ServeArgs { allow_empty: true, ..ServeArgs::for_config(dir) }`.
    pub fn for_config(config: impl Into<PathBuf>) -> Self {
        Self {
            config: Some(config.into()),
            ..Self::for_state(None)
        }
    }

    /// Like `for_config`, with no configuration yet and the state directory `state`: set
    /// `git` or `kube` to say where the configuration comes from.
    pub fn for_state(state: impl Into<Option<PathBuf>>) -> Self {
        Self {
            config: None,
            state: state.into(),
            git: GitArgs::default(),
            database: None,
            admin: AdminArgs::on(SocketAddr::from(([127, 0, 0, 1], 0))),
            allow_empty: false,
            reset_state: false,
            kube: KubeArgs::default(),
        }
    }
}

/// Serves until Ctrl-C or SIGTERM.
pub(super) fn run(args: ServeArgs) -> Result<ExitCode> {
    server_runtime()?.block_on(async { start(args).await?.until(shutdown_signal()).await })?;
    Ok(ExitCode::SUCCESS)
}

/// Starts everything `tessera serve` runs and returns once the admin API listens.
pub async fn start(args: ServeArgs) -> Result<Running> {
    let client = if args.kube.kube {
        Some(connect().await?)
    } else {
        None
    };
    start_with(args, client).await
}

/// `start`, with the Kubernetes client to use in `--kube` mode (tests hand in a mock).
pub async fn start_with(args: ServeArgs, client: Option<kube::Client>) -> Result<Running> {
    let mut tasks = Tasks::default();
    let (report_tx, report_rx) = watch::channel(Report::default());
    args.admin
        .refuse_unprotected(args.admin.address_or(ADMIN_PORT))?;
    let admin_tls = args.admin.tls()?;
    let admin = admin::bind(args.admin.address_or(ADMIN_PORT)).await?;
    let admin_address = admin.local_addr()?;
    let source = start_source(&args, client, admin_address, &report_rx, &mut tasks).await?;
    let (db, leadership) = open_state(&args, &source, &mut tasks).await?;
    super::journal::record_reports(
        report_rx.clone(),
        leadership.clone(),
        db.clone(),
        &mut tasks,
    );
    let metrics = Arc::new(Metrics::default());
    let budget = connection_budget()?;
    let (passes, queue) = admin::pass_channel();
    let push = Arc::new(crate::server::push::Registry::new());
    let mut runtime = start_agent_server(&source, &db, &metrics, &budget, &push, &mut tasks)?;
    runtime.passes = Some(queue);
    runtime.identity = identity(&args, admin_address);
    let steering = admin::Steering {
        db: db.clone(),
        reports: report_rx.clone(),
        leader: leader_view(
            &leadership,
            &db,
            &runtime.identity,
            source.lease_holder.clone(),
        ),
        passes,
        fetch: source.fetch.clone(),
        wait: admin::PASS_WAIT,
        replica: runtime.identity.clone(),
    };
    let auth = args.admin.authentication(admin_address, Some(db.clone()))?;
    let (app, stats) = admin_app(
        &args,
        auth,
        &report_rx,
        db,
        &metrics,
        // The push wake route rides with the webhook's: merged before authentication.
        Some(
            admin::wake_app(steering.clone(), push).merge(source.hooks.clone().unwrap_or_default()),
        ),
        steering,
    );
    start_reconcile(&args, source, leadership, runtime, report_tx, &mut tasks);
    tasks.spawn(|token| async move {
        admin::serve(admin, app, admin_tls, budget, stats, token)
            .await
            .map_err(Into::into)
    });
    Ok(tasks.running(admin_address, report_rx))
}

/// Where the configuration comes from, once its first snapshot is published.
struct Source {
    /// Database, fragments, certificates and status files.
    state_dir: PathBuf,
    /// Where relative file names of the configuration (package content) resolve.
    config_root: PathBuf,
    snapshots: Snapshots,
    /// The git push webhook, for the admin API.
    hooks: Option<axum::Router>,
    /// Wakes the git source to fetch now (the webhook's, and `tessera reconcile --source`).
    fetch: Option<Arc<tokio::sync::Notify>>,
    /// In Kubernetes mode: who holds the Lease (the leader's pod name).
    lease_holder: Option<watch::Receiver<Option<String>>>,
    /// In Kubernetes mode: the Secrets reconcile reads and writes, and the Lease.
    kube: Option<(Arc<dyn reconcile::secrets::Secrets>, watch::Receiver<bool>)>,
}

/// Starts the source the arguments name and logs, once, what is served.
async fn start_source(
    args: &ServeArgs,
    client: Option<kube::Client>,
    admin_address: SocketAddr,
    reports: &watch::Receiver<Report>,
    tasks: &mut Tasks,
) -> Result<Source> {
    let scheme = if args.admin.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let admin = format!("{scheme}://{admin_address}");
    match (&args.git.git, &args.config, client) {
        (Some(_), _, _) => {
            let (state_dir, source, wake, first) =
                first_git_snapshot(&args.git, args.state.as_ref()).await?;
            tracing::info!(
                git = %source.display_url(),
                branch = %args.git.branch,
                commit = %first.revision,
                state = %state_dir.display(),
                %admin,
                "serving"
            );
            let config_root = first.root.clone().unwrap_or_else(|| state_dir.clone());
            let (snapshot_tx, snapshots) = watch::channel(first);
            let hooks = webhook(&args.git, &wake)?;
            let fetch = Some(wake.clone());
            tasks.spawn(|token| async move {
                source
                    .run(snapshot_tx, wake, token)
                    .await
                    .map_err(Into::into)
            });
            Ok(Source {
                state_dir,
                config_root,
                snapshots: Snapshots::Read(snapshots),
                hooks,
                fetch,
                kube: None,
                lease_holder: None,
            })
        }
        (None, Some(config), _) => {
            if !config.is_dir() {
                bail!("--config {}: not a directory", config.display());
            }
            let state_dir = args
                .state
                .clone()
                .unwrap_or_else(|| config.join(".tessera"));
            create_state_dir(&state_dir)?;
            let source = DirSource::new(config, vec![state_dir.clone()])?;
            let (snapshot_tx, snapshots) = watch::channel(source.scan());
            tracing::info!(
                config = %source.root().display(),
                state = %state_dir.display(),
                %admin,
                "serving"
            );
            let config_root = source.root().to_path_buf();
            tasks.spawn(
                |token| async move { source.run(snapshot_tx, token).await.map_err(Into::into) },
            );
            Ok(Source {
                state_dir,
                config_root,
                snapshots: Snapshots::Read(snapshots),
                hooks: None,
                fetch: None,
                kube: None,
                lease_holder: None,
            })
        }
        (None, None, Some(client)) => {
            let state_dir = args
                .state
                .clone()
                .unwrap_or_else(|| PathBuf::from("/var/lib/tessera"));
            create_state_dir(&state_dir)?;
            tracing::info!(
                namespace = args.kube.namespace.as_deref().unwrap_or("(all)"),
                state = %state_dir.display(),
                %admin,
                "serving from Kubernetes"
            );
            // `None` until every kind has been listed: reconcile makes no pass before.
            let (listing_tx, listings) = watch::channel(None);
            let (secrets, leader, holder) =
                start_kube(&args.kube, client, listing_tx, reports.clone(), tasks);
            // Relative file names (package content directories) resolve below the state
            // directory: in Kubernetes there is no configuration directory.
            Ok(Source {
                config_root: state_dir.clone(),
                state_dir,
                snapshots: Snapshots::Listed(listings),
                hooks: None,
                fetch: None,
                kube: Some((secrets, leader)),
                lease_holder: Some(holder),
            })
        }
        (None, None, None) => bail!("give --config DIR, --git URL or --kube"),
    }
}

/// Opens the state database and decides who reconciles: in Kubernetes the holder of the
/// Lease; on PostgreSQL the holder of the advisory lock; otherwise this process.
async fn open_state(
    args: &ServeArgs,
    source: &Source,
    tasks: &mut Tasks,
) -> Result<(Arc<Database>, Leadership)> {
    let lease = source.kube.as_ref().map(|(_, lease)| lease.clone());
    let (db, leadership) = match &args.database {
        None => {
            // A full disk opens it read-only; `open_state` says so.
            let (db, _opened) = Database::open_state(&source.state_dir, args.reset_state)?;
            (db, lease.map_or_else(Leadership::always, Leadership::new))
        }
        Some(url) if lease.is_some() => {
            let db = open_postgres(url).await?;
            (db, lease.map_or_else(Leadership::always, Leadership::new))
        }
        Some(url) => {
            let db = open_postgres(url).await?;
            let election = AdvisoryLock::new(url)?;
            let (sender, receiver) = watch::channel(false);
            tasks.spawn(|token| async move {
                election.run(sender, token).await;
                Ok(())
            });
            (db, Leadership::new(receiver))
        }
    };
    let db = Arc::new(db);
    // Last contacts kept in memory are written every few seconds (SQLite).
    Database::write_behind(&db);
    Ok((db, leadership))
}

/// Connects to PostgreSQL (blocking, so on a blocking thread).
async fn open_postgres(url: &str) -> Result<Database> {
    let opened = url.to_owned();
    Ok(
        tokio::task::spawn_blocking(move || Database::postgres(&opened))
            .await
            .context("opening the database panicked")??,
    )
}

/// Starts the agent-facing server: its listeners (as the Server resource will say, through
/// `Listen`), dial-out connections to gateways, and the channels reconcile publishes on.
fn start_agent_server(
    source: &Source,
    db: &Arc<Database>,
    metrics: &Arc<Metrics>,
    budget: &Arc<ConnectionBudget>,
    push: &Arc<crate::server::push::Registry>,
    tasks: &mut Tasks,
) -> Result<reconcile::routes::Runtime> {
    let (routes_tx, routes_rx) = watch::channel(Arc::new(Routes::default()));
    let (listen_tx, listen_rx) = watch::channel(Listen::default());
    let (certificate_tx, certificate_rx) = watch::channel(None);
    let (verifier_tx, verifier_rx) = watch::channel(
        crate::pki::tls::client_verifier(crate::pki::tls::ClientAuth::None, &[], vec![])
            .context("failed to build the default client verifier")?,
    );
    let (bound_tx, bound_rx) = watch::channel(crate::server::listener::Bound::default());
    let (activity_tx, activity_rx) = watch::channel(0u64);
    let (dial_out_tx, dial_out_rx) = watch::channel(None);
    let shared = Shared {
        routes: routes_rx,
        db: db.clone(),
        store: source.state_dir.join("download"),
        metrics: metrics.clone(),
        activity: Arc::new(activity_tx),
        clock: Arc::new(|| jiff::Timestamp::now().as_second()),
        cache: Arc::new(agent::FragmentCache::new(agent::FRAGMENT_CACHE)),
        results: Arc::default(),
        enrollments: Default::default(),
    };
    let tls = crate::pki::tls::server_config(certificate_rx, verifier_rx)
        .context("failed to build the TLS configuration")?;
    // Push: agents hold `/v1/wait`; route changes wake the computers they concern.
    let (push_routes, push_db, push_registry) = (shared.routes.clone(), db.clone(), push.clone());
    tasks.spawn(|token| async move {
        crate::server::push::follow(push_registry, push_routes, push_db, token).await;
        Ok(())
    });
    let https_app = crate::server::push::layer(agent::app(shared.clone()), push);
    let http_app = agent::fragments_app(shared);
    // Dial-out: connections the server keeps open to a gateway, served like accepted ones.
    let (dialed_tx, dialed_rx) = tokio::sync::mpsc::channel(64);
    tasks.spawn(|token| async move {
        crate::server::dial_out::run(dial_out_rx, dialed_tx, token).await;
        Ok(())
    });
    let (dialed_tls, dialed_app) = (tls.clone(), https_app.clone());
    let (dialed_metrics, dialed_budget) = (metrics.clone(), budget.clone());
    tasks.spawn(|token| async move {
        agent::serve_dialed(
            dialed_rx,
            dialed_tls,
            dialed_app,
            dialed_metrics,
            dialed_budget,
            token,
        )
        .await;
        Ok(())
    });
    let (listener_metrics, listener_budget) = (metrics.clone(), budget.clone());
    tasks.spawn(|token| async move {
        agent::run(
            listen_rx,
            tls,
            https_app,
            http_app,
            listener_metrics,
            listener_budget,
            bound_tx,
            token,
        )
        .await
        .map_err(Into::into)
    });
    Ok(reconcile::routes::Runtime {
        db: db.clone(),
        routes: routes_tx,
        listen: listen_tx,
        certificate: certificate_tx,
        verifier: verifier_tx,
        bound: bound_rx,
        activity: activity_rx,
        metrics: metrics.clone(),
        dial_out: dial_out_tx,
        passes: None,
        identity: String::new(),
    })
}

/// This server's name among replicas: the pod (or host) name and its admin address.
fn identity(args: &ServeArgs, admin_address: SocketAddr) -> String {
    let host = args
        .kube
        .pod_name
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("tessera-{}", std::process::id()));
    format!("{host} (admin {admin_address})")
}

/// Who leads, for the admin API's actions: this server while `leadership` says so, else
/// the Lease's holder in Kubernetes, else the identity the leader last recorded in the
/// (shared) state database, unless that is this server's own from when it led.
fn leader_view(
    leadership: &Leadership,
    db: &Arc<Database>,
    me: &str,
    lease_holder: Option<watch::Receiver<Option<String>>>,
) -> admin::LeaderView {
    let (leadership, db, me) = (leadership.clone(), db.clone(), me.to_owned());
    admin::LeaderView::new(move || {
        if leadership.is_leader() {
            return admin::Leader::This;
        }
        let holder = lease_holder
            .as_ref()
            .and_then(|holder| holder.borrow().clone());
        let recorded = || {
            db.setting(reconcile::LEADER_SETTING)
                .ok()
                .flatten()
                .filter(|name| *name != me)
        };
        admin::Leader::Other(holder.or_else(recorded))
    })
}

/// Starts the reconcile loop on the source's snapshots.
fn start_reconcile(
    args: &ServeArgs,
    source: Source,
    leadership: Leadership,
    runtime: reconcile::routes::Runtime,
    reports: watch::Sender<Report>,
    tasks: &mut Tasks,
) {
    let config = reconcile::Config {
        state_dir: source.state_dir,
        config_dir: source.config_root,
        options: desired::Options {
            allow_empty: args.allow_empty,
        },
        environment: reconcile::certificates::Environment::new(|name| std::env::var(name).ok()),
        clock: reconcile::Clock::system(),
        leadership,
        shared_database: args.database.is_some(),
        runtime: Some(Arc::new(runtime)),
        gateway: None,
        secrets: source.kube.map(|(secrets, _)| secrets),
    };
    let snapshots = source.snapshots;
    tasks.spawn(|token| async move {
        // In Kubernetes mode, no pass runs before every kind has been listed whole: the
        // channel holds no snapshot until then (see `reconcile::Input`).
        snapshots
            .reconcile(reports, config, token)
            .await
            .map_err(Into::into)
    });
}

/// The admin API (objects, deployments, metrics, the steering actions, and the git webhook
/// if any), answering only to the host names it knows; and the connection statistics of
/// its listener.
fn admin_app(
    args: &ServeArgs,
    auth: admin::AdminAuth,
    reports: &watch::Receiver<Report>,
    db: Arc<Database>,
    metrics: &Arc<Metrics>,
    hooks: Option<axum::Router>,
    steering: admin::Steering,
) -> (axum::Router, Arc<crate::budget::Stats>) {
    let stats = metrics.connections.admin.clone();
    let mut app = admin::app_with_database(reports.clone(), db.clone())
        .merge(admin::events_app(db.clone()))
        .merge(admin::deployments_app(admin::Deployments {
            db,
            metrics: metrics.clone(),
            reports: reports.clone(),
        }))
        .merge(admin::console_app(steering.clone()))
        .merge(admin::actions_app(steering));
    if let Some(hooks) = hooks {
        app = app.merge(hooks);
    }
    let app = admin::protect(app, auth);
    let app = crate::server::metrics::requests::layer(app, metrics, Timed::Admin);
    (
        admin::host_checked(app, admin::AdminHosts::new(&args.admin.hosts)),
        stats,
    )
}
