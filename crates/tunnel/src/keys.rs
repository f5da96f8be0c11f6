//! WireGuard keys: generation and the base64 form used by `wg`, gluetun and
//! every provider's config files.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

/// Why a key string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The string is not valid base64.
    #[error("not valid base64: {0}")]
    Base64(String),
    /// The decoded key does not have 32 bytes.
    #[error("a WireGuard key has 32 bytes (44 base64 characters), this one has {0} bytes")]
    Length(usize),
}

fn decode_key(text: &str) -> Result<[u8; 32], KeyError> {
    let bytes = BASE64
        .decode(text.trim())
        .map_err(|e| KeyError::Base64(e.to_string()))?;
    let len = bytes.len();
    bytes.try_into().map_err(|_| KeyError::Length(len))
}

/// A Curve25519 private key. Its `Debug` form never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey([u8; 32]);

impl PrivateKey {
    /// Generates a fresh random private key (clamped as `wg genkey` does).
    pub fn generate() -> Self {
        let mut bytes: [u8; 32] = rand::random();
        bytes[0] &= 248;
        bytes[31] &= 127;
        bytes[31] |= 64;
        PrivateKey(bytes)
    }

    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        PrivateKey(bytes)
    }

    /// Parses the base64 form (`wg genkey` output).
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        decode_key(text).map(PrivateKey)
    }

    /// The base64 form, as `wg genkey` prints it.
    pub fn to_base64(&self) -> String {
        BASE64.encode(self.0)
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The matching public key (`wg pubkey`).
    pub fn public_key(&self) -> PublicKey {
        let secret = boringtun::x25519::StaticSecret::from(self.0);
        PublicKey(boringtun::x25519::PublicKey::from(&secret).to_bytes())
    }

    pub(crate) fn to_static_secret(&self) -> boringtun::x25519::StaticSecret {
        boringtun::x25519::StaticSecret::from(self.0)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

impl FromStr for PrivateKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_base64(s)
    }
}

/// A Curve25519 public key; `Display` and `FromStr` use base64.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        PublicKey(bytes)
    }

    /// Parses the base64 form.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        decode_key(text).map(PublicKey)
    }

    /// The base64 form.
    pub fn to_base64(&self) -> String {
        BASE64.encode(self.0)
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub(crate) fn to_x25519(self) -> boringtun::x25519::PublicKey {
        boringtun::x25519::PublicKey::from(self.0)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_base64(s)
    }
}

/// An optional symmetric pre-shared key (`wg genpsk`). `Debug` redacts it.
#[derive(Clone, PartialEq, Eq)]
pub struct PresharedKey([u8; 32]);

impl PresharedKey {
    /// Generates a random pre-shared key.
    pub fn generate() -> Self {
        PresharedKey(rand::random())
    }

    /// Parses the base64 form.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        decode_key(text).map(PresharedKey)
    }

    /// The base64 form.
    pub fn to_base64(&self) -> String {
        BASE64.encode(self.0)
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresharedKey(<redacted>)")
    }
}

impl FromStr for PresharedKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_base64(s)
    }
}

/// A private key together with its public key, as a lab provider or a test
/// hands them out.
#[derive(Debug, Clone)]
pub struct Keypair {
    /// The secret half.
    pub private: PrivateKey,
    /// The public half, derived from `private`.
    pub public: PublicKey,
}

impl Keypair {
    /// Generates a fresh keypair.
    pub fn generate() -> Self {
        let private = PrivateKey::generate();
        let public = private.public_key();
        Keypair { private, public }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip_and_known_public_key() {
        // RFC 7748 section 6.1 test vector (Alice).
        let private = PrivateKey::from_bytes([
            0x77, 0x07, 0x6d, 0x0a, 0x73, 0x18, 0xa5, 0x7d, 0x3c, 0x16, 0xc1, 0x72, 0x51, 0xb2,
            0x66, 0x45, 0xdf, 0x4c, 0x2f, 0x87, 0xeb, 0xc0, 0x99, 0x2a, 0xb1, 0x77, 0xfb, 0xa5,
            0x1d, 0xb9, 0x2c, 0x2a,
        ]);
        let public = private.public_key();
        assert_eq!(
            public.as_bytes()[..4],
            [0x85, 0x20, 0xf0, 0x09],
            "public key must match RFC 7748"
        );
        let text = private.to_base64();
        assert_eq!(text.len(), 44);
        assert_eq!(PrivateKey::from_base64(&text).unwrap(), private);
        assert_eq!(public.to_string().parse::<PublicKey>().unwrap(), public);
    }

    #[test]
    fn rejects_bad_keys() {
        assert!(matches!(
            PublicKey::from_base64("not base64!"),
            Err(KeyError::Base64(_))
        ));
        assert_eq!(PublicKey::from_base64("AAAA"), Err(KeyError::Length(3)));
    }

    #[test]
    fn generated_keys_differ_and_debug_redacts() {
        let a = Keypair::generate();
        let b = Keypair::generate();
        assert_ne!(a.public, b.public);
        assert!(!format!("{:?}", a.private).contains(&a.private.to_base64()));
        assert_eq!(a.private.public_key(), a.public);
    }
}
