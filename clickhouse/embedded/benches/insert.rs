//! Insert throughput through the embedded ClickHouse: RowBinary batches
//! from the `clickhouse` crate, LZ4 (the crate's default) and uncompressed.
//!
//! `cargo bench -p adtally-clickhouse-embedded --bench insert`

use adtally_clickhouse_embedded::EmbeddedClickHouse;
use clickhouse::{Client, Compression, Row};
use serde::Serialize;
use std::time::Instant;

#[derive(Row, Serialize)]
struct Rollup {
    window_start: i64,
    ad_id: String,
    filter_id: u32,
    source_partition: u32,
    clicks: u64,
    version: u32,
}

const BATCH: usize = 50_000;
const BATCHES: usize = 10;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("adtally-insert-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ch = EmbeddedClickHouse::start(&dir)?;
    println!("{BATCHES} batches of {BATCH} rows (6 columns, RowBinary) per run");
    for (name, compression) in [("lz4", Compression::Lz4), ("none", Compression::None)] {
        let client = Client::default()
            .with_url(ch.url())
            .with_compression(compression);
        client.query("DROP TABLE IF EXISTS bench").execute().await?;
        client
            .query("CREATE TABLE bench (window_start Int64, ad_id String, filter_id UInt32, source_partition UInt32, clicks UInt64, version UInt32) ENGINE = MergeTree ORDER BY (window_start, ad_id)")
            .execute()
            .await?;
        let start = Instant::now();
        for b in 0..BATCHES {
            let mut insert = client.insert::<Rollup>("bench").await?;
            for i in 0..BATCH {
                let n = b * BATCH + i;
                insert
                    .write(&Rollup {
                        window_start: (n / 10_000) as i64 * 60_000,
                        ad_id: format!("ad{:07}", n % 2_000_000),
                        filter_id: (n % 3) as u32,
                        source_partition: (n % 4) as u32,
                        clicks: n as u64 % 97,
                        version: 1,
                    })
                    .await?;
            }
            insert.end().await?;
        }
        let secs = start.elapsed().as_secs_f64();
        let rows = (BATCH * BATCHES) as f64;
        let n = client
            .query("SELECT count() FROM bench")
            .fetch_one::<u64>()
            .await?;
        assert_eq!(n as f64, rows);
        println!(
            "compression {name:>4}: {:>10.0} rows/s ({secs:.2} s)",
            rows / secs
        );
    }
    Ok(())
}
