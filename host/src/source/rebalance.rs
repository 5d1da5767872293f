//! Rebalances: rdkafka's callback hands assignment changes to the loop,
//! which hands revoked partitions' state over (a snapshot) and opens and
//! positions assigned ones.

use super::cores::Cores;
use super::writer::Writer;
use super::{ConsumeStats, Log};
use adtally_core::Partition;
use anyhow::Result;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, TopicPartitionList};
use std::sync::mpsc;

/// A change of assignment, from rdkafka's rebalance callback to the loop.
pub(super) enum Change {
    Assigned(Vec<Partition>),
    Revoked(Vec<Partition>),
}

pub(super) struct RebalanceContext {
    pub(super) topic: String,
    pub(super) changes: std::sync::Mutex<mpsc::Sender<Change>>,
    /// Each partition's high watermark (the offset after its last record),
    /// from librdkafka's statistics: what the consumer lag is measured to.
    pub(super) high: std::sync::Mutex<std::collections::BTreeMap<Partition, i64>>,
}

impl RebalanceContext {
    /// The records of `p` from `next` on that the broker holds, if known.
    pub(super) fn lag(&self, p: Partition, next: adtally_core::Offset) -> Option<i64> {
        let high = self.high.lock().unwrap_or_else(|e| e.into_inner());
        high.get(&p).map(|h| (h - next.0).max(0))
    }
}

impl ClientContext for RebalanceContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        let mut high = self.high.lock().unwrap_or_else(|e| e.into_inner());
        for (id, p) in &topic.partitions {
            // librdkafka's internal partition (-1) and unknown offsets (-1) aside.
            if *id >= 0 && p.hi_offset >= 0 {
                high.insert(Partition(*id as u32), p.hi_offset);
            }
        }
    }
}

impl ConsumerContext for RebalanceContext {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let parts = |tpl: &TopicPartitionList| -> Vec<Partition> {
            tpl.elements()
                .iter()
                .filter(|e| e.topic() == self.topic)
                .map(|e| Partition(e.partition() as u32))
                .collect()
        };
        let change = match rebalance {
            Rebalance::Assign(tpl) => Change::Assigned(parts(tpl)),
            Rebalance::Revoke(tpl) => Change::Revoked(parts(tpl)),
            Rebalance::Error(e) => {
                tracing::warn!(error = %e, "rebalance");
                return;
            }
        };
        if let Ok(tx) = self.changes.lock() {
            let _ = tx.send(change);
        }
    }
}

/// Applies rebalance changes; returns whether there were any.
pub(super) async fn apply_changes<C: ConsumerContext>(
    changes: &mpsc::Receiver<Change>,
    log: &Log<'_, C>,
    cores: &mut Cores<'_, '_>,
    writer: &mut Writer,
    stats: &mut ConsumeStats,
) -> Result<bool> {
    let mut any = false;
    while let Ok(change) = changes.try_recv() {
        if !any {
            // A hand-over snapshot must cover only acknowledged rows.
            writer.settle(stats).await?;
        }
        any = true;
        match change {
            Change::Revoked(parts) => {
                tracing::info!("partitions revoked: {:?}", numbers(&parts));
                // Hand the state over: the next owner restores it.
                for p in parts {
                    if let Some(mut core) = cores.held.remove(&p)
                        && core.next_offset > core.snapshot_offset
                    {
                        cores.snapshot(p, &mut core).await?;
                    }
                }
            }
            Change::Assigned(parts) => {
                tracing::info!("partitions assigned: {:?}", numbers(&parts));
                for p in parts {
                    let core = match cores.held.remove(&p) {
                        Some(core) => core,
                        None => cores.open(p, log, stats).await?,
                    };
                    let mut core = core;
                    core.rewind = Some(0);
                    log.seek(p, core.next_offset);
                    cores.held.insert(p, core);
                }
            }
        }
    }
    Ok(any)
}

/// Partitions as the numbers an operator knows them by.
fn numbers(parts: &[Partition]) -> Vec<u32> {
    parts.iter().map(|p| p.0).collect()
}
