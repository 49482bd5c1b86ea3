//! The agent's command line: `tessera-agent` (this module's `main`) and `tessera agent` (the
//! same `AgentArgs` and `agent`, called from `cli`). The crate's only command-line code that
//! builds without the `server` feature, so it imports only `agent`, `logging` and
//! `resources::quantity`; like `cli`, it may read the environment and spawn tasks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser};
use tokio_util::sync::CancellationToken;

/// `tessera agent`.
#[derive(Debug, Args)]
#[command(after_help = "Examples (`tessera-agent` takes the same flags):
  # enroll with a token, then one pass (cron, first run)
  tessera agent --once --server https://tessera.example.com:8443 --state /var/lib/tessera-agent \\
      --ca ca.crt --token tsr_... --tag lab
  # a service: hourly passes, and within seconds of a change through the push channel
  tessera agent --server https://tessera.example.com:8443 --state /var/lib/tessera-agent \\
      --interval 1h
  # a roaming laptop, through a tunnel gateway in the DMZ
  tessera agent --server https://tessera.internal:8443 --state /var/lib/tessera-agent \\
      --gateway dmz.example.com:443")]
pub(crate) struct AgentArgs {
    /// The server, `https://host:port`.
    #[arg(long, env = "TESSERA_SERVER", help_heading = "Server")]
    server: String,
    /// Where the agent keeps its identity, downloads and results.
    #[arg(long, env = "TESSERA_AGENT_STATE", help_heading = "Agent")]
    state: PathBuf,
    /// The CA certificate to trust for the server at enrollment (`ca.crt` of the server's
    /// Certificate); afterwards the agent keeps the one the server gave it.
    #[arg(long, env = "TESSERA_CA", help_heading = "Server")]
    ca: Option<PathBuf>,
    /// An enrollment token (`tessera token create`), needed once.
    #[arg(
        long,
        env = "TESSERA_TOKEN",
        hide_env_values = true,
        help_heading = "Server"
    )]
    token: Option<String>,
    /// A tag to report (may be repeated), matched by Affectations' `targets.tags`.
    #[arg(long, help_heading = "Agent")]
    tag: Vec<String>,
    /// One pass, then exit (for cron, tests and first runs).
    #[arg(long, help_heading = "Agent")]
    once: bool,
    /// An HTTP proxy to reach the server through (CONNECT; TLS stays end to end),
    /// `http://[user:password@]host:port`, with `@`, `:` and `%` in the credentials
    /// percent-encoded as in any URL (`https_proxy` too).
    #[arg(
        long,
        env = "HTTPS_PROXY",
        hide_env_values = true,
        help_heading = "Network"
    )]
    proxy: Option<String>,
    /// Servers reached without the proxy, as curl reads it: comma-separated host names (and
    /// their subdomains), IP addresses, networks (`10.0.0.0/8`), or `*` (`no_proxy` too).
    #[arg(long, env = "NO_PROXY", help_heading = "Network")]
    no_proxy: Option<String>,
    /// A Tessera gateway in tunnel mode to reach the server through, `host:port`: the agent
    /// shows its certificate to the gateway, and its TLS session with the server runs inside.
    #[arg(
        long,
        env = "TESSERA_GATEWAY",
        conflicts_with = "proxy",
        help_heading = "Network"
    )]
    gateway: Option<String>,
    /// The CA that issued the gateway's certificate (default: the server's CA).
    #[arg(
        long,
        env = "TESSERA_GATEWAY_CA",
        requires = "gateway",
        help_heading = "Network"
    )]
    gateway_ca: Option<PathBuf>,
    /// Time between passes when running as a service (default: an hour).
    #[arg(long, help_heading = "Agent")]
    interval: Option<crate::resources::quantity::Duration>,
    /// Listen here for the server's "check in now" (`tessera notify`), with mutual TLS.
    #[arg(long, help_heading = "Check-in calls")]
    listen: Option<SocketAddr>,
    /// The address the server should call (default: the --listen address).
    #[arg(long, requires = "listen", help_heading = "Check-in calls")]
    notify_address: Option<String>,
    /// Do not hold the push channel (a long poll to the server that says "check in now"
    /// within seconds of a change): check in only on the interval and through --listen.
    #[arg(long, help_heading = "Check-in calls")]
    no_push: bool,
}

/// How long the first pass waits for the push channel's first answer, so that a change made
/// while the pass runs is not missed (and no second pass is needed for it): a connection
/// and one exchange, well under a second on any working network.
const FIRST_ANSWER: Duration = Duration::from_secs(5);

/// `tessera-agent`: the agent alone, for endpoints (built with `--no-default-features`, it
/// links none of the server's code).
#[derive(Debug, Parser)]
#[command(name = "tessera-agent", version, about = "Tessera's agent", long_about = None)]
struct AgentCli {
    #[command(flatten)]
    args: AgentArgs,
    /// Log filter, e.g. `info`, `tessera=debug` (RUST_LOG syntax).
    #[arg(long, env = "TESSERA_LOG", default_value = "info")]
    log: String,
    /// Log lines as `text` (for people) or `json` (one object a line, for log pipelines).
    #[arg(long, env = "TESSERA_LOG_FORMAT", value_enum, default_value_t = crate::logging::LogFormat::Text)]
    log_format: crate::logging::LogFormat,
}

/// The `tessera-agent` binary's command line.
pub fn main() -> ExitCode {
    let cli = AgentCli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    crate::logging::init(&cli.log, cli.log_format);
    runtime()
        .and_then(|rt| rt.block_on(agent(cli.args)))
        .unwrap_or_else(|error| {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        })
}

/// `tessera agent` and `tessera-agent`: a pass now, then one per interval (or when the
/// server says so over the push channel, or calls the listener), until a shutdown signal;
/// with `--once`, one pass. With `--listen`, the listener is open (and its address logged)
/// before the first pass; the push channel too, unless `--no-push`.
pub(crate) async fn agent(args: AgentArgs) -> Result<ExitCode> {
    // Like curl: the upper-case variable (through clap), else the lower-case one; empty is
    // unset.
    let variable = |name: &str| std::env::var(name).ok();
    let proxy = args
        .proxy
        .or_else(|| variable("https_proxy"))
        .filter(|p| !p.is_empty());
    let no_proxy = args
        .no_proxy
        .or_else(|| variable("no_proxy"))
        .unwrap_or_default();
    let proxy = proxy
        .map(|url| crate::agent::Proxy::new(&url, &no_proxy))
        .transpose()?;
    let config = crate::agent::Config {
        server: args.server.trim_end_matches('/').to_owned(),
        state_dir: args.state,
        ca: args.ca,
        token: args.token,
        tags: args.tag,
        proxy,
        gateway: args.gateway.map(|address| (address, args.gateway_ca)),
        notify_address: args
            .notify_address
            .clone()
            .or_else(|| args.listen.map(|a| a.to_string())),
        clock: jiff::Timestamp::now,
    };
    let wake = Arc::new(tokio::sync::Notify::new());
    let shutdown = CancellationToken::new();
    // Bound before the first pass, so the address is known (and taken) from the start.
    let mut listener = match args.listen {
        Some(address) if !args.once => {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("failed to listen on {address}"))?;
            let address = listener.local_addr().unwrap_or(address);
            tracing::info!(%address, "listening for the server's check-in calls");
            Some(listener)
        }
        _ => None,
    };
    let wakes = Arc::new(crate::agent::push::Wakes::default());
    let mut channel = !args.once && !args.no_push;
    loop {
        // The push channel needs an identity too; it is open before the first pass.
        if channel && crate::agent::enroll_if_needed(&config).await.is_ok() {
            channel = false;
            let (config, held, token) = (config.clone(), wakes.clone(), shutdown.clone());
            tokio::spawn(async move { crate::agent::push::hold(&config, held, token).await });
            let _ = tokio::time::timeout(FIRST_ANSWER, wakes.connected.notified()).await;
        }
        wakes
            .pass_started
            .store(true, std::sync::atomic::Ordering::Release);
        // Answering needs an identity: enrolled first (a failure is the pass's to report).
        if listener.is_some()
            && crate::agent::enroll_if_needed(&config).await.is_ok()
            && let Some(listener) = listener.take()
        {
            let (config, wake, token) = (config.clone(), wake.clone(), shutdown.clone());
            tokio::spawn(async move {
                if let Err(error) = crate::agent::listen(&config, listener, wake, token).await {
                    tracing::warn!(error = %format!("{:#}", anyhow::Error::from(error)), "the notify listener stopped");
                }
            });
        }
        match crate::agent::run_once(&config).await {
            Ok(_) if args.once => return Ok(ExitCode::SUCCESS),
            Ok(_) => {}
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
            () = wakes.wake.notified() => {}
        }
    }
}

/// The multi-threaded runtime every long-running command uses.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")
}

/// Ctrl-C, or SIGTERM on Unix (a service manager stopping the agent).
pub(crate) async fn shutdown_signal() {
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
