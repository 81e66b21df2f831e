// The charts of one run or of several overlaid (compare): a panel per metric, sectioned by key
// prefix (train/loss and train/acc under "train"), with the settings every panel shares in the URL:
// ?x=_step|_runtime|_timestamp&logy=1&smooth=0.6&zoom=lo,hi; a distributed run's page adds
// &rank=N|all|band: one rank (rank 0 by default), every rank overlaid, or the mean across ranks
// with their min..max as the band (ranks.js).
//
// Each section fetches its keys' buckets when it is first opened (one request for all its keys
// and runs); zooming refetches buckets for the zoomed range, so detail appears instead of
// stretched buckets.  A live run that starts logging a key later gets its panel (and section)
// when the key first shows in its summary.

import { api } from "../api.js";
import { h } from "../dom.js";
import { Panel } from "../chart.js";
import * as url from "../url.js";
import { againstStepMetric, isHidden, stepMetricOf } from "../metrics.js";
import { parseRank, rankColor, rankSelect, seriesByRank } from "../ranks.js";

const X_AXES = [
  ["_step", "step"],
  ["_runtime", "relative time (s)"],
  ["_timestamp", "wall time"],
];
const OPEN_ALL_BELOW = 40; // with more keys than this only the first section starts open

export function sectionsOf(keys) {
  const out = new Map();
  for (const k of keys) {
    const i = k.indexOf("/");
    const name = i > 0 ? k.slice(0, i) : "charts";
    if (!out.has(name)) out.set(name, []);
    out.get(name).push(k);
  }
  return out;
}

function buckets() {
  return Math.max(200, Math.min(1000, Math.round(window.innerWidth / 2)));
}

/** The chartable keys of a run: its history keys in logged order (else its numeric summary keys),
 * as run.js's chartKeys picks them when the view opens. */
async function chartKeys(entity, project, run) {
  const k = await api.runKeys(entity, project, run.id).catch(() => null);
  const keys = k ?? Object.keys(run.summary || {}).filter((key) => typeof run.summary[key] === "number");
  const summary = run.summary || {};
  return keys.filter((key) => !key.startsWith("_") && !isHidden(run, key) && !(summary[key] && typeof summary[key] === "object" && typeof summary[key]._type === "string"));
}

/** runs: [{id, label, color}]; keys: metric keys in display order; dist: the run JSON of a
 * distributed run (its page shows one run), else null.  Returns {el, refresh(ids, run), destroy()}. */
export function chartsView(entity, project, runs, initialKeys, dist = null) {
  const keys = [...initialKeys];
  const known = new Set(keys); // summary keys already looked for among the runs' history keys
  const p = url.params();
  const st = {
    x: X_AXES.some(([v]) => v === p.x) ? p.x : "_step",
    logY: p.logy === "1",
    smooth: Math.min(0.999, Math.max(0, Number(p.smooth) || 0)),
    zoom: p.zoom ? p.zoom.split(",").map(Number) : null,
    // no x axis in the URL: a metric with a define_metric step_metric is drawn against it
    explicitX: X_AXES.some(([v]) => v === p.x),
    rank: dist ? parseRank(p.rank, { all: true, band: true, run: dist }) : null,
  };
  if (st.zoom && (st.zoom.length !== 2 || !st.zoom.every(Number.isFinite))) st.zoom = null;
  const sections = [];
  const panels = () => sections.flatMap((s) => s.panels);

  const xSel = h("select", { dataset: { testid: "x-axis" }, "aria-label": "x axis" }, X_AXES.map(([v, t]) => h("option", { value: v, selected: v === st.x }, t)));
  xSel.addEventListener("change", () => ((st.x = xSel.value), (st.explicitX = true), (st.zoom = null), save(), rebuild()));
  const logBox = h("input", { type: "checkbox", checked: st.logY, dataset: { testid: "log-y" } });
  logBox.addEventListener("change", () => ((st.logY = logBox.checked), save(), rebuild()));
  const smoothVal = h("span", { class: "mono", dataset: { testid: "smooth-value" } }, st.smooth.toFixed(3));
  const slider = h("input", { type: "range", min: "0", max: "0.999", step: "0.001", value: String(st.smooth), dataset: { testid: "smoothing" }, "aria-label": "smoothing" });
  slider.addEventListener("input", () => {
    st.smooth = Number(slider.value);
    smoothVal.textContent = st.smooth.toFixed(3);
    for (const pn of panels()) pn.setSmoothing(st.smooth);
    save();
  });
  const resetZoom = h("button", { type: "button", dataset: { testid: "reset-zoom" }, onclick: () => zoomTo(null) }, "Reset zoom");
  const legend = h("div", { class: "legend", dataset: { testid: "legend" } });
  const rankSel = dist
    ? rankSelect(dist, { value: st.rank, all: true, band: true, testid: "chart-rank", onChange: (v) => ((st.rank = v), save(), drawLegend(), rebuild()) })
    : null;
  const body = h("div", { class: "sections" });
  const el = h(
    "div",
    { class: "charts" },
    h(
      "div",
      { class: "toolbar", style: { marginBottom: "8px" } },
      rankSel ? h("label", {}, "ranks", rankSel) : null,
      h("label", {}, "x axis", xSel),
      h("label", {}, logBox, "log y"),
      h("label", {}, "smoothing", slider, smoothVal),
      resetZoom,
      h("span", { class: "muted" }, "drag across a chart to zoom, double-click to zoom out"),
    ),
    runs.length > 1 || dist ? legend : null,
    body,
  );

  function save() {
    url.set({ x: st.x === "_step" ? null : st.x, logy: st.logY, smooth: st.smooth ? st.smooth : null, zoom: st.zoom ? st.zoom.join(",") : null, rank: st.rank || null });
    resetZoom.hidden = !st.zoom;
  }

  function zoomTo(range) {
    if (range && st.x === "_step") range = [Math.floor(range[0]), Math.ceil(range[1])];
    st.zoom = range;
    save();
    for (const s of sections) {
      for (const pn of s.panels) if (!pn.opts.stepMetric) pn.opts.xRange = range;
      if (s.loaded) load(s);
    }
  }

  async function load(s) {
    s.loaded = true;
    const steps = s.panels.map((pn) => pn.opts.stepMetric).filter((k) => k && !s.keys.includes(k));
    const opts = { keys: [...s.keys, ...new Set(steps)], buckets: buckets(), xAxis: st.x, min: st.zoom?.[0], max: st.zoom?.[1] };
    const gen = (s.gen = (s.gen || 0) + 1);
    let data;
    try {
      if (dist) return await loadRanks(s, opts, gen);
      data = runs.length === 1 ? { [runs[0].id]: await api.series(entity, project, runs[0].id, opts) } : await api.multiSeries(entity, project, runs.map((r) => r.id), opts);
    } catch (e) {
      s.status.textContent = `could not load: ${e.message}`;
      s.status.className = "error";
      return;
    }
    if (gen !== s.gen) return; // a newer request (zoom, live update) answered first
    s.status.textContent = "";
    const seriesOf = (pn, d) => (pn.opts.stepMetric ? againstStepMetric(d?.[pn.opts.key], d?.[pn.opts.stepMetric]) : d?.[pn.opts.key]);
    for (const pn of s.panels) pn.setRuns(runs.map((r) => ({ ...r, s: seriesOf(pn, data[r.id]) })));
  }

  /** A distributed run's section: the chosen rank, every rank (a line each) or the band. */
  async function loadRanks(s, opts, gen) {
    const run = runs[0];
    let lines; // key -> [{rank, s}]
    if (st.rank === "all") {
      lines = seriesByRank(await api.rankSeries(entity, project, run.id, { ...opts, ranks: "all" }));
    } else {
      const band = st.rank === "band";
      const d = band ? (await api.rankSeries(entity, project, run.id, { ...opts, ranks: "band" })).series : await api.series(entity, project, run.id, { ...opts, rank: st.rank });
      lines = Object.fromEntries(Object.entries(d || {}).map(([k, v]) => [k, [{ rank: band ? null : st.rank, s: v }]]));
    }
    if (gen !== s.gen) return;
    s.status.textContent = "";
    for (const pn of s.panels) {
      const steps = pn.opts.stepMetric ? new Map((lines[pn.opts.stepMetric] || []).map((l) => [l.rank, l.s])) : null;
      const label = (rank) => (rank == null ? "mean across ranks" : `rank ${rank}`);
      pn.setRuns(
        (lines[pn.opts.key] || []).map((l) => ({
          id: `${run.id}/${l.rank ?? "band"}`,
          label: label(l.rank),
          color: rankColor(l.rank ?? 0),
          rank: l.rank,
          s: steps ? againstStepMetric(l.s, steps.get(l.rank)) : l.s,
        })),
      );
    }
  }

  function newPanel(k) {
    // drawn against its step metric (metrics.js): no drag-zoom there, as zoom ranges are in steps
    const sm = st.explicitX ? null : stepMetricOf(runs.map((r) => r.json).filter(Boolean), k);
    const pn = sm
      ? new Panel({ key: k, xAxis: sm, stepMetric: sm, logY: st.logY, smoothing: st.smooth, xRange: null })
      : new Panel({ key: k, xAxis: st.x, logY: st.logY, smoothing: st.smooth, xRange: st.zoom, onZoom: zoomTo });
    // every rank overlaid: a line each, without each rank's own bucket band (many bands are mud)
    if (st.rank === "all") pn.opts.bands = false;
    pn.el.dataset.xAxis = sm || st.x;
    return pn;
  }

  function addSection(name, ks, open) {
    const s = { name, keys: [...ks], loaded: false, status: h("span", { class: "muted" }) };
    s.panels = ks.map(newPanel);
    s.count = h("span", { class: "muted" }, `(${ks.length})`);
    s.grid = h("div", { class: "grid" }, s.panels.map((pn) => pn.el));
    const det = h("details", { class: "section", open, dataset: { testid: "section", section: name } }, h("summary", {}, `${name} `, s.count, " ", s.status), s.grid);
    det.addEventListener("toggle", () => det.open && !s.loaded && load(s));
    s.details = det;
    sections.push(s);
    body.append(det);
    if (open) load(s);
  }

  function rebuild() {
    for (const pn of panels()) pn.destroy();
    sections.length = 0;
    body.replaceChildren();
    if (!keys.length) {
      body.append(h("p", { class: "muted" }, "No metrics logged yet."));
      return;
    }
    let first = true;
    for (const [name, ks] of sectionsOf(keys)) {
      addSection(name, ks, first || keys.length <= OPEN_ALL_BELOW);
      first = false;
    }
  }

  /** Keys that appeared after the view opened: a panel each, in their section (made if new). */
  function addKeys(fresh) {
    fresh = [...new Set(fresh)].filter((k) => !keys.includes(k));
    if (!fresh.length) return;
    const wasEmpty = !keys.length;
    keys.push(...fresh);
    if (wasEmpty) return rebuild();
    for (const [name, ks] of sectionsOf(fresh)) {
      const s = sections.find((x) => x.name === name);
      if (!s) {
        addSection(name, ks, keys.length <= OPEN_ALL_BELOW);
        continue;
      }
      const pns = ks.map(newPanel);
      s.keys.push(...ks);
      s.panels.push(...pns);
      s.grid.append(...pns.map((pn) => pn.el));
      s.count.textContent = `(${s.keys.length})`;
      if (s.details.open) load(s);
      else s.loaded = false; // opening it fetches every key, the new ones too
    }
  }

  /** Looks for new keys where a run's summary (the live event's run JSON) names a key not seen
   * yet; when polling (no run JSON), in every run's history keys. */
  async function discover(changed, run) {
    const jsons = changed ? runs.map((r) => changed.get(r.id)) : runs.map((r) => (run && run.id === r.id ? run : null));
    const todo = runs.filter((r, i) => {
      const j = jsons[i];
      if (!j) return !changed && !run;
      return Object.keys(j.summary || {}).some((k) => !k.startsWith("_") && !known.has(k));
    });
    for (const j of jsons) for (const k of Object.keys(j?.summary || {})) known.add(k);
    if (!todo.length) return;
    const lists = await Promise.all(todo.map((r) => chartKeys(entity, project, jsons[runs.indexOf(r)] || { id: r.id })));
    addKeys(lists.flat());
  }

  function drawLegend() {
    const item = (c, label, rank) => h("span", { dataset: rank == null ? {} : { rank: String(rank) } }, h("span", { class: "swatch", style: { background: c } }), label);
    if (!dist) legend.replaceChildren(...runs.map((r) => item(r.color, r.label)));
    else if (st.rank === "all") legend.replaceChildren(...Array.from({ length: dist.world_size }, (_, r) => item(rankColor(r), `rank ${r}`, r)));
    else if (st.rank === "band") legend.replaceChildren(item(rankColor(0), "mean across ranks; band: min–max across ranks"));
    else legend.replaceChildren(item(rankColor(st.rank), `rank ${st.rank}`, st.rank));
  }

  drawLegend();
  save();
  rebuild();
  return {
    el,
    /** New data arrived for these runs (a Map of run id -> run JSON; null: any, and `run` the
     * run's JSON when known): new keys get their panels; what is shown is refetched, unless
     * zoomed in. */
    async refresh(ids, run) {
      if (ids && !runs.some((r) => ids.has(r.id))) return;
      await discover(ids, run);
      if (st.zoom) return;
      for (const s of sections) if (s.loaded && s.details.open) load(s);
    },
    destroy() {
      for (const pn of panels()) pn.destroy();
    },
  };
}
