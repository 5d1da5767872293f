//! `adtally`: the ad-click aggregation service.
//!
//! This crate owns the I/O around the core: sources of clicks, running the
//! core component in wasmtime (`adtally-runtime`), and the ClickHouse sink.
//! It never decides what a count is: the core does.
//!
//! ```text
//! adtally gen  --records 100000 > stream.tsv   # a generated stream: partition<TAB>record
//! adtally ship --brokers B clicks.log           # follow log files into the topic
//! adtally run  --brokers B --clickhouse URL     # topic -> core component -> ClickHouse
//! adtally demo                                  # generator -> core component -> embedded ClickHouse
//! ```

use adtally_host::connect::{ClickHouseAuth, KafkaProperties, redact_url};
use adtally_host::snapshot_policy::SnapshotPolicy;
use adtally_host::{broker, generator, pipeline, sink, source};

use adtally_chserver::EmbeddedClickHouse;
use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Parser)]
#[command(name = "adtally", version, about = "Exact ad-click aggregation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a click stream: print it (partition<TAB>record per line), or produce it to Kafka.
    Gen {
        #[command(flatten)]
        stream: StreamArgs,
        /// Produce to this Kafka cluster instead of printing.
        #[arg(long)]
        brokers: Option<String>,
        /// The topic to produce to (created with --partitions if missing).
        #[arg(long, default_value = "clicks")]
        topic: String,
        /// Write the expected (minute start ms, ad, clicks) totals to this file, tab-separated.
        #[arg(long)]
        expected: Option<PathBuf>,
    },
    /// Follow log files of click records into a Kafka topic (keyed by ad_id),
    /// resuming where the last run stopped.
    Ship {
        /// Kafka bootstrap servers.
        #[arg(long, env = "ADTALLY_BROKERS")]
        brokers: String,
        /// The topic (must exist).
        #[arg(long, default_value = "clicks")]
        topic: String,
        /// Where each file's position is kept between runs.
        #[arg(long, default_value = "adtally-ship.json")]
        state: PathBuf,
        /// Where lines that cannot be shipped go (JSON lines: file, byte
        /// range, reason, the line); shipping goes on past them.
        #[arg(long, default_value = "adtally-ship.dead.jsonl")]
        dead_letter: PathBuf,
        /// The longest line read, in bytes; a longer one is dead-lettered
        /// (memory never holds more of it).
        #[arg(long, default_value_t = 1 << 20)]
        max_line_bytes: usize,
        /// Exit after this many seconds without a new line.
        #[arg(long)]
        exit_when_idle: Option<u64>,
        /// A librdkafka property, as `-X key=value` (repeatable; kcat's
        /// flag), e.g. `-X security.protocol=SASL_SSL -X sasl.mechanism=PLAIN`.
        #[arg(short = 'X', value_name = "KEY=VALUE")]
        kafka_property: Vec<String>,
        /// A file of librdkafka properties, one `key=value` a line (`#`
        /// comments); `-X` overrides it.
        #[arg(long, value_name = "FILE")]
        kafka_config: Option<PathBuf>,
        /// The log files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Consume a Kafka topic through the core component into ClickHouse.
    Run {
        /// Kafka bootstrap servers.
        #[arg(long, env = "ADTALLY_BROKERS")]
        brokers: String,
        /// The topic of clicks.
        #[arg(long, default_value = "clicks")]
        topic: String,
        /// The consumer group.
        #[arg(long, default_value = "adtally")]
        group: String,
        /// ClickHouse HTTP URL.
        #[arg(
            long,
            env = "ADTALLY_CLICKHOUSE",
            default_value = "http://127.0.0.1:8123"
        )]
        clickhouse: String,
        /// ClickHouse database.
        #[arg(long, default_value = "adtally")]
        db: String,
        /// The core component.
        #[arg(long, default_value = "target/wasm/adtally_component.wasm")]
        module: PathBuf,
        /// The core's configuration (JSON; defaults fill gaps).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Records per batch at most (each batch is one write per output table).
        #[arg(long, default_value_t = 50_000)]
        batch: usize,
        /// Exit after this many seconds without a record (backfills, tests).
        #[arg(long)]
        exit_when_idle: Option<u64>,
        /// Shortest time between two snapshots of a partition's state, in
        /// seconds.
        #[arg(long, default_value_t = 10)]
        snapshot_interval: u64,
        /// Snapshot bytes each record processed pays for: a partition's
        /// state is stored once the records since its last snapshot, at
        /// this many bytes each, reach that snapshot's size, so snapshots
        /// write at most this many bytes per input record (a restart
        /// replays at most snapshot size / this many records). 0 stores
        /// every --snapshot-interval whatever the size.
        #[arg(long, default_value_t = 64)]
        snapshot_bytes_per_record: u64,
        /// LZ4-compress inserts (`lz4`, the default) or not (`none`: for a
        /// ClickHouse on the same machine, where compression only costs CPU).
        #[arg(long, default_value = "lz4", value_parser = ["lz4", "none"])]
        clickhouse_compression: String,
        /// Which partitions to read: `group` (the consumer group shares them
        /// out), `all`, or a list like `0,2,5` (no group: static deployments).
        #[arg(long, default_value = "group")]
        partitions: source::Assignment,
        /// Where a partition whose stored snapshot this module cannot
        /// restore starts: `earliest` or an offset. Without it such a
        /// partition is refused (the run stops and says why).
        #[arg(long)]
        unrestorable_snapshot: Option<source::StartAt>,
        /// A librdkafka property, as `-X key=value` (repeatable; kcat's
        /// flag), e.g. `-X security.protocol=SASL_SSL -X sasl.mechanism=PLAIN`.
        #[arg(short = 'X', value_name = "KEY=VALUE")]
        kafka_property: Vec<String>,
        /// A file of librdkafka properties, one `key=value` a line (`#`
        /// comments); `-X` overrides it.
        #[arg(long, value_name = "FILE")]
        kafka_config: Option<PathBuf>,
        /// Largest memory of one partition's instance, in MiB.
        #[arg(long, default_value_t = 2048)]
        max_memory_mb: usize,
        /// How long one call into a partition's instance may run, in ms.
        #[arg(long, default_value_t = 10_000)]
        call_deadline_ms: u64,
        /// ClickHouse user (default: ClickHouse's `default`).
        #[arg(long, env = "ADTALLY_CLICKHOUSE_USER")]
        clickhouse_user: Option<String>,
        /// ClickHouse password (better from the environment than a flag,
        /// which other users of the machine can see); never printed.
        #[arg(long, env = "ADTALLY_CLICKHOUSE_PASSWORD", hide_env_values = true)]
        clickhouse_password: Option<String>,
    },
    /// Run a generated stream through the core component into an embedded ClickHouse and print the top ads.
    Demo {
        #[command(flatten)]
        stream: StreamArgs,
        /// The core component.
        #[arg(long, default_value = "target/wasm/adtally_component.wasm")]
        module: PathBuf,
        /// Where the demo keeps its broker log and ClickHouse data (emptied first).
        #[arg(long, default_value = ".adtally/demo")]
        data: PathBuf,
    },
}

#[derive(clap::Args)]
struct StreamArgs {
    /// Records to generate.
    #[arg(long, default_value_t = 200_000)]
    records: usize,
    /// Distinct ads.
    #[arg(long, default_value_t = 20_000)]
    ads: u64,
    /// Partitions (records are keyed by ad).
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Random seed.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Clicks per second of event time.
    #[arg(long, default_value_t = 50)]
    rate: u32,
    /// Fraction of records that repeat an earlier click exactly.
    #[arg(long, default_value_t = 0.01)]
    duplicates: f64,
    /// Fraction of clicks placed 30 minutes behind (late), once the stream
    /// is 40 minutes long.
    #[arg(long, default_value_t = 0.005)]
    late: f64,
    /// Fraction of invalid records (an unknown country).
    #[arg(long, default_value_t = 0.005)]
    invalid: f64,
    /// Largest backwards jitter of a click's time, in ms (disorder); at most
    /// the core's out-of-orderness (15,000) for the totals to hold.
    #[arg(long, default_value_t = 5_000)]
    disorder_ms: i64,
    /// Yahoo Streaming Benchmark events (its JSON schema; its `view` events
    /// are the clicks) instead of log lines.
    #[arg(long)]
    ysb: bool,
    /// Fraction of clicks whose clock is 30 minutes ahead (counted in their
    /// own minute; they must not make later clicks late).
    #[arg(long, default_value_t = 0.0)]
    ahead: f64,
    /// Every this many records, a heartbeat in 2199 on every partition
    /// (side-lined as ahead of its partition); 0: none.
    #[arg(long, default_value_t = 0)]
    far_heartbeat_every: usize,
}

impl StreamArgs {
    fn config(&self) -> Result<generator::GenConfig> {
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
        if !(0..=15_000).contains(&self.disorder_ms) {
            bail!(
                "--disorder-ms {}: between 0 and the core's out-of-orderness (15000), or the expected totals would not hold",
                self.disorder_ms
            );
        }
        Ok(generator::GenConfig {
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
            ..generator::GenConfig::default()
        })
    }
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Gen {
            stream,
            brokers,
            topic,
            expected,
        } => {
            let config = stream.config()?;
            let g = generator::generate(config);
            if let Some(path) = expected {
                g.write_expected(&path)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            match brokers {
                Some(brokers) => {
                    tokio::runtime::Runtime::new()?.block_on(source::ensure_topic(
                        &brokers,
                        &topic,
                        config.partitions,
                    ))?;
                    source::produce(&brokers, &topic, &g.records)?;
                }
                None => {
                    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                    for r in &g.records {
                        writeln!(out, "{}\t{}", r.partition, r.payload)?;
                    }
                }
            }
            let clicks: u64 = g.expected.values().sum();
            eprintln!(
                "{} records: {clicks} distinct counted clicks ({} of them 30 minutes ahead), {} duplicates, {} late, {} invalid, {} YSB events other than views, {} heartbeats in 2199",
                g.records.len(),
                g.ahead,
                g.duplicates,
                g.late,
                g.invalid,
                g.not_views,
                g.far_heartbeats
            );
            Ok(())
        }
        Command::Run {
            brokers,
            topic,
            group,
            clickhouse,
            db,
            module,
            config,
            batch,
            exit_when_idle,
            snapshot_interval,
            snapshot_bytes_per_record,
            clickhouse_compression,
            partitions,
            unrestorable_snapshot,
            kafka_property,
            kafka_config,
            clickhouse_user,
            clickhouse_password,
            max_memory_mb,
            call_deadline_ms,
        } => {
            let config_json = match config {
                Some(p) => std::fs::read_to_string(&p)
                    .with_context(|| format!("reading {}", p.display()))?,
                None => "{}".into(),
            };
            if batch == 0 {
                bail!("--batch must be at least 1");
            }
            let opts = source::ConsumeOptions {
                brokers,
                topic,
                group,
                batch,
                exit_when_idle: exit_when_idle.map(std::time::Duration::from_secs),
                snapshots: SnapshotPolicy {
                    every: std::time::Duration::from_secs(snapshot_interval),
                    bytes_per_record: snapshot_bytes_per_record,
                },
                assignment: partitions,
                unrestorable: unrestorable_snapshot,
                kafka: KafkaProperties::new(kafka_config.as_deref(), &kafka_property)?,
            };
            let auth = ClickHouseAuth {
                user: clickhouse_user,
                password: clickhouse_password,
            };
            let limits = adtally_runtime::Limits {
                max_memory_bytes: max_memory_mb << 20,
                call_deadline: std::time::Duration::from_millis(call_deadline_ms),
            };
            run(
                &opts,
                &pipeline::Target {
                    url: &clickhouse,
                    db: &db,
                    module: &module,
                    config_json: &config_json,
                    compress: clickhouse_compression == "lz4",
                    auth,
                    limits,
                },
            )
        }
        Command::Ship {
            brokers,
            topic,
            state,
            dead_letter,
            max_line_bytes,
            exit_when_idle,
            kafka_property,
            kafka_config,
            files,
        } => {
            let stats = adtally_host::ship::ship(&adtally_host::ship::ShipOptions {
                brokers,
                topic,
                files,
                state,
                exit_when_idle: exit_when_idle.map(std::time::Duration::from_secs),
                kafka: KafkaProperties::new(kafka_config.as_deref(), &kafka_property)?,
                dead_letter,
                max_line_bytes,
            })?;
            eprintln!(
                "adtally ship: {} lines shipped, {} files followed from their start after rotation or truncation, {} lines dead-lettered",
                stats.lines, stats.restarts, stats.dead_lettered
            );
            Ok(())
        }
        Command::Demo {
            stream,
            module,
            data,
        } => demo(stream.config()?, &module, &data),
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn demo(config: generator::GenConfig, module_path: &Path, data: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(data);
    std::fs::create_dir_all(data)?;
    println!(
        "adtally demo: generator -> Kafka (Tansu) -> adtally run (core component in wasmtime) -> ClickHouse (embedded)"
    );
    let data = data.canonicalize()?;
    let kafka = broker::LocalBroker::start("memory://tansu/", &data)?;
    println!("  Kafka (Tansu) at {}", kafka.addr());
    let ch = EmbeddedClickHouse::start(&data.join("clickhouse"))?;
    println!("  ClickHouse (embedded) at {}", ch.url());
    sink::install_schema(&ch.url())?;

    let g = generator::generate(config);
    source::ensure_topic(kafka.addr(), "clicks", config.partitions).await?;
    let produce = {
        let (addr, records) = (kafka.addr().to_string(), g.records.clone());
        tokio::task::spawn_blocking(move || source::produce(&addr, "clicks", &records))
    };
    produce.await??;
    println!(
        "  produced {} records ({} duplicates, {} late, {} invalid) to topic `clicks`",
        g.records.len(),
        g.duplicates,
        g.late,
        g.invalid
    );

    let opts = source::ConsumeOptions {
        brokers: kafka.addr().to_string(),
        topic: "clicks".into(),
        group: "adtally-demo".into(),
        batch: 50_000,
        exit_when_idle: Some(std::time::Duration::from_secs(5)),
        snapshots: SnapshotPolicy::DEFAULT,
        assignment: source::Assignment::Group,
        unrestorable: None,
        kafka: KafkaProperties::default(),
    };
    let url = ch.url();
    let target = pipeline::Target {
        url: &url,
        db: "adtally",
        module: module_path,
        config_json: "{}",
        // The embedded server is on this machine.
        compress: false,
        auth: Default::default(),
        limits: Default::default(),
    };
    let start = Instant::now();
    let report = pipeline::run(&opts, &target).await?;
    let (m, stats) = (&report.module, &report.stats);
    println!(
        "  module {} {} (semantics {}), sha256 {}",
        m.name, m.version, m.semantics_version, report.sha256
    );
    println!(
        "  consumed {} records in {:.1} s (5 s of it waiting for more): {} rollup rows, {} duplicates dropped, {} late, {} invalid",
        stats.records,
        start.elapsed().as_secs_f64(),
        stats.rollups,
        stats.duplicates,
        stats.late,
        stats.invalid
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
        py = adtally_chserver::python().display()
    );
    Ok(())
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct TopAds {
    minute: String,
    ads: Vec<(String, u64)>,
}

#[tokio::main(flavor = "multi_thread")]
async fn run(opts: &source::ConsumeOptions, target: &pipeline::Target<'_>) -> Result<()> {
    eprintln!(
        "adtally run: {} -> {}/{}",
        opts.topic,
        redact_url(target.url),
        target.db
    );
    let report = pipeline::run(opts, target).await?;
    let stats = &report.stats;
    eprintln!(
        "adtally run: {} records, {} rollup rows, {} duplicates, {} late, {} invalid (module {})",
        stats.records, stats.rollups, stats.duplicates, stats.late, stats.invalid, report.sha256
    );
    eprintln!(
        "adtally run: {} snapshots restored, {} records already covered by them, {} core failures recovered, {} records quarantined, {} records deleted from the log before they were read",
        stats.restored, stats.replayed, stats.traps, stats.quarantined, stats.deleted_unread
    );
    Ok(())
}
