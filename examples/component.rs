//! The core as a WebAssembly component under `adtally-runtime`: its
//! sandbox limits, a call that runs out of memory reported as such (not as
//! a crash), and the partition recovered in a fresh instance from its last
//! snapshot, as `adtally run` does.
//!
//! `make wasm && cargo run -p adtally-examples --example component`

use adtally_core::{Offset, Partition, RawRecord};
use adtally_runtime::{Failure, Limits, Runtime};
use std::path::Path;
use std::time::Duration;

fn main() -> anyhow::Result<()> {
    let wasm = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wasm/adtally_component.wasm");
    // A small memory, so that a large batch of distinct clicks outgrows it.
    let rt = Runtime::new(Limits {
        max_memory_bytes: 4 << 20,
        call_deadline: Duration::from_secs(5),
    })?;
    let module = rt.load_file(&wasm)?;
    println!("module {} sha256 {}", module.info().name, module.sha256());

    let lines: Vec<String> = (0..200_000)
        .map(|i| format!("ad{i}, {}, u{i}, 10.0.0.1, USA", 1_000 + i))
        .collect();
    let record = |i: usize| RawRecord {
        partition: Partition(0),
        offset: Offset(i as i64),
        payload: lines[i].as_bytes(),
        record_time_ms: None,
    };
    let mut agg = module.create("{}")?;
    let small: Vec<RawRecord> = (0..1_000).map(record).collect();
    let out = agg.push(&small, 0)?;
    println!(
        "1,000 clicks pushed: {} rollup rows so far",
        out.rollups.len()
    );
    let snapshot = agg.snapshot()?;

    // The rest at once outgrows 4 MiB: an error that says what happened.
    let rest: Vec<RawRecord> = (1_000..lines.len()).map(record).collect();
    let err = agg
        .push(&rest, 0)
        .expect_err("the instance outgrows its memory");
    let failure = Failure::of(&err);
    println!("pushing 199,000 more: {failure:?}");
    anyhow::ensure!(
        failure == Failure::OutOfMemory,
        "expected OutOfMemory: {err:#}"
    );

    // The failed instance is dropped; a fresh one restores the snapshot
    // and takes the records in smaller batches.
    drop(agg);
    let mut agg = module.restore(&snapshot)?;
    let mut pushed = 0;
    for chunk in rest.chunks(500).take(4) {
        agg.push(chunk, 0)?;
        pushed += chunk.len();
    }
    let usage = agg.state_usage()?;
    println!(
        "restored, {pushed} more pushed: {} keys remembered, instance memory {} KiB",
        usage.keys,
        usage.memory_bytes >> 10
    );
    anyhow::ensure!(usage.keys == 3_000);
    Ok(())
}
