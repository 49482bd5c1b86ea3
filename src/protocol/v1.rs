//! The native protocol of Tessera's own agent: JSON over HTTPS under `/v1`.
//!
//! Enrollment is the only call made without a client certificate; everything after it is
//! made with the certificate it returns, and the agent's identity comes from that
//! certificate, never from a request body.

use serde::{Deserialize, Serialize};

/// `POST /v1/enroll`: a token and a certificate request for a key the agent made itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnrollRequest {
    /// The enrollment token (`tsr_…`), from `tessera token create`.
    pub token: String,
    /// A PKCS#10 certificate signing request, PEM. Only its public key is used.
    pub csr: String,
    /// The computer's name, for display until its first check-in.
    #[serde(default)]
    pub hostname: String,
}

/// The answer to an enrollment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrollResponse {
    /// The agent's identity, also in its certificate (`urn:tessera:agent:<id>`).
    pub agent_id: String,
    /// The client certificate and its intermediates, PEM.
    pub certificate: String,
    /// The CA certificates the agent trusts for the server, PEM.
    pub ca: String,
    /// When the certificate expires (RFC 3339).
    pub not_after: String,
    /// When the agent should renew it (RFC 3339): 2/3 of its lifetime.
    pub renew_after: String,
}

/// A refusal, with what went wrong in words.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// A stable code, e.g. `token_expired`.
    pub error: String,
    /// A sentence for people.
    pub message: String,
}

/// The URI SAN that names agent `id` in its certificate.
pub fn agent_uri(id: &str) -> String {
    format!("urn:tessera:agent:{id}")
}

/// The agent id in a URI SAN, if it is one.
pub fn agent_id_of(uri: &str) -> Option<&str> {
    uri.strip_prefix("urn:tessera:agent:")
        .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_ids_round_trip_through_their_uri() {
        assert_eq!(agent_id_of(&agent_uri("0a1b")), Some("0a1b"));
        assert_eq!(agent_id_of("urn:tessera:agent:"), None);
        assert_eq!(agent_id_of("urn:tessera:agent:../x"), None);
        assert_eq!(agent_id_of("spiffe://x/0a1b"), None);
    }
}
