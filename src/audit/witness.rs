//! The audit trail as a witness, of the metadata's freshness and of itself.
//!
//! Mount and unmount records carry the metadata generation the mount had
//! (`generation=N`), so a store whose live state is older than the newest
//! generation the trail has seen was rolled back or truncated — something
//! a fresh host cannot tell by itself (FORMAT.md, "Threat model"). An
//! `accept-older-state` record (an administrator took a restored state on
//! purpose) resets what the trail expects to the state it accepted.
//!
//! Every chain begins with a `chains-seen` record naming the chains in the
//! store and their segment counts at that moment. s3vault never deletes an
//! audit segment, so a chain (or the end of one) that a later chain saw and
//! the store no longer holds was deleted by someone else: one-shot chains
//! of CLI commands included.

use super::query::{Listed, Problem, Segments};
use super::record::Event;
use super::segment::{self, AUDIT_PREFIX};
use crate::store::{ObjectStore, StoreError};
use std::collections::BTreeMap;

/// The `chains-seen` detail: `chains=<writer>:<segments>,…` for every chain
/// in the store.
pub async fn chains_seen(store: &dyn ObjectStore) -> Result<String, StoreError> {
    let mut chains: BTreeMap<String, u64> = BTreeMap::new();
    for key in store.list(AUDIT_PREFIX).await? {
        if let Some((writer, number)) = segment::parse_object_key(&key) {
            let newest = chains.entry(writer).or_default();
            *newest = (*newest).max(number);
        }
    }
    let list: Vec<String> = chains.iter().map(|(w, n)| format!("{w}:{n}")).collect();
    Ok(format!("chains={}", list.join(",")))
}

/// Chains of mounts with no unmount record after their last mount: the
/// volume is mounted there now, or the host stopped without unmounting and
/// the end of the chain waits in its cache directory for its next mount.
/// Not a problem; `audit verify` lists them so a gap left by a host that
/// never comes back is seen.
pub fn open_chains(found: &Segments, records: &[Listed]) -> Vec<String> {
    let mut last_mount: BTreeMap<&str, Option<&Listed>> = BTreeMap::new();
    for listed in records {
        match listed.record.event {
            Event::Mount => {
                last_mount.insert(&listed.writer, Some(listed));
            }
            Event::Unmount => {
                last_mount.insert(&listed.writer, None);
            }
            _ => {}
        }
    }
    let mut newest: BTreeMap<&str, u64> = BTreeMap::new();
    for s in &found.segments {
        let n = newest.entry(s.writer.as_str()).or_default();
        *n = (*n).max(s.number);
    }
    last_mount
        .into_iter()
        .filter_map(|(writer, mount)| {
            let mount = mount?;
            Some(format!(
                "{AUDIT_PREFIX}{writer}: open since the mount at {} on host {} (last segment in the store: {}): \
                 mounted now, or stopped without unmounting, the rest of the chain waiting in that host's cache \
                 directory for its next mount",
                crate::units::rfc3339(mount.record.time_ns),
                mount.host,
                newest.get(writer).copied().unwrap_or(0)
            ))
        })
        .collect()
}

/// Chains (or their ends) that `chains-seen` records saw and the store no
/// longer holds.
pub fn check_chains_seen(found: &Segments, records: &[Listed]) -> Vec<Problem> {
    let mut held: BTreeMap<&str, u64> = BTreeMap::new();
    for s in &found.segments {
        let newest = held.entry(s.writer.as_str()).or_default();
        *newest = (*newest).max(s.number);
    }
    // The most segments any record saw of each chain, and which record.
    let mut seen: BTreeMap<String, (u64, &Listed)> = BTreeMap::new();
    for listed in records.iter().filter(|l| l.record.event == Event::ChainsSeen) {
        let Some(list) = listed.record.detail.as_deref().and_then(|d| d.strip_prefix("chains=")) else {
            continue;
        };
        for item in list.split(',').filter(|i| !i.is_empty()) {
            let Some((writer, count)) = item.split_once(':') else {
                continue;
            };
            let Ok(count) = count.parse::<u64>() else { continue };
            let entry = seen.entry(writer.to_string()).or_insert((count, listed));
            if count > entry.0 {
                *entry = (count, listed);
            }
        }
    }
    let mut problems = Vec::new();
    for (writer, (count, by)) in seen {
        let have = held.get(writer.as_str()).copied().unwrap_or(0);
        if have >= count {
            continue;
        }
        let what = if have == 0 {
            format!("the whole chain is missing: it had {count} segment(s)")
        } else {
            format!("segments {} to {count} are missing from its end", have + 1)
        };
        problems.push(Problem {
            segment: format!("{AUDIT_PREFIX}{writer}"),
            seq: None,
            kind: "deleted",
            detail: format!(
                "{what} when the chain of host {} began at {} (audit segments are never deleted by s3vault)",
                by.host,
                crate::units::rfc3339(by.record.time_ns)
            ),
        });
    }
    problems
}

/// The number after the last `field=` of a record's detail (`field` at the
/// start or after a space), if any.
pub(crate) fn generation_in(detail: &str, field: &str) -> Option<u64> {
    let at = detail
        .match_indices(field)
        .filter(|(i, _)| *i == 0 || detail[..*i].ends_with(' '))
        .map(|(i, _)| i + field.len())
        .last()?;
    let digits: &str = &detail[at..];
    let end = digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// Where the volume's live metadata is, for the rollback check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LiveMetadata {
    /// In the store's journal: the newest checkpoint's generation, if any.
    Journal(Option<u64>),
    /// In a database shared by several hosts: no generations to compare,
    /// and the mount records' `generation=0` witnesses nothing.
    Database,
}

/// Compares the newest generation the records (oldest first) have seen with
/// the store's live generation.
pub fn check_freshness(records: &[Listed], live: LiveMetadata) -> Option<Problem> {
    let LiveMetadata::Journal(live) = live else {
        return None;
    };
    let mut newest: Option<(u64, &Listed)> = None;
    for listed in records {
        let Some(detail) = listed.record.detail.as_deref() else {
            continue;
        };
        match listed.record.event {
            Event::Mount | Event::Unmount | Event::Checkpoint => {
                if let Some(generation) = generation_in(detail, "generation=")
                    && newest.is_none_or(|(n, _)| generation >= n)
                {
                    newest = Some((generation, listed));
                }
            }
            Event::AcceptOlderState => {
                if let Some(generation) = generation_in(detail, "store generation=") {
                    newest = Some((generation, listed));
                }
            }
            _ => {}
        }
    }
    let (seen, by) = newest?;
    let store = live.map_or_else(
        || "has no metadata (no checkpoint)".into(),
        |g| format!("is at generation {g}"),
    );
    if live.is_some_and(|g| g >= seen) {
        return None;
    }
    Some(Problem {
        segment: format!("audit/{}", by.writer),
        seq: Some(by.record.seq),
        kind: "rollback",
        detail: format!(
            "the volume's metadata in the store {store}, older than generation {seen} that a {} on host {} \
             recorded: metadata objects were deleted or old ones put back (see `s3vault mount \
             --accept-older-state` if that was done on purpose)",
            by.record.event, by.host
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Record, Subject};

    fn listed(seq: u64, event: Event, detail: &str) -> Listed {
        let subject = Subject { uid: 0, gid: 0, pid: 1 };
        let mut record = Record::new(event, subject, None).detail(detail);
        record.seq = seq;
        Listed {
            host: "h".into(),
            volume: "v".into(),
            writer: "w".into(),
            record,
        }
    }

    #[test]
    fn a_chain_whose_last_mount_has_no_unmount_is_open() {
        let found = Segments {
            segments: Vec::new(),
            strays: Vec::new(),
        };
        let mut other = listed(1, Event::Mount, "generation=1");
        other.writer = "x".into();
        let records = vec![
            listed(1, Event::Mount, "generation=1"),
            listed(2, Event::Unmount, "generation=2"),
            other,
            listed(3, Event::Mount, "generation=2"),
        ];
        let open = open_chains(&found, &records);
        assert_eq!(open.len(), 2, "{open:?}");
        assert!(open[0].starts_with("audit/w: open since"), "{open:?}");
        assert!(open_chains(&found, &records[..2]).is_empty());
    }

    #[test]
    fn a_store_older_than_the_trail_has_seen_is_reported_until_accepted() {
        let records = vec![
            listed(1, Event::Mount, "url=x generation=3 head=ab superblock_revision=1"),
            listed(2, Event::Unmount, "generation=7 head=cd"),
        ];
        assert!(check_freshness(&records, LiveMetadata::Journal(Some(7))).is_none());
        assert!(check_freshness(&records, LiveMetadata::Journal(Some(9))).is_none());
        let problem = check_freshness(&records, LiveMetadata::Journal(Some(6))).unwrap();
        assert_eq!(problem.kind, "rollback");
        assert!(
            problem.detail.contains("generation 6, older than generation 7"),
            "{}",
            problem.detail
        );
        assert!(check_freshness(&records, LiveMetadata::Journal(None)).is_some());
        let mut accepted = records.clone();
        accepted.push(listed(
            3,
            Event::AcceptOlderState,
            "seen generation=7 head=cd superblock_revision=1; store generation=5 head=ef superblock_revision=1",
        ));
        assert!(check_freshness(&accepted, LiveMetadata::Journal(Some(5))).is_none());
        assert!(check_freshness(&accepted, LiveMetadata::Journal(Some(4))).is_some());
        // Nothing recorded, nothing to compare.
        assert!(check_freshness(&[], LiveMetadata::Journal(Some(1))).is_none());
    }

    #[test]
    fn checkpoints_of_a_mount_that_never_unmounted_count() {
        let records = vec![
            listed(1, Event::Mount, "url=x generation=3 head=ab superblock_revision=1"),
            listed(2, Event::Checkpoint, "generation=9 head=cd"),
        ];
        assert!(check_freshness(&records, LiveMetadata::Journal(Some(9))).is_none());
        let problem = check_freshness(&records, LiveMetadata::Journal(Some(8))).unwrap();
        assert!(
            problem.detail.contains("that a checkpoint on host h"),
            "{}",
            problem.detail
        );
    }

    #[test]
    fn mounts_of_a_volume_whose_metadata_is_in_a_database_witness_no_generation() {
        // What such a mount records: no checkpoint, generation 0.
        let records = vec![
            listed(1, Event::Mount, "url=x metadata=db generation=0 superblock_revision=1"),
            listed(2, Event::Unmount, "generation=0"),
        ];
        assert!(check_freshness(&records, LiveMetadata::Database).is_none());
        assert!(check_freshness(&records, LiveMetadata::Journal(None)).is_some());
    }
}
