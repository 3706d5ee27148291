//! The write-back uploader: dirty blocks go to the store through a bounded
//! pool, retried with backoff for as long as it takes. A block is never
//! dropped because the store failed; it leaves the queue only when uploaded
//! or when the metadata no longer references it.

use super::{BlockCache, backoff, data_key};
use crate::codec::ObjectId;
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::Semaphore;

impl BlockCache {
    /// Runs the uploader until the runtime shuts down.
    pub fn spawn_uploader(self: &Arc<Self>) {
        let cache = self.clone();
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(cache.config.upload_concurrency.max(1)));
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let id = cache.next_queued().await;
                let cache = cache.clone();
                tokio::spawn(async move {
                    cache.upload(id).await;
                    drop(slot);
                });
            }
        });
    }

    /// Takes the next queued block, marking it in flight; never returns
    /// once paused.
    async fn next_queued(&self) -> ObjectId {
        loop {
            let queued = self.queued.notified();
            tokio::pin!(queued);
            queued.as_mut().enable();
            if !self.paused.load(Ordering::SeqCst) {
                let mut blocks = self.blocks();
                while let Some(id) = blocks.queue.pop_front() {
                    if let Some(p) = blocks.dirty.get_mut(&id) {
                        p.uploading = true;
                        p.attempted = true;
                        return id;
                    }
                }
            }
            queued.await;
        }
    }

    async fn upload(&self, id: ObjectId) {
        let data = match std::fs::read(self.path("dirty", &id)) {
            Ok(data) => Bytes::from(data),
            Err(e) => {
                // Only a hand-made change to the cache directory gets here;
                // the block is lost, and fsck will name the file.
                tracing::error!(error = %e, object = %hex::encode(id), "a block waiting for upload is unreadable");
                self.finish(&id, false);
                return;
            }
        };
        let key = data_key(&id);
        let mut attempt = 0;
        loop {
            if self.paused.load(Ordering::SeqCst) {
                if let Some(p) = self.blocks().dirty.get_mut(&id) {
                    p.uploading = false;
                }
                return;
            }
            if self.blocks().dirty.get(&id).is_none_or(|p| p.discard) {
                break;
            }
            match self.store.put(&key, data.clone()).await {
                Ok(()) => {
                    self.counters.uploads.fetch_add(1, Ordering::Relaxed);
                    self.counters
                        .uploaded_bytes
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                    self.counters
                        .last_upload
                        .store(crate::os::now_ns() as u64, Ordering::Relaxed);
                    self.upload_succeeded();
                    break;
                }
                Err(e) => {
                    attempt += 1;
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    self.counters.retries.fetch_add(1, Ordering::Relaxed);
                    let delay = backoff(attempt);
                    self.upload_failed(&e, attempt, delay);
                    tokio::time::sleep(delay).await;
                }
            }
        }
        let discard = self.blocks().dirty.get(&id).is_none_or(|p| p.discard);
        if discard {
            // Garbage by now: the reclaim that wanted it gone left the
            // delete to us, since our PUT could have landed after its own.
            if let Err(e) = self.store.delete(&key).await {
                tracing::warn!(error = %e, "cannot delete an unreferenced block; fsck will find it");
            }
        }
        self.finish(&id, !discard);
    }

    /// Moves an uploaded block to the clean side (or drops it) and wakes
    /// whoever waits for uploads.
    fn finish(&self, id: &ObjectId, keep: bool) {
        let mut blocks = self.blocks();
        let Some(p) = blocks.dirty.remove(id) else {
            return;
        };
        blocks.dirty_bytes -= p.len;
        let dirty = self.path("dirty", id);
        if keep && std::fs::rename(&dirty, self.path("clean", id)).is_ok() {
            blocks.clean().put(*id, p.len);
            blocks.clean_bytes += p.len;
        } else {
            let _ = std::fs::remove_file(&dirty);
        }
        drop(blocks);
        self.progress.notify_waiters();
    }
}
