//! A fault-injecting wrapper for tests: makes writes or reads of an inner
//! store fail on demand, as an unreachable endpoint would.

use super::{ObjectInfo, ObjectStore, StoreError};
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    fail_writes: AtomicBool,
    fail_reads: AtomicBool,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> FaultyStore {
        FaultyStore {
            inner,
            fail_writes: AtomicBool::new(false),
            fail_reads: AtomicBool::new(false),
        }
    }

    /// While set, put, put_new and delete fail as if the store were unreachable.
    pub fn fail_writes(&self, fail: bool) {
        self.fail_writes.store(fail, Ordering::SeqCst);
    }

    /// While set, get and list fail as if the store were unreachable.
    pub fn fail_reads(&self, fail: bool) {
        self.fail_reads.store(fail, Ordering::SeqCst);
    }

    fn check(&self, flag: &AtomicBool) -> Result<(), StoreError> {
        if flag.load(Ordering::SeqCst) {
            Err(StoreError::Unreachable("injected fault".into()))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        self.check(&self.fail_writes)?;
        self.inner.put(key, data).await
    }

    async fn put_new(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        self.check(&self.fail_writes)?;
        self.inner.put_new(key, data).await
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.check(&self.fail_reads)?;
        self.inner.get(key).await
    }

    async fn get_tagged(&self, key: &str) -> Result<(Bytes, String), StoreError> {
        self.check(&self.fail_reads)?;
        self.inner.get_tagged(key).await
    }

    async fn put_if_tag(&self, key: &str, data: Bytes, tag: &str) -> Result<String, StoreError> {
        self.check(&self.fail_writes)?;
        self.inner.put_if_tag(key, data, tag).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.check(&self.fail_writes)?;
        self.inner.delete(key).await
    }

    async fn list_objects(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        self.check(&self.fail_reads)?;
        self.inner.list_objects(prefix).await
    }
}
