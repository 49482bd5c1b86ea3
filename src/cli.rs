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

use crate::agent::cli::{AgentArgs, agent};
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
    /// Serve a configuration directory or a git branch: watch it, reconcile it, and run the
    /// agent-facing server and the admin API.
    Serve(ServeArgs),
    /// Parse and validate a configuration directory; print every problem and exit 1 if any.
    Validate(ValidateArgs),
    /// What serving a configuration directory would change, compared with what a server last
    /// applied: packages built, certificates issued or renewed, computers that would receive
    /// or lose a package. Exit code 0: no change; 2: changes; 1: an error or problems.
    Plan(PlanArgs),
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
    /// The DMZ relay, configured by a Gateway resource (passthrough or tunnel), with the
    /// certificates it presents issued and renewed from the same configuration.
    Gateway(GatewayArgs),
}

/// `tessera gateway`.
#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// A YAML file, or a directory, holding the Gateway resource (and the Issuers and
    /// Certificates it uses).
    #[arg(
        long,
        env = "TESSERA_CONFIG",
        required_unless_present_any = ["git", "kube"],
        conflicts_with_all = ["git", "kube"]
    )]
    pub config: Option<PathBuf>,
    /// The same from a git branch (`--state` is then required), as `tessera serve --git`.
    #[command(flatten)]
    pub git: GitArgs,
    /// The same from the cluster's Tessera custom resources (in-cluster configuration, or
    /// the kubeconfig); Issuers of type `ca` may read their key pair from a Secret.
    #[arg(long, env = "TESSERA_KUBE", conflicts_with = "git")]
    pub kube: bool,
    /// With --kube: the namespace to watch (default: all).
    #[arg(long = "namespace", env = "TESSERA_NAMESPACE", requires = "kube")]
    pub namespace: Option<String>,
    /// Which Gateway, when there are several.
    #[arg(long)]
    pub name: Option<String>,
    /// Where the gateway keeps the certificates it issues and renews (default: `.tessera`
    /// beside the configuration, `/var/lib/tessera-gateway` with --kube; required with
    /// --git).
    #[arg(long, env = "TESSERA_STATE")]
    pub state: Option<PathBuf>,
    /// Address of `/metrics` and `/healthz` (keep it off the internet-facing side).
    #[arg(long, env = "TESSERA_ADMIN_ADDRESS", default_value = "127.0.0.1:9091")]
    pub admin_address: SocketAddr,
    /// A host name the admin API also answers to (repeatable; the environment variable takes
    /// a comma-separated list). It always answers to `localhost`, `*.localhost` and IP
    /// addresses; any other `Host` gets 421, so that a web page cannot reach it through a
    /// browser by DNS rebinding.
    #[arg(
        long = "admin-host",
        env = "TESSERA_ADMIN_HOSTS",
        value_delimiter = ','
    )]
    pub admin_hosts: Vec<String>,
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
    /// The configuration directory to serve (directory mode).
    #[arg(
        long,
        env = "TESSERA_CONFIG",
        required_unless_present_any = ["kube", "git"],
        conflicts_with_all = ["kube", "git"]
    )]
    pub config: Option<PathBuf>,
    /// State directory (database, fragments, certificates, status files).
    /// Default: `<config>/.tessera`, or `/var/lib/tessera` with `--kube`; required with
    /// `--git`.
    #[arg(long, env = "TESSERA_STATE")]
    pub state: Option<PathBuf>,
    #[command(flatten)]
    pub git: GitArgs,
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
    /// A host name the admin API also answers to (repeatable; the environment variable takes
    /// a comma-separated list). It always answers to `localhost`, `*.localhost` and IP
    /// addresses; any other `Host` gets 421, so that a web page cannot reach it through a
    /// browser by DNS rebinding.
    #[arg(
        long = "admin-host",
        env = "TESSERA_ADMIN_HOSTS",
        value_delimiter = ','
    )]
    pub admin_hosts: Vec<String>,
    /// Accept a configuration with no objects at all as "remove everything". Without it, an
    /// empty read (a broken mount, a bad checkout) prunes nothing.
    #[arg(long, env = "TESSERA_ALLOW_EMPTY")]
    pub allow_empty: bool,
    /// Start with an empty state database where the state directory has state but its
    /// database is missing (deleted) or damaged (the damaged file is moved aside).
    /// Computers, deployment states and enrollment tokens are then lost.
    #[arg(long, env = "TESSERA_RESET_STATE")]
    pub reset_state: bool,
    #[command(flatten)]
    pub kube: KubeArgs,
}

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

/// `tessera serve --git`: where the configuration comes from instead of a directory.
#[derive(Debug, Clone, Default, Args)]
pub struct GitArgs {
    /// Serve a branch of this git repository (`https://`, `ssh://`, `git@host:path`,
    /// `file://`), fetched into the state directory.
    #[arg(long, env = "TESSERA_GIT")]
    pub git: Option<String>,
    /// The branch to serve.
    #[arg(
        long,
        env = "TESSERA_GIT_BRANCH",
        default_value = "main",
        requires = "git"
    )]
    pub branch: String,
    /// The folder inside the repository that holds the configuration (default: the root).
    #[arg(long, env = "TESSERA_GIT_PATH", default_value = "", requires = "git")]
    pub path: String,
    /// Time between fetches; a signed webhook call fetches at once.
    #[arg(
        long,
        env = "TESSERA_GIT_INTERVAL",
        default_value = "1m",
        requires = "git"
    )]
    pub interval: Option<crate::resources::quantity::Duration>,
    /// Longest run of one git command (fetch, archive) before it is killed.
    #[arg(
        long,
        env = "TESSERA_GIT_TIMEOUT",
        default_value = "2m",
        requires = "git"
    )]
    pub git_timeout: Option<crate::resources::quantity::Duration>,
    /// Private key for SSH remotes (only this key is offered).
    #[arg(long, env = "TESSERA_GIT_SSH_KEY_FILE", requires = "git")]
    pub ssh_key_file: Option<PathBuf>,
    /// `known_hosts` for SSH remotes: host keys are checked strictly against it.
    #[arg(long, env = "TESSERA_GIT_KNOWN_HOSTS_FILE", requires = "git")]
    pub known_hosts_file: Option<PathBuf>,
    /// User name for HTTPS remotes (with --password-file).
    #[arg(long, env = "TESSERA_GIT_USERNAME", requires = "git")]
    pub username: Option<String>,
    /// A file holding the password or access token for HTTPS remotes; it is read when git
    /// asks, never passed as an argument.
    #[arg(long, env = "TESSERA_GIT_PASSWORD_FILE", requires = "git")]
    pub password_file: Option<PathBuf>,
    /// A file holding the shared secret of push webhooks: `POST /hooks/git` on the admin
    /// listener then fetches at once for calls signed with it (GitHub's
    /// `X-Hub-Signature-256`, GitLab's `X-Gitlab-Token`). Without it the hook is off.
    #[arg(long, env = "TESSERA_WEBHOOK_SECRET_FILE", requires = "git")]
    pub webhook_secret_file: Option<PathBuf>,
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

/// `tessera plan`.
#[derive(Debug, Args)]
struct PlanArgs {
    /// The configuration directory (a checkout of the commit to merge).
    #[arg(required_unless_present = "git", conflicts_with = "git")]
    dir: Option<PathBuf>,
    /// The state directory of the running `tessera serve` (default `<dir>/.tessera`). Only
    /// read: nothing is written there.
    #[arg(long, env = "TESSERA_STATE", required_unless_present = "dir")]
    state: Option<PathBuf>,
    /// The servers' PostgreSQL database, when they use one (`tessera serve --database`):
    /// computers are read from it, in read-only transactions.
    #[arg(long, env = "TESSERA_DATABASE")]
    database: Option<String>,
    /// Plan a branch of a git repository instead of a directory (fetched into a scratch
    /// directory, with the credential flags of `tessera serve --git`).
    #[arg(long)]
    git: Option<String>,
    /// With --git: the branch to plan.
    #[arg(long, default_value = "main", requires = "git")]
    branch: String,
    /// With --git: the folder of the repository holding the configuration.
    #[arg(long, default_value = "", requires = "git")]
    path: String,
    /// With --git: SSH private key.
    #[arg(long, env = "TESSERA_GIT_SSH_KEY_FILE", requires = "git")]
    ssh_key_file: Option<PathBuf>,
    /// With --git: `known_hosts`, checked strictly.
    #[arg(long, env = "TESSERA_GIT_KNOWN_HOSTS_FILE", requires = "git")]
    known_hosts_file: Option<PathBuf>,
    /// With --git: HTTPS user name.
    #[arg(long, env = "TESSERA_GIT_USERNAME", requires = "git")]
    username: Option<String>,
    /// With --git: a file holding the HTTPS password or token.
    #[arg(long, env = "TESSERA_GIT_PASSWORD_FILE", requires = "git")]
    password_file: Option<PathBuf>,
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

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // One crypto provider for every rustls user in the process (see README, dependencies).
    let _ = rustls::crypto::ring::default_provider().install_default();
    crate::logging::init(&cli.log);
    let result = match cli.command {
        Command::Validate(args) => validate(&args),
        Command::Crds(args) => crds(&args).map(|()| ExitCode::SUCCESS),
        Command::Plan(args) => plan(&args),
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

fn plan(args: &PlanArgs) -> Result<ExitCode> {
    use crate::reconcile::plan::{self, CertificateAction, Change, PackageAction, Side};
    // The configuration: a directory, or a branch fetched into a scratch directory.
    let scratch = tempfile::tempdir().context("failed to make a scratch directory")?;
    let (desired, config_dir, label) = match (&args.git, &args.dir) {
        (Some(url), _) => {
            let git = GitArgs {
                git: Some(url.clone()),
                branch: args.branch.clone(),
                path: args.path.clone(),
                ssh_key_file: args.ssh_key_file.clone(),
                known_hosts_file: args.known_hosts_file.clone(),
                username: args.username.clone(),
                password_file: args.password_file.clone(),
                ..GitArgs::default()
            };
            let (source, _) = git_source(&git, &scratch.path().join("fetched"))?;
            let snapshot = runtime()?
                .block_on(source.fetch_snapshot())
                .with_context(|| format!("failed to fetch {}", source.display_url()))?;
            let root = snapshot.root.clone().context("a git snapshot has a root")?;
            let desired = desired::evaluate(&snapshot, None, desired::Options::default());
            (
                desired,
                root,
                format!("{} {}", source.display_url(), args.branch),
            )
        }
        (None, Some(dir)) => {
            let config_dir = dir
                .canonicalize()
                .with_context(|| format!("failed to read {}", dir.display()))?;
            (evaluate_dir(dir)?, config_dir, dir.display().to_string())
        }
        (None, None) => bail!("give DIR or --git URL"),
    };
    let state = match (&args.state, &args.dir) {
        (Some(state), _) => state.clone(),
        (None, Some(dir)) => dir.join(".tessera"),
        (None, None) => bail!("--state is required with --git"),
    };
    let mut notes = Vec::new();
    let (before, unreadable) = match reconcile::status::read_applied(&state)
        .with_context(|| format!("failed to read {}", state.join("applied.json").display()))?
    {
        Some(applied) => Side::applied(&applied),
        None => {
            notes.push(format!(
                "{} holds no applied configuration: everything counts as new",
                state.display()
            ));
            (Side::default(), Vec::new())
        }
    };
    notes.extend(
        unreadable
            .into_iter()
            .map(|u| format!("left out of the comparison: {u}")),
    );
    let db_path = state.join("state.db");
    let computers = if let Some(url) = &args.database {
        Database::postgres_read_only(url)
            .and_then(|db| db.computers())
            .context("failed to read the computers from the PostgreSQL database")?
    } else if db_path.is_file() {
        Database::open_read_only(&db_path)
            .and_then(|db| db.computers())
            .with_context(|| format!("failed to read {}", db_path.display()))?
    } else {
        notes.push(format!(
            "no state database at {}: no computers",
            db_path.display()
        ));
        Vec::new()
    };
    // Packages are built in a scratch directory, so their ids are the ones serve would make.
    let outcomes = Packages::new(scratch.path().join("state"), config_dir).reconcile(&desired);
    let mut problems: Vec<String> = desired.problems.iter().map(ToString::to_string).collect();
    let mut ids = std::collections::HashMap::new();
    for (key, outcome) in &outcomes {
        match outcome.details.get("packageId").and_then(|v| v.as_str()) {
            Some(id) if outcome.ready => {
                ids.insert(key.clone(), id.to_owned());
            }
            _ => problems.push(format!("{key}: not built: {}", outcome.message)),
        }
    }
    problems.sort();
    let after = Side::desired(&desired, ids);
    let found = plan::plan(&before, &after, &computers, jiff::Timestamp::now());

    let mut out = std::io::stdout().lock();
    match args.output {
        OutputFormat::Json => {
            let mut body = serde_json::to_value(&found)?;
            body["changes"] = found.changes().into();
            body["problems"] = problems.clone().into();
            body["notes"] = notes.clone().into();
            writeln!(out, "{}", serde_json::to_string_pretty(&body)?)?;
        }
        OutputFormat::Human => {
            let short = |r: &Option<String>| {
                r.as_deref()
                    .map_or_else(|| "nothing".to_owned(), |r| r.chars().take(12).collect())
            };
            writeln!(
                out,
                "plan: {} ({}) against {} (applied: {})",
                label,
                short(&found.revision),
                state.display(),
                short(&found.applied_revision)
            )?;
            for note in &notes {
                writeln!(out, "note: {note}")?;
            }
            if !found.objects.is_empty() {
                writeln!(out, "\nobjects:")?;
                for o in &found.objects {
                    let sign = match o.change {
                        Change::Add => "+",
                        Change::Change => "~",
                        Change::Remove => "-",
                    };
                    writeln!(out, "  {sign} {}", o.object)?;
                }
            }
            if !found.packages.is_empty() {
                writeln!(out, "\npackages:")?;
                for p in &found.packages {
                    let id = |i: &Option<String>| i.clone().unwrap_or_default();
                    match p.action {
                        PackageAction::Build => {
                            writeln!(out, "  + {}: build {}", p.package, id(&p.to))?
                        }
                        PackageAction::Rebuild => writeln!(
                            out,
                            "  ~ {}: rebuild {} -> {}",
                            p.package,
                            id(&p.from),
                            id(&p.to)
                        )?,
                        PackageAction::Remove => {
                            writeln!(out, "  - {}: remove {}", p.package, id(&p.from))?
                        }
                    }
                }
            }
            if !found.certificates.is_empty() {
                writeln!(out, "\ncertificates:")?;
                for c in &found.certificates {
                    let (sign, verb) = match c.action {
                        CertificateAction::Issue => ("+", "issue"),
                        CertificateAction::Renew => ("~", "renew"),
                        CertificateAction::Remove => ("-", "remove"),
                    };
                    writeln!(out, "  {sign} {}: {verb} ({})", c.certificate, c.reason)?;
                }
            }
            if !found.deployments.is_empty() {
                writeln!(out, "\ncomputers ({} known):", found.computers)?;
                for d in &found.deployments {
                    writeln!(
                        out,
                        "  {} (package {} {}):",
                        d.activation, d.package, d.package_id
                    )?;
                    for (what, sample) in [("would receive", &d.receive), ("would lose", &d.lose)] {
                        if sample.count == 0 {
                            continue;
                        }
                        let more = sample.count - sample.names.len();
                        writeln!(
                            out,
                            "    {what}: {} computer{}: {}{}",
                            sample.count,
                            plural(sample.count),
                            sample.names.join(", "),
                            if more > 0 {
                                format!(" and {more} more")
                            } else {
                                String::new()
                            }
                        )?;
                    }
                }
            }
            if !problems.is_empty() {
                writeln!(out, "\nproblems:")?;
                for problem in &problems {
                    writeln!(out, "  {problem}")?;
                }
            }
            let receive: usize = found.deployments.iter().map(|d| d.receive.count).sum();
            let lose: usize = found.deployments.iter().map(|d| d.lose.count).sum();
            let count = |action: PackageAction| {
                found.packages.iter().filter(|p| p.action == action).count()
            };
            writeln!(
                out,
                "\n{}: {} object change{}, {} package{} to build, {} to rebuild, {} to remove, {} certificate{} to issue or renew; {receive} deployment{} to receive, {lose} to lose",
                if found.changes() {
                    "changes"
                } else {
                    "no changes"
                },
                found.objects.len(),
                plural(found.objects.len()),
                count(PackageAction::Build),
                plural(count(PackageAction::Build)),
                count(PackageAction::Rebuild),
                count(PackageAction::Remove),
                found.certificates.len(),
                plural(found.certificates.len()),
                plural(receive),
            )?;
        }
    }
    Ok(if !problems.is_empty() {
        ExitCode::from(1)
    } else if found.changes() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
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

async fn gateway(args: &GatewayArgs) -> Result<ExitCode> {
    let client =
        if args.kube {
            Some(kube::Client::try_default().await.context(
                "failed to connect to Kubernetes (in-cluster configuration or kubeconfig)",
            )?)
        } else {
            None
        };
    start_gateway(args, client)
        .await?
        .until(shutdown_signal())
        .await?;
    Ok(ExitCode::SUCCESS)
}

/// How long `tessera gateway --kube` waits for the first full list of the resources.
const FIRST_LIST_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts everything `tessera gateway` runs and returns once the admin API listens; with
/// `client`, the configuration comes from the cluster (tests hand in a mock).
pub async fn start_gateway(args: &GatewayArgs, client: Option<kube::Client>) -> Result<Running> {
    use crate::reconcile::gateway::{GatewayRuntime, relay_config};
    use crate::resources::gateway::GatewayMode;
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    // A directory is watched like `tessera serve`'s, a git branch fetched like it; a single
    // file is read once.
    enum Source {
        Dir(DirSource),
        Git(crate::sources::git::GitSource, Arc<tokio::sync::Notify>),
        /// Already running, publishing on this channel.
        Kube(watch::Receiver<crate::resources::Snapshot>),
        File,
    }
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
            let (snapshot_tx, mut snapshot_rx) =
                watch::channel(crate::resources::Snapshot::default());
            let source =
                crate::sources::kube::KubeSource::new(client.clone(), args.namespace.clone());
            let token = shutdown.clone();
            tasks.spawn(async move {
                source.run(snapshot_tx, token).await;
                Ok(())
            });
            // The Gateway is looked for in the first full list, not in an empty placeholder.
            tokio::time::timeout(FIRST_LIST_TIMEOUT, snapshot_rx.changed())
                .await
                .context("no list of the Tessera resources from Kubernetes in time")?
                .context("the Kubernetes watch stopped")?;
            let snapshot = snapshot_rx.borrow().clone();
            // Reads only (an Issuer's key pair from its Secret): the gateway writes none.
            let (_, never) = watch::channel(false);
            kube_client = Some(client.clone());
            secrets = Some(Arc::new(KubeSecrets {
                client,
                runtime: tokio::runtime::Handle::current(),
                leader: never,
                written: std::sync::Mutex::new(std::collections::HashMap::new()),
            }));
            (
                state_dir.clone(),
                state_dir,
                Source::Kube(snapshot_rx),
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
            let snapshot = crate::resources::Snapshot {
                revision: "file".into(),
                files: vec![crate::resources::SourceFile { path: file, text }],
                problems: Vec::new(),
                root: None,
            };
            let state_dir = args.state.clone().unwrap_or_else(|| dir.join(".tessera"));
            create_state_dir(&state_dir)?;
            (dir, state_dir, Source::File, snapshot)
        }
        (None, None, None) => bail!("give --config FILE|DIR, --git URL or --kube"),
    };
    let shown = match (&args.config, &args.git.git) {
        (Some(config), _) => config.display().to_string(),
        (None, Some(url)) => url.clone(),
        (None, None) => "Kubernetes".to_owned(),
    };
    let desired = desired::evaluate(&snapshot, None, desired::Options::default());
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
    let listener = tokio::net::TcpListener::bind(&spec.listen)
        .await
        .with_context(|| format!("failed to listen on {}", spec.listen))?;
    let listening = listener.local_addr()?.to_string();

    let counters = Arc::new(crate::gateway::Counters::default());
    let (config_tx, config_rx) = watch::channel(Arc::new(relay_config(&spec)));
    let (certificate_tx, certificate_rx) = watch::channel(None);
    // Replaced before the first connection is accepted: a tunnel starts only once its
    // Gateway is Ready, which needs the trusted issuers' verifier published.
    let placeholder =
        || crate::pki::tls::client_verifier(crate::pki::tls::ClientAuth::None, &[], vec![]);
    let (verifier_tx, verifier_rx) = watch::channel(placeholder()?);
    let (inside_verifier_tx, inside_verifier_rx) = watch::channel(placeholder()?);
    // Dial-out: where inside servers connect, bound now so that a bad address fails at once.
    let inside = match &spec.dial_out {
        Some(dial_out) => {
            let listener = tokio::net::TcpListener::bind(&dial_out.listen)
                .await
                .with_context(|| format!("failed to listen on {} (dial-out)", dial_out.listen))?;
            Some((listener, Arc::new(crate::gateway::InsidePool::default())))
        }
        None => None,
    };
    let (report_tx, report_rx) = watch::channel(Report::default());
    let token = shutdown.clone();
    let snapshot_rx = match source {
        Source::Kube(receiver) => receiver,
        Source::Dir(source) => {
            let (snapshot_tx, snapshot_rx) = watch::channel(snapshot);
            tasks.spawn(async move { source.run(snapshot_tx, token).await.map_err(Into::into) });
            snapshot_rx
        }
        Source::Git(source, wake) => {
            let (snapshot_tx, snapshot_rx) = watch::channel(snapshot);
            tasks.spawn(async move {
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
            tasks.spawn(async move {
                snapshot_tx.closed().await;
                Ok(())
            });
            snapshot_rx
        }
    };
    let reconcile_config = reconcile::Config {
        state_dir,
        config_dir,
        options: desired::Options::default(),
        environment: reconcile::certificates::Environment::new(|name| std::env::var(name).ok()),
        clock: reconcile::Clock::system(),
        runtime: None,
        secrets,
        leadership: crate::leader::Leadership::always(),
        shared_database: false,
        gateway: Some(Arc::new(GatewayRuntime {
            key: key.clone(),
            listen: spec.listen.clone(),
            config: config_tx,
            certificate: certificate_tx,
            verifier: verifier_tx,
            inside_verifier: inside_verifier_tx,
            inside: inside.as_ref().map(|(_, pool)| pool.clone()),
            counters: counters.clone(),
        })),
    };
    let token = shutdown.clone();
    tasks.spawn(async move {
        reconcile::run(snapshot_rx, report_tx, reconcile_config, token)
            .await
            .map_err(Into::into)
    });

    let metrics = {
        let counters = counters.clone();
        let pool = inside.as_ref().map(|(_, pool)| pool.clone());
        axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let mut text = counters.render(&listening);
                if let Some(pool) = &pool {
                    text.push_str(&format!(
                        "# HELP tessera_gateway_dial_out_idle Idle connections from inside servers, ready for agents.\n# TYPE tessera_gateway_dial_out_idle gauge\ntessera_gateway_dial_out_idle{{listener=\"{listening}\"}} {}\n",
                        pool.idle()
                    ));
                }
                async move { text }
            }),
        )
    };
    let admin = admin::bind(args.admin_address).await?;
    let admin_address = admin.local_addr()?;
    let mut app = admin::app(report_rx.clone()).merge(metrics);
    if let Some(hooks) = hooks {
        app = app.merge(hooks);
    }
    let app = admin::host_checked(app, admin::AdminHosts::new(&args.admin_hosts));
    let token = shutdown.clone();
    let budget = connection_budget()?;
    let (admin_budget, admin_stats) = (budget.clone(), Arc::default());
    tasks.spawn(async move {
        admin::serve(admin, app, admin_budget, admin_stats, token)
            .await
            .map_err(Into::into)
    });

    // In Kubernetes the gateway writes its own Gateway's status (the server leaves it be).
    if let Some(client) = kube_client {
        let mut writer = crate::sources::kube::StatusWriter::new(client, None);
        let mut reports = report_rx.clone();
        let (token, own) = (shutdown.clone(), key.clone());
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    () = token.cancelled() => return Ok(()),
                    changed = reports.changed() => if changed.is_err() { return Ok(()) },
                }
                let report = reports.borrow().clone();
                let statuses: Vec<_> = kube_statuses(&report)
                    .into_iter()
                    .filter(|s| s.key == own)
                    .collect();
                writer.write(&statuses).await;
            }
        });
    }
    // Relaying starts once the Gateway is Ready: tunnel, terminate and dial-out need their
    // certificates and trust in place first; a passthrough is Ready at the first pass.
    let (mode, backend, routes) = (spec.mode, spec.backend.clone(), spec.routes.len());
    let relay_shutdown = shutdown.clone();
    let relay_budget = budget;
    let mut reports = report_rx.clone();
    tasks.spawn(async move {
        let name = key.to_string();
        let ready = |report: &Report| {
            report
                .objects
                .iter()
                .find(|o| o.kind == "Gateway" && o.name == key.name)
                .map(|o| {
                    o.conditions
                        .iter()
                        .find(|c| c.type_ == "Ready")
                        .map(|c| (c.status == "True", c.message.clone()))
                        .unwrap_or_default()
                })
        };
        let mut said = String::new();
        loop {
            if let Some((true, _)) = ready(&reports.borrow_and_update()) {
                break;
            }
            if let Some((false, message)) = ready(&reports.borrow())
                && message != said
            {
                tracing::warn!(gateway = %name, %message, "not relaying yet");
                said = message;
            }
            tokio::select! {
                () = relay_shutdown.cancelled() => return Ok(()),
                changed = reports.changed() => if changed.is_err() { return Ok(()) },
            }
        }
        let edge = if mode == GatewayMode::Passthrough {
            None
        } else {
            let mut edge = (*crate::pki::tls::server_config(certificate_rx.clone(), verifier_rx)
                .context("failed to build the TLS configuration")?)
            .clone();
            if mode == GatewayMode::Tunnel {
                // CONNECT is HTTP/1.1; an agent's raw inner session offers no ALPN.
                edge.alpn_protocols = vec![b"http/1.1".to_vec()];
            }
            Some(Arc::new(edge))
        };
        let (pool, accepting) = match inside {
            Some((listener, pool)) => {
                let mut tls = (*crate::pki::tls::server_config(certificate_rx, inside_verifier_rx)
                    .context("failed to build the dial-out TLS configuration")?)
                .clone();
                tls.alpn_protocols.clear();
                tracing::info!(listen = %listener.local_addr()?, "waiting for inside servers to dial out");
                let accepting = crate::gateway::accept_inside(
                    listener,
                    Arc::new(tls),
                    config_rx.clone(),
                    pool.clone(),
                    counters.clone(),
                    relay_shutdown.clone(),
                );
                (Some(pool), Some(accepting))
            }
            None => (None, None),
        };
        tracing::info!(
            gateway = %name,
            listen = %listener.local_addr()?,
            mode = ?mode,
            %backend,
            routes,
            "relaying"
        );
        let relaying =
            crate::gateway::run(
            listener,
            config_rx,
            edge,
            pool,
            counters,
            relay_budget,
            relay_shutdown,
        );
        match accepting {
            Some(accepting) => {
                tokio::join!(accepting, relaying);
            }
            None => relaying.await,
        }
        Ok(())
    });
    Ok(Running {
        admin_address,
        reports: report_rx,
        shutdown,
        tasks,
    })
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
    let client =
        if args.kube.kube {
            Some(kube::Client::try_default().await.context(
                "failed to connect to Kubernetes (in-cluster configuration or kubeconfig)",
            )?)
        } else {
            None
        };
    start_with(args, client).await
}

/// `start`, with the Kubernetes client to use in `--kube` mode (tests hand in a mock).
pub async fn start_with(args: ServeArgs, client: Option<kube::Client>) -> Result<Running> {
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let (report_tx, report_rx) = watch::channel(Report::default());
    let (snapshot_tx, snapshot_rx) = watch::channel(crate::resources::Snapshot::default());
    let listener = admin::bind(args.admin_address).await?;
    let admin_address = listener.local_addr()?;

    let mut hooks = None;
    let (state_dir, config_root, secrets, lease) = match (&args.git.git, &args.config, client) {
        (Some(_), _, _) => {
            let (state_dir, source, wake, first) =
                first_git_snapshot(&args.git, args.state.as_ref()).await?;
            tracing::info!(
                git = %source.display_url(),
                branch = %args.git.branch,
                commit = %first.revision,
                state = %state_dir.display(),
                admin = %format!("http://{admin_address}"),
                "serving"
            );
            let root = first.root.clone().unwrap_or_else(|| state_dir.clone());
            snapshot_tx.send_replace(first);
            hooks = webhook(&args.git, &wake)?;
            let token = shutdown.clone();
            tasks.spawn(async move {
                source
                    .run(snapshot_tx, wake, token)
                    .await
                    .map_err(Into::into)
            });
            (state_dir, root, None, None)
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
            snapshot_tx.send_replace(source.scan());
            tracing::info!(
                config = %source.root().display(),
                state = %state_dir.display(),
                admin = %format!("http://{admin_address}"),
                "serving"
            );
            tracing::info!(
                config = %source.root().display(),
                state = %state_dir.display(),
                admin = %format!("http://{admin_address}"),
                "serving"
            );
            let config_root = source.root().to_path_buf();
            let token = shutdown.clone();
            tasks.spawn(async move { source.run(snapshot_tx, token).await.map_err(Into::into) });
            (state_dir, config_root, None, None)
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
                admin = %format!("http://{admin_address}"),
                "serving from Kubernetes"
            );
            let (secrets, lease) = start_kube(
                &args.kube,
                client,
                snapshot_tx,
                report_rx.clone(),
                &shutdown,
                &mut tasks,
            );
            // Relative file names (package content directories) resolve below the state
            // directory: in Kubernetes there is no configuration directory.
            (state_dir.clone(), state_dir, Some(secrets), Some(lease))
        }
        (None, None, None) => bail!("give --config DIR, --git URL or --kube"),
    };
    let kube_mode = secrets.is_some();

    // The agent-facing runtime: state database, channels from reconcile, listeners.
    // Who reconciles: in Kubernetes the holder of the Lease; on PostgreSQL the holder of
    // the advisory lock; otherwise this process.
    let (db, leadership) = match &args.database {
        None => {
            // A full disk opens it read-only; `open_state` says so.
            let (db, _opened) = Database::open_state(&state_dir, args.reset_state)?;
            (db, lease.map_or_else(Leadership::always, Leadership::new))
        }
        Some(url) if lease.is_some() => {
            let opened = url.clone();
            let db = tokio::task::spawn_blocking(move || Database::postgres(&opened))
                .await
                .context("opening the database panicked")??;
            (db, lease.map_or_else(Leadership::always, Leadership::new))
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
    let budget = connection_budget()?;
    let (routes_tx, routes_rx) = watch::channel(Arc::new(Routes::default()));
    let (listen_tx, listen_rx) = watch::channel(Listen::default());
    let (certificate_tx, certificate_rx) = watch::channel(None);
    let (verifier_tx, verifier_rx) = watch::channel(
        crate::pki::tls::client_verifier(crate::pki::tls::ClientAuth::None, &[], vec![])
            .context("failed to build the default client verifier")?,
    );
    let (bound_tx, bound_rx) = watch::channel(Vec::new());
    let (activity_tx, activity_rx) = watch::channel(0u64);
    let (dial_out_tx, dial_out_rx) = watch::channel(None);
    let shared = Shared {
        routes: routes_rx,
        db: db.clone(),
        store: state_dir.join("download"),
        metrics: metrics.clone(),
        activity: Arc::new(activity_tx),
        clock: Arc::new(|| jiff::Timestamp::now().as_second()),
        cache: Arc::new(agent::FragmentCache::new(agent::FRAGMENT_CACHE)),
        results: Arc::default(),
        enrollments: Default::default(),
    };
    let tls = crate::pki::tls::server_config(certificate_rx, verifier_rx)
        .context("failed to build the TLS configuration")?;
    let token = shutdown.clone();
    let (https_app, http_app) = (agent::app(shared.clone()), agent::fragments_app(shared));
    // Dial-out: connections the server keeps open to a gateway, served like accepted ones.
    let (dialed_tx, dialed_rx) = tokio::sync::mpsc::channel(64);
    let dial_token = token.clone();
    tasks.spawn(async move {
        crate::server::dial_out::run(dial_out_rx, dialed_tx, dial_token).await;
        Ok(())
    });
    let (dialed_tls, dialed_app, dialed_metrics) =
        (tls.clone(), https_app.clone(), metrics.clone());
    let dialed_token = token.clone();
    let dialed_budget = budget.clone();
    tasks.spawn(async move {
        agent::serve_dialed(
            dialed_rx,
            dialed_tls,
            dialed_app,
            dialed_metrics,
            dialed_budget,
            dialed_token,
        )
        .await;
        Ok(())
    });
    let (listener_metrics, listener_budget) = (metrics.clone(), budget.clone());
    tasks.spawn(async move {
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
            dial_out: dial_out_tx,
        })),
        gateway: None,
        secrets,
    };
    let token = shutdown.clone();
    tasks.spawn(async move {
        let mut snapshot_rx = snapshot_rx;
        // Kubernetes mode: no pass before every kind was listed once, or the empty
        // placeholder would look like a configuration emptied on purpose.
        if kube_mode {
            tokio::select! {
                () = token.cancelled() => return Ok(()),
                changed = snapshot_rx.changed() => if changed.is_err() { return Ok(()) },
            }
        }
        reconcile::run(snapshot_rx, report_tx, reconcile_config, token)
            .await
            .map_err(Into::into)
    });
    let admin_stats = metrics.connections.admin.clone();
    let mut app = admin::app_with_database(report_rx.clone(), db.clone())
        .merge(admin::deployments_app(admin::Deployments { db, metrics }));
    if let Some(hooks) = hooks {
        app = app.merge(hooks);
    }
    let app = admin::host_checked(app, admin::AdminHosts::new(&args.admin_hosts));
    let token = shutdown.clone();
    tasks.spawn(async move {
        admin::serve(listener, app, budget, admin_stats, token)
            .await
            .map_err(Into::into)
    });

    Ok(Running {
        admin_address,
        reports: report_rx,
        shutdown,
        tasks,
    })
}

fn create_state_dir(state_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("failed to create state directory {}", state_dir.display()))
}

/// Starts what `--kube` adds: the watch of the custom resources, leader election, and the
/// status writer (only while leading). Returns the Secrets reconcile reads and writes.
fn start_kube(
    args: &KubeArgs,
    client: kube::Client,
    snapshots: watch::Sender<crate::resources::Snapshot>,
    reports: watch::Receiver<Report>,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<Result<()>>,
) -> (Arc<dyn reconcile::secrets::Secrets>, watch::Receiver<bool>) {
    use crate::sources::{kube as kube_source, lease};

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
    let source = kube_source::KubeSource::new(client.clone(), args.namespace.clone())
        .resync_on(leader_rx.clone());
    let token = shutdown.clone();
    tasks.spawn(async move {
        source.run(snapshots, token).await;
        Ok(())
    });
    let lock = lease::LeaseLock::new(client.clone(), &lease_namespace, lease_name, &identity);
    let token = shutdown.clone();
    tasks.spawn(async move {
        lease::run(lock, leader_tx, token).await;
        Ok(())
    });

    let mut writer = kube_source::StatusWriter::new(client.clone(), Some(identity));
    let mut leader = leader_rx.clone();
    let mut reports = reports;
    let token = shutdown.clone();
    tasks.spawn(async move {
        loop {
            tokio::select! {
                () = token.cancelled() => return Ok(()),
                changed = reports.changed() => if changed.is_err() { return Ok(()) },
                changed = leader.changed() => {
                    if changed.is_err() { return Ok(()) }
                    // Another replica may have written while we were not leading.
                    writer.forget();
                }
            }
            if !*leader.borrow() {
                continue;
            }
            let report = reports.borrow().clone();
            if report.ready {
                // A Gateway's status is written by the `tessera gateway` that runs it.
                let statuses: Vec<_> = kube_statuses(&report)
                    .into_iter()
                    .filter(|s| s.key.kind != Kind::Gateway)
                    .collect();
                writer.write(&statuses).await;
            }
        }
    });

    let secrets = Arc::new(KubeSecrets {
        client,
        runtime: tokio::runtime::Handle::current(),
        leader: leader_rx.clone(),
        written: std::sync::Mutex::new(std::collections::HashMap::new()),
    });
    (secrets, leader_rx)
}

/// The status subresource of every object of a report.
pub fn kube_statuses(report: &Report) -> Vec<crate::sources::kube::ObjectStatus> {
    report
        .objects
        .iter()
        .filter_map(|object| {
            Some(crate::sources::kube::ObjectStatus {
                key: ObjectKey::new(
                    Kind::from_name(&object.kind)?,
                    &object.namespace,
                    &object.name,
                ),
                status: reconcile::status::subresource(object),
            })
        })
        .collect()
}

/// Reconcile's view of Secrets in `--kube` mode. Reads always; writes only while this
/// replica leads, and only what changed since it last wrote.
struct KubeSecrets {
    client: kube::Client,
    /// Reconcile passes run on blocking threads; the API calls run on this runtime.
    runtime: tokio::runtime::Handle,
    leader: watch::Receiver<bool>,
    /// What was last written to each Secret (a digest of owner and data).
    written: std::sync::Mutex<std::collections::HashMap<(String, String), Vec<u8>>>,
}

impl std::fmt::Debug for KubeSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KubeSecrets")
    }
}

impl reconcile::secrets::Secrets for KubeSecrets {
    fn read_key_pair(&self, namespace: &str, name: &str) -> Result<(String, String), String> {
        self.runtime
            .block_on(crate::sources::kube::read_tls_secret(
                &self.client,
                namespace,
                name,
            ))
            .map_err(|e| crate::error_chain(&e))
    }

    fn write(&self, secret: &reconcile::secrets::TlsSecret) -> Result<(), String> {
        use sha2::Digest as _;
        if !*self.leader.borrow() {
            return Ok(());
        }
        let mut digest = sha2::Sha256::new();
        digest.update(format!("{:?}", secret.owner_uid));
        for (name, bytes) in &secret.data {
            digest.update(name.as_bytes());
            digest.update([0]);
            digest.update(bytes);
        }
        let digest = digest.finalize().to_vec();
        let slot = (secret.namespace.clone(), secret.name.clone());
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        if written.get(&slot) == Some(&digest) {
            return Ok(());
        }
        let owner = crate::sources::kube::Owner {
            kind: Kind::Certificate,
            name: secret.owner.clone(),
            uid: secret.owner_uid.clone(),
        };
        self.runtime
            .block_on(crate::sources::kube::apply_tls_secret(
                &self.client,
                &secret.namespace,
                &secret.name,
                &owner,
                &secret.data,
            ))
            .map_err(|e| crate::error_chain(&e))?;
        tracing::info!(secret = %format!("{}/{}", secret.namespace, secret.name), certificate = %secret.owner, "wrote Secret");
        written.insert(slot, digest);
        Ok(())
    }
}

/// The git source of `args` in `state` (required), and its first snapshot. The first fetch
/// comes before anything else: an empty first snapshot would read as "nothing declared" to
/// a server restarting with packages in its store.
async fn first_git_snapshot(
    args: &GitArgs,
    state: Option<&PathBuf>,
) -> Result<(
    PathBuf,
    crate::sources::git::GitSource,
    Arc<tokio::sync::Notify>,
    crate::resources::Snapshot,
)> {
    let Some(state_dir) = state.cloned() else {
        bail!("--state is required with --git");
    };
    create_state_dir(&state_dir)?;
    let (source, wake) = git_source(args, &state_dir)?;
    let first = source.fetch_snapshot().await.with_context(|| {
        format!(
            "failed to read the configuration from {}",
            source.display_url()
        )
    })?;
    Ok((state_dir, source, wake, first))
}

/// The push webhook of `args` (`POST /hooks/git`), when a secret file is given.
fn webhook(args: &GitArgs, wake: &Arc<tokio::sync::Notify>) -> Result<Option<axum::Router>> {
    let Some(file) = &args.webhook_secret_file else {
        return Ok(None);
    };
    let secret =
        std::fs::read(file).with_context(|| format!("failed to read {}", file.display()))?;
    let secret = secret.trim_ascii();
    if secret.is_empty() {
        bail!(
            "--webhook-secret-file {}: the file is empty",
            file.display()
        );
    }
    Ok(Some(crate::server::webhook::app(
        crate::server::webhook::Hook::new(secret, wake.clone()),
    )))
}

/// The git source of `args`, and the handle a webhook wakes it with.
fn git_source(
    args: &GitArgs,
    state_dir: &Path,
) -> Result<(crate::sources::git::GitSource, Arc<tokio::sync::Notify>)> {
    use crate::sources::git::{Credentials, DEFAULT_TIMEOUT, GitConfig, GitSource};
    let url = args.git.clone().context("no --git URL")?;
    if args.password_file.is_some() && args.username.is_none() {
        bail!("--password-file needs --username");
    }
    let source = GitSource::new(
        GitConfig {
            url,
            branch: args.branch.clone(),
            path: args.path.clone(),
            interval: args
                .interval
                .map_or(Duration::from_secs(60), |d| d.as_std())
                .max(Duration::from_secs(1)),
            timeout: args.git_timeout.map_or(DEFAULT_TIMEOUT, |d| d.as_std()),
            credentials: Credentials {
                ssh_key_file: args.ssh_key_file.clone(),
                known_hosts_file: args.known_hosts_file.clone(),
                username: args.username.clone(),
                password_file: args.password_file.clone(),
            },
        },
        state_dir,
    )?;
    Ok((source, Arc::new(tokio::sync::Notify::new())))
}

/// The connection budget of every listener: the open-files limit raised to the hard limit
/// first (and logged), the caps fitted to it, then `TESSERA_CONNECTION_BUDGET` (for tests
/// and tuning) applied.
fn connection_budget() -> Result<Arc<crate::budget::ConnectionBudget>> {
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
