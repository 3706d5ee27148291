//! The golden volumes: `tests/golden/v<format version>`, each made by
//! `scripts/make-golden.sh` with the real binary of its time on a real
//! mount, opened here from an empty cache as a fresh host would. Every file, directory, symlink, hard link, sparse
//! file and extended attribute of its manifest must read back the same,
//! in the live state and in its named snapshot, and its audit trail must
//! verify: volumes written by this format version keep mounting. (Format 3
//! replaced the data layout; the volumes of formats 1 and 2 went with it.)

use super::{Caller, Core, CoreOptions, FileKind};
use crate::crypto::SecretKey;
use crate::journal::{live, snapshots};
use crate::meta::{ChainHead, MetadataStore, SqliteStore};
use crate::store::{LocalStore, ObjectStore, S3Options};
use crate::superblock::Unlock;
use crate::test_support::{read_whole, walk};
use crate::volume::{self, Volume};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

fn golden(version: u16) -> String {
    format!("{}/tests/golden/v{version}", env!("CARGO_MANIFEST_DIR"))
}

/// A golden volume, copied: reading must not depend on (or touch) the
/// checked-in files.
async fn open_golden(version: u16, copy: &Path) -> Volume {
    let golden = golden(version);
    let status = std::process::Command::new("cp")
        .args(["-a", &format!("{golden}/store"), &copy.display().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let hex_key = std::fs::read_to_string(format!("{golden}/key")).unwrap();
    let key: [u8; 32] = hex::decode(hex_key.trim()).unwrap().try_into().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(copy.join("store")));
    let unlock = Unlock::KeyFile(SecretKey::from_bytes(&key));
    volume::unlock(store, "file://golden", &unlock, &S3Options::default())
        .await
        .unwrap()
}

fn read_only_core(volume: &Volume, meta: SqliteStore, cache_parent: &Path) -> Core {
    let dir = tempfile::tempdir_in(cache_parent).unwrap().keep();
    let config = crate::cache::CacheConfig {
        limit: 1 << 30,
        min_free: crate::cache::MinFree::Bytes(0),
        max_dirty: 1 << 30,
        upload_concurrency: 1,
    };
    let cache = crate::cache::PackCache::open(&dir, config, volume.store.clone()).unwrap();
    let options = CoreOptions {
        read_only: true,
        ..CoreOptions::default()
    };
    Core::new(
        Box::new(meta),
        volume.store.clone(),
        cache,
        volume.ring.clone(),
        volume.superblock.chunk_size,
        options,
    )
}

/// What the manifest says of every path, as the core shows it.
async fn manifest_of(core: &Core) -> BTreeMap<String, Value> {
    let root = Caller::root();
    let mut out = BTreeMap::new();
    for (path, entry) in walk(core) {
        let inode = core.presented(core.getattr(entry.ino).unwrap());
        let mut fields = json!({
            "mode": format!("0o{:o}", inode.perm & 0o7777),
            "nlink": inode.nlink,
        });
        match inode.kind {
            FileKind::Dir => fields["kind"] = json!("dir"),
            FileKind::Symlink => {
                fields["kind"] = json!("symlink");
                fields["target"] = json!(String::from_utf8(core.readlink(entry.ino).unwrap()).unwrap());
            }
            _ => {
                let data = read_whole(core, entry.ino).await.unwrap();
                fields["kind"] = json!("file");
                fields["size"] = json!(inode.size);
                fields["sha256"] = json!(hex::encode(Sha256::digest(&data)));
            }
        }
        let names = core.listxattr(&root, entry.ino).unwrap();
        let xattrs: serde_json::Map<String, Value> = names
            .split(|b| *b == 0)
            .filter(|n| !n.is_empty())
            .map(|n| {
                let value = core.getxattr(&root, entry.ino, n).unwrap();
                (
                    String::from_utf8(n.to_vec()).unwrap(),
                    json!(String::from_utf8(value).unwrap()),
                )
            })
            .collect();
        if !xattrs.is_empty() {
            fields["xattrs"] = Value::Object(xattrs);
        }
        out.insert(path, fields);
    }
    out
}

fn expected(version: u16, part: &str) -> BTreeMap<String, Value> {
    let path = format!("{}/manifest.json", golden(version));
    let manifest: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    manifest[part].as_object().unwrap().clone().into_iter().collect()
}

#[tokio::test]
async fn the_format_3_golden_volume_mounts_with_every_file_intact() {
    let head = mounts_with_every_file_intact(3).await;
    assert!(head.is_some(), "the journal is chained");
}

#[tokio::test]
async fn the_format_3_golden_volumes_audit_trail_verifies() {
    audit_trail_verifies(3).await;
}

async fn mounts_with_every_file_intact(version: u16) -> Option<ChainHead> {
    let tmp = tempfile::tempdir().unwrap();
    let volume = open_golden(version, tmp.path()).await;
    assert_eq!(volume.superblock.format, version);

    let loaded = live::load_state(volume.store.as_ref(), &volume.ring, || {
        Ok::<_, crate::journal::StateError>(SqliteStore::in_memory()?)
    })
    .await
    .unwrap()
    .expect("the golden volume has a checkpoint");
    let head = loaded.meta.head().unwrap();
    let live_core = read_only_core(&volume, loaded.meta, tmp.path());
    let live = manifest_of(&live_core).await;
    assert_eq!(live, expected(version, "live"));
    assert!(
        live.values()
            .any(|f| f["nlink"] == json!(2) && f["kind"] == json!("file")),
        "a hard link"
    );

    let mut at_snapshot = SqliteStore::in_memory().unwrap();
    snapshots::load(volume.store.as_ref(), &volume.ring, "golden")
        .await
        .unwrap()
        .import_into(&mut at_snapshot)
        .unwrap();
    let snapshot = manifest_of(&read_only_core(&volume, at_snapshot, tmp.path())).await;
    assert_eq!(snapshot, expected(version, "snapshot"));
    assert_ne!(snapshot, live, "the volume changed after its snapshot");
    head
}

async fn audit_trail_verifies(version: u16) {
    let tmp = tempfile::tempdir().unwrap();
    let volume = open_golden(version, tmp.path()).await;
    let segments = crate::audit::read_segments(volume.store.clone(), volume.ring.clone())
        .await
        .unwrap();
    let verified = crate::audit::verify(&volume.ring, &segments);
    assert!(verified.problems.is_empty(), "{:?}", verified.problems);
    assert!(verified.records >= 10 && verified.chains >= 4, "{verified:?}");
}
