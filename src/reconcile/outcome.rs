//! The typed contract between reconcile and the statuses it publishes: every reason a
//! condition can carry ([`Reason`], each documented, each classified as progressing, failed
//! or done), the condition types ([`ConditionType`]), and what reconcile found for one
//! object ([`Outcome`]). A misspelt reason is a compile error, not a status that silently
//! reads wrong.
//!
//! The condition vocabulary itself ([`ConditionType`], [`ConditionStatus`]) is defined with
//! the admin report in `server::admin`, which may import nothing of reconcile; it is
//! re-exported here so reconcile reads it from one place.

use serde_json::{Map, Value};

pub use crate::server::admin::{ConditionStatus, ConditionType, ObjectKind};

use crate::resources::Kind;

/// What a reason says about the object's progress, as kstatus reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Work is in flight or waits on something that will come by itself (another object,
    /// a retry, agents reporting): `Reconciling=True` while not ready.
    Progressing,
    /// Nothing changes until someone acts (a spec, a file, a disk): `Stalled=True`.
    Failed,
    /// The desired state is achieved: `Ready=True`.
    Done,
}

/// Defines [`Reason`] with its string (today's exact wire value), class and doc line.
macro_rules! reasons {
    ($($(#[doc = $doc:literal])+ $name:ident => $class:ident,)+) => {
        /// Every reason a condition of an object or of the server carries.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Reason {
            $($(#[doc = $doc])+ $name,)+
        }

        impl Reason {
            /// Every reason, for tests and documentation.
            pub const ALL: &[Reason] = &[$(Reason::$name,)+];

            /// The reason as written in statuses, events and the admin API.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$name => stringify!($name),)+
                }
            }

            /// Whether it means progressing, failed or done.
            pub fn class(self) -> Class {
                match self {
                    $(Reason::$name => Class::$class,)+
                }
            }
        }
    };
}

reasons! {
    // Every kind.
    /// The object is valid and needs nothing from this process beyond being read.
    Accepted => Done,
    /// The spec is invalid (the latest version is refused; the last good one may stay).
    InvalidSpec => Failed,
    /// The object refers to another that does not exist or is invalid.
    MissingDependency => Failed,
    /// Another process acts on this kind (a Gateway is run by `tessera gateway`).
    RunElsewhere => Failed,
    /// Waiting for another object (a certificate to be issued, a package to be built).
    Pending => Progressing,
    /// Another object this one needs failed: waiting would not end by itself.
    DependencyFailed => Failed,
    /// A follower: the leader acts on this object; waiting for what it shares, or using it.
    Following => Progressing,
    /// A file could not be written (retried at the next pass).
    WriteFailed => Failed,

    // Issuer.
    /// The CA key pair was loaded and checked: it signs.
    KeyPairVerified => Done,
    /// A trust-only issuer (a CA certificate without key): it verifies, it signs nothing.
    TrustOnly => Done,
    /// The CA certificate could not be loaded.
    ErrorLoadingCA => Failed,
    /// The referenced certificate is not a CA (`isCA: true` is missing).
    CertificateNotCA => Failed,
    /// `secretName` is read in Kubernetes mode only.
    SecretsNeedKubernetes => Failed,
    /// The CA certificate, or the certificate, has expired: never Ready.
    Expired => Failed,
    /// A trust-only issuer's CRL is past its next update: clients are refused.
    CRLExpired => Failed,

    // Certificate.
    /// The certificate is issued, valid and in place.
    Ready => Done,
    /// The issuer is not ready yet.
    IssuerNotReady => Progressing,
    /// The issuer is trust-only: it holds no key to sign with.
    IssuerCannotSign => Failed,
    /// The first issuance failed; retried with backoff.
    IssuanceFailed => Progressing,
    /// A renewal failed; retried with backoff while the current certificate serves.
    RenewalFailed => Progressing,
    /// Issued too often lately: the next issuance waits until a set time, by itself.
    IssuanceHeld => Progressing,
    /// The certificate is revoked (`revoked: true`); nothing is issued until cleared.
    Revoked => Failed,
    /// The revocation could not be recorded.
    RevocationFailed => Failed,
    /// The keystores (PKCS#12, JKS) could not be written.
    KeystoreFailed => Failed,
    /// The Kubernetes Secret could not be written; retried.
    SecretWriteFailed => Progressing,
    /// `Issuing` condition: the current certificate was issued; nothing to do.
    Issued => Done,
    /// `Issuing` condition: an issuance is due and held until a set time.
    Held => Progressing,
    /// `Issuing` condition: an issuance is due and failed; retried with backoff.
    Failed => Progressing,

    // Package.
    /// The package is built: fragments are in the store.
    Built => Done,
    /// The fragment store could not be opened.
    StoreUnavailable => Failed,
    /// The package could not be built.
    BuildFailed => Failed,
    /// The content is unusable (a missing file, an archive that cannot be read).
    InvalidContent => Failed,
    /// Downloaded content does not match its declared digest.
    DigestMismatch => Failed,
    /// In Kubernetes, content is a `url`: there are no files for `directory` or `archive`.
    ContentNeedsURL => Failed,

    // Activation.
    /// Agents are offered the package.
    Active => Done,

    // Affectation.
    /// Targets are still waiting, notified, downloading or installing.
    Deploying => Progressing,
    /// Every target has settled successfully (or there are no targets).
    Deployed => Done,
    /// Every target has settled, and some failed.
    DeploymentFailed => Failed,
    /// A staged rollout stopped offering the package: `maxErrors` was reached.
    RolloutPaused => Failed,

    // Activation and Affectation.
    /// Suspended (`spec.suspend`, or `tessera suspend`): nothing new is offered until it
    /// is resumed; computers already notified may finish. Not Ready, and Stalled, so that
    /// nothing reading kstatus takes a held rollout for a finished one.
    Suspended => Failed,

    // Server and Gateway.
    /// The listeners are bound and serve.
    Serving => Done,
    /// The listeners could not be bound to every address of the spec.
    BindFailed => Failed,
    /// The gateway relays to its backend.
    Relaying => Done,
    /// The gateway's connections since the last pass reached no backend, none was relayed.
    BackendUnreachable => Failed,
    /// The served certificate cannot be used.
    CertificateUnusable => Failed,
    /// Client certificates cannot be checked with the trusted issuers.
    ClientAuthUnusable => Failed,
    /// The dial-out settings cannot be used.
    DialOutUnusable => Failed,
    /// `PlainHttp` condition: OCS agents are served over plain HTTP (`spec.ocs.plainHttp`),
    /// a warning that leaves the Server Ready.
    PlainHttpEnabled => Done,

    // The server's own conditions.
    /// The state database cannot be written (disk full?).
    DiskFull => Failed,
    /// The state database was lost while the server ran.
    DatabaseLost => Failed,

    // Events only (the journal and Kubernetes Events), never a condition's reason.
    /// A Certificate was issued again: its revision grew past 1.
    Renewed => Done,
    /// An Issuer's CA rollover moved to its next phase, or completed.
    Rollover => Progressing,
    /// This server became the leader: it reconciles and writes statuses.
    BecameLeader => Done,
    /// This server stopped leading: another reconciles.
    LostLeadership => Done,
    /// A computer's request was refused (a bad enrollment token, plain HTTP where the
    /// Server wants HTTPS).
    Refused => Failed,
    /// A package was offered to a computer (read from the deployment history).
    Offered => Progressing,
    /// A computer reported success (read from the deployment history).
    Succeeded => Done,
    /// An operator lifted `tessera suspend` (`tessera resume`).
    Resumed => Done,
    /// An operator asked for a pass now (`tessera reconcile`).
    ReconcileRequested => Progressing,
    /// An operator asked for a new certificate now (`tessera renew`).
    RenewalRequested => Progressing,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Reason {
    /// Waiting on a retry, on agents or on another object: progress, not a dead end.
    pub fn is_progressing(self) -> bool {
        self.class() == Class::Progressing
    }
}

/// What reconcile found for one object: whether it is ready, why, and its kind's status
/// fields.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub ready: bool,
    pub reason: Reason,
    pub message: String,
    /// Status fields of the kind (notAfter, revision, ...), under the keys of the kind's
    /// `resources::*Status` (see [`details`] to build them from the typed struct).
    pub details: Map<String, Value>,
    /// cert-manager's `Issuing` condition, for Certificates: (status, reason, message).
    pub issuing: Option<(bool, Reason, String)>,
    /// When the object next needs a pass (a CA rollover step), if it does.
    pub wake: Option<jiff::Timestamp>,
}

impl Outcome {
    /// An object that is not ready, for `reason`, with nothing else to tell.
    pub fn not_ready(reason: Reason, message: String) -> Self {
        Self {
            ready: false,
            reason,
            message,
            details: Map::new(),
            issuing: None,
            wake: None,
        }
    }

    /// A ready object, for `reason`, with nothing else to tell.
    pub fn ready(reason: Reason, message: String) -> Self {
        Self {
            ready: true,
            ..Self::not_ready(reason, message)
        }
    }

    /// The same outcome with `details`.
    pub fn with_details(self, details: Map<String, Value>) -> Self {
        Self { details, ..self }
    }
}

/// The status fields of a typed `resources::*Status` as the map the report carries: the
/// struct decides the keys, so a misspelt key cannot compile. Its common part (conditions,
/// generations) is left empty and serialises to nothing; the report adds it.
pub fn details<T: serde::Serialize>(status: &T) -> Map<String, Value> {
    match serde_json::to_value(status) {
        Ok(Value::Object(map)) => map,
        // A status struct always serialises to an object.
        _ => Map::new(),
    }
}

/// The `packageId` of a Package's or an Activation's status fields, if there is one.
pub fn package_id(details: &Map<String, Value>) -> Option<String> {
    serde_json::from_value::<crate::resources::PackageStatus>(Value::Object(details.clone()))
        .ok()?
        .package_id
}

/// An expired certificate is never Ready, whoever reports it (a follower takes the
/// leader's files without judging them; a Server serves whatever its Certificate holds):
/// a ready `outcome` whose certificate ended at `not_after`, at or before `now`, becomes
/// not ready for [`Reason::Expired`]. `what` names the certificate in the message.
pub fn expire(outcome: &mut Outcome, what: &str, not_after: jiff::Timestamp, now: jiff::Timestamp) {
    if outcome.ready && not_after <= now {
        outcome.ready = false;
        outcome.reason = Reason::Expired;
        outcome.message = format!("{what} expired at {not_after}; {}", outcome.message);
    }
}

/// The end of validity in a Certificate's or an Issuer's status fields, if there is one.
pub fn not_after(details: &Map<String, Value>) -> Option<jiff::Timestamp> {
    serde_json::from_value::<crate::resources::CertificateStatus>(Value::Object(details.clone()))
        .ok()?
        .not_after
        .map(|time| time.0)
}

/// The report's name for a kind (the admin API may not import `resources`).
pub fn object_kind(kind: Kind) -> ObjectKind {
    match kind {
        Kind::Server => ObjectKind::Server,
        Kind::Issuer => ObjectKind::Issuer,
        Kind::Certificate => ObjectKind::Certificate,
        Kind::Package => ObjectKind::Package,
        Kind::Activation => ObjectKind::Activation,
        Kind::Affectation => ObjectKind::Affectation,
        Kind::Gateway => ObjectKind::Gateway,
    }
}

/// The resource kind of a report's kind.
pub fn resource_kind(kind: ObjectKind) -> Kind {
    match kind {
        ObjectKind::Server => Kind::Server,
        ObjectKind::Issuer => Kind::Issuer,
        ObjectKind::Certificate => Kind::Certificate,
        ObjectKind::Package => Kind::Package,
        ObjectKind::Activation => Kind::Activation,
        ObjectKind::Affectation => Kind::Affectation,
        ObjectKind::Gateway => Kind::Gateway,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_written_as_their_names_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for reason in Reason::ALL {
            assert!(seen.insert(reason.as_str()), "{reason} twice");
            assert!(reason.as_str().chars().all(|c| c.is_ascii_alphanumeric()));
        }
        assert_eq!(Reason::CRLExpired.as_str(), "CRLExpired");
        assert_eq!(Reason::KeyPairVerified.to_string(), "KeyPairVerified");
    }

    #[test]
    fn the_classes_of_todays_progressing_reasons_are_unchanged() {
        for reason in [
            Reason::IssuerNotReady,
            Reason::Pending,
            Reason::IssuanceFailed,
            Reason::RenewalFailed,
            Reason::SecretWriteFailed,
        ] {
            assert!(reason.is_progressing(), "{reason}");
        }
        assert_eq!(Reason::Expired.class(), Class::Failed);
        assert_eq!(Reason::DeploymentFailed.class(), Class::Failed);
        assert_eq!(Reason::Deployed.class(), Class::Done);
    }

    #[test]
    fn the_condition_names_json_readers_use_are_the_typed_ones() {
        use crate::resources::meta::{CONDITION_READY, CONDITION_STALLED, CONDITION_TRUE};
        assert_eq!(ConditionType::Ready.as_str(), CONDITION_READY);
        assert_eq!(ConditionType::Stalled.as_str(), CONDITION_STALLED);
        assert_eq!(ConditionStatus::True.as_str(), CONDITION_TRUE);
        // And serde writes what `as_str` says.
        assert_eq!(
            serde_json::to_value(ConditionType::StateDatabaseWritable).unwrap(),
            "StateDatabaseWritable"
        );
        assert_eq!(
            serde_json::to_value(ConditionStatus::False).unwrap(),
            "False"
        );
        assert_eq!(
            serde_json::to_value(ObjectKind::Affectation).unwrap(),
            "Affectation"
        );
    }

    #[test]
    fn an_expired_certificate_is_never_ready() {
        let now: jiff::Timestamp = "2026-06-01T00:00:00Z".parse().unwrap();
        let mut details = Map::new();
        details.insert("notAfter".into(), "2026-05-31T00:00:00Z".into());
        let end = not_after(&details).expect("notAfter read back");
        let mut following = Outcome::ready(Reason::Following, "the leader issues it".into());
        expire(&mut following, "the certificate", end, now);
        assert!(!following.ready);
        assert_eq!(following.reason, Reason::Expired);
        assert!(
            following
                .message
                .starts_with("the certificate expired at 2026-05-31T00:00:00Z"),
            "{}",
            following.message
        );
        // Valid a second longer: untouched.
        let mut ready = Outcome::ready(Reason::Ready, "valid".into());
        expire(
            &mut ready,
            "the certificate",
            now + jiff::SignedDuration::from_secs(1),
            now,
        );
        assert!(ready.ready);
        assert_eq!(ready.reason, Reason::Ready);
        // What is not ready keeps its own reason.
        let mut failed = Outcome::not_ready(Reason::RenewalFailed, "retrying".into());
        expire(&mut failed, "the certificate", end, now);
        assert_eq!(failed.reason, Reason::RenewalFailed);
    }

    #[test]
    fn kinds_map_both_ways() {
        for kind in [
            Kind::Server,
            Kind::Issuer,
            Kind::Certificate,
            Kind::Package,
            Kind::Activation,
            Kind::Affectation,
            Kind::Gateway,
        ] {
            assert_eq!(resource_kind(object_kind(kind)), kind);
            assert_eq!(object_kind(kind).as_str(), kind.as_str());
        }
    }
}
