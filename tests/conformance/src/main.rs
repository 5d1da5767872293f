//! `conformance`: runs the vectors against the builds and prints a table of
//! vector x build.
//!
//! ```text
//! conformance                       # native only
//! conformance --builds native,component,clickhouse,js
//! conformance --bless               # rewrite expected results from the native core
//! conformance --normalised          # print each vector as the harnesses get it
//! conformance --summarize '{"filters": []}' < records.jsonl   # the native core's verdict on each record
//! ```
//!
//! `--summarize` reads records as the normalised vectors spell them (one
//! `{"p", "o", "x", "t"}` object a line) and prints, a line each, what the
//! native core says of them (the vectors' per-record annotations), for
//! tests that compare a pipeline with the core on records of their own.
//!
//! The ClickHouse and JavaScript harnesses read the vectors from their
//! standard input, one [`Vector::normalised`] JSON line each, and print one
//! result line per vector.

use adtally_conformance::{Actual, Vector, compare, load_all, run_native, vectors_dir};
use anyhow::{Result, bail};
use clap::Parser;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

#[derive(Parser)]
#[command(about = "Run adtally's conformance vectors against its builds")]
struct Args {
    /// Comma-separated builds: native, component, clickhouse, js.
    #[arg(long, default_value = "native", value_delimiter = ',')]
    builds: Vec<String>,
    /// Rewrite each vector's expected results from the native core.
    #[arg(long)]
    bless: bool,
    /// Print every vector, normalised, one JSON line each, and exit.
    #[arg(long)]
    normalised: bool,
    /// Print the native core's verdict on each record of standard input,
    /// under this configuration (JSON), and exit.
    #[arg(long, value_name = "CONFIG_JSON")]
    summarize: Option<String>,
    /// The vectors directory.
    #[arg(long)]
    vectors: Option<PathBuf>,
    /// The component (wasm32-wasip2) build.
    #[arg(long, default_value = "target/wasm/adtally_component.wasm")]
    component: PathBuf,
    /// The ClickHouse UDF module (wasm32-unknown-unknown) build.
    #[arg(long, default_value = "target/wasm/adtally_clickhouse.wasm")]
    clickhouse_module: PathBuf,
    /// The Python interpreter with chdb-core installed.
    #[arg(long, env = "ADTALLY_PYTHON", default_value = "python3")]
    python: String,
    /// The wasm-bindgen (nodejs) output directory.
    #[arg(long, default_value = "target/wasm/js")]
    js_pkg: PathBuf,
}

type Results = BTreeMap<String, Result<Actual, String>>;

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(config) = &args.summarize {
        return adtally_conformance::summarize(
            config,
            std::io::stdin().lock(),
            std::io::stdout().lock(),
        );
    }
    let dir = args.vectors.clone().unwrap_or_else(vectors_dir);
    let vectors = load_all(&dir)?;
    if args.bless {
        for v in &vectors {
            v.bless(&run_native(v)?)?;
        }
        println!("blessed {} vectors from the native core", vectors.len());
        return Ok(());
    }
    if args.normalised {
        for v in &vectors {
            println!("{}", v.normalised());
        }
        return Ok(());
    }
    let mut table: Vec<(String, Results)> = Vec::new();
    for build in &args.builds {
        let results = match build.as_str() {
            "native" => vectors
                .iter()
                .map(|v| (v.name.clone(), run_native(v).map_err(|e| format!("{e:#}"))))
                .collect(),
            "component" => component::run(&args.component, &vectors),
            "clickhouse" => external(
                Command::new(&args.python)
                    .arg("clickhouse/conformance.py")
                    .arg(&args.clickhouse_module),
                &vectors,
            ),
            "js" => external(
                Command::new("node")
                    .arg("udf/js/conformance.mjs")
                    .arg(&args.js_pkg),
                &vectors,
            ),
            other => bail!("unknown build `{other}`: use native, component, clickhouse or js"),
        };
        table.push((build.clone(), results));
    }
    print_table(&vectors, &table)
}

/// Runs an external runner, the normalised vectors on its standard input,
/// that prints one JSON object per vector: `{"name": ..., "records"?: ...,
/// "outputs"?: ..., "merges"?: ..., "calls"?: ..., "config_error"?: ...,
/// "error"?: ...}`.
fn external(cmd: &mut Command, vectors: &[Vector]) -> Results {
    let failed = |msg: String| {
        vectors
            .iter()
            .map(|v| (v.name.clone(), Err(msg.clone())))
            .collect()
    };
    let input: String = vectors
        .iter()
        .map(|v| v.normalised().to_string() + "\n")
        .collect();
    let run = || -> std::io::Result<std::process::Output> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut stdin = child.stdin.take().expect("piped");
        let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
        let out = child.wait_with_output()?;
        writer.join().expect("the writer does not panic")?;
        Ok(out)
    };
    let out = match run() {
        Ok(o) => o,
        Err(e) => return failed(format!("could not run {cmd:?}: {e}")),
    };
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return failed(format!(
            "{cmd:?} failed: {}",
            err.lines().last().unwrap_or("")
        ));
    }
    let mut results: Results = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
    {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let name = v["name"].as_str().unwrap_or("?").to_string();
        let r = match v.get("error").and_then(Value::as_str) {
            Some(e) => Err(e.to_string()),
            None => Ok(Actual {
                records: v.get("records").cloned(),
                outputs: v.get("outputs").cloned(),
                merges: v.get("merges").cloned(),
                calls: v.get("calls").cloned(),
                config_error: v
                    .get("config_error")
                    .and_then(Value::as_str)
                    .map(String::from),
            }),
        };
        results.insert(name, r);
    }
    results
}

fn print_table(vectors: &[Vector], table: &[(String, Results)]) -> Result<()> {
    let width = vectors
        .iter()
        .map(|v| v.name.len())
        .max()
        .unwrap_or(6)
        .max(6);
    print!("{:width$}", "vector");
    for (b, _) in table {
        print!("  {b:>10}");
    }
    println!();
    let mut failures = Vec::new();
    let (mut passed, mut failed) = (0, 0);
    for v in vectors {
        print!("{:width$}", v.name);
        for (b, results) in table {
            let verdict = match results.get(&v.name) {
                None => Err("no result".to_string()),
                Some(Err(e)) => Err(e.clone()),
                Some(Ok(actual)) => compare(v, actual),
            };
            match verdict {
                Ok(()) => {
                    passed += 1;
                    print!("  {:>10}", "pass");
                }
                Err(e) => {
                    failed += 1;
                    print!("  {:>10}", "FAIL");
                    failures.push(format!("{} on {b}: {e}", v.name));
                }
            }
        }
        println!();
    }
    failures.dedup_by(|a, b| a.split_once(": ").map(|x| x.1) == b.split_once(": ").map(|x| x.1));
    for f in &failures {
        println!("  {f}");
    }
    println!("conformance: {passed} passed, {failed} failed");
    if failed > 0 {
        bail!("{failed} vector x build cells failed");
    }
    Ok(())
}

mod component {
    //! The component build, run in-process through wasmtime (adtally-runtime).
    use super::Results;
    use adtally_conformance::{Actual, Rec, StepRunner, Vector, merge_result_json, run_steps};
    use adtally_core::{Offset, Partition, RawRecord};
    use adtally_runtime::{Aggregator, Limits, Module, Runtime};
    use anyhow::Result;
    use serde_json::Value;
    use std::path::Path;

    struct Component<'m> {
        module: &'m Module,
        agg: Option<Aggregator<'m>>,
    }

    impl StepRunner for Component<'_> {
        fn push(&mut self, now: i64, records: &[Rec]) -> Result<Value> {
            let recs: Vec<RawRecord> = records
                .iter()
                .map(|r| RawRecord {
                    partition: Partition(r.partition),
                    offset: Offset(r.offset),
                    payload: &r.payload,
                    record_time_ms: r.record_time,
                })
                .collect();
            Ok(serde_json::to_value(
                self.agg.as_mut().expect("live").push(&recs, now)?,
            )?)
        }
        fn tick(&mut self, now: i64) -> Result<Value> {
            Ok(serde_json::to_value(
                self.agg.as_mut().expect("live").tick(now)?,
            )?)
        }
        fn snapshot_restore(&mut self) -> Result<()> {
            let mut old = self.agg.take().expect("live");
            let bytes = old.snapshot()?;
            drop(old);
            self.agg = Some(self.module.restore(&bytes)?);
            Ok(())
        }
    }

    fn run_one(module: &Module, v: &Vector) -> Result<Actual> {
        let merges = merges(module, v)?;
        let agg = match module.create(&v.config_json) {
            Ok(agg) => agg,
            Err(e) => {
                return Ok(Actual {
                    merges: Some(merges),
                    config_error: Some(format!("{e:#}")),
                    ..Actual::default()
                });
            }
        };
        let mut c = Component {
            module,
            agg: Some(agg),
        };
        Ok(Actual {
            records: None,
            outputs: Some(run_steps(v, &mut c)?),
            merges: Some(merges),
            calls: None,
            config_error: None,
        })
    }

    fn merges(module: &Module, v: &Vector) -> Result<Value> {
        let mut merges = Vec::new();
        for m in &v.merges {
            merges.push(merge_result_json(
                module.merge_top_n(&m.ranked_lists(), m.n)?,
            ));
        }
        Ok(Value::Array(merges))
    }

    pub fn run(path: &Path, vectors: &[Vector]) -> Results {
        let loaded = Runtime::new(Limits::default()).and_then(|rt| Ok((rt.load_file(path)?, rt)));
        match loaded {
            Err(e) => vectors
                .iter()
                .map(|v| (v.name.clone(), Err(format!("{e:#}"))))
                .collect(),
            Ok((module, _rt)) => vectors
                .iter()
                .map(|v| {
                    (
                        v.name.clone(),
                        run_one(&module, v).map_err(|e| format!("{e:#}")),
                    )
                })
                .collect(),
        }
    }
}
