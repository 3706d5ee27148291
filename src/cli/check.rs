//! `s3vault fsck` and `s3vault gc`: checking a volume in the store and
//! deleting what nothing references.

use super::{
    Exit, VolumeArgs, block_on, init_command_logging, location, open_any_volume, read_unlock, runtime_err, volume_exit,
};
use anyhow::anyhow;
use clap::Args;
use s3vault::units::{format_size, parse_duration};
use s3vault::{fsck, volume};
use std::io::IsTerminal;
use std::time::Duration;

#[derive(Args)]
pub struct FsckArgs {
    #[command(flatten)]
    volume: VolumeArgs,
    /// Delete unreferenced objects older than --min-age (files with
    /// missing or damaged blocks are reported, never dropped).
    #[arg(long)]
    repair: bool,
    /// Check that blocks exist with the right size, without downloading them.
    #[arg(long)]
    quick: bool,
    /// Unreferenced objects younger than this may be uploads about to be
    /// referenced, and are left alone.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    min_age: Duration,
}

#[derive(Args)]
pub struct GcArgs {
    #[command(flatten)]
    volume: VolumeArgs,
    /// Unreferenced objects younger than this are left alone.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    min_age: Duration,
    /// Only say what would be deleted.
    #[arg(long)]
    dry_run: bool,
}

pub fn fsck(args: FsckArgs) -> Result<(), Exit> {
    let options = fsck::Options {
        verify: !args.quick,
        repair: args.repair,
        min_age: args.min_age,
    };
    check(&args.volume, &options, false)
}

pub fn gc(args: GcArgs) -> Result<(), Exit> {
    let options = fsck::Options {
        verify: false,
        repair: !args.dry_run,
        min_age: args.min_age,
    };
    check(&args.volume, &options, true)
}

/// `fsck`, or with `gc` its quick form that reports what it deleted.
fn check(volume: &VolumeArgs, options: &fsck::Options, gc: bool) -> Result<(), Exit> {
    let VolumeArgs { url, key, s3 } = volume;
    let location = location(url)?;
    let unlock = read_unlock(key, false)?;
    init_command_logging()?;
    let s3 = s3.options()?;
    let report = block_on(async {
        // fsck's codes follow e2fsck: what keeps it from checking at all
        // (an unreachable store, a volume it cannot read) is 8; a wrong
        // argument or key stays 2 as for every command.
        let cannot_check = |Exit(code, e)| Exit(if code == 1 && !gc { 8 } else { code }, e);
        let volume = open_any_volume(&location, url, &unlock, &s3)
            .await
            .map_err(volume_exit)
            .map_err(cannot_check)?;
        let live = match volume::read_shared(&volume)
            .map_err(volume_exit)
            .map_err(cannot_check)?
        {
            Some(records) => fsck::Live::Database(records),
            None => fsck::Live::Journal,
        };
        let bar = indicatif::ProgressBar::hidden();
        if options.verify && std::io::stderr().is_terminal() {
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar.set_style(
                indicatif::ProgressStyle::with_template("verifying {bar:30} {pos}/{len} blocks, {per_sec}, ETA {eta}")
                    .map_err(runtime_err)?,
            );
        }
        let progress = |done: u64, total: u64| {
            bar.set_length(total);
            bar.set_position(done);
        };
        let report = fsck::run(
            volume.store.clone(),
            volume.ring.clone(),
            volume.superblock.chunk_size,
            live,
            options,
            &progress,
        )
        .await;
        bar.finish_and_clear();
        report.map_err(|e| Exit(if gc { 1 } else { 8 }, e.into()))
    })??;
    let orphans = format!(
        "{} unreferenced objects ({})",
        report.orphans,
        format_size(report.orphan_bytes)
    );
    let recent = if report.recent > 0 {
        format!(
            "; {} younger than {} left alone",
            report.recent,
            humantime::format_duration(options.min_age)
        )
    } else {
        String::new()
    };
    if gc {
        let verb = if options.repair { "deleted" } else { "would delete" };
        println!("{verb} {orphans}{recent}");
        if !report.problems.is_empty() {
            eprintln!(
                "s3vault: {} problems seen on the way; run `s3vault fsck`",
                report.problems.len()
            );
        }
    } else {
        println!(
            "checked the live state and {} snapshots ({} metadata generations in the store)",
            report.snapshots, report.states
        );
        println!(
            "{} data objects in the store, {} referenced, {} downloaded and opened with the key",
            report.objects, report.referenced, report.verified
        );
        for problem in &report.problems {
            println!("PROBLEM {problem}");
        }
        let action = match (report.deleted, options.repair) {
            (0, false) if report.orphans > 0 => " (--repair deletes them)".to_string(),
            (n, true) if n > 0 => format!(", {n} deleted"),
            _ => String::new(),
        };
        println!("{orphans}{action}{recent}");
    }
    if let Some(why) = &report.deletion_refused {
        eprintln!("s3vault: nothing deleted: {why}, so what it references is unknown");
    }
    match report.exit_code() {
        0 => Ok(()),
        _ if gc && report.deletion_refused.is_none() => Ok(()),
        code => Err(Exit(
            code,
            anyhow!(if code == 1 {
                "errors corrected"
            } else {
                "the volume has errors"
            }),
        )),
    }
}
