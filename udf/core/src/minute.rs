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
/// clicks, from the partitions that finalized the minute.
///
/// Invariants: filters ascending, each at most once; no ad with 0 clicks
/// (cells with 0 clicks are never made, and a snapshot holding one is
/// refused). Each partition's cells are appended as they come, so an ad
/// counted by two partitions is listed twice until [`FinalMinute::settle`]
/// sums the lists: summing at each partition's arrival would read the
/// minute's whole list again each time, quadratic in the partitions.
#[derive(Clone, Debug, Default)]
pub(crate) struct FinalMinute {
    by_filter: Vec<(FilterId, Vec<AdClicks>)>,
    /// Whether a list may hold an ad more than once.
    unsettled: bool,
}

impl FinalMinute {
    /// The ads counted under `f`, in no particular order, each once: the
    /// minute must be settled.
    pub(crate) fn ads(&self, f: FilterId) -> &[AdClicks] {
        debug_assert!(
            !self.unsettled,
            "a final minute is read before it is settled"
        );
        match self.by_filter.binary_search_by_key(&f, |(g, _)| *g) {
            Ok(i) => &self.by_filter[i].1,
            Err(_) => &[],
        }
    }

    /// Every count, as (filter, ad, clicks), filters ascending; an ad may
    /// come more than once in a filter unless the minute is settled.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (FilterId, AdHandle, u64)> + '_ {
        self.by_filter
            .iter()
            .flat_map(|(f, ads)| ads.iter().map(move |&(ad, c)| (*f, ad, c)))
    }

    /// Adds one partition's cells of the minute.
    pub(crate) fn add(&mut self, cells: &Cells) {
        self.unsettled |= !self.by_filter.is_empty();
        // Cells of one filter tend to follow each other (without configured
        // filters, all are filter 0): the list is looked up when it changes.
        let mut at: Option<(FilterId, usize)> = None;
        for (k, c) in cells {
            let i = match at {
                Some((f, i)) if f == k.filter => i,
                _ => {
                    let i = self.index_of(k.filter);
                    at = Some((k.filter, i));
                    i
                }
            };
            self.by_filter[i].1.push((k.ad, c.clicks));
        }
    }

    /// Sums the counts of an ad listed more than once in a filter, in
    /// `sums` (reused, see [`Sums`]), for which `bound` exceeds every
    /// handle.
    pub(crate) fn settle(&mut self, sums: &mut Sums, bound: usize) {
        if !core::mem::take(&mut self.unsettled) {
            return;
        }
        for (_, list) in &mut self.by_filter {
            let mut summed = Vec::with_capacity(list.len());
            sums.sum(bound, [&list[..]], &mut summed);
            *list = summed;
        }
    }

    /// Records that `ad` has `clicks` (> 0) under `f`, for restoring a
    /// snapshot: the caller sees to it that no (filter, ad) comes twice.
    pub(crate) fn push(&mut self, f: FilterId, ad: AdHandle, clicks: u64) {
        let i = self.index_of(f);
        self.by_filter[i].1.push((ad, clicks));
    }

    /// Where `f`'s list is, created empty where it belongs if missing.
    fn index_of(&mut self, f: FilterId) -> usize {
        match self.by_filter.binary_search_by_key(&f, |(g, _)| *g) {
            Ok(i) => i,
            Err(i) => {
                self.by_filter.insert(i, (f, Vec::new()));
                i
            }
        }
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

    /// Partitions finalizing one minute: once settled, an ad counted by
    /// several has the sum, once per filter, and the scratch is left all
    /// zero.
    #[test]
    fn partitions_of_a_minute_sum_by_ad_and_filter() {
        let mut sums = Sums::default();
        let mut m = FinalMinute::default();
        m.add(&cells(&[(0, 1, 2), (0, 2, 5), (4, 1, 1)]));
        m.settle(&mut sums, 8);
        assert!(!m.unsettled, "one partition lists each ad once");
        m.add(&cells(&[(0, 2, 3), (0, 7, 1), (2, 7, 1)]));
        m.add(&cells(&[(4, 1, 6)]));
        assert!(m.unsettled);
        m.settle(&mut sums, 8);
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
