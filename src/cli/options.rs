//! Mount options in the `-o name[=value],...` form that mount(8),
//! mount.fuse3, /etc/fstab and systemd use.
//!
//! Every command-line option of `s3vault mount` has an `-o` form: `-o
//! name=value` is `--name=value` (underscores or dashes) and `-o flag` is
//! `--flag`, so an fstab line can say everything a command line can, and
//! clap validates both the same way. `ro` and `rw` are `--read-only` and
//! `--read-write`, and giving both is refused; `nonempty` is
//! `--allow-non-empty`, as for s3fs. Options
//! that mount(8), mount.fuse3 or systemd add for their own use are accepted
//! and ignored, as a kernel filesystem would; anything else is refused by
//! name, so a typo never silently changes behaviour.

use std::ffi::OsString;

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
            | "comment"
    ) || name.starts_with("x-")
}

/// Turns `-o` option groups (each comma separated) into the long options
/// of `command` they stand for, e.g. `["ro,cache_size=1G"]` into
/// `["--read-only", "--cache-size=1G"]`.
pub fn expand(groups: &[String], command: &clap::Command) -> Result<Vec<String>, String> {
    let mut expanded = Vec::new();
    let mut access = None;
    let mut unknown = Vec::new();
    for option in groups.iter().flat_map(|g| g.split(',')).filter(|o| !o.is_empty()) {
        let (name, value) = option.split_once('=').map_or((option, None), |(n, v)| (n, Some(v)));
        match name {
            "ro" | "rw" => {
                if access.is_some_and(|a: &str| a != name) {
                    return Err("mount options ro and rw conflict: give one of them".into());
                }
                access = Some(name);
            }
            // The name s3fs and FUSE 2 use.
            "nonempty" => expanded.push("--allow-non-empty".into()),
            _ if is_ignored(name) => {}
            _ => {
                let long = name.replace('_', "-");
                let arg = command
                    .get_arguments()
                    .find(|a| a.get_long() == Some(long.as_str()) && !a.is_hide_set());
                match (arg, value) {
                    (None, _) => unknown.push(option.to_string()),
                    (Some(arg), None | Some("")) if arg.get_action().takes_values() => {
                        return Err(format!("mount option {name} needs a value ({name}=...)"));
                    }
                    (Some(_), Some(value)) => expanded.push(format!("--{long}={value}")),
                    (Some(_), None) => expanded.push(format!("--{long}")),
                }
            }
        }
    }
    if !unknown.is_empty() {
        return Err(format!("unknown mount option(s): {}", unknown.join(", ")));
    }
    expanded.extend(access.map(|a| if a == "ro" { "--read-only" } else { "--read-write" }.to_string()));
    Ok(expanded)
}

/// Rewrites mount.fuse3's calling convention, `s3vault SOURCE MOUNTPOINT -o
/// OPTIONS`, into `s3vault mount SOURCE MOUNTPOINT -o OPTIONS`.
pub fn mount_helper_args(args: Vec<OsString>) -> Vec<OsString> {
    let is_url = |a: &OsString| {
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

    fn command() -> clap::Command {
        clap::Command::new("t")
            .arg(clap::Arg::new("cache_size").long("cache-size"))
            .arg(
                clap::Arg::new("path_style")
                    .long("path-style")
                    .action(clap::ArgAction::SetTrue),
            )
            .arg(clap::Arg::new("secret").long("secret").hide(true))
    }

    fn x(s: &str) -> Result<Vec<String>, String> {
        expand(&[s.to_string()], &command())
    }

    #[test]
    fn options_become_long_flags() {
        assert_eq!(
            x("cache_size=1G,path-style,_netdev,x-systemd.automount,defaults,nodev").unwrap(),
            ["--cache-size=1G", "--path-style"]
        );
    }

    #[test]
    fn ro_and_rw_together_are_refused() {
        assert!(x("ro,rw").unwrap_err().contains("ro and rw conflict"));
        assert!(x("rw,path_style,ro").is_err());
        assert_eq!(x("ro,path_style,ro").unwrap(), ["--path-style", "--read-only"]);
        assert_eq!(x("rw").unwrap(), ["--read-write"]);
        assert_eq!(x("nonempty").unwrap(), ["--allow-non-empty"]);
    }

    #[test]
    fn unknown_hidden_and_valueless_options_are_named() {
        let e = x("path_style,bogus,also_bogus=1").unwrap_err();
        assert!(e.contains("bogus") && e.contains("also_bogus=1"), "{e}");
        assert!(x("secret=1").unwrap_err().contains("secret"));
        assert!(x("cache_size").unwrap_err().contains("cache_size=..."));
        assert!(x("cache_size=").is_err());
    }

    #[test]
    fn mount_helper_convention_becomes_the_mount_subcommand() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
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
