//! Reading stored chunks: plaintext in memory (LRU), sealed on the cache
//! disk, or fetched from the store with ranged GETs — a run of chunks stored
//! back to back in one pack comes in one request, each chunk is fetched
//! once however many readers want it, and sequential readers get runs
//! fetched ahead. The other direction, uploads, is `upload.rs`: this module
//! and that one are the only ones that move sealed data between the cache
//! and the store.

use super::{PackCache, data_key};
use crate::codec::{self, ChunkAddress, CodecError, ObjectId};
use crate::keyring::Keyring;
use crate::meta::ChunkRef;
use crate::store::{ObjectStore, StoreError};
use bytes::Bytes;
use futures_util::future::join_all;
use lru::LruCache;
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Why a stored chunk could not be read (already logged, with the chunk's
/// inode number and index, where it happened).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot fetch data: {0}")]
    Store(String),
    #[error("data chunk failed its integrity check: {0}")]
    Integrity(CodecError),
    #[error("data chunk has the wrong length")]
    Length,
}

/// A stored chunk to read: where it lives and what it should hold.
#[derive(Clone, Copy, Debug)]
pub struct Wanted {
    pub ino: u64,
    pub index: u64,
    pub block: ChunkRef,
}

impl Wanted {
    fn key(&self) -> Key {
        (self.block.pack, self.block.offset)
    }

    fn address(&self) -> ChunkAddress {
        ChunkAddress {
            pack: self.block.pack,
            offset: u64::from(self.block.offset),
            ino: self.ino,
            index: self.index,
        }
    }
}

/// The largest ranged GET: longer runs are split, so a reader gets the
/// start of a long run without waiting for all of it.
const MAX_RUN: u64 = 8 << 20;

/// A chunk by where it lives: packs are never rewritten, so never stale.
type Key = (ObjectId, u32);
type Plain = Arc<Vec<u8>>;

/// Cuts `wanted` (in the order given) into runs of chunks stored back to
/// back in one pack, each at most `MAX_RUN` bytes: one ranged GET each.
pub fn runs(wanted: &[Wanted]) -> Vec<&[Wanted]> {
    let mut runs = Vec::new();
    let mut start = 0;
    for i in 1..=wanted.len() {
        let ends = i == wanted.len() || {
            let (prev, next) = (&wanted[i - 1].block, &wanted[i].block);
            next.pack != prev.pack
                || u64::from(next.offset) != prev.end()
                || next.end() - u64::from(wanted[start].block.offset) > MAX_RUN
        };
        if ends {
            runs.push(&wanted[start..i]);
            start = i;
        }
    }
    runs
}

pub struct Fetcher {
    store: Arc<dyn ObjectStore>,
    cache: Arc<PackCache>,
    ring: Arc<Keyring>,
    /// Opened chunks by where they live.
    memory: Mutex<LruCache<Key, Plain>>,
    /// Fetches in progress: a second reader of the same chunk waits for
    /// the first instead of fetching it again.
    inflight: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
    /// How long a missing data object is waited for: on a volume several
    /// hosts write, a chunk another host just committed may still be on
    /// its way to the store (it is there once that host's close returns).
    missing_wait: Duration,
}

/// The first pause before a missing object is asked for again, and the
/// longest (doubled in between).
const MISSING_RETRY_FIRST: Duration = Duration::from_millis(20);
const MISSING_RETRY_MAX: Duration = Duration::from_secs(1);

impl Fetcher {
    pub fn new(store: Arc<dyn ObjectStore>, cache: Arc<PackCache>, ring: Arc<Keyring>, chunks: usize) -> Fetcher {
        Fetcher {
            store,
            cache,
            ring,
            memory: Mutex::new(LruCache::new(NonZeroUsize::new(chunks).unwrap_or(NonZeroUsize::MIN))),
            inflight: Mutex::new(HashMap::new()),
            missing_wait: Duration::ZERO,
        }
    }

    /// Waits up to `limit` for data objects that are not in the store yet
    /// (see `missing_wait`).
    pub fn waiting_for_missing(mut self, limit: Duration) -> Fetcher {
        self.missing_wait = limit;
        self
    }

    /// A ranged GET, asked again while the object is missing and the wait
    /// allows.
    async fn get_range_waiting(&self, key: &str, start: u64, len: u64) -> Result<Bytes, StoreError> {
        let deadline = std::time::Instant::now() + self.missing_wait;
        let mut pause = MISSING_RETRY_FIRST;
        loop {
            match self.store.get_range(key, start, len).await {
                Err(StoreError::NotFound) if std::time::Instant::now() + pause <= deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MISSING_RETRY_MAX);
                }
                done => return done,
            }
        }
    }

    fn memory(&self) -> MutexGuard<'_, LruCache<Key, Plain>> {
        self.memory.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps a chunk just written: the likeliest to be read next.
    pub fn remember(&self, chunk: &ChunkRef, content: Vec<u8>) {
        self.memory().put((chunk.pack, chunk.offset), Arc::new(content));
    }

    /// The plaintext of one stored chunk.
    pub async fn get(&self, wanted: Wanted) -> Result<Plain, FetchError> {
        self.get_all(&[wanted]).await?.pop().ok_or(FetchError::Length)
    }

    /// The plaintexts of stored chunks, in the order asked; each run of
    /// them missing from memory and the cache disk is one ranged GET, and
    /// the runs are fetched in parallel.
    pub async fn get_all(&self, wanted: &[Wanted]) -> Result<Vec<Plain>, FetchError> {
        let hits: Vec<Option<Plain>> = {
            let mut memory = self.memory();
            wanted.iter().map(|w| memory.get(&w.key()).cloned()).collect()
        };
        if hits.iter().all(Option::is_some) {
            hits.iter().for_each(|_| self.cache.count_hit());
            return Ok(hits.into_iter().flatten().collect());
        }
        // Runs are fetched in parallel: each ranged GET waits mostly on the
        // store. (Sequential files are one run; this is for scattered ones.)
        let mut fetched = Vec::with_capacity(wanted.len());
        let runs = runs(wanted);
        if runs.len() == 1 {
            fetched.extend(self.fetch_run(runs[0]).await);
        } else {
            let mut tasks = Vec::with_capacity(runs.len());
            for run in runs {
                tasks.push(self.fetch_run(run));
            }
            for results in join_all(tasks).await {
                fetched.extend(results);
            }
        }
        fetched.into_iter().collect()
    }

    /// Whether a chunk is in memory or on the cache disk: reading it costs
    /// no request.
    pub fn is_local(&self, wanted: &Wanted) -> bool {
        let block = &wanted.block;
        self.memory().contains(&wanted.key())
            || self.cache.has(
                &block.pack,
                u64::from(block.offset),
                block.end() - u64::from(block.offset),
            )
    }

    /// Starts fetching chunks a sequential reader will want next.
    pub fn prefetch(self: &Arc<Self>, wanted: Vec<Wanted>) {
        for run in runs(&wanted) {
            if run.iter().all(|w| self.memory().contains(&w.key())) {
                continue;
            }
            let (fetcher, run) = (self.clone(), run.to_vec());
            tokio::spawn(async move {
                // A failure is reported when (if) the reader gets there.
                let _ = fetcher.fetch_run(&run).await;
            });
        }
    }

    /// One run: from memory, the cache disk, or one ranged GET for the
    /// part still missing. Only chunks that opened enter the cache: a wrong
    /// object in the store costs one failed read, never a cache that keeps
    /// failing once it is put right.
    async fn fetch_run(&self, run: &[Wanted]) -> Vec<Result<Plain, FetchError>> {
        // Slots are taken in pack order, so overlapping runs cannot deadlock.
        let slots: Vec<Arc<tokio::sync::Mutex<()>>> = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            run.iter()
                .map(|w| inflight.entry(w.key()).or_default().clone())
                .collect()
        };
        let mut held = Vec::with_capacity(slots.len());
        for slot in &slots {
            held.push(slot.lock().await);
        }
        let mut out: Vec<Option<Result<Plain, FetchError>>> = Vec::with_capacity(run.len());
        for wanted in run {
            out.push(self.local(wanted).map(Ok));
        }
        let missing: Vec<usize> = (0..run.len()).filter(|i| out[*i].is_none()).collect();
        if let (Some(&first), Some(&last)) = (missing.first(), missing.last()) {
            let fetched = self.fetch_range(&run[first..=last]).await;
            for (i, result) in (first..=last).zip(fetched) {
                if out[i].is_none() {
                    out[i] = Some(result);
                }
            }
        }
        drop(held);
        {
            let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            for (wanted, slot) in run.iter().zip(slots) {
                // Ours and the map's: nobody else waits on it.
                if Arc::strong_count(&slot) <= 2 {
                    inflight.remove(&wanted.key());
                }
            }
        }
        out.into_iter().map(|r| r.unwrap_or(Err(FetchError::Length))).collect()
    }

    /// A chunk from memory, or from the cache disk if it opens there.
    fn local(&self, wanted: &Wanted) -> Option<Plain> {
        if let Some(hit) = self.memory().get(&wanted.key()) {
            self.cache.count_hit();
            return Some(hit.clone());
        }
        let block = &wanted.block;
        let sealed = self.cache.get(
            &block.pack,
            u64::from(block.offset),
            block.end() - u64::from(block.offset),
        )?;
        match self.open(wanted, &sealed) {
            Ok(plain) => {
                self.memory().put(wanted.key(), plain.clone());
                Some(plain)
            }
            Err(e) => {
                // Damaged on the cache disk, or a neighbour's edge of a
                // sparse copy: fetched from the store instead.
                tracing::debug!(error = %e, "a cached chunk does not open; fetching it again");
                self.cache.drop_clean(&block.pack);
                None
            }
        }
    }

    /// Fetches `chunks` (back to back in one pack) with one ranged GET,
    /// reading exactly the bytes the metadata expects.
    async fn fetch_range(&self, chunks: &[Wanted]) -> Vec<Result<Plain, FetchError>> {
        let (first, last) = (&chunks[0], &chunks[chunks.len() - 1]);
        let pack = first.block.pack;
        let start = u64::from(first.block.offset);
        let end = last.block.end();
        let bytes = match self.get_range_waiting(&data_key(&pack), start, end - start).await {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::error!(ino = first.ino, index = first.index, chunks = chunks.len(), error = %e,
                    "cannot fetch file data");
                if let StoreError::TooShort { .. } = e {
                    tracing::error!(pack = %hex::encode(pack), "a data object is shorter than the metadata expects");
                }
                let message = e.to_string();
                return chunks.iter().map(|_| Err(FetchError::Store(message.clone()))).collect();
            }
        };
        self.cache.count_download(bytes.len() as u64);
        chunks
            .iter()
            .map(|wanted| {
                let from = (u64::from(wanted.block.offset) - start) as usize;
                let to = (wanted.block.end() - start) as usize;
                let sealed = &bytes[from..to];
                let plain = self.open(wanted, sealed).inspect_err(|e| {
                    tracing::error!(ino = wanted.ino, index = wanted.index, error = %e,
                        "file data failed its integrity check");
                })?;
                self.cache.keep(&pack, u64::from(wanted.block.offset), sealed);
                self.memory().put(wanted.key(), plain.clone());
                Ok(plain)
            })
            .collect()
    }

    /// Opens a sealed chunk and checks it holds what the metadata says.
    fn open(&self, wanted: &Wanted, sealed: &[u8]) -> Result<Plain, FetchError> {
        let plain = codec::open_chunk(&self.ring, &wanted.address(), sealed).map_err(FetchError::Integrity)?;
        if plain.len() != wanted.block.len as usize {
            return Err(FetchError::Length);
        }
        Ok(Arc::new(plain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(pack: u8, offset: u32, len: u32) -> Wanted {
        Wanted {
            ino: 2,
            index: 0,
            block: ChunkRef {
                pack: [pack; 16],
                offset,
                len,
            },
        }
    }

    #[test]
    fn runs_are_chunks_back_to_back_in_one_pack() {
        let s = codec::sealed_chunk_len(100) as u32;
        let wanted = [
            chunk(1, 0, 100),
            chunk(1, s, 100),
            chunk(1, 3 * s, 100),
            chunk(2, 4 * s, 100),
            chunk(2, 5 * s, 100),
        ];
        let lens: Vec<usize> = runs(&wanted).iter().map(|r| r.len()).collect();
        assert_eq!(lens, vec![2, 1, 2]);
        assert!(runs(&[]).is_empty());
    }

    #[tokio::test]
    async fn a_missing_object_is_waited_for_as_long_as_allowed() {
        let store = Arc::new(crate::store::MemoryStore::default());
        let dir = tempfile::tempdir().unwrap();
        let config = super::super::CacheConfig {
            limit: 1 << 30,
            min_free: super::super::MinFree::Bytes(0),
            max_dirty: 1 << 30,
            upload_concurrency: 1,
        };
        let cache = PackCache::open(dir.path(), config, store.clone()).unwrap();
        let ring = Arc::new(Keyring::new(
            &crate::crypto::SecretKey::random(),
            crate::crypto::random_bytes(),
        ));
        let wanted = chunk(1, 0, 5);
        let key = codec::pack_key(&ring, &wanted.block.pack);
        let sealed = codec::seal_chunk(&ring, &key, &wanted.address(), b"hello");
        let impatient = Fetcher::new(store.clone(), cache.clone(), ring.clone(), 8);
        assert!(impatient.get(wanted).await.is_err());
        let patient = Fetcher::new(store.clone(), cache, ring, 8).waiting_for_missing(Duration::from_secs(20));
        // Another host's upload, landing a moment later.
        let uploader = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            store.put(&data_key(&[1; 16]), sealed.into()).await.unwrap();
        });
        assert_eq!(patient.get(wanted).await.unwrap().as_slice(), b"hello");
        uploader.await.unwrap();
    }

    #[test]
    fn long_runs_are_split() {
        let len = 64 << 10;
        let s = codec::sealed_chunk_len(len as usize) as u32;
        let wanted: Vec<Wanted> = (0..300).map(|i| chunk(1, i * s, len)).collect();
        let runs = runs(&wanted);
        assert!(runs.len() >= 2);
        for run in &runs {
            assert!(run.last().unwrap().block.end() - u64::from(run[0].block.offset) <= MAX_RUN);
        }
        assert_eq!(runs.iter().map(|r| r.len()).sum::<usize>(), 300);
    }
}
