//! The core's side of persistence: syncs (fsync, the periodic upload, the
//! unmount's last sync) through the journal writer, and a read-only
//! follower taking in the writer's newer states. What goes to the store,
//! and when, is the persistence layer's business (`crate::journal`).

use super::{Core, FsError, FsResult};
use crate::journal::anchor::Anchor;
use crate::journal::seen::SeenFile;
use crate::journal::segment::Fetched;
use crate::journal::{self, FINAL_SYNC_LIMIT};
use crate::meta::{ChainHead, MetadataStore};
use std::sync::Arc;

impl Core {
    /// Makes everything done so far durable in the object store: buffered
    /// data into the cache, then the metadata naming it (see
    /// `journal::Writer::sync`). Waits for as long as uploads take.
    pub async fn sync(&self) -> FsResult<()> {
        self.journal.sync(false, self.flush_and_settle()).await
    }

    /// Commits every buffered file, then sends the releases of holds it
    /// and earlier closes queued (`settle_releases`). A database that does
    /// not answer does not stop the data's upload: the releases wait for
    /// the next sync, or the holds for this host's next mount.
    async fn flush_and_settle(&self) -> FsResult<()> {
        self.flush_all().await?;
        self.keep_locks_alive();
        if let Err(e) = self.settle_releases() {
            tracing::warn!(error = %e, "cannot release closed files' holds yet; will retry");
        }
        Ok(())
    }

    /// At unmount: a sync within `FINAL_SYNC_LIMIT`, with a checkpoint if
    /// anything waits for one, and every block the live state no longer
    /// uses deleted, grace period or not: once this mount is gone, nobody
    /// else would delete them.
    pub async fn final_sync(&self) -> FsResult<()> {
        // An unmount does not wait out a database outage: requests that
        // wait fail instead, and the sync fails (the mount stays) unless
        // the database answers. A mount that stays keeps its policy.
        let policy = self.outage_policy();
        self.set_outage_policy(crate::meta::OutagePolicy::Fail);
        let synced = tokio::time::timeout(FINAL_SYNC_LIMIT, self.journal.sync(true, self.flush_and_settle()))
            .await
            .unwrap_or(Err(FsError::ETIMEDOUT));
        if synced.is_err() {
            self.set_outage_policy(policy);
        }
        synced
    }

    /// What requests do while the shared database is unreachable.
    pub fn outage_policy(&self) -> crate::meta::OutagePolicy {
        self.database
            .as_ref()
            .map(|d| d.status().outage_policy)
            .unwrap_or_default()
    }

    /// Sets what requests (metadata and locks) do while the shared
    /// database is unreachable; nothing for an embedded volume.
    pub fn set_outage_policy(&self, policy: crate::meta::OutagePolicy) {
        if let Some(database) = &self.database {
            database.set_outage_policy(policy);
        }
        if let Some(locks) = &self.locks {
            locks.set_outage_policy(policy);
        }
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

    /// Applies the writer's newer journal segments (a read-only follower
    /// catching up).
    pub fn follow(&self, fetched: Fetched) -> FsResult<()> {
        journal::segment::apply_all(self.meta().as_mut(), fetched)?;
        self.forget_dir_paths();
        self.journal.note_state();
        Ok(())
    }

    /// Replaces the whole metadata state with a newer one from the store (a
    /// read-only follower catching up).
    pub fn replace_metadata(&self, meta: Box<dyn MetadataStore>) {
        *self.meta() = meta;
        self.forget_dir_paths();
        self.journal.note_state();
    }

    /// The generation of the metadata state in use.
    pub fn generation(&self) -> FsResult<u64> {
        Ok(self.meta().generation()?)
    }

    /// Keeps the cache directory's record of the newest state seen up to
    /// date with every segment uploaded or followed.
    pub fn remember_in(&self, seen: Arc<SeenFile>) {
        self.journal.remember_in(seen);
    }

    /// Lays the volume's anchors as the state moves on (`Writer::anchor_over`).
    pub fn anchor_over(&self, newest: Option<Anchor>, retain_for: std::time::Duration, revision: u64) {
        self.journal.anchor_over(newest, retain_for, revision);
    }

    /// The journal chain head at `generation()`, if known.
    pub fn head(&self) -> FsResult<Option<ChainHead>> {
        Ok(self.meta().head()?)
    }

    /// Whether the kernel may keep a file's pages across opens: not when
    /// another host's writes can change the file under it.
    pub fn keeps_page_cache(&self) -> bool {
        !self.options.follower && !self.options.shared_metadata
    }

    /// Whether metadata changed since the last journal segment reached the
    /// store (or a sync is under way).
    pub fn has_unsynced_changes(&self) -> bool {
        self.journal.has_unsynced_changes()
    }

    /// Stops writing for good: another writer took the volume over.
    pub fn fence(&self, why: &str) {
        self.journal.fence(why);
    }

    pub fn is_fenced(&self) -> bool {
        self.journal.is_fenced()
    }

    pub fn volume_id(&self) -> &crate::keyring::VolumeId {
        self.ring.volume_id()
    }

    /// Marks the state as differing from the newest segment in the store.
    pub fn mark_changed(&self) {
        self.journal.mark_changed();
    }
}
