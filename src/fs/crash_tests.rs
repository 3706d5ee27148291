//! Crash points: a workload runs on a core over a fault-injecting store that
//! "kills the process" at its Nth call, for every N the workload makes —
//! during segment uploads, checkpoints, reclaim, lease renewal and
//! snapshot creation. After each crash the volume is reopened twice and
//! compared with a model of the workload:
//!
//! - as a fresh host (the store alone): the state is one the workload asked
//!   to make durable, no older than the last sync that returned success,
//!   and every file in it reads back whole (invariants 3 and 4);
//! - as the same host restarting on its surviving cache directory: every
//!   operation that returned is there, and after one sync to a healthy
//!   store a fresh host sees it all too (invariant 4, close(2)).

use super::{Caller, Core, FsResult};
use crate::journal::{lease, snapshots};
use crate::meta::{FileKind, ROOT_INO};
use crate::store::{Fault, FaultyStore, ObjectStore, Rule};
use crate::test_support::{BS, new_volume, read_whole, walk};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Paths to contents (`None`: a directory).
type Tree = BTreeMap<String, Option<Vec<u8>>>;

fn root() -> Caller {
    Caller::root()
}

/// What the workload did: the model, and the states it asked to make durable.
#[derive(Default)]
struct Run {
    model: Tree,
    inos: BTreeMap<String, u64>,
    /// The model at the start of every sync, in order.
    synced: Vec<Tree>,
    /// How many of `synced` returned success (the last such is durable).
    durable: usize,
    /// When set, every object of this store is copied after each sync
    /// that returned (for replaying old objects later).
    recorder: Option<Arc<dyn ObjectStore>>,
    dumps: Vec<BTreeMap<String, bytes::Bytes>>,
}

fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

impl Run {
    fn parent(&self, path: &str) -> u64 {
        let (dir, _) = split(path);
        if dir.is_empty() { ROOT_INO } else { self.inos[dir] }
    }

    async fn write(&mut self, core: &Core, path: &str, offset: usize, data: &[u8]) -> FsResult<()> {
        let ino = match self.inos.get(path) {
            Some(ino) => {
                core.open_handle(*ino, libc::O_RDWR, &root())?;
                *ino
            }
            None => {
                let parent = self.parent(path);
                let ino = core
                    .create(&root(), parent, split(path).1.as_bytes(), 0o644, libc::O_RDWR)?
                    .0
                    .ino;
                self.inos.insert(path.to_string(), ino);
                self.model.insert(path.to_string(), Some(Vec::new()));
                ino
            }
        };
        let written = core.write(0, ino, offset as u64, data).await;
        let released = core.release(0, ino).await;
        written?;
        released?;
        let content = self.model.get_mut(path).unwrap().as_mut().unwrap();
        if content.len() < offset + data.len() {
            content.resize(offset + data.len(), 0);
        }
        content[offset..offset + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn mkdir(&mut self, core: &Core, path: &str) -> FsResult<()> {
        let ino = core
            .mkdir(&root(), self.parent(path), split(path).1.as_bytes(), 0o755)?
            .ino;
        self.inos.insert(path.to_string(), ino);
        self.model.insert(path.to_string(), None);
        Ok(())
    }

    fn rename(&mut self, core: &Core, from: &str, to: &str) -> FsResult<()> {
        let (from_dir, to_dir) = (self.parent(from), self.parent(to));
        core.rename(
            &root(),
            from_dir,
            split(from).1.as_bytes(),
            to_dir,
            split(to).1.as_bytes(),
            0,
        )?;
        let ino = self.inos.remove(from).unwrap();
        self.inos.insert(to.to_string(), ino);
        let content = self.model.remove(from).unwrap();
        self.model.insert(to.to_string(), content);
        Ok(())
    }

    fn unlink(&mut self, core: &Core, path: &str) -> FsResult<()> {
        core.unlink(&root(), self.parent(path), split(path).1.as_bytes())?;
        self.inos.remove(path);
        self.model.remove(path);
        Ok(())
    }

    /// `sync` (or with `ino`, fsync of that file). A sync waits for the
    /// store for as long as it takes; once the store has "crashed" the
    /// process is dead, so the sync is abandoned there.
    async fn sync(&mut self, core: &Core, ino: Option<&str>, store: &FaultyStore) -> FsResult<()> {
        self.synced.push(self.model.clone());
        let sync = async {
            match ino {
                Some(path) => core.fsync(self.inos[path]).await,
                None => core.sync().await,
            }
        };
        let dead = async {
            while !store.crashed() {
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        };
        tokio::select! {
            synced = sync => synced?,
            () = dead => return Err(super::FsError::EIO),
        }
        self.durable = self.synced.len();
        if let Some(recorder) = &self.recorder {
            self.dumps.push(dump(recorder.as_ref()).await);
        }
        Ok(())
    }
}

/// Every object of `store` with its bytes.
async fn dump(store: &dyn ObjectStore) -> BTreeMap<String, bytes::Bytes> {
    let mut objects = BTreeMap::new();
    for key in store.list("").await.unwrap() {
        if let Ok(bytes) = store.get(&key).await {
            objects.insert(key, bytes);
        }
    }
    objects
}

fn content(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// The workload: files across chunk boundaries, a directory, a rename, an
/// overwrite (its old chunk becomes dead), an unlink, syncs that checkpoint
/// and reclaim, an fsync, a named snapshot, a lease renewal and a
/// compaction.
/// Stops at the first error, as a killed process would.
async fn workload(
    run: &mut Run,
    core: &Core,
    store: &Arc<FaultyStore>,
    ring: &Arc<crate::keyring::Keyring>,
) -> FsResult<()> {
    let b = BS as usize;
    run.write(core, "a", 0, &content(1, b + 100)).await?;
    run.sync(core, None, store).await?;
    run.mkdir(core, "d")?;
    run.write(core, "d/b", 0, &content(2, 3000)).await?;
    run.rename(core, "a", "d/a")?;
    run.sync(core, Some("d/b"), store).await?;
    run.write(core, "d/a", 10, &content(3, 5000)).await?;
    run.unlink(core, "d/b")?;
    run.sync(core, None, store).await?;
    let lease = lease::Lease::acquire(store.clone() as Arc<dyn ObjectStore>, ring.clone(), "crash-test", false).await;
    if let Ok(lease) = &lease {
        let _ = lease.renew().await;
    }
    if snapshots::create(store.as_ref(), ring, "s1").await.is_err() {
        return Err(super::FsError::EIO);
    }
    run.write(core, "c", 0, &content(4, 2 * b)).await?;
    run.sync(core, None, store).await?;
    run.write(core, "c", b, &content(5, 10)).await?;
    run.sync(core, None, store).await?;
    // A pack left mostly dead, then compacted: its live chunk moves to a
    // new pack and the old one is reclaimed.
    run.write(core, "big", 0, &content(6, 20 * b)).await?;
    run.write(core, "small", 0, &content(7, 100)).await?;
    run.sync(core, None, store).await?;
    run.unlink(core, "big")?;
    core.compact().await?;
    run.sync(core, None, store).await?;
    if let Ok(lease) = lease {
        let _ = lease.release().await;
    }
    Ok(())
}

/// Everything under the root of `core`, read through it.
async fn tree(core: &Core) -> Tree {
    let mut tree = Tree::new();
    for (path, entry) in walk(core) {
        let content = if entry.kind == FileKind::Dir {
            None
        } else {
            let data = read_whole(core, entry.ino).await;
            Some(data.unwrap_or_else(|e| panic!("{path} does not read back: {e:?}")))
        };
        tree.insert(path, content);
    }
    tree
}

fn names(tree: &Tree) -> Vec<String> {
    tree.iter()
        .map(|(path, c)| format!("{path}:{}", c.as_ref().map_or(0, |c| c.len())))
        .collect()
}

/// Runs the workload with a crash at store call `crash_at` (0: none);
/// returns the number of store calls it made.
async fn crash_and_reopen(crash_at: u64) -> u64 {
    let vol = new_volume().await;
    let dirs = tempfile::tempdir().unwrap();
    let cache_dir = dirs.path().join("host");
    std::fs::create_dir(&cache_dir).unwrap();
    let faulty = Arc::new(FaultyStore::new(vol.inner.clone()));
    if crash_at > 0 {
        faulty.inject(Rule::new(Fault::Crash).nth(crash_at));
    }
    let mut run = Run::default();
    {
        let core = vol.mount(&cache_dir, faulty.clone()).await;
        let result = workload(&mut run, &core, &faulty, &vol.volume.ring).await;
        assert!(
            result.is_ok() || faulty.crashed(),
            "crash at call {crash_at}: the workload failed without a crash: {result:?}"
        );
        // kill -9: no final sync; what is running stops at the dead store.
    }
    let calls = faulty.calls();

    // A fresh host sees a state the workload asked to make durable, no
    // older than the last one it was told was.
    let fresh = dirs.path().join("fresh");
    std::fs::create_dir(&fresh).unwrap();
    let seen = tree(&vol.mount(&fresh, vol.inner.clone()).await).await;
    let mut allowed: Vec<&Tree> = run.synced[run.durable.saturating_sub(1)..].iter().collect();
    let empty = Tree::new();
    if run.durable == 0 {
        allowed.push(&empty);
    }
    assert!(
        allowed.contains(&&seen),
        "crash at call {crash_at}: a fresh host sees {:?}, not one of {:?}",
        names(&seen),
        allowed.iter().map(|t| names(t)).collect::<Vec<_>>()
    );

    // The same host restarting keeps every completed operation, and its
    // first sync to a healthy store hands them all on.
    let restarted = vol.mount(&cache_dir, vol.inner.clone()).await;
    assert_eq!(
        names(&tree(&restarted).await),
        names(&run.model),
        "crash at call {crash_at}: the restarted host lost operations"
    );
    assert_eq!(
        tree(&restarted).await,
        run.model,
        "crash at call {crash_at}: contents differ"
    );
    restarted.final_sync().await.unwrap();
    drop(restarted);
    let later = dirs.path().join("later");
    std::fs::create_dir(&later).unwrap();
    assert_eq!(
        tree(&vol.mount(&later, vol.inner.clone()).await).await,
        run.model,
        "crash at call {crash_at}: after the restarted host's sync, a fresh host differs"
    );
    calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_store_call_loses_nothing_durable() {
    let calls = crash_and_reopen(0).await;
    assert!(calls > 20, "the workload made only {calls} store calls");
    for crash_at in 1..=calls {
        crash_and_reopen(crash_at).await;
    }
}

/// What a bucket that lies can do to one metadata object after the
/// workload: delete it, or put back an older version of it.
#[derive(Debug)]
enum Tamper {
    Delete(String),
    /// The key's bytes as they were after the workload's `n`th sync.
    Replay(String, usize),
}

/// After every single deletion or replay of a metadata object, the host
/// that wrote the volume either refuses it or shows exactly what it wrote,
/// and a fresh host either refuses it or shows a state the workload made
/// durable at some point — never a mixture, never a panic. (A fresh host
/// cannot tell an older durable state from the newest: FORMAT.md's threat
/// model; the writer's host can.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_or_replayed_metadata_object_is_refused_or_harmless() {
    let tampers = {
        let vol = new_volume().await;
        let dirs = tempfile::tempdir().unwrap();
        let faulty = Arc::new(FaultyStore::new(vol.inner.clone()));
        let mut run = Run {
            recorder: Some(vol.inner.clone()),
            ..Run::default()
        };
        let core = vol.mount(&dirs.path().join("host"), faulty.clone()).await;
        workload(&mut run, &core, &faulty, &vol.volume.ring).await.unwrap();
        let last = dump(vol.inner.as_ref()).await;
        let metadata = |key: &str| !key.starts_with("data/") && !key.starts_with("audit/");
        let mut tampers: Vec<Tamper> = last
            .keys()
            .filter(|k| metadata(k))
            .map(|k| Tamper::Delete(k.clone()))
            .collect();
        for (n, old) in run.dumps.iter().enumerate() {
            for (key, bytes) in old.iter().filter(|(k, _)| metadata(k)) {
                if last.get(key) != Some(bytes) {
                    tampers.push(Tamper::Replay(key.clone(), n));
                }
            }
        }
        tampers
    };
    assert!(tampers.len() > 10, "{tampers:?}");
    for tamper in tampers {
        let vol = new_volume().await;
        let dirs = tempfile::tempdir().unwrap();
        let host = dirs.path().join("host");
        let faulty = Arc::new(FaultyStore::new(vol.inner.clone()));
        let mut run = Run {
            recorder: Some(vol.inner.clone()),
            ..Run::default()
        };
        {
            let core = vol.mount(&host, faulty.clone()).await;
            workload(&mut run, &core, &faulty, &vol.volume.ring).await.unwrap();
        }
        // The same keys in this run (object ids differ, names do not).
        let applied = match &tamper {
            Tamper::Delete(key) => vol.inner.delete(key).await.is_ok(),
            Tamper::Replay(key, n) => {
                // This run's version of the old object (object ids and
                // nonces differ between runs, names and numbers do not).
                match run.dumps.get(*n).and_then(|d| d.get(key).cloned()) {
                    Some(old) if vol.inner.get(key).await.ok().as_ref() != Some(&old) => {
                        vol.inner.put(key, old).await.unwrap();
                        true
                    }
                    _ => false,
                }
            }
        };
        if !applied {
            continue;
        }
        if let Ok(core) = vol.try_mount(&host, vol.inner.clone()).await {
            assert_eq!(
                tree(&core).await,
                run.model,
                "{tamper:?}: the writer's host shows something else"
            );
        }
        let fresh = dirs.path().join("fresh");
        if let Ok(core) = vol.try_mount(&fresh, vol.inner.clone()).await {
            let seen = tree(&core).await;
            assert!(
                run.synced.contains(&seen),
                "{tamper:?}: a fresh host sees a state the workload never made: {:?}",
                names(&seen)
            );
        }
    }
}
