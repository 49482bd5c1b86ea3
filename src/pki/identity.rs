//! Who a certificate names: an agent's identity, carried in its client certificate as the
//! URI SAN `urn:tessera:agent:<id>`. Identity is a type, never a bare string.

use std::fmt;
use std::str::FromStr;

use super::PkiError;

/// The URI SAN prefix that names an agent; the id follows it.
pub const AGENT_URN: &str = "urn:tessera:agent:";

/// An agent's identity: the hex digits enrollment drew for it. It is the computer's device
/// id in the state store, and [`AgentId::uri`] names it in its certificate. `Display` and
/// `FromStr` use the URI form (`urn:tessera:agent:<id>`); [`AgentId::as_str`] gives the id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentId(String);

impl AgentId {
    /// The agent `id` (hex digits, at least one), as enrollment returns it.
    pub fn new(id: &str) -> Result<Self, PkiError> {
        if !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Self(id.to_owned()))
        } else {
            Err(PkiError::NotAgentId(id.to_owned()))
        }
    }

    /// A fresh identity: 16 random bytes in hex, unguessable and never reused.
    pub fn generate() -> Self {
        Self(hex::encode(super::random_bytes::<16>()))
    }

    /// The agent named by a verified certificate (DER): its first `urn:tessera:agent:` URI
    /// SAN; `None` when it names no agent (a gateway's or a server's certificate).
    pub fn from_certificate(der: &[u8]) -> Option<Self> {
        let facts = super::facts::read(der).ok()?;
        facts.names.uris.iter().find_map(|uri| uri.parse().ok())
    }

    /// The id, as the state store and the enrollment answer carry it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The URI SAN that names this agent in its certificate.
    pub fn uri(&self) -> String {
        self.to_string()
    }
}

impl FromStr for AgentId {
    type Err = PkiError;

    /// Parses the URI SAN form, `urn:tessera:agent:<hex id>`.
    fn from_str(uri: &str) -> Result<Self, PkiError> {
        uri.strip_prefix(AGENT_URN)
            .ok_or_else(|| PkiError::NotAgentId(uri.to_owned()))
            .and_then(Self::new)
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{AGENT_URN}{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_ids_round_trip_through_their_uri_and_nothing_else_parses() {
        let id = AgentId::new("0a1b").unwrap();
        assert_eq!(id.uri(), "urn:tessera:agent:0a1b");
        assert_eq!(id.uri().parse::<AgentId>().unwrap(), id);
        assert_eq!(id.as_str(), "0a1b");
        for wrong in [
            "urn:tessera:agent:",
            "urn:tessera:agent:../x",
            "spiffe://x/0a1b",
            "0a1b",
            "urn:tessera:server",
        ] {
            assert!(wrong.parse::<AgentId>().is_err(), "{wrong}");
        }
        assert!(AgentId::new("").is_err() && AgentId::new("0a/1").is_err());
        let fresh = AgentId::generate();
        assert_eq!(fresh.as_str().len(), 32);
        assert_ne!(fresh, AgentId::generate());
    }

    #[test]
    fn a_certificate_names_the_agent_of_its_uri_san_or_none() {
        use crate::pki::authority::{Authority, LeafRequest, generate_key};
        use crate::pki::{KeyType, Names, Usage, facts};
        let now = jiff::Timestamp::now();
        let hours = jiff::SignedDuration::from_hours;
        let authority = Authority::generate("test CA", KeyType::EcdsaP256, now, hours(24)).unwrap();
        let issue = |uris: Vec<String>| {
            let leaf = LeafRequest {
                names: Names {
                    common_name: Some("x".into()),
                    uris,
                    ..Names::default()
                },
                usages: vec![Usage::ClientAuth],
                is_ca: false,
                lifetime: hours(1),
            };
            let key = generate_key(KeyType::EcdsaP256).unwrap();
            let issued = authority.issue(&leaf, &key, now).unwrap();
            facts::pem_certificates(&issued.chain_pem).unwrap()[0].to_vec()
        };
        let agent = AgentId::new("c0ffee").unwrap();
        let der = issue(vec!["urn:tessera:server".into(), agent.uri()]);
        assert_eq!(AgentId::from_certificate(&der), Some(agent));
        assert_eq!(AgentId::from_certificate(&issue(vec![])), None);
        assert_eq!(AgentId::from_certificate(b"not a certificate"), None);
    }
}
