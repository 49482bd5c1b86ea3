//! Issuance: what a Certificate's spec asks for, the renewal decision, issuing and writing
//! the PEM files, the revision record with its issuance cap, and backoff after failures.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Map, Value, json};

use crate::desired::DesiredState;
use crate::pki::authority::{self, Authority, LeafRequest};
use crate::pki::facts;
use crate::pki::renewal::{self, Decision, Existing, RenewBefore, Wanted};
use crate::pki::{Names, Usage};
use crate::reconcile::outcome::{self, Outcome, Reason};
use crate::resources::certificate::KeyUsage;
use crate::resources::issuer::{PrivateKeySpec, RotationPolicy};
use crate::resources::{Certificate, CertificateStatus, Kind, ObjectKey, Resource};
use crate::store::atomic::{self, Access};

use super::{Certificates, Error, key_type, not_ready, signed};

/// Default lifetime of a certificate: 90 days, as cert-manager.
const DEFAULT_LIFETIME: jiff::SignedDuration = jiff::SignedDuration::from_hours(2_160);
/// First retry after a failed issuance; doubles on each failure up to `MAX_BACKOFF`.
pub(super) const FIRST_BACKOFF: jiff::SignedDuration = jiff::SignedDuration::from_mins(1);
const MAX_BACKOFF: jiff::SignedDuration = jiff::SignedDuration::from_hours(1);

/// What is kept of a certificate's issuances, in `pki/certificates/<namespace>/<name>.json`.
#[derive(Clone, Debug, Default)]
pub(super) struct Record {
    /// Issuances so far (1 for the first).
    revision: i64,
    /// The latest issuances, oldest first, at most `renewal::MAX_ISSUANCES_PER_INTERVAL`.
    issued_at: Vec<jiff::Timestamp>,
    /// Why the latest issuance was made (`renewal::Reason` in words), shown as the `Issuing`
    /// condition's message, and so in the `Issued`/`Renewed` event; empty in files of older
    /// versions.
    reason: String,
}

impl Record {
    /// `{"revision": 3, "issuedAt": ["2026-01-01T00:00:00Z", ...], "reason": "..."}`; a
    /// file of older versions holds the revision alone.
    fn from_json(value: &Value) -> Self {
        Self {
            revision: value["revision"].as_i64().unwrap_or(0),
            reason: value["reason"].as_str().unwrap_or_default().to_owned(),
            issued_at: value["issuedAt"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|at| at.as_str()?.parse().ok())
                .collect(),
        }
    }

    /// Both records in one: the higher revision, the latest issuances of either.
    fn merge(mut self, other: &Self) -> Self {
        if other.revision > self.revision {
            self.reason.clone_from(&other.reason);
        }
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
        json!({ "revision": self.revision, "issuedAt": issued_at, "reason": self.reason })
    }
}

/// The last failed issuance of a certificate.
#[derive(Clone, Debug)]
pub(super) struct Failure {
    count: u32,
    at: jiff::Timestamp,
    retry_at: jiff::Timestamp,
    message: String,
    /// The spec that failed: a changed spec is tried at once.
    spec: Value,
}

impl Certificates {
    pub(super) fn certificate(
        &mut self,
        key: &ObjectKey,
        certificate: &Certificate,
        desired: &DesiredState,
        now: jiff::Timestamp,
    ) -> (Outcome, Option<jiff::Timestamp>) {
        let spec = &certificate.spec;
        let issuer_key = ObjectKey::referenced(Kind::Issuer, &key.namespace, &spec.issuer_ref);
        let Some(authority) = self.authorities.get(&issuer_key).cloned() else {
            return (waiting_for_issuer(&issuer_key, desired), None);
        };
        let mut wanted = wanted(certificate);
        let requested = self.renewal_requests.get(key).copied();
        wanted.requested = requested.and_then(|at| jiff::Timestamp::from_second(at).ok());
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
                // A request the current certificate already answers.
                if let Some(at) = requested {
                    self.renewals_honoured.push((key.clone(), at));
                }
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
                let outcome = ready_certificate(facts, renew_at, revision, &record.reason, &dir);
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
                if let Some(at) = requested {
                    self.renewals_honoured.push((key.clone(), at));
                }
                let why = reason.to_string();
                if let Err(error) = self.save_issuance(key, revision, &why, now) {
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
                let outcome = ready_certificate(&issued, renew_at, revision, &why, &dir);
                let outcome = self.with_keystores(outcome, key, certificate, desired, &dir, now);
                (outcome, Some(renew_at))
            }
            Err(error) => self.failed(key, &existing, &reason, &error, spec_json, revision, now),
        }
    }

    /// Records a failed issuance and its backoff: a minute, doubling with each failure of the
    /// same spec, up to `MAX_BACKOFF`.
    #[allow(clippy::too_many_arguments)] // the facts of one failure, all needed in its record
    fn failed(
        &mut self,
        key: &ObjectKey,
        existing: &Existing,
        reason: &renewal::Reason,
        error: &Error,
        spec_json: Value,
        revision: i64,
        now: jiff::Timestamp,
    ) -> (Outcome, Option<jiff::Timestamp>) {
        let count = self
            .failures
            .get(key)
            .filter(|f| f.spec == spec_json)
            .map_or(1, |f| f.count + 1);
        let backoff =
            (FIRST_BACKOFF * 2i32.saturating_pow(count.saturating_sub(1).min(16))).min(MAX_BACKOFF);
        let failure = Failure {
            count,
            at: now,
            retry_at: now + backoff,
            message: format!("{reason}: {}", crate::error_chain(error)),
            spec: spec_json,
        };
        tracing::warn!(certificate = %key, error = %failure.message, retry_in = ?backoff, "failed to issue a certificate");
        let outcome = failed_certificate(existing, &failure, revision);
        let retry = failure.retry_at;
        self.failures.insert(key.clone(), failure);
        (outcome, Some(retry))
    }

    /// Issues and writes the files; returns the new certificate's facts.
    pub(super) fn issue(
        &self,
        dir: &Path,
        wanted: &Wanted,
        private_key: Option<&PrivateKeySpec>,
        authority: &Authority,
        existing: &Existing,
        now: jiff::Timestamp,
    ) -> Result<facts::CertFacts, Error> {
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
            atomic::write(&dir.join(name), text.as_bytes(), access).map_err(Error::from)
        };
        // The key first: a reader that sees the new certificate always finds its key.
        write("tls.key", &key.serialize_pem(), Access::OwnerOnly)?;
        write("tls.crt", &issued.chain_pem, Access::Public)?;
        write("ca.crt", &issued.root_pem, Access::Public)?;
        Ok(issued.facts)
    }

    pub(super) fn revision_path(&self, key: &ObjectKey) -> PathBuf {
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
        reason: &str,
        now: jiff::Timestamp,
    ) -> Result<(), atomic::WriteError> {
        let mut record = self.record(key);
        record.revision = revision;
        reason.clone_into(&mut record.reason);
        record.issued_at.push(now);
        record.trim();
        let body = record.to_json().to_string();
        self.issuances.insert(key.clone(), record);
        atomic::write(&self.revision_path(key), body.as_bytes(), Access::Public)
    }
}

/// A Certificate whose issuer cannot sign: not ready yet, or trust-only (no key at all).
fn waiting_for_issuer(issuer_key: &ObjectKey, desired: &DesiredState) -> Outcome {
    let trust_only = matches!(
        desired.entries.get(issuer_key).and_then(|e| e.resource()),
        Some(Resource::Issuer(issuer)) if issuer.spec.ca.as_ref().is_some_and(|ca| ca.cert_file.is_some() && ca.key_file.is_none())
    );
    if trust_only {
        return not_ready(
            Reason::IssuerCannotSign,
            format!(
                "{issuer_key} is trust-only (certFile without keyFile): it holds no key to sign with"
            ),
        );
    }
    not_ready(Reason::IssuerNotReady, format!("waiting for {issuer_key}"))
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
        requested: None,
    }
}

/// The status fields of a Certificate whose certificate is `facts`, issued `revision` times.
pub(super) fn certificate_status(facts: &facts::CertFacts, revision: i64) -> CertificateStatus {
    CertificateStatus {
        not_before: Some(Time(facts.not_before)),
        not_after: Some(Time(facts.not_after)),
        serial_number: Some(facts.serial.clone()),
        revision: Some(revision),
        ..CertificateStatus::default()
    }
}

fn ready_certificate(
    facts: &facts::CertFacts,
    renew_at: jiff::Timestamp,
    revision: i64,
    reason: &str,
    dir: &Path,
) -> Outcome {
    let details = outcome::details(&CertificateStatus {
        renewal_time: Some(Time(renew_at)),
        ..certificate_status(facts, revision)
    });
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
        issuing: Some((false, Reason::Issued, issued_because(reason))),
        wake: None,
    }
}

/// The `Issuing` condition's message once issued: why the current revision was issued.
fn issued_because(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!("issued because {reason}")
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
        Existing::Present { facts, .. } => outcome::details(&certificate_status(facts, revision)),
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
    let status = match existing {
        Existing::Present { facts, .. } => certificate_status(facts, revision),
        _ => CertificateStatus::default(),
    };
    let details = outcome::details(&CertificateStatus {
        last_failure_time: Some(Time(failure.at)),
        last_failure_reason: Some(failure.message.clone()),
        ..status
    });
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::super::fixture::{ISSUER, Setup, at, certificate, key, now};
    use super::*;

    #[test]
    fn issuance_writes_the_files_and_records_the_revision_and_issued_at() {
        let mut setup = Setup::new();
        let desired = setup.desired(&format!("{ISSUER}{}", certificate("web", "")));
        let (outcomes, _) = setup.certificates.reconcile(&desired, now());
        assert!(outcomes[&key(Kind::Certificate, "web")].ready);

        let dir = setup.state("certificates/default/web");
        for file in ["tls.crt", "tls.key", "ca.crt"] {
            assert!(dir.join(file).exists(), "{file}");
        }
        let mode = std::fs::metadata(dir.join("tls.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the key is the owner's only");
        let record: Value = serde_json::from_slice(
            &std::fs::read(setup.state("pki/certificates/default/web.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(record["revision"], 1, "{record}");
        assert_eq!(record["issuedAt"], json!([now().to_string()]), "{record}");
    }

    #[test]
    fn a_failed_issuance_backs_off_doubling_and_a_spec_change_retries_at_once() {
        let mut setup = Setup::new();
        std::fs::write(setup.state("blocked"), "not a directory").unwrap();
        let blocked = "  outputDirectory: blocked/web\n";
        let desired = setup.desired(&format!("{ISSUER}{}", certificate("web", blocked)));
        let web = key(Kind::Certificate, "web");

        let (outcomes, _) = setup.certificates.reconcile(&desired, now());
        let failed = &outcomes[&web];
        assert_eq!(failed.reason, Reason::IssuanceFailed);
        assert!(failed.message.contains("blocked"), "{}", failed.message);
        let first = setup.certificates.failures[&web].retry_at;
        assert_eq!(first, now() + FIRST_BACKOFF);

        // Before the retry nothing is tried; at it, the next failure waits twice as long.
        setup
            .certificates
            .reconcile(&desired, first - jiff::SignedDuration::from_secs(1));
        assert_eq!(setup.certificates.failures[&web].count, 1);
        setup.certificates.reconcile(&desired, first);
        let failure = &setup.certificates.failures[&web];
        assert_eq!(failure.count, 2);
        assert_eq!(failure.retry_at, first + FIRST_BACKOFF * 2);

        // A changed spec is tried at once: the count starts again.
        let moved = "  outputDirectory: blocked/web\n  duration: 720h\n";
        let changed = setup.desired(&format!("{ISSUER}{}", certificate("web", moved)));
        setup.certificates.reconcile(&changed, first);
        assert_eq!(setup.certificates.failures[&web].count, 1);
    }

    #[test]
    fn the_record_keeps_the_latest_issuances_and_the_highest_revision() {
        let times = [
            "2026-01-01T00:00:00Z",
            "2026-01-02T00:00:00Z",
            "2026-01-03T00:00:00Z",
        ];
        let on_disk =
            Record::from_json(&json!({ "revision": 3, "issuedAt": [times[0], times[2]] }));
        let kept = Record {
            revision: 2,
            issued_at: vec![at(times[1]), at(times[2])],
            reason: "the certificate is due for renewal".into(),
        };
        let merged = on_disk.merge(&kept);
        assert_eq!(merged.revision, 3);
        assert_eq!(merged.issued_at, vec![at(times[1]), at(times[2])]);
        // A file of older versions holds the revision alone.
        let old = Record::from_json(&json!({ "revision": 7 }));
        assert_eq!((old.revision, old.issued_at.len()), (7, 0));
    }
}
