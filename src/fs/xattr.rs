//! Extended attributes, kept in the metadata store (so encrypted at rest
//! and in snapshots like names are).
//!
//! The `user.`, `trusted.` and `security.` namespaces are stored; the
//! kernel checks who may touch which (with `default_permissions`). POSIX
//! ACLs (`system.posix_acl_*`) are refused with EOPNOTSUPP: storing an ACL
//! that nothing enforces would promise access control that does not exist.

use super::{Core, FsError, FsResult, now_ns};

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

impl Core {
    pub fn getxattr(&self, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        check_name(name)?;
        let meta = self.meta();
        meta.inode(ino)?.ok_or(FsError::ENOENT)?;
        meta.xattr(ino, name)?.ok_or(FsError::ENODATA)
    }

    /// All names, each followed by a NUL, as listxattr(2) returns them.
    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        let meta = self.meta();
        meta.inode(ino)?.ok_or(FsError::ENOENT)?;
        let mut out = Vec::new();
        for name in meta.xattr_names(ino)? {
            out.extend_from_slice(&name);
            out.push(0);
        }
        Ok(out)
    }

    /// setxattr(2), honouring XATTR_CREATE and XATTR_REPLACE.
    pub fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> FsResult<()> {
        check_name(name)?;
        if value.len() > XATTR_SIZE_MAX {
            return Err(FsError::E2BIG);
        }
        self.transact(|m| {
            let mut inode = m.inode(ino)?.ok_or(FsError::ENOENT)?;
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

    pub fn removexattr(&self, ino: u64, name: &[u8]) -> FsResult<()> {
        check_name(name)?;
        self.transact(|m| {
            let mut inode = m.inode(ino)?.ok_or(FsError::ENOENT)?;
            if !m.remove_xattr(ino, name)? {
                return Err(FsError::ENODATA);
            }
            inode.ctime = now_ns();
            m.put_inode(&inode)?;
            Ok(())
        })
    }
}
