//! Filesystem core: inodes, directories, open files and their data.
//!
//! Everything the kernel can ask for is a method here, returning
//! `FsResult`; the FUSE adapter (`fuse.rs`) only converts arguments and
//! replies, so this core is tested without a kernel. Namespace operations
//! are short SQLite transactions and run synchronously; anything that may
//! touch the object store is `async` and runs on tokio workers.

mod access;
mod attr_cache;
pub use attr_cache::ATTR_TTL;
use attr_cache::{AttrCache, Epoch};
mod compact;
mod data;
mod error;
mod locking;
pub use locking::{LockRequest, signal_pending};
mod namespace;
use namespace::purge;
mod persist;
mod trail;
mod xattr;

pub use access::Caller;
pub use compact::{COMPACT_INTERVAL, PackStats};
pub use error::{FsError, FsResult};

use crate::audit::{AuditLog, Event, Record};
use crate::cache::{CacheStatus, Fetcher, PackCache};
use crate::codec::ObjectId;
use crate::journal::{SharedMeta, Writer, WriterOptions};
use crate::keyring::Keyring;
use crate::meta::{DirEntry, FileKind, Found, Inode, MetadataStore, ROOT_INO};
use crate::os::now_ns;
use crate::store::ObjectStore;
use data::{Handle, OpenFile};
use lru::LruCache;
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use trail::subject;

pub const NAME_MAX: usize = 255;
/// Directory paths cached for audit records.
const DIR_PATHS_CACHED: usize = 16_384;
pub const PATH_MAX: usize = 4096;
/// How long a read on a shared volume waits for a chunk another host
/// committed but has not finished uploading (it is writing the file now).
const UPLOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// How often a metadata transaction that lost to another host's is run
/// again before the operation fails, and the first and longest waits in
/// between (doubled each time, jittered).
const CONFLICT_RETRIES: u32 = 10;
const CONFLICT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(2);
const CONFLICT_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_millis(200);

/// Ownership and permission overrides from `-o uid=,gid=,umask=`: what
/// callers see, and so what permission checks use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttrOverrides {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub umask: Option<u32>,
}

#[derive(Clone, Debug)]
pub struct CoreOptions {
    pub read_only: bool,
    /// Plaintext blocks kept in memory for reads, in bytes.
    pub read_cache_bytes: usize,
    /// Dirty bytes a file may hold in memory before its full blocks are
    /// staged in the cache ahead of close (cheap: a local write), which
    /// bounds the daemon's memory while many files are being written.
    pub file_dirty_limit: usize,
    pub overrides: AttrOverrides,
    /// How long a block the live state stopped using stays in the store
    /// before it is deleted: readers that loaded an earlier state (read-only
    /// followers, a host mounting right now) can still read it meanwhile.
    pub reclaim_grace: std::time::Duration,
    /// A read-only mount following another host's writes: the state may
    /// change under the kernel, so its page cache is not kept across opens.
    pub follower: bool,
    /// How often, at most, a sync uploads a full checkpoint besides its
    /// journal segment (zero: every sync). Unused blocks are deleted only
    /// after a checkpoint that no longer references them.
    pub checkpoint_interval: std::time::Duration,
    /// The metadata store is a shared database, durable at every commit:
    /// syncs upload data only (`journal::Writer`).
    pub shared_metadata: bool,
}

impl Default for CoreOptions {
    fn default() -> Self {
        CoreOptions {
            read_only: false,
            read_cache_bytes: 96 << 20,
            file_dirty_limit: 16 << 20,
            overrides: AttrOverrides::default(),
            reclaim_grace: std::time::Duration::ZERO,
            follower: false,
            checkpoint_interval: std::time::Duration::ZERO,
            shared_metadata: false,
        }
    }
}

/// Changes requested by setattr; `None` leaves a field alone.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
}

#[derive(Clone, Copy, Debug)]
pub enum TimeSet {
    Now,
    At(i64),
}

#[derive(Clone, Copy, Debug)]
pub struct FsStats {
    pub inodes: u64,
    pub bytes: u64,
}

/// Lock order: a file's write buffer (async), then the metadata store, then
/// the open-file map; never the other way round.
pub struct Core {
    meta: SharedMeta,
    /// Sealed blocks on the cache disk and their write-back uploads.
    cache: Arc<PackCache>,
    ring: Arc<Keyring>,
    chunk_size: u64,
    options: CoreOptions,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    audit: Option<Arc<AuditLog>>,
    /// Inodes read from a shared database a moment ago, for getattr.
    attrs: AttrCache,
    /// Paths of directories, for audit records.
    dir_paths: Mutex<LruCache<u64, Arc<[u8]>>>,
    fetcher: Arc<Fetcher>,
    store: Arc<dyn ObjectStore>,
    /// Uploads the metadata changes (persistence layer).
    journal: Writer,
    /// The shared lock table of a volume several hosts write
    /// (`locking.rs`); `None`: the kernel keeps the locks.
    locks: Option<Arc<dyn crate::meta::file_locks::LockTable>>,
    /// The shared database's connection, watched without the metadata
    /// lock (an operation may hold that lock while it waits out an outage).
    database: Option<Arc<dyn crate::meta::Database>>,
    /// The last compaction pass's view of the packs (`compact.rs`).
    pack_stats: Mutex<Option<compact::PackStats>>,
    compacted_packs: AtomicU64,
    compacted_bytes: AtomicU64,
    /// Holds were released without waiting (`release_later`) since the
    /// last sync: it looks for the orphans they may have left.
    released: std::sync::atomic::AtomicBool,
}

fn check_name(name: &[u8]) -> FsResult<()> {
    if name.len() > NAME_MAX {
        Err(FsError::ENAMETOOLONG)
    } else if name.is_empty() || name.contains(&b'/') || name == b"." || name == b".." {
        Err(FsError::EINVAL)
    } else {
        Ok(())
    }
}

impl Core {
    pub fn new(
        mut meta: Box<dyn MetadataStore>,
        store: Arc<dyn ObjectStore>,
        cache: Arc<PackCache>,
        ring: Arc<Keyring>,
        chunk_size: u32,
        options: CoreOptions,
    ) -> Core {
        let blocks = (options.read_cache_bytes / chunk_size as usize).max(4);
        let mut fetcher = Fetcher::new(store.clone(), cache.clone(), ring.clone(), blocks);
        if options.shared_metadata {
            fetcher = fetcher.waiting_for_missing(UPLOAD_WAIT);
        }
        let fetcher = Arc::new(fetcher);
        meta.set_journaling(!options.read_only);
        let database = meta.database();
        // An embedded volume's reads cost no round trip.
        let attrs = AttrCache::new(if options.shared_metadata {
            ATTR_TTL
        } else {
            std::time::Duration::ZERO
        });
        let meta: SharedMeta = Arc::new(Mutex::new(meta));
        let journal = Writer::new(
            meta.clone(),
            store.clone(),
            cache.clone(),
            ring.clone(),
            WriterOptions {
                read_only: options.read_only,
                checkpoint_interval: options.checkpoint_interval,
                reclaim_grace: options.reclaim_grace,
                shared_metadata: options.shared_metadata,
            },
        );
        Core {
            meta,
            cache,
            ring,
            chunk_size: chunk_size as u64,
            options,
            files: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            audit: None,
            attrs,
            dir_paths: Mutex::new(LruCache::new(
                NonZeroUsize::new(DIR_PATHS_CACHED).unwrap_or(NonZeroUsize::MIN),
            )),
            next_fh: AtomicU64::new(1),
            fetcher,
            store,
            journal,
            locks: None,
            database,
            pack_stats: Mutex::new(None),
            released: std::sync::atomic::AtomicBool::new(false),
            compacted_packs: AtomicU64::new(0),
            compacted_bytes: AtomicU64::new(0),
        }
    }

    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    fn meta(&self) -> MutexGuard<'_, Box<dyn MetadataStore>> {
        self.meta.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn files(&self) -> MutexGuard<'_, HashMap<u64, Arc<OpenFile>>> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn handles(&self) -> MutexGuard<'_, HashMap<u64, Arc<Handle>>> {
        self.handles.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` as one metadata transaction and marks the state changed.
    fn transact<T>(&self, f: impl FnMut(&mut dyn MetadataStore) -> FsResult<T>) -> FsResult<T> {
        if self.is_read_only() {
            return Err(FsError::EROFS);
        }
        self.transact_local(f)
    }

    /// `transact` of a change whose result is an inode, remembered for the
    /// kernel's getattr that follows (a create's, a link's).
    fn transact_inode(&self, f: impl FnMut(&mut dyn MetadataStore) -> FsResult<Inode>) -> FsResult<Inode> {
        if self.is_read_only() {
            return Err(FsError::EROFS);
        }
        let (inode, epoch) = self.transact_at(f)?;
        self.attrs.remember(epoch, &[inode]);
        Ok(inode)
    }

    /// `transact` that a fence does not stop: data written before another
    /// writer took over is still committed to the local database, so it
    /// stays recoverable from the cache directory.
    fn transact_local<T>(&self, f: impl FnMut(&mut dyn MetadataStore) -> FsResult<T>) -> FsResult<T> {
        self.transact_at(f).map(|(v, _)| v)
    }

    /// `transact_local`, also returning the transaction's epoch, at which
    /// what it wrote may be remembered for getattr.
    fn transact_at<T>(&self, f: impl FnMut(&mut dyn MetadataStore) -> FsResult<T>) -> FsResult<(T, Epoch)> {
        if self.options.read_only {
            return Err(FsError::EROFS);
        }
        let done = self.retrying(f)?;
        self.journal.mark_changed();
        Ok(done)
    }

    /// Runs `f` as one metadata transaction, again from the start when it
    /// lost to another host's (serializable isolation on a shared
    /// database); `f` must only change the metadata store. Returns the
    /// transaction's epoch too (`attr_cache.rs`).
    fn retrying<T>(&self, mut f: impl FnMut(&mut dyn MetadataStore) -> FsResult<T>) -> FsResult<(T, Epoch)> {
        self.with_retries(|| {
            let mut meta = self.meta();
            let done = crate::meta::in_transaction(meta.as_mut(), &mut f);
            // Under the metadata lock, so no read can begin in between.
            let epoch = match meta.take_committed() {
                Some(committed) => self.attrs.committed(&committed),
                None => self.attrs.changed(),
            };
            done.map(|v| (v, epoch))
        })
    }

    /// Runs `attempt` until it does not conflict with another host's
    /// transaction, a bounded number of times.
    fn with_retries<T>(&self, mut attempt: impl FnMut() -> FsResult<T>) -> FsResult<T> {
        let mut backoff = CONFLICT_BACKOFF;
        let mut retries = 0;
        loop {
            match attempt() {
                Err(FsError::CONFLICT) if retries < CONFLICT_RETRIES => {
                    retries += 1;
                    // Jittered, so two hosts that collided do not collide
                    // again in step.
                    std::thread::sleep(backoff.mul_f64(rand::random::<f64>() + 0.5));
                    backoff = (backoff * 2).min(CONFLICT_BACKOFF_MAX);
                }
                Err(FsError::CONFLICT) => {
                    tracing::warn!(
                        attempts = CONFLICT_RETRIES + 1,
                        "a metadata transaction kept conflicting with other hosts'; failing it with EIO"
                    );
                    return Err(FsError::EIO);
                }
                done => return done,
            }
        }
    }

    /// The inode as callers must see it: with the size and mtime of writes
    /// still buffered in memory.
    pub fn getattr(&self, ino: u64) -> FsResult<Inode> {
        self.attributes(ino).map(|(inode, _)| inode)
    }

    /// `getattr`, and how long the kernel may keep the answer: a shared
    /// volume's inode read a moment ago is served again (`attr_cache.rs`).
    pub fn attributes(&self, ino: u64) -> FsResult<(Inode, std::time::Duration)> {
        if let Some((inode, left)) = self.attrs.get(ino) {
            return Ok((self.with_pending(inode), left));
        }
        let meta = self.meta();
        let since = self.attrs.epoch();
        let inode = meta.inode(ino)?.ok_or(FsError::ENOENT)?;
        drop(meta);
        self.attrs.remember(since, &[inode]);
        Ok((self.with_pending(inode), ATTR_TTL))
    }

    /// Another host changed the metadata: what this host keeps of it for
    /// getattr and lookups goes (`attr_cache.rs`).
    pub fn others_changed(&self, change: &crate::meta::Change) {
        match change {
            crate::meta::Change::Inodes(inos) => self.attrs.forget(inos),
            crate::meta::Change::Unknown => {
                self.attrs.changed();
            }
        }
    }

    /// The inode as callers see it, with the `-o uid=,gid=,umask=` overrides.
    pub fn presented(&self, mut inode: Inode) -> Inode {
        let o = self.options.overrides;
        inode.uid = o.uid.unwrap_or(inode.uid);
        inode.gid = o.gid.unwrap_or(inode.gid);
        inode.perm &= !o.umask.unwrap_or(0);
        inode
    }

    /// Whether `caller` has the accesses `want` to `inode` as presented.
    fn check(&self, inode: &Inode, caller: &Caller, want: u32) -> FsResult<()> {
        access::check(&self.presented(*inode), caller, want)
    }

    fn check_remove(&self, dir: &Inode, victim: &Inode, caller: &Caller) -> FsResult<()> {
        access::check_remove(&self.presented(*dir), &self.presented(*victim), caller)
    }

    /// access(2) and the kernel's search check for chdir.
    pub fn access(&self, caller: &Caller, ino: u64, mask: i32) -> FsResult<()> {
        let inode = self.meta().inode(ino)?.ok_or(FsError::ENOENT)?;
        if mask & libc::W_OK != 0 && self.is_read_only() {
            return Err(FsError::EROFS);
        }
        self.check(&inode, caller, (mask & 0o7) as u32)
    }

    fn with_pending(&self, mut inode: Inode) -> Inode {
        if let Some(file) = self.files().get(&inode.ino) {
            file.apply_pending(&mut inode);
        }
        inode
    }

    pub fn lookup(&self, caller: &Caller, parent: u64, name: &[u8]) -> FsResult<Inode> {
        let found = self.lookup_checked(caller, parent, name);
        if found == Err(FsError::EACCES) {
            let recorded = self.audit(&found, |errno| {
                Record::new(Event::Search, subject(caller), errno).path(&self.entry_path(parent, name))
            });
            recorded?;
        }
        match found {
            Ok(inode) if inode.kind.is_special() => self.look_up_special(caller, parent, name, inode),
            found => found,
        }
    }

    /// The kernel opens FIFOs, sockets and devices itself, without asking
    /// the filesystem, and (without `default_permissions`) without checking
    /// their mode: the lookup before the open is where s3vault can decide.
    /// A special file is found only by root, its owner, or a caller the
    /// mode allows both to read and to write (so no open mode the bits deny
    /// can follow); each such lookup, found or refused, is recorded as an
    /// open.
    fn look_up_special(&self, caller: &Caller, parent: u64, name: &[u8], inode: Inode) -> FsResult<Inode> {
        let allowed = access::owns(&inode, caller) || access::permits(&inode, caller, access::READ | access::WRITE);
        let outcome = if allowed { Ok(inode) } else { Err(FsError::EACCES) };
        self.audited(outcome, |errno| {
            Record::new(Event::Open, subject(caller), errno)
                .path(&self.entry_path(parent, name))
                .ino(Some(inode.ino))
                .detail(format!(
                    "lookup of a {} (the kernel opens special files without the filesystem)",
                    inode.kind.name()
                ))
        })
    }

    fn lookup_checked(&self, caller: &Caller, parent: u64, name: &[u8]) -> FsResult<Inode> {
        // A name too long to be stored is not looked up (but the
        // directory's checks come first, as on local file systems).
        let stored = &name[..name.len().min(NAME_MAX)];
        if name.len() <= NAME_MAX
            && let Some((dir, found)) = self.attrs.lookup(parent, stored)
        {
            self.check(&dir, caller, access::EXEC)?;
            return Ok(found);
        }
        let meta = self.meta();
        let since = self.attrs.epoch();
        let looked = meta.lookup_in(parent, stored)?.ok_or(FsError::ENOENT)?;
        drop(meta);
        self.attrs.remember(since, &[looked.dir]);
        if looked.dir.kind != FileKind::Dir {
            return Err(FsError::ENOTDIR);
        }
        self.check(&looked.dir, caller, access::EXEC)?;
        if name.len() > NAME_MAX {
            return Err(FsError::ENAMETOOLONG);
        }
        let inode = match looked.found {
            Found::Nothing => return Err(FsError::ENOENT),
            Found::Entry(_, Some(inode)) => {
                self.attrs.remember_lookup(since, &looked.dir, stored, &inode);
                inode
            }
            Found::Entry(ino, None) => {
                tracing::error!(parent, ino, "directory entry points to a missing inode");
                return Err(FsError::EIO);
            }
        };
        Ok(self.with_pending(inode))
    }

    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        self.meta().symlink_target(ino)?.ok_or(FsError::EINVAL)
    }

    /// opendir(2): reading a directory's entries needs read permission.
    pub fn opendir(&self, caller: &Caller, ino: u64, flags: i32) -> FsResult<()> {
        let opened = self.meta().inode(ino)?.ok_or(FsError::ENOENT).and_then(|dir| {
            if dir.kind != FileKind::Dir {
                return Err(FsError::ENOTDIR);
            }
            self.check(&dir, caller, access::open_wants(flags))
        });
        self.audited(opened, |errno| {
            Record::new(Event::Open, subject(caller), errno)
                .path(&self.path_of(ino))
                .ino(Some(ino))
                .flags(flags)
        })
    }

    /// Entries of a directory after `offset` (0 = from the start), at most `limit`.
    pub fn readdir(&self, ino: u64, offset: u64, limit: usize) -> FsResult<Vec<DirEntry>> {
        let meta = self.meta();
        let dir = meta.inode(ino)?.ok_or(FsError::ENOENT)?;
        if dir.kind != FileKind::Dir {
            return Err(FsError::ENOTDIR);
        }
        Ok(meta.entries(ino, offset, limit)?)
    }

    /// The parent directory of directory `ino` (the root is its own parent).
    pub fn parent_of(&self, ino: u64) -> FsResult<u64> {
        if ino == ROOT_INO {
            return Ok(ROOT_INO);
        }
        Ok(self.meta().parent_of(ino)?.unwrap_or(ROOT_INO))
    }

    pub fn statfs(&self) -> FsResult<FsStats> {
        let (inodes, bytes) = self.meta().usage()?;
        Ok(FsStats { inodes, bytes })
    }

    /// Applies setattr; a size change goes through the file's write buffer.
    /// `via_handle` is set when the caller changes a file it has open
    /// (ftruncate, futimens): the open already checked its access.
    pub async fn setattr(&self, caller: &Caller, ino: u64, attr: SetAttr, via_handle: bool) -> FsResult<Inode> {
        let result = self.setattr_unrecorded(caller, ino, attr, via_handle).await;
        let changes = [
            (attr.size.map(|size| format!("size={size}")), Event::Truncate),
            (
                attr.mode.map(|mode| format!("mode={:04o}", mode & 0o7777)),
                Event::Chmod,
            ),
            (
                (attr.uid.is_some() || attr.gid.is_some()).then(|| {
                    let id = |v: Option<u32>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
                    format!("uid={} gid={}", id(attr.uid), id(attr.gid))
                }),
                Event::Chown,
            ),
        ];
        let mut recorded = Ok(());
        for (detail, event) in changes {
            let Some(detail) = detail else { continue };
            recorded = recorded.and(self.audit(&result, |errno| {
                Record::new(event, subject(caller), errno)
                    .path(&self.path_of(ino))
                    .ino(Some(ino))
                    .detail(detail)
            }));
        }
        result.and_then(|inode| recorded.map(|()| inode))
    }

    async fn setattr_unrecorded(&self, caller: &Caller, ino: u64, attr: SetAttr, via_handle: bool) -> FsResult<Inode> {
        let current = self.meta().inode(ino)?.ok_or(FsError::ENOENT)?;
        let attr = access::authorize_setattr(&self.presented(current), caller, attr, via_handle)?;
        if let Some(size) = attr.size {
            self.truncate(ino, size).await?;
        }
        let now = now_ns();
        let time = |t: TimeSet| match t {
            TimeSet::Now => now,
            TimeSet::At(ns) => ns,
        };
        let touches_inode = attr.mode.is_some()
            || attr.uid.is_some()
            || attr.gid.is_some()
            || attr.atime.is_some()
            || attr.mtime.is_some();
        if touches_inode {
            // An explicit mtime wins over the time of writes still buffered.
            let file = self.files().get(&ino).cloned();
            let _buffer = match (&file, attr.mtime) {
                (Some(file), Some(_)) => Some(file.forget_buffered_mtime().await),
                _ => None,
            };
            self.transact(|m| {
                let mut inode = m.inode(ino)?.ok_or(FsError::ENOENT)?;
                if let Some(mode) = attr.mode {
                    inode.perm = mode & 0o7777;
                }
                if let Some(uid) = attr.uid {
                    inode.uid = uid;
                }
                if let Some(gid) = attr.gid {
                    inode.gid = gid;
                }
                if let Some(t) = attr.atime {
                    inode.atime = time(t);
                }
                if let Some(t) = attr.mtime {
                    inode.mtime = time(t);
                }
                inode.ctime = now;
                m.put_inode(&inode)?;
                Ok(())
            })?;
        }
        self.getattr(ino)
    }

    fn is_open(&self, ino: u64) -> bool {
        self.files().contains_key(&ino)
    }

    pub fn is_read_only(&self) -> bool {
        self.options.read_only || self.is_fenced()
    }
}

impl Core {
    /// Deletes inodes left without links by a crash while they were open.
    /// On a shared database, first drops the holds a crash of this host
    /// left, and spares the orphans another host still has open.
    pub fn remove_orphans(&self) -> FsResult<usize> {
        self.with_retries(|| Ok(self.meta().release_holds()?))?;
        self.purge_unheld_orphans()
    }

    /// After holds were released without waiting for the answer: sends
    /// them, then deletes the orphans no host holds any more (an unlink
    /// on any host while the file was open here). Part of every sync.
    pub(super) fn settle_releases(&self) -> FsResult<()> {
        if !self.released.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        let settled = self
            .with_retries(|| Ok(self.meta().settle()?))
            .and_then(|()| self.purge_unheld_orphans().map(|_| ()));
        if settled.is_err() {
            self.released.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        settled
    }

    /// Deletes every orphan that no host holds; returns how many.
    fn purge_unheld_orphans(&self) -> FsResult<usize> {
        if self.is_read_only() {
            return Ok(0);
        }
        let mut removed = 0;
        // Not `for ino in self.meta().orphans()?`: the guard would live
        // through the loop, and the transaction below takes the lock too.
        let orphans = self.meta().orphans()?;
        for ino in orphans {
            let garbage = self.transact(|m| {
                if m.held(ino)? {
                    return Ok(None);
                }
                purge(m, ino).map(Some)
            })?;
            if let Some(garbage) = garbage {
                self.discard_unuploaded(&garbage);
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Blocks that just lost their last reference: those never sent to the
    /// store are dropped from the upload queue (repeated writes to a block
    /// upload once) and need no delete later.
    pub(super) fn discard_unuploaded(&self, ids: &[ObjectId]) {
        let dropped: Vec<ObjectId> = ids
            .iter()
            .copied()
            .filter(|id| self.cache.drop_unreferenced(id))
            .collect();
        if !dropped.is_empty()
            && let Err(e) = self.meta().remove_garbage(&dropped)
        {
            // They stay on the garbage list; reclaim deletes nothing there.
            tracing::warn!(error = %e, "cannot forget blocks that never reached the store");
        }
    }

    /// What `s3vault status` shows of the filesystem.
    pub fn status(&self) -> CoreStatus {
        CoreStatus {
            read_only: self.is_read_only(),
            fenced: self.is_fenced(),
            open_files: self.files().len(),
            open_handles: self.handles().len(),
            unsynced_metadata: self.has_unsynced_changes(),
            cache: self.cache.status(),
            packs: self.pack_stats(),
            audit: self.audit.as_ref().map(|log| log.stats()),
            database: self.database.as_ref().map(|d| d.status()),
        }
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct CoreStatus {
    pub read_only: bool,
    /// Another writer took over; see `Core::fence`.
    pub fenced: bool,
    /// Files with in-memory state (open, or with data not yet uploaded).
    pub open_files: usize,
    pub open_handles: usize,
    /// Metadata changed since the last journal segment reached the store
    /// (or a sync is under way).
    pub unsynced_metadata: bool,
    pub cache: CacheStatus,
    /// `None` until the first compaction pass.
    pub packs: Option<compact::PackStats>,
    pub audit: Option<crate::audit::AuditStats>,
    /// The shared metadata database, if the volume has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<crate::meta::DatabaseStatus>,
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod crash_tests;
#[cfg(test)]
mod shared_tests;

#[cfg(test)]
mod golden_tests;
