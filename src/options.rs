//! Mount options in the `-o name[=value],...` form that mount(8),
//! mount.fuse3, /etc/fstab and systemd use.
//!
//! Every command-line option of `s3vault mount` has an `-o` form (dashes or
//! underscores), so an fstab line can say everything a command line can.
//! Options that mount(8), mount.fuse3 or systemd add for their own use are
//! accepted and ignored, as a kernel filesystem would; anything else is
//! refused by name, so a typo never silently changes behaviour.

use crate::cache::{MinFree, parse_bytes};
use crate::fuse::AttrOverrides;
use std::path::PathBuf;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct MountOptions {
    pub read_only: bool,
    pub allow_other: bool,
    pub overrides: AttrOverrides,
    pub key_file: Option<PathBuf>,
    pub passphrase_file: Option<PathBuf>,
    pub kms: bool,
    pub kms_endpoint: Option<String>,
    pub cache_dir: Option<PathBuf>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub path_style: bool,
    pub foreground: bool,
    pub metadata_interval: Option<u64>,
    pub log_level: Option<String>,
    pub audit: Option<String>,
    pub audit_flush_interval: Option<u64>,
    pub audit_retention_days: Option<u64>,
    pub audit_syslog: bool,
    pub audit_syslog_paths: bool,
    pub cache_size: Option<u64>,
    pub cache_min_free: Option<MinFree>,
    pub max_dirty: Option<u64>,
    pub upload_concurrency: Option<u64>,
    pub allow_volatile_cache: bool,
    pub force_takeover: bool,
    pub snapshot: Option<String>,
    pub follow_interval: Option<u64>,
    /// `rw` was given (a snapshot mount refuses it).
    pub read_write: bool,
}

/// Options mount(8), mount.fuse3 and systemd use themselves. `nodev`,
/// `nosuid` and `noexec` are enforced by the kernel from the mount flags
/// mount.fuse3 passes; the others only matter to the tools that added them.
fn is_ignored(name: &str) -> bool {
    matches!(
        name,
        "_netdev"
            | "nofail"
            | "noauto"
            | "auto"
            | "defaults"
            | "user"
            | "nouser"
            | "users"
            | "owner"
            | "group"
            | "dev"
            | "nodev"
            | "suid"
            | "nosuid"
            | "exec"
            | "noexec"
            | "atime"
            | "noatime"
            | "relatime"
            | "norelatime"
            | "strictatime"
            | "nodiratime"
            | "diratime"
            | "lazytime"
            | "async"
            | "sync"
    ) || name.starts_with("x-systemd.")
        || name.starts_with("x-")
        || name == "comment"
}

/// Parses `-o` option groups (each comma separated).
pub fn parse(groups: &[String]) -> Result<MountOptions, String> {
    let mut o = MountOptions::default();
    let mut unknown = Vec::new();
    for option in groups.iter().flat_map(|g| g.split(',')).filter(|o| !o.is_empty()) {
        let (raw_name, value) = option.split_once('=').map_or((option, None), |(n, v)| (n, Some(v)));
        let name = raw_name.replace('-', "_");
        let text = || {
            value
                .filter(|v| !v.is_empty())
                .map(str::to_string)
                .ok_or_else(|| format!("mount option {raw_name} needs a value ({raw_name}=...)"))
        };
        let number = |radix: u32| {
            value
                .and_then(|v| u64::from_str_radix(v, radix).ok())
                .ok_or_else(|| format!("mount option {raw_name} needs a number, got {option:?}"))
        };
        let id = || number(10).and_then(|n| u32::try_from(n).map_err(|_| format!("{option}: out of range")));
        match name.as_str() {
            "ro" => o.read_only = true,
            "rw" => {
                o.read_only = false;
                o.read_write = true;
            }
            "allow_other" => o.allow_other = true,
            "uid" => o.overrides.uid = Some(id()?),
            "gid" => o.overrides.gid = Some(id()?),
            "umask" => o.overrides.umask = Some((number(8)? & 0o777) as u32),
            "key_file" => o.key_file = Some(text()?.into()),
            "passphrase_file" => o.passphrase_file = Some(text()?.into()),
            "kms" => o.kms = true,
            "kms_endpoint" => o.kms_endpoint = Some(text()?),
            "cache_dir" => o.cache_dir = Some(text()?.into()),
            "endpoint" => o.endpoint = Some(text()?),
            "region" => o.region = Some(text()?),
            "path_style" => o.path_style = true,
            "foreground" => o.foreground = true,
            "metadata_interval" => o.metadata_interval = Some(number(10)?),
            "log_level" => o.log_level = Some(text()?),
            "audit" => o.audit = Some(text()?),
            "audit_flush_interval" => o.audit_flush_interval = Some(number(10)?),
            "audit_retention_days" => o.audit_retention_days = Some(number(10)?),
            "audit_syslog" => o.audit_syslog = true,
            "audit_syslog_paths" => o.audit_syslog_paths = true,
            "cache_size" => o.cache_size = Some(parse_bytes(&text()?)?),
            "cache_min_free" => o.cache_min_free = Some(text()?.parse()?),
            "max_dirty" => o.max_dirty = Some(parse_bytes(&text()?)?),
            "upload_concurrency" => o.upload_concurrency = Some(number(10)?),
            "allow_volatile_cache" => o.allow_volatile_cache = true,
            "force_takeover" => o.force_takeover = true,
            "snapshot" => o.snapshot = Some(text()?),
            "follow_interval" => o.follow_interval = Some(number(10)?),
            _ if is_ignored(raw_name) => {}
            _ => unknown.push(option.to_string()),
        }
    }
    if unknown.is_empty() {
        Ok(o)
    } else {
        Err(format!("unknown mount option(s): {}", unknown.join(", ")))
    }
}

/// Rewrites mount.fuse3's calling convention, `s3vault SOURCE MOUNTPOINT -o
/// OPTIONS`, into `s3vault mount SOURCE MOUNTPOINT -o OPTIONS`.
pub fn mount_helper_args(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let is_url = |a: &std::ffi::OsString| {
        a.to_str()
            .is_some_and(|s| s.starts_with("s3://") || s.starts_with("file://"))
    };
    if args.len() > 1 && is_url(&args[1]) {
        let mut rewritten = Vec::with_capacity(args.len() + 1);
        rewritten.push(args[0].clone());
        rewritten.push("mount".into());
        rewritten.extend(args.into_iter().skip(1));
        rewritten
    } else {
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<MountOptions, String> {
        parse(&[s.to_string()])
    }

    #[test]
    fn fstab_line_options_parse() {
        let o = p("key_file=/etc/s3vault/phi.key,cache_dir=/var/cache/s3vault/phi,allow_other,_netdev,nofail,x-systemd.automount,defaults,rw,nodev,nosuid,noatime").unwrap();
        assert_eq!(o.key_file, Some("/etc/s3vault/phi.key".into()));
        assert_eq!(o.cache_dir, Some("/var/cache/s3vault/phi".into()));
        assert!(o.allow_other && !o.read_only);
    }

    #[test]
    fn every_cli_option_has_an_o_form() {
        let o = p("passphrase-file=/p,endpoint=https://s3.example,region=eu-west-1,path_style,foreground,metadata_interval=5,log_level=debug,ro,uid=1000,gid=100,umask=027").unwrap();
        assert_eq!(o.passphrase_file, Some("/p".into()));
        assert_eq!(o.endpoint.as_deref(), Some("https://s3.example"));
        assert_eq!(o.region.as_deref(), Some("eu-west-1"));
        assert!(o.path_style && o.foreground && o.read_only);
        assert_eq!(o.metadata_interval, Some(5));
        assert_eq!(o.log_level.as_deref(), Some("debug"));
        assert_eq!(
            o.overrides,
            AttrOverrides {
                uid: Some(1000),
                gid: Some(100),
                umask: Some(0o27)
            }
        );
    }

    #[test]
    fn unknown_and_malformed_options_are_named() {
        let e = p("allow_other,bogus,also_bogus=1").unwrap_err();
        assert!(e.contains("bogus") && e.contains("also_bogus=1"), "{e}");
        assert!(p("uid=abc").unwrap_err().contains("uid"));
        assert!(p("key_file").unwrap_err().contains("key_file"));
        assert!(p("key_file=").is_err());
    }

    #[test]
    fn mount_helper_convention_becomes_the_mount_subcommand() {
        let args = |v: &[&str]| v.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        assert_eq!(
            mount_helper_args(args(&["s3vault", "s3://b/p", "/mnt", "-o", "rw"])),
            args(&["s3vault", "mount", "s3://b/p", "/mnt", "-o", "rw"])
        );
        assert_eq!(
            mount_helper_args(args(&["s3vault", "umount", "/mnt"])),
            args(&["s3vault", "umount", "/mnt"])
        );
    }
}
