//! Test scaffolding shared by the core's tests: volumes in memory made by
//! the real `init`, mounted the way a real mount loads them.

use crate::cache::{CacheConfig, MinFree, PackCache};
use crate::crypto::SecretKey;
use crate::fs::{Caller, Core, CoreOptions};
use crate::meta::ROOT_INO;
use crate::store::{MemoryStore, ObjectStore, S3Options};
use crate::superblock::{Argon2Params, Unlock};
use crate::volume::{self, Volume};
use std::path::Path;
use std::sync::Arc;

pub const BS: u32 = 64 * 1024;

/// A volume in memory, as `s3vault init` leaves it.
pub struct TestVolume {
    pub inner: Arc<MemoryStore>,
    pub volume: Volume,
    /// The key file's key that unlocks it.
    pub key: SecretKey,
}

pub async fn new_volume() -> TestVolume {
    new_volume_in(MemoryStore::default()).await
}

/// `new_volume` in this store.
pub async fn new_volume_in(store: MemoryStore) -> TestVolume {
    let inner = Arc::new(store);
    let key = SecretKey::random();
    let unlock = Unlock::KeyFile(key.clone());
    let no_cost = Argon2Params { m_kib: 0, t: 0, p: 0 };
    volume::init(inner.clone(), "mem://test", BS, &unlock, no_cost, (0, 0), None)
        .await
        .unwrap();
    let volume = volume::unlock(inner.clone(), "mem://test", &unlock, &S3Options::default())
        .await
        .unwrap();
    TestVolume { inner, volume, key }
}

pub fn cache_config() -> CacheConfig {
    CacheConfig {
        limit: 1 << 30,
        min_free: MinFree::Bytes(0),
        max_dirty: 1 << 30,
        upload_concurrency: 2,
    }
}

impl TestVolume {
    /// A read-write mount on `cache_dir` through `store`, its metadata
    /// loaded as a real mount loads it.
    pub async fn try_mount(&self, cache_dir: &Path, store: Arc<dyn ObjectStore>) -> Result<Core, volume::VolumeError> {
        self.try_mount_accepting(cache_dir, store, false).await
    }

    /// `try_mount`, with `--accept-older-state` if `accept_older`.
    pub async fn try_mount_accepting(
        &self,
        cache_dir: &Path,
        store: Arc<dyn ObjectStore>,
        accept_older: bool,
    ) -> Result<Core, volume::VolumeError> {
        let options = volume::LoadOptions {
            accept_older_state: accept_older,
            ..Default::default()
        };
        self.try_mount_with(cache_dir, store, options).await
    }

    /// `try_mount` with these load options; with `anchored`, the mount
    /// checks and lays anchors as on a bucket with Object Lock.
    pub async fn try_mount_with(
        &self,
        cache_dir: &Path,
        store: Arc<dyn ObjectStore>,
        options: volume::LoadOptions,
    ) -> Result<Core, volume::VolumeError> {
        std::fs::create_dir_all(cache_dir).unwrap();
        let live = volume::load_live(&self.volume, cache_dir, options).await?;
        let (meta, unsynced) = (live.meta, live.unsynced);
        let cache = PackCache::open(&cache_dir.join("blocks"), cache_config(), store.clone()).unwrap();
        cache.spawn_uploader();
        let core = Core::new(
            Box::new(meta),
            store,
            cache,
            self.volume.ring.clone(),
            BS,
            CoreOptions::default(),
        );
        if unsynced || core.remove_orphans().unwrap() > 0 {
            core.mark_changed();
        }
        core.remember_in(live.seen);
        if options.anchored {
            let day = std::time::Duration::from_secs(86_400);
            core.anchor_over(live.anchor, day, self.volume.superblock.revision);
        }
        Ok(core)
    }

    pub async fn mount(&self, cache_dir: &Path, store: Arc<dyn ObjectStore>) -> Core {
        self.try_mount(cache_dir, store).await.unwrap()
    }
}

/// Writes `data` as a new file `name` in the root directory and closes it.
pub async fn write_new(core: &Core, name: &[u8], data: &[u8]) -> u64 {
    let root = Caller::root();
    let ino = core.create(&root, ROOT_INO, name, 0o644, libc::O_WRONLY).unwrap().0.ino;
    core.write(0, ino, 0, data).await.unwrap();
    core.release(0, ino).await.unwrap();
    ino
}

/// Every entry under the root of `core` with its path ("a/b"), parents
/// before children.
pub fn walk(core: &Core) -> Vec<(String, crate::meta::DirEntry)> {
    let mut found = Vec::new();
    let mut dirs = vec![(ROOT_INO, String::new())];
    while let Some((dir, prefix)) = dirs.pop() {
        for entry in core.readdir(dir, 0, 10_000).unwrap() {
            let name = String::from_utf8(entry.name.clone()).unwrap();
            if name == "." || name == ".." {
                continue;
            }
            let path = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            if entry.kind == crate::meta::FileKind::Dir {
                dirs.push((entry.ino, path.clone()));
            }
            found.push((path, entry));
        }
    }
    found
}

/// The whole content of file `ino`, read through an open handle.
pub async fn read_whole(core: &Core, ino: u64) -> crate::fs::FsResult<Vec<u8>> {
    let size = core.getattr(ino)?.size;
    core.open_handle(ino, libc::O_RDONLY, &Caller::root())?;
    let data = core.read(0, ino, 0, size as u32).await;
    core.release(0, ino).await?;
    data
}
