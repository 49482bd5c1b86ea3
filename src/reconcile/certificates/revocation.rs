//! Revocation: `revoked: true` Certificates and `revokedSerials`, kept in `revoked.json`,
//! and each issuer's CRL (`crl.pem`), refreshed after 2/3 of its validity.

use std::collections::HashSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::desired::DesiredState;
use crate::pki::renewal::Existing;
use crate::pki::{authority, facts};
use crate::reconcile::outcome::{self, Outcome, Reason};
use crate::resources::{ObjectKey, Resource};
use crate::store::atomic::{self, Access};

use super::{Certificates, Error, not_ready, signed};

use super::issue::{FIRST_BACKOFF, certificate_status};

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

impl Certificates {
    /// The serials `issuer` has revoked: those its spec lists, and those of Certificates
    /// revoked through `revoked: true` (kept on disk, so they stay revoked).
    pub(super) fn revoked_serials(
        &self,
        issuer: &ObjectKey,
        desired: &DesiredState,
    ) -> HashSet<String> {
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
    pub(super) fn revoke(
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
                        format!(
                            "failed to record the revocation: {}",
                            crate::error_chain(&error)
                        ),
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
            details: outcome::details(&certificate_status(facts, revision)),
            issuing: Some((false, Reason::Revoked, String::new())),
            wake: None,
        }
    }

    fn revocations(&self, issuer: &ObjectKey) -> Revocations {
        std::fs::read(self.issuer_dir(issuer).join("revoked.json"))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    fn save_revocations(&self, issuer: &ObjectKey, revocations: &Revocations) -> Result<(), Error> {
        let body = serde_json::to_vec_pretty(revocations).map_err(|source| Error::Encode {
            what: "revoked.json",
            source,
        })?;
        atomic::write(
            &self.issuer_dir(issuer).join("revoked.json"),
            &body,
            Access::Public,
        )?;
        Ok(())
    }

    /// Writes the issuer's CRL (`crl.pem` beside its CA files) when it is missing, lists other
    /// serials than the revoked set, or has passed 2/3 of its validity. Returns when it is next
    /// due for refresh, and adds `crlNumber` and `crlNextUpdate` to the issuer's status.
    pub(super) fn publish_crl(
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
                    .map_err(Error::from)
                    .and_then(|pem| {
                        atomic::write(&path, pem.as_bytes(), Access::Public).map_err(Error::from)
                    })
                    .and_then(|()| self.save_revocations(key, &revocations));
                if let Err(error) = written {
                    outcome.message.push_str(&format!(
                        "; no CRL could be published: {}",
                        crate::error_chain(&error)
                    ));
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
        super::update_issuer_status(outcome, |status| {
            status.crl_number = i64::try_from(number).ok();
            status.crl_next_update = Some(Time(next_update));
            status.revoked_certificates = i64::try_from(revoked.len()).ok();
        });
        Some(this_update + next_update.duration_since(this_update) * 2 / 3)
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{ISSUER, Setup, certificate, key, now};
    use super::*;
    use crate::resources::Kind;

    #[test]
    fn a_revoked_certificate_is_listed_in_its_issuers_crl_and_not_renewed() {
        let mut setup = Setup::new();
        let desired = setup.desired(&format!("{ISSUER}{}", certificate("web", "")));
        let (outcomes, _) = setup.certificates.reconcile(&desired, now());
        let serial = outcomes[&key(Kind::Certificate, "web")].details["serialNumber"]
            .as_str()
            .unwrap()
            .to_owned();
        let crl_path = setup.state("pki/issuers/default/ca/crl.pem");
        let empty = facts::read_crl(&std::fs::read_to_string(&crl_path).unwrap()).unwrap();
        assert!(empty.serials.is_empty(), "{:?}", empty.serials);

        let later = now() + jiff::SignedDuration::from_hours(1);
        let revoked = setup.desired(&format!(
            "{ISSUER}{}",
            certificate("web", "  revoked: true\n")
        ));
        let (outcomes, _) = setup.certificates.reconcile(&revoked, later);
        let web = &outcomes[&key(Kind::Certificate, "web")];
        assert_eq!(web.reason, Reason::Revoked, "{web:?}");
        assert_eq!(web.details["serialNumber"], serial.as_str(), "not renewed");
        let issuer = &outcomes[&key(Kind::Issuer, "ca")];
        assert_eq!(issuer.details["revokedCertificates"], 1);
        assert_eq!(issuer.details["crlNumber"], 2, "a new CRL was published");

        let crl = facts::read_crl(&std::fs::read_to_string(&crl_path).unwrap()).unwrap();
        assert!(
            crl.serials.contains(&serial),
            "{:?} lacks {serial}",
            crl.serials
        );
        let kept = setup.certificates.revocations(&key(Kind::Issuer, "ca"));
        assert_eq!(kept.certificates.len(), 1);
        assert_eq!(kept.certificates[0].at, later.to_string());
    }
}
