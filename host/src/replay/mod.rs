//! Replay: recalculation after a bug fix or a logic change, with the
//! stream's own code path (Kappa). The raw records of a range (the valid
//! clicks of `raw_events`, the invalid records of `batch_invalid_events`
//! and the heartbeats of `batch_heartbeats`, each partition's in their
//! original order) go
//! does, into a new rollup set; the set is checked against what the cores
//! emitted, and reconciled against the batch truth (on the filters both
//! count: every difference must be one of the set's own side outputs, its
//! late clicks or the records its module refused), then switched in for
//! its range with one insert into
//! `rollup_sets` (see `clickhouse/sql/schema.sql`). The set it replaced
//! stays in the tables, queryable through `clicks_per_minute_by_set`, until
//! dropped ([`drop_set`]).
//!
//! Which records: for each partition, the span of offsets from the first
//! to the last raw event whose window is in the range, so that every click
//! of the range and every duplicate of one is seen. Each partition's input
//! ends with a quorum of heartbeats past the range's last window (the end
//! of a bounded input), so that every window of the range is final. Only
//! outputs of the range are kept: rollups and side outputs of its windows,
//! rankings of its minutes. Replay never writes the live stream's rows,
//! and never reads Kafka.

mod sets;

pub use sets::{SetRow, SetState, Verified, drop_set, list, switch};

use crate::reconcile::Range;
use crate::sink::Sink;
use adtally_core::{FilterId, Offset, Outputs, Partition, WindowStart};
use adtally_runtime::{Module, RecordBatch};
use anyhow::{Context, Result, bail};
use clickhouse::Row;
use serde::Deserialize;
use std::collections::HashMap;
use std::time::Instant;

/// What to replay.
#[derive(Clone, Debug)]
pub struct Options {
    /// The topic whose raw records are replayed.
    pub topic: String,
    /// The event-time range.
    pub range: Range,
    /// The new set's name; default `replay-<time>-<module hash prefix>`.
    pub set: Option<String>,
    /// Switch readers to the set once it is checked.
    pub switch: bool,
    /// Records per call into a core.
    pub batch: usize,
    /// Allow the set to count fewer filters than the rollups readers see
    /// now for the range (they would no longer see the others).
    pub drop_filters: bool,
}

/// What a replay did.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The set written.
    pub set: String,
    /// Partitions replayed.
    pub partitions: usize,
    /// Records read and pushed (end-of-input heartbeats not included).
    pub records: u64,
    /// Rollup cells of the range (their final counts).
    pub cells: u64,
    /// Their clicks.
    pub clicks: u64,
    /// Duplicates the cores dropped.
    pub duplicates: u64,
    /// Late clicks of the range.
    pub late: u64,
    /// Records the cores found invalid or side-lined.
    pub invalid: u64,
    /// Seconds from the first read to the switch.
    pub seconds: f64,
    /// Whether readers now see it.
    pub switched: bool,
    /// The set reconciled against the batch truth, on the filters both
    /// count.
    pub verified: crate::reconcile::Summary,
    /// Filters of the replay's configuration the batch truth does not
    /// count, so not verified.
    pub unverified_filters: Vec<FilterId>,
}

#[derive(Row, Deserialize)]
struct Span {
    source_partition: u32,
    first: i64,
    last: i64,
    first_in_range: i64,
    last_click_ms: i64,
}

#[derive(Row, Deserialize)]
struct RawRecord {
    source_offset: i64,
    record_time_ms: Option<i64>,
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
}

/// The resolved configuration's fields a replay needs to end its input.
#[derive(Deserialize)]
struct Timing {
    window_ms: i64,
    out_of_orderness_ms: i64,
    allowed_lateness_ms: i64,
    watermark_quorum: u32,
    top_n_windows: Vec<u32>,
}

/// The module file `arg` names: a path, or the SHA-256 (64 hex digits, as
/// rows carry it) of one of the `.wasm` files in `dir`.
pub fn find_module(arg: &str, dir: &std::path::Path) -> Result<std::path::PathBuf> {
    let path = std::path::Path::new(arg);
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    let is_sha = arg.len() == 64 && arg.bytes().all(|b| b.is_ascii_hexdigit());
    if !is_sha {
        bail!("--module {arg}: no such file, and not a SHA-256 (64 hex digits)");
    }
    let wanted = arg.to_ascii_lowercase();
    let mut seen = Vec::new();
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("reading the modules in {}", dir.display()))?;
    for entry in entries {
        let p = entry?.path();
        if p.extension().is_some_and(|e| e == "wasm") {
            let sha = adtally_runtime::sha256_of(&std::fs::read(&p)?);
            if sha == wanted {
                return Ok(p);
            }
            seen.push(format!("{} {}", &sha[..12], p.display()));
        }
    }
    bail!(
        "no module with SHA-256 {wanted} in {} (there: {})",
        dir.display(),
        if seen.is_empty() {
            "none".to_string()
        } else {
            seen.join(", ")
        }
    )
}

/// Replays `opts.range` of `opts.topic` through `module` under
/// `config_json` into a new rollup set of `sink`'s database.
pub async fn replay(
    sink: &Sink,
    module: &Module,
    config_json: &str,
    opts: &Options,
) -> Result<Report> {
    let started = Instant::now();
    let client = sink.client();
    let mut probe = module.create(config_json)?;
    let timing: Timing =
        serde_json::from_str(&probe.config()?).context("reading the module's configuration")?;
    let config = probe.config()?;
    drop(probe);
    let set = opts.set.clone().unwrap_or_else(|| {
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let stamp: String = now.chars().filter(char::is_ascii_digit).collect();
        format!("replay-{stamp}-{}", &module.sha256()[..12])
    });
    if set.is_empty() {
        bail!("a rollup set needs a name ('' is the live stream's)");
    }
    let ours = sets::counted_filters(&config)?;
    if !opts.drop_filters {
        sets::refuse_dropped_filters(client, &opts.topic, opts.range, &ours).await?;
    }
    sets::create(client, &set, opts, module.sha256(), &config).await?;
    // Whatever stops the replay from here on leaves the set failed (never
    // switched in, its name kept until dropped).
    let result: Result<Report> = async {
        let sink = sink.clone().into_rollup_set(&set);
        // The rankings of the range's first minutes sum the windows before it:
        // those are read too (their rollups are not kept).
        let longest = timing
            .top_n_windows
            .iter()
            .copied()
            .max()
            .unwrap_or(1)
            .max(1);
        let lookback = i64::from(longest - 1).saturating_mul(timing.window_ms);
        let spans: Vec<Span> = client
            .query(
                "SELECT source_partition, min(source_offset) AS first, max(source_offset) AS last, \
             minIf(source_offset, window_start >= fromUnixTimestamp64Milli({range_from:Int64}, 'UTC')) AS first_in_range, \
                 toUnixTimestamp64Milli(max(click_ts)) AS last_click_ms FROM raw_events \
                 WHERE topic = {topic:String} AND window_start >= fromUnixTimestamp64Milli({from:Int64}, 'UTC') \
                 AND window_start < fromUnixTimestamp64Milli({to:Int64}, 'UTC') \
                 GROUP BY source_partition ORDER BY source_partition",
            )
            .param("topic", &opts.topic)
            .param("from", opts.range.from.0.saturating_sub(lookback))
        .param("range_from", opts.range.from.0)
            .param("to", opts.range.to.0)
            .fetch_all()
            .await
            .context("finding the partitions' spans of the range")?;
        let mut report = Report {
            set: set.clone(),
            partitions: spans.len(),
            ..Report::default()
        };
        // Each cell's latest (version, clicks), to check the set once written.
        let mut cells: HashMap<(i64, u32, u32, String), (u32, u64)> = HashMap::new();
        let now_ms = opts.range.to.0;
        for span in &spans {
            let p = Partition(span.source_partition);
            let mut core = module.create(config_json)?;
            let mut rows = client
                .query(
                    "SELECT source_offset, record_time_ms, payload FROM ( \
                       SELECT source_offset, record_time_ms, payload FROM raw_events \
                       WHERE topic = {topic:String} AND source_partition = {p:UInt32} \
                       AND source_offset BETWEEN {first:Int64} AND {last:Int64} \
                       UNION ALL \
                       SELECT source_offset, record_time_ms, payload FROM batch_invalid_events \
                       WHERE topic = {topic:String} AND source_partition = {p:UInt32} \
                       AND source_offset BETWEEN {first:Int64} AND {last:Int64} \
                       UNION ALL \
                       SELECT source_offset, record_time_ms, payload FROM batch_heartbeats \
                       WHERE topic = {topic:String} AND source_partition = {p:UInt32} \
                       AND source_offset BETWEEN {first:Int64} AND {last:Int64}) \
                     ORDER BY source_offset LIMIT 1 BY source_offset",
                )
                .param("topic", &opts.topic)
                .param("p", p.0)
                .param("first", span.first)
                .param("last", span.last)
                .fetch::<RawRecord>()?;
            let mut batch = RecordBatch::with_capacity(opts.batch, opts.batch * 128);
            loop {
                let row = rows
                    .next()
                    .await
                    .with_context(|| format!("reading the raw records of partition {p}"))?;
                if let Some(r) = &row {
                    batch.push(p, Offset(r.source_offset), &r.payload, r.record_time_ms)?;
                    report.records += 1;
                }
                if row.is_none() {
                    // The end of the input: heartbeats past the range's
                    // last window, in the last call.
                    let end = span.last_click_ms.max(opts.range.to.0).saturating_add(
                        timing.window_ms + timing.out_of_orderness_ms + timing.allowed_lateness_ms + 1,
                    );
                    for i in 0..i64::from(timing.watermark_quorum) {
                        let payload = format!("{{\"heartbeat_ms\": {}}}", end + i);
                        batch.push(p, Offset(span.last + 1 + i), payload.as_bytes(), None)?;
                    }
                }
                if batch.len() >= opts.batch || row.is_none() {
                    let out = core.push_batch(&batch, now_ms)?;
                    let kept = (span.first_in_range, span.last);
                    keep(&sink, p, kept, out, opts.range, &mut cells, &mut report).await?;
                    batch = RecordBatch::with_capacity(opts.batch, opts.batch * 128);
                }
                if row.is_none() {
                    break;
                }
            }
        }
        report.cells = cells.len() as u64;
        report.clicks = cells.values().map(|(_, c)| c).sum();
        // The set as ClickHouse holds it is what the cores emitted.
        let (stored_cells, stored_clicks): (u64, u64) = client
            .query(
                "SELECT count(), sum(clicks) FROM (SELECT window_start, ad_id, filter_id, source_partition, \
                 argMax(clicks, version) AS clicks FROM rollups WHERE rollup_set = {set:String} \
                 GROUP BY window_start, ad_id, filter_id, source_partition)",
            )
            .param("set", &set)
            .fetch_one()
            .await
            .context("reading the replayed set back")?;
        if (stored_cells, stored_clicks) != (report.cells, report.clicks) {
            sets::change(client, &set, SetState::Failed).await?;
            bail!(
                "rollup set {set} holds {stored_cells} cells and {stored_clicks} clicks, the cores emitted {} and {}: \
                 not switched (drop it with `adtally replay drop {set}`)",
                report.cells,
                report.clicks
            );
        }
        let verified = sets::verify(client, sink.db(), &set).await?;
        report.verified = verified.summary;
        report.unverified_filters = verified.unverified;
        sets::change(client, &set, SetState::Ready).await?;
        if opts.switch {
            sets::change(client, &set, SetState::Active).await?;
            report.switched = true;
        }
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }
    .await;
    if result.is_err() {
        let _ = sets::change(client, &set, SetState::Failed).await;
    }
    result
}

/// Writes the outputs of partition `p` that belong to `range` (invalid
/// records of offsets `first..=last`) into the set, and counts them.
async fn keep(
    sink: &Sink,
    p: Partition,
    (first, last): (i64, i64),
    mut out: Outputs,
    range: Range,
    cells: &mut HashMap<(i64, u32, u32, String), (u32, u64)>,
    report: &mut Report,
) -> Result<()> {
    let within = |w: WindowStart| w >= range.from && w < range.to;
    out.rollups.retain(|r| within(r.window_start));
    out.top_n.retain(|t| within(t.minute));
    out.late.retain(|l| within(l.window_start));
    // Records of the range's own span only: not those read for the first
    // rankings' earlier windows, nor the end heartbeats (their made-up
    // offsets are other records' positions).
    out.invalid.retain(|i| (first..=last).contains(&i.offset.0));
    for r in &out.rollups {
        let cell = cells
            .entry((
                r.window_start.0,
                r.filter_id.0,
                r.partition.0,
                r.ad_id.as_str().to_string(),
            ))
            .or_default();
        if r.version >= cell.0 {
            *cell = (r.version, r.clicks);
        }
    }
    report.duplicates += out.duplicates;
    report.late += out.late.len() as u64;
    report.invalid += out.invalid.len() as u64;
    sink.write(&[(p, out)])
        .await
        .with_context(|| format!("writing the replay of partition {p}"))
}
