//! Who a request comes from: the agent its verified client certificate names, the client
//! address, and what a trusted gateway in terminate mode says about both (the agent's
//! certificate in [`FORWARDED_CERTIFICATE`], checked again here, and `X-Forwarded-For`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::pki::AgentId;
pub use crate::protocol::v1::FORWARDED_CERTIFICATE;
use crate::server::agent::Shared;

/// The agent a connection's client certificate names (`urn:tessera:agent:<id>`), checked at
/// the handshake, or the one a trusted gateway forwarded. Absent from a request without one,
/// so handlers take `Option<Extension<PeerAgent>>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAgent(pub AgentId);

/// The client certificate a connection presented (verified at the handshake).
#[derive(Clone, Debug)]
pub struct PeerCertificate(pub Option<Arc<Vec<u8>>>);

/// The client a request came from: the TCP peer, or the one a trusted relay named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddress(pub SocketAddr);

/// Why a certificate a gateway forwarded is not believed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardedError {
    #[error("{FORWARDED_CERTIFICATE}: not base64")]
    NotBase64(#[source] base64::DecodeError),
    #[error("{FORWARDED_CERTIFICATE}: the certificate does not verify")]
    Refused(#[source] rustls::Error),
}

/// Per gateway: the subjects (DER) of the CA that signs its certificate (two during a CA
/// rollover), and the names its certificate carries (lowercase).
pub type GatewayIdentities = Vec<(Vec<Vec<u8>>, Vec<String>)>;

/// Gateways allowed to name the client they relay, and how their word is checked.
pub struct Forwarded {
    pub gateways: GatewayIdentities,
    /// Verifies the agent certificate a gateway forwards, against the agents' issuers.
    pub verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
}

impl std::fmt::Debug for Forwarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarded")
            .field("gateways", &self.gateways.len())
            .finish_non_exhaustive()
    }
}

impl Forwarded {
    /// Whether `certificate` (a connection's verified client certificate) is one of the
    /// gateways'.
    pub fn is_gateway(&self, certificate: &[u8]) -> bool {
        let Ok(facts) = crate::pki::facts::read(certificate) else {
            return false;
        };
        let names: Vec<String> = facts
            .names
            .common_name
            .iter()
            .chain(&facts.names.dns_names)
            .map(|n| n.to_ascii_lowercase())
            .collect();
        self.gateways.iter().any(|(subjects, wanted)| {
            subjects.contains(&facts.issuer_der) && wanted.iter().any(|w| names.contains(w))
        })
    }

    /// The agent a gateway's header names, once its certificate verifies here too; `None`
    /// when the certificate verifies but names no agent.
    pub fn agent(&self, header: &str) -> Result<Option<AgentId>, ForwardedError> {
        use base64::Engine;
        let der = base64::engine::general_purpose::STANDARD
            .decode(header.trim())
            .map_err(ForwardedError::NotBase64)?;
        let certificate = rustls::pki_types::CertificateDer::from(der);
        self.verifier
            .verify_client_cert(&certificate, &[], rustls::pki_types::UnixTime::now())
            .map_err(ForwardedError::Refused)?;
        Ok(AgentId::from_certificate(&certificate))
    }
}

/// For a connection from a trusted gateway: takes the agent and client address it names
/// from the headers (the gateway's own certificate is never an agent's). From anyone
/// else the headers are removed unread.
pub(crate) async fn forwarded_identity(
    State(shared): State<Shared>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let header = request.headers_mut().remove(FORWARDED_CERTIFICATE);
    let forwarded = shared.routes.borrow().forwarded.clone();
    let from_gateway = match (&forwarded, request.extensions().get::<PeerCertificate>()) {
        (Some(forwarded), Some(PeerCertificate(Some(der)))) => forwarded.is_gateway(der),
        _ => false,
    };
    if let (true, Some(forwarded)) = (from_gateway, forwarded) {
        let agent = match header.as_ref().map(|h| h.to_str().unwrap_or_default()) {
            None => None,
            Some(value) => match forwarded.agent(value) {
                Ok(agent) => agent,
                Err(error) => {
                    let error = crate::error_chain(&error);
                    tracing::warn!(%error, "a gateway forwarded a certificate that does not verify here");
                    return (
                        StatusCode::FORBIDDEN,
                        "forwarded client certificate refused\n",
                    )
                        .into_response();
                }
            },
        };
        // The gateway's own certificate is never an agent's: only the forwarded one counts.
        match agent {
            Some(agent) => request.extensions_mut().insert(PeerAgent(agent)),
            None => request.extensions_mut().remove::<PeerAgent>(),
        };
        let client = request
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next_back())
            .and_then(|v| v.trim().parse::<std::net::IpAddr>().ok());
        if let Some(ip) = client {
            request
                .extensions_mut()
                .insert(ClientAddress(SocketAddr::new(ip, 0)));
        }
    }
    next.run(request).await
}
