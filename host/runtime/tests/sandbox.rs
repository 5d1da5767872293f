//! The sandbox refuses bad modules with a clear error and survives a
//! module that runs out of memory. Needs `make wasm`.

use adtally_core::{Offset, Partition, RawRecord};
use adtally_runtime::{Limits, Runtime};
use std::path::PathBuf;

fn component() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/wasm/adtally_component.wasm")
}

/// `n` clicks of distinct ads, as log lines.
fn distinct_clicks(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!("ad{i}, {}, u{i}, 1.1.1.1, USA", i * 10).into_bytes())
        .collect()
}

fn records(payloads: &[Vec<u8>]) -> Vec<RawRecord<'_>> {
    payloads
        .iter()
        .enumerate()
        .map(|(i, p)| RawRecord {
            partition: Partition(0),
            offset: Offset(i as i64),
            payload: p,
            record_time_ms: None,
        })
        .collect()
}

#[test]
fn garbage_is_refused_with_a_clear_error() {
    let rt = Runtime::new(Limits::default()).unwrap();
    let err = rt.load(b"\0asm but not really").err().expect("refused");
    assert!(
        format!("{err:#}").contains("not a valid adtally component"),
        "{err:#}"
    );
}

#[test]
fn the_component_loads_self_tests_and_carries_its_hash() {
    let bytes = std::fs::read(component()).expect("run `make wasm` first");
    let rt = Runtime::new(Limits::default()).unwrap();
    let module = rt.load(&bytes).unwrap();
    let sha = std::process::Command::new("sha256sum")
        .arg(component())
        .output()
        .unwrap();
    let sha = String::from_utf8(sha.stdout).unwrap();
    assert_eq!(module.sha256(), sha.split_whitespace().next().unwrap());
    assert_eq!(
        module.info().semantics_version,
        adtally_core::SEMANTICS_VERSION
    );
    assert_eq!(module.info().version, adtally_core::VERSION);
    // A bad configuration is refused, naming the field.
    let err = module
        .create(r#"{"dedup_horizon_ms": 1000}"#)
        .err()
        .expect("refused");
    assert!(format!("{err:#}").contains("dedup_horizon_ms"), "{err:#}");
}

#[test]
fn running_out_of_memory_is_an_error_not_a_crash() {
    let limits = Limits {
        max_memory_bytes: 4 << 20,
        ..Limits::default()
    };
    let rt = Runtime::new(limits).unwrap();
    let module = rt.load_file(&component()).unwrap();
    let mut agg = module.create("{}").unwrap();
    // Distinct ads until the 4 MiB cap is hit.
    let payloads = distinct_clicks(200_000);
    let recs = records(&payloads);
    let (mut failed, mut kind) = (None, None);
    for chunk in recs.chunks(10_000) {
        if let Err(e) = agg.push(chunk, 0) {
            failed = Some(format!("{e:#}"));
            kind = Some(adtally_runtime::Failure::of(&e));
            break;
        }
    }
    let msg = failed.expect("a 4 MiB instance cannot hold 200k distinct keys");
    assert!(msg.contains("module trapped in push"), "{msg}");
    assert_eq!(kind, Some(adtally_runtime::Failure::OutOfMemory), "{msg}");
    // The runtime and module still work: a new instance starts fine.
    let mut fresh = module.create("{}").unwrap();
    assert!(fresh.push(&[], 0).unwrap().rollups.is_empty());
}

#[test]
fn a_call_past_its_deadline_is_interrupted_and_reported() {
    let limits = Limits {
        call_deadline: std::time::Duration::from_millis(50),
        ..Limits::default()
    };
    let rt = Runtime::new(limits).unwrap();
    let module = rt.load_file(&component()).unwrap();
    let mut agg = module.create("{}").unwrap();
    let payloads = distinct_clicks(200_000);
    let recs = records(&payloads);
    let err = agg
        .push(&recs, 0)
        .expect_err("200k records cannot be aggregated in 50-60 ms");
    let msg = format!("{err:#}");
    assert!(msg.contains("module trapped in push"), "{msg}");
    assert!(msg.contains("interrupt"), "the epoch deadline fired: {msg}");
    assert_eq!(
        adtally_runtime::Failure::of(&err),
        adtally_runtime::Failure::Deadline
    );
    // The host goes on: a new instance serves the next call.
    let mut fresh = module.create("{}").unwrap();
    assert!(fresh.push(&recs[..10], 0).unwrap().invalid.is_empty());
}

#[test]
fn a_bad_click_refuses_its_whole_batch_by_name() {
    use adtally_core::{AdId, Click, Country, EventTime, UserId};
    let rt = Runtime::new(Limits::default()).unwrap();
    let module = rt.load_file(&component()).unwrap();
    let mut agg = module.create("{}").unwrap();
    let click = |ad: &str, user: &str| Click {
        ad_id: AdId::new(ad).unwrap(),
        timestamp: EventTime(1_000),
        user_id: UserId::new(user).unwrap(),
        ip: "10.0.0.1".parse().unwrap(),
        country: Country::new("FRA").unwrap(),
        event_id: None,
    };
    let good = click("ad1", "u1");
    // A UserId cannot hold a control character, so build the bad one by
    // hand through the serde form (the component must not trust the host).
    let bad: Click = serde_json::from_str(
        r#"{"ad_id": "ad2", "timestamp": 1000, "user_id": "u\u0007", "ip": "10.0.0.1",
            "country": "FRA", "event_id": null}"#,
    )
    .unwrap();
    let err = agg
        .push_clicks(Partition(0), Offset(0), &[good.clone(), bad], 0)
        .expect_err("refused");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("clicks[1]") && msg.contains("user_id"),
        "{msg}"
    );
    // Nothing of the batch was processed: offset 0 is still new.
    let out = agg
        .push_clicks(Partition(0), Offset(0), &[good], 0)
        .unwrap();
    assert_eq!(out.replayed, 0);
    assert_eq!(agg.positions().unwrap()[0].next_offset, Some(Offset(1)));
}
