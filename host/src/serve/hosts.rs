//! The `adtally run` hosts' health, read from their Prometheus metrics
//! (`--host-metrics`), for the dashboard.

use axum::body::Bytes;
use http_body_util::{BodyExt, Empty};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// How long a host's metrics may take to arrive.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// One host, as its metrics say.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct HostStatus {
    /// Its metrics URL.
    pub url: String,
    /// Why its metrics could not be read, if so.
    pub error: Option<String>,
    /// Records read.
    pub records: u64,
    /// Clicks in rollup rows emitted the first time (filter 0).
    pub clicks_emitted: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Late clicks side-lined.
    pub late: u64,
    /// Invalid records side-lined, by reason.
    pub invalid: BTreeMap<String, u64>,
    /// The module it runs (SHA-256) and its semantics version.
    pub module: Option<(String, String)>,
    /// Its partitions.
    pub partitions: Vec<HostPartition>,
}

/// One partition of a host.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct HostPartition {
    /// The partition.
    pub partition: u32,
    /// Records behind the broker's high watermark.
    pub lag: Option<u64>,
    /// Processing time minus the partition's watermark, in seconds.
    pub watermark_delay_seconds: Option<f64>,
}

/// Every host's status, read at once (all within `SCRAPE_TIMEOUT`).
pub(super) async fn statuses(urls: &[String]) -> Vec<HostStatus> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, url) in urls.iter().enumerate() {
        let url = url.clone();
        tasks.spawn(async move { (i, status(url).await) });
    }
    let mut out: Vec<(usize, HostStatus)> = tasks.join_all().await;
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, s)| s).collect()
}

async fn status(url: String) -> HostStatus {
    match tokio::time::timeout(SCRAPE_TIMEOUT, scrape(&url)).await {
        Ok(Ok(text)) => parse(&url, &text),
        Ok(Err(e)) => HostStatus {
            url,
            error: Some(e),
            ..HostStatus::default()
        },
        Err(_) => HostStatus {
            url,
            error: Some(format!("no answer within {SCRAPE_TIMEOUT:?}")),
            ..HostStatus::default()
        },
    }
}

async fn scrape(url: &str) -> Result<String, String> {
    let uri: axum::http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let res = client.get(uri).await.map_err(|e| e.to_string())?;
    if !res.status().is_success() {
        return Err(format!("HTTP {}", res.status()));
    }
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|e| e.to_string())
}

fn parse(url: &str, text: &str) -> HostStatus {
    let mut status = HostStatus {
        url: url.to_owned(),
        ..HostStatus::default()
    };
    let scrape = match prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))) {
        Ok(s) => s,
        Err(e) => {
            status.error = Some(format!("unreadable metrics: {e}"));
            return status;
        }
    };
    let mut partitions: BTreeMap<u32, HostPartition> = BTreeMap::new();
    for s in &scrape.samples {
        let v = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => continue,
        };
        let partition = s
            .labels
            .get("partition")
            .and_then(|p| p.parse::<u32>().ok());
        match (s.metric.as_str(), partition) {
            ("adtally_records_total", _) => status.records += v as u64,
            ("adtally_clicks_emitted_total", _) => status.clicks_emitted += v as u64,
            ("adtally_duplicates_total", _) => status.duplicates += v as u64,
            ("adtally_late_total", _) => status.late += v as u64,
            ("adtally_invalid_total", _) => {
                let reason = s.labels.get("reason").unwrap_or("?").to_owned();
                *status.invalid.entry(reason).or_default() += v as u64;
            }
            ("adtally_module_info", _) => {
                status.module = Some((
                    s.labels.get("sha256").unwrap_or("").to_owned(),
                    s.labels.get("semantics_version").unwrap_or("").to_owned(),
                ));
            }
            ("adtally_consumer_lag", Some(p)) => part(&mut partitions, p).lag = Some(v as u64),
            ("adtally_watermark_delay_seconds", Some(p)) => {
                part(&mut partitions, p).watermark_delay_seconds = Some(v)
            }
            _ => {}
        }
    }
    status.partitions = partitions.into_values().collect();
    status
}

fn part(partitions: &mut BTreeMap<u32, HostPartition>, p: u32) -> &mut HostPartition {
    partitions.entry(p).or_insert_with(|| HostPartition {
        partition: p,
        ..HostPartition::default()
    })
}
