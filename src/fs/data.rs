//! File data: open files, their write buffers, chunk reads and staging.
//!
//! Writes land in a per-file buffer of whole chunks in memory (a 4 KiB
//! write touches one chunk). `flush` (every close), `fsync` and memory
//! pressure seal the buffered chunks, append them to the cache's open pack
//! (uploaded in the background once cut), and point the chunk map at them
//! in one metadata transaction, under the pack lock so no cut comes between.
//! A chunk is never overwritten in place; the journal writer uploads a
//! metadata state only after every pack it references is in the store
//! (invariant 3).

use super::trail::subject;
use super::{Caller, Core, FsError, FsResult, Inode, purge};
use crate::audit::{Event, Record, Subject};
use crate::cache::{CacheError, Packer, Wanted};
use crate::codec::{self, ChunkAddress};
use crate::meta::{ChunkRef, FileKind, MetadataStore};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};

const NONE: u64 = u64::MAX;
/// How far ahead of a sequential reader chunks are fetched, at most.
const READ_AHEAD_BYTES: u64 = 32 << 20;
/// How far into a pack a cold read of a file's start fetches the other
/// files stored after it (see `pack_neighbours`).
const PACK_AHEAD: u64 = 4 << 20;
/// Reads this close to where the last one ended still count as sequential:
/// the kernel's parallel readahead requests may arrive out of order.
const SEQUENTIAL_SLACK: u64 = 1 << 20;

/// Copies the part of a block (starting at file offset `block_start`) that
/// overlaps `out` (starting at file offset `offset`).
fn copy_block(out: &mut [u8], offset: u64, block_start: u64, content: &[u8]) {
    let from = offset.max(block_start);
    let to = (offset + out.len() as u64).min(block_start + content.len() as u64);
    if from < to {
        out[(from - offset) as usize..(to - offset) as usize]
            .copy_from_slice(&content[(from - block_start) as usize..(to - block_start) as usize]);
    }
}

pub(super) struct OpenFile {
    ino: u64,
    opens: AtomicU32,
    buffer: tokio::sync::Mutex<WriteBuffer>,
    /// Mirrors of the buffer's size and mtime, readable without awaiting
    /// the buffer lock (getattr runs on the FUSE thread).
    pending_size: AtomicU64,
    pending_mtime: AtomicI64,
    /// Read-ahead state: where the next sequential read starts, the window
    /// in blocks, and the first block not yet fetched ahead.
    next_read: AtomicU64,
    window: AtomicU64,
    fetched_ahead: AtomicU64,
    /// Whether this host's open of it is counted in the shared database
    /// (`MetadataStore::hold`), so other hosts keep it after an unlink.
    held: AtomicBool,
    /// Data of it was committed that may not be in the store yet: on a
    /// shared database, its next close waits for the upload.
    not_uploaded: AtomicBool,
}

/// One open(2)'s file handle: what the close record reports.
pub(super) struct Handle {
    flags: i32,
    /// The path it was opened by, for the close record (empty unaudited).
    path: Vec<u8>,
    subject: Subject,
    read: AtomicU64,
    written: AtomicU64,
}

#[derive(Default)]
pub(super) struct WriteBuffer {
    /// Block index -> its full content (shorter than a block at the end).
    dirty: BTreeMap<u64, Vec<u8>>,
    dirty_bytes: usize,
    /// Logical size while it differs from the committed one.
    size: Option<u64>,
    mtime: Option<i64>,
    /// Stored blocks from this index on were truncated away.
    cut: Option<u64>,
}

impl WriteBuffer {
    fn is_clean(&self) -> bool {
        self.dirty.is_empty() && self.size.is_none() && self.mtime.is_none() && self.cut.is_none()
    }
}

impl OpenFile {
    fn new(ino: u64) -> OpenFile {
        OpenFile {
            ino,
            opens: AtomicU32::new(0),
            buffer: tokio::sync::Mutex::new(WriteBuffer::default()),
            pending_size: AtomicU64::new(NONE),
            pending_mtime: AtomicI64::new(i64::MIN),
            next_read: AtomicU64::new(0),
            window: AtomicU64::new(0),
            fetched_ahead: AtomicU64::new(0),
            held: AtomicBool::new(false),
            not_uploaded: AtomicBool::new(false),
        }
    }

    /// Notes a read of `offset..end`; for a sequential reader, returns the
    /// blocks `from..=to` to fetch ahead, a window that doubles with each
    /// sequential read up to `max` blocks and restarts after a seek.
    fn readahead(&self, offset: u64, end: u64, bs: u64, max: u64) -> Option<(u64, u64)> {
        let expected = self.next_read.fetch_max(end, Ordering::SeqCst);
        if offset.abs_diff(expected) > SEQUENTIAL_SLACK {
            self.next_read.store(end, Ordering::SeqCst);
            self.window.store(0, Ordering::SeqCst);
            self.fetched_ahead.store(0, Ordering::SeqCst);
            return None;
        }
        let window = (self.window.load(Ordering::SeqCst) * 2).clamp(1, max);
        self.window.store(window, Ordering::SeqCst);
        let last = (end - 1) / bs;
        let fetched = self.fetched_ahead.load(Ordering::SeqCst);
        let from = fetched.max(last + 1);
        let to = last + window;
        // Once running, the window is topped up only when half of it has
        // been read: read-ahead then goes out in GETs of half a window,
        // not one small GET per read.
        if from > to || (fetched > last + 1 && to + 1 - from < window / 2) {
            return None;
        }
        self.fetched_ahead.fetch_max(to + 1, Ordering::SeqCst);
        Some((from, to))
    }

    pub(super) fn apply_pending(&self, inode: &mut Inode) {
        let size = self.pending_size.load(Ordering::SeqCst);
        if size != NONE {
            inode.size = size;
        }
        let mtime = self.pending_mtime.load(Ordering::SeqCst);
        if mtime != i64::MIN {
            inode.mtime = mtime;
            inode.ctime = inode.ctime.max(mtime);
        }
    }

    /// Drops the buffered mtime; the returned guard keeps writes out until
    /// the caller has stored its explicit one.
    pub(super) async fn forget_buffered_mtime(&self) -> tokio::sync::MutexGuard<'_, WriteBuffer> {
        let mut buffer = self.buffer.lock().await;
        buffer.mtime = None;
        self.publish(&buffer);
        buffer
    }

    fn publish(&self, buffer: &WriteBuffer) {
        self.pending_size.store(buffer.size.unwrap_or(NONE), Ordering::SeqCst);
        self.pending_mtime
            .store(buffer.mtime.unwrap_or(i64::MIN), Ordering::SeqCst);
    }
}

impl Core {
    /// open(2) of an existing inode: checks access, truncates for O_TRUNC
    /// (the kernel leaves that to us, in the same request), records the
    /// attempt, and returns a file handle number.
    pub async fn open(&self, caller: &Caller, ino: u64, flags: i32) -> FsResult<u64> {
        let opened = self.open_checked(caller, ino, flags).await;
        let path = opened
            .as_ref()
            .ok()
            .and_then(|fh| self.handle(*fh))
            .map(|h| h.path.clone());
        let recorded = self.audit(&opened, |errno| {
            Record::new(Event::Open, subject(caller), errno)
                .path(&path.unwrap_or_else(|| self.path_of(ino)))
                .ino(Some(ino))
                .flags(flags)
        });
        match (opened, recorded) {
            (Ok(fh), Err(e)) => {
                // Unrecorded, so not opened.
                self.forget_handle(fh);
                self.release(0, ino).await?;
                Err(e)
            }
            (opened, _) => opened,
        }
    }

    async fn open_checked(&self, caller: &Caller, ino: u64, flags: i32) -> FsResult<u64> {
        let inode = self.meta().inode(ino)?.ok_or(FsError::ENOENT)?;
        self.check(&inode, caller, super::access::open_wants(flags))?;
        let fh = self.open_handle(ino, flags, caller)?;
        if flags & libc::O_TRUNC != 0
            && inode.kind == FileKind::File
            && let Err(e) = self.truncate(ino, 0).await
        {
            self.forget_handle(fh);
            self.release(0, ino).await?;
            return Err(e);
        }
        Ok(fh)
    }

    /// Opens `ino` without permission checks; returns a file handle number.
    pub(crate) fn open_handle(&self, ino: u64, flags: i32, caller: &Caller) -> FsResult<u64> {
        let path = if self.audit.is_some() {
            self.path_of(ino)
        } else {
            Vec::new()
        };
        self.open_handle_at(ino, flags, caller, path, false)
    }

    /// `open_handle` of a file whose path (for the close record) is known;
    /// `held`: the transaction that made it already counted this open
    /// (`MetadataStore::hold`).
    pub(super) fn open_handle_at(
        &self,
        ino: u64,
        flags: i32,
        caller: &Caller,
        path: Vec<u8>,
        held: bool,
    ) -> FsResult<u64> {
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        if write && self.is_read_only() {
            return Err(FsError::EROFS);
        }
        let inode = self.meta().inode(ino)?.ok_or(FsError::ENOENT)?;
        if inode.kind == FileKind::Dir && write {
            return Err(FsError::EISDIR);
        }
        // Count the open while holding the map, so `retire` cannot drop the
        // entry between our lookup and our increment.
        let mut files = self.files();
        let file = files.entry(ino).or_insert_with(|| Arc::new(OpenFile::new(ino))).clone();
        file.opens.fetch_add(1, Ordering::SeqCst);
        drop(files);
        if held {
            file.held.store(true, Ordering::SeqCst);
        } else if self.options.shared_metadata && !file.held.swap(true, Ordering::SeqCst) {
            let held = self.with_retries(|| Ok(self.meta().hold(ino)?));
            if held != Ok(true) {
                file.held.store(false, Ordering::SeqCst);
                file.opens.fetch_sub(1, Ordering::SeqCst);
                // Another host removed it since we looked it up.
                return Err(held.err().unwrap_or(FsError::ENOENT));
            }
        }
        let fh = self.next_fh.fetch_add(1, Ordering::SeqCst);
        let handle = Handle {
            flags,
            path,
            subject: subject(caller),
            read: AtomicU64::new(0),
            written: AtomicU64::new(0),
        };
        self.handles().insert(fh, Arc::new(handle));
        Ok(fh)
    }

    /// Undoes `open_handle` for a handle the kernel never saw.
    pub(super) fn abandon_handle(&self, fh: u64, ino: u64) {
        self.forget_handle(fh);
        if let Some(file) = self.files().get(&ino) {
            file.opens.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn forget_handle(&self, fh: u64) -> Option<Arc<Handle>> {
        self.handles().remove(&fh)
    }

    fn handle(&self, fh: u64) -> Option<Arc<Handle>> {
        self.handles().get(&fh).cloned()
    }

    /// The open file of `ino`, or a transient one for operations on files
    /// nobody has open (truncate by path).
    fn file(&self, ino: u64) -> Arc<OpenFile> {
        self.files()
            .entry(ino)
            .or_insert_with(|| Arc::new(OpenFile::new(ino)))
            .clone()
    }

    /// Drops a file's in-memory state once nobody has it open and nothing of
    /// it is buffered; deletes it if it lost its last link while open.
    async fn retire(&self, file: &Arc<OpenFile>) -> FsResult<()> {
        let buffer = file.buffer.lock().await;
        {
            let mut files = self.files();
            if file.opens.load(Ordering::SeqCst) > 0 || !buffer.is_clean() {
                return Ok(());
            }
            if files.get(&file.ino).is_some_and(|f| Arc::ptr_eq(f, file)) {
                files.remove(&file.ino);
            }
        }
        // Not under the file map's lock: unlink takes the metadata lock,
        // then the map's; taking them the other way round could deadlock.
        if file.held.swap(false, Ordering::SeqCst) {
            // The close does not wait for the database: the release goes
            // with this host's next statement, and if the file was unlinked
            // meanwhile (here or elsewhere), the next sync deletes it once
            // no host holds it (`settle_releases`).
            self.with_retries(|| Ok(self.meta().release_later(file.ino)?))?;
            self.released.store(true, Ordering::SeqCst);
            return Ok(());
        }
        let unlinked = self.meta().inode(file.ino)?.is_some_and(|i| i.nlink == 0);
        if unlinked {
            let garbage = self.transact(|m| purge(m, file.ino))?;
            self.discard_unuploaded(&garbage);
        }
        Ok(())
    }

    /// The last close of handle `fh` (0 if unknown) of `ino`: uploads what
    /// is buffered and records the close with the bytes moved through it.
    pub async fn release(&self, fh: u64, ino: u64) -> FsResult<()> {
        let Some(file) = self.files().get(&ino).cloned() else {
            return Err(FsError::EBADF);
        };
        let result = self.flush(ino).await;
        file.opens.fetch_sub(1, Ordering::SeqCst);
        if let Some(handle) = self.forget_handle(fh) {
            // A close cannot be undone; the log reports a failed record.
            let _ = self.audit(&result, |errno| {
                let mut record = Record::new(Event::Close, handle.subject, errno)
                    .path(&handle.path)
                    .ino(Some(ino))
                    .flags(handle.flags);
                record.bytes_read = Some(handle.read.load(Ordering::Relaxed));
                record.bytes_written = Some(handle.written.load(Ordering::Relaxed));
                record
            });
        }
        // If the flush failed the buffer keeps the data; the periodic
        // metadata sync retries it and retires the file afterwards.
        self.retire(&file).await?;
        result
    }

    /// Uploads everything buffered for `ino` and commits it to the metadata.
    pub async fn flush(&self, ino: u64) -> FsResult<()> {
        let Some(file) = self.files().get(&ino).cloned() else {
            return Ok(());
        };
        let mut buffer = file.buffer.lock().await;
        self.commit(&file, &mut buffer, true).await?;
        drop(buffer);
        // Close-to-open across hosts: another host that opens the file
        // once this close returned reads the chunks it maps, so they must
        // be in the store, not only in this host's cache.
        if file.not_uploaded.swap(false, Ordering::SeqCst)
            && let Err(e) = self.journal.upload_data().await
        {
            file.not_uploaded.store(true, Ordering::SeqCst);
            return Err(e.into());
        }
        Ok(())
    }

    /// Commits every buffered file (before a metadata snapshot, at unmount).
    pub(super) async fn flush_all(&self) -> FsResult<()> {
        let files: Vec<Arc<OpenFile>> = self.files().values().cloned().collect();
        let mut result = Ok(());
        for file in files {
            let mut buffer = file.buffer.lock().await;
            if let Err(e) = self.commit(&file, &mut buffer, true).await {
                result = Err(e);
            }
            drop(buffer);
            self.retire(&file).await?;
        }
        result
    }

    /// Reads through handle `fh` (0 if unknown, as in tests).
    pub async fn read(&self, fh: u64, ino: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let data = self.read_at(ino, offset, size).await?;
        if let Some(handle) = self.handle(fh) {
            handle.read.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        Ok(data)
    }

    async fn read_at(&self, ino: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let file = self.files().get(&ino).cloned().ok_or(FsError::EBADF)?;
        // Plan under the buffer lock (buffered blocks are copied, stored ones
        // looked up), fetch after releasing it, so reads of one file proceed
        // in parallel. Objects are immutable: what the plan names stays valid.
        let (mut out, stored, ahead) = {
            let buffer = file.buffer.lock().await;
            let inode = self.meta().inode(ino)?.ok_or(FsError::ENOENT)?;
            let file_size = buffer.size.unwrap_or(inode.size);
            let end = file_size.min(offset.saturating_add(size as u64));
            if offset >= end {
                return Ok(Vec::new());
            }
            let mut out = vec![0u8; (end - offset) as usize];
            let bs = self.chunk_size;
            let (first, last) = (offset / bs, (end - 1) / bs);
            for (index, content) in buffer.dirty.range(first..=last) {
                copy_block(&mut out, offset, index * bs, content);
            }
            let stored = self.stored_blocks(&buffer, ino, first, last)?;
            let ahead = match file.readahead(offset, end, bs, self.max_ahead()) {
                Some((from, to)) if from * bs < file_size => {
                    self.stored_blocks(&buffer, ino, from, to.min((file_size - 1) / bs))?
                }
                _ => Vec::new(),
            };
            (out, stored, ahead)
        };
        // What comes next starts now; what this read needs comes in as
        // few ranged GETs as its chunks allow.
        self.fetcher.prefetch(ahead);
        if offset == 0 {
            self.fetcher.prefetch(self.pack_neighbours(ino, &stored)?);
        }
        let contents = self.fetcher.get_all(&stored).await?;
        for (wanted, content) in stored.iter().zip(contents) {
            copy_block(&mut out, offset, wanted.index * self.chunk_size, &content);
        }
        Ok(out)
    }

    /// When a file's first chunk must come from the store: the other
    /// files' chunks stored after it in the same pack, up to
    /// `PACK_AHEAD` bytes. Files written together are packed together and
    /// are mostly read together (a tree copied in, then read back, scanned
    /// or backed up), so one GET serves many small files instead of one
    /// each.
    fn pack_neighbours(&self, ino: u64, stored: &[Wanted]) -> FsResult<Vec<Wanted>> {
        let Some(first) = stored.first().filter(|w| !self.fetcher.is_local(w)) else {
            return Ok(Vec::new());
        };
        let from = stored.last().map_or(0, |w| w.block.end());
        let to = u64::from(first.block.offset) + PACK_AHEAD;
        let neighbours = self.meta().chunks_in_range(&first.block.pack, from, to)?;
        Ok(neighbours
            .into_iter()
            .filter(|(other, _, _)| *other != ino)
            .map(|(ino, index, block)| Wanted { ino, index, block })
            .filter(|w| !self.fetcher.is_local(w))
            .collect())
    }

    /// Stored (not buffered, not truncated away) blocks `first..=last`.
    fn stored_blocks(&self, buffer: &WriteBuffer, ino: u64, first: u64, last: u64) -> FsResult<Vec<Wanted>> {
        Ok(self
            .meta()
            .chunks(ino, first, last)?
            .into_iter()
            .filter(|(index, _)| !buffer.dirty.contains_key(index) && buffer.cut.is_none_or(|cut| *index < cut))
            .map(|(index, block)| Wanted { ino, index, block })
            .collect())
    }

    /// Chunks fetched ahead of a sequential reader, at most.
    fn max_ahead(&self) -> u64 {
        (READ_AHEAD_BYTES / self.chunk_size).max(2)
    }

    /// Writes through handle `fh` (0 if unknown, as in tests).
    pub async fn write(&self, fh: u64, ino: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let n = self.write_at(ino, offset, data).await?;
        if let Some(handle) = self.handle(fh) {
            handle.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(n)
    }

    async fn write_at(&self, ino: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        if self.is_read_only() {
            return Err(FsError::EROFS);
        }
        let end = offset.checked_add(data.len() as u64).ok_or(FsError::EFBIG)?;
        if end > i64::MAX as u64 {
            return Err(FsError::EFBIG);
        }
        let file = self.files().get(&ino).cloned().ok_or(FsError::EBADF)?;
        let mut buffer = file.buffer.lock().await;
        let committed = self.meta().inode(ino)?.ok_or(FsError::ENOENT)?.size;
        let size = buffer.size.unwrap_or(committed);
        let bs = self.chunk_size as usize;
        let mut pos = 0usize;
        while pos < data.len() {
            let at = offset + pos as u64;
            let index = at / bs as u64;
            let within = (at % bs as u64) as usize;
            let n = (bs - within).min(data.len() - pos);
            if !buffer.dirty.contains_key(&index) {
                let base = if within == 0 && n == bs {
                    Vec::new()
                } else {
                    self.current_block(&buffer, ino, index, size).await?
                };
                buffer.dirty_bytes += bs;
                buffer.dirty.insert(index, base);
            }
            let block = buffer.dirty.get_mut(&index).ok_or(FsError::EIO)?;
            if block.len() < within + n {
                block.resize(within + n, 0);
            }
            block[within..within + n].copy_from_slice(&data[pos..pos + n]);
            pos += n;
        }
        buffer.size = Some(size.max(end));
        buffer.mtime = Some(super::now_ns());
        file.publish(&buffer);
        if buffer.dirty_bytes >= self.options.file_dirty_limit {
            self.commit(&file, &mut buffer, false).await?;
        }
        Ok(data.len() as u32)
    }

    /// lseek(2) with SEEK_DATA or SEEK_HOLE: answered from the chunk map and
    /// the write buffer, so `cp --sparse`, tar and backup tools skip holes
    /// instead of reading zeros through FUSE. A buffered chunk counts as
    /// data until it is committed (an all-zero one then becomes a hole);
    /// the end of the file is a hole.
    pub async fn seek_data_or_hole(&self, ino: u64, offset: u64, whence: i32) -> FsResult<u64> {
        let file = self.file(ino);
        let buffer = file.buffer.lock().await;
        let inode = self.meta().inode(ino)?.ok_or(FsError::ENOENT)?;
        let size = buffer.size.unwrap_or(inode.size);
        if offset >= size {
            return Err(FsError::ENXIO);
        }
        let cs = self.chunk_size;
        let cut = buffer.cut.unwrap_or(u64::MAX);
        let first = offset / cs;
        let found = match whence {
            libc::SEEK_DATA => {
                let stored = self.meta().next_chunk(ino, first)?.filter(|i| *i < cut);
                let buffered = buffer.dirty.range(first..).next().map(|(i, _)| *i);
                let Some(index) = stored.into_iter().chain(buffered).min() else {
                    return Err(FsError::ENXIO);
                };
                (index * cs).max(offset)
            }
            libc::SEEK_HOLE => {
                let mut index = first;
                loop {
                    if buffer.dirty.contains_key(&index) {
                        index += 1;
                    } else if index < cut && self.meta().next_chunk(ino, index)? == Some(index) {
                        index = self.meta().next_gap(ino, index)?.min(cut);
                    } else {
                        break;
                    }
                }
                (index * cs).max(offset)
            }
            _ => return Err(FsError::EINVAL),
        };
        drop(buffer);
        self.retire(&file).await?;
        if found >= size && whence == libc::SEEK_DATA {
            return Err(FsError::ENXIO);
        }
        Ok(found.min(size))
    }

    /// fallocate(2): mode 0 (and KEEP_SIZE) reserve nothing on an object
    /// store but extend the size as asked; PUNCH_HOLE | KEEP_SIZE and
    /// ZERO_RANGE zero a range, and chunks it covers whole become holes that
    /// store nothing (ZERO_RANGE without KEEP_SIZE also extends the size).
    pub async fn fallocate(&self, ino: u64, offset: u64, length: u64, mode: i32) -> FsResult<()> {
        if self.is_read_only() {
            return Err(FsError::EROFS);
        }
        let end = offset
            .checked_add(length)
            .filter(|e| *e <= i64::MAX as u64)
            .ok_or(FsError::EFBIG)?;
        if length == 0 {
            return Err(FsError::EINVAL);
        }
        let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        let file = self.files().get(&ino).cloned().ok_or(FsError::EBADF)?;
        let mut buffer = file.buffer.lock().await;
        let inode = self.meta().inode(ino)?.ok_or(FsError::ENOENT)?;
        let size = buffer.size.unwrap_or(inode.size);
        match mode {
            0 if end > size => buffer.size = Some(end),
            0 | libc::FALLOC_FL_KEEP_SIZE => return Ok(()),
            m if m == punch => self.zero_range(&mut buffer, ino, offset, end.min(size), size).await?,
            m if m & !libc::FALLOC_FL_KEEP_SIZE == libc::FALLOC_FL_ZERO_RANGE => {
                self.zero_range(&mut buffer, ino, offset, end.min(size), size).await?;
                if m & libc::FALLOC_FL_KEEP_SIZE == 0 && end > size {
                    buffer.size = Some(end);
                }
            }
            _ => return Err(FsError::EOPNOTSUPP),
        }
        buffer.mtime = Some(super::now_ns());
        file.publish(&buffer);
        self.commit(&file, &mut buffer, true).await
    }

    /// Zeroes `offset..end` (within `size`) in the write buffer: chunks the
    /// range covers whole become empty, so they commit as holes.
    async fn zero_range(&self, buffer: &mut WriteBuffer, ino: u64, offset: u64, end: u64, size: u64) -> FsResult<()> {
        let bs = self.chunk_size;
        let mut at = offset;
        while at < end {
            let index = at / bs;
            let block_end = ((index + 1) * bs).min(size);
            let to = end.min(block_end);
            let mut content = match buffer.dirty.remove(&index) {
                Some(content) => content,
                None => {
                    let stored = if at == index * bs && to == block_end {
                        Vec::new()
                    } else {
                        self.current_block(buffer, ino, index, size).await?
                    };
                    buffer.dirty_bytes += bs as usize;
                    stored
                }
            };
            let (from, upto) = ((at - index * bs) as usize, (to - index * bs) as usize);
            if from == 0 && upto >= content.len() {
                content.clear();
            } else if from < content.len() {
                let upto = upto.min(content.len());
                content[from..upto].fill(0);
            }
            buffer.dirty.insert(index, content);
            at = to;
        }
        Ok(())
    }

    /// Changes the size of `ino`, zeroing what a later extension would expose.
    pub(super) async fn truncate(&self, ino: u64, new_size: u64) -> FsResult<()> {
        if self.is_read_only() {
            return Err(FsError::EROFS);
        }
        if new_size > i64::MAX as u64 {
            return Err(FsError::EFBIG);
        }
        let file = self.file(ino);
        let result = async {
            let mut buffer = file.buffer.lock().await;
            let inode = self.meta().inode(ino)?.ok_or(FsError::ENOENT)?;
            if inode.kind != FileKind::File {
                return Err(FsError::EINVAL);
            }
            let old_size = buffer.size.unwrap_or(inode.size);
            if new_size < old_size {
                let bs = self.chunk_size;
                let first_gone = new_size.div_ceil(bs);
                let gone: Vec<u64> = buffer.dirty.range(first_gone..).map(|(i, _)| *i).collect();
                for index in gone {
                    buffer.dirty.remove(&index);
                    buffer.dirty_bytes -= bs as usize;
                }
                let within = (new_size % bs) as usize;
                if within != 0 {
                    let index = new_size / bs;
                    if !buffer.dirty.contains_key(&index) {
                        let base = self.current_block(&buffer, ino, index, old_size).await?;
                        buffer.dirty_bytes += bs as usize;
                        buffer.dirty.insert(index, base);
                    }
                    if let Some(block) = buffer.dirty.get_mut(&index) {
                        block.truncate(within);
                    }
                }
                buffer.cut = Some(buffer.cut.map_or(first_gone, |c| c.min(first_gone)));
            }
            buffer.size = Some(new_size);
            buffer.mtime = Some(super::now_ns());
            file.publish(&buffer);
            self.commit(&file, &mut buffer, true).await
        }
        .await;
        self.retire(&file).await?;
        result
    }

    /// A block's current content as the file sees it (buffer excluded):
    /// stored content trimmed to `size`, or empty for a hole.
    async fn current_block(&self, buffer: &WriteBuffer, ino: u64, index: u64, size: u64) -> FsResult<Vec<u8>> {
        if buffer.cut.is_some_and(|cut| index >= cut) {
            return Ok(Vec::new());
        }
        let Some(content) = self.stored_block(ino, index).await? else {
            return Ok(Vec::new());
        };
        let valid = size.saturating_sub(index * self.chunk_size).min(content.len() as u64) as usize;
        Ok(content[..valid].to_vec())
    }

    /// The committed content of one block, or `None` for a hole.
    async fn stored_block(&self, ino: u64, index: u64) -> FsResult<Option<Arc<Vec<u8>>>> {
        let Some((_, block)) = self.meta().chunks(ino, index, index)?.into_iter().next() else {
            return Ok(None);
        };
        Ok(Some(self.fetcher.get(Wanted { ino, index, block }).await?))
    }

    /// Stages buffered chunks in the cache (all of them, or only whole ones
    /// ahead of close) and commits them, the size and the mtime in one
    /// transaction. On failure the chunks stay buffered, so nothing is lost.
    async fn commit(&self, file: &OpenFile, buffer: &mut WriteBuffer, all: bool) -> FsResult<()> {
        if buffer.is_clean() {
            return Ok(());
        }
        let bs = self.chunk_size as usize;
        let chosen: Vec<u64> = buffer
            .dirty
            .iter()
            .filter(|(_, b)| all || b.len() == bs)
            .map(|(i, _)| *i)
            .collect();
        let chunks: Vec<(u64, Vec<u8>)> = chosen
            .iter()
            .filter_map(|i| buffer.dirty.remove(i).map(|b| (*i, b)))
            .collect();
        let ino = file.ino;
        let chunk_size = self.chunk_size;
        let (size, mtime, cut) = (buffer.size, buffer.mtime, buffer.cut);
        let items: Vec<ToStage<'_>> = chunks
            .iter()
            .map(|(index, content)| ToStage {
                ino,
                index: *index,
                content,
            })
            .collect();
        let staged = self
            .stage(&items, |m, refs| {
                let staged: Vec<(u64, Option<ChunkRef>)> = chunks
                    .iter()
                    .map(|(index, _)| *index)
                    .zip(refs.iter().copied())
                    .collect();
                let mut inode = m.inode(ino)?.ok_or(FsError::ENOENT)?;
                let mut replaced = Vec::new();
                if let Some(cut) = cut.filter(|_| all) {
                    replaced.extend(m.remove_chunks_from(ino, cut)?);
                }
                for (index, chunk) in &staged {
                    replaced.extend(m.set_chunk(ino, *index, *chunk)?);
                }
                let freed = crate::meta::release_packs(m, &replaced)?;
                if all {
                    inode.size = size.unwrap_or(inode.size);
                } else if let Some(end) = staged
                    .iter()
                    .map(|(i, b)| i * chunk_size + b.map_or(0, |b| b.len as u64))
                    .max()
                {
                    inode.size = inode.size.max(end.min(size.unwrap_or(u64::MAX)));
                }
                if let Some(t) = mtime {
                    inode.mtime = t;
                    inode.ctime = inode.ctime.max(t);
                }
                m.put_inode(&inode)?;
                Ok(freed)
            })
            .await;
        drop(items);
        let (staged, freed) = match staged {
            Ok(done) => done,
            Err(e) => {
                buffer.dirty.extend(chunks);
                return Err(e);
            }
        };
        self.discard_unuploaded(&freed);
        if self.options.shared_metadata {
            file.not_uploaded.store(true, Ordering::SeqCst);
        }
        // What was just written is the likeliest to be read next: keep it
        // instead of fetching it back from the store.
        for (chunk, (_, content)) in staged.iter().zip(chunks) {
            if let Some(chunk) = chunk {
                self.fetcher.remember(chunk, content);
            }
        }
        buffer.dirty_bytes = buffer.dirty.len() * bs;
        if all {
            buffer.size = None;
            buffer.mtime = None;
            buffer.cut = None;
        }
        file.publish(buffer);
        Ok(())
    }

    /// Seals chunks into the cache's open pack and runs `commit` (which
    /// maps them) in one metadata transaction, both under the pack lock; an
    /// all-zero chunk becomes a hole (`None`) and stores nothing. Returns
    /// where each chunk went, in order, and what `commit` returned.
    pub(super) async fn stage<T>(
        &self,
        chunks: &[ToStage<'_>],
        mut commit: impl FnMut(&mut dyn MetadataStore, &[Option<ChunkRef>]) -> FsResult<T>,
    ) -> FsResult<(Vec<Option<ChunkRef>>, T)> {
        let stored = |content: &[u8]| content.iter().any(|b| *b != 0);
        let sealed_len: u64 = chunks
            .iter()
            .filter(|c| stored(c.content))
            .map(|c| codec::sealed_chunk_len(c.content.len()) as u64)
            .sum();
        if sealed_len > 0 {
            self.cache.reserve(sealed_len).await.map_err(cache_error)?;
        }
        let mut packer = self.cache.packer().await;
        if packer.is_full_for(sealed_len) {
            self.cut(&mut packer)?;
        }
        let mut staged = Vec::with_capacity(chunks.len());
        if sealed_len > 0 {
            let (pack, mut offset) = packer.position().map_err(|e| cache_error(e.into()))?;
            let key = codec::pack_key(&self.ring, &pack);
            for chunk in chunks {
                if !stored(chunk.content) {
                    staged.push(None);
                    continue;
                }
                let addr = ChunkAddress {
                    pack,
                    offset,
                    ino: chunk.ino,
                    index: chunk.index,
                };
                let sealed = codec::seal_chunk(&self.ring, &key, &addr, chunk.content);
                packer.append(&sealed).map_err(|e| cache_error(e.into()))?;
                staged.push(Some(ChunkRef {
                    pack,
                    offset: u32::try_from(offset).map_err(|_| FsError::EIO)?,
                    len: chunk.content.len() as u32,
                }));
                offset += sealed.len() as u64;
            }
        } else {
            staged.resize(chunks.len(), None);
        }
        let done = self.transact_local(|m| commit(m, &staged))?;
        drop(packer);
        Ok((staged, done))
    }

    /// Cuts the open pack for upload (or drops it, if nothing references
    /// it any more).
    pub(super) fn cut(&self, packer: &mut Packer<'_>) -> FsResult<()> {
        packer.cut_with(self.meta().as_mut()).map_err(cache_error)
    }
}

/// A chunk to seal into the open pack.
pub(super) struct ToStage<'a> {
    pub(super) ino: u64,
    pub(super) index: u64,
    pub(super) content: &'a [u8],
}

/// What a cache failure means to the caller.
fn cache_error(e: CacheError) -> FsError {
    match e {
        CacheError::Full => FsError::ENOSPC,
        CacheError::Io(e) if e.kind() == std::io::ErrorKind::StorageFull => FsError::ENOSPC,
        CacheError::Io(e) => {
            tracing::error!(error = %e, "cannot write file data to the cache");
            FsError::EIO
        }
        CacheError::Meta(e) => e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sequential_reader_gets_read_ahead_in_half_windows() {
        let file = OpenFile::new(2);
        let (bs, max, read) = (16u64 << 10, 2048u64, 128u64 << 10);
        let mut fetches = Vec::new();
        for n in 0..4096u64 {
            if let Some((from, to)) = file.readahead(n * read, (n + 1) * read, bs, max) {
                fetches.push((from, to));
            }
        }
        // Never overlapping (while the window is still smaller than a read,
        // the reader fetches what it overtook itself).
        for pair in fetches.windows(2) {
            assert!(pair[1].0 > pair[0].1, "{pair:?}");
        }
        // 512 MiB read in 128 KiB reads: a few dozen fetches of up to half
        // the 32 MiB window, not one per read.
        let steady: Vec<u64> = fetches.iter().skip(12).map(|(f, t)| t + 1 - f).collect();
        assert!(steady.iter().all(|n| *n >= max / 2), "{steady:?}");
        assert!(fetches.len() < 80, "{} fetches", fetches.len());
        // A seek starts over.
        assert_eq!(file.readahead(0, read, bs, max), None);
    }
}
