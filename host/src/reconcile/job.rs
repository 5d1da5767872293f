//! `adtally reconcile` as a job: one range, or every period as it settles
//! (`--every`, `--daily`); progress on the terminal, the report where asked,
//! and each run's result in the `reconciliations` table.

use super::report::{self, Format, Report};
use super::{Options, Range, Summary};
use adtally_core::{FilterId, WindowStart};
use anyhow::{Context, Result, bail};
use clickhouse::{Client, Row};
use serde::Serialize;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A time on the command line: RFC 3339 (`2026-12-01T10:00:00Z`, or with a
/// space and no zone, taken as UTC) or milliseconds since the epoch.
pub fn parse_time(s: &str) -> Result<WindowStart> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(WindowStart(ms));
    }
    let t = humantime::parse_rfc3339_weak(s).with_context(|| {
        format!("{s:?} is neither an RFC 3339 time (2026-12-01T10:00:00Z) nor milliseconds since the epoch")
    })?;
    let ms = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    Ok(WindowStart(
        i64::try_from(ms).context("a time past the year 292 million")?,
    ))
}

/// Where and how the report goes.
pub struct Output {
    /// The report's format.
    pub format: Format,
    /// The report's file; standard output when `None`.
    pub file: Option<PathBuf>,
}

/// How often, for a scheduled reconciliation.
pub struct Schedule {
    /// Each run covers one period, aligned to the first `from`.
    pub every: Duration,
    /// How long after a period ends it is reconciled: the time the stream
    /// takes to make its windows final, and the raw path to store them.
    pub settle: Duration,
    /// The last period's end; none: run until stopped.
    pub until: Option<WindowStart>,
}

#[derive(Row, Serialize)]
struct ReconciliationRow<'a> {
    range_from: i64,
    range_to: i64,
    filter_ids: Vec<u32>,
    rollup_set: &'a str,
    scheduled: u8,
    cells: u64,
    equal: u64,
    late: u64,
    side_lined: u64,
    cross_partition: u64,
    unexplained: u64,
    stream_clicks: u64,
    batch_clicks: u64,
    stream_modules: &'a [String],
    batch_module: &'a str,
    batch_semantics_versions: &'a [u32],
    seconds: f64,
}

/// Reconciles `opts.range` once: the report to `out`, the summary line on
/// standard error, the result into `reconciliations`. `scheduled`: one
/// period of a schedule, whose report is appended to `out` whole once the
/// run succeeded (a run that failed and is tried again writes nothing
/// twice), with a CSV header only when `header`.
pub async fn once(
    client: &Client,
    db: &str,
    opts: &Options,
    out: &Output,
    scheduled: bool,
    header: bool,
) -> Result<Summary> {
    let started = Instant::now();
    let (summary, held) = if scheduled {
        compare(client, db, opts, Vec::new(), out.format, header).await?
    } else {
        let sink: Box<dyn Write> = match &out.file {
            Some(path) => Box::new(std::io::BufWriter::new(
                std::fs::File::create(path)
                    .with_context(|| format!("opening the report {}", path.display()))?,
            )),
            None => Box::new(std::io::stdout().lock()),
        };
        let (summary, _) = compare(client, db, opts, sink, out.format, true).await?;
        (summary, Vec::new())
    };
    eprintln!("{}", report::line(opts.range, &summary));
    let mut insert = client
        .insert::<ReconciliationRow>("reconciliations")
        .await?;
    insert
        .write(&ReconciliationRow {
            range_from: opts.range.from.0,
            range_to: opts.range.to.0,
            filter_ids: opts.filters.iter().map(|f| f.0).collect(),
            rollup_set: opts.set.as_deref().unwrap_or(""),
            scheduled: scheduled as u8,
            cells: summary.cells,
            equal: summary.equal,
            late: summary.late,
            side_lined: summary.side_lined,
            cross_partition: summary.cross_partition,
            unexplained: summary.unexplained,
            stream_clicks: summary.stream_clicks,
            batch_clicks: summary.batch_clicks,
            stream_modules: &summary.stream_modules,
            batch_module: &summary.batch_module,
            batch_semantics_versions: &summary.batch_semantics_versions,
            seconds: started.elapsed().as_secs_f64(),
        })
        .await?;
    insert
        .end()
        .await
        .context("recording the result in reconciliations")?;
    if scheduled {
        match &out.file {
            Some(path) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| f.write_all(&held))
                .with_context(|| format!("appending to the report {}", path.display()))?,
            None => std::io::stdout().lock().write_all(&held)?,
        }
    }
    Ok(summary)
}

/// The comparison itself, its report written to `sink` (given back), with
/// progress on standard error: a bar on a terminal, else a line per chunk.
async fn compare<W: Write>(
    client: &Client,
    db: &str,
    opts: &Options,
    sink: W,
    format: Format,
    header: bool,
) -> Result<(Summary, W)> {
    let mut report = Report::new(sink, format, opts.range, header)?;
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "reconcile {wide_bar} {pos}/{len} minutes, {elapsed} (eta {eta})",
            )
            .expect("a valid template"),
        );
        bar
    });
    let summary = super::reconcile(
        client,
        db,
        opts,
        |d| report.difference(d),
        |done, total| match &bar {
            Some(bar) => {
                bar.set_length(total);
                bar.set_position(done);
            }
            None => eprintln!("reconcile: {done}/{total} minutes"),
        },
    )
    .await?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let sink = report.finish(&summary)?;
    Ok((summary, sink))
}

/// How long a scheduled run that failed first waits before it is tried
/// again, and the longest it waits.
const RETRY: Duration = Duration::from_secs(30);
const MAX_RETRY: Duration = Duration::from_secs(15 * 60);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The end of the last scheduled run of these filters, if any.
async fn last_scheduled_end(client: &Client, filters: &[FilterId]) -> Result<Option<WindowStart>> {
    let filters: Vec<u32> = filters.iter().map(|f| f.0).collect();
    let end: Option<i64> = client
        .query(
            "SELECT toUnixTimestamp64Milli(max(range_to)) FROM reconciliations \
             WHERE scheduled = 1 AND filter_ids = {filters:Array(UInt32)} HAVING count() > 0",
        )
        .param("filters", &filters)
        .fetch_optional()
        .await
        .context("reading the last scheduled reconciliation")?;
    Ok(end.map(WindowStart))
}

/// Reconciles one period after another as each settles: from `first` (or
/// where the last scheduled run of these filters ended, or the period
/// before the current one), until `schedule.until` or forever. A period
/// with unexplained cells is reported and recorded and the schedule goes
/// on; the result says how many periods had any.
pub async fn every(
    client: &Client,
    db: &str,
    filters: &[FilterId],
    chunk_minutes: u32,
    first: Option<WindowStart>,
    schedule: &Schedule,
    out: &Output,
) -> Result<u64> {
    let period = i64::try_from(schedule.every.as_millis()).unwrap_or(i64::MAX);
    let settle = i64::try_from(schedule.settle.as_millis()).unwrap_or(i64::MAX);
    if period < 60_000 {
        bail!("--every must be at least a minute");
    }
    let mut from = match first {
        Some(f) => f,
        None => match last_scheduled_end(client, filters).await? {
            Some(end) => end,
            None => {
                let settled = now_ms().saturating_sub(settle);
                WindowStart(settled - settled.rem_euclid(period) - period)
            }
        },
    };
    let mut failed = 0;
    let mut retry = RETRY;
    // A CSV header once: at the top of the report file, or of the output.
    let mut header = out
        .file
        .as_ref()
        .is_none_or(|p| std::fs::metadata(p).map_or(true, |m| m.len() == 0));
    loop {
        let to = WindowStart(from.0.saturating_add(period));
        if schedule.until.is_some_and(|u| to > u) {
            return Ok(failed);
        }
        let due = to.0.saturating_add(settle);
        let wait = due.saturating_sub(now_ms());
        if wait > 0 {
            tracing::info!(
                "reconcile: {} to {} is due at {}",
                report::time(from.0),
                report::time(to.0),
                report::time(due)
            );
            tokio::time::sleep(Duration::from_millis(wait as u64)).await;
        }
        let opts = Options {
            range: Range::new(from, to)?,
            filters: filters.to_vec(),
            chunk_minutes,
            set: None,
        };
        // A failed run (ClickHouse away, say) is logged and tried again,
        // waiting twice as long each time up to MAX_RETRY; the schedule
        // never skips a period.
        let summary = match once(client, db, &opts, out, true, header).await {
            Ok(summary) => summary,
            Err(e) => {
                tracing::error!(
                    "reconcile: {} to {} failed, trying again in {} s: {e:#}",
                    report::time(from.0),
                    report::time(to.0),
                    retry.as_secs()
                );
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(MAX_RETRY);
                continue;
            }
        };
        retry = RETRY;
        header = false;
        if summary.unexplained > 0 {
            failed += 1;
            tracing::error!(
                "reconcile: {} unexplained cells from {} to {}",
                summary.unexplained,
                report::time(from.0),
                report::time(to.0)
            );
        }
        from = to;
    }
}
