//! One audit record: who did what to which path, when, and with what result.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// What happened. The names are part of the format (they are stored).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Event {
    Open,
    Create,
    Mkdir,
    Mknod,
    Symlink,
    Link,
    Unlink,
    Rmdir,
    Rename,
    Truncate,
    Chmod,
    Chown,
    Setxattr,
    Removexattr,
    /// A handle closed (the last close of an open); records of earlier
    /// releases call it `release`.
    #[serde(alias = "release")]
    Close,
    /// A lookup refused for lack of search permission on a directory: the
    /// open behind it never reaches the volume, but the attempt does.
    Search,
    Mount,
    Unmount,
    KeyUse,
    KeyAdd,
    KeyRemove,
    Init,
    SnapshotCreate,
    SnapshotDelete,
    /// A file copied out of a snapshot by `s3vault restore`.
    Restore,
    /// A mount took a store older than this host had seen as the volume
    /// (`--accept-older-state`: a restored backup, on purpose).
    AcceptOlderState,
    /// The audit chains in the store, and how many segments each had, when
    /// a chain began: `audit verify` then finds any of them deleted.
    ChainsSeen,
    /// A writer uploaded a checkpoint (`generation=N head=H`): the newest
    /// position the trail has seen between mount and unmount.
    Checkpoint,
}

impl Event {
    pub const ALL: [Event; 28] = [
        Event::Open,
        Event::Create,
        Event::Mkdir,
        Event::Mknod,
        Event::Symlink,
        Event::Link,
        Event::Unlink,
        Event::Rmdir,
        Event::Rename,
        Event::Truncate,
        Event::Chmod,
        Event::Chown,
        Event::Setxattr,
        Event::Removexattr,
        Event::Close,
        Event::Search,
        Event::Mount,
        Event::Unmount,
        Event::KeyUse,
        Event::KeyAdd,
        Event::KeyRemove,
        Event::Init,
        Event::SnapshotCreate,
        Event::SnapshotDelete,
        Event::Restore,
        Event::AcceptOlderState,
        Event::ChainsSeen,
        Event::Checkpoint,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Event::Open => "open",
            Event::Create => "create",
            Event::Mkdir => "mkdir",
            Event::Mknod => "mknod",
            Event::Symlink => "symlink",
            Event::Link => "link",
            Event::Unlink => "unlink",
            Event::Rmdir => "rmdir",
            Event::Rename => "rename",
            Event::Truncate => "truncate",
            Event::Chmod => "chmod",
            Event::Chown => "chown",
            Event::Setxattr => "setxattr",
            Event::Removexattr => "removexattr",
            Event::Close => "close",
            Event::Search => "search",
            Event::Mount => "mount",
            Event::Unmount => "unmount",
            Event::KeyUse => "key-use",
            Event::KeyAdd => "key-add",
            Event::KeyRemove => "key-remove",
            Event::Init => "init",
            Event::SnapshotCreate => "snapshot-create",
            Event::SnapshotDelete => "snapshot-delete",
            Event::Restore => "restore",
            Event::AcceptOlderState => "accept-older-state",
            Event::ChainsSeen => "chains-seen",
            Event::Checkpoint => "checkpoint",
        }
    }

    /// Events about the volume, not a file: recorded even with `--audit=off`.
    pub fn volume_level(self) -> bool {
        matches!(
            self,
            Event::Mount
                | Event::Unmount
                | Event::KeyUse
                | Event::ChainsSeen
                | Event::Checkpoint
                | Event::AcceptOlderState
        )
    }

    /// Events that read or write a file's content (for reports).
    pub fn opens(self) -> bool {
        matches!(self, Event::Open | Event::Create | Event::Restore)
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Event {
    type Err = String;

    fn from_str(s: &str) -> Result<Event, String> {
        // The name records of earlier releases use.
        if s == "release" {
            return Ok(Event::Close);
        }
        Event::ALL.into_iter().find(|e| e.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Event::ALL.iter().map(|e| e.name()).collect();
            format!("unknown event {s:?} (one of: {})", names.join(", "))
        })
    }
}

/// The caller's credentials, as the kernel reported them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Subject {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// One record. Optional fields are left out of the stored form when empty.
/// Paths are volume-relative ("/dir/file") and spelled by `display_bytes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    /// UTC, nanoseconds since the Unix epoch.
    pub time_ns: i64,
    pub event: Event,
    /// "ok" or the errno name ("EACCES").
    pub result: String,
    pub uid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub gid: u32,
    pub pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ino: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_read: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_written: Option<u64>,
    /// Free text for events without a path: mount options, key slot ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Record {
    pub fn new(event: Event, subject: Subject, errno: Option<i32>) -> Record {
        Record {
            seq: 0,
            time_ns: 0,
            event,
            result: errno.map_or_else(|| "ok".to_string(), errno_name),
            uid: subject.uid,
            user: None,
            gid: subject.gid,
            pid: subject.pid,
            process: None,
            exe: None,
            path: None,
            new_path: None,
            ino: None,
            flags: None,
            bytes_read: None,
            bytes_written: None,
            detail: None,
        }
    }

    pub fn path(mut self, path: &[u8]) -> Record {
        self.path = Some(display_bytes(path));
        self
    }

    pub fn new_path(mut self, path: &[u8]) -> Record {
        self.new_path = Some(display_bytes(path));
        self
    }

    pub fn ino(mut self, ino: Option<u64>) -> Record {
        self.ino = ino;
        self
    }

    pub fn flags(mut self, flags: i32) -> Record {
        self.flags = Some(flags_words(flags));
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Record {
        self.detail = Some(detail.into());
        self
    }

    pub fn is_denied(&self) -> bool {
        self.result == "EACCES" || self.result == "EPERM"
    }
}

/// Bytes as text, losslessly: UTF-8 passes, except that backslash and
/// control characters, like bytes that are not UTF-8, become `\xNN`. A
/// hostile file name can thus neither break the JSON nor a terminal.
pub fn display_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' || c.is_control() {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\x{b:02x}"));
                }
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// open(2) flags in words: "O_WRONLY|O_CREAT|O_TRUNC".
pub fn flags_words(flags: i32) -> String {
    /// The kernel's `__FMODE_EXEC`, set on opens for execve.
    const FMODE_EXEC: i32 = 0x20;
    let mut words = vec![match flags & libc::O_ACCMODE {
        libc::O_RDONLY => "O_RDONLY",
        libc::O_WRONLY => "O_WRONLY",
        _ => "O_RDWR",
    }];
    let named = [
        (libc::O_CREAT, "O_CREAT"),
        (libc::O_EXCL, "O_EXCL"),
        (libc::O_TRUNC, "O_TRUNC"),
        (libc::O_APPEND, "O_APPEND"),
        (libc::O_NONBLOCK, "O_NONBLOCK"),
        (libc::O_DIRECTORY, "O_DIRECTORY"),
        (libc::O_NOFOLLOW, "O_NOFOLLOW"),
        (libc::O_SYNC, "O_SYNC"),
        (libc::O_DIRECT, "O_DIRECT"),
        (libc::O_NOATIME, "O_NOATIME"),
        (FMODE_EXEC, "EXEC"),
    ];
    for (bit, name) in named {
        // O_SYNC includes O_DSYNC's bit; name the one that is fully set.
        if flags & bit == bit {
            words.push(name);
        }
    }
    if flags & libc::O_SYNC != libc::O_SYNC && flags & libc::O_DSYNC != 0 {
        words.push("O_DSYNC");
    }
    words.join("|")
}

/// "EACCES" for 13, and so on; "errno N" for the rare rest.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EACCES => "EACCES",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::E2BIG => "E2BIG",
        libc::EBUSY => "EBUSY",
        _ => return format!("errno {errno}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_escaped_losslessly() {
        assert_eq!(display_bytes(b"plain/na me.txt"), "plain/na me.txt");
        assert_eq!(display_bytes("caf\u{e9}".as_bytes()), "caf\u{e9}");
        assert_eq!(display_bytes(b"a\nb\x1b[31m"), "a\\x0ab\\x1b[31m");
        assert_eq!(display_bytes(b"back\\slash\xff"), "back\\x5cslash\\xff");
    }

    #[test]
    fn flags_are_spelled_out() {
        assert_eq!(flags_words(libc::O_RDONLY), "O_RDONLY");
        assert_eq!(
            flags_words(libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC),
            "O_WRONLY|O_CREAT|O_TRUNC"
        );
        assert_eq!(flags_words(libc::O_RDWR | libc::O_APPEND), "O_RDWR|O_APPEND");
        assert_eq!(flags_words(libc::O_WRONLY | libc::O_DSYNC), "O_WRONLY|O_DSYNC");
        assert_eq!(flags_words(libc::O_WRONLY | libc::O_SYNC), "O_WRONLY|O_SYNC");
    }

    #[test]
    fn events_round_trip_through_their_names() {
        for event in Event::ALL {
            assert_eq!(event.name().parse::<Event>(), Ok(event));
            let json = serde_json::to_string(&event).unwrap();
            assert_eq!(json, format!("\"{}\"", event.name()));
        }
        assert!("opne".parse::<Event>().is_err());
    }

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(libc::EACCES), "EACCES");
        assert_eq!(errno_name(9999), "errno 9999");
    }
}
