//! Persisting the metadata state to the object store.
//!
//! Every change is recorded in the local database's journal as it commits.
//! `sync` (every --metadata-interval, and at fsync) uploads what the journal
//! holds as the next segment, `journal/<generation>`, create-only, always
//! after the data objects it references: blocks still waiting in the
//! cache's upload queue are pinned there and awaited first. Every minute or
//! so the sync also uploads a checkpoint, `meta/<generation>.snap` (the
//! full state), then deletes the older checkpoints and segments, and after
//! them the data objects the checkpoint no longer references. A crash at
//! any point leaves the newest checkpoint plus its segments consistent; at
//! worst some objects are orphaned (fsck reclaims them).

use super::segments::{self, segment_key};
use super::{Core, FsError, FsResult};
use crate::cache::{BlockCache, data_key};
use crate::codec::{self, ObjectId};
use crate::keyring::Keyring;
use crate::meta::{MetaError, MetadataStore, decode_snapshot, encode_snapshot, in_transaction};
use crate::store::{ObjectStore, StoreError};
use bytes::Bytes;
use std::sync::atomic::Ordering;

const SNAPSHOT_PREFIX: &str = "meta/";
const SNAPSHOT_SUFFIX: &str = ".snap";

pub fn snapshot_key(generation: u64) -> String {
    format!("{SNAPSHOT_PREFIX}{generation:020}{SNAPSHOT_SUFFIX}")
}

fn snapshot_generation(key: &str) -> Option<u64> {
    key.strip_prefix(SNAPSHOT_PREFIX)?
        .strip_suffix(SNAPSHOT_SUFFIX)?
        .parse()
        .ok()
}

/// Generations of the snapshots in the store, oldest first.
pub async fn snapshot_generations(store: &dyn ObjectStore) -> Result<Vec<u64>, StoreError> {
    let mut gens: Vec<u64> = store
        .list(SNAPSHOT_PREFIX)
        .await?
        .iter()
        .filter_map(|k| snapshot_generation(k))
        .collect();
    gens.sort_unstable();
    Ok(gens)
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("metadata snapshot {0} failed its integrity check: {1}")]
    Integrity(u64, codec::CodecError),
    #[error(transparent)]
    Meta(#[from] MetaError),
}

/// Loads snapshot `generation` from the store into an empty metadata store.
pub async fn restore(
    store: &dyn ObjectStore,
    ring: &Keyring,
    meta: &mut dyn MetadataStore,
    generation: u64,
) -> Result<(), RestoreError> {
    let key = snapshot_key(generation);
    let sealed = store.get(&key).await?;
    let plain = codec::open_metadata(ring, &key, &sealed).map_err(|e| RestoreError::Integrity(generation, e))?;
    let records = decode_snapshot(&plain)?;
    meta.import(&mut records.into_iter())?;
    meta.set_generation(generation)?;
    Ok(())
}

/// Seals the whole state of `meta` as snapshot `generation` and uploads it.
pub async fn upload_snapshot(
    store: &dyn ObjectStore,
    ring: &Keyring,
    meta: &dyn MetadataStore,
    generation: u64,
) -> Result<(), RestoreError> {
    let key = snapshot_key(generation);
    let plain = encode_snapshot(|sink| meta.export(sink))?;
    store
        .put(&key, Bytes::from(codec::seal_metadata(ring, &key, &plain)))
        .await?;
    Ok(())
}

/// Journal entries in one segment at most (a few MiB).
pub(super) const SEGMENT_OPS: usize = 50_000;

/// Segments between checkpoints at most, whatever the interval.
const CHECKPOINT_SEGMENTS: u32 = 64;

/// When the next checkpoint is due.
#[derive(Debug)]
pub(super) struct Checkpoints {
    /// The last checkpoint of this mount; `None` before the first, which
    /// the first sync makes.
    last: Option<std::time::Instant>,
    /// Segments uploaded since.
    segments: u32,
    /// Unused blocks wait for a checkpoint to be deleted after (at mount:
    /// maybe, from an earlier mount of this cache).
    garbage_waiting: bool,
}

impl Default for Checkpoints {
    fn default() -> Self {
        Checkpoints {
            last: None,
            segments: 0,
            garbage_waiting: true,
        }
    }
}

/// A journal segment ready for upload, with the checkpoint going with it.
struct Prepared<'a> {
    generation: u64,
    /// The journal's last entry in the segment.
    upto: u64,
    /// Whether the journal holds entries after `upto`.
    more: bool,
    sealed: Bytes,
    /// The full state at `generation`, sealed, and the blocks it no longer
    /// references.
    checkpoint: Option<(Bytes, Vec<ObjectId>)>,
    /// Blocks the segment (or checkpoint) may reference, pinned in the
    /// upload queue until it is in the store.
    pending: Pinned<'a>,
}

impl Core {
    /// Makes everything done so far durable in the object store: buffered
    /// data into the cache, then — once every block it references is
    /// uploaded — the metadata changes as the next journal segment (and,
    /// when one is due, a checkpoint), then reclaims what the checkpoint no
    /// longer references. Waits for as long as uploads take; cancelling it
    /// (a timeout) leaves everything as if it had not started.
    pub async fn sync(&self) -> FsResult<()> {
        self.sync_with(false).await
    }

    /// `sync`; `last` (at unmount) forces a checkpoint if anything waits
    /// for one and reclaims without grace period.
    async fn sync_with(&self, last: bool) -> FsResult<()> {
        let _one_at_a_time = self.sync_lock.lock().await;
        self.flush_all().await?;
        if self.is_fenced() {
            return Err(FsError::EROFS);
        }
        if self.options.read_only {
            return Ok(());
        }
        let checkpoint = last || self.checkpoint_due();
        let waiting = {
            let c = self.checkpoints();
            c.garbage_waiting || c.segments > 0
        };
        let changed = self.changed.swap(false, Ordering::SeqCst);
        let wanted = changed || (checkpoint && waiting);
        if !wanted {
            return Ok(());
        }
        // Until the journal is in the store, the state counts as changed.
        let mut unsynced = Unsynced(&self.changed, true);
        while let Some(uploaded) = self.upload_segment(checkpoint).await? {
            tracing::debug!(generation = uploaded.generation, "journal segment uploaded");
            match uploaded.checkpoint {
                Some((sealed, garbage)) => {
                    self.upload_checkpoint(uploaded.generation, sealed, garbage, !last)
                        .await
                }
                None => self.checkpoints().segments += 1,
            }
            if !uploaded.more {
                break;
            }
        }
        unsynced.1 = false;
        Ok(())
    }

    /// Uploads the journal (up to `SEGMENT_OPS` entries of it) as the next
    /// segment; `None` if there was nothing to upload.
    async fn upload_segment(&self, checkpoint: bool) -> FsResult<Option<Prepared<'_>>> {
        let prepared = loop {
            let Some(prepared) = self.prepare(checkpoint)? else {
                return Ok(None);
            };
            self.cache.wait_uploaded(&prepared.pending.1).await;
            if self.is_fenced() {
                return Err(FsError::EROFS);
            }
            let key = segment_key(prepared.generation);
            match self.store.put_new(&key, prepared.sealed.clone()).await {
                Ok(()) => break prepared,
                // Ours, from an attempt whose answer was lost: taken as
                // done, and the rest of the journal goes in the next one.
                Err(StoreError::AlreadyExists) => self.adopt_or_fence(prepared.generation).await?,
                Err(e) => return Err(e.into()),
            }
        };
        let generation = prepared.generation;
        self.record_uploaded(prepared.upto, generation)?;
        // A writer that took over and checkpointed past us deletes the
        // segments it covers, freeing names like ours: we lost.
        if segments::newest_checkpoint(self.store.as_ref())
            .await
            .is_ok_and(|newest| newest.is_some_and(|c| c >= generation))
        {
            self.fence("another writer's newer metadata is in the store");
            let _ = self.store.delete(&segment_key(generation)).await;
            return Err(FsError::EROFS);
        }
        Ok(Some(prepared))
    }

    fn checkpoints(&self) -> std::sync::MutexGuard<'_, Checkpoints> {
        self.checkpoints.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn checkpoint_due(&self) -> bool {
        let c = self.checkpoints();
        c.segments >= CHECKPOINT_SEGMENTS || c.last.is_none_or(|t| t.elapsed() >= self.options.checkpoint_interval)
    }

    /// Takes the journal (and the full state for a checkpoint) under the
    /// metadata lock; `None` if there is nothing to upload.
    fn prepare(&self, checkpoint: bool) -> FsResult<Option<Prepared<'_>>> {
        let meta = self.meta();
        let entries = meta.journal_after(0, SEGMENT_OPS)?;
        if entries.is_empty() && !checkpoint {
            return Ok(None);
        }
        // A long outage leaves a long journal: it goes up in bounded
        // segments, the checkpoint with the last.
        let more = entries.len() == SEGMENT_OPS;
        let checkpoint = checkpoint && !more;
        let generation = meta.generation()? + 1;
        let upto = entries.last().map_or(0, |(seq, _)| *seq);
        let ops: Vec<u8> = entries.into_iter().flat_map(|(_, op)| op).collect();
        let checkpoint = if checkpoint {
            let key = snapshot_key(generation);
            let plain = encode_snapshot(|sink| meta.export(sink))?;
            let sealed = Bytes::from(codec::seal_metadata(&self.ring, &key, &plain));
            Some((sealed, meta.garbage()?))
        } else {
            None
        };
        // Under the metadata lock, so no block the journal references can
        // be dropped from the upload queue before we pin it.
        let pending = Pinned(&self.cache, self.cache.pin_pending());
        drop(meta);
        Ok(Some(Prepared {
            generation,
            upto,
            more,
            sealed: segments::seal_segment(&self.ring, generation, &ops),
            checkpoint,
            pending,
        }))
    }

    /// Segment `generation` is in the store already. If its operations
    /// begin our journal, this cache uploaded it (the answer was lost, or
    /// the daemon crashed before noting it): noted now. Otherwise another
    /// writer owns the generation, and this mount is fenced.
    async fn adopt_or_fence(&self, generation: u64) -> FsResult<()> {
        let theirs = segments::read_segment(self.store.as_ref(), &self.ring, generation).await?;
        let ours = match &theirs {
            Some(ops) => segments::journal_prefix(self.meta().as_ref(), ops)?,
            None => None,
        };
        match ours {
            Some(upto) => {
                self.record_uploaded(upto, generation)?;
                self.checkpoints().segments += 1;
                Ok(())
            }
            None => {
                self.fence("another writer uploaded the next metadata generation first");
                Err(FsError::EROFS)
            }
        }
    }

    /// Notes that the journal up to entry `upto` is in the store as
    /// segment `generation`: both at once, or a crash in between would make
    /// the next mount take its own segment for another writer's.
    fn record_uploaded(&self, upto: u64, generation: u64) -> FsResult<()> {
        Ok(in_transaction(self.meta().as_mut(), |meta| {
            meta.trim_journal(upto)?;
            meta.set_generation(generation)
        })?)
    }

    /// Uploads the checkpoint of `generation`, then reclaims what it made
    /// unnecessary. A failure only delays both to the next sync.
    async fn upload_checkpoint(&self, generation: u64, sealed: Bytes, garbage: Vec<ObjectId>, with_grace: bool) {
        if let Err(e) = self.store.put(&snapshot_key(generation), sealed).await {
            tracing::warn!(error = %e, "cannot upload a metadata checkpoint; will retry");
            return;
        }
        {
            let mut c = self.checkpoints();
            c.last = Some(std::time::Instant::now());
            c.segments = 0;
        }
        tracing::debug!(generation, "metadata checkpoint uploaded");
        self.reclaim(generation, garbage, with_grace).await;
    }

    /// After checkpoint `generation`: deletes the older checkpoints and the
    /// segments they cover, then the data objects the checkpoint no longer
    /// references (`garbage`), except those a named snapshot keeps.
    /// Failures are logged and retried after the next checkpoint.
    async fn reclaim(&self, generation: u64, garbage: Vec<ObjectId>, with_grace: bool) {
        self.checkpoints().garbage_waiting = true;
        if let Err(e) = self.delete_superseded(generation).await {
            tracing::warn!(error = %e, "cannot delete superseded metadata; will retry");
            return;
        }
        let ripe = if with_grace {
            self.ripe_garbage(&garbage)
        } else {
            garbage.iter().copied().collect()
        };
        if ripe.is_empty() {
            self.checkpoints().garbage_waiting = !garbage.is_empty();
            return;
        }
        let all_ripe = ripe.len() == garbage.len();
        // Listed only now that every superseded state is gone (see
        // `snapshots`): a snapshot copying one of them is visible by now.
        let kept = match crate::snapshots::referenced_blocks(self.store.as_ref(), &self.ring).await {
            Ok(kept) => kept,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the volume's snapshots; will retry");
                return;
            }
        };
        // Blocks a snapshot keeps are forgotten too: deleting the snapshot
        // reclaims them.
        let mut settled = Vec::with_capacity(ripe.len());
        for id in ripe {
            if kept.contains(&id) {
                settled.push(id);
                continue;
            }
            self.cache.remove(&id);
            match self.store.delete(&data_key(&id)).await {
                Ok(()) => settled.push(id),
                Err(e) => tracing::warn!(error = %e, "cannot delete an unreferenced block; will retry"),
            }
        }
        let all_settled = all_ripe && settled.len() == garbage.len();
        if let Err(e) = self.meta().remove_garbage(&settled) {
            tracing::warn!(error = %e, "cannot record reclaimed blocks");
            return;
        }
        self.checkpoints().garbage_waiting = !all_settled;
    }

    /// Deletes the checkpoints older than `generation` and the segments
    /// before it (its own stays: it marks the generation as taken).
    async fn delete_superseded(&self, generation: u64) -> Result<(), StoreError> {
        let store = self.store.as_ref();
        for old in snapshot_generations(store)
            .await?
            .into_iter()
            .filter(|g| *g < generation)
        {
            store.delete(&snapshot_key(old)).await?;
        }
        for old in segments::segment_numbers(store)
            .await?
            .into_iter()
            .filter(|n| *n < generation)
        {
            store.delete(&segment_key(old)).await?;
        }
        Ok(())
    }

    /// The unreferenced blocks whose grace period is over (the others are
    /// noted as seen now, if they were not yet).
    fn ripe_garbage(&self, garbage: &[ObjectId]) -> std::collections::HashSet<ObjectId> {
        let now = std::time::Instant::now();
        let mut seen = self.garbage_seen.lock().unwrap_or_else(|e| e.into_inner());
        let current: std::collections::HashSet<&ObjectId> = garbage.iter().collect();
        seen.retain(|id, _| current.contains(id));
        garbage
            .iter()
            .filter(|id| now.duration_since(*seen.entry(**id).or_insert(now)) >= self.options.reclaim_grace)
            .copied()
            .collect()
    }

    /// Applies the writer's newer journal segments (a read-only follower
    /// catching up).
    pub fn follow(&self, segments: Vec<(u64, Vec<crate::meta::journal::JournalOp>)>) -> FsResult<()> {
        segments::apply_segments(self.meta().as_mut(), segments)?;
        self.forget_dir_paths();
        Ok(())
    }

    /// Replaces the whole metadata state with a newer one from the store (a
    /// read-only follower catching up).
    pub fn replace_metadata(&self, meta: Box<dyn MetadataStore>) {
        *self.meta() = meta;
        self.forget_dir_paths();
    }

    /// The generation of the metadata state in use.
    pub fn generation(&self) -> FsResult<u64> {
        Ok(self.meta().generation()?)
    }

    /// Whether the kernel may keep a file's pages across opens.
    pub fn keeps_page_cache(&self) -> bool {
        !self.options.follower
    }

    /// At unmount: `sync_within(limit)`, with a checkpoint if anything
    /// waits for one, and every block the live state no longer uses
    /// deleted, grace period or not: once this mount is gone, nobody else
    /// would delete them.
    pub async fn final_sync(&self, limit: std::time::Duration) -> FsResult<()> {
        tokio::time::timeout(limit, self.sync_with(true))
            .await
            .unwrap_or(Err(FsError::ETIMEDOUT))
    }

    /// `sync`, giving up after `limit` (an unreachable store): the unmount
    /// paths use it, so a dead endpoint cannot hang them for ever. What is
    /// not uploaded stays in the cache for the next mount.
    pub async fn sync_within(&self, limit: std::time::Duration) -> FsResult<()> {
        tokio::time::timeout(limit, self.sync())
            .await
            .unwrap_or(Err(FsError::ETIMEDOUT))
    }

    /// fsync(2): the file's data and the metadata naming it reach the store.
    pub async fn fsync(&self, ino: u64) -> FsResult<()> {
        self.flush(ino).await?;
        self.sync().await
    }

    /// Whether metadata changed since the last journal segment reached the
    /// store. A sync under way counts as unsynced: it cleared the flag when
    /// it took the changes, not when they landed.
    pub fn has_unsynced_changes(&self) -> bool {
        self.changed.load(Ordering::SeqCst) || self.sync_lock.try_lock().is_err()
    }
}

/// Marks the state changed again unless disarmed (`.1 = false`).
struct Unsynced<'a>(&'a std::sync::atomic::AtomicBool, bool);

impl Drop for Unsynced<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

/// Blocks a snapshot being uploaded references, pinned in the upload queue.
struct Pinned<'a>(&'a BlockCache, Vec<ObjectId>);

impl Drop for Pinned<'_> {
    fn drop(&mut self) {
        self.0.unpin(&self.1);
    }
}

impl From<RestoreError> for FsError {
    fn from(e: RestoreError) -> Self {
        tracing::error!(error = %e, "metadata restore failed");
        FsError::EIO
    }
}
