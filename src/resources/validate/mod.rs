//! Checks of one object on its own: ranges, exclusive choices, names and addresses. Checks
//! that need other objects (references, duplicates) are in `desired`.

use std::net::IpAddr;

use super::Resource;
use super::activation::ActivationSpec;
use super::affectation::AffectationSpec;
use super::certificate::{BACKDATE, CertificateSpec, KeystorePassword, MIN_DURATION, MIN_KEPT};
use super::gateway::{GatewayMode, GatewaySpec};
use super::issuer::{IssuerSpec, KeyAlgorithm, PrivateKeySpec};
use super::meta::Os;
use super::package::{MAX_FRAGMENT_SIZE, MAX_PRIORITY, MIN_FRAGMENT_SIZE, PackageSpec};
use super::parse::SourcedObject;
use super::problem::Problem;
use super::server::{ClientAuthMode, ServerSpec};

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

fn package(spec: &PackageSpec, found: &mut Found) {
    if !(0..=MAX_PRIORITY).contains(&spec.priority) {
        found.add(
            "spec.priority",
            format!(
                "priority must be between 0 and {MAX_PRIORITY}, got {}",
                spec.priority
            ),
        );
    }
    let size = spec.fragment_size;
    if size < MIN_FRAGMENT_SIZE || size > MAX_FRAGMENT_SIZE {
        found.add(
            "spec.fragmentSize",
            format!(
                "fragment size must be between {MIN_FRAGMENT_SIZE} and {MAX_FRAGMENT_SIZE}, got {size}"
            ),
        );
    }

    let action = &spec.action;
    let chosen: Vec<&str> = [
        ("launch", action.launch.is_some()),
        ("execute", action.execute.is_some()),
        ("store", action.store.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    match chosen.as_slice() {
        [] => found.add(
            "spec.action",
            "no action: set exactly one of launch, execute or store",
        ),
        [_] => {}
        several => found.add(
            "spec.action",
            format!(
                "{} actions ({}): set exactly one of launch, execute or store",
                several.len(),
                several.join(", ")
            ),
        ),
    }
    if let Some(launch) = &action.launch {
        if launch.command.trim().is_empty() {
            found.add("spec.action.launch.command", "the command cannot be empty");
        }
        if spec.content.is_none() {
            found.add(
                "spec.action.launch",
                "launch runs a file from the package's content, but the package has no content",
            );
        }
    }
    if let Some(execute) = &action.execute
        && execute.command.trim().is_empty()
    {
        found.add("spec.action.execute.command", "the command cannot be empty");
    }
    if let Some(store) = &action.store {
        if store.path.trim().is_empty() {
            found.add(
                "spec.action.store.path",
                "the destination path cannot be empty",
            );
        }
        if spec.content.is_none() {
            found.add(
                "spec.action.store",
                "store unpacks the package's content, but the package has no content",
            );
        }
    }

    if let Some(content) = &spec.content {
        let sources: Vec<&str> = [
            ("directory", content.directory.is_some()),
            ("archive", content.archive.is_some()),
            ("url", content.url.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        if sources.len() != 1 {
            found.add(
                "spec.content",
                format!(
                    "content must name exactly one of directory, archive or url (found {})",
                    if sources.is_empty() {
                        "none".to_owned()
                    } else {
                        sources.join(", ")
                    }
                ),
            );
        }
        if let Some(url) = &content.url {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                found.add(
                    "spec.content.url",
                    format!("`{url}` is not an http:// or https:// address"),
                );
            }
            if content.sha256.is_none() {
                found.add(
                    "spec.content.sha256",
                    "a package downloaded from a url needs its sha256, so a changed or tampered file is refused",
                );
            }
        }
        if let Some(digest) = &content.sha256
            && !(digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            found.add(
                "spec.content.sha256",
                "sha256 must be 64 hexadecimal digits",
            );
        }
        if let Some(archive) = &content.archive {
            let lower = archive.to_ascii_lowercase();
            let zip = lower.ends_with(".zip");
            let targz = lower.ends_with(".tar.gz") || lower.ends_with(".tgz");
            if spec.os == Os::Windows && !zip {
                found.add(
                    "spec.content.archive",
                    "Windows agents only unpack zip archives: use a .zip file",
                );
            } else if spec.os != Os::Windows && !(zip || targz) {
                found.add(
                    "spec.content.archive",
                    "Linux and macOS agents unpack .tar.gz (or .zip where unzip is installed)",
                );
            }
        }
    }
    if spec.success_exit_codes.is_empty() {
        found.add(
            "spec.successExitCodes",
            "at least one exit code must count as success",
        );
    }
    if let Some(notification) = &spec.notification
        && notification.text.trim().is_empty()
    {
        found.add(
            "spec.notification.text",
            "the notification text cannot be empty",
        );
    }
}

fn activation(spec: &ActivationSpec, found: &mut Found) {
    if let Some(info) = &spec.info_location
        && let Some(reason) = location_problem(info, &["https"])
    {
        found.add(
            "spec.infoLocation",
            format!("{reason} (agents always fetch the info file over HTTPS)"),
        );
    }
    if let Some(pack) = &spec.pack_location
        && let Some(reason) = location_problem(pack, &["https", "http"])
    {
        found.add("spec.packLocation", reason);
    }
}

/// Why `location` is not a base address `scheme://host[:port][/path]` with one of `schemes`.
fn location_problem(location: &str, schemes: &[&str]) -> Option<String> {
    let Some((scheme, rest)) = location.split_once("://") else {
        return Some(format!(
            "`{location}` needs a scheme: write {}://host/path",
            schemes[0]
        ));
    };
    if !schemes.contains(&scheme) {
        return Some(format!(
            "`{location}` must start with {}",
            schemes
                .iter()
                .map(|s| format!("{s}://"))
                .collect::<Vec<_>>()
                .join(" or ")
        ));
    }
    let host_port = rest.split('/').next().unwrap_or_default();
    let host = match host_port.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => {
            if port.parse::<u16>().is_err() {
                return Some(format!("`{location}` has an invalid port `{port}`"));
            }
            host
        }
        _ => host_port,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || !(is_dns_name(host) || host.parse::<IpAddr>().is_ok()) {
        return Some(format!("`{location}` has no valid host name"));
    }
    if rest.contains(['?', '#']) {
        return Some(format!(
            "`{location}` cannot have a query or fragment: it is a base address"
        ));
    }
    None
}

fn affectation(spec: &AffectationSpec, found: &mut Found) {
    let targets = &spec.targets;
    let selectors =
        !(targets.names.is_empty() && targets.name_globs.is_empty() && targets.tags.is_empty());
    if targets.all && selectors {
        found.add(
            "spec.targets.all",
            "all: true already selects every computer; remove names, nameGlobs and tags, or set all: false",
        );
    } else if !targets.all && !selectors {
        found.add(
            "spec.targets",
            "no computer selected: set names, nameGlobs, tags, or all: true",
        );
    }
    for (i, glob) in targets.name_globs.iter().enumerate() {
        if let Err(error) = globset::Glob::new(glob) {
            found.add(
                format!("spec.targets.nameGlobs[{i}]"),
                format!("`{glob}` is not a valid pattern: {}", error.kind()),
            );
        }
    }
    for (i, name) in targets.names.iter().enumerate() {
        if name.trim().is_empty() {
            found.add(
                format!("spec.targets.names[{i}]"),
                "a computer name cannot be empty",
            );
        }
    }
    if let Some(schedule) = &spec.schedule {
        let mut instant = |field: &str, value: &Option<String>| {
            let value = value.as_ref()?;
            match value.parse::<jiff::Timestamp>() {
                Ok(t) => Some(t),
                Err(_) => {
                    found.add(
                        format!("spec.schedule.{field}"),
                        format!("`{value}` is not an RFC 3339 time such as 2026-12-01T18:00:00Z"),
                    );
                    None
                }
            }
        };
        let not_before = instant("notBefore", &schedule.not_before);
        let not_after = instant("notAfter", &schedule.not_after);
        if let (Some(start), Some(end)) = (not_before, not_after)
            && start >= end
        {
            found.add(
                "spec.schedule.notAfter",
                "notAfter must be later than notBefore",
            );
        }
    }
    if let Some(rollout) = &spec.rollout {
        if rollout.stages.is_empty() {
            found.add("spec.rollout.stages", "a rollout needs at least one stage");
        }
        let mut previous = 0;
        for (i, stage) in rollout.stages.iter().enumerate() {
            if !(1..=100).contains(&stage.percent) {
                found.add(
                    format!("spec.rollout.stages[{i}].percent"),
                    format!("percent must be between 1 and 100, got {}", stage.percent),
                );
            } else if stage.percent <= previous {
                found.add(
                    format!("spec.rollout.stages[{i}].percent"),
                    format!(
                        "stages must grow: {}% does not follow {previous}%",
                        stage.percent
                    ),
                );
            }
            previous = previous.max(stage.percent);
        }
        if let Some(max) = rollout.max_errors
            && max < 1
        {
            found.add("spec.rollout.maxErrors", "maxErrors must be at least 1");
        }
    }
}

fn issuer(spec: &IssuerSpec, found: &mut Found) {
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

fn certificate(spec: &CertificateSpec, found: &mut Found) {
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
    let duration = spec
        .duration
        .unwrap_or(super::quantity::Duration::from_hours(2160));
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
            let most = super::quantity::Duration::from_secs(kept_at_most.unwrap_or(0));
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

fn server(spec: &ServerSpec, found: &mut Found) {
    if let Some(reason) = socket_address_problem(&spec.listen.https) {
        found.add("spec.listen.https", reason);
    }
    if let Some(http) = &spec.listen.http
        && let Some(reason) = socket_address_problem(http)
    {
        found.add("spec.listen.http", reason);
    }
    if spec.client_auth.mode != ClientAuthMode::None && spec.client_auth.trusted_issuers.is_empty()
    {
        found.add(
            "spec.clientAuth.trustedIssuers",
            format!(
                "client auth {:?} needs at least one trusted issuer to check certificates against",
                spec.client_auth.mode
            ),
        );
    }
    let hours = spec.prolog_frequency.as_secs();
    if hours < 3600 || !hours.is_multiple_of(3600) {
        found.add(
            "spec.prologFrequency",
            format!(
                "OCS agents count the contact interval in whole hours: use 1h or more in whole hours (got {})",
                spec.prolog_frequency
            ),
        );
    }
    let download = &spec.download;
    if download.period_length < 1 {
        found.add(
            "spec.download.periodLength",
            "a period needs at least one cycle",
        );
    }
    let timeout = download.timeout.as_secs();
    if timeout < 86_400 || !timeout.is_multiple_of(86_400) {
        found.add(
            "spec.download.timeout",
            format!(
                "agents count the download timeout in whole days: use 1d or more (got {})",
                download.timeout
            ),
        );
    }
    if download.execution_timeout.as_secs() < 60 {
        found.add(
            "spec.download.executionTimeout",
            "agents count the execution timeout in whole minutes: use 1m or more",
        );
    }
    if let Some(dial_out) = &spec.dial_out
        && let Some(reason) = host_port_problem(&dial_out.gateway)
    {
        found.add("spec.dialOut.gateway", reason);
    }
    for (i, gateway) in spec.trusted_gateways.iter().enumerate() {
        if gateway.names.iter().all(|n| n.trim().is_empty()) {
            found.add(
                format!("spec.trustedGateways[{i}].names"),
                "name the gateway's certificate (its common name or a DNS name): without a name any certificate of that issuer would be believed",
            );
        }
    }
    let path = &spec.ocs.path;
    if !path.starts_with('/')
        || path.len() < 2
        || path.contains(char::is_whitespace)
        || path.starts_with("/v1")
        || path.starts_with("/download")
    {
        found.add(
            "spec.ocs.path",
            format!(
                "`{path}` must be an absolute path such as /ocsinventory, outside /v1 and /download"
            ),
        );
    }
}

fn gateway(spec: &GatewaySpec, found: &mut Found) {
    if let Some(reason) = socket_address_problem(&spec.listen) {
        found.add("spec.listen", reason);
    }
    if let Some(reason) = host_port_problem(&spec.backend) {
        found.add("spec.backend", reason);
    }
    for (i, route) in spec.routes.iter().enumerate() {
        if !is_dns_name(&route.server_name) {
            found.add(
                format!("spec.routes[{i}].serverName"),
                format!("`{}` is not a valid DNS name", route.server_name),
            );
        }
        if let Some(reason) = host_port_problem(&route.backend) {
            found.add(format!("spec.routes[{i}].backend"), reason);
        }
    }
    match spec.mode {
        GatewayMode::Passthrough => {
            if (spec.certificate_ref.is_some() && spec.dial_out.is_none())
                || !spec.trusted_client_issuers.is_empty()
            {
                found.add(
                    "spec.mode",
                    "passthrough forwards TLS untouched: certificateRef and trustedClientIssuers are not used (choose tunnel or terminate to verify clients at the edge)",
                );
            }
        }
        GatewayMode::Tunnel | GatewayMode::Terminate => {
            if spec.certificate_ref.is_none() {
                found.add(
                    "spec.certificateRef",
                    "tunnel and terminate modes present a certificate to agents: set certificateRef",
                );
            }
            if spec.trusted_client_issuers.is_empty() {
                found.add(
                    "spec.trustedClientIssuers",
                    "tunnel and terminate modes verify client certificates: name at least one issuer",
                );
            }
            if spec.mode == GatewayMode::Terminate && !spec.routes.is_empty() {
                found.add(
                    "spec.routes",
                    "routes by server name apply to passthrough and tunnel modes",
                );
            }
        }
    }
    if spec.mode == GatewayMode::Terminate {
        if spec.backend_certificate_ref.is_none() {
            found.add(
                "spec.backendCertificateRef",
                "terminate mode connects to the backend with its own client certificate: set backendCertificateRef",
            );
        }
        if spec.backend_issuer_ref.is_none() {
            found.add(
                "spec.backendIssuerRef",
                "terminate mode verifies the backend's certificate: name the Issuer of its CA",
            );
        }
    } else if spec.backend_certificate_ref.is_some() || spec.backend_issuer_ref.is_some() {
        found.add(
            "spec.mode",
            "backendCertificateRef and backendIssuerRef are used in terminate mode only (passthrough and tunnel keep the agent's TLS session end to end)",
        );
    }
    if let Some(dial_out) = &spec.dial_out {
        if let Some(reason) = socket_address_problem(&dial_out.listen) {
            found.add("spec.dialOut.listen", reason);
        }
        if dial_out.listen == spec.listen {
            found.add(
                "spec.dialOut.listen",
                "inside servers connect to an address of their own, not the agents' listen",
            );
        }
        if spec.certificate_ref.is_none() {
            found.add(
                "spec.certificateRef",
                "dial-out: the gateway presents this certificate to inside servers; set it",
            );
        }
        if dial_out.trusted_server_issuers.is_empty() {
            found.add(
                "spec.dialOut.trustedServerIssuers",
                "name the Issuers of the inside servers' certificates",
            );
        }
        if dial_out.names.iter().all(|n| n.trim().is_empty()) {
            found.add(
                "spec.dialOut.names",
                "name the inside servers' certificates: without a name any certificate of those issuers (an agent's) would be taken for a server",
            );
        }
        if spec.mode == GatewayMode::Terminate {
            found.add(
                "spec.dialOut",
                "dial-out carries passthrough and tunnel connections; terminate mode connects to the backend itself",
            );
        }
    }
    let limits = &spec.limits;
    for (field, value) in [
        ("handshakeTimeout", limits.handshake_timeout),
        ("idleTimeout", limits.idle_timeout),
        ("connectTimeout", limits.connect_timeout),
    ] {
        if value.is_zero() {
            found.add(format!("spec.limits.{field}"), "a timeout cannot be zero");
        }
    }
    if limits.max_connections < 1 {
        found.add(
            "spec.limits.maxConnections",
            "maxConnections must be at least 1",
        );
    }
}

/// Why `address` is not a listening address `ip:port`.
fn socket_address_problem(address: &str) -> Option<String> {
    address.parse::<std::net::SocketAddr>().err().map(|_| {
        format!("`{address}` is not a listening address such as 0.0.0.0:8443 or [::]:8443")
    })
}

/// Why `address` is not `host:port` (a name or an IP).
fn host_port_problem(address: &str) -> Option<String> {
    if address.parse::<std::net::SocketAddr>().is_ok() {
        return None;
    }
    match address.rsplit_once(':') {
        Some((host, port)) if is_dns_name(host) && port.parse::<u16>().is_ok_and(|p| p > 0) => None,
        _ => Some(format!("`{address}` is not host:port")),
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

    #[test]
    fn locations_need_the_right_scheme_and_a_host() {
        assert!(location_problem("https://mirror.lan/download", &["https"]).is_none());
        assert!(location_problem("https://127.0.0.1:8443/download", &["https"]).is_none());
        assert!(location_problem("http://[::1]:8080/d", &["https", "http"]).is_none());
        assert!(location_problem("mirror.lan/download", &["https"]).is_some());
        assert!(location_problem("http://mirror.lan/download", &["https"]).is_some());
        assert!(location_problem("https://:8443/x", &["https"]).is_some());
        assert!(location_problem("https://a.lan:99999/x", &["https"]).is_some());
        assert!(location_problem("https://a.lan/x?y=1", &["https"]).is_some());
    }

    #[test]
    fn backends_may_be_names_or_addresses() {
        assert!(host_port_problem("tessera.internal:8443").is_none());
        assert!(host_port_problem("127.0.0.1:8443").is_none());
        assert!(host_port_problem("tessera.internal").is_some());
        assert!(host_port_problem("bad_host:1").is_some());
    }
}
