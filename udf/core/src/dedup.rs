//! Exact, bounded duplicate detection over an event-time horizon.
//!
//! Each remembered key takes one 16-byte slot of an open-addressing table
//! with linear probing, plus one tag byte: the key's top 112 bits are its
//! identity, the low 16 bits hold the key's event-time second (modulo 2^16),
//! which is all a sweep needs to decide eviction. The tag byte says whether
//! the slot is taken and holds 7 more bits of the key, so a probe reads the
//! small tag array, eight tags per step, and touches a slot only on a
//! likely match: inserting a new key (the common case) only writes its
//! slot. The table is at most 7/8 full, so a key costs 17 to 39 bytes; the
//! measured figure is [`DedupSet::bytes_per_key`].
//!
//! Identity uses 112 of the key's 128 bits: two different clicks collide
//! with probability about `n^2 / 2^113` for `n` keys in a horizon, below
//! 10^-19 for 30 million keys.
//!
//! A probe starts at the slot the key's top bits name, so the table's
//! memory can be fetched ahead of the probe: [`DedupSet::prefetch`] lets a
//! batch of keys wait for memory together instead of one after another.

use crate::prefetch::prefetch_line;
use crate::{EventKey, EventTime};
use alloc::vec::Vec;

const TIME_BITS: u32 = 16;
const TIME_MASK: u128 = (1 << TIME_BITS) - 1;
/// The tag of a free slot (0: [`Group::free`] relies on it).
const FREE: u8 = 0;
/// The smallest table, in slots.
const MIN_SLOTS: usize = 64;

/// The largest horizon: ages are kept in 16 bits of seconds, and must stay
/// far from the wrap (2^15 s).
pub const MAX_HORIZON_MS: i64 = 8 * 3600 * 1000;

/// The remembered keys of one partition.
#[derive(Clone)]
pub struct DedupSet {
    /// A power-of-two number of tags (or none): [`FREE`], or [`tag`] of the
    /// slot beside it.
    tags: Vec<u8>,
    /// As many slots as tags; meaningful where the tag is not free.
    slots: Vec<u128>,
    /// Occupied slots.
    len: usize,
    horizon_ms: i64,
    sweep_step_ms: i64,
    /// The watermark at the last sweep.
    last_sweep: Option<i64>,
    /// No remembered key is older than this event-time second (`i64::MIN`
    /// when unknown, after a restore): a sweep that could not evict
    /// anything is skipped without reading the table.
    oldest_s: i64,
}

/// Tags read per probe step.
const GROUP: usize = 8;
// Every table size is a multiple of a group: no group wraps.
const _: () = assert!(MIN_SLOTS % GROUP == 0);

/// Eight tags as one little-endian word, tested all at once; a test gives
/// each matching tag's high bit, so the lowest set bit is the first match.
#[derive(Clone, Copy)]
struct Group(u64);

impl Group {
    const LOW: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;

    fn load(tags: &[u8]) -> Group {
        Group(u64::from_le_bytes(
            tags.try_into().expect("a group of tags"),
        ))
    }

    /// The free tags: a taken tag has its high bit set, a free one is 0.
    fn free(self) -> u64 {
        !self.0 & Self::HIGH
    }

    /// The taken tags.
    fn taken(self) -> u64 {
        self.0 & Self::HIGH
    }

    /// The tags equal to `t` (exactly: no carry crosses a byte).
    fn matching(self, t: u8) -> u64 {
        let x = self.0 ^ (Self::LOW * u64::from(t));
        !(((x & !Self::HIGH) + !Self::HIGH) | x) & Self::HIGH
    }

    /// The index in the group of the lowest tag a test gave.
    fn first(bits: u64) -> usize {
        bits.trailing_zeros() as usize / 8
    }
}

/// A slot's identity bits (a mask, not a shift: a 128-bit shift is a
/// call on wasm32).
fn identity(slot: u128) -> u128 {
    slot & !TIME_MASK
}

/// A taken slot's tag: the high bit, and 7 bits of the key that the index
/// (its top bits) does not use.
fn tag(slot: u128) -> u8 {
    0x80 | ((slot >> 64) as u8 & 0x7f)
}

/// Whether keys seen in event-time second `second` are past a horizon of
/// `horizon_ms` under watermark `wm` (the whole second must be).
fn expired(second: i64, horizon_ms: i64, wm: i64) -> bool {
    (second + 1) * 1000 + horizon_ms <= wm
}

impl DedupSet {
    /// An empty set that remembers keys for `horizon_ms` of event time.
    pub fn new(horizon_ms: i64) -> DedupSet {
        let step = (horizon_ms / 16 / 1000 * 1000).max(1000);
        DedupSet {
            tags: Vec::new(),
            slots: Vec::new(),
            len: 0,
            horizon_ms,
            sweep_step_ms: step,
            last_sweep: None,
            oldest_s: i64::MAX,
        }
    }

    fn slot(key: EventKey, t: EventTime) -> u128 {
        (key.0 & !TIME_MASK) | (t.0.div_euclid(1000) as u16 as u128)
    }

    /// Where the probe for a key (or slot) starts: the key is already a
    /// uniform hash, so its top bits serve as the index.
    fn home(&self, key: u128) -> usize {
        // The table has a power-of-two number of slots, at least MIN_SLOTS.
        let bits = self.tags.len().trailing_zeros();
        // The high word's top bits (a 128-bit shift is a call on wasm32).
        let high = (key >> 64) as u64;
        (high >> (64 - bits)) as usize
    }

    /// The index of `slot`'s identity, or of the free slot that ends its
    /// probe, and whether it was found.
    #[inline(always)]
    fn probe(&self, slot: u128) -> (usize, bool) {
        let (id, t) = (identity(slot), tag(slot));
        let (mut at, mut from_home) = self.first_group(slot);
        loop {
            let g = Group::load(&self.tags[at..at + GROUP]);
            let mut stops = (g.free() | g.matching(t)) & from_home;
            while stops != 0 {
                let j = at + Group::first(stops);
                if self.tags[j] == FREE {
                    return (j, false);
                }
                if identity(self.slots[j]) == id {
                    return (j, true);
                }
                stops &= stops - 1;
            }
            (at, from_home) = self.next_group(at);
        }
    }

    /// The first free slot of `slot`'s probe: where a slot known to be
    /// absent goes.
    fn first_free(&self, slot: u128) -> usize {
        let (mut at, mut from_home) = self.first_group(slot);
        loop {
            match Group::load(&self.tags[at..at + GROUP]).free() & from_home {
                0 => (at, from_home) = self.next_group(at),
                free => return at + Group::first(free),
            }
        }
    }

    /// A probe reads the tags eight at a time (one word; see [`Group`]), in
    /// the aligned groups of the table (a power of two, at least
    /// [`MIN_SLOTS`], so no group wraps): the same slots in the same order as
    /// one tag at a time, in an eighth of the steps. The first group is the
    /// one holding `slot`'s home; the mask keeps its tags from home on.
    fn first_group(&self, slot: u128) -> (usize, u64) {
        let home = self.home(slot);
        let at = home & !(GROUP - 1);
        (at, u64::MAX << (8 * (home - at)))
    }

    /// The group after the one at `at`, wrapping, whole.
    fn next_group(&self, at: usize) -> (usize, u64) {
        ((at + GROUP) & (self.tags.len() - 1), u64::MAX)
    }

    /// Asks the memory system for the table lines `key`'s probe starts at,
    /// so that a later [`DedupSet::insert_new`] of it waits less; a hint
    /// only, it changes nothing.
    #[inline]
    pub fn prefetch(&self, key: EventKey) {
        if !self.tags.is_empty() {
            let i = self.home(key.0);
            prefetch_line(&self.tags[i]);
            prefetch_line(&self.slots[i]);
        }
    }

    /// Whether `key` is remembered.
    pub fn contains(&self, key: EventKey) -> bool {
        !self.tags.is_empty() && self.probe(key.0).1
    }

    /// Remembers `key` unless it is already remembered; returns whether it
    /// was new. One probe of the table, inlined into its caller.
    #[inline(always)]
    pub fn insert_new(&mut self, key: EventKey, t: EventTime) -> bool {
        if (self.len + 1) * 8 > self.tags.len() * 7 {
            self.grow();
        }
        let (i, found) = self.probe(key.0);
        if found {
            return false;
        }
        let slot = Self::slot(key, t);
        self.tags[i] = tag(slot);
        self.slots[i] = slot;
        self.len += 1;
        self.oldest_s = self.oldest_s.min(t.0.div_euclid(1000));
        true
    }

    /// Puts a slot into a table with room for it (replacing a slot of the
    /// same identity).
    fn put(&mut self, slot: u128) {
        let (i, found) = self.probe(slot);
        self.tags[i] = tag(slot);
        self.slots[i] = slot;
        self.len += usize::from(!found);
    }

    /// Makes room for `n` slots at no more than 7/8 load.
    fn resize(&mut self, n: usize) {
        let mut size = MIN_SLOTS;
        while n * 8 > size * 7 {
            size *= 2;
        }
        let tags = core::mem::replace(&mut self.tags, alloc::vec![FREE; size]);
        let slots = core::mem::replace(&mut self.slots, alloc::vec![0; size]);
        self.len = 0;
        // The slots are distinct: each goes to the first free slot of its
        // probe, with no identity to compare. The old tags are read a group
        // at a time, so free slots cost no turn of a loop (in WebAssembly
        // each turn costs the host's interruption check).
        for (at, group) in tags.chunks_exact(GROUP).enumerate() {
            let mut taken = Group::load(group).taken();
            while taken != 0 {
                let s = slots[at * GROUP + Group::first(taken)];
                taken &= taken - 1;
                let i = self.first_free(s);
                self.tags[i] = tag(s);
                self.slots[i] = s;
                self.len += 1;
            }
        }
    }

    #[cold]
    #[inline(never)]
    fn grow(&mut self) {
        self.resize(self.len + 1);
    }

    /// Whether a key seen at `t` may still be inserted under watermark `wm`,
    /// i.e. it would not already be due for eviction.
    pub fn is_within_horizon(&self, t: EventTime, wm: Option<i64>) -> bool {
        match wm {
            None => true,
            Some(wm) => !expired(t.0.div_euclid(1000), self.horizon_ms, wm),
        }
    }

    /// The lowest watermark at which [`DedupSet::on_watermark`] sweeps.
    pub fn next_sweep_at(&self) -> i64 {
        match self.last_sweep {
            None => i64::MIN,
            Some(last) => (last.div_euclid(self.sweep_step_ms) + 1) * self.sweep_step_ms,
        }
    }

    /// Tells the set the partition's watermark moved to `wm`; sweeps when it
    /// crossed a multiple of the sweep step.
    pub fn on_watermark(&mut self, wm: i64) {
        if wm < self.next_sweep_at() {
            return;
        }
        self.last_sweep = Some(wm);
        let horizon = self.horizon_ms;
        if self.oldest_s != i64::MIN && (self.len == 0 || !expired(self.oldest_s, horizon, wm)) {
            return;
        }
        let wm_s = wm.div_euclid(1000);
        // A slot's full second, from its 16 bits: ages stay far below 2^15 s.
        let second = |slot: u128| wm_s - (wm_s as u16).wrapping_sub(slot as u16) as i16 as i64;
        let mut oldest = i64::MAX;
        self.retain(|slot| {
            let s = second(slot);
            let keep = !expired(s, horizon, wm);
            if keep {
                oldest = oldest.min(s);
            }
            keep
        });
        self.oldest_s = oldest;
    }

    /// Removes every slot `keep` refuses, closing each gap by shifting the
    /// rest of its run back (no tombstones). `keep` sees every slot that
    /// stays at least once.
    fn retain(&mut self, mut keep: impl FnMut(u128) -> bool) {
        let n = self.tags.len();
        // Start after a free slot: no run wraps through the start, and the
        // shifts below never move a slot past it.
        let Some(free) = self.tags.iter().position(|&t| t == FREE) else {
            return;
        };
        let mask = n - 1;
        let mut step = 1;
        while step < n {
            let i = (free + step) & mask;
            if self.tags[i] == FREE || keep(self.slots[i]) {
                step += 1;
                continue;
            }
            // Delete i, then pull back each later slot of the run that may
            // live at the hole; `i` is looked at again (a slot moved in).
            self.len -= 1;
            let mut hole = i;
            let mut j = (i + 1) & mask;
            while self.tags[j] != FREE {
                let home = self.home(self.slots[j]);
                // j's slot may move to the hole unless its home lies in (hole, j].
                if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(hole) & mask) {
                    self.tags[hole] = self.tags[j];
                    self.slots[hole] = self.slots[j];
                    hole = j;
                }
                j = (j + 1) & mask;
            }
            self.tags[hole] = FREE;
        }
    }

    /// Number of remembered keys.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes held by the table.
    pub fn allocated_bytes(&self) -> usize {
        self.tags.capacity() + self.slots.capacity() * core::mem::size_of::<u128>()
    }

    /// Heap bytes per remembered key.
    pub fn bytes_per_key(&self) -> f64 {
        if self.is_empty() {
            0.0
        } else {
            self.allocated_bytes() as f64 / self.len() as f64
        }
    }

    /// The slots, sorted, for snapshots.
    pub(crate) fn to_slots(&self) -> Vec<u128> {
        let taken = self.tags.iter().map(|&t| t != FREE);
        let mut v: Vec<u128> = taken
            .zip(&self.slots)
            .filter_map(|(taken, &s)| taken.then_some(s))
            .collect();
        v.sort_unstable();
        v
    }

    pub(crate) fn last_sweep(&self) -> Option<i64> {
        self.last_sweep
    }

    pub(crate) fn from_slots(horizon_ms: i64, slots: &[u128], last_sweep: Option<i64>) -> DedupSet {
        let mut set = DedupSet::new(horizon_ms);
        set.resize(slots.len());
        for &s in slots {
            set.put(s);
        }
        set.last_sweep = last_sweep;
        set.oldest_s = i64::MIN;
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
    fn sweeps_skipped_while_nothing_expires_still_evict_on_time() {
        // Keys of seconds 0 and 30; sweeps every second of watermark.
        let mut d = DedupSet::new(10_000);
        let (old, new) = (EventKey(1 << 100), EventKey(2 << 100));
        assert!(d.insert_new(old, EventTime(0)));
        assert!(d.insert_new(new, EventTime(30_000)));
        d.on_watermark(10_999); // nothing older than 1 s + 10 s: skipped
        assert_eq!(d.len(), 2);
        d.on_watermark(11_000);
        assert!(!d.contains(old) && d.contains(new));
        // A restored set does not know its oldest key: its first sweep reads it.
        let mut r = DedupSet::from_slots(10_000, &d.to_slots(), d.last_sweep());
        r.on_watermark(40_999);
        assert!(r.contains(new));
        r.on_watermark(41_000);
        assert!(r.is_empty());
    }

    #[test]
    fn identity_ignores_time_bits() {
        let mut d = DedupSet::new(60_000);
        assert!(d.insert_new(EventKey(1 << 100), EventTime(0)));
        assert!(d.contains(EventKey((1 << 100) | 0xffff)));
    }

    #[test]
    fn sweeps_keep_every_survivor_findable() {
        // Many keys in a small table, so runs are long and wrap around; half
        // of them expire. Every survivor must still be found after the
        // backward shifts, and every expired key gone.
        let mut d = DedupSet::new(10_000);
        let key = |i: u64| {
            EventKey(((i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)) << 16)
        };
        for i in 0..5_000u64 {
            let t = EventTime(if i % 2 == 0 { 0 } else { 20_000 });
            assert!(d.insert_new(key(i), t));
        }
        assert_eq!(d.len(), 5_000);
        d.on_watermark(20_000); // second 0 ended at 1 s: 1 s + 10 s <= 20 s
        assert_eq!(d.len(), 2_500);
        for i in 0..5_000u64 {
            assert_eq!(d.contains(key(i)), i % 2 == 1, "key {i}");
        }
        let restored = DedupSet::from_slots(10_000, &d.to_slots(), d.last_sweep());
        assert_eq!(restored.to_slots(), d.to_slots());
    }

    #[test]
    fn the_zero_identity_is_a_key_like_any() {
        let mut d = DedupSet::new(10_000);
        let zero = EventKey(0xffff);
        assert!(!d.contains(zero));
        assert!(d.insert_new(zero, EventTime(0)));
        assert!(!d.insert_new(EventKey(0), EventTime(0)));
        assert_eq!(d.len(), 1);
        assert_eq!(DedupSet::from_slots(10_000, &d.to_slots(), None).len(), 1);
        d.on_watermark(11_000);
        assert!(!d.contains(zero));
    }

    #[test]
    fn a_group_finds_exactly_the_tags_a_byte_loop_finds() {
        // Every taken tag at every position, among free tags and taken ones
        // that differ by one bit (where a carry between bytes would show).
        for t in 0x80..=0xffu8 {
            for at in 0..GROUP {
                for other in [t ^ 1, t ^ 0x40, FREE, 0xff, 0x80] {
                    let mut tags = [other; GROUP];
                    tags[at] = t;
                    let g = Group::load(&tags);
                    let want = |f: &dyn Fn(u8) -> bool| {
                        tags.iter()
                            .enumerate()
                            .filter(|&(_, &x)| f(x))
                            .fold(0u64, |m, (k, _)| m | 0x80 << (8 * k))
                    };
                    assert_eq!(g.matching(t), want(&|x| x == t), "{t:#x} at {at}");
                    assert_eq!(g.free(), want(&|x| x == FREE), "{t:#x} at {at}");
                }
            }
        }
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
