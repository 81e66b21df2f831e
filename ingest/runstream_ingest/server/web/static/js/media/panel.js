// The frame of a media panel: a card with the key, and for values logged at many steps a step
// slider.  Each run is a cell (side by side when comparing); moving the slider shows in every cell
// that run's value at the chosen step, or at the latest step before it where the run has none
// (runs rarely log media at the same steps).

import { h } from "../dom.js";

export function mediaPanel(key, type) {
  const head = h("div", { class: "ptitle" }, h("span", { class: "mono" }, key), h("span", { class: "readout" }, type || ""));
  const el = h("div", { class: "card panel media-panel", dataset: { testid: "media-panel", key, type: type || "" } }, head);
  return { el, head };
}

/** The value of `entries` ([[step, value]] ascending) at `step`: the last at or before it. */
export function atStep(entries, step) {
  let lo = 0;
  let hi = entries.length - 1;
  let found = null;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (entries[mid][0] <= step) {
      found = entries[mid];
      lo = mid + 1;
    } else hi = mid - 1;
  }
  return found;
}

/**
 * cols: [{label, color, ctx}] one per run; render(cellBody, value, ctx) draws one value (may be
 * async).  Returns {el, add(runIndex, entries), destroy()}.
 */
export function stepPanel(key, type, cols, render) {
  const { el } = mediaPanel(key, type);
  const per = cols.map(() => []);
  let steps = [];
  const slider = h("input", { type: "range", min: "0", max: "0", step: "1", value: "0", dataset: { testid: "media-step" }, "aria-label": `step of ${key}` });
  const stepLabel = h("span", { class: "mono", dataset: { testid: "media-step-value" } });
  const bar = h("div", { class: "toolbar media-steps", hidden: true }, h("label", {}, "step", slider), stepLabel);
  const cells = cols.map((c) => {
    const body = h("div", { class: "media-body" });
    const cell = h("div", { class: "media-cell", dataset: { testid: "media-cell" } }, cols.length > 1 ? h("div", { class: "media-run" }, h("span", { class: "swatch", style: { background: c.color } }), c.label) : null, body);
    return { cell, body, shown: undefined, token: 0 };
  });
  el.append(bar, h("div", { class: cols.length > 1 ? "media-cells compare" : "media-cells" }, cells.map((c) => c.cell)));
  el.__media = { steps: () => steps, per };

  function show() {
    const step = steps[Number(slider.value)];
    stepLabel.textContent = step == null ? "" : String(step);
    el.dataset.step = step == null ? "" : String(step);
    cells.forEach((c, i) => {
      const e = step == null ? null : atStep(per[i], step);
      const v = e ? e[1] : null;
      if (v === c.shown) return; // same value as drawn: leave it (a playing video keeps playing)
      c.shown = v;
      const token = ++c.token;
      if (!v) return void c.body.replaceChildren(h("div", { class: "empty" }, "nothing logged at this step"));
      // The sidecar could not encode this value (docs/media.md): its error instead of a file.
      if (typeof v.error === "string" || typeof (v.path ?? v.filenames) === "undefined") {
        return void c.body.replaceChildren(h("div", { class: "error", dataset: { testid: "media-error" } }, `not stored: ${v.error || "no file"}`));
      }
      // Draw into a fresh element and swap it in when done, so the panel never flickers empty;
      // a newer step chosen meanwhile wins.
      const next = h("div", { class: "media-value" });
      Promise.resolve(render(next, v, cols[i].ctx))
        .catch((err) => next.replaceChildren(h("div", { class: "error" }, `could not draw: ${err.message}`)))
        .then(() => token === c.token && c.body.replaceChildren(next));
    });
  }

  slider.addEventListener("input", show);
  return {
    el,
    add(i, entries) {
      const atEnd = Number(slider.value) >= steps.length - 1;
      per[i].push(...entries.filter((e) => !per[i].length || e[0] > per[i][per[i].length - 1][0]));
      steps = [...new Set(per.flatMap((p) => p.map((e) => e[0])))].sort((a, b) => a - b);
      slider.max = String(Math.max(0, steps.length - 1));
      bar.hidden = steps.length < 2;
      if (atEnd) slider.value = slider.max; // following the newest step, as a live run logs
      show();
    },
  };
}
