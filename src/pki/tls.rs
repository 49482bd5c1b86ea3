//! rustls configuration that follows renewals: the server certificate and the verifier of
//! client certificates are read from `watch` channels at each handshake, so a renewed
//! certificate or a new set of trusted CAs takes effect on the next connection without
//! restarting a listener, while connections already open keep going.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, NoClientAuth, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use tokio::sync::watch;

use super::PkiError;
use super::facts;

/// The process's one crypto provider (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and its key, ready for rustls.
pub fn certified_key(chain_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, PkiError> {
    let chain = facts::pem_certificates(chain_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| PkiError::Key(e.to_string()))?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| PkiError::Key(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|_| PkiError::KeyMismatch)?;
    Ok(Arc::new(certified))
}

/// A client configuration trusting the CA certificates in `trusted_pem`, presenting
/// `identity` (certificate chain and key, PEM) when given: what Tessera's agent uses.
pub fn client_config(
    trusted_pem: &str,
    identity: Option<(&str, &str)>,
) -> Result<Arc<rustls::ClientConfig>, PkiError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Certificate(e.to_string()))?
        .with_root_certificates(roots_of(trusted_pem)?);
    // No ALPN here: the HTTP client sets the protocols it speaks.
    let config = match identity {
        Some((chain_pem, key_pem)) => {
            let chain = facts::pem_certificates(chain_pem)?;
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
                .map_err(|e| PkiError::Key(e.to_string()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| PkiError::Key(e.to_string()))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Serves whatever certificate is current on the channel. With none (`None`), handshakes
/// fail: a listener fails closed until its certificate exists.
#[derive(Debug)]
pub struct ReloadingResolver(watch::Receiver<Option<Arc<CertifiedKey>>>);

impl ReloadingResolver {
    /// A resolver reading `current`.
    pub fn new(current: watch::Receiver<Option<Arc<CertifiedKey>>>) -> Arc<Self> {
        Arc::new(Self(current))
    }
}

impl ResolvesServerCert for ReloadingResolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.borrow().clone()
    }
}

/// Whether clients present certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// Not asked for.
    None,
    /// Asked for and verified when presented.
    Optional,
    /// Every client must present a valid one.
    Required,
}

/// A verifier of client certificates against `trusted` CA certificates (PEM), refusing those
/// listed in `crls`.
pub fn client_verifier(
    mode: ClientAuth,
    trusted: &[String],
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> Result<Arc<dyn ClientCertVerifier>, PkiError> {
    build_client_verifier(mode, trusted, crls, false)
}

/// Like [`client_verifier`], where some trusted CAs publish no CRL: certificates of those are
/// accepted without a revocation check (otherwise their status is unknown, and refused), while
/// certificates listed in a CRL that is there are still refused.
pub fn client_verifier_partial_crls(
    mode: ClientAuth,
    trusted: &[String],
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> Result<Arc<dyn ClientCertVerifier>, PkiError> {
    build_client_verifier(mode, trusted, crls, true)
}

fn build_client_verifier(
    mode: ClientAuth,
    trusted: &[String],
    crls: Vec<CertificateRevocationListDer<'static>>,
    allow_unknown_status: bool,
) -> Result<Arc<dyn ClientCertVerifier>, PkiError> {
    if mode == ClientAuth::None {
        return Ok(Arc::new(NoClientAuth));
    }
    let roots = roots_of(&trusted.join("\n"))?;
    if roots.is_empty() {
        return Err(PkiError::Certificate(
            "no trusted CA to verify client certificates".into(),
        ));
    }
    let builder = WebPkiClientVerifier::builder_with_provider(roots, provider()).with_crls(crls);
    let builder = if allow_unknown_status {
        builder.allow_unknown_revocation_status()
    } else {
        builder
    };
    let builder = if mode == ClientAuth::Optional {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    builder
        .build()
        .map_err(|e| PkiError::Certificate(format!("failed to build the client verifier: {e}")))
}

/// Delegates every decision to the verifier current on the channel.
///
/// It sends no list of acceptable CAs in the certificate request (the list would have to be
/// borrowed from a value that may change); TLS allows that, and clients holding one
/// certificate send it anyway.
#[derive(Debug)]
pub struct ReloadingClientVerifier(watch::Receiver<Arc<dyn ClientCertVerifier>>);

impl ReloadingClientVerifier {
    /// A verifier reading `current`.
    pub fn new(current: watch::Receiver<Arc<dyn ClientCertVerifier>>) -> Arc<Self> {
        Arc::new(Self(current))
    }

    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        self.0.borrow().clone()
    }
}

impl ClientCertVerifier for ReloadingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.current().offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.current().client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

/// A server configuration whose certificate and client verification follow the channels.
pub fn server_config(
    certificate: watch::Receiver<Option<Arc<CertifiedKey>>>,
    client_verifier: watch::Receiver<Arc<dyn ClientCertVerifier>>,
) -> Result<Arc<ServerConfig>, PkiError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Certificate(e.to_string()))?
        .with_client_cert_verifier(ReloadingClientVerifier::new(client_verifier))
        .with_cert_resolver(ReloadingResolver::new(certificate));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Roots made of the CA certificates in `pem`.
fn roots_of(pem: &str) -> Result<Arc<RootCertStore>, PkiError> {
    let mut roots = RootCertStore::empty();
    for certificate in facts::pem_certificates(pem)? {
        roots
            .add(certificate)
            .map_err(|e| PkiError::Certificate(format!("not usable as a trusted CA: {e}")))?;
    }
    Ok(Arc::new(roots))
}

/// A client configuration for calling an agent that listens for "check in now": trusts
/// `issuer_pem`, presents `identity` (chain, key), and accepts only a certificate naming
/// `expected_uri` (agents have no DNS name; they are named by their URI).
pub fn agent_call_config(
    issuer_pem: &str,
    identity: (&str, &str),
    expected_uri: String,
) -> Result<Arc<rustls::ClientConfig>, PkiError> {
    let roots = roots_of(issuer_pem)?;
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| PkiError::Certificate(e.to_string()))?;
    let chain = facts::pem_certificates(identity.0)?;
    let key = PrivateKeyDer::from_pem_slice(identity.1.as_bytes())
        .map_err(|e| PkiError::Key(e.to_string()))?;
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Certificate(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NamedByUri {
            inner,
            uri: expected_uri,
        }))
        .with_client_auth_cert(chain, key)
        .map_err(|e| PkiError::Key(e.to_string()))?;
    Ok(Arc::new(config))
}

/// A server configuration for an agent's "check in now" listener: presents the agent's
/// certificate, and requires a client certificate from `issuer_pem` (whose URI the caller
/// checks after the handshake).
pub fn agent_listener_config(
    issuer_pem: &str,
    chain_pem: &str,
    key_pem: &str,
) -> Result<Arc<ServerConfig>, PkiError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots_of(issuer_pem)?, provider())
        .build()
        .map_err(|e| PkiError::Certificate(e.to_string()))?;
    let certified = certified_key(chain_pem, key_pem)?;
    let (_, current) = watch::channel(Some(certified));
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Certificate(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(ReloadingResolver::new(current));
    Ok(Arc::new(config))
}

/// Verifies a chain as WebPKI does, but names the peer by a URI SAN instead of a DNS name.
#[derive(Debug)]
struct NamedByUri {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    uri: String,
}

impl rustls::client::danger::ServerCertVerifier for NamedByUri {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        // The chain (issuer, validity, usage) is checked first; only the DNS name may fail.
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(_)
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => {}
            Err(error) => return Err(error),
        }
        let named = facts::read(end_entity)
            .map(|f| f.names.uris.contains(&self.uri))
            .unwrap_or(false);
        if named {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
