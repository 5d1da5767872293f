//! The core used natively: push records, read the outputs, snapshot and
//! restore mid-stream, and get exactly what an uninterrupted run gets.
//!
//! `cargo run -p adtally-examples --example core`

use adtally_core::{Config, Engine, Offset, Outputs, Partition};

fn main() -> anyhow::Result<()> {
    // A watermark that one record moves, so a short stream shows windows
    // firing (the default waits for a quorum of 5 distinct times).
    let config = Config::from_json(r#"{"watermark_quorum": 1}"#)?;
    let stream: [&[u8]; 6] = [
        br#"{"ad_id":"ad1","click_timestamp":1000,"user_id":"u1","ip":"1.2.3.4","country":"USA"}"#,
        b"ad1, 2000, u2, 1.2.3.5, DEU",
        b"ad1, 2000, u2, 1.2.3.5, DEU", // a duplicate
        b"ad2, 3000, u3, 10.0.0.1, FRA",
        b"not a click",
        b"ad1, 80000, u4, 1.2.3.4, USA", // moves the watermark past minute 0
    ];
    let p = Partition(0);
    let now_ms = 0;

    // Uninterrupted.
    let mut engine = Engine::new(config.clone())?;
    let mut whole = Outputs::default();
    for (i, payload) in stream.iter().enumerate() {
        engine.push_record(p, Offset(i as i64), payload, None, now_ms, &mut whole);
    }

    // Snapshot after three records, restore, go on.
    let mut first = Engine::new(config)?;
    let mut split = Outputs::default();
    for (i, payload) in stream.iter().enumerate().take(3) {
        first.push_record(p, Offset(i as i64), payload, None, now_ms, &mut split);
    }
    let bytes = first.snapshot();
    let mut restored = Engine::restore(&bytes)?;
    for (i, payload) in stream.iter().enumerate().skip(3) {
        restored.push_record(p, Offset(i as i64), payload, None, now_ms, &mut split);
    }

    for r in &whole.rollups {
        println!(
            "window {} ad {} filter {}: {} clicks (version {})",
            r.window_start.0,
            r.ad_id.as_str(),
            r.filter_id.0,
            r.clicks,
            r.version
        );
    }
    for i in &whole.invalid {
        println!("offset {} invalid: {}", i.offset.0, i.reason.code());
    }
    println!(
        "duplicates: {}; snapshot: {} bytes",
        whole.duplicates,
        bytes.len()
    );
    anyhow::ensure!(
        whole.rollups == split.rollups,
        "a restore changed the rollups"
    );
    anyhow::ensure!(
        whole
            .rollups
            .iter()
            .any(|r| r.ad_id.as_str() == "ad1" && r.clicks == 2)
    );
    println!("a snapshot and restore in the middle gave the same rollups");
    Ok(())
}
