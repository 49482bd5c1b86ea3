//! Checks of the network kinds on their own: Server and Gateway (addresses, routes, modes).

use super::{Found, is_dns_name};
use crate::resources::gateway::{GatewayDialOut, GatewayMode, GatewaySpec};
use crate::resources::server::{ClientAuthMode, ServerSpec};

pub(super) fn server(spec: &ServerSpec, found: &mut Found) {
    match (&spec.certificate_ref, &spec.certificate_secret_ref) {
        (Some(_), Some(_)) => found.add(
            "spec.certificateSecretRef",
            "set certificateRef (a Tessera Certificate) or certificateSecretRef (an existing kubernetes.io/tls Secret), not both",
        ),
        (None, None) => found.add(
            "spec.certificateRef",
            "the server presents a certificate to agents: set certificateRef (a Tessera Certificate) or, in Kubernetes, certificateSecretRef (an existing kubernetes.io/tls Secret)",
        ),
        _ => {}
    }
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

pub(super) fn gateway(spec: &GatewaySpec, found: &mut Found) {
    let presents = spec.certificate_ref.is_some() || spec.certificate_secret_ref.is_some();
    if spec.certificate_ref.is_some() && spec.certificate_secret_ref.is_some() {
        found.add(
            "spec.certificateSecretRef",
            "set certificateRef (a Tessera Certificate) or certificateSecretRef (an existing kubernetes.io/tls Secret), not both",
        );
    }
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
            if (presents && spec.dial_out.is_none()) || !spec.trusted_client_issuers.is_empty() {
                found.add(
                    "spec.mode",
                    "passthrough forwards TLS untouched: certificateRef, certificateSecretRef and trustedClientIssuers are not used (choose tunnel or terminate to verify clients at the edge)",
                );
            }
        }
        GatewayMode::Tunnel | GatewayMode::Terminate => {
            if !presents {
                found.add(
                    "spec.certificateRef",
                    "tunnel and terminate modes present a certificate to agents: set certificateRef (or, in Kubernetes, certificateSecretRef)",
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
        gateway_dial_out(spec, dial_out, found);
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

/// Dial-out: its own listen address, the gateway's certificate, and the inside servers'
/// issuers and names; not with terminate mode.
fn gateway_dial_out(spec: &GatewaySpec, dial_out: &GatewayDialOut, found: &mut Found) {
    if let Some(reason) = socket_address_problem(&dial_out.listen) {
        found.add("spec.dialOut.listen", reason);
    }
    if dial_out.listen == spec.listen {
        found.add(
            "spec.dialOut.listen",
            "inside servers connect to an address of their own, not the agents' listen",
        );
    }
    if spec.certificate_ref.is_none() && spec.certificate_secret_ref.is_none() {
        found.add(
            "spec.certificateRef",
            "dial-out: the gateway presents this certificate to inside servers; set certificateRef (or, in Kubernetes, certificateSecretRef)",
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

    fn server_problems(certificates: &str) -> Vec<(String, String)> {
        let yaml = format!("listen:\n  https: 0.0.0.0:8443\n{certificates}");
        let spec: ServerSpec = serde_saphyr::from_str(&yaml).unwrap();
        let mut found = Found::default();
        server(&spec, &mut found);
        found.0
    }

    #[test]
    fn a_server_names_its_certificate_or_its_secret_not_both() {
        assert!(server_problems("certificateRef: {name: web}\n").is_empty());
        assert!(server_problems("certificateSecretRef: {name: web-tls}\n").is_empty());
        let both =
            server_problems("certificateRef: {name: web}\ncertificateSecretRef: {name: web-tls}\n");
        assert_eq!(both.len(), 1, "{both:?}");
        assert_eq!(both[0].0, "spec.certificateSecretRef");
        assert!(both[0].1.contains("not both"), "{both:?}");
        let neither = server_problems("");
        assert_eq!(neither.len(), 1, "{neither:?}");
        assert_eq!(neither[0].0, "spec.certificateRef");
    }

    fn gateway_problems(certificates: &str) -> Vec<(String, String)> {
        let yaml = format!(
            "listen: 0.0.0.0:443\nmode: tunnel\nbackend: tessera.internal:8443\ntrustedClientIssuers: [{{name: agents}}]\n{certificates}"
        );
        let spec: GatewaySpec = serde_saphyr::from_str(&yaml).unwrap();
        let mut found = Found::default();
        gateway(&spec, &mut found);
        found.0
    }

    #[test]
    fn a_gateway_names_its_certificate_or_its_secret_not_both() {
        assert!(gateway_problems("certificateRef: {name: edge}\n").is_empty());
        assert!(gateway_problems("certificateSecretRef: {name: edge-tls}\n").is_empty());
        let both = gateway_problems(
            "certificateRef: {name: edge}\ncertificateSecretRef: {name: edge-tls}\n",
        );
        assert_eq!(both.len(), 1, "{both:?}");
        assert_eq!(both[0].0, "spec.certificateSecretRef");
        let neither = gateway_problems("");
        assert_eq!(neither.len(), 1, "{neither:?}");
        assert!(neither[0].1.contains("certificateSecretRef"), "{neither:?}");
    }

    #[test]
    fn backends_may_be_names_or_addresses() {
        assert!(host_port_problem("tessera.internal:8443").is_none());
        assert!(host_port_problem("127.0.0.1:8443").is_none());
        assert!(host_port_problem("tessera.internal").is_some());
        assert!(host_port_problem("bad_host:1").is_some());
    }
}
