//! Rows/s through the ClickHouse-native path: records inserted into
//! `adtally.ingest` and parsed, validated, keyed, windowed and filtered by
//! the core's UDFs in the views (raw events, invalid events, the per-minute
//! batch truth), against the same rows into a plain table of the same
//! shape, in one run. Blocks of 65,536 rows, as a Kafka engine hands them
//! over, with no setting in the request.
//!
//! `make wasm && cargo bench -p adtally-clickhouse-embedded --bench ingest`

use adtally_clickhouse_embedded::{EmbeddedClickHouse, install_schema};
use clickhouse::{Client, Compression, Row};
use serde::Serialize;
use std::time::Instant;

#[derive(Row, Serialize)]
struct Record {
    topic: &'static str,
    source_partition: u32,
    source_offset: i64,
    record_time_ms: Option<i64>,
    payload: String,
}

/// A Kafka engine's block.
const BLOCK: usize = 65_536;
const BLOCKS: usize = 8;

/// Record `n`: log lines of 2,000 ads over 32 partitions, one in 50 an
/// unknown country, one in 100 a repeat of the record before.
fn record(n: usize) -> Record {
    let base = 1_767_225_600_000i64;
    let m = if n % 100 == 99 { n - 1 } else { n };
    let t = base + m as i64 * 3;
    let country = if m % 50 == 0 {
        "XX"
    } else {
        ["USA", "DEU", "FRA"][m % 3]
    };
    Record {
        topic: "clicks",
        source_partition: (n % 32) as u32,
        source_offset: (n / 32) as i64,
        record_time_ms: Some(t),
        payload: format!(
            "ad{:05}, {t}, user{}, 10.{}.{}.{}, {country}",
            m % 2_000,
            m % 100_003,
            m % 256,
            (m / 256) % 256,
            m % 7
        ),
    }
}

async fn insert_all(client: &Client, db: &str, table: &str) -> anyhow::Result<f64> {
    let client = client.clone().with_database(db);
    let start = Instant::now();
    for b in 0..BLOCKS {
        let mut insert = client.insert::<Record>(table).await?;
        for i in 0..BLOCK {
            insert.write(&record(b * BLOCK + i)).await?;
        }
        insert.end().await?;
    }
    Ok(start.elapsed().as_secs_f64())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("adtally-ingest-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ch = EmbeddedClickHouse::start(&dir)?;
    install_schema(&ch.url())?;
    let client = Client::default()
        .with_url(ch.url())
        .with_compression(Compression::None);
    client
        .query(
            "CREATE TABLE plain (topic String, source_partition UInt32, source_offset Int64, \
             record_time_ms Nullable(Int64), payload String) ENGINE = MergeTree ORDER BY (source_partition, source_offset)",
        )
        .execute()
        .await?;
    let rows = (BLOCK * BLOCKS) as f64;
    println!(
        "{BLOCKS} blocks of {BLOCK} records (log lines, 2% invalid, 1% repeats), uncompressed RowBinary"
    );
    let plain = insert_all(&client, "default", "plain").await?;
    let views = insert_all(&client, "adtally", "ingest").await?;
    let count = |sql: &'static str| {
        let client = client.clone();
        async move { client.query(sql).fetch_one::<u64>().await }
    };
    let raw = count("SELECT count() FROM adtally.raw_events FINAL").await?;
    let invalid = count("SELECT count() FROM adtally.batch_invalid_events").await?;
    println!(
        "plain table      : {:>9.0} rows/s ({plain:.2} s)",
        rows / plain
    );
    println!(
        "through the views: {:>9.0} rows/s ({views:.2} s)",
        rows / views
    );
    println!("views / plain time ratio: {:.2}x", views / plain);
    println!("stored: {raw} raw events, {invalid} invalid events");
    // Every record is stored once by position, as a click (a repeat too:
    // raw events keep every record) or as invalid.
    let repeats = (0..BLOCK * BLOCKS).filter(|n| n % 100 == 99).count() as u64;
    anyhow::ensure!(
        raw + invalid == (BLOCK * BLOCKS) as u64 && invalid > 0,
        "the views stored {raw} raw and {invalid} invalid events of {rows} records ({repeats} repeats)"
    );
    Ok(())
}
