//! A bucket that lies (design invariant 9): each test plays someone who can
//! write to the bucket, or a lifecycle rule that deleted objects, and checks
//! that s3vault refuses or reports it and loses nothing.

use crate::crypto::SecretKey;
use crate::fsck;
use crate::journal::{anchor, checkpoint, segment, snapshots};
use crate::meta::MetadataStore;
use crate::store::ObjectStore;
use crate::superblock::Unlock;
use crate::test_support::{new_volume, walk, write_new};
use crate::volume::{VolumeError, Witness};
use std::sync::Arc;
use std::time::Duration;

/// A volume with two files, one in a named snapshot, unmounted cleanly.
async fn volume_with_files() -> (crate::test_support::TestVolume, tempfile::TempDir) {
    let tv = new_volume().await;
    let dirs = tempfile::tempdir().unwrap();
    let core = tv.mount(&dirs.path().join("writer"), tv.inner.clone()).await;
    write_new(&core, b"kept", &[7u8; 100_000]).await;
    core.final_sync().await.unwrap();
    snapshots::create(tv.inner.as_ref(), &tv.volume.ring, "s1")
        .await
        .unwrap();
    write_new(&core, b"later", &[8u8; 1000]).await;
    core.final_sync().await.unwrap();
    (tv, dirs)
}

/// `fsck --repair --min-age 0` of the volume.
async fn fsck_repair(tv: &crate::test_support::TestVolume) -> fsck::Report {
    let options = fsck::Options {
        verify: false,
        repair: true,
        min_age: Duration::ZERO,
    };
    fsck::run(
        tv.inner.clone(),
        tv.volume.ring.clone(),
        crate::test_support::BS,
        fsck::Live::Journal,
        &options,
        &|_, _| {},
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_deleted_checkpoint_is_refused_not_mounted_empty_and_nothing_is_deleted() {
    let (tv, dirs) = volume_with_files().await;
    let store = tv.inner.clone();
    for generation in checkpoint::generations(store.as_ref()).await.unwrap() {
        store.delete(&checkpoint::key(generation)).await.unwrap();
    }
    let data_before = store.list("data/").await.unwrap();
    assert!(!data_before.is_empty());

    // A fresh host refuses to mount, naming what is missing.
    let refused = tv.try_mount(&dirs.path().join("fresh"), store.clone()).await;
    let Err(e) = refused else {
        panic!("mounted a volume without its metadata")
    };
    assert!(matches!(e, VolumeError::StateMissing), "{e}");
    assert!(e.to_string().contains("no checkpoint"), "{e}");

    // fsck says so and exits non-zero; gc and --repair delete nothing.
    let report = fsck_repair(&tv).await;
    assert_ne!(report.exit_code(), 0);
    assert!(
        report.problems.iter().any(|p| p.what.contains("no checkpoint")),
        "{:?}",
        report.problems
    );
    assert!(report.deletion_refused.is_some());
    assert_eq!(report.deleted, 0);

    // Deleting the snapshot deletes nothing either, the snapshot included.
    let e = snapshots::delete(store.as_ref(), &tv.volume.ring, "s1")
        .await
        .unwrap_err();
    assert!(matches!(e, snapshots::SnapshotError::NoState), "{e}");
    assert_eq!(snapshots::list(store.as_ref(), &tv.volume.ring).await.unwrap().len(), 1);
    assert_eq!(store.list("data/").await.unwrap(), data_before);
}

/// Every object under `meta/` and `journal/`, to put back later.
async fn metadata_objects(store: &dyn ObjectStore) -> Vec<(String, bytes::Bytes)> {
    let mut objects = Vec::new();
    for prefix in [checkpoint::PREFIX, segment::PREFIX] {
        for key in store.list(prefix).await.unwrap() {
            let bytes = store.get(&key).await.unwrap();
            objects.push((key, bytes));
        }
    }
    objects
}

/// Replaces the store's metadata objects with `old` (a rollback).
async fn put_back(store: &dyn ObjectStore, old: &[(String, bytes::Bytes)]) {
    for (key, _) in metadata_objects(store).await {
        store.delete(&key).await.unwrap();
    }
    for (key, bytes) in old {
        store.put(key, bytes.clone()).await.unwrap();
    }
}

#[tokio::test]
async fn a_fresh_host_and_fsck_refuse_a_store_older_than_the_volumes_anchor() {
    let tv = crate::test_support::new_volume_in(crate::store::MemoryStore::with_retention()).await;
    let dirs = tempfile::tempdir().unwrap();
    let store = tv.inner.clone();
    let anchored = crate::volume::LoadOptions {
        anchored: true,
        ..Default::default()
    };
    let core = tv
        .try_mount_with(&dirs.path().join("writer"), store.clone(), anchored)
        .await
        .unwrap();
    write_new(&core, b"old", b"1").await;
    core.sync().await.unwrap();
    let old = metadata_objects(store.as_ref()).await;
    write_new(&core, b"new", b"2").await;
    // The unmount lays an anchor at the position it leaves.
    core.final_sync().await.unwrap();
    let generation = core.generation().unwrap();
    drop(core);
    let newest = anchor::newest(store.as_ref(), &tv.volume.ring)
        .await
        .unwrap()
        .newest
        .unwrap();
    assert_eq!(newest.seen.state.generation, generation);

    // The old meta/ and journal/ put back: a host that never mounted the
    // volume refuses it, by the anchor.
    put_back(store.as_ref(), &old).await;
    let e = tv
        .try_mount_with(&dirs.path().join("fresh"), store.clone(), anchored)
        .await
        .err()
        .expect("a fresh host mounted a rolled-back store");
    assert!(
        matches!(&e, VolumeError::StoreOlder { witness: Witness::Anchor(key), .. } if *key == newest.key()),
        "{e}"
    );
    // fsck reports it, and deletes none of the newer state's blocks (they
    // look unreferenced to the rolled-back one).
    let data_before = store.list("data/").await.unwrap();
    let report = fsck_repair(&tv).await;
    assert!(
        report.problems.iter().any(|p| p.what.contains("write-once anchor")),
        "{:?}",
        report.problems
    );
    assert!(report.deletion_refused.is_some());
    assert_eq!(store.list("data/").await.unwrap(), data_before);

    // Accepted on purpose, the writer lays a lower anchor: fresh hosts
    // mount the accepted state from then on.
    let accepting = crate::volume::LoadOptions {
        accept_older_state: true,
        ..anchored
    };
    let core = tv
        .try_mount_with(&dirs.path().join("accepting"), store.clone(), accepting)
        .await
        .unwrap();
    core.sync().await.unwrap();
    let accepted = (core.generation().unwrap(), core.head().unwrap());
    drop(core);
    let lowered = anchor::newest(store.as_ref(), &tv.volume.ring)
        .await
        .unwrap()
        .newest
        .unwrap();
    assert_eq!(lowered.sequence, newest.sequence + 1);
    assert_eq!((lowered.seen.state.generation, lowered.seen.state.head), accepted);
    let core = tv
        .try_mount_with(&dirs.path().join("fresh"), store.clone(), anchored)
        .await
        .unwrap();
    let names: Vec<String> = walk(&core).into_iter().map(|(path, _)| path).collect();
    assert_eq!(names, ["old"]);
}

/// Mounts on `writer`, writes "old", keeps a copy of the metadata objects
/// (returned), writes "new", unmounts.
async fn written_twice(tv: &crate::test_support::TestVolume, writer: &std::path::Path) -> Vec<(String, bytes::Bytes)> {
    let store = tv.inner.clone();
    let core = tv.mount(writer, store.clone()).await;
    write_new(&core, b"old", b"1").await;
    core.final_sync().await.unwrap();
    let old = metadata_objects(store.as_ref()).await;
    write_new(&core, b"new", b"2").await;
    core.final_sync().await.unwrap();
    old
}

#[tokio::test]
async fn a_host_refuses_a_store_older_than_it_has_seen_unless_told_to_accept_it() {
    let tv = new_volume().await;
    let dirs = tempfile::tempdir().unwrap();
    let store = tv.inner.clone();
    let writer = dirs.path().join("writer");
    let old = written_twice(&tv, &writer).await;

    // The old meta/ and journal/ put back: the writer's cache refuses them.
    put_back(store.as_ref(), &old).await;
    let e = tv
        .try_mount(&writer, store.clone())
        .await
        .err()
        .expect("mounted a rolled-back store");
    assert!(matches!(e, VolumeError::StoreOlder { .. }), "{e}");
    assert!(e.to_string().contains("--accept-older-state"), "{e}");

    // Accepted on purpose: the older state is mounted, the newer database
    // set aside (not deleted), and from then on it is the state seen.
    let core = tv.try_mount_accepting(&writer, store.clone(), true).await.unwrap();
    let names: Vec<String> = walk(&core).into_iter().map(|(path, _)| path).collect();
    assert_eq!(names, ["old"]);
    let aside = std::fs::read_dir(&writer)
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().into_string().ok())
        .filter(|n| n.starts_with("metadata-superseded-"))
        .count();
    assert!(aside >= 1);
    core.final_sync().await.unwrap();
    drop(core);
    tv.try_mount(&writer, store.clone()).await.unwrap();
}

#[tokio::test]
async fn deleting_the_newest_fsynced_segment_is_refused_by_the_host_that_wrote_it() {
    let tv = new_volume().await;
    let dirs = tempfile::tempdir().unwrap();
    let store = tv.inner.clone();
    let writer = dirs.path().join("writer");
    let core = tv.mount(&writer, store.clone()).await;
    core.sync().await.unwrap();
    let before = metadata_objects(store.as_ref()).await;
    write_new(&core, b"fsynced", b"1").await;
    core.sync().await.unwrap();
    let generation = core.generation().unwrap();
    // kill -9: no unmount. Then the newest segment goes (and, as these
    // tests checkpoint at every sync, the checkpoint made with it).
    drop(core);
    put_back(store.as_ref(), &before).await;
    assert!(store.get(&segment::key(generation)).await.is_err());
    let e = tv
        .try_mount(&writer, store.clone())
        .await
        .err()
        .expect("mounted a truncated journal");
    assert!(
        matches!(e, VolumeError::StoreOlder { seen, store, .. } if seen == generation && store == generation - 1),
        "{e}"
    );
}

#[tokio::test]
async fn an_old_superblock_put_back_is_refused_where_a_newer_one_was_seen() {
    let tv = new_volume().await;
    let dirs = tempfile::tempdir().unwrap();
    let store = tv.inner.clone();
    let host = dirs.path().join("host");
    let old = store.get(crate::volume::SUPERBLOCK_KEY).await.unwrap();
    // `key add`, then a mount that sees the new revision.
    let mut sb = crate::superblock::Superblock::decode(&old).unwrap();
    let master = sb.unlock(&Unlock::KeyFile(tv.key.clone())).unwrap();
    let no_cost = crate::superblock::Argon2Params { m_kib: 0, t: 0, p: 0 };
    sb.add_slot(&master, &Unlock::KeyFile(SecretKey::random()), no_cost, 2)
        .unwrap();
    store
        .put(crate::volume::SUPERBLOCK_KEY, sb.encode().into())
        .await
        .unwrap();
    let unlocked = |store: Arc<dyn ObjectStore>| {
        let key = tv.key.clone();
        async move {
            crate::volume::unlock(store, "mem://test", &Unlock::KeyFile(key), &Default::default())
                .await
                .unwrap()
        }
    };
    let newer = crate::test_support::TestVolume {
        inner: tv.inner.clone(),
        volume: unlocked(store.clone()).await,
        key: tv.key.clone(),
    };
    drop(newer.mount(&host, store.clone()).await);
    // The superblock from before the key change, put back.
    store.put(crate::volume::SUPERBLOCK_KEY, old).await.unwrap();
    let older = crate::test_support::TestVolume {
        inner: tv.inner.clone(),
        volume: unlocked(store.clone()).await,
        key: tv.key.clone(),
    };
    let e = older
        .try_mount(&host, store.clone())
        .await
        .err()
        .expect("mounted with an old superblock");
    assert!(
        matches!(e, VolumeError::SuperblockOlder { seen: 2, store: 1, .. }),
        "{e}"
    );
}

#[tokio::test]
async fn a_fenced_writers_unuploaded_files_are_never_discarded_and_can_be_recovered() {
    let tv = new_volume().await;
    let dirs = tempfile::tempdir().unwrap();
    let store = tv.inner.clone();
    let (a, b) = (dirs.path().join("a"), dirs.path().join("b"));
    let writer = tv.mount(&a, store.clone()).await;
    writer.sync().await.unwrap();
    // Closed on A, not yet uploaded, when B takes the volume over.
    write_new(&writer, b"closed-on-a", b"only A has this").await;
    let taker = tv.mount(&b, store.clone()).await;
    write_new(&taker, b"from-b", b"1").await;
    taker.final_sync().await.unwrap();
    assert!(writer.sync().await.is_err());
    assert!(writer.is_fenced());
    drop((writer, taker));

    // A's cache directory is refused, naming the way out.
    let e = tv
        .try_mount(&a, store.clone())
        .await
        .err()
        .expect("discarded unuploaded changes");
    assert!(
        matches!(e, VolumeError::Unuploaded { changes, .. } if changes > 0),
        "{e}"
    );
    assert!(e.to_string().contains("s3vault recover"), "{e}");

    // `recover` copies out exactly what never reached the store.
    let meta = crate::volume::open_cache_database(&tv.volume, &a, "metadata.db").unwrap();
    let mut restorer = crate::restore::Restorer::of_state(
        store.clone(),
        tv.volume.ring.clone(),
        crate::test_support::BS,
        meta,
        Some(a.join("blocks")),
        |_| {},
    );
    let paths = restorer.unuploaded_paths().unwrap();
    assert_eq!(paths, ["/closed-on-a"]);
    let out = dirs.path().join("out");
    std::fs::create_dir(&out).unwrap();
    restorer.restore(&paths[0], &out).await.unwrap();
    restorer.finish().unwrap();
    assert_eq!(std::fs::read(out.join("closed-on-a")).unwrap(), b"only A has this");

    // Set aside on request: A mounts B's state, the old database kept.
    let options = crate::volume::LoadOptions {
        set_aside_unuploaded: true,
        ..Default::default()
    };
    let live = crate::volume::load_live(&tv.volume, &a, options).await.unwrap();
    let names: Vec<Vec<u8>> = live
        .meta
        .entries(crate::meta::ROOT_INO, 0, 100)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, [b"from-b".to_vec()]);
    assert!(std::fs::read_dir(&a).unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("metadata-unuploaded-")
    }));
}

/// A cache directory from before hosts kept `seen` (or one whose record was
/// removed) still knows what its database uploaded: an older store is
/// refused, and `--accept-older-state` takes it like any other.
#[tokio::test]
async fn a_cache_without_its_seen_record_learns_it_from_its_database() {
    let tv = new_volume().await;
    let dirs = tempfile::tempdir().unwrap();
    let store = tv.inner.clone();
    let writer = dirs.path().join("writer");
    let old = written_twice(&tv, &writer).await;
    std::fs::remove_file(writer.join("seen")).unwrap();
    put_back(store.as_ref(), &old).await;
    let e = tv
        .try_mount(&writer, store.clone())
        .await
        .err()
        .expect("mounted a rolled-back store");
    assert!(matches!(e, VolumeError::StoreOlder { .. }), "{e}");
    let core = tv.try_mount_accepting(&writer, store.clone(), true).await.unwrap();
    let names: Vec<String> = walk(&core).into_iter().map(|(path, _)| path).collect();
    assert_eq!(names, ["old"]);
}
