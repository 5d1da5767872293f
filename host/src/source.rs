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
use crate::sink::Sink;
use crate::snapshot_policy::SnapshotPolicy;
use adtally_core::RawRecord;
use adtally_runtime::{Aggregator, Failure, Module, RecordBatch};
use anyhow::{Context, Result, bail};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

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
}

/// Where to start a partition that has no usable state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartAt {
    /// The log's first available offset.
    Earliest,
    /// This offset (or the log's first available one, if it is later).
    Offset(i64),
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
                .map(StartAt::Offset)
                .ok_or_else(|| format!("{s:?} is neither `earliest` nor an offset (0 or more)")),
        }
    }
}

/// Nothing, when the configuration a snapshot was made under and the one
/// given (`--config`) are the same semantics; else an error naming each
/// field that differs. A restored core keeps the configuration of its
/// state: counting on under another one would change what its numbers
/// mean without saying so, so such a snapshot is treated as one that
/// cannot be restored.
fn config_differences(stored_json: &str, given_json: &str) -> Result<()> {
    let parse = |json: &str, what: &str| -> Result<serde_json::Value> {
        let c = adtally_core::Config::from_json(json)
            .map_err(|e| anyhow::anyhow!("the {what} configuration: {e}"))?;
        Ok(serde_json::to_value(&c)?)
    };
    let (stored, given) = (parse(stored_json, "stored")?, parse(given_json, "given")?);
    let (Some(s), Some(g)) = (stored.as_object(), given.as_object()) else {
        return Ok(());
    };
    let differ: Vec<String> = s
        .iter()
        .filter(|(k, v)| g.get(*k) != Some(v))
        .map(|(k, v)| {
            format!(
                "{k}: {v} in the snapshot, {} given",
                g.get(k).unwrap_or(&serde_json::Value::Null)
            )
        })
        .collect();
    if differ.is_empty() {
        Ok(())
    } else {
        bail!(
            "it was made under another configuration ({})",
            differ.join("; ")
        )
    }
}

/// How long a request for a partition's first offset may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(30);

/// The first offset `p` of `topic` still holds (records before it were
/// deleted by retention or a delete-records request).
fn log_start<C: ConsumerContext>(consumer: &StreamConsumer<C>, topic: &str, p: u32) -> Result<i64> {
    let (low, _high) = tokio::task::block_in_place(|| {
        consumer.fetch_watermarks(topic, p as i32, METADATA_TIMEOUT)
    })
    .with_context(|| format!("reading the first offset of {topic} partition {p}"))?;
    Ok(low.max(0))
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
    Only(Vec<u32>),
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
                    p.trim().parse::<u32>().map_err(|_| {
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

/// A change of assignment, from rdkafka's rebalance callback to the loop.
enum Change {
    Assigned(Vec<u32>),
    Revoked(Vec<u32>),
}

struct RebalanceContext {
    topic: String,
    changes: std::sync::Mutex<mpsc::Sender<Change>>,
}

impl ClientContext for RebalanceContext {}

impl ConsumerContext for RebalanceContext {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let parts = |tpl: &TopicPartitionList| -> Vec<u32> {
            tpl.elements()
                .iter()
                .filter(|e| e.topic() == self.topic)
                .map(|e| e.partition() as u32)
                .collect()
        };
        let change = match rebalance {
            Rebalance::Assign(tpl) => Change::Assigned(parts(tpl)),
            Rebalance::Revoke(tpl) => Change::Revoked(parts(tpl)),
            Rebalance::Error(e) => {
                eprintln!("adtally: rebalance: {e}");
                return;
            }
        };
        if let Ok(tx) = self.changes.lock() {
            let _ = tx.send(change);
        }
    }
}

/// One partition's core and where it stands.
struct PartitionCore<'m> {
    agg: Aggregator<'m>,
    /// The first offset not processed.
    next_offset: i64,
    last_snapshot: Instant,
    /// Offset the state was last stored at.
    snapshot_offset: i64,
    /// Size of the state last stored or restored (0: none).
    snapshot_bytes: u64,
    /// After a trap: records in this range of offsets (the batch that
    /// failed, or all since the snapshot when a tick or snapshot failed)
    /// go one at a time; the records before it are replayed in batches.
    careful: Option<(i64, i64)>,
    /// A record the module ran out of time or memory on by itself, in a
    /// fresh instance: if it does again, the run stops (see [`recover`]).
    suspect_record: Option<i64>,
    /// A call other than a push (tick, snapshot) that trapped, and the
    /// offset the core stood at: the same again stops the run (see
    /// [`recover_call`]).
    suspect_call: Option<(&'static str, i64)>,
    /// When a click was last side-lined for the partition's bounds and
    /// said so (at most once a minute).
    over_bounds_said: Option<Instant>,
    /// Set when the fetch position was (re)set: the next records must
    /// start at or before `next_offset`. Some brokers answer a fetch from
    /// inside a producer batch with the *next* batch; then the consumer
    /// rewinds this far (growing) until nothing is skipped.
    rewind: Option<i64>,
}

impl PartitionCore<'_> {
    /// Whether `recs` go one at a time: some are in the careful range.
    fn is_careful(&self, recs: &[RawRecord<'_>]) -> bool {
        let (Some((from, until)), Some(first), Some(last)) =
            (self.careful, recs.first(), recs.last())
        else {
            return false;
        };
        first.offset.0 <= until && last.offset.0 >= from
    }

    /// The careful range after a failure in `range`: with the one still
    /// pending (a batch before it failed during the replay), so that the
    /// first failure is still replayed one record at a time.
    fn careful_with(&self, range: (i64, i64)) -> (i64, i64) {
        self.careful.map_or(range, |(from, until)| {
            (from.min(range.0), until.max(range.1))
        })
    }
}

/// The cores of the partitions this consumer holds.
struct Cores<'m, 'a> {
    module: &'m Module,
    config_json: &'a str,
    topic: &'a str,
    unrestorable: Option<StartAt>,
    sink: &'a Sink,
    held: BTreeMap<u32, PartitionCore<'m>>,
    /// Records the core failed on by themselves: skipped on every replay.
    quarantined: BTreeSet<(u32, i64)>,
}

impl<'m> Cores<'m, '_> {
    /// A core for `p`: its latest snapshot restored, or a fresh one that
    /// starts at the log's first available offset. A snapshot that cannot
    /// be restored stops the partition, unless the operator chose where
    /// to start instead.
    async fn open<C: ConsumerContext>(
        &mut self,
        p: u32,
        consumer: &StreamConsumer<C>,
        stats: &mut ConsumeStats,
    ) -> Result<PartitionCore<'m>> {
        for offset in self.sink.quarantined(p).await? {
            self.quarantined.insert((p, offset));
        }
        let semantics = self.module.info().semantics_version;
        let low = log_start(consumer, self.topic, p)?;
        let start = match self.sink.load_snapshot(p, semantics).await? {
            None => low,
            Some(snap) => match wasm(|| self.module.restore(&snap.state)).and_then(|mut agg| {
                let stored = wasm(|| agg.config())?;
                config_differences(&stored, self.config_json).map(|()| agg)
            }) {
                Ok(agg) => {
                    eprintln!(
                        "adtally: partition {p}: state restored, resuming at offset {}",
                        snap.next_offset
                    );
                    stats.restored += 1;
                    let mut core = PartitionCore {
                        agg,
                        next_offset: snap.next_offset,
                        last_snapshot: Instant::now(),
                        snapshot_offset: snap.next_offset,
                        snapshot_bytes: snap.state.len() as u64,
                        careful: None,
                        over_bounds_said: None,
                        suspect_record: None,
                        suspect_call: None,
                        rewind: Some(0),
                    };
                    skip_deleted(p, &mut core, low, stats);
                    return Ok(core);
                }
                Err(e) => match self.unrestorable {
                    None => bail!(
                        "partition {p}: the snapshot at offset {} (semantics version {semantics}) \
                         cannot be restored by this module: {e:#}. Refusing to start the \
                         partition: counting it from another offset would change its totals. \
                         Run a module that reads it, or choose where to start with \
                         `--unrestorable-snapshot earliest` or `--unrestorable-snapshot OFFSET`",
                        snap.next_offset
                    ),
                    Some(at) => {
                        let from = match at {
                            StartAt::Earliest => low,
                            StartAt::Offset(o) => o.max(low),
                        };
                        eprintln!(
                            "adtally: partition {p}: the snapshot at offset {} cannot be \
                             restored ({e:#}); starting with no state at offset {from}, as \
                             --unrestorable-snapshot says (its stored snapshots are discarded)",
                            snap.next_offset
                        );
                        self.sink.discard_snapshots(p, semantics).await?;
                        from
                    }
                },
            },
        };
        if start > 0 {
            eprintln!("adtally: partition {p}: no state; starting at offset {start}");
        }
        Ok(PartitionCore {
            agg: wasm(|| self.module.create(self.config_json))?,
            next_offset: start,
            last_snapshot: Instant::now(),
            snapshot_offset: start,
            snapshot_bytes: 0,
            careful: None,
            over_bounds_said: None,
            suspect_record: None,
            suspect_call: None,
            rewind: Some(0),
        })
    }

    async fn snapshot(&self, p: u32, core: &mut PartitionCore<'m>) -> Result<()> {
        let state = wasm(|| core.agg.snapshot())?;
        self.store_snapshot(p, core, &state).await
    }

    /// Stores `state`, `p`'s core's snapshot.
    async fn store_snapshot(
        &self,
        p: u32,
        core: &mut PartitionCore<'m>,
        state: &[u8],
    ) -> Result<()> {
        let semantics = self.module.info().semantics_version;
        self.sink
            .write_snapshot(p, core.next_offset, semantics, state)
            .await?;
        core.last_snapshot = Instant::now();
        core.snapshot_offset = core.next_offset;
        core.snapshot_bytes = state.len() as u64;
        Ok(())
    }
}

/// How far back the first re-fetch after skipped records starts, and how
/// much further each next one does: a producer batch holds at most a few
/// thousand records, so one or two re-fetches reach its start.
const FIRST_REWIND: i64 = 1_000;
const REWIND_GROWTH: i64 = 4;

/// Moves `core` past records its partition no longer holds (`low` is the
/// log's first offset): they were deleted before this consumer read them
/// and are never counted, which is said and counted.
fn skip_deleted(p: u32, core: &mut PartitionCore<'_>, low: i64, stats: &mut ConsumeStats) {
    if low > core.next_offset {
        eprintln!(
            "adtally: partition {p}: offsets {}..{low} were deleted from the log (retention or \
             delete-records) before they were read; they are not counted, counting from {low}",
            core.next_offset
        );
        stats.deleted_unread += (low - core.next_offset) as u64;
        core.next_offset = low;
    }
}

/// Runs a call into the module off the async scheduler: module calls are
/// CPU-bound, and WASI output (a panicking module's message) blocks on a
/// runtime of its own, which tokio allows only from a blocking section.
fn wasm<T>(call: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(call)
}

fn offset_of(next: i64) -> Offset {
    if next == 0 {
        Offset::Beginning
    } else {
        Offset::Offset(next)
    }
}

fn seek<C: ConsumerContext>(consumer: &StreamConsumer<C>, topic: &str, p: u32, offset: i64) {
    let to = offset_of(offset);
    // A failed seek only costs time: records before `offset` are skipped by
    // the core as replays.
    if let Err(e) = consumer.seek(topic, p as i32, to, Duration::from_secs(10)) {
        eprintln!("adtally: partition {p}: seek to {offset}: {e}");
    }
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
    };
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &opts.brokers)
        .set("group.id", &opts.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // A consumer that died hands its partitions on within these: the
        // group waits this long for members to rejoin a rebalance (a batch
        // and its writes take far less).
        .set("session.timeout.ms", "10000")
        .set("max.poll.interval.ms", "20000");
    let consumer: StreamConsumer<RebalanceContext> = opts
        .kafka
        .apply(&mut config)
        .create_with_context(context)
        .context("creating the Kafka consumer")?;
    let mut cores = Cores {
        module,
        config_json,
        topic: &opts.topic,
        unrestorable: opts.unrestorable,
        sink,
        held: BTreeMap::new(),
        quarantined: BTreeSet::new(),
    };
    let mut stats = ConsumeStats::default();
    let mut writer = Writer {
        sink: sink.clone(),
        inflight: Default::default(),
    };
    let mut last_record = Instant::now();
    let mut assigned_once = false;
    let fixed = match &opts.assignment {
        Assignment::Group => None,
        Assignment::Only(parts) => Some(parts.clone()),
        Assignment::All => {
            let md = consumer
                .fetch_metadata(Some(&opts.topic), Duration::from_secs(30))
                .with_context(|| format!("reading the metadata of topic {}", opts.topic))?;
            let parts: Vec<u32> = md
                .topics()
                .iter()
                .filter(|t| t.name() == opts.topic)
                .flat_map(|t| t.partitions().iter().map(|p| p.id() as u32))
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
                let core = cores.open(p, &consumer, &mut stats).await?;
                tpl.add_partition_offset(&opts.topic, p as i32, offset_of(core.next_offset))
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
        // One batch: up to `batch` records, within 200 ms, and no longer
        // than a short pause in arrivals once it has records (what is
        // queued goes at once; waiting would only add latency).
        // Each record is copied once, into its partition's packed batch.
        let mut by_partition: BTreeMap<u32, RecordBatch> = BTreeMap::new();
        let mut records = 0usize;
        let window_end = Instant::now() + Duration::from_millis(200);
        let mut first_at = None;
        while records < opts.batch {
            let mut left = window_end.saturating_duration_since(Instant::now());
            if records > 0 {
                left = left.min(Duration::from_millis(10));
            }
            match tokio::time::timeout(left, consumer.recv()).await {
                Ok(Ok(m)) => {
                    first_at.get_or_insert_with(Instant::now);
                    let p = m.partition() as u32;
                    by_partition.entry(p).or_default().push(
                        p,
                        m.offset(),
                        m.payload().unwrap_or_default(),
                        m.timestamp().to_millis(),
                    )?;
                    records += 1;
                }
                Ok(Err(e)) => eprintln!("adtally: kafka: {e}"),
                Err(_) => break,
            }
        }
        // Rebalances that came meanwhile: hand revoked partitions over, open
        // and position assigned ones (records of a partition no longer held
        // are left to its new owner below).
        if apply_changes(
            &changes,
            &consumer,
            &opts.topic,
            &mut cores,
            &mut writer,
            &mut stats,
        )
        .await?
        {
            assigned_once |= !cores.held.is_empty();
            last_record = Instant::now();
        }
        let now = now_ms();
        let mut outs: Vec<(u32, adtally_core::Outputs)> = Vec::new();
        if records == 0 {
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
                recover_call(&mut cores, p, "tick", e, &consumer, &opts.topic, &mut stats).await?;
            }
            writer
                .start(outs, BTreeMap::new(), None, &mut stats)
                .await?;
            // Idle: no record (nor a change of assignment) for that long; a
            // consumer that never held a partition yet waits at least a
            // minute (group joins, and a dead member's eviction, take time).
            let idle_for = |idle: Duration| {
                if assigned_once {
                    idle
                } else {
                    idle.max(Duration::from_secs(60))
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
        let mut next: BTreeMap<u32, i64> = BTreeMap::new();
        for (p, packed) in &by_partition {
            let p = *p;
            let recs: Vec<RawRecord> = packed.records();
            let Some(core) = cores.held.get_mut(&p) else {
                // Not (or no longer) ours: its new owner reads it.
                continue;
            };
            if let (Some(rewind), Some(first)) = (core.rewind, recs.first()) {
                if first.offset.0 > core.next_offset {
                    // Records before `first` are missing: deleted from the
                    // log (retention) before this consumer read them, or
                    // skipped by the broker, which answers some fetches
                    // from inside a producer batch with the next batch.
                    let low = log_start(&consumer, &opts.topic, p)?;
                    skip_deleted(p, core, low, &mut stats);
                    if first.offset.0 > core.next_offset {
                        if rewind > 0 && core.next_offset.saturating_sub(rewind) <= low {
                            // The last fetch started at the log's start, and
                            // records are still missing: these offsets hold
                            // none (a compacted or transactional gap).
                            eprintln!(
                                "adtally: partition {p}: offsets {}..{} hold no records; counting from {}",
                                core.next_offset, first.offset.0, first.offset.0
                            );
                            core.next_offset = first.offset.0;
                        } else {
                            // Drop these and fetch again from further back.
                            let back = rewind.saturating_mul(REWIND_GROWTH).max(FIRST_REWIND);
                            eprintln!(
                                "adtally: partition {p}: the broker answered from offset {} for {}; fetching from {back} records earlier",
                                first.offset.0, core.next_offset
                            );
                            core.rewind = Some(back);
                            let from = core.next_offset.saturating_sub(back).max(low);
                            seek(&consumer, &opts.topic, p, from);
                            continue;
                        }
                    }
                }
                core.rewind = None;
            }
            let out = match wasm(|| push(core, packed, &recs, now, &cores.quarantined)) {
                Ok(out) => out,
                Err(e) => {
                    writer.settle(&mut stats).await?;
                    recover(&mut cores, p, &recs, e, &consumer, &opts.topic, &mut stats).await?;
                    continue;
                }
            };
            stats.replayed += out.replayed;
            say_over_bounds(p, core, &out);
            next.insert(p, core.next_offset);
            outs.push((p, out));
        }
        stats.records += records as u64;
        for (_, out) in &outs {
            stats.rollups += out.rollups.len() as u64;
            stats.duplicates += out.duplicates;
            stats.late += out.late.len() as u64;
            stats.invalid += out.invalid.len() as u64;
        }
        writer.start(outs, next, first_at, &mut stats).await?;
        let due: Vec<u32> = cores
            .held
            .iter()
            .filter(|(_, c)| {
                opts.snapshots.due(
                    c.last_snapshot.elapsed(),
                    c.next_offset.saturating_sub(c.snapshot_offset).max(0) as u64,
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
                        recover_call(
                            &mut cores,
                            p,
                            "snapshot",
                            e,
                            &consumer,
                            &opts.topic,
                            &mut stats,
                        )
                        .await?;
                    }
                }
            }
        }
    }
}

/// How often a partition's clicks side-lined for its bounds are reported.
const OVER_BOUNDS_EVERY: Duration = Duration::from_secs(60);

/// Says, at most once every [`OVER_BOUNDS_EVERY`] for a partition, that
/// clicks of `out` were side-lined because the partition's state reached
/// its bounds, with what the state takes and what to change.
fn say_over_bounds(p: u32, core: &mut PartitionCore<'_>, out: &adtally_core::Outputs) {
    use adtally_core::InvalidReason::{TooManyCells, TooManyKeys};
    if core
        .over_bounds_said
        .is_some_and(|at| at.elapsed() < OVER_BOUNDS_EVERY)
    {
        return;
    }
    let (mut keys, mut cells) = (0, 0);
    for i in &out.invalid {
        match i.reason {
            TooManyKeys => keys += 1,
            TooManyCells => cells += 1,
            _ => {}
        }
    }
    if keys + cells == 0 {
        return;
    }
    core.over_bounds_said = Some(Instant::now());
    let usage = match core.agg.state_usage() {
        Ok(u) => format!(
            "it remembers {} keys ({} MiB) and holds {} cells; its instance has {} MiB",
            u.keys,
            u.key_bytes >> 20,
            u.cells,
            u.memory_bytes >> 20
        ),
        Err(e) => format!("its state could not be measured: {e:#}"),
    };
    eprintln!(
        "adtally: partition {p}: {keys} clicks side-lined as too_many_keys and {cells} as \
         too_many_cells (in invalid_events, with their payload): {usage}. Raise \
         max_partition_keys or max_partition_cells in --config (and --max-memory-mb), or \
         spread the topic over more partitions"
    );
}

/// Writes batches' outputs, then the offsets they cover, while the next
/// batches are read and aggregated: at most `WRITES_IN_FLIGHT` batches are
/// in flight, and anything that needs every earlier row acknowledged (a
/// snapshot, a hand-over, a restore, the exit) settles them first. Offsets
/// may land out of order: the table keeps the highest.
struct Writer {
    sink: Sink,
    inflight: std::collections::VecDeque<tokio::task::JoinHandle<Result<BatchWritten>>>,
}

/// (when the batch's first record arrived, if it had records; when its
/// writes were acknowledged).
type BatchWritten = (Option<Instant>, Instant);

const WRITES_IN_FLIGHT: usize = 2;

/// Batch latencies kept in [`ConsumeStats`] at most.
const LATENCY_SAMPLES: usize = 100_000;

impl Writer {
    /// Waits for the batch in flight; its failure fails the run (a restart
    /// replays from the last snapshot and rewrites the same rows).
    async fn settle(&mut self, stats: &mut ConsumeStats) -> Result<()> {
        while !self.inflight.is_empty() {
            self.settle_oldest(stats).await?;
        }
        Ok(())
    }

    async fn settle_oldest(&mut self, stats: &mut ConsumeStats) -> Result<()> {
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

    /// Starts writing `outs` and then `next` (the offsets they cover).
    async fn start(
        &mut self,
        outs: Vec<(u32, adtally_core::Outputs)>,
        next: BTreeMap<u32, i64>,
        first_at: Option<Instant>,
        stats: &mut ConsumeStats,
    ) -> Result<()> {
        while self.inflight.len() >= WRITES_IN_FLIGHT {
            self.settle_oldest(stats).await?;
        }
        let sink = self.sink.clone();
        self.inflight.push_back(tokio::spawn(async move {
            sink.write(&outs).await?;
            // Only now, with the rows acknowledged, does the position move.
            sink.write_offsets(&next).await?;
            Ok((first_at, Instant::now()))
        }));
        Ok(())
    }
}

/// Pushes one partition's records into its core: in one call, or one at a
/// time while recovering from a trap (skipping quarantined records).
fn push(
    core: &mut PartitionCore<'_>,
    packed: &RecordBatch,
    recs: &[RawRecord<'_>],
    now: i64,
    quarantined: &BTreeSet<(u32, i64)>,
) -> Result<adtally_core::Outputs> {
    let careful = core.is_careful(recs);
    let is_quarantined = |r: &RawRecord| quarantined.contains(&(r.partition.0, r.offset.0));
    if careful {
        let mut out = adtally_core::Outputs::default();
        for r in recs {
            if is_quarantined(r) {
                continue;
            }
            let mut o = core.agg.push(std::slice::from_ref(r), now)?;
            out.append(&mut o);
            core.next_offset = r.offset.0 + 1;
        }
        if core.careful.is_some_and(|(_, u)| core.next_offset > u) {
            // Past what failed: a failure from here on is a new one.
            core.careful = None;
            core.suspect_record = None;
            core.suspect_call = None;
        }
        return Ok(out);
    }
    let out = if !recs.iter().any(is_quarantined) {
        // The common case: the packed batch goes in as it is.
        core.agg.push_batch(packed, now)?
    } else {
        let kept: Vec<RawRecord> = recs
            .iter()
            .filter(|r| !is_quarantined(r))
            .copied()
            .collect();
        core.agg.push(&kept, now)?
    };
    if let Some(last) = recs.last() {
        core.next_offset = last.offset.0 + 1;
    }
    Ok(out)
}

/// The core of `p` failed on `recs`: report it, restore the last snapshot,
/// and replay from there one record at a time. A record that the module
/// then fails on by itself, in that fresh instance, with a trap (a panic,
/// a bad access) is quarantined. Running out of time or memory is no proof
/// that a record is bad (a large state, a slow machine): such a record is
/// tried once more in a fresh instance, and if the module fails on it
/// again the run stops with what to change; no valid click is moved to
/// `invalid_events` for it.
async fn recover<C: ConsumerContext>(
    cores: &mut Cores<'_, '_>,
    p: u32,
    recs: &[RawRecord<'_>],
    error: anyhow::Error,
    consumer: &StreamConsumer<C>,
    topic: &str,
    stats: &mut ConsumeStats,
) -> Result<()> {
    let Some(old) = take_failed(cores, p, stats) else {
        return Ok(());
    };
    let failed_at = old.next_offset;
    let kind = Failure::of(&error);
    eprintln!(
        "adtally: partition {p}: the core failed ({kind:?}) at offset {failed_at}, restoring: {error:#}"
    );
    let mut suspect = None;
    if old.is_careful(recs) {
        // One record at a time: the record at `failed_at` is the culprit
        // (the first not quarantined at or after it).
        if let Some(r) = recs
            .iter()
            .find(|r| r.offset.0 >= failed_at && !cores.quarantined.contains(&(p, r.offset.0)))
        {
            let offset = r.offset.0;
            match kind {
                Failure::Trap => {
                    cores
                        .sink
                        .write_quarantined(p, offset, r.payload, &format!("{error:#}"))
                        .await?;
                    cores.quarantined.insert((p, offset));
                    stats.quarantined += 1;
                }
                Failure::Deadline | Failure::OutOfMemory if old.suspect_record == Some(offset) => {
                    let (what, remedy) = match kind {
                        Failure::Deadline => ("ran past its call deadline", "--call-deadline-ms"),
                        _ => ("ran out of memory", "--max-memory-mb"),
                    };
                    bail!(
                        "partition {p}: the module {what} on the record at offset {offset}, twice, \
                         each time by itself in a fresh instance restored from the last snapshot. \
                         That is no proof the record is bad, so it is not quarantined: raise \
                         {remedy}, or see why the partition's state is this large \
                         (`adtally run` stops here instead of skipping clicks)"
                    );
                }
                Failure::Deadline | Failure::OutOfMemory => suspect = Some(offset),
            }
        }
    }
    let until = recs.last().map_or(failed_at, |r| r.offset.0);
    let careful = old.careful_with((failed_at, until));
    drop(old);
    reopen_careful(cores, p, careful, consumer, topic, stats)
        .await?
        .suspect_record = suspect;
    Ok(())
}

/// `p`'s core, taken out of the held ones after a failed call (counted).
fn take_failed<'m>(
    cores: &mut Cores<'m, '_>,
    p: u32,
    stats: &mut ConsumeStats,
) -> Option<PartitionCore<'m>> {
    stats.traps += 1;
    cores.held.remove(&p)
}

/// `p`'s core opened anew from its last snapshot, fetching from there and
/// replaying the records in `careful` (offsets, inclusive) one at a time.
async fn reopen_careful<'c, 'm, C: ConsumerContext>(
    cores: &'c mut Cores<'m, '_>,
    p: u32,
    careful: (i64, i64),
    consumer: &StreamConsumer<C>,
    topic: &str,
    stats: &mut ConsumeStats,
) -> Result<&'c mut PartitionCore<'m>> {
    let mut core = cores.open(p, consumer, stats).await?;
    core.careful = Some(careful);
    seek(consumer, topic, p, core.next_offset);
    Ok(cores.held.entry(p).or_insert(core))
}

/// A call into `p`'s core other than a push (`what`: tick, snapshot)
/// failed. Out of time or memory there means the partition's state is too
/// large for the instance's limits: the run stops and says what to raise.
/// Any other trap is recovered like one in a push (the last snapshot
/// restored, the records since replayed one at a time); the same call
/// failing again at the same offset stops the run.
async fn recover_call<C: ConsumerContext>(
    cores: &mut Cores<'_, '_>,
    p: u32,
    what: &'static str,
    error: anyhow::Error,
    consumer: &StreamConsumer<C>,
    topic: &str,
    stats: &mut ConsumeStats,
) -> Result<()> {
    let Some(old) = take_failed(cores, p, stats) else {
        return Ok(());
    };
    let at = old.next_offset;
    let kind = Failure::of(&error);
    let remedy = match kind {
        Failure::Deadline => Some("--call-deadline-ms"),
        Failure::OutOfMemory => Some("--max-memory-mb"),
        Failure::Trap => None,
    };
    if let Some(remedy) = remedy {
        bail!(
            "partition {p}: the module failed in {what} at offset {at} ({kind:?}): the partition's \
             state is too large for the instance's limits; raise {remedy} (`adtally run` stops \
             here instead of skipping clicks): {error:#}"
        );
    }
    if old.suspect_call == Some((what, at)) {
        bail!(
            "partition {p}: the module trapped in {what} at offset {at} twice, each time in a fresh instance: {error:#}"
        );
    }
    eprintln!(
        "adtally: partition {p}: the core failed in {what} at offset {at}, restoring: {error:#}"
    );
    let careful = old.careful_with((i64::MIN, at - 1));
    drop(old);
    reopen_careful(cores, p, careful, consumer, topic, stats)
        .await?
        .suspect_call = Some((what, at));
    Ok(())
}

/// Applies rebalance changes; returns whether there were any.
async fn apply_changes<C: ConsumerContext>(
    changes: &mpsc::Receiver<Change>,
    consumer: &StreamConsumer<C>,
    topic: &str,
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
                eprintln!("adtally: partitions revoked: {parts:?}");
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
                eprintln!("adtally: partitions assigned: {parts:?}");
                for p in parts {
                    let core = match cores.held.remove(&p) {
                        Some(core) => core,
                        None => cores.open(p, consumer, stats).await?,
                    };
                    let mut core = core;
                    core.rewind = Some(0);
                    seek(consumer, topic, p, core.next_offset);
                    cores.held.insert(p, core);
                }
            }
        }
    }
    Ok(any)
}
