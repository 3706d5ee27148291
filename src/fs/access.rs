//! Permission checks, done here rather than by the kernel.
//!
//! With the kernel's `default_permissions` a denied open never reaches the
//! filesystem, so it could not be audited. s3vault therefore mounts without
//! it and applies the classic Unix rules itself: owner, group (with the
//! caller's supplementary groups) and other bits, search permission on each
//! directory looked up, sticky directories, and root's overrides. The
//! kernel still does the checks that live in the VFS proper (protected
//! hardlinks and symlinks, sticky bits on cached entries, namespace rules
//! for extended attributes); the ones here mirror them where it costs
//! nothing, so a stale kernel cache never widens access.

use super::{FsError, FsResult, SetAttr, TimeSet};
use crate::meta::{FileKind, Inode};
use std::sync::{Arc, OnceLock};

pub const READ: u32 = 4;
pub const WRITE: u32 = 2;
pub const EXEC: u32 = 1;

/// Who is asking: the credentials the kernel sent with the request.
#[derive(Clone, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    /// Thread id of the calling task; 0 for requests the kernel makes itself.
    pub pid: u32,
    /// Supplementary groups, read from /proc only when a check needs them.
    groups: Arc<OnceLock<Vec<u32>>>,
}

impl Caller {
    pub fn new(uid: u32, gid: u32, pid: u32) -> Caller {
        Caller {
            uid,
            gid,
            pid,
            groups: Arc::new(OnceLock::new()),
        }
    }

    /// A caller whose supplementary groups are known already.
    pub fn with_groups(uid: u32, gid: u32, groups: Vec<u32>) -> Caller {
        let caller = Caller::new(uid, gid, 0);
        let _ = caller.groups.set(groups);
        caller
    }

    pub fn root() -> Caller {
        Caller::with_groups(0, 0, Vec::new())
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// Whether the caller's primary or a supplementary group is `gid`.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.get_or_init(|| proc_groups(self.pid)).contains(&gid)
    }
}

/// The supplementary groups of task `pid`. Credentials are per thread, and
/// the kernel sends the thread id, which /proc resolves like a process id.
/// A task that exited meanwhile has none; its request fails closed.
fn proc_groups(pid: u32) -> Vec<u32> {
    if pid == 0 {
        return Vec::new();
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    parse_groups(&status)
}

fn parse_groups(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Groups:"))
        .map(|list| list.split_whitespace().filter_map(|g| g.parse().ok()).collect())
        .unwrap_or_default()
}

/// Whether `caller` has every access in `want` (READ | WRITE | EXEC) to `inode`.
pub fn permits(inode: &Inode, caller: &Caller, want: u32) -> bool {
    if caller.is_root() {
        // Root reads and writes anything, and executes what anyone may.
        return want & EXEC == 0 || inode.kind == FileKind::Dir || inode.perm & 0o111 != 0;
    }
    let class = if caller.uid == inode.uid {
        inode.perm >> 6
    } else if caller.in_group(inode.gid) {
        inode.perm >> 3
    } else {
        inode.perm
    };
    class & want & 0o7 == want
}

pub fn check(inode: &Inode, caller: &Caller, want: u32) -> FsResult<()> {
    if permits(inode, caller, want) {
        Ok(())
    } else {
        Err(FsError::EACCES)
    }
}

/// Root or the owner: who may chmod, set explicit times, and so on.
pub fn owns(inode: &Inode, caller: &Caller) -> bool {
    caller.is_root() || caller.uid == inode.uid
}

/// Removing or replacing `victim` in `dir`: write and search on the
/// directory, and in a sticky directory only the owner of either (or root).
pub fn check_remove(dir: &Inode, victim: &Inode, caller: &Caller) -> FsResult<()> {
    check(dir, caller, WRITE | EXEC)?;
    let sticky = dir.perm & libc::S_ISVTX != 0;
    if sticky && !owns(dir, caller) && !owns(victim, caller) {
        return Err(FsError::EPERM);
    }
    Ok(())
}

/// The accesses open(2) flags ask for.
pub fn open_wants(flags: i32) -> u32 {
    /// The kernel's `__FMODE_EXEC`: set in the flags of an open for execve.
    const FMODE_EXEC: i32 = 0x20;
    let mut want = match flags & libc::O_ACCMODE {
        libc::O_RDONLY => READ,
        libc::O_WRONLY => WRITE,
        _ => READ | WRITE,
    };
    if flags & libc::O_TRUNC != 0 {
        want |= WRITE;
    }
    if flags & FMODE_EXEC != 0 {
        want |= EXEC;
    }
    want
}

/// Checks a setattr against chown(2), chmod(2), truncate(2) and
/// utimensat(2) rules; returns it with S_ISGID dropped where chmod drops it.
pub fn authorize_setattr(inode: &Inode, caller: &Caller, mut attr: SetAttr, via_handle: bool) -> FsResult<SetAttr> {
    let root = caller.is_root();
    let owner = caller.uid == inode.uid;
    if attr.size.is_some() && !via_handle {
        check(inode, caller, WRITE)?;
    }
    if attr.uid.is_some_and(|uid| !root && (!owner || uid != inode.uid)) {
        return Err(FsError::EPERM);
    }
    if attr
        .gid
        .is_some_and(|gid| !root && (!owner || (gid != inode.gid && !caller.in_group(gid))))
    {
        return Err(FsError::EPERM);
    }
    if let Some(mode) = attr.mode {
        // The kernel sends the whole i_mode, file type bits included.
        let mode = mode & 0o7777;
        attr.mode = Some(mode);
        if !owns(inode, caller) {
            // What the kernel asks on behalf of a writer (kill-priv), as on
            // local filesystems; the same request from a chmod(2) by someone
            // who may not write to the file is refused.
            if !only_drops_privileges(inode.perm, mode) {
                return Err(FsError::EPERM);
            }
            check(inode, caller, WRITE).map_err(|_| FsError::EPERM)?;
        }
        if !root && !caller.in_group(attr.gid.unwrap_or(inode.gid)) {
            attr.mode = Some(mode & !libc::S_ISGID);
        }
    }
    let times = [attr.atime, attr.mtime];
    if times.iter().any(|t| matches!(t, Some(TimeSet::At(_)))) && !owns(inode, caller) {
        return Err(FsError::EPERM);
    }
    if times.iter().any(|t| matches!(t, Some(TimeSet::Now))) && !via_handle && !owns(inode, caller) {
        check(inode, caller, WRITE)?;
    }
    Ok(attr)
}

/// A mode change that only clears set-user-ID or set-group-ID: what the
/// kernel sends on behalf of anyone who writes to or chowns such a file.
fn only_drops_privileges(old: u32, new: u32) -> bool {
    const PRIVILEGES: u32 = libc::S_ISUID | libc::S_ISGID;
    let (old_priv, new_priv) = (old & PRIVILEGES, new & PRIVILEGES);
    new & !PRIVILEGES == old & !PRIVILEGES && new_priv != old_priv && new_priv & !old_priv == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inode(kind: FileKind, perm: u32, uid: u32, gid: u32) -> Inode {
        Inode {
            ino: 2,
            kind,
            perm,
            uid,
            gid,
            nlink: 1,
            size: 0,
            atime: 0,
            mtime: 0,
            ctime: 0,
            rdev: 0,
            allocated: 0,
        }
    }

    #[test]
    fn owner_group_and_other_classes_are_exclusive() {
        let file = inode(FileKind::File, 0o604, 1000, 100);
        let owner = Caller::with_groups(1000, 100, vec![]);
        let member = Caller::with_groups(2000, 5, vec![100]);
        let other = Caller::with_groups(3000, 5, vec![]);
        assert!(permits(&file, &owner, READ | WRITE));
        // A group member gets the group bits (none) even though others may read.
        assert!(!permits(&file, &member, READ));
        assert!(permits(&file, &other, READ));
        assert!(!permits(&file, &other, WRITE));
    }

    #[test]
    fn root_executes_only_what_someone_may() {
        let root = Caller::root();
        assert!(permits(&inode(FileKind::File, 0o000, 1, 1), &root, READ | WRITE));
        assert!(!permits(&inode(FileKind::File, 0o600, 1, 1), &root, EXEC));
        assert!(permits(&inode(FileKind::File, 0o601, 1, 1), &root, EXEC));
        assert!(permits(&inode(FileKind::Dir, 0o000, 1, 1), &root, EXEC));
    }

    #[test]
    fn sticky_directory_protects_other_users_entries() {
        let dir = inode(FileKind::Dir, 0o1777, 0, 0);
        let theirs = inode(FileKind::File, 0o666, 1000, 1000);
        let stranger = Caller::with_groups(2000, 2000, vec![]);
        let owner = Caller::with_groups(1000, 1000, vec![]);
        assert_eq!(check_remove(&dir, &theirs, &stranger), Err(FsError::EPERM));
        assert_eq!(check_remove(&dir, &theirs, &owner), Ok(()));
        let closed = inode(FileKind::Dir, 0o755, 0, 0);
        assert_eq!(check_remove(&closed, &theirs, &owner), Err(FsError::EACCES));
    }

    #[test]
    fn only_root_gives_files_away_and_owners_change_modes() {
        let file = inode(FileKind::File, 0o6755, 1000, 1000);
        let owner = Caller::with_groups(1000, 1000, vec![50]);
        let stranger = Caller::with_groups(2000, 2000, vec![]);
        let set = |f: fn(&mut SetAttr)| {
            let mut a = SetAttr::default();
            f(&mut a);
            a
        };
        let give = set(|a| a.uid = Some(2000));
        assert_eq!(
            authorize_setattr(&file, &owner, give, false).unwrap_err(),
            FsError::EPERM
        );
        assert!(authorize_setattr(&file, &Caller::root(), give, false).is_ok());
        // The owner may change the group to one of theirs only.
        assert!(authorize_setattr(&file, &owner, set(|a| a.gid = Some(50)), false).is_ok());
        let foreign = set(|a| a.gid = Some(51));
        assert_eq!(
            authorize_setattr(&file, &owner, foreign, false).unwrap_err(),
            FsError::EPERM
        );
        let chmod = set(|a| a.mode = Some(0o644));
        assert_eq!(
            authorize_setattr(&file, &stranger, chmod, false).unwrap_err(),
            FsError::EPERM
        );
        // Dropping setuid and setgid on a writer's behalf (the kernel's
        // kill-priv, which sends the file type bits too) is allowed to
        // whoever may write the file, and to no one else.
        let writable = inode(FileKind::File, 0o6777, 1000, 1000);
        let kill = set(|a| a.mode = Some(libc::S_IFREG | 0o0777));
        assert_eq!(
            authorize_setattr(&writable, &stranger, kill, false).unwrap().mode,
            Some(0o0777)
        );
        let kill = set(|a| a.mode = Some(libc::S_IFREG | 0o0755));
        assert_eq!(
            authorize_setattr(&file, &stranger, kill, false).unwrap_err(),
            FsError::EPERM
        );
        // chmod g+s by an owner outside the file's group silently drops it.
        let theirs = inode(FileKind::File, 0o644, 1000, 77);
        let sgid = authorize_setattr(&theirs, &owner, set(|a| a.mode = Some(0o2755)), false).unwrap();
        assert_eq!(sgid.mode, Some(0o755));
    }

    #[test]
    fn times_need_ownership_unless_set_to_now_with_write_access() {
        let file = inode(FileKind::File, 0o666, 1000, 1000);
        let writer = Caller::with_groups(2000, 2000, vec![]);
        let now = SetAttr {
            mtime: Some(TimeSet::Now),
            ..SetAttr::default()
        };
        assert!(authorize_setattr(&file, &writer, now, false).is_ok());
        let explicit = SetAttr {
            mtime: Some(TimeSet::At(1)),
            ..SetAttr::default()
        };
        assert_eq!(
            authorize_setattr(&file, &writer, explicit, false).unwrap_err(),
            FsError::EPERM
        );
        let closed = inode(FileKind::File, 0o644, 1000, 1000);
        assert_eq!(
            authorize_setattr(&closed, &writer, now, false).unwrap_err(),
            FsError::EACCES
        );
    }

    #[test]
    fn open_flags_map_to_accesses() {
        assert_eq!(open_wants(libc::O_RDONLY), READ);
        assert_eq!(open_wants(libc::O_WRONLY | libc::O_APPEND), WRITE);
        assert_eq!(open_wants(libc::O_RDWR), READ | WRITE);
        assert_eq!(open_wants(libc::O_RDONLY | libc::O_TRUNC), READ | WRITE);
    }

    #[test]
    fn supplementary_groups_come_from_proc_status() {
        let status = "Name:\tcat\nUid:\t1000\t1000\t1000\t1000\nGroups:\t4 24 100 \nVmPeak:\t1 kB\n";
        assert_eq!(parse_groups(status), vec![4, 24, 100]);
        assert_eq!(parse_groups("Groups:\n"), Vec::<u32>::new());
        let me = std::process::id();
        let caller = Caller::new(1, u32::MAX, me);
        // Our own groups are readable; a gid we are not in is not reported.
        assert!(!caller.in_group(u32::MAX - 1));
    }
}
