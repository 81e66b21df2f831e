// Custom charts: a W&B plot helper (wandb.plot.line, pr_curve, confusion_matrix...) logs a table at
// "<key>_table" and names the chart in the run config, `_wandb.visualize.<key>` =
// {"panel_type": "Vega2", "panel_config": {"panelDefId": "wandb/line/v0", "fieldSettings": {role:
// column}, "stringSettings": {"title", ...}}}.  W&B draws these with Vega specs; here each known
// panelDefId is drawn from the run's latest such table with plot.js, and an unknown one shows its
// table.  "data" under a chart shows the table it was drawn from.

import { h, lookup } from "../dom.js";
import { heatGrid, plot } from "./plot.js";
import { tableViewer } from "./table.js";

/** The run's `_wandb.visualize` map (config values may be wrapped as {"value": ...}). */
export function visualizeOf(run) {
  let w = lookup(run?.config, "_wandb");
  if (w && typeof w === "object" && "value" in w && Object.keys(w).length <= 2) w = w.value;
  const v = w && typeof w === "object" ? w.visualize : null;
  return v && typeof v === "object" ? v : {};
}

function groupBy(rows, keyIdx, xIdx, yIdx, kind) {
  const groups = new Map();
  for (const r of rows) {
    const k = keyIdx < 0 ? "" : String(r[keyIdx]);
    if (!groups.has(k)) groups.set(k, []);
    groups.get(k).push([Number(r[xIdx]), Number(r[yIdx])]);
  }
  return [...groups].map(([name, pts]) => {
    if (kind === "line") pts.sort((a, b) => a[0] - b[0]);
    return { name: name || "y", kind, x: pts.map((p) => p[0]), y: pts.map((p) => p[1]) };
  });
}

/** The chart element for one table under one panel definition. */
export function chartOf(def, columns, data, width) {
  const cfg = def.panel_config || def;
  const id = String(cfg.panelDefId || "");
  const fs = cfg.fieldSettings || {};
  const ss = cfg.stringSettings || {};
  const col = (role, fallback) => columns.indexOf(fs[role] ?? fallback ?? role);
  const title = ss.title || "";
  const base = { title, width };
  if (id.startsWith("wandb/line/") || id.startsWith("wandb/scatter/")) {
    const kind = id.startsWith("wandb/line/") ? "line" : "scatter";
    return plot({ ...base, series: groupBy(data, col("stroke", null), col("x"), col("y"), kind), xLabel: fs.x, yLabel: fs.y });
  }
  if (id.startsWith("wandb/lineseries/")) {
    return plot({ ...base, series: groupBy(data, col("lineKey"), col("step"), col("lineVal"), "line"), xLabel: ss.xname || "x" });
  }
  if (id.startsWith("wandb/area-under-curve/")) {
    return plot({ ...base, series: groupBy(data, col("class"), col("x"), col("y"), "line"), xLabel: ss["x-axis-title"] || fs.x, yLabel: ss["y-axis-title"] || fs.y });
  }
  if (id.startsWith("wandb/bar/")) {
    const li = col("label");
    const vi = col("value");
    return plot({ ...base, categories: data.map((r) => String(r[li])), series: [{ name: fs.value || "value", kind: "bar", x: data.map((_, i) => i), y: data.map((r) => Number(r[vi])) }] });
  }
  if (id.startsWith("wandb/histogram/")) {
    const vals = data.map((r) => Number(r[col("value")])).filter(Number.isFinite);
    const lo = Math.min(...vals);
    const hi = Math.max(...vals);
    const n = Math.max(1, Math.min(30, Math.ceil(Math.sqrt(vals.length))));
    const w = (hi - lo) / n || 1;
    const counts = new Array(n).fill(0);
    for (const v of vals) counts[Math.min(n - 1, Math.floor((v - lo) / w))]++;
    const cats = counts.map((_, i) => (lo + (i + 0.5) * w).toPrecision(3));
    return plot({ ...base, categories: cats, series: [{ name: "count", kind: "bar", x: counts.map((_, i) => i), y: counts }], xLabel: fs.value });
  }
  if (id.startsWith("wandb/confusion_matrix/")) {
    const find = (role, re) => (col(role) >= 0 ? col(role) : columns.findIndex((c) => re.test(String(c))));
    const ai = find("Actual", /actual/i);
    const pi = find("Predicted", /predict/i);
    const ni = find("nPredictions", /npredictions|count/i);
    const classes = [...new Set(data.flatMap((r) => [String(r[ai]), String(r[pi])]))];
    const values = classes.map(() => classes.map(() => 0));
    for (const r of data) values[classes.indexOf(String(r[ai]))][classes.indexOf(String(r[pi]))] += Number(r[ni]) || 0;
    return heatGrid({ rows: classes, cols: classes, values, yLabel: "actual", xLabel: "predicted", title: title || "Confusion matrix", width });
  }
  return null;
}

/** runs: [{label, color, json, ctx}].  Returns {el, refresh(runJsons)} or null when no run has one. */
export function customCharts(runs) {
  const keys = [...new Set(runs.flatMap((r) => Object.keys(visualizeOf(r.json))))];
  if (!keys.length) return null;
  const grid = h("div", { class: "grid media-grid" });
  const panels = keys.map((key) => {
    const cells = runs.map(() => ({ body: h("div", { class: "media-body" }), path: null }));
    const el = h(
      "div",
      { class: "card panel media-panel", dataset: { testid: "custom-chart", key } },
      h("div", { class: "ptitle" }, h("span", { class: "mono" }, key), h("span", { class: "readout", dataset: { testid: "custom-chart-type" } })),
      h("div", { class: runs.length > 1 ? "media-cells compare" : "media-cells" }, runs.map((r, i) => h("div", { class: "media-cell" }, runs.length > 1 ? h("div", { class: "media-run" }, h("span", { class: "swatch", style: { background: r.color } }), r.label) : null, cells[i].body))),
    );
    grid.append(el);
    return { key, el, cells };
  });

  async function drawCell(p, i, run) {
    const def = visualizeOf(run.json)[p.key];
    const ptr = run.json.summary?.[`${p.key}_table`];
    const cell = p.cells[i];
    if (!def || !ptr || typeof ptr.path !== "string") return void cell.body.replaceChildren(h("div", { class: "empty" }, "no table logged"));
    if (cell.path === ptr.path) return;
    cell.path = ptr.path;
    const id = def.panel_config?.panelDefId || "";
    p.el.dataset.chart = id;
    p.el.querySelector('[data-testid="custom-chart-type"]').textContent = id;
    try {
      const t = await run.ctx.json(ptr.path);
      const chart = chartOf(def, t.columns || [], t.data || [], Math.max(300, Math.min(560, p.el.clientWidth / runs.length - 24 || 420)));
      const table = tableViewer(t.columns || [], t.data || [], run.ctx);
      const more = h("details", { class: "media-data" }, h("summary", { class: "muted" }, "data"), table);
      cell.body.replaceChildren(...(chart ? [chart, more] : [h("div", { class: "muted small" }, `${id || "this chart"}: drawn as its table`), table]));
    } catch (e) {
      cell.path = null;
      cell.body.replaceChildren(h("div", { class: "error" }, `could not draw: ${e.message}`));
    }
  }

  const refresh = () => panels.forEach((p) => runs.forEach((r, i) => drawCell(p, i, r)));
  refresh();
  return {
    el: grid,
    refresh(jsons) {
      jsons.forEach((j, i) => j && (runs[i].json = j));
      refresh();
    },
  };
}
