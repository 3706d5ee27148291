//! AES-256-GCM sealing, HKDF-SHA256 derivation and HMAC, with no I/O.
//!
//! Every sealed unit of s3vault goes through [`seal`] and [`open`]; callers
//! pass associated data that names the unit (volume, object, block), so a
//! ciphertext moved to another place fails to open.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

pub const KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
/// Bytes a sealed unit adds to its plaintext: the nonce in front, the tag behind.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("authentication failed: the data was altered, truncated, moved or sealed with another key")]
    Authentication,
}

/// A 256-bit secret key, wiped from memory when dropped.
#[derive(Clone)]
pub struct SecretKey(Zeroizing<[u8; KEY_LEN]>);

impl SecretKey {
    pub fn random() -> Self {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        rand::rngs::OsRng.fill_bytes(key.as_mut());
        SecretKey(key)
    }

    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Self {
        SecretKey(Zeroizing::new(*bytes))
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// HKDF-SHA256 (RFC 5869) of this key under `salt` and a purpose string.
    pub fn derive(&self, salt: &[u8], info: &[&[u8]]) -> SecretKey {
        let hk = Hkdf::<Sha256>::new(Some(salt), self.as_bytes());
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        hk.expand_multi_info(info, out.as_mut())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        SecretKey(out)
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// Fills an array with bytes from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut out);
    out
}

/// Seals `plaintext` as `nonce || ciphertext || tag` with a random nonce.
pub fn seal(key: &SecretKey, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let cipher = Aes256Gcm::new(key.as_bytes().into());
    let nonce: [u8; NONCE_LEN] = random_bytes();
    let ct = cipher
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad })
        .expect("AES-GCM encryption cannot fail for inputs below 64 GiB");
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

/// Opens a unit made by [`seal`] under the same key and associated data.
pub fn open(key: &SecretKey, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < SEAL_OVERHEAD {
        return Err(CryptoError::Authentication);
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    Aes256Gcm::new(key.as_bytes().into())
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
        .map_err(|_| CryptoError::Authentication)
}

/// HMAC-SHA256 over the concatenation of `parts`.
pub fn hmac(key: &SecretKey, parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes()).expect("HMAC accepts keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Compares two MACs in constant time.
pub fn mac_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_unit_opens_with_same_key_and_aad() {
        let key = SecretKey::random();
        let sealed = seal(&key, b"aad", b"hello");
        assert_eq!(sealed.len(), 5 + SEAL_OVERHEAD);
        assert_eq!(open(&key, b"aad", &sealed).unwrap(), b"hello");
    }

    #[test]
    fn any_change_fails_authentication() {
        let key = SecretKey::random();
        let sealed = seal(&key, b"aad", b"hello world");
        assert!(open(&key, b"other", &sealed).is_err());
        assert!(open(&SecretKey::random(), b"aad", &sealed).is_err());
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(open(&key, b"aad", &bad).is_err(), "flip at {i} went unnoticed");
        }
        assert!(open(&key, b"aad", &sealed[..sealed.len() - 1]).is_err());
        assert!(open(&key, b"aad", &sealed[..3]).is_err());
    }

    #[test]
    fn derivation_depends_on_salt_and_purpose() {
        let master = SecretKey::random();
        let a = master.derive(b"vol", &[b"data"]);
        assert_eq!(a.as_bytes(), master.derive(b"vol", &[b"data"]).as_bytes());
        assert_ne!(a.as_bytes(), master.derive(b"vol", &[b"metadata"]).as_bytes());
        assert_ne!(a.as_bytes(), master.derive(b"vol2", &[b"data"]).as_bytes());
    }

    #[test]
    fn mac_eq_is_exact() {
        assert!(mac_eq(b"abc", b"abc"));
        assert!(!mac_eq(b"abc", b"abd"));
        assert!(!mac_eq(b"abc", b"ab"));
    }
}
