//! The writer's lease: one sealed object, `lease`, naming the host that has
//! the volume mounted read-write, so a second read-write mount is refused at
//! once and says who holds it. It is only ever replaced with a conditional
//! PUT on its tag (`If-Match`): a holder whose heartbeat finds the tag
//! changed has been taken over (`--force-takeover`) and must stop writing.
//! The lease is the polite half of single-writer safety; the create-only
//! metadata generations (`journal::writer`) are the half that cannot be raced.
//!
//! Every write of the lease carries a counter one above the one it
//! replaces, so the highest counter is the newest lease: a holder whose tag
//! changed under a lower counter is looking at an old copy put back (a
//! replay, by someone with write access to the bucket) and takes the lease
//! again, instead of stopping a healthy writer.

use crate::codec;
use crate::keyring::Keyring;
use crate::store::{ObjectStore, StoreError};
use bytes::Bytes;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const LEASE_KEY: &str = "lease";
/// How often the holder rewrites its heartbeat.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// Attempts when the lease changes between reading and replacing it.
const ATTEMPTS: usize = 5;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Holder {
    /// The cache directory's writer id: the same id is the same mount
    /// coming back after a crash, which may take the lease back.
    pub writer: String,
    pub host: String,
    pub pid: u32,
    pub mounted_ns: i64,
    pub heartbeat_ns: i64,
    /// One more than the lease it replaced (0 in leases of older releases).
    #[serde(default)]
    pub counter: u64,
}

impl Holder {
    fn describe(&self) -> String {
        format!(
            "{} since {} (pid {}, last heartbeat {})",
            self.host,
            crate::audit::output::rfc3339(self.mounted_ns),
            self.pid,
            crate::audit::output::rfc3339(self.heartbeat_ns)
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("volume is mounted read-write on {}; if that host is dead, mount with --force-takeover", .0.describe())]
    Held(Holder),
    #[error("the volume was taken over by {0}")]
    Lost(String),
    #[error("the lease object does not open with this key ({0}); mount with --force-takeover to replace it")]
    Unreadable(codec::CodecError),
    #[error("the lease kept changing while we tried to take it")]
    Contended,
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Lease {
    store: Arc<dyn ObjectStore>,
    ring: Arc<Keyring>,
    holder: Mutex<Holder>,
    tag: Mutex<String>,
    /// Whom we took the lease from, if it was not free or ours.
    taken_from: Option<Holder>,
}

use crate::os::{hostname, now_ns};

fn seal(ring: &Keyring, holder: &Holder) -> Bytes {
    let json = serde_json::to_vec(holder).unwrap_or_default();
    Bytes::from(codec::seal_metadata(ring, LEASE_KEY, &json))
}

fn open(ring: &Keyring, sealed: &[u8]) -> Result<Holder, LeaseError> {
    let plain = codec::open_metadata(ring, LEASE_KEY, sealed).map_err(LeaseError::Unreadable)?;
    serde_json::from_slice(&plain).map_err(|e| {
        LeaseError::Store(StoreError::Other {
            action: "read the lease",
            detail: e.to_string(),
        })
    })
}

impl Lease {
    /// Takes the lease for `writer`: free, or already `writer`'s (a crash of
    /// this cache directory's mount), or anyone's with `force`.
    pub async fn acquire(
        store: Arc<dyn ObjectStore>,
        ring: Arc<Keyring>,
        writer: &str,
        force: bool,
    ) -> Result<Lease, LeaseError> {
        let now = now_ns();
        let mut holder = Holder {
            writer: writer.to_string(),
            host: hostname(),
            pid: std::process::id(),
            mounted_ns: now,
            heartbeat_ns: now,
            counter: 1,
        };
        for _ in 0..ATTEMPTS {
            holder.counter = 1;
            let sealed = seal(&ring, &holder);
            let (tag, taken_from) = match store.get_tagged(LEASE_KEY).await {
                Err(StoreError::NotFound) => match store.put_new(LEASE_KEY, sealed.clone()).await {
                    Ok(()) => (store.get_tagged(LEASE_KEY).await?.1, None),
                    Err(StoreError::AlreadyExists) => continue,
                    Err(e) => return Err(e.into()),
                },
                Ok((current, tag)) => {
                    let previous = match open(&ring, &current) {
                        Ok(previous) => Some(previous),
                        Err(_) if force => None,
                        Err(e) => return Err(e),
                    };
                    let ours = previous.as_ref().is_some_and(|p| p.writer == writer);
                    if !ours && !force {
                        return Err(LeaseError::Held(previous.unwrap_or_else(|| holder.clone())));
                    }
                    holder.counter = previous.as_ref().map_or(0, |p| p.counter) + 1;
                    match store.put_if_tag(LEASE_KEY, seal(&ring, &holder), &tag).await {
                        Ok(tag) => (tag, previous.filter(|_| !ours)),
                        Err(StoreError::AlreadyExists | StoreError::NotFound) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(e) => return Err(e.into()),
            };
            return Ok(Lease {
                store,
                ring,
                holder: Mutex::new(holder),
                tag: Mutex::new(tag),
                taken_from,
            });
        }
        Err(LeaseError::Contended)
    }

    /// The holder this lease was forcibly taken from, if any.
    pub fn taken_from(&self) -> Option<&Holder> {
        self.taken_from.as_ref()
    }

    /// Rewrites the heartbeat; [`LeaseError::Lost`] if someone took over
    /// (or deleted the lease). An older copy put back is replaced.
    pub async fn renew(&self) -> Result<(), LeaseError> {
        let mut tag = self.tag.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for _ in 0..ATTEMPTS {
            let holder = {
                let mut holder = self.holder.lock().unwrap_or_else(|e| e.into_inner());
                holder.heartbeat_ns = now_ns();
                holder.counter += 1;
                holder.clone()
            };
            match self.store.put_if_tag(LEASE_KEY, seal(&self.ring, &holder), &tag).await {
                Ok(new) => {
                    *self.tag.lock().unwrap_or_else(|e| e.into_inner()) = new;
                    return Ok(());
                }
                Err(StoreError::AlreadyExists | StoreError::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
            let (current, current_tag) = match self.store.get_tagged(LEASE_KEY).await {
                Ok(found) => found,
                Err(StoreError::NotFound) => return Err(LeaseError::Lost("nobody: the lease was deleted".into())),
                Err(e) => return Err(e.into()),
            };
            let found = open(&self.ring, &current).map_err(|_| LeaseError::Lost("another writer".into()))?;
            // What we last wrote had counter `holder.counter - 1`.
            if found.counter + 1 >= holder.counter {
                return Err(LeaseError::Lost(found.describe()));
            }
            tracing::warn!(
                replayed = found.counter,
                ours = holder.counter - 1,
                "an older copy of the lease was put back in the store; taking the lease again"
            );
            tag = current_tag;
        }
        Err(LeaseError::Contended)
    }

    /// Gives the lease up at unmount, if it is still ours.
    pub async fn release(&self) -> Result<(), LeaseError> {
        let tag = self.tag.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match self.store.get_tagged(LEASE_KEY).await {
            Ok((_, current)) if current == tag => Ok(self.store.delete(LEASE_KEY).await?),
            Ok(_) | Err(StoreError::NotFound) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SecretKey;
    use crate::store::MemoryStore;

    fn setup() -> (Arc<dyn ObjectStore>, Arc<Keyring>) {
        let ring = Arc::new(Keyring::new(&SecretKey::random(), [7; 16]));
        (Arc::new(MemoryStore::default()), ring)
    }

    #[tokio::test]
    async fn a_second_writer_is_refused_with_the_holder_named() {
        let (store, ring) = setup();
        let first = Lease::acquire(store.clone(), ring.clone(), "aaaa", false)
            .await
            .unwrap();
        assert!(first.taken_from().is_none());
        let refused = Lease::acquire(store.clone(), ring.clone(), "bbbb", false)
            .await
            .err()
            .unwrap();
        let message = refused.to_string();
        assert!(message.contains("mounted read-write on"), "{message}");
        assert!(message.contains(&format!("pid {}", std::process::id())), "{message}");
        assert!(message.contains("--force-takeover"), "{message}");
        // The same writer coming back after a crash takes it again.
        Lease::acquire(store.clone(), ring.clone(), "aaaa", false)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_forced_takeover_makes_the_old_holder_lose_at_its_next_heartbeat() {
        let (store, ring) = setup();
        let old = Lease::acquire(store.clone(), ring.clone(), "aaaa", false)
            .await
            .unwrap();
        old.renew().await.unwrap();
        let new = Lease::acquire(store.clone(), ring.clone(), "bbbb", true).await.unwrap();
        assert_eq!(new.taken_from().map(|h| h.writer.as_str()), Some("aaaa"));
        assert!(matches!(old.renew().await, Err(LeaseError::Lost(_))));
        new.renew().await.unwrap();
        // The old holder's release leaves the new holder's lease alone.
        old.release().await.unwrap();
        assert!(store.get(LEASE_KEY).await.is_ok());
        new.release().await.unwrap();
        assert!(matches!(store.get(LEASE_KEY).await, Err(StoreError::NotFound)));
        Lease::acquire(store, ring, "cccc", false).await.unwrap();
    }

    #[tokio::test]
    async fn an_old_copy_of_the_lease_put_back_does_not_stop_the_holder() {
        let (store, ring) = setup();
        let old = Lease::acquire(store.clone(), ring.clone(), "aaaa", false)
            .await
            .unwrap();
        let first_copy = store.get(LEASE_KEY).await.unwrap();
        let new = Lease::acquire(store.clone(), ring.clone(), "bbbb", true).await.unwrap();
        new.renew().await.unwrap();
        // The taken-over holder's lease, and the new holder's own older
        // one, put back: replays, not takeovers.
        let own_copy = store.get(LEASE_KEY).await.unwrap();
        new.renew().await.unwrap();
        for replay in [first_copy, own_copy] {
            store.put(LEASE_KEY, replay).await.unwrap();
            new.renew().await.unwrap();
            let (current, _) = store.get_tagged(LEASE_KEY).await.unwrap();
            assert_eq!(open(&ring, &current).unwrap().writer, "bbbb");
        }
        // The old holder still loses: the newest lease is not its own.
        assert!(matches!(old.renew().await, Err(LeaseError::Lost(_))));
        // A deleted lease is lost, not re-created.
        store.delete(LEASE_KEY).await.unwrap();
        assert!(matches!(new.renew().await, Err(LeaseError::Lost(_))));
    }

    #[tokio::test]
    async fn a_lease_sealed_with_another_key_needs_force() {
        let (store, ring) = setup();
        let other = Arc::new(Keyring::new(&SecretKey::random(), [7; 16]));
        Lease::acquire(store.clone(), other, "aaaa", false).await.unwrap();
        assert!(matches!(
            Lease::acquire(store.clone(), ring.clone(), "bbbb", false).await,
            Err(LeaseError::Unreadable(_))
        ));
        Lease::acquire(store, ring, "bbbb", true).await.unwrap();
    }
}
