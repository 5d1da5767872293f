//! End to end through a real Kafka broker (Tansu): a generated stream with
//! duplicates, disorder, late and invalid records is produced to a topic,
//! `adtally run` consumes it through the core component into the embedded
//! ClickHouse, and every (minute, ad) count equals the generator's totals.
//! Needs `make setup` (Tansu, chDB) and `make wasm`.

use adtally_chserver::EmbeddedClickHouse;
use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A Tansu broker on a free loopback port, killed when dropped.
struct Broker {
    child: Child,
    addr: String,
}

impl Broker {
    fn start(storage: &str) -> Broker {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new("tansu")
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://{addr}"),
                "--advertised-listener-url",
                &format!("tcp://{addr}"),
            ])
            .args(["--storage-engine", storage])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu is installed by `make setup`");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not listen on {addr} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Broker { child, addr }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn adtally(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_adtally"))
        .current_dir(root())
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "adtally {args:?} failed:\n{text}");
    text
}

fn query_tsv(url: &str, sql: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", url, "--data-binary", sql])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn kafka_to_clickhouse_is_exact() {
    let tmp = std::env::temp_dir().join(format!("adtally-kafka-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let broker = Broker::start("memory://tansu/");
    let ch = EmbeddedClickHouse::start(&tmp.join("clickhouse")).unwrap();
    let status = Command::new(adtally_chserver::python())
        .arg(root().join("clickhouse/install.py"))
        .args(["install", "--url", &ch.url(), "--wasm"])
        .arg(root().join("target/wasm/adtally_clickhouse.wasm"))
        .status()
        .unwrap();
    assert!(status.success());

    let expected_path = tmp.join("expected.tsv");
    let produced = adtally(&[
        "gen",
        "--records",
        "60000",
        "--brokers",
        &broker.addr,
        "--topic",
        "clicks",
        "--expected",
        expected_path.to_str().unwrap(),
    ]);
    let run = adtally(&[
        "run",
        "--brokers",
        &broker.addr,
        "--topic",
        "clicks",
        "--clickhouse",
        &ch.url(),
        "--exit-when-idle",
        "8",
    ]);
    assert!(
        run.contains("60004 records"),
        "every record (and the 4 heartbeats) consumed:\n{produced}\n{run}"
    );

    let expected: BTreeMap<String, String> = std::fs::read_to_string(&expected_path)
        .unwrap()
        .lines()
        .map(|l| {
            l.rsplit_once('\t')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .unwrap()
        })
        .collect();
    let got: BTreeMap<String, String> = query_tsv(
        &ch.url(),
        "SELECT toUnixTimestamp64Milli(window_start), ad_id, clicks FROM adtally.clicks_per_minute WHERE filter_id = 0 FORMAT TSV",
    )
    .lines()
    .map(|l| l.rsplit_once('\t').map(|(k, v)| (k.to_string(), v.to_string())).unwrap())
    .collect();
    assert_eq!(got.len(), expected.len(), "(minute, ad) rows");
    assert!(got == expected, "counts differ from the generator's totals");
    // Side outputs and offsets made it too.
    let side = query_tsv(
        &ch.url(),
        "SELECT (SELECT count() FROM adtally.invalid_events FINAL), (SELECT count() FROM adtally.late_events FINAL), \
         (SELECT sum(next_offset) FROM adtally.consumer_offsets FINAL) FORMAT TSV",
    );
    let v: Vec<u64> = side
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    assert!(v[0] > 0 && v[1] > 0, "invalid and late rows: {side}");
    assert_eq!(v[2], 60004, "the stored offsets cover every record");
    drop(broker);
    let _ = std::fs::remove_dir_all(&tmp);
}
