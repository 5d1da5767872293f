//! Consume rate: raw rdkafka vs `adtally run` end to end (core component +
//! ClickHouse writes) on the same topic, in one run.
//!
//! `cargo bench -p adtally-host --bench consume` (needs `make setup wasm`).
//! Both rates are measured from the first record to the last, so the
//! consumer-group join (3-30 s on Tansu) does not count.

use adtally_broker::LocalBroker;
use adtally_clickhouse_embedded::EmbeddedClickHouse;
use adtally_host::{generator, pipeline, producer, source};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use std::path::Path;
use std::time::Instant;

/// Records in the topic; `ADTALLY_BENCH_RECORDS` overrides. Long enough
/// that the last batch's write (which the host's time includes and the
/// raw read has no counterpart of) is a small part of the run.
fn records() -> usize {
    std::env::var("ADTALLY_BENCH_RECORDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000)
}
/// Records per batch; `ADTALLY_BENCH_BATCH` overrides.
fn batch() -> usize {
    std::env::var("ADTALLY_BENCH_BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(50_000)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let tmp = std::env::temp_dir().join(format!("adtally-consume-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let kafka = LocalBroker::start("memory://tansu/", &tmp)?;
    let config = generator::GenConfig {
        records: records(),
        ..generator::GenConfig::default()
    };
    let g = generator::generate(config);
    let n = g.records.len() as u64;
    producer::ensure_topic(kafka.addr(), "clicks", config.partitions).await?;
    let (addr, records) = (kafka.addr().to_string(), g.records.clone());
    tokio::task::spawn_blocking(move || producer::produce(&addr, "clicks", &records)).await??;
    println!(
        "topic `clicks`: {n} records in {} partitions",
        config.partitions
    );

    // ClickHouse runs through both measurements, so that the raw consumer
    // shares the machine with it as the host does.
    let ch = EmbeddedClickHouse::start(&tmp.join("clickhouse"))?;

    // Raw: an rdkafka consumer that only counts, twice (the broker's first
    // read of a topic can be slower); the host is compared with the faster.
    let mut raw_secs = f64::INFINITY;
    for round in 0..2 {
        let raw: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", kafka.addr())
            .set("group.id", format!("raw-{round}"))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()?;
        raw.subscribe(&["clicks"])?;
        let mut count = 0u64;
        let mut first = None;
        while count < n {
            raw.recv().await?;
            first.get_or_insert_with(Instant::now);
            count += 1;
        }
        let secs = first.map(|f| f.elapsed().as_secs_f64()).unwrap_or(f64::NAN);
        println!(
            "raw rdkafka consume : {:>10.0} records/s ({secs:.2} s, run {})",
            n as f64 / secs,
            round + 1
        );
        raw_secs = raw_secs.min(secs);
    }

    // adtally run: the core component in wasmtime and every write to
    // ClickHouse, without and with the raw path (each batch's records into
    // `ingest`, through the views), each on a fresh schema.
    let url = ch.url();
    let module = root.join("target/wasm/adtally_component.wasm");
    for raw_events in [source::RawEvents::Off, source::RawEvents::Host] {
        let client = clickhouse::Client::default().with_url(&url);
        client
            .query("DROP DATABASE IF EXISTS adtally")
            .execute()
            .await?;
        adtally_clickhouse_embedded::install_schema(&url)?;
        let opts = source::ConsumeOptions {
            brokers: kafka.addr().to_string(),
            topic: "clicks".into(),
            group: format!("host-{raw_events:?}"),
            batch: batch(),
            exit_when_idle: Some(std::time::Duration::from_secs(3)),
            snapshots: adtally_host::snapshot_policy::SnapshotPolicy::DEFAULT,
            assignment: source::Assignment::Group,
            unrestorable: None,
            kafka: Default::default(),
            raw_events,
        };
        let target = pipeline::Target {
            url: &url,
            db: "adtally",
            module: &module,
            config_json: "{}",
            compress: std::env::var_os("ADTALLY_BENCH_LZ4").is_some(),
            auth: Default::default(),
            limits: Default::default(),
        };
        let stats = pipeline::run(&opts, &target).await?.stats;
        anyhow::ensure!(
            stats.records == n,
            "the host read {} of {n} records",
            stats.records
        );
        let host_secs = match (stats.first_record_at, stats.last_written_at) {
            (Some(a), Some(b)) => (b - a).as_secs_f64(),
            _ => f64::NAN,
        };
        let (raw_rate, host_rate) = (n as f64 / raw_secs, n as f64 / host_secs);
        println!(
            "adtally run, raw events {raw_events:?}: {host_rate:>10.0} records/s ({host_secs:.2} s, {} rollup rows written, inserts {})",
            stats.rollups,
            if target.compress {
                "LZ4"
            } else {
                "uncompressed (loopback)"
            }
        );
        println!(
            "  host / faster raw read: {:.2} (target >= 0.9 without raw events, >= 0.8 with)",
            host_rate / raw_rate
        );
        // Latency: from the arrival of a batch's first record to the
        // acknowledgement of every row it produced. A window fired by a
        // record is queryable by then, so this bounds what the host adds; a
        // live stream adds the event-time wait itself (window +
        // out-of-orderness).
        let mut lat = stats.batch_latencies.clone();
        lat.sort();
        let pct =
            |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1000.0;
        if !lat.is_empty() {
            println!(
                "  arrival -> queryable: p50 {:.0} ms, p99 {:.0} ms over {} batches",
                pct(0.5),
                pct(0.99),
                lat.len()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}
