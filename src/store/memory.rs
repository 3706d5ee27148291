//! An object store in memory, for unit tests of everything above the store.

use super::{ObjectInfo, ObjectStore, StoreError};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct MemoryStore {
    objects: Mutex<BTreeMap<String, Bytes>>,
    /// Claims S3 Object Lock (retention itself is not enforced).
    retention: bool,
}

impl MemoryStore {
    /// A store that says it can retain objects, as a bucket with Object
    /// Lock does, so the code that relies on that runs.
    pub fn with_retention() -> MemoryStore {
        MemoryStore {
            retention: true,
            ..MemoryStore::default()
        }
    }

    fn objects(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Bytes>> {
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces an object behind the filesystem's back (tamper tests).
    pub fn overwrite(&self, key: &str, data: Bytes) {
        self.objects().insert(key.to_string(), data);
    }
}

#[async_trait]
impl ObjectStore for MemoryStore {
    async fn supports_retention(&self) -> Result<bool, StoreError> {
        Ok(self.retention)
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        self.objects().insert(key.to_string(), data);
        Ok(())
    }

    async fn put_new(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        let mut objects = self.objects();
        if objects.contains_key(key) {
            return Err(StoreError::AlreadyExists);
        }
        objects.insert(key.to_string(), data);
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.objects().get(key).cloned().ok_or(StoreError::NotFound)
    }

    async fn get_tagged(&self, key: &str) -> Result<(Bytes, String), StoreError> {
        let data = self.get(key).await?;
        let tag = super::content_tag(&data);
        Ok((data, tag))
    }

    async fn put_if_tag(&self, key: &str, data: Bytes, tag: &str) -> Result<String, StoreError> {
        let mut objects = self.objects();
        match objects.get(key) {
            Some(current) if super::content_tag(current) == tag => {
                let new_tag = super::content_tag(&data);
                objects.insert(key.to_string(), data);
                Ok(new_tag)
            }
            Some(_) => Err(StoreError::AlreadyExists),
            None => Err(StoreError::NotFound),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.objects().remove(key);
        Ok(())
    }

    /// Every object reads as stored just now.
    async fn list_objects(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let now = std::time::SystemTime::now();
        Ok(self
            .objects()
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(key, data)| ObjectInfo {
                key: key.clone(),
                size: data.len() as u64,
                modified: now,
            })
            .collect())
    }
}
