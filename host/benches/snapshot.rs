//! Snapshot cost: bytes written per second and restore time, for a
//! partition of 1 and 3 million remembered keys, under the fixed-interval
//! policy (every 10 s, whatever the size: `--snapshot-bytes-per-record 0`)
//! and the default one (at most 64 bytes of snapshot per record), in one
//! run.
//!
//! `cargo bench -p adtally-host --bench snapshot` (needs `make wasm`).
//!
//! A partition at steady state: clicks at `keys / 600` per second of event
//! time (so the 10-minute dedup horizon holds `keys` keys), consumed as
//! they happen (processing time = event time), 5,000 records a batch,
//! through the core component in wasmtime, as `adtally run` does. Each
//! policy decides after each batch, as in `source`; the figures cover the
//! second and third horizons (the first fills the state). Restore time is what a
//! crash at the worst moment costs: restoring the last snapshot, then
//! replaying the most records any snapshot was behind, both measured.

use adtally_core::{Offset, Partition};
use adtally_host::snapshot_policy::SnapshotPolicy;
use adtally_runtime::{Limits, Module, RecordBatch, Runtime};
use std::path::Path;
use std::time::{Duration, Instant};

const HORIZON_S: u64 = 600;
const BATCH: u64 = 5_000;
/// Event time of the first click.
const START_MS: i64 = 1_700_000_000_000;

/// Record `i` of the stream of `rate` clicks/s: a distinct user, one of
/// 100,000 ads.
fn record(i: u64, rate: u64) -> (Vec<u8>, i64) {
    let t = START_MS + (i * 1000 / rate) as i64;
    let line = format!("ad{}, {t}, u{i}, 10.1.2.3, USA", (i * 7919) % 100_000);
    (line.into_bytes(), t)
}

fn batch(from: u64, to: u64, rate: u64) -> anyhow::Result<RecordBatch> {
    let mut b = RecordBatch::with_capacity((to - from) as usize, 48 * (to - from) as usize);
    for i in from..to {
        let (payload, t) = record(i, rate);
        b.push(Partition(0), Offset(i as i64), &payload, Some(t))?;
    }
    Ok(b)
}

struct Run {
    /// Snapshot bytes per second of event (= processing) time.
    bytes_per_s: f64,
    snapshots: u64,
    last_size: u64,
    restore: Duration,
    /// The most records a snapshot was behind, and the time to replay them.
    gap: u64,
    replay: Duration,
}

fn run(module: &Module, keys: u64, policy: SnapshotPolicy) -> anyhow::Result<Run> {
    let rate = keys / HORIZON_S;
    let total = 3 * keys;
    let mut agg = module.create("{}")?;
    let (mut last_at, mut last_offset, mut last_bytes) = (0i64, 0u64, 0u64);
    let (mut written, mut snapshots, mut gap) = (0u64, 0u64, 0u64);
    let mut last_state = Vec::new();
    let mut at = 0;
    while at < total {
        let end = (at + BATCH).min(total);
        let b = batch(at, end, rate)?;
        let now = record(end - 1, rate).1;
        agg.push_batch(&b, now)?;
        at = end;
        let since = Duration::from_millis((now - last_at).max(0) as u64);
        if policy.due(since, at - last_offset, last_bytes) {
            let state = agg.snapshot()?;
            if at > keys {
                written += state.len() as u64;
                snapshots += 1;
                gap = gap.max(at - last_offset);
            }
            (last_at, last_offset, last_bytes) = (now, at, state.len() as u64);
            last_state = state;
        }
    }
    let t = Instant::now();
    let mut restored = module.restore(&last_state)?;
    let restore = t.elapsed();
    // Replaying the records after the last snapshot, as many as the
    // largest gap (the stream goes on past its end for this).
    let t = Instant::now();
    let mut from = last_offset;
    while from < last_offset + gap {
        let end = (from + BATCH).min(last_offset + gap);
        let b = batch(from, end, rate)?;
        restored.push_batch(&b, record(end - 1, rate).1)?;
        from = end;
    }
    let replay = t.elapsed();
    Ok(Run {
        bytes_per_s: written as f64 / (2 * HORIZON_S) as f64,
        snapshots,
        last_size: last_bytes,
        restore,
        gap,
        replay,
    })
}

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let rt = Runtime::new(Limits::default())?;
    let module = rt.load_file(&root.join("target/wasm/adtally_component.wasm"))?;
    let fixed = SnapshotPolicy {
        bytes_per_record: 0,
        ..SnapshotPolicy::DEFAULT
    };
    println!(
        "| keys | input records/s | policy | snapshots in 20 min | snapshot size | snapshot bytes/s | bytes/record | restore | worst replay (records) | restore + replay |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for keys in [1_000_000u64, 3_000_000] {
        let rate = keys / HORIZON_S;
        for (name, policy) in [
            ("every 10 s (before)", fixed),
            ("64 B/record (after)", SnapshotPolicy::DEFAULT),
        ] {
            let r = run(&module, keys, policy)?;
            println!(
                "| {keys} | {rate} | {name} | {} | {:.1} MB | {:.2} MB/s | {:.0} | {:.0} ms | {} | {:.0} ms |",
                r.snapshots,
                r.last_size as f64 / 1e6,
                r.bytes_per_s / 1e6,
                r.bytes_per_s / rate as f64,
                r.restore.as_secs_f64() * 1e3,
                r.gap,
                (r.restore + r.replay).as_secs_f64() * 1e3,
            );
        }
    }
    Ok(())
}
