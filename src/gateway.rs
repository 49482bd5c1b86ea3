//! The DMZ relay. This version has the `passthrough` mode: read the TLS ClientHello (with
//! a timeout and a size limit), pick the backend by its server name (SNI), and forward the
//! bytes untouched, so TLS stays end to end between agent and server.
//!
//! Imports nothing of the crate: `cli` turns a `Gateway` resource into a [`Config`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A ClientHello larger than this is refused (real ones are well under 2 KiB; post-quantum
/// key shares bring them near 1.5 KiB more).
pub const MAX_CLIENT_HELLO: usize = 16 << 10;

/// How the relay runs.
#[derive(Clone, Debug)]
pub struct Config {
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
}

/// What happened to connections, for logs and metrics.
#[derive(Debug, Default)]
pub struct Counters {
    pub accepted: AtomicU64,
    pub relayed: AtomicU64,
    pub refused_busy: AtomicU64,
    pub refused_hello: AtomicU64,
    pub backend_failed: AtomicU64,
    pub bytes: AtomicU64,
    /// Connections open now.
    pub active: AtomicU64,
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
                (",outcome=\"refused_hello\"", load(&self.refused_hello)),
                (",outcome=\"backend_failed\"", load(&self.backend_failed)),
            ],
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

/// Relays connections accepted on `listener` until `shutdown`.
pub async fn run(
    listener: TcpListener,
    config: Arc<Config>,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(config.max_connections));
    loop {
        let (client, peer) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        counters.accepted.fetch_add(1, Ordering::Relaxed);
        // Beyond the limit, a connection is closed at once: a clear, fast refusal.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            counters.refused_busy.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, limit = config.max_connections, "connection refused: at the connection limit");
            continue;
        };
        let (config, counters, shutdown) = (config.clone(), counters.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _slot = slot;
            counters.active.fetch_add(1, Ordering::Relaxed);
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = relay(client, peer, &config, &counters) => {}
            }
            counters.active.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn relay(
    mut client: TcpStream,
    peer: std::net::SocketAddr,
    config: &Config,
    counters: &Counters,
) {
    let _ = client.set_nodelay(true);
    let mut hello = Vec::with_capacity(2048);
    let read_hello = async {
        let mut buffer = [0u8; 4096];
        loop {
            match server_name(&hello) {
                Ok(Some(name)) => return Ok(name),
                Ok(None) => {}
                Err(error) => return Err(error.to_string()),
            }
            match client.read(&mut buffer).await {
                Ok(0) => return Err("closed before its ClientHello ended".to_owned()),
                Ok(n) => hello.extend_from_slice(&buffer[..n]),
                Err(error) => return Err(error.to_string()),
            }
        }
    };
    let name = match tokio::time::timeout(config.handshake_timeout, read_hello).await {
        Ok(Ok(name)) => name,
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
    let backend = config.backend_for(name.as_deref());
    let mut upstream = match tokio::time::timeout(
        config.connect_timeout,
        TcpStream::connect(backend),
    )
    .await
    {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            counters.backend_failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, %backend, %error, "backend unreachable");
            return;
        }
        Err(_) => {
            counters.backend_failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, %backend, "backend did not accept within the connect timeout");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let mut first = Vec::with_capacity(hello.len() + 52);
    if config.proxy_protocol {
        let destination = client.local_addr().unwrap_or(peer);
        first.extend_from_slice(&crate::protocol::proxy::encode(peer, destination));
    }
    first.extend_from_slice(&hello);
    if upstream.write_all(&first).await.is_err() {
        return;
    }
    counters.relayed.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%peer, server_name = name.as_deref().unwrap_or("-"), %backend, "relaying");
    let bytes = copy_with_idle_timeout(client, upstream, config.idle_timeout).await;
    counters
        .bytes
        .fetch_add(bytes + hello.len() as u64, Ordering::Relaxed);
}

/// Copies both ways until either side closes or nothing moves for `idle`; bytes copied.
async fn copy_with_idle_timeout(client: TcpStream, upstream: TcpStream, idle: Duration) -> u64 {
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    let total = Arc::new(AtomicU64::new(0));
    let pipe = |mut from: tokio::net::tcp::OwnedReadHalf,
                mut to: tokio::net::tcp::OwnedWriteHalf,
                total: Arc<AtomicU64>| async move {
        let mut buffer = vec![0u8; 64 << 10];
        loop {
            match tokio::time::timeout(idle, from.read(&mut buffer)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(n)) => {
                    if to.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                    total.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        }
        let _ = to.shutdown().await;
    };
    let up = pipe(client_read, upstream_write, total.clone());
    let down = pipe(upstream_read, client_write, total.clone());
    tokio::join!(up, down);
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

    #[test]
    fn routes_pick_the_backend_by_name_and_fall_back_to_the_default() {
        let config = Config {
            backend: "inside:8443".into(),
            routes: vec![("tessera.example.org".into(), "other:8443".into())],
            handshake_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            max_connections: 1,
            proxy_protocol: false,
        };
        assert_eq!(
            config.backend_for(Some("TESSERA.example.org")),
            "other:8443"
        );
        assert_eq!(config.backend_for(Some("unknown")), "inside:8443");
        assert_eq!(config.backend_for(None), "inside:8443");
    }
}
