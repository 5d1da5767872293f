//! Core throughput: the native engine vs the same engine as a component in
//! wasmtime, on one stream, in one run; plus dedup memory per key.
//!
//! `cargo bench -p adtally-benches --bench core` (needs `make wasm` first).
//! Prints events/s for each, their time ratio, and bytes per remembered key.

use adtally_benches::{Shape, batches, stream};
use adtally_core::Click;
use adtally_core::columns::ClickColumns;
use adtally_core::{Config, Engine, Offset, Outputs, Partition, RawRecord};
use adtally_runtime::{Aggregator, ClickBatch, Limits, Runtime};
use std::time::{Duration, Instant};

// The allocator the adtally host binary uses.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Runs per figure (the median is reported); `ADTALLY_BENCH_RUNS` changes
/// it, e.g. to 1 for an instruction count under callgrind.
fn runs() -> usize {
    std::env::var("ADTALLY_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|&r| r > 0)
        .unwrap_or(5)
}
const BATCH: usize = 1024;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// A click in the log line format.
fn line(c: &Click) -> Vec<u8> {
    let mut s = format!(
        "{}, {}, {}, {}, {}",
        c.ad_id, c.timestamp.0, c.user_id, c.ip, c.country
    );
    if let Some(e) = &c.event_id {
        s.push_str(", ");
        s.push_str(e.as_str());
    }
    s.into_bytes()
}

/// Every batch through `agg` from offset 0 on: (rollup rows, duplicates).
fn push_all(
    agg: &mut Aggregator<'_>,
    packed: &[(u32, ClickBatch)],
) -> anyhow::Result<(usize, u64)> {
    let mut offsets = [0i64; 64];
    let (mut rollups, mut dups) = (0usize, 0u64);
    for (p, clicks) in packed {
        let out = agg.push_click_batch(Partition(*p), Offset(offsets[*p as usize]), clicks, 0)?;
        offsets[*p as usize] += clicks.len() as i64;
        rollups += out.rollups.len();
        dups += out.duplicates;
    }
    Ok((rollups, dups))
}

/// A batch of log lines of partition `p` as raw records, at the partition's
/// next offsets.
fn raw_batch<'a>(p: u32, lines: &'a [Vec<u8>], offsets: &mut [i64; 64]) -> Vec<RawRecord<'a>> {
    lines
        .iter()
        .map(|r| {
            let offset = Offset(offsets[p as usize]);
            offsets[p as usize] += 1;
            RawRecord {
                partition: Partition(p),
                offset,
                payload: r,
                record_time_ms: None,
            }
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let runs = runs();
    let shape = Shape::default();
    let events = stream(shape, 42);
    let batches = batches(&events, BATCH);
    println!(
        "workload: {} events, Zipf over {} ads, {:.0}% duplicates, {:.0}% out of order, {} partitions, batches of <= {BATCH}",
        shape.events,
        shape.ads,
        shape.duplicates * 100.0,
        shape.out_of_order * 100.0,
        shape.partitions
    );

    let component_only = std::env::var_os("ADTALLY_BENCH_COMPONENT_ONLY").is_some();
    // Both builds get each batch's parsed clicks in the same columns (the
    // WIT `click-batch`), packed before the clock starts, and check them
    // out of the columns as part of the timed work.
    let columns: Vec<(u32, ClickColumns)> = batches
        .iter()
        .map(|(p, clicks)| {
            let mut c = ClickColumns::default();
            for click in clicks {
                c.push(click.as_click_ref())?;
            }
            Ok((*p, c))
        })
        .collect::<anyhow::Result<_>>()?;
    let native_only = std::env::var_os("ADTALLY_BENCH_NATIVE_ONLY").is_some();
    // One native run: its time, and (rollup rows, duplicates).
    let mut bytes_per_key = 0.0;
    let mut keys = 0;
    let mut native_run = || -> anyhow::Result<(Duration, (usize, u64))> {
        let mut engine = Engine::new(Config::default())?;
        let mut out = Outputs::default();
        let mut offsets = [0i64; 64];
        let (mut rollups, mut dups) = (0usize, 0u64);
        let start = Instant::now();
        for (p, cols) in &columns {
            let clicks = cols.as_ref().clicks()?;
            let first = Offset(offsets[*p as usize]);
            engine.push_click_refs(Partition(*p), first, &clicks, 0, &mut out);
            offsets[*p as usize] += clicks.len() as i64;
            rollups += out.rollups.len();
            dups += out.duplicates;
            out.clear();
        }
        let elapsed = start.elapsed();
        let u = engine.state_usage();
        let (k, b) = (u.keys, u.key_bytes);
        keys = k;
        bytes_per_key = b as f64 / k as f64;
        Ok((elapsed, (rollups, dups)))
    };
    if native_only {
        let times = (0..runs)
            .map(|_| native_run().map(|(t, _)| t))
            .collect::<anyhow::Result<Vec<_>>>()?;
        println!(
            "native core: {:.0} events/s",
            shape.events as f64 / median(times).as_secs_f64()
        );
        return Ok(());
    }

    // Component: the same batches through wasmtime (the canonical ABI copies them in).
    let rt = Runtime::new(Limits::default())?;
    let path = std::env::var("ADTALLY_COMPONENT").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/wasm/adtally_component.wasm"
        )
        .into()
    });
    let module = rt.load_file(path.as_ref())?;
    // The same columns in the runtime's wrapper.
    let packed: Vec<(u32, ClickBatch)> = batches
        .iter()
        .map(|(p, clicks)| Ok((*p, ClickBatch::new(clicks)?)))
        .collect::<anyhow::Result<_>>()?;
    // Cold: a fresh instance per run, whose memory pages fault in as it
    // grows. Warm: one instance that starts over after each run, as a
    // long-lived host instance (and the native runs' reused heap) does.
    let mut warm = module.create("{}")?;
    // An untimed first run grows the warm instance's memory.
    push_all(&mut warm, &packed)?;
    // Rounds of native, warm, cold back to back: the machine's speed drifts
    // over seconds, so each round's ratios compare runs under the same
    // conditions, and their median is the figure. (With
    // `ADTALLY_BENCH_COMPONENT_ONLY` the native build runs once, before,
    // only for its outputs, and no ratio is measured.)
    let mut native_counts = (0usize, 0u64);
    let mut wasm_counts = (0usize, 0u64);
    let (mut native_times, mut warm_times, mut cold_times) = (Vec::new(), Vec::new(), Vec::new());
    let (mut warm_ratios, mut cold_ratios) = (Vec::new(), Vec::new());
    if component_only {
        native_counts = native_run()?.1;
    }
    for _ in 0..runs {
        let native = if component_only {
            None
        } else {
            let (t, counts) = native_run()?;
            native_counts = counts;
            native_times.push(t);
            Some(t)
        };
        warm.start_over("{}")?;
        let start = Instant::now();
        wasm_counts = push_all(&mut warm, &packed)?;
        let warm_time = start.elapsed();
        let mut cold = module.create("{}")?;
        let start = Instant::now();
        let cold_counts = push_all(&mut cold, &packed)?;
        let cold_time = start.elapsed();
        assert_eq!(wasm_counts, cold_counts, "warm and cold instances agree");
        warm_times.push(warm_time);
        cold_times.push(cold_time);
        if let Some(n) = native {
            warm_ratios.push(warm_time.as_secs_f64() / n.as_secs_f64());
            cold_ratios.push(cold_time.as_secs_f64() / n.as_secs_f64());
        }
    }
    assert_eq!(
        native_counts, wasm_counts,
        "both builds must compute the same outputs"
    );
    let median_ratio = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let (warm_ratio, cold_ratio) = (median_ratio(warm_ratios), median_ratio(cold_ratios));

    if std::env::var_os("ADTALLY_BENCH_CLICKS_ONLY").is_some() {
        let (w, ww) = (median(cold_times), median(warm_times));
        println!(
            "component: {:.3} s warm, {:.3} s cold; / native time ratio: {warm_ratio:.2}x warm, {cold_ratio:.2}x cold",
            ww.as_secs_f64(),
            w.as_secs_f64(),
        );
        return Ok(());
    }

    // The production path: raw records (log lines), parsed inside the core.
    let lines: Vec<(u32, Vec<Vec<u8>>)> = batches
        .iter()
        .map(|(p, clicks)| (*p, clicks.iter().map(line).collect()))
        .collect();
    let mut raw_native = Vec::new();
    let mut raw_wasm = Vec::new();
    let mut raw_ratios = Vec::new();
    for _ in 0..runs {
        let mut engine = Engine::new(Config::default())?;
        let mut out = Outputs::default();
        let mut offsets = [0i64; 64];
        let start = Instant::now();
        for (p, recs) in &lines {
            let batch = raw_batch(*p, recs, &mut offsets);
            engine.push_records(&batch, 0, &mut out);
            out.clear();
        }
        let native = start.elapsed();
        raw_native.push(native);
        let mut agg = module.create("{}")?;
        let mut offsets = [0i64; 64];
        let start = Instant::now();
        for (p, recs) in &lines {
            let batch = raw_batch(*p, recs, &mut offsets);
            agg.push(&batch, 0)?;
        }
        let wasm = start.elapsed();
        raw_wasm.push(wasm);
        raw_ratios.push(wasm.as_secs_f64() / native.as_secs_f64());
    }

    let (n, w, ww) = (median(native_times), median(cold_times), median(warm_times));
    let rate = |d: Duration| shape.events as f64 / d.as_secs_f64();
    println!(
        "native core      : {:>12.0} events/s  (median of {runs}: {:.3} s)",
        rate(n),
        n.as_secs_f64()
    );
    println!(
        "component, warm  : {:>12.0} events/s  (median of {runs}: {:.3} s; one instance, started over)",
        rate(ww),
        ww.as_secs_f64()
    );
    println!(
        "component, cold  : {:>12.0} events/s  (median of {runs}: {:.3} s; a fresh instance per run)",
        rate(w),
        w.as_secs_f64()
    );
    println!(
        "component / native time ratio: {warm_ratio:.2}x warm, {cold_ratio:.2}x cold  (median of {runs} rounds' ratios)"
    );
    let (rn, rw) = (median(raw_native), median(raw_wasm));
    println!(
        "raw lines, native: {:>12.0} events/s  (parse + validate + aggregate)",
        rate(rn)
    );
    println!("raw lines, wasm  : {:>12.0} events/s", rate(rw));
    println!(
        "raw lines component / native time ratio: {:.2}x  (median of {runs} rounds' ratios)",
        median_ratio(raw_ratios)
    );
    println!("dedup: {keys} keys remembered, {bytes_per_key:.1} bytes per key");
    println!(
        "outputs: {} rollup rows, {} duplicates dropped (same in both builds)",
        native_counts.0, native_counts.1
    );
    Ok(())
}
