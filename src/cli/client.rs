//! `s3vault umount` and `s3vault status`: clients of a running mount's
//! control socket.

use super::{Exit, runtime_err, usage};
use anyhow::{Context, anyhow};
use clap::Args;
use s3vault::control;
use s3vault::units::format_size;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct UmountArgs {
    /// Where the volume is mounted.
    mountpoint: PathBuf,
    /// Give up, leaving the volume mounted, when uploads have failed
    /// without progress for this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    timeout: u64,
}

#[derive(Args)]
pub struct StatusArgs {
    /// Where the volume is mounted.
    mountpoint: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn mount_point(path: &Path) -> Result<PathBuf, Exit> {
    std::fs::canonicalize(path)
        .with_context(|| format!("mount point {}", path.display()))
        .map_err(usage)
}

/// Prints the state of the mount.
pub fn status(args: &StatusArgs) -> Result<(), Exit> {
    let mountpoint = mount_point(&args.mountpoint)?;
    let answer = control::request(&mountpoint, "status").map_err(|e| usage(anyhow!(e)))?;
    if args.json {
        println!("{answer}");
        return Ok(());
    }
    let value: serde_json::Value = serde_json::from_str(&answer).map_err(runtime_err)?;
    let sections = status_sections(value);
    let width = sections
        .iter()
        .flat_map(|(_, rows)| rows.iter().map(|(k, _)| k.len()))
        .max()
        .unwrap_or(0);
    for (i, (title, rows)) in sections.iter().enumerate() {
        if i > 0 {
            println!();
        }
        println!("{title}");
        for (key, value) in rows {
            println!("  {key:<width$}  {value}");
        }
    }
    Ok(())
}

/// The status answer as titled sections of (label, value) rows: the
/// volume and this mount, the cache, its uploads, packs, the metadata, the
/// audit log.
fn status_sections(value: serde_json::Value) -> Vec<(&'static str, Vec<(String, String)>)> {
    use serde_json::{Map, Value};
    let Value::Object(mut top) = value else {
        return Vec::new();
    };
    let take = |map: &mut Map<String, Value>, keys: &[&str]| -> Map<String, Value> {
        keys.iter()
            .filter_map(|k| map.remove(*k).map(|v| (k.to_string(), v)))
            .collect()
    };
    let object = |v: Option<Value>| match v {
        Some(Value::Object(map)) => map,
        _ => Map::new(),
    };
    let mut volume = object(top.remove("volume"));
    volume.extend(take(&mut top, &["read_only", "fenced", "open_files", "open_handles"]));
    let mut cache = object(top.remove("cache"));
    let uploads: Map<String, Value> = cache
        .keys()
        .filter(|k| k.contains("upload") || ["errors", "retries", "last_error", "failing_since"].contains(&k.as_str()))
        .cloned()
        .collect::<Vec<_>>()
        .into_iter()
        .filter_map(|k| cache.remove(&k).map(|v| (k, v)))
        .collect();
    let packs = object(top.remove("packs"));
    let audit = object(top.remove("audit"));
    // What is left (unsynced_metadata, and anything newer) is metadata.
    let metadata = std::mem::take(&mut top);
    let mut sections = Vec::new();
    for (title, map) in [
        ("volume", volume),
        ("cache", cache),
        ("uploads", uploads),
        ("packs", packs),
        ("metadata", metadata),
        ("audit", audit),
    ] {
        let mut rows = Vec::new();
        flatten_status("", &map, &mut rows);
        if title == "volume" {
            const ORDER: [&str; 6] = ["url", "volume id", "mountpoint", "pid", "cache dir", "log"];
            rows.sort_by_key(|(label, _)| ORDER.iter().position(|o| o == label).unwrap_or(ORDER.len()));
        }
        if title == "packs" && rows.is_empty() {
            rows.push(("packs".into(), "- (counted at the first compaction pass)".into()));
        }
        sections.push((title, rows));
    }
    sections
}

/// `{"audit": {"lost": 0}}` as rows like ("audit lost", "0"), sizes and
/// rates in human units.
fn flatten_status(prefix: &str, map: &serde_json::Map<String, serde_json::Value>, rows: &mut Vec<(String, String)>) {
    let size = |n: &serde_json::Number| format_size(n.as_f64().unwrap_or(0.0) as u64);
    for (key, value) in map {
        let label = format!("{prefix}{}", key.replace('_', " "));
        match value {
            serde_json::Value::Object(inner) => flatten_status(&format!("{label} "), inner, rows),
            serde_json::Value::Null => rows.push((label, "-".into())),
            serde_json::Value::Number(n) if key.ends_with("_bytes") => {
                rows.push((label.trim_end_matches(" bytes").to_string(), size(n)))
            }
            serde_json::Value::Number(n) if key.ends_with("_bytes_per_sec") => {
                rows.push((label.replace(" bytes per sec", " rate"), format!("{}/s", size(n))))
            }
            serde_json::Value::Number(n) if key.ends_with("_ratio") => {
                rows.push((label, format!("{:.1}%", n.as_f64().unwrap_or(0.0) * 100.0)))
            }
            serde_json::Value::String(s) => rows.push((label, s.clone())),
            other => rows.push((label, other.to_string())),
        }
    }
}

/// Asks the mount daemon to flush and unmount, then waits for it to exit.
/// Pending uploads are waited for first, with a progress bar; the daemon
/// refuses to unmount when the flush fails, and so do we when the store
/// stops taking uploads: the data waiting in the cache stays served.
pub fn umount(args: &UmountArgs) -> Result<(), Exit> {
    let mountpoint = mount_point(&args.mountpoint)?;
    wait_for_uploads(&mountpoint, Duration::from_secs(args.timeout))?;
    let pid: i32 = control::request(&mountpoint, "pid")
        .map_err(|e| usage(anyhow!(e)))?
        .parse()
        .map_err(|_| runtime_err(anyhow!("the mount daemon gave an invalid pid")))?;
    control::request(&mountpoint, "unmount").map_err(|e| {
        if e == control::FENCED {
            return runtime_err(anyhow!(e));
        }
        runtime_err(anyhow!(
            "{e}; {} stays mounted so nothing is lost (retry once the cause is fixed)",
            mountpoint.display()
        ))
    })?;
    // The daemon exits once the kernel has ended the session.
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let deadline = Instant::now() + Duration::from_secs(120);
    while proc_dir.exists() {
        if Instant::now() > deadline {
            return Err(runtime_err(anyhow!(
                "unmounted, but the daemon (pid {pid}) has not exited after 120 s"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The cache figures `umount` follows.
#[derive(serde::Deserialize)]
struct UploadState {
    /// From the status's top level: nothing more will be uploaded.
    #[serde(default)]
    fenced: bool,
    dirty_bytes: u64,
    pending_uploads: u64,
    uploaded_bytes: u64,
    errors: u64,
    last_error: Option<String>,
}

fn upload_state(mountpoint: &Path) -> Result<UploadState, Exit> {
    #[derive(serde::Deserialize)]
    struct Status {
        fenced: bool,
        cache: UploadState,
    }
    let answer = control::request(mountpoint, "status").map_err(|e| usage(anyhow!(e)))?;
    let status: Status = serde_json::from_str(&answer).map_err(runtime_err)?;
    Ok(UploadState {
        fenced: status.fenced,
        ..status.cache
    })
}

/// Waits until the mount has nothing left to upload, drawing a progress bar
/// on a terminal; fails when uploads fail without progress for `stall_limit`.
fn wait_for_uploads(mountpoint: &Path, stall_limit: Duration) -> Result<(), Exit> {
    let first = upload_state(mountpoint)?;
    if first.pending_uploads == 0 || first.fenced {
        return Ok(());
    }
    let bar = indicatif::ProgressBar::new(first.dirty_bytes);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "uploading {bar:30} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .map_err(runtime_err)?,
    );
    if !std::io::stderr().is_terminal() {
        eprintln!("s3vault: waiting for {} bytes to upload", first.dirty_bytes);
    }
    let started = Instant::now();
    let (mut last_uploaded, mut last_progress) = (first.uploaded_bytes, Instant::now());
    loop {
        let state = upload_state(mountpoint)?;
        let done = state.uploaded_bytes - first.uploaded_bytes;
        bar.set_length(done + state.dirty_bytes);
        bar.set_position(done);
        if state.pending_uploads == 0 || state.fenced {
            bar.finish_and_clear();
            eprintln!(
                "s3vault: uploaded {} bytes in {:.1} s",
                done,
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if state.uploaded_bytes != last_uploaded {
            (last_uploaded, last_progress) = (state.uploaded_bytes, Instant::now());
        } else if state.errors > first.errors && last_progress.elapsed() >= stall_limit {
            bar.abandon();
            return Err(runtime_err(anyhow!(
                "uploads have failed for {} s ({}); {} bytes in {} blocks wait in the cache; \
                 {} stays mounted so nothing is lost (retry once the store is reachable)",
                stall_limit.as_secs(),
                state.last_error.as_deref().unwrap_or("no error detail"),
                state.dirty_bytes,
                state.pending_uploads,
                mountpoint.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
