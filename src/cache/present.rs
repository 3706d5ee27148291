//! Which byte ranges of a sparsely cached pack are on the cache disk.

/// Disjoint, sorted, non-adjacent half-open ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Present(Vec<(u64, u64)>);

impl Present {
    pub(super) fn whole(len: u64) -> Present {
        Present(if len > 0 { vec![(0, len)] } else { Vec::new() })
    }

    pub(super) fn from_ranges(ranges: Vec<(u64, u64)>) -> Present {
        let mut present = Present::default();
        for (start, end) in ranges {
            present.insert(start, end);
        }
        present
    }

    /// Bytes covered.
    pub(super) fn bytes(&self) -> u64 {
        self.0.iter().map(|(s, e)| e - s).sum()
    }

    pub(super) fn contains(&self, start: u64, end: u64) -> bool {
        start >= end || self.0.iter().any(|(s, e)| *s <= start && end <= *e)
    }

    /// Adds `start..end`; returns how many bytes were not covered before.
    pub(super) fn insert(&mut self, start: u64, end: u64) -> u64 {
        if start >= end {
            return 0;
        }
        let before = self.bytes();
        let (mut start, mut end) = (start, end);
        self.0.retain(|(s, e)| {
            if *e < start || *s > end {
                return true;
            }
            start = start.min(*s);
            end = end.max(*e);
            false
        });
        let at = self.0.partition_point(|(s, _)| *s < start);
        self.0.insert(at, (start, end));
        self.bytes() - before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_count_only_new_bytes() {
        let mut p = Present::default();
        assert_eq!(p.insert(10, 20), 10);
        assert_eq!(p.insert(30, 40), 10);
        assert_eq!(p.insert(15, 35), 10);
        assert_eq!(p, Present(vec![(10, 40)]));
        assert_eq!(p.insert(40, 50), 10);
        assert_eq!(p, Present(vec![(10, 50)]));
        assert_eq!(p.insert(0, 5), 5);
        assert!(p.contains(12, 50) && p.contains(0, 5) && !p.contains(4, 11) && !p.contains(45, 51));
        assert_eq!(p.bytes(), 45);
    }
}
