//! The Server's part of the routes: its outcome and status, pacing, listeners and the
//! certificate they serve, the client verifier, gateways in terminate mode, dial-out and
//! enrollment. Split from `mod.rs` along that seam: the rest of the routes (Activations,
//! Affectations, their counts and arming) never reads the Server's spec beyond its pacing.

use super::*;

impl Publisher {
    /// The Server's part of the routes: its outcome, pacing, listeners, gateways in
    /// terminate mode and enrollment.
    pub(super) fn publish_server(
        &mut self,
        p: &mut Publishing<'_>,
        key: &ObjectKey,
        spec: &ServerSpec,
        certificates: &Certificates,
    ) {
        p.routes = base_routes(spec);
        let (outcome, wanted) = self.server(p.runtime, p.desired, key, spec, certificates);
        p.routes.forwarded = self.forwarded.clone();
        p.routes.enrollment = spec.enrollment.as_ref().and_then(|enrollment| {
            let issuer =
                ObjectKey::referenced(Kind::Issuer, &key.namespace, &enrollment.issuer_ref);
            // `tessera notify` signs its calls with this Issuer.
            if p.leadership.is_leader() {
                let _ = p
                    .runtime
                    .db
                    .set_setting("enrollmentIssuer", &qualified(&issuer));
            }
            let server_ca = match &spec.certificate_ref {
                Some(reference) => {
                    let server_certificate =
                        ObjectKey::referenced(Kind::Certificate, &key.namespace, reference);
                    std::fs::read_to_string(
                        certificates
                            .output_dir(&server_certificate, p.desired)
                            .join("ca.crt"),
                    )
                    .ok()?
                }
                // A Secret's `tls.crt` ends with the highest certificate it carries (an
                // issuer's when the chain has one): agents are told to trust that.
                None => self
                    .certificate_pem
                    .as_ref()
                    .and_then(|(chain, _)| last_certificate(chain))?,
            };
            Some(EnrollmentRoute {
                server_ca,
                authority: certificates.authority(&issuer)?,
                lifetime: jiff::SignedDuration::try_from(enrollment.certificate_duration.as_std())
                    .unwrap_or(jiff::SignedDuration::from_hours(720)),
            })
        });
        p.listen = wanted;
        p.outcomes.insert(key.clone(), outcome);
    }

    /// Publishes the dial-out settings (or their absence) when they change.
    pub(super) fn dial_out(
        &mut self,
        runtime: &Runtime,
        desired: &DesiredState,
        key: &ObjectKey,
        spec: &ServerSpec,
        certificates: &Certificates,
    ) -> Result<(), RoutesError> {
        let Some(dial_out) = &spec.dial_out else {
            if self.dial_out_input.take().is_some() {
                runtime.dial_out.send_replace(None);
            }
            return Ok(());
        };
        let certificate =
            ObjectKey::referenced(Kind::Certificate, &key.namespace, &dial_out.certificate_ref);
        let Some((chain, private)) = certificates.issued(&certificate, desired) else {
            // Not issued yet: the next pass, once it is.
            return Ok(());
        };
        let issuer =
            ObjectKey::referenced(Kind::Issuer, &key.namespace, &dial_out.gateway_issuer_ref);
        let cas = certificates.trust(std::slice::from_ref(&issuer)).cas;
        if cas.is_empty() {
            return Ok(());
        }
        let connections = usize::try_from(dial_out.connections.clamp(1, 256)).unwrap_or(4);
        let input = (dial_out.gateway.clone(), connections, chain, private, cas);
        if self.dial_out_input.as_ref() == Some(&input) {
            return Ok(());
        }
        let tls = tls::client_config(&input.4.join("\n"), Some((&input.2, &input.3))).map_err(
            |source| RoutesError::DialOut {
                certificate,
                issuer,
                source: Box::new(source),
            },
        )?;
        runtime
            .dial_out
            .send_replace(Some(Arc::new(crate::server::dial_out::Settings {
                gateway: input.0.clone(),
                connections,
                tls,
            })));
        self.dial_out_input = Some(input);
        Ok(())
    }

    /// The key pair the Server presents: its Certificate's as issued, or the Secret's it
    /// names (Kubernetes mode). When there is none (yet), what is served is withdrawn and the
    /// outcome says why; when the API server could not be asked, what is served stays.
    pub(super) fn served_pair(
        &mut self,
        runtime: &Runtime,
        key: &ObjectKey,
        spec: &ServerSpec,
        desired: &DesiredState,
        certificates: &Certificates,
    ) -> Result<(String, String), Outcome> {
        use crate::reconcile::secrets::SecretsError;
        let mut withdraw = |outcome: Outcome| {
            runtime.certificate.send_replace(None);
            self.certificate_pem = None;
            outcome
        };
        match (&spec.certificate_secret_ref, &spec.certificate_ref) {
            (Some(secret), _) => match certificates.secret_key_pair(&key.namespace, &secret.name)
            {
                Some(Ok(pair)) => Ok(pair),
                None => Err(withdraw(failed(
                    Reason::SecretsNeedKubernetes,
                    "spec.certificateSecretRef names a Kubernetes Secret, read in Kubernetes mode only; in directory and git mode use certificateRef".into(),
                ))),
                Some(Err(
                    source @ (SecretsError::NotFound { .. } | SecretsError::KeyMissing { .. }),
                )) => Err(withdraw(waiting(crate::error_chain(
                    &RoutesError::ReadSecret { source },
                )))),
                Some(Err(source)) => Err(invalid(
                    Reason::CertificateUnusable,
                    &RoutesError::ReadSecret { source },
                )),
            },
            (None, Some(reference)) => {
                let certificate = ObjectKey::referenced(Kind::Certificate, &key.namespace, reference);
                certificates
                    .issued(&certificate, desired)
                    .ok_or_else(|| withdraw(waiting(format!("waiting for {certificate} to be issued"))))
            }
            (None, None) => Err(withdraw(failed(
                Reason::InvalidSpec,
                "set certificateRef or certificateSecretRef".into(),
            ))),
        }
    }

    /// The Server: its listen addresses, its certificate and its client verifier.
    // Long: each of the three is checked and published with its own failure outcome, in
    // order, and the early returns read best in one place.
    #[allow(clippy::too_many_lines)]
    pub(super) fn server(
        &mut self,
        runtime: &Runtime,
        desired: &DesiredState,
        key: &ObjectKey,
        spec: &ServerSpec,
        certificates: &Certificates,
    ) -> (Outcome, Listen) {
        let parse = |field: &'static str, text: &str| {
            text.parse::<SocketAddr>()
                .map_err(|source| RoutesError::Listen {
                    field,
                    text: text.to_owned(),
                    source,
                })
        };
        let listen = match (
            parse("https", &spec.listen.https),
            spec.listen
                .http
                .as_deref()
                .map(|h| parse("http", h))
                .transpose(),
        ) {
            (Ok(https), Ok(http)) => Listen {
                https: Some(https),
                http,
                trusted_proxies: Vec::new(),
            },
            (Err(error), _) | (_, Err(error)) => {
                return (invalid(Reason::InvalidSpec, &error), Listen::default());
            }
        };
        let mut listen = listen;
        for (i, text) in spec.trusted_proxies.iter().enumerate() {
            match text.parse::<std::net::IpAddr>() {
                Ok(ip) => listen.trusted_proxies.push(ip),
                Err(source) => {
                    let error = RoutesError::TrustedProxy {
                        index: i,
                        text: text.clone(),
                        source,
                    };
                    return (invalid(Reason::InvalidSpec, &error), Listen::default());
                }
            }
        }

        let (chain, private) = match self.served_pair(runtime, key, spec, desired, certificates) {
            Ok(pair) => pair,
            Err(outcome) => return (outcome, listen),
        };
        let source = match (&spec.certificate_secret_ref, &spec.certificate_ref) {
            (Some(secret), _) => format!("Secret {}/{}", key.namespace, secret.name),
            (None, Some(reference)) => {
                ObjectKey::referenced(Kind::Certificate, &key.namespace, reference).to_string()
            }
            (None, None) => String::new(),
        };
        let serial = crate::pki::facts::pem_certificates(&chain)
            .ok()
            .and_then(|certs| {
                certs
                    .first()
                    .and_then(|der| crate::pki::facts::read(der).ok())
            })
            .map(|f| f.serial);
        if self.certificate_pem.as_ref() != Some(&(chain.clone(), private.clone())) {
            match tls::certified_key(&chain, &private) {
                Ok(certified) => {
                    runtime.certificate.send_replace(Some(certified));
                    self.certificate_pem = Some((chain, private));
                    tracing::info!(certificate = %source, serial = serial.as_deref().unwrap_or("?"), "serving certificate");
                }
                Err(error) => {
                    let error = RoutesError::Certificate {
                        certificate: source,
                        source: error,
                    };
                    return (invalid(Reason::CertificateUnusable, &error), listen);
                }
            }
        }

        // Client certificates: trusted issuers' CA certificates (both during a rollover)
        // and their revocation lists.
        // Enrolled agents' certificates are always checked when presented: the native API
        // needs them even where OCS agents present none.
        let mut mode = spec.client_auth.mode;
        let mut issuers = spec.client_auth.trusted_issuers.clone();
        if let Some(enrollment) = &spec.enrollment {
            if mode == ClientAuthMode::None {
                mode = ClientAuthMode::Optional;
            }
            if !issuers.contains(&enrollment.issuer_ref) {
                issuers.push(enrollment.issuer_ref.clone());
            }
        }
        let issuers: Vec<ObjectKey> = issuers
            .iter()
            .map(|issuer| ObjectKey::referenced(Kind::Issuer, &key.namespace, issuer))
            .collect();
        // Gateways in terminate mode: their certificates are accepted on the listener, and
        // the agent certificates they forward are checked against the agents' issuers.
        let agents_trust = certificates.trust(&issuers);
        let mut gateways = Vec::new();
        let mut all_issuers = issuers;
        for gateway in &spec.trusted_gateways {
            let issuer = ObjectKey::referenced(Kind::Issuer, &key.namespace, &gateway.issuer_ref);
            let subjects = certificates
                .trust(std::slice::from_ref(&issuer))
                .cas
                .iter()
                .filter_map(|pem| crate::pki::facts::pem_certificates(pem).ok())
                .filter_map(|certs| crate::pki::facts::read(&certs[0]).ok())
                .map(|facts| facts.subject_der)
                .collect();
            let names = gateway
                .names
                .iter()
                .map(|n| n.trim().to_ascii_lowercase())
                .filter(|n| !n.is_empty())
                .collect();
            gateways.push((subjects, names));
            if !all_issuers.contains(&issuer) {
                all_issuers.push(issuer);
            }
            if mode == ClientAuthMode::None {
                mode = ClientAuthMode::Optional;
            }
        }
        let forwarded_input = (gateways, agents_trust);
        if self.forwarded_input.as_ref() != Some(&forwarded_input) {
            self.forwarded = None;
            if !forwarded_input.0.is_empty() {
                match forwarded_input.1.verifier(ClientAuth::Required) {
                    Ok(verifier) => {
                        self.forwarded = Some(Arc::new(Forwarded {
                            gateways: forwarded_input.0.clone(),
                            verifier,
                        }));
                    }
                    Err(source) => {
                        let error = RoutesError::ForwardedVerifier { source };
                        return (invalid(Reason::ClientAuthUnusable, &error), listen);
                    }
                }
            }
            self.forwarded_input = Some(forwarded_input);
        }
        let input = (mode, certificates.trust(&all_issuers));
        if self.verifier_input.as_ref() != Some(&input) {
            match input.1.verifier(client_auth(mode)) {
                Ok(verifier) => {
                    runtime.verifier.send_replace(verifier);
                    self.verifier_input = Some(input);
                }
                Err(source) => {
                    let error = RoutesError::ClientVerifier { source };
                    return (invalid(Reason::ClientAuthUnusable, &error), listen);
                }
            }
        }

        if let Err(error) = self.dial_out(runtime, desired, key, spec, certificates) {
            return (invalid(Reason::DialOutUnusable, &error), listen);
        }

        let (bound, failed) = {
            let state = runtime.bound.borrow();
            let failed: Vec<(SocketAddr, String)> = state
                .failures()
                .into_iter()
                .map(|(address, error)| (address, error.to_owned()))
                .collect();
            (state.addresses(), failed)
        };
        let wanted: Vec<SocketAddr> = listen.https.into_iter().chain(listen.http).collect();
        let details = outcome::details(&ServerStatus {
            addresses: bound.iter().map(ToString::to_string).collect(),
            certificate_serial: serial,
            ..ServerStatus::default()
        });
        (
            server_outcome(listening(&wanted, &bound, &failed)).with_details(details),
            listen,
        )
    }
}
