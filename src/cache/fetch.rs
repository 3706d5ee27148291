//! Reading stored blocks: plaintext in memory (LRU), sealed on the cache
//! disk, or fetched from the store — each block fetched once however many
//! readers want it, and fetched ahead for sequential readers. The other
//! direction, uploads, is `upload.rs`: this module and that one are the
//! only ones that move sealed blocks between the cache and the store.

use super::{BlockCache, data_key};
use crate::codec::{self, BlockAddress, CodecError, ObjectId};
use crate::keyring::Keyring;
use crate::meta::BlockRef;
use crate::store::{ObjectStore, StoreError};
use lru::LruCache;
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};

/// Why a stored block could not be read (already logged, with the block's
/// inode number and index, where it happened).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot fetch data block: {0}")]
    Store(StoreError),
    #[error("data block failed its integrity check: {0}")]
    Integrity(CodecError),
    #[error("data block has the wrong length")]
    Length,
}

/// A stored block to read: where it lives and what it should hold.
#[derive(Clone, Copy, Debug)]
pub struct Wanted {
    pub ino: u64,
    pub index: u64,
    pub block: BlockRef,
}

type Plain = Arc<Vec<u8>>;

pub struct Fetcher {
    store: Arc<dyn ObjectStore>,
    cache: Arc<BlockCache>,
    ring: Arc<Keyring>,
    /// Opened blocks by object id; ids are never reused, so never stale.
    memory: Mutex<LruCache<ObjectId, Plain>>,
    /// Fetches in progress: a second reader of the same block waits for
    /// the first instead of fetching it again.
    inflight: Mutex<HashMap<ObjectId, Arc<tokio::sync::Mutex<()>>>>,
}

impl Fetcher {
    pub fn new(store: Arc<dyn ObjectStore>, cache: Arc<BlockCache>, ring: Arc<Keyring>, blocks: usize) -> Fetcher {
        Fetcher {
            store,
            cache,
            ring,
            memory: Mutex::new(LruCache::new(NonZeroUsize::new(blocks).unwrap_or(NonZeroUsize::MIN))),
            inflight: Mutex::new(HashMap::new()),
        }
    }

    fn memory(&self) -> MutexGuard<'_, LruCache<ObjectId, Plain>> {
        self.memory.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps a block just written: the likeliest to be read next.
    pub fn remember(&self, id: ObjectId, content: Vec<u8>) {
        self.memory().put(id, Arc::new(content));
    }

    /// The plaintext of a stored block.
    pub async fn get(&self, wanted: Wanted) -> Result<Plain, FetchError> {
        let id = wanted.block.object_id;
        if let Some(hit) = self.memory().get(&id) {
            self.cache.count_hit();
            return Ok(hit.clone());
        }
        let slot = self
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id)
            .or_default()
            .clone();
        let _fetching = slot.lock().await;
        // Whoever held the slot before us may have fetched it.
        if let Some(hit) = self.memory().get(&id) {
            self.cache.count_hit();
            return Ok(hit.clone());
        }
        let result = self.load(wanted).await;
        if let Ok(plain) = &result {
            self.memory().put(id, plain.clone());
        }
        self.inflight.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        result
    }

    /// Starts fetching blocks a sequential reader will want next.
    pub fn prefetch(self: &Arc<Self>, blocks: Vec<Wanted>) {
        for wanted in blocks {
            if self.memory().contains(&wanted.block.object_id) {
                continue;
            }
            let fetcher = self.clone();
            tokio::spawn(async move {
                // A failure is reported when (if) the reader gets there.
                let _ = fetcher.get(wanted).await;
            });
        }
    }

    /// From the cache disk or the store, opened and checked. Only an object
    /// that opened enters the cache: a wrong object in the store costs one
    /// failed read, never a cache that keeps failing once it is put right.
    async fn load(&self, wanted: Wanted) -> Result<Plain, FetchError> {
        let id = wanted.block.object_id;
        if let Some(object) = self.cache.get(&id) {
            match self.open(wanted, &object) {
                Ok(plain) => return Ok(plain),
                // Damaged on the cache disk: fetched again below.
                Err(_) => self.cache.drop_clean(&id),
            }
        }
        let expected = codec::sealed_block_len(wanted.block.len as usize) as u64;
        let object = self.store.get_at_most(&data_key(&id), expected).await.map_err(|e| {
            tracing::error!(ino = wanted.ino, index = wanted.index, error = %e, "cannot fetch data block");
            FetchError::Store(e)
        })?;
        self.cache.count_download(object.len() as u64);
        let plain = self.open(wanted, &object)?;
        self.cache.keep(id, &object);
        Ok(plain)
    }

    /// Opens a sealed block and checks it holds what the metadata says.
    fn open(&self, Wanted { ino, index, block }: Wanted, object: &[u8]) -> Result<Plain, FetchError> {
        let addr = BlockAddress {
            object_id: block.object_id,
            ino,
            index,
        };
        let plain = codec::open_block(&self.ring, &addr, object).map_err(|e| {
            tracing::error!(ino, index, error = %e, "data block failed its integrity check");
            FetchError::Integrity(e)
        })?;
        if plain.len() != block.len as usize {
            tracing::error!(ino, index, "data block has the wrong length");
            return Err(FetchError::Length);
        }
        Ok(Arc::new(plain))
    }
}
