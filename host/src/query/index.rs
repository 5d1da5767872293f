//! The recent final minutes in memory, so that the dashboards' polling of
//! API 1 never reaches ClickHouse.
//!
//! A minute is loaded once it is final at every partition's watermark (its
//! rollups are all written and no click can change them) and kept while it
//! is among the last `minutes` final ones. What can still change a final
//! minute is a rollup set switched in or dropped (`adtally replay`): every
//! change of `rollup_sets` reloads exactly the cached minutes of the
//! changed sets' ranges. Rows a window re-emits within its allowed
//! lateness are never cached: the window is not final until its lateness
//! has passed.

use super::read::{Finality, Ranking, Reader};
use super::{Minutes, PopularRequest, Source, ranked};
use adtally_core::{FilterId, WindowStart};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

type Fast<K, V> = HashMap<K, V, ahash::RandomState>;

/// How much the index holds and how often it looks for changes.
#[derive(Clone, Copy, Debug)]
pub struct IndexOptions {
    /// Final minutes kept.
    pub minutes: u32,
    /// Time between two looks at the watermarks and the rollup sets.
    pub refresh: Duration,
}

/// The final minutes in memory (see the module docs).
pub struct Index {
    options: IndexOptions,
    window_ms: i64,
    state: RwLock<State>,
}

#[derive(Default)]
struct State {
    finality: Option<Finality>,
    /// Minutes loaded, contiguous, ending at the first minute not final.
    minutes: BTreeMap<WindowStart, Minute>,
    /// Ad ids by number, and their numbers.
    names: Vec<Arc<str>>,
    numbers: Fast<Arc<str>, u32>,
    /// Sets of module hashes, by number.
    module_sets: Vec<Vec<String>>,
    module_numbers: HashMap<Vec<String>, u32>,
    /// The newest change of `rollup_sets` seen (ms).
    sets_seen_ms: i64,
    /// Rankings answered since the minutes last changed, and how many
    /// times they changed (an answer computed before a change is not kept).
    rankings: HashMap<(u32, u32, i64, u32), Ranking>,
    generation: u64,
}

#[derive(Default)]
struct Minute {
    /// (ad number << 32 | filter) -> (clicks, module set).
    cells: Fast<u64, (u64, u32)>,
}

fn cell(ad: u32, filter: FilterId) -> u64 {
    (u64::from(ad) << 32) | u64::from(filter.0)
}

impl Index {
    /// An empty index of windows of `window_ms`; [`Index::run`] fills it.
    pub fn new(options: IndexOptions, window_ms: i64) -> Arc<Index> {
        Arc::new(Index {
            options,
            window_ms,
            state: RwLock::new(State::default()),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Finality as last refreshed.
    pub fn finality(&self) -> Option<Finality> {
        self.read().finality.clone()
    }

    /// The part of `m` held, and `ad`'s clicks under `filter` in each of
    /// its minutes that had any, with the modules that computed them: read
    /// under one lock, so that a minute dropped meanwhile is in neither.
    pub fn series(&self, ad: &str, filter: FilterId, m: Minutes) -> Option<Held> {
        let s = self.read();
        let part = intersect(m, held(&s, self.window_ms)?)?;
        let Some(&n) = s.numbers.get(ad) else {
            return Some((part, Vec::new(), Vec::new()));
        };
        let key = cell(n, filter);
        let (mut clicks, mut sets) = (Vec::new(), Vec::new());
        for (w, minute) in s.minutes.range(part.from..part.to) {
            if let Some(&(c, set)) = minute.cells.get(&key) {
                clicks.push((*w, c));
                if !sets.contains(&set) {
                    sets.push(set);
                }
            }
        }
        let modules = sets
            .into_iter()
            .flat_map(|i| s.module_sets[i as usize].iter().cloned())
            .collect();
        Some((part, clicks, modules))
    }

    /// The `n` most clicked ads of `m` under `filter`, when the index holds
    /// all of `m` (the core's ranking of the summed minutes).
    pub(super) fn rank(&self, filter: FilterId, m: Minutes, n: u32) -> Option<Ranking> {
        let s = self.read();
        let h = held(&s, self.window_ms)?;
        if !(h.from <= m.from && m.to <= h.to) {
            return None;
        }
        let mut sums: Fast<u32, u64> = Fast::default();
        let mut sets = Vec::new();
        for (_, minute) in s.minutes.range(m.from..m.to) {
            for (&key, &(c, set)) in &minute.cells {
                if key as u32 == filter.0 {
                    *sums.entry((key >> 32) as u32).or_default() += c;
                    if !sets.contains(&set) {
                        sets.push(set);
                    }
                }
            }
        }
        let ads = sums
            .into_iter()
            .map(|(ad, c)| (s.names[ad as usize].to_string(), c))
            .collect();
        let (ads, counts) = ranked(ads, n).ok()?;
        let mut modules: Vec<String> = sets
            .into_iter()
            .flat_map(|i| s.module_sets[i as usize].iter().cloned())
            .collect();
        modules.sort();
        modules.dedup();
        Some(Ranking {
            ads,
            counts,
            source: Source::Memory,
            modules,
        })
    }

    /// A ranking answered since the minutes last changed, or the
    /// generation an answer computed now must be kept under.
    pub(super) fn cached_popular(&self, req: &PopularRequest, m: Minutes) -> Result<Ranking, u64> {
        let s = self.read();
        s.rankings
            .get(&(req.window, req.filter.0, m.to.0, req.count))
            .cloned()
            .ok_or(s.generation)
    }

    /// Keeps a ranking of final minutes computed in `generation`, unless
    /// the minutes changed since.
    pub(super) fn cache_popular(
        &self,
        generation: u64,
        req: &PopularRequest,
        m: Minutes,
        r: &Ranking,
    ) {
        let mut s = self.write();
        let final_to = s.finality.as_ref().and_then(|f| f.final_to);
        if s.generation != generation || final_to.is_none_or(|f| m.to > f) {
            return;
        }
        if s.rankings.len() > 10_000 {
            s.rankings.clear();
        }
        s.rankings
            .insert((req.window, req.filter.0, m.to.0, req.count), r.clone());
    }

    /// Refreshes for ever, every `refresh`; a failed refresh is logged and
    /// tried again (answers meanwhile come from what is held, or ClickHouse).
    pub async fn run(self: Arc<Index>, reader: Reader) {
        loop {
            if let Err(e) = self.refresh(&reader).await {
                tracing::warn!("refreshing the final minutes in memory: {e}");
            }
            tokio::time::sleep(self.options.refresh).await;
        }
    }

    /// One minute's cells, read and numbered.
    async fn load(&self, reader: &Reader, at: WindowStart) -> Result<Minute, super::QueryError> {
        let rows = reader
            .cells(Minutes {
                from: at,
                to: WindowStart(at.0 + self.window_ms),
            })
            .await?;
        let mut minute = Minute::default();
        minute.cells.reserve(rows.len());
        let mut s = self.write();
        for r in rows {
            let ad = s.number(&r.ad_id);
            let set = s.module_set(r.modules);
            minute
                .cells
                .insert(cell(ad, FilterId(r.filter_id)), (r.clicks, set));
        }
        Ok(minute)
    }

    /// One look: the watermarks, the rollup sets changed, and the minutes
    /// that became final (loaded) or passed the horizon (dropped). The
    /// held minutes stay contiguous: a changed set's minutes are loaded
    /// anew and replace the old ones in one step, so no answer sees a gap.
    pub async fn refresh(&self, reader: &Reader) -> Result<(), super::QueryError> {
        let finality = reader.read_finality().await?;
        let since = self.read().sets_seen_ms;
        let (changed, newest) = reader.sets_changed(since).await?;
        let window = self.window_ms;
        let Some(final_to) = finality.final_to else {
            self.write().finality = Some(finality);
            return Ok(());
        };
        let horizon = WindowStart(final_to.0 - i64::from(self.options.minutes) * window);
        let held = {
            let mut s = self.write();
            s.minutes.retain(|w, _| *w >= horizon && *w < final_to);
            let first = s.minutes.keys().next().copied();
            let last = s.minutes.keys().next_back().copied();
            first.zip(last).map(|(from, last)| Minutes {
                from,
                to: WindowStart(last.0 + window),
            })
        };
        // What to load: the changed sets' held minutes (to replace, all at
        // once), and the final minutes not held yet (before and after those
        // held: added as they arrive, each next to the held ones).
        let mut replace: Vec<Minutes> = Vec::new();
        // (minutes, loaded newest first)
        let mut add: Vec<(Minutes, bool)> = Vec::new();
        match held {
            // The newest first: the minutes dashboards poll.
            None => add.push((
                Minutes {
                    from: horizon,
                    to: final_to,
                },
                true,
            )),
            Some(h) => {
                for r in &changed {
                    replace.push(Minutes {
                        from: r.from.max(h.from),
                        to: r.to.min(h.to),
                    });
                }
                // Backwards from the first held minute, forwards from the last.
                add.push((
                    Minutes {
                        from: h.to,
                        to: final_to,
                    },
                    false,
                ));
                add.push((
                    Minutes {
                        from: horizon,
                        to: h.from,
                    },
                    true,
                ));
            }
        }
        let mut replaced: BTreeMap<WindowStart, Minute> = BTreeMap::new();
        for m in replace.iter().filter(|m| m.from < m.to) {
            let mut at = m.from;
            while at < m.to {
                replaced.insert(at, self.load(reader, at).await?);
                at = WindowStart(at.0 + window);
            }
        }
        let mut loaded = !replaced.is_empty();
        for (m, newest_first) in add.iter().filter(|(m, _)| m.from < m.to) {
            // A minute a query, each within the reader's timeout, however
            // many are due (a start loads all of them).
            let mut minutes: Vec<WindowStart> = (0..)
                .map(|k| WindowStart(m.from.0 + k * window))
                .take_while(|w| *w < m.to)
                .collect();
            if *newest_first {
                minutes.reverse();
            }
            for at in minutes {
                let minute = self.load(reader, at).await?;
                self.write().minutes.insert(at, minute);
                loaded = true;
            }
        }
        let mut s = self.write();
        let moved = s.finality.as_ref().and_then(|f| f.final_to) != Some(final_to);
        if loaded || moved || !changed.is_empty() {
            s.rankings.clear();
            s.generation += 1;
        }
        // The changed sets' minutes, replaced in one step.
        s.minutes.append(&mut replaced);
        s.sets_seen_ms = newest;
        s.finality = Some(finality);
        Ok(())
    }
}

/// What the index holds of a range for an ad: the part held, the clicks
/// of each of its minutes that had any, and the modules that computed them.
pub type Held = (Minutes, Vec<(WindowStart, u64)>, Vec<String>);

/// The minutes held, `[first, last + 1)`.
fn held(s: &State, window_ms: i64) -> Option<Minutes> {
    let from = *s.minutes.keys().next()?;
    let last = *s.minutes.keys().next_back()?;
    Some(Minutes {
        from,
        to: WindowStart(last.0 + window_ms),
    })
}

fn intersect(a: Minutes, b: Minutes) -> Option<Minutes> {
    let m = Minutes {
        from: a.from.max(b.from),
        to: a.to.min(b.to),
    };
    (m.from < m.to).then_some(m)
}

impl State {
    fn number(&mut self, ad: &str) -> u32 {
        if let Some(&n) = self.numbers.get(ad) {
            return n;
        }
        let n = self.names.len() as u32;
        let name: Arc<str> = Arc::from(ad);
        self.names.push(name.clone());
        self.numbers.insert(name, n);
        n
    }

    fn module_set(&mut self, mut modules: Vec<String>) -> u32 {
        modules.sort();
        if let Some(&n) = self.module_numbers.get(&modules) {
            return n;
        }
        let n = self.module_sets.len() as u32;
        self.module_sets.push(modules.clone());
        self.module_numbers.insert(modules, n);
        n
    }
}
