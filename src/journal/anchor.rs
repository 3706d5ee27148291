//! The volume's anchors: write-once witnesses in the bucket of how far the
//! volume had got, for hosts that have never mounted it.
//!
//! A host remembers what it has seen (`seen`), but a fresh host has nothing
//! to compare the store with, and whoever can write the bucket can put old
//! `meta/` and `journal/` objects back. On a bucket with S3 Object Lock the
//! writer therefore leaves anchors, `anchor/<inverted sequence>`: created
//! only if absent, retained (no one can delete or overwrite that version
//! before the retention ends), sealed and bound to their name. Each holds
//! the live position (generation and chain head) and the superblock
//! revision. A delete only hides a version behind a delete marker, so
//! readers list versions; the newest anchor that authenticates is a floor
//! the store must not be below. Sequences count anchors, not generations,
//! so an audited `--accept-older-state` can lay a lower floor over a
//! higher one. Names sort newest first (the sequence is inverted).

use super::seen::{self, Seen};
use crate::codec;
use crate::keyring::Keyring;
use crate::store::{ObjectStore, StoreError};
use bytes::Bytes;
use std::time::{Duration, SystemTime};

pub const PREFIX: &str = "anchor/";
const VERSION: u8 = 1;
const LEN: usize = 1 + 8 + seen::LEN + 8;
/// An anchor is some hundred bytes; a larger object is not one.
const MAX_SEALED: u64 = 4096;

/// A writer lays a new anchor when its position moved and the newest
/// anchor is this old (and at unmount, and when it must lower the floor):
/// some 9,000 objects a year at most for a volume always busy.
pub const INTERVAL: Duration = Duration::from_secs(3600);

/// One anchor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Anchor {
    /// 1 for a volume's first anchor, one more for each after it.
    pub sequence: u64,
    pub seen: Seen,
    /// When it was laid, in seconds since the epoch.
    pub written: u64,
}

/// The newest anchor of a volume and the anchor versions that did not
/// authenticate (planted by someone without the key).
#[derive(Debug, Default)]
pub struct Found {
    pub newest: Option<Anchor>,
    pub forged: Vec<String>,
}

/// The object name of anchor `sequence`.
pub fn key(sequence: u64) -> String {
    format!("{PREFIX}{:020}", u64::MAX - sequence)
}

impl Anchor {
    pub fn key(&self) -> String {
        key(self.sequence)
    }

    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(LEN);
        b.push(VERSION);
        b.extend_from_slice(&self.sequence.to_be_bytes());
        b.extend_from_slice(&self.seen.encode());
        b.extend_from_slice(&self.written.to_be_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Anchor> {
        if b.len() != LEN || b[0] != VERSION {
            return None;
        }
        let u64_at = |at: usize| u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        Some(Anchor {
            sequence: u64_at(1),
            seen: Seen::decode(&b[9..9 + seen::LEN])?,
            written: u64_at(9 + seen::LEN),
        })
    }

    /// The sealed object, bound to its name (so no anchor passes for
    /// another, newer one).
    pub fn seal(&self, ring: &Keyring) -> Bytes {
        Bytes::from(codec::seal_metadata(ring, &self.key(), &self.encode()))
    }

    /// The anchor stored under `key`, if `sealed` is one.
    pub fn open(ring: &Keyring, key: &str, sealed: &[u8]) -> Option<Anchor> {
        let plain = codec::open_metadata(ring, key, sealed).ok()?;
        Anchor::decode(&plain).filter(|a| a.key() == key)
    }

    /// Whether a writer at `seen` should lay a new anchor over this one at
    /// `now`: its position moved and the anchor is older than `INTERVAL`,
    /// or it is about to go (`last_chance`); at once when the anchor would
    /// refuse the writer's own state (an older state was accepted, or a
    /// key changed).
    pub fn outdated_by(&self, seen: Seen, now: u64, last_chance: bool) -> bool {
        if self.seen == seen {
            return false;
        }
        let diverged = seen.state.generation <= self.seen.state.generation || seen.revision != self.seen.revision;
        diverged || last_chance || now.saturating_sub(self.written) >= INTERVAL.as_secs()
    }
}

/// Finds the newest anchor: the first version, in name order (newest
/// sequence first), that authenticates. Versions hidden by a delete
/// marker count; an anchor-shaped object that does not authenticate is
/// listed as forged and passed over.
pub async fn newest(store: &dyn ObjectStore, ring: &Keyring) -> Result<Found, StoreError> {
    let mut found = Found::default();
    for version in store.list_versions(PREFIX).await? {
        let sealed = match store
            .get_version_at_most(&version.key, version.id.as_deref(), MAX_SEALED)
            .await
        {
            Ok(sealed) => sealed,
            Err(StoreError::TooLarge { .. }) => Bytes::new(),
            // Gone between the listing and the GET: only an expired anchor
            // can go, and a newer one exists then.
            Err(StoreError::NotFound) => continue,
            Err(e) => return Err(e),
        };
        match Anchor::open(ring, &version.key, &sealed) {
            Some(anchor) => {
                found.newest = Some(anchor);
                break;
            }
            None => found.forged.push(version.key),
        }
    }
    Ok(found)
}

/// Lays the anchor after `previous` recording `seen`, retained for
/// `retain_for`; returns it. `StoreError::AlreadyExists` when another
/// writer laid that sequence first.
pub async fn lay(
    store: &dyn ObjectStore,
    ring: &Keyring,
    previous: Option<&Anchor>,
    seen: Seen,
    retain_for: Duration,
) -> Result<Anchor, StoreError> {
    let now = SystemTime::now();
    let anchor = Anchor {
        sequence: previous.map_or(1, |a| a.sequence + 1),
        seen,
        written: crate::os::now_secs(),
    };
    store
        .put_new_retained(&anchor.key(), anchor.seal(ring), now + retain_for)
        .await?;
    Ok(anchor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SecretKey;
    use crate::journal::seen::Position;
    use crate::store::MemoryStore;

    fn new_ring() -> Keyring {
        Keyring::new(&SecretKey::random(), [7; 16])
    }

    fn seen(generation: u64) -> Seen {
        Seen {
            state: Position {
                generation,
                head: Some([generation as u8; 32]),
            },
            revision: 1,
        }
    }

    const RETAIN: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn the_newest_anchor_that_authenticates_wins() {
        let store = MemoryStore::default();
        let ring = new_ring();
        assert_eq!(newest(&store, &ring).await.unwrap().newest, None);
        let first = lay(&store, &ring, None, seen(3), RETAIN).await.unwrap();
        let second = lay(&store, &ring, Some(&first), seen(9), RETAIN).await.unwrap();
        assert_eq!((first.sequence, second.sequence), (1, 2));
        assert!(second.key() < first.key(), "names sort newest first");
        assert_eq!(newest(&store, &ring).await.unwrap().newest, Some(second));

        // Someone without the key plants a newer-looking anchor, and
        // copies the first anchor's bytes to a newer name: both are passed
        // over, and named.
        store.put(&key(3), Bytes::from_static(b"junk")).await.unwrap();
        store.put(&key(4), first.seal(&ring)).await.unwrap();
        let found = newest(&store, &ring).await.unwrap();
        assert_eq!(found.newest, Some(second));
        assert_eq!(found.forged, vec![key(4), key(3)]);

        // Another volume's anchor does not open with this key.
        let other = new_ring();
        assert_eq!(newest(&store, &other).await.unwrap().newest, None);
    }

    #[tokio::test]
    async fn a_sequence_is_laid_once() {
        let store = MemoryStore::default();
        let ring = new_ring();
        lay(&store, &ring, None, seen(1), RETAIN).await.unwrap();
        assert!(matches!(
            lay(&store, &ring, None, seen(2), RETAIN).await,
            Err(StoreError::AlreadyExists)
        ));
    }

    #[test]
    fn a_new_anchor_is_due_when_the_position_moved_and_time_passed_or_the_floor_drops() {
        let anchor = Anchor {
            sequence: 5,
            seen: seen(10),
            written: 1_000_000,
        };
        let soon = anchor.written + 60;
        let later = anchor.written + INTERVAL.as_secs();
        assert!(!anchor.outdated_by(seen(10), later, true), "nothing moved");
        assert!(!anchor.outdated_by(seen(11), soon, false));
        assert!(anchor.outdated_by(seen(11), soon, true), "unmount");
        assert!(anchor.outdated_by(seen(11), later, false));
        assert!(anchor.outdated_by(seen(4), soon, false), "an accepted older state");
        let mut replaced = seen(10);
        replaced.state.head = Some([0xee; 32]);
        assert!(
            anchor.outdated_by(replaced, soon, false),
            "another history at the same generation"
        );
        let mut older_superblock = seen(10);
        older_superblock.revision = 0;
        assert!(anchor.outdated_by(older_superblock, soon, false));
    }
}
