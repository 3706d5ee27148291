//! Core tests without a kernel: a reference model (proptest, shrinking),
//! durability through checkpoints and the journal, integrity of stored
//! blocks, sparse files and unlinked files.

use super::*;
use crate::crypto::SecretKey;
use crate::journal::{checkpoint, segment};
use crate::meta::SqliteStore;
use crate::store::{FaultyStore, MemoryStore};
use crate::test_support::read_whole as read_all;
use proptest::prelude::*;
use std::collections::BTreeMap;

fn root() -> Caller {
    Caller::root()
}

const BS: u32 = 64 * 1024;

struct Fixture {
    store: Arc<MemoryStore>,
    ring: Arc<Keyring>,
    /// Each core gets its own cache directory in here: a fresh host.
    caches: tempfile::TempDir,
}

/// A block cache in a new directory under `parent`, uploading to `store`.
fn new_cache(parent: &std::path::Path, store: Arc<dyn ObjectStore>) -> Arc<PackCache> {
    let cache = idle_cache(parent, store);
    cache.spawn_uploader();
    cache
}

/// `new_cache` without its uploader running yet.
fn idle_cache(parent: &std::path::Path, store: Arc<dyn ObjectStore>) -> Arc<PackCache> {
    let dir = tempfile::tempdir_in(parent).unwrap().keep();
    let config = crate::cache::CacheConfig {
        limit: 1 << 30,
        min_free: crate::cache::MinFree::Bytes(0),
        max_dirty: 1 << 30,
        upload_concurrency: 4,
    };
    PackCache::open(&dir, config, store).unwrap()
}

impl Fixture {
    fn new() -> Fixture {
        let ring = Arc::new(Keyring::new(&SecretKey::random(), crate::crypto::random_bytes()));
        Fixture {
            store: Arc::new(MemoryStore::default()),
            ring,
            caches: tempfile::tempdir().unwrap(),
        }
    }

    /// Metadata holding just an empty root directory.
    fn root_meta(&self) -> SqliteStore {
        let mut meta = SqliteStore::in_memory().unwrap();
        meta.put_inode(&Inode::root(0, 0, 0)).unwrap();
        meta
    }

    fn core_with(&self, meta: SqliteStore) -> Core {
        self.core_with_options(meta, CoreOptions::default())
    }

    /// A core on `meta` with its own cache directory.
    fn core_with_options(&self, meta: SqliteStore, options: CoreOptions) -> Core {
        Core::new(
            Box::new(meta),
            self.store.clone(),
            new_cache(self.caches.path(), self.store.clone()),
            self.ring.clone(),
            BS,
            options,
        )
    }

    fn core(&self) -> Core {
        self.core_with(self.root_meta())
    }

    /// A core on a fresh host: metadata rebuilt from the live state in the
    /// store (newest checkpoint and the journal after it).
    async fn remount(&self) -> Core {
        self.core_with(self.load().await)
    }

    /// The live state in the store.
    async fn load(&self) -> SqliteStore {
        crate::journal::live::load_state(self.store.as_ref(), &self.ring, || {
            Ok::<_, crate::journal::StateError>(SqliteStore::in_memory()?)
        })
        .await
        .unwrap()
        .unwrap()
        .meta
    }

    /// A core whose syncs upload checkpoints only when forced (at
    /// unmount): the rest go to the journal.
    fn journaling_core(&self) -> Core {
        let options = CoreOptions {
            checkpoint_interval: std::time::Duration::from_secs(3600),
            ..CoreOptions::default()
        };
        self.core_with_options(self.root_meta(), options)
    }

    async fn data_objects(&self) -> Vec<String> {
        self.store.list("data/").await.unwrap()
    }
}

async fn write_file(core: &Core, name: &[u8], data: &[u8]) -> u64 {
    let (inode, _) = core.create(&root(), ROOT_INO, name, 0o644, libc::O_WRONLY).unwrap();
    core.write(0, inode.ino, 0, data).await.unwrap();
    core.release(0, inode.ino).await.unwrap();
    inode.ino
}

/// One step of the reference-model test.
#[derive(Clone, Debug)]
enum ModelOp {
    Write { file: u8, offset: u32, len: u32, fill: u8 },
    Truncate { file: u8, size: u32 },
    Unlink { file: u8 },
    Rename { from: u8, to: u8 },
    Sync,
    Read { file: u8 },
}

fn model_op() -> impl Strategy<Value = ModelOp> {
    let file = 0..6u8;
    prop_oneof![
        4 => (file.clone(), 0..3 * BS, 0..2 * BS, any::<u8>())
            .prop_map(|(file, offset, len, fill)| ModelOp::Write { file, offset, len, fill }),
        1 => (file.clone(), 0..4 * BS).prop_map(|(file, size)| ModelOp::Truncate { file, size }),
        1 => file.clone().prop_map(|file| ModelOp::Unlink { file }),
        1 => (file.clone(), file.clone()).prop_map(|(from, to)| ModelOp::Rename { from, to }),
        1 => Just(ModelOp::Sync),
        2 => file.prop_map(|file| ModelOp::Read { file }),
    ]
}

fn file_name(file: u8) -> Vec<u8> {
    format!("f{file}").into_bytes()
}

/// Applies `ops` to a core and to a map of names to contents, comparing
/// reads on the way; then a fresh host must see the model, and the store
/// must hold exactly the blocks it references.
async fn core_matches_model(ops: Vec<ModelOp>) -> Result<(), TestCaseError> {
    let fx = Fixture::new();
    let core = fx.core();
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut inos: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            ModelOp::Write {
                file,
                offset,
                len,
                fill,
            } => {
                let name = file_name(file);
                let ino = match inos.get(&name) {
                    Some(ino) => {
                        core.open_handle(*ino, libc::O_RDWR, &root()).unwrap();
                        *ino
                    }
                    None => {
                        core.create(&root(), ROOT_INO, &name, 0o644, libc::O_WRONLY)
                            .unwrap()
                            .0
                            .ino
                    }
                };
                let (offset, len) = (offset as usize, len as usize);
                let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(7) ^ fill).collect();
                core.write(0, ino, offset as u64, &data).await.unwrap();
                let content = model.entry(name.clone()).or_default();
                if content.len() < offset + len {
                    content.resize(offset + len, 0);
                }
                content[offset..offset + len].copy_from_slice(&data);
                inos.insert(name, ino);
                core.release(0, ino).await.unwrap();
            }
            ModelOp::Truncate { file, size } => {
                let name = file_name(file);
                if let Some(ino) = inos.get(&name) {
                    let attr = SetAttr {
                        size: Some(u64::from(size)),
                        ..SetAttr::default()
                    };
                    core.setattr(&root(), *ino, attr, false).await.unwrap();
                    model.get_mut(&name).unwrap().resize(size as usize, 0);
                }
            }
            ModelOp::Unlink { file } => {
                let name = file_name(file);
                if inos.remove(&name).is_some() {
                    core.unlink(&root(), ROOT_INO, &name).unwrap();
                    model.remove(&name);
                } else {
                    prop_assert_eq!(core.unlink(&root(), ROOT_INO, &name), Err(FsError::ENOENT));
                }
            }
            ModelOp::Rename { from, to } => {
                let (from, to) = (file_name(from), file_name(to));
                if let Some(ino) = inos.remove(&from) {
                    core.rename(&root(), ROOT_INO, &from, ROOT_INO, &to, 0).unwrap();
                    let content = model.remove(&from).unwrap();
                    inos.insert(to.clone(), ino);
                    model.insert(to, content);
                }
            }
            ModelOp::Sync => core.sync().await.unwrap(),
            ModelOp::Read { file } => {
                let name = file_name(file);
                if let Some(ino) = inos.get(&name) {
                    let got = read_all(&core, *ino).await.unwrap();
                    prop_assert!(got == model[&name], "step {}: content of {:?} differs", step, name);
                }
            }
        }
    }
    core.sync().await.unwrap();
    let fresh = fx.remount().await;
    for (name, content) in &model {
        let ino = fresh.lookup(&root(), ROOT_INO, name).unwrap().ino;
        prop_assert!(
            read_all(&fresh, ino).await.unwrap() == *content,
            "{:?} differs after remount",
            name
        );
    }
    prop_assert_eq!(fresh.readdir(ROOT_INO, 0, 100).unwrap().len(), model.len());
    // Each non-zero chunk of every remaining file is stored, and the store
    // keeps exactly the packs they live in.
    let mut packs = std::collections::BTreeSet::new();
    let mut stored = 0;
    for name in model.keys() {
        let ino = fresh.lookup(&root(), ROOT_INO, name).unwrap().ino;
        for (_, chunk) in fresh.meta().chunks(ino, 0, u64::MAX).unwrap() {
            packs.insert(crate::cache::data_key(&chunk.pack));
            stored += 1;
        }
    }
    let live: usize = model
        .values()
        .map(|c| c.chunks(BS as usize).filter(|b| b.iter().any(|x| *x != 0)).count())
        .sum();
    prop_assert_eq!(stored, live, "zero chunks are holes, the others stored");
    prop_assert_eq!(
        fx.data_objects()
            .await
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>(),
        packs,
        "unreferenced packs were not reclaimed"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The core against a reference model: random writes across blocks,
    /// truncates, unlinks, renames over existing files, syncs and reads.
    #[test]
    fn proptest_random_operations_match_a_model(ops in proptest::collection::vec(model_op(), 1..60)) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(core_matches_model(ops))?;
    }
}

#[tokio::test]
async fn tampered_packs_fail_with_eio_and_other_files_still_read() {
    let fx = Fixture::new();
    let core = fx.core();
    let victim = write_file(&core, b"victim", &[1u8; 100]).await;
    core.sync().await.unwrap();
    let before = fx.data_objects().await;
    let other = write_file(&core, b"other", &[2u8; 100]).await;
    core.sync().await.unwrap();
    let victim_key = before[0].clone();
    let other_key = fx.data_objects().await.into_iter().find(|k| *k != victim_key).unwrap();
    let pristine = fx.store.get(&victim_key).await.unwrap();
    let other_bytes = fx.store.get(&other_key).await.unwrap();

    let mut flipped = pristine.to_vec();
    flipped[40] ^= 1;
    // Cut inside the chunk (the rest of the pack is padding).
    let truncated = pristine.slice(..100);
    for bad in [bytes::Bytes::from(flipped), truncated, other_bytes.clone()] {
        fx.store.overwrite(&victim_key, bad);
        let fresh = fx.remount().await;
        assert_eq!(read_all(&fresh, victim).await, Err(FsError::EIO));
        assert_eq!(read_all(&fresh, other).await.unwrap(), vec![2u8; 100]);
    }
    fx.store.overwrite(&victim_key, pristine);
    assert_eq!(read_all(&fx.remount().await, victim).await.unwrap(), vec![1u8; 100]);
}

/// For each file (filled with 1, 2, 3, ... in turn): whether it reads back
/// intact, or the error.
async fn reads_intact(core: &Core, inos: &[u64]) -> Vec<Result<bool, FsError>> {
    let mut out = Vec::new();
    for (ino, fill) in inos.iter().zip(1u8..) {
        out.push(read_all(core, *ino).await.map(|d| d == vec![fill; 100]));
    }
    out
}

#[tokio::test]
async fn damage_inside_a_shared_pack_fails_exactly_the_files_it_touches() {
    let fx = Fixture::new();
    let core = fx.core();
    // Three files of the same length, back to back in one pack.
    let inos = [
        write_file(&core, b"first", &[1u8; 100]).await,
        write_file(&core, b"second", &[2u8; 100]).await,
        write_file(&core, b"third", &[3u8; 100]).await,
    ];
    core.sync().await.unwrap();
    let chunks: Vec<crate::meta::ChunkRef> = inos
        .iter()
        .map(|i| core.meta().chunks(*i, 0, 0).unwrap()[0].1)
        .collect();
    assert!(chunks.iter().all(|c| c.pack == chunks[0].pack), "one pack");
    let key = crate::cache::data_key(&chunks[0].pack);
    let pristine = fx.store.get(&key).await.unwrap();

    // Truncated after the first chunk: the other two files fail.
    fx.store.overwrite(&key, pristine.slice(..chunks[0].end() as usize));
    assert_eq!(
        reads_intact(&fx.remount().await, &inos).await,
        vec![Ok(true), Err(FsError::EIO), Err(FsError::EIO)]
    );
    // The second and third chunks swapped in place: both fail, the first reads.
    let (b, c) = (&chunks[1], &chunks[2]);
    let mut swapped = pristine.to_vec();
    let second = pristine[b.offset as usize..b.end() as usize].to_vec();
    let third = pristine[c.offset as usize..c.end() as usize].to_vec();
    swapped[b.offset as usize..b.end() as usize].copy_from_slice(&third);
    swapped[c.offset as usize..c.end() as usize].copy_from_slice(&second);
    fx.store.overwrite(&key, swapped.into());
    assert_eq!(
        reads_intact(&fx.remount().await, &inos).await,
        vec![Ok(true), Err(FsError::EIO), Err(FsError::EIO)]
    );
    fx.store.overwrite(&key, pristine);
    assert_eq!(reads_intact(&fx.remount().await, &inos).await, vec![Ok(true); 3]);
}

/// A 40-chunk file and a 100-byte one, synced into one pack: (doomed, kept).
async fn two_files_in_one_pack(core: &Core) -> (u64, u64) {
    let doomed = write_file(core, b"doomed", &vec![7u8; 40 * BS as usize]).await;
    let kept = write_file(core, b"kept", &[1u8; 100]).await;
    core.sync().await.unwrap();
    (doomed, kept)
}

#[tokio::test]
async fn compaction_moves_live_chunks_out_of_a_mostly_dead_pack() {
    let fx = Fixture::new();
    let core = fx.core();
    let (doomed, kept) = two_files_in_one_pack(&core).await;
    let old = core.meta().chunks(kept, 0, 0).unwrap()[0].1.pack;
    assert_eq!(core.meta().chunks(doomed, 0, 0).unwrap()[0].1.pack, old, "one pack");
    // Mostly dead, but not empty: only compaction can reclaim it.
    core.unlink(&root(), ROOT_INO, b"doomed").unwrap();
    assert_eq!(core.compact().await.unwrap(), 1);
    let status = core.status().packs.unwrap();
    assert_eq!(
        (status.packs, status.compaction_pending, status.compacted_packs),
        (1, 0, 1)
    );
    assert!(status.live_ratio.unwrap() < 0.01, "{status:?}");
    let new = core.meta().chunks(kept, 0, 0).unwrap()[0].1.pack;
    assert_ne!(new, old);
    assert_eq!(read_all(&core, kept).await.unwrap(), vec![1u8; 100]);
    // The next checkpoint reclaims the old pack (no grace here).
    core.sync().await.unwrap();
    assert_eq!(fx.data_objects().await, vec![crate::cache::data_key(&new)]);
    assert_eq!(read_all(&fx.remount().await, kept).await.unwrap(), vec![1u8; 100]);
    // Nothing left worth compacting.
    assert_eq!(core.compact().await.unwrap(), 0);
}

#[tokio::test]
async fn compaction_leaves_a_chunk_rewritten_meanwhile_alone() {
    let fx = Fixture::new();
    let core = fx.core();
    let (_, kept) = two_files_in_one_pack(&core).await;
    core.unlink(&root(), ROOT_INO, b"doomed").unwrap();
    // The file changes between the compactor's read and its commit: the
    // commit only moves chunks still where they were read from.
    let pack = core.meta().chunks(kept, 0, 0).unwrap()[0].1.pack;
    let chunks = core.meta().chunks_in(&pack).unwrap();
    core.open_handle(kept, libc::O_WRONLY, &root()).unwrap();
    core.write(0, kept, 0, &[2u8; 100]).await.unwrap();
    core.release(0, kept).await.unwrap();
    let items: Vec<super::data::ToStage<'_>> = chunks
        .iter()
        .map(|&(ino, index, _)| super::data::ToStage {
            ino,
            index,
            content: &[1u8; 100],
        })
        .collect();
    let (_, moved) = core
        .stage(&items, |m, staged| super::compact::remap_unchanged(m, &chunks, staged))
        .await
        .unwrap();
    assert!(moved.is_empty(), "{moved:?}");
    assert_eq!(
        read_all(&core, kept).await.unwrap(),
        vec![2u8; 100],
        "the newer write wins"
    );
}

#[tokio::test]
async fn a_wrong_object_never_enters_the_cache() {
    let fx = Fixture::new();
    let core = fx.core();
    let victim = write_file(&core, b"victim", &[1u8; 100]).await;
    core.sync().await.unwrap();
    let victim_key = fx.data_objects().await.remove(0);
    write_file(&core, b"other", &[2u8; 100]).await;
    core.sync().await.unwrap();
    let other_key = fx.data_objects().await.into_iter().find(|k| *k != victim_key).unwrap();
    let pristine = fx.store.get(&victim_key).await.unwrap();
    // Another object of the same length in its place: refused...
    fx.store.overwrite(&victim_key, fx.store.get(&other_key).await.unwrap());
    let fresh = fx.remount().await;
    assert_eq!(read_all(&fresh, victim).await, Err(FsError::EIO));
    // ...and not kept: once the store is put right, the same host reads it.
    fx.store.overwrite(&victim_key, pristine);
    assert_eq!(read_all(&fresh, victim).await.unwrap(), vec![1u8; 100]);
}

#[tokio::test]
async fn sparse_file_stores_only_written_chunks() {
    let fx = Fixture::new();
    let core = fx.core();
    let (inode, _) = core
        .create(&root(), ROOT_INO, b"sparse", 0o644, libc::O_WRONLY)
        .unwrap();
    let far = 5u64 << 30;
    core.setattr(
        &root(),
        inode.ino,
        SetAttr {
            size: Some(6 << 30),
            ..SetAttr::default()
        },
        false,
    )
    .await
    .unwrap();
    core.write(0, inode.ino, far, b"needle").await.unwrap();
    core.release(0, inode.ino).await.unwrap();
    core.sync().await.unwrap();
    assert_eq!(fx.data_objects().await.len(), 1);
    assert_eq!(core.getattr(inode.ino).unwrap().size, 6 << 30);
    core.open_handle(inode.ino, libc::O_RDONLY, &root()).unwrap();
    assert_eq!(core.read(0, inode.ino, far - 2, 10).await.unwrap(), b"\0\0needle\0\0");
    assert_eq!(core.read(0, inode.ino, 1 << 30, 4).await.unwrap(), vec![0; 4]);
    core.release(0, inode.ino).await.unwrap();
    // st_blocks counts what is stored: the 6 bytes, not the 6 GiB.
    assert_eq!(core.getattr(inode.ino).unwrap().allocated, 6);
    core.open_handle(inode.ino, libc::O_WRONLY, &root()).unwrap();
    core.write(0, inode.ino, 0, &vec![1u8; BS as usize]).await.unwrap();
    core.write(0, inode.ino, 0, b"rewritten").await.unwrap();
    core.release(0, inode.ino).await.unwrap();
    assert_eq!(core.getattr(inode.ino).unwrap().allocated, BS as u64 + 6);
    core.sync().await.unwrap();
    let fresh = fx.remount().await;
    assert_eq!(fresh.getattr(inode.ino).unwrap().allocated, BS as u64 + 6);
}

#[tokio::test]
async fn seek_data_and_hole_follow_the_chunk_map_and_the_buffer() {
    let fx = Fixture::new();
    let core = fx.core();
    let cs = BS as u64;
    let (inode, _) = core.create(&root(), ROOT_INO, b"sparse", 0o644, libc::O_RDWR).unwrap();
    let ino = inode.ino;
    core.write(0, ino, 2 * cs, &vec![1u8; 2 * BS as usize]).await.unwrap();
    core.write(0, ino, 9 * cs, b"tail").await.unwrap();
    core.release(0, ino).await.unwrap();
    core.open_handle(ino, libc::O_RDWR, &root()).unwrap();
    core.setattr(
        &root(),
        ino,
        SetAttr {
            size: Some(12 * cs),
            ..SetAttr::default()
        },
        false,
    )
    .await
    .unwrap();
    // Buffered, not committed: data all the same.
    core.write(0, ino, 6 * cs + 10, b"buffered").await.unwrap();
    let (data, hole) = (libc::SEEK_DATA, libc::SEEK_HOLE);
    let seek = |offset: u64, whence: i32| core.seek_data_or_hole(ino, offset, whence);
    assert_eq!(seek(0, data).await, Ok(2 * cs));
    assert_eq!(seek(0, hole).await, Ok(0));
    assert_eq!(seek(2 * cs + 5, data).await, Ok(2 * cs + 5));
    assert_eq!(seek(2 * cs + 5, hole).await, Ok(4 * cs));
    assert_eq!(seek(4 * cs, data).await, Ok(6 * cs));
    assert_eq!(seek(6 * cs, hole).await, Ok(7 * cs));
    assert_eq!(seek(7 * cs, data).await, Ok(9 * cs));
    assert_eq!(seek(9 * cs, hole).await, Ok(10 * cs));
    assert_eq!(seek(10 * cs, data).await, Err(FsError::ENXIO));
    assert_eq!(seek(10 * cs, hole).await, Ok(10 * cs));
    assert_eq!(seek(12 * cs, hole).await, Err(FsError::ENXIO));
    core.release(0, ino).await.unwrap();
    // Committed now: the same answers from the chunk map alone.
    assert_eq!(seek(4 * cs, data).await, Ok(6 * cs));
    assert_eq!(seek(6 * cs, hole).await, Ok(7 * cs));
}

#[tokio::test]
async fn truncate_then_extend_exposes_zeros_not_old_bytes() {
    let fx = Fixture::new();
    let core = fx.core();
    let ino = write_file(&core, b"t", &vec![7u8; BS as usize + 10]).await;
    core.setattr(
        &root(),
        ino,
        SetAttr {
            size: Some(5),
            ..SetAttr::default()
        },
        false,
    )
    .await
    .unwrap();
    core.setattr(
        &root(),
        ino,
        SetAttr {
            size: Some(BS as u64 + 10),
            ..SetAttr::default()
        },
        false,
    )
    .await
    .unwrap();
    let mut expected = vec![0u8; BS as usize + 10];
    expected[..5].fill(7);
    assert_eq!(read_all(&core, ino).await.unwrap(), expected);
    core.sync().await.unwrap();
    assert_eq!(read_all(&fx.remount().await, ino).await.unwrap(), expected);
}

#[tokio::test]
async fn unlinked_open_file_stays_readable_until_release() {
    let fx = Fixture::new();
    let core = fx.core();
    let ino = write_file(&core, b"doomed", b"still here").await;
    core.open_handle(ino, libc::O_RDONLY, &root()).unwrap();
    core.unlink(&root(), ROOT_INO, b"doomed").unwrap();
    assert_eq!(core.lookup(&root(), ROOT_INO, b"doomed"), Err(FsError::ENOENT));
    assert_eq!(core.read(0, ino, 0, 100).await.unwrap(), b"still here");
    core.release(0, ino).await.unwrap();
    assert_eq!(core.getattr(ino), Err(FsError::ENOENT));
    core.sync().await.unwrap();
    assert!(
        fx.data_objects().await.is_empty(),
        "the unlinked file's block was not reclaimed"
    );
}

#[tokio::test]
async fn directories_rename_atomically_and_refuse_cycles() {
    let fx = Fixture::new();
    let core = fx.core();
    let a = core.mkdir(&root(), ROOT_INO, b"a", 0o755).unwrap();
    let b = core.mkdir(&root(), a.ino, b"b", 0o755).unwrap();
    write_file(&core, b"x", b"1").await;
    assert_eq!(
        core.rename(&root(), ROOT_INO, b"a", b.ino, b"loop", 0),
        Err(FsError::EINVAL)
    );
    let c = core.mkdir(&root(), ROOT_INO, b"c", 0o755).unwrap();
    core.rename(&root(), a.ino, b"b", c.ino, b"b2", 0).unwrap();
    assert_eq!(core.getattr(a.ino).unwrap().nlink, 2);
    assert_eq!(core.getattr(c.ino).unwrap().nlink, 3);
    assert_eq!(core.parent_of(b.ino).unwrap(), c.ino);
    assert_eq!(
        core.rename(&root(), ROOT_INO, b"x", ROOT_INO, b"c", 0),
        Err(FsError::EISDIR)
    );
    assert_eq!(
        core.rename(&root(), ROOT_INO, b"a", ROOT_INO, b"c", 0),
        Err(FsError::ENOTEMPTY)
    );
    assert_eq!(
        core.rename(&root(), ROOT_INO, b"x", ROOT_INO, b"a", libc::RENAME_NOREPLACE),
        Err(FsError::EEXIST)
    );
    core.rename(&root(), ROOT_INO, b"x", ROOT_INO, b"a", libc::RENAME_EXCHANGE)
        .unwrap();
    assert_eq!(core.lookup(&root(), ROOT_INO, b"x").unwrap().ino, a.ino);
    assert_eq!(core.rmdir(&root(), ROOT_INO, b"c"), Err(FsError::ENOTEMPTY));
}

#[tokio::test]
async fn names_longer_than_255_bytes_are_refused() {
    let fx = Fixture::new();
    let core = fx.core();
    let ok = vec![0xffu8; 255];
    core.mkdir(&root(), ROOT_INO, &ok, 0o755).unwrap();
    assert_eq!(core.lookup(&root(), ROOT_INO, &ok).unwrap().kind, FileKind::Dir);
    assert_eq!(
        core.mkdir(&root(), ROOT_INO, &[b'a'; 256], 0o755),
        Err(FsError::ENAMETOOLONG)
    );
    assert_eq!(core.lookup(&root(), ROOT_INO, &[b'a'; 256]), Err(FsError::ENAMETOOLONG));
}

#[tokio::test]
async fn an_unreachable_store_delays_durability_but_loses_nothing() {
    let memory = Arc::new(MemoryStore::default());
    let store = Arc::new(FaultyStore::new(memory.clone()));
    let fx = Fixture {
        store: memory.clone(),
        ..Fixture::new()
    };
    let core = Core::new(
        Box::new(fx.root_meta()),
        store.clone(),
        new_cache(fx.caches.path(), store.clone()),
        fx.ring.clone(),
        BS,
        CoreOptions::default(),
    );
    store.fail_writes(true);
    // Writes and closes complete into the cache; reads see them.
    let ino = write_file(&core, b"f", b"precious").await;
    assert_eq!(read_all(&core, ino).await.unwrap(), b"precious");
    // Nothing can be made durable while the store is down, and a bounded
    // sync says so instead of pretending.
    let limit = std::time::Duration::from_millis(300);
    assert_eq!(core.sync_within(limit).await, Err(FsError::ETIMEDOUT));
    assert!(core.has_unsynced_changes());
    assert!(memory.list("").await.unwrap().is_empty());
    store.fail_writes(false);
    core.sync().await.unwrap();
    assert_eq!(read_all(&fx.remount().await, ino).await.unwrap(), b"precious");
}

#[tokio::test]
async fn rewrites_between_syncs_share_one_upload() {
    let fx = Fixture::new();
    let cache = idle_cache(fx.caches.path(), fx.store.clone());
    let core = Core::new(
        Box::new(fx.root_meta()),
        fx.store.clone(),
        cache.clone(),
        fx.ring.clone(),
        BS,
        CoreOptions::default(),
    );
    let (inode, _) = core.create(&root(), ROOT_INO, b"f", 0o644, libc::O_WRONLY).unwrap();
    core.release(0, inode.ino).await.unwrap();
    // Each close appends its chunk to the open pack; the sync cuts it.
    for round in 0..5u8 {
        core.open_handle(inode.ino, libc::O_WRONLY, &root()).unwrap();
        core.write(0, inode.ino, 0, &[round + 1; 100]).await.unwrap();
        core.release(0, inode.ino).await.unwrap();
    }
    assert_eq!(cache.status().pending_uploads, 0);
    cache.spawn_uploader();
    core.sync().await.unwrap();
    assert_eq!(fx.data_objects().await.len(), 1, "one upload for five rewrites");
    assert_eq!(read_all(&fx.remount().await, inode.ino).await.unwrap(), vec![5u8; 100]);
}

#[tokio::test]
async fn punched_hole_reads_zeros_and_frees_whole_chunks() {
    let fx = Fixture::new();
    let core = fx.core();
    let len = 3 * BS as usize;
    let ino = write_file(&core, b"p", &vec![9u8; len]).await;
    core.sync().await.unwrap();
    assert_eq!(fx.data_objects().await.len(), 1, "three chunks, one pack");
    core.open_handle(ino, libc::O_RDWR, &root()).unwrap();
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // From the middle of block 0 to the middle of block 2: block 1 is whole.
    core.fallocate(ino, BS as u64 / 2, 2 * BS as u64, punch).await.unwrap();
    core.release(0, ino).await.unwrap();
    let mut expected = vec![9u8; len];
    expected[BS as usize / 2..BS as usize / 2 + 2 * BS as usize].fill(0);
    assert_eq!(read_all(&core, ino).await.unwrap(), expected);
    assert_eq!(core.getattr(ino).unwrap().size, len as u64);
    core.sync().await.unwrap();
    let stored: Vec<u64> = core.meta().chunks(ino, 0, 2).unwrap().iter().map(|(i, _)| *i).collect();
    assert_eq!(stored, vec![0, 2], "the whole punched chunk stores nothing");
    assert_eq!(read_all(&fx.remount().await, ino).await.unwrap(), expected);
}

#[tokio::test]
async fn zero_range_zeroes_frees_whole_chunks_and_extends_unless_keep_size() {
    let fx = Fixture::new();
    let core = fx.core();
    let len = 3 * BS as usize;
    let ino = write_file(&core, b"z", &vec![7u8; len]).await;
    core.sync().await.unwrap();
    core.open_handle(ino, libc::O_RDWR, &root()).unwrap();
    let zero = libc::FALLOC_FL_ZERO_RANGE;
    let keep = libc::FALLOC_FL_KEEP_SIZE;
    // Chunk 1 whole and half of chunk 2, keeping the size.
    core.fallocate(ino, BS as u64, BS as u64 * 3 / 2, zero | keep)
        .await
        .unwrap();
    assert_eq!(core.getattr(ino).unwrap().size, len as u64);
    // Past the end without KEEP_SIZE: the file grows by zeros.
    core.fallocate(ino, len as u64 - 10, 100, zero).await.unwrap();
    core.release(0, ino).await.unwrap();
    let mut expected = vec![7u8; len];
    expected[BS as usize..BS as usize * 5 / 2].fill(0);
    expected[len - 10..].fill(0);
    expected.resize(len + 90, 0);
    assert_eq!(read_all(&core, ino).await.unwrap(), expected);
    core.sync().await.unwrap();
    let stored: Vec<u64> = core.meta().chunks(ino, 0, 3).unwrap().iter().map(|(i, _)| *i).collect();
    assert_eq!(stored, vec![0, 2], "the whole zeroed chunk stores nothing");
    assert_eq!(read_all(&fx.remount().await, ino).await.unwrap(), expected);
    // Other modes stay refused.
    core.open_handle(ino, libc::O_RDWR, &root()).unwrap();
    assert_eq!(
        core.fallocate(ino, 0, 1, libc::FALLOC_FL_COLLAPSE_RANGE).await,
        Err(FsError::EOPNOTSUPP)
    );
    core.release(0, ino).await.unwrap();
}

#[tokio::test]
async fn xattrs_round_trip_through_a_snapshot() {
    let fx = Fixture::new();
    let core = fx.core();
    let ino = write_file(&core, b"x", b"data").await;
    core.setxattr(&root(), ino, b"user.phi", b"value", 0).unwrap();
    assert_eq!(
        core.setxattr(&root(), ino, b"user.phi", b"v", libc::XATTR_CREATE),
        Err(FsError::EEXIST)
    );
    assert_eq!(
        core.setxattr(&root(), ino, b"user.new", b"v", libc::XATTR_REPLACE),
        Err(FsError::ENODATA)
    );
    assert_eq!(
        core.setxattr(&root(), ino, b"system.posix_acl_access", b"v", 0),
        Err(FsError::EOPNOTSUPP)
    );
    assert_eq!(core.getxattr(&root(), ino, b"user.none"), Err(FsError::ENODATA));
    core.setxattr(&root(), ino, b"user.other", b"", 0).unwrap();
    assert_eq!(core.listxattr(&root(), ino).unwrap(), b"user.other\0user.phi\0");
    core.sync().await.unwrap();
    let fresh = fx.remount().await;
    assert_eq!(fresh.getxattr(&root(), ino, b"user.phi").unwrap(), b"value");
    fresh.removexattr(&root(), ino, b"user.phi").unwrap();
    assert_eq!(fresh.removexattr(&root(), ino, b"user.phi"), Err(FsError::ENODATA));
}

#[tokio::test]
async fn operations_are_audited_with_current_paths_and_callers() {
    use crate::audit::{AuditLog, AuditMode, AuditSettings, Event, Filter};
    let fx = Fixture::new();
    let dir = tempfile::tempdir().unwrap();
    let settings = AuditSettings {
        mode: AuditMode::Required,
        flush_interval: std::time::Duration::from_secs(10),
        retain_for: None,
        syslog: crate::audit::Syslog::Off,
    };
    let log = AuditLog::open(dir.path(), fx.ring.clone(), fx.store.clone(), settings).unwrap();
    let core = fx.core().with_audit(log.clone());
    let alice = Caller::with_groups(1000, 1000, vec![]);
    let a = core.mkdir(&root(), ROOT_INO, b"a", 0o755).unwrap();
    let b = core.mkdir(&root(), a.ino, b"b", 0o755).unwrap();
    let (f, fh) = core.create(&root(), b.ino, b"f", 0o600, libc::O_WRONLY).unwrap();
    core.write(fh, f.ino, 0, b"secret").await.unwrap();
    core.release(fh, f.ino).await.unwrap();
    assert_eq!(core.open(&alice, f.ino, libc::O_RDONLY).await, Err(FsError::EACCES));
    core.rename(&root(), ROOT_INO, b"a", ROOT_INO, b"z", 0).unwrap();
    let fh = core.open(&root(), f.ino, libc::O_RDONLY).await.unwrap();
    assert_eq!(core.read(fh, f.ino, 0, 100).await.unwrap(), b"secret");
    core.release(fh, f.ino).await.unwrap();
    log.upload().await.unwrap();
    let found = crate::audit::read_segments(fx.store.clone(), fx.ring.clone())
        .await
        .unwrap();
    let records: Vec<_> = found
        .records(&Filter::default())
        .into_iter()
        .map(|l| l.record)
        .collect();
    let summary: Vec<(Event, &str, u32, &str, Option<u64>)> = records
        .iter()
        .map(|r| {
            let bytes = r.bytes_read.max(r.bytes_written);
            (
                r.event,
                r.path.as_deref().unwrap_or(""),
                r.uid,
                r.result.as_str(),
                bytes,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (Event::Mkdir, "/a", 0, "ok", None),
            (Event::Mkdir, "/a/b", 0, "ok", None),
            (Event::Create, "/a/b/f", 0, "ok", None),
            (Event::Close, "/a/b/f", 0, "ok", Some(6)),
            (Event::Open, "/a/b/f", 1000, "EACCES", None),
            (Event::Rename, "/a", 0, "ok", None),
            (Event::Open, "/z/b/f", 0, "ok", None),
            (Event::Close, "/z/b/f", 0, "ok", Some(6)),
        ]
    );
    assert_eq!(records[5].new_path.as_deref(), Some("/z"));
    assert_eq!(records[2].flags.as_deref(), Some("O_WRONLY|O_CREAT"));
}

#[tokio::test]
async fn sequential_readers_get_blocks_fetched_ahead_once_each() {
    let fx = Fixture::new();
    let core = fx.core();
    let data: Vec<u8> = (0..8 * BS as usize).map(|i| (i % 251) as u8).collect();
    let ino = write_file(&core, b"seq", &data).await;
    core.sync().await.unwrap();
    let fresh = fx.remount().await;
    fresh.open_handle(ino, libc::O_RDONLY, &root()).unwrap();
    let chunk = BS / 4;
    let mut got = Vec::new();
    for n in 0..4u64 {
        got.extend(fresh.read(0, ino, n * chunk as u64, chunk).await.unwrap());
    }
    // Reading the first block sequentially started fetching the next ones.
    let sealed_block = BS as u64 + 100;
    for _ in 0..500 {
        if fresh.cache.status().downloaded_bytes >= 4 * BS as u64 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        fresh.cache.status().downloaded_bytes >= 4 * BS as u64,
        "nothing was fetched ahead"
    );
    got.extend(fresh.read(0, ino, BS as u64, 7 * BS).await.unwrap());
    assert_eq!(got, data);
    fresh.release(0, ino).await.unwrap();
    // Every block came from the store exactly once.
    assert!(fresh.cache.status().downloaded_bytes <= 8 * sealed_block);
}

/// Small files written together share a pack; reading the first of them
/// on a fresh host fetches its neighbours in the same few GETs, not one GET
/// per file.
#[tokio::test]
async fn a_cold_read_of_a_small_file_fetches_the_files_packed_after_it() {
    let fx = Fixture::new();
    let core = fx.core();
    let mut files = Vec::new();
    for i in 0..20u8 {
        let content = vec![i + 1; 1000 + usize::from(i)];
        let ino = write_file(&core, format!("f{i}").as_bytes(), &content).await;
        files.push((ino, content));
    }
    core.sync().await.unwrap();
    assert_eq!(fx.data_objects().await.len(), 1, "one pack");
    let fresh = fx.remount().await;
    let (first, content) = &files[0];
    assert_eq!(&read_all(&fresh, *first).await.unwrap(), content);
    for _ in 0..500 {
        if fresh.cache.status().downloads >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let after_first = fresh.cache.status().downloads;
    assert_eq!(after_first, 2, "the file, then its neighbours");
    for (ino, content) in &files[1..] {
        assert_eq!(&read_all(&fresh, *ino).await.unwrap(), content);
    }
    assert_eq!(fresh.cache.status().downloads, after_first, "no GET per file");
}

#[tokio::test]
async fn a_second_writer_fences_the_first_at_the_next_generation() {
    let fx = Fixture::new();
    let first = fx.core();
    write_file(&first, b"before", b"shared").await;
    first.sync().await.unwrap();
    // Another host takes the volume over from the same snapshot and writes.
    let second = fx.remount().await;
    write_file(&second, b"theirs", b"new owner").await;
    second.sync().await.unwrap();
    // The first writer's next snapshot collides with theirs: it stops.
    let ino = write_file(&first, b"mine", b"local only").await;
    assert_eq!(first.sync().await, Err(FsError::EROFS));
    assert!(first.is_fenced() && first.status().fenced);
    assert_eq!(
        first.create(&root(), ROOT_INO, b"more", 0o644, libc::O_WRONLY).err(),
        Some(FsError::EROFS)
    );
    // What it wrote stays readable locally, and the store keeps the
    // second writer's state.
    assert_eq!(read_all(&first, ino).await.unwrap(), b"local only");
    let now = fx.remount().await;
    assert!(now.lookup(&root(), ROOT_INO, b"theirs").is_ok());
    assert_eq!(now.lookup(&root(), ROOT_INO, b"mine").err(), Some(FsError::ENOENT));
}

#[tokio::test]
async fn a_writer_left_two_generations_behind_is_fenced_too() {
    let fx = Fixture::new();
    let first = fx.core();
    write_file(&first, b"before", b"shared").await;
    first.sync().await.unwrap();
    // The other writer uploads twice, deleting the older snapshot, so the
    // name the first writer uses next is free again.
    let second = fx.remount().await;
    for name in [&b"one"[..], b"two"] {
        write_file(&second, name, b"theirs").await;
        second.sync().await.unwrap();
    }
    write_file(&first, b"mine", b"local only").await;
    assert_eq!(first.sync().await, Err(FsError::EROFS));
    assert!(first.is_fenced());
    let now = fx.remount().await;
    assert!(now.lookup(&root(), ROOT_INO, b"two").is_ok());
    assert_eq!(now.lookup(&root(), ROOT_INO, b"mine").err(), Some(FsError::ENOENT));
}

#[tokio::test]
async fn a_named_snapshot_keeps_its_blocks_until_it_is_deleted() {
    use crate::journal::snapshots::{self, SnapshotError};
    let fx = Fixture::new();
    let core = fx.core();
    let (store, ring) = (fx.store.as_ref(), fx.ring.as_ref());
    assert!(matches!(
        snapshots::create(store, ring, "empty").await,
        Err(SnapshotError::NoState)
    ));
    write_file(&core, b"report", b"version one").await;
    core.sync().await.unwrap();
    let info = snapshots::create(store, ring, "before").await.unwrap();
    assert_eq!((info.inodes, info.bytes), (2, 11));
    assert!(matches!(
        snapshots::create(store, ring, "before").await,
        Err(SnapshotError::Exists(_))
    ));
    // The live state drops the file; its block stays for the snapshot.
    core.unlink(&root(), ROOT_INO, b"report").unwrap();
    write_file(&core, b"other", b"kept by the live state").await;
    core.sync().await.unwrap();
    assert_eq!(fx.data_objects().await.len(), 2);
    // fsck checks the snapshot too and finds nothing to delete.
    let options = crate::fsck::Options {
        verify: true,
        repair: true,
        min_age: std::time::Duration::ZERO,
    };
    let report = crate::fsck::run(
        fx.store.clone(),
        fx.ring.clone(),
        BS,
        crate::fsck::Live::Journal,
        &options,
        &|_, _| {},
    )
    .await
    .unwrap();
    assert_eq!(
        (report.snapshots, report.verified, report.deleted, report.exit_code()),
        (1, 2, 0, 0)
    );
    let mut meta = SqliteStore::in_memory().unwrap();
    snapshots::load(store, ring, "before")
        .await
        .unwrap()
        .import_into(&mut meta)
        .unwrap();
    let old = fx.core_with(meta);
    let ino = old.lookup(&root(), ROOT_INO, b"report").unwrap().ino;
    assert_eq!(read_all(&old, ino).await.unwrap(), b"version one");
    assert_eq!(old.lookup(&root(), ROOT_INO, b"other").err(), Some(FsError::ENOENT));
    // Deleting the snapshot deletes what only it referenced.
    assert_eq!(snapshots::delete(store, ring, "before").await.unwrap(), 1);
    assert_eq!(fx.data_objects().await.len(), 1);
    assert!(matches!(
        snapshots::load(store, ring, "before").await,
        Err(SnapshotError::NotFound(_))
    ));
    let now = fx.remount().await;
    let ino = now.lookup(&root(), ROOT_INO, b"other").unwrap().ino;
    assert_eq!(read_all(&now, ino).await.unwrap(), b"kept by the live state");
}

/// A pack that grows between fsck's listing and its read (a writer of the
/// bucket appending, or a listing that lags) is still verified by the bytes
/// its chunks name, not refused for being larger than listed.
#[tokio::test]
async fn fsck_verifies_a_pack_that_grew_after_it_was_listed() {
    use crate::store::{Fault, Op, Rule};
    use std::time::Duration;
    let fx = Fixture::new();
    let core = fx.core();
    let ino = write_file(&core, b"kept", b"intact").await;
    core.sync().await.unwrap();
    let key = crate::cache::data_key(&core.meta().chunks(ino, 0, 0).unwrap()[0].1.pack);
    let faulty = Arc::new(FaultyStore::new(fx.store.clone()));
    faulty.inject(
        Rule::new(Fault::Stall(Duration::from_secs(2)))
            .on(&[Op::Get])
            .under("data/")
            .nth(1),
    );
    let options = crate::fsck::Options {
        verify: true,
        repair: false,
        min_age: Duration::ZERO,
    };
    let store: Arc<dyn ObjectStore> = faulty.clone();
    let ring = fx.ring.clone();
    let check = tokio::spawn(async move {
        crate::fsck::run(store, ring, BS, crate::fsck::Live::Journal, &options, &|_, _| {})
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut grown = fx.store.get(&key).await.unwrap().to_vec();
    grown.extend_from_slice(&[0u8; 1 << 20]);
    fx.store.overwrite(&key, grown.into());
    let report = check.await.unwrap();
    assert_eq!(
        (report.problems.len(), report.verified, report.exit_code()),
        (0, 1, 0),
        "{:?}",
        report.problems
    );
}

#[tokio::test]
async fn fsck_finds_missing_damaged_and_stray_objects_and_repairs_only_strays() {
    use crate::fsck::{self, Options};
    let fx = Fixture::new();
    let core = fx.core();
    // Two packs: one shared by two files, one of a file alone.
    write_file(&core, b"kept", b"intact").await;
    let damaged = write_file(&core, b"damaged", b"flipped").await;
    core.sync().await.unwrap();
    let lost = write_file(&core, b"lost", b"gone by hand").await;
    core.sync().await.unwrap();
    let store: Arc<dyn ObjectStore> = fx.store.clone();
    let run = |repair: bool, min_age: u64| {
        let (store, ring) = (store.clone(), fx.ring.clone());
        async move {
            let options = Options {
                verify: true,
                repair,
                min_age: std::time::Duration::from_secs(min_age),
            };
            fsck::run(store, ring, BS, fsck::Live::Journal, &options, &|_, _| {})
                .await
                .unwrap()
        }
    };
    let clean = run(false, 0).await;
    assert_eq!((clean.problems.len(), clean.verified, clean.exit_code()), (0, 3, 0));

    let chunk_of = |ino: u64| core.meta().chunks(ino, 0, 0).unwrap()[0].1;
    fx.store
        .delete(&crate::cache::data_key(&chunk_of(lost).pack))
        .await
        .unwrap();
    let flipped = chunk_of(damaged);
    let key = crate::cache::data_key(&flipped.pack);
    let mut bytes = fx.store.get(&key).await.unwrap().to_vec();
    bytes[flipped.offset as usize + 20] ^= 1;
    fx.store.overwrite(&key, bytes.into());
    fx.store.overwrite(
        &format!("data/{}", "ab".repeat(16)),
        bytes::Bytes::from_static(b"stray"),
    );
    fx.store
        .overwrite("data/not-an-id", bytes::Bytes::from_static(b"stray too"));
    // A segment the checkpoint superseded, left by a clean-up cut short.
    let superseded = segment::key(core.generation().unwrap() - 1);
    fx.store.overwrite(&superseded, bytes::Bytes::from_static(b"old"));

    // A just-written stray may be an upload in progress: left alone.
    let young = run(true, 3600).await;
    assert_eq!((young.orphans, young.recent, young.deleted), (0, 3, 0));
    let found = run(false, 0).await;
    let text: Vec<String> = found.problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(text.len(), 2, "{text:?}");
    assert!(
        text.iter()
            .any(|p| p.contains("/lost: chunk 0") && p.contains("missing from the store")),
        "{text:?}"
    );
    assert!(
        text.iter().any(|p| p.contains("/damaged: chunk 0 does not open")),
        "{text:?}"
    );
    assert_eq!((found.orphans, found.deleted, found.exit_code()), (3, 0, 4));
    // Repair deletes the strays and still reports the damaged files.
    let repaired = run(true, 0).await;
    assert_eq!(
        (repaired.deleted, repaired.problems.len(), repaired.exit_code()),
        (3, 2, 4)
    );
    assert_eq!(fx.data_objects().await.len(), 1);
    assert!(fx.store.get(&superseded).await.is_err());
    assert!(fx.store.get(&segment::key(core.generation().unwrap())).await.is_ok());
}

#[tokio::test]
async fn a_follower_reads_its_state_until_it_catches_up() {
    let fx = Fixture::new();
    let options = CoreOptions {
        reclaim_grace: std::time::Duration::from_secs(3600),
        ..CoreOptions::default()
    };
    let writer = fx.core_with_options(fx.root_meta(), options);
    let old = write_file(&writer, b"report", b"version one").await;
    writer.sync().await.unwrap();
    let follower = fx.remount().await;
    // The writer replaces the file and syncs twice: its old block is no
    // longer referenced, but stays for the grace period.
    writer.unlink(&root(), ROOT_INO, b"report").unwrap();
    write_file(&writer, b"report", b"version two").await;
    writer.sync().await.unwrap();
    write_file(&writer, b"other", b"x").await;
    writer.sync().await.unwrap();
    assert_eq!(read_all(&follower, old).await.unwrap(), b"version one");
    // Catching up switches to the writer's state.
    let newest = writer.generation().unwrap();
    follower.replace_metadata(Box::new(fx.load().await));
    assert_eq!(follower.generation().unwrap(), newest);
    let now = follower.lookup(&root(), ROOT_INO, b"report").unwrap().ino;
    assert_eq!(read_all(&follower, now).await.unwrap(), b"version two");
    assert!(follower.lookup(&root(), ROOT_INO, b"other").is_ok());
}

#[tokio::test]
async fn the_journal_replayed_on_the_starting_state_gives_the_same_state() {
    use crate::meta::ops::{apply, decode_ops};
    let fx = Fixture::new();
    let mut journaled = fx.root_meta();
    journaled.set_journaling(true);
    let core = fx.core_with(journaled);
    let me = root();
    let dir = core.mkdir(&me, ROOT_INO, b"dir", 0o755).unwrap().ino;
    let a = write_file(&core, b"a", &vec![7u8; 3 * BS as usize + 10]).await;
    let b = write_file(&core, b"b", b"bee").await;
    core.symlink(&me, dir, b"link-to-a", b"../a").unwrap();
    core.link(&me, b, dir, b"b-again").unwrap();
    core.setxattr(&me, a, b"user.kind", b"scan", 0).unwrap();
    core.setxattr(&me, b, b"user.gone", b"soon", 0).unwrap();
    core.removexattr(&me, b, b"user.gone").unwrap();
    core.rename(&me, ROOT_INO, b"a", dir, b"a-moved", 0).unwrap();
    core.open_handle(a, libc::O_RDWR, &me).unwrap();
    core.fallocate(
        a,
        BS as u64,
        BS as u64,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
    )
    .await
    .unwrap();
    let truncate = SetAttr {
        size: Some(BS as u64 + 1),
        ..SetAttr::default()
    };
    core.setattr(&me, a, truncate, false).await.unwrap();
    core.release(0, a).await.unwrap();
    core.unlink(&me, ROOT_INO, b"b").unwrap();
    let gone = core.mkdir(&me, dir, b"empty", 0o700).unwrap().ino;
    core.rmdir(&me, dir, b"empty").unwrap();
    assert!(core.getattr(gone).is_err());
    core.flush_all().await.unwrap();

    let export = |meta: &dyn MetadataStore| {
        let mut records = Vec::new();
        meta.export(&mut |r| records.push(format!("{r:?}"))).unwrap();
        records.sort();
        records
    };
    let mut replayed = fx.root_meta();
    let entries = core.meta().journal_after(0, usize::MAX).unwrap();
    assert!(entries.len() > 10);
    for (_, bytes) in entries {
        for op in decode_ops(&bytes).unwrap() {
            apply(&mut replayed, op).unwrap();
        }
    }
    assert_eq!(export(&replayed), export(core.meta().as_ref()));
}

/// The state as sorted debug lines, to compare two stores.
fn state_lines(meta: &dyn MetadataStore) -> Vec<String> {
    let mut records = Vec::new();
    meta.export(&mut |r| records.push(format!("{r:?}"))).unwrap();
    records.sort();
    records
}

#[tokio::test]
async fn a_state_is_the_checkpoint_and_its_chained_segments() {
    let fx = Fixture::new();
    let core = fx.journaling_core();
    write_file(&core, b"in-checkpoint", b"1").await;
    core.sync().await.unwrap();
    let checkpoint = core.generation().unwrap();
    core.mkdir(&root(), ROOT_INO, b"in-segment-1", 0o755).unwrap();
    core.sync().await.unwrap();
    write_file(&core, b"in-segment-2", b"22").await;
    core.rename(&root(), ROOT_INO, b"in-checkpoint", ROOT_INO, b"renamed-in-2", 0)
        .unwrap();
    core.sync().await.unwrap();
    assert_eq!(core.generation().unwrap(), checkpoint + 2);
    assert_eq!(checkpoint::generations(fx.store.as_ref()).await.unwrap(), [checkpoint]);
    let expected = state_lines(core.meta().as_ref());

    let loaded = load_live(&fx).await.unwrap().unwrap();
    assert_eq!((loaded.checkpoint, loaded.generation), (checkpoint, checkpoint + 2));
    assert_eq!(state_lines(&loaded.meta), expected);
    assert_eq!(loaded.meta.head().unwrap(), core.head().unwrap());
    // A follower at the checkpoint gets there by applying the segments.
    let mut at_checkpoint = SqliteStore::in_memory().unwrap();
    checkpoint::load(fx.store.as_ref(), &fx.ring, &mut at_checkpoint, checkpoint)
        .await
        .unwrap();
    let head = at_checkpoint.head().unwrap();
    assert!(head.is_some());
    let read_only = CoreOptions {
        read_only: true,
        ..CoreOptions::default()
    };
    let follower = fx.core_with_options(at_checkpoint, read_only);
    let fetched = segment::fetch_after(fx.store.as_ref(), &fx.ring, checkpoint, head)
        .await
        .unwrap();
    follower.follow(fetched).unwrap();
    assert_eq!(follower.generation().unwrap(), checkpoint + 2);
    assert_eq!(state_lines(follower.meta().as_ref()), expected);
}

async fn load_live(
    fx: &Fixture,
) -> Result<Option<crate::journal::live::Loaded<SqliteStore>>, crate::journal::StateError> {
    crate::journal::live::load_state(fx.store.as_ref(), &fx.ring, || {
        Ok::<_, crate::journal::StateError>(SqliteStore::in_memory()?)
    })
    .await
}

#[tokio::test]
async fn a_gap_in_the_journal_fails_the_load_instead_of_hiding_what_follows() {
    let fx = Fixture::new();
    let core = fx.journaling_core();
    core.sync().await.unwrap();
    let checkpoint = core.generation().unwrap();
    for name in [&b"one"[..], b"two", b"three"] {
        write_file(&core, name, b"fsynced").await;
        core.sync().await.unwrap();
    }
    assert_eq!(core.generation().unwrap(), checkpoint + 3);
    fx.store.delete(&segment::key(checkpoint + 2)).await.unwrap();
    match load_live(&fx).await {
        Err(crate::journal::StateError::Gap { missing, newest }) => {
            assert_eq!((missing, newest), (checkpoint + 2, checkpoint + 3));
        }
        other => panic!("expected a gap, got {:?}", other.map(|l| l.map(|l| l.generation))),
    }
    // A follower meets it too.
    let fetched = segment::fetch_after(fx.store.as_ref(), &fx.ring, checkpoint + 1, None).await;
    assert!(matches!(fetched, Err(crate::journal::StateError::Gap { .. })));
}

#[tokio::test]
async fn a_segment_of_another_history_is_refused() {
    let fx = Fixture::new();
    let core = fx.journaling_core();
    core.sync().await.unwrap();
    let checkpoint = core.generation().unwrap();
    write_file(&core, b"real", b"1").await;
    core.sync().await.unwrap();
    // A validly sealed segment that names a predecessor the store's
    // history never had (a piece of another history, or a replay).
    let mut op = Vec::new();
    crate::meta::ops::encode_op(&mut op, &crate::meta::ops::JournalOp::DeleteInode(ROOT_INO));
    let (stray, _) = segment::seal(&fx.ring, checkpoint + 2, Some(&[7; 32]), &op);
    fx.store.put_new(&segment::key(checkpoint + 2), stray).await.unwrap();
    match load_live(&fx).await {
        Err(crate::journal::StateError::Unchained(key)) => assert_eq!(key, segment::key(checkpoint + 2)),
        other => panic!(
            "expected a broken chain, got {:?}",
            other.map(|l| l.map(|l| l.generation))
        ),
    }
    // The writer does not take it for its own either.
    write_file(&core, b"later", b"2").await;
    assert!(core.sync().await.is_err());
    assert!(core.is_fenced());
}

/// Uploads `core`'s journal as segment `generation` behind its back, as a
/// sync whose answer was lost would have.
async fn upload_journal_as(fx: &Fixture, core: &Core, generation: u64) {
    let ops: Vec<u8> = core
        .meta()
        .journal_after(0, usize::MAX)
        .unwrap()
        .into_iter()
        .flat_map(|(_, op)| op)
        .collect();
    let head = core.head().unwrap();
    let (sealed, _) = segment::seal(&fx.ring, generation, head.as_ref(), &ops);
    fx.store.put_new(&segment::key(generation), sealed).await.unwrap();
}

#[tokio::test]
async fn a_segment_whose_answer_was_lost_is_taken_as_done() {
    let fx = Fixture::new();
    let core = fx.journaling_core();
    core.sync().await.unwrap();
    let start = core.generation().unwrap();
    write_file(&core, b"a", b"landed").await;
    core.flush_all().await.unwrap();
    upload_journal_as(&fx, &core, start + 1).await;
    // More changes after the lost answer go into the next segment.
    core.mkdir(&root(), ROOT_INO, b"later", 0o755).unwrap();
    core.sync().await.unwrap();
    assert!(!core.is_fenced());
    assert_eq!(core.generation().unwrap(), start + 2);
    assert_eq!(state_lines(&fx.load().await), state_lines(core.meta().as_ref()));
}

#[tokio::test]
async fn another_writers_segment_fences_this_one() {
    let fx = Fixture::new();
    let core = fx.journaling_core();
    core.sync().await.unwrap();
    let start = core.generation().unwrap();
    let other = fx.remount().await;
    other.mkdir(&root(), ROOT_INO, b"theirs", 0o755).unwrap();
    upload_journal_as(&fx, &other, start + 1).await;
    core.mkdir(&root(), ROOT_INO, b"ours", 0o755).unwrap();
    assert_eq!(core.sync().await, Err(FsError::EROFS));
    assert!(core.is_fenced());
    let live = fx.remount().await;
    assert!(live.lookup(&root(), ROOT_INO, b"theirs").is_ok());
    assert!(live.lookup(&root(), ROOT_INO, b"ours").is_err());
}

#[tokio::test]
async fn unused_blocks_and_segments_go_only_after_a_checkpoint() {
    let fx = Fixture::new();
    let core = fx.journaling_core();
    write_file(&core, b"f", b"first version").await;
    core.sync().await.unwrap();
    let first = fx.data_objects().await;
    assert_eq!(first.len(), 1);
    core.unlink(&root(), ROOT_INO, b"f").unwrap();
    write_file(&core, b"f", b"second version").await;
    core.sync().await.unwrap();
    core.mkdir(&root(), ROOT_INO, b"d", 0o755).unwrap();
    core.sync().await.unwrap();
    // The checkpoint still references the first block: it stays.
    assert_eq!(fx.data_objects().await.len(), 2);
    assert_eq!(segment::numbers(fx.store.as_ref()).await.unwrap().len(), 3);
    core.final_sync().await.unwrap();
    let generation = core.generation().unwrap();
    assert_eq!(checkpoint::generations(fx.store.as_ref()).await.unwrap(), [generation]);
    assert_eq!(segment::numbers(fx.store.as_ref()).await.unwrap(), [generation]);
    let left = fx.data_objects().await;
    assert_eq!(left.len(), 1);
    assert!(!left.contains(&first[0]));
    let fresh = fx.remount().await;
    let ino = fresh.lookup(&root(), ROOT_INO, b"f").unwrap().ino;
    assert_eq!(read_all(&fresh, ino).await.unwrap(), b"second version");
}

#[tokio::test]
async fn deleting_a_snapshot_keeps_blocks_only_the_journal_references() {
    let fx = Fixture::new();
    let core = fx.journaling_core();
    write_file(&core, b"old", b"in the checkpoint").await;
    core.sync().await.unwrap();
    write_file(&core, b"new", b"only in a segment").await;
    core.sync().await.unwrap();
    crate::journal::snapshots::create(fx.store.as_ref(), &fx.ring, "s")
        .await
        .unwrap();
    crate::journal::snapshots::delete(fx.store.as_ref(), &fx.ring, "s")
        .await
        .unwrap();
    assert_eq!(fx.data_objects().await.len(), 2);
    let fresh = fx.remount().await;
    let ino = fresh.lookup(&root(), ROOT_INO, b"new").unwrap().ino;
    assert_eq!(read_all(&fresh, ino).await.unwrap(), b"only in a segment");
}

#[tokio::test]
async fn a_long_journal_goes_up_in_bounded_segments() {
    let fx = Fixture::new();
    let core = fx.journaling_core();
    core.sync().await.unwrap();
    let start = core.generation().unwrap();
    // Each mkdir journals four operations (the next inode number, the new
    // inode, its entry, the parent's times): more than one segment's worth.
    let dirs = crate::journal::SEGMENT_OPS / 4 + 100;
    for i in 0..dirs {
        core.mkdir(&root(), ROOT_INO, format!("d{i}").as_bytes(), 0o755)
            .unwrap();
    }
    assert!(core.meta().journal_after(0, usize::MAX).unwrap().len() > crate::journal::SEGMENT_OPS);
    core.sync().await.unwrap();
    assert_eq!(core.generation().unwrap(), start + 2);
    assert!(core.meta().journal_after(0, 1).unwrap().is_empty());
    assert_eq!(state_lines(&fx.load().await), state_lines(core.meta().as_ref()));
}

/// The kernel opens a FIFO without asking the filesystem: the lookup
/// before it is refused to anyone the mode would deny an open mode to, and
/// each lookup of a special file is in the audit log.
#[tokio::test]
async fn special_files_are_found_only_by_whom_their_mode_allows_and_every_lookup_is_audited() {
    use crate::audit::{AuditLog, AuditSettings, Event, Filter};
    let fx = Fixture::new();
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), fx.ring.clone(), fx.store.clone(), AuditSettings::default()).unwrap();
    let core = fx.core().with_audit(log.clone());
    let stranger = Caller::with_groups(2000, 2000, vec![]);
    let owner = Caller::with_groups(1000, 1000, vec![]);
    let shared = core.mkdir(&root(), ROOT_INO, b"shared", 0o1777).unwrap();
    for (name, mode) in [(&b"private"[..], 0o600), (b"readable", 0o644), (b"open", 0o666)] {
        let fifo = core.mknod(&root(), shared.ino, name, libc::S_IFIFO | mode, 0).unwrap();
        let give = SetAttr {
            uid: Some(1000),
            gid: Some(1000),
            ..SetAttr::default()
        };
        core.setattr(&root(), fifo.ino, give, false).await.unwrap();
    }
    assert_eq!(
        core.lookup(&stranger, shared.ino, b"private").unwrap_err(),
        FsError::EACCES
    );
    // Read permission alone would let an O_RDWR open through: refused too.
    assert_eq!(
        core.lookup(&stranger, shared.ino, b"readable").unwrap_err(),
        FsError::EACCES
    );
    assert!(core.lookup(&stranger, shared.ino, b"open").is_ok());
    assert!(core.lookup(&owner, shared.ino, b"private").is_ok());
    assert!(core.lookup(&root(), shared.ino, b"private").is_ok());
    log.upload().await.unwrap();
    let found = crate::audit::read_segments(fx.store.clone(), fx.ring.clone())
        .await
        .unwrap();
    let opens: Vec<(String, u32, String)> = found
        .records(&Filter::default())
        .into_iter()
        .filter(|l| l.record.event == Event::Open)
        .map(|l| (l.record.path.unwrap_or_default(), l.record.uid, l.record.result))
        .collect();
    let expected = [
        ("/shared/private", 2000, "EACCES"),
        ("/shared/readable", 2000, "EACCES"),
        ("/shared/open", 2000, "ok"),
        ("/shared/private", 1000, "ok"),
        ("/shared/private", 0, "ok"),
    ];
    let expected: Vec<(String, u32, String)> = expected
        .iter()
        .map(|(p, u, r)| (p.to_string(), *u, r.to_string()))
        .collect();
    assert_eq!(opens, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn files_unlinked_while_open_at_a_crash_are_deleted_at_the_next_mount_without_a_hang() {
    let fx = Fixture::new();
    let core = Arc::new(fx.core());
    let ino = write_file(&core, b"doomed", &[3u8; 100]).await;
    let _fh = core.open(&root(), ino, libc::O_RDONLY).await.unwrap();
    core.unlink(&root(), ROOT_INO, b"doomed").unwrap();
    // What the next mount finds after a crash with the file open. On a
    // thread of its own, so that a deadlock fails the test, not hangs it.
    let (done, outcome) = std::sync::mpsc::channel();
    let host = core.clone();
    std::thread::spawn(move || done.send(host.remove_orphans()));
    let removed = outcome
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("remove_orphans hung");
    assert_eq!(removed, Ok(1));
    assert_eq!(core.getattr(ino), Err(FsError::ENOENT));
}
