//! Interned ad ids: one shared allocation per distinct ad in an engine, so
//! the engine's maps hash and compare pointers instead of text.

use crate::AdId;
use crate::engine::Map;
use alloc::sync::Arc;
use core::hash::{Hash, Hasher};

/// An ad id interned in one engine. Equality and hashing are by identity,
/// which within one [`Interner`] is the same as by text.
#[derive(Clone, Debug)]
pub(crate) struct Ad(pub(crate) AdId);

impl Ad {
    fn addr(&self) -> usize {
        self.0.0.as_ptr() as usize
    }

    pub(crate) fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl PartialEq for Ad {
    fn eq(&self, other: &Ad) -> bool {
        self.addr() == other.addr()
    }
}

impl Eq for Ad {}

impl Hash for Ad {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_usize(self.addr());
    }
}

/// The set of ads an engine holds state for.
#[derive(Clone)]
pub(crate) struct Interner {
    ads: Map<AdId, ()>,
}

impl Default for Interner {
    fn default() -> Interner {
        Interner {
            ads: crate::engine::new_map(),
        }
    }
}

impl Interner {
    /// The engine's copy of `id` (hashes the text once).
    pub(crate) fn intern(&mut self, id: AdId) -> Ad {
        if let Some((have, ())) = self.ads.get_key_value(id.as_str()) {
            return Ad(have.clone());
        }
        self.ads.insert(id.clone(), ());
        Ad(id)
    }

    /// Forgets the ads no state refers to any more.
    pub(crate) fn sweep(&mut self) {
        self.ads.retain(|a, ()| Arc::strong_count(&a.0) > 1);
    }
}
