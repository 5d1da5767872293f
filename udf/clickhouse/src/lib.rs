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
//! | `adtally_parse` | BUFFERED_V1 | `(payload String) -> Tuple(kind, reason, key, ad_id String, time_ms Int64, user_id, ip, country, event_id String)` |
//! | `adtally_parse_at` | BUFFERED_V1 | `(payload String, record_time_ms Int64, max_future_skew_ms Int64) -> same` |
//! | `adtally_window_start` | ROW_DIRECT | `(time_ms Int64, window_ms Int64) -> Int64` |
//! | `adtally_filter_ids` | BUFFERED_V1 | `(filters_json String, country String, ip String, user_id String) -> Array(UInt32)` |
//! | `adtally_merge_top_n` | BUFFERED_V1 | `(lists Array(Array(Tuple(String, UInt64))), n UInt32) -> Array(Tuple(String, UInt64))` |
//! | `adtally_semantics_version` | ROW_DIRECT | `(x UInt32) -> UInt32`, ignores `x` |
//!
//! `kind` is `click`, `heartbeat` or `invalid`; `reason` is the invalid
//! reason's code (empty otherwise); `key` is the event key in 32 hex digits.
//! Fields that do not apply are empty strings and 0.

use adtally_core::topn;
use adtally_core::{
    AdId, Click, Config, Country, EventKey, EventTime, FilterSet, Record, UserId, WindowSize,
    parse_record,
};
use clickhouse_wasm_udf::clickhouse_udf;
use std::cell::RefCell;

/// One parsed record, as the tuple the SQL sees.
pub type Parsed = (
    String,
    String,
    String,
    String,
    i64,
    String,
    String,
    String,
    String,
);

/// What `adtally_parse` returns for a payload.
pub fn parse(payload: &[u8], record_time_ms: Option<i64>, max_future_skew_ms: i64) -> Parsed {
    let e = String::new;
    match parse_record(payload, record_time_ms, max_future_skew_ms) {
        Err(r) => (
            "invalid".into(),
            r.code().to_string(),
            e(),
            e(),
            0,
            e(),
            e(),
            e(),
            e(),
        ),
        Ok(Record::Heartbeat(t)) => ("heartbeat".into(), e(), e(), e(), t.0, e(), e(), e(), e()),
        Ok(Record::Click(c)) => (
            "click".into(),
            e(),
            EventKey::of(&c).to_string(),
            c.ad_id.to_string(),
            c.timestamp.0,
            c.user_id.to_string(),
            c.ip.to_string(),
            c.country.to_string(),
            c.event_id.map(|i| i.to_string()).unwrap_or_default(),
        ),
    }
}

#[clickhouse_udf]
fn adtally_parse(payload: serde_bytes_like::Bytes) -> Parsed {
    parse(&payload.0, None, 0)
}

#[clickhouse_udf]
fn adtally_parse_at(
    payload: serde_bytes_like::Bytes,
    record_time_ms: i64,
    max_future_skew_ms: i64,
) -> Parsed {
    parse(&payload.0, Some(record_time_ms), max_future_skew_ms)
}

/// Window start of `time_ms` for windows of `window_ms` (floored; a
/// `window_ms` below 1 is treated as 1).
#[unsafe(no_mangle)]
pub extern "C" fn adtally_window_start(time_ms: i64, window_ms: i64) -> i64 {
    WindowSize::new(window_ms)
        .unwrap_or(WindowSize::new(1).expect("1 is a size"))
        .window_of(EventTime(time_ms))
        .0
}

/// The semantics version of the core in this module.
#[unsafe(no_mangle)]
pub extern "C" fn adtally_semantics_version(_x: u32) -> u32 {
    if cfg!(feature = "upgrade-test-marker") {
        adtally_core::SEMANTICS_VERSION + 1000
    } else {
        adtally_core::SEMANTICS_VERSION
    }
}

thread_local! {
    /// The last filter configuration seen: SQL passes the same constant for
    /// every row, so it is parsed once.
    static FILTERS: RefCell<Option<(String, FilterSet)>> = const { RefCell::new(None) };
}

/// The filter ids (0 first) a click with these dimensions matches under
/// `filters_json` (a JSON list of filter specs, or a whole config object).
/// Dimensions that are not valid (as on an invalid record's row, which SQL
/// may evaluate anyway) match nothing: `[]`. A bad `filters_json` is an error.
pub fn filter_ids(
    filters_json: &str,
    country: &str,
    ip: &str,
    user_id: &str,
) -> Result<Vec<u32>, String> {
    FILTERS.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.as_ref().is_none_or(|(json, _)| json != filters_json) {
            let config_json = if filters_json.trim_start().starts_with('[') {
                format!("{{\"filters\":{filters_json}}}")
            } else {
                filters_json.to_string()
            };
            let config = Config::from_json(&config_json).map_err(|e| e.to_string())?;
            let set = config.check().map_err(|e| e.to_string())?;
            *cache = Some((filters_json.to_string(), set));
        }
        let set = &cache.as_ref().expect("filled above").1;
        let (Ok(user_id), Ok(ip), Ok(country)) = (
            UserId::new(user_id),
            ip.parse::<adtally_core::IpAddr>(),
            Country::new(country),
        ) else {
            return Ok(Vec::new());
        };
        let click = Click {
            ad_id: AdId::new("x").expect("valid"),
            timestamp: EventTime(0),
            user_id,
            ip: ip.to_canonical(),
            country,
            event_id: None,
        };
        let mut ids = Vec::new();
        set.matching(&click, &mut ids);
        Ok(ids.into_iter().map(|f| f.0).collect())
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
