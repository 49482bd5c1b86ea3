//! Checks of one object on its own: ranges, exclusive choices, names and addresses. Checks
//! that need other objects (references, duplicates) are in `desired`.

mod deployment;
mod network;
mod pki;

use deployment::{activation, affectation, package};
use network::{gateway, server};
use pki::{certificate, issuer};

use super::Resource;
use super::parse::SourcedObject;
use super::problem::Problem;

/// Every problem of `object` on its own, each placed at the line of its field.
pub fn object(object: &SourcedObject) -> Vec<Problem> {
    let mut found = Found::default();
    match &object.resource {
        Resource::Package(p) => package(&p.spec, &mut found),
        Resource::Activation(a) => activation(&a.spec, &mut found),
        Resource::Affectation(a) => affectation(&a.spec, &mut found),
        Resource::Issuer(i) => issuer(&i.spec, &mut found),
        Resource::Certificate(c) => certificate(&c.spec, &mut found),
        Resource::Server(s) => server(&s.spec, &mut found),
        Resource::Gateway(g) => gateway(&g.spec, &mut found),
    }
    let key = object.resource.key();
    found
        .0
        .into_iter()
        .map(|(field, message)| Problem {
            file: Some(object.origin.file.clone()),
            line: object.lines.line(&field).or(Some(object.origin.line)),
            object: Some(key.clone()),
            field: Some(field),
            message,
        })
        .collect()
}

/// Why `name` cannot name an object (a Kubernetes DNS subdomain), or None when it can.
pub fn object_name(name: &str) -> Option<String> {
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    (!valid).then(|| {
        format!(
            "`{name}` is not a valid name: use at most 253 lowercase letters, digits, `-` and \
             `.`, starting and ending with a letter or digit"
        )
    })
}

/// Whether `name` is a DNS name a certificate can hold (`*.` allowed as the first label).
pub fn is_dns_name(name: &str) -> bool {
    let host = name.strip_prefix("*.").unwrap_or(name);
    !host.is_empty()
        && name.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Problems gathered as (field path, reason).
#[derive(Default)]
struct Found(Vec<(String, String)>);

impl Found {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push((field.into(), message.into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names_follow_rfc_1123_with_a_leading_wildcard() {
        for good in ["tessera.example.com", "*.example.com", "localhost", "a-1.b"] {
            assert!(is_dns_name(good), "{good}");
        }
        for bad in [
            "",
            "-a.com",
            "a..b",
            "a_b.com",
            "*.*.com",
            "foo.*.com",
            "ex ample.com",
        ] {
            assert!(!is_dns_name(bad), "{bad}");
        }
    }

    #[test]
    fn object_names_are_dns_subdomains() {
        assert!(object_name("hello-world.v2").is_none());
        assert!(object_name("Hello").is_some());
        assert!(object_name("-x").is_some());
        assert!(object_name("").is_some());
    }
}
