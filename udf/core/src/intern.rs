//! Interned ad ids: each distinct ad an engine holds state for gets a dense
//! integer handle, so the engine's maps hash and compare integers instead of
//! text, and the text is stored once.
//!
//! Handles never leak into outputs: everything emitted is ordered by the ad
//! id's text, so a restored engine (which numbers its ads afresh) emits the
//! same bytes.
//!
//! The lookup table is open-addressed with linear probing; a slot holds its
//! handle and up to [`INLINE`] bytes of the ad id, so looking up an ad id of
//! that length reads one cache line, which [`Interner::prefetch`] can fetch
//! ahead. Longer ids are compared with their text in full.

use crate::AdId;
use crate::prefetch::prefetch_line;
use alloc::sync::Arc;
use alloc::vec::Vec;

/// An ad interned in one engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct AdHandle(pub(crate) u32);

/// The hasher of the engine's integer-keyed maps: fixed, so runs are
/// reproducible to the byte. (Ad text is hashed by [`AdHash::of`].)
pub(crate) type FastHash = rustc_hash::FxBuildHasher;

/// Bytes of an ad id a table slot holds.
const INLINE: usize = 24;
/// The smallest table, in slots.
const MIN_SLOTS: usize = 64;

/// An ad id's first [`INLINE`] bytes, zero-padded, as little-endian
/// words, and its length.
#[derive(Clone, Copy)]
struct Head {
    words: [u64; INLINE / 8],
    len: u32,
}

impl Head {
    /// Built from whole-word loads: bytes copied one by one (or by a
    /// `memcpy` of variable length) and then read as words stall the load.
    fn of(id: &str) -> Head {
        let b = id.as_bytes();
        Head {
            words: core::array::from_fn(|k| word(b, 8 * k)),
            // Ad ids are at most 64 bytes (checked before they get here).
            len: b.len() as u32,
        }
    }
}

/// The bytes of `b` from `at` (at most 8), zero-padded, little-endian.
fn word(b: &[u8], at: usize) -> u64 {
    let n = b.len().saturating_sub(at).min(8);
    if n == 8 {
        u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
    } else if n == 0 {
        0
    } else if b.len() >= 8 {
        // The last n bytes are the top n of the word that ends with `b`.
        let last = u64::from_le_bytes(b[b.len() - 8..].try_into().expect("8 bytes"));
        last >> (8 * (8 - n))
    } else {
        b.iter().rev().fold(0, |w, &x| (w << 8) | u64::from(x))
    }
}

/// The first 16 bytes of `s`, zero-padded, big-endian: ordering by it, then
/// by the whole text, is the byte order of the texts. Read as two words
/// ([`word`]) rather than copied: in WebAssembly a copy of variable
/// length is a call into the host, once per row.
pub(crate) fn sort_prefix(s: &str) -> u128 {
    let b = s.as_bytes();
    (u128::from(word(b, 0).swap_bytes()) << 64) | u128::from(word(b, 8).swap_bytes())
}

/// One table slot: its ad id's head and handle (plus one; 0 = free), in
/// 32 bytes.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct Slot {
    words: [u64; INLINE / 8],
    len: u32,
    handle_plus_one: u32,
}

impl Slot {
    fn new(head: Head, handle: u32) -> Slot {
        Slot {
            words: head.words,
            len: head.len,
            handle_plus_one: handle + 1,
        }
    }

    /// The hash of the slot's ad id, when the slot holds all of it.
    fn hash(&self) -> Option<AdHash> {
        let len = self.len as usize;
        (len <= INLINE)
            .then(|| AdHash::of_words(len, self.words[..len.div_ceil(8)].iter().copied()))
    }

    fn holds(&self, head: &Head) -> bool {
        // Word by word, without a call.
        let w = |k: usize| self.words[k] == head.words[k];
        self.len == head.len && w(0) & w(1) & w(2)
    }
}

const _: () = assert!(core::mem::size_of::<Slot>() == 32);

const FREE: Slot = Slot {
    words: [0; INLINE / 8],
    len: 0,
    handle_plus_one: 0,
};

/// The hash a lookup of `id` starts from.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct AdHash(u64);

impl AdHash {
    /// 64 well-mixed bits on every target (a `usize` hasher such as Fx
    /// gives 32 on wasm32, and the table indexes by the top bits).
    pub(crate) fn of(id: &str) -> AdHash {
        let b = id.as_bytes();
        if (1..=16).contains(&b.len()) {
            // Most ids: one or two words, hashed without a loop (in
            // WebAssembly each turn of a loop costs the host's interruption
            // check).
            let mut h = AdHash::mix(AdHash::mix(b.len() as u64, 0), word(b, 0));
            if b.len() > 8 {
                h = AdHash::mix(h, word(b, 8));
            }
            return AdHash::finish(h);
        }
        AdHash::of_words(b.len(), (0..b.len()).step_by(8).map(|at| word(b, at)))
    }

    /// The hash of an id `len` bytes long from its words, as [`word`] reads
    /// them: a table slot's head is enough for a short id.
    fn of_words(len: usize, words: impl Iterator<Item = u64>) -> AdHash {
        AdHash::finish(words.fold(AdHash::mix(len as u64, 0), AdHash::mix))
    }

    /// Folds one word into the state `h`.
    #[inline(always)]
    fn mix(h: u64, w: u64) -> u64 {
        const K: u64 = 0x9e37_79b9_7f4a_7c15;
        let h = (h ^ w).wrapping_mul(K);
        h ^ (h >> 32)
    }

    /// A final avalanche (SplitMix64's), so every bit depends on every byte.
    #[inline(always)]
    fn finish(mut h: u64) -> AdHash {
        h ^= h >> 30;
        h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h ^= h >> 27;
        h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
        AdHash(h ^ (h >> 31))
    }
}

/// The set of ads an engine holds state for.
#[derive(Clone, Default)]
pub(crate) struct Interner {
    /// A power-of-two number of slots (or none), at most 3/4 taken
    /// (at 7/8, lookups in the benchmark probed 2.7 slots on average).
    slots: Vec<Slot>,
    /// Taken slots.
    len: usize,
    /// By handle; `None` for a freed handle.
    ids: Vec<Option<AdId>>,
    free: Vec<u32>,
}

impl Interner {
    fn home(&self, hash: AdHash) -> usize {
        let bits = self.slots.len().trailing_zeros();
        (hash.0 >> (64 - bits)) as usize
    }

    /// Asks the memory system for the slot a lookup of the ad with `hash`
    /// starts at; a hint only, it changes nothing.
    #[inline]
    pub(crate) fn prefetch(&self, hash: AdHash) {
        if !self.slots.is_empty() {
            prefetch_line(&self.slots[self.home(hash)]);
        }
    }

    /// The handle of `id` (a checked ad id), allocating it when new.
    pub(crate) fn intern(&mut self, id: &str) -> AdHandle {
        self.intern_hashed(id, AdHash::of(id))
    }

    /// The handle of `id` if it has one, allocating nothing.
    pub(crate) fn get_hashed(&self, id: &str, hash: AdHash) -> Option<AdHandle> {
        if self.slots.is_empty() {
            return None;
        }
        self.probe(id, Head::of(id), hash).1
    }

    /// [`Interner::intern`] with the hash computed beforehand. Inlined into
    /// its caller with its probe: the common case, an ad already known,
    /// then makes no call (in WebAssembly, each call costs the host's
    /// interruption check).
    #[inline(always)]
    pub(crate) fn intern_hashed(&mut self, id: &str, hash: AdHash) -> AdHandle {
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow();
        }
        let head = Head::of(id);
        let (i, found) = self.probe(id, head, hash);
        match found {
            Some(h) => h,
            None => self.insert_at(i, id, head),
        }
    }

    #[cold]
    #[inline(never)]
    fn grow(&mut self) {
        self.rebuild((self.slots.len() * 2).max(MIN_SLOTS), |_| true);
    }

    /// Gives `id` a handle and puts it into the free slot `i` its probe ended at.
    #[inline(never)]
    fn insert_at(&mut self, i: usize, id: &str, head: Head) -> AdHandle {
        let id = AdId(Arc::from(id));
        let h = match self.free.pop() {
            Some(h) => {
                self.ids[h as usize] = Some(id);
                h
            }
            None => {
                self.ids.push(Some(id));
                (self.ids.len() - 1) as u32
            }
        };
        self.slots[i] = Slot::new(head, h);
        self.len += 1;
        AdHandle(h)
    }

    /// The slot holding `id`'s handle, or the free slot that ends its probe.
    #[inline(always)]
    fn probe(&self, id: &str, head: Head, hash: AdHash) -> (usize, Option<AdHandle>) {
        let mask = self.slots.len() - 1;
        let mut i = self.home(hash);
        // The home slot is tried before the loop: most lookups end there,
        // and in WebAssembly every turn of a loop costs the host's
        // interruption check.
        if let Some(end) = self.probe_at(i, id, &head) {
            return end;
        }
        loop {
            i = (i + 1) & mask;
            if let Some(end) = self.probe_at(i, id, &head) {
                return end;
            }
        }
    }

    /// Where a probe ends at slot `i`, if it does: a free slot, or `id`'s.
    #[inline(always)]
    fn probe_at(&self, i: usize, id: &str, head: &Head) -> Option<(usize, Option<AdHandle>)> {
        let s = &self.slots[i];
        if s.handle_plus_one == 0 {
            return Some((i, None));
        }
        if s.holds(head) {
            let h = s.handle_plus_one - 1;
            if id.len() <= INLINE || self.id(AdHandle(h)).as_str() == id {
                return Some((i, Some(AdHandle(h))));
            }
        }
        None
    }

    /// A table of `size` slots (a power of two, with room for every live
    /// handle) holding the slots of every live handle. The old slots are
    /// read in order and rehashed from their heads (only an id longer than
    /// a head is read), so their new places come in nearly ascending order:
    /// memory is read and written as streams, not at random.
    /// Handles `keep` refuses are left out.
    fn rebuild(&mut self, size: usize, keep: impl Fn(u32) -> bool) {
        let old = core::mem::replace(&mut self.slots, alloc::vec![FREE; size]);
        self.len = 0;
        let mask = size - 1;
        for slot in old {
            let Some(h) = slot.handle_plus_one.checked_sub(1) else {
                continue;
            };
            if !keep(h) {
                continue;
            }
            let hash = slot
                .hash()
                .unwrap_or_else(|| AdHash::of(self.id(AdHandle(h)).as_str()));
            // Every id is in the table once: its place is the first free one.
            let mut i = self.home(hash);
            while self.slots[i].handle_plus_one != 0 {
                i = (i + 1) & mask;
            }
            self.slots[i] = slot;
            self.len += 1;
        }
    }

    /// The ad id of a live handle.
    pub(crate) fn id(&self, h: AdHandle) -> &AdId {
        self.ids[h.0 as usize]
            .as_ref()
            .expect("a handle held by the engine is live")
    }

    /// How many ads hold a handle.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// One more than the largest handle ever given out.
    pub(crate) fn bound(&self) -> usize {
        self.ids.len()
    }

    /// Frees every handle for which `live` is false.
    pub(crate) fn retain(&mut self, live: &[bool]) {
        let is_live = |h: usize| live.get(h).copied().unwrap_or(false);
        let mut freed = false;
        for (h, id) in self.ids.iter_mut().enumerate() {
            if id.is_some() && !is_live(h) {
                *id = None;
                self.free.push(h as u32);
                freed = true;
            }
        }
        if freed {
            // Linear probing has no cheap removal of many slots: the table
            // is rebuilt from the live slots, at the size it had.
            self.rebuild(self.slots.len(), |h| is_live(h as usize));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The prefix read as words is the first 16 bytes, zero-padded, read
    /// big-endian, for every length around the word edges.
    #[test]
    fn a_sort_prefix_is_the_first_sixteen_bytes_big_endian() {
        let text = "ad0123456789abcdefghij";
        for n in 0..=text.len() {
            let s = &text[..n];
            let mut b = [0u8; 16];
            let k = n.min(16);
            b[..k].copy_from_slice(&s.as_bytes()[..k]);
            assert_eq!(sort_prefix(s), u128::from_be_bytes(b), "{s:?}");
        }
    }

    #[test]
    fn handles_are_reused_after_retain() {
        let mut i = Interner::default();
        let a = i.intern("a");
        let b = i.intern("b");
        assert_eq!(i.intern("a"), a);
        assert_ne!(a, b);
        let mut live = alloc::vec![false; i.bound()];
        live[b.0 as usize] = true;
        i.retain(&live);
        assert_eq!(i.id(b).as_str(), "b");
        let c = i.intern("c");
        assert_eq!(c, a, "a's handle is free again");
        assert_eq!(i.id(c).as_str(), "c");
        assert_eq!(i.intern("b"), b);
    }

    #[test]
    fn a_slot_hashes_its_id_as_the_id_does() {
        for n in 0..=INLINE {
            let id: alloc::string::String = (0..n).map(|k| char::from(b'a' + k as u8)).collect();
            let slot = Slot::new(Head::of(&id), 0);
            assert_eq!(slot.hash().map(|h| h.0), Some(AdHash::of(&id).0), "{id:?}");
        }
        let long = "x".repeat(INLINE + 1);
        assert!(Slot::new(Head::of(&long), 0).hash().is_none());
    }

    #[test]
    fn hashes_spread_over_the_top_bits_on_every_target() {
        // The table indexes by the top bits: a hash whose top half is zero
        // (a 32-bit `usize` hasher on wasm32) sends every ad to slot 0.
        let homes: alloc::collections::BTreeSet<u64> = (0..4096)
            .map(|n| AdHash::of(&alloc::format!("ad{n:07}")).0 >> 52)
            .collect();
        // Uniform hashes fill about 1 - 1/e of the 4096 values: ~2590.
        assert!(
            homes.len() > 2400,
            "{} of 4096 top-12-bit values",
            homes.len()
        );
    }

    #[test]
    fn long_ids_that_share_a_head_are_different_ads() {
        let mut i = Interner::default();
        let long = |tail: &str| alloc::format!("{}{tail}", "x".repeat(INLINE));
        // Every length up to past the inline part, and ids that differ
        // only in their last byte.
        for n in 1..=INLINE + 2 {
            let a = "y".repeat(n);
            let b = alloc::format!("{}z", "y".repeat(n - 1));
            assert_ne!(i.intern(&a), i.intern(&b), "{n}");
            let h = i.intern(&a);
            assert_eq!(i.id(h).as_str(), a);
        }
        let (a, b) = (long("a"), long("b"));
        let (ha, hb) = (i.intern(&a), i.intern(&b));
        assert_ne!(ha, hb);
        assert_eq!(i.intern(&a), ha);
        assert_eq!(i.id(hb).as_str(), b);
        // And through growth and a retain that rebuilds the table.
        let many: Vec<AdHandle> = (0..1000)
            .map(|n| i.intern(&alloc::format!("ad{n}")))
            .collect();
        let mut live = alloc::vec![true; i.bound()];
        live[ha.0 as usize] = false;
        i.retain(&live);
        assert_eq!(i.intern(&b), hb);
        for (n, h) in many.iter().enumerate() {
            assert_eq!(i.intern(&alloc::format!("ad{n}")), *h);
        }
    }
}
