//! Tests against a real PostgreSQL server. `scripts/test.sh` starts an
//! unprivileged cluster on 127.0.0.1 and runs them with `--ignored`,
//! naming it in `S3VAULT_TEST_POSTGRES`; a plain `cargo test` skips them.

use super::*;
use crate::crypto::SecretKey;
use crate::meta::file_locks::{Kind, LockTable, Owner, Request};
use crate::meta::{Change, FileKind, OutagePolicy};

fn target() -> Target {
    super::test_target()
}

fn ring() -> Keyring {
    Keyring::new(&SecretKey::random(), crate::crypto::random_bytes())
}

fn fresh() -> PgStore {
    PgStore::create(&target(), &ring(), crate::crypto::random_bytes()).unwrap()
}

/// A second connection looking at the same tables, as a DBA would.
fn admin(ring: &Keyring) -> Connection {
    let conn = target().connect().unwrap();
    let sql = format!("SET search_path TO {}", schema::schema_name(ring.volume_id()));
    wait(conn.client.batch_execute(&sql)).unwrap();
    conn
}

fn sql(conn: &Connection, statement: &str) {
    wait(conn.client.batch_execute(statement)).unwrap();
}

/// Two hosts' stores on one new volume.
fn two_hosts() -> (PgStore, PgStore) {
    let ring = ring();
    let a = PgStore::create(&target(), &ring, [1; 16]).unwrap();
    (a, PgStore::open(&target(), &ring, [2; 16]).unwrap())
}

/// `two_hosts`, each with its lock connection, which says it is alive (a
/// mount always has one); and the volume's keys.
fn two_live_hosts() -> (PgStore, PgStore, PgLocks, PgLocks, Keyring) {
    let ring = ring();
    let a = PgStore::create(&target(), &ring, [1; 16]).unwrap();
    let b = PgStore::open(&target(), &ring, [2; 16]).unwrap();
    let (alive_a, alive_b) = (
        PgLocks::open(&target(), &ring, [1; 16]).unwrap(),
        PgLocks::open(&target(), &ring, [2; 16]).unwrap(),
    );
    (a, b, alive_a, alive_b, ring)
}

/// Ends `db`'s session from another, as a server restart would; whether
/// the server did.
fn terminate(db: &PgStore, ring: &Keyring) -> bool {
    let pid: i32 = db.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let conn = admin(ring);
    wait(conn.client.query_one("SELECT pg_terminate_backend($1)", &[&pid]))
        .unwrap()
        .get(0)
}

fn file(ino: u64) -> Inode {
    Inode {
        ino,
        kind: FileKind::File,
        perm: 0o640,
        uid: 1000,
        gid: 1000,
        nlink: 1,
        size: 123_456,
        atime: 1,
        mtime: 2,
        ctime: 3,
        rdev: 0,
        allocated: 0,
    }
}

#[test]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one"]
fn postgres_behaves_as_every_metadata_store_must() {
    crate::meta::conformance_tests::run_all(&|| Box::new(fresh()));
}

#[test]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one"]
fn postgres_tables_hold_nothing_readable() {
    let ring = ring();
    let mut db = PgStore::create(&target(), &ring, [1; 16]).unwrap();
    db.put_inode(&Inode::root(0, 0, 0)).unwrap();
    db.put_inode(&file(2)).unwrap();
    db.insert_entry(1, b"PHI-MARKER-name.txt", 2).unwrap();
    db.set_symlink_target(2, b"PHI-MARKER-target").unwrap();
    db.set_xattr(2, b"user.PHI-MARKER-xattr", b"PHI-MARKER-value").unwrap();
    db.set_chunk(
        2,
        0,
        Some(ChunkRef {
            pack: [7; 16],
            offset: 4242,
            len: 12_345,
        }),
    )
    .unwrap();
    let conn = admin(&ring);
    let mut dump = Vec::new();
    for table in ["volume", "inode", "entry", "xattr", "chunk", "garbage", "usage"] {
        let query = format!("SELECT t::text FROM {table} t");
        for row in wait(conn.client.query(query.as_str(), &[])).unwrap() {
            dump.extend_from_slice(row.get::<_, &str>(0).as_bytes());
        }
    }
    let dump = String::from_utf8(dump).unwrap();
    assert!(dump.contains(&hex::encode([7; 16])), "pack ids are clear: {dump}");
    for secret in [
        &b"PHI-MARKER"[..],
        b"user.",
        &123_456u64.to_be_bytes(),
        &4242u32.to_be_bytes(),
        &12_345u32.to_be_bytes(),
        &1000u32.to_be_bytes(),
    ] {
        assert!(!dump.contains(&hex::encode(secret)), "{secret:?} in {dump}");
        assert!(!dump.as_bytes().windows(secret.len()).any(|w| w == secret));
    }
}

#[test]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one"]
fn postgres_rows_moved_or_redirected_by_a_dba_are_refused() {
    let ring = ring();
    let mut db = PgStore::create(&target(), &ring, [1; 16]).unwrap();
    db.put_inode(&Inode::root(0, 0, 0)).unwrap();
    for ino in [2, 3] {
        db.put_inode(&file(ino)).unwrap();
        db.insert_entry(1, format!("f{ino}").as_bytes(), ino).unwrap();
        let chunk = ChunkRef {
            pack: [ino as u8; 16],
            offset: 0,
            len: 10,
        };
        db.set_chunk(ino, 0, Some(chunk)).unwrap();
    }
    let conn = admin(&ring);
    // Point the name "f2" at inode 3.
    sql(&conn, "UPDATE entry SET ino = 3 WHERE ino = 2");
    assert!(matches!(db.lookup(1, b"f2"), Err(MetaError::Corrupt(_))));
    assert!(db.entries(1, 0, 10).is_err());
    // Give inode 2 the attributes of inode 3.
    sql(
        &conn,
        "UPDATE inode SET attrs = (SELECT attrs FROM inode WHERE ino = 3) WHERE ino = 2",
    );
    assert!(matches!(db.inode(2), Err(MetaError::Corrupt(_))));
    assert!(db.inode(3).unwrap().is_some());
    // Make chunk 0 of inode 3 read from another pack.
    sql(
        &conn,
        "UPDATE chunk SET pack = '\\x02020202020202020202020202020202' WHERE ino = 3",
    );
    assert!(matches!(db.chunks(3, 0, 0), Err(MetaError::Corrupt(_))));
    // Swap two files' chunk places.
    sql(
        &conn,
        "UPDATE chunk SET place = (SELECT place FROM chunk WHERE ino = 2) WHERE ino = 3",
    );
    assert!(db.chunks(3, 0, 0).is_err());
}

#[test]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one"]
fn postgres_volumes_are_kept_apart_and_reopened() {
    let (one, two) = (ring(), ring());
    let mut a = PgStore::create(&target(), &one, [1; 16]).unwrap();
    let mut b = PgStore::create(&target(), &two, [1; 16]).unwrap();
    a.put_inode(&file(2)).unwrap();
    a.set_chunk(
        2,
        0,
        Some(ChunkRef {
            pack: [1; 16],
            offset: 0,
            len: 77,
        }),
    )
    .unwrap();
    b.put_inode(&file(5)).unwrap();
    assert_eq!(a.inode(5).unwrap(), None);
    assert_eq!(b.usage().unwrap(), (1, 0));
    drop(a);
    let err = PgStore::create(&target(), &one, [1; 16]).err().unwrap().to_string();
    assert!(err.contains("already holds"), "{err}");
    // Another host of the same volume adds its own share of the usage.
    let mut again = PgStore::open(&target(), &one, [2; 16]).unwrap();
    assert_eq!(again.inode(2).unwrap().unwrap().allocated, 77);
    again.put_inode(&file(6)).unwrap();
    assert_eq!(again.usage().unwrap(), (2, 77));
    assert_eq!(
        PgStore::open(&target(), &one, [1; 16]).unwrap().usage().unwrap(),
        (2, 77)
    );
    let err = PgStore::open(&target(), &ring(), [1; 16]).err().unwrap().to_string();
    assert!(err.contains("no metadata of this volume"), "{err}");
}

#[test]
fn an_unreachable_server_is_named_without_its_password() {
    let target = Target::parse("postgresql://alice:hunter2@127.0.0.1:1/vault").unwrap();
    let err = PgStore::open(&target, &ring(), [1; 16]).err().unwrap().to_string();
    assert!(
        err.contains("unreachable") && err.contains("postgresql://alice@127.0.0.1:1/vault"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one"]
fn postgres_a_lost_connection_costs_the_transaction_not_the_store() {
    let ring = ring();
    let mut db = PgStore::create(&target(), &ring, [1; 16]).unwrap();
    db.put_inode(&file(2)).unwrap();
    let kill = |db: &PgStore| assert!(terminate(db, &ring));
    // A transaction under way when the server drops the connection fails,
    // and none of it is kept.
    db.begin().unwrap();
    db.put_inode(&file(3)).unwrap();
    kill(&db);
    let lost = db.put_inode(&file(4)).and_then(|()| db.commit());
    assert!(lost.is_err());
    db.rollback();
    // The next calls reconnect by themselves.
    let back = (0..50).find_map(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        db.inode(2).ok()
    });
    assert!(back.flatten().is_some(), "the store did not reconnect");
    assert_eq!(db.inode(3).unwrap(), None);
    assert_eq!(db.inode(4).unwrap(), None);
    // Outside a transaction a single change made after the loss goes through.
    kill(&db);
    let done = (0..50).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        db.put_inode(&file(5)).is_ok()
    });
    assert!(done);
    assert!(db.inode(5).unwrap().is_some());
    assert_eq!(db.usage().unwrap().0, 2);
}

#[test]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one"]
fn postgres_holds_of_a_host_that_is_gone_no_longer_count() {
    let (mut a, b, alive_a, _alive_b, _ring) = two_live_hosts();
    past_grace();
    a.put_inode(&file(2)).unwrap();
    assert!(a.hold(2).unwrap());
    assert!(b.held(2).unwrap());
    // Host a dies: its connections end, its hold with them.
    drop(alive_a);
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.held(2).unwrap() {
        assert!(Instant::now() < deadline, "a dead host's hold still counts");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(a.held(2).unwrap(), "a host's own holds always count");
}

#[test]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one"]
fn postgres_waiting_out_outages_runs_lost_reads_and_transactions_again() {
    let ring = ring();
    let mut db = PgStore::create(&target(), &ring, [1; 16]).unwrap();
    db.put_inode(&file(2)).unwrap();
    db.database().unwrap().set_outage_policy(OutagePolicy::Wait);
    let kill = |db: &PgStore| {
        terminate(db, &ring);
        // Let the session see its end, as it would after a restart.
        std::thread::sleep(Duration::from_millis(100));
    };
    // A transaction whose connection went is a conflict: the caller runs
    // it again from the start (nothing of it was committed).
    db.begin().unwrap();
    db.inode(2).unwrap();
    kill(&db);
    assert!(matches!(db.inode(2), Err(MetaError::Conflict(_))));
    db.rollback();
    // A read outside a transaction is asked again once reconnected.
    kill(&db);
    assert_eq!(db.inode(2).unwrap().unwrap().ino, 2);
    // So is the start of a transaction: it begins on the new connection.
    kill(&db);
    db.begin().unwrap();
    db.put_inode(&file(3)).unwrap();
    db.commit().unwrap();
    assert!(db.inode(3).unwrap().is_some());
    // Failing at once is the other policy.
    db.database().unwrap().set_outage_policy(OutagePolicy::Fail);
    db.begin().unwrap();
    db.inode(2).unwrap();
    kill(&db);
    assert!(matches!(db.inode(2), Err(MetaError::Unreachable(_))));
    db.rollback();
}

#[test]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one"]
fn postgres_a_linked_inode_flagged_as_orphan_is_refused_not_deleted() {
    let ring = ring();
    let mut db = PgStore::create(&target(), &ring, [1; 16]).unwrap();
    db.put_inode(&file(2)).unwrap();
    db.put_inode(&Inode { nlink: 0, ..file(3) }).unwrap();
    assert_eq!(db.orphans().unwrap(), vec![3]);
    sql(&admin(&ring), "UPDATE inode SET orphan = true WHERE ino = 2");
    assert!(matches!(db.orphans(), Err(MetaError::Corrupt(_))));
}

#[test]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one"]
fn postgres_crossing_transactions_of_two_hosts_are_conflicts() {
    let (mut a, mut b) = two_hosts();
    a.put_inode(&Inode::root(0, 0, 0)).unwrap();
    a.put_inode(&file(2)).unwrap();
    a.put_inode(&file(3)).unwrap();
    // Each reads what the other writes: serializable, one of them loses.
    a.begin().unwrap();
    b.begin().unwrap();
    a.inode(2).unwrap();
    b.inode(3).unwrap();
    let wrote_a = a.put_inode(&Inode { size: 1, ..file(3) });
    let wrote_b = b.put_inode(&Inode { size: 1, ..file(2) });
    let finish = |db: &mut PgStore, wrote: Result<()>| match wrote {
        Ok(()) => db.commit(),
        Err(e) => {
            db.rollback();
            Err(e)
        }
    };
    let first = finish(&mut a, wrote_a);
    let second = finish(&mut b, wrote_b);
    let conflicts = [&first, &second]
        .iter()
        .filter(|r| matches!(r, Err(MetaError::Conflict(_))))
        .count();
    assert_eq!(conflicts, 1, "{first:?} {second:?}");
    assert!(a.database_status().unwrap().conflicts + b.database_status().unwrap().conflicts >= 1);
}

#[test]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one"]
fn postgres_holds_are_counted_per_host_and_dropped_with_the_host() {
    let (mut a, mut b, _alive_a, _alive_b, _) = two_live_hosts();
    a.put_inode(&file(2)).unwrap();
    assert!(!b.held(2).unwrap());
    assert!(a.hold(2).unwrap());
    assert!(a.hold(2).unwrap());
    assert!(!a.release(2).unwrap(), "a linked file is no orphan");
    assert!(b.held(2).unwrap(), "one open of two is left");
    b.put_inode(&Inode { nlink: 0, ..file(2) }).unwrap();
    assert!(a.release(2).unwrap(), "unlinked meanwhile: an orphan");
    assert!(!b.held(2).unwrap());
    assert!(!a.hold(9).unwrap(), "a hold on a missing inode");
    assert!(b.hold(2).unwrap());
    a.hold(2).unwrap();
    b.release_holds().unwrap();
    assert!(a.held(2).unwrap(), "another host's hold went with b's");
    a.release_holds().unwrap();
    assert!(!a.held(2).unwrap());
}

#[test]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one"]
fn postgres_garbage_is_claimed_only_once_cut_and_unreferenced() {
    let (mut a, mut b) = two_hosts();
    a.put_inode(&file(2)).unwrap();
    let pack = [7; 16];
    let chunk = ChunkRef {
        pack,
        offset: 0,
        len: 10,
    };
    a.set_chunk(2, 0, Some(chunk)).unwrap();
    // Another host unmaps the only chunk of a's open pack.
    b.set_chunk(2, 0, None).unwrap();
    b.add_garbage(&pack).unwrap();
    assert_eq!(
        b.claim_garbage(&[pack]).unwrap(),
        Vec::<ObjectId>::new(),
        "a's pack is still open"
    );
    a.pack_cut(&pack).unwrap();
    assert_eq!(b.claim_garbage(&[pack]).unwrap(), vec![pack]);
    assert!(b.garbage().unwrap().is_empty(), "claimed garbage leaves the list");
    // A pack referenced again is not claimed either.
    let other = [8; 16];
    b.add_garbage(&other).unwrap();
    b.set_chunk(2, 1, Some(ChunkRef { pack: other, ..chunk })).unwrap();
    b.pack_cut(&other).unwrap();
    b.add_garbage(&other).unwrap();
    assert!(b.claim_garbage(&[other]).unwrap().is_empty());
}

#[test]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one"]
fn postgres_a_statement_that_lost_to_another_host_runs_again() {
    let (mut a, mut b) = two_hosts();
    let pack = [9; 16];
    a.add_garbage(&pack).unwrap();
    a.begin().unwrap();
    assert_eq!(a.claim_garbage(&[pack]).unwrap(), vec![pack]);
    // b's statement, outside any transaction, waits for a's row lock and
    // then finds the row deleted under it: a serialization failure.
    let other = std::thread::spawn(move || b.remove_garbage(&[pack]).map(|()| b));
    std::thread::sleep(Duration::from_millis(300));
    a.commit().unwrap();
    let b = other.join().unwrap().expect("the statement was not run again");
    assert!(b.database_status().unwrap().conflicts >= 1, "no conflict happened");
    assert!(b.garbage().unwrap().is_empty());
}

#[test]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one"]
fn postgres_a_transaction_costs_no_round_trip_of_its_own() {
    let mut db = fresh();
    db.put_inode(&Inode::root(0, 0, 0)).unwrap();
    let round_trips = |db: &PgStore| db.database_status().unwrap().statements;
    let before = round_trips(&db);
    db.begin().unwrap();
    db.commit().unwrap();
    assert_eq!(round_trips(&db), before, "an empty transaction went to the server");
    db.begin().unwrap();
    db.inode(1).unwrap().unwrap();
    db.put_inode(&file(2)).unwrap();
    db.commit().unwrap();
    // BEGIN rides with the read, the usage row with COMMIT.
    assert_eq!(round_trips(&db), before + 3);
    db.begin().unwrap();
    db.inode(2).unwrap().unwrap();
    db.rollback();
    assert_eq!(db.inode(2).unwrap().unwrap(), file(2));
}

/// The next change `changes` hears other than a (re)connection's.
fn next_heard(changes: &PgChanges) -> Option<Change> {
    loop {
        match changes.next(Duration::from_secs(5)) {
            Some(Change::Unknown) => continue,
            heard => return heard,
        }
    }
}

#[test]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one"]
fn postgres_other_hosts_hear_which_inodes_a_transaction_changed() {
    let ring = ring();
    let mut a = PgStore::create(&target(), &ring, [1; 16]).unwrap();
    let on_b = PgChanges::listen(&target(), &ring, [2; 16]).unwrap();
    let on_a = PgChanges::listen(&target(), &ring, [1; 16]).unwrap();
    // A new listener first forgets everything: it heard nothing before.
    assert_eq!(on_b.next(Duration::from_secs(5)), Some(Change::Unknown));
    assert_eq!(on_a.next(Duration::from_secs(5)), Some(Change::Unknown));
    a.put_inode(&Inode::root(0, 0, 0)).unwrap();
    assert_eq!(next_heard(&on_b), Some(Change::Inodes(vec![1])));

    let before = a.database_status().unwrap().statements;
    a.begin().unwrap();
    a.put_inode(&file(7)).unwrap();
    a.insert_entry(1, b"chart", 7).unwrap();
    a.commit().unwrap();
    assert_eq!(
        a.database_status().unwrap().statements,
        before + 2,
        "telling cost a round trip"
    );
    assert_eq!(next_heard(&on_b), Some(Change::Inodes(vec![1, 7])));

    // What is rolled back is not told; nor is a host told its own.
    a.begin().unwrap();
    a.inode(7).unwrap();
    a.put_inode(&file(7)).unwrap();
    a.rollback();
    a.begin().unwrap();
    a.remove_entry(1, b"chart").unwrap();
    a.commit().unwrap();
    assert_eq!(next_heard(&on_b), Some(Change::Inodes(vec![1])));
    assert_eq!(
        on_a.next(Duration::from_millis(300)),
        None,
        "a host heard its own change"
    );

    // A listener whose connection was ended forgets everything once back.
    let conn = admin(&ring);
    let listening = format!("LISTEN {}", changes::channel(ring.volume_id()));
    let ended = wait(conn.client.query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = $1",
        &[&listening],
    ))
    .unwrap();
    assert_eq!(ended.len(), 2);
    let mut heard = None;
    for _ in 0..5 {
        heard = on_b.next(Duration::from_secs(1));
        if heard.is_some() {
            break;
        }
    }
    assert_eq!(heard, Some(Change::Unknown));
}

#[test]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one"]
fn postgres_older_schemas_are_brought_to_this_format_at_open() {
    for (format, dropped) in [
        (1, "DROP TABLE opened, open_pack, snapshot_pin, file_lock"),
        (2, "DROP TABLE snapshot_pin, file_lock"),
        (3, "DROP TABLE file_lock"),
    ] {
        let ring = ring();
        let mut db = PgStore::create(&target(), &ring, [1; 16]).unwrap();
        db.put_inode(&file(2)).unwrap();
        drop(db);
        let conn = admin(&ring);
        sql(&conn, &format!("{dropped}; UPDATE volume SET format = {format}"));
        let mut db = PgStore::open(&target(), &ring, [1; 16]).unwrap();
        assert_eq!(db.inode(2).unwrap().unwrap().ino, 2);
        assert!(db.hold(2).unwrap());
        db.export_pinned(b"snapshot").unwrap();
        let locks = PgLocks::open(&target(), &ring, [1; 16]).unwrap();
        assert_eq!(locks.set(2, &whole_file(1, Kind::Exclusive)).unwrap(), None);
        let now: i32 = wait(conn.client.query_one("SELECT format FROM volume", &[]))
            .unwrap()
            .get(0);
        assert_eq!(now, schema::FORMAT, "from format {format}");
    }
}

fn whole_file(owner: u64, kind: Kind) -> Request {
    range(owner, 0, u64::MAX >> 1, kind)
}

fn range(owner: u64, start: u64, end: u64, kind: Kind) -> Request {
    Request {
        owner: Owner {
            host: [0; 16],
            id: owner,
        },
        start,
        end,
        kind,
        pid: 4242,
    }
}

/// `request` as host `locks` makes it.
fn from(locks: &PgLocks, request: Request) -> Request {
    Request {
        owner: Owner {
            host: locks.host(),
            id: request.owner.id,
        },
        ..request
    }
}

/// Two hosts' lock tables on one new volume, past the server's grace
/// period after a start (when a host without a connection still counts).
fn two_lock_tables() -> (Keyring, PgLocks, PgLocks) {
    let ring = ring();
    drop(PgStore::create(&target(), &ring, [1; 16]).unwrap());
    let a = PgLocks::open(&target(), &ring, [1; 16]).unwrap();
    let b = PgLocks::open(&target(), &ring, [2; 16]).unwrap();
    past_grace();
    (ring, a, b)
}

/// Waits until the server started more than 15 s ago: before, a host
/// without a connection still counts as alive (it may be reconnecting).
fn past_grace() {
    let conn = target().connect().unwrap();
    let up: f64 = wait(conn.client.query_one(
        "SELECT extract(epoch FROM now() - pg_postmaster_start_time())::float8",
        &[],
    ))
    .unwrap()
    .get(0);
    if up < 16.0 {
        std::thread::sleep(Duration::from_secs_f64(16.0 - up));
    }
}

#[test]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one"]
fn postgres_locks_exclude_each_other_across_hosts() {
    let (_ring, a, b) = two_lock_tables();
    assert_eq!(a.set(5, &from(&a, whole_file(1, Kind::Shared))).unwrap(), None);
    assert_eq!(
        b.set(5, &from(&b, whole_file(1, Kind::Shared))).unwrap(),
        None,
        "readers share"
    );
    let blocked = b.set(5, &from(&b, whole_file(1, Kind::Exclusive))).unwrap().unwrap();
    assert_eq!(
        (blocked.owner.host, blocked.pid, blocked.exclusive),
        ([1; 16], 4242, false)
    );
    assert_eq!(
        b.test(5, &from(&b, whole_file(1, Kind::Exclusive))).unwrap(),
        Some(blocked)
    );
    assert_eq!(
        b.set(6, &from(&b, whole_file(1, Kind::Exclusive))).unwrap(),
        None,
        "another file"
    );
    a.release_owner(5, 1).unwrap();
    assert_eq!(b.set(5, &from(&b, whole_file(1, Kind::Exclusive))).unwrap(), None);
    assert!(a.set(5, &from(&a, whole_file(9, Kind::Shared))).unwrap().is_some());
    b.set(5, &from(&b, whole_file(1, Kind::Unlock))).unwrap();
    assert_eq!(a.set(5, &from(&a, whole_file(9, Kind::Shared))).unwrap(), None);
}

#[test]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one"]
fn postgres_byte_range_locks_split_and_conflict_by_range() {
    let (ring, a, b) = two_lock_tables();
    assert_eq!(a.set(7, &from(&a, range(1, 0, 99, Kind::Exclusive))).unwrap(), None);
    // An unlock in the middle leaves two locks; B fits in the hole.
    assert_eq!(a.set(7, &from(&a, range(1, 40, 59, Kind::Unlock))).unwrap(), None);
    assert_eq!(b.set(7, &from(&b, range(3, 40, 59, Kind::Exclusive))).unwrap(), None);
    let blocked = b.set(7, &from(&b, range(3, 30, 45, Kind::Exclusive))).unwrap().unwrap();
    assert_eq!((blocked.start, blocked.end), (0, 39));
    assert!(b.set(7, &from(&b, range(3, 60, 60, Kind::Shared))).unwrap().is_some());
    // Nothing about the ranges is in the clear.
    let conn = admin(&ring);
    let rows = wait(conn.client.query("SELECT ino, body FROM file_lock ORDER BY ino", &[])).unwrap();
    assert_eq!(rows.len(), 3);
    for row in rows {
        let body: Vec<u8> = row.get(1);
        assert!(
            !body
                .windows(8)
                .any(|w| w == 39u64.to_be_bytes() || w == 59u64.to_be_bytes())
        );
    }
}

#[test]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one"]
fn postgres_a_dead_hosts_locks_no_longer_count() {
    let (ring, a, b) = two_lock_tables();
    assert_eq!(a.set(5, &from(&a, whole_file(1, Kind::Exclusive))).unwrap(), None);
    assert!(b.set(5, &from(&b, whole_file(1, Kind::Exclusive))).unwrap().is_some());
    // The host is gone with its connection (a crash, a kill -9).
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.set(5, &from(&b, whole_file(1, Kind::Exclusive))).unwrap().is_some() {
        assert!(Instant::now() < deadline, "a dead host's lock still counts");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Its row is gone too, and the same host's next mount starts clean.
    let conn = admin(&ring);
    let hosts = wait(conn.client.query("SELECT host FROM file_lock", &[])).unwrap();
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].get::<_, &[u8]>(0), &[2; 16]);
    let b_again = PgLocks::open(&target(), &ring, [2; 16]).unwrap();
    assert_eq!(
        b_again.set(5, &from(&b_again, whole_file(4, Kind::Exclusive))).unwrap(),
        None
    );
}

#[test]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one"]
fn postgres_a_tampered_lock_is_refused() {
    let (ring, a, b) = two_lock_tables();
    assert_eq!(a.set(5, &from(&a, range(1, 0, 9, Kind::Exclusive))).unwrap(), None);
    sql(&admin(&ring), "UPDATE file_lock SET ino = 6");
    assert!(matches!(
        b.set(6, &from(&b, range(1, 0, 9, Kind::Exclusive))),
        Err(MetaError::Corrupt(_))
    ));
}
