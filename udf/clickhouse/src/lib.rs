//! The adtally core's scalar functions, as a ClickHouse WebAssembly UDF
//! module.
//!
//! This crate owns only the ClickHouse ABI glue (through the
//! `clickhouse-wasm-udf` SDK); every answer comes from `adtally-core`, so a
//! materialized view computes exactly what the host computes. The SQL that
//! declares these functions is `clickhouse/sql/functions.sql`.
//!
//! | function | ABI | signature |
//! |---|---|---|
//! | `adtally_classify` | BUFFERED_V1 | `(payload String, record_time_ms Int64, has_record_time UInt8, config_json String) -> Tuple(kind, reason, key, ad_id String, time_ms Int64, user_id, ip, country, event_id String, window_start_ms Int64, filter_ids Array(UInt32), semantics_version UInt32)` |
//! | `adtally_parse` | BUFFERED_V1 | `(payload String) -> Tuple(kind, reason, key, ad_id String, time_ms Int64, user_id, ip, country, event_id String)` |
//! | `adtally_parse_at` | BUFFERED_V1 | `(payload String, record_time_ms Int64, max_future_skew_ms Int64) -> same` |
//! | `adtally_window_start` | BUFFERED_V1 | `(time_ms Int64, window_ms Int64) -> Int64` |
//! | `adtally_filter_ids` | BUFFERED_V1 | `(filters_json String, country String, ip String, user_id String) -> Array(UInt32)` |
//! | `adtally_merge_top_n` | BUFFERED_V1 | `(lists Array(Array(Tuple(String, UInt64))), n UInt32) -> Array(Tuple(String, UInt64))` |
//! | `adtally_config` | BUFFERED_V1 | `(config_json String) -> String`: the whole configuration, defaults filled in |
//! | `adtally_semantics_version` | ROW_DIRECT | `(x UInt32) -> UInt32`, ignores `x` |
//!
//! The tuples are the core's [`RecordSummary`] as SQL columns
//! ([`RecordSummary::columns`]): fields that do not apply are empty strings
//! and 0 (`filter_ids` empty). `adtally_classify` is what the pipeline's view
//! calls: the whole verdict on a row (the [`Classifier`] of `config_json`,
//! the configuration as `adtally_config` returns it) in one call, since
//! every call costs a serialization of its rows both ways, and
//! `if(isNull(t), adtally_parse(..), adtally_parse_at(..))` evaluated both
//! for every row. A bad argument (a window size out of range, a configuration the
//! core refuses) fails the query with the core's message.

use adtally_core::{Classifier, Config, FilterSet, RecordSummary, WindowSize, topn};
use clickhouse_wasm_udf::clickhouse_udf;
use clickhouse_wasm_udf::serde::ser::{Serialize, SerializeTuple, Serializer};
use std::cell::RefCell;

/// A record's summary as the tuple the SQL sees: `adtally_parse`'s nine
/// fields, and with `classified` `adtally_classify`'s twelve. Serialized
/// straight from the summary's columns, without owned copies of its text.
pub struct Tuple {
    summary: RecordSummary,
    classified: bool,
}

impl Serialize for Tuple {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let c = self.summary.columns();
        let mut t = s.serialize_tuple(if self.classified { 12 } else { 9 })?;
        t.serialize_element(c.kind)?;
        t.serialize_element(&c.reason)?;
        t.serialize_element(&c.key)?;
        t.serialize_element(c.ad_id)?;
        t.serialize_element(&c.time_ms)?;
        t.serialize_element(c.user_id)?;
        t.serialize_element(&c.ip)?;
        t.serialize_element(c.country)?;
        t.serialize_element(c.event_id)?;
        if self.classified {
            t.serialize_element(&self.summary.window_start.map_or(0, |w| w.0))?;
            t.serialize_element(self.summary.filters.as_deref().unwrap_or_default())?;
            t.serialize_element(&semantics_version())?;
        }
        t.end()
    }
}

/// What `adtally_parse` returns for a payload.
pub fn parse(payload: &[u8], record_time_ms: Option<i64>, max_future_skew_ms: i64) -> Tuple {
    Tuple {
        summary: RecordSummary::of(payload, record_time_ms, max_future_skew_ms),
        classified: false,
    }
}

#[clickhouse_udf]
fn adtally_parse(payload: serde_bytes_like::Bytes) -> Tuple {
    parse(&payload.0, None, 0)
}

#[clickhouse_udf]
fn adtally_parse_at(
    payload: serde_bytes_like::Bytes,
    record_time_ms: i64,
    max_future_skew_ms: i64,
) -> Tuple {
    parse(&payload.0, Some(record_time_ms), max_future_skew_ms)
}

thread_local! {
    /// The last configuration seen and its rules: SQL passes the same
    /// constant for every row, so it is parsed once.
    static CLASSIFIER: RefCell<Option<(String, Classifier)>> = const { RefCell::new(None) };
    /// The same for the filters `adtally_filter_ids` is given.
    static FILTERS: RefCell<Option<(String, FilterSet)>> = const { RefCell::new(None) };
}

/// `f` of what `build` makes of `json`, built again only when `json`
/// differs from the last call's.
fn with_cached<T, R>(
    cache: &'static std::thread::LocalKey<RefCell<Option<(String, T)>>>,
    json: &str,
    build: impl FnOnce(&str) -> Result<T, adtally_core::ConfigError>,
    f: impl FnOnce(&T) -> R,
) -> Result<R, String> {
    cache.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.as_ref().is_none_or(|(last, _)| last != json) {
            let built = build(json).map_err(|e| e.to_string())?;
            *cache = Some((json.to_string(), built));
        }
        Ok(f(&cache.as_ref().expect("filled above").1))
    })
}

/// What `adtally_classify` returns for a payload under `config_json`.
pub fn classify(
    payload: &[u8],
    record_time_ms: Option<i64>,
    config_json: &str,
) -> Result<Tuple, String> {
    let build = |json: &str| Config::from_json(json).and_then(|c| Classifier::new(&c));
    with_cached(&CLASSIFIER, config_json, build, |rules| Tuple {
        summary: rules.summarize(payload, record_time_ms),
        classified: true,
    })
}

#[clickhouse_udf]
fn adtally_classify(
    payload: serde_bytes_like::Bytes,
    record_time_ms: i64,
    has_record_time: u8,
    config_json: String,
) -> Result<Tuple, String> {
    let record_time_ms = (has_record_time != 0).then_some(record_time_ms);
    classify(&payload.0, record_time_ms, &config_json)
}

/// Window start of `time_ms` for windows of `window_ms`
/// ([`WindowSize::checked`]: a size out of range is an error).
#[clickhouse_udf]
fn adtally_window_start(time_ms: i64, window_ms: i64) -> Result<i64, String> {
    let size = WindowSize::checked(window_ms).map_err(|e| e.to_string())?;
    Ok(size.window_of(adtally_core::EventTime(time_ms)).0)
}

/// The configuration `config_json` means, every default filled in, as
/// JSON; an error names the field the core refuses.
#[clickhouse_udf]
fn adtally_config(config_json: String) -> Result<String, String> {
    Config::from_json(&config_json)
        .map(|c| c.to_json())
        .map_err(|e| e.to_string())
}

/// The semantics version of the core in this module.
fn semantics_version() -> u32 {
    if cfg!(feature = "upgrade-test-marker") {
        adtally_core::SEMANTICS_VERSION + 1000
    } else {
        adtally_core::SEMANTICS_VERSION
    }
}

/// `adtally_semantics_version`: the semantics version of the core in this
/// module.
#[unsafe(no_mangle)]
pub extern "C" fn adtally_semantics_version(_x: u32) -> u32 {
    semantics_version()
}

/// The filter ids (0 first) a click with these dimensions matches under
/// `filters_json` (a JSON list of filter specs, or a whole config object):
/// [`FilterSet::matching_dimensions`], so dimensions no valid click has
/// match nothing. A bad `filters_json` is an error.
pub fn filter_ids(
    filters_json: &str,
    country: &str,
    ip: &str,
    user_id: &str,
) -> Result<Vec<u32>, String> {
    with_cached(&FILTERS, filters_json, FilterSet::from_json, |set| {
        let ids = set.matching_dimensions(country, ip, user_id);
        ids.into_iter().map(|f| f.0).collect()
    })
}

#[clickhouse_udf]
fn adtally_filter_ids(
    filters_json: String,
    country: String,
    ip: String,
    user_id: String,
) -> Result<Vec<u32>, String> {
    filter_ids(&filters_json, &country, &ip, &user_id)
}

/// Merges top-N lists over disjoint ad sets.
pub fn merge_top_n(lists: Vec<Vec<(String, u64)>>, n: u32) -> Result<Vec<(String, u64)>, String> {
    let merged = topn::merge_pairs(&lists, n as usize)?;
    Ok(merged
        .into_iter()
        .map(|r| (r.ad_id.to_string(), r.clicks))
        .collect())
}

#[clickhouse_udf]
fn adtally_merge_top_n(
    lists: Vec<Vec<(String, u64)>>,
    n: u32,
) -> Result<Vec<(String, u64)>, String> {
    merge_top_n(lists, n)
}

/// ClickHouse sends `String` columns as MessagePack `bin` or `str`; this
/// accepts both, keeping the exact bytes (payloads need not be UTF-8).
mod serde_bytes_like {
    use clickhouse_wasm_udf::serde::Deserialize;
    use clickhouse_wasm_udf::serde::de::{self, Deserializer, Visitor};
    use std::fmt;

    pub struct Bytes(pub Vec<u8>);

    impl<'de> Deserialize<'de> for Bytes {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Bytes;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a string or bytes")
                }
                fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                    Ok(Bytes(v.to_vec()))
                }
                fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                    Ok(Bytes(v))
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Bytes, E> {
                    Ok(Bytes(v.as_bytes().to_vec()))
                }
            }
            d.deserialize_bytes(V)
        }
    }
}
