//! Several hosts on one volume whose metadata is in PostgreSQL: each core
//! here is a host, with its own database session and cache directory, over
//! one object store. Run by `scripts/test.sh` (`--ignored postgres`),
//! which starts the database.

use super::*;
use crate::crypto::SecretKey;
use crate::meta::Change;
use crate::meta::PgStore;
use crate::meta::postgres::{PgChanges, PgLocks};
use crate::store::MemoryStore;

const BS: u32 = 64 * 1024;

struct Volume {
    store: Arc<MemoryStore>,
    ring: Arc<Keyring>,
    caches: tempfile::TempDir,
}

impl Volume {
    fn new() -> Volume {
        let ring = Arc::new(Keyring::new(&SecretKey::random(), crate::crypto::random_bytes()));
        let mut db = PgStore::create(&crate::meta::postgres::test_target(), &ring, [0; 16]).unwrap();
        db.put_inode(&Inode::root(0, 0, 0)).unwrap();
        Volume {
            store: Arc::new(MemoryStore::default()),
            ring,
            caches: tempfile::tempdir().unwrap(),
        }
    }

    /// A host mounting the volume read-write.
    fn host(&self) -> Core {
        self.host_as(crate::crypto::random_bytes())
    }

    fn host_as(&self, host: [u8; 16]) -> Core {
        let db = PgStore::open(&crate::meta::postgres::test_target(), &self.ring, host).unwrap();
        // As a mount's: its connection says the host is alive.
        let locks = PgLocks::open(&crate::meta::postgres::test_target(), &self.ring, host).unwrap();
        let dir = tempfile::tempdir_in(self.caches.path()).unwrap().keep();
        let config = crate::cache::CacheConfig {
            limit: 1 << 30,
            min_free: crate::cache::MinFree::Bytes(0),
            max_dirty: 1 << 30,
            upload_concurrency: 4,
        };
        let cache = PackCache::open(&dir, config, self.store.clone()).unwrap();
        cache.spawn_uploader();
        let options = CoreOptions {
            shared_metadata: true,
            ..CoreOptions::default()
        };
        Core::new(Box::new(db), self.store.clone(), cache, self.ring.clone(), BS, options).with_locks(Arc::new(locks))
    }
}

fn root() -> Caller {
    Caller::root()
}

async fn write_file(host: &Core, name: &[u8], data: &[u8]) -> u64 {
    let (inode, fh) = host.create(&root(), ROOT_INO, name, 0o644, libc::O_WRONLY).unwrap();
    host.write(fh, inode.ino, 0, data).await.unwrap();
    host.release(fh, inode.ino).await.unwrap();
    inode.ino
}

/// Statements the host's store sent so far.
fn round_trips(host: &Core) -> u64 {
    host.meta().database_status().unwrap().statements
}

/// Directories /a/b/c; the last one's inode number.
fn mkdir_a_b_c(host: &Core) -> u64 {
    let mut dir = ROOT_INO;
    for name in [b"a", b"b", b"c"] {
        dir = host.mkdir(&root(), dir, name, 0o755).unwrap().ino;
    }
    dir
}

async fn chmod(host: &Core, ino: u64, perm: u32) -> Inode {
    let change = SetAttr {
        mode: Some(perm),
        uid: None,
        gid: None,
        size: None,
        atime: None,
        mtime: None,
    };
    host.setattr(&root(), ino, change, false).await.unwrap()
}

async fn read_file(host: &Core, name: &[u8]) -> FsResult<Vec<u8>> {
    let ino = host.lookup(&root(), ROOT_INO, name)?.ino;
    let fh = host.open(&root(), ino, libc::O_RDONLY).await?;
    let data = host.read(fh, ino, 0, 1 << 20).await;
    host.release(fh, ino).await?;
    data
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one"]
async fn postgres_a_file_closed_on_one_host_opens_with_its_contents_on_another() {
    let volume = Volume::new();
    let (a, b) = (volume.host(), volume.host());
    write_file(&a, b"report", b"first version").await;
    // Nothing but the close: no sync, and b's cache never saw it.
    assert_eq!(read_file(&b, b"report").await.unwrap(), b"first version");
    let ino = b.lookup(&root(), ROOT_INO, b"report").unwrap().ino;
    let fh = b.open(&root(), ino, libc::O_WRONLY | libc::O_TRUNC).await.unwrap();
    b.write(fh, ino, 0, b"second").await.unwrap();
    b.release(fh, ino).await.unwrap();
    assert_eq!(read_file(&a, b"report").await.unwrap(), b"second");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one"]
async fn postgres_a_file_open_on_one_host_outlives_its_unlink_on_another() {
    let volume = Volume::new();
    let (a, b) = (volume.host(), volume.host());
    let ino = write_file(&a, b"doomed", &[7; 3 * BS as usize]).await;
    let fh = a.open(&root(), ino, libc::O_RDONLY).await.unwrap();
    b.unlink(&root(), ROOT_INO, b"doomed").unwrap();
    b.sync().await.unwrap();
    assert_eq!(b.lookup(&root(), ROOT_INO, b"doomed"), Err(FsError::ENOENT));
    let data = a.read(fh, ino, 0, 3 * BS).await.unwrap();
    assert!(
        data.len() == 3 * BS as usize && data.iter().all(|b| *b == 7),
        "a's open file lost its data"
    );
    a.release(fh, ino).await.unwrap();
    // The close does not wait for the database; a's next sync (each
    // --metadata-interval) sends the release and deletes the orphan.
    assert!(
        b.meta().inode(ino).unwrap().is_some(),
        "deleted before a's close reached the database"
    );
    a.sync().await.unwrap();
    assert_eq!(b.meta().inode(ino).unwrap(), None, "the last close on a removed it");
    a.final_sync().await.unwrap();
    assert!(
        volume.store.list("data/").await.unwrap().is_empty(),
        "the removed file's packs were not reclaimed"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one"]
async fn postgres_hosts_creating_in_one_directory_at_once_all_succeed() {
    let volume = Volume::new();
    let hosts = [volume.host(), volume.host(), volume.host()];
    std::thread::scope(|s| {
        for (h, host) in hosts.iter().enumerate() {
            s.spawn(move || {
                for i in 0..40 {
                    let name = format!("dir-{h}-{i}");
                    host.mkdir(&root(), ROOT_INO, name.as_bytes(), 0o755).unwrap();
                }
            });
        }
    });
    let listed = hosts[0].readdir(ROOT_INO, 0, 1000).unwrap();
    assert_eq!(listed.len(), 120);
    assert_eq!(
        hosts[1].meta().inode(ROOT_INO).unwrap().unwrap().nlink,
        122,
        "a lost update of the parent's link count"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one"]
async fn postgres_hosts_writing_files_in_one_directory_at_once_all_close_them() {
    let volume = Volume::new();
    let hosts: Vec<Arc<Core>> = (0..3).map(|_| Arc::new(volume.host())).collect();
    let mut writers = Vec::new();
    for (h, host) in hosts.iter().enumerate() {
        let host = host.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..30 {
                let name = format!("file-{h}-{i}");
                let (inode, fh) = host.create(&root(), ROOT_INO, name.as_bytes(), 0o644, libc::O_WRONLY)?;
                host.write(fh, inode.ino, 0, name.as_bytes()).await?;
                host.release(fh, inode.ino).await?;
            }
            Ok::<(), FsError>(())
        }));
    }
    for writer in writers {
        writer.await.unwrap().unwrap();
    }
    for h in 0..3 {
        for i in 0..30 {
            let name = format!("file-{h}-{i}");
            assert_eq!(
                read_file(&hosts[(h + 1) % 3], name.as_bytes()).await.unwrap(),
                name.as_bytes()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one"]
async fn postgres_audit_paths_follow_a_directory_another_host_moved() {
    let volume = Volume::new();
    let (a, b) = (volume.host(), volume.host());
    let dir = a.mkdir(&root(), ROOT_INO, b"ward", 0o755).unwrap();
    let (file, fh) = a.create(&root(), dir.ino, b"chart", 0o644, libc::O_WRONLY).unwrap();
    a.release(fh, file.ino).await.unwrap();
    assert_eq!(a.path_of(file.ino), b"/ward/chart");
    b.rename(&root(), ROOT_INO, b"ward", ROOT_INO, b"archive", 0).unwrap();
    assert_eq!(a.path_of(file.ino), b"/archive/chart");
}

/// fsck and gc of a volume whose metadata is in the database: the live
/// state as the database has it at one moment.
async fn fsck(volume: &Volume, repair: bool) -> crate::fsck::Report {
    let mut reader = PgStore::open(&crate::meta::postgres::test_target(), &volume.ring, [0; 16]).unwrap();
    let mut records = Vec::new();
    reader.export_consistent(&mut |r| records.push(r)).unwrap();
    let options = crate::fsck::Options {
        verify: true,
        repair,
        min_age: std::time::Duration::ZERO,
    };
    let store: Arc<dyn ObjectStore> = volume.store.clone();
    crate::fsck::run(
        store,
        volume.ring.clone(),
        BS,
        crate::fsck::Live::Database(records),
        &options,
        &|_, _| {},
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one"]
async fn postgres_gc_deletes_only_what_no_host_references() {
    let volume = Volume::new();
    let (a, b) = (volume.host(), volume.host());
    write_file(&a, b"from-a", &[1; 2 * BS as usize]).await;
    write_file(&b, b"from-b", &[2; BS as usize + 10]).await;
    // Open on a, unlinked on b: referenced by nothing but a's hold.
    let held = write_file(&a, b"held", &[3; BS as usize]).await;
    let fh = a.open(&root(), held, libc::O_RDONLY).await.unwrap();
    b.unlink(&root(), ROOT_INO, b"held").unwrap();
    // What a host that crashed after an upload leaves behind.
    let leaked = crate::cache::data_key(&crate::codec::new_object_id());
    volume
        .store
        .put(&leaked, bytes::Bytes::from(vec![0; 100]))
        .await
        .unwrap();

    let report = fsck(&volume, true).await;
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!((report.orphans, report.deleted), (1, 1), "{report:?}");
    assert!(report.verified >= 4, "{report:?}");
    assert!(!volume.store.list("data/").await.unwrap().contains(&leaked));
    assert_eq!(read_file(&b, b"from-a").await.unwrap(), vec![1; 2 * BS as usize]);
    assert_eq!(read_file(&a, b"from-b").await.unwrap(), vec![2; BS as usize + 10]);
    assert_eq!(a.read(fh, held, 0, BS).await.unwrap(), vec![3; BS as usize]);
    a.release(fh, held).await.unwrap();

    // A pack gone from the store is named, and nothing is deleted.
    let from_a = b.lookup(&root(), ROOT_INO, b"from-a").unwrap().ino;
    let pack = a.meta().chunks(from_a, 0, 0).unwrap()[0].1.pack;
    volume.store.delete(&crate::cache::data_key(&pack)).await.unwrap();
    let report = fsck(&volume, false).await;
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.state == "the live state" && p.what.contains("missing from the store")),
        "{:?}",
        report.problems
    );
}

/// The database as a command (snapshot, fsck) opens it.
fn command_db(volume: &Volume) -> PgStore {
    PgStore::open(&crate::meta::postgres::test_target(), &volume.ring, [0; 16]).unwrap()
}

async fn overwrite(host: &Core, name: &[u8], data: &[u8]) {
    let ino = host.lookup(&root(), ROOT_INO, name).unwrap().ino;
    let fh = host.open(&root(), ino, libc::O_WRONLY | libc::O_TRUNC).await.unwrap();
    host.write(fh, ino, 0, data).await.unwrap();
    host.release(fh, ino).await.unwrap();
}

/// Writes `doc` (one chunk of ones) on `host`; returns its pack.
async fn write_doc(host: &Core) -> crate::codec::ObjectId {
    let ino = write_file(host, b"doc", &[1; BS as usize]).await;
    host.meta().chunks(ino, 0, 0).unwrap()[0].1.pack
}

async fn in_store(volume: &Volume, pack: &crate::codec::ObjectId) -> bool {
    let key = crate::cache::data_key(pack);
    volume.store.list("data/").await.unwrap().contains(&key)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one"]
async fn postgres_a_snapshot_keeps_what_hosts_overwrite_until_it_is_deleted() {
    use crate::journal::snapshots;
    let volume = Volume::new();
    let (a, b) = (volume.host(), volume.host());
    let old_pack = write_doc(&a).await;
    let mut db = command_db(&volume);
    let info = snapshots::create_shared(volume.store.as_ref(), &volume.ring, &mut db, "before")
        .await
        .unwrap();
    assert_eq!((info.inodes, info.bytes), (2, u64::from(BS)));

    overwrite(&b, b"doc", &[2; BS as usize]).await;
    b.final_sync().await.unwrap();
    a.final_sync().await.unwrap();
    assert!(
        in_store(&volume, &old_pack).await,
        "a host deleted a pack the snapshot keeps"
    );
    let snapshot = snapshots::load(volume.store.as_ref(), &volume.ring, "before")
        .await
        .unwrap();
    assert!(snapshot.packs().any(|p| p == old_pack));

    let freed = snapshots::delete_shared(volume.store.as_ref(), &volume.ring, &mut db, "before")
        .await
        .unwrap();
    assert_eq!(freed, 1);
    assert!(!in_store(&volume, &old_pack).await);
    assert_eq!(read_file(&a, b"doc").await.unwrap(), vec![2; BS as usize]);
    assert!(matches!(
        snapshots::delete_shared(volume.store.as_ref(), &volume.ring, &mut db, "before").await,
        Err(snapshots::SnapshotError::NotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one"]
async fn postgres_packs_of_a_snapshot_not_yet_stored_are_not_collected() {
    let volume = Volume::new();
    let (a, b) = (volume.host(), volume.host());
    let old_pack = write_doc(&a).await;
    // The window of `snapshot create` between reading the rows and storing
    // the snapshot object, where no object tells hosts to keep the pack.
    let mut db = command_db(&volume);
    let id = volume.ring.snapshot_name_id(b"in-flight");
    let records = db.export_pinned(&id).unwrap();
    assert!(
        records
            .iter()
            .any(|r| matches!(r, crate::meta::Record::Chunk { block, .. } if block.pack == old_pack))
    );
    overwrite(&b, b"doc", &[2; BS as usize]).await;
    b.final_sync().await.unwrap();
    assert!(in_store(&volume, &old_pack).await, "a host deleted a pinned pack");
    // Once the pins go, the pack is garbage like any other.
    db.unpin_snapshot(&id, &[old_pack]).unwrap();
    b.final_sync().await.unwrap();
    assert!(!in_store(&volume, &old_pack).await);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one"]
async fn postgres_a_create_costs_three_round_trips_however_deep_and_a_close_none() {
    let volume = Volume::new();
    let a = volume.host();
    let dir = mkdir_a_b_c(&a);
    // The first create takes a batch of inode numbers.
    a.create(&root(), dir, b"first", 0o644, libc::O_WRONLY).unwrap();
    for i in 0..3 {
        let before = round_trips(&a);
        let name = format!("f{i}");
        let (inode, fh) = a.create(&root(), dir, name.as_bytes(), 0o644, libc::O_WRONLY).unwrap();
        // The audit record's path (one query for the three directories,
        // with the previous close's release before it), BEGIN with the
        // lookup, and every write with the COMMIT.
        assert_eq!(round_trips(&a) - before, 3, "create {i}");
        // The kernel's getattr that follows is answered from the create.
        let before = round_trips(&a);
        assert_eq!(a.attributes(inode.ino).unwrap().0, inode);
        assert_eq!(round_trips(&a) - before, 0, "getattr after create {i}");
        let before = round_trips(&a);
        a.release(fh, inode.ino).await.unwrap();
        assert_eq!(round_trips(&a) - before, 0, "release {i}");
    }
    a.sync().await.unwrap();
    assert!(
        !a.meta().held(dir).unwrap()
            && (0..3).all(|i| {
                let ino = a.lookup(&root(), dir, format!("f{i}").as_bytes()).unwrap().ino;
                !a.meta().held(ino).unwrap()
            }),
        "a hold outlived its file's close and a sync"
    );
    let names: Vec<Vec<u8>> = a.readdir(dir, 0, 100).unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(names.len(), 4, "{names:?}");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one"]
async fn postgres_a_stat_costs_one_round_trip_and_shows_a_change_at_once_or_within_the_ttl() {
    let volume = Volume::new();
    let (a, b) = (volume.host(), volume.host());
    let ino = write_file(&a, b"chart", b"v1").await;
    let mode = |h: &Core| h.attributes(ino).unwrap().0.perm;
    let chmod = async |h: &Core, perm: u32| chmod(h, ino, perm).await;

    // stat(2): the kernel's lookup, then its getattr, answered from it.
    let before = round_trips(&b);
    b.lookup(&root(), ROOT_INO, b"chart").unwrap();
    let (inode, ttl) = b.attributes(ino).unwrap();
    assert_eq!(round_trips(&b) - before, 1);
    assert_eq!((inode.perm, inode.size), (0o644, 2));
    assert!(ttl <= ATTR_TTL, "the kernel may keep it past the read's TTL");

    // This host's own change shows at once.
    chmod(&b, 0o600).await;
    assert_eq!(mode(&b), 0o600);

    // Another host's shows at its next lookup (an open's, a stat's),
    // and without one within the TTL.
    let read = std::time::Instant::now();
    assert_eq!(mode(&a), 0o600);
    chmod(&b, 0o640).await;
    if read.elapsed() < ATTR_TTL / 2 {
        assert_eq!(mode(&a), 0o600, "the read a moment ago was not served");
    }
    tokio::time::sleep(ATTR_TTL).await;
    assert_eq!(mode(&a), 0o640, "another host's change unseen after the TTL");
    chmod(&b, 0o444).await;
    a.lookup(&root(), ROOT_INO, b"chart").unwrap();
    assert_eq!(mode(&a), 0o444, "another host's change unseen after a lookup");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one"]
async fn postgres_a_change_shows_on_the_other_hosts_as_soon_as_they_hear_of_it() {
    let volume = Volume::new();
    let b_id = crate::crypto::random_bytes();
    let (a, b) = (volume.host(), volume.host_as(b_id));
    let heard = PgChanges::listen(&crate::meta::postgres::test_target(), &volume.ring, b_id).unwrap();
    let follow = |b: &Core| loop {
        let change = heard.next(std::time::Duration::from_secs(5)).expect("nothing heard");
        b.others_changed(&change);
        if change != Change::Unknown {
            return change;
        }
    };
    let ino = write_file(&a, b"chart", b"v1").await;
    let dir = a.mkdir(&root(), ROOT_INO, b"ward", 0o755).unwrap().ino;
    while let Some(change) = heard.next(std::time::Duration::from_millis(300)) {
        b.others_changed(&change);
    }

    let read = std::time::Instant::now();
    b.lookup(&root(), ROOT_INO, b"chart").unwrap();
    b.lookup(&root(), ROOT_INO, b"ward").unwrap();
    chmod(&a, ino, 0o600).await;
    assert_eq!(follow(&b), Change::Inodes(vec![ino]));
    a.rename(&root(), ROOT_INO, b"ward", ROOT_INO, b"ward-2", 0).unwrap();
    assert_eq!(follow(&b), Change::Inodes(vec![ROOT_INO, dir]));
    assert!(read.elapsed() < ATTR_TTL, "too slow to tell the feed from the TTL");
    assert_eq!(b.attributes(ino).unwrap().0.perm, 0o600);
    assert_eq!(b.lookup(&root(), ROOT_INO, b"ward"), Err(FsError::ENOENT));
    assert_eq!(b.lookup(&root(), ROOT_INO, b"ward-2").unwrap().ino, dir);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one"]
async fn postgres_creates_in_a_directory_walk_its_path_and_name_it_without_round_trips() {
    let volume = Volume::new();
    let a = volume.host();
    let dir = mkdir_a_b_c(&a);
    // The kernel's walk to the directory, before each create.
    let walk = |a: &Core| {
        let mut at = ROOT_INO;
        for name in [b"a", b"b", b"c"] {
            at = a.lookup(&root(), at, name).unwrap().ino;
        }
        at
    };
    walk(&a);
    for i in 0..3 {
        let name = format!("f{i}");
        let before = round_trips(&a);
        assert_eq!(walk(&a), dir);
        // The audit record's path.
        assert_eq!(
            a.entry_path(dir, name.as_bytes()),
            format!("/a/b/c/{name}").into_bytes()
        );
        assert_eq!(round_trips(&a) - before, 0, "create {i}: the path cost a round trip");
        let (inode, fh) = a.create(&root(), dir, name.as_bytes(), 0o644, libc::O_WRONLY).unwrap();
        a.release(fh, inode.ino).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one"]
async fn postgres_directories_on_a_path_are_looked_up_once_per_ttl() {
    let volume = Volume::new();
    let (a, b) = (volume.host(), volume.host());
    let dir = a.mkdir(&root(), ROOT_INO, b"ward", 0o700).unwrap().ino;
    let stat = |h: &Core| {
        let found = h.lookup(&root(), ROOT_INO, b"ward")?.ino;
        h.lookup(&root(), found, b"chart")
    };
    write_file(&a, b"unused", b"").await;
    a.create(&root(), dir, b"chart", 0o644, libc::O_WRONLY).unwrap();
    stat(&b).unwrap();
    let before = round_trips(&b);
    stat(&b).unwrap();
    assert_eq!(round_trips(&b) - before, 1, "the directory was looked up again");

    // The search permission is still the caller's: the directory's mode
    // as read a moment ago.
    let nurse = Caller::with_groups(1000, 1000, vec![]);
    a.mkdir(&root(), dir, b"beds", 0o755).unwrap();
    b.lookup(&root(), dir, b"beds").unwrap();
    let before = round_trips(&b);
    assert_eq!(b.lookup(&nurse, ROOT_INO, b"ward").unwrap().ino, dir);
    assert_eq!(b.lookup(&nurse, dir, b"beds"), Err(FsError::EACCES));
    assert_eq!(round_trips(&b) - before, 0);

    // Another host's rename shows at once under the new name, and the
    // old one goes within the TTL.
    a.rename(&root(), ROOT_INO, b"ward", ROOT_INO, b"ward-2", 0).unwrap();
    assert_eq!(b.lookup(&root(), ROOT_INO, b"ward-2").unwrap().ino, dir);
    tokio::time::sleep(ATTR_TTL).await;
    assert_eq!(b.lookup(&root(), ROOT_INO, b"ward"), Err(FsError::ENOENT));
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one"]
async fn postgres_orphans_nobody_holds_are_deleted_without_a_hang() {
    let volume = Volume::new();
    let (a, b) = (Arc::new(volume.host()), volume.host());
    let ino = write_file(&a, b"doomed", &[5; BS as usize]).await;
    let _fh = a.open(&root(), ino, libc::O_RDONLY).await.unwrap();
    b.unlink(&root(), ROOT_INO, b"doomed").unwrap();
    // As at a's next mount after a crash with the file open: its holds
    // go, and what nobody holds is deleted. On a thread of its own, so
    // that a deadlock fails the test instead of hanging it.
    let (done, outcome) = std::sync::mpsc::channel();
    let host = a.clone();
    std::thread::spawn(move || done.send(host.remove_orphans()));
    let removed = outcome
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("remove_orphans hung");
    assert_eq!(removed, Ok(1));
    assert_eq!(b.meta().inode(ino).unwrap(), None);
}
