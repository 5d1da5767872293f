//! `adtally gen`: a realistic click stream and its expected totals.
//!
//! The expected totals are computed from how the stream was built, not by
//! the core: a duplicate repeats one of the last few seconds' clicks exactly
//! (its window still open), a late click is
//! placed far behind the watermark (30 minutes), disorder stays within the
//! out-of-orderness, and invalid records break one field. So every valid,
//! non-duplicate, non-late click counts once in its minute.
//!
//! In Yahoo Streaming Benchmark mode (`ysb`) the records are that
//! benchmark's JSON events (UUID-like ids, `event_type` view, click or
//! purchase drawn uniformly, `event_time`, `ip_address`, no country and no
//! event id) and only the views count, as in the benchmark's own query.

use adtally_core::{EventTime, WindowSize};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Zipf};
use std::collections::BTreeMap;

/// The expected totals are per minute: the core's default window.
const MINUTE: WindowSize = WindowSize::MINUTE;

/// What to generate.
#[derive(Clone, Copy, Debug)]
pub struct GenConfig {
    /// Records to generate (clicks, duplicates, late and invalid).
    pub records: usize,
    /// Distinct ads (Zipf popularity, s = 1).
    pub ads: u64,
    /// Partitions; records are keyed by ad.
    pub partitions: u32,
    /// Event time of the first click (ms).
    pub start_ms: i64,
    /// Clicks per second of event time.
    pub rate_per_s: u32,
    /// Fractions of duplicates, late clicks and invalid records.
    pub duplicates: f64,
    /// See above.
    pub late: f64,
    /// See above.
    pub invalid: f64,
    /// Largest backwards jitter (must stay below the out-of-orderness).
    pub disorder_ms: i64,
    /// Fraction of clicks whose clock runs 30 minutes ahead of the
    /// stream's (counted in their own minute, moving no watermark).
    pub ahead: f64,
    /// Heartbeats at the far future (2199), one per partition every this
    /// many records; none if 0. Through Kafka they are refused against
    /// their record time (`timestamp_in_future`); without one, side-lined
    /// as ahead of their partition.
    pub far_heartbeat_every: usize,
    /// Seed.
    pub seed: u64,
    /// Yahoo Streaming Benchmark events instead of log lines.
    pub ysb: bool,
}

/// A user's country: five of them, so that filters by country select.
fn country_of(user: u32) -> &'static str {
    ["USA", "DEU", "FRA", "BRA", "JPN"][user as usize % 5]
}

/// The generator's command-line flags (`adtally gen`, the demo).
#[derive(clap::Args, Clone, Debug)]
pub struct StreamArgs {
    /// Records to generate.
    #[arg(long, default_value_t = 200_000)]
    pub records: usize,
    /// Distinct ads.
    #[arg(long, default_value_t = 20_000)]
    pub ads: u64,
    /// Partitions (records are keyed by ad).
    #[arg(long, default_value_t = 4)]
    pub partitions: u32,
    /// Random seed.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Clicks per second of event time.
    #[arg(long, default_value_t = 50)]
    pub rate: u32,
    /// Fraction of records that repeat an earlier click exactly.
    #[arg(long, default_value_t = 0.01)]
    pub duplicates: f64,
    /// Fraction of clicks placed 30 minutes behind (late), once the stream
    /// is 40 minutes long.
    #[arg(long, default_value_t = 0.005)]
    pub late: f64,
    /// Fraction of invalid records (an unknown country).
    #[arg(long, default_value_t = 0.005)]
    pub invalid: f64,
    /// Largest backwards jitter of a click's time, in ms (disorder); at most
    /// the core's default out-of-orderness for the totals to hold.
    #[arg(long, default_value_t = 5_000)]
    pub disorder_ms: i64,
    /// Yahoo Streaming Benchmark events (its JSON schema; its `view` events
    /// are the clicks) instead of log lines.
    #[arg(long)]
    pub ysb: bool,
    /// Fraction of clicks whose clock is 30 minutes ahead (counted in their
    /// own minute; they must not make later clicks late).
    #[arg(long, default_value_t = 0.0)]
    pub ahead: f64,
    /// Every this many records, a heartbeat in 2199 on every partition
    /// (side-lined as ahead of its partition); 0: none.
    #[arg(long, default_value_t = 0)]
    pub far_heartbeat_every: usize,
}

impl StreamArgs {
    /// The generator's configuration, or what is wrong with the flags.
    pub fn config(&self) -> anyhow::Result<GenConfig> {
        use anyhow::bail;
        // The expected totals assume the core's default configuration:
        // disorder within its out-of-orderness is never late.
        let out_of_orderness_ms = adtally_core::Config::default().out_of_orderness_ms;
        if self.partitions == 0 || self.ads == 0 || self.rate == 0 {
            bail!("--partitions, --ads and --rate must be at least 1");
        }
        for (name, f) in [
            ("--duplicates", self.duplicates),
            ("--late", self.late),
            ("--invalid", self.invalid),
            ("--ahead", self.ahead),
        ] {
            if !(0.0..=1.0).contains(&f) {
                bail!("{name} {f}: a fraction between 0 and 1");
            }
        }
        if self.duplicates + self.late + self.invalid > 1.0 {
            bail!("--duplicates + --late + --invalid must not exceed 1");
        }
        if !(0..=out_of_orderness_ms).contains(&self.disorder_ms) {
            bail!(
                "--disorder-ms {}: between 0 and the core's out-of-orderness ({out_of_orderness_ms}), or the expected totals would not hold",
                self.disorder_ms
            );
        }
        Ok(GenConfig {
            records: self.records,
            ads: self.ads,
            partitions: self.partitions,
            seed: self.seed,
            rate_per_s: self.rate,
            duplicates: self.duplicates,
            late: self.late,
            invalid: self.invalid,
            disorder_ms: self.disorder_ms,
            ysb: self.ysb,
            ahead: self.ahead,
            far_heartbeat_every: self.far_heartbeat_every,
            ..GenConfig::default()
        })
    }
}

impl Default for GenConfig {
    fn default() -> GenConfig {
        GenConfig {
            records: 200_000,
            ads: 20_000,
            partitions: 4,
            start_ms: 1_767_225_600_000, // 2026-01-01T00:00:00Z
            rate_per_s: 50,
            duplicates: 0.01,
            late: 0.005,
            invalid: 0.005,
            disorder_ms: 5_000,
            ahead: 0.0,
            far_heartbeat_every: 0,
            seed: 7,
            ysb: false,
        }
    }
}

/// One record of the stream.
#[derive(Clone, Debug)]
pub struct GenRecord {
    /// Partition (by ad).
    pub partition: u32,
    /// The payload: a log line.
    pub payload: String,
}

/// The stream, and what an exact aggregation of it must produce.
#[derive(Debug, Default)]
pub struct Generated {
    /// Records in arrival order, ending with a heartbeat per partition.
    pub records: Vec<GenRecord>,
    /// (minute start, ad) -> clicks, over every partition, filter 0.
    pub expected: BTreeMap<(i64, String), u64>,
    /// (minute start, ad) -> distinct valid clicks, the late ones included:
    /// what the batch truth (the ClickHouse-native path, which has no
    /// watermark) must hold.
    pub batch_truth: BTreeMap<(i64, String), u64>,
    /// (minute start, ad) -> valid click records, duplicates included:
    /// the rows `raw_events` must hold (one per source position).
    pub raw_records: BTreeMap<(i64, String), u64>,
    /// How many of each kind were generated.
    pub duplicates: u64,
    /// See above.
    pub late: u64,
    /// See above.
    pub invalid: u64,
    /// YSB events other than views (not counted).
    pub not_views: u64,
    /// Clicks 30 minutes ahead of the stream (counted).
    pub ahead: u64,
    /// Heartbeats at the far future (side-lined).
    pub far_heartbeats: u64,
    /// The newest event time in the stream.
    pub max_time_ms: i64,
}

impl Generated {
    /// Writes the expected totals to `path`: one `minute start ms, ad,
    /// clicks` line per (minute, ad), tab-separated, in order.
    pub fn write_expected(&self, path: &std::path::Path) -> std::io::Result<()> {
        write_totals(&self.expected, path)
    }

    /// Writes the batch truth's expected totals to `path`: one `minute
    /// start ms, ad, distinct clicks, raw records` line per (minute, ad)
    /// ([`Generated::batch_truth`], [`Generated::raw_records`]),
    /// tab-separated, in order.
    pub fn write_batch_truth(&self, path: &std::path::Path) -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        for ((w, ad), c) in &self.batch_truth {
            let records = self
                .raw_records
                .get(&(*w, ad.clone()))
                .copied()
                .unwrap_or(0);
            writeln!(f, "{w}\t{ad}\t{c}\t{records}")?;
        }
        f.flush()
    }
}

fn write_totals(
    totals: &BTreeMap<(i64, String), u64>,
    path: &std::path::Path,
) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for ((w, ad), c) in totals {
        writeln!(f, "{w}\t{ad}\t{c}")?;
    }
    f.flush()
}

/// Generates a stream.
pub fn generate(c: GenConfig) -> Generated {
    let mut rng = StdRng::seed_from_u64(c.seed);
    let zipf = Zipf::new(c.ads as f64, 1.0).expect("ads >= 1");
    let mut g = Generated::default();
    let mut counted: Vec<(u32, String, (i64, String))> = Vec::new(); // for duplicates
    // YSB events carry no event id: a view is the same click as another of
    // the same (ad, user, ip, second), so no two generated views share one.
    let mut ysb_keys: std::collections::HashSet<(u64, u32, i64)> = Default::default();
    let ad_name = |ad: u64| {
        if c.ysb {
            format!("{ad:08x}-7c1e-4d2a-9b3f-adadadadadad")
        } else {
            format!("ad{ad:06}")
        }
    };
    let ip_of = |user: u32| format!("10.{}.{}.{}", user >> 16 & 255, user >> 8 & 255, user & 255);
    let ysb_event = |ad: u64, user: u32, t: i64, event_type: &str, ip: &str| {
        format!(
            r#"{{"user_id":"{user:08x}-0000-4000-8000-000000000000","page_id":"{:08x}-0000-4000-8000-000000000000","ad_id":"{}","ad_type":"banner78","event_type":"{event_type}","event_time":"{t}","ip_address":"{ip}"}}"#,
            user ^ 0x5a5a,
            ad_name(ad)
        )
    };
    for i in 0..c.records {
        let now = c.start_ms + i as i64 * 1000 / c.rate_per_s.max(1) as i64;
        if c.far_heartbeat_every > 0 && i > 0 && i % c.far_heartbeat_every == 0 {
            for partition in 0..c.partitions {
                g.records.push(GenRecord {
                    partition,
                    payload: format!("{{\"heartbeat_ms\": {FAR_FUTURE_MS}}}"),
                });
                g.far_heartbeats += 1;
            }
        }
        let roll: f64 = rng.random();
        // Drawn for every record, so other fractions keep their streams.
        let ahead = rng.random::<f64>() < c.ahead;
        if roll < c.duplicates && !counted.is_empty() {
            // A repeat of one of the last few seconds' clicks: its window
            // is still open, so the core finds it a duplicate (the repeat
            // of an older click can be late instead).
            let recent = counted
                .len()
                .saturating_sub(c.rate_per_s.max(1) as usize * 5);
            let (p, line, cell) = counted[rng.random_range(recent..counted.len())].clone();
            *g.raw_records.entry(cell).or_default() += 1;
            g.records.push(GenRecord {
                partition: p,
                payload: line,
            });
            g.duplicates += 1;
            continue;
        }
        let ad = zipf.sample(&mut rng) as u64;
        let partition = (ad % c.partitions as u64) as u32;
        let mut user: u32 = rng.random_range(0..1_000_000);
        if roll < c.duplicates + c.invalid {
            let payload = if c.ysb {
                ysb_event(ad, user, now, "view", "10.0.0")
            } else {
                format!("ad{ad:06}, {now}, user{user}, {}, XXX", ip_of(user))
            };
            g.records.push(GenRecord { partition, payload });
            g.invalid += 1;
            continue;
        }
        let late = roll < c.duplicates + c.invalid + c.late && now - c.start_ms > 40 * 60_000;
        let ahead = ahead && !late;
        let t = if late {
            now - 30 * 60_000
        } else if ahead {
            now + 30 * 60_000
        } else {
            now - rng.random_range(0..=c.disorder_ms)
        };
        if c.ysb {
            let event_type = ["view", "click", "purchase"][rng.random_range(0..3usize)];
            if event_type != "view" {
                let payload = ysb_event(ad, user, t, event_type, &ip_of(user));
                g.records.push(GenRecord { partition, payload });
                g.not_views += 1;
                continue;
            }
            while !ysb_keys.insert((ad, user, t.div_euclid(1000))) {
                user = (user + 1) % 1_000_000;
            }
        }
        let ip = ip_of(user);
        let line = if c.ysb {
            ysb_event(ad, user, t, "view", &ip)
        } else {
            format!(
                "ad{ad:06}, {t}, user{user}, {ip}, {}, e{i}",
                country_of(user)
            )
        };
        g.ahead += ahead as u64;
        let cell = (MINUTE.window_of(EventTime(t)).0, ad_name(ad));
        if late {
            g.late += 1;
        } else {
            *g.expected.entry(cell.clone()).or_default() += 1;
            counted.push((partition, line.clone(), cell.clone()));
            g.max_time_ms = g.max_time_ms.max(t);
        }
        *g.raw_records.entry(cell.clone()).or_default() += 1;
        *g.batch_truth.entry(cell).or_default() += 1;
        g.records.push(GenRecord {
            partition,
            payload: line,
        });
    }
    // The producers' last word on every partition: nothing older than this
    // is coming, so every window closes. One heartbeat moves no watermark:
    // a quorum of distinct times does.
    let end = g.max_time_ms + 2 * 60_000;
    let quorum = adtally_core::Config::default().watermark_quorum as i64;
    for partition in 0..c.partitions {
        for i in 0..quorum {
            g.records.push(GenRecord {
                partition,
                payload: format!("{{\"heartbeat_ms\": {}}}", end + i),
            });
        }
    }
    g
}

/// The last millisecond before 2200, the latest time a record may carry.
pub const FAR_FUTURE_MS: i64 = 7_258_118_399_999;
