//! State encoding: a full metadata state as a flat byte stream of records,
//! the body of a checkpoint and of a named snapshot.
//! Layout: FORMAT.md, "Metadata state".

use super::{ChunkRef, FileKind, Inode, MetaError, Record, Result};

const VERSION: u8 = 2;
const TAG_INODE: u8 = 1;
const TAG_SYMLINK: u8 = 2;
const TAG_ENTRY: u8 = 3;
const TAG_CHUNK: u8 = 4;
const TAG_NEXT_INO: u8 = 5;
const TAG_XATTR: u8 = 6;

pub fn encode_state(export: impl FnOnce(&mut dyn FnMut(Record)) -> Result<()>) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    encode_state_into(&mut out, export)?;
    Ok(out)
}

/// Appends the state to `out` (after a header of its container's own).
pub fn encode_state_into(out: &mut Vec<u8>, export: impl FnOnce(&mut dyn FnMut(Record)) -> Result<()>) -> Result<()> {
    out.push(VERSION);
    export(&mut |record| encode_record(out, &record))
}

pub(super) fn encode_record(out: &mut Vec<u8>, record: &Record) {
    match record {
        Record::Inode(i) => {
            out.push(TAG_INODE);
            out.extend_from_slice(&i.ino.to_be_bytes());
            out.push(i.kind as u8);
            for v in [i.perm, i.uid, i.gid, i.nlink] {
                out.extend_from_slice(&v.to_be_bytes());
            }
            out.extend_from_slice(&i.size.to_be_bytes());
            for t in [i.atime, i.mtime, i.ctime] {
                out.extend_from_slice(&t.to_be_bytes());
            }
            out.extend_from_slice(&i.rdev.to_be_bytes());
        }
        Record::SymlinkTarget { ino, target } => {
            out.push(TAG_SYMLINK);
            out.extend_from_slice(&ino.to_be_bytes());
            out.extend_from_slice(&(target.len() as u32).to_be_bytes());
            out.extend_from_slice(target);
        }
        Record::Entry { parent, name, ino } => {
            out.push(TAG_ENTRY);
            out.extend_from_slice(&parent.to_be_bytes());
            out.extend_from_slice(&ino.to_be_bytes());
            out.extend_from_slice(&(name.len() as u16).to_be_bytes());
            out.extend_from_slice(name);
        }
        Record::Chunk { ino, index, block } => {
            out.push(TAG_CHUNK);
            out.extend_from_slice(&ino.to_be_bytes());
            out.extend_from_slice(&index.to_be_bytes());
            out.extend_from_slice(&block.pack);
            out.extend_from_slice(&block.offset.to_be_bytes());
            out.extend_from_slice(&block.len.to_be_bytes());
        }
        Record::NextIno(n) => {
            out.push(TAG_NEXT_INO);
            out.extend_from_slice(&n.to_be_bytes());
        }
        Record::Xattr { ino, name, value } => {
            out.push(TAG_XATTR);
            out.extend_from_slice(&ino.to_be_bytes());
            out.push(name.len() as u8);
            out.extend_from_slice(name);
            out.extend_from_slice(&(value.len() as u32).to_be_bytes());
            out.extend_from_slice(value);
        }
    }
}

pub fn decode_state(bytes: &[u8]) -> Result<Vec<Record>> {
    let mut r = Cursor(bytes);
    if r.u8()? != VERSION {
        return Err(corrupt("unknown snapshot version"));
    }
    let mut records = Vec::new();
    while !r.0.is_empty() {
        let tag = r.u8()?;
        records.push(decode_record(&mut r, tag)?.ok_or_else(|| corrupt(&format!("unknown record tag {tag}")))?);
    }
    Ok(records)
}

/// The record with `tag` at the cursor; `None` for a tag that is not a
/// record's (the journal uses further tags).
pub(super) fn decode_record(r: &mut Cursor<'_>, tag: u8) -> Result<Option<Record>> {
    Ok(Some(match tag {
        TAG_INODE => Record::Inode(Inode {
            ino: r.u64()?,
            kind: FileKind::from_code(r.u8()?).ok_or_else(|| corrupt("unknown file kind"))?,
            perm: r.u32()?,
            uid: r.u32()?,
            gid: r.u32()?,
            nlink: r.u32()?,
            size: r.u64()?,
            atime: r.u64()? as i64,
            mtime: r.u64()? as i64,
            ctime: r.u64()? as i64,
            rdev: r.u32()?,
            allocated: 0,
        }),
        TAG_SYMLINK => {
            let ino = r.u64()?;
            let len = r.u32()? as usize;
            Record::SymlinkTarget {
                ino,
                target: r.take(len)?.to_vec(),
            }
        }
        TAG_ENTRY => {
            let parent = r.u64()?;
            let ino = r.u64()?;
            let len = r.u16()? as usize;
            Record::Entry {
                parent,
                ino,
                name: r.take(len)?.to_vec(),
            }
        }
        TAG_CHUNK => {
            let ino = r.u64()?;
            let index = r.u64()?;
            let pack = r.take(16)?.try_into().map_err(|_| corrupt("short object id"))?;
            Record::Chunk {
                ino,
                index,
                block: ChunkRef {
                    pack,
                    offset: r.u32()?,
                    len: r.u32()?,
                },
            }
        }
        TAG_NEXT_INO => Record::NextIno(r.u64()?),
        TAG_XATTR => {
            let ino = r.u64()?;
            let name_len = r.u8()? as usize;
            let name = r.take(name_len)?.to_vec();
            let value_len = r.u32()? as usize;
            Record::Xattr {
                ino,
                name,
                value: r.take(value_len)?.to_vec(),
            }
        }
        _ => return Ok(None),
    }))
}

fn corrupt(what: &str) -> MetaError {
    MetaError::Corrupt(format!("snapshot: {what}"))
}

pub(super) struct Cursor<'a>(pub(super) &'a [u8]);

impl<'a> Cursor<'a> {
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(corrupt("truncated record"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        self.take(N)?.try_into().map_err(|_| corrupt("truncated record"))
    }
    pub(super) fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub(super) fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    pub(super) fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    pub(super) fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Record> {
        vec![
            Record::NextIno(9),
            Record::Inode(Inode {
                ino: 1,
                kind: FileKind::Dir,
                perm: 0o755,
                uid: 0,
                gid: 0,
                nlink: 2,
                size: 0,
                atime: -5,
                mtime: 1_700_000_000_123_456_789,
                ctime: 3,
                rdev: 0,
                allocated: 0,
            }),
            Record::Entry {
                parent: 1,
                name: vec![0xff, b'a'],
                ino: 2,
            },
            Record::SymlinkTarget {
                ino: 2,
                target: b"/etc".to_vec(),
            },
            Record::Chunk {
                ino: 3,
                index: 5000,
                block: ChunkRef {
                    pack: [9; 16],
                    offset: 1 << 20,
                    len: 65536,
                },
            },
            Record::Xattr {
                ino: 3,
                name: b"user.phi".to_vec(),
                value: vec![0, 1, 2],
            },
        ]
    }

    #[test]
    fn records_round_trip() {
        let records = sample();
        let bytes = encode_state(|sink| {
            records.iter().cloned().for_each(sink);
            Ok(())
        })
        .unwrap();
        assert_eq!(decode_state(&bytes).unwrap(), records);
    }

    #[test]
    fn truncated_snapshot_is_an_error() {
        let records = sample();
        let bytes = encode_state(|sink| {
            records.iter().cloned().for_each(sink);
            Ok(())
        })
        .unwrap();
        // Every cut inside a record must fail; cuts at record boundaries are
        // caught one level up by the sealed frame's last-frame flag.
        let boundaries: Vec<usize> = {
            let mut b = vec![1];
            let mut len = 1;
            for r in &records {
                let mut one = Vec::new();
                encode_record(&mut one, r);
                len += one.len();
                b.push(len);
            }
            b
        };
        for cut in 0..bytes.len() {
            if !boundaries.contains(&cut) {
                assert!(decode_state(&bytes[..cut]).is_err(), "cut at {cut}");
            }
        }
    }
}
