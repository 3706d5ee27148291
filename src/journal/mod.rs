//! The volume's metadata in the object store: how a metadata state becomes
//! objects, and objects a state again.
//!
//! Objects this layer owns (layouts in FORMAT.md):
//!
//! - `meta/<generation>.snap` — a **checkpoint**: the full state of one
//!   generation (`checkpoint`);
//! - `journal/<generation>` — a **segment**: the operations taking the
//!   state from one generation to the next, created only if absent, so a
//!   generation has one owner (`segment`);
//! - `snapshots/<id>` — a user's **named snapshot**, a copy of one state
//!   (`snapshots`);
//! - `lease` — the read-write mount that holds the volume (`lease`);
//! - `anchor/<inverted sequence>` — on buckets with S3 Object Lock,
//!   retained witnesses of the newest position, for hosts that have never
//!   mounted the volume (`anchor`).
//!
//! And one file of the cache directory: `seen`, the newest state and
//! superblock revision this host has seen, so an older store is refused
//! (`seen`).
//!
//! The **live state** is the newest checkpoint plus the segments after it,
//! up to the first missing number (`live`). The writing mount uploads
//! segments and checkpoints, decides whether a taken name is its own or
//! another writer's, and reclaims what a checkpoint no longer references
//! (`writer`). The filesystem core holds a [`Writer`]; the offline tools
//! (fsck, gc, snapshots, restore) use the free functions. Nothing here
//! knows about files or FUSE: it moves metadata states, sealed, between a
//! `MetadataStore` and an `ObjectStore`.

pub mod anchor;
pub mod checkpoint;
pub mod lease;
pub mod live;
pub mod seen;
pub mod segment;
pub mod snapshots;
mod writer;

pub use writer::{FINAL_SYNC_LIMIT, SEGMENT_OPS, SharedMeta, SyncError, Writer, WriterOptions};

use crate::codec::CodecError;
use crate::meta::MetaError;
use crate::store::StoreError;

/// The largest journal segment read: the writer cuts segments at
/// `SEGMENT_OPS` entries and `SEGMENT_BYTES` of operations, far below it.
pub const MAX_SEALED: u64 = 256 << 20;

/// The largest checkpoint or named snapshot read (a state of some tens of
/// millions of files): a larger object is refused, never allocated.
pub const MAX_STATE: u64 = 8 << 30;

/// A metadata state could not be read from or written to the store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("metadata {0} failed its integrity check: {1}")]
    Integrity(String, CodecError),
    #[error(
        "metadata {0} does not follow the state before it (it names another predecessor): the store mixes \
         pieces of different histories, so the live state cannot be trusted. Run `s3vault fsck`; put meta/ and \
         journal/ back from the bucket's versions or a backup"
    )]
    Unchained(String),
    #[error(
        "journal segment {missing} is missing although newer segments (up to {newest}) are in the store: the \
         live state cannot be loaded completely. Run `s3vault fsck`; put journal/ back from the bucket's \
         versions or a backup, or mount a named snapshot with --snapshot"
    )]
    Gap { missing: u64, newest: u64 },
    #[error(transparent)]
    Meta(#[from] MetaError),
}
