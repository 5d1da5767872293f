//! Kafka: consuming a topic into the core.
//!
//! Each assigned partition has its own core (a component instance): the
//! core's outputs are then a pure function of that partition's records, so
//! a partition can move between consumers with its state.
//!
//! The consumer commits nothing to Kafka. Where it stands is written to
//! ClickHouse after the rows it covers were acknowledged: `consumer_offsets`
//! after every batch, and, when the [`SnapshotPolicy`] says so, the state of
//! each core with the offset it covers (`snapshots`). A consumer that is assigned a
//! partition (at start, or after a rebalance) restores the latest snapshot
//! and seeks to its offset, so only the tail is replayed; with no snapshot it
//! starts from the beginning. Replayed records rewrite the same versioned or
//! position-keyed rows, so no count changes. A revoked partition's state is
//! handed over as a snapshot before it is dropped.
//!
//! A core that traps or times out is dropped and restored from the last
//! snapshot, and the partition is replayed from there, the batch that
//! failed one record at a time; a record on which the core fails by itself is
//! quarantined in `invalid_events` (reason `module_trap: ...`) and skipped.

use crate::connect::KafkaProperties;
use crate::sink::{Progress, Sink};
use crate::snapshot_policy::SnapshotPolicy;
use adtally_core::RawRecord;
use adtally_core::{Offset, Partition};
use adtally_runtime::{Module, RecordBatch};
use anyhow::{Context, Result, bail};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::{Offset as KafkaOffset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

mod batch;
mod cores;
mod gaps;
mod rebalance;
mod recovery;
mod writer;

use batch::Batch;
use cores::{Cores, push, say_over_bounds, wasm};
use rebalance::{RebalanceContext, apply_changes};
use recovery::{recover, recover_call};
use writer::Writer;

/// How `consume` runs.
pub struct ConsumeOptions {
    /// Bootstrap servers.
    pub brokers: String,
    /// The topic.
    pub topic: String,
    /// The consumer group.
    pub group: String,
    /// Records per batch at most.
    pub batch: usize,
    /// Stop after this long without a record (tests, backfills); never if `None`.
    pub exit_when_idle: Option<Duration>,
    /// When each partition's state is stored.
    pub snapshots: SnapshotPolicy,
    /// Which partitions this consumer reads.
    pub assignment: Assignment,
    /// Where a partition whose snapshot cannot be restored starts; `None`
    /// refuses to start it.
    pub unrestorable: Option<StartAt>,
    /// librdkafka properties for a secured cluster (SASL, TLS, ...).
    pub kafka: KafkaProperties,
    /// Who feeds the ClickHouse-native path (raw events, the batch truth).
    pub raw_events: RawEvents,
}

/// Who feeds the ClickHouse-native path, which stores every record's raw
/// event (or invalid event) and the per-minute batch truth with the same
/// core, in ClickHouse. On the command line: `host`, `kafka-engine`, `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RawEvents {
    /// The host: each batch's records go into `ingest` before the offsets
    /// they cover are stored.
    Host,
    /// A ClickHouse Kafka table reads the topic itself (`install.py
    /// --kafka-brokers`, servers that have the Kafka engine): the host
    /// writes none.
    KafkaEngine,
    /// No raw events: nothing to reconcile or recalculate from.
    Off,
}

/// Where to start a partition that has no usable state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartAt {
    /// The log's first available offset.
    Earliest,
    /// This offset (or the log's first available one, if it is later).
    Offset(Offset),
}

impl std::str::FromStr for StartAt {
    type Err = String;
    /// `earliest` or an offset.
    fn from_str(s: &str) -> Result<StartAt, String> {
        match s {
            "earliest" => Ok(StartAt::Earliest),
            n => n
                .parse::<i64>()
                .ok()
                .filter(|o| *o >= 0)
                .map(|o| StartAt::Offset(Offset(o)))
                .ok_or_else(|| format!("{s:?} is neither `earliest` nor an offset (0 or more)")),
        }
    }
}

/// How long a request for a topic's metadata or a partition's first
/// offset may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a seek may take.
const SEEK_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the group waits for a silent member before it hands the
/// member's partitions on (`session.timeout.ms`); a batch and its writes
/// take far less.
const SESSION_TIMEOUT_MS: &str = "10000";

/// How long a member may go between polls before the group counts it gone
/// (`max.poll.interval.ms`): twice the session timeout, since the loop
/// polls at least every batch.
const MAX_POLL_INTERVAL_MS: &str = "20000";

/// The shortest idle time after which a consumer that never held a
/// partition exits (`--exit-when-idle`): joining a group, and the eviction
/// of a dead member before it, take time.
const FIRST_ASSIGNMENT_WAIT: Duration = Duration::from_secs(60);

/// The topic as this consumer reads it: where its partitions' logs start,
/// and where their fetches do.
struct Log<'a, C: ConsumerContext + 'static> {
    consumer: &'a StreamConsumer<C>,
    topic: &'a str,
}

impl<C: ConsumerContext> Log<'_, C> {
    /// The first offset `p` still holds (records before it were deleted by
    /// retention or a delete-records request).
    fn start(&self, p: Partition) -> Result<Offset> {
        let (low, _high) = tokio::task::block_in_place(|| {
            self.consumer
                .fetch_watermarks(self.topic, kafka_partition(p), METADATA_TIMEOUT)
        })
        .with_context(|| format!("reading the first offset of {} partition {p}", self.topic))?;
        Ok(Offset(low.max(0)))
    }

    /// Moves `p`'s fetch to `offset`. A failed seek only costs time:
    /// records before `offset` are skipped by the core as replays.
    fn seek(&self, p: Partition, offset: Offset) {
        let to = kafka_offset(offset);
        if let Err(e) = self
            .consumer
            .seek(self.topic, kafka_partition(p), to, SEEK_TIMEOUT)
        {
            tracing::warn!(partition = p.0, offset = offset.0, error = %e, "seek failed");
        }
    }
}

/// How a consumer gets its partitions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Assignment {
    /// The consumer group shares them out, and moves them on rebalances.
    Group,
    /// Every partition of the topic, without a group (one consumer).
    All,
    /// These partitions, without a group (static deployments: each
    /// consumer is told its partitions).
    Only(Vec<Partition>),
}

impl std::str::FromStr for Assignment {
    type Err = String;

    /// `group`, `all`, or a comma-separated list of partitions (`0,2,5`).
    fn from_str(s: &str) -> Result<Assignment, String> {
        match s {
            "group" => Ok(Assignment::Group),
            "all" => Ok(Assignment::All),
            list => list
                .split(',')
                .map(|p| {
                    p.trim().parse::<u32>().map(Partition).map_err(|_| {
                        format!("{p:?} is not a partition number (expected `group`, `all` or a list like `0,2,5`)")
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Assignment::Only),
        }
    }
}

/// Totals of a consume run.
#[derive(Debug, Default)]
pub struct ConsumeStats {
    /// Records read.
    pub records: u64,
    /// Rollup rows written.
    pub rollups: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Late clicks side-lined.
    pub late: u64,
    /// Invalid records side-lined.
    pub invalid: u64,
    /// Snapshots restored when partitions were assigned.
    pub restored: u64,
    /// Records skipped because a restored state already covered them.
    pub replayed: u64,
    /// Cores that trapped and were restored.
    pub traps: u64,
    /// Records quarantined because the core failed on them alone.
    pub quarantined: u64,
    /// Records deleted from the log (retention, delete-records) before
    /// this consumer read them: never counted.
    pub deleted_unread: u64,
    /// When the first record arrived.
    pub first_record_at: Option<Instant>,
    /// When the last batch's rows and offsets were acknowledged.
    pub last_written_at: Option<Instant>,
    /// Per batch: (when its first record arrived, when its rows were acknowledged).
    pub batch_latencies: Vec<Duration>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Where a fetch of the records from `next` on starts, as rdkafka says it.
fn kafka_offset(next: Offset) -> KafkaOffset {
    if next.0 == 0 {
        KafkaOffset::Beginning
    } else {
        KafkaOffset::Offset(next.0)
    }
}

/// A partition as rdkafka numbers it.
fn kafka_partition(p: Partition) -> i32 {
    p.0 as i32
}

/// Consumes the topic into per-partition cores and the sink until idle (or forever).
pub async fn consume(
    opts: &ConsumeOptions,
    module: &Module,
    config_json: &str,
    sink: &Sink,
) -> Result<ConsumeStats> {
    let (tx, changes) = mpsc::channel();
    let context = RebalanceContext {
        topic: opts.topic.clone(),
        changes: std::sync::Mutex::new(tx),
        high: Default::default(),
    };
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &opts.brokers)
        .set("group.id", &opts.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // The statistics give each partition's high watermark (the lag).
        .set("statistics.interval.ms", "1000")
        .set("auto.offset.reset", "earliest")
        // A consumer that died hands its partitions on within these.
        .set("session.timeout.ms", SESSION_TIMEOUT_MS)
        .set("max.poll.interval.ms", MAX_POLL_INTERVAL_MS);
    let consumer: StreamConsumer<RebalanceContext> = opts
        .kafka
        .apply(&mut config)
        .create_with_context(context)
        .context("creating the Kafka consumer")?;
    let log = Log {
        consumer: &consumer,
        topic: &opts.topic,
    };
    let mut cores = Cores {
        module,
        config_json,
        unrestorable: opts.unrestorable,
        sink,
        held: BTreeMap::new(),
        quarantined: BTreeSet::new(),
    };
    let mut stats = ConsumeStats::default();
    let mut writer = Writer {
        sink: sink.clone(),
        inflight: Default::default(),
        previous: None,
    };
    let mut last_record = Instant::now();
    let mut assigned_once = false;
    let fixed = match &opts.assignment {
        Assignment::Group => None,
        Assignment::Only(parts) => Some(parts.clone()),
        Assignment::All => {
            let md = consumer
                .fetch_metadata(Some(&opts.topic), METADATA_TIMEOUT)
                .with_context(|| format!("reading the metadata of topic {}", opts.topic))?;
            let parts: Vec<Partition> = md
                .topics()
                .iter()
                .filter(|t| t.name() == opts.topic)
                .flat_map(|t| t.partitions().iter().map(|p| Partition(p.id() as u32)))
                .collect();
            if parts.is_empty() {
                bail!("topic {} has no partitions (does it exist?)", opts.topic);
            }
            Some(parts)
        }
    };
    match fixed {
        None => consumer
            .subscribe(&[&opts.topic])
            .with_context(|| format!("subscribing to {}", opts.topic))?,
        Some(parts) => {
            // No group: open each partition's core first, then start each
            // partition's fetch at the offset its state covers.
            let mut tpl = TopicPartitionList::new();
            for p in parts {
                let core = cores.open(p, &log, &mut stats).await?;
                tpl.add_partition_offset(
                    &opts.topic,
                    kafka_partition(p),
                    kafka_offset(core.next_offset),
                )
                .with_context(|| format!("assigning partition {p}"))?;
                cores.held.insert(p, core);
            }
            consumer
                .assign(&tpl)
                .with_context(|| format!("assigning partitions of {}", opts.topic))?;
            assigned_once = true;
        }
    }
    loop {
        let Batch {
            by_partition,
            records,
            first_at,
        } = batch::read(&consumer, opts.batch).await?;
        // Rebalances that came meanwhile: hand revoked partitions over, open
        // and position assigned ones (records of a partition no longer held
        // are left to its new owner below).
        if apply_changes(&changes, &log, &mut cores, &mut writer, &mut stats).await? {
            assigned_once |= !cores.held.is_empty();
            last_record = Instant::now();
        }
        let now = now_ms();
        let mut outs: Vec<(Partition, adtally_core::Outputs)> = Vec::new();
        if records == 0 {
            for (p, core) in &cores.held {
                let lag = consumer.context().lag(*p, core.next_offset);
                crate::metrics::partition(*p, lag, core.watermark, now);
            }
            let mut failed = Vec::new();
            for (p, core) in cores.held.iter_mut() {
                match wasm(|| core.agg.tick(now)) {
                    Ok(out) => outs.push((*p, out)),
                    Err(e) => failed.push((*p, e)),
                }
            }
            if !failed.is_empty() {
                writer.settle(&mut stats).await?;
            }
            for (p, e) in failed {
                recover_call(&mut cores, p, "tick", e, &log, &mut stats).await?;
            }
            writer
                .start(outs, Vec::new(), BTreeMap::new(), None, &mut stats)
                .await?;
            // Idle: no record (nor a change of assignment) for that long.
            let idle_for = |idle: Duration| {
                if assigned_once {
                    idle
                } else {
                    idle.max(FIRST_ASSIGNMENT_WAIT)
                }
            };
            if opts
                .exit_when_idle
                .is_some_and(|idle| last_record.elapsed() >= idle_for(idle))
            {
                writer.settle(&mut stats).await?;
                for (p, mut core) in std::mem::take(&mut cores.held) {
                    if core.next_offset > core.snapshot_offset {
                        cores.snapshot(p, &mut core).await?;
                    }
                }
                return Ok(stats);
            }
            continue;
        }
        last_record = Instant::now();
        stats.first_record_at.get_or_insert(last_record);
        let mut next: BTreeMap<Partition, Progress> = BTreeMap::new();
        for (p, packed) in &by_partition {
            let p = *p;
            let recs: Vec<RawRecord> = packed.records();
            let Some(core) = cores.held.get_mut(&p) else {
                // Not (or no longer) ours: its new owner reads it.
                continue;
            };
            if let Some(first) = recs.first()
                && !gaps::ready(&log, p, core, first.offset, &mut stats)?
            {
                continue;
            }
            let call = Instant::now();
            let out = match wasm(|| push(core, packed, &recs, now, &cores.quarantined)) {
                Ok(out) => out,
                Err(e) => {
                    writer.settle(&mut stats).await?;
                    recover(&mut cores, p, &recs, e, &log, &mut stats).await?;
                    continue;
                }
            };
            stats.replayed += out.replayed;
            say_over_bounds(p, core, &out);
            let watermark = match wasm(|| core.agg.positions()) {
                Ok(at) => at
                    .iter()
                    .find(|a| a.partition == p)
                    .and_then(|a| a.watermark),
                Err(e) => {
                    writer.settle(&mut stats).await?;
                    recover_call(&mut cores, p, "positions", e, &log, &mut stats).await?;
                    continue;
                }
            };
            crate::metrics::pushed(&out, call.elapsed());
            core.watermark = watermark;
            let lag = consumer.context().lag(p, core.next_offset);
            crate::metrics::partition(p, lag, watermark, now);
            next.insert(
                p,
                Progress {
                    next_offset: core.next_offset,
                    watermark,
                },
            );
            outs.push((p, out));
        }
        stats.records += records as u64;
        crate::metrics::records(records as u64);
        for (_, out) in &outs {
            stats.rollups += out.rollups.len() as u64;
            stats.duplicates += out.duplicates;
            stats.late += out.late.len() as u64;
            stats.invalid += out.invalid.len() as u64;
        }
        // The records of the partitions whose outputs go out now, for the
        // raw path (records left to a new owner, or to be fetched again, go
        // with the batch that counts them).
        let raw: Vec<(Partition, RecordBatch)> = if opts.raw_events == RawEvents::Host {
            by_partition
                .into_iter()
                .filter(|(p, _)| next.contains_key(p))
                .collect()
        } else {
            Vec::new()
        };
        writer.start(outs, raw, next, first_at, &mut stats).await?;
        let due: Vec<Partition> = cores
            .held
            .iter()
            .filter(|(_, c)| {
                opts.snapshots.due(
                    c.last_snapshot.elapsed(),
                    c.next_offset.0.saturating_sub(c.snapshot_offset.0).max(0) as u64,
                    c.snapshot_bytes,
                )
            })
            .map(|(p, _)| *p)
            .collect();
        if !due.is_empty() {
            writer.settle(&mut stats).await?;
        }
        for p in due {
            if let Some(mut core) = cores.held.remove(&p) {
                let state = wasm(|| core.agg.snapshot());
                match state {
                    Ok(state) => {
                        cores.store_snapshot(p, &mut core, &state).await?;
                        cores.held.insert(p, core);
                    }
                    Err(e) => {
                        cores.held.insert(p, core);
                        recover_call(&mut cores, p, "snapshot", e, &log, &mut stats).await?;
                    }
                }
            }
        }
    }
}
