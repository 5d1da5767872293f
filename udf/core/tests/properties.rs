//! The core against a naive, obviously correct model of the semantics, on
//! random streams with duplicates, disorder, lateness and several partitions.

use adtally_core::topn::{RankedAd, merge, top_n};
use adtally_core::{AdId, Config, Engine, Offset, Outputs, Partition};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

const WINDOW: i64 = 10_000;

#[derive(Clone, Debug)]
struct Ev {
    p: u32,
    ad: u8,
    user: u8,
    country_us: bool,
    t: i64,
}

impl Ev {
    fn line(&self) -> String {
        let c = if self.country_us { "USA" } else { "FRA" };
        format!(
            "ad{}, {}, u{}, 10.0.0.{}, {c}",
            self.ad, self.t, self.user, self.user
        )
    }
    /// The dedup identity: (ad, user, ip, second); the ip follows the user.
    fn key(&self) -> (u8, u8, i64) {
        (self.ad, self.user, self.t.div_euclid(1000))
    }
}

/// Streams: a random walk in time with jitter (disorder), exact repeats of
/// earlier events (duplicates, possibly much later), far-behind events (late).
fn stream() -> impl Strategy<Value = Vec<Ev>> {
    prop::collection::vec(
        (
            0u32..3,
            0u8..6,
            0u8..4,
            any::<bool>(),
            0i64..3_000,
            -8_000i64..2_000,
            0u8..12,
        ),
        1..200,
    )
    .prop_map(|steps| {
        let mut t = 0i64;
        let mut out: Vec<Ev> = Vec::new();
        for (p, ad, user, us, step, jitter, kind) in steps {
            t += step;
            match kind {
                0 if !out.is_empty() => {
                    let prev = out[(t as usize) % out.len()].clone();
                    out.push(prev);
                }
                1 => out.push(Ev {
                    p,
                    ad,
                    user,
                    country_us: us,
                    t: t - 40_000,
                }),
                // Far ahead: some within `MAX_AHEAD` of the frontier (held,
                // counted), some beyond (side-lined); never as far as the
                // 8 h horizon of `engine_equals_model`, in which the model
                // forgets no key.
                2 => out.push(Ev {
                    p,
                    ad,
                    user,
                    country_us: us,
                    t: t + 20_000 + step * step * 3,
                }),
                _ => out.push(Ev {
                    p,
                    ad,
                    user,
                    country_us: us,
                    t: t + jitter,
                }),
            }
        }
        out
    })
}

type RollupKey = (u32, i64, String, u32);
type DedupIdentity = (u8, u8, i64);

#[derive(Debug, Default, PartialEq)]
struct Final {
    /// (partition, window, ad, filter) -> clicks, for emitted windows.
    rollups: BTreeMap<RollupKey, u64>,
    /// (partition, offset) of late clicks.
    late: BTreeSet<(u32, i64)>,
    /// (partition, offset) of clicks side-lined as too far ahead.
    ahead: BTreeSet<(u32, i64)>,
    duplicates: u64,
}

/// How far past the frontier a click still counts, in [`config`].
const MAX_AHEAD: i64 = 60_000;

/// The watermark rule, restated naively: every sample is kept, and after
/// each the frontier is the largest of itself and the `quorum`-th largest
/// distinct time among the last `history` samples.
#[derive(Clone, Copy, Debug)]
struct Rule {
    quorum: usize,
    history: usize,
}

#[derive(Default)]
struct Frontier {
    samples: Vec<i64>,
    at: Option<i64>,
}

impl Frontier {
    fn sample(&mut self, t: i64, rule: Rule) {
        self.samples.push(t);
        let recent = &self.samples[self.samples.len().saturating_sub(rule.history)..];
        let distinct: BTreeSet<i64> = recent.iter().copied().collect();
        if let Some(&kth) = distinct.iter().rev().nth(rule.quorum - 1) {
            self.at = Some(self.at.map_or(kth, |f| f.max(kth)));
        }
    }
}

/// The model: per partition, a list of seen keys (never forgotten: the
/// horizon is longer than any stream here), the frontier, and counts.
fn model(events: &[Ev], ooo: i64, lateness: i64, rule: Rule) -> Final {
    let mut f = Final::default();
    let mut seen: BTreeMap<u32, Vec<(u8, u8, i64)>> = BTreeMap::new();
    let mut frontier: BTreeMap<u32, Frontier> = BTreeMap::new();
    let mut counts: BTreeMap<RollupKey, u64> = BTreeMap::new();
    let mut offsets: BTreeMap<u32, i64> = BTreeMap::new();
    for e in events {
        let offset = {
            let o = offsets.entry(e.p).or_insert(0);
            *o += 1;
            *o - 1
        };
        let fr = frontier.entry(e.p).or_default();
        if fr.at.is_some_and(|at| e.t > at + MAX_AHEAD) {
            f.ahead.insert((e.p, offset));
            fr.sample(e.t, rule);
            continue;
        }
        let keys = seen.entry(e.p).or_default();
        if keys.contains(&e.key()) {
            f.duplicates += 1;
            continue;
        }
        keys.push(e.key());
        let w = e.t.div_euclid(WINDOW) * WINDOW;
        if fr.at.is_some_and(|m| w + WINDOW + lateness <= m - ooo) {
            f.late.insert((e.p, offset));
            continue;
        }
        let ad = format!("ad{}", e.ad);
        *counts.entry((e.p, w, ad.clone(), 0)).or_default() += 1;
        if e.country_us {
            *counts.entry((e.p, w, ad, 1)).or_default() += 1;
        }
        fr.sample(e.t, rule);
    }
    f.rollups = counts
        .into_iter()
        .filter(|((p, w, _, _), _)| frontier[p].at.is_some_and(|m| w + WINDOW <= m - ooo))
        .collect();
    f
}

fn config(ooo: i64, lateness: i64, horizon: i64, rule: Rule) -> Config {
    let Rule { quorum, history } = rule;
    Config::from_json(&format!(
        r#"{{"window_ms":{WINDOW},"out_of_orderness_ms":{ooo},"allowed_lateness_ms":{lateness},
            "dedup_horizon_ms":{horizon},"top_n_windows":[1,3],"top_n":3,
            "watermark_quorum":{quorum},"watermark_history":{history},"max_ahead_ms":{MAX_AHEAD},
            "filters":[{{"id":1,"country":["USA"]}}]}}"#
    ))
    .unwrap()
}

/// Watermark rules: the maximum (quorum 1) and quorums in short histories.
fn rules() -> impl Strategy<Value = Rule> {
    (1usize..5, 0usize..6).prop_map(|(quorum, more)| Rule {
        quorum,
        history: quorum + more,
    })
}

/// Runs the engine, snapshotting and restoring before the records `cuts`
/// names, and optionally flushing every partition with a quorum of
/// heartbeats, each further than the last.
fn run(engine: &mut Engine, events: &[Ev], cuts: &[usize], flush: bool, rule: Rule) -> Outputs {
    let mut out = Outputs::default();
    let mut next: BTreeMap<u32, i64> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        if cuts.contains(&i) {
            *engine = Engine::restore(&engine.snapshot()).unwrap();
        }
        let o = next.entry(e.p).or_insert(0);
        engine.push_record(
            Partition(e.p),
            Offset(*o),
            e.line().as_bytes(),
            None,
            0,
            &mut out,
        );
        *o += 1;
    }
    if flush {
        for (p, o) in next {
            // Each within `MAX_AHEAD` of the one before: the stream's end
            // is a quorum of heartbeats, none of them side-lined.
            let end = events.iter().map(|e| e.t).max().unwrap_or(0);
            for i in 0..(rule.history as i64) {
                let hb = format!(r#"{{"heartbeat_ms": {}}}"#, end + 50_000 * (i + 1));
                engine.push_record(
                    Partition(p),
                    Offset(o + i),
                    hb.as_bytes(),
                    None,
                    0,
                    &mut out,
                );
            }
        }
    }
    out
}

fn final_of(out: &Outputs) -> Final {
    let mut best: BTreeMap<RollupKey, (u32, u64)> = BTreeMap::new();
    for r in &out.rollups {
        let k = (
            r.partition.0,
            r.window_start.0,
            r.ad_id.to_string(),
            r.filter_id.0,
        );
        let e = best.entry(k).or_insert((0, 0));
        assert!(r.version > e.0, "versions increase: {r:?}");
        *e = (r.version, r.clicks);
    }
    Final {
        rollups: best.into_iter().map(|(k, (_, c))| (k, c)).collect(),
        late: out
            .late
            .iter()
            .map(|l| (l.partition.0, l.offset.0))
            .collect(),
        ahead: out
            .invalid
            .iter()
            .filter(|i| !String::from_utf8_lossy(&i.payload).contains("heartbeat"))
            .map(|i| {
                assert_eq!(i.reason, adtally_core::InvalidReason::AheadOfPartition);
                (i.partition.0, i.offset.0)
            })
            .collect(),
        duplicates: out.duplicates,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// With a horizon longer than the stream, the engine equals the model,
    /// snapshots anywhere included.
    #[test]
    fn engine_equals_model(events in stream(), ooo in 0i64..6_000, lateness in prop::sample::select(vec![0i64, 5_000, 20_000]),
                           cuts in prop::collection::vec(0usize..200, 0..4), rule in rules()) {
        let mut engine = Engine::new(config(ooo, lateness, 8 * 3_600_000, rule)).unwrap();
        let out = run(&mut engine, &events, &cuts, false, rule);
        prop_assert_eq!(final_of(&out), model(&events, ooo, lateness, rule));
    }

    /// With the shortest horizon the config accepts, keys are forgotten, yet
    /// every record is accounted for exactly once and no (partition, window,
    /// ad) ever counts more clicks than it has distinct keys.
    #[test]
    fn short_horizon_never_double_counts(events in stream(), ooo in 0i64..3_000, cuts in prop::collection::vec(0usize..200, 0..3), rule in rules()) {
        let mut engine = Engine::new(config(ooo, 0, WINDOW + ooo, rule)).unwrap();
        let out = run(&mut engine, &events, &cuts, true, rule);
        let f = final_of(&out);
        let counted: u64 = f.rollups.iter().filter(|(k, _)| k.3 == 0).map(|(_, c)| c).sum();
        let ahead = out.invalid.iter().filter(|i| !String::from_utf8_lossy(&i.payload).contains("heartbeat")).count() as u64;
        prop_assert_eq!(counted + out.late.len() as u64 + out.duplicates + ahead, events.len() as u64);
        let mut distinct: BTreeMap<(u32, i64, String), BTreeSet<DedupIdentity>> = BTreeMap::new();
        for e in &events {
            distinct.entry((e.p, e.t.div_euclid(WINDOW) * WINDOW, format!("ad{}", e.ad))).or_default().insert(e.key());
        }
        for ((p, w, ad, filter), c) in &f.rollups {
            if *filter == 0 {
                let keys = distinct[&(*p, *w, ad.clone())].len() as u64;
                prop_assert!(*c <= keys, "{p} {w} {ad}: {c} clicks from {keys} distinct keys");
            }
        }
    }

    /// Merging per-set top-N lists of disjoint ad sets equals ranking the union.
    #[test]
    fn merge_equals_union_ranking(counts in prop::collection::btree_map(0u16..500, 1u64..20, 0..120), sets in 1usize..5, n in 1usize..15) {
        let all: Vec<(AdId, u64)> = counts.iter().map(|(a, c)| (AdId::new(&format!("ad{a}")).unwrap(), *c)).collect();
        let lists: Vec<Vec<RankedAd>> = (0..sets)
            .map(|s| top_n(all.iter().enumerate().filter(|(i, _)| i % sets == s).map(|(_, x)| x.clone()), n))
            .collect();
        prop_assert_eq!(merge(&lists, n).unwrap(), top_n(all, n));
    }

    /// Top-N equals sorting every ad (clicks descending, then ad_id) and
    /// taking the first n, with many ties at the cut-off.
    #[test]
    fn top_n_equals_a_full_sort(counts in prop::collection::btree_map(0u16..500, 1u64..5, 0..150), n in 1usize..20) {
        let mut all: Vec<(AdId, u64)> = counts.iter().map(|(a, c)| (AdId::new(&format!("ad{a}")).unwrap(), *c)).collect();
        // Not in id order, so the tie-break is the function's own work.
        all.reverse();
        let mut sorted = all.clone();
        sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let expected: Vec<RankedAd> = sorted.into_iter().take(n).map(|(ad_id, clicks)| RankedAd { ad_id, clicks }).collect();
        prop_assert_eq!(top_n(all, n), expected);
    }
}

/// One operation on a dedup set: insert a key (few distinct keys, so many
/// repeats and long probe runs) seen some seconds before now, or let time
/// pass and move the watermark to now.
#[derive(Clone, Debug)]
enum DedupOp {
    Insert { key: u16, back_s: i64 },
    Advance(i64),
}

fn dedup_ops() -> impl Strategy<Value = Vec<DedupOp>> {
    prop::collection::vec(
        prop_oneof![
            8 => (0u16..2_000, 0i64..40).prop_map(|(key, back_s)| DedupOp::Insert { key, back_s }),
            1 => (0i64..4_000).prop_map(DedupOp::Advance),
        ],
        0..4_000,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The open-addressing dedup table equals a plain map from key to the
    /// second it was first seen, swept by the documented rule: a key seen in
    /// second s is forgotten at the first sweep whose watermark reaches
    /// (s + 1) s + horizon; sweeps happen when the watermark crosses a
    /// multiple of horizon / 16 (at least 1 s).
    #[test]
    fn dedup_table_equals_a_map(ops in dedup_ops()) {
        use adtally_core::dedup::DedupSet;
        use adtally_core::{EventKey, EventTime};
        const HORIZON: i64 = 20_000;
        let step = (HORIZON / 16 / 1000 * 1000).max(1000);
        // The table indexes by a key's top bits: spread them like a hash.
        let key = |k: u16| EventKey(((k as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15) << 64) | 0xabcd);
        let mut set = DedupSet::new(HORIZON);
        let mut model: BTreeMap<u16, i64> = BTreeMap::new();
        let mut last_sweep: Option<i64> = None;
        let mut now = 40_000i64;
        for op in ops {
            match op {
                DedupOp::Insert { key: k, back_s } => {
                    let second = now.div_euclid(1000) - back_s;
                    let new = set.insert_new(key(k), EventTime(second * 1000 + 999));
                    prop_assert_eq!(new, !model.contains_key(&k), "key {}", k);
                    model.entry(k).or_insert(second);
                }
                DedupOp::Advance(ms) => {
                    now += ms;
                    set.on_watermark(now);
                    let due = last_sweep.is_none_or(|l| now.div_euclid(step) > l.div_euclid(step));
                    if due {
                        last_sweep = Some(now);
                        model.retain(|_, s| (*s + 1) * 1000 + HORIZON > now);
                    }
                }
            }
            prop_assert_eq!(set.len(), model.len());
        }
        for k in 0..2_000u16 {
            prop_assert_eq!(set.contains(key(k)), model.contains_key(&k), "key {}", k);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// A batch of records from several partitions gives the same outputs, in
    /// the same order, as the same records pushed one at a time.
    #[test]
    fn a_batch_equals_its_records_one_by_one(events in stream(), batch in 1usize..40) {
        use adtally_core::RawRecord;
        let lines: Vec<(Partition, Offset, String)> = events
            .iter()
            .enumerate()
            .map(|(i, e)| (Partition(e.p), Offset(i as i64), e.line()))
            .collect();
        let config = Config::default();
        let mut one = Engine::new(config.clone()).unwrap();
        let mut by_one = Outputs::default();
        for (p, o, l) in &lines {
            one.push_record(*p, *o, l.as_bytes(), None, 0, &mut by_one);
        }
        let mut many = Engine::new(config).unwrap();
        let mut by_batch = Outputs::default();
        for chunk in lines.chunks(batch) {
            let records: Vec<RawRecord> = chunk
                .iter()
                .map(|(p, o, l)| RawRecord { partition: *p, offset: *o, payload: l.as_bytes(), record_time_ms: None })
                .collect();
            many.push_records(&records, 0, &mut by_batch);
        }
        prop_assert_eq!(by_batch, by_one);
    }
}

/// The case the property above may miss: a partition's first record comes
/// in a batch after another partition's records have made a minute final.
#[test]
fn a_new_partition_later_in_a_batch_holds_nothing_back_early() {
    use adtally_core::RawRecord;
    let lines = [
        (0, "ad1, 1000, u1, 10.0.0.1, USA"),
        (0, "ad1, 200000, u2, 10.0.0.2, USA"),
        (1, "ad2, 1000, u3, 10.0.0.3, USA"),
    ];
    // One record moves a watermark here, as in the vectors that show it.
    let config = Config {
        watermark_quorum: 1,
        ..Config::default()
    };
    let mut one = Engine::new(config.clone()).unwrap();
    let mut by_one = Outputs::default();
    for (o, (p, l)) in lines.iter().enumerate() {
        one.push_record(
            Partition(*p),
            Offset(o as i64),
            l.as_bytes(),
            None,
            0,
            &mut by_one,
        );
    }
    let records: Vec<RawRecord> = lines
        .iter()
        .enumerate()
        .map(|(o, (p, l))| RawRecord {
            partition: Partition(*p),
            offset: Offset(o as i64),
            payload: l.as_bytes(),
            record_time_ms: None,
        })
        .collect();
    let mut many = Engine::new(config).unwrap();
    let mut by_batch = Outputs::default();
    many.push_records(&records, 0, &mut by_batch);
    assert!(
        !by_one.top_n.is_empty(),
        "minute 0 is ranked before partition 1 is known"
    );
    assert_eq!(by_batch, by_one);
}
