// Plotly figures ("plotly-file": a run file holding fig.to_plotly_json()): scatter (lines and/or
// markers) and bar traces drawn with plot.js; other trace types are listed as not drawn.  No
// plotly.js: it is megabytes, and these two types are what training scripts log.

import { h } from "../dom.js";
import { plot } from "./plot.js";

const TYPED = { f8: Float64Array, f4: Float32Array, i1: Int8Array, u1: Uint8Array, i2: Int16Array, u2: Uint16Array, i4: Int32Array, u4: Uint32Array };

/** Plotly 6 may write arrays as {dtype, bdata: base64}: back to a plain array. */
export function arr(v) {
  if (Array.isArray(v)) return v;
  if (v && typeof v === "object" && typeof v.bdata === "string" && TYPED[v.dtype]) {
    const bytes = Uint8Array.from(atob(v.bdata), (ch) => ch.charCodeAt(0));
    return Array.from(new TYPED[v.dtype](bytes.buffer));
  }
  return [];
}

const text = (t) => (t == null ? "" : typeof t === "object" ? t.text || "" : String(t));

export function plotlySpec(fig, width) {
  const traces = (fig.data || []).filter((t) => (t.type || "scatter").startsWith("scatter") || t.type === "bar");
  const skipped = (fig.data || []).length - traces.length;
  const cat = traces.some((t) => arr(t.x).some((x) => typeof x === "string"));
  const categories = cat ? [...new Set(traces.flatMap((t) => arr(t.x).map(String)))] : undefined;
  const series = traces.map((t, i) => {
    const y = arr(t.y).map(Number);
    let x = arr(t.x);
    if (!x.length) x = y.map((_, j) => j);
    if (cat) x = x.map((v) => categories.indexOf(String(v)));
    const kind = t.type === "bar" ? "bar" : /markers/.test(t.mode || "") && !/lines/.test(t.mode || "") ? "scatter" : "line";
    return { name: t.name || `trace ${i}`, kind, x: x.map(Number), y };
  });
  const lay = fig.layout || {};
  return { spec: { series, categories, title: text(lay.title), xLabel: text(lay.xaxis?.title), yLabel: text(lay.yaxis?.title), width }, skipped };
}

export async function renderPlotly(el, v, ctx) {
  const fig = await ctx.json(v.path);
  const { spec, skipped } = plotlySpec(fig, Math.max(300, Math.min(560, (el.parentElement?.clientWidth || 420) - 8)));
  el.replaceChildren(spec.series.length ? plot(spec) : h("div", { class: "empty" }, "no scatter or bar traces"), skipped ? h("div", { class: "muted small" }, `${skipped} trace(s) of other types not drawn`) : "");
}
