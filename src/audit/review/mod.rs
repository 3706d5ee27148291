//! `audit review` and `audit alerts`: the access review a compliance officer
//! reads. One pass over every segment of every chain (streamed: records
//! are folded into counters as they arrive, never all held) verifies the
//! trail, sums the activity of the period and gathers what the detectors
//! of `findings` need; `html` renders the result as one self-contained page.
//!
//! Records before the period are read too: they are the history a user's
//! usual day, and a path or program "never seen before", are judged by.

mod findings;
mod html;
mod thresholds;

pub use findings::{Evidence, Finding, Severity};
pub use html::render as render_html;
pub use thresholds::{Thresholds, time_zone};

use super::query::{Filter, Listed, Problem, ReadError, Segment, Segments, Verifier, stream_segments};
use super::record::{Event, Record};
use super::segment::SegmentHeader;
use super::witness;
use crate::keyring::Keyring;
use crate::store::ObjectStore;
use findings::{Detectors, Group};
use jiff::Timestamp;
use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

/// What to review and how.
pub struct Scope {
    /// Path, user, uid and host select records; since/until the period.
    pub filter: Filter,
    /// The zone times are shown in.
    pub tz: TimeZone,
    pub thresholds: Thresholds,
    pub now_ns: i64,
    /// Where the live metadata is (for the rollback check).
    pub live: witness::LiveMetadata,
}

/// Opens, writes, deletions and refused attempts in one day or hour.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub opens: u64,
    pub writes: u64,
    pub deletes: u64,
    pub denied: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Day {
    pub date: String,
    #[serde(flatten)]
    pub counts: Counts,
}

/// One user's activity in the period.
#[derive(Clone, Debug, Serialize)]
pub struct UserRow {
    pub uid: u32,
    pub user: Option<String>,
    /// Successful opens.
    pub opens: u64,
    pub distinct_files: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub denied: u64,
    pub first: String,
    pub last: String,
    pub hosts: Vec<String>,
    pub programs: Vec<String>,
}

/// Who opened files in one folder, and with what.
#[derive(Clone, Debug, Serialize)]
pub struct FolderRow {
    pub folder: String,
    pub uid: u32,
    pub user: Option<String>,
    pub opens: u64,
    pub first: String,
    pub last: String,
    pub programs: Vec<String>,
}

/// The verdict on the trail itself.
#[derive(Clone, Debug, Serialize)]
pub struct Integrity {
    pub intact: bool,
    /// In plain words.
    pub verdict: String,
    pub chains: usize,
    pub segments: usize,
    pub records: u64,
    pub hosts: Vec<String>,
    /// Oldest and newest metadata generation the period's mounts recorded.
    pub generations: Option<(u64, u64)>,
    pub problems: Vec<Problem>,
    /// Chains whose mount has no unmount yet (mounted now, or stopped).
    pub open_chains: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Review {
    pub volume: String,
    pub generated: String,
    pub timezone: String,
    pub since: Option<String>,
    pub until: String,
    pub path_filter: Option<String>,
    pub user_filter: Option<String>,
    pub working_hours: String,
    pub integrity: Integrity,
    pub records_read: u64,
    pub records_in_period: u64,
    pub days: Vec<Day>,
    /// By hour of the day, local time.
    pub hours: Vec<Counts>,
    pub users: Vec<UserRow>,
    pub folders: Vec<FolderRow>,
    pub findings: Vec<Finding>,
    /// SHA-256 of this report's JSON with `generated` and `digest` empty:
    /// two reviews of the same trail, period and filter have the same one.
    pub digest: String,
}

/// Reads the whole trail once and reviews the period.
pub async fn review(store: Arc<dyn ObjectStore>, ring: Arc<Keyring>, scope: Scope) -> Result<Review, ReadError> {
    let mut reviewer = Reviewer::new(&ring, scope);
    let strays = stream_segments(store, ring, |s| reviewer.segment(s)).await?;
    Ok(reviewer.finish(strays))
}

#[derive(Default)]
struct UserAcc {
    name: Option<String>,
    opens: u64,
    distinct: HashSet<u64>,
    bytes_read: u64,
    bytes_written: u64,
    denied: u64,
    first: i64,
    last: i64,
    hosts: BTreeSet<String>,
    programs: BTreeSet<String>,
}

#[derive(Default)]
struct FolderAcc {
    opens: u64,
    first: i64,
    last: i64,
    programs: BTreeSet<String>,
}

pub(super) struct Reviewer {
    scope: Scope,
    /// The filter without its period: what is in scope at all.
    selects: Filter,
    since: i64,
    until: i64,
    verifier: Verifier,
    volume: String,
    /// The segments, without their records, for the chain checks.
    skeleton: Vec<Segment>,
    /// Mounts, unmounts, checkpoints and the like, of any time.
    control: Vec<Listed>,
    hosts: BTreeSet<String>,
    records_read: u64,
    in_period: u64,
    days: BTreeMap<Date, Counts>,
    hours: [Counts; 24],
    users: BTreeMap<u32, UserAcc>,
    folders: BTreeMap<(String, u32), FolderAcc>,
    detectors: Detectors,
}

impl Reviewer {
    pub(super) fn new(ring: &Keyring, scope: Scope) -> Reviewer {
        let selects = Filter {
            since_ns: None,
            until_ns: None,
            ..scope.filter.clone()
        };
        let since = scope.filter.since_ns.unwrap_or(i64::MIN);
        let until = scope.filter.until_ns.unwrap_or(scope.now_ns);
        let detectors = Detectors::new(&scope.thresholds, since);
        Reviewer {
            selects,
            since,
            until,
            verifier: Verifier::new(ring),
            volume: hex::encode(ring.volume_id()),
            skeleton: Vec::new(),
            control: Vec::new(),
            hosts: BTreeSet::new(),
            records_read: 0,
            in_period: 0,
            days: BTreeMap::new(),
            hours: [Counts::default(); 24],
            users: BTreeMap::new(),
            folders: BTreeMap::new(),
            detectors,
            scope,
        }
    }

    pub(super) fn segment(&mut self, s: Segment) {
        let records = self.verifier.segment(&s);
        let Segment {
            key,
            writer,
            number,
            content,
        } = s;
        let content = content.map(|(header, _lines)| (header, Vec::new()));
        if let Ok((header, _)) = &content {
            self.hosts.insert(header.host.clone());
            for r in records {
                self.record(header, r);
            }
        }
        self.skeleton.push(Segment {
            key,
            writer,
            number,
            content,
        });
    }

    fn local(&self, ns: i64) -> DateTime {
        local_time(&self.scope.tz, ns)
    }

    pub(super) fn record(&mut self, header: &SegmentHeader, r: Record) {
        self.records_read += 1;
        let listed = |r: Record| Listed {
            host: header.host.clone(),
            volume: header.volume.clone(),
            writer: header.writer.clone(),
            record: r,
        };
        let in_period = r.time_ns >= self.since && r.time_ns <= self.until;
        match r.event {
            Event::Mount | Event::Unmount | Event::Checkpoint | Event::ChainsSeen | Event::AcceptOlderState => {
                if in_period {
                    self.detectors.control(&self.scope, header, &r);
                }
                self.control.push(listed(r));
                return;
            }
            Event::KeyAdd | Event::KeyRemove => {
                if in_period {
                    self.detectors.control(&self.scope, header, &r);
                }
                return;
            }
            _ => {}
        }
        if r.path.is_none() || !self.selects.matches(&header.host, &r) {
            return;
        }
        let path = path_hash(r.path.as_deref().unwrap_or_default());
        let kind = Access::of(&r);
        let opened = r.event.opens() && matches!(kind, Access::Read | Access::Write);
        if r.time_ns < self.since {
            let day = self.local(r.time_ns).date();
            self.detectors.history(&r, path, day, opened, kind);
            return;
        }
        if !in_period {
            return;
        }
        self.in_period += 1;
        let at = self.local(r.time_ns);
        let add = |c: &mut Counts| match kind {
            Access::Denied => c.denied += 1,
            Access::Read => c.opens += 1,
            Access::Write => {
                c.opens += u64::from(r.event.opens());
                c.writes += 1
            }
            Access::Delete => c.deletes += 1,
            Access::Other => {}
        };
        add(self.days.entry(at.date()).or_default());
        add(&mut self.hours[at.hour() as usize]);
        let program = program_of(&r);
        let user = self.users.entry(r.uid).or_insert_with(|| UserAcc {
            first: r.time_ns,
            last: r.time_ns,
            ..UserAcc::default()
        });
        if user.name.is_none() {
            user.name = r.user.clone();
        }
        user.first = user.first.min(r.time_ns);
        user.last = user.last.max(r.time_ns);
        user.hosts.insert(header.host.clone());
        user.bytes_read += r.bytes_read.unwrap_or(0);
        user.bytes_written += r.bytes_written.unwrap_or(0);
        if kind == Access::Denied {
            user.denied += 1;
        }
        if opened {
            user.opens += 1;
            user.distinct.insert(path);
            user.programs.insert(program.clone());
            let folder = folder_of(r.path.as_deref().unwrap_or_default());
            let acc = self.folders.entry((folder, r.uid)).or_insert_with(|| FolderAcc {
                first: r.time_ns,
                last: r.time_ns,
                ..FolderAcc::default()
            });
            acc.opens += 1;
            acc.first = acc.first.min(r.time_ns);
            acc.last = acc.last.max(r.time_ns);
            acc.programs.insert(program);
        }
        let scope = &self.scope;
        self.detectors
            .period(&scope.thresholds, &scope.tz, header, &r, path, at, opened, kind);
    }

    pub(super) fn finish(self, strays: Vec<String>) -> Review {
        let tz = &self.scope.tz;
        let show = |ns: i64| show_time(tz, ns);
        let mut verification = {
            let mut v = self.verifier;
            v.strays(&strays);
            v.finish()
        };
        let found = Segments {
            segments: self.skeleton,
            strays,
        };
        verification
            .problems
            .extend(witness::check_chains_seen(&found, &self.control));
        verification
            .problems
            .extend(witness::check_freshness(&self.control, self.scope.live));
        let open_chains = witness::open_chains(&found, &self.control);
        let generations = self
            .control
            .iter()
            .filter(|l| l.record.time_ns >= self.since && l.record.time_ns <= self.until)
            .filter_map(|l| witness::generation_in(l.record.detail.as_deref()?, "generation="))
            .fold(None, |range: Option<(u64, u64)>, g| {
                Some(range.map_or((g, g), |(lo, hi)| (lo.min(g), hi.max(g))))
            });
        let intact = verification.problems.is_empty();
        let verdict = if intact {
            format!(
                "The audit trail is intact: {} records in {} segments of {} chains were checked and none was \
                 changed, removed, reordered or added.",
                verification.records, verification.segments, verification.chains
            )
        } else {
            format!(
                "The audit trail is DAMAGED: {} problem(s) were found. Records may have been changed or removed; \
                 the findings below list each one.",
                verification.problems.len()
            )
        };
        let names: BTreeMap<u32, Option<String>> = self.users.iter().map(|(uid, u)| (*uid, u.name.clone())).collect();
        let mut findings = self.detectors.finish(&self.scope, &names);
        findings.extend(findings::integrity(&verification.problems, &open_chains));
        findings.sort_by(|a, b| (a.severity, a.first_ns, a.kind).cmp(&(b.severity, b.first_ns, b.kind)));
        let users = self
            .users
            .iter()
            .map(|(uid, u)| UserRow {
                uid: *uid,
                user: u.name.clone(),
                opens: u.opens,
                distinct_files: u.distinct.len() as u64,
                bytes_read: u.bytes_read,
                bytes_written: u.bytes_written,
                denied: u.denied,
                first: show(u.first),
                last: show(u.last),
                hosts: u.hosts.iter().cloned().collect(),
                programs: u.programs.iter().cloned().collect(),
            })
            .collect();
        let folders = self
            .folders
            .into_iter()
            .map(|((folder, uid), f)| FolderRow {
                folder,
                uid,
                user: names.get(&uid).cloned().flatten(),
                opens: f.opens,
                first: show(f.first),
                last: show(f.last),
                programs: f.programs.into_iter().collect(),
            })
            .collect();
        let filter = &self.scope.filter;
        let mut review = Review {
            volume: self.volume,
            generated: String::new(),
            timezone: tz.iana_name().unwrap_or("local").to_string(),
            since: filter.since_ns.map(show),
            until: show(self.until),
            path_filter: filter.path.as_ref().map(|p| p.as_str().to_string()),
            user_filter: filter.user.clone().or_else(|| filter.uid.map(|u| format!("uid {u}"))),
            working_hours: self.scope.thresholds.describe_hours(),
            integrity: Integrity {
                intact,
                verdict,
                chains: verification.chains,
                segments: verification.segments,
                records: verification.records,
                hosts: self.hosts.into_iter().collect(),
                generations,
                problems: verification.problems,
                open_chains,
            },
            records_read: self.records_read,
            records_in_period: self.in_period,
            days: self
                .days
                .into_iter()
                .map(|(date, counts)| Day {
                    date: date.to_string(),
                    counts,
                })
                .collect(),
            hours: self.hours.to_vec(),
            users,
            folders,
            findings,
            digest: String::new(),
        };
        let data = serde_json::to_vec(&review).expect("a review serializes");
        review.digest = hex::encode(Sha256::digest(&data));
        review.generated = show(self.scope.now_ns);
        review
    }
}

/// What a record did to a file, for the activity counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Access {
    Read,
    Write,
    Delete,
    Denied,
    Other,
}

impl Access {
    fn of(r: &Record) -> Access {
        if r.is_denied() {
            return Access::Denied;
        }
        if r.result != "ok" {
            return Access::Other;
        }
        let flag = |name: &str| r.flags.as_deref().is_some_and(|f| f.split('|').any(|w| w == name));
        let writes = flag("O_WRONLY") || flag("O_RDWR") || flag("O_TRUNC");
        match r.event {
            // Listing a directory (ls, mkdir -m, find): not a file's content.
            Event::Open if flag("O_DIRECTORY") => Access::Other,
            Event::Create | Event::Truncate => Access::Write,
            Event::Open | Event::Restore if writes => Access::Write,
            Event::Open | Event::Restore => Access::Read,
            Event::Unlink | Event::Rmdir => Access::Delete,
            _ => Access::Other,
        }
    }
}

/// The executable, or the process name when the executable is unknown.
pub(super) fn program_of(r: &Record) -> String {
    r.exe
        .clone()
        .or_else(|| r.process.clone())
        .unwrap_or_else(|| "unknown".into())
}

/// The directory a path is in ("/" for the top).
fn folder_of(path: &str) -> String {
    match path.rfind('/') {
        Some(0) | None => "/".into(),
        Some(i) => path[..i].to_string(),
    }
}

fn path_hash(path: &str) -> u64 {
    let mut h = DefaultHasher::new();
    path.hash(&mut h);
    h.finish()
}

pub(super) fn local_time(tz: &TimeZone, ns: i64) -> DateTime {
    let ts = Timestamp::from_nanosecond(i128::from(ns)).unwrap_or(Timestamp::UNIX_EPOCH);
    tz.to_offset(ts).to_datetime(ts)
}

/// A time as people read it, in the review's zone, with its UTC offset.
pub fn show_time(tz: &TimeZone, ns: i64) -> String {
    let ts = Timestamp::from_nanosecond(i128::from(ns)).unwrap_or(Timestamp::UNIX_EPOCH);
    ts.to_zoned_datetime(tz.clone())
        .strftime("%Y-%m-%d %H:%M:%S %:z")
        .to_string()
}

/// The user as the report names them: "alice (uid 1001)".
pub fn user_label(uid: u32, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("{name} (uid {uid})"),
        None => format!("uid {uid}"),
    }
}

pub(super) type Groups<K> = BTreeMap<K, Group>;

#[cfg(test)]
mod tests;
