// The core's JS build in Node: push clicks, read the outputs, snapshot
// and restore.
//
//   make wasm && node examples/js/clicks.mjs
import { createRequire } from "node:module";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);
const here = dirname(fileURLToPath(import.meta.url));
const adtally = require(resolve(here, "../../target/wasm/js/adtally_js.js"));
const enc = new TextEncoder();

console.log("module", adtally.info());
let engine = new adtally.Engine(JSON.stringify({ watermark_quorum: 1 }));
const lines = [
  "ad1, 1000, u1, 1.2.3.4, USA",
  "ad1, 2000, u2, 1.2.3.5, DEU",
  "ad1, 2000, u2, 1.2.3.5, DEU",
  "ad1, 80000, u3, 1.2.3.4, USA",
];
lines.slice(0, 2).forEach((l, i) => engine.push(0, i, enc.encode(l), undefined, 0));
const bytes = engine.snapshot();
engine.free();
engine = adtally.Engine.restore(bytes);
lines.slice(2).forEach((l, i) => engine.push(0, i + 2, enc.encode(l), undefined, 0));
const out = JSON.parse(engine.takeOutputs());
for (const r of out.rollups) {
  console.log(`window ${r.window_start} ad ${r.ad_id} filter ${r.filter_id}: ${r.clicks} clicks`);
}
console.log(`duplicates: ${out.duplicates}; snapshot: ${bytes.length} bytes`);
const ad1 = out.rollups.find((r) => r.ad_id === "ad1" && r.window_start === 0);
if (!ad1 || ad1.clicks !== 2) throw new Error("expected 2 clicks of ad1 in minute 0");
