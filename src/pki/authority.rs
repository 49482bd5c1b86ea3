//! A certificate authority: a CA certificate and its key, generated here or loaded from PEM,
//! that signs leaf and intermediate certificates.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

use super::facts::{self, CertFacts};
use super::{KeyType, Names, PkiError, Usage};

/// How long before "now" a new certificate's validity starts, so that a peer whose clock is
/// a little behind does not see it as not yet valid.
pub const BACKDATE: jiff::SignedDuration = jiff::SignedDuration::from_mins(5);

/// A CA able to sign.
pub struct Authority {
    key: KeyPair,
    /// The CA certificate.
    certificate_pem: String,
    /// Certificates between a leaf and the root: the CA itself when it is an intermediate,
    /// then its own issuers, without the root. Empty for a root CA.
    intermediates_pem: String,
    /// The trust anchor agents and clients should hold.
    root_pem: String,
    facts: CertFacts,
}

/// What to put in a certificate.
#[derive(Clone, Debug)]
pub struct LeafRequest {
    pub names: Names,
    pub usages: Vec<Usage>,
    /// An intermediate CA for an Issuer of type `ca`.
    pub is_ca: bool,
    pub lifetime: jiff::SignedDuration,
}

impl LeafRequest {
    /// A client certificate (usages `client auth`, `digital signature`) named `common_name`,
    /// valid for `lifetime`: what an agent shows a gateway or a server.
    pub fn client(common_name: &str, lifetime: jiff::SignedDuration) -> Self {
        Self {
            names: Names {
                common_name: Some(common_name.to_owned()),
                ..Names::default()
            },
            usages: vec![Usage::ClientAuth, Usage::DigitalSignature],
            is_ca: false,
            lifetime,
        }
    }
}

/// A signed certificate and what goes with it.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The certificate followed by the intermediates: what a server presents (`tls.crt`).
    pub chain_pem: String,
    /// The root (`ca.crt`).
    pub root_pem: String,
    pub facts: CertFacts,
}

impl Authority {
    /// A new self-signed root CA valid from `now` for `lifetime`.
    pub fn generate(
        common_name: &str,
        key_type: KeyType,
        now: jiff::Timestamp,
        lifetime: jiff::SignedDuration,
    ) -> Result<Self, PkiError> {
        let key = generate_key(key_type)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        params.not_before = offset(now - BACKDATE)?;
        params.not_after = offset(now + lifetime)?;
        let certificate = params.self_signed(&key).map_err(PkiError::Sign)?;
        let certificate_pem = certificate.pem();
        let facts = facts::read(certificate.der())?;
        Ok(Self {
            key,
            root_pem: certificate_pem.clone(),
            certificate_pem,
            intermediates_pem: String::new(),
            facts,
        })
    }

    /// A CA from PEM: `chain_pem` starts with the CA certificate, followed by any of its
    /// issuers; `root_pem`, when given, is the trust anchor (else the last of the chain).
    pub fn from_pem(
        chain_pem: &str,
        key_pem: &str,
        root_pem: Option<&str>,
    ) -> Result<Self, PkiError> {
        let key = load_key(key_pem)?;
        let chain = facts::pem_certificates(chain_pem)?;
        let facts = facts::read(&chain[0])?;
        if !facts.is_ca || !facts.can_sign_certificates {
            return Err(PkiError::NotCa(facts.subject));
        }
        if rcgen::PublicKeyData::subject_public_key_info(&key) != facts.public_key {
            return Err(PkiError::KeyMismatch);
        }
        let pems: Vec<String> = chain.iter().map(|der| pem("CERTIFICATE", der)).collect();
        let root_pem = match root_pem {
            Some(root) => {
                facts::pem_certificates(root)?;
                root.to_owned()
            }
            None => pems.last().cloned().unwrap_or_default(),
        };
        // Everything in the chain that is not the root is an intermediate a server must send.
        let root_der = facts::pem_certificates(&root_pem)?;
        let intermediates_pem = chain
            .iter()
            .zip(&pems)
            .filter(|(der, _)| !root_der.iter().any(|r| r.as_ref() == der.as_ref()))
            .map(|(_, pem)| pem.as_str())
            .collect();
        Ok(Self {
            key,
            certificate_pem: pems[0].clone(),
            intermediates_pem,
            root_pem,
            facts,
        })
    }

    /// The same CA, with `intermediates_pem` sent after every leaf it signs and
    /// `trust_bundle_pem` as the root(s) clients should hold. Used during a CA rollover, where
    /// leaves carry a cross-certificate and clients are given both the old and the new CA.
    pub fn with_chain(mut self, intermediates_pem: String, trust_bundle_pem: String) -> Self {
        self.intermediates_pem = intermediates_pem;
        self.root_pem = trust_bundle_pem;
        self
    }

    /// Certifies `other`'s CA key and subject with this CA's key: a cross-certificate, so that
    /// chains through `other` also verify for clients that trust only this CA. It ends no
    /// later than either CA.
    pub fn cross_sign(&self, other: &Self, now: jiff::Timestamp) -> Result<String, PkiError> {
        let der = facts::pem_certificates(&other.certificate_pem)?.remove(0);
        let (_, certificate) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| PkiError::Certificate(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = same_name(&certificate.tbs_certificate.subject)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        // The same key identifier as `other`'s own certificate, so path building matches the
        // leaves' authority key identifier to either.
        if let Some(id) = &other.facts.subject_key_id {
            params.key_identifier_method = rcgen::KeyIdMethod::PreSpecified(id.clone());
        }
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        params.not_before = offset((now - BACKDATE).max(self.facts.not_before))?;
        params.not_after = offset(other.facts.not_after.min(self.facts.not_after))?;
        let issuer = Issuer::from_ca_cert_pem(&self.certificate_pem, &self.key)
            .map_err(|e| PkiError::Certificate(e.to_string()))?;
        let cross = params
            .signed_by(&other.key, &issuer)
            .map_err(PkiError::Sign)?;
        Ok(cross.pem())
    }

    /// The CA certificate.
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// The CA's private key, PKCS#8 PEM.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The trust anchor.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The facts of the CA certificate.
    pub fn facts(&self) -> &CertFacts {
        &self.facts
    }

    /// Signs a certificate for the public key of a certificate signing request (PEM), whose
    /// signature proves possession of the private key. Only the key is taken from it: the
    /// names and usages come from `request`, so a requester cannot choose its identity.
    pub fn issue_for_csr(
        &self,
        request: &LeafRequest,
        csr_pem: &str,
        now: jiff::Timestamp,
    ) -> Result<Issued, PkiError> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::Certificate(format!("unusable certificate request: {e}")))?;
        self.issue(request, &csr.public_key, now)
    }

    /// Signs a certificate for `key` at time `now`. Its validity never outlasts the CA's.
    pub fn issue(
        &self,
        request: &LeafRequest,
        key: &impl rcgen::PublicKeyData,
        now: jiff::Timestamp,
    ) -> Result<Issued, PkiError> {
        if self.facts.not_after <= now {
            return Err(PkiError::AuthorityExpired(self.facts.not_after));
        }
        let mut params = CertificateParams::default();
        let names = &request.names;
        params.distinguished_name = match &names.common_name {
            Some(cn) => distinguished_name(cn),
            None => DistinguishedName::new(),
        };
        for dns in &names.dns_names {
            let name = dns
                .clone()
                .try_into()
                .map_err(|_| PkiError::Name(dns.clone()))?;
            params.subject_alt_names.push(SanType::DnsName(name));
        }
        for ip in &names.ip_addresses {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        for uri in &names.uris {
            let name = uri
                .clone()
                .try_into()
                .map_err(|_| PkiError::Name(uri.clone()))?;
            params.subject_alt_names.push(SanType::URI(name));
        }
        for usage in &request.usages {
            match usage {
                Usage::ServerAuth => params
                    .extended_key_usages
                    .push(ExtendedKeyUsagePurpose::ServerAuth),
                Usage::ClientAuth => params
                    .extended_key_usages
                    .push(ExtendedKeyUsagePurpose::ClientAuth),
                Usage::DigitalSignature => {
                    params.key_usages.push(KeyUsagePurpose::DigitalSignature)
                }
                Usage::KeyEncipherment => params.key_usages.push(KeyUsagePurpose::KeyEncipherment),
            }
        }
        if request.is_ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            for usage in [KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign] {
                if !params.key_usages.contains(&usage) {
                    params.key_usages.push(usage);
                }
            }
        } else {
            params.is_ca = IsCa::ExplicitNoCa;
        }
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let not_after = (now + request.lifetime).min(self.facts.not_after);
        params.not_before = offset((now - BACKDATE).max(self.facts.not_before))?;
        params.not_after = offset(not_after)?;

        let issuer = Issuer::from_ca_cert_pem(&self.certificate_pem, &self.key)
            .map_err(|e| PkiError::Certificate(e.to_string()))?;
        let certificate = params.signed_by(key, &issuer).map_err(PkiError::Sign)?;
        let facts = facts::read(certificate.der())?;
        Ok(Issued {
            chain_pem: format!("{}{}", certificate.pem(), self.intermediates_pem),
            root_pem: self.root_pem.clone(),
            facts,
        })
    }
}

/// A certificate to list in a CRL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revoked {
    /// Serial number, hex.
    pub serial: String,
    pub at: jiff::Timestamp,
}

impl Authority {
    /// A CRL of `revoked`, numbered `number`, valid from `now` (backdated by `BACKDATE`) until
    /// `now + validity`, as PEM.
    pub fn crl(
        &self,
        revoked: &[Revoked],
        number: u64,
        now: jiff::Timestamp,
        validity: jiff::SignedDuration,
    ) -> Result<String, PkiError> {
        let revoked_certs = revoked
            .iter()
            .map(|entry| {
                let bytes = hex::decode(normalise_serial(&entry.serial)).map_err(|_| {
                    PkiError::Certificate(format!("`{}` is not a hex serial", entry.serial))
                })?;
                Ok(rcgen::RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&bytes),
                    revocation_time: offset(entry.at)?,
                    reason_code: None,
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, PkiError>>()?;
        let params = rcgen::CertificateRevocationListParams {
            // Backdated like certificates, for verifiers whose clock is a little behind.
            this_update: offset(now - BACKDATE)?,
            next_update: offset(now + validity)?,
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let issuer = Issuer::from_ca_cert_pem(&self.certificate_pem, &self.key)
            .map_err(|e| PkiError::Certificate(e.to_string()))?;
        let crl = params.signed_by(&issuer).map_err(PkiError::Sign)?;
        crl.pem().map_err(PkiError::Sign)
    }
}

/// A serial number as Tessera writes it: lowercase hex, no separators, no leading zero bytes,
/// an even number of digits.
pub fn normalise_serial(serial: &str) -> String {
    let hex: String = serial
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let trimmed = hex.trim_start_matches('0');
    if trimmed.len() % 2 == 1 {
        format!("0{trimmed}")
    } else {
        trimmed.to_owned()
    }
}

/// A new private key.
pub fn generate_key(key_type: KeyType) -> Result<KeyPair, PkiError> {
    let algorithm = match key_type {
        KeyType::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeyType::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        KeyType::Ed25519 => &rcgen::PKCS_ED25519,
        KeyType::Rsa(bits) => return generate_rsa(bits),
    };
    KeyPair::generate_for(algorithm).map_err(|e| PkiError::KeyGeneration(key_type, e))
}

/// An RSA key: generated by the `rsa` crate (ring cannot generate RSA keys), then handed to
/// rcgen, which signs with ring (RSA PKCS#1 v1.5 with SHA-256).
fn generate_rsa(bits: u32) -> Result<KeyPair, PkiError> {
    use rsa::pkcs8::EncodePrivateKey;
    let key_type = KeyType::Rsa(bits);
    if !matches!(bits, 2048 | 3072 | 4096) {
        return Err(PkiError::KeyTypeUnavailable(key_type));
    }
    let private = rsa::PrivateKey::new(&mut getrandom::SysRng, bits as usize)
        .map_err(|e| PkiError::Key(format!("failed to generate an RSA key: {e}")))?;
    let der = private
        .to_pkcs8_der()
        .map_err(|e| PkiError::Key(format!("failed to encode the RSA key: {e}")))?;
    let pkcs8 = rustls::pki_types::PrivatePkcs8KeyDer::from(der.as_bytes());
    KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_RSA_SHA256)
        .map_err(|e| PkiError::KeyGeneration(key_type, e))
}

/// A private key from PEM (PKCS#8, or SEC1 / PKCS#1 as OpenSSL writes them).
pub fn load_key(pem: &str) -> Result<KeyPair, PkiError> {
    let der = super::key_pem::pkcs8_der(pem)?;
    KeyPair::try_from(der.as_slice()).map_err(|e| PkiError::Key(e.to_string()))
}

/// Whether `key` is the private key of a certificate with these facts.
pub fn key_matches(key: &KeyPair, facts: &CertFacts) -> bool {
    rcgen::PublicKeyData::subject_public_key_info(key) == facts.public_key
}

/// The type of an existing key.
pub fn key_type_of(key: &KeyPair) -> Option<KeyType> {
    let algorithm = key.algorithm();
    if algorithm == &rcgen::PKCS_ECDSA_P256_SHA256 {
        Some(KeyType::EcdsaP256)
    } else if algorithm == &rcgen::PKCS_ECDSA_P384_SHA384 {
        Some(KeyType::EcdsaP384)
    } else if algorithm == &rcgen::PKCS_ED25519 {
        Some(KeyType::Ed25519)
    } else if algorithm == &rcgen::PKCS_RSA_SHA256 {
        use rsa::pkcs8::DecodePrivateKey;
        use rsa::traits::PublicKeyParts;
        let private = rsa::PrivateKey::from_pkcs8_der(key.serialized_der()).ok()?;
        Some(KeyType::Rsa(u32::try_from(private.size() * 8).ok()?))
    } else {
        None
    }
}

/// 16 random bytes, positive: serials must be unique per issuer, also when a key is reused.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = super::random_bytes();
    bytes[0] = (bytes[0] & 0x7f) | 0x40; // positive, and always 16 bytes long
    SerialNumber::from_slice(&bytes)
}

/// The same distinguished name as `name`, attribute by attribute, keeping each value's
/// string type so the encoding (which chain building compares byte for byte) is identical.
fn same_name(name: &x509_parser::x509::X509Name<'_>) -> Result<DistinguishedName, PkiError> {
    use x509_parser::der_parser::asn1_rs::Tag;
    let mut out = DistinguishedName::new();
    for attribute in name.iter_attributes() {
        let oid: Vec<u64> = attribute
            .attr_type()
            .iter()
            .ok_or_else(|| PkiError::Certificate("an attribute type is too large".into()))?
            .collect();
        let value = attribute.attr_value();
        let text = std::str::from_utf8(value.data)
            .map_err(|_| PkiError::Certificate("a name attribute is not text".into()))?
            .to_owned();
        let value = match value.tag() {
            Tag::PrintableString => rcgen::DnValue::PrintableString(
                text.try_into()
                    .map_err(|_| PkiError::Certificate("bad PrintableString".into()))?,
            ),
            Tag::Ia5String => rcgen::DnValue::Ia5String(
                text.try_into()
                    .map_err(|_| PkiError::Certificate("bad IA5String".into()))?,
            ),
            _ => rcgen::DnValue::Utf8String(text),
        };
        out.push(DnType::from_oid(&oid), value);
    }
    Ok(out)
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

fn offset(timestamp: jiff::Timestamp) -> Result<time::OffsetDateTime, PkiError> {
    time::OffsetDateTime::from_unix_timestamp(timestamp.as_second())
        .map_err(|e| PkiError::Certificate(format!("time out of range: {e}")))
}

/// DER as a PEM block.
pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> jiff::Timestamp {
        "2026-11-23T12:00:00Z".parse().unwrap()
    }

    fn ca(name: &str, hours: i64) -> Authority {
        Authority::generate(
            name,
            KeyType::EcdsaP256,
            now(),
            jiff::SignedDuration::from_hours(hours),
        )
        .unwrap()
    }

    #[test]
    fn a_client_request_makes_a_client_certificate_only() {
        let key = generate_key(KeyType::EcdsaP256).unwrap();
        let issued = ca("Clients", 48)
            .issue(
                &LeafRequest::client("agent-7", jiff::SignedDuration::from_hours(2)),
                &key,
                now(),
            )
            .unwrap();
        let facts = &issued.facts;
        assert_eq!(facts.names.common_name.as_deref(), Some("agent-7"));
        assert!(
            facts.usages.contains(&Usage::ClientAuth),
            "{:?}",
            facts.usages
        );
        assert!(
            !facts.usages.contains(&Usage::ServerAuth),
            "{:?}",
            facts.usages
        );
        assert!(!facts.is_ca);
        assert_eq!(facts.not_after, now() + jiff::SignedDuration::from_hours(2));
    }

    /// A request for `dns`, living `hours`, with no usages.
    fn request(dns: &str, hours: i64) -> LeafRequest {
        LeafRequest {
            names: Names {
                dns_names: vec![dns.into()],
                ..Names::default()
            },
            usages: vec![],
            is_ca: false,
            lifetime: jiff::SignedDuration::from_hours(hours),
        }
    }

    #[test]
    fn a_generated_root_signs_leaves_with_the_asked_names_and_usages() {
        let ca = ca("Test CA", 87600);
        assert!(ca.facts().is_ca && ca.facts().can_sign_certificates);
        let key = generate_key(KeyType::EcdsaP256).unwrap();
        let request = LeafRequest {
            names: Names {
                common_name: Some("tessera.local".into()),
                dns_names: vec!["tessera.local".into(), "localhost".into()],
                ip_addresses: vec!["127.0.0.1".parse().unwrap()],
                uris: vec!["tessera://agent/pc-1".into()],
            },
            usages: vec![Usage::ServerAuth, Usage::DigitalSignature],
            is_ca: false,
            lifetime: jiff::SignedDuration::from_hours(2160),
        };
        let issued = ca.issue(&request, &key, now()).unwrap();
        let facts = &issued.facts;
        assert_eq!(facts.names.dns_names, vec!["tessera.local", "localhost"]);
        assert_eq!(
            facts.names.ip_addresses,
            vec!["127.0.0.1".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(facts.names.uris, vec!["tessera://agent/pc-1"]);
        assert_eq!(
            facts.usages,
            vec![Usage::ServerAuth, Usage::DigitalSignature]
        );
        assert!(!facts.is_ca);
        assert!(facts.issued_by(ca.facts()));
        assert!(key_matches(&key, facts));
        assert_eq!(
            facts.not_after,
            now() + jiff::SignedDuration::from_hours(2160)
        );
        assert_eq!(
            issued.chain_pem.matches("BEGIN CERTIFICATE").count(),
            1,
            "a root's leaf chain is the leaf"
        );
    }

    #[test]
    fn a_leaf_never_outlives_its_issuer() {
        let ca = ca("Short CA", 24);
        let key = generate_key(KeyType::Ed25519).unwrap();
        let request = request("a.example", 2160);
        let issued = ca.issue(&request, &key, now()).unwrap();
        assert_eq!(issued.facts.not_after, ca.facts().not_after);
        assert_eq!(issued.facts.key_type, Some(KeyType::Ed25519));
    }

    #[test]
    fn an_intermediate_chains_to_the_root_and_reloads_from_pem() {
        let root = Authority::generate(
            "Root",
            KeyType::EcdsaP384,
            now(),
            jiff::SignedDuration::from_hours(87600),
        )
        .unwrap();
        let key = generate_key(KeyType::EcdsaP256).unwrap();
        let request = LeafRequest {
            names: Names {
                common_name: Some("Intermediate".into()),
                ..Names::default()
            },
            usages: vec![],
            is_ca: true,
            lifetime: jiff::SignedDuration::from_hours(43800),
        };
        let issued = root.issue(&request, &key, now()).unwrap();
        let intermediate = Authority::from_pem(
            &issued.chain_pem,
            &key.serialize_pem(),
            Some(&issued.root_pem),
        )
        .unwrap();
        let leaf_key = generate_key(KeyType::EcdsaP256).unwrap();
        let leaf = intermediate
            .issue(
                &LeafRequest {
                    names: Names {
                        dns_names: vec!["leaf.example".into()],
                        ..Names::default()
                    },
                    usages: vec![Usage::ServerAuth],
                    is_ca: false,
                    lifetime: jiff::SignedDuration::from_hours(24),
                },
                &leaf_key,
                now(),
            )
            .unwrap();
        assert_eq!(
            leaf.chain_pem.matches("BEGIN CERTIFICATE").count(),
            2,
            "leaf + intermediate"
        );
        assert_eq!(leaf.root_pem, root.root_pem());
        assert!(leaf.facts.issued_by(intermediate.facts()));
    }

    #[test]
    fn loading_refuses_a_foreign_key_and_a_non_ca_certificate() {
        let ca = ca("CA", 24);
        let other = generate_key(KeyType::EcdsaP256).unwrap();
        assert!(matches!(
            Authority::from_pem(ca.certificate_pem(), &other.serialize_pem(), None),
            Err(PkiError::KeyMismatch)
        ));
        let leaf = ca.issue(&request("x.example", 1), &other, now()).unwrap();
        assert!(matches!(
            Authority::from_pem(&leaf.chain_pem, &other.serialize_pem(), None),
            Err(PkiError::NotCa(_))
        ));
    }

    #[test]
    fn a_cross_certificate_lets_old_roots_verify_the_new_cas_leaves() {
        let old = ca("Old CA", 24);
        let new = ca("New CA", 48);
        let cross = old.cross_sign(&new, now()).unwrap();
        let cross_facts = facts::read(&facts::pem_certificates(&cross).unwrap()[0]).unwrap();
        assert_eq!(
            cross_facts.subject_der,
            new.facts().subject_der,
            "same subject as the new CA"
        );
        assert_eq!(
            cross_facts.subject_key_id,
            new.facts().subject_key_id,
            "same key identifier"
        );
        assert_eq!(cross_facts.public_key, new.facts().public_key, "same key");
        assert!(cross_facts.issued_by(old.facts()));
        assert!(cross_facts.is_ca && cross_facts.can_sign_certificates);
        assert_eq!(
            cross_facts.not_after,
            old.facts().not_after,
            "ends with the old CA"
        );
    }

    #[test]
    fn serials_differ_even_for_the_same_key() {
        let ca = ca("CA", 24);
        let key = generate_key(KeyType::EcdsaP256).unwrap();
        let request = request("x.example", 1);
        let a = ca.issue(&request, &key, now()).unwrap();
        let b = ca.issue(&request, &key, now()).unwrap();
        assert_ne!(a.facts.serial, b.facts.serial);
        assert_eq!(a.facts.serial.len(), 32);
    }
}
