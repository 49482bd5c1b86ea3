//! The edge of tunnel and terminate mode: the TLS handshake in which the client's
//! certificate is verified, before anything reaches the backend.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::TcpStream;

use super::Config;
use super::metrics::Counters;

pub(super) type EdgeStream = tokio_rustls::server::TlsStream<TcpStream>;

/// The edge handshake: the client's certificate is verified during it, so nothing reaches
/// the backend before it is done. `None` (counted by reason and logged) when refused. A
/// client that proved itself leaves its address's share of connections (`permit`): a site
/// behind one NAT address keeps all its agents' push channels open.
pub(super) async fn handshake(
    client: TcpStream,
    peer: std::net::SocketAddr,
    acceptor: &tokio_rustls::TlsAcceptor,
    config: &Config,
    counters: &Counters,
    permit: &mut crate::budget::Permit,
) -> Option<EdgeStream> {
    match tokio::time::timeout(config.handshake_timeout, acceptor.accept(client)).await {
        Ok(Ok(stream)) => {
            permit.vouched();
            Some(stream)
        }
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
pub(super) fn client_certificate(
    stream: &EdgeStream,
) -> Option<&rustls::pki_types::CertificateDer<'static>> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
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
