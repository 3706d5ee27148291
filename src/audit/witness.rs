//! The audit trail as a witness of the metadata's freshness: mount and
//! unmount records carry the metadata generation the mount had
//! (`generation=N`), so a store whose live state is older than the newest
//! generation the trail has seen was rolled back or truncated — something
//! a fresh host cannot tell by itself (FORMAT.md, "Threat model"). An
//! `accept-older-state` record (an administrator took a restored state on
//! purpose) resets what the trail expects to the state it accepted.

use super::query::{Listed, Problem};
use super::record::Event;

/// The number after the last `field=` of a record's detail (`field` at the
/// start or after a space), if any.
fn generation_in(detail: &str, field: &str) -> Option<u64> {
    let at = detail
        .match_indices(field)
        .filter(|(i, _)| *i == 0 || detail[..*i].ends_with(' '))
        .map(|(i, _)| i + field.len())
        .last()?;
    let digits: &str = &detail[at..];
    let end = digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// Compares the newest generation the records (oldest first) have seen with
/// the store's live generation (`None`: no checkpoint at all).
pub fn check_freshness(records: &[Listed], live: Option<u64>) -> Option<Problem> {
    let mut newest: Option<(u64, &Listed)> = None;
    for listed in records {
        let Some(detail) = listed.record.detail.as_deref() else {
            continue;
        };
        match listed.record.event {
            Event::Mount | Event::Unmount => {
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
    fn a_store_older_than_the_trail_has_seen_is_reported_until_accepted() {
        let records = vec![
            listed(1, Event::Mount, "url=x generation=3 head=ab superblock_revision=1"),
            listed(2, Event::Unmount, "generation=7 head=cd"),
        ];
        assert!(check_freshness(&records, Some(7)).is_none());
        assert!(check_freshness(&records, Some(9)).is_none());
        let problem = check_freshness(&records, Some(6)).unwrap();
        assert_eq!(problem.kind, "rollback");
        assert!(
            problem.detail.contains("generation 6, older than generation 7"),
            "{}",
            problem.detail
        );
        assert!(check_freshness(&records, None).is_some());
        let mut accepted = records.clone();
        accepted.push(listed(
            3,
            Event::AcceptOlderState,
            "seen generation=7 head=cd superblock_revision=1; store generation=5 head=ef superblock_revision=1",
        ));
        assert!(check_freshness(&accepted, Some(5)).is_none());
        assert!(check_freshness(&accepted, Some(4)).is_some());
        // Nothing recorded, nothing to compare.
        assert!(check_freshness(&[], Some(1)).is_none());
    }
}
