//! Small operating-system helpers: the clock, the host name, user ids,
//! file-system space. A leaf: it imports nothing else of the crate, and
//! every other module takes these from here rather than calling libc.

use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ns() -> i64 {
    since_epoch().as_nanos() as i64
}

/// Whole seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    since_epoch().as_secs()
}

fn since_epoch() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// This machine's host name, as audit records and the lease show it.
pub fn hostname() -> String {
    let name = rustix::system::uname().nodename().to_string_lossy().into_owned();
    if name.is_empty() {
        "unknown host".to_string()
    } else {
        name
    }
}

/// Whether process `pid` is alive and an s3vault — this very binary, or
/// one whose command name says so — so a reused pid is not taken for one.
pub fn is_s3vault(pid: u32) -> bool {
    let exe = |p: &str| std::fs::read_link(format!("/proc/{p}/exe")).ok();
    let same_binary = exe(&pid.to_string()).is_some_and(|theirs| exe("self") == Some(theirs));
    same_binary || std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.contains("s3vault"))
}

/// The real user and group ids of this process.
pub fn real_ids() -> (u32, u32) {
    (rustix::process::getuid().as_raw(), rustix::process::getgid().as_raw())
}

/// The effective user id of this process.
pub fn effective_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// (available to unprivileged users, total) bytes of the filesystem at `dir`.
pub fn disk_space(dir: &Path) -> io::Result<(u64, u64)> {
    let st = rustix::fs::statvfs(dir)?;
    Ok((st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize))
}

/// The byte ranges of a sparse file that hold data (SEEK_DATA/SEEK_HOLE),
/// at the granularity of its filesystem's blocks.
pub fn data_ranges(file: &std::fs::File) -> io::Result<Vec<(u64, u64)>> {
    use rustix::fs::SeekFrom;
    let mut ranges = Vec::new();
    let mut at = 0u64;
    loop {
        let start = match rustix::fs::seek(file, SeekFrom::Data(at)) {
            Ok(start) => start,
            Err(rustix::io::Errno::NXIO) => return Ok(ranges),
            Err(e) => return Err(e.into()),
        };
        let end = rustix::fs::seek(file, SeekFrom::Hole(start))?;
        if end <= start {
            return Ok(ranges);
        }
        ranges.push((start, end));
        at = end;
    }
}

/// Whether `dir` is on a filesystem that does not survive a reboot (tmpfs,
/// ramfs).
pub fn is_volatile(dir: &Path) -> io::Result<bool> {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    let kind = rustix::fs::statfs(dir)?.f_type as i64;
    Ok(kind == TMPFS_MAGIC || kind == RAMFS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_is_after_this_code_was_written() {
        // 2026-01-01T00:00:00Z
        assert!(now_secs() > 1_767_225_600);
        assert!(now_ns() / 1_000_000_000 >= now_secs() as i64 - 1);
    }

    #[test]
    fn this_process_is_an_s3vault_and_pid_1_is_not() {
        assert!(is_s3vault(std::process::id()));
        assert!(!is_s3vault(1));
        assert!(!is_s3vault(u32::MAX));
    }

    #[test]
    fn hostname_matches_the_kernel() {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(hostname(), kernel.trim());
    }

    #[test]
    fn data_ranges_skip_holes() {
        use std::os::unix::fs::FileExt;
        let file = tempfile::tempfile().unwrap();
        file.set_len(1 << 20).unwrap();
        file.write_all_at(&[1; 4096], 64 << 10).unwrap();
        file.write_all_at(&[2; 8192], 512 << 10).unwrap();
        assert_eq!(
            data_ranges(&file).unwrap(),
            vec![(64 << 10, (64 << 10) + 4096), (512 << 10, (512 << 10) + 8192)]
        );
        assert_eq!(data_ranges(&tempfile::tempfile().unwrap()).unwrap(), vec![]);
    }

    #[test]
    fn disk_space_is_within_total() {
        let (free, total) = disk_space(Path::new("/")).unwrap();
        assert!(total > 0 && free <= total);
        assert!(!is_volatile(Path::new("/proc")).unwrap());
    }
}
