//! The DMZ relay, in two modes per listener:
//!
//! - `passthrough`: read the TLS ClientHello (with a timeout and a size limit), pick the
//!   backend by its server name (SNI), and forward the bytes untouched, so TLS stays end to
//!   end between agent and server.
//! - `tunnel`: terminate an outer TLS session that requires a client certificate (verified
//!   against the trusted CAs, validity, usage and CRLs by rustls), and only then connect to
//!   the backend and relay. Inside, the agent runs its own TLS session with the server, so
//!   the gateway never sees the traffic. The tunnel speaks two ways: the agent's inner
//!   ClientHello straight away (routed by its server name, like passthrough), or an HTTP
//!   `CONNECT` to one of the configured backends first, which is what `curl --proxy https://`
//!   and other HTTPS-proxy clients send.
//!
//! - `terminate`: for HTTP clients that cannot tunnel. The client certificate is verified at
//!   the edge as in tunnel mode; each request then goes to the backend over a mutual-TLS
//!   connection of the gateway's own, with the verified certificate in the
//!   `X-Tessera-Client-Certificate` header and the client's address in `X-Forwarded-For`
//!   (whatever the client sent under those names is replaced). The server believes them
//!   only from gateways it lists, and checks the certificate again.
//!
//! A client refused at the edge never causes a connection to the backend.
//!
//! Reconcile publishes the [`Config`] and the edge TLS settings through `watch`, so routes,
//! certificates and trust change without a restart.
//!
//! One file per part: `client_hello` (the SNI reader), `passthrough`, `edge` (the verifying
//! handshake of tunnel and terminate), `tunnel`, `terminate`, `dial_out` (the pool of
//! connections inside servers open) and `metrics`; this file has the shared configuration,
//! the accept loop and the byte relay.

mod client_hello;
mod dial_out;
mod edge;
pub mod metrics;
mod passthrough;
mod terminate;
mod tunnel;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use client_hello::{Hello, HelloError, MAX_CLIENT_HELLO, server_name};
pub use dial_out::{InsidePool, accept_inside};
pub use metrics::Counters;
use passthrough::passthrough;
use terminate::terminate;
use tunnel::tunnel;

/// How a listener relays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Passthrough,
    Tunnel,
    Terminate,
}

/// How the relay runs.
#[derive(Clone, Debug)]
pub struct Config {
    pub mode: Mode,
    /// Where clients go when their server name matches no route.
    pub backend: String,
    /// Server name (lowercase) → `host:port`.
    pub routes: Vec<(String, String)>,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_connections: usize,
    /// Send a PROXY protocol v2 header to the backend, so the server knows the client.
    pub proxy_protocol: bool,
    /// Terminate mode: how the gateway connects to the backend (its own certificate, and
    /// the CA of the backend's).
    pub backend_tls: Option<Arc<rustls::ClientConfig>>,
    /// Dial-out: names an inside server's certificate must carry (lowercase).
    pub inside_names: Vec<String>,
}

impl Config {
    /// The backend for `server_name`.
    pub fn backend_for(&self, server_name: Option<&str>) -> &str {
        server_name
            .map(str::to_ascii_lowercase)
            .and_then(|name| {
                self.routes
                    .iter()
                    .find(|(route, _)| *route == name)
                    .map(|(_, backend)| backend.as_str())
            })
            .unwrap_or(&self.backend)
    }

    /// The backend a tunnel's `CONNECT host:port` may reach: a route's server name (at any
    /// port) gives its backend; a backend named directly is allowed; anything else is not.
    pub fn connect_target(&self, authority: &str) -> Option<&str> {
        let authority = authority.to_ascii_lowercase();
        let host = match authority.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => authority.as_str(),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Some((_, backend)) = self.routes.iter().find(|(name, _)| name == host) {
            return Some(backend);
        }
        std::iter::once(&self.backend)
            .chain(self.routes.iter().map(|(_, backend)| backend))
            .find(|backend| backend.eq_ignore_ascii_case(&authority))
            .map(String::as_str)
    }
}

/// What went wrong with a relayed connection before its backend was chosen; logged with the
/// connection, counted as a refusal.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Hello(#[from] HelloError),
    #[error("closed before its ClientHello ended")]
    ClosedInHello,
    #[error("closed before sending anything")]
    ClosedAtStart,
    #[error("failed to read from the client")]
    Read(#[source] std::io::Error),
    #[error("request head over {} bytes", tunnel::MAX_CONNECT_HEAD)]
    ConnectTooLarge,
    #[error("closed inside the request head")]
    ClosedInConnect,
    #[error("request head is not text")]
    ConnectNotText,
    #[error("neither a TLS ClientHello nor an HTTP CONNECT")]
    NotConnect,
    #[error("CONNECT {0}: not a backend of this gateway")]
    NotABackend(String),
}

/// Relays connections accepted on `listener` until `shutdown`, with the latest `config`
/// (taken per connection). `edge` is the TLS configuration of a tunnel listener. `budget`
/// gives the per-address cap and terminate mode's HTTP timeouts; the total cap and the
/// relay's own timeouts are the Gateway's `limits`.
pub async fn run(
    listener: TcpListener,
    config: watch::Receiver<Arc<Config>>,
    edge: Option<Arc<rustls::ServerConfig>>,
    inside: Option<Arc<InsidePool>>,
    counters: Arc<Counters>,
    budget: Arc<crate::budget::ConnectionBudget>,
    shutdown: CancellationToken,
) {
    let acceptor = edge.map(tokio_rustls::TlsAcceptor::from);
    let gate = Arc::new(crate::budget::Gate::default());
    let throttle = crate::budget::Throttle::default();
    loop {
        let Some((client, peer)) =
            crate::budget::accept(&listener, "gateway", &counters.connections, &shutdown).await
        else {
            return;
        };
        counters.accepted.fetch_add(1, Ordering::Relaxed);
        let config = config.borrow().clone();
        // Beyond the limit, a connection is closed at once: a clear, fast refusal.
        let active = counters.active.fetch_add(1, Ordering::Relaxed);
        if active >= config.max_connections as u64 {
            counters.active.fetch_sub(1, Ordering::Relaxed);
            counters.refused_busy.fetch_add(1, Ordering::Relaxed);
            if let Some(held) = throttle.allow() {
                tracing::warn!(%peer, limit = config.max_connections, refused_since_last_warning = held, "connection refused: at the connection limit");
            }
            continue;
        }
        let Ok(permit) = gate.admit(
            peer.ip(),
            usize::MAX,
            budget.max_per_address,
            &counters.connections,
        ) else {
            counters.active.fetch_sub(1, Ordering::Relaxed);
            if let Some(held) = throttle.allow() {
                tracing::warn!(%peer, limit = budget.max_per_address, refused_since_last_warning = held, "connection refused: this address has its share of connections");
            }
            continue;
        };
        let budget = budget.clone();
        let (counters, shutdown, acceptor) = (counters.clone(), shutdown.clone(), acceptor.clone());
        let inside = inside.clone();
        tokio::spawn(async move {
            let mut permit = permit;
            let _ = client.set_nodelay(true);
            let relay = async {
                match (config.mode, acceptor) {
                    (Mode::Tunnel, Some(acceptor)) => {
                        tunnel(
                            client,
                            peer,
                            &acceptor,
                            &config,
                            &counters,
                            inside.as_deref(),
                            &mut permit,
                        )
                        .await;
                    }
                    (Mode::Terminate, Some(acceptor)) => {
                        terminate(
                            client,
                            peer,
                            &acceptor,
                            &config,
                            &counters,
                            &budget,
                            &mut permit,
                        )
                        .await;
                    }
                    (Mode::Tunnel | Mode::Terminate, None) => {
                        tracing::error!(%peer, "listener without TLS settings: connection closed");
                    }
                    (Mode::Passthrough, _) => {
                        passthrough(client, peer, &config, &counters, inside.as_deref()).await;
                    }
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = relay => {}
            }
            counters.active.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Connects to `backend` within the connect timeout and sends the PROXY header (when asked)
/// and `first`; `None` (counted and logged) when that fails.
async fn open_backend(
    backend: &str,
    peer: std::net::SocketAddr,
    local: std::net::SocketAddr,
    first: &[u8],
    config: &Config,
    counters: &Counters,
    inside: Option<&InsidePool>,
) -> Option<Upstream> {
    let mut upstream: Upstream = if let Some(inside) = inside {
        // Dial-out: an idle connection the inside opened; the header always names the
        // client, since the inside has no other way to know it.
        match inside.take(config.connect_timeout).await {
            Some(stream) => {
                let mut stream: Upstream = Box::new(stream);
                let header = crate::protocol::proxy::encode(peer, local);
                if stream.write_all(&header).await.is_err() {
                    counters.backend_failed.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                stream
            }
            None => {
                counters.backend_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%peer, "no dial-out connection from the inside within the connect timeout");
                return None;
            }
        }
    } else {
        match tokio::time::timeout(config.connect_timeout, TcpStream::connect(backend)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                let mut stream: Upstream = Box::new(stream);
                if config.proxy_protocol {
                    let header = crate::protocol::proxy::encode(peer, local);
                    if stream.write_all(&header).await.is_err() {
                        counters.backend_failed.fetch_add(1, Ordering::Relaxed);
                        return None;
                    }
                }
                stream
            }
            Ok(Err(error)) => {
                counters.backend_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%peer, %backend, %error, "backend unreachable");
                return None;
            }
            Err(_) => {
                counters.backend_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%peer, %backend, "backend did not accept within the connect timeout");
                return None;
            }
        }
    };
    if upstream.write_all(first).await.is_err() {
        counters.backend_failed.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    counters.relayed.fetch_add(1, Ordering::Relaxed);
    Some(upstream)
}

/// The backend side of a relay: a TCP connection, or a dial-out session from the inside.
type Upstream = Box<dyn Stream>;

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// Copies both ways until either side closes or nothing moves either way for `idle`;
/// bytes copied.
async fn copy_with_idle_timeout(
    client: impl AsyncRead + AsyncWrite + Send,
    upstream: impl AsyncRead + AsyncWrite + Send,
    idle: Duration,
) -> u64 {
    let (client_read, client_write) = tokio::io::split(client);
    let (upstream_read, upstream_write) = tokio::io::split(upstream);
    let total = AtomicU64::new(0);
    let pipe = async |mut from: Box<dyn AsyncRead + Send + Unpin + '_>,
                      mut to: Box<dyn AsyncWrite + Send + Unpin + '_>| {
        let mut buffer = vec![0u8; 64 << 10];
        loop {
            let seen = total.load(Ordering::Relaxed);
            match tokio::time::timeout(idle, from.read(&mut buffer)).await {
                // Idle is both ways: a long download keeps its quiet request side open.
                Err(_) if total.load(Ordering::Relaxed) != seen => continue,
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(n)) => {
                    // A peer that stops reading is as idle as one that stops sending.
                    match tokio::time::timeout(idle, to.write_all(&buffer[..n])).await {
                        Ok(Ok(())) => {}
                        _ => break,
                    }
                    total.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(
        pipe(Box::new(client_read), Box::new(upstream_write)),
        pipe(Box::new(upstream_read), Box::new(client_write)),
    );
    total.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A relay to `backend`, with one route from `tessera.example.org` to `routed`.
    fn config(mode: Mode, backend: &str, routed: &str) -> Config {
        Config {
            mode,
            backend: backend.into(),
            routes: vec![("tessera.example.org".into(), routed.into())],
            handshake_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            max_connections: 1,
            proxy_protocol: false,
            backend_tls: None,
            inside_names: Vec::new(),
        }
    }

    #[test]
    fn a_connect_reaches_only_the_gateways_backends() {
        let config = config(Mode::Tunnel, "10.0.0.5:8443", "10.0.0.6:8443");
        // A route's name at any port, in any case.
        assert_eq!(
            config.connect_target("Tessera.Example.org:443"),
            Some("10.0.0.6:8443")
        );
        // A backend named directly.
        assert_eq!(
            config.connect_target("10.0.0.5:8443"),
            Some("10.0.0.5:8443")
        );
        assert_eq!(
            config.connect_target("10.0.0.6:8443"),
            Some("10.0.0.6:8443")
        );
        // Anything else: not an open relay.
        assert_eq!(config.connect_target("10.0.0.5:22"), None);
        assert_eq!(config.connect_target("example.com:443"), None);
        assert_eq!(config.connect_target("[::1]:8443"), None);
    }

    #[test]
    fn routes_pick_the_backend_by_name_and_fall_back_to_the_default() {
        let config = config(Mode::Passthrough, "inside:8443", "other:8443");
        assert_eq!(
            config.backend_for(Some("TESSERA.example.org")),
            "other:8443"
        );
        assert_eq!(config.backend_for(Some("unknown")), "inside:8443");
        assert_eq!(config.backend_for(None), "inside:8443");
    }
}
