//! Should this certificate be issued again, and when? An ordered chain of pure checks of
//! (what exists, what is wanted, the issuer, now), as in cert-manager: the first that fires
//! is the reason shown in status and logs. When none fires, the time to renew is returned so
//! the reconcile loop can wake then.

use std::fmt;

use super::facts::CertFacts;
use super::{KeyType, Names, Usage};

/// What exists on disk for a certificate.
#[derive(Clone, Debug)]
pub enum Existing {
    /// No certificate yet.
    Missing,
    /// Files exist but cannot be used (why).
    Unreadable(String),
    /// A certificate, whether the key beside it is its key, and whether its issuer has
    /// revoked it.
    Present {
        facts: Box<CertFacts>,
        key_matches: bool,
        revoked: bool,
    },
}

/// What the Certificate resource asks for.
#[derive(Clone, Debug)]
pub struct Wanted {
    pub names: Names,
    pub usages: Vec<Usage>,
    pub is_ca: bool,
    pub key_type: KeyType,
    pub lifetime: jiff::SignedDuration,
    pub renew: RenewBefore,
}

/// When to renew, before the end of the validity.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RenewBefore {
    /// At 2/3 of the lifetime (cert-manager's default).
    Default,
    /// This long before `notAfter`.
    Duration(jiff::SignedDuration),
    /// When this percentage of the lifetime remains.
    Percentage(u8),
}

/// Why a certificate is (re-)issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    Missing,
    Unreadable(String),
    KeyMismatch,
    Revoked,
    SpecChanged(String),
    IssuerChanged,
    Expired,
    Renewal,
}

impl Reason {
    /// A CamelCase word for conditions and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Reason::Missing => "DoesNotExist",
            Reason::Unreadable(_) => "Unreadable",
            Reason::KeyMismatch => "KeyMismatch",
            Reason::Revoked => "Revoked",
            Reason::SpecChanged(_) => "SpecChanged",
            Reason::IssuerChanged => "IssuerChanged",
            Reason::Expired => "Expired",
            Reason::Renewal => "Renewing",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Missing => f.write_str("no certificate has been issued yet"),
            Reason::Unreadable(why) => write!(f, "the existing certificate cannot be used: {why}"),
            Reason::KeyMismatch => f.write_str("the private key does not match the certificate"),
            Reason::Revoked => f.write_str("the certificate was revoked"),
            Reason::SpecChanged(what) => write!(f, "the spec changed: {what}"),
            Reason::IssuerChanged => {
                f.write_str("the certificate was not signed by the current issuer")
            }
            Reason::Expired => f.write_str("the certificate has expired"),
            Reason::Renewal => f.write_str("the certificate is due for renewal"),
        }
    }
}

/// The outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Issue(Reason),
    /// Keep what exists; renew at this time.
    Keep {
        renew_at: jiff::Timestamp,
    },
}

/// Decides whether to issue, given what exists, what is wanted, the issuer's CA and now.
pub fn decide(
    existing: &Existing,
    wanted: &Wanted,
    issuer: &CertFacts,
    now: jiff::Timestamp,
) -> Decision {
    let (facts, key_matches, revoked) = match existing {
        Existing::Missing => return Decision::Issue(Reason::Missing),
        Existing::Unreadable(why) => return Decision::Issue(Reason::Unreadable(why.clone())),
        Existing::Present {
            facts,
            key_matches,
            revoked,
        } => (facts.as_ref(), *key_matches, *revoked),
    };
    let checks: [&dyn Fn() -> Option<Reason>; 5] = [
        &|| (!key_matches).then_some(Reason::KeyMismatch),
        &|| revoked.then_some(Reason::Revoked),
        &|| spec_changed(facts, wanted, issuer).map(Reason::SpecChanged),
        &|| (!facts.issued_by(issuer)).then_some(Reason::IssuerChanged),
        &|| (facts.not_after <= now).then_some(Reason::Expired),
    ];
    if let Some(reason) = checks.iter().find_map(|check| check()) {
        return Decision::Issue(reason);
    }
    let renew_at = renewal_time(facts, wanted.renew);
    if now >= renew_at {
        Decision::Issue(Reason::Renewal)
    } else {
        Decision::Keep { renew_at }
    }
}

/// When a certificate with these facts should be renewed.
pub fn renewal_time(facts: &CertFacts, renew: RenewBefore) -> jiff::Timestamp {
    let lifetime = facts.lifetime();
    let before = match renew {
        RenewBefore::Default => lifetime / 3,
        RenewBefore::Duration(d) => d,
        RenewBefore::Percentage(p) => lifetime * i32::from(p) / 100,
    };
    // A renewBefore at least as long as the lifetime would renew forever: fall back to 1/3.
    let before = if before >= lifetime || before.is_negative() {
        lifetime / 3
    } else {
        before
    };
    facts.not_after - before
}

/// What differs between the certificate and the spec, in words, if anything.
fn spec_changed(facts: &CertFacts, wanted: &Wanted, issuer: &CertFacts) -> Option<String> {
    let have = facts.names.canonical();
    let want = wanted.names.canonical();
    if want.common_name.is_some() && have.common_name != want.common_name {
        return Some(format!(
            "commonName is {:?}, wanted {:?}",
            have.common_name.unwrap_or_default(),
            want.common_name.unwrap_or_default()
        ));
    }
    if have.dns_names != want.dns_names {
        return Some(format!(
            "dnsNames are {:?}, wanted {:?}",
            have.dns_names, want.dns_names
        ));
    }
    if have.ip_addresses != want.ip_addresses {
        return Some(format!(
            "ipAddresses are {:?}, wanted {:?}",
            have.ip_addresses, want.ip_addresses
        ));
    }
    if have.uris != want.uris {
        return Some(format!("uris are {:?}, wanted {:?}", have.uris, want.uris));
    }
    let mut usages = wanted.usages.clone();
    usages.sort();
    usages.dedup();
    if facts.usages != usages {
        return Some("usages differ".to_owned());
    }
    if facts.is_ca != wanted.is_ca {
        return Some(format!("isCA is {}, wanted {}", facts.is_ca, wanted.is_ca));
    }
    if facts.key_type != Some(wanted.key_type) {
        return Some(format!(
            "the key is {}, wanted {}",
            describe(facts.key_type),
            wanted.key_type
        ));
    }
    // A lifetime cut short by the issuer's own end is not a change of spec.
    let capped = facts.not_after == issuer.not_after;
    let difference = (facts.lifetime() - wanted.lifetime - super::authority::BACKDATE).abs();
    if !capped && difference > jiff::SignedDuration::from_mins(1) {
        return Some(format!(
            "the duration is {}, wanted {}",
            hours(facts.lifetime() - super::authority::BACKDATE),
            hours(wanted.lifetime)
        ));
    }
    None
}

fn describe(key: Option<KeyType>) -> String {
    key.map_or_else(|| "of an unknown type".to_owned(), |k| k.to_string())
}

fn hours(d: jiff::SignedDuration) -> String {
    format!("{}h{}m", d.as_secs() / 3600, (d.as_secs() % 3600) / 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::authority::{Authority, LeafRequest, generate_key};

    fn at(text: &str) -> jiff::Timestamp {
        text.parse().unwrap()
    }

    fn wanted() -> Wanted {
        Wanted {
            names: Names {
                dns_names: vec!["tessera.local".into()],
                ..Names::default()
            },
            usages: vec![Usage::ServerAuth],
            is_ca: false,
            key_type: KeyType::EcdsaP256,
            lifetime: jiff::SignedDuration::from_hours(90 * 24),
            renew: RenewBefore::Default,
        }
    }

    fn issue(ca: &Authority, wanted: &Wanted, now: jiff::Timestamp) -> Existing {
        let key = generate_key(wanted.key_type).unwrap();
        let request = LeafRequest {
            names: wanted.names.clone(),
            usages: wanted.usages.clone(),
            is_ca: wanted.is_ca,
            lifetime: wanted.lifetime,
        };
        let issued = ca.issue(&request, &key, now).unwrap();
        Existing::Present {
            facts: Box::new(issued.facts),
            key_matches: true,
            revoked: false,
        }
    }

    fn ca(now: jiff::Timestamp) -> Authority {
        Authority::generate(
            "CA",
            KeyType::EcdsaP256,
            now,
            jiff::SignedDuration::from_hours(87600),
        )
        .unwrap()
    }

    #[test]
    fn the_first_check_that_fires_is_the_reason() {
        let now = at("2026-01-01T00:00:00Z");
        let ca = ca(now);
        assert_eq!(
            decide(&Existing::Missing, &wanted(), ca.facts(), now),
            Decision::Issue(Reason::Missing)
        );
        assert!(matches!(
            decide(
                &Existing::Unreadable("bad PEM".into()),
                &wanted(),
                ca.facts(),
                now
            ),
            Decision::Issue(Reason::Unreadable(_))
        ));
        let Existing::Present { facts, .. } = issue(&ca, &wanted(), now) else {
            unreachable!()
        };
        let revoked = Existing::Present {
            facts: facts.clone(),
            key_matches: true,
            revoked: true,
        };
        assert_eq!(
            decide(&revoked, &wanted(), ca.facts(), now),
            Decision::Issue(Reason::Revoked)
        );
        // A wrong key is found before anything else, even revoked and with the names changed.
        let mut changed = wanted();
        changed.names.dns_names.push("other.local".into());
        let wrong_key = Existing::Present {
            facts,
            key_matches: false,
            revoked: true,
        };
        assert_eq!(
            decide(&wrong_key, &changed, ca.facts(), now),
            Decision::Issue(Reason::KeyMismatch)
        );
    }

    #[test]
    fn a_fresh_certificate_is_kept_until_two_thirds_of_its_life() {
        let now = at("2026-01-01T00:00:00Z");
        let ca = ca(now);
        let existing = issue(&ca, &wanted(), now);
        let Decision::Keep { renew_at } = decide(&existing, &wanted(), ca.facts(), now) else {
            panic!("fresh certificate should be kept")
        };
        // Lifetime 90 days plus the 5-minute backdate; renewal at 2/3 of it.
        let lifetime = jiff::SignedDuration::from_hours(90 * 24) + crate::pki::authority::BACKDATE;
        assert_eq!(
            renew_at,
            now + jiff::SignedDuration::from_hours(90 * 24) - lifetime / 3
        );
        assert_eq!(
            decide(&existing, &wanted(), ca.facts(), renew_at),
            Decision::Issue(Reason::Renewal)
        );
        let just_before = renew_at - jiff::SignedDuration::from_secs(1);
        assert!(matches!(
            decide(&existing, &wanted(), ca.facts(), just_before),
            Decision::Keep { .. }
        ));
        let after_end = now + jiff::SignedDuration::from_hours(91 * 24);
        assert_eq!(
            decide(&existing, &wanted(), ca.facts(), after_end),
            Decision::Issue(Reason::Expired)
        );
    }

    #[test]
    fn renew_before_and_percentage_move_the_renewal_time() {
        let now = at("2026-01-01T00:00:00Z");
        let ca = ca(now);
        let Existing::Present { facts, .. } = issue(&ca, &wanted(), now) else {
            unreachable!()
        };
        let end = facts.not_after;
        assert_eq!(
            renewal_time(
                &facts,
                RenewBefore::Duration(jiff::SignedDuration::from_hours(720))
            ),
            end - jiff::SignedDuration::from_hours(720)
        );
        assert_eq!(
            renewal_time(&facts, RenewBefore::Percentage(50)),
            end - facts.lifetime() / 2
        );
        // A renewBefore longer than the lifetime falls back to 1/3 rather than renewing forever.
        assert_eq!(
            renewal_time(
                &facts,
                RenewBefore::Duration(jiff::SignedDuration::from_hours(100 * 24))
            ),
            end - facts.lifetime() / 3
        );
    }

    #[test]
    fn spec_changes_are_named() {
        let now = at("2026-01-01T00:00:00Z");
        let ca = ca(now);
        let existing = issue(&ca, &wanted(), now);
        let mut names = wanted();
        names.names.ip_addresses.push("10.0.0.1".parse().unwrap());
        assert!(matches!(
            decide(&existing, &names, ca.facts(), now),
            Decision::Issue(Reason::SpecChanged(what)) if what.contains("ipAddresses")
        ));
        let mut usages = wanted();
        usages.usages.push(Usage::ClientAuth);
        assert!(matches!(
            decide(&existing, &usages, ca.facts(), now),
            Decision::Issue(Reason::SpecChanged(_))
        ));
        let mut key = wanted();
        key.key_type = KeyType::Ed25519;
        assert!(matches!(
            decide(&existing, &key, ca.facts(), now),
            Decision::Issue(Reason::SpecChanged(what)) if what.contains("Ed25519")
        ));
        let mut duration = wanted();
        duration.lifetime = jiff::SignedDuration::from_hours(24);
        assert!(matches!(
            decide(&existing, &duration, ca.facts(), now),
            Decision::Issue(Reason::SpecChanged(what)) if what.contains("duration")
        ));
        // The same names in another order and case are no change.
        let mut reordered = wanted();
        reordered.names.dns_names = vec!["TESSERA.local".into()];
        assert!(matches!(
            decide(&existing, &reordered, ca.facts(), now),
            Decision::Keep { .. }
        ));
    }

    #[test]
    fn a_new_issuer_means_a_new_certificate() {
        let now = at("2026-01-01T00:00:00Z");
        let old = ca(now);
        let existing = issue(&old, &wanted(), now);
        let new = ca(now);
        assert_eq!(
            decide(&existing, &wanted(), new.facts(), now),
            Decision::Issue(Reason::IssuerChanged)
        );
    }
}
