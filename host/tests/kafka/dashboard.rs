//! The dashboard in headless Chromium (Debian's `chromium` and
//! `chromium-driver`, through WebDriver) against the real stack: Tansu,
//! `adtally run` with its metrics, the embedded ClickHouse, `adtally serve`.

use super::api::{free_port, native_top, serve, sum, wait_held};
use super::*;
use fantoccini::{ClientBuilder, Locator};

/// A running chromedriver; stopped when dropped.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chromedriver(port: u16) -> Driver {
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (Debian's chromium-driver; `make setup` installs it)");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "chromedriver never listened"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Driver(child)
}

/// The text of every cell of a table's body, row by row.
const TABLE: &str = "return [...document.querySelectorAll(arguments[0] + ' tbody tr')]\
     .map(tr => [...tr.children].map(td => td.textContent));";

/// The page shows the top ads the core ranks natively for the window and
/// filter chosen (the partitions' lists merged in the browser by the core's
/// browser build), the chart of the most clicked ad with its clicks over
/// the last hour, and each host's records, duplicates and invalid records
/// as the generator made them; a screenshot goes to docs/dashboard.png.
#[test]
fn the_dashboard_shows_the_expected_ads_and_counts() {
    let s = setup_topic("kafka-dashboard", memory);
    let g = adtally_host::generator::generate(adtally_host::generator::GenConfig {
        records: 60_000,
        ..Default::default()
    });
    let config = r#"{"filters": [{"id": 1, "name": "Germany", "country": ["DEU"]}]}"#;
    let config_path = s.tmp.join("config.json");
    std::fs::write(&config_path, config).unwrap();
    let native = natively(&g.records, config, |_| true);
    produce_live(s.broker.addr(), g.records.clone(), 1, Duration::ZERO)
        .join()
        .unwrap();
    let metrics_port = free_port();
    let mut args = with_idle(run_args(&s), 600);
    args.extend([
        "--config".into(),
        config_path.to_str().unwrap().into(),
        "--metrics-listen".into(),
        format!("127.0.0.1:{metrics_port}"),
    ]);
    let mut run = spawn_run(&args);
    wait_consumed(&s, g.records.len() as u64 - 1, "the stream");
    let url = s.ch.url();
    let host_metrics = format!("http://127.0.0.1:{metrics_port}/metrics");
    let server = serve(&[
        "--clickhouse",
        &url,
        "--config",
        config_path.to_str().unwrap(),
        "--host-metrics",
        &host_metrics,
        "--memory-minutes",
        "10",
    ]);
    let last = *native.keys().map(|(w, _, _)| w).max().unwrap();
    let end = wait_held(&server.base, last, |end| end - 60_000);
    let (want_ads, want_counts) = native_top(&native, 1, end - 5 * 60_000, end, 10);
    let chart_ad = want_ads[0].clone();
    let chart_total = sum(&native, &chart_ad, 1, end - 60 * 60_000, end);

    let driver_port = free_port();
    let _driver = chromedriver(driver_port);
    let profile = s.tmp.join("chromium-profile");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                         "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync",
                         "--window-size=1280,900",
                         format!("--user-data-dir={}", profile.display())],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{driver_port}"))
            .await
            .expect("a Chromium session");
        client
            .goto(&format!("{}/?window=5&filter=1&count=10", server.base))
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let (ranking, total_text, hosts) = loop {
            let ranking: Vec<Vec<String>> = serde_json::from_value(
                client
                    .execute(TABLE, vec!["#top-ads".into()])
                    .await
                    .unwrap(),
            )
            .unwrap();
            let total_text = client
                .find(Locator::Id("chart-total"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let hosts: Vec<Vec<String>> =
                serde_json::from_value(client.execute(TABLE, vec!["#hosts".into()]).await.unwrap())
                    .unwrap();
            let error = client
                .find(Locator::Id("error"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            assert!(error.is_empty(), "the page says: {error}");
            if ranking.len() == 10
                && !total_text.is_empty()
                && hosts.len() == 1
                && hosts[0][2] != "0"
            {
                break (ranking, total_text, hosts);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the page never filled: {ranking:?} {total_text:?} {hosts:?}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        for (i, row) in ranking.iter().enumerate() {
            assert_eq!(row[1], want_ads[i], "rank {}: {ranking:?}", i + 1);
            assert_eq!(
                row[2],
                want_counts[i].to_string(),
                "rank {}: {ranking:?}",
                i + 1
            );
        }
        assert!(
            total_text.starts_with(&format!("{chart_ad}: {chart_total} clicks")),
            "{total_text} (want {chart_ad}: {chart_total})"
        );
        let series: Vec<(i64, u64)> = serde_json::from_str(
            client
                .execute(
                    "return document.getElementById('chart').dataset.series;",
                    vec![],
                )
                .await
                .unwrap()
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(series.len(), 60);
        for (w, c) in &series {
            assert_eq!(*c, sum(&native, &chart_ad, 1, *w, w + 60_000), "minute {w}");
        }
        // records, duplicates, late, invalid as the host counted them.
        let h = &hosts[0];
        assert_eq!(h[2], g.records.len().to_string(), "{h:?}");
        assert_eq!(h[3], g.duplicates.to_string(), "{h:?}");
        assert_eq!(h[5], g.invalid.to_string(), "{h:?}");
        assert!(h[6].contains("semantics"), "{h:?}");
        let png = client.screenshot().await.unwrap();
        std::fs::write(root().join("docs/dashboard.png"), png).unwrap();
        client.close().await.unwrap();
    });
    let _ = run.kill();
    let _ = run.wait();
}
