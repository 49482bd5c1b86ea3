//! Dial-out: inside servers open TLS connections to the gateway ahead of need (so the
//! inside firewall needs no inbound rule); the gateway keeps them idle in a pool and hands
//! one to each relayed client.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Config;
use super::edge::client_certificate;
use super::metrics::Counters;

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
    pub(super) async fn take(&self, within: Duration) -> Option<InsideStream> {
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
