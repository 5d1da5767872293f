//! `adtally-demo` end to end: a generated stream with duplicates, disorder,
//! late and invalid records through a local Tansu, the core component in
//! wasmtime and the embedded ClickHouse; every (minute, ad) count must equal
//! the generator's own totals. Needs `make setup` and `make wasm`.

#[test]
fn demo_pipeline_is_exact() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let data = std::env::temp_dir().join(format!("adtally-demo-test-{}", std::process::id()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_adtally-demo"))
        .current_dir(&root)
        .args(["--records", "150000", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("exact: all"), "{stdout}");
    // And it prints the top ads, merged over the partitions.
    assert!(
        stdout.contains("Top 10 ads of the 5 minutes") && stdout.contains("   1. ad"),
        "{stdout}"
    );
    // The stream had every kind of record, and the core saw each.
    let line = stdout.lines().find(|l| l.contains("consumed ")).unwrap();
    for kind in ["duplicates dropped", "late", "invalid"] {
        let n: u64 = line
            .split(", ")
            .find(|p| p.contains(kind))
            .and_then(|p| p.split_whitespace().next())
            .unwrap()
            .parse()
            .unwrap();
        assert!(n > 0, "no {kind}: {line}");
    }
    // It stored raw events and ends with the reconciliation of the stream
    // against the batch truth: the late clicks explained, nothing else.
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("reconcile ")
            && last.contains(" 0 unexplained; ")
            && !last.contains("(0 late"),
        "the last line: {last}"
    );
    let _ = std::fs::remove_dir_all(&data);
}
