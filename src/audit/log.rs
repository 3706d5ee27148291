//! The audit writer. A mount appends each record to the current local
//! segment (sealed, in `<cache>/audit/`) before the operation is answered,
//! so a kill -9 loses no record of an operation that returned; the file is
//! fsync'd at least every second; closed segments are sealed into objects
//! under `audit/<writer>/<number>` with a create-only PUT, then removed
//! locally. Whatever is left locally after a crash is uploaded by the next
//! mount, and the chain continues where it stopped.

use super::process::Identities;
use super::record::Record;
use super::segment::{self, FORMAT, GENESIS, LocalSegment, Mac, SegmentHeader};
use crate::crypto::{self, SecretKey};
use crate::keyring::Keyring;
use crate::os::now_ns;
use crate::store::{ObjectStore, StoreError};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// A segment is closed after this many records or bytes even within one
/// flush interval, which bounds what one upload (and one loss) can hold.
const MAX_SEGMENT_RECORDS: u64 = 50_000;
const MAX_SEGMENT_BYTES: u64 = 16 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditMode {
    /// An operation whose record cannot be written fails with EIO.
    Required,
    /// The operation goes through; the loss is counted.
    BestEffort,
    /// No audit log at all: for measuring its cost only.
    Off,
}

/// As the option takes it.
impl std::fmt::Display for AuditMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AuditMode::Required => "required",
            AuditMode::BestEffort => "best-effort",
            AuditMode::Off => "off",
        })
    }
}

impl FromStr for AuditMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "required" => Ok(AuditMode::Required),
            "best-effort" => Ok(AuditMode::BestEffort),
            "off" => Ok(AuditMode::Off),
            _ => Err(format!("audit mode {s:?} is not one of required, best-effort, off")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct AuditSettings {
    pub mode: AuditMode,
    pub flush_interval: Duration,
    /// How long segments are retained where the store can (S3 Object
    /// Lock); None writes them without a retention.
    pub retain_for: Option<Duration>,
    pub syslog: Syslog,
}

/// Whether records are also copied to syslog, and with their paths.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Syslog {
    #[default]
    Off,
    WithoutPaths,
    WithPaths,
}

/// Six years, the usual HIPAA retention (2192 days).
pub const DEFAULT_RETENTION_DAYS: u64 = 2192;

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            mode: AuditMode::Required,
            flush_interval: Duration::from_secs(10),
            retain_for: None,
            syslog: Syslog::Off,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit directory {path}: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("cannot append to the local audit segment: {0}")]
    Append(std::io::Error),
    #[error("local audit segment {path} is damaged: {reason}")]
    Damaged { path: PathBuf, reason: String },
    #[error("uploading audit segment {key}: {source}")]
    Upload { key: String, source: StoreError },
    #[error(
        "audit segment {key} is already in the store with other contents (planted or damaged); \
         the records stay in the local segment and the upload is retried"
    )]
    Occupied { key: String },
}

/// Where the chain stands after the last uploaded segment; kept so a mount
/// whose local segments are all uploaded continues the same chain.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ChainState {
    writer: String,
    next_number: u64,
    next_seq: u64,
    mac: String,
}

struct Writer {
    next_number: u64,
    next_seq: u64,
    mac: Mac,
    current: Option<Current>,
}

impl Writer {
    /// The start of a new chain.
    fn fresh() -> Writer {
        Writer {
            next_number: 1,
            next_seq: 1,
            mac: GENESIS,
            current: None,
        }
    }
}

struct Current {
    segment: LocalSegment,
    records: u64,
    bytes: u64,
}

pub struct AuditLog {
    ring: Arc<Keyring>,
    chain_key: SecretKey,
    store: Arc<dyn ObjectStore>,
    /// None for a one-shot log (CLI commands), which uploads from memory.
    dir: Option<PathBuf>,
    writer_id: String,
    host: String,
    settings: AuditSettings,
    ids: Identities,
    writer: Mutex<Writer>,
    /// Appends since the last fsync.
    unsynced: AtomicBool,
    lost: AtomicU64,
    upload_lock: tokio::sync::Mutex<()>,
    /// One-shot logs keep their lines in memory until `upload`.
    pending: Mutex<Vec<String>>,
    last_upload_ns: std::sync::atomic::AtomicI64,
    last_error: Mutex<Option<String>>,
}

/// What `s3vault status` shows of the audit log.
#[derive(Clone, Debug, Serialize)]
pub struct AuditStats {
    pub mode: String,
    /// Records written by this chain so far (its next sequence number - 1).
    pub records: u64,
    /// Records lost in best-effort mode since the mount.
    pub lost: u64,
    /// Local segments not yet in the store (including the one being written).
    pub segments_pending: usize,
    /// When segments last reached the store (ns since the epoch), if ever.
    pub last_upload_ns: Option<i64>,
    pub last_error: Option<String>,
}

/// The retention to write segments with: the requested one if the store
/// can retain objects (S3 Object Lock is enabled on the bucket), else none.
pub async fn retention_for(store: &dyn ObjectStore, requested: Option<Duration>) -> Option<Duration> {
    let requested = requested?;
    match store.supports_retention().await {
        Ok(true) => Some(requested),
        Ok(false) => None,
        Err(e) => {
            tracing::warn!(error = %e, "cannot tell whether the bucket has Object Lock; audit segments get no retention");
            None
        }
    }
}

impl AuditLog {
    /// Opens the audit log of a mount in `dir` (created 0700), uploading
    /// nothing yet: segments a crash left behind are closed and wait for
    /// the first `upload`.
    pub fn open(
        dir: &Path,
        ring: Arc<Keyring>,
        store: Arc<dyn ObjectStore>,
        settings: AuditSettings,
    ) -> Result<Arc<AuditLog>, AuditError> {
        let io = |source| AuditError::Dir {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        let state_path = dir.join("chain");
        let state: Option<ChainState> = match std::fs::read(&state_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(e)),
        };
        let (writer_id, mut writer) = match state {
            Some(s) => {
                let mut mac = GENESIS;
                hex::decode_to_slice(&s.mac, &mut mac).map_err(|_| AuditError::Damaged {
                    path: state_path.clone(),
                    reason: "bad chain MAC".into(),
                })?;
                let writer = Writer {
                    next_number: s.next_number,
                    next_seq: s.next_seq,
                    mac,
                    current: None,
                };
                (s.writer, writer)
            }
            None => (hex::encode(crypto::random_bytes::<8>()), Writer::fresh()),
        };
        let log = AuditLog::new(ring, store, Some(dir.to_path_buf()), writer_id, settings);
        // Segments a crash left behind (closed or still open): the chain
        // continues after the newest. Their records were appended before
        // their operations were answered, so they are part of the chain.
        let mut left = log.local_segments(".closed")?;
        left.extend(log.local_segments(".open")?);
        left.sort();
        if let Some((number, path)) = left.last() {
            let damaged = |reason: String| AuditError::Damaged {
                path: path.clone(),
                reason,
            };
            let (header, lines) = LocalSegment::read(path, &log.ring).map_err(damaged)?;
            let (next_seq, mac) = match lines.last() {
                Some(line) => {
                    let (mac, json) = segment::split_line(line).ok_or_else(|| damaged("malformed record".into()))?;
                    let last: Record = serde_json::from_str(json).map_err(|e| damaged(e.to_string()))?;
                    (last.seq + 1, mac)
                }
                None => {
                    let mut mac = GENESIS;
                    hex::decode_to_slice(&header.prev_mac, &mut mac).map_err(|_| damaged("bad previous MAC".into()))?;
                    (header.first_seq, mac)
                }
            };
            // A segment left behind by a failed close can be older than
            // the chain state saved by later uploads: continue from
            // whichever is further along.
            if next_seq > writer.next_seq {
                writer.next_seq = next_seq;
                writer.mac = mac;
            }
            writer.next_number = writer.next_number.max(number + 1);
        }
        for (_, path) in log.local_segments(".open")? {
            std::fs::rename(&path, path.with_extension("closed")).map_err(io)?;
        }
        log.save_state(&writer)?;
        *log.writer() = writer;
        Ok(Arc::new(log))
    }

    /// A log for one CLI command: a chain of its own, uploaded by `upload`.
    pub fn one_shot(ring: Arc<Keyring>, store: Arc<dyn ObjectStore>, settings: AuditSettings) -> AuditLog {
        let writer_id = hex::encode(crypto::random_bytes::<8>());
        AuditLog::new(ring, store, None, writer_id, settings)
    }

    fn new(
        ring: Arc<Keyring>,
        store: Arc<dyn ObjectStore>,
        dir: Option<PathBuf>,
        writer_id: String,
        settings: AuditSettings,
    ) -> AuditLog {
        AuditLog {
            chain_key: ring.audit_chain_key(),
            ring,
            store,
            dir,
            writer_id,
            host: crate::os::hostname(),
            settings,
            ids: Identities::default(),
            writer: Mutex::new(Writer::fresh()),
            unsynced: AtomicBool::new(false),
            lost: AtomicU64::new(0),
            upload_lock: tokio::sync::Mutex::new(()),
            pending: Mutex::new(Vec::new()),
            last_upload_ns: std::sync::atomic::AtomicI64::new(0),
            last_error: Mutex::new(None),
        }
    }

    pub fn stats(&self) -> AuditStats {
        let records = self.writer().next_seq.saturating_sub(1);
        let pending =
            self.local_segments(".closed").map_or(0, |s| s.len()) + self.local_segments(".open").map_or(0, |s| s.len());
        let last = self.last_upload_ns.load(Ordering::Relaxed);
        AuditStats {
            mode: format!("{:?}", self.settings.mode).to_lowercase(),
            records,
            lost: self.lost(),
            segments_pending: pending,
            last_upload_ns: (last > 0).then_some(last),
            last_error: self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }

    pub fn mode(&self) -> AuditMode {
        self.settings.mode
    }

    pub fn flush_interval(&self) -> Duration {
        self.settings.flush_interval
    }

    /// Records that could not be written (best-effort mode).
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn header(&self, number: u64, first_seq: u64, prev: &Mac) -> SegmentHeader {
        SegmentHeader {
            format: FORMAT,
            writer: self.writer_id.clone(),
            host: self.host.clone(),
            volume: hex::encode(self.ring.volume_id()),
            number,
            first_seq,
            prev_mac: hex::encode(prev),
            opened_ns: now_ns(),
            last_seq: None,
            records: None,
            final_mac: None,
        }
    }

    /// Appends one record, filling in sequence number, time, user and
    /// process. In `Required` mode a failure is returned (the caller fails
    /// the operation with EIO); in `BestEffort` it is counted and logged.
    pub fn record(&self, mut record: Record) -> Result<(), AuditError> {
        // Off still records the mount itself (and its unmount and
        // checkpoints): the trail then shows that, and when, a mount
        // recorded nothing.
        if self.settings.mode == AuditMode::Off && !record.event.volume_level() {
            return Ok(());
        }
        record.user = self.ids.user_name(record.uid);
        let process = self.ids.process(record.pid);
        record.process = process.name;
        record.exe = process.exe;
        match self.append(record) {
            Ok(written) => {
                if self.settings.syslog != Syslog::Off {
                    super::syslog::send(&written, &self.host, self.settings.syslog == Syslog::WithPaths);
                }
                Ok(())
            }
            Err(e) if self.settings.mode == AuditMode::BestEffort => {
                self.lost.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "audit record lost (audit=best-effort)");
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "audit record could not be written; failing the operation");
                Err(e)
            }
        }
    }

    /// Appends `record`; returns it with its sequence number and time.
    fn append(&self, mut record: Record) -> Result<Record, AuditError> {
        let mut writer = self.writer();
        record.seq = writer.next_seq;
        record.time_ns = now_ns();
        let json = serde_json::to_string(&record).expect("a record always serializes");
        let mac = segment::chain_mac(&self.chain_key, &writer.mac, json.as_bytes());
        let line = segment::record_line(&mac, &json);
        let Some(dir) = &self.dir else {
            self.pending.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            writer.mac = mac;
            writer.next_seq += 1;
            return Ok(record);
        };
        if writer.current.is_none() {
            let number = writer.next_number;
            let header = self.header(number, writer.next_seq, &writer.mac);
            let path = dir.join(format!("{number:012}.open"));
            let segment = LocalSegment::create(&path, &self.ring, &header).map_err(AuditError::Append)?;
            writer.next_number += 1;
            writer.current = Some(Current {
                segment,
                records: 0,
                bytes: 0,
            });
        }
        let current = writer.current.as_mut().expect("just opened");
        if let Err(e) = current.segment.append(&self.ring, line.as_bytes()) {
            // The file may end in a torn frame now; start a new one next time.
            let _ = self.close(&mut writer);
            return Err(AuditError::Append(e));
        }
        current.records += 1;
        current.bytes += line.len() as u64;
        let full = current.records >= MAX_SEGMENT_RECORDS || current.bytes >= MAX_SEGMENT_BYTES;
        writer.mac = mac;
        writer.next_seq += 1;
        self.unsynced.store(true, Ordering::Release);
        if full {
            self.close(&mut writer).map_err(AuditError::Append)?;
        }
        Ok(record)
    }

    /// Closes the current local segment (fsync, rename to `.closed`).
    fn close(&self, writer: &mut Writer) -> std::io::Result<()> {
        let Some(current) = writer.current.take() else {
            return Ok(());
        };
        current.segment.sync()?;
        let path = &current.segment.path;
        std::fs::rename(path, path.with_extension("closed"))
    }

    /// fsyncs the current segment if anything was appended since the last
    /// call; the mount calls this every second.
    pub fn sync(&self) -> Result<(), AuditError> {
        if !self.unsynced.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let writer = self.writer();
        if let Some(current) = &writer.current
            && let Err(e) = current.segment.sync()
        {
            self.unsynced.store(true, Ordering::Release);
            return Err(AuditError::Append(e));
        }
        Ok(())
    }

    /// Closes the current segment and uploads every closed one, oldest
    /// first; returns how many were uploaded. A failed upload stays local
    /// and is retried by the next call.
    pub async fn upload(&self) -> Result<usize, AuditError> {
        let _one_at_a_time = self.upload_lock.lock().await;
        let result = self.upload_closed().await;
        let mut last_error = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        match &result {
            Ok(_) => {
                self.last_upload_ns.store(now_ns(), Ordering::Relaxed);
                *last_error = None;
            }
            Err(e) => *last_error = Some(e.to_string()),
        }
        result
    }

    async fn upload_closed(&self) -> Result<usize, AuditError> {
        if self.dir.is_none() {
            return self.upload_pending().await;
        }
        {
            let mut writer = self.writer();
            self.close(&mut writer).map_err(AuditError::Append)?;
        }
        let mut uploaded = 0;
        for (number, path) in self.local_segments(".closed")? {
            let (mut header, lines) = LocalSegment::read(&path, &self.ring).map_err(|reason| AuditError::Damaged {
                path: path.clone(),
                reason,
            })?;
            if lines.is_empty() {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let Some((final_mac, last_json)) = lines.last().and_then(|l| segment::split_line(l)) else {
                return Err(AuditError::Damaged {
                    path,
                    reason: "last record is malformed".into(),
                });
            };
            let last: Record = serde_json::from_str(last_json).map_err(|e| AuditError::Damaged {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            header.last_seq = Some(last.seq);
            header.records = Some(lines.len() as u64);
            header.final_mac = Some(hex::encode(final_mac));
            let key = segment::object_key(&self.writer_id, number);
            self.put(&key, &header, &lines).await?;
            self.save_state(&self.writer())?;
            std::fs::remove_file(&path).map_err(|source| AuditError::Dir { path, source })?;
            uploaded += 1;
        }
        Ok(uploaded)
    }

    async fn put(&self, key: &str, header: &SegmentHeader, lines: &[String]) -> Result<(), AuditError> {
        let object = Bytes::from(segment::seal_object(&self.ring, key, header, lines));
        let stored = match self.settings.retain_for {
            Some(period) => {
                let until = std::time::SystemTime::now() + period;
                self.store.put_new_retained(key, object, until).await
            }
            None => self.store.put_new(key, object).await,
        };
        match stored {
            Ok(()) => Ok(()),
            // Ours if it holds these very records (uploaded before a crash
            // that came before the local delete); anything else there must
            // not cost us the local copy.
            Err(StoreError::AlreadyExists) => {
                let upload_err = |source| AuditError::Upload {
                    key: key.to_string(),
                    source,
                };
                let existing = self.store.get(key).await.map_err(upload_err)?;
                let theirs = crate::codec::open_audit(&self.ring, key, &existing)
                    .ok()
                    .and_then(|plain| segment::decode_body(&plain).ok());
                match theirs {
                    Some((h, l)) if h == *header && l == lines => Ok(()),
                    _ => {
                        tracing::error!(
                            key,
                            "audit segment name taken by another object; keeping the local segment"
                        );
                        Err(AuditError::Occupied { key: key.to_string() })
                    }
                }
            }
            Err(source) => Err(AuditError::Upload {
                key: key.to_string(),
                source,
            }),
        }
    }

    async fn upload_pending(&self) -> Result<usize, AuditError> {
        let lines = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        if lines.is_empty() {
            return Ok(0);
        }
        let (number, final_mac, next_seq) = {
            let mut writer = self.writer();
            let number = writer.next_number;
            writer.next_number += 1;
            (number, writer.mac, writer.next_seq)
        };
        let count = lines.len() as u64;
        let mut header = self.header(number, next_seq - count, &GENESIS);
        header.last_seq = Some(next_seq - 1);
        header.records = Some(count);
        header.final_mac = Some(hex::encode(final_mac));
        let key = segment::object_key(&self.writer_id, number);
        self.put(&key, &header, &lines).await?;
        Ok(1)
    }

    /// Local segment files with `suffix`, by number.
    fn local_segments(&self, suffix: &str) -> Result<Vec<(u64, PathBuf)>, AuditError> {
        let Some(dir) = &self.dir else {
            return Ok(Vec::new());
        };
        let io = |source| AuditError::Dir {
            path: dir.clone(),
            source,
        };
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let name = entry.map_err(io)?.file_name();
            let Some(number) = name.to_str().and_then(|n| n.strip_suffix(suffix)) else {
                continue;
            };
            if let Ok(number) = number.parse::<u64>() {
                out.push((number, dir.join(&name)));
            }
        }
        out.sort();
        Ok(out)
    }

    fn save_state(&self, writer: &Writer) -> Result<(), AuditError> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let state = ChainState {
            writer: self.writer_id.clone(),
            next_number: writer.next_number,
            next_seq: writer.next_seq,
            mac: hex::encode(writer.mac),
        };
        write_state(dir, &state).map_err(|source| AuditError::Dir {
            path: dir.clone(),
            source,
        })
    }
}

fn write_state(dir: &Path, state: &ChainState) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join("chain.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(&serde_json::to_vec(state).expect("state always serializes"))?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join("chain"))
}
