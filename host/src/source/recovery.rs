//! Recovery: a core that trapped, or ran out of time or memory, is
//! restored from its last snapshot and its records replayed one at a time;
//! a record it fails on by itself is quarantined, and a failure that no
//! retry can mend stops the run with what to change.

use super::cores::{Cores, PartitionCore};
use super::{ConsumeStats, Log};
use adtally_core::{Offset, Partition, RawRecord};
use adtally_runtime::Failure;
use anyhow::{Result, bail};
use rdkafka::consumer::ConsumerContext;

/// The core of `p` failed on `recs`: report it, restore the last snapshot,
/// and replay from there one record at a time. A record that the module
/// then fails on by itself, in that fresh instance, with a trap (a panic,
/// a bad access) is quarantined. Running out of time or memory is no proof
/// that a record is bad (a large state, a slow machine): such a record is
/// tried once more in a fresh instance, and if the module fails on it
/// again the run stops with what to change; no valid click is moved to
/// `invalid_events` for it.
pub(super) async fn recover<C: ConsumerContext>(
    cores: &mut Cores<'_, '_>,
    p: Partition,
    recs: &[RawRecord<'_>],
    error: anyhow::Error,
    log: &Log<'_, C>,
    stats: &mut ConsumeStats,
) -> Result<()> {
    let Some((old, kind)) = take_failed(cores, p, stats, &error) else {
        return Ok(());
    };
    let failed_at = old.next_offset;
    tracing::warn!(
        partition = p.0,
        "the core failed ({kind:?}) at offset {failed_at}, restoring: {error:#}"
    );
    let mut suspect = None;
    if old.is_careful(recs) {
        // One record at a time: the record at `failed_at` is the culprit
        // (the first not quarantined at or after it).
        if let Some(r) = recs
            .iter()
            .find(|r| r.offset >= failed_at && !cores.quarantined.contains(&(p, r.offset)))
        {
            let offset = r.offset;
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
    let until = recs.last().map_or(failed_at, |r| r.offset);
    let careful = old.careful_with((failed_at, until));
    drop(old);
    reopen_careful(cores, p, careful, log, stats)
        .await?
        .suspect_record = suspect;
    Ok(())
}

/// `p`'s core, taken out of the held ones after a call failed with
/// `error` (counted), and why it failed.
fn take_failed<'m>(
    cores: &mut Cores<'m, '_>,
    p: Partition,
    stats: &mut ConsumeStats,
    error: &anyhow::Error,
) -> Option<(PartitionCore<'m>, Failure)> {
    stats.traps += 1;
    crate::metrics::trapped();
    Some((cores.held.remove(&p)?, Failure::of(error)))
}

/// `p`'s core opened anew from its last snapshot, fetching from there and
/// replaying the records in `careful` (offsets, inclusive) one at a time.
pub(super) async fn reopen_careful<'c, 'm, C: ConsumerContext>(
    cores: &'c mut Cores<'m, '_>,
    p: Partition,
    careful: (Offset, Offset),
    log: &Log<'_, C>,
    stats: &mut ConsumeStats,
) -> Result<&'c mut PartitionCore<'m>> {
    let mut core = cores.open(p, log, stats).await?;
    core.careful = Some(careful);
    log.seek(p, core.next_offset);
    Ok(cores.held.entry(p).or_insert(core))
}

/// A call into `p`'s core other than a push (`what`: tick, snapshot)
/// failed. Out of time or memory there means the partition's state is too
/// large for the instance's limits: the run stops and says what to raise.
/// Any other trap is recovered like one in a push (the last snapshot
/// restored, the records since replayed one at a time); the same call
/// failing again at the same offset stops the run.
pub(super) async fn recover_call<C: ConsumerContext>(
    cores: &mut Cores<'_, '_>,
    p: Partition,
    what: &'static str,
    error: anyhow::Error,
    log: &Log<'_, C>,
    stats: &mut ConsumeStats,
) -> Result<()> {
    let Some((old, kind)) = take_failed(cores, p, stats, &error) else {
        return Ok(());
    };
    let at = old.next_offset;
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
    tracing::warn!(
        partition = p.0,
        "the core failed in {what} at offset {at}, restoring: {error:#}"
    );
    let careful = old.careful_with((Offset(i64::MIN), Offset(at.0 - 1)));
    drop(old);
    reopen_careful(cores, p, careful, log, stats)
        .await?
        .suspect_call = Some((what, at));
    Ok(())
}
