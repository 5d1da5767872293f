//! Exact, bounded duplicate detection over an event-time horizon.
//!
//! Each remembered key takes one 16-byte slot of a SwissTable: the key's top
//! 112 bits are its identity, the low 16 bits hold the key's event-time second
//! (modulo 2^16), which is all a sweep needs to decide eviction. The hash
//! table's own overhead is one control byte per slot plus free slots; the
//! measured figure is [`DedupSet::bytes_per_key`].
//!
//! Identity uses 112 of the key's 128 bits: two different clicks collide
//! with probability about `n^2 / 2^113` for `n` keys in a horizon, below
//! 10^-19 for 30 million keys.

use crate::{EventKey, EventTime};
use alloc::vec::Vec;
use hashbrown::HashTable;

const TIME_BITS: u32 = 16;
const TIME_MASK: u128 = (1 << TIME_BITS) - 1;

/// The largest horizon: ages are kept in 16 bits of seconds, and must stay
/// far from the wrap (2^15 s).
pub const MAX_HORIZON_MS: i64 = 8 * 3600 * 1000;

/// The remembered keys of one partition.
#[derive(Clone)]
pub struct DedupSet {
    table: HashTable<u128>,
    horizon_ms: i64,
    sweep_step_ms: i64,
    /// The watermark at the last sweep.
    last_sweep: Option<i64>,
}

fn identity(slot: u128) -> u128 {
    slot >> TIME_BITS
}

fn hash_of(slot: u128) -> u64 {
    // The key is already a uniform hash: its top 64 bits serve as the hash.
    (slot >> 64) as u64
}

impl DedupSet {
    /// An empty set that remembers keys for `horizon_ms` of event time.
    pub fn new(horizon_ms: i64) -> DedupSet {
        let step = (horizon_ms / 16 / 1000 * 1000).max(1000);
        DedupSet {
            table: HashTable::new(),
            horizon_ms,
            sweep_step_ms: step,
            last_sweep: None,
        }
    }

    fn slot(key: EventKey, t: EventTime) -> u128 {
        (key.0 & !TIME_MASK) | (t.0.div_euclid(1000) as u16 as u128)
    }

    /// Whether `key` is remembered.
    pub fn contains(&self, key: EventKey) -> bool {
        let id = identity(key.0);
        self.table
            .find(hash_of(key.0), |s| identity(*s) == id)
            .is_some()
    }

    /// Remembers `key` unless it is already remembered; returns whether it
    /// was new. One probe of the table.
    pub fn insert_new(&mut self, key: EventKey, t: EventTime) -> bool {
        let id = identity(key.0);
        match self
            .table
            .entry(hash_of(key.0), |s| identity(*s) == id, |s| hash_of(*s))
        {
            hashbrown::hash_table::Entry::Occupied(_) => false,
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert(Self::slot(key, t));
                true
            }
        }
    }

    /// Whether a key seen at `t` may still be inserted under watermark `wm`,
    /// i.e. it would not already be due for eviction.
    pub fn is_within_horizon(&self, t: EventTime, wm: Option<i64>) -> bool {
        match wm {
            None => true,
            Some(wm) => (t.0.div_euclid(1000) + 1) * 1000 + self.horizon_ms > wm,
        }
    }

    /// Tells the set the partition's watermark moved to `wm`; sweeps when it
    /// crossed a multiple of the sweep step.
    pub fn on_watermark(&mut self, wm: i64) {
        let step = self.sweep_step_ms;
        let due = match self.last_sweep {
            None => true,
            Some(last) => wm.div_euclid(step) > last.div_euclid(step),
        };
        if !due {
            return;
        }
        self.last_sweep = Some(wm);
        let wm_s = wm.div_euclid(1000);
        let horizon = self.horizon_ms;
        self.table.retain(|slot| {
            let age_s = (wm_s as u16).wrapping_sub(*slot as u16) as i16 as i64;
            let second_end_ms = (wm_s - age_s + 1) * 1000;
            second_end_ms + horizon > wm
        });
    }

    /// Number of remembered keys.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Heap bytes held by the table.
    pub fn allocated_bytes(&self) -> usize {
        self.table.allocation_size()
    }

    /// Heap bytes per remembered key.
    pub fn bytes_per_key(&self) -> f64 {
        if self.table.is_empty() {
            0.0
        } else {
            self.allocated_bytes() as f64 / self.table.len() as f64
        }
    }

    /// The slots, sorted, for snapshots.
    pub(crate) fn to_slots(&self) -> Vec<u128> {
        let mut v: Vec<u128> = self.table.iter().copied().collect();
        v.sort_unstable();
        v
    }

    pub(crate) fn last_sweep(&self) -> Option<i64> {
        self.last_sweep
    }

    pub(crate) fn from_slots(horizon_ms: i64, slots: &[u128], last_sweep: Option<i64>) -> DedupSet {
        let mut set = DedupSet::new(horizon_ms);
        set.table.reserve(slots.len(), |s| hash_of(*s));
        for &s in slots {
            set.table.insert_unique(hash_of(s), s, |s| hash_of(*s));
        }
        set.last_sweep = last_sweep;
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgets_after_horizon_only() {
        let mut d = DedupSet::new(10_000);
        let k = EventKey(0xdead_beef_0000_0000_0000_0000_0000_1234);
        assert!(d.insert_new(k, EventTime(5_500)));
        d.on_watermark(15_999); // second 5 ends at 6 s; 6 s + 10 s = 16 s
        assert!(d.contains(k));
        d.on_watermark(16_000);
        assert!(!d.contains(k));
    }

    #[test]
    fn identity_ignores_time_bits() {
        let mut d = DedupSet::new(60_000);
        assert!(d.insert_new(EventKey(1 << 100), EventTime(0)));
        assert!(d.contains(EventKey((1 << 100) | 0xffff)));
    }

    #[test]
    fn negative_times() {
        let mut d = DedupSet::new(10_000);
        let k = EventKey(7 << 64);
        assert!(d.insert_new(k, EventTime(-20_500)));
        d.on_watermark(-10_001);
        assert!(d.contains(k));
        d.on_watermark(-10_000 + 1000);
        assert!(!d.contains(k));
    }
}
