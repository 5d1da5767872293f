//! The read side: the design's two questions, asked of the rollups.
//!
//! - API 1, [`Reader::count`]: how many clicks did ad X get in the minutes
//!   `[from, to)`, under a configured filter, or under ad-hoc country, ip
//!   (address or CIDR) and user_id filters (answered from the raw events);
//! - API 2, [`Reader::popular`]: which `count` ads were clicked most in the
//!   last `window` final minutes.
//!
//! Requests come in as text ([`CountParams`], [`PopularParams`]: the HTTP
//! query string of `adtally serve` and the flags of `adtally query` alike)
//! and are checked here (the chart's and the rankings' too), each refusal naming its parameter
//! ([`BadParameter`]). Every answer says which source answered, up to which
//! minute its data is final, and which modules computed the rows it read.
//!
//! This module owns reading; it never decides what a count is. Which
//! filters a click matches, how ads are ranked and when a window is final
//! are the core's ([`FilterSet`], [`topn::top_n`], [`Config::first_open_window`]);
//! SQL only selects and sums rows, with request values bound as server-side
//! parameters, never spliced into the query's text.

mod index;
mod params;
mod read;

pub use index::{Index, IndexOptions};
pub use params::{CountParams, MinutesParams, PopularParams, RankingParams};
pub use read::{Finality, Reader, now_ms};

use adtally_core::{AdId, Config, ConfigError, FilterId, FilterSet, FilterSpec, WindowStart, topn};
use serde::Serialize;
use std::fmt;

/// What the server allows a request to ask.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The longest range of API 1, in windows (minutes by default).
    pub max_range: u32,
    /// The most ads API 2 returns.
    pub max_count: u32,
    /// The longest window of API 2, in windows.
    pub max_window: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_range: 31 * 1440,
            max_count: 1000,
            max_window: 1440,
        }
    }
}

/// The configuration the rollups were computed with: the window, the
/// filters a request may name, the top-N windows the core precomputes.
#[derive(Clone, Debug)]
pub struct Catalog {
    config: Config,
    filters: FilterSet,
    limits: Limits,
}

impl Catalog {
    /// The catalog of a configuration the core accepts.
    pub fn new(config: Config, limits: Limits) -> Result<Catalog, ConfigError> {
        let filters = config.check()?;
        Ok(Catalog {
            config,
            filters,
            limits,
        })
    }

    /// The core's configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The limits on requests.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The window length in ms.
    pub fn window_ms(&self) -> i64 {
        self.window_size().ms()
    }

    /// The window (checked with the configuration in [`Catalog::new`]).
    pub fn window_size(&self) -> adtally_core::WindowSize {
        adtally_core::WindowSize::checked(self.config.window_ms)
            .unwrap_or(adtally_core::WindowSize::MINUTE)
    }

    /// Filter ids a request may name: 0, then the configured ones.
    pub fn filter_ids(&self) -> Vec<u32> {
        self.filters.all_ids().map(|f| f.0).collect()
    }

    /// Whether the core precomputes rankings of this many windows (and
    /// this many ads).
    pub fn precomputed(&self, window: u32, count: u32) -> bool {
        self.config.top_n_windows.contains(&window) && count <= self.config.top_n
    }

    /// The first window not final at these partitions' watermarks: the
    /// lowest of the core's `first_open_window` over them, `None` when a
    /// partition has none yet (nothing is final).
    pub fn final_to(
        &self,
        watermarks: impl IntoIterator<Item = Option<i64>>,
    ) -> Option<WindowStart> {
        let mut lowest: Option<WindowStart> = None;
        for w in watermarks {
            let open = self.config.first_open_window(w?);
            lowest = Some(lowest.map_or(open, |l| l.min(open)));
        }
        lowest
    }
}

/// The minutes `[from, to)`, as window starts in ms (UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Minutes {
    /// The first window included.
    pub from: WindowStart,
    /// The first window not included.
    pub to: WindowStart,
}

/// A parameter refused, and why: the body of an HTTP 400.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct BadParameter {
    /// The parameter, as named in the request (`from`, `ad_id`, `ip`...).
    pub parameter: String,
    /// The value given ("" when missing).
    pub value: String,
    /// What is wrong with it.
    pub message: String,
}

impl BadParameter {
    pub(crate) fn new(parameter: &str, value: &str, message: impl fmt::Display) -> BadParameter {
        BadParameter {
            parameter: parameter.into(),
            value: value.chars().take(200).collect(),
            message: message.to_string(),
        }
    }
}

impl fmt::Display for BadParameter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {:?}: {}", self.parameter, self.value, self.message)
    }
}

/// Why a question got no answer.
#[derive(Debug)]
pub enum QueryError {
    /// A parameter is wrong (HTTP 400).
    Bad(BadParameter),
    /// ClickHouse did not answer in time, or failed (HTTP 503).
    Unavailable(String),
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueryError::Bad(b) => b.fmt(f),
            QueryError::Unavailable(m) => write!(f, "ClickHouse unavailable: {m}"),
        }
    }
}

impl std::error::Error for QueryError {}

impl From<BadParameter> for QueryError {
    fn from(b: BadParameter) -> QueryError {
        QueryError::Bad(b)
    }
}

/// API 1, checked.
#[derive(Clone, Debug)]
pub struct CountRequest {
    /// The ad.
    pub ad: AdId,
    /// The minutes counted.
    pub minutes: Minutes,
    /// The configured filter (0: every click).
    pub filter: FilterId,
    /// Ad-hoc dimensions (a filter spec of id 1, checked by the core), if any.
    pub ad_hoc: Option<FilterSpec>,
}

/// API 2, checked.
#[derive(Clone, Copy, Debug)]
pub struct PopularRequest {
    /// How many ads.
    pub count: u32,
    /// Over how many of the last final windows.
    pub window: u32,
    /// The configured filter.
    pub filter: FilterId,
}

/// Which rows answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The final minutes `adtally serve` holds in memory.
    Memory,
    /// The rollups in ClickHouse (`clicks_per_minute`).
    Rollups,
    /// Final minutes from memory, the rest of the range from the rollups.
    MemoryAndRollups,
    /// The raw events, deduplicated by event key (ad-hoc filters): the
    /// batch truth, which counts late clicks the stream side-lined.
    RawEvents,
    /// The core's precomputed rankings (`top_ads`).
    TopAds,
}

/// API 1's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct CountAnswer {
    /// The ad.
    pub ad_id: String,
    /// Distinct clicks in `[from, to)`.
    pub count: u64,
    /// The first minute counted (RFC 3339).
    pub from: String,
    /// The first minute not counted (RFC 3339).
    pub to: String,
    /// The configured filter applied.
    pub filter: u32,
    /// The ad-hoc dimensions applied, if any.
    #[schema(value_type = Option<Object>)]
    pub ad_hoc: Option<serde_json::Value>,
    /// Which rows answered.
    pub source: Source,
    /// The first minute whose count may still change (RFC 3339): every
    /// minute before it is final at the lowest partition watermark. `null`
    /// while some partition has no watermark yet.
    pub final_to: Option<String>,
    /// Whether the whole range is final (`to <= final_to`).
    pub complete: bool,
    /// SHA-256 of the modules that computed the rows read (for
    /// `raw_events`: the module of ClickHouse's adtally functions, which
    /// matched the filters).
    pub modules: Vec<String>,
}

/// API 2's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PopularAnswer {
    /// The most clicked ads, best first (clicks descending, ad_id ascending).
    pub ad_ids: Vec<String>,
    /// Their clicks over the window, in the same order.
    pub counts: Vec<u64>,
    /// The window's length, in minutes.
    pub window: u32,
    /// The configured filter applied.
    pub filter: u32,
    /// The window's first minute (RFC 3339).
    pub from: String,
    /// The first minute after the window (RFC 3339).
    pub to: String,
    /// Which rows answered.
    pub source: Source,
    /// As in API 1's answer.
    pub final_to: Option<String>,
    /// SHA-256 of the modules that computed the rows read.
    pub modules: Vec<String>,
}

/// An ad's clicks per minute, for a chart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct MinutesAnswer {
    /// The ad.
    pub ad_id: String,
    /// The configured filter applied.
    pub filter: u32,
    /// The first minute (RFC 3339).
    pub from: String,
    /// The first minute after the range (RFC 3339).
    pub to: String,
    /// `[window start ms, clicks]` for every minute of the range, in order
    /// (0 where the ad had none).
    pub minutes: Vec<(i64, u64)>,
    /// As in API 1's answer.
    pub final_to: Option<String>,
    /// SHA-256 of the modules that computed the rows read.
    pub modules: Vec<String>,
}

/// Each partition's own top-N list of a minute, as the core ranked it, for
/// a reader that merges them itself (the dashboard, with the core's
/// browser build).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RankingsAnswer {
    /// The window, in minutes (one the core precomputes).
    pub window: u32,
    /// The configured filter.
    pub filter: u32,
    /// The minute ranked: the last final one (RFC 3339), `null` before any.
    pub minute: Option<String>,
    /// How many ads each list holds at most (the core's `top_n`).
    pub top_n: u32,
    /// One list per (topic, partition).
    pub lists: Vec<PartitionRanking>,
}

/// One partition's ranking.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PartitionRanking {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// `[ad_id, clicks]`, best first.
    pub ads: Vec<(String, u64)>,
    /// The module that ranked it.
    pub module: String,
}

/// A minute as RFC 3339 (UTC).
pub fn minute_text(w: WindowStart) -> String {
    crate::reconcile::report::time(w.0)
}

/// The `n` best of `ads` (the core's ranking).
fn ranked(ads: Vec<(String, u64)>, n: u32) -> Result<(Vec<String>, Vec<u64>), QueryError> {
    let mut checked = Vec::with_capacity(ads.len());
    for (ad, clicks) in ads {
        let id = AdId::new(&ad)
            .map_err(|e| QueryError::Unavailable(format!("a rollup holds ad_id {ad:?}: {e}")))?;
        checked.push((id, clicks));
    }
    Ok(topn::top_n(checked, n as usize)
        .into_iter()
        .map(|r| (r.ad_id.as_str().to_owned(), r.clicks))
        .unzip())
}
