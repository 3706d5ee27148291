//! `s3vault audit log|verify|report`, and the audit chain of a one-shot
//! command's own changes (key slots, snapshots, restores).

use super::{Exit, VolumeArgs, block_on, init_command_logging, location, read_unlock, runtime_err, usage, volume_exit};
use anyhow::anyhow;
use clap::{Args, Subcommand};
use s3vault::audit::{self, AuditSettings, review};
use s3vault::keyring::Keyring;
use s3vault::store::ObjectStore;
use s3vault::units::{parse_time, parse_time_until};
use s3vault::volume;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Show audit records, oldest first.
    Log {
        #[command(flatten)]
        volume: VolumeArgs,
        #[command(flatten)]
        filter: FilterArgs,
        /// Only these events (repeat or comma-separate: open,unlink,...).
        #[arg(long, value_delimiter = ',')]
        event: Vec<String>,
        /// Only refused attempts (EACCES, EPERM).
        #[arg(long)]
        denied: bool,
        /// table, json (one object per line) or csv.
        #[arg(long, default_value = "table")]
        format: String,
        /// Time zone of the times shown (tz database name or "local").
        #[arg(long, default_value = "UTC")]
        tz: String,
    },
    /// Check every chain of every segment from every host; exit 1 on any problem.
    Verify {
        #[command(flatten)]
        volume: VolumeArgs,
    },
    /// Per-user summary for a compliance review: files opened, written,
    /// deleted, denied attempts, first and last activity.
    Report {
        #[command(flatten)]
        volume: VolumeArgs,
        #[command(flatten)]
        filter: FilterArgs,
        /// table, json (one object per line) or csv.
        #[arg(long, default_value = "table")]
        format: String,
        /// Time zone of the times shown (tz database name or "local").
        #[arg(long, default_value = "UTC")]
        tz: String,
    },
    /// Access review for a compliance officer: whether the trail is intact,
    /// activity over time, what each user opened, who opened each folder,
    /// and unusual access with the records behind it. Written as one
    /// self-contained HTML page (--html) and/or JSON (--json); a summary
    /// is printed.
    Review {
        #[command(flatten)]
        volume: VolumeArgs,
        #[command(flatten)]
        filter: FilterArgs,
        #[command(flatten)]
        review: ReviewArgs,
        /// Write the report as a self-contained HTML page (opens offline).
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
        /// Write the report as JSON ("-": standard output).
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// Unusual access in the period (e.g. --since 15m) as JSON lines, one
    /// finding per line; exit 1 when there is any, for cron or a SIEM.
    Alerts {
        #[command(flatten)]
        volume: VolumeArgs,
        #[command(flatten)]
        filter: FilterArgs,
        #[command(flatten)]
        review: ReviewArgs,
    },
}

#[derive(Args)]
pub struct ReviewArgs {
    /// Time zone of the times shown: a tz database name (Europe/Paris,
    /// America/New_York, UTC) or "local" (this host's).
    #[arg(long, default_value = "local")]
    tz: String,
    /// What counts as unusual (TOML: working_hours, working_days,
    /// bulk_min_files, ...; see README "Reviewing access").
    #[arg(long, value_name = "FILE")]
    thresholds: Option<PathBuf>,
}

impl ReviewArgs {
    fn scope(&self, filter: audit::Filter) -> Result<review::Scope, Exit> {
        let tz = review::time_zone(&self.tz).map_err(|e| usage(anyhow!("--tz: {e}")))?;
        let thresholds = match &self.thresholds {
            Some(path) => review::Thresholds::load(path).map_err(|e| usage(anyhow!(e)))?,
            None => review::Thresholds::default(),
        };
        Ok(review::Scope {
            filter,
            tz,
            thresholds,
            now_ns: s3vault::os::now_ns(),
            live: audit::LiveMetadata::Journal(None),
        })
    }
}

#[derive(Args)]
pub struct FilterArgs {
    /// Only this user name.
    #[arg(long)]
    user: Option<String>,
    /// Only this uid.
    #[arg(long)]
    uid: Option<u32>,
    /// Only paths (or rename targets) matching this glob, e.g. '/patients/smith*'.
    #[arg(long)]
    path: Option<String>,
    /// From this time: RFC 3339 (2026-11-01T08:00:00Z, 2026-11-01) or an age (24h, 30d).
    #[arg(long)]
    since: Option<String>,
    /// Up to this time, same forms as --since; a date alone includes that day.
    #[arg(long)]
    until: Option<String>,
    /// Only records written on this host.
    #[arg(long)]
    host: Option<String>,
}

impl FilterArgs {
    fn filter(&self) -> Result<audit::Filter, Exit> {
        let time = |t: &Option<String>| t.as_deref().map(parse_time).transpose().map_err(|e| usage(anyhow!(e)));
        let path = self
            .path
            .as_deref()
            .map(glob::Pattern::new)
            .transpose()
            .map_err(|e| usage(anyhow!("--path: {e}")))?;
        Ok(audit::Filter {
            user: self.user.clone(),
            uid: self.uid,
            path,
            since_ns: time(&self.since)?,
            until_ns: self
                .until
                .as_deref()
                .map(parse_time_until)
                .transpose()
                .map_err(|e| usage(anyhow!(e)))?,
            events: Vec::new(),
            denied: false,
            host: self.host.clone(),
        })
    }
}

pub fn run(action: AuditCommand) -> Result<(), Exit> {
    if matches!(action, AuditCommand::Review { .. } | AuditCommand::Alerts { .. }) {
        return run_review(action);
    }
    let (AuditCommand::Log { volume, .. } | AuditCommand::Verify { volume } | AuditCommand::Report { volume, .. }) =
        &action
    else {
        unreachable!("review and alerts returned above");
    };
    let VolumeArgs { url, key, s3 } = volume;
    let location = location(url)?;
    let unlock = read_unlock(key, false)?;
    let tz = match &action {
        AuditCommand::Log { tz, .. } | AuditCommand::Report { tz, .. } => {
            review::time_zone(tz).map_err(|e| usage(anyhow!("--tz: {e}")))?
        }
        _ => jiff::tz::TimeZone::UTC,
    };
    let (filter, format) = match &action {
        AuditCommand::Log {
            filter,
            event,
            denied,
            format,
            ..
        } => {
            let mut f = filter.filter()?;
            f.events = event
                .iter()
                .map(|e| e.parse())
                .collect::<Result<_, String>>()
                .map_err(|e| usage(anyhow!(e)))?;
            f.denied = *denied;
            (f, format.parse().map_err(|e: String| usage(anyhow!(e)))?)
        }
        AuditCommand::Report { filter, format, .. } => {
            (filter.filter()?, format.parse().map_err(|e: String| usage(anyhow!(e)))?)
        }
        AuditCommand::Verify { .. } => (audit::Filter::default(), audit::output::Format::Table),
        AuditCommand::Review { .. } | AuditCommand::Alerts { .. } => unreachable!("run_review"),
    };
    init_command_logging()?;
    let s3 = s3.options()?;
    let (ring, segments, live) = block_on(async {
        let store = location.open(&s3).await.map_err(volume::VolumeError::from)?;
        let volume = volume::unlock(store.clone(), url, &unlock, &s3).await?;
        let live = live_metadata(&volume).await?;
        let segments = audit::read_segments(store, volume.ring.clone()).await;
        Ok::<_, volume::VolumeError>((volume.ring, segments, live))
    })?
    .map_err(volume_exit)?;
    let segments = segments.map_err(runtime_err)?;
    if let Some(user) = &filter.user {
        let by_name = audit::Filter {
            user: Some(user.clone()),
            ..audit::Filter::default()
        };
        if segments.records(&by_name).is_empty() {
            eprintln!(
                "s3vault: warning: no record in the audit trail names user {user:?} (names are those of the host \
                 that wrote each record; --uid selects by number)"
            );
        }
    }
    match action {
        AuditCommand::Log { .. } => print!("{}", audit::output::records(&segments.records(&filter), format, &tz)),
        AuditCommand::Report { .. } => {
            let summary = audit::report(&segments.records(&filter));
            print!("{}", audit::output::report(&summary, format, &tz));
        }
        AuditCommand::Review { .. } | AuditCommand::Alerts { .. } => unreachable!("run_review"),
        AuditCommand::Verify { .. } => {
            let mut result = audit::verify(&ring, &segments);
            let records = segments.records(&audit::Filter::default());
            result.problems.extend(audit::check_chains_seen(&segments, &records));
            result.problems.extend(audit::check_freshness(&records, live));
            for open in audit::open_chains(&segments, &records) {
                println!("open: {open}");
            }
            for problem in &result.problems {
                println!("{problem}");
            }
            if !result.problems.is_empty() {
                return Err(runtime_err(anyhow!(
                    "audit trail damaged: {} problem(s) in {} segment(s) of {} chain(s)",
                    result.problems.len(),
                    result.segments,
                    result.chains
                )));
            }
            println!(
                "OK: {} records in {} segments of {} chains verified",
                result.records, result.segments, result.chains
            );
        }
    }
    Ok(())
}

/// `audit review` and `audit alerts`.
fn run_review(action: AuditCommand) -> Result<(), Exit> {
    let (volume, filter, args, html, json, alerts) = match action {
        AuditCommand::Review {
            volume,
            filter,
            review,
            html,
            json,
        } => (volume, filter, review, html, json, false),
        AuditCommand::Alerts { volume, filter, review } => (volume, filter, review, None, None, true),
        _ => unreachable!("only review and alerts"),
    };
    if alerts && filter.since.is_none() {
        return Err(usage(anyhow!(
            "audit alerts needs --since: the period to look at, e.g. --since 15m for a job every 15 minutes"
        )));
    }
    let mut scope = args.scope(filter.filter()?)?;
    let VolumeArgs { url, key, s3 } = &volume;
    let location = location(url)?;
    let unlock = read_unlock(key, false)?;
    init_command_logging()?;
    let s3 = s3.options()?;
    let report = block_on(async {
        let store = location.open(&s3).await.map_err(volume::VolumeError::from)?;
        let volume = volume::unlock(store.clone(), url, &unlock, &s3).await?;
        scope.live = live_metadata(&volume).await?;
        Ok::<_, volume::VolumeError>(review::review(store, volume.ring, scope).await)
    })?
    .map_err(volume_exit)?
    .map_err(runtime_err)?;
    if alerts {
        let unusual: Vec<&review::Finding> = report
            .findings
            .iter()
            .filter(|f| f.severity != review::Severity::Info)
            .collect();
        for finding in &unusual {
            println!("{}", serde_json::to_string(finding).expect("a finding serializes"));
        }
        if !unusual.is_empty() {
            return Err(runtime_err(anyhow!(
                "{} unusual access finding(s) since {}",
                unusual.len(),
                report.since.as_deref().unwrap_or("the beginning")
            )));
        }
        return Ok(());
    }
    let write = |path: &PathBuf, text: String, what: &str| -> Result<(), Exit> {
        if path.as_os_str() == "-" {
            print!("{text}");
            return Ok(());
        }
        std::fs::write(path, text)
            .map_err(|e| runtime_err(anyhow!("cannot write the {what} to {}: {e}", path.display())))
    };
    if let Some(path) = &json {
        let text = serde_json::to_string_pretty(&report).expect("a review serializes") + "\n";
        write(path, text, "JSON report")?;
    }
    if let Some(path) = &html {
        write(path, review::render_html(&report), "HTML report")?;
    }
    if json.as_deref().is_some_and(|p| p.as_os_str() == "-") {
        return Ok(());
    }
    println!("{}", report.integrity.verdict);
    println!(
        "{} records in the period ({} read); {} user(s); {} finding(s)",
        report.records_in_period,
        report.records_read,
        report.users.len(),
        report.findings.len()
    );
    for f in &report.findings {
        println!(
            "  [{}] {}: {}",
            serde_json::to_value(f.severity)
                .expect("a severity serializes")
                .as_str()
                .unwrap_or(""),
            f.kind,
            f.summary
        );
    }
    for (path, what) in [(&html, "HTML report"), (&json, "JSON report")] {
        if let Some(path) = path {
            println!("{what}: {}", path.display());
        }
    }
    println!("digest {}", report.digest);
    Ok(())
}

/// Audit settings of a one-shot command's own chain.
pub async fn cli_audit_settings(store: &dyn ObjectStore) -> AuditSettings {
    let requested = Duration::from_secs(audit::DEFAULT_RETENTION_DAYS * 86_400);
    AuditSettings {
        retain_for: audit::retention_for(store, Some(requested)).await,
        ..AuditSettings::default()
    }
}

/// The user running this command, as the subject of its audit records.
pub fn this_process() -> audit::Subject {
    let (uid, gid) = s3vault::os::real_ids();
    audit::Subject {
        uid,
        gid,
        pid: std::process::id(),
    }
}

/// A command's audit chain of its own, begun with the chains it finds in
/// the store (so `audit verify` notices any of them deleted later).
pub async fn one_shot_log(
    ring: Arc<Keyring>,
    store: Arc<dyn ObjectStore>,
) -> Result<audit::AuditLog, audit::AuditError> {
    let settings = cli_audit_settings(store.as_ref()).await;
    let chains = audit::chains_seen(store.as_ref()).await;
    let log = audit::AuditLog::one_shot(ring, store, settings);
    match chains {
        Ok(chains) => log.record(audit::Record::new(audit::Event::ChainsSeen, this_process(), None).detail(chains))?,
        Err(e) => tracing::warn!(error = %e, "cannot list the audit chains to record them"),
    }
    Ok(log)
}

/// Records a command's change in an audit chain of its own and uploads it.
pub async fn record_cli_event(
    ring: Arc<Keyring>,
    store: Arc<dyn ObjectStore>,
    event: audit::Event,
    detail: String,
) -> Result<(), audit::AuditError> {
    let log = one_shot_log(ring, store).await?;
    log.record(audit::Record::new(event, this_process(), None).detail(detail))?;
    log.upload().await.map(|_| ())
}

/// Where the volume's live metadata is, for the audit trail's rollback
/// check.
async fn live_metadata(volume: &volume::Volume) -> Result<audit::LiveMetadata, volume::VolumeError> {
    if volume.superblock.has_shared_metadata() {
        return Ok(audit::LiveMetadata::Database);
    }
    let generation = s3vault::journal::live::newest_generation(volume.store.as_ref()).await?;
    Ok(audit::LiveMetadata::Journal(generation))
}
