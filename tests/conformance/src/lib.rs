//! The conformance vectors: loading them, running them natively, and
//! comparing any build's results with the expected ones.
//!
//! This crate owns the vector format; it never decides semantics (the core
//! does) and never talks to the builds itself beyond running them.
//!
//! # Vector format (`tests/vectors/*.json`)
//!
//! ```json
//! {
//!   "description": "what the vector shows",
//!   "config": { "window_ms": 10000 },        // overrides of Config::default()
//!   "steps": [
//!     { "now": 0, "records": [ { "p": 0, "v": "ad1, 1000, u, 1.1.1.1, USA", "o": 7, "t": 0 } ] },
//!     { "tick": 61000 },
//!     { "snapshot_restore": true }
//!   ],
//!   "merges": [ { "lists": [[["a", 9]]], "n": 3 } ],
//!   "calls": [ { "window_start": [61000, 60000] }, { "filter_ids": ["USA", "1.2.3.4", "u1"] } ],
//!   "expected": { "records": [...], "outputs": {...}, "merges": [...], "calls": [...] }
//! }
//! ```
//!
//! A record's `v` is the payload: a string as is, or a JSON object sent as
//! compact JSON (`x` instead gives the payload's bytes in hex); `p` is the partition (default 0), `o` the offset (default:
//! one after the previous record of the partition), `t` the record time.
//! `expected.outputs` is every output of the run, concatenated in order;
//! `expected.records` is, for each record, what the stateless functions say
//! of it (the core's `RecordSummary`, classified: kind, reason, key, time,
//! the click's fields, window, filters), which is what the ClickHouse UDFs
//! compute. `calls` are direct calls of the stateless functions, with
//! arguments no record gives them; each result is a value or `"error"`. A
//! vector whose `config` the core refuses has `expected.config_error`
//! instead of records and outputs: every build must refuse it with an
//! error containing that message.
//!
//! This crate is the only reader of the format: the ClickHouse and
//! JavaScript harnesses get each vector as [`Vector::normalised`] (one JSON
//! line each, `conformance --normalised`), with every offset and payload
//! spelled out.

use adtally_core::topn::{self, RankedAd};
use adtally_core::{
    AdId, Classifier, Config, Engine, EventTime, Offset, Outputs, Partition, WindowSize,
};
use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One record of a vector.
#[derive(Clone, Debug)]
pub struct Rec {
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: i64,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// Record (Kafka) time.
    pub record_time: Option<i64>,
}

/// One step of a vector.
#[derive(Clone, Debug)]
pub enum Step {
    /// Records pushed at processing time `now`.
    Batch {
        /// Processing time.
        now: i64,
        /// The records.
        records: Vec<Rec>,
    },
    /// Processing time passes.
    Tick(i64),
    /// The state is snapshotted and a new engine restored from it.
    SnapshotRestore,
}

/// A top-N merge case.
#[derive(Clone, Debug, Deserialize)]
pub struct MergeCase {
    /// Lists of `[ad_id, clicks]`.
    pub lists: Vec<Vec<(String, u64)>>,
    /// How many to keep.
    pub n: u32,
}

impl MergeCase {
    /// The lists as the core's type.
    pub fn ranked_lists(&self) -> Vec<Vec<RankedAd>> {
        self.lists
            .iter()
            .map(|l| {
                l.iter()
                    .map(|(a, c)| RankedAd {
                        ad_id: AdId::new(a).expect("vector ad id"),
                        clicks: *c,
                    })
                    .collect()
            })
            .collect()
    }
}

/// A direct call of a stateless function.
#[derive(Clone, Debug, PartialEq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Call {
    /// `window_start(time_ms, window_ms)`.
    WindowStart(i64, i64),
    /// `filter_ids(country, ip, user_id)` under the vector's filters.
    FilterIds(String, String, String),
}

/// A loaded vector.
#[derive(Clone, Debug)]
pub struct Vector {
    /// File stem.
    pub name: String,
    /// The file.
    pub path: PathBuf,
    /// The raw JSON (kept so that blessing rewrites only `expected`).
    pub raw: Value,
    /// The configuration as the vector gives it (fields may be missing).
    pub config_json: String,
    /// The configuration, or the core's reason for refusing it.
    pub config: Result<Config, String>,
    /// Steps.
    pub steps: Vec<Step>,
    /// Merge cases.
    pub merges: Vec<MergeCase>,
    /// Direct calls.
    pub calls: Vec<Call>,
}

/// What a build produced for a vector, as canonical JSON.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Actual {
    /// Per-record annotations, if the build computes them.
    pub records: Option<Value>,
    /// The concatenated outputs, if the build runs the engine.
    pub outputs: Option<Value>,
    /// Merge results, if the build merges.
    pub merges: Option<Value>,
    /// Results of the direct calls, if the build has the functions.
    pub calls: Option<Value>,
    /// The error refusing the configuration, if the build refused it.
    pub config_error: Option<String>,
}

/// The directory of the vectors.
pub fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../vectors")
}

/// Loads every vector, sorted by name.
pub fn load_all(dir: &Path) -> Result<Vec<Vector>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    paths.iter().map(|p| load(p)).collect()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect()
}

/// Loads one vector.
pub fn load(path: &Path) -> Result<Vector> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let raw: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("?")
        .to_string();
    let config_json = raw.get("config").cloned().unwrap_or(json!({})).to_string();
    let config = Config::from_json(&config_json).map_err(|e| e.to_string());
    let mut next: BTreeMap<u32, i64> = BTreeMap::new();
    let mut steps = Vec::new();
    for (i, s) in raw["steps"]
        .as_array()
        .context("`steps` must be a list")?
        .iter()
        .enumerate()
    {
        if let Some(t) = s.get("tick") {
            steps.push(Step::Tick(t.as_i64().context("tick must be an integer")?));
        } else if s.get("snapshot_restore").is_some() {
            steps.push(Step::SnapshotRestore);
        } else if let Some(recs) = s.get("records") {
            let now = s["now"]
                .as_i64()
                .with_context(|| format!("{name}: step {i} needs `now`"))?;
            let mut records = Vec::new();
            for r in recs.as_array().context("records must be a list")? {
                let partition = r.get("p").and_then(Value::as_u64).unwrap_or(0) as u32;
                let offset = match r.get("o").and_then(Value::as_i64) {
                    Some(o) => o,
                    None => *next.get(&partition).unwrap_or(&0),
                };
                next.insert(partition, offset + 1);
                let payload = match (&r["v"], r.get("x").and_then(Value::as_str)) {
                    (_, Some(hex)) => {
                        decode_hex(hex).with_context(|| format!("{name}: bad hex payload {hex}"))?
                    }
                    (Value::String(s), None) => s.clone().into_bytes(),
                    (other, None) => other.to_string().into_bytes(),
                };
                records.push(Rec {
                    partition,
                    offset,
                    payload,
                    record_time: r.get("t").and_then(Value::as_i64),
                });
            }
            steps.push(Step::Batch { now, records });
        } else {
            bail!("{name}: step {i} is neither records, tick nor snapshot_restore");
        }
    }
    let merges = match raw.get("merges") {
        Some(m) => serde_json::from_value(m.clone()).with_context(|| format!("{name}: merges"))?,
        None => Vec::new(),
    };
    let calls = match raw.get("calls") {
        Some(c) => serde_json::from_value(c.clone()).with_context(|| format!("{name}: calls"))?,
        None => Vec::new(),
    };
    if config.is_err() && !steps.is_empty() {
        bail!("{name}: a vector whose config is refused has no steps to run");
    }
    Ok(Vector {
        name,
        path: path.to_path_buf(),
        raw,
        config_json,
        config,
        steps,
        merges,
        calls,
    })
}

impl Vector {
    /// The expected results stored in the file.
    pub fn expected(&self) -> Option<&Value> {
        self.raw.get("expected")
    }

    /// Every record in order.
    pub fn records(&self) -> impl Iterator<Item = &Rec> {
        self.steps.iter().flat_map(|s| match s {
            Step::Batch { records, .. } => records.as_slice(),
            _ => &[],
        })
    }

    /// The vector as the external harnesses and tests get it: the
    /// configuration as given, every step with its records' partition,
    /// offset, payload (hex) and record time spelled out, and the expected
    /// results (which the build harnesses ignore; tests of the ClickHouse
    /// pipeline compare with them).
    pub fn normalised(&self) -> Value {
        let steps: Vec<Value> = self
            .steps
            .iter()
            .map(|s| match s {
                Step::Batch { now, records } => json!({
                    "now": now,
                    "records": records.iter().map(|r| json!({
                        "p": r.partition,
                        "o": r.offset,
                        "x": hex(&r.payload),
                        "t": r.record_time,
                    })).collect::<Vec<_>>(),
                }),
                Step::Tick(now) => json!({"tick": now}),
                Step::SnapshotRestore => json!({"snapshot_restore": true}),
            })
            .collect();
        json!({
            "name": self.name,
            "config": self.config_json,
            "steps": steps,
            "merges": self.merges.iter().map(|m| json!({"lists": m.lists, "n": m.n})).collect::<Vec<_>>(),
            "calls": self.calls,
            "expected": self.expected(),
        })
    }

    /// Writes `actual` as the expected results.
    pub fn bless(&self, actual: &Actual) -> Result<()> {
        let mut raw = self.raw.clone();
        let mut expected = json!({
            "records": actual.records,
            "outputs": actual.outputs,
            "merges": actual.merges,
        });
        if let Some(calls) = &actual.calls {
            expected["calls"] = calls.clone();
        }
        if let Some(e) = &actual.config_error {
            expected["config_error"] = json!(e);
        }
        raw["expected"] = expected;
        let text = serde_json::to_string_pretty(&raw)? + "\n";
        std::fs::write(&self.path, text).with_context(|| format!("writing {}", self.path.display()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the stateless functions say of one record: the core's classified
/// summary, with its partition and offset.
pub fn annotate_record(classifier: &Classifier, rec: &Rec) -> Value {
    let mut v = serde_json::to_value(classifier.summarize(&rec.payload, rec.record_time))
        .expect("a summary serializes");
    v["p"] = json!(rec.partition);
    v["o"] = json!(rec.offset);
    v
}

/// One record as the normalised vectors spell it.
#[derive(Deserialize)]
struct NormalisedRecord {
    p: u32,
    o: i64,
    x: String,
    t: Option<i64>,
}

/// The native core's annotation of each record of `input` (normalised, a
/// JSON object a line) under `config_json`, a JSON line each to `output`.
pub fn summarize(
    config_json: &str,
    input: impl std::io::BufRead,
    mut output: impl std::io::Write,
) -> Result<()> {
    let config = Config::from_json(config_json).map_err(|e| anyhow::anyhow!("{e}"))?;
    let classifier = Classifier::new(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
    for (i, line) in input.lines().enumerate() {
        let r: NormalisedRecord = serde_json::from_str(&line?)
            .with_context(|| format!("record {i}: not a normalised record"))?;
        let rec = Rec {
            partition: r.p,
            offset: r.o,
            payload: decode_hex(&r.x).with_context(|| format!("record {i}: bad hex"))?,
            record_time: r.t,
        };
        writeln!(output, "{}", annotate_record(&classifier, &rec))?;
    }
    Ok(())
}

/// Annotations of every record, if the configuration is accepted.
pub fn annotate(v: &Vector) -> Option<Value> {
    let classifier = Classifier::new(v.config.as_ref().ok()?).expect("checked at load");
    Some(Value::Array(
        v.records()
            .map(|r| annotate_record(&classifier, r))
            .collect(),
    ))
}

/// The direct calls, by the native core.
pub fn run_calls(v: &Vector) -> Value {
    let classifier = v
        .config
        .as_ref()
        .ok()
        .map(|c| Classifier::new(c).expect("checked"));
    Value::Array(
        v.calls
            .iter()
            .map(|c| match c {
                Call::WindowStart(t, w) => match WindowSize::checked(*w) {
                    Ok(size) => json!(size.window_of(EventTime(*t)).0),
                    Err(_) => json!("error"),
                },
                Call::FilterIds(country, ip, user) => match &classifier {
                    Some(c) => json!(c.filter_ids(country, ip, user)),
                    None => json!("error"),
                },
            })
            .collect(),
    )
}

/// Runs the merge cases with the native core.
pub fn run_merges(v: &Vector) -> Value {
    Value::Array(
        v.merges
            .iter()
            .map(|m| {
                merge_result_json(
                    topn::merge(&m.ranked_lists(), m.n as usize).map_err(|e| e.to_string()),
                )
            })
            .collect(),
    )
}

/// The canonical JSON of a merge result: a list of `[ad, clicks]`, or `"error"`.
pub fn merge_result_json(r: Result<Vec<RankedAd>, String>) -> Value {
    match r {
        Ok(l) => Value::Array(
            l.iter()
                .map(|r| json!([r.ad_id.as_str(), r.clicks]))
                .collect(),
        ),
        Err(_) => json!("error"),
    }
}

/// What runs a vector's steps: the native engine, a component's aggregator.
pub trait StepRunner {
    /// Pushes a batch.
    fn push(&mut self, now: i64, records: &[Rec]) -> Result<Value>;
    /// Processing time passes.
    fn tick(&mut self, now: i64) -> Result<Value>;
    /// Snapshot, drop, restore.
    fn snapshot_restore(&mut self) -> Result<()>;
}

/// Runs the steps and concatenates the outputs (canonical JSON).
pub fn run_steps(v: &Vector, engine: &mut dyn StepRunner) -> Result<Value> {
    let mut all = json!({"rollups": [], "late": [], "invalid": [], "top_n": [], "duplicates": 0, "replayed": 0});
    for step in &v.steps {
        let out = match step {
            Step::Batch { now, records } => engine.push(*now, records)?,
            Step::Tick(now) => engine.tick(*now)?,
            Step::SnapshotRestore => {
                engine.snapshot_restore()?;
                continue;
            }
        };
        append_outputs(&mut all, out);
    }
    Ok(all)
}

fn append_outputs(all: &mut Value, out: Value) {
    for k in ["rollups", "late", "invalid", "top_n"] {
        if let (Some(a), Some(b)) = (all[k].as_array_mut(), out[k].as_array()) {
            a.extend(b.iter().cloned());
        }
    }
    for k in ["duplicates", "replayed"] {
        all[k] = json!(all[k].as_u64().unwrap_or(0) + out[k].as_u64().unwrap_or(0));
    }
}

/// The native engine.
pub struct Native(pub Engine);

impl StepRunner for Native {
    fn push(&mut self, now: i64, records: &[Rec]) -> Result<Value> {
        let mut out = Outputs::default();
        for r in records {
            self.0.push_record(
                Partition(r.partition),
                Offset(r.offset),
                &r.payload,
                r.record_time,
                now,
                &mut out,
            );
        }
        Ok(serde_json::to_value(&out)?)
    }
    fn tick(&mut self, now: i64) -> Result<Value> {
        let mut out = Outputs::default();
        self.0.tick(now, &mut out);
        Ok(serde_json::to_value(&out)?)
    }
    fn snapshot_restore(&mut self) -> Result<()> {
        let bytes = self.0.snapshot();
        self.0 = Engine::restore(&bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(())
    }
}

/// Runs a vector on the native core: every part.
pub fn run_native(v: &Vector) -> Result<Actual> {
    let outputs = match &v.config {
        Ok(config) => {
            let mut engine =
                Native(Engine::new(config.clone()).map_err(|e| anyhow::anyhow!("{e}"))?);
            Some(run_steps(v, &mut engine)?)
        }
        Err(_) => None,
    };
    Ok(Actual {
        records: annotate(v),
        outputs,
        merges: Some(run_merges(v)),
        calls: (!v.calls.is_empty()).then(|| run_calls(v)),
        config_error: v.config.as_ref().err().cloned(),
    })
}

/// Compares what a build produced with what is expected; the parts a
/// build does not produce are not compared. Returns the first difference.
pub fn compare(v: &Vector, actual: &Actual) -> Result<(), String> {
    let Some(expected) = v.expected() else {
        return Err("no expected results: run with --bless".into());
    };
    let mut compared = 0;
    match (
        expected.get("config_error").and_then(Value::as_str),
        &actual.config_error,
    ) {
        (None, None) => {}
        (Some(want), Some(got)) if got.contains(want) => compared += 1,
        (Some(want), got) => {
            return Err(format!("config_error: expected {want:?}, got {got:?}"));
        }
        (None, Some(got)) => return Err(format!("the config was refused: {got}")),
    }
    let parts = [
        ("records", &actual.records),
        ("outputs", &actual.outputs),
        ("merges", &actual.merges),
        ("calls", &actual.calls),
    ];
    for (name, got) in parts {
        let Some(got) = got else { continue };
        compared += 1;
        let want = &expected[name];
        if want != got {
            return Err(format!("{name}: {}", first_difference(want, got, name)));
        }
    }
    if compared == 0 {
        return Err("the build produced nothing to compare".into());
    }
    Ok(())
}

fn first_difference(want: &Value, got: &Value, path: &str) -> String {
    match (want, got) {
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                if x != y {
                    return first_difference(x, y, &format!("{path}[{i}]"));
                }
            }
            format!("{path}: expected {} items, got {}", a.len(), b.len())
        }
        (Value::Object(a), Value::Object(b)) => {
            for (k, x) in a {
                let y = b.get(k).unwrap_or(&Value::Null);
                if x != y {
                    return first_difference(x, y, &format!("{path}.{k}"));
                }
            }
            format!("{path}: unexpected keys in {got}")
        }
        _ => format!("{path}: expected {want}, got {got}"),
    }
}
