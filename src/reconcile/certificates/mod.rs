//! Issuers and Certificates: each pass makes sure every Issuer has its CA and every
//! Certificate a valid certificate matching its spec, issuing where the renewal chain says
//! so, and says when the next renewal is due. Split along cert-manager's seams:
//! - this file: the pass over Issuers and Certificates (leader and follower), the shared
//!   types ([`Certificates`], [`Trust`], [`Environment`], [`Error`]) and where files live;
//! - `issuers`: each Issuer's CA, trust-only issuers, and CA rollover (the decision to start
//!   one is the pure chain in `pki::rollover`);
//! - `issue`: issuance, the revision record, the issuance cap and backoff after failures (the
//!   decision to issue is the pure chain in `pki::renewal`);
//! - `revocation`: `revoked: true`, `revokedSerials` and each issuer's CRL;
//! - `outputs`: keystores, Kubernetes Secrets (every call to `Secrets` is there), pruning.
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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::desired::DesiredState;
use crate::pki::authority::Authority;
use crate::pki::{KeyType, PkiError};
use crate::resources::issuer::{KeyAlgorithm, PrivateKeySpec};
use crate::resources::{IssuerStatus, Kind, ObjectKey, Resource};
use crate::store::atomic;

use super::outcome::{Outcome, Reason};
use super::secrets::Secrets;

mod issue;
mod issuers;
mod outputs;
mod revocation;

use issue::{Failure, Record};

/// What goes wrong looking after Issuers and Certificates. Each variant names what failed
/// and chains its cause; statuses show the whole chain (`crate::error_chain`), each cause once.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("failed to read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file could not be written (the message names it).
    #[error(transparent)]
    Write(#[from] atomic::WriteError),
    /// A file could not be removed.
    #[error("failed to remove {}", path.display())]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The PKI refused: a key, a certificate, a signature.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// A CA kept in the state directory that no longer loads: it is never replaced, since
    /// agents trust it.
    #[error("{} cannot be used, and is not replaced", dir.display())]
    UnusableCa {
        dir: PathBuf,
        #[source]
        source: PkiError,
    },
    /// A file named in a spec does not hold a usable certificate.
    #[error("{file}")]
    BadFile {
        file: String,
        #[source]
        source: PkiError,
    },
    /// A `crlFile` that holds no CRL.
    #[error("{file}: not a PEM certificate revocation list")]
    NotCrl { file: String },
    /// A `crlFile` signed by another CA than `certFile`'s.
    #[error("{crl}: the CRL was not issued by {ca}'s CA")]
    CrlOfAnotherCa { crl: String, ca: String },
    /// A state file could not be encoded.
    #[error("failed to encode {what}")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// A keystore password file could not be read.
    #[error("{field}.passwordFile: failed to read {}", path.display())]
    PasswordFile {
        field: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A keystore password variable that is not set.
    #[error("{field}.passwordEnv: the environment variable {name} is not set")]
    PasswordEnv { field: &'static str, name: String },
    /// A keystore with neither `passwordFile` nor `passwordEnv`.
    #[error("{field}: no password source")]
    NoPasswordSource { field: &'static str },
    /// The Kubernetes Secrets adapter refused: its error names the Secret and chains the
    /// cause.
    #[error(transparent)]
    Secrets(#[from] crate::reconcile::secrets::SecretsError),
}

impl Error {
    /// Reading `path` failed with `source`.
    fn read(path: &Path, source: std::io::Error) -> Self {
        Self::Read {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A file's text, or which file could not be read and why.
fn read_text(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::read(path, source))
}

/// A Secret that could not be written is tried again this soon (the API server may be
/// restarting, or RBAC being fixed).
const SECRET_RETRY: jiff::SignedDuration = jiff::SignedDuration::from_secs(30);

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
    /// Renewals operators requested (`tessera renew`), by certificate: when (Unix seconds).
    renewal_requests: HashMap<ObjectKey, i64>,
    /// Requests the last pass answered (issued, or found already answered).
    renewals_honoured: Vec<(ObjectKey, i64)>,
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
            renewal_requests: HashMap::new(),
            renewals_honoured: Vec::new(),
        }
    }

    /// The renewals operators requested, for the next pass: (certificate, when in Unix
    /// seconds). An input of the renewal decision like the others (see `pki::renewal`).
    pub fn set_renewal_requests(&mut self, requests: HashMap<ObjectKey, i64>) {
        self.renewal_requests = requests;
    }

    /// The requests the last pass answered, to withdraw: (certificate, when requested).
    pub fn take_renewals_honoured(&mut self) -> Vec<(ObjectKey, i64)> {
        std::mem::take(&mut self.renewals_honoured)
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
                update_issuer_status(outcome, |status| {
                    status.rollover_phase = Some("Complete".into());
                });
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
                    && let Err(error) =
                        self.write_secret(secrets.as_ref(), key, certificate, desired)
                {
                    outcome.ready = false;
                    outcome.reason = Reason::SecretWriteFailed;
                    outcome.message = crate::error_chain(&error);
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
                && crate::reconcile::replicate::is_plain(relative)
                && !dirs.iter().any(|d| relative.starts_with(d))
            {
                dirs.push(relative.to_path_buf());
            }
        }
        dirs
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

/// Changes the status fields of an Issuer's `outcome` through its typed status, for what a
/// later step of the pass learns (the rollover completed, the CRL published).
fn update_issuer_status(outcome: &mut Outcome, change: impl FnOnce(&mut IssuerStatus)) {
    let mut status: IssuerStatus =
        serde_json::from_value(Value::Object(std::mem::take(&mut outcome.details)))
            // The fields were written from an IssuerStatus, so they read back as one.
            .unwrap_or_default();
    change(&mut status);
    outcome.details = super::outcome::details(&status);
}

fn not_ready(reason: Reason, message: String) -> Outcome {
    Outcome::not_ready(reason, message)
}

/// Fixtures for the tests of every part: a configuration directory, a state directory, and
/// a fixed clock.
#[cfg(test)]
mod fixture {
    use crate::desired::{self, DesiredState};
    use crate::resources::{Kind, ObjectKey};
    use crate::sources::dir::DirSource;

    use super::{Certificates, Environment};

    /// A self-signed Issuer `ca`.
    pub(super) const ISSUER: &str = "apiVersion: tessera.dev/v1alpha1\nkind: Issuer\nmetadata:\n  name: ca\nspec:\n  selfSigned:\n    commonName: Test Root CA\n";

    /// A Certificate `name` of Issuer `ca`, with `extra` lines of spec.
    pub(super) fn certificate(name: &str, extra: &str) -> String {
        format!(
            "---\napiVersion: tessera.dev/v1alpha1\nkind: Certificate\nmetadata:\n  name: {name}\nspec:\n  issuerRef:\n    name: ca\n  dnsNames: [{name}.example.com]\n{extra}"
        )
    }

    /// The fixed clock of the tests.
    pub(super) fn at(text: &str) -> jiff::Timestamp {
        text.parse().unwrap()
    }

    /// Now, for the tests: a fixed instant.
    pub(super) fn now() -> jiff::Timestamp {
        at("2026-03-01T12:00:00Z")
    }

    /// The key of a `kind` named `name` in the default namespace.
    pub(super) fn key(kind: Kind, name: &str) -> ObjectKey {
        ObjectKey::new(kind, "default", name)
    }

    /// A configuration directory, a state directory, and `Certificates` over them.
    pub(super) struct Setup {
        pub(super) config: tempfile::TempDir,
        pub(super) state: tempfile::TempDir,
        pub(super) certificates: Certificates,
    }

    impl Setup {
        pub(super) fn new() -> Self {
            let config = tempfile::tempdir().unwrap();
            let state = tempfile::tempdir().unwrap();
            let certificates = Certificates::new(
                state.path().to_path_buf(),
                config.path().to_path_buf(),
                Environment::default(),
            );
            Self {
                config,
                state,
                certificates,
            }
        }

        /// The desired state of `yaml`, written as the only configuration file.
        pub(super) fn desired(&self, yaml: &str) -> DesiredState {
            std::fs::write(self.config.path().join("pki.yaml"), yaml).unwrap();
            let snapshot = DirSource::new(self.config.path(), vec![]).unwrap().scan();
            let desired = desired::evaluate(&snapshot, None, desired::Options::default());
            for entry in desired.entries.values() {
                assert!(entry.problems.is_empty(), "{:?}", entry.problems);
            }
            desired
        }

        /// A path below the state directory.
        pub(super) fn state(&self, relative: &str) -> std::path::PathBuf {
            self.state.path().join(relative)
        }

        /// A file below the configuration directory.
        pub(super) fn write_config(&self, name: &str, text: &str) {
            std::fs::write(self.config.path().join(name), text).unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::{ISSUER, Setup, certificate, key, now};
    use super::*;

    #[test]
    fn a_pass_takes_a_ca_into_use_issues_its_certificate_and_wakes_at_the_renewal() {
        let mut setup = Setup::new();
        let desired = setup.desired(&format!("{ISSUER}{}", certificate("web", "")));
        let (outcomes, wake) = setup.certificates.reconcile(&desired, now());
        let issuer = &outcomes[&key(Kind::Issuer, "ca")];
        assert!(issuer.ready, "{issuer:?}");
        assert_eq!(issuer.reason, Reason::KeyPairVerified);
        let web = &outcomes[&key(Kind::Certificate, "web")];
        assert!(web.ready, "{web:?}");
        assert_eq!(web.reason, Reason::Ready);
        assert_eq!(web.details["revision"], 1);
        // The typed statuses write the keys the string maps wrote.
        let keys = |details: &Map<String, Value>| details.keys().cloned().collect::<Vec<_>>();
        assert_eq!(
            keys(&web.details),
            [
                "notAfter",
                "notBefore",
                "renewalTime",
                "revision",
                "serialNumber"
            ]
        );
        assert_eq!(
            keys(&issuer.details),
            [
                "crlNextUpdate",
                "crlNumber",
                "notAfter",
                "revokedCertificates",
                "serialNumber",
                "subject"
            ]
        );
        // 90 days by default, renewed when a third remains: 60 days after issuance.
        let renewal: jiff::Timestamp = web.details["renewalTime"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        // The earliest due is the issuer's CRL refresh (2/3 of a week), before the renewal.
        let wake = wake.expect("something is due");
        assert!(now() < wake && wake < renewal, "{wake}");
        let days = renewal.duration_since(now()).as_hours() / 24;
        assert!((59..=60).contains(&days), "{days} days to the renewal");

        // The next pass keeps what exists.
        let (again, _) = setup.certificates.reconcile(&desired, now());
        let web_again = &again[&key(Kind::Certificate, "web")];
        assert_eq!(
            web_again.details["serialNumber"],
            web.details["serialNumber"]
        );
        assert_eq!(web_again.details["revision"], 1);
    }

    #[test]
    fn a_follower_reports_what_the_leader_shared_and_issues_nothing() {
        let mut setup = Setup::new();
        let desired = setup.desired(&format!("{ISSUER}{}", certificate("web", "")));
        let outcomes = setup.certificates.follow(&desired);
        let web = &outcomes[&key(Kind::Certificate, "web")];
        assert!(!web.ready);
        assert_eq!(web.reason, Reason::Following);
        assert!(!setup.state("certificates/default/web/tls.crt").exists());
    }

    #[test]
    fn errors_print_each_cause_once() {
        let missing = Path::new("/nonexistent/ca.crt");
        let io = std::fs::read(missing).unwrap_err();
        let cause = io.to_string();
        let text = crate::error_chain(&Error::read(missing, io));
        assert_eq!(text, format!("failed to read /nonexistent/ca.crt: {cause}"));

        let io = std::fs::read(missing).unwrap_err();
        let write = atomic::WriteError {
            path: missing.to_path_buf(),
            source: io,
        };
        let text = crate::error_chain(&Error::from(write));
        assert_eq!(text.matches(&cause).count(), 1, "{text}");
        assert!(
            text.starts_with("failed to write /nonexistent/ca.crt: "),
            "{text}"
        );
    }
}
