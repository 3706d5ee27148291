//! Sealed layouts: file data chunks (packed into data objects) and the
//! framed metadata objects.
//!
//! File data is sealed in chunks (the volume's chunk size, 16 KiB by
//! default), each its own AES-GCM message. Chunks of many files are packed
//! back to back into data objects ("packs"), so one PUT carries many small
//! files and a random read fetches and opens one chunk with a ranged GET. A
//! chunk's associated data binds it to the volume, its pack, its offset
//! there, its inode and its index in the file, so a chunk swapped, moved
//! within its pack or into another, replayed from an older version of the
//! file, truncated or copied from another volume fails to open (gocryptfs
//! does the same with file id + block number). Each pack has its own key,
//! derived from its id, so nonce limits are never approached. Metadata
//! objects are cut into frames so a large state never needs one huge AEAD
//! call; the last frame is marked in its associated data, so dropping
//! trailing frames is detected too. Byte layouts: FORMAT.md.

use crate::crypto::{self, CryptoError, SecretKey};
use crate::keyring::Keyring;

pub const OBJECT_ID_LEN: usize = 16;
pub type ObjectId = [u8; OBJECT_ID_LEN];

const META_MAGIC: &[u8; 4] = b"S3VM";
const AUDIT_MAGIC: &[u8; 4] = b"S3VA";
const VERSION: u8 = 1;
const META_HEADER_LEN: usize = 4 + 1 + OBJECT_ID_LEN;
const CHUNK_AAD: &[u8] = b"s3vault v3 chunk";
const META_AAD: &[u8] = b"s3vault v1 metadata frame";
const AUDIT_AAD: &[u8] = b"s3vault v1 audit frame";
/// Plaintext bytes per metadata frame.
pub const META_FRAME_LEN: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("object header is not s3vault's (bad magic or version)")]
    BadHeader,
    #[error("object is truncated")]
    Truncated,
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

pub fn new_object_id() -> ObjectId {
    crypto::random_bytes()
}

/// Where a chunk lives and what it is; all of it goes into the associated
/// data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkAddress {
    /// The data object (pack) holding the chunk.
    pub pack: ObjectId,
    /// Where the sealed chunk starts in its pack.
    pub offset: u64,
    pub ino: u64,
    /// The chunk's position in its file (file offset / chunk size).
    pub index: u64,
}

impl ChunkAddress {
    pub(crate) fn aad(&self, ring: &Keyring) -> Vec<u8> {
        [
            CHUNK_AAD,
            ring.volume_id().as_slice(),
            &self.pack,
            &self.offset.to_be_bytes(),
            &self.ino.to_be_bytes(),
            &self.index.to_be_bytes(),
        ]
        .concat()
    }
}

/// The key that seals every chunk of `pack`; derive it once per pack.
pub fn pack_key(ring: &Keyring, pack: &ObjectId) -> SecretKey {
    ring.data_object_key(pack)
}

/// Seals one chunk: `nonce ‖ ciphertext ‖ tag`.
pub fn seal_chunk(ring: &Keyring, key: &SecretKey, addr: &ChunkAddress, plaintext: &[u8]) -> Vec<u8> {
    crypto::seal(key, &addr.aad(ring), plaintext)
}

/// Opens a chunk sealed at `addr` (`sealed` exactly its sealed bytes).
pub fn open_chunk(ring: &Keyring, addr: &ChunkAddress, sealed: &[u8]) -> Result<Vec<u8>, CodecError> {
    if sealed.len() < crypto::SEAL_OVERHEAD {
        return Err(CodecError::Truncated);
    }
    Ok(crypto::open(&pack_key(ring, &addr.pack), &addr.aad(ring), sealed)?)
}

/// The sealed size of a chunk of `len` plaintext bytes.
pub fn sealed_chunk_len(len: usize) -> usize {
    crypto::SEAL_OVERHEAD + len
}

/// A pack's stored length for `len` bytes of sealed chunks: padded to a
/// size class (multiples of 64 KiB up to 1 MiB, then of 1 MiB), so an
/// object's length tells neither a file's size nor how many files it holds.
pub fn padded_pack_len(len: u64) -> u64 {
    let class: u64 = if len <= 1 << 20 { 64 << 10 } else { 1 << 20 };
    len.div_ceil(class).max(1) * class
}

/// The two kinds of framed objects: metadata snapshots and audit segments.
/// Same layout, different magic, subkey and associated-data label, so one
/// can never be passed off as the other.
#[derive(Clone, Copy)]
pub(crate) enum Framed {
    Metadata,
    Audit,
}

impl Framed {
    fn magic(self) -> &'static [u8; 4] {
        match self {
            Framed::Metadata => META_MAGIC,
            Framed::Audit => AUDIT_MAGIC,
        }
    }

    fn key(self, ring: &Keyring, object_id: &ObjectId) -> crypto::SecretKey {
        match self {
            Framed::Metadata => ring.metadata_object_key(object_id),
            Framed::Audit => ring.audit_object_key(object_id),
        }
    }

    pub(crate) fn aad(self, ring: &Keyring, name: &str, object_id: &ObjectId, index: u32, last: bool) -> Vec<u8> {
        let label = match self {
            Framed::Metadata => META_AAD,
            Framed::Audit => AUDIT_AAD,
        };
        [
            label,
            ring.volume_id().as_slice(),
            name.as_bytes(),
            &[0],
            object_id.as_slice(),
            &index.to_be_bytes(),
            &[last as u8],
        ]
        .concat()
    }
}

/// Seals a metadata object (`name` is its key in the store, e.g.
/// `meta/00000000000000000042.snap`, and is bound into every frame).
pub fn seal_metadata(ring: &Keyring, name: &str, plaintext: &[u8]) -> Vec<u8> {
    seal_framed(Framed::Metadata, ring, name, plaintext)
}

pub fn open_metadata(ring: &Keyring, name: &str, object: &[u8]) -> Result<Vec<u8>, CodecError> {
    open_framed(Framed::Metadata, ring, name, object)
}

/// Seals an audit segment, named like a metadata object.
pub fn seal_audit(ring: &Keyring, name: &str, plaintext: &[u8]) -> Vec<u8> {
    seal_framed(Framed::Audit, ring, name, plaintext)
}

pub fn open_audit(ring: &Keyring, name: &str, object: &[u8]) -> Result<Vec<u8>, CodecError> {
    open_framed(Framed::Audit, ring, name, object)
}

fn seal_framed(kind: Framed, ring: &Keyring, name: &str, plaintext: &[u8]) -> Vec<u8> {
    let object_id = new_object_id();
    let key = kind.key(ring, &object_id);
    let mut out = Vec::with_capacity(META_HEADER_LEN + plaintext.len() + 64);
    out.extend_from_slice(kind.magic());
    out.push(VERSION);
    out.extend_from_slice(&object_id);
    let mut frames: Vec<&[u8]> = plaintext.chunks(META_FRAME_LEN).collect();
    if frames.is_empty() {
        frames.push(&[]);
    }
    let last = frames.len() - 1;
    for (i, frame) in frames.iter().enumerate() {
        let sealed = crypto::seal(&key, &kind.aad(ring, name, &object_id, i as u32, i == last), frame);
        out.extend_from_slice(&(sealed.len() as u32).to_be_bytes());
        out.extend_from_slice(&sealed);
    }
    out
}

fn open_framed(kind: Framed, ring: &Keyring, name: &str, object: &[u8]) -> Result<Vec<u8>, CodecError> {
    if object.len() < META_HEADER_LEN {
        return Err(CodecError::Truncated);
    }
    if &object[..4] != kind.magic() || object[4] != VERSION {
        return Err(CodecError::BadHeader);
    }
    let object_id: ObjectId = object[5..META_HEADER_LEN]
        .try_into()
        .map_err(|_| CodecError::Truncated)?;
    let key = kind.key(ring, &object_id);
    let mut rest = &object[META_HEADER_LEN..];
    let mut out = Vec::new();
    let mut index = 0u32;
    loop {
        if rest.len() < 4 {
            return Err(CodecError::Truncated);
        }
        let len = u32::from_be_bytes(rest[..4].try_into().map_err(|_| CodecError::Truncated)?) as usize;
        rest = &rest[4..];
        if rest.len() < len {
            return Err(CodecError::Truncated);
        }
        let (frame, tail) = rest.split_at(len);
        let is_last = tail.is_empty();
        out.extend_from_slice(&crypto::open(
            &key,
            &kind.aad(ring, name, &object_id, index, is_last),
            frame,
        )?);
        if is_last {
            return Ok(out);
        }
        rest = tail;
        index = index.checked_add(1).ok_or(CodecError::Truncated)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SecretKey;

    fn ring() -> Keyring {
        Keyring::new(&SecretKey::random(), crypto::random_bytes())
    }

    fn addr(ino: u64, index: u64) -> ChunkAddress {
        ChunkAddress {
            pack: new_object_id(),
            offset: 4096,
            ino,
            index,
        }
    }

    fn seal(ring: &Keyring, a: &ChunkAddress, plaintext: &[u8]) -> Vec<u8> {
        seal_chunk(ring, &pack_key(ring, &a.pack), a, plaintext)
    }

    #[test]
    fn chunk_round_trips() {
        let ring = ring();
        let a = addr(5, 9);
        let sealed = seal(&ring, &a, b"chunk data");
        assert_eq!(sealed.len(), sealed_chunk_len(10));
        assert_eq!(open_chunk(&ring, &a, &sealed).unwrap(), b"chunk data");
    }

    #[test]
    fn chunk_opened_at_another_address_fails() {
        let ring = ring();
        let a = addr(5, 9);
        let sealed = seal(&ring, &a, b"chunk data");
        for other in [
            ChunkAddress { ino: 6, ..a },
            ChunkAddress { index: 8, ..a },
            ChunkAddress { offset: 0, ..a },
            ChunkAddress {
                pack: new_object_id(),
                ..a
            },
        ] {
            assert!(open_chunk(&ring, &other, &sealed).is_err());
        }
    }

    #[test]
    fn chunk_from_another_volume_fails() {
        let a = addr(1, 0);
        let sealed = seal(&ring(), &a, b"foreign");
        assert!(open_chunk(&ring(), &a, &sealed).is_err());
    }

    #[test]
    fn flipped_or_truncated_chunk_fails() {
        let ring = ring();
        let a = addr(1, 0);
        let sealed = seal(&ring, &a, &[7u8; 1000]);
        for i in [0, 4, 12, 20, 500, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[i] ^= 0x80;
            assert!(open_chunk(&ring, &a, &bad).is_err());
        }
        for len in [0, 3, 27, 30, sealed.len() - 1] {
            assert!(open_chunk(&ring, &a, &sealed[..len]).is_err());
        }
    }

    #[test]
    fn packs_are_padded_to_size_classes() {
        assert_eq!(padded_pack_len(0), 64 << 10);
        assert_eq!(padded_pack_len(1), 64 << 10);
        assert_eq!(padded_pack_len(64 << 10), 64 << 10);
        assert_eq!(padded_pack_len((64 << 10) + 1), 128 << 10);
        assert_eq!(padded_pack_len(1 << 20), 1 << 20);
        assert_eq!(padded_pack_len((1 << 20) + 1), 2 << 20);
        assert_eq!(padded_pack_len((8 << 20) + 28), 9 << 20);
    }

    #[test]
    fn metadata_round_trips_across_frames() {
        let ring = ring();
        for len in [0, 1, META_FRAME_LEN, META_FRAME_LEN + 1, 3 * META_FRAME_LEN - 7] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let sealed = seal_metadata(&ring, "meta/1", &data);
            assert_eq!(open_metadata(&ring, "meta/1", &sealed).unwrap(), data);
            assert!(open_metadata(&ring, "meta/2", &sealed).is_err());
        }
    }

    #[test]
    fn metadata_missing_its_last_frame_fails() {
        let ring = ring();
        let data = vec![1u8; 2 * META_FRAME_LEN + 10];
        let sealed = seal_metadata(&ring, "m", &data);
        // Cut exactly after the first two frames: every remaining frame is whole.
        let frame = 4 + crypto::SEAL_OVERHEAD + META_FRAME_LEN;
        let cut = META_HEADER_LEN + 2 * frame;
        assert!(open_metadata(&ring, "m", &sealed[..cut]).is_err());
        assert!(open_metadata(&ring, "m", &sealed[..sealed.len() - 1]).is_err());
    }
}
