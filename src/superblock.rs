//! Superblock: the one plaintext object of a volume, and its key slots.
//!
//! It names the format version, volume id, chunk size and cipher, and holds
//! key slots that each wrap the volume master key under a key derived from a
//! key file (HKDF) or a passphrase (Argon2id), or through AWS KMS (the KMS
//! round trip lives in `kms.rs`; this module stays I/O-free). A trailing HMAC under a subkey
//! of the master key makes any edit of the header or the slots detectable
//! once a slot has been opened. Byte layout: FORMAT.md, "Superblock".

use crate::crypto::{self, CryptoError, KEY_LEN, SEAL_OVERHEAD, SecretKey};
use crate::keyring::{Keyring, VOLUME_ID_LEN, VolumeId};
use zeroize::Zeroizing;

pub const MAGIC: &[u8; 8] = b"S3VAULT\0";
/// The format new volumes get, and the only one this release mounts:
/// format 3 packs sealed chunks into data objects, where formats 1 and 2
/// stored one block per object.
pub const FORMAT_VERSION: u16 = 3;
/// Format 3 plus where the metadata lives: a volume whose metadata is in
/// a shared database. Embedded volumes keep format 3, so releases that
/// predate shared metadata still mount them, and refuse the others.
pub const SHARED_FORMAT_VERSION: u16 = 4;
pub const CIPHER_AES_256_GCM: u8 = 1;
pub const MIN_CHUNK_SIZE: u32 = 4 * 1024;
pub const MAX_CHUNK_SIZE: u32 = 1024 * 1024;
/// The chunk size of new volumes, by measurement (BENCHMARKS.md): a random
/// 4 KiB write re-seals 16 KiB instead of 64 (2.4 times the IOPS) and a
/// random read opens 16 KiB, for four times the metadata rows per byte.
pub const DEFAULT_CHUNK_SIZE: u32 = 16 * 1024;
pub const MAX_SLOTS: usize = 16;

const HEADER_LEN: usize = 8 + 2 + VOLUME_ID_LEN + 4 + 1 + 8 + 8 + 1;
const SLOT_PARAMS_LEN: usize = 1 + 1 + 8 + 4 + 4 + 4 + 16;
const SEALED_KEY_LEN: usize = KEY_LEN + SEAL_OVERHEAD;
/// KMS ciphertext blobs are about 200 bytes; allow generous room.
const MAX_WRAPPED_LEN: usize = 4096;
const MAX_KMS_KEY_ID_LEN: usize = 2048;
const MAC_LEN: usize = 32;
const SLOT_AAD: &[u8] = b"s3vault v1 key slot";
const KEY_FILE_SLOT: &[u8] = b"s3vault v1 key-file slot";
const METADATA_AAD: &[u8] = b"s3vault v1 metadata location";
/// Metadata kinds of format 4.
const METADATA_POSTGRES: u8 = 1;
/// A connection string's sealed length at most.
const MAX_LOCATION_LEN: usize = 4096;

/// Argon2id cost for new passphrase slots: 64 MiB, 3 passes, 1 lane
/// (OWASP's 2023 baseline is 19 MiB/2 passes; a mount is rare, so spend more).
pub const DEFAULT_ARGON2: Argon2Params = Argon2Params {
    m_kib: 64 * 1024,
    t: 3,
    p: 1,
};

/// The costliest Argon2id a key slot may ask for. The parameters are read
/// from the superblock before its MAC can be checked (the MAC key comes
/// from the master key the slot unwraps), so whoever can write the bucket
/// chooses them: unbounded, m = 2^32 KiB would abort the process on a
/// 4 TiB allocation and t = 2^32 would run for ever.
pub const MAX_ARGON2: Argon2Params = Argon2Params {
    m_kib: 4 << 20,
    t: 100,
    p: 64,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Argon2Params {
    pub m_kib: u32,
    pub t: u32,
    pub p: u32,
}

/// What the user unlocks a volume with.
pub enum Unlock {
    KeyFile(SecretKey),
    Passphrase(Zeroizing<Vec<u8>>),
    /// The volume's AWS KMS slots, with the caller's AWS credentials.
    Kms,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotKind {
    KeyFile = 1,
    Passphrase = 2,
    Kms = 3,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySlot {
    pub kind: SlotKind,
    pub created: u64,
    pub argon2: Argon2Params,
    pub salt: [u8; 16],
    /// The KMS key (id, ARN or alias) of a KMS slot; empty otherwise.
    pub kms_key_id: String,
    /// The sealed master key, or for KMS slots the KMS ciphertext blob.
    pub wrapped: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// The format version it was written in (3).
    pub format: u16,
    pub volume_id: VolumeId,
    pub chunk_size: u32,
    pub created: u64,
    /// Bumped by every key change: a host that has seen
    /// revision r refuses a superblock older than r (a revoked slot put
    /// back).
    pub revision: u64,
    pub slots: Vec<KeySlot>,
    /// Format 4: the sealed connection string of the PostgreSQL database
    /// holding the metadata (`metadata_location` opens it).
    shared_metadata: Option<Vec<u8>>,
    mac: [u8; MAC_LEN],
}

#[derive(Debug, thiserror::Error)]
pub enum SuperblockError {
    #[error("not an s3vault superblock (bad magic)")]
    BadMagic,
    #[error(
        "unsupported volume format version {0} (this s3vault reads version {FORMAT_VERSION}; a newer s3vault made this volume)"
    )]
    UnsupportedVersion(u16),
    #[error(
        "volume format {0} stores one block per object, a layout this s3vault no longer reads (it reads format \
         {FORMAT_VERSION}); copy the files out with the s3vault that made it"
    )]
    OldFormat(u16),
    #[error("unsupported cipher id {0}")]
    UnsupportedCipher(u8),
    #[error("superblock is truncated or malformed")]
    Malformed,
    #[error("chunk size {0} is outside 4 KiB..1 MiB or not a power of two")]
    BadChunkSize(u32),
    #[error("wrong key: no key slot of this volume opens with the given {0}")]
    WrongKey(&'static str),
    #[error("superblock was modified: its MAC does not verify")]
    Tampered,
    #[error("a volume has at most {MAX_SLOTS} key slots; remove one first")]
    SlotLimit,
    #[error("refusing to remove the last key slot: the volume could never be unlocked again")]
    LastSlot,
    #[error("no such key slot")]
    NoSuchSlot,
    #[error("invalid Argon2 parameters: {0}")]
    Argon2(String),
    #[error(
        "a passphrase slot asks for Argon2id m={} KiB, t={}, p={}, beyond the limit (m <= {} KiB, t <= {}, p <= {}): \
         the superblock was altered or is damaged", .0.m_kib, .0.t, .0.p, MAX_ARGON2.m_kib, MAX_ARGON2.t, MAX_ARGON2.p
    )]
    Argon2TooCostly(Argon2Params),
}

pub fn check_chunk_size(chunk_size: u32) -> Result<(), SuperblockError> {
    if (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) && chunk_size.is_power_of_two() {
        Ok(())
    } else {
        Err(SuperblockError::BadChunkSize(chunk_size))
    }
}

impl Unlock {
    fn kind(&self) -> SlotKind {
        match self {
            Unlock::KeyFile(_) => SlotKind::KeyFile,
            Unlock::Passphrase(_) => SlotKind::Passphrase,
            Unlock::Kms => SlotKind::Kms,
        }
    }

    pub fn describe(&self) -> &'static str {
        match self {
            Unlock::KeyFile(_) => "key file",
            Unlock::Passphrase(_) => "passphrase",
            Unlock::Kms => "AWS KMS key",
        }
    }

    /// The key-encryption key for a slot with this salt and cost.
    fn slot_key(&self, salt: &[u8; 16], cost: Argon2Params) -> Result<SecretKey, SuperblockError> {
        match self {
            Unlock::KeyFile(key) => Ok(key.derive(salt, &[KEY_FILE_SLOT])),
            Unlock::Passphrase(pass) => {
                if cost.m_kib > MAX_ARGON2.m_kib || cost.t > MAX_ARGON2.t || cost.p > MAX_ARGON2.p {
                    return Err(SuperblockError::Argon2TooCostly(cost));
                }
                let params = argon2::Params::new(cost.m_kib, cost.t, cost.p, Some(KEY_LEN))
                    .map_err(|e| SuperblockError::Argon2(e.to_string()))?;
                let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
                let mut out = Zeroizing::new([0u8; KEY_LEN]);
                argon
                    .hash_password_into(pass, salt, out.as_mut())
                    .map_err(|e| SuperblockError::Argon2(e.to_string()))?;
                Ok(SecretKey::from_bytes(&out))
            }
            Unlock::Kms => Err(SuperblockError::Malformed),
        }
    }
}

impl KeySlot {
    /// A short, stable name for the slot (from its random salt).
    pub fn id(&self) -> String {
        hex::encode(&self.salt[..4])
    }

    fn params_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(SLOT_PARAMS_LEN);
        b.push(self.kind as u8);
        b.push(0);
        b.extend_from_slice(&self.created.to_be_bytes());
        b.extend_from_slice(&self.argon2.m_kib.to_be_bytes());
        b.extend_from_slice(&self.argon2.t.to_be_bytes());
        b.extend_from_slice(&self.argon2.p.to_be_bytes());
        b.extend_from_slice(&self.salt);
        b
    }

    fn aad(&self, volume_id: &VolumeId) -> Vec<u8> {
        [SLOT_AAD, volume_id.as_slice(), &self.params_bytes()].concat()
    }

    fn new(
        unlock: &Unlock,
        master: &SecretKey,
        volume_id: &VolumeId,
        cost: Argon2Params,
        now: u64,
    ) -> Result<Self, SuperblockError> {
        let argon2 = match unlock {
            Unlock::Passphrase(_) => cost,
            Unlock::KeyFile(_) | Unlock::Kms => Argon2Params { m_kib: 0, t: 0, p: 0 },
        };
        let mut slot = KeySlot {
            kind: unlock.kind(),
            created: now,
            argon2,
            salt: crypto::random_bytes(),
            kms_key_id: String::new(),
            wrapped: Vec::new(),
        };
        let kek = unlock.slot_key(&slot.salt, argon2)?;
        slot.wrapped = crypto::seal(&kek, &slot.aad(volume_id), master.as_bytes());
        Ok(slot)
    }

    fn try_unwrap(&self, unlock: &Unlock, volume_id: &VolumeId) -> Result<Option<SecretKey>, SuperblockError> {
        if self.kind != unlock.kind() || self.kind == SlotKind::Kms {
            return Ok(None);
        }
        let kek = unlock.slot_key(&self.salt, self.argon2)?;
        match crypto::open(&kek, &self.aad(volume_id), &self.wrapped) {
            Ok(raw) => {
                let raw = Zeroizing::new(raw);
                let bytes: &[u8; KEY_LEN] = raw.as_slice().try_into().map_err(|_| SuperblockError::Malformed)?;
                Ok(Some(SecretKey::from_bytes(bytes)))
            }
            Err(CryptoError::Authentication) => Ok(None),
        }
    }
}

impl Superblock {
    /// A new volume: a fresh master key and id, one slot for `unlock`.
    pub fn create(
        chunk_size: u32,
        unlock: &Unlock,
        cost: Argon2Params,
        now: u64,
    ) -> Result<(Superblock, SecretKey), SuperblockError> {
        check_chunk_size(chunk_size)?;
        let master = SecretKey::random();
        let volume_id: VolumeId = crypto::random_bytes();
        let slot = KeySlot::new(unlock, &master, &volume_id, cost, now)?;
        let mut sb = Superblock {
            format: FORMAT_VERSION,
            volume_id,
            chunk_size,
            created: now,
            revision: 1,
            slots: vec![slot],
            shared_metadata: None,
            mac: [0; MAC_LEN],
        };
        sb.mac = sb.compute_mac(&Keyring::new(&master, volume_id));
        Ok((sb, master))
    }

    /// Finds a slot that `unlock` opens, then verifies the whole superblock.
    pub fn unlock(&self, unlock: &Unlock) -> Result<SecretKey, SuperblockError> {
        self.unlock_slot(unlock).map(|(_, master)| master)
    }

    /// Like [`Superblock::unlock`], also telling which slot opened.
    pub fn unlock_slot(&self, unlock: &Unlock) -> Result<(usize, SecretKey), SuperblockError> {
        for (index, slot) in self.slots.iter().enumerate() {
            if let Some(master) = slot.try_unwrap(unlock, &self.volume_id)? {
                let ring = Keyring::new(&master, self.volume_id);
                if !crypto::mac_eq(&self.compute_mac(&ring), &self.mac) {
                    return Err(SuperblockError::Tampered);
                }
                return Ok((index, master));
            }
        }
        Err(SuperblockError::WrongKey(unlock.describe()))
    }

    /// Adds a slot wrapping `master` for `unlock`.
    pub fn add_slot(
        &mut self,
        master: &SecretKey,
        unlock: &Unlock,
        cost: Argon2Params,
        now: u64,
    ) -> Result<(), SuperblockError> {
        if self.slots.len() >= MAX_SLOTS {
            return Err(SuperblockError::SlotLimit);
        }
        self.slots
            .push(KeySlot::new(unlock, master, &self.volume_id, cost, now)?);
        self.revise(master);
        Ok(())
    }

    /// Adds a slot whose master key KMS wrapped (`blob`, from KMS Encrypt).
    pub fn add_kms_slot(
        &mut self,
        master: &SecretKey,
        key_id: &str,
        blob: Vec<u8>,
        now: u64,
    ) -> Result<(), SuperblockError> {
        if self.slots.len() >= MAX_SLOTS {
            return Err(SuperblockError::SlotLimit);
        }
        if key_id.is_empty() || key_id.len() > MAX_KMS_KEY_ID_LEN || blob.is_empty() || blob.len() > MAX_WRAPPED_LEN {
            return Err(SuperblockError::Malformed);
        }
        self.slots.push(KeySlot {
            kind: SlotKind::Kms,
            created: now,
            argon2: Argon2Params { m_kib: 0, t: 0, p: 0 },
            salt: crypto::random_bytes(),
            kms_key_id: key_id.to_string(),
            wrapped: blob,
        });
        self.revise(master);
        Ok(())
    }

    /// Checks a master key obtained outside this module (from KMS) against
    /// the superblock's MAC.
    pub fn verify(&self, master: &SecretKey) -> Result<(), SuperblockError> {
        let ring = Keyring::new(master, self.volume_id);
        if crypto::mac_eq(&self.compute_mac(&ring), &self.mac) {
            Ok(())
        } else {
            Err(SuperblockError::Tampered)
        }
    }

    /// Removes slot `index`; the last slot is never removed.
    pub fn remove_slot(&mut self, master: &SecretKey, index: usize) -> Result<KeySlot, SuperblockError> {
        if self.slots.len() <= 1 {
            return Err(SuperblockError::LastSlot);
        }
        if index >= self.slots.len() {
            return Err(SuperblockError::NoSuchSlot);
        }
        let removed = self.slots.remove(index);
        self.revise(master);
        Ok(removed)
    }

    /// Makes a new volume's metadata live in the PostgreSQL database
    /// `conninfo` names (format 4). Sealed under the master key: it holds
    /// the database password.
    pub fn set_shared_metadata(&mut self, master: &SecretKey, conninfo: &str) -> Result<(), SuperblockError> {
        let ring = Keyring::new(master, self.volume_id);
        let sealed = crypto::seal(&ring.metadata_location_key(), &self.location_aad(), conninfo.as_bytes());
        if sealed.len() > MAX_LOCATION_LEN {
            return Err(SuperblockError::Malformed);
        }
        self.format = SHARED_FORMAT_VERSION;
        self.shared_metadata = Some(sealed);
        self.mac = self.compute_mac(&ring);
        Ok(())
    }

    /// Whether the metadata is in a shared database (and not in the bucket).
    pub fn has_shared_metadata(&self) -> bool {
        self.shared_metadata.is_some()
    }

    /// The connection string of the shared metadata database, if the
    /// volume has one.
    pub fn metadata_location(&self, ring: &Keyring) -> Result<Option<Zeroizing<String>>, SuperblockError> {
        let Some(sealed) = &self.shared_metadata else {
            return Ok(None);
        };
        let plain = Zeroizing::new(
            crypto::open(&ring.metadata_location_key(), &self.location_aad(), sealed)
                .map_err(|_| SuperblockError::Tampered)?,
        );
        let text = std::str::from_utf8(&plain).map_err(|_| SuperblockError::Malformed)?;
        Ok(Some(Zeroizing::new(text.to_string())))
    }

    fn location_aad(&self) -> Vec<u8> {
        [METADATA_AAD, &self.volume_id[..]].concat()
    }

    /// After a key change: the next revision, a new MAC.
    fn revise(&mut self, master: &SecretKey) {
        self.revision += 1;
        self.mac = self.compute_mac(&Keyring::new(master, self.volume_id));
    }

    fn body(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_LEN + self.slots.len() * (SLOT_PARAMS_LEN + 4 + SEALED_KEY_LEN));
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&self.format.to_be_bytes());
        b.extend_from_slice(&self.volume_id);
        b.extend_from_slice(&self.chunk_size.to_be_bytes());
        b.push(CIPHER_AES_256_GCM);
        b.extend_from_slice(&self.created.to_be_bytes());
        b.extend_from_slice(&self.revision.to_be_bytes());
        b.push(self.slots.len() as u8);
        for slot in &self.slots {
            b.extend_from_slice(&slot.params_bytes());
            b.extend_from_slice(&(slot.kms_key_id.len() as u16).to_be_bytes());
            b.extend_from_slice(slot.kms_key_id.as_bytes());
            b.extend_from_slice(&(slot.wrapped.len() as u16).to_be_bytes());
            b.extend_from_slice(&slot.wrapped);
        }
        if let Some(sealed) = &self.shared_metadata {
            b.push(METADATA_POSTGRES);
            b.extend_from_slice(&(sealed.len() as u16).to_be_bytes());
            b.extend_from_slice(sealed);
        }
        b
    }

    fn compute_mac(&self, ring: &Keyring) -> [u8; MAC_LEN] {
        crypto::hmac(ring.superblock_key(), &[&self.body()])
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = self.body();
        b.extend_from_slice(&self.mac);
        b
    }

    pub fn decode(bytes: &[u8]) -> Result<Superblock, SuperblockError> {
        let mut r = Reader(bytes);
        if r.take(8)? != MAGIC {
            return Err(SuperblockError::BadMagic);
        }
        let format = r.u16()?;
        if format < FORMAT_VERSION {
            return Err(SuperblockError::OldFormat(format));
        }
        if format > SHARED_FORMAT_VERSION {
            return Err(SuperblockError::UnsupportedVersion(format));
        }
        let volume_id: VolumeId = r
            .take(VOLUME_ID_LEN)?
            .try_into()
            .map_err(|_| SuperblockError::Malformed)?;
        let chunk_size = r.u32()?;
        check_chunk_size(chunk_size)?;
        let cipher = r.u8()?;
        if cipher != CIPHER_AES_256_GCM {
            return Err(SuperblockError::UnsupportedCipher(cipher));
        }
        let created = r.u64()?;
        let revision = r.u64()?;
        let count = r.u8()? as usize;
        if count == 0 || count > MAX_SLOTS {
            return Err(SuperblockError::Malformed);
        }
        let mut slots = Vec::with_capacity(count);
        for _ in 0..count {
            let kind = match r.u8()? {
                1 => SlotKind::KeyFile,
                2 => SlotKind::Passphrase,
                3 => SlotKind::Kms,
                _ => return Err(SuperblockError::Malformed),
            };
            r.u8()?;
            let created = r.u64()?;
            let argon2 = Argon2Params {
                m_kib: r.u32()?,
                t: r.u32()?,
                p: r.u32()?,
            };
            let salt = r.take(16)?.try_into().map_err(|_| SuperblockError::Malformed)?;
            let id_len = r.u16()? as usize;
            let kms_key_id = String::from_utf8(r.take(id_len)?.to_vec()).map_err(|_| SuperblockError::Malformed)?;
            let wrapped_len = r.u16()? as usize;
            let expected = match kind {
                SlotKind::Kms => (1..=MAX_WRAPPED_LEN).contains(&wrapped_len) && !kms_key_id.is_empty(),
                _ => wrapped_len == SEALED_KEY_LEN && kms_key_id.is_empty(),
            };
            if !expected {
                return Err(SuperblockError::Malformed);
            }
            let wrapped = r.take(wrapped_len)?.to_vec();
            slots.push(KeySlot {
                kind,
                created,
                argon2,
                salt,
                kms_key_id,
                wrapped,
            });
        }
        let shared_metadata = if format == SHARED_FORMAT_VERSION {
            if r.u8()? != METADATA_POSTGRES {
                return Err(SuperblockError::Malformed);
            }
            let len = r.u16()? as usize;
            if !(SEAL_OVERHEAD..=MAX_LOCATION_LEN).contains(&len) {
                return Err(SuperblockError::Malformed);
            }
            Some(r.take(len)?.to_vec())
        } else {
            None
        };
        let mac = r.take(MAC_LEN)?.try_into().map_err(|_| SuperblockError::Malformed)?;
        if !r.0.is_empty() {
            return Err(SuperblockError::Malformed);
        }
        Ok(Superblock {
            format,
            volume_id,
            chunk_size,
            created,
            revision,
            slots,
            shared_metadata,
            mac,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SuperblockError> {
        if self.0.len() < n {
            return Err(SuperblockError::Malformed);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, SuperblockError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, SuperblockError> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().unwrap_or_default()))
    }
    fn u32(&mut self) -> Result<u32, SuperblockError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().unwrap_or_default()))
    }
    fn u64(&mut self) -> Result<u64, SuperblockError> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().unwrap_or_default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cheap Argon2 cost so the tests stay fast; the format is the same.
    const TEST_COST: Argon2Params = Argon2Params { m_kib: 64, t: 1, p: 1 };

    fn passphrase(p: &str) -> Unlock {
        Unlock::Passphrase(Zeroizing::new(p.as_bytes().to_vec()))
    }

    #[test]
    fn key_file_volume_round_trips_and_unlocks() {
        let key = SecretKey::random();
        let (sb, master) = Superblock::create(1 << 20, &Unlock::KeyFile(key.clone()), TEST_COST, 42).unwrap();
        let decoded = Superblock::decode(&sb.encode()).unwrap();
        assert_eq!(decoded, sb);
        let got = decoded.unlock(&Unlock::KeyFile(key)).unwrap();
        assert_eq!(got.as_bytes(), master.as_bytes());
    }

    #[test]
    fn argon2_costs_from_the_bucket_are_bounded_before_any_derivation() {
        let (sb, _) = Superblock::create(1 << 16, &passphrase("right"), TEST_COST, 1).unwrap();
        for cost in [
            Argon2Params {
                m_kib: u32::MAX,
                t: 1,
                p: 1,
            },
            Argon2Params {
                m_kib: 64,
                t: u32::MAX,
                p: 1,
            },
            Argon2Params {
                m_kib: 64,
                t: 1,
                p: 1000,
            },
        ] {
            let mut altered = sb.clone();
            altered.slots[0].argon2 = cost;
            let decoded = Superblock::decode(&altered.encode()).unwrap();
            let started = std::time::Instant::now();
            let e = decoded.unlock(&passphrase("right")).unwrap_err();
            assert!(matches!(e, SuperblockError::Argon2TooCostly(c) if c == cost), "{e}");
            assert!(started.elapsed() < std::time::Duration::from_secs(1));
        }
    }

    #[test]
    fn wrong_key_or_passphrase_is_refused() {
        let (sb, _) = Superblock::create(1 << 16, &passphrase("right"), TEST_COST, 1).unwrap();
        assert!(sb.unlock(&passphrase("right")).is_ok());
        assert!(matches!(
            sb.unlock(&passphrase("wrong")),
            Err(SuperblockError::WrongKey("passphrase"))
        ));
        assert!(matches!(
            sb.unlock(&Unlock::KeyFile(SecretKey::random())),
            Err(SuperblockError::WrongKey("key file"))
        ));
    }

    #[test]
    fn edited_header_is_detected() {
        let key = SecretKey::random();
        let (sb, _) = Superblock::create(1 << 20, &Unlock::KeyFile(key.clone()), TEST_COST, 1).unwrap();
        let mut bytes = sb.encode();
        // Change the chunk size from 1 MiB to 512 KiB: still valid, but not ours.
        bytes[8 + 2 + 16 + 1] = 0x08;
        let edited = Superblock::decode(&bytes).unwrap();
        assert!(matches!(
            edited.unlock(&Unlock::KeyFile(key)),
            Err(SuperblockError::Tampered)
        ));
    }

    #[test]
    fn a_shared_volume_names_its_database_sealed_and_under_the_mac() {
        let key = Unlock::KeyFile(SecretKey::random());
        let (mut sb, master) = Superblock::create(1 << 14, &key, TEST_COST, 1).unwrap();
        assert_eq!(sb.encode()[9], 3);
        let conninfo = "host=db.example user=vault password=hunter2 dbname=meta";
        sb.set_shared_metadata(&master, conninfo).unwrap();
        let bytes = sb.encode();
        assert_eq!(bytes[9], 4);
        assert!(!bytes.windows(7).any(|w| w == b"hunter2"));
        let read = Superblock::decode(&bytes).unwrap();
        assert_eq!(read, sb);
        let ring = Keyring::new(&read.unlock(&key).unwrap(), read.volume_id);
        assert_eq!(read.metadata_location(&ring).unwrap().unwrap().as_str(), conninfo);
        assert!(read.has_shared_metadata());
        // Another volume's key does not open it; an edit breaks the MAC.
        let other = Keyring::new(&SecretKey::random(), read.volume_id);
        assert!(read.metadata_location(&other).is_err());
        let mut edited = bytes.clone();
        let at = edited.len() - 40;
        edited[at] ^= 1;
        assert!(matches!(
            Superblock::decode(&edited).unwrap().unlock(&key),
            Err(SuperblockError::Tampered)
        ));
        for len in 0..bytes.len() {
            assert!(Superblock::decode(&bytes[..len]).is_err());
        }
        // An embedded volume has none.
        let (plain, master) = Superblock::create(1 << 14, &key, TEST_COST, 1).unwrap();
        let ring = Keyring::new(&master, plain.volume_id);
        assert!(plain.metadata_location(&ring).unwrap().is_none());
    }

    #[test]
    fn malformed_input_is_rejected_not_panicking() {
        let (sb, _) = Superblock::create(1 << 20, &Unlock::KeyFile(SecretKey::random()), TEST_COST, 1).unwrap();
        let bytes = sb.encode();
        for len in 0..bytes.len() {
            assert!(Superblock::decode(&bytes[..len]).is_err());
        }
        let mut v5 = bytes.clone();
        v5[9] = 5;
        assert!(matches!(
            Superblock::decode(&v5),
            Err(SuperblockError::UnsupportedVersion(5))
        ));
        // Format 4 without the metadata location it must have.
        let mut v4 = bytes.clone();
        v4[9] = 4;
        assert!(Superblock::decode(&v4).is_err());
        let mut v2 = bytes.clone();
        v2[9] = 2;
        assert!(matches!(Superblock::decode(&v2), Err(SuperblockError::OldFormat(2))));
    }

    #[test]
    fn every_key_change_bumps_the_revision() {
        let key = SecretKey::random();
        let (mut sb, master) = Superblock::create(1 << 20, &Unlock::KeyFile(key.clone()), TEST_COST, 1).unwrap();
        assert_eq!((sb.format, sb.revision), (3, 1));
        sb.add_slot(&master, &passphrase("second"), TEST_COST, 2).unwrap();
        sb.remove_slot(&master, 1).unwrap();
        let read = Superblock::decode(&sb.encode()).unwrap();
        assert_eq!(read.revision, 3);
        read.verify(&master).unwrap();
    }

    #[test]
    fn slots_are_added_and_removed_but_never_the_last() {
        let key = SecretKey::random();
        let (mut sb, master) = Superblock::create(1 << 20, &Unlock::KeyFile(key.clone()), TEST_COST, 1).unwrap();
        sb.add_slot(&master, &passphrase("second"), TEST_COST, 2).unwrap();
        let sb2 = Superblock::decode(&sb.encode()).unwrap();
        assert_eq!(sb2.unlock_slot(&passphrase("second")).unwrap().0, 1);
        assert_eq!(sb2.unlock_slot(&Unlock::KeyFile(key.clone())).unwrap().0, 0);
        sb.remove_slot(&master, 0).unwrap();
        let sb3 = Superblock::decode(&sb.encode()).unwrap();
        assert!(matches!(
            sb3.unlock(&Unlock::KeyFile(key)),
            Err(SuperblockError::WrongKey(_))
        ));
        assert_eq!(sb3.unlock(&passphrase("second")).unwrap().as_bytes(), master.as_bytes());
        assert!(matches!(sb.remove_slot(&master, 0), Err(SuperblockError::LastSlot)));
    }

    #[test]
    fn kms_slots_round_trip_and_are_verified_by_mac() {
        let key = SecretKey::random();
        let (mut sb, master) = Superblock::create(1 << 20, &Unlock::KeyFile(key), TEST_COST, 1).unwrap();
        sb.add_kms_slot(&master, "arn:aws:kms:us-east-1:123:key/abc", vec![7; 180], 2)
            .unwrap();
        let decoded = Superblock::decode(&sb.encode()).unwrap();
        assert_eq!(decoded, sb);
        assert_eq!(decoded.slots[1].kms_key_id, "arn:aws:kms:us-east-1:123:key/abc");
        assert!(decoded.verify(&master).is_ok());
        assert!(matches!(
            decoded.verify(&SecretKey::random()),
            Err(SuperblockError::Tampered)
        ));
        assert!(matches!(
            decoded.unlock(&Unlock::Kms),
            Err(SuperblockError::WrongKey(_))
        ));
    }

    #[test]
    fn chunk_size_limits() {
        assert!(check_chunk_size(4 * 1024).is_ok());
        assert!(check_chunk_size(64 * 1024).is_ok());
        assert!(check_chunk_size(1 << 20).is_ok());
        assert!(check_chunk_size(2 * 1024).is_err());
        assert!(check_chunk_size(2 << 20).is_err());
        assert!(check_chunk_size(100_000).is_err());
    }
}
