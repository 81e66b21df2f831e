// Runs grouped by a config key (or a column): one row per value with the group's run count and
// the mean, min and max of one summary metric, computed by the server over the filtered runs.
// Clicking a group narrows the table to it (a filter condition on the group key).

import { api } from "../api.js";
import { fmtNum, fmtValue, h } from "../dom.js";

export function groupsTable(entity, project, { by, metric, filters, search }, onPick) {
  const box = h("div", { class: "vt", dataset: { testid: "groups" } }, h("p", { class: "pad muted" }, "Grouping…"));
  api
    .groups(entity, project, { by, metrics: metric ? [metric] : [], filters, search })
    .then((d) => {
      const groups = d.groups || [];
      const head = h(
        "tr",
        {},
        h("th", {}, by),
        h("th", { class: "num" }, "runs"),
        metric ? [h("th", { class: "num" }, `mean ${metric}`), h("th", { class: "num" }, "min"), h("th", { class: "num" }, "max")] : null,
      );
      const rows = groups.map((g) => {
        const m = metric ? g.metrics?.[metric] || {} : null;
        return h(
          "tr",
          { class: "clickable", dataset: { testid: "group-row", value: fmtValue(g.value) }, title: "show this group's runs", onclick: () => onPick(g.value) },
          h("td", {}, g.value == null ? h("span", { class: "muted" }, "(none)") : fmtValue(g.value)),
          h("td", { class: "num", dataset: { stat: "count", value: String(g.count) } }, fmtNum(g.count)),
          m ? ["mean", "min", "max"].map((k) => h("td", { class: "num", dataset: { stat: k, value: String(m[k]) } }, m[k] == null ? "" : fmtNum(m[k]))) : null,
        );
      });
      const more = d.truncated ? h("div", { class: "vt-foot" }, `showing ${groups.length} of ${d.total_groups} groups`) : null;
      box.replaceChildren(
        h("table", { class: "simple" }, h("thead", {}, head), h("tbody", {}, rows)),
        more || h("div", { class: "vt-foot", dataset: { testid: "groups-total" } }, `${groups.length} group${groups.length === 1 ? "" : "s"}`),
      );
    })
    .catch((e) => box.replaceChildren(h("p", { class: "pad error" }, `could not group: ${e.message}`)));
  return box;
}
