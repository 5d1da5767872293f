//! `adtally-demo` (`make demo`): a generated stream with duplicates,
//! disorder, late and invalid records, produced to a local Kafka (Tansu),
//! counted by `adtally run`'s pipeline (the core component in wasmtime) into
//! an embedded ClickHouse, and checked there against the generator's own
//! totals; then the top ads, merged over the partitions, and the
//! reconciliation of the stream's counts with the batch truth.
//!
//! This crate owns only the demo's steps and what it prints; every part it
//! runs is the service's own (`adtally-host`) or test support
//! (`adtally-broker`, `adtally-clickhouse-embedded`).

use adtally_broker::LocalBroker;
use adtally_clickhouse_embedded::{EmbeddedClickHouse, install_schema, python};
use adtally_core::WindowStart;
use adtally_host::connect::KafkaProperties;
use adtally_host::generator::{self, StreamArgs};
use adtally_host::snapshot_policy::SnapshotPolicy;
use adtally_host::{pipeline, producer, reconcile, source};
use anyhow::{Context, Result, bail};
use clap::Parser;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long the pipeline waits for more records before it stops.
const IDLE_EXIT: Duration = Duration::from_secs(5);

#[derive(Parser)]
#[command(
    name = "adtally-demo",
    about = "Run a generated stream through Kafka, the core component and an embedded ClickHouse; check the counts and print the top ads"
)]
struct Args {
    #[command(flatten)]
    stream: StreamArgs,
    /// The core component.
    #[arg(long, default_value = "target/wasm/adtally_component.wasm")]
    module: PathBuf,
    /// Where the demo keeps its broker log and ClickHouse data (emptied first).
    #[arg(long, default_value = ".adtally/demo")]
    data: PathBuf,
}

/// Prints what a step is about to do, and how long it is expected to take.
fn step(what: &str, expect: &str) -> Instant {
    println!("  {what} ({expect}) ...");
    Instant::now()
}

/// Prints that a step is done, and how long it took.
fn done(started: Instant, what: impl std::fmt::Display) {
    println!("    {what} ({:.1} s)", started.elapsed().as_secs_f64());
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    // The pipeline's warnings (a core restored, records skipped) show; its
    // progress is what the steps below print.
    adtally_host::logging::init("warn");
    let config = args.stream.config()?;
    let data = &args.data;
    let _ = std::fs::remove_dir_all(data);
    std::fs::create_dir_all(data)?;
    println!(
        "adtally demo: generator -> Kafka (Tansu) -> adtally run (core component in wasmtime) -> ClickHouse (embedded)"
    );
    let data = data.canonicalize()?;

    let t = step(
        "starting Kafka (Tansu) and ClickHouse (embedded)",
        "about 5 s",
    );
    let kafka = LocalBroker::start("memory://tansu/", &data)?;
    let ch = EmbeddedClickHouse::start(&data.join("clickhouse"))?;
    install_schema(&ch.url())?;
    done(
        t,
        format_args!(
            "Kafka at {}, ClickHouse at {} with adtally's schema",
            kafka.addr(),
            ch.url()
        ),
    );

    let t = step(
        &format!("generating and producing {} records", config.records),
        "about 1 s per 100,000",
    );
    let g = generator::generate(config);
    producer::ensure_topic(kafka.addr(), "clicks", config.partitions).await?;
    let produce = {
        let (addr, records) = (kafka.addr().to_string(), g.records.clone());
        tokio::task::spawn_blocking(move || producer::produce(&addr, "clicks", &records))
    };
    produce.await??;
    done(
        t,
        format_args!(
            "produced {} records ({} duplicates, {} late, {} invalid) to topic `clicks`",
            g.records.len(),
            g.duplicates,
            g.late,
            g.invalid
        ),
    );

    let opts = source::ConsumeOptions {
        brokers: kafka.addr().to_string(),
        topic: "clicks".into(),
        group: "adtally-demo".into(),
        batch: 50_000,
        exit_when_idle: Some(IDLE_EXIT),
        snapshots: SnapshotPolicy::DEFAULT,
        assignment: source::Assignment::Group,
        unrestorable: None,
        kafka: KafkaProperties::default(),
        raw_events: source::RawEvents::Host,
    };
    let url = ch.url();
    let target = pipeline::Target {
        url: &url,
        db: "adtally",
        module: &args.module,
        config_json: "{}",
        // The embedded server is on this machine.
        compress: false,
        auth: Default::default(),
        limits: Default::default(),
    };
    let t = step(
        "consuming the topic into ClickHouse",
        "about 2 s per 100,000 records, then 5 s waiting for more",
    );
    let report = pipeline::run(&opts, &target).await?;
    let (m, stats) = (&report.module, &report.stats);
    println!(
        "    module {} {} (semantics {}), sha256 {}",
        m.name, m.version, m.semantics_version, report.sha256
    );
    done(
        t,
        format_args!(
            "consumed {} records: {} rollup rows, {} duplicates dropped, {} late, {} invalid",
            stats.records, stats.rollups, stats.duplicates, stats.late, stats.invalid
        ),
    );
    let client = clickhouse::Client::default()
        .with_url(&url)
        .with_database("adtally");

    // Exact? Every (minute, ad) in ClickHouse against the generator's own totals.
    let rows = client
        .query("SELECT toUnixTimestamp64Milli(window_start), ad_id, clicks FROM clicks_per_minute WHERE filter_id = 0")
        .fetch_all::<(i64, String, u64)>()
        .await?;
    let got: BTreeMap<(i64, String), u64> = rows.into_iter().map(|(w, a, c)| ((w, a), c)).collect();
    if got == g.expected {
        println!(
            "  exact: all {} (minute, ad) counts in ClickHouse equal the generator's totals",
            got.len()
        );
    } else {
        let wrong = g
            .expected
            .iter()
            .filter(|(k, v)| got.get(*k) != Some(v))
            .count();
        bail!(
            "{wrong} of {} (minute, ad) counts differ from the generator's totals",
            g.expected.len()
        );
    }

    let top = client
        .query(
            "SELECT toString(update_time_minute) AS minute, most_clicked_ads AS ads FROM top_ads \
             WHERE window_minutes = 5 AND filter_id = 0 ORDER BY update_time_minute DESC LIMIT 1",
        )
        .fetch_one::<TopAds>()
        .await
        .context("reading the top-N table")?;
    println!(
        "\nTop 10 ads of the 5 minutes ending with minute {} (UTC):",
        top.minute
    );
    for (i, (ad, clicks)) in top.ads.iter().take(10).enumerate() {
        println!("  {:>2}. {ad}  {clicks} clicks", i + 1);
    }
    println!(
        "\nThe data stays in {dir}. To query it, serve it and ask over HTTP:\n  \
         {py} clickhouse/server.py --data {dir} --port 8123 &\n  \
         curl http://127.0.0.1:8123/ --data-binary \"SELECT ad_id, sum(clicks) FROM adtally.clicks_per_minute \
         WHERE filter_id = 0 GROUP BY ad_id ORDER BY 2 DESC LIMIT 10\"",
        dir = data.join("clickhouse").display(),
        py = python().display()
    );

    // The stream against the batch truth (the raw events the host stored,
    // counted by the same core in ClickHouse's views), every minute.
    let (from, to) = client
        .query("SELECT toUnixTimestamp64Milli(min(window_start)), toUnixTimestamp64Milli(max(window_start)) + 60000 FROM raw_events")
        .fetch_one::<(i64, i64)>()
        .await?;
    let opts = reconcile::Options {
        range: reconcile::Range::new(WindowStart(from), WindowStart(to))?,
        filters: vec![],
        chunk_minutes: 60,
        set: None,
    };
    let summary = reconcile::reconcile(&client, "adtally", &opts, |_| Ok(()), |_, _| {}).await?;
    println!("\n{}", reconcile::report::line(opts.range, &summary));
    if summary.unexplained > 0 {
        bail!("{} cells unexplained", summary.unexplained);
    }
    Ok(())
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct TopAds {
    minute: String,
    ads: Vec<(String, u64)>,
}
