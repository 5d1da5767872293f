//! Each held partition's core (a component instance) and where it stands:
//! opening one from its snapshot or fresh, storing its state, pushing its
//! records, and what it says of its bounds.

use super::{ConsumeStats, Log, StartAt};
use crate::sink::Sink;
use adtally_core::{Offset, Partition, RawRecord};
use adtally_runtime::{Aggregator, Module, RecordBatch};
use anyhow::{Result, bail};
use rdkafka::consumer::ConsumerContext;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Nothing, when the configuration a snapshot was made under and the one
/// given (`--config`) are the same semantics; else an error naming each
/// field that differs. A restored core keeps the configuration of its
/// state: counting on under another one would change what its numbers
/// mean without saying so, so such a snapshot is treated as one that
/// cannot be restored.
pub(super) fn config_differences(stored_json: &str, given_json: &str) -> Result<()> {
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

/// One partition's core and where it stands.
pub(super) struct PartitionCore<'m> {
    pub(super) agg: Aggregator<'m>,
    /// The first offset not processed.
    pub(super) next_offset: Offset,
    /// `W_p` after the last batch, once the partition has one.
    pub(super) watermark: Option<i64>,
    pub(super) last_snapshot: Instant,
    /// Offset the state was last stored at.
    pub(super) snapshot_offset: Offset,
    /// Size of the state last stored or restored (0: none).
    pub(super) snapshot_bytes: u64,
    /// After a trap: records in this range of offsets (the batch that
    /// failed, or all since the snapshot when a tick or snapshot failed)
    /// go one at a time; the records before it are replayed in batches.
    pub(super) careful: Option<(Offset, Offset)>,
    /// A record the module ran out of time or memory on by itself, in a
    /// fresh instance: if it does again, the run stops (see [`recover`]).
    pub(super) suspect_record: Option<Offset>,
    /// A call other than a push (tick, snapshot) that trapped, and the
    /// offset the core stood at: the same again stops the run (see
    /// [`recover_call`]).
    pub(super) suspect_call: Option<(&'static str, Offset)>,
    /// When a click was last side-lined for the partition's bounds and
    /// said so (at most once a minute).
    pub(super) over_bounds_said: Option<Instant>,
    /// Set when the fetch position was (re)set: the next records must
    /// start at or before `next_offset`. Some brokers answer a fetch from
    /// inside a producer batch with the *next* batch; then the consumer
    /// rewinds this far (growing) until nothing is skipped.
    pub(super) rewind: Option<i64>,
}

impl PartitionCore<'_> {
    /// Whether `recs` go one at a time: some are in the careful range.
    pub(super) fn is_careful(&self, recs: &[RawRecord<'_>]) -> bool {
        let (Some((from, until)), Some(first), Some(last)) =
            (self.careful, recs.first(), recs.last())
        else {
            return false;
        };
        first.offset <= until && last.offset >= from
    }

    /// The careful range after a failure in `range`: with the one still
    /// pending (a batch before it failed during the replay), so that the
    /// first failure is still replayed one record at a time.
    pub(super) fn careful_with(&self, range: (Offset, Offset)) -> (Offset, Offset) {
        self.careful.map_or(range, |(from, until)| {
            (from.min(range.0), until.max(range.1))
        })
    }
}

/// The cores of the partitions this consumer holds.
pub(super) struct Cores<'m, 'a> {
    pub(super) module: &'m Module,
    pub(super) config_json: &'a str,
    pub(super) unrestorable: Option<StartAt>,
    pub(super) sink: &'a Sink,
    pub(super) held: BTreeMap<Partition, PartitionCore<'m>>,
    /// Records the core failed on by themselves: skipped on every replay.
    pub(super) quarantined: BTreeSet<(Partition, Offset)>,
}

impl<'m> Cores<'m, '_> {
    /// A core for `p`: its latest snapshot restored, or a fresh one that
    /// starts at the log's first available offset. A snapshot that cannot
    /// be restored stops the partition, unless the operator chose where
    /// to start instead.
    /// Opens `p`'s core (see [`Cores::open_state`]) and records where it
    /// stands in `consumer_offsets`: a partition opened but not yet
    /// processed, with no watermark, tells readers that nothing is final.
    pub(super) async fn open<C: ConsumerContext>(
        &mut self,
        p: Partition,
        log: &Log<'_, C>,
        stats: &mut ConsumeStats,
    ) -> Result<PartitionCore<'m>> {
        let mut core = self.open_state(p, log, stats).await?;
        let watermark = wasm(|| core.agg.positions())?
            .iter()
            .find(|a| a.partition == p)
            .and_then(|a| a.watermark);
        core.watermark = watermark;
        let at = crate::sink::Progress {
            next_offset: core.next_offset,
            watermark,
        };
        self.sink
            .write_offsets(&std::iter::once((p, at)).collect())
            .await?;
        Ok(core)
    }

    async fn open_state<C: ConsumerContext>(
        &mut self,
        p: Partition,
        log: &Log<'_, C>,
        stats: &mut ConsumeStats,
    ) -> Result<PartitionCore<'m>> {
        for offset in self.sink.quarantined(p).await? {
            self.quarantined.insert((p, offset));
        }
        let semantics = self.module.info().semantics_version;
        let low = log.start(p)?;
        let start = match self.sink.load_snapshot(p, semantics).await? {
            None => low,
            Some(snap) => match wasm(|| self.module.restore(&snap.state)).and_then(|mut agg| {
                let stored = wasm(|| agg.config())?;
                config_differences(&stored, self.config_json).map(|()| agg)
            }) {
                Ok(agg) => {
                    tracing::info!(
                        partition = p.0,
                        "state restored, resuming at offset {}",
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
                        watermark: None,
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
                        tracing::warn!(
                            partition = p.0,
                            "the snapshot at offset {} cannot be restored ({e:#}); starting \
                             with no state at offset {from}, as --unrestorable-snapshot says \
                             (its stored snapshots are discarded)",
                            snap.next_offset
                        );
                        self.sink.discard_snapshots(p, semantics).await?;
                        from
                    }
                },
            },
        };
        if start > Offset(0) {
            tracing::info!(partition = p.0, "no state; starting at offset {start}");
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
            watermark: None,
        })
    }

    pub(super) async fn snapshot(&self, p: Partition, core: &mut PartitionCore<'m>) -> Result<()> {
        let state = wasm(|| core.agg.snapshot())?;
        self.store_snapshot(p, core, &state).await
    }

    /// Stores `state`, `p`'s core's snapshot.
    pub(super) async fn store_snapshot(
        &self,
        p: Partition,
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
        crate::metrics::snapshot(p, state.len());
        Ok(())
    }
}

/// Moves `core` past records its partition no longer holds (`low` is the
/// log's first offset): they were deleted before this consumer read them
/// and are never counted, which is said and counted.
pub(super) fn skip_deleted(
    p: Partition,
    core: &mut PartitionCore<'_>,
    low: Offset,
    stats: &mut ConsumeStats,
) {
    if low > core.next_offset {
        tracing::warn!(
            partition = p.0,
            "offsets {}..{low} were deleted from the log (retention or delete-records) before \
             they were read; they are not counted, counting from {low}",
            core.next_offset
        );
        stats.deleted_unread += (low.0 - core.next_offset.0) as u64;
        core.next_offset = low;
    }
}

/// Runs a call into the module off the async scheduler: module calls are
/// CPU-bound, and WASI output (a panicking module's message) blocks on a
/// runtime of its own, which tokio allows only from a blocking section.
pub(super) fn wasm<T>(call: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(call)
}

/// Pushes one partition's records into its core: in one call, or one at a
/// time while recovering from a trap (skipping quarantined records).
pub(super) fn push(
    core: &mut PartitionCore<'_>,
    packed: &RecordBatch,
    recs: &[RawRecord<'_>],
    now: i64,
    quarantined: &BTreeSet<(Partition, Offset)>,
) -> Result<adtally_core::Outputs> {
    let careful = core.is_careful(recs);
    let is_quarantined = |r: &RawRecord| quarantined.contains(&(r.partition, r.offset));
    if careful {
        let mut out = adtally_core::Outputs::default();
        for r in recs {
            if is_quarantined(r) {
                continue;
            }
            let mut o = core.agg.push(std::slice::from_ref(r), now)?;
            out.append(&mut o);
            core.next_offset = r.offset.next();
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
        core.next_offset = last.offset.next();
    }
    Ok(out)
}

/// How often a partition's clicks side-lined for its bounds are reported.
pub(super) const OVER_BOUNDS_EVERY: Duration = Duration::from_secs(60);

/// Says, at most once every [`OVER_BOUNDS_EVERY`] for a partition, that
/// clicks of `out` were side-lined because the partition's state reached
/// its bounds, with what the state takes and what to change.
pub(super) fn say_over_bounds(
    p: Partition,
    core: &mut PartitionCore<'_>,
    out: &adtally_core::Outputs,
) {
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
    tracing::warn!(
        partition = p.0,
        "{keys} clicks side-lined as too_many_keys and {cells} as \
         too_many_cells (in invalid_events, with their payload): {usage}. Raise \
         max_partition_keys or max_partition_cells in --config (and --max-memory-mb), or \
         spread the topic over more partitions"
    );
}
