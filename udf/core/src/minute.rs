//! Final minutes: the counts that top-N ranks, one list of ads per filter.
//!
//! Owns how a finalized window's cells are kept for ranking, and how the
//! counts of several partitions or minutes are summed by ad. It ranks
//! nothing itself ([`crate::topn`] does).
//!
//! A window's cells live in a hash map while the window is open, since each
//! click updates one. Once final, a minute is only read: by the ranking of
//! the minute itself and of the M-minute rankings it is part of (six reads
//! with the default windows, per filter). Reading a plain list per filter
//! instead of the map costs a fraction: a map visit scans control bytes and
//! skips empty slots, and in WebAssembly each step of that loop pays an
//! interruption check.

use crate::engine::Cells;
use crate::filter::FilterId;
use crate::intern::AdHandle;
use alloc::vec::Vec;

/// An ad's clicks in a final minute, or summed over several.
pub(crate) type AdClicks = (AdHandle, u64);

/// A final minute's counts: for each filter with clicks, its ads with their
/// clicks, summed over the partitions that finalized the minute.
///
/// Invariants: filters ascending, each at most once; in a filter's list
/// each ad at most once and no ad with 0 clicks (cells with 0 clicks are
/// never made, and a snapshot holding one is refused).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FinalMinute {
    by_filter: Vec<(FilterId, Vec<AdClicks>)>,
}

impl FinalMinute {
    /// The ads counted under `f`, in no particular order.
    pub(crate) fn ads(&self, f: FilterId) -> &[AdClicks] {
        match self.by_filter.binary_search_by_key(&f, |(g, _)| *g) {
            Ok(i) => &self.by_filter[i].1,
            Err(_) => &[],
        }
    }

    /// Every count, as (filter, ad, clicks), filters ascending.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (FilterId, AdHandle, u64)> + '_ {
        self.by_filter
            .iter()
            .flat_map(|(f, ads)| ads.iter().map(move |&(ad, c)| (*f, ad, c)))
    }

    /// Adds one partition's cells of the minute. When the minute already
    /// holds another partition's, an ad counted in both gets the sum, in
    /// `sums` (reused, see [`Sums`]), for which `bound` exceeds every
    /// handle.
    pub(crate) fn add(&mut self, cells: &Cells, sums: &mut Sums, bound: usize) {
        if self.by_filter.is_empty() {
            // The common case: the first (with keyed topics, the only)
            // partition to finalize the minute.
            for (k, c) in cells {
                self.list_mut(k.filter).push((k.ad, c.clicks));
            }
            return;
        }
        let mut more = FinalMinute::default();
        more.add(cells, sums, bound);
        for (f, ads) in more.by_filter {
            let list = self.list_mut(f);
            let mut summed = Vec::with_capacity(list.len() + ads.len());
            sums.sum(bound, [&list[..], &ads[..]], &mut summed);
            *list = summed;
        }
    }

    /// Records that `ad` has `clicks` (> 0) under `f`, for restoring a
    /// snapshot: the caller sees to it that no (filter, ad) comes twice.
    pub(crate) fn push(&mut self, f: FilterId, ad: AdHandle, clicks: u64) {
        self.list_mut(f).push((ad, clicks));
    }

    /// `f`'s list, created empty where it belongs if missing.
    fn list_mut(&mut self, f: FilterId) -> &mut Vec<AdClicks> {
        let i = match self.by_filter.binary_search_by_key(&f, |(g, _)| *g) {
            Ok(i) => i,
            Err(i) => {
                self.by_filter.insert(i, (f, Vec::new()));
                i
            }
        };
        &mut self.by_filter[i].1
    }
}

/// Sums of clicks by ad handle, for summing lists in which an ad may come
/// more than once. A scratch, not state: every entry is 0 between calls, so
/// it is allocated and cleared once, not per sum, and a sum costs only the
/// entries it reads (handles are dense, so a vector indexed by handle beats
/// a map).
#[derive(Clone, Debug, Default)]
pub(crate) struct Sums(Vec<u64>);

impl Sums {
    /// Appends to `out` each ad of `lists` once, with its clicks summed over
    /// them, in order of first appearance. `bound` exceeds every handle; no
    /// entry has 0 clicks.
    pub(crate) fn sum<'a>(
        &mut self,
        bound: usize,
        lists: impl IntoIterator<Item = &'a [AdClicks]>,
        out: &mut Vec<AdClicks>,
    ) {
        if self.0.len() < bound {
            self.0.resize(bound, 0);
        }
        let from = out.len();
        for list in lists {
            for &(ad, c) in list {
                let sum = &mut self.0[ad.0 as usize];
                if *sum == 0 {
                    out.push((ad, 0));
                }
                *sum += c;
            }
        }
        for (ad, c) in &mut out[from..] {
            *c = core::mem::take(&mut self.0[ad.0 as usize]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{CellKey, Counts};

    fn cells(counts: &[(u32, u32, u64)]) -> Cells {
        counts
            .iter()
            .map(|&(f, ad, clicks)| {
                let key = CellKey {
                    ad: AdHandle(ad),
                    filter: FilterId(f),
                };
                (key, Counts { clicks, version: 3 })
            })
            .collect()
    }

    fn sorted(m: &FinalMinute) -> Vec<(FilterId, AdHandle, u64)> {
        let mut v: Vec<_> = m.iter().collect();
        v.sort();
        v
    }

    /// Partitions finalizing one minute: an ad counted by several gets the
    /// sum, once per filter, and the scratch is left all zero.
    #[test]
    fn partitions_of_a_minute_sum_by_ad_and_filter() {
        let mut sums = Sums::default();
        let mut m = FinalMinute::default();
        m.add(&cells(&[(0, 1, 2), (0, 2, 5), (4, 1, 1)]), &mut sums, 8);
        m.add(&cells(&[(0, 2, 3), (0, 7, 1), (2, 7, 1)]), &mut sums, 8);
        m.add(&cells(&[(4, 1, 6)]), &mut sums, 8);
        let h = AdHandle;
        let f = FilterId;
        assert_eq!(
            sorted(&m),
            [
                (f(0), h(1), 2),
                (f(0), h(2), 8),
                (f(0), h(7), 1),
                (f(2), h(7), 1),
                (f(4), h(1), 7),
            ]
        );
        assert_eq!(m.ads(f(3)), &[]);
        assert_eq!(m.ads(f(4)), &[(h(1), 7)]);
        assert!(sums.0.iter().all(|&s| s == 0));
    }

    /// Summing lists appends each ad once, in order of first appearance,
    /// after what `out` already held.
    #[test]
    fn sums_append_each_ad_once() {
        let h = AdHandle;
        let mut sums = Sums::default();
        let mut out = alloc::vec![(h(9), 9)];
        let a = [(h(3), 1), (h(0), 2)];
        let b = [(h(0), 5), (h(4), 1), (h(3), 1)];
        sums.sum(5, [&a[..], &b[..], &[][..]], &mut out);
        assert_eq!(out, [(h(9), 9), (h(3), 2), (h(0), 7), (h(4), 1)]);
        assert!(sums.0.iter().all(|&s| s == 0));
    }
}
