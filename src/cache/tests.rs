use super::*;
use crate::store::{FaultyStore, MemoryStore};
use std::time::Duration;

fn config(limit: u64) -> CacheConfig {
    CacheConfig {
        limit,
        min_free: MinFree::Bytes(0),
        max_dirty: limit,
        upload_concurrency: 4,
    }
}

fn id(n: u8) -> ObjectId {
    let mut id = ObjectId::default();
    id[0] = n;
    id
}

async fn within_a_while(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn free_space_floors_parse() {
    assert_eq!("5%".parse(), Ok(MinFree::Percent(5)));
    assert_eq!("1G".parse(), Ok(MinFree::Bytes(1 << 30)));
    assert!("100%".parse::<MinFree>().is_err());
}

#[tokio::test]
async fn staged_blocks_upload_and_stay_cached_clean() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::default());
    let cache = BlockCache::open(dir.path(), config(1 << 20), store.clone()).unwrap();
    cache.spawn_uploader();
    cache.stage(id(1), b"sealed one").await.unwrap();
    cache.wait_all_uploaded().await;
    assert_eq!(
        store.get(&data_key(&id(1))).await.unwrap(),
        Bytes::from_static(b"sealed one")
    );
    assert_eq!(cache.get(&id(1)).unwrap(), Bytes::from_static(b"sealed one"));
    let status = cache.status();
    assert_eq!(
        (status.dirty_bytes, status.pending_uploads, status.used_bytes),
        (0, 0, 10)
    );
    assert!(status.last_upload_ns.is_some());
    assert!(dir.path().join("clean").join(hex::encode(id(1))).exists());
}

#[tokio::test]
async fn blocks_left_dirty_by_a_killed_daemon_upload_at_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::default());
    {
        // No uploader: as if the daemon died before it got to them.
        let cache = BlockCache::open(dir.path(), config(1 << 20), store.clone()).unwrap();
        cache.stage(id(1), b"one").await.unwrap();
        cache.stage(id(2), b"two").await.unwrap();
    }
    std::fs::write(dir.path().join("tmp").join(hex::encode(id(3))), b"half").unwrap();
    let cache = BlockCache::open(dir.path(), config(1 << 20), store.clone()).unwrap();
    assert_eq!(cache.status().pending_uploads, 2);
    assert!(!dir.path().join("tmp").join(hex::encode(id(3))).exists());
    cache.spawn_uploader();
    cache.wait_all_uploaded().await;
    assert_eq!(store.list("data/").await.unwrap().len(), 2);
}

#[tokio::test]
async fn failed_uploads_are_retried_until_the_store_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let inner = Arc::new(MemoryStore::default());
    let store = Arc::new(FaultyStore::new(inner.clone()));
    store.fail_writes(true);
    let cache = BlockCache::open(dir.path(), config(1 << 20), store.clone()).unwrap();
    cache.spawn_uploader();
    cache.stage(id(1), b"one").await.unwrap();
    within_a_while("retries", || cache.status().retries >= 2).await;
    assert_eq!(cache.status().pending_uploads, 1);
    assert!(cache.status().last_error.unwrap().contains("injected"));
    assert!(cache.status().failing_since_ns.is_some(), "the outage shows in status");
    // Reads of the pending block keep working during the outage.
    assert_eq!(cache.get(&id(1)).unwrap(), Bytes::from_static(b"one"));
    store.fail_writes(false);
    tokio::time::timeout(Duration::from_secs(5), cache.wait_all_uploaded())
        .await
        .expect("uploaded once the store is back");
    assert!(inner.get(&data_key(&id(1))).await.is_ok());
    assert_eq!(cache.status().failing_since_ns, None, "and ends with it");
}

#[tokio::test]
async fn clean_blocks_are_evicted_least_recently_used_first_dirty_never() {
    let dir = tempfile::tempdir().unwrap();
    let inner = Arc::new(MemoryStore::default());
    let store = Arc::new(FaultyStore::new(inner.clone()));
    let cache = BlockCache::open(dir.path(), config(300), store.clone()).unwrap();
    for n in 1..=3 {
        cache.keep(id(n), &[n; 100]);
    }
    assert!(cache.get(&id(1)).is_some()); // now 2 is the least recently used
    store.fail_writes(true);
    cache.spawn_uploader();
    cache.stage(id(9), &[9; 100]).await.unwrap();
    assert!(cache.get(&id(2)).is_none(), "the LRU clean block is evicted");
    assert!(cache.get(&id(1)).is_some() && cache.get(&id(3)).is_some());
    cache.stage(id(10), &[10; 100]).await.unwrap();
    cache.stage(id(11), &[11; 100]).await.unwrap();
    assert!(cache.status().used_bytes <= 300);
    // Only dirty blocks left: staging more than the limit goes over it, and
    // nothing pending is lost.
    cache.keep(id(4), &[4; 100]);
    assert!(cache.get(&id(4)).is_none(), "no room for a clean copy");
    assert!(cache.get(&id(9)).is_some() && cache.get(&id(11)).is_some());
    store.fail_writes(false);
    cache.wait_all_uploaded().await;
    assert_eq!(inner.list("data/").await.unwrap().len(), 3);
}

#[tokio::test]
async fn writers_wait_while_dirty_data_is_above_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FaultyStore::new(Arc::new(MemoryStore::default())));
    store.fail_writes(true);
    let mut cfg = config(1 << 20);
    cfg.max_dirty = 150;
    let cache = BlockCache::open(dir.path(), cfg, store.clone()).unwrap();
    cache.spawn_uploader();
    cache.stage(id(1), &[1; 100]).await.unwrap();
    let second = tokio::time::timeout(Duration::from_millis(300), cache.stage(id(2), &[2; 100])).await;
    assert!(second.is_err(), "the second block waits for the first to upload");
    store.fail_writes(false);
    tokio::time::timeout(Duration::from_secs(5), cache.stage(id(2), &[2; 100]))
        .await
        .expect("proceeds once uploads drain")
        .unwrap();
}

#[tokio::test]
async fn a_full_disk_refuses_new_blocks_and_keeps_the_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::default());
    let (avail, _) = crate::os::disk_space(dir.path()).unwrap();
    let mut cfg = config(1 << 40);
    cfg.min_free = MinFree::Bytes(avail + (1 << 30));
    let cache = BlockCache::open(dir.path(), cfg, store).unwrap();
    assert!(matches!(cache.stage(id(1), b"x").await, Err(CacheError::Full)));
    assert_eq!(cache.status().pending_uploads, 0);
}

#[tokio::test]
async fn unreferenced_blocks_are_dropped_unless_a_snapshot_needs_them() {
    let dir = tempfile::tempdir().unwrap();
    let inner = Arc::new(MemoryStore::default());
    let store = Arc::new(FaultyStore::new(inner.clone()));
    let cache = BlockCache::open(dir.path(), config(1 << 20), store.clone()).unwrap();
    // Not uploading yet: queued blocks can be dropped.
    cache.stage(id(1), b"one").await.unwrap();
    cache.stage(id(2), b"two").await.unwrap();
    let pinned = cache.pin_pending();
    assert_eq!(pinned.len(), 2);
    cache.stage(id(3), b"three").await.unwrap();
    assert!(!cache.drop_unreferenced(&id(1)), "pinned by a snapshot in flight");
    assert!(cache.drop_unreferenced(&id(3)), "never tried, not pinned");
    cache.unpin(&pinned);
    assert!(cache.drop_unreferenced(&id(2)));
    cache.spawn_uploader();
    cache.wait_uploaded(&pinned).await;
    assert_eq!(inner.list("data/").await.unwrap(), vec![data_key(&id(1))]);
    // A block whose upload was tried may be in the store: not dropped here,
    // but removed by reclaim, which deletes it from the store too.
    store.fail_writes(true);
    cache.stage(id(4), b"four").await.unwrap();
    within_a_while("an attempt", || cache.status().retries >= 1).await;
    assert!(!cache.drop_unreferenced(&id(4)));
    cache.remove(&id(4));
    store.fail_writes(false);
    cache.wait_all_uploaded().await;
    within_a_while("the discarded block to be gone", || {
        cache.status().pending_uploads == 0 && cache.get(&id(4)).is_none()
    })
    .await;
    assert!(inner.get(&data_key(&id(4))).await.is_err());
}
