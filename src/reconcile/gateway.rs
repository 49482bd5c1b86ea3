//! Gateway: turns the desired Gateway, with its certificate and trusted issuers, into the
//! relay's settings and publishes them through `watch` (the relay's [`Config`], the edge
//! certificate and the client verifier), so a renewal or a new CRL applies from the next
//! connection.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

use crate::desired::DesiredState;
use crate::gateway::{Config, Mode};
use crate::pki::PkiError;
use crate::pki::tls::{self, ClientAuth};
use crate::reconcile::certificates::{Certificates, Trust};
use crate::reconcile::health::{Backend, backend_state, gateway_outcome};
use crate::reconcile::outcome::{self, Outcome, Reason};
use crate::resources::gateway::{GatewayMode, GatewaySpec};
use crate::resources::{GatewayStatus, Kind, ObjectKey, Resource};

/// Why a Gateway's TLS settings cannot be built from its certificates and issuers. The PKI
/// error is the source; the status message is the whole chain ([`crate::error_chain`]).
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// `certificate` names where the key pair came from: a Certificate or a Secret.
    #[error("failed to load {certificate} as the edge certificate")]
    Certificate {
        certificate: String,
        #[source]
        source: PkiError,
    },
    #[error("failed to set up TLS to the backend with {certificate} and {issuer}")]
    BackendTls {
        certificate: ObjectKey,
        issuer: ObjectKey,
        #[source]
        source: PkiError,
    },
    #[error("{field}: failed to build a certificate verifier from the issuers")]
    Verifier {
        field: &'static str,
        #[source]
        source: PkiError,
    },
}

/// A Gateway not ready because of `error`, its message the whole chain of causes.
fn unusable(reason: Reason, error: &GatewayError) -> Outcome {
    Outcome::not_ready(reason, crate::error_chain(error))
}

/// The channels reconcile publishes on and `tessera gateway` reads.
pub struct GatewayRuntime {
    /// The Gateway this process runs.
    pub key: ObjectKey,
    /// The address the listener is bound to (a changed `spec.listen` needs a restart).
    pub listen: String,
    pub config: watch::Sender<Arc<Config>>,
    pub certificate: watch::Sender<Option<Arc<CertifiedKey>>>,
    pub verifier: watch::Sender<Arc<dyn ClientCertVerifier>>,
    /// Dial-out: verifies the inside servers' certificates.
    pub inside_verifier: watch::Sender<Arc<dyn ClientCertVerifier>>,
    /// Dial-out: the idle connections from the inside, for the status.
    pub inside: Option<Arc<crate::gateway::InsidePool>>,
    /// The relay's counters, for the status.
    pub counters: Arc<crate::gateway::Counters>,
}

impl std::fmt::Debug for GatewayRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GatewayRuntime({})", self.key)
    }
}

/// The gateway's certificate chain and key towards the backend, and the backend's CAs.
type BackendInput = (String, String, Vec<String>);

/// What a pass last published, to publish only changes.
#[derive(Default)]
pub struct GatewayPublisher {
    /// The relay's (relayed, backend failed) counters at the last pass.
    relay_counts: Option<(u64, u64)>,
    /// What the connections since then said of the backends.
    reachable: Backend,
    certificate_pem: Option<(String, String)>,
    trust: Option<Trust>,
    inside_trust: Option<Trust>,
    /// Terminate mode: the client config, and what it was made of.
    backend: Option<(BackendInput, Arc<rustls::ClientConfig>)>,
}

/// The relay's settings from the resource.
pub fn relay_config(spec: &GatewaySpec) -> Config {
    let seconds = |d: crate::resources::quantity::Duration| d.as_std();
    Config {
        mode: match spec.mode {
            GatewayMode::Passthrough => Mode::Passthrough,
            GatewayMode::Tunnel => Mode::Tunnel,
            GatewayMode::Terminate => Mode::Terminate,
        },
        backend: spec.backend.clone(),
        routes: spec
            .routes
            .iter()
            .map(|r| (r.server_name.to_ascii_lowercase(), r.backend.clone()))
            .collect(),
        handshake_timeout: seconds(spec.limits.handshake_timeout),
        idle_timeout: seconds(spec.limits.idle_timeout),
        connect_timeout: seconds(spec.limits.connect_timeout),
        max_connections: usize::try_from(spec.limits.max_connections.max(1)).unwrap_or(1),
        proxy_protocol: spec.proxy_protocol,
        backend_tls: None,
        inside_names: spec
            .dial_out
            .iter()
            .flat_map(|d| &d.names)
            .map(|n| n.trim().to_ascii_lowercase())
            .filter(|n| !n.is_empty())
            .collect(),
    }
}

impl GatewayPublisher {
    /// Terminate mode: the gateway's own certificate towards the backend, and the CA it
    /// checks the backend's certificate with.
    fn backend_tls(
        &mut self,
        desired: &DesiredState,
        key: &ObjectKey,
        spec: &GatewaySpec,
        certificates: &Certificates,
    ) -> Result<Arc<rustls::ClientConfig>, Box<Outcome>> {
        let (Some(certificate), Some(issuer)) =
            (&spec.backend_certificate_ref, &spec.backend_issuer_ref)
        else {
            return Err(Box::new(Outcome::not_ready(
                Reason::InvalidSpec,
                "terminate mode needs spec.backendCertificateRef and spec.backendIssuerRef".into(),
            )));
        };
        let certificate = ObjectKey::referenced(Kind::Certificate, &key.namespace, certificate);
        let Some((chain, private)) = certificates.issued(&certificate, desired) else {
            return Err(Box::new(Outcome::not_ready(
                Reason::Pending,
                format!("waiting for {certificate} to be issued"),
            )));
        };
        let issuer = ObjectKey::referenced(Kind::Issuer, &key.namespace, issuer);
        let cas = certificates.trust(std::slice::from_ref(&issuer)).cas;
        if cas.is_empty() {
            return Err(Box::new(Outcome::not_ready(
                Reason::Pending,
                format!("waiting for {issuer}'s CA certificate"),
            )));
        }
        let input = (chain, private, cas);
        if let Some((previous, tls)) = &self.backend
            && *previous == input
        {
            return Ok(tls.clone());
        }
        let (chain, private, cas) = &input;
        match tls::client_config(&cas.join("\n"), Some((chain, private))) {
            Ok(tls) => {
                tracing::info!(certificate = %certificate, backend_ca = %issuer, "connecting to the backend with mutual TLS");
                self.backend = Some((input.clone(), tls.clone()));
                Ok(tls)
            }
            Err(source) => Err(Box::new(unusable(
                Reason::CertificateUnusable,
                &GatewayError::BackendTls {
                    certificate,
                    issuer,
                    source,
                },
            ))),
        }
    }

    /// Publishes the Gateway of `runtime` and returns its outcome.
    pub fn publish(
        &mut self,
        runtime: &GatewayRuntime,
        desired: &DesiredState,
        certificates: &Certificates,
    ) -> HashMap<ObjectKey, Outcome> {
        let key = &runtime.key;
        let spec = match desired.entries.get(key).and_then(|e| e.resource()) {
            Some(Resource::Gateway(gateway)) => gateway.spec.clone(),
            _ => return HashMap::new(),
        };
        let outcome = self.gateway(runtime, desired, key, &spec, certificates);
        HashMap::from([(key.clone(), outcome)])
    }

    fn gateway(
        &mut self,
        runtime: &GatewayRuntime,
        desired: &DesiredState,
        key: &ObjectKey,
        spec: &GatewaySpec,
        certificates: &Certificates,
    ) -> Outcome {
        let mut config = relay_config(spec);
        let mut status = GatewayStatus {
            active_connections: i64::try_from(
                runtime
                    .counters
                    .active
                    .load(std::sync::atomic::Ordering::Relaxed),
            )
            .ok(),
            ..GatewayStatus::default()
        };
        if config.mode != Mode::Passthrough || spec.dial_out.is_some() {
            match self.certificate(runtime, desired, key, spec, certificates) {
                Ok(serial) => {
                    status.certificate_serial = Some(serial);
                }
                Err(outcome) => return *outcome,
            }
        }
        if config.mode != Mode::Passthrough {
            let issuers = keys(key, &spec.trusted_client_issuers);
            if let Err(source) = publish_trust(
                &mut self.trust,
                &runtime.verifier,
                certificates.trust(&issuers),
            ) {
                return unusable(
                    Reason::ClientAuthUnusable,
                    &GatewayError::Verifier {
                        field: "spec.trustedClientIssuers",
                        source,
                    },
                );
            }
        }
        if let Some(dial_out) = &spec.dial_out {
            let issuers = keys(key, &dial_out.trusted_server_issuers);
            if let Err(source) = publish_trust(
                &mut self.inside_trust,
                &runtime.inside_verifier,
                certificates.trust(&issuers),
            ) {
                return unusable(
                    Reason::ClientAuthUnusable,
                    &GatewayError::Verifier {
                        field: "spec.dialOut.trustedServerIssuers",
                        source,
                    },
                );
            }
            status.dial_out_connections =
                i64::try_from(runtime.inside.as_ref().map_or(0, |pool| pool.idle())).ok();
        }
        if config.mode == Mode::Terminate {
            match self.backend_tls(desired, key, spec, certificates) {
                Ok(tls) => config.backend_tls = Some(tls),
                Err(outcome) => return *outcome,
            }
        }
        let load = |counter: &std::sync::atomic::AtomicU64| {
            counter.load(std::sync::atomic::Ordering::Relaxed)
        };
        let counts = (
            load(&runtime.counters.relayed),
            load(&runtime.counters.backend_failed),
        );
        self.reachable = backend_state(self.reachable, self.relay_counts.unwrap_or(counts), counts);
        self.relay_counts = Some(counts);
        let moved = spec.listen != runtime.listen;
        runtime.config.send_replace(Arc::new(config));
        let mode = format!("{:?}", spec.mode).to_lowercase();
        let backend = match &spec.dial_out {
            Some(dial_out) => format!("the inside servers dialing in on {}", dial_out.listen),
            None => spec.backend.clone(),
        };
        let message = if moved {
            format!(
                "relaying ({mode}) on {} to {backend}; spec.listen is now {}: restart the gateway to move the listener",
                runtime.listen, spec.listen
            )
        } else {
            format!("relaying ({mode}) on {} to {backend}", runtime.listen)
        };
        gateway_outcome(self.reachable, message, &backend).with_details(outcome::details(&status))
    }

    /// Publishes the gateway's certificate when it changed; its serial.
    fn certificate(
        &mut self,
        runtime: &GatewayRuntime,
        desired: &DesiredState,
        key: &ObjectKey,
        spec: &GatewaySpec,
        certificates: &Certificates,
    ) -> Result<String, Box<Outcome>> {
        let (certificate, (chain, private)) = match (
            &spec.certificate_secret_ref,
            &spec.certificate_ref,
        ) {
            (Some(secret), _) => (
                format!("Secret {}/{}", key.namespace, secret.name),
                secret_pair(key, &secret.name, certificates)?,
            ),
            (None, Some(reference)) => {
                let certificate =
                    ObjectKey::referenced(Kind::Certificate, &key.namespace, reference);
                let Some(pair) = certificates.issued(&certificate, desired) else {
                    return Err(Box::new(Outcome::not_ready(
                        Reason::Pending,
                        format!("waiting for {certificate} to be issued"),
                    )));
                };
                (certificate.to_string(), pair)
            }
            (None, None) => {
                return Err(Box::new(Outcome::not_ready(
                        Reason::InvalidSpec,
                        "spec.certificateRef: the gateway presents a certificate in this mode; name one (or certificateSecretRef)"
                            .into(),
                    )));
            }
        };
        if self.certificate_pem.as_ref() != Some(&(chain.clone(), private.clone())) {
            match tls::certified_key(&chain, &private) {
                Ok(certified) => {
                    runtime.certificate.send_replace(Some(certified));
                    tracing::info!(certificate = %certificate, "presenting certificate");
                    self.certificate_pem = Some((chain.clone(), private));
                }
                Err(source) => {
                    return Err(Box::new(unusable(
                        Reason::CertificateUnusable,
                        &GatewayError::Certificate {
                            certificate,
                            source,
                        },
                    )));
                }
            }
        }
        Ok(crate::pki::facts::pem_certificates(&chain)
            .ok()
            .and_then(|certs| crate::pki::facts::read(&certs[0]).ok())
            .map(|facts| facts.serial)
            .unwrap_or_default())
    }
}

/// The key pair of the Secret a Gateway presents (`tessera gateway --kube`), or why not.
fn secret_pair(
    key: &ObjectKey,
    name: &str,
    certificates: &Certificates,
) -> Result<(String, String), Box<Outcome>> {
    use crate::reconcile::secrets::SecretsError;
    match certificates.secret_key_pair(&key.namespace, name) {
        Some(Ok(pair)) => Ok(pair),
        None => Err(Box::new(Outcome::not_ready(
            Reason::SecretsNeedKubernetes,
            "spec.certificateSecretRef names a Kubernetes Secret, read by `tessera gateway --kube` only; otherwise use certificateRef".into(),
        ))),
        Some(Err(error @ (SecretsError::NotFound { .. } | SecretsError::KeyMissing { .. }))) => {
            Err(Box::new(Outcome::not_ready(
                Reason::Pending,
                format!("spec.certificateSecretRef: {}", crate::error_chain(&error)),
            )))
        }
        Some(Err(error)) => Err(Box::new(Outcome::not_ready(
            Reason::CertificateUnusable,
            format!("spec.certificateSecretRef: {}", crate::error_chain(&error)),
        ))),
    }
}

fn keys(key: &ObjectKey, issuers: &[crate::resources::meta::LocalRef]) -> Vec<ObjectKey> {
    issuers
        .iter()
        .map(|issuer| ObjectKey::referenced(Kind::Issuer, &key.namespace, issuer))
        .collect()
}

/// Publishes a verifier requiring certificates from `trust`, when it changed.
fn publish_trust(
    published: &mut Option<Trust>,
    channel: &watch::Sender<Arc<dyn ClientCertVerifier>>,
    trust: Trust,
) -> Result<(), PkiError> {
    if published.as_ref() == Some(&trust) {
        return Ok(());
    }
    let verifier = trust.verifier(ClientAuth::Required)?;
    channel.send_replace(verifier);
    tracing::info!(
        cas = trust.cas.len(),
        crls = trust.crls.len(),
        "verifying client certificates"
    );
    *published = Some(trust);
    Ok(())
}
