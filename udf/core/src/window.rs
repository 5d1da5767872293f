//! Event-time tumbling windows.

use crate::EventTime;
use serde::{Deserialize, Serialize};

/// The length of a tumbling window in milliseconds (at least 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WindowSize(i64);

impl WindowSize {
    /// One minute, the default.
    pub const MINUTE: WindowSize = WindowSize(60_000);

    /// A window size of `ms` milliseconds; `None` unless `ms >= 1`.
    pub fn new(ms: i64) -> Option<WindowSize> {
        (ms >= 1).then_some(WindowSize(ms))
    }

    /// The size in milliseconds.
    pub fn ms(self) -> i64 {
        self.0
    }

    /// The window that holds `t`: `[floor(t / size) * size, + size)`, with
    /// floored division so that negative times land in the window before 0.
    ///
    /// ```
    /// use adtally_core::{EventTime, WindowSize, WindowStart};
    /// let w = WindowSize::MINUTE;
    /// assert_eq!(w.window_of(EventTime(59_999)), WindowStart(0));
    /// assert_eq!(w.window_of(EventTime(60_000)), WindowStart(60_000));
    /// assert_eq!(w.window_of(EventTime(-1)), WindowStart(-60_000));
    /// ```
    pub fn window_of(self, t: EventTime) -> WindowStart {
        // `t - (t mod size)`, saturating: no time in a valid record comes
        // near the ends of i64, but no input may wrap a window either.
        // (Not `div_euclid(size).saturating_mul(size)`: in the component,
        // built with wide arithmetic, that saturated for every time.)
        WindowStart(t.0.saturating_sub(t.0.rem_euclid(self.0)))
    }
}

/// The first millisecond of a window (event time, UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WindowStart(pub i64);

impl WindowStart {
    /// The first millisecond after the window.
    pub fn end(self, size: WindowSize) -> i64 {
        self.0.saturating_add(size.0)
    }
}
