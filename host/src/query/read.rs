//! The questions asked of ClickHouse (and of the [`Index`] of final minutes
//! where it holds them).

use super::index::Index;
use super::{
    Catalog, CountAnswer, CountRequest, Minutes, MinutesAnswer, PartitionRanking, PopularAnswer,
    PopularRequest, QueryError, RankingsAnswer, Source, minute_text, ranked,
};
use adtally_core::{RankedAd, WindowStart, topn};
use clickhouse::{Client, Row};
use serde::Deserialize;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Where finality stands: each partition's watermark, as the hosts last
/// recorded it with their offsets, and the first minute not final in all.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Finality {
    /// (topic, partition, `W_p`).
    pub partitions: Vec<(String, u32, Option<i64>)>,
    /// The first window not final (see [`Catalog::final_to`]).
    pub final_to: Option<WindowStart>,
}

/// Answers the two questions.
#[derive(Clone)]
pub struct Reader {
    pub(super) client: Client,
    pub(super) db: String,
    pub(super) catalog: Arc<Catalog>,
    timeout: Duration,
    index: Option<Arc<Index>>,
}

#[derive(Row, Deserialize)]
struct PartitionRow {
    topic: String,
    partition: u32,
    watermark_ms: Option<i64>,
}

#[derive(Row, Deserialize)]
struct SumRow {
    clicks: u64,
    modules: Vec<String>,
}

#[derive(Row, Deserialize)]
struct AdRow {
    ad_id: String,
    clicks: u64,
    modules: Vec<String>,
}

#[derive(Row, Deserialize)]
struct RankingRow {
    most_clicked_ads: Vec<(String, u64)>,
    modules: Vec<String>,
}

/// A cell of a final minute, as the index loads it.
#[derive(Row, Deserialize)]
pub(super) struct CellRow {
    pub(super) ad_id: String,
    pub(super) filter_id: u32,
    pub(super) clicks: u64,
    pub(super) modules: Vec<String>,
}

/// No minutes: what `IN_RANGE` skips when nothing comes from memory.
const NOTHING: Minutes = Minutes {
    from: WindowStart(0),
    to: WindowStart(0),
};

/// `[from, to)` of `window_start`, and not `[skip_from, skip_to)` (the
/// minutes answered from memory), as bound parameters.
const IN_RANGE: &str = "window_start >= fromUnixTimestamp64Milli({from:Int64}, 'UTC') \
     AND window_start < fromUnixTimestamp64Milli({to:Int64}, 'UTC') \
     AND NOT (window_start >= fromUnixTimestamp64Milli({skip_from:Int64}, 'UTC') \
              AND window_start < fromUnixTimestamp64Milli({skip_to:Int64}, 'UTC'))";

impl Reader {
    /// A reader of database `db`; every ClickHouse call gives up after
    /// `timeout`. With an index, final minutes it holds come from memory.
    pub fn new(client: Client, db: &str, catalog: Catalog, timeout: Duration) -> Reader {
        Reader {
            client,
            db: db.to_owned(),
            catalog: Arc::new(catalog),
            timeout,
            index: None,
        }
    }

    /// This reader, answering final minutes from `index`.
    pub fn with_index(mut self, index: Arc<Index>) -> Reader {
        self.index = Some(index);
        self
    }

    /// The catalog requests are checked against.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The index, if any.
    pub fn index(&self) -> Option<&Arc<Index>> {
        self.index.as_ref()
    }

    /// `f` within the timeout, its failure as [`QueryError::Unavailable`].
    pub(super) async fn bounded<T>(
        &self,
        what: &str,
        f: impl Future<Output = clickhouse::error::Result<T>>,
    ) -> Result<T, QueryError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(QueryError::Unavailable(format!("{what}: {e}"))),
            Err(_) => Err(QueryError::Unavailable(format!(
                "{what}: no answer within {:?}",
                self.timeout
            ))),
        }
    }

    /// Each partition's watermark and the first minute not final, read now.
    pub async fn read_finality(&self) -> Result<Finality, QueryError> {
        let sql = format!(
            "SELECT topic, partition, argMax(tuple(watermark_ms), next_offset).1 AS watermark_ms \
             FROM {}.consumer_offsets GROUP BY topic, partition ORDER BY topic, partition",
            self.db
        );
        let rows: Vec<PartitionRow> = self
            .bounded(
                "reading the partitions' watermarks",
                self.client.query(&sql).fetch_all(),
            )
            .await?;
        let final_to = self.catalog.final_to(rows.iter().map(|r| r.watermark_ms));
        Ok(Finality {
            partitions: rows
                .into_iter()
                .map(|r| (r.topic, r.partition, r.watermark_ms))
                .collect(),
            final_to,
        })
    }

    /// Finality as the index last saw it, or read now.
    pub async fn finality(&self) -> Result<Finality, QueryError> {
        match self.index.as_ref().and_then(|i| i.finality()) {
            Some(f) => Ok(f),
            None => self.read_finality().await,
        }
    }

    /// API 1.
    pub async fn count(&self, req: &CountRequest) -> Result<CountAnswer, QueryError> {
        let finality = self.finality().await?;
        let m = req.minutes;
        let (count, modules, source) = if let Some(spec) = &req.ad_hoc {
            let (count, modules) = self.count_raw(req, spec).await?;
            (count, modules, Source::RawEvents)
        } else {
            let held = self
                .index
                .as_ref()
                .and_then(|i| i.series(req.ad.as_str(), req.filter, m));
            let memory = held.as_ref().map(|h| h.0);
            let (mut count, mut modules) = match held {
                Some((_, clicks, modules)) => (clicks.iter().map(|c| c.1).sum(), modules),
                None => (0, Vec::new()),
            };
            let rest = memory != Some(m);
            if rest {
                let skip = memory.unwrap_or(NOTHING);
                let sql = format!(
                    "SELECT sum(clicks) AS clicks, groupUniqArrayArray(modules) AS modules \
                     FROM {}.clicks_per_minute \
                     WHERE ad_id = {{ad:String}} AND filter_id = {{filter:UInt32}} AND {IN_RANGE}",
                    self.db
                );
                let q = self
                    .client
                    .query(&sql)
                    .param("ad", req.ad.as_str())
                    .param("filter", req.filter.0);
                let row: SumRow = self
                    .bounded("reading the rollups", bind_range(q, m, skip).fetch_one())
                    .await?;
                count += row.clicks;
                modules.extend(row.modules);
            }
            let source = match (memory.is_some(), rest) {
                (true, false) => Source::Memory,
                (true, true) => Source::MemoryAndRollups,
                _ => Source::Rollups,
            };
            (count, modules, source)
        };
        Ok(CountAnswer {
            ad_id: req.ad.as_str().to_owned(),
            count,
            from: minute_text(m.from),
            to: minute_text(m.to),
            filter: req.filter.0,
            ad_hoc: req.ad_hoc.as_ref().map(
                |s| serde_json::json!({"country": s.country, "ip": s.ip, "user_id": s.user_id}),
            ),
            source,
            final_to: finality.final_to.map(minute_text),
            complete: finality.final_to.is_some_and(|f| m.to <= f),
            modules: sorted(modules),
        })
    }

    /// Distinct event keys of the raw events the ad-hoc dimensions (and the
    /// configured filter) admit, as the core's filter matching says.
    async fn count_raw(
        &self,
        req: &CountRequest,
        spec: &adtally_core::FilterSpec,
    ) -> Result<(u64, Vec<String>), QueryError> {
        let sql = format!(
            "SELECT uniqExact(event_key) AS clicks, \
                    [ifNull(({}), '')] AS modules \
             FROM {}.raw_events \
             WHERE ad_id = {{ad:String}} AND {IN_RANGE} \
               AND hasAll(adtally_filter_ids({{specs:String}}, country, ip, user_id), {{both:Array(UInt32)}})",
            crate::reconcile::BATCH_MODULE,
            self.db
        );
        // The configured filter's spec and the ad-hoc one (under an id of
        // its own): a click counts when the core says it matches both.
        let ad_hoc_id = if req.filter.0 == 1 { 2 } else { 1 };
        let mut specs: Vec<adtally_core::FilterSpec> = self
            .catalog
            .config()
            .filters
            .iter()
            .filter(|f| f.id == req.filter.0)
            .cloned()
            .collect();
        specs.push(adtally_core::FilterSpec {
            id: ad_hoc_id,
            ..spec.clone()
        });
        let specs_json = serde_json::to_string(&specs).unwrap_or_default();
        let q = self
            .client
            .query(&sql)
            .param("ad", req.ad.as_str())
            .param("specs", specs_json.as_str())
            .param("both", vec![req.filter.0, ad_hoc_id]);
        let row: SumRow = self
            .bounded(
                "reading the raw events",
                bind_range(q, req.minutes, NOTHING).fetch_one(),
            )
            .await?;
        Ok((row.clicks, row.modules))
    }

    /// API 2: the last `window` final minutes (up to the current minute
    /// while nothing is final yet).
    pub async fn popular(&self, req: &PopularRequest) -> Result<PopularAnswer, QueryError> {
        let finality = self.finality().await?;
        let size = self.catalog.window_ms();
        let to = match finality.final_to {
            Some(f) => f,
            None => self
                .catalog
                .window_size()
                .window_of(adtally_core::EventTime(now_ms())),
        };
        let m = Minutes {
            from: WindowStart(to.0.saturating_sub(i64::from(req.window) * size)),
            to,
        };
        let generation = match self.index.as_ref().map(|i| i.cached_popular(req, m)) {
            Some(Ok(cached)) => return Ok(self.popular_answer(req, m, &finality, cached)),
            Some(Err(generation)) => generation,
            None => 0,
        };
        let single_topic = {
            let mut topics: Vec<&str> = finality.partitions.iter().map(|p| p.0.as_str()).collect();
            topics.dedup();
            topics.len() <= 1
        };
        let answer = if self.catalog.precomputed(req.window, req.count) && single_topic {
            let sql = format!(
                "SELECT most_clicked_ads, modules FROM {}.top_ads \
                 WHERE window_minutes = {{window:UInt32}} AND filter_id = {{filter:UInt32}} \
                   AND update_time_minute = fromUnixTimestamp64Milli({{minute:Int64}}, 'UTC')",
                self.db
            );
            let q = self
                .client
                .query(&sql)
                .param("window", req.window)
                .param("filter", req.filter.0)
                .param("minute", to.0.saturating_sub(size));
            let rows: Vec<RankingRow> = self.bounded("reading the rankings", q.fetch_all()).await?;
            let mut modules = Vec::new();
            let mut lists: Vec<Vec<RankedAd>> = Vec::new();
            for r in rows {
                modules.extend(r.modules);
                lists.push(checked(r.most_clicked_ads)?);
            }
            let best = topn::merge(&lists, req.count as usize)
                .map_err(|e| QueryError::Unavailable(format!("rankings overlap: {e:?}")))?;
            let (ads, counts) = best
                .into_iter()
                .map(|r| (r.ad_id.as_str().to_owned(), r.clicks))
                .unzip();
            Ranking {
                ads,
                counts,
                source: Source::TopAds,
                modules: sorted(modules),
            }
        } else if let Some(r) = self
            .index
            .as_ref()
            .and_then(|i| i.rank(req.filter, m, req.count))
        {
            r
        } else {
            // Every ad with as many clicks as the count-th, ties included,
            // then the core's ranking of those.
            let sql = format!(
                "SELECT ad_id, sum(clicks) AS clicks, groupUniqArrayArray(modules) AS modules \
                 FROM {}.clicks_per_minute \
                 WHERE filter_id = {{filter:UInt32}} AND {IN_RANGE} \
                 GROUP BY ad_id ORDER BY clicks DESC LIMIT {{count:UInt32}} WITH TIES",
                self.db
            );
            let q = self
                .client
                .query(&sql)
                .param("filter", req.filter.0)
                .param("count", req.count);
            let rows: Vec<AdRow> = self
                .bounded("ranking the rollups", bind_range(q, m, NOTHING).fetch_all())
                .await?;
            let modules = sorted(
                rows.iter()
                    .flat_map(|r| r.modules.iter().cloned())
                    .collect(),
            );
            let (ads, counts) = ranked(
                rows.into_iter().map(|r| (r.ad_id, r.clicks)).collect(),
                req.count,
            )?;
            Ranking {
                ads,
                counts,
                source: Source::Rollups,
                modules,
            }
        };
        if let Some(index) = &self.index {
            index.cache_popular(generation, req, m, &answer);
        }
        Ok(self.popular_answer(req, m, &finality, answer))
    }

    fn popular_answer(
        &self,
        req: &PopularRequest,
        m: Minutes,
        finality: &Finality,
        r: Ranking,
    ) -> PopularAnswer {
        PopularAnswer {
            ad_ids: r.ads,
            counts: r.counts,
            window: req.window,
            filter: req.filter.0,
            from: minute_text(m.from),
            to: minute_text(m.to),
            source: r.source,
            final_to: finality.final_to.map(minute_text),
            modules: r.modules,
        }
    }

    /// An ad's clicks per minute in `req`'s range (ad-hoc dimensions are
    /// not asked of a chart: refused by the caller).
    pub async fn minutes(&self, req: &CountRequest) -> Result<MinutesAnswer, QueryError> {
        let finality = self.finality().await?;
        let m = req.minutes;
        let size = self.catalog.window_ms();
        let mut series: std::collections::BTreeMap<i64, u64> = std::collections::BTreeMap::new();
        let mut at = m.from.0;
        while at < m.to.0 {
            series.insert(at, 0);
            at += size;
        }
        let held = self
            .index
            .as_ref()
            .and_then(|i| i.series(req.ad.as_str(), req.filter, m));
        let memory = held.as_ref().map(|h| h.0);
        let mut modules = Vec::new();
        if let Some((_, clicks, mods)) = held {
            for (w, c) in clicks {
                series.insert(w.0, c);
            }
            modules = mods;
        }
        if memory != Some(m) {
            #[derive(Row, Deserialize)]
            struct MinuteRow {
                window_ms: i64,
                clicks: u64,
                modules: Vec<String>,
            }
            let skip = memory.unwrap_or(NOTHING);
            let sql = format!(
                "SELECT toUnixTimestamp64Milli(window_start) AS window_ms, sum(clicks) AS clicks, \
                        groupUniqArrayArray(modules) AS modules \
                 FROM {}.clicks_per_minute \
                 WHERE ad_id = {{ad:String}} AND filter_id = {{filter:UInt32}} AND {IN_RANGE} \
                 GROUP BY window_ms ORDER BY window_ms",
                self.db
            );
            let q = self
                .client
                .query(&sql)
                .param("ad", req.ad.as_str())
                .param("filter", req.filter.0);
            let rows: Vec<MinuteRow> = self
                .bounded("reading the rollups", bind_range(q, m, skip).fetch_all())
                .await?;
            for r in rows {
                series.insert(r.window_ms, r.clicks);
                modules.extend(r.modules);
            }
        }
        Ok(MinutesAnswer {
            ad_id: req.ad.as_str().to_owned(),
            filter: req.filter.0,
            from: minute_text(m.from),
            to: minute_text(m.to),
            minutes: series.into_iter().collect(),
            final_to: finality.final_to.map(minute_text),
            modules: sorted(modules),
        })
    }

    /// Each partition's ranking of the last final minute over `window`
    /// minutes (a window the core precomputes), unmerged.
    pub async fn rankings(&self, req: &PopularRequest) -> Result<RankingsAnswer, QueryError> {
        #[derive(Row, Deserialize)]
        struct ListRow {
            topic: String,
            source_partition: u32,
            ads: Vec<(String, u64)>,
            module: String,
        }
        let finality = self.finality().await?;
        let top_n = self.catalog.config().top_n;
        let Some(to) = finality.final_to else {
            return Ok(RankingsAnswer {
                window: req.window,
                filter: req.filter.0,
                minute: None,
                top_n,
                lists: Vec::new(),
            });
        };
        let minute = WindowStart(to.0 - self.catalog.window_ms());
        let sql = format!(
            "SELECT topic, source_partition, ads, module FROM {}.top_ads_by_partition \
             WHERE window_minutes = {{window:UInt32}} AND filter_id = {{filter:UInt32}} \
               AND update_time_minute = fromUnixTimestamp64Milli({{minute:Int64}}, 'UTC') \
             ORDER BY topic, source_partition",
            self.db
        );
        let q = self
            .client
            .query(&sql)
            .param("window", req.window)
            .param("filter", req.filter.0)
            .param("minute", minute.0);
        let rows: Vec<ListRow> = self.bounded("reading the rankings", q.fetch_all()).await?;
        Ok(RankingsAnswer {
            window: req.window,
            filter: req.filter.0,
            minute: Some(minute_text(minute)),
            top_n,
            lists: rows
                .into_iter()
                .map(|r| PartitionRanking {
                    topic: r.topic,
                    partition: r.source_partition,
                    ads: r.ads,
                    module: r.module,
                })
                .collect(),
        })
    }

    /// The cells of every minute in `m`, for the index.
    pub(super) async fn cells(&self, m: Minutes) -> Result<Vec<CellRow>, QueryError> {
        let sql = format!(
            "SELECT ad_id, filter_id, clicks, modules \
             FROM {}.clicks_per_minute WHERE {IN_RANGE}",
            self.db
        );
        let q = bind_range(self.client.query(&sql), m, NOTHING);
        self.bounded("loading final minutes", q.fetch_all()).await
    }

    /// The ranges of the rollup sets changed after `since_ms` (a switch,
    /// a drop), and the newest change's time.
    pub(super) async fn sets_changed(
        &self,
        since_ms: i64,
    ) -> Result<(Vec<Minutes>, i64), QueryError> {
        #[derive(Row, Deserialize)]
        struct Changed {
            from_ms: i64,
            to_ms: i64,
            changed_ms: i64,
        }
        let sql = format!(
            "SELECT toUnixTimestamp64Milli(range_from) AS from_ms, \
                    toUnixTimestamp64Milli(range_to) AS to_ms, \
                    toUnixTimestamp64Milli(changed_at) AS changed_ms \
             FROM {}.rollup_sets WHERE changed_at > fromUnixTimestamp64Milli({{since:Int64}}, 'UTC')",
            self.db
        );
        let rows: Vec<Changed> = self
            .bounded(
                "reading the rollup sets",
                self.client.query(&sql).param("since", since_ms).fetch_all(),
            )
            .await?;
        let newest = rows.iter().map(|r| r.changed_ms).max().unwrap_or(since_ms);
        Ok((
            rows.into_iter()
                .map(|r| Minutes {
                    from: WindowStart(r.from_ms),
                    to: WindowStart(r.to_ms),
                })
                .collect(),
            newest,
        ))
    }
}

/// A ranking and where it came from.
#[derive(Clone, Debug)]
pub(super) struct Ranking {
    pub(super) ads: Vec<String>,
    pub(super) counts: Vec<u64>,
    pub(super) source: Source,
    pub(super) modules: Vec<String>,
}

fn bind_range(q: clickhouse::query::Query, m: Minutes, skip: Minutes) -> clickhouse::query::Query {
    q.param("from", m.from.0)
        .param("to", m.to.0)
        .param("skip_from", skip.from.0)
        .param("skip_to", skip.to.0)
}

fn checked(list: Vec<(String, u64)>) -> Result<Vec<RankedAd>, QueryError> {
    list.into_iter()
        .map(|(ad, clicks)| {
            adtally_core::AdId::new(&ad)
                .map(|ad_id| RankedAd { ad_id, clicks })
                .map_err(|e| QueryError::Unavailable(format!("a ranking holds ad_id {ad:?}: {e}")))
        })
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.retain(|s| !s.is_empty());
    v.sort();
    v.dedup();
    v
}

/// The clock: ms since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
