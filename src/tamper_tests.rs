//! A bucket that lies (design invariant 9): each test plays someone who can
//! write to the bucket, or a lifecycle rule that deleted objects, and checks
//! that s3vault refuses or reports it and loses nothing.

use crate::fsck;
use crate::journal::{checkpoint, snapshots};
use crate::store::ObjectStore;
use crate::test_support::{new_volume, write_new};
use crate::volume::VolumeError;
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
    let options = fsck::Options {
        verify: false,
        repair: true,
        min_age: Duration::ZERO,
    };
    let report = fsck::run(
        store.clone(),
        tv.volume.ring.clone(),
        crate::test_support::BS,
        &options,
        &|_, _| {},
    )
    .await
    .unwrap();
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
