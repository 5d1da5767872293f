//! Ranking ads: exact top-N and the merge of top-N lists.
//!
//! Order: clicks descending, then ad_id ascending (byte order).

use crate::AdId;
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
    let ads: Vec<(AdId, u64)> = ads.into_iter().collect();
    let mut keyed: Vec<(usize, u64)> = ads.iter().map(|(_, c)| *c).enumerate().collect();
    top_n_keyed(&mut keyed, n, |i| &ads[i].0)
}

/// [`top_n`] of ads named by keys (each key at most once): `id_of` is
/// asked only for the keys that may win, those with at least the n-th best
/// count, so ranking many ads reads few ids. `ads` is reordered.
pub(crate) fn top_n_keyed<'a, K: Copy>(
    ads: &mut [(K, u64)],
    n: usize,
    id_of: impl Fn(K) -> &'a AdId,
) -> Vec<RankedAd> {
    if n == 0 || ads.is_empty() {
        return Vec::new();
    }
    if ads.len() > n {
        // The n best counts first; every key with the n-th count may win.
        ads.select_nth_unstable_by(n - 1, |a, b| b.1.cmp(&a.1));
    }
    let (head, tail) = ads.split_at(n.min(ads.len()));
    let cut = head.iter().map(|a| a.1).min().unwrap_or(0);
    let mut candidates: Vec<(&AdId, u64)> = head
        .iter()
        .chain(tail.iter().filter(|a| a.1 == cut))
        .map(|&(k, c)| (id_of(k), c))
        .collect();
    candidates.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    candidates.truncate(n);
    candidates
        .into_iter()
        .map(|(a, clicks)| RankedAd {
            ad_id: a.clone(),
            clicks,
        })
        .collect()
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
    // Linear work: one hash per entry to refuse overlaps, a selection of the
    // best n, and a sort of those n only.
    let total = lists.iter().map(Vec::len).sum();
    let mut seen: hashbrown::HashSet<&str, crate::intern::FastHash> =
        hashbrown::HashSet::with_capacity_and_hasher(total, Default::default());
    let mut all: Vec<&RankedAd> = Vec::with_capacity(total);
    for r in lists.iter().flatten() {
        if !seen.insert(r.ad_id.as_str()) {
            return Err(OverlapError {
                ad_id: r.ad_id.clone(),
            });
        }
        all.push(r);
    }
    let order = |a: &&RankedAd, b: &&RankedAd| rank_order(a, b);
    if all.len() > n && n > 0 {
        all.select_nth_unstable_by(n - 1, order);
    }
    all.truncate(n);
    all.sort_unstable_by(order);
    Ok(all.into_iter().cloned().collect())
}

/// [`merge`] over `(ad_id, clicks)` pairs as they arrive from SQL or
/// JavaScript: checks every ad id first, and names the one that is not valid.
pub fn merge_pairs(
    lists: &[Vec<(alloc::string::String, u64)>],
    n: usize,
) -> Result<Vec<RankedAd>, alloc::string::String> {
    let lists = lists
        .iter()
        .map(|l| {
            l.iter()
                .map(|(a, clicks)| {
                    AdId::new(a)
                        .map(|ad_id| RankedAd {
                            ad_id,
                            clicks: *clicks,
                        })
                        .map_err(|e| alloc::format!("ad_id {a:?}: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .collect::<Result<Vec<_>, _>>()?;
    merge(&lists, n).map_err(|e| alloc::format!("{e}"))
}
