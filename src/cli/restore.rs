//! `s3vault restore`: copying files out of a named snapshot.

use super::audit::{cli_audit_settings, this_process};
use super::{
    Exit, KeyArgs, S3Args, block_on, init_command_logging, location, open_volume, read_unlock, runtime_err,
    snapshot_exit, usage, volume_exit,
};
use anyhow::anyhow;
use clap::Args;
use s3vault::audit;
use s3vault::journal::snapshots;
use s3vault::restore;
use s3vault::units::format_size;
use std::path::PathBuf;

#[derive(Args)]
pub struct RestoreArgs {
    url: String,
    /// Paths in the volume, e.g. /reports/2026 ("/" for everything).
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<String>,
    /// The snapshot to copy from.
    #[arg(long, value_name = "NAME")]
    snapshot: String,
    /// Directory to copy into: each PATH becomes DIR/<its last name>.
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
        let volume = open_volume(&location, &url, &unlock, &s3).await.map_err(volume_exit)?;
        let (store, ring) = (volume.store.clone(), volume.ring.clone());
        let snapshot = snapshots::load(store.as_ref(), &ring, &name)
            .await
            .map_err(snapshot_exit)?;
        let log = audit::AuditLog::one_shot(ring.clone(), store.clone(), cli_audit_settings(store.as_ref()).await);
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "restoring {bar:30} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .map_err(runtime_err)?,
        );
        let subject = this_process();
        let mut unaudited = None;
        let detail = format!("snapshot={name} to={}", to.display());
        let mut restorer = restore::Restorer::new(
            store.clone(),
            ring.clone(),
            volume.superblock.block_size,
            snapshot,
            |done: restore::Restored<'_>| {
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
            },
        )
        .map_err(runtime_err)?;
        let mut total = 0;
        for path in &paths {
            total += restorer.size_of(path).map_err(runtime_err)?;
        }
        bar.set_length(total);
        let mut copied = Ok(());
        for path in &paths {
            copied = restorer.restore(path, &to).await;
            if copied.is_err() {
                break;
            }
        }
        let summary = copied.and_then(|()| restorer.finish());
        bar.finish_and_clear();
        let uploaded = log.upload().await;
        let summary = summary.map_err(runtime_err)?;
        println!(
            "restored {} files ({}), {} directories, {} symlinks, {} hard links, {} other; skipped {} (sockets{}){}",
            summary.files,
            format_size(summary.bytes),
            summary.directories,
            summary.symlinks,
            summary.hard_links,
            summary.others,
            summary.skipped,
            if subject.uid == 0 { "" } else { ", devices: not root" },
            if summary.xattrs_skipped > 0 {
                format!("; {} extended attributes not permitted here", summary.xattrs_skipped)
            } else {
                String::new()
            }
        );
        uploaded.map_err(|e| runtime_err(anyhow!("restored, but the audit records are not stored: {e}")))?;
        Ok(())
    })?
}
