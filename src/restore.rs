//! `s3vault restore`: copies files out of a snapshot into a local directory,
//! byte for byte, with their permission bits, times, symlinks, hard links
//! (within what is restored), FIFOs and extended attributes; owners and
//! device nodes too when run as root.
//!
//! Nothing at the destination is ever overwritten: an existing name stops
//! the restore with an error before anything is written under it.

use crate::cache::{Wanted, data_key, runs};
use crate::codec::{self, ChunkAddress};
use crate::journal::snapshots::Snapshot;
use crate::keyring::Keyring;
use crate::meta::{FileKind, Inode, MetaError, MetadataStore, ROOT_INO, SqliteStore};
use crate::store::{ObjectStore, StoreError};
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::task::JoinHandle;

/// Runs of chunks (ranged GETs) fetched ahead while a file is written out.
const WINDOW: usize = 8;
/// Chunk references read from the metadata at a time.
const BATCH: u64 = 1024;
const ENTRIES_BATCH: usize = 1024;

type Fetch = JoinHandle<Result<Bytes, StoreError>>;

#[derive(Debug, thiserror::Error)]
pub enum CopyOutError {
    #[error("{0}: no such file or directory in the snapshot")]
    NoSuchPath(String),
    #[error("{0}: a path in the volume is absolute or relative to its root, without \"..\"")]
    BadPath(String),
    #[error("{}: already exists; restore never overwrites", .0.display())]
    Exists(PathBuf),
    #[error("{}: {cause}", .path.display())]
    Local { path: PathBuf, cause: io::Error },
    #[error("{path}: chunk {index} failed its integrity check: {cause}")]
    Integrity {
        path: String,
        index: u64,
        cause: codec::CodecError,
    },
    #[error("{path}: chunk {index}: {cause}")]
    Fetch {
        path: String,
        index: u64,
        cause: StoreError,
    },
    #[error(transparent)]
    Meta(#[from] MetaError),
}

/// What a restore copied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    pub hard_links: u64,
    pub others: u64,
    /// Sockets, and device nodes when not root: not recreated.
    pub skipped: u64,
    /// Extended attributes this process may not set (trusted.*, security.*).
    pub xattrs_skipped: u64,
    pub bytes: u64,
}

/// One restored file, as the caller reports and audits it.
pub struct Restored<'a> {
    /// The path in the volume ("/dir/file").
    pub path: &'a [u8],
    pub inode: &'a Inode,
    /// Bytes written since the previous report.
    pub bytes: u64,
}

pub struct Restorer<'a> {
    store: Arc<dyn ObjectStore>,
    ring: Arc<Keyring>,
    chunk_size: u64,
    meta: SqliteStore,
    /// A cache directory's `blocks/`, whose packs not yet uploaded
    /// (`open/`, `dirty/`) are read before the store (`recover`).
    local_blocks: Option<PathBuf>,
    as_root: bool,
    /// Inodes with more than one link, by where the first was restored.
    linked: HashMap<u64, PathBuf>,
    /// Directories whose times are set once their contents are in place.
    directories: Vec<(PathBuf, Inode)>,
    summary: Summary,
    report: Box<dyn FnMut(Restored<'_>) + 'a>,
}

fn local(path: &Path) -> impl FnOnce(io::Error) -> CopyOutError + '_ {
    move |cause| CopyOutError::Local {
        path: path.to_path_buf(),
        cause,
    }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Splits a volume path into its names, refusing "..".
fn components(path: &str) -> Result<Vec<&[u8]>, CopyOutError> {
    let names: Vec<&[u8]> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::as_bytes)
        .collect();
    if names.iter().any(|c| *c == b"..") {
        return Err(CopyOutError::BadPath(path.to_string()));
    }
    Ok(names)
}

impl<'a> Restorer<'a> {
    /// A restorer of `snapshot`; `report` hears of every file, link and
    /// directory restored, and of the bytes written as they are.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        ring: Arc<Keyring>,
        chunk_size: u32,
        snapshot: Snapshot,
        report: impl FnMut(Restored<'_>) + 'a,
    ) -> Result<Restorer<'a>, CopyOutError> {
        let mut meta = SqliteStore::in_memory()?;
        snapshot.import_into(&mut meta)?;
        Ok(Restorer::of_state(store, ring, chunk_size, meta, None, report))
    }

    /// A restorer of the state in `meta` (a cache directory's database, for
    /// `recover`), reading blocks from `local_blocks` (that directory's
    /// `blocks/`) when they are there and from the store otherwise.
    pub fn of_state(
        store: Arc<dyn ObjectStore>,
        ring: Arc<Keyring>,
        chunk_size: u32,
        meta: SqliteStore,
        local_blocks: Option<PathBuf>,
        report: impl FnMut(Restored<'_>) + 'a,
    ) -> Restorer<'a> {
        Restorer {
            store,
            ring,
            chunk_size: u64::from(chunk_size),
            meta,
            local_blocks,
            as_root: crate::os::effective_uid() == 0,
            linked: HashMap::new(),
            directories: Vec::new(),
            summary: Summary::default(),
            report: Box::new(report),
        }
    }

    /// Paths of the files, symlinks and special files whose metadata
    /// changed in the database's journal — what never reached the store —
    /// one path per inode, in the order of a walk from the root.
    pub fn unuploaded_paths(&self) -> Result<Vec<String>, CopyOutError> {
        let mut touched = std::collections::HashSet::new();
        for (_, op) in self.meta.journal_after(0, usize::MAX)? {
            for op in crate::meta::ops::decode_ops(&op)? {
                if let Some(ino) = op.inode() {
                    touched.insert(ino);
                }
            }
        }
        let mut found = Vec::new();
        let mut queue = VecDeque::from([(ROOT_INO, String::new())]);
        while let Some((dir, path)) = queue.pop_front() {
            let mut children = Vec::new();
            self.each_entry(dir, |name, child| children.push((name, child)))?;
            for (name, child) in children {
                let child_path = format!("{path}/{}", String::from_utf8_lossy(&name));
                if self.inode(child)?.kind == FileKind::Dir {
                    queue.push_back((child, child_path));
                } else if touched.remove(&child) {
                    found.push(child_path);
                }
            }
        }
        Ok(found)
    }

    /// Bytes of regular files under `path` (for a progress bar's length).
    pub fn size_of(&self, path: &str) -> Result<u64, CopyOutError> {
        let mut total = 0;
        let mut stack = vec![self.resolve(path)?];
        while let Some(ino) = stack.pop() {
            let inode = self.inode(ino)?;
            match inode.kind {
                FileKind::File => total += inode.size,
                FileKind::Dir => self.each_entry(ino, |_, child| stack.push(child))?,
                _ => {}
            }
        }
        Ok(total)
    }

    fn inode(&self, ino: u64) -> Result<Inode, CopyOutError> {
        self.meta
            .inode(ino)?
            .ok_or_else(|| CopyOutError::Meta(MetaError::Corrupt(format!("entry names missing inode {ino}"))))
    }

    fn resolve(&self, path: &str) -> Result<u64, CopyOutError> {
        let mut ino = ROOT_INO;
        for name in components(path)? {
            ino = self
                .meta
                .lookup(ino, name)?
                .ok_or_else(|| CopyOutError::NoSuchPath(path.to_string()))?;
        }
        Ok(ino)
    }

    fn each_entry(&self, dir: u64, mut f: impl FnMut(Vec<u8>, u64)) -> Result<(), CopyOutError> {
        let mut after = 0;
        loop {
            let batch = self.meta.entries(dir, after, ENTRIES_BATCH)?;
            let Some(last) = batch.last() else { return Ok(()) };
            after = last.offset;
            for entry in batch {
                f(entry.name, entry.ino);
            }
        }
    }

    /// Restores `path` of the volume as `into/<its last name>` (for "/",
    /// the volume's contents into `into`, which must be empty or absent).
    /// `into` is created if missing, as for "/".
    pub async fn restore(&mut self, path: &str, into: &Path) -> Result<(), CopyOutError> {
        let names = components(path)?;
        let ino = self.resolve(path)?;
        let dest = match names.last() {
            Some(name) => into.join(std::ffi::OsStr::from_bytes(name)),
            None => into.to_path_buf(),
        };
        let volume_path: Vec<u8> = std::iter::once(b'/').chain(names.join(&b'/')).collect();
        std::fs::create_dir_all(into).map_err(local(into))?;
        if names.is_empty() && std::fs::read_dir(into).map_err(local(into))?.next().is_some() {
            return Err(CopyOutError::Exists(into.to_path_buf()));
        }
        let mut queue = VecDeque::from([(ino, dest, volume_path, names.is_empty())]);
        while let Some((ino, dest, volume_path, exists)) = queue.pop_front() {
            let inode = self.inode(ino)?;
            if !exists {
                self.create(&inode, &dest, &volume_path).await?;
            }
            if inode.kind == FileKind::Dir {
                let mut children = Vec::new();
                self.each_entry(ino, |name, child| children.push((name, child)))?;
                for (name, child) in children {
                    let mut child_path = volume_path.clone();
                    if child_path.len() > 1 {
                        child_path.push(b'/');
                    }
                    child_path.extend_from_slice(&name);
                    queue.push_back((child, dest.join(std::ffi::OsStr::from_bytes(&name)), child_path, false));
                }
                self.directories.push((dest, inode));
            }
        }
        Ok(())
    }

    /// Sets the directories' times (their contents are in place) and says
    /// what was restored.
    pub fn finish(mut self) -> Result<Summary, CopyOutError> {
        for (dest, inode) in std::mem::take(&mut self.directories).into_iter().rev() {
            set_times(&dest, &inode).map_err(local(&dest))?;
        }
        Ok(self.summary)
    }

    async fn create(&mut self, inode: &Inode, dest: &Path, volume_path: &[u8]) -> Result<(), CopyOutError> {
        if std::fs::symlink_metadata(dest).is_ok() {
            return Err(CopyOutError::Exists(dest.to_path_buf()));
        }
        if inode.kind != FileKind::Dir && inode.nlink > 1 {
            if let Some(first) = self.linked.get(&inode.ino) {
                std::fs::hard_link(first, dest).map_err(local(dest))?;
                self.summary.hard_links += 1;
                self.report(volume_path, inode, 0);
                return Ok(());
            }
            self.linked.insert(inode.ino, dest.to_path_buf());
        }
        match inode.kind {
            FileKind::File => {
                self.copy_file(inode, dest, volume_path).await?;
                self.summary.files += 1;
            }
            FileKind::Dir => {
                std::fs::create_dir(dest).map_err(local(dest))?;
                self.summary.directories += 1;
            }
            FileKind::Symlink => {
                let target = self.meta.symlink_target(inode.ino)?.unwrap_or_default();
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), dest).map_err(local(dest))?;
                self.summary.symlinks += 1;
            }
            FileKind::Fifo => {
                let c = c_path(dest).map_err(local(dest))?;
                // SAFETY: c is a NUL-terminated path.
                check(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }).map_err(local(dest))?;
                self.summary.others += 1;
            }
            FileKind::CharDevice | FileKind::BlockDevice if self.as_root => {
                let c = c_path(dest).map_err(local(dest))?;
                let kind = if inode.kind == FileKind::CharDevice {
                    libc::S_IFCHR
                } else {
                    libc::S_IFBLK
                };
                // SAFETY: c is a NUL-terminated path.
                check(unsafe { libc::mknod(c.as_ptr(), kind | 0o600, libc::dev_t::from(inode.rdev)) })
                    .map_err(local(dest))?;
                self.summary.others += 1;
            }
            FileKind::Socket | FileKind::CharDevice | FileKind::BlockDevice => {
                self.summary.skipped += 1;
                return Ok(());
            }
        }
        self.set_attributes(inode, dest)?;
        self.report(volume_path, inode, 0);
        Ok(())
    }

    fn report(&mut self, path: &[u8], inode: &Inode, bytes: u64) {
        (self.report)(Restored { path, inode, bytes });
    }

    async fn copy_file(&mut self, inode: &Inode, dest: &Path, volume_path: &[u8]) -> Result<(), CopyOutError> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dest)
            .map_err(local(dest))?;
        let last = inode.size.div_ceil(self.chunk_size);
        let mut first = 0;
        while first < last {
            let wanted: Vec<Wanted> = self
                .meta
                .chunks(inode.ino, first, (first + BATCH).min(last) - 1)?
                .into_iter()
                .map(|(index, block)| Wanted {
                    ino: inode.ino,
                    index,
                    block,
                })
                .collect();
            first += BATCH;
            let mut pending: VecDeque<(&[Wanted], Fetch)> = VecDeque::new();
            let mut runs = runs(&wanted).into_iter();
            loop {
                while pending.len() < WINDOW
                    && let Some(run) = runs.next()
                {
                    let pack = run[0].block.pack;
                    let start = u64::from(run[0].block.offset);
                    let len = run[run.len() - 1].block.end() - start;
                    let store = self.store.clone();
                    let local = self.local_blocks.clone();
                    pending.push_back((
                        run,
                        tokio::spawn(async move {
                            let name = hex::encode(pack);
                            for dir in ["open", "dirty"] {
                                if let Some(local) = &local
                                    && let Ok(bytes) = read_range(&local.join(dir).join(&name), start, len)
                                {
                                    return Ok(bytes);
                                }
                            }
                            store.get_range(&data_key(&pack), start, len).await
                        }),
                    ));
                }
                let Some((run, task)) = pending.pop_front() else {
                    break;
                };
                let fetch_failed = |cause| CopyOutError::Fetch {
                    path: crate::audit::display_bytes(volume_path),
                    index: run[0].index,
                    cause,
                };
                let sealed = task
                    .await
                    .map_err(|e| fetch_failed(StoreError::Unreachable(e.to_string())))?
                    .map_err(fetch_failed)?;
                let start = u64::from(run[0].block.offset);
                for chunk in run {
                    let from = (u64::from(chunk.block.offset) - start) as usize;
                    let to = (chunk.block.end() - start) as usize;
                    let address = ChunkAddress {
                        pack: chunk.block.pack,
                        offset: u64::from(chunk.block.offset),
                        ino: inode.ino,
                        index: chunk.index,
                    };
                    let plain = codec::open_chunk(&self.ring, &address, &sealed[from..to]).map_err(|cause| {
                        CopyOutError::Integrity {
                            path: crate::audit::display_bytes(volume_path),
                            index: chunk.index,
                            cause,
                        }
                    })?;
                    file.write_all_at(&plain, chunk.index * self.chunk_size)
                        .map_err(local(dest))?;
                    self.summary.bytes += plain.len() as u64;
                    self.report(volume_path, inode, plain.len() as u64);
                }
            }
        }
        file.set_len(inode.size).map_err(local(dest))?;
        file.sync_all().map_err(local(dest))?;
        Ok(())
    }

    fn set_attributes(&mut self, inode: &Inode, dest: &Path) -> Result<(), CopyOutError> {
        let c = c_path(dest).map_err(local(dest))?;
        for name in self.meta.xattr_names(inode.ino)? {
            let Some(value) = self.meta.xattr(inode.ino, &name)? else {
                continue;
            };
            let Ok(c_name) = CString::new(name) else { continue };
            // SAFETY: both strings are NUL-terminated; value outlives the call.
            let rc = unsafe { libc::lsetxattr(c.as_ptr(), c_name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
            match check(rc) {
                Ok(()) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::ENOTSUP)) => {
                    self.summary.xattrs_skipped += 1;
                }
                Err(e) => return Err(local(dest)(e)),
            }
        }
        if self.as_root {
            std::os::unix::fs::lchown(dest, Some(inode.uid), Some(inode.gid)).map_err(local(dest))?;
        }
        if inode.kind != FileKind::Symlink {
            // After chown, which clears setuid and setgid.
            // SAFETY: c is a NUL-terminated path.
            check(unsafe { libc::chmod(c.as_ptr(), (inode.perm & 0o7777) as libc::mode_t) }).map_err(local(dest))?;
        }
        if inode.kind != FileKind::Dir {
            set_times(dest, inode).map_err(local(dest))?;
        }
        Ok(())
    }
}

/// `len` bytes at `start` of a local file.
fn read_range(path: &Path, start: u64, len: u64) -> io::Result<Bytes> {
    let mut data = vec![0u8; len as usize];
    std::fs::File::open(path)?.read_exact_at(&mut data, start)?;
    Ok(Bytes::from(data))
}

fn set_times(dest: &Path, inode: &Inode) -> io::Result<()> {
    let c = c_path(dest)?;
    let spec = |ns: i64| libc::timespec {
        tv_sec: ns.div_euclid(1_000_000_000),
        tv_nsec: ns.rem_euclid(1_000_000_000),
    };
    let times = [spec(inode.atime), spec(inode.mtime)];
    // SAFETY: c is NUL-terminated and times holds two timespecs.
    check(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })
}
