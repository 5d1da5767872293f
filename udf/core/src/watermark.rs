//! Per-partition event-time watermarks.

use crate::EventTime;
use serde::{Deserialize, Serialize};

/// `W_p = max event time seen - out_of_orderness`, or nothing before the
/// first event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    max_seen: Option<EventTime>,
    out_of_orderness_ms: i64,
}

impl Watermark {
    /// A watermark that has seen nothing yet.
    pub fn new(out_of_orderness_ms: i64) -> Watermark {
        Watermark {
            max_seen: None,
            out_of_orderness_ms,
        }
    }

    /// The current watermark, if any event was seen.
    pub fn current(&self) -> Option<i64> {
        self.max_seen.map(|t| t.0 - self.out_of_orderness_ms)
    }

    /// The largest event time seen.
    pub fn max_seen(&self) -> Option<EventTime> {
        self.max_seen
    }

    /// Records an event time; returns true when the watermark moved.
    pub fn observe(&mut self, t: EventTime) -> bool {
        match self.max_seen {
            Some(m) if m >= t => false,
            _ => {
                self.max_seen = Some(t);
                true
            }
        }
    }
}
