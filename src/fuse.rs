//! FUSE adapter: converts kernel requests into calls on the filesystem core
//! and sends the replies. It holds no filesystem logic, so the core can be
//! tested without a kernel. Requests that may wait on the object store are
//! answered from tokio tasks, so a slow GET never stalls the request loop.

pub use crate::fs::AttrOverrides;
use crate::fs::{Caller, Core, FsResult, LockRequest, SetAttr, TimeSet};
use crate::meta::file_locks::Kind;
use crate::meta::{FileKind, Inode};
use crate::metrics::Timer;
use fuser::{
    FileAttr, FileType, Filesystem, KernelConfig, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyLock, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
};
use std::ffi::OsStr;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long the kernel may cache attributes it asked for: what another
/// host (or, for a read-only follower, the writer) changed shows within it.
const TTL: Duration = crate::fs::ATTR_TTL;
/// Lookup results are not cached: the kernel walks cached entries without
/// asking us, so a cached entry would skip our search-permission check for
/// the next caller (we mount without `default_permissions`). fuser gives
/// entry and attributes one TTL, so a lookup's attributes are fresh too.
const ENTRY_TTL: Duration = Duration::ZERO;
const STATFS_BLOCK: u64 = 4096;
/// Capacity reported by statfs: S3 has no fixed size, so report 1 PiB like
/// other S3 filesystems do, minus what is stored.
const STATFS_CAPACITY: u64 = 1 << 50;
const STATFS_FILES: u64 = 1 << 32;

pub struct FuseAdapter {
    core: Arc<Core>,
    runtime: tokio::runtime::Handle,
}

fn system_time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

fn time_ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i64,
        Err(e) => -(e.duration().as_nanos() as i64),
    }
}

fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(time_ns(t)),
    }
}

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
    }
}

fn caller(req: &Request<'_>) -> Caller {
    Caller::new(req.uid(), req.gid(), req.pid())
}

impl FuseAdapter {
    pub fn new(core: Arc<Core>, runtime: tokio::runtime::Handle) -> Self {
        FuseAdapter { core, runtime }
    }

    /// Keep the page cache across opens when every change to the volume
    /// goes through this mount: the kernel drops what a write, truncate or
    /// hole punch makes stale by itself. A follower's files change under it.
    fn open_flags(&self) -> u32 {
        if self.core.keeps_page_cache() {
            fuser::consts::FOPEN_KEEP_CACHE
        } else {
            0
        }
    }

    fn attr(&self, inode: &Inode) -> FileAttr {
        file_attr(&self.core, inode)
    }

    fn entry(&self, result: FsResult<Inode>, reply: ReplyEntry) {
        match result {
            Ok(inode) => reply.entry(&ENTRY_TTL, &self.attr(&inode), 0),
            Err(e) => reply.error(e.errno()),
        }
    }

    /// Runs `work` on a tokio worker and hands its result to `done`.
    /// `timer` measures the request until `done` has replied.
    fn spawn<T, W, D>(&self, timer: Timer, work: impl FnOnce(Arc<Core>) -> W, done: D)
    where
        W: Future<Output = FsResult<T>> + Send + 'static,
        D: FnOnce(FsResult<T>) + Send + 'static,
        T: Send + 'static,
    {
        let future = work(self.core.clone());
        self.runtime.spawn(async move {
            done(future.await);
            drop(timer);
        });
    }

    /// Like `spawn`, but first polls `work` once on this thread: a request
    /// that completes without waiting (an open, a small file's close, a
    /// read of cached data) is answered at once, saving two thread
    /// hand-offs, which dominate small-file workloads. One that waits (on
    /// the store, a lock, backpressure) continues on a tokio worker, so the
    /// request loop never stalls on the network. Not for requests that may
    /// burn much CPU before their first wait (large writes seal blocks).
    fn run<T, W, D>(&self, timer: Timer, work: impl FnOnce(Arc<Core>) -> W, done: D)
    where
        W: Future<Output = FsResult<T>> + Send + 'static,
        D: FnOnce(FsResult<T>) + Send + 'static,
        T: Send + 'static,
    {
        let _context = self.runtime.enter();
        let mut future = Box::pin(work(self.core.clone()));
        // A waker registered during this poll is replaced when the task
        // polls again; futures must accept that.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match future.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(result) => done(result),
            std::task::Poll::Pending => {
                self.runtime.spawn(async move {
                    done(future.await);
                    drop(timer);
                });
            }
        }
    }
}

/// getxattr/listxattr: a size probe (`size` 0) gets the length, a buffer
/// too small gets ERANGE.
fn reply_xattr(result: FsResult<Vec<u8>>, size: u32, reply: ReplyXattr) {
    match result {
        Ok(value) if size == 0 => reply.size(value.len() as u32),
        Ok(value) if value.len() > size as usize => reply.error(libc::ERANGE),
        Ok(value) => reply.data(&value),
        Err(e) => reply.error(e.errno()),
    }
}

/// A lock request from the kernel's arguments; `None` for a type that is
/// none of F_RDLCK, F_WRLCK and F_UNLCK.
fn lock_request(owner: u64, start: u64, end: u64, typ: i32, pid: u32) -> Option<LockRequest> {
    Some(LockRequest {
        owner,
        start,
        end,
        kind: Kind::from_fcntl(typ)?,
        pid,
    })
}

fn reply_empty(result: FsResult<()>, reply: ReplyEmpty) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e.errno()),
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request<'_>, config: &mut KernelConfig) -> Result<(), libc::c_int> {
        // 1 MiB requests (the kernel's default page limit allows no more):
        // fewer, larger reads and writes, each a whole default-size block.
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        // O_TRUNC arrives with the open, so the open is checked and audited
        // with its real flags and truncates in the same request.
        let _ = config.add_capabilities(fuser::consts::FUSE_ATOMIC_O_TRUNC);
        if self.core.locks_across_hosts() {
            // Lock requests come here instead of staying in this kernel;
            // flock ones as whole-file locks of the open file.
            let _ = config.add_capabilities(fuser::consts::FUSE_POSIX_LOCKS | fuser::consts::FUSE_FLOCK_LOCKS);
        }
        Ok(())
    }

    fn destroy(&mut self) {
        if let Err(e) = self.runtime.block_on(self.core.final_sync()) {
            tracing::error!(error = %e, "final sync at unmount failed");
        }
    }

    fn lookup(&mut self, req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let _timer = Timer::fuse("lookup");
        self.entry(self.core.lookup(&caller(req), parent, name.as_bytes()), reply);
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        let _timer = Timer::fuse("getattr");
        match self.core.attributes(ino) {
            Ok((inode, ttl)) => reply.attr(&ttl, &self.attr(&inode)),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn setattr(
        &mut self,
        req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let timer = Timer::fuse("setattr");
        let change = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
        };
        let caller = caller(req);
        let core = self.core.clone();
        self.run(
            timer,
            move |core| async move { core.setattr(&caller, ino, change, fh.is_some()).await },
            move |result| match result {
                Ok(inode) => reply.attr(&TTL, &file_attr(&core, &inode)),
                Err(e) => reply.error(e.errno()),
            },
        );
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        let _timer = Timer::fuse("readlink");
        match self.core.readlink(ino) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn mknod(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _timer = Timer::fuse("mknod");
        self.entry(
            self.core
                .mknod(&caller(req), parent, name.as_bytes(), mode & !umask, rdev),
            reply,
        );
    }

    fn mkdir(&mut self, req: &Request<'_>, parent: u64, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let _timer = Timer::fuse("mkdir");
        self.entry(
            self.core.mkdir(&caller(req), parent, name.as_bytes(), mode & !umask),
            reply,
        );
    }

    fn unlink(&mut self, req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let _timer = Timer::fuse("unlink");
        reply_empty(self.core.unlink(&caller(req), parent, name.as_bytes()), reply);
    }

    fn rmdir(&mut self, req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let _timer = Timer::fuse("rmdir");
        reply_empty(self.core.rmdir(&caller(req), parent, name.as_bytes()), reply);
    }

    fn symlink(&mut self, req: &Request<'_>, parent: u64, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let _timer = Timer::fuse("symlink");
        self.entry(
            self.core.symlink(
                &caller(req),
                parent,
                link_name.as_bytes(),
                target.as_os_str().as_bytes(),
            ),
            reply,
        );
    }

    fn rename(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        let _timer = Timer::fuse("rename");
        reply_empty(
            self.core.rename(
                &caller(req),
                parent,
                name.as_bytes(),
                newparent,
                newname.as_bytes(),
                flags,
            ),
            reply,
        );
    }

    fn link(&mut self, req: &Request<'_>, ino: u64, newparent: u64, newname: &OsStr, reply: ReplyEntry) {
        let _timer = Timer::fuse("link");
        self.entry(self.core.link(&caller(req), ino, newparent, newname.as_bytes()), reply);
    }

    fn open(&mut self, req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        let timer = Timer::fuse("open");
        let caller = caller(req);
        let open_flags = self.open_flags();
        self.run(
            timer,
            move |core| async move { core.open(&caller, ino, flags).await },
            move |result| match result {
                Ok(fh) => reply.opened(fh, open_flags),
                Err(e) => reply.error(e.errno()),
            },
        );
    }

    fn access(&mut self, req: &Request<'_>, ino: u64, mask: i32, reply: ReplyEmpty) {
        let _timer = Timer::fuse("access");
        reply_empty(self.core.access(&caller(req), ino, mask), reply);
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let timer = Timer::fuse("read");
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(libc::EINVAL);
        };
        self.run(
            timer,
            move |core| async move { core.read(fh, ino, offset, size).await },
            move |result| match result {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(e.errno()),
            },
        );
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let timer = Timer::fuse("write");
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(libc::EINVAL);
        };
        let data = data.to_vec();
        self.spawn(
            timer,
            move |core| async move { core.write(fh, ino, offset, &data).await },
            move |result| match result {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(e.errno()),
            },
        );
    }

    fn flush(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, lock_owner: u64, reply: ReplyEmpty) {
        let timer = Timer::fuse("flush");
        // A close drops the process's fcntl locks on the file, whichever
        // descriptor took them (POSIX).
        self.core.release_locks(ino, lock_owner);
        self.run(
            timer,
            move |core| async move { core.flush(ino).await },
            move |r| reply_empty(r, reply),
        );
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        _flags: i32,
        lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let timer = Timer::fuse("release");
        // The last close of an open file drops its flock lock.
        if let Some(owner) = lock_owner {
            self.core.release_locks(ino, owner);
        }
        self.run(
            timer,
            move |core| async move { core.release(fh, ino).await },
            move |r| reply_empty(r, reply),
        );
    }

    fn fsync(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _datasync: bool, reply: ReplyEmpty) {
        let timer = Timer::fuse("fsync");
        self.run(
            timer,
            move |core| async move { core.fsync(ino).await },
            move |r| reply_empty(r, reply),
        );
    }

    fn getlk(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        lock_owner: u64,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        let _timer = Timer::fuse("getlk");
        let Some(request) = lock_request(lock_owner, start, end, typ, pid) else {
            return reply.error(libc::EINVAL);
        };
        match self.core.test_lock(ino, request) {
            Ok(Some((lock, pid))) => {
                let typ = if lock.exclusive { libc::F_WRLCK } else { libc::F_RDLCK };
                reply.locked(lock.start, lock.end, typ, pid)
            }
            Ok(None) => reply.locked(start, end, libc::F_UNLCK, 0),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn setlk(
        &mut self,
        req: &Request<'_>,
        ino: u64,
        _fh: u64,
        lock_owner: u64,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let timer = Timer::fuse("setlk");
        let Some(request) = lock_request(lock_owner, start, end, typ, pid) else {
            return reply.error(libc::EINVAL);
        };
        let waiter = req.pid();
        self.spawn(
            timer,
            move |core| async move {
                core.set_lock(ino, request, sleep, || crate::fs::signal_pending(waiter))
                    .await
            },
            move |r| reply_empty(r, reply),
        );
    }

    fn opendir(&mut self, req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        let _timer = Timer::fuse("opendir");
        match self.core.opendir(&caller(req), ino, flags) {
            Ok(()) => reply.opened(0, 0),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn readdir(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, offset: i64, mut reply: ReplyDirectory) {
        let _timer = Timer::fuse("readdir");
        // Offsets 1 and 2 are "." and ".."; entry offsets are shifted by 2.
        let offset = offset.max(0) as u64;
        if offset < 1 && reply.add(ino, 1, FileType::Directory, ".") {
            return reply.ok();
        }
        if offset < 2 {
            match self.core.parent_of(ino) {
                Ok(parent) => {
                    if reply.add(parent, 2, FileType::Directory, "..") {
                        return reply.ok();
                    }
                }
                Err(e) => return reply.error(e.errno()),
            }
        }
        let mut after = offset.saturating_sub(2);
        loop {
            let entries = match self.core.readdir(ino, after, 256) {
                Ok(entries) => entries,
                Err(e) => return reply.error(e.errno()),
            };
            if entries.is_empty() {
                return reply.ok();
            }
            for entry in entries {
                let name = OsStr::from_bytes(&entry.name);
                if reply.add(entry.ino, (entry.offset + 2) as i64, file_type(entry.kind), name) {
                    return reply.ok();
                }
                after = entry.offset;
            }
        }
    }

    fn fsyncdir(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _datasync: bool, reply: ReplyEmpty) {
        let timer = Timer::fuse("fsyncdir");
        self.run(
            timer,
            move |core| async move { core.sync().await },
            move |r| reply_empty(r, reply),
        );
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        let _timer = Timer::fuse("statfs");
        match self.core.statfs() {
            Ok(stats) => {
                let blocks = STATFS_CAPACITY / STATFS_BLOCK;
                let used = stats.bytes.div_ceil(STATFS_BLOCK).min(blocks);
                let files_free = STATFS_FILES.saturating_sub(stats.inodes);
                reply.statfs(
                    blocks,
                    blocks - used,
                    blocks - used,
                    STATFS_FILES,
                    files_free,
                    STATFS_BLOCK as u32,
                    crate::fs::NAME_MAX as u32,
                    STATFS_BLOCK as u32,
                )
            }
            Err(e) => reply.error(e.errno()),
        }
    }

    fn fallocate(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        length: i64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let timer = Timer::fuse("fallocate");
        let (Ok(offset), Ok(length)) = (u64::try_from(offset), u64::try_from(length)) else {
            return reply.error(libc::EINVAL);
        };
        self.spawn(
            timer,
            move |core| async move { core.fallocate(ino, offset, length, mode).await },
            move |r| reply_empty(r, reply),
        );
    }

    /// SEEK_DATA and SEEK_HOLE (the kernel answers the other kinds itself).
    fn lseek(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, offset: i64, whence: i32, reply: ReplyLseek) {
        let timer = Timer::fuse("lseek");
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(libc::ENXIO);
        };
        self.spawn(
            timer,
            move |core| async move { core.seek_data_or_hole(ino, offset, whence).await },
            move |r| match r {
                Ok(at) => reply.offset(at as i64),
                Err(e) => reply.error(e.errno()),
            },
        );
    }

    fn getxattr(&mut self, req: &Request<'_>, ino: u64, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _timer = Timer::fuse("getxattr");
        reply_xattr(self.core.getxattr(&caller(req), ino, name.as_bytes()), size, reply);
    }

    fn listxattr(&mut self, req: &Request<'_>, ino: u64, size: u32, reply: ReplyXattr) {
        let _timer = Timer::fuse("listxattr");
        reply_xattr(self.core.listxattr(&caller(req), ino), size, reply);
    }

    fn setxattr(
        &mut self,
        req: &Request<'_>,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _timer = Timer::fuse("setxattr");
        reply_empty(
            self.core.setxattr(&caller(req), ino, name.as_bytes(), value, flags),
            reply,
        );
    }

    fn removexattr(&mut self, req: &Request<'_>, ino: u64, name: &OsStr, reply: ReplyEmpty) {
        let _timer = Timer::fuse("removexattr");
        reply_empty(self.core.removexattr(&caller(req), ino, name.as_bytes()), reply);
    }

    fn create(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _timer = Timer::fuse("create");
        match self
            .core
            .create(&caller(req), parent, name.as_bytes(), mode & !umask, flags)
        {
            Ok((inode, fh)) => reply.created(&ENTRY_TTL, &self.attr(&inode), 0, fh, self.open_flags()),
            Err(e) => reply.error(e.errno()),
        }
    }
}

fn file_attr(core: &Core, inode: &Inode) -> FileAttr {
    let inode = core.presented(*inode);
    FileAttr {
        ino: inode.ino,
        size: inode.size,
        blocks: inode.allocated.div_ceil(512),
        atime: system_time(inode.atime),
        mtime: system_time(inode.mtime),
        ctime: system_time(inode.ctime),
        crtime: system_time(inode.ctime),
        kind: file_type(inode.kind),
        perm: inode.perm as u16,
        nlink: inode.nlink,
        uid: inode.uid,
        gid: inode.gid,
        rdev: inode.rdev,
        blksize: core.chunk_size().min(u32::MAX as u64) as u32,
        flags: 0,
    }
}
