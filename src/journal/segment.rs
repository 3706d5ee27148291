//! Journal segments: `journal/<number>` (20 digits), each a sealed run of
//! metadata operations (`meta::ops`) taking the state from generation
//! `number - 1` to `number`.
//!
//! The writer creates segment `n` only if absent: whoever creates it owns
//! generation `n`, so a second writer finds it taken and stops (fencing).
//! Layout: FORMAT.md, "Journal segments".

use super::{MAX_SEALED, StateError};
use crate::keyring::Keyring;
use crate::meta::ops::{JournalOp, apply, decode_ops};
use crate::meta::{ChainHead, MetaError, MetadataStore, in_transaction};
use crate::store::{ObjectStore, StoreError};
use crate::{codec, crypto};
use bytes::Bytes;

pub const PREFIX: &str = "journal/";
/// Format 2 segments name their predecessor's chain head; format 1 ones
/// (read, never written) do not.
const VERSION: u8 = 2;
const VERSION_1: u8 = 1;
const HEAD_LEN: usize = 32;

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

/// The chain head after segment `number`, whose predecessor's head is
/// `prev` and whose encoded operations are `ops`. A volume's chain starts
/// at generation 1 (its first checkpoint, made by `init`) with the head of
/// an empty segment 1 after 32 zero bytes.
pub fn chain(ring: &Keyring, number: u64, prev: &ChainHead, ops: &[u8]) -> ChainHead {
    crypto::hmac(
        &ring.journal_chain_key(),
        &[b"s3vault v1 journal head", &number.to_be_bytes(), prev, ops],
    )
}

/// The head of a new volume's first generation.
pub fn genesis(ring: &Keyring) -> ChainHead {
    chain(ring, 1, &[0; HEAD_LEN], &[])
}

/// Seals encoded operations (back to back, as the journal table holds them)
/// as segment `number`, following the state whose chain head is `prev`
/// (zeros when unknown: a volume made by format 1). Returns the sealed
/// object and the segment's own head.
pub fn seal(ring: &Keyring, number: u64, prev: Option<&ChainHead>, ops: &[u8]) -> (Bytes, ChainHead) {
    let prev = prev.copied().unwrap_or([0; HEAD_LEN]);
    let mut plain = Vec::with_capacity(1 + HEAD_LEN + ops.len());
    plain.push(VERSION);
    plain.extend_from_slice(&prev);
    plain.extend_from_slice(ops);
    let sealed = Bytes::from(codec::seal_metadata(ring, &key(number), &plain));
    (sealed, chain(ring, number, &prev, ops))
}

/// A segment read back from the store.
#[derive(Debug)]
pub struct Segment {
    pub number: u64,
    /// The chain head of the state it follows (`None` in format 1).
    pub prev: Option<ChainHead>,
    /// Its encoded operations.
    pub ops: Vec<u8>,
    /// The chain head after it (`None` in format 1).
    pub head: Option<ChainHead>,
}

impl Segment {
    /// Checks that the segment follows a state whose head is `head` (when
    /// both are known).
    pub fn check_follows(&self, head: Option<&ChainHead>) -> Result<(), StateError> {
        match (head, &self.prev) {
            (Some(head), Some(prev)) if !crypto::mac_eq(head, prev) => Err(StateError::Unchained(key(self.number))),
            _ => Ok(()),
        }
    }
}

/// Segment `number`, `None` if it is not in the store.
pub async fn read(store: &dyn ObjectStore, ring: &Keyring, number: u64) -> Result<Option<Segment>, StateError> {
    let key = key(number);
    let sealed = match store.get_at_most(&key, MAX_SEALED).await {
        Ok(sealed) => sealed,
        Err(StoreError::NotFound) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut plain = codec::open_metadata(ring, &key, &sealed).map_err(|e| StateError::Integrity(key.clone(), e))?;
    // The operations are the rest of the plaintext, taken without a copy.
    let segment = match plain.first() {
        Some(&VERSION) if plain.len() > HEAD_LEN => {
            let ops = plain.split_off(1 + HEAD_LEN);
            let prev: ChainHead = plain[1..].try_into().expect("the head's length");
            Segment {
                number,
                head: Some(chain(ring, number, &prev, &ops)),
                prev: Some(prev),
                ops,
            }
        }
        Some(&VERSION_1) => Segment {
            number,
            prev: None,
            ops: plain.split_off(1),
            head: None,
        },
        _ => {
            return Err(StateError::Meta(MetaError::Corrupt(format!(
                "journal segment {number}: unknown version"
            ))));
        }
    };
    Ok(Some(segment))
}

/// Segments fetched to bring a state forward, and the chain head they end
/// at.
pub struct Fetched {
    pub segments: Vec<(u64, Vec<JournalOp>)>,
    pub head: Option<ChainHead>,
}

impl Fetched {
    /// The generation reached from `from`.
    pub fn reached(&self, from: u64) -> u64 {
        self.segments.last().map_or(from, |(n, _)| *n)
    }
}

/// The segments after generation `after` (whose chain head is `head`), in
/// order, each checked to follow the one before. A missing number with
/// newer segments after it is a gap: refused, since applying only what
/// comes before it would present an old state as the live one (the caller
/// checks first whether a newer checkpoint explains it).
pub async fn fetch_after(
    store: &dyn ObjectStore,
    ring: &Keyring,
    after: u64,
    head: Option<ChainHead>,
) -> Result<Fetched, StateError> {
    let mut fetched = Fetched {
        segments: Vec::new(),
        head,
    };
    let mut next = after + 1;
    loop {
        let segment = match read(store, ring, next).await? {
            Some(segment) => segment,
            None => match gap_after(store, ring, next).await? {
                Some(segment) => segment,
                None => return Ok(fetched),
            },
        };
        segment.check_follows(fetched.head.as_ref())?;
        fetched.head = segment.head;
        fetched.segments.push((next, decode_ops(&segment.ops)?));
        next += 1;
    }
}

/// Segment `missing` was not found: `None` if no newer one is listed (the
/// end of the journal); the segment if it has appeared since (a writer
/// uploading while we read); otherwise a gap.
async fn gap_after(store: &dyn ObjectStore, ring: &Keyring, missing: u64) -> Result<Option<Segment>, StateError> {
    let Some(&newest) = numbers(store).await?.last() else {
        return Ok(None);
    };
    if newest <= missing {
        return Ok(None);
    }
    match read(store, ring, missing).await? {
        Some(segment) => Ok(Some(segment)),
        None => Err(StateError::Gap { missing, newest }),
    }
}

/// Applies fetched segments to `meta` in one transaction and moves it to
/// the generation (and chain head) of the last.
pub fn apply_all(meta: &mut dyn MetadataStore, fetched: Fetched) -> Result<(), MetaError> {
    let Some(last) = fetched.segments.last().map(|(n, _)| *n) else {
        return Ok(());
    };
    in_transaction(meta, |meta| {
        for op in fetched.segments.into_iter().flat_map(|(_, ops)| ops) {
            apply(meta, op)?;
        }
        meta.set_generation(last)?;
        meta.set_head(fetched.head)
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
