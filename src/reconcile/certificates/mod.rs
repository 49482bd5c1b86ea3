//! Issuers and Certificates: each pass makes sure every Issuer has its CA and every
//! Certificate a valid certificate matching its spec, issuing where the renewal chain says
//! so, and says when the next renewal is due.
//!
//! Layout under the state directory:
//! - `pki/issuers/<namespace>/<name>/ca.crt`, `ca.key` (0600): a `selfSigned` issuer's CA,
//!   made once and kept, also when the Issuer is removed (a new CA would strand every agent
//!   that trusts the old one; delete the directory to discard it).
//! - `certificates/<namespace>/<name>/tls.crt` (leaf and intermediates), `tls.key` (0600),
//!   `ca.crt` (the root), or the Certificate's `outputDirectory`.
//! - `pki/certificates/<namespace>/<name>.json`: the revision and the times of the latest
//!   issuances, kept across restarts: `renewal::decide` holds an issuance beyond
//!   `renewal::MAX_ISSUANCES_PER_INTERVAL` per `renewal::MIN_INTERVAL`, so no certificate is
//!   issued in a loop, whatever the reason and across restarts.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::desired::DesiredState;
use crate::pki::authority::{self, Authority, LeafRequest};
use crate::pki::renewal::{self, Decision, Existing, RenewBefore, Wanted};
use crate::pki::{KeyType, Names, PkiError, Usage};
use crate::pki::{facts, keystore};
use crate::resources::certificate::{KeyUsage, KeystorePassword, Keystores};
use crate::resources::issuer::{KeyAlgorithm, PrivateKeySpec, RotationPolicy};
use crate::resources::{Certificate, Issuer, Kind, ObjectKey, Resource};
use crate::store::atomic::{self, Access};

use super::outcome::{Outcome, Reason};
use super::secrets::{SECRET_FILES, Secrets, TlsSecret};

/// Default lifetime of a self-signed CA: 10 years.
const DEFAULT_CA_LIFETIME: jiff::SignedDuration = jiff::SignedDuration::from_hours(87_600);
/// Default lifetime of a certificate: 90 days, as cert-manager.
const DEFAULT_LIFETIME: jiff::SignedDuration = jiff::SignedDuration::from_hours(2_160);
/// First retry after a failed issuance; doubles on each failure up to `MAX_BACKOFF`.
const FIRST_BACKOFF: jiff::SignedDuration = jiff::SignedDuration::from_mins(1);
const MAX_BACKOFF: jiff::SignedDuration = jiff::SignedDuration::from_hours(1);
/// A Secret that could not be written is tried again this soon (the API server may be
/// restarting, or RBAC being fixed).
const SECRET_RETRY: jiff::SignedDuration = jiff::SignedDuration::from_secs(30);
/// Default overlap of a CA rollover: a month for clients to learn the new CA.
const DEFAULT_ROLLOVER_OVERLAP: jiff::SignedDuration = jiff::SignedDuration::from_hours(720);

/// Where an issuer's CA comes from.
enum CaSource {
    /// Made by Tessera (`selfSigned`).
    Generated {
        common_name: String,
        key_type: KeyType,
        lifetime: jiff::SignedDuration,
    },
    /// The operator's PEM files (`ca.certFile`, `ca.keyFile`).
    Supplied { chain: String, key: String },
}

/// A CA rollover in progress, in `pki/issuers/<namespace>/<name>/rollover.json`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RolloverState {
    phase: RolloverPhase,
    /// RFC 3339.
    started: String,
    /// When the new CA starts signing (RFC 3339).
    reissue_at: String,
}

impl RolloverState {
    fn reissue_at(&self) -> jiff::Timestamp {
        self.reissue_at
            .parse()
            .unwrap_or_else(|_| jiff::Timestamp::now())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum RolloverPhase {
    Overlap,
    Reissuing,
}

/// What an issuer's pass says of rollover: its phase, and when the next step is due.
#[derive(Clone, Debug, Default)]
struct Rollover {
    phase: Option<&'static str>,
    next: Option<jiff::Timestamp>,
}

/// When a CA should start rolling over: when a third of its life remains, or twice the
/// overlap if that is longer, so the overlap ends well before the old CA does.
fn rollover_start(ca: &facts::CertFacts, overlap: jiff::SignedDuration) -> jiff::Timestamp {
    ca.not_after - (ca.lifetime() / 3).max(overlap * 2)
}

/// Default validity of a CRL: a week, refreshed after 2/3 of it.
const DEFAULT_CRL_VALIDITY: jiff::SignedDuration = jiff::SignedDuration::from_hours(168);

/// An issuer's revocations, in `pki/issuers/<namespace>/<name>/revoked.json`.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Revocations {
    /// Number of the last CRL published.
    crl_number: u64,
    /// Certificates revoked through `revoked: true`.
    certificates: Vec<RevokedEntry>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct RevokedEntry {
    serial: String,
    /// RFC 3339.
    at: String,
    /// The Certificate it belonged to.
    certificate: String,
}

/// The CA certificates and CRLs a listener verifies clients with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trust {
    pub cas: Vec<String>,
    pub crls: Vec<String>,
    pub every_ca_has_crl: bool,
}

impl Trust {
    /// The rustls verifier for `mode`: strict about revocation when every CA has a CRL.
    pub fn verifier(
        &self,
        mode: crate::pki::tls::ClientAuth,
    ) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, PkiError> {
        use rustls::pki_types::CertificateRevocationListDer;
        use rustls::pki_types::pem::PemObject;
        let crls = self
            .crls
            .iter()
            .filter_map(|pem| CertificateRevocationListDer::from_pem_slice(pem.as_bytes()).ok())
            .collect();
        if self.every_ca_has_crl {
            crate::pki::tls::client_verifier(mode, &self.cas, crls)
        } else {
            crate::pki::tls::client_verifier_partial_crls(mode, &self.cas, crls)
        }
    }
}

/// Reads a named value of the process environment (keystore passwords from `passwordEnv`).
/// Handed in by `cli`, the only place that reads the environment; tests pass their own.
#[derive(Clone)]
pub struct Environment(Arc<Lookup>);

/// A function from a variable's name to its value.
type Lookup = dyn Fn(&str) -> Option<String> + Send + Sync;

impl Environment {
    /// An environment that answers with `lookup`.
    pub fn new(lookup: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Self {
        Self(Arc::new(lookup))
    }

    fn get(&self, name: &str) -> Option<String> {
        (self.0)(name)
    }
}

impl std::fmt::Debug for Environment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Environment")
    }
}

impl Default for Environment {
    /// An empty environment.
    fn default() -> Self {
        Self::new(|_| None)
    }
}

/// Issuers and certificates between passes.
pub struct Certificates {
    state_dir: PathBuf,
    config_dir: PathBuf,
    environment: Environment,
    authorities: HashMap<ObjectKey, Arc<Authority>>,
    failures: HashMap<ObjectKey, Failure>,
    /// The latest issuances of each certificate (read from its record file the first time).
    issuances: HashMap<ObjectKey, Record>,
    /// Kubernetes mode: CA key pairs read from, and certificates also written to, Secrets.
    secrets: Option<Arc<dyn Secrets>>,
}

/// What is kept of a certificate's issuances, in `pki/certificates/<namespace>/<name>.json`.
#[derive(Clone, Debug, Default)]
struct Record {
    /// Issuances so far (1 for the first).
    revision: i64,
    /// The latest issuances, oldest first, at most `renewal::MAX_ISSUANCES_PER_INTERVAL`.
    issued_at: Vec<jiff::Timestamp>,
}

impl Record {
    /// `{"revision": 3, "issuedAt": ["2026-01-01T00:00:00Z", ...]}`; a file of older
    /// versions holds the revision alone.
    fn from_json(value: &Value) -> Self {
        Self {
            revision: value["revision"].as_i64().unwrap_or(0),
            issued_at: value["issuedAt"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|at| at.as_str()?.parse().ok())
                .collect(),
        }
    }

    /// Both records in one: the higher revision, the latest issuances of either.
    fn merge(mut self, other: &Record) -> Self {
        self.revision = self.revision.max(other.revision);
        self.issued_at.extend_from_slice(&other.issued_at);
        self.trim();
        self
    }

    /// Sorted, without duplicates, the latest `renewal::MAX_ISSUANCES_PER_INTERVAL` only.
    fn trim(&mut self) {
        self.issued_at.sort();
        self.issued_at.dedup();
        let excess = self
            .issued_at
            .len()
            .saturating_sub(renewal::MAX_ISSUANCES_PER_INTERVAL);
        self.issued_at.drain(..excess);
    }

    fn to_json(&self) -> Value {
        let issued_at: Vec<String> = self.issued_at.iter().map(ToString::to_string).collect();
        json!({ "revision": self.revision, "issuedAt": issued_at })
    }
}

/// The last failed issuance of a certificate.
#[derive(Clone, Debug)]
struct Failure {
    count: u32,
    at: jiff::Timestamp,
    retry_at: jiff::Timestamp,
    message: String,
    /// The spec that failed: a changed spec is tried at once.
    spec: Value,
}

impl Certificates {
    /// Certificates kept under `state_dir`; relative file names in Issuers are resolved from
    /// the directory of the file that declares them, below `config_dir`.
    pub fn new(state_dir: PathBuf, config_dir: PathBuf, environment: Environment) -> Self {
        Self {
            state_dir,
            config_dir,
            environment,
            authorities: HashMap::new(),
            failures: HashMap::new(),
            issuances: HashMap::new(),
            secrets: None,
        }
    }

    /// The same, reading and writing Secrets through `secrets` (Kubernetes mode).
    pub fn with_secrets(mut self, secrets: Option<Arc<dyn Secrets>>) -> Self {
        self.secrets = secrets;
        self
    }

    /// Resolves relative file names below `config_dir` from now on (a git source checks
    /// each commit out into its own directory).
    pub fn set_config_dir(&mut self, config_dir: PathBuf) {
        self.config_dir = config_dir;
    }

    /// Converges every Issuer and Certificate of `desired`. Returns an outcome per object and
    /// the earliest time something is due (a renewal or a retry).
    pub fn reconcile(
        &mut self,
        desired: &DesiredState,
        now: jiff::Timestamp,
    ) -> (HashMap<ObjectKey, Outcome>, Option<jiff::Timestamp>) {
        let mut outcomes = HashMap::new();
        let mut wake: Option<jiff::Timestamp> = None;
        let mut due =
            |at: jiff::Timestamp| wake = Some(wake.map_or(at, |w: jiff::Timestamp| w.min(at)));
        self.authorities
            .retain(|key, _| desired.entries.contains_key(key));
        self.failures
            .retain(|key, _| desired.entries.contains_key(key));
        self.issuances
            .retain(|key, _| desired.entries.contains_key(key));

        // Issuers that sign with an `isCA` Certificate need that certificate first, which needs
        // its own issuer: a few rounds settle any chain of intermediates. Kinds are visited in
        // key order, Issuers before Certificates.
        for round in 0..4 {
            let ready_before = outcomes.values().filter(|o: &&Outcome| o.ready).count();
            for (key, resource) in desired.actionable() {
                if outcomes.get(key).is_some_and(|o: &Outcome| o.ready) {
                    continue;
                }
                let outcome = match resource {
                    Resource::Issuer(issuer) => {
                        let outcome = self.issuer(key, issuer, desired, now);
                        if let Some(next) = outcome.wake {
                            due(next);
                        }
                        outcome
                    }
                    Resource::Certificate(certificate) => {
                        let (outcome, next) = self.certificate(key, certificate, desired, now);
                        if let Some(next) = next {
                            due(next);
                        }
                        outcome
                    }
                    _ => continue,
                };
                outcomes.insert(key.clone(), outcome);
            }
            if round > 0 && outcomes.values().filter(|o| o.ready).count() == ready_before {
                break;
            }
        }
        for (key, outcome) in outcomes.iter_mut() {
            if key.kind == Kind::Issuer && outcome.ready && self.complete_rollover(key, desired) {
                // The bundle shrinks on the next pass, right away.
                outcome
                    .details
                    .insert("rolloverPhase".into(), json!("Complete"));
                due(now);
            }
            if key.kind == Kind::Issuer
                && outcome.ready
                && let Some(next) = self.publish_crl(key, desired, outcome, now)
            {
                due(next);
            }
        }
        if let Some(secrets) = &self.secrets {
            for (key, outcome) in outcomes.iter_mut() {
                if key.kind == Kind::Certificate
                    && outcome.ready
                    && let Some(Resource::Certificate(certificate)) =
                        desired.entries.get(key).and_then(|e| e.resource())
                    && let Err(message) =
                        self.write_secret(secrets.as_ref(), key, certificate, desired)
                {
                    outcome.ready = false;
                    outcome.reason = Reason::SecretWriteFailed;
                    outcome.message = message;
                    due(now + SECRET_RETRY);
                }
            }
        }
        if !desired.held_back {
            self.prune(desired);
        }
        (outcomes, wake)
    }

    /// A follower's pass (another server leads): issues, renews and writes nothing; loads
    /// the authorities from the files the leader shared (enrollment signs with them) and
    /// reports each Issuer and Certificate as ready once its files are there.
    pub fn follow(&mut self, desired: &DesiredState) -> HashMap<ObjectKey, Outcome> {
        self.authorities
            .retain(|key, _| desired.entries.contains_key(key));
        let mut outcomes = HashMap::new();
        for (key, resource) in desired.actionable() {
            let outcome = match resource {
                Resource::Issuer(issuer) => {
                    let reference = issuer
                        .spec
                        .ca
                        .as_ref()
                        .and_then(|ca| ca.certificate_ref.as_ref());
                    let pair = match reference {
                        Some(reference) => read_pair(&self.output_dir(
                            &ObjectKey::referenced(Kind::Certificate, &key.namespace, reference),
                            desired,
                        )),
                        None => {
                            let dir = self.issuer_dir(key);
                            std::fs::read_to_string(dir.join("ca.crt"))
                                .ok()
                                .zip(std::fs::read_to_string(dir.join("ca.key")).ok())
                                .map(|(chain, key)| (chain, key, None))
                        }
                    };
                    match pair.map(|(chain, key_pem, root)| {
                        Authority::from_pem(&chain, &key_pem, root.as_deref())
                    }) {
                        Some(Ok(authority)) => {
                            self.authorities.insert(key.clone(), Arc::new(authority));
                            following("the leader manages this CA")
                        }
                        Some(Err(error)) => Outcome::not_ready(
                            Reason::Following,
                            format!("the CA the leader shared cannot be used: {error}"),
                        ),
                        None => Outcome::not_ready(
                            Reason::Following,
                            "waiting for the leader to share this CA".into(),
                        ),
                    }
                }
                Resource::Certificate(_) => match read_pair(&self.output_dir(key, desired)) {
                    Some(_) => following("the leader issues and renews this certificate"),
                    None => Outcome::not_ready(
                        Reason::Following,
                        "waiting for the leader to share this certificate".into(),
                    ),
                },
                _ => continue,
            };
            outcomes.insert(key.clone(), outcome);
        }
        outcomes
    }

    /// The directories below the state directory that hold what the leader issues (CAs,
    /// revocations, certificates and their keystores), relative to it: what several servers
    /// share.
    pub fn shared_dirs(&self, desired: &DesiredState) -> Vec<PathBuf> {
        let mut dirs = vec![PathBuf::from("pki"), PathBuf::from("certificates")];
        for (key, resource) in desired.actionable() {
            if let Resource::Certificate(_) = resource
                && let Ok(relative) = self.output_dir(key, desired).strip_prefix(&self.state_dir)
                && super::replicate::is_plain(relative)
                && !dirs.iter().any(|d| relative.starts_with(d))
            {
                dirs.push(relative.to_path_buf());
            }
        }
        dirs
    }

    fn issuer(
        &mut self,
        key: &ObjectKey,
        issuer: &Issuer,
        desired: &DesiredState,
        now: jiff::Timestamp,
    ) -> Outcome {
        let mut rollover = Rollover::default();
        let loaded = match (&issuer.spec.self_signed, &issuer.spec.ca) {
            (Some(self_signed), _) => {
                let overlap = issuer
                    .spec
                    .rollover_overlap
                    .map_or(DEFAULT_ROLLOVER_OVERLAP, |d| signed(d.as_std()));
                let source = CaSource::Generated {
                    common_name: self_signed
                        .common_name
                        .clone()
                        .unwrap_or_else(|| key.name.clone()),
                    key_type: key_type(self_signed.private_key.as_ref()),
                    lifetime: self_signed
                        .duration
                        .map_or(DEFAULT_CA_LIFETIME, |d| signed(d.as_std())),
                };
                self.managed_ca(key, source, overlap, now)
                    .map(|(authority, state)| {
                        rollover = state;
                        authority
                    })
            }
            (None, Some(ca)) => {
                if let Some(reference) = &ca.certificate_ref {
                    let certificate =
                        ObjectKey::referenced(Kind::Certificate, &key.namespace, reference);
                    let is_ca = desired
                        .entries
                        .get(&certificate)
                        .and_then(|e| e.resource())
                        .is_some_and(|r| matches!(r, Resource::Certificate(c) if c.spec.is_ca));
                    if !is_ca {
                        return not_ready(
                            Reason::CertificateNotCA,
                            format!("{certificate} must have isCA: true to sign for this issuer"),
                        );
                    }
                    let dir = self.output_dir(&certificate, desired);
                    match read_pair(&dir) {
                        Some((chain, key_pem, root)) => {
                            Authority::from_pem(&chain, &key_pem, root.as_deref())
                                .map_err(|e| e.to_string())
                        }
                        None => {
                            return not_ready(
                                Reason::Pending,
                                format!("waiting for {certificate} to be issued"),
                            );
                        }
                    }
                } else if let (Some(cert_file), None) = (&ca.cert_file, &ca.key_file) {
                    let base = super::declaring_dir(&self.config_dir, desired, key);
                    self.authorities.remove(key);
                    return self.trust_only(key, &base, cert_file, ca.crl_file.as_deref(), now);
                } else {
                    let supplied = if let (Some(cert_file), Some(key_file)) =
                        (&ca.cert_file, &ca.key_file)
                    {
                        let base = super::declaring_dir(&self.config_dir, desired, key);
                        let read = |name: &str| {
                            let path = base.join(name);
                            std::fs::read_to_string(&path)
                                .map_err(|e| format!("failed to read {}: {e}", path.display()))
                        };
                        read(cert_file).and_then(|chain| read(key_file).map(|k| (chain, k)))
                    } else if let (Some(secret), Some(secrets)) = (&ca.secret_name, &self.secrets) {
                        secrets.read_key_pair(&key.namespace, secret)
                    } else {
                        return not_ready(
                            Reason::SecretsNeedKubernetes,
                            "secretName is read in Kubernetes mode; in directory mode use certFile and keyFile".into(),
                        );
                    };
                    let overlap = issuer
                        .spec
                        .rollover_overlap
                        .map_or(DEFAULT_ROLLOVER_OVERLAP, |d| signed(d.as_std()));
                    supplied
                        .map(|(chain, key_pem)| CaSource::Supplied {
                            chain,
                            key: key_pem,
                        })
                        .and_then(|source| {
                            // Checked before it is kept: a bad pair must not replace a good one.
                            if let CaSource::Supplied {
                                chain,
                                key: key_pem,
                            } = &source
                            {
                                Authority::from_pem(chain, key_pem, None)
                                    .map_err(|e| e.to_string())?;
                            }
                            self.managed_ca(key, source, overlap, now)
                        })
                        .map(|(authority, state)| {
                            rollover = state;
                            authority
                        })
                }
            }
            (None, None) => return not_ready(Reason::InvalidSpec, "no issuer type".into()),
        };
        match loaded {
            Ok(authority) => {
                let facts = authority.facts().clone();
                self.authorities.insert(key.clone(), Arc::new(authority));
                let mut details = Map::new();
                details.insert("subject".into(), json!(facts.subject));
                details.insert("serialNumber".into(), json!(facts.serial));
                details.insert("notAfter".into(), json!(facts.not_after.to_string()));
                if let Some(phase) = rollover.phase {
                    details.insert("rolloverPhase".into(), json!(phase));
                }
                if facts.not_after <= now {
                    return Outcome {
                        ready: false,
                        reason: Reason::Expired,
                        message: format!("the CA certificate expired at {}", facts.not_after),
                        details,
                        issuing: None,
                        wake: None,
                    };
                }
                let message = match rollover.phase {
                    Some(phase) => format!(
                        "signing as {} until {}; CA rollover: {phase}",
                        facts.subject, facts.not_after
                    ),
                    None => format!("signing as {} until {}", facts.subject, facts.not_after),
                };
                Outcome {
                    ready: true,
                    reason: Reason::KeyPairVerified,
                    message,
                    details,
                    issuing: None,
                    wake: rollover.next,
                }
            }
            Err(message) => {
                self.authorities.remove(key);
                not_ready(Reason::ErrorLoadingCA, message)
            }
        }
    }

    /// Loads an issuer's CA (kept under `pki/issuers/`), takes it into use the first time,
    /// and walks a CA rollover when the trust anchor changes: a self-signed CA that nears its
    /// end or whose spec (common name, key) changes, or CA files replaced by others under
    /// another root. A copy of the CA in use is kept so the old key can still cross-sign:
    ///
    /// 1. `Overlap`: a new CA is made (`next/`); clients are given both CAs (`ca.crt` of every
    ///    Certificate of this issuer); leaves are still signed by the old one. It lasts
    ///    `rolloverOverlap`.
    /// 2. `Reissuing`: the new CA signs, with a cross-certificate (the new CA certified by the
    ///    old key) sent after each leaf, so clients that only know the old CA still verify;
    ///    every leaf is re-issued (its issuer changed).
    /// 3. Once every leaf comes from the new CA, the old CA leaves the bundle. Leaves keep the
    ///    cross-certificate until it expires with the old CA.
    fn managed_ca(
        &self,
        key: &ObjectKey,
        source: CaSource,
        overlap: jiff::SignedDuration,
        now: jiff::Timestamp,
    ) -> Result<(Authority, Rollover), String> {
        let dir = self.issuer_dir(key);
        let read = |path: &Path| {
            std::fs::read_to_string(path)
                .map_err(|e| format!("failed to read {}: {e}", path.display()))
        };
        let load = |sub: &Path| -> Result<Authority, String> {
            let chain = read(&sub.join("ca.crt"))?;
            let key_pem = read(&sub.join("ca.key"))?;
            Authority::from_pem(&chain, &key_pem, None)
                .map_err(|e| format!("{} cannot be used, and is not replaced: {e}", sub.display()))
        };
        let keep = |sub: &Path, authority: &Authority, chain: &str| -> Result<(), String> {
            atomic::write(
                &sub.join("ca.key"),
                authority.key_pem().as_bytes(),
                Access::OwnerOnly,
            )
            .map_err(|e| e.to_string())?;
            atomic::write(&sub.join("ca.crt"), chain.as_bytes(), Access::Public)
                .map_err(|e| e.to_string())
        };
        // The CA the source offers now: made fresh, or the operator's files.
        let offered = |sub: &Path| -> Result<Authority, String> {
            let (authority, chain) = match &source {
                CaSource::Generated {
                    common_name,
                    key_type,
                    lifetime,
                } => {
                    let authority = Authority::generate(common_name, *key_type, now, *lifetime)
                        .map_err(|e| e.to_string())?;
                    let pem = authority.certificate_pem().to_owned();
                    (authority, pem)
                }
                CaSource::Supplied { chain, key } => (
                    Authority::from_pem(chain, key, None).map_err(|e| e.to_string())?,
                    chain.clone(),
                ),
            };
            keep(sub, &authority, &chain)?;
            Ok(authority)
        };

        if !dir.join("ca.crt").exists() && !dir.join("ca.key").exists() {
            let authority = offered(&dir)?;
            tracing::info!(issuer = %key, subject = %authority.facts().subject, "took a CA into use");
        }
        // Never overwrite a CA that cannot be read: agents trust it.
        let mut active = load(&dir)?;
        let mut state = self.rollover_state(key);

        if state.is_none() {
            let facts = active.facts().clone();
            let why = match &source {
                CaSource::Generated {
                    common_name,
                    key_type,
                    ..
                } => {
                    if facts.names.common_name.as_deref() != Some(common_name.as_str())
                        || facts.key_type != Some(*key_type)
                    {
                        Some("its spec changed")
                    } else if now >= rollover_start(&facts, overlap) {
                        Some("it nears its end")
                    } else {
                        None
                    }
                }
                CaSource::Supplied {
                    chain,
                    key: key_pem,
                } => {
                    let supplied =
                        Authority::from_pem(chain, key_pem, None).map_err(|e| e.to_string())?;
                    if supplied.facts().public_key == facts.public_key {
                        None
                    } else if supplied.root_pem() == active.root_pem() {
                        // Same trust anchor (another intermediate of the same root): clients
                        // already trust it, so it takes over at once.
                        keep(&dir, &supplied, chain)?;
                        tracing::info!(issuer = %key, subject = %supplied.facts().subject, "new CA files under the same root: in use at once");
                        active = supplied;
                        None
                    } else {
                        Some("its files now hold another CA")
                    }
                }
            };
            if let Some(why) = why {
                let next = offered(&dir.join("next"))?;
                let started = RolloverState {
                    phase: RolloverPhase::Overlap,
                    started: now.to_string(),
                    reissue_at: (now + overlap).to_string(),
                };
                self.save_rollover(key, &started)?;
                tracing::info!(issuer = %key, new = %next.facts().serial, reason = why, reissue_at = %started.reissue_at, "CA rollover: overlap begins");
                state = Some(started);
            }
        }
        if let Some(current) = &state
            && current.phase == RolloverPhase::Overlap
            && now >= current.reissue_at()
        {
            let next = load(&dir.join("next"))?;
            let cross = active.cross_sign(&next, now).map_err(|e| e.to_string())?;
            // Clients that know only the old root verify the new CA through the cross-certificate,
            // then through the old CA's own intermediates, if it had any.
            let old_chain = read(&dir.join("ca.crt"))?;
            let old_is_root = active.facts().issuer_der == active.facts().subject_der;
            let old_intermediates = if old_is_root {
                String::new()
            } else {
                old_chain
                    .strip_suffix(active.root_pem())
                    .unwrap_or(&old_chain)
                    .to_owned()
            };
            atomic::write(
                &dir.join("previous.crt"),
                active.root_pem().as_bytes(),
                Access::Public,
            )
            .map_err(|e| e.to_string())?;
            atomic::write(
                &dir.join("cross.crt"),
                format!("{cross}{old_intermediates}").as_bytes(),
                Access::Public,
            )
            .map_err(|e| e.to_string())?;
            let next_chain = read(&dir.join("next/ca.crt"))?;
            keep(&dir, &next, &next_chain)?;
            let _ = std::fs::remove_dir_all(dir.join("next"));
            let reissuing = RolloverState {
                phase: RolloverPhase::Reissuing,
                ..current.clone()
            };
            self.save_rollover(key, &reissuing)?;
            tracing::info!(issuer = %key, serial = %next.facts().serial, "CA rollover: the new CA signs; re-issuing every certificate");
            state = Some(reissuing);
            active = next;
        }

        // The cross-certificate, while it is for this CA and still valid.
        let cross = std::fs::read_to_string(dir.join("cross.crt"))
            .ok()
            .filter(|pem| {
                facts::pem_certificates(pem)
                    .ok()
                    .and_then(|c| facts::read(&c[0]).ok())
                    .is_some_and(|f| f.public_key == active.facts().public_key && f.not_after > now)
            });
        let own = active.root_pem().to_owned();
        let (intermediates, bundle, rollover) = match state.as_ref().map(|s| s.phase) {
            Some(RolloverPhase::Overlap) => {
                let next = load(&dir.join("next"))?.root_pem().to_owned();
                let at = state.as_ref().map(RolloverState::reissue_at);
                (
                    cross.unwrap_or_default(),
                    format!("{own}{next}"),
                    Rollover {
                        phase: Some("Overlap"),
                        next: at,
                    },
                )
            }
            Some(RolloverPhase::Reissuing) => {
                let previous = read(&dir.join("previous.crt"))?;
                (
                    cross.unwrap_or_default(),
                    format!("{previous}{own}"),
                    Rollover {
                        phase: Some("Reissuing"),
                        next: None,
                    },
                )
            }
            None => {
                let next = rollover_start(active.facts(), overlap);
                (
                    cross.unwrap_or_default(),
                    own,
                    Rollover {
                        phase: None,
                        next: Some(next),
                    },
                )
            }
        };
        Ok((active.with_chain(intermediates, bundle), rollover))
    }

    /// Ends a rollover in `Reissuing` once every Certificate of `issuer` is signed by the new
    /// CA: the old CA leaves the trust bundle. Returns whether it ended.
    fn complete_rollover(&self, issuer: &ObjectKey, desired: &DesiredState) -> bool {
        let Some(state) = self.rollover_state(issuer) else {
            return false;
        };
        if state.phase != RolloverPhase::Reissuing {
            return false;
        }
        let Some(authority) = self.authorities.get(issuer) else {
            return false;
        };
        let all_reissued = desired.actionable().all(|(key, resource)| match resource {
            Resource::Certificate(c)
                if ObjectKey::referenced(Kind::Issuer, &key.namespace, &c.spec.issuer_ref)
                    == *issuer =>
            {
                std::fs::read_to_string(self.output_dir(key, desired).join("tls.crt"))
                    .ok()
                    .and_then(|pem| facts::pem_certificates(&pem).ok())
                    .and_then(|chain| facts::read(&chain[0]).ok())
                    .is_some_and(|f| f.issued_by(authority.facts()))
            }
            _ => true,
        });
        if all_reissued {
            let dir = self.issuer_dir(issuer);
            let _ = std::fs::remove_file(dir.join("previous.crt"));
            let _ = std::fs::remove_file(dir.join("rollover.json"));
            tracing::info!(issuer = %issuer, "CA rollover complete: the old CA left the trust bundle");
        }
        all_reissued
    }

    fn rollover_state(&self, issuer: &ObjectKey) -> Option<RolloverState> {
        let bytes = std::fs::read(self.issuer_dir(issuer).join("rollover.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn save_rollover(&self, issuer: &ObjectKey, state: &RolloverState) -> Result<(), String> {
        let body = serde_json::to_vec_pretty(state).map_err(|e| e.to_string())?;
        atomic::write(
            &self.issuer_dir(issuer).join("rollover.json"),
            &body,
            Access::Public,
        )
        .map_err(|e| e.to_string())
    }

    fn certificate(
        &mut self,
        key: &ObjectKey,
        certificate: &Certificate,
        desired: &DesiredState,
        now: jiff::Timestamp,
    ) -> (Outcome, Option<jiff::Timestamp>) {
        let spec = &certificate.spec;
        let issuer_key = ObjectKey::referenced(Kind::Issuer, &key.namespace, &spec.issuer_ref);
        let Some(authority) = self.authorities.get(&issuer_key).cloned() else {
            let trust_only = matches!(
                desired.entries.get(&issuer_key).and_then(|e| e.resource()),
                Some(Resource::Issuer(issuer)) if issuer.spec.ca.as_ref().is_some_and(|ca| ca.cert_file.is_some() && ca.key_file.is_none())
            );
            if trust_only {
                return (
                    not_ready(
                        Reason::IssuerCannotSign,
                        format!(
                            "{issuer_key} is trust-only (certFile without keyFile): it holds no key to sign with"
                        ),
                    ),
                    None,
                );
            }
            return (
                not_ready(Reason::IssuerNotReady, format!("waiting for {issuer_key}")),
                None,
            );
        };
        let wanted = wanted(certificate);
        let dir = self.output_dir(key, desired);
        let revoked = self.revoked_serials(&issuer_key, desired);
        let existing = existing(&dir, &revoked);
        let record = self.record(key);
        let revision = record.revision;
        if spec.revoked {
            return (
                self.revoke(key, &issuer_key, &existing, revision, now),
                None,
            );
        }
        let decision = renewal::decide(
            &existing,
            &wanted,
            authority.facts(),
            &record.issued_at,
            now,
        );
        let reason = match decision {
            Decision::Hold { reason, until } => {
                tracing::warn!(certificate = %key, %reason, %until, "issuance held: issued too often");
                let outcome = held_certificate(&existing, &reason, until, revision);
                return (outcome, Some(until));
            }
            Decision::Keep { renew_at } => {
                self.failures.remove(key);
                let Existing::Present { facts, .. } = &existing else {
                    unreachable!("kept certificates exist")
                };
                // The trust bundle changes during a CA rollover while leaves are kept.
                if let Err(error) = atomic::write_if_changed(
                    &dir.join("ca.crt"),
                    authority.root_pem().as_bytes(),
                    Access::Public,
                ) {
                    tracing::warn!(certificate = %key, %error, "failed to update ca.crt");
                }
                let outcome = ready_certificate(facts, renew_at, revision, &dir);
                let outcome = self.with_keystores(outcome, key, certificate, desired, &dir, now);
                return (outcome, Some(renew_at));
            }
            Decision::Issue(reason) => reason,
        };

        let spec_json = serde_json::to_value(spec).unwrap_or_default();
        if let Some(failure) = self.failures.get(key)
            && failure.spec == spec_json
            && now < failure.retry_at
        {
            let outcome = failed_certificate(&existing, failure, revision);
            return (outcome, Some(failure.retry_at));
        }
        match self.issue(
            &dir,
            &wanted,
            spec.private_key.as_ref(),
            &authority,
            &existing,
            now,
        ) {
            Ok(issued) => {
                let revision = revision + 1;
                self.failures.remove(key);
                if let Err(error) = self.save_issuance(key, revision, now) {
                    tracing::warn!(certificate = %key, %error, "failed to record the revision");
                }
                tracing::info!(
                    certificate = %key,
                    reason = %reason,
                    serial = %issued.serial,
                    not_after = %issued.not_after,
                    revision,
                    "issued a certificate"
                );
                let renew_at = renewal::renewal_time(&issued, wanted.renew);
                let outcome = ready_certificate(&issued, renew_at, revision, &dir);
                let outcome = self.with_keystores(outcome, key, certificate, desired, &dir, now);
                (outcome, Some(renew_at))
            }
            Err(error) => {
                let count = self
                    .failures
                    .get(key)
                    .filter(|f| f.spec == spec_json)
                    .map_or(1, |f| f.count + 1);
                let backoff = (FIRST_BACKOFF
                    * 2i32.saturating_pow(count.saturating_sub(1).min(16)))
                .min(MAX_BACKOFF);
                let failure = Failure {
                    count,
                    at: now,
                    retry_at: now + backoff,
                    message: format!("{reason}: {error}"),
                    spec: spec_json,
                };
                tracing::warn!(certificate = %key, error = %failure.message, retry_in = ?backoff, "failed to issue a certificate");
                let outcome = failed_certificate(&existing, &failure, revision);
                let retry = failure.retry_at;
                self.failures.insert(key.clone(), failure);
                (outcome, Some(retry))
            }
        }
    }

    /// Issues and writes the files; returns the new certificate's facts.
    fn issue(
        &self,
        dir: &Path,
        wanted: &Wanted,
        private_key: Option<&PrivateKeySpec>,
        authority: &Authority,
        existing: &Existing,
        now: jiff::Timestamp,
    ) -> Result<facts::CertFacts, PkiError> {
        // rotationPolicy Never keeps a key that still matches the key settings.
        let keep_key = private_key.is_some_and(|k| k.rotation_policy == RotationPolicy::Never)
            && matches!(
                existing,
                Existing::Present {
                    key_matches: true,
                    ..
                }
            );
        let key = match std::fs::read_to_string(dir.join("tls.key")) {
            Ok(pem) if keep_key => authority::load_key(&pem)
                .ok()
                .filter(|k| authority::key_type_of(k) == Some(wanted.key_type))
                .map_or_else(|| authority::generate_key(wanted.key_type), Ok)?,
            _ => authority::generate_key(wanted.key_type)?,
        };
        let request = LeafRequest {
            names: wanted.names.clone(),
            usages: wanted.usages.clone(),
            is_ca: wanted.is_ca,
            lifetime: wanted.lifetime,
        };
        let issued = authority.issue(&request, &key, now)?;
        let write = |name: &str, text: &str, access| {
            atomic::write(&dir.join(name), text.as_bytes(), access)
                .map_err(|e| PkiError::Certificate(e.to_string()))
        };
        // The key first: a reader that sees the new certificate always finds its key.
        write("tls.key", &key.serialize_pem(), Access::OwnerOnly)?;
        write("tls.crt", &issued.chain_pem, Access::Public)?;
        write("ca.crt", &issued.root_pem, Access::Public)?;
        Ok(issued.facts)
    }

    /// The serials `issuer` has revoked: those its spec lists, and those of Certificates
    /// revoked through `revoked: true` (kept on disk, so they stay revoked).
    fn revoked_serials(&self, issuer: &ObjectKey, desired: &DesiredState) -> HashSet<String> {
        let mut serials: HashSet<String> = self
            .revocations(issuer)
            .certificates
            .into_iter()
            .map(|entry| entry.serial)
            .collect();
        if let Some(Resource::Issuer(spec)) = desired.entries.get(issuer).and_then(|e| e.resource())
        {
            serials.extend(
                spec.spec
                    .revoked_serials
                    .iter()
                    .map(|s| authority::normalise_serial(s)),
            );
        }
        serials
    }

    /// A Certificate with `revoked: true`: its current certificate goes on the issuer's
    /// revocation list, and it is not renewed until `revoked` is cleared.
    fn revoke(
        &self,
        key: &ObjectKey,
        issuer: &ObjectKey,
        existing: &Existing,
        revision: i64,
        now: jiff::Timestamp,
    ) -> Outcome {
        let Existing::Present { facts, .. } = existing else {
            return not_ready(
                Reason::Revoked,
                "revoked: true, and no certificate exists: nothing is issued until revoked is cleared".into(),
            );
        };
        let mut revocations = self.revocations(issuer);
        if !revocations
            .certificates
            .iter()
            .any(|entry| entry.serial == facts.serial)
        {
            revocations.certificates.push(RevokedEntry {
                serial: facts.serial.clone(),
                at: now.to_string(),
                certificate: key.to_string(),
            });
            match self.save_revocations(issuer, &revocations) {
                Ok(()) => {
                    tracing::info!(certificate = %key, serial = %facts.serial, "revoked a certificate")
                }
                Err(error) => {
                    return not_ready(
                        Reason::RevocationFailed,
                        format!("failed to record the revocation: {error}"),
                    );
                }
            }
        }
        Outcome {
            ready: false,
            reason: Reason::Revoked,
            message: format!(
                "serial {} is revoked and listed in {issuer}'s CRL; set revoked: false to issue a new certificate",
                facts.serial
            ),
            details: certificate_details(facts, revision),
            issuing: Some((false, Reason::Revoked, String::new())),
            wake: None,
        }
    }

    /// A trust-only issuer: copies its CA certificate (and CRL) where listeners read trust
    /// from, so they verify with it; it signs nothing.
    fn trust_only(
        &self,
        key: &ObjectKey,
        base: &Path,
        cert_file: &str,
        crl_file: Option<&str>,
        now: jiff::Timestamp,
    ) -> Outcome {
        let read = |name: &str| {
            let path = base.join(name);
            std::fs::read_to_string(&path)
                .map_err(|e| format!("failed to read {}: {e}", path.display()))
        };
        let checked = read(cert_file).and_then(|pem| {
            let first = facts::pem_certificates(&pem)
                .and_then(|certs| facts::read(&certs[0]))
                .map_err(|e| format!("{cert_file}: {e}"))?;
            let crl = match crl_file {
                None => None,
                Some(name) => {
                    let text = read(name)?;
                    let crl = facts::read_crl(&text)
                        .ok_or_else(|| format!("{name}: not a PEM certificate revocation list"))?;
                    if crl.issuer != first.subject_der {
                        return Err(format!(
                            "{name}: the CRL was not issued by {cert_file}'s CA"
                        ));
                    }
                    Some((text, crl))
                }
            };
            Ok((pem, first, crl))
        });
        let (pem, ca, crl) = match checked {
            Ok(checked) => checked,
            Err(message) => return not_ready(Reason::ErrorLoadingCA, message),
        };
        let dir = self.issuer_dir(key);
        let write = |name: &str, body: &str| {
            let path = dir.join(name);
            if std::fs::read_to_string(&path).ok().as_deref() == Some(body) {
                return Ok(());
            }
            atomic::write(&path, body.as_bytes(), Access::Public).map_err(|e| e.to_string())
        };
        let written = write("ca.crt", &pem).and_then(|()| match &crl {
            Some((text, _)) => write("crl.pem", text),
            None => match std::fs::remove_file(dir.join("crl.pem")) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
                _ => Ok(()),
            },
        });
        if let Err(message) = written {
            return not_ready(Reason::WriteFailed, message);
        }
        let mut details = Map::new();
        details.insert("subject".into(), json!(ca.subject));
        details.insert("serialNumber".into(), json!(ca.serial));
        details.insert("notAfter".into(), json!(ca.not_after.to_string()));
        if let Some((_, crl)) = &crl {
            details.insert("crlNumber".into(), json!(crl.number));
            details.insert("crlNextUpdate".into(), json!(crl.next_update.to_string()));
            if crl.next_update <= now {
                return Outcome {
                    ready: false,
                    reason: Reason::CRLExpired,
                    message: format!(
                        "the CRL in {} expired at {}: clients are refused until a fresh one is in place",
                        crl_file.unwrap_or_default(),
                        crl.next_update
                    ),
                    details,
                    issuing: None,
                    wake: None,
                };
            }
        }
        if ca.not_after <= now {
            return Outcome {
                ready: false,
                reason: Reason::Expired,
                message: format!("the CA certificate expired at {}", ca.not_after),
                details,
                issuing: None,
                wake: None,
            };
        }
        Outcome {
            ready: true,
            reason: Reason::TrustOnly,
            message: format!(
                "trusted to verify certificates signed by {} (holds no key, signs nothing){}",
                ca.subject,
                if crl.is_some() {
                    "; revocations from its CRL"
                } else {
                    ""
                }
            ),
            details,
            issuing: None,
            wake: crl.map(|(_, crl)| crl.next_update),
        }
    }

    /// The CA of Issuer `key`, once it is in use.
    pub(crate) fn authority(&self, key: &ObjectKey) -> Option<Arc<Authority>> {
        self.authorities.get(key).cloned()
    }

    /// The certificate chain and private key issued for `certificate` (`tls.crt`,
    /// `tls.key`), once they are there.
    pub(crate) fn issued(
        &self,
        certificate: &ObjectKey,
        desired: &DesiredState,
    ) -> Option<(String, String)> {
        let dir = self.output_dir(certificate, desired);
        let chain = std::fs::read_to_string(dir.join("tls.crt")).ok()?;
        let key = std::fs::read_to_string(dir.join("tls.key")).ok()?;
        Some((chain, key))
    }

    /// What a listener trusting `issuers` verifies clients with: their CA certificates (both
    /// during a rollover), their CRLs, and whether every one of them has a CRL.
    pub(crate) fn trust(&self, issuers: &[ObjectKey]) -> Trust {
        let mut trust = Trust {
            every_ca_has_crl: true,
            ..Trust::default()
        };
        for issuer in issuers {
            let dir = self.issuer_dir(issuer);
            for file in ["ca.crt", "next/ca.crt"] {
                if let Ok(pem) = std::fs::read_to_string(dir.join(file)) {
                    trust.cas.push(pem);
                }
            }
            match std::fs::read_to_string(dir.join("crl.pem")) {
                Ok(pem) => trust.crls.push(pem),
                Err(_) => trust.every_ca_has_crl = false,
            }
        }
        trust
    }

    /// Where an issuer's CA files, revocations and CRL live.
    pub(crate) fn issuer_dir(&self, issuer: &ObjectKey) -> PathBuf {
        self.state_dir
            .join("pki/issuers")
            .join(&issuer.namespace)
            .join(&issuer.name)
    }

    fn revocations(&self, issuer: &ObjectKey) -> Revocations {
        std::fs::read(self.issuer_dir(issuer).join("revoked.json"))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    fn save_revocations(
        &self,
        issuer: &ObjectKey,
        revocations: &Revocations,
    ) -> Result<(), String> {
        let body = serde_json::to_vec_pretty(revocations).map_err(|e| e.to_string())?;
        atomic::write(
            &self.issuer_dir(issuer).join("revoked.json"),
            &body,
            Access::Public,
        )
        .map_err(|e| e.to_string())
    }

    /// Writes the issuer's CRL (`crl.pem` beside its CA files) when it is missing, lists other
    /// serials than the revoked set, or has passed 2/3 of its validity. Returns when it is next
    /// due for refresh, and adds `crlNumber` and `crlNextUpdate` to the issuer's status.
    fn publish_crl(
        &self,
        key: &ObjectKey,
        desired: &DesiredState,
        outcome: &mut Outcome,
        now: jiff::Timestamp,
    ) -> Option<jiff::Timestamp> {
        let authority = self.authorities.get(key)?;
        let Some(Resource::Issuer(issuer)) = desired.entries.get(key).and_then(|e| e.resource())
        else {
            return None;
        };
        let validity = issuer
            .spec
            .crl_validity
            .map_or(DEFAULT_CRL_VALIDITY, |d| signed(d.as_std()));
        let revoked = self.revoked_serials(key, desired);
        let path = self.issuer_dir(key).join("crl.pem");
        let current = std::fs::read_to_string(&path)
            .ok()
            .and_then(|pem| facts::read_crl(&pem));
        let fresh = current.as_ref().filter(|crl| {
            let refresh =
                crl.this_update + (crl.next_update.duration_since(crl.this_update)) * 2 / 3;
            crl.serials == revoked && crl.issuer == authority.facts().subject_der && now < refresh
        });
        let (number, next_update, this_update) = match fresh {
            Some(crl) => (crl.number, crl.next_update, crl.this_update),
            None => {
                let mut revocations = self.revocations(key);
                revocations.crl_number += 1;
                let at = |serial: &str| {
                    revocations
                        .certificates
                        .iter()
                        .find(|e| e.serial == serial)
                        .and_then(|e| e.at.parse().ok())
                        .unwrap_or(now)
                };
                let mut entries: Vec<authority::Revoked> = revoked
                    .iter()
                    .map(|serial| authority::Revoked {
                        serial: serial.clone(),
                        at: at(serial),
                    })
                    .collect();
                entries.sort_by(|a, b| a.serial.cmp(&b.serial));
                let written = authority
                    .crl(&entries, revocations.crl_number, now, validity)
                    .map_err(|e| e.to_string())
                    .and_then(|pem| {
                        atomic::write(&path, pem.as_bytes(), Access::Public)
                            .map_err(|e| e.to_string())
                    })
                    .and_then(|()| self.save_revocations(key, &revocations));
                if let Err(error) = written {
                    outcome
                        .message
                        .push_str(&format!("; no CRL could be published: {error}"));
                    return Some(now + FIRST_BACKOFF);
                }
                tracing::info!(issuer = %key, number = revocations.crl_number, revoked = entries.len(), "published a CRL");
                (
                    revocations.crl_number,
                    now + validity,
                    now - authority::BACKDATE,
                )
            }
        };
        outcome.details.insert("crlNumber".into(), json!(number));
        outcome
            .details
            .insert("crlNextUpdate".into(), json!(next_update.to_string()));
        outcome
            .details
            .insert("revokedCertificates".into(), json!(revoked.len()));
        Some(this_update + next_update.duration_since(this_update) * 2 / 3)
    }

    /// Writes the keystores a Certificate asks for when they are missing, do not open with
    /// the current password, or do not hold the current certificate. A failure makes the
    /// Certificate not Ready: its PEM files are there, but not everything it asks for.
    fn with_keystores(
        &self,
        mut outcome: Outcome,
        key: &ObjectKey,
        certificate: &Certificate,
        desired: &DesiredState,
        dir: &Path,
        now: jiff::Timestamp,
    ) -> Outcome {
        let Some(keystores) = &certificate.spec.keystores else {
            return outcome;
        };
        let base = super::declaring_dir(&self.config_dir, desired, key);
        match write_keystores(keystores, dir, &base, &self.environment, now) {
            Ok(written) => {
                if !written.is_empty() {
                    tracing::info!(certificate = %key, keystores = %written.join(", "), "wrote keystores");
                }
            }
            Err(message) => {
                outcome.ready = false;
                outcome.reason = Reason::KeystoreFailed;
                outcome.message = message;
            }
        }
        outcome
    }

    /// Copies a ready certificate's files into its Secret (`secretName`, default the
    /// certificate's name).
    fn write_secret(
        &self,
        secrets: &dyn Secrets,
        key: &ObjectKey,
        certificate: &Certificate,
        desired: &DesiredState,
    ) -> Result<(), String> {
        let dir = self.output_dir(key, desired);
        let mut data = BTreeMap::new();
        for name in SECRET_FILES {
            match std::fs::read(dir.join(name)) {
                Ok(bytes) => {
                    data.insert(name.to_owned(), bytes);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("failed to read {}: {e}", dir.join(name).display())),
            }
        }
        let secret = TlsSecret {
            namespace: key.namespace.clone(),
            name: certificate
                .spec
                .secret_name
                .clone()
                .unwrap_or_else(|| key.name.clone()),
            owner: key.name.clone(),
            owner_uid: certificate.metadata.uid.clone(),
            data,
        };
        secrets.write(&secret)
    }

    /// Where a certificate's files go.
    pub(crate) fn output_dir(&self, key: &ObjectKey, desired: &DesiredState) -> PathBuf {
        let custom = desired
            .entries
            .get(key)
            .and_then(|e| e.resource())
            .and_then(|r| match r {
                Resource::Certificate(c) => c.spec.output_directory.clone(),
                _ => None,
            });
        match custom {
            Some(dir) => self.state_dir.join(dir),
            None => self
                .state_dir
                .join("certificates")
                .join(&key.namespace)
                .join(&key.name),
        }
    }

    fn revision_path(&self, key: &ObjectKey) -> PathBuf {
        self.state_dir
            .join("pki/certificates")
            .join(&key.namespace)
            .join(format!("{}.json", key.name))
    }

    /// The revision and latest issuances of a certificate: the file (another server may have
    /// issued since, when leadership moves) merged with what this process recorded (in case
    /// a write failed).
    fn record(&mut self, key: &ObjectKey) -> Record {
        let on_disk = std::fs::read(self.revision_path(key))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
            .map(|value| Record::from_json(&value))
            .unwrap_or_default();
        let record = match self.issuances.get(key) {
            Some(kept) => on_disk.merge(kept),
            None => on_disk,
        };
        self.issuances.insert(key.clone(), record.clone());
        record
    }

    /// Records an issuance at `now`: in memory first, so a failed write cannot lift the limit
    /// for as long as the process runs.
    fn save_issuance(
        &mut self,
        key: &ObjectKey,
        revision: i64,
        now: jiff::Timestamp,
    ) -> Result<(), atomic::WriteError> {
        let mut record = self.record(key);
        record.revision = revision;
        record.issued_at.push(now);
        record.trim();
        let body = record.to_json().to_string();
        self.issuances.insert(key.clone(), record);
        atomic::write(&self.revision_path(key), body.as_bytes(), Access::Public)
    }

    /// Removes the files of Certificates no longer declared (they can be issued again);
    /// CA keys of removed Issuers are kept on purpose (see the module notes).
    fn prune(&self, desired: &DesiredState) {
        const FILES: [&str; 6] = [
            "tls.crt",
            "tls.key",
            "ca.crt",
            "keystore.p12",
            "keystore.jks",
            "truststore.jks",
        ];
        let root = self.state_dir.join("certificates");
        let Ok(namespaces) = std::fs::read_dir(&root) else {
            return;
        };
        for namespace in namespaces.flatten() {
            let Ok(names) = std::fs::read_dir(namespace.path()) else {
                continue;
            };
            for name in names.flatten() {
                let key = ObjectKey::new(
                    Kind::Certificate,
                    &namespace.file_name().to_string_lossy(),
                    &name.file_name().to_string_lossy(),
                );
                if !desired.entries.contains_key(&key) {
                    for file in FILES {
                        let _ = std::fs::remove_file(name.path().join(file));
                    }
                    let _ = std::fs::remove_dir(name.path());
                    let _ = std::fs::remove_file(self.revision_path(&key));
                    tracing::info!(certificate = %key, "removed the files of a certificate no longer declared");
                }
            }
        }
    }
}

/// Brings the keystores in `dir` up to date; returns the files written.
fn write_keystores(
    keystores: &Keystores,
    dir: &Path,
    base: &Path,
    environment: &Environment,
    now: jiff::Timestamp,
) -> Result<Vec<&'static str>, String> {
    let chain_pem = std::fs::read_to_string(dir.join("tls.crt"))
        .map_err(|e| format!("failed to read tls.crt: {e}"))?;
    let key_pem = std::fs::read_to_string(dir.join("tls.key"))
        .map_err(|e| format!("failed to read tls.key: {e}"))?;
    let root_pem = std::fs::read_to_string(dir.join("ca.crt"))
        .map_err(|e| format!("failed to read ca.crt: {e}"))?;
    let mut chain: Vec<Vec<u8>> = facts::pem_certificates(&chain_pem)
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|c| c.to_vec())
        .collect();
    let root = facts::pem_certificates(&root_pem).map_err(|e| e.to_string())?[0].to_vec();
    if !chain.contains(&root) {
        chain.push(root.clone());
    }
    let key = authority::load_key(&key_pem)
        .map_err(|e| e.to_string())?
        .serialize_der();
    let leaf = chain[0].clone();
    let created = u64::try_from(now.as_millisecond()).unwrap_or(0);
    let mut written = Vec::new();
    let write = |name: &str, bytes: &[u8], access| {
        atomic::write(&dir.join(name), bytes, access).map_err(|e| e.to_string())
    };

    if let Some(source) = &keystores.pkcs12 {
        let password = password(source, "spec.keystores.pkcs12", base, environment)?;
        let current = std::fs::read(dir.join("keystore.p12")).unwrap_or_default();
        if !keystore::pkcs12_holds(&current, &password, &leaf) {
            let bytes = keystore::pkcs12(&key, &chain, &password).map_err(|e| e.to_string())?;
            write("keystore.p12", &bytes, Access::OwnerOnly)?;
            written.push("keystore.p12");
        }
    }
    if let Some(jks) = &keystores.jks {
        let password_ks = password(
            &jks.keystore,
            "spec.keystores.jks.keystore",
            base,
            environment,
        )?;
        let password_ts = match &jks.truststore {
            Some(source) => password(source, "spec.keystores.jks.truststore", base, environment)?,
            None => password_ks.clone(),
        };
        let current = std::fs::read(dir.join("keystore.jks")).unwrap_or_default();
        if !keystore::jks_holds(&current, &password_ks, &leaf) {
            let bytes = keystore::jks_keystore(
                &key,
                &chain,
                &password_ks,
                created,
                crate::pki::random_bytes(),
            );
            write("keystore.jks", &bytes, Access::OwnerOnly)?;
            written.push("keystore.jks");
        }
        let current = std::fs::read(dir.join("truststore.jks")).unwrap_or_default();
        if !keystore::jks_holds(&current, &password_ts, &root) {
            write(
                "truststore.jks",
                &keystore::jks_truststore(&root, &password_ts, created),
                Access::Public,
            )?;
            written.push("truststore.jks");
        }
    }
    Ok(written)
}

/// A keystore password from its file or environment variable, never from the YAML.
fn password(
    source: &KeystorePassword,
    field: &str,
    base: &Path,
    environment: &Environment,
) -> Result<String, String> {
    match (&source.password_file, &source.password_env) {
        (Some(file), _) => {
            let path = base.join(file);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                format!(
                    "{field}.passwordFile: failed to read {}: {e}",
                    path.display()
                )
            })?;
            Ok(text.trim_end_matches(['\n', '\r']).to_owned())
        }
        (None, Some(name)) => environment.get(name).ok_or_else(|| {
            format!("{field}.passwordEnv: the environment variable {name} is not set")
        }),
        (None, None) => Err(format!("{field}: no password source")),
    }
}

/// What exists in `dir`; `revoked` holds the serials the issuer has revoked.
fn existing(dir: &Path, revoked: &HashSet<String>) -> Existing {
    let (Ok(chain), Ok(key_pem)) = (
        std::fs::read_to_string(dir.join("tls.crt")),
        std::fs::read_to_string(dir.join("tls.key")),
    ) else {
        return Existing::Missing;
    };
    let facts = match facts::pem_certificates(&chain).and_then(|c| facts::read(&c[0])) {
        Ok(facts) => facts,
        Err(e) => return Existing::Unreadable(format!("tls.crt: {e}")),
    };
    match authority::load_key(&key_pem) {
        Ok(key) => Existing::Present {
            key_matches: authority::key_matches(&key, &facts),
            revoked: revoked.contains(&facts.serial),
            facts: Box::new(facts),
        },
        Err(e) => Existing::Unreadable(format!("tls.key: {e}")),
    }
}

/// A follower's outcome for what the leader looks after.
fn following(message: &str) -> Outcome {
    Outcome {
        ready: true,
        reason: Reason::Following,
        message: message.into(),
        details: Map::new(),
        issuing: None,
        wake: None,
    }
}

/// The chain, key and root of an issued CA certificate, if all are there.
fn read_pair(dir: &Path) -> Option<(String, String, Option<String>)> {
    let chain = std::fs::read_to_string(dir.join("tls.crt")).ok()?;
    let key = std::fs::read_to_string(dir.join("tls.key")).ok()?;
    Some((chain, key, std::fs::read_to_string(dir.join("ca.crt")).ok()))
}

/// The spec in PKI terms.
fn wanted(certificate: &Certificate) -> Wanted {
    let spec = &certificate.spec;
    let usages = if spec.usages.is_empty() {
        vec![Usage::DigitalSignature, Usage::KeyEncipherment]
    } else {
        spec.usages
            .iter()
            .map(|u| match u {
                KeyUsage::ServerAuth => Usage::ServerAuth,
                KeyUsage::ClientAuth => Usage::ClientAuth,
                KeyUsage::DigitalSignature => Usage::DigitalSignature,
                KeyUsage::KeyEncipherment => Usage::KeyEncipherment,
            })
            .collect()
    };
    let renew = match (spec.renew_before, spec.renew_before_percentage) {
        (Some(before), _) => RenewBefore::Duration(signed(before.as_std())),
        (None, Some(percent)) => {
            RenewBefore::Percentage(u8::try_from(percent.clamp(1, 99)).unwrap_or(33))
        }
        (None, None) => RenewBefore::Default,
    };
    Wanted {
        names: Names {
            common_name: spec.common_name.clone(),
            dns_names: spec.dns_names.clone(),
            ip_addresses: spec
                .ip_addresses
                .iter()
                .filter_map(|ip| ip.parse().ok())
                .collect(),
            uris: spec.uris.clone(),
        },
        usages,
        is_ca: spec.is_ca,
        key_type: key_type(spec.private_key.as_ref()),
        lifetime: spec
            .duration
            .map_or(DEFAULT_LIFETIME, |d| signed(d.as_std())),
        renew,
    }
}

fn key_type(spec: Option<&PrivateKeySpec>) -> KeyType {
    let Some(spec) = spec else {
        return KeyType::EcdsaP256;
    };
    match (spec.algorithm, spec.size) {
        (KeyAlgorithm::Ecdsa, Some(384)) => KeyType::EcdsaP384,
        (KeyAlgorithm::Ecdsa, _) => KeyType::EcdsaP256,
        (KeyAlgorithm::Ed25519, _) => KeyType::Ed25519,
        (KeyAlgorithm::Rsa, size) => {
            KeyType::Rsa(size.and_then(|s| u32::try_from(s).ok()).unwrap_or(2048))
        }
    }
}

fn signed(duration: std::time::Duration) -> jiff::SignedDuration {
    jiff::SignedDuration::try_from(duration).unwrap_or(jiff::SignedDuration::MAX)
}

fn not_ready(reason: Reason, message: String) -> Outcome {
    Outcome::not_ready(reason, message)
}

fn certificate_details(facts: &facts::CertFacts, revision: i64) -> Map<String, Value> {
    let mut details = Map::new();
    details.insert("notBefore".into(), json!(facts.not_before.to_string()));
    details.insert("notAfter".into(), json!(facts.not_after.to_string()));
    details.insert("serialNumber".into(), json!(facts.serial));
    details.insert("revision".into(), json!(revision));
    details
}

fn ready_certificate(
    facts: &facts::CertFacts,
    renew_at: jiff::Timestamp,
    revision: i64,
    dir: &Path,
) -> Outcome {
    let mut details = certificate_details(facts, revision);
    details.insert("renewalTime".into(), json!(renew_at.to_string()));
    let message = format!(
        "valid until {}, renewed at {renew_at}; files in {}",
        facts.not_after,
        dir.display()
    );
    Outcome {
        ready: true,
        reason: Reason::Ready,
        message,
        details,
        issuing: Some((false, Reason::Issued, String::new())),
        wake: None,
    }
}

/// A certificate due for issuance, held because it was issued too often lately.
fn held_certificate(
    existing: &Existing,
    reason: &renewal::Reason,
    until: jiff::Timestamp,
    revision: i64,
) -> Outcome {
    let details = match existing {
        Existing::Present { facts, .. } => certificate_details(facts, revision),
        _ => Map::new(),
    };
    let message = format!(
        "{reason}, but it was issued {} times within {}: the next issuance waits until {until}",
        renewal::MAX_ISSUANCES_PER_INTERVAL,
        renewal::MIN_INTERVAL,
    );
    Outcome {
        ready: false,
        reason: Reason::IssuanceHeld,
        message: message.clone(),
        details,
        issuing: Some((true, Reason::Held, message)),
        wake: None,
    }
}

fn failed_certificate(existing: &Existing, failure: &Failure, revision: i64) -> Outcome {
    let mut details = match existing {
        Existing::Present { facts, .. } => certificate_details(facts, revision),
        _ => Map::new(),
    };
    details.insert("lastFailureTime".into(), json!(failure.at.to_string()));
    details.insert("lastFailureReason".into(), json!(failure.message));
    let retry = format!("{}; retrying at {}", failure.message, failure.retry_at);
    Outcome {
        ready: false,
        reason: if matches!(existing, Existing::Present { .. }) {
            Reason::RenewalFailed
        } else {
            Reason::IssuanceFailed
        },
        message: retry.clone(),
        details,
        issuing: Some((true, Reason::Failed, retry)),
        wake: None,
    }
}
