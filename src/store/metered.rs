//! An object store that times every call for `--metrics-addr`: a
//! histogram per operation and outcome. Every method of the trait is
//! forwarded, the defaulted ones included, so the wrapped store behaves
//! exactly as it does bare (Object Lock retention, versions, ranged reads).

use super::{ObjectInfo, ObjectStore, ObjectVersion, StoreError};
use async_trait::async_trait;
use bytes::Bytes;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug)]
pub struct MeteredStore {
    inner: Arc<dyn ObjectStore>,
}

impl MeteredStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> MeteredStore {
        MeteredStore { inner }
    }
}

async fn timed<T>(op: &'static str, call: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    let start = Instant::now();
    let result = call.await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(StoreError::NotFound) => "not_found",
        Err(StoreError::AlreadyExists) => "exists",
        Err(_) => "error",
    };
    crate::metrics::store_call(op, outcome, start.elapsed().as_secs_f64());
    result
}

#[async_trait]
impl ObjectStore for MeteredStore {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        timed("put", self.inner.put(key, data)).await
    }

    async fn put_new(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        timed("put_new", self.inner.put_new(key, data)).await
    }

    async fn put_new_retained(&self, key: &str, data: Bytes, until: std::time::SystemTime) -> Result<(), StoreError> {
        timed("put_new", self.inner.put_new_retained(key, data, until)).await
    }

    async fn supports_retention(&self) -> Result<bool, StoreError> {
        timed("bucket_config", self.inner.supports_retention()).await
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        timed("get", self.inner.get(key)).await
    }

    async fn get_at_most(&self, key: &str, limit: u64) -> Result<Bytes, StoreError> {
        timed("get", self.inner.get_at_most(key, limit)).await
    }

    async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Bytes, StoreError> {
        timed("get_range", self.inner.get_range(key, start, len)).await
    }

    async fn get_tagged(&self, key: &str) -> Result<(Bytes, String), StoreError> {
        timed("get", self.inner.get_tagged(key)).await
    }

    async fn put_if_tag(&self, key: &str, data: Bytes, tag: &str) -> Result<String, StoreError> {
        timed("put_if_tag", self.inner.put_if_tag(key, data, tag)).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        timed("delete", self.inner.delete(key)).await
    }

    async fn list_objects(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        timed("list", self.inner.list_objects(prefix)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        timed("list", self.inner.list(prefix)).await
    }

    async fn list_versions(&self, prefix: &str) -> Result<Vec<ObjectVersion>, StoreError> {
        timed("list_versions", self.inner.list_versions(prefix)).await
    }

    async fn get_version_at_most(&self, key: &str, version: Option<&str>, limit: u64) -> Result<Bytes, StoreError> {
        timed("get", self.inner.get_version_at_most(key, version, limit)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[tokio::test]
    async fn the_metered_store_keeps_the_contract() {
        let store = MeteredStore::new(Arc::new(MemoryStore::default()));
        crate::store::tests::store_contract(&store).await;
    }
}
