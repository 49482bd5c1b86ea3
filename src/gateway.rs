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

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A ClientHello larger than this is refused (real ones are well under 2 KiB; post-quantum
/// key shares bring them near 1.5 KiB more).
pub const MAX_CLIENT_HELLO: usize = 16 << 10;

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

/// What happened to connections, for logs and metrics.
#[derive(Debug, Default)]
pub struct Counters {
    pub accepted: AtomicU64,
    pub relayed: AtomicU64,
    pub refused_busy: AtomicU64,
    pub refused_hello: AtomicU64,
    /// Tunnel: refused at the edge, by reason.
    pub refused_no_certificate: AtomicU64,
    pub refused_untrusted: AtomicU64,
    pub refused_expired: AtomicU64,
    pub refused_revoked: AtomicU64,
    pub refused_handshake: AtomicU64,
    /// Tunnel: a `CONNECT` to somewhere that is not a backend, or a malformed one.
    pub refused_target: AtomicU64,
    /// Dial-out connections from inside servers: taken into the pool, and refused.
    pub inside_accepted: AtomicU64,
    pub inside_refused: AtomicU64,
    pub backend_failed: AtomicU64,
    pub bytes: AtomicU64,
    /// Connections open now.
    pub active: AtomicU64,
    /// Per-address refusals, failed accepts and terminate-mode timeouts (see
    /// `budget::Stats`; its `active` is not used here).
    pub connections: Arc<crate::budget::Stats>,
}

impl Counters {
    /// The Prometheus text exposition, labelled with the listener's address.
    pub fn render(&self, listener: &str) -> String {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, lines: &[(&str, u64)]| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (labels, value) in lines {
                out.push_str(&format!(
                    "{name}{{listener=\"{listener}\"{labels}}} {value}\n"
                ));
            }
        };
        metric(
            "tessera_gateway_connections_total",
            "counter",
            "Connections accepted, relayed, and refused by reason.",
            &[
                (",outcome=\"accepted\"", load(&self.accepted)),
                (",outcome=\"relayed\"", load(&self.relayed)),
                (",outcome=\"refused_limit\"", load(&self.refused_busy)),
                (
                    ",outcome=\"refused_per_address\"",
                    load(&self.connections.refused_per_address),
                ),
                (",outcome=\"refused_hello\"", load(&self.refused_hello)),
                (
                    ",outcome=\"refused_no_certificate\"",
                    load(&self.refused_no_certificate),
                ),
                (
                    ",outcome=\"refused_untrusted\"",
                    load(&self.refused_untrusted),
                ),
                (",outcome=\"refused_expired\"", load(&self.refused_expired)),
                (",outcome=\"refused_revoked\"", load(&self.refused_revoked)),
                (
                    ",outcome=\"refused_handshake\"",
                    load(&self.refused_handshake),
                ),
                (",outcome=\"refused_target\"", load(&self.refused_target)),
                (",outcome=\"backend_failed\"", load(&self.backend_failed)),
            ],
        );
        metric(
            "tessera_gateway_dial_out_connections_total",
            "counter",
            "Connections from inside servers (dial-out), accepted into the pool or refused.",
            &[
                (",outcome=\"accepted\"", load(&self.inside_accepted)),
                (",outcome=\"refused\"", load(&self.inside_refused)),
            ],
        );
        metric(
            "tessera_gateway_timed_out_total",
            "counter",
            "Terminate mode: connections closed with no request in time (idle) or a request that stopped moving bytes (stalled).",
            &[
                (",reason=\"idle\"", load(&self.connections.closed_idle)),
                (
                    ",reason=\"stalled\"",
                    load(&self.connections.closed_stalled),
                ),
            ],
        );
        metric(
            "tessera_gateway_accept_errors_total",
            "counter",
            "Failed accepts (out of file descriptors and the like).",
            &[("", load(&self.connections.accept_errors))],
        );
        metric(
            "tessera_gateway_bytes_total",
            "counter",
            "Bytes relayed, both ways.",
            &[("", load(&self.bytes))],
        );
        metric(
            "tessera_gateway_active_connections",
            "gauge",
            "Connections open now.",
            &[("", load(&self.active))],
        );
        out
    }
}

/// Why a ClientHello could not be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    #[error("not a TLS handshake")]
    NotTls,
    #[error("the ClientHello is malformed")]
    Malformed,
    #[error("the ClientHello is larger than {MAX_CLIENT_HELLO} bytes")]
    TooLarge,
}

/// The server name of the ClientHello at the start of `bytes`: `Ok(None)` when more bytes
/// are needed, `Ok(Some(None))` when complete without a server name.
pub fn server_name(bytes: &[u8]) -> Result<Option<Option<String>>, HelloError> {
    // Handshake bytes gathered across TLS records.
    let mut handshake = Vec::new();
    let mut at = 0;
    loop {
        let Some(header) = bytes.get(at..at + 5) else {
            return Ok(None);
        };
        if header[0] != 0x16 || header[1] != 0x03 {
            return Err(HelloError::NotTls);
        }
        let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if length > MAX_CLIENT_HELLO {
            return Err(HelloError::TooLarge);
        }
        let Some(fragment) = bytes.get(at + 5..at + 5 + length) else {
            return if at + 5 + length > MAX_CLIENT_HELLO + 5 {
                Err(HelloError::TooLarge)
            } else {
                Ok(None)
            };
        };
        handshake.extend_from_slice(fragment);
        at += 5 + length;
        if handshake.len() >= 4 {
            if handshake[0] != 0x01 {
                return Err(HelloError::Malformed);
            }
            let body = usize::from(handshake[1]) << 16
                | usize::from(handshake[2]) << 8
                | usize::from(handshake[3]);
            if body > MAX_CLIENT_HELLO {
                return Err(HelloError::TooLarge);
            }
            if handshake.len() >= 4 + body {
                return parse_hello(&handshake[4..4 + body]).map(Some);
            }
        }
        if at > MAX_CLIENT_HELLO + 5 {
            return Err(HelloError::TooLarge);
        }
    }
}

/// The `server_name` extension of a ClientHello body.
fn parse_hello(body: &[u8]) -> Result<Option<String>, HelloError> {
    let mut reader = Reader(body);
    reader.skip(2 + 32)?; // version, random
    let session = reader.u8()?;
    reader.skip(usize::from(session))?;
    let suites = reader.u16()?;
    reader.skip(usize::from(suites))?;
    let compression = reader.u8()?;
    reader.skip(usize::from(compression))?;
    if reader.0.is_empty() {
        return Ok(None);
    }
    let extensions = reader.u16()?;
    let mut extensions = Reader(reader.take(usize::from(extensions))?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let length = extensions.u16()?;
        let data = extensions.take(usize::from(length))?;
        if kind != 0 {
            continue;
        }
        let mut list = Reader(data);
        let length = list.u16()?;
        let mut names = Reader(list.take(usize::from(length))?);
        while !names.0.is_empty() {
            let kind = names.u8()?;
            let length = names.u16()?;
            let name = names.take(usize::from(length))?;
            if kind == 0 {
                let name = std::str::from_utf8(name).map_err(|_| HelloError::Malformed)?;
                return Ok(Some(name.to_ascii_lowercase()));
            }
        }
    }
    Ok(None)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], HelloError> {
        if self.0.len() < n {
            return Err(HelloError::Malformed);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn skip(&mut self, n: usize) -> Result<(), HelloError> {
        self.take(n).map(|_| ())
    }
    fn u8(&mut self) -> Result<u8, HelloError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, HelloError> {
        let bytes = self.take(2)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }
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
        let permit = match gate.admit(
            peer.ip(),
            usize::MAX,
            budget.max_per_address,
            &counters.connections,
        ) {
            Ok(permit) => permit,
            Err(_) => {
                counters.active.fetch_sub(1, Ordering::Relaxed);
                if let Some(held) = throttle.allow() {
                    tracing::warn!(%peer, limit = budget.max_per_address, refused_since_last_warning = held, "connection refused: this address has its share of connections");
                }
                continue;
            }
        };
        let budget = budget.clone();
        let (counters, shutdown, acceptor) = (counters.clone(), shutdown.clone(), acceptor.clone());
        let inside = inside.clone();
        tokio::spawn(async move {
            let _permit = permit;
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
                        )
                        .await;
                    }
                    (Mode::Terminate, Some(acceptor)) => {
                        terminate(client, peer, &acceptor, &config, &counters, &budget).await;
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

async fn passthrough(
    mut client: TcpStream,
    peer: std::net::SocketAddr,
    config: &Config,
    counters: &Counters,
    inside: Option<&InsidePool>,
) {
    let hello = match tokio::time::timeout(config.handshake_timeout, read_hello(&mut client)).await
    {
        Ok(Ok(hello)) => hello,
        Ok(Err(reason)) => {
            counters.refused_hello.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, %reason, "connection refused");
            return;
        }
        Err(_) => {
            counters.refused_hello.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, "connection refused: no ClientHello within the handshake timeout");
            return;
        }
    };
    let local = client.local_addr().unwrap_or(peer);
    let backend = config.backend_for(hello.name.as_deref());
    let Some(upstream) =
        open_backend(backend, peer, local, &hello.bytes, config, counters, inside).await
    else {
        return;
    };
    tracing::debug!(%peer, server_name = hello.name.as_deref().unwrap_or("-"), %backend, "relaying");
    let bytes = copy_with_idle_timeout(client, upstream, config.idle_timeout).await;
    counters
        .bytes
        .fetch_add(bytes + hello.bytes.len() as u64, Ordering::Relaxed);
}

/// A ClientHello read off a connection: its bytes and server name.
struct Hello {
    bytes: Vec<u8>,
    name: Option<String>,
}

/// Reads until a whole ClientHello is in, appending to what `first` already holds.
async fn read_hello_after(
    client: &mut (impl AsyncRead + Unpin),
    mut bytes: Vec<u8>,
) -> Result<Hello, String> {
    let mut buffer = [0u8; 4096];
    loop {
        match server_name(&bytes) {
            Ok(Some(name)) => return Ok(Hello { bytes, name }),
            Ok(None) => {}
            Err(error) => return Err(error.to_string()),
        }
        match client.read(&mut buffer).await {
            Ok(0) => return Err("closed before its ClientHello ended".to_owned()),
            Ok(n) => bytes.extend_from_slice(&buffer[..n]),
            Err(error) => return Err(error.to_string()),
        }
    }
}

async fn read_hello(client: &mut (impl AsyncRead + Unpin)) -> Result<Hello, String> {
    read_hello_after(client, Vec::with_capacity(2048)).await
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

/// An idle dial-out connection is handed out only while younger than this (the inside
/// replaces it at 240 s).
const INSIDE_MAX_AGE: Duration = Duration::from_secs(225);

type InsideStream = tokio_rustls::server::TlsStream<TcpStream>;

/// Idle connections the inside servers opened to the gateway (dial-out), oldest first.
#[derive(Default)]
pub struct InsidePool {
    idle: std::sync::Mutex<std::collections::VecDeque<(std::time::Instant, InsideStream)>>,
    arrived: tokio::sync::Notify,
}

impl InsidePool {
    fn put(&self, stream: InsideStream) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|(since, _)| since.elapsed() < INSIDE_MAX_AGE);
        idle.push_back((std::time::Instant::now(), stream));
        drop(idle);
        self.arrived.notify_one();
    }

    /// Idle connections now.
    pub fn idle(&self) -> usize {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|(since, _)| since.elapsed() < INSIDE_MAX_AGE);
        idle.len()
    }

    /// The youngest live idle connection, waiting up to `within` for one.
    async fn take(&self, within: Duration) -> Option<InsideStream> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            loop {
                let next = {
                    let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                    idle.pop_back()
                };
                let Some((since, stream)) = next else { break };
                if since.elapsed() < INSIDE_MAX_AGE && alive(&stream) {
                    return Some(stream);
                }
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return None;
            }
        }
    }
}

/// Whether an idle connection is still open: the inside sends nothing on it until it is
/// used, so anything readable (its close, or a TLS alert) means it is gone.
fn alive(stream: &InsideStream) -> bool {
    let mut byte = [0u8; 1];
    match stream.get_ref().0.try_read(&mut byte) {
        Err(error) => error.kind() == std::io::ErrorKind::WouldBlock,
        Ok(_) => false,
    }
}

/// Accepts the inside servers' dial-out connections on `listener`: TLS with their client
/// certificate verified, and a name `config.inside_names` lists; kept idle in `pool`.
pub async fn accept_inside(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    config: watch::Receiver<Arc<Config>>,
    pool: Arc<InsidePool>,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let Some((stream, peer)) = crate::budget::accept(
            &listener,
            "gateway dial-out",
            &counters.connections,
            &shutdown,
        )
        .await
        else {
            return;
        };
        let _ = stream.set_nodelay(true);
        let (acceptor, pool, counters) = (acceptor.clone(), pool.clone(), counters.clone());
        let config = config.borrow().clone();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(
                config.handshake_timeout,
                acceptor.accept(stream),
            )
            .await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    counters.inside_refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, %error, "dial-out connection refused");
                    return;
                }
                Err(_) => {
                    counters.inside_refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, "dial-out connection refused: no TLS handshake in time");
                    return;
                }
            };
            let names: Vec<String> = client_certificate(&stream)
                .and_then(|der| crate::pki::facts::read(der).ok())
                .map(|facts| {
                    facts
                        .names
                        .common_name
                        .into_iter()
                        .chain(facts.names.dns_names)
                        .map(|n| n.to_ascii_lowercase())
                        .collect()
                })
                .unwrap_or_default();
            if !config.inside_names.iter().any(|n| names.contains(n)) {
                counters.inside_refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%peer, ?names, "dial-out connection refused: the certificate names no inside server this gateway knows");
                return;
            }
            counters.inside_accepted.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "dial-out connection ready");
            pool.put(stream);
        });
    }
}

/// Why an edge handshake failed, as a metric label's counter.
fn refusal<'a>(error: &std::io::Error, counters: &'a Counters) -> (&'a AtomicU64, &'static str) {
    use rustls::{CertificateError, Error};
    let tls = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<Error>());
    match tls {
        Some(Error::NoCertificatesPresented) => {
            (&counters.refused_no_certificate, "no client certificate")
        }
        Some(Error::InvalidCertificate(CertificateError::Expired))
        | Some(Error::InvalidCertificate(CertificateError::ExpiredContext { .. }))
        | Some(Error::InvalidCertificate(CertificateError::NotValidYet))
        | Some(Error::InvalidCertificate(CertificateError::NotValidYetContext { .. })) => (
            &counters.refused_expired,
            "client certificate outside its validity",
        ),
        Some(Error::InvalidCertificate(CertificateError::Revoked)) => {
            (&counters.refused_revoked, "client certificate revoked")
        }
        Some(Error::InvalidCertificate(_)) => (
            &counters.refused_untrusted,
            "client certificate not trusted (unknown CA, bad signature or usage)",
        ),
        _ => (&counters.refused_handshake, "TLS handshake failed"),
    }
}

type EdgeStream = tokio_rustls::server::TlsStream<TcpStream>;

/// The edge handshake: the client's certificate is verified during it, so nothing reaches
/// the backend before it is done. `None` (counted by reason and logged) when refused.
async fn edge_handshake(
    client: TcpStream,
    peer: std::net::SocketAddr,
    acceptor: &tokio_rustls::TlsAcceptor,
    config: &Config,
    counters: &Counters,
) -> Option<EdgeStream> {
    match tokio::time::timeout(config.handshake_timeout, acceptor.accept(client)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(error)) => {
            let (counter, reason) = refusal(&error, counters);
            counter.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, %error, "refused at the edge: {reason}");
            None
        }
        Err(_) => {
            counters.refused_handshake.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, "refused at the edge: no TLS handshake within the handshake timeout");
            None
        }
    }
}

/// The verified client certificate of an edge session.
fn client_certificate(stream: &EdgeStream) -> Option<&rustls::pki_types::CertificateDer<'static>> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
}

async fn tunnel(
    client: TcpStream,
    peer: std::net::SocketAddr,
    acceptor: &tokio_rustls::TlsAcceptor,
    config: &Config,
    counters: &Counters,
    inside: Option<&InsidePool>,
) {
    let local = client.local_addr().unwrap_or(peer);
    let Some(mut outer) = edge_handshake(client, peer, acceptor, config, counters).await else {
        return;
    };
    let subject = client_certificate(&outer)
        .and_then(|der| crate::pki::facts::read(der).ok())
        .map(|facts| facts.subject)
        .unwrap_or_default();
    // Either the agent's inner ClientHello, or an HTTP CONNECT naming the backend.
    let opened = tokio::time::timeout(config.handshake_timeout, async {
        let mut first = [0u8; 1];
        if outer.read_exact(&mut first).await.is_err() {
            return Err("closed before sending anything".to_owned());
        }
        if first[0] == b'C' {
            let (authority, rest) = read_connect(&mut outer, first[0]).await?;
            match config.connect_target(&authority) {
                Some(backend) => Ok((backend.to_owned(), authority, rest, true)),
                None => {
                    let _ = outer
                        .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .await;
                    Err(format!("CONNECT {authority}: not a backend of this gateway"))
                }
            }
        } else {
            let hello = read_hello_after(&mut outer, vec![first[0]]).await?;
            let backend = config.backend_for(hello.name.as_deref()).to_owned();
            let name = hello.name.unwrap_or_else(|| "-".into());
            Ok((backend, name, hello.bytes, false))
        }
    })
    .await;
    let (backend, asked, first, connect) = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(reason)) => {
            counters.refused_target.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, %subject, %reason, "tunnel refused");
            return;
        }
        Err(_) => {
            counters.refused_target.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, %subject, "tunnel refused: nothing sent within the handshake timeout");
            return;
        }
    };
    let Some(upstream) =
        open_backend(&backend, peer, local, &first, config, counters, inside).await
    else {
        if connect {
            let _ = outer
                .write_all(
                    b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
        }
        return;
    };
    if connect
        && outer
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await
            .is_err()
    {
        return;
    }
    tracing::debug!(%peer, %subject, %asked, %backend, "tunnelling");
    let bytes = copy_with_idle_timeout(outer, upstream, config.idle_timeout).await;
    counters
        .bytes
        .fetch_add(bytes + first.len() as u64, Ordering::Relaxed);
}

/// The header the verified client certificate goes to the backend in (terminate mode).
pub const FORWARDED_CERTIFICATE: &str = "x-tessera-client-certificate";

/// Headers that belong to one connection, not to the request: never forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

type ProxyBody = http_body_util::combinators::BoxBody<hyper::body::Bytes, hyper::Error>;

/// A response made by the gateway itself.
fn gateway_response(status: hyper::StatusCode, text: String) -> hyper::Response<ProxyBody> {
    use http_body_util::BodyExt;
    let body = http_body_util::Full::new(hyper::body::Bytes::from(text))
        .map_err(|never| match never {})
        .boxed();
    let mut response = hyper::Response::new(body);
    *response.status_mut() = status;
    response
}

async fn terminate(
    client: TcpStream,
    peer: std::net::SocketAddr,
    acceptor: &tokio_rustls::TlsAcceptor,
    config: &Config,
    counters: &Counters,
    budget: &crate::budget::ConnectionBudget,
) {
    use base64::Engine;
    use http_body_util::BodyExt;
    use hyper::header::HeaderValue;
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioExecutor;

    let Some(stream) = edge_handshake(client, peer, acceptor, config, counters).await else {
        return;
    };
    let Some(backend_tls) = config.backend_tls.clone() else {
        tracing::error!(%peer, "terminate mode without the gateway's backend identity: connection closed");
        return;
    };
    let Some(certificate) = client_certificate(&stream).and_then(|der| {
        HeaderValue::from_str(&base64::engine::general_purpose::STANDARD.encode(der.as_ref())).ok()
    }) else {
        return;
    };
    counters.relayed.fetch_add(1, Ordering::Relaxed);
    let client_ip = HeaderValue::from_str(&peer.ip().to_string())
        .unwrap_or(HeaderValue::from_static("unknown"));
    // One backend pool per client connection: what the client keeps alive, the gateway
    // keeps alive to the backend.
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(config.connect_timeout));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*backend_tls).clone())
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    let backend_client: Client<_, hyper::body::Incoming> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(config.idle_timeout)
        .build(connector);
    let backend = config.backend.clone();
    let service =
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            let backend_client = backend_client.clone();
            let backend = backend.clone();
            let (certificate, client_ip) = (certificate.clone(), client_ip.clone());
            async move {
                let path = request
                    .uri()
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_owned();
                let Ok(uri) = format!("https://{backend}{path}").parse::<hyper::Uri>() else {
                    return Ok::<_, std::convert::Infallible>(gateway_response(
                        hyper::StatusCode::BAD_REQUEST,
                        "bad request target\n".into(),
                    ));
                };
                *request.uri_mut() = uri;
                *request.version_mut() = hyper::Version::HTTP_11;
                let headers = request.headers_mut();
                for name in HOP_BY_HOP {
                    headers.remove(name);
                }
                headers.remove(hyper::header::HOST);
                headers.remove("forwarded");
                // Whatever the client sent under these names is replaced, never passed on.
                headers.insert(FORWARDED_CERTIFICATE, certificate);
                headers.insert("x-forwarded-for", client_ip);
                match backend_client.request(request).await {
                    Ok(response) => {
                        let (mut parts, body) = response.into_parts();
                        for name in HOP_BY_HOP {
                            parts.headers.remove(name);
                        }
                        Ok(hyper::Response::from_parts(parts, body.boxed()))
                    }
                    Err(error) => {
                        let reason = crate::error_chain(&error);
                        tracing::warn!(%peer, %backend, %reason, "backend failed");
                        Ok(gateway_response(
                            hyper::StatusCode::BAD_GATEWAY,
                            format!("the gateway could not reach the server: {reason}\n"),
                        ))
                    }
                }
            }
        });
    // After the edge handshake the first request comes at once; between requests the
    // Gateway's idle timeout applies.
    let budget = crate::budget::ConnectionBudget {
        first_request: config.handshake_timeout,
        keep_alive: config.idle_timeout,
        ..budget.clone()
    };
    let never = CancellationToken::new();
    let ended = crate::budget::serve(
        stream,
        service,
        &budget,
        &counters.connections,
        &never,
        Duration::ZERO,
    )
    .await;
    tracing::debug!(%peer, ?ended, "connection ended");
}

/// The largest `CONNECT` request head accepted.
const MAX_CONNECT_HEAD: usize = 8 << 10;

/// Reads an HTTP `CONNECT host:port HTTP/1.x` request head (its first byte already read):
/// the authority, and any bytes sent after the head.
async fn read_connect(
    stream: &mut (impl AsyncRead + Unpin),
    first: u8,
) -> Result<(String, Vec<u8>), String> {
    let mut head = vec![first];
    let mut buffer = [0u8; 1024];
    let end = loop {
        if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if head.len() > MAX_CONNECT_HEAD {
            return Err(format!("request head over {MAX_CONNECT_HEAD} bytes"));
        }
        match stream.read(&mut buffer).await {
            Ok(0) => return Err("closed inside the request head".into()),
            Ok(n) => head.extend_from_slice(&buffer[..n]),
            Err(error) => return Err(error.to_string()),
        }
    };
    let text = std::str::from_utf8(&head[..end]).map_err(|_| "request head is not text")?;
    let mut words = text.lines().next().unwrap_or_default().split(' ');
    match (words.next(), words.next(), words.next()) {
        (Some("CONNECT"), Some(authority), Some(version)) if version.starts_with("HTTP/1.") => {
            Ok((authority.to_owned(), head[end..].to_vec()))
        }
        _ => Err("neither a TLS ClientHello nor an HTTP CONNECT".into()),
    }
}

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

    /// A real ClientHello, as rustls writes it for `name`.
    fn client_hello(name: &str) -> Vec<u8> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let server = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
        let mut connection = rustls::ClientConnection::new(Arc::new(config), server).unwrap();
        let mut out = Vec::new();
        connection.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn the_server_name_is_read_from_a_real_client_hello_in_any_number_of_pieces() {
        let hello = client_hello("Tessera.Example.org");
        assert_eq!(
            server_name(&hello),
            Ok(Some(Some("tessera.example.org".into())))
        );
        for cut in [0, 3, 5, 40, hello.len() - 1] {
            assert_eq!(server_name(&hello[..cut]), Ok(None), "cut at {cut}");
        }
        // An IP address is sent without a server name.
        assert_eq!(server_name(&client_hello("127.0.0.1")), Ok(Some(None)));
    }

    #[test]
    fn what_is_not_a_client_hello_is_refused() {
        assert_eq!(
            server_name(b"GET / HTTP/1.1\r\n\r\n"),
            Err(HelloError::NotTls)
        );
        let mut broken = client_hello("a.example");
        broken[5] = 0x02; // a ServerHello
        assert_eq!(server_name(&broken), Err(HelloError::Malformed));
        let huge = [0x16, 0x03, 0x01, 0xff, 0xff];
        let mut bytes = huge.to_vec();
        bytes.extend(std::iter::repeat_n(0u8, 70_000));
        assert_eq!(server_name(&bytes), Err(HelloError::TooLarge));
    }

    #[test]
    fn counters_render_per_listener_and_outcome() {
        let counters = Counters::default();
        counters.accepted.fetch_add(3, Ordering::Relaxed);
        counters.refused_busy.fetch_add(1, Ordering::Relaxed);
        let text = counters.render("0.0.0.0:443");
        assert!(text.contains(
            "tessera_gateway_connections_total{listener=\"0.0.0.0:443\",outcome=\"accepted\"} 3\n"
        ));
        assert!(text.contains("outcome=\"refused_limit\"} 1\n"));
        assert!(text.contains("# TYPE tessera_gateway_active_connections gauge\n"));
    }

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

    #[tokio::test]
    async fn a_connect_head_is_read_whole_and_anything_else_refused() {
        let mut input: &[u8] =
            b"ONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n\x16\x03";
        let (authority, rest) = read_connect(&mut input, b'C').await.unwrap();
        assert_eq!(authority, "a.example:443");
        assert_eq!(
            rest, b"\x16\x03",
            "bytes after the head are kept for the backend"
        );

        let mut get: &[u8] = b"ET / HTTP/1.1\r\n\r\n";
        assert!(read_connect(&mut get, b'G').await.is_err());
        let mut cut: &[u8] = b"ONNECT a.example:443 HTTP/1.1\r\n";
        assert!(read_connect(&mut cut, b'C').await.is_err());
        let endless = [b'x'; MAX_CONNECT_HEAD + 10];
        assert!(read_connect(&mut &endless[..], b'C').await.is_err());
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
