// Histograms over steps ({"_type": "histogram", "values": counts, "bins": edges}): a heat map of one
// canvas column per logged step and one row per bin (darker: more of that step's values), with the
// latest step's bars under it; hovering a column shows that step's bars instead.
//
// Each step may have its own bin edges (W&B bins each histogram over its own data).  When every step
// shares the same edges the rows are those bins; otherwise the counts are spread onto ROWS equal rows
// over all steps' range, each bin's count split by how much of it falls in each row.  A column is
// scaled to its own largest count, so a step of few values still shows its shape.

import { cssVar, fmtNum, h } from "../dom.js";
import { mediaPanel } from "./panel.js";
import { plot } from "./plot.js";

const ROWS = 64;
const MAX_COLUMNS = 2000; // more steps than this: every n-th, so the canvas stays small

function sameEdges(hists) {
  const first = hists[0].bins;
  return hists.every((x) => x.bins.length === first.length && x.bins.every((b, i) => b === first[i]));
}

/** rows x columns of counts: [{step, counts: Float64Array(rows)}] and the row edges. */
export function grid(entries) {
  const hists = entries.map((e) => e[1]);
  if (sameEdges(hists)) return { edges: hists[0].bins, cols: entries.map(([step, x]) => ({ step, counts: x.values.map(Number) })) };
  const lo = Math.min(...hists.map((x) => x.bins[0]));
  const hi = Math.max(...hists.map((x) => x.bins[x.bins.length - 1]));
  const width = (hi - lo) / ROWS || 1;
  const edges = Array.from({ length: ROWS + 1 }, (_, i) => lo + i * width);
  const cols = entries.map(([step, x]) => {
    const counts = new Array(ROWS).fill(0);
    x.values.forEach((n, b) => {
      const a = x.bins[b];
      const z = x.bins[b + 1];
      if (!(z > a)) return void (counts[Math.min(ROWS - 1, Math.max(0, Math.floor((a - lo) / width)))] += n);
      for (let r = Math.max(0, Math.floor((a - lo) / width)); r < ROWS && edges[r] < z; r++) {
        const overlap = Math.min(z, edges[r + 1]) - Math.max(a, edges[r]);
        if (overlap > 0) counts[r] += (n * overlap) / (z - a);
      }
    });
    return { step, counts };
  });
  return { edges, cols };
}

function heatCanvas(g) {
  const c = h("canvas", { class: "media-heat", dataset: { testid: "histogram-heat" } });
  c.width = g.cols.length;
  c.height = g.edges.length - 1;
  const ctx = c.getContext("2d");
  const img = ctx.createImageData(c.width, c.height);
  const n = parseInt((cssVar("--accent") || "#2f6fde").slice(1), 16);
  const rgb = [(n >> 16) & 255, (n >> 8) & 255, n & 255];
  g.cols.forEach((col, x) => {
    const max = Math.max(...col.counts) || 1;
    col.counts.forEach((v, r) => {
      const y = c.height - 1 - r; // low values at the bottom
      const o = (y * c.width + x) * 4;
      img.data.set([...rgb, Math.round(255 * (v / max))], o);
    });
  });
  ctx.putImageData(img, 0, 0);
  return c;
}

function bars(x, step, width) {
  const mids = x.values.map((_, i) => (x.bins[i] + x.bins[i + 1]) / 2);
  return plot({ series: [{ name: `step ${step}`, kind: "bar", x: mids.map((_, i) => i), y: x.values }], categories: mids.map((m) => fmtNum(m)), title: `step ${step}`, width });
}

/** cols: [{label, color, ctx}].  Returns {el, add(runIndex, entries)}. */
export function histogramPanel(key, cols) {
  const { el } = mediaPanel(key, "histogram");
  const per = cols.map(() => []);
  const cells = cols.map((c) => h("div", { class: "media-cell", dataset: { testid: "media-cell" } }));
  el.append(h("div", { class: cols.length > 1 ? "media-cells compare" : "media-cells" }, cells));

  function draw(i) {
    let entries = per[i];
    if (!entries.length) return;
    if (entries.length > MAX_COLUMNS) {
      const every = Math.ceil(entries.length / MAX_COLUMNS);
      entries = entries.filter((_, j) => j % every === 0 || j === entries.length - 1);
    }
    const g = grid(entries);
    const heat = heatCanvas(g);
    const width = Math.max(260, (el.clientWidth || 420) / cols.length - 24);
    const last = entries[entries.length - 1];
    const barBox = h("div", {}, bars(last[1], last[0], width));
    const tip = h("div", { class: "muted small", dataset: { testid: "histogram-readout" } }, `${entries.length} steps, ${fmtNum(entries[0][0])}–${fmtNum(last[0])}; values ${fmtNum(g.edges[0])}–${fmtNum(g.edges[g.edges.length - 1])}`);
    heat.addEventListener("mousemove", (ev) => {
      const r = heat.getBoundingClientRect();
      const x = Math.min(entries.length - 1, Math.max(0, Math.floor(((ev.clientX - r.left) / r.width) * entries.length)));
      if (barBox.dataset.step === String(entries[x][0])) return;
      barBox.dataset.step = String(entries[x][0]);
      barBox.replaceChildren(bars(entries[x][1], entries[x][0], width));
    });
    heat.addEventListener("mouseleave", () => {
      delete barBox.dataset.step;
      barBox.replaceChildren(bars(last[1], last[0], width));
    });
    heat.__grid = g;
    cells[i].replaceChildren(
      cols.length > 1 ? h("div", { class: "media-run" }, h("span", { class: "swatch", style: { background: cols[i].color } }), cols[i].label) : "",
      h("div", { class: "media-heat-wrap" }, h("span", { class: "muted small media-axis" }, fmtNum(g.edges[g.edges.length - 1])), heat, h("span", { class: "muted small media-axis" }, fmtNum(g.edges[0]))),
      tip,
      barBox,
    );
  }

  return {
    el,
    add(i, entries) {
      per[i].push(...entries.filter((e) => Array.isArray(e[1].values) && Array.isArray(e[1].bins) && (!per[i].length || e[0] > per[i][per[i].length - 1][0])));
      draw(i);
    },
  };
}
