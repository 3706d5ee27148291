//! The `s3vault` command: parse arguments, validate them into a
//! configuration, run the subcommand, print the error chain and pick the
//! exit code (2 for usage and configuration errors, 1 for runtime failures).

use anyhow::{Context, anyhow};
use clap::{Args, Parser, Subcommand};
use s3vault::admin;
use s3vault::audit::{self, AuditMode, AuditSettings};
use s3vault::cache;
use s3vault::daemon::{self, Readiness, Role};
use s3vault::fsck;
use s3vault::journal::snapshots;
use s3vault::keyfile;
use s3vault::mount::{self, MountConfig};
use s3vault::options;
use s3vault::restore;
use s3vault::store::{Location, S3Options};
use s3vault::superblock::{self, DEFAULT_ARGON2, Unlock};
use s3vault::volume;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;
use zeroize::Zeroizing;

#[derive(Parser)]
#[command(
    name = "s3vault",
    version,
    about = "Encrypted filesystem over S3 or a local directory"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a new random 256-bit key file (mode 0600).
    Keygen {
        /// Where to write the key; an existing file is never overwritten.
        path: PathBuf,
    },
    /// Create a new volume at URL (s3://bucket[/prefix] or file:///abs/path).
    Init {
        url: String,
        /// Block size: 64K..16M, a power of two.
        #[arg(long, default_value = "1M", value_parser = parse_size)]
        block_size: u32,
        #[command(flatten)]
        key: KeyArgs,
        #[command(flatten)]
        s3: S3Args,
    },
    /// Mount the volume at URL on MOUNTPOINT; returns once the mount is usable.
    Mount {
        url: String,
        mountpoint: PathBuf,
        #[command(flatten)]
        key: KeyArgs,
        #[command(flatten)]
        s3: S3Args,
        /// Local cache and metadata database [default: /var/cache/s3vault/<volume id>].
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// Mount options, comma separated: ro, rw, allow_other, uid=N, gid=N,
        /// umask=OCTAL, and name=value forms of every option above
        /// (key_file=, cache_dir=, endpoint=, ...). Options of mount(8) and
        /// systemd (_netdev, nofail, x-systemd.*, ...) are accepted and ignored.
        #[arg(short = 'o', value_name = "OPTIONS")]
        options: Vec<String>,
        /// Stay in the foreground (for systemd); log to stderr.
        #[arg(long)]
        foreground: bool,
        /// Seconds between journal segment uploads while metadata changes [default: 1].
        #[arg(long, value_name = "SECONDS")]
        metadata_interval: Option<u64>,
        /// Log level: error, warn, info, debug or trace [default: info].
        /// Logs never contain file names, paths or contents.
        #[arg(long, value_name = "LEVEL")]
        log_level: Option<String>,
        /// Audit policy: required (an operation whose record cannot be
        /// written fails with EIO), best-effort (it goes through; the loss
        /// is counted), or off (for measuring only) [default: required].
        #[arg(long, value_name = "MODE")]
        audit: Option<String>,
        /// Seconds within which audit records reach the store [default: 10].
        #[arg(long, value_name = "SECONDS")]
        audit_flush_interval: Option<u64>,
        /// Days audit segments are locked against deletion when the bucket
        /// has S3 Object Lock enabled; 0 for none [default: 2192, six years].
        #[arg(long, value_name = "DAYS")]
        audit_retention_days: Option<u64>,
        /// Also send a copy of each audit record to syslog (AUTHPRIV),
        /// without paths unless --audit-syslog-paths.
        #[arg(long)]
        audit_syslog: bool,
        /// Include paths in the syslog copies.
        #[arg(long)]
        audit_syslog_paths: bool,
        #[command(flatten)]
        cache: CacheArgs,
        /// Mount read-write even though another host holds the volume's
        /// lease (only when that host is known to be dead: its next metadata
        /// upload is refused and it turns read-only).
        #[arg(long)]
        force_takeover: bool,
        /// Mount this named snapshot instead of the live volume (read-only;
        /// `s3vault snapshot list` names them).
        #[arg(long, value_name = "NAME")]
        snapshot: Option<String>,
        /// With -o ro: seconds between looks for the writer's newer
        /// metadata, so other hosts' changes appear (0: never) [default: 5].
        #[arg(long, value_name = "SECONDS")]
        follow_interval: Option<u64>,
    },
    /// Wait for every pending upload (with a progress bar), flush the
    /// metadata, then unmount.
    Umount {
        mountpoint: PathBuf,
        /// Give up, leaving the volume mounted, when uploads have failed
        /// without progress for this many seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 60)]
        timeout: u64,
    },
    /// Show a running mount's state: open files, pending metadata, audit log.
    Status {
        mountpoint: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a volume's format, id, block size and key slots (no key needed).
    Info {
        url: String,
        #[command(flatten)]
        s3: S3Args,
    },
    /// List, add or remove the key slots that unlock a volume.
    Key {
        #[command(subcommand)]
        action: KeyCommand,
    },
    /// Read, filter, verify and summarise the audit trail in the store.
    Audit {
        #[command(subcommand)]
        action: AuditCommand,
    },
    /// Create, list or delete named point-in-time snapshots of a volume.
    Snapshot {
        #[command(subcommand)]
        action: SnapshotCommand,
    },
    /// Check that every file's blocks are in the store and open with the key
    /// (live state and snapshots); find objects nothing references. Exit
    /// codes as e2fsck: 0 clean, 1 errors corrected, 4 errors left, 8 failed.
    Fsck {
        #[command(flatten)]
        volume: VolumeArgs,
        /// Delete unreferenced objects older than --min-age (files with
        /// missing or damaged blocks are reported, never dropped).
        #[arg(long)]
        repair: bool,
        /// Check that blocks exist with the right size, without downloading them.
        #[arg(long)]
        quick: bool,
        /// Unreferenced objects younger than this may be uploads about to be
        /// referenced, and are left alone.
        #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = humantime::parse_duration)]
        min_age: Duration,
    },
    /// Delete data objects that neither the volume nor any snapshot
    /// references (safe while the volume is mounted).
    Gc {
        #[command(flatten)]
        volume: VolumeArgs,
        /// Unreferenced objects younger than this are left alone.
        #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = humantime::parse_duration)]
        min_age: Duration,
        /// Only say what would be deleted.
        #[arg(long)]
        dry_run: bool,
    },
    /// Copy files out of a snapshot into a local directory, byte for byte,
    /// never overwriting anything there.
    Restore {
        url: String,
        /// Paths in the volume, e.g. /reports/2026 ("/" for everything).
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<String>,
        /// The snapshot to copy from.
        #[arg(long, value_name = "NAME")]
        snapshot: String,
        /// Directory to copy into: each PATH becomes DIR/<its last name>.
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        #[command(flatten)]
        key: KeyArgs,
        #[command(flatten)]
        s3: S3Args,
    },
}

/// The local block cache's limits (mount flags).
#[derive(Args)]
struct CacheArgs {
    /// Disk space the block cache may use, like 512M or 10G [default: 10G].
    #[arg(long, value_name = "SIZE", value_parser = cache::parse_bytes)]
    cache_size: Option<u64>,
    /// Free space the cache leaves on its disk: a size or a percentage
    /// [default: 5%].
    #[arg(long, value_name = "SIZE|N%")]
    cache_min_free: Option<cache::MinFree>,
    /// Data written but not yet uploaded above which writers wait
    /// [default: a quarter of --cache-size].
    #[arg(long, value_name = "SIZE", value_parser = cache::parse_bytes)]
    max_dirty: Option<u64>,
    /// Uploads in flight at once [default: 16].
    #[arg(long, value_name = "N")]
    upload_concurrency: Option<u64>,
    /// Accept a cache directory in memory (tmpfs), where a reboot loses
    /// writes not yet uploaded.
    #[arg(long)]
    allow_volatile_cache: bool,
}

/// The smallest cache worth having: a few blocks of the largest size.
const MIN_CACHE_SIZE: u64 = 64 << 20;

impl CacheArgs {
    /// Flags win over their -o forms.
    fn config(self, o: &options::MountOptions) -> Result<cache::CacheConfig, Exit> {
        let limit = self.cache_size.or(o.cache_size).unwrap_or(10 << 30);
        if limit < MIN_CACHE_SIZE {
            return Err(usage(anyhow!("the cache size must be at least 64M")));
        }
        let max_dirty = self.max_dirty.or(o.max_dirty).unwrap_or(limit / 4);
        if max_dirty > limit || max_dirty < (16 << 20) {
            return Err(usage(anyhow!(
                "--max-dirty must be between 16M and the cache size ({limit} bytes)"
            )));
        }
        let upload_concurrency = self.upload_concurrency.or(o.upload_concurrency).unwrap_or(16);
        if !(1..=1024).contains(&upload_concurrency) {
            return Err(usage(anyhow!("--upload-concurrency must be between 1 and 1024")));
        }
        Ok(cache::CacheConfig {
            limit,
            min_free: self
                .cache_min_free
                .or(o.cache_min_free)
                .unwrap_or(cache::MinFree::Percent(5)),
            max_dirty,
            upload_concurrency: upload_concurrency as usize,
        })
    }
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Show audit records, oldest first.
    Log {
        #[command(flatten)]
        volume: VolumeArgs,
        #[command(flatten)]
        filter: FilterArgs,
        /// Only these events (repeat or comma-separate: open,unlink,...).
        #[arg(long, value_delimiter = ',')]
        event: Vec<String>,
        /// Only refused attempts (EACCES, EPERM).
        #[arg(long)]
        denied: bool,
        /// table, json (one object per line) or csv.
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Check every chain of every segment from every host; exit 1 on any problem.
    Verify {
        #[command(flatten)]
        volume: VolumeArgs,
    },
    /// Per-user summary for a compliance review: files opened, written,
    /// deleted, denied attempts, first and last activity.
    Report {
        #[command(flatten)]
        volume: VolumeArgs,
        #[command(flatten)]
        filter: FilterArgs,
        /// table, json (one object per line) or csv.
        #[arg(long, default_value = "table")]
        format: String,
    },
}

/// The volume a command reads, and how to unlock it.
#[derive(Args)]
struct VolumeArgs {
    url: String,
    #[command(flatten)]
    key: KeyArgs,
    #[command(flatten)]
    s3: S3Args,
}

#[derive(Args)]
struct FilterArgs {
    /// Only this user name.
    #[arg(long)]
    user: Option<String>,
    /// Only this uid.
    #[arg(long)]
    uid: Option<u32>,
    /// Only paths (or rename targets) matching this glob, e.g. '/patients/smith*'.
    #[arg(long)]
    path: Option<String>,
    /// From this time: RFC 3339 (2026-11-01T08:00:00Z, 2026-11-01) or an age (24h, 30d).
    #[arg(long)]
    since: Option<String>,
    /// Up to this time, same forms as --since.
    #[arg(long)]
    until: Option<String>,
    /// Only records written on this host.
    #[arg(long)]
    host: Option<String>,
}

impl FilterArgs {
    fn filter(&self) -> Result<audit::Filter, Exit> {
        let time = |t: &Option<String>| {
            t.as_deref()
                .map(audit::output::parse_time)
                .transpose()
                .map_err(|e| usage(anyhow!(e)))
        };
        let path = self
            .path
            .as_deref()
            .map(glob::Pattern::new)
            .transpose()
            .map_err(|e| usage(anyhow!("--path: {e}")))?;
        Ok(audit::Filter {
            user: self.user.clone(),
            uid: self.uid,
            path,
            since_ns: time(&self.since)?,
            until_ns: time(&self.until)?,
            events: Vec::new(),
            denied: false,
            host: self.host.clone(),
        })
    }
}

#[derive(Subcommand)]
enum KeyCommand {
    /// List the key slots (needs a key that unlocks the volume).
    List {
        url: String,
        #[command(flatten)]
        key: KeyArgs,
        #[command(flatten)]
        s3: S3Args,
    },
    /// Add a slot for a new key file or passphrase.
    Add {
        url: String,
        #[command(flatten)]
        key: KeyArgs,
        #[command(flatten)]
        s3: S3Args,
        /// Key file the new slot opens with (write one with `s3vault keygen`).
        #[arg(
            long,
            value_name = "PATH",
            required_unless_present_any = ["new_passphrase_file", "new_kms_key_id"],
            conflicts_with_all = ["new_passphrase_file", "new_kms_key_id"]
        )]
        new_key_file: Option<PathBuf>,
        /// File whose first line is the new slot's passphrase.
        #[arg(long, value_name = "PATH", conflicts_with = "new_kms_key_id")]
        new_passphrase_file: Option<PathBuf>,
        /// AWS KMS key (id, ARN or alias) to wrap the volume key with (needs kms:Encrypt).
        #[arg(long, value_name = "ARN")]
        new_kms_key_id: Option<String>,
    },
    /// Remove a slot (by number or id from `key list`); unlock with another slot.
    Remove {
        url: String,
        slot: String,
        #[command(flatten)]
        key: KeyArgs,
        #[command(flatten)]
        s3: S3Args,
    },
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Pin the volume's live metadata state in the store, and every block
    /// it references, under NAME. A mounted writer uploads its changes every
    /// --metadata-interval (1 s) and at every fsync.
    Create {
        #[command(flatten)]
        volume: VolumeArgs,
        name: String,
    },
    /// List the snapshots, oldest first.
    List {
        #[command(flatten)]
        volume: VolumeArgs,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete a snapshot and the blocks only it kept.
    Delete {
        #[command(flatten)]
        volume: VolumeArgs,
        name: String,
    },
}

#[derive(Args)]
struct KeyArgs {
    /// Key file written by `s3vault keygen`.
    #[arg(long, value_name = "PATH", conflicts_with = "passphrase_file")]
    key_file: Option<PathBuf>,
    /// File whose first line is the passphrase (without a key option, a
    /// terminal prompts for one).
    #[arg(long, value_name = "PATH")]
    passphrase_file: Option<PathBuf>,
    /// Unlock through the volume's AWS KMS key slots (needs kms:Decrypt).
    #[arg(long, conflicts_with_all = ["key_file", "passphrase_file"])]
    kms: bool,
}

#[derive(Args)]
struct S3Args {
    /// S3 endpoint URL (plain http only for loopback addresses).
    #[arg(long, value_name = "URL")]
    endpoint: Option<String>,
    /// AWS region [default: from the AWS configuration, else us-east-1].
    #[arg(long)]
    region: Option<String>,
    /// Use path-style requests (most S3-compatible servers need this).
    #[arg(long)]
    path_style: bool,
    /// AWS KMS endpoint URL, for KMS key slots (plain http only for loopback).
    #[arg(long, value_name = "URL")]
    kms_endpoint: Option<String>,
}

impl S3Args {
    /// The S3 settings, refusing plain http to a non-loopback endpoint.
    fn options(&self) -> Result<S3Options, Exit> {
        for endpoint in self.endpoint.iter().chain(&self.kms_endpoint) {
            s3vault::store::check_endpoint_url(endpoint).map_err(|e| usage(anyhow!(e)))?;
        }
        Ok(S3Options {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            path_style: self.path_style,
            kms_endpoint: self.kms_endpoint.clone(),
        })
    }
}

/// A failure with its exit code.
struct Exit(i32, anyhow::Error);

fn usage(e: impl Into<anyhow::Error>) -> Exit {
    Exit(2, e.into())
}

fn runtime_err(e: impl Into<anyhow::Error>) -> Exit {
    Exit(1, e.into())
}

fn parse_size(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 64K, 1M or 65536"))?;
    let mult: u64 = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use K or M)")),
    };
    let size = n
        .checked_mul(mult)
        .filter(|v| *v <= u32::MAX as u64)
        .ok_or(format!("{s:?} is too large"))? as u32;
    superblock::check_block_size(size).map_err(|e| e.to_string())?;
    Ok(size)
}

fn read_unlock(key: &KeyArgs, confirm: bool) -> Result<Unlock, Exit> {
    if key.kms {
        return Ok(Unlock::Kms);
    }
    if let Some(path) = &key.key_file {
        return Ok(Unlock::KeyFile(keyfile::read_key_file(path).map_err(usage)?));
    }
    if let Some(path) = &key.passphrase_file {
        return Ok(Unlock::Passphrase(keyfile::read_passphrase_file(path).map_err(usage)?));
    }
    if !std::io::stdin().is_terminal() {
        return Err(usage(anyhow!(
            "no key given: use --key-file or --passphrase-file (or run on a terminal to be prompted)"
        )));
    }
    let pass = Zeroizing::new(rpassword::prompt_password("Passphrase: ").map_err(runtime_err)?);
    if pass.is_empty() {
        return Err(usage(anyhow!("the passphrase is empty")));
    }
    if confirm {
        let again = Zeroizing::new(rpassword::prompt_password("Repeat passphrase: ").map_err(runtime_err)?);
        if *again != *pass {
            return Err(usage(anyhow!("the passphrases differ")));
        }
    }
    Ok(Unlock::Passphrase(Zeroizing::new(pass.as_bytes().to_vec())))
}

/// fuser logs request contents (file names) at warn and below, so it is
/// capped at error; its mount code logs a failed second unmount when a
/// session ends after `fusermount3 -u`, which is expected, so it is off.
fn log_filter(level: &str) -> Result<tracing_subscriber::EnvFilter, Exit> {
    if !matches!(level, "error" | "warn" | "info" | "debug" | "trace") {
        return Err(usage(anyhow!(
            "log level {level:?}: use error, warn, info, debug or trace"
        )));
    }
    // aws_config warns at length on every host that is not EC2; the one
    // line we print when credentials are really missing says enough.
    let directives = format!("s3vault={level},fuser=error,fuser::mnt=off,aws_config=error,warn");
    let filter = tracing_subscriber::EnvFilter::try_from_env("S3VAULT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(directives));
    // Whatever S3VAULT_LOG says, fuser never logs below error.
    Ok(filter
        .add_directive("fuser=error".parse().map_err(usage)?)
        .add_directive("fuser::mnt=off".parse().map_err(usage)?))
}

fn init_logging(filter: tracing_subscriber::EnvFilter, ansi: bool) {
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}

fn block_on<F: std::future::Future>(f: F) -> Result<F::Output, Exit> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(runtime_err)?;
    Ok(rt.block_on(f))
}

fn run(cli: Cli) -> Result<(), Exit> {
    match cli.command {
        Command::Keygen { path } => {
            keyfile::write_new_key_file(&path).map_err(usage)?;
            println!(
                "wrote a new key to {} (mode 0600); keep a copy somewhere safe: without it the volume cannot be read",
                path.display()
            );
            Ok(())
        }
        Command::Init {
            url,
            block_size,
            key,
            s3,
        } => {
            let location = Location::parse(&url).map_err(|e| usage(anyhow!(e)))?;
            if key.kms {
                return Err(usage(anyhow!(
                    "init needs a key file or a passphrase; add a KMS slot afterwards with `s3vault key add --new-kms-key-id`"
                )));
            }
            let unlock = read_unlock(&key, true)?;
            init_logging(log_filter("info")?, std::io::stderr().is_terminal());
            let s3 = s3.options()?;
            let id = block_on(async {
                let store = location.open(&s3).await.map_err(volume::VolumeError::from)?;
                volume::init(
                    store,
                    &url,
                    block_size,
                    &unlock,
                    DEFAULT_ARGON2,
                    s3vault::os::real_ids(),
                )
                .await
            })?
            .map_err(volume_exit)?;
            println!("created volume {} at {url} (block size {block_size})", hex::encode(id));
            Ok(())
        }
        Command::Mount {
            url,
            mountpoint,
            key,
            s3,
            cache_dir,
            options,
            foreground,
            metadata_interval,
            log_level,
            audit,
            audit_flush_interval,
            audit_retention_days,
            audit_syslog,
            audit_syslog_paths,
            cache,
            force_takeover,
            snapshot,
            follow_interval,
        } => {
            // Command-line flags win over their -o forms.
            let o = options::parse(&options).map_err(|e| usage(anyhow!(e)))?;
            Location::parse(&url).map_err(|e| usage(anyhow!(e)))?;
            let allow_volatile_cache = cache.allow_volatile_cache || o.allow_volatile_cache;
            let cache = cache.config(&o)?;
            let key = KeyArgs {
                key_file: key.key_file.or(o.key_file),
                passphrase_file: key.passphrase_file.or(o.passphrase_file),
                kms: key.kms || o.kms,
            };
            if [key.key_file.is_some(), key.passphrase_file.is_some(), key.kms]
                .iter()
                .filter(|x| **x)
                .count()
                > 1
            {
                return Err(usage(anyhow!("give one of a key file, a passphrase file or kms")));
            }
            let s3 = S3Args {
                endpoint: s3.endpoint.or(o.endpoint),
                region: s3.region.or(o.region),
                path_style: s3.path_style || o.path_style,
                kms_endpoint: s3.kms_endpoint.or(o.kms_endpoint),
            }
            .options()?;
            let metadata_interval = metadata_interval.or(o.metadata_interval).unwrap_or(1);
            if metadata_interval == 0 {
                return Err(usage(anyhow!("the metadata interval must be at least 1 second")));
            }
            let mut audit = audit_settings(
                audit.or(o.audit),
                audit_flush_interval.or(o.audit_flush_interval),
                audit_retention_days.or(o.audit_retention_days),
            )?;
            audit.syslog = if audit_syslog_paths || o.audit_syslog_paths {
                audit::Syslog::WithPaths
            } else if audit_syslog || o.audit_syslog {
                audit::Syslog::WithoutPaths
            } else {
                audit::Syslog::Off
            };
            let filter = log_filter(log_level.or(o.log_level).as_deref().unwrap_or("info"))?;
            let foreground = foreground || o.foreground;
            let snapshot = snapshot.or(o.snapshot);
            if let Some(name) = &snapshot {
                snapshots::validate_name(name).map_err(snapshot_exit)?;
                if o.read_write {
                    return Err(usage(anyhow!("a snapshot is mounted read-only; drop -o rw")));
                }
            }
            let unlock = read_unlock(&key, false)?;
            let config = MountConfig {
                url,
                mountpoint,
                cache_dir: cache_dir.or(o.cache_dir).map(absolute).transpose()?,
                read_only: o.read_only || snapshot.is_some(),
                follow_interval: Some(follow_interval.or(o.follow_interval).unwrap_or(5))
                    .filter(|s| *s > 0)
                    .map(Duration::from_secs),
                snapshot,
                allow_other: o.allow_other,
                overrides: o.overrides,
                s3,
                metadata_interval: Duration::from_secs(metadata_interval),
                audit,
                allow_volatile_cache,
                cache,
                force_takeover: force_takeover || o.force_takeover,
            };
            let ready = if foreground {
                Readiness::foreground()
            } else {
                match daemon::fork().map_err(runtime_err)? {
                    Role::Parent(0) => return Ok(()),
                    Role::Parent(code) => std::process::exit(code),
                    Role::Daemon(ready) => ready,
                }
            };
            init_logging(filter, foreground && std::io::stderr().is_terminal());
            match mount::run(config, unlock, ready) {
                0 => Ok(()),
                code => std::process::exit(code),
            }
        }
        Command::Umount { mountpoint, timeout } => umount(&mountpoint, Duration::from_secs(timeout)),
        Command::Status { mountpoint, json } => status(&mountpoint, json),
        Command::Info { url, s3 } => {
            let location = Location::parse(&url).map_err(|e| usage(anyhow!(e)))?;
            init_logging(log_filter("warn")?, std::io::stderr().is_terminal());
            let s3 = s3.options()?;
            let text = block_on(async {
                let store = location.open(&s3).await.map_err(volume::VolumeError::from)?;
                admin::info(store, &url).await
            })?
            .map_err(volume_exit)?;
            print!("{text}");
            Ok(())
        }
        Command::Key { action } => key_command(action),
        Command::Audit { action } => audit_command(action),
        Command::Snapshot { action } => snapshot_command(action),
        Command::Fsck {
            volume,
            repair,
            quick,
            min_age,
        } => fsck_command(
            &volume,
            &fsck::Options {
                verify: !quick,
                repair,
                min_age,
            },
            false,
        ),
        Command::Gc {
            volume,
            min_age,
            dry_run,
        } => fsck_command(
            &volume,
            &fsck::Options {
                verify: false,
                repair: !dry_run,
                min_age,
            },
            true,
        ),
        Command::Restore {
            url,
            paths,
            snapshot,
            to,
            key,
            s3,
        } => restore_command(&url, &paths, &snapshot, &to, &key, &s3),
    }
}

/// Unlocks the volume at `url` for a one-shot command.
async fn open_volume(
    location: &Location,
    url: &str,
    unlock: &Unlock,
    s3: &S3Options,
) -> Result<volume::Volume, volume::VolumeError> {
    let store = location.open(s3).await?;
    volume::unlock(store, url, unlock, s3).await
}

fn snapshot_exit(e: snapshots::SnapshotError) -> Exit {
    match e {
        snapshots::SnapshotError::BadName => usage(e),
        e => runtime_err(e),
    }
}

fn snapshot_command(action: SnapshotCommand) -> Result<(), Exit> {
    let (SnapshotCommand::Create { volume, .. }
    | SnapshotCommand::List { volume, .. }
    | SnapshotCommand::Delete { volume, .. }) = &action;
    let VolumeArgs { url, key, s3 } = volume;
    if let SnapshotCommand::Create { name, .. } | SnapshotCommand::Delete { name, .. } = &action {
        snapshots::validate_name(name).map_err(snapshot_exit)?;
    }
    let location = Location::parse(url).map_err(|e| usage(anyhow!(e)))?;
    let unlock = read_unlock(key, false)?;
    init_logging(log_filter("warn")?, std::io::stderr().is_terminal());
    let s3 = s3.options()?;
    block_on(async {
        let volume = open_volume(&location, url, &unlock, &s3).await.map_err(volume_exit)?;
        let (store, ring) = (volume.store.clone(), volume.ring.clone());
        let (event, detail) = match &action {
            SnapshotCommand::List { json, .. } => {
                let all = snapshots::list(store.as_ref(), &ring).await.map_err(snapshot_exit)?;
                print_snapshots(all.iter().map(|s| &s.info), *json);
                return Ok(());
            }
            SnapshotCommand::Create { name, .. } => {
                let info = snapshots::create(store.as_ref(), &ring, name)
                    .await
                    .map_err(snapshot_exit)?;
                println!(
                    "created snapshot {name}: {} inodes, {} of files (metadata generation {})",
                    info.inodes,
                    human_bytes(info.bytes as f64),
                    info.generation
                );
                (
                    audit::Event::SnapshotCreate,
                    format!("snapshot={name} generation={}", info.generation),
                )
            }
            SnapshotCommand::Delete { name, .. } => {
                let freed = snapshots::delete(store.as_ref(), &ring, name)
                    .await
                    .map_err(snapshot_exit)?;
                println!("deleted snapshot {name} and {freed} blocks only it kept");
                (audit::Event::SnapshotDelete, format!("snapshot={name}"))
            }
        };
        record_cli_event(ring, store, event, detail)
            .await
            .map_err(|e| runtime_err(anyhow!("done, but its audit record is not stored: {e}")))
    })?
}

/// `fsck`, or with `gc` its quick form that reports what it deleted.
fn fsck_command(volume: &VolumeArgs, options: &fsck::Options, gc: bool) -> Result<(), Exit> {
    let VolumeArgs { url, key, s3 } = volume;
    let location = Location::parse(url).map_err(|e| usage(anyhow!(e)))?;
    let unlock = read_unlock(key, false)?;
    init_logging(log_filter("warn")?, std::io::stderr().is_terminal());
    let s3 = s3.options()?;
    let report = block_on(async {
        let volume = open_volume(&location, url, &unlock, &s3).await.map_err(volume_exit)?;
        let bar = indicatif::ProgressBar::hidden();
        if options.verify && std::io::stderr().is_terminal() {
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar.set_style(
                indicatif::ProgressStyle::with_template("verifying {bar:30} {pos}/{len} blocks, {per_sec}, ETA {eta}")
                    .map_err(runtime_err)?,
            );
        }
        let progress = |done: u64, total: u64| {
            bar.set_length(total);
            bar.set_position(done);
        };
        let report = fsck::run(
            volume.store.clone(),
            volume.ring.clone(),
            volume.superblock.block_size,
            options,
            &progress,
        )
        .await;
        bar.finish_and_clear();
        report.map_err(|e| Exit(if gc { 1 } else { 8 }, e.into()))
    })??;
    let orphans = format!(
        "{} unreferenced objects ({})",
        report.orphans,
        human_bytes(report.orphan_bytes as f64)
    );
    let recent = if report.recent > 0 {
        format!(
            "; {} younger than {} left alone",
            report.recent,
            humantime::format_duration(options.min_age)
        )
    } else {
        String::new()
    };
    if gc {
        let verb = if options.repair { "deleted" } else { "would delete" };
        println!("{verb} {orphans}{recent}");
        if !report.problems.is_empty() {
            eprintln!(
                "s3vault: {} problems seen on the way; run `s3vault fsck`",
                report.problems.len()
            );
        }
    } else {
        println!(
            "checked the live state and {} snapshots ({} metadata generations in the store)",
            report.snapshots, report.states
        );
        println!(
            "{} data objects in the store, {} referenced, {} downloaded and opened with the key",
            report.objects, report.referenced, report.verified
        );
        for problem in &report.problems {
            println!("PROBLEM {problem}");
        }
        let action = match (report.deleted, options.repair) {
            (0, false) if report.orphans > 0 => " (--repair deletes them)".to_string(),
            (n, true) if n > 0 => format!(", {n} deleted"),
            _ => String::new(),
        };
        println!("{orphans}{action}{recent}");
    }
    if let Some(why) = &report.deletion_refused {
        eprintln!("s3vault: nothing deleted: {why}, so what it references is unknown");
    }
    match report.exit_code() {
        0 => Ok(()),
        _ if gc && report.deletion_refused.is_none() => Ok(()),
        code => Err(Exit(
            code,
            anyhow!(if code == 1 {
                "errors corrected"
            } else {
                "the volume has errors"
            }),
        )),
    }
}

fn print_snapshots<'a>(all: impl Iterator<Item = &'a snapshots::SnapshotInfo>, json: bool) {
    if json {
        for info in all {
            println!("{}", serde_json::to_string(info).unwrap_or_default());
        }
        return;
    }
    println!("{:<24}  {:<24}  {:>10}  {:>10}", "NAME", "CREATED", "INODES", "SIZE");
    for info in all {
        println!(
            "{:<24}  {:<24}  {:>10}  {:>10}",
            info.name,
            audit::output::rfc3339(info.created_ns),
            info.inodes,
            human_bytes(info.bytes as f64)
        );
    }
}

fn restore_command(url: &str, paths: &[String], name: &str, to: &Path, key: &KeyArgs, s3: &S3Args) -> Result<(), Exit> {
    snapshots::validate_name(name).map_err(snapshot_exit)?;
    let location = Location::parse(url).map_err(|e| usage(anyhow!(e)))?;
    let unlock = read_unlock(key, false)?;
    init_logging(log_filter("warn")?, std::io::stderr().is_terminal());
    let s3 = s3.options()?;
    let to = std::path::absolute(to).map_err(usage)?;
    block_on(async {
        let volume = open_volume(&location, url, &unlock, &s3).await.map_err(volume_exit)?;
        let (store, ring) = (volume.store.clone(), volume.ring.clone());
        let snapshot = snapshots::load(store.as_ref(), &ring, name)
            .await
            .map_err(snapshot_exit)?;
        let log = audit::AuditLog::one_shot(ring.clone(), store.clone(), cli_audit_settings(store.as_ref()).await);
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "restoring {bar:30} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .map_err(runtime_err)?,
        );
        let (uid, gid) = s3vault::os::real_ids();
        let subject = audit::Subject {
            uid,
            gid,
            pid: std::process::id(),
        };
        let mut unaudited = None;
        let detail = format!("snapshot={name} to={}", to.display());
        let mut restorer = restore::Restorer::new(
            store.clone(),
            ring.clone(),
            volume.superblock.block_size,
            snapshot,
            |done: restore::Restored<'_>| {
                bar.inc(done.bytes);
                if done.bytes == 0 {
                    let record = audit::Record::new(audit::Event::Restore, subject, None)
                        .path(done.path)
                        .ino(Some(done.inode.ino))
                        .detail(detail.clone());
                    if let Err(e) = log.record(record) {
                        unaudited.get_or_insert(e);
                    }
                }
            },
        )
        .map_err(runtime_err)?;
        let mut total = 0;
        for path in paths {
            total += restorer.size_of(path).map_err(runtime_err)?;
        }
        bar.set_length(total);
        let mut copied = Ok(());
        for path in paths {
            copied = restorer.restore(path, &to).await;
            if copied.is_err() {
                break;
            }
        }
        let summary = copied.and_then(|()| restorer.finish());
        bar.finish_and_clear();
        let uploaded = log.upload().await;
        let summary = summary.map_err(runtime_err)?;
        println!(
            "restored {} files ({}), {} directories, {} symlinks, {} hard links, {} other; skipped {} (sockets{}){}",
            summary.files,
            human_bytes(summary.bytes as f64),
            summary.directories,
            summary.symlinks,
            summary.hard_links,
            summary.others,
            summary.skipped,
            if s3vault::os::real_ids().0 == 0 {
                ""
            } else {
                ", devices: not root"
            },
            if summary.xattrs_skipped > 0 {
                format!("; {} extended attributes not permitted here", summary.xattrs_skipped)
            } else {
                String::new()
            }
        );
        uploaded.map_err(|e| runtime_err(anyhow!("restored, but the audit records are not stored: {e}")))?;
        Ok(())
    })?
}

fn audit_command(action: AuditCommand) -> Result<(), Exit> {
    let (AuditCommand::Log { volume, .. } | AuditCommand::Verify { volume } | AuditCommand::Report { volume, .. }) =
        &action;
    let VolumeArgs { url, key, s3 } = volume;
    let location = Location::parse(url).map_err(|e| usage(anyhow!(e)))?;
    let unlock = read_unlock(key, false)?;
    let (filter, format) = match &action {
        AuditCommand::Log {
            filter,
            event,
            denied,
            format,
            ..
        } => {
            let mut f = filter.filter()?;
            f.events = event
                .iter()
                .map(|e| e.parse())
                .collect::<Result<_, String>>()
                .map_err(|e| usage(anyhow!(e)))?;
            f.denied = *denied;
            (f, format.parse().map_err(|e: String| usage(anyhow!(e)))?)
        }
        AuditCommand::Report { filter, format, .. } => {
            (filter.filter()?, format.parse().map_err(|e: String| usage(anyhow!(e)))?)
        }
        AuditCommand::Verify { .. } => (audit::Filter::default(), audit::output::Format::Table),
    };
    init_logging(log_filter("warn")?, std::io::stderr().is_terminal());
    let s3 = s3.options()?;
    let (ring, segments) = block_on(async {
        let store = location.open(&s3).await.map_err(volume::VolumeError::from)?;
        let volume = volume::unlock(store.clone(), url, &unlock, &s3).await?;
        let segments = audit::read_segments(store, volume.ring.clone()).await;
        Ok::<_, volume::VolumeError>((volume.ring, segments))
    })?
    .map_err(volume_exit)?;
    let segments = segments.map_err(runtime_err)?;
    match action {
        AuditCommand::Log { .. } => print!("{}", audit::output::records(&segments.records(&filter), format)),
        AuditCommand::Report { .. } => {
            let summary = audit::report(&segments.records(&filter));
            print!("{}", audit::output::report(&summary, format));
        }
        AuditCommand::Verify { .. } => {
            let result = audit::verify(&ring, &segments);
            for problem in &result.problems {
                println!("{problem}");
            }
            if !result.problems.is_empty() {
                return Err(runtime_err(anyhow!(
                    "audit trail damaged: {} problem(s) in {} segment(s) of {} chain(s)",
                    result.problems.len(),
                    result.segments,
                    result.chains
                )));
            }
            println!(
                "OK: {} records in {} segments of {} chains verified",
                result.records, result.segments, result.chains
            );
        }
    }
    Ok(())
}

fn audit_settings(
    mode: Option<String>,
    flush_interval: Option<u64>,
    retention_days: Option<u64>,
) -> Result<AuditSettings, Exit> {
    let mode: AuditMode = mode
        .as_deref()
        .unwrap_or("required")
        .parse()
        .map_err(|e: String| usage(anyhow!(e)))?;
    let flush_interval = flush_interval.unwrap_or(10);
    if flush_interval == 0 {
        return Err(usage(anyhow!("the audit flush interval must be at least 1 second")));
    }
    if mode == AuditMode::Off {
        eprintln!(
            "s3vault: WARNING: --audit=off: NOTHING done on this mount is recorded in the audit log. \
             This is for measuring the audit log's cost only; never use it for real data."
        );
    }
    let days = retention_days.unwrap_or(audit::DEFAULT_RETENTION_DAYS);
    Ok(AuditSettings {
        mode,
        flush_interval: Duration::from_secs(flush_interval),
        retain_for: (days > 0).then(|| Duration::from_secs(days * 86_400)),
        syslog: audit::Syslog::Off,
    })
}

fn volume_exit(e: volume::VolumeError) -> Exit {
    Exit(if e.is_usage() { 2 } else { 1 }, e.into())
}

fn key_command(action: KeyCommand) -> Result<(), Exit> {
    let (KeyCommand::List { url, key, s3 }
    | KeyCommand::Add { url, key, s3, .. }
    | KeyCommand::Remove { url, key, s3, .. }) = &action;
    let location = Location::parse(url).map_err(|e| usage(anyhow!(e)))?;
    let unlock = read_unlock(key, false)?;
    let new = match &action {
        KeyCommand::Add {
            new_key_file,
            new_passphrase_file,
            new_kms_key_id,
            ..
        } => Some(
            admin::new_slot(
                new_key_file.as_deref(),
                new_passphrase_file.as_deref(),
                new_kms_key_id.as_deref(),
            )
            .map_err(usage)?,
        ),
        _ => None,
    };
    init_logging(log_filter("warn")?, std::io::stderr().is_terminal());
    let url = url.clone();
    let s3 = s3.options()?;
    let (message, recorded) = block_on(async {
        let store = location.open(&s3).await.map_err(volume::VolumeError::from)?;
        let volume = volume::unlock(store.clone(), &url, &unlock, &s3).await?;
        let (message, change) = match (&action, &new) {
            (KeyCommand::List { .. }, _) => (admin::describe_slots(&volume.superblock), None),
            (KeyCommand::Add { .. }, Some(new)) => {
                let id = admin::add_slot(store.clone(), &url, &unlock, &s3, new, DEFAULT_ARGON2).await?;
                (format!("added key slot {id}\n"), Some((audit::Event::KeyAdd, id)))
            }
            (KeyCommand::Remove { slot, .. }, _) => {
                admin::remove_slot(store.clone(), &url, &unlock, &s3, slot).await?;
                (
                    format!("removed key slot {slot}\n"),
                    Some((audit::Event::KeyRemove, slot.clone())),
                )
            }
            (KeyCommand::Add { .. }, None) => unreachable!("add always has a new slot"),
        };
        let recorded = match change {
            Some((event, slot)) => record_cli_event(volume.ring.clone(), store, event, format!("slot={slot}")).await,
            None => Ok(()),
        };
        Ok::<_, volume::VolumeError>((message, recorded))
    })?
    .map_err(volume_exit)?;
    print!("{message}");
    recorded.map_err(|e| runtime_err(anyhow!("the change is made, but its audit record is not stored: {e}")))
}

/// Audit settings of a one-shot command's own chain.
async fn cli_audit_settings(store: &dyn s3vault::store::ObjectStore) -> AuditSettings {
    let requested = Duration::from_secs(audit::DEFAULT_RETENTION_DAYS * 86_400);
    AuditSettings {
        retain_for: audit::retention_for(store, Some(requested)).await,
        ..AuditSettings::default()
    }
}

/// Records a command's change in an audit chain of its own and uploads it.
async fn record_cli_event(
    ring: std::sync::Arc<s3vault::keyring::Keyring>,
    store: std::sync::Arc<dyn s3vault::store::ObjectStore>,
    event: audit::Event,
    detail: String,
) -> Result<(), audit::AuditError> {
    let (uid, gid) = s3vault::os::real_ids();
    let subject = audit::Subject {
        uid,
        gid,
        pid: std::process::id(),
    };
    let settings = cli_audit_settings(store.as_ref()).await;
    let log = audit::AuditLog::one_shot(ring, store, settings);
    log.record(audit::Record::new(event, subject, None).detail(detail))?;
    log.upload().await.map(|_| ())
}

fn absolute(path: PathBuf) -> Result<PathBuf, Exit> {
    std::path::absolute(&path)
        .with_context(|| format!("cache directory {}", path.display()))
        .map_err(usage)
}

/// Prints the state of the mount at `mountpoint`.
fn status(mountpoint: &Path, json: bool) -> Result<(), Exit> {
    let mountpoint = std::fs::canonicalize(mountpoint)
        .with_context(|| format!("mount point {}", mountpoint.display()))
        .map_err(usage)?;
    let answer = s3vault::control::request(&mountpoint, "status").map_err(|e| usage(anyhow!(e)))?;
    if json {
        println!("{answer}");
        return Ok(());
    }
    let value: serde_json::Value = serde_json::from_str(&answer).map_err(runtime_err)?;
    let mut rows = vec![("mount point".to_string(), mountpoint.display().to_string())];
    flatten_status("", &value, &mut rows);
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (key, value) in rows {
        println!("{key:<width$}  {value}");
    }
    Ok(())
}

/// 1536 as "1.5 KiB".
fn human_bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `{"audit": {"lost": 0}}` as rows like ("audit lost", "0"); times (keys
/// ending in `_ns`) in RFC 3339.
fn flatten_status(prefix: &str, value: &serde_json::Value, rows: &mut Vec<(String, String)>) {
    let serde_json::Value::Object(map) = value else {
        return;
    };
    for (key, value) in map {
        let label = format!("{prefix}{}", key.trim_end_matches("_ns").replace('_', " "));
        match value {
            serde_json::Value::Object(_) => flatten_status(&format!("{label} "), value, rows),
            serde_json::Value::Null => rows.push((label, "-".into())),
            serde_json::Value::Number(n) if key.ends_with("_ns") => {
                rows.push((label, audit::output::rfc3339(n.as_i64().unwrap_or(0))))
            }
            serde_json::Value::Number(n) if key.ends_with("_bytes") => rows.push((
                label.trim_end_matches(" bytes").to_string(),
                human_bytes(n.as_f64().unwrap_or(0.0)),
            )),
            serde_json::Value::Number(n) if key.ends_with("_bytes_per_sec") => rows.push((
                label.replace(" bytes per sec", " rate"),
                format!("{}/s", human_bytes(n.as_f64().unwrap_or(0.0))),
            )),
            serde_json::Value::Number(n) if key.ends_with("_ratio") => {
                rows.push((label, format!("{:.1}%", n.as_f64().unwrap_or(0.0) * 100.0)))
            }
            serde_json::Value::String(s) => rows.push((label, s.clone())),
            other => rows.push((label, other.to_string())),
        }
    }
}

/// Asks the mount daemon to flush and unmount, then waits for it to exit.
/// Pending uploads are waited for first, with a progress bar; the daemon
/// refuses to unmount when the flush fails, and so do we when the store
/// stops taking uploads: the data waiting in the cache stays served.
fn umount(mountpoint: &Path, stall_limit: Duration) -> Result<(), Exit> {
    let mountpoint = std::fs::canonicalize(mountpoint)
        .with_context(|| format!("mount point {}", mountpoint.display()))
        .map_err(usage)?;
    wait_for_uploads(&mountpoint, stall_limit)?;
    let pid: i32 = s3vault::control::request(&mountpoint, "pid")
        .map_err(|e| usage(anyhow!(e)))?
        .parse()
        .map_err(|_| runtime_err(anyhow!("the mount daemon gave an invalid pid")))?;
    s3vault::control::request(&mountpoint, "unmount").map_err(|e| {
        if e == s3vault::control::FENCED {
            return runtime_err(anyhow!(e));
        }
        runtime_err(anyhow!(
            "{e}; {} stays mounted so nothing is lost (retry once the cause is fixed)",
            mountpoint.display()
        ))
    })?;
    // The daemon exits once the kernel has ended the session.
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while proc_dir.exists() {
        if std::time::Instant::now() > deadline {
            return Err(runtime_err(anyhow!(
                "unmounted, but the daemon (pid {pid}) has not exited after 120 s"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The cache figures `umount` follows.
#[derive(serde::Deserialize)]
struct UploadState {
    /// From the status's top level: nothing more will be uploaded.
    #[serde(default)]
    fenced: bool,
    dirty_bytes: u64,
    pending_uploads: u64,
    uploaded_bytes: u64,
    errors: u64,
    last_error: Option<String>,
}

fn upload_state(mountpoint: &Path) -> Result<UploadState, Exit> {
    #[derive(serde::Deserialize)]
    struct Status {
        fenced: bool,
        cache: UploadState,
    }
    let answer = s3vault::control::request(mountpoint, "status").map_err(|e| usage(anyhow!(e)))?;
    let status: Status = serde_json::from_str(&answer).map_err(runtime_err)?;
    Ok(UploadState {
        fenced: status.fenced,
        ..status.cache
    })
}

/// Waits until the mount has nothing left to upload, drawing a progress bar
/// on a terminal; fails when uploads fail without progress for `stall_limit`.
fn wait_for_uploads(mountpoint: &Path, stall_limit: Duration) -> Result<(), Exit> {
    let first = upload_state(mountpoint)?;
    if first.pending_uploads == 0 || first.fenced {
        return Ok(());
    }
    let bar = indicatif::ProgressBar::new(first.dirty_bytes);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "uploading {bar:30} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .map_err(runtime_err)?,
    );
    if !std::io::stderr().is_terminal() {
        eprintln!("s3vault: waiting for {} bytes to upload", first.dirty_bytes);
    }
    let started = std::time::Instant::now();
    let (mut last_uploaded, mut last_progress) = (first.uploaded_bytes, std::time::Instant::now());
    loop {
        let state = upload_state(mountpoint)?;
        let done = state.uploaded_bytes - first.uploaded_bytes;
        bar.set_length(done + state.dirty_bytes);
        bar.set_position(done);
        if state.pending_uploads == 0 || state.fenced {
            bar.finish_and_clear();
            eprintln!(
                "s3vault: uploaded {} bytes in {:.1} s",
                done,
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if state.uploaded_bytes != last_uploaded {
            (last_uploaded, last_progress) = (state.uploaded_bytes, std::time::Instant::now());
        } else if state.errors > first.errors && last_progress.elapsed() >= stall_limit {
            bar.abandon();
            return Err(runtime_err(anyhow!(
                "uploads have failed for {} s ({}); {} bytes in {} blocks wait in the cache; \
                 {} stays mounted so nothing is lost (retry once the store is reachable)",
                stall_limit.as_secs(),
                state.last_error.as_deref().unwrap_or("no error detail"),
                state.dirty_bytes,
                state.pending_uploads,
                mountpoint.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn main() {
    s3vault::hardening::harden_process();
    let cli = Cli::parse_from(options::mount_helper_args(std::env::args_os().collect()));
    if let Err(Exit(code, error)) = run(cli) {
        eprintln!("s3vault: {error:#}");
        std::process::exit(code);
    }
}
