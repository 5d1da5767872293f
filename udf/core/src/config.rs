//! The engine's configuration and its checks.

use crate::EventTime;
use crate::dedup::MAX_HORIZON_MS;
use crate::filter::{FilterSet, FilterSpec};
use crate::watermark::Quorum;
use crate::window::{WindowSize, WindowStart};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use serde::{Deserialize, Serialize};

/// The semantics' parameters (see the crate docs). Serialized as JSON in
/// module metadata, snapshots and the conformance vectors; unknown fields
/// are refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Tumbling window length [60 000].
    pub window_ms: i64,
    /// How far behind the newest click a click may be and still be on time [15 000].
    pub out_of_orderness_ms: i64,
    /// How long after a window is emitted it still accepts clicks [0].
    pub allowed_lateness_ms: i64,
    /// How long a key is remembered, in event time [600 000].
    pub dedup_horizon_ms: i64,
    /// Processing time without records after which a partition is idle [60 000].
    pub idle_timeout_ms: i64,
    /// How far a click may be ahead of its record's own time [3 600 000].
    pub max_future_skew_ms: i64,
    /// How many of a partition's recent samples must reach a time before
    /// its watermark does [5].
    pub watermark_quorum: u32,
    /// How many of a partition's latest samples (counted clicks and
    /// heartbeats) a quorum is looked for in [32].
    pub watermark_history: u32,
    /// How far past its partition's frontier a click or heartbeat may be
    /// and still count [28 800 000, 8 h; at most 8 h].
    pub max_ahead_ms: i64,
    /// The most keys one partition remembers within the dedup horizon
    /// [24 000 000]; a click beyond is side-lined as `too_many_keys`.
    pub max_partition_keys: u64,
    /// The most counts, (window, ad, filter) cells, one partition holds in
    /// its open windows [4 000 000]; a click that would add one beyond is
    /// side-lined as `too_many_cells`.
    pub max_partition_cells: u64,
    /// How many ads a top-N row holds [100].
    pub top_n: u32,
    /// The top-N window sizes M, in windows [1, 5].
    pub top_n_windows: Vec<u32>,
    /// For how many windows after a top-N row is emitted it may be revised [5].
    pub topn_revision_windows: u32,
    /// Filters besides filter 0 [none].
    pub filters: Vec<FilterSpec>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            window_ms: 60_000,
            out_of_orderness_ms: 15_000,
            allowed_lateness_ms: 0,
            dedup_horizon_ms: 600_000,
            idle_timeout_ms: 60_000,
            max_future_skew_ms: 3_600_000,
            max_ahead_ms: MAX_AHEAD_MS,
            watermark_quorum: 5,
            watermark_history: 32,
            max_partition_keys: 24_000_000,
            max_partition_cells: 4_000_000,
            top_n: 100,
            top_n_windows: vec![1, 5],
            topn_revision_windows: 5,
            filters: Vec::new(),
        }
    }
}

/// A configuration value that was refused: which field, what value, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The field, e.g. `dedup_horizon_ms`.
    pub field: String,
    /// The refused value, as text.
    pub value: String,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(
        field: impl Into<String>,
        value: impl fmt::Display,
        message: impl fmt::Display,
    ) -> ConfigError {
        ConfigError {
            field: field.into(),
            value: value.to_string(),
            message: message.to_string(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid config `{}` = {}: {}",
            self.field, self.value, self.message
        )
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ConfigError {}

const HOUR: i64 = 3_600_000;
/// The furthest a record may be past its partition's frontier: dedup
/// keeps 16 bits of a key's second, read against the watermark, so a key
/// may be at most 2^15 s (9.1 h) ahead of it, and the watermark trails
/// the frontier by up to an hour.
pub const MAX_AHEAD_MS: i64 = 8 * HOUR;
/// The most keys a partition may be configured to remember: they fit a
/// dedup table of 2^27 slots (2.3 GB), and growing into it takes 3.4 GB
/// of the 4 GiB a 32-bit memory has. (The default, 24 million, fits 2^25
/// slots: 570 MB, 855 MB while growing.)
pub const MAX_PARTITION_KEYS: i64 = 100_000_000;
/// The most cells a partition may be configured to hold.
pub const MAX_PARTITION_CELLS: i64 = 100_000_000;
/// The longest history a watermark quorum may be looked for in.
pub const MAX_WATERMARK_HISTORY: i64 = 1024;

impl Config {
    /// The watermark rule of this configuration.
    pub fn quorum(&self) -> Quorum {
        Quorum {
            quorum: self.watermark_quorum,
            history: self.watermark_history,
        }
    }

    /// The first window not yet final when a partition's watermark is
    /// `watermark` (`W_p`): every window before it has `end +
    /// allowed_lateness_ms <= W_p`, so its rollups are written and no click
    /// can change them (see *Watermark, firing and lateness*).
    ///
    /// ```
    /// use adtally_core::{Config, WindowStart};
    /// let c = Config::default();
    /// assert_eq!(c.first_open_window(120_000), WindowStart(120_000));
    /// assert_eq!(c.first_open_window(119_999), WindowStart(60_000));
    /// let late = Config { allowed_lateness_ms: 30_000, ..Config::default() };
    /// assert_eq!(late.first_open_window(120_000), WindowStart(60_000));
    /// ```
    pub fn first_open_window(&self, watermark: i64) -> WindowStart {
        let size = WindowSize::checked(self.window_ms).unwrap_or(WindowSize::MINUTE);
        size.window_of(EventTime(
            watermark.saturating_sub(self.allowed_lateness_ms),
        ))
    }

    /// Parses a JSON configuration (missing fields take their defaults) and checks it.
    pub fn from_json(json: &str) -> Result<Config, ConfigError> {
        let c: Config = serde_json::from_str(json).map_err(|e| {
            ConfigError::new("<json>", json.chars().take(80).collect::<String>(), e)
        })?;
        c.check()?;
        Ok(c)
    }

    /// The configuration as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Checks every field; returns the filters built from the specs.
    pub fn check(&self) -> Result<FilterSet, ConfigError> {
        let range = |field: &str, v: i64, lo: i64, hi: i64| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(ConfigError::new(
                    field,
                    v,
                    format!("must be between {lo} and {hi}"),
                ))
            }
        };
        WindowSize::checked(self.window_ms)?;
        range("out_of_orderness_ms", self.out_of_orderness_ms, 0, HOUR)?;
        range("allowed_lateness_ms", self.allowed_lateness_ms, 0, HOUR)?;
        range(
            "dedup_horizon_ms",
            self.dedup_horizon_ms,
            1000,
            MAX_HORIZON_MS,
        )?;
        range("idle_timeout_ms", self.idle_timeout_ms, 1, 24 * HOUR)?;
        range("max_future_skew_ms", self.max_future_skew_ms, 0, 24 * HOUR)?;
        let need = self.window_ms + self.out_of_orderness_ms + self.allowed_lateness_ms;
        if self.dedup_horizon_ms < need {
            return Err(ConfigError::new(
                "dedup_horizon_ms",
                self.dedup_horizon_ms,
                format!(
                    "must be at least window_ms + out_of_orderness_ms + allowed_lateness_ms = {need}, \
                     or a duplicate could be counted twice"
                ),
            ));
        }
        range("max_ahead_ms", self.max_ahead_ms, 60_000, MAX_AHEAD_MS)?;
        range(
            "watermark_history",
            self.watermark_history.into(),
            1,
            MAX_WATERMARK_HISTORY,
        )?;
        range(
            "watermark_quorum",
            self.watermark_quorum.into(),
            1,
            self.watermark_history.into(),
        )?;
        let count = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        range(
            "max_partition_keys",
            count(self.max_partition_keys),
            1,
            MAX_PARTITION_KEYS,
        )?;
        range(
            "max_partition_cells",
            count(self.max_partition_cells),
            1,
            MAX_PARTITION_CELLS,
        )?;
        range("top_n", self.top_n.into(), 1, 10_000)?;
        if self.top_n_windows.is_empty() {
            return Err(ConfigError::new(
                "top_n_windows",
                "[]",
                "needs at least one window size",
            ));
        }
        for (i, &m) in self.top_n_windows.iter().enumerate() {
            range("top_n_windows[]", m.into(), 1, 1440)?;
            if self.top_n_windows[..i].contains(&m) {
                return Err(ConfigError::new("top_n_windows[]", m, "appears twice"));
            }
        }
        range(
            "topn_revision_windows",
            self.topn_revision_windows.into(),
            0,
            1440,
        )?;
        FilterSet::new(&self.filters)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_horizon_is_refused() {
        let e = Config::from_json(r#"{"dedup_horizon_ms": 60000}"#).unwrap_err();
        assert_eq!(e.field, "dedup_horizon_ms");
        assert!(e.to_string().contains("75000"), "{e}");
    }

    #[test]
    fn quorum_beyond_the_history_is_refused() {
        let e =
            Config::from_json(r#"{"watermark_quorum": 9, "watermark_history": 8}"#).unwrap_err();
        assert_eq!(e.field, "watermark_quorum");
        assert!(e.to_string().contains("between 1 and 8"), "{e}");
    }

    #[test]
    fn unknown_field_is_refused() {
        let e = Config::from_json(r#"{"windw_ms": 1}"#).unwrap_err();
        assert!(e.to_string().contains("windw_ms"), "{e}");
    }

    #[test]
    fn bad_filter_names_it() {
        let e = Config::from_json(r#"{"filters":[{"id":3,"ip":["10.0.0.0/99"]}]}"#).unwrap_err();
        assert_eq!(e.field, "filters[id=3].ip");
        assert_eq!(e.value, "10.0.0.0/99");
    }
}
