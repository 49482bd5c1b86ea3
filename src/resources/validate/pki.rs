//! Checks of the certificate kinds on their own: Issuer and Certificate (keys, names,
//! durations, keystore passwords).

use std::net::IpAddr;

use super::{Found, is_dns_name};
use crate::resources::certificate::{
    BACKDATE, CertificateSpec, KeystorePassword, MIN_DURATION, MIN_KEPT,
};
use crate::resources::issuer::{IssuerSpec, KeyAlgorithm, PrivateKeySpec};

pub(super) fn issuer(spec: &IssuerSpec, found: &mut Found) {
    match (&spec.self_signed, &spec.ca) {
        (None, None) => found.add("spec", "an issuer needs exactly one of selfSigned or ca"),
        (Some(_), Some(_)) => {
            found.add("spec.ca", "an issuer is either selfSigned or ca, not both")
        }
        _ => {}
    }
    if let Some(self_signed) = &spec.self_signed {
        if let Some(duration) = self_signed.duration
            && duration.as_secs() < 3600
        {
            found.add(
                "spec.selfSigned.duration",
                "a CA must live at least 1h: every certificate it signs ends no later than it",
            );
        }
        if let Some(key) = &self_signed.private_key {
            private_key("spec.selfSigned.privateKey", key, found);
        }
    }
    if let Some(ca) = &spec.ca {
        let files = ca.cert_file.is_some() || ca.key_file.is_some() || ca.crl_file.is_some();
        let sources = [
            files,
            ca.secret_name.is_some(),
            ca.certificate_ref.is_some(),
        ]
        .into_iter()
        .filter(|set| *set)
        .count();
        if sources != 1 {
            found.add(
                "spec.ca",
                "name exactly one source of the CA key pair: certFile and keyFile, secretName, or certificateRef",
            );
        } else if files && ca.cert_file.is_none() {
            found.add(
                "spec.ca.certFile",
                "keyFile and crlFile need the CA certificate in certFile",
            );
        } else if ca.key_file.is_some() && ca.crl_file.is_some() {
            found.add(
                "spec.ca.crlFile",
                "an issuer holding its key publishes its own CRL from revokedSerials; crlFile is for trust-only issuers (certFile alone)",
            );
        }
    }
    let trust_only = spec
        .ca
        .as_ref()
        .is_some_and(|ca| ca.cert_file.is_some() && ca.key_file.is_none());
    if trust_only && !spec.revoked_serials.is_empty() {
        found.add(
            "spec.revokedSerials",
            "a trust-only issuer (certFile without keyFile) cannot sign a CRL: revoke at the issuing CA and name its CRL in spec.ca.crlFile",
        );
    }
    for (i, serial) in spec.revoked_serials.iter().enumerate() {
        let hex = serial.replace(':', "");
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            found.add(
                format!("spec.revokedSerials[{i}]"),
                format!("`{serial}` is not a hexadecimal serial number"),
            );
        }
    }
    if let Some(overlap) = spec.rollover_overlap
        && overlap.is_zero()
    {
        found.add(
            "spec.rolloverOverlap",
            "the overlap cannot be zero: clients need time to fetch the new CA",
        );
    }
    if let Some(validity) = spec.crl_validity
        && validity.as_secs() < 60
    {
        found.add("spec.crlValidity", "a CRL must be valid at least 1m");
    }
}

fn private_key(field: &str, key: &PrivateKeySpec, found: &mut Found) {
    let allowed: &[i64] = match key.algorithm {
        KeyAlgorithm::Ecdsa => &[256, 384],
        KeyAlgorithm::Rsa => &[2048, 3072, 4096],
        KeyAlgorithm::Ed25519 => &[],
    };
    if let Some(size) = key.size
        && !allowed.contains(&size)
    {
        let message = if allowed.is_empty() {
            "Ed25519 keys have a fixed size: remove size".to_owned()
        } else {
            format!(
                "size {size} is not available for {:?} keys (use {})",
                key.algorithm,
                allowed
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        found.add(format!("{field}.size"), message);
    }
}

pub(super) fn certificate(spec: &CertificateSpec, found: &mut Found) {
    subject_names(spec, found);
    lifetime(spec, found);
    if let Some(key) = &spec.private_key {
        private_key("spec.privateKey", key, found);
    }
    if let Some(dir) = &spec.output_directory {
        let path = std::path::Path::new(dir);
        let escapes = path.is_absolute()
            || path
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)));
        let first = path
            .components()
            .next()
            .map(|c| c.as_os_str().to_string_lossy().into_owned());
        if dir.trim().is_empty() || escapes {
            found.add(
                "spec.outputDirectory",
                format!("`{dir}` must be a relative path inside the state directory, without `..`"),
            );
        } else if matches!(first.as_deref(), Some("pki" | "status")) {
            found.add(
                "spec.outputDirectory",
                format!(
                    "`{dir}` is inside Tessera's own `pki/` or `status/` directory: choose another"
                ),
            );
        }
    }
    if let Some(keystores) = &spec.keystores {
        if let Some(pkcs12) = &keystores.pkcs12 {
            password("spec.keystores.pkcs12", pkcs12, found);
        }
        if let Some(jks) = &keystores.jks {
            password("spec.keystores.jks.keystore", &jks.keystore, found);
            if let Some(truststore) = &jks.truststore {
                password("spec.keystores.jks.truststore", truststore, found);
            }
        }
    }
}

/// Names the certificate is for: at least one, each well formed.
fn subject_names(spec: &CertificateSpec, found: &mut Found) {
    if spec.common_name.is_none()
        && spec.dns_names.is_empty()
        && spec.ip_addresses.is_empty()
        && spec.uris.is_empty()
    {
        found.add(
            "spec",
            "a certificate needs at least one of commonName, dnsNames, ipAddresses or uris",
        );
    }
    for (i, name) in spec.dns_names.iter().enumerate() {
        if !is_dns_name(name) {
            found.add(
                format!("spec.dnsNames[{i}]"),
                format!("`{name}` is not a valid DNS name"),
            );
        }
    }
    for (i, address) in spec.ip_addresses.iter().enumerate() {
        if address.parse::<IpAddr>().is_err() {
            found.add(
                format!("spec.ipAddresses[{i}]"),
                format!("`{address}` is not an IPv4 or IPv6 address"),
            );
        }
    }
    for (i, uri) in spec.uris.iter().enumerate() {
        let scheme_ok = uri.split_once(':').is_some_and(|(scheme, rest)| {
            !scheme.is_empty()
                && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
                && !rest.is_empty()
        });
        if !scheme_ok || uri.contains(char::is_whitespace) {
            found.add(
                format!("spec.uris[{i}]"),
                format!("`{uri}` is not a URI (write e.g. tessera://agent/pc-042)"),
            );
        }
    }
    for (i, usage) in spec.usages.iter().enumerate() {
        if spec.usages[..i].contains(usage) {
            found.add(format!("spec.usages[{i}]"), "this usage is listed twice");
        }
    }
}

/// Duration and renewal: long enough, and renewed late enough that a new certificate is
/// not due at once.
fn lifetime(spec: &CertificateSpec, found: &mut Found) {
    let duration = spec
        .duration
        .unwrap_or(crate::resources::quantity::Duration::from_hours(2160));
    if duration < MIN_DURATION {
        found.add(
            "spec.duration",
            format!(
                "a certificate must live at least {MIN_DURATION}, got {duration}: it is backdated {BACKDATE} and kept at least {MIN_KEPT} before renewal, so a shorter one would be renewed over and over"
            ),
        );
    }
    if spec.renew_before.is_some() && spec.renew_before_percentage.is_some() {
        found.add(
            "spec.renewBeforePercentage",
            "set renewBefore or renewBeforePercentage, not both",
        );
    }
    // Only a duration that passed is worth comparing with: one problem per mistake.
    let kept_at_most = duration.as_secs().checked_sub(MIN_KEPT.as_secs());
    if let Some(before) = spec.renew_before
        && duration >= MIN_DURATION
    {
        if before >= duration {
            found.add(
                "spec.renewBefore",
                format!(
                    "renewBefore ({before}) must be shorter than the duration ({duration}), or the certificate would be renewed forever"
                ),
            );
        } else if kept_at_most.is_some_and(|most| before.as_secs() > most) {
            let most = crate::resources::quantity::Duration::from_secs(kept_at_most.unwrap_or(0));
            found.add(
                "spec.renewBefore",
                format!(
                    "renewBefore ({before}) leaves less than {MIN_KEPT} between issuance and renewal of a {duration} certificate, so each new certificate would be due at once: use at most {most}"
                ),
            );
        }
    }
    if let Some(percent) = spec.renew_before_percentage {
        if !(1..=99).contains(&percent) {
            found.add(
                "spec.renewBeforePercentage",
                format!("renewBeforePercentage must be between 1 and 99, got {percent}"),
            );
        } else if duration >= MIN_DURATION
            && let Some(most) = kept_at_most
        {
            // The percentage is of the lifetime, backdate included.
            let lifetime = duration.as_secs() + BACKDATE.as_secs();
            let largest = most * 100 / lifetime;
            if percent.unsigned_abs() > largest {
                found.add(
                    "spec.renewBeforePercentage",
                    format!(
                        "renewBeforePercentage {percent} of a {duration} certificate (backdated {BACKDATE}) leaves less than {MIN_KEPT} between issuance and renewal, so each new certificate would be due at once: use at most {largest}"
                    ),
                );
            }
        }
    }
}

fn password(field: &str, password: &KeystorePassword, found: &mut Found) {
    match (&password.password_file, &password.password_env) {
        (Some(_), Some(_)) => found.add(
            field,
            "take the password from passwordFile or passwordEnv, not both",
        ),
        (None, None) => found.add(
            field,
            "a keystore needs a password from passwordFile or passwordEnv (never written in the YAML)",
        ),
        (Some(file), None) if file.trim().is_empty() => {
            found.add(format!("{field}.passwordFile"), "the file name cannot be empty");
        }
        (None, Some(env)) if env.trim().is_empty() || env.contains('=') => {
            found.add(
                format!("{field}.passwordEnv"),
                format!("`{env}` is not an environment variable name"),
            );
        }
        _ => {}
    }
}
