//! A built-in check that a build computes what the semantics say, run by
//! every module's `self-test` before a host swaps it in.

use crate::{Config, Engine, Offset, Outputs, Partition, SEMANTICS_VERSION};
use alloc::format;
use alloc::string::String;

/// Runs a short stream with known outputs (a duplicate, an on-time click, a
/// late click, a snapshot round trip, a heartbeat too far ahead) and
/// reports the first mismatch.
pub fn self_test() -> Result<(), String> {
    // One record moves the watermark: the stream stays short.
    let config = Config {
        watermark_quorum: 1,
        ..Config::default()
    };
    let mut e = Engine::new(config).map_err(|e| format!("{e}"))?;
    let mut out = Outputs::default();
    let p = Partition(0);
    let recs: [&[u8]; 6] = [
        b"ad1, 1000, u1, 1.1.1.1, USA",
        br#"{"ad_id":"ad1","click_timestamp":1999,"user_id":"u1","ip":"1.1.1.1","country":"USA"}"#,
        b"ad1, 80000, u2, 1.1.1.1, USA",
        b"ad1, 2000, u3, 1.1.1.1, USA",
        b"ad1, 1000, u1, 1.1.1.1",
        // 9 h past the frontier: side-lined, not counted.
        b"[Heartbeat] 32480000",
    ];
    for (i, r) in recs.iter().enumerate().take(3) {
        e.push_record(p, Offset(i as i64), r, None, 0, &mut out);
    }
    e = Engine::restore(&e.snapshot()).map_err(|e| format!("snapshot round trip: {e}"))?;
    for (i, r) in recs.iter().enumerate().skip(3) {
        e.push_record(p, Offset(i as i64), r, None, 0, &mut out);
    }
    let check = |what: &str, got: u64, want: u64| {
        if got == want {
            Ok(())
        } else {
            Err(format!(
                "self-test (semantics {SEMANTICS_VERSION}): {what} = {got}, expected {want}"
            ))
        }
    };
    check("duplicates", out.duplicates, 1)?;
    // The side-lined heartbeat is still a sample: it closes the window of
    // 80 s as well.
    check("rollups", out.rollups.len() as u64, 2)?;
    check("clicks", out.rollups[0].clicks, 1)?;
    check("late", out.late.len() as u64, 1)?;
    check("invalid", out.invalid.len() as u64, 2)?;
    // Minutes 0 and 1 over M = 1, and over M = 5 every minute up to 5.
    check("top-n rows", out.top_n.len() as u64, 8)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_native_build_passes_its_self_test() {
        assert_eq!(super::self_test(), Ok(()));
    }
}
