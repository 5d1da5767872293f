//! Bad input to the `adtally` command gets a clear error naming what is
//! wrong, before anything is consumed or produced. Needs `make wasm`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `adtally` expecting failure; returns its stderr.
fn refused(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_adtally"))
        .current_dir(root())
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "adtally {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn a_bad_core_configuration_is_refused_by_field_before_consuming() {
    let dir = std::env::temp_dir().join(format!("adtally-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("config.json");
    // A horizon shorter than window + out-of-orderness + lateness could
    // count a duplicate twice: refused.
    std::fs::write(&bad, r#"{"dedup_horizon_ms": 1000}"#).unwrap();
    // No broker listens on port 1: the configuration is checked first.
    let run = || {
        refused(&[
            "run",
            "--brokers",
            "127.0.0.1:1",
            "--config",
            bad.to_str().unwrap(),
        ])
    };
    let err = run();
    assert!(err.contains("dedup_horizon_ms"), "{err}");
    std::fs::write(&bad, r#"{"windw_ms": 60000}"#).unwrap();
    let err = run();
    assert!(err.contains("windw_ms"), "an unknown field is named: {err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_flags_are_refused_with_what_is_expected() {
    let err = refused(&["run", "--brokers", "127.0.0.1:1", "--partitions", "0,x"]);
    assert!(err.contains("\"x\" is not a partition number"), "{err}");
    let err = refused(&["gen", "--records", "10", "--disorder-ms", "60000"]);
    assert!(err.contains("--disorder-ms 60000"), "{err}");
    let err = refused(&["gen", "--records", "10", "--late", "2"]);
    assert!(err.contains("--late 2"), "{err}");
    let err = refused(&["ship", "--brokers", "127.0.0.1:1"]);
    assert!(err.contains("<FILES>"), "the files are required: {err}");
}
