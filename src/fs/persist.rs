//! Persisting the metadata state to the object store.
//!
//! A state is uploaded as one sealed snapshot object, `meta/<generation>.snap`
//! (20 zero-padded digits, so names sort by generation), always after the
//! data objects it references: blocks still waiting in the cache's upload
//! queue are pinned there and awaited first. Only then are older snapshots deleted, and after them the data
//! objects that no remaining snapshot references. A crash at any point
//! leaves the newest snapshot in the store consistent; at worst some
//! objects are orphaned (fsck reclaims them).

use super::{Core, FsError, FsResult};
use crate::cache::{BlockCache, data_key};
use crate::codec::{self, ObjectId};
use crate::keyring::Keyring;
use crate::meta::{MetaError, MetadataStore, decode_snapshot, encode_snapshot};
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

impl Core {
    /// Makes everything done so far durable in the object store: buffered
    /// data into the cache, then — once every block it references is
    /// uploaded — a metadata snapshot, then reclaims what the new snapshot no
    /// longer references. Waits for as long as uploads take; cancelling it
    /// (a timeout) leaves everything as if it had not started.
    pub async fn sync(&self) -> FsResult<()> {
        let _one_at_a_time = self.sync_lock.lock().await;
        self.flush_all().await?;
        if self.is_fenced() {
            return Err(FsError::EROFS);
        }
        if self.options.read_only || !self.changed.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        // Until the snapshot is in the store, the state counts as changed.
        let mut unsynced = Unsynced(&self.changed, true);
        let (key, sealed, garbage, generation, pending) = {
            let mut meta = self.meta();
            // Recorded before the upload: a database that may hold more than
            // the store's newest snapshot must count as newer at the next
            // mount, or a crash right after the upload would throw away what
            // changed since the export.
            let generation = meta.generation()? + 1;
            meta.set_generation(generation)?;
            let key = snapshot_key(generation);
            let plain = encode_snapshot(|sink| meta.export(sink))?;
            let garbage = meta.garbage()?;
            // Under the metadata lock, so no block the export references
            // can be dropped from the upload queue before we pin it.
            let pending = Pinned(&self.cache, self.cache.pin_pending());
            let sealed = Bytes::from(codec::seal_metadata(&self.ring, &key, &plain));
            (key, sealed, garbage, generation, pending)
        };
        self.cache.wait_uploaded(&pending.1).await;
        if self.is_fenced() {
            return Err(FsError::EROFS);
        }
        match self.store.put_new(&key, sealed.clone()).await {
            Ok(()) => {}
            // A PUT the SDK retried after a lost answer finds its own object.
            Err(StoreError::AlreadyExists) if self.store.get(&key).await.is_ok_and(|b| b == sealed) => {}
            Err(StoreError::AlreadyExists) => {
                self.fence("another writer uploaded the next metadata generation first");
                return Err(FsError::EROFS);
            }
            Err(e) => return Err(e.into()),
        }
        drop(pending);
        // Another writer that got further and reclaimed its older snapshots
        // frees names like ours: a newer generation means we lost too.
        if let Ok(gens) = snapshot_generations(self.store.as_ref()).await
            && gens.last().is_some_and(|newest| *newest > generation)
        {
            self.fence("another writer's newer metadata is in the store");
            let _ = self.store.delete(&key).await;
            return Err(FsError::EROFS);
        }
        unsynced.1 = false;
        tracing::debug!(generation, "metadata snapshot uploaded");
        self.reclaim(generation, garbage, true).await;
        Ok(())
    }

    /// Deletes metadata states older than `generation`, then the data
    /// objects that only they referenced, except those a named snapshot
    /// keeps. Failures are logged and retried next time.
    async fn reclaim(&self, generation: u64, garbage: Vec<ObjectId>, with_grace: bool) {
        let older = match snapshot_generations(self.store.as_ref()).await {
            Ok(gens) => gens.into_iter().filter(|g| *g < generation).collect::<Vec<_>>(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list old snapshots; will retry");
                return;
            }
        };
        for old in older {
            if let Err(e) = self.store.delete(&snapshot_key(old)).await {
                tracing::warn!(error = %e, "cannot delete an old snapshot; will retry");
                return;
            }
        }
        let ripe = if with_grace {
            self.ripe_garbage(&garbage)
        } else {
            garbage.into_iter().collect()
        };
        if ripe.is_empty() {
            return;
        }
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
        if let Err(e) = self.meta().remove_garbage(&settled) {
            tracing::warn!(error = %e, "cannot record reclaimed blocks");
        }
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

    /// At unmount: `sync_within(limit)`, then delete every block the live
    /// state no longer uses, grace period or not: once this mount is gone,
    /// nobody else would delete them.
    pub async fn final_sync(&self, limit: std::time::Duration) -> FsResult<()> {
        self.sync_within(limit).await?;
        if self.options.read_only || self.is_fenced() {
            return Ok(());
        }
        let (generation, garbage) = {
            let meta = self.meta();
            (meta.generation()?, meta.garbage()?)
        };
        if !garbage.is_empty()
            && tokio::time::timeout(limit, self.reclaim(generation, garbage, false))
                .await
                .is_err()
        {
            tracing::warn!("unused blocks not all deleted at unmount; the next mount of this cache deletes them");
        }
        Ok(())
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

    /// Whether metadata changed since the last snapshot.
    pub fn has_unsynced_changes(&self) -> bool {
        self.changed.load(Ordering::SeqCst)
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
