//! The local pack cache: sealed data on the cache disk, the write-back
//! queue that uploads it and the fetcher that reads it.
//!
//! File data enters the cache as sealed chunks appended to the *open pack*
//! (`open/<id>`). At its target size, or when a metadata sync needs what it
//! holds in the store, the open pack is *cut*: padded to its size class and
//! moved to `dirty/<id>`, from where the uploader (`upload.rs`) stores it as
//! one object and moves it to `clean/<id>`. Reads (`fetch.rs`, with a
//! plaintext LRU above) fetch single chunks or runs of them with ranged GETs
//! and keep them sparsely at their own offsets in `clean/<id>`; only clean
//! packs are evicted, least recently used first, to keep the cache under its
//! size limit and the disk above its free-space floor. The cache disk never
//! holds plaintext, and because pending data is in files, a daemon killed
//! with uploads pending finds them again at the next mount.
//!
//! Pack ids are random and never reused, so a cached pack never goes stale:
//! there is nothing to invalidate.

mod fetch;
mod present;
mod upload;

pub use fetch::{FetchError, Fetcher, Wanted, runs};

use crate::codec::{self, ObjectId};
use crate::store::ObjectStore;
use lru::LruCache;
use present::Present;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::unix::fs::FileExt;
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
    /// Bytes of packs (clean, open and waiting for upload) the cache may hold.
    pub limit: u64,
    /// Free space the cache leaves on its disk.
    pub min_free: MinFree,
    /// Bytes waiting for upload above which writers wait.
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
    #[error(transparent)]
    Meta(#[from] crate::meta::MetaError),
    /// Staying under the free-space floor leaves no room for the data.
    #[error("the cache disk is full")]
    Full,
    #[error("cache disk: {0}")]
    Io(#[from] io::Error),
}

/// Packs are cut for upload once they hold this many bytes of sealed chunks
/// (a commit bigger than that gets a pack of its own).
pub const PACK_TARGET: u64 = 8 << 20;

/// Bytes of packs read into memory for upload at once: bounds the daemon's
/// memory whatever `upload_concurrency` says.
const UPLOAD_BUDGET: u64 = 64 << 20;

/// A cut pack waiting for (or in) upload.
struct Pending {
    len: u64,
    uploading: bool,
    /// An upload was tried at least once: the object may be in the store.
    attempted: bool,
    /// Metadata states being uploaded that may reference this pack.
    pins: u32,
    /// Unreferenced since it was queued: delete instead of keeping.
    discard: bool,
}

/// A stored pack, sparsely on the cache disk.
struct Clean {
    present: Present,
}

#[derive(Default)]
struct Packs {
    /// The pack being filled and its length so far.
    open: Option<(ObjectId, u64)>,
    clean: Option<LruCache<ObjectId, Clean>>,
    clean_bytes: u64,
    dirty: HashMap<ObjectId, Pending>,
    /// Bytes of cut packs not yet uploaded (the open pack not included).
    dirty_bytes: u64,
    queue: VecDeque<ObjectId>,
}

impl Packs {
    fn clean(&mut self) -> &mut LruCache<ObjectId, Clean> {
        self.clean.get_or_insert_with(LruCache::unbounded)
    }

    fn open_bytes(&self) -> u64 {
        self.open.map_or(0, |(_, len)| len)
    }

    fn used(&self) -> u64 {
        self.clean_bytes + self.dirty_bytes + self.open_bytes()
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
    /// Ranged GETs of data.
    pub downloads: u64,
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
/// logged once at each end, not once per pack and attempt.
#[derive(Debug, Default)]
struct Outage {
    /// When the first failure of this outage happened (and in unix ns).
    since: Option<(Instant, i64)>,
    failures: u64,
    last_error: Option<String>,
}

pub struct PackCache {
    dir: PathBuf,
    config: CacheConfig,
    store: Arc<dyn ObjectStore>,
    packs: Mutex<Packs>,
    /// The open pack's file; its lock orders every append and cut.
    packer: tokio::sync::Mutex<Option<OpenPack>>,
    /// A pack was queued (wakes the uploader).
    queued: Notify,
    /// An upload finished or a pack left the queue (wakes waiters).
    progress: Notify,
    counters: Counters,
    /// Set when the mount is fenced: nothing more is uploaded.
    paused: std::sync::atomic::AtomicBool,
    outage: Mutex<Outage>,
    /// Writes are being refused for lack of disk space (logged once per
    /// episode, and again when they resume).
    full: std::sync::atomic::AtomicBool,
    /// (when, uploaded bytes, downloaded bytes), one per second, for rates.
    samples: Mutex<VecDeque<(Instant, u64, u64)>>,
}

/// The pack being filled: `open/<id>` on the cache disk.
pub struct OpenPack {
    id: ObjectId,
    file: std::fs::File,
    len: u64,
}

const RATE_WINDOW: usize = 5;

impl PackCache {
    /// Opens the cache in `dir` (created if needed), finding the packs a
    /// previous daemon left: its open pack is cut, and every cut pack is
    /// queued for upload again.
    pub fn open(dir: &Path, config: CacheConfig, store: Arc<dyn ObjectStore>) -> io::Result<Arc<PackCache>> {
        for sub in ["open", "dirty", "clean"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        for entry in std::fs::read_dir(dir.join("open"))? {
            let entry = entry?;
            if parse_id(&entry.file_name()).is_some() {
                let file = std::fs::OpenOptions::new().write(true).open(entry.path())?;
                file.set_len(codec::padded_pack_len(file.metadata()?.len()))?;
                std::fs::rename(entry.path(), dir.join("dirty").join(entry.file_name()))?;
            } else {
                std::fs::remove_file(entry.path())?;
            }
        }
        let mut packs = Packs::default();
        for entry in std::fs::read_dir(dir.join("dirty"))? {
            let entry = entry?;
            let Some(id) = parse_id(&entry.file_name()) else {
                continue;
            };
            let len = entry.metadata()?.len();
            packs.dirty.insert(id, Pending::new(len));
            packs.dirty_bytes += len;
            packs.queue.push_back(id);
        }
        let mut clean = Vec::new();
        for entry in std::fs::read_dir(dir.join("clean"))? {
            let entry = entry?;
            let Some(id) = parse_id(&entry.file_name()) else {
                continue;
            };
            let file = std::fs::File::open(entry.path())?;
            let meta = file.metadata()?;
            let used = meta
                .accessed()
                .or_else(|_| meta.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            clean.push((used, id, Present::from_ranges(crate::os::data_ranges(&file)?)));
        }
        // Oldest first, so the least recently used is evicted first.
        clean.sort_by_key(|(used, id, _)| (*used, *id));
        for (_, id, present) in clean {
            if !packs.dirty.contains_key(&id) {
                packs.clean_bytes += present.bytes();
                packs.clean().put(id, Clean { present });
            }
        }
        if !packs.queue.is_empty() {
            tracing::info!(
                packs = packs.queue.len(),
                bytes = packs.dirty_bytes,
                "uploading data a previous mount left in the cache"
            );
        }
        let cache = Arc::new(PackCache {
            dir: dir.to_path_buf(),
            config,
            store,
            packs: Mutex::new(packs),
            packer: tokio::sync::Mutex::new(None),
            queued: Notify::new(),
            progress: Notify::new(),
            counters: Counters::default(),
            paused: std::sync::atomic::AtomicBool::new(false),
            outage: Mutex::new(Outage::default()),
            full: std::sync::atomic::AtomicBool::new(false),
            samples: Mutex::new(VecDeque::new()),
        });
        cache.make_room(0, true);
        Ok(cache)
    }

    fn packs(&self) -> MutexGuard<'_, Packs> {
        self.packs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn path(&self, sub: &str, id: &ObjectId) -> PathBuf {
        self.dir.join(sub).join(hex::encode(id))
    }

    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// Waits until `len` more bytes of chunks may be appended: while cut
    /// packs waiting for upload exceed `max_dirty`, and until the disk has
    /// room for them ([`CacheError::Full`] when even evicting every clean
    /// pack leaves none). Call before [`PackCache::packer`].
    pub async fn reserve(&self, len: u64) -> Result<(), CacheError> {
        let max = self.config.max_dirty;
        self.wait_until(|p| p.dirty_bytes == 0 || p.dirty_bytes + len <= max)
            .await;
        if !self.make_room(len, true) {
            if !self.full.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    cache_dir = %self.dir.display(),
                    min_free = %self.config.min_free,
                    waiting_for_upload = self.packs().dirty_bytes,
                    "the cache disk is full: writes fail with ENOSPC until uploads drain or clean packs can be \
                     evicted (logged again when they resume)"
                );
            }
            return Err(CacheError::Full);
        }
        if self.full.swap(false, Ordering::Relaxed) {
            tracing::info!("the cache disk has room again: writes resume");
        }
        Ok(())
    }

    /// The open pack, for appending chunks or cutting it. Whoever also needs
    /// the metadata takes this first.
    pub async fn packer(&self) -> Packer<'_> {
        Packer {
            cache: self,
            open: self.packer.lock().await,
        }
    }

    /// Keeps sealed bytes just fetched (and authenticated) from the store
    /// at `offset` of their pack, if there is room.
    pub fn keep(&self, pack: &ObjectId, offset: u64, sealed: &[u8]) {
        let len = sealed.len() as u64;
        if !self.make_room(len, false) {
            return;
        }
        {
            let packs = self.packs();
            if packs.dirty.contains_key(pack) || packs.open.is_some_and(|(id, _)| id == *pack) {
                return;
            }
        }
        let written = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.path("clean", pack))
            .and_then(|file| file.write_all_at(sealed, offset));
        if let Err(e) = written {
            tracing::debug!(error = %e, "cannot keep fetched data in the cache");
            return;
        }
        let mut packs = self.packs();
        if packs.clean().get(pack).is_none() {
            packs.clean().put(
                *pack,
                Clean {
                    present: Present::default(),
                },
            );
        }
        let added = packs
            .clean()
            .get_mut(pack)
            .map_or(0, |c| c.present.insert(offset, offset + len));
        packs.clean_bytes += added;
    }

    /// Whether the cache has `len` sealed bytes at `offset` of `pack`.
    pub fn has(&self, pack: &ObjectId, offset: u64, len: u64) -> bool {
        self.holder(pack, offset, len).is_some()
    }

    /// The directory that holds these sealed bytes, if one does.
    fn holder(&self, pack: &ObjectId, offset: u64, len: u64) -> Option<&'static str> {
        let mut packs = self.packs();
        if packs.open.is_some_and(|(id, _)| id == *pack) {
            Some("open")
        } else if packs.dirty.contains_key(pack) {
            Some("dirty")
        } else if packs
            .clean()
            .get(pack)
            .is_some_and(|c| c.present.contains(offset, offset + len))
        {
            Some("clean")
        } else {
            None
        }
    }

    /// `len` sealed bytes at `offset` of `pack`, if the cache has them (the
    /// open pack, a pack waiting for upload, or a stored one's copy).
    pub fn get(&self, pack: &ObjectId, offset: u64, len: u64) -> Option<Vec<u8>> {
        // A cut or an upload may move the file between the lookup and the
        // read: look again once.
        for _ in 0..2 {
            let Some(sub) = self.holder(pack, offset, len) else {
                break;
            };
            let mut data = vec![0u8; len as usize];
            let read = std::fs::File::open(self.path(sub, pack)).and_then(|f| f.read_exact_at(&mut data, offset));
            match read {
                Ok(()) => {
                    self.counters.hits.fetch_add(1, Ordering::Relaxed);
                    return Some(data);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    if sub == "clean" {
                        self.drop_clean(pack);
                    } else {
                        tracing::error!(error = %e, "data waiting for upload is unreadable in the cache");
                    }
                    break;
                }
            }
        }
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Stops uploading (uploads in flight finish): cut packs stay in the
    /// cache directory.
    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
        self.progress.notify_waiters();
    }

    /// Counts a read served from memory, for the hit ratio.
    pub fn count_hit(&self) {
        self.counters.hits.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a ranged read from the store.
    pub fn count_download(&self, bytes: u64) {
        self.counters.downloads.fetch_add(1, Ordering::Relaxed);
        self.counters.downloaded_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Evicts clean packs until `extra` more bytes fit under the size
    /// limit and above the free-space floor; false if they cannot. Data to
    /// upload (`dirty`) may go over the size limit when only such data is
    /// left — `max_dirty` bounds that — but never below the floor.
    fn make_room(&self, extra: u64, dirty: bool) -> bool {
        loop {
            let over_limit = self.packs().used() + extra > self.config.limit;
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
            let victim = self.packs().clean().pop_lru();
            let Some((id, clean)) = victim else {
                return !short_of_disk && (dirty || !over_limit);
            };
            self.packs().clean_bytes -= clean.present.bytes();
            if let Err(e) = std::fs::remove_file(self.path("clean", &id))
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(error = %e, "cannot evict a cached pack");
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

    /// Waits, without missing a wake-up, until `done` holds.
    async fn wait_until(&self, done: impl Fn(&Packs) -> bool) {
        loop {
            let progressed = self.progress.notified();
            tokio::pin!(progressed);
            progressed.as_mut().enable();
            if done(&self.packs()) {
                return;
            }
            progressed.await;
        }
    }

    /// Called when a pack lost its last reference in the live metadata,
    /// before any snapshot names it: drops it if its upload has not been
    /// tried yet. Returns true if the store never saw it (nothing to
    /// delete). The open pack stays: it is cut (and dropped if still
    /// unreferenced) at the next sync.
    pub fn drop_unreferenced(&self, id: &ObjectId) -> bool {
        let packs = self.packs();
        let Some(p) = packs.dirty.get(id) else {
            return false;
        };
        if p.uploading || p.attempted || p.pins > 0 {
            return false;
        }
        self.cancel_upload(packs, id);
        true
    }

    /// Takes a queued (not in flight) pack out of the queue and the cache.
    fn cancel_upload(&self, mut packs: MutexGuard<'_, Packs>, id: &ObjectId) {
        if let Some(p) = packs.dirty.remove(id) {
            packs.dirty_bytes -= p.len;
            packs.queue.retain(|q| q != id);
        }
        drop(packs);
        let _ = std::fs::remove_file(self.path("dirty", id));
        self.progress.notify_waiters();
    }

    /// Forgets a pack the metadata no longer references and no snapshot in
    /// the store names (garbage being reclaimed). A pending upload is
    /// cancelled; one in flight deletes its object when it completes.
    pub fn remove(&self, id: &ObjectId) {
        let mut packs = self.packs();
        if let Some(p) = packs.dirty.get_mut(id) {
            if p.uploading {
                p.discard = true;
                return;
            }
            self.cancel_upload(packs, id);
            return;
        }
        drop(packs);
        self.drop_clean(id);
    }

    /// Drops the clean copy of a pack, if there is one (part of it failed
    /// to open: the next read fetches it again). A pack waiting for upload,
    /// the only copy, stays.
    pub fn drop_clean(&self, id: &ObjectId) {
        let mut packs = self.packs();
        if let Some(clean) = packs.clean().pop(id) {
            packs.clean_bytes -= clean.present.bytes();
            drop(packs);
            let _ = std::fs::remove_file(self.path("clean", id));
        }
    }

    /// Marks every cut pack now pending as needed by a metadata state about
    /// to be uploaded, so none is dropped before it is in the store;
    /// returns them. Call under the metadata lock, after cutting the open
    /// pack, together with the export.
    pub fn pin_pending(&self) -> Vec<ObjectId> {
        let mut packs = self.packs();
        let ids: Vec<ObjectId> = packs.dirty.keys().copied().collect();
        for p in packs.dirty.values_mut() {
            p.pins += 1;
        }
        ids
    }

    /// Releases `pin_pending`'s pins.
    pub fn unpin(&self, ids: &[ObjectId]) {
        let mut packs = self.packs();
        for id in ids {
            if let Some(p) = packs.dirty.get_mut(id) {
                p.pins = p.pins.saturating_sub(1);
            }
        }
    }

    /// Waits until none of `ids` is waiting for upload, or uploads are
    /// paused (check `is_paused` after).
    pub async fn wait_uploaded(&self, ids: &[ObjectId]) {
        self.wait_until(|p| self.is_paused() || !ids.iter().any(|id| p.dirty.contains_key(id)))
            .await
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Waits until no cut pack is waiting for upload.
    pub async fn wait_all_uploaded(&self) {
        self.wait_until(|p| p.dirty.is_empty()).await
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
        let packs = self.packs();
        let last_upload = c.last_upload.load(Ordering::Relaxed);
        CacheStatus {
            used_bytes: packs.used(),
            limit_bytes: self.config.limit,
            dirty_bytes: packs.dirty_bytes + packs.open_bytes(),
            max_dirty_bytes: self.config.max_dirty,
            pending_uploads: packs.dirty.len() as u64,
            uploads_in_flight: packs.dirty.values().filter(|p| p.uploading).count() as u64,
            upload_bytes_per_sec: upload_rate,
            download_bytes_per_sec: download_rate,
            uploaded_bytes: c.uploaded_bytes.load(Ordering::Relaxed),
            downloaded_bytes: c.downloaded_bytes.load(Ordering::Relaxed),
            downloads: c.downloads.load(Ordering::Relaxed),
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
            tracing::debug!(%error, attempt, retry_in_ms = retry_in.as_millis() as u64, "pack upload failed; retrying");
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

/// The open pack, locked: chunks are appended to it and it is cut for
/// upload only through this, so a cut never separates a chunk from the
/// metadata transaction that references it (both happen under the lock).
pub struct Packer<'a> {
    cache: &'a PackCache,
    open: tokio::sync::MutexGuard<'a, Option<OpenPack>>,
}

impl Packer<'_> {
    /// The open pack's id, if there is one.
    pub fn id(&self) -> Option<ObjectId> {
        self.open.as_ref().map(|p| p.id)
    }

    /// Bytes in the open pack (0 when there is none).
    pub fn len(&self) -> u64 {
        self.open.as_ref().map_or(0, |p| p.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `more` bytes would take the open pack past its target size:
    /// cut it first.
    pub fn is_full_for(&self, more: u64) -> bool {
        !self.is_empty() && self.len() + more > PACK_TARGET
    }

    /// The open pack (started if there is none) and where the next chunk
    /// starts in it.
    pub fn position(&mut self) -> io::Result<(ObjectId, u64)> {
        if self.open.is_none() {
            let id = codec::new_object_id();
            let file = std::fs::OpenOptions::new()
                .create_new(true)
                .write(true)
                .open(self.cache.path("open", &id))?;
            *self.open = Some(OpenPack { id, file, len: 0 });
            self.cache.packs().open = Some((id, 0));
        }
        let open = self.open.as_ref().expect("just started");
        Ok((open.id, open.len))
    }

    /// Appends a sealed chunk at `position()`.
    pub fn append(&mut self, sealed: &[u8]) -> io::Result<()> {
        let Some(open) = self.open.as_mut() else {
            return Err(io::Error::other("no open pack"));
        };
        // On failure, whatever part landed is beyond `len`: overwritten by
        // the next append.
        open.file.write_all_at(sealed, open.len)?;
        open.len += sealed.len() as u64;
        self.cache.packs().open = Some((open.id, open.len));
        Ok(())
    }

    /// Ends the open pack, asking `meta` (locked after this packer) whether
    /// any chunk of it is referenced; an unreferenced one leaves the
    /// garbage list with it.
    pub fn cut_with(&mut self, meta: &mut dyn crate::meta::MetadataStore) -> Result<(), CacheError> {
        let Some(id) = self.id() else {
            return Ok(());
        };
        let referenced = meta.references(&id)?;
        self.cut(referenced)?;
        if !referenced {
            meta.remove_garbage(&[id])?;
        }
        meta.pack_cut(&id)?;
        Ok(())
    }

    /// Ends the open pack: padded to its size class and queued for upload
    /// if the metadata references it (`referenced`), deleted otherwise
    /// (every chunk in it was replaced or never committed).
    pub fn cut(&mut self, referenced: bool) -> io::Result<()> {
        let Some(open) = self.open.as_ref() else {
            return Ok(());
        };
        let (id, path) = (open.id, self.cache.path("open", &open.id));
        if !referenced {
            std::fs::remove_file(&path)?;
        } else {
            let len = codec::padded_pack_len(open.len);
            // The padding counts against the limit like the chunks did.
            self.cache.make_room(len - open.len, true);
            open.file.set_len(len)?;
            std::fs::rename(&path, self.cache.path("dirty", &id))?;
            let mut packs = self.cache.packs();
            packs.dirty.insert(id, Pending::new(len));
            packs.dirty_bytes += len;
            packs.queue.push_back(id);
        }
        self.cache.packs().open = None;
        *self.open = None;
        self.cache.queued.notify_one();
        self.cache.progress.notify_waiters();
        Ok(())
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
