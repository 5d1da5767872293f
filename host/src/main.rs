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
//! adtally reconcile --from T --to T             # the rollups against the batch truth
//! adtally replay --from T --to T --module M     # recalculate a range into a new rollup set
//! adtally serve --listen 127.0.0.1:8080         # the two APIs over HTTP
//! adtally query count AD --from T --to T        # API 1 on the terminal
//! ```

use adtally_core::WindowStart;
use adtally_host::connect::{ClickHouseAuth, KafkaProperties, redact_url};
use adtally_host::snapshot_policy::SnapshotPolicy;
use adtally_host::{generator, pipeline, producer, query, reconcile, replay, serve, sink, source};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "adtally", version, about = "Exact ad-click aggregation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where ClickHouse is, and who the host is to it.
#[derive(clap::Args)]
struct ClickHouseArgs {
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
    /// ClickHouse user (default: ClickHouse's `default`).
    #[arg(long, env = "ADTALLY_CLICKHOUSE_USER")]
    clickhouse_user: Option<String>,
    /// ClickHouse password (better from the environment than a flag,
    /// which other users of the machine can see); never printed.
    #[arg(long, env = "ADTALLY_CLICKHOUSE_PASSWORD", hide_env_values = true)]
    clickhouse_password: Option<String>,
}

impl ClickHouseArgs {
    fn auth(&self) -> ClickHouseAuth {
        ClickHouseAuth {
            user: self.clickhouse_user.clone(),
            password: self.clickhouse_password.clone(),
        }
    }
}

#[derive(Subcommand)]
enum ReplayAction {
    /// Drop a replay's rollup set: readers stop seeing it at once (its
    /// range goes back to the set before it), then its rows are deleted.
    Drop {
        #[command(flatten)]
        ch: ClickHouseArgs,
        /// The set's name.
        set: String,
    },
    /// Switch readers to a ready set (one written with --no-switch), once
    /// it is verified against the batch truth again.
    Switch {
        #[command(flatten)]
        ch: ClickHouseArgs,
        /// The set's name.
        set: String,
        /// Let the set count fewer filters than the rollups readers see now.
        #[arg(long)]
        drop_filters: bool,
    },
    /// List the rollup sets: name, state, topic, range, module.
    List {
        #[command(flatten)]
        ch: ClickHouseArgs,
    },
}

/// What `serve` and `query` read with: the core's configuration (its
/// filters and precomputed windows) and the limits on requests.
#[derive(clap::Args)]
struct ReadArgs {
    #[command(flatten)]
    ch: ClickHouseArgs,
    /// The core's configuration the rollups were computed with (JSON, as
    /// given to `adtally run`; defaults fill gaps).
    #[arg(long)]
    config: Option<PathBuf>,
    /// How long a ClickHouse call may take before the answer is a 503.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    clickhouse_timeout: std::time::Duration,
    /// The longest range API 1 counts, in minutes.
    #[arg(long, default_value_t = 31 * 1440)]
    max_range_minutes: u32,
}

impl ReadArgs {
    fn reader(&self) -> Result<query::Reader> {
        let config_json = config_json(self.config.as_deref())?;
        let config = adtally_core::Config::from_json(&config_json)
            .map_err(|e| anyhow::anyhow!("the core refuses the configuration: {e}"))?;
        let limits = query::Limits {
            max_range: self.max_range_minutes,
            ..query::Limits::default()
        };
        let catalog = query::Catalog::new(config, limits)
            .map_err(|e| anyhow::anyhow!("the core refuses the configuration: {e}"))?;
        let client = self
            .ch
            .auth()
            .apply(sink::client(&self.ch.clickhouse))
            .with_database(&self.ch.db);
        Ok(query::Reader::new(
            client,
            &self.ch.db,
            catalog,
            self.clickhouse_timeout,
        ))
    }
}

#[derive(Subcommand)]
enum QueryAction {
    /// API 1: the clicks of an ad in the minutes [from, to).
    Count {
        #[command(flatten)]
        read: ReadArgs,
        /// The ad.
        ad_id: String,
        #[command(flatten)]
        params: query::CountParams,
        /// The answer as the HTTP API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// API 2: the most clicked ads of the last final minutes.
    Popular {
        #[command(flatten)]
        read: ReadArgs,
        #[command(flatten)]
        params: query::PopularParams,
        /// The answer as the HTTP API's JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Generate a click stream: print it (partition<TAB>record per line), or produce it to Kafka.
    Gen {
        #[command(flatten)]
        stream: generator::StreamArgs,
        /// Produce to this Kafka cluster instead of printing.
        #[arg(long)]
        brokers: Option<String>,
        /// The topic to produce to (created with --partitions if missing).
        #[arg(long, default_value = "clicks")]
        topic: String,
        /// Write the expected (minute start ms, ad, clicks) totals to this file, tab-separated.
        #[arg(long)]
        expected: Option<PathBuf>,
        /// Write the batch truth's expected totals to this file: (minute
        /// start ms, ad, distinct clicks with the late ones, valid click
        /// records with the duplicates), tab-separated.
        #[arg(long)]
        expected_batch: Option<PathBuf>,
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
        #[command(flatten)]
        ch: ClickHouseArgs,
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
        /// Who feeds ClickHouse's raw events and batch truth: `host` (each
        /// batch's records go into `ingest`), `kafka-engine` (a ClickHouse
        /// Kafka table reads the topic itself) or `off`.
        #[arg(long, value_enum, default_value = "host")]
        raw_events: source::RawEvents,
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
        /// Serve Prometheus metrics at http://ADDR/metrics.
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<std::net::SocketAddr>,
    },
    /// Answer the design's two APIs over HTTP (see /openapi.json), the
    /// recent final minutes from memory.
    Serve {
        #[command(flatten)]
        read: ReadArgs,
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// How many of the last final minutes are held in memory (0: none,
        /// every answer from ClickHouse).
        #[arg(long, default_value_t = 60)]
        memory_minutes: u32,
        /// How often the watermarks and rollup sets are looked at.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
        refresh: std::time::Duration,
        /// An `adtally run` host's metrics URL (its --metrics-listen, with
        /// /metrics), for the pipeline's health (repeatable).
        #[arg(long, value_name = "URL")]
        host_metrics: Vec<String>,
        /// The core's browser build the dashboard runs (`make wasm` writes it).
        #[arg(long, default_value = "target/wasm/web")]
        core_js: PathBuf,
    },
    /// Ask the two APIs' questions on the terminal (the same code as `serve`).
    Query {
        #[command(subcommand)]
        action: QueryAction,
    },
    /// Compare the stream's per-minute rollups with the batch truth, per
    /// (minute, ad, filter), and classify every difference (late, side-lined,
    /// cross-partition, or unexplained); exits non-zero when any cell is
    /// unexplained. Each run's result goes to the `reconciliations` table.
    Reconcile {
        #[command(flatten)]
        ch: ClickHouseArgs,
        /// The first minute (RFC 3339, e.g. 2026-12-01T00:00:00Z, or ms
        /// since the epoch). Scheduled: where the first period starts
        /// (default: where the last scheduled run ended).
        #[arg(long, value_parser = reconcile::job::parse_time)]
        from: Option<WindowStart>,
        /// The first minute not compared. Scheduled: the last period's end
        /// (default: none, run until stopped).
        #[arg(long, value_parser = reconcile::job::parse_time)]
        to: Option<WindowStart>,
        /// A filter id to compare (repeatable); default: every filter.
        #[arg(long = "filter", value_name = "ID")]
        filters: Vec<u32>,
        /// The report's format.
        #[arg(long, value_enum, default_value = "table")]
        format: reconcile::report::Format,
        /// The report's file (scheduled runs append); default: standard output.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Minutes compared per query.
        #[arg(long, default_value_t = 60)]
        chunk_minutes: u32,
        /// Compare this rollup set (a replay's, e.g. before it is switched
        /// in) instead of, for each minute, the set readers see.
        #[arg(long, conflicts_with_all = ["every", "daily"])]
        set: Option<String>,
        /// Reconcile every period of this length as it settles (e.g. 1h).
        #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "daily")]
        every: Option<std::time::Duration>,
        /// Reconcile each UTC day as it settles (--every 24h).
        #[arg(long)]
        daily: bool,
        /// How long after a period ends it is reconciled (the stream's
        /// lateness, and the raw path's delay).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
        settle: std::time::Duration,
    },
    /// Recalculate a range from its raw events with a module (a bug fix, a
    /// logic change): the records go, in each partition's order, through
    /// the module's core into a new rollup set, which is checked and then
    /// switched in for the range at once; the set it replaced stays
    /// queryable (`clicks_per_minute_by_set`) until `adtally replay drop`.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Replay {
        #[command(subcommand)]
        action: Option<ReplayAction>,
        #[command(flatten)]
        ch: ClickHouseArgs,
        /// The first minute (RFC 3339 or ms since the epoch).
        #[arg(long, value_parser = reconcile::job::parse_time, required = true)]
        from: Option<WindowStart>,
        /// The first minute not replayed.
        #[arg(long, value_parser = reconcile::job::parse_time, required = true)]
        to: Option<WindowStart>,
        /// The core component to replay with: a file, or the SHA-256 of
        /// one in --modules-dir (as every row records its module).
        #[arg(
            long,
            value_name = "FILE|SHA256",
            default_value = "target/wasm/adtally_component.wasm"
        )]
        module: String,
        /// Where a module named by its SHA-256 is looked for.
        #[arg(long, default_value = "target/wasm")]
        modules_dir: PathBuf,
        /// The core's configuration (JSON; defaults fill gaps).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The topic whose raw events are replayed.
        #[arg(long, default_value = "clicks")]
        topic: String,
        /// The new set's name (default: replay-<time>-<module hash prefix>).
        #[arg(long)]
        set: Option<String>,
        /// Write and check the set, but leave readers on the current one.
        #[arg(long)]
        no_switch: bool,
        /// Records per call into a core.
        #[arg(long, default_value_t = 50_000)]
        batch: usize,
        /// Let the set count fewer filters than the rollups readers see now
        /// for the range (without it such a replay is refused).
        #[arg(long)]
        drop_filters: bool,
    },
}

/// The core's configuration in `path` (JSON), `{}` (every default) without one.
fn config_json(path: Option<&std::path::Path>) -> Result<String> {
    match path {
        Some(p) => std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display())),
        None => Ok("{}".into()),
    }
}

fn main() -> Result<()> {
    adtally_host::logging::init("info");
    match Cli::parse().command {
        Command::Gen {
            stream,
            brokers,
            topic,
            expected,
            expected_batch,
        } => {
            let config = stream.config()?;
            let g = generator::generate(config);
            if let Some(path) = expected {
                g.write_expected(&path)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if let Some(path) = expected_batch {
                g.write_batch_truth(&path)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            match brokers {
                Some(brokers) => {
                    tokio::runtime::Runtime::new()?.block_on(producer::ensure_topic(
                        &brokers,
                        &topic,
                        config.partitions,
                    ))?;
                    producer::produce(&brokers, &topic, &g.records)?;
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
                "adtally gen: {} records: {clicks} distinct counted clicks ({} of them 30 minutes ahead), {} duplicates, {} late, {} invalid, {} YSB events other than views, {} heartbeats in 2199",
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
        Command::Replay {
            action: Some(action),
            ..
        } => replay_action(action),
        Command::Replay {
            action: None,
            ch,
            from,
            to,
            module,
            config,
            topic,
            set,
            no_switch,
            batch,
            modules_dir,
            drop_filters,
        } => {
            let (Some(from), Some(to)) = (from, to) else {
                bail!("replay needs --from and --to");
            };
            if batch == 0 {
                bail!("--batch must be at least 1");
            }
            let config_json = config_json(config.as_deref())?;
            let opts = replay::Options {
                topic,
                range: reconcile::Range::new(from, to)?,
                set,
                switch: !no_switch,
                batch,
                drop_filters,
            };
            let module = replay::find_module(&module, &modules_dir)?;
            replay_command(&ch, &module, &config_json, &opts)
        }
        Command::Serve {
            read,
            listen,
            memory_minutes,
            refresh,
            host_metrics,
            core_js,
        } => serve_command(
            read.reader()?,
            listen,
            memory_minutes,
            refresh,
            host_metrics,
            core_js,
        ),
        Command::Query { action } => query_command(action),
        Command::Reconcile {
            ch,
            from,
            to,
            filters,
            format,
            output,
            chunk_minutes,
            set,
            every,
            daily,
            settle,
        } => {
            let every = every.or(daily.then(|| std::time::Duration::from_secs(86_400)));
            let output = reconcile::job::Output {
                format,
                file: output,
            };
            // One order, so that a schedule resumes whatever order they came in.
            let mut filters: Vec<adtally_core::FilterId> =
                filters.into_iter().map(adtally_core::FilterId).collect();
            filters.sort();
            filters.dedup();
            reconcile_command(
                &ch,
                from,
                to,
                filters,
                chunk_minutes,
                set,
                every,
                settle,
                &output,
            )
        }
        Command::Run {
            brokers,
            topic,
            group,
            ch,
            module,
            config,
            batch,
            exit_when_idle,
            snapshot_interval,
            snapshot_bytes_per_record,
            clickhouse_compression,
            partitions,
            unrestorable_snapshot,
            raw_events,
            kafka_property,
            kafka_config,
            max_memory_mb,
            call_deadline_ms,
            metrics_listen,
        } => {
            if let Some(addr) = metrics_listen {
                adtally_host::metrics::listen(addr)?;
            }
            let config_json = config_json(config.as_deref())?;
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
                raw_events,
            };
            let limits = adtally_runtime::Limits {
                max_memory_bytes: max_memory_mb << 20,
                call_deadline: std::time::Duration::from_millis(call_deadline_ms),
            };
            run(
                &opts,
                &pipeline::Target {
                    url: &ch.clickhouse,
                    db: &ch.db,
                    module: &module,
                    config_json: &config_json,
                    compress: clickhouse_compression == "lz4",
                    auth: ch.auth(),
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
    }
}

#[tokio::main(flavor = "current_thread")]
async fn replay_command(
    ch: &ClickHouseArgs,
    module: &std::path::Path,
    config_json: &str,
    opts: &replay::Options,
) -> Result<()> {
    let rt = adtally_runtime::Runtime::new(Default::default())?;
    let module = rt.load_file(module)?;
    module.create(config_json)?;
    let sink = sink::Sink::new(
        &ch.clickhouse,
        &ch.db,
        &opts.topic,
        module.sha256(),
        true,
        &ch.auth(),
    );
    let r = replay::replay(&sink, &module, config_json, opts).await?;
    eprintln!(
        "adtally replay: set {} from {} to {}: {} records of {} partitions, {} cells, {} clicks, {} duplicates, \
         {} late, {} invalid; {:.1} s ({:.0} records/s); {}",
        r.set,
        reconcile::report::time(opts.range.from.0),
        reconcile::report::time(opts.range.to.0),
        r.records,
        r.partitions,
        r.cells,
        r.clicks,
        r.duplicates,
        r.late,
        r.invalid,
        r.seconds,
        r.records as f64 / r.seconds.max(1e-9),
        if r.switched {
            "readers see it now"
        } else {
            "not switched (--no-switch)"
        }
    );
    eprintln!(
        "adtally replay: verified against the batch truth: {}",
        reconcile::report::line(opts.range, &r.verified)
    );
    if !r.unverified_filters.is_empty() {
        let ids: Vec<String> = r
            .unverified_filters
            .iter()
            .map(|f| f.0.to_string())
            .collect();
        eprintln!(
            "adtally replay: filters the batch truth does not count, not verified: {}",
            ids.join(", ")
        );
    }
    Ok(())
}

#[tokio::main]
async fn serve_command(
    reader: query::Reader,
    listen: std::net::SocketAddr,
    memory_minutes: u32,
    refresh: std::time::Duration,
    host_metrics: Vec<String>,
    core_js: PathBuf,
) -> Result<()> {
    let reader = if memory_minutes > 0 {
        let index = query::Index::new(
            query::IndexOptions {
                minutes: memory_minutes,
                refresh,
            },
            reader.catalog().window_ms(),
        );
        tokio::spawn(index.clone().run(reader.clone()));
        reader.with_index(index)
    } else {
        reader
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    eprintln!(
        "adtally serve: listening on http://{} (API at /v1, OpenAPI at /openapi.json)",
        listener.local_addr()?
    );
    let metrics = adtally_host::metrics::recorder()?;
    let app = serve::App {
        reader,
        host_metrics,
        core_js,
    };
    serve::serve(listener, serve::router(app, metrics)).await
}

#[tokio::main(flavor = "current_thread")]
async fn query_command(action: QueryAction) -> Result<()> {
    let now = query::now_ms();
    match action {
        QueryAction::Count {
            read,
            ad_id,
            params,
            json,
        } => {
            let reader = read.reader()?;
            let req = params
                .check(&ad_id, reader.catalog(), now)
                .map_err(|b| anyhow::anyhow!("{b}"))?;
            let a = reader.count(&req).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&a)?);
            } else {
                println!(
                    "{:<24} {:<24} {:<24} {:>6} {:>12}",
                    "ad_id", "from", "to", "filter", "count"
                );
                println!(
                    "{:<24} {:<24} {:<24} {:>6} {:>12}",
                    a.ad_id, a.from, a.to, a.filter, a.count
                );
                println!(
                    "source: {}; final before {}{}",
                    serde_json::to_value(a.source)?.as_str().unwrap_or("?"),
                    a.final_to.as_deref().unwrap_or("(nothing final yet)"),
                    if a.complete {
                        ""
                    } else {
                        "; the range is not all final"
                    }
                );
            }
        }
        QueryAction::Popular { read, params, json } => {
            let reader = read.reader()?;
            let req = params
                .check(reader.catalog())
                .map_err(|b| anyhow::anyhow!("{b}"))?;
            let a = reader.popular(&req).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&a)?);
            } else {
                println!("{:>4} {:<24} {:>12}", "rank", "ad_id", "clicks");
                for (i, (ad, c)) in a.ad_ids.iter().zip(&a.counts).enumerate() {
                    println!("{:>4} {:<24} {:>12}", i + 1, ad, c);
                }
                println!(
                    "{} minutes from {} to {}, filter {}; source: {}",
                    a.window,
                    a.from,
                    a.to,
                    a.filter,
                    serde_json::to_value(a.source)?.as_str().unwrap_or("?")
                );
            }
        }
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn replay_action(action: ReplayAction) -> Result<()> {
    let (ReplayAction::Drop { ch, .. }
    | ReplayAction::Switch { ch, .. }
    | ReplayAction::List { ch }) = &action;
    let client = ch
        .auth()
        .apply(sink::client(&ch.clickhouse))
        .with_database(&ch.db);
    match &action {
        ReplayAction::Drop { set, .. } => {
            replay::drop_set(&client, set).await?;
            eprintln!("adtally replay: dropped set {set}");
        }
        ReplayAction::Switch {
            set, drop_filters, ..
        } => {
            let v = replay::switch(&client, &ch.db, set, *drop_filters).await?;
            eprintln!(
                "adtally replay: set {set} verified ({} unexplained cells) and switched in; readers see it now",
                v.summary.unexplained
            );
        }
        ReplayAction::List { .. } => {
            println!(
                "{:<40} {:<9} {:<16} {:<24} {:<24} module",
                "set", "state", "topic", "from", "to"
            );
            for r in replay::list(&client).await? {
                println!(
                    "{:<40} {:<9} {:<16} {:<24} {:<24} {}",
                    r.rollup_set,
                    r.state,
                    r.topic,
                    reconcile::report::time(r.range_from),
                    reconcile::report::time(r.range_to),
                    &r.module_sha256[..r.module_sha256.len().min(12)]
                );
            }
        }
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
#[allow(clippy::too_many_arguments)]
async fn reconcile_command(
    ch: &ClickHouseArgs,
    from: Option<WindowStart>,
    to: Option<WindowStart>,
    filters: Vec<adtally_core::FilterId>,
    chunk_minutes: u32,
    set: Option<String>,
    every: Option<std::time::Duration>,
    settle: std::time::Duration,
    output: &reconcile::job::Output,
) -> Result<()> {
    let client = ch
        .auth()
        .apply(sink::client(&ch.clickhouse))
        .with_database(&ch.db);
    match every {
        None => {
            let (Some(from), Some(to)) = (from, to) else {
                bail!("reconcile needs --from and --to (or --every / --daily)");
            };
            let opts = reconcile::Options {
                range: reconcile::Range::new(from, to)?,
                filters,
                chunk_minutes,
                set,
            };
            let summary = reconcile::job::once(&client, &ch.db, &opts, output, false, true).await?;
            if summary.unexplained > 0 {
                bail!("{} cells unexplained", summary.unexplained);
            }
        }
        Some(every) => {
            let schedule = reconcile::job::Schedule {
                every,
                settle,
                until: to,
            };
            let failed = reconcile::job::every(
                &client,
                &ch.db,
                &filters,
                chunk_minutes,
                from,
                &schedule,
                output,
            )
            .await?;
            if failed > 0 {
                bail!("{failed} periods had unexplained cells");
            }
        }
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread")]
async fn run(opts: &source::ConsumeOptions, target: &pipeline::Target<'_>) -> Result<()> {
    tracing::info!(
        "adtally run: {} -> {}/{}",
        opts.topic,
        redact_url(target.url),
        target.db
    );
    let report = pipeline::run(opts, target).await?;
    let stats = &report.stats;
    // The run's result: printed whatever the log filter says.
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
