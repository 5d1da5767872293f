//! Writing the core's outputs to ClickHouse, each row tagged with the
//! SHA-256 of the module that computed it.
//!
//! Rollups, top-N rows and side outputs are versioned or keyed by source
//! position, so writing the same outputs twice (a retry, a replay after a
//! crash) never changes a count.

use adtally_core::{Offset, Outputs, Partition};
use adtally_runtime::RecordBatch;
use anyhow::{Context, Result};
use clickhouse::{Client, Row, RowWrite};
use serde::Serialize;

#[derive(Row, Serialize)]
struct RollupRow<'a> {
    window_start: i64,
    ad_id: &'a str,
    filter_id: u32,
    topic: &'a str,
    source_partition: u32,
    clicks: u64,
    version: u32,
    module_sha256: &'a str,
    rollup_set: &'a str,
}

#[derive(Row, Serialize)]
struct TopNRowOut<'a> {
    window_minutes: u32,
    update_time_minute: i64,
    filter_id: u32,
    topic: &'a str,
    source_partition: u32,
    version: u32,
    most_clicked_ads: Vec<(&'a str, u64)>,
    module_sha256: &'a str,
    rollup_set: &'a str,
}

#[derive(Row, Serialize)]
struct LateRow<'a> {
    topic: &'a str,
    source_partition: u32,
    source_offset: i64,
    event_key: [u8; 32],
    ad_id: &'a str,
    click_ts: i64,
    window_start: i64,
    watermark: i64,
    module_sha256: &'a str,
    rollup_set: &'a str,
}

#[derive(Row, Serialize)]
struct InvalidRow<'a> {
    topic: &'a str,
    source_partition: u32,
    source_offset: i64,
    reason: String,
    #[serde(with = "serde_bytes")]
    payload: &'a [u8],
    rollup_set: &'a str,
}

#[derive(Row, Serialize)]
struct RecordRow<'a> {
    topic: &'a str,
    source_partition: u32,
    source_offset: i64,
    record_time_ms: Option<i64>,
    #[serde(with = "serde_bytes")]
    payload: &'a [u8],
}

#[derive(Row, Serialize)]
struct SnapshotRow<'a> {
    topic: &'a str,
    source_partition: u32,
    next_offset: i64,
    semantics_version: u32,
    module_sha256: &'a str,
    #[serde(with = "serde_bytes")]
    state: &'a [u8],
}

#[derive(Row, serde::Deserialize)]
struct StoredSnapshot {
    next_offset: i64,
    #[serde(with = "serde_bytes")]
    state: Vec<u8>,
}

/// A partition's state as stored, and the offset it covers.
pub struct Snapshot {
    /// The first record not in the state.
    pub next_offset: Offset,
    /// The core's snapshot bytes.
    pub state: Vec<u8>,
}

#[derive(Row, Serialize)]
struct OffsetRow<'a> {
    topic: &'a str,
    partition: u32,
    next_offset: i64,
    watermark_ms: Option<i64>,
    module_sha256: &'a str,
}

/// Where a partition's core stands once a batch's rows are written: the
/// offset they cover and the watermark `W_p` after them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// The first offset not covered.
    pub next_offset: Offset,
    /// `W_p`, once the partition has one.
    pub watermark: Option<i64>,
}

/// An event key as the 32 hex digits of a FixedString(32).
fn hex32(key: adtally_core::EventKey) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(key.to_string().as_bytes());
    out
}

/// TCP keepalive on the ClickHouse connections: a dead server is noticed
/// without a write.
const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(60);
/// How long an unused connection stays open: the server closes idle
/// connections itself after a few seconds, and a write on one it closed
/// fails.
const POOL_IDLE: std::time::Duration = std::time::Duration::from_secs(2);

/// A ClickHouse client whose connections send small writes at once
/// (`TCP_NODELAY`): an insert ends with a small chunk, and Nagle's algorithm
/// would hold it until the server's delayed ACK (40 ms on Linux), per insert.
pub fn client(url: &str) -> Client {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_keepalive(Some(KEEPALIVE));
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .build(connector);
    Client::with_http_client(http).with_url(url)
}

/// Where the outputs go.
#[derive(Clone)]
pub struct Sink {
    client: Client,
    db: String,
    topic: String,
    module_sha256: String,
    rollup_set: String,
}

impl Sink {
    /// A sink into database `db` of the ClickHouse at `url`.
    pub fn new(
        url: &str,
        db: &str,
        topic: &str,
        module_sha256: &str,
        compress: bool,
        auth: &crate::connect::ClickHouseAuth,
    ) -> Sink {
        let client = auth.apply(client(url)).with_database(db);
        let client = if compress {
            client
        } else {
            client.with_compression(clickhouse::Compression::None)
        };
        Sink {
            client,
            db: db.into(),
            topic: topic.into(),
            module_sha256: module_sha256.into(),
            rollup_set: String::new(),
        }
    }

    /// This sink, writing its outputs (rollups, rankings, side outputs)
    /// into rollup set `set` instead of the live stream's (`''`): a replay.
    pub fn into_rollup_set(self, set: &str) -> Sink {
        Sink {
            rollup_set: set.into(),
            ..self
        }
    }

    /// Stores partition `p`'s state covering the records before `next_offset`.
    /// Call only once every row of those records was acknowledged.
    pub async fn write_snapshot(
        &self,
        p: Partition,
        next_offset: Offset,
        semantics_version: u32,
        state: &[u8],
    ) -> Result<()> {
        self.insert::<SnapshotRow>(
            "snapshots",
            &[SnapshotRow {
                topic: &self.topic,
                source_partition: p.0,
                next_offset: next_offset.0,
                semantics_version,
                module_sha256: &self.module_sha256,
                state,
            }],
        )
        .await
        .with_context(|| format!("writing the snapshot of partition {}", p.0))
    }

    /// The latest stored state of partition `p` under `semantics_version`.
    pub async fn load_snapshot(
        &self,
        p: Partition,
        semantics_version: u32,
    ) -> Result<Option<Snapshot>> {
        let row = self
            .client
            .query(
                "SELECT next_offset, state FROM snapshots \
                 WHERE topic = ? AND source_partition = ? AND semantics_version = ? \
                 ORDER BY next_offset DESC LIMIT 1",
            )
            .bind(&self.topic)
            .bind(p.0)
            .bind(semantics_version)
            .fetch_optional::<StoredSnapshot>()
            .await
            .with_context(|| format!("reading the snapshot of partition {}", p.0))?;
        Ok(row.map(|r| Snapshot {
            next_offset: Offset(r.next_offset),
            state: r.state,
        }))
    }

    /// Deletes every stored state of partition `p` under
    /// `semantics_version`: the operator chose to start the partition
    /// afresh (`--unrestorable-snapshot`), and a refused snapshot at a
    /// higher offset must not shadow the new ones.
    pub async fn discard_snapshots(&self, p: Partition, semantics_version: u32) -> Result<()> {
        self.client
            .query(
                "ALTER TABLE snapshots DELETE \
                 WHERE topic = ? AND source_partition = ? AND semantics_version = ? \
                 SETTINGS mutations_sync = 2",
            )
            .bind(&self.topic)
            .bind(p.0)
            .bind(semantics_version)
            .execute()
            .await
            .with_context(|| format!("discarding the snapshots of partition {}", p.0))
    }

    /// Offsets of partition `p` quarantined earlier (by any consumer).
    pub async fn quarantined(&self, p: Partition) -> Result<Vec<Offset>> {
        let offsets = self
            .client
            .query(
                "SELECT source_offset FROM invalid_events \
                 WHERE topic = ? AND source_partition = ? AND rollup_set = '' \
                 AND startsWith(reason, 'module_trap')",
            )
            .bind(&self.topic)
            .bind(p.0)
            .fetch_all::<i64>()
            .await
            .with_context(|| format!("reading the quarantined records of partition {}", p.0))?;
        Ok(offsets.into_iter().map(Offset).collect())
    }

    /// Side-lines a record the module could not process (it trapped on it
    /// on its own), with the error, in `invalid_events`.
    pub async fn write_quarantined(
        &self,
        p: Partition,
        offset: Offset,
        payload: &[u8],
        error: &str,
    ) -> Result<()> {
        self.insert::<InvalidRow>(
            "invalid_events",
            &[InvalidRow {
                topic: &self.topic,
                source_partition: p.0,
                source_offset: offset.0,
                reason: format!("module_trap: {error}"),
                payload,
                rollup_set: &self.rollup_set,
            }],
        )
        .await
        .context("writing a quarantined record")
    }

    /// The client, for queries.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The database written to.
    pub fn db(&self) -> &str {
        &self.db
    }

    /// One insert of `rows` into `table`, acknowledged (none when empty).
    async fn insert<R: RowWrite>(&self, table: &str, rows: &[R::Value<'_>]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut ins = self.client.insert::<R>(table).await?;
        for r in rows {
            ins.write(r).await?;
        }
        ins.end()
            .await
            .with_context(|| format!("writing {} rows to {}.{table}", rows.len(), self.db))
    }

    /// Writes records as they were read into `ingest`, the ClickHouse-native
    /// path: its views store each record's raw event or invalid event and
    /// the per-minute batch truth, computed by the core's UDFs. Writing a
    /// record again (a replay after a crash) changes none of them: raw and
    /// invalid events are replaced by source position, and the batch truth
    /// counts distinct keys.
    pub async fn write_records(&self, batches: &[(Partition, RecordBatch)]) -> Result<()> {
        let rows: Vec<RecordRow> = batches
            .iter()
            .flat_map(|(_, b)| b.records())
            .map(|r| RecordRow {
                topic: &self.topic,
                source_partition: r.partition.0,
                source_offset: r.offset.0,
                record_time_ms: r.record_time_ms,
                payload: r.payload,
            })
            .collect();
        self.insert::<RecordRow>("ingest", &rows).await
    }

    /// Records where the consumer stands, after the rows it covers were
    /// written: the offsets, and the watermarks readers take finality from.
    pub async fn write_offsets(
        &self,
        next: &std::collections::BTreeMap<Partition, Progress>,
    ) -> Result<()> {
        let rows: Vec<OffsetRow> = next
            .iter()
            .map(|(partition, at)| OffsetRow {
                topic: &self.topic,
                partition: partition.0,
                next_offset: at.next_offset.0,
                watermark_ms: at.watermark,
                module_sha256: &self.module_sha256,
            })
            .collect();
        self.insert::<OffsetRow>("consumer_offsets", &rows).await
    }

    /// Writes the outputs of each partition's core, one insert per table;
    /// returns when ClickHouse acknowledged all of it.
    pub async fn write(&self, outs: &[(Partition, Outputs)]) -> Result<()> {
        let sha = self.module_sha256.as_str();
        let rollups: Vec<RollupRow> = outs
            .iter()
            .flat_map(|(_, o)| &o.rollups)
            .map(|r| RollupRow {
                window_start: r.window_start.0,
                ad_id: r.ad_id.as_str(),
                filter_id: r.filter_id.0,
                topic: &self.topic,
                source_partition: r.partition.0,
                clicks: r.clicks,
                version: r.version,
                module_sha256: sha,
                rollup_set: &self.rollup_set,
            })
            .collect();
        self.insert::<RollupRow>("rollups", &rollups).await?;
        let mut top_n: Vec<TopNRowOut> = Vec::new();
        for (p, o) in outs {
            for t in &o.top_n {
                top_n.push(TopNRowOut {
                    window_minutes: t.windows,
                    update_time_minute: t.minute.0,
                    filter_id: t.filter_id.0,
                    topic: &self.topic,
                    source_partition: p.0,
                    version: t.version,
                    most_clicked_ads: t.ads.iter().map(|a| (a.ad_id.as_str(), a.clicks)).collect(),
                    module_sha256: sha,
                    rollup_set: &self.rollup_set,
                });
            }
        }
        self.insert::<TopNRowOut>("most_clicked_ads", &top_n)
            .await?;
        let late: Vec<LateRow> = outs
            .iter()
            .flat_map(|(_, o)| &o.late)
            .map(|l| LateRow {
                topic: &self.topic,
                source_partition: l.partition.0,
                source_offset: l.offset.0,
                event_key: hex32(l.key),
                ad_id: l.click.ad_id.as_str(),
                click_ts: l.click.timestamp.0,
                window_start: l.window_start.0,
                watermark: l.watermark,
                module_sha256: sha,
                rollup_set: &self.rollup_set,
            })
            .collect();
        self.insert::<LateRow>("late_events", &late).await?;
        let invalid: Vec<InvalidRow> = outs
            .iter()
            .flat_map(|(_, o)| &o.invalid)
            .map(|i| InvalidRow {
                topic: &self.topic,
                source_partition: i.partition.0,
                source_offset: i.offset.0,
                reason: i.reason.code().to_string(),
                payload: &i.payload,
                rollup_set: &self.rollup_set,
            })
            .collect();
        self.insert::<InvalidRow>("invalid_events", &invalid).await
    }
}
