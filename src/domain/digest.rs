//! Content digests (`sha256:<64 hex>`), the only stable name of an image.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A validated `sha256:<64 lowercase hex>` digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

/// A string that is not a `sha256:` digest.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("parse digest '{0}': expected 'sha256:' followed by 64 lowercase hex characters")]
pub struct DigestError(pub String);

impl Digest {
    pub fn parse(s: &str) -> Result<Self, DigestError> {
        let hex = s.strip_prefix("sha256:").ok_or_else(|| DigestError(s.to_string()))?;
        if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(Self(s.to_string()))
        } else {
            Err(DigestError(s.to_string()))
        }
    }

    /// The digest of some bytes, as a registry computes it for a manifest.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        use sha2::Digest as _;
        let sum = sha2::Sha256::digest(bytes);
        let mut hex = String::with_capacity(71);
        hex.push_str("sha256:");
        for b in sum {
            hex.push_str(&format!("{b:02x}"));
        }
        Self(hex)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 hex characters, as `docker images` shows them.
    pub fn short(&self) -> &str {
        &self.0[7..19]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Digest {
    type Error = DigestError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Digest> for String {
    fn from(value: Digest) -> Self {
        value.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_full_lowercase_sha256() {
        let good = format!("sha256:{}", "a".repeat(64));
        assert_eq!(Digest::parse(&good).unwrap().short(), "aaaaaaaaaaaa");
        for bad in [
            "sha256:abc",
            "sha512:aaaa",
            &format!("sha256:{}", "A".repeat(64)),
            &"a".repeat(64),
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn digest_of_bytes_matches_sha256sum() {
        // printf 'hello' | sha256sum
        assert_eq!(
            Digest::of_bytes(b"hello").as_str(),
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
    }
}
