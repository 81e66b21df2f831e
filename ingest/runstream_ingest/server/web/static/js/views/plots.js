// Two views of the filtered runs: a scatter plot of any two config/summary keys (?sx=&sy=) and
// parallel coordinates from several config keys to one summary metric (?pc=a,b&pm=).
// They draw at most MAX_RUNS runs of the current filter and sort (the page says so when cut).

import { api } from "../api.js";
import { cssVar, fieldValue, fmtNum, fmtValue, h } from "../dom.js";
import * as url from "../url.js";

const MAX_RUNS = 2000;
const SVGNS = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, ...kids) {
  const el = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  el.append(...kids);
  return el;
}

function allKeys(keys) {
  const cfg = (keys?.config || []).map((k) => `config.${k}`);
  const sum = (keys?.summary || []).filter((k) => !k.startsWith("_runstream")).map((k) => `summary.${k}`);
  return { cfg, sum, all: [...cfg, ...sum] };
}

function picker(label, values, current, onChange, testid) {
  const sel = h("select", { dataset: { testid }, "aria-label": label, onchange: () => onChange(sel.value) }, values.map((v) => h("option", { value: v, selected: v === current }, v)));
  return h("label", {}, label, sel);
}

/** Nice round tick values covering [lo, hi]. */
export function ticks(lo, hi, count = 5) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

function loadRuns(entity, project, query, sort) {
  return api.runs(entity, project, { ...query, order: sort, limit: MAX_RUNS });
}

function note(total, shown) {
  return h("div", { class: "vt-foot" }, total > shown ? `${shown} of ${total} runs drawn` : `${shown} runs drawn`);
}

// --- scatter ----------------------------------------------------------------------------------
export function scatterView(entity, project, keys, query, sort) {
  const { all } = allKeys(keys);
  const p = url.params();
  let sx = p.sx || all.find((k) => k.startsWith("config.")) || all[0];
  let sy = p.sy || all.find((k) => k.startsWith("summary.") && !k.startsWith("summary._")) || all[1];
  const plot = h("div", { class: "plot-box", dataset: { testid: "scatter" } });
  const foot = h("div");
  const box = h("div", { class: "pad" });
  let runs = [];
  const draw = () => drawScatter(plot, runs, sx, sy, entity, project);
  box.append(
    h(
      "div",
      { class: "toolbar" },
      picker("x", all, sx, (v) => ((sx = v), url.set({ sx: v }), draw()), "scatter-x"),
      picker("y", all, sy, (v) => ((sy = v), url.set({ sy: v }), draw()), "scatter-y"),
    ),
    plot,
    foot,
  );
  loadRuns(entity, project, query, sort)
    .then((d) => {
      runs = d.runs;
      foot.replaceChildren(note(d.total, runs.length));
      draw();
    })
    .catch((e) => plot.replaceChildren(h("p", { class: "error" }, e.message)));
  return box;
}

function drawScatter(box, runs, sx, sy, entity, project) {
  const pts = runs
    .map((r) => ({ r, x: fieldValue(r, sx), y: fieldValue(r, sy) }))
    .filter((q) => typeof q.x === "number" && typeof q.y === "number" && Number.isFinite(q.x) && Number.isFinite(q.y));
  box.dataset.points = String(pts.length);
  if (!pts.length) {
    box.replaceChildren(h("p", { class: "muted pad" }, `No run has numbers for both ${sx} and ${sy}.`));
    return;
  }
  const W = Math.max(400, box.clientWidth || 800);
  const H = 420;
  const m = { l: 64, r: 16, t: 12, b: 40 };
  const ext = (vals) => {
    let lo = Math.min(...vals);
    let hi = Math.max(...vals);
    if (lo === hi) [lo, hi] = [lo - 1, hi + 1];
    const pad = (hi - lo) * 0.05;
    return [lo - pad, hi + pad];
  };
  const [x0, x1] = ext(pts.map((q) => q.x));
  const [y0, y1] = ext(pts.map((q) => q.y));
  const X = (v) => m.l + ((v - x0) / (x1 - x0)) * (W - m.l - m.r);
  const Y = (v) => H - m.b - ((v - y0) / (y1 - y0)) * (H - m.t - m.b);
  const fg = cssVar("--muted");
  const grid = cssVar("--line");
  const accent = cssVar("--accent");
  const axes = svg("g", { class: "plot-grid" });
  for (const t of ticks(x0, x1)) {
    axes.append(svg("line", { x1: X(t), x2: X(t), y1: m.t, y2: H - m.b, stroke: grid }), svg("text", { x: X(t), y: H - m.b + 16, "text-anchor": "middle", fill: fg }, fmtNum(t)));
  }
  for (const t of ticks(y0, y1)) {
    axes.append(svg("line", { x1: m.l, x2: W - m.r, y1: Y(t), y2: Y(t), stroke: grid }), svg("text", { x: m.l - 6, y: Y(t) + 4, "text-anchor": "end", fill: fg }, fmtNum(t)));
  }
  axes.append(svg("text", { x: (m.l + W - m.r) / 2, y: H - 6, "text-anchor": "middle", fill: fg }, sx));
  axes.append(svg("text", { x: 12, y: (m.t + H - m.b) / 2, transform: `rotate(-90 12 ${(m.t + H - m.b) / 2})`, "text-anchor": "middle", fill: fg }, sy));
  const dots = pts.map((q) => {
    const c = svg("circle", { cx: X(q.x), cy: Y(q.y), r: 4, fill: accent, "fill-opacity": 0.7, style: "cursor:pointer" }, svg("title", {}, `${q.r.name || q.r.id}\n${sx} = ${fmtValue(q.x)}\n${sy} = ${fmtValue(q.y)}`));
    c.addEventListener("click", () => url.go(["r", entity, project, q.r.id]));
    return c;
  });
  box.replaceChildren(svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H }, axes, svg("g", {}, ...dots)));
}

// --- parallel coordinates -----------------------------------------------------------------------
export function parallelView(entity, project, keys, query, sort) {
  const { cfg, sum } = allKeys(keys);
  const p = url.params();
  let dims = url.list(p.pc);
  if (!dims.length) dims = cfg.slice(0, 4);
  let metric = p.pm || sum.find((k) => !k.startsWith("summary._")) || sum[0];
  const plot = h("div", { class: "plot-box", dataset: { testid: "parallel" } });
  const foot = h("div");
  let runs = [];
  const draw = () => drawParallel(plot, runs, dims, metric, entity, project);
  const boxes = h(
    "div",
    { class: "toolbar" },
    h("span", { class: "muted" }, "axes:"),
    cfg.map((k) =>
      h("label", {}, h("input", { type: "checkbox", checked: dims.includes(k), onchange: (ev) => {
        dims = ev.target.checked ? [...dims, k] : dims.filter((d) => d !== k);
        url.set({ pc: dims.join(",") });
        draw();
      } }), h("span", { class: "mono" }, k)),
    ),
    picker("metric", sum, metric, (v) => ((metric = v), url.set({ pm: v }), draw()), "parallel-metric"),
  );
  loadRuns(entity, project, query, sort)
    .then((d) => {
      runs = d.runs;
      foot.replaceChildren(note(d.total, runs.length));
      draw();
    })
    .catch((e) => plot.replaceChildren(h("p", { class: "error" }, e.message)));
  return h("div", { class: "pad" }, boxes, plot, foot);
}

function scaleFor(values) {
  const nums = values.filter((v) => typeof v === "number" && Number.isFinite(v));
  if (nums.length === values.filter((v) => v != null).length && nums.length) {
    let lo = Math.min(...nums);
    let hi = Math.max(...nums);
    if (lo === hi) [lo, hi] = [lo - 1, hi + 1];
    return { at: (v) => (typeof v === "number" ? (v - lo) / (hi - lo) : null), labels: ticks(lo, hi, 4).map((t) => [(t - lo) / (hi - lo), fmtNum(t)]) };
  }
  const cats = [...new Set(values.filter((v) => v != null).map(fmtValue))].sort();
  const at = (v) => (v == null ? null : cats.length === 1 ? 0.5 : cats.indexOf(fmtValue(v)) / (cats.length - 1));
  return { at, labels: cats.map((c) => [at(c), c]) };
}

function drawParallel(box, runs, dims, metric, entity, project) {
  const axes = [...dims, metric].filter(Boolean);
  if (axes.length < 2) {
    box.replaceChildren(h("p", { class: "muted pad" }, "Pick at least one config key and a metric."));
    return;
  }
  const W = Math.max(500, box.clientWidth || 900);
  const H = 400;
  const m = { l: 40, r: 80, t: 30, b: 20 };
  const X = (i) => m.l + (i / (axes.length - 1)) * (W - m.l - m.r);
  const Y = (f) => m.t + (1 - f) * (H - m.t - m.b);
  const scales = axes.map((a) => scaleFor(runs.map((r) => fieldValue(r, a))));
  const lines = [];
  for (const r of runs) {
    const fs = axes.map((a, i) => scales[i].at(fieldValue(r, a)));
    if (fs.some((f) => f == null)) continue;
    const t = fs[fs.length - 1];
    const hue = 240 - 200 * t; // blue (low metric) to orange (high)
    const line = svg("polyline", { class: "pc-line", points: fs.map((f, i) => `${X(i)},${Y(f)}`).join(" "), stroke: `hsl(${hue} 70% 50%)`, style: "cursor:pointer" }, svg("title", {}, `${r.name || r.id}\n${axes.map((a) => `${a} = ${fmtValue(fieldValue(r, a))}`).join("\n")}`));
    line.addEventListener("click", () => url.go(["r", entity, project, r.id]));
    lines.push(line);
  }
  box.dataset.lines = String(lines.length);
  const axisEls = axes.map((a, i) =>
    svg(
      "g",
      { class: "pc-axis" },
      svg("line", { x1: X(i), x2: X(i), y1: m.t, y2: H - m.b }),
      svg("text", { x: X(i), y: m.t - 12, "text-anchor": "middle", "font-weight": "600" }, a),
      ...scales[i].labels.map(([f, label]) => svg("text", { x: X(i) + 5, y: Y(f) + 4 }, String(label))),
    ),
  );
  box.replaceChildren(svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H }, svg("g", {}, ...lines), ...axisEls));
}
