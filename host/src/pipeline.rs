//! The pipeline `adtally run` runs: a Kafka topic, through the core
//! component in wasmtime, into ClickHouse.

use crate::sink::Sink;
use crate::source::{self, ConsumeOptions, ConsumeStats};
use adtally_runtime::{Limits, ModuleInfo, Runtime};
use anyhow::Result;
use std::path::Path;

/// Where the outputs go and which module computes them.
pub struct Target<'a> {
    /// ClickHouse HTTP URL.
    pub url: &'a str,
    /// ClickHouse database.
    pub db: &'a str,
    /// The core component.
    pub module: &'a Path,
    /// The core's configuration (JSON; defaults fill gaps).
    pub config_json: &'a str,
    /// LZ4-compress inserts (the `clickhouse` crate's default). Worth it
    /// over a network; on loopback to a co-located server it only costs
    /// CPU on both sides.
    pub compress: bool,
    /// ClickHouse credentials.
    pub auth: crate::connect::ClickHouseAuth,
    /// Each partition's instance: its memory cap and call deadline.
    pub limits: Limits,
}

/// What a run did, and with which module.
pub struct Report {
    /// Totals.
    pub stats: ConsumeStats,
    /// What the module says about itself.
    pub module: ModuleInfo,
    /// The module's SHA-256, on every row it wrote.
    pub sha256: String,
}

/// Consumes `opts.topic` into `target` until idle (or forever).
pub async fn run(opts: &ConsumeOptions, target: &Target<'_>) -> Result<Report> {
    let rt = Runtime::new(target.limits)?;
    let module = rt.load_file(target.module)?;
    // The configuration is checked before anything is consumed.
    module.create(target.config_json)?;
    crate::metrics::module(module.sha256(), module.info().semantics_version);
    let sink = Sink::new(
        target.url,
        target.db,
        &opts.topic,
        module.sha256(),
        target.compress,
        &target.auth,
    );
    let stats = source::consume(opts, &module, target.config_json, &sink).await?;
    Ok(Report {
        stats,
        module: module.info().clone(),
        sha256: module.sha256().to_string(),
    })
}
