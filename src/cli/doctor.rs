//! `tessera doctor`: connect to a TLS server, show the chain it offers, explain what is wrong.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use super::running::runtime;

/// `tessera doctor`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  tessera doctor tessera.example.com:8443 --ca cacert.pem        as an OCS agent sees the server
  tessera doctor 127.0.0.1:8443 --server-name tessera.local --ca .tessera/certificates/default/tessera-server/ca.crt
  tessera doctor gw.example.com:443 --ca ca.crt --cert agent.crt --key agent.key")]
pub(super) struct DoctorArgs {
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

/// Reads the files the arguments name, then runs the checks.
pub(super) fn run(args: &DoctorArgs) -> Result<ExitCode> {
    let options = options(args)?;
    Ok(runtime()?.block_on(crate::doctor::run(options))?)
}

fn options(args: &DoctorArgs) -> Result<crate::doctor::Options> {
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
