//! Reconciliation time: `adtally reconcile`'s comparison over 10 million
//! raw events (about 15 minutes of the design's average traffic, 1 billion
//! clicks a day), against one plain scan of the same raw events, in one run.
//!
//! `cargo bench -p adtally-host --bench reconcile` (needs `make setup wasm`).
//! The tables are filled by SQL, as the views and a host would have filled
//! them (the fill is not timed): clicks over 2 million ads with a skewed
//! (log-uniform) popularity, 32 partitions keyed by ad, 1% duplicates, and
//! 0.5% late clicks the stream side-lined, so that about as many cells
//! differ and each is explained.

use adtally_clickhouse_embedded::EmbeddedClickHouse;
use adtally_core::WindowStart;
use adtally_host::reconcile;
use std::time::Instant;

/// Raw events; `ADTALLY_BENCH_RECORDS` overrides.
fn records() -> u64 {
    std::env::var("ADTALLY_BENCH_RECORDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000_000)
}

const START: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const SPAN_MS: i64 = 15 * 60_000;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let tmp = std::env::temp_dir().join(format!("adtally-reconcile-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let ch = EmbeddedClickHouse::start(&tmp)?;
    adtally_clickhouse_embedded::install_schema(&ch.url())?;
    let client = adtally_host::sink::client(&ch.url()).with_database("adtally");
    let n = records();
    let fill = Instant::now();
    // Record `number` repeats record `number - 1` every 100th record (a
    // duplicate: another position, the same click); every 200th from the
    // 7th is late.
    client
        .query(&format!(
            "INSERT INTO raw_events (event_key, ad_id, click_ts, user_id, ip, country, event_id, window_start, \
             filter_ids, semantics_version, topic, source_partition, source_offset, record_time_ms, payload) \
             SELECT toFixedString(lower(hex(MD5(toString(k)))), 32), ad, fromUnixTimestamp64Milli(ms, 'UTC'), \
                    concat('user', toString(k % 1000000)), '10.0.0.1', 'USA', concat('e', toString(k)), \
                    fromUnixTimestamp64Milli(intDiv(ms, 60000) * 60000, 'UTC'), [0], 4, 'clicks', \
                    cityHash64(ad) % 32, number, NULL, \
                    concat(ad, ', ', toString(ms), ', user', toString(k % 1000000), ', 10.0.0.1, USA, e', toString(k)) \
             FROM (SELECT number, toUInt64(if(number % 100 = 0 AND number > 0, number - 1, number)) AS k, \
                          concat('ad', toString(toUInt32(pow(2000000, (intHash64(k) % 1000000) / 1e6)))) AS ad, \
                          {START} + intDiv(k * {SPAN_MS}, {n}) AS ms \
                   FROM numbers({n}))"
        ))
        .execute()
        .await?;
    client
        .query(
            "INSERT INTO late_events (topic, source_partition, source_offset, event_key, ad_id, click_ts, \
             window_start, watermark, module_sha256) \
             SELECT topic, source_partition, source_offset, event_key, ad_id, click_ts, window_start, \
                    window_start + 3600, 'bench' FROM raw_events WHERE source_offset % 200 = 7",
        )
        .execute()
        .await?;
    client
        .query(
            "INSERT INTO batch_minute_counts SELECT window_start, ad_id, 0, uniqExactState(event_key) \
             FROM raw_events GROUP BY window_start, ad_id",
        )
        .execute()
        .await?;
    client
        .query(
            "INSERT INTO rollups (window_start, ad_id, filter_id, topic, source_partition, clicks, version, module_sha256) \
             SELECT window_start, ad_id, 0, 'clicks', source_partition, uniqExact(event_key), 1, 'bench' \
             FROM raw_events WHERE source_offset % 200 != 7 GROUP BY window_start, ad_id, source_partition",
        )
        .execute()
        .await?;
    let cells: u64 = client
        .query("SELECT count() FROM batch_clicks_per_minute")
        .fetch_one()
        .await?;
    println!(
        "{n} raw events, {cells} (minute, ad) cells, filled in {:.1} s",
        fill.elapsed().as_secs_f64()
    );

    let scan = Instant::now();
    let keys: u64 = client
        .query("SELECT uniqExact(event_key) FROM raw_events")
        .fetch_one()
        .await?;
    let scan_secs = scan.elapsed().as_secs_f64();
    println!("one scan of the raw events (uniqExact of their keys, {keys}): {scan_secs:.2} s");
    for chunk_minutes in [15, 5] {
        let opts = reconcile::Options {
            range: reconcile::Range::new(WindowStart(START), WindowStart(START + SPAN_MS))?,
            filters: vec![],
            chunk_minutes,
            set: None,
        };
        let t = Instant::now();
        let summary =
            reconcile::reconcile(&client, "adtally", &opts, |_| Ok(()), |_, _| {}).await?;
        let secs = t.elapsed().as_secs_f64();
        anyhow::ensure!(
            summary.unexplained == 0,
            "{}",
            reconcile::report::line(opts.range, &summary)
        );
        println!(
            "reconcile, {chunk_minutes}-minute chunks: {secs:.2} s ({:.0} raw events/s, {:.1}x the scan): {}",
            n as f64 / secs,
            secs / scan_secs,
            reconcile::report::line(opts.range, &summary)
        );
    }
    drop(ch);
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}
