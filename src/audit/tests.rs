//! The audit log end to end on a memory store: crash recovery keeps the
//! chain, and `verify` names every kind of tampering where it happened.

use super::segment::{self, SegmentHeader};
use super::*;
use crate::crypto::SecretKey;
use crate::store::{MemoryStore, ObjectStore};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

struct Fixture {
    ring: Arc<crate::keyring::Keyring>,
    store: Arc<MemoryStore>,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            ring: Arc::new(crate::keyring::Keyring::new(&SecretKey::random(), [3; 16])),
            store: Arc::new(MemoryStore::default()),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn open(&self, mode: AuditMode) -> Arc<AuditLog> {
        let settings = AuditSettings {
            mode,
            flush_interval: Duration::from_secs(10),
            retain_for: None,
            syslog: Syslog::Off,
        };
        AuditLog::open(
            &self.dir.path().join("audit"),
            self.ring.clone(),
            self.store.clone(),
            settings,
        )
        .unwrap()
    }

    /// Writes `n` open records, one segment per `per_segment`.
    async fn write(&self, log: &AuditLog, n: u64, per_segment: u64) {
        for i in 0..n {
            let subject = Subject {
                uid: 4_000_000 + (i % 2) as u32,
                gid: 100,
                pid: std::process::id(),
            };
            let record = Record::new(Event::Open, subject, None)
                .path(format!("/patients/{i}").as_bytes())
                .flags(libc::O_RDONLY);
            log.record(record).unwrap();
            if (i + 1) % per_segment == 0 {
                log.upload().await.unwrap();
            }
        }
        log.upload().await.unwrap();
    }

    async fn segments(&self) -> Segments {
        read_segments(self.store.clone(), self.ring.clone()).await.unwrap()
    }

    async fn verify(&self) -> Verification {
        verify(&self.ring, &self.segments().await)
    }

    async fn keys(&self) -> Vec<String> {
        self.store.list(AUDIT_PREFIX).await.unwrap()
    }

    /// Opens a segment as an insider with the key would.
    async fn open_segment(&self, key: &str) -> (SegmentHeader, Vec<String>) {
        let object = self.store.get(key).await.unwrap();
        super::query::open_segment(&self.ring, key, &object).unwrap()
    }

    /// Rewrites a segment, validly sealed.
    async fn reseal(&self, key: &str, header: &SegmentHeader, lines: &[String]) {
        let object = segment::seal_object(&self.ring, key, header, lines);
        self.store.put(key, Bytes::from(object)).await.unwrap();
    }
}

fn kinds(v: &Verification) -> Vec<(&'static str, Option<u64>)> {
    v.problems.iter().map(|p| (p.kind, p.seq)).collect()
}

#[tokio::test]
async fn records_reach_the_store_and_verify() {
    let fx = Fixture::new();
    let log = fx.open(AuditMode::Required);
    fx.write(&log, 25, 10).await;
    assert_eq!(fx.keys().await.len(), 3);
    let v = fx.verify().await;
    assert_eq!((v.records, v.segments, v.chains), (25, 3, 1));
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    let mut filter = Filter {
        uid: Some(4_000_001),
        ..Filter::default()
    };
    assert_eq!(fx.segments().await.records(&filter).len(), 12);
    filter.path = Some(glob::Pattern::new("/patients/1?").unwrap());
    let found = fx.segments().await.records(&filter);
    assert_eq!(found.len(), 5);
    assert_eq!(found[0].record.user, None);
    assert_eq!(found[0].record.flags.as_deref(), Some("O_RDONLY"));
    // Nothing readable in the store.
    for key in fx.keys().await {
        let object = fx.store.get(&key).await.unwrap();
        assert!(!object.windows(9).any(|w| w == b"/patients"));
    }
}

#[tokio::test]
async fn a_crash_loses_no_appended_record_and_keeps_the_chain() {
    let fx = Fixture::new();
    let log = fx.open(AuditMode::Required);
    fx.write(&log, 5, 100).await;
    for i in 0..7 {
        log.record(Record::new(Event::Unlink, Subject::default(), None).path(format!("/x{i}").as_bytes()))
            .unwrap();
    }
    // kill -9: the log is dropped without closing or uploading.
    drop(log);
    let log = fx.open(AuditMode::Required);
    log.record(Record::new(Event::Mount, Subject::default(), None)).unwrap();
    log.upload().await.unwrap();
    let v = fx.verify().await;
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    assert_eq!((v.records, v.chains), (13, 1));
    let seqs: Vec<u64> = fx
        .segments()
        .await
        .records(&Filter::default())
        .iter()
        .map(|l| l.record.seq)
        .collect();
    assert_eq!(seqs, (1..=13).collect::<Vec<_>>());
}

#[tokio::test]
async fn with_audit_off_the_mount_is_recorded_and_its_file_accesses_are_not() {
    let fx = Fixture::new();
    let log = fx.open(AuditMode::Off);
    log.record(Record::new(Event::Mount, Subject::default(), None).detail("audit=off"))
        .unwrap();
    log.record(Record::new(Event::Open, Subject::default(), None).path(b"/patients/a"))
        .unwrap();
    log.record(Record::new(Event::Unmount, Subject::default(), None))
        .unwrap();
    log.upload().await.unwrap();
    let found = read_segments(fx.store.clone(), fx.ring.clone()).await.unwrap();
    let events: Vec<Event> = found
        .records(&Filter::default())
        .iter()
        .map(|l| l.record.event)
        .collect();
    assert_eq!(events, [Event::Mount, Event::Unmount]);
}

#[tokio::test]
async fn a_flipped_byte_is_found_in_its_segment() {
    let fx = Fixture::new();
    fx.write(&fx.open(AuditMode::Required), 20, 10).await;
    let key = fx.keys().await[0].clone();
    let mut object = fx.store.get(&key).await.unwrap().to_vec();
    let middle = object.len() / 2;
    object[middle] ^= 0x40;
    fx.store.put(&key, Bytes::from(object)).await.unwrap();
    let v = fx.verify().await;
    assert_eq!(v.problems[0].segment, key);
    assert_eq!(v.problems[0].kind, "edited");
}

#[tokio::test]
async fn an_insider_deleting_reordering_or_editing_records_is_caught() {
    let fx = Fixture::new();
    fx.write(&fx.open(AuditMode::Required), 30, 10).await;
    let keys = fx.keys().await;
    // Segment 1 (records 1-10): drop record 4.
    let (header, mut lines) = fx.open_segment(&keys[0]).await;
    lines.remove(3);
    fx.reseal(&keys[0], &header, &lines).await;
    // Segment 2 (records 11-20): swap records 15 and 16.
    let (header, mut lines) = fx.open_segment(&keys[1]).await;
    lines.swap(4, 5);
    fx.reseal(&keys[1], &header, &lines).await;
    // Segment 3 (records 21-30): change the path of record 27.
    let (header, mut lines) = fx.open_segment(&keys[2]).await;
    lines[6] = lines[6].replace("/patients/26", "/patients/99");
    fx.reseal(&keys[2], &header, &lines).await;
    let v = fx.verify().await;
    assert_eq!(
        kinds(&v),
        vec![("missing", Some(4)), ("reordered", Some(15)), ("edited", Some(27))],
        "{:?}",
        v.problems
    );
    assert_eq!(v.problems[0].segment, keys[0]);
    assert_eq!(v.problems[1].segment, keys[1]);
    assert_eq!(v.problems[2].segment, keys[2]);
}

#[tokio::test]
async fn a_missing_segment_and_a_truncated_one_are_caught() {
    let fx = Fixture::new();
    fx.write(&fx.open(AuditMode::Required), 40, 10).await;
    let keys = fx.keys().await;
    fx.store.delete(&keys[1]).await.unwrap();
    let newest = fx.store.get(&keys[3]).await.unwrap();
    fx.store
        .put(&keys[3], newest.slice(..newest.len() - 100))
        .await
        .unwrap();
    let v = fx.verify().await;
    assert_eq!(kinds(&v), vec![("gap", None), ("truncated", None)], "{:?}", v.problems);
    assert_eq!(v.problems[0].segment, keys[2]);
    assert!(v.problems[0].detail.contains("segment 2 is missing"));
    assert_eq!(v.problems[1].segment, keys[3]);
}

#[tokio::test]
async fn records_dropped_from_the_end_of_a_segment_are_caught() {
    let fx = Fixture::new();
    fx.write(&fx.open(AuditMode::Required), 10, 100).await;
    let key = fx.keys().await[0].clone();
    let (header, mut lines) = fx.open_segment(&key).await;
    lines.truncate(8);
    fx.reseal(&key, &header, &lines).await;
    assert_eq!(kinds(&fx.verify().await), vec![("truncated", Some(9))]);
}

#[tokio::test]
async fn required_fails_and_best_effort_counts_when_the_disk_refuses() {
    let fx = Fixture::new();
    let log = fx.open(AuditMode::Required);
    std::fs::remove_dir_all(fx.dir.path().join("audit")).unwrap();
    std::fs::write(fx.dir.path().join("audit"), b"not a directory").unwrap();
    assert!(log.record(Record::new(Event::Open, Subject::default(), None)).is_err());
    std::fs::remove_file(fx.dir.path().join("audit")).unwrap();
    let log = fx.open(AuditMode::BestEffort);
    std::fs::remove_dir_all(fx.dir.path().join("audit")).unwrap();
    std::fs::write(fx.dir.path().join("audit"), b"not a directory").unwrap();
    assert!(log.record(Record::new(Event::Open, Subject::default(), None)).is_ok());
    assert_eq!(log.lost(), 1);
}

#[tokio::test]
async fn one_shot_logs_form_their_own_chain() {
    let fx = Fixture::new();
    fx.write(&fx.open(AuditMode::Required), 3, 100).await;
    let cli = AuditLog::one_shot(fx.ring.clone(), fx.store.clone(), AuditSettings::default());
    cli.record(Record::new(Event::KeyAdd, Subject::default(), None).detail("slot=abc"))
        .unwrap();
    assert_eq!(cli.upload().await.unwrap(), 1);
    let v = fx.verify().await;
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    assert_eq!((v.records, v.chains), (4, 2));
}

/// A segment whose close failed stays behind as `.open` while later
/// segments are uploaded; the next mount must ship it without restarting
/// the chain from its end (which reused sequence numbers).
#[tokio::test]
async fn a_segment_left_open_by_a_failed_close_does_not_rewind_the_chain() {
    let fx = Fixture::new();
    let audit_dir = fx.dir.path().join("audit");
    let away = fx.dir.path().join("away");
    let log = fx.open(AuditMode::Required);
    let open = |i: u64| Record::new(Event::Open, Subject::default(), None).path(format!("/f{i}").as_bytes());
    for i in 0..3 {
        log.record(open(i)).unwrap();
    }
    std::fs::rename(&audit_dir, &away).unwrap();
    std::fs::write(&audit_dir, b"in the way").unwrap();
    assert!(log.upload().await.is_err());
    std::fs::remove_file(&audit_dir).unwrap();
    std::fs::rename(&away, &audit_dir).unwrap();
    for i in 3..6 {
        log.record(open(i)).unwrap();
    }
    log.upload().await.unwrap();
    drop(log);
    let log = fx.open(AuditMode::Required);
    log.record(open(6)).unwrap();
    log.upload().await.unwrap();
    let v = fx.verify().await;
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    assert_eq!(v.records, 7);
}

#[tokio::test]
async fn an_object_planted_at_the_next_segment_name_costs_no_record() {
    let fx = Fixture::new();
    let log = fx.open(AuditMode::Required);
    fx.write(&log, 3, 10).await;
    let first = fx.keys().await.remove(0);
    let next = first.replace("000000000001", "000000000002");
    assert_ne!(first, next);
    fx.store.put_new(&next, Bytes::from_static(b"junk")).await.unwrap();
    for i in 0..4 {
        let subject = Subject {
            uid: 4_000_000,
            gid: 100,
            pid: i,
        };
        log.record(Record::new(Event::Open, subject, None).path(b"/planted"))
            .unwrap();
    }
    let e = log.upload().await.unwrap_err();
    assert!(matches!(e, AuditError::Occupied { .. }), "{e}");
    // The junk goes; the kept records go up and the chain verifies whole.
    fx.store.delete(&next).await.unwrap();
    assert_eq!(log.upload().await.unwrap(), 1);
    let v = fx.verify().await;
    assert_eq!(v.records, 7);
    assert!(v.problems.is_empty(), "{:?}", v.problems);
}

/// A later chain's `chains-seen` record makes a deleted chain, or the
/// deleted end of one, visible to `audit verify`.
#[tokio::test]
async fn a_deleted_chain_or_chain_end_that_a_later_chain_saw_is_caught() {
    let fx = Fixture::new();
    fx.write(&fx.open(AuditMode::Required), 6, 2).await;
    let cli = AuditLog::one_shot(fx.ring.clone(), fx.store.clone(), AuditSettings::default());
    cli.record(Record::new(Event::KeyAdd, Subject::default(), None).detail("slot=abc"))
        .unwrap();
    cli.upload().await.unwrap();
    let mut chains: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for key in fx.keys().await {
        let writer = key.rsplit_once('/').unwrap().0.to_string();
        chains.entry(writer).or_default().push(key);
    }
    let mount_chain = chains.values().find(|keys| keys.len() >= 2).unwrap().clone();
    let cli_chain = chains.values().find(|keys| keys.len() == 1).unwrap().clone();
    // A later command's chain begins with what it found.
    let witness = AuditLog::one_shot(fx.ring.clone(), fx.store.clone(), AuditSettings::default());
    let seen = crate::audit::chains_seen(fx.store.as_ref()).await.unwrap();
    witness
        .record(Record::new(Event::ChainsSeen, Subject::default(), None).detail(seen))
        .unwrap();
    witness.upload().await.unwrap();
    let problems = |segments: &Segments| {
        let records = segments.records(&crate::audit::Filter::default());
        crate::audit::check_chains_seen(segments, &records)
    };
    assert!(problems(&fx.segments().await).is_empty());

    fx.store.delete(&cli_chain[0]).await.unwrap();
    fx.store.delete(mount_chain.last().unwrap()).await.unwrap();
    let found = problems(&fx.segments().await);
    let details: Vec<&str> = found.iter().map(|p| p.detail.as_str()).collect();
    assert_eq!(found.len(), 2, "{details:?}");
    assert!(
        details.iter().any(|d| d.contains("the whole chain is missing")),
        "{details:?}"
    );
    assert!(
        details.iter().any(|d| d.contains("missing from its end")),
        "{details:?}"
    );
}
