//! Who the caller is: user names from the password database, process names
//! and executables from /proc. Both are cached, since a busy program opens
//! many files; a process entry is keyed by pid *and* start time, so a
//! recycled pid never inherits another program's name.

use lru::LruCache;
use std::ffi::CStr;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const CACHED: NonZeroUsize = NonZeroUsize::new(4096).unwrap();
/// A renamed or removed account shows up in the log within this time.
const USER_TTL: Duration = Duration::from_secs(60);
/// A process entry checked this recently is trusted without reading /proc
/// again: a pid cannot be freed and reused within it unless the whole pid
/// space cycles in that time.
const PROCESS_FRESH: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    pub name: Option<String>,
    pub exe: Option<String>,
}

pub struct Identities {
    users: Mutex<LruCache<u32, (Instant, Option<String>)>>,
    processes: Mutex<LruCache<u32, CachedProcess>>,
}

struct CachedProcess {
    start: u64,
    checked: Instant,
    info: ProcessInfo,
}

impl Default for Identities {
    fn default() -> Self {
        Identities {
            users: Mutex::new(LruCache::new(CACHED)),
            processes: Mutex::new(LruCache::new(CACHED)),
        }
    }
}

impl Identities {
    pub fn user_name(&self, uid: u32) -> Option<String> {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, name)) = users.get(&uid)
            && at.elapsed() < USER_TTL
        {
            return name.clone();
        }
        let name = lookup_user(uid);
        users.put(uid, (Instant::now(), name.clone()));
        name
    }

    /// Name and executable of task `pid`; empty for a task that is gone
    /// (or for pid 0, the kernel itself).
    pub fn process(&self, pid: u32) -> ProcessInfo {
        if pid == 0 {
            return ProcessInfo::default();
        }
        let mut processes = self.processes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cached) = processes.get(&pid)
            && cached.checked.elapsed() < PROCESS_FRESH
        {
            return cached.info.clone();
        }
        let Some(start) = start_time(pid) else {
            // Gone (a close is often recorded after its process exited):
            // the last process seen with this pid is the one.
            return processes.get(&pid).map(|c| c.info.clone()).unwrap_or_default();
        };
        if let Some(cached) = processes.get_mut(&pid)
            && cached.start == start
        {
            cached.checked = Instant::now();
            return cached.info.clone();
        }
        let info = ProcessInfo {
            name: std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .ok()
                .map(|s| s.trim_end_matches('\n').to_string()),
            exe: std::fs::read_link(format!("/proc/{pid}/exe"))
                .ok()
                .map(|p| super::display_bytes(p.as_os_str().as_encoded_bytes())),
        };
        let cached = CachedProcess {
            start,
            checked: Instant::now(),
            info: info.clone(),
        };
        processes.put(pid, cached);
        info
    }
}

/// Field 22 of /proc/PID/stat: when the task started, in clock ticks since
/// boot. The name (field 2) may hold spaces and parentheses, so fields are
/// counted after its closing parenthesis.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

fn parse_start_time(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // After the name come field 3 (state) onwards; start time is field 22.
    after_name.split_whitespace().nth(22 - 3)?.parse().ok()
}

fn lookup_user(uid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 4096];
    loop {
        // SAFETY: all-zero is a valid passwd (null pointers, zero ids);
        // getpwuid_r only writes into it and into `buf`.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: the pointers are valid for the sizes given for the call's duration.
        let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
            return None;
        }
        // SAFETY: on success pw_name points to a NUL-terminated string in `buf`.
        let name = unsafe { CStr::from_ptr(pwd.pw_name) };
        return Some(name.to_string_lossy().into_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_survives_odd_process_names() {
        let stat = "1234 (a) b (c) S 1 1234 1234 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 1000 100";
        assert_eq!(parse_start_time(stat), Some(987654));
        assert_eq!(parse_start_time("garbage"), None);
    }

    #[test]
    fn our_own_process_is_identified() {
        let ids = Identities::default();
        let info = ids.process(std::process::id());
        assert!(info.exe.is_some_and(|e| e.starts_with('/')));
        assert!(info.name.is_some());
        assert_eq!(ids.user_name(0).as_deref(), Some("root"));
        assert_eq!(ids.process(0), ProcessInfo::default());
    }
}
