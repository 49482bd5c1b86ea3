//! Passthrough mode: pick the backend by the ClientHello's server name and forward the
//! bytes untouched, so TLS stays end to end between agent and server.

use std::sync::atomic::Ordering;

use tokio::net::TcpStream;

use super::dial_out::InsidePool;
use super::metrics::Counters;
use super::{Config, client_hello, copy_with_idle_timeout, open_backend};

/// Room for a typical ClientHello (well under 2 KiB), so reading one rarely reallocates.
const HELLO_CAPACITY: usize = 2048;

/// Relays one passthrough connection: routed by the server name of its ClientHello, the
/// bytes forwarded untouched.
pub(super) async fn passthrough(
    mut client: TcpStream,
    peer: std::net::SocketAddr,
    config: &Config,
    counters: &Counters,
    inside: Option<&InsidePool>,
) {
    let hello = match tokio::time::timeout(
        config.handshake_timeout,
        client_hello::read(&mut client, Vec::with_capacity(HELLO_CAPACITY)),
    )
    .await
    {
        Ok(Ok(hello)) => hello,
        Ok(Err(reason)) => {
            counters.refused_hello.fetch_add(1, Ordering::Relaxed);
            let reason = crate::error_chain(&reason);
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
