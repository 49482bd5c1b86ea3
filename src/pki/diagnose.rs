//! What is wrong with a TLS server's certificate, in plain words, with the fix: the core of
//! `tessera doctor`. Pure: it looks at the chain the server sent, the name the client used,
//! the CAs and CRLs the client has, and the time.

use std::net::IpAddr;

use super::Usage;
use super::facts::{CertFacts, CrlFacts};

/// What a client saw and holds.
#[derive(Clone, Debug)]
pub struct Observed {
    /// The chain the server sent, leaf first.
    pub chain: Vec<CertFacts>,
    /// The name the client connects to (a DNS name or an IP address).
    pub name: String,
    /// The CAs the client trusts (its `cacert.pem`), if it was given any.
    pub trusted: Vec<CertFacts>,
    /// CRLs the client checks, if any.
    pub crls: Vec<CrlFacts>,
    pub now: jiff::Timestamp,
}

/// One thing wrong: what, why it matters, and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// A short code: `name-mismatch`, `expired`, `not-yet-valid`, `unknown-issuer`,
    /// `missing-intermediate`, `wrong-usage`, `revoked`, `crl-expired`.
    pub code: &'static str,
    pub problem: String,
    pub fix: String,
}

/// Everything wrong with what the client saw, most fundamental first.
pub fn diagnose(observed: &Observed) -> Vec<Finding> {
    let mut found = Vec::new();
    let Some(leaf) = observed.chain.first() else {
        found.push(Finding {
            code: "no-certificate",
            problem: "the server sent no certificate".into(),
            fix: "check that the server has a certificate configured (its Server's certificateRef is Ready)".into(),
        });
        return found;
    };

    if !name_matches(leaf, &observed.name) {
        let names: Vec<String> = leaf
            .names
            .dns_names
            .iter()
            .cloned()
            .chain(leaf.names.ip_addresses.iter().map(ToString::to_string))
            .collect();
        found.push(Finding {
            code: "name-mismatch",
            problem: format!(
                "`{}` is not among the certificate's names ({}); clients refuse it (OCS agents report an SSL/OpenSSL verification error)",
                observed.name,
                if names.is_empty() { "it has none".to_owned() } else { names.join(", ") }
            ),
            fix: format!(
                "add `{}` to the Certificate's {} and let Tessera re-issue it, or point agents at a name the certificate holds",
                observed.name,
                if observed.name.parse::<IpAddr>().is_ok() { "ipAddresses" } else { "dnsNames" }
            ),
        });
    }

    validity(observed, &mut found);

    if !leaf.usages.is_empty()
        && leaf
            .usages
            .iter()
            .any(|u| matches!(u, Usage::ClientAuth | Usage::ServerAuth))
        && !leaf.usages.contains(&Usage::ServerAuth)
    {
        found.push(Finding {
            code: "wrong-usage",
            problem: "the server certificate's extended key usage does not include TLS server authentication".into(),
            fix: "add `server auth` to the Certificate's usages".into(),
        });
    }

    if !observed.trusted.is_empty() {
        match chain_to_trusted(observed) {
            Chain::Trusted => {}
            Chain::MissingIntermediate(issuer) => found.push(Finding {
                code: "missing-intermediate",
                problem: format!(
                    "`{issuer}` signed the server's certificate, but the server did not send it and the client does not trust it: the chain cannot be built"
                ),
                fix: format!(
                    "if `{issuer}` is an intermediate CA, serve the full chain (tls.crt = the leaf followed by its intermediates, as Tessera writes it); if it is the root, give the client its ca.crt"
                ),
            }),
            Chain::UnknownIssuer(root) => found.push(Finding {
                code: "unknown-issuer",
                problem: format!(
                    "the chain ends at `{root}`, which the client does not trust (the OpenSSL error \"unable to get local issuer certificate\" / \"self signed certificate in certificate chain\")"
                ),
                fix: "give the client the CA that signed the server: copy ca.crt from the Certificate's directory into the agent's cacert.pem (OCS) or trust store".into(),
            }),
        }
    }

    revocation(observed, &mut found);
    found
}

/// Each certificate of the chain is within its validity period.
fn validity(observed: &Observed, found: &mut Vec<Finding>) {
    for (position, certificate) in observed.chain.iter().enumerate() {
        let which = if position == 0 {
            "the server certificate".to_owned()
        } else {
            format!("the chain certificate `{}`", certificate.subject)
        };
        if certificate.not_after <= observed.now {
            found.push(Finding {
                code: "expired",
                problem: format!("{which} expired at {}", certificate.not_after),
                fix: "renew it: Tessera renews on its own before expiry; check the Certificate's status for `lastFailureReason` and the clock of both machines".into(),
            });
        } else if certificate.not_before > observed.now {
            found.push(Finding {
                code: "not-yet-valid",
                problem: format!("{which} is not valid before {}", certificate.not_before),
                fix: "one of the clocks is wrong: check time synchronisation (NTP) on the client and the server".into(),
            });
        }
    }
}

/// The CRLs given are current and revoke no certificate of the chain.
fn revocation(observed: &Observed, found: &mut Vec<Finding>) {
    for crl in &observed.crls {
        let issued_by_crl_issuer = observed.chain.iter().any(|c| c.issuer_der == crl.issuer);
        if !issued_by_crl_issuer {
            continue;
        }
        if crl.next_update <= observed.now {
            found.push(Finding {
                code: "crl-expired",
                problem: format!(
                    "the CRL expired at {}: clients that check revocation fail with a \"revocation check failure\"",
                    crl.next_update
                ),
                fix: "give clients the current crl.pem: Tessera refreshes each Issuer's CRL after 2/3 of its validity".into(),
            });
        }
        for certificate in &observed.chain {
            if certificate.issuer_der == crl.issuer && crl.serials.contains(&certificate.serial) {
                found.push(Finding {
                    code: "revoked",
                    problem: format!("`{}` (serial {}) is revoked by its issuer's CRL", certificate.subject, certificate.serial),
                    fix: "issue a new certificate: clear `revoked` on the Certificate, or remove the serial from the Issuer's revokedSerials if it was revoked by mistake".into(),
                });
            }
        }
    }
}

/// Whether `name` is one of the certificate's names (one leading `*.` label matches one label).
pub fn name_matches(certificate: &CertFacts, name: &str) -> bool {
    if let Ok(ip) = name
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return certificate.names.ip_addresses.contains(&ip);
    }
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    certificate.names.dns_names.iter().any(|pattern| {
        let pattern = pattern.to_ascii_lowercase();
        match pattern.strip_prefix("*.") {
            Some(suffix) => name
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
            None => pattern == name,
        }
    })
}

enum Chain {
    Trusted,
    /// The subject of the issuer nobody supplied.
    MissingIntermediate(String),
    /// The subject of the untrusted top of the chain.
    UnknownIssuer(String),
}

/// Walks from the leaf through the certificates sent, looking for a trusted CA.
fn chain_to_trusted(observed: &Observed) -> Chain {
    let mut current = &observed.chain[0];
    for _ in 0..observed.chain.len() + 1 {
        if observed
            .trusted
            .iter()
            .any(|ca| current.issued_by(ca) || ca.public_key == current.public_key)
        {
            return Chain::Trusted;
        }
        let self_signed = current.issuer_der == current.subject_der;
        match observed
            .chain
            .iter()
            .find(|c| !std::ptr::eq(*c, current) && current.issued_by(c))
        {
            Some(parent) => current = parent,
            None if self_signed => return Chain::UnknownIssuer(current.subject.clone()),
            // The client trusts a CA of that name, but another key signed: a re-created CA.
            None if observed
                .trusted
                .iter()
                .any(|ca| ca.subject_der == current.issuer_der) =>
            {
                return Chain::UnknownIssuer(format!(
                    "{} (a different key than the CA of that name the client trusts)",
                    current.issuer
                ));
            }
            // Nobody sent the issuer and the client has nothing of that name: an intermediate
            // left out, or a root the client lacks. Without the certificate, no one can tell.
            None => return Chain::MissingIntermediate(current.issuer.clone()),
        }
    }
    Chain::UnknownIssuer(current.subject.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::authority::{Authority, LeafRequest, generate_key};
    use crate::pki::{KeyType, Names, facts};

    fn now() -> jiff::Timestamp {
        "2026-11-23T12:00:00Z".parse().unwrap()
    }

    fn root(name: &str) -> Authority {
        Authority::generate(
            name,
            KeyType::EcdsaP256,
            now(),
            jiff::SignedDuration::from_hours(87600),
        )
        .unwrap()
    }

    fn leaf(ca: &Authority, dns: &str, usages: Vec<Usage>, at: jiff::Timestamp) -> Vec<CertFacts> {
        let key = generate_key(KeyType::EcdsaP256).unwrap();
        let request = LeafRequest {
            names: Names {
                dns_names: vec![dns.into()],
                ..Names::default()
            },
            usages,
            is_ca: false,
            lifetime: jiff::SignedDuration::from_hours(24),
        };
        let issued = ca.issue(&request, &key, at).unwrap();
        facts::pem_certificates(&issued.chain_pem)
            .unwrap()
            .iter()
            .map(|der| facts::read(der).unwrap())
            .collect()
    }

    fn observed(chain: Vec<CertFacts>, name: &str, trusted: &[&Authority]) -> Observed {
        Observed {
            chain,
            name: name.into(),
            trusted: trusted.iter().map(|ca| ca.facts().clone()).collect(),
            crls: vec![],
            now: now(),
        }
    }

    fn codes(findings: &[Finding]) -> Vec<&'static str> {
        findings.iter().map(|f| f.code).collect()
    }

    #[test]
    fn a_good_chain_has_no_findings() {
        let ca = root("CA");
        let chain = leaf(&ca, "tessera.local", vec![Usage::ServerAuth], now());
        assert!(diagnose(&observed(chain, "tessera.local", &[&ca])).is_empty());
    }

    #[test]
    fn each_problem_is_named() {
        let ca = root("CA");
        let other = root("Other CA");
        let good = leaf(&ca, "tessera.local", vec![Usage::ServerAuth], now());
        assert_eq!(
            codes(&diagnose(&observed(
                good.clone(),
                "deploy.example.com",
                &[&ca]
            ))),
            vec!["name-mismatch"]
        );
        // A chain ending at a self-signed CA the client does not trust.
        let mut with_root = good.clone();
        with_root.push(ca.facts().clone());
        assert_eq!(
            codes(&diagnose(&observed(with_root, "tessera.local", &[&other]))),
            vec!["unknown-issuer"]
        );
        // A client holding a re-created CA of the same name.
        let recreated = root("CA");
        let findings = diagnose(&observed(good, "tessera.local", &[&recreated]));
        assert_eq!(codes(&findings), vec!["unknown-issuer"]);
        assert!(
            findings[0].problem.contains("different key"),
            "{findings:?}"
        );
        let old = leaf(
            &ca,
            "tessera.local",
            vec![Usage::ServerAuth],
            now() - jiff::SignedDuration::from_hours(48),
        );
        assert_eq!(
            codes(&diagnose(&observed(old, "tessera.local", &[&ca]))),
            vec!["expired"]
        );
        let client_only = leaf(&ca, "tessera.local", vec![Usage::ClientAuth], now());
        assert_eq!(
            codes(&diagnose(&observed(client_only, "tessera.local", &[&ca]))),
            vec!["wrong-usage"]
        );
    }

    #[test]
    fn a_missing_intermediate_is_told_apart_from_an_unknown_issuer() {
        let ca = root("Root");
        let key = generate_key(KeyType::EcdsaP256).unwrap();
        let intermediate = ca
            .issue(
                &LeafRequest {
                    names: Names {
                        common_name: Some("Intermediate".into()),
                        ..Names::default()
                    },
                    usages: vec![],
                    is_ca: true,
                    lifetime: jiff::SignedDuration::from_hours(1000),
                },
                &key,
                now(),
            )
            .unwrap();
        let intermediate = Authority::from_pem(
            &intermediate.chain_pem,
            &key.serialize_pem(),
            Some(ca.root_pem()),
        )
        .unwrap();
        let full = leaf(
            &intermediate,
            "tessera.local",
            vec![Usage::ServerAuth],
            now(),
        );
        assert_eq!(full.len(), 2);
        assert!(diagnose(&observed(full.clone(), "tessera.local", &[&ca])).is_empty());
        let only_leaf = vec![full[0].clone()];
        assert_eq!(
            codes(&diagnose(&observed(only_leaf, "tessera.local", &[&ca]))),
            vec!["missing-intermediate"]
        );
    }

    #[test]
    fn revocation_and_stale_crls_are_explained() {
        let ca = root("CA");
        let chain = leaf(&ca, "tessera.local", vec![Usage::ServerAuth], now());
        let revoked = crate::pki::authority::Revoked {
            serial: chain[0].serial.clone(),
            at: now(),
        };
        let crl = ca
            .crl(&[revoked], 1, now(), jiff::SignedDuration::from_hours(1))
            .unwrap();
        let crl = facts::read_crl(&crl).unwrap();
        let mut seen = observed(chain, "tessera.local", &[&ca]);
        seen.crls = vec![crl];
        assert_eq!(codes(&diagnose(&seen)), vec!["revoked"]);
        seen.now = now() + jiff::SignedDuration::from_hours(2);
        assert_eq!(codes(&diagnose(&seen)), vec!["crl-expired", "revoked"]);
    }

    #[test]
    fn wildcards_match_one_label() {
        let ca = root("CA");
        let chain = leaf(&ca, "*.example.com", vec![Usage::ServerAuth], now());
        assert!(name_matches(&chain[0], "deploy.example.com"));
        assert!(!name_matches(&chain[0], "a.b.example.com"));
        assert!(!name_matches(&chain[0], "example.com"));
    }
}
