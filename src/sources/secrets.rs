//! Where certificate material goes besides the state directory: Kubernetes Secrets, in
//! `serve --kube`. Reconcile only sees this trait (re-exported as `reconcile::secrets`);
//! `sources::kube::secrets` implements it against the API server (writing only while this
//! replica leads), tests their own. It lives with the sources, which may import only
//! `resources`, so that the Kubernetes implementation can sit beside the rest of the
//! Kubernetes code rather than in `cli`.
//!
//! The calls are synchronous because a reconcile pass runs on a blocking thread.

use std::collections::BTreeMap;
use std::fmt;

/// Reads CA key pairs from Secrets and writes Certificates into them.
pub trait Secrets: Send + Sync + fmt::Debug {
    /// The (`tls.crt`, `tls.key`) PEM of a `kubernetes.io/tls` Secret, or why not.
    fn read_key_pair(&self, namespace: &str, name: &str) -> Result<(String, String), SecretsError>;

    /// Writes `secret`; a no-op when the same content was already written.
    fn write(&self, secret: &TlsSecret) -> Result<(), SecretsError>;
}

/// What an implementation of [`Secrets`] reports. The cause (a Kubernetes API error, an
/// I/O error) is chained as the source, so it is printed once, after the Secret's name.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("failed to read Secret {namespace}/{name}")]
    Read {
        namespace: String,
        name: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("Secret {namespace}/{name} does not exist")]
    NotFound { namespace: String, name: String },
    #[error(
        "Secret {namespace}/{name} has no {key} (a kubernetes.io/tls Secret has tls.crt and tls.key)"
    )]
    KeyMissing {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("failed to write Secret {namespace}/{name}")]
    Write {
        namespace: String,
        name: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A `kubernetes.io/tls` Secret holding a Certificate's material.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSecret {
    pub namespace: String,
    pub name: String,
    /// The Certificate it belongs to.
    pub owner: String,
    /// The Certificate's uid, for the ownerReference (none in directory mode).
    pub owner_uid: Option<String>,
    /// `tls.crt`, `tls.key`, `ca.crt`, and the keystores written (`keystore.p12`,
    /// `keystore.jks`, `truststore.jks`).
    pub data: BTreeMap<String, Vec<u8>>,
}

/// The files of a certificate's output directory that go into its Secret.
pub const SECRET_FILES: [&str; 6] = [
    "tls.crt",
    "tls.key",
    "ca.crt",
    "keystore.p12",
    "keystore.jks",
    "truststore.jks",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_read_names_the_secret_then_gives_the_cause_once() {
        let error = SecretsError::Read {
            namespace: "fleet".into(),
            name: "root".into(),
            source: Box::new(std::io::Error::other("connection refused")),
        };
        assert_eq!(
            crate::error_chain(&error),
            "failed to read Secret fleet/root: connection refused"
        );
    }
}
