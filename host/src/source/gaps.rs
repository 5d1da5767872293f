//! Gaps: a partition's next records start after the offset its core
//! expects. Records were deleted from the log (retention, delete-records)
//! before this consumer read them, or the broker answered a fetch from
//! inside a producer batch with the next batch (some do), or the offsets
//! hold no records (a compacted or transactional gap). Each is told apart
//! and handled here.

use super::cores::{PartitionCore, skip_deleted};
use super::{ConsumeStats, Log};
use adtally_core::{Offset, Partition};
use anyhow::Result;
use rdkafka::consumer::ConsumerContext;

/// How far back the first re-fetch after skipped records starts: a
/// producer batch holds at most a few thousand records, so one or two
/// re-fetches reach its start.
const FIRST_REWIND: i64 = 1_000;
/// How much further back each next re-fetch starts.
const REWIND_GROWTH: i64 = 4;

/// Whether `p`'s records from offset `first` can be pushed into `core`.
/// Not when they start past where the core stands and the broker may hold
/// the records between: then the fetch is moved back (further each time)
/// and these records are dropped, to come again. Deleted records are
/// skipped (said and counted), and offsets that hold none are passed.
pub(super) fn ready<C: ConsumerContext>(
    log: &Log<'_, C>,
    p: Partition,
    core: &mut PartitionCore<'_>,
    first: Offset,
    stats: &mut ConsumeStats,
) -> Result<bool> {
    let Some(rewind) = core.rewind else {
        return Ok(true);
    };
    if first > core.next_offset {
        let low = log.start(p)?;
        skip_deleted(p, core, low, stats);
        if first > core.next_offset {
            if rewind > 0 && Offset(core.next_offset.0.saturating_sub(rewind)) <= low {
                // The last fetch started at the log's start, and records
                // are still missing: these offsets hold none.
                tracing::info!(
                    partition = p.0,
                    "offsets {}..{first} hold no records; counting from {first}",
                    core.next_offset
                );
                core.next_offset = first;
            } else {
                let back = rewind.saturating_mul(REWIND_GROWTH).max(FIRST_REWIND);
                tracing::info!(
                    partition = p.0,
                    "the broker answered from offset {first} for {}; fetching from {back} records earlier",
                    core.next_offset
                );
                core.rewind = Some(back);
                let from = Offset(core.next_offset.0.saturating_sub(back)).max(low);
                log.seek(p, from);
                return Ok(false);
            }
        }
    }
    core.rewind = None;
    Ok(true)
}
