//! `adtally reconcile`'s verdicts on cells built by hand in the embedded
//! ClickHouse: raw records through the batch path's views, and the
//! stream's rollups and side outputs as a host would write them. Every
//! kind of difference, and the late repeat of a click the stream counted
//! (a late row that explains nothing), and the repeat of a late click (a
//! duplicate, never counted). Needs `make setup` and `make wasm`.

use adtally_clickhouse_embedded::EmbeddedClickHouse;
use std::collections::BTreeMap;
use std::process::Command;

const MINUTE: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

fn sql(url: &str, q: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", url, "--data-binary", q])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{q}: {text}");
    text
}

fn click(ad: &str, ms: i64, user: &str) -> String {
    format!("{ad}, {}, {user}, 10.0.0.1, USA", MINUTE + ms)
}

#[test]
fn every_kind_of_difference_gets_its_verdict() {
    let dir = std::env::temp_dir().join(format!("adtally-reconcile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ch = EmbeddedClickHouse::start(&dir).unwrap();
    let url = ch.url();
    adtally_clickhouse_embedded::install_schema(&url).unwrap();
    // (partition, offset, record); the views compute each record's key.
    let records = [
        // ad-a: one click in two partitions, counted by both.
        (0, 0, click("ad-a", 1_000, "u1")),
        (1, 0, click("ad-a", 1_000, "u1")),
        // ad-b: a counted click, its late repeat, and a late click.
        (0, 1, click("ad-b", 2_000, "u1")),
        (0, 5, click("ad-b", 2_000, "u1")),
        (0, 6, click("ad-b", 3_000, "u2")),
        // ad-c: side-lined by the stream (ahead of its partition).
        (1, 1, click("ad-c", 4_000, "u1")),
        // ad-d: neither counted nor side-lined.
        (1, 2, click("ad-d", 5_000, "u1")),
        // ad-e: two clicks, which the stream counted as three.
        (0, 7, click("ad-e", 6_000, "u1")),
        (0, 8, click("ad-e", 7_000, "u2")),
        // ad-f: a late click, and its repeat (a duplicate of it, no side
        // output of its own).
        (0, 9, click("ad-f", 8_000, "u1")),
        (0, 10, click("ad-f", 8_000, "u1")),
    ];
    let rows: Vec<String> = records
        .iter()
        .map(|(p, o, r)| format!("('clicks', {p}, {o}, NULL, '{r}')"))
        .collect();
    sql(
        &url,
        &format!("INSERT INTO adtally.ingest VALUES {}", rows.join(", ")),
    );
    let rollups = [
        ("ad-a", 0, 1),
        ("ad-a", 1, 1),
        ("ad-b", 0, 1),
        ("ad-e", 0, 3),
    ];
    let rows: Vec<String> = rollups
        .iter()
        .map(|(ad, p, c)| {
            format!(
                "(fromUnixTimestamp64Milli({MINUTE}, 'UTC'), '{ad}', 0, 'clicks', {p}, {c}, 1, 'm')"
            )
        })
        .collect();
    sql(
        &url,
        &format!(
            "INSERT INTO adtally.rollups (window_start, ad_id, filter_id, topic, source_partition, clicks, version, module_sha256) \
             VALUES {}",
            rows.join(", ")
        ),
    );
    sql(
        &url,
        "INSERT INTO adtally.late_events (topic, source_partition, source_offset, event_key, ad_id, click_ts, window_start, watermark, module_sha256) \
             SELECT topic, source_partition, source_offset, event_key, ad_id, click_ts, window_start, window_start + 3600, 'm' \
             FROM adtally.raw_events WHERE source_partition = 0 AND source_offset IN (5, 6, 9)",
    );
    sql(
        &url,
        "INSERT INTO adtally.invalid_events (topic, source_partition, source_offset, reason, payload) \
         VALUES ('clicks', 1, 1, 'ahead_of_partition', '')",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_adtally"))
        .args(["reconcile", "--clickhouse", &url, "--format", "json"])
        .args([
            "--from",
            &MINUTE.to_string(),
            "--to",
            &(MINUTE + 60_000).to_string(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "unexplained cells fail:\n{stderr}");
    assert!(stderr.contains("2 cells unexplained"), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let verdicts: BTreeMap<&str, String> = report["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let what = match d["verdict"].as_str().unwrap() {
                "explained" => format!(
                    "{}/{} late {} side-lined {} cross {}",
                    d["stream"], d["batch"], d["late"], d["side_lined"], d["cross_partition"]
                ),
                v => format!(
                    "{}/{} {v} expected {}",
                    d["stream"], d["batch"], d["expected"]
                ),
            };
            (d["ad_id"].as_str().unwrap(), what)
        })
        .collect();
    let expected: BTreeMap<&str, String> = [
        ("ad-a", "2/1 late 0 side-lined 0 cross 1"),
        ("ad-b", "1/2 late 1 side-lined 0 cross 0"),
        ("ad-c", "0/1 late 0 side-lined 1 cross 0"),
        ("ad-d", "0/1 unexplained expected 1"),
        ("ad-e", "3/2 unexplained expected 2"),
        ("ad-f", "0/1 late 1 side-lined 0 cross 0"),
    ]
    .into_iter()
    .map(|(a, v)| (a, v.to_string()))
    .collect();
    assert_eq!(verdicts, expected);
    let s = &report["summary"];
    assert_eq!(
        (
            &s["cells"],
            &s["equal"],
            &s["late"],
            &s["side_lined"],
            &s["cross_partition"],
            &s["unexplained"]
        ),
        (
            &6.into(),
            &0.into(),
            &2.into(),
            &1.into(),
            &1.into(),
            &2.into()
        ),
        "{s}"
    );
    // Bad requests are refused with what is wrong, before any query.
    for (args, says) in [
        (
            vec!["--from", "yesterday", "--to", "0"],
            "neither an RFC 3339 time",
        ),
        (
            vec!["--from", "60000", "--to", "60000"],
            "must be before --to",
        ),
        (vec!["--to", "60000"], "needs --from and --to"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_adtally"))
            .args(["reconcile", "--clickhouse", &url])
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(says),
            "{args:?}: {stderr}"
        );
    }
    drop(ch);
    let _ = std::fs::remove_dir_all(&dir);
}
