//! The `tessera` command line: the only place that reads the environment, installs the
//! crypto provider and spawns tasks.
//!
//! One file per command, each holding its arguments and how it runs. The long-running ones
//! (`serve`, `gateway`) start in named steps that read top-down (source, state database and
//! leadership, listeners, reconcile, admin API) and hand back a `running::Running`. What is
//! not command-line code lives elsewhere: rendering in the modules it renders
//! (`reconcile::plan::write_plan`, `server::admin::write_deployment_table`), the cluster's
//! Secrets and status writing in `sources::kube`.

mod admin;
mod api;
mod completion;
mod computers;
mod crds;
mod describe;
mod doctor;
mod events;
mod export;
mod gateway;
mod get;
mod git;
mod journal;
mod kube;
mod migration;
mod notify;
mod plan;
mod running;
mod serve;
mod state;
mod status;
mod steer;
mod token;
mod validate;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

pub use admin::{AdminArgs, AdminAuthMode};
pub use gateway::{GatewayArgs, start_gateway};
pub use git::GitArgs;
pub use kube::KubeArgs;
pub use running::Running;
pub use serve::{ServeArgs, start, start_with};
pub use validate::evaluate_dir;

use crate::agent::cli::{AgentArgs, agent};
use crate::logging::LogFormat;
use completion::{CompletionArgs, ManArgs};
use computers::ComputersArgs;
use crds::CrdsArgs;
use describe::DescribeArgs;
use doctor::DoctorArgs;
use events::EventsArgs;
use export::ExportArgs;
use get::GetArgs;
use migration::MigrationArgs;
use notify::NotifyArgs;
use plan::PlanArgs;
use running::runtime;
use status::StatusArgs;
use token::{AdminTokenCommand, TokenCommand};
use validate::ValidateArgs;

/// Declarative, GitOps-driven software deployment for endpoint fleets.
#[derive(Debug, Parser)]
#[command(name = "tessera", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter, e.g. `info`, `tessera=debug` (RUST_LOG syntax).
    #[arg(long, global = true, env = "TESSERA_LOG", default_value = "info")]
    log: String,
    /// Log lines as `text` (for people) or `json` (one object a line, for log pipelines).
    #[arg(
        long,
        global = true,
        env = "TESSERA_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    log_format: LogFormat,
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
    #[command(
        subcommand,
        after_help = "Examples:
  tessera token create --uses 50 --ttl 24h --note 'lab rollout'
  tessera token list
  tessera token revoke 1a2b3c4d5e6f"
    )]
    Token(TokenCommand),
    /// Tokens for the admin API (`viewer` reads, `operator` also steers): create, list, revoke.
    #[command(
        subcommand,
        after_help = "Examples:
  tessera admin-token create --role operator --name alice
  tessera admin-token list
  tessera admin-token revoke 0123456789ab"
    )]
    AdminToken(AdminTokenCommand),
    /// Tessera's own agent: enroll, check in, download, verify, install, report.
    Agent(AgentArgs),
    /// Write the Package that moves OCS Unix agents still on plain HTTP to verified HTTPS
    /// (new URL and CA in their configuration, same DEVICEID), for the configuration
    /// repository.
    MigrationPackage(MigrationArgs),
    /// Ask a computer's agent to check in now (over mutual TLS, to the agent's listener).
    Notify(NotifyArgs),
    /// The DMZ relay, configured by a Gateway resource (passthrough or tunnel), with the
    /// certificates it presents issued and renewed from the same configuration.
    Gateway(GatewayArgs),
    /// What happened, newest last: builds, issuance and renewals, offers, results,
    /// refusals, leadership changes (from a running server, else its state directory).
    Events(EventsArgs),
    /// Objects with their readiness, reason and message, one table per kind (like `kubectl
    /// get`, `flux get`), from a running server or its state directory.
    Get(GetArgs),
    /// One object in full: spec, conditions, problems with file and line, related objects,
    /// recent events.
    Describe(DescribeArgs),
    /// The fleet: each computer's OS, tags, last contact and deployments, with the result
    /// codes per activation; or one computer in full.
    Computers(ComputersArgs),
    /// A shell completion script (bash, zsh, fish, elvish, powershell) on standard output.
    Completion(CompletionArgs),
    /// Man pages for tessera and each of its commands, written into a directory.
    Man(ManArgs),
    /// Stop offering an Activation's or an Affectation's package (computers already
    /// notified may finish), without a commit; kept across restarts until `resume`.
    Suspend(steer::SuspendArgs),
    /// Lift `tessera suspend` (a `spec.suspend: true` in the configuration still holds).
    Resume(steer::SuspendArgs),
    /// Run a reconcile pass now (`--source`: fetch the git branch first), and say what it did.
    Reconcile(steer::ReconcileArgs),
    /// Issue a new certificate now, whatever its renewal time (cmctl renew).
    Renew(steer::RenewArgs),
}

/// How a command prints what it found.
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
    crate::logging::init(&cli.log, cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Validate(args) => validate::run(&args),
        Command::Plan(args) => plan::run(&args),
        Command::Crds(args) => crds::run(&args),
        Command::Doctor(args) => doctor::run(&args),
        Command::Export(args) => export::run(&args),
        Command::Status(args) => status::run(&args),
        Command::Token(command) => token::run(command),
        Command::AdminToken(command) => token::run_admin(command),
        Command::Agent(args) => runtime().and_then(|rt| rt.block_on(agent(args))),
        Command::MigrationPackage(args) => migration::run(&args),
        Command::Notify(args) => notify::run(&args),
        Command::Gateway(args) => gateway::run(&args),
        Command::Events(args) => events::run(&args),
        Command::Get(args) => get::run(&args),
        Command::Describe(args) => describe::run(&args),
        Command::Computers(args) => computers::run(&args),
        Command::Completion(args) => completion::completion(&args),
        Command::Man(args) => completion::man(&args),
        Command::Suspend(args) => steer::suspend(&args, true),
        Command::Resume(args) => steer::suspend(&args, false),
        Command::Reconcile(args) => steer::reconcile(&args),
        Command::Renew(args) => steer::renew(&args),
    };
    result.unwrap_or_else(|error| {
        if closed_pipe(&error) {
            // The reader went away (`tessera status | head -1`): it has what it wanted.
            return ExitCode::SUCCESS;
        }
        eprintln!("error: {error:#}");
        ExitCode::FAILURE
    })
}

/// Whether `error` comes from writing to a pipe whose reader has gone. Commands write their
/// output with `write!` to a locked standard output (never `println!`, which panics on a
/// closed pipe) and return the error with `?`; here it ends the command quietly.
fn closed_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// "s" after a count other than one.
fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
