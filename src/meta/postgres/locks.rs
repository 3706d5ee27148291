//! The lock table of a shared volume: flock and fcntl locks that exclude
//! each other across hosts (`meta::file_locks` decides; this keeps the
//! rows).
//!
//! Each lock is a row naming its inode, host and owner, its range sealed
//! like any other value. A host's locks live as long as its lock
//! connection: that connection holds a session advisory lock named after
//! the host, and a row whose host holds none belongs to a host that died
//! (or lost the database), so it no longer counts and the next request on
//! that file deletes it. After the database server restarts, no host holds
//! its advisory lock until it reconnects: for 15 s after a start every
//! row counts, and each host with locks reconnects within a second.
//!
//! Requests on one inode are serialized by a transaction-level advisory
//! lock rather than serializable isolation: a lock request is read, then
//! decide, then write, and one waiting a few microseconds for another is
//! cheaper than one failing and running again.

use super::{Link, Result, corrupt, int, lock, schema};
use crate::keyring::Keyring;
use crate::meta::file_locks::{Kind, Lock, LockTable, Owner, Request, apply, conflict};
use crate::meta::sealing::{Place, RowSealer};
use crate::meta::state::Cursor;
use std::collections::HashSet;
use std::sync::Mutex;

/// Whether a row's host is alive: it is this host, or its lock connection
/// holds its advisory lock (`$3` the volume's key), or the server started
/// less than 15 s ago. `$1` the inode, `$2` this host.
macro_rules! alive {
    () => {
        concat!("(host = $2 OR ", live_host!("file_lock.live"), ")")
    };
}

/// Whether the host whose liveness key is the SQL expression `$key` is
/// alive, or the server started less than 15 s ago (`$3` the volume's key).
macro_rules! live_host {
    ($key:expr) => {
        concat!(
            "pg_postmaster_start_time() > now() - interval '15 seconds'
             OR EXISTS (SELECT 1 FROM pg_locks p
                        WHERE p.locktype = 'advisory' AND p.granted AND p.objsubid = 2
                          AND p.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                          AND p.classid::bigint = $3 AND p.objid::bigint = ",
            $key,
            ")"
        )
    };
}
pub(super) use live_host;

/// `key_of(host)` in SQL.
macro_rules! host_key {
    () => {
        "((get_byte(host, 0)::bigint << 24) | (get_byte(host, 1) << 16) | (get_byte(host, 2) << 8)
          | get_byte(host, 3)) & 2147483647"
    };
}
pub(super) use host_key;

const LIVE_ROWS: &str = concat!("SELECT host, owner, body FROM file_lock WHERE ino = $1 AND ", alive!());
const DELETE_DEAD: &str = concat!("DELETE FROM file_lock WHERE ino = $1 AND NOT ", alive!());
const ROWS: &str = "SELECT host, owner, body FROM file_lock WHERE ino = $1";
const SERIALIZE: &str = "SELECT pg_advisory_xact_lock($1)";
const DELETE_MINE: &str = "DELETE FROM file_lock WHERE ino = $1 AND host = $2 AND owner = $3";
const INSERT: &str = "INSERT INTO file_lock (ino, host, live, owner, body) VALUES ($1, $2, $3, $4, $5)";

/// Bytes of a lock's sealed body: start, end, exclusive, pid.
const BODY_LEN: usize = 21;

pub struct PgLocks {
    link: Link,
    sealer: RowSealer,
    host: [u8; 16],
    /// Names the volume among the advisory locks of the database.
    volume_key: i64,
    /// Names this host's liveness lock.
    host_key: i32,
    /// (inode, owner) pairs this host holds locks for: a close of any
    /// other file costs no round trip.
    held: Mutex<HashSet<(u64, u64)>>,
    /// Releases that did not reach the database: sent again by
    /// `keep_alive`, and the rows they name are no longer the owner's
    /// locks meanwhile.
    unreleased: Mutex<HashSet<(u64, u64)>>,
}

/// A positive 31-bit number from the first bytes of `id` (advisory lock
/// keys are compared as `oid`, which is unsigned). The liveness key of a
/// host in SQL, from its id in column `host`, is `host_key!()`.
pub(super) fn key_of(id: &[u8]) -> i32 {
    let mut four = [0; 4];
    four.copy_from_slice(&id[..4]);
    (u32::from_be_bytes(four) & 0x7fff_ffff) as i32
}

impl PgLocks {
    /// Opens this host's lock connection and drops the locks its previous
    /// mount left (the processes that held them are gone).
    pub fn open(target: &super::Target, ring: &Keyring, host: [u8; 16]) -> Result<PgLocks> {
        let volume_key = key_of(ring.volume_id());
        let host_key = key_of(&host);
        let link = Link::open(
            target,
            schema::schema_name(ring.volume_id()),
            Some(format!("SELECT pg_advisory_lock_shared({volume_key}, {host_key})")),
            None,
        )?;
        let locks = PgLocks {
            link,
            sealer: RowSealer::new(ring),
            host,
            volume_key: volume_key.into(),
            host_key,
            held: Mutex::new(HashSet::new()),
            unreleased: Mutex::new(HashSet::new()),
        };
        let session = locks.link.session()?;
        let stmt = session.statement("DELETE FROM file_lock WHERE host = $1")?;
        locks.link.timed(session.client().execute(&stmt, &[&host.as_slice()]))?;
        Ok(locks)
    }

    fn seal(&self, ino: u64, lock: &Lock) -> Vec<u8> {
        let mut body = Vec::with_capacity(BODY_LEN);
        body.extend_from_slice(&lock.start.to_be_bytes());
        body.extend_from_slice(&lock.end.to_be_bytes());
        body.push(lock.exclusive as u8);
        body.extend_from_slice(&lock.pid.to_be_bytes());
        self.sealer
            .seal(self.place(ino, &lock.owner.host, lock.owner.id), &body)
    }

    fn place<'a>(&self, ino: u64, host: &'a [u8], owner: u64) -> Place<'a> {
        Place::Lock { ino, host, owner }
    }

    fn decode(&self, ino: u64, rows: &[tokio_postgres::Row]) -> Result<Vec<Lock>> {
        rows.iter()
            .map(|row| {
                let host: &[u8] = row.get(0);
                let owner = row.get::<_, i64>(1) as u64;
                let body = self.sealer.open(self.place(ino, host, owner), row.get(2))?;
                if body.len() != BODY_LEN {
                    return Err(corrupt(format!("a file lock of {} bytes", body.len())));
                }
                let mut r = Cursor(&body);
                let (start, end) = (r.u64()?, r.u64()?);
                let exclusive = body[16] != 0;
                let pid = u32::from_be_bytes([body[17], body[18], body[19], body[20]]);
                Ok(Lock {
                    owner: Owner {
                        host: host.try_into().map_err(|_| corrupt("a file lock's host id".into()))?,
                        id: owner,
                    },
                    start,
                    end,
                    exclusive,
                    pid,
                })
            })
            .collect()
    }

    /// Deletes the rows of `owner`'s locks on `ino`.
    fn delete_owner(&self, ino: u64, owner: u64) -> Result<()> {
        let session = self.link.session()?;
        let stmt = session.statement(DELETE_MINE)?;
        self.link.timed(
            session
                .client()
                .execute(&stmt, &[&int(ino), &self.host.as_slice(), &(owner as i64)]),
        )?;
        lock(&self.held).remove(&(ino, owner));
        Ok(())
    }

    /// The advisory key that serializes requests on `ino`.
    fn serial_key(&self, ino: u64) -> i64 {
        (self.volume_key << 32) | (ino & 0xffff_ffff) as i64
    }

    /// The rest of a lock transaction whose rows were read: its writes
    /// and COMMIT, or its ROLLBACK, in one round trip.
    fn finish(
        &self,
        session: &super::Session,
        ino: u64,
        request: &Request,
        rows: Result<Vec<Lock>>,
    ) -> Result<Option<Lock>> {
        let client = session.client();
        let held = match rows {
            Ok(held) => held,
            Err(e) => {
                let _ = self.link.timed(client.batch_execute("ROLLBACK"));
                return Err(e);
            }
        };
        if let Some(blocking) = conflict(&held, request) {
            let blocking = *blocking;
            self.link.timed(client.batch_execute("ROLLBACK"))?;
            return Ok(Some(blocking));
        }
        let released = lock(&self.unreleased).contains(&(ino, request.owner.id));
        let mine: Vec<Lock> = held
            .into_iter()
            .filter(|l| l.owner == request.owner && !released)
            .collect();
        let after = apply(&mine, request);
        let (delete, insert) = (session.statement(DELETE_MINE)?, session.statement(INSERT)?);
        let (ino_param, host, owner) = (int(ino), self.host.as_slice(), request.owner.id as i64);
        let sealed: Vec<Vec<u8>> = after.iter().map(|l| self.seal(ino, l)).collect();
        self.link.timed(async {
            let deleted = async { client.execute(&delete, &[&ino_param, &host, &owner]).await };
            let inserted = futures_util::future::join_all(sealed.iter().map(|body| async {
                client
                    .execute(&insert, &[&ino_param, &host, &self.host_key, &owner, body])
                    .await
            }));
            let (deleted, inserted, committed) =
                futures_util::future::join3(deleted, inserted, client.batch_execute("COMMIT")).await;
            deleted?;
            for i in inserted {
                i?;
            }
            committed
        })?;
        lock(&self.unreleased).remove(&(ino, request.owner.id));
        let mut held = lock(&self.held);
        if after.is_empty() {
            held.remove(&(ino, request.owner.id));
        } else {
            held.insert((ino, request.owner.id));
        }
        Ok(None)
    }
}

impl LockTable for PgLocks {
    fn host(&self) -> [u8; 16] {
        self.host
    }

    fn set(&self, ino: u64, request: &Request) -> Result<Option<Lock>> {
        if request.kind == Kind::Unlock && !lock(&self.held).contains(&(ino, request.owner.id)) {
            // Only this host adds rows for its owners.
            return Ok(None);
        }
        let session = self.link.session()?;
        let client = session.client();
        let (serialize, dead, rows) = (
            session.statement(SERIALIZE)?,
            session.statement(DELETE_DEAD)?,
            session.statement(ROWS)?,
        );
        let (ino_param, host) = (int(ino), self.host.as_slice());
        // BEGIN, the per-inode lock, the dead hosts' rows gone and the
        // rest read: one round trip.
        let read = self.link.timed(async {
            let (begun, serialized, deleted, rows) = futures_util::future::join4(
                client.batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED"),
                client.query(&serialize, &[&self.serial_key(ino)]),
                client.execute(&dead, &[&ino_param, &host, &self.volume_key]),
                client.query(&rows, &[&ino_param]),
            )
            .await;
            begun?;
            serialized?;
            deleted?;
            rows
        });
        let rows = match read {
            Ok(rows) => rows,
            Err(e) => {
                // Whatever went wrong, the session must not stay in it.
                let _ = self.link.timed(client.batch_execute("ROLLBACK"));
                return Err(e);
            }
        };
        let decoded = self.decode(ino, &rows);
        self.finish(&session, ino, request, decoded)
    }

    fn test(&self, ino: u64, request: &Request) -> Result<Option<Lock>> {
        let session = self.link.session()?;
        let stmt = session.statement(LIVE_ROWS)?;
        let rows = self.link.timed(
            session
                .client()
                .query(&stmt, &[&int(ino), &self.host.as_slice(), &self.volume_key]),
        )?;
        Ok(conflict(&self.decode(ino, &rows)?, request).copied())
    }

    fn release_owner(&self, ino: u64, owner: u64) -> Result<()> {
        if !lock(&self.held).contains(&(ino, owner)) {
            return Ok(());
        }
        match self.delete_owner(ino, owner) {
            Ok(()) => Ok(()),
            Err(e) => {
                lock(&self.unreleased).insert((ino, owner));
                Err(e)
            }
        }
    }

    fn set_outage_policy(&self, policy: crate::meta::OutagePolicy) {
        crate::meta::Database::set_outage_policy(&self.link, policy);
    }

    fn keep_alive(&self) -> Result<()> {
        if lock(&self.held).is_empty() {
            return Ok(());
        }
        // Never waits out an outage: it runs in every sync, the last one too.
        self.link.try_session()?;
        let unreleased: Vec<(u64, u64)> = lock(&self.unreleased).iter().copied().collect();
        for (ino, owner) in unreleased {
            self.delete_owner(ino, owner)?;
            lock(&self.unreleased).remove(&(ino, owner));
        }
        Ok(())
    }
}
