//! End to end through a real Kafka broker (Tansu): a generated stream with
//! duplicates, disorder, late and invalid records is produced to a topic,
//! `adtally run` consumes it through the core component into the embedded
//! ClickHouse, and every (minute, ad) count equals the generator's totals.
//! Needs `make setup` (Tansu, chDB) and `make wasm`.

use adtally_chserver::EmbeddedClickHouse;
use adtally_host::broker::LocalBroker as Broker;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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

/// A broker, an embedded ClickHouse with the schema, and a produced stream.
struct Setup {
    tmp: PathBuf,
    broker: Broker,
    ch: EmbeddedClickHouse,
    expected_path: PathBuf,
}

fn setup(name: &str, records: usize) -> Setup {
    setup_with(name, records, |_| "memory://tansu/".to_string())
}

fn setup_with(name: &str, records: usize, storage: impl Fn(&Path) -> String) -> Setup {
    let tmp = std::env::temp_dir().join(format!("adtally-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let broker = Broker::start(&storage(&tmp), &tmp).unwrap();
    let ch = EmbeddedClickHouse::start(&tmp.join("clickhouse")).unwrap();
    adtally_host::sink::install_schema(&ch.url()).unwrap();
    let expected_path = tmp.join("expected.tsv");
    let records = records.to_string();
    let expected = expected_path.to_str().unwrap();
    adtally(&[
        "gen",
        "--records",
        &records,
        "--brokers",
        broker.addr(),
        "--topic",
        "clicks",
        "--expected",
        expected,
    ]);
    Setup {
        tmp,
        broker,
        ch,
        expected_path,
    }
}

fn run_args(s: &Setup) -> Vec<String> {
    let url = s.ch.url();
    [
        "run",
        "--brokers",
        s.broker.addr(),
        "--topic",
        "clicks",
        "--clickhouse",
        &url,
        "--exit-when-idle",
        "8",
        "--batch",
        "5000",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect()
}

#[test]
fn kafka_to_clickhouse_is_exact() {
    let s = setup("kafka-test", 60_000);
    let args = run_args(&s);
    let run = adtally(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        run.contains("60004 records"),
        "every record (and the 4 heartbeats) consumed:\n{run}"
    );
    assert_exact(&s, 60_004);
}

#[test]
fn sigkill_five_times_then_exact() {
    let s = setup("kafka-crash", 150_000);
    let args = run_args(&s);
    // Kill the consumer at pseudo-random moments while it works.
    let mut seed = std::process::id() as u64 | 1;
    for round in 0..5 {
        let mut child = spawn_run(&args);
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(1500 + (seed >> 33) % 4000));
        assert!(
            child.try_wait().unwrap().is_none(),
            "round {round}: the consumer ended before it was killed"
        );
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    let last = adtally(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        last.contains("150004 records"),
        "the last run read the whole topic:\n{last}"
    );
    assert_exact(&s, 150_004);
}

fn spawn_run(args: &[String]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_adtally"))
        .current_dir(root())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(child: Child) -> String {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "adtally run failed:\n{text}");
    text
}

#[test]
fn broker_restart_on_sqlite_then_exact() {
    let mut s = setup_with("kafka-restart", 100_000, |_| {
        "sqlite://tansu.db".to_string()
    });
    let args = run_args(&s);
    let mut run = spawn_run(&args);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        run.try_wait().unwrap().is_none(),
        "the consumer ended before the broker stopped"
    );
    // Stop the broker mid-run and bring it back on the same address and storage.
    let addr = s.broker.addr().to_string();
    let storage = "sqlite://tansu.db";
    s.broker.kill();
    std::thread::sleep(Duration::from_secs(2));
    s.broker = Broker::start_on(addr, storage, &s.tmp).unwrap();
    let out = finish(run);
    assert!(out.contains("100004 records"), "{out}");
    assert_exact(&s, 100_004);
}

#[test]
fn two_hosts_one_killed_then_exact() {
    let s = setup("kafka-scale", 100_000);
    let mut a = run_args(&s);
    a.extend(["--host".into(), "a".into()]);
    let mut b = run_args(&s);
    b.extend(["--host".into(), "b".into()]);
    let mut first = spawn_run(&a);
    let second = spawn_run(&b);
    std::thread::sleep(Duration::from_secs(6));
    assert!(
        first.try_wait().unwrap().is_none(),
        "host a ended before it was killed"
    );
    first.kill().unwrap(); // SIGKILL: its partitions move to host b
    first.wait().unwrap();
    let out = finish(second);
    assert!(out.contains(" records"), "{out}");
    assert_exact(&s, 100_004);
}

/// Every (minute, ad) count equals the generator's totals; late and invalid
/// rows are there; the stored offsets cover every record.
fn assert_exact(s: &Setup, records: u64) {
    let url = s.ch.url();
    let rows = |text: String| -> BTreeMap<String, String> {
        text.lines()
            .map(|l| {
                l.rsplit_once('\t')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .unwrap()
            })
            .collect()
    };
    let expected = rows(std::fs::read_to_string(&s.expected_path).unwrap());
    let got = rows(query_tsv(
        &url,
        "SELECT toUnixTimestamp64Milli(window_start), ad_id, clicks FROM adtally.clicks_per_minute WHERE filter_id = 0 FORMAT TSV",
    ));
    assert_eq!(got.len(), expected.len(), "(minute, ad) rows");
    assert!(got == expected, "counts differ from the generator's totals");
    let side = query_tsv(
        &url,
        "SELECT (SELECT count() FROM adtally.invalid_events FINAL), (SELECT count() FROM adtally.late_events FINAL), \
         (SELECT sum(next_offset) FROM adtally.consumer_offsets FINAL) FORMAT TSV",
    );
    let v: Vec<u64> = side
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    assert!(v[0] > 0 && v[1] > 0, "invalid and late rows: {side}");
    assert_eq!(v[2], records, "the stored offsets cover every record");
    let _ = std::fs::remove_dir_all(&s.tmp);
}
