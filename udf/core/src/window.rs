//! Event-time tumbling windows.

use crate::{ConfigError, EventTime};
use serde::{Deserialize, Serialize};

/// The longest window: one day.
pub const MAX_WINDOW_MS: i64 = 24 * 3_600_000;

/// The length of a tumbling window in milliseconds (at least 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WindowSize(i64);

impl WindowSize {
    /// One minute, the default.
    pub const MINUTE: WindowSize = WindowSize(60_000);

    /// A window size of `ms` milliseconds, as configured: between 1 and
    /// [`MAX_WINDOW_MS`], or the error that names `window_ms`. This is the
    /// one rule for a window size from outside (a config, a SQL argument, a
    /// JavaScript call): nothing outside that range is rounded into it.
    ///
    /// ```
    /// use adtally_core::WindowSize;
    /// assert_eq!(WindowSize::checked(60_000).unwrap(), WindowSize::MINUTE);
    /// let e = WindowSize::checked(0).unwrap_err();
    /// assert_eq!(e.to_string(), "invalid config `window_ms` = 0: must be between 1 and 86400000");
    /// ```
    pub fn checked(ms: i64) -> Result<WindowSize, ConfigError> {
        if (1..=MAX_WINDOW_MS).contains(&ms) {
            Ok(WindowSize(ms))
        } else {
            Err(ConfigError::new(
                "window_ms",
                ms,
                alloc::format!("must be between 1 and {MAX_WINDOW_MS}"),
            ))
        }
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
