//! The batching policy: how many records go into one push, and how long
//! the loop waits for them.

use adtally_core::{Offset, Partition};
use adtally_runtime::RecordBatch;
use anyhow::Result;
use rdkafka::consumer::{ConsumerContext, StreamConsumer};
use rdkafka::message::Message;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The longest a batch gathers records: what bounds the latency a record
/// waits in a quiet topic before it is counted, and how often an idle
/// loop ticks the cores (their processing time moves on).
const BATCH_WINDOW: Duration = Duration::from_millis(200);

/// Once a batch has records, the longest pause in arrivals it waits out:
/// what is already queued goes at once, and waiting on would only add
/// latency (a busy topic fills the batch well within it).
const ARRIVAL_PAUSE: Duration = Duration::from_millis(10);

/// One batch of records, packed per partition (each record copied once).
pub(super) struct Batch {
    pub(super) by_partition: BTreeMap<Partition, RecordBatch>,
    pub(super) records: usize,
    /// When its first record arrived.
    pub(super) first_at: Option<Instant>,
}

/// Reads one batch: up to `max` records, within [`BATCH_WINDOW`], and no
/// longer than [`ARRIVAL_PAUSE`] between records once it has some.
pub(super) async fn read<C: ConsumerContext + 'static>(
    consumer: &StreamConsumer<C>,
    max: usize,
) -> Result<Batch> {
    let mut batch = Batch {
        by_partition: BTreeMap::new(),
        records: 0,
        first_at: None,
    };
    let window_end = Instant::now() + BATCH_WINDOW;
    while batch.records < max {
        let mut left = window_end.saturating_duration_since(Instant::now());
        if batch.records > 0 {
            left = left.min(ARRIVAL_PAUSE);
        }
        match tokio::time::timeout(left, consumer.recv()).await {
            Ok(Ok(m)) => {
                batch.first_at.get_or_insert_with(Instant::now);
                let p = Partition(m.partition() as u32);
                batch.by_partition.entry(p).or_default().push(
                    p,
                    Offset(m.offset()),
                    m.payload().unwrap_or_default(),
                    m.timestamp().to_millis(),
                )?;
                batch.records += 1;
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "kafka"),
            Err(_) => break,
        }
    }
    Ok(batch)
}
