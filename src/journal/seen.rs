//! What this host has seen of the volume, remembered in its cache
//! directory (`<cache>/seen`, sealed): the newest metadata generation with
//! its journal chain head, and the newest superblock revision. A store
//! that is older than that — segments deleted, old `meta/` and `journal/`
//! objects or an old superblock put back — is refused at mount instead of
//! being taken for the volume (FORMAT.md, "Threat model"). Only an
//! explicit, audited `--accept-older-state` moves it back.

use crate::codec;
use crate::crypto;
use crate::keyring::Keyring;
use crate::meta::ChainHead;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const FILE: &str = "seen";
const VERSION: u8 = 1;
/// The name its sealing binds, so no object of the store passes for it.
const SEAL_NAME: &str = "cache/seen";
pub(super) const LEN: usize = 1 + 8 + 1 + 32 + 8;

/// A position of the volume: a metadata generation and its chain head
/// (`None` when unknown: format 1 objects).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Position {
    pub generation: u64,
    pub head: Option<ChainHead>,
}

impl Position {
    /// The head in hex, or "unknown".
    pub fn head_hex(&self) -> String {
        self.head.map_or_else(|| "unknown".into(), hex::encode)
    }
}

/// `generation=N head=H`, as audit records carry it (`audit verify` reads
/// the generation back).
impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "generation={} head={}", self.generation, self.head_hex())
    }
}

/// What the host has seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    pub state: Position,
    pub revision: u64,
}

/// How the store compares with what the host has seen.
#[derive(Debug, PartialEq, Eq)]
pub enum Staleness {
    /// As new or newer.
    Fresh,
    /// An older generation than seen.
    Older { seen: Position, store: Position },
    /// The same generation with another chain head: another history.
    Replaced { seen: Position, store: Position },
}

impl Seen {
    /// Compares the store's live position with what was seen.
    pub fn compare(&self, store: Position) -> Staleness {
        let seen = self.state;
        if store.generation < seen.generation {
            return Staleness::Older { seen, store };
        }
        match (seen.head, store.head) {
            (Some(a), Some(b)) if store.generation == seen.generation && !crypto::mac_eq(&a, &b) => {
                Staleness::Replaced { seen, store }
            }
            _ => Staleness::Fresh,
        }
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(LEN);
        b.push(VERSION);
        b.extend_from_slice(&self.state.generation.to_be_bytes());
        b.push(u8::from(self.state.head.is_some()));
        b.extend_from_slice(&self.state.head.unwrap_or([0; 32]));
        b.extend_from_slice(&self.revision.to_be_bytes());
        b
    }

    pub(super) fn decode(b: &[u8]) -> Option<Seen> {
        if b.len() != LEN || b[0] != VERSION {
            return None;
        }
        let u64_at = |at: usize| u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        let head: ChainHead = b[10..42].try_into().expect("32 bytes");
        Some(Seen {
            state: Position {
                generation: u64_at(1),
                head: (b[9] == 1).then_some(head),
            },
            revision: u64_at(42),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SeenError {
    #[error(
        "{0} does not open with this volume's key (damaged, or from another volume); it records what this host \
         has seen of the volume, so it is not ignored: move it away to start over"
    )]
    Unreadable(PathBuf),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// The cache directory's record, kept current as the mount moves on.
pub struct SeenFile {
    path: PathBuf,
    ring: Arc<Keyring>,
    seen: Mutex<Seen>,
}

impl SeenFile {
    /// Opens the record of `cache_dir` (all zeros if the host has seen
    /// nothing yet).
    pub fn open(cache_dir: &Path, ring: Arc<Keyring>) -> Result<SeenFile, SeenError> {
        let path = cache_dir.join(FILE);
        let seen = match std::fs::read(&path) {
            Ok(sealed) => codec::open_metadata(&ring, SEAL_NAME, &sealed)
                .ok()
                .and_then(|plain| Seen::decode(&plain))
                .ok_or_else(|| SeenError::Unreadable(path.clone()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Seen::default(),
            Err(e) => return Err(SeenError::Io(path, e)),
        };
        Ok(SeenFile {
            path,
            ring,
            seen: Mutex::new(seen),
        })
    }

    pub fn get(&self) -> Seen {
        *self.lock()
    }

    /// Notes that the store holds `state` (newer states only).
    pub fn advance(&self, state: Position) -> Result<(), SeenError> {
        self.update(|seen| {
            if state.generation >= seen.state.generation {
                seen.state = state;
            }
        })
    }

    /// Notes the superblock revision unlocked (newer ones only).
    pub fn advance_revision(&self, revision: u64) -> Result<(), SeenError> {
        self.update(|seen| seen.revision = seen.revision.max(revision))
    }

    /// Takes the store's older `state` and `revision` as the newest (an
    /// administrator accepted a restored older volume).
    pub fn accept(&self, state: Position, revision: u64) -> Result<(), SeenError> {
        self.update(|seen| *seen = Seen { state, revision })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, change: impl FnOnce(&mut Seen)) -> Result<(), SeenError> {
        let mut seen = self.lock();
        let before = *seen;
        change(&mut seen);
        if *seen == before {
            return Ok(());
        }
        let sealed = codec::seal_metadata(&self.ring, SEAL_NAME, &seen.encode());
        let fail = |e| SeenError::Io(self.path.clone(), e);
        // Replaced whole by a rename: a crash leaves the old record or the
        // new, never a torn one.
        let tmp = self.path.with_extension("tmp");
        let mut file = std::fs::File::create(&tmp).map_err(fail)?;
        file.write_all(&sealed).and_then(|()| file.sync_all()).map_err(fail)?;
        std::fs::rename(&tmp, &self.path).map_err(fail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SecretKey;

    fn at(generation: u64, head: u8) -> Position {
        Position {
            generation,
            head: Some([head; 32]),
        }
    }

    #[test]
    fn older_or_replaced_states_are_told_apart_from_newer_ones() {
        let seen = Seen {
            state: at(10, 1),
            revision: 2,
        };
        assert_eq!(seen.compare(at(10, 1)), Staleness::Fresh);
        assert_eq!(seen.compare(at(11, 9)), Staleness::Fresh);
        assert!(matches!(seen.compare(at(9, 1)), Staleness::Older { .. }));
        assert!(matches!(seen.compare(at(10, 2)), Staleness::Replaced { .. }));
        // A format 1 store has no head to compare.
        let unknown = Position {
            generation: 10,
            head: None,
        };
        assert_eq!(seen.compare(unknown), Staleness::Fresh);
    }

    #[test]
    fn the_record_survives_a_reopen_only_with_its_own_volume_key() {
        let dir = tempfile::tempdir().unwrap();
        let ring = Arc::new(Keyring::new(&SecretKey::random(), [1; 16]));
        let file = SeenFile::open(dir.path(), ring.clone()).unwrap();
        assert_eq!(file.get(), Seen::default());
        file.advance(at(5, 3)).unwrap();
        file.advance(at(4, 4)).unwrap();
        file.advance_revision(7).unwrap();
        file.advance_revision(6).unwrap();
        let expected = Seen {
            state: at(5, 3),
            revision: 7,
        };
        assert_eq!(SeenFile::open(dir.path(), ring.clone()).unwrap().get(), expected);
        file.accept(at(3, 3), 6).unwrap();
        assert_eq!(SeenFile::open(dir.path(), ring).unwrap().get().state, at(3, 3));
        let other = Arc::new(Keyring::new(&SecretKey::random(), [1; 16]));
        assert!(matches!(
            SeenFile::open(dir.path(), other),
            Err(SeenError::Unreadable(_))
        ));
    }
}
