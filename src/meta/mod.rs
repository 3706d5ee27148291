//! Metadata store: inodes, directory entries and chunk maps.
//!
//! The filesystem core speaks to this trait only: the embedded SQLite
//! store of a single-writer volume, or PostgreSQL for several hosts. Compound
//! operations run between [`MetadataStore::begin`] and
//! [`MetadataStore::commit`], so a crash never leaves half a rename.

#[cfg(test)]
mod conformance_tests;
pub mod file_locks;
pub mod ops;
pub mod postgres;
pub(crate) mod sealing;
mod sqlite;
mod state;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;
pub use state::{decode_state, encode_state, encode_state_into};

use crate::codec::ObjectId;
use std::sync::Arc;

pub const ROOT_INO: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("metadata database: {0}")]
    Sqlite(rusqlite::Error),
    #[error("metadata database: {0}")]
    Postgres(tokio_postgres::Error),
    #[error("metadata database unreachable: {0}")]
    Unreachable(String),
    /// Another host's transaction got in the way (a serialization failure
    /// or a deadlock): the whole transaction may be run again.
    #[error("metadata transaction conflicted with another host's: {0}")]
    Conflict(String),
    /// A setting or the database's contents do not fit this volume.
    #[error("{0}")]
    Config(String),
    #[error("metadata is corrupt: {0}")]
    Corrupt(String),
}

// Not `#[from]`: that would also make it the error's source, and the
// message, which already includes it, would print it twice.
impl From<rusqlite::Error> for MetaError {
    fn from(e: rusqlite::Error) -> Self {
        MetaError::Sqlite(e)
    }
}

pub type Result<T> = std::result::Result<T, MetaError>;

/// The journal chain's value at a generation (FORMAT.md, "Journal
/// segments"): an HMAC over every segment up to it.
pub type ChainHead = [u8; 32];

/// Runs `f` between `begin` and `commit`; rolls back when it fails.
pub fn in_transaction<T, E: From<MetaError>>(
    meta: &mut dyn MetadataStore,
    f: impl FnOnce(&mut dyn MetadataStore) -> std::result::Result<T, E>,
) -> std::result::Result<T, E> {
    meta.begin()?;
    match f(meta) {
        Ok(v) => {
            meta.commit()?;
            Ok(v)
        }
        Err(e) => {
            meta.rollback();
            Err(e)
        }
    }
}

/// After chunks were unmapped or replaced: the packs among theirs that no
/// chunk references any more become garbage; returns them.
pub fn release_packs(meta: &mut dyn MetadataStore, replaced: &[ChunkRef]) -> Result<Vec<ObjectId>> {
    let packs: std::collections::BTreeSet<ObjectId> = replaced.iter().map(|c| c.pack).collect();
    let mut freed = Vec::new();
    for pack in packs {
        if !meta.references(&pack)? {
            meta.add_garbage(&pack)?;
            freed.push(pack);
        }
    }
    Ok(freed)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    File = 1,
    Dir = 2,
    Symlink = 3,
    Fifo = 4,
    Socket = 5,
    CharDevice = 6,
    BlockDevice = 7,
}

impl FileKind {
    pub fn from_code(code: u8) -> Option<FileKind> {
        Some(match code {
            1 => FileKind::File,
            2 => FileKind::Dir,
            3 => FileKind::Symlink,
            4 => FileKind::Fifo,
            5 => FileKind::Socket,
            6 => FileKind::CharDevice,
            7 => FileKind::BlockDevice,
            _ => return None,
        })
    }

    /// FIFOs, sockets and devices: the kernel, not the filesystem, serves
    /// their opens.
    pub fn is_special(self) -> bool {
        matches!(
            self,
            FileKind::Fifo | FileKind::Socket | FileKind::CharDevice | FileKind::BlockDevice
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            FileKind::File => "regular file",
            FileKind::Dir => "directory",
            FileKind::Symlink => "symlink",
            FileKind::Fifo => "FIFO",
            FileKind::Socket => "socket",
            FileKind::CharDevice => "character device",
            FileKind::BlockDevice => "block device",
        }
    }
}

/// Times are nanoseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inode {
    pub ino: u64,
    pub kind: FileKind,
    /// Permission bits including setuid, setgid and sticky (mode & 0o7777).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub atime: i64,
    pub mtime: i64,
    pub ctime: i64,
    pub rdev: u32,
    /// Bytes of stored blocks (holes excluded): what st_blocks reports.
    /// Derived from the block map by the store; writes of it are ignored.
    pub allocated: u64,
}

impl Inode {
    /// An empty root directory owned by `uid`:`gid`, mode 0755.
    pub fn root(uid: u32, gid: u32, now: i64) -> Inode {
        Inode {
            ino: ROOT_INO,
            kind: FileKind::Dir,
            perm: 0o755,
            uid,
            gid,
            nlink: 2,
            size: 0,
            atime: now,
            mtime: now,
            ctime: now,
            rdev: 0,
            allocated: 0,
        }
    }
}

/// One stored chunk of a file: the data object (pack) holding it, where its
/// sealed bytes start there, and how many plaintext bytes it has (the last
/// chunk of a file may be short).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRef {
    pub pack: ObjectId,
    pub offset: u32,
    pub len: u32,
}

impl ChunkRef {
    /// Where its sealed bytes end in the pack.
    pub fn end(&self) -> u64 {
        u64::from(self.offset) + crate::codec::sealed_chunk_len(self.len as usize) as u64
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// Stable position of the entry in its directory: it never changes while
    /// the entry exists and later entries get larger ones.
    pub offset: u64,
    pub name: Vec<u8>,
    pub ino: u64,
    pub kind: FileKind,
}

/// A directory and what one name in it names (`MetadataStore::lookup_in`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lookup {
    pub dir: Inode,
    pub found: Found,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    Nothing,
    /// The entry's inode number, and the inode (`None`: it is missing,
    /// which is corruption).
    Entry(u64, Option<Inode>),
}

/// One unit of a full metadata state, as exported into snapshots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Inode(Inode),
    SymlinkTarget { ino: u64, target: Vec<u8> },
    Entry { parent: u64, name: Vec<u8>, ino: u64 },
    Chunk { ino: u64, index: u64, block: ChunkRef },
    NextIno(u64),
    Xattr { ino: u64, name: Vec<u8>, value: Vec<u8> },
}

/// (directory, name) links from an inode up to the root, its own first.
pub type Ancestry = Vec<(u64, Vec<u8>)>;

pub trait MetadataStore: Send {
    fn begin(&mut self) -> Result<()>;
    fn commit(&mut self) -> Result<()>;
    fn rollback(&mut self);

    fn inode(&self, ino: u64) -> Result<Option<Inode>>;
    /// Inserts or replaces the inode.
    fn put_inode(&mut self, inode: &Inode) -> Result<()>;
    /// Removes the inode, its symlink target and its extended attributes
    /// (not its blocks).
    fn delete_inode(&mut self, ino: u64) -> Result<()>;
    fn allocate_ino(&mut self) -> Result<u64>;
    /// Sets the next inode number `allocate_ino` hands out.
    fn set_next_ino(&mut self, next: u64) -> Result<()>;
    /// Inodes with no link left (unlinked while open, then a crash).
    fn orphans(&self) -> Result<Vec<u64>>;

    /// What the last transaction changed, once; `None` when the store
    /// does not say (anything may have changed) or the outcome is unknown.
    fn take_committed(&mut self) -> Option<Committed> {
        None
    }

    /// Counts one open of `ino` more on this host, so that no other host
    /// deletes the file under it after an unlink; false when the inode is
    /// gone. Only a shared database keeps them: on a single host the open
    /// files are in memory.
    fn hold(&mut self, _ino: u64) -> Result<bool> {
        Ok(true)
    }
    /// Counts one open of `ino` fewer on this host; returns whether the
    /// inode is left without links (an orphan the caller may delete once
    /// no host holds it).
    fn release(&mut self, _ino: u64) -> Result<bool> {
        Ok(false)
    }
    /// `release` without its answer: a store that pays a round trip per
    /// statement sends it with its next statement, or at `settle`. An
    /// orphan it leaves is found by `orphans`.
    fn release_later(&mut self, ino: u64) -> Result<()> {
        self.release(ino).map(|_| ())
    }
    /// Sends what `release_later` queued.
    fn settle(&mut self) -> Result<()> {
        Ok(())
    }
    /// Whether any host holds `ino` open.
    fn held(&self, _ino: u64) -> Result<bool> {
        Ok(false)
    }
    /// Drops every hold of this host, on files and on its open pack: a
    /// crash left them behind.
    fn release_holds(&mut self) -> Result<()> {
        Ok(())
    }

    fn lookup(&self, parent: u64, name: &[u8]) -> Result<Option<u64>>;
    /// Directory `parent` (`None`: there is no such inode) with what its
    /// entry `name` names, in one read where the store can.
    fn lookup_in(&self, parent: u64, name: &[u8]) -> Result<Option<Lookup>> {
        let Some(dir) = self.inode(parent)? else {
            return Ok(None);
        };
        let found = match self.lookup(parent, name)? {
            Some(ino) => Found::Entry(ino, self.inode(ino)?),
            None => Found::Nothing,
        };
        Ok(Some(Lookup { dir, found }))
    }
    /// The directory holding directory `ino` (directories have one link).
    fn parent_of(&self, ino: u64) -> Result<Option<u64>>;
    /// One link of `ino` (the oldest): its directory and name.
    fn name_of(&self, ino: u64) -> Result<Option<(u64, Vec<u8>)>>;
    /// `name_of` from `ino` up to the root, `ino`'s first: (directory,
    /// name) of each inode on the way, at most `limit` of them. `None` if
    /// one has no link left, or the root is farther than `limit`. A store
    /// that pays a round trip per statement reads it in one.
    fn ancestry(&self, ino: u64, limit: usize) -> Result<Option<Ancestry>> {
        let mut chain = Vec::new();
        let mut at = ino;
        while at != ROOT_INO {
            match self.name_of(at)? {
                Some((parent, name)) if chain.len() < limit => {
                    chain.push((parent, name));
                    at = parent;
                }
                _ => return Ok(None),
            }
        }
        Ok(Some(chain))
    }
    fn insert_entry(&mut self, parent: u64, name: &[u8], ino: u64) -> Result<()>;
    fn remove_entry(&mut self, parent: u64, name: &[u8]) -> Result<()>;
    /// Up to `limit` entries of `parent` with offsets greater than `after`.
    fn entries(&self, parent: u64, after: u64, limit: usize) -> Result<Vec<DirEntry>>;
    fn has_entries(&self, parent: u64) -> Result<bool>;

    fn symlink_target(&self, ino: u64) -> Result<Option<Vec<u8>>>;
    fn set_symlink_target(&mut self, ino: u64, target: &[u8]) -> Result<()>;

    fn xattr(&self, ino: u64, name: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Inserts or replaces one extended attribute.
    fn set_xattr(&mut self, ino: u64, name: &[u8], value: &[u8]) -> Result<()>;
    /// Removes one extended attribute; returns whether it existed.
    fn remove_xattr(&mut self, ino: u64, name: &[u8]) -> Result<bool>;
    fn xattr_names(&self, ino: u64) -> Result<Vec<Vec<u8>>>;

    /// Stored chunks of `ino` with index in `first..=last`, in index order.
    fn chunks(&self, ino: u64, first: u64, last: u64) -> Result<Vec<(u64, ChunkRef)>>;
    /// Maps (or with `None` unmaps) one chunk; returns the chunk it replaced.
    fn set_chunk(&mut self, ino: u64, index: u64, chunk: Option<ChunkRef>) -> Result<Option<ChunkRef>>;
    /// Unmaps every chunk with index >= `first`; returns them.
    fn remove_chunks_from(&mut self, ino: u64, first: u64) -> Result<Vec<ChunkRef>>;
    /// The first stored chunk of `ino` at index `from` or after.
    fn next_chunk(&self, ino: u64, from: u64) -> Result<Option<u64>>;
    /// The first index at `from` or after with no stored chunk of `ino`.
    fn next_gap(&self, ino: u64, from: u64) -> Result<u64>;
    /// Whether any chunk of the state lives in `pack`.
    fn references(&self, pack: &ObjectId) -> Result<bool>;
    /// Each chunk living in `pack`: (inode, index, chunk), in pack order.
    fn chunks_in(&self, pack: &ObjectId) -> Result<Vec<(u64, u64, ChunkRef)>>;
    /// The chunks of `pack` starting in `from..to`, in pack order.
    fn chunks_in_range(&self, pack: &ObjectId, from: u64, to: u64) -> Result<Vec<(u64, u64, ChunkRef)>>;
    /// Every referenced pack with the sealed bytes of its live chunks.
    fn pack_usage(&self) -> Result<Vec<(ObjectId, u64)>>;

    /// Data objects no longer referenced locally, to delete once a metadata
    /// state without them is durable in the object store. A pack that is
    /// referenced again (the open pack got a new chunk) leaves the list.
    fn add_garbage(&mut self, object_id: &ObjectId) -> Result<()>;
    fn garbage(&self) -> Result<Vec<ObjectId>>;
    /// Of `ids`, the garbage that may be deleted now, taken off the list:
    /// on a shared database, not a pack referenced again or still open on
    /// some host (only an open pack gets new chunks), so that no host
    /// deletes what another just wrote into.
    fn claim_garbage(&mut self, ids: &[ObjectId]) -> Result<Vec<ObjectId>> {
        Ok(ids.to_vec())
    }
    /// The open pack was cut: it gets no chunk any more (see
    /// `claim_garbage`).
    fn pack_cut(&mut self, _pack: &ObjectId) -> Result<()> {
        Ok(())
    }
    fn remove_garbage(&mut self, ids: &[ObjectId]) -> Result<()>;

    /// Number of the newest metadata state uploaded (or being uploaded).
    fn generation(&self) -> Result<u64>;
    fn set_generation(&mut self, generation: u64) -> Result<()>;
    /// The journal chain's head at `generation()`; `None` while unknown (a
    /// state loaded from a format 1 checkpoint, or a superseded one).
    fn head(&self) -> Result<Option<ChainHead>>;
    fn set_head(&mut self, head: Option<ChainHead>) -> Result<()>;

    /// (inodes, bytes of file data stored).
    fn usage(&self) -> Result<(u64, u64)>;

    /// Whether mutations from now on are recorded in the journal (a
    /// writer's store; off for replays and read-only copies).
    fn set_journaling(&mut self, on: bool);
    /// Journal entries after sequence number `after`, at most `limit`,
    /// oldest first (see `journal`); empty unless journaling is on.
    fn journal_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>>;
    /// Forgets journal entries up to `upto`.
    fn trim_journal(&mut self, upto: u64) -> Result<()>;

    /// Every record of the state, for a snapshot.
    fn export(&self, sink: &mut dyn FnMut(Record)) -> Result<()>;
    /// Loads a state made by `export` into an empty store.
    fn import(&mut self, records: &mut dyn Iterator<Item = Record>) -> Result<()>;

    /// The connection to a shared database, to watch and steer without
    /// this store's lock; `None` for the embedded store.
    fn database(&self) -> Option<Arc<dyn Database>> {
        None
    }

    /// The state of the connection to a shared database (`status`).
    fn database_status(&self) -> Option<DatabaseStatus> {
        self.database().map(|d| d.status())
    }
}

/// What a transaction of this host changed, as far as caches of it care
/// (`MetadataStore::take_committed`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Committed {
    /// Inodes whose rows or stored blocks changed, deleted ones included.
    pub inodes: Vec<u64>,
    /// Directories whose entries changed.
    pub dirs: Vec<u64>,
    /// Inodes as written, of those whose stored blocks did not change
    /// (whose `allocated` the writer knew).
    pub written: Vec<Inode>,
}

/// What other hosts changed, as a shared database tells (`postgres::changes`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Inodes whose attributes, data or (of a directory) entries changed.
    Inodes(Vec<u64>),
    /// Anything may have changed: what was told meanwhile was not heard.
    Unknown,
}

/// What an operation that needs the shared database does while the
/// server cannot be reached (NFS's soft and hard mounts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutagePolicy {
    /// Fail at once with EIO.
    #[default]
    Fail,
    /// Wait until the server is back, then go on.
    Wait,
}

impl std::str::FromStr for OutagePolicy {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "fail" | "soft" => Ok(OutagePolicy::Fail),
            "wait" | "hard" => Ok(OutagePolicy::Wait),
            _ => Err(format!("{s:?} is not an outage policy (fail or wait)")),
        }
    }
}

tokio::task_local! {
    /// Marks background work (periodic syncs, compaction, control
    /// requests): it never waits out a database outage, whatever the
    /// policy, so it cannot sit on the metadata lock while the requests
    /// that are allowed to wait (and `status`, and an unmount) queue
    /// behind it.
    static BACKGROUND: ();
}

/// Runs `work` as background work (see `BACKGROUND`).
pub async fn in_background<F: std::future::Future>(work: F) -> F::Output {
    BACKGROUND.scope((), work).await
}

/// Whether the calling task is background work.
fn is_background() -> bool {
    BACKGROUND.try_with(|_| ()).is_ok()
}

/// A shared database's connection, seen from outside the store: `status`
/// must answer while an operation waits out an outage with the store's
/// lock held.
pub trait Database: Send + Sync {
    fn status(&self) -> DatabaseStatus;
    fn set_outage_policy(&self, policy: OutagePolicy);
}

/// How a shared metadata database is doing, for `status` and metrics.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct DatabaseStatus {
    /// Where (no password).
    pub server: String,
    pub connected: bool,
    /// The last statement's round trip, in milliseconds.
    pub round_trip_ms: f64,
    pub statements: u64,
    pub reconnects: u64,
    pub errors: u64,
    /// Transactions run again because another host's got in the way.
    pub conflicts: u64,
    pub last_error: Option<String>,
    pub outage_policy: OutagePolicy,
}
