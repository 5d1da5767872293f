//! Snapshots: the whole engine state as bytes, and back.
//!
//! # Format (version 2)
//!
//! | bytes | content |
//! |---|---|
//! | 0..8 | magic `ADTSNAP\0` |
//! | 8..10 | format version, u16 little-endian (2) |
//! | 10.. | a [postcard](https://docs.rs/postcard) encoding of the body below |
//!
//! Body, in field order: `semantics_version: u32`, `config_json: String`
//! (the [`Config`](crate::Config) as JSON), `now_ms: Option<i64>`, the
//! partitions (each: `partition: u32`, its watermark as `samples: u64`,
//! `frontier: Option<i64>` and the samples above the frontier still in
//! the history, `Vec<(u64, i64)>` of (how many samples ago, time) oldest
//! first, then `last_active_ms`, `next_offset`, `dedup_last_sweep: Option<i64>`,
//! `dedup_slots: Vec<u128>` sorted, and its windows, each with `start: i64`,
//! `emitted: bool` and its cells `(ad_id, filter, clicks, version)` sorted by
//! ad then filter), then the top-N state (`done_through`, the final minutes
//! ascending, each with its counts `(filter, ad_id, clicks)` strictly
//! ascending by filter then ad, and the rows open to revision). Everything
//! is sorted, so equal states give equal bytes; restoring refuses a final
//! minute that comes twice or counts an (ad, filter) twice.
//!
//! A snapshot restores only into the same semantics version; the host
//! replays from the snapshot's offsets otherwise.

use crate::engine::{CellKey, Counts, Engine, PartitionState, TopNState, WindowState};
use crate::filter::FilterId;
use crate::minute::{FinalMinute, Sums};
use crate::topn::RankedAd;
use crate::validate::{END_TIMESTAMP_MS, MIN_TIMESTAMP_MS};
use crate::{
    AdId, Config, ConfigError, Offset, Partition, SEMANTICS_VERSION, Watermark, WindowStart,
};
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 8] = b"ADTSNAP\0";
const FORMAT_VERSION: u16 = 2;

/// Why bytes could not be restored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotError {
    /// The bytes do not start with the snapshot magic.
    NotASnapshot,
    /// A format version this build cannot read.
    UnsupportedFormat(u16),
    /// Made under other semantics.
    SemanticsMismatch {
        /// The snapshot's.
        found: u32,
        /// This build's.
        expected: u32,
    },
    /// The body does not decode, or holds what no engine can be in (an
    /// invalid ad id, a cell of an unknown filter or with 0 clicks).
    Corrupt(String),
    /// The configuration inside is not valid.
    Config(ConfigError),
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotError::NotASnapshot => f.write_str("not an adtally snapshot (bad magic)"),
            SnapshotError::UnsupportedFormat(v) => write!(
                f,
                "snapshot format version {v} is not supported (this build reads {FORMAT_VERSION})"
            ),
            SnapshotError::SemanticsMismatch { found, expected } => write!(
                f,
                "snapshot made under semantics version {found}, this module has {expected}"
            ),
            SnapshotError::Corrupt(e) => write!(f, "snapshot body is corrupt: {e}"),
            SnapshotError::Config(e) => write!(f, "snapshot config: {e}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for SnapshotError {}

/// (window start, emitted, cells as (ad, filter, clicks, version)).
type WindowSnap = (i64, bool, Vec<(String, u32, u64, u32)>);
/// (minute, final counts as (filter, ad, clicks)).
type MinuteSnap = (i64, Vec<(u32, String, u64)>);
/// (minute, M, filter, version, ranked (ad, clicks)).
type EmittedSnap = (i64, u32, u32, u32, Vec<(String, u64)>);

/// Whether `t` is a time a record may carry (a window start may be up to
/// a window before the first).
fn in_range(t: i64) -> bool {
    (MIN_TIMESTAMP_MS - 24 * 3_600_000..END_TIMESTAMP_MS).contains(&t)
}

#[derive(Serialize, Deserialize)]
struct Body {
    semantics_version: u32,
    config_json: String,
    now_ms: Option<i64>,
    partitions: Vec<PartitionSnap>,
    done_through: Option<i64>,
    minutes: Vec<MinuteSnap>,
    emitted: Vec<EmittedSnap>,
}

#[derive(Serialize, Deserialize)]
struct PartitionSnap {
    partition: u32,
    samples: u64,
    frontier: Option<i64>,
    ahead: Vec<(u64, i64)>,
    last_active_ms: Option<i64>,
    next_offset: Option<i64>,
    dedup_last_sweep: Option<i64>,
    dedup_slots: Vec<u128>,
    windows: Vec<WindowSnap>,
}

impl Engine {
    /// The whole state as bytes (see [the format](self)).
    pub fn snapshot(&self) -> Vec<u8> {
        let partitions = self
            .partitions
            .iter()
            .map(|(p, st)| {
                let (samples, frontier, ahead) = st.watermark.to_parts();
                PartitionSnap {
                    partition: p.0,
                    samples,
                    frontier,
                    ahead,
                    last_active_ms: st.last_active_ms,
                    next_offset: st.next_offset.map(|o| o.0),
                    dedup_last_sweep: st.dedup.last_sweep(),
                    dedup_slots: st.dedup.to_slots(),
                    windows: st
                        .windows
                        .iter()
                        .map(|(start, ws)| {
                            let mut cells: Vec<_> = ws
                                .cells
                                .iter()
                                .map(|(k, c)| {
                                    let ad = self.interner.id(k.ad).as_str();
                                    (String::from(ad), k.filter.0, c.clicks, c.version)
                                })
                                .collect();
                            cells.sort();
                            (start.0, ws.emitted, cells)
                        })
                        .collect(),
                }
            })
            .collect();
        let t = &self.topn;
        // A minute not yet settled may list an ad twice in a filter: it is
        // written settled, as ranking will read it.
        let mut sums = Sums::default();
        let minutes = t
            .minutes
            .iter()
            .map(|(k, minute)| {
                let mut minute = minute.clone();
                minute.settle(&mut sums, self.interner.bound());
                let mut v: Vec<_> = minute
                    .iter()
                    .map(|(f, ad, clicks)| {
                        let ad = self.interner.id(ad).as_str();
                        (f.0, String::from(ad), clicks)
                    })
                    .collect();
                v.sort();
                (k.0, v)
            })
            .collect();
        let emitted = t
            .emitted
            .iter()
            .map(|((m, w, f), (v, ads))| {
                (
                    m.0,
                    *w,
                    f.0,
                    *v,
                    ads.iter()
                        .map(|r| (String::from(r.ad_id.as_str()), r.clicks))
                        .collect(),
                )
            })
            .collect();
        let body = Body {
            semantics_version: SEMANTICS_VERSION,
            config_json: self.config.to_json(),
            now_ms: self.now_ms,
            partitions,
            done_through: t.done_through,
            minutes,
            emitted,
        };
        let mut out = Vec::from(&MAGIC[..]);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        // Encoding plain data into a Vec cannot fail.
        out.extend(postcard::to_allocvec(&body).unwrap_or_default());
        out
    }

    /// An engine in the state `bytes` describes.
    pub fn restore(bytes: &[u8]) -> Result<Engine, SnapshotError> {
        if bytes.len() < 10 || &bytes[..8] != MAGIC {
            return Err(SnapshotError::NotASnapshot);
        }
        let v = u16::from_le_bytes([bytes[8], bytes[9]]);
        if v != FORMAT_VERSION {
            return Err(SnapshotError::UnsupportedFormat(v));
        }
        let body: Body = postcard::from_bytes(&bytes[10..])
            .map_err(|e| SnapshotError::Corrupt(alloc::format!("{e}")))?;
        if body.semantics_version != SEMANTICS_VERSION {
            return Err(SnapshotError::SemanticsMismatch {
                found: body.semantics_version,
                expected: SEMANTICS_VERSION,
            });
        }
        let config = Config::from_json(&body.config_json).map_err(SnapshotError::Config)?;
        let filters = config.check().map_err(SnapshotError::Config)?;
        let ad = |s: String| {
            AdId::new(&s).map_err(|r| SnapshotError::Corrupt(alloc::format!("ad_id {s:?}: {r}")))
        };
        // Every cell counts a click in filter 0 or a configured filter
        // (ranking looks only for those, and for cells with clicks).
        let known: Vec<FilterId> = filters.all_ids().collect();
        let cell = |f: u32, clicks: u64| {
            if !known.contains(&FilterId(f)) {
                Err(SnapshotError::Corrupt(alloc::format!(
                    "a cell of filter {f}, which the configuration does not have"
                )))
            } else if clicks == 0 {
                Err(SnapshotError::Corrupt(alloc::format!(
                    "a cell of filter {f} with 0 clicks"
                )))
            } else {
                Ok(FilterId(f))
            }
        };
        let mut engine = Engine::from_parts(config, filters);
        engine.now_ms = body.now_ms;
        for ps in body.partitions {
            let mut st = PartitionState::new(&engine.config);
            let times = ps.frontier.iter().chain(ps.ahead.iter().map(|(_, t)| t));
            if let Some(t) = times
                .chain(ps.windows.iter().map(|w| &w.0))
                .find(|&&t| !in_range(t))
            {
                return Err(SnapshotError::Corrupt(alloc::format!(
                    "partition {}: time {t} is outside 1900..2200",
                    ps.partition
                )));
            }
            st.watermark = Watermark::from_parts(
                engine.config.out_of_orderness_ms,
                engine.config.quorum(),
                ps.samples,
                ps.frontier,
                &ps.ahead,
            )
            .ok_or_else(|| {
                SnapshotError::Corrupt(alloc::format!(
                    "partition {}: a watermark this configuration cannot have \
                     ({} samples, frontier {:?}, ahead {:?})",
                    ps.partition,
                    ps.samples,
                    ps.frontier,
                    ps.ahead
                ))
            })?;
            st.last_active_ms = ps.last_active_ms;
            st.next_offset = ps.next_offset.map(Offset);
            st.dedup = crate::dedup::DedupSet::from_slots(
                engine.config.dedup_horizon_ms,
                &ps.dedup_slots,
                ps.dedup_last_sweep,
            );
            for (start, emitted, cells) in ps.windows {
                let mut ws = WindowState {
                    emitted,
                    ..WindowState::default()
                };
                for (a, f, clicks, version) in cells {
                    let filter = cell(f, clicks)?;
                    let key = CellKey {
                        ad: engine.interner.intern(ad(a)?.as_str()),
                        filter,
                    };
                    ws.cells.insert(key, Counts { clicks, version });
                }
                if st.windows.insert(WindowStart(start), ws).is_some() {
                    return Err(SnapshotError::Corrupt(alloc::format!(
                        "partition {}: window {start} comes twice",
                        ps.partition
                    )));
                }
            }
            st.cells = st.windows.values().map(|ws| ws.cells.len()).sum();
            engine.partitions.insert(Partition(ps.partition), st);
        }
        let mut t = TopNState {
            done_through: body.done_through,
            ..TopNState::default()
        };
        for (k, entries) in body.minutes {
            // Written ascending by (filter, ad), so a repeat is a neighbour.
            if let Some(w) = entries
                .windows(2)
                .find(|w| (w[0].0, &w[0].1) >= (w[1].0, &w[1].1))
            {
                return Err(SnapshotError::Corrupt(alloc::format!(
                    "final minute {k} lists (filter {}, ad_id {:?}) after (filter {}, ad_id {:?})",
                    w[1].0,
                    w[1].1,
                    w[0].0,
                    w[0].1
                )));
            }
            let mut minute = FinalMinute::default();
            for (f, a, clicks) in entries {
                let filter = cell(f, clicks)?;
                minute.push(filter, engine.interner.intern(ad(a)?.as_str()), clicks);
            }
            if t.minutes.insert(WindowStart(k), minute).is_some() {
                return Err(SnapshotError::Corrupt(alloc::format!(
                    "final minute {k} comes twice"
                )));
            }
        }
        for (m, w, f, v, ads) in body.emitted {
            let ads = ads
                .into_iter()
                .map(|(a, clicks)| {
                    Ok(RankedAd {
                        ad_id: ad(a)?,
                        clicks,
                    })
                })
                .collect::<Result<_, SnapshotError>>()?;
            t.emitted.insert((WindowStart(m), w, FilterId(f)), (v, ads));
        }
        engine.topn = t;
        Ok(engine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Outputs, test_click};

    /// An engine with a window of minute 0 final (in the top-N state) and
    /// one of minute 2 open, as a decoded body.
    fn body() -> Body {
        let mut engine = Engine::new(single_record()).unwrap();
        let mut out = Outputs::default();
        for (i, t) in [0, 120_000].into_iter().enumerate() {
            let click = test_click("ad1", t, "USA");
            engine.push_click_ref(Partition(0), Offset(i as i64), click, t, &mut out);
        }
        let bytes = engine.snapshot();
        postcard::from_bytes(&bytes[10..]).unwrap()
    }

    /// A configuration where one click moves the watermark.
    fn single_record() -> Config {
        Config {
            watermark_quorum: 1,
            ..Config::default()
        }
    }

    fn restore(body: &Body) -> Result<Engine, SnapshotError> {
        let mut bytes = Vec::from(&MAGIC[..]);
        bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes.extend(postcard::to_allocvec(body).unwrap());
        Engine::restore(&bytes)
    }

    /// A final minute that two partitions count the same ad in, not yet
    /// ranked (a third partition holds its top-N back), is written with the
    /// ad once and its clicks summed, restores to the same bytes, and ranks
    /// the same after the restore.
    #[test]
    fn a_minute_of_several_partitions_is_written_summed() {
        let mut engine = Engine::new(single_record()).unwrap();
        let mut out = Outputs::default();
        let push = |engine: &mut Engine, p: u32, offset: i64, t: i64, out: &mut Outputs| {
            let click = test_click("ad1", t, "USA");
            engine.push_click_ref(Partition(p), Offset(offset), click, 0, out);
        };
        push(&mut engine, 2, 0, 0, &mut out);
        for p in 0..2 {
            push(&mut engine, p, 0, 0, &mut out);
            push(&mut engine, p, 1, 120_000, &mut out);
        }
        assert!(out.top_n.is_empty(), "partition 2 holds minute 0 back");
        let bytes = engine.snapshot();
        let body: Body = postcard::from_bytes(&bytes[10..]).unwrap();
        assert_eq!(
            body.minutes,
            [(0, alloc::vec![(0, String::from("ad1"), 2)])]
        );
        let mut restored = Engine::restore(&bytes).unwrap();
        assert_eq!(restored.snapshot(), bytes);
        let mut again = Outputs::default();
        push(&mut engine, 2, 1, 120_000, &mut out);
        push(&mut restored, 2, 1, 120_000, &mut again);
        assert_eq!(out.top_n, again.top_n);
        let minute_0 = out.top_n.iter().find(|r| r.minute.0 == 0 && r.windows == 1);
        assert_eq!(minute_0.unwrap().ads[0].clicks, 3);
    }

    /// Cells of a filter the configuration lacks, or with no clicks, are
    /// refused, in windows and in final minutes alike, and so are windows
    /// that come twice and final minutes that repeat a count or come twice:
    /// ranking and the bound of cells rely on none of these existing.
    #[test]
    fn cells_no_engine_makes_are_refused() {
        let b = body();
        assert!(restore(&b).is_ok());
        assert_eq!(b.partitions[0].windows.len(), 1);
        assert_eq!(b.minutes.len(), 1);

        let refused = |edit: fn(&mut Body), says: &str| {
            let mut b = body();
            edit(&mut b);
            let e = restore(&b).err().unwrap();
            assert!(
                matches!(&e, SnapshotError::Corrupt(m) if m.contains(says)),
                "{e}"
            );
        };
        refused(|b| b.partitions[0].windows[0].2[0].1 = 7, "filter 7");
        refused(|b| b.partitions[0].windows[0].2[0].2 = 0, "0 clicks");
        refused(
            |b| {
                let first = b.partitions[0].windows[0].clone();
                b.partitions[0].windows.push(first)
            },
            "window 120000 comes twice",
        );
        refused(|b| b.minutes[0].1[0].0 = 3, "filter 3");
        refused(|b| b.minutes[0].1[0].2 = 0, "0 clicks");
        refused(
            |b| {
                let first = b.minutes[0].1[0].clone();
                b.minutes[0].1.push(first)
            },
            "final minute 0 lists (filter 0, ad_id \"ad1\") after (filter 0, ad_id \"ad1\")",
        );
        refused(
            |b| b.minutes.push(b.minutes[0].clone()),
            "final minute 0 comes twice",
        );
    }
}
