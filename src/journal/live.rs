//! The live state: the newest checkpoint plus the segments after it,
//! applied in order, each checked to follow its predecessor's chain head.
//! The writer deletes segments and older checkpoints after each
//! checkpoint, so a reader that meets a gap checks whether a newer
//! checkpoint appeared meanwhile and starts again from it; any other gap
//! fails the load (never "the state up to the gap").

use super::seen::Position;
use super::{StateError, checkpoint, segment};
use crate::keyring::Keyring;
use crate::meta::{MetaError, MetadataStore, Record, SqliteStore};
use crate::store::{ObjectStore, StoreError};

/// Attempts when the writer deletes what is being read.
const ATTEMPTS: usize = 10;

/// The generation of the live state: the newest checkpoint's plus the
/// consecutive segments after it (from listings only).
pub async fn newest_generation(store: &dyn ObjectStore) -> Result<Option<u64>, StoreError> {
    let Some(checkpoint) = checkpoint::newest(store).await? else {
        return Ok(None);
    };
    let segments = segment::numbers(store).await?;
    let mut generation = checkpoint;
    while segments.binary_search(&(generation + 1)).is_ok() {
        generation += 1;
    }
    Ok(Some(generation))
}

/// The live state's generation and chain head (from listings and the
/// newest segment, or right after `init` the checkpoint); `None` when the
/// volume has no checkpoint.
pub async fn newest_position(store: &dyn ObjectStore, ring: &Keyring) -> Result<Option<Position>, StateError> {
    let Some(generation) = newest_generation(store).await? else {
        return Ok(None);
    };
    let head = match segment::read(store, ring, generation).await? {
        Some(segment) => segment.head,
        None => checkpoint::read(store, ring, generation).await?.and_then(|c| c.head),
    };
    Ok(Some(Position { generation, head }))
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
    E: From<StateError> + From<StoreError> + From<MetaError>,
{
    for attempt in 1.. {
        let retry = attempt < ATTEMPTS;
        let Some(checkpoint) = checkpoint::newest(store).await? else {
            return Ok(None);
        };
        let mut meta = fresh()?;
        match checkpoint::load(store, ring, &mut meta, checkpoint).await {
            // Superseded by a newer checkpoint and deleted meanwhile.
            Err(StateError::Store(StoreError::NotFound)) if retry => continue,
            Err(e) => return Err(e.into()),
            Ok(()) => {}
        }
        let fetched = match segment::fetch_after(store, ring, checkpoint, meta.head()?).await {
            Ok(fetched) => fetched,
            // A gap the writer made by checkpointing and deleting the
            // segments we were about to read: the newer checkpoint is
            // listed by now.
            Err(StateError::Gap { .. }) if retry && newer_checkpoint(store, checkpoint).await? => continue,
            Err(e) => return Err(e.into()),
        };
        let generation = fetched.reached(checkpoint);
        if retry && newer_checkpoint(store, generation).await? {
            continue;
        }
        segment::apply_all(&mut meta, fetched)?;
        return Ok(Some(Loaded {
            meta,
            checkpoint,
            generation,
        }));
    }
    unreachable!("the loop returns at its last attempt")
}

/// Whether a checkpoint newer than `generation` is in the store.
async fn newer_checkpoint(store: &dyn ObjectStore, generation: u64) -> Result<bool, StoreError> {
    Ok(checkpoint::newest(store).await?.is_some_and(|c| c > generation))
}

/// The live state as records (for copying it into a snapshot or checking
/// it), with its generation and the checkpoint it was built on.
pub struct LiveState {
    pub checkpoint: u64,
    pub generation: u64,
    pub records: Vec<Record>,
}

/// Loads the live state in memory; `None` when the volume has no checkpoint.
pub async fn live_state(store: &dyn ObjectStore, ring: &Keyring) -> Result<Option<LiveState>, StateError> {
    let Some(loaded) = load_state(store, ring, || Ok::<_, StateError>(SqliteStore::in_memory()?)).await? else {
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
