//! flock and fcntl locks on a volume several hosts write: requests go to
//! the shared lock table (`meta::file_locks`). An embedded volume leaves
//! its locks to the kernel and never gets here.
//!
//! A blocking request (F_SETLKW, flock without LOCK_NB) asks again with a
//! growing pause until it is granted, or until the process waiting for it
//! has a signal to handle (EINTR, as a local lock would: `flock -w`'s
//! timer, a Ctrl-C, a kill).

use super::{Core, FsError, FsResult};
use crate::meta::file_locks::{Kind, Lock, LockTable, Owner, Request};
use std::sync::Arc;
use std::time::Duration;

/// A lock request as the kernel makes it: its owner is one of this host's.
#[derive(Clone, Copy, Debug)]
pub struct LockRequest {
    pub owner: u64,
    pub start: u64,
    pub end: u64,
    pub kind: Kind,
    pub pid: u32,
}

impl LockRequest {
    fn of(self, host: [u8; 16]) -> Request {
        Request {
            owner: Owner { host, id: self.owner },
            start: self.start,
            end: self.end,
            kind: self.kind,
            pid: self.pid,
        }
    }
}

/// The first and the longest pause between attempts of a blocking request.
const FIRST_PAUSE: Duration = Duration::from_millis(2);
const LONGEST_PAUSE: Duration = Duration::from_millis(100);

impl Core {
    /// Sends lock requests to `table` instead of leaving them to the kernel.
    pub fn with_locks(mut self, table: Arc<dyn LockTable>) -> Core {
        self.locks = Some(table);
        self
    }

    /// Whether locks go to the shared table (the kernel keeps them otherwise).
    pub fn locks_across_hosts(&self) -> bool {
        self.locks.is_some()
    }

    /// F_GETLK: the lock that keeps `request` from being granted, if any,
    /// with its process id if it is this host's (0 for another host's).
    pub fn test_lock(&self, ino: u64, request: LockRequest) -> FsResult<Option<(Lock, u32)>> {
        let locks = self.locks.as_ref().ok_or(FsError::ENOSYS)?;
        let host = locks.host();
        let found = locks.test(ino, &request.of(host)).map_err(unavailable)?;
        Ok(found.map(|l| (l, if l.owner.host == host { l.pid } else { 0 })))
    }

    /// F_SETLK / F_SETLKW (and flock): applies `request`, waiting for
    /// conflicting locks to go when `wait` says so; `interrupted` tells
    /// whether the requesting process has a signal to handle.
    pub async fn set_lock(
        &self,
        ino: u64,
        request: LockRequest,
        wait: bool,
        interrupted: impl Fn() -> bool,
    ) -> FsResult<()> {
        let locks = self.locks.as_ref().ok_or(FsError::ENOSYS)?;
        let request = request.of(locks.host());
        let mut pause = FIRST_PAUSE;
        loop {
            if locks.set(ino, &request).map_err(unavailable)?.is_none() {
                return Ok(());
            }
            if !wait {
                return Err(FsError(libc::EAGAIN));
            }
            if interrupted() {
                return Err(FsError(libc::EINTR));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(LONGEST_PAUSE);
        }
    }

    /// Drops the locks `owner` holds on `ino`: at every close for fcntl
    /// locks, at an open file's last close for flock ones. A close cannot
    /// fail for it: a table that does not answer gets the release again
    /// at the next sync (`keep_locks_alive`).
    pub fn release_locks(&self, ino: u64, owner: u64) {
        if let Some(Err(e)) = self.locks.as_ref().map(|l| l.release_owner(ino, owner)) {
            tracing::debug!(error = %e, "lock release not applied; will retry");
        }
    }

    /// Part of every sync: a host holding locks reconnects to the database
    /// soon after it restarts, before other hosts take its locks as a dead
    /// host's, and sends the releases that failed.
    pub(super) fn keep_locks_alive(&self) {
        if let Some(Err(e)) = self.locks.as_ref().map(|l| l.keep_alive()) {
            tracing::debug!(error = %e, "lock table unreachable; will retry");
        }
    }
}

/// A lock table that does not answer: ENOLCK, the errno for "no locks
/// available" (NFS gives it when its lock manager is unreachable).
fn unavailable(e: crate::meta::MetaError) -> FsError {
    if !matches!(e, crate::meta::MetaError::Unreachable(_)) {
        tracing::warn!(error = %e, "file lock request failed");
    }
    FsError(libc::ENOLCK)
}

/// Whether thread `tid` has a signal pending that it does not block: the
/// kernel then wants the request it waits on to end (FUSE_INTERRUPT,
/// which fuser does not pass on).
pub fn signal_pending(tid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{tid}/status")) else {
        // The process is gone: nobody waits for the answer.
        return true;
    };
    let mask = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    (mask("SigPnd:") | mask("ShdPnd:")) & !mask("SigBlk:") != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_signal_is_seen_and_a_blocked_one_is_not() {
        // SAFETY: sigprocmask and raise on this thread only; the mask is
        // restored before the signal is let through.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGUSR2);
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
            let tid = libc::gettid() as u32;
            assert!(!signal_pending(tid));
            libc::raise(libc::SIGUSR2);
            assert!(!signal_pending(tid), "blocked: not a reason to give up");
            // Ignore it, then unblock: the pending signal is discarded.
            libc::signal(libc::SIGUSR2, libc::SIG_IGN);
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            libc::signal(libc::SIGUSR2, libc::SIG_DFL);
        }
        assert!(signal_pending(u32::MAX), "a process that is gone waits for nothing");
    }

    #[test]
    fn a_signal_a_stopped_process_has_not_handled_yet_is_pending() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        // SAFETY: signals to our own child.
        unsafe {
            libc::kill(pid as i32, libc::SIGSTOP);
            std::thread::sleep(Duration::from_millis(50));
            assert!(!signal_pending(pid));
            libc::kill(pid as i32, libc::SIGTERM);
        }
        std::thread::sleep(Duration::from_millis(50));
        let pending = signal_pending(pid);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(pending);
    }
}
