//! File locks (flock and fcntl byte ranges) that reach across hosts, kept
//! beside a shared volume's metadata.
//!
//! The kernel keeps the locks of an embedded volume itself. On a volume
//! several hosts write, it hands every lock request to the filesystem, and
//! the lock table (`LockTable`, in the shared database) decides; what is
//! here is the decision itself: which locks conflict, and what an owner
//! holds after a request (POSIX semantics: a lock replaces the owner's
//! locks in its range, an unlock can split one, adjacent ranges of one kind
//! merge). flock locks arrive as whole-file locks owned by the open file,
//! so they follow the same rules; as on NFS, an flock and an fcntl lock of
//! one file exclude each other.

use super::Result;

/// Who holds a lock: the host, and the kernel's owner on that host (a
/// process's file table for fcntl locks, an open file for flock ones).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    pub host: [u8; 16],
    pub id: u64,
}

/// A held lock: bytes `start..=end` (`end` is `u64::MAX >> 1` for "to the
/// end of the file, however long").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lock {
    pub owner: Owner,
    pub start: u64,
    pub end: u64,
    pub exclusive: bool,
    /// The process that took it, on its host (for F_GETLK).
    pub pid: u32,
}

/// What a request asks for over a range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Shared,
    Exclusive,
    Unlock,
}

impl Kind {
    /// From the kernel's `F_RDLCK`, `F_WRLCK` or `F_UNLCK`.
    pub fn from_fcntl(typ: i32) -> Option<Kind> {
        match typ {
            libc::F_RDLCK => Some(Kind::Shared),
            libc::F_WRLCK => Some(Kind::Exclusive),
            libc::F_UNLCK => Some(Kind::Unlock),
            _ => None,
        }
    }
}

/// A lock request of `owner` over bytes `start..=end`.
#[derive(Clone, Copy, Debug)]
pub struct Request {
    pub owner: Owner,
    pub start: u64,
    pub end: u64,
    pub kind: Kind,
    pub pid: u32,
}

impl Lock {
    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start <= end && start <= self.end
    }
}

/// The first lock in `held` that keeps `request` from being granted.
pub fn conflict<'a>(held: &'a [Lock], request: &Request) -> Option<&'a Lock> {
    if request.kind == Kind::Unlock {
        return None;
    }
    let exclusive = request.kind == Kind::Exclusive;
    held.iter()
        .find(|l| l.owner != request.owner && l.overlaps(request.start, request.end) && (l.exclusive || exclusive))
}

/// What `request.owner` holds once `request` is applied to `mine` (its
/// locks on the file before), sorted by start.
pub fn apply(mine: &[Lock], request: &Request) -> Vec<Lock> {
    let (start, end) = (request.start, request.end);
    let mut out: Vec<Lock> = Vec::with_capacity(mine.len() + 2);
    for l in mine {
        if !l.overlaps(start, end) {
            out.push(*l);
            continue;
        }
        // What the request does not cover stays as it was.
        if l.start < start {
            out.push(Lock { end: start - 1, ..*l });
        }
        if l.end > end {
            out.push(Lock { start: end + 1, ..*l });
        }
    }
    if request.kind != Kind::Unlock {
        out.push(Lock {
            owner: request.owner,
            start,
            end,
            exclusive: request.kind == Kind::Exclusive,
            pid: request.pid,
        });
    }
    out.sort_by_key(|l| l.start);
    // Ranges of one kind that touch become one, as the kernel's do.
    let mut merged: Vec<Lock> = Vec::with_capacity(out.len());
    for l in out {
        match merged.last_mut() {
            Some(last) if last.exclusive == l.exclusive && last.end.saturating_add(1) >= l.start => {
                last.end = last.end.max(l.end);
            }
            _ => merged.push(l),
        }
    }
    merged
}

/// The shared lock table of a volume.
pub trait LockTable: Send + Sync {
    /// The host this table speaks for: the host of the owners it is given.
    fn host(&self) -> [u8; 16];

    /// Applies `request` to inode `ino` unless another owner's lock
    /// conflicts with it; that lock, if one does (nothing changed).
    fn set(&self, ino: u64, request: &Request) -> Result<Option<Lock>>;

    /// The lock that would keep `request` from being granted, if any.
    fn test(&self, ino: u64, request: &Request) -> Result<Option<Lock>>;

    /// Drops every lock `owner` (of this host) holds on `ino`: a close
    /// (fcntl locks) or the last close of an open file (flock). When it
    /// fails, `keep_alive` tries again.
    fn release_owner(&self, ino: u64, owner: u64) -> Result<()>;

    /// Whether requests wait out a database outage or fail at once.
    fn set_outage_policy(&self, policy: super::OutagePolicy);

    /// Keeps this host's locks alive through a restart of the database
    /// and sends the releases that failed: called every second or so.
    fn keep_alive(&self) -> Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    const EOF: u64 = u64::MAX >> 1;

    fn owner(id: u64) -> Owner {
        Owner { host: [1; 16], id }
    }

    fn req(id: u64, start: u64, end: u64, kind: Kind) -> Request {
        Request {
            owner: owner(id),
            start,
            end,
            kind,
            pid: 100 + id as u32,
        }
    }

    fn ranges(locks: &[Lock]) -> Vec<(u64, u64, bool)> {
        locks.iter().map(|l| (l.start, l.end, l.exclusive)).collect()
    }

    #[test]
    fn readers_share_and_writers_exclude() {
        let held = apply(&[], &req(1, 0, 9, Kind::Shared));
        assert!(conflict(&held, &req(2, 5, 20, Kind::Shared)).is_none());
        assert_eq!(conflict(&held, &req(2, 5, 20, Kind::Exclusive)), Some(&held[0]));
        assert!(
            conflict(&held, &req(2, 10, 20, Kind::Exclusive)).is_none(),
            "no overlap"
        );
        assert!(
            conflict(&held, &req(1, 0, 9, Kind::Exclusive)).is_none(),
            "one's own lock"
        );
        let other_host = Request {
            owner: Owner { host: [2; 16], id: 1 },
            ..req(1, 0, 0, Kind::Exclusive)
        };
        assert!(
            conflict(&held, &other_host).is_some(),
            "the same id on another host is another owner"
        );
        assert!(conflict(&held, &req(2, 0, EOF, Kind::Unlock)).is_none());
    }

    #[test]
    fn an_unlock_in_the_middle_splits_a_lock() {
        let held = apply(&[], &req(1, 0, EOF, Kind::Exclusive));
        let held = apply(&held, &req(1, 10, 19, Kind::Unlock));
        assert_eq!(ranges(&held), vec![(0, 9, true), (20, EOF, true)]);
        let held = apply(&held, &req(1, 0, EOF, Kind::Unlock));
        assert!(held.is_empty());
    }

    #[test]
    fn a_lock_replaces_the_owners_locks_in_its_range_and_merges() {
        let held = apply(&[], &req(1, 0, 9, Kind::Shared));
        let held = apply(&held, &req(1, 20, 29, Kind::Shared));
        let held = apply(&held, &req(1, 5, 24, Kind::Exclusive));
        assert_eq!(ranges(&held), vec![(0, 4, false), (5, 24, true), (25, 29, false)]);
        let held = apply(&held, &req(1, 5, 24, Kind::Shared));
        assert_eq!(ranges(&held), vec![(0, 29, false)], "touching ranges of one kind merge");
        let held = apply(&held, &req(1, 30, 39, Kind::Shared));
        assert_eq!(ranges(&held), vec![(0, 39, false)], "adjacent ones too");
    }

    #[test]
    fn the_end_of_the_file_does_not_overflow() {
        let held = apply(&[], &req(1, 5, u64::MAX - 1, Kind::Shared));
        let held = apply(&held, &req(1, u64::MAX, u64::MAX, Kind::Shared));
        assert_eq!(ranges(&held), vec![(5, u64::MAX, false)]);
        let held = apply(&held, &req(1, 0, u64::MAX, Kind::Exclusive));
        assert_eq!(ranges(&held), vec![(0, u64::MAX, true)]);
        let held = apply(&held, &req(1, 0, u64::MAX, Kind::Unlock));
        assert!(held.is_empty());
    }

    #[test]
    fn kinds_come_from_the_kernels_constants() {
        assert_eq!(Kind::from_fcntl(libc::F_RDLCK), Some(Kind::Shared));
        assert_eq!(Kind::from_fcntl(libc::F_WRLCK), Some(Kind::Exclusive));
        assert_eq!(Kind::from_fcntl(libc::F_UNLCK), Some(Kind::Unlock));
        assert_eq!(Kind::from_fcntl(7), None);
    }
}
