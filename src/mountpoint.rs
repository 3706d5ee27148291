//! What is mounted where (`/proc/self/mountinfo`), for the checks a mount
//! makes before it covers a directory: never over files it would hide,
//! never a second time over itself, and a clear word about which mount of
//! this host already holds a volume.

use std::path::{Path, PathBuf};

/// The filesystem type s3vault mounts show (`fuse.` + the subtype).
pub const FSTYPE: &str = "fuse.s3vault";

/// One line of the mount table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// `major:minor` of the mounted filesystem (its /sys/class/bdi name).
    pub device: String,
    pub point: PathBuf,
    pub fstype: String,
    /// What was mounted: an s3vault mount's volume URL.
    pub source: String,
}

/// The mounts of this process's namespace, innermost last.
pub fn mounts() -> Vec<Mount> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|table| table.lines().filter_map(parse_line).collect())
        .unwrap_or_default()
}

/// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw`: the
/// fifth field is the mount point; after the `-` come type and source.
fn parse_line(line: &str) -> Option<Mount> {
    let (before, after) = line.split_once(" - ")?;
    let fields: Vec<&str> = before.split(' ').collect();
    let mut after = after.split(' ');
    Some(Mount {
        device: fields.get(2)?.to_string(),
        point: PathBuf::from(unescape(fields.get(4)?)),
        fstype: after.next()?.to_string(),
        source: unescape(after.next()?),
    })
}

/// The table writes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let d = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(d, 8)
                .ok()
                .filter(|_| d.bytes().all(|b| b.is_ascii_digit()))
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The s3vault mounts of volume `url` on this host.
pub fn s3vault_mounts_of(url: &str) -> Vec<PathBuf> {
    mounts()
        .into_iter()
        .filter(|m| m.fstype == FSTYPE && m.source.trim_end_matches('/') == url.trim_end_matches('/'))
        .map(|m| m.point)
        .collect()
}

/// Refuses to mount over `point` (canonical) when an s3vault mount is
/// there already, or when it holds entries the mount would hide (unless
/// `allow_non_empty`). The message is the whole one-line error.
pub fn check(point: &Path, allow_non_empty: bool) -> Result<(), String> {
    if let Some(mount) = mounts().into_iter().rev().find(|m| m.point == point)
        && mount.fstype == FSTYPE
    {
        let pid = crate::control::request(point, "pid")
            .map(|pid| format!(" (pid {pid})"))
            .unwrap_or_default();
        return Err(format!(
            "{} is already an s3vault mount of {}{pid}; unmount it first (s3vault umount {})",
            point.display(),
            mount.source,
            point.display()
        ));
    }
    let entries = std::fs::read_dir(point)
        .map_err(|e| format!("mount point {}: {e}", point.display()))?
        .count();
    if entries > 0 && !allow_non_empty {
        return Err(format!(
            "mount point {} is not empty ({entries} entries would be hidden under the mount); use an empty \
             directory, or --allow-non-empty (-o nonempty) to mount over them",
            point.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_table_lines_are_read_with_their_escapes() {
        let line = "57 29 0:52 / /mnt/my\\040vol rw,nosuid,nodev,relatime shared:30 - fuse.s3vault s3://bucket/vol rw,user_id=0";
        assert_eq!(
            parse_line(line),
            Some(Mount {
                device: "0:52".into(),
                point: PathBuf::from("/mnt/my vol"),
                fstype: FSTYPE.into(),
                source: "s3://bucket/vol".into(),
            })
        );
        assert_eq!(unescape("a\\134b\\011"), "a\\b\t");
        assert_eq!(unescape("odd\\9x"), "odd\\9x");
        assert_eq!(unescape("/plain/é\\"), "/plain/é\\");
        assert_eq!(parse_line("garbage"), None);
    }

    #[test]
    fn this_process_sees_its_root_mount() {
        assert!(mounts().iter().any(|m| m.point == Path::new("/")));
    }

    #[test]
    fn a_non_empty_directory_is_refused_unless_allowed() {
        let dir = tempfile::tempdir().unwrap();
        check(dir.path(), false).unwrap();
        std::fs::write(dir.path().join("hidden"), b"x").unwrap();
        let e = check(dir.path(), false).unwrap_err();
        assert!(
            e.contains("not empty (1 entries") && e.contains("--allow-non-empty"),
            "{e}"
        );
        check(dir.path(), true).unwrap();
    }
}
