//! The audited aggregation core of adtally.
//!
//! This crate **owns** the semantics of adtally: how a click record is parsed
//! and validated, when two clicks are the same click, which window a click
//! belongs to, when a window is final, what is late, and how the top-N ads
//! are ranked. It is pure: `no_std` + `alloc`, no I/O, no clock, no
//! randomness. Time enters only as event time carried by the records and as
//! the processing time `now_ms` the caller passes in (used for one thing
//! only: deciding that a partition is idle, see [Top-N](#top-n)).
//!
//! It **never** talks to Kafka, ClickHouse, files or the network; the host
//! (`adtally-host`) does that. Every build of adtally (native, the wasmtime
//! component, the ClickHouse UDF module, the browser build) compiles this
//! very source, and all of them are checked against the conformance vectors
//! under `tests/vectors/`.
//!
//! # Semantics
//!
//! This section is the one place where the semantics are written down. The
//! names in `code` are configuration fields of [`Config`] (defaults in
//! brackets).
//!
//! ## Records
//!
//! A record is one Kafka message (or one log line): a JSON object
//! `{"ad_id": "ad001", "click_timestamp": 1609459201000, "user_id": "user1",
//! "ip": "207.148.22.22", "country": "USA", "event_id": "optional"}` or a line
//! `ad001, 2021-01-01 00:00:01, user1, 207.148.22.22, USA[, event_id]`,
//! optionally prefixed by `[AdClickEvent] `. `click_timestamp` is UTC: an
//! integer number of milliseconds since the Unix epoch (negative allowed), a
//! `YYYY-MM-DD HH:MM:SS[.fff]` string, or an RFC 3339 string. A record is
//! either a valid [`Click`], a heartbeat (`{"heartbeat_ms": T}` or
//! `[Heartbeat] T`: the producer promises nothing older is coming, see
//! watermarks), or invalid with exactly one [`InvalidReason`]. The checks run
//! in a fixed order and the first failing one names the reason; invalid
//! records are outputs ([`InvalidEvent`], with the full payload), never
//! panics and never silently dropped.
//!
//! A JSON object with an `event_type` field is a Yahoo Streaming Benchmark
//! event (`{"user_id", "page_id", "ad_id", "ad_type", "event_type",
//! "event_time", "ip_address"}`): `event_time` is its click_timestamp and
//! `ip_address` its ip; only `view` events are clicks (others are invalid
//! with [`InvalidReason::NotAView`]); without a `country` a view counts
//! under `ZZZ` ([`Country::UNSPECIFIED`], the user-assigned code for an
//! unknown country, which every record may also give).
//!
//! ## Event key and dedup
//!
//! Each click has an [`EventKey`] (128 bits): the XXH3-128 hash of its
//! `event_id` when present, else of (ad_id, user_id, canonical ip,
//! click_timestamp floored to the second). Two clicks with the same key are
//! the same click: the first one counts, the others are duplicates and are
//! only counted in [`Outputs::duplicates`].
//!
//! Dedup state is **per source partition**. A key is remembered until the
//! partition's watermark `W_p` reaches the end of the key's event-time
//! second plus `dedup_horizon_ms` [10 min]; it is forgotten at the next sweep
//! (a sweep happens whenever `W_p` crosses a multiple of
//! `max(1 s, horizon / 16)` rounded down to whole seconds). A configuration
//! whose horizon is shorter than `window_ms + out_of_orderness_ms +
//! allowed_lateness_ms` is refused, which guarantees that a duplicate arriving
//! after its key was forgotten is *late* (see below) and so never counted
//! twice. Duplicates of one click share a partition when the topic is keyed
//! by `ad_id`, which adtally's producers do; if a topic is partitioned
//! otherwise, duplicates that land in different partitions are each counted
//! once per partition, and the batch path in ClickHouse (which dedups
//! globally by key) shows the difference in reconciliation.
//!
//! Keys of late clicks are remembered too (while younger than the horizon),
//! so the late side output holds each late click once.
//!
//! ## Windows
//!
//! Event-time tumbling windows of `window_ms` [60 s]: a click at `t` belongs
//! to the window starting at `floor(t / window_ms) * window_ms` (floored
//! division, correct for negative `t`); a window is `[start, start +
//! window_ms)`. See [`WindowStart`].
//!
//! ## Watermark, firing and lateness (per source partition)
//!
//! The *samples* of a partition are its counted clicks, its heartbeats and
//! the records side-lined for its state (ahead, below, or over its bounds,
//! see *Bounds*), in order; duplicates, late
//! clicks and invalid records are not samples. The partition's *frontier*
//! `F_p` is the latest time `t` such that at least `watermark_quorum` [5]
//! distinct event times at `t` or later are among its last
//! `watermark_history` [32] samples (a running maximum: it never goes
//! back), and `W_p = F_p - out_of_orderness_ms` [15 s]; before a quorum,
//! `W_p` is undefined. So no single record, nor fewer than a quorum within
//! a history, moves the watermark, however far ahead it is: a click with a
//! wrong clock, or a heartbeat in 2199, can never make the on-time clicks
//! after it late. A stream that really moves on (a partition resuming
//! after a silence) moves the frontier after a quorum of its records. With
//! one record in 10,000 far ahead, a quorum of 5 such records within 32
//! comes about once in 10^15 records. A partition's last few records
//! before it falls silent move the frontier only when more come (a
//! producer closes a stream with a quorum of heartbeats). With
//! `watermark_quorum` 1 the frontier is the largest event time seen.
//!
//! A click or heartbeat more than `max_ahead_ms` [8 h] past `F_p` is
//! side-lined as invalid ([`InvalidReason::AheadOfPartition`]), not
//! counted; it is still a sample, so a partition that resumes after a
//! longer silence side-lines its first records until a quorum of them has
//! moved the frontier, and counts from there on. (Once a partition has a
//! frontier, every click it counts is within 8 h of it, which the dedup
//! memory's 16-bit seconds need. Before its first quorum no bound applies:
//! a click more than 9 h ahead among a partition's very first records is
//! counted in its window, and its key may be forgotten early, so a repeat
//! of it could count again; the record-time check, `max_future_skew_ms`,
//! is what bounds those.) Heartbeats obey the same checks as
//! clicks: the range 1900..2200 and `max_future_skew_ms` past the record
//! time. Window and watermark arithmetic saturates; no input wraps it.
//!
//! Deciding per partition makes every rollup a pure function of the
//! partition's content and order: replaying a partition after a crash
//! reproduces its rollups, versions included, whatever the batching.
//!
//! For each click, in order: duplicate? → late? → counted.
//! - A click whose window has `end + allowed_lateness_ms <= W_p` (lateness
//!   [0]) is **late**: it goes to the late side output ([`LateEvent`]) and is
//!   not counted in any rollup.
//! - Otherwise it is counted in its window, once for filter 0 and once for
//!   every configured filter it matches.
//!
//! After a click raises `W_p`, every window with `end <= W_p` that was not
//! yet emitted is emitted: one [`Rollup`] per (window, ad, filter) with
//! `version` 1, ordered by window, ad_id, filter. A click counted into an
//! already emitted window (possible only when `allowed_lateness_ms > 0`)
//! re-emits the rows it changed at once, each with its version + 1: the row
//! with the highest version is the count. A window is final, and its state
//! dropped, once `end + allowed_lateness_ms <= W_p`.
//!
//! ## Filters
//!
//! Filter 0 counts every valid click. Further filters ([`FilterSpec`]) are
//! conjunctions over the dimensions country, ip (exact or CIDR) and user_id;
//! each dimension holds a list of accepted values (empty: any). A click
//! counts in every filter it matches.
//!
//! ## Top-N
//!
//! For each minute `m` (window start), each `M` in `top_n_windows` [1, 5]
//! and each filter, the top `top_n` [100] ads by clicks summed over windows
//! `m - (M-1)*window_ms ..= m`, ties broken by ad_id ascending (byte order).
//! A [`TopNRow`] for minute `m` is emitted once every partition of this
//! engine has `W_p >= end(m) + allowed_lateness_ms` (all its windows up to
//! `m` final). A partition that has seen no record for `idle_timeout_ms`
//! [60 s] of processing time does not hold this back; if it later finalizes a
//! window whose top-N rows were emitted without it (within
//! `topn_revision_windows` [5] windows), the changed rows are emitted again
//! with a higher version. Rows with no ads are not emitted. [`topn::merge`]
//! merges top-N lists computed over disjoint ad sets (one per partition or
//! per host of an ad-keyed topic) exactly.
//!
//! ## Bounds
//!
//! Each partition's state is bounded, so that no input can make it outgrow
//! its memory: it remembers at most `max_partition_keys` [24 million] keys
//! and holds at most `max_partition_cells` [4 million] (window, ad, filter)
//! counts in its open windows. A click that would remember a key beyond the
//! first bound is side-lined as invalid ([`InvalidReason::TooManyKeys`]),
//! and one that would add a cell beyond the second
//! ([`InvalidReason::TooManyCells`]; a click whose cells all exist still
//! counts); its key is not remembered, so the record can be replayed later
//! (it keeps its payload), and a duplicate of a counted click is still a
//! duplicate. Side-lined clicks are samples of the partition's time: the
//! watermark moves on, windows become final and keys pass the horizon,
//! which frees the state, and clicks count again. The defaults hold a
//! partition of 40,000 clicks/s with the 10-minute horizon and 4 million
//! distinct (ad, filter) pairs a window; the dedup table at the key bound
//! takes 570 MB (2^25 slots), 855 MB while it grows, within the host's
//! default 2 GiB an instance.
//!
//! ## Offsets
//!
//! The engine remembers, per partition, the offset after the last record it
//! processed. A record at an offset below that is a replay and is skipped
//! ([`Outputs::replayed`]), so redelivery after a rebalance cannot count
//! twice.
//!
//! ## Snapshots
//!
//! [`Engine::snapshot`] serializes the whole state; [`Engine::restore`]
//! continues exactly as if the engine had never stopped. The format is
//! documented in [`snapshot`].
//!
//! # Example
//!
//! ```
//! use adtally_core::{Config, Engine, Outputs, Partition, Offset};
//!
//! let mut engine = Engine::new(Config::default()).unwrap();
//! let mut out = Outputs::default();
//! let p = Partition(0);
//! engine.push_record(p, Offset(0), br#"{"ad_id":"ad001","click_timestamp":1000,"user_id":"u1","ip":"1.2.3.4","country":"USA"}"#, None, 0, &mut out);
//! engine.push_record(p, Offset(1), b"ad001, 1970-01-01 00:00:01, u1, 1.2.3.4, USA", None, 0, &mut out);
//! assert_eq!(out.duplicates, 1);
//! // Clicks at 80..84 s: the fifth makes a quorum of 5 at 80 s, which
//! // moves W_p to 65 s: the window [0, 60 s) is emitted.
//! for (i, s) in (80..85).enumerate() {
//!     let line = format!("ad002, 1970-01-01 00:01:{}, u2, 1.2.3.5, USA", s - 60);
//!     engine.push_record(p, Offset(2 + i as i64), line.as_bytes(), None, 0, &mut out);
//! }
//! assert_eq!(engine.watermarks().next(), Some((p, Some(65_000))));
//! assert_eq!(out.rollups.len(), 1);
//! assert_eq!(out.rollups[0].clicks, 1);
//! ```

#![no_std]
#![deny(missing_docs)]

extern crate alloc;
#[cfg(any(feature = "std", test))]
extern crate std;

pub mod columns;
mod config;
mod country_codes;
pub mod dedup;
mod engine;
mod event;
pub mod filter;
mod intern;
mod key;
mod minute;
mod parse;
mod prefetch;
mod selftest;
pub mod snapshot;
pub mod summary;
pub mod topn;
mod validate;
mod watermark;
mod window;

pub use config::{Config, ConfigError};
pub use engine::{
    Engine, InvalidEvent, LateEvent, Outputs, RawRecord, Rollup, StateUsage, TopNRow,
};
pub use event::{
    AdId, Click, ClickRef, Country, EventId, EventTime, IpAddr, Offset, Partition, UserId,
};
pub use filter::{FilterId, FilterSet, FilterSpec};
pub use key::EventKey;
pub use parse::{Record, Routing, parse_record, routing};
pub use selftest::self_test;
pub use snapshot::SnapshotError;
pub use summary::{Classifier, RecordKind, RecordSummary};
pub use topn::RankedAd;
pub use validate::{Field, InvalidReason};
pub use watermark::{Quorum, Watermark};
pub use window::{MAX_WINDOW_MS, WindowSize, WindowStart};

/// Version of the semantics described in this crate's documentation. It
/// changes whenever the same records could produce a different output: a
/// count, a row, a side output, or the verdict on a record (its kind,
/// reason, key, window or filters). (Refusing an argument no configuration
/// accepts, such as a window of 0 ms, changes no output.) Modules record it
/// so that every number can be traced to the rules that made it.
pub const SEMANTICS_VERSION: u32 = 4;

/// The crate version, recorded as the module's semver.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
