//! The admin listener over TLS, and mutual TLS as a way to authenticate (`--admin-auth
//! mtls`): a client certificate from a trusted CA names the caller (its subject's common
//! name) and its role (a URI SAN `tessera:role:operator` or `tessera:role:viewer`; none:
//! viewer, the least that can be granted).

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;

use super::auth::{Caller, Role};
use crate::pki::tls::{ClientAuth, client_verifier, provider};

/// The URI SAN prefix that gives a client certificate its role.
pub const ROLE_URI: &str = "tessera:role:";

/// Errors of the admin listener's TLS set-up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("failed to read the admin API's certificate chain")]
    Certificate(#[source] crate::pki::PkiError),
    #[error("failed to read the admin API's private key")]
    Key(#[source] rustls::pki_types::pem::Error),
    #[error("failed to read the CA certificates that admin clients' certificates must chain to")]
    ClientCa(#[source] crate::pki::PkiError),
    #[error("the admin API's certificate and key do not make a TLS configuration")]
    Config(#[source] rustls::Error),
}

/// The caller a verified client certificate names (a request extension the listener adds).
#[derive(Clone, Debug)]
pub struct PeerCaller(pub Caller);

/// The TLS configuration of the admin listener: `chain_pem` and `key_pem` as its
/// certificate; with `client_ca_pem`, a client certificate is asked for and, when presented,
/// must be issued by one of those CAs. It is not required at the handshake: the probes
/// (kubelet, load balancers) present none, and the middleware answers 401 elsewhere.
pub fn server_config(
    chain_pem: &str,
    key_pem: &str,
    client_ca_pem: Option<&str>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = crate::pki::facts::pem_certificates(chain_pem).map_err(TlsError::Certificate)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(TlsError::Key)?;
    let verifier = match client_ca_pem {
        Some(pem) => client_verifier(ClientAuth::Optional, &[pem.to_owned()], Vec::new()),
        None => client_verifier(ClientAuth::None, &[], Vec::new()),
    }
    .map_err(TlsError::ClientCa)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(TlsError::Config)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The caller a verified client certificate (DER) names: its common name, with the role of
/// its `tessera:role:` URI SAN (viewer when it has none); `None` without a common name.
pub fn caller_of(der: &[u8]) -> Option<Caller> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    let name = certificate
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    let facts = crate::pki::facts::read(der).ok()?;
    let role = facts
        .names
        .uris
        .iter()
        .find_map(|uri| uri.strip_prefix(ROLE_URI)?.parse::<Role>().ok())
        .unwrap_or(Role::Viewer);
    Some(Caller { name, role })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(name: &str, uri: Option<&str>) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        if let Some(uri) = uri {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI(uri.try_into().unwrap()));
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn a_client_certificate_names_the_caller_and_its_role_uri_the_role() {
        let operator = caller_of(&certificate("alice", Some("tessera:role:operator"))).unwrap();
        assert_eq!(
            (operator.name.as_str(), operator.role),
            ("alice", Role::Operator)
        );
        let plain = caller_of(&certificate("bob", None)).unwrap();
        assert_eq!(plain.role, Role::Viewer, "no role URI: the least role");
        let odd = caller_of(&certificate("carol", Some("tessera:role:admin"))).unwrap();
        assert_eq!(odd.role, Role::Viewer);
    }
}
