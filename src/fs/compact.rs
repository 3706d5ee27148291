//! Compaction: packs keep the chunks of files since overwritten or deleted
//! until every chunk in them is dead. A pack whose live chunks would fit in
//! at most half of its stored size is rewritten: its live chunks are read,
//! sealed again into the open pack (a new pack, new offsets) and remapped
//! in one metadata transaction that moves only chunks still where they were
//! read from (a file changed meanwhile keeps its new chunk). The old pack
//! then has no chunk left and is garbage like any other: the journal writer
//! deletes it only after a checkpoint without it, after the grace period
//! that lets followers finish reading the state they loaded, and never while
//! a named snapshot references it. A crash at any point leaves either the
//! old mapping (the new pack's chunks unreferenced) or the new one.

use super::data::ToStage;
use super::{Core, FsError, FsResult};
use crate::cache::Wanted;
use crate::codec::{self, ObjectId};
use crate::meta::{ChunkRef, MetadataStore};
use std::collections::HashMap;
use std::sync::atomic::Ordering;

/// How often a read-write mount looks for packs to compact.
pub const COMPACT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// Live bytes moved per pass at most: compaction's bandwidth is bounded to
/// this much per `COMPACT_INTERVAL` (about 1 MiB/s), read once and written
/// once.
const PASS_BYTES: u64 = 64 << 20;

/// What `status` shows of the packs, as of the last compaction pass.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PackStats {
    /// Referenced packs in the store, and their stored bytes.
    pub packs: u64,
    pub stored_bytes: u64,
    /// Sealed bytes of the chunks the live state references.
    pub live_bytes: u64,
    /// Their share of the stored bytes.
    pub live_ratio: Option<f64>,
    /// Packs waiting to be compacted after the last pass.
    pub compaction_pending: u64,
    /// Since mount: packs rewritten and live bytes moved.
    pub compacted_packs: u64,
    pub compacted_bytes: u64,
    /// Unix nanoseconds of the last pass.
    pub last_pass_ns: Option<i64>,
}

/// Whether rewriting a pack of `stored` bytes holding `live` sealed bytes of
/// chunks at least halves what it takes in the store (padding included, so
/// a small pack is not rewritten into another just as large).
pub fn worth_compacting(live: u64, stored: u64) -> bool {
    live > 0 && codec::padded_pack_len(live) * 2 <= stored
}

impl Core {
    /// One compaction pass: lists the packs, rewrites those worth it (the
    /// emptiest first) up to `PASS_BYTES` of live chunks. Returns how many
    /// packs it rewrote.
    pub async fn compact(&self) -> FsResult<u64> {
        if self.is_read_only() {
            return Ok(0);
        }
        let listing = self.store.list_objects("data/").await?;
        let usage: HashMap<ObjectId, u64> = self.meta().pack_usage()?.into_iter().collect();
        let mut stats = PackStats::default();
        let mut candidates = Vec::new();
        for object in listing {
            let Some(id) = object.key.strip_prefix("data/").and_then(|h| hex::decode(h).ok()) else {
                continue;
            };
            let Ok(id) = ObjectId::try_from(id) else { continue };
            // Unreferenced: garbage the writer reclaims, or an orphan for gc.
            let Some(&live) = usage.get(&id) else { continue };
            stats.packs += 1;
            stats.stored_bytes += object.size;
            stats.live_bytes += live;
            if worth_compacting(live, object.size) {
                candidates.push((live as f64 / object.size as f64, id, live));
            }
        }
        candidates.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (mut moved, mut rewritten) = (0u64, 0u64);
        for (_, pack, live) in &candidates {
            if moved >= PASS_BYTES {
                break;
            }
            match self.compact_pack(pack).await {
                Ok(()) => {
                    moved += live;
                    rewritten += 1;
                }
                // Read-only now, or the store failing: the next pass retries.
                Err(FsError::EROFS) => break,
                Err(e) => tracing::warn!(error = %e, "cannot compact a pack; will retry"),
            }
        }
        self.compacted_packs.fetch_add(rewritten, Ordering::Relaxed);
        self.compacted_bytes.fetch_add(moved, Ordering::Relaxed);
        stats.compaction_pending = candidates.len() as u64 - rewritten;
        stats.live_ratio = (stats.stored_bytes > 0).then(|| stats.live_bytes as f64 / stats.stored_bytes as f64);
        stats.last_pass_ns = Some(crate::os::now_ns());
        *self.pack_stats.lock().unwrap_or_else(|e| e.into_inner()) = Some(stats);
        if rewritten > 0 {
            tracing::info!(packs = rewritten, bytes = moved, "compacted packs");
        }
        Ok(rewritten)
    }

    /// Moves the live chunks of `pack` into the open pack.
    async fn compact_pack(&self, pack: &ObjectId) -> FsResult<()> {
        let chunks = self.meta().chunks_in(pack)?;
        let wanted: Vec<Wanted> = chunks
            .iter()
            .map(|&(ino, index, block)| Wanted { ino, index, block })
            .collect();
        let contents = self.fetcher.get_all(&wanted).await?;
        let items: Vec<ToStage<'_>> = chunks
            .iter()
            .zip(&contents)
            .map(|(&(ino, index, _), content)| ToStage {
                ino,
                index,
                content: content.as_slice(),
            })
            .collect();
        let (_, freed) = self
            .stage(&items, |m, staged| {
                let moved = remap_unchanged(m, &chunks, staged)?;
                Ok(crate::meta::release_packs(m, &moved)?)
            })
            .await?;
        self.discard_unuploaded(&freed);
        Ok(())
    }

    /// The packs as of the last compaction pass, with this mount's totals.
    pub(super) fn pack_stats(&self) -> Option<PackStats> {
        let mut stats = self.pack_stats.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
        stats.compacted_packs = self.compacted_packs.load(Ordering::Relaxed);
        stats.compacted_bytes = self.compacted_bytes.load(Ordering::Relaxed);
        Some(stats)
    }
}

/// Points each of `chunks` (inode, index, where it was read from) at its
/// copy in `staged`, unless the file changed it since; returns the chunks
/// moved.
pub(super) fn remap_unchanged(
    m: &mut dyn MetadataStore,
    chunks: &[(u64, u64, ChunkRef)],
    staged: &[Option<ChunkRef>],
) -> FsResult<Vec<ChunkRef>> {
    let mut moved = Vec::with_capacity(chunks.len());
    for (&(ino, index, old), new) in chunks.iter().zip(staged) {
        if m.chunks(ino, index, index)?.first().is_some_and(|(_, c)| *c == old) {
            m.set_chunk(ino, index, *new)?;
            moved.push(old);
        }
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pack_is_rewritten_only_when_that_halves_it() {
        assert!(worth_compacting(1 << 20, 8 << 20));
        assert!(worth_compacting(4 << 20, 9 << 20));
        assert!(!worth_compacting(5 << 20, 9 << 20));
        // Small packs: padding would make the copy as large as the original.
        assert!(!worth_compacting(1000, 64 << 10));
        assert!(!worth_compacting((1 << 20) + 1, 2 << 20));
        assert!(!worth_compacting(0, 8 << 20), "an empty pack is garbage, not work");
    }
}
