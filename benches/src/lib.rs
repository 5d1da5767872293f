//! Workloads of realistic shape for adtally's benchmarks.
//!
//! Owns generating click streams; measures nothing itself.

use adtally_core::{AdId, Click, Country, EventId, EventTime, UserId};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Zipf};

/// The shape of a generated stream.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Events to generate.
    pub events: usize,
    /// Distinct ads; popularity follows Zipf(s = 1.0).
    pub ads: u64,
    /// Event time the stream spans.
    pub span_ms: i64,
    /// Fraction of events that repeat an earlier one.
    pub duplicates: f64,
    /// Fraction of events shifted back by up to 10 s.
    pub out_of_order: f64,
    /// Partitions, keyed by ad.
    pub partitions: u32,
}

impl Default for Shape {
    fn default() -> Shape {
        Shape {
            events: 1_000_000,
            ads: 2_000_000,
            span_ms: 5 * 60_000,
            duplicates: 0.01,
            out_of_order: 0.01,
            partitions: 4,
        }
    }
}

const COUNTRIES: [&str; 6] = ["USA", "GBR", "DEU", "FRA", "IND", "BRA"];

/// A deterministic stream of (partition, click), in arrival order.
pub fn stream(shape: Shape, seed: u64) -> Vec<(u32, Click)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let zipf = Zipf::new(shape.ads as f64, 1.0).expect("valid zipf");
    let countries: Vec<Country> = COUNTRIES
        .iter()
        .map(|c| Country::new(c).expect("iso"))
        .collect();
    let mut out: Vec<(u32, Click)> = Vec::with_capacity(shape.events);
    for i in 0..shape.events {
        if i > 100 && rng.random_bool(shape.duplicates) {
            let back = rng.random_range(1..100);
            let dup = out[i - back].clone();
            out.push(dup);
            continue;
        }
        let ad = zipf.sample(&mut rng) as u64;
        let mut t = i as i64 * shape.span_ms / shape.events as i64;
        if rng.random_bool(shape.out_of_order) {
            t -= rng.random_range(1..10_000);
        }
        let user = rng.random_range(0..10_000_000u32);
        let click = Click {
            ad_id: AdId::new(&format!("ad{ad:07}")).expect("valid"),
            timestamp: EventTime(1_700_000_000_000 + t),
            user_id: UserId::new(&format!("user{user}")).expect("valid"),
            ip: adtally_core::IpAddr::V4((user.wrapping_mul(2_654_435_761)).into()),
            country: countries[(user % countries.len() as u32) as usize],
            event_id: if i % 2 == 0 {
                Some(EventId::new(&format!("e{i}")).expect("valid"))
            } else {
                None
            },
        };
        let partition = (ad % shape.partitions as u64) as u32;
        out.push((partition, click));
    }
    out
}

/// What a consumer hands the engine: each partition's events in stream
/// order, in batches of at most `size`, the partitions taking turns (as a
/// Kafka fetch returns a run of records per partition).
pub fn batches(stream: &[(u32, Click)], size: usize) -> Vec<(u32, Vec<Click>)> {
    let mut per_partition: std::collections::BTreeMap<u32, Vec<Click>> = Default::default();
    for (p, c) in stream {
        per_partition.entry(*p).or_default().push(c.clone());
    }
    let mut chunks: Vec<std::vec::IntoIter<Vec<Click>>> = per_partition
        .values()
        .map(|v| {
            v.chunks(size)
                .map(<[Click]>::to_vec)
                .collect::<Vec<_>>()
                .into_iter()
        })
        .collect();
    let ids: Vec<u32> = per_partition.keys().copied().collect();
    let mut out = Vec::new();
    loop {
        let before = out.len();
        for (p, it) in ids.iter().zip(chunks.iter_mut()) {
            if let Some(batch) = it.next() {
                out.push((*p, batch));
            }
        }
        if out.len() == before {
            return out;
        }
    }
}
