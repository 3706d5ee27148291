//! Audit segments: the HMAC chain, the local segment file a mount appends
//! to, and the sealed object it becomes in the store.
//!
//! Each record is stored as a line `<hex MAC> <JSON>`, where the MAC is
//! HMAC-SHA256 (audit chain key) over the previous record's MAC and the
//! JSON bytes. The chain runs across segments: a segment's header names the
//! MAC it continues from. Editing, dropping, inserting or reordering
//! records, or dropping a segment, breaks it.

use crate::codec::{self, ObjectId};
use crate::crypto::{self, SecretKey};
use crate::keyring::Keyring;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub const AUDIT_PREFIX: &str = "audit/";
pub const FORMAT: u32 = 1;
pub type Mac = [u8; 32];
/// What the first record of a writer's chain continues from.
pub const GENESIS: Mac = [0; 32];

const LOCAL_MAGIC: &[u8; 8] = b"S3VAUDL\x01";
const LOCAL_AAD: &[u8] = b"s3vault v1 audit local frame";
const MAC_LABEL: &[u8] = b"s3vault v1 audit record";

/// A segment's header. The local file starts with it; the uploaded object
/// adds what is known only when the segment is closed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentHeader {
    pub format: u32,
    /// The chain this segment belongs to: one per cache directory (host and
    /// volume), or one per CLI command.
    pub writer: String,
    pub host: String,
    pub volume: String,
    pub number: u64,
    pub first_seq: u64,
    pub prev_mac: String,
    pub opened_ns: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_mac: Option<String>,
}

pub fn chain_mac(key: &SecretKey, prev: &Mac, json: &[u8]) -> Mac {
    crypto::hmac(key, &[MAC_LABEL, prev, json])
}

pub fn record_line(mac: &Mac, json: &str) -> String {
    format!("{} {json}", hex::encode(mac))
}

/// Splits a stored line into its MAC and JSON.
pub fn split_line(line: &str) -> Option<(Mac, &str)> {
    let (mac, json) = line.split_once(' ')?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(mac, &mut out).ok()?;
    Some((out, json))
}

pub fn object_key(prefix_writer: &str, number: u64) -> String {
    format!("{AUDIT_PREFIX}{prefix_writer}/{number:012}")
}

/// (writer, number) of an audit object key.
pub fn parse_object_key(key: &str) -> Option<(String, u64)> {
    let rest = key.strip_prefix(AUDIT_PREFIX)?;
    let (writer, number) = rest.split_once('/')?;
    if writer.len() != 16 || !writer.bytes().all(|b| b.is_ascii_hexdigit()) || number.len() != 12 {
        return None;
    }
    Some((writer.to_string(), number.parse().ok()?))
}

/// The plaintext of an uploaded segment: the header line, then the record lines.
pub fn encode_body(header: &SegmentHeader, lines: &[String]) -> Vec<u8> {
    let mut out = serde_json::to_vec(header).expect("a header always serializes");
    for line in lines {
        out.push(b'\n');
        out.extend_from_slice(line.as_bytes());
    }
    out
}

pub fn decode_body(body: &[u8]) -> Result<(SegmentHeader, Vec<String>), String> {
    let text = std::str::from_utf8(body).map_err(|_| "segment is not UTF-8".to_string())?;
    let mut lines = text.split('\n');
    let header = lines.next().unwrap_or_default();
    let header: SegmentHeader = serde_json::from_str(header).map_err(|e| format!("bad segment header: {e}"))?;
    Ok((header, lines.map(str::to_string).collect()))
}

/// Seals a segment for the store under `key`.
pub fn seal_object(ring: &Keyring, key: &str, header: &SegmentHeader, lines: &[String]) -> Vec<u8> {
    codec::seal_audit(ring, key, &encode_body(header, lines))
}

/// The local, append-only file of the segment being written. Every frame
/// is sealed on its own, so a record is encrypted on disk from the moment
/// it is appended, and a frame torn by a crash is recognisable.
pub struct LocalSegment {
    file: File,
    id: ObjectId,
    key: SecretKey,
    frames: u64,
    pub path: PathBuf,
}

pub(crate) fn frame_aad(ring: &Keyring, id: &ObjectId, index: u64) -> Vec<u8> {
    [
        LOCAL_AAD,
        ring.volume_id().as_slice(),
        id.as_slice(),
        &index.to_be_bytes(),
    ]
    .concat()
}

impl LocalSegment {
    /// Creates `path` (which must not exist) holding `header`.
    pub fn create(path: &Path, ring: &Keyring, header: &SegmentHeader) -> io::Result<LocalSegment> {
        let mut file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        let id = codec::new_object_id();
        file.write_all(&[LOCAL_MAGIC.as_slice(), id.as_slice()].concat())?;
        let mut segment = LocalSegment {
            file,
            key: ring.audit_object_key(&id),
            id,
            frames: 0,
            path: path.to_path_buf(),
        };
        segment.append(ring, &serde_json::to_vec(header).expect("a header always serializes"))?;
        Ok(segment)
    }

    /// Appends one frame with a single write(2), so a kill -9 leaves either
    /// the whole frame or a torn tail, never an interleaving.
    pub fn append(&mut self, ring: &Keyring, plaintext: &[u8]) -> io::Result<()> {
        let sealed = crypto::seal(&self.key, &frame_aad(ring, &self.id, self.frames), plaintext);
        let mut frame = Vec::with_capacity(4 + sealed.len());
        frame.extend_from_slice(&(sealed.len() as u32).to_be_bytes());
        frame.extend_from_slice(&sealed);
        self.file.write_all(&frame)?;
        self.frames += 1;
        Ok(())
    }

    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Reads a local segment back: its header and record lines. A torn
    /// last frame (the crash happened mid-write, before the operation was
    /// answered) is dropped; any other damage is an error.
    pub fn read(path: &Path, ring: &Keyring) -> Result<(SegmentHeader, Vec<String>), String> {
        let mut bytes = Vec::new();
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| format!("cannot read: {e}"))?;
        let head = LOCAL_MAGIC.len() + codec::OBJECT_ID_LEN;
        if bytes.len() < head || &bytes[..LOCAL_MAGIC.len()] != LOCAL_MAGIC {
            return Err("not a local audit segment".into());
        }
        let id: ObjectId = bytes[LOCAL_MAGIC.len()..head].try_into().map_err(|_| "short id")?;
        let key = ring.audit_object_key(&id);
        let mut rest = &bytes[head..];
        let mut frames = Vec::new();
        while rest.len() >= 4 {
            let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            if rest.len() - 4 < len {
                break;
            }
            let aad = frame_aad(ring, &id, frames.len() as u64);
            let plain = crypto::open(&key, &aad, &rest[4..4 + len])
                .map_err(|_| format!("frame {} fails authentication", frames.len()))?;
            frames.push(String::from_utf8(plain).map_err(|_| "frame is not UTF-8")?);
            rest = &rest[4 + len..];
        }
        let mut frames = frames.into_iter();
        let header = frames.next().ok_or("no header frame")?;
        let header: SegmentHeader = serde_json::from_str(&header).map_err(|e| format!("bad header: {e}"))?;
        Ok((header, frames.collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> SegmentHeader {
        SegmentHeader {
            format: FORMAT,
            writer: "00112233445566ff".into(),
            host: "host".into(),
            volume: "vol".into(),
            number: 3,
            first_seq: 10,
            prev_mac: hex::encode(GENESIS),
            opened_ns: 1,
            last_seq: None,
            records: None,
            final_mac: None,
        }
    }

    #[test]
    fn local_segment_survives_a_torn_tail_but_not_tampering() {
        let ring = Keyring::new(&SecretKey::random(), [9; 16]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        let mut seg = LocalSegment::create(&path, &ring, &header()).unwrap();
        seg.append(&ring, b"first").unwrap();
        seg.append(&ring, b"second").unwrap();
        let (h, lines) = LocalSegment::read(&path, &ring).unwrap();
        assert_eq!((h, lines), (header(), vec!["first".to_string(), "second".to_string()]));
        // Nothing readable on disk.
        let raw = std::fs::read(&path).unwrap();
        assert!(!raw.windows(5).any(|w| w == b"first"));
        // A torn last frame is dropped.
        std::fs::write(&path, &raw[..raw.len() - 3]).unwrap();
        assert_eq!(LocalSegment::read(&path, &ring).unwrap().1, vec!["first".to_string()]);
        // A flipped byte in a complete frame is an error.
        let mut bad = raw.clone();
        let at = bad.len() - 20;
        bad[at] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        assert!(LocalSegment::read(&path, &ring).is_err());
    }

    #[test]
    fn object_keys_round_trip() {
        let key = object_key("00112233445566ff", 42);
        assert_eq!(key, "audit/00112233445566ff/000000000042");
        assert_eq!(parse_object_key(&key), Some(("00112233445566ff".into(), 42)));
        assert_eq!(parse_object_key("audit/short/000000000042"), None);
    }
}
