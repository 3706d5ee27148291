//! The shared metadata store: a volume's inodes, entries and chunk maps in
//! PostgreSQL, so that several hosts can write one volume.
//!
//! Nothing readable about the files reaches the database: attributes,
//! names, symlink targets, extended attributes and chunk places are sealed
//! (`meta::sealing`) and names are looked up by a keyed hash. What stays
//! clear is what the queries need: inode numbers, which inode an entry
//! names in which directory, chunk indexes and the pack each chunk is in.
//! FORMAT.md ("Metadata in PostgreSQL") lists what a database
//! administrator can and cannot learn.
//!
//! Counters that would need sealed values summed in SQL are kept beside
//! them: each inode's stored bytes (for st_blocks) in a sealed column
//! updated at commit from the transaction's chunk changes, and the
//! volume's totals (for statfs) as one sealed row per host, so hosts never
//! contend for a single counter row.

mod changes;
mod connect;
mod locks;
mod schema;

pub use changes::PgChanges;
pub use connect::Target;
pub use locks::PgLocks;

use super::sealing::{Place, RowSealer};
use super::state::{Cursor, decode_record, encode_record};
use super::{
    ChainHead, ChunkRef, Committed, Database, DatabaseStatus, DirEntry, Found, Inode, Lookup, MetaError, MetadataStore,
    OutagePolicy, ROOT_INO, Record, Result,
};
use crate::codec::{OBJECT_ID_LEN, ObjectId};
use crate::keyring::Keyring;
use connect::{Connection, wait};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

/// Which host a store speaks for: the key of its usage row.
pub type HostId = [u8; 16];

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// Counts a transaction adds to its host's share of the volume's usage.
#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    inodes: i64,
    bytes: i64,
}

impl Usage {
    fn encode(self) -> [u8; 16] {
        let mut out = [0; 16];
        out[..8].copy_from_slice(&self.inodes.to_be_bytes());
        out[8..].copy_from_slice(&self.bytes.to_be_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Result<Usage> {
        let mut r = Cursor(bytes);
        Ok(Usage {
            inodes: r.u64()? as i64,
            bytes: r.u64()? as i64,
        })
    }

    fn add(&mut self, other: Usage) {
        self.inodes += other.inodes;
        self.bytes += other.bytes;
    }
}

/// What the open transaction changed that is written at its commit.
#[derive(Debug, Default)]
struct Pending {
    /// Change of each inode's stored bytes.
    allocated: HashMap<u64, i64>,
    usage: Usage,
    /// Inodes whose rows or chunks were written, and directories whose
    /// entries were: for this host's caches and the others' (`changes.rs`).
    inodes: BTreeSet<u64>,
    dirs: BTreeSet<u64>,
    /// The inodes as written (`Committed::written`).
    written: BTreeMap<u64, Inode>,
}

impl Pending {
    fn note_written(&mut self, inode: &Inode) {
        self.inodes.insert(inode.ino);
        self.written.insert(inode.ino, *inode);
    }

    fn committed(self) -> Committed {
        let written = self
            .written
            .into_values()
            .filter(|inode| !self.allocated.contains_key(&inode.ino))
            .collect();
        Committed {
            inodes: self.inodes.into_iter().collect(),
            dirs: self.dirs.into_iter().collect(),
            written,
        }
    }
}

/// A write of the open transaction whose answer nothing waits for: it goes
/// out with the transaction's next statement, or its COMMIT, in the same
/// round trip. Its failure fails that statement (and so the transaction).
struct Deferred {
    sql: &'static str,
    params: Vec<Box<dyn ToSql + Sync + Send>>,
}

/// What the open transaction knows of inode rows without asking again.
#[derive(Debug, Default)]
struct Known {
    /// Rows it read or wrote: they exist until it commits (serializable:
    /// another host's delete of one fails this transaction instead).
    rows: HashSet<u64>,
    /// Numbers `allocate_ino` handed out that have no row yet.
    fresh: HashSet<u64>,
}

pub struct PgStore {
    link: Arc<Link>,
    sealer: RowSealer,
    host: HostId,
    /// The session of the open transaction: its statements must all go
    /// to the connection that began it.
    transaction: Option<Arc<Session>>,
    /// Whether the open transaction's BEGIN went out: it is sent with the
    /// transaction's first statement, in the same round trip, and a
    /// transaction that sent nothing commits without a word.
    began: AtomicBool,
    pending: Pending,
    /// This host's committed share of the volume's usage (its row).
    host_usage: Usage,
    /// Inode numbers taken from the sequence and not used yet, next last:
    /// one round trip per 64 creates.
    inos: Vec<u64>,
    /// Writes of the open transaction not sent yet, in order.
    deferred: Mutex<Vec<Deferred>>,
    /// Statements of their own (`release_later`) not sent yet: they go
    /// before the next round trip's BEGIN or statement, or at `settle`.
    unsent: Mutex<Vec<Deferred>>,
    known: Mutex<Known>,
    /// Names the volume among the database's advisory locks (`locks`).
    volume_key: i64,
    /// Where, and as whom, transactions tell what they changed.
    channel: String,
    tag: String,
    /// What the last transaction changed (`take_committed`).
    committed: Option<Committed>,
}

fn db(e: tokio_postgres::Error) -> MetaError {
    use tokio_postgres::error::SqlState;
    match e.code() {
        Some(code) if *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED => {
            MetaError::Conflict(e.to_string())
        }
        _ => MetaError::Postgres(e),
    }
}

/// How often a statement outside a transaction is run again when it
/// conflicted with another host's transaction.
const STATEMENT_RETRIES: u32 = 6;

/// How often, at most, a store whose server is gone tries to reconnect;
/// in between its calls fail at once.
const RECONNECT_EVERY: Duration = Duration::from_secs(1);

/// The connection in use, replaced when the server went away: a restart
/// of PostgreSQL (or a failover) costs the transactions under way, not
/// the mount.
struct Link {
    target: Target,
    schema: String,
    /// Run on every new connection, after the search path is set.
    on_connect: Option<String>,
    /// Whether losing and finding the server is logged (the metadata
    /// link's); a second link of the same mount stays quiet.
    logs_outages: bool,
    /// Whether a call that finds the server gone waits for it
    /// (`OutagePolicy::Wait`) instead of failing.
    waits: AtomicBool,
    /// Where a listening link's connections pass their notifications;
    /// each new connection first passes an empty one (`changes.rs`).
    heard: Option<connect::Heard>,
    current: Mutex<Current>,
    stats: Stats,
}

#[derive(Default)]
struct Stats {
    statements: AtomicU64,
    /// Microseconds.
    round_trip: AtomicU64,
    reconnects: AtomicU64,
    errors: AtomicU64,
    /// Transactions that lost to another host's and were run again.
    conflicts: AtomicU64,
    last_error: Mutex<Option<String>>,
}

struct Current {
    conn: Option<Arc<Session>>,
    /// When the last reconnect failed, and why.
    failed: Option<(Instant, String)>,
}

/// A connection with this volume's search path and its prepared
/// statements (by SQL text).
struct Session {
    conn: Connection,
    statements: Mutex<HashMap<&'static str, tokio_postgres::Statement>>,
}

impl Link {
    fn open(
        target: &Target,
        schema: String,
        on_connect: Option<String>,
        heard: Option<connect::Heard>,
    ) -> Result<Link> {
        let link = Link {
            target: target.clone(),
            schema,
            logs_outages: on_connect.is_none(),
            on_connect,
            waits: AtomicBool::new(false),
            heard,
            current: Mutex::new(Current {
                conn: None,
                failed: None,
            }),
            stats: Stats::default(),
        };
        link.session()?;
        Ok(link)
    }

    /// The live session, reconnecting (at most every `RECONNECT_EVERY`)
    /// if the server went away; under `OutagePolicy::Wait`, until it is
    /// back (or the policy changes: an unmount stops the waiting).
    fn session(&self) -> Result<Arc<Session>> {
        loop {
            match self.try_session() {
                Err(MetaError::Unreachable(_)) if self.waits() && !super::is_background() => {
                    std::thread::sleep(RECONNECT_EVERY)
                }
                done => return done,
            }
        }
    }

    fn waits(&self) -> bool {
        self.waits.load(Ordering::SeqCst)
    }

    /// `session` without waiting.
    fn try_session(&self) -> Result<Arc<Session>> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(session) = &current.conn
            && !session.conn.client.is_closed()
        {
            return Ok(session.clone());
        }
        if let Some((when, why)) = &current.failed
            && when.elapsed() < RECONNECT_EVERY
        {
            return Err(MetaError::Unreachable(why.clone()));
        }
        let reconnecting = current.conn.take().is_some();
        match self.connect() {
            Ok(session) => {
                if (reconnecting || current.failed.is_some()) && self.logs_outages {
                    tracing::info!(database = %self.target.describe(), "reconnected to the metadata database");
                    self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                current.failed = None;
                current.conn = Some(session.clone());
                Ok(session)
            }
            Err(e) => {
                if current.failed.is_none() && self.logs_outages {
                    if self.waits() {
                        tracing::warn!(error = %e, "metadata database unreachable; operations wait until it is back");
                    } else {
                        tracing::warn!(error = %e, "metadata database unreachable; operations fail with EIO until it is back");
                    }
                }
                current.failed = Some((Instant::now(), e.to_string()));
                Err(e)
            }
        }
    }

    /// Times one round trip and counts its failure.
    fn timed<T>(&self, f: impl Future<Output = std::result::Result<T, tokio_postgres::Error>>) -> Result<T> {
        let started = Instant::now();
        let result = wait(f);
        let stats = &self.stats;
        stats.statements.fetch_add(1, Ordering::Relaxed);
        stats
            .round_trip
            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        result.map_err(|e| match db(e) {
            MetaError::Conflict(why) => {
                stats.conflicts.fetch_add(1, Ordering::Relaxed);
                MetaError::Conflict(why)
            }
            e => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                *stats.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
                e
            }
        })
    }

    fn status_now(&self) -> DatabaseStatus {
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let connected = current.conn.as_ref().is_some_and(|s| !s.client().is_closed());
        let stats = &self.stats;
        DatabaseStatus {
            server: self.target.describe(),
            connected,
            round_trip_ms: stats.round_trip.load(Ordering::Relaxed) as f64 / 1000.0,
            statements: stats.statements.load(Ordering::Relaxed),
            reconnects: stats.reconnects.load(Ordering::Relaxed),
            errors: stats.errors.load(Ordering::Relaxed),
            conflicts: stats.conflicts.load(Ordering::Relaxed),
            last_error: current
                .failed
                .as_ref()
                .map(|(_, why)| why.clone())
                .or_else(|| stats.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone()),
            outage_policy: if self.waits() {
                OutagePolicy::Wait
            } else {
                OutagePolicy::Fail
            },
        }
    }

    fn connect(&self) -> Result<Arc<Session>> {
        let conn = self.target.connect_hearing(self.heard.clone())?;
        let exists = wait(
            conn.client
                .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&self.schema]),
        )
        .map_err(db)?
        .is_some();
        if !exists {
            return Err(MetaError::Config(format!(
                "the database holds no metadata of this volume (no schema {})",
                self.schema
            )));
        }
        wait(
            conn.client
                // A statement outside BEGIN is a serializable transaction
                // of its own too, so it takes part in conflict detection.
                .batch_execute(&format!(
                    "SET search_path TO {}; SET default_transaction_isolation TO serializable",
                    self.schema
                )),
        )
        .map_err(db)?;
        if let Some(sql) = &self.on_connect {
            wait(conn.client.batch_execute(sql)).map_err(db)?;
        }
        if let Some(heard) = &self.heard {
            let _ = heard.send(String::new());
        }
        Ok(Arc::new(Session {
            conn,
            statements: Mutex::new(HashMap::new()),
        }))
    }
}

impl Database for Link {
    fn status(&self) -> DatabaseStatus {
        self.status_now()
    }

    fn set_outage_policy(&self, policy: OutagePolicy) {
        self.waits.store(policy == OutagePolicy::Wait, Ordering::SeqCst);
    }
}

impl Session {
    fn client(&self) -> &tokio_postgres::Client {
        &self.conn.client
    }

    fn statement(&self, sql: &'static str) -> Result<tokio_postgres::Statement> {
        let mut cache = self.statements.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = cache.get(sql) {
            return Ok(s.clone());
        }
        let prepared = wait(self.client().prepare(sql)).map_err(db)?;
        cache.insert(sql, prepared.clone());
        Ok(prepared)
    }
}

fn corrupt(what: String) -> MetaError {
    MetaError::Corrupt(what)
}

fn object_id(bytes: &[u8]) -> Result<ObjectId> {
    bytes
        .try_into()
        .map_err(|_| corrupt(format!("a pack id of {} bytes in the database", bytes.len())))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends `list` (prepared as `statements`) in order without waiting in
/// between; each one's outcome.
fn send_all<'a>(
    client: &'a tokio_postgres::Client,
    list: &'a [Deferred],
    statements: &'a [tokio_postgres::Statement],
) -> impl Future<Output = Vec<std::result::Result<u64, tokio_postgres::Error>>> + 'a {
    futures_util::future::join_all(list.iter().zip(statements).map(|(d, stmt)| {
        let params: Vec<&(dyn ToSql + Sync)> = d.params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect();
        async move { client.execute(stmt, &params).await }
    }))
}

/// Whether `e` means the connection is gone (the server shut down,
/// restarted, or ended this session), rather than the statement failed.
fn connection_lost(e: &MetaError, session: &Session) -> bool {
    session.client().is_closed()
        || matches!(e, MetaError::Postgres(e)
            if e.is_closed() || e.code().is_some_and(|c| c.code().starts_with("57P")))
}

/// Whether a statement only reads, so running it again changes nothing.
fn reads_only(sql: &str) -> bool {
    sql.starts_with("SELECT") || sql.starts_with("WITH RECURSIVE")
}

/// Database integers are signed; inode numbers and indexes never reach 2^63.
fn int(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

impl PgStore {
    /// Creates the tables of a new volume and opens them.
    pub fn create(target: &Target, ring: &Keyring, host: HostId) -> Result<PgStore> {
        let conn = target.connect()?;
        let name = schema::schema_name(ring.volume_id());
        let ddl = format!(
            "BEGIN; CREATE SCHEMA {name}; SET LOCAL search_path TO {name}; {}
             INSERT INTO volume (id, format) VALUES ('\\x{}', {}); COMMIT;",
            schema::TABLES,
            hex::encode(ring.volume_id()),
            schema::FORMAT
        );
        wait(conn.client.batch_execute(&ddl)).map_err(|e| match e.code() {
            Some(&tokio_postgres::error::SqlState::DUPLICATE_SCHEMA) => MetaError::Config(format!(
                "the database already holds this volume's metadata (schema {name})"
            )),
            _ => db(e),
        })?;
        drop(conn);
        Self::open(target, ring, host)
    }

    /// Opens the tables of an existing volume.
    pub fn open(target: &Target, ring: &Keyring, host: HostId) -> Result<PgStore> {
        let name = schema::schema_name(ring.volume_id());
        let link = Arc::new(Link::open(target, name.clone(), None, None)?);
        let row = link.timed(link.session()?.client().query_one("SELECT id, format FROM volume", &[]))?;
        let (id, format): (Vec<u8>, i32) = (row.get(0), row.get(1));
        if id != ring.volume_id() {
            return Err(corrupt(format!("schema {name} belongs to another volume")));
        }
        let mut format = format;
        for (from, upgrade) in [
            (1, schema::FROM_FORMAT_1),
            (2, schema::FROM_FORMAT_2),
            (3, schema::FROM_FORMAT_3),
        ] {
            if format == from {
                link.timed(link.session()?.client().batch_execute(upgrade))?;
                format = from + 1;
            }
        }
        if format != schema::FORMAT {
            return Err(MetaError::Config(format!(
                "the database schema has format {format}; this release reads format {}",
                schema::FORMAT
            )));
        }
        let mut store = PgStore {
            link,
            sealer: RowSealer::new(ring),
            host,
            transaction: None,
            began: AtomicBool::new(false),
            pending: Pending::default(),
            host_usage: Usage::default(),
            inos: Vec::new(),
            deferred: Mutex::new(Vec::new()),
            unsent: Mutex::new(Vec::new()),
            known: Mutex::new(Known::default()),
            volume_key: locks::key_of(ring.volume_id()).into(),
            channel: changes::channel(ring.volume_id()),
            tag: changes::tag(&host),
            committed: None,
        };
        let host_row = store.query_opt("SELECT body FROM usage WHERE host = $1", &[&host.as_slice()])?;
        if let Some(row) = host_row {
            store.host_usage = Usage::decode(&store.sealer.open(Place::HostUsage(&host), row.get(0))?)?;
        }
        Ok(store)
    }

    /// `export` of the state at one moment, whatever other hosts commit
    /// meanwhile: fsck and gc must not see a chunk moved from one pack to
    /// another twice, or not at all.
    pub fn export_consistent(&mut self, sink: &mut dyn FnMut(Record)) -> Result<()> {
        let session = self.link.session()?;
        self.link.timed(
            session
                .client()
                .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"),
        )?;
        self.transaction = Some(session);
        self.began.store(true, Ordering::SeqCst);
        let exported = self.export(sink);
        match exported {
            Ok(()) => {
                let session = self.transaction.take().expect("the export's transaction");
                self.began.store(false, Ordering::SeqCst);
                self.link.timed(session.client().batch_execute("COMMIT"))
            }
            Err(e) => {
                self.rollback();
                Err(e)
            }
        }
    }

    /// The state at one moment for snapshot `snapshot`, whose packs are
    /// pinned in the same transaction: no host claims them as garbage
    /// from then until [`PgStore::unpin_snapshot`], so they outlive the
    /// window before the snapshot object is in the bucket (where hosts
    /// look for what snapshots keep). Pins of an earlier attempt under
    /// the same id are replaced.
    pub fn export_pinned(&mut self, snapshot: &[u8]) -> Result<Vec<Record>> {
        let mut attempts = 0;
        loop {
            let mut records = Vec::new();
            let pinned = self.write(|db| {
                db.execute("DELETE FROM snapshot_pin WHERE snapshot = $1", &[&snapshot])?;
                db.export(&mut |record| records.push(record))?;
                let packs: std::collections::BTreeSet<&[u8]> = records
                    .iter()
                    .filter_map(|r| match r {
                        Record::Chunk { block, .. } => Some(block.pack.as_slice()),
                        _ => None,
                    })
                    .collect();
                let packs: Vec<&[u8]> = packs.into_iter().collect();
                db.execute(
                    "INSERT INTO snapshot_pin (snapshot, pack) SELECT $1, unnest($2::bytea[])",
                    &[&snapshot, &packs],
                )?;
                Ok(())
            });
            match pinned {
                // It read every row: any host's change meanwhile can
                // conflict with it.
                Err(MetaError::Conflict(_)) if attempts < STATEMENT_RETRIES => attempts += 1,
                Err(e) => return Err(e),
                Ok(()) => return Ok(records),
            }
        }
    }

    /// Drops snapshot `snapshot`'s pins and makes those of `packs` (the
    /// ones only it kept) that no chunk references garbage, in one
    /// transaction; a pack another snapshot pins is not claimed.
    pub fn unpin_snapshot(&mut self, snapshot: &[u8], packs: &[ObjectId]) -> Result<()> {
        let packs: Vec<&[u8]> = packs.iter().map(|id| id.as_slice()).collect();
        self.write(|db| {
            db.execute("DELETE FROM snapshot_pin WHERE snapshot = $1", &[&snapshot])?;
            db.execute(
                "INSERT INTO garbage (pack) SELECT p FROM unnest($1::bytea[]) AS p
                 WHERE NOT EXISTS (SELECT 1 FROM chunk c WHERE c.pack = p)
                 ON CONFLICT (pack) DO NOTHING",
                &[&packs],
            )?;
            Ok(())
        })
    }

    /// The session for a statement: outside a transaction the link may
    /// reconnect; inside one, a lost connection lost the transaction.
    fn session(&self) -> Result<Arc<Session>> {
        match &self.transaction {
            Some(session) if session.client().is_closed() => Err(self.lost_in_transaction()),
            Some(session) => Ok(session.clone()),
            None => self.link.session(),
        }
    }

    fn query(&self, sql: &'static str, params: Params<'_>) -> Result<Vec<Row>> {
        self.run(sql, |session, stmt| async move {
            session.client().query(&stmt, params).await
        })
    }

    fn query_opt(&self, sql: &'static str, params: Params<'_>) -> Result<Option<Row>> {
        self.run(sql, |session, stmt| async move {
            session.client().query_opt(&stmt, params).await
        })
    }

    fn query_one(&self, sql: &'static str, params: Params<'_>) -> Result<Row> {
        self.run(sql, |session, stmt| async move {
            session.client().query_one(&stmt, params).await
        })
    }

    fn execute(&self, sql: &'static str, params: Params<'_>) -> Result<u64> {
        self.run(sql, |session, stmt| async move {
            session.client().execute(&stmt, params).await
        })
    }

    /// Runs one prepared statement. Outside a transaction it is a
    /// serializable transaction of its own, run again (a few times) when
    /// it conflicted with another host's: nothing else of ours depends on
    /// it having run.
    fn run<T, F>(&self, sql: &'static str, call: impl Fn(Arc<Session>, tokio_postgres::Statement) -> F) -> Result<T>
    where
        F: Future<Output = std::result::Result<T, tokio_postgres::Error>>,
    {
        let mut attempts = 0;
        loop {
            let session = self.session()?;
            let stmt = session.statement(sql)?;
            match self.round_trip(&session, call(session.clone(), stmt)) {
                Err(MetaError::Conflict(_)) if self.transaction.is_none() && attempts < STATEMENT_RETRIES => {
                    attempts += 1;
                    std::thread::sleep(Duration::from_micros(rand::random::<u64>() % (1000 << attempts)));
                }
                Err(e) if self.link.waits() && !super::is_background() && connection_lost(&e, &session) => {
                    if self.transaction.is_some() {
                        return Err(self.lost_in_transaction());
                    }
                    if !reads_only(sql) {
                        // It may have been applied before the server went.
                        return Err(MetaError::Unreachable(format!(
                            "{}: the connection was lost during a change",
                            self.link.target.describe()
                        )));
                    }
                    // A read: again, once the server is back.
                }
                done => return done,
            }
        }
    }

    /// The open transaction's connection is gone, and the transaction
    /// with it (it never committed: a lost COMMIT fails in `commit`).
    /// When outages are waited out, the whole transaction runs again
    /// (`Core::retrying`), on the connection the link makes once the
    /// server is back; otherwise the operation fails.
    fn lost_in_transaction(&self) -> MetaError {
        let what = format!(
            "{}: the connection was lost during a transaction",
            self.link.target.describe()
        );
        if self.link.waits() && !super::is_background() {
            MetaError::Conflict(what)
        } else {
            MetaError::Unreachable(what)
        }
    }

    /// One round trip for `f`, preceded in it by the open transaction's
    /// BEGIN if that has not gone out yet (the client pipelines requests
    /// on one connection).
    fn round_trip<T>(
        &self,
        session: &Session,
        f: impl Future<Output = std::result::Result<T, tokio_postgres::Error>>,
    ) -> Result<T> {
        let in_transaction = self.transaction.is_some();
        let begin = in_transaction && !self.began.swap(true, Ordering::SeqCst);
        // Statements of their own cannot go inside a transaction that began.
        let before = if !in_transaction || begin {
            std::mem::take(&mut *lock(&self.unsent))
        } else {
            Vec::new()
        };
        let deferred = if in_transaction {
            std::mem::take(&mut *lock(&self.deferred))
        } else {
            Vec::new()
        };
        if !begin && deferred.is_empty() && before.is_empty() {
            return self.link.timed(f);
        }
        let prepared = |list: &[Deferred]| {
            list.iter()
                .map(|d| session.statement(d.sql))
                .collect::<Result<Vec<_>>>()
        };
        let (before_statements, statements) = match (prepared(&before), prepared(&deferred)) {
            (Ok(b), Ok(d)) => (b, d),
            (Err(e), _) | (_, Err(e)) => {
                lock(&self.unsent).extend(before);
                return Err(e);
            }
        };
        let client = session.client();
        // Sent in this order, answered in this order: the first failure is
        // the one that counts (the rest only say the transaction aborted).
        let alone = send_all(client, &before, &before_statements);
        let begun = async {
            if begin {
                client.batch_execute("BEGIN").await
            } else {
                Ok(())
            }
        };
        let writes = send_all(client, &deferred, &statements);
        let mut alone_outcomes = Vec::new();
        let outcome = self.link.timed(async {
            let (alone, begun, written, result) = futures_util::future::join4(alone, begun, writes, f).await;
            alone_outcomes = alone;
            begun?;
            for w in written {
                w?;
            }
            result
        });
        self.requeue(before, alone_outcomes);
        outcome
    }

    /// Puts back the statements of their own that failed, for the next
    /// round trip (a hold outlives a lost release; the host's next mount
    /// drops it at the latest).
    fn requeue(&self, sent: Vec<Deferred>, outcomes: Vec<std::result::Result<u64, tokio_postgres::Error>>) {
        let failed: Vec<Deferred> = sent
            .into_iter()
            .zip(outcomes)
            .filter_map(|(d, outcome)| outcome.err().map(|_| d))
            .collect();
        if !failed.is_empty() {
            tracing::debug!(count = failed.len(), "hold releases not applied; will send them again");
            lock(&self.unsent).extend(failed);
        }
    }

    /// Sends the statements `release_later` queued, in one round trip.
    fn send_unsent(&self) -> Result<()> {
        let unsent = std::mem::take(&mut *lock(&self.unsent));
        if unsent.is_empty() {
            return Ok(());
        }
        let session = match self.link.session() {
            Ok(session) => session,
            Err(e) => {
                lock(&self.unsent).extend(unsent);
                return Err(e);
            }
        };
        let statements = match unsent
            .iter()
            .map(|d| session.statement(d.sql))
            .collect::<Result<Vec<_>>>()
        {
            Ok(statements) => statements,
            Err(e) => {
                lock(&self.unsent).extend(unsent);
                return Err(e);
            }
        };
        let outcomes = self
            .link
            .timed(async { Ok::<_, tokio_postgres::Error>(send_all(session.client(), &unsent, &statements).await) })?;
        let first_error = outcomes.iter().find_map(|o| o.as_ref().err().map(|e| e.to_string()));
        self.requeue(unsent, outcomes);
        match first_error {
            None => Ok(()),
            Some(e) => Err(MetaError::Unreachable(e)),
        }
    }

    /// Queues a write for the open transaction's next round trip
    /// (`round_trip`); outside a transaction it runs at once.
    fn defer(&self, sql: &'static str, params: Vec<Box<dyn ToSql + Sync + Send>>) -> Result<()> {
        if self.transaction.is_none() {
            let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect();
            return self.execute(sql, &refs).map(|_| ());
        }
        lock(&self.deferred).push(Deferred { sql, params });
        Ok(())
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        lock(&self.known)
    }

    /// Whether inode `ino`'s row exists, as far as the open transaction
    /// knows without asking.
    fn row_known(&self, ino: u64) -> bool {
        self.transaction.is_some() && self.known().rows.contains(&ino)
    }

    /// Runs a change that updates counters in a transaction of its own
    /// when none is open, so the counters commit with it.
    fn write<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        if self.transaction.is_some() {
            return f(self);
        }
        self.begin()?;
        match f(self) {
            Ok(v) => {
                self.commit()?;
                Ok(v)
            }
            Err(e) => {
                self.rollback();
                Err(e)
            }
        }
    }

    /// Writes the counters the transaction changed and commits: one round
    /// trip to read the stored bytes of the inodes whose chunks changed,
    /// one for their new values, this host's usage row and the COMMIT.
    fn write_pending_and_commit(&mut self) -> Result<()> {
        let session = self.session()?;
        let changed: Vec<i64> = self
            .pending
            .allocated
            .iter()
            .filter(|(_, delta)| **delta != 0)
            .map(|(ino, _)| int(*ino))
            .collect();
        let mut inodes: Vec<(i64, Vec<u8>)> = Vec::new();
        if !changed.is_empty() {
            for row in self.query("SELECT ino, usage FROM inode WHERE ino = ANY($1)", &[&changed])? {
                let ino = row.get::<_, i64>(0) as u64;
                let delta = self.pending.allocated.get(&ino).copied().unwrap_or(0);
                let now = (self.open_allocated(ino, row.get(1))? as i64 + delta).max(0) as u64;
                inodes.push((int(ino), self.sealer.seal(Place::InodeUsage(ino), &now.to_be_bytes())));
            }
        }
        let delta = self.pending.usage;
        let host_usage = (delta.inodes != 0 || delta.bytes != 0).then(|| {
            let mut total = self.host_usage;
            total.add(delta);
            self.sealer.seal(Place::HostUsage(&self.host), &total.encode())
        });
        let deferred = !lock(&self.deferred).is_empty();
        if inodes.is_empty() && host_usage.is_none() && !deferred && !self.began.load(Ordering::SeqCst) {
            // Nothing was sent: nothing to commit.
            return Ok(());
        }
        let update_inode = session.statement("UPDATE inode SET usage = $2 WHERE ino = $1")?;
        let upsert_usage = session.statement(
            "INSERT INTO usage (host, body) VALUES ($1, $2) ON CONFLICT (host) DO UPDATE SET body = excluded.body",
        )?;
        let notify = session.statement("SELECT pg_notify($1, $2)")?;
        let changed: BTreeSet<u64> = self.pending.inodes.union(&self.pending.dirs).copied().collect();
        let told = (!changed.is_empty()).then(|| changes::payload(&self.tag, &changed));
        let client = session.client();
        let host = self.host.as_slice();
        let updates = futures_util::future::join_all(
            inodes
                .iter()
                .map(|(ino, sealed)| async { client.execute(&update_inode, &[ino, sealed]).await }),
        );
        let usage = async {
            match &host_usage {
                Some(sealed) => client.execute(&upsert_usage, &[&host, sealed]).await.map(|_| ()),
                None => Ok(()),
            }
        };
        // Delivered at the COMMIT, and only if it commits.
        let tell = async {
            match &told {
                Some(payload) => client.execute(&notify, &[&self.channel, payload]).await.map(|_| ()),
                None => Ok(()),
            }
        };
        self.round_trip(&session, async {
            let (updated, usage, told, committed) =
                futures_util::future::join4(updates, usage, tell, client.batch_execute("COMMIT")).await;
            for result in updated {
                result?;
            }
            usage?;
            told?;
            committed
        })
    }

    fn open_allocated(&self, ino: u64, sealed: &[u8]) -> Result<u64> {
        Cursor(&self.sealer.open(Place::InodeUsage(ino), sealed)?).u64()
    }

    fn seal_inode(&self, inode: &Inode) -> Vec<u8> {
        let mut plain = Vec::with_capacity(64);
        encode_record(&mut plain, &Record::Inode(*inode));
        self.sealer.seal(Place::InodeAttrs(inode.ino), &plain)
    }

    /// The inode sealed in `attrs` of row `ino` (`allocated` left 0).
    fn open_inode(&self, ino: u64, attrs: &[u8]) -> Result<Inode> {
        let plain = self.sealer.open(Place::InodeAttrs(ino), attrs)?;
        let mut r = Cursor(&plain);
        let tag = r.u8()?;
        match decode_record(&mut r, tag)? {
            Some(Record::Inode(inode)) if inode.ino == ino => Ok(inode),
            _ => Err(corrupt(format!("the attributes of inode {ino} are not an inode's"))),
        }
    }

    fn entry_mac(&self, parent: u64, name: &[u8]) -> [u8; 32] {
        self.sealer.name_mac(b"entry", parent, name)
    }

    fn xattr_mac(&self, ino: u64, name: &[u8]) -> [u8; 32] {
        self.sealer.name_mac(b"xattr", ino, name)
    }

    /// The name of an entry row, checked to be the one naming `ino`.
    fn open_entry(&self, parent: u64, name_mac: &[u8], ino: u64, sealed: &[u8]) -> Result<Vec<u8>> {
        let plain = self.sealer.open(Place::EntryName { parent, name_mac }, sealed)?;
        let mut r = Cursor(&plain);
        if r.u64()? != ino {
            return Err(corrupt(format!(
                "an entry of directory {parent} was redirected to inode {ino}"
            )));
        }
        Ok(r.0.to_vec())
    }

    /// Name and value of an extended attribute row.
    fn open_xattr(&self, ino: u64, name_mac: &[u8], sealed: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
        let plain = self.sealer.open(Place::Xattr { ino, name_mac }, sealed)?;
        let mut r = Cursor(&plain);
        let len = r.u8()? as usize;
        let name = r.take(len)?.to_vec();
        Ok((name, r.0.to_vec()))
    }

    fn seal_chunk(&self, ino: u64, index: u64, chunk: &ChunkRef) -> Vec<u8> {
        let mut plain = Vec::with_capacity(OBJECT_ID_LEN + 8);
        plain.extend_from_slice(&chunk.pack);
        plain.extend_from_slice(&chunk.offset.to_be_bytes());
        plain.extend_from_slice(&chunk.len.to_be_bytes());
        self.sealer.seal(Place::Chunk { ino, index }, &plain)
    }

    /// A chunk row, checked to name the pack its clear column names.
    fn open_chunk(&self, ino: u64, index: u64, pack: &[u8], place: &[u8]) -> Result<ChunkRef> {
        let plain = self.sealer.open(Place::Chunk { ino, index }, place)?;
        let mut r = Cursor(&plain);
        let sealed_pack: ObjectId = r.array()?;
        if sealed_pack.as_slice() != pack {
            return Err(corrupt(format!(
                "chunk {index} of inode {ino} was moved to another pack"
            )));
        }
        Ok(ChunkRef {
            pack: sealed_pack,
            offset: r.u32()?,
            len: r.u32()?,
        })
    }

    /// Inode `ino` from its row's sealed attributes and stored bytes,
    /// with the open transaction's chunk changes.
    fn inode_row(&self, ino: u64, attrs: &[u8], usage: &[u8]) -> Result<Inode> {
        let mut inode = self.open_inode(ino, attrs)?;
        if self.transaction.is_some() {
            self.known().rows.insert(ino);
        }
        let pending = self.pending.allocated.get(&ino).copied().unwrap_or(0);
        inode.allocated = (self.open_allocated(ino, usage)? as i64 + pending).max(0) as u64;
        Ok(inode)
    }

    fn note_chunk_change(&mut self, ino: u64, bytes: i64) {
        self.pending.inodes.insert(ino);
        *self.pending.allocated.entry(ino).or_default() += bytes;
        self.pending.usage.bytes += bytes;
    }

    fn entry_rows(&self, rows: Vec<Row>) -> Result<Option<(u64, Vec<u8>)>> {
        let Some(row) = rows.into_iter().next() else {
            return Ok(None);
        };
        let parent = row.get::<_, i64>(0) as u64;
        let name = self.open_entry(parent, row.get(1), row.get::<_, i64>(2) as u64, row.get(3))?;
        Ok(Some((parent, name)))
    }

    fn chunk_rows(&self, ino: u64, rows: Vec<Row>) -> Result<Vec<(u64, ChunkRef)>> {
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let index = row.get::<_, i64>(0) as u64;
            out.push((index, self.open_chunk(ino, index, row.get(1), row.get(2))?));
        }
        out.sort_by_key(|(index, _)| *index);
        Ok(out)
    }
}

impl MetadataStore for PgStore {
    fn begin(&mut self) -> Result<()> {
        self.transaction = Some(self.link.session()?);
        self.began.store(false, Ordering::SeqCst);
        self.pending = Pending::default();
        self.known().rows.clear();
        Ok(())
    }

    fn commit(&mut self) -> Result<()> {
        match self.write_pending_and_commit() {
            Ok(()) => {
                self.transaction = None;
                let pending = std::mem::take(&mut self.pending);
                self.host_usage.add(pending.usage);
                self.committed = Some(pending.committed());
                Ok(())
            }
            Err(e) => {
                self.rollback();
                // A COMMIT that failed may have been applied.
                self.committed = None;
                Err(e)
            }
        }
    }

    fn take_committed(&mut self) -> Option<Committed> {
        self.committed.take()
    }

    fn rollback(&mut self) {
        if self.began.swap(false, Ordering::SeqCst)
            && let Some(session) = &self.transaction
        {
            let _ = self.link.timed(session.client().batch_execute("ROLLBACK"));
        }
        self.transaction = None;
        self.pending = Pending::default();
        self.committed = Some(Committed::default());
        lock(&self.deferred).clear();
        self.known().rows.clear();
    }

    fn inode(&self, ino: u64) -> Result<Option<Inode>> {
        let Some(row) = self.query_opt("SELECT attrs, usage FROM inode WHERE ino = $1", &[&int(ino)])? else {
            return Ok(None);
        };
        self.inode_row(ino, row.get(0), row.get(1)).map(Some)
    }

    fn put_inode(&mut self, inode: &Inode) -> Result<()> {
        let attrs = self.seal_inode(inode);
        let (ino, orphan) = (int(inode.ino), inode.nlink == 0);
        // A new number has no row, a row read in this transaction exists:
        // either way nothing waits for the answer.
        if self.transaction.is_some() {
            self.pending.note_written(inode);
        }
        if self.transaction.is_some() && self.known().fresh.remove(&inode.ino) {
            let usage = self.sealer.seal(Place::InodeUsage(inode.ino), &0u64.to_be_bytes());
            self.defer(
                "INSERT INTO inode (ino, orphan, attrs, usage) VALUES ($1, $2, $3, $4)",
                vec![Box::new(ino), Box::new(orphan), Box::new(attrs), Box::new(usage)],
            )?;
            self.pending.usage.inodes += 1;
            self.known().rows.insert(inode.ino);
            return Ok(());
        }
        if self.row_known(inode.ino) {
            return self.defer(
                "UPDATE inode SET orphan = $2, attrs = $3 WHERE ino = $1",
                vec![Box::new(ino), Box::new(orphan), Box::new(attrs)],
            );
        }
        let usage = self.sealer.seal(Place::InodeUsage(inode.ino), &0u64.to_be_bytes());
        self.write(|s| {
            let row = s.query_one(
                "INSERT INTO inode (ino, orphan, attrs, usage) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (ino) DO UPDATE SET orphan = excluded.orphan, attrs = excluded.attrs
                 RETURNING xmax = 0",
                &[&int(inode.ino), &(inode.nlink == 0), &attrs, &usage],
            )?;
            if row.get::<_, bool>(0) {
                s.pending.usage.inodes += 1;
            }
            s.pending.note_written(inode);
            if s.transaction.is_some() {
                s.known().rows.insert(inode.ino);
            }
            Ok(())
        })
    }

    fn delete_inode(&mut self, ino: u64) -> Result<()> {
        self.known().rows.remove(&ino);
        self.write(|s| {
            let n = s.execute(
                "WITH attrs AS (DELETE FROM xattr WHERE ino = $1) DELETE FROM inode WHERE ino = $1",
                &[&int(ino)],
            )?;
            if n > 0 {
                s.pending.usage.inodes -= 1;
            }
            s.pending.allocated.remove(&ino);
            s.pending.inodes.insert(ino);
            s.pending.written.remove(&ino);
            Ok(())
        })
    }

    fn allocate_ino(&mut self) -> Result<u64> {
        if self.inos.is_empty() {
            // A number a rolled-back transaction took is lost: a gap, as
            // with the sequence itself.
            let rows = self.query("SELECT nextval('ino_seq') FROM generate_series(1, 64)", &[])?;
            self.inos = rows.iter().rev().map(|r| r.get::<_, i64>(0) as u64).collect();
        }
        let ino = self
            .inos
            .pop()
            .ok_or_else(|| corrupt("the inode number sequence returned nothing".into()))?;
        self.known().fresh.insert(ino);
        Ok(ino)
    }

    fn set_next_ino(&mut self, next: u64) -> Result<()> {
        self.inos.clear();
        self.query_one("SELECT setval('ino_seq', $1, false)", &[&int(next.max(2))])?;
        Ok(())
    }

    fn orphans(&self) -> Result<Vec<u64>> {
        // The clear flag only finds them: what is deleted must be an
        // orphan by its sealed record too, or a DBA's flag would delete a
        // linked file.
        let rows = self.query("SELECT ino, attrs FROM inode WHERE orphan ORDER BY ino", &[])?;
        rows.iter()
            .map(|row| {
                let ino = row.get::<_, i64>(0) as u64;
                if self.open_inode(ino, row.get(1))?.nlink != 0 {
                    return Err(corrupt(format!("inode {ino} is marked unlinked but has links")));
                }
                Ok(ino)
            })
            .collect()
    }

    fn hold(&mut self, ino: u64) -> Result<bool> {
        const HOLD: &str = "INSERT INTO opened (ino, host, opens) VALUES ($1, $2, 1)
             ON CONFLICT (ino, host) DO UPDATE SET opens = opened.opens + 1";
        if self.row_known(ino) {
            self.defer(HOLD, vec![Box::new(int(ino)), Box::new(self.host.to_vec())])?;
            return Ok(true);
        }
        let n = self.execute(
            "INSERT INTO opened (ino, host, opens) SELECT $1, $2, 1 WHERE EXISTS (SELECT 1 FROM inode WHERE ino = $1)
             ON CONFLICT (ino, host) DO UPDATE SET opens = opened.opens + 1",
            &[&int(ino), &self.host.as_slice()],
        )?;
        Ok(n > 0)
    }

    fn release(&mut self, ino: u64) -> Result<bool> {
        // One statement, one snapshot: of the first two, exactly one
        // matches the row; and an unlink on another host either sees the
        // hold or is seen here (serializable).
        let row = self.query_opt(
            "WITH gone AS (DELETE FROM opened WHERE ino = $1 AND host = $2 AND opens <= 1),
             fewer AS (UPDATE opened SET opens = opens - 1 WHERE ino = $1 AND host = $2 AND opens > 1)
             SELECT orphan FROM inode WHERE ino = $1",
            &[&int(ino), &self.host.as_slice()],
        )?;
        Ok(row.is_some_and(|r| r.get::<_, bool>(0)))
    }

    fn held(&self, ino: u64) -> Result<bool> {
        // Holds of a host that is gone (its lock connection, and so its
        // liveness lock, ended) no longer count: a host that never comes
        // back does not keep its unlinked files for ever.
        const HELD: &str = concat!(
            "SELECT EXISTS (SELECT 1 FROM opened WHERE ino = $1 AND (host = $2 OR ",
            locks::live_host!(locks::host_key!()),
            "))"
        );
        Ok(self
            .query_one(HELD, &[&int(ino), &self.host.as_slice(), &self.volume_key])?
            .get(0))
    }

    fn release_later(&mut self, ino: u64) -> Result<()> {
        lock(&self.unsent).push(Deferred {
            sql: "WITH gone AS (DELETE FROM opened WHERE ino = $1 AND host = $2 AND opens <= 1)
                  UPDATE opened SET opens = opens - 1 WHERE ino = $1 AND host = $2 AND opens > 1",
            params: vec![Box::new(int(ino)), Box::new(self.host.to_vec())],
        });
        Ok(())
    }

    fn settle(&mut self) -> Result<()> {
        self.send_unsent()
    }

    fn release_holds(&mut self) -> Result<()> {
        // By now the cache has cut the pack that was open at the crash.
        self.execute(
            "WITH packs AS (DELETE FROM open_pack WHERE host = $1) DELETE FROM opened WHERE host = $1",
            &[&self.host.as_slice()],
        )?;
        Ok(())
    }

    fn lookup(&self, parent: u64, name: &[u8]) -> Result<Option<u64>> {
        let mac = self.entry_mac(parent, name);
        let Some(row) = self.query_opt(
            "SELECT ino, name FROM entry WHERE parent = $1 AND name_mac = $2",
            &[&int(parent), &mac.as_slice()],
        )?
        else {
            return Ok(None);
        };
        let ino = row.get::<_, i64>(0) as u64;
        if self.open_entry(parent, &mac, ino, row.get(1))? != name {
            return Err(corrupt(format!("an entry of directory {parent} holds another name")));
        }
        Ok(Some(ino))
    }

    fn lookup_in(&self, parent: u64, name: &[u8]) -> Result<Option<Lookup>> {
        let mac = self.entry_mac(parent, name);
        let Some(row) = self.query_opt(
            "SELECT d.attrs, d.usage, e.ino, e.name, i.attrs, i.usage FROM inode d
             LEFT JOIN entry e ON e.parent = d.ino AND e.name_mac = $2
             LEFT JOIN inode i ON i.ino = e.ino
             WHERE d.ino = $1",
            &[&int(parent), &mac.as_slice()],
        )?
        else {
            return Ok(None);
        };
        let dir = self.inode_row(parent, row.get(0), row.get(1))?;
        let found = match row.get::<_, Option<i64>>(2) {
            None => Found::Nothing,
            Some(ino) => {
                let ino = ino as u64;
                if self.open_entry(parent, &mac, ino, row.get(3))? != name {
                    return Err(corrupt(format!("an entry of directory {parent} holds another name")));
                }
                let inode = match row.get::<_, Option<&[u8]>>(4) {
                    Some(attrs) => Some(self.inode_row(ino, attrs, row.get(5))?),
                    None => None,
                };
                Found::Entry(ino, inode)
            }
        };
        Ok(Some(Lookup { dir, found }))
    }

    fn parent_of(&self, ino: u64) -> Result<Option<u64>> {
        Ok(self.name_of(ino)?.map(|(parent, _)| parent))
    }

    fn name_of(&self, ino: u64) -> Result<Option<(u64, Vec<u8>)>> {
        let rows = self.query(
            "SELECT parent, name_mac, ino, name FROM entry WHERE ino = $1 ORDER BY id LIMIT 1",
            &[&int(ino)],
        )?;
        self.entry_rows(rows)
    }

    fn ancestry(&self, ino: u64, limit: usize) -> Result<Option<super::Ancestry>> {
        if ino == ROOT_INO {
            return Ok(Some(Vec::new()));
        }
        // One statement, one snapshot: a directory another host moves
        // meanwhile is seen either where it was or where it went.
        let rows = self.query(
            "WITH RECURSIVE up (ino, parent, name_mac, name, depth) AS (
                 (SELECT ino, parent, name_mac, name, 1::bigint FROM entry WHERE ino = $1 ORDER BY id LIMIT 1)
                 UNION ALL
                 SELECT e.ino, e.parent, e.name_mac, e.name, up.depth + 1 FROM up
                 CROSS JOIN LATERAL (SELECT ino, parent, name_mac, name FROM entry WHERE ino = up.parent
                                     ORDER BY id LIMIT 1) e
                 WHERE up.parent <> $2 AND up.depth <= $3)
             SELECT ino, parent, name_mac, name FROM up ORDER BY depth",
            &[&int(ino), &int(ROOT_INO), &int(limit as u64)],
        )?;
        let mut chain = Vec::with_capacity(rows.len());
        let mut want = ino;
        for row in &rows {
            let (at, parent) = (row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64);
            if at != want {
                return Err(corrupt(format!("the path of inode {ino} does not add up")));
            }
            chain.push((parent, self.open_entry(parent, row.get(2), at, row.get(3))?));
            want = parent;
        }
        Ok((want == ROOT_INO && chain.len() <= limit).then_some(chain))
    }

    fn insert_entry(&mut self, parent: u64, name: &[u8], ino: u64) -> Result<()> {
        let mac = self.entry_mac(parent, name);
        let mut plain = Vec::with_capacity(8 + name.len());
        plain.extend_from_slice(&ino.to_be_bytes());
        plain.extend_from_slice(name);
        let sealed = self.sealer.seal(Place::EntryName { parent, name_mac: &mac }, &plain);
        self.pending.dirs.insert(parent);
        self.defer(
            "INSERT INTO entry (parent, name_mac, ino, name) VALUES ($1, $2, $3, $4)",
            vec![
                Box::new(int(parent)),
                Box::new(mac.to_vec()),
                Box::new(int(ino)),
                Box::new(sealed),
            ],
        )
    }

    fn remove_entry(&mut self, parent: u64, name: &[u8]) -> Result<()> {
        let mac = self.entry_mac(parent, name);
        self.pending.dirs.insert(parent);
        self.defer(
            "DELETE FROM entry WHERE parent = $1 AND name_mac = $2",
            vec![Box::new(int(parent)), Box::new(mac.to_vec())],
        )
    }

    fn entries(&self, parent: u64, after: u64, limit: usize) -> Result<Vec<DirEntry>> {
        let rows = self.query(
            "SELECT e.id, e.name_mac, e.ino, e.name, i.attrs FROM entry e JOIN inode i ON i.ino = e.ino
             WHERE e.parent = $1 AND e.id > $2 ORDER BY e.id LIMIT $3",
            &[&int(parent), &int(after), &int(limit as u64)],
        )?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let ino = row.get::<_, i64>(2) as u64;
            out.push(DirEntry {
                offset: row.get::<_, i64>(0) as u64,
                name: self.open_entry(parent, row.get(1), ino, row.get(3))?,
                ino,
                kind: self.open_inode(ino, row.get(4))?.kind,
            });
        }
        Ok(out)
    }

    fn has_entries(&self, parent: u64) -> Result<bool> {
        Ok(self
            .query_one("SELECT EXISTS (SELECT 1 FROM entry WHERE parent = $1)", &[&int(parent)])?
            .get(0))
    }

    fn symlink_target(&self, ino: u64) -> Result<Option<Vec<u8>>> {
        let Some(row) = self.query_opt("SELECT target FROM inode WHERE ino = $1", &[&int(ino)])? else {
            return Ok(None);
        };
        row.get::<_, Option<&[u8]>>(0)
            .map(|sealed| self.sealer.open(Place::SymlinkTarget(ino), sealed))
            .transpose()
    }

    fn set_symlink_target(&mut self, ino: u64, target: &[u8]) -> Result<()> {
        let sealed = self.sealer.seal(Place::SymlinkTarget(ino), target);
        let n = self.execute("UPDATE inode SET target = $2 WHERE ino = $1", &[&int(ino), &sealed])?;
        if n == 0 {
            return Err(corrupt(format!("symlink target for missing inode {ino}")));
        }
        Ok(())
    }

    fn xattr(&self, ino: u64, name: &[u8]) -> Result<Option<Vec<u8>>> {
        let mac = self.xattr_mac(ino, name);
        let Some(row) = self.query_opt(
            "SELECT body FROM xattr WHERE ino = $1 AND name_mac = $2",
            &[&int(ino), &mac.as_slice()],
        )?
        else {
            return Ok(None);
        };
        let (stored, value) = self.open_xattr(ino, &mac, row.get(0))?;
        if stored != name {
            return Err(corrupt(format!(
                "an extended attribute of inode {ino} holds another name"
            )));
        }
        Ok(Some(value))
    }

    fn set_xattr(&mut self, ino: u64, name: &[u8], value: &[u8]) -> Result<()> {
        let mac = self.xattr_mac(ino, name);
        let mut plain = Vec::with_capacity(1 + name.len() + value.len());
        plain.push(u8::try_from(name.len()).map_err(|_| corrupt("an extended attribute name over 255 bytes".into()))?);
        plain.extend_from_slice(name);
        plain.extend_from_slice(value);
        let sealed = self.sealer.seal(Place::Xattr { ino, name_mac: &mac }, &plain);
        self.execute(
            "INSERT INTO xattr (ino, name_mac, body) VALUES ($1, $2, $3)
             ON CONFLICT (ino, name_mac) DO UPDATE SET body = excluded.body",
            &[&int(ino), &mac.as_slice(), &sealed],
        )?;
        Ok(())
    }

    fn remove_xattr(&mut self, ino: u64, name: &[u8]) -> Result<bool> {
        let mac = self.xattr_mac(ino, name);
        let n = self.execute(
            "DELETE FROM xattr WHERE ino = $1 AND name_mac = $2",
            &[&int(ino), &mac.as_slice()],
        )?;
        Ok(n > 0)
    }

    fn xattr_names(&self, ino: u64) -> Result<Vec<Vec<u8>>> {
        let rows = self.query("SELECT name_mac, body FROM xattr WHERE ino = $1", &[&int(ino)])?;
        let mut names = rows
            .iter()
            .map(|row| Ok(self.open_xattr(ino, row.get(0), row.get(1))?.0))
            .collect::<Result<Vec<_>>>()?;
        names.sort();
        Ok(names)
    }

    fn chunks(&self, ino: u64, first: u64, last: u64) -> Result<Vec<(u64, ChunkRef)>> {
        let rows = self.query(
            "SELECT idx, pack, place FROM chunk WHERE ino = $1 AND idx >= $2 AND idx <= $3 ORDER BY idx",
            &[&int(ino), &int(first), &int(last)],
        )?;
        self.chunk_rows(ino, rows)
    }

    fn set_chunk(&mut self, ino: u64, index: u64, chunk: Option<ChunkRef>) -> Result<Option<ChunkRef>> {
        self.write(|s| {
            let old = match &chunk {
                Some(c) => {
                    let place = s.seal_chunk(ino, index, c);
                    // A pack that gets a chunk is referenced: no longer
                    // garbage; and it is this host's open one until cut.
                    s.query(
                        "WITH old AS (SELECT idx, pack, place FROM chunk WHERE ino = $1 AND idx = $2),
                         put AS (INSERT INTO chunk (ino, idx, pack, place) VALUES ($1, $2, $3, $4)
                                 ON CONFLICT (ino, idx) DO UPDATE SET pack = excluded.pack, place = excluded.place),
                         kept AS (DELETE FROM garbage WHERE pack = $3),
                         open AS (INSERT INTO open_pack (pack, host) VALUES ($3, $5) ON CONFLICT (pack) DO NOTHING)
                         SELECT idx, pack, place FROM old",
                        &[&int(ino), &int(index), &c.pack.as_slice(), &place, &s.host.as_slice()],
                    )?
                }
                None => s.query(
                    "DELETE FROM chunk WHERE ino = $1 AND idx = $2 RETURNING idx, pack, place",
                    &[&int(ino), &int(index)],
                )?,
            };
            let old = s.chunk_rows(ino, old)?.pop().map(|(_, c)| c);
            let delta = chunk.map_or(0, |c| i64::from(c.len)) - old.map_or(0, |c| i64::from(c.len));
            s.note_chunk_change(ino, delta);
            Ok(old)
        })
    }

    fn remove_chunks_from(&mut self, ino: u64, first: u64) -> Result<Vec<ChunkRef>> {
        self.write(|s| {
            let rows = s.query(
                "DELETE FROM chunk WHERE ino = $1 AND idx >= $2 RETURNING idx, pack, place",
                &[&int(ino), &int(first)],
            )?;
            let removed: Vec<ChunkRef> = s.chunk_rows(ino, rows)?.into_iter().map(|(_, c)| c).collect();
            let bytes: i64 = removed.iter().map(|c| i64::from(c.len)).sum();
            s.note_chunk_change(ino, -bytes);
            Ok(removed)
        })
    }

    fn next_chunk(&self, ino: u64, from: u64) -> Result<Option<u64>> {
        let row = self.query_one(
            "SELECT min(idx) FROM chunk WHERE ino = $1 AND idx >= $2",
            &[&int(ino), &int(from)],
        )?;
        Ok(row.get::<_, Option<i64>>(0).map(|i| i as u64))
    }

    fn next_gap(&self, ino: u64, from: u64) -> Result<u64> {
        let from = int(from);
        // The end of the run of consecutive chunks that starts at `from`
        // (`from` itself when it is not stored).
        let row = self.query_one(
            "SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM chunk WHERE ino = $1 AND idx = $2) THEN $2
                    ELSE (SELECT min(c.idx) + 1 FROM chunk c WHERE c.ino = $1 AND c.idx >= $2
                          AND NOT EXISTS (SELECT 1 FROM chunk d WHERE d.ino = c.ino AND d.idx = c.idx + 1)) END",
            &[&int(ino), &from],
        )?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    fn references(&self, pack: &ObjectId) -> Result<bool> {
        Ok(self
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM chunk WHERE pack = $1)",
                &[&pack.as_slice()],
            )?
            .get(0))
    }

    fn chunks_in(&self, pack: &ObjectId) -> Result<Vec<(u64, u64, ChunkRef)>> {
        // Offsets are sealed: a pack's rows (a few hundred at most) are
        // put in pack order here.
        let rows = self.query("SELECT ino, idx, place FROM chunk WHERE pack = $1", &[&pack.as_slice()])?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let (ino, index) = (row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64);
            out.push((ino, index, self.open_chunk(ino, index, pack, row.get(2))?));
        }
        out.sort_by_key(|(_, _, c)| c.offset);
        Ok(out)
    }

    fn chunks_in_range(&self, pack: &ObjectId, from: u64, to: u64) -> Result<Vec<(u64, u64, ChunkRef)>> {
        let mut chunks = self.chunks_in(pack)?;
        chunks.retain(|(_, _, c)| (from..to).contains(&u64::from(c.offset)));
        Ok(chunks)
    }

    fn pack_usage(&self) -> Result<Vec<(ObjectId, u64)>> {
        let rows = self.query("SELECT ino, idx, pack, place FROM chunk", &[])?;
        let mut usage: BTreeMap<ObjectId, u64> = BTreeMap::new();
        for row in rows {
            let (ino, index) = (row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64);
            let chunk = self.open_chunk(ino, index, row.get(2), row.get(3))?;
            *usage.entry(chunk.pack).or_default() += u64::from(chunk.len) + crate::crypto::SEAL_OVERHEAD as u64;
        }
        Ok(usage.into_iter().collect())
    }

    fn add_garbage(&mut self, id: &ObjectId) -> Result<()> {
        self.execute(
            "INSERT INTO garbage (pack) VALUES ($1) ON CONFLICT (pack) DO NOTHING",
            &[&id.as_slice()],
        )?;
        Ok(())
    }

    fn garbage(&self) -> Result<Vec<ObjectId>> {
        let rows = self.query("SELECT pack FROM garbage ORDER BY pack", &[])?;
        rows.iter().map(|r| object_id(r.get(0))).collect()
    }

    fn claim_garbage(&mut self, ids: &[ObjectId]) -> Result<Vec<ObjectId>> {
        let ids: Vec<&[u8]> = ids.iter().map(|id| id.as_slice()).collect();
        let rows = self.query(
            "DELETE FROM garbage g WHERE g.pack = ANY($1)
             AND NOT EXISTS (SELECT 1 FROM chunk c WHERE c.pack = g.pack)
             AND NOT EXISTS (SELECT 1 FROM open_pack o WHERE o.pack = g.pack)
             AND NOT EXISTS (SELECT 1 FROM snapshot_pin s WHERE s.pack = g.pack)
             RETURNING g.pack",
            &[&ids],
        )?;
        rows.iter().map(|r| object_id(r.get(0))).collect()
    }

    fn pack_cut(&mut self, pack: &ObjectId) -> Result<()> {
        self.execute("DELETE FROM open_pack WHERE pack = $1", &[&pack.as_slice()])?;
        Ok(())
    }

    fn remove_garbage(&mut self, ids: &[ObjectId]) -> Result<()> {
        let ids: Vec<&[u8]> = ids.iter().map(|id| id.as_slice()).collect();
        self.execute("DELETE FROM garbage WHERE pack = ANY($1)", &[&ids])?;
        Ok(())
    }

    fn generation(&self) -> Result<u64> {
        Ok(self.query_one("SELECT generation FROM volume", &[])?.get::<_, i64>(0) as u64)
    }

    fn set_generation(&mut self, generation: u64) -> Result<()> {
        self.execute("UPDATE volume SET generation = $1", &[&int(generation)])?;
        Ok(())
    }

    fn head(&self) -> Result<Option<ChainHead>> {
        let head: Option<Vec<u8>> = self.query_one("SELECT head FROM volume", &[])?.get(0);
        head.map(|h| ChainHead::try_from(h.as_slice()).map_err(|_| corrupt("journal chain head".into())))
            .transpose()
    }

    fn set_head(&mut self, head: Option<ChainHead>) -> Result<()> {
        let head = head.map(|h| h.to_vec());
        self.execute("UPDATE volume SET head = $1", &[&head])?;
        Ok(())
    }

    fn usage(&self) -> Result<(u64, u64)> {
        let mut total = self.pending.usage;
        for row in self.query("SELECT host, body FROM usage", &[])? {
            let host: &[u8] = row.get(0);
            total.add(Usage::decode(&self.sealer.open(Place::HostUsage(host), row.get(1))?)?);
        }
        Ok((total.inodes.max(0) as u64, total.bytes.max(0) as u64))
    }

    /// The database is the persistence: there is no journal to keep.
    fn set_journaling(&mut self, _on: bool) {}

    fn journal_after(&self, _after: u64, _limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        Ok(Vec::new())
    }

    fn trim_journal(&mut self, _upto: u64) -> Result<()> {
        Ok(())
    }

    fn export(&self, sink: &mut dyn FnMut(Record)) -> Result<()> {
        let next = self.query_one(
            "SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END FROM ino_seq",
            &[],
        )?;
        sink(Record::NextIno(next.get::<_, i64>(0) as u64));
        for row in self.query("SELECT ino, attrs, usage, target FROM inode ORDER BY ino", &[])? {
            let ino = row.get::<_, i64>(0) as u64;
            let mut inode = self.open_inode(ino, row.get(1))?;
            inode.allocated = self.open_allocated(ino, row.get(2))?;
            sink(Record::Inode(inode));
            if let Some(sealed) = row.get::<_, Option<&[u8]>>(3) {
                let target = self.sealer.open(Place::SymlinkTarget(ino), sealed)?;
                sink(Record::SymlinkTarget { ino, target });
            }
        }
        for row in self.query("SELECT parent, name_mac, ino, name FROM entry ORDER BY id", &[])? {
            let (parent, ino) = (row.get::<_, i64>(0) as u64, row.get::<_, i64>(2) as u64);
            let name = self.open_entry(parent, row.get(1), ino, row.get(3))?;
            sink(Record::Entry { parent, name, ino });
        }
        let mut xattrs = Vec::new();
        for row in self.query("SELECT ino, name_mac, body FROM xattr", &[])? {
            let ino = row.get::<_, i64>(0) as u64;
            let (name, value) = self.open_xattr(ino, row.get(1), row.get(2))?;
            xattrs.push((ino, name, value));
        }
        xattrs.sort();
        for (ino, name, value) in xattrs {
            sink(Record::Xattr { ino, name, value });
        }
        for row in self.query("SELECT ino, idx, pack, place FROM chunk ORDER BY ino, idx", &[])? {
            let (ino, index) = (row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64);
            let block = self.open_chunk(ino, index, row.get(2), row.get(3))?;
            sink(Record::Chunk { ino, index, block });
        }
        Ok(())
    }

    fn database(&self) -> Option<Arc<dyn Database>> {
        Some(self.link.clone())
    }

    fn import(&mut self, records: &mut dyn Iterator<Item = Record>) -> Result<()> {
        super::in_transaction(self, |meta| {
            for record in records {
                super::ops::apply(meta, super::ops::JournalOp::Put(record))?;
            }
            Ok::<_, MetaError>(())
        })
    }
}

/// The database the PostgreSQL tests use (`scripts/test.sh` starts one).
#[cfg(test)]
pub(crate) fn test_target() -> Target {
    let url = std::env::var("S3VAULT_TEST_POSTGRES")
        .expect("S3VAULT_TEST_POSTGRES names the test database (scripts/test.sh starts one)");
    Target::parse(&url).unwrap()
}

#[cfg(test)]
mod tests;
