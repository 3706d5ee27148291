//! Object store: where sealed objects live (S3, a local directory, memory).
//!
//! Keys are relative to the volume root (`superblock`, `data/<id>`,
//! `meta/<n>.snap`); each implementation maps them under its bucket prefix or
//! directory. Every object is written whole; data objects (packs) are
//! written once, never overwritten, and read by ranges.

mod faulty;
mod local;
mod memory;
mod metered;
pub(crate) mod s3;

pub use faulty::{Fault, FaultyStore, Op, Rule};
pub use local::LocalStore;
pub use memory::MemoryStore;
pub use metered::MeteredStore;
pub use s3::{S3Options, S3Store, check_endpoint_url};

use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object not found")]
    NotFound,
    #[error("object already exists")]
    AlreadyExists,
    #[error("bucket {0} does not exist")]
    NoSuchBucket(String),
    #[error("access denied for {action}: {detail}")]
    AccessDenied { action: &'static str, detail: String },
    #[error("no usable AWS credentials (environment, profile or EC2 instance role): {0}")]
    Credentials(String),
    #[error("object store unreachable: {0}")]
    Unreachable(String),
    #[error("object store error during {action}: {detail}")]
    Other { action: &'static str, detail: String },
    #[error("object is larger than the {limit} bytes expected")]
    TooLarge { limit: u64 },
    #[error("object ends before byte {end}, which the metadata expects")]
    TooShort { end: u64 },
}

#[async_trait]
pub trait ObjectStore: Send + Sync + std::fmt::Debug {
    /// Stores `data` under `key`, replacing any object there. Returns once the
    /// object is durable in the store.
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError>;

    /// Stores `data` only if no object exists under `key`
    /// ([`StoreError::AlreadyExists`] otherwise).
    async fn put_new(&self, key: &str, data: Bytes) -> Result<(), StoreError>;

    /// `put_new`, and where the store supports it (S3 Object Lock), an
    /// object that cannot be overwritten or deleted before `until`.
    async fn put_new_retained(&self, key: &str, data: Bytes, until: std::time::SystemTime) -> Result<(), StoreError> {
        let _ = until;
        self.put_new(key, data).await
    }

    /// Whether objects can be retained (the bucket has Object Lock enabled).
    async fn supports_retention(&self) -> Result<bool, StoreError> {
        Ok(false)
    }

    /// The whole object, or [`StoreError::NotFound`].
    async fn get(&self, key: &str) -> Result<Bytes, StoreError>;

    /// The object if it is at most `limit` bytes, else
    /// [`StoreError::TooLarge`], reading no more than `limit` bytes of it:
    /// whoever can write the bucket does not choose how much we allocate.
    /// (This default, for stores that hold objects in memory anyway, reads
    /// the whole object first.)
    async fn get_at_most(&self, key: &str, limit: u64) -> Result<Bytes, StoreError> {
        let data = self.get(key).await?;
        if data.len() as u64 > limit {
            return Err(StoreError::TooLarge { limit });
        }
        Ok(data)
    }

    /// Bytes `start..start + len` of `key`: exactly that many, or
    /// [`StoreError::TooShort`] when the object ends before. (This default,
    /// for stores that hold objects in memory anyway, reads the whole
    /// object first.)
    async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Bytes, StoreError> {
        let data = self.get(key).await?;
        let end = start + len;
        if (data.len() as u64) < end {
            return Err(StoreError::TooShort { end });
        }
        Ok(data.slice(start as usize..end as usize))
    }

    /// The object and a tag that changes whenever it is replaced (S3: its
    /// ETag), for [`ObjectStore::put_if_tag`].
    async fn get_tagged(&self, key: &str) -> Result<(Bytes, String), StoreError>;

    /// Replaces `key` only if its tag is still `tag` (S3: `If-Match`);
    /// [`StoreError::AlreadyExists`] (the precondition failed) otherwise.
    /// Returns the new tag.
    async fn put_if_tag(&self, key: &str, data: Bytes, tag: &str) -> Result<String, StoreError>;

    /// Deletes `key`; deleting a missing object succeeds.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;

    /// Every object whose key starts with `prefix`, sorted by key.
    async fn list_objects(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError>;

    /// Every key that starts with `prefix`, sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        Ok(self.list_objects(prefix).await?.into_iter().map(|o| o.key).collect())
    }

    /// Every stored version of the objects under `prefix`, sorted by key,
    /// newest first within a key — including versions a delete has only
    /// hidden behind a delete marker (S3 versioning); the markers themselves
    /// are left out. A store without versions lists its objects.
    async fn list_versions(&self, prefix: &str) -> Result<Vec<ObjectVersion>, StoreError> {
        let objects = self.list_objects(prefix).await?;
        Ok(objects
            .into_iter()
            .map(|o| ObjectVersion { key: o.key, id: None })
            .collect())
    }

    /// `get_at_most` of one version of `key` (`None`: the current one).
    async fn get_version_at_most(&self, key: &str, version: Option<&str>, limit: u64) -> Result<Bytes, StoreError> {
        let _ = version;
        self.get_at_most(key, limit).await
    }
}

/// One stored version of an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectVersion {
    pub key: String,
    /// The store's version id; `None` for stores without versions.
    pub id: Option<String>,
}

/// One object of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    /// When it was stored (S3: LastModified).
    pub modified: std::time::SystemTime,
}

/// The tag of a stored object for stores without one of their own.
pub(crate) fn content_tag(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(data))
}

/// Where a volume lives, parsed from `s3://bucket[/prefix]` or `file:///path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    S3 { bucket: String, prefix: String },
    Local(std::path::PathBuf),
}

impl Location {
    pub fn parse(url: &str) -> Result<Location, String> {
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!("{url}: missing bucket name (expected s3://bucket[/prefix])"));
            }
            let prefix = prefix.trim_matches('/');
            let prefix = if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            };
            Ok(Location::S3 {
                bucket: bucket.to_string(),
                prefix,
            })
        } else if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(format!(
                    "{url}: a file:// URL needs an absolute path (file:///abs/path)"
                ));
            }
            Ok(Location::Local(path.into()))
        } else {
            Err(format!(
                "{url}: unsupported URL (expected s3://bucket[/prefix] or file:///abs/path)"
            ))
        }
    }

    pub async fn open(&self, s3: &S3Options) -> Result<Arc<dyn ObjectStore>, StoreError> {
        Ok(match self {
            Location::S3 { bucket, prefix } => Arc::new(S3Store::new(bucket, prefix, s3).await?),
            Location::Local(path) => Arc::new(LocalStore::new(path)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        assert_eq!(
            Location::parse("s3://b/some/prefix/").unwrap(),
            Location::S3 {
                bucket: "b".into(),
                prefix: "some/prefix/".into()
            }
        );
        assert_eq!(
            Location::parse("s3://b").unwrap(),
            Location::S3 {
                bucket: "b".into(),
                prefix: "".into()
            }
        );
        assert_eq!(Location::parse("file:///x/y").unwrap(), Location::Local("/x/y".into()));
        assert!(Location::parse("file://rel").is_err());
        assert!(Location::parse("s3://").is_err());
        assert!(Location::parse("http://x").is_err());
    }

    /// The contract every store must keep, run against each implementation.
    pub(crate) async fn store_contract(store: &dyn ObjectStore) {
        assert!(matches!(store.get("data/a").await, Err(StoreError::NotFound)));
        store.put("data/a", Bytes::from_static(b"one")).await.unwrap();
        store.put("data/b", Bytes::from_static(b"two")).await.unwrap();
        store.put("meta/1", Bytes::from_static(b"m")).await.unwrap();
        assert_eq!(store.get("data/a").await.unwrap(), Bytes::from_static(b"one"));
        assert_eq!(
            store.get_at_most("data/a", 3).await.unwrap(),
            Bytes::from_static(b"one")
        );
        assert!(matches!(
            store.get_at_most("data/a", 2).await,
            Err(StoreError::TooLarge { limit: 2 })
        ));
        assert!(matches!(
            store.get_at_most("data/z", 9).await,
            Err(StoreError::NotFound)
        ));
        assert_eq!(store.list("data/").await.unwrap(), vec!["data/a", "data/b"]);
        assert!(matches!(
            store.put_new("data/a", Bytes::new()).await,
            Err(StoreError::AlreadyExists)
        ));
        store.put_new("data/c", Bytes::new()).await.unwrap();
        assert_eq!(store.get("data/c").await.unwrap().len(), 0);
        let (_, tag) = store.get_tagged("data/b").await.unwrap();
        let new_tag = store
            .put_if_tag("data/b", Bytes::from_static(b"2"), &tag)
            .await
            .unwrap();
        assert_ne!(tag, new_tag);
        assert!(matches!(
            store.put_if_tag("data/b", Bytes::from_static(b"3"), &tag).await,
            Err(StoreError::AlreadyExists)
        ));
        assert_eq!(
            store.get_tagged("data/b").await.unwrap(),
            (Bytes::from_static(b"2"), new_tag)
        );
        store.put("data/b", Bytes::from_static(b"two")).await.unwrap();
        store.delete("data/a").await.unwrap();
        store.delete("data/a").await.unwrap();
        assert_eq!(store.list("").await.unwrap(), vec!["data/b", "data/c", "meta/1"]);
        let listed = store.list_objects("data/").await.unwrap();
        let sizes: Vec<(&str, u64)> = listed.iter().map(|o| (o.key.as_str(), o.size)).collect();
        assert_eq!(sizes, vec![("data/b", 3), ("data/c", 0)]);
        let age = std::time::SystemTime::now().duration_since(listed[0].modified);
        assert!(age.is_ok_and(|age| age < std::time::Duration::from_secs(60)));
    }

    #[tokio::test]
    async fn memory_store_keeps_the_contract() {
        store_contract(&MemoryStore::default()).await;
    }

    #[tokio::test]
    async fn local_store_keeps_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        store_contract(&LocalStore::new(dir.path())).await;
    }
}
