//! The `clickhouse` crate, with its default features (LZ4 compression
//! included), against the embedded ClickHouse.

use adtally_clickhouse_embedded::EmbeddedClickHouse;
use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};

#[derive(Row, Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Click {
    ad_id: String,
    window_start: i64,
    clicks: u64,
    version: u32,
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("adtally-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[tokio::test(flavor = "multi_thread")]
async fn insert_100k_rows_and_read_them_back() {
    let ch = EmbeddedClickHouse::start(&temp_dir("http-100k")).unwrap();
    let client = Client::default().with_url(ch.url());
    client
        .query("CREATE TABLE clicks (ad_id String, window_start Int64, clicks UInt64, version UInt32) ENGINE = MergeTree ORDER BY (ad_id, window_start)")
        .execute()
        .await
        .unwrap();
    let rows: Vec<Click> = (0..100_000)
        .map(|i| Click {
            ad_id: format!("ad{:05}", i % 5000),
            window_start: (i / 5000) * 60_000,
            clicks: i as u64,
            version: 1,
        })
        .collect();
    let mut insert = client.insert::<Click>("clicks").await.unwrap();
    for r in &rows {
        insert.write(r).await.unwrap();
    }
    insert.end().await.unwrap();

    let (n, sum) = client
        .query("SELECT count(), sum(clicks) FROM clicks")
        .fetch_one::<(u64, u64)>()
        .await
        .unwrap();
    assert_eq!(n, 100_000);
    assert_eq!(sum, (0..100_000u64).sum::<u64>());
    let back = client
        .query("SELECT ?fields FROM clicks ORDER BY clicks")
        .fetch_all::<Click>()
        .await
        .unwrap();
    let mut expected = rows.clone();
    expected.sort_by_key(|c| c.clicks);
    assert_eq!(back, expected);
}

/// Server-side parameters (`param()`), which the crate sends with the
/// query as multipart/form-data: values with quotes, semicolons, newlines
/// and extreme integers arrive exactly, as data, never as SQL.
#[tokio::test(flavor = "multi_thread")]
async fn server_side_parameters_arrive_as_data() {
    let ch = EmbeddedClickHouse::start(&temp_dir("http-params")).unwrap();
    let client = Client::default().with_url(ch.url());
    let text = "it's; DROP TABLE x; --\r\n--boundary\u{e9}";
    #[derive(Row, Deserialize)]
    struct Back {
        s: String,
        n: i64,
        a: Vec<u32>,
    }
    let back = client
        .query("SELECT {s:String} AS s, {n:Int64} AS n, {a:Array(UInt32)} AS a")
        .param("s", text)
        .param("n", i64::MIN)
        .param("a", vec![0u32, u32::MAX])
        .fetch_one::<Back>()
        .await
        .unwrap();
    assert_eq!(
        (back.s.as_str(), back.n, back.a),
        (text, i64::MIN, vec![0, u32::MAX])
    );
    let err = client
        .query("SELECT {n:Int64}")
        .param("n", "not a number")
        .fetch_one::<i64>()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, clickhouse::error::Error::BadResponse(_)),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn clickhouse_errors_come_back_typed() {
    let ch = EmbeddedClickHouse::start(&temp_dir("http-error")).unwrap();
    let client = Client::default().with_url(ch.url());
    let err = client
        .query("SELECT * FROM no_such_table")
        .fetch_all::<u8>()
        .await
        .unwrap_err();
    match err {
        clickhouse::error::Error::BadResponse(msg) => {
            assert!(msg.contains("Code: 60"), "{msg}");
            assert!(msg.contains("UNKNOWN_TABLE"), "{msg}");
        }
        other => panic!("expected a ClickHouse error, got {other:?}"),
    }
    let err = client.query("SELEKT 1").execute().await.unwrap_err();
    assert!(
        matches!(&err, clickhouse::error::Error::BadResponse(m) if m.contains("SYNTAX_ERROR")),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn data_survives_a_restart() {
    let dir = temp_dir("http-restart");
    let ch = EmbeddedClickHouse::start(&dir).unwrap();
    let client = Client::default().with_url(ch.url());
    client
        .query("CREATE TABLE kept (x UInt32) ENGINE = MergeTree ORDER BY x")
        .execute()
        .await
        .unwrap();
    client
        .query("INSERT INTO kept SELECT number FROM numbers(1000)")
        .execute()
        .await
        .unwrap();
    ch.stop().unwrap(); // SIGKILL
    let ch = EmbeddedClickHouse::start(&dir).unwrap();
    let client = Client::default().with_url(ch.url());
    let n = client
        .query("SELECT count() FROM kept")
        .fetch_one::<u64>()
        .await
        .unwrap();
    assert_eq!(n, 1000);
}
