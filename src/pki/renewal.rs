//! Should this certificate be issued again, and when? An ordered chain of pure checks of
//! (what exists, what is wanted, the issuer, now), as in cert-manager: the first that fires
//! is the reason shown in status and logs. When none fires, the time to renew is returned so
//! the reconcile loop can wake then.
//!
//! A renewal loop is impossible by construction, with two guards:
//! - a certificate is renewed no sooner than [`MIN_INTERVAL`] after it was issued (read from
//!   its own `notBefore`, so this holds across restarts), even when its lifetime is shorter;
//! - whatever the reason, the same certificate is issued at most
//!   [`MAX_ISSUANCES_PER_INTERVAL`] times in any [`MIN_INTERVAL`]: the caller passes the
//!   times of its recent issuances and a reason beyond that budget is held
//!   ([`Decision::Hold`]).

use std::fmt;

use super::facts::CertFacts;
use super::{KeyType, Names, Usage};

/// The backoff interval of issuance: 10 minutes. A certificate is kept at least this long
/// before its renewal is due, so a renewal fires at most once per interval. Validation keeps
/// `renewBefore` within it (`resources::certificate::MIN_KEPT`, the same value); a certificate
/// that bypassed validation is held instead of renewed at every pass.
pub const MIN_INTERVAL: jiff::SignedDuration = jiff::SignedDuration::from_mins(10);

/// Issuances of one certificate allowed within any [`MIN_INTERVAL`]: two. The second serves an
/// operator's change right after an issuance (spec edited, certificate unrevoked, new CA);
/// a third within the interval can only be a loop (two Certificates sharing an output
/// directory, say), and waits.
pub const MAX_ISSUANCES_PER_INTERVAL: usize = 2;

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
    /// When an operator asked for a new certificate (`tessera renew`), if one did: a
    /// certificate issued before then (or in that second) is renewed, one issued later
    /// has answered it.
    pub requested: Option<jiff::Timestamp>,
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
    Requested,
}

impl Reason {
    /// A CamelCase word for conditions and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing => "DoesNotExist",
            Self::Unreadable(_) => "Unreadable",
            Self::KeyMismatch => "KeyMismatch",
            Self::Revoked => "Revoked",
            Self::SpecChanged(_) => "SpecChanged",
            Self::IssuerChanged => "IssuerChanged",
            Self::Expired => "Expired",
            Self::Renewal => "Renewing",
            Self::Requested => "ManuallyTriggered",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str("no certificate has been issued yet"),
            Self::Unreadable(why) => write!(f, "the existing certificate cannot be used: {why}"),
            Self::KeyMismatch => f.write_str("the private key does not match the certificate"),
            Self::Revoked => f.write_str("the certificate was revoked"),
            Self::SpecChanged(what) => write!(f, "the spec changed: {what}"),
            Self::IssuerChanged => {
                f.write_str("the certificate was not signed by the current issuer")
            }
            Self::Expired => f.write_str("the certificate has expired"),
            Self::Renewal => f.write_str("the certificate is due for renewal"),
            Self::Requested => f.write_str("renewal requested by an operator"),
        }
    }
}

/// The outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Issue(Reason),
    /// A reason to issue, but the certificate was issued [`MAX_ISSUANCES_PER_INTERVAL`] times
    /// within [`MIN_INTERVAL`]: not before `until`.
    Hold {
        reason: Reason,
        until: jiff::Timestamp,
    },
    /// Keep what exists; renew at this time.
    Keep {
        renew_at: jiff::Timestamp,
    },
}

/// Decides whether to issue, given what exists, what is wanted, the issuer's CA, the times
/// of this certificate's recent issuances (`recent`, any order) and now.
pub fn decide(
    existing: &Existing,
    wanted: &Wanted,
    issuer: &CertFacts,
    recent: &[jiff::Timestamp],
    now: jiff::Timestamp,
) -> Decision {
    let reason = match reason(existing, wanted, issuer, now) {
        Ok(reason) => reason,
        Err(renew_at) => return Decision::Keep { renew_at },
    };
    match held_until(recent, now) {
        Some(until) => Decision::Hold { reason, until },
        None => Decision::Issue(reason),
    }
}

/// The first check that fires, or the renewal time when none does.
fn reason(
    existing: &Existing,
    wanted: &Wanted,
    issuer: &CertFacts,
    now: jiff::Timestamp,
) -> Result<Reason, jiff::Timestamp> {
    let (facts, key_matches, revoked) = match existing {
        Existing::Missing => return Ok(Reason::Missing),
        Existing::Unreadable(why) => return Ok(Reason::Unreadable(why.clone())),
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
        // Not held back by MIN_INTERVAL (an operator asked now), but by the issuance cap.
        // A request of the very second the certificate was issued counts (certificate
        // times have whole seconds): the pass that answers a request withdraws it, so it
        // fires once.
        &|| {
            wanted
                .requested
                .is_some_and(|at| at >= issued_at(facts))
                .then_some(Reason::Requested)
        },
    ];
    if let Some(reason) = checks.iter().find_map(|check| check()) {
        return Ok(reason);
    }
    // Expiry is time-based like renewal, and waits for the same minimum: a lifetime shorter
    // than MIN_INTERVAL (which validation refuses) must not mean an issuance per pass.
    let renew_at = renewal_time(facts, wanted.renew);
    if now < renew_at {
        Err(renew_at)
    } else if facts.not_after <= now {
        Ok(Reason::Expired)
    } else {
        Ok(Reason::Renewal)
    }
}

/// When the next issuance may happen, if not now: `recent` holds the times of this
/// certificate's recent issuances.
pub fn held_until(recent: &[jiff::Timestamp], now: jiff::Timestamp) -> Option<jiff::Timestamp> {
    // Times ahead of `now` (a clock set back) count as within the interval.
    let mut within: Vec<jiff::Timestamp> = recent
        .iter()
        .copied()
        .filter(|at| now < *at + MIN_INTERVAL)
        .collect();
    if within.len() < MAX_ISSUANCES_PER_INTERVAL {
        return None;
    }
    // Allowed again once all but MAX - 1 of them have left the interval.
    within.sort();
    within
        .get(within.len() - MAX_ISSUANCES_PER_INTERVAL)
        .map(|at| *at + MIN_INTERVAL)
}

/// When a certificate with these facts should be renewed: `renew` before its end, and never
/// sooner than [`MIN_INTERVAL`] after it was issued.
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
    (facts.not_after - before).max(issued_at(facts) + MIN_INTERVAL)
}

/// When a certificate was issued: its `notBefore` is backdated by `BACKDATE`.
fn issued_at(facts: &CertFacts) -> jiff::Timestamp {
    facts.not_before + super::authority::BACKDATE
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
            requested: None,
        }
    }

    #[test]
    fn a_renewal_requested_after_issuance_fires_once_and_within_the_cap() {
        let now = at("2026-01-01T00:00:00Z");
        let ca = ca(now);
        let existing = issue(&ca, &wanted(), now);
        let later = now + jiff::SignedDuration::from_mins(1);
        let requested = Wanted {
            requested: Some(later),
            ..wanted()
        };
        // Within MIN_INTERVAL of the issuance: an operator's request still fires.
        assert_eq!(
            decide(&existing, &requested, ca.facts(), &[now], later),
            Decision::Issue(Reason::Requested)
        );
        assert_eq!(
            Reason::Requested.to_string(),
            "renewal requested by an operator"
        );
        // Asked in the very second of the issuance: still a request.
        let same_second = Wanted {
            requested: Some(now),
            ..wanted()
        };
        assert_eq!(
            decide(&existing, &same_second, ca.facts(), &[now], later),
            Decision::Issue(Reason::Requested)
        );
        // A certificate issued after it answers it.
        let after = later + jiff::SignedDuration::from_secs(1);
        let renewed = issue(&ca, &requested, after);
        assert!(matches!(
            decide(&renewed, &requested, ca.facts(), &[now, after], after),
            Decision::Keep { .. }
        ));
        // A request made before the certificate was issued is no reason.
        let before = Wanted {
            requested: Some(now - jiff::SignedDuration::from_mins(1)),
            ..wanted()
        };
        assert!(matches!(
            decide(&existing, &before, ca.facts(), &[now], later),
            Decision::Keep { .. }
        ));
        // The issuance cap holds requests too: no loop by asking.
        assert!(matches!(
            decide(&existing, &requested, ca.facts(), &[now, now], later),
            Decision::Hold {
                reason: Reason::Requested,
                ..
            }
        ));
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
            decide(&Existing::Missing, &wanted(), ca.facts(), &[], now),
            Decision::Issue(Reason::Missing)
        );
        assert!(matches!(
            decide(
                &Existing::Unreadable("bad PEM".into()),
                &wanted(),
                ca.facts(),
                &[],
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
            decide(&revoked, &wanted(), ca.facts(), &[], now),
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
            decide(&wrong_key, &changed, ca.facts(), &[], now),
            Decision::Issue(Reason::KeyMismatch)
        );
    }

    #[test]
    fn a_fresh_certificate_is_kept_until_two_thirds_of_its_life() {
        let now = at("2026-01-01T00:00:00Z");
        let ca = ca(now);
        let existing = issue(&ca, &wanted(), now);
        let Decision::Keep { renew_at } = decide(&existing, &wanted(), ca.facts(), &[], now) else {
            panic!("fresh certificate should be kept")
        };
        // Lifetime 90 days plus the 5-minute backdate; renewal at 2/3 of it.
        let lifetime = jiff::SignedDuration::from_hours(90 * 24) + crate::pki::authority::BACKDATE;
        assert_eq!(
            renew_at,
            now + jiff::SignedDuration::from_hours(90 * 24) - lifetime / 3
        );
        assert_eq!(
            decide(&existing, &wanted(), ca.facts(), &[], renew_at),
            Decision::Issue(Reason::Renewal)
        );
        let just_before = renew_at - jiff::SignedDuration::from_secs(1);
        assert!(matches!(
            decide(&existing, &wanted(), ca.facts(), &[], just_before),
            Decision::Keep { .. }
        ));
        let after_end = now + jiff::SignedDuration::from_hours(91 * 24);
        assert_eq!(
            decide(&existing, &wanted(), ca.facts(), &[], after_end),
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
            decide(&existing, &names, ca.facts(), &[], now),
            Decision::Issue(Reason::SpecChanged(what)) if what.contains("ipAddresses")
        ));
        let mut usages = wanted();
        usages.usages.push(Usage::ClientAuth);
        assert!(matches!(
            decide(&existing, &usages, ca.facts(), &[], now),
            Decision::Issue(Reason::SpecChanged(_))
        ));
        let mut key = wanted();
        key.key_type = KeyType::Ed25519;
        assert!(matches!(
            decide(&existing, &key, ca.facts(), &[], now),
            Decision::Issue(Reason::SpecChanged(what)) if what.contains("Ed25519")
        ));
        let mut duration = wanted();
        duration.lifetime = jiff::SignedDuration::from_hours(24);
        assert!(matches!(
            decide(&existing, &duration, ca.facts(), &[], now),
            Decision::Issue(Reason::SpecChanged(what)) if what.contains("duration")
        ));
        // The same names in another order and case are no change.
        let mut reordered = wanted();
        reordered.names.dns_names = vec!["TESSERA.local".into()];
        assert!(matches!(
            decide(&existing, &reordered, ca.facts(), &[], now),
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
            decide(&existing, &wanted(), new.facts(), &[], now),
            Decision::Issue(Reason::IssuerChanged)
        );
    }

    #[test]
    fn a_one_minute_certificate_is_renewed_at_most_once_per_interval() {
        // Validation refuses such a lifetime; the policy must not loop when handed one anyway.
        let start = at("2026-01-01T00:00:00Z");
        let ca = ca(start);
        let mut short = wanted();
        short.lifetime = jiff::SignedDuration::from_mins(1);
        let mut existing = Existing::Missing;
        let mut issued = Vec::new();
        for second in 0..=600 {
            let now = start + jiff::SignedDuration::from_secs(second);
            if let Decision::Issue(_) = decide(&existing, &short, ca.facts(), &issued, now) {
                existing = issue(&ca, &short, now);
                issued.push(now);
            }
        }
        // At 0 s, then not before 10 minutes later.
        assert_eq!(
            issued,
            [start, start + MIN_INTERVAL],
            "one issuance per interval"
        );
    }

    #[test]
    fn a_third_issuance_within_the_interval_is_held_whatever_the_reason() {
        let now = at("2026-01-01T00:00:00Z");
        let ca = ca(now);
        let first = now - jiff::SignedDuration::from_mins(3);
        let second = now - jiff::SignedDuration::from_mins(1);
        // One recent issuance leaves room for an operator's change.
        assert_eq!(
            decide(&Existing::Missing, &wanted(), ca.facts(), &[second], now),
            Decision::Issue(Reason::Missing)
        );
        assert_eq!(
            decide(
                &Existing::Missing,
                &wanted(),
                ca.facts(),
                &[second, first],
                now
            ),
            Decision::Hold {
                reason: Reason::Missing,
                until: first + MIN_INTERVAL
            }
        );
        // Once the older one leaves the interval, the next may happen.
        assert_eq!(held_until(&[first, second], first + MIN_INTERVAL), None);
    }

    #[test]
    fn the_renewal_time_is_never_sooner_than_the_interval_after_issuance() {
        let now = at("2026-01-01T00:00:00Z");
        let ca = ca(now);
        let mut short = wanted();
        short.lifetime = jiff::SignedDuration::from_mins(2);
        short.renew = RenewBefore::Percentage(99);
        let Existing::Present { facts, .. } = issue(&ca, &short, now) else {
            unreachable!()
        };
        assert_eq!(renewal_time(&facts, short.renew), now + MIN_INTERVAL);
        // An expired one waits for the same time.
        let expired = Existing::Present {
            facts,
            key_matches: true,
            revoked: false,
        };
        let later = now + jiff::SignedDuration::from_mins(5);
        assert_eq!(
            decide(&expired, &short, ca.facts(), &[], later),
            Decision::Keep {
                renew_at: now + MIN_INTERVAL
            }
        );
    }
}
