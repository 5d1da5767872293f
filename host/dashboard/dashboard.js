// The adtally dashboard: the partitions' rankings merged here with the
// core's own merge (its browser build), an ad's clicks per minute, and the
// pipeline's health from the hosts' metrics. Every number comes from
// /v1 as the rollups hold it; nothing is counted here.
import init, { mergeTopN, info } from "/core/adtally_js.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const state = {
  window: params.get("window"),
  filter: params.get("filter") || "0",
  count: params.get("count") || "10",
  ad: params.get("ad") || "",
  minutes: Number(params.get("minutes") || 60),
  lastRecords: new Map(),
};
let chart = null;

async function json(path) {
  const res = await fetch(path);
  const body = await res.json();
  if (!res.ok) throw new Error(`${path}: ${body.message || res.status}`);
  return body;
}

function rows(tbody, data) {
  tbody.replaceChildren(...data.map((cells) => {
    const tr = document.createElement("tr");
    for (const c of cells) {
      const td = document.createElement("td");
      td.textContent = c;
      if (typeof c === "number") td.className = "n";
      tr.append(td);
    }
    return tr;
  }));
}

function options(select, values, chosen) {
  if (select.options.length) return;
  for (const [value, label] of values) {
    const o = new Option(label, value, false, String(value) === String(chosen));
    select.add(o);
  }
}

async function ranking() {
  const r = await json(`/v1/rankings?window=${state.window}&filter=${state.filter}`);
  // Each partition ranked its own ads; the core's merge makes the topic's list.
  const merged = JSON.parse(mergeTopN(JSON.stringify(r.lists.map((l) => l.ads)), Number(state.count)));
  $("ranking-minute").textContent = r.minute
    ? `${r.window} min through the minute ${r.minute.slice(0, 16)}Z: ${r.lists.length} partition lists merged in the browser by the core`
    : "nothing final yet";
  const tbody = $("top-ads").querySelector("tbody");
  rows(tbody, merged.map(([ad, clicks], i) => [i + 1, ad, clicks]));
  tbody.querySelectorAll("tr").forEach((tr, i) => {
    tr.onclick = () => { state.ad = merged[i][0]; $("ad").value = state.ad; series(); };
  });
  if (!state.ad && merged.length) { state.ad = merged[0][0]; $("ad").value = state.ad; }
}

async function series() {
  if (!state.ad || !state.finalTo) return;
  const to = Date.parse(state.finalTo);
  const from = to - state.minutes * 60_000;
  const iso = (ms) => new Date(ms).toISOString().slice(0, 16) + ":00Z";
  const s = await json(`/v1/ads/${encodeURIComponent(state.ad)}/minutes?from=${iso(from)}&to=${iso(to)}&filter=${state.filter}`);
  const xs = s.minutes.map(([ms]) => ms / 1000);
  const ys = s.minutes.map(([, c]) => c);
  const total = ys.reduce((a, b) => a + b, 0);
  $("chart-total").textContent = `${s.ad_id}: ${total} clicks from ${s.from.slice(0, 16)}Z to ${s.to.slice(0, 16)}Z (filter ${s.filter})`;
  $("chart").dataset.series = JSON.stringify(s.minutes);
  const width = $("chart-section").clientWidth - 30;
  if (!chart) {
    chart = new uPlot({ width, height: 260, series: [{}, { label: "clicks", stroke: "#2f6fdb", fill: "rgba(47,111,219,.12)" }],
      scales: { x: { time: true } } }, [xs, ys], $("chart"));
  } else {
    chart.setData([xs, ys]);
  }
}

async function health() {
  const p = await json("/v1/pipeline");
  state.finalTo = p.final_to;
  $("final").textContent = `final before: ${p.final_to ? p.final_to.slice(0, 16) + "Z" : "nothing yet"}`;
  options($("window"), p.windows.map((w) => [w, `${w} min`]), state.window);
  options($("filter"), p.filters.map(([id, name]) => [id, `${id}: ${name}`]), state.filter);
  state.window = state.window || String(p.windows[0]);
  const now = Date.now();
  rows($("hosts").querySelector("tbody"), p.hosts.map((h) => {
    const last = state.lastRecords.get(h.url);
    state.lastRecords.set(h.url, { records: h.records, at: now });
    const rate = last && now > last.at ? Math.round((h.records - last.records) * 1000 / (now - last.at)) : 0;
    const invalid = Object.values(h.invalid).reduce((a, b) => a + b, 0);
    const module = h.module ? `${h.module[0].slice(0, 12)}… (semantics ${h.module[1]})` : (h.error || "");
    return [h.url, rate, h.records, h.duplicates, h.late, invalid, module];
  }));
  const byPartition = new Map();
  for (const h of p.hosts) for (const q of h.partitions) byPartition.set(q.partition, q);
  rows($("partitions").querySelector("tbody"), p.partitions.map((q) => {
    const m = byPartition.get(q.partition) || {};
    const delay = m.watermark_delay_seconds == null ? "" : `${Math.round(m.watermark_delay_seconds)} s`;
    return [`${q.topic}/${q.partition}`, q.watermark || "none yet", delay, m.lag == null ? "" : m.lag];
  }));
}

async function refresh() {
  try {
    await health();
    await ranking();
    await series();
    $("error").textContent = "";
    document.body.dataset.ready = "true";
  } catch (e) {
    $("error").textContent = String(e.message || e);
  }
}

await init({ module_or_path: "/core/adtally_js_bg.wasm" });
const core = JSON.parse(info());
$("core").textContent = `core ${core.version}, semantics ${core.semantics_version} (in the browser)`;
$("ad").value = state.ad;
$("ad").onchange = () => { state.ad = $("ad").value.trim(); series(); };
$("window").onchange = () => { state.window = $("window").value; refresh(); };
$("filter").onchange = () => { state.filter = $("filter").value; refresh(); };
$("count").value = state.count;
$("count").onchange = () => { state.count = $("count").value; refresh(); };
await refresh();
setInterval(refresh, 2000);
