//! Tunnel mode: the client's certificate is verified at the edge; inside that TLS session
//! the agent runs its own with the server (routed by its server name, or after an HTTP
//! `CONNECT` to one of the gateway's backends), so the gateway never sees the traffic.

use std::sync::atomic::Ordering;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::dial_out::InsidePool;
use super::metrics::Counters;
use super::{Config, RelayError, client_hello, copy_with_idle_timeout, edge, open_backend};

/// Relays one tunnel connection: the edge handshake, then the agent's inner ClientHello or
/// a `CONNECT`, then bytes both ways.
pub(super) async fn tunnel(
    client: TcpStream,
    peer: std::net::SocketAddr,
    acceptor: &tokio_rustls::TlsAcceptor,
    config: &Config,
    counters: &Counters,
    inside: Option<&InsidePool>,
    permit: &mut crate::budget::Permit,
) {
    let local = client.local_addr().unwrap_or(peer);
    let Some(mut outer) = edge::handshake(client, peer, acceptor, config, counters, permit).await
    else {
        return;
    };
    let subject = edge::client_certificate(&outer)
        .and_then(|der| crate::pki::facts::read(der).ok())
        .map(|facts| facts.subject)
        .unwrap_or_default();
    // Either the agent's inner ClientHello, or an HTTP CONNECT naming the backend.
    let opened = tokio::time::timeout(config.handshake_timeout, async {
        let mut first = [0u8; 1];
        if outer.read_exact(&mut first).await.is_err() {
            return Err(RelayError::ClosedAtStart);
        }
        if first[0] == b'C' {
            let (authority, rest) = read_connect(&mut outer, first[0]).await?;
            match config.connect_target(&authority) {
                Some(backend) => Ok((backend.to_owned(), authority, rest, true)),
                None => {
                    let _ = outer
                        .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .await;
                    Err(RelayError::NotABackend(authority))
                }
            }
        } else {
            let hello = client_hello::read(&mut outer, vec![first[0]]).await?;
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
            let reason = crate::error_chain(&reason);
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

/// The largest `CONNECT` request head accepted.
pub(super) const MAX_CONNECT_HEAD: usize = 8 << 10;

/// Reads an HTTP `CONNECT host:port HTTP/1.x` request head (its first byte already read):
/// the authority, and any bytes sent after the head.
async fn read_connect(
    stream: &mut (impl AsyncRead + Unpin),
    first: u8,
) -> Result<(String, Vec<u8>), RelayError> {
    let mut head = vec![first];
    let mut buffer = [0u8; 1024];
    let end = loop {
        if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if head.len() > MAX_CONNECT_HEAD {
            return Err(RelayError::ConnectTooLarge);
        }
        match stream.read(&mut buffer).await {
            Ok(0) => return Err(RelayError::ClosedInConnect),
            Ok(n) => head.extend_from_slice(&buffer[..n]),
            Err(error) => return Err(RelayError::Read(error)),
        }
    };
    let text = std::str::from_utf8(&head[..end]).map_err(|_| RelayError::ConnectNotText)?;
    let mut words = text.lines().next().unwrap_or_default().split(' ');
    match (words.next(), words.next(), words.next()) {
        (Some("CONNECT"), Some(authority), Some(version)) if version.starts_with("HTTP/1.") => {
            Ok((authority.to_owned(), head[end..].to_vec()))
        }
        _ => Err(RelayError::NotConnect),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
