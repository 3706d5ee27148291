//! Sealing of metadata rows kept in a shared database (PostgreSQL).
//!
//! The database is outside the trust boundary, like the bucket
//! (invariant 9): every value that says anything about a file (its
//! attributes, name, symlink target, extended attributes, where its chunks
//! live in their packs) is sealed here before it leaves the process, and
//! lookups by name go through a keyed hash instead of the name.
//!
//! A row is rewritten many times over a volume's life, far more than the
//! 2^32 seals one AES-GCM key may make with random nonces. So, as for
//! objects in the bucket, no seal uses the subkey directly: each derives a
//! one-time key from it and a random 128-bit salt stored with the value.
//! The associated data binds a value to its table, its column and its row's
//! key, so a database administrator cannot move a sealed name to another
//! directory or a file's attributes to another inode without it showing.
//! Layout: FORMAT.md, "Metadata in PostgreSQL".

use crate::crypto::{self, SecretKey};
use crate::keyring::Keyring;

use super::{MetaError, Result};

/// Bytes of the random salt in front of each sealed value.
const SALT_LEN: usize = 16;

/// Bytes a sealed value has beyond its plaintext.
pub const ROW_SEAL_OVERHEAD: usize = SALT_LEN + crypto::SEAL_OVERHEAD;

/// Where a sealed value belongs: its table and column, and its row's key.
#[derive(Clone, Copy, Debug)]
pub enum Place<'a> {
    InodeAttrs(u64),
    InodeUsage(u64),
    SymlinkTarget(u64),
    EntryName {
        parent: u64,
        name_mac: &'a [u8],
    },
    Xattr {
        ino: u64,
        name_mac: &'a [u8],
    },
    Chunk {
        ino: u64,
        index: u64,
    },
    HostUsage(&'a [u8]),
    /// A file lock of `owner` on `host`.
    Lock {
        ino: u64,
        host: &'a [u8],
        owner: u64,
    },
}

impl Place<'_> {
    fn aad(&self, volume: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(b"s3vault v1 row ");
        out.extend_from_slice(volume);
        let (label, numbers, bytes): (&[u8], [u64; 2], &[u8]) = match *self {
            Place::InodeAttrs(ino) => (b"inode.attrs", [ino, 0], &[]),
            Place::InodeUsage(ino) => (b"inode.usage", [ino, 0], &[]),
            Place::SymlinkTarget(ino) => (b"inode.target", [ino, 0], &[]),
            Place::EntryName { parent, name_mac } => (b"entry.name", [parent, 0], name_mac),
            Place::Xattr { ino, name_mac } => (b"xattr.body", [ino, 0], name_mac),
            Place::Chunk { ino, index } => (b"chunk.place", [ino, index], &[]),
            Place::HostUsage(host) => (b"usage.body", [0, 0], host),
            Place::Lock { ino, host, owner } => (b"file_lock.body", [ino, owner], host),
        };
        out.push(label.len() as u8);
        out.extend_from_slice(label);
        for n in numbers {
            out.extend_from_slice(&n.to_be_bytes());
        }
        out.extend_from_slice(bytes);
        out
    }
}

/// The keys that seal a volume's rows and hash its names.
pub struct RowSealer {
    volume: Vec<u8>,
    seal_key: SecretKey,
    name_key: SecretKey,
}

impl RowSealer {
    pub fn new(ring: &Keyring) -> RowSealer {
        RowSealer {
            volume: ring.volume_id().to_vec(),
            seal_key: ring.database_row_key(),
            name_key: ring.database_name_key(),
        }
    }

    pub fn seal(&self, place: Place<'_>, plaintext: &[u8]) -> Vec<u8> {
        let salt: [u8; SALT_LEN] = crypto::random_bytes();
        let key = self.seal_key.derive(&salt, &[b"s3vault v1 row seal"]);
        let mut out = Vec::with_capacity(plaintext.len() + ROW_SEAL_OVERHEAD);
        out.extend_from_slice(&salt);
        out.extend_from_slice(&crypto::seal(&key, &place.aad(&self.volume), plaintext));
        out
    }

    /// The plaintext of a value made by `seal` for the same place; a
    /// value that was altered, or moved from another row, is corrupt.
    pub fn open(&self, place: Place<'_>, sealed: &[u8]) -> Result<Vec<u8>> {
        let damaged = || MetaError::Corrupt(format!("a sealed database value failed authentication ({place:?})"));
        if sealed.len() < ROW_SEAL_OVERHEAD {
            return Err(damaged());
        }
        let (salt, rest) = sealed.split_at(SALT_LEN);
        let key = self.seal_key.derive(salt, &[b"s3vault v1 row seal"]);
        crypto::open(&key, &place.aad(&self.volume), rest).map_err(|_| damaged())
    }

    /// The lookup key of `name` in directory `parent` (or of an extended
    /// attribute's name on inode `parent`): equal names give equal hashes,
    /// and nothing else can be learned from it without the volume key.
    pub fn name_mac(&self, scope: &[u8], parent: u64, name: &[u8]) -> [u8; 32] {
        crypto::hmac(&self.name_key, &[scope, &parent.to_be_bytes(), name])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer() -> RowSealer {
        RowSealer::new(&Keyring::new(&SecretKey::random(), [3; 16]))
    }

    #[test]
    fn a_value_opens_only_in_its_own_place() {
        let s = sealer();
        let sealed = s.seal(Place::InodeAttrs(7), b"attributes");
        assert_eq!(s.open(Place::InodeAttrs(7), &sealed).unwrap(), b"attributes");
        assert!(s.open(Place::InodeAttrs(8), &sealed).is_err());
        assert!(s.open(Place::SymlinkTarget(7), &sealed).is_err());
        let mac = s.name_mac(b"entry", 1, b"a");
        let name = s.seal(
            Place::EntryName {
                parent: 1,
                name_mac: &mac,
            },
            b"a",
        );
        let other = s.name_mac(b"entry", 1, b"b");
        assert!(
            s.open(
                Place::EntryName {
                    parent: 1,
                    name_mac: &other
                },
                &name
            )
            .is_err()
        );
        assert!(
            s.open(
                Place::EntryName {
                    parent: 2,
                    name_mac: &mac
                },
                &name
            )
            .is_err()
        );
        let mut flipped = sealed.clone();
        flipped[20] ^= 1;
        assert!(s.open(Place::InodeAttrs(7), &flipped).is_err());
        assert!(s.open(Place::InodeAttrs(7), &sealed[..10]).is_err());
    }

    #[test]
    fn sealing_twice_gives_unrelated_values() {
        let s = sealer();
        let a = s.seal(Place::InodeAttrs(1), b"same");
        let b = s.seal(Place::InodeAttrs(1), b"same");
        assert_ne!(a, b);
        assert_eq!(a.len(), 4 + ROW_SEAL_OVERHEAD);
    }

    #[test]
    fn name_hashes_depend_on_key_scope_and_parent() {
        let s = sealer();
        assert_eq!(s.name_mac(b"entry", 1, b"x"), s.name_mac(b"entry", 1, b"x"));
        assert_ne!(s.name_mac(b"entry", 1, b"x"), s.name_mac(b"entry", 2, b"x"));
        assert_ne!(s.name_mac(b"entry", 1, b"x"), s.name_mac(b"xattr", 1, b"x"));
        assert_ne!(s.name_mac(b"entry", 1, b"x"), sealer().name_mac(b"entry", 1, b"x"));
    }
}
