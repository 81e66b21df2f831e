// Media panels (docs/media.md): for each history key whose values are W&B pointer dicts (images,
// histograms, tables, video, audio, HTML, 3-D points, plotly figures) a panel, in sections by key
// prefix like the scalar charts, plus a "custom charts" section for the run config's
// `_wandb.visualize` entries.  With several runs (compare) every panel shows the runs side by side
// at the same step.
//
// Which keys are media is read from the runs' summaries (the last value of every history key), so
// nothing is fetched for a run without media.  A section fetches its keys' history rows when first
// opened; a live refresh fetches only the rows after the last step seen.

import { api } from "../api.js";
import { h } from "../dom.js";
import { sectionsOf } from "./charts.js";
import { histogramPanel } from "../media/histogram.js";
import { renderImage } from "../media/image.js";
import { renderAudio, renderHtml, renderVideo } from "../media/players.js";
import { renderPoints } from "../media/points.js";
import { renderPlotly } from "../media/plotly.js";
import { renderTable } from "../media/table.js";
import { customCharts, visualizeOf } from "../media/custom.js";
import { stepPanel } from "../media/panel.js";

/** _type -> how one value is drawn into a cell (all but histograms, drawn over every step). */
const RENDER = {
  "image-file": renderImage,
  "images/separated": renderImage,
  "video-file": renderVideo,
  "audio-file": renderAudio,
  "html-file": renderHtml,
  "object3D-file": renderPoints,
  "plotly-file": renderPlotly,
  "table-file": renderTable,
};

/** A W&B pointer dict this page draws ("histogram" or a type in RENDER). */
export function isMedia(v) {
  return !!v && typeof v === "object" && !Array.isArray(v) && (v._type === "histogram" || v._type in RENDER);
}

/** The run's media keys: summary values that are pointers, less the tables of custom charts
 * (their chart shows them). */
export function mediaKeys(run) {
  const hidden = new Set(Object.keys(visualizeOf(run)).map((k) => `${k}_table`));
  return Object.entries(run.summary || {})
    .filter(([k, v]) => !k.startsWith("_") && isMedia(v) && !hidden.has(k))
    .map(([k]) => k);
}

/** runs: [{id, label, color, json}].  Returns {el, refresh(changed, run), destroy(), keys}. */
export function mediaView(entity, project, runs) {
  const keys = [...new Set(runs.flatMap((r) => mediaKeys(r.json)))];
  const el = h("div", { class: "sections media", dataset: { testid: "media" } });
  const sections = [];
  // Side by side, each run gets about a single run's room: panels widen with the number of runs.
  const wide = runs.length > 1 ? { gridTemplateColumns: `repeat(auto-fill, minmax(min(100%, ${Math.min(3, runs.length) * 330}px), 1fr))` } : null;
  const ctxOf = (r) => ({
    entity,
    project,
    runId: r.id,
    url: (path) => api.fileUrl(entity, project, r.id, path),
    json: (path) => api.fileJson(entity, project, r.id, path),
    text: (path) => api.fileText(entity, project, r.id, path),
  });

  async function load(s) {
    s.loaded = true;
    try {
      const per = await Promise.all(
        runs.map((r) => api.history(entity, project, r.id, { keys: s.keys, minStep: s.last[r.id] == null ? undefined : s.last[r.id] + 1, pageSize: 5000 })),
      );
      runs.forEach((r, i) => {
        const rows = per[i];
        if (rows.length) s.last[r.id] = rows[rows.length - 1]._step;
        for (const k of s.keys) {
          const entries = rows.filter((row) => isMedia(row[k])).map((row) => [row._step, row[k]]);
          if (entries.length) s.panels.get(k).add(i, entries);
        }
      });
      s.status.textContent = "";
    } catch (e) {
      s.status.textContent = `could not load: ${e.message}`;
      s.status.className = "error";
    }
  }

  function addSection(name, ks) {
    const cols = runs.map((r) => ({ label: r.label, color: r.color, ctx: ctxOf(r) }));
    const s = { name, keys: ks, loaded: false, last: {}, status: h("span", { class: "muted" }), panels: new Map() };
    for (const k of ks) {
      const type = runs.map((r) => r.json.summary?.[k]?._type).find(Boolean);
      s.panels.set(k, type === "histogram" ? histogramPanel(k, cols) : stepPanel(k, type, cols, RENDER[type]));
    }
    const grid = h("div", { class: "grid media-grid", style: wide }, [...s.panels.values()].map((p) => p.el));
    const det = h("details", { class: "section", open: true, dataset: { testid: "media-section", section: name } }, h("summary", {}, `${name} `, h("span", { class: "muted" }, `(${ks.length})`), " ", s.status), grid);
    det.addEventListener("toggle", () => det.open && !s.loaded && load(s));
    s.details = det;
    sections.push(s);
    el.append(det);
    load(s);
  }

  const media = new Map();
  for (const [name, ks] of sectionsOf(keys)) media.set(name === "charts" ? "media" : name, ks);
  for (const [name, ks] of media) addSection(name, ks);

  // Custom charts: one panel per _wandb.visualize key, per run its latest table.
  const charts = customCharts(runs.map((r) => ({ label: r.label, color: r.color, json: r.json, ctx: ctxOf(r) })));
  if (charts && wide) Object.assign(charts.el.style, wide);
  if (charts) el.append(h("details", { class: "section", open: true, dataset: { testid: "media-section", section: "custom charts" } }, h("summary", {}, "custom charts"), charts.el));

  return {
    el,
    keys,
    empty: !keys.length && !charts,
    /** New rows for some runs: fetch what is after the last step seen in every open section. */
    refresh(changed, run) {
      for (const r of runs) {
        const j = changed ? changed.get(r.id) : run && run.id === r.id ? run : null;
        if (j) r.json = j;
      }
      for (const s of sections) if (s.loaded && s.details.open) load(s);
      if (charts) charts.refresh(runs.map((r) => r.json));
    },
    destroy() {
      for (const s of sections) for (const p of s.panels.values()) p.destroy && p.destroy();
    },
  };
}
