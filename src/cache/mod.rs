//! The local block cache: sealed data blocks on the cache disk, the
//! write-back queue that uploads them and the fetcher that reads them.
//!
//! A block enters the cache sealed — the cache disk never holds plaintext —
//! either *dirty* (written here, not yet in the store: `dirty/<id>`) or
//! *clean* (a copy of an object in the store: `clean/<id>`). Dirty blocks are
//! uploaded in the background (`upload.rs`) and then become clean; reads
//! fetch blocks into it (`fetch.rs`, with a plaintext LRU above); only clean
//! blocks are evicted, least recently used first, to keep the cache under
//! its size limit and the disk above its free-space floor. Because dirty
//! blocks are files, a daemon killed with blocks pending finds them again at
//! the next mount and uploads them.
//!
//! Object ids are random and never reused, so a cached block never goes
//! stale: there is nothing to invalidate.

mod fetch;
mod upload;

pub use fetch::{FetchError, Fetcher, Wanted};

use crate::codec::ObjectId;
use crate::store::ObjectStore;
use bytes::Bytes;
use lru::LruCache;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// The store key of a data object.
pub fn data_key(id: &ObjectId) -> String {
    format!("data/{}", hex::encode(id))
}

/// How much of the cache disk must stay free.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MinFree {
    Bytes(u64),
    Percent(u8),
}

impl std::str::FromStr for MinFree {
    type Err = String;

    fn from_str(s: &str) -> Result<MinFree, String> {
        match s.trim().strip_suffix('%') {
            Some(p) => match p.trim().parse::<u8>() {
                Ok(p) if p < 100 => Ok(MinFree::Percent(p)),
                _ => Err(format!("{s:?}: a free-space floor in percent is 0% to 99%")),
            },
            None => crate::units::parse_size(s).map(MinFree::Bytes),
        }
    }
}

/// As the option takes it: `5%` or a size.
impl std::fmt::Display for MinFree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MinFree::Percent(p) => write!(f, "{p}%"),
            MinFree::Bytes(n) => f.write_str(&crate::units::format_size(*n)),
        }
    }
}

#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// Bytes of blocks (clean and dirty) the cache may hold.
    pub limit: u64,
    /// Free space the cache leaves on its disk.
    pub min_free: MinFree,
    /// Dirty bytes above which writers wait for uploads.
    pub max_dirty: u64,
    /// Uploads in flight at once.
    pub upload_concurrency: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            limit: 10 << 30,
            min_free: MinFree::Percent(5),
            max_dirty: (10 << 30) / 4,
            upload_concurrency: 16,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Staying under the free-space floor leaves no room for the block.
    #[error("the cache disk is full")]
    Full,
    #[error("cache disk: {0}")]
    Io(#[from] io::Error),
}

/// A block waiting for (or in) upload.
struct Pending {
    len: u64,
    uploading: bool,
    /// An upload was tried at least once: the object may be in the store.
    attempted: bool,
    /// Metadata snapshots being uploaded that reference this block.
    pins: u32,
    /// Unreferenced since it was queued: delete instead of keeping.
    discard: bool,
}

#[derive(Default)]
struct Blocks {
    clean: Option<LruCache<ObjectId, u64>>,
    clean_bytes: u64,
    dirty: HashMap<ObjectId, Pending>,
    dirty_bytes: u64,
    queue: VecDeque<ObjectId>,
}

impl Blocks {
    fn clean(&mut self) -> &mut LruCache<ObjectId, u64> {
        self.clean.get_or_insert_with(LruCache::unbounded)
    }
}

/// Counters for `s3vault status`; totals since mount.
#[derive(Default)]
struct Counters {
    uploaded_bytes: AtomicU64,
    uploads: AtomicU64,
    downloaded_bytes: AtomicU64,
    downloads: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    errors: AtomicU64,
    retries: AtomicU64,
    /// Unix nanoseconds of the last successful upload, 0 for none yet.
    last_upload: AtomicU64,
}

/// A snapshot of the cache for `s3vault status`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CacheStatus {
    pub used_bytes: u64,
    pub limit_bytes: u64,
    pub dirty_bytes: u64,
    pub max_dirty_bytes: u64,
    pub pending_uploads: u64,
    pub uploads_in_flight: u64,
    pub upload_bytes_per_sec: f64,
    pub download_bytes_per_sec: f64,
    pub uploaded_bytes: u64,
    pub downloaded_bytes: u64,
    pub hits: u64,
    pub misses: u64,
    pub hit_ratio: Option<f64>,
    pub errors: u64,
    pub retries: u64,
    pub last_upload_ns: Option<i64>,
    pub last_error: Option<String>,
    /// Since when uploads have been failing (unix ns); `None` while the
    /// store answers.
    pub failing_since_ns: Option<i64>,
}

/// The store failing uploads, from the first failure to the next success:
/// logged once at each end, not once per block and attempt.
#[derive(Debug, Default)]
struct Outage {
    /// When the first failure of this outage happened (and in unix ns).
    since: Option<(Instant, i64)>,
    failures: u64,
    last_error: Option<String>,
}

pub struct BlockCache {
    dir: PathBuf,
    config: CacheConfig,
    store: Arc<dyn ObjectStore>,
    blocks: Mutex<Blocks>,
    /// A block was queued (wakes the uploader).
    queued: Notify,
    /// An upload finished or a block left the queue (wakes waiters).
    progress: Notify,
    counters: Counters,
    /// Set when the mount is fenced: nothing more is uploaded.
    paused: std::sync::atomic::AtomicBool,
    outage: Mutex<Outage>,
    /// (when, uploaded bytes, downloaded bytes), one per second, for rates.
    samples: Mutex<VecDeque<(Instant, u64, u64)>>,
}

const RATE_WINDOW: usize = 5;

impl BlockCache {
    /// Opens the cache in `dir` (created if needed), finding the blocks a
    /// previous daemon left: dirty ones are queued for upload again.
    pub fn open(dir: &Path, config: CacheConfig, store: Arc<dyn ObjectStore>) -> io::Result<Arc<BlockCache>> {
        for sub in ["dirty", "clean", "tmp"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        // Half-written blocks of a killed daemon: never referenced.
        for entry in std::fs::read_dir(dir.join("tmp"))? {
            let _ = std::fs::remove_file(entry?.path());
        }
        let mut blocks = Blocks::default();
        let mut clean = Vec::new();
        for (sub, dirty) in [("dirty", true), ("clean", false)] {
            for entry in std::fs::read_dir(dir.join(sub))? {
                let entry = entry?;
                let Some(id) = parse_id(&entry.file_name()) else {
                    continue;
                };
                let meta = entry.metadata()?;
                if dirty {
                    blocks.dirty.insert(id, Pending::new(meta.len()));
                    blocks.dirty_bytes += meta.len();
                    blocks.queue.push_back(id);
                } else {
                    let used = meta
                        .accessed()
                        .or_else(|_| meta.modified())
                        .unwrap_or(std::time::UNIX_EPOCH);
                    clean.push((used, id, meta.len()));
                }
            }
        }
        // Oldest first, so the least recently used is evicted first.
        clean.sort();
        for (_, id, len) in clean {
            if !blocks.dirty.contains_key(&id) {
                blocks.clean().put(id, len);
                blocks.clean_bytes += len;
            }
        }
        if !blocks.queue.is_empty() {
            tracing::info!(
                blocks = blocks.queue.len(),
                bytes = blocks.dirty_bytes,
                "uploading blocks a previous mount left in the cache"
            );
        }
        let cache = Arc::new(BlockCache {
            dir: dir.to_path_buf(),
            config,
            store,
            blocks: Mutex::new(blocks),
            queued: Notify::new(),
            progress: Notify::new(),
            counters: Counters::default(),
            paused: std::sync::atomic::AtomicBool::new(false),
            outage: Mutex::new(Outage::default()),
            samples: Mutex::new(VecDeque::new()),
        });
        cache.make_room(0, true);
        Ok(cache)
    }

    fn blocks(&self) -> MutexGuard<'_, Blocks> {
        self.blocks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn path(&self, sub: &str, id: &ObjectId) -> PathBuf {
        self.dir.join(sub).join(hex::encode(id))
    }

    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// Writes a sealed block as dirty and queues its upload. Waits first
    /// while dirty data is above `max_dirty`; fails with [`CacheError::Full`]
    /// when even evicting every clean block leaves no room on the disk.
    pub async fn stage(&self, id: ObjectId, sealed: &[u8]) -> Result<(), CacheError> {
        let len = sealed.len() as u64;
        self.wait_for_dirty_room(len).await;
        if !self.make_room(len, true) {
            return Err(CacheError::Full);
        }
        self.write_file("dirty", &id, sealed)?;
        let mut blocks = self.blocks();
        blocks.dirty.insert(id, Pending::new(len));
        blocks.dirty_bytes += len;
        blocks.queue.push_back(id);
        drop(blocks);
        self.queued.notify_one();
        Ok(())
    }

    /// Keeps a copy of a block just fetched from the store, if there is room.
    pub fn keep(&self, id: ObjectId, sealed: &[u8]) {
        let len = sealed.len() as u64;
        if !self.make_room(len, false) {
            return;
        }
        if let Err(e) = self.write_file("clean", &id, sealed) {
            tracing::debug!(error = %e, "cannot keep a fetched block in the cache");
            return;
        }
        let mut blocks = self.blocks();
        if blocks.dirty.contains_key(&id) {
            return;
        }
        if blocks.clean().put(id, len).is_none() {
            blocks.clean_bytes += len;
        }
    }

    /// Writes through `tmp/`, so a killed daemon never leaves a partial
    /// block under a valid name.
    fn write_file(&self, sub: &str, id: &ObjectId, data: &[u8]) -> io::Result<()> {
        let tmp = self.path("tmp", id);
        let written = std::fs::write(&tmp, data).and_then(|()| std::fs::rename(&tmp, self.path(sub, id)));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    /// The sealed block, if the cache has it (dirty or clean).
    pub fn get(&self, id: &ObjectId) -> Option<Bytes> {
        let sub = {
            let mut blocks = self.blocks();
            if blocks.dirty.contains_key(id) {
                "dirty"
            } else if blocks.clean().get(id).is_some() {
                "clean"
            } else {
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        match std::fs::read(self.path(sub, id)) {
            Ok(data) => {
                self.counters.hits.fetch_add(1, Ordering::Relaxed);
                Some(Bytes::from(data))
            }
            Err(e) => {
                // Evicted between the lookup and the read, or removed by
                // hand: fetch it from the store instead.
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                if sub == "clean" {
                    self.forget_clean(id);
                } else {
                    tracing::error!(error = %e, "a block waiting for upload is missing from the cache");
                }
                None
            }
        }
    }

    /// Stops uploading (blocks in flight finish): dirty blocks stay in the
    /// cache directory.
    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
        self.progress.notify_waiters();
    }

    /// Counts a read served from memory, for the hit ratio.
    pub fn count_hit(&self) {
        self.counters.hits.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a block fetched from the store.
    pub fn count_download(&self, bytes: u64) {
        self.counters.downloads.fetch_add(1, Ordering::Relaxed);
        self.counters.downloaded_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn forget_clean(&self, id: &ObjectId) {
        let mut blocks = self.blocks();
        if let Some(len) = blocks.clean().pop(id) {
            blocks.clean_bytes -= len;
        }
    }

    /// Evicts clean blocks until `extra` more bytes fit under the size
    /// limit and above the free-space floor; false if they cannot. A dirty
    /// block (`dirty`) may go over the size limit when only dirty blocks are
    /// left — `max_dirty` bounds that — but never below the floor.
    fn make_room(&self, extra: u64, dirty: bool) -> bool {
        loop {
            let over_limit = {
                let blocks = self.blocks();
                blocks.clean_bytes + blocks.dirty_bytes + extra > self.config.limit
            };
            let short_of_disk = match self.disk_room() {
                Ok(room) => room < extra,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the cache disk's free space");
                    false
                }
            };
            if !over_limit && !short_of_disk {
                return true;
            }
            let victim = self.blocks().clean().pop_lru();
            let Some((id, len)) = victim else {
                return !short_of_disk && (dirty || !over_limit);
            };
            self.blocks().clean_bytes -= len;
            if let Err(e) = std::fs::remove_file(self.path("clean", &id))
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(error = %e, "cannot evict a cached block");
            }
        }
    }

    /// Bytes that may still be written before the disk reaches its floor.
    fn disk_room(&self) -> io::Result<u64> {
        let (avail, total) = crate::os::disk_space(&self.dir)?;
        let floor = match self.config.min_free {
            MinFree::Bytes(b) => b,
            MinFree::Percent(p) => total / 100 * p as u64,
        };
        Ok(avail.saturating_sub(floor))
    }

    async fn wait_for_dirty_room(&self, len: u64) {
        let max = self.config.max_dirty;
        self.wait_until(|b| b.dirty_bytes == 0 || b.dirty_bytes + len <= max)
            .await
    }

    /// Waits, without missing a wake-up, until `done` holds.
    async fn wait_until(&self, done: impl Fn(&Blocks) -> bool) {
        loop {
            let progressed = self.progress.notified();
            tokio::pin!(progressed);
            progressed.as_mut().enable();
            if done(&self.blocks()) {
                return;
            }
            progressed.await;
        }
    }

    /// Called when a block is no longer referenced by the live metadata,
    /// before any snapshot names it: drops it if its upload has not been
    /// tried yet. Returns true if the store never saw it (nothing to delete).
    pub fn drop_unreferenced(&self, id: &ObjectId) -> bool {
        let blocks = self.blocks();
        let Some(p) = blocks.dirty.get(id) else {
            return false;
        };
        if p.uploading || p.attempted || p.pins > 0 {
            return false;
        }
        self.cancel_upload(blocks, id);
        true
    }

    /// Takes a queued (not in flight) block out of the queue and the cache.
    fn cancel_upload(&self, mut blocks: MutexGuard<'_, Blocks>, id: &ObjectId) {
        if let Some(p) = blocks.dirty.remove(id) {
            blocks.dirty_bytes -= p.len;
            blocks.queue.retain(|q| q != id);
        }
        drop(blocks);
        let _ = std::fs::remove_file(self.path("dirty", id));
        self.progress.notify_waiters();
    }

    /// Forgets a block the metadata no longer references and no snapshot in
    /// the store names (garbage being reclaimed). A pending upload is
    /// cancelled; one in flight deletes its object when it completes.
    pub fn remove(&self, id: &ObjectId) {
        let mut blocks = self.blocks();
        if let Some(p) = blocks.dirty.get_mut(id) {
            if p.uploading {
                p.discard = true;
                return;
            }
            self.cancel_upload(blocks, id);
            return;
        }
        drop(blocks);
        self.drop_clean(id);
    }

    /// Drops the clean copy of a block, if there is one (it failed to open:
    /// the next read fetches it again). A dirty block, the only copy, stays.
    pub fn drop_clean(&self, id: &ObjectId) {
        let mut blocks = self.blocks();
        if let Some(len) = blocks.clean().pop(id) {
            blocks.clean_bytes -= len;
            drop(blocks);
            let _ = std::fs::remove_file(self.path("clean", id));
        }
    }

    /// Marks every block now pending as needed by a snapshot about to be
    /// uploaded, so none is dropped before it is in the store; returns them.
    /// Call under the metadata lock, together with the export.
    pub fn pin_pending(&self) -> Vec<ObjectId> {
        let mut blocks = self.blocks();
        let ids: Vec<ObjectId> = blocks.dirty.keys().copied().collect();
        for p in blocks.dirty.values_mut() {
            p.pins += 1;
        }
        ids
    }

    /// Releases `pin_pending`'s pins.
    pub fn unpin(&self, ids: &[ObjectId]) {
        let mut blocks = self.blocks();
        for id in ids {
            if let Some(p) = blocks.dirty.get_mut(id) {
                p.pins = p.pins.saturating_sub(1);
            }
        }
    }

    /// Waits until none of `ids` is waiting for upload, or uploads are
    /// paused (check `is_paused` after).
    pub async fn wait_uploaded(&self, ids: &[ObjectId]) {
        self.wait_until(|b| self.is_paused() || !ids.iter().any(|id| b.dirty.contains_key(id)))
            .await
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Waits until nothing is waiting for upload.
    pub async fn wait_all_uploaded(&self) {
        self.wait_until(|b| b.dirty.is_empty()).await
    }

    /// Records upload and download totals for the rates; call every second.
    pub fn sample_rates(&self) {
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.push_back((
            Instant::now(),
            self.counters.uploaded_bytes.load(Ordering::Relaxed),
            self.counters.downloaded_bytes.load(Ordering::Relaxed),
        ));
        while samples.len() > RATE_WINDOW + 1 {
            samples.pop_front();
        }
    }

    pub fn status(&self) -> CacheStatus {
        let outage = self.outage();
        let c = &self.counters;
        let (hits, misses) = (c.hits.load(Ordering::Relaxed), c.misses.load(Ordering::Relaxed));
        let (upload_rate, download_rate) = {
            let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
            match (samples.front(), samples.back()) {
                (Some(first), Some(last)) if last.0 > first.0 => {
                    let secs = (last.0 - first.0).as_secs_f64();
                    ((last.1 - first.1) as f64 / secs, (last.2 - first.2) as f64 / secs)
                }
                _ => (0.0, 0.0),
            }
        };
        let blocks = self.blocks();
        let last_upload = c.last_upload.load(Ordering::Relaxed);
        CacheStatus {
            used_bytes: blocks.clean_bytes + blocks.dirty_bytes,
            limit_bytes: self.config.limit,
            dirty_bytes: blocks.dirty_bytes,
            max_dirty_bytes: self.config.max_dirty,
            pending_uploads: blocks.dirty.len() as u64,
            uploads_in_flight: blocks.dirty.values().filter(|p| p.uploading).count() as u64,
            upload_bytes_per_sec: upload_rate,
            download_bytes_per_sec: download_rate,
            uploaded_bytes: c.uploaded_bytes.load(Ordering::Relaxed),
            downloaded_bytes: c.downloaded_bytes.load(Ordering::Relaxed),
            hits,
            misses,
            hit_ratio: (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64),
            errors: c.errors.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            last_upload_ns: (last_upload > 0).then_some(last_upload as i64),
            last_error: outage.last_error.clone(),
            failing_since_ns: outage.since.map(|(_, ns)| ns),
        }
    }

    fn outage(&self) -> std::sync::MutexGuard<'_, Outage> {
        self.outage.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An upload failed: the first failure of an outage is logged, the
    /// others only at debug level.
    fn upload_failed(&self, error: &crate::store::StoreError, attempt: u32, retry_in: std::time::Duration) {
        let mut outage = self.outage();
        outage.failures += 1;
        outage.last_error = Some(error.to_string());
        if outage.since.is_none() {
            outage.since = Some((Instant::now(), crate::os::now_ns()));
            tracing::warn!(
                %error,
                "uploads to the object store are failing; retrying with backoff until it answers (logged again \
                 when it does)"
            );
        } else {
            tracing::debug!(%error, attempt, retry_in_ms = retry_in.as_millis() as u64, "block upload failed; retrying");
        }
    }

    /// An upload succeeded: the end of an outage, if there was one.
    fn upload_succeeded(&self) {
        let mut outage = self.outage();
        if let Some((since, _)) = outage.since.take() {
            tracing::info!(
                failed_attempts = outage.failures,
                outage_secs = since.elapsed().as_secs(),
                "the object store answers again; uploads resumed"
            );
            outage.failures = 0;
        }
    }
}

impl Pending {
    fn new(len: u64) -> Pending {
        Pending {
            len,
            uploading: false,
            attempted: false,
            pins: 0,
            discard: false,
        }
    }
}

fn parse_id(name: &std::ffi::OsStr) -> Option<ObjectId> {
    hex::decode(name.to_str()?).ok()?.try_into().ok()
}

/// Backoff before retry `attempt` (1-based): exponential from 100 ms to 30 s,
/// with ±50 % jitter so many failed uploads do not retry in lockstep.
fn backoff(attempt: u32) -> Duration {
    use rand::Rng;
    let base = Duration::from_millis(100).saturating_mul(1 << attempt.min(9).saturating_sub(1));
    let base = base.min(Duration::from_secs(30));
    base.mul_f64(rand::thread_rng().gen_range(0.5..1.5))
}

#[cfg(test)]
mod tests;
