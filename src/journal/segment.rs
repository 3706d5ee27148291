//! Journal segments: `journal/<number>` (20 digits), each a sealed run of
//! metadata operations (`meta::ops`) taking the state from generation
//! `number - 1` to `number`.
//!
//! The writer creates segment `n` only if absent: whoever creates it owns
//! generation `n`, so a second writer finds it taken and stops (fencing).
//! Layout: FORMAT.md, "Journal segments".

use super::StateError;
use crate::codec;
use crate::keyring::Keyring;
use crate::meta::ops::{JournalOp, apply, decode_ops};
use crate::meta::{MetaError, MetadataStore, in_transaction};
use crate::store::{ObjectStore, StoreError};
use bytes::Bytes;

pub const PREFIX: &str = "journal/";
const VERSION: u8 = 1;

pub fn key(number: u64) -> String {
    format!("{PREFIX}{number:020}")
}

/// The number of the segment with object key `key`.
pub fn number_of(key: &str) -> Option<u64> {
    key.strip_prefix(PREFIX)?.parse().ok()
}

/// Numbers of the segments in the store, in order.
pub async fn numbers(store: &dyn ObjectStore) -> Result<Vec<u64>, StoreError> {
    let mut numbers: Vec<u64> = store.list(PREFIX).await?.iter().filter_map(|k| number_of(k)).collect();
    numbers.sort_unstable();
    Ok(numbers)
}

/// Seals encoded operations (back to back, as the journal table holds them)
/// as segment `number`.
pub fn seal(ring: &Keyring, number: u64, ops: &[u8]) -> Bytes {
    let mut plain = Vec::with_capacity(1 + ops.len());
    plain.push(VERSION);
    plain.extend_from_slice(ops);
    Bytes::from(codec::seal_metadata(ring, &key(number), &plain))
}

/// The encoded operations of segment `number`, `None` if it is not in the
/// store.
pub async fn read(store: &dyn ObjectStore, ring: &Keyring, number: u64) -> Result<Option<Vec<u8>>, StateError> {
    let key = key(number);
    let sealed = match store.get(&key).await {
        Ok(sealed) => sealed,
        Err(StoreError::NotFound) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut plain = codec::open_metadata(ring, &key, &sealed).map_err(|e| StateError::Integrity(key.clone(), e))?;
    if plain.first() != Some(&VERSION) {
        return Err(StateError::Meta(MetaError::Corrupt(format!(
            "journal segment {number}: unknown version"
        ))));
    }
    plain.remove(0);
    Ok(Some(plain))
}

/// The segments after generation `after`, in order, up to the first
/// missing one.
pub async fn fetch_after(
    store: &dyn ObjectStore,
    ring: &Keyring,
    after: u64,
) -> Result<Vec<(u64, Vec<JournalOp>)>, StateError> {
    let mut segments = Vec::new();
    let mut next = after + 1;
    while let Some(ops) = read(store, ring, next).await? {
        segments.push((next, decode_ops(&ops)?));
        next += 1;
    }
    Ok(segments)
}

/// Applies fetched segments to `meta` in one transaction and moves it to
/// the generation of the last.
pub fn apply_all(meta: &mut dyn MetadataStore, segments: Vec<(u64, Vec<JournalOp>)>) -> Result<(), MetaError> {
    let Some(last) = segments.last().map(|(n, _)| *n) else {
        return Ok(());
    };
    in_transaction(meta, |meta| {
        for op in segments.into_iter().flat_map(|(_, ops)| ops) {
            apply(meta, op)?;
        }
        meta.set_generation(last)
    })
}

/// If the encoded operations `ops` (a segment found in the store) are the
/// first entries of `meta`'s journal — this cache uploaded them, and then
/// lost the answer or crashed — the sequence number of the last of them.
pub fn journal_prefix(meta: &dyn MetadataStore, ops: &[u8]) -> Result<Option<u64>, MetaError> {
    let mut mine = Vec::with_capacity(ops.len());
    let mut upto = 0;
    let mut after = 0;
    while mine.len() < ops.len() {
        let entries = meta.journal_after(after, 1024)?;
        let Some((last, _)) = entries.last() else { break };
        after = *last;
        for (seq, op) in entries {
            if mine.len() >= ops.len() {
                break;
            }
            mine.extend_from_slice(&op);
            upto = seq;
        }
    }
    Ok((mine == ops).then_some(upto))
}
