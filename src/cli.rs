//! The `tessera` command line: the only place that reads the environment, installs the
//! crypto provider and spawns tasks.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::desired::{self, DesiredState};
use crate::leader::{AdvisoryLock, Leadership};
use crate::reconcile;
use crate::reconcile::fragments::Packages;
use crate::resources::{Kind, ObjectKey, Resource, crd};
use crate::server::admin::{self, Report};
use crate::server::agent::{self, Listen, Routes, Shared};
use crate::server::metrics::Metrics;
use crate::sources::dir::DirSource;
use crate::store::db::Database;

/// How long running tasks get to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Declarative, GitOps-driven software deployment for endpoint fleets.
#[derive(Debug, Parser)]
#[command(name = "tessera", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter, e.g. `info`, `tessera=debug` (RUST_LOG syntax).
    #[arg(long, global = true, env = "TESSERA_LOG", default_value = "info")]
    log: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a configuration directory: watch it, reconcile it, and run the admin API.
    Serve(ServeArgs),
    /// Parse and validate a configuration directory; print every problem and exit 1 if any.
    Validate(ValidateArgs),
    /// Print the CustomResourceDefinitions of every kind as YAML.
    Crds(CrdsArgs),
    /// Connect to a TLS server, show the chain it offers, and explain what is wrong.
    Doctor(DoctorArgs),
    /// Build the activated packages and write the `download/` tree (info files and
    /// fragments) into a directory, for a static web server or a site mirror.
    Export(ExportArgs),
    /// Deployment states: packages × states, or one computer's deployments and history.
    Status(StatusArgs),
    /// Enrollment tokens for Tessera's own agents: create, list, revoke.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Tessera's own agent: enroll, check in, download, verify, install, report.
    Agent(AgentArgs),
    /// Ask a computer's agent to check in now (over mutual TLS, to the agent's listener).
    Notify(NotifyArgs),
    /// The DMZ relay, configured by a Gateway resource (this version: passthrough mode).
    Gateway(GatewayArgs),
}

/// `tessera gateway`.
#[derive(Debug, Args)]
struct GatewayArgs {
    /// A YAML file, or a directory, holding the Gateway resource.
    #[arg(long, env = "TESSERA_CONFIG")]
    config: PathBuf,
    /// Which Gateway, when there are several.
    #[arg(long)]
    name: Option<String>,
    /// Address of `/metrics` and `/healthz` (keep it off the internet-facing side).
    #[arg(long, env = "TESSERA_ADMIN_ADDRESS", default_value = "127.0.0.1:9091")]
    admin_address: SocketAddr,
}

/// `tessera agent`.
#[derive(Debug, Args)]
struct AgentArgs {
    /// The server, `https://host:port`.
    #[arg(long, env = "TESSERA_SERVER")]
    server: String,
    /// Where the agent keeps its identity, downloads and results.
    #[arg(long, env = "TESSERA_AGENT_STATE")]
    state: PathBuf,
    /// The CA certificate to trust for the server at enrollment (`ca.crt` of the server's
    /// Certificate); afterwards the agent keeps the one the server gave it.
    #[arg(long, env = "TESSERA_CA")]
    ca: Option<PathBuf>,
    /// An enrollment token (`tessera token create`), needed once.
    #[arg(long, env = "TESSERA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A tag to report (may be repeated), matched by Affectations' `targets.tags`.
    #[arg(long)]
    tag: Vec<String>,
    /// One pass, then exit (for cron, tests and first runs).
    #[arg(long)]
    once: bool,
    /// An HTTP proxy to reach the server through (CONNECT; TLS stays end to end),
    /// `http://[user:password@]host:port`.
    #[arg(long, env = "HTTPS_PROXY", hide_env_values = true)]
    proxy: Option<String>,
    /// Time between passes when running as a service (default: an hour).
    #[arg(long)]
    interval: Option<crate::resources::quantity::Duration>,
    /// Listen here for the server's "check in now" (`tessera notify`), with mutual TLS.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The address the server should call (default: the --listen address).
    #[arg(long, requires = "listen")]
    notify_address: Option<String>,
}

/// `tessera notify`.
#[derive(Debug, Args)]
struct NotifyArgs {
    #[command(flatten)]
    state: StateArgs,
    /// The computer (device id or name) whose agent should check in now.
    computer: String,
}

/// Where the state database is: `--state`, or `<config>/.tessera`.
#[derive(Debug, Clone, Args)]
struct StateArgs {
    /// The state directory of a `tessera serve` (default `<config>/.tessera`).
    #[arg(long, env = "TESSERA_STATE")]
    state: Option<PathBuf>,
    /// The configuration directory, to find the default state directory.
    #[arg(long, env = "TESSERA_CONFIG", default_value = ".")]
    config: PathBuf,
    /// The PostgreSQL database of the servers, if they use one (`postgres://...`).
    #[arg(long, env = "TESSERA_DATABASE")]
    database: Option<String>,
}

impl StateArgs {
    /// Opens the state database, which `tessera serve` creates. Blocks (PostgreSQL).
    fn open(&self) -> Result<Database> {
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

/// `tessera token`.
#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Make a token; it is printed once and stored only as a hash.
    Create {
        #[command(flatten)]
        state: StateArgs,
        /// How long it can be used.
        #[arg(long, default_value = "1h")]
        ttl: crate::resources::quantity::Duration,
        /// How many agents may enroll with it.
        #[arg(long, default_value_t = 1)]
        uses: i64,
        /// What it is for (shown in `tessera token list`).
        #[arg(long, default_value = "")]
        note: String,
    },
    /// List tokens with their uses, last use, expiry and revocation (never the secrets).
    List {
        #[command(flatten)]
        state: StateArgs,
        #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
        output: OutputFormat,
    },
    /// Revoke a token by its id: agents can no longer enroll with it.
    Revoke {
        #[command(flatten)]
        state: StateArgs,
        /// The token's id (the 12 hex digits after `tsr_`).
        id: String,
    },
}

/// `tessera status`.
#[derive(Debug, Args)]
struct StatusArgs {
    #[command(flatten)]
    state: StateArgs,
    /// Show one computer (device id or name): its facts, deployments and history.
    #[arg(long)]
    computer: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    output: OutputFormat,
}

/// `tessera export`.
#[derive(Debug, Args)]
struct ExportArgs {
    /// The configuration directory.
    #[arg(long, env = "TESSERA_CONFIG")]
    config: PathBuf,
    /// Where to write: one directory per package id. Package directories there that are no
    /// longer activated are removed.
    #[arg(long)]
    output: PathBuf,
    /// State directory, whose build cache is reused (default `<config>/.tessera`).
    #[arg(long, env = "TESSERA_STATE")]
    state: Option<PathBuf>,
}

/// `tessera doctor`.
#[derive(Debug, Args)]
struct DoctorArgs {
    /// The server, `host:port`.
    address: String,
    /// The name the client uses (default: the host of ADDRESS), as an agent's URL has it.
    #[arg(long)]
    server_name: Option<String>,
    /// The CA file the client trusts (an OCS agent's cacert.pem, or Tessera's ca.crt).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// A client certificate chain to present (PEM), with --key.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// CRLs the client checks (PEM); may be repeated.
    #[arg(long)]
    crl: Vec<PathBuf>,
    /// Connection and handshake timeout.
    #[arg(long, default_value = "10s")]
    timeout: crate::resources::quantity::Duration,
}

/// `tessera serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// The configuration directory to serve.
    #[arg(long, env = "TESSERA_CONFIG")]
    pub config: PathBuf,
    /// State directory (database, fragments, certificates, status files).
    /// Default: `<config>/.tessera`.
    #[arg(long, env = "TESSERA_STATE")]
    pub state: Option<PathBuf>,
    /// Keep computers, inventories and deployment states in this PostgreSQL database
    /// (`postgres://user@host:port/name`, no TLS: a trusted network) instead of SQLite in
    /// the state directory. Several servers on one database serve agents together; one of
    /// them (an advisory lock decides) reconciles, and the others follow it. Each keeps its
    /// own state directory.
    #[arg(long, env = "TESSERA_DATABASE")]
    pub database: Option<String>,
    /// Address of the admin API (health, readiness, objects). Keep it on loopback or behind
    /// mutual TLS: it shows what is deployed where.
    #[arg(long, env = "TESSERA_ADMIN_ADDRESS", default_value = "127.0.0.1:9090")]
    pub admin_address: SocketAddr,
    /// Accept a configuration with no objects at all as "remove everything". Without it, an
    /// empty read (a broken mount, a bad checkout) prunes nothing.
    #[arg(long, env = "TESSERA_ALLOW_EMPTY")]
    pub allow_empty: bool,
}

/// `tessera validate`.
#[derive(Debug, Args)]
struct ValidateArgs {
    /// The configuration directory.
    dir: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    output: OutputFormat,
}

/// `tessera crds`.
#[derive(Debug, Args)]
struct CrdsArgs {
    /// Write one file per CRD into this directory instead of printing them.
    #[arg(long)]
    output_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OutputFormat {
    Human,
    Json,
}

/// `tessera-agent`: the agent alone, for endpoints (it links no Kubernetes code).
#[derive(Debug, Parser)]
#[command(name = "tessera-agent", version, about = "Tessera's agent", long_about = None)]
struct AgentCli {
    #[command(flatten)]
    args: AgentArgs,
    /// Log filter, e.g. `info`, `tessera=debug` (RUST_LOG syntax).
    #[arg(long, env = "TESSERA_LOG", default_value = "info")]
    log: String,
}

/// The `tessera-agent` binary's command line.
pub fn agent_main() -> ExitCode {
    let cli = AgentCli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    init_logging(&cli.log);
    runtime()
        .and_then(|rt| rt.block_on(agent(cli.args)))
        .unwrap_or_else(|error| {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        })
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // One crypto provider for every rustls user in the process (see README, dependencies).
    let _ = rustls::crypto::ring::default_provider().install_default();
    init_logging(&cli.log);
    let result = match cli.command {
        Command::Validate(args) => validate(&args),
        Command::Crds(args) => crds(&args).map(|()| ExitCode::SUCCESS),
        Command::Serve(args) => runtime()
            .and_then(|rt| rt.block_on(serve(args)))
            .map(|()| ExitCode::SUCCESS),
        Command::Export(args) => export(&args),
        Command::Status(args) => status(&args),
        Command::Token(command) => token(command),
        Command::Agent(args) => runtime().and_then(|rt| rt.block_on(agent(args))),
        Command::Notify(args) => runtime().and_then(|rt| rt.block_on(notify(&args))),
        Command::Gateway(args) => runtime().and_then(|rt| rt.block_on(gateway(&args))),
        Command::Doctor(args) => doctor_options(&args)
            .and_then(|options| runtime().and_then(|rt| rt.block_on(crate::doctor::run(options)))),
    };
    result.unwrap_or_else(|error| {
        eprintln!("error: {error:#}");
        ExitCode::FAILURE
    })
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")
}

fn validate(args: &ValidateArgs) -> Result<ExitCode> {
    let state = evaluate_dir(&args.dir)?;
    let valid = state.entries.values().filter(|e| e.is_actionable()).count();
    let files: std::collections::BTreeSet<_> = state
        .problems
        .iter()
        .filter_map(|p| p.file.as_deref())
        .collect();
    let mut out = std::io::stdout().lock();
    match args.output {
        OutputFormat::Human => {
            for problem in &state.problems {
                writeln!(out, "{problem}")?;
            }
            if state.problems.is_empty() {
                writeln!(out, "{} objects, no problems", state.entries.len())?;
            } else {
                writeln!(
                    out,
                    "{} problem{} in {} file{}; {valid} of {} objects valid",
                    state.problems.len(),
                    plural(state.problems.len()),
                    files.len(),
                    plural(files.len()),
                    state.entries.len()
                )?;
            }
        }
        OutputFormat::Json => {
            let body = serde_json::json!({
                "objects": state.entries.len(),
                "valid": valid,
                "problems": state.problems,
            });
            writeln!(out, "{}", serde_json::to_string_pretty(&body)?)?;
        }
    }
    Ok(if state.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn doctor_options(args: &DoctorArgs) -> Result<crate::doctor::Options> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).with_context(|| format!("failed to read {}", path.display()))
    };
    let identity = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
        _ => None,
    };
    Ok(crate::doctor::Options {
        address: args.address.clone(),
        server_name: args.server_name.clone(),
        trusted: args.ca.as_deref().map(read).transpose()?,
        identity,
        crls: args.crl.iter().map(|p| read(p)).collect::<Result<_>>()?,
        timeout: args.timeout.as_std(),
    })
}

fn export(args: &ExportArgs) -> Result<ExitCode> {
    let state = evaluate_dir(&args.config)?;
    let mut out = std::io::stdout().lock();
    let relevant: Vec<_> = state
        .problems
        .iter()
        .filter(|p| {
            p.object
                .as_ref()
                .is_none_or(|o| matches!(o.kind, Kind::Package | Kind::Activation))
        })
        .collect();
    if !relevant.is_empty() {
        for problem in &relevant {
            writeln!(out, "{problem}")?;
        }
        bail!("the configuration has problems with packages or activations: nothing was exported");
    }
    let state_dir = args
        .state
        .clone()
        .unwrap_or_else(|| args.config.join(".tessera"));
    let config_dir = args
        .config
        .canonicalize()
        .with_context(|| format!("failed to read {}", args.config.display()))?;
    let mut packages = Packages::new(state_dir.clone(), config_dir);
    let outcomes = packages.reconcile(&state);

    // Only packages an Activation makes deployable are published.
    let activated: std::collections::BTreeSet<ObjectKey> = state
        .actionable()
        .filter_map(|(key, resource)| match resource {
            Resource::Activation(a) => Some(ObjectKey::referenced(
                Kind::Package,
                &key.namespace,
                &a.spec.package_ref,
            )),
            _ => None,
        })
        .collect();
    let mut exported = std::collections::BTreeSet::new();
    let mut failures = 0;
    for key in &activated {
        let Some(outcome) = outcomes.get(key) else {
            continue;
        };
        let Some(id) = outcome
            .details
            .get("packageId")
            .and_then(|v| v.as_str())
            .filter(|_| outcome.ready)
        else {
            writeln!(out, "{key}: not built: {}", outcome.message)?;
            failures += 1;
            continue;
        };
        copy_package(&state_dir.join("download").join(id), &args.output, id)?;
        writeln!(out, "{key}: {id} ({})", outcome.message)?;
        exported.insert(id.to_owned());
    }
    // Like `rsync --delete`: package directories no longer activated go away.
    if let Ok(entries) = std::fs::read_dir(&args.output) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_digit())
                && !exported.contains(&name)
            {
                std::fs::remove_dir_all(entry.path())
                    .with_context(|| format!("failed to remove {}", entry.path().display()))?;
                writeln!(out, "removed {name}")?;
            }
        }
    }
    writeln!(
        out,
        "{} package{} in {}",
        exported.len(),
        plural(exported.len()),
        args.output.display()
    )?;
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Copies a stored package into `output/<id>`, whole or not at all.
fn copy_package(stored: &Path, output: &Path, id: &str) -> Result<()> {
    let target = output.join(id);
    std::fs::create_dir_all(output)
        .with_context(|| format!("failed to create {}", output.display()))?;
    let staging = output.join(format!(".export-{id}"));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    for entry in std::fs::read_dir(stored)
        .with_context(|| format!("failed to read {}", stored.display()))?
        .flatten()
    {
        std::fs::copy(entry.path(), staging.join(entry.file_name()))
            .with_context(|| format!("failed to copy {}", entry.path().display()))?;
    }
    if target.exists() {
        std::fs::remove_dir_all(&target)?;
    }
    std::fs::rename(&staging, &target)
        .with_context(|| format!("failed to write {}", target.display()))?;
    Ok(())
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

async fn agent(args: AgentArgs) -> Result<ExitCode> {
    let config = crate::agent::Config {
        server: args.server.trim_end_matches('/').to_owned(),
        state_dir: args.state,
        ca: args.ca,
        token: args.token,
        tags: args.tag,
        proxy: args.proxy,
        notify_address: args
            .notify_address
            .clone()
            .or_else(|| args.listen.map(|a| a.to_string())),
        clock: jiff::Timestamp::now,
    };
    let wake = Arc::new(tokio::sync::Notify::new());
    let shutdown = CancellationToken::new();
    let mut listening = false;
    loop {
        match crate::agent::run_once(&config).await {
            Ok(pass) => {
                for (id, code) in &pass.finished {
                    tracing::info!(package = %id, %code, "installed");
                }
                if args.once {
                    return Ok(ExitCode::SUCCESS);
                }
                // Listening needs the identity the first pass made.
                if let (Some(address), false) = (args.listen, listening) {
                    let listener = tokio::net::TcpListener::bind(address)
                        .await
                        .with_context(|| format!("failed to listen on {address}"))?;
                    let (config, wake, token) = (config.clone(), wake.clone(), shutdown.clone());
                    tokio::spawn(async move {
                        if let Err(error) =
                            crate::agent::listen(&config, listener, wake, token).await
                        {
                            tracing::warn!(error = %format!("{:#}", anyhow::Error::from(error)), "the notify listener stopped");
                        }
                    });
                    listening = true;
                }
            }
            Err(error) if args.once => return Err(error.into()),
            Err(error) => {
                tracing::warn!(error = %format!("{:#}", anyhow::Error::from(error)), "pass failed; retrying later")
            }
        }
        let wait = args
            .interval
            .map_or(Duration::from_secs(3600), |d| d.as_std());
        tokio::select! {
            () = shutdown_signal() => {
                shutdown.cancel();
                return Ok(ExitCode::SUCCESS);
            }
            () = tokio::time::sleep(wait) => {}
            () = wake.notified() => {}
        }
    }
}

async fn gateway(args: &GatewayArgs) -> Result<ExitCode> {
    use crate::resources::gateway::GatewayMode;
    let desired = if args.config.is_dir() {
        evaluate_dir(&args.config)?
    } else {
        let text = std::fs::read_to_string(&args.config)
            .with_context(|| format!("failed to read {}", args.config.display()))?;
        let snapshot = crate::resources::Snapshot {
            revision: "file".into(),
            files: vec![crate::resources::SourceFile {
                path: args.config.display().to_string(),
                text,
            }],
            problems: Vec::new(),
        };
        desired::evaluate(&snapshot, None, desired::Options::default())
    };
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
            "{}: no Gateway{}",
            args.config.display(),
            args.name
                .as_ref()
                .map(|n| format!(" named {n}"))
                .unwrap_or_default()
        ),
        _ => bail!(
            "{}: several Gateways; choose one with --name",
            args.config.display()
        ),
    };
    if let Some(problem) = problems.first() {
        bail!("{problem}");
    }
    if spec.mode != GatewayMode::Passthrough {
        bail!(
            "{key}: spec.mode {:?} is not part of this version of Tessera yet; passthrough is",
            spec.mode
        );
    }
    let seconds = |d: crate::resources::quantity::Duration| d.as_std();
    let config = Arc::new(crate::gateway::Config {
        backend: spec.backend.clone(),
        routes: spec
            .routes
            .iter()
            .map(|r| (r.server_name.to_ascii_lowercase(), r.backend.clone()))
            .collect(),
        handshake_timeout: seconds(spec.limits.handshake_timeout),
        idle_timeout: seconds(spec.limits.idle_timeout),
        connect_timeout: seconds(spec.limits.connect_timeout),
        max_connections: usize::try_from(spec.limits.max_connections.max(1)).unwrap_or(1),
        proxy_protocol: spec.proxy_protocol,
    });
    let listener = tokio::net::TcpListener::bind(&spec.listen)
        .await
        .with_context(|| format!("failed to listen on {}", spec.listen))?;
    tracing::info!(gateway = %key, listen = %listener.local_addr()?, backend = %config.backend, routes = config.routes.len(), "relaying (passthrough)");
    let shutdown = CancellationToken::new();
    let counters = Arc::new(crate::gateway::Counters::default());
    let listening = listener.local_addr()?.to_string();
    let metrics = {
        let counters = counters.clone();
        axum::Router::new()
            .route("/healthz", axum::routing::get(|| async { "ok\n" }))
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let text = counters.render(&listening);
                    async move { text }
                }),
            )
    };
    let admin = admin::bind(args.admin_address).await?;
    let token = shutdown.clone();
    tokio::spawn(async move { admin::serve(admin, metrics, token).await });
    let relay = tokio::spawn(crate::gateway::run(
        listener,
        config,
        counters,
        shutdown.clone(),
    ));
    shutdown_signal().await;
    shutdown.cancel();
    let _ = relay.await;
    Ok(ExitCode::SUCCESS)
}

/// The computer `wanted` names, where its agent listens, and the enrollment Issuer. Blocks.
fn notify_target(
    state: &StateArgs,
    wanted: &str,
) -> Result<(crate::store::db::Computer, String, String)> {
    let db = state.open()?;
    let computer = match db.find_computers(wanted)?.as_slice() {
        [one] => one.clone(),
        [] => bail!("no computer with device id or name {wanted:?}"),
        many => bail!(
            "{} computers are named {:?}: give a device id ({})",
            many.len(),
            wanted,
            many.iter()
                .map(|c| c.device_id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let Some(address) = db.notify_address(&computer.device_id)? else {
        bail!(
            "the agent of {} does not listen for calls (start it with --listen)",
            computer.device_id
        );
    };
    // A short-lived certificate from the enrollment Issuer names this caller as the server.
    let Some(issuer) = db.setting("enrollmentIssuer")? else {
        bail!("the Server enrolls no agents (no spec.enrollment)");
    };
    Ok((computer, address, issuer))
}

async fn notify(args: &NotifyArgs) -> Result<ExitCode> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (state, wanted) = (args.state.clone(), args.computer.clone());
    let (computer, address, issuer) =
        tokio::task::spawn_blocking(move || notify_target(&state, &wanted))
            .await
            .context("the database lookup panicked")??;
    let state = args
        .state
        .state
        .clone()
        .unwrap_or_else(|| args.state.config.join(".tessera"));
    let dir = state.join("pki/issuers").join(&issuer);
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .with_context(|| format!("failed to read {}", dir.join(name).display()))
    };
    let (ca, key) = (read("ca.crt")?, read("ca.key")?);
    let authority = crate::pki::authority::Authority::from_pem(&ca, &key, None)?;
    let caller_key = crate::pki::authority::generate_key(crate::pki::KeyType::EcdsaP256)?;
    let issued = authority.issue(
        &crate::pki::authority::LeafRequest {
            names: crate::pki::Names {
                common_name: Some("tessera server".into()),
                uris: vec![crate::protocol::v1::SERVER_URI.into()],
                ..Default::default()
            },
            usages: vec![
                crate::pki::Usage::ClientAuth,
                crate::pki::Usage::DigitalSignature,
            ],
            is_ca: false,
            lifetime: jiff::SignedDuration::from_mins(10),
        },
        &caller_key,
        jiff::Timestamp::now(),
    )?;
    let tls = crate::pki::tls::agent_call_config(
        authority.root_pem(),
        (&issued.chain_pem, &caller_key.serialize_pem()),
        crate::protocol::v1::agent_uri(&computer.device_id),
    )?;
    let call = async {
        let stream = tokio::net::TcpStream::connect(&address)
            .await
            .with_context(|| format!("failed to connect to {address}"))?;
        let name = rustls::pki_types::ServerName::try_from("agent.tessera.invalid")?;
        let mut stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, stream)
            .await
            .with_context(|| format!("the agent at {address} was not who it should be"))?;
        stream
            .write_all(b"POST /v1/notify HTTP/1.1\r\nhost: agent\r\ncontent-length: 0\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        Ok::<_, anyhow::Error>(String::from_utf8_lossy(&answer).into_owned())
    };
    let answer = tokio::time::timeout(Duration::from_secs(15), call)
        .await
        .context("the agent did not answer within 15 s")??;
    if !answer.starts_with("HTTP/1.1 202") {
        bail!(
            "the agent at {address} refused: {}",
            answer.lines().next().unwrap_or("")
        );
    }
    println!("{} ({address}) will check in now", computer.device_id);
    Ok(ExitCode::SUCCESS)
}

fn token(command: TokenCommand) -> Result<ExitCode> {
    let now = jiff::Timestamp::now().as_second();
    let mut out = std::io::stdout().lock();
    match command {
        TokenCommand::Create {
            state,
            ttl,
            uses,
            note,
        } => {
            if uses < 1 {
                bail!("--uses must be at least 1");
            }
            let db = state.open()?;
            let token = crate::pki::token::Token::generate();
            let ttl = i64::try_from(ttl.as_std().as_secs()).unwrap_or(i64::MAX);
            db.create_token(&crate::store::db::TokenRecord {
                id: token.id.clone(),
                secret_sha256: token.secret_sha256(),
                note,
                created_at: now,
                expires_at: now.saturating_add(ttl),
                max_uses: uses,
                uses: 0,
                last_used_at: None,
                revoked_at: None,
            })?;
            writeln!(out, "{}", token.reveal())?;
            eprintln!(
                "token {} allows {uses} enrollment{} until {}; it is shown only now",
                token.id,
                plural(usize::try_from(uses).unwrap_or(2)),
                jiff::Timestamp::from_second(now.saturating_add(ttl))
                    .map_or_else(|_| "forever".to_owned(), |t| t.to_string())
            );
        }
        TokenCommand::List { state, output } => {
            let tokens = state.open()?.tokens()?;
            match output {
                OutputFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&tokens)?)?,
                OutputFormat::Human => {
                    let when = |t: Option<i64>| {
                        t.and_then(|t| jiff::Timestamp::from_second(t).ok())
                            .map_or_else(|| "-".to_owned(), |t| t.to_string())
                    };
                    writeln!(
                        out,
                        "{:12}  {:7}  {:20}  {:20}  {:9}  NOTE",
                        "ID", "USES", "EXPIRES", "LAST USED", "STATE"
                    )?;
                    for t in &tokens {
                        let state = if t.revoked_at.is_some() {
                            "revoked"
                        } else if now >= t.expires_at {
                            "expired"
                        } else if t.uses >= t.max_uses {
                            "used up"
                        } else {
                            "usable"
                        };
                        writeln!(
                            out,
                            "{:12}  {:7}  {:20}  {:20}  {:9}  {}",
                            t.id,
                            format!("{}/{}", t.uses, t.max_uses),
                            when(Some(t.expires_at)),
                            when(t.last_used_at),
                            state,
                            t.note
                        )?;
                    }
                }
            }
        }
        TokenCommand::Revoke { state, id } => {
            // The id, also when given the whole token.
            let id = id
                .trim_start_matches("tsr_")
                .split('_')
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            if !state.open()?.revoke_token(&id, now)? {
                bail!("no enrollment token {id}");
            }
            writeln!(out, "token {id} revoked")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn status(args: &StatusArgs) -> Result<ExitCode> {
    let db = args.state.open()?;
    let now = jiff::Timestamp::now().as_second();
    let mut out = std::io::stdout().lock();
    let Some(wanted) = &args.computer else {
        let table = admin::deployment_table_of(&db, now)?;
        match args.output {
            OutputFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&table)?)?,
            OutputFormat::Human => write_table(&mut out, &table)?,
        }
        return Ok(ExitCode::SUCCESS);
    };
    let found = admin::computer_reports(&db, wanted)?;
    if found.is_empty() {
        bail!("no computer with device id or name {wanted:?}");
    }
    match args.output {
        OutputFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&found)?)?,
        OutputFormat::Human => {
            for report in &found {
                write_computer(&mut out, report, now)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn write_table(out: &mut impl Write, table: &admin::DeploymentTable) -> Result<()> {
    if table.packages.is_empty() {
        writeln!(out, "no deployments yet")?;
        return Ok(());
    }
    let width = table
        .packages
        .iter()
        .map(|l| l.activation.len().max(l.package.len()))
        .max()
        .unwrap_or(0)
        .max(10);
    writeln!(
        out,
        "{:width$}  {:width$}  {:10}  {:>7}  {:>7}  {:>8}  {:>5}  {:>7}  {:>5}",
        "ACTIVATION",
        "PACKAGE",
        "ID",
        "TARGETS",
        "WAITING",
        "NOTIFIED",
        "STALE",
        "SUCCESS",
        "ERROR"
    )?;
    for line in &table.packages {
        let c = &line.counts;
        writeln!(
            out,
            "{:width$}  {:width$}  {:10}  {:>7}  {:>7}  {:>8}  {:>5}  {:>7}  {:>5}",
            line.activation,
            line.package,
            line.package_id,
            c.targets,
            c.waiting,
            c.notified + c.downloading + c.installing,
            c.stale,
            c.success,
            c.error
        )?;
    }
    writeln!(
        out,
        "stale: notified more than {:#} ago without a result",
        jiff::SignedDuration::from_secs(table.stale_after)
    )?;
    Ok(())
}

fn write_computer(out: &mut impl Write, report: &admin::ComputerReport, now: i64) -> Result<()> {
    let c = &report.computer;
    let when =
        |t: i64| jiff::Timestamp::from_second(t).map_or_else(|_| t.to_string(), |t| t.to_string());
    writeln!(
        out,
        "{} ({})",
        c.device_id,
        if c.name.is_empty() {
            "no inventory yet"
        } else {
            &c.name
        }
    )?;
    writeln!(out, "  os:        {} {}", c.os_name, c.os_version)?;
    writeln!(out, "  tags:      {}", c.tags.join(", "))?;
    writeln!(out, "  addresses: {}", c.ip_addresses.join(", "))?;
    if let Some(address) = &c.address {
        writeln!(out, "  connects from: {address}")?;
    }
    writeln!(out, "  installed: {}", c.history.join(", "))?;
    writeln!(
        out,
        "  first seen {}, last contact {} ({}s ago)",
        when(c.first_seen),
        when(c.last_contact),
        now - c.last_contact
    )?;
    writeln!(out, "  deployments:")?;
    for d in &report.deployments {
        writeln!(
            out,
            "    {:30} {:10} {:9} {}",
            d.activation,
            d.package_id,
            d.state.as_str(),
            d.code.as_deref().unwrap_or("")
        )?;
        if let Some(output) = d.output.as_deref().filter(|o| !o.trim().is_empty()) {
            for line in output
                .trim_end()
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
            {
                writeln!(out, "      | {line}")?;
            }
        }
    }
    writeln!(out, "  history:")?;
    for e in &report.history {
        writeln!(
            out,
            "    {}  {:30} {:10} {:9} {}",
            when(e.at),
            if e.activation.is_empty() {
                "(not deployed here)"
            } else {
                &e.activation
            },
            e.package_id,
            e.state.as_str(),
            e.code.as_deref().unwrap_or("")
        )?;
    }
    Ok(())
}

/// Reads and evaluates a configuration directory once, as `validate` does.
pub fn evaluate_dir(dir: &Path) -> Result<DesiredState> {
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let state_dir = dir.join(".tessera");
    let source = DirSource::new(dir, vec![state_dir])?;
    Ok(desired::evaluate(
        &source.scan(),
        None,
        desired::Options::default(),
    ))
}

fn crds(args: &CrdsArgs) -> Result<()> {
    match &args.output_dir {
        None => {
            std::io::stdout()
                .lock()
                .write_all(crd::all_yaml().as_bytes())?;
        }
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("failed to create {}", dir.display()))?;
            for definition in crd::all() {
                let path = dir.join(crd::file_name(&definition));
                std::fs::write(&path, crd::to_yaml(&definition))
                    .with_context(|| format!("failed to write {}", path.display()))?;
            }
        }
    }
    Ok(())
}

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
    async fn until(mut self, signal: impl std::future::Future<Output = ()>) -> Result<()> {
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

/// Starts everything `tessera serve` runs and returns once the admin API listens.
pub async fn start(args: ServeArgs) -> Result<Running> {
    let config = args.config.clone();
    if !config.is_dir() {
        bail!("--config {}: not a directory", config.display());
    }
    let state_dir = args
        .state
        .clone()
        .unwrap_or_else(|| config.join(".tessera"));
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("failed to create state directory {}", state_dir.display()))?;
    let source = DirSource::new(&config, vec![state_dir.clone()])?;
    let (snapshot_tx, snapshot_rx) = watch::channel(source.scan());
    let (report_tx, report_rx) = watch::channel(Report::default());
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();

    let listener = admin::bind(args.admin_address).await?;
    let admin_address = listener.local_addr()?;
    tracing::info!(
        config = %source.root().display(),
        state = %state_dir.display(),
        admin = %format!("http://{admin_address}"),
        "serving"
    );

    let config_root = source.root().to_path_buf();
    let token = shutdown.clone();
    tasks.spawn(async move { source.run(snapshot_tx, token).await.map_err(Into::into) });

    // The agent-facing runtime: state database, channels from reconcile, listeners.
    let (db, leadership) = match &args.database {
        None => {
            let db_path = state_dir.join("state.db");
            let db = Database::open(&db_path)
                .with_context(|| format!("failed to open {}", db_path.display()))?;
            (db, Leadership::always())
        }
        Some(url) => {
            let opened = url.clone();
            let db = tokio::task::spawn_blocking(move || Database::postgres(&opened))
                .await
                .context("opening the database panicked")??;
            let election = AdvisoryLock::new(url)?;
            let (sender, receiver) = watch::channel(false);
            let token = shutdown.clone();
            tasks.spawn(async move {
                election.run(sender, token).await;
                Ok(())
            });
            (db, Leadership::new(receiver))
        }
    };
    let db = Arc::new(db);
    let metrics = Arc::new(Metrics::default());
    let (routes_tx, routes_rx) = watch::channel(Arc::new(Routes::default()));
    let (listen_tx, listen_rx) = watch::channel(Listen::default());
    let (certificate_tx, certificate_rx) = watch::channel(None);
    let (verifier_tx, verifier_rx) = watch::channel(
        crate::pki::tls::client_verifier(crate::pki::tls::ClientAuth::None, &[], vec![])
            .context("failed to build the default client verifier")?,
    );
    let (bound_tx, bound_rx) = watch::channel(Vec::new());
    let (activity_tx, activity_rx) = watch::channel(0u64);
    let shared = Shared {
        routes: routes_rx,
        db: db.clone(),
        store: state_dir.join("download"),
        metrics: metrics.clone(),
        activity: Arc::new(activity_tx),
        clock: Arc::new(|| jiff::Timestamp::now().as_second()),
        cache: Arc::new(agent::FragmentCache::new(agent::FRAGMENT_CACHE)),
    };
    let tls = crate::pki::tls::server_config(certificate_rx, verifier_rx)
        .context("failed to build the TLS configuration")?;
    let token = shutdown.clone();
    let (https_app, http_app) = (agent::app(shared.clone()), agent::fragments_app(shared));
    let listener_metrics = metrics.clone();
    tasks.spawn(async move {
        agent::run(
            listen_rx,
            tls,
            https_app,
            http_app,
            listener_metrics,
            bound_tx,
            token,
        )
        .await
        .map_err(Into::into)
    });

    let reconcile_config = reconcile::Config {
        state_dir,
        config_dir: config_root,
        options: desired::Options {
            allow_empty: args.allow_empty,
        },
        environment: reconcile::certificates::Environment::new(|name| std::env::var(name).ok()),
        clock: reconcile::Clock::system(),
        leadership,
        shared_database: args.database.is_some(),
        runtime: Some(Arc::new(reconcile::routes::Runtime {
            db: db.clone(),
            routes: routes_tx,
            listen: listen_tx,
            certificate: certificate_tx,
            verifier: verifier_tx,
            bound: bound_rx,
            activity: activity_rx,
            metrics: metrics.clone(),
        })),
    };
    let token = shutdown.clone();
    tasks.spawn(async move {
        reconcile::run(snapshot_rx, report_tx, reconcile_config, token)
            .await
            .map_err(Into::into)
    });
    let app = admin::app(report_rx.clone())
        .merge(admin::deployments_app(admin::Deployments { db, metrics }));
    let token = shutdown.clone();
    tasks.spawn(async move { admin::serve(listener, app, token).await.map_err(Into::into) });

    Ok(Running {
        admin_address,
        reports: report_rx,
        shutdown,
        tasks,
    })
}

async fn serve(args: ServeArgs) -> Result<()> {
    let running = start(args).await?;
    running.until(shutdown_signal()).await
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
