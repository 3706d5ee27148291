//! Every parser of bytes that come from the store, fed random and mutated
//! input (design invariant 9: the bucket may lie). Each must answer with an
//! error — never a panic, never an allocation sized by a field the input
//! chose, never a hang. Two layers: whole objects as an attacker without
//! the key can write them (random, or a valid object mutated), and
//! plaintexts sealed with the right key, which reach the inner decoders
//! (a lying writer, or a bug in ours).

use crate::audit;
use crate::codec::{self, ChunkAddress};

const CHUNK: ChunkAddress = ChunkAddress {
    pack: [1; 16],
    offset: 0,
    ino: 2,
    index: 0,
};
use crate::crypto::SecretKey;
use crate::journal::{checkpoint, lease, segment, snapshots};
use crate::keyring::Keyring;
use crate::meta::ops::decode_ops;
use crate::meta::{Inode, MetadataStore, ROOT_INO, SqliteStore, decode_state, encode_state};
use crate::store::{MemoryStore, ObjectStore};
use crate::superblock::{Argon2Params, Superblock, Unlock};
use bytes::Bytes;
use proptest::prelude::*;
use std::sync::Arc;

fn ring() -> Arc<Keyring> {
    Arc::new(Keyring::new(&SecretKey::from_bytes(&[3; 32]), [4; 16]))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A valid object, then edits: byte flips, a cut, bytes appended.
fn mutated(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = valid.len();
    (
        prop::collection::vec((0..len.max(1), any::<u8>()), 0..8),
        prop::option::of(0..=len),
        prop::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(move |(flips, cut, tail)| {
            let mut bytes = valid.clone();
            for (at, x) in flips {
                if let Some(b) = bytes.get_mut(at) {
                    *b ^= x;
                }
            }
            if let Some(cut) = cut {
                bytes.truncate(cut);
            }
            bytes.extend(tail);
            bytes
        })
}

fn valid_state() -> Vec<u8> {
    let mut meta = SqliteStore::in_memory().unwrap();
    meta.put_inode(&Inode::root(0, 0, 1)).unwrap();
    encode_state(|sink| meta.export(sink)).unwrap()
}

fn valid_superblock() -> (Vec<u8>, SecretKey) {
    let key = SecretKey::from_bytes(&[9; 32]);
    let no_cost = Argon2Params { m_kib: 0, t: 0, p: 0 };
    let (sb, _) = Superblock::create(1 << 20, &Unlock::KeyFile(key.clone()), no_cost, 1).unwrap();
    (sb.encode(), key)
}

/// Reads `bytes` stored at `key` through every reader of metadata objects.
fn read_metadata_objects(bytes: &[u8]) {
    let ring = ring();
    runtime().block_on(async {
        let store: Arc<dyn ObjectStore> = Arc::new(MemoryStore::default());
        let object = Bytes::copy_from_slice(bytes);
        store.put(&checkpoint::key(5), object.clone()).await.unwrap();
        store.put(&segment::key(6), object.clone()).await.unwrap();
        let snapshot = snapshots::object_key(&ring, "s");
        store.put(&snapshot, object.clone()).await.unwrap();
        store.put(lease::LEASE_KEY, object.clone()).await.unwrap();
        let _ = checkpoint::read(store.as_ref(), &ring, 5).await;
        let _ = segment::read(store.as_ref(), &ring, 6).await;
        let _ = segment::fetch_after(store.as_ref(), &ring, 5, None).await;
        let _ = snapshots::read(store.as_ref(), &ring, &snapshot).await;
        let _ = lease::Lease::acquire(store.clone(), ring.clone(), "fuzz", false).await;
        store.put("audit/0123456789abcdef/000000000001", object).await.unwrap();
        if let Ok(found) = audit::read_segments(store.clone(), ring.clone()).await {
            let _ = audit::verify(&ring, &found);
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn superblocks_random(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(sb) = Superblock::decode(&bytes) {
            let _ = sb.unlock(&Unlock::KeyFile(SecretKey::from_bytes(&[9; 32])));
        }
    }

    #[test]
    fn superblocks_mutated(bytes in mutated(valid_superblock().0)) {
        // Only key-file slots are tried with a key file: no Argon2 runs on
        // parameters a mutation chose (their bounds have their own test).
        if let Ok(sb) = Superblock::decode(&bytes) {
            let _ = sb.unlock(&Unlock::KeyFile(valid_superblock().1));
        }
    }

    #[test]
    fn chunks(bytes in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        mutated(codec::seal_chunk(&ring(), &codec::pack_key(&ring(), &[1; 16]), &CHUNK, b"chunk")),
    ]) {
        let _ = codec::open_chunk(&ring(), &CHUNK, &bytes);
    }

    #[test]
    fn metadata_objects(bytes in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        mutated(codec::seal_metadata(&ring(), &checkpoint::key(5), &valid_state())),
        mutated(codec::seal_metadata(&ring(), &segment::key(6), &[2; 40])),
    ]) {
        read_metadata_objects(&bytes);
    }

    #[test]
    fn sealed_plaintexts(plain in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        mutated(valid_state()),
        mutated([vec![2u8], vec![0; 32], valid_state()].concat()),
    ]) {
        // Sealed with the right key under every name, so the decoders
        // behind the authentication see them.
        let ring = ring();
        for key in [checkpoint::key(5), segment::key(6), snapshots::object_key(&ring, "s"), lease::LEASE_KEY.to_string()] {
            let object = codec::seal_metadata(&ring, &key, &plain);
            let store: Arc<dyn ObjectStore> = Arc::new(MemoryStore::default());
            runtime().block_on(async {
                store.put(&key, object.into()).await.unwrap();
                let _ = checkpoint::read(store.as_ref(), &ring, 5).await;
                let _ = segment::read(store.as_ref(), &ring, 6).await;
                let _ = snapshots::read(store.as_ref(), &ring, &key).await;
                let _ = lease::Lease::acquire(store.clone(), ring.clone(), "fuzz", false).await;
            });
        }
        let audit_key = "audit/0123456789abcdef/000000000001";
        let object = codec::seal_audit(&ring, audit_key, &plain);
        runtime().block_on(async {
            let store: Arc<dyn ObjectStore> = Arc::new(MemoryStore::default());
            store.put(audit_key, object.into()).await.unwrap();
            if let Ok(found) = audit::read_segments(store, ring.clone()).await {
                let _ = audit::verify(&ring, &found);
            }
        });
    }

    #[test]
    fn states_and_operations(bytes in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        mutated(valid_state()),
    ]) {
        let _ = decode_state(&bytes);
        let _ = decode_ops(&bytes);
        if let Ok(records) = decode_state(&bytes) {
            // What decodes also loads, or is refused by the store.
            let mut meta = SqliteStore::in_memory().unwrap();
            let _ = meta.import(&mut records.into_iter());
            let _ = meta.inode(ROOT_INO);
        }
    }
}
