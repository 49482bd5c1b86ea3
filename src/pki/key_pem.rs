//! Private keys in every PEM form a CA key pair arrives in: PKCS#8 (`PRIVATE KEY`), and the
//! older forms OpenSSL and `kubectl create secret tls` keep as they are, SEC1
//! (`EC PRIVATE KEY`) and PKCS#1 (`RSA PRIVATE KEY`). rcgen with ring reads only PKCS#8, so
//! the other two are re-wrapped into PKCS#8 first.

use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;

use super::PkiError;

/// DER of `id-ecPublicKey` (1.2.840.10045.2.1), the algorithm of every EC key in PKCS#8.
const EC_PUBLIC_KEY_OID: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];

/// The key in `pem` as PKCS#8 DER, whichever of the three forms it is in.
pub fn pkcs8_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    let key = PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| PkiError::Key(format!("no PEM private key found: {e}")))?;
    match key {
        PrivateKeyDer::Pkcs8(key) => Ok(key.secret_pkcs8_der().to_vec()),
        PrivateKeyDer::Pkcs1(key) => {
            use rsa::pkcs1::DecodeRsaPrivateKey;
            use rsa::pkcs8::EncodePrivateKey;
            let private = rsa::PrivateKey::from_pkcs1_der(key.secret_pkcs1_der())
                .map_err(|e| PkiError::Key(format!("not a PKCS#1 RSA key: {e}")))?;
            let der = private
                .to_pkcs8_der()
                .map_err(|e| PkiError::Key(format!("failed to re-encode the RSA key: {e}")))?;
            Ok(der.as_bytes().to_vec())
        }
        PrivateKeyDer::Sec1(key) => sec1_to_pkcs8(key.secret_sec1_der()),
        _ => Err(PkiError::Key("an unknown kind of private key".into())),
    }
}

/// RFC 5915's `ECPrivateKey` wrapped in RFC 5208's `PrivateKeyInfo`, the curve taken from
/// the key's own `parameters` (OpenSSL always writes them).
fn sec1_to_pkcs8(sec1: &[u8]) -> Result<Vec<u8>, PkiError> {
    let malformed = || PkiError::Key("malformed SEC1 EC private key".into());
    // ECPrivateKey ::= SEQUENCE { version, privateKey OCTET STRING, [0] parameters, [1] publicKey }
    let (tag, body, _) = tlv(sec1).ok_or_else(malformed)?;
    if tag != 0x30 {
        return Err(malformed());
    }
    let mut rest = body;
    let mut curve = None;
    while !rest.is_empty() {
        let (tag, content, next) = tlv(rest).ok_or_else(malformed)?;
        if tag == 0xa0 {
            curve = Some(content);
        }
        rest = next;
    }
    let curve = curve.ok_or_else(|| {
        PkiError::Key("the SEC1 EC key does not name its curve (no parameters)".into())
    })?;
    let algorithm = encode(0x30, &[EC_PUBLIC_KEY_OID, curve].concat());
    let version = [0x02, 0x01, 0x00];
    Ok(encode(
        0x30,
        &[&version[..], &algorithm, &encode(0x04, sec1)].concat(),
    ))
}

/// One DER element: its tag, its content, and what follows it. Definite lengths only, as
/// DER requires.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, rest) = rest.split_at(count);
        (
            bytes.iter().fold(0usize, |n, &b| (n << 8) | usize::from(b)),
            rest,
        )
    };
    (rest.len() >= length).then(|| (tag, &rest[..length], &rest[length..]))
}

/// One DER element from its tag and content.
fn encode(tag: u8, content: &[u8]) -> Vec<u8> {
    let length = content.len();
    let mut out = vec![tag];
    if length < 0x80 {
        out.push(length as u8);
    } else {
        let bytes: Vec<u8> = length
            .to_be_bytes()
            .into_iter()
            .skip_while(|&b| b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `openssl ARGS` prints with `input` on its standard input; None without openssl.
    fn openssl(args: &[&str], input: &[u8]) -> Option<String> {
        use std::io::Write;
        let mut child = std::process::Command::new("openssl")
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        child.stdin.take()?.write_all(input).ok()?;
        let out = child.wait_with_output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8(out.stdout).ok())?
    }

    #[test]
    fn sec1_and_pkcs1_keys_read_as_the_pkcs8_openssl_writes() {
        let Some(sec1) = openssl(
            &["ecparam", "-name", "prime256v1", "-genkey", "-noout"],
            b"",
        ) else {
            eprintln!("skipped: no openssl");
            return;
        };
        assert!(sec1.contains("BEGIN EC PRIVATE KEY"), "{sec1}");
        let pkcs8 = openssl(&["pkcs8", "-topk8", "-nocrypt"], sec1.as_bytes()).unwrap();
        // OpenSSL drops the curve from the inner key; ring reads either. The same key pair:
        let from_sec1 = rcgen::KeyPair::try_from(pkcs8_der(&sec1).unwrap().as_slice()).unwrap();
        let from_pkcs8 = rcgen::KeyPair::try_from(pkcs8_der(&pkcs8).unwrap().as_slice()).unwrap();
        assert_eq!(from_sec1.public_key_pem(), from_pkcs8.public_key_pem());
        // What an Issuer of type `ca` loads its key with.
        super::super::authority::load_key(&sec1).unwrap();

        let rsa = openssl(&["genrsa", "-traditional", "2048"], b"")
            .or_else(|| openssl(&["genrsa", "2048"], b""))
            .unwrap();
        let pkcs1 = if rsa.contains("BEGIN RSA PRIVATE KEY") {
            rsa
        } else {
            openssl(&["rsa", "-traditional"], rsa.as_bytes()).unwrap()
        };
        assert!(pkcs1.contains("BEGIN RSA PRIVATE KEY"), "{pkcs1}");
        let key = rcgen::KeyPair::try_from(pkcs8_der(&pkcs1).unwrap().as_slice()).unwrap();
        assert!(key.is_compatible(&rcgen::PKCS_RSA_SHA256));
    }

    #[test]
    fn a_broken_key_is_refused_with_its_reason() {
        let error =
            pkcs8_der("-----BEGIN EC PRIVATE KEY-----\nMAMCAQE=\n-----END EC PRIVATE KEY-----\n")
                .unwrap_err()
                .to_string();
        assert!(error.contains("does not name its curve"), "{error}");
        assert!(pkcs8_der("no key").is_err());
    }
}
