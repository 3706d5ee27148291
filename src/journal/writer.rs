//! The core's end of the persistence layer: making the local metadata
//! state durable in the object store.
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

use super::anchor::{self, Anchor};
use super::seen::{Position, Seen, SeenFile};
use super::{StateError, checkpoint, segment, snapshots};
use crate::cache::{CacheError, PackCache, Packer, data_key};
use crate::codec::ObjectId;
use crate::keyring::Keyring;
use crate::meta::{ChainHead, MetaError, MetadataStore, in_transaction};
use crate::store::{ObjectStore, StoreError};
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Journal entries in one segment at most (a few MiB).
pub const SEGMENT_OPS: usize = 50_000;

/// Bytes of operations in one segment at most (a segment holds at least
/// one entry, at most some 64 KiB).
const SEGMENT_BYTES: usize = 64 << 20;

/// Segments between checkpoints at most, whatever the interval.
const CHECKPOINT_SEGMENTS: u32 = 64;

/// How long an unmount waits for its last sync before it gives up and
/// leaves the rest in the cache directory for the next mount.
pub const FINAL_SYNC_LIMIT: Duration = Duration::from_secs(60);

/// Why a sync did not complete.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("another writer has taken the volume over")]
    Fenced,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot cut the open pack for upload: {0}")]
    Cache(String),
}

#[derive(Clone, Debug)]
pub struct WriterOptions {
    /// A read-only mount: syncs upload nothing.
    pub read_only: bool,
    /// How often, at most, a sync uploads a full checkpoint besides its
    /// journal segment (zero: every sync).
    pub checkpoint_interval: Duration,
    /// How long a block the live state stopped using stays in the store
    /// before it is deleted.
    pub reclaim_grace: Duration,
    /// The metadata is in a shared database, durable at each commit: a
    /// sync makes the data it names durable and reclaims, nothing more.
    pub shared_metadata: bool,
}

/// The metadata database shared by the core and its writer.
pub type SharedMeta = Arc<Mutex<Box<dyn MetadataStore>>>;

/// Uploads a mount's metadata changes: segments, checkpoints, reclaim.
/// Owned by the filesystem core, which marks changes and calls `sync`.
pub struct Writer {
    meta: SharedMeta,
    store: Arc<dyn ObjectStore>,
    cache: Arc<PackCache>,
    ring: Arc<Keyring>,
    options: WriterOptions,
    /// Set by every metadata change; cleared when a sync takes them.
    changed: AtomicBool,
    /// Another writer took the volume over: read-only from now on.
    fenced: AtomicBool,
    sync_lock: tokio::sync::Mutex<()>,
    checkpoints: Mutex<Checkpoints>,
    /// When each unreferenced block was first seen by a reclaim, for
    /// `WriterOptions::reclaim_grace`.
    garbage_seen: Mutex<HashMap<ObjectId, Instant>>,
    /// The cache directory's record of the newest state seen, advanced
    /// with every segment uploaded.
    seen: OnceLock<Arc<SeenFile>>,
    /// Where the bucket keeps anchors (S3 Object Lock).
    anchoring: Mutex<Option<Anchoring>>,
    /// Told of every checkpoint uploaded (the audit trail).
    checkpointed: OnceLock<Box<dyn Fn(Position) + Send + Sync>>,
}

/// The anchors this writer lays (`anchor`).
#[derive(Debug)]
struct Anchoring {
    /// The newest anchor in the store, as far as this writer knows.
    newest: Option<Anchor>,
    retain_for: Duration,
    /// The superblock revision the mount unlocked.
    revision: u64,
}

/// When the next checkpoint is due.
#[derive(Debug)]
struct Checkpoints {
    /// The last checkpoint of this mount; `None` before the first, which
    /// the first sync makes.
    last: Option<Instant>,
    /// Segments uploaded since.
    segments: u32,
    /// Unused blocks wait for a checkpoint to be deleted after (at mount:
    /// maybe, from an earlier mount of this cache).
    garbage_waiting: bool,
}

/// A journal segment ready for upload, with the checkpoint going with it.
struct Prepared<'a> {
    generation: u64,
    /// The chain head after the segment.
    head: ChainHead,
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

impl Writer {
    pub fn new(
        meta: SharedMeta,
        store: Arc<dyn ObjectStore>,
        cache: Arc<PackCache>,
        ring: Arc<Keyring>,
        options: WriterOptions,
    ) -> Writer {
        Writer {
            meta,
            store,
            cache,
            ring,
            options,
            changed: AtomicBool::new(false),
            fenced: AtomicBool::new(false),
            sync_lock: tokio::sync::Mutex::new(()),
            checkpoints: Mutex::new(Checkpoints {
                last: None,
                segments: 0,
                garbage_waiting: true,
            }),
            garbage_seen: Mutex::new(HashMap::new()),
            seen: OnceLock::new(),
            anchoring: Mutex::new(None),
            checkpointed: OnceLock::new(),
        }
    }

    /// Calls `tell` with the position of every checkpoint uploaded.
    pub fn on_checkpoint(&self, tell: Box<dyn Fn(Position) + Send + Sync>) {
        let _ = self.checkpointed.set(tell);
    }

    /// Lays anchors over `newest` (the newest in the store), retained for
    /// `retain_for`, as the state moves on: the bucket has Object Lock.
    pub fn anchor_over(&self, newest: Option<Anchor>, retain_for: Duration, revision: u64) {
        *self.anchoring.lock().unwrap_or_else(|e| e.into_inner()) = Some(Anchoring {
            newest,
            retain_for,
            revision,
        });
    }

    /// Keeps `seen` up to date with every segment this writer uploads.
    pub fn remember_in(&self, seen: Arc<SeenFile>) {
        let _ = self.seen.set(seen);
    }

    /// Marks the state as differing from the newest segment in the store.
    pub fn mark_changed(&self) {
        self.changed.store(true, Ordering::SeqCst);
    }

    /// Whether metadata changed since the last journal segment reached the
    /// store. A sync under way counts as unsynced: it cleared the flag when
    /// it took the changes, not when they landed.
    pub fn has_unsynced_changes(&self) -> bool {
        self.changed.load(Ordering::SeqCst) || self.sync_lock.try_lock().is_err()
    }

    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::SeqCst)
    }

    /// Stops writing for good: another host took the volume over (its
    /// metadata generation got there first). Nothing more is uploaded;
    /// changes not yet in the store stay in the cache directory until its
    /// next mount, which rebuilds the metadata from the store.
    pub fn fence(&self, why: &str) {
        if !self.fenced.swap(true, Ordering::SeqCst) {
            self.cache.pause();
            // The next mount of this cache directory must rebuild from the
            // store, not upload this diverged state over the new writer's.
            if let Err(e) = self.meta().set_generation(0) {
                tracing::error!(error = %e, "cannot mark the local metadata as superseded");
            }
            tracing::error!(
                reason = why,
                "FENCED: another writer has taken this volume over; the mount is now read-only and \
                 unuploaded changes stay in the cache directory"
            );
        }
    }

    /// Runs `flush` (the core committing buffered file data into the
    /// cache), then makes the metadata durable: once every block it
    /// references is uploaded, the journal goes up as the next segment
    /// (and, when one is due, a checkpoint), then what the checkpoint no
    /// longer references is reclaimed. One sync at a time; cancelling it (a
    /// timeout) leaves everything as if it had not started. `last` (at
    /// unmount) forces a checkpoint if anything waits for one and reclaims
    /// without grace period.
    pub async fn sync<E: From<SyncError>>(
        &self,
        last: bool,
        flush: impl Future<Output = Result<(), E>>,
    ) -> Result<(), E> {
        let _one_at_a_time = self.sync_lock.lock().await;
        flush.await?;
        Ok(self.sync_locked(last).await?)
    }

    async fn sync_locked(&self, last: bool) -> Result<(), SyncError> {
        if self.is_fenced() {
            return Err(SyncError::Fenced);
        }
        if self.options.read_only {
            return Ok(());
        }
        if self.options.shared_metadata {
            return self.sync_data(last).await;
        }
        let checkpoint = last || self.checkpoint_due();
        let waiting = {
            let c = self.checkpoints();
            c.garbage_waiting || c.segments > 0
        };
        let changed = self.changed.swap(false, Ordering::SeqCst);
        let wanted = changed || (checkpoint && waiting);
        if !wanted {
            self.lay_anchor(last).await;
            return Ok(());
        }
        // Until the journal is in the store, the state counts as changed.
        let mut unsynced = Unsynced(&self.changed, true);
        while let Some(uploaded) = self.upload_segment(checkpoint).await? {
            tracing::debug!(generation = uploaded.generation, "journal segment uploaded");
            match uploaded.checkpoint {
                Some((sealed, garbage)) => {
                    let position = Position {
                        generation: uploaded.generation,
                        head: Some(uploaded.head),
                    };
                    self.upload_checkpoint(position, sealed, garbage, !last).await
                }
                None => self.checkpoints().segments += 1,
            }
            if !uploaded.more {
                break;
            }
        }
        unsynced.1 = false;
        self.lay_anchor(last).await;
        Ok(())
    }

    /// The sync of a volume whose metadata is in a shared database, where
    /// every change is durable at its commit, possibly naming chunks still
    /// in this host's cache: cuts the open pack and waits until every pack
    /// queued so far is in the store, then deletes the packs nothing
    /// references any more (after the grace period, unless `last`).
    async fn sync_data(&self, last: bool) -> Result<(), SyncError> {
        // Idle (the periodic sync): nothing new to upload, no garbage
        // waiting out its grace period, so no query to the database.
        let changed = self.changed.swap(false, Ordering::SeqCst);
        if !changed && !last && !self.checkpoints().garbage_waiting {
            return Ok(());
        }
        let mut unsynced = Unsynced(&self.changed, true);
        self.upload_data().await?;
        unsynced.1 = false;
        let garbage = self.meta().garbage()?;
        if garbage.is_empty() {
            self.checkpoints().garbage_waiting = false;
        } else {
            // Cleared by `delete_unreferenced` once all of it is gone.
            self.checkpoints().garbage_waiting = true;
            self.delete_unreferenced(garbage, !last).await;
        }
        Ok(())
    }

    /// Cuts the open pack and waits until every pack queued so far is in
    /// the store: what a close on a volume several hosts share waits for
    /// (close-to-open), and the first half of its sync.
    pub async fn upload_data(&self) -> Result<(), SyncError> {
        let pending = {
            let mut packer = self.cache.packer().await;
            let mut meta = self.meta();
            if !packer.is_empty() {
                packer.cut_with(meta.as_mut()).map_err(cut_error)?;
            }
            Pinned(&self.cache, self.cache.pin_pending())
        };
        self.cache.wait_uploaded(&pending.1).await;
        Ok(())
    }

    /// Lays a new anchor when the one in the store is outdated by the
    /// uploaded state (`Anchor::outdated_by`; `last`: at unmount). A
    /// failure leaves the older anchor as the floor, and is retried at the
    /// next sync.
    async fn lay_anchor(&self, last: bool) {
        let (previous, retain_for, seen) = {
            let anchoring = self.anchoring.lock().unwrap_or_else(|e| e.into_inner());
            let Some(anchoring) = anchoring.as_ref() else {
                return;
            };
            let meta = self.meta();
            let (Ok(generation), Ok(head)) = (meta.generation(), meta.head()) else {
                return;
            };
            let seen = Seen {
                state: Position { generation, head },
                revision: anchoring.revision,
            };
            let due = anchoring
                .newest
                .is_none_or(|a| a.outdated_by(seen, crate::os::now_secs(), last));
            if !due {
                return;
            }
            (anchoring.newest, anchoring.retain_for, seen)
        };
        let laid = match anchor::lay(self.store.as_ref(), &self.ring, previous.as_ref(), seen, retain_for).await {
            Ok(laid) => {
                tracing::debug!(
                    sequence = laid.sequence,
                    generation = seen.state.generation,
                    "anchor laid"
                );
                Some(laid)
            }
            // Another writer laid that one: learn the newest, lay after it.
            Err(StoreError::AlreadyExists) => match anchor::newest(self.store.as_ref(), &self.ring).await {
                Ok(found) => found.newest,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the volume's anchors; will retry");
                    return;
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot lay the volume's anchor; will retry");
                return;
            }
        };
        if let Some(anchoring) = self.anchoring.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            anchoring.newest = laid;
        }
    }

    fn meta(&self) -> MutexGuard<'_, Box<dyn MetadataStore>> {
        self.meta.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn checkpoints(&self) -> MutexGuard<'_, Checkpoints> {
        self.checkpoints.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn checkpoint_due(&self) -> bool {
        let c = self.checkpoints();
        c.segments >= CHECKPOINT_SEGMENTS || c.last.is_none_or(|t| t.elapsed() >= self.options.checkpoint_interval)
    }

    /// Uploads the journal (up to `SEGMENT_OPS` entries of it) as the next
    /// segment; `None` if there was nothing to upload.
    async fn upload_segment(&self, checkpoint: bool) -> Result<Option<Prepared<'_>>, SyncError> {
        let prepared = loop {
            let mut packer = self.cache.packer().await;
            let Some(prepared) = self.prepare(checkpoint, &mut packer)? else {
                return Ok(None);
            };
            drop(packer);
            self.cache.wait_uploaded(&prepared.pending.1).await;
            if self.is_fenced() {
                return Err(SyncError::Fenced);
            }
            let key = segment::key(prepared.generation);
            match self.store.put_new(&key, prepared.sealed.clone()).await {
                Ok(()) => break prepared,
                // Ours, from an attempt whose answer was lost: taken as
                // done, and the rest of the journal goes in the next one.
                Err(StoreError::AlreadyExists) => self.adopt_or_fence(prepared.generation).await?,
                Err(e) => return Err(e.into()),
            }
        };
        let generation = prepared.generation;
        self.record_uploaded(prepared.upto, generation, Some(prepared.head))?;
        // A writer that took over and checkpointed past us deletes the
        // segments it covers, freeing names like ours: we lost.
        if checkpoint::newest(self.store.as_ref())
            .await
            .is_ok_and(|newest| newest.is_some_and(|c| c >= generation))
        {
            self.fence("another writer's newer metadata is in the store");
            let _ = self.store.delete(&segment::key(generation)).await;
            return Err(SyncError::Fenced);
        }
        Ok(Some(prepared))
    }

    /// Takes the journal (and the full state for a checkpoint) under the
    /// metadata lock, cutting the open pack first: the journal may
    /// reference it. `None` if there is nothing to upload.
    fn prepare(&self, checkpoint: bool, packer: &mut Packer<'_>) -> Result<Option<Prepared<'_>>, SyncError> {
        let mut meta = self.meta();
        if !packer.is_empty() {
            packer.cut_with(meta.as_mut()).map_err(cut_error)?;
        }
        let mut entries = meta.journal_after(0, SEGMENT_OPS)?;
        if entries.is_empty() && !checkpoint {
            return Ok(None);
        }
        // A long outage leaves a long journal: it goes up in bounded
        // segments, the checkpoint with the last.
        let mut more = entries.len() == SEGMENT_OPS;
        let mut bytes = 0;
        if let Some(cut) = entries.iter().position(|(_, op)| {
            bytes += op.len();
            bytes > SEGMENT_BYTES
        }) {
            entries.truncate(cut.max(1));
            more = true;
        }
        let checkpoint = checkpoint && !more;
        let generation = meta.generation()? + 1;
        let upto = entries.last().map_or(0, |(seq, _)| *seq);
        let ops: Vec<u8> = entries.into_iter().flat_map(|(_, op)| op).collect();
        let (sealed, head) = segment::seal(&self.ring, generation, meta.head()?.as_ref(), &ops);
        let checkpoint = if checkpoint {
            Some((
                checkpoint::seal(&self.ring, meta.as_ref(), generation, &head)?,
                meta.garbage()?,
            ))
        } else {
            None
        };
        // Under the metadata lock, so no pack the journal references can
        // be dropped from the upload queue before we pin it.
        let pending = Pinned(&self.cache, self.cache.pin_pending());
        drop(meta);
        Ok(Some(Prepared {
            generation,
            head,
            upto,
            more,
            sealed,
            checkpoint,
            pending,
        }))
    }

    /// Segment `generation` is in the store already. If its operations
    /// begin our journal, this cache uploaded it (the answer was lost, or
    /// the daemon crashed before noting it): noted now. Otherwise another
    /// writer owns the generation, and this mount is fenced.
    async fn adopt_or_fence(&self, generation: u64) -> Result<(), SyncError> {
        let theirs = segment::read(self.store.as_ref(), &self.ring, generation).await?;
        let ours = match &theirs {
            Some(segment) => {
                let meta = self.meta();
                let follows = segment.check_follows(meta.head()?.as_ref()).is_ok();
                let upto = segment::journal_prefix(meta.as_ref(), &segment.ops)?;
                upto.filter(|_| follows).map(|upto| (upto, segment.head))
            }
            None => None,
        };
        match ours {
            Some((upto, head)) => {
                self.record_uploaded(upto, generation, head)?;
                self.checkpoints().segments += 1;
                Ok(())
            }
            None => {
                self.fence("another writer uploaded the next metadata generation first");
                Err(SyncError::Fenced)
            }
        }
    }

    /// Notes that the journal up to entry `upto` is in the store as
    /// segment `generation`, whose chain head is `head`: all at once, or a
    /// crash in between would make the next mount take its own segment for
    /// another writer's.
    fn record_uploaded(&self, upto: u64, generation: u64, head: Option<ChainHead>) -> Result<(), MetaError> {
        in_transaction(self.meta().as_mut(), |meta| {
            meta.trim_journal(upto)?;
            meta.set_generation(generation)?;
            meta.set_head(head)
        })?;
        self.note(Position { generation, head });
        Ok(())
    }

    /// Notes the state in use (a follower took in a newer one) as seen.
    pub fn note_state(&self) {
        let position = {
            let meta = self.meta();
            match (meta.generation(), meta.head()) {
                (Ok(generation), Ok(head)) => Position { generation, head },
                _ => return,
            }
        };
        self.note(position);
    }

    fn note(&self, position: Position) {
        if let Some(seen) = self.seen.get()
            && let Err(e) = seen.advance(position)
        {
            // The next mount compares with an older record: weaker, not wrong.
            tracing::warn!(error = %e, "cannot record the newest metadata generation in the cache directory");
        }
    }

    /// Uploads the checkpoint of `generation`, then reclaims what it made
    /// unnecessary. A failure only delays both to the next sync.
    async fn upload_checkpoint(&self, position: Position, sealed: Bytes, garbage: Vec<ObjectId>, with_grace: bool) {
        let generation = position.generation;
        if let Err(e) = self.store.put(&checkpoint::key(generation), sealed).await {
            tracing::warn!(error = %e, "cannot upload a metadata checkpoint; will retry");
            return;
        }
        {
            let mut c = self.checkpoints();
            c.last = Some(Instant::now());
            c.segments = 0;
        }
        tracing::debug!(generation, "metadata checkpoint uploaded");
        if let Some(tell) = self.checkpointed.get() {
            tell(position);
        }
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
        self.delete_unreferenced(garbage, with_grace).await;
    }

    /// Deletes the data objects no state references any more (`garbage`)
    /// once their grace period is over, except those a named snapshot
    /// keeps; failures are logged and retried at a later sync.
    async fn delete_unreferenced(&self, garbage: Vec<ObjectId>, with_grace: bool) {
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
        let ripe: Vec<ObjectId> = ripe.into_iter().collect();
        let ripe = match self.meta().claim_garbage(&ripe) {
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim unreferenced blocks for deletion; will retry");
                return;
            }
        };
        // Listed only now that every superseded state is gone (see
        // `snapshots`): a snapshot copying one of them is visible by now.
        let kept = match snapshots::referenced_packs(self.store.as_ref(), &self.ring).await {
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
                Err(e) => {
                    tracing::warn!(error = %e, "cannot delete an unreferenced block; will retry");
                    // Claimed off the list: back on it, for the retry.
                    if let Err(e) = self.meta().add_garbage(&id) {
                        tracing::warn!(error = %e, "cannot record an unreferenced block");
                    }
                }
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
        for old in checkpoint::generations(store)
            .await?
            .into_iter()
            .filter(|g| *g < generation)
        {
            store.delete(&checkpoint::key(old)).await?;
        }
        for old in segment::numbers(store).await?.into_iter().filter(|n| *n < generation) {
            store.delete(&segment::key(old)).await?;
        }
        Ok(())
    }

    /// The unreferenced blocks whose grace period is over (the others are
    /// noted as seen now, if they were not yet).
    fn ripe_garbage(&self, garbage: &[ObjectId]) -> HashSet<ObjectId> {
        let now = Instant::now();
        let mut seen = self.garbage_seen.lock().unwrap_or_else(|e| e.into_inner());
        let current: HashSet<&ObjectId> = garbage.iter().collect();
        seen.retain(|id, _| current.contains(id));
        garbage
            .iter()
            .filter(|id| now.duration_since(*seen.entry(**id).or_insert(now)) >= self.options.reclaim_grace)
            .copied()
            .collect()
    }
}

fn cut_error(e: CacheError) -> SyncError {
    match e {
        CacheError::Meta(e) => SyncError::Meta(e),
        other => SyncError::Cache(other.to_string()),
    }
}

/// Marks the state changed again unless disarmed (`.1 = false`).
struct Unsynced<'a>(&'a AtomicBool, bool);

impl Drop for Unsynced<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

/// Blocks a segment or checkpoint being uploaded references, pinned in the
/// upload queue.
struct Pinned<'a>(&'a PackCache, Vec<ObjectId>);

impl Drop for Pinned<'_> {
    fn drop(&mut self) {
        self.0.unpin(&self.1);
    }
}
