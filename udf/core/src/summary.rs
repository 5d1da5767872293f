//! What one record is, as the flat view the stateless glue hands out: the
//! ClickHouse UDFs' tuple, the JavaScript build's `parse`, the conformance
//! vectors' per-record annotations. The glue crates only change its shape;
//! every field is decided here.

use crate::{
    Click, Config, ConfigError, EventKey, EventTime, FilterId, FilterSet, InvalidReason, Record,
    WindowSize, WindowStart, parse_record,
};
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use serde::ser::{Serialize, SerializeMap, Serializer};

/// A record's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// A valid click.
    Click,
    /// A valid heartbeat.
    Heartbeat,
    /// Not a valid record.
    Invalid,
}

impl RecordKind {
    /// `click`, `heartbeat` or `invalid`.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Click => "click",
            RecordKind::Heartbeat => "heartbeat",
            RecordKind::Invalid => "invalid",
        }
    }
}

/// The stateless verdict on one record: what [`parse_record`] says of it,
/// and, with a configuration ([`Classifier`]), its window and filters.
///
/// Serialized as a JSON object with `kind`, then, by kind:
/// - `invalid`: `reason` (the stable code, e.g. `missing_field:ad_id`);
/// - `heartbeat`: `time`;
/// - `click`: `key` (32 hex digits), `time`, `ad_id`, `user_id`, `ip`
///   (canonical), `country`, `event_id` (when the click has one), and
///   `window_start` and `filters` when classified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordSummary {
    /// What [`parse_record`] returned.
    pub record: Result<Record, InvalidReason>,
    /// The click's window, when classified.
    pub window_start: Option<WindowStart>,
    /// The filters the click counts in (filter 0 first), when classified.
    pub filters: Option<Vec<FilterId>>,
}

/// The text columns of a summary, as SQL sees them: a field that does not
/// apply to the record's kind is empty (and `time_ms` 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SummaryColumns<'a> {
    /// `click`, `heartbeat` or `invalid`.
    pub kind: &'static str,
    /// The invalid reason's code.
    pub reason: String,
    /// The event key in 32 hex digits.
    pub key: String,
    /// The clicked ad.
    pub ad_id: &'a str,
    /// The click's or heartbeat's event time.
    pub time_ms: i64,
    /// Who clicked.
    pub user_id: &'a str,
    /// The canonical IP address.
    pub ip: String,
    /// ISO 3166-1 alpha-3.
    pub country: &'a str,
    /// The producer's event id.
    pub event_id: &'a str,
}

impl RecordSummary {
    /// The summary of one payload, unclassified (arguments as
    /// [`parse_record`]'s).
    pub fn of(payload: &[u8], record_time_ms: Option<i64>, max_future_skew_ms: i64) -> Self {
        RecordSummary {
            record: parse_record(payload, record_time_ms, max_future_skew_ms),
            window_start: None,
            filters: None,
        }
    }

    /// The record's kind.
    pub fn kind(&self) -> RecordKind {
        match &self.record {
            Ok(Record::Click(_)) => RecordKind::Click,
            Ok(Record::Heartbeat(_)) => RecordKind::Heartbeat,
            Err(_) => RecordKind::Invalid,
        }
    }

    /// The click, if the record is one.
    pub fn click(&self) -> Option<&Click> {
        match &self.record {
            Ok(Record::Click(c)) => Some(c),
            _ => None,
        }
    }

    /// The event time of a click or heartbeat.
    pub fn time(&self) -> Option<EventTime> {
        match &self.record {
            Ok(Record::Click(c)) => Some(c.timestamp),
            Ok(Record::Heartbeat(t)) => Some(*t),
            Err(_) => None,
        }
    }

    /// The summary as SQL columns.
    pub fn columns(&self) -> SummaryColumns<'_> {
        let click = self.click();
        SummaryColumns {
            kind: self.kind().as_str(),
            reason: self
                .record
                .as_ref()
                .err()
                .map(|r| r.code().to_string())
                .unwrap_or_default(),
            key: click
                .map(|c| EventKey::of(c).to_string())
                .unwrap_or_default(),
            ad_id: click.map_or("", |c| c.ad_id.as_str()),
            time_ms: self.time().map_or(0, |t| t.0),
            user_id: click.map_or("", |c| c.user_id.as_str()),
            ip: click.map(|c| c.ip.to_string()).unwrap_or_default(),
            country: click.map_or("", |c| c.country.as_str()),
            event_id: click
                .and_then(|c| c.event_id.as_ref())
                .map_or("", |e| e.as_str()),
        }
    }
}

impl Serialize for RecordSummary {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("kind", self.kind().as_str())?;
        match &self.record {
            Err(reason) => m.serialize_entry("reason", reason)?,
            Ok(Record::Heartbeat(t)) => m.serialize_entry("time", &t.0)?,
            Ok(Record::Click(c)) => {
                m.serialize_entry("key", &EventKey::of(c))?;
                m.serialize_entry("time", &c.timestamp.0)?;
                m.serialize_entry("ad_id", &c.ad_id)?;
                m.serialize_entry("user_id", &c.user_id)?;
                m.serialize_entry("ip", &c.ip.to_string())?;
                m.serialize_entry("country", &c.country)?;
                if let Some(e) = &c.event_id {
                    m.serialize_entry("event_id", e)?;
                }
                if let Some(w) = self.window_start {
                    m.serialize_entry("window_start", &w.0)?;
                }
                if let Some(f) = &self.filters {
                    m.serialize_entry("filters", f)?;
                }
            }
        }
        m.end()
    }
}

/// A configuration's stateless rules: parse, window and filters of a record.
#[derive(Clone, Debug)]
pub struct Classifier {
    filters: FilterSet,
    window: WindowSize,
    max_future_skew_ms: i64,
}

impl Classifier {
    /// The rules of `config`, or the error naming its bad field.
    pub fn new(config: &Config) -> Result<Classifier, ConfigError> {
        let filters = config.check()?;
        Ok(Classifier {
            filters,
            window: WindowSize::checked(config.window_ms).expect("checked by Config::check"),
            max_future_skew_ms: config.max_future_skew_ms,
        })
    }

    /// The classified summary of one payload.
    pub fn summarize(&self, payload: &[u8], record_time_ms: Option<i64>) -> RecordSummary {
        let mut s = RecordSummary::of(payload, record_time_ms, self.max_future_skew_ms);
        if let Some(c) = s.click() {
            let mut ids = Vec::new();
            self.filters.matching(c, &mut ids);
            s.window_start = Some(self.window.window_of(c.timestamp));
            s.filters = Some(ids);
        }
        s
    }

    /// The filters a click with these dimensions counts in, filter 0 first.
    /// See [`FilterSet::matching_dimensions`] for dimensions that are not
    /// valid.
    pub fn filter_ids(&self, country: &str, ip: &str, user_id: &str) -> Vec<FilterId> {
        self.filters.matching_dimensions(country, ip, user_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_click_summary_holds_every_field_and_sql_columns_leave_the_rest_empty() {
        let c = Classifier::new(&Config::default()).unwrap();
        let s = c.summarize(
            br#"{"ad_id":"a","click_timestamp":61000,"user_id":"u","ip":"::ffff:1.2.3.4","country":"USA","event_id":"e1"}"#,
            None,
        );
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["event_id"], "e1");
        assert_eq!(json["ip"], "1.2.3.4");
        assert_eq!(json["window_start"], 60_000);
        assert_eq!(json["filters"], serde_json::json!([0]));
        let bad = RecordSummary::of(b"nonsense", None, 0);
        let cols = bad.columns();
        assert_eq!((cols.kind, cols.ad_id, cols.time_ms), ("invalid", "", 0));
        assert!(!cols.reason.is_empty());
        assert_eq!(
            serde_json::to_value(&bad)
                .unwrap()
                .as_object()
                .unwrap()
                .len(),
            2
        );
    }
}
