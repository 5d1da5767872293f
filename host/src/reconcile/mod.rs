//! Reconciliation: the stream's per-minute rollups (`clicks_per_minute`)
//! against the batch truth (`batch_clicks_per_minute`, the ClickHouse-native
//! path over the raw events), cell by cell (minute, ad, filter).
//!
//! Every difference is classified from the stream's own side outputs and
//! the raw events' source positions (see [`Explained`]); a cell the side
//! outputs do not account for is unexplained. The comparison runs in
//! ClickHouse, one chunk of minutes at a time; this module never changes a
//! rollup, and writes only its result (`reconciliations`).
//!
//! Windows the stream has not made final yet (the last minutes before its
//! watermark, less the allowed lateness) differ from the batch truth
//! without explanation: reconcile ranges that are settled.

pub mod job;
mod query;

pub(crate) use query::BATCH_MODULE;
pub mod report;

use adtally_core::{FilterId, WindowStart};
use anyhow::{Context, Result, bail};
use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};

/// The minutes `[from, to)` of event time, in ms since the epoch (UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Range {
    /// The first window start included.
    pub from: WindowStart,
    /// The first window start not included.
    pub to: WindowStart,
}

impl Range {
    /// `[from, to)`, or an error naming both when it is empty.
    pub fn new(from: WindowStart, to: WindowStart) -> Result<Range> {
        if from >= to {
            bail!(
                "--from ({}) must be before --to ({})",
                report::time(from.0),
                report::time(to.0)
            );
        }
        Ok(Range { from, to })
    }

    /// The range cut into pieces of at most `chunk_ms`.
    fn chunks(self, chunk_ms: i64) -> impl Iterator<Item = Range> {
        let step = chunk_ms.max(1);
        let mut at = self.from.0;
        std::iter::from_fn(move || {
            (at < self.to.0).then(|| {
                let end = at.saturating_add(step).min(self.to.0);
                let r = Range {
                    from: WindowStart(at),
                    to: WindowStart(end),
                };
                at = end;
                r
            })
        })
    }
}

/// What to compare.
#[derive(Clone, Debug)]
pub struct Options {
    /// The event-time range.
    pub range: Range,
    /// The filters to compare; empty for every filter.
    pub filters: Vec<FilterId>,
    /// Minutes per query: the range is compared one chunk at a time.
    pub chunk_minutes: u32,
    /// The rollup set compared (a replay's, before it is switched in);
    /// `None`: for each window, the set readers see.
    pub set: Option<String>,
}

/// Why a cell's sides differ, when the stream's side outputs say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Explained {
    /// Distinct clicks no partition counted because they came after their
    /// window was final (`late_events`).
    pub late: u64,
    /// Distinct clicks no partition counted because the stream side-lined
    /// them for its partition's state (`invalid_events`: ahead of the
    /// partition, its bounds of keys or cells, a quarantined record).
    pub side_lined: u64,
    /// Counts beyond one of clicks that several partitions counted (a
    /// topic not keyed by ad_id).
    pub cross_partition: u64,
}

impl Explained {
    /// The kinds present, joined by `+` (e.g. `late+cross_partition`).
    pub fn label(&self) -> String {
        let kinds = [
            ("late", self.late),
            ("side_lined", self.side_lined),
            ("cross_partition", self.cross_partition),
        ];
        let present: Vec<&str> = kinds
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, _)| *k)
            .collect();
        present.join("+")
    }
}

/// The verdict on a cell whose sides differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "verdict")]
pub enum Verdict {
    /// The stream's count is what its side outputs say it counted.
    Explained(Explained),
    /// It is not: `expected` is what the side outputs account for.
    Unexplained {
        /// The stream's count the raw events and side outputs account for.
        expected: u64,
    },
}

/// One cell whose two sides differ.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// The minute.
    pub window_start: WindowStart,
    /// The ad.
    pub ad_id: String,
    /// The filter.
    pub filter_id: FilterId,
    /// The stream's count (0: no rollup).
    pub stream: u64,
    /// The batch truth's distinct clicks (0: no raw event).
    pub batch: u64,
    /// Why.
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// The result of a reconciliation.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    /// Cells on either side.
    pub cells: u64,
    /// Cells whose sides agree.
    pub equal: u64,
    /// Differing cells with each kind of explanation (a cell with two
    /// kinds counts under both).
    pub late: u64,
    /// See above.
    pub side_lined: u64,
    /// See above.
    pub cross_partition: u64,
    /// Differing cells the side outputs do not account for.
    pub unexplained: u64,
    /// Clicks on the stream's side.
    pub stream_clicks: u64,
    /// Clicks on the batch truth's side.
    pub batch_clicks: u64,
    /// The modules (SHA-256) that wrote rollups of the range.
    pub stream_modules: Vec<String>,
    /// The module the batch path computes with now (SHA-256).
    pub batch_module: String,
    /// The semantics versions of the modules that parsed the raw events.
    pub batch_semantics_versions: Vec<u32>,
}

impl Summary {
    /// Differing cells the side outputs account for.
    pub fn explained(&self) -> u64 {
        self.cells - self.equal - self.unexplained
    }

    fn count(&mut self, d: &Difference) {
        match d.verdict {
            Verdict::Explained(e) => {
                self.late += (e.late > 0) as u64;
                self.side_lined += (e.side_lined > 0) as u64;
                self.cross_partition += (e.cross_partition > 0) as u64;
            }
            Verdict::Unexplained { .. } => self.unexplained += 1,
        }
    }
}

#[derive(Row, Deserialize)]
struct CompareRow {
    cells: u64,
    equal: u64,
    stream_clicks: u64,
    batch_clicks: u64,
    stream_modules: Vec<String>,
    batch_semantics_versions: Vec<u32>,
}

#[derive(Row, Deserialize)]
struct DifferenceRow {
    window_start: i64,
    ad_id: String,
    filter_id: u32,
    stream: u64,
    batch: u64,
    counted: u64,
    late: u64,
    side_lined: u64,
    extra: u64,
}

impl DifferenceRow {
    /// Explained when the stream holds exactly what its side outputs say it
    /// counted (every click it did not count has a side output, by the
    /// query's definition of counted), and the raw events' keys are the
    /// batch truth's (counted once each, or side-lined).
    fn verdict(&self) -> Verdict {
        let keys = (self.counted - self.extra.min(self.counted)) + self.late + self.side_lined;
        if self.stream == self.counted && self.batch == keys {
            Verdict::Explained(Explained {
                late: self.late,
                side_lined: self.side_lined,
                cross_partition: self.extra,
            })
        } else {
            Verdict::Unexplained {
                expected: self.counted,
            }
        }
    }
}

/// Compares `opts.range` in database `db`, chunk by chunk, giving every
/// difference to `difference` as it comes and each chunk's end to
/// `progress` (minutes done, minutes in all).
pub async fn reconcile(
    client: &Client,
    db: &str,
    opts: &Options,
    mut difference: impl FnMut(&Difference) -> Result<()>,
    mut progress: impl FnMut(u64, u64),
) -> Result<Summary> {
    let filters: Vec<u32> = opts.filters.iter().map(|f| f.0).collect();
    let chunk_ms = i64::from(opts.chunk_minutes.max(1)) * 60_000;
    let minutes = |r: Range| ((r.to.0 - r.from.0) as u64).div_ceil(60_000);
    let total = minutes(opts.range);
    let (compare, differences) = (query::compare(db), query::differences(db));
    tracing::debug!("comparison query: {compare}");
    tracing::debug!("explanation query: {differences}");
    // A named set is compared for its own topic; other topics' rollups are
    // the sets in force for them.
    let (set_topic, set_from, set_to) = match &opts.set {
        Some(set) => client
            .query(
                "SELECT topic, toUnixTimestamp64Milli(range_from), toUnixTimestamp64Milli(range_to) \
                 FROM rollup_sets FINAL WHERE rollup_set = {set:String}",
            )
            .param("set", set)
            .fetch_optional::<(String, i64, i64)>()
            .await
            .with_context(|| format!("reading rollup set {set}"))?
            .with_context(|| format!("no rollup set {set}"))?,
        None => (String::new(), 0, 0),
    };
    let mut summary = Summary {
        batch_module: client
            .query(query::BATCH_MODULE)
            .fetch_optional::<String>()
            .await
            .context("reading the module of the ClickHouse functions")?
            .unwrap_or_default(),
        ..Summary::default()
    };
    let (mut modules, mut versions) = (Vec::new(), Vec::new());
    let mut done = 0;
    for chunk in opts.range.chunks(chunk_ms) {
        let bind = |sql: &str| {
            client
                .query(sql)
                .param("from", chunk.from.0)
                .param("to", chunk.to.0)
                .param("filters", &filters)
                .param("named", u8::from(opts.set.is_some()))
                .param("set", opts.set.as_deref().unwrap_or(""))
                .param("set_topic", &set_topic)
                .param("set_from", set_from)
                .param("set_to", set_to)
        };
        let c: CompareRow = bind(&compare).fetch_one().await.with_context(|| {
            format!(
                "comparing {} to {}",
                report::time(chunk.from.0),
                report::time(chunk.to.0)
            )
        })?;
        summary.cells += c.cells;
        summary.equal += c.equal;
        summary.stream_clicks += c.stream_clicks;
        summary.batch_clicks += c.batch_clicks;
        modules.extend(c.stream_modules);
        versions.extend(c.batch_semantics_versions);
        if c.equal < c.cells {
            let mut rows = bind(&differences).fetch::<DifferenceRow>()?;
            while let Some(r) = rows.next().await.with_context(|| {
                format!(
                    "explaining the differences from {} to {}",
                    report::time(chunk.from.0),
                    report::time(chunk.to.0)
                )
            })? {
                let d = Difference {
                    verdict: r.verdict(),
                    window_start: WindowStart(r.window_start),
                    ad_id: r.ad_id,
                    filter_id: FilterId(r.filter_id),
                    stream: r.stream,
                    batch: r.batch,
                };
                summary.count(&d);
                difference(&d)?;
            }
        }
        done += minutes(chunk);
        progress(done, total);
    }
    modules.sort();
    modules.dedup();
    versions.sort();
    versions.dedup();
    summary.stream_modules = modules;
    summary.batch_semantics_versions = versions;
    Ok(summary)
}
