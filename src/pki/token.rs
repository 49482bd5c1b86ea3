//! Enrollment tokens: what an operator hands to a new agent so it may ask for its first
//! client certificate.
//!
//! A token reads `tsr_<id>_<secret>`: the id names it in lists and logs, the secret (256
//! random bits) proves possession. Only the secret's SHA-256 is stored (a fast hash is
//! enough for a random secret: there is nothing to guess), and comparison is in constant
//! time. The secret is never printed after creation, and `Debug` hides it.

use base64::Engine;
use sha2::{Digest, Sha256};

const PREFIX: &str = "tsr_";

/// An enrollment token.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// Public name: 12 hex digits.
    pub id: String,
    secret: String,
}

impl Token {
    /// A new random token.
    pub fn generate() -> Self {
        Self {
            id: hex::encode(super::random_bytes::<6>()),
            secret: base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(super::random_bytes::<32>()),
        }
    }

    /// Reads a token as an agent presents it; `None` when it does not have the shape.
    pub fn parse(text: &str) -> Option<Self> {
        let (id, secret) = text.trim().strip_prefix(PREFIX)?.split_once('_')?;
        let well_formed = id.len() == 12
            && id.bytes().all(|b| b.is_ascii_hexdigit())
            && secret.len() == 43
            && secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        well_formed.then(|| Self {
            id: id.to_ascii_lowercase(),
            secret: secret.to_owned(),
        })
    }

    /// The whole token, to give to the agent once.
    pub fn reveal(&self) -> String {
        format!("{PREFIX}{}_{}", self.id, self.secret)
    }

    /// What is stored: the secret's SHA-256, hex.
    pub fn secret_sha256(&self) -> String {
        hex::encode(Sha256::digest(self.secret.as_bytes()))
    }

    /// Whether this token's secret is the one whose hash was stored, in constant time.
    pub fn matches(&self, stored_sha256: &str) -> bool {
        let ours = self.secret_sha256();
        ours.len() == stored_sha256.len()
            && ours
                .bytes()
                .zip(stored_sha256.bytes())
                .fold(0u8, |diff, (a, b)| diff | (a ^ b))
                == 0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({PREFIX}{}_…)", self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_reads_back_and_matches_only_its_own_hash() {
        let token = Token::generate();
        let text = token.reveal();
        assert!(text.starts_with("tsr_"));
        let read = Token::parse(&text).unwrap();
        assert_eq!(read, token);
        assert!(read.matches(&token.secret_sha256()));
        assert!(!read.matches(&Token::generate().secret_sha256()));
        assert!(!read.matches(""));
        assert!(
            !format!("{token:?}").contains(&text[17..]),
            "Debug hides the secret"
        );
    }

    #[test]
    fn malformed_tokens_are_not_read() {
        let text = Token::generate().reveal();
        for bad in [
            "",
            "tsr_",
            &text[..text.len() - 1],
            &text.replace("tsr_", "tok_"),
            &format!("{text}x"),
            "tsr_zzzzzzzzzzzz_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ] {
            assert!(Token::parse(bad).is_none(), "{bad}");
        }
    }
}
