//! Known-answer tests of the volume format: `tests/golden/vectors.json` is
//! written by `scripts/format-vectors.py`, a second implementation of
//! FORMAT.md in Python. Every HKDF purpose, every associated-data layout,
//! every sealed layout, the superblock with its MAC and the audit chain
//! must match it byte for byte, so a change made the same way in encoder
//! and decoder cannot slip through as round-trip tests would let it.

use crate::audit::segment::{chain_mac, frame_aad};
use crate::codec::{self, ChunkAddress, Framed, ObjectId};
use crate::crypto::SecretKey;
use crate::journal::anchor::{self, Anchor};
use crate::journal::seen::{Position, Seen};
use crate::journal::{checkpoint, segment};
use crate::keyring::{Keyring, VolumeId};
use crate::meta::ChainHead;
use crate::store::ObjectStore;
use crate::superblock::{Superblock, Unlock};
use serde_json::Value;

fn vectors() -> Value {
    serde_json::from_str(include_str!("../tests/golden/vectors.json")).expect("vectors.json is JSON")
}

fn bytes(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("a hex string")).expect("valid hex")
}

fn text(v: &Value) -> &str {
    v.as_str().expect("a string")
}

fn ring(v: &Value) -> Keyring {
    let master: [u8; 32] = bytes(&v["master"]).try_into().unwrap();
    let volume_id: VolumeId = bytes(&v["volume_id"]).try_into().unwrap();
    Keyring::new(&SecretKey::from_bytes(&master), volume_id)
}

fn object_id(v: &Value) -> ObjectId {
    bytes(&v["object_id"]).try_into().unwrap()
}

#[test]
fn every_hkdf_purpose_matches_its_known_answer() {
    let v = vectors();
    let ring = ring(&v);
    let id = object_id(&v);
    let k = &v["object_keys"];
    assert_eq!(ring.data_object_key(&id).as_bytes().to_vec(), bytes(&k["data"]), "data");
    assert_eq!(
        ring.metadata_object_key(&id).as_bytes().to_vec(),
        bytes(&k["metadata"]),
        "metadata"
    );
    assert_eq!(
        ring.audit_object_key(&id).as_bytes().to_vec(),
        bytes(&k["audit"]),
        "audit"
    );
    assert_eq!(ring.audit_chain_key().as_bytes().to_vec(), bytes(&v["audit_chain_key"]));
    assert_eq!(
        ring.database_key().as_bytes().to_vec(),
        bytes(&v["subkeys"]["database"])
    );
    assert_eq!(
        ring.superblock_key().as_bytes().to_vec(),
        bytes(&v["subkeys"]["superblock"])
    );
    assert_eq!(
        ring.snapshot_name_id(b"before upgrade").to_vec(),
        bytes(&v["snapshot_name_id"])
    );
}

#[test]
fn every_associated_data_layout_matches_its_known_answer() {
    let v = vectors();
    let ring = ring(&v);
    let id = object_id(&v);
    let a = &v["aad"];
    let chunk = ChunkAddress {
        pack: id,
        offset: 131072,
        ino: 7,
        index: 3,
    };
    assert_eq!(chunk.aad(&ring), bytes(&a["chunk_offset131072_ino7_index3"]));
    let checkpoint = text(&v["sealed"]["checkpoint_name"]);
    assert_eq!(
        Framed::Metadata.aad(&ring, checkpoint, &id, 0, true),
        bytes(&a["metadata_frame"])
    );
    let audit = text(&v["sealed"]["audit_name"]);
    assert_eq!(Framed::Audit.aad(&ring, audit, &id, 1, false), bytes(&a["audit_frame"]));
    assert_eq!(frame_aad(&ring, &id, 5), bytes(&a["local_audit_frame5"]));
}

#[test]
fn sealed_objects_written_from_the_spec_open() {
    let v = vectors();
    let ring = ring(&v);
    let s = &v["sealed"];
    let chunk = ChunkAddress {
        pack: object_id(&v),
        offset: 131072,
        ino: 7,
        index: 3,
    };
    let sealed = bytes(&s["chunk_offset131072_ino7_index3"]);
    assert_eq!(
        codec::open_chunk(&ring, &chunk, &sealed).unwrap(),
        bytes(&s["chunk_plaintext"])
    );
    let elsewhere = ChunkAddress { offset: 0, ..chunk };
    assert!(codec::open_chunk(&ring, &elsewhere, &sealed).is_err());

    let name = text(&s["checkpoint_name"]);
    let object = bytes(&s["checkpoint"]);
    assert_eq!(
        codec::open_metadata(&ring, name, &object).unwrap(),
        bytes(&s["checkpoint_plaintext"])
    );
    assert!(codec::open_metadata(&ring, "meta/00000000000000000043.snap", &object).is_err());
    assert!(
        codec::open_audit(&ring, name, &object).is_err(),
        "a metadata object is not an audit segment"
    );

    let name = text(&s["audit_name"]);
    let object = bytes(&s["audit_segment"]);
    assert_eq!(
        codec::open_audit(&ring, name, &object).unwrap(),
        bytes(&s["audit_plaintext"])
    );
}

#[test]
fn the_anchor_written_from_the_spec_opens() {
    let v = vectors();
    let ring = ring(&v);
    let s = &v["sealed"];
    let name = text(&s["anchor_name"]);
    let head = bytes(&v["journal_chain"]["segment_43_head"]);
    let expected = Anchor {
        sequence: 3,
        seen: Seen {
            state: Position {
                generation: 43,
                head: Some(head.try_into().unwrap()),
            },
            revision: 5,
        },
        written: 1_795_000_000,
    };
    assert_eq!(name, anchor::key(3));
    assert_eq!(Anchor::open(&ring, name, &bytes(&s["anchor"])), Some(expected));
    assert_eq!(Anchor::open(&ring, &anchor::key(4), &bytes(&s["anchor"])), None);
}

#[test]
fn the_audit_chain_matches_its_known_answer() {
    let v = vectors();
    let ring = ring(&v);
    let c = &v["audit_chain"];
    let prev: [u8; 32] = bytes(&c["prev"]).try_into().unwrap();
    let mac = chain_mac(&ring.audit_chain_key(), &prev, text(&c["record"]).as_bytes());
    assert_eq!(mac.to_vec(), bytes(&c["mac"]));
}

#[test]
fn the_journal_chain_matches_its_known_answer() {
    let v = vectors();
    let ring = ring(&v);
    let c = &v["journal_chain"];
    assert_eq!(ring.journal_chain_key().as_bytes().to_vec(), bytes(&c["key"]));
    assert_eq!(segment::genesis(&ring).to_vec(), bytes(&c["genesis"]));
    let checkpoint_head: ChainHead = bytes(&c["checkpoint_42_head"]).try_into().unwrap();
    assert_eq!(
        segment::chain(&ring, 42, &segment::genesis(&ring), &[]).to_vec(),
        checkpoint_head.to_vec()
    );
    let ops = bytes(&c["segment_43_ops"]);
    assert_eq!(
        segment::chain(&ring, 43, &checkpoint_head, &ops).to_vec(),
        bytes(&c["segment_43_head"])
    );
}

#[tokio::test]
async fn a_chained_checkpoint_and_segment_written_from_the_spec_load() {
    let v = vectors();
    let ring = ring(&v);
    let s = &v["sealed"];
    let c = &v["journal_chain"];
    let store = crate::store::MemoryStore::default();
    store
        .put(text(&s["checkpoint_name"]), bytes(&s["checkpoint_v2"]).into())
        .await
        .unwrap();
    store
        .put(text(&s["segment_name"]), bytes(&s["segment"]).into())
        .await
        .unwrap();
    let checkpoint = checkpoint::read(&store, &ring, 42).await.unwrap().unwrap();
    assert_eq!(checkpoint.head.unwrap().to_vec(), bytes(&c["checkpoint_42_head"]));
    assert_eq!(checkpoint.records, [crate::meta::Record::NextIno(10)]);
    let segment = segment::read(&store, &ring, 43).await.unwrap().unwrap();
    segment.check_follows(checkpoint.head.as_ref()).unwrap();
    assert_eq!(segment.ops, bytes(&c["segment_43_ops"]));
    assert_eq!(segment.head.unwrap().to_vec(), bytes(&c["segment_43_head"]));
    assert!(segment.check_follows(Some(&[0; 32])).is_err());
}

#[test]
fn a_format_2_superblock_is_refused_naming_its_layout() {
    let v = vectors();
    let encoded = bytes(&v["superblock"]["format_2_bytes"]);
    let refused = Superblock::decode(&encoded).unwrap_err();
    assert!(matches!(refused, crate::superblock::SuperblockError::OldFormat(2)));
    assert!(refused.to_string().contains("one block per object"), "{refused}");
}

#[test]
fn the_superblock_written_from_the_spec_unlocks_and_reencodes_byte_for_byte() {
    let v = vectors();
    let sb = &v["superblock"];
    let encoded = bytes(&sb["bytes"]);
    let superblock = Superblock::decode(&encoded).unwrap();
    assert_eq!(
        (superblock.format, superblock.revision),
        (3, sb["revision"].as_u64().unwrap())
    );
    assert_eq!(superblock.volume_id.to_vec(), bytes(&v["volume_id"]));
    assert_eq!(u64::from(superblock.chunk_size), sb["chunk_size"].as_u64().unwrap());
    let key: [u8; 32] = bytes(&sb["key_file_key"]).try_into().unwrap();
    let master = superblock
        .unlock(&Unlock::KeyFile(SecretKey::from_bytes(&key)))
        .unwrap();
    assert_eq!(master.as_bytes().to_vec(), bytes(&v["master"]));
    superblock.verify(&master).unwrap();
    assert_eq!(superblock.encode(), encoded);
    // The MAC covers every byte: a changed chunk size is refused.
    let mut tampered = encoded.clone();
    tampered[29] ^= 0x01;
    let tampered = Superblock::decode(&tampered);
    assert!(tampered.is_err() || tampered.unwrap().verify(&master).is_err());
}

#[test]
fn a_format_4_superblock_names_its_metadata_database_as_the_spec_says() {
    let v = vectors();
    let sb = &v["superblock"];
    let encoded = bytes(&sb["format_4_bytes"]);
    let superblock = Superblock::decode(&encoded).unwrap();
    assert_eq!(superblock.format, 4);
    assert!(superblock.has_shared_metadata());
    let key: [u8; 32] = bytes(&sb["key_file_key"]).try_into().unwrap();
    let master = superblock
        .unlock(&Unlock::KeyFile(SecretKey::from_bytes(&key)))
        .unwrap();
    let ring = Keyring::new(&master, superblock.volume_id);
    let location = superblock.metadata_location(&ring).unwrap().unwrap();
    assert_eq!(location.as_str(), text(&sb["format_4_location"]));
    assert_eq!(superblock.encode(), encoded);
}

#[test]
fn database_rows_sealed_from_the_spec_open_in_their_place_only() {
    use crate::meta::sealing::{Place, RowSealer};
    let v = vectors();
    let r = &v["database_rows"];
    let sealer = RowSealer::new(&ring(&v));
    let parent = r["entry_parent"].as_u64().unwrap();
    let name = text(&r["entry_name"]).as_bytes();
    let mac = sealer.name_mac(b"entry", parent, name);
    assert_eq!(mac.to_vec(), bytes(&r["entry_name_mac"]));
    let plain = sealer
        .open(
            Place::EntryName { parent, name_mac: &mac },
            &bytes(&r["entry_sealed_name"]),
        )
        .unwrap();
    let ino = r["entry_ino"].as_u64().unwrap();
    assert_eq!(plain, [&ino.to_be_bytes()[..], name].concat());
    let (ino, index) = (r["chunk_ino"].as_u64().unwrap(), r["chunk_index"].as_u64().unwrap());
    let place = sealer
        .open(Place::Chunk { ino, index }, &bytes(&r["chunk_sealed_place"]))
        .unwrap();
    let expected = [
        bytes(&r["chunk_pack"]),
        (r["chunk_offset"].as_u64().unwrap() as u32).to_be_bytes().to_vec(),
        (r["chunk_len"].as_u64().unwrap() as u32).to_be_bytes().to_vec(),
    ]
    .concat();
    assert_eq!(place, expected);
    assert!(
        sealer
            .open(Place::Chunk { ino, index: index + 1 }, &bytes(&r["chunk_sealed_place"]))
            .is_err()
    );
}
