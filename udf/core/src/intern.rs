//! Interned ad ids: each distinct ad an engine holds state for gets a dense
//! integer handle, so the engine's maps hash and compare integers instead of
//! text, and the text is stored once.
//!
//! Handles never leak into outputs: everything emitted is ordered by the ad
//! id's text, so a restored engine (which numbers its ads afresh) emits the
//! same bytes.

use crate::AdId;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::hash::BuildHasher;
use hashbrown::HashTable;

/// An ad interned in one engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct AdHandle(pub(crate) u32);

/// The hasher of the engine's integer-keyed maps (and of ad text here):
/// fixed, so runs are reproducible to the byte.
pub(crate) type FastHash = rustc_hash::FxBuildHasher;

struct Entry {
    hash: u64,
    id: Option<AdId>,
}

/// The set of ads an engine holds state for.
#[derive(Default)]
pub(crate) struct Interner {
    /// Handles, hashed by their ad's text.
    table: HashTable<u32>,
    /// By handle; `None` for a freed handle.
    entries: Vec<Entry>,
    free: Vec<u32>,
}

impl Clone for Interner {
    fn clone(&self) -> Interner {
        Interner {
            table: self.table.clone(),
            entries: self
                .entries
                .iter()
                .map(|e| Entry {
                    hash: e.hash,
                    id: e.id.clone(),
                })
                .collect(),
            free: self.free.clone(),
        }
    }
}

impl Interner {
    /// The handle of `id` (a checked ad id), allocating it when new.
    pub(crate) fn intern(&mut self, id: &str) -> AdHandle {
        let hash = FastHash::default().hash_one(id);
        let entries = &self.entries;
        let found = self.table.find(hash, |&h| {
            let e = &entries[h as usize];
            e.hash == hash && e.id.as_ref().is_some_and(|a| a.as_str() == id)
        });
        if let Some(&h) = found {
            return AdHandle(h);
        }
        let entry = Entry {
            hash,
            id: Some(AdId(Arc::from(id))),
        };
        let h = match self.free.pop() {
            Some(h) => {
                self.entries[h as usize] = entry;
                h
            }
            None => {
                self.entries.push(entry);
                (self.entries.len() - 1) as u32
            }
        };
        let entries = &self.entries;
        self.table
            .insert_unique(hash, h, |&x| entries[x as usize].hash);
        AdHandle(h)
    }

    /// The ad id of a live handle.
    pub(crate) fn id(&self, h: AdHandle) -> &AdId {
        self.entries[h.0 as usize]
            .id
            .as_ref()
            .expect("a handle held by the engine is live")
    }

    /// One more than the largest handle ever given out.
    pub(crate) fn bound(&self) -> usize {
        self.entries.len()
    }

    /// Frees every handle for which `live` is false.
    pub(crate) fn retain(&mut self, live: &[bool]) {
        let is_live = |h: u32| live.get(h as usize).copied().unwrap_or(false);
        self.table.retain(|h| is_live(*h));
        for (h, e) in self.entries.iter_mut().enumerate() {
            if e.id.is_some() && !is_live(h as u32) {
                e.id = None;
                self.free.push(h as u32);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
