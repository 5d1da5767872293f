//! `adtally serve` against the real stack: a generated stream through Tansu
//! and `adtally run` into the embedded ClickHouse, then the two APIs asked
//! over HTTP with curl, every answer compared with the core run natively
//! on the same records.

use super::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};

/// A running `adtally serve` and where it listens; stopped when dropped.
pub(super) struct Server {
    child: Child,
    pub(super) base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(super) fn serve(args: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_adtally"))
        .current_dir(root())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let base = loop {
        let line = lines
            .next()
            .expect("serve exited before listening")
            .unwrap();
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    // Keep reading its log, so that it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Server { child, base }
}

/// GET `path` with curl: (status, body).
pub(super) fn get(base: &str, path: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"])
        .arg(format!("{base}{path}"))
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap_or(0), body.to_string())
}

pub(super) fn get_json(base: &str, path: &str) -> Value {
    let (code, body) = get(base, path);
    assert_eq!(code, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Waits (bounded) until the server calls final the minutes up to a few
/// past `last` (the stream's closing heartbeats' minute) and answers
/// `[probe_from(end), end)` from memory; returns `end`, the first minute
/// not final.
pub(super) fn wait_held(base: &str, last: i64, probe_from: impl Fn(i64) -> i64) -> i64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let p = get_json(base, "/v1/pipeline");
        let end = (1..=5)
            .map(|k| last + k * 60_000)
            .find(|e| p["final_to"] == minute(*e));
        if let Some(end) = end {
            let probe = get_json(
                base,
                &format!(
                    "/v1/ads/ad000001/aggregated_count?from={}&to={}",
                    minute(probe_from(end)),
                    minute(end)
                ),
            );
            if probe["source"] == "memory" {
                return end;
            }
        }
        assert!(std::time::Instant::now() < deadline, "never held: {p}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub(super) fn minute(ms: i64) -> String {
    adtally_host::query::minute_text(adtally_core::WindowStart(ms))
}

/// The `n` best ads of `native`'s cells under `filter` in `[from, to)`,
/// ranked by the core.
pub(super) fn native_top(
    native: &BTreeMap<(i64, String, u32), u64>,
    filter: u32,
    from: i64,
    to: i64,
    n: usize,
) -> (Vec<String>, Vec<u64>) {
    let mut sums: BTreeMap<String, u64> = BTreeMap::new();
    for ((w, ad, f), c) in native {
        if *f == filter && (from..to).contains(w) {
            *sums.entry(ad.clone()).or_default() += c;
        }
    }
    let ads = sums
        .into_iter()
        .map(|(a, c)| (adtally_core::AdId::new(&a).unwrap(), c));
    adtally_core::topn::top_n(ads, n)
        .into_iter()
        .map(|r| (r.ad_id.as_str().to_string(), r.clicks))
        .unzip()
}

pub(super) fn sum(
    native: &BTreeMap<(i64, String, u32), u64>,
    ad: &str,
    filter: u32,
    from: i64,
    to: i64,
) -> u64 {
    native
        .iter()
        .filter(|((w, a, f), _)| a == ad && *f == filter && (from..to).contains(w))
        .map(|(_, c)| c)
        .sum()
}

/// API 1 and API 2 over HTTP, for every configured filter kind (country,
/// CIDR, user ids), ad-hoc country, address, CIDR and user_id filters,
/// precomputed and other windows, and ranges inside, across and before the
/// minutes held in memory: every answer equals the core run natively on
/// the generated records; `adtally query` answers the same; each bad
/// parameter gets a 400 naming it; /openapi.json lists every route with
/// its parameters; a ClickHouse that never answers gets a 503 in bounded
/// time.
#[test]
fn the_api_answers_equal_the_core_natively() {
    let (s, records) = setup_live("kafka-api", 60_000, memory);
    // Users of the stream, for a user_id filter.
    let user =
        |r: &adtally_host::generator::GenRecord| r.payload.split(", ").nth(2).map(str::to_string);
    let users: Vec<String> = records.iter().filter_map(user).take(300).collect();
    let one_user = users[7].clone();
    let one_ip = records
        .iter()
        .find(|r| user(r).as_deref() == Some(one_user.as_str()))
        .and_then(|r| r.payload.split(", ").nth(3).map(str::to_string))
        .unwrap();
    let config = serde_json::json!({"filters": [
        {"id": 1, "name": "DE+FR", "country": ["DEU", "FR"]},
        {"id": 2, "name": "10.0/14", "ip": ["10.0.0.0/14"]},
        {"id": 3, "name": "300 users", "user_id": users},
    ]});
    let config_path = s.tmp.join("config.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    // What the ad-hoc questions should answer, as further filters of the
    // core run natively.
    let mut natively_config = config.clone();
    natively_config["filters"].as_array_mut().unwrap().extend(
        serde_json::json!([
            {"id": 11, "country": ["JPN"]},
            {"id": 12, "ip": [one_ip]},
            {"id": 13, "ip": ["10.4.0.0/14"]},
            {"id": 14, "user_id": [one_user]},
        ])
        .as_array()
        .unwrap()
        .iter()
        .cloned(),
    );
    let native = natively(&records, &natively_config.to_string(), |_| true);
    produce_live(s.broker.addr(), records.clone(), 1, Duration::ZERO)
        .join()
        .unwrap();
    let mut args = run_args(&s);
    args.extend(["--config".into(), config_path.to_str().unwrap().into()]);
    adtally(&args.iter().map(String::as_str).collect::<Vec<_>>());

    let url = s.ch.url();
    let config_arg = config_path.to_str().unwrap();
    let server = serve(&[
        "--clickhouse",
        &url,
        "--config",
        config_arg,
        "--memory-minutes",
        "5",
        "--refresh",
        "200ms",
    ]);
    let base = server.base.clone();
    let first = *native.keys().map(|(w, _, _)| w).min().unwrap();
    let last = *native.keys().map(|(w, _, _)| w).max().unwrap();
    // The stream's closing heartbeats make every minute with clicks final;
    // wait until the server holds the last five.
    let end = wait_held(&base, last, |end| end - 60_000);
    let p = get_json(&base, "/v1/pipeline");
    assert_eq!(p["partitions"].as_array().unwrap().len(), 4, "{p}");

    // API 1: the most clicked ads and some of the rest, every filter, three
    // ranges: the whole stream (across the memory's horizon), the last
    // three minutes (memory alone), the first ten (rollups alone).
    let (top, _) = native_top(&native, 0, first, end, 10);
    let mut ads: Vec<String> = top;
    ads.extend(["ad000500", "ad019999", "ad000037", "ad404404"].map(String::from));
    let compact = |ms: i64| {
        // The design's yyyyMMddHHmm form.
        minute(ms).replace(['-', 'T', ':'], "")[..12].to_string()
    };
    let ranges = [
        (first, end, "memory_and_rollups"),
        (end - 3 * 60_000, end, "memory"),
        (first, first + 10 * 60_000, "rollups"),
    ];
    let mut checked = 0;
    for ad in &ads {
        for filter in [0u32, 1, 2, 3] {
            for (i, (from, to, source)) in ranges.iter().enumerate() {
                // Both forms of minute.
                let (f, t) = if i % 2 == 0 {
                    (compact(*from), compact(*to))
                } else {
                    (minute(*from), minute(*to))
                };
                let a = get_json(
                    &base,
                    &format!("/v1/ads/{ad}/aggregated_count?from={f}&to={t}&filter={filter}"),
                );
                assert_eq!(
                    a["count"].as_u64().unwrap(),
                    sum(&native, ad, filter, *from, *to),
                    "{ad} filter {filter} [{from}, {to}): {a}"
                );
                assert_eq!(a["source"], *source, "{a}");
                assert_eq!(a["final_to"], minute(end));
                assert_eq!(a["complete"], true);
                checked += 1;
            }
        }
    }
    assert!(checked >= 150);
    // Filters select: each counts fewer clicks than filter 0, none nothing.
    for filter in [1u32, 2, 3, 11, 12, 13, 14] {
        let n = native
            .iter()
            .filter(|(k, _)| k.2 == filter)
            .map(|(_, c)| c)
            .sum::<u64>();
        let all = native
            .iter()
            .filter(|(k, _)| k.2 == 0)
            .map(|(_, c)| c)
            .sum::<u64>();
        assert!(n > 0 && n < all, "filter {filter}: {n} of {all}");
    }
    // The modules: the one component that ran.
    let a = get_json(
        &base,
        &format!(
            "/v1/ads/{}/aggregated_count?from={}&to={}",
            ads[0],
            minute(first),
            minute(end)
        ),
    );
    let modules = a["modules"].as_array().unwrap();
    assert_eq!(modules.len(), 1, "{a}");
    assert_eq!(modules[0].as_str().unwrap().len(), 64);

    // Ad-hoc filters, from the raw events, for the ads that have such clicks.
    let ad_hoc = [
        ("country=JPN".to_string(), 11u32),
        ("ip=".to_string() + &one_ip, 12),
        ("ip=10.4.0.0/14".into(), 13),
        ("user_id=".to_string() + &one_user, 14),
    ];
    for (q, filter) in &ad_hoc {
        let mut with_clicks: Vec<&String> = native
            .keys()
            .filter(|k| k.2 == *filter)
            .map(|k| &k.1)
            .collect();
        with_clicks.dedup();
        with_clicks.truncate(5);
        with_clicks.push(&ads[0]);
        for ad in with_clicks {
            let a = get_json(
                &base,
                &format!(
                    "/v1/ads/{ad}/aggregated_count?from={}&to={}&{q}",
                    minute(first),
                    minute(end)
                ),
            );
            assert_eq!(
                a["count"].as_u64().unwrap(),
                sum(&native, ad, *filter, first, end),
                "{q} {ad}: {a}"
            );
            assert_eq!(a["source"], "raw_events");
        }
    }
    // Configured and ad-hoc together: DE+FR clicks in 10.0/14 (both filters natively).
    let both = {
        let mut c = config.clone();
        c["filters"] =
            serde_json::json!([{"id": 21, "country": ["DEU", "FRA"], "ip": ["10.0.0.0/14"]}]);
        natively(&records, &c.to_string(), |_| true)
    };
    let a = get_json(
        &base,
        &format!(
            "/v1/ads/{}/aggregated_count?from={}&to={}&filter=1&ip=10.0.0.0/14",
            ads[0],
            minute(first),
            minute(end)
        ),
    );
    assert_eq!(
        a["count"].as_u64().unwrap(),
        sum(&both, &ads[0], 21, first, end),
        "{a}"
    );

    // API 2: precomputed windows (1, 5) from top_ads, others from memory
    // (within its five minutes) or the rollups, and more ads than the
    // core ranks (100): each equals the core's ranking of the native cells.
    for (window, count, source) in [
        (1u32, 10usize, "top_ads"),
        (5, 100, "top_ads"),
        (3, 10, "memory"),
        (5, 150, "memory"),
        (7, 20, "rollups"),
        (60, 10, "rollups"),
    ] {
        for filter in [0u32, 1, 2, 3] {
            let a = get_json(
                &base,
                &format!("/v1/ads/popular_ads?count={count}&window={window}&filter={filter}"),
            );
            let from = end - i64::from(window) * 60_000;
            let (want_ads, want_counts) = native_top(&native, filter, from, end, count);
            let got_ads: Vec<String> = serde_json::from_value(a["ad_ids"].clone()).unwrap();
            let got_counts: Vec<u64> = serde_json::from_value(a["counts"].clone()).unwrap();
            assert_eq!(
                (&got_ads, &got_counts),
                (&want_ads, &want_counts),
                "window {window} count {count} filter {filter}: {a}"
            );
            // The last final minute is past the last click (the closing
            // heartbeats' minute): window 1 ranks nothing.
            assert_eq!(got_ads.is_empty(), window == 1, "{a}");
            assert_eq!(a["source"], source, "window {window} count {count}: {a}");
            assert_eq!(a["from"], minute(from));
            assert_eq!(a["to"], minute(end));
        }
    }

    // `adtally query`: the same answers.
    let cli = adtally(&[
        "query",
        "count",
        &ads[0],
        "--clickhouse",
        &url,
        "--config",
        config_arg,
        "--from",
        &compact(first),
        "--to",
        &compact(end),
        "--filter",
        "2",
        "--json",
    ]);
    let a: Value = serde_json::from_str(&cli).unwrap();
    assert_eq!(
        a["count"].as_u64().unwrap(),
        sum(&native, &ads[0], 2, first, end),
        "{cli}"
    );
    let table = adtally(&[
        "query",
        "popular",
        "--clickhouse",
        &url,
        "--config",
        config_arg,
        "--count",
        "3",
        "--window",
        "5",
    ]);
    let (want, _) = native_top(&native, 0, end - 5 * 60_000, end, 3);
    for ad in &want {
        assert!(table.contains(ad.as_str()), "{table}");
    }

    // Each bad parameter: a 400 that names it.
    let (f, t) = (minute(first), minute(end));
    for (path, parameter) in [
        (
            format!("/v1/ads/ad1/aggregated_count?from=yesterday&to={t}"),
            "from",
        ),
        (
            format!("/v1/ads/ad1/aggregated_count?from=2026-13-01T00:00:00Z&to={t}"),
            "from",
        ),
        (
            format!("/v1/ads/ad1/aggregated_count?from={f}&to=99999999999999"),
            "to",
        ),
        (
            format!("/v1/ads/ad1/aggregated_count?from={t}&to={f}"),
            "from",
        ),
        (
            "/v1/ads/ad1/aggregated_count?from=2026-12-01T10:00:30Z&to=2026-12-01T11:00:00Z"
                .to_string(),
            "from",
        ),
        (
            "/v1/ads/ad1/aggregated_count?from=202001010000&to=202601010000".to_string(),
            "to",
        ),
        (
            format!("/v1/ads/ad1/aggregated_count?from={f}&to={t}&filter=9"),
            "filter",
        ),
        (
            format!("/v1/ads/ad1/aggregated_count?from={f}&to={t}&filter=one"),
            "filter",
        ),
        (
            format!("/v1/ads/ad1/aggregated_count?from={f}&to={t}&ip=10.0.0.0/33"),
            "ip",
        ),
        (
            format!("/v1/ads/ad1/aggregated_count?from={f}&to={t}&ip=10.0.0.256"),
            "ip",
        ),
        (
            format!("/v1/ads/ad1/aggregated_count?from={f}&to={t}&country=Narnia"),
            "country",
        ),
        (
            format!("/v1/ads/ad1/aggregated_count?from={f}&to={t}&colour=red"),
            "colour",
        ),
        (
            format!("/v1/ads/{}/aggregated_count", "a".repeat(300)),
            "ad_id",
        ),
        ("/v1/ads/ad%20one/aggregated_count".to_string(), "ad_id"),
        ("/v1/ads/popular_ads?count=0".to_string(), "count"),
        ("/v1/ads/popular_ads?count=1001".to_string(), "count"),
        ("/v1/ads/popular_ads?count=ten".to_string(), "count"),
        ("/v1/ads/popular_ads?window=0".to_string(), "window"),
        ("/v1/ads/popular_ads?window=1441".to_string(), "window"),
        ("/v1/ads/popular_ads?window=-5".to_string(), "window"),
        ("/v1/ads/popular_ads?filter=4".to_string(), "filter"),
    ] {
        let (code, body) = get(&base, &path);
        assert_eq!(code, 400, "{path}: {body}");
        let b: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(b["error"], "bad_parameter", "{path}: {body}");
        assert_eq!(b["parameter"], parameter, "{path}: {body}");
        assert!(!b["message"].as_str().unwrap().is_empty());
    }

    // The OpenAPI document lists every route with its parameters.
    let doc = get_json(&base, "/openapi.json");
    let param_names = |path: &str| -> Vec<String> {
        doc["paths"][path]["get"]["parameters"]
            .as_array()
            .unwrap_or(&Vec::new())
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        param_names("/v1/ads/{ad_id}/aggregated_count"),
        ["ad_id", "from", "to", "filter", "country", "ip", "user_id"]
    );
    assert_eq!(
        param_names("/v1/ads/popular_ads"),
        ["count", "window", "filter"]
    );
    assert_eq!(
        param_names("/v1/ads/{ad_id}/minutes"),
        ["ad_id", "from", "to", "filter"]
    );
    assert_eq!(param_names("/v1/rankings"), ["window", "filter"]);
    let routes: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
    assert_eq!(routes.len(), 6, "{routes:?}");
    for path in ["/v1/pipeline", "/v1/ping"] {
        assert!(doc["paths"][path]["get"].is_object(), "{path} in {doc}");
    }
    // Its metrics: requests by route pattern and status.
    let (_, text) = get(&base, "/metrics");
    let route = "route=\"/v1/ads/{ad_id}/aggregated_count\"";
    for status in ["200", "400"] {
        let n = metric(
            &text,
            "adtally_api_requests_total",
            &format!("{route},status=\"{status}\""),
        );
        assert!(n.unwrap_or(0.0) >= 10.0, "{status}:\n{text}");
    }
    assert!(metric(&text, "adtally_api_request_seconds_count", "popular_ads").unwrap() > 0.0);
    drop(server);

    // A ClickHouse that accepts connections and never answers: a 503 once
    // the timeout passes, never a hang.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    // Connections are held, never read, until the test ends.
    std::thread::spawn(move || silent.incoming().collect::<Vec<_>>());
    let stuck = serve(&[
        "--clickhouse",
        &silent_url,
        "--config",
        config_arg,
        "--clickhouse-timeout",
        "1s",
        "--memory-minutes",
        "0",
    ]);
    let started = std::time::Instant::now();
    let (code, body) = get(&stuck.base, "/v1/ads/ad000001/aggregated_count");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("unavailable") && body.contains("within"),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let (code, body) = get(&stuck.base, "/v1/ping");
    assert_eq!((code, body.as_str()), (200, "ok"));
    drop(stuck);
}

/// A port free now on loopback.
pub(super) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Prometheus text: the sum of every sample of `name` (all label sets)
/// whose labels contain `with`.
fn metric(text: &str, name: &str, with: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let bare = series.split('{').next().unwrap();
        if bare == name && series.contains(with) {
            *found.get_or_insert(0.0) += value.parse::<f64>().unwrap();
        }
    }
    found
}

/// `adtally run --metrics-listen` scraped as Prometheus does: once the
/// stream is consumed, the counters of records, duplicates, late and
/// invalid records equal the generator's figures, the lag of every
/// partition is 0, and the watermarks, write latencies and module are there.
#[test]
fn the_run_metrics_equal_the_generators_figures() {
    let s = setup_topic("kafka-metrics", memory);
    // 100 minutes of event time: clicks late by 30 minutes come after 40.
    let g = adtally_host::generator::generate(adtally_host::generator::GenConfig {
        records: 60_000,
        rate_per_s: 10,
        ..Default::default()
    });
    assert!(
        g.late > 50 && g.duplicates > 100 && g.invalid > 100,
        "{} {} {}",
        g.late,
        g.duplicates,
        g.invalid
    );
    let total = g.records.len() as u64;
    let producer = produce_live(
        s.broker.addr(),
        g.records.clone(),
        4,
        Duration::from_millis(500),
    );
    let port = free_port();
    let mut args = with_idle(run_args(&s), 20);
    args.extend(["--metrics-listen".into(), format!("127.0.0.1:{port}")]);
    let run = spawn_run(&args);
    let scrape = || get(&format!("http://127.0.0.1:{port}"), "/metrics");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let text = loop {
        let (code, text) = scrape();
        let done = code == 200
            && metric(&text, "adtally_records_total", "") == Some(total as f64)
            && (0..4).all(|p| {
                metric(&text, "adtally_consumer_lag", &format!("partition=\"{p}\"")) == Some(0.0)
            });
        if done {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never caught up ({code}):\n{text}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    producer.join().unwrap();
    assert_eq!(
        metric(&text, "adtally_duplicates_total", ""),
        Some(g.duplicates as f64)
    );
    assert_eq!(metric(&text, "adtally_late_total", ""), Some(g.late as f64));
    assert_eq!(
        metric(&text, "adtally_invalid_total", ""),
        Some(g.invalid as f64)
    );
    assert_eq!(
        metric(&text, "adtally_invalid_total", "reason=\"unknown_country\""),
        Some(g.invalid as f64),
        "the generator's invalid records have an unknown country:\n{text}"
    );
    let clicks: u64 = g.expected.values().sum();
    assert_eq!(
        metric(&text, "adtally_clicks_emitted_total", ""),
        Some(clicks as f64)
    );
    for p in 0..4 {
        let w = metric(&text, "adtally_watermark_ms", &format!("partition=\"{p}\"")).unwrap();
        assert!(w as i64 >= g.max_time_ms - 60_000, "partition {p}: {w}");
    }
    assert!(metric(&text, "adtally_write_seconds_count", "").unwrap() > 0.0);
    assert!(metric(&text, "adtally_module_call_seconds_bucket", "le=\"+Inf\"").unwrap() > 0.0);
    assert!(metric(&text, "adtally_snapshots_total", "").unwrap() > 0.0);
    assert_eq!(metric(&text, "adtally_module_info", "sha256=\""), Some(1.0));
    finish(run);
}

/// The minutes `adtally serve` holds in memory follow a replay switched in
/// and then dropped: answers for the replayed range become the replay's
/// counts (a module variant's, tests/modules/strict-users) and then the
/// stream's again, while minutes outside the range never change.
#[test]
fn a_replay_switched_in_and_dropped_reloads_exactly_its_minutes_in_memory() {
    let (s, records) = setup_live("kafka-api-replay", 60_000, memory);
    produce_live(s.broker.addr(), records.clone(), 1, Duration::ZERO)
        .join()
        .unwrap();
    let args = run_args(&s);
    adtally(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let url = s.ch.url();
    let server = serve(&[
        "--clickhouse",
        &url,
        "--memory-minutes",
        "60",
        "--refresh",
        "200ms",
    ]);
    let base = server.base.clone();
    let native = natively(&records, "{}", |_| true);
    let refuses = |payload: &[u8]| match adtally_core::parse_record(payload, None, 0) {
        Ok(adtally_core::Record::Click(c)) => c.user_id.as_str().ends_with('7'),
        _ => false,
    };
    let strict = natively(&records, "{}", |p| !refuses(p));
    let first = *native.keys().map(|(w, _, _)| w).min().unwrap();
    let last = *native.keys().map(|(w, _, _)| w).max().unwrap();
    let count = |ad: &str, from: i64, to: i64| {
        get_json(
            &base,
            &format!(
                "/v1/ads/{ad}/aggregated_count?from={}&to={}",
                minute(from),
                minute(to)
            ),
        )
    };
    let end = wait_held(&base, last, |_| first);
    let (from, to) = (first + 5 * 60_000, first + 12 * 60_000);
    let (top, _) = native_top(&native, 0, first, end, 5);
    let check = |want: &BTreeMap<(i64, String, u32), u64>| -> bool {
        top.iter().all(|ad| {
            // The reloaded minutes replace the old in one step: memory
            // answers throughout.
            let inside = count(ad, from, to);
            assert_eq!(inside["source"], "memory", "{inside}");
            let before = count(ad, first, from)["count"].as_u64().unwrap();
            let after = count(ad, to, end)["count"].as_u64().unwrap();
            // Outside the replay's range: the stream's, always.
            assert_eq!(before, sum(&native, ad, 0, first, from), "{ad} before");
            assert_eq!(after, sum(&native, ad, 0, to, end), "{ad} after");
            inside["source"] == "memory"
                && inside["count"].as_u64().unwrap() == sum(want, ad, 0, from, to)
        })
    };
    assert!(check(&native));
    let until = |want: &BTreeMap<(i64, String, u32), u64>, what: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !check(want) {
            assert!(
                std::time::Instant::now() < deadline,
                "memory never showed {what}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let module = root().join("target/wasm/adtally_module_strict_users.wasm");
    let out = adtally(&[
        "replay",
        "--clickhouse",
        &url,
        "--from",
        &from.to_string(),
        "--to",
        &to.to_string(),
        "--module",
        module.to_str().unwrap(),
        "--set",
        "strict",
    ]);
    assert!(out.contains("readers see it now"), "{out}");
    until(&strict, "the replay's counts");
    assert!(
        top.iter()
            .any(|ad| sum(&strict, ad, 0, from, to) < sum(&native, ad, 0, from, to)),
        "the variant refuses some of these ads' clicks"
    );
    adtally(&["replay", "drop", "--clickhouse", &url, "strict"]);
    until(&native, "the stream's counts again");
}
