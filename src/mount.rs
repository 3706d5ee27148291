//! Running a mount: unlock the volume, load its metadata, mount it with
//! FUSE, keep metadata flowing to the store, and flush at the end.

use crate::audit::{AuditLog, AuditSettings, Event, Record, Subject};
use crate::cache::{CacheConfig, PackCache};
use crate::control;
use crate::daemon::Readiness;
use crate::fs::{Core, CoreOptions};
use crate::fuse::{AttrOverrides, FuseAdapter};
use crate::journal::lease::{HEARTBEAT, Lease, LeaseError};
use crate::journal::seen::Position;
use crate::journal::{StateError, checkpoint, segment};
use crate::meta::postgres::PgChanges;
use crate::meta::{Change, MetadataStore};
use crate::store::{Location, S3Options};
use crate::superblock::Unlock;
use crate::volume::{self, VolumeError};
use fuser::MountOption;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub struct MountConfig {
    pub url: String,
    pub mountpoint: PathBuf,
    pub cache_dir: Option<PathBuf>,
    pub read_only: bool,
    pub allow_other: bool,
    pub overrides: AttrOverrides,
    pub s3: S3Options,
    /// How often changed metadata is uploaded.
    pub metadata_interval: Duration,
    pub audit: AuditSettings,
    pub cache: CacheConfig,
    /// Accept a cache directory on tmpfs or ramfs.
    pub allow_volatile_cache: bool,
    /// Mount over a directory that holds entries.
    pub allow_non_empty: bool,
    /// Take the writer's lease even if another host holds it.
    pub force_takeover: bool,
    /// Take a store older than this host has seen as the volume.
    pub accept_older_state: bool,
    /// Set aside a database whose changes never reached the store.
    pub set_aside_unuploaded: bool,
    /// Mount this named snapshot (read-only) instead of the live state.
    pub snapshot: Option<String>,
    /// A read-only mount of the live state: how often to look for the
    /// writer's newer metadata (`None`: never).
    pub follow_interval: Option<Duration>,
    /// Serve Prometheus metrics here (`None`: no metrics).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// What operations do while the shared metadata database is
    /// unreachable (`None`: not given, so fail; refused for a volume
    /// without one).
    pub metadata_outage: Option<crate::meta::OutagePolicy>,
}

/// How long a block the writer stopped using stays in the store, so that
/// followers (which catch up every few seconds) and hosts mounting right now
/// can still read it.
pub const RECLAIM_GRACE: Duration = Duration::from_secs(60);

/// How often, at most, the writer uploads a full checkpoint of the
/// metadata besides the journal: bounds what a fresh host replays.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(60);

/// An error with the exit code it maps to (2: configuration, 1: runtime).
pub type Failure = (i32, String);

fn volume_failure(e: VolumeError) -> Failure {
    (if e.is_usage() { 2 } else { 1 }, e.to_string())
}

/// Mounts and serves until unmounted; returns the process exit code.
pub fn run(config: MountConfig, unlock: Unlock, ready: Readiness) -> i32 {
    keep_block_buffers_out_of_the_heap();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            ready.report(Err((1, format!("cannot start the async runtime: {e}"))));
            return 1;
        }
    };
    if let Some(addr) = config.metrics_addr {
        let _in_runtime = runtime.enter();
        if let Err(e) = crate::metrics::serve(addr) {
            let message = format!("--metrics-addr {addr}: {e}");
            if !ready.is_background() {
                eprintln!("s3vault: {message}");
            }
            ready.report(Err((2, message)));
            return 2;
        }
    }
    // Until the mount is ready, an unreachable store is not silence: each
    // failed attempt is a line on the terminal that waits.
    crate::store::s3::report_failed_attempts(Some(Box::new(ready.progress())));
    let prepared = runtime.block_on(prepare(&config, unlock));
    crate::store::s3::report_failed_attempts(None);
    // `_cache_lock` is held until the daemon exits.
    let (core, mountpoint, cache_dir, _cache_lock, lease, changes) = match prepared {
        Ok(prepared) => prepared,
        Err((code, message)) => {
            if !ready.is_background() {
                eprintln!("s3vault: {message}");
            }
            ready.report(Err((code, message)));
            return code;
        }
    };
    let mut options = vec![
        MountOption::FSName(config.url.clone()),
        // fuser mounts directly as type "fuse" when root and drops its
        // Subtype option there; the kernel's own subtype= option gives the
        // type fuse.s3vault that mount(8), findmnt and umount -t expect.
        MountOption::CUSTOM("subtype=s3vault".into()),
    ];
    if config.allow_other {
        options.push(MountOption::AllowOther);
    }
    if config.read_only {
        options.push(MountOption::RO);
    }
    let adapter = FuseAdapter::new(core.clone(), runtime.handle().clone());
    let mut session = match fuser::Session::new(adapter, &mountpoint, &options) {
        Ok(s) => s,
        Err(e) => {
            runtime.block_on(release_after_failure(lease.as_deref()));
            let message = format!("cannot mount at {}: {e}", mountpoint.display());
            if !ready.is_background() {
                eprintln!("s3vault: {message}");
            }
            ready.report(Err((1, message)));
            return 1;
        }
    };
    raise_readahead(&mountpoint);
    if let Some(changes) = changes {
        follow_other_hosts(changes, &core, session.notifier());
    }
    let socket = control::socket_path(&mountpoint);
    let unmount: control::Unmount = {
        let mountpoint = mountpoint.clone();
        Arc::new(move || unmount_now(&mountpoint))
    };
    let gate = control::Gate::default();
    let log = if ready.is_background() {
        cache_dir.join("s3vault.log").display().to_string()
    } else {
        "stderr".to_string()
    };
    let about = Arc::new(control::About {
        url: config.url.clone(),
        volume_id: hex::encode(core.volume_id()),
        mountpoint: mountpoint.clone(),
        pid: std::process::id(),
        cache_dir: cache_dir.clone(),
        log,
        mounted_ns: crate::os::now_ns(),
    });
    runtime.spawn(serve_control(
        socket.clone(),
        core.clone(),
        about,
        unmount.clone(),
        gate.clone(),
    ));
    runtime.spawn(crate::meta::in_background(sync_periodically(
        core.clone(),
        config.metadata_interval,
    )));
    runtime.spawn(crate::meta::in_background(compact_periodically(core.clone())));
    if config.metrics_addr.is_some() {
        runtime.spawn(publish_status(core.clone()));
    }
    if let Some(log) = core.audit_log() {
        runtime.spawn(audit_periodically(log.clone()));
    }
    runtime.spawn(crate::meta::in_background(unmount_on_signal(unmount, core.clone())));
    if let Some(lease) = &lease {
        runtime.spawn(heartbeat(lease.clone(), core.clone()));
    }
    if ready.is_background() {
        let log = cache_dir.join("s3vault.log");
        if let Err(e) = crate::daemon::detach_stdio(&log) {
            tracing::warn!(error = %e, "cannot redirect output to the log file");
        }
    }
    // The volume's URL and the local mount point are the administrator's
    // configuration, not names inside the volume.
    tracing::info!(
        url = %config.url,
        mountpoint = %mountpoint.display(),
        cache_dir = %cache_dir.display(),
        read_only = config.read_only,
        "mounted"
    );
    ready.report(Ok(()));
    let served = session.run();
    crate::daemon::notify_systemd("STOPPING=1");
    drop(session);
    let _ = std::fs::remove_file(&socket);
    // Let a pending `umount` request receive its answer before we exit.
    let _closed = runtime.block_on(gate.write());
    if let Err(e) = served {
        tracing::error!(error = %e, "FUSE session failed");
    }
    // The kernel's destroy request already synced; this catches a session
    // that ended without one (the mount was torn down from outside).
    let synced = runtime.block_on(core.final_sync());
    let audited = runtime.block_on(close_audit(&core));
    if let Some(lease) = lease.filter(|_| !core.is_fenced())
        && let Err(e) = runtime.block_on(lease.release())
    {
        tracing::warn!(error = %e, "cannot release the volume's lease; the next mount elsewhere needs --force-takeover");
    }
    match (synced, audited) {
        (Ok(()), Ok(())) => {
            tracing::info!("unmounted; everything is in the object store");
            0
        }
        (Err(e), _) => {
            let cache = core.status().cache;
            tracing::error!(
                error = %e,
                pending_blocks = cache.pending_uploads,
                pending_bytes = cache.dirty_bytes,
                "unmounted, but the last changes did not reach the object store; \
                 they stay in the cache directory and upload at its next mount"
            );
            1
        }
        (_, Err(e)) => {
            tracing::error!(error = %e, "unmounted, but the audit log stays local until the next mount");
            1
        }
    }
}

/// Block-sized buffers (sealed and plaintext, 64 KiB to 16 MiB) come and go
/// by the thousand. glibc raises its mmap threshold after the first such
/// buffer is freed and then carves them from per-thread heaps, which
/// fragment and keep the daemon's RSS far above what it uses; a fixed
/// threshold keeps them as mappings returned to the system on free. Fewer
/// arenas bound the rest. Call before any thread starts.
fn keep_block_buffers_out_of_the_heap() {
    // SAFETY: mallopt only adjusts allocator parameters; called while the
    // process is still single-threaded.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// The daemon itself, as the subject of mount and unmount records.
fn daemon_subject() -> Subject {
    let (uid, gid) = crate::os::real_ids();
    Subject {
        uid,
        gid,
        pid: std::process::id(),
    }
}

async fn close_audit(core: &Core) -> Result<(), crate::audit::AuditError> {
    let Some(log) = core.audit_log() else {
        return Ok(());
    };
    log.record(Record::new(Event::Unmount, daemon_subject(), None).detail(position_detail(core)))?;
    log.upload().await.map(|_| ())
}

/// The metadata generation and chain head of a mount, for its audit
/// records: `audit verify` and an administrator can compare them with what
/// the store holds (`s3vault info`).
fn position_detail(core: &Core) -> String {
    Position {
        generation: core.generation().unwrap_or(0),
        head: core.head().ok().flatten(),
    }
    .to_string()
}

/// How the mount was configured, for its audit record (no secrets).
/// In the words of the options (`audit=required cache_size=10.0GiB
/// follow_interval=5s`; sizes without spaces, so each field stays one
/// word).
fn describe(config: &MountConfig, cache_dir: &std::path::Path) -> String {
    let size = |n: u64| crate::units::format_size(n).replace(' ', "");
    format!(
        "url={} mountpoint={} cache_dir={} read_only={} allow_other={} audit={} audit_flush_interval={}s \
         cache_size={} cache_min_free={} max_dirty={} upload_concurrency={} force_takeover={} snapshot={} \
         follow_interval={}",
        config.url,
        config.mountpoint.display(),
        cache_dir.display(),
        config.read_only,
        config.allow_other,
        config.audit.mode,
        config.audit.flush_interval.as_secs(),
        size(config.cache.limit),
        config.cache.min_free.to_string().replace(' ', ""),
        size(config.cache.max_dirty),
        config.cache.upload_concurrency,
        config.force_takeover,
        config.snapshot.as_deref().unwrap_or("none"),
        config
            .follow_interval
            .map_or_else(|| "none".into(), |d| humantime::format_duration(d).to_string()),
    )
}

/// Forgets what other hosts change, in this host's caches and the
/// kernel's (attributes and pages), as they commit it; on a thread of its
/// own, which ends with the core.
fn follow_other_hosts(changes: PgChanges, core: &Arc<Core>, notifier: fuser::Notifier) {
    let core = Arc::downgrade(core);
    let followed = std::thread::Builder::new()
        .name("s3vault-changes".into())
        .spawn(move || {
            loop {
                let change = changes.next(Duration::from_secs(1));
                let Some(core) = core.upgrade() else {
                    return;
                };
                let Some(change) = change else {
                    continue;
                };
                core.others_changed(&change);
                if let Change::Inodes(inos) = &change {
                    for ino in inos {
                        // ENOENT: the kernel does not have it.
                        let _ = notifier.inval_inode(*ino, 0, 0);
                    }
                }
            }
        });
    if let Err(e) = followed {
        tracing::warn!(error = %e, "cannot follow other hosts' changes; they show within the attribute TTL");
    }
}

/// The core, where it is mounted, its cache directory (and lock), the
/// lease of an embedded volume, and what other hosts of a shared one
/// change.
type Prepared = (
    Arc<Core>,
    PathBuf,
    PathBuf,
    volume::CacheLock,
    Option<Arc<Lease>>,
    Option<PgChanges>,
);

async fn prepare(config: &MountConfig, unlock: Unlock) -> Result<Prepared, Failure> {
    let location = Location::parse(&config.url).map_err(|e| (2, e))?;
    let mountpoint = std::fs::canonicalize(&config.mountpoint).map_err(|e| {
        let shown = config.mountpoint.display();
        let hint = if e.raw_os_error() == Some(libc::ENOTCONN) {
            format!(" (a mount whose daemon is gone: unmount it with `fusermount3 -u {shown}`)")
        } else {
            String::new()
        };
        (2, format!("mount point {shown}: {e}{hint}"))
    })?;
    if !mountpoint.is_dir() {
        return Err((2, format!("mount point {} is not a directory", mountpoint.display())));
    }
    crate::mountpoint::check(&mountpoint, config.allow_non_empty).map_err(|e| (2, e))?;
    let mut store = location.open(&config.s3).await.map_err(|e| volume_failure(e.into()))?;
    if config.metrics_addr.is_some() {
        store = Arc::new(crate::store::MeteredStore::new(store));
    }
    let volume = volume::unlock(store.clone(), &config.url, &unlock, &config.s3)
        .await
        .map_err(volume_failure)?;
    drop(unlock);
    let cache_dir = config.cache_dir.clone().unwrap_or_else(|| {
        let live = volume::default_cache_dir(&volume.superblock.volume_id);
        match &config.snapshot {
            Some(name) => live
                .join("snapshots")
                .join(hex::encode(volume.ring.snapshot_name_id(name.as_bytes()))),
            None => live,
        }
    });
    volume::prepare_cache_dir(&cache_dir).map_err(volume_failure)?;
    if !config.allow_volatile_cache && crate::os::is_volatile(&cache_dir).unwrap_or(false) {
        return Err((
            2,
            format!(
                "cache directory {} is in memory (tmpfs): writes not yet uploaded would be lost \
                 at a reboot; use a directory on disk, or --allow-volatile-cache if that is acceptable",
                cache_dir.display()
            ),
        ));
    }
    let cache_lock = volume::lock_cache_dir(&cache_dir).map_err(volume_failure)?;
    // Several hosts write a volume whose metadata is in a shared database,
    // which orders their changes: no lease to take.
    let lease = if config.read_only || volume.superblock.has_shared_metadata() {
        None
    } else {
        let writer = volume::writer_id(&cache_dir).map_err(volume_failure)?;
        let lease = Lease::acquire(store.clone(), volume.ring.clone(), &writer, config.force_takeover)
            .await
            .map_err(|e| match e {
                LeaseError::Held(holder)
                    if holder.host == crate::os::hostname() && crate::os::is_s3vault(holder.pid) =>
                {
                    (2, held_on_this_host(&config.url, holder.pid))
                }
                LeaseError::Held(_) | LeaseError::Unreadable(_) => (2, e.to_string()),
                e => (1, format!("cannot take the volume's lease: {e}")),
            })?;
        if let Some(previous) = lease.taken_from() {
            tracing::warn!(
                host = %previous.host,
                pid = previous.pid,
                "took the volume over from another writer (--force-takeover)"
            );
        }
        Some(Arc::new(lease))
    };
    // From here on the lease is ours: a mount that fails gives it back, or
    // the next mount from another cache directory would be refused.
    let rest: Result<(Arc<Core>, Option<PgChanges>), Failure> = async {
        // Where the bucket can retain objects (S3 Object Lock), audit
        // segments and the volume's anchors are retained.
        let retain_for = crate::audit::retention_for(store.as_ref(), config.audit.retain_for).await;
        // A snapshot is in the bucket, wherever the live metadata is.
        let shared = match config.snapshot {
            Some(_) => None,
            None => volume::open_shared(&volume, &cache_dir).map_err(volume_failure)?,
        };
        if shared.is_none() && config.metadata_outage.is_some() && config.snapshot.is_none() {
            return Err((
                2,
                "--metadata-outage is for volumes with their metadata in PostgreSQL; this one keeps it in the bucket"
                    .to_string(),
            ));
        }
        let metadata_place = shared
            .as_ref()
            .map_or_else(|| "bucket".to_string(), |s| s.place.clone());
        let (shared, locks, changes) = match shared {
            Some(s) => (Some(s.meta), Some(s.locks), Some(s.changes)),
            None => (None, None, None),
        };
        let loaded: (Box<dyn MetadataStore>, _, _, _, _) = match (shared, &config.snapshot) {
            // The database is the live state: nothing to load or compare.
            (Some(meta), _) => (Box::new(meta), false, None, None, None),
            (None, Some(name)) => (
                Box::new(
                    volume::load_snapshot(&volume, &cache_dir, name)
                        .await
                        .map_err(volume_failure)?,
                ),
                false,
                None,
                None,
                None,
            ),
            (None, None) => {
                let options = volume::LoadOptions {
                    accept_older_state: config.accept_older_state,
                    set_aside_unuploaded: config.set_aside_unuploaded,
                    anchored: retain_for.is_some(),
                };
                let live = volume::load_live(&volume, &cache_dir, options)
                    .await
                    .map_err(volume_failure)?;
                (
                    Box::new(live.meta),
                    live.unsynced,
                    live.accepted,
                    Some(live.seen),
                    live.anchor,
                )
            }
        };
        let (meta, unsynced, accepted, seen, anchor) = loaded;
        let shared = volume.superblock.has_shared_metadata() && config.snapshot.is_none();
        // A read-only mount of a shared volume reads the database itself.
        let follow = config
            .follow_interval
            .filter(|_| config.read_only && config.snapshot.is_none() && !shared);
        let options = CoreOptions {
            read_only: config.read_only,
            shared_metadata: shared,
            overrides: config.overrides,
            reclaim_grace: RECLAIM_GRACE,
            checkpoint_interval: CHECKPOINT_INTERVAL,
            follower: follow.is_some(),
            ..CoreOptions::default()
        };
        let mut audit_settings = config.audit.clone();
        audit_settings.retain_for = retain_for;
        let audit = AuditLog::open(
            &cache_dir.join("audit"),
            volume.ring.clone(),
            store.clone(),
            audit_settings,
        )
        .map_err(|e| (1, format!("cannot open the audit log: {e}")))?;
        if let Some(retain_for) = retain_for {
            let days = retain_for.as_secs() / 86_400;
            tracing::info!(
                days,
                "bucket has S3 Object Lock: audit segments and anchors are retained"
            );
        }
        let slot = volume
            .superblock
            .slots
            .get(volume.slot)
            .map_or_else(String::new, |s| s.id());
        let mut opened = vec![
            Record::new(Event::Mount, daemon_subject(), None).detail(format!(
                "{} metadata={metadata_place} {} superblock_revision={}",
                describe(config, &cache_dir),
                Position {
                    generation: meta.generation().unwrap_or(0),
                    head: meta.head().ok().flatten(),
                },
                volume.superblock.revision,
            )),
            Record::new(Event::KeyUse, daemon_subject(), None).detail(format!("slot={slot}")),
        ];
        match crate::audit::chains_seen(store.as_ref()).await {
            Ok(chains) => opened.push(Record::new(Event::ChainsSeen, daemon_subject(), None).detail(chains)),
            Err(e) => tracing::warn!(error = %e, "cannot list the audit chains to record them"),
        }
        if let Some(accepted) = accepted {
            tracing::warn!("accepted a store older than this host had seen (--accept-older-state)");
            opened.push(Record::new(Event::AcceptOlderState, daemon_subject(), None).detail(accepted));
        }
        for record in opened {
            audit
                .record(record)
                .map_err(|e| (1, format!("cannot write the audit log: {e}")))?;
        }
        let blocks = PackCache::open(&cache_dir.join("blocks"), config.cache.clone(), store.clone()).map_err(|e| {
            (
                1,
                format!("cannot open the block cache in {}: {e}", cache_dir.display()),
            )
        })?;
        blocks.spawn_uploader();
        tokio::spawn(sample_cache_rates(blocks.clone()));
        let core = Core::new(
            meta,
            store,
            blocks,
            volume.ring.clone(),
            volume.superblock.chunk_size,
            options,
        );
        let core = match locks {
            Some(locks) => core.with_locks(Arc::new(locks)),
            None => core,
        };
        // With --audit=off the log still takes the mount's own records
        // (AuditLog::record drops the rest).
        let core = Arc::new(core.with_audit(audit));
        if let Some(seen) = seen {
            core.remember_in(seen);
            if let Some(retain_for) = retain_for {
                core.anchor_over(anchor, retain_for, volume.superblock.revision);
            }
        }
        let orphans = core
            .remove_orphans()
            .map_err(|e| (1, format!("cannot clean up unlinked files: {e}")))?;
        if unsynced || orphans > 0 {
            core.mark_changed();
        }
        // Only once mounted: the mount itself fails at once if the
        // database is gone.
        core.set_outage_policy(config.metadata_outage.unwrap_or_default());
        if lease.as_ref().is_some_and(|l| l.taken_from().is_some()) {
            // Claim the next metadata generation now: the previous writer's next
            // upload then collides with it and fences that writer.
            core.mark_changed();
            core.sync().await.map_err(|e| {
                (
                    1,
                    format!(
                        "took the lease, but cannot claim the volume ({e}); the previous writer may still be writing"
                    ),
                )
            })?;
        }
        if let Some(interval) = follow {
            tokio::spawn(follow_writer(core.clone(), volume, cache_dir.clone(), interval));
        }
        Ok((core, changes))
    }
    .await;
    match rest {
        Ok((core, changes)) => Ok((core, mountpoint, cache_dir, cache_lock, lease, changes)),
        Err(failure) => {
            release_after_failure(lease.as_deref()).await;
            Err(failure)
        }
    }
}

/// The refusal when this host's own live mount holds the lease: no
/// takeover to suggest, only where that mount is.
fn held_on_this_host(url: &str, pid: u32) -> String {
    let at: Vec<String> = crate::mountpoint::s3vault_mounts_of(url)
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let (at, unmount) = match at.first() {
        Some(first) => (format!(" at {}", at.join(", ")), format!("s3vault umount {first}")),
        None => (String::new(), "s3vault umount MOUNTPOINT".into()),
    };
    format!(
        "{url} is already mounted read-write on this host by s3vault pid {pid}{at}; unmount it first ({unmount}), \
         or mount this one with --read-only"
    )
}

/// Gives back the lease of a mount that failed before it served anything.
async fn release_after_failure(lease: Option<&Lease>) {
    if let Some(lease) = lease
        && let Err(e) = lease.release().await
    {
        tracing::warn!(error = %e, "cannot release the volume's lease after a failed mount");
    }
}

/// Keeps a read-only mount of a live volume up to date: every `interval`,
/// applies the writer's new journal segments, or loads its newer state
/// whole when those were already folded into a checkpoint and deleted.
async fn follow_writer(core: Arc<Core>, volume: volume::Volume, cache_dir: PathBuf, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut previous: Option<PathBuf> = None;
    loop {
        ticker.tick().await;
        let current = match core.generation() {
            Ok(generation) => generation,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the metadata generation");
                continue;
            }
        };
        match follow_segments(&core, &volume, current).await {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot apply the writer's journal; will retry");
                continue;
            }
        }
        match volume::load_newer(&volume, &cache_dir, current).await {
            Ok(Some((db, path))) => {
                core.replace_metadata(Box::new(db));
                tracing::debug!(from = current, "followed the writer to a newer metadata state");
                if let Some(old) = previous.replace(path) {
                    volume::remove_followed(&old);
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot load the writer's newer metadata; will retry"),
        }
    }
}

/// Applies the segments after generation `current`; `false` when they no
/// longer lead to the live state (a newer checkpoint replaced them).
async fn follow_segments(core: &Core, volume: &volume::Volume, current: u64) -> anyhow::Result<bool> {
    let store = volume.store.as_ref();
    let head = core.head().map_err(|e| anyhow::anyhow!("{e}"))?;
    let fetched = match segment::fetch_after(store, &volume.ring, current, head).await {
        Ok(fetched) => fetched,
        Err(StateError::Gap { .. }) if checkpoint::newest(store).await?.is_some_and(|c| c > current) => {
            return Ok(false);
        }
        Err(e) => return Err(e.into()),
    };
    let reached = fetched.reached(current);
    if checkpoint::newest(store).await?.is_some_and(|c| c > reached) {
        return Ok(false);
    }
    if !fetched.segments.is_empty() {
        core.follow(fetched).map_err(|e| anyhow::anyhow!("{e}"))?;
        tracing::debug!(from = current, to = reached, "applied the writer's journal");
    }
    Ok(true)
}

async fn serve_control(
    socket: PathBuf,
    core: Arc<Core>,
    about: Arc<control::About>,
    unmount: control::Unmount,
    gate: control::Gate,
) {
    if let Err(e) = control::serve(socket, core, about, unmount, gate).await {
        tracing::error!(error = %e, "control socket failed; `s3vault umount` will not work for this mount");
    }
}

/// fsyncs the audit segment every second and uploads closed segments every
/// flush interval.
/// Keeps the metrics' gauges at what `status` would answer.
async fn publish_status(core: Arc<Core>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        match serde_json::to_value(core.status()) {
            Ok(status) => crate::metrics::publish(&status),
            Err(e) => tracing::warn!(error = %e, "cannot publish the status as metrics"),
        }
    }
}

async fn audit_periodically(log: Arc<AuditLog>) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_upload = tokio::time::Instant::now();
    loop {
        ticker.tick().await;
        if let Err(e) = log.sync() {
            tracing::error!(error = %e, "audit log fsync failed");
        }
        if last_upload.elapsed() >= log.flush_interval() {
            last_upload = tokio::time::Instant::now();
            if let Err(e) = log.upload().await {
                tracing::warn!(error = %e, "audit upload failed; will retry");
            }
        }
    }
}

/// Renews the lease every `HEARTBEAT`; a takeover fences this mount.
async fn heartbeat(lease: Arc<Lease>, core: Arc<Core>) {
    let mut ticker = tokio::time::interval(HEARTBEAT);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        match lease.renew().await {
            Ok(()) => {}
            Err(LeaseError::Lost(who)) => {
                core.fence(&format!("the lease was taken over by {who}"));
                return;
            }
            Err(e) => tracing::warn!(error = %e, "cannot renew the volume's lease; will retry"),
        }
    }
}

async fn sample_cache_rates(cache: Arc<PackCache>) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        ticker.tick().await;
        cache.sample_rates();
    }
}

async fn sync_periodically(core: Arc<Core>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        if let Err(e) = core.sync().await {
            tracing::warn!(error = %e, "periodic metadata upload failed; will retry");
        }
    }
}

/// Rewrites packs that overwrites and deletes left mostly dead
/// (`fs/compact.rs`); a read-only mount has nothing to do.
async fn compact_periodically(core: Arc<Core>) {
    let mut ticker = tokio::time::interval(crate::fs::COMPACT_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        if core.is_read_only() {
            return;
        }
        if let Err(e) = core.compact().await {
            tracing::warn!(error = %e, "compaction pass failed; will retry");
        }
    }
}

/// SIGTERM/SIGINT (systemd stop, Ctrl-C in the foreground): flush, then
/// unmount, which ends the session loop.
async fn unmount_on_signal(unmount: control::Unmount, core: Arc<Core>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("signal received; flushing and unmounting");
    if let Err(e) = core.final_sync().await {
        tracing::error!(error = %e, "flush before unmount failed");
    }
    if let Err(e) = tokio::task::spawn_blocking(move || unmount())
        .await
        .unwrap_or_else(|e| Err(e.to_string()))
    {
        tracing::error!(error = %e, "unmount failed");
    }
}

/// Kernel read-ahead for the mount, in KiB. The kernel gives FUSE mounts
/// 128 KiB and FUSE_INIT can only lower it; a 1 MiB window lets a
/// sequential reader keep several blocks in flight (measured: 350 to 485
/// MB/s cold from a local store). Random readers are unaffected: the
/// kernel's read-ahead shrinks on non-sequential access.
const READ_AHEAD_KB: u32 = 1024;

/// Raises the mount's read-ahead through sysfs (root only; otherwise the
/// default stays). The device number comes from /proc/self/mountinfo: a
/// stat of the mount point would ask our own, not yet running, session.
fn raise_readahead(mountpoint: &std::path::Path) {
    // The last match is the newest mount (ours, if something was mounted
    // here before).
    let Some(mount) = crate::mountpoint::mounts()
        .into_iter()
        .rev()
        .find(|m| m.point == mountpoint)
    else {
        return;
    };
    let path = format!("/sys/class/bdi/{}/read_ahead_kb", mount.device);
    if let Err(e) = std::fs::write(&path, READ_AHEAD_KB.to_string()) {
        tracing::debug!(error = %e, "cannot raise the kernel read-ahead; keeping its default");
    }
}

/// Unmounts through fusermount3, which works for root and for users, and
/// reports why it failed (typically: busy). The session loop then ends.
fn unmount_now(mountpoint: &std::path::Path) -> Result<(), String> {
    let output = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(mountpoint)
        .output()
        .map_err(|e| format!("cannot run fusermount3: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SecretKey;
    use crate::journal::{checkpoint, lease::LEASE_KEY};
    use crate::store::{LocalStore, ObjectStore, StoreError};
    use crate::superblock::Argon2Params;

    #[tokio::test]
    async fn a_mount_that_fails_after_taking_the_lease_gives_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/store", dir.path().display());
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path().join("store")));
        let key = SecretKey::random();
        let no_cost = Argon2Params { m_kib: 0, t: 0, p: 0 };
        volume::init(
            store.clone(),
            &url,
            1 << 16,
            &Unlock::KeyFile(key.clone()),
            no_cost,
            (0, 0),
            None,
        )
        .await
        .unwrap();
        // Loading the metadata fails after the lease is taken.
        store.delete(&checkpoint::key(1)).await.unwrap();
        let config = test_config(url, dir.path());
        std::fs::create_dir(&config.mountpoint).unwrap();
        let Err((_, message)) = prepare(&config, Unlock::KeyFile(key)).await else {
            panic!("mounted without metadata");
        };
        assert!(message.contains("no checkpoint"), "{message}");
        assert!(
            matches!(store.get(LEASE_KEY).await, Err(StoreError::NotFound)),
            "the lease was left behind"
        );
    }

    fn test_config(url: String, dir: &std::path::Path) -> MountConfig {
        MountConfig {
            url,
            mountpoint: dir.join("mnt"),
            cache_dir: Some(dir.join("cache")),
            read_only: false,
            allow_other: false,
            overrides: AttrOverrides::default(),
            s3: S3Options::default(),
            metadata_interval: Duration::from_secs(1),
            audit: AuditSettings::default(),
            cache: crate::test_support::cache_config(),
            allow_volatile_cache: true,
            allow_non_empty: false,
            force_takeover: false,
            accept_older_state: false,
            set_aside_unuploaded: false,
            snapshot: None,
            follow_interval: None,
            metrics_addr: None,
            metadata_outage: None,
        }
    }

    #[test]
    fn the_mount_record_reads_as_the_options_do() {
        let mut config = test_config("file:///v".into(), std::path::Path::new("/m"));
        config.follow_interval = Some(Duration::from_secs(5));
        let described = describe(&config, std::path::Path::new("/c"));
        for field in [
            "audit=required",
            "cache_size=1.0GiB",
            "cache_min_free=0B",
            "follow_interval=5s",
            "snapshot=none",
        ] {
            assert!(described.split(' ').any(|w| w == field), "{field} in {described}");
        }
    }
}
