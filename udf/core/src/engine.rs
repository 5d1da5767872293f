//! The engine: per-partition state, firing, late side output and top-N.

use crate::dedup::DedupSet;
use crate::filter::{FilterId, FilterSet};
use crate::intern::{AdHandle, AdHash, FastHash, Interner, sort_prefix};
use crate::key::KeyBuf;
use crate::minute::{AdClicks, FinalMinute, Sums};
use crate::parse::{Parsed, parse_borrowed};
use crate::topn::{self, RankedAd};
use crate::{
    AdId, Click, ClickRef, Config, ConfigError, EventKey, EventTime, InvalidReason, Offset,
    Partition, Watermark, WindowSize, WindowStart,
};
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::String;
use alloc::vec::Vec;
use serde::{Serialize, Serializer};

/// How many clicks the batch paths key (and fetch the dedup memory for)
/// before counting them.
const AHEAD: usize = 16;

/// What the batch paths compute for a click before counting it.
#[derive(Clone, Copy)]
struct Keys {
    event: EventKey,
    ad: AdHash,
}

impl Keys {
    fn of(click: &ClickRef<'_>, buf: &mut KeyBuf) -> Keys {
        Keys {
            event: EventKey::of_ref_in(click, buf),
            ad: AdHash::of(click.ad_id),
        }
    }
}

impl Default for Keys {
    fn default() -> Keys {
        Keys {
            event: EventKey(0),
            ad: AdHash::default(),
        }
    }
}

/// A side-lined record as it came: its bytes, or a click handed over
/// parsed.
enum Payload<'a> {
    Bytes(&'a [u8]),
    Click(&'a ClickRef<'a>),
}

/// A record parsed ahead, and its keys when it is a click.
type Ahead<'a> = (Result<Parsed<'a>, InvalidReason>, Option<Keys>);

/// A batch for the engine's one loop (`Engine::push_batch`): where each of
/// its records is from, and what it parses to.
trait Batch<'a> {
    /// How many records.
    fn len(&self) -> usize;
    /// Record `i`'s partition and offset.
    fn position(&self, i: usize) -> (Partition, Offset);
    /// Record `i`, parsed (`skew` is `max_future_skew_ms`).
    fn parse(&self, i: usize, skew: i64) -> Result<Parsed<'a>, InvalidReason>;
    /// Record `i`'s bytes, for side outputs: none for a click handed over
    /// parsed.
    fn payload(&self, i: usize) -> Option<&'a [u8]>;
}

/// Records as a consumer hands them over.
struct Records<'r, 'a>(&'r [RawRecord<'a>]);

impl<'a> Batch<'a> for Records<'_, 'a> {
    fn len(&self) -> usize {
        self.0.len()
    }
    #[inline(always)]
    fn position(&self, i: usize) -> (Partition, Offset) {
        (self.0[i].partition, self.0[i].offset)
    }
    #[inline(always)]
    fn parse(&self, i: usize, skew: i64) -> Result<Parsed<'a>, InvalidReason> {
        let r = &self.0[i];
        parse_borrowed(r.payload, r.record_time_ms, skew)
    }
    #[inline(always)]
    fn payload(&self, i: usize) -> Option<&'a [u8]> {
        Some(self.0[i].payload)
    }
}

/// Validated clicks of one partition at consecutive offsets.
struct Clicks<'r, 'a> {
    partition: Partition,
    first_offset: Offset,
    clicks: &'r [ClickRef<'a>],
}

impl<'a> Batch<'a> for Clicks<'_, 'a> {
    fn len(&self) -> usize {
        self.clicks.len()
    }
    #[inline(always)]
    fn position(&self, i: usize) -> (Partition, Offset) {
        (self.partition, Offset(self.first_offset.0 + i as i64))
    }
    #[inline(always)]
    fn parse(&self, i: usize, _skew: i64) -> Result<Parsed<'a>, InvalidReason> {
        Ok(Parsed::Click(self.clicks[i]))
    }
    #[inline(always)]
    fn payload(&self, _i: usize) -> Option<&'a [u8]> {
        None
    }
}

/// A record as a consumer hands it over: where it came from and its bytes.
#[derive(Clone, Copy, Debug)]
pub struct RawRecord<'a> {
    /// The source partition.
    pub partition: Partition,
    /// Its offset there.
    pub offset: Offset,
    /// The record's value: a log line or JSON.
    pub payload: &'a [u8],
    /// The record's own timestamp (Kafka's), used when the event has none.
    pub record_time_ms: Option<i64>,
}

/// The engine's maps: integer keys, a fixed hasher (iteration order never
/// leaks into outputs, which are sorted, and runs are reproducible).
pub(crate) type Map<K, V> = hashbrown::HashMap<K, V, FastHash>;

/// One count of a window (or of a final minute): an ad under a filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct CellKey {
    pub(crate) ad: AdHandle,
    pub(crate) filter: FilterId,
}

/// A cell's distinct clicks and how often it was emitted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) clicks: u64,
    pub(crate) version: u32,
}

pub(crate) type Cells = Map<CellKey, Counts>;

/// Clicks of one (window, ad, filter, partition), as emitted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rollup {
    /// The window.
    pub window_start: WindowStart,
    /// The ad.
    pub ad_id: AdId,
    /// The filter the clicks matched.
    pub filter_id: FilterId,
    /// The source partition.
    pub partition: Partition,
    /// Distinct clicks.
    pub clicks: u64,
    /// 1 at the first emission, +1 at each re-emission; the highest wins.
    pub version: u32,
}

/// A click that arrived after its window was final.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LateEvent {
    /// Where it came from.
    pub partition: Partition,
    /// Its offset.
    pub offset: Offset,
    /// Its event key.
    pub key: EventKey,
    /// The window it belongs to.
    pub window_start: WindowStart,
    /// `W_p` when it arrived.
    pub watermark: i64,
    /// The click.
    pub click: Click,
}

/// A record that is not a valid click, with why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InvalidEvent {
    /// Where it came from.
    pub partition: Partition,
    /// Its offset.
    pub offset: Offset,
    /// Why it is invalid.
    pub reason: InvalidReason,
    /// The record as received.
    #[serde(serialize_with = "lossy_text")]
    pub payload: Vec<u8>,
}

/// The top ads of one minute, window size M and filter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TopNRow {
    /// The last window included (the design's `update_time_minute`).
    pub minute: WindowStart,
    /// M: how many windows, ending with `minute`, are summed.
    pub windows: u32,
    /// The filter.
    pub filter_id: FilterId,
    /// 1, or more after a revision; the highest wins.
    pub version: u32,
    /// Best first.
    pub ads: Vec<RankedAd>,
}

/// Everything an engine call produced, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Outputs {
    /// Rollup rows.
    pub rollups: Vec<Rollup>,
    /// The late side output.
    pub late: Vec<LateEvent>,
    /// The invalid side output.
    pub invalid: Vec<InvalidEvent>,
    /// Top-N rows.
    pub top_n: Vec<TopNRow>,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Records skipped because their offset was already processed.
    pub replayed: u64,
}

impl Outputs {
    /// Empties every list and zeroes the counters, keeping allocations.
    pub fn clear(&mut self) {
        self.rollups.clear();
        self.late.clear();
        self.invalid.clear();
        self.top_n.clear();
        self.duplicates = 0;
        self.replayed = 0;
    }

    /// Moves `other`'s outputs to the end of these.
    pub fn append(&mut self, other: &mut Outputs) {
        self.rollups.append(&mut other.rollups);
        self.late.append(&mut other.late);
        self.invalid.append(&mut other.invalid);
        self.top_n.append(&mut other.top_n);
        self.duplicates += core::mem::take(&mut other.duplicates);
        self.replayed += core::mem::take(&mut other.replayed);
    }
}

fn lossy_text<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(bytes))
}

#[derive(Clone, Default)]
pub(crate) struct WindowState {
    pub(crate) emitted: bool,
    pub(crate) cells: Cells,
}

#[derive(Clone)]
pub(crate) struct PartitionState {
    pub(crate) watermark: Watermark,
    pub(crate) last_active_ms: Option<i64>,
    pub(crate) next_offset: Option<Offset>,
    pub(crate) dedup: DedupSet,
    pub(crate) windows: BTreeMap<WindowStart, WindowState>,
    /// Cells in `windows`, all together (derived: recounted on restore).
    pub(crate) cells: usize,
    /// Cells of the last window finalized: a new window's map starts this
    /// large instead of growing there step by step (a hint, not state).
    pub(crate) cells_hint: usize,
    /// The lowest watermark at which [`Engine::advance`] has work (a
    /// window to emit or finalize, a dedup sweep, a window boundary to
    /// cross); below it a moved watermark is only recorded. Derived, not
    /// state: `i64::MIN` (advance at the next move) after a restore.
    pub(crate) advance_at: i64,
}

impl PartitionState {
    pub(crate) fn new(config: &Config) -> PartitionState {
        PartitionState {
            watermark: Watermark::new(config.out_of_orderness_ms, config.quorum()),
            last_active_ms: None,
            next_offset: None,
            dedup: DedupSet::new(config.dedup_horizon_ms),
            windows: BTreeMap::new(),
            cells: 0,
            cells_hint: 0,
            advance_at: i64::MIN,
        }
    }

    /// Whether a click or heartbeat at `t` is more than `max_ahead_ms`
    /// past the partition's frontier: then it is side-lined (it still
    /// counts towards a quorum that moves the frontier).
    #[inline(always)]
    fn far_ahead(&self, t: EventTime, max_ahead_ms: i64) -> bool {
        self.watermark
            .frontier()
            .is_some_and(|f| t.0 > f.0.saturating_add(max_ahead_ms))
    }

    /// Side-lines a click or heartbeat at `t` for a `reason` of the
    /// partition's state: one [far ahead](Self::far_ahead)
    /// ([`InvalidReason::AheadOfPartition`]), or one beyond the partition's
    /// bounds ([`InvalidReason::TooManyKeys`], [`InvalidReason::TooManyCells`]).
    /// `payload` is the record, or a click handed over parsed (then it is
    /// written as JSON). It is still a sample of the partition's time.
    #[cold]
    fn side_line(
        &mut self,
        p: Partition,
        offset: Offset,
        t: EventTime,
        reason: InvalidReason,
        payload: Payload<'_>,
        out: &mut Outputs,
    ) -> Option<Option<i64>> {
        let payload = match payload {
            Payload::Bytes(b) => b.to_vec(),
            Payload::Click(c) => serde_json::to_vec(&c.to_click()).unwrap_or_default(),
        };
        out.invalid.push(InvalidEvent {
            partition: p,
            offset,
            reason,
            payload,
        });
        self.observe(t)
    }

    /// Moves the watermark with event time `t`; when that reached
    /// `advance_at`, returns the watermark before, for [`Engine::advance`].
    fn observe(&mut self, t: EventTime) -> Option<Option<i64>> {
        let before = self.watermark.current();
        let due = self.watermark.observe(t) && self.watermark.current() >= Some(self.advance_at);
        due.then_some(before)
    }

    /// Whether the record at `offset` is new: then it becomes the
    /// partition's last processed offset, and the partition was active at
    /// `now_ms`. A record processed before is a replay, counted in `out`.
    fn admit(&mut self, offset: Offset, now_ms: i64, out: &mut Outputs) -> bool {
        if matches!(self.next_offset, Some(next) if offset < next) {
            out.replayed += 1;
            return false;
        }
        self.next_offset = Some(Offset(offset.0 + 1));
        self.last_active_ms = Some(now_ms);
        true
    }

    /// Counts a valid click of this partition whose keys were computed
    /// beforehand. When the watermark reached `advance_at`, returns the
    /// watermark before, for [`Engine::advance`], which must run before the
    /// next click. The click is borrowed: passed by value, WebAssembly
    /// copied it to the stack in memory for each click. `payload` is the
    /// record's bytes, for the side output of a click too far ahead (none
    /// for a click handed over parsed). (Eight arguments: bundling them
    /// into a struct costs WebAssembly a copy through memory per click.)
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn count(
        &mut self,
        cx: &mut Counting<'_>,
        p: Partition,
        offset: Offset,
        click: &ClickRef<'_>,
        payload: Option<&[u8]>,
        keys: Keys,
        out: &mut Outputs,
    ) -> Option<Option<i64>> {
        let as_came = || payload.map_or(Payload::Click(click), Payload::Bytes);
        let t = click.timestamp;
        if self.far_ahead(t, cx.max_ahead) {
            let reason = InvalidReason::AheadOfPartition;
            return self.side_line(p, offset, t, reason, as_came(), out);
        }
        let key = keys.event;
        let (size, lateness) = (cx.size, cx.lateness);
        let w = size.window_of(t);
        let wm = self.watermark.current();
        let late = wm.filter(|&wm| w.end(size).saturating_add(lateness) <= wm);
        // Near its bound of cells, a click that would add one is refused
        // (before its key is remembered, so a resend of it is not a
        // duplicate); a duplicate stays a duplicate.
        if late.is_none()
            && self.cells > cx.cells_room
            && !self.dedup.contains(key)
            && self.cells + self.missing_cells(cx, w, click, keys.ad) > cx.max_cells
        {
            let reason = InvalidReason::TooManyCells;
            return self.side_line(p, offset, t, reason, as_came(), out);
        }
        // A late click older than the horizon is only looked up: remembering
        // it would be undone by the next sweep anyway.
        let new = match late {
            Some(wm) if !self.dedup.is_within_horizon(t, Some(wm)) => !self.dedup.contains(key),
            _ if self.dedup.len() >= cx.max_keys => {
                if !self.dedup.contains(key) {
                    let reason = InvalidReason::TooManyKeys;
                    return self.side_line(p, offset, t, reason, as_came(), out);
                }
                false
            }
            _ => self.dedup.insert_new(key, t),
        };
        if !new {
            out.duplicates += 1;
            return None;
        }
        if let Some(wm) = late {
            out.late.push(LateEvent {
                partition: p,
                offset,
                key,
                window_start: w,
                watermark: wm,
                click: click.to_click(),
            });
            return None;
        }
        // A window whose end W_p passed while it had no clicks was emitted
        // empty: its first click (within lateness) emits at once.
        let passed = wm.is_some_and(|wm| w.end(size) <= wm);
        let hint = self.cells_hint;
        let advance_at = &mut self.advance_at;
        let ws = self.windows.entry(w).or_insert_with(|| {
            *advance_at = (*advance_at).min(w.end(size));
            WindowState {
                emitted: passed,
                cells: Cells::with_capacity_and_hasher(hint, FastHash::default()),
            }
        });
        let ad = cx.interner.intern_hashed(click.ad_id, keys.ad);
        let ad_id = ws.emitted.then(|| cx.interner.id(ad).clone());
        // Every click counts in filter 0; without configured filters that is
        // all, and no list of matches is made.
        let matched: &[FilterId] = if cx.filters.has_configured() {
            cx.filters.matching_ref(click, cx.scratch);
            cx.scratch
        } else {
            &[FilterId::ALL]
        };
        let cells_before = ws.cells.len();
        for &filter in matched {
            let cell = ws.cells.entry(CellKey { ad, filter }).or_default();
            cell.clicks += 1;
            if let Some(ad_id) = &ad_id {
                cell.version += 1;
                out.rollups.push(Rollup {
                    window_start: w,
                    ad_id: ad_id.clone(),
                    filter_id: filter,
                    partition: p,
                    clicks: cell.clicks,
                    version: cell.version,
                });
            }
        }
        self.cells += ws.cells.len() - cells_before;
        self.observe(t)
    }

    /// How many cells counting `click` in window `w` would add: one per
    /// filter it matches whose cell (window, ad, filter) is not there.
    #[cold]
    fn missing_cells(
        &self,
        cx: &mut Counting<'_>,
        w: WindowStart,
        click: &ClickRef<'_>,
        ad: AdHash,
    ) -> usize {
        cx.filters.matching_ref(click, cx.scratch);
        let held = self
            .windows
            .get(&w)
            .zip(cx.interner.get_hashed(click.ad_id, ad));
        let Some((ws, ad)) = held else {
            return cx.scratch.len();
        };
        cx.scratch
            .iter()
            .filter(|&&filter| !ws.cells.contains_key(&CellKey { ad, filter }))
            .count()
    }
}

/// The size of an engine's state ([`Engine::state_usage`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StateUsage {
    /// Keys remembered for deduplication.
    pub keys: usize,
    /// Heap bytes the remembered keys take.
    pub key_bytes: usize,
    /// (window, ad, filter) counts in open windows.
    pub cells: usize,
    /// Distinct ad ids held.
    pub ads: usize,
}

/// What counting a click touches besides its partition's state: the rest
/// of the engine, borrowed apart from the partitions.
struct Counting<'e> {
    size: WindowSize,
    lateness: i64,
    max_ahead: i64,
    max_keys: usize,
    max_cells: usize,
    /// `max_cells` less the most cells one click can add: below it, no
    /// click needs its cells looked up.
    cells_room: usize,
    filters: &'e FilterSet,
    interner: &'e mut Interner,
    scratch: &'e mut Vec<FilterId>,
}

#[derive(Clone, Default)]
pub(crate) struct TopNState {
    /// Final counts per minute, filter and ad, from the partitions that
    /// finalized the minute (summed when the minute is first ranked).
    pub(crate) minutes: BTreeMap<WindowStart, FinalMinute>,
    /// Every minute with `end <= done_through` has had its rows emitted.
    pub(crate) done_through: Option<i64>,
    /// Emitted rows still open to revision: (minute, M, filter) -> (version, ads).
    pub(crate) emitted: BTreeMap<(WindowStart, u32, FilterId), (u32, Vec<RankedAd>)>,
    /// Scratch for summing counts by ad (not state).
    pub(crate) sums: Sums,
}

/// The aggregation engine of one consumer: the state of every partition it
/// reads, and the top-N over them.
#[derive(Clone)]
pub struct Engine {
    pub(crate) config: Config,
    pub(crate) filters: FilterSet,
    pub(crate) size: WindowSize,
    pub(crate) partitions: BTreeMap<Partition, PartitionState>,
    pub(crate) topn: TopNState,
    pub(crate) now_ms: Option<i64>,
    pub(crate) interner: Interner,
    scratch: Vec<FilterId>,
    /// Ads that held a handle after the last sweep: when to sweep next. Not
    /// in snapshots (a restored engine sweeps at its first final minute),
    /// since handles never reach an output.
    ads_after_sweep: usize,
}

impl Engine {
    /// An engine with no state.
    pub fn new(config: Config) -> Result<Engine, ConfigError> {
        let filters = config.check()?;
        Ok(Engine::from_parts(config, filters))
    }

    pub(crate) fn from_parts(config: Config, filters: FilterSet) -> Engine {
        let size = WindowSize::checked(config.window_ms).expect("checked by Config::check");
        Engine {
            config,
            filters,
            size,
            partitions: BTreeMap::new(),
            topn: TopNState::default(),
            now_ms: None,
            interner: Interner::default(),
            scratch: Vec::new(),
            ads_after_sweep: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The window size.
    pub fn window_size(&self) -> WindowSize {
        self.size
    }

    /// The filters.
    pub fn filters(&self) -> &FilterSet {
        &self.filters
    }

    /// The offset after the last record processed from `p`.
    pub fn position(&self, p: Partition) -> Option<Offset> {
        self.partitions.get(&p).and_then(|s| s.next_offset)
    }

    /// The partitions with state, and their watermarks.
    pub fn watermarks(&self) -> impl Iterator<Item = (Partition, Option<i64>)> + '_ {
        self.partitions
            .iter()
            .map(|(p, s)| (*p, s.watermark.current()))
    }

    /// What the state takes, over all partitions: what the bounds
    /// `max_partition_keys` and `max_partition_cells` apply to (each
    /// partition's own).
    pub fn state_usage(&self) -> StateUsage {
        let mut u = StateUsage {
            ads: self.interner.len(),
            ..StateUsage::default()
        };
        for s in self.partitions.values() {
            u.keys += s.dedup.len();
            u.key_bytes += s.dedup.allocated_bytes();
            u.cells += s.cells;
        }
        u
    }

    /// Forgets a partition (after it was revoked and handed to another
    /// consumer). Its open windows are not emitted.
    pub fn drop_partition(&mut self, p: Partition) {
        self.partitions.remove(&p);
    }

    /// Processes one record of partition `p`. `record_time_ms` is the
    /// record's own timestamp (Kafka's), `now_ms` the processing time.
    pub fn push_record(
        &mut self,
        p: Partition,
        offset: Offset,
        payload: &[u8],
        record_time_ms: Option<i64>,
        now_ms: i64,
        out: &mut Outputs,
    ) {
        let record = RawRecord {
            partition: p,
            offset,
            payload,
            record_time_ms,
        };
        self.push_records(core::slice::from_ref(&record), now_ms, out)
    }

    /// [`Engine::push_record`] for each of `records` in turn: the same
    /// outputs, faster, because a few records are parsed ahead and the
    /// dedup table's memory for their clicks is fetched while earlier
    /// clicks are counted.
    pub fn push_records(&mut self, records: &[RawRecord<'_>], now_ms: i64, out: &mut Outputs) {
        self.push_batch(&Records(records), now_ms, out)
    }

    /// The one loop of every batch path: parses and keys [`AHEAD`] records,
    /// asks for the memory their counting will read, then counts them,
    /// looking their partition's state up again only when the partition
    /// changes or the engine advanced (which needs all of it).
    // Never inlined: in the WebAssembly component, inlined into the export
    // together with the checks of the batch's columns, it made one function
    // with more live values than registers, and the heap base was reloaded
    // from the stack before most memory accesses.
    #[inline(never)]
    fn push_batch<'a>(&mut self, batch: &impl Batch<'a>, now_ms: i64, out: &mut Outputs) {
        let now_changed = self.now_ms.replace(now_ms) != Some(now_ms);
        let skew = self.config.max_future_skew_ms;
        let mut ahead: [Option<Ahead<'a>>; AHEAD] = Default::default();
        let mut buf = KeyBuf::new();
        let n = batch.len();
        let mut start = 0;
        while start < n {
            let end = n.min(start + AHEAD);
            for (i, slot) in (start..end).zip(&mut ahead) {
                let parsed = batch.parse(i, skew);
                let keys = match &parsed {
                    Ok(Parsed::Click(c)) => Some(Keys::of(c, &mut buf)),
                    Ok(Parsed::Owned(c)) => Some(Keys::of(&c.as_click_ref(), &mut buf)),
                    _ => None,
                };
                *slot = Some((parsed, keys));
            }
            self.prefetch(batch, start, &ahead[..end - start]);
            let mut i = start;
            while i < end {
                let p = batch.position(i).0;
                let (st, mut cx) = self.split(p);
                let mut due = None;
                while i < end && due.is_none() {
                    let (q, offset) = batch.position(i);
                    if q != p {
                        break;
                    }
                    let (parsed, keys) = ahead[i - start].take().expect("parsed above");
                    let payload = batch.payload(i);
                    i += 1;
                    if !st.admit(offset, now_ms, out) {
                        continue;
                    }
                    // Every click has its keys.
                    let keys = keys.unwrap_or_default();
                    let bytes = || payload.unwrap_or_default();
                    due = match parsed {
                        Ok(Parsed::Click(c)) => {
                            st.count(&mut cx, p, offset, &c, payload, keys, out)
                        }
                        Ok(Parsed::Owned(c)) => {
                            let c = c.as_click_ref();
                            st.count(&mut cx, p, offset, &c, payload, keys, out)
                        }
                        Ok(Parsed::Heartbeat(t)) if st.far_ahead(t, cx.max_ahead) => st.side_line(
                            p,
                            offset,
                            t,
                            InvalidReason::AheadOfPartition,
                            Payload::Bytes(bytes()),
                            out,
                        ),
                        Ok(Parsed::Heartbeat(t)) => st.observe(t),
                        Err(reason) => {
                            out.invalid.push(InvalidEvent {
                                partition: p,
                                offset,
                                reason,
                                payload: bytes().to_vec(),
                            });
                            None
                        }
                    };
                }
                if let Some(before) = due {
                    self.advance(p, before, out);
                }
            }
            start = end;
        }
        if now_changed {
            self.emit_due_top_n(out);
        }
    }

    /// Processes one already parsed and validated click.
    pub fn push_click(
        &mut self,
        p: Partition,
        offset: Offset,
        click: Click,
        now_ms: i64,
        out: &mut Outputs,
    ) {
        self.push_click_ref(p, offset, click.as_click_ref(), now_ms, out)
    }

    /// [`Engine::push_click`] for a borrowed click: allocates only for an ad
    /// the engine holds no state for yet (and for side outputs).
    pub fn push_click_ref(
        &mut self,
        p: Partition,
        offset: Offset,
        click: ClickRef<'_>,
        now_ms: i64,
        out: &mut Outputs,
    ) {
        self.push_click_refs(p, offset, core::slice::from_ref(&click), now_ms, out)
    }

    /// [`Engine::push_click_ref`] for a run of clicks of partition `p` at
    /// offsets `first_offset`, `first_offset + 1`, ...: the same outputs,
    /// faster, because the dedup table's memory for a few clicks ahead is
    /// fetched while earlier clicks are counted.
    pub fn push_click_refs(
        &mut self,
        p: Partition,
        first_offset: Offset,
        clicks: &[ClickRef<'_>],
        now_ms: i64,
        out: &mut Outputs,
    ) {
        let batch = Clicks {
            partition: p,
            first_offset,
            clicks,
        };
        self.push_batch(&batch, now_ms, out)
    }

    /// Tells the engine the processing time, without records: partitions
    /// may become idle and top-N rows due. (A record's partition is active
    /// at the record's `now_ms`, so idleness is judged after the record.)
    pub fn tick(&mut self, now_ms: i64, out: &mut Outputs) {
        if self.now_ms.replace(now_ms) != Some(now_ms) {
            self.emit_due_top_n(out);
        }
    }

    /// Asks for the memory the lookups of a chunk's clicks, keyed ahead
    /// (`ahead[j]` is record `start + j` of `batch`), will read. Only a
    /// partition with state has a dedup table: creating state here would
    /// make a partition known (and hold back top-N) before its first record
    /// is processed.
    ///
    /// The hints come in one tight loop after the keys are computed: where
    /// a hint is a plain load (WebAssembly has no prefetch), loads this
    /// close together wait for memory at the same time, whereas a load
    /// after each key's hashing waits alone.
    fn prefetch<'a>(&self, batch: &impl Batch<'a>, start: usize, ahead: &[Option<Ahead<'a>>]) {
        let mut last: Option<(Partition, Option<&DedupSet>)> = None;
        for (i, slot) in (start..).zip(ahead) {
            let Some((_, Some(keys))) = slot else {
                continue;
            };
            let p = batch.position(i).0;
            let dedup = match last {
                Some((q, d)) if q == p => d,
                _ => {
                    let d = self.partitions.get(&p).map(|st| &st.dedup);
                    last = Some((p, d));
                    d
                }
            };
            if let Some(d) = dedup {
                d.prefetch(keys.event);
            }
            self.interner.prefetch(keys.ad);
        }
    }

    /// `p`'s state, created if new, and the rest of the engine a click
    /// touches, borrowed apart from it.
    fn split(&mut self, p: Partition) -> (&mut PartitionState, Counting<'_>) {
        let config = &self.config;
        let max_cells = usize::try_from(config.max_partition_cells).unwrap_or(usize::MAX);
        let st = self
            .partitions
            .entry(p)
            .or_insert_with(|| PartitionState::new(config));
        let cx = Counting {
            size: self.size,
            lateness: config.allowed_lateness_ms,
            max_ahead: config.max_ahead_ms,
            max_keys: usize::try_from(config.max_partition_keys).unwrap_or(usize::MAX),
            max_cells,
            cells_room: max_cells.saturating_sub(self.filters.len_all()),
            filters: &self.filters,
            interner: &mut self.interner,
            scratch: &mut self.scratch,
        };
        (st, cx)
    }

    /// `p`'s watermark moved from `before`: emit, finalize, sweep, and maybe
    /// emit top-N rows. Called only once the watermark reached
    /// `advance_at`, which it sets again; between two calls nothing here
    /// would have acted, and no window boundary was crossed, so `before`
    /// may be the watermark before the last move.
    fn advance(&mut self, p: Partition, before: Option<i64>, out: &mut Outputs) {
        let size = self.size;
        let lateness = self.config.allowed_lateness_ms;
        let Some(st) = self.partitions.get_mut(&p) else {
            return;
        };
        let Some(wm) = st.watermark.current() else {
            return;
        };
        for (&start, ws) in st.windows.iter_mut() {
            if start.end(size) > wm {
                break;
            }
            if !ws.emitted {
                ws.emitted = true;
                emit_window(&self.interner, p, start, ws, out);
            }
        }
        let mut finalized = false;
        while let Some(entry) = st.windows.first_entry() {
            if entry.key().end(size).saturating_add(lateness) > wm {
                break;
            }
            let (start, ws) = entry.remove_entry();
            st.cells -= ws.cells.len();
            st.cells_hint = ws.cells.len();
            self.topn.minutes.entry(start).or_default().add(&ws.cells);
            finalized = true;
            // A revision is due when this window's top-N rows went out
            // without this partition (it was idle).
            if matches!(self.topn.done_through, Some(d) if start.end(size) <= d) {
                let ranking = (&self.config, &self.filters, size, &self.interner);
                self.topn.revise(ranking, start, out);
            }
        }
        st.dedup.on_watermark(wm);
        // Top-N rows fall due as the watermark crosses a window end plus
        // the allowed lateness.
        let final_window = |w: i64| size.window_of(EventTime(w.saturating_sub(lateness)));
        let crossed = before.is_none_or(|b| final_window(b) != final_window(wm));
        let next_boundary = final_window(wm).end(size).saturating_add(lateness);
        let first_open = st.windows.iter().find(|(_, ws)| !ws.emitted);
        let first_final = st
            .windows
            .keys()
            .next()
            .map(|s| s.end(size).saturating_add(lateness));
        st.advance_at = [
            Some(next_boundary),
            first_open.map(|(s, _)| s.end(size)),
            first_final,
            Some(st.dedup.next_sweep_at()),
        ]
        .into_iter()
        .flatten()
        .min()
        .expect("the boundary is always there");
        if crossed || finalized {
            self.emit_due_top_n(out);
        }
    }

    /// The point up to which every minute is final for top-N purposes.
    fn global_final_point(&self) -> Option<i64> {
        let lateness = self.config.allowed_lateness_ms;
        let now = self.now_ms;
        let mut active_min: Option<i64> = None;
        let mut any_active = false;
        let mut all_max: Option<i64> = None;
        for st in self.partitions.values() {
            let fp = st.watermark.current().map(|w| w.saturating_sub(lateness));
            all_max = all_max.max(fp);
            let idle = match (now, st.last_active_ms) {
                (Some(now), Some(last)) => now - last >= self.config.idle_timeout_ms,
                _ => false,
            };
            if idle {
                continue;
            }
            let fp = fp?; // an active partition with no watermark holds everything back
            active_min = Some(active_min.map_or(fp, |m: i64| m.min(fp)));
            any_active = true;
        }
        if any_active { active_min } else { all_max }
    }

    fn emit_due_top_n(&mut self, out: &mut Outputs) {
        let Some(g) = self.global_final_point() else {
            return;
        };
        let size = self.size;
        let t = &mut self.topn;
        if matches!(t.done_through, Some(d) if g <= d) {
            return;
        }
        let mut due: BTreeSet<(WindowStart, u32)> = BTreeSet::new();
        for &k in t.minutes.keys() {
            for &m_windows in &self.config.top_n_windows {
                for i in 0..m_windows as i64 {
                    let m = WindowStart(k.0.saturating_add(i * size.ms()));
                    let end = m.end(size);
                    if end > g {
                        break;
                    }
                    if t.done_through.is_none_or(|d| end > d) {
                        due.insert((m, m_windows));
                    }
                }
            }
        }
        for (m, m_windows) in due {
            let ranking = (&self.config, &self.filters, size, &self.interner);
            t.publish(ranking, m, m_windows, out);
        }
        t.done_through = Some(g);
        // Forget what can no longer be revised.
        let max_m = self.config.top_n_windows.iter().copied().max().unwrap_or(1) as i64;
        let r = self.config.topn_revision_windows as i64;
        let revisable_after = g.saturating_sub(r * size.ms());
        t.emitted
            .retain(|(m, _, _), _| m.end(size) > revisable_after);
        let keep_from = revisable_after.saturating_sub(max_m * size.ms());
        t.minutes.retain(|k, _| k.end(size) > keep_from);
        self.sweep_ads();
    }

    /// Frees the handles of ads no window or final minute counts any more,
    /// once twice as many ads hold one as after the last sweep: a sweep
    /// reads every handle and cell, so sweeping at each final minute cost
    /// more than counting. This way a sweep costs O(1) per ad interned
    /// since the last, and at most half the handles are stale.
    fn sweep_ads(&mut self) {
        if self.interner.len() < 2 * self.ads_after_sweep.max(1) {
            return;
        }
        let mut live = alloc::vec![false; self.interner.bound()];
        let windows = self.partitions.values().flat_map(|st| st.windows.values());
        let cells = windows.map(|ws| &ws.cells);
        let minutes = self.topn.minutes.values().flat_map(FinalMinute::iter);
        for ad in cells
            .flat_map(Map::keys)
            .map(|k| k.ad)
            .chain(minutes.map(|(_, ad, _)| ad))
        {
            live[ad.0 as usize] = true;
        }
        self.interner.retain(&live);
        self.ads_after_sweep = self.interner.len();
    }
}

/// The rows of one window, ordered by ad, then filter.
fn emit_window(
    interner: &Interner,
    p: Partition,
    start: WindowStart,
    ws: &mut WindowState,
    out: &mut Outputs,
) {
    let mut rows: Vec<(u128, &AdId, FilterId, &mut Counts)> = ws
        .cells
        .iter_mut()
        .map(|(k, c)| {
            let id = interner.id(k.ad);
            (sort_prefix(id.as_str()), id, k.filter, c)
        })
        .collect();
    // By prefix, then filter: a radix sort, whose passes skip the bytes
    // that every row's prefix shares. The prefix goes in as two 64-bit
    // halves: WebAssembly has no 128-bit shift, so a u128 key costs a call
    // per digit of each row. Ids longer than the prefix may share it: such
    // a run is ordered by the whole id, then filter ((ad, filter) pairs are
    // unique, so an unstable sort is deterministic).
    radsort::sort_by_key(&mut rows, |r| ((r.0 >> 64) as u64, r.0 as u64, r.2.0));
    for run in rows.chunk_by_mut(|a, b| a.0 == b.0) {
        if run.len() > 1 {
            run.sort_unstable_by(|a, b| a.1.as_str().cmp(b.1.as_str()).then(a.2.cmp(&b.2)));
        }
    }
    out.rollups.reserve(rows.len());
    for (_, ad_id, filter_id, cell) in rows {
        cell.version += 1;
        out.rollups.push(Rollup {
            window_start: start,
            ad_id: ad_id.clone(),
            filter_id,
            partition: p,
            clicks: cell.clicks,
            version: cell.version,
        });
    }
}

/// What ranking reads besides the top-N state.
type Ranking<'e> = (&'e Config, &'e FilterSet, WindowSize, &'e Interner);

impl TopNState {
    /// The one path that emits top-N rows, first or revised: ranks minute
    /// `m` over `m_windows` windows and emits each filter's row that is new
    /// (version 1) or differs from the one emitted (its version + 1).
    fn publish(&mut self, ranking: Ranking<'_>, m: WindowStart, m_windows: u32, out: &mut Outputs) {
        let (config, filters, size, interner) = ranking;
        for (filter, ads) in self.rank(config, filters, size, interner, m, m_windows) {
            let key = (m, m_windows, filter);
            let version = match self.emitted.get(&key) {
                Some((_, old)) if *old == ads => continue,
                Some((v, _)) => v + 1,
                None => 1,
            };
            out.top_n.push(TopNRow {
                minute: m,
                windows: m_windows,
                filter_id: filter,
                version,
                ads: ads.clone(),
            });
            self.emitted.insert(key, (version, ads));
        }
    }

    /// Re-ranks the emitted minutes that window `start`, finalized late,
    /// contributes to, and emits the rows that changed.
    fn revise(&mut self, ranking: Ranking<'_>, start: WindowStart, out: &mut Outputs) {
        let Some(done) = self.done_through else {
            return;
        };
        let (config, _, size, _) = ranking;
        let revisable_after = done.saturating_sub(config.topn_revision_windows as i64 * size.ms());
        for &m_windows in &config.top_n_windows {
            for i in 0..m_windows as i64 {
                let m = WindowStart(start.0.saturating_add(i * size.ms()));
                if m.end(size) > done || m.end(size) <= revisable_after {
                    continue;
                }
                self.publish(ranking, m, m_windows, out);
            }
        }
    }

    /// Top-N of minute `m` over `m_windows` windows, per filter with clicks
    /// in them (never an empty list), from the final minutes (settled
    /// first).
    fn rank(
        &mut self,
        config: &Config,
        filters: &FilterSet,
        size: WindowSize,
        interner: &Interner,
        m: WindowStart,
        m_windows: u32,
    ) -> Vec<(FilterId, Vec<RankedAd>)> {
        let first = WindowStart(m.0.saturating_sub((m_windows as i64 - 1) * size.ms()));
        let bound = interner.bound();
        let sums = &mut self.sums;
        for (_, minute) in self.minutes.range_mut(first..=m) {
            minute.settle(sums, bound);
        }
        let minutes: Vec<&FinalMinute> = self.minutes.range(first..=m).map(|(_, v)| v).collect();
        // Every filter a click can count in is tried; one with no clicks in
        // these minutes ranks no ad and is left out.
        let n = config.top_n as usize;
        let mut ads: Vec<AdClicks> = Vec::new();
        filters
            .all_ids()
            .filter_map(|f| {
                ads.clear();
                match minutes.as_slice() {
                    // A settled minute lists each ad once per filter.
                    [only] => ads.extend_from_slice(only.ads(f)),
                    several => sums.sum(bound, several.iter().map(|m| m.ads(f)), &mut ads),
                }
                (!ads.is_empty()).then(|| (f, topn::top_n_keyed(&mut ads, n, |ad| interner.id(ad))))
            })
            .collect()
    }
}

/// A click of `ad` at `t` by user `u` from 10.0.0.1 in `country`, for
/// tests.
#[cfg(test)]
pub(crate) fn test_click<'a>(ad: &'a str, t: i64, country: &str) -> ClickRef<'a> {
    let ip = "10.0.0.1".parse().expect("an address");
    let country = crate::Country::new(country).expect("a country code");
    ClickRef::new(ad, EventTime(t), "u", ip, country, None).expect("a valid click")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A window's rows come ordered by ad id (byte order), then filter,
    /// also for ids that share their first 16 bytes or differ only in
    /// length, in every filter they count in.
    #[test]
    fn rows_are_ordered_by_whole_ad_id_then_filter() {
        let spec = |id: u32, country: &str| crate::FilterSpec {
            id,
            name: None,
            country: alloc::vec![String::from(country)],
            ip: Vec::new(),
            user_id: Vec::new(),
        };
        let config = Config {
            filters: alloc::vec![spec(2, "USA"), spec(9, "USA"), spec(5, "FRA")],
            watermark_quorum: 1,
            ..Config::default()
        };
        let mut engine = Engine::new(config).unwrap();
        let mut out = Outputs::default();
        let long = "abcdefghijklmnop";
        let ads = [
            alloc::format!("{long}z"),
            String::from(long),
            alloc::format!("{long}b"),
            alloc::format!("{long}ab"),
            alloc::format!("{long}a"),
            String::from("abcdefghijklmno"),
            String::from("b"),
            String::from("a"),
            alloc::format!("{long}ab{long}"),
        ];
        let mut offset = 0;
        let mut push = |engine: &mut Engine, ad: &str, t: i64, country, out: &mut Outputs| {
            let click = test_click(ad, t, country);
            engine.push_click_ref(Partition(0), Offset(offset), click, t, out);
            offset += 1;
        };
        for (i, ad) in ads.iter().enumerate() {
            let country = if i % 2 == 0 { "USA" } else { "FRA" };
            push(&mut engine, ad, i as i64, country, &mut out);
        }
        push(&mut engine, "x", 120_000, "USA", &mut out);
        let rows: Vec<(&str, u32)> = out
            .rollups
            .iter()
            .map(|r| (r.ad_id.as_str(), r.filter_id.0))
            .collect();
        let mut expected: Vec<(&str, u32)> = ads
            .iter()
            .enumerate()
            .flat_map(|(i, ad)| {
                let filters: &[u32] = if i % 2 == 0 { &[0, 2, 9] } else { &[0, 5] };
                filters.iter().map(move |&f| (ad.as_str(), f))
            })
            .collect();
        expected.sort();
        assert_eq!(rows, expected);
    }

    /// Ads come and go: the interner keeps at most about twice the ads that
    /// windows and final minutes still count, however many passed through.
    #[test]
    fn handles_of_ads_no_longer_counted_are_freed() {
        let mut engine = Engine::new(Config::default()).unwrap();
        let mut out = Outputs::default();
        let (minutes, per_minute) = (200i64, 100);
        let mut most = 0;
        for m in 0..minutes {
            for a in 0..per_minute {
                let ad = alloc::format!("ad{m}-{a}");
                let t = m * 60_000 + a;
                let offset = Offset(m * per_minute + a);
                engine.push_click_ref(Partition(0), offset, test_click(&ad, t, "USA"), t, &mut out);
            }
            most = most.max(engine.interner.len());
            out.clear();
        }
        // 20,000 ads passed; a few minutes' worth are counted at any time.
        let counted = engine.topn.minutes.len() + 2;
        assert!(
            most <= 2 * counted * per_minute as usize + per_minute as usize,
            "{most} handles held"
        );
    }
}
