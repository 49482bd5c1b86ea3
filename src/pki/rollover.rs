//! Should this issuer's CA roll over, and when? An ordered chain of pure checks of (the CA in
//! use, the CA its source offers now, the overlap, now), as [`super::renewal`] does for
//! leaves: the first that fires decides, and its reason goes to the logs.
//!
//! A rollover changes the trust anchor every client holds, so it is started only by a
//! generated CA whose spec changed or that nears its end, or by CA files that now hold a CA
//! under another root. New files under the same root are taken into use at once.

use std::fmt;

use super::KeyType;
use super::facts::CertFacts;

/// The CA an issuer's source offers now.
#[derive(Clone, Copy, Debug)]
pub enum Offered<'a> {
    /// A CA Tessera makes (`selfSigned`): what its spec asks for.
    Generated {
        common_name: &'a str,
        key_type: KeyType,
    },
    /// The operator's CA files: their certificate, and whether it chains to the same root as
    /// the CA in use.
    Supplied {
        facts: &'a CertFacts,
        same_root: bool,
    },
}

/// Why a rollover starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The common name or key type of a generated CA changed.
    SpecChanged,
    /// A generated CA reached [`start`]: a third of its life, or twice the overlap, remains.
    NearsEnd,
    /// The CA files now hold a CA under another root.
    OtherCa,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::SpecChanged => "its spec changed",
            Self::NearsEnd => "it nears its end",
            Self::OtherCa => "its files now hold another CA",
        })
    }
}

/// What to do with an issuer's CA when no rollover is under way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Keep signing with the CA in use.
    Keep,
    /// Take the supplied CA into use at once: clients already trust its root.
    TakeOver,
    /// Begin a rollover: make the offered CA the next one, and give clients both.
    Start(Reason),
}

/// Decides whether `active` (the CA in use) rolls over to what its source offers, at `now`.
pub fn decide(
    active: &CertFacts,
    offered: &Offered<'_>,
    overlap: jiff::SignedDuration,
    now: jiff::Timestamp,
) -> Decision {
    let checks: [&dyn Fn() -> Option<Decision>; 5] = [
        // A generated CA whose spec changed: clients learn the new CA before it signs.
        &|| spec_changed(active, offered).then_some(Decision::Start(Reason::SpecChanged)),
        // The operator's files hold the CA in use: nothing to do.
        &|| supplied_same_key(active, offered).then_some(Decision::Keep),
        // Another CA under the same root (another intermediate): clients already trust it.
        &|| supplied_same_root(offered).then_some(Decision::TakeOver),
        // Another root: clients must learn it first.
        &|| matches!(offered, Offered::Supplied { .. }).then_some(Decision::Start(Reason::OtherCa)),
        // A generated CA near its end is replaced while the old one still verifies.
        &|| {
            (matches!(offered, Offered::Generated { .. }) && now >= start(active, overlap))
                .then_some(Decision::Start(Reason::NearsEnd))
        },
    ];
    checks
        .iter()
        .find_map(|check| check())
        .unwrap_or(Decision::Keep)
}

/// When a CA should start rolling over: when a third of its life remains, or twice the
/// overlap if that is longer, so the overlap ends well before the old CA does.
pub fn start(ca: &CertFacts, overlap: jiff::SignedDuration) -> jiff::Timestamp {
    ca.not_after - (ca.lifetime() / 3).max(overlap * 2)
}

/// A generated CA whose common name or key type is not what its spec asks for.
fn spec_changed(active: &CertFacts, offered: &Offered<'_>) -> bool {
    match offered {
        Offered::Generated {
            common_name,
            key_type,
        } => {
            active.names.common_name.as_deref() != Some(*common_name)
                || active.key_type != Some(*key_type)
        }
        Offered::Supplied { .. } => false,
    }
}

/// Supplied files holding the key of the CA in use.
fn supplied_same_key(active: &CertFacts, offered: &Offered<'_>) -> bool {
    matches!(offered, Offered::Supplied { facts, .. } if facts.public_key == active.public_key)
}

/// Supplied files holding another CA under the root in use.
fn supplied_same_root(offered: &Offered<'_>) -> bool {
    matches!(
        offered,
        Offered::Supplied {
            same_root: true,
            ..
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::authority::Authority;

    const TEN_YEARS: jiff::SignedDuration = jiff::SignedDuration::from_hours(87_600);
    const MONTH: jiff::SignedDuration = jiff::SignedDuration::from_hours(720);

    fn at(text: &str) -> jiff::Timestamp {
        text.parse().unwrap()
    }

    fn ca(name: &str, key_type: KeyType, now: jiff::Timestamp) -> Authority {
        Authority::generate(name, key_type, now, TEN_YEARS).unwrap()
    }

    #[test]
    fn a_generated_ca_matching_its_spec_is_kept_until_a_third_of_its_life_remains() {
        let now = at("2026-01-01T00:00:00Z");
        let active = ca("Root", KeyType::EcdsaP256, now);
        let offered = Offered::Generated {
            common_name: "Root",
            key_type: KeyType::EcdsaP256,
        };
        let begins = start(active.facts(), MONTH);
        let life = active.facts().lifetime();
        assert_eq!(begins, active.facts().not_after - life / 3);
        assert_eq!(decide(active.facts(), &offered, MONTH, now), Decision::Keep);
        assert_eq!(
            decide(
                active.facts(),
                &offered,
                MONTH,
                begins - jiff::SignedDuration::from_secs(1)
            ),
            Decision::Keep
        );
        assert_eq!(
            decide(active.facts(), &offered, MONTH, begins),
            Decision::Start(Reason::NearsEnd)
        );
    }

    #[test]
    fn a_long_overlap_starts_the_rollover_twice_the_overlap_before_the_end() {
        let now = at("2026-01-01T00:00:00Z");
        let active = ca("Root", KeyType::EcdsaP256, now);
        let overlap = TEN_YEARS / 2;
        assert_eq!(
            start(active.facts(), overlap),
            active.facts().not_after - overlap * 2
        );
    }

    #[test]
    fn a_changed_spec_fires_before_the_end_is_near() {
        let now = at("2026-01-01T00:00:00Z");
        let active = ca("Root", KeyType::EcdsaP256, now);
        for offered in [
            Offered::Generated {
                common_name: "Other Root",
                key_type: KeyType::EcdsaP256,
            },
            Offered::Generated {
                common_name: "Root",
                key_type: KeyType::EcdsaP384,
            },
        ] {
            assert_eq!(
                decide(active.facts(), &offered, MONTH, now),
                Decision::Start(Reason::SpecChanged),
                "{offered:?}"
            );
        }
    }

    #[test]
    fn supplied_files_are_kept_taken_over_or_rolled_over_by_their_root() {
        let now = at("2026-01-01T00:00:00Z");
        let active = ca("Root", KeyType::EcdsaP256, now);
        let other = ca("Other Root", KeyType::EcdsaP256, now);
        let same = Offered::Supplied {
            facts: active.facts(),
            same_root: true,
        };
        assert_eq!(decide(active.facts(), &same, MONTH, now), Decision::Keep);
        // Supplied CAs never roll over by age: the operator replaces the files.
        let late = active.facts().not_after - jiff::SignedDuration::from_hours(1);
        assert_eq!(decide(active.facts(), &same, MONTH, late), Decision::Keep);
        let sibling = Offered::Supplied {
            facts: other.facts(),
            same_root: true,
        };
        assert_eq!(
            decide(active.facts(), &sibling, MONTH, now),
            Decision::TakeOver
        );
        let foreign = Offered::Supplied {
            facts: other.facts(),
            same_root: false,
        };
        let decision = decide(active.facts(), &foreign, MONTH, now);
        assert_eq!(decision, Decision::Start(Reason::OtherCa));
        assert_eq!(Reason::OtherCa.to_string(), "its files now hold another CA");
    }
}
