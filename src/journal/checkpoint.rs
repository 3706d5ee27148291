//! Checkpoints: `meta/<generation>.snap` (20 digits), the full metadata
//! state of one generation, sealed. The writer stores one every minute or
//! so; a reader starts from the newest. Layout: FORMAT.md, "Checkpoints".

use super::{MAX_STATE, StateError};
use crate::codec;
use crate::keyring::Keyring;
use crate::meta::{ChainHead, MetadataStore, Record, decode_state, encode_state_into};
use crate::store::{ObjectStore, StoreError};
use bytes::Bytes;

pub const PREFIX: &str = "meta/";
const SUFFIX: &str = ".snap";

pub fn key(generation: u64) -> String {
    format!("{PREFIX}{generation:020}{SUFFIX}")
}

fn generation_of(key: &str) -> Option<u64> {
    key.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?.parse().ok()
}

/// Generations of the checkpoints in the store, oldest first.
pub async fn generations(store: &dyn ObjectStore) -> Result<Vec<u64>, StoreError> {
    let mut gens: Vec<u64> = store
        .list(PREFIX)
        .await?
        .iter()
        .filter_map(|k| generation_of(k))
        .collect();
    gens.sort_unstable();
    Ok(gens)
}

/// The newest checkpoint's generation, if any.
pub async fn newest(store: &dyn ObjectStore) -> Result<Option<u64>, StoreError> {
    Ok(generations(store).await?.last().copied())
}

/// A format 2 checkpoint: this byte, the chain head it folds in, then the
/// metadata state. A format 1 checkpoint is the state alone (whose own
/// version byte is 1).
const VERSION: u8 = 2;
const HEAD_LEN: usize = 32;

/// Seals the whole state of `meta` as the checkpoint of `generation`, whose
/// journal chain head is `head`.
pub fn seal(ring: &Keyring, meta: &dyn MetadataStore, generation: u64, head: &ChainHead) -> Result<Bytes, StateError> {
    let mut plain = vec![VERSION];
    plain.extend_from_slice(head);
    encode_state_into(&mut plain, |sink| meta.export(sink))?;
    Ok(Bytes::from(codec::seal_metadata(ring, &key(generation), &plain)))
}

/// Seals the whole state of `meta` as the checkpoint of `generation` and
/// stores it.
pub async fn store(
    store: &dyn ObjectStore,
    ring: &Keyring,
    meta: &dyn MetadataStore,
    generation: u64,
    head: &ChainHead,
) -> Result<(), StateError> {
    let sealed = seal(ring, meta, generation, head)?;
    store.put(&key(generation), sealed).await?;
    Ok(())
}

/// A checkpoint read back: the chain head it folds in (`None` in format 1)
/// and its state.
pub struct Opened {
    pub head: Option<ChainHead>,
    pub records: Vec<Record>,
}

/// Reads and opens the checkpoint of `generation`; `None` if it is not in
/// the store (superseded and deleted, or never there).
pub async fn read(store: &dyn ObjectStore, ring: &Keyring, generation: u64) -> Result<Option<Opened>, StateError> {
    let key = key(generation);
    let sealed = match store.get_at_most(&key, MAX_STATE).await {
        Ok(sealed) => sealed,
        Err(StoreError::NotFound) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let plain = codec::open_metadata(ring, &key, &sealed).map_err(|e| StateError::Integrity(key.clone(), e))?;
    let (head, state) = match plain.split_first() {
        Some((&VERSION, rest)) if rest.len() >= HEAD_LEN => {
            let (head, state) = rest.split_at(HEAD_LEN);
            (
                Some(ChainHead::try_from(head).expect("split at the head's length")),
                state,
            )
        }
        // Format 1: the state's own version byte comes first.
        _ => (None, plain.as_slice()),
    };
    Ok(Some(Opened {
        head,
        records: decode_state(state)?,
    }))
}

/// Loads the checkpoint of `generation` into an empty metadata store,
/// with its generation and chain head.
pub async fn load(
    store: &dyn ObjectStore,
    ring: &Keyring,
    meta: &mut dyn MetadataStore,
    generation: u64,
) -> Result<(), StateError> {
    let opened = read(store, ring, generation).await?.ok_or(StoreError::NotFound)?;
    meta.import(&mut opened.records.into_iter())?;
    meta.set_generation(generation)?;
    meta.set_head(opened.head)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_generation_and_parse_back() {
        assert_eq!(key(7), "meta/00000000000000000007.snap");
        assert_eq!(generation_of(&key(u64::MAX)), Some(u64::MAX));
        assert!(key(9) < key(10));
        assert_eq!(generation_of("meta/7.snap.tmp"), None);
        assert_eq!(generation_of("journal/00000000000000000007"), None);
    }
}
