//! The adtally core for the browser dashboard and Node.js, via wasm-bindgen.
//!
//! This crate owns only the JavaScript glue. Times are JavaScript numbers
//! (milliseconds, exact up to 2^53); structured results are JSON strings in
//! the core's canonical shape, so the dashboard shows exactly what the
//! pipeline computed. Errors are thrown as `Error` with the core's message.
//!
//! ```js
//! const adtally = require("./adtally_js.js");
//! const e = new adtally.Engine("{}");
//! e.push(0, 0, new TextEncoder().encode("ad1, 1000, u1, 1.1.1.1, USA"), undefined, Date.now());
//! const out = JSON.parse(e.takeOutputs());
//! ```

use adtally_core::topn;
use adtally_core::{
    Config, EventTime, FilterSet, Offset, Outputs, Partition, RecordSummary, WindowSize,
};
use serde_json::json;
use wasm_bindgen::prelude::*;

fn err(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

/// The aggregation engine (see the core's docs for its semantics).
#[wasm_bindgen]
pub struct Engine {
    engine: adtally_core::Engine,
    out: Outputs,
}

#[wasm_bindgen]
impl Engine {
    /// A new engine; `configJson` may omit fields. Throws naming the bad field.
    #[wasm_bindgen(constructor)]
    pub fn new(config_json: &str) -> Result<Engine, JsError> {
        let config = Config::from_json(config_json).map_err(err)?;
        Ok(Engine {
            engine: adtally_core::Engine::new(config).map_err(err)?,
            out: Outputs::default(),
        })
    }

    /// An engine continuing from a snapshot.
    pub fn restore(snapshot: &[u8]) -> Result<Engine, JsError> {
        Ok(Engine {
            engine: adtally_core::Engine::restore(snapshot).map_err(err)?,
            out: Outputs::default(),
        })
    }

    /// Processes one record; outputs accumulate until `takeOutputs`.
    pub fn push(
        &mut self,
        partition: u32,
        offset: f64,
        payload: &[u8],
        record_time_ms: Option<f64>,
        now_ms: f64,
    ) {
        self.engine.push_record(
            Partition(partition),
            Offset(offset as i64),
            payload,
            record_time_ms.map(|t| t as i64),
            now_ms as i64,
            &mut self.out,
        );
    }

    /// Processing time passes.
    pub fn tick(&mut self, now_ms: f64) {
        self.engine.tick(now_ms as i64, &mut self.out);
    }

    /// The accumulated outputs as JSON, and clears them.
    #[wasm_bindgen(js_name = takeOutputs)]
    pub fn take_outputs(&mut self) -> String {
        let s = serde_json::to_string(&self.out).unwrap_or_default();
        self.out.clear();
        s
    }

    /// The whole state.
    pub fn snapshot(&self) -> Vec<u8> {
        self.engine.snapshot()
    }
}

/// What one record is: the core's `RecordSummary` as JSON,
/// `{"kind": "click"|"heartbeat"|"invalid", ...}` with `reason`, or `time`,
/// or `key`, `time`, `ad_id`, `user_id`, `ip`, `country` and `event_id`
/// (when the click has one).
#[wasm_bindgen]
pub fn parse(payload: &[u8], record_time_ms: Option<f64>, max_future_skew_ms: f64) -> String {
    let summary = RecordSummary::of(
        payload,
        record_time_ms.map(|t| t as i64),
        max_future_skew_ms as i64,
    );
    serde_json::to_string(&summary).unwrap_or_default()
}

/// The start of the window holding `timeMs`; throws when `windowMs` is not
/// a window size the core accepts (1 ms to a day).
#[wasm_bindgen(js_name = windowStart)]
pub fn window_start(time_ms: f64, window_ms: f64) -> Result<f64, JsError> {
    if window_ms.fract() != 0.0 {
        return Err(err(format!(
            "invalid config `window_ms` = {window_ms}: must be a whole number of milliseconds"
        )));
    }
    let size = WindowSize::checked(window_ms as i64).map_err(err)?;
    Ok(size.window_of(EventTime(time_ms as i64)).0 as f64)
}

/// The filter ids (0 first) a click with these dimensions matches under
/// `configJson` (a configuration, or a list of filter specs); dimensions no valid click has match nothing (`[]`), as in
/// the core. Throws when the configuration is refused.
#[wasm_bindgen(js_name = filterIds)]
pub fn filter_ids(
    config_json: &str,
    country: &str,
    ip: &str,
    user_id: &str,
) -> Result<Vec<u32>, JsError> {
    let set = FilterSet::from_json(config_json).map_err(err)?;
    let ids = set.matching_dimensions(country, ip, user_id);
    Ok(ids.into_iter().map(|f| f.0).collect())
}

/// `configJson` as the core reads it, every default filled in, as JSON;
/// throws naming the field the core refuses.
#[wasm_bindgen]
pub fn config(config_json: &str) -> Result<String, JsError> {
    Ok(Config::from_json(config_json).map_err(err)?.to_json())
}

/// Merges top-N lists (`[[["ad", clicks], ...], ...]` as JSON) over disjoint
/// ad sets; returns `[["ad", clicks], ...]`. Throws when an ad is in two lists.
#[wasm_bindgen(js_name = mergeTopN)]
pub fn merge_top_n(lists_json: &str, n: u32) -> Result<String, JsError> {
    let lists: Vec<Vec<(String, u64)>> =
        serde_json::from_str(lists_json).map_err(|e| err(format!("lists: {e}")))?;
    let merged = topn::merge_pairs(&lists, n as usize).map_err(err)?;
    Ok(serde_json::to_string(
        &merged
            .iter()
            .map(|r| (r.ad_id.as_str(), r.clicks))
            .collect::<Vec<_>>(),
    )
    .unwrap_or_default())
}

/// `{"name", "version", "semantics_version"}` of the core in this build.
#[wasm_bindgen]
pub fn info() -> String {
    json!({"name": "adtally-core", "version": adtally_core::VERSION, "semantics_version": adtally_core::SEMANTICS_VERSION}).to_string()
}
