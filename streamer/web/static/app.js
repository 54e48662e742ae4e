// The streamer page: live outliers and episodes (server-sent events from the Watch hub), sessions and a
// series search, a viewed series' values with its band (the taps), and the backtest. No network beyond the
// server itself: uPlot is served from /static.
"use strict";

const $ = (id) => document.getElementById(id);
const MAX_ROWS = 500;      // live events kept in the table
const MAX_POINTS = 2000;   // values kept on the live chart (the server's ring is as long)
const fmt = (v) => (v === null || v === undefined) ? "" : (typeof v === "number" ? (Math.abs(v) >= 1e6 || (Math.abs(v) < 1e-3 && v !== 0) ? v.toExponential(3) : +v.toPrecision(6)) : String(v));
const timeText = (s) => new Date(s * 1000).toISOString().replace("T", " ").replace("Z", "");
const el = (tag, props = {}, kids = []) => { const e = Object.assign(document.createElement(tag), props); for (const k of kids) e.append(k); return e; };

window.streamer = { events: [], live: null, backtest: null };

// ---- tabs
function showTab() {
  const bt = location.hash === "#backtest";
  $("live").hidden = bt; $("backtest").hidden = !bt;
  $("tab-live").classList.toggle("on", !bt); $("tab-backtest").classList.toggle("on", bt);
}
window.addEventListener("hashchange", showTab);

// ---- sessions and search
async function getJSON(url) {
  const r = await fetch(url);
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

async function loadSessions() {
  try {
    const d = await getJSON("/api/sessions");
    const tb = $("sessions").tBodies[0];
    tb.replaceChildren();
    const sel = $("search-session"), keep = sel.value;
    sel.replaceChildren(el("option", { value: "", textContent: "(private streams)" }));
    for (const s of d.sessions) {
      const tr = el("tr", { className: "click" }, [el("td", { textContent: s.name }), el("td", { textContent: s.source }),
        el("td", { textContent: s.series }), el("td", { textContent: s.open ? "open" : "idle" })]);
      tr.dataset.session = s.name; tr.dataset.source = s.source; tr.dataset.series = s.series;
      tr.onclick = () => { $("search-session").value = s.name; search(); };
      tb.append(tr);
      sel.append(el("option", { value: s.name, textContent: s.name }));
    }
    sel.value = [...sel.options].some((o) => o.value === keep) ? keep : sel.value;
    $("private").textContent = `${d.private_streams} private stream(s), ${d.private_series} series`;
  } catch (e) { $("private").textContent = "sessions: " + e.message; }
}

let searchTimer = null;
async function search() {
  const session = $("search-session").value, q = $("search").value;
  const d = await getJSON(`/api/series?session=${encodeURIComponent(session)}&q=${encodeURIComponent(q)}&limit=100`);
  const ul = $("search-results");
  ul.replaceChildren();
  for (const name of d.series) {
    const li = el("li", { textContent: name });
    li.onclick = () => openSeries(session, name);
    ul.append(li);
  }
  if (!d.series.length) ul.append(el("li", { textContent: "no series", className: "note" }));
}

// ---- live events
let events = null;
function connectEvents() {
  if (events) events.close();
  const p = new URLSearchParams({ session: $("f-session").value, source: $("f-source").value, prefix: $("f-prefix").value });
  events = new EventSource("/api/events?format=f64&" + p);
  events.onopen = () => { $("status").textContent = "live"; };
  events.onerror = () => { $("status").textContent = "reconnecting…"; };
  events.onmessage = (m) => {
    for (const e of JSON.parse(m.data)) { if (e.kind === "outliers") decodeOutliers(e).forEach(addEvent); else addEvent(e); }
  };
}

// columns of n little-endian float64s in base64 text (a tap's points, a run of outliers): a reader of the value at
// column c, row i, null where the server had NaN or an infinity (where its JSON form has null)
function f64Columns(text, n) {
  const bin = atob(text), view = new DataView(new ArrayBuffer(bin.length));
  for (let i = 0; i < bin.length; i++) view.setUint8(i, bin.charCodeAt(i));
  return (c, i) => { const x = view.getFloat64(8 * (c * n + i), true); return Number.isFinite(x) ? x : null; };
}

// a run of outliers as /api/events?format=f64 sends them (pageserver.outliers_f64): the JSON form's events
function decodeOutliers(m) {
  const col = f64Columns(m.f64, m.n), out = [];
  for (let i = 0; i < m.n; i++) {
    out.push({ kind: "outlier", value: col(0, i), time: col(1, i), mean: col(2, i), stddev: col(3, i), zscore: col(4, i),
      series: m.series[i], session: m.session[i], source: m.source[i], tenant: m.tenant[i], rule: m.rule[i] });
  }
  return out;
}

function addEvent(e) {
  if (e.kind === "sampled") {  // the server sent its quota of outliers for this moment; the rest were not sent
    $("events-sampled").textContent = `busy: the list shows up to ${e.quota} outliers a second (every episode)`;
    return;
  }
  window.streamer.events.push(e);
  if (window.streamer.events.length > MAX_ROWS) window.streamer.events.shift();
  const tb = $("events").tBodies[0];
  let cells;
  if (e.kind === "outlier") {
    cells = [timeText(e.time), "outlier", e.session, e.series, fmt(e.value), fmt(e.mean), fmt(e.stddev), fmt(e.zscore)];
  } else if (e.kind === "episode") {
    const t = e.started_ns ? e.started_ns / 1e9 : Date.now() / 1000;
    cells = [timeText(t), `episode ${e.state} (${e.count})`, e.session || e.source || "", e.series, fmt(e.peak_value ?? e.value),
      fmt(e.mean), fmt(e.stddev), fmt(e.peak_zscore ?? e.zscore)];
    noteEpisode(e);
  } else {
    cells = ["", `${e.count} dropped`, "", "(the page was too slow)", "", "", "", ""];
  }
  const tr = el("tr", { className: "click" }, cells.map((c, i) => el("td", { textContent: c, className: i === 1 ? e.kind : "" })));
  tr.dataset.kind = e.kind; tr.dataset.series = e.series || "";
  if (e.series) tr.onclick = () => openSeries(e.session || "", e.series);
  tb.prepend(tr);
  while (tb.rows.length > MAX_ROWS) tb.deleteRow(tb.rows.length - 1);
  $("events-count").textContent = `${window.streamer.events.length} events`;
  if (live && e.kind === "outlier" && e.series === live.series && (e.session || "") === live.session) live.marked.push(e);
}

// ---- charts
function bandChart(target, title, series, width) {
  const opts = {
    title, width: width || Math.max(400, target.clientWidth - 4), height: 300,
    scales: { x: { time: series.time } },
    series: [{}].concat(series.lines),
    hooks: series.hooks || {},
  };
  target.replaceChildren();
  return new uPlot(opts, series.data, target);
}

const POINTS_ONLY = (stroke) => ({ stroke, fill: stroke, width: 0, points: { show: true, size: 9, stroke, fill: stroke }, paths: () => null });

// ---- the viewed series (live)
let live = null;
function noteEpisode(e) {
  if (!live || e.series !== live.series) return;
  const start = e.started_ns / 1e9, end = e.ended_ns ? e.ended_ns / 1e9 : null;
  const i = live.episodes.findIndex((x) => x.id === e.id);
  const ep = { id: e.id, start, end };
  if (i >= 0) live.episodes[i] = ep; else live.episodes.push(ep);
  if (live.plot) live.plot.redraw();
}

// a tap's points as the server sends them with format=f64 (tap.points_f64): 7 columns of n little-endian float64s
function decodePoints(m) {
  const n = m.n, col = f64Columns(m.f64, n), points = [];
  for (let i = 0; i < n; i++) {
    points.push({ t: col(0, i), value: col(1, i), mean: col(2, i), stddev: col(3, i), flagged: col(4, i) === 1,
      zscore: col(5, i), k: col(6, i) });
  }
  return points;
}

function openSeries(session, series) {
  if (live && live.source) live.source.close();
  live = { session, series, pts: [], x: [], value: [], mean: [], upper: [], lower: [], flagged: [], marked: [], episodes: [], plot: null };
  window.streamer.live = live;
  $("chart-title").textContent = `Series ${series}` + (session ? ` (session ${session})` : " (private streams)");
  const src = new EventSource(`/api/tap?format=f64&session=${encodeURIComponent(session)}&series=${encodeURIComponent(series)}`);
  live.source = src;
  const add = (points) => {
    // sampled batches and flagged values (from the hub) arrive apart: merged in time order, each value once
    const seen = new Set(live.pts.map((p) => p.t + ":" + p.value));
    for (const p of points) if (!seen.has(p.t + ":" + p.value)) { live.pts.push(p); seen.add(p.t + ":" + p.value); }
    live.pts.sort((a, b) => a.t - b.t);
    if (live.pts.length > MAX_POINTS) live.pts.splice(0, live.pts.length - MAX_POINTS);
    const band = (p, sign) => (p.mean === null || p.k === null || p.stddev === null) ? null : p.mean + sign * p.k * p.stddev;
    live.x = live.pts.map((p) => p.t); live.value = live.pts.map((p) => p.value); live.mean = live.pts.map((p) => p.mean);
    live.upper = live.pts.map((p) => band(p, 1)); live.lower = live.pts.map((p) => band(p, -1));
    live.flagged = live.pts.map((p) => p.flagged ? p.value : null);
    drawLive();
  };
  src.addEventListener("ring", (m) => { live.connected = true; add(decodePoints(JSON.parse(m.data))); });
  src.onmessage = (m) => add(decodePoints(JSON.parse(m.data)));
  drawLive();
}

function shadeEpisodes(u) {
  if (!live) return;
  const ctx = u.ctx, top = u.bbox.top, h = u.bbox.height;
  ctx.save(); ctx.fillStyle = "rgba(255, 170, 0, 0.15)";
  for (const ep of live.episodes) {
    const x0 = u.valToPos(ep.start, "x", true), x1 = u.valToPos(ep.end ?? u.scales.x.max, "x", true);
    ctx.fillRect(x0, top, Math.max(2, x1 - x0), h);
  }
  ctx.restore();
}

function drawLive() {
  const c = $("chart");
  const nFlag = live.flagged.filter((v) => v !== null).length;
  c.dataset.points = live.x.length; c.dataset.flagged = nFlag; c.dataset.series = live.series;
  c.dataset.connected = live.connected ? "1" : "0";
  $("chart-note").textContent = live.x.length ? `${live.x.length} values, ${nFlag} flagged (red); band: mean ± k·stddev as each value was judged`
    : "Waiting for values of this series (kept only while it is viewed)…";
  const data = [live.x, live.value, live.mean, live.upper, live.lower, live.flagged];
  if (live.plot && live.plot.root.isConnected) { live.plot.setData(data); return; }
  if (!live.x.length) { c.replaceChildren(); return; }
  live.plot = bandChart(c, live.series, {
    time: true, data, hooks: { drawClear: [shadeEpisodes] },
    lines: [{ label: "value", stroke: "#2d6cdf" }, { label: "mean", stroke: "#888", dash: [4, 4] },
      { label: "mean + k·sd", stroke: "#9c9" }, { label: "mean - k·sd", stroke: "#9c9" }, { label: "flagged", ...POINTS_ONLY("#d00") }],
  });
}

// ---- backtest
let fields = [];
function addSet(values = {}) {
  const box = el("div", { className: "set" });
  const n = $("bt-sets").children.length + 1;
  box.append(el("label", {}, ["label ", el("input", { name: "label", value: values.label || `set ${n}` })]));
  for (const f of fields) {
    let input;
    if (f.choices) {
      input = el("select", { name: f.name }, [el("option", { value: "", textContent: "default" }), ...f.choices.map((c) => el("option", { value: c, textContent: c }))]);
    } else if (f.type === "bool") {
      input = el("input", { name: f.name, type: "checkbox" });
      input.checked = !!values[f.name];
    } else {
      input = el("input", { name: f.name, placeholder: "default" });
    }
    if (values[f.name] !== undefined && f.type !== "bool") input.value = values[f.name];
    box.append(el("label", {}, [f.name + " ", input]));
  }
  $("bt-sets").append(box);
}

function readSets() {
  return [...$("bt-sets").children].map((box) => {
    const o = {};
    for (const input of box.querySelectorAll("input, select")) {
      if (input.type === "checkbox") { if (input.checked) o[input.name] = true; } else if (input.value !== "") o[input.name] = input.value;
    }
    return o;
  });
}

async function runBacktest() {
  const err = $("bt-error"), file = $("bt-file").files[0];
  err.textContent = "";
  if (!file) { err.textContent = "Choose a file first."; return; }
  $("bt-run").disabled = true; $("bt-summary").textContent = "running…";
  try {
    const p = new URLSearchParams({ filename: file.name, sets: JSON.stringify(readSets()) });
    let r;
    try { r = await fetch("/api/backtest?" + p, { method: "POST", body: file }); }
    catch (e) { throw new Error(`the upload failed (${e.message}); is the file over the limit?`); }
    const body = await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
    if (!r.ok) throw new Error(`${r.status === 413 ? "Too large: " : ""}${body.error}`);
    showBacktest(body);
  } catch (e) {
    err.textContent = e.message; $("bt-summary").textContent = "";
  } finally { $("bt-run").disabled = false; }
}

function showBacktest(d) {
  window.streamer.backtest = d;
  $("bt-title").textContent = `Results: ${d.file} (${d.rows} rows, ${d.series.length} series)`;
  $("bt-summary").replaceChildren(...d.sets.flatMap((s, i) => [el("span", { className: "bt-count", textContent: `${s.label}: ${s.flagged} flagged, ${s.episodes} episodes` }, []), el("span", { className: "note", textContent: ` (${s.options})  ` })]));
  [...$("bt-summary").querySelectorAll(".bt-count")].forEach((e, i) => { e.dataset.set = i; e.dataset.flagged = d.sets[i].flagged; e.dataset.episodes = d.sets[i].episodes; });
  const a = $("bt-download"); a.href = `/api/backtest/${d.id}/flagged.csv`; a.hidden = false;
  const b = $("bt-download-episodes"); b.href = `/api/backtest/${d.id}/episodes.csv`; b.hidden = false;
  const t = $("bt-table");
  t.tHead.replaceChildren(el("tr", {}, [el("th", { textContent: "series" }), el("th", { textContent: "values" }),
    ...d.sets.map((s) => el("th", { textContent: `flagged: ${s.label}` })), ...d.sets.map((s) => el("th", { textContent: `episodes: ${s.label}` }))]));
  t.tBodies[0].replaceChildren(...d.series.map((s) => {
    const tr = el("tr", { className: "click" }, [el("td", { textContent: s.series }), el("td", { textContent: s.values }),
      ...s.flagged.map((n) => el("td", { textContent: n })), ...s.episodes.map((n) => el("td", { textContent: n, className: "episode" }))]);
    tr.onclick = () => chartBacktest(d.id, s.series);
    return tr;
  }));
  if (d.series.length) chartBacktest(d.id, d.series[0].series);
}

const SET_COLOURS = ["#d00", "#e80", "#a0a", "#080", "#06c", "#555"];
const SET_SHADES = ["rgba(221,0,0,.10)", "rgba(238,136,0,.12)", "rgba(170,0,170,.10)", "rgba(0,136,0,.10)", "rgba(0,102,204,.10)", "rgba(85,85,85,.10)"];
async function chartBacktest(id, series) {
  const d = await getJSON(`/api/backtest/${id}/chart?series=${encodeURIComponent(series)}`);
  const s0 = d.sets[0];
  const upper = s0.mean.map((m, i) => m === null ? null : m + s0.k * s0.stddev[i]);
  const lower = s0.mean.map((m, i) => m === null ? null : m - s0.k * s0.stddev[i]);
  const flags = d.sets.map((s) => s.flagged.map((f, i) => f ? d.values[i] : null));
  $("bt-chart-title").textContent = `${series}: band of ${s0.label}, flags of every set, episodes shaded (one band of colour per set)`;
  const c = $("bt-chart");
  c.dataset.points = d.x.length; c.dataset.series = series;
  c.dataset.flagged = JSON.stringify(flags.map((f) => f.filter((v) => v !== null).length));
  c.dataset.episodes = JSON.stringify(d.sets.map((s) => s.episodes.length));
  const shade = (u) => {  // each set's episodes: a strip of its own height, from opening to resolution
    const ctx = u.ctx, top = u.bbox.top, h = u.bbox.height / d.sets.length;
    ctx.save();
    d.sets.forEach((s, i) => {
      ctx.fillStyle = SET_SHADES[i % SET_SHADES.length];
      for (const ep of s.episodes) {
        const x0 = u.valToPos(ep.start, "x", true), x1 = u.valToPos(ep.end ?? u.scales.x.max, "x", true);
        ctx.fillRect(x0, top + i * h, Math.max(2, x1 - x0), h);
      }
    });
    ctx.restore();
  };
  bandChart(c, series, {
    time: d.data_time, data: [d.x, d.values, s0.mean, upper, lower, ...flags], hooks: { drawClear: [shade] },
    lines: [{ label: "value", stroke: "#2d6cdf" }, { label: `mean (${s0.label})`, stroke: "#888", dash: [4, 4] },
      { label: "mean + k·sd", stroke: "#9c9" }, { label: "mean - k·sd", stroke: "#9c9" },
      ...d.sets.map((s, i) => ({ label: `flagged: ${s.label}`, ...POINTS_ONLY(SET_COLOURS[i % SET_COLOURS.length]) }))],
  });
}

// ---- start
async function start() {
  showTab();
  for (const id of ["f-session", "f-prefix"]) $(id).addEventListener("change", connectEvents);
  $("f-source").addEventListener("change", connectEvents);
  $("sessions-refresh").onclick = loadSessions;
  $("search").addEventListener("input", () => { clearTimeout(searchTimer); searchTimer = setTimeout(search, 200); });
  $("search-session").addEventListener("change", search);
  $("bt-add").onclick = () => addSet();
  $("bt-run").onclick = runBacktest;
  const url = new URLSearchParams(location.search);  // ?series=KEY&session=NAME opens that series (a link to it)
  if (url.get("series")) openSeries(url.get("session") || "", url.get("series"));
  connectEvents();
  await loadSessions();
  await search();
  setInterval(loadSessions, 5000);
  const o = await getJSON("/api/options");
  fields = o.fields;
  $("bt-limit").textContent = `${(o.max_upload_bytes / 1048576).toFixed(1)} MiB`;
  addSet({ label: "k=3", threshold: 3 });
  addSet({ label: "k=2", threshold: 2 });
  document.body.dataset.ready = "1";
}
start();
