// One chart panel: a metric of one or several runs, drawn with uPlot from the server's buckets.
//
// Each run is four uPlot series: the bucket min and max (no line; the band between them is
// shaded), the raw bucket means (a faint line once smoothing is on) and the smoothed means (the
// line).  The band is what keeps a single spike among a million steps visible: the spike is the
// max of its bucket.  Smoothing (smooth.js) runs on the means as drawn, and changing it only
// recomputes that one series per run (setData without rescaling).
//
// Dragging across the plot selects an x range: the panel reports it through onZoom and its owner
// fetches buckets for that range (so zooming shows detail, not stretched buckets); a double click
// reports null (zoom out).  The element keeps its Panel as `el.__panel` (tests read the drawn data).

import { ema } from "./smooth.js";
import { cssVar, fmtNum, h } from "./dom.js";

const HEIGHT = 220;
const PER_RUN = 4; // min, max, mean, smoothed

/** The y values as uPlot draws them: non-finite and (on a log axis) non-positive become gaps. */
function drawable(values, logY) {
  return values.map((v) => (typeof v === "number" && Number.isFinite(v) && (!logY || v > 0) ? v : null));
}

function alpha(hex, a) {
  const n = parseInt(hex.slice(1), 16);
  return `rgba(${(n >> 16) & 255},${(n >> 8) & 255},${n & 255},${a})`;
}

export class Panel {
  /** opts: {key, xAxis, logY, smoothing, onZoom, xRange: [lo, hi] | null, bands: false to draw
   * the lines alone (every rank of a run overlaid)} */
  constructor(opts) {
    this.opts = opts;
    this.w = opts.smoothing || 0;
    this.runs = [];
    this.u = null;
    this.readout = h("span", { class: "readout" });
    this.box = h("div", { class: "plot" });
    this.el = h(
      "div",
      { class: "card panel", dataset: { key: opts.key, testid: "panel" } },
      h("div", { class: "ptitle" }, h("span", { class: "mono" }, opts.key), this.readout),
      this.box,
    );
    this.el.__panel = this;
    this.resize = new ResizeObserver(() => this.u && this.u.setSize({ width: this.width(), height: HEIGHT }));
    this.resize.observe(this.el);
  }

  width() {
    return Math.max(200, this.el.clientWidth - 20);
  }

  get runCount() {
    return this.runs.length;
  }

  /** runs: [{id, label, color, s}] where s is the server's series for this key (or missing). */
  setRuns(runs) {
    this.runs = runs.filter((r) => r.s && r.s.x && r.s.x.length);
    this.el.dataset.runs = String(this.runs.length);
    if (!this.runs.length) {
      this.destroyPlot();
      this.box.replaceChildren(h("div", { class: "empty" }, "no numeric data"));
      return;
    }
    this.means = [];
    this.tables = this.runs.map((r, i) => this.table(r.s, i));
    const data = this.join();
    if (this.u && this.u.series.length === 1 + PER_RUN * this.runs.length) {
      this.u.batch(() => {
        this.runs.forEach((r, i) => (this.u.series[1 + i * PER_RUN + 3].label = r.label));
        this.u.setData(data, true);
        if (this.opts.xRange) this.u.setScale("x", { min: this.opts.xRange[0], max: this.opts.xRange[1] });
      });
    } else {
      this.create(data);
    }
  }

  setSmoothing(w) {
    const toggled = (w > 0) !== (this.w > 0);
    this.w = w;
    if (!this.u) return;
    this.tables.forEach((t, i) => (t[4] = drawable(ema(this.means[i], w), this.opts.logY)));
    if (toggled) this.create(this.join()); // the faint raw line's colour is fixed at creation
    else this.u.setData(this.join(), false);
  }

  /** [x, min, max, mean, smoothed] of one run; x is each bucket's middle. */
  table(s, i) {
    const x = s.x.map((v, k) => (s.x_last && s.x_last[k] != null ? (v + s.x_last[k]) / 2 : v));
    const logY = this.opts.logY;
    const mean = (this.means[i] = drawable(s.mean, false));
    return [x, drawable(s.min, logY), drawable(s.max, logY), drawable(mean, logY), drawable(ema(mean, this.w), logY)];
  }

  join() {
    return this.tables.length === 1 ? this.tables[0] : uPlot.join(this.tables);
  }

  create(data) {
    this.destroyPlot();
    const muted = cssVar("--muted");
    const grid = cssVar("--line");
    const series = [{ label: this.opts.xAxis }];
    const bands = [];
    const smoothed = this.w > 0;
    const band = this.opts.bands !== false;
    this.runs.forEach((r, i) => {
      const base = 1 + i * PER_RUN;
      series.push(
        // The band's edges get a faint line of their own: a one-bucket spike is thinner than a
        // pixel of fill, but its edge still draws all the way up.
        { label: `${r.label} min`, stroke: alpha(r.color, band ? 0.35 : 0), width: 1, points: { show: false } },
        { label: `${r.label} max`, stroke: alpha(r.color, band ? 0.35 : 0), width: 1, points: { show: false } },
        { label: `${r.label} raw`, stroke: alpha(r.color, smoothed ? 0.3 : 0), width: 1, points: { show: false } },
        { label: r.label, stroke: r.color, width: 1.5, points: { show: false } },
      );
      if (band) bands.push({ series: [base + 1, base], fill: alpha(r.color, 0.18) });
    });
    const axis = { stroke: muted, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } };
    const opts = {
      width: this.width(),
      height: HEIGHT,
      series,
      bands,
      legend: { show: false },
      scales: {
        x: { time: this.opts.xAxis === "_timestamp", ...(this.opts.xRange ? { min: this.opts.xRange[0], max: this.opts.xRange[1] } : {}) },
        y: this.opts.logY ? { distr: 3 } : {},
      },
      axes: [{ ...axis }, { ...axis, size: 60, values: (u, vals) => vals.map(fmtNum) }],
      cursor: {
        drag: { x: true, y: false, setScale: false },
        bind: { dblclick: () => () => (this.opts.onZoom && this.opts.onZoom(null), null) },
      },
      hooks: {
        setSelect: [(u) => this.selected(u)],
        setCursor: [(u) => this.showCursor(u)],
      },
    };
    this.box.replaceChildren();
    this.u = new uPlot(opts, data, this.box);
  }

  selected(u) {
    const { left, width } = u.select;
    if (width < 3) return;
    const lo = u.posToVal(left, "x");
    const hi = u.posToVal(left + width, "x");
    u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
    if (this.opts.onZoom) this.opts.onZoom([lo, hi]);
  }

  showCursor(u) {
    const i = u.cursor.idx;
    if (i == null) {
      this.readout.textContent = "";
      return;
    }
    const x = u.data[0][i];
    const xs = this.opts.xAxis === "_timestamp" ? new Date(x * 1000).toLocaleString() : fmtNum(x);
    const parts = this.runs.map((r, k) => {
      const v = u.data[1 + k * PER_RUN + 3][i];
      return v == null ? null : `${r.label} ${fmtNum(v)}`;
    });
    this.readout.textContent = `${xs} · ${parts.filter(Boolean).join(" · ")}`;
  }

  destroyPlot() {
    if (this.u) this.u.destroy();
    this.u = null;
  }

  destroy() {
    this.resize.disconnect();
    this.destroyPlot();
  }
}
