// Runs the conformance vectors through the wasm-bindgen build in Node.js.
// usage: conformance --normalised | node udf/js/conformance.mjs PKG_DIR
// Reads the vectors, normalised by the conformance tool (the only reader of
// the vector format), one JSON line each from standard input; prints one
// JSON line per vector in the shape the conformance tool compares. The
// configuration is read by the build's own `config`, defaults included.
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";

const [pkgDir] = process.argv.slice(2);
const require = createRequire(import.meta.url);
const adtally = require(resolve(pkgDir, "adtally_js.js"));

const bytes = (hex) => Uint8Array.from(hex.match(/../g) ?? [], (h) => parseInt(h, 16));
const orError = (f) => {
  try {
    return f();
  } catch {
    return "error";
  }
};
const time = (t) => t ?? undefined;

function merges(vector) {
  return vector.merges.map((m) => orError(() => JSON.parse(adtally.mergeTopN(JSON.stringify(m.lists), m.n))));
}

// The direct calls; filters from `configJson` (refused: every filter call fails).
function calls(vector, configJson) {
  return vector.calls.map((c) =>
    orError(() =>
      c.window_start !== undefined
        ? adtally.windowStart(...c.window_start)
        : Array.from(adtally.filterIds(configJson, ...c.filter_ids)),
    ),
  );
}

function run(vector) {
  let config;
  try {
    config = JSON.parse(adtally.config(vector.config));
  } catch (e) {
    const refused = { config_error: String(e?.message ?? e), merges: merges(vector) };
    if (vector.calls.length > 0) refused.calls = calls(vector, vector.config);
    return refused;
  }
  const configJson = JSON.stringify(config);
  const records = [];
  for (const step of vector.steps) {
    for (const r of step.records ?? []) {
      const a = JSON.parse(adtally.parse(bytes(r.x), time(r.t), config.max_future_skew_ms));
      if (a.kind === "click") {
        a.window_start = adtally.windowStart(a.time, config.window_ms);
        a.filters = Array.from(adtally.filterIds(configJson, a.country, a.ip, a.user_id));
      }
      records.push({ p: r.p, o: r.o, ...a });
    }
  }
  // The whole engine, step by step, snapshots included.
  let engine = new adtally.Engine(configJson);
  const all = { rollups: [], late: [], invalid: [], top_n: [], duplicates: 0, replayed: 0 };
  for (const step of vector.steps) {
    if (step.tick !== undefined) engine.tick(step.tick);
    else if (step.snapshot_restore) {
      const snapshot = engine.snapshot();
      engine.free();
      engine = adtally.Engine.restore(snapshot);
    } else {
      for (const r of step.records) engine.push(r.p, r.o, bytes(r.x), time(r.t), step.now);
    }
    const o = JSON.parse(engine.takeOutputs());
    for (const k of ["rollups", "late", "invalid", "top_n"]) all[k].push(...o[k]);
    all.duplicates += o.duplicates;
    all.replayed += o.replayed;
  }
  const out = { records, outputs: all, merges: merges(vector) };
  if (vector.calls.length > 0) out.calls = calls(vector, configJson);
  return out;
}

for (const line of readFileSync(0, "utf8").split("\n").filter((l) => l.trim() !== "")) {
  const vector = JSON.parse(line);
  const result = { name: vector.name };
  try {
    Object.assign(result, run(vector));
  } catch (e) {
    result.error = String(e?.message ?? e);
  }
  console.log(JSON.stringify(result));
}
