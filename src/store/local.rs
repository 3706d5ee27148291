//! The embedded local-directory store (`file:///path`): one file per object.
//!
//! Writes are atomic and durable: the object is written to a temporary file,
//! fsync'd, then renamed (or hard-linked, for put-if-absent) into place, and
//! the directory is fsync'd, so a crash leaves either the old object or the
//! new one, never a torn file.

use super::{ObjectInfo, ObjectStore, StoreError};
use async_trait::async_trait;
use bytes::Bytes;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

const TMP_DIR: &str = ".tmp";

#[derive(Debug)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalStore { root: root.into() }
    }

    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        if key.is_empty()
            || key
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == ".." || c == TMP_DIR)
        {
            return Err(other("resolve key", format!("invalid object key {key:?}")));
        }
        Ok(self.root.join(key))
    }

    /// Writes `data` to a synced temporary file and hands it to `place`.
    fn write_then(
        &self,
        key: &str,
        data: &[u8],
        place: impl FnOnce(&Path, &Path) -> io::Result<()>,
    ) -> Result<(), StoreError> {
        let target = self.path(key)?;
        let tmp_dir = self.root.join(TMP_DIR);
        let parent = target.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&tmp_dir).map_err(|e| io_err("put", e))?;
        fs::create_dir_all(&parent).map_err(|e| io_err("put", e))?;
        let tmp = tmp_dir.join(hex::encode(crate::crypto::random_bytes::<12>()));
        let result = (|| {
            let mut f = File::create_new(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            place(&tmp, &target)?;
            File::open(&parent)?.sync_all()
        })();
        let _ = fs::remove_file(&tmp);
        result.map_err(|e| io_err("put", e))
    }

    fn list_into(&self, dir: &Path, out: &mut Vec<ObjectInfo>) -> io::Result<()> {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                if dir == self.root && entry.file_name() == TMP_DIR {
                    continue;
                }
                self.list_into(&path, out)?;
            } else if let Ok(rel) = path.strip_prefix(&self.root)
                && let Some(key) = rel.to_str()
            {
                let meta = entry.metadata()?;
                out.push(ObjectInfo {
                    key: key.to_string(),
                    size: meta.len(),
                    modified: meta.modified()?,
                });
            }
        }
        Ok(())
    }
}

/// An object's file for reading; a missing one is `NotFound`.
fn open_object(path: &Path) -> Result<fs::File, StoreError> {
    fs::File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => StoreError::NotFound,
        _ => io_err("get", e),
    })
}

fn io_err(action: &'static str, e: io::Error) -> StoreError {
    match e.kind() {
        io::ErrorKind::PermissionDenied => StoreError::AccessDenied {
            action,
            detail: e.to_string(),
        },
        _ => other(action, e.to_string()),
    }
}

fn other(action: &'static str, detail: String) -> StoreError {
    StoreError::Other { action, detail }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| other("run blocking I/O", e.to_string()))?
}

impl LocalStore {
    /// An exclusive flock(2) on the store, held until the file is dropped.
    fn lock(&self) -> Result<File, StoreError> {
        let dir = self.root.join(TMP_DIR);
        fs::create_dir_all(&dir).map_err(|e| io_err("lock", e))?;
        let file = File::options()
            .create(true)
            .append(true)
            .open(dir.join("lock"))
            .map_err(|e| io_err("lock", e))?;
        // flock(2), released when the file is closed.
        file.lock().map_err(|e| io_err("lock", e))?;
        Ok(file)
    }

    fn handle(&self) -> LocalStore {
        LocalStore {
            root: self.root.clone(),
        }
    }
}

#[async_trait]
impl ObjectStore for LocalStore {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        let (this, key) = (self.handle(), key.to_string());
        blocking(move || this.write_then(&key, &data, |tmp, target| fs::rename(tmp, target))).await
    }

    async fn put_new(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        let (this, key) = (self.handle(), key.to_string());
        blocking(move || {
            let mut existed = false;
            let r = this.write_then(&key, &data, |tmp, target| match fs::hard_link(tmp, target) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    existed = true;
                    Ok(())
                }
                other => other,
            });
            if existed { Err(StoreError::AlreadyExists) } else { r }
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let path = self.path(key)?;
        blocking(move || match fs::read(&path) {
            Ok(data) => Ok(Bytes::from(data)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::NotFound),
            Err(e) => Err(io_err("get", e)),
        })
        .await
    }

    async fn get_at_most(&self, key: &str, limit: u64) -> Result<Bytes, StoreError> {
        use std::io::Read;
        let path = self.path(key)?;
        blocking(move || {
            let file = open_object(&path)?;
            let len = file.metadata().map_err(|e| io_err("get", e))?.len();
            if len > limit {
                return Err(StoreError::TooLarge { limit });
            }
            let mut data = Vec::with_capacity(len as usize);
            file.take(limit + 1)
                .read_to_end(&mut data)
                .map_err(|e| io_err("get", e))?;
            if data.len() as u64 > limit {
                return Err(StoreError::TooLarge { limit });
            }
            Ok(Bytes::from(data))
        })
        .await
    }

    async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Bytes, StoreError> {
        use std::os::unix::fs::FileExt;
        let path = self.path(key)?;
        blocking(move || {
            let file = open_object(&path)?;
            let mut data = vec![0u8; len as usize];
            match file.read_exact_at(&mut data, start) {
                Ok(()) => Ok(Bytes::from(data)),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(StoreError::TooShort { end: start + len }),
                Err(e) => Err(io_err("get", e)),
            }
        })
        .await
    }

    async fn get_tagged(&self, key: &str) -> Result<(Bytes, String), StoreError> {
        let data = self.get(key).await?;
        let tag = super::content_tag(&data);
        Ok((data, tag))
    }

    async fn put_if_tag(&self, key: &str, data: Bytes, tag: &str) -> Result<String, StoreError> {
        let (this, key, tag) = (self.handle(), key.to_string(), tag.to_string());
        blocking(move || {
            // Compare and replace under an exclusive lock on the store, so
            // two processes sharing the directory cannot both win.
            let _locked = this.lock()?;
            let current = match fs::read(this.path(&key)?) {
                Ok(current) => current,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StoreError::NotFound),
                Err(e) => return Err(io_err("put", e)),
            };
            if super::content_tag(&current) != tag {
                return Err(StoreError::AlreadyExists);
            }
            this.write_then(&key, &data, |tmp, target| fs::rename(tmp, target))?;
            Ok(super::content_tag(&data))
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        blocking(move || match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("delete", e)),
        })
        .await
    }

    async fn list_objects(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let (this, prefix) = (self.handle(), prefix.to_string());
        blocking(move || {
            let mut objects = Vec::new();
            let root = this.root.clone();
            this.list_into(&root, &mut objects).map_err(|e| io_err("list", e))?;
            objects.retain(|o| o.key.starts_with(&prefix));
            objects.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(objects)
        })
        .await
    }
}
