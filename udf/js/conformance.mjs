// Runs the conformance vectors through the wasm-bindgen build in Node.js.
// usage: node udf/js/conformance.mjs VECTORS_DIR PKG_DIR
// Prints one JSON line per vector in the shape the conformance tool compares.
import { createRequire } from "node:module";
import { readdirSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";

const [vectorsDir, pkgDir] = process.argv.slice(2);
const require = createRequire(import.meta.url);
const adtally = require(resolve(pkgDir, "adtally_js.js"));
const enc = new TextEncoder();

function* records(vector) {
  const next = new Map();
  for (const step of vector.steps) {
    for (const r of step.records ?? []) {
      const p = r.p ?? 0;
      const o = r.o ?? next.get(p) ?? 0;
      next.set(p, o + 1);
      let payload;
      if (r.x !== undefined) payload = Uint8Array.from(r.x.match(/../g) ?? [], (h) => parseInt(h, 16));
      else payload = enc.encode(typeof r.v === "string" ? r.v : JSON.stringify(r.v));
      yield { p, o, payload, t: r.t };
    }
  }
}

function run(vector) {
  const config = vector.config ?? {};
  const configJson = JSON.stringify(config);
  const windowMs = config.window_ms ?? 60000;
  const skew = config.max_future_skew_ms ?? 3600000;
  const annotated = [];
  for (const r of records(vector)) {
    const a = JSON.parse(adtally.parse(r.payload, r.t, skew));
    const rec = { p: r.p, o: r.o, kind: a.kind };
    if (a.kind === "invalid") rec.reason = a.reason;
    else if (a.kind === "heartbeat") rec.time = a.time;
    else {
      rec.key = a.key;
      rec.time = a.time;
      rec.window_start = adtally.windowStart(a.time, windowMs);
      rec.filters = Array.from(adtally.filterIds(configJson, a.country, a.ip, a.user_id));
    }
    annotated.push(rec);
  }
  // The whole engine, step by step, snapshots included.
  let engine = new adtally.Engine(configJson);
  const all = { rollups: [], late: [], invalid: [], top_n: [], duplicates: 0, replayed: 0 };
  const take = () => {
    const o = JSON.parse(engine.takeOutputs());
    for (const k of ["rollups", "late", "invalid", "top_n"]) all[k].push(...o[k]);
    all.duplicates += o.duplicates;
    all.replayed += o.replayed;
  };
  const offsets = records(vector);
  for (const step of vector.steps) {
    if (step.tick !== undefined) engine.tick(step.tick);
    else if (step.snapshot_restore) {
      const bytes = engine.snapshot();
      engine.free();
      engine = adtally.Engine.restore(bytes);
    } else {
      for (let i = 0; i < step.records.length; i++) {
        const r = offsets.next().value;
        engine.push(r.p, r.o, r.payload, r.t, step.now);
      }
    }
    take();
  }
  const merges = (vector.merges ?? []).map((m) => {
    try {
      return JSON.parse(adtally.mergeTopN(JSON.stringify(m.lists), m.n));
    } catch {
      return "error";
    }
  });
  return { records: annotated, outputs: all, merges };
}

for (const name of readdirSync(vectorsDir).filter((n) => n.endsWith(".json")).sort()) {
  const vector = JSON.parse(readFileSync(join(vectorsDir, name), "utf8"));
  const result = { name: name.slice(0, -5) };
  try {
    Object.assign(result, run(vector));
  } catch (e) {
    result.error = String(e?.message ?? e);
  }
  console.log(JSON.stringify(result));
}
