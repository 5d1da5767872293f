//! `adtally serve` under a dashboard's read load, while a host ingests.
//!
//! `cargo bench -p adtally-host --bench serve` (needs `make setup wasm`).
//! Rollups for 60 minutes of the design's average traffic are written into
//! an embedded ClickHouse directly: 700,000 clicks a minute (42 million in
//! the hour) over 2 million ads of Zipf popularity (s = 1), 32 partitions,
//! every minute final. `adtally serve` holds the 60 minutes in memory.
//! Meanwhile `adtally run` ingests a generated stream (Tansu, a second
//! embedded ClickHouse) on the same 2 cores. Measured, one scenario after
//! another, each for `ADTALLY_BENCH_SECONDS` (6) with 16 connections on
//! loopback: `/v1/ping` (the server's ceiling: no state, no ClickHouse),
//! API 1 for random ads over the last minute and the last 60 minutes, API 2
//! for a precomputed window (5) and another (15). Printed: requests/s,
//! p50, p99, and each scenario's requests/s as a ratio of the ceiling.

use adtally_broker::LocalBroker;
use adtally_clickhouse_embedded::EmbeddedClickHouse;
use adtally_host::{generator, producer};
use axum::body::Bytes;
use http_body_util::{BodyExt, Empty};
use rand::{RngExt, SeedableRng};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// 2026-01-01T00:00:00Z, the first minute of the hour written.
const T0: i64 = 1_767_225_600_000;
const MINUTES: i64 = 60;
const PARTITIONS: u32 = 32;
const CONNECTIONS: usize = 16;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn sql(url: &str, q: &str) -> anyhow::Result<String> {
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", url, "--data-binary", q])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    anyhow::ensure!(out.status.success(), "{q}: {text}");
    Ok(text)
}

/// The yyyyMMddHHmm form of a minute.
fn compact(ms: i64) -> String {
    adtally_host::query::minute_text(adtally_core::WindowStart(ms)).replace(['-', 'T', ':'], "")
        [..12]
        .to_string()
}

/// The hour of rollups, its top-N rows, and every partition's watermark
/// past its end.
fn fill(url: &str, ads: u64, clicks_per_minute: u64) -> anyhow::Result<()> {
    // Ad of rank r gets clicks_per_minute / (r * H) clicks a minute on
    // average (H: the harmonic number of `ads`), rounded up or down at random
    // so that the mean is exact.
    let h: f64 = (1..=ads).map(|r| 1.0 / r as f64).sum();
    sql(
        url,
        &format!(
            "INSERT INTO adtally.rollups (window_start, ad_id, filter_id, topic, source_partition, clicks, version, module_sha256, rollup_set) \
             SELECT fromUnixTimestamp64Milli(toInt64({T0} + m * 60000), 'UTC'), concat('ad', leftPad(toString(r), 7, '0')), 0, 'clicks', \
                    toUInt32(r % {PARTITIONS}), c, 1, 'bench', '' \
             FROM (SELECT intDiv(number, {ads}) AS m, number % {ads} + 1 AS r, {clicks_per_minute} / (r * {h}) AS l, \
                          toUInt64(floor(l) + (randCanonical() < l - floor(l))) AS c FROM numbers({})) \
             WHERE c > 0 SETTINGS max_insert_threads = 2",
            ads * MINUTES as u64
        ),
    )?;
    let last = T0 + (MINUTES - 1) * 60_000;
    for window in [1, 5] {
        sql(
            url,
            &format!(
                "INSERT INTO adtally.most_clicked_ads (window_minutes, update_time_minute, filter_id, topic, source_partition, version, most_clicked_ads, module_sha256, rollup_set) \
                 SELECT {window}, fromUnixTimestamp64Milli({last}, 'UTC'), 0, 'clicks', source_partition, 1, \
                        arraySlice(arraySort(x -> (-toInt64(x.2), x.1), groupArray((ad_id, c))), 1, 100), 'bench', '' \
                 FROM (SELECT source_partition, ad_id, sum(clicks) AS c FROM adtally.rollups \
                       WHERE window_start > fromUnixTimestamp64Milli({}, 'UTC') AND window_start <= fromUnixTimestamp64Milli({last}, 'UTC') \
                       GROUP BY source_partition, ad_id) \
                 GROUP BY source_partition",
                last - window * 60_000
            ),
        )?;
    }
    let watermark = T0 + MINUTES * 60_000 + 30_000;
    sql(
        url,
        &format!(
            "INSERT INTO adtally.consumer_offsets (topic, partition, next_offset, watermark_ms, module_sha256) \
             SELECT 'clicks', toUInt32(number), 1, {watermark}, 'bench' FROM numbers({PARTITIONS})"
        ),
    )?;
    Ok(())
}

/// Results of one scenario.
struct Measured {
    requests: u64,
    errors: u64,
    per_s: f64,
    p50: Duration,
    p99: Duration,
}

/// `path_of` requests from `CONNECTIONS` connections for `seconds`.
async fn measure(
    base: &str,
    seconds: u64,
    path_of: impl Fn(&mut rand::rngs::StdRng) -> String + Clone + Send + 'static,
) -> Measured {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for worker in 0..CONNECTIONS {
        let (client, base, path_of) = (client.clone(), base.to_string(), path_of.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(worker as u64);
            let (mut latencies, mut errors) = (Vec::new(), 0u64);
            while Instant::now() < until {
                let uri: axum::http::Uri = format!("{base}{}", path_of(&mut rng)).parse().unwrap();
                let t = Instant::now();
                match client.get(uri).await {
                    Ok(res) => {
                        let ok = res.status().is_success();
                        let _ = res.into_body().collect().await;
                        if ok {
                            latencies.push(t.elapsed());
                        } else {
                            errors += 1;
                        }
                    }
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        errors += e;
    }
    let took = started.elapsed().as_secs_f64();
    all.sort();
    let at = |q: f64| {
        all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Measured {
        requests: all.len() as u64,
        errors,
        per_s: all.len() as f64 / took,
        p50: at(0.50),
        p99: at(0.99),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let ads = env_or("ADTALLY_BENCH_ADS", 2_000_000);
    let seconds = env_or("ADTALLY_BENCH_SECONDS", 6);
    let ingest = env_or("ADTALLY_BENCH_INGEST", 3_000_000) as usize;
    let tmp = std::env::temp_dir().join(format!("adtally-serve-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;

    // The rollups served.
    let ch = EmbeddedClickHouse::start(&tmp.join("clickhouse"))?;
    adtally_clickhouse_embedded::install_schema(&ch.url())?;
    let t = Instant::now();
    fill(&ch.url(), ads, 700_000)?;
    let totals = sql(
        &ch.url(),
        "SELECT count(), sum(clicks), uniqExact(ad_id) FROM adtally.rollups FORMAT TSV",
    )?;
    eprintln!(
        "serve bench: rollups written in {:.0?}: cells, clicks, ads = {}",
        t.elapsed(),
        totals.trim()
    );

    // The stream a host ingests meanwhile, into a ClickHouse of its own.
    let kafka = LocalBroker::start("memory://tansu/", &tmp)?;
    let ingest_ch = EmbeddedClickHouse::start(&tmp.join("clickhouse-ingest"))?;
    adtally_clickhouse_embedded::install_schema(&ingest_ch.url())?;
    let g = generator::generate(generator::GenConfig {
        records: ingest,
        ..generator::GenConfig::default()
    });
    producer::ensure_topic(kafka.addr(), "clicks", 4).await?;
    let (addr, recs) = (kafka.addr().to_string(), g.records);
    tokio::task::spawn_blocking(move || producer::produce(&addr, "clicks", &recs)).await??;

    let adtally = env!("CARGO_BIN_EXE_adtally");
    let mut server = Command::new(adtally)
        .current_dir(&root)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--clickhouse",
            &ch.url(),
            "--memory-minutes",
            "60",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(server.stderr.take().unwrap()).lines();
    let base = loop {
        let line = lines.next().expect("serve exited")?;
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let (from, to) = (compact(T0), compact(T0 + MINUTES * 60_000));
    let last = compact(T0 + (MINUTES - 1) * 60_000);
    let t = Instant::now();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    loop {
        let uri =
            format!("{base}/v1/ads/ad0000001/aggregated_count?from={from}&to={to}").parse()?;
        let body = client
            .get(uri)
            .await?
            .into_body()
            .collect()
            .await?
            .to_bytes();
        if String::from_utf8_lossy(&body).contains("\"source\":\"memory\"") {
            break;
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(600),
            "serve never held the hour"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "serve bench: the hour held in memory after {:.0?}",
        t.elapsed()
    );

    let mut run = Command::new(adtally)
        .current_dir(&root)
        .args([
            "run",
            "--brokers",
            kafka.addr(),
            "--clickhouse",
            &ingest_ch.url(),
            "--exit-when-idle",
            "5",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let random_ad =
        move |rng: &mut rand::rngs::StdRng| format!("ad{:07}", rng.random_range(1..=ads));
    let mut results = Vec::new();
    results.push((
        "GET /v1/ping (ceiling)",
        measure(&base, seconds, |_| "/v1/ping".to_string()).await,
    ));
    let (l, t_) = (last.clone(), to.clone());
    results.push((
        "API 1, random ad, last minute",
        measure(&base, seconds, move |rng| {
            format!(
                "/v1/ads/{}/aggregated_count?from={l}&to={t_}",
                random_ad(rng)
            )
        })
        .await,
    ));
    let (f, t_) = (from.clone(), to.clone());
    results.push((
        "API 1, random ad, last 60 minutes",
        measure(&base, seconds, move |rng| {
            format!(
                "/v1/ads/{}/aggregated_count?from={f}&to={t_}",
                random_ad(rng)
            )
        })
        .await,
    ));
    results.push((
        "API 2, window 5 (precomputed), top 10",
        measure(&base, seconds, |_| {
            "/v1/ads/popular_ads?count=10&window=5".to_string()
        })
        .await,
    ));
    results.push((
        "API 2, window 15 (ranked from memory), top 10",
        measure(&base, seconds, |_| {
            "/v1/ads/popular_ads?count=10&window=15".to_string()
        })
        .await,
    ));
    let ingesting = run.try_wait()?.is_none();
    let _ = run.kill();
    let _ = run.wait();
    let _ = server.kill();
    let _ = server.wait();
    let ingested = sql(
        &ingest_ch.url(),
        "SELECT sum(next_offset) FROM adtally.consumer_offsets FINAL FORMAT TSV",
    )?;

    let ceiling = results[0].1.per_s;
    println!(
        "{:<48} {:>10} {:>8} {:>10} {:>10} {:>10} {:>8}",
        "scenario", "requests", "errors", "per s", "p50", "p99", "ceiling"
    );
    for (name, m) in &results {
        println!(
            "{:<48} {:>10} {:>8} {:>10.0} {:>10.2?} {:>10.2?} {:>8.2}",
            name,
            m.requests,
            m.errors,
            m.per_s,
            m.p50,
            m.p99,
            m.per_s / ceiling
        );
    }
    println!(
        "{CONNECTIONS} connections, {seconds} s each; the host was {} the whole time ({} records ingested)",
        if ingesting {
            "ingesting"
        } else {
            "NOT ingesting"
        },
        ingested.trim()
    );
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}
