//! Kafka: producing generated streams, and consuming a topic into the core.
//!
//! The consumer commits nothing to Kafka: where a consumer stands is
//! written to ClickHouse (`consumer_offsets`) after the rows it covers were
//! acknowledged. A restarted consumer replays its partitions from the start;
//! the core's outputs are a pure function of each partition's records, and
//! every row is versioned or keyed by position, so a replay rewrites the same
//! rows and no count changes. (Snapshots, to replay only the tail, come next.)

use crate::generator::GenRecord;
use crate::sink::Sink;
use adtally_runtime::{Aggregator, RecordIn};
use anyhow::{Context, Result, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

/// Creates `topic` with `partitions` partitions unless it exists.
pub async fn ensure_topic(brokers: &str, topic: &str, partitions: u32) -> Result<()> {
    let admin: AdminClient<_> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let new = NewTopic::new(topic, partitions as i32, TopicReplication::Fixed(1));
    let results = admin
        .create_topics(
            [&new],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await?;
    for r in results {
        match r {
            Ok(_) => {}
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => bail!("creating topic {t}: {e}"),
        }
    }
    Ok(())
}

/// Produces `records` to `topic`, each to its own partition, idempotently.
pub fn produce(brokers: &str, topic: &str, records: &[GenRecord]) -> Result<()> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .create()
        .context("creating the Kafka producer")?;
    for r in records {
        let mut rec = BaseRecord::<(), str>::to(topic)
            .payload(r.payload.as_str())
            .partition(r.partition as i32);
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((e, back))
                    if e.rdkafka_error_code()
                        == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
                {
                    producer.poll(Duration::from_millis(50));
                    rec = back;
                }
                Err((e, _)) => bail!("producing to {topic}: {e}"),
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer
        .flush(Duration::from_secs(60))
        .context("flushing the producer")?;
    Ok(())
}

/// How `consume` runs.
pub struct ConsumeOptions {
    /// Bootstrap servers.
    pub brokers: String,
    /// The topic.
    pub topic: String,
    /// The consumer group.
    pub group: String,
    /// Records per batch at most.
    pub batch: usize,
    /// Stop after this long without a record (tests, backfills); never if `None`.
    pub exit_when_idle: Option<Duration>,
}

/// Totals of a consume run.
#[derive(Debug, Default)]
pub struct ConsumeStats {
    /// Records read.
    pub records: u64,
    /// Rollup rows written.
    pub rollups: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Late clicks side-lined.
    pub late: u64,
    /// Invalid records side-lined.
    pub invalid: u64,
    /// When the first record arrived.
    pub first_record_at: Option<Instant>,
    /// When the last batch's rows and offsets were acknowledged.
    pub last_written_at: Option<Instant>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Consumes the topic into the aggregator and the sink until idle (or forever).
pub async fn consume(
    opts: &ConsumeOptions,
    agg: &mut Aggregator<'_>,
    sink: &Sink,
) -> Result<ConsumeStats> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &opts.brokers)
        .set("group.id", &opts.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .context("creating the Kafka consumer")?;
    consumer
        .subscribe(&[&opts.topic])
        .with_context(|| format!("subscribing to {}", opts.topic))?;
    let mut stats = ConsumeStats::default();
    let mut last_record = Instant::now();
    loop {
        // One batch: what arrives within 200 ms, up to `batch` records.
        let mut batch: Vec<(u32, i64, Vec<u8>, Option<i64>)> = Vec::new();
        let window_end = Instant::now() + Duration::from_millis(200);
        while batch.len() < opts.batch {
            let left = window_end.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, consumer.recv()).await {
                Ok(Ok(m)) => batch.push((
                    m.partition() as u32,
                    m.offset(),
                    m.payload().unwrap_or_default().to_vec(),
                    m.timestamp().to_millis(),
                )),
                Ok(Err(e)) => eprintln!("adtally: kafka: {e}"),
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            let out = agg.tick(now_ms())?;
            sink.write(&out).await?;
            if opts
                .exit_when_idle
                .is_some_and(|idle| last_record.elapsed() >= idle)
            {
                return Ok(stats);
            }
            continue;
        }
        last_record = Instant::now();
        stats.first_record_at.get_or_insert(last_record);
        let recs: Vec<RecordIn> = batch
            .iter()
            .map(|(p, o, payload, t)| RecordIn {
                partition: *p,
                offset: *o,
                payload,
                record_time_ms: *t,
            })
            .collect();
        let out = agg.push(&recs, now_ms())?;
        sink.write(&out).await?;
        // Only now, with the rows acknowledged, does the position move.
        let mut next: BTreeMap<u32, i64> = BTreeMap::new();
        for (p, o, _, _) in &batch {
            let e = next.entry(*p).or_insert(0);
            *e = (*e).max(o + 1);
        }
        sink.write_offsets(&opts.topic, &next).await?;
        stats.records += batch.len() as u64;
        stats.rollups += out.rollups.len() as u64;
        stats.duplicates += out.duplicates;
        stats.late += out.late.len() as u64;
        stats.invalid += out.invalid.len() as u64;
        stats.last_written_at = Some(Instant::now());
    }
}
