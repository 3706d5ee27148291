//! The unusual-access detectors. Each looks at the records of the period
//! (and the history before it) as they stream past, keeps counters and a
//! few records as evidence, and at the end turns what it saw into findings.
//! Records arrive chain by chain, not in time order, so nothing here may
//! assume that an earlier record arrives first.

use super::thresholds::Thresholds;
use super::{Access, Groups, Scope, local_time, program_of, show_time, user_label};
use crate::audit::query::Problem;
use crate::audit::record::{Event, Record};
use crate::audit::segment::SegmentHeader;
use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};

const DAY_NS: i64 = 86_400_000_000_000;

/// Refused attempts kept as evidence per user (their times are all kept).
const DENIED_KEPT: usize = 2_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    High,
    Medium,
    Low,
    /// Worth knowing, not unusual: left out of `audit alerts`.
    Info,
}

/// One record behind a finding.
#[derive(Clone, Debug, Serialize)]
pub struct Evidence {
    #[serde(skip)]
    pub time_ns: i64,
    pub time: String,
    pub host: String,
    pub writer: String,
    pub seq: u64,
    pub event: &'static str,
    pub result: String,
    pub uid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub program: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Evidence {
    pub fn of(tz: &TimeZone, header: &SegmentHeader, r: &Record) -> Evidence {
        Evidence {
            time_ns: r.time_ns,
            time: show_time(tz, r.time_ns),
            host: header.host.clone(),
            writer: header.writer.clone(),
            seq: r.seq,
            event: r.event.name(),
            result: r.result.clone(),
            uid: r.uid,
            user: r.user.clone(),
            program: program_of(r),
            path: r.path.clone(),
            detail: r.detail.clone(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    /// Stable name of the detector: `off-hours`, `bulk-read`, ...
    pub kind: &'static str,
    pub severity: Severity,
    /// In plain words.
    pub summary: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last: Option<String>,
    #[serde(skip)]
    pub first_ns: i64,
    /// Records behind it (more than `records` holds when capped).
    pub count: u64,
    pub records: Vec<Evidence>,
}

/// Records of one kind: how many, when, and the earliest few.
#[derive(Default)]
pub struct Group {
    count: u64,
    first_ns: i64,
    last_ns: i64,
    samples: Vec<Evidence>,
}

impl Group {
    fn add(&mut self, time_ns: i64, cap: usize, make: impl FnOnce() -> Evidence) {
        if self.count == 0 {
            (self.first_ns, self.last_ns) = (time_ns, time_ns);
        }
        self.count += 1;
        self.first_ns = self.first_ns.min(time_ns);
        self.last_ns = self.last_ns.max(time_ns);
        if self.samples.len() < cap {
            self.samples.push(make());
        } else if let Some((i, latest)) = self.samples.iter().enumerate().max_by_key(|(_, e)| e.time_ns)
            && time_ns < latest.time_ns
        {
            self.samples[i] = make();
        }
    }

    fn finding(mut self, kind: &'static str, severity: Severity, summary: String, tz: &TimeZone) -> Finding {
        self.samples.sort_by_key(|e| (e.time_ns, e.seq));
        let who = self.samples.first().map(|e| (e.uid, e.user.clone()));
        Finding {
            kind,
            severity,
            summary,
            uid: who.as_ref().map(|w| w.0),
            user: who.and_then(|w| w.1),
            first: Some(show_time(tz, self.first_ns)),
            last: Some(show_time(tz, self.last_ns)),
            first_ns: self.first_ns,
            count: self.count,
            records: self.samples,
        }
    }
}

/// (uid, hash of the path).
type UserPath = (u32, u64);

#[derive(Default)]
struct DayOpens {
    distinct: HashSet<u64>,
    group: Group,
}

#[derive(Default)]
struct Refusals {
    times: Vec<i64>,
    kept: Vec<Evidence>,
}

pub(super) struct Detectors {
    since: i64,
    samples: usize,
    baseline_from: i64,
    /// The oldest record in scope before the period.
    history_start: Option<i64>,
    opened_before: HashSet<UserPath>,
    programs_before: HashSet<String>,
    /// Distinct files each user opened on each day of the baseline.
    baseline: HashMap<(u32, Date), HashSet<u64>>,
    days: HashMap<(u32, Date), DayOpens>,
    /// (uid, path) opened in the period and not (yet) seen before it, with
    /// the earliest time.
    new_paths: HashMap<UserPath, i64>,
    new_path_samples: HashMap<u32, Vec<(UserPath, Evidence)>>,
    programs: HashMap<String, Group>,
    off_hours: Groups<(u32, Date)>,
    root: Groups<Date>,
    refused: BTreeMap<u32, Refusals>,
    audit_off: Vec<Evidence>,
    key_changes: Vec<Evidence>,
    accepted_older: Vec<Evidence>,
}

impl Detectors {
    pub(super) fn new(t: &Thresholds, since: i64) -> Detectors {
        Detectors {
            since,
            samples: t.samples,
            baseline_from: since.saturating_sub(i64::from(t.baseline_days) * DAY_NS),
            history_start: None,
            opened_before: HashSet::new(),
            programs_before: HashSet::new(),
            baseline: HashMap::new(),
            days: HashMap::new(),
            new_paths: HashMap::new(),
            new_path_samples: HashMap::new(),
            programs: HashMap::new(),
            off_hours: BTreeMap::new(),
            root: BTreeMap::new(),
            refused: BTreeMap::new(),
            audit_off: Vec::new(),
            key_changes: Vec::new(),
            accepted_older: Vec::new(),
        }
    }

    /// A record in scope from before the period; `opened`: a file's
    /// content was opened.
    pub(super) fn history(&mut self, r: &Record, path: u64, day: Date, opened: bool, access: Access) {
        self.history_start = Some(self.history_start.map_or(r.time_ns, |s| s.min(r.time_ns)));
        if !opened {
            return;
        }
        self.opened_before.insert((r.uid, path));
        self.programs_before.insert(program_of(r));
        if access == Access::Read && r.time_ns >= self.baseline_from {
            self.baseline.entry((r.uid, day)).or_default().insert(path);
        }
    }

    /// A volume-level record of the period (mount, key slot change, ...).
    pub(super) fn control(&mut self, scope: &Scope, header: &SegmentHeader, r: &Record) {
        let evidence = || Evidence::of(&scope.tz, header, r);
        match r.event {
            Event::Mount
                if r.detail
                    .as_deref()
                    .is_some_and(|d| d.split(' ').any(|w| w == "audit=off")) =>
            {
                self.audit_off.push(evidence())
            }
            Event::KeyAdd | Event::KeyRemove => self.key_changes.push(evidence()),
            Event::AcceptOlderState => self.accepted_older.push(evidence()),
            _ => {}
        }
    }

    /// A record in scope and in the period.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn period(
        &mut self,
        t: &Thresholds,
        tz: &TimeZone,
        header: &SegmentHeader,
        r: &Record,
        path: u64,
        at: DateTime,
        opened: bool,
        access: Access,
    ) {
        let cap = self.samples;
        let evidence = || Evidence::of(tz, header, r);
        let work_local = t.timezone.as_ref().map_or(at, |zone| local_time(zone, r.time_ns));
        let minute = work_local.hour() as u16 * 60 + work_local.minute() as u16;
        if r.event != Event::Close && !t.working(work_local.weekday(), minute) {
            self.off_hours
                .entry((r.uid, work_local.date()))
                .or_default()
                .add(r.time_ns, cap, evidence);
        }
        if access == Access::Denied {
            let refusals = self.refused.entry(r.uid).or_default();
            refusals.times.push(r.time_ns);
            if refusals.kept.len() < DENIED_KEPT {
                refusals.kept.push(evidence());
            }
        }
        if !opened {
            return;
        }
        self.programs
            .entry(program_of(r))
            .or_default()
            .add(r.time_ns, cap, evidence);
        // The rest is about reading: a file one creates or overwrites is
        // neither exported nor looked at.
        if access != Access::Read {
            return;
        }
        let day = self.days.entry((r.uid, at.date())).or_default();
        day.distinct.insert(path);
        day.group.add(r.time_ns, cap, evidence);
        if !self.opened_before.contains(&(r.uid, path)) {
            let earliest = self.new_paths.entry((r.uid, path)).or_insert(r.time_ns);
            *earliest = (*earliest).min(r.time_ns);
            let kept = self.new_path_samples.entry(r.uid).or_default();
            // Kept generously: some turn out to have been opened before
            // once every chain has been read.
            if kept.len() < cap * 4 {
                kept.push(((r.uid, path), evidence()));
            }
        }
        if r.uid == 0 {
            self.root.entry(at.date()).or_default().add(r.time_ns, cap, evidence);
        }
    }

    pub(super) fn finish(self, scope: &Scope, names: &BTreeMap<u32, Option<String>>) -> Vec<Finding> {
        let t = &scope.thresholds;
        let tz = &scope.tz;
        let who = |uid: u32| user_label(uid, names.get(&uid).and_then(|n| n.as_deref()));
        let mut out = Vec::new();

        // Bulk reads: a day far above the user's usual day, or (without
        // history) above what the other users did that day.
        let mut by_day: BTreeMap<Date, Vec<(u32, u64)>> = BTreeMap::new();
        for ((uid, day), d) in &self.days {
            by_day.entry(*day).or_default().push((*uid, d.distinct.len() as u64));
        }
        let mut usual: HashMap<u32, Vec<u64>> = HashMap::new();
        for ((uid, _), files) in &self.baseline {
            usual.entry(*uid).or_default().push(files.len() as u64);
        }
        let mut days: Vec<_> = self.days.into_iter().collect();
        days.sort_by_key(|((uid, day), _)| (*day, *uid));
        for ((uid, day), d) in days {
            let n = d.distinct.len() as u64;
            if n < t.bulk_min_files {
                continue;
            }
            let own = usual.get(&uid).filter(|v| v.len() >= 3).map(|v| median(v));
            let peers: Vec<u64> = by_day[&day]
                .iter()
                .filter(|(u, _)| *u != uid)
                .map(|(_, n)| *n)
                .collect();
            let (reference, against) = match own {
                Some(m) => (m, format!("their usual day ({m} files, median of the baseline)")),
                None if !peers.is_empty() => {
                    let m = median(&peers);
                    (m, format!("the other {} user(s) that day (median {m})", peers.len()))
                }
                None => (0, "no history and no other user that day to compare with".into()),
            };
            if n as f64 <= t.bulk_factor * reference as f64 {
                continue;
            }
            let summary = format!(
                "{} opened {n} distinct files on {day}: more than {}× {against}",
                who(uid),
                t.bulk_factor
            );
            out.push(d.group.finding("bulk-read", Severity::High, summary, tz));
        }

        for ((uid, day), group) in self.off_hours {
            let summary = format!(
                "{} accessed files {} time(s) outside working hours ({}) on {day}",
                who(uid),
                group.count,
                t.describe_hours()
            );
            out.push(group.finding("off-hours", Severity::Medium, summary, tz));
        }

        for (uid, refusals) in self.refused {
            out.extend(bursts(t, tz, uid, &who(uid), refusals));
        }

        let history_days = self.history_start.map_or(0, |s| (self.since - s) / DAY_NS);
        if history_days >= i64::from(t.min_history_days) {
            // Per user: how many paths are new, and when the first and the
            // last of them were first opened.
            let mut firsts: BTreeMap<u32, (u64, i64, i64, Group)> = BTreeMap::new();
            for (&(uid, path), &time) in &self.new_paths {
                if self.opened_before.contains(&(uid, path)) {
                    continue;
                }
                let entry = firsts.entry(uid).or_insert((0, time, time, Group::default()));
                entry.0 += 1;
                entry.1 = entry.1.min(time);
                entry.2 = entry.2.max(time);
            }
            for (uid, kept) in self.new_path_samples {
                let Some((count, first, last, group)) = firsts.get_mut(&uid) else {
                    continue;
                };
                for (key, e) in kept {
                    if !self.opened_before.contains(&key) && self.new_paths[&key] == e.time_ns {
                        group.add(e.time_ns, t.samples, || e);
                    }
                }
                (group.count, group.first_ns, group.last_ns) = (*count, *first, *last);
            }
            for (uid, (count, _, _, group)) in firsts {
                let summary = format!(
                    "{} opened {count} file(s) they had not opened in the {history_days} day(s) of history \
                     before the period",
                    who(uid)
                );
                out.push(group.finding("first-access", Severity::Low, summary, tz));
            }
            let mut programs: Vec<_> = self
                .programs
                .into_iter()
                .filter(|(p, _)| !self.programs_before.contains(p))
                .collect();
            programs.sort_by(|a, b| a.0.cmp(&b.0));
            for (program, group) in programs {
                let summary = format!(
                    "{program} opened files for the first time in {history_days} day(s) of history ({} open(s))",
                    group.count
                );
                let mut f = group.finding("new-program", Severity::Low, summary, tz);
                (f.uid, f.user) = (None, None);
                out.push(f);
            }
        }

        for (day, group) in self.root {
            let summary = format!("root read {} file(s) on {day}", group.count);
            out.push(group.finding("root-read", Severity::Medium, summary, tz));
        }

        for e in self.audit_off {
            let summary = format!(
                "host {} mounted the volume with auditing OFF at {}: nothing done through that mount is recorded",
                e.host, e.time
            );
            out.push(single("audit-off-mount", Severity::High, summary, e));
        }
        for e in self.key_changes {
            let what = if e.event == Event::KeyAdd.name() {
                "added"
            } else {
                "removed"
            };
            let summary = format!(
                "a key slot was {what} on host {} by {} ({})",
                e.host,
                user_label(e.uid, e.user.as_deref()),
                e.detail.as_deref().unwrap_or("")
            );
            out.push(single("key-slot-change", Severity::Medium, summary, e));
        }
        for e in self.accepted_older {
            let summary = format!(
                "host {} took an older metadata state on purpose (--accept-older-state): {}",
                e.host,
                e.detail.as_deref().unwrap_or("")
            );
            out.push(single("older-state-accepted", Severity::Medium, summary, e));
        }
        out
    }
}

/// Runs of at least `denied_burst` refusals, each within `denied_window`
/// of the run's previous ones.
fn bursts(t: &Thresholds, tz: &TimeZone, uid: u32, who: &str, mut refusals: Refusals) -> Vec<Finding> {
    let window = i64::try_from(t.denied_window.as_nanos()).unwrap_or(i64::MAX);
    refusals.times.sort_unstable();
    let times = &refusals.times;
    // Mark every refusal that ends a window holding a burst, and the
    // refusals of that window.
    let mut in_burst = vec![false; times.len()];
    let mut start = 0;
    for end in 0..times.len() {
        while times[end] - times[start] > window {
            start += 1;
        }
        if end + 1 - start >= t.denied_burst {
            in_burst[start..=end].iter_mut().for_each(|b| *b = true);
        }
    }
    let mut runs: Vec<(i64, i64, u64)> = Vec::new();
    for (i, &time) in times.iter().enumerate().filter(|(i, _)| in_burst[*i]) {
        match runs.last_mut() {
            Some(run) if i > 0 && in_burst[i - 1] && time - times[i - 1] <= window => {
                run.1 = time;
                run.2 += 1;
            }
            _ => runs.push((time, time, 1)),
        }
    }
    refusals.kept.sort_by_key(|e| (e.time_ns, e.seq));
    runs.into_iter()
        .map(|(first, last, count)| {
            let mut group = Group::default();
            for e in refusals.kept.iter().filter(|e| e.time_ns >= first && e.time_ns <= last) {
                group.add(e.time_ns, t.samples, || e.clone());
            }
            group.count = count;
            (group.first_ns, group.last_ns) = (first, last);
            let seconds = (last - first) / 1_000_000_000;
            let within = if seconds == 0 {
                "a second".to_string()
            } else {
                humantime::format_duration(std::time::Duration::from_secs(seconds as u64)).to_string()
            };
            let summary = format!("{who} was refused access {count} times within {within}");
            let mut f = group.finding("denied-burst", Severity::Medium, summary, tz);
            f.uid = Some(uid);
            f
        })
        .collect()
}

fn single(kind: &'static str, severity: Severity, summary: String, e: Evidence) -> Finding {
    Finding {
        kind,
        severity,
        summary,
        uid: Some(e.uid),
        user: e.user.clone(),
        first: Some(e.time.clone()),
        last: Some(e.time.clone()),
        first_ns: e.time_ns,
        count: 1,
        records: vec![e],
    }
}

/// Damage to the trail, and chains still open.
pub(super) fn integrity(problems: &[Problem], open_chains: &[String]) -> Vec<Finding> {
    let about_the_trail = |kind, severity, summary| Finding {
        kind,
        severity,
        summary,
        uid: None,
        user: None,
        first: None,
        last: None,
        first_ns: i64::MIN,
        count: 1,
        records: Vec::new(),
    };
    let damage = problems.iter().map(|p| {
        let summary = format!("the audit trail was altered or is incomplete: {p}");
        about_the_trail("audit-damaged", Severity::High, summary)
    });
    let open = open_chains
        .iter()
        .map(|c| about_the_trail("audit-chain-open", Severity::Info, c.clone()));
    damage.chain(open).collect()
}

fn median(values: &[u64]) -> u64 {
    let mut v = values.to_vec();
    v.sort_unstable();
    v[v.len() / 2]
}
