//! Attributes of inodes this host read from a shared database a moment
//! ago. The kernel asks for an inode's attributes right after it looked
//! its name up or created it: entries are never cached (`fuse.rs`), and
//! fuser gives a lookup's attributes the entry's zero TTL. On a PostgreSQL
//! volume each ask is a round trip; answering from what the lookup or the
//! create just read costs none and is no staler than the kernel's own
//! attribute cache, because an answer is only good for what is left of
//! the attribute TTL since its read.
//!
//! The same goes for the directories on the way to a file: the kernel
//! looks up every component of a path at every call, and a directory's
//! entry read a moment ago answers the next. Only directories' entries:
//! a file's name is what another host replaces (write, then rename over
//! it), and an open after that close must find the new file.
//!
//! Changes this host makes never leave a stale copy: each metadata
//! transaction forgets everything and moves the epoch on, and a read is
//! remembered only if no transaction ended since it began.

use crate::meta::{Committed, FileKind, Inode, ROOT_INO};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long the kernel may keep attributes it asked for, and how long a
/// read here serves its getattr calls: another host's change shows within
/// this time.
pub const ATTR_TTL: Duration = Duration::from_secs(1);

/// Remembered inodes past which the stale ones are dropped.
const PRUNE_AT: usize = 4096;

pub(super) struct AttrCache {
    ttl: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    epoch: u64,
    inodes: HashMap<u64, (Inode, Instant)>,
    /// Directory → its parent and name, as read then.
    dirs: HashMap<u64, (u64, Vec<u8>, Instant)>,
    /// (parent, name) → the directory `dirs` has under it.
    names: HashMap<(u64, Vec<u8>), u64>,
}

impl State {
    fn drop_dirs(&mut self, gone: impl Fn(u64, u64) -> bool) {
        let names = &mut self.names;
        self.dirs.retain(|dir, (parent, name, _)| {
            let keep = !gone(*dir, *parent);
            if !keep {
                names.remove(&(*parent, std::mem::take(name)));
            }
            keep
        });
    }
}

/// When a read began, in this host's count of metadata transactions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Epoch(u64);

impl AttrCache {
    /// A cache whose reads serve for `ttl`; zero remembers nothing.
    pub fn new(ttl: Duration) -> AttrCache {
        AttrCache {
            ttl,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Taken before a read, under the metadata lock, for `remember`.
    pub fn epoch(&self) -> Epoch {
        Epoch(self.state().epoch)
    }

    /// This host changed the metadata (or tried to): forgets everything.
    /// Called under the metadata lock; the epoch it returns is the
    /// transaction's own, for `remember`ing what it wrote.
    pub fn changed(&self) -> Epoch {
        let mut state = self.state();
        state.epoch += 1;
        state.inodes.clear();
        state.dirs.clear();
        state.names.clear();
        Epoch(state.epoch)
    }

    /// A transaction of this host committed `committed`: forgets what it
    /// changed and keeps what it wrote. Under the metadata lock, as
    /// `changed`.
    pub fn committed(&self, committed: &Committed) -> Epoch {
        let epoch = self.forget_in(&committed.inodes, &committed.dirs);
        self.remember(epoch, &committed.written);
        epoch
    }

    /// Another host changed `inos`: rows, data, or a directory's entries.
    pub fn forget(&self, inos: &[u64]) {
        self.forget_in(inos, inos);
    }

    /// Forgets the attributes of `inos` and the entries in `dirs`, and
    /// keeps reads under way from being remembered.
    fn forget_in(&self, inos: &[u64], dirs: &[u64]) -> Epoch {
        let mut state = self.state();
        state.epoch += 1;
        let inos: HashSet<u64> = inos.iter().copied().collect();
        let dirs: HashSet<u64> = dirs.iter().copied().collect();
        state.inodes.retain(|ino, _| !inos.contains(ino));
        // A directory removed or moved was an entry of a directory
        // whose entries changed.
        state.drop_dirs(|_, parent| dirs.contains(&parent));
        Epoch(state.epoch)
    }

    /// Keeps `inodes`, read at `since`, unless a transaction ended since.
    pub fn remember(&self, since: Epoch, inodes: &[Inode]) {
        self.keep(since, inodes, None);
    }

    /// Keeps a lookup's result: the directory, the name's inode and, if
    /// that is a directory too, the entry.
    pub fn remember_lookup(&self, since: Epoch, dir: &Inode, name: &[u8], found: &Inode) {
        let entry = (found.kind == FileKind::Dir).then_some(name);
        self.keep(since, &[*dir, *found], entry);
    }

    fn keep(&self, since: Epoch, inodes: &[Inode], dir_entry: Option<&[u8]>) {
        if self.ttl.is_zero() {
            return;
        }
        let mut state = self.state();
        if state.epoch != since.0 {
            return;
        }
        let now = Instant::now();
        if state.inodes.len() >= PRUNE_AT || state.dirs.len() >= PRUNE_AT {
            let ttl = self.ttl;
            state.inodes.retain(|_, (_, read)| now.duration_since(*read) < ttl);
            let stale: HashSet<u64> = (state.dirs.iter())
                .filter(|(_, (_, _, read))| now.duration_since(*read) >= ttl)
                .map(|(dir, _)| *dir)
                .collect();
            state.drop_dirs(|dir, _| stale.contains(&dir));
        }
        for inode in inodes {
            state.inodes.insert(inode.ino, (*inode, now));
        }
        if let (Some(name), [parent, found]) = (dir_entry, inodes) {
            if let Some((old_parent, old_name, _)) = state.dirs.insert(found.ino, (parent.ino, name.to_vec(), now)) {
                state.names.remove(&(old_parent, old_name));
            }
            state.names.insert((parent.ino, name.to_vec()), found.ino);
        }
    }

    fn left(&self, read: Instant) -> Option<Duration> {
        self.ttl.checked_sub(read.elapsed()).filter(|left| !left.is_zero())
    }

    /// A remembered inode and how much longer it may be served.
    pub fn get(&self, ino: u64) -> Option<(Inode, Duration)> {
        let state = self.state();
        let (inode, read) = state.inodes.get(&ino)?;
        Some((*inode, self.left(*read)?))
    }

    /// A directory entry `name` in `parent` read a moment ago, with the
    /// parent as read then (for the caller's search permission).
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Option<(Inode, Inode)> {
        let state = self.state();
        let ino = state.names.get(&(parent, name.to_vec()))?;
        self.left(state.dirs.get(ino)?.2)?;
        let fresh = |ino: &u64| {
            let (inode, read) = state.inodes.get(ino)?;
            self.left(*read).map(|_| *inode)
        };
        Some((fresh(&parent)?, fresh(ino)?))
    }

    /// The volume path of directory `dir` ("/a/b"), if every directory on
    /// the way up was read a moment ago.
    pub fn path_of_dir(&self, dir: u64, max_depth: usize) -> Option<Vec<u8>> {
        let state = self.state();
        let mut names: Vec<&[u8]> = Vec::new();
        let mut at = dir;
        while at != ROOT_INO {
            let (parent, name, read) = state.dirs.get(&at)?;
            self.left(*read)?;
            if names.len() >= max_depth {
                return None;
            }
            names.push(name);
            at = *parent;
        }
        let mut path = Vec::new();
        for name in names.iter().rev() {
            path.push(b'/');
            path.extend_from_slice(name);
        }
        if path.is_empty() {
            path.push(b'/');
        }
        Some(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inode(ino: u64, size: u64) -> Inode {
        Inode {
            ino,
            size,
            ..Inode::root(0, 0, 0)
        }
    }

    #[test]
    fn serves_a_read_for_what_is_left_of_its_ttl() {
        let cache = AttrCache::new(Duration::from_millis(200));
        cache.remember(cache.epoch(), &[inode(7, 3)]);
        let (got, left) = cache.get(7).unwrap();
        assert_eq!(got.size, 3);
        assert!(left <= Duration::from_millis(200) && left > Duration::from_millis(100));
        assert!(cache.get(8).is_none());
        std::thread::sleep(Duration::from_millis(210));
        assert!(cache.get(7).is_none(), "served past its TTL");
    }

    #[test]
    fn a_read_begun_before_a_change_is_not_remembered() {
        let cache = AttrCache::new(ATTR_TTL);
        let before = cache.epoch();
        let written = cache.changed();
        cache.remember(before, &[inode(7, 3)]);
        assert!(cache.get(7).is_none(), "a read older than a change was kept");
        cache.remember(written, &[inode(7, 4)]);
        assert_eq!(cache.get(7).unwrap().0.size, 4);
        cache.changed();
        assert!(cache.get(7).is_none(), "a change left a copy");
    }

    #[test]
    fn answers_lookups_of_directories_only() {
        let cache = AttrCache::new(ATTR_TTL);
        let root = inode(1, 0);
        let dir = inode(2, 0);
        let file = Inode {
            kind: FileKind::File,
            ..inode(3, 5)
        };
        cache.remember_lookup(cache.epoch(), &root, b"records", &dir);
        cache.remember_lookup(cache.epoch(), &dir, b"chart", &file);
        let (parent, found) = cache.lookup(1, b"records").unwrap();
        assert_eq!((parent.ino, found.ino), (1, 2));
        assert!(cache.lookup(2, b"chart").is_none(), "a file's entry was kept");
        assert_eq!(cache.get(3).unwrap().0.size, 5, "the file's attributes were not");
        assert!(cache.lookup(1, b"other").is_none());
        cache.changed();
        assert!(cache.lookup(1, b"records").is_none(), "a change left an entry");
    }

    #[test]
    fn another_hosts_change_forgets_the_inodes_and_entries_it_names() {
        let cache = AttrCache::new(ATTR_TTL);
        let (root, ward, beds, other) = (inode(1, 0), inode(2, 0), inode(3, 0), inode(4, 0));
        cache.remember_lookup(cache.epoch(), &root, b"ward", &ward);
        cache.remember_lookup(cache.epoch(), &ward, b"beds", &beds);
        cache.remember_lookup(cache.epoch(), &root, b"other", &other);
        let under_way = cache.epoch();
        // The ward's entries changed: its attributes and entries go.
        cache.forget(&[2]);
        assert!(cache.get(2).is_none());
        assert!(cache.lookup(1, b"ward").is_none() && cache.lookup(2, b"beds").is_none());
        assert!(cache.lookup(1, b"other").is_some(), "an unchanged entry was forgotten");
        assert!(cache.get(3).is_some());
        cache.remember(under_way, &[ward]);
        assert!(cache.get(2).is_none(), "a read under way was kept");
    }

    #[test]
    fn a_commit_forgets_what_it_changed_and_keeps_what_it_wrote() {
        let cache = AttrCache::new(ATTR_TTL);
        let (root, ward, beds) = (inode(1, 0), inode(2, 0), inode(3, 0));
        cache.remember_lookup(cache.epoch(), &root, b"ward", &ward);
        cache.remember_lookup(cache.epoch(), &ward, b"beds", &beds);
        assert_eq!(cache.path_of_dir(3, 10).unwrap(), b"/ward/beds");
        assert_eq!(cache.path_of_dir(1, 10).unwrap(), b"/");
        assert_eq!(cache.path_of_dir(3, 1), None, "deeper than allowed");
        // A create in the ward (its times and entries) and a chmod of beds.
        let under_way = cache.epoch();
        let written = Inode { size: 9, ..ward };
        let epoch = cache.committed(&Committed {
            inodes: vec![2, 3, 4],
            dirs: vec![2],
            written: vec![written, inode(4, 0)],
        });
        assert_eq!(cache.get(2).unwrap().0.size, 9, "what it wrote was not kept");
        assert!(cache.get(4).is_some());
        assert!(cache.get(3).is_none(), "a changed inode was kept");
        assert_eq!(cache.lookup(1, b"ward").unwrap().1.size, 9);
        assert!(
            cache.lookup(2, b"beds").is_none(),
            "an entry of a changed directory was kept"
        );
        assert_eq!(cache.path_of_dir(2, 10).unwrap(), b"/ward");
        assert_eq!(cache.path_of_dir(3, 10), None);
        cache.remember(under_way, &[inode(3, 0)]);
        assert!(cache.get(3).is_none(), "a read under way was kept");
        cache.remember(epoch, &[inode(3, 0)]);
        assert!(cache.get(3).is_some());
    }

    #[test]
    fn a_zero_ttl_remembers_nothing() {
        let cache = AttrCache::new(Duration::ZERO);
        cache.remember(cache.epoch(), &[inode(7, 3)]);
        assert!(cache.get(7).is_none());
    }

    #[test]
    fn stale_reads_are_dropped_as_the_cache_fills() {
        let cache = AttrCache::new(Duration::from_millis(20));
        let many: Vec<Inode> = (0..PRUNE_AT as u64).map(|ino| inode(ino, 0)).collect();
        cache.remember(cache.epoch(), &many);
        cache.remember_lookup(cache.epoch(), &inode(1, 0), b"ward", &inode(2, 0));
        std::thread::sleep(Duration::from_millis(30));
        cache.remember(cache.epoch(), &[inode(1 << 40, 0)]);
        assert_eq!(cache.state().inodes.len(), 1);
        assert!(cache.state().dirs.is_empty() && cache.state().names.is_empty());
    }
}
