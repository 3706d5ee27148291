//! Keyring: the volume master key and the subkeys derived from it.
//!
//! Each purpose (data blocks, metadata, audit, the local database, the
//! superblock MAC) gets its own HKDF-SHA256 subkey, salted with the volume id.
//! Sealed objects never use a subkey directly: each object derives its own
//! key from the subkey and its random 128-bit object id, so every AES-GCM key
//! seals exactly one object and the 2^32 random-nonce limit of GCM is never
//! approached, however many blocks a volume holds.

use crate::crypto::SecretKey;

pub const VOLUME_ID_LEN: usize = 16;
pub type VolumeId = [u8; VOLUME_ID_LEN];

/// HKDF info strings, one per purpose. They are part of format v1.
pub mod purpose {
    pub const DATA: &[u8] = b"s3vault v1 data blocks";
    pub const METADATA: &[u8] = b"s3vault v1 metadata objects";
    pub const AUDIT: &[u8] = b"s3vault v1 audit log";
    pub const DATABASE: &[u8] = b"s3vault v1 local metadata database";
    pub const SUPERBLOCK: &[u8] = b"s3vault v1 superblock mac";
    pub const OBJECT: &[u8] = b"s3vault v1 object key";
    pub const AUDIT_CHAIN: &[u8] = b"s3vault v1 audit chain";
    pub const SNAPSHOT_NAME: &[u8] = b"s3vault v1 snapshot name";
    pub const JOURNAL_CHAIN: &[u8] = b"s3vault v1 journal chain";
    pub const DATABASE_ROWS: &[u8] = b"s3vault v1 shared database rows";
    pub const DATABASE_NAMES: &[u8] = b"s3vault v1 shared database names";
    pub const METADATA_LOCATION: &[u8] = b"s3vault v1 metadata location";
}

pub struct Keyring {
    volume_id: VolumeId,
    /// Boxed so the keys have a stable address to mlock.
    keys: Box<Subkeys>,
    locked: bool,
}

/// Page-aligned, so no other data shares its page: mlock is per page and
/// not counted, and unlocking a neighbour would unlock our keys too.
#[repr(C, align(4096))]
struct Subkeys {
    data: SecretKey,
    metadata: SecretKey,
    audit: SecretKey,
    database: SecretKey,
    superblock: SecretKey,
}

impl Drop for Keyring {
    fn drop(&mut self) {
        // The keys are wiped right after, when the box drops.
        if self.locked {
            let ptr: *const Subkeys = &*self.keys;
            crate::hardening::unlock_memory(ptr.cast(), std::mem::size_of::<Subkeys>());
        }
    }
}

impl Keyring {
    pub fn new(master: &SecretKey, volume_id: VolumeId) -> Self {
        let sub = |p: &[u8]| master.derive(&volume_id, &[p]);
        let keys = Box::new(Subkeys {
            data: sub(purpose::DATA),
            metadata: sub(purpose::METADATA),
            audit: sub(purpose::AUDIT),
            database: sub(purpose::DATABASE),
            superblock: sub(purpose::SUPERBLOCK),
        });
        let ptr: *const Subkeys = &*keys;
        let locked = crate::hardening::lock_memory(ptr.cast(), std::mem::size_of::<Subkeys>());
        Keyring {
            volume_id,
            keys,
            locked,
        }
    }

    pub fn volume_id(&self) -> &VolumeId {
        &self.volume_id
    }

    /// The key that seals the data object with this id.
    pub fn data_object_key(&self, object_id: &[u8]) -> SecretKey {
        self.keys.data.derive(&[], &[purpose::OBJECT, object_id])
    }

    /// The key that seals the metadata object with this id.
    pub fn metadata_object_key(&self, object_id: &[u8]) -> SecretKey {
        self.keys.metadata.derive(&[], &[purpose::OBJECT, object_id])
    }

    /// The key that seals the audit segment (or local audit file) with this id.
    pub fn audit_object_key(&self, object_id: &[u8]) -> SecretKey {
        self.keys.audit.derive(&[], &[purpose::OBJECT, object_id])
    }

    /// The HMAC key that chains audit records.
    pub fn audit_chain_key(&self) -> SecretKey {
        self.keys.audit.derive(&[], &[purpose::AUDIT_CHAIN])
    }

    /// The HMAC key that chains journal segments and checkpoints.
    pub fn journal_chain_key(&self) -> SecretKey {
        self.keys.metadata.derive(&[], &[purpose::JOURNAL_CHAIN])
    }

    /// The id naming snapshot `name` in the store: a keyed hash, so object
    /// names reveal nothing of the snapshot's name.
    pub fn snapshot_name_id(&self, name: &[u8]) -> [u8; 16] {
        let derived = self.keys.metadata.derive(&[], &[purpose::SNAPSHOT_NAME, name]);
        derived.as_bytes()[..16].try_into().expect("16 of 32 bytes")
    }

    /// The subkey sealing rows of a shared metadata database (`meta::sealing`).
    pub fn database_row_key(&self) -> SecretKey {
        self.keys.metadata.derive(&[], &[purpose::DATABASE_ROWS])
    }

    /// The HMAC key of name lookups in a shared metadata database.
    pub fn database_name_key(&self) -> SecretKey {
        self.keys.metadata.derive(&[], &[purpose::DATABASE_NAMES])
    }

    /// The key sealing the shared database's connection string in the
    /// superblock.
    pub fn metadata_location_key(&self) -> SecretKey {
        self.keys.superblock.derive(&[], &[purpose::METADATA_LOCATION])
    }

    /// The raw SQLCipher key of the local metadata database.
    pub fn database_key(&self) -> &SecretKey {
        &self.keys.database
    }

    pub fn superblock_key(&self) -> &SecretKey {
        &self.keys.superblock
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purposes_and_objects_get_distinct_keys() {
        let ring = Keyring::new(&SecretKey::random(), [7; 16]);
        let a = ring.data_object_key(b"object-a");
        assert_ne!(a.as_bytes(), ring.data_object_key(b"object-b").as_bytes());
        assert_ne!(a.as_bytes(), ring.metadata_object_key(b"object-a").as_bytes());
        assert_ne!(ring.database_key().as_bytes(), ring.audit_chain_key().as_bytes());
        assert_ne!(a.as_bytes(), ring.audit_object_key(b"object-a").as_bytes());
    }

    #[test]
    fn volume_id_salts_every_subkey() {
        let master = SecretKey::random();
        let one = Keyring::new(&master, [1; 16]);
        let two = Keyring::new(&master, [2; 16]);
        assert_ne!(one.database_key().as_bytes(), two.database_key().as_bytes());
        assert_ne!(
            one.data_object_key(b"x").as_bytes(),
            two.data_object_key(b"x").as_bytes()
        );
    }
}
