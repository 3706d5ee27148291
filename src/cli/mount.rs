//! `s3vault mount`: the flags, their `-o` forms (`options.rs`), and the
//! checks that turn them into a `MountConfig`.

use super::{Exit, KeyArgs, S3Args, log_filter, options, read_unlock, snapshot_exit, usage};
use anyhow::{Context, anyhow};
use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser};
use s3vault::audit::{self, AuditMode, AuditSettings};
use s3vault::cache;
use s3vault::daemon::{self, Readiness, Role};
use s3vault::fuse::AttrOverrides;
use s3vault::journal::snapshots;
use s3vault::meta::OutagePolicy;
use s3vault::mount::MountConfig;
use s3vault::store::Location;
use s3vault::units::parse_size;
use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct MountArgs {
    /// Volume URL: s3://bucket[/prefix] or file:///absolute/path.
    url: String,
    /// Directory to mount on: an existing, empty one (see --allow-non-empty).
    mountpoint: PathBuf,
    /// Mount options, comma separated: ro, rw, and the name=value (or bare
    /// flag) form of every option here, with underscores or dashes
    /// (key_file=, cache_dir=, allow_other, uid=, umask=, ...); options of
    /// mount(8) and systemd (_netdev, nofail, x-systemd.*, ...) are
    /// accepted and ignored. An option given as a flag wins over its -o form.
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    #[command(flatten)]
    key: KeyArgs,
    #[command(flatten)]
    s3: S3Args,
    /// Local cache and metadata database [default: /var/cache/s3vault/<volume id>].
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Mount read-only (-o ro). Other hosts' changes appear every --follow-interval.
    #[arg(long, conflicts_with = "read_write")]
    read_only: bool,
    /// -o rw: mount read-write (the default; a snapshot mount refuses it).
    #[arg(long, hide = true)]
    read_write: bool,
    /// Let users other than the one mounting use the mount (needs
    /// user_allow_other in /etc/fuse.conf for non-root).
    #[arg(long)]
    allow_other: bool,
    /// Mount over a directory that holds files (they are hidden while
    /// mounted); -o nonempty.
    #[arg(long)]
    allow_non_empty: bool,
    /// Show every file as owned by this user id.
    #[arg(long, value_name = "UID")]
    uid: Option<u32>,
    /// Show every file as owned by this group id.
    #[arg(long, value_name = "GID")]
    gid: Option<u32>,
    /// Mask these permission bits (octal, e.g. 027) off every file's mode.
    #[arg(long, value_name = "OCTAL", value_parser = parse_umask)]
    umask: Option<u32>,
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
    /// Mount even though the store holds an older metadata state (or
    /// superblock) than this host has seen — only after restoring an older
    /// state on purpose. Recorded in the audit log; the local database is
    /// set aside, not deleted.
    #[arg(long)]
    accept_older_state: bool,
    /// Mount even though the cache directory holds changes that never
    /// reached the store, which moved on without them (a fenced mount):
    /// its database is set aside, renamed, not deleted. Export those
    /// changes first with `s3vault recover`.
    #[arg(long)]
    set_aside_unuploaded: bool,
    /// Mount this named snapshot instead of the live volume (read-only;
    /// `s3vault snapshot list` names them).
    #[arg(long, value_name = "NAME")]
    snapshot: Option<String>,
    /// With -o ro: seconds between looks for the writer's newer
    /// metadata, so other hosts' changes appear (0: never) [default: 5].
    #[arg(long, value_name = "SECONDS")]
    follow_interval: Option<u64>,
    /// With the metadata in PostgreSQL: what an operation that needs the
    /// database does while it cannot be reached: fail (with EIO at once,
    /// like NFS's soft) or wait (until it is back, like NFS's hard; an
    /// unmount still ends the waiting) [default: fail].
    #[arg(long, value_name = "fail|wait", value_parser = parse_outage)]
    metadata_outage: Option<OutagePolicy>,
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g.
    /// 127.0.0.1:9464: request latencies per FUSE and store operation, and
    /// the figures of `status` (no file names) [default: off].
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
}

/// The local block cache's limits.
#[derive(Args, Debug)]
struct CacheArgs {
    /// Disk space the block cache may use, like 512M or 10G [default: 10G].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    cache_size: Option<u64>,
    /// Free space the cache leaves on its disk: a size or a percentage
    /// [default: 5%].
    #[arg(long, value_name = "SIZE|N%")]
    cache_min_free: Option<cache::MinFree>,
    /// Data written but not yet uploaded above which writers wait
    /// [default: a quarter of --cache-size].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_dirty: Option<u64>,
    /// Uploads in flight at once [default: 16].
    #[arg(long, value_name = "N")]
    upload_concurrency: Option<u64>,
    /// Accept a cache directory in memory (tmpfs), where a reboot loses
    /// writes not yet uploaded.
    #[arg(long)]
    allow_volatile_cache: bool,
}

/// `s3vault mount` on its own, to parse the `-o` forms with.
#[derive(Parser)]
#[command(name = "s3vault mount")]
struct MountCommand {
    #[command(flatten)]
    args: MountArgs,
}

fn parse_umask(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal mask like 022 or 027"))
}

/// The smallest cache worth having: a few blocks of the largest size.
const MIN_CACHE_SIZE: u64 = 64 << 20;

impl CacheArgs {
    fn config(&self) -> Result<cache::CacheConfig, Exit> {
        let limit = self.cache_size.unwrap_or(10 << 30);
        if limit < MIN_CACHE_SIZE {
            return Err(usage(anyhow!("the cache size must be at least 64M")));
        }
        let max_dirty = self.max_dirty.unwrap_or(limit / 4);
        if max_dirty > limit || max_dirty < (16 << 20) {
            return Err(usage(anyhow!(
                "--max-dirty must be between 16M and the cache size ({limit} bytes)"
            )));
        }
        let upload_concurrency = self.upload_concurrency.unwrap_or(16);
        if !(1..=1024).contains(&upload_concurrency) {
            return Err(usage(anyhow!("--upload-concurrency must be between 1 and 1024")));
        }
        Ok(cache::CacheConfig {
            limit,
            min_free: self.cache_min_free.unwrap_or(cache::MinFree::Percent(5)),
            max_dirty,
            upload_concurrency: upload_concurrency as usize,
        })
    }
}

/// `args` with its `-o` options applied: each stands for the flag of the
/// same name (`options::expand`), and clap parses the two forms alike. A
/// flag given on the command line (`matches`) wins over its `-o` form.
pub fn with_o_options(args: MountArgs, matches: &clap::ArgMatches) -> Result<MountArgs, Exit> {
    if args.options.is_empty() {
        return Ok(args);
    }
    let command = MountCommand::command();
    let expanded = options::expand(&args.options, &command).map_err(|e| usage(anyhow!(e)))?;
    let mut o_form: Vec<OsString> = vec!["s3vault mount".into()];
    o_form.extend(expanded.into_iter().map(OsString::from));
    o_form.extend(["--".into(), args.url.clone().into(), args.mountpoint.clone().into()]);
    let from_o = command
        .clone()
        .try_get_matches_from(o_form)
        .map_err(|e| usage(anyhow!("in -o: {}", clap_message(&e))))?;

    let given = |m: &clap::ArgMatches, id: &str| m.value_source(id) == Some(ValueSource::CommandLine);
    let mut merged: Vec<OsString> = vec!["s3vault mount".into()];
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str();
        let Some(long) = arg.get_long() else { continue };
        let source = if given(matches, id) {
            matches
        } else if given(&from_o, id) {
            &from_o
        } else {
            continue;
        };
        if arg.get_action().takes_values() {
            for value in source.get_raw(id).into_iter().flatten() {
                let mut option = OsString::from(format!("--{long}="));
                option.push(value);
                merged.push(option);
            }
        } else {
            merged.push(format!("--{long}").into());
        }
    }
    merged.extend(["--".into(), args.url.into(), args.mountpoint.into()]);
    let matches = command
        .try_get_matches_from(merged)
        .map_err(|e| usage(anyhow!("{}", clap_message(&e))))?;
    Ok(MountCommand::from_arg_matches(&matches)
        .map_err(|e| usage(anyhow!("{}", clap_message(&e))))?
        .args)
}

fn parse_outage(s: &str) -> Result<OutagePolicy, String> {
    s.parse()
}

/// A clap error's first line, without its "error: " prefix.
fn clap_message(e: &clap::Error) -> String {
    let text = e.to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

/// Validates the flags into a configuration, then mounts: in the
/// foreground, or in a daemon this process waits for until the mount is
/// usable.
pub fn run(args: MountArgs) -> Result<(), Exit> {
    Location::parse(&args.url).map_err(|e| usage(anyhow!(e)))?;
    let cache = args.cache.config()?;
    let s3 = args.s3.options()?;
    let metadata_interval = args.metadata_interval.unwrap_or(1);
    if metadata_interval == 0 {
        return Err(usage(anyhow!("the metadata interval must be at least 1 second")));
    }
    let mut audit = audit_settings(
        args.audit.as_deref(),
        args.audit_flush_interval,
        args.audit_retention_days,
    )?;
    audit.syslog = if args.audit_syslog_paths {
        audit::Syslog::WithPaths
    } else if args.audit_syslog {
        audit::Syslog::WithoutPaths
    } else {
        audit::Syslog::Off
    };
    let filter = log_filter(args.log_level.as_deref().unwrap_or("info"))?;
    if let Some(name) = &args.snapshot {
        snapshots::validate_name(name).map_err(snapshot_exit)?;
        if args.read_write {
            return Err(usage(anyhow!("a snapshot is mounted read-only; drop -o rw")));
        }
    }
    let unlock = read_unlock(&args.key, false)?;
    let cache_dir = match args.cache_dir {
        Some(dir) => Some(
            std::path::absolute(&dir)
                .with_context(|| format!("cache directory {}", dir.display()))
                .map_err(usage)?,
        ),
        None => None,
    };
    let config = MountConfig {
        url: args.url,
        mountpoint: args.mountpoint,
        cache_dir,
        read_only: args.read_only || args.snapshot.is_some(),
        follow_interval: Some(args.follow_interval.unwrap_or(5))
            .filter(|s| *s > 0)
            .map(Duration::from_secs),
        snapshot: args.snapshot,
        allow_other: args.allow_other,
        overrides: AttrOverrides {
            uid: args.uid,
            gid: args.gid,
            umask: args.umask,
        },
        s3,
        metadata_interval: Duration::from_secs(metadata_interval),
        audit,
        allow_volatile_cache: args.cache.allow_volatile_cache,
        allow_non_empty: args.allow_non_empty,
        cache,
        force_takeover: args.force_takeover,
        accept_older_state: args.accept_older_state,
        set_aside_unuploaded: args.set_aside_unuploaded,
        metrics_addr: args.metrics_addr,
        metadata_outage: args.metadata_outage,
    };
    let ready = if args.foreground {
        Readiness::foreground()
    } else {
        match daemon::fork().map_err(super::runtime_err)? {
            Role::Parent(0) => return Ok(()),
            Role::Parent(code) => std::process::exit(code),
            Role::Daemon(ready) => ready,
        }
    };
    super::init_logging(filter, args.foreground && std::io::stderr().is_terminal());
    match s3vault::mount::run(config, unlock, ready) {
        0 => Ok(()),
        code => std::process::exit(code),
    }
}

fn audit_settings(
    mode: Option<&str>,
    flush_interval: Option<u64>,
    retention_days: Option<u64>,
) -> Result<AuditSettings, Exit> {
    let mode: AuditMode = mode
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A value each option accepts, by its value name: an option with a
    /// value name not here fails `every_option_has_an_o_form` until it
    /// gets one.
    fn sample(value_name: &str) -> &'static str {
        match value_name {
            "PATH" => "/etc/s3vault/k",
            "URL" => "https://s3.example",
            "REGION" => "eu-west-1",
            "DIR" => "/var/cache/s3vault/x",
            "UID" | "GID" => "1000",
            "OCTAL" => "027",
            "SECONDS" | "DAYS" | "N" => "7",
            "LEVEL" => "debug",
            "MODE" => "best-effort",
            "SIZE" => "128M",
            "SIZE|N%" => "7%",
            "NAME" => "before upgrade",
            "ADDR" => "127.0.0.1:9464",
            "fail|wait" => "wait",
            other => panic!("no sample value for {other}: add one"),
        }
    }

    fn parse(argv: &[String]) -> MountArgs {
        let matches = MountCommand::command()
            .try_get_matches_from(argv)
            .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        let args = MountCommand::from_arg_matches(&matches).unwrap().args;
        with_o_options(args, &matches).unwrap_or_else(|Exit(_, e)| panic!("{argv:?}: {e}"))
    }

    fn argv(rest: &[String]) -> Vec<String> {
        let mut v = vec!["s3vault mount".to_string(), "s3://b/p".into(), "/mnt".into()];
        v.extend_from_slice(rest);
        v
    }

    /// Walks clap's own list of mount options: each, given as `-o
    /// name=value` (or `-o flag`), parses to what the flag does.
    #[test]
    fn every_option_has_an_o_form() {
        let command = MountCommand::command();
        let mut checked = 0;
        for arg in command.get_arguments().filter(|a| !a.is_hide_set()) {
            let Some(long) = arg.get_long() else { continue };
            if long == "help" {
                continue;
            }
            let (flag, o_form) = if arg.get_action().takes_values() {
                let names = arg.get_value_names().expect("every valued option names its value");
                let value = sample(names[0].as_str());
                (
                    format!("--{long}={value}"),
                    format!("{}={value}", long.replace('-', "_")),
                )
            } else {
                (format!("--{long}"), long.replace('-', "_"))
            };
            let by_flag = parse(&argv(std::slice::from_ref(&flag)));
            let by_o = parse(&argv(&["-o".into(), o_form.clone()]));
            assert_eq!(
                format!("{by_flag:?}").replace(&format!("\"{o_form}\""), ""),
                format!("{by_o:?}").replace(&format!("\"{o_form}\""), ""),
                "{flag} vs -o {o_form}"
            );
            let defaults = parse(&argv(&[]));
            assert_ne!(
                format!("{by_flag:?}"),
                format!("{defaults:?}"),
                "{flag} changes nothing"
            );
            checked += 1;
        }
        assert!(checked >= 25, "only {checked} options checked");
    }

    #[test]
    fn a_flag_wins_over_its_o_form() {
        let args = parse(&argv(&[
            "--cache-size=1G".into(),
            "-o".into(),
            "cache_size=2G,ro,uid=5".into(),
        ]));
        assert_eq!(args.cache.cache_size, Some(1 << 30));
        assert!(args.read_only);
        assert_eq!(args.uid, Some(5));
    }

    #[test]
    fn bad_o_values_are_refused_by_name() {
        let refused = |o: &str| {
            let argv = argv(&["-o".into(), o.into()]);
            let matches = MountCommand::command().try_get_matches_from(&argv).unwrap();
            let args = MountCommand::from_arg_matches(&matches).unwrap().args;
            match with_o_options(args, &matches) {
                Ok(_) => panic!("-o {o} accepted"),
                Err(Exit(code, e)) => (code, format!("{e:#}")),
            }
        };
        let (code, e) = refused("allow_other,bogus,also_bogus=1");
        assert!(code == 2 && e.contains("bogus") && e.contains("also_bogus=1"), "{e}");
        assert!(refused("uid=abc").1.contains("--uid"));
        assert!(refused("umask=999").1.contains("octal"));
        assert!(refused("key_file").1.contains("key_file=..."));
        assert!(refused("cache_size=lots").1.contains("cache-size"));
        assert!(refused("foreground=yes").1.contains("foreground"));
        assert!(refused("read_write").1.contains("read_write"));
    }
}
