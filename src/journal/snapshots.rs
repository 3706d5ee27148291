//! Named point-in-time snapshots: `snapshots/<id>`, each a sealed copy of
//! one metadata state the store held, with its name and creation time.
//!
//! Data objects are never overwritten, so a copy of a metadata state is an
//! exact copy of every file in it as long as the objects it references
//! stay. The writer keeps them: it deletes a pack only after a checkpoint
//! that no longer references it, once it has deleted the older checkpoints,
//! and then only if no snapshot it lists references the pack. That is
//! race-free with `create`, which copies the live state (a checkpoint plus
//! the journal segments after it), stores the snapshot, and then checks
//! that the checkpoint it started from is still in the store: if it is, the
//! writer has not yet listed snapshots for any pack the copied state
//! references (such a pack is garbage only at a later checkpoint, whose
//! reclaim deletes this one first), and will see this snapshot when it does.
//!
//! A volume whose metadata is in PostgreSQL has no checkpoint to compare
//! with: there the database pins the packs a snapshot references, in the
//! transaction that reads them (`create_shared`).
//!
//! The object's name is a keyed hash of the snapshot's name, so the bucket
//! does not show names, and a second snapshot of the same name is refused by
//! the store itself (`If-None-Match: *`).

use super::live::live_state;
use super::{MAX_STATE, StateError, checkpoint};
use crate::codec::{self, ObjectId};
use crate::keyring::Keyring;
use crate::meta::{FileKind, MetaError, MetadataStore, PgStore, Record, decode_state, encode_state};
use crate::store::{ObjectStore, StoreError};
use bytes::Bytes;
use std::collections::HashSet;

pub const PREFIX: &str = "snapshots/";
const VERSION: u8 = 1;
const MAX_NAME: usize = 128;
/// Attempts when the writer keeps replacing the state being copied.
const ATTEMPTS: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("a snapshot name is 1 to {MAX_NAME} bytes of UTF-8 without control characters")]
    BadName,
    #[error("a snapshot named {0:?} already exists")]
    Exists(String),
    #[error("there is no snapshot named {0:?}")]
    NotFound(String),
    #[error(
        "the volume's metadata is missing from the store (no checkpoint, meta/<generation>.snap); nothing was \
         changed: run `s3vault fsck` to see what is left"
    )]
    NoState,
    #[error("the volume's metadata changed {ATTEMPTS} times while it was being copied; try again")]
    Contended,
    #[error("{0} failed its integrity check: {1}")]
    Integrity(String, codec::CodecError),
    #[error("{0} is malformed")]
    Malformed(String),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    State(#[from] StateError),
}

/// What `list` shows of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SnapshotInfo {
    pub name: String,
    pub created_ns: i64,
    /// The metadata generation it copies.
    pub generation: u64,
    /// Files, directories and other inodes.
    pub inodes: u64,
    /// Bytes of regular files (their sizes, holes included).
    pub bytes: u64,
}

/// A snapshot read back: its description and its metadata records.
pub struct Snapshot {
    pub info: SnapshotInfo,
    pub records: Vec<Record>,
}

impl Snapshot {
    /// Every data object the snapshot references.
    pub fn packs(&self) -> impl Iterator<Item = ObjectId> + '_ {
        self.records.iter().filter_map(|r| match r {
            Record::Chunk { block, .. } => Some(block.pack),
            _ => None,
        })
    }
}

impl Snapshot {
    /// Loads the snapshot's state into an empty metadata store.
    pub fn import_into(self, meta: &mut dyn MetadataStore) -> Result<(), MetaError> {
        meta.import(&mut self.records.into_iter())?;
        meta.set_generation(self.info.generation)
    }
}

pub fn validate_name(name: &str) -> Result<(), SnapshotError> {
    if name.is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(SnapshotError::BadName);
    }
    Ok(())
}

/// `snapshots/<32 hex digits>`: a keyed hash of the name.
pub fn object_key(ring: &Keyring, name: &str) -> String {
    format!("{PREFIX}{}", hex::encode(ring.snapshot_name_id(name.as_bytes())))
}

fn encode(info: &SnapshotInfo, state: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 2 + info.name.len() + 32 + state.len());
    out.push(VERSION);
    out.extend_from_slice(&(info.name.len() as u16).to_be_bytes());
    out.extend_from_slice(info.name.as_bytes());
    out.extend_from_slice(&info.created_ns.to_be_bytes());
    for n in [info.generation, info.inodes, info.bytes] {
        out.extend_from_slice(&n.to_be_bytes());
    }
    out.extend_from_slice(state);
    out
}

fn decode(key: &str, plain: &[u8]) -> Result<Snapshot, SnapshotError> {
    let malformed = || SnapshotError::Malformed(key.to_string());
    let (&version, rest) = plain.split_first().ok_or_else(malformed)?;
    if version != VERSION || rest.len() < 2 {
        return Err(malformed());
    }
    let name_len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
    let rest = &rest[2..];
    if rest.len() < name_len + 32 {
        return Err(malformed());
    }
    let name = String::from_utf8(rest[..name_len].to_vec()).map_err(|_| malformed())?;
    let field = |i: usize| {
        let at = name_len + 8 * i;
        u64::from_be_bytes(rest[at..at + 8].try_into().expect("8 bytes"))
    };
    let info = SnapshotInfo {
        name,
        created_ns: field(0) as i64,
        generation: field(1),
        inodes: field(2),
        bytes: field(3),
    };
    let records = decode_state(&rest[name_len + 32..])?;
    Ok(Snapshot { info, records })
}

/// Counts what a state holds, for `list`.
fn summarize(records: &[Record]) -> (u64, u64) {
    records.iter().fold((0, 0), |(inodes, bytes), r| match r {
        Record::Inode(i) if i.kind == FileKind::File => (inodes + 1, bytes + i.size),
        Record::Inode(_) => (inodes + 1, bytes),
        _ => (inodes, bytes),
    })
}

/// Reads the snapshot object `key` (from a listing of [`PREFIX`]).
pub async fn read(store: &dyn ObjectStore, ring: &Keyring, key: &str) -> Result<Snapshot, SnapshotError> {
    let sealed = store.get_at_most(key, MAX_STATE).await?;
    let plain = codec::open_metadata(ring, key, &sealed).map_err(|e| SnapshotError::Integrity(key.to_string(), e))?;
    decode(key, &plain)
}

/// The key of snapshot `name`, unless the store already holds one.
async fn free_key(store: &dyn ObjectStore, ring: &Keyring, name: &str) -> Result<String, SnapshotError> {
    validate_name(name)?;
    let key = object_key(ring, name);
    match store.get(&key).await {
        Ok(_) => Err(SnapshotError::Exists(name.to_string())),
        Err(StoreError::NotFound) => Ok(key),
        Err(e) => Err(e.into()),
    }
}

/// Snapshot `name` of `records`, sealed as the object `key`.
fn seal(
    ring: &Keyring,
    key: &str,
    name: &str,
    generation: u64,
    records: &[Record],
) -> Result<(SnapshotInfo, Bytes), SnapshotError> {
    let (inodes, bytes) = summarize(records);
    let state = encode_state(|sink| {
        records.iter().cloned().for_each(sink);
        Ok(())
    })?;
    let info = SnapshotInfo {
        name: name.to_string(),
        created_ns: crate::os::now_ns(),
        generation,
        inodes,
        bytes,
    };
    let object = Bytes::from(codec::seal_metadata(ring, key, &encode(&info, &state)));
    Ok((info, object))
}

/// Stores a new snapshot object; another of the same name is refused.
async fn put_new(store: &dyn ObjectStore, key: &str, name: &str, object: Bytes) -> Result<(), SnapshotError> {
    match store.put_new(key, object.clone()).await {
        Ok(()) => Ok(()),
        // A PUT the SDK retried after a lost answer finds its own object.
        Err(StoreError::AlreadyExists) if store.get(key).await.is_ok_and(|b| b == object) => Ok(()),
        Err(StoreError::AlreadyExists) => Err(SnapshotError::Exists(name.to_string())),
        Err(e) => Err(e.into()),
    }
}

/// Copies the live metadata state in the store into a snapshot `name`.
pub async fn create(store: &dyn ObjectStore, ring: &Keyring, name: &str) -> Result<SnapshotInfo, SnapshotError> {
    let key = free_key(store, ring, name).await?;
    let mut stored = false;
    for _ in 0..ATTEMPTS {
        let Some(live) = live_state(store, ring).await? else {
            return Err(SnapshotError::NoState);
        };
        let (info, object) = seal(ring, &key, name, live.generation, &live.records)?;
        if stored {
            store.put(&key, object).await?;
        } else {
            put_new(store, &key, name, object).await?;
            stored = true;
        }
        if checkpoint::generations(store).await?.contains(&live.checkpoint) {
            return Ok(info);
        }
    }
    if stored {
        let _ = store.delete(&key).await;
    }
    Err(SnapshotError::Contended)
}

/// Copies the live state of a volume whose metadata is in PostgreSQL into
/// a snapshot `name`: the rows at one moment, their packs pinned in the
/// database by the same transaction until the snapshot object is deleted
/// (`delete_shared`), so that no host deletes one before the object that
/// keeps it is in the bucket.
pub async fn create_shared(
    store: &dyn ObjectStore,
    ring: &Keyring,
    db: &mut PgStore,
    name: &str,
) -> Result<SnapshotInfo, SnapshotError> {
    let key = free_key(store, ring, name).await?;
    let id = ring.snapshot_name_id(name.as_bytes());
    let records = db.export_pinned(&id)?;
    let stored = match seal(ring, &key, name, 0, &records) {
        Ok((info, object)) => put_new(store, &key, name, object).await.map(|()| info),
        Err(e) => Err(e),
    };
    if stored.is_err() {
        // Another create of this name stored its object first: that object
        // keeps its packs now.
        let _ = db.unpin_snapshot(&id, &[]);
    }
    stored
}

/// Deletes snapshot `name` of a volume whose metadata is in PostgreSQL,
/// then the data objects only it kept: its pins go, the packs no other
/// snapshot references become garbage, and those the database lets this
/// command claim (no chunk references them, no host fills them, no
/// snapshot pins them) are deleted. Returns how many.
pub async fn delete_shared(
    store: &dyn ObjectStore,
    ring: &Keyring,
    db: &mut PgStore,
    name: &str,
) -> Result<usize, SnapshotError> {
    let id = ring.snapshot_name_id(name.as_bytes());
    let snapshot = match load(store, ring, name).await {
        Err(SnapshotError::NotFound(name)) => {
            // Pins of a create that never stored its object.
            db.unpin_snapshot(&id, &[])?;
            return Err(SnapshotError::NotFound(name));
        }
        other => other?,
    };
    store.delete(&object_key(ring, name)).await?;
    let mut candidates: HashSet<ObjectId> = snapshot.packs().collect();
    for kept in referenced_packs(store, ring).await? {
        candidates.remove(&kept);
    }
    let candidates: Vec<ObjectId> = candidates.into_iter().collect();
    db.unpin_snapshot(&id, &candidates)?;
    let mut deleted = 0;
    for pack in db.claim_garbage(&candidates)? {
        if let Err(e) = store.delete(&crate::cache::data_key(&pack)).await {
            db.add_garbage(&pack)?;
            return Err(e.into());
        }
        deleted += 1;
    }
    Ok(deleted)
}

/// Reads snapshot `name`.
pub async fn load(store: &dyn ObjectStore, ring: &Keyring, name: &str) -> Result<Snapshot, SnapshotError> {
    validate_name(name)?;
    match read(store, ring, &object_key(ring, name)).await {
        Err(SnapshotError::Store(StoreError::NotFound)) => Err(SnapshotError::NotFound(name.to_string())),
        other => other,
    }
}

/// Every snapshot, oldest first.
pub async fn list(store: &dyn ObjectStore, ring: &Keyring) -> Result<Vec<Snapshot>, SnapshotError> {
    let mut all = Vec::new();
    for key in store.list(PREFIX).await? {
        match read(store, ring, &key).await {
            Ok(snapshot) => all.push(snapshot),
            // Deleted since the listing.
            Err(SnapshotError::Store(StoreError::NotFound)) => {}
            Err(e) => return Err(e),
        }
    }
    all.sort_by_key(|s| s.info.created_ns);
    Ok(all)
}

/// Every data object some snapshot references. A caller deciding whether a
/// pack may be deleted lists the metadata states it keeps *before* calling
/// this (see the module comment).
pub async fn referenced_packs(store: &dyn ObjectStore, ring: &Keyring) -> Result<HashSet<ObjectId>, SnapshotError> {
    Ok(list(store, ring).await?.iter().flat_map(Snapshot::packs).collect())
}

/// Deletes snapshot `name`, then the data objects only it referenced (not
/// the live state, any metadata state still in the store, nor another
/// snapshot). Returns how many objects were deleted.
pub async fn delete(store: &dyn ObjectStore, ring: &Keyring, name: &str) -> Result<usize, SnapshotError> {
    let snapshot = load(store, ring, name).await?;
    // The live state, which may reference packs no checkpoint does yet.
    // Without it nothing is deleted: absent is not empty. Read before the
    // snapshot goes, which is safe: a stored pack the live state no longer
    // references never comes back (ids are never reused, and only the
    // open pack, not yet stored, gets new chunks).
    let live = live_state(store, ring).await?.ok_or(SnapshotError::NoState)?;
    store.delete(&object_key(ring, name)).await?;
    let mut candidates: HashSet<ObjectId> = snapshot.packs().collect();
    for record in live.records {
        if let Record::Chunk { block, .. } = record {
            candidates.remove(&block.pack);
        }
    }
    // States first, snapshots second: a snapshot being created from a state
    // that is gone by now was stored before that state went (module comment).
    for generation in checkpoint::generations(store).await? {
        let Some(opened) = checkpoint::read(store, ring, generation).await? else {
            continue;
        };
        for record in opened.records {
            if let Record::Chunk { block, .. } = record {
                candidates.remove(&block.pack);
            }
        }
    }
    for id in referenced_packs(store, ring).await? {
        candidates.remove(&id);
    }
    let mut deleted = 0;
    for id in candidates {
        store.delete(&crate::cache::data_key(&id)).await?;
        deleted += 1;
    }
    Ok(deleted)
}
