//! The reconciliation's report: every differing cell as a table, CSV or
//! JSON, and the summary line.

use super::{Difference, Range, Summary, Verdict};
use anyhow::Result;
use std::io::Write;

/// How the differences are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns, then the summary.
    Table,
    /// One header line, then a line per differing cell.
    Csv,
    /// One object: the range, the differences and the summary.
    Json,
}

/// An event time as RFC 3339 (UTC, milliseconds), or the ms when out of range.
pub fn time(ms: i64) -> String {
    u64::try_from(ms)
        .ok()
        .map(|ms| std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .map(|t| humantime::format_rfc3339_millis(t).to_string())
        .unwrap_or_else(|| format!("{ms} ms"))
}

const COLUMNS: [&str; 10] = [
    "window_start",
    "ad_id",
    "filter_id",
    "stream",
    "batch",
    "verdict",
    "late",
    "side_lined",
    "cross_partition",
    "expected",
];

/// Writes a report, a difference at a time.
pub struct Report<W: Write> {
    out: W,
    format: Format,
    range: Range,
    rows: u64,
}

impl<W: Write> Report<W> {
    /// Starts a report of `range` on `out`; `header`: whether a CSV report
    /// starts with its header line (not when appended to one that has it).
    pub fn new(mut out: W, format: Format, range: Range, header: bool) -> Result<Report<W>> {
        match format {
            Format::Table => writeln!(
                out,
                "{:<24} {:<24} {:>6} {:>9} {:>9}  {:<28} {:>9}",
                "window_start", "ad_id", "filter", "stream", "batch", "verdict", "expected"
            )?,
            Format::Csv if header => writeln!(out, "{}", COLUMNS.join(","))?,
            Format::Csv => {}
            Format::Json => write!(
                out,
                "{{\"range\":{{\"from\":{},\"to\":{}}},\"differences\":[",
                serde_json::to_string(&time(range.from.0))?,
                serde_json::to_string(&time(range.to.0))?
            )?,
        }
        Ok(Report {
            out,
            format,
            range,
            rows: 0,
        })
    }

    /// Adds a differing cell.
    pub fn difference(&mut self, d: &Difference) -> Result<()> {
        let (verdict, expected) = match d.verdict {
            Verdict::Explained(e) => (e.label(), d.stream),
            Verdict::Unexplained { expected } => ("unexplained".to_string(), expected),
        };
        match self.format {
            Format::Table => writeln!(
                self.out,
                "{:<24} {:<24} {:>6} {:>9} {:>9}  {:<28} {:>9}",
                time(d.window_start.0),
                d.ad_id,
                d.filter_id.0,
                d.stream,
                d.batch,
                verdict,
                expected
            )?,
            Format::Csv => {
                let e = match d.verdict {
                    Verdict::Explained(e) => e,
                    Verdict::Unexplained { .. } => Default::default(),
                };
                let mut w = csv::WriterBuilder::new()
                    .has_headers(false)
                    .from_writer(&mut self.out);
                w.write_record([
                    time(d.window_start.0),
                    d.ad_id.clone(),
                    d.filter_id.0.to_string(),
                    d.stream.to_string(),
                    d.batch.to_string(),
                    verdict,
                    e.late.to_string(),
                    e.side_lined.to_string(),
                    e.cross_partition.to_string(),
                    expected.to_string(),
                ])?;
                w.flush()?;
            }
            Format::Json => {
                if self.rows > 0 {
                    write!(self.out, ",")?;
                }
                serde_json::to_writer(&mut self.out, d)?;
            }
        }
        self.rows += 1;
        Ok(())
    }

    /// Ends the report with `summary`; gives back where it went.
    pub fn finish(mut self, summary: &Summary) -> Result<W> {
        match self.format {
            Format::Table => writeln!(self.out, "{}", line(self.range, summary))?,
            Format::Csv => {}
            Format::Json => writeln!(
                self.out,
                "],\"summary\":{}}}",
                serde_json::to_string(summary)?
            )?,
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

/// The summary in one line.
pub fn line(range: Range, s: &Summary) -> String {
    format!(
        "reconcile {} to {}: {} cells, {} equal, {} explained ({} late, {} side-lined, {} cross-partition), \
         {} unexplained; clicks: stream {}, batch {}",
        time(range.from.0),
        time(range.to.0),
        s.cells,
        s.equal,
        s.explained(),
        s.late,
        s.side_lined,
        s.cross_partition,
        s.unexplained,
        s.stream_clicks,
        s.batch_clicks
    )
}
