//! Journal segments in the object store: `journal/<number>` (20 digits),
//! each a sealed run of metadata operations (`meta::journal`) taking the
//! state from generation `number - 1` to `number`. Checkpoints
//! (`meta/<number>.snap`) hold the full state of a generation. The live
//! state is the newest checkpoint plus the segments after it, applied in
//! order up to the first missing number.
//!
//! The writer uploads segment `n` create-only: whoever creates it owns
//! generation `n`, so a second writer finds it taken and stops (fencing).
//! After a checkpoint `c` the writer deletes the segments before `c` and the
//! older checkpoints; a reader that meets a gap checks whether a newer
//! checkpoint appeared meanwhile and starts again from it.
//! Layout: FORMAT.md, "Journal segments".

use super::persist::{RestoreError, restore, snapshot_generations};
use crate::codec;
use crate::keyring::Keyring;
use crate::meta::journal::{JournalOp, apply, decode_ops};
use crate::meta::{MetaError, MetadataStore, Record, SqliteStore, in_transaction};
use crate::store::{ObjectStore, StoreError};
use bytes::Bytes;

pub const PREFIX: &str = "journal/";
const VERSION: u8 = 1;
/// Attempts when the writer deletes what is being read.
const ATTEMPTS: usize = 10;

pub fn segment_key(number: u64) -> String {
    format!("{PREFIX}{number:020}")
}

/// The number of the segment with object key `key`.
pub fn segment_number(key: &str) -> Option<u64> {
    key.strip_prefix(PREFIX)?.parse().ok()
}

/// Numbers of the segments in the store, in order.
pub async fn segment_numbers(store: &dyn ObjectStore) -> Result<Vec<u64>, StoreError> {
    let mut numbers: Vec<u64> = store
        .list(PREFIX)
        .await?
        .iter()
        .filter_map(|k| segment_number(k))
        .collect();
    numbers.sort_unstable();
    Ok(numbers)
}

/// Seals encoded operations (back to back, as the journal table holds them)
/// as segment `number`.
pub fn seal_segment(ring: &Keyring, number: u64, ops: &[u8]) -> Bytes {
    let mut plain = Vec::with_capacity(1 + ops.len());
    plain.push(VERSION);
    plain.extend_from_slice(ops);
    Bytes::from(codec::seal_metadata(ring, &segment_key(number), &plain))
}

/// The encoded operations of segment `number`, `None` if it is not in the
/// store.
pub async fn read_segment(
    store: &dyn ObjectStore,
    ring: &Keyring,
    number: u64,
) -> Result<Option<Vec<u8>>, RestoreError> {
    let key = segment_key(number);
    let sealed = match store.get(&key).await {
        Ok(sealed) => sealed,
        Err(StoreError::NotFound) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut plain = codec::open_metadata(ring, &key, &sealed).map_err(|e| RestoreError::Integrity(number, e))?;
    if plain.first() != Some(&VERSION) {
        return Err(RestoreError::Meta(MetaError::Corrupt(format!(
            "journal segment {number}: unknown version"
        ))));
    }
    plain.remove(0);
    Ok(Some(plain))
}

/// The segments after generation `after`, in order, up to the first
/// missing one.
pub async fn fetch_after(
    store: &dyn ObjectStore,
    ring: &Keyring,
    after: u64,
) -> Result<Vec<(u64, Vec<JournalOp>)>, RestoreError> {
    let mut segments = Vec::new();
    let mut next = after + 1;
    while let Some(ops) = read_segment(store, ring, next).await? {
        segments.push((next, decode_ops(&ops)?));
        next += 1;
    }
    Ok(segments)
}

/// Applies fetched segments to `meta` in one transaction and moves it to
/// the generation of the last.
pub fn apply_segments(meta: &mut dyn MetadataStore, segments: Vec<(u64, Vec<JournalOp>)>) -> Result<(), MetaError> {
    let Some(last) = segments.last().map(|(n, _)| *n) else {
        return Ok(());
    };
    in_transaction(meta, |meta| {
        for op in segments.into_iter().flat_map(|(_, ops)| ops) {
            apply(meta, op)?;
        }
        meta.set_generation(last)
    })
}

/// If the encoded operations `ops` (a segment found in the store) are the
/// first entries of `meta`'s journal — this cache uploaded them, and then
/// lost the answer or crashed — the sequence number of the last of them.
pub fn journal_prefix(meta: &dyn MetadataStore, ops: &[u8]) -> Result<Option<u64>, MetaError> {
    let mut mine = Vec::with_capacity(ops.len());
    let mut upto = 0;
    let mut after = 0;
    while mine.len() < ops.len() {
        let entries = meta.journal_after(after, 1024)?;
        let Some((last, _)) = entries.last() else { break };
        after = *last;
        for (seq, op) in entries {
            if mine.len() >= ops.len() {
                break;
            }
            mine.extend_from_slice(&op);
            upto = seq;
        }
    }
    Ok((mine == ops).then_some(upto))
}

/// The newest checkpoint's generation, if any.
pub async fn newest_checkpoint(store: &dyn ObjectStore) -> Result<Option<u64>, StoreError> {
    Ok(snapshot_generations(store).await?.last().copied())
}

/// The generation of the live state: the newest checkpoint's plus the
/// consecutive segments after it (from listings only).
pub async fn newest_generation(store: &dyn ObjectStore) -> Result<Option<u64>, StoreError> {
    let Some(checkpoint) = newest_checkpoint(store).await? else {
        return Ok(None);
    };
    let segments = segment_numbers(store).await?;
    let mut generation = checkpoint;
    while segments.binary_search(&(generation + 1)).is_ok() {
        generation += 1;
    }
    Ok(Some(generation))
}

/// A live state loaded from the store.
pub struct Loaded<M> {
    pub meta: M,
    /// The checkpoint it was built on.
    pub checkpoint: u64,
    pub generation: u64,
}

/// Loads the live state into a store `fresh` makes (empty each time it is
/// called; called again when the writer moves on while we read); `None`
/// when the volume has no checkpoint.
pub async fn load_state<M, E>(
    store: &dyn ObjectStore,
    ring: &Keyring,
    mut fresh: impl FnMut() -> Result<M, E>,
) -> Result<Option<Loaded<M>>, E>
where
    M: MetadataStore,
    E: From<RestoreError> + From<StoreError> + From<MetaError>,
{
    for attempt in 1.. {
        let retry = attempt < ATTEMPTS;
        let Some(checkpoint) = newest_checkpoint(store).await? else {
            return Ok(None);
        };
        let mut meta = fresh()?;
        match restore(store, ring, &mut meta, checkpoint).await {
            // Superseded by a newer checkpoint and deleted meanwhile.
            Err(RestoreError::Store(StoreError::NotFound)) if retry => continue,
            Err(e) => return Err(e.into()),
            Ok(()) => {}
        }
        let segments = fetch_after(store, ring, checkpoint).await?;
        let generation = segments.last().map_or(checkpoint, |(n, _)| *n);
        // A gap the writer made by checkpointing and deleting the segments
        // we were about to read: the newer checkpoint is listed by now.
        if retry && newest_checkpoint(store).await?.is_some_and(|c| c > generation) {
            continue;
        }
        apply_segments(&mut meta, segments)?;
        return Ok(Some(Loaded {
            meta,
            checkpoint,
            generation,
        }));
    }
    unreachable!("the loop returns at its last attempt")
}

/// The live state as records (for copying it into a snapshot or checking
/// it), with its generation and the checkpoint it was built on.
pub struct LiveState {
    pub checkpoint: u64,
    pub generation: u64,
    pub records: Vec<Record>,
}

/// Loads the live state in memory; `None` when the volume has no checkpoint.
pub async fn live_state(store: &dyn ObjectStore, ring: &Keyring) -> Result<Option<LiveState>, RestoreError> {
    let Some(loaded) = load_state(store, ring, || Ok::<_, RestoreError>(SqliteStore::in_memory()?)).await? else {
        return Ok(None);
    };
    let mut records = Vec::new();
    loaded.meta.export(&mut |r| records.push(r))?;
    Ok(Some(LiveState {
        checkpoint: loaded.checkpoint,
        generation: loaded.generation,
        records,
    }))
}
