//! Process hardening: keep key material out of core dumps, swap and the
//! reach of other processes of the same user.

use std::sync::Once;

/// No core dumps (they would contain keys and plaintext), and no ptrace or
/// /proc/PID/mem access by other processes of the same user.
pub fn harden_process() {
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads the struct we pass; prctl with PR_SET_DUMPABLE
    // takes plain integers. Neither touches our memory otherwise.
    unsafe {
        if libc::setrlimit(libc::RLIMIT_CORE, &no_core) != 0 {
            tracing::warn!("cannot disable core dumps: {}", std::io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 {
            tracing::warn!(
                "cannot mark the process non-dumpable: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

static MLOCK_WARNING: Once = Once::new();

/// Pins `len` bytes at `ptr` in RAM so they are never swapped out. Returns
/// whether it worked; warns once per process if RLIMIT_MEMLOCK forbids it.
pub fn lock_memory(ptr: *const u8, len: usize) -> bool {
    // SAFETY: mlock only changes the paging of the range; the caller passes
    // a range it owns for as long as the lock is held.
    let ok = unsafe { libc::mlock(ptr.cast(), len) } == 0;
    if !ok {
        MLOCK_WARNING.call_once(|| {
            tracing::warn!(
                "cannot lock key material in memory ({}); raise RLIMIT_MEMLOCK (LimitMEMLOCK= in systemd) to keep keys out of swap",
                std::io::Error::last_os_error()
            );
        });
    }
    ok
}

/// Undoes [`lock_memory`].
pub fn unlock_memory(ptr: *const u8, len: usize) {
    // SAFETY: as for lock_memory; unlocking a range never faults.
    unsafe { libc::munlock(ptr.cast(), len) };
}

#[cfg(test)]
mod tests {
    /// Kilobytes of this process locked in RAM, from /proc.
    fn locked_kb() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmLck:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[test]
    fn locked_memory_is_pinned_until_unlocked() {
        // 4 MiB, far more than the few pages other tests lock meanwhile.
        const LEN: usize = 4 << 20;
        let buf = vec![1u8; LEN];
        let before = locked_kb();
        if !super::lock_memory(buf.as_ptr(), LEN) {
            // Only an unprivileged user under a low RLIMIT_MEMLOCK may fail.
            let limit = rustix::process::getrlimit(rustix::process::Resource::Memlock);
            assert!(
                !rustix::process::geteuid().is_root() && limit.current.is_some_and(|l| l < LEN as u64),
                "mlock failed without a limit to blame"
            );
            return;
        }
        let locked = locked_kb();
        super::unlock_memory(buf.as_ptr(), LEN);
        let after = locked_kb();
        assert!(locked >= before + 3 * 1024, "VmLck went from {before} to {locked} kB");
        assert!(after + 3 * 1024 <= locked, "VmLck stayed at {after} kB after unlocking");
    }
}
