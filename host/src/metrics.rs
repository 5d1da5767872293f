//! Prometheus metrics of `adtally run` and `adtally serve`: every name in
//! one place, recorded through the `metrics` facade and exposed by
//! `metrics-exporter-prometheus` at `/metrics`.
//!
//! | metric | kind | what |
//! |---|---|---|
//! | `adtally_records_total` | counter | records read from the topic |
//! | `adtally_clicks_emitted_total` | counter | clicks (filter 0) in rollup rows emitted the first time |
//! | `adtally_duplicates_total` | counter | duplicate clicks dropped |
//! | `adtally_late_total` | counter | late clicks side-lined (the late side output) |
//! | `adtally_invalid_total{reason}` | counter | invalid records side-lined, by the core's reason |
//! | `adtally_rollup_rows_total` | counter | rollup rows written |
//! | `adtally_reemitted_rows_total` | counter | rollup rows re-emitted (version > 1: clicks within the allowed lateness) |
//! | `adtally_top_n_rows_total` | counter | top-N rows written |
//! | `adtally_snapshots_total` | counter | partition states stored |
//! | `adtally_snapshot_bytes{partition}` | gauge | size of the partition's last stored state |
//! | `adtally_traps_total` | counter | module instances that trapped and were restored |
//! | `adtally_consumer_lag{partition}` | gauge | records of the partition not yet processed (the broker's high watermark minus the next offset) |
//! | `adtally_watermark_ms{partition}` | gauge | the partition's watermark `W_p` |
//! | `adtally_watermark_delay_seconds{partition}` | gauge | processing time minus `W_p` |
//! | `adtally_write_seconds` | histogram | a batch's ClickHouse writes, until acknowledged |
//! | `adtally_module_call_seconds` | histogram | one push of a batch into a partition's module |
//! | `adtally_module_info{sha256, semantics_version}` | gauge | 1 for the module running |
//! | `adtally_api_requests_total{route, status}` | counter | `serve`'s requests |
//! | `adtally_api_request_seconds{route}` | histogram | `serve`'s time per request |
//!
//! This module records and exposes; it never computes a count.

use adtally_core::{Outputs, Partition};
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::time::Duration;

/// Histogram buckets, in seconds: 100 us to 30 s.
const SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

fn builder() -> anyhow::Result<PrometheusBuilder> {
    Ok(PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)?)
}

/// Serves the metrics at `http://addr/metrics` from a thread of its own
/// (`adtally run --metrics-listen`).
pub fn listen(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    builder()?
        .with_http_listener(addr)
        .install()
        .map_err(|e| anyhow::anyhow!("serving metrics on {addr}: {e}"))
}

/// Records metrics for rendering by the caller (`adtally serve`'s
/// `/metrics` route).
pub fn recorder() -> anyhow::Result<PrometheusHandle> {
    builder()?
        .install_recorder()
        .map_err(|e| anyhow::anyhow!("installing the metrics recorder: {e}"))
}

/// The module running.
pub fn module(sha256: &str, semantics_version: u32) {
    gauge!("adtally_module_info", "sha256" => sha256.to_owned(), "semantics_version" => semantics_version.to_string()).set(1.0);
}

/// One partition's push: its outputs and how long the call took.
pub fn pushed(out: &Outputs, call: Duration) {
    histogram!("adtally_module_call_seconds").record(call.as_secs_f64());
    counter!("adtally_duplicates_total").increment(out.duplicates);
    counter!("adtally_late_total").increment(out.late.len() as u64);
    counter!("adtally_rollup_rows_total").increment(out.rollups.len() as u64);
    counter!("adtally_top_n_rows_total").increment(out.top_n.len() as u64);
    let (mut again, mut clicks) = (0u64, 0u64);
    for r in &out.rollups {
        if r.version > 1 {
            again += 1;
        } else if r.filter_id == adtally_core::FilterId::ALL {
            clicks += r.clicks;
        }
    }
    counter!("adtally_reemitted_rows_total").increment(again);
    counter!("adtally_clicks_emitted_total").increment(clicks);
    for i in &out.invalid {
        counter!("adtally_invalid_total", "reason" => i.reason.code().to_string()).increment(1);
    }
}

/// Records read.
pub fn records(n: u64) {
    counter!("adtally_records_total").increment(n);
}

/// Where a partition stands after a batch: its lag behind the broker's
/// high watermark (if known) and its watermark.
pub fn partition(p: Partition, lag: Option<i64>, watermark: Option<i64>, now_ms: i64) {
    let label = p.0.to_string();
    if let Some(lag) = lag {
        gauge!("adtally_consumer_lag", "partition" => label.clone()).set(lag.max(0) as f64);
    }
    if let Some(w) = watermark {
        gauge!("adtally_watermark_ms", "partition" => label.clone()).set(w as f64);
        gauge!("adtally_watermark_delay_seconds", "partition" => label)
            .set((now_ms - w) as f64 / 1000.0);
    }
}

/// A batch's writes acknowledged after `took`.
pub fn written(took: Duration) {
    histogram!("adtally_write_seconds").record(took.as_secs_f64());
}

/// A partition's state stored.
pub fn snapshot(p: Partition, bytes: usize) {
    counter!("adtally_snapshots_total").increment(1);
    gauge!("adtally_snapshot_bytes", "partition" => p.0.to_string()).set(bytes as f64);
}

/// A module instance trapped and was restored.
pub fn trapped() {
    counter!("adtally_traps_total").increment(1);
}

/// One API request answered.
pub fn request(route: &str, status: u16, took: Duration) {
    counter!("adtally_api_requests_total", "route" => route.to_owned(), "status" => status.to_string())
        .increment(1);
    histogram!("adtally_api_request_seconds", "route" => route.to_owned())
        .record(took.as_secs_f64());
}

#[cfg(test)]
mod tests {
    /// Every metric the example Grafana dashboard plots is one this module
    /// records (histograms through their `_bucket` series).
    #[test]
    fn the_grafana_example_plots_only_recorded_metrics() {
        let dashboard = include_str!("../../examples/grafana/adtally.json");
        let source = include_str!("metrics.rs");
        let mut names: Vec<&str> = dashboard
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("adtally_"))
            .collect();
        names.sort();
        names.dedup();
        assert!(names.len() >= 15, "{names:?}");
        for name in names {
            let base = name.strip_suffix("_bucket").unwrap_or(name);
            assert!(
                source.contains(&format!("\"{base}\"")),
                "{name} is plotted but never recorded"
            );
        }
    }
}
