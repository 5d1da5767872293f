//! When a partition's state is stored.
//!
//! A snapshot holds a partition's whole state (about 21 bytes a remembered
//! key), so storing it at a fixed interval writes bytes in proportion to
//! the state, not the input: 62 MB every 10 s for a partition of 3 million
//! keys. The policy here stores a partition's state only once the records
//! it processed since the last snapshot, at `bytes_per_record` each, pay
//! for that snapshot's size; so over any stretch of a run, the bytes
//! written are at most `bytes_per_record` times the records processed,
//! plus the size of the last snapshot (each snapshot is paid for by the
//! records before it, the last one by its own size): per second, bounded by
//! the input rate, whatever the state. The price
//! is replay: a restart replays at most `last snapshot bytes /
//! bytes_per_record` records (or `every`'s worth, if more), which is
//! bounded by the state too (about a third of the keys at the default).
//! Restores stay exact: a replay reproduces every output, versions
//! included.
//!
//! This module never stores anything; `source` asks it and stores.

use std::time::Duration;

/// When a partition's state is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// The shortest time between two snapshots of a partition.
    pub every: Duration,
    /// The snapshot bytes each record processed pays for: a snapshot is
    /// due once `records since the last * bytes_per_record >= its size`.
    /// 0 stores at every `every` (whatever the size).
    pub bytes_per_record: u64,
}

impl SnapshotPolicy {
    /// The default: at most 64 bytes of snapshot per record, at most one
    /// snapshot every 10 s.
    pub const DEFAULT: SnapshotPolicy = SnapshotPolicy {
        every: Duration::from_secs(10),
        bytes_per_record: 64,
    };

    /// Whether a partition whose last snapshot took `last_bytes` (0: it has
    /// none) and was stored `since` ago, `records` records back, is due.
    pub fn due(&self, since: Duration, records: u64, last_bytes: u64) -> bool {
        records > 0
            && since >= self.every
            && (self.bytes_per_record == 0
                || records.saturating_mul(self.bytes_per_record) >= last_bytes)
    }
}

impl Default for SnapshotPolicy {
    fn default() -> SnapshotPolicy {
        SnapshotPolicy::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_state_waits_for_the_records_that_pay_for_it() {
        let p = SnapshotPolicy::DEFAULT;
        let s = Duration::from_secs(60);
        // 62 MB of state: due after 62e6 / 64 = 968,750 records, not before.
        assert!(!p.due(s, 968_749, 62_000_000));
        assert!(p.due(s, 968_750, 62_000_000));
        // A small state is stored at the interval, and never twice in it.
        assert!(p.due(Duration::from_secs(10), 1, 0));
        assert!(!p.due(Duration::from_secs(9), 1_000_000, 0));
        // Nothing new: nothing to store.
        assert!(!p.due(s, 0, 0));
        // bytes_per_record 0: every interval, as before.
        let fixed = SnapshotPolicy {
            bytes_per_record: 0,
            ..p
        };
        assert!(fixed.due(Duration::from_secs(10), 1, 0));
        assert!(fixed.due(Duration::from_secs(10), 1, 62_000_000));
    }
}
