//! `tessera notify`: ask a computer's agent to check in now. First through the running
//! server's push channel (`POST /api/v1/computers/{computer}/wake`), which reaches agents
//! behind NAT and gateways; when no server answers or the agent holds no channel, over
//! mutual TLS to the agent's listener, as the server would call it. It says which way went.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;

use super::api::ServerArgs;
use super::running::runtime;
use super::state::StateArgs;

/// `tessera notify`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  tessera notify lab-01                          ask lab-01's agent to check in now
  tessera notify lab-01 --admin http://10.0.0.5:9090 --token-file admin.token
  tessera notify 74cdb8084e27758aa046fe2008e796c9 --state /var/lib/tessera")]
pub(super) struct NotifyArgs {
    #[command(flatten, next_help_heading = "Server")]
    server: ServerArgs,
    /// The computer (device id or name) whose agent should check in now.
    computer: String,
}

/// Finds the computer's agent and calls it.
pub(super) fn run(args: &NotifyArgs) -> Result<ExitCode> {
    runtime()?.block_on(notify(args))
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
    use std::io::Write as _;
    let pushed = match args.server.api().await {
        Ok(api) => {
            let path = format!("/api/v1/computers/{}/wake", url_segment(&args.computer));
            Some(
                api.post::<_, crate::server::admin::WakeReport>(&path, &serde_json::json!({}))
                    .await,
            )
        }
        Err(_) => None,
    };
    let reason = match pushed {
        Some(Ok(report)) if report.delivery != "notConnected" => {
            writeln!(
                std::io::stdout().lock(),
                "{} will check in now (told over its push channel to the server)",
                report.device
            )?;
            return Ok(ExitCode::SUCCESS);
        }
        Some(Ok(report)) => format!("{} holds no push channel", report.device),
        Some(Err(error)) => format!("the server refused the wake: {error:#}"),
        None => "no server answers".to_owned(),
    };
    match call_listener(args).await {
        Ok(line) => {
            writeln!(
                std::io::stdout().lock(),
                "{line} (called its listener: {reason})"
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => Err(error.context(reason)),
    }
}

/// `text` as one URL path segment (percent-encoded but for unreserved characters).
fn url_segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Calls the agent's listener; the line to print.
async fn call_listener(args: &NotifyArgs) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (state, wanted) = (args.server.state.clone(), args.computer.clone());
    let (computer, address, issuer) =
        tokio::task::spawn_blocking(move || notify_target(&state, &wanted))
            .await
            .context("the database lookup panicked")??;
    let state = args
        .server
        .state
        .state
        .clone()
        .unwrap_or_else(|| args.server.state.config.join(".tessera"));
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
        crate::pki::AgentId::new(&computer.device_id)
            .with_context(|| format!("{} is not a Tessera agent", computer.device_id))?
            .uri(),
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
    Ok(format!(
        "{} ({address}) will check in now",
        computer.device_id
    ))
}
