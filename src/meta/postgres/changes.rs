//! Telling the other hosts what a transaction changed (LISTEN/NOTIFY).
//!
//! A host keeps attributes and directory entries it read for up to the
//! attribute TTL (`fs/attr_cache.rs`), and the kernel keeps attributes and
//! pages. Each write transaction names, with its COMMIT and in the same
//! round trip, the inodes whose rows or entries it wrote; the other hosts
//! forget those at once instead of up to a second later. A notification
//! can be lost (a dropped listening connection; PostgreSQL's queue full):
//! the TTL still bounds what a host shows, so this only makes it sooner,
//! and a reconnected listener forgets everything.
//!
//! A payload is the sending host's tag and the inode numbers, e.g.
//! `3f2a9c01d4e7:1,17,4211`, or `3f2a9c01d4e7:*` when they would not fit.
//! Inode numbers and the times they change are what a database
//! administrator sees in the tables anyway (FORMAT.md).

use super::super::{Change, Result};
use super::{Link, Target, schema};
use crate::keyring::Keyring;
use std::collections::BTreeSet;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// Bytes of payload sent at most (PostgreSQL's limit is 8000).
const PAYLOAD_MAX: usize = 7000;

/// The channel of a volume's notifications.
pub(super) fn channel(volume_id: &[u8]) -> String {
    format!("s3vault_{}", hex::encode(&volume_id[..8]))
}

/// The tag that names a host in payloads, and lets it skip its own.
pub(super) fn tag(host: &[u8]) -> String {
    hex::encode(&host[..6])
}

/// The payload naming `inos`, changed by the host tagged `tag`.
pub(super) fn payload(tag: &str, inos: &BTreeSet<u64>) -> String {
    let mut out = format!("{tag}:");
    for (i, ino) in inos.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&ino.to_string());
        if out.len() > PAYLOAD_MAX {
            return format!("{tag}:*");
        }
    }
    out
}

/// What a payload tells a host tagged `own`; `None` for its own changes.
/// The empty payload is the listener's: it connected again.
fn parse(payload: &str, own: &str) -> Option<Change> {
    if payload.is_empty() {
        return Some(Change::Unknown);
    }
    let (tag, list) = payload.split_once(':').unwrap_or(("", "*"));
    if tag == own {
        return None;
    }
    let inos: std::result::Result<Vec<u64>, _> = list.split(',').map(str::parse).collect();
    Some(inos.map_or(Change::Unknown, Change::Inodes))
}

/// A host's listening connection.
pub struct PgChanges {
    link: Link,
    heard: Receiver<String>,
    own: String,
}

impl PgChanges {
    pub fn listen(target: &Target, ring: &Keyring, host: [u8; 16]) -> Result<PgChanges> {
        let (sender, heard) = std::sync::mpsc::channel();
        let link = Link::open(
            target,
            schema::schema_name(ring.volume_id()),
            Some(format!("LISTEN {}", channel(ring.volume_id()))),
            Some(sender),
        )?;
        Ok(PgChanges {
            link,
            heard,
            own: tag(&host),
        })
    }

    /// The next change another host made, waiting at most `timeout`;
    /// meanwhile a lost connection is made again (at most every second).
    pub fn next(&self, timeout: Duration) -> Option<Change> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.heard.recv_timeout(left) {
                Ok(payload) => {
                    if let Some(change) = parse(&payload, &self.own) {
                        return Some(change);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    // A failure is logged by the connection thread and
                    // tried again at the next call.
                    let _ = self.link.try_session();
                    return None;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(left);
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_names_the_inodes_or_everything() {
        let inos: BTreeSet<u64> = [1, 17, 4211].into();
        let sent = payload("aa", &inos);
        assert_eq!(sent, "aa:1,17,4211");
        assert_eq!(parse(&sent, "bb"), Some(Change::Inodes(vec![1, 17, 4211])));
        assert_eq!(parse(&sent, "aa"), None, "a host heard its own change");
        let many: BTreeSet<u64> = (u64::MAX - 2000..u64::MAX).collect();
        assert_eq!(payload("aa", &many), "aa:*");
        assert_eq!(parse("aa:*", "bb"), Some(Change::Unknown));
        assert_eq!(parse("", "bb"), Some(Change::Unknown), "a reconnect");
        assert_eq!(parse("garbage", "bb"), Some(Change::Unknown));
        assert_eq!(parse("aa:1,x", "bb"), Some(Change::Unknown));
    }
}
