//! `s3vault snapshot create|list|delete`: named point-in-time snapshots.

use super::audit::record_cli_event;
use super::{
    Exit, VolumeArgs, block_on, init_command_logging, location, open_any_volume, read_unlock, runtime_err,
    snapshot_exit, volume_exit,
};
use anyhow::anyhow;
use clap::Subcommand;
use s3vault::audit;
use s3vault::journal::snapshots;
use s3vault::units::{format_size, rfc3339};
use s3vault::volume;

#[derive(Subcommand)]
pub enum SnapshotCommand {
    /// Pin the volume's live metadata state in the store, and every block
    /// it references, under NAME. A mounted writer uploads its changes every
    /// --metadata-interval (1 s) and at every fsync.
    Create {
        #[command(flatten)]
        volume: VolumeArgs,
        /// The new snapshot's name: any UTF-8 without control characters.
        name: String,
    },
    /// List the snapshots, oldest first.
    List {
        #[command(flatten)]
        volume: VolumeArgs,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete a snapshot and the blocks only it kept.
    Delete {
        #[command(flatten)]
        volume: VolumeArgs,
        /// The snapshot to delete, as `s3vault snapshot list` names it.
        name: String,
    },
}

pub fn run(action: SnapshotCommand) -> Result<(), Exit> {
    let (SnapshotCommand::Create { volume, .. }
    | SnapshotCommand::List { volume, .. }
    | SnapshotCommand::Delete { volume, .. }) = &action;
    let VolumeArgs { url, key, s3 } = volume;
    if let SnapshotCommand::Create { name, .. } | SnapshotCommand::Delete { name, .. } = &action {
        snapshots::validate_name(name).map_err(snapshot_exit)?;
    }
    let location = location(url)?;
    let unlock = read_unlock(key, false)?;
    init_command_logging()?;
    let s3 = s3.options()?;
    block_on(async {
        let volume = open_any_volume(&location, url, &unlock, &s3)
            .await
            .map_err(volume_exit)?;
        let mut shared = volume::open_shared_for_command(&volume).map_err(volume_exit)?;
        let (store, ring) = (volume.store.clone(), volume.ring.clone());
        let (event, detail) = match &action {
            SnapshotCommand::List { json, .. } => {
                let all = snapshots::list(store.as_ref(), &ring).await.map_err(snapshot_exit)?;
                print_snapshots(all.iter().map(|s| &s.info), *json);
                return Ok(());
            }
            SnapshotCommand::Create { name, .. } => {
                let info = match &mut shared {
                    Some(db) => snapshots::create_shared(store.as_ref(), &ring, db, name).await,
                    None => snapshots::create(store.as_ref(), &ring, name).await,
                }
                .map_err(snapshot_exit)?;
                let of = match shared {
                    Some(_) => "the metadata database".to_string(),
                    None => format!("metadata generation {}", info.generation),
                };
                println!(
                    "created snapshot {name}: {} inodes, {} of files ({of})",
                    info.inodes,
                    format_size(info.bytes),
                );
                (
                    audit::Event::SnapshotCreate,
                    format!("snapshot={name} generation={}", info.generation),
                )
            }
            SnapshotCommand::Delete { name, .. } => {
                let freed = match &mut shared {
                    Some(db) => snapshots::delete_shared(store.as_ref(), &ring, db, name).await,
                    None => snapshots::delete(store.as_ref(), &ring, name).await,
                }
                .map_err(snapshot_exit)?;
                println!("deleted snapshot {name} and {freed} blocks only it kept");
                (audit::Event::SnapshotDelete, format!("snapshot={name}"))
            }
        };
        record_cli_event(ring, store, event, detail)
            .await
            .map_err(|e| runtime_err(anyhow!("done, but its audit record is not stored: {e}")))
    })?
}

fn print_snapshots<'a>(all: impl Iterator<Item = &'a snapshots::SnapshotInfo>, json: bool) {
    if json {
        for info in all {
            println!("{}", serde_json::to_string(info).unwrap_or_default());
        }
        return;
    }
    println!("{:<24}  {:<24}  {:>10}  {:>10}", "NAME", "CREATED", "INODES", "SIZE");
    for info in all {
        println!(
            "{:<24}  {:<24}  {:>10}  {:>10}",
            info.name,
            rfc3339(info.created_ns),
            info.inodes,
            format_size(info.bytes)
        );
    }
}
