//! The write-back uploader: cut packs go to the store through a bounded
//! pool (in number and in bytes), retried with backoff for as long as it
//! takes. A pack is never dropped because the store failed; it leaves the
//! queue only when uploaded or when the metadata no longer references it.

use super::{PackCache, UPLOAD_BUDGET, backoff, data_key};
use crate::codec::ObjectId;
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::Semaphore;

impl PackCache {
    /// Runs the uploader until the runtime shuts down.
    pub fn spawn_uploader(self: &Arc<Self>) {
        let cache = self.clone();
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(cache.config.upload_concurrency.max(1)));
            let mebibytes = Arc::new(Semaphore::new((UPLOAD_BUDGET >> 20) as usize));
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (id, len) = cache.next_queued().await;
                let wanted = (len.div_ceil(1 << 20) as u32).clamp(1, (UPLOAD_BUDGET >> 20) as u32);
                let Ok(budget) = mebibytes.clone().acquire_many_owned(wanted).await else {
                    return;
                };
                let cache = cache.clone();
                tokio::spawn(async move {
                    cache.upload(id).await;
                    drop((slot, budget));
                });
            }
        });
    }

    /// Takes the next queued pack, marking it in flight; never returns
    /// once paused.
    async fn next_queued(&self) -> (ObjectId, u64) {
        loop {
            let queued = self.queued.notified();
            tokio::pin!(queued);
            queued.as_mut().enable();
            if !self.paused.load(Ordering::SeqCst) {
                let mut packs = self.packs();
                while let Some(id) = packs.queue.pop_front() {
                    if let Some(p) = packs.dirty.get_mut(&id) {
                        p.uploading = true;
                        p.attempted = true;
                        return (id, p.len);
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
                // the pack is lost, and fsck will name the files it held.
                tracing::error!(error = %e, object = %hex::encode(id), "a pack waiting for upload is unreadable");
                self.finish(&id, false);
                return;
            }
        };
        let key = data_key(&id);
        let mut attempt = 0;
        loop {
            if self.paused.load(Ordering::SeqCst) {
                if let Some(p) = self.packs().dirty.get_mut(&id) {
                    p.uploading = false;
                }
                return;
            }
            if self.packs().dirty.get(&id).is_none_or(|p| p.discard) {
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
        let discard = self.packs().dirty.get(&id).is_none_or(|p| p.discard);
        if discard {
            // Garbage by now: the reclaim that wanted it gone left the
            // delete to us, since our PUT could have landed after its own.
            if let Err(e) = self.store.delete(&key).await {
                tracing::warn!(error = %e, "cannot delete an unreferenced pack; fsck will find it");
            }
        }
        self.finish(&id, !discard);
    }

    /// Moves an uploaded pack to the clean side (or drops it) and wakes
    /// whoever waits for uploads.
    fn finish(&self, id: &ObjectId, keep: bool) {
        let mut packs = self.packs();
        let Some(p) = packs.dirty.remove(id) else {
            return;
        };
        packs.dirty_bytes -= p.len;
        let dirty = self.path("dirty", id);
        if keep && std::fs::rename(&dirty, self.path("clean", id)).is_ok() {
            packs.clean().put(
                *id,
                super::Clean {
                    present: super::Present::whole(p.len),
                },
            );
            packs.clean_bytes += p.len;
        } else {
            let _ = std::fs::remove_file(&dirty);
        }
        drop(packs);
        self.progress.notify_waiters();
    }
}
