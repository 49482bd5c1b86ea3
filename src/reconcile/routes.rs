//! Routes: turns the desired Server, Activations and Affectations, with the packages built
//! this pass, into the plain values the agent-facing server runs on, and publishes them
//! through `watch` channels (the routing table, the listen addresses, the certificate and
//! the client verifier). Also reads the deployment counts back for Affectation statuses.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

use crate::desired::DesiredState;
use crate::leader::Leadership;
use crate::pki::tls::{self, ClientAuth};
use crate::protocol::ocs::DownloadConf;
use crate::reconcile::certificates::{Certificates, Trust};
use crate::reconcile::outcome::{self, Class, Outcome, Reason};
use crate::resources::affectation::{DeploymentCounts, RolloutStatus};
use crate::resources::meta::Os;
use crate::resources::server::{ClientAuthMode, ServerSpec};
use crate::resources::{ActivationStatus, AffectationStatus, ServerStatus};
use crate::resources::{Kind, ObjectKey, Resource};
use crate::server::agent::{
    EnrollmentRoute, Forwarded, GatewayIdentities, Listen, PackageRoute, Routes,
};
use crate::server::deployments::{self, Assignment, Counts, OsFamily, Selector};
use crate::store::db::Database;
use crate::store::db::{Computer, Deployment, State};

/// The channels reconcile publishes on and the runtime reads, and the database both use.
pub struct Runtime {
    pub db: Arc<Database>,
    pub routes: watch::Sender<Arc<Routes>>,
    pub listen: watch::Sender<Listen>,
    pub certificate: watch::Sender<Option<Arc<CertifiedKey>>>,
    pub verifier: watch::Sender<Arc<dyn ClientCertVerifier>>,
    /// What the listeners are bound to, as the runtime reports it.
    pub bound: watch::Receiver<Vec<SocketAddr>>,
    /// Bumped by the runtime when deployment states change.
    pub activity: watch::Receiver<u64>,
    /// Where package build times are counted.
    pub metrics: Arc<crate::server::metrics::Metrics>,
    /// Dial-out to a gateway, when the Server asks for it.
    pub dial_out: watch::Sender<Option<Arc<crate::server::dial_out::Settings>>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Runtime")
    }
}

/// What a pass last published, to publish only changes.
#[derive(Default)]
pub struct Publisher {
    certificate_pem: Option<(String, String)>,
    verifier_input: Option<(ClientAuthMode, Trust)>,
    /// Gateways in terminate mode, as last published.
    forwarded: Option<Arc<Forwarded>>,
    forwarded_input: Option<(GatewayIdentities, Trust)>,
    /// Dial-out: (gateway, connections, certificate chain, key, gateway CAs) as published.
    dial_out_input: Option<DialOutInput>,
}

type DialOutInput = (String, usize, String, String, Vec<String>);

/// An Activation whose package is built: (package, package id, OS, info location, pack
/// location).
type ActiveActivation = (String, String, Os, Option<String>, Option<String>);

/// `namespace/name`.
pub fn qualified(key: &ObjectKey) -> String {
    format!("{}/{}", key.namespace, key.name)
}

impl Publisher {
    /// The leader's writes of a pass: `staleAfter` for `tessera status`, and every known
    /// computer armed for what `routes` assign.
    fn arm(&self, runtime: &Runtime, routes: &Routes, now: jiff::Timestamp) {
        if let Err(error) = runtime
            .db
            .set_setting("staleAfter", &routes.stale_after.to_string())
        {
            tracing::warn!(error = %crate::error_chain(&error), "failed to record staleAfter");
        }
        match crate::server::agent::arm_all(&runtime.db, &routes.assignments, now.as_second()) {
            Ok(0) => {}
            Ok(armed) => tracing::info!(armed, "armed deployments for known computers"),
            Err(error) => {
                tracing::warn!(error = %crate::error_chain(&error), "failed to arm deployments")
            }
        }
    }

    /// Computes the routes from `desired` and the package `outcomes`, publishes them, and
    /// returns the outcomes of the Server, Activations and Affectations.
    pub fn publish(
        &mut self,
        runtime: &Runtime,
        desired: &DesiredState,
        packages: &HashMap<ObjectKey, Outcome>,
        certificates: &Certificates,
        leadership: &Leadership,
        now: jiff::Timestamp,
    ) -> HashMap<ObjectKey, Outcome> {
        let mut outcomes = HashMap::new();
        let server = desired.actionable().find_map(|(key, r)| match r {
            Resource::Server(server) => Some((key.clone(), server.spec.clone())),
            _ => None,
        });
        let mut routes = Routes::default();
        let mut listen = Listen::default();
        if let Some((key, spec)) = &server {
            routes = base_routes(spec);
            let (outcome, wanted) = self.server(runtime, desired, key, spec, certificates);
            routes.forwarded = self.forwarded.clone();
            routes.enrollment = spec.enrollment.as_ref().and_then(|enrollment| {
                let issuer =
                    ObjectKey::referenced(Kind::Issuer, &key.namespace, &enrollment.issuer_ref);
                // `tessera notify` signs its calls with this Issuer.
                if leadership.is_leader() {
                    let _ = runtime
                        .db
                        .set_setting("enrollmentIssuer", &qualified(&issuer));
                }
                let server_certificate =
                    ObjectKey::referenced(Kind::Certificate, &key.namespace, &spec.certificate_ref);
                let server_ca = std::fs::read_to_string(
                    certificates
                        .output_dir(&server_certificate, desired)
                        .join("ca.crt"),
                )
                .ok()?;
                Some(EnrollmentRoute {
                    server_ca,
                    authority: certificates.authority(&issuer)?,
                    lifetime: jiff::SignedDuration::try_from(
                        enrollment.certificate_duration.as_std(),
                    )
                    .unwrap_or(jiff::SignedDuration::from_hours(720)),
                })
            });
            listen = wanted;
            outcomes.insert(key.clone(), outcome);
        }

        // Built packages, by key: (id, success codes, os).
        let built: HashMap<&ObjectKey, String> = packages
            .iter()
            .filter(|(_, o)| o.ready)
            .filter_map(|(k, o)| outcome::package_id(&o.details).map(|id| (k, id)))
            .collect();
        let mut activations: HashMap<ObjectKey, ActiveActivation> = HashMap::new();
        for (key, resource) in desired.actionable() {
            let Resource::Activation(activation) = resource else {
                continue;
            };
            let package_key =
                ObjectKey::referenced(Kind::Package, &key.namespace, &activation.spec.package_ref);
            let package = desired.entries.get(&package_key).and_then(|e| e.resource());
            let (Some(id), Some(Resource::Package(package))) = (built.get(&package_key), package)
            else {
                let outcome = dependency(
                    packages.get(&package_key),
                    &package_key,
                    format!("waiting for {package_key} to be built"),
                );
                outcomes.insert(key.clone(), outcome);
                continue;
            };
            routes.packages.insert(
                id.clone(),
                PackageRoute {
                    name: qualified(&package_key),
                    success_exit_codes: package.spec.success_exit_codes.clone(),
                    priority: u8::try_from(package.spec.priority).unwrap_or(5),
                    action: native_action(&package.spec.action),
                    format: package.spec.content.as_ref().map(|_| {
                        if package.spec.os == Os::Windows {
                            "zip"
                        } else {
                            "tar.gz"
                        }
                        .to_owned()
                    }),
                },
            );
            activations.insert(
                key.clone(),
                (
                    qualified(&package_key),
                    id.clone(),
                    package.spec.os,
                    activation.spec.info_location.as_deref().map(strip_scheme),
                    activation.spec.pack_location.as_deref().map(strip_scheme),
                ),
            );
            let details = outcome::details(&ActivationStatus {
                package_id: Some(id.clone()),
                ..ActivationStatus::default()
            });
            outcomes.insert(
                key.clone(),
                Outcome::ready(Reason::Active, format!("agents are offered package {id}"))
                    .with_details(details),
            );
        }

        let mut wakes: HashMap<String, jiff::Timestamp> = HashMap::new();
        for (key, resource) in desired.actionable() {
            let Resource::Affectation(affectation) = resource else {
                continue;
            };
            let spec = &affectation.spec;
            let activation_key =
                ObjectKey::referenced(Kind::Activation, &key.namespace, &spec.activation_ref);
            let Some((package, id, os, info, pack)) = activations.get(&activation_key) else {
                let outcome = dependency(
                    outcomes.get(&activation_key),
                    &activation_key,
                    format!("waiting for {activation_key} to be active"),
                );
                outcomes.insert(key.clone(), outcome);
                continue;
            };
            let targets = &spec.targets;
            let selector = match Selector::new(
                targets.all,
                &targets.names,
                &targets.name_globs,
                &targets.tags,
                targets.os.iter().map(|os| family(*os)).collect(),
            ) {
                Ok(selector) => selector,
                Err(message) => {
                    outcomes.insert(key.clone(), failed(Reason::InvalidSpec, message));
                    continue;
                }
            };
            let instant = |text: &Option<String>| {
                text.as_deref()
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                    .map(|t| t.as_second())
            };
            // A staged rollout: its clock starts when this package version (and redeploy
            // token) is first assigned, and is kept in the database across restarts.
            let (share, next_stage) = match &spec.rollout {
                None => (100, None),
                Some(rollout) => {
                    let clock = format!(
                        "rollout/{}/{}/{}",
                        qualified(key),
                        id,
                        spec.redeploy.as_deref().unwrap_or("")
                    );
                    // The leader starts the clock; a follower reads it (and, before the leader
                    // has, offers the first stage only).
                    let now_text = now.as_second().to_string();
                    let started = if leadership.is_leader() {
                        runtime.db.setting_or_insert(&clock, &now_text)
                    } else {
                        runtime
                            .db
                            .setting(&clock)
                            .map(|at| at.unwrap_or_else(|| now_text.clone()))
                    }
                    .ok()
                    .and_then(|at| at.parse().ok())
                    .unwrap_or(now.as_second());
                    let mut begins = started;
                    let mut share = 0u8;
                    let mut next = None;
                    for stage in &rollout.stages {
                        begins = begins.saturating_add(
                            i64::try_from(stage.after.as_std().as_secs()).unwrap_or(i64::MAX),
                        );
                        if now.as_second() >= begins {
                            share = u8::try_from(stage.percent.clamp(0, 100)).unwrap_or(100);
                        } else {
                            next = jiff::Timestamp::from_second(begins).ok();
                            break;
                        }
                    }
                    (share, next)
                }
            };
            routes.assignments.push(Assignment {
                share,
                paused: false,
                affectation: qualified(key),
                activation: qualified(&activation_key),
                package: package.clone(),
                package_id: id.clone(),
                package_os: family(*os),
                selector,
                redeploy: spec.redeploy.clone(),
                not_before: spec.schedule.as_ref().and_then(|s| instant(&s.not_before)),
                not_after: spec.schedule.as_ref().and_then(|s| instant(&s.not_after)),
                info_location: info.clone(),
                pack_location: pack.clone(),
            });
            if let Some(at) = next_stage {
                wakes.insert(qualified(key), at);
            }
        }

        // Counts per Affectation, from the database.
        let stale_before = now.as_second() - routes.stale_after;
        let counted = runtime
            .db
            .computers()
            .and_then(|computers| Ok((computers, runtime.db.deployments()?)));
        let (counts, codes) = match &counted {
            Ok((computers, rows)) => (
                deployments::counts(&routes.assignments, computers, rows, stale_before),
                error_codes(&routes.assignments, computers, rows),
            ),
            Err(error) => {
                tracing::warn!(error = %crate::error_chain(error), "failed to read deployment states");
                (HashMap::new(), HashMap::new())
            }
        };
        for assignment in &mut routes.assignments {
            let Some(key) = desired
                .entries
                .keys()
                .find(|k| k.kind == Kind::Affectation && qualified(k) == assignment.affectation)
            else {
                continue;
            };
            let c = counts
                .get(&assignment.affectation)
                .copied()
                .unwrap_or_default();
            let rollout = match desired.entries.get(key).and_then(|e| e.resource()) {
                Some(Resource::Affectation(a)) => a.spec.rollout.clone(),
                _ => None,
            };
            let rollout = rollout.map(|rollout| {
                // Too many errors pause it: nothing new is offered until it is fixed (a new
                // package version or redeploy token restarts the rollout).
                assignment.paused = rollout.max_errors.is_some_and(|max| c.error >= max);
                RolloutStatus {
                    percent: i64::from(assignment.share),
                    paused: assignment.paused,
                    next_stage: wakes.get(&assignment.affectation).map(ToString::to_string),
                }
            });
            let facts = RolloutFacts {
                package_id: &assignment.package_id,
                counts: c,
                error_codes: codes
                    .get(&assignment.affectation)
                    .cloned()
                    .unwrap_or_default(),
                rollout,
            };
            let mut outcome = affectation_outcome(&facts);
            outcome.wake = wakes.get(&assignment.affectation).copied();
            outcomes.insert(key.clone(), outcome);
        }

        // Arm known computers for what is assigned now (new Affectations, versions, tokens,
        // rollout stages); computers already armed cost a read. The leader's job: followers
        // serve the routes, and arm only the agents that check in with them.
        if leadership.is_leader() {
            self.arm(runtime, &routes, now);
        }
        runtime.routes.send_replace(Arc::new(routes));
        runtime.listen.send_if_modified(|current| {
            let changed = *current != listen;
            *current = listen;
            changed
        });
        outcomes
    }

    /// Publishes the dial-out settings (or their absence) when they change.
    fn dial_out(
        &mut self,
        runtime: &Runtime,
        desired: &DesiredState,
        key: &ObjectKey,
        spec: &ServerSpec,
        certificates: &Certificates,
    ) -> Result<(), String> {
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
        let tls = tls::client_config(&input.4.join("\n"), Some((&input.2, &input.3)))
            .map_err(|e| format!("spec.dialOut: {certificate} or {issuer}: {e}"))?;
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

    /// The Server: its listen addresses, its certificate and its client verifier.
    fn server(
        &mut self,
        runtime: &Runtime,
        desired: &DesiredState,
        key: &ObjectKey,
        spec: &ServerSpec,
        certificates: &Certificates,
    ) -> (Outcome, Listen) {
        let parse = |field: &str, text: &str| {
            text.parse::<SocketAddr>()
                .map_err(|e| format!("spec.listen.{field}: {text:?} is not an address:port ({e})"))
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
            (Err(message), _) | (_, Err(message)) => {
                return (failed(Reason::InvalidSpec, message), Listen::default());
            }
        };
        let mut listen = listen;
        for (i, text) in spec.trusted_proxies.iter().enumerate() {
            match text.parse::<std::net::IpAddr>() {
                Ok(ip) => listen.trusted_proxies.push(ip),
                Err(_) => {
                    return (
                        failed(
                            Reason::InvalidSpec,
                            format!("spec.trustedProxies[{i}]: {text:?} is not an IP address"),
                        ),
                        Listen::default(),
                    );
                }
            }
        }

        let certificate_key =
            ObjectKey::referenced(Kind::Certificate, &key.namespace, &spec.certificate_ref);
        let Some((chain, private)) = certificates.issued(&certificate_key, desired) else {
            runtime.certificate.send_replace(None);
            self.certificate_pem = None;
            return (
                waiting(format!("waiting for {certificate_key} to be issued")),
                listen,
            );
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
                    tracing::info!(certificate = %certificate_key, serial = serial.as_deref().unwrap_or("?"), "serving certificate");
                }
                Err(error) => {
                    return (
                        failed(
                            Reason::CertificateUnusable,
                            format!("{certificate_key}: {error}"),
                        ),
                        listen,
                    );
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
                    Err(error) => {
                        return (
                            failed(
                                Reason::ClientAuthUnusable,
                                format!(
                                    "spec.trustedGateways: agent certificates cannot be checked: {error}"
                                ),
                            ),
                            listen,
                        );
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
                Err(error) => {
                    return (
                        failed(
                            Reason::ClientAuthUnusable,
                            format!("spec.clientAuth: {error}"),
                        ),
                        listen,
                    );
                }
            }
        }

        if let Err(message) = self.dial_out(runtime, desired, key, spec, certificates) {
            return (failed(Reason::DialOutUnusable, message), listen);
        }

        let bound = runtime.bound.borrow().clone();
        let wanted: Vec<SocketAddr> = listen.https.into_iter().chain(listen.http).collect();
        let details = outcome::details(&ServerStatus {
            addresses: bound.iter().map(ToString::to_string).collect(),
            certificate_serial: serial,
            ..ServerStatus::default()
        });
        (
            server_outcome(listening(&wanted, &bound)).with_details(details),
            listen,
        )
    }
}

/// How the listeners stand against the addresses the spec asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Listening {
    /// Nothing is bound yet: the listeners are starting (a listener that fails every bind
    /// also leaves this, said in the log).
    Starting,
    /// Every address asked for is bound.
    Serving(Vec<SocketAddr>),
    /// Some are bound, and these are not: their bind failed.
    Missing {
        bound: Vec<SocketAddr>,
        missing: Vec<SocketAddr>,
    },
}

/// Matches the addresses `wanted` (port 0: any port) with those `bound`, in order.
pub fn listening(wanted: &[SocketAddr], bound: &[SocketAddr]) -> Listening {
    if bound.is_empty() {
        return Listening::Starting;
    }
    let mut left: Vec<SocketAddr> = bound.to_vec();
    let mut missing = Vec::new();
    for address in wanted {
        let found = left.iter().position(|b| {
            b.ip() == address.ip() && (address.port() == 0 || b.port() == address.port())
        });
        match found {
            Some(i) => {
                left.remove(i);
            }
            None => missing.push(*address),
        }
    }
    if missing.is_empty() {
        Listening::Serving(bound.to_vec())
    } else if missing.len() == wanted.len() {
        // None of the addresses asked for is bound: what is bound is the previous spec's,
        // until the listeners move.
        Listening::Starting
    } else {
        Listening::Missing {
            bound: bound.to_vec(),
            missing,
        }
    }
}

/// The Server's outcome once its certificate and trust are in place.
pub fn server_outcome(listening: Listening) -> Outcome {
    let list = |addresses: &[SocketAddr]| {
        addresses
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match listening {
        Listening::Starting => Outcome::not_ready(
            Reason::Pending,
            "the listeners are starting (or failed to bind: see the log)".to_owned(),
        ),
        Listening::Serving(bound) => {
            Outcome::ready(Reason::Serving, format!("listening on {}", list(&bound)))
        }
        Listening::Missing { bound, missing } => Outcome::not_ready(
            Reason::BindFailed,
            format!(
                "failed to bind {} (see the log); listening on {} only",
                list(&missing),
                list(&bound)
            ),
        ),
    }
}

/// What an Affectation's status is made from.
#[derive(Clone, Debug, Default)]
pub struct RolloutFacts<'a> {
    /// The package id deployed.
    pub package_id: &'a str,
    /// Targets per state.
    pub counts: Counts,
    /// Error codes reported, most frequent first, with how many targets reported each.
    pub error_codes: Vec<(String, i64)>,
    /// A staged rollout's progress, when there is one.
    pub rollout: Option<RolloutStatus>,
}

/// How many error codes the message of a failed rollout names.
const CODES_SHOWN: usize = 3;

/// Longest error code shown in a message, in characters (agents report codes verbatim).
const CODE_SHOWN_CHARS: usize = 64;

/// The Affectation's outcome, honestly: `Deploying` (progressing) while any target is
/// waiting, notified (even stale), downloading or installing, or a staged rollout has stages
/// left; `Deployed` (ready) once every target settled successfully, or there is none;
/// `DeploymentFailed` once every target settled and some failed; `RolloutPaused` when
/// `maxErrors` stopped the rollout.
pub fn affectation_outcome(facts: &RolloutFacts<'_>) -> Outcome {
    let c = &facts.counts;
    let in_flight = c.waiting + c.notified + c.stale + c.downloading + c.installing;
    let mut counts = format!(
        "package {} to {} target{}: {} success, {} error, {} waiting, {} notified, {} stale",
        facts.package_id,
        c.targets,
        if c.targets == 1 { "" } else { "s" },
        c.success,
        c.error,
        c.waiting,
        c.notified,
        c.stale
    );
    if c.downloading + c.installing > 0 {
        counts.push_str(&format!(
            ", {} downloading, {} installing",
            c.downloading, c.installing
        ));
    }
    if c.error > 0 && !facts.error_codes.is_empty() {
        let shown: Vec<String> = facts
            .error_codes
            .iter()
            .take(CODES_SHOWN)
            .map(|(code, n)| {
                let code: String = code.chars().take(CODE_SHOWN_CHARS).collect();
                format!("{code:?} ×{n}")
            })
            .collect();
        counts.push_str(&format!("; error codes: {}", shown.join(", ")));
    }
    let details = outcome::details(&AffectationStatus {
        targets: Some(c.targets),
        counts: Some(DeploymentCounts {
            waiting: c.waiting,
            notified: c.notified,
            stale: c.stale,
            downloading: c.downloading,
            installing: c.installing,
            success: c.success,
            error: c.error,
        }),
        rollout: facts.rollout.clone(),
        ..AffectationStatus::default()
    });
    let stage_left = facts
        .rollout
        .as_ref()
        .is_some_and(|r| r.percent < 100 && !r.paused);
    let outcome = match &facts.rollout {
        Some(rollout) if rollout.paused => Outcome::not_ready(
            Reason::RolloutPaused,
            format!(
                "rollout paused at {}%: {} errors reached spec.rollout.maxErrors; {counts}",
                rollout.percent, c.error
            ),
        ),
        _ if in_flight > 0 => Outcome::not_ready(
            Reason::Deploying,
            format!("{in_flight} of {} in flight; {counts}", c.targets),
        ),
        Some(rollout) if stage_left => Outcome::not_ready(
            Reason::Deploying,
            format!(
                "rollout at {}%, next stage {}; {counts}",
                rollout.percent,
                rollout.next_stage.as_deref().unwrap_or("pending")
            ),
        ),
        _ if c.error > 0 => Outcome::not_ready(
            Reason::DeploymentFailed,
            format!("{} of {} failed; {counts}", c.error, c.targets),
        ),
        _ if c.targets == 0 => Outcome::ready(
            Reason::Deployed,
            format!("no computer matches the targets; {counts}"),
        ),
        _ => Outcome::ready(Reason::Deployed, format!("all settled; {counts}")),
    };
    outcome.with_details(details)
}

/// Per Affectation, the error codes its targets reported for the package and token they
/// should have now, most frequent first (then by code).
fn error_codes(
    assignments: &[Assignment],
    computers: &[Computer],
    rows: &[Deployment],
) -> HashMap<String, Vec<(String, i64)>> {
    let index: HashMap<(&str, &str), &Deployment> = rows
        .iter()
        .map(|d| ((d.device_id.as_str(), d.activation.as_str()), d))
        .collect();
    let mut found: HashMap<String, HashMap<String, i64>> = HashMap::new();
    for computer in computers {
        for wanted in deployments::wanted(assignments, computer) {
            let Some(row) = index
                .get(&(computer.device_id.as_str(), wanted.activation))
                .filter(|d| d.package_id == wanted.package_id && d.token == wanted.token)
                .filter(|d| d.state == State::Error)
            else {
                continue;
            };
            let code = row.code.clone().unwrap_or_default();
            for assignment in assignments
                .iter()
                .filter(|a| a.activation == wanted.activation && a.targets(computer))
            {
                *found
                    .entry(assignment.affectation.clone())
                    .or_default()
                    .entry(code.clone())
                    .or_default() += 1;
            }
        }
    }
    found
        .into_iter()
        .map(|(affectation, codes)| {
            let mut codes: Vec<(String, i64)> = codes.into_iter().collect();
            codes.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            (affectation, codes)
        })
        .collect()
}

fn base_routes(spec: &ServerSpec) -> Routes {
    let seconds = |d: crate::resources::quantity::Duration| d.as_std().as_secs();
    let pacing = &spec.download;
    Routes {
        ocs_enabled: spec.ocs.enabled,
        ocs_path: spec.ocs.path.clone(),
        prolog_frequency_hours: u32::try_from((seconds(spec.prolog_frequency) / 3600).max(1))
            .unwrap_or(u32::MAX),
        download: DownloadConf {
            on: pacing.enabled,
            frag_latency: seconds(pacing.frag_latency),
            cycle_latency: seconds(pacing.cycle_latency),
            period_latency: seconds(pacing.period_latency),
            period_length: u64::try_from(pacing.period_length.max(1)).unwrap_or(1),
            timeout: (seconds(pacing.timeout) / 86_400).max(1),
            execution_timeout: (seconds(pacing.execution_timeout) / 60).max(1),
        },
        stale_after: i64::try_from(seconds(spec.stale_after)).unwrap_or(i64::MAX),
        forwarded: None,
        assignments: Vec::new(),
        packages: HashMap::new(),
        enrollment: None,
    }
}

fn native_action(action: &crate::resources::package::PackageAction) -> crate::protocol::v1::Action {
    use crate::protocol::v1::Action;
    if let Some(launch) = &action.launch {
        Action::Launch {
            command: launch.command.clone(),
        }
    } else if let Some(store) = &action.store {
        Action::Store {
            path: store.path.clone(),
        }
    } else {
        Action::Execute {
            command: action
                .execute
                .as_ref()
                .map(|e| e.command.clone())
                .unwrap_or_default(),
        }
    }
}

fn strip_scheme(location: &str) -> String {
    location
        .split_once("://")
        .map_or(location, |(_, rest)| rest)
        .trim_end_matches('/')
        .to_owned()
}

/// The family of a package's target OS.
pub(crate) fn family(os: Os) -> OsFamily {
    match os {
        Os::Windows => OsFamily::Windows,
        Os::Linux => OsFamily::Linux,
        Os::Macos => OsFamily::Macos,
    }
}

fn client_auth(mode: ClientAuthMode) -> ClientAuth {
    match mode {
        ClientAuthMode::None => ClientAuth::None,
        ClientAuthMode::Optional => ClientAuth::Optional,
        ClientAuthMode::Required => ClientAuth::Required,
    }
}

/// The outcome of an object waiting for `needed`, whose own outcome is `found`: `Pending`
/// while that one progresses, `DependencyFailed` (with its reason and message) once it
/// failed, since waiting would then never end by itself.
pub fn dependency(found: Option<&Outcome>, needed: &ObjectKey, waiting_for: String) -> Outcome {
    match found {
        Some(found) if !found.ready && found.reason.class() == Class::Failed => failed(
            Reason::DependencyFailed,
            format!(
                "{needed} is not ready ({}): {}",
                found.reason, found.message
            ),
        ),
        _ => waiting(waiting_for),
    }
}

fn waiting(message: String) -> Outcome {
    Outcome::not_ready(Reason::Pending, message)
}

fn failed(reason: Reason, message: String) -> Outcome {
    Outcome::not_ready(reason, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::kstatus;
    use crate::reconcile::outcome::{ConditionStatus, ConditionType};

    fn counts(waiting: i64, notified: i64, success: i64, error: i64) -> Counts {
        Counts {
            targets: waiting + notified + success + error,
            waiting,
            notified,
            success,
            error,
            ..Counts::default()
        }
    }

    fn facts(counts: Counts) -> RolloutFacts<'static> {
        RolloutFacts {
            package_id: "20260101000000",
            counts,
            error_codes: Vec::new(),
            rollout: None,
        }
    }

    /// (Ready, Reconciling, Stalled) as kstatus readers see them.
    fn read(outcome: &Outcome) -> (ConditionStatus, ConditionStatus, ConditionStatus) {
        let conditions = kstatus(outcome.ready, outcome.reason, outcome.message.clone());
        let status = |type_| {
            conditions
                .iter()
                .find(|c| c.type_ == type_)
                .map(|c| c.status)
                .unwrap()
        };
        (
            status(ConditionType::Ready),
            status(ConditionType::Reconciling),
            status(ConditionType::Stalled),
        )
    }

    use ConditionStatus::{False, True};

    #[test]
    fn an_affectation_is_reconciling_while_any_target_is_in_flight() {
        for c in [
            counts(3, 0, 0, 0),
            counts(0, 2, 1, 0),
            counts(0, 1, 0, 2),
            Counts {
                targets: 2,
                downloading: 1,
                installing: 1,
                ..Counts::default()
            },
            Counts {
                targets: 1,
                stale: 1,
                ..Counts::default()
            },
        ] {
            let outcome = affectation_outcome(&facts(c));
            assert_eq!(outcome.reason, Reason::Deploying, "{c:?}");
            assert_eq!(read(&outcome), (False, True, False), "{c:?}");
        }
        let outcome = affectation_outcome(&facts(counts(1, 2, 3, 0)));
        assert!(
            outcome.message.starts_with("3 of 6 in flight; package 20260101000000 to 6 targets: 3 success, 0 error, 1 waiting, 2 notified, 0 stale"),
            "{}",
            outcome.message
        );
    }

    #[test]
    fn an_affectation_is_ready_only_when_every_target_succeeded_or_there_is_none() {
        let outcome = affectation_outcome(&facts(counts(0, 0, 3, 0)));
        assert_eq!(outcome.reason, Reason::Deployed);
        assert_eq!(read(&outcome), (True, False, False));
        assert!(
            outcome.message.starts_with("all settled; "),
            "{}",
            outcome.message
        );
        let none = affectation_outcome(&facts(Counts::default()));
        assert_eq!(none.reason, Reason::Deployed);
        assert_eq!(read(&none), (True, False, False));
        assert!(none.message.starts_with("no computer matches the targets"));
        assert_eq!(none.details["targets"], 0);
        assert_eq!(none.details["counts"]["success"], 0);
    }

    #[test]
    fn a_settled_affectation_with_failures_is_failed_with_its_most_frequent_codes() {
        let mut f = facts(counts(0, 0, 2, 5));
        f.error_codes = vec![
            ("ERR_EXECUTE".into(), 3),
            ("ERR_DOWNLOAD".into(), 1),
            ("ERR_TIMEOUT".into(), 1),
            ("ERR_RARE".into(), 1),
        ];
        let outcome = affectation_outcome(&f);
        assert_eq!(outcome.reason, Reason::DeploymentFailed);
        assert_eq!(read(&outcome), (False, False, True));
        assert!(
            outcome.message.starts_with("5 of 7 failed; "),
            "{}",
            outcome.message
        );
        assert!(
            outcome.message.ends_with(
                "error codes: \"ERR_EXECUTE\" ×3, \"ERR_DOWNLOAD\" ×1, \"ERR_TIMEOUT\" ×1"
            ),
            "{}",
            outcome.message
        );
        // A code as long as an agent may send is cut in the message.
        f.error_codes = vec![("E".repeat(10_000), 5)];
        let outcome = affectation_outcome(&f);
        assert!(outcome.message.len() < 300, "{}", outcome.message);
    }

    #[test]
    fn a_staged_rollout_is_deploying_until_its_last_stage_and_paused_by_its_gate() {
        let mut f = facts(counts(0, 0, 4, 0));
        f.rollout = Some(RolloutStatus {
            percent: 20,
            paused: false,
            next_stage: Some("2026-01-02T00:00:00Z".into()),
        });
        let outcome = affectation_outcome(&f);
        assert_eq!(outcome.reason, Reason::Deploying);
        assert_eq!(read(&outcome), (False, True, False));
        assert!(
            outcome
                .message
                .starts_with("rollout at 20%, next stage 2026-01-02T00:00:00Z; "),
            "{}",
            outcome.message
        );
        assert_eq!(outcome.details["rollout"]["percent"], 20);

        let mut f = facts(counts(3, 0, 0, 1));
        f.rollout = Some(RolloutStatus {
            percent: 20,
            paused: true,
            next_stage: None,
        });
        let outcome = affectation_outcome(&f);
        assert_eq!(outcome.reason, Reason::RolloutPaused);
        assert_eq!(read(&outcome), (False, False, True));
        assert!(
            outcome
                .message
                .starts_with("rollout paused at 20%: 1 errors reached spec.rollout.maxErrors; "),
            "{}",
            outcome.message
        );
        assert_eq!(outcome.details["rollout"]["paused"], true);

        // The last stage reached, all settled successfully: deployed.
        let mut f = facts(counts(0, 0, 4, 0));
        f.rollout = Some(RolloutStatus {
            percent: 100,
            paused: false,
            next_stage: None,
        });
        assert_eq!(affectation_outcome(&f).reason, Reason::Deployed);
    }

    #[test]
    fn waiting_for_what_failed_is_failed_not_pending() {
        let package = ObjectKey::new(Kind::Package, "default", "hello");
        let waiting = || "waiting for Package/hello to be built".to_owned();
        let building = dependency(None, &package, waiting());
        assert_eq!(building.reason, Reason::Pending);
        assert_eq!(read(&building), (False, True, False));
        let broken = Outcome::not_ready(Reason::BuildFailed, "setup.exe: not found".into());
        let outcome = dependency(Some(&broken), &package, waiting());
        assert_eq!(outcome.reason, Reason::DependencyFailed);
        assert_eq!(read(&outcome), (False, False, True));
        assert!(
            outcome
                .message
                .ends_with("is not ready (BuildFailed): setup.exe: not found"),
            "{}",
            outcome.message
        );
        // A dependency still progressing is waited for.
        let retrying = Outcome::not_ready(Reason::Pending, "waiting".into());
        assert_eq!(
            dependency(Some(&retrying), &package, waiting()).reason,
            Reason::Pending
        );
    }

    #[test]
    fn a_server_is_ready_only_when_every_listener_asked_for_is_bound() {
        let https: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let http: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let bound_https: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        assert_eq!(listening(&[https, http], &[]), Listening::Starting);
        let both = listening(&[https, http], &[bound_https, http]);
        assert_eq!(both, Listening::Serving(vec![bound_https, http]));
        let outcome = server_outcome(both);
        assert_eq!(outcome.reason, Reason::Serving);
        assert_eq!(read(&outcome), (True, False, False));

        // The plain-HTTP listener failed to bind (its port was taken).
        let partial = listening(&[https, http], &[bound_https]);
        assert_eq!(
            partial,
            Listening::Missing {
                bound: vec![bound_https],
                missing: vec![http],
            }
        );
        let outcome = server_outcome(partial);
        assert_eq!(outcome.reason, Reason::BindFailed);
        assert_eq!(read(&outcome), (False, False, True));
        assert_eq!(
            outcome.message,
            "failed to bind 127.0.0.1:8080 (see the log); listening on 127.0.0.1:40001 only"
        );

        // Still bound to the previous spec's addresses: starting on the new ones.
        let moved: SocketAddr = "127.0.0.1:9443".parse().unwrap();
        assert_eq!(listening(&[moved], &[bound_https]), Listening::Starting);
        let outcome = server_outcome(Listening::Starting);
        assert_eq!(read(&outcome), (False, True, False));
    }
}
