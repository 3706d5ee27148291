use super::*;
use crate::store::{FaultyStore, MemoryStore};
use std::time::Duration;

/// A pack's size on the cache disk and in the store once cut: the smallest
/// size class.
const PADDED: u64 = 64 << 10;

/// Appends `sealed` as a pack of its own and cuts it for upload.
async fn stage(cache: &PackCache, sealed: &[u8]) -> Result<ObjectId, CacheError> {
    cache.reserve(sealed.len() as u64).await?;
    let mut packer = cache.packer().await;
    let (id, at) = packer.position()?;
    assert_eq!(at, 0);
    packer.append(sealed)?;
    packer.cut(true)?;
    Ok(id)
}

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

fn get(cache: &PackCache, id: &ObjectId, len: u64) -> Option<Vec<u8>> {
    cache.get(id, 0, len)
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
async fn cut_packs_upload_padded_and_stay_cached_clean() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::default());
    let cache = PackCache::open(dir.path(), config(1 << 20), store.clone()).unwrap();
    cache.spawn_uploader();
    let one = stage(&cache, b"sealed one").await.unwrap();
    cache.wait_all_uploaded().await;
    let stored = store.get(&data_key(&one)).await.unwrap();
    assert_eq!(stored.len() as u64, PADDED);
    assert_eq!(&stored[..10], b"sealed one");
    assert_eq!(cache.get(&one, 7, 3).unwrap(), b"one");
    let status = cache.status();
    assert_eq!(
        (status.dirty_bytes, status.pending_uploads, status.used_bytes),
        (0, 0, PADDED)
    );
    assert!(status.last_upload_ns.is_some());
    assert!(dir.path().join("clean").join(hex::encode(one)).exists());
}

#[tokio::test]
async fn the_open_pack_is_read_in_place_and_dropped_when_unreferenced() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::default());
    let cache = PackCache::open(dir.path(), config(1 << 20), store.clone()).unwrap();
    cache.spawn_uploader();
    let mut packer = cache.packer().await;
    let (pack, _) = packer.position().unwrap();
    packer.append(b"first").unwrap();
    assert_eq!(packer.position().unwrap(), (pack, 5));
    packer.append(b"second").unwrap();
    assert_eq!(cache.get(&pack, 5, 6).unwrap(), b"second");
    assert_eq!(cache.status().dirty_bytes, 11);
    assert!(!packer.is_full_for(PACK_TARGET - 11) && packer.is_full_for(PACK_TARGET - 10));
    packer.cut(false).unwrap();
    assert!(packer.is_empty());
    drop(packer);
    cache.wait_all_uploaded().await;
    assert!(
        store.list("data/").await.unwrap().is_empty(),
        "an unreferenced pack is never uploaded"
    );
    assert!(cache.get(&pack, 0, 5).is_none());
    assert_eq!(cache.status().used_bytes, 0);
}

#[tokio::test]
async fn packs_left_by_a_killed_daemon_upload_at_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::default());
    let open_pack = {
        // No uploader: as if the daemon died before it got to them.
        let cache = PackCache::open(dir.path(), config(1 << 20), store.clone()).unwrap();
        stage(&cache, b"one").await.unwrap();
        let mut packer = cache.packer().await;
        let (open, _) = packer.position().unwrap();
        packer.append(b"still open").unwrap();
        open
    };
    let cache = PackCache::open(dir.path(), config(1 << 20), store.clone()).unwrap();
    assert_eq!(cache.status().pending_uploads, 2, "the open pack is cut too");
    cache.spawn_uploader();
    cache.wait_all_uploaded().await;
    assert_eq!(store.list("data/").await.unwrap().len(), 2);
    assert_eq!(&store.get(&data_key(&open_pack)).await.unwrap()[..10], b"still open");
}

#[tokio::test]
async fn failed_uploads_are_retried_until_the_store_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let inner = Arc::new(MemoryStore::default());
    let store = Arc::new(FaultyStore::new(inner.clone()));
    store.fail_writes(true);
    let cache = PackCache::open(dir.path(), config(1 << 20), store.clone()).unwrap();
    cache.spawn_uploader();
    let one = stage(&cache, b"one").await.unwrap();
    within_a_while("retries", || cache.status().retries >= 2).await;
    assert_eq!(cache.status().pending_uploads, 1);
    assert!(cache.status().last_error.unwrap().contains("injected"));
    assert!(cache.status().failing_since_ns.is_some(), "the outage shows in status");
    // Reads of the pending pack keep working during the outage.
    assert_eq!(get(&cache, &one, 3).unwrap(), b"one");
    store.fail_writes(false);
    tokio::time::timeout(Duration::from_secs(5), cache.wait_all_uploaded())
        .await
        .expect("uploaded once the store is back");
    assert!(inner.get(&data_key(&one)).await.is_ok());
    assert_eq!(cache.status().failing_since_ns, None, "and ends with it");
}

#[tokio::test]
async fn clean_packs_are_evicted_least_recently_used_first_dirty_never() {
    let dir = tempfile::tempdir().unwrap();
    let inner = Arc::new(MemoryStore::default());
    let store = Arc::new(FaultyStore::new(inner.clone()));
    // Room for two kept copies and one padded pack.
    let mut cfg = config(PADDED + 250);
    cfg.max_dirty = 1 << 20;
    let cache = PackCache::open(dir.path(), cfg, store.clone()).unwrap();
    for n in 1..=3 {
        cache.keep(&id(n), 0, &[n; 100]);
    }
    assert!(get(&cache, &id(1), 100).is_some()); // now 2 is the least recently used
    assert!(get(&cache, &id(1), 101).is_none(), "only what was kept is present");
    store.fail_writes(true);
    cache.spawn_uploader();
    let nine = stage(&cache, &[9; 1000]).await.unwrap();
    assert!(get(&cache, &id(2), 100).is_none(), "the LRU clean pack is evicted");
    assert!(get(&cache, &id(1), 100).is_some() && get(&cache, &id(3), 100).is_some());
    let ten = stage(&cache, &[10; 1000]).await.unwrap();
    // Only packs to upload left: staging more than the limit goes over it,
    // and nothing pending is lost.
    cache.keep(&id(4), 0, &[4; 100]);
    assert!(get(&cache, &id(4), 100).is_none(), "no room for a clean copy");
    assert!(get(&cache, &nine, 100).is_some() && get(&cache, &ten, 100).is_some());
    store.fail_writes(false);
    cache.wait_all_uploaded().await;
    assert_eq!(inner.list("data/").await.unwrap().len(), 2);
}

#[tokio::test]
async fn sparse_copies_are_found_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::default());
    {
        let cache = PackCache::open(dir.path(), config(1 << 30), store.clone()).unwrap();
        cache.keep(&id(1), 1 << 20, &[1; 4096]);
    }
    let cache = PackCache::open(dir.path(), config(1 << 30), store).unwrap();
    assert_eq!(cache.get(&id(1), 1 << 20, 4096).unwrap(), vec![1; 4096]);
    assert!(cache.get(&id(1), 0, 4096).is_none(), "a hole is not cached data");
    assert_eq!(cache.status().used_bytes, 4096);
}

#[tokio::test]
async fn writers_wait_while_data_to_upload_is_above_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FaultyStore::new(Arc::new(MemoryStore::default())));
    store.fail_writes(true);
    let mut cfg = config(1 << 20);
    cfg.max_dirty = PADDED + 50;
    let cache = PackCache::open(dir.path(), cfg, store.clone()).unwrap();
    cache.spawn_uploader();
    stage(&cache, &[1; 100]).await.unwrap();
    let second = tokio::time::timeout(Duration::from_millis(300), stage(&cache, &[2; 100])).await;
    assert!(second.is_err(), "the second pack waits for the first to upload");
    store.fail_writes(false);
    tokio::time::timeout(Duration::from_secs(5), stage(&cache, &[2; 100]))
        .await
        .expect("proceeds once uploads drain")
        .unwrap();
}

#[tokio::test]
async fn a_full_disk_refuses_new_data_and_keeps_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::default());
    let (avail, _) = crate::os::disk_space(dir.path()).unwrap();
    let mut cfg = config(1 << 40);
    cfg.min_free = MinFree::Bytes(avail + (1 << 30));
    let cache = PackCache::open(dir.path(), cfg, store).unwrap();
    assert!(matches!(stage(&cache, b"x").await, Err(CacheError::Full)));
    assert_eq!(cache.status().pending_uploads, 0);
}

#[tokio::test]
async fn unreferenced_packs_are_dropped_unless_a_state_in_flight_needs_them() {
    let dir = tempfile::tempdir().unwrap();
    let inner = Arc::new(MemoryStore::default());
    let store = Arc::new(FaultyStore::new(inner.clone()));
    let cache = PackCache::open(dir.path(), config(1 << 20), store.clone()).unwrap();
    // Not uploading yet: queued packs can be dropped.
    let one = stage(&cache, b"one").await.unwrap();
    let two = stage(&cache, b"two").await.unwrap();
    let pinned = cache.pin_pending();
    assert_eq!(pinned.len(), 2);
    let three = stage(&cache, b"three").await.unwrap();
    assert!(!cache.drop_unreferenced(&one), "pinned by a state in flight");
    assert!(cache.drop_unreferenced(&three), "never tried, not pinned");
    cache.unpin(&pinned);
    assert!(cache.drop_unreferenced(&two));
    cache.spawn_uploader();
    cache.wait_uploaded(&pinned).await;
    assert_eq!(inner.list("data/").await.unwrap(), vec![data_key(&one)]);
    // A pack whose upload was tried may be in the store: not dropped here,
    // but removed by reclaim, which deletes it from the store too.
    store.fail_writes(true);
    let four = stage(&cache, b"four").await.unwrap();
    within_a_while("an attempt", || cache.status().retries >= 1).await;
    assert!(!cache.drop_unreferenced(&four));
    cache.remove(&four);
    store.fail_writes(false);
    cache.wait_all_uploaded().await;
    within_a_while("the discarded pack to be gone", || {
        cache.status().pending_uploads == 0 && get(&cache, &four, 4).is_none()
    })
    .await;
    assert!(inner.get(&data_key(&four)).await.is_err());
}
