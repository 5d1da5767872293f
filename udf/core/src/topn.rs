//! Ranking ads: exact top-N and the merge of top-N lists.
//!
//! Order: clicks descending, then ad_id ascending (byte order).

use crate::AdId;
use alloc::collections::BinaryHeap;
use alloc::vec::Vec;
use core::cmp::Ordering;
use core::fmt;
use serde::{Deserialize, Serialize};

/// An ad and its clicks in a ranking.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RankedAd {
    /// The ad.
    pub ad_id: AdId,
    /// Its clicks over the ranking's windows.
    pub clicks: u64,
}

/// The ranking order: better ads compare as `Less`.
pub fn rank_order(a: &RankedAd, b: &RankedAd) -> Ordering {
    b.clicks.cmp(&a.clicks).then_with(|| a.ad_id.cmp(&b.ad_id))
}

struct ByRank(RankedAd);
impl PartialEq for ByRank {
    fn eq(&self, o: &Self) -> bool {
        rank_order(&self.0, &o.0) == Ordering::Equal
    }
}
impl Eq for ByRank {}
impl PartialOrd for ByRank {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for ByRank {
    fn cmp(&self, o: &Self) -> Ordering {
        rank_order(&self.0, &o.0)
    }
}

/// The best `n` ads of `ads` (each ad at most once), best first.
///
/// ```
/// use adtally_core::{AdId, topn::{top_n, RankedAd}};
/// let ad = |s: &str, c| (AdId::new(s).unwrap(), c);
/// let top = top_n([ad("b", 5), ad("a", 5), ad("c", 9), ad("d", 1)], 3);
/// let ids: Vec<_> = top.iter().map(|r| r.ad_id.as_str()).collect();
/// assert_eq!(ids, ["c", "a", "b"]);
/// ```
pub fn top_n(ads: impl IntoIterator<Item = (AdId, u64)>, n: usize) -> Vec<RankedAd> {
    if n == 0 {
        return Vec::new();
    }
    // A max-heap on rank order keeps the worst of the best n on top.
    let mut heap: BinaryHeap<ByRank> = BinaryHeap::with_capacity(n + 1);
    for (ad_id, clicks) in ads {
        let cand = RankedAd { ad_id, clicks };
        if heap.len() < n {
            heap.push(ByRank(cand));
        } else if let Some(worst) = heap.peek() {
            if rank_order(&cand, &worst.0) == Ordering::Less {
                heap.pop();
                heap.push(ByRank(cand));
            }
        }
    }
    let mut v: Vec<RankedAd> = heap.into_iter().map(|b| b.0).collect();
    v.sort_by(rank_order);
    v
}

/// Two lists given to [`merge`] name the same ad: the lists were not
/// computed over disjoint ad sets, so their merge would not be exact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverlapError {
    /// The ad found in more than one list.
    pub ad_id: AdId,
}

impl fmt::Display for OverlapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ad `{}` appears in more than one top-N list; merge needs lists over disjoint ad sets",
            self.ad_id
        )
    }
}

#[cfg(feature = "std")]
impl std::error::Error for OverlapError {}

/// Merges top-N lists computed over disjoint ad sets (one per partition or
/// host of an ad-keyed topic) into the exact top `n` of their union. Each
/// list must hold the top `>= n` of its set (or the whole set).
///
/// ```
/// use adtally_core::{AdId, topn::{merge, RankedAd}};
/// let r = |s: &str, c| RankedAd { ad_id: AdId::new(s).unwrap(), clicks: c };
/// let merged = merge(&[vec![r("a", 9), r("b", 3)], vec![r("c", 3), r("d", 1)]], 3).unwrap();
/// assert_eq!(merged, vec![r("a", 9), r("b", 3), r("c", 3)]);
/// assert!(merge(&[vec![r("a", 1)], vec![r("a", 2)]], 3).is_err());
/// ```
pub fn merge(lists: &[Vec<RankedAd>], n: usize) -> Result<Vec<RankedAd>, OverlapError> {
    let mut all: Vec<&RankedAd> = lists.iter().flatten().collect();
    all.sort_by(|a, b| a.ad_id.cmp(&b.ad_id));
    if let Some(w) = all.windows(2).find(|w| w[0].ad_id == w[1].ad_id) {
        return Err(OverlapError {
            ad_id: w[0].ad_id.clone(),
        });
    }
    let mut v: Vec<RankedAd> = all.into_iter().cloned().collect();
    v.sort_by(rank_order);
    v.truncate(n);
    Ok(v)
}
