//! Checkpoints: `meta/<generation>.snap` (20 digits), the full metadata
//! state of one generation, sealed. The writer stores one every minute or
//! so; a reader starts from the newest. Layout: FORMAT.md, "Checkpoints".

use super::StateError;
use crate::codec;
use crate::keyring::Keyring;
use crate::meta::{MetadataStore, decode_state, encode_state};
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

/// Seals the whole state of `meta` as the checkpoint of `generation`.
pub fn seal(ring: &Keyring, meta: &dyn MetadataStore, generation: u64) -> Result<Bytes, StateError> {
    let plain = encode_state(|sink| meta.export(sink))?;
    Ok(Bytes::from(codec::seal_metadata(ring, &key(generation), &plain)))
}

/// Seals the whole state of `meta` as the checkpoint of `generation` and
/// stores it.
pub async fn store(
    store: &dyn ObjectStore,
    ring: &Keyring,
    meta: &dyn MetadataStore,
    generation: u64,
) -> Result<(), StateError> {
    let sealed = seal(ring, meta, generation)?;
    store.put(&key(generation), sealed).await?;
    Ok(())
}

/// Loads the checkpoint of `generation` into an empty metadata store.
pub async fn load(
    store: &dyn ObjectStore,
    ring: &Keyring,
    meta: &mut dyn MetadataStore,
    generation: u64,
) -> Result<(), StateError> {
    let key = key(generation);
    let sealed = store.get(&key).await?;
    let plain = codec::open_metadata(ring, &key, &sealed).map_err(|e| StateError::Integrity(key.clone(), e))?;
    meta.import(&mut decode_state(&plain)?.into_iter())?;
    meta.set_generation(generation)?;
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
