//! Extended attributes, kept in the metadata store (so encrypted at rest
//! and in snapshots like names are).
//!
//! The `user.`, `trusted.` and `security.` namespaces are stored, with
//! Linux's rules on who may touch which (the VFS applies the namespace
//! rules too; the file permission part is ours). POSIX ACLs
//! (`system.posix_acl_*`) are refused with EOPNOTSUPP: storing an ACL that
//! nothing enforces would promise access control that does not exist.

use super::access::{self, Caller};
use super::trail::subject;
use super::{Core, FsError, FsResult, now_ns};
use crate::audit::{Event, Record, display_bytes};
use crate::meta::{FileKind, Inode};

/// Linux limits (XATTR_NAME_MAX, XATTR_SIZE_MAX).
pub const XATTR_NAME_MAX: usize = 255;
pub const XATTR_SIZE_MAX: usize = 65536;

fn check_name(name: &[u8]) -> FsResult<()> {
    if name.is_empty() {
        return Err(FsError::EINVAL);
    }
    if name.len() > XATTR_NAME_MAX {
        return Err(FsError::ERANGE);
    }
    let stored = [&b"user."[..], b"trusted.", b"security."];
    if stored.iter().any(|ns| name.starts_with(ns) && name.len() > ns.len()) {
        Ok(())
    } else {
        Err(FsError::EOPNOTSUPP)
    }
}

fn is_user(name: &[u8]) -> bool {
    name.starts_with(b"user.")
}

fn is_trusted(name: &[u8]) -> bool {
    name.starts_with(b"trusted.")
}

impl Core {
    /// Linux's xattr_permission(): trusted.* is root's, hidden from others;
    /// user.* lives only on files and directories, follows the file's
    /// permissions, and in a sticky directory only its owner may change it.
    fn check_xattr(&self, inode: &Inode, caller: &Caller, name: &[u8], write: bool) -> FsResult<()> {
        let denied = if write { FsError::EPERM } else { FsError::ENODATA };
        if !is_user(name) {
            // security.* is readable by anyone, as with no LSM loaded.
            let allowed = caller.is_root() || (!write && !is_trusted(name));
            return if allowed { Ok(()) } else { Err(denied) };
        }
        if !matches!(inode.kind, FileKind::File | FileKind::Dir) {
            return Err(denied);
        }
        let shown = self.presented(*inode);
        let sticky_dir = inode.kind == FileKind::Dir && inode.perm & libc::S_ISVTX != 0;
        if write && sticky_dir && !access::owns(&shown, caller) {
            return Err(FsError::EPERM);
        }
        access::check(&shown, caller, if write { access::WRITE } else { access::READ })
    }

    pub fn getxattr(&self, caller: &Caller, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        check_name(name)?;
        let meta = self.meta();
        let inode = meta.inode(ino)?.ok_or(FsError::ENOENT)?;
        self.check_xattr(&inode, caller, name, false)?;
        meta.xattr(ino, name)?.ok_or(FsError::ENODATA)
    }

    /// All names the caller may see, each followed by a NUL, as listxattr(2)
    /// returns them.
    pub fn listxattr(&self, caller: &Caller, ino: u64) -> FsResult<Vec<u8>> {
        let meta = self.meta();
        meta.inode(ino)?.ok_or(FsError::ENOENT)?;
        let mut out = Vec::new();
        for name in meta.xattr_names(ino)? {
            if is_trusted(&name) && !caller.is_root() {
                continue;
            }
            out.extend_from_slice(&name);
            out.push(0);
        }
        Ok(out)
    }

    /// setxattr(2), honouring XATTR_CREATE and XATTR_REPLACE.
    pub fn setxattr(&self, caller: &Caller, ino: u64, name: &[u8], value: &[u8], flags: i32) -> FsResult<()> {
        let set = self.setxattr_unrecorded(caller, ino, name, value, flags);
        self.record_xattr(set, caller, ino, name, Event::Setxattr)
    }

    pub fn removexattr(&self, caller: &Caller, ino: u64, name: &[u8]) -> FsResult<()> {
        let removed = self.removexattr_unrecorded(caller, ino, name);
        self.record_xattr(removed, caller, ino, name, Event::Removexattr)
    }

    fn record_xattr(
        &self,
        outcome: FsResult<()>,
        caller: &Caller,
        ino: u64,
        name: &[u8],
        event: Event,
    ) -> FsResult<()> {
        self.audited(outcome, |errno| {
            Record::new(event, subject(caller), errno)
                .path(&self.path_of(ino))
                .ino(Some(ino))
                .detail(display_bytes(name))
        })
    }

    fn setxattr_unrecorded(&self, caller: &Caller, ino: u64, name: &[u8], value: &[u8], flags: i32) -> FsResult<()> {
        check_name(name)?;
        if value.len() > XATTR_SIZE_MAX {
            return Err(FsError::E2BIG);
        }
        self.transact(|m| {
            let mut inode = m.inode(ino)?.ok_or(FsError::ENOENT)?;
            self.check_xattr(&inode, caller, name, true)?;
            let exists = m.xattr(ino, name)?.is_some();
            if flags & libc::XATTR_CREATE != 0 && exists {
                return Err(FsError::EEXIST);
            }
            if flags & libc::XATTR_REPLACE != 0 && !exists {
                return Err(FsError::ENODATA);
            }
            m.set_xattr(ino, name, value)?;
            inode.ctime = now_ns();
            m.put_inode(&inode)?;
            Ok(())
        })
    }

    fn removexattr_unrecorded(&self, caller: &Caller, ino: u64, name: &[u8]) -> FsResult<()> {
        check_name(name)?;
        self.transact(|m| {
            let mut inode = m.inode(ino)?.ok_or(FsError::ENOENT)?;
            self.check_xattr(&inode, caller, name, true)?;
            if !m.remove_xattr(ino, name)? {
                return Err(FsError::ENODATA);
            }
            inode.ctime = now_ns();
            m.put_inode(&inode)?;
            Ok(())
        })
    }
}
