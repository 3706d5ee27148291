//! Reading the audit trail back from the store: every segment of every
//! writer, chain verification, filters for `audit log`, and the per-user
//! summary of `audit report`. All of it works from any host with the key,
//! while the volume is mounted elsewhere.

use super::record::{Event, Record};
use super::segment::{self, AUDIT_PREFIX, GENESIS, Mac, SegmentHeader};
use crate::codec::{self, CodecError};
use crate::keyring::Keyring;
use crate::store::{ObjectStore, StoreError};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;
use tokio::task::JoinSet;

/// Segments fetched at once.
const FETCH_PARALLELISM: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("listing audit segments: {0}")]
    List(StoreError),
    #[error("reading audit segment {key}: {source}")]
    Get { key: String, source: StoreError },
}

/// One segment as found in the store.
pub struct Segment {
    pub key: String,
    pub writer: String,
    pub number: u64,
    /// The opened segment, or why it does not open.
    pub content: Result<(SegmentHeader, Vec<String>), Damage>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Damage {
    /// The object ends early: bytes were cut off.
    Truncated,
    /// Authentication failed: bytes were changed, or it is not ours.
    Unreadable(String),
}

/// Every segment, by writer and number.
pub struct Segments {
    pub segments: Vec<Segment>,
    /// Keys under `audit/` that are not segment names.
    pub strays: Vec<String>,
}

pub async fn read_segments(store: Arc<dyn ObjectStore>, ring: Arc<Keyring>) -> Result<Segments, ReadError> {
    let mut segments = Vec::new();
    let strays = stream_segments(store, ring, |s| segments.push(s)).await?;
    Ok(Segments { segments, strays })
}

/// Every segment, opened, handed to `each` in (writer, number) order while
/// at most `FETCH_PARALLELISM` are in memory: a review of millions of
/// records never holds them all. Returns the strays.
pub async fn stream_segments(
    store: Arc<dyn ObjectStore>,
    ring: Arc<Keyring>,
    mut each: impl FnMut(Segment),
) -> Result<Vec<String>, ReadError> {
    let keys = store.list(AUDIT_PREFIX).await.map_err(ReadError::List)?;
    let mut named = Vec::new();
    let mut strays = Vec::new();
    for key in keys {
        match segment::parse_object_key(&key) {
            Some((writer, number)) => named.push((key, writer, number)),
            None => strays.push(key),
        }
    }
    named.sort_by(|a, b| (&a.1, a.2).cmp(&(&b.1, b.2)));
    for batch in named.chunks(FETCH_PARALLELISM) {
        let mut tasks = JoinSet::new();
        for (i, (key, _, _)) in batch.iter().enumerate() {
            let (store, ring, key) = (store.clone(), ring.clone(), key.clone());
            tasks.spawn(async move {
                let object = store.get(&key).await;
                (i, object.map(|o| open_segment(&ring, &key, &o)))
            });
        }
        let mut opened: Vec<_> = tasks.join_all().await;
        opened.sort_by_key(|(i, _)| *i);
        for ((key, writer, number), (_, content)) in batch.iter().zip(opened) {
            let content = content.map_err(|source| ReadError::Get {
                key: key.clone(),
                source,
            })?;
            each(Segment {
                key: key.clone(),
                writer: writer.clone(),
                number: *number,
                content,
            });
        }
    }
    Ok(strays)
}

pub(super) fn open_segment(ring: &Keyring, key: &str, object: &[u8]) -> Result<(SegmentHeader, Vec<String>), Damage> {
    let body = codec::open_audit(ring, key, object).map_err(|e| match e {
        CodecError::Truncated => Damage::Truncated,
        other => Damage::Unreadable(other.to_string()),
    })?;
    segment::decode_body(&body).map_err(Damage::Unreadable)
}

/// What `audit verify` found wrong, and where.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub segment: String,
    pub seq: Option<u64>,
    pub kind: &'static str,
    pub detail: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.segment)?;
        if let Some(seq) = self.seq {
            write!(f, " seq {seq}")?;
        }
        write!(f, ": {}: {}", self.kind, self.detail)
    }
}

#[derive(Debug, Default)]
pub struct Verification {
    pub chains: usize,
    pub segments: usize,
    pub records: u64,
    pub problems: Vec<Problem>,
}

/// A record line, parsed.
struct Line<'a> {
    mac: Mac,
    json: &'a str,
    record: Record,
}

/// Checks every chain: segment numbering, each segment's link to the one
/// before, and within a segment the order, completeness and MAC of every
/// record. Reports each kind of damage once, where it starts.
pub fn verify(ring: &Keyring, found: &Segments) -> Verification {
    let mut verifier = Verifier::new(ring);
    verifier.strays(&found.strays);
    let mut ordered: Vec<&Segment> = found.segments.iter().collect();
    ordered.sort_by(|a, b| (&a.writer, a.number).cmp(&(&b.writer, b.number)));
    for s in ordered {
        verifier.segment(s);
    }
    verifier.finish()
}

/// `verify`, fed one segment at a time in (writer, number) order.
pub struct Verifier {
    key: crate::crypto::SecretKey,
    volume: String,
    writer: Option<String>,
    /// What the next segment must continue from; None after damage.
    expect: Option<(u64, Mac)>,
    next_number: u64,
    out: Verification,
}

impl Verifier {
    pub fn new(ring: &Keyring) -> Verifier {
        Verifier {
            key: ring.audit_chain_key(),
            volume: hex::encode(ring.volume_id()),
            writer: None,
            expect: None,
            next_number: 1,
            out: Verification::default(),
        }
    }

    pub fn strays(&mut self, strays: &[String]) {
        for stray in strays {
            self.out.problems.push(Problem {
                segment: stray.clone(),
                seq: None,
                kind: "stray",
                detail: "object in the audit area that is not a segment".into(),
            });
        }
    }

    /// Checks one segment; returns its readable records (those of a damaged
    /// segment included: the problems say what they are worth).
    pub fn segment(&mut self, s: &Segment) -> Vec<Record> {
        if self.writer.as_deref() != Some(s.writer.as_str()) {
            self.writer = Some(s.writer.clone());
            self.out.chains += 1;
            self.expect = Some((1, GENESIS));
            self.next_number = 1;
        }
        self.out.segments += 1;
        let problems = &mut self.out.problems;
        let mut problem = |seq, kind, detail: String| {
            problems.push(Problem {
                segment: s.key.clone(),
                seq,
                kind,
                detail,
            })
        };
        if s.number != self.next_number {
            let missing = if s.number == self.next_number + 1 {
                format!("segment {} is missing", self.next_number)
            } else {
                format!("segments {} to {} are missing", self.next_number, s.number - 1)
            };
            problem(None, "gap", missing);
            self.expect = None;
        }
        self.next_number = s.number + 1;
        let (header, lines) = match &s.content {
            Ok(content) => content,
            Err(Damage::Truncated) => {
                problem(None, "truncated", "the object ends early".into());
                self.expect = None;
                return Vec::new();
            }
            Err(Damage::Unreadable(why)) => {
                problem(None, "edited", format!("does not open with the volume key: {why}"));
                self.expect = None;
                return Vec::new();
            }
        };
        if header.writer != s.writer || header.number != s.number || header.volume != self.volume {
            problem(None, "moved", "header names another writer, number or volume".into());
        }
        let mut parsed = Vec::with_capacity(lines.len());
        for (i, line) in lines.iter().enumerate() {
            let line = segment::split_line(line).and_then(|(mac, json)| {
                let record = serde_json::from_str::<Record>(json).ok()?;
                Some(Line { mac, json, record })
            });
            match line {
                Some(line) => parsed.push(line),
                None => problem(None, "edited", format!("line {} is not a record", i + 1)),
            }
        }
        self.out.records += parsed.len() as u64;
        let mut prev_mac = [0u8; 32];
        let continues = hex::decode_to_slice(&header.prev_mac, &mut prev_mac).is_ok();
        if let Some((seq, mac)) = self.expect {
            if header.first_seq > seq {
                let what = format!("records {seq} to {} are missing", header.first_seq - 1);
                problem(Some(seq), "missing", what);
            } else if header.first_seq < seq {
                problem(
                    Some(header.first_seq),
                    "inserted",
                    "overlaps the previous segment".into(),
                );
            } else if !continues || prev_mac != mac {
                problem(None, "chain", "does not continue from the previous segment".into());
            }
        }
        check_records(&self.key, header, &parsed, prev_mac, &mut problem);
        self.expect = match (parsed.last(), &header.final_mac) {
            (Some(last), Some(_)) => Some((last.record.seq + 1, last.mac)),
            _ => None,
        };
        parsed.into_iter().map(|l| l.record).collect()
    }

    pub fn finish(self) -> Verification {
        self.out
    }
}

/// Order, completeness and MACs of the records of one segment.
fn check_records(
    key: &crate::crypto::SecretKey,
    header: &SegmentHeader,
    lines: &[Line<'_>],
    prev_mac: Mac,
    problem: &mut impl FnMut(Option<u64>, &'static str, String),
) {
    // Order first: a swap shows as a sequence number going backwards.
    for pair in lines.windows(2) {
        let (a, b) = (pair[0].record.seq, pair[1].record.seq);
        if b < a {
            problem(Some(b), "reordered", format!("record {b} comes after record {a}"));
        } else if b == a {
            problem(Some(b), "inserted", format!("record {b} appears twice"));
        }
    }
    // Then completeness and MACs, in sequence order, so a reordering is
    // not reported again as edits.
    let mut by_seq: BTreeMap<u64, &Line<'_>> = BTreeMap::new();
    for line in lines {
        by_seq.entry(line.record.seq).or_insert(line);
    }
    let mut expected = header.first_seq;
    let mut prev = Some(prev_mac);
    for (&seq, line) in &by_seq {
        if seq > expected {
            let what = if seq == expected + 1 {
                format!("record {expected} is missing")
            } else {
                format!("records {expected} to {} are missing", seq - 1)
            };
            problem(Some(expected), "missing", what);
            prev = None;
        } else if seq < expected {
            problem(
                Some(seq),
                "inserted",
                format!("record {seq} precedes the segment's first"),
            );
            continue;
        }
        if let Some(prev) = prev
            && !crate::crypto::mac_eq(&segment::chain_mac(key, &prev, line.json.as_bytes()), &line.mac)
        {
            problem(Some(seq), "edited", "record does not match its MAC".into());
        }
        prev = Some(line.mac);
        expected = seq + 1;
    }
    if let Some(last) = header.last_seq
        && last + 1 > expected
    {
        let what = if last + 1 == expected + 1 {
            format!("record {last} is missing from the end")
        } else {
            format!("records {expected} to {last} are missing from the end")
        };
        problem(Some(expected), "truncated", what);
    }
    let final_mac = by_seq.values().last().map(|l| hex::encode(l.mac));
    if header.final_mac.is_some() && header.final_mac != final_mac && header.last_seq.is_some_and(|l| l + 1 == expected)
    {
        problem(
            header.last_seq,
            "edited",
            "final MAC in the header does not match".into(),
        );
    }
}

/// Which records `audit log` shows.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub user: Option<String>,
    pub uid: Option<u32>,
    pub path: Option<glob::Pattern>,
    pub since_ns: Option<i64>,
    pub until_ns: Option<i64>,
    pub events: Vec<Event>,
    pub denied: bool,
    pub host: Option<String>,
}

impl Filter {
    pub fn matches(&self, host: &str, r: &Record) -> bool {
        let path_matches = |p: &glob::Pattern| {
            [&r.path, &r.new_path]
                .iter()
                .any(|candidate| candidate.as_deref().is_some_and(|c| p.matches(c)))
        };
        self.user.as_ref().is_none_or(|u| r.user.as_ref() == Some(u))
            && self.uid.is_none_or(|uid| r.uid == uid)
            && self.path.as_ref().is_none_or(path_matches)
            && self.since_ns.is_none_or(|t| r.time_ns >= t)
            && self.until_ns.is_none_or(|t| r.time_ns <= t)
            && (self.events.is_empty() || self.events.contains(&r.event))
            && (!self.denied || r.is_denied())
            && self.host.as_ref().is_none_or(|h| h == host)
    }
}

/// A record with where it came from, as `audit log` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct Listed {
    pub host: String,
    pub volume: String,
    pub writer: String,
    #[serde(flatten)]
    pub record: Record,
}

impl Segments {
    /// Every readable record that passes `filter`, oldest first.
    pub fn records(&self, filter: &Filter) -> Vec<Listed> {
        let mut out = Vec::new();
        for s in &self.segments {
            let Ok((header, lines)) = &s.content else { continue };
            for line in lines {
                let Some((_, json)) = segment::split_line(line) else {
                    continue;
                };
                let Ok(record) = serde_json::from_str::<Record>(json) else {
                    continue;
                };
                if filter.matches(&header.host, &record) {
                    out.push(Listed {
                        host: header.host.clone(),
                        volume: header.volume.clone(),
                        writer: header.writer.clone(),
                        record,
                    });
                }
            }
        }
        out.sort_by(|a, b| {
            (a.record.time_ns, &a.writer, a.record.seq).cmp(&(b.record.time_ns, &b.writer, b.record.seq))
        });
        out
    }
}

/// One user's activity for `audit report`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct UserSummary {
    pub uid: u32,
    pub user: Option<String>,
    pub files_opened: usize,
    pub files_written: usize,
    pub files_deleted: usize,
    pub denied: usize,
    pub first_ns: i64,
    pub last_ns: i64,
}

/// Per-user summary of `records`: distinct files opened and written,
/// deletions, denied attempts, first and last activity.
pub fn report(records: &[Listed]) -> Vec<UserSummary> {
    #[derive(Default)]
    struct Acc {
        user: Option<String>,
        opened: BTreeSet<String>,
        written: BTreeSet<String>,
        deleted: usize,
        denied: usize,
        first: Option<i64>,
        last: i64,
    }
    let mut by_uid: HashMap<u32, Acc> = HashMap::new();
    for listed in records {
        let r = &listed.record;
        let acc = by_uid.entry(r.uid).or_default();
        if acc.user.is_none() {
            acc.user = r.user.clone();
        }
        acc.first = Some(acc.first.map_or(r.time_ns, |f| f.min(r.time_ns)));
        acc.last = acc.last.max(r.time_ns);
        if r.is_denied() {
            acc.denied += 1;
            continue;
        }
        if r.result != "ok" {
            continue;
        }
        let path = r.path.clone().unwrap_or_default();
        let writes = r
            .flags
            .as_deref()
            .is_some_and(|f| f.contains("O_WRONLY") || f.contains("O_RDWR") || f.contains("O_TRUNC"));
        match r.event {
            Event::Open | Event::Create => {
                acc.opened.insert(path.clone());
                if writes || r.event == Event::Create {
                    acc.written.insert(path);
                }
            }
            Event::Truncate => {
                acc.written.insert(path);
            }
            Event::Unlink | Event::Rmdir => acc.deleted += 1,
            _ => {}
        }
    }
    let mut out: Vec<UserSummary> = by_uid
        .into_iter()
        .map(|(uid, a)| UserSummary {
            uid,
            user: a.user,
            files_opened: a.opened.len(),
            files_written: a.written.len(),
            files_deleted: a.deleted,
            denied: a.denied,
            first_ns: a.first.unwrap_or(0),
            last_ns: a.last,
        })
        .collect();
    out.sort_by_key(|s| s.uid);
    out
}
