//! Journal segments in the object store: `journal/<number>` (20 digits),
//! each a sealed run of metadata operations (`meta::journal`), numbered on
//! from the checkpoint (`meta/<number>.snap`, the full state after segment
//! `<number>`) they follow. A state is the newest checkpoint plus the
//! segments after it, applied in order up to the first missing number.
//!
//! (Work in progress: the writer does not upload segments yet.)

use super::persist::{RestoreError, restore, snapshot_generations};
use crate::codec;
use crate::keyring::Keyring;
use crate::meta::MetadataStore;
use crate::meta::journal::{apply, decode_ops};
use crate::store::{ObjectStore, StoreError};
use bytes::Bytes;

const PREFIX: &str = "journal/";
const VERSION: u8 = 1;
/// Attempts when the writer deletes the checkpoint being read.
const ATTEMPTS: usize = 10;

pub fn segment_key(number: u64) -> String {
    format!("{PREFIX}{number:020}")
}

/// Numbers of the segments in the store, in order.
pub async fn segment_numbers(store: &dyn ObjectStore) -> Result<Vec<u64>, StoreError> {
    let mut numbers: Vec<u64> = store
        .list(PREFIX)
        .await?
        .iter()
        .filter_map(|k| k.strip_prefix(PREFIX)?.parse().ok())
        .collect();
    numbers.sort_unstable();
    Ok(numbers)
}

/// Seals encoded operations (each as `MetadataStore::journal_after` gives
/// them) as segment `number`.
pub fn seal_segment(ring: &Keyring, number: u64, ops: &[Vec<u8>]) -> Bytes {
    let mut plain = Vec::with_capacity(1 + ops.iter().map(Vec::len).sum::<usize>());
    plain.push(VERSION);
    for op in ops {
        plain.extend_from_slice(op);
    }
    Bytes::from(codec::seal_metadata(ring, &segment_key(number), &plain))
}

/// Applies segment `number` from the store to `meta`; `false` if it is not
/// in the store.
async fn apply_segment(
    store: &dyn ObjectStore,
    ring: &Keyring,
    meta: &mut dyn MetadataStore,
    number: u64,
) -> Result<bool, RestoreError> {
    let key = segment_key(number);
    let sealed = match store.get(&key).await {
        Ok(sealed) => sealed,
        Err(StoreError::NotFound) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let plain = codec::open_metadata(ring, &key, &sealed).map_err(|e| RestoreError::Integrity(number, e))?;
    let Some((&VERSION, ops)) = plain.split_first() else {
        return Err(RestoreError::Meta(crate::meta::MetaError::Corrupt(format!(
            "journal segment {number}: unknown version"
        ))));
    };
    for op in decode_ops(ops)? {
        apply(meta, op)?;
    }
    Ok(true)
}

/// Loads the volume's state into the empty `meta`: the newest checkpoint,
/// then every segment after it up to the first missing number. Returns the
/// number of the last segment applied (the state's generation), or `None`
/// when the store holds no checkpoint.
pub async fn load_state(
    store: &dyn ObjectStore,
    ring: &Keyring,
    meta: &mut dyn MetadataStore,
) -> Result<Option<u64>, RestoreError> {
    for attempt in 1.. {
        let Some(checkpoint) = snapshot_generations(store).await?.last().copied() else {
            return Ok(None);
        };
        match restore(store, ring, meta, checkpoint).await {
            Err(RestoreError::Store(StoreError::NotFound)) if attempt < ATTEMPTS => continue,
            Err(e) => return Err(e),
            Ok(()) => {}
        }
        let mut last = checkpoint;
        meta.begin()?;
        let applied = async {
            while apply_segment(store, ring, meta, last + 1).await? {
                last += 1;
            }
            Ok::<_, RestoreError>(())
        }
        .await;
        match applied {
            Ok(()) => meta.commit()?,
            Err(e) => {
                meta.rollback();
                return Err(e);
            }
        }
        meta.set_generation(last)?;
        return Ok(Some(last));
    }
    unreachable!("the loop returns at its last attempt")
}
