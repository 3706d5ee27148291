//! Volumes: creating one in a store, unlocking it, and loading its metadata
//! into the local cache directory.

use crate::crypto::SecretKey;
use crate::journal::anchor::{self, Anchor};
use crate::journal::seen::{Position, Seen, SeenError, SeenFile, Staleness};
use crate::journal::{StateError, checkpoint, live, segment, snapshots};
use crate::keyring::{Keyring, VolumeId};
use crate::meta::postgres::{HostId, PgChanges, PgLocks};
use crate::meta::{Inode, MetadataStore, PgStore, ROOT_INO, Record, SqliteStore};
use crate::os::now_ns;
use crate::store::{ObjectStore, S3Options, StoreError};
use crate::superblock::{Argon2Params, SlotKind, Superblock, SuperblockError, Unlock};
use bytes::Bytes;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub const SUPERBLOCK_KEY: &str = "superblock";
const DATABASE_FILE: &str = "metadata.db";
const SNAPSHOT_DATABASE_FILE: &str = "snapshot.db";

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("no s3vault volume at {0} (create one with `s3vault init`)")]
    NotInitialised(String),
    #[error("{0} already holds an s3vault volume; refusing to overwrite it")]
    AlreadyInitialised(String),
    #[error(transparent)]
    Superblock(#[from] SuperblockError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cache directory {path}: {reason}")]
    CacheDir { path: PathBuf, reason: String },
    #[error(transparent)]
    Kms(#[from] crate::kms::KmsError),
    #[error("AWS KMS: {0}")]
    KmsSetup(String),
    #[error(
        "the volume's metadata is missing from the store: no checkpoint (meta/<generation>.snap) is left, so \
         nothing was mounted. Run `s3vault fsck` to see what is there; put meta/ and journal/ back from the \
         bucket's versions or a backup, or mount a named snapshot with --snapshot"
    )]
    StateMissing,
    #[error(
        "the volume's metadata in the store (generation {store}) is older than {witness} (generation {seen}): \
         newer journal segments or checkpoints were deleted, or old ones put back. Nothing was mounted. Put meta/ \
         and journal/ back from the bucket's versions; if the older state was restored on purpose, mount once \
         with --accept-older-state (recorded in the audit log)"
    )]
    StoreOlder { seen: u64, store: u64, witness: Witness },
    #[error(
        "the volume's metadata in the store at generation {generation} is not the state {witness} there (chain \
         head {store_head}, seen {seen_head}): another history replaced it. Nothing was mounted. If that state \
         was restored on purpose, mount once with --accept-older-state (recorded in the audit log)"
    )]
    StoreReplaced {
        generation: u64,
        seen_head: String,
        store_head: String,
        witness: Witness,
    },
    #[error(
        "the superblock in the store is revision {store}, older than {witness} (revision {seen}): a superblock \
         from before a key change was put back (a removed key slot would open again). Nothing was mounted; put \
         the newest superblock back from the bucket's versions"
    )]
    SuperblockOlder { seen: u64, store: u64, witness: Witness },
    #[error(
        "cache directory {} holds {changes} metadata change(s) made on this host (files closed or changed here) \
         that never reached the store, which has moved on without them (the mount was fenced: another writer \
         took the volume over, or the lease was lost). Nothing was mounted. Export them with `s3vault recover URL \
         {}` --to DIR, then mount with --set-aside-unuploaded (the database is kept, renamed)",
         .cache_dir.display(), .cache_dir.display()
    )]
    Unuploaded { cache_dir: PathBuf, changes: usize },
    #[error(transparent)]
    Seen(#[from] SeenError),
    #[error("unlock with another key slot to remove this one")]
    SlotInUse,
    #[error(transparent)]
    Meta(#[from] crate::meta::MetaError),
    #[error(
        "this volume keeps its metadata in PostgreSQL, and `{0}` does not handle such volumes yet (mount, \
         unmount, status, fsck, gc, snapshots, restore and the audit commands do)"
    )]
    SharedMetadata(String),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Snapshot(#[from] snapshots::SnapshotError),
}

impl VolumeError {
    /// Configuration mistakes the user must fix (exit code 2), as opposed to
    /// runtime failures (exit code 1).
    pub fn is_usage(&self) -> bool {
        match self {
            VolumeError::NotInitialised(_)
            | VolumeError::AlreadyInitialised(_)
            | VolumeError::CacheDir { .. }
            | VolumeError::SlotInUse
            | VolumeError::SharedMetadata(_) => true,
            VolumeError::Meta(e) => matches!(e, crate::meta::MetaError::Config(_)),
            VolumeError::Snapshot(e) => matches!(
                e,
                snapshots::SnapshotError::NotFound(_) | snapshots::SnapshotError::BadName
            ),
            VolumeError::Superblock(e) => !matches!(e, SuperblockError::Tampered),
            VolumeError::Store(e) => matches!(e, StoreError::NoSuchBucket(_) | StoreError::Credentials(_)),
            VolumeError::Kms(e) => e.is_usage(),
            VolumeError::KmsSetup(_) => true,
            _ => false,
        }
    }
}

/// Who saw a newer volume than the store holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Witness {
    /// This host, by its cache directory's `seen` record.
    ThisHost,
    /// The volume's anchor of this name in the bucket.
    Anchor(String),
}

impl std::fmt::Display for Witness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Witness::ThisHost => write!(f, "this host has seen"),
            Witness::Anchor(key) => write!(f, "the volume's write-once anchor {key} records"),
        }
    }
}

/// An unlocked volume.
pub struct Volume {
    pub store: Arc<dyn ObjectStore>,
    pub superblock: Superblock,
    pub ring: Arc<Keyring>,
    /// Index of the key slot that unlocked it.
    pub slot: usize,
}

/// Creates a volume: first its initial metadata (a checkpoint in the
/// store, or with `shared_metadata` — a connection string — the tables in
/// PostgreSQL), then the superblock (written only if absent), so a
/// superblock never names a volume without metadata.
pub async fn init(
    store: Arc<dyn ObjectStore>,
    url: &str,
    chunk_size: u32,
    unlock: &Unlock,
    cost: Argon2Params,
    owner: (u32, u32),
    shared_metadata: Option<&str>,
) -> Result<VolumeId, VolumeError> {
    match store.get(SUPERBLOCK_KEY).await {
        Ok(_) => return Err(VolumeError::AlreadyInitialised(url.to_string())),
        Err(StoreError::NotFound) => {}
        Err(e) => return Err(e.into()),
    }
    let (mut superblock, master) = Superblock::create(chunk_size, unlock, cost, crate::os::now_secs())?;
    let ring = Keyring::new(&master, superblock.volume_id);
    let root = Inode::root(owner.0, owner.1, now_ns());
    match shared_metadata {
        None => {
            let mut meta = SqliteStore::in_memory()?;
            meta.put_inode(&root)?;
            checkpoint::store(store.as_ref(), &ring, &meta, 1, &segment::genesis(&ring)).await?;
        }
        Some(conninfo) => {
            let target = crate::meta::postgres::Target::parse(conninfo)?;
            let mut meta = PgStore::create(&target, &ring, INIT_HOST)?;
            meta.put_inode(&root)?;
            superblock.set_shared_metadata(&master, conninfo)?;
        }
    }
    match store.put_new(SUPERBLOCK_KEY, Bytes::from(superblock.encode())).await {
        Ok(()) => Ok(superblock.volume_id),
        Err(StoreError::AlreadyExists) => Err(VolumeError::AlreadyInitialised(url.to_string())),
        Err(e) => Err(e.into()),
    }
}

/// Reads and decodes the superblock (no key needed).
pub async fn read_superblock(store: &dyn ObjectStore, url: &str) -> Result<Superblock, VolumeError> {
    let bytes = match store.get(SUPERBLOCK_KEY).await {
        Ok(b) => b,
        Err(StoreError::NotFound) => return Err(VolumeError::NotInitialised(url.to_string())),
        Err(e) => return Err(e.into()),
    };
    Ok(Superblock::decode(&bytes)?)
}

/// Opens a key slot of `sb` with `unlock`: locally for key files and
/// passphrases, through AWS KMS for KMS slots. Returns the slot's index and
/// the verified master key.
pub async fn open_slot(sb: &Superblock, unlock: &Unlock, aws: &S3Options) -> Result<(usize, SecretKey), VolumeError> {
    if !matches!(unlock, Unlock::Kms) {
        return Ok(sb.unlock_slot(unlock)?);
    }
    let kms = crate::kms::Kms::new(aws).await.map_err(VolumeError::KmsSetup)?;
    let mut failed = Vec::new();
    for (index, slot) in sb.slots.iter().enumerate().filter(|(_, s)| s.kind == SlotKind::Kms) {
        match kms.unwrap(&slot.kms_key_id, &slot.wrapped, &sb.volume_id).await {
            Ok(master) => {
                sb.verify(&master)?;
                // Worth a warning only when another slot got in: otherwise
                // the error returned says it, once.
                for (id, e) in &failed {
                    tracing::warn!(slot = %id, error = %e, "KMS slot did not open");
                }
                return Ok((index, master));
            }
            Err(e) => failed.push((slot.id(), e)),
        }
    }
    Err(match failed.pop() {
        Some((_, e)) => e.into(),
        None => SuperblockError::WrongKey(unlock.describe()).into(),
    })
}

/// Reads the superblock and opens a key slot with `unlock`.
pub async fn unlock(
    store: Arc<dyn ObjectStore>,
    url: &str,
    unlock: &Unlock,
    aws: &S3Options,
) -> Result<Volume, VolumeError> {
    let superblock = read_superblock(store.as_ref(), url).await?;
    let (slot, master) = open_slot(&superblock, unlock, aws).await?;
    let ring = Arc::new(Keyring::new(&master, superblock.volume_id));
    Ok(Volume {
        store,
        superblock,
        ring,
        slot,
    })
}

/// The default cache directory of a volume.
pub fn default_cache_dir(volume_id: &VolumeId) -> PathBuf {
    Path::new("/var/cache/s3vault").join(hex::encode(volume_id))
}

/// Creates the cache directory (mode 0700) or checks an existing one: a
/// directory others can write to could be swapped under us.
pub fn prepare_cache_dir(path: &Path) -> Result<(), VolumeError> {
    let fail = |reason: String| VolumeError::CacheDir {
        path: path.to_path_buf(),
        reason,
    };
    if !path.exists() {
        std::fs::create_dir_all(path).map_err(|e| fail(e.to_string()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(|e| fail(e.to_string()))?;
    }
    let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    if !meta.is_dir() {
        return Err(fail("not a directory".into()));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(fail(format!(
            "is writable by group or others (mode {:o}); chmod 700 it",
            meta.mode() & 0o777
        )));
    }
    Ok(())
}

/// The exclusive lock a mount holds on its cache directory for its whole
/// life: two daemons sharing a metadata database and audit segments would
/// corrupt each other's state.
pub struct CacheLock {
    _file: std::fs::File,
}

/// Takes the cache directory's lock (`<cache>/lock`, holding the owner's
/// pid), or says which process holds it.
pub fn lock_cache_dir(path: &Path) -> Result<CacheLock, VolumeError> {
    use std::io::{Read, Seek, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |reason: String| VolumeError::CacheDir {
        path: path.to_path_buf(),
        reason,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path.join("lock"))
        .map_err(|e| fail(format!("cannot open its lock file: {e}")))?;
    // flock(2): released when the file is closed, even by a killed daemon.
    if file.try_lock().is_err() {
        let mut owner = String::new();
        let _ = file.read_to_string(&mut owner);
        let owner = owner.trim();
        let pid = if owner.is_empty() {
            "unknown".into()
        } else {
            owner.to_string()
        };
        return Err(fail(format!("is in use by another s3vault mount (pid {pid})")));
    }
    let written = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| write!(file, "{}", std::process::id()));
    written.map_err(|e| fail(format!("cannot write its lock file: {e}")))?;
    Ok(CacheLock { _file: file })
}

/// This cache directory's writer id (created on first use): the lease
/// recognises a mount of the same directory coming back after a crash.
pub fn writer_id(cache_dir: &Path) -> Result<String, VolumeError> {
    let path = cache_dir.join("writer");
    let fail = |reason: String| VolumeError::CacheDir {
        path: path.clone(),
        reason,
    };
    match std::fs::read_to_string(&path) {
        Ok(id) if id.trim().len() == 32 => Ok(id.trim().to_string()),
        Ok(_) | Err(_) => {
            let id = hex::encode(crate::crypto::random_bytes::<16>());
            std::fs::write(&path, &id).map_err(|e| fail(format!("cannot write its writer id: {e}")))?;
            Ok(id)
        }
    }
}

/// The usage row of what `init` made (the root directory).
const INIT_HOST: HostId = [0; 16];

/// A mount's connections to the shared metadata database of its volume.
pub struct Shared {
    pub meta: PgStore,
    pub locks: PgLocks,
    /// Hears what the other hosts change.
    pub changes: PgChanges,
    /// Where the database is, as it may be shown (no password).
    pub place: String,
}

/// Opens the shared metadata database of a volume that has one, as the
/// host mounting `cache_dir` (its writer id names the host's rows).
pub fn open_shared(volume: &Volume, cache_dir: &Path) -> Result<Option<Shared>, VolumeError> {
    let Some(conninfo) = volume.superblock.metadata_location(&volume.ring)? else {
        return Ok(None);
    };
    let target = crate::meta::postgres::Target::parse(&conninfo)?;
    let mut host: HostId = [0; 16];
    hex::decode_to_slice(writer_id(cache_dir)?, &mut host).map_err(|_| VolumeError::CacheDir {
        path: cache_dir.join("writer"),
        reason: "its writer id is not hexadecimal".into(),
    })?;
    let meta = PgStore::open(&target, &volume.ring, host)?;
    let locks = PgLocks::open(&target, &volume.ring, host)?;
    let changes = PgChanges::listen(&target, &volume.ring, host)?;
    Ok(Some(Shared {
        meta,
        locks,
        changes,
        place: target.describe(),
    }))
}

/// The shared metadata database of a volume that has one, for a command
/// (fsck, gc, snapshots); `None` for an embedded volume.
pub fn open_shared_for_command(volume: &Volume) -> Result<Option<PgStore>, VolumeError> {
    let Some(conninfo) = volume.superblock.metadata_location(&volume.ring)? else {
        return Ok(None);
    };
    let target = crate::meta::postgres::Target::parse(&conninfo)?;
    // The host id only names usage rows, which a command never writes.
    Ok(Some(PgStore::open(&target, &volume.ring, INIT_HOST)?))
}

/// The live state of a volume whose metadata is in a shared database, as
/// it was at one moment (for fsck and gc); `None` for an embedded volume.
pub fn read_shared(volume: &Volume) -> Result<Option<Vec<Record>>, VolumeError> {
    let Some(mut meta) = open_shared_for_command(volume)? else {
        return Ok(None);
    };
    let mut records = Vec::new();
    meta.export_consistent(&mut |record| records.push(record))?;
    Ok(Some(records))
}

/// Refuses `command` on a volume whose metadata is in a shared database,
/// which it does not handle yet.
pub fn require_embedded(volume: &Volume, command: &str) -> Result<(), VolumeError> {
    if volume.superblock.has_shared_metadata() {
        return Err(VolumeError::SharedMetadata(command.to_string()));
    }
    Ok(())
}

/// The database of a snapshot mount, `snapshot.db` in its cache
/// directory: made anew from the snapshot at every mount.
pub async fn load_snapshot(volume: &Volume, cache_dir: &Path, name: &str) -> Result<SqliteStore, VolumeError> {
    let snapshot = snapshots::load(volume.store.as_ref(), &volume.ring, name).await?;
    remove_database(cache_dir, SNAPSHOT_DATABASE_FILE)?;
    let mut db = SqliteStore::open(&cache_dir.join(SNAPSHOT_DATABASE_FILE), volume.ring.database_key())?;
    snapshot.import_into(&mut db)?;
    Ok(db)
}

/// Deletes database `file` of `cache_dir` with its WAL and shared memory.
fn remove_database(cache_dir: &Path, file: &str) -> Result<(), VolumeError> {
    for suffix in ["", "-wal", "-shm"] {
        let path = cache_dir.join(format!("{file}{suffix}"));
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(VolumeError::CacheDir {
                path,
                reason: e.to_string(),
            });
        }
    }
    Ok(())
}

/// Opens the volume's metadata database in `cache_dir`, rebuilding it from
/// the store's live state when it is missing, unreadable or older (a fresh
/// host, or another host wrote since). Returns the store and whether it may
/// hold changes the object store does not have yet.
pub async fn load_metadata(
    volume: &Volume,
    cache_dir: &Path,
    options: LoadOptions,
) -> Result<(SqliteStore, bool), VolumeError> {
    let path = cache_dir.join(DATABASE_FILE);
    if path.exists() {
        match SqliteStore::open(&path, volume.ring.database_key()) {
            Ok(db) if db.inode(ROOT_INO)?.is_some() => {
                if local_is_current(volume, &db).await? {
                    // Unsynced, whatever the generations say: a daemon killed
                    // after its last upload leaves changes made since then
                    // (closed files among them) that only this database holds.
                    return Ok((db, true));
                }
                let changes = db.journal_after(0, usize::MAX)?.len();
                drop(db);
                if changes == 0 {
                    tracing::info!("local metadata is older than the store's; rebuilding");
                } else if options.set_aside_unuploaded {
                    let aside = set_database_aside(cache_dir, "unuploaded")?;
                    tracing::warn!(changes, database = %aside, "unuploaded changes set aside; rebuilding from the store");
                } else {
                    return Err(VolumeError::Unuploaded {
                        cache_dir: cache_dir.to_path_buf(),
                        changes,
                    });
                }
            }
            Ok(_) => tracing::warn!("local metadata database is empty; rebuilding from the store"),
            Err(e) => tracing::warn!(error = %e, "local metadata database is unusable; rebuilding from the store"),
        }
    }
    let loaded = live::load_state(volume.store.as_ref(), &volume.ring, || {
        remove_database(cache_dir, DATABASE_FILE)?;
        Ok::<_, VolumeError>(SqliteStore::open(&path, volume.ring.database_key())?)
    })
    .await?;
    match loaded {
        Some(loaded) => Ok((loaded.meta, false)),
        // `init` stores the first checkpoint before the superblock, so a
        // volume without one has lost its metadata: absent is not empty.
        None => Err(VolumeError::StateMissing),
    }
}

/// Whether the local database holds the live state (and maybe more): the
/// store is at its generation, or one further with a segment this cache
/// uploaded just before it stopped (its operations begin the local
/// journal; the first sync takes note of it).
async fn local_is_current(volume: &Volume, db: &SqliteStore) -> Result<bool, VolumeError> {
    let local = db.generation()?;
    let Some(newest) = live::newest_generation(volume.store.as_ref()).await? else {
        return Ok(true);
    };
    // This database's generation was uploaded (a fenced one says 0): a
    // store behind it lost what this cache put there.
    if newest < local {
        return Err(VolumeError::StoreOlder {
            seen: local,
            store: newest,
            witness: Witness::ThisHost,
        });
    }
    if newest == local {
        return Ok(true);
    }
    if newest > local + 1 {
        return Ok(false);
    }
    Ok(
        match segment::read(volume.store.as_ref(), &volume.ring, newest).await? {
            Some(segment) => {
                segment.check_follows(db.head()?.as_ref()).is_ok()
                    && segment::journal_prefix(db, &segment.ops)?.is_some()
            }
            None => false,
        },
    )
}

/// How the store (its live position, `None` without a checkpoint, and its
/// superblock revision) falls short of what `witness` saw; empty when it
/// does not.
pub fn stale(seen: Seen, witness: Witness, store: Option<Position>, revision: u64) -> Vec<VolumeError> {
    let mut refused = Vec::new();
    if revision < seen.revision {
        refused.push(VolumeError::SuperblockOlder {
            seen: seen.revision,
            store: revision,
            witness: witness.clone(),
        });
    }
    match store.map(|store| seen.compare(store)) {
        None | Some(Staleness::Fresh) => {}
        Some(Staleness::Older { seen, store }) => refused.push(VolumeError::StoreOlder {
            seen: seen.generation,
            store: store.generation,
            witness,
        }),
        Some(Staleness::Replaced { seen, store }) => refused.push(VolumeError::StoreReplaced {
            generation: store.generation,
            seen_head: seen.head_hex(),
            store_head: store.head_hex(),
            witness,
        }),
    }
    refused
}

/// Compares the store — its superblock revision and live state — with what
/// this host has seen (`seen`, its cache directory's record) and with the
/// volume's newest anchor, and refuses an older one. With `accept_older`
/// (an administrator restored an older state on purpose) it takes the
/// store's state instead: the local database is set aside
/// (`metadata-superseded-<time>.db`, nothing of it is deleted) so the
/// mount rebuilds from the store, and the description of what was
/// accepted is returned for the audit log (the writer then lays a lower
/// anchor).
async fn check_freshness(
    volume: &Volume,
    cache_dir: &Path,
    seen: &SeenFile,
    anchor: Option<&Anchor>,
    accept_older: bool,
) -> Result<Option<String>, VolumeError> {
    let remembered = seen.get();
    let revision = volume.superblock.revision;
    let store = live::newest_position(volume.store.as_ref(), &volume.ring).await?;
    let mut refused = stale(remembered, Witness::ThisHost, store, revision);
    if let Some(anchor) = anchor {
        refused.extend(stale(anchor.seen, Witness::Anchor(anchor.key()), store, revision));
    }
    if refused.is_empty() {
        seen.advance_revision(revision)?;
        return Ok(None);
    }
    if !accept_older {
        return Err(refused.remove(0));
    }
    let database = cache_dir.join(DATABASE_FILE);
    let mut accepted = format!(
        "seen {} superblock_revision={}; ",
        remembered.state, remembered.revision
    );
    if let Some(anchor) = anchor {
        accepted.push_str(&format!(
            "anchor {} {} superblock_revision={}; ",
            anchor.key(),
            anchor.seen.state,
            anchor.seen.revision
        ));
    }
    accepted.push_str(&format!(
        "store {} superblock_revision={}",
        store.unwrap_or_default(),
        revision
    ));
    if database.exists() {
        let aside = set_database_aside(cache_dir, "superseded")?;
        accepted.push_str(&format!("; local database set aside as {aside}"));
    }
    seen.accept(store.unwrap_or_default(), revision)?;
    Ok(Some(accepted))
}

/// A cache directory without a `seen` record (made by an older release, or
/// the record removed) has still seen what its database says it uploaded.
fn learn_from_database(volume: &Volume, cache_dir: &Path, seen: &SeenFile) -> Result<(), VolumeError> {
    let path = cache_dir.join(DATABASE_FILE);
    if !path.exists() {
        return Ok(());
    }
    // An unusable database is load_metadata's to report or rebuild.
    if let Ok(db) = SqliteStore::open(&path, volume.ring.database_key()) {
        seen.advance(Position {
            generation: db.generation()?,
            head: db.head()?,
        })?;
    }
    Ok(())
}

/// Renames the cache directory's database (with its WAL) to
/// `metadata-<why>-<unix time>.db`, nothing deleted; returns the name.
fn set_database_aside(cache_dir: &Path, why: &str) -> Result<String, VolumeError> {
    let aside = format!("metadata-{why}-{}.db", crate::os::now_secs());
    for suffix in ["", "-wal", "-shm"] {
        let from = cache_dir.join(format!("{DATABASE_FILE}{suffix}"));
        if from.exists() {
            std::fs::rename(&from, cache_dir.join(format!("{aside}{suffix}"))).map_err(|e| VolumeError::CacheDir {
                path: from.clone(),
                reason: format!("cannot set the database aside: {e}"),
            })?;
        }
    }
    Ok(aside)
}

/// Opens a database of `cache_dir` (`metadata.db`, or one set aside) for
/// `s3vault recover`.
pub fn open_cache_database(volume: &Volume, cache_dir: &Path, file: &str) -> Result<SqliteStore, VolumeError> {
    let path = cache_dir.join(file);
    if !path.exists() {
        return Err(VolumeError::CacheDir {
            path,
            reason: "no such database".into(),
        });
    }
    Ok(SqliteStore::open(&path, volume.ring.database_key())?)
}

/// What a mount may do with a cache directory that disagrees with the store.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadOptions {
    /// Take a store older than the directory has seen (`--accept-older-state`).
    pub accept_older_state: bool,
    /// Set aside a database whose changes never reached the store, which
    /// moved on without them (`--set-aside-unuploaded`).
    pub set_aside_unuploaded: bool,
    /// The bucket keeps anchors (it has S3 Object Lock): compare with the
    /// newest.
    pub anchored: bool,
}

/// The live state as a mount of `cache_dir` loads it.
pub struct LiveMount {
    pub meta: SqliteStore,
    /// The database may hold changes the store does not have yet.
    pub unsynced: bool,
    /// What `--accept-older-state` accepted, for the audit log.
    pub accepted: Option<String>,
    /// The cache directory's record of what it has seen, to keep current.
    pub seen: Arc<SeenFile>,
    /// The volume's newest anchor, for the writer to lay the next after.
    pub anchor: Option<Anchor>,
}

/// Loads the live state for a mount of `cache_dir`: refuses a store older
/// than the directory has seen (`check_freshness`), then opens or rebuilds
/// the database (`load_metadata`) and records what it loaded as seen.
pub async fn load_live(volume: &Volume, cache_dir: &Path, options: LoadOptions) -> Result<LiveMount, VolumeError> {
    let seen = Arc::new(SeenFile::open(cache_dir, volume.ring.clone())?);
    if seen.get() == Seen::default() {
        learn_from_database(volume, cache_dir, &seen)?;
    }
    let anchor = if options.anchored {
        newest_anchor(volume).await?
    } else {
        None
    };
    let accepted = check_freshness(volume, cache_dir, &seen, anchor.as_ref(), options.accept_older_state).await?;
    let (meta, unsynced) = load_metadata(volume, cache_dir, options).await?;
    seen.advance(Position {
        generation: meta.generation()?,
        head: meta.head()?,
    })?;
    Ok(LiveMount {
        meta,
        unsynced,
        accepted,
        seen,
        anchor,
    })
}

/// After a key change, on a bucket that retains objects (`retain_for`):
/// lays an anchor with the superblock's new revision and the live
/// position, so a host that never mounted the volume refuses the
/// superblock from before the change.
pub async fn anchor_key_change(volume: &Volume, url: &str, retain_for: Duration) -> Result<(), VolumeError> {
    let store = volume.store.as_ref();
    let revision = read_superblock(store, url).await?.revision;
    let previous = newest_anchor(volume).await?;
    let state = live::newest_position(store, &volume.ring).await?.unwrap_or_default();
    let seen = Seen { state, revision };
    if previous.is_none_or(|a| a.seen != seen) {
        anchor::lay(store, &volume.ring, previous.as_ref(), seen, retain_for).await?;
    }
    Ok(())
}

/// The volume's newest anchor; anchors that do not authenticate are
/// logged (by name: no secret) and passed over.
pub async fn newest_anchor(volume: &Volume) -> Result<Option<Anchor>, VolumeError> {
    let found = anchor::newest(volume.store.as_ref(), &volume.ring).await?;
    if !found.forged.is_empty() {
        tracing::warn!(
            count = found.forged.len(),
            first = %found.forged[0],
            "anchor objects that do not authenticate were passed over (planted by someone without the key)"
        );
    }
    Ok(found.newest)
}

/// For a read-only mount following a writer: the store's live state in a
/// new database `follow-<generation>.db` of `cache_dir`, if it is newer
/// than `current`.
pub async fn load_newer(
    volume: &Volume,
    cache_dir: &Path,
    current: u64,
) -> Result<Option<(SqliteStore, PathBuf)>, VolumeError> {
    if live::newest_generation(volume.store.as_ref())
        .await?
        .is_none_or(|n| n <= current)
    {
        return Ok(None);
    }
    // Named after the state being left, so never the database in use.
    let file = format!("follow-{current}.db");
    let loaded = live::load_state(volume.store.as_ref(), &volume.ring, || {
        remove_database(cache_dir, &file)?;
        Ok::<_, VolumeError>(SqliteStore::open(&cache_dir.join(&file), volume.ring.database_key())?)
    })
    .await?;
    Ok(loaded.map(|l| (l.meta, cache_dir.join(file))))
}

/// Deletes a database made by `load_newer` once it is no longer in use.
pub fn remove_followed(path: &Path) {
    if let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str()))
        && let Err(e) = remove_database(dir, name)
    {
        tracing::warn!(error = %e, "cannot remove a superseded metadata database");
    }
}
