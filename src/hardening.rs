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
    #[test]
    fn locking_a_heap_range_round_trips() {
        let buf = Box::new([0u8; 64]);
        if super::lock_memory(buf.as_ptr(), buf.len()) {
            super::unlock_memory(buf.as_ptr(), buf.len());
        }
    }
}
