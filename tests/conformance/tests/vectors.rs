//! The vectors hold for the native core, and the properties users rely on
//! hold on every vector: snapshots and batch boundaries are invisible.

use adtally_conformance::{
    Native, Step, Vector, compare, load_all, run_native, run_steps, vectors_dir,
};
use adtally_core::{Engine, InvalidReason};
use std::collections::BTreeSet;

fn vectors() -> Vec<Vector> {
    load_all(&vectors_dir()).expect("vectors load")
}

/// The vectors whose configuration the core accepts, which run steps.
fn running() -> impl Iterator<Item = Vector> {
    vectors().into_iter().filter(|v| v.config.is_ok())
}

fn outputs_with(v: &Vector, steps: Vec<Step>) -> serde_json::Value {
    let mut v = v.clone();
    v.steps = steps;
    let mut engine = Native(Engine::new(v.config.clone().unwrap()).unwrap());
    run_steps(&v, &mut engine).unwrap()
}

#[test]
fn every_vector_passes_natively() {
    for v in vectors() {
        let actual = run_native(&v).unwrap();
        if let Err(e) = compare(&v, &actual) {
            panic!("{}: {e}", v.name);
        }
    }
}

#[test]
fn snapshot_restore_is_invisible() {
    for v in running() {
        let plain: Vec<Step> = v
            .steps
            .iter()
            .filter(|s| !matches!(s, Step::SnapshotRestore))
            .cloned()
            .collect();
        let everywhere: Vec<Step> = plain
            .iter()
            .flat_map(|s| [s.clone(), Step::SnapshotRestore])
            .collect();
        let a = outputs_with(&v, plain);
        let b = outputs_with(&v, everywhere);
        assert_eq!(
            a, b,
            "{}: snapshot/restore after every step changed the outputs",
            v.name
        );
        assert_eq!(&a, &v.expected().unwrap()["outputs"], "{}", v.name);
    }
}

#[test]
fn batch_boundaries_are_invisible() {
    for v in running() {
        let split: Vec<Step> = v
            .steps
            .iter()
            .flat_map(|s| match s {
                Step::Batch { now, records } => records
                    .iter()
                    .map(|r| Step::Batch {
                        now: *now,
                        records: vec![r.clone()],
                    })
                    .collect::<Vec<_>>(),
                other => vec![other.clone()],
            })
            .collect();
        assert_eq!(
            outputs_with(&v, split),
            v.expected().unwrap()["outputs"],
            "{}",
            v.name
        );
    }
}

#[test]
fn every_invalid_reason_is_covered() {
    // The stateless reasons are in each record's annotation; the one that
    // depends on a partition's state (ahead_of_partition) only in the
    // engine's invalid side output.
    let seen: BTreeSet<String> = vectors()
        .iter()
        .flat_map(|v| {
            let expected = v.expected().unwrap();
            let records = expected["records"].as_array().cloned().unwrap_or_default();
            let invalid = expected["outputs"]["invalid"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            records.into_iter().chain(invalid)
        })
        .filter_map(|r| r["reason"].as_str().map(String::from))
        .collect();
    for r in InvalidReason::all() {
        assert!(
            seen.contains(&r.code().to_string()),
            "no vector covers {}",
            r.code()
        );
    }
}

#[test]
fn the_builtin_self_test_passes_natively() {
    adtally_core::self_test().unwrap();
}
