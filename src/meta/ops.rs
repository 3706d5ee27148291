//! Journal operations: every change to a metadata store as one operation,
//! so that a state is a checkpoint plus the operations made after it.
//!
//! `SqliteStore` records the operations of each mutation in its `journal`
//! table inside the same transaction (so a crash loses none that committed);
//! the persistence layer seals runs of them into journal segments, and a
//! reader replays them with [`apply`]. Additions reuse the state records
//! (an inode, an entry, a block, ...); removals have their own tags.
//! Layout: FORMAT.md, "Journal segments".

use super::state::{Cursor, decode_record, encode_record};
use super::{MetaError, MetadataStore, Record, Result};

const TAG_DELETE_INODE: u8 = 16;
const TAG_REMOVE_ENTRY: u8 = 17;
const TAG_REMOVE_XATTR: u8 = 18;
const TAG_UNMAP_CHUNK: u8 = 19;
const TAG_REMOVE_CHUNKS_FROM: u8 = 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JournalOp {
    /// Insert or replace what the record describes.
    Put(Record),
    DeleteInode(u64),
    RemoveEntry {
        parent: u64,
        name: Vec<u8>,
    },
    RemoveXattr {
        ino: u64,
        name: Vec<u8>,
    },
    UnmapChunk {
        ino: u64,
        index: u64,
    },
    RemoveChunksFrom {
        ino: u64,
        first: u64,
    },
}

impl JournalOp {
    /// The inode whose content or attributes the operation changes (for a
    /// directory entry, the inode it names), if one.
    pub fn inode(&self) -> Option<u64> {
        match self {
            JournalOp::Put(Record::Inode(inode)) => Some(inode.ino),
            JournalOp::Put(
                Record::SymlinkTarget { ino, .. }
                | Record::Entry { ino, .. }
                | Record::Chunk { ino, .. }
                | Record::Xattr { ino, .. },
            ) => Some(*ino),
            JournalOp::Put(Record::NextIno(_)) | JournalOp::DeleteInode(_) | JournalOp::RemoveEntry { .. } => None,
            JournalOp::RemoveXattr { ino, .. }
            | JournalOp::UnmapChunk { ino, .. }
            | JournalOp::RemoveChunksFrom { ino, .. } => Some(*ino),
        }
    }
}

pub fn encode_op(out: &mut Vec<u8>, op: &JournalOp) {
    match op {
        JournalOp::Put(record) => encode_record(out, record),
        JournalOp::DeleteInode(ino) => {
            out.push(TAG_DELETE_INODE);
            out.extend_from_slice(&ino.to_be_bytes());
        }
        JournalOp::RemoveEntry { parent, name } => {
            out.push(TAG_REMOVE_ENTRY);
            out.extend_from_slice(&parent.to_be_bytes());
            out.extend_from_slice(&(name.len() as u16).to_be_bytes());
            out.extend_from_slice(name);
        }
        JournalOp::RemoveXattr { ino, name } => {
            out.push(TAG_REMOVE_XATTR);
            out.extend_from_slice(&ino.to_be_bytes());
            out.push(name.len() as u8);
            out.extend_from_slice(name);
        }
        JournalOp::UnmapChunk { ino, index } => {
            out.push(TAG_UNMAP_CHUNK);
            out.extend_from_slice(&ino.to_be_bytes());
            out.extend_from_slice(&index.to_be_bytes());
        }
        JournalOp::RemoveChunksFrom { ino, first } => {
            out.push(TAG_REMOVE_CHUNKS_FROM);
            out.extend_from_slice(&ino.to_be_bytes());
            out.extend_from_slice(&first.to_be_bytes());
        }
    }
}

/// Every operation encoded back to back in `bytes`.
pub fn decode_ops(bytes: &[u8]) -> Result<Vec<JournalOp>> {
    let mut r = Cursor(bytes);
    let mut ops = Vec::new();
    while !r.0.is_empty() {
        let tag = r.u8()?;
        let op = match tag {
            TAG_DELETE_INODE => JournalOp::DeleteInode(r.u64()?),
            TAG_REMOVE_ENTRY => {
                let parent = r.u64()?;
                let len = r.u16()? as usize;
                JournalOp::RemoveEntry {
                    parent,
                    name: r.take(len)?.to_vec(),
                }
            }
            TAG_REMOVE_XATTR => {
                let ino = r.u64()?;
                let len = r.u8()? as usize;
                JournalOp::RemoveXattr {
                    ino,
                    name: r.take(len)?.to_vec(),
                }
            }
            TAG_UNMAP_CHUNK => JournalOp::UnmapChunk {
                ino: r.u64()?,
                index: r.u64()?,
            },
            TAG_REMOVE_CHUNKS_FROM => JournalOp::RemoveChunksFrom {
                ino: r.u64()?,
                first: r.u64()?,
            },
            tag => JournalOp::Put(
                decode_record(&mut r, tag)?
                    .ok_or_else(|| MetaError::Corrupt(format!("journal: unknown operation tag {tag}")))?,
            ),
        };
        ops.push(op);
    }
    Ok(ops)
}

/// Applies one operation, as the store that recorded it did.
pub fn apply(meta: &mut dyn MetadataStore, op: JournalOp) -> Result<()> {
    match op {
        JournalOp::Put(Record::Inode(inode)) => meta.put_inode(&inode),
        JournalOp::Put(Record::SymlinkTarget { ino, target }) => meta.set_symlink_target(ino, &target),
        JournalOp::Put(Record::Entry { parent, name, ino }) => meta.insert_entry(parent, &name, ino),
        JournalOp::Put(Record::Chunk { ino, index, block }) => meta.set_chunk(ino, index, Some(block)).map(drop),
        JournalOp::Put(Record::NextIno(next)) => meta.set_next_ino(next),
        JournalOp::Put(Record::Xattr { ino, name, value }) => meta.set_xattr(ino, &name, &value),
        JournalOp::DeleteInode(ino) => meta.delete_inode(ino),
        JournalOp::RemoveEntry { parent, name } => meta.remove_entry(parent, &name),
        JournalOp::RemoveXattr { ino, name } => meta.remove_xattr(ino, &name).map(drop),
        JournalOp::UnmapChunk { ino, index } => meta.set_chunk(ino, index, None).map(drop),
        JournalOp::RemoveChunksFrom { ino, first } => meta.remove_chunks_from(ino, first).map(drop),
    }
}
