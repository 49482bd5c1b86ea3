//! Issuers: loading or making each Issuer's CA, trust-only issuers, and walking a CA
//! rollover (overlap, re-issuing, complete) when [`crate::pki::rollover`] says one is due.

use std::path::Path;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::desired::DesiredState;
use crate::pki::authority::Authority;
use crate::pki::{KeyType, facts};
use crate::reconcile::outcome::{self, Outcome, Reason};
use crate::resources::{Issuer, IssuerStatus, Kind, ObjectKey, Resource};
use crate::store::atomic::{self, Access};

use crate::pki::rollover::{self, Decision, Offered};

use super::outputs::read_ca_secret;
use super::{Certificates, Error, key_type, not_ready, read_pair, read_text, signed};

/// Default lifetime of a self-signed CA: 10 years.
const DEFAULT_CA_LIFETIME: jiff::SignedDuration = jiff::SignedDuration::from_hours(87_600);

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

impl Certificates {
    /// The key pair (`tls.crt`, `tls.key`) of a `kubernetes.io/tls` Secret that a Server
    /// presents instead of a Certificate, through the Kubernetes Secrets adapter (which
    /// remembers the read, so a change to the Secret makes a pass); `None` outside
    /// Kubernetes mode.
    pub fn secret_key_pair(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<Result<(String, String), crate::reconcile::secrets::SecretsError>> {
        let secrets = self.secrets.as_ref()?;
        Some(secrets.read_key_pair(namespace, name))
    }

    pub(super) fn issuer(
        &mut self,
        key: &ObjectKey,
        issuer: &Issuer,
        desired: &DesiredState,
        now: jiff::Timestamp,
    ) -> Outcome {
        let mut rollover = Rollover::default();
        let loaded = match (&issuer.spec.self_signed, &issuer.spec.ca) {
            (Some(self_signed), _) => {
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
                self.managed_ca(key, &source, rollover_overlap(issuer), now)
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
                                .map_err(Error::from)
                        }
                        None => {
                            return not_ready(
                                Reason::Pending,
                                format!("waiting for {certificate} to be issued"),
                            );
                        }
                    }
                } else if let (Some(cert_file), None) = (&ca.cert_file, &ca.key_file) {
                    let base = crate::reconcile::declaring_dir(&self.config_dir, desired, key);
                    self.authorities.remove(key);
                    return self.trust_only(key, &base, cert_file, ca.crl_file.as_deref(), now);
                } else {
                    let supplied = if let (Some(cert_file), Some(key_file)) =
                        (&ca.cert_file, &ca.key_file)
                    {
                        let base = crate::reconcile::declaring_dir(&self.config_dir, desired, key);
                        let read = |name: &str| read_text(&base.join(name));
                        read(cert_file).and_then(|chain| read(key_file).map(|k| (chain, k)))
                    } else if let (Some(secret), Some(secrets)) = (&ca.secret_name, &self.secrets) {
                        read_ca_secret(secrets.as_ref(), &key.namespace, secret)
                    } else {
                        return not_ready(
                            Reason::SecretsNeedKubernetes,
                            "secretName is read in Kubernetes mode; in directory mode use certFile and keyFile".into(),
                        );
                    };
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
                                Authority::from_pem(chain, key_pem, None)?;
                            }
                            self.managed_ca(key, &source, rollover_overlap(issuer), now)
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
                let outcome = signing(authority.facts(), &rollover, now);
                self.authorities.insert(key.clone(), Arc::new(authority));
                outcome
            }
            Err(error) => {
                self.authorities.remove(key);
                not_ready(Reason::ErrorLoadingCA, crate::error_chain(&error))
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
        source: &CaSource,
        overlap: jiff::SignedDuration,
        now: jiff::Timestamp,
    ) -> Result<(Authority, Rollover), Error> {
        let dir = self.issuer_dir(key);
        // The CA the source offers now: made fresh, or the operator's files.
        let offered = |sub: &Path| -> Result<Authority, Error> {
            let (authority, chain) = match &source {
                CaSource::Generated {
                    common_name,
                    key_type,
                    lifetime,
                } => {
                    let authority = Authority::generate(common_name, *key_type, now, *lifetime)?;
                    let pem = authority.certificate_pem().to_owned();
                    (authority, pem)
                }
                CaSource::Supplied { chain, key } => {
                    (Authority::from_pem(chain, key, None)?, chain.clone())
                }
            };
            keep_ca(sub, &authority, &chain)?;
            Ok(authority)
        };

        if !dir.join("ca.crt").exists() && !dir.join("ca.key").exists() {
            let authority = offered(&dir)?;
            tracing::info!(issuer = %key, subject = %authority.facts().subject, "took a CA into use");
        }
        // Never overwrite a CA that cannot be read: agents trust it.
        let mut active = load_ca(&dir)?;
        let mut state = self.rollover_state(key);

        if state.is_none() {
            // The operator's files, checked before the decision reads them.
            let supplied = match &source {
                CaSource::Generated { .. } => None,
                CaSource::Supplied {
                    chain,
                    key: key_pem,
                } => Some((Authority::from_pem(chain, key_pem, None)?, chain)),
            };
            let offer = match (&source, &supplied) {
                (
                    CaSource::Generated {
                        common_name,
                        key_type,
                        ..
                    },
                    _,
                ) => Offered::Generated {
                    common_name,
                    key_type: *key_type,
                },
                (CaSource::Supplied { .. }, Some((supplied, _))) => Offered::Supplied {
                    facts: supplied.facts(),
                    same_root: supplied.root_pem() == active.root_pem(),
                },
                (CaSource::Supplied { .. }, None) => unreachable!("supplied CAs are loaded above"),
            };
            let why = match rollover::decide(active.facts(), &offer, overlap, now) {
                Decision::Keep => None,
                Decision::Start(why) => Some(why),
                Decision::TakeOver => {
                    let Some((supplied, chain)) = supplied else {
                        unreachable!("only supplied CAs are taken over")
                    };
                    // Same trust anchor (another intermediate of the same root): clients
                    // already trust it, so it takes over at once.
                    keep_ca(&dir, &supplied, chain)?;
                    tracing::info!(issuer = %key, subject = %supplied.facts().subject, "new CA files under the same root: in use at once");
                    active = supplied;
                    None
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
                tracing::info!(issuer = %key, new = %next.facts().serial, reason = %why, reissue_at = %started.reissue_at, "CA rollover: overlap begins");
                state = Some(started);
            }
        }
        if let Some(current) = &state
            && current.phase == RolloverPhase::Overlap
            && now >= current.reissue_at()
        {
            let (next, reissuing) = self.start_reissuing(key, &active, current, now)?;
            state = Some(reissuing);
            active = next;
        }

        in_use(&dir, active, state.as_ref(), overlap, now)
    }

    /// The end of the overlap: the new CA signs, with a cross-certificate from the old one,
    /// and the old root is kept as `previous.crt` for the bundle. Returns the new CA.
    fn start_reissuing(
        &self,
        key: &ObjectKey,
        active: &Authority,
        current: &RolloverState,
        now: jiff::Timestamp,
    ) -> Result<(Authority, RolloverState), Error> {
        let dir = self.issuer_dir(key);
        let next = load_ca(&dir.join("next"))?;
        let cross = active.cross_sign(&next, now)?;
        // Clients that know only the old root verify the new CA through the cross-certificate,
        // then through the old CA's own intermediates, if it had any.
        let old_chain = read_text(&dir.join("ca.crt"))?;
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
        )?;
        atomic::write(
            &dir.join("cross.crt"),
            format!("{cross}{old_intermediates}").as_bytes(),
            Access::Public,
        )?;
        let next_chain = read_text(&dir.join("next/ca.crt"))?;
        keep_ca(&dir, &next, &next_chain)?;
        let _ = std::fs::remove_dir_all(dir.join("next"));
        let reissuing = RolloverState {
            phase: RolloverPhase::Reissuing,
            ..current.clone()
        };
        self.save_rollover(key, &reissuing)?;
        tracing::info!(issuer = %key, serial = %next.facts().serial, "CA rollover: the new CA signs; re-issuing every certificate");
        Ok((next, reissuing))
    }

    /// Ends a rollover in `Reissuing` once every Certificate of `issuer` is signed by the new
    /// CA: the old CA leaves the trust bundle. Returns whether it ended.
    pub(super) fn complete_rollover(&self, issuer: &ObjectKey, desired: &DesiredState) -> bool {
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

    fn save_rollover(&self, issuer: &ObjectKey, state: &RolloverState) -> Result<(), Error> {
        let body = serde_json::to_vec_pretty(state).map_err(|source| Error::Encode {
            what: "rollover.json",
            source,
        })?;
        atomic::write(
            &self.issuer_dir(issuer).join("rollover.json"),
            &body,
            Access::Public,
        )?;
        Ok(())
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
        let checked = read_trust(base, cert_file, crl_file);
        let (pem, ca, crl) = match checked {
            Ok(checked) => checked,
            Err(error) => return not_ready(Reason::ErrorLoadingCA, crate::error_chain(&error)),
        };
        let dir = self.issuer_dir(key);
        let write = |name: &str, body: &str| {
            let path = dir.join(name);
            if std::fs::read_to_string(&path).ok().as_deref() == Some(body) {
                return Ok(());
            }
            atomic::write(&path, body.as_bytes(), Access::Public).map_err(Error::from)
        };
        let written = write("ca.crt", &pem).and_then(|()| match &crl {
            Some((text, _)) => write("crl.pem", text),
            None => match std::fs::remove_file(dir.join("crl.pem")) {
                Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
                    Err(Error::Remove {
                        path: dir.join("crl.pem"),
                        source,
                    })
                }
                _ => Ok(()),
            },
        });
        if let Err(error) = written {
            return not_ready(Reason::WriteFailed, crate::error_chain(&error));
        }
        let details = outcome::details(&IssuerStatus {
            subject: Some(ca.subject.clone()),
            serial_number: Some(ca.serial.clone()),
            not_after: Some(Time(ca.not_after)),
            crl_number: crl
                .as_ref()
                .and_then(|(_, crl)| i64::try_from(crl.number).ok()),
            crl_next_update: crl.as_ref().map(|(_, crl)| Time(crl.next_update)),
            ..IssuerStatus::default()
        });
        if let Some((_, crl)) = &crl
            && crl.next_update <= now
        {
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
}

/// The outcome of an issuer whose CA loaded: signing, unless it expired.
fn signing(facts: &facts::CertFacts, rollover: &Rollover, now: jiff::Timestamp) -> Outcome {
    let details = outcome::details(&IssuerStatus {
        subject: Some(facts.subject.clone()),
        serial_number: Some(facts.serial.clone()),
        not_after: Some(Time(facts.not_after)),
        rollover_phase: rollover.phase.map(str::to_owned),
        ..IssuerStatus::default()
    });
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

/// The CA in use, with what clients are given beside it: the cross-certificate after each
/// leaf, and a bundle of both CAs during a rollover.
fn in_use(
    dir: &Path,
    active: Authority,
    state: Option<&RolloverState>,
    overlap: jiff::SignedDuration,
    now: jiff::Timestamp,
) -> Result<(Authority, Rollover), Error> {
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
    let (intermediates, bundle, rollover) = match state.map(|s| s.phase) {
        Some(RolloverPhase::Overlap) => {
            let next = load_ca(&dir.join("next"))?.root_pem().to_owned();
            let at = state.map(RolloverState::reissue_at);
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
            let previous = read_text(&dir.join("previous.crt"))?;
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
            let next = rollover::start(active.facts(), overlap);
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

/// How long clients are given both CAs in a rollover.
fn rollover_overlap(issuer: &Issuer) -> jiff::SignedDuration {
    issuer
        .spec
        .rollover_overlap
        .map_or(DEFAULT_ROLLOVER_OVERLAP, |d| signed(d.as_std()))
}

/// The CA kept in `sub` (`ca.crt`, `ca.key`). One that does not load is never replaced:
/// agents trust it.
fn load_ca(sub: &Path) -> Result<Authority, Error> {
    let chain = read_text(&sub.join("ca.crt"))?;
    let key_pem = read_text(&sub.join("ca.key"))?;
    Authority::from_pem(&chain, &key_pem, None).map_err(|source| Error::UnusableCa {
        dir: sub.to_path_buf(),
        source,
    })
}

/// Keeps `authority` in `sub`: its key (0600) and `chain`.
fn keep_ca(sub: &Path, authority: &Authority, chain: &str) -> Result<(), Error> {
    atomic::write(
        &sub.join("ca.key"),
        authority.key_pem().as_bytes(),
        Access::OwnerOnly,
    )?;
    atomic::write(&sub.join("ca.crt"), chain.as_bytes(), Access::Public)?;
    Ok(())
}

/// A trust-only issuer's files: its CA certificate (PEM and facts) and its CRL (PEM and facts).
type TrustFiles = (String, facts::CertFacts, Option<(String, facts::CrlFacts)>);

/// A trust-only issuer's CA certificate (PEM and facts) and CRL, checked: the CRL must be
/// one, and be the CA's.
fn read_trust(base: &Path, cert_file: &str, crl_file: Option<&str>) -> Result<TrustFiles, Error> {
    let read = |name: &str| read_text(&base.join(name));
    read(cert_file).and_then(|pem| {
        let first = facts::pem_certificates(&pem)
            .and_then(|certs| facts::read(&certs[0]))
            .map_err(|source| Error::BadFile {
                file: cert_file.to_owned(),
                source,
            })?;
        let crl = match crl_file {
            None => None,
            Some(name) => {
                let text = read(name)?;
                let crl = facts::read_crl(&text).ok_or_else(|| Error::NotCrl {
                    file: name.to_owned(),
                })?;
                if crl.issuer != first.subject_der {
                    return Err(Error::CrlOfAnotherCa {
                        crl: name.to_owned(),
                        ca: cert_file.to_owned(),
                    });
                }
                Some((text, crl))
            }
        };
        Ok((pem, first, crl))
    })
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{Setup, certificate, key, now};
    use super::*;

    fn issuer(common_name: &str) -> String {
        format!(
            "apiVersion: tessera.dev/v1alpha1\nkind: Issuer\nmetadata:\n  name: ca\nspec:\n  selfSigned:\n    commonName: {common_name}\n    duration: 3h\n  rolloverOverlap: 30m\n"
        )
    }

    #[test]
    fn a_changed_common_name_walks_the_rollover_through_overlap_and_reissuing_to_complete() {
        let mut setup = Setup::new();
        let web = certificate("web", "  duration: 1h\n");
        let (ca, leaf) = (key(Kind::Issuer, "ca"), key(Kind::Certificate, "web"));
        let first = setup.desired(&format!("{}{web}", issuer("Old CA")));
        let (outcomes, _) = setup.certificates.reconcile(&first, now());
        assert_eq!(outcomes[&ca].details.get("rolloverPhase"), None);
        let old_serial = outcomes[&leaf].details["serialNumber"].clone();

        // The spec changes: a new CA is made and clients get both, while the old one signs.
        let renamed = setup.desired(&format!("{}{web}", issuer("New CA")));
        let t1 = now() + jiff::SignedDuration::from_mins(1);
        let (outcomes, _) = setup.certificates.reconcile(&renamed, t1);
        assert_eq!(outcomes[&ca].details["rolloverPhase"], "Overlap");
        assert_eq!(
            outcomes[&ca].wake,
            Some(t1 + jiff::SignedDuration::from_mins(30))
        );
        let bundle =
            std::fs::read_to_string(setup.state("certificates/default/web/ca.crt")).unwrap();
        assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2, "both CAs");
        assert_eq!(
            outcomes[&leaf].details["serialNumber"], old_serial,
            "still the old CA's"
        );
        assert!(setup.state("pki/issuers/default/ca/next/ca.crt").exists());

        // After the overlap the new CA signs, every leaf is re-issued and the rollover ends.
        let t2 = t1 + jiff::SignedDuration::from_mins(30);
        let (outcomes, _) = setup.certificates.reconcile(&renamed, t2);
        assert_eq!(outcomes[&ca].details["rolloverPhase"], "Complete");
        assert_ne!(
            outcomes[&leaf].details["serialNumber"], old_serial,
            "re-issued"
        );
        assert!(
            outcomes[&ca].message.contains("New CA"),
            "{}",
            outcomes[&ca].message
        );
        let (outcomes, _) = setup.certificates.reconcile(&renamed, t2);
        assert_eq!(outcomes[&ca].details.get("rolloverPhase"), None);
        assert!(!setup.state("pki/issuers/default/ca/previous.crt").exists());
        let bundle =
            std::fs::read_to_string(setup.state("certificates/default/web/ca.crt")).unwrap();
        assert_eq!(
            bundle.matches("BEGIN CERTIFICATE").count(),
            1,
            "the old CA left"
        );
    }

    #[test]
    fn a_ca_that_no_longer_loads_is_reported_and_never_replaced() {
        let mut setup = Setup::new();
        let desired = setup.desired(&issuer("Kept CA"));
        setup.certificates.reconcile(&desired, now());
        let key_file = setup.state("pki/issuers/default/ca/ca.key");
        std::fs::write(&key_file, "not a key").unwrap();

        let (outcomes, _) = setup.certificates.reconcile(&desired, now());
        let outcome = &outcomes[&key(Kind::Issuer, "ca")];
        assert!(!outcome.ready);
        assert_eq!(outcome.reason, Reason::ErrorLoadingCA);
        assert!(
            outcome
                .message
                .contains("cannot be used, and is not replaced: "),
            "{}",
            outcome.message
        );
        assert_eq!(std::fs::read_to_string(&key_file).unwrap(), "not a key");
        assert!(
            setup
                .certificates
                .authority(&key(Kind::Issuer, "ca"))
                .is_none()
        );
    }
}
