//! The audit hook of the core: each operation hands its outcome and a way
//! to describe it; the record is built only when a log is attached, and is
//! appended before the operation returns (so before the kernel is answered).

use super::{Caller, Core, FsError, FsResult};
use crate::audit::{AuditLog, AuditMode, Event, Record, Subject};
use crate::meta::ROOT_INO;
use std::sync::Arc;

/// Deepest directory chain walked to name a path; deeper is a loop.
const MAX_DEPTH: usize = 4096;

pub(super) fn subject(caller: &Caller) -> Subject {
    Subject {
        uid: caller.uid,
        gid: caller.gid,
        pid: caller.pid,
    }
}

impl Core {
    /// Attaches the audit log every operation is recorded in.
    pub fn with_audit(mut self, log: Arc<AuditLog>) -> Core {
        // Checkpoints go on the record with their position, so `audit
        // verify` knows how far the volume got between mount and unmount.
        let trail = log.clone();
        self.journal.on_checkpoint(Box::new(move |position| {
            let (uid, gid) = crate::os::real_ids();
            let daemon = Subject {
                uid,
                gid,
                pid: std::process::id(),
            };
            let record = Record::new(Event::Checkpoint, daemon, None).detail(position.to_string());
            if let Err(e) = trail.record(record) {
                tracing::warn!(error = %e, "cannot record a checkpoint in the audit log");
            }
        }));
        self.audit = Some(log);
        self
    }

    pub fn audit_log(&self) -> Option<&Arc<AuditLog>> {
        self.audit.as_ref()
    }

    /// Records an operation's outcome. Err(EIO) means the record could not
    /// be written and the audit is required: the caller must fail.
    pub(super) fn audit<T>(&self, outcome: &FsResult<T>, make: impl FnOnce(Option<i32>) -> Record) -> FsResult<()> {
        let Some(log) = self.audit.as_ref().filter(|l| l.mode() != AuditMode::Off) else {
            return Ok(());
        };
        let errno = outcome.as_ref().err().map(|e| e.errno());
        log.record(make(errno)).map_err(|_| FsError::EIO)
    }

    /// `audit`, then the outcome — or EIO if it succeeded unrecorded.
    pub(super) fn audited<T>(&self, outcome: FsResult<T>, make: impl FnOnce(Option<i32>) -> Record) -> FsResult<T> {
        let recorded = self.audit(&outcome, make);
        outcome.and_then(|v| recorded.map(|()| v))
    }

    /// The volume path of `ino` ("/a/b"), through its first link; an inode
    /// without links (unlinked while open) is "(unlinked)". Directory paths
    /// are cached, so a file's path costs one query.
    pub(super) fn path_of(&self, ino: u64) -> Vec<u8> {
        self.path_walk(ino, false)
    }

    /// Walks up from `ino` to the root or to a directory whose path is
    /// cached, then caches the directories it passed (all but `ino`
    /// itself, unless `ino_is_dir`). Not on a shared volume: another host
    /// may move a directory, and an audit record must name the path the
    /// file had when it was opened; there only the directories of the
    /// last second serve, which a move by another host is heard to
    /// change within milliseconds.
    fn path_walk(&self, ino: u64, ino_is_dir: bool) -> Vec<u8> {
        let cached = !self.options.shared_metadata;
        if !cached {
            // Directories read a moment ago (heard of when another host
            // changes them; `attr_cache.rs`), else one query.
            if let Some(path) = self.attrs.path_of_dir(ino, MAX_DEPTH) {
                return path;
            }
            return match self.meta().ancestry(ino, MAX_DEPTH) {
                Ok(Some(chain)) => join_path(chain.into_iter().rev().map(|(_, name)| name)),
                _ => b"(unlinked)".to_vec(),
            };
        }
        let mut cache = self.dir_paths.lock().unwrap_or_else(|e| e.into_inner());
        let mut chain: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut at = ino;
        let mut base: Vec<u8> = Vec::new();
        {
            let meta = self.meta();
            while at != ROOT_INO {
                if let Some(known) = cache.get(&at).filter(|_| cached) {
                    base = known.to_vec();
                    break;
                }
                match meta.name_of(at) {
                    Ok(Some((parent, name))) if chain.len() < MAX_DEPTH => {
                        chain.push((at, name));
                        at = parent;
                    }
                    _ => return b"(unlinked)".to_vec(),
                }
            }
        }
        let mut path = base;
        for (i, (dir, name)) in chain.iter().enumerate().rev() {
            path.push(b'/');
            path.extend_from_slice(name);
            if cached && (i > 0 || ino_is_dir) {
                cache.put(*dir, Arc::from(path.as_slice()));
            }
        }
        if path.is_empty() {
            path.push(b'/');
        }
        path
    }

    /// Forgets cached directory paths (a directory moved).
    pub(super) fn forget_dir_paths(&self) {
        self.dir_paths.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// The volume path of entry `name` in directory `parent`.
    pub(super) fn entry_path(&self, parent: u64, name: &[u8]) -> Vec<u8> {
        let mut path = self.path_walk(parent, true);
        if path != b"/" {
            path.push(b'/');
        }
        path.extend_from_slice(name);
        path
    }

    /// The inode `name` in `parent` names right now, for records of
    /// operations that remove or move it.
    pub(super) fn audit_target(&self, parent: u64, name: &[u8]) -> Option<u64> {
        self.audit.as_ref()?;
        self.meta().lookup(parent, name).ok().flatten()
    }
}

/// `/a/b/c` of names from the root down; `/` of none.
fn join_path(names: impl Iterator<Item = Vec<u8>>) -> Vec<u8> {
    let mut path = Vec::new();
    for name in names {
        path.push(b'/');
        path.extend_from_slice(&name);
    }
    if path.is_empty() {
        path.push(b'/');
    }
    path
}
