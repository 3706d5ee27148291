//! Namespace operations: creating nodes, linking, unlinking, removing
//! directories and renaming, each one metadata transaction with its audit
//! record.

use super::trail::subject;
use super::{Caller, Core, FsError, FsResult, PATH_MAX, access, check_name, now_ns};
use crate::audit::{Event, Record};
use crate::codec::ObjectId;
use crate::meta::{FileKind, Found, Inode, MetadataStore, ROOT_INO};

/// What `make_node` creates.
struct NewNode<'a> {
    kind: FileKind,
    mode: u32,
    rdev: u32,
    symlink: Option<&'a [u8]>,
    /// Made to be opened at once (create(2)): on a shared volume, held
    /// open by this host from the transaction that makes it.
    opened: bool,
}

impl Core {
    /// Creates a node of any kind in `parent`, and records it as `event`.
    fn make_node(&self, caller: &Caller, parent: u64, name: &[u8], node: NewNode<'_>, event: Event) -> FsResult<Inode> {
        let made = self.make_node_unrecorded(caller, parent, name, node);
        let ino = made.as_ref().ok().map(|inode| inode.ino);
        self.audited(made, |errno| {
            Record::new(event, subject(caller), errno)
                .path(&self.entry_path(parent, name))
                .ino(ino)
        })
    }

    fn make_node_unrecorded(&self, caller: &Caller, parent: u64, name: &[u8], node: NewNode<'_>) -> FsResult<Inode> {
        let NewNode {
            kind,
            mode,
            rdev,
            symlink,
            opened,
        } = node;
        check_name(name)?;
        self.transact_inode(|m| {
            let looked = m.lookup_in(parent, name)?.ok_or(FsError::ENOENT)?;
            let dir = looked.dir;
            if dir.kind != FileKind::Dir {
                return Err(FsError::ENOTDIR);
            }
            self.check(&dir, caller, access::WRITE | access::EXEC)?;
            if looked.found != Found::Nothing {
                return Err(FsError::EEXIST);
            }
            let now = now_ns();
            let setgid_dir = dir.perm & libc::S_ISGID != 0;
            let mut perm = mode & 0o7777;
            if kind == FileKind::Dir && setgid_dir {
                perm |= libc::S_ISGID;
            }
            let inode = Inode {
                ino: m.allocate_ino()?,
                kind,
                perm,
                uid: caller.uid,
                gid: if setgid_dir { dir.gid } else { caller.gid },
                nlink: if kind == FileKind::Dir { 2 } else { 1 },
                size: symlink.map_or(0, |t| t.len() as u64),
                atime: now,
                mtime: now,
                ctime: now,
                rdev,
                allocated: 0,
            };
            m.put_inode(&inode)?;
            if let Some(target) = symlink {
                m.set_symlink_target(inode.ino, target)?;
            }
            m.insert_entry(parent, name, inode.ino)?;
            touch(m, dir, now, if kind == FileKind::Dir { 1 } else { 0 })?;
            if opened {
                // Held from its first moment, in the same transaction.
                m.hold(inode.ino)?;
            }
            Ok(inode)
        })
    }

    pub fn mkdir(&self, caller: &Caller, parent: u64, name: &[u8], mode: u32) -> FsResult<Inode> {
        self.make_node(
            caller,
            parent,
            name,
            NewNode {
                kind: FileKind::Dir,
                mode,
                rdev: 0,
                symlink: None,
                opened: false,
            },
            Event::Mkdir,
        )
    }

    pub fn mknod(&self, caller: &Caller, parent: u64, name: &[u8], mode: u32, rdev: u32) -> FsResult<Inode> {
        let kind = match mode & libc::S_IFMT {
            libc::S_IFREG | 0 => FileKind::File,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFSOCK => FileKind::Socket,
            libc::S_IFCHR => FileKind::CharDevice,
            libc::S_IFBLK => FileKind::BlockDevice,
            _ => return Err(FsError::EINVAL),
        };
        self.make_node(
            caller,
            parent,
            name,
            NewNode {
                kind,
                mode,
                rdev,
                symlink: None,
                opened: false,
            },
            Event::Mknod,
        )
    }

    pub fn symlink(&self, caller: &Caller, parent: u64, name: &[u8], target: &[u8]) -> FsResult<Inode> {
        if target.len() >= PATH_MAX {
            return Err(FsError::ENAMETOOLONG);
        }
        self.make_node(
            caller,
            parent,
            name,
            NewNode {
                kind: FileKind::Symlink,
                mode: 0o777,
                rdev: 0,
                symlink: Some(target),
                opened: false,
            },
            Event::Symlink,
        )
    }

    /// Creates and opens a regular file; returns it and the file handle.
    pub fn create(&self, caller: &Caller, parent: u64, name: &[u8], mode: u32, flags: i32) -> FsResult<(Inode, u64)> {
        let node = NewNode {
            kind: FileKind::File,
            mode,
            rdev: 0,
            symlink: None,
            opened: self.options.shared_metadata,
        };
        let path = if self.audit.is_some() {
            self.entry_path(parent, name)
        } else {
            Vec::new()
        };
        let created = self.make_node_unrecorded(caller, parent, name, node).and_then(|inode| {
            Ok((
                inode,
                self.open_handle_at(inode.ino, flags, caller, path.clone(), self.options.shared_metadata)?,
            ))
        });
        let recorded = self.audit(&created, |errno| {
            Record::new(Event::Create, subject(caller), errno)
                .path(&path)
                .ino(created.as_ref().ok().map(|(inode, _)| inode.ino))
                .flags(flags | libc::O_CREAT)
        });
        if let (Ok((inode, fh)), Err(e)) = (&created, recorded) {
            self.abandon_handle(*fh, inode.ino);
            return Err(e);
        }
        created
    }

    pub fn link(&self, caller: &Caller, ino: u64, parent: u64, name: &[u8]) -> FsResult<Inode> {
        let linked = self.link_unrecorded(caller, ino, parent, name);
        self.audited(linked, |errno| {
            Record::new(Event::Link, subject(caller), errno)
                .path(&self.path_of(ino))
                .new_path(&self.entry_path(parent, name))
                .ino(Some(ino))
        })
    }

    fn link_unrecorded(&self, caller: &Caller, ino: u64, parent: u64, name: &[u8]) -> FsResult<Inode> {
        check_name(name)?;
        self.transact_inode(|m| {
            let mut inode = m.inode(ino)?.ok_or(FsError::ENOENT)?;
            if inode.kind == FileKind::Dir {
                return Err(FsError::EPERM);
            }
            let dir = m.inode(parent)?.ok_or(FsError::ENOENT)?;
            if dir.kind != FileKind::Dir {
                return Err(FsError::ENOTDIR);
            }
            self.check(&dir, caller, access::WRITE | access::EXEC)?;
            if m.lookup(parent, name)?.is_some() {
                return Err(FsError::EEXIST);
            }
            let now = now_ns();
            inode.nlink += 1;
            inode.ctime = now;
            m.put_inode(&inode)?;
            m.insert_entry(parent, name, ino)?;
            touch_dir(m, parent, now, 0)?;
            Ok(inode)
        })
        .map(|inode| self.with_pending(inode))
    }

    pub fn unlink(&self, caller: &Caller, parent: u64, name: &[u8]) -> FsResult<()> {
        self.remove_entry_recorded(caller, parent, name, Event::Unlink)
    }

    pub fn rmdir(&self, caller: &Caller, parent: u64, name: &[u8]) -> FsResult<()> {
        self.remove_entry_recorded(caller, parent, name, Event::Rmdir)
    }

    fn remove_entry_recorded(&self, caller: &Caller, parent: u64, name: &[u8], event: Event) -> FsResult<()> {
        let ino = self.audit_target(parent, name);
        let removed = if event == Event::Rmdir {
            self.rmdir_unrecorded(caller, parent, name)
        } else {
            self.unlink_unrecorded(caller, parent, name)
        };
        self.audited(removed, |errno| {
            Record::new(event, subject(caller), errno)
                .path(&self.entry_path(parent, name))
                .ino(ino)
        })
    }

    fn unlink_unrecorded(&self, caller: &Caller, parent: u64, name: &[u8]) -> FsResult<()> {
        let freed = self.transact(|m| {
            let dir = m.inode(parent)?.ok_or(FsError::ENOENT)?;
            let ino = m.lookup(parent, name)?.ok_or(FsError::ENOENT)?;
            let inode = m.inode(ino)?.ok_or(FsError::EIO)?;
            self.check_remove(&dir, &inode, caller)?;
            if inode.kind == FileKind::Dir {
                return Err(FsError::EISDIR);
            }
            let now = now_ns();
            m.remove_entry(parent, name)?;
            touch_dir(m, parent, now, 0)?;
            self.drop_link(m, inode, now)
        })?;
        self.discard_unuploaded(&freed);
        Ok(())
    }

    fn rmdir_unrecorded(&self, caller: &Caller, parent: u64, name: &[u8]) -> FsResult<()> {
        if name == b"." {
            return Err(FsError::EINVAL);
        }
        if name == b".." {
            return Err(FsError::ENOTEMPTY);
        }
        self.transact(|m| {
            let dir = m.inode(parent)?.ok_or(FsError::ENOENT)?;
            let ino = m.lookup(parent, name)?.ok_or(FsError::ENOENT)?;
            let inode = m.inode(ino)?.ok_or(FsError::EIO)?;
            self.check_remove(&dir, &inode, caller)?;
            if inode.kind != FileKind::Dir {
                return Err(FsError::ENOTDIR);
            }
            if m.has_entries(ino)? {
                return Err(FsError::ENOTEMPTY);
            }
            let now = now_ns();
            m.remove_entry(parent, name)?;
            touch_dir(m, parent, now, -1)?;
            m.delete_inode(ino)?;
            Ok(())
        })
    }

    /// Removes one link of a non-directory; the last link of a file that is
    /// still open, here or on another host, leaves an orphan that the last
    /// release deletes. Returns
    /// the blocks freed.
    fn drop_link(&self, m: &mut dyn MetadataStore, mut inode: Inode, now: i64) -> FsResult<Vec<ObjectId>> {
        inode.nlink = inode.nlink.saturating_sub(1);
        inode.ctime = now;
        if inode.nlink > 0 || self.is_open(inode.ino) || m.held(inode.ino)? {
            m.put_inode(&inode)?;
            Ok(Vec::new())
        } else {
            purge(m, inode.ino)
        }
    }

    pub fn rename(
        &self,
        caller: &Caller,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        let ino = self.audit_target(parent, name);
        let renamed = self.rename_unrecorded(caller, (parent, name), (new_parent, new_name), flags);
        if renamed.is_ok() && self.audit.is_some() {
            // A moved directory moves every path below it.
            self.forget_dir_paths();
        }
        self.audited(renamed, |errno| {
            let mut record = Record::new(Event::Rename, subject(caller), errno)
                .path(&self.entry_path(parent, name))
                .new_path(&self.entry_path(new_parent, new_name))
                .ino(ino);
            if flags != 0 {
                record = record.detail(format!("flags={flags:#x}"));
            }
            record
        })
    }

    fn rename_unrecorded(
        &self,
        caller: &Caller,
        (parent, name): (u64, &[u8]),
        (new_parent, new_name): (u64, &[u8]),
        flags: u32,
    ) -> FsResult<()> {
        check_name(new_name)?;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        if flags & !(libc::RENAME_EXCHANGE | libc::RENAME_NOREPLACE) != 0 || (exchange && noreplace) {
            return Err(FsError::EINVAL);
        }
        let freed = self.transact(|m| {
            let src_ino = m.lookup(parent, name)?.ok_or(FsError::ENOENT)?;
            let mut src = m.inode(src_ino)?.ok_or(FsError::EIO)?;
            let dst_dir = m.inode(new_parent)?.ok_or(FsError::ENOENT)?;
            if dst_dir.kind != FileKind::Dir {
                return Err(FsError::ENOTDIR);
            }
            let dst_ino = m.lookup(new_parent, new_name)?;
            if dst_ino == Some(src_ino) {
                return Ok(Vec::new());
            }
            let dst = dst_ino.map(|ino| m.inode(ino)?.ok_or(FsError::EIO)).transpose()?;
            self.check_rename(m, caller, (parent, &src), (new_parent, dst.as_ref()), exchange)?;
            if src.kind == FileKind::Dir && is_ancestor(m, src_ino, new_parent)? {
                return Err(FsError::EINVAL);
            }
            let now = now_ns();
            let mut freed = Vec::new();
            if exchange {
                let dst_ino = dst_ino.ok_or(FsError::ENOENT)?;
                let mut dst = m.inode(dst_ino)?.ok_or(FsError::EIO)?;
                if dst.kind == FileKind::Dir && is_ancestor(m, dst_ino, parent)? {
                    return Err(FsError::EINVAL);
                }
                m.remove_entry(parent, name)?;
                m.remove_entry(new_parent, new_name)?;
                m.insert_entry(parent, name, dst_ino)?;
                m.insert_entry(new_parent, new_name, src_ino)?;
                let moved_dirs = |kind| {
                    if kind == FileKind::Dir && parent != new_parent {
                        1
                    } else {
                        0
                    }
                };
                let delta = moved_dirs(dst.kind) - moved_dirs(src.kind);
                touch_dir(m, parent, now, delta)?;
                touch_dir(m, new_parent, now, -delta)?;
                for inode in [&mut src, &mut dst] {
                    inode.ctime = now;
                    m.put_inode(inode)?;
                }
                return Ok(Vec::new());
            }
            if let Some(dst_ino) = dst_ino {
                if noreplace {
                    return Err(FsError::EEXIST);
                }
                let dst = m.inode(dst_ino)?.ok_or(FsError::EIO)?;
                match (src.kind == FileKind::Dir, dst.kind == FileKind::Dir) {
                    (true, false) => return Err(FsError::ENOTDIR),
                    (false, true) => return Err(FsError::EISDIR),
                    (true, true) if m.has_entries(dst_ino)? => return Err(FsError::ENOTEMPTY),
                    _ => {}
                }
                m.remove_entry(new_parent, new_name)?;
                if dst.kind == FileKind::Dir {
                    touch_dir(m, new_parent, now, -1)?;
                    m.delete_inode(dst_ino)?;
                } else {
                    freed = self.drop_link(m, dst, now)?;
                }
            }
            m.remove_entry(parent, name)?;
            m.insert_entry(new_parent, new_name, src_ino)?;
            let moved_dir = src.kind == FileKind::Dir && parent != new_parent;
            touch_dir(m, parent, now, if moved_dir { -1 } else { 0 })?;
            touch_dir(m, new_parent, now, if moved_dir { 1 } else { 0 })?;
            src.ctime = now;
            m.put_inode(&src)?;
            Ok(freed)
        })?;
        self.discard_unuploaded(&freed);
        Ok(())
    }

    /// rename(2)'s permission rules in the kernel's order: removing the
    /// source, creating or replacing the target, and write access to a
    /// directory that changes parent (its ".." entry changes).
    fn check_rename(
        &self,
        m: &dyn MetadataStore,
        caller: &Caller,
        (parent, src): (u64, &Inode),
        (new_parent, dst): (u64, Option<&Inode>),
        exchange: bool,
    ) -> FsResult<()> {
        let old_dir = m.inode(parent)?.ok_or(FsError::ENOENT)?;
        self.check_remove(&old_dir, src, caller)?;
        let new_dir = m.inode(new_parent)?.ok_or(FsError::ENOENT)?;
        match dst {
            Some(dst) => self.check_remove(&new_dir, dst, caller)?,
            None => self.check(&new_dir, caller, access::WRITE | access::EXEC)?,
        }
        if parent != new_parent {
            if src.kind == FileKind::Dir {
                self.check(src, caller, access::WRITE)?;
            }
            if let Some(dst) = dst.filter(|d| exchange && d.kind == FileKind::Dir) {
                self.check(dst, caller, access::WRITE)?;
            }
        }
        Ok(())
    }
}

/// Updates a directory's times after a change of its entries, and its link
/// count when a subdirectory came or went.
pub(super) fn touch_dir(m: &mut dyn MetadataStore, ino: u64, now: i64, nlink_delta: i32) -> FsResult<()> {
    let dir = m.inode(ino)?.ok_or(FsError::ENOENT)?;
    touch(m, dir, now, nlink_delta)
}

/// `touch_dir` of a directory the transaction has read.
fn touch(m: &mut dyn MetadataStore, mut dir: Inode, now: i64, nlink_delta: i32) -> FsResult<()> {
    dir.mtime = now;
    dir.ctime = now;
    dir.nlink = dir.nlink.saturating_add_signed(nlink_delta);
    m.put_inode(&dir)?;
    Ok(())
}

/// Whether directory `ancestor` is `ino` or lies on the path from `ino` up to the root.
pub(super) fn is_ancestor(m: &dyn MetadataStore, ancestor: u64, mut ino: u64) -> FsResult<bool> {
    loop {
        if ino == ancestor {
            return Ok(true);
        }
        if ino == ROOT_INO {
            return Ok(false);
        }
        ino = m.parent_of(ino)?.unwrap_or(ROOT_INO);
    }
}

/// Deletes an inode with no links left and its chunk map; returns the
/// packs that became garbage with it.
pub(super) fn purge(m: &mut dyn MetadataStore, ino: u64) -> FsResult<Vec<ObjectId>> {
    let removed = m.remove_chunks_from(ino, 0)?;
    let freed = crate::meta::release_packs(m, &removed)?;
    m.delete_inode(ino)?;
    Ok(freed)
}
