//! Which bytes of a cached chunk were written since it was last uploaded: what a flush
//! puts in the log instead of uploading the whole chunk again.

/// Byte ranges `[start, end)` of one chunk, sorted, disjoint and not touching.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Dirty(Vec<(u32, u32)>);

impl Dirty {
    /// Marks `[start, end)` written, merging it with the ranges it overlaps or touches.
    pub(crate) fn add(&mut self, start: u32, end: u32) {
        if start >= end {
            return;
        }
        // The ranges that end before `start` stay; those that start after `end` too.
        let first = self.0.partition_point(|&(_, e)| e < start);
        let last = self.0.partition_point(|&(s, _)| s <= end);
        let merged = self.0[first..last]
            .iter()
            .fold((start, end), |(s, e), &(rs, re)| (s.min(rs), e.max(re)));
        self.0.splice(first..last, [merged]);
    }

    /// Adds every range of `other`.
    pub(crate) fn merge(&mut self, other: &Dirty) {
        for &(s, e) in &other.0 {
            self.add(s, e);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The number of ranges.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Bytes covered.
    pub(crate) fn bytes(&self) -> u64 {
        self.0.iter().map(|&(s, e)| u64::from(e - s)).sum()
    }

    /// The ranges, in order.
    pub(crate) fn ranges(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.0.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the order of writes, the ranges cover exactly the bytes written.
        #[test]
        fn ranges_cover_exactly_what_was_written(
            writes in proptest::collection::vec((0u32..200, 1u32..40), 0..30)
        ) {
            let mut dirty = Dirty::default();
            let mut model = [false; 240];
            for &(start, len) in &writes {
                dirty.add(start, start + len);
                model[start as usize..(start + len) as usize].fill(true);
            }
            let mut covered = [false; 240];
            let mut previous_end = None;
            for (s, e) in dirty.ranges() {
                prop_assert!(s < e);
                if let Some(p) = previous_end {
                    prop_assert!(s > p, "ranges touch or overlap");
                }
                previous_end = Some(e);
                covered[s as usize..e as usize].fill(true);
            }
            prop_assert_eq!(covered, model);
            prop_assert_eq!(dirty.bytes(), model.iter().filter(|&&b| b).count() as u64);
        }
    }
}
