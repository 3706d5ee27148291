//! `s3vault restore`: copying files out of a named snapshot; `s3vault
//! recover`: copying out what a cache directory holds that never reached
//! the store.

use super::audit::{one_shot_log, this_process};
use super::{
    Exit, KeyArgs, S3Args, block_on, init_command_logging, location, open_any_volume, open_volume, read_unlock,
    runtime_err, snapshot_exit, usage, volume_exit,
};
use anyhow::anyhow;
use clap::Args;
use s3vault::audit;
use s3vault::journal::snapshots;
use s3vault::restore;
use s3vault::units::format_size;
use s3vault::volume;
use std::path::PathBuf;

#[derive(Args)]
pub struct RestoreArgs {
    /// Volume URL: s3://bucket[/prefix] or file:///absolute/path.
    url: String,
    /// Paths in the volume, e.g. /reports/2026 ("/" for everything).
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<String>,
    /// The snapshot to copy from.
    #[arg(long, value_name = "NAME")]
    snapshot: String,
    /// Directory to copy into (created if missing): each PATH becomes
    /// DIR/<its last name>.
    #[arg(long, value_name = "DIR")]
    to: PathBuf,
    #[command(flatten)]
    key: KeyArgs,
    #[command(flatten)]
    s3: S3Args,
}

pub fn run(args: RestoreArgs) -> Result<(), Exit> {
    let RestoreArgs {
        url,
        paths,
        snapshot: name,
        to,
        key,
        s3,
    } = args;
    snapshots::validate_name(&name).map_err(snapshot_exit)?;
    let location = location(&url)?;
    let unlock = read_unlock(&key, false)?;
    init_command_logging()?;
    let s3 = s3.options()?;
    let to = std::path::absolute(&to).map_err(usage)?;
    block_on(async {
        // A snapshot is in the bucket, wherever the live metadata is.
        let volume = open_any_volume(&location, &url, &unlock, &s3)
            .await
            .map_err(volume_exit)?;
        let (store, ring) = (volume.store.clone(), volume.ring.clone());
        let snapshot = snapshots::load(store.as_ref(), &ring, &name)
            .await
            .map_err(snapshot_exit)?;
        let log = one_shot_log(ring.clone(), store.clone()).await.map_err(runtime_err)?;
        let bar = progress_bar("restoring")?;
        let subject = this_process();
        let mut unaudited = None;
        let detail = format!("snapshot={name} to={}", to.display());
        let mut restorer = restore::Restorer::new(
            store.clone(),
            ring.clone(),
            volume.superblock.chunk_size,
            snapshot,
            audited_progress(&bar, &log, subject, detail, &mut unaudited),
        )
        .map_err(runtime_err)?;
        let summary = copy_out(&mut restorer, &paths, &to, &bar).await;
        let summary = summary.and_then(|()| restorer.finish());
        bar.finish_and_clear();
        let uploaded = log.upload().await;
        print_summary(&summary.map_err(runtime_err)?, subject.uid);
        uploaded.map_err(|e| runtime_err(anyhow!("restored, but the audit records are not stored: {e}")))?;
        Ok(())
    })?
}

/// The progress callback of a copy: advances `bar`, and records a
/// `restore` audit record for each file copied out.
fn audited_progress<'a>(
    bar: &'a indicatif::ProgressBar,
    log: &'a audit::AuditLog,
    subject: audit::Subject,
    detail: String,
    unaudited: &'a mut Option<audit::AuditError>,
) -> impl FnMut(restore::Restored<'_>) + 'a {
    move |done| {
        bar.inc(done.bytes);
        if done.bytes == 0 {
            let record = audit::Record::new(audit::Event::Restore, subject, None)
                .path(done.path)
                .ino(Some(done.inode.ino))
                .detail(detail.clone());
            if let Err(e) = log.record(record) {
                unaudited.get_or_insert(e);
            }
        }
    }
}

/// Copies each of `paths` (volume paths, "/a/b") into `to`, keeping their
/// directories, with a progress bar.
async fn copy_out(
    restorer: &mut restore::Restorer<'_>,
    paths: &[String],
    to: &std::path::Path,
    bar: &indicatif::ProgressBar,
) -> Result<(), restore::CopyOutError> {
    let mut total = 0;
    for path in paths {
        total += restorer.size_of(path)?;
    }
    bar.set_length(total);
    for path in paths {
        restorer.restore(path, to).await?;
    }
    Ok(())
}

fn progress_bar(verb: &str) -> Result<indicatif::ProgressBar, Exit> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{verb} {{bar:30}} {{binary_bytes}}/{{binary_total_bytes}} {{binary_bytes_per_sec}} ETA {{eta}}"
        ))
        .map_err(runtime_err)?,
    );
    Ok(bar)
}

fn print_summary(summary: &restore::Summary, uid: u32) {
    println!(
        "restored {} files ({}), {} directories, {} symlinks, {} hard links, {} other; skipped {} (sockets{}){}",
        summary.files,
        format_size(summary.bytes),
        summary.directories,
        summary.symlinks,
        summary.hard_links,
        summary.others,
        summary.skipped,
        if uid == 0 { "" } else { ", devices: not root" },
        if summary.xattrs_skipped > 0 {
            format!("; {} extended attributes not permitted here", summary.xattrs_skipped)
        } else {
            String::new()
        }
    );
}

#[derive(Args)]
pub struct RecoverArgs {
    /// Volume URL: s3://bucket[/prefix] or file:///absolute/path.
    url: String,
    /// The cache directory of a mount whose changes never reached the store
    /// (the mount was fenced, or its host lost the lease).
    cache_dir: PathBuf,
    /// Directory to copy into (created; must be empty): the files keep
    /// their paths under it.
    #[arg(long, value_name = "DIR")]
    to: PathBuf,
    /// The database to read: metadata.db, or one a mount set aside
    /// (metadata-unuploaded-<time>.db, metadata-superseded-<time>.db).
    #[arg(long, value_name = "FILE", default_value = "metadata.db")]
    database: String,
    /// Copy out the whole tree that database holds, not only the files
    /// whose changes never reached the store.
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    key: KeyArgs,
    #[command(flatten)]
    s3: S3Args,
}

pub fn recover(args: RecoverArgs) -> Result<(), Exit> {
    let location = location(&args.url)?;
    let unlock = read_unlock(&args.key, false)?;
    init_command_logging()?;
    let s3 = args.s3.options()?;
    let to = std::path::absolute(&args.to).map_err(usage)?;
    let url = args.url.clone();
    block_on(async {
        let volume = open_volume(&location, &url, &unlock, &s3, "recover")
            .await
            .map_err(volume_exit)?;
        // No mount may use the directory meanwhile.
        let _lock = volume::lock_cache_dir(&args.cache_dir).map_err(volume_exit)?;
        let meta = volume::open_cache_database(&volume, &args.cache_dir, &args.database).map_err(volume_exit)?;
        let (store, ring) = (volume.store.clone(), volume.ring.clone());
        let log = one_shot_log(ring.clone(), store.clone()).await.map_err(runtime_err)?;
        let bar = progress_bar("recovering")?;
        let subject = this_process();
        let mut unaudited = None;
        let detail = format!(
            "recovered from cache_dir={} database={} to={}",
            args.cache_dir.display(),
            args.database,
            to.display()
        );
        let mut restorer = restore::Restorer::of_state(
            store.clone(),
            ring.clone(),
            volume.superblock.chunk_size,
            meta,
            Some(args.cache_dir.join("blocks")),
            audited_progress(&bar, &log, subject, detail, &mut unaudited),
        );
        let paths = if args.all {
            vec!["/".to_string()]
        } else {
            restorer.unuploaded_paths().map_err(runtime_err)?
        };
        if std::fs::read_dir(&to).is_ok_and(|mut d| d.next().is_some()) {
            return Err(usage(anyhow!("{}: not empty; recover never overwrites", to.display())));
        }
        let mut copied = Ok(());
        for path in &paths {
            // Each file under its own directories: /a/b/c -> DIR/a/b/c.
            let into = match std::path::Path::new(path.trim_start_matches('/')).parent() {
                Some(parent) => to.join(parent),
                None => to.clone(),
            };
            if let Err(cause) = std::fs::create_dir_all(&into) {
                copied = Err(restore::CopyOutError::Local { path: into, cause });
                break;
            }
            copied = copy_out(&mut restorer, std::slice::from_ref(path), &into, &bar).await;
            if copied.is_err() {
                break;
            }
        }
        let summary = copied.and_then(|()| restorer.finish());
        bar.finish_and_clear();
        let uploaded = log.upload().await;
        if paths.is_empty() {
            println!(
                "nothing to recover: every change in {} reached the store",
                args.database
            );
        }
        print_summary(&summary.map_err(runtime_err)?, subject.uid);
        uploaded.map_err(|e| runtime_err(anyhow!("recovered, but the audit records are not stored: {e}")))?;
        if let Some(e) = unaudited {
            return Err(runtime_err(anyhow!(
                "recovered, but some audit records were not written: {e}"
            )));
        }
        Ok(())
    })?
}
