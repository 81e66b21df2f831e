// Compare: the selected runs overlaid in every chart, coloured by run or by group (the runs'
// group, or the value of any config key).  #/c/E/P?runs=a,b,c&color=run|group|config.KEY
// (+ the charts' settings).

import { api } from "../api.js";
import { color, fieldValue, flatten, fmtValue, h } from "../dom.js";
import { watch } from "../live.js";
import * as url from "../url.js";
import { chartKeys, chartsAndMedia } from "./run.js";

export function mount(root, route) {
  const [, entity, project] = route.parts;
  const ids = url.list(route.params.get("runs"));
  const colorBy = route.params.get("color") || "run";
  const content = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const head = h("div", { class: "toolbar" }, h("h1", {}, `Compare ${ids.length} run${ids.length === 1 ? "" : "s"}`));
  root.append(h("div", { class: "page" }, head, content));
  let charts = null;
  let stop = null;

  (async () => {
    if (!ids.length) {
      content.replaceChildren(h("p", { class: "muted" }, "No runs selected: tick runs in the project's table, then Compare."));
      return;
    }
    const runs = (await Promise.all(ids.map((id) => api.run(entity, project, id).catch(() => null)))).filter(Boolean);
    const missing = ids.length - runs.length;
    const groupOf = (r) => (colorBy === "group" ? r.group : colorBy.startsWith("config.") ? fieldValue(r, colorBy) : r.id);
    const groups = [...new Set(runs.map((r) => fmtValue(groupOf(r))))];
    const shown = runs.map((r, i) => {
      const g = fmtValue(groupOf(r));
      const label = colorBy === "run" ? r.name || r.id : `${r.name || r.id} (${g || "none"})`;
      return { id: r.id, label, color: color(colorBy === "run" ? i : groups.indexOf(g)) };
    });
    const cfgKeys = [...new Set(runs.flatMap((r) => flatten(r.config).map(([k]) => `config.${k}`)))];
    const sel = h(
      "select",
      { dataset: { testid: "color-by" }, "aria-label": "colour by" },
      [["run", "run"], ["group", "run group"], ...cfgKeys.map((k) => [k, k])].map(([v, t]) => h("option", { value: v, selected: v === colorBy }, t)),
    );
    sel.addEventListener("change", () => url.go(["c", entity, project], { ...url.params(), color: sel.value }));
    head.append(h("label", { class: "muted" }, "colour by ", sel));
    const keyLists = await Promise.all(runs.map((r) => chartKeys(entity, project, r)));
    const keys = [...new Set(keyLists.flat())];
    charts = chartsAndMedia(entity, project, shown.map((s, i) => ({ ...s, json: runs[i] })), keys);
    content.replaceChildren(...(missing ? [h("p", { class: "error" }, `${missing} of the selected runs no longer exist.`)] : []), charts.el);
    stop = watch(entity, project, runs.map((r) => r.id), (changed) => {
      if (changed || runs.some((r) => r.state === "running")) charts.refresh(changed);
    });
  })().catch((e) => content.replaceChildren(h("p", { class: "error" }, e.message)));

  return {
    destroy() {
      if (stop) stop();
      if (charts) charts.destroy();
    },
  };
}
