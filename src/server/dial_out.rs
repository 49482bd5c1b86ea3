//! Dial-out: the server keeps connections open to a gateway in the DMZ, and agents reach it
//! over them, so nothing in the DMZ ever connects to the inside.
//!
//! Each connection is a TLS session to the gateway's `dialOut.listen`, where the server
//! presents its client certificate and checks the gateway's. It stays idle until the gateway
//! hands an agent's connection over: a PROXY protocol v2 header naming the agent, then the
//! agent's own bytes (its TLS session with this server), which [`super::agent::serve_dialed`]
//! serves like a connection accepted on the HTTPS listener. Each connection used is replaced
//! at once, and an idle one is replaced after [`RECYCLE`] so that no middlebox drops it
//! silently.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// An idle connection is replaced after this (the gateway stops handing out older ones a
/// little before).
pub const RECYCLE: Duration = Duration::from_secs(240);
/// Time allowed to connect and finish the TLS handshake with the gateway.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait between failed attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Where to dial and as whom, as reconcile publishes it.
#[derive(Clone)]
pub struct Settings {
    /// The gateway's dial-out address, `host:port`.
    pub gateway: String,
    /// Idle connections to keep.
    pub connections: usize,
    /// Trusts the gateway's CA and presents the server's client certificate.
    pub tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("gateway", &self.gateway)
            .field("connections", &self.connections)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Settings {
    fn eq(&self, other: &Self) -> bool {
        self.gateway == other.gateway
            && self.connections == other.connections
            && Arc::ptr_eq(&self.tls, &other.tls)
    }
}

/// A connection handed over by the gateway.
pub type Dialed = tokio_rustls::client::TlsStream<TcpStream>;

/// Keeps the connections `settings` asks for, handing over each one the gateway uses, until
/// `shutdown`. New settings replace every connection.
pub async fn run(
    mut settings: watch::Receiver<Option<Arc<Settings>>>,
    handed: mpsc::Sender<(Dialed, SocketAddr)>,
    shutdown: CancellationToken,
) {
    loop {
        let current = settings.borrow_and_update().clone();
        let generation = shutdown.child_token();
        if let Some(current) = current {
            tracing::info!(gateway = %current.gateway, connections = current.connections, "dialing out to the gateway");
            for slot in 0..current.connections {
                tokio::spawn(keep(
                    slot,
                    current.clone(),
                    handed.clone(),
                    generation.clone(),
                ));
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = settings.changed() => {
                generation.cancel();
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// One slot: a connection to the gateway, replaced when used, idle too long, or lost.
async fn keep(
    slot: usize,
    settings: Arc<Settings>,
    handed: mpsc::Sender<(Dialed, SocketAddr)>,
    token: CancellationToken,
) {
    let mut backoff = Duration::from_secs(1);
    let mut failing = false;
    loop {
        let dialed = tokio::select! {
            () = token.cancelled() => return,
            dialed = tokio::time::timeout(DIAL_TIMEOUT, dial(&settings)) => dialed,
        };
        let mut stream = match dialed {
            Ok(Ok(stream)) => {
                if failing {
                    tracing::info!(slot, gateway = %settings.gateway, "dial-out connection to the gateway restored");
                    failing = false;
                }
                backoff = Duration::from_secs(1);
                stream
            }
            other => {
                let reason = match other {
                    Ok(Err(error)) => crate::error_chain(&error),
                    _ => format!("no TLS session within {DIAL_TIMEOUT:?}"),
                };
                if !failing {
                    tracing::warn!(slot, gateway = %settings.gateway, %reason, "cannot dial out to the gateway; retrying");
                    failing = true;
                }
                tokio::select! {
                    () = token.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let relay = settings
            .gateway
            .parse::<SocketAddr>()
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        let header = tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(RECYCLE) => continue,
            header = super::listener::proxied_client(&mut stream, relay) => header,
        };
        match header {
            Ok(client) => {
                if handed.send((stream, client)).await.is_err() {
                    return;
                }
            }
            Err(error) => {
                let error = crate::error_chain(&error);
                tracing::debug!(slot, %error, "the gateway closed an idle dial-out connection");
            }
        }
    }
}

/// Why a dial-out connection to the gateway could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("failed to connect")]
    Connect(#[source] std::io::Error),
    #[error("`{0}` is not a server name")]
    Name(String, #[source] rustls::pki_types::InvalidDnsNameError),
    #[error("failed to set up TLS with the gateway")]
    Tls(#[source] std::io::Error),
}

async fn dial(settings: &Settings) -> Result<Dialed, DialError> {
    let tcp = TcpStream::connect(&settings.gateway)
        .await
        .map_err(DialError::Connect)?;
    let _ = tcp.set_nodelay(true);
    let host = settings
        .gateway
        .rsplit_once(':')
        .map_or(settings.gateway.as_str(), |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| DialError::Name(host.to_owned(), e))?;
    tokio_rustls::TlsConnector::from(settings.tls.clone())
        .connect(name, tcp)
        .await
        .map_err(DialError::Tls)
}
