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

/// A fresh directory for test `name`, a broker on `storage` and an embedded
/// ClickHouse with the schema installed.
fn start(name: &str, storage: impl Fn(&Path) -> String) -> (PathBuf, Broker, EmbeddedClickHouse) {
    let tmp = std::env::temp_dir().join(format!("adtally-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let broker = Broker::start(&storage(&tmp), &tmp).unwrap();
    let ch = EmbeddedClickHouse::start(&tmp.join("clickhouse")).unwrap();
    adtally_host::sink::install_schema(&ch.url()).unwrap();
    (tmp, broker, ch)
}

fn setup_with(name: &str, records: usize, storage: impl Fn(&Path) -> String) -> Setup {
    setup_gen(name, records, storage, &[])
}

/// The `clicks` topic with 4 partitions, as `adtally gen` creates it.
fn create_topic(broker: &Broker) {
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(adtally_host::source::ensure_topic(
            broker.addr(),
            "clicks",
            4,
        ))
        .unwrap();
}

fn setup_gen(
    name: &str,
    records: usize,
    storage: impl Fn(&Path) -> String,
    gen_args: &[&str],
) -> Setup {
    let (tmp, broker, ch) = start(name, storage);
    let expected_path = tmp.join("expected.tsv");
    let records = records.to_string();
    let expected = expected_path.to_str().unwrap();
    adtally(
        &[
            "gen",
            "--records",
            &records,
            "--brokers",
            broker.addr(),
            "--topic",
            "clicks",
            "--expected",
            expected,
        ]
        .into_iter()
        .chain(gen_args.iter().copied())
        .collect::<Vec<_>>(),
    );
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
        "--snapshot-interval",
        "1",
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
    let s = setup("kafka-crash", 200_000);
    // Without a group, a restarted consumer takes its partitions at once
    // (a dead group member holds them until the broker evicts it).
    let mut args = run_args(&s);
    args.extend(["--partitions".into(), "all".into()]);
    // Kill the consumer at pseudo-random moments while it works.
    let mut seed = std::process::id() as u64 | 1;
    for round in 0..5 {
        let before = snapshots(&s);
        let log = std::fs::File::create(s.tmp.join(format!("run-{round}.log"))).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_adtally"))
            .current_dir(root())
            .args(&args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        // Kill it while it works: once it stored a snapshot of its own,
        // at a random moment within the next second.
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        while snapshots(&s) == before && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis((seed >> 33) % 1000));
        if child.try_wait().unwrap().is_some() {
            let log = std::fs::read_to_string(s.tmp.join(format!("run-{round}.log")));
            panic!(
                "round {round}: the consumer ended before it was killed:\n{}",
                log.unwrap_or_default()
            );
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    let last = adtally(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        last.contains("snapshots restored") && !last.contains(" 0 snapshots restored"),
        "the last run resumed from snapshots:\n{last}"
    );
    assert!(
        !last.contains("200004 records"),
        "the last run replayed only the tail, not the whole topic:\n{last}"
    );
    assert_exact(&s, 200_004);
}

/// Snapshots stored so far.
fn snapshots(s: &Setup) -> u64 {
    query_tsv(
        &s.ch.url(),
        "SELECT count() FROM adtally.snapshots FORMAT TSV",
    )
    .trim()
    .parse()
    .unwrap()
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
    let a = run_args(&s);
    let b = run_args(&s);
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
    assert_top_n_exact(&url, &expected);
    let _ = std::fs::remove_dir_all(&s.tmp);
}

/// The merged top-N of the whole topic (`top_ads`: each partition's ranking
/// merged by the core's UDF) equals the top 100 of the generator's totals,
/// for every minute and M, ties by ad_id.
fn assert_top_n_exact(url: &str, expected: &BTreeMap<String, String>) {
    let mut per_minute: BTreeMap<i64, BTreeMap<&str, u64>> = BTreeMap::new();
    for (k, v) in expected {
        let (minute, ad) = k.split_once('\t').unwrap();
        per_minute
            .entry(minute.parse().unwrap())
            .or_default()
            .insert(ad, v.parse().unwrap());
    }
    let tops = query_tsv(
        url,
        "SELECT window_minutes, toUnixTimestamp64Milli(update_time_minute), \
         arrayStringConcat(arrayMap(x -> concat(x.1, ':', toString(x.2)), most_clicked_ads), ',') \
         FROM adtally.top_ads WHERE filter_id = 0 FORMAT TSV",
    );
    let mut checked = 0;
    for line in tops.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let (m_windows, minute): (i64, i64) = (f[0].parse().unwrap(), f[1].parse().unwrap());
        let mut sums: BTreeMap<&str, u64> = BTreeMap::new();
        for (_, ads) in per_minute.range(minute - (m_windows - 1) * 60_000..=minute) {
            for (ad, c) in ads {
                *sums.entry(ad).or_default() += c;
            }
        }
        let mut ranked: Vec<(&str, u64)> = sums.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let want: Vec<String> = ranked
            .iter()
            .take(100)
            .map(|(a, c)| format!("{a}:{c}"))
            .collect();
        assert_eq!(
            f[2],
            want.join(","),
            "top ads of M={m_windows} at minute {minute}"
        );
        checked += 1;
    }
    assert!(
        checked >= per_minute.len(),
        "a ranking for every minute: {checked}"
    );
}

/// `adtally ship` follows a log file into the topic across restarts and a
/// rotation, shipping each line once; the counts are exact.
#[test]
fn ship_follows_logs_across_restarts_then_exact() {
    let (tmp, broker, ch) = start("kafka-ship", |_| "memory://tansu/".to_string());
    create_topic(&broker);
    let expected_path = tmp.join("expected.tsv");
    let s = Setup {
        tmp: tmp.clone(),
        broker,
        ch,
        expected_path: expected_path.clone(),
    };
    let stream = adtally(&[
        "gen",
        "--records",
        "150000",
        "--expected",
        expected_path.to_str().unwrap(),
    ]);
    // The records, as a log file would hold them (gen prints partition<TAB>record).
    let lines: Vec<&str> = stream
        .lines()
        .filter_map(|l| l.split_once('\t').map(|(_, r)| r))
        .collect();
    assert_eq!(lines.len(), 150_004);
    let log = tmp.join("clicks.log");
    let state = tmp.join("ship.json");
    let ship = || {
        adtally(&[
            "ship",
            "--brokers",
            s.broker.addr(),
            "--topic",
            "clicks",
            "--state",
            state.to_str().unwrap(),
            "--exit-when-idle",
            "2",
            log.to_str().unwrap(),
        ])
    };
    let write = |path: &Path, part: &[&str], append: bool| {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(append)
            .write(true)
            .truncate(!append)
            .open(path)
            .unwrap();
        for l in part {
            std::io::Write::write_all(&mut f, format!("{l}\n").as_bytes()).unwrap();
        }
    };
    // A first run ships what is there, a partial last line waits.
    write(&log, &lines[..60_000], false);
    std::io::Write::write_all(
        &mut std::fs::OpenOptions::new().append(true).open(&log).unwrap(),
        lines[60_000].as_bytes(),
    )
    .unwrap();
    let out = ship();
    assert!(out.contains("60000 lines shipped"), "{out}");
    // The line is completed and more appended: the next run resumes there.
    std::io::Write::write_all(
        &mut std::fs::OpenOptions::new().append(true).open(&log).unwrap(),
        b"\n",
    )
    .unwrap();
    write(&log, &lines[60_001..100_000], true);
    let out = ship();
    assert!(out.contains("40000 lines shipped"), "{out}");
    // Rotation: the file is renamed away and a new one started.
    std::fs::rename(&log, tmp.join("clicks.log.1")).unwrap();
    write(&log, &lines[100_000..], false);
    let out = ship();
    assert!(
        out.contains("50004 lines shipped") && out.contains("1 files followed from their start"),
        "{out}"
    );
    let mut args = run_args(&s);
    args.extend(["--partitions".into(), "all".into()]);
    let run = adtally(&args.iter().map(String::as_str).collect::<Vec<_>>());
    // Heartbeat lines go to every partition: 4 lines, 16 records.
    assert!(run.contains("150016 records"), "{run}");
    assert_exact(&s, 150_016);
}

/// A module that traps on one record: the host reports it, restores the
/// partition's core from its snapshot, replays one record at a time,
/// quarantines the record the module fails on by itself, and goes on; the
/// counts are exact. (`adtally_component_trap_marker.wasm` is a test build
/// that traps on records containing `adtally-trap-test`.)
#[test]
fn a_trapping_record_is_quarantined_then_exact() {
    use adtally_host::generator::{GenConfig, GenRecord, generate};
    let (tmp, broker, ch) = start("kafka-trap", |_| "memory://tansu/".to_string());
    let mut g = generate(GenConfig {
        records: 150_000,
        ..GenConfig::default()
    });
    // The poison goes into the middle of partition 2.
    let at = g.records.len() / 2;
    g.records.insert(
        at,
        GenRecord {
            partition: 2,
            payload: "adtally-trap-test".into(),
        },
    );
    let expected_path = tmp.join("expected.tsv");
    g.write_expected(&expected_path).unwrap();
    create_topic(&broker);
    adtally_host::source::produce(broker.addr(), "clicks", &g.records).unwrap();
    let s = Setup {
        tmp,
        broker,
        ch,
        expected_path,
    };
    let mut args = run_args(&s);
    args.extend(
        [
            "--partitions",
            "all",
            "--module",
            "target/wasm/adtally_component_trap_marker.wasm",
        ]
        .map(String::from),
    );
    let run = adtally(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(run.contains("1 records quarantined"), "{run}");
    assert!(
        run.contains("the core failed at offset"),
        "the trap is reported:\n{run}"
    );
    let q = query_tsv(
        &s.ch.url(),
        "SELECT source_partition, reason FROM adtally.invalid_events WHERE startsWith(reason, 'module_trap') FORMAT TSV",
    );
    assert!(q.starts_with("2\tmodule_trap: "), "{q}");
    assert_exact(&s, 150_005);
}

/// The Yahoo Streaming Benchmark mode: its JSON events through Kafka, its
/// views counted as clicks; exact.
#[test]
fn ysb_views_are_counted_exactly() {
    let s = setup_gen(
        "kafka-ysb",
        150_000,
        |_| "memory://tansu/".to_string(),
        &["--ysb"],
    );
    let mut args = run_args(&s);
    args.extend(["--partitions".into(), "all".into()]);
    let run = adtally(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(run.contains("150004 records"), "{run}");
    let reasons = query_tsv(
        &s.ch.url(),
        "SELECT reason, count() FROM adtally.invalid_events FINAL GROUP BY reason ORDER BY reason FORMAT TSV",
    );
    assert!(
        reasons.contains("bad_ip\t") && reasons.contains("not_a_view\t"),
        "{reasons}"
    );
    assert_exact(&s, 150_004);
}
