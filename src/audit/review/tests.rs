//! Each detector with hand-made records, and a whole review of a trail
//! written to a memory store: verdict, digest, tampering, escaping.

use super::*;
use crate::audit::record::Subject;
use crate::audit::segment::{self, GENESIS, Mac};
use crate::crypto::SecretKey;
use crate::store::MemoryStore;
use bytes::Bytes;

const MIN: i64 = 60_000_000_000;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;
/// Monday 2026-11-02 00:00 UTC.
const MONDAY: i64 = 1_793_577_600 * 1_000_000_000;

fn ring() -> Keyring {
    Keyring::new(&SecretKey::random(), [5; 16])
}

fn header(host: &str) -> SegmentHeader {
    SegmentHeader {
        format: segment::FORMAT,
        writer: format!("{:0>16}", host.len()),
        host: host.into(),
        volume: hex::encode([5u8; 16]),
        number: 1,
        first_seq: 1,
        prev_mac: hex::encode(GENESIS),
        opened_ns: 0,
        last_seq: None,
        records: None,
        final_mac: None,
    }
}

fn open(uid: u32, user: &str, path: &str, at: i64) -> Record {
    let mut r = Record::new(Event::Open, Subject { uid, gid: 100, pid: 7 }, None)
        .path(path.as_bytes())
        .flags(libc::O_RDONLY);
    r.user = Some(user.into());
    r.exe = Some("/usr/bin/cat".into());
    r.time_ns = at;
    r
}

fn denied(uid: u32, user: &str, path: &str, at: i64) -> Record {
    let mut r = open(uid, user, path, at);
    r.result = "EACCES".into();
    r
}

fn scope(since: Option<i64>, until: i64, thresholds: &str) -> Scope {
    Scope {
        filter: Filter {
            since_ns: since,
            until_ns: Some(until),
            ..Filter::default()
        },
        tz: TimeZone::UTC,
        thresholds: Thresholds::parse(thresholds).unwrap(),
        now_ns: until,
        live: crate::audit::LiveMetadata::Journal(None),
    }
}

/// Reviews `records` (all from one host) fed straight to the reviewer.
fn review_of(scope: Scope, records: Vec<Record>) -> Review {
    let ring = ring();
    let mut reviewer = Reviewer::new(&ring, scope);
    let h = header("clinic-1");
    for (i, mut r) in records.into_iter().enumerate() {
        r.seq = i as u64 + 1;
        reviewer.record(&h, r);
    }
    reviewer.finish(Vec::new())
}

fn kinds(r: &Review) -> Vec<&'static str> {
    r.findings.iter().map(|f| f.kind).collect()
}

fn only<'a>(r: &'a Review, kind: &str) -> Vec<&'a Finding> {
    r.findings.iter().filter(|f| f.kind == kind).collect()
}

#[test]
fn accesses_outside_working_hours_are_found_per_user_and_day() {
    let records = vec![
        open(1001, "alice", "/p/a", MONDAY + 10 * HOUR),
        open(1001, "alice", "/p/b", MONDAY + 22 * HOUR),
        open(1001, "alice", "/p/c", MONDAY + 23 * HOUR),
        // Saturday, mid-day
        open(1002, "bob", "/p/d", MONDAY + 5 * DAY + 12 * HOUR),
    ];
    let r = review_of(scope(Some(MONDAY), MONDAY + 7 * DAY, ""), records);
    let found = only(&r, "off-hours");
    assert_eq!(found.len(), 2, "{:?}", kinds(&r));
    assert_eq!((found[0].user.as_deref(), found[0].count), (Some("alice"), 2));
    assert_eq!(found[0].records.len(), 2);
    assert_eq!(found[0].records[0].path.as_deref(), Some("/p/b"));
    assert!(found[0].summary.contains("07:00-19:00"), "{}", found[0].summary);
    assert_eq!((found[1].user.as_deref(), found[1].count), (Some("bob"), 1));
}

#[test]
fn working_hours_are_judged_in_the_configured_zone() {
    // 22:00 UTC is 17:00 in New York (EST, UTC-5 in November).
    let records = vec![open(1001, "alice", "/p/a", MONDAY + 22 * HOUR)];
    let r = review_of(
        scope(Some(MONDAY), MONDAY + DAY, "timezone = \"America/New_York\""),
        records.clone(),
    );
    assert!(only(&r, "off-hours").is_empty(), "{:?}", kinds(&r));
    let r = review_of(scope(Some(MONDAY), MONDAY + DAY, ""), records);
    assert_eq!(only(&r, "off-hours").len(), 1);
}

#[test]
fn a_bulk_read_stands_out_against_peers_and_against_the_users_own_days() {
    let day = MONDAY + 10 * HOUR;
    let mut records: Vec<Record> = (0..150)
        .map(|i| open(1003, "mallory", &format!("/p/{i}"), day + i * MIN / 10))
        .collect();
    records.extend((0..20).map(|i| open(1001, "alice", &format!("/p/{i}"), day + i)));
    records.extend((0..10).map(|i| open(1002, "bob", &format!("/p/{i}"), day + i)));
    let r = review_of(scope(Some(MONDAY), MONDAY + DAY, ""), records.clone());
    let bulk = only(&r, "bulk-read");
    assert_eq!(bulk.len(), 1, "{:?}", kinds(&r));
    assert_eq!(bulk[0].user.as_deref(), Some("mallory"));
    assert_eq!(bulk[0].count, 150);
    assert!(bulk[0].summary.contains("150 distinct files"), "{}", bulk[0].summary);
    assert!(bulk[0].summary.contains("other 2 user(s)"), "{}", bulk[0].summary);
    assert_eq!(bulk[0].records.len(), 20, "evidence is capped at `samples`");

    // With mallory's own history of 120 files a day, 150 is not unusual.
    let mut with_history = records;
    for d in 1..=5 {
        let past = MONDAY - d * DAY + 10 * HOUR;
        with_history.extend((0..120).map(|i| open(1003, "mallory", &format!("/p/{i}"), past + i)));
    }
    let r = review_of(scope(Some(MONDAY), MONDAY + DAY, ""), with_history);
    assert!(only(&r, "bulk-read").is_empty(), "{:?}", kinds(&r));

    // Below bulk_min_files nothing is a bulk read, whatever the ratio.
    let few: Vec<Record> = (0..30)
        .map(|i| open(1003, "mallory", &format!("/p/{i}"), day + i))
        .collect();
    let r = review_of(scope(Some(MONDAY), MONDAY + DAY, ""), few);
    assert!(only(&r, "bulk-read").is_empty());
}

#[test]
fn refusals_in_a_burst_are_one_finding_and_scattered_ones_none() {
    let t = MONDAY + 10 * HOUR;
    let mut records: Vec<Record> = (0..6).map(|i| denied(1004, "eve", "/p/secret", t + i * MIN)).collect();
    // Scattered: one an hour.
    records.extend((0..6).map(|i| denied(1001, "alice", "/p/x", t + i * HOUR)));
    // A second burst by eve, later.
    records.extend((0..5).map(|i| denied(1004, "eve", "/p/other", t + 5 * HOUR + i * MIN)));
    let r = review_of(scope(Some(MONDAY), MONDAY + DAY, ""), records);
    let bursts = only(&r, "denied-burst");
    assert_eq!(bursts.len(), 2, "{:?}", r.findings);
    assert!(bursts.iter().all(|f| f.uid == Some(1004)));
    assert_eq!((bursts[0].count, bursts[1].count), (6, 5));
    assert_eq!(bursts[0].records[0].result, "EACCES");
    assert_eq!(r.users.iter().find(|u| u.uid == 1001).unwrap().denied, 6);
}

#[test]
fn first_access_and_new_programs_need_history() {
    let mut records: Vec<Record> = (1..=10)
        .map(|d| open(1001, "alice", "/p/usual", MONDAY - d * DAY + 10 * HOUR))
        .collect();
    records.push(open(1001, "alice", "/p/usual", MONDAY + 10 * HOUR));
    records.push(open(1001, "alice", "/p/never-before", MONDAY + 11 * HOUR));
    let mut scp = open(1001, "alice", "/p/usual", MONDAY + 12 * HOUR);
    scp.exe = Some("/usr/bin/scp".into());
    records.push(scp);
    let r = review_of(scope(Some(MONDAY), MONDAY + DAY, ""), records.clone());
    let first = only(&r, "first-access");
    assert_eq!(first.len(), 1, "{:?}", kinds(&r));
    assert_eq!(first[0].count, 1);
    assert_eq!(first[0].records[0].path.as_deref(), Some("/p/never-before"));
    let new = only(&r, "new-program");
    assert_eq!(new.len(), 1);
    assert!(new[0].summary.starts_with("/usr/bin/scp"), "{}", new[0].summary);

    // Without the history (the period starts at the beginning), neither.
    let r = review_of(scope(None, MONDAY + DAY, ""), records);
    assert!(only(&r, "first-access").is_empty() && only(&r, "new-program").is_empty());
}

#[test]
fn records_arriving_out_of_time_order_do_not_make_a_path_new() {
    // The period's open arrives before the older open of another chain.
    let ring = ring();
    let mut reviewer = Reviewer::new(&ring, scope(Some(MONDAY), MONDAY + DAY, ""));
    let (a, b) = (header("host-a"), header("host-bb"));
    reviewer.record(&b, open(1001, "alice", "/p/x", MONDAY - 20 * DAY));
    reviewer.record(&a, open(1001, "alice", "/p/y", MONDAY + HOUR));
    reviewer.record(&b, open(1001, "alice", "/p/y", MONDAY - 9 * DAY));
    let r = reviewer.finish(Vec::new());
    assert!(only(&r, "first-access").is_empty(), "{:?}", r.findings);
}

#[test]
fn root_reads_audit_off_mounts_and_key_slot_changes_are_found() {
    let mut records = vec![open(0, "root", "/p/a", MONDAY + 10 * HOUR)];
    let mut mount =
        Record::new(Event::Mount, Subject::default(), None).detail("url=s3://b mountpoint=/srv audit=off generation=4");
    mount.time_ns = MONDAY + 9 * HOUR;
    records.push(mount);
    let mut audited = Record::new(Event::Mount, Subject::default(), None).detail("url=s3://b audit=required");
    audited.time_ns = MONDAY + 9 * HOUR;
    records.push(audited);
    let mut key = Record::new(Event::KeyAdd, Subject { uid: 0, gid: 0, pid: 1 }, None).detail("slot=1 kind=passphrase");
    key.time_ns = MONDAY + 13 * HOUR;
    records.push(key);
    let r = review_of(scope(Some(MONDAY), MONDAY + DAY, ""), records);
    assert_eq!(only(&r, "root-read").len(), 1, "{:?}", kinds(&r));
    let off = only(&r, "audit-off-mount");
    assert_eq!(off.len(), 1);
    assert_eq!(off[0].severity, Severity::High);
    let key = only(&r, "key-slot-change");
    assert_eq!(key.len(), 1);
    assert!(key[0].summary.contains("added") && key[0].summary.contains("slot=1"));
    // High first.
    assert_eq!(r.findings[0].severity, Severity::High);
}

#[test]
fn the_path_filter_limits_what_is_counted_and_shown() {
    let records = vec![
        open(1001, "alice", "/patients/smith/a", MONDAY + 22 * HOUR),
        open(1001, "alice", "/payroll/secret", MONDAY + 22 * HOUR),
    ];
    let mut s = scope(Some(MONDAY), MONDAY + DAY, "");
    s.filter.path = Some(glob::Pattern::new("/patients/*").unwrap());
    let r = review_of(s, records);
    assert_eq!(r.records_in_period, 1);
    let json = serde_json::to_string(&r).unwrap();
    assert!(!json.contains("payroll"), "{json}");
    assert_eq!(r.folders.len(), 1);
    assert_eq!(r.folders[0].folder, "/patients/smith");
}

#[test]
fn activity_is_counted_per_day_and_hour_and_per_user() {
    let mut write = open(1001, "alice", "/p/a", MONDAY + 9 * HOUR);
    write.flags = Some("O_WRONLY|O_TRUNC".into());
    let alices = |event, at| {
        let mut r = Record::new(
            event,
            Subject {
                uid: 1001,
                gid: 100,
                pid: 7,
            },
            None,
        )
        .path(b"/p/a");
        r.time_ns = at;
        r
    };
    let mut close = alices(Event::Close, MONDAY + 9 * HOUR + 1);
    close.bytes_written = Some(4096);
    let unlink = alices(Event::Unlink, MONDAY + DAY + 9 * HOUR);
    let records = vec![
        open(1001, "alice", "/p/a", MONDAY + 9 * HOUR),
        write,
        close,
        unlink,
        denied(1002, "bob", "/p/a", MONDAY + 9 * HOUR),
    ];
    let r = review_of(scope(Some(MONDAY), MONDAY + 7 * DAY, ""), records);
    assert_eq!(r.days.len(), 2);
    assert_eq!(r.days[0].date, "2026-11-02");
    assert_eq!(
        r.days[0].counts,
        Counts {
            opens: 2,
            writes: 1,
            deletes: 0,
            denied: 1
        }
    );
    assert_eq!(r.days[1].counts.deletes, 1);
    assert_eq!(r.hours[9].opens, 2);
    let alice = &r.users[0];
    assert_eq!((alice.opens, alice.distinct_files, alice.bytes_written), (2, 1, 4096));
    assert_eq!(alice.first, "2026-11-02 09:00:00 +00:00");
}

#[test]
fn listing_a_directory_is_not_opening_a_file() {
    let mut listing: Vec<Record> = (0..200)
        .map(|i| {
            let mut r = open(0, "root", &format!("/p/{i}"), MONDAY + 10 * HOUR);
            r.flags = Some("O_RDONLY|O_NONBLOCK|O_DIRECTORY".into());
            r
        })
        .collect();
    listing.push(open(1001, "alice", "/p/1/chart", MONDAY + 10 * HOUR));
    let r = review_of(scope(Some(MONDAY), MONDAY + DAY, ""), listing);
    assert!(kinds(&r).is_empty(), "{:?}", kinds(&r));
    assert_eq!(r.days[0].counts.opens, 1);
    assert_eq!(r.folders.len(), 1);
}

/// One host's chain, written segment by segment.
struct Chain {
    prev: Mac,
    seq: u64,
    number: u64,
}

impl Chain {
    const WRITER: &str = "00000000000000aa";

    fn new() -> Chain {
        Chain {
            prev: GENESIS,
            seq: 1,
            number: 1,
        }
    }

    /// Appends `records` in segments of `per`; returns their keys.
    async fn write(
        &mut self,
        ring: &Keyring,
        store: &dyn ObjectStore,
        records: Vec<Record>,
        per: usize,
    ) -> Vec<String> {
        let key = ring.audit_chain_key();
        let mut keys = Vec::new();
        for chunk in records.chunks(per) {
            let mut header = header("clinic-1");
            header.writer = Chain::WRITER.into();
            header.volume = hex::encode(ring.volume_id());
            header.number = self.number;
            header.first_seq = self.seq;
            header.prev_mac = hex::encode(self.prev);
            let mut lines = Vec::new();
            for r in chunk {
                let mut r = r.clone();
                r.seq = self.seq;
                self.seq += 1;
                let json = serde_json::to_string(&r).unwrap();
                self.prev = segment::chain_mac(&key, &self.prev, json.as_bytes());
                lines.push(segment::record_line(&self.prev, &json));
            }
            header.last_seq = Some(self.seq - 1);
            header.records = Some(chunk.len() as u64);
            header.final_mac = Some(hex::encode(self.prev));
            let object_key = segment::object_key(Chain::WRITER, self.number);
            self.number += 1;
            let sealed = segment::seal_object(ring, &object_key, &header, &lines);
            store.put(&object_key, Bytes::from(sealed)).await.unwrap();
            keys.push(object_key);
        }
        keys
    }
}

#[tokio::test]
async fn a_review_of_a_stored_trail_verifies_it_and_digests_its_data() {
    let ring = Arc::new(ring());
    let store = Arc::new(MemoryStore::default());
    let hostile = "/p/<script>alert(1)</script>&\"'/chart";
    let records: Vec<Record> = (0..50)
        .map(|i| {
            open(
                1001,
                "alice",
                if i == 7 { hostile } else { "/p/ok" },
                MONDAY + 10 * HOUR + i,
            )
        })
        .collect();
    let keys = Chain::new().write(&ring, store.as_ref(), records, 10).await;
    let run = |store: Arc<MemoryStore>, now: i64| {
        let ring = ring.clone();
        async move {
            let mut s = scope(Some(MONDAY), MONDAY + DAY, "");
            s.now_ns = now;
            review(store, ring, s).await.unwrap()
        }
    };
    let first = run(store.clone(), MONDAY + 2 * DAY).await;
    assert!(first.integrity.intact, "{:?}", first.integrity.problems);
    assert_eq!((first.integrity.segments, first.integrity.records), (5, 50));
    assert_eq!(first.records_in_period, 50);
    assert!(first.integrity.verdict.starts_with("The audit trail is intact"));
    // Made later, the same review has the same digest.
    let again = run(store.clone(), MONDAY + 3 * DAY).await;
    assert_ne!(first.generated, again.generated);
    assert_eq!(first.digest, again.digest);

    let html = render_html(&first);
    assert!(!html.contains("<script>"), "a file name became markup");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;&amp;&quot;&#39;"));
    assert!(html.contains(&first.digest));
    assert!(html.contains("<svg id=\"chart-days\""));
    assert!(
        !html.contains("http://") || !html.contains("src=\"http"),
        "nothing is fetched"
    );

    // One record edited in the store: damaged, named, and a different digest.
    let body = store.get(&keys[2]).await.unwrap();
    let (header, mut lines) = crate::audit::query::open_segment(&ring, &keys[2], &body).unwrap();
    lines[3] = lines[3].replace("/p/ok", "/p/OK");
    let resealed = segment::seal_object(&ring, &keys[2], &header, &lines);
    store.put(&keys[2], Bytes::from(resealed)).await.unwrap();
    let damaged = run(store.clone(), MONDAY + 2 * DAY).await;
    assert!(!damaged.integrity.intact);
    assert!(damaged.integrity.verdict.contains("DAMAGED"));
    let found = only(&damaged, "audit-damaged");
    assert_eq!(found.len(), 1, "{:?}", damaged.findings);
    assert!(
        found[0].summary.contains("does not match its MAC"),
        "{}",
        found[0].summary
    );
    assert_ne!(damaged.digest, first.digest);
    assert!(render_html(&damaged).contains("verdict bad"));
}

/// The one-million-record figure (run by hand, it takes a while to write):
/// `cargo test --release -- --ignored --nocapture a_million_records`.
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn a_million_records_are_reviewed_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(crate::store::LocalStore::new(dir.path()));
    let ring = Arc::new(ring());
    let started = std::time::Instant::now();
    // 20 users, 5,000 paths, 30 days.
    let mut chain = Chain::new();
    for part in 0..10u64 {
        let records: Vec<Record> = (0..100_000u64)
            .map(|i| {
                let n = part * 100_000 + i;
                let uid = 1000 + (n % 20) as u32;
                let at = MONDAY - 30 * DAY + (n as i64) * (30 * DAY / 1_000_000);
                open(
                    uid,
                    &format!("user{uid}"),
                    &format!("/patients/p{}/chart", n * 7 % 5000),
                    at,
                )
            })
            .collect();
        chain.write(&ring, store.as_ref(), records, 1000).await;
    }
    eprintln!("wrote 1,000,000 records in {:.1?}", started.elapsed());
    let hwm = |reset: bool| {
        if reset {
            let _ = std::fs::write("/proc/self/clear_refs", "5");
        }
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:").map(|v| v.trim().to_string()))
            .unwrap()
    };
    let before = hwm(true);
    let started = std::time::Instant::now();
    let r = review(store, ring, scope(Some(MONDAY - 7 * DAY), MONDAY + DAY, ""))
        .await
        .unwrap();
    let took = started.elapsed();
    eprintln!(
        "reviewed {} records ({} in the period, {} findings) in {took:.1?}; peak RSS {before} before, {} after",
        r.records_read,
        r.records_in_period,
        r.findings.len(),
        hwm(false)
    );
    assert!(r.integrity.intact, "{:?}", r.integrity.problems);
    assert_eq!(r.records_read, 1_000_000);
    assert!(took < std::time::Duration::from_secs(60), "{took:?}");
}
