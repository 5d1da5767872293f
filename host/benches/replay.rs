//! Replay rate, and what a replay costs live consumption, in one run.
//!
//! `cargo bench -p adtally-host --bench replay` (needs `make setup wasm`).
//! A generated stream (`ADTALLY_BENCH_RECORDS`, default 500,000) is
//! produced to three topics: `clicks`, which `adtally run` consumes with the
//! raw path on (filling `raw_events`, untimed), and `live-a` / `live-b`,
//! which it consumes without. Measured: a replay of all of `clicks`' raw
//! events alone (events/s), `live-a` consumed alone, and `live-b` consumed
//! while a second replay runs (both rates), on the same 2 cores.

use adtally_broker::LocalBroker;
use adtally_clickhouse_embedded::EmbeddedClickHouse;
use adtally_core::WindowStart;
use adtally_host::{generator, pipeline, producer, reconcile, replay, sink, source};
use std::path::Path;

fn records() -> usize {
    std::env::var("ADTALLY_BENCH_RECORDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(500_000)
}

fn consume(brokers: &str, topic: &str, raw_events: source::RawEvents) -> source::ConsumeOptions {
    source::ConsumeOptions {
        brokers: brokers.into(),
        topic: topic.into(),
        group: format!("bench-{topic}"),
        batch: 50_000,
        exit_when_idle: Some(std::time::Duration::from_secs(3)),
        snapshots: adtally_host::snapshot_policy::SnapshotPolicy::DEFAULT,
        assignment: source::Assignment::Group,
        unrestorable: None,
        kafka: Default::default(),
        raw_events,
    }
}

/// Records/s of a run, from its first record to its last write.
fn rate(stats: &source::ConsumeStats) -> f64 {
    match (stats.first_record_at, stats.last_written_at) {
        (Some(a), Some(b)) => stats.records as f64 / (b - a).as_secs_f64(),
        _ => f64::NAN,
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let tmp = std::env::temp_dir().join(format!("adtally-replay-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let kafka = LocalBroker::start("memory://tansu/", &tmp)?;
    let ch = EmbeddedClickHouse::start(&tmp.join("clickhouse"))?;
    adtally_clickhouse_embedded::install_schema(&ch.url())?;
    let config = generator::GenConfig {
        records: records(),
        ..generator::GenConfig::default()
    };
    let g = generator::generate(config);
    for topic in ["clicks", "live-a", "live-b"] {
        producer::ensure_topic(kafka.addr(), topic, config.partitions).await?;
        let (addr, recs, t) = (
            kafka.addr().to_string(),
            g.records.clone(),
            topic.to_string(),
        );
        tokio::task::spawn_blocking(move || producer::produce(&addr, &t, &recs)).await??;
    }
    let url = ch.url();
    let module_path = root.join("target/wasm/adtally_component.wasm");
    let target = pipeline::Target {
        url: &url,
        db: "adtally",
        module: &module_path,
        config_json: "{}",
        compress: false,
        auth: Default::default(),
        limits: Default::default(),
    };
    let fill = pipeline::run(
        &consume(kafka.addr(), "clicks", source::RawEvents::Host),
        &target,
    )
    .await?;
    println!(
        "{} records in {} partitions; raw events stored by adtally run ({:.0} records/s)",
        fill.stats.records,
        config.partitions,
        rate(&fill.stats)
    );

    let rt = adtally_runtime::Runtime::new(Default::default())?;
    let module = rt.load_file(&module_path)?;
    let sink = sink::Sink::new(
        &url,
        "adtally",
        "clicks",
        module.sha256(),
        false,
        &Default::default(),
    );
    let client = sink.client().clone();
    let (from, to): (i64, i64) = client
        .query(
            "SELECT toUnixTimestamp64Milli(min(window_start)), toUnixTimestamp64Milli(max(window_start)) + 60000 \
             FROM adtally.raw_events",
        )
        .fetch_one()
        .await?;
    let opts = |set: &str| replay::Options {
        topic: "clicks".into(),
        range: reconcile::Range::new(WindowStart(from), WindowStart(to)).expect("a range"),
        set: Some(set.into()),
        switch: false,
        batch: 50_000,
        drop_filters: false,
    };
    let alone = replay::replay(&sink, &module, "{}", &opts("bench-alone")).await?;
    println!(
        "replay alone: {:.0} events/s ({} records, {} cells, {:.2} s, verified: {} unexplained)",
        alone.records as f64 / alone.seconds,
        alone.records,
        alone.cells,
        alone.seconds,
        alone.verified.unexplained
    );

    let live_alone = pipeline::run(
        &consume(kafka.addr(), "live-a", source::RawEvents::Off),
        &target,
    )
    .await?;
    let live_alone = rate(&live_alone.stats);
    println!("adtally run alone: {live_alone:.0} records/s");
    let (live_opts, during_opts) = (
        consume(kafka.addr(), "live-b", source::RawEvents::Off),
        opts("bench-during"),
    );
    let (live, during) = tokio::join!(
        pipeline::run(&live_opts, &target),
        replay::replay(&sink, &module, "{}", &during_opts),
    );
    let (live, during) = (rate(&live?.stats), during?);
    println!(
        "adtally run during a replay: {live:.0} records/s ({:.2} of alone); the replay meanwhile: {:.0} events/s ({:.2} of alone)",
        live / live_alone,
        during.records as f64 / during.seconds,
        (during.records as f64 / during.seconds) / (alone.records as f64 / alone.seconds)
    );
    drop(ch);
    drop(kafka);
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}
