//! Keystores for Java and Windows tooling: PKCS#12 (`keystore.p12`), and JKS keystore and
//! truststore (`keystore.jks`, `truststore.jks`), the layout cert-manager writes and BMC AMI
//! Cloud asks for. Aliases follow cert-manager: `certificate` for the key entry, `ca` for the
//! trusted CA.
//!
//! JKS is Sun's format: entries, then a SHA-1 over the password (UTF-16BE), the words
//! "Mighty Aphrodite" and everything before; private keys are wrapped with Sun's key
//! protector (a SHA-1 keystream). It is weak by today's standards, which is why PKCS#12 is
//! offered too, but it is what older Java agents read. Checked against `keytool` in tests.

use p12_keystore::{KeyStore, KeyStoreEntry, PrivateKey, PrivateKeyChain};
use sha1::{Digest, Sha1};

use super::PkiError;

/// Alias of the private key entry.
pub const KEY_ALIAS: &str = "certificate";
/// Alias of the trusted CA entry.
pub const CA_ALIAS: &str = "ca";

/// JKS magic number and version 2.
const JKS_MAGIC: u32 = 0xFEED_FEED;
const JKS_VERSION: u32 = 2;
const JKS_PRIVATE_KEY: u32 = 1;
const JKS_TRUSTED_CERT: u32 = 2;
/// DER of OID 1.3.6.1.4.1.42.2.17.1.1, Sun's JKS key protector.
const KEY_PROTECTOR_OID: [u8; 12] = [
    0x06, 0x0a, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x2a, 0x02, 0x11, 0x01, 0x01,
];

/// A PKCS#12 file with the key and its chain (leaf first, root last), encrypted with
/// `password` (PBES2 with AES-256 and an HMAC-SHA256 MAC, which OpenSSL 3 and Java 11+ read).
pub fn pkcs12(key_pkcs8: &[u8], chain: &[Vec<u8>], password: &str) -> Result<Vec<u8>, PkiError> {
    let key = PrivateKey::from_der(key_pkcs8).map_err(|e| PkiError::Key(e.to_string()))?;
    let certificates = chain
        .iter()
        .map(|der| p12_keystore::Certificate::from_der(der))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Certificate(e.to_string()))?;
    let key_id = chain
        .first()
        .map(|leaf| Sha1::digest(leaf).to_vec())
        .unwrap_or_default();
    let mut store = KeyStore::new();
    store.add_entry(
        KEY_ALIAS,
        KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(key_id, key, certificates)),
    );
    store
        .writer(password)
        .write()
        .map_err(|e| PkiError::Certificate(format!("failed to write PKCS#12: {e}")))
}

/// Whether `data` is a PKCS#12 file that opens with `password` and holds `leaf`.
pub fn pkcs12_holds(data: &[u8], password: &str, leaf: &[u8]) -> bool {
    KeyStore::from_pkcs12(data, password, p12_keystore::Pkcs12ImportPolicy::Relaxed)
        .ok()
        .and_then(|store| {
            store
                .private_key_chain()
                .map(|(_, chain)| chain.certs().first().is_some_and(|c| c.as_der() == leaf))
        })
        .unwrap_or(false)
}

/// A JKS keystore with one private key entry: the key and its chain.
pub fn jks_keystore(
    key_pkcs8: &[u8],
    chain: &[Vec<u8>],
    password: &str,
    created_ms: u64,
    salt: [u8; 20],
) -> Vec<u8> {
    let mut out = jks_header(1);
    put_u32(&mut out, JKS_PRIVATE_KEY);
    put_utf(&mut out, KEY_ALIAS);
    out.extend_from_slice(&created_ms.to_be_bytes());
    let protected = protect_key(key_pkcs8, password, salt);
    put_u32(&mut out, len_u32(protected.len()));
    out.extend_from_slice(&protected);
    put_u32(&mut out, len_u32(chain.len()));
    for certificate in chain {
        put_certificate(&mut out, certificate);
    }
    seal(out, password)
}

/// A JKS truststore with one trusted certificate: the CA.
pub fn jks_truststore(ca: &[u8], password: &str, created_ms: u64) -> Vec<u8> {
    let mut out = jks_header(1);
    put_u32(&mut out, JKS_TRUSTED_CERT);
    put_utf(&mut out, CA_ALIAS);
    out.extend_from_slice(&created_ms.to_be_bytes());
    put_certificate(&mut out, ca);
    seal(out, password)
}

/// Whether `data` is a JKS file whose integrity checks with `password` and that holds
/// `certificate` (as a chain's first certificate or a trusted entry).
pub fn jks_holds(data: &[u8], password: &str, certificate: &[u8]) -> bool {
    if data.len() < 20 + 12 || data[..4] != JKS_MAGIC.to_be_bytes() {
        return false;
    }
    let (body, digest) = data.split_at(data.len() - 20);
    if integrity(body, password).as_slice() != digest {
        return false;
    }
    // The certificate's DER, preceded by its length, appears in the body.
    let mut needle = len_u32(certificate.len()).to_be_bytes().to_vec();
    needle.extend_from_slice(certificate);
    body.windows(needle.len()).any(|w| w == needle.as_slice())
}

fn jks_header(entries: u32) -> Vec<u8> {
    let mut out = Vec::new();
    put_u32(&mut out, JKS_MAGIC);
    put_u32(&mut out, JKS_VERSION);
    put_u32(&mut out, entries);
    out
}

/// Appends the integrity digest.
fn seal(mut body: Vec<u8>, password: &str) -> Vec<u8> {
    let digest = integrity(&body, password);
    body.extend_from_slice(&digest);
    body
}

fn integrity(body: &[u8], password: &str) -> [u8; 20] {
    let mut sha = Sha1::new();
    sha.update(utf16be(password));
    sha.update(b"Mighty Aphrodite");
    sha.update(body);
    sha.finalize().into()
}

/// Sun's key protector: salt, the key XOR a SHA-1 keystream, then SHA-1(password || key),
/// wrapped in an EncryptedPrivateKeyInfo.
fn protect_key(plain: &[u8], password: &str, salt: [u8; 20]) -> Vec<u8> {
    let password = utf16be(password);
    let mut stream = Vec::with_capacity(plain.len() + 20);
    let mut block: [u8; 20] = salt;
    while stream.len() < plain.len() {
        let mut sha = Sha1::new();
        sha.update(&password);
        sha.update(block);
        block = sha.finalize().into();
        stream.extend_from_slice(&block);
    }
    let mut protected = salt.to_vec();
    protected.extend(plain.iter().zip(&stream).map(|(p, k)| p ^ k));
    let mut sha = Sha1::new();
    sha.update(&password);
    sha.update(plain);
    protected.extend_from_slice(&sha.finalize());

    let algorithm = der(0x30, &[&KEY_PROTECTOR_OID[..], &[0x05, 0x00]].concat());
    let octets = der(0x04, &protected);
    der(0x30, &[algorithm, octets].concat())
}

/// One DER element: tag, definite length, content.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

fn put_certificate(out: &mut Vec<u8>, der: &[u8]) {
    put_utf(out, "X.509");
    put_u32(out, len_u32(der.len()));
    out.extend_from_slice(der);
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_be_bytes());
}

/// Java's `writeUTF`: a 2-byte length, then the text (ASCII here, where modified UTF-8 is
/// plain UTF-8).
fn put_utf(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    out.extend_from_slice(&u16::try_from(bytes.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn utf16be(text: &str) -> Vec<u8> {
    text.encode_utf16().flat_map(u16::to_be_bytes).collect()
}

fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths_use_the_long_form_above_127_bytes() {
        assert_eq!(der(0x04, &[1, 2]), vec![0x04, 2, 1, 2]);
        let long = der(0x04, &[0u8; 300]);
        assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2c]);
    }

    #[test]
    fn a_jks_file_checks_only_with_its_password_and_holds_its_certificate() {
        let store = jks_truststore(b"not really DER but bytes", "changeit", 0);
        assert!(jks_holds(&store, "changeit", b"not really DER but bytes"));
        assert!(!jks_holds(&store, "wrong", b"not really DER but bytes"));
        assert!(!jks_holds(&store, "changeit", b"another certificate"));
    }
}
