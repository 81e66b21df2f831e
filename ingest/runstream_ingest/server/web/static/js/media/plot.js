// A small canvas plotter for the media panels that are charts but not history metrics: plotly
// figures and custom charts (line, scatter, bar, histogram, area under curve) and heat grids
// (confusion matrices).  uPlot draws time series well but neither categorical bars nor
// unordered scatter, so these few shapes are drawn here, on one canvas, in the page's colours.
//
// The element keeps what it drew as `el.__plot` ({series, grid}), so tests compare the drawn data
// with what was logged.

import { color, cssVar, fmtNum, h } from "../dom.js";

const HEIGHT = 240;
const PAD = { l: 52, r: 12, t: 10, b: 34 };

/** About `n` round tick values covering [lo, hi]. */
export function ticks(lo, hi, n = 5) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

function extent(values) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of values) {
    if (typeof v !== "number" || !Number.isFinite(v)) continue;
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  if (lo === Infinity) return [0, 1];
  if (lo === hi) return [lo - (Math.abs(lo) || 1) * 0.5, hi + (Math.abs(hi) || 1) * 0.5];
  return [lo, hi];
}

/** A canvas sized for the device's pixels; draw(ctx, width, height) in CSS pixels. */
export function hiDpiCanvas(width, height) {
  const c = h("canvas");
  const dpr = window.devicePixelRatio || 1;
  c.width = Math.round(width * dpr);
  c.height = Math.round(height * dpr);
  c.style.width = `${width}px`;
  c.style.height = `${height}px`;
  const ctx = c.getContext("2d");
  ctx.scale(dpr, dpr);
  return { c, ctx };
}

/**
 * spec: {series: [{name, kind: "line"|"scatter"|"bar", x: [], y: []}], categories?: [labels]
 * (bars: x holds indexes into it), xLabel, yLabel, title, width}.  Returns the panel body.
 */
export function plot(spec) {
  const width = spec.width || 400;
  const { c, ctx } = hiDpiCanvas(width, HEIGHT);
  const series = spec.series.map((s, i) => ({ ...s, color: s.color || color(i) }));
  const cats = spec.categories;
  const xs = cats ? [-0.5, cats.length - 0.5] : extent(series.flatMap((s) => s.x));
  const barXs = [...new Set(series.filter((s) => s.kind === "bar").flatMap((s) => s.x))].sort((a, b) => a - b);
  if (!cats && barXs.length) {
    // Numeric bars: half the closest spacing on each side, so the outer bars stay inside.
    const gap = Math.min(...barXs.slice(1).map((x, i) => x - barXs[i]), xs[1] - xs[0]) || 1;
    xs[0] = Math.min(xs[0], barXs[0] - gap / 2);
    xs[1] = Math.max(xs[1], barXs[barXs.length - 1] + gap / 2);
  }
  const ysAll = series.flatMap((s) => s.y);
  let [ylo, yhi] = extent(ysAll);
  if (series.some((s) => s.kind === "bar")) ylo = Math.min(0, ylo);
  // 5% headroom, so the largest value is not drawn on the frame (bars keep their zero base).
  const pad = (yhi - ylo) * 0.05;
  yhi += pad;
  if (ylo !== 0) ylo -= pad;
  const [xlo, xhi] = xs;
  const W = width - PAD.l - PAD.r;
  const H = HEIGHT - PAD.t - PAD.b;
  const px = (x) => PAD.l + ((x - xlo) / (xhi - xlo)) * W;
  const py = (y) => PAD.t + H - ((y - ylo) / (yhi - ylo)) * H;
  const muted = cssVar("--muted") || "#6b7280";
  const line = cssVar("--line") || "#e3e6eb";
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = muted;
  ctx.strokeStyle = line;
  ctx.lineWidth = 1;
  // Grid and tick labels.
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (const t of ticks(ylo, yhi)) {
    ctx.beginPath();
    ctx.moveTo(PAD.l, py(t) + 0.5);
    ctx.lineTo(PAD.l + W, py(t) + 0.5);
    ctx.stroke();
    ctx.fillText(fmtNum(t), PAD.l - 4, py(t));
  }
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  if (cats) {
    const every = Math.max(1, Math.ceil((cats.length * 60) / W));
    cats.forEach((name, i) => i % every === 0 && ctx.fillText(String(name).slice(0, 12), px(i), PAD.t + H + 4));
  } else {
    for (const t of ticks(xlo, xhi, Math.max(2, Math.floor(W / 80)))) ctx.fillText(fmtNum(t), px(t), PAD.t + H + 4);
  }
  if (spec.xLabel) ctx.fillText(spec.xLabel, PAD.l + W / 2, PAD.t + H + 19);
  if (spec.yLabel) {
    ctx.save();
    ctx.translate(10, PAD.t + H / 2);
    ctx.rotate(-Math.PI / 2);
    ctx.fillText(spec.yLabel, 0, -6);
    ctx.restore();
  }
  // Data: bars side by side per category, lines, points.
  const bars = series.filter((s) => s.kind === "bar");
  const unit = cats ? 1 : Math.min(...barXs.slice(1).map((x, i) => x - barXs[i]), xhi - xlo) || 1;
  const slot = bars.length ? (W / (xhi - xlo)) * unit * 0.8 : 0;
  // Bars first, so lines and points drawn over them stay visible.
  [...bars, ...series.filter((s) => s.kind !== "bar")].forEach((s) => {
    ctx.strokeStyle = ctx.fillStyle = s.color;
    if (s.kind === "bar") {
      const bw = slot / bars.length;
      const off = bars.indexOf(s) * bw - slot / 2;
      s.x.forEach((x, i) => {
        const y = s.y[i];
        if (typeof y !== "number" || !Number.isFinite(y)) return;
        const top = py(Math.max(0, y));
        ctx.fillRect(px(x) + off, top, Math.max(1, bw - 1), Math.abs(py(y) - py(0)) || 1);
      });
    } else if (s.kind === "scatter") {
      s.x.forEach((x, i) => Number.isFinite(s.y[i]) && Number.isFinite(x) && ctx.fillRect(px(x) - 2, py(s.y[i]) - 2, 4, 4));
    } else {
      ctx.lineWidth = 1.6;
      ctx.beginPath();
      let pen = false;
      s.x.forEach((x, i) => {
        const y = s.y[i];
        if (!Number.isFinite(x) || !Number.isFinite(y)) return void (pen = false);
        if (pen) ctx.lineTo(px(x), py(y));
        else ctx.moveTo(px(x), py(y));
        pen = true;
      });
      ctx.stroke();
    }
  });
  ctx.strokeStyle = muted;
  ctx.strokeRect(PAD.l + 0.5, PAD.t + 0.5, W, H);
  const legend = series.length > 1 ? h("div", { class: "legend" }, series.map((s) => h("span", {}, h("span", { class: "swatch", style: { background: s.color } }), s.name))) : null;
  const el = h("div", { class: "media-plot", dataset: { testid: "media-plot" } }, spec.title ? h("div", { class: "plot-title" }, spec.title) : null, c, legend);
  el.__plot = { series: series.map(({ name, kind, x, y }) => ({ name, kind, x, y })), categories: cats };
  return el;
}

/** A heat grid (confusion matrix): rows x cols of counts, each cell shaded and labelled. */
export function heatGrid({ rows, cols, values, xLabel, yLabel, title, width = 400 }) {
  const cell = Math.max(14, Math.min(48, Math.floor((width - 100) / Math.max(1, cols.length))));
  const w = 100 + cell * cols.length;
  const { c, ctx } = hiDpiCanvas(w, 40 + cell * rows.length);
  const max = Math.max(1, ...values.flat().filter(Number.isFinite));
  const acc = cssVar("--accent") || "#2f6fde";
  ctx.font = "11px system-ui, sans-serif";
  ctx.textBaseline = "middle";
  rows.forEach((r, i) => {
    ctx.fillStyle = cssVar("--muted") || "#6b7280";
    ctx.textAlign = "right";
    ctx.fillText(String(r).slice(0, 14), 96, 10 + i * cell + cell / 2);
    cols.forEach((_, j) => {
      const v = values[i][j] || 0;
      ctx.globalAlpha = 0.08 + 0.92 * (v / max);
      ctx.fillStyle = acc;
      ctx.fillRect(100 + j * cell, 10 + i * cell, cell - 1, cell - 1);
      ctx.globalAlpha = 1;
      ctx.fillStyle = v / max > 0.5 ? "#fff" : cssVar("--fg") || "#000";
      ctx.textAlign = "center";
      if (cell >= 20) ctx.fillText(fmtNum(v), 100 + j * cell + cell / 2, 10 + i * cell + cell / 2);
    });
  });
  ctx.fillStyle = cssVar("--muted") || "#6b7280";
  ctx.textAlign = "center";
  cols.forEach((cName, j) => ctx.fillText(String(cName).slice(0, 6), 100 + j * cell + cell / 2, 20 + rows.length * cell));
  const el = h(
    "div",
    { class: "media-plot", dataset: { testid: "media-heatgrid" } },
    title ? h("div", { class: "plot-title" }, title) : null,
    h("div", { class: "muted small" }, `rows: ${yLabel || ""} · columns: ${xLabel || ""}`),
    c,
  );
  el.__plot = { grid: { rows, cols, values } };
  return el;
}
