//! Producing to Kafka: the one producer `ship` and `gen` use, idempotent,
//! with delivery reports, and creating a topic.
//!
//! A record is acknowledged when its delivery report says so, not when
//! `flush` returns (which it also does for records that failed): callers
//! tag each record and [`Producer::deliveries`] returns the tags that
//! failed, with why.

use crate::connect::KafkaProperties;
use crate::generator::GenRecord;
use anyhow::{Context, Result, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use std::sync::Mutex;
use std::time::Duration;

/// How long librdkafka gathers records into one request: a few more
/// records a request, for 20 ms of latency a batch.
const LINGER_MS: &str = "20";
/// How long metadata, topic creation and a flush may take.
const BROKER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to let the queue drain when it is full before queuing again.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(50);

/// The tags (see [`Producer::send`]) of records the broker did not
/// acknowledge, with why.
#[derive(Default)]
struct Deliveries {
    failed: Mutex<Vec<(usize, KafkaError)>>,
}

impl rdkafka::ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<usize>;

    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, tag: Self::DeliveryOpaque) {
        if let Err((e, _)) = result
            && let Ok(mut failed) = self.failed.lock()
        {
            failed.push((*tag, e.clone()));
        }
    }
}

/// An idempotent Kafka producer.
pub struct Producer {
    inner: BaseProducer<Deliveries>,
}

impl Producer {
    /// A producer for `brokers`, with the operator's librdkafka properties
    /// (which may override these defaults).
    pub fn new(brokers: &str, kafka: &KafkaProperties) -> Result<Producer> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("linger.ms", LINGER_MS);
        let inner = kafka
            .apply(&mut config)
            .create_with_context(Deliveries::default())
            .context("creating the Kafka producer")?;
        Ok(Producer { inner })
    }

    /// How many partitions `topic` has; an error if it does not exist.
    pub fn partitions(&self, topic: &str) -> Result<i32> {
        let metadata = self
            .inner
            .client()
            .fetch_metadata(Some(topic), BROKER_TIMEOUT)
            .with_context(|| format!("reading the metadata of topic {topic}"))?;
        let partitions = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map_or(0, |t| t.partitions().len() as i32);
        if partitions == 0 {
            bail!(
                "topic {topic} does not exist (create it first, e.g. with adtally gen --brokers)"
            );
        }
        Ok(partitions)
    }

    /// Queues `payload` for `topic`, to `partition` or by `key` (or
    /// anywhere), tagged `tag` for [`Producer::deliveries`]; waits while
    /// the queue is full. An error is librdkafka refusing the record.
    pub fn send(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        payload: &[u8],
        tag: usize,
    ) -> Result<(), KafkaError> {
        let mut rec = BaseRecord::<[u8], [u8], Box<usize>>::with_opaque_to(topic, Box::new(tag))
            .payload(payload);
        if let Some(p) = partition {
            rec = rec.partition(p);
        }
        if let Some(k) = key {
            rec = rec.key(k);
        }
        loop {
            match self.inner.send(rec) {
                Ok(()) => {
                    self.inner.poll(Duration::ZERO);
                    return Ok(());
                }
                Err((e, back)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    self.inner.poll(QUEUE_FULL_WAIT);
                    rec = back;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// Waits until every queued record's delivery report is in; returns the
    /// tags of the records that failed, with why.
    pub fn deliveries(&self) -> Result<Vec<(usize, KafkaError)>> {
        self.inner
            .flush(BROKER_TIMEOUT)
            .context("waiting for the broker to acknowledge the records")?;
        let mut failed = self.inner.context().failed.lock().expect("not poisoned");
        Ok(std::mem::take(&mut *failed))
    }
}

/// Creates `topic` with `partitions` partitions unless it exists.
pub async fn ensure_topic(brokers: &str, topic: &str, partitions: u32) -> Result<()> {
    let admin: AdminClient<_> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let new = NewTopic::new(topic, partitions as i32, TopicReplication::Fixed(1));
    let results = admin
        .create_topics(
            [&new],
            &AdminOptions::new().operation_timeout(Some(BROKER_TIMEOUT)),
        )
        .await?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => bail!("creating topic {t}: {e}"),
        }
    }
    Ok(())
}

/// Produces generated `records` to `topic`, each to its own partition, and
/// waits until the broker acknowledged every one.
pub fn produce(brokers: &str, topic: &str, records: &[GenRecord]) -> Result<()> {
    let producer = Producer::new(brokers, &KafkaProperties::default())?;
    for (i, r) in records.iter().enumerate() {
        producer
            .send(
                topic,
                Some(r.partition as i32),
                None,
                r.payload.as_bytes(),
                i,
            )
            .with_context(|| format!("producing to {topic}"))?;
    }
    if let Some((i, e)) = producer.deliveries()?.into_iter().min_by_key(|(i, _)| *i) {
        bail!("producing to {topic}: the broker did not acknowledge record {i}: {e}");
    }
    Ok(())
}
