//! The agent-facing listeners: HTTPS, the optional plain-HTTP listener, and the
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
use crate::server::agent::{
    ClientAddress, HttpsAddress, Listen, PeerAgent, PeerCertificate, ServeError,
};
use crate::server::metrics::{HandshakeFailure, Metrics};

/// Open connections finish their request within this on shutdown (less than the grace
/// period `tessera serve` gives its tasks).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A failed bind is tried again after this, doubling up to [`BIND_RETRY_MAX`]: the port may
/// be held by a process that is going away, or an address not yet configured on the host.
pub const BIND_RETRY_FIRST: Duration = Duration::from_secs(1);

/// The longest wait between two attempts to bind a listener.
pub const BIND_RETRY_MAX: Duration = Duration::from_secs(30);

/// How the agent-facing listeners stand: what `run` publishes, and what the Server's status
/// says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bound {
    /// Counts the listener generations (one per change of address), so that a listener of
    /// a generation already stopped never writes here.
    generation: u64,
    /// The HTTPS listener, then the plain-HTTP one.
    slots: [Slot; 2],
}

/// One listener's state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Slot {
    /// Not asked for.
    #[default]
    Off,
    /// Asked for; its first bind has not returned yet.
    Binding,
    /// Listening here.
    Bound(SocketAddr),
    /// Its last bind failed with `error` and is being tried again.
    Failed { address: SocketAddr, error: String },
}

impl Bound {
    /// The addresses listened on, HTTPS first.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.slots
            .iter()
            .filter_map(|slot| match slot {
                Slot::Bound(address) => Some(*address),
                _ => None,
            })
            .collect()
    }

    /// The addresses whose bind failed, with the error, HTTPS first.
    pub fn failures(&self) -> Vec<(SocketAddr, &str)> {
        self.slots
            .iter()
            .filter_map(|slot| match slot {
                Slot::Failed { address, error } => Some((*address, error.as_str())),
                _ => None,
            })
            .collect()
    }

    /// Sets a listener's state if its generation is the current one: (current, changed).
    fn set(&mut self, generation: u64, index: usize, slot: Slot) -> (bool, bool) {
        if self.generation != generation {
            return (false, false);
        }
        let changed = self.slots[index] != slot;
        self.slots[index] = slot;
        (true, changed)
    }
}

/// Keeps listeners bound to the addresses on `listen`, serving `https` with `tls` and the
/// plain listener with `http` within `budget`, until `shutdown`. How they stand is
/// published on `bound`; a failed bind is retried with backoff until it succeeds or the
/// address changes.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    mut listen: watch::Receiver<Listen>,
    tls: Arc<rustls::ServerConfig>,
    https: Router,
    http: Router,
    metrics: Arc<Metrics>,
    budget: Arc<ConnectionBudget>,
    bound: watch::Sender<Bound>,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let tracker = TaskTracker::new();
    // Both listeners count against one cap: they share the process's descriptors.
    let gate = Arc::new(Gate::default());
    let mut generation_id = 0;
    loop {
        let wanted = listen.borrow_and_update().clone();
        // One token per generation of listeners: a change of address stops the old ones.
        let generation = shutdown.child_token();
        generation_id += 1;
        let asked = |address: Option<SocketAddr>| address.map_or(Slot::Off, |_| Slot::Binding);
        bound.send_replace(Bound {
            generation: generation_id,
            slots: [asked(wanted.https), asked(wanted.http)],
        });
        let accepting = |name, stats: &Arc<crate::budget::Stats>| Accepting {
            name,
            budget: budget.clone(),
            gate: gate.clone(),
            stats: stats.clone(),
            tracker: tracker.clone(),
            shutdown: generation.clone(),
        };
        let keeping = |index, what, address| Keeping {
            what,
            address,
            index,
            generation: generation_id,
            bound: bound.clone(),
            stop: generation.clone(),
        };
        // The HTTPS listener's first bind comes first: the plain-HTTP one names its address
        // to agents that call over plain HTTP.
        let mut https_bound = None;
        if let Some(address) = wanted.https {
            let first = bind(address).await;
            https_bound = first.as_ref().ok().and_then(|l| l.local_addr().ok());
            let (acceptor, app, metrics) = (
                TlsAcceptor::from(tls.clone()),
                https.clone(),
                metrics.clone(),
            );
            let (proxies, accepting) = (
                wanted.trusted_proxies.clone(),
                accepting("https", &metrics.connections.https),
            );
            tracker.spawn(
                keeping(0, "agent-facing HTTPS", address).serve(first, move |listener| {
                    accept_tls(listener, proxies, acceptor, app, metrics, accepting)
                }),
            );
        }
        if let Some(address) = wanted.http {
            // Agents calling the OCS endpoint over plain HTTP are sent to the HTTPS one (its
            // asked-for port while its bind is being retried).
            let https_address = https_bound.or(wanted.https.filter(|a| a.port() != 0));
            let app = http
                .clone()
                .layer(axum::Extension(HttpsAddress(https_address)));
            let accepting = accepting("http", &metrics.connections.http);
            let first = bind(address).await;
            tracker.spawn(
                keeping(1, "plain-HTTP", address).serve(first, move |listener| {
                    accept_plain(listener, app, accepting)
                }),
            );
        }
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

/// One listener of one generation, kept bound.
struct Keeping {
    /// The listener's name in logs.
    what: &'static str,
    address: SocketAddr,
    /// Its slot in [`Bound`].
    index: usize,
    generation: u64,
    bound: watch::Sender<Bound>,
    stop: CancellationToken,
}

impl Keeping {
    /// Binds (`first` is the outcome of the first attempt), retrying with backoff while it
    /// fails, then runs `serve` on the listener. Each outcome is logged and published.
    async fn serve<F, Fut>(self, first: Result<TcpListener, ServeError>, serve: F)
    where
        F: FnOnce(TcpListener) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let mut attempt = first;
        let mut delay = BIND_RETRY_FIRST;
        let listener = loop {
            match attempt {
                Ok(listener) => break listener,
                Err(error) => {
                    let error = crate::error_chain(&error);
                    let failed = Slot::Failed {
                        address: self.address,
                        error: error.clone(),
                    };
                    if !self.publish(failed) {
                        return;
                    }
                    tracing::error!(
                        what = self.what,
                        %error,
                        retry_in = ?delay,
                        "{} listener not started; trying again",
                        self.what
                    );
                    tokio::select! {
                        () = self.stop.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(BIND_RETRY_MAX);
                    attempt = bind(self.address).await;
                }
            }
        };
        let local = listener.local_addr().unwrap_or(self.address);
        if !self.publish(Slot::Bound(local)) {
            return;
        }
        tracing::info!(address = %local, "{} listener listening", self.what);
        serve(listener).await;
    }

    /// Publishes this listener's state; false once its generation is over.
    fn publish(&self, slot: Slot) -> bool {
        let mut current = true;
        // Only a change wakes reconcile: a retry failing the same way again is no news.
        self.bound.send_if_modified(|bound| {
            let changed;
            (current, changed) = bound.set(self.generation, self.index, slot);
            changed
        });
        current && !self.stop.is_cancelled()
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
                        metrics.handshake_failed(HandshakeFailure::ProxyHeader);
                        let error = crate::error_chain(&error);
                        tracing::debug!(%peer, %error, "PROXY header refused");
                        return;
                    }
                    Err(_) => {
                        metrics.handshake_failed(HandshakeFailure::Timeout);
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
            connection
                .serve_tls(stream, permit, deadline, acceptor, app)
                .await;
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
            let app = app.layer(axum::Extension(ClientAddress(peer)));
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
            let connection = Connection {
                client,
                budget: &budget,
                stats: &stats,
                metrics: &metrics,
                shutdown: &shutdown,
            };
            connection
                .serve_tls(stream, permit, deadline, acceptor, app)
                .await;
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
    /// The TLS handshake (by `deadline`) and the HTTP exchanges, holding `permit`.
    async fn serve_tls<S>(
        self,
        stream: S,
        mut permit: budget::Permit,
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
                self.metrics.handshake_failed(HandshakeFailure::of(&error));
                tracing::debug!(%client, %error, "TLS handshake failed");
                return;
            }
            Err(_) => {
                self.metrics.handshake_failed(HandshakeFailure::Timeout);
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
        // A verified client certificate (an agent's, a gateway's) vouches for the
        // connection: it may stay open (a push wait) beyond its address's share.
        if leaf.is_some() {
            permit.vouched();
        }
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
