//! What a certificate says, read from PEM or DER: names, usages, validity, keys.

use std::net::IpAddr;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{KeyType, Names, PkiError, Usage};

/// The facts of one certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFacts {
    /// Serial number, lowercase hex with no separators.
    pub serial: String,
    /// Subject, as OpenSSL prints it (`CN=...`).
    pub subject: String,
    pub issuer: String,
    pub not_before: jiff::Timestamp,
    pub not_after: jiff::Timestamp,
    pub names: Names,
    pub usages: Vec<Usage>,
    pub is_ca: bool,
    /// Whether keyCertSign is set (a CA that may sign certificates).
    pub can_sign_certificates: bool,
    pub key_type: Option<KeyType>,
    /// DER of the SubjectPublicKeyInfo: what a private key is matched against.
    pub public_key: Vec<u8>,
    pub subject_key_id: Option<Vec<u8>>,
    pub authority_key_id: Option<Vec<u8>>,
    /// The raw DER subject and issuer names, to compare exactly.
    pub subject_der: Vec<u8>,
    pub issuer_der: Vec<u8>,
}

impl CertFacts {
    /// Whether `self` names `issuer` as its issuer (by name and key identifier).
    pub fn issued_by(&self, issuer: &Self) -> bool {
        let key_ids_agree = match (&self.authority_key_id, &issuer.subject_key_id) {
            (Some(aki), Some(ski)) => aki == ski,
            _ => true,
        };
        self.issuer_der == issuer.subject_der && key_ids_agree
    }

    /// The lifetime of the certificate.
    pub fn lifetime(&self) -> jiff::SignedDuration {
        self.not_after.duration_since(self.not_before)
    }
}

/// Every certificate of a PEM bundle, in order, as DER.
pub fn pem_certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| PkiError::Certificate(e.to_string()))?;
    if certificates.is_empty() {
        return Err(PkiError::Certificate(
            "no certificate in the PEM text".into(),
        ));
    }
    Ok(certificates)
}

/// The facts of a DER certificate.
pub fn read(der: &[u8]) -> Result<CertFacts, PkiError> {
    let (_, certificate) =
        X509Certificate::from_der(der).map_err(|e| PkiError::Certificate(e.to_string()))?;
    let tbs = &certificate.tbs_certificate;
    let mut names = Names {
        common_name: certificate
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned),
        ..Names::default()
    };
    let mut usages = Vec::new();
    let mut is_ca = false;
    let mut can_sign_certificates = false;
    let mut subject_key_id = None;
    let mut authority_key_id = None;
    for extension in tbs.extensions() {
        match extension.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    match name {
                        GeneralName::DNSName(dns) => names.dns_names.push((*dns).to_owned()),
                        GeneralName::URI(uri) => names.uris.push((*uri).to_owned()),
                        GeneralName::IPAddress(bytes) => {
                            if let Some(ip) = ip_from_bytes(bytes) {
                                names.ip_addresses.push(ip);
                            }
                        }
                        _ => {}
                    }
                }
            }
            ParsedExtension::ExtendedKeyUsage(eku) => {
                if eku.server_auth {
                    usages.push(Usage::ServerAuth);
                }
                if eku.client_auth {
                    usages.push(Usage::ClientAuth);
                }
            }
            ParsedExtension::KeyUsage(ku) => {
                if ku.digital_signature() {
                    usages.push(Usage::DigitalSignature);
                }
                if ku.key_encipherment() {
                    usages.push(Usage::KeyEncipherment);
                }
                can_sign_certificates = ku.key_cert_sign();
            }
            ParsedExtension::BasicConstraints(bc) => is_ca = bc.ca,
            ParsedExtension::SubjectKeyIdentifier(id) => subject_key_id = Some(id.0.to_vec()),
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                authority_key_id = aki.key_identifier.as_ref().map(|id| id.0.to_vec());
            }
            _ => {}
        }
    }
    usages.sort();
    let timestamp = |t: x509_parser::time::ASN1Time| {
        jiff::Timestamp::from_second(t.timestamp())
            .map_err(|e| PkiError::Certificate(format!("validity out of range: {e}")))
    };
    Ok(CertFacts {
        serial: hex::encode(tbs.raw_serial())
            .trim_start_matches("00")
            .to_owned(),
        subject: tbs.subject.to_string(),
        issuer: tbs.issuer.to_string(),
        not_before: timestamp(tbs.validity.not_before)?,
        not_after: timestamp(tbs.validity.not_after)?,
        names,
        usages,
        is_ca,
        can_sign_certificates,
        key_type: key_type(&tbs.subject_pki),
        public_key: tbs.subject_pki.raw.to_vec(),
        subject_key_id,
        authority_key_id,
        subject_der: tbs.subject.as_raw().to_vec(),
        issuer_der: tbs.issuer.as_raw().to_vec(),
    })
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

fn key_type(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Option<KeyType> {
    use x509_parser::oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
        OID_SIG_ED25519,
    };
    let algorithm = &spki.algorithm.algorithm;
    if *algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki.algorithm.parameters.as_ref()?.as_oid().ok()?;
        if curve == OID_EC_P256 {
            Some(KeyType::EcdsaP256)
        } else if curve == OID_NIST_EC_P384 {
            Some(KeyType::EcdsaP384)
        } else {
            None
        }
    } else if *algorithm == OID_SIG_ED25519 {
        Some(KeyType::Ed25519)
    } else if *algorithm == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed().ok()? {
            x509_parser::public_key::PublicKey::RSA(rsa) => rsa.key_size(),
            _ => return None,
        };
        Some(KeyType::Rsa(u32::try_from(bits).ok()?))
    } else {
        None
    }
}

/// What a CRL says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlFacts {
    pub number: u64,
    pub this_update: jiff::Timestamp,
    pub next_update: jiff::Timestamp,
    /// Revoked serials, as `normalise_serial` writes them.
    pub serials: std::collections::HashSet<String>,
    /// DER of the issuer's name.
    pub issuer: Vec<u8>,
}

/// The facts of a PEM CRL, or None if it is not one (or has no next update).
pub fn read_crl(pem: &str) -> Option<CrlFacts> {
    use rustls::pki_types::CertificateRevocationListDer;
    let der = CertificateRevocationListDer::from_pem_slice(pem.as_bytes()).ok()?;
    let (_, crl) = x509_parser::parse_x509_crl(&der).ok()?;
    let time = |t: x509_parser::time::ASN1Time| jiff::Timestamp::from_second(t.timestamp()).ok();
    Some(CrlFacts {
        number: crl
            .crl_number()
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0),
        this_update: time(crl.last_update())?,
        next_update: time(crl.next_update()?)?,
        serials: crl
            .iter_revoked_certificates()
            .map(|r| super::authority::normalise_serial(&hex::encode(r.raw_serial())))
            .collect(),
        issuer: crl.issuer().as_raw().to_vec(),
    })
}
