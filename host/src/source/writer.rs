//! Writing: batches' outputs, then the offsets they cover, in flight while
//! the next batches are read.

use super::ConsumeStats;
use crate::sink::{Progress, Sink};
use adtally_core::Partition;
use adtally_runtime::RecordBatch;
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::time::Instant;

/// Writes batches' outputs, then the offsets they cover, while the next
/// batches are read and aggregated: at most `WRITES_IN_FLIGHT` batches are
/// in flight, and anything that needs every earlier row acknowledged (a
/// snapshot, a hand-over, a restore, the exit) settles them first. A
/// batch's offsets (and the watermarks with them, which tell readers a
/// minute is final) are written only after the batch before it wrote its
/// own: an offset row never lands before the rows of an earlier batch.
pub(super) struct Writer {
    pub(super) sink: Sink,
    pub(super) inflight: std::collections::VecDeque<tokio::task::JoinHandle<Result<BatchWritten>>>,
    /// Done when the last batch started has written its offsets.
    pub(super) previous: Option<tokio::sync::oneshot::Receiver<()>>,
}

/// (when the batch's first record arrived, if it had records; when its
/// writes were acknowledged).
pub(super) type BatchWritten = (Option<Instant>, Instant);

const WRITES_IN_FLIGHT: usize = 2;

/// Batch latencies kept in [`ConsumeStats`] at most.
const LATENCY_SAMPLES: usize = 100_000;

impl Writer {
    /// Waits for the batch in flight; its failure fails the run (a restart
    /// replays from the last snapshot and rewrites the same rows).
    pub(super) async fn settle(&mut self, stats: &mut ConsumeStats) -> Result<()> {
        while !self.inflight.is_empty() {
            self.settle_oldest(stats).await?;
        }
        Ok(())
    }

    pub(super) async fn settle_oldest(&mut self, stats: &mut ConsumeStats) -> Result<()> {
        if let Some(h) = self.inflight.pop_front() {
            let (first, done) = h.await.context("the ClickHouse write task")??;
            // Only batches of records count (not the ticks of an idle loop).
            if let Some(first) = first {
                // A long run keeps only the recent ones.
                if stats.batch_latencies.len() >= LATENCY_SAMPLES {
                    stats.batch_latencies.drain(..LATENCY_SAMPLES / 2);
                }
                stats.batch_latencies.push(done - first);
                stats.last_written_at = Some(done);
            }
        }
        Ok(())
    }

    /// Starts writing `outs`, then `raw` (the records they came from, for
    /// the raw path), then `next` (the offsets they cover).
    pub(super) async fn start(
        &mut self,
        outs: Vec<(Partition, adtally_core::Outputs)>,
        raw: Vec<(Partition, RecordBatch)>,
        next: BTreeMap<Partition, Progress>,
        first_at: Option<Instant>,
        stats: &mut ConsumeStats,
    ) -> Result<()> {
        while self.inflight.len() >= WRITES_IN_FLIGHT {
            self.settle_oldest(stats).await?;
        }
        let sink = self.sink.clone();
        let previous = self.previous.take();
        let (done, next_waits) = tokio::sync::oneshot::channel();
        self.previous = Some(next_waits);
        self.inflight.push_back(tokio::spawn(async move {
            let started = Instant::now();
            sink.write(&outs).await?;
            sink.write_records(&raw).await?;
            // Only now, with the rows acknowledged (this batch's, and the
            // batch's before it), does the position move.
            if let Some(previous) = previous {
                previous
                    .await
                    .context("the batch before this one failed to write")?;
            }
            sink.write_offsets(&next).await?;
            let _ = done.send(());
            crate::metrics::written(started.elapsed());
            Ok((first_at, Instant::now()))
        }));
        Ok(())
    }
}
