//! The agent-facing listeners: HTTPS, the optional plain-HTTP fragment listener, and the
//! connections a gateway hands over through dial-out, each served within the
//! [`ConnectionBudget`](crate::budget::ConnectionBudget).
//!
//! Each accepted connection is admitted against the caps (over both listeners together, and
//! per client address), then gets its own task: the TLS handshake runs there under a
//! timeout, so one stalled client never holds up the accept loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::budget::{self, ConnectionBudget, Gate, Refusal, Stats, Throttle};
use crate::pki::AgentId;
use crate::server::agent::{ClientAddress, Listen, PeerAgent, PeerCertificate, ServeError};
use crate::server::metrics::Metrics;

/// Open connections finish their request within this on shutdown (less than the grace
/// period `tessera serve` gives its tasks).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Keeps listeners bound to the addresses on `listen`, serving `https` with `tls` and the
/// plain listener with `http` within `budget`, until `shutdown`. Bound addresses are
/// published on `bound`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    mut listen: watch::Receiver<Listen>,
    tls: Arc<rustls::ServerConfig>,
    https: Router,
    http: Router,
    metrics: Arc<Metrics>,
    budget: Arc<ConnectionBudget>,
    bound: watch::Sender<Vec<SocketAddr>>,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let tracker = TaskTracker::new();
    // Both listeners count against one cap: they share the process's descriptors.
    let gate = Arc::new(Gate::default());
    loop {
        let wanted = listen.borrow_and_update().clone();
        // One token per generation of listeners: a change of address stops the old ones.
        let generation = shutdown.child_token();
        let mut addresses = Vec::new();
        let accepting = |name, stats: &Arc<crate::budget::Stats>| Accepting {
            name,
            budget: budget.clone(),
            gate: gate.clone(),
            stats: stats.clone(),
            tracker: tracker.clone(),
            shutdown: generation.clone(),
        };
        if let Some(listener) =
            bind_logged(wanted.https, "agent-facing HTTPS", &mut addresses).await
        {
            tracker.spawn(accept_tls(
                listener,
                wanted.trusted_proxies.clone(),
                TlsAcceptor::from(tls.clone()),
                https.clone(),
                metrics.clone(),
                accepting("https", &metrics.connections.https),
            ));
        }
        if let Some(listener) =
            bind_logged(wanted.http, "plain-HTTP fragment", &mut addresses).await
        {
            tracker.spawn(accept_plain(
                listener,
                http.clone(),
                accepting("http", &metrics.connections.http),
            ));
        }
        bound.send_replace(addresses);
        tokio::select! {
            () = shutdown.cancelled() => break,
            changed = listen.changed() => {
                if changed.is_err() {
                    break;
                }
                if *listen.borrow() == wanted {
                    continue;
                }
                generation.cancel();
            }
        }
    }
    tracker.close();
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait()).await;
    Ok(())
}

/// Binds `address` if one is wanted, logs the outcome as the `what` listener, and records
/// the bound address. A failed bind is logged, and the other listeners start anyway.
async fn bind_logged(
    address: Option<SocketAddr>,
    what: &str,
    addresses: &mut Vec<SocketAddr>,
) -> Option<TcpListener> {
    match bind(address?).await {
        Ok(listener) => {
            let bound = listener.local_addr().unwrap_or(address?);
            addresses.push(bound);
            tracing::info!(address = %bound, "{what} listener listening");
            Some(listener)
        }
        Err(error) => {
            tracing::error!(error = %crate::error_chain(&error), "{what} listener not started");
            None
        }
    }
}

async fn bind(address: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| ServeError::Bind { address, source })
}

/// What an accept loop works with.
struct Accepting {
    /// The listener's name in logs and metrics.
    name: &'static str,
    budget: Arc<ConnectionBudget>,
    gate: Arc<Gate>,
    stats: Arc<Stats>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Accepting {
    /// The next connection admitted within the caps, with its permit; refused ones are
    /// closed at once (counted, and logged at most every few seconds). `per_address`:
    /// whether the peer's address is the client's (not a trusted relay's).
    async fn next(
        &self,
        listener: &TcpListener,
        throttle: &Throttle,
        per_address: impl Fn(SocketAddr) -> bool,
    ) -> Option<(tokio::net::TcpStream, SocketAddr, budget::Permit)> {
        loop {
            let (stream, peer) =
                budget::accept(listener, self.name, &self.stats, &self.shutdown).await?;
            let share = if per_address(peer) {
                self.budget.max_per_address
            } else {
                usize::MAX
            };
            match self
                .gate
                .admit(peer.ip(), self.budget.max_connections, share, &self.stats)
            {
                Ok(permit) => {
                    let _ = stream.set_nodelay(true);
                    return Some((stream, peer, permit));
                }
                Err(refusal) => {
                    drop(stream);
                    refused(self.name, peer, refusal, &self.budget, throttle);
                }
            }
        }
    }
}

/// Logs a refusal, at most every few seconds per listener.
pub(crate) fn refused(
    listener: &str,
    peer: SocketAddr,
    refusal: Refusal,
    budget: &ConnectionBudget,
    throttle: &Throttle,
) {
    if let Some(held) = throttle.allow() {
        let limit = match refusal {
            Refusal::Total => budget.max_connections,
            Refusal::PerAddress => budget.max_per_address,
        };
        tracing::warn!(
            listener,
            %peer,
            reason = refusal.as_str(),
            limit,
            refused_since_last_warning = held,
            "connection refused: at the connection limit"
        );
    }
}

async fn accept_tls(
    listener: TcpListener,
    trusted_proxies: Vec<std::net::IpAddr>,
    acceptor: TlsAcceptor,
    app: Router,
    metrics: Arc<Metrics>,
    accepting: Accepting,
) {
    let throttle = Throttle::default();
    // A trusted relay carries many clients: only the total cap applies to it.
    let per_address = |peer: SocketAddr| !trusted_proxies.contains(&peer.ip());
    while let Some((stream, peer, permit)) = accepting.next(&listener, &throttle, per_address).await
    {
        let acceptor = acceptor.clone();
        let app = app.clone();
        let metrics = metrics.clone();
        let shutdown = accepting.shutdown.clone();
        let budget = accepting.budget.clone();
        let stats = accepting.stats.clone();
        let relayed = trusted_proxies.contains(&peer.ip());
        accepting.tracker.spawn(async move {
            let _permit = permit;
            let mut stream = stream;
            let deadline = tokio::time::Instant::now() + budget.handshake;
            // A trusted relay says first who the client is; nobody else is believed.
            let client = if relayed {
                let header = tokio::select! {
                    () = shutdown.cancelled() => return,
                    header = tokio::time::timeout_at(deadline, proxied_client(&mut stream, peer)) => header,
                };
                match header {
                    Ok(Ok(client)) => client,
                    Ok(Err(error)) => {
                        metrics.handshake_failed(false);
                        let error = crate::error_chain(&error);
                        tracing::debug!(%peer, %error, "PROXY header refused");
                        return;
                    }
                    Err(_) => {
                        metrics.handshake_failed(true);
                        tracing::debug!(%peer, "PROXY header timed out");
                        return;
                    }
                }
            } else {
                peer
            };
            let connection = Connection {
                client,
                budget: &budget,
                stats: &stats,
                metrics: &metrics,
                shutdown: &shutdown,
            };
            connection.serve_tls(stream, deadline, acceptor, app).await;
        });
    }
}

async fn accept_plain(listener: TcpListener, app: Router, accepting: Accepting) {
    let throttle = Throttle::default();
    while let Some((stream, peer, permit)) = accepting.next(&listener, &throttle, |_| true).await {
        let app = app.clone();
        let (budget, stats) = (accepting.budget.clone(), accepting.stats.clone());
        let shutdown = accepting.shutdown.clone();
        accepting.tracker.spawn(async move {
            let _permit = permit;
            serve_connection(stream, app, &budget, &stats, &shutdown, peer).await;
        });
    }
}

/// Connections a gateway handed over through dial-out, each with the client it carries:
/// served like those accepted on the HTTPS listener, within `budget` (the caps count the
/// clients the gateway names).
pub async fn serve_dialed<S>(
    mut dialed: tokio::sync::mpsc::Receiver<(S, SocketAddr)>,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    metrics: Arc<Metrics>,
    budget: Arc<ConnectionBudget>,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let acceptor = TlsAcceptor::from(tls);
    let tracker = TaskTracker::new();
    let gate = Arc::new(Gate::default());
    let stats = metrics.connections.dial_out.clone();
    let throttle = Throttle::default();
    loop {
        let (stream, client) = tokio::select! {
            () = shutdown.cancelled() => break,
            next = dialed.recv() => match next {
                Some(next) => next,
                None => break,
            },
        };
        let permit = match gate.admit(
            client.ip(),
            budget.max_connections,
            budget.max_per_address,
            &stats,
        ) {
            Ok(permit) => permit,
            Err(refusal) => {
                refused("dial_out", client, refusal, &budget, &throttle);
                continue;
            }
        };
        let deadline = tokio::time::Instant::now() + budget.handshake;
        let (acceptor, app, metrics) = (acceptor.clone(), app.clone(), metrics.clone());
        let (budget, stats, shutdown) = (budget.clone(), stats.clone(), shutdown.clone());
        tracker.spawn(async move {
            let _permit = permit;
            let connection = Connection {
                client,
                budget: &budget,
                stats: &stats,
                metrics: &metrics,
                shutdown: &shutdown,
            };
            connection.serve_tls(stream, deadline, acceptor, app).await;
        });
    }
    tracker.close();
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait()).await;
}

/// One admitted connection over TLS.
struct Connection<'a> {
    client: SocketAddr,
    budget: &'a ConnectionBudget,
    stats: &'a Stats,
    metrics: &'a Metrics,
    shutdown: &'a CancellationToken,
}

impl Connection<'_> {
    /// The TLS handshake (by `deadline`) and the HTTP exchanges.
    async fn serve_tls<S>(
        self,
        stream: S,
        deadline: tokio::time::Instant,
        acceptor: TlsAcceptor,
        app: Router,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let client = self.client;
        let handshake = tokio::select! {
            () = self.shutdown.cancelled() => return,
            handshake = tokio::time::timeout_at(deadline, acceptor.accept(stream)) => handshake,
        };
        let stream = match handshake {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                self.metrics.handshake_failed(false);
                tracing::debug!(%client, %error, "TLS handshake failed");
                return;
            }
            Err(_) => {
                self.metrics.handshake_failed(true);
                tracing::debug!(%client, "TLS handshake timed out");
                return;
            }
        };
        // Identity comes from the verified certificate, never from a request (except from
        // a trusted gateway, see `identity::forwarded_identity`).
        let leaf = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|der| Arc::new(der.to_vec()));
        let mut app = app;
        if let Some(agent) = leaf
            .as_deref()
            .and_then(|der| AgentId::from_certificate(der))
        {
            app = app.layer(axum::Extension(PeerAgent(agent)));
        }
        let app = app
            .layer(axum::Extension(PeerCertificate(leaf)))
            .layer(axum::Extension(ClientAddress(client)));
        serve_connection(stream, app, self.budget, self.stats, self.shutdown, client).await;
    }
}

/// Reads the PROXY protocol header (v1 or v2) a trusted relay sends first; the client it
/// names.
pub(crate) async fn proxied_client(
    stream: &mut (impl AsyncRead + Unpin),
    relay: SocketAddr,
) -> Result<SocketAddr, ServeError> {
    use crate::protocol::proxy;
    match proxy::read_header(stream)
        .await
        .map_err(ServeError::Proxy)?
    {
        proxy::Header::Proxied { source, .. } => Ok(source),
        proxy::Header::Local => Ok(relay),
    }
}

/// Serves HTTP/1.1 or HTTP/2 on one connection within `budget` until it closes, times out
/// or `shutdown` (then the request in flight may finish).
async fn serve_connection<S>(
    stream: S,
    app: Router,
    budget: &ConnectionBudget,
    stats: &Stats,
    shutdown: &CancellationToken,
    client: SocketAddr,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(app);
    let ended = budget::serve(stream, service, budget, stats, shutdown, DRAIN_TIMEOUT).await;
    match ended {
        budget::Ended::Idle => tracing::debug!(%client, "connection closed: no request in time"),
        budget::Ended::Stalled => {
            tracing::debug!(%client, "connection closed: the request stopped making progress")
        }
        budget::Ended::Closed | budget::Ended::Shutdown => {}
    }
}
