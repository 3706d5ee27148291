//! `s3vault fsck` and `s3vault gc`: is the volume in the store whole, and
//! which data objects does nothing reference?
//!
//! The live state (the newest checkpoint plus the journal segments after
//! it) and every named snapshot are *checked*: each chunk they reference
//! must lie within its pack in the store and (unless skipped) open with the
//! volume key under its pack, offset, inode and index; entries, inodes,
//! links and chunks must agree, and no two chunks may overlap in a pack.
//! Checkpoints still in the store only count as references. A data object
//! nothing references is an orphan (a crash between an upload and the
//! metadata naming it, or a reclaim cut short), and so is a journal segment
//! older than the live state's checkpoint.
//!
//! Deleting orphans is safe against a writer at work: metadata states are
//! listed and read before snapshots (FORMAT.md, "Named snapshots"), and an
//! object younger than `min_age` is never deleted, because a writer uploads
//! a pack shortly before the state that references it.
//!
//! A volume whose metadata is in PostgreSQL has its live state read from
//! the database, at one moment, before anything is listed: a pack a host
//! references after that moment is younger than `min_age` (hosts commit a
//! pack's chunks before they upload it; compaction uploads just before).

use crate::cache::data_key;
use crate::codec::{self, ChunkAddress, ObjectId};
use crate::journal::live::{self, live_state};
use crate::journal::seen::Staleness;
use crate::journal::{StateError, anchor, checkpoint, segment, snapshots};
use crate::keyring::Keyring;
use crate::meta::{ChunkRef, FileKind, Inode, ROOT_INO, Record};
use crate::store::{ObjectInfo, ObjectStore, StoreError};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::task::JoinSet;

/// Packs fetched and opened at once when verifying contents.
const PARALLEL: usize = 4;

/// Where the live state comes from.
pub enum Live {
    /// The store: the newest checkpoint and the journal segments after it.
    Journal,
    /// The volume's metadata database, read at one moment before the call.
    Database(Vec<Record>),
}

#[derive(Clone, Debug)]
pub struct Options {
    /// Download every referenced chunk and open it with the key.
    pub verify: bool,
    /// Delete orphans (old enough).
    pub repair: bool,
    /// Unreferenced objects younger than this are left alone.
    pub min_age: Duration,
}

/// Something wrong in a checked state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// "the live state" or "snapshot NAME".
    pub state: String,
    pub what: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.state, self.what)
    }
}

#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Metadata generations in the store.
    pub states: usize,
    pub snapshots: usize,
    /// Data objects in the store.
    pub objects: usize,
    pub referenced: usize,
    pub verified: usize,
    pub problems: Vec<Problem>,
    /// Unreferenced objects at least `min_age` old.
    pub orphans: usize,
    pub orphan_bytes: u64,
    /// Unreferenced objects younger than `min_age`, left alone.
    pub recent: usize,
    pub deleted: usize,
    /// Why orphans were not deleted although asked to.
    pub deletion_refused: Option<String>,
}

impl Report {
    /// e2fsck's exit codes: 0 clean, 1 errors corrected, 4 errors left.
    pub fn exit_code(&self) -> i32 {
        if !self.problems.is_empty() || self.orphans > self.deleted {
            4
        } else if self.deleted > 0 {
            1
        } else {
            0
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FsckError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One checked state, enough of it to name files and check its chunks.
struct Checked {
    label: String,
    /// ino → (parent, name) of one of its links.
    names: HashMap<u64, (u64, Vec<u8>)>,
    /// (chunk, ino, index).
    chunks: Vec<(ChunkRef, u64, u64)>,
}

impl Checked {
    fn path(&self, ino: u64) -> String {
        let mut parts = Vec::new();
        let mut at = ino;
        while at != ROOT_INO && parts.len() < 4096 {
            let Some((parent, name)) = self.names.get(&at) else {
                return format!("<inode {ino}, not linked>");
            };
            parts.push(crate::audit::display_bytes(name));
            at = *parent;
        }
        parts.reverse();
        format!("/{}", parts.join("/"))
    }

    fn problem(&self, what: String) -> Problem {
        Problem {
            state: self.label.clone(),
            what,
        }
    }
}

/// Reads `records` as state `label`, noting what does not add up.
fn check_tree(label: String, records: Vec<Record>, chunk_size: u64, problems: &mut Vec<Problem>) -> Checked {
    let mut inodes: HashMap<u64, Inode> = HashMap::new();
    let mut links: HashMap<u64, u32> = HashMap::new();
    let mut checked = Checked {
        label,
        names: HashMap::new(),
        chunks: Vec::new(),
    };
    let mut entries = Vec::new();
    for record in records {
        match record {
            Record::Inode(inode) => {
                inodes.insert(inode.ino, inode);
            }
            Record::Entry { parent, name, ino } => entries.push((parent, name, ino)),
            Record::Chunk { ino, index, block } => checked.chunks.push((block, ino, index)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    for (parent, name, ino) in entries {
        *links.entry(ino).or_default() += 1;
        checked.names.entry(ino).or_insert((parent, name));
        match inodes.get(&parent).map(|p| p.kind) {
            Some(FileKind::Dir) => {}
            Some(_) => found.push(format!("an entry of inode {parent}, which is not a directory")),
            None => found.push(format!("an entry of inode {parent}, which does not exist")),
        }
        if !inodes.contains_key(&ino) {
            found.push(format!(
                "{} names inode {ino}, which does not exist",
                checked.path(parent)
            ));
        }
    }
    if !inodes.get(&ROOT_INO).is_some_and(|r| r.kind == FileKind::Dir) {
        found.push("the root directory is missing".to_string());
    }
    let mut inos: Vec<&Inode> = inodes.values().collect();
    inos.sort_by_key(|i| i.ino);
    for inode in inos {
        let count = links.get(&inode.ino).copied().unwrap_or(0);
        if inode.kind != FileKind::Dir && inode.nlink > 0 && count != inode.nlink {
            found.push(format!(
                "{} has {} links but {count} names",
                checked.path(inode.ino),
                inode.nlink
            ));
        }
    }
    for (chunk, ino, index) in &checked.chunks {
        match inodes.get(ino) {
            Some(inode) if inode.kind == FileKind::File => {
                if index * chunk_size >= inode.size || u64::from(chunk.len) > chunk_size {
                    found.push(format!(
                        "{} has a chunk past its end (chunk {index})",
                        checked.path(*ino)
                    ));
                }
            }
            _ => found.push(format!("a chunk of inode {ino}, which is not a regular file")),
        }
    }
    let mut by_place: Vec<&(ChunkRef, u64, u64)> = checked.chunks.iter().collect();
    by_place.sort_by_key(|(chunk, _, _)| (chunk.pack, chunk.offset));
    for pair in by_place.windows(2) {
        let ((a, _, _), (b, ino, index)) = (pair[0], pair[1]);
        if a.pack == b.pack && a.end() > u64::from(b.offset) {
            found.push(format!(
                "{} has a chunk (chunk {index}) overlapping another in {}",
                checked.path(*ino),
                data_key(&b.pack)
            ));
        }
    }
    problems.extend(found.into_iter().map(|what| checked.problem(what)));
    checked
}

/// On a bucket that keeps anchors (S3 Object Lock): reports anchors that
/// do not authenticate, and a live state older than the newest anchor —
/// rolled back, so packs of the newer state would look unreferenced: the
/// reason to delete nothing is returned.
async fn check_anchor(
    store: &dyn ObjectStore,
    ring: &Keyring,
    problems: &mut Vec<Problem>,
) -> Result<Option<String>, FsckError> {
    if !store.supports_retention().await.unwrap_or(false) {
        return Ok(None);
    }
    let found = anchor::newest(store, ring).await?;
    for key in &found.forged {
        problems.push(Problem {
            state: format!("anchor {key}"),
            what: "does not authenticate: planted by someone without the volume's key".into(),
        });
    }
    let Some(anchor) = found.newest else {
        return Ok(None);
    };
    let position = match live::newest_position(store, ring).await {
        Ok(Some(position)) => position,
        // A missing or unloadable live state is reported above.
        Ok(None) | Err(_) => return Ok(None),
    };
    let witnessed = match anchor.seen.compare(position) {
        Staleness::Fresh => return Ok(None),
        Staleness::Older { seen, .. } => format!("is older than generation {} ", seen.generation),
        Staleness::Replaced { seen, .. } => format!("is another history than generation {} ", seen.generation),
    };
    problems.push(Problem {
        state: "the live state".into(),
        what: format!(
            "(generation {}) {witnessed}recorded by the volume's write-once anchor {}: metadata objects were deleted \
             or old ones put back (see `s3vault mount --accept-older-state` if that was done on purpose)",
            position.generation,
            anchor.key()
        ),
    });
    Ok(Some("the live state is older than the volume's anchor".into()))
}

/// Checks the volume; deletes orphans when `options.repair`. `progress`
/// hears (done, total) of the objects being verified.
pub async fn run(
    store: Arc<dyn ObjectStore>,
    ring: Arc<Keyring>,
    chunk_size: u32,
    live: Live,
    options: &Options,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<Report, FsckError> {
    let chunk_size = u64::from(chunk_size);
    let mut report = Report::default();
    let mut referenced: HashSet<ObjectId> = HashSet::new();
    let mut checked = Vec::new();
    let mut unreadable = None;
    let mut live_checkpoint = None;
    // States first, then snapshots: see the module comment.
    let in_database = matches!(live, Live::Database(_));
    let records = match live {
        Live::Database(records) => Some(records),
        Live::Journal => match live_state(store.as_ref(), &ring).await {
            Ok(Some(live)) => {
                live_checkpoint = Some(live.checkpoint);
                Some(live.records)
            }
            // `init` stores the first checkpoint before the superblock: a
            // volume without one has lost its metadata, and an empty state
            // would make every pack look unreferenced.
            Ok(None) => {
                report.problems.push(Problem {
                    state: "the live state".into(),
                    what: "is missing: the store holds no checkpoint (meta/<generation>.snap)".into(),
                });
                unreadable = Some("the live state is missing (no checkpoint in the store)".into());
                None
            }
            Err(StateError::Store(e)) => return Err(e.into()),
            Err(e) => {
                report.problems.push(Problem {
                    state: "the live state".into(),
                    what: format!("does not load: {e}"),
                });
                unreadable = Some(format!("the live state does not load: {e}"));
                None
            }
        },
    };
    if let Some(records) = records {
        checked.push(check_tree(
            "the live state".into(),
            records,
            chunk_size,
            &mut report.problems,
        ));
    }
    // Anchors witness the journal's positions; a database has none.
    if !in_database && let Some(why) = check_anchor(store.as_ref(), &ring, &mut report.problems).await? {
        unreadable.get_or_insert(why);
    }
    // Checkpoints older than the live state's may still be read by a host
    // mounting right now: their packs count as referenced.
    let generations = checkpoint::generations(store.as_ref()).await?;
    report.states = generations.len();
    for generation in generations {
        let key = checkpoint::key(generation);
        match checkpoint::read(store.as_ref(), &ring, generation).await {
            // Superseded by the writer meanwhile.
            Ok(None) => continue,
            Ok(Some(opened)) => referenced.extend(opened.records.iter().filter_map(|r| match r {
                Record::Chunk { block, .. } => Some(block.pack),
                _ => None,
            })),
            Err(StateError::Store(e)) => return Err(e.into()),
            Err(e) => {
                report.problems.push(Problem {
                    state: format!("metadata {key}"),
                    what: format!("does not open: {e}"),
                });
                unreadable = Some(format!("{key} does not open"));
            }
        }
    }
    let snapshot_keys = store.list(snapshots::PREFIX).await?;
    for key in snapshot_keys {
        match snapshots::read(store.as_ref(), &ring, &key).await {
            Ok(snapshot) => {
                report.snapshots += 1;
                let label = format!("snapshot {}", snapshot.info.name);
                checked.push(check_tree(label, snapshot.records, chunk_size, &mut report.problems));
            }
            Err(snapshots::SnapshotError::Store(StoreError::NotFound)) => {}
            Err(e) => {
                report.problems.push(Problem {
                    state: format!("snapshot object {key}"),
                    what: format!("does not open: {e}"),
                });
                unreadable = Some(format!("{key} does not open"));
            }
        }
    }
    // By key: a stray object under data/ need not have an object id's name.
    let objects: HashMap<String, ObjectInfo> = store
        .list_objects("data/")
        .await?
        .into_iter()
        .map(|o| (o.key.clone(), o))
        .collect();
    report.objects = objects.len();

    // Each referenced chunk once, checked against the first state naming it;
    // the chunks to open grouped by pack, so each pack is fetched once.
    let mut to_verify: HashMap<ObjectId, Vec<(usize, ChunkRef, u64, u64)>> = HashMap::new();
    let mut verified_places = HashSet::new();
    let mut reported = HashSet::new();
    for (which, state) in checked.iter().enumerate() {
        for &(chunk, ino, index) in &state.chunks {
            referenced.insert(chunk.pack);
            if !verified_places.insert((chunk.pack, chunk.offset)) {
                continue;
            }
            let key = data_key(&chunk.pack);
            match objects.get(&key) {
                None => {
                    // Once per file and pack: a lost pack of a big file is
                    // one line, not one per chunk.
                    if reported.insert((which, ino, chunk.pack)) {
                        report.problems.push(state.problem(format!(
                            "{}: chunk {index} (and any other of this file in it) is in {key}, which is missing \
                             from the store",
                            state.path(ino)
                        )));
                    }
                }
                Some(info) if info.size < chunk.end() => {
                    if reported.insert((which, ino, chunk.pack)) {
                        report.problems.push(state.problem(format!(
                            "{}: chunk {index} ends at byte {} of {key}, which has only {} bytes",
                            state.path(ino),
                            chunk.end(),
                            info.size
                        )));
                    }
                }
                Some(_) if options.verify => to_verify
                    .entry(chunk.pack)
                    .or_default()
                    .push((which, chunk, ino, index)),
                Some(_) => {}
            }
        }
    }
    report.referenced = referenced.len();

    let total = to_verify.values().map(|c| c.len() as u64).sum();
    let mut tasks = JoinSet::new();
    let mut queue = to_verify.into_iter();
    let mut done = 0;
    progress(0, total);
    loop {
        while tasks.len() < PARALLEL
            && let Some((pack, chunks)) = queue.next()
        {
            let (store, ring) = (store.clone(), ring.clone());
            // Only as far as the metadata expects: padding and whatever a
            // writer of the bucket appended are never read.
            let end = chunks.iter().map(|(_, chunk, _, _)| chunk.end()).max().unwrap_or(0);
            tasks.spawn(async move {
                let outcomes = match store.get_range(&data_key(&pack), 0, end).await {
                    Ok(sealed) => chunks
                        .into_iter()
                        .map(|(which, chunk, ino, index)| {
                            let address = ChunkAddress {
                                pack,
                                offset: u64::from(chunk.offset),
                                ino,
                                index,
                            };
                            let bytes = sealed
                                .get(chunk.offset as usize..chunk.end() as usize)
                                .unwrap_or_default();
                            let outcome = codec::open_chunk(&ring, &address, bytes)
                                .map(|_| ())
                                .map_err(|e| format!("does not open with the volume key ({e})"));
                            (which, ino, index, outcome)
                        })
                        .collect::<Vec<_>>(),
                    Err(StoreError::NotFound) => chunks
                        .into_iter()
                        .map(|(which, _, ino, index)| (which, ino, index, Err("is missing from the store".to_string())))
                        .collect(),
                    Err(e) => return Err(e),
                };
                Ok((pack, outcomes))
            });
        }
        let Some(joined) = tasks.join_next().await else { break };
        let (pack, outcomes) =
            joined.map_err(|e| StoreError::Unreachable(format!("verification task failed: {e}")))??;
        for (which, ino, index, outcome) in outcomes {
            done += 1;
            match outcome {
                Ok(()) => report.verified += 1,
                Err(why) => {
                    let state = &checked[which];
                    report.problems.push(state.problem(format!(
                        "{}: chunk {index} {why} ({})",
                        state.path(ino),
                        data_key(&pack)
                    )));
                }
            }
        }
        progress(done, total);
    }

    // Segments below the live state's checkpoint are superseded (a writer's
    // clean-up cut short): unreferenced too. Those after it are the live
    // state, or one a writer is uploading right now.
    let mut objects = objects;
    if let Some(checkpoint) = live_checkpoint {
        for info in store.list_objects(segment::PREFIX).await? {
            if segment::number_of(&info.key).is_some_and(|n| n < checkpoint) {
                objects.insert(info.key.clone(), info);
            }
        }
    }
    let now = SystemTime::now();
    let mut orphans = Vec::new();
    let referenced: HashSet<String> = referenced.iter().map(data_key).collect();
    for (key, info) in &objects {
        if referenced.contains(key) {
            continue;
        }
        let age = now.duration_since(info.modified).unwrap_or_default();
        if age >= options.min_age {
            report.orphan_bytes += info.size;
            orphans.push(info.key.clone());
        } else {
            report.recent += 1;
        }
    }
    report.orphans = orphans.len();
    if options.repair && !orphans.is_empty() {
        match unreadable {
            Some(why) => report.deletion_refused = Some(why),
            None => {
                for key in orphans {
                    store.delete(&key).await?;
                    report.deleted += 1;
                }
            }
        }
    }
    Ok(report)
}
