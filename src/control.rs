//! Control socket: how `s3vault umount` asks a running mount to flush.
//!
//! One Unix socket per mount point, in a root-only (or per-user) runtime
//! directory; requests are one line (`sync`, `pid`, `status`, `unmount`),
//! answers one line (`ok [value]` or `error <message>`; `status` answers
//! with JSON, times in RFC 3339).

use crate::fs::Core;
use sha2::{Digest, Sha256};
use std::io::{BufRead, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

fn runtime_dir() -> PathBuf {
    let uid = crate::os::effective_uid();
    if uid == 0 {
        PathBuf::from("/run/s3vault")
    } else if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
        Path::new(&dir).join("s3vault")
    } else {
        PathBuf::from(format!("/tmp/s3vault-{uid}"))
    }
}

/// The socket of the mount at `mountpoint` (named by a hash: mount paths
/// can be long, and need not appear in /run).
pub fn socket_path(mountpoint: &Path) -> PathBuf {
    let digest = Sha256::digest(mountpoint.as_os_str().as_encoded_bytes());
    runtime_dir().join(format!("{}.sock", hex::encode(&digest[..16])))
}

/// The answer to `unmount` from a fenced mount, after unmounting it.
pub const FENCED: &str = "fenced: another writer took this volume over; unmounted, and the changes this \
                          mount could not upload stay in its cache directory";

/// Ends the mount: unmounts it, so the FUSE session loop returns.
pub type Unmount = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Held (shared) by every request being answered. The daemon takes it
/// exclusively before exiting, so an `unmount` request gets its answer
/// even though answering it ends the session.
pub type Gate = Arc<tokio::sync::RwLock<()>>;

/// What a mount says about itself in `status`, beside the core's counters.
#[derive(Clone, Debug, serde::Serialize)]
pub struct About {
    pub url: String,
    pub volume_id: String,
    pub mountpoint: PathBuf,
    pub pid: u32,
    pub cache_dir: PathBuf,
    /// The daemon's log file, or "stderr" in the foreground.
    pub log: String,
    pub mounted_ns: i64,
}

/// The `status` answer: the mount's own facts under `volume`, the core's
/// counters beside them, every time in RFC 3339 (`last_upload_ns` is
/// answered as `last_upload`).
pub fn status_json(core: &Core, about: &About) -> serde_json::Result<String> {
    let mut value = serde_json::to_value(core.status())?;
    if let serde_json::Value::Object(map) = &mut value {
        map.insert("volume".into(), serde_json::to_value(about)?);
    }
    Ok(with_rfc3339(value).to_string())
}

fn with_rfc3339(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    let Value::Object(map) = value else {
        return value;
    };
    let map = map
        .into_iter()
        .map(|(key, value)| match (key.strip_suffix("_ns"), value) {
            (Some(name), Value::Number(n)) => (
                name.to_string(),
                Value::String(crate::units::rfc3339(n.as_i64().unwrap_or(0))),
            ),
            (Some(name), Value::Null) => (name.to_string(), Value::Null),
            (_, value) => (key, with_rfc3339(value)),
        })
        .collect();
    Value::Object(map)
}

/// Serves requests until the runtime shuts down.
pub async fn serve(
    path: PathBuf,
    core: Arc<Core>,
    about: Arc<About>,
    unmount: Unmount,
    gate: Gate,
) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)?;
    loop {
        let (stream, _) = listener.accept().await?;
        let (core, about, unmount) = (core.clone(), about.clone(), unmount.clone());
        let Ok(_answering) = gate.clone().try_read_owned() else {
            return Ok(()); // the daemon is exiting
        };
        // Background work: `sync` or `unmount` must not wait out an outage.
        tokio::spawn(crate::meta::in_background(async move {
            let _answering = _answering;
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            if tokio::io::BufReader::new(read).read_line(&mut line).await.is_err() {
                return;
            }
            let answer = match line.trim() {
                "sync" => match core.sync().await {
                    Ok(()) => "ok".to_string(),
                    Err(e) => format!("error {e}"),
                },
                "pid" => format!("ok {}", std::process::id()),
                "status" => match status_json(&core, &about) {
                    Ok(json) => format!("ok {json}"),
                    Err(e) => format!("error {e}"),
                },
                // Flush first and unmount only if that worked: buffered data
                // must not be dropped because the store is unreachable.
                // Fenced: nothing can be uploaded any more; unmount, and say
                // where the rest is.
                "unmount" if core.is_fenced() => match tokio::task::spawn_blocking(move || unmount()).await {
                    Ok(Ok(())) => format!("error {FENCED}"),
                    Ok(Err(e)) => format!("error cannot unmount: {e}"),
                    Err(e) => format!("error {e}"),
                },
                "unmount" => match core.final_sync().await {
                    Ok(()) => match tokio::task::spawn_blocking(move || unmount()).await {
                        Ok(Ok(())) => "ok".to_string(),
                        Ok(Err(e)) => format!("error cannot unmount: {e}"),
                        Err(e) => format!("error {e}"),
                    },
                    Err(e) => format!("error cannot flush to the object store: {}", unflushed(&core, e)),
                },
                other => format!("error unknown request {other:?}"),
            };
            let _ = write.write_all(format!("{answer}\n").as_bytes()).await;
        }));
    }
}

/// Why a flush failed, with what it leaves in the cache.
fn unflushed(core: &Core, e: crate::fs::FsError) -> String {
    let cache = core.status().cache;
    let reason = match (e, cache.last_error) {
        (crate::fs::FsError::ETIMEDOUT, Some(last)) => format!("uploads are failing ({last})"),
        (crate::fs::FsError::ETIMEDOUT, None) => "uploads did not finish in time".to_string(),
        (e, _) => e.to_string(),
    };
    format!(
        "{reason}; {} bytes in {} blocks wait in the cache",
        cache.dirty_bytes, cache.pending_uploads
    )
}

/// Sends one request to the mount at `mountpoint`; returns the value of an
/// `ok` answer or the message of an `error` one.
pub fn request(mountpoint: &Path, command: &str) -> Result<String, String> {
    let path = socket_path(mountpoint);
    let mut stream = std::os::unix::net::UnixStream::connect(&path)
        .map_err(|e| format!("no s3vault mount is serving {} ({e})", mountpoint.display()))?;
    stream
        .write_all(format!("{command}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    std::io::BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let line = line.trim_end();
    if let Some(value) = line.strip_prefix("ok") {
        Ok(value.trim().to_string())
    } else if let Some(message) = line.strip_prefix("error ") {
        Err(message.to_string())
    } else {
        Err("the mount daemon closed the connection without answering".to_string())
    }
}
